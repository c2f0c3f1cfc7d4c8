"""The write model (planner.engine.writes): held to the reference model, and what it does."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.engine import KsmKnobs, ReplayOptions, prepare, replay
from planner.engine import writes as writes_module
from planner.engine.api import derive_input
from planner.engine.driver import Driver
from planner.engine.fast import FastEngine
from planner.engine.fast.apply import COMPACT_MIN_DEAD
from planner.engine.fast.engine import OUT_BATCHES
from planner.engine.growth import continue_growth
from planner.engine.prepare import ReplayInput
from planner.engine.reference import ReferenceEngine
from planner.engine.result import ReplayResult
from planner.engine.writes import (
    JOINS_META,
    RESTORE,
    SAME,
    UNSEEN_META,
    CanaryRates,
    CanaryVariant,
    TraceWrites,
    by_page_class,
    canary_rates,
    effective_changes,
    effective_same_writes,
    fill_unchecked,
    process_roles,
    spreads_missed_breaks,
    with_canary,
    write_model,
)
from planner.testing.builder import World
from planner.testing.random_world import WorldSpec, random_world
from planner.testing.strategies import (
    ChurnSpec,
    churn_specs,
    knob_sets,
    replay_options,
    with_write_counts,
    world_specs,
)
from planner.trace.io import HostTrace
from planner.trace.recording import ObservedTimeline
from tests.engine.test_engines_agree import _Members, assert_same


def assert_engines_agree_with_writes(
    inp: ReplayInput,
    knobs: KsmKnobs,
    opts: ReplayOptions,
    out_batches: int = OUT_BATCHES,
    compact: int = COMPACT_MIN_DEAD,
    seed: int = 0,
) -> tuple[ReplayResult, FastEngine]:
    """Both engines, each with its own write model of the same seed: identical results,
    stable trees after every scan, and copy-on-write breaks."""
    ref = _Members(ReferenceEngine(inp, knobs), inp, knobs, opts)
    ref.writes = TraceWrites(inp, seed)
    fast_core = FastEngine(inp, knobs, out_batches=out_batches, compact_min_dead=compact)
    fast = _Members(fast_core, inp, knobs, opts)
    fast.writes = TraceWrites(inp, seed)
    a, b = ref.run(), fast.run()
    assert_same(a, b)
    assert [g.cow_breaks for g in a.grid] == [g.cow_breaks for g in b.grid]
    assert (a.cow_breaks, a.cow_breaks_per_s) == (b.cow_breaks, b.cow_breaks_per_s)
    for n, (ma, mb) in enumerate(zip(ref.members, fast.members, strict=True), 1):
        assert ma == mb, f"stable tree after full scan {n}"
    return a, fast_core


out_sizes = st.sampled_from([OUT_BATCHES, OUT_BATCHES, 1, 3])
compactions = st.sampled_from([COMPACT_MIN_DEAD, 0])
#: rows that join a content other rows hold (a canary's joins), as a share of the rows
joined_shares = st.sampled_from([0.0, 0.0, 0.1, 0.5, 1.0])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**20),
    spec=world_specs(),
    churn=churn_specs(),
    knobs=knob_sets(),
    opts=replay_options(),
    ep=out_sizes,
    compact=compactions,
    share=joined_shares,
)
def test_vectorized_matches_reference_with_writes(
    seed: int,
    spec: WorldSpec,
    churn: ChurnSpec,
    knobs: KsmKnobs,
    opts: ReplayOptions,
    ep: int,
    compact: int,
    share: float,
) -> None:
    """Both engines on every kind of write, joins among them (a write of a catalog
    content others hold: the fast engine's content id and flags against the reference's
    hash) and merges lost and got back, in a share of the examples."""
    ht = with_write_counts(random_world(seed, spec).host_trace(), seed, churn)
    inp = _with_random_joins(prepare(ht), seed, share) if share else prepare(ht)
    assert_engines_agree_with_writes(inp, knobs, opts, ep, compact, seed=seed % 7)


@pytest.mark.slow
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**20),
    spec=world_specs(),
    churn=churn_specs(),
    knobs=knob_sets(),
    opts=replay_options(),
    ep=out_sizes,
    compact=compactions,
    share=joined_shares,
)
def test_vectorized_matches_reference_with_writes_many(
    seed: int,
    spec: WorldSpec,
    churn: ChurnSpec,
    knobs: KsmKnobs,
    opts: ReplayOptions,
    ep: int,
    compact: int,
    share: float,
) -> None:
    """Both engines on every kind of write, joins among them (a write of a catalog
    content others hold: the fast engine's content id and flags against the reference's
    hash) and merges lost and got back, in a share of the examples."""
    ht = with_write_counts(random_world(seed, spec).host_trace(), seed, churn)
    inp = _with_random_joins(prepare(ht), seed, share) if share else prepare(ht)
    assert_engines_agree_with_writes(inp, knobs, opts, ep, compact, seed=seed % 7)


def test_engines_agree_on_a_busy_world_with_writes_and_steady_scans() -> None:
    """Writes stop at the last snapshot (no interval sampled after it): the fast engine
    then fast-forwards the steady scans, and must still match."""
    spec = WorldSpec(processes=5, pages=80, contents=10, snapshots=5, churn=0.2, span_s=1.0)
    churn = ChurnSpec(written_share=0.5, max_content_changes=8, last_interval_s=None)
    ht = with_write_counts(random_world(5, spec).host_trace(), 5, churn)
    knobs = KsmKnobs(pages_to_scan=16, sleep_ms=5, max_page_sharing=3)
    opts = ReplayOptions(settle_scans=60, grid_s=0.02)
    a, fast = assert_engines_agree_with_writes(prepare(ht), knobs, opts)
    assert a.cow_breaks > 0
    assert a.final_counters["pages_sharing"] > 0
    assert fast.steady is not None
    assert fast.steady.scans_skipped >= 9


# ---------------------------------------------------------------- the write source


def _counted(ht: HostTrace, content: dict[int, int], same: dict[int, int], last_s: float | None):  # type: ignore[no-untyped-def]
    """``ht`` with given counts on page rows (by row of the pages table), every snapshot
    sampled, the last interval ``last_s`` long."""
    n = ht.pages.num_rows
    c = np.zeros(n, np.int64)
    s = np.zeros(n, np.int64)
    for r, v in content.items():
        c[r] = v
    for r, v in same.items():
        s[r] = v
    spec = ChurnSpec(written_share=0.0, last_interval_s=last_s)
    ht = with_write_counts(ht, 0, spec)
    pages = ht.pages
    import pyarrow as pa

    # checked once more than changed: not saturated, the counts are the rates
    cols = (
        ("content_changes", c),
        ("content_checks", c + 1),
        ("same_content_writes", s),
        ("samples", c + s + 1),
    )
    for name, arr in cols:
        pages = pages.set_column(
            pages.schema.get_field_index(name), name, pa.array(arr, pa.uint16())
        )
    return dataclasses.replace(ht, pages=pages)


def _two_workers(pages: int = 4) -> World:
    w = World()
    w.spawn(100, comm="w")
    w.map(100, 0x10000, list(range(1, pages + 1)))
    w.spawn(101, comm="w")
    w.map(101, 0x10000, list(range(1, pages + 1)))
    return w


def test_events_keep_the_recorded_counts_and_follow_the_seed() -> None:
    w = _two_workers()
    w.snapshot(0.0)
    w.snapshot(2.0)
    # rows of snapshot 0: pid 100 pages 0..3, pid 101 pages 0..3 (content equal at both ends)
    ht = _counted(w.host_trace(), {0: 5, 1: 1}, {2: 3}, None)
    inp = prepare(ht)
    src = TraceWrites(inp, seed=1)
    src.start_interval(0, 0)
    got = src.take_until(2 * 10**9)
    assert got is not None
    assert src.events == 5 + 1 + 3  # every recorded write, no more
    assert dict(zip(got.rows.tolist(), got.content.tolist(), strict=True)) == {
        0: RESTORE,  # toggling rows end on the snapshot's content (the next shows it)
        1: RESTORE,
        2: SAME,
    }
    times = []
    for seed in (1, 1, 2):
        s = TraceWrites(inp, seed=seed)
        s.start_interval(0, 0)
        times.append(s.next_time_ns())
    assert times[0] == times[1] != times[2]


def test_a_page_changing_faster_than_scans_never_merges() -> None:
    w = _two_workers()
    w.snapshot(0.0)
    w.write(100, 0x10000, 99)  # drifts: a new content at every change
    w.snapshot(1.0)
    w.write(100, 0x10000, 98)
    w.snapshot(2.0)
    # 50 content changes a second on the page of pid 100 at 0x10000 in every interval
    rows = {0: 50, 8: 50, 16: 50}
    ht = _counted(w.host_trace(), rows, {}, 1.0)
    knobs = KsmKnobs(pages_to_scan=100, sleep_ms=200)
    opts = ReplayOptions(duration_s=30.0)
    on = replay(prepare(ht), knobs=knobs, options=opts)
    off = replay(prepare(ht), knobs=knobs, options=dataclasses.replace(opts, writes=False))
    # without writes the last snapshot's content of that page merges with... nothing, but the
    # page of pid 101 at 0x10000 keeps content 1: the written page must never join it either
    assert on.final_counters["pages_sharing"] == 3
    assert off.final_counters["pages_sharing"] == 3
    assert on.final_counters["pages_volatile"] >= 0
    # the written page stays out of every tree while it changes faster than ksmd returns
    assert on.cost.path_visits["volatile"] > off.cost.path_visits["volatile"]


def test_same_content_writes_break_merges_at_write_time_and_are_counted() -> None:
    w = _two_workers(pages=8)
    w.snapshot(0.0)
    w.snapshot(1.0)
    # pid 100's 8 pages are rewritten with their own bytes 4 times a second, all along
    rows = {r: 4 for r in [*range(8), *range(16, 24)]}
    ht = _counted(w.host_trace(), {}, rows, 1.0)
    knobs = KsmKnobs(pages_to_scan=100, sleep_ms=50)
    opts = ReplayOptions(duration_s=20.0)
    on = replay(prepare(ht), knobs=knobs, options=opts)
    off = replay(prepare(ht), knobs=knobs, options=dataclasses.replace(opts, writes=False))
    assert off.final_counters["pages_sharing"] == 8
    assert off.cow_breaks_per_s is None
    assert off.cow_breaks == 0
    # merged pages are broken at every write (content unchanged: they merge again at the
    # next scans), so the steady state keeps breaking about as often as merged pages are
    # written: at most 8 pages x 4 writes/s
    assert on.cow_breaks > 0
    assert on.cow_breaks_per_s is not None
    assert 0 < on.cow_breaks_per_s <= 32
    assert on.final_truth.saved_frames <= off.final_truth.saved_frames


def test_traces_without_counts_replay_as_before() -> None:
    ht = random_world(3, WorldSpec(snapshots=4, churn=0.3)).host_trace()
    knobs = KsmKnobs(pages_to_scan=7, sleep_ms=20)
    inp = prepare(ht)
    assert inp.writes == []
    a = replay(inp, knobs=knobs)
    b = replay(inp, knobs=knobs, options=ReplayOptions(writes=False))
    assert_same(a, b)
    assert a.cow_breaks_per_s is None
    assert a.provenance["writes"]["model"] == "none in the trace"


def test_a_sampled_trace_in_which_nothing_was_written_breaks_no_merge_at_a_rate_of_zero() -> None:
    # the sampler looked and saw no write: the replay models writes (none), so it reports
    # 0 copy-on-write breaks per second, not "not modelled" as for an unsampled trace
    w = _two_workers(pages=8)
    w.snapshot(0.0)
    w.snapshot(1.0)
    ht = _counted(w.host_trace(), {}, {}, 1.0)
    inp = prepare(ht)
    assert len(inp.writes) == 2
    assert all(iw is not None and not iw.content.any() for iw in inp.writes)
    knobs = KsmKnobs(pages_to_scan=100, sleep_ms=50)
    for engine in ("reference", "vectorized"):
        res = replay(inp, knobs=knobs, options=ReplayOptions(duration_s=5.0), engine=engine)
        assert res.cow_breaks_per_s == 0.0
        assert res.provenance["writes"]["events"] == 0
        off = replay(inp, knobs=knobs, options=ReplayOptions(duration_s=5.0, writes=False))
        assert off.cow_breaks_per_s is None
        assert off.provenance["writes"]["model"] == "off (--no-writes)"
        assert_same(res, off)  # nothing else differs
    assert prepare(w.host_trace()).writes == []  # not sampled: nothing known


def test_an_interval_whose_starved_sampler_saw_no_change_borrows_its_rows_rates() -> None:
    # the sampler checked none of the rows after the last snapshot (a starved tail) and so
    # counted no change: its rows take the rates they showed in the interval before
    # (fill_unchecked), as they would had it counted one change somewhere. It used to read
    # as "no writes at all" (churn B, docs/live-validation.md: copy-on-write +60.6 %)
    w = _two_workers(pages=8)
    w.snapshot(0.0)
    w.snapshot(2.0)
    ht = _counted(w.host_trace(), {r: 6 for r in range(8)}, {}, 2.0)
    import pyarrow as pa

    pages = ht.pages
    n = pages.num_rows
    sid = np.asarray(pages.column("snapshot_id").to_numpy())
    changes = np.where(sid == 0, np.asarray(pages.column("content_changes").to_numpy()), 0)
    checks = np.where(sid == 0, changes + 1, 0)  # the last interval: nothing checked
    for name, arr in (("content_changes", changes), ("content_checks", checks)):
        pages = pages.set_column(
            pages.schema.get_field_index(name), name, pa.array(arr.astype(np.uint16))
        )
    inp = prepare(dataclasses.replace(ht, pages=pages))
    assert n == 32
    last = inp.writes[-1]
    assert last is not None
    assert last.length_ns
    rate = last.content.astype(float) / (last.length_ns / 1e9)
    assert rate[:8].tolist() == pytest.approx([3.0] * 8)  # 6 changes in 2 s, borrowed
    assert not last.content[8:].any()


def test_a_page_changed_at_every_check_changes_at_least_every_sampling_period() -> None:
    changes = np.array([0, 1, 3, 3, 2], np.uint16)
    checks = np.array([4, 4, 3, 5, 1], np.uint16)
    got = effective_changes(changes, checks, interval_s=2.0, sample_ms=100.0)
    assert got.tolist() == [0, 1, 20, 3, 20]  # saturated rows: one change per 100 ms
    assert effective_changes(changes, checks, None, None).tolist() == changes.tolist()


def test_a_page_written_at_every_pass_writes_at_least_every_sampling_period() -> None:
    """Soft-dirty's count: a row written at each pass that looked at it (same-content
    writes and content changes together) writes once per sampling period, its same-content
    writes their share; a row some passes found clean keeps its count."""
    same = np.array([0, 1, 4, 2, 3, 5, 1], np.uint16)
    changes = np.array([0, 0, 0, 2, 0, 0, 3], np.uint16)
    samples = np.array([4, 4, 4, 4, 0, 5, 4], np.uint16)
    got = effective_same_writes(same, changes, samples, interval_s=2.0, sample_ms=100.0)
    # 20 periods of 100 ms: row 2 written at all 4 passes, row 3 at 2 + 2 (half of 20 are
    # its same-content writes), row 5 more often than it was looked at; row 4 never looked
    # at; row 6 (1 same-content write + 3 changes at 4 passes) a quarter of 20; row 1
    # (written at 1 pass of 4) keeps its count
    assert got.tolist() == [0, 1, 20, 10, 3, 20, 5]
    assert effective_same_writes(same, changes, samples, None, None).tolist() == same.tolist()


def test_the_rows_raised_to_the_samplers_floor_are_marked() -> None:
    """``_write_counts`` marks the rows whose count a floor raised, content changes or
    soft-dirty's writes alike; without soft-dirty, the content changes only."""
    import importlib

    from planner.trace.views import PageChanges

    prepare_module = importlib.import_module("planner.engine.prepare")
    u16 = lambda *v: np.array(v, np.uint16)  # noqa: E731
    pc = PageChanges(
        snapshot_id=0, interval_s=2.0, sample_ms=100.0, soft_dirty=True,
        sampled=np.ones(4, bool), samples=u16(4, 4, 4, 4), content_checks=u16(4, 4, 2, 4),
        content_changes=u16(4, 1, 0, 0), frame_changes=u16(0, 0, 0, 0),
        absent_samples=u16(0, 0, 0, 0), same_content_writes=u16(0, 1, 4, 2),
    )  # fmt: skip
    counts = prepare_module._write_counts(pc)
    assert counts is not None
    content, same, checks, floored, other = counts
    assert other is None  # (no other content recorded)
    assert checks.tolist() == [4, 4, 2, 4]
    # row 0 changed at every check, row 2 written at every pass; rows 1 and 3 seen clean once
    assert content.tolist() == [20, 1, 0, 0]
    assert same.tolist() == [0, 1, 20, 2]
    assert floored.tolist() == [True, False, True, False]
    unsampled_writes = dataclasses.replace(pc, soft_dirty=False, same_content_writes=None)
    counts = prepare_module._write_counts(unsampled_writes)
    assert counts is not None
    assert counts[3].tolist() == [True, False, False, False]


