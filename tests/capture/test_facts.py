"""Process and host facts beside the pages, read from a fake /proc and /sys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from planner.capture.facts import (
    CgroupHierarchy,
    CpuTimes,
    LoadMonitor,
    cgroup_memory,
    host_facts,
    memory_cgroup_of,
    parse_cpu_list,
)
from planner.capture.session import CaptureOptions, capture
from planner.trace.io import open_trace

if TYPE_CHECKING:
    from conftest import FakeProc

ROLLUP = """00400000-7ffc00000000 ---p 00000000 00:00 0                          [rollup]
Rss:                8000 kB
Pss:                5000 kB
Pss_Dirty:          3000 kB
Pss_Anon:           3000 kB
Pss_File:           1900 kB
Pss_Shmem:           100 kB
Anonymous:          3200 kB
Swap:                 12 kB
SwapPss:              10 kB
"""


def _capture(fake_proc: FakeProc, out: Path, key_file: Path, **kw: object) -> object:
    return capture(
        CaptureOptions(
            out=out,
            key_file=key_file,
            proc_root=fake_proc.root,
            sys_root=fake_proc.sys_root,
            interval_s=0.0,
            priority="normal",
            **kw,  # type: ignore[arg-type]
        ),
        sleep=lambda s: None,
    )


def test_process_and_host_facts_are_recorded(
    fake_proc: FakeProc, tmp_path: Path, key_file: Path
) -> None:
    fake_proc.cgroup_v2(
        "/system.slice/web.service",
        current=123 << 20,
        limit=1 << 30,
        stat="anon 50000000\nfile 70000000\nshmem 1000\nkernel 900000\nslab 800000\n"
        "pagetables 70000\n",
    )
    p = fake_proc.process(
        70, utime=250, stime=50, threads=4, rollup=ROLLUP,
        status_extra="RssFile:\t4000 kB\nRssShmem:\t100 kB\nVmPTE:\t52 kB\n",
    )  # fmt: skip
    p.map(0x10000, 1)
    p.page(0x10000, fake_proc.unique_page(1), pfn=700)
    fake_proc.write()
    _capture(fake_proc, tmp_path / "t", key_file, pids=(70,), snapshots=2)
    ht = open_trace(tmp_path / "t").load_host()
    proc = ht.processes.to_pylist()[0]
    hz = 100
    assert (proc["rss_kb"], proc["pss_kb"], proc["pss_anon_kb"]) == (8000, 5000, 3000)
    assert (proc["pss_file_kb"], proc["pss_shmem_kb"], proc["pss_dirty_kb"]) == (1900, 100, 3000)
    assert (proc["swap_kb"], proc["swap_pss_kb"]) == (12, 10)
    assert (proc["rss_file_kb"], proc["rss_shmem_kb"], proc["vm_pte_kb"]) == (4000, 100, 52)
    assert proc["cpu_user_s"] == pytest.approx(250 / hz)
    assert proc["cpu_system_s"] == pytest.approx(50 / hz)
    assert proc["num_threads"] == 4
    assert proc["memory_cgroup"] == "/system.slice/web.service"

    snaps = ht.snapshots.to_pylist()
    s0, s1 = snaps
    assert (s0["mem_total_kb"], s0["mem_available_kb"], s0["anon_pages_kb"]) == (
        16_000_000,
        12_000_000,
        2_000_000,
    )
    assert (s0["cached_kb"], s0["shmem_kb"], s0["slab_kb"], s0["page_tables_kb"]) == (
        3_000_000,
        10_000,
        500_000,
        20_000,
    )
    assert json.loads(s0["meminfo"])["HugePages_Total"] == 0
    assert s0["mem_free_kb"] == 8_000_000
    assert (s0["cpus_online"], s0["user_hz"]) == (4, hz)
    assert (s0["cpu_busy_ticks"], s0["cpu_total_ticks"]) == (6, 10)  # cpu 1 2 3 4: idle 4
    assert (s0["procs_running"], s0["loadavg_1m"]) == (3, 1.5)
    assert s0["capture_cpu_s"] >= 0
    # the interval after snapshot 0 ends where snapshot 1 begins; the last has none
    assert s0["interval_s"] == pytest.approx(s1["time_s"] - s0["time_s"])
    assert s0["interval_runnable_mean"] == 3.0
    assert s0["interval_load_samples"] >= 2
    assert s0["interval_cpu_busy_share"] is None  # the fake counters did not move
    assert s0["interval_capture_cpu_s"] >= 0
    assert s1["interval_s"] is None
    assert s1["interval_runnable_mean"] is None

    rows = ht.cgroups.to_pylist()
    assert [(r["snapshot_id"], r["cgroup"], r["cgroup_version"]) for r in rows] == [
        (0, "/system.slice/web.service", 2),
        (1, "/system.slice/web.service", 2),
    ]
    r = rows[0]
    assert (r["memory_current_bytes"], r["memory_max_bytes"]) == (123 << 20, 1 << 30)
    assert (r["anon_bytes"], r["file_bytes"], r["shmem_bytes"]) == (50_000_000, 70_000_000, 1000)
    assert (r["kernel_bytes"], r["slab_bytes"], r["pagetables_bytes"]) == (900_000, 800_000, 70_000)
    assert json.loads(r["memory_stat"])["anon"] == 50_000_000


def test_facts_that_cannot_be_read_are_null(
    fake_proc: FakeProc, tmp_path: Path, key_file: Path
) -> None:
    (fake_proc.root / "meminfo").unlink()
    (fake_proc.root / "loadavg").unlink()
    p = fake_proc.process(71)  # no smaps_rollup, no VmPTE; no cgroup hierarchy in /sys
    p.map(0x10000, 1)
    p.page(0x10000, fake_proc.unique_page(2), pfn=710)
    fake_proc.write()
    _capture(fake_proc, tmp_path / "t", key_file, pids=(71,))
    ht = open_trace(tmp_path / "t").load_host()
    proc = ht.processes.to_pylist()[0]
    assert proc["pss_kb"] is None
    assert proc["vm_pte_kb"] is None
    assert proc["memory_cgroup"] is None
    snap = ht.snapshots.to_pylist()[0]
    assert snap["mem_total_kb"] is None
    assert snap["meminfo"] is None
    assert snap["procs_running"] is None
    assert ht.cgroups.num_rows == 0


def test_cgroup_v1_memory_controller(fake_proc: FakeProc) -> None:
    mem = fake_proc.sys_root / "fs" / "cgroup" / "memory"
    d = mem / "app"
    d.mkdir(parents=True)
    (mem / "memory.usage_in_bytes").write_text("999\n")
    (d / "memory.usage_in_bytes").write_text("4096\n")
    (d / "memory.limit_in_bytes").write_text(f"{(1 << 63) - 4096}\n")  # v1's "no limit"
    (d / "memory.stat").write_text("rss 10\ntotal_rss 4000\ntotal_cache 96\ntotal_shmem 0\n")
    h = CgroupHierarchy.find(fake_proc.procfs())
    assert h is not None
    assert h.version == 1
    row = cgroup_memory(h, "/app")
    assert row is not None
    assert (row["memory_current_bytes"], row["memory_max_bytes"]) == (4096, None)
    assert (row["anon_bytes"], row["file_bytes"], row["kernel_bytes"]) == (4000, 96, None)
    assert memory_cgroup_of({"": "/", "4": "x", "memory": "/app"}, h) == "/app"
    assert memory_cgroup_of({"cpu,memory": "/b"}, h) == "/b"
    assert cgroup_memory(h, "/../etc") is None  # never leaves the hierarchy
    assert cgroup_memory(h, "/nosuch") is None


def test_load_monitor_and_counters(fake_proc: FakeProc) -> None:
    fs = fake_proc.procfs()
    stat = fake_proc.root / "stat"
    monitor = LoadMonitor(fs)
    monitor.start()
    (fake_proc.root / "loadavg").write_text("2.0 1 1 7/250 1\n")
    monitor.sample()
    stat.write_text("cpu  11 2 13 24 0 0 0 0 5 0\nbtime 1\n")  # +10 user +10 system +20 idle
    out = monitor.finish()
    assert out["interval_cpu_busy_share"] == pytest.approx(0.5)
    assert out["interval_runnable_mean"] == pytest.approx((3 + 7 + 7) / 3)
    assert out["interval_load_samples"] == 3
    assert CpuTimes.parse("intr 1\n") is None
    assert parse_cpu_list("0-3,8,10-11") == 7
    facts = host_facts(fs)
    assert facts["cpu_total_ticks"] == 50
    assert facts["cpu_busy_ticks"] == 26
