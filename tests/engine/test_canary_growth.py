"""The growth held to a canary of the traced run (planner.engine.canary_growth)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from planner.engine import KsmKnobs, ReplayOptions, prepare, replay
from planner.engine.api import derive_input
from planner.engine.canary_growth import AFTER_LAST_NS, _coarse, _short, canary_growth
from planner.engine.growth import MAX_STEPS
from planner.engine.prepare import ReplayInput
from planner.engine.writes import CanaryRates, canary_rates, canary_sizes
from planner.trace.recording import ObservedTimeline
from tests.engine.test_writes import (
    _canary,
    _counted,
    _two_workers,
    assert_engines_agree_with_writes,
)
from tests.engine.test_writes import assert_same as assert_same_results

#: The canary's samples (s) and each process's present pages at them.
TIMES = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
SIZES = {100: [5, 5, 5, 6, 8, 7, 7], 101: [3, 3, 3, 3, 3, 3, 3]}
NEW_ADDR = 0x40000  # a page of pid 100 the capture never saw, merged at 5 s


def _input() -> ReplayInput:
    """Two workers holding pages 1-3 alike; pid 100 also holds two pages of its own in a
    second mapping (0x20000, 0x21000): 5 rows. Two snapshots, 0 and 1 s, no writes."""
    w = _two_workers(pages=3)
    w.map(100, 0x20000, [50, 51])
    w.snapshot(0.0)
    w.snapshot(1.0)
    return prepare(_counted(w.host_trace(), {}, {}, 1.0))


def _obs(
    events: list[tuple[float, int, int, str]], sizes: dict[int, list[int]] | None = None
) -> ObservedTimeline:
    """A canary with ``events`` and ``sizes`` (:data:`SIZES`) as its processes' present
    pages."""
    sizes = SIZES if sizes is None else sizes
    obs = _canary(events, end_s=TIMES[-1])
    rows = [
        {
            "sample": i,
            "t_s": t,
            "pid": pid,
            "present_pages": sizes[pid][i],
            "ksm_pages": 0,
            "merged": 0,
            "unmerged_same_content": 0,
            "unmerged_changed": 0,
            "unmerged": 0,
            "unmapped": 0,
        }
        for i, t in enumerate(TIMES)
        for pid in (100, 101)
    ]
    return dataclasses.replace(obs, canary=pd.DataFrame(rows))


def _merged_pairs() -> list[tuple[float, int, int, str]]:
    return [(0.0, pid, 0x10000 + 0x1000 * p, "merged") for pid in (100, 101) for p in range(3)]


def _rates() -> CanaryRates:
    return canary_rates(_obs([*_merged_pairs(), (5.0, 100, NEW_ADDR, "merged")]))


def _grown_pages(out: ReplayInput, base: ReplayInput, pid: int) -> list[tuple[int, int]]:
    """(snapshot time in ms, page) of each row of ``pid`` the growth added."""
    mm = next(i for i, m in enumerate(out.mms) if m.pid == pid)
    held = set(base.snapshots[-1].page[base.snapshots[-1].mm == mm].tolist())
    seen: set[int] = set()
    got = []
    for k in range(base.n_snapshots, out.n_snapshots):
        s = out.snapshots[k]
        for p in s.page[s.mm == mm].tolist():
            if p not in held and p not in seen:
                seen.add(p)
                got.append((round(out.times_ns[k] / 1e6), p))
    return got


def test_canary_sizes_are_a_table_of_present_pages_per_sample_and_process() -> None:
    sizes = canary_sizes(_obs([]))
    assert sizes is not None
    assert sizes.t_s.tolist() == TIMES
    assert sizes.pid.tolist() == [100, 101]
    of = sizes.of(100)
    assert of is not None
    assert of.tolist() == SIZES[100]
    assert sizes.of(7) is None
    obs = _obs([])
    assert obs.canary is not None
    kept = (obs.canary.pid == 100) | (obs.canary.t_s < 3)
    gap = dataclasses.replace(obs, canary=obs.canary[kept])
    sizes = canary_sizes(gap)
    assert sizes is not None
    assert sizes.present[:, 1].tolist() == [3, 3, 3, -1, -1, -1, -1]


def test_the_growth_is_the_canarys_sizes_with_the_page_it_saw_merged_when_it_merged() -> None:
    """pid 100 had 5 rows at the last snapshot (1 s) and the canary counts 6 at 3 s, 8 at 4 s,
    7 at 5 s: one page at 3 s, two more at 4 s, one given back at 5 s. The page the canary
    saw merged at 5 s at an address the trace does not hold comes in the step before the
    sample that saw it (4 s), not as early as the sizes would allow: the page of 3 s is one
    of its own. The others are pages of their own. The page given back is a traced row of a
    content of its own that the canary never saw merged: it stays a row, out of ksmd's reach
    (not eligible) from 5 s. pid 101 did not grow."""
    inp = _input()
    rates = _rates()
    got = canary_growth(inp, rates, seed=1)
    assert got is not None
    out, note, renamed = got
    assert note.status == "canary"
    assert (note.total_pages, note.seen_merged_pages, note.steps) == (3, 1, 3)
    assert note.out_of_reach_pages == 1
    mm100 = next(i for i, m in enumerate(out.mms) if m.pid == 100)
    for k, t_ms, reach in ((-2, 4000, [0x20, 0x21]), (-1, 5000, [0x20])):
        s = out.snapshots[k]
        own = (s.mm == mm100) & np.isin(s.page, [0x20, 0x21])
        assert s.time_ns - inp.times_ns[0] == t_ms * 1_000_000
        assert s.page[own & s.eligible].tolist() == reach  # (the seeded draw gave back 0x21)
    assert note.pages_by_pid == {"100": 3}
    assert note.summary() == (
        "growth after the trace: 3 pages over 4 s, held to the canary's present pages "
        "(7 samples over 6 s); 1 of them where it saw pages merged; at most 1 traced pages "
        "given back (out of ksmd's reach)"
    )
    pages = _grown_pages(out, inp, 100)
    assert [t for t, _ in pages] == [3000, 4000, 4000]
    top = max(0x40, 0x21)  # above the process's rows and every page the canary recorded of it
    assert [p for _, p in pages] == [top + 1, top + 2, top + 3]
    assert _grown_pages(out, inp, 101) == []
    # the canary's record of the page seen merged now names the first row of 4 s
    k_old = (100 << 36) | 0x40
    k_new = (100 << 36) | (top + 2)
    assert k_old in rates.key.tolist()
    assert k_old not in renamed.key.tolist()
    i_old = rates.key.tolist().index(k_old)
    i_new = renamed.key.tolist().index(k_new)
    assert renamed.joined_s is not None
    assert rates.joined_s is not None
    assert renamed.joined_s[i_new] == rates.joined_s[i_old] == 5.0
    assert renamed.renamed_keys is not None  # the pairs, for the live page-truth join
    assert [a.tolist() for a in renamed.renamed_keys] == [[k_old], [k_new]]
    assert rates.renamed_keys is None
    assert np.all(np.diff(renamed.key.astype(np.int64)) > 0)
    # every grown row holds a content of its own
    last = out.snapshots[-1]
    mm = next(i for i, m in enumerate(out.mms) if m.pid == 100)
    grown = (last.mm == mm) & (last.page > top)
    assert np.unique(last.hash[grown]).size == 3
    assert not np.isin(last.hash[grown], last.hash[~grown]).any()


def test_the_page_the_canary_saw_merged_joins_and_merges_in_both_engines() -> None:
    """Replayed with the canary, the grown page the canary saw merged takes the content its
    process holds most and merges (one more page sharing than the same growth without the
    canary's first merges); the engines agree on the input the write model sees."""
    inp = _input()
    rates = _rates()
    knobs = KsmKnobs(pages_to_scan=100, sleep_ms=50)
    opts = ReplayOptions(duration_s=12.0)
    derived = derive_input(inp, opts, rates)
    assert derived.growth.status == "canary"
    assert derived.canary is rates  # as given; as the write model took it, renamed:
    assert derived.applied is not None
    assert derived.applied.renamed_keys is not None
    a = replay(derived, knobs=knobs, options=opts, canary=rates)
    b = replay(derived, knobs=knobs, options=opts, canary=rates, engine="reference")
    assert_same_results(a, b)
    assert a.provenance["growth"]["status"] == "canary"
    plain = replay(inp, knobs=knobs, options=opts, canary=dataclasses.replace(rates, joined_s=None))
    assert plain.provenance["growth"]["status"] == "canary"
    assert a.final_counters["pages_sharing"] == plain.final_counters["pages_sharing"] + 1
    assert_engines_agree_with_writes(derived.written, knobs, opts)


def test_a_page_seen_merged_early_comes_before_the_sizes_say_and_adds_to_them() -> None:
    """A page the canary saw merged at 2 s (before pid 100 grew) is added just after the
    last snapshot, as the first of the pages the sizes add; five such pages are more than
    the sizes add, and all five are added."""
    inp = _input()
    rates = canary_rates(_obs([*_merged_pairs(), (2.0, 100, NEW_ADDR, "merged")]))
    got = canary_growth(inp, rates)
    assert got is not None
    out, note, _ = got
    pages = _grown_pages(out, inp, 100)
    after_last = round((inp.times_ns[-1] + AFTER_LAST_NS) / 1e6)
    assert [t for t, _ in pages] == [after_last, 4000, 4000]
    assert note.total_pages == 3  # the sizes' three, the first of them the page seen merged
    rates = canary_rates(
        _obs([*_merged_pairs(), *[(2.0, 100, NEW_ADDR + 0x1000 * i, "merged") for i in range(5)]])
    )
    got = canary_growth(inp, rates)
    assert got is not None
    assert (got[1].total_pages, got[1].seen_merged_pages) == (5, 5)


def test_a_page_seen_merged_comes_a_scan_and_a_half_before_the_sample_that_saw_it() -> None:
    """With the canary's full scans 1 s long, the page it saw merged at 5 s comes in the last
    step at least 1.5 s before (3 s, the first page pid 100 gains), and its process holds no
    more pages than the canary counts at any step (a page of its own comes at 4 s instead).
    With full scans 3 s long, 4.5 s before is before any growth: the page comes just after
    the last snapshot, one more than the sizes say until they catch up."""
    inp = _input()
    mm = next(i for i, m in enumerate(inp.mms) if m.pid == 100)
    top = 0x40
    got = canary_growth(inp, dataclasses.replace(_rates(), full_scan_s=1.0), seed=1)
    assert got is not None
    out, note, renamed = got
    assert (note.total_pages, note.seen_merged_pages) == (3, 1)
    assert [t for t, _ in _grown_pages(out, inp, 100)] == [3000, 4000, 4000]
    assert ((100 << 36) | (top + 1)) in renamed.key.tolist()
    for k in range(inp.n_snapshots, out.n_snapshots):
        t_s = (out.times_ns[k] - inp.times_ns[0]) / 1e9
        s = out.snapshots[k]
        held = int(np.count_nonzero((s.mm == mm) & s.eligible))  # in ksmd's reach
        assert held == SIZES[100][int(t_s)], (t_s, held)
    got = canary_growth(inp, dataclasses.replace(_rates(), full_scan_s=3.0), seed=1)
    assert got is not None
    after_last = round((inp.times_ns[-1] + AFTER_LAST_NS) / 1e6)
    assert [t for t, _ in _grown_pages(got[0], inp, 100)] == [after_last, 4000, 4000]
    assert ((100 << 36) | (top + 1)) in got[2].key.tolist()


def test_pages_given_back_go_out_of_reach_the_unmapped_first_and_come_back_as_it_grows() -> None:
    """pid 100 (5 rows) counts 3 pages at 3-4 s, 4 at 5 s, 5 at 6 s; the canary saw its
    merged page 0x11 unmapped at 2.5 s. At 3 s two rows go out of ksmd's reach (their
    flags lose eligibility; rows, contents and physical pages stay): 0x11 first, then one
    of the pages of a content of its own that the canary never saw merged (never a page
    that merges: 0x10 and 0x12 stay). As it grows again the other comes back first, then
    0x11. The rows out of reach lose their rmap_items at ksmd's next pass, as the kernel
    frees those of pages unmapped; the engines agree throughout."""
    sizes = {100: [5, 5, 5, 3, 3, 4, 5], 101: [3] * 7}
    rates = canary_rates(_obs([*_merged_pairs(), (2.5, 100, 0x11000, "unmapped")], sizes))
    inp = _input()
    got = canary_growth(inp, rates, seed=1)
    assert got is not None
    out, note, _ = got
    assert (note.total_pages, note.out_of_reach_pages, note.steps) == (0, 2, 3)
    mm = next(i for i, m in enumerate(out.mms) if m.pid == 100)
    reach = {}
    for k in range(inp.n_snapshots, out.n_snapshots):
        s = out.snapshots[k]
        assert s.n == inp.snapshots[-1].n  # every row stays
        assert np.array_equal(s.hash, inp.snapshots[-1].hash)
        assert np.array_equal(s.frame, inp.snapshots[-1].frame)
        t_ms = round((s.time_ns - inp.times_ns[0]) / 1e6)
        reach[t_ms] = s.page[(s.mm == mm) & s.eligible].tolist()
    assert reach == {
        3000: [0x10, 0x12, 0x20],
        5000: [0x10, 0x12, 0x20, 0x21],
        6000: [0x10, 0x11, 0x12, 0x20, 0x21],
    }
    # replayed: rmap_items fall by the rows out of reach, and rise again; engines agree
    knobs = KsmKnobs(pages_to_scan=100, sleep_ms=50)
    opts = ReplayOptions(duration_s=8.0, grid_s=0.5)
    derived = derive_input(inp, opts, rates)
    assert derived.growth.status == "canary"
    a, _ = assert_engines_agree_with_writes(derived.written, knobs, opts)
    rmap = {g.t_s: g.counters["rmap_items"] for g in a.grid}
    assert (rmap[2.5], rmap[4.0], rmap[5.5], rmap[7.5]) == (8, 6, 7, 8), rmap


def test_rows_out_of_reach_are_the_rows_above_the_present_pages_a_missing_sample_carried() -> None:
    """5 rows at the last snapshot and none added: present 5, 5, 3, then no row of the
    process at two samples (its count carried: 2 out of reach, not back in reach), then 4
    and 5. Before its first sample none is out of reach; rows added count as rows."""
    present = np.array([-1, 5, 5, 3, -1, -1, 4, 5])
    steps = np.arange(present.size)
    assert _short(present, 5, steps, np.zeros(8, np.int64)).tolist() == [0, 0, 0, 2, 2, 2, 1, 0]
    added = np.array([0, 0, 0, 0, 0, 0, 2, 2])  # (the base is the first sample's count)
    assert _short(present, 5, steps, added).tolist() == [0, 0, 0, 2, 2, 2, 3, 2]
    assert _short(np.full(3, -1), 5, np.arange(3), np.zeros(3, np.int64)).tolist() == [0, 0, 0]


def test_a_canary_of_another_run_leaves_the_growth_to_the_growth_model() -> None:
    inp = _input()
    other = canary_rates(
        _obs([(0.0, 7, 0x10000, "merged"), (0.0, 8, 0x10000, "merged"), (0.0, 9, 0x1000, "merged")])
    )
    opts = ReplayOptions(duration_s=5.0)
    assert derive_input(inp, opts, other).growth.status != "canary"
    no_sizes = dataclasses.replace(_rates(), sizes=None)
    assert derive_input(inp, opts, no_sizes).growth.status != "canary"
    off = dataclasses.replace(opts, growth=False)
    assert derive_input(inp, off, _rates()).growth.status == "off"


def test_the_growth_held_to_a_canary_follows_the_seed_alone() -> None:
    inp = _input()
    a = canary_growth(inp, _rates(), seed=3)
    b = canary_growth(inp, _rates(), seed=3)
    assert a is not None
    assert b is not None
    assert np.array_equal(a[0].snapshots[-1].hash, b[0].snapshots[-1].hash)
    assert a[0].times_ns == b[0].times_ns


def test_renamed_pages_keep_their_records_and_refuse_a_key_held() -> None:
    rates = _rates()
    keys = rates.key.tolist()
    old = np.array([keys[0]], np.uint64)
    new = np.array([(100 << 36) | 0x99], np.uint64)
    r = rates.renamed(old, new)
    assert r.joined_s is not None
    assert rates.joined_s is not None
    i = r.key.tolist().index(int(new[0]))
    assert r.joined_s[i] == rates.joined_s[0]
    assert sorted(r.key.tolist()) == r.key.tolist()
    assert len(r.key) == len(rates.key)
    with pytest.raises(ValueError, match="a key the canary holds"):
        rates.renamed(old, np.array([keys[1]], np.uint64))
    with pytest.raises(ValueError, match="did not record"):
        rates.renamed(np.array([(100 << 36) | 0x77], np.uint64), new)


def test_many_steps_are_grouped_no_page_coming_later_than_it_did() -> None:
    n = MAX_STEPS * 3
    times = np.arange(n, dtype=np.int64) * 10
    cum = [np.arange(1, n + 1, dtype=np.int64)]
    t, c, _ = _coarse(times, cum)
    assert t.size == MAX_STEPS
    assert c[0][-1] == n
    # each group adds at its first step's time the pages of its last
    assert t[0] == 0
    assert c[0][0] == 3
    cum_at = np.interp(t, times, cum[0])
    assert np.all(c[0] >= cum_at)