def test_rows_not_checked_take_their_rate_from_the_nearest_interval() -> None:
    keys = [np.array([1, 2, 3], np.uint64), np.array([1, 2, 4], np.uint64)]
    content = [np.array([0, 0, 0], np.uint16), np.array([4, 10, 6], np.uint16)]
    checked = [np.array([True, False, False]), np.array([True, True, True])]
    fill_unchecked(keys, content, checked, [1.0, 2.0])
    # key 2 changed 10 times in 2 s there: 5 in this 1 s; key 3 is nowhere else; key 1 was
    # checked here and found unchanged: kept
    assert content[0].tolist() == [0, 5, 0]
    assert checked[0].tolist() == [True, True, False]


@pytest.mark.parametrize("alignment", ["time", "scan"])
def test_steady_scans_between_rare_writes_are_fast_forwarded_exactly(alignment: str) -> None:
    """Same-content writes every few seconds after the last snapshot: the fast engine
    fast-forwards the quiet scans between them (never past a write) and still matches."""
    w = _two_workers(pages=6)
    w.snapshot(0.0)
    w.snapshot(1.0)
    ht = _counted(w.host_trace(), {}, {12: 1, 13: 1}, 8.0)  # two pages, one write per 8 s
    knobs = KsmKnobs(pages_to_scan=6, sleep_ms=50, smart_scan=False)
    opts = ReplayOptions(duration_s=40.0, grid_s=0.5, snapshot_alignment=alignment)  # type: ignore[arg-type]
    a, fast = assert_engines_agree_with_writes(prepare(ht), knobs, opts)
    assert a.cow_breaks > 0
    assert fast.steady is not None
    assert fast.steady.scans_skipped >= 9


def _canary(events: list[tuple[float, int, int, str]], end_s: float) -> ObservedTimeline:
    import pandas as pd

    return ObservedTimeline(
        meta={},
        counters=pd.DataFrame({"sample": [0, 1], "t_s": [0.0, end_s]}).set_index("t_s"),
        processes=pd.DataFrame({"pid": [100, 101], "comm": ["w", "w"], "t_s": [0.0, 0.0]}),
        page_events=pd.DataFrame(
            {
                "t_s": [e[0] for e in events],
                "pid": [e[1] for e in events],
                "page_addr": np.array([e[2] for e in events], np.uint64),
                "event": [e[3] for e in events],
            }
        ),
    )


def _with_cow(obs: ObservedTimeline, cow: float, samples: int, seen: int = 0) -> ObservedTimeline:
    """``obs`` with the host's ``cow_ksm`` rising by ``cow`` over its span, and a canary
    table of ``samples`` samples of pid 100 with ``seen`` same-content unmerges."""
    import pandas as pd

    end_s = float(obs.counters.index.max())
    t = np.linspace(0.0, end_s, samples)
    counters = pd.DataFrame(
        {"sample": np.arange(samples), "t_s": t, "cow_ksm": np.linspace(0.0, cow, samples)}
    ).set_index("t_s")
    canary = pd.DataFrame(
        {
            "sample": np.arange(samples),
            "t_s": t,
            "pid": np.full(samples, 100),
            "present_pages": np.zeros(samples, np.int64),
            "ksm_pages": np.zeros(samples, np.int64),
            "merged": np.zeros(samples, np.int64),
            "unmerged_same_content": np.r_[seen, np.zeros(samples - 1, np.int64)],
            "unmerged_changed": np.zeros(samples, np.int64),
            "unmerged": np.zeros(samples, np.int64),
            "unmapped": np.zeros(samples, np.int64),
        }
    )
    return dataclasses.replace(obs, counters=counters, canary=canary)


def _cpu(inp: ReplayInput, share: dict[int, float]) -> ReplayInput:
    """``inp`` whose processes used ``share`` CPUs each over the capture (by pid)."""
    mms = [dataclasses.replace(m, cpu_share=share.get(m.pid)) for m in inp.mms]
    return dataclasses.replace(inp, mms=mms)


def _rates_by_pid_page(
    inp: ReplayInput, got: ReplayInput, k: int = -1
) -> dict[tuple[int, int], float]:
    w = got.writes[k]
    assert w is not None
    rate, _, _ = w.canary_per_row()
    assert rate is not None
    snap = inp.snapshots[k if k >= 0 else inp.n_snapshots + k]
    pid = {i: mi.pid for i, mi in enumerate(inp.mms)}
    return {
        (pid[int(m)], int(p)): float(r) for m, p, r in zip(snap.mm, snap.page, rate, strict=True)
    }


def test_roles_split_a_command_into_busy_and_idle_processes_by_cpu_share() -> None:
    comm = {1: "postgres", 2: "postgres", 3: "postgres", 4: "node", 5: "w", 6: "w"}
    cpus: dict[int, float | None] = {1: 0.05, 2: 0.004, 3: 0.0, 4: None, 5: 0.0, 6: 0.0}
    roles = process_roles(comm, cpus)
    # busy from a tenth of the busiest process of the command (0.005 here)
    assert roles == {
        1: "postgres busy",
        2: "postgres idle",
        3: "postgres idle",
        4: "node",  # no CPU times: the command alone
        5: "w idle",
        6: "w idle",
    }
    assert process_roles({1: "a"}) == {1: "a"}


def test_prepare_measures_each_processs_cpu_share_over_the_trace() -> None:
    """User and system seconds between a process's first and last snapshot, over their
    distance; None where the trace has no CPU times, or only one snapshot of the process."""
    w = World()
    for pid in (1, 2, 3):
        w.spawn(pid, comm="p")
        w.map(pid, 0x10000, [pid])
    w.snapshot(0.0)
    w.snapshot(2.0)
    ht = w.host_trace()
    procs = ht.processes
    cpu = {(0, 1): (1.0, 0.5), (1, 1): (1.6, 0.7), (0, 2): (3.0, 0.0), (1, 2): (3.0, 0.0)}
    rows = zip(
        procs.column("snapshot_id").to_pylist(), procs.column("pid").to_pylist(), strict=True
    )
    got = [cpu.get((int(sid), int(pid))) for sid, pid in rows]
    for i, name in enumerate(("cpu_user_s", "cpu_system_s")):
        col = pa.array([None if g is None else g[i] for g in got], pa.float64())
        procs = procs.set_column(procs.schema.get_field_index(name), name, col)
    inp = prepare(dataclasses.replace(ht, processes=procs))
    share = {m.pid: m.cpu_share for m in inp.mms}
    assert share[1] == pytest.approx((1.6 + 0.7 - 1.5) / 2.0)
    assert share[2] == 0.0
    assert share[3] is None


def _busy_workers_with_unseen_breaks(
    more: list[int] | None = None,
) -> tuple[ReplayInput, ObservedTimeline]:
    """Workers 100 and 101 busy, 102 idle, each with contents 1-3 at 0x10000, snapshots at 0
    and 1 s (with ``more`` contents mapped by 100 at 0x20000 before the second); a canary
    that saw the first page of both busy workers merged, while ``cow_ksm`` rose by 100 over
    its 10 s and 10 samples: 10 breaks/s it did not see."""
    w = World()
    for pid in (100, 101, 102):
        w.spawn(pid, comm="w")
        w.map(pid, 0x10000, [1, 2, 3])
    w.snapshot(0.0)
    if more:
        w.map(100, 0x20000, more)
    w.snapshot(1.0)
    inp = _cpu(prepare(_counted(w.host_trace(), {}, {}, 1.0)), {100: 0.5, 101: 0.4, 102: 0.0})
    obs = _with_cow(
        _canary([(0.0, 100, 0x10000, "merged"), (0.0, 101, 0x10000, "merged")], end_s=10.0),
        cow=100,
        samples=10,
    )
    return inp, obs


def test_the_breaks_the_canary_could_not_see_go_to_busy_pages_never_seen_merged() -> None:
    """``cow_ksm`` rose by 100 in 10 s and the canary saw none of it: 10 breaks/s unseen.
    The two busy workers' pages the canary never saw merged (4 rows, their contents shared)
    take an equal share, as writes often enough that none of the 10 samples would find them
    merged; the idle process's rows and the pages seen merged take none (their merges held)."""
    inp, obs = _busy_workers_with_unseen_breaks()
    rates = canary_rates(obs)
    assert rates.unseen_breaks_per_s == pytest.approx(10.0)
    assert rates.samples == 10
    written = with_canary(inp, rates)
    assert inp.snapshots._cache is None  # one pass, no snapshot left with the input
    got = _rates_by_pid_page(inp, written)
    share = 10.0 / 4 * 10
    assert got == {
        (100, 0x10): 0.0,
        (100, 0x11): pytest.approx(share),
        (100, 0x12): pytest.approx(share),
        (101, 0x10): 0.0,
        (101, 0x11): pytest.approx(share),
        (101, 0x12): pytest.approx(share),
        (102, 0x10): 0.0,
        (102, 0x11): 0.0,
        (102, 0x12): 0.0,
    }
    # the breaks the canary saw are not unseen; rates are not scaled by cow_ksm any more
    seen = canary_rates(_with_cow(obs, cow=100, samples=10, seen=40))
    assert seen.unseen_breaks_per_s == pytest.approx(6.0)
    assert seen.events == rates.events
    knobs = KsmKnobs(pages_to_scan=100, sleep_ms=50)
    opts = ReplayOptions(duration_s=20.0)
    a = replay(inp, knobs=knobs, options=opts, canary=rates)
    b = replay(inp, knobs=knobs, options=opts, canary=rates, engine="reference")
    assert_same(a, b)
    assert (
        a.final_counters["pages_sharing"]
        < replay(inp, knobs=knobs, options=opts).final_counters["pages_sharing"]
    )


