"""Semantics of the model that the conformance scenarios do not pin down (both engines)."""

from __future__ import annotations

import pytest

from planner.engine import KsmKnobs, ReplayOptions, replay
from planner.engine.registration import ProcessInfo, Registration
from planner.engine.result import RMAP_ITEM_BYTES
from planner.testing.builder import World

FAST = {"pages_to_scan": 1_000_000, "sleep_ms": 300, "smart_scan": False}
ENGINES = ["reference", "vectorized"]


def run(
    w: World, *, engine: str, scans: tuple[int, ...] | None = None, settle: int = 4, **knobs: object
):
    opts = ReplayOptions(settle_scans=settle, snapshot_scans=scans)
    return replay(w.host_trace(), knobs=KsmKnobs(**{**FAST, **knobs}), options=opts, engine=engine)  # type: ignore[arg-type]


@pytest.mark.parametrize("engine", ENGINES)
def test_fork_shared_frames_are_not_savings(engine: str) -> None:
    # a master and 3 workers still sharing 50 frames from the fork: one frame each, nothing to gain
    w = World()
    w.spawn(100, comm="master")
    w.map(100, 0x10000, list(range(1, 51)))
    for child in (101, 102, 103):
        w.fork(100, child)
    w.snapshot(0.0)
    r = run(w, engine=engine)
    assert r.final_truth.frames_without_ksm == 50
    assert r.final_truth.saved_frames == 0
    assert r.final_counters["pages_sharing"] == 0
    # the master's page goes to the unstable tree, the workers' (same page) find it there and stop
    assert r.final_counters["pages_unshared"] == 50
    assert r.cost.path_visits["no_merge"] > 0


@pytest.mark.parametrize("engine", ENGINES)
def test_copies_on_distinct_frames_merge_and_frames_are_freed(engine: str) -> None:
    w = World()
    for pid in (100, 101, 102):
        w.spawn(pid)
        w.map(pid, 0x10000, list(range(1, 11)) + [pid * 1000 + i for i in range(5)])
    w.snapshot(0.0)
    r = run(w, engine=engine)
    t = r.final_truth
    assert t.frames_without_ksm == 45
    assert t.frames_with_ksm == 10 + 15  # one KSM page per shared content, the unique pages stay
    assert t.saved_frames == 20
    assert r.final_counters["pages_shared"] == 10
    assert r.final_counters["pages_sharing"] == 20
    assert t.net_saved_bytes == 20 * 4096 - (45 + 10) * 64  # 45 rmap_items + 10 stable nodes
    c = r.final_counters
    assert (
        c["general_profit"]
        == (c["pages_sharing"] + c["ksm_zero_pages"]) * 4096 - c["rmap_items"] * RMAP_ITEM_BYTES
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_cow_is_lazy_in_the_counters_but_not_in_the_truth(engine: str) -> None:
    w = World()
    for pid in (100, 101):
        w.spawn(pid)
        w.map(pid, 0x10000, [7] * 10)
    w.snapshot(0.0)
    w.write_range(101, 0x10000, list(range(500, 510)))  # process 101 rewrites its copies
    w.snapshot(1.0)
    r = run(w, engine=engine, scans=(1, 3), settle=2)
    s2, s3 = r.scans[1], r.scans[2]
    assert s2.counters["pages_sharing"] == 19
    # snapshot 1 applies before scan 3: 101's ten COW breaks are already true in memory...
    assert r.snapshot_first_scan == [1, 3]
    # ...and after scan 3 the counters caught up
    assert s3.counters["pages_sharing"] == 9
    assert s3.counters["pages_shared"] == 1
    assert s3.truth.saved_frames == 9


@pytest.mark.parametrize("engine", ENGINES)
def test_an_exited_process_is_counted_until_ksmd_gets_there(engine: str) -> None:
    w = World()
    for pid in (100, 101):
        w.spawn(pid)
        w.map(pid, 0x10000, [5] * 20)
    w.snapshot(0.0)
    w.exit(100)
    w.snapshot(1.0)
    r = run(w, engine=engine, scans=(1, 3), settle=2)
    assert r.scans[1].counters["pages_sharing"] == 39
    # after the exit the truth has only 101's 20 pages on one KSM page; counters follow at scan 3
    assert r.scans[2].counters["pages_sharing"] == 19
    assert r.scans[2].truth.frames_without_ksm == 20
    assert "100" not in r.scans[2].processes


@pytest.mark.parametrize("engine", ENGINES)
def test_policy_off_and_madvise_by_kind(engine: str) -> None:
    w = World()
    for pid, comm in ((100, "web"), (101, "web"), (102, "batch")):
        w.spawn(pid, comm=comm)
        w.map(pid, 0x10000, [3] * 4, kind="heap")
        w.map(pid, 0x90000, [4] * 4, kind="anon")
    w.snapshot(0.0)

    def policy(info: ProcessInfo, parent: Registration | None) -> Registration:
        if info.comm == "batch":
            return Registration(mode="off")
        return Registration(mode="madvise", kinds=frozenset({"heap"}))

    opts = ReplayOptions(settle_scans=3)
    r = replay(w.host_trace(), knobs=KsmKnobs(**FAST), options=opts, engine=engine, resolver=policy)  # type: ignore[arg-type]
    # only the two web processes' heap pages: 8 pages of one content on one KSM page
    assert r.final_counters["pages_shared"] == 1
    assert r.final_counters["pages_sharing"] == 7
    assert r.final_processes["102"]["ksm_rmap_items"] == 0
    assert r.final_processes["100"]["ksm_rmap_items"] == 4


@pytest.mark.parametrize("engine", ENGINES)
def test_batches_and_time(engine: str) -> None:
    # 250 pages, 100 per batch: 3 batches per full scan (the last one only closes the scan)
    w = World()
    w.spawn(100)
    w.map(100, 0x10000, list(range(1, 251)))
    w.snapshot(0.0)
    r = replay(
        w.host_trace(),
        knobs=KsmKnobs(pages_to_scan=100, sleep_ms=20, smart_scan=False),
        options=ReplayOptions(settle_scans=3),
        engine=engine,
    )  # type: ignore[arg-type]
    assert [s.batches for s in r.scans] == [3, 3, 3]
    r2 = replay(
        w.host_trace(),
        knobs=KsmKnobs(pages_to_scan=125, sleep_ms=20, smart_scan=False),
        options=ReplayOptions(settle_scans=3),
        engine=engine,
    )  # type: ignore[arg-type]
    assert [s.batches for s in r2.scans] == [3, 3, 3]  # 250 = 2 x 125: floor(P / pts) + 1
    # each batch sleeps 5 jiffies + 1 at HZ=250 (24 ms) plus the wake-up latency and its CPU
    gap = r.scans[1].t_s - r.scans[0].t_s
    assert 3 * 0.024 < gap < 3 * 0.030


def test_duration_holds_the_last_snapshot() -> None:
    w = World()
    w.spawn(100)
    w.map(100, 0x10000, [1, 1, 2, 2])
    w.snapshot(0.0)
    r = replay(w.host_trace(), options=ReplayOptions(duration_s=30.0, grid_s=5.0))
    assert r.duration_s == 30.0
    assert [g.t_s for g in r.grid] == [0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0]
    assert r.grid[-1].truth.saved_frames == 2
