"""Typed views of the v2 facts on HostTrace, on a v2 trace and on the v1 sample traces."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from planner.testing.builder import World
from planner.testing.tamper import as_schema_v1
from planner.trace.io import TraceWriter, open_trace

SAMPLE = Path(__file__).resolve().parents[2] / "traces" / "django-preload"


def _v2(tmp_path: Path) -> Path:
    w = World(host="h")
    w.spawn(10, comm="master")
    w.map(10, 0x10000, [1, 2, 3, 4], kind="heap")
    w.snapshot(0.0)
    w.fork(10, 11, comm="worker")
    w.snapshot(5.0)
    w.write_trace(tmp_path / "plain")
    ht = open_trace(tmp_path / "plain").load_host()
    out = tmp_path / "v2"
    cpu = {(0, 10): (1.0, 0.5), (1, 10): (3.0, 1.0), (1, 11): (0.2, 0.1)}
    with TraceWriter(out, source="test") as tw:
        hw = tw.host("h")
        for snap in ht.snapshots.to_pylist():
            sid = snap["snapshot_id"]
            snap.update(
                interval_s=5.0 if sid == 0 else 4.0,
                interval_cpu_busy_share=0.5,
                interval_runnable_mean=3.0,
                interval_capture_cpu_s=0.4,
                cpus_online=2,
                user_hz=100,
                mem_total_kb=1000,
                mem_available_kb=600,
                meminfo=json.dumps({"MemTotal": 1000, "Slab": 7}),
                sample_ms=100.0,
                samples=50 if sid == 0 else 40,
                soft_dirty=sid == 1,
                sample_coverage=0.5,
                sample_checks_per_page=3.0,
                sample_cpu_s=0.3,
            )
            procs = ht.processes.filter(pc.equal(ht.processes["snapshot_id"], sid)).to_pylist()
            for p in procs:
                user, system = cpu[(sid, p["pid"])]
                p.update(cpu_user_s=user, cpu_system_s=system, pss_kb=100, vm_pte_kb=8,
                         swap_pss_kb=None, memory_cgroup="/web")  # fmt: skip
            pages = ht.pages.filter(pc.equal(ht.pages["snapshot_id"], sid))
            n = pages.num_rows
            unsampled = np.zeros(n, bool)
            unsampled[0] = True
            for name, value in (("samples", 50), ("content_checks", 10), ("content_changes", 5)):
                pages = pages.drop_columns([name]).append_column(
                    name, pa.array(np.full(n, value, np.uint16), mask=unsampled)
                )
            if sid == 1:
                pages = pages.drop_columns(["same_content_writes"]).append_column(
                    "same_content_writes", pa.array(np.full(n, 2, np.uint16), mask=unsampled)
                )
            hw.add_snapshot(
                snap,
                processes=pa.Table.from_pylist(procs),
                mappings=ht.mappings.filter(pc.equal(ht.mappings["snapshot_id"], sid)),
                pages=pages,
                cgroups=pa.table(
                    {
                        "snapshot_id": pa.array([sid], pa.int32()),
                        "cgroup": ["/web"],
                        "cgroup_version": pa.array([2], pa.int8()),
                        "memory_current_bytes": [1 << 20],
                        "memory_stat": [json.dumps({"anon": 5})],
                    }
                ),
            )
    return out


def test_v2_views(tmp_path: Path) -> None:
    ht = open_trace(_v2(tmp_path)).load_host()
    assert ht.sampled
    ch = ht.page_changes(0)
    assert len(ch.sampled) == ht.pages_of(0).num_rows == 4
    assert ch.sampled.tolist() == [False, True, True, True]
    assert ch.content_changes.tolist() == [0, 5, 5, 5]
    assert ch.same_content_writes is None  # not tracked in that interval
    rate = ch.content_change_rate_per_s()
    assert np.isnan(rate[0])
    assert rate[1] == pytest.approx(1.0)
    assert ch.changed_share()[1] == pytest.approx(0.5)
    ch1 = ht.page_changes(1)
    assert ch1.soft_dirty
    assert ch1.same_content_writes is not None
    assert ch1.same_content_writes.tolist()[1:] == [2] * (len(ch1.sampled) - 1)

    first, last = ht.intervals()
    assert (first.length_s, first.host_cpu_busy_share, first.runnable_mean) == (5.0, 0.5, 3.0)
    assert first.traced_cpu_s == pytest.approx(2.5)  # master 1.5 -> 4.0; the worker is new
    assert first.traced_cpu_share == pytest.approx(2.5 / 10)
    assert (first.capture_cpu_s, first.samples, first.sample_coverage) == (0.4, 50, 0.5)
    assert last.traced_cpu_s is None  # nothing after the last snapshot to compare with

    mem = ht.host_memory(0)
    assert (mem.mem_total_kb, mem.mem_available_kb, mem.cpus_online) == (1000, 600, 2)
    assert mem.meminfo["Slab"] == 7
    fp = ht.process_footprints(1)
    assert fp.pid.tolist() == [10, 11]
    assert fp.footprint_kb.tolist() == [108.0, 108.0]
    assert fp.cpu_s.tolist() == pytest.approx([4.0, 0.3])
    assert fp.memory_cgroup == ["/web", "/web"]
    (cg,) = ht.cgroup_memory(1)
    assert (cg.cgroup, cg.cgroup_version, cg.memory_current_bytes) == ("/web", 2, 1 << 20)
    assert cg.memory_stat == {"anon": 5}
    with pytest.raises(KeyError):
        ht.host_memory(99)


def test_v1_sample_trace_has_no_facts(tmp_path: Path) -> None:
    """The sample trace rewritten as version 1 (as first captured) has none of v2's facts."""
    v1 = tmp_path / "v1"
    shutil.copytree(SAMPLE, v1)
    as_schema_v1(v1, "vm")
    trace = open_trace(v1)
    assert trace.schema_version == 1
    ht = trace.load_host()
    assert not ht.sampled
    sid = int(ht.snapshot_ids[0])
    ch = ht.page_changes(sid)
    assert not ch.sampled.any()
    assert ch.interval_s is None
    assert ch.sample_ms is None
    assert all(i.length_s is None and i.traced_cpu_s is None for i in ht.intervals())
    assert ht.host_memory(sid).mem_total_kb is None
    assert ht.host_memory(sid).meminfo == {}
    fp = ht.process_footprints(sid)
    assert len(fp.pid) == 9
    assert np.isnan(fp.pss_kb).all()
    assert ht.cgroup_memory(sid) == []
    assert ht.cgroups.num_rows == 0
    assert ht.samples.num_rows == 0