def test_the_unseen_breaks_are_shared_by_the_last_traced_snapshots_candidates() -> None:
    """Snapshots the growth model appended (``traced`` tells where they start) take the
    unseen breaks' share of the last traced snapshot's candidates, however many they have
    themselves: at 10 breaks/s and 10 samples, 4 candidates traced give each 25 writes/s,
    and the appended snapshot's 6 candidates take 25 each too (not 10 / 6 x 10). Before,
    the last traced snapshot was the last without a continuation origin, which growth
    gives it too (its interval is continued): the snapshot before it was taken."""
    inp, obs = _busy_workers_with_unseen_breaks(more=[2, 3])  # two more busy shared pages
    rates = canary_rates(obs)
    for traced, share in ((1, 10.0 / 4 * 10), (2, 10.0 / 6 * 10), (None, 10.0 / 6 * 10)):
        got = _rates_by_pid_page(inp, with_canary(inp, rates, traced=traced))
        assert got[(100, 0x11)] == pytest.approx(share), traced
        assert got[(100, 0x21)] == pytest.approx(share), traced
        assert got[(102, 0x11)] == 0.0
    # a derived input tells where the appended snapshots begin: after the prepared input's
    seen: list[int | None] = []

    def spy(inp: ReplayInput, rates: CanaryRates, *, traced: int | None = None) -> ReplayInput:
        seen.append(traced)
        return inp

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(writes_module, "with_canary", spy)
        derive_input(inp, ReplayOptions(), rates)
    assert seen == [inp.n_snapshots]


def test_the_unseen_breaks_rows_take_the_rate_fit_canary_chose_and_say_how_many_they_are() -> None:
    """``CanaryRates.unseen_write_per_s`` (fit_canary's choice where the derived rate breaks
    more merges than the host did) replaces the rate each candidate takes, and the written
    input says how many candidates there are and at what rate (UNSEEN_META); a what-if task
    applies the same through the variant."""
    inp, obs = _busy_workers_with_unseen_breaks(more=[2, 3])
    rates = canary_rates(obs)
    derived = with_canary(inp, rates)
    assert derived.meta[UNSEEN_META] == {
        "candidates": 6,
        "write_per_s": pytest.approx(10.0 / 6 * 10),
        "changing": 0,
        "hold_content": False,
        "leave": 0,
    }
    slower = CanaryVariant(unseen_write_per_s=0.25).apply(rates)
    got = _rates_by_pid_page(inp, with_canary(inp, slower))
    assert got[(100, 0x11)] == pytest.approx(0.25)
    assert got[(102, 0x11)] == 0.0
    assert with_canary(inp, slower).meta[UNSEEN_META]["write_per_s"] == 0.25
    assert CanaryVariant.of(slower) == CanaryVariant(unseen_write_per_s=0.25)
    off = _rates_by_pid_page(
        inp, with_canary(inp, CanaryVariant(unseen_write_per_s=0.0).apply(rates))
    )
    assert off[(100, 0x11)] == 0.0


def test_candidates_the_unseen_breaks_do_not_need_leave_at_the_last_traced_snapshot() -> None:
    """With ``CanaryRates.unseen_cyclers`` (fit_canary's choice for the traced run's own
    canary where every candidate at its rate breaks far more merges than the host), that
    many of the 6 candidates take the unseen breaks, each its share (10 breaks/s over 2
    rows, 10 samples: 50 writes/s); the other 4, never seen merged though others held their
    content, leave at the last traced snapshot with a content of their own and are written
    no more. Neither the rows seen merged nor the idle process's are touched; both engines
    agree, and at the end none of the leavers is merged."""
    inp, obs = _busy_workers_with_unseen_breaks(more=[2, 3])
    rates = canary_rates(obs)
    variant = CanaryVariant(unseen_cyclers=2)
    assert CanaryVariant.of(variant.apply(rates)) == variant
    written = with_canary(inp, variant.apply(rates))
    assert written.meta[UNSEEN_META]["candidates"] == 2
    assert written.meta[UNSEEN_META]["leave"] == 4
    assert written.meta[UNSEEN_META]["write_per_s"] == pytest.approx(10.0 / 2 * 10)
    last = written.writes[-1]
    assert last is not None
    rate, leave, _ = last.canary_per_row()
    assert rate is not None
    assert leave is not None
    snap = inp.snapshots[-1]
    pid = np.array([m.pid for m in inp.mms])[snap.mm]
    seen_or_idle = (snap.page == 0x10) | (pid == 102)
    leaving = leave >= 0
    assert np.count_nonzero(leaving) == 4
    assert not (leaving & seen_or_idle).any()
    assert (leave[leaving] == inp.times_ns[-1]).all()
    cycling = ~leaving & ~seen_or_idle
    assert np.count_nonzero(cycling) == 2
    assert rate[cycling] == pytest.approx([50.0, 50.0])
    assert (rate[leaving] == 0).all()
    # without a count chosen by the fit, every candidate takes a share and none leaves
    assert with_canary(inp, rates).meta[UNSEEN_META]["leave"] == 0
    knobs = KsmKnobs(pages_to_scan=100, sleep_ms=50)
    opts = ReplayOptions(duration_s=20.0)
    assert_engines_agree_with_writes(written, knobs, opts)
    core = ReferenceEngine(written, knobs)
    model = write_model(written)
    assert model is not None
    Driver(core, written, knobs, opts, writes=model).run()
    assert not core.ksm_rows()[leaving].any()
    assert core.ksm_rows()[(snap.page == 0x10) & (pid != 102)].all()


