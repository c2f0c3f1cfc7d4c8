"""The growth continued after the trace (planner.engine.growth)."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import planner.engine.growth as growth
from planner.engine import KsmKnobs, ReplayOptions, prepare, replay
from planner.engine.growth import (
    INSIDE,
    MAX_GROWTH_FRACTION,
    NEW_MAPPINGS,
    continue_growth,
    fit_growth,
)
from planner.engine.prepare import ReplayInput
from planner.engine.registration import ProcessInfo, Registration
from planner.engine.rows import ContentCatalog, SnapshotSequence
from planner.engine.writes import IntervalWrites
from planner.testing.builder import World
from planner.testing.random_world import WorldSpec, random_world
from planner.testing.strategies import ChurnSpec, with_write_counts, world_specs
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


HEAP = 0x400000


def _fill(w: World, pid: int, vma_start: int, first_page: int, contents: list[int]) -> None:
    """Pages filled inside the mapping at ``vma_start`` from its page ``first_page`` on."""
    addr = vma_start + first_page * 4096
    w.map(pid, addr, contents)
    for i in range(len(contents)):
        w.procs[pid].pages[addr + i * 4096].vma_start = vma_start


def _growing_world(
    steps: tuple[int, int] = (40, 20), workers: int = 2, new_maps: tuple[int, int] = (0, 0)
) -> World:
    """Workers whose heaps (one mapping, there from the start) fill by ``steps`` pages per
    interval: half the new pages hold a content shared by every worker at the same offset, a
    quarter repeat a content already there before, a quarter are each worker's own. Each
    also maps ``new_maps`` pages per interval in a mapping new in it, all but every fifth
    page repeating a content held before (the last of them each worker's own)."""
    w = World()
    for p in range(workers):
        w.spawn(100 + p, comm="w")
        w.map(100 + p, 0x100000, [1000 + i for i in range(100)])  # shared by all
        w.map(100 + p, 0x200000, [5000 + 1000 * p + i for i in range(50)])  # own
        w.map(100 + p, HEAP, [7000 + i for i in range(10)])  # the heap's first pages
    w.snapshot(0.0)
    base = 10
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
            _fill(w, 100 + p, HEAP, base, contents)
            if new_maps[k]:
                held = [
                    1000 + i % 100 if i % 5 else 60_000 + 1000 * p + 100 * k + i
                    for i in range(new_maps[k])
                ]
                w.map(100 + p, 0x10000000 + k * 0x1000000, held)
        base += n
        w.snapshot(2.0 * (k + 1))
    return w


def test_growth_adds_snapshots_with_the_measured_structure() -> None:
    inp = prepare(_growing_world().host_trace())
    out, note = continue_growth(inp, seed=3)
    assert note.status == "continued", note.reason
    assert note.sizes_pages == [320, 400, 440]
    assert out.n_snapshots == inp.n_snapshots + note.steps
    last = out.snapshots[out.n_snapshots - 1]
    added = last.n - inp.snapshots[inp.n_snapshots - 1].n
    assert added == note.total_pages
    # 95 % of what the exact curve still grows (40 then 20: r = 1/2, R = 20)
    assert note.total_pages == pytest.approx(0.95 * 20 * 2, abs=2)
    assert note.pages_by_pid == {"100": note.total_pages // 2, "101": note.total_pages // 2}
    assert note.repeat_fraction == pytest.approx(0.25)
    inside, new_maps = note.kinds[INSIDE], note.kinds[NEW_MAPPINGS]
    assert inside["rule"] == "saturating fit"
    assert inside["interval_pages"] == [80, 40]
    assert inside["total_pages"] == note.total_pages
    assert new_maps["status"] == "none"
    assert new_maps["interval_pages"] == [0, 0]
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


def _grown_rows(inp: ReplayInput, out: ReplayInput) -> tuple[np.ndarray, np.ndarray]:
    """Hashes and mms of the rows the growth added."""
    prev = inp.snapshots[inp.n_snapshots - 1]
    last = out.snapshots[out.n_snapshots - 1]
    pos = np.searchsorted(last.keys(), np.setdiff1d(last.keys(), prev.keys()))
    return last.hash[pos], last.mm[pos]


def test_new_mappings_alone_go_on_at_their_mean_rate() -> None:
    # the heaps hold still; each worker maps 30 then 50 pages in new mappings
    inp = prepare(_growing_world((0, 0), new_maps=(30, 50)).host_trace())
    out, note = continue_growth(inp, seed=1)
    assert note.status == "continued", note.reason
    inside, new_maps = note.kinds[INSIDE], note.kinds[NEW_MAPPINGS]
    assert inside["status"] == "none"
    assert inside["interval_pages"] == [0, 0]
    assert new_maps["rule"] == "mean rate"
    assert new_maps["interval_pages"] == [60, 100]
    # no start time in the trace: as long again as the snapshots watched (4 s), at the
    # mean rate of 160 pages / 4 s
    assert new_maps["rate_pages_per_s"] == pytest.approx(40.0)
    assert new_maps["horizon_s"] == pytest.approx(4.0)
    assert note.total_pages == new_maps["total_pages"] == 160
    assert new_maps["pages_by_pid"] == {"100": 80, "101": 80}
    # templates: the last interval's new mapping (50 rows per worker), 4 in 5 held before
    assert new_maps["template_rows"] == 100
    assert new_maps["repeat_fraction"] == pytest.approx(0.8)
    hashes, _ = _grown_rows(inp, out)
    held = np.isin(hashes, inp.snapshots[inp.n_snapshots - 2].hash)
    assert held.mean() == pytest.approx(0.8, abs=0.1)
    # a steady pace: the same number of pages per equal step, until the horizon
    add = np.diff([d.n_rows for d in out.deltas[inp.n_snapshots - 1 :]])
    assert add.sum() == 160
    assert add.max() - add[add > 0].min() <= 2


def test_new_mappings_go_on_for_as_long_again_as_each_process_ran() -> None:
    inp = prepare(_growing_world((0, 0), new_maps=(30, 50)).host_trace())

    def started(ages: dict[int, float]) -> ReplayInput:
        t_last = inp.times_ns[-1] / 1e9
        starts = {m: t_last - a for m, a in ages.items()}
        return dataclasses.replace(inp, meta={**inp.meta, "mm_start_s": starts})

    _out, note = continue_growth(started({0: 6.0, 1: 10.0}), seed=1)
    k = note.kinds[NEW_MAPPINGS]
    # each at 20 pages/s, for 6 and 10 s
    assert k["pages_by_pid"] == {"100": 120, "101": 200}
    assert k["horizon_s"] == pytest.approx(10.0)
    assert "as long again as each process had run (6-10 s)" in k["reason"]
    assert not k["capped"]
    # older processes: 400 + 800 pages would more than double the 480 the two hold
    _out, note = continue_growth(started({0: 20.0, 1: 40.0}), seed=1)
    k = note.kinds[NEW_MAPPINGS]
    assert k["capped"]
    assert note.capped
    assert note.total_pages == pytest.approx(MAX_GROWTH_FRACTION * 480, abs=2)


def test_both_kinds_each_with_its_own_curve_and_templates() -> None:
    inp = prepare(_growing_world((40, 20), new_maps=(30, 50)).host_trace())
    out, note = continue_growth(inp, seed=2)
    inside, new_maps = note.kinds[INSIDE], note.kinds[NEW_MAPPINGS]
    # the heap's fit sees the heap's growth alone (40 then 20 per worker)
    assert inside["interval_pages"] == [80, 40]
    assert inside["rule"] == "saturating fit"
    assert inside["total_pages"] == pytest.approx(0.95 * 40, abs=2)
    assert new_maps["interval_pages"] == [60, 100]
    assert new_maps["total_pages"] == 160
    assert note.total_pages == inside["total_pages"] + new_maps["total_pages"]
    assert note.sizes_pages == [320, 460, 600]
    # each kind draws from its own templates: the heap's repeat a quarter, the mappings 4/5
    assert inside["repeat_fraction"] == pytest.approx(0.25)
    assert new_maps["repeat_fraction"] == pytest.approx(0.8)
    assert inside["template_rows"] == 40
    assert new_maps["template_rows"] == 100
    hashes, _ = _grown_rows(inp, out)
    held = np.isin(hashes, inp.snapshots[inp.n_snapshots - 2].hash)
    want = (0.25 * inside["total_pages"] + 0.8 * 160) / note.total_pages
    assert held.mean() == pytest.approx(want, abs=0.1)
    assert "inside" in note.summary()
    assert "new mappings" in note.summary()


def test_accelerating_growth_inside_is_continued_for_the_span_alone() -> None:
    inp = prepare(_growing_world((20, 40)).host_trace())
    _out, note = continue_growth(inp, seed=0)
    inside = note.kinds[INSIDE]
    assert inside["status"] == "continued"
    assert inside["rule"] == "mean rate"
    assert "does not slow" in inside["reason"]
    # 120 pages over 4 s, for 4 s more
    assert inside["rate_pages_per_s"] == pytest.approx(30.0)
    assert inside["horizon_s"] == pytest.approx(4.0)
    assert inside["total_pages"] == 120


def test_the_same_pages_grow_under_every_policy() -> None:
    # a what-if replays one trace under several policies: the memory added must not depend
    # on which processes or mappings are mergeable (the review checks that memory without
    # KSM is the same in every scenario); a new row is as eligible as its template
    ht = _growing_world((40, 20), new_maps=(30, 50)).host_trace()

    def one_off(info: ProcessInfo, parent: Registration | None) -> Registration:
        return Registration(mode="off") if info.pid == 101 else Registration()

    a, na = continue_growth(prepare(ht), seed=4)
    b, nb = continue_growth(prepare(ht, resolver=one_off), seed=4)
    assert na.total_pages == nb.total_pages > 0
    assert na.kinds == nb.kinds
    la, lb = a.snapshots[a.n_snapshots - 1], b.snapshots[b.n_snapshots - 1]
    assert np.array_equal(la.keys(), lb.keys())
    assert np.array_equal(la.hash, lb.hash)
    assert not lb.eligible[lb.mm == 1].any()
    assert la.eligible.all()


def test_templates_of_the_interval_before_repeat_what_was_held_before_them() -> None:
    # new mappings in the first interval only: the templates are rows the snapshot before
    # the last already holds; whether they repeat a content is judged against the first
    # snapshot (4 in 5 here), not against their own contents one snapshot later (all)
    inp = prepare(_growing_world((40, 20), new_maps=(50, 0)).host_trace())
    _out, note = continue_growth(inp, seed=0)
    k = note.kinds[NEW_MAPPINGS]
    assert k["interval_pages"] == [100, 0]
    assert k["template_rows"] == 100
    assert k["repeat_fraction"] == pytest.approx(0.8)


def test_no_growth_of_either_kind() -> None:
    inp = prepare(_growing_world((0, 0)).host_trace())
    out, note = continue_growth(inp)
    assert out is inp
    assert note.status == "none"
    assert {k: v["status"] for k, v in note.kinds.items()} == {INSIDE: "none", NEW_MAPPINGS: "none"}
    assert note.total_pages == 0


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
    # 10 pages, then +100 and +89 in the same mapping: the curve would add about 720 more
    w = World()
    w.spawn(100, comm="w")
    w.map(100, HEAP, list(range(1, 11)))
    w.snapshot(0.0)
    _fill(w, 100, HEAP, 10, list(range(100, 200)))
    w.snapshot(2.0)
    _fill(w, 100, HEAP, 110, list(range(300, 389)))
    w.snapshot(4.0)
    _out, note = continue_growth(prepare(w.host_trace()))
    assert note.status == "continued"
    assert note.capped
    assert note.total_pages <= MAX_GROWTH_FRACTION * 199 + 1


def test_a_shrinking_heap_is_not_continued() -> None:
    w = _growing_world((40, 20))
    w.unmap(100, HEAP, 70)
    w.unmap(101, HEAP, 70)
    w.snapshot(6.0)
    inp = prepare(w.host_trace())
    out, note = continue_growth(inp)
    assert note.status == "none"
    assert out is inp


def test_a_shrinking_host_without_mappings_is_judged_without_rebuilding_snapshots(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without mapping starts every row is "inside", and a fit that continues nothing needs
    no templates: the sizes come from the deltas' layouts, and no snapshot is rebuilt (at
    4M pages that was 167 B per page of the replay's peak)."""
    w = _growing_world((40, 20))
    w.unmap(100, HEAP, 70)
    w.unmap(101, HEAP, 70)
    w.snapshot(6.0)
    inp = prepare(w.host_trace())
    inp = dataclasses.replace(
        inp, meta={k: v for k, v in inp.meta.items() if k != "mapping_starts"}
    )

    def rebuilt(*_: object) -> None:
        raise AssertionError("a snapshot was rebuilt")

    monkeypatch.setattr(growth, "_last_three", rebuilt)
    monkeypatch.setattr(growth, "apply_delta", rebuilt)
    out, note = continue_growth(inp)
    assert out is inp
    assert note.status == "none"
    assert "new mappings: the input holds no mappings" in note.reason
    assert note.sizes_pages[2] < note.sizes_pages[1]  # the heap gave pages back


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


# ----------------------------------------------------------------- the growth's own helpers
#
# continue_growth compares the last snapshot with the two before from the deltas and from
# two columns of them, not from the three snapshots in full (docs/engine.md, "The growth
# model's memory"); each shortcut is held here to the full computation it replaced.


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**20), spec=world_specs())
def test_the_growths_shortcuts_are_the_full_snapshots_answers(seed: int, spec: WorldSpec) -> None:
    """On random worlds: a row a delta added is one whose (mm, page) the snapshot before
    lacks; ``_last_three`` gives the full rebuild's keys and hashes; ``_held`` is
    ``np.isin``; and the mm of an added row found from the layout is the rebuild's."""
    inp = prepare(random_world(seed, spec).host_trace())
    full = list(SnapshotSequence(inp.deltas, inp.content_hash))
    for k in range(1, len(full)):
        d = inp.deltas[k]
        want = ~np.isin(full[k].keys(), full[k - 1].keys())
        np.testing.assert_array_equal(growth._rows_mask(d.n_rows, d.added), want)
        mm = d.layout.present[np.searchsorted(d.layout.hi, d.added, "right")]
        np.testing.assert_array_equal(mm, full[k].mm[d.added])
    if len(full) >= 3:
        fk, fc, pc, last = growth._last_three(inp.deltas, inp.content_hash)
        np.testing.assert_array_equal(fk, full[-3].keys())
        np.testing.assert_array_equal(inp.content_hash[fc], full[-3].hash)
        np.testing.assert_array_equal(inp.content_hash[pc], full[-2].hash)
        np.testing.assert_array_equal(last.hash, full[-1].hash)
        np.testing.assert_array_equal(last.frame, full[-1].frame)
    assert full[-1].content is not None
    column = full[-1].content
    n_contents = inp.content_hash.size
    probe = np.arange(n_contents, dtype=np.int32)
    held = np.isin(probe, column)
    np.testing.assert_array_equal(growth._held(probe, column, n_contents), held)
    np.testing.assert_array_equal(growth._held(probe[:0], column, n_contents), held[:0])


@contextlib.contextmanager
def _chunk_rows(rows: int, filter_bits: int = 2) -> Iterator[None]:
    saved = growth._CHUNK_ROWS, growth._FILTER_BITS
    growth._CHUNK_ROWS, growth._FILTER_BITS = rows, filter_bits  # type: ignore[misc]
    try:
        yield
    finally:
        growth._CHUNK_ROWS, growth._FILTER_BITS = saved  # type: ignore[misc]


@settings(max_examples=60, deadline=None)
@given(
    known=st.lists(st.integers(0, 40), unique=True, max_size=20),
    calls=st.lists(st.lists(st.integers(0, 60), max_size=12), max_size=5),
)
def test_growth_ids_are_a_catalog_of_the_trace_s(known: list[int], calls: list[list[int]]) -> None:
    """``_GrowthIds`` gives the ids a :class:`ContentCatalog` holding the trace's contents
    gives, call after call, and the same hash of every id, without the catalog."""
    k = np.array(known, np.uint64)
    catalog = ContentCatalog()
    catalog.ids_of(k)
    wanted = np.array([v for c in calls for v in c], np.uint64)
    with _chunk_rows(4):  # the trace's hashes searched in several chunks
        ids = growth._GrowthIds(k, wanted)
    for c in calls:
        values = np.array(c, np.uint64)
        got = ids.ids_of(values)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, catalog.ids_of(values))
    np.testing.assert_array_equal(ids.hashes(k), catalog.hashes())


