"""The growth continued after the trace (planner.engine.growth)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from planner.engine import KsmKnobs, ReplayOptions, prepare, replay
from planner.engine.growth import MAX_GROWTH_FRACTION, continue_growth, fit_growth
from planner.engine.prepare import ReplayInput
from planner.testing.builder import World
from planner.testing.strategies import ChurnSpec, with_write_counts
from tests.engine.test_writes import assert_engines_agree_with_writes


def _curve(n_inf: float, a: float, tau: float, ts: list[float]) -> list[float]:
    return [n_inf - a * math.exp(-t / tau) for t in ts]


def test_a_saturating_curve_is_recovered_from_three_points() -> None:
    ts = [0.0, 2.0, 4.3]
    fit = fit_growth(ts, _curve(60_000, 20_000, 12.5, ts))
    assert fit.status == "continued"
    assert fit.tau_s == pytest.approx(12.5, rel=1e-6)
    left = 20_000 * math.exp(-4.3 / 12.5)
    assert fit.remaining_pages == pytest.approx(left, rel=1e-6)
    # equal intervals: R = d2 r / (1 - r), the brief's estimate
    d = [43_195, 45_622, 47_689]
    r = fit_growth([0.0, 2.0, 4.0], [float(x) for x in d])
    ratio = (d[2] - d[1]) / (d[1] - d[0])
    assert r.remaining_pages == pytest.approx((d[2] - d[1]) * ratio / (1 - ratio), rel=1e-6)


@pytest.mark.parametrize(
    ("sizes", "status"),
    [
        ([1000, 1000, 1000], "none"),  # no growth
        ([1000, 1100, 1050], "none"),  # grew, then shrank (a heap given back)
        ([1000, 900, 800], "none"),  # shrinking
        ([1000, 1100, 1200], "not saturating"),  # linear: no end in sight
        ([1000, 1100, 1300], "not saturating"),  # accelerating
        ([1000, 2000, 2999], "not credible"),  # slows by a hair: tau of thousands of s
    ],
)
def test_no_growth_unless_the_trace_shows_it_slowing(sizes: list[int], status: str) -> None:
    fit = fit_growth([0.0, 2.0, 4.0], [float(s) for s in sizes])
    assert fit.status == status, fit.reason
    assert fit.remaining_pages == 0.0


def _growing_world(steps: tuple[int, int] = (40, 20), workers: int = 2) -> World:
    """Workers whose heaps grow by ``steps`` pages per interval: half the new pages hold a
    content shared by every worker at the same offset, a quarter repeat a content already
    there before, a quarter are each worker's own."""
    w = World()
    for p in range(workers):
        w.spawn(100 + p, comm="w")
        w.map(100 + p, 0x100000, [1000 + i for i in range(100)])  # shared by all
        w.map(100 + p, 0x200000, [5000 + 1000 * p + i for i in range(50)])  # own
    w.snapshot(0.0)
    base = 0
    for k, n in enumerate(steps):
        for p in range(workers):
            contents = []
            for i in range(n):
                if i % 4 in (0, 1):
                    contents.append(20_000 + k * 1000 + i)  # new, same in every worker
                elif i % 4 == 2:
                    contents.append(1000 + i)  # an existing content again
                else:
                    contents.append(90_000 + 10_000 * p + k * 1000 + i)  # new, own
            w.map(100 + p, 0x400000 + (base << 12), contents)
        base += n
        w.snapshot(2.0 * (k + 1))
    return w