def test_a_grown_row_takes_its_templates_standing_among_the_unseen_breaks_rows() -> None:
    """Rows the growth model appends are new pages no canary followed: each leaves, takes a
    share of the unseen breaks, or neither, as the row of the last traced snapshot it was
    drawn from (its template) does."""
    from tests.engine.test_growth import _growing_world

    ht = _growing_world().host_trace()
    base = _cpu(prepare(_counted(ht, {}, {}, 1.0)), {100: 0.5, 101: 0.4})
    grown, note = continue_growth(base, seed=3)
    assert note.status == "continued"
    # the canary saw every other page new in the last interval merged: those templates
    # take no share, the others are candidates
    last, before = base.snapshots[-1], base.snapshots[-2]
    pids = np.array([m.pid for m in base.mms])
    new = np.flatnonzero(~np.isin(last.keys(), before.keys()))
    seen = [
        (0.0, int(pids[last.mm[r]]), int(last.page[r]) << 12, "merged") for r in new[::2].tolist()
    ]
    obs = _with_cow(_canary(seen, end_s=10.0), cow=100, samples=10)
    rates = canary_rates(obs)
    n_cand = with_canary(grown, rates, traced=base.n_snapshots).meta[UNSEEN_META]["candidates"]
    rates = CanaryVariant(unseen_cyclers=n_cand // 2).apply(rates)
    written = with_canary(grown, rates, traced=base.n_snapshots)
    n_traced = base.n_snapshots
    traced = written.writes[n_traced - 1]
    assert traced is not None
    t_rate, t_leave, _ = traced.canary_per_row()
    assert t_rate is not None
    assert t_leave is not None
    per_s = written.meta[UNSEEN_META]["write_per_s"]
    assert written.meta[UNSEEN_META]["candidates"] == n_cand // 2
    assert written.meta[UNSEEN_META]["leave"] == n_cand - n_cand // 2
    checked = {"leave": 0, "cycle": 0, "none": 0}
    for k in range(n_traced, written.n_snapshots):
        iw = written.writes[k]
        assert iw is not None
        assert iw.grown_at is not None
        assert iw.grown_src is not None
        rate, leave, _ = iw.canary_per_row()
        assert rate is not None
        assert leave is not None
        at, src = iw.grown_at, iw.grown_src
        np.testing.assert_array_equal(leave[at] >= 0, t_leave[src] >= 0, err_msg=f"{k}")
        cyc = (t_rate[src] >= per_s) & (t_leave[src] < 0)
        assert (rate[at][cyc] >= per_s).all(), k
        assert (rate[at][~cyc] < per_s).all(), k
        checked.update(
            leave=checked["leave"] + int(np.count_nonzero(leave[at] >= 0)),
            cycle=checked["cycle"] + int(np.count_nonzero(cyc)),
            none=checked["none"] + int(np.count_nonzero(~cyc & (leave[at] < 0))),
        )
    assert min(checked.values()) > 0, checked


def test_the_unseen_breaks_rows_keep_their_content_where_fit_canary_says_so() -> None:
    """Rows taking the unseen breaks whose content the sampler saw change (here three
    changes a second on pid 100's second page, content back at the next snapshot: a toggle)
    are counted (UNSEEN_META's ``changing``); with ``CanaryRates.unseen_hold_content``
    (fit_canary's choice where those changes keep the model from breaking as many merges as
    the host) they lose their changes, every other row keeps its own (the idle
    process's page changes alike), and both engines agree on the replay, which breaks more
    merges: the held rows pass the checksum gate and merge again."""
    w = World()
    for pid in (100, 101, 102):
        w.spawn(pid, comm="w")
        w.map(pid, 0x10000, [1, 2, 3])
    w.snapshot(0.0)
    w.snapshot(1.0)
    # rows: snapshot 0 = 0-8, snapshot 1 = 9-17; (100, 0x11) and (102, 0x11) change content
    ht = _counted(w.host_trace(), {1: 3, 7: 3, 10: 3, 16: 3}, {}, 1.0)
    inp = _cpu(prepare(ht), {100: 0.5, 101: 0.4, 102: 0.0})
    obs = _with_cow(
        _canary([(0.0, 100, 0x10000, "merged"), (0.0, 101, 0x10000, "merged")], end_s=10.0),
        cow=100,
        samples=10,
    )
    rates = canary_rates(obs)
    as_counted = with_canary(inp, rates)
    assert as_counted.meta[UNSEEN_META]["changing"] == 1
    assert as_counted.meta[UNSEEN_META]["hold_content"] is False
    held_rates = CanaryVariant(unseen_hold_content=True).apply(rates)
    assert CanaryVariant.of(held_rates) == CanaryVariant(unseen_hold_content=True)
    held = with_canary(inp, held_rates)
    assert held.meta[UNSEEN_META]["hold_content"] is True
    for k, snap in enumerate(inp.snapshots):
        rows = {
            (int(inp.mms[m].pid), int(pg)): i
            for i, (m, pg) in enumerate(zip(snap.mm, snap.page, strict=True))
        }
        a, b = as_counted.writes[k], held.writes[k]
        assert a is not None
        assert b is not None
        cand, idle = rows[(100, 0x11)], rows[(102, 0x11)]
        assert a.content[cand] > 0
        assert a.toggle[cand]  # changes that end where they began
        assert b.content[cand] == 0
        assert b.content[idle] == a.content[idle] > 0
        assert (b.same_rate_per_s == a.same_rate_per_s).all()
    knobs = KsmKnobs(pages_to_scan=100, sleep_ms=50)
    opts = ReplayOptions(duration_s=20.0)
    counted = replay(inp, knobs=knobs, options=opts, canary=rates)
    x = replay(inp, knobs=knobs, options=opts, canary=held_rates)
    y = replay(inp, knobs=knobs, options=opts, canary=held_rates, engine="reference")
    assert_same(x, y)
    assert x.cow_breaks > counted.cow_breaks


def _another_run(
    events: list[tuple[float, int, int, str]],
) -> tuple[ReplayInput, ObservedTimeline]:
    """Busy workers 200 and 201, each with contents 1-3 at 0x10000 (snapshots at 0 and 1 s),
    and a canary of another run over 10 s (10 samples, ``cow_ksm`` +100): its busy pid 100's
    page ``events``, every page in one anonymous mapping starting at 0x7f0000."""
    import pandas as pd

    w = World()
    for pid in (200, 201):
        w.spawn(pid, comm="w")
        w.map(pid, 0x10000, [1, 2, 3])
    w.snapshot(0.0)
    w.snapshot(1.0)
    inp = _cpu(prepare(_counted(w.host_trace(), {}, {}, 1.0)), {200: 0.5, 201: 0.5})
    obs = _with_cow(_canary(events, end_s=10.0), cow=100, samples=10)
    assert obs.page_events is not None
    assert obs.canary is not None
    obs = dataclasses.replace(
        obs,
        page_events=obs.page_events.assign(
            vma_kind="anon", vma_start=np.full(len(events), 0x7F0000, np.uint64)
        ),
        canary=obs.canary.assign(cpu_s=obs.canary["t_s"] * 0.3),
        processes=pd.DataFrame({"pid": [100], "comm": ["w"], "t_s": [0.0]}),
    )
    return inp, obs


def test_another_runs_canary_reaches_rows_by_role_mapping_kind_and_offset() -> None:
    """A canary of another run (other pids, other addresses) that recorded its pages'
    mapping starts: a row takes the rate pooled over the canary's pages of its class (busy
    role, mapping kind, page number in the mapping); busy rows of a class the canary never
    saw merged take the unseen breaks."""
    # the canary's busy pid 100 has the same mapping at 0x7f0000: page 1 written twice in
    # 4 merged seconds, page 0 merged and never written; page 2 never seen merged
    inp, obs = _another_run(
        [
            (0.0, 100, 0x7F0000, "merged"),
            (0.0, 100, 0x7F1000, "merged"),
            (2.0, 100, 0x7F1000, "unmerged_same_content"),
            (3.0, 100, 0x7F1000, "merged"),
            (5.0, 100, 0x7F1000, "unmerged_same_content"),
        ]
    )
    ev = obs.page_events
    assert ev is not None
    rates = canary_rates(obs)
    assert rates.roles_recorded
    assert rates.page_offset is not None
    assert sorted(rates.page_offset.tolist()) == [0, 1]
    got = _rates_by_pid_page(inp, with_canary(inp, rates))
    for pid in (200, 201):
        assert got[(pid, 0x10)] == 0.0
        assert got[(pid, 0x11)] == pytest.approx(2 / 4.0)
        assert got[(pid, 0x12)] == pytest.approx(10.0 / 2 * 10)
    assert by_page_class(inp, rates)
    # the classes off (fit_canary's choice where they break far more than the host did):
    # as a recording without mapping starts, every row draws from its role, the unseen
    # breaks spread pro rata
    off = dataclasses.replace(rates, page_classes=False)
    assert not by_page_class(inp, off)
    bare = canary_rates(dataclasses.replace(obs, page_events=ev.drop(columns=["vma_start"])))
    assert _rates_by_pid_page(inp, with_canary(inp, off)) == _rates_by_pid_page(
        inp, with_canary(inp, bare)
    )
    assert _rates_by_pid_page(inp, with_canary(inp, off)) != got


@pytest.mark.parametrize(("merged_s", "brief"), [(1.0, True), (3.0, False)])
def test_a_class_whose_merges_the_canary_saw_last_no_longer_than_a_sample_is_unseen(
    merged_s: float, brief: bool
) -> None:
    """Another run's canary saw page 2 of its busy process merged once, for ``merged_s``
    seconds, then broken with its content unchanged (samples 1.1 s apart). A class pools
    every process's pages, so a sample catches a brief merge of one of them far more often
    than it catches a given page's (PostgreSQL's backends: docs/live-validation.md, "The
    breaks of rows that never stay merged"): merged for at most BRIEF_MERGE_SAMPLES (1.5)
    sampling periods on average, the class counts as never seen merged, and its busy rows
    take the unseen breaks; merged longer, they take the class's rate and no share."""
    inp, obs = _another_run(
        [
            (0.0, 100, 0x7F0000, "merged"),
            (0.0, 100, 0x7F1000, "merged"),
            (6.0, 100, 0x7F2000, "merged"),
            (6.0 + merged_s, 100, 0x7F2000, "unmerged_same_content"),
        ]
    )
    rates = canary_rates(obs)
    assert rates.sample_s == pytest.approx(10.0 / 9)
    got = _rates_by_pid_page(inp, with_canary(inp, rates))
    for pid in (200, 201):
        assert got[(pid, 0x10)] == 0.0
        assert got[(pid, 0x11)] == 0.0
        if brief:  # the two busy rows of the class share the 10 unseen breaks a second
            assert got[(pid, 0x12)] == pytest.approx(10.0 / 2 * 10)
        else:
            assert got[(pid, 0x12)] == pytest.approx(1 / merged_s)


def test_without_page_classes_the_unseen_breaks_are_spread_over_the_pages_written() -> None:
    """Another run's canary that recorded no mapping starts cannot say which rows take the
    unseen breaks: each rate drawn from the role is scaled by ``cow_ksm`` per same-content
    unmerge the canary saw (here (100 - 0) / 20 = 5)."""
    w = World()
    for pid in (200, 201):
        w.spawn(pid, comm="w")
        w.map(pid, 0x10000, list(range(1, 41)))
    w.snapshot(0.0)
    w.snapshot(1.0)
    inp = prepare(_counted(w.host_trace(), {}, {}, 1.0))
    events = [(0.0, 100, 0x10000, "merged")]
    events += [(0.5 * i, 100, 0x10000, "unmerged_same_content") for i in range(1, 21)]
    events += [(0.5 * i + 0.01, 100, 0x10000, "merged") for i in range(1, 20)]
    obs = _with_cow(_canary(events, end_s=10.0), cow=100, samples=10, seen=20)
    rates = canary_rates(obs)
    assert rates.missed_scale == pytest.approx(5.0)
    plain = dataclasses.replace(rates, missed_scale=1.0)
    a = with_canary(inp, rates).writes[-1]
    b = with_canary(inp, plain).writes[-1]
    assert a is not None
    assert a.same_rate_per_s is not None
    assert b is not None
    assert b.same_rate_per_s is not None
    assert np.count_nonzero(b.same_rate_per_s) > 0
    assert a.same_rate_per_s == pytest.approx(5.0 * b.same_rate_per_s)
    # the spreading off (fit_canary's choice where the rates as measured break nearer the
    # host's cow_ksm): the rates as the canary measured them, whatever the scale
    assert spreads_missed_breaks(inp, rates)
    unspread = CanaryVariant(missed_spread=False).apply(rates)
    assert not spreads_missed_breaks(inp, unspread)
    assert not spreads_missed_breaks(inp, plain)  # nothing missed: nothing to spread
    c = with_canary(inp, unspread).writes[-1]
    assert c is not None
    assert c.same_rate_per_s is not None
    assert c.same_rate_per_s == pytest.approx(b.same_rate_per_s)
    assert CanaryVariant.of(unspread) == CanaryVariant(missed_spread=False)
    assert CanaryVariant.of(None) == CanaryVariant.of(rates) == CanaryVariant()


def test_canary_rates_are_same_content_unmerges_per_merged_second() -> None:
    obs = _canary(
        [
            (0.0, 100, 0x10000, "merged"),
            (2.0, 100, 0x10000, "unmerged_same_content"),
            (3.0, 100, 0x10000, "merged"),
            (5.0, 100, 0x10000, "unmerged_same_content"),
            (0.0, 100, 0x11000, "merged"),  # merged to the end: 10 s, no write
            (0.0, 101, 0x10000, "unmerged_changed"),  # never merged: no rate of its own
        ],
        end_s=10.0,
    )
    r = canary_rates(obs)
    rates = dict(zip(r.key.tolist(), r.rate_per_s.tolist(), strict=True))
    assert rates[(100 << 36) | 0x10] == pytest.approx(0.5)
    assert rates[(100 << 36) | 0x11] == 0.0
    assert np.isnan(rates[(101 << 36) | 0x10])
    assert r.by_comm == {"w": pytest.approx(2 / 14)}
    assert r.events == 2


def test_a_canary_calibrates_same_content_writes_the_trace_cannot_see() -> None:
    w = _two_workers(pages=4)
    w.snapshot(0.0)
    w.snapshot(1.0)
    ht = _counted(w.host_trace(), {}, {}, 1.0)  # sampled, but no write seen
    # the canary saw pid 100's first page rewritten with its bytes twice a second
    obs = _canary(
        [(0.0, 100, 0x10000, "merged")]
        + [(0.5 * i, 100, 0x10000, e) for i in range(1, 20) for e in ("unmerged_same_content",)]
        + [(0.5 * i + 0.01, 100, 0x10000, "merged") for i in range(1, 20)],
        end_s=10.0,
    )
    inp = prepare(ht)
    knobs = KsmKnobs(pages_to_scan=100, sleep_ms=50)
    opts = ReplayOptions(duration_s=20.0)
    plain = replay(inp, knobs=knobs, options=opts)
    calibrated = replay(inp, knobs=knobs, options=opts, canary=canary_rates(obs))
    assert plain.cow_breaks == 0
    assert calibrated.cow_breaks > 0
    assert calibrated.provenance["writes"]["canary"]["same_content_unmerges"] == 19
    # the other page of pid 100 and the pages of pid 101 take the role's (lower) rate
    assert calibrated.cow_breaks_per_s is not None
    assert calibrated.cow_breaks_per_s > 0
    ref = replay(inp, knobs=knobs, options=opts, canary=canary_rates(obs), engine="reference")
    assert_same(calibrated, ref)


def test_a_trace_directory_streams_the_same_writes(tmp_path: Path) -> None:
    """``prepare_trace`` (one snapshot's pages at a time) reads the counts as ``prepare``."""
    from planner.engine.prepare import prepare_trace
    from planner.trace.io import TraceWriter, open_trace

    spec = WorldSpec(processes=3, pages=20, snapshots=3, churn=0.3)
    ht = with_write_counts(random_world(9, spec).host_trace(), 9, ChurnSpec(soft_dirty=False))
    with TraceWriter(tmp_path / "t", source="synthetic") as tw:
        sink = tw.host(ht.host)
        for row in ht.snapshots.to_pylist():
            sid = row["snapshot_id"]

            def of(table: pa.Table, sid: int = sid) -> pa.Table:
                return table.filter(pc.equal(table.column("snapshot_id"), sid))

            sink.add_snapshot(
                {k: v for k, v in row.items() if k != "host"},
                processes=of(ht.processes),
                mappings=of(ht.mappings),
                pages=of(ht.pages),
            )
    a = prepare(ht)
    b = prepare_trace(open_trace(tmp_path / "t"))
    assert a.writes
    assert len(a.writes) == len(b.writes)
    for wa, wb in zip(a.writes, b.writes, strict=True):
        assert wa is not None
        assert wb is not None
        assert wa.rows_written > 0
        assert np.array_equal(wa.content, wb.content)
        assert np.array_equal(wa.same, wb.same)
        assert np.array_equal(wa.toggle, wb.toggle)
        assert wa.length_ns == wb.length_ns


def test_a_roles_canary_rate_spares_the_pages_fork_still_shares() -> None:
    """The canary (another run: other pids) measured its rate on KSM pages; pages fork()
    still shares are never KSM pages there, so the role's rate is not put on them."""
    w = World()
    w.spawn(200, comm="w")
    w.map(200, 0x10000, [1, 2, 3, 4])
    w.fork(200, 201, comm="w")  # 201 shares 200's four frames
    w.map(201, 0x20000, [5, 6])  # two private pages of the child
    w.snapshot(0.0)
    w.snapshot(1.0)
    inp = prepare(_counted(w.host_trace(), {}, {}, 1.0))
    obs = _canary(
        [(0.0, 100, 0x10000, "merged"), (1.0, 100, 0x10000, "unmerged_same_content")],
        end_s=10.0,
    )
    rates = canary_rates(obs)
    assert rates.by_comm == {"w": pytest.approx(1.0)}
    calibrated = with_canary(inp, rates)
    snap = inp.snapshots[0]
    got = calibrated.writes[0]
    assert got is not None
    assert got.same_rate_per_s is not None
    _, inv, counts = np.unique(snap.frame, return_inverse=True, return_counts=True)
    shared = counts[inv] > 1
    assert shared.sum() == 8
    assert (~shared).sum() == 2
    assert (got.same_rate_per_s[shared] == 0).all()
    assert got.same_rate_per_s[~shared] == pytest.approx(1.0)


def test_a_content_groups_rows_share_the_rate_the_canary_caught_on_some_of_them() -> None:
    """The canary (the traced run: same pids) caught pid 100's first page rewritten with its
    bytes; pid 101's copy of that content, never seen merged, is written alike; the second
    content, seen merged and never written, keeps rate 0 on both rows."""
    w = _two_workers(pages=2)
    w.snapshot(0.0)
    w.snapshot(1.0)
    inp = prepare(_counted(w.host_trace(), {}, {}, 1.0))
    obs = _canary(
        [
            (0.0, 100, 0x10000, "merged"),
            (2.0, 100, 0x10000, "unmerged_same_content"),
            (0.0, 100, 0x11000, "merged"),
            (0.0, 101, 0x11000, "merged"),
            # the canary followed the whole host: processes the trace does not have
            *[(0.0, pid, 0x10000, "merged") for pid in (900, 901, 902)],
        ],
        end_s=10.0,
    )
    rates = canary_rates(obs)
    got = with_canary(inp, rates).writes[0]
    assert got is not None
    assert got.same_rate_per_s is not None
    snap = inp.snapshots[0]
    by_row = {
        (int(m), int(p)): float(r)
        for m, p, r in zip(snap.mm, snap.page, got.same_rate_per_s, strict=True)
    }
    pid = {i: mi.pid for i, mi in enumerate(inp.mms)}
    named = {(pid[m], p): r for (m, p), r in by_row.items()}
    assert named[(100, 0x10)] == pytest.approx(0.5)  # 1 break over its 2 merged seconds
    assert named[(101, 0x10)] == pytest.approx(0.5)  # the same content, never seen merged
    assert named[(100, 0x11)] == 0.0
    assert named[(101, 0x11)] == 0.0
    assert got.leave_ns is None


def test_another_runs_canary_puts_its_roles_rate_distribution_on_whole_contents() -> None:
    """A canary of another run (other pids): rows take rates drawn from the role's per-page
    distribution, alike for rows of one content, never its mean on every page."""
    w = World()
    for pid in (200, 201, 202):
        w.spawn(pid, comm="w")
        w.map(pid, 0x10000, list(range(1, 41)))  # 40 contents, one copy per worker
    w.snapshot(0.0)
    w.snapshot(1.0)
    inp = prepare(_counted(w.host_trace(), {}, {}, 1.0))
    # on the canary, one page of the role never written, one written 4 times a second
    obs = _canary(
        [(0.0, 100, 0x10000, "merged"), (0.0, 100, 0x11000, "merged")]
        + [(0.25 * i, 100, 0x11000, "unmerged_same_content") for i in range(1, 41)]
        + [(0.25 * i + 0.01, 100, 0x11000, "merged") for i in range(1, 40)],
        end_s=10.0,
    )
    rates = canary_rates(obs)
    assert rates.rates_by_comm["w"].tolist() == pytest.approx([0.0, 40 / (10.0 - 0.39)], rel=0.01)
    got = with_canary(inp, rates).writes[0]
    assert got is not None
    assert got.same_rate_per_s is not None
    r = got.same_rate_per_s
    assert set(np.round(r, 6).tolist()) <= {0.0, round(rates.rates_by_comm["w"][1], 6)}
    assert 0 < np.count_nonzero(r) < r.size  # some contents written, others not
    snap = inp.snapshots[0]
    for h in np.unique(snap.hash):
        assert np.unique(r[snap.hash == h]).size == 1  # one draw per content


@pytest.mark.parametrize("gone", ["unmapped", "unmerged_changed"])
def test_pages_the_canary_saw_leave_ksm_for_good_leave_the_replay_at_that_time(
    gone: str,
) -> None:
    """A merged pair whose pages the canary saw unmapped at 5 s (MADV_DONTNEED after the
    capture), or lose their merge to a new content and never merge again (a region
    rewritten): the replay unmerges them then, in both engines, and never merges them
    again. A page merged again after such an event does not leave."""
    w = _two_workers(pages=3)
    w.snapshot(0.0)
    w.snapshot(1.0)
    inp = prepare(_counted(w.host_trace(), {}, {}, 1.0))
    merged = [(0.0, pid, 0x10000 + 0x1000 * p, "merged") for pid in (100, 101) for p in range(3)]
    back = canary_rates(
        _canary(
            merged
            + [(5.0, pid, 0x12000, gone) for pid in (100, 101)]
            + [(7.0, pid, 0x12000, "merged") for pid in (100, 101)],
            end_s=10.0,
        )
    )
    assert np.isnan(back.left_s).all()
    obs = _canary(merged + [(5.0, pid, 0x12000, gone) for pid in (100, 101)], end_s=10.0)
    rates = canary_rates(obs)
    assert np.count_nonzero(~np.isnan(rates.left_s)) == 2
    calibrated = with_canary(inp, rates)
    last = calibrated.writes[-1]
    assert last is not None
    assert last.leave_ns is not None
    assert np.count_nonzero(last.leave_ns >= 0) == 2
    assert calibrated.writes[0] is not None
    assert calibrated.writes[0].leave_ns is None  # the earlier snapshots show them present
    knobs = KsmKnobs(pages_to_scan=100, sleep_ms=50)
    opts = ReplayOptions(duration_s=20.0)
    plain = replay(inp, knobs=knobs, options=opts)
    a = replay(inp, knobs=knobs, options=opts, canary=rates)
    b = replay(inp, knobs=knobs, options=opts, canary=rates, engine="reference")
    assert_same(a, b)
    assert plain.final_counters["pages_sharing"] == 3
    assert a.final_counters["pages_sharing"] == 2
    early = [g for g in a.grid if g.t_s < 4.0]
    assert early
    assert early[-1].counters["pages_sharing"] == 3  # merged before they left
    # cow_ksm counts no unmap; it counts the write of a new content to a KSM page, one for
    # each of the pair's two pages (the kernel never reuses a KSM page on a write fault,
    # the last mapper's either)
    assert a.cow_breaks == (0 if gone == "unmapped" else 2)
    assert_engines_agree_with_writes(calibrated, knobs, opts)


@pytest.mark.parametrize("counted", [True, False])
def test_appended_snapshots_share_the_last_traced_snapshots_canary_rates(counted: bool) -> None:
    """Snapshots the growth model appended hold the last traced snapshot's rates and times
    of leaving, and their own only where they differ (8 B per row and step otherwise: 3 GB
    for 24 steps of a 16 M-page host). Per row they are what each would be calibrated
    alone: new rows the canary followed (hits at their addresses), old rows whose content
    group a new row joins, rows that leave, with write counts in the trace or without."""
    w = _two_workers(pages=3)
    w.spawn(102, comm="w")
    w.map(102, 0x10000, [20, 21, 22, 23])  # contents nothing else holds: rate 0 throughout
    w.snapshot(0.0)
    w.snapshot(1.0)
    w.map(100, 0x30000, [1, 2, 9])  # appended: contents of the workers', and a new one
    w.snapshot(2.0)
    w.map(100, 0x20000, [2, 30])  # before pid 100's rows appended at 2 s: they move up
    w.map(101, 0x40000, [2, 9])
    w.snapshot(3.0)
    ht = w.host_trace()
    inp = prepare(_counted(ht, {}, {}, 1.0) if counted else ht)
    obs = _canary(
        [(0.0, pid, 0x10000 + 0x1000 * p, "merged") for pid in (100, 101) for p in range(3)]
        + [(1.0, 100, 0x30000, "merged"), (1.0, 100, 0x31000, "merged")]
        + [(2.0, 100, 0x31000, "unmerged_same_content")]
        + [(3.0, 100, 0x10000, "unmerged_same_content")]
        + [(5.0, 100, 0x12000, "unmapped"), (5.0, 101, 0x12000, "unmerged_changed")],
        end_s=10.0,
    )
    rates = canary_rates(obs)
    assert rates.unseen_breaks_per_s == 0  # so the share per candidate is not in play
    full = with_canary(inp, rates)  # every snapshot calibrated alone
    shared = with_canary(inp, rates, traced=2)
    for k in range(inp.n_snapshots):
        a, b = full.writes[k], shared.writes[k]
        assert a is not None
        assert b is not None
        for x, y in zip(
            (*a.canary_per_row(), *a.per_row()), (*b.canary_per_row(), *b.per_row()), strict=True
        ):
            assert (x is None) == (y is None), k
            if x is not None and y is not None:
                np.testing.assert_array_equal(x, y, err_msg=f"snapshot {k}")
        assert a.rows_written == b.rows_written
        if k < 2:
            assert b.canary_own is None
            continue
        own = b.canary_own
        assert own is not None
        assert b.same_rate_per_s is shared.writes[1].same_rate_per_s  # shared, not copied
        snap, traced_snap = inp.snapshots[k], inp.snapshots[1]
        keys = (snap.mm.astype(np.uint64) << np.uint64(40)) | snap.page
        traced_keys = (traced_snap.mm.astype(np.uint64) << np.uint64(40)) | traced_snap.page
        np.testing.assert_array_equal(own.grown, np.flatnonzero(~np.isin(keys, traced_keys)))
        assert set(own.grown.tolist()) <= set(own.at.tolist())
        assert own.at.size < inp.snapshots[k].n  # the old rows' values are the shared ones
    rate, leave, leave_cow = full.writes[-1].canary_per_row()  # the case is not a trivial one
    assert rate is not None
    assert np.count_nonzero(rate) > 0
    assert leave is not None
    assert np.count_nonzero(leave >= 0) == 2
    assert leave_cow is not None  # one leaves by a write, the other unmapped
    assert np.count_nonzero(leave_cow) == 1


def test_the_steady_state_changes_pages_at_the_rate_of_every_interval() -> None:
    """Pages of both workers toggle between two contents every few seconds: the first
    interval shows the change (the snapshots differ, though the sampler counted none), the
    last, sampled after the last snapshot, happens to show none. After the trace they keep
    changing at the rate of all the intervals, not freeze as the last one alone would say."""
    w = _two_workers(pages=2)
    w.spawn(102, comm="w")
    w.map(102, 0x10000, [99])  # a unique page the sampler saw change (rows 4 and 9)
    w.snapshot(0.0)
    for pid in (100, 101):
        w.write(pid, 0x10000, 77)  # both workers' first page: the other content
    w.snapshot(2.0)
    ht = _counted(w.host_trace(), {4: 1, 9: 1}, {}, 2.0)
    inp = prepare(ht)
    first, last = inp.writes
    assert first is not None
    assert last is not None
    snap0, snap1 = inp.snapshots
    pid = np.array([mi.pid for mi in inp.mms])
    moved0 = (snap0.page == 0x10) & (pid[snap0.mm] != 102)
    assert (first.content[moved0] == 1).all()  # proved by the snapshots
    assert (first.content[~moved0 & (pid[snap0.mm] != 102)] == 0).all()
    moved1 = (snap1.page == 0x10) & (pid[snap1.mm] != 102)
    # one change over the 4 s the two intervals span: after the trace, one every 4 s
    assert last.length_ns == 4 * 10**9
    assert (last.content[moved1] == 1).all()
    assert (last.content[~moved1 & (pid[snap1.mm] != 102)] == 0).all()
    knobs = KsmKnobs(pages_to_scan=100, sleep_ms=50)
    opts = ReplayOptions(duration_s=30.0)
    a, _ = assert_engines_agree_with_writes(inp, knobs, opts)
    frozen = replay(inp, knobs=knobs, options=dataclasses.replace(opts, writes=False))
    assert frozen.final_counters["pages_sharing"] == 2
    # the changing pages drift to contents no other page has: only the other pair merges
    assert a.final_counters["pages_sharing"] == 1


def test_an_idle_process_takes_no_busy_rate_from_a_canary_without_cpu_times() -> None:
    """A canary recorded without CPU times knows the command (``w``), not who was busy: its
    rates are the busy workers' (they write). The trace tells the idle parent apart by its
    CPU share, so the idle rows take an idle role's rates or none, never the command's
    (docs/live-validation.md, "Django canaries at two knob settings")."""
    w = World()
    for pid in (200, 201, 202):
        w.spawn(pid, comm="w")
        w.map(pid, 0x10000, list(range(1, 11)))
    w.snapshot(0.0)
    w.snapshot(1.0)
    inp = _cpu(prepare(_counted(w.host_trace(), {}, {}, 1.0)), {200: 0.5, 201: 0.4, 202: 0.0})
    obs = _canary(
        [(0.0, 100, 0x10000, "merged"), (0.0, 101, 0x10000, "merged")]
        + [
            (0.5 * i, pid, 0x10000, "unmerged_same_content")
            for i in range(1, 20)
            for pid in (100, 101)
        ]
        + [(0.5 * i + 0.01, pid, 0x10000, "merged") for i in range(1, 20) for pid in (100, 101)],
        end_s=10.0,
    )
    rates = canary_rates(obs)
    assert not rates.roles_recorded
    assert set(rates.rates_by_comm) == {"w"}
    got = _rates_by_pid_page(inp, with_canary(inp, rates))
    busy = [r for (pid, _), r in got.items() if pid != 202]
    idle = [r for (pid, _), r in got.items() if pid == 202]
    assert min(busy) > 0.0  # every busy row drew the command's (only) rate
    assert idle == [0.0] * 10


def _coalesce_by_hand(
    rows: list[int], kinds: list[int], other: list[int], next_volatile: int
) -> tuple[list[int], list[int], list[bool], int]:
    """The batch as the module's notes say, one event at a time: each row's last content
    write decides (kinds 1 fresh, 2 restore, 3 other, 4 leave; 0 same content)."""
    last: dict[int, int] = {}
    for r, k in zip(rows, kinds, strict=True):
        if k != 0 or r not in last:
            last[r] = k if k != 0 else last.get(r, 0)
    content, gone = [], []
    for r in sorted(last):
        k = last[r]
        if k in (1, 4):
            content.append(next_volatile)
            next_volatile += 1
        else:
            content.append({0: SAME, 2: RESTORE}.get(k, other[r] if k == 3 else SAME))
        gone.append(k == 4)
    return sorted(last), content, gone, next_volatile


@settings(max_examples=200)
@given(
    st.lists(st.tuples(st.integers(0, 40), st.integers(0, 4)), max_size=200),
    st.integers(0, 1000),
)
def test_a_batch_coalesces_to_each_rows_last_content_write(
    events: list[tuple[int, int]], next_volatile: int
) -> None:
    from planner.engine.writes import _coalesce_rows

    rows = np.array([r for r, _ in events], np.int64)
    kinds = np.array([k for _, k in events], np.int64)
    other = np.arange(41, dtype=np.int64) + 5000
    scratch = np.full(41, -1, np.int64)
    vol_rows = np.full(41, 7, np.int64)  # 7: a volatile content held before this batch
    uniq, content, gone, nv, any_gone = _coalesce_rows(
        rows, kinds, scratch, other, next_volatile, vol_rows, True
    )
    want = _coalesce_by_hand(rows.tolist(), kinds.tolist(), other.tolist(), next_volatile)
    assert (uniq.tolist(), content.tolist(), gone.tolist(), int(nv)) == want
    assert any_gone == any(want[2])
    assert (scratch == -1).all()  # left clean for the next batch
    # the rows written hold their new content id, or none (-1) where restored; the others
    # (and rows with only same-content writes) keep theirs
    held = {r: (c if c >= 0 else -1) for r, c in zip(want[0], want[1], strict=True) if c != SAME}
    assert vol_rows.tolist() == [held.get(r, 7) for r in range(41)]


@pytest.mark.parametrize(
    ("n_rows", "events"), [(300, 2_000), (70_001, 3_000), (1 << 21, 20_000), (70_001, 1)]
)
def test_a_big_batch_of_far_rows_coalesces_in_row_order(n_rows: int, events: int) -> None:
    """Rows beyond one radix digit (the kernel sorts the batch's rows 8 bits a pass, up to
    three passes here) and batches larger than a digit's buckets: the same entries, in
    ascending row order, as by hand."""
    from planner.engine.writes import _coalesce_rows

    rng = np.random.default_rng(n_rows + events)
    rows = rng.integers(0, n_rows, events).astype(np.int64)
    kinds = rng.integers(0, 5, events).astype(np.int64)
    other = rng.integers(0, 1 << 40, n_rows).astype(np.int64)
    scratch = np.full(n_rows, -1, np.int8)
    uniq, content, gone, nv, _ = _coalesce_rows(
        rows, kinds, scratch, other, 11, np.empty(0, np.int64), False
    )
    want = _coalesce_by_hand(rows.tolist(), kinds.tolist(), other.tolist(), 11)
    assert (uniq.tolist(), content.tolist(), gone.tolist(), int(nv)) == want
    assert (scratch == -1).all()


def test_an_input_derived_once_replays_as_the_trace_does_at_any_knobs() -> None:
    from planner.engine import derive_input

    w = _two_workers(pages=4)
    w.snapshot(0.0)
    w.snapshot(1.0)
    ht = _counted(w.host_trace(), {0: 3}, {1: 2}, 1.0)
    obs = _canary(
        [(0.0, 100, 0x10000, "merged")]
        + [(0.5 * i, 100, 0x10000, "unmerged_same_content") for i in range(1, 20)]
        + [(0.5 * i + 0.01, 100, 0x10000, "merged") for i in range(1, 20)],
        end_s=10.0,
    )
    inp = prepare(ht)
    canary = canary_rates(obs)
    opts = ReplayOptions(duration_s=20.0)
    derived = derive_input(inp, opts, canary)
    for pages in (1, 100):
        knobs = KsmKnobs(pages_to_scan=pages, sleep_ms=50)
        fresh = replay(inp, knobs=knobs, options=opts, canary=canary)
        again = replay(derived, knobs=knobs, options=opts)
        assert fresh.cow_breaks > 0
        assert_same(fresh, again)
        assert again.provenance["writes"] == fresh.provenance["writes"]
        assert again.provenance["growth"] == fresh.provenance["growth"]
    # other options than it was derived for: derived again, as from the trace
    knobs = KsmKnobs(pages_to_scan=1, sleep_ms=50)
    for other in (dataclasses.replace(opts, write_seed=7), dataclasses.replace(opts, growth=False)):
        got = replay(derived, knobs=knobs, options=other)
        want = replay(inp, knobs=knobs, options=other, canary=canary)
        assert_same(got, want)
        assert got.provenance["growth"] == want.provenance["growth"]
    assert got.provenance["growth"]["summary"] != again.provenance["growth"]["summary"]
    # without writes the canary is carried for the provenance only, as before
    off = dataclasses.replace(opts, writes=False)
    no_writes = replay(derived, knobs=knobs, options=off)
    assert no_writes.cow_breaks == replay(inp, knobs=knobs, options=off).cow_breaks


def _window_by_numpy(st: object, w0: int, w1: int) -> tuple[list[int], list[int], list[int]]:
    """:meth:`_Streams.events` as numpy writes it: every event of the window, a lexsort."""
    s: Any = st
    p = s.period_ns
    lo = np.maximum(np.ceil((w0 - s.t0_ns) / p - s.phase), 0).astype(np.int64)
    hi = np.ceil((w1 - s.t0_ns) / p - s.phase).astype(np.int64)
    hi = np.where(s.count >= 0, np.minimum(hi, s.count), hi)
    n = np.maximum(hi - lo, 0)
    idx = np.repeat(np.arange(s.row.size), n)
    j = lo[idx] + (np.arange(idx.size) - np.repeat(np.cumsum(n) - n, n))
    t = s.t0_ns + np.floor((s.phase[idx] + j) * p[idx]).astype(np.int64)
    keep = (t >= w0) & (t < w1)
    idx, j, t = idx[keep], j[keep], t[keep]
    sch = s.scheme[idx]
    kind = np.zeros(idx.size, np.int64)
    kind[sch == 1] = 1
    kind[sch == 3] = 4
    tog = sch == 2
    last = (s.count[idx] >= 0) & (j == s.count[idx] - 1)
    kind[tog] = np.where((j[tog] % 2 == 1) | last[tog], 2, 3)
    rows = s.row[idx]
    if s.gone_rows.size and rows.size:
        pos = np.minimum(np.searchsorted(s.gone_rows, rows), s.gone_rows.size - 1)
        after = (s.gone_rows[pos] == rows) & (t > s.gone_ns[pos]) & (sch != 3)
        t, rows, kind = t[~after], rows[~after], kind[~after]
    order = np.lexsort((rows, t))
    return t[order].tolist(), rows[order].tolist(), kind[order].tolist()


@settings(max_examples=150)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 30),  # row
            st.sampled_from([0.3, 1.0, 7.0, 100.0, 1e3, 12345.6, 1e6]),  # period, ns
            st.floats(0.0, 0.999),  # phase
            st.integers(-1, 50),  # count
            st.integers(0, 3),  # scheme
        ),
        max_size=60,
    ),
    st.integers(0, 10_000),
    st.integers(1, 2_000_000),
    st.lists(st.tuples(st.integers(0, 30), st.integers(0, 3_000_000)), max_size=5),
)
def test_a_windows_events_are_every_streams_in_time_then_row_order(
    streams: list[tuple[int, float, float, int, int]],
    w0: int,
    width: int,
    gone: list[tuple[int, int]],
) -> None:
    from planner.engine.writes import _Streams

    gone_by_row = dict(gone)
    gone_rows = np.array(sorted(gone_by_row), np.int64)
    s = _Streams(
        row=np.array([x[0] for x in streams], np.int64),
        # an unbounded stream's period at least 1 us: at most 2,000 events in a window
        period_ns=np.array([x[1] if x[3] >= 0 else max(x[1], 1e3) for x in streams], np.float64),
        phase=np.array([x[2] for x in streams], np.float64),
        count=np.array([x[3] for x in streams], np.int64),
        scheme=np.array([x[4] for x in streams], np.int8),
        t0_ns=1_000,
        end_ns=10**12,
        gone_rows=gone_rows,
        gone_ns=np.array([gone_by_row[r] for r in gone_rows.tolist()], np.int64),
    )
    t, rows, kind = s.events(w0, w0 + width)
    assert (t.tolist(), rows.tolist(), kind.tolist()) == _window_by_numpy(s, w0, w0 + width)


