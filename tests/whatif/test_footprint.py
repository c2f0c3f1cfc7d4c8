"""Whole-host inputs: given over measured over assumed, each with its source."""

from __future__ import annotations

import pytest

from planner.whatif.capacity import CapacityInputs, capacity_from_options
from planner.whatif.footprint import (
    DEFAULTS,
    GIB_PER_CPU,
    ProcessFacts,
    WholeHostFacts,
    plan_capacity,
    whole_host_facts,
)

GIB = 1 << 30
MIB = 1 << 20


def test_nothing_given_nothing_measured_is_assumed() -> None:
    plan = plan_capacity(CapacityInputs(host_mem_bytes=16 * GIB))
    fp = plan.footprint
    for _, p in fp.parts():
        assert p.source == "assumed"
        assert "docs/capacity.md" in p.basis
    assert fp.file_bytes.value == DEFAULTS["worker_file_bytes"].value
    assert fp.extra_bytes == pytest.approx(
        sum(DEFAULTS[k].value for k in DEFAULTS if k.startswith("worker_"))
    )
    assert fp.base_extra_bytes.source == "assumed"
    assert plan.host_cpus.source == "assumed"
    assert plan.host_cpus.value == 16 / GIB_PER_CPU  # 4 CPUs for 16 GiB
    assert (plan.host_cpus.low, plan.host_cpus.high) == (2.0, 8.0)
    assert plan.cpu_per_worker is None  # never assumed: no CPU bound
    assert plan.cpu_limit(0.5) is None
    assert "host CPUs" in plan.assumed
    assert plan.measured == ()


def test_given_options_override_and_carry_no_range() -> None:
    inputs = capacity_from_options(
        "64GiB",
        headroom="10%",
        worker_file="1MiB",
        worker_other="2MiB",
        host_cpus=32,
        cpu_per_worker=0.25,
    )
    assert inputs is not None
    plan = plan_capacity(inputs)
    fp = plan.footprint
    assert (fp.file_bytes.value, fp.file_bytes.source, fp.file_bytes.basis) == (
        MIB,
        "given",
        "--worker-file",
    )
    assert not fp.file_bytes.uncertain
    assert fp.kernel_bytes.value == 2 * MIB
    assert fp.page_tables_bytes.source == "assumed"  # not given
    assert plan.host_cpus.source == "given"
    assert plan.cpu_per_worker is not None
    assert plan.cpu_per_worker.source == "given"
    assert plan.cpu_limit(2.0) == 120  # (32 - 2) / 0.25
    assert plan.budget_bytes == pytest.approx(64 * GIB * 0.9)