def test_a_synthetic_host_that_grows_is_continued() -> None:
    """``SynthSpec.growth``: each process fills more of its mapping at every step, half as
    much as at the step before (what the benchmarks' growing hosts use); the growth model
    sees it slowing and continues it, inside the mappings."""
    from planner.testing.synth import SynthSpec, synthetic_host

    spec = SynthSpec.with_chains(40_000, processes=4, snapshots=3, growth=0.1, remap=0.0)
    inp = prepare(synthetic_host(spec))
    sizes = [d.n_rows for d in inp.deltas]
    assert sizes == [40_000, 44_000, 46_000]
    out, note = continue_growth(inp)
    assert note.status == "continued", note.reason
    assert note.kinds[INSIDE]["total_pages"] == note.total_pages > 0
    assert out.n_snapshots == 3 + note.steps
    assert [d.n_rows for d in out.deltas[3:]] == sorted(d.n_rows for d in out.deltas[3:])


@settings(max_examples=100, deadline=None)
@given(data=st.data(), n_base=st.integers(0, 12), steps=st.integers(1, 4))
def test_appended_snapshots_write_counts_are_the_gathered_ones(
    data: st.DataObject, n_base: int, steps: int
) -> None:
    """Steps insert rows anywhere into the snapshot before; ``_moved_up`` keeps, for each
    step, where its rows not in the base snapshot are and the base row each copies, and
    ``IntervalWrites.per_row`` then gives the counts a full gather per step gave."""
    content = np.arange(n_base, dtype=np.uint16) * 3 + 1
    same = np.arange(n_base, dtype=np.uint16) % 4
    toggle = np.arange(n_base) % 3 == 0
    rows: list[int] = list(range(n_base))  # per row of the current snapshot: its base row
    at, src = np.empty(0, np.int64), np.empty(0, np.int64)
    grown: list[int] = []  # positions (in the current snapshot) of rows not of the base
    for _ in range(steps):
        n_new = data.draw(st.integers(1, 5)) if n_base else 0
        n = len(rows) + n_new
        pos = data.draw(st.permutations(range(n)))[:n_new]
        take = [data.draw(st.integers(0, n_base - 1)) for _ in range(n_new)]
        after: list[int] = []
        old = iter(zip(rows, [r in grown for r in range(len(rows))], strict=True))
        is_new: list[bool] = []
        for r in range(n):
            if r in pos:
                after.append(take[pos.index(r)])
                is_new.append(True)
            else:
                base_row, was_new = next(old)
                after.append(base_row)
                is_new.append(was_new)
        rows, grown = after, [r for r in range(n) if is_new[r]]
        at, src = growth._moved_up(at, src, np.array(pos, np.int64), np.array(take, np.int64))
        np.testing.assert_array_equal(at, grown)
        np.testing.assert_array_equal(src, [rows[r] for r in grown])
        w = IntervalWrites(content, same, toggle, None, grown_at=at, grown_src=src)
        got = w.per_row()
        for mine, base in zip(got, (content, same, toggle), strict=True):
            assert mine.dtype == base.dtype
            np.testing.assert_array_equal(mine, base[np.array(rows, np.int64)])
        assert w.rows_written == int(np.count_nonzero((got[0] > 0) | (got[1] > 0)))