@given(
    st.lists(st.integers(0, 2**64 - 1), max_size=300),
    st.integers(1, 40),
    st.booleans(),
)
@settings(max_examples=200, deadline=None)
def test_held_twice_marks_values_another_element_holds(
    pool: list[int], n_distinct: int, signed: bool
) -> None:
    """The hash-table pass of ``_held_twice`` against counts by ``np.unique``: values
    drawn from a few (many repeats) or from all 64 bits, unsigned or signed (frames)."""
    from planner.engine.writes import _held_twice

    rng = np.random.default_rng(len(pool) * 41 + n_distinct)
    values = np.array(pool, np.uint64)
    if values.size and n_distinct < 40:
        values = values[rng.integers(0, min(n_distinct, values.size), values.size)]
    if signed:
        values = values.view(np.int64)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    assert _held_twice(values).tolist() == (counts[inverse] > 1).tolist()


# ------------------------------------------------------------------ joins (a canary's)


def _with_random_joins(
    inp: ReplayInput,
    seed: int,
    share: float,
    *,
    unique_only: bool = False,
    episodes: bool = True,
) -> ReplayInput:
    """``inp`` with random :class:`Joins` on every snapshot of the continuation, drawn per
    page as a canary's are: a page joins or not, when and which content (one that at least
    two rows of the first such snapshot hold: appended snapshots keep every row) are the
    same in every snapshot that has it. Times run from a second before that snapshot to
    three seconds after it. ``unique_only``: only pages whose content no other row of the
    first such snapshot holds (as a canary's joins: none of them is merged before).
    With ``episodes``, pages also lose their content for a while and get it back
    (:class:`Episodes`), one or two times each, on a share of the pages, drawn once per
    page."""
    from planner.engine.writes import Episodes, Joins

    rng = np.random.default_rng(seed)
    out = list(inp.writes)
    chosen: dict[tuple[int, int], tuple[int, int]] = {}
    spells: dict[tuple[int, int], list[tuple[int, int]]] = {}
    pool: npt.NDArray[np.int64] | None = None
    for k, iw in enumerate(inp.writes):
        if iw is None or not (k + 1 == inp.n_snapshots or iw.origin_ns is not None):
            continue
        snap = inp.snapshots[k]
        gid = writes_module._content_ids(inp, snap)
        held = np.bincount(gid)[gid] > 1 if snap.n else np.zeros(0, bool)
        if pool is None:
            pool = np.unique(gid[held])
            t0 = inp.times_ns[k]
        if not pool.size:
            break
        rows, at, content = [], [], []
        ep_rows, ep_off, ep_on = [], [], []
        for r, key in enumerate(zip(snap.mm.tolist(), snap.page.tolist(), strict=True)):
            if key not in chosen:
                joins = rng.random() < share and not (unique_only and held[r])
                when = t0 + int(rng.integers(-(10**9), 3 * 10**9))
                chosen[key] = (when, int(rng.choice(pool))) if joins else (-1, -1)
                spells[key] = []
                if episodes and rng.random() < share / 2:
                    start = t0 - 10**9
                    for _ in range(int(rng.integers(1, 3))):
                        off = start + int(rng.integers(0, 3 * 10**9))
                        start = off + 1 + int(rng.integers(0, 3 * 10**9))
                        spells[key].append((off, start))
            when, c = chosen[key]
            if when >= 0:
                rows.append(r)
                at.append(when)
                content.append(c)
            for off, on in spells[key]:
                ep_rows.append(r)
                ep_off.append(off)
                ep_on.append(on)
        targets = np.array(content, np.int64)
        zero = np.isin(targets, gid[snap.zero])  # the zero-filled content, as with_canary says
        episodes = None
        if ep_rows:
            episodes = Episodes(
                np.array(ep_rows, np.int64), np.array(ep_off, np.int64), np.array(ep_on, np.int64)
            )
        out[k] = dataclasses.replace(
            iw,
            joins=Joins(np.array(rows, np.int64), np.array(at, np.int64), targets, zero),
            episodes=episodes,
        )
    return dataclasses.replace(inp, writes=out)