def _facts() -> WholeHostFacts:
    # a master (1) and three workers; every file page is mapped by all four processes, and
    # worker 2 has 100 KiB of file pages of its own: Pss_File = private + shared / 4
    shared = 8 * MIB
    procs = [ProcessFacts(1, 0, shared // 4, 0, shared, 100_000, 0.0, 10.0)]
    for pid, own in ((2, 102_400), (3, 0), (4, 0)):
        procs.append(
            ProcessFacts(pid, 0, own + shared // 4, 4096, shared + own, 200_000, 1.0 + pid, 10.0)
        )
    return WholeHostFacts("h", tuple(procs), 16 * GIB, 8, None, None)


def test_measured_facts_beat_defaults_and_lose_to_options() -> None:
    facts = _facts()
    plan = plan_capacity(CapacityInputs(host_mem_bytes=GIB), facts=facts, group_pids=(2, 3, 4))
    fp = plan.footprint
    # the private part of each worker: (m Pss - Rss) / (m - 1) with m = 4 processes
    assert fp.file_bytes.source == "measured"
    assert fp.file_bytes.value == pytest.approx(102_400 / 3)
    assert (fp.file_bytes.low, fp.file_bytes.high) == pytest.approx((0.0, 102_400))
    assert fp.shmem_bytes.value == 4096
    assert fp.page_tables_bytes.value == 200_000
    assert fp.kernel_bytes.source == "assumed"  # no trace records it
    assert fp.base_extra_bytes.value == 8 * MIB + 102_400 + 100_000
    assert plan.cpu_per_worker is not None
    assert plan.cpu_per_worker.source == "measured"
    assert plan.cpu_per_worker.value == pytest.approx((0.3 + 0.4 + 0.5) / 3)
    assert set(plan.measured) >= {"worker file-backed (private)", "CPU per worker"}
    given = plan_capacity(
        CapacityInputs(host_mem_bytes=GIB, worker_file_bytes=0, cpu_per_worker=1.0),
        facts=facts,
        group_pids=(2, 3, 4),
    )
    assert given.footprint.file_bytes.source == "given"
    assert given.cpu_per_worker is not None
    assert given.cpu_per_worker.value == 1.0


def test_v1_traces_record_no_whole_host_facts(tmp_path: object) -> None:
    from pathlib import Path

    from planner.testing.builder import World
    from planner.trace.io import open_trace

    w = World()
    w.spawn(1)
    w.map(1, 0x1000, [1])
    w.snapshot(0.0)
    out = Path(str(tmp_path)) / "t"
    w.write_trace(out)
    tr = open_trace(out)
    assert whole_host_facts(tr, tr.hosts[0]) is None


def test_v2_traces_give_the_facts_the_capacity_model_measures(tmp_path: object) -> None:
    # a master (10) and two workers (11, 12) of a v2 trace: smaps_rollup, page tables and CPU
    # time per process, /proc/meminfo, the CPUs and the cgroup's memory.current per host
    import json
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.compute as pc

    from planner.testing.builder import World
    from planner.trace.io import TraceWriter, open_trace

    root = Path(str(tmp_path))
    w = World(host="h")
    w.spawn(10, comm="master")
    w.map(10, 0x10000, [1, 2, 3, 4], kind="heap")
    w.fork(10, 11, comm="worker")
    w.fork(10, 12, comm="worker")
    w.snapshot(0.0)
    w.snapshot(10.0)
    w.write_trace(root / "plain")
    ht = open_trace(root / "plain").load_host()
    # (snapshot, pid) -> cpu_user_s; cpu_system_s is half of it
    cpu = {(0, 10): 1.0, (1, 10): 1.0, (0, 11): 2.0, (1, 11): 4.0, (0, 12): 2.0, (1, 12): 3.0}
    # pid -> (pss_anon, pss_file, pss_shmem, rss_file, vm_pte) in kB
    mem = {10: (400, 300, 0, 900, 100), 11: (500, 400, 8, 1000, 200), 12: (500, 300, 8, 900, 300)}
    with TraceWriter(root / "v2", source="test") as tw:
        hw = tw.host("h")
        for snap in ht.snapshots.to_pylist():
            sid = snap["snapshot_id"]
            snap.update(
                interval_s=10.0 if sid == 0 else None,
                interval_runnable_mean=2.0 if sid == 0 else None,
                cpus_online=4,
                mem_total_kb=8 << 20,
                meminfo=json.dumps({"MemTotal": 8 << 20}),
            )
            procs = ht.processes.filter(pc.equal(ht.processes["snapshot_id"], sid)).to_pylist()
            for p in procs:
                anon, file, shmem, rss_file, pte = mem[p["pid"]]
                user = cpu[(sid, p["pid"])]
                p.update(
                    cpu_user_s=user,
                    cpu_system_s=user / 2,
                    pss_anon_kb=anon,
                    pss_file_kb=file,
                    pss_shmem_kb=shmem,
                    rss_file_kb=rss_file,
                    vm_pte_kb=pte,
                    pss_kb=anon + file + shmem,
                    memory_cgroup="/web",
                )
            hw.add_snapshot(
                snap,
                processes=pa.Table.from_pylist(procs),
                mappings=ht.mappings.filter(pc.equal(ht.mappings["snapshot_id"], sid)),
                pages=ht.pages.filter(pc.equal(ht.pages["snapshot_id"], sid)),
                cgroups=pa.table(
                    {
                        "snapshot_id": pa.array([sid], pa.int32()),
                        "cgroup": ["/web"],
                        "cgroup_version": pa.array([2], pa.int8()),
                        "memory_current_bytes": [64 << 20],
                        "memory_stat": [json.dumps({"anon": 5})],
                    }
                ),
            )
    tr = open_trace(root / "v2")
    facts = whole_host_facts(tr, "h")
    assert facts is not None
    assert facts.mem_total_bytes == 8 << 30
    assert facts.cpus == 4
    assert facts.cgroup_memory_current_bytes == 64 << 20
    assert facts.load_average == 2.0
    by_pid = {p.pid: p for p in facts.processes}
    assert set(by_pid) == {10, 11, 12}
    w11 = by_pid[11]
    assert (w11.pss_anon_bytes, w11.pss_file_bytes, w11.pss_shmem_bytes) == (
        500 * 1024,
        400 * 1024,
        8 * 1024,
    )
    assert (w11.rss_file_bytes, w11.page_tables_bytes) == (1000 * 1024, 200 * 1024)
    assert w11.cpu_s == pytest.approx(3.0)  # (4 + 2) - (2 + 1) over the 10 s between snapshots
    assert w11.window_s == 10.0
    # and the capacity model uses them by default: measured, not assumed
    plan = plan_capacity(CapacityInputs(host_mem_bytes=GIB), facts=facts, group_pids=(11, 12))
    assert plan.footprint.page_tables_bytes.source == "measured"
    assert plan.footprint.page_tables_bytes.value == pytest.approx(250 * 1024)
    assert plan.footprint.shmem_bytes.value == pytest.approx(8 * 1024)
    # the private file pages of each worker: (m Pss_File - Rss_File) / (m - 1), m = 3
    assert plan.footprint.file_bytes.value == pytest.approx(((1200 - 1000) + 0) / 2 / 2 * 1024)
    assert plan.cpu_per_worker is not None
    assert plan.cpu_per_worker.source == "measured"
    assert plan.cpu_per_worker.value == pytest.approx((0.3 + 0.15) / 2)
    assert "CPU per worker" in plan.measured
