"""The ksmd driver: knob translation, schedules, and (marker ``kernel``) runs on the real KSM."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from planner.capture.procfs import ProcFS
from planner.engine import KsmKnobs
from planner.errors import EnvironmentProblem, UsageProblem
from planner.kernel.materialize import plan_materialization
from planner.kernel.run import HolderSet, run_on_kernel, sysfs_knobs
from planner.kernel.sysfs import KsmLease
from planner.testing import World
from planner.trace.io import HostTrace

FAST = {"pages_to_scan": 1_000_000, "sleep_millisecs": 100, "smart_scan": 0}


def two_snapshots() -> HostTrace:
    w = World()
    w.spawn(100)
    w.map(100, 0x10000, [1] * 10)
    w.snapshot(0.0)
    w.exit(100)
    w.spawn(200)
    w.map(200, 0x10000, [2] * 4)
    w.snapshot(1.0)
    return w.host_trace()


def test_replay_knobs_translate_to_sysfs_names() -> None:
    k = KsmKnobs(
        pages_to_scan=1000,
        sleep_ms=50,
        hz=250,
        max_page_sharing=10,
        use_zero_pages=True,
        smart_scan=False,
    )
    assert sysfs_knobs(k) == {
        "pages_to_scan": 1000,
        "sleep_millisecs": 50,
        "max_page_sharing": 10,
        "use_zero_pages": 1,
        "smart_scan": 0,
        "stable_node_chains_prune_millisecs": 2000,
        "advisor_max_cpu": 70,
        "advisor_min_pages_to_scan": 500,
        "advisor_max_pages_to_scan": 30000,
        "advisor_target_scan_time": 200,
        "advisor_mode": "none",
        "merge_across_nodes": 1,
    }


def test_with_the_advisor_pages_to_scan_is_left_to_it() -> None:
    k = KsmKnobs(pages_to_scan=1000, advisor="scan-time", advisor_min_pages_to_scan=700)
    out = sysfs_knobs(k)
    assert out["advisor_mode"] == "scan-time"
    assert out["advisor_min_pages_to_scan"] == 700
    assert "pages_to_scan" not in out
    assert sysfs_knobs({"sleep_ms": 7}) == {"sleep_millisecs": 7}


@pytest.mark.parametrize(
    ("schedule", "scans", "match"),
    [
        ([1], 3, "2 snapshots"),
        ([2, 3], 3, "visible at full scan 1"),
        ([1, 3], 0, "at least 1"),
        ([3, 1], 3, "visible at full scan 1"),
    ],
)
def test_bad_schedules_are_refused_before_anything_runs(
    schedule: list[int], scans: int, match: str
) -> None:
    with pytest.raises(UsageProblem, match=match):
        run_on_kernel(
            two_snapshots(), knobs=FAST, snapshot_scans=schedule, scans=scans, lease=_no_lease()
        )


def test_a_decreasing_schedule_is_refused() -> None:
    w = World()
    w.spawn(1)
    w.map(1, 0x1000, [1])
    for t in range(3):
        w.snapshot(float(t))
    with pytest.raises(UsageProblem, match="must not decrease"):
        run_on_kernel(
            w.host_trace(), knobs=FAST, snapshot_scans=[1, 3, 2], scans=3, lease=_no_lease()
        )


def test_memory_is_checked_on_the_given_procfs(tmp_path: Path) -> None:
    """/proc is read through an injectable ProcFS: a fake meminfo with too little memory."""
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "meminfo").write_text("MemTotal: 1000 kB\nMemAvailable:  100 kB\n")
    with pytest.raises(EnvironmentProblem, match=r"only 0\.0 GiB is available"):
        run_on_kernel(
            two_snapshots(),
            knobs=FAST,
            snapshot_scans=[1, 2],
            scans=2,
            lease=_no_lease(),
            procfs=ProcFS(proc),
        )
    (proc / "vmstat").write_text("nr_free_pages 10\ncow_ksm 7\n")
    holders = HolderSet(plan_materialization(two_snapshots()), procfs=ProcFS(proc))
    assert holders.vmstat() == {"cow_ksm": 7}


def _no_lease() -> KsmLease:
    """A lease object that is never entered (the schedule is checked first)."""
    return KsmLease()


@pytest.mark.kernel
def test_run_records_every_scan_and_snapshot_and_ends_when_the_list_is_empty(
    ksm_lease: KsmLease,
) -> None:
    ht = two_snapshots()
    run = run_on_kernel(
        ht, knobs=FAST, snapshot_scans=[1, 3], scans=6, lease=ksm_lease, detail=True
    )
    assert [s.full_scans for s in run.scans] == [1, 2, 3, 4, 5, 6]
    assert run.snapshot_scans == [1, 3]
    assert [(r.index, r.before_scan) for r in run.snapshots] == [(0, 1), (1, 3)]
    assert run.scan(2).counters["pages_sharing"] == 9
    assert run.scan(2).processes[100]["ksm_merging_pages"] == 10
    assert set(run.scan(3).processes) == {200}  # 100 exited, 200 new
    assert run.scan(3).counters["pages_sharing"] == 0  # 100's mm torn down in scan 3
    assert run.scan(4).counters["pages_sharing"] == 3
    assert run.scan(6).counters["pages_scanned"] == 10 + 10 + 4 * 4
    json.dumps(run.to_dict())  # JSON-ready
    assert ksm_lease.sysfs.read("run") == 0


@pytest.mark.kernel
def test_an_empty_list_applies_the_next_snapshot_at_once(ksm_lease: KsmLease) -> None:
    w = World()
    w.spawn(100)
    w.map(100, 0x10000, [1] * 4)
    w.snapshot(0.0)
    w.exit(100)
    w.snapshot(1.0)  # nobody left: ksmd would sleep until a process registers
    w.spawn(200)
    w.map(200, 0x10000, [2] * 4)
    w.snapshot(2.0)
    run = run_on_kernel(
        w.host_trace(), knobs=FAST, snapshot_scans=[1, 3, 9], scans=5, lease=ksm_lease
    )
    assert run.snapshot_scans == [1, 3, 4]  # snapshot 2 came when the list was empty
    assert not run.ended_early
    assert run.scan(5).counters["pages_sharing"] == 3


@pytest.mark.kernel
def test_a_plan_is_accepted_and_the_run_ends_early_when_everyone_exited(
    ksm_lease: KsmLease,
) -> None:
    w = World()
    w.spawn(100)
    w.map(100, 0x10000, [1] * 4)
    w.snapshot(0.0)
    w.exit(100)
    w.snapshot(1.0)
    plan = plan_materialization(w.host_trace())
    run = run_on_kernel(plan, knobs=FAST, snapshot_scans=[1, 2], scans=10, lease=ksm_lease)
    assert run.ended_early
    assert [s.full_scans for s in run.scans] == [1, 2]  # scan 2 tore the exited mm down
    assert run.scan(2).counters["pages_volatile"] == 0


class _GilHog:
    """A thread that holds the GIL for ``hold_s`` at a time (one long C call), as a busy
    thread of the caller or a garbage collection of a big heap does."""

    def __init__(self, hold_s: float) -> None:
        import threading

        n = 1_000_000
        t0 = time.perf_counter()
        sum(range(n))
        per = (time.perf_counter() - t0) / n
        self.n = max(int(hold_s / max(per, 1e-10)), n)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            sum(range(self.n))  # one C call: the GIL is not released until it returns
            time.sleep(0.05)  # the caller's turn (it needs the GIL for every step)

    def __enter__(self) -> _GilHog:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


@pytest.mark.kernel
def test_a_caller_off_cpu_longer_than_ksmds_sleep_still_stops_it_at_the_scan_end(
    ksm_lease: KsmLease,
) -> None:
    # The end of a full scan is caught by a separate process: another thread of the caller
    # holding the GIL for 0.3 s at a time (ksmd sleeps 20 ms between its one-batch scans)
    # made the caller's own polling miss scan ends ("completed full scan 9 before it could be
    # stopped after scan 6" in CI).
    knobs = {**FAST, "sleep_millisecs": 20}
    with _GilHog(0.3):
        run = run_on_kernel(
            two_snapshots(), knobs=knobs, snapshot_scans=[1, 3], scans=8, lease=ksm_lease
        )
    assert [s.full_scans for s in run.scans] == list(range(1, 9))
    assert run.scan(2).counters["pages_sharing"] == 9
    assert run.scan(8).counters["pages_sharing"] == 3