@pytest.mark.parametrize("seed", [0, 3])
def test_joined_rows_keep_their_merges_over_the_growths_snapshots(seed: int) -> None:
    """Rows that joined are restored before each snapshot the growth model appends and
    set again after it without a write: no merge is broken (with nothing else written, no
    copy-on-write at all) and both engines agree. As real writes, the restore and the
    reapply would break every joined row's merge at every appended snapshot."""
    from tests.engine.test_growth import _growing_world

    ht = with_write_counts(
        _growing_world().host_trace(), seed, ChurnSpec(written_share=0.0, last_interval_s=1.0)
    )
    grown, note = continue_growth(prepare(ht), seed=seed)
    assert note.status == "continued"
    appended = [k for k, iw in enumerate(grown.writes) if iw is not None and iw.origin_ns]
    assert len(appended) >= 2
    inp = _with_random_joins(grown, seed, 0.5, unique_only=True, episodes=False)
    knobs = KsmKnobs(pages_to_scan=40, sleep_ms=20, hz=250)
    opts = ReplayOptions(duration_s=30.0)
    res, _ = assert_engines_agree_with_writes(inp, knobs, opts, seed=seed)
    assert res.cow_breaks == 0
    before = replay(grown, knobs=knobs, options=opts)
    assert res.final_counters["pages_sharing"] > before.final_counters["pages_sharing"]


