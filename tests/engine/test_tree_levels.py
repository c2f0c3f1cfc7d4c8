"""The unstable tree's depth as the kernel has it: the tree built in the current full scan.

The kernel empties the unstable tree when a full scan ends, so an insert walks the inserts
made before it in the same scan, whatever the scan before left (docs/kernel-semantics.md
§10.2). Both engines charge ``unstable_per_level_ns`` per level walked.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from planner.engine import CostProfile, KsmKnobs, ReplayOptions, replay
from planner.engine.cost import insert_levels, mean_insert_levels, tree_levels
from planner.testing.builder import World

ENGINES = ["reference", "vectorized"]
N = 3000
#: an idle host's costs with a per-level cost that stands out
PROF = replace(CostProfile.default(), unstable_per_level_ns=1000, busy_page_factor=1.0)


def _replay(w: World, engine: str, pages_to_scan: int):  # type: ignore[no-untyped-def]
    knobs = KsmKnobs(pages_to_scan=pages_to_scan, sleep_ms=20, smart_scan=False, hz=250)
    opts = ReplayOptions(cost=PROF, settle_scans=3)
    return replay(w.host_trace(), knobs=knobs, options=opts, engine=engine)  # type: ignore[arg-type]


def _unique(n: int) -> World:
    w = World()
    w.spawn(100)
    w.map(100, 0x10000, list(range(1, n + 1)))
    w.snapshot(0.0)
    return w


def test_levels_in_closed_form() -> None:
    assert [tree_levels(m) for m in range(9)] == [0, 1, 2, 2, 3, 3, 3, 3, 4]
    for before in range(0, 70):
        for n in range(0, 70):
            assert insert_levels(before, n) == sum(
                tree_levels(m) for m in range(before, before + n)
            )
    # a scan of 30,000 inserts walks 13.9 levels on average; its last insert walks 15
    assert mean_insert_levels(30_000) == pytest.approx(13.91, abs=0.01)
    assert tree_levels(29_999) == 15
    assert mean_insert_levels(0) == 0.0


@given(st.integers(1, 10**9))
def test_the_mean_stays_within_two_levels_of_the_last(n: int) -> None:
    assert math.ceil(math.log2(n)) - 2 < mean_insert_levels(n) <= math.ceil(math.log2(n))


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("pages_to_scan", [1_000_000, 700])
def test_a_scan_of_inserts_costs_the_same_whatever_the_scan_before_left(
    engine: str, pages_to_scan: int
) -> None:
    r = _replay(_unique(N), engine, pages_to_scan)
    s1, s2, s3 = r.scans[:3]
    # scan 1: first visits, nothing inserted; scans 2 and 3: every page inserted
    assert s1.counters["pages_unshared"] == 0
    assert s2.counters["pages_unshared"] == N
    assert s3.counters["pages_unshared"] == N
    batches = -(-N // pages_to_scan)
    assert s2.batches == s3.batches == batches
    want_ns = (
        PROF.scan_start_ns
        + batches * PROF.batch_overhead_ns
        + N * PROF.unstable_base_ns
        + PROF.unstable_per_level_ns * insert_levels(0, N)
    )
    # scan 2 follows a scan that left 0 pages_unshared, scan 3 one that left N: both cost
    # what N inserts into an empty tree cost
    assert s2.cpu_s == pytest.approx(want_ns / 1e9, abs=1e-9)
    assert s3.cpu_s == pytest.approx(want_ns / 1e9, abs=1e-9)
    assert s2.cpu_s * 1e9 == pytest.approx(
        PROF.scan_start_ns + batches * PROF.batch_overhead_ns + N * PROF.scan_insert_ns(N),
        abs=1.0,
    )
    inserts = r.cost.path_visits["unstable"]
    assert inserts % N == 0
    assert r.cost.path_cpu_s["unstable"] * 1e9 == pytest.approx(
        inserts * PROF.unstable_base_ns
        + inserts // N * PROF.unstable_per_level_ns * insert_levels(0, N),
        abs=1.0,
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_a_search_that_finds_its_partner_walks_the_tree_of_its_scan(engine: str) -> None:
    # two processes with the same N contents: in scan 2 the first one's pages are inserted,
    # the second one's find their partners in a tree of N inserts (tree_levels(N) each)
    w = World()
    for pid in (100, 101):
        w.spawn(pid)
        w.map(pid, 0x10000, list(range(1, N + 1)))
    w.snapshot(0.0)
    r = _replay(w, engine, 1_000_000)
    assert r.scans[1].counters["pages_sharing"] == N
    v = r.cost.path_visits
    assert v["merge"] == N
    assert r.cost.path_cpu_s["merge"] * 1e9 == pytest.approx(
        N * PROF.merge_ns + N * tree_levels(N) * PROF.unstable_per_level_ns, abs=1.0
    )
    assert r.cost.path_cpu_s["unstable"] * 1e9 == pytest.approx(
        v["unstable"] * PROF.unstable_base_ns + PROF.unstable_per_level_ns * insert_levels(0, N),
        abs=1.0,
    )