def test_growth_adds_snapshots_with_the_measured_structure() -> None:
    inp = prepare(_growing_world().host_trace())
    out, note = continue_growth(inp, seed=3)
    assert note.status == "continued", note.reason
    assert note.sizes_pages == [300, 380, 420]
    assert out.n_snapshots == inp.n_snapshots + note.steps
    last = out.snapshots[out.n_snapshots - 1]
    added = last.n - inp.snapshots[inp.n_snapshots - 1].n
    assert added == note.total_pages
    # 95 % of what the exact curve still grows (40 then 20: r = 1/2, R = 20)
    assert note.total_pages == pytest.approx(0.95 * 20 * 2, abs=2)
    assert note.pages_by_pid == {"100": note.total_pages // 2, "101": note.total_pages // 2}
    assert note.repeat_fraction == pytest.approx(0.25)
    # the times follow the last snapshot, each step later
    times = out.times_ns[inp.n_snapshots - 1 :]
    assert all(b > a for a, b in itertools.pairwise(times))
    # contents: rows that repeat an existing content keep it; the others are new, shared
    # across the workers where the template was
    before = set(inp.snapshots[inp.n_snapshots - 1].hash.tolist())
    prev = inp.snapshots[inp.n_snapshots - 1]
    new_keys = np.setdiff1d(last.keys(), prev.keys())
    pos = np.searchsorted(last.keys(), new_keys)
    hashes = last.hash[pos]
    mm = last.mm[pos]
    kept = np.isin(hashes, list(before))
    assert 0 < kept.mean() < 0.6
    fresh = hashes[~kept]
    shared = set(fresh[mm[~kept] == 0].tolist()) & set(fresh[mm[~kept] == 1].tolist())
    assert shared, "contents shared by both workers' templates stay shared"
    # new pages are fresh frames: none fork-shared with an older row
    assert np.unique(last.frame).size == last.n


def test_growth_is_deterministic_for_a_seed() -> None:
    inp = prepare(_growing_world().host_trace())
    a, _ = continue_growth(inp, seed=1)
    b, _ = continue_growth(inp, seed=1)
    c, _ = continue_growth(inp, seed=2)

    def last(x: ReplayInput) -> np.ndarray:
        return x.snapshots[x.n_snapshots - 1].hash

    assert np.array_equal(last(a), last(b))
    assert not np.array_equal(last(a), last(c))


def test_the_growth_is_capped_by_the_size() -> None:
    # 10 pages, then +100 and +89: the curve would add about 720 more
    w = World()
    w.spawn(100, comm="w")
    w.map(100, 0x100000, list(range(1, 11)))
    w.snapshot(0.0)
    w.map(100, 0x200000, list(range(100, 200)))
    w.snapshot(2.0)
    w.map(100, 0x300000, list(range(300, 389)))
    w.snapshot(4.0)
    _out, note = continue_growth(prepare(w.host_trace()))
    assert note.status == "continued"
    assert note.capped
    assert note.total_pages <= MAX_GROWTH_FRACTION * 199 + 1


def test_a_shrinking_heap_is_not_continued() -> None:
    w = _growing_world((40, 20))
    w.unmap(100, 0x400000, 60)
    w.unmap(101, 0x400000, 60)
    w.snapshot(6.0)
    inp = prepare(w.host_trace())
    out, note = continue_growth(inp)
    assert note.status == "none"
    assert out is inp


def _replayed(inp: ReplayInput, **kw: object) -> dict[str, object]:
    res = replay(
        inp,
        knobs=KsmKnobs(pages_to_scan=50, sleep_ms=20, hz=250),
        options=ReplayOptions(duration_s=40.0, **kw),  # type: ignore[arg-type]
    )
    return {"growth": res.provenance["growth"], "sharing": res.final_counters["pages_sharing"]}


def test_replay_states_the_growth_and_can_turn_it_off() -> None:
    inp = prepare(_growing_world().host_trace())
    on, off = _replayed(inp), _replayed(inp, growth=False)
    g = on["growth"]
    assert isinstance(g, dict)
    assert g["status"] == "continued"
    assert g["total_pages"] > 0
    assert "pages/s" in str(g["summary"])
    assert off["growth"] == {**off["growth"], "status": "off"}  # type: ignore[dict-item]
    assert int(on["sharing"]) > int(off["sharing"])  # type: ignore[call-overload]
    scan = _replayed(inp, snapshot_alignment="scan")
    assert scan["growth"]["status"] == "scan-aligned"  # type: ignore[index]


@pytest.mark.parametrize("seed", [0, 5])
def test_engines_agree_on_grown_memory_with_writes(seed: int) -> None:
    ht = with_write_counts(
        _growing_world().host_trace(), seed, ChurnSpec(written_share=0.5, last_interval_s=1.0)
    )
    inp, note = continue_growth(prepare(ht), seed=seed)
    assert note.status == "continued"
    assert inp.writes[-1] is not None
    assert inp.writes[-1].origin_ns is not None
    res, _ = assert_engines_agree_with_writes(
        inp,
        KsmKnobs(pages_to_scan=40, sleep_ms=20, hz=250),
        ReplayOptions(duration_s=30.0),
        seed=seed,
    )
    assert res.cow_breaks >= 0