def test_a_page_the_canary_saw_merge_joins_the_content_its_process_holds_most() -> None:
    """A page unique at every snapshot, never written there, that the canary saw merged at
    6 s takes its process's most held content at the last snapshot (the earliest time the
    trace allows), in both engines, and merges; a page the canary saw merged that the trace
    shows changing joins when the canary saw it merged, less 1.5 of its full scans (none
    here: at 6 s), and goes on changing; one of a process that holds no content twice does
    not join, nor one the canary never saw merged."""
    w = _two_workers(pages=3)
    w.map(100, 0x20000, [50, 51, 52])  # unique: 0x20000 joins; 0x21000 is written
    w.spawn(102, comm="w")
    w.map(102, 0x10000, [60])  # unique, in a process that holds nothing twice
    w.snapshot(0.0)
    w.snapshot(1.0)
    ht = w.host_trace()
    keys = zip(ht.pages["pid"].to_pylist(), ht.pages["page_addr"].to_pylist(), strict=True)
    row = {(int(p), int(a)): i for i, (p, a) in enumerate(keys) if i >= ht.pages.num_rows // 2}
    inp = prepare(_counted(ht, {row[(100, 0x21000)]: 3}, {}, 1.0))
    merged = [(0.0, pid, 0x10000 + 0x1000 * p, "merged") for pid in (100, 101) for p in range(3)]
    obs = _canary(
        merged
        + [(6.0, 100, a, "merged") for a in (0x20000, 0x21000)]
        + [(6.0, 102, 0x10000, "merged")],
        end_s=10.0,
    )
    rates = canary_rates(obs)
    assert rates.full_scan_s is None
    calibrated = with_canary(inp, rates)
    assert calibrated.meta[JOINS_META] == 2
    last = calibrated.writes[-1]
    assert last is not None
    assert last.joins is not None
    snap = inp.snapshots[-1]
    r, r_moving = last.joins.rows.tolist()
    assert (int(snap.mm[r]), int(snap.page[r])) == (int(snap.mm[0]), 0x20)
    assert (int(snap.mm[r_moving]), int(snap.page[r_moving])) == (int(snap.mm[0]), 0x21)
    assert last.joins.at_ns.tolist() == [inp.times_ns[-1], inp.times_ns[0] + 6 * 10**9]
    lead = with_canary(inp, dataclasses.replace(rates, full_scan_s=2.0)).writes[-1]
    assert lead is not None
    assert lead.joins is not None
    assert lead.joins.at_ns.tolist() == [inp.times_ns[-1], inp.times_ns[0] + 3 * 10**9]
    gid = writes_module._content_ids(inp, snap)
    assert gid[r] != gid[0]
    assert np.count_nonzero(gid == last.joins.content[0]) == 2  # held by the pair
    assert int(last.joins.content[0]) == int(gid[0])  # of three held twice: the lowest id
    knobs = KsmKnobs(pages_to_scan=100, sleep_ms=50)
    opts = ReplayOptions(duration_s=20.0)
    plain = replay(inp, knobs=knobs, options=opts, canary=dataclasses.replace(rates, joined_s=None))
    a = replay(inp, knobs=knobs, options=opts, canary=rates)
    b = replay(inp, knobs=knobs, options=opts, canary=rates, engine="reference")
    assert_same(a, b)
    assert a.final_counters["pages_sharing"] == plain.final_counters["pages_sharing"] + 1
    assert a.provenance["joins"]["continued"] is True
    assert a.provenance["joins"]["canary_rows"] == 2
    assert "continued as the canary saw them (2 rows join)" in a.provenance["joins"]["summary"]
    assert plain.provenance["joins"]["continued"] is False
    assert_engines_agree_with_writes(calibrated, knobs, opts)


def test_a_same_content_write_after_a_reapplied_content_keeps_that_content() -> None:
    """Two batches handed over as one (a reapply after a synthetic snapshot, then the
    interval's first writes): a row's same-content write leaves the content the first
    batch gave it (it had been restored to the snapshot's before); the row keeps its page
    only where both batches say so; it leaves where either does."""
    from planner.engine.writes import Writes, _merge, held_code

    a = Writes(
        np.array([1, 2, 3, 5]),
        np.array([7, int(held_code(4)), RESTORE, 9]),
        keep=np.array([False, True, True, False]),
    )
    b = Writes(
        np.array([1, 2, 3, 4]),
        np.array([SAME, SAME, 8, RESTORE]),
        gone=np.array([0, 0, 0, 1], bool),
    )
    m = _merge(a, b)
    assert m.rows.tolist() == [1, 2, 3, 4, 5]
    assert m.content.tolist() == [7, int(held_code(4)), 8, RESTORE, 9]
    assert m.keep is None  # row 2 is written by b: its merge breaks; row 3 too
    assert m.gone is not None
    assert m.gone.tolist() == [False, False, False, True, False]
    kept = _merge(a, Writes(np.array([6]), np.array([SAME])))
    assert kept.keep is not None
    assert kept.keep.tolist() == [False, True, True, False, False]


@pytest.mark.parametrize("use_zero_pages", [False, True])
def test_a_page_that_joins_the_zero_filled_content_is_merged_as_a_zero_page(
    use_zero_pages: bool,
) -> None:
    """A JVM's joins are mostly memory its collector zeroed: a page that joins the
    zero-filled content is merged with the kernel's zero page under use_zero_pages (a
    ksm_zero_pages page, not one of pages_sharing) and into a KSM page of zeros without it,
    in both engines."""
    w = _two_workers(pages=2)
    w.map(100, 0x20000, [0, 0, 0, 70])  # zero-filled pages: the content pid 100 holds most
    w.snapshot(0.0)
    w.snapshot(1.0)
    inp = prepare(_counted(w.host_trace(), {}, {}, 1.0))
    merged = [(0.0, pid, 0x10000 + 0x1000 * p, "merged") for pid in (100, 101) for p in range(2)]
    rates = canary_rates(_canary([*merged, (4.0, 100, 0x23000, "merged")], end_s=10.0))
    calibrated = with_canary(inp, rates)
    last = calibrated.writes[-1]
    assert last is not None
    assert last.joins is not None
    assert last.joins.zero is not None
    assert last.joins.zero.tolist() == [True]
    knobs = KsmKnobs(pages_to_scan=100, sleep_ms=50, use_zero_pages=use_zero_pages)
    opts = ReplayOptions(duration_s=20.0)
    plain = replay(inp, knobs=knobs, options=opts, canary=dataclasses.replace(rates, joined_s=None))
    a = replay(inp, knobs=knobs, options=opts, canary=rates)
    b = replay(inp, knobs=knobs, options=opts, canary=rates, engine="reference")
    assert_same(a, b)
    zero_pages = a.final_counters["ksm_zero_pages"] - plain.final_counters["ksm_zero_pages"]
    sharing = a.final_counters["pages_sharing"] - plain.final_counters["pages_sharing"]
    assert (zero_pages, sharing) == ((1, 0) if use_zero_pages else (0, 1))
    assert_engines_agree_with_writes(calibrated, knobs, opts)


def _with_scans(obs: ObservedTimeline, full_scan_s: float) -> ObservedTimeline:
    """``obs`` whose ksmd made a full scan every ``full_scan_s`` seconds."""
    c = obs.counters.copy()
    t = c.index.to_numpy(np.float64)
    c["full_scans"] = np.floor(t / full_scan_s).astype(np.int64)
    return dataclasses.replace(obs, counters=c)


def test_a_canary_records_the_merges_a_page_lost_and_got_back() -> None:
    """An episode is a merge that went with a new content or the page, followed by a merge
    again; the last such event, with no merge after it, is a leave for good instead."""
    obs = _canary(
        [
            (1.0, 100, 0x10000, "merged"),
            (3.0, 100, 0x10000, "unmerged_changed"),
            (5.0, 100, 0x10000, "merged"),
            (6.0, 100, 0x10000, "unmerged_same_content"),
            (7.0, 100, 0x10000, "merged"),
            (8.0, 100, 0x10000, "unmapped"),
            (1.0, 100, 0x11000, "merged"),
            (2.0, 100, 0x11000, "unmerged_changed"),
            (1.0, 101, 0x10000, "merged"),
            (2.0, 101, 0x10000, "unmapped"),
            (4.0, 101, 0x10000, "merged"),
        ],
        end_s=10.0,
    )
    rates = canary_rates(_with_scans(obs, 2.5))
    assert rates.episode_key is not None
    assert rates.episode_off_s is not None
    assert rates.episode_on_s is not None
    pages = [(int(k >> 36), int(k & 0xFFFFFFFFF)) for k in rates.episode_key.tolist()]
    assert pages == [(100, 0x10), (101, 0x10)]
    assert rates.episode_off_s.tolist() == [3.0, 2.0]
    assert rates.episode_on_s.tolist() == [5.0, 4.0]
    assert rates.full_scan_s == 2.5
    assert rates.left_s is not None
    left = dict(zip(rates.key.tolist(), rates.left_s.tolist(), strict=True))
    assert left[(100 << 36) | 0x10] == 8.0
    assert left[(100 << 36) | 0x11] == 2.0
    assert np.isnan(left[(101 << 36) | 0x10])
    # the merged seconds are the same as before episodes were kept: 2 + 1 + 1 (then gone)
    assert rates.merged_s_per_page is not None
    merged = dict(zip(rates.key.tolist(), rates.merged_s_per_page.tolist(), strict=True))
    assert merged[(100 << 36) | 0x10] == 4.0
    renamed = rates.renamed(
        np.array([(101 << 36) | 0x10], np.uint64), np.array([(101 << 36) | 0x90], np.uint64)
    )
    assert renamed.episode_key is not None
    assert [int(k & 0xFFFFFFFFF) for k in renamed.episode_key.tolist()] == [0x10, 0x90]


def _pair_lost_and_got_back(content: dict[int, int]) -> tuple[ReplayInput, CanaryRates]:
    """A pair of pages (pids 100 and 101), two snapshots 1 s apart, ``content`` changes per
    page row; a canary of 20 s (full scans of 2 s) that saw pid 100's page lose its merge
    to a new content at 6 s and merge again at 12 s."""
    w = _two_workers(pages=1)
    w.snapshot(0.0)
    w.snapshot(1.0)
    inp = prepare(_counted(w.host_trace(), content, {}, 1.0))
    events = [
        (0.0, 100, 0x10000, "merged"),
        (0.0, 101, 0x10000, "merged"),
        (6.0, 100, 0x10000, "unmerged_changed"),
        (12.0, 100, 0x10000, "merged"),
    ]
    return inp, canary_rates(_with_scans(_canary(events, end_s=20.0), 2.0))


def test_a_merge_lost_and_got_back_breaks_once_and_merges_again() -> None:
    """A pair of pages merged from the start; the canary saw one lose its merge to a new
    content at 6 s and merge again at 12 s. Its row writes a content of its own at 6 s (one
    copy-on-write break) and holds the pair's content again 1.5 of the canary's full scans
    before 12 s, in both engines: the pair is apart in between and merged at the end."""
    from planner.engine.writes import REJOIN_LEAD_SCANS

    inp, rates = _pair_lost_and_got_back({})
    calibrated = with_canary(inp, rates)
    last = calibrated.writes[-1]
    assert last is not None
    assert last.episodes is not None
    snap = inp.snapshots[-1]
    (r,) = last.episodes.rows.tolist()
    assert int(inp.mms[int(snap.mm[r])].pid) == 100
    t0 = inp.times_ns[0]
    assert last.episodes.off_ns.tolist() == [t0 + 6 * 10**9]
    assert last.episodes.on_ns.tolist() == [t0 + round((12 - REJOIN_LEAD_SCANS * 2.0) * 1e9)]
    knobs = KsmKnobs(pages_to_scan=100, sleep_ms=50)
    opts = ReplayOptions(duration_s=20.0, grid_s=0.5)
    no_episodes = dataclasses.replace(rates, episode_key=None)
    plain = replay(inp, knobs=knobs, options=opts, canary=no_episodes)
    a = replay(inp, knobs=knobs, options=opts, canary=rates)
    b = replay(inp, knobs=knobs, options=opts, canary=rates, engine="reference")
    assert_same(a, b)
    assert a.cow_breaks == plain.cow_breaks + 1
    sharing = {round(g.t_s, 1): g.counters["pages_sharing"] for g in a.grid}
    assert sharing[5.5] == 1
    assert sharing[8.0] == 0  # apart: its own content
    assert sharing[19.5] == 1  # merged again
    assert all(g.counters["pages_sharing"] == 1 for g in plain.grid if g.t_s >= 5.0)
    assert_engines_agree_with_writes(calibrated, knobs, opts)


def test_a_row_with_episodes_changes_as_the_canary_saw_until_its_recording_ends() -> None:
    """As above, and the sampler also counted the row's content changing once a second.
    While the canary recorded (20 s) its changes are the episode's alone: merged until 6 s,
    apart until the rejoin, merged again at 19.5 s, in both engines. Replayed at its own
    phases during the recording, the sampled rate broke merges the canary saw kept (7
    breaks; the pair apart at 19.5 s). After the recording the sampled changes go on, on
    the same grid: the pair is apart again at 23.5 s."""
    inp, rates = _pair_lost_and_got_back({2: 1})  # row 2: pid 100, last snapshot
    assert rates.end_s == 20.0
    calibrated = with_canary(inp, rates)
    last = calibrated.writes[-1]
    assert last is not None
    assert last.episodes is not None
    t0 = inp.times_ns[0]
    assert last.episodes.recorded_until_ns == t0 + 20 * 10**9
    assert last.episodes.quiet_rows is not None
    assert last.episodes.quiet_rows.tolist() == last.episodes.rows.tolist()  # the pair's copy
    # a row of a content of its own keeps its sampled changes (a joined row's break them)
    own = writes_module._canary_episodes(
        inp, (np.uint64(100) << np.uint64(36)) | inp.snapshots[-1].page[:1], rates,
        np.array([7], np.uint64),  # a content no other row holds
    )  # fmt: skip
    assert own is not None
    assert own.quiet_rows is not None
    assert own.rows.tolist() == [0]
    assert own.quiet_rows.tolist() == []
    src = TraceWrites(calibrated, seed=0)
    src.start_interval(calibrated.n_snapshots - 1, inp.times_ns[-1])
    row = int(last.episodes.rows[0])
    for upto_s, events in ((5.9, 0), (6.1, 1), (20.0, 2)):  # the episode's two writes alone
        src.take_until(t0 + round(upto_s * 1e9))
        assert src.events == events, upto_s
    after = src.take_until(t0 + 23 * 10**9)
    assert after is not None
    assert after.rows.tolist() == [row]
    content, _, _ = last.per_row()
    assert last.length_ns is not None
    period_s = last.length_ns / 1e9 / int(content[row])  # the continuation's rate
    assert src.events - 2 in (int(3 // period_s), int(3 // period_s) + 1), period_s
    knobs = KsmKnobs(pages_to_scan=100, sleep_ms=50)
    opts = ReplayOptions(duration_s=24.0, grid_s=0.5)
    a = replay(inp, knobs=knobs, options=opts, canary=rates)
    b = replay(inp, knobs=knobs, options=opts, canary=rates, engine="reference")
    assert_same(a, b)
    sharing = {round(g.t_s, 1): g.counters["pages_sharing"] for g in a.grid}
    assert (sharing[5.5], sharing[8.0], sharing[19.5], sharing[23.5]) == (1, 0, 1, 0), sharing
    assert_engines_agree_with_writes(calibrated, knobs, opts)


def test_a_joined_page_that_loses_its_merge_gets_the_joined_content_back() -> None:
    """A page unique in the trace that the canary saw merged at 2 s (a join), then lose
    its merge to a new content at 8 s and merge again at 14 s: it holds the joined content
    again, not the snapshot's, and merges at the end, in both engines."""
    w = _two_workers(pages=2)
    w.map(100, 0x20000, [50])
    w.snapshot(0.0)
    w.snapshot(1.0)
    inp = prepare(_counted(w.host_trace(), {}, {}, 1.0))
    merged = [(0.0, pid, 0x10000 + 0x1000 * p, "merged") for pid in (100, 101) for p in range(2)]
    events = [
        *merged,
        (2.0, 100, 0x20000, "merged"),
        (8.0, 100, 0x20000, "unmerged_changed"),
        (14.0, 100, 0x20000, "merged"),
    ]
    rates = canary_rates(_with_scans(_canary(events, end_s=20.0), 1.0))
    calibrated = with_canary(inp, rates)
    last = calibrated.writes[-1]
    assert last is not None
    assert last.joins is not None
    assert last.episodes is not None
    assert last.episodes.rows.tolist() == last.joins.rows.tolist()
    knobs = KsmKnobs(pages_to_scan=100, sleep_ms=50)
    opts = ReplayOptions(duration_s=24.0, grid_s=0.5)
    a = replay(inp, knobs=knobs, options=opts, canary=rates)
    b = replay(inp, knobs=knobs, options=opts, canary=rates, engine="reference")
    assert_same(a, b)
    no_episodes = dataclasses.replace(rates, episode_key=None)
    joined = replay(inp, knobs=knobs, options=opts, canary=no_episodes)
    sharing = {round(g.t_s, 1): g.counters["pages_sharing"] for g in a.grid}
    before = {round(g.t_s, 1): g.counters["pages_sharing"] for g in joined.grid}
    assert sharing[7.5] == before[7.5]
    assert sharing[10.0] == before[10.0] - 1
    assert sharing[23.5] == before[23.5]
    assert_engines_agree_with_writes(calibrated, knobs, opts)


def _alternating(
    *, other: bool, seen_back: bool = False, seen: tuple[int, ...] = (12, 14, 16)
) -> HostTrace:
    """Three workers whose page at 0x10000 alternates between contents 7 and 8 in step (a
    second page, content 1, stays): 7 at 0 and 2 s, 8 at 4 s (with ``seen_back``: 8 at
    2 s, 7 at 4 s), one change in each interval after the first; with ``other``, the
    sampler found the last interval's first other content (the one of 2 s) on the rows
    ``seen`` (of the pages table: the last snapshot's are 12, 14 and 16)."""
    w = World()
    for pid in (100, 101, 102):
        w.spawn(pid, comm="w")
        w.map(pid, 0x10000, [7, 1])
    w.snapshot(0.0)
    for step, content in enumerate((8, 7) if seen_back else (7, 8)):
        for pid in (100, 101, 102):
            w.write(pid, 0x10000, content)
        w.snapshot(2.0 * (step + 1))
    # rows: 6 per snapshot, pid by pid, the alternating page first
    ht = _counted(w.host_trace(), {r: 1 for r in (6, 8, 10, 12, 14, 16)}, {}, 2.0)
    if not other:
        return ht
    hashes = ht.pages.column("content_hash").to_pylist()
    values = [hashes[6] if r in seen else None for r in range(ht.pages.num_rows)]
    col = pa.array(values, pa.uint64())
    pages = ht.pages.set_column(ht.pages.schema.get_field_index("other_hash"), "other_hash", col)
    return dataclasses.replace(ht, pages=pages)


@pytest.mark.parametrize("other", [True, False])
def test_copies_alternating_between_two_contents_merge_in_both(other: bool) -> None:
    """A page whose copies alternate between the same two contents in step merges in each
    phase, and every change breaks the merge: copy-on-write all along. The trace shows it
    by the sampler's first other content in the last interval (``other_hash``: the
    content of 2 s, where the snapshots showed 7, 7, 8). Without it the page drifts: every
    change a content of its own, which never merges again after the last snapshot."""
    inp = prepare(_alternating(other=other))
    last = inp.writes[-1]
    assert last is not None
    alternating = [0, 2, 4]  # the page at 0x10000 of each worker in the last snapshot
    if other:
        assert last.others is not None
        assert last.others.rows.tolist() == alternating
        assert last.toggle[alternating].all()
        held = inp.content_hash[last.others.content]
        assert set(held.tolist()) == {int(_alternating(other=True).pages["content_hash"][0])}
    else:
        assert last.others is None
        assert not last.toggle[alternating].any()
    # (smart scan off: three pages skipped on the same schedule, a few scans apart, would
    # never meet in one scan's unstable tree)
    knobs = KsmKnobs(pages_to_scan=100, sleep_ms=20, smart_scan=False)
    opts = ReplayOptions(duration_s=40.0)
    result, _ = assert_engines_agree_with_writes(inp, knobs, opts)
    at_10s = max(g.cow_breaks for g in result.grid if g.t_s <= 10.0)  # (cumulative)
    late = result.cow_breaks - at_10s
    if other:  # 3 copies x 10 changes in 30 s, each merged again within a few full scans
        assert late >= 24, late
    else:
        assert late == 0


def test_copies_of_a_page_seen_going_back_alternate_alike() -> None:
    """The sampler caught one copy of the page going back before the trace ended (a
    rotating slice checks each page in turn): the copies with the same content and the same
    content before it alternate too."""
    inp = prepare(_alternating(other=True, seen=(12,)))
    last = inp.writes[-1]
    assert last is not None
    assert last.others is not None
    assert last.others.rows.tolist() == [0, 2, 4]


def test_a_return_the_snapshots_show_makes_the_page_alternate() -> None:
    """Without ``other_hash`` (a version 2 trace) a page the snapshots show come back to a
    content it held (7, 8, 7) alternates with the one between (8) after the trace."""
    inp = prepare(_alternating(other=False, seen_back=True))
    last = inp.writes[-1]
    assert last is not None
    assert last.others is not None
    assert last.others.rows.tolist() == [0, 2, 4]
    held = inp.content_hash[last.others.content]
    hashes = _alternating(other=False, seen_back=True).pages["content_hash"].to_pylist()
    assert set(held.tolist()) == {hashes[6]}  # content 8, the page's at 2 s


@pytest.mark.parametrize("other", [True, False])
def test_a_page_alternating_between_two_contents_does_not_leave(other: bool) -> None:
    """The canary saw the alternating page's merge go with a new content at 5 s and never
    come back before its recording ended (at a slow scan the two contents rarely stay long
    enough to merge again). Where the trace shows the page alternating between two contents
    it does not leave for good: the alternation writes it. A drifting page leaves."""
    inp = prepare(_alternating(other=other))
    merged = [(0.0, pid, 0x10000, "merged") for pid in (100, 101)]
    lost = [(5.0, pid, 0x10000, "unmerged_changed") for pid in (100, 101)]
    calibrated = with_canary(inp, canary_rates(_canary(merged + lost, end_s=10.0)))
    last = calibrated.writes[-1]
    assert last is not None
    leaving = [] if last.leave_ns is None else np.flatnonzero(last.leave_ns >= 0).tolist()
    assert leaving == ([] if other else [0, 2])  # pids 100 and 101 at 0x10000


def _class_rates_by_page(
    rates: CanaryRates, rr: Any
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """``writes._class_rates`` written page by page and row by row (the oracle)."""
    assert rates.page_kind is not None
    assert rates.page_offset is not None
    m_arr, n_arr = rates._merged(), rates._events()
    page_role = [rates.role_of_pid.get(int(k >> 36), "") for k in rates.key.tolist()]
    ev: dict[tuple[str, str, int], float] = {}
    ms: dict[tuple[str, str, int], float] = {}
    pages: dict[tuple[str, str, int], int] = {}
    for i in np.flatnonzero((rates.page_offset >= 0) & (m_arr > 0)).tolist():
        c = (page_role[i], str(rates.page_kind[i]), int(rates.page_offset[i]))
        ev[c] = ev.get(c, 0.0) + float(n_arr[i])
        ms[c] = ms.get(c, 0.0) + float(m_arr[i])
        pages[c] = pages.get(c, 0) + 1
    brief = writes_module.BRIEF_MERGE_SAMPLES * rates.sample_s
    lasting = {c for c, m in ms.items() if m > brief * pages[c]}
    rate = np.zeros(rr.code.size)
    seen = np.zeros(rr.code.size, bool)
    roles = rr.roles if rates.roles_recorded else [writes_module.role_comm(r) for r in rr.roles]
    for i, (code, kind, off) in enumerate(
        zip(rr.code.tolist(), rr.kind.tolist(), rr.offset.tolist(), strict=True)
    ):
        c = (roles[code], rr.kinds[kind], int(off))
        if c in lasting:
            rate[i] = ev[c] / ms[c]
            seen[i] = True
    return rate, seen


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), recorded=st.booleans())
def test_page_classes_pool_the_canarys_pages_as_one_page_after_the_other(
    seed: int, recorded: bool
) -> None:
    """Classes (role, mapping kind, page number) pooled over a canary's pages, with brief
    merges, pages outside any mapping, roles by comm and rows of classes the canary never
    saw: the same rates, bit for bit, and the same classes seen as the loop over pages."""
    rng = np.random.default_rng(seed)
    n_pages, n_rows = int(rng.integers(0, 400)), int(rng.integers(0, 300))
    pids = rng.choice([101, 102, 103, 104], n_pages)
    key = np.sort(
        (pids.astype(np.uint64) << np.uint64(36)) | rng.integers(0, 50, n_pages).astype(np.uint64)
    )
    kinds = np.array(["heap", "anon", "stack", ""], object)
    merged = rng.choice([0.0, 0.5, 1.0, 3.0, 7.5], n_pages)
    rates = CanaryRates(
        key=key,
        rate_per_s=np.full(n_pages, np.nan),
        by_comm={},
        events=0,
        merged_s=float(merged.sum()),
        events_per_page=rng.integers(0, 9, n_pages).astype(np.float64) * rng.random(n_pages),
        merged_s_per_page=merged,
        role_of_pid={101: "postgres busy", 102: "postgres idle", 103: "node busy"},
        roles_recorded=recorded,
        sample_s=float(rng.choice([0.5, 1.0, 2.0])),
        page_kind=kinds[rng.integers(0, 4, n_pages)],
        page_offset=rng.integers(-1, 6, n_pages).astype(np.int64),
    )
    roles = ["postgres busy", "postgres idle", "node busy", "python", ""]
    rr = writes_module._RowRoles(
        code=rng.integers(0, len(roles), n_rows).astype(np.int64),
        roles=roles,
        kind=rng.integers(0, 4, n_rows).astype(np.int64),
        offset=rng.integers(-1, 6, n_rows).astype(np.int64),
        kinds=("", "stack", "heap", "file"),
    )
    got = writes_module._class_rates(rates, rr)
    if not (rates.page_offset >= 0).any():
        assert got is None
        return
    assert got is not None
    want_rate, want_seen = _class_rates_by_page(rates, rr)
    np.testing.assert_array_equal(got[1], want_seen)
    np.testing.assert_array_equal(got[0], want_rate)


@pytest.mark.parametrize("largest_offset", [7, 2**40, 2**61])
def test_page_class_ids_group_the_triples_packed_or_not(largest_offset: int) -> None:
    """One id per distinct (role, kind, page number), packed into one integer or, where the
    product would pass 63 bits, taken from the rows of the three columns."""
    rng = np.random.default_rng(largest_offset % 1000)
    role = rng.integers(0, 5, 500).astype(np.int64)
    kind = rng.integers(0, 3, 500).astype(np.int64)
    offset = rng.choice(np.array([-1, 0, 3, largest_offset], np.int64), 500)
    ids = writes_module._class_ids(role, kind, offset)
    triples = list(zip(role.tolist(), kind.tolist(), offset.tolist(), strict=True))
    first: dict[tuple[int, int, int], int] = {}
    for t, i in zip(triples, ids.tolist(), strict=True):
        assert first.setdefault(t, i) == i, t
    assert len(set(first.values())) == len(first)
    assert sorted(set(ids.tolist())) == list(range(len(first)))
