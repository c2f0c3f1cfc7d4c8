"""Rows' phases from their process's pass profile (planner.engine.write_timing)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.engine.prepare import SampleRows, pass_timing
from planner.engine.write_timing import CONTENT_KIND, SAME_KIND, PassTiming, profile_phases
from planner.trace.schema import SAMPLES_SCHEMA

MS = 1_000_000


def _profile(mm: list[int], end_ms: list[int], weight: list[float]) -> tuple[
    np.ndarray, np.ndarray, np.ndarray
]:  # fmt: skip
    return (
        np.asarray(mm, np.int64),
        np.asarray(end_ms, np.int64) * MS,
        np.asarray(weight, np.float64),
    )


def _reference(
    u: float, mm: int, period_ns: float, win_mm: np.ndarray, end: np.ndarray, w: np.ndarray
) -> float:
    """The phase as the module notes define it, one row at a time: the process's windows
    over [0, period), each weighted by its count times the share of it inside, and the
    draw carried through their cumulative weight (uniform within a window)."""
    pieces = []
    start = 0.0
    for m, e, x in zip(win_mm.tolist(), end.tolist(), w.tolist(), strict=True):
        if m != mm:
            continue
        lo, hi = start, float(e)
        start = float(e)
        if hi <= lo or x <= 0 or lo >= period_ns:
            continue
        inside = (min(hi, period_ns) - lo) / (hi - lo)
        pieces.append((lo, min(hi, period_ns), x * inside))
    total = sum(p[2] for p in pieces)
    if total <= 0:
        return u
    target = u * total
    acc = 0.0
    for lo, hi, x in pieces:
        if acc + x >= target:
            return float(min(max((lo + (target - acc) / x * (hi - lo)) / period_ns, 0.0), 1.0))
        acc += x
    return pieces[-1][1] / period_ns


def test_writes_spread_evenly_keep_the_uniform_phase() -> None:
    """Equal counts in equal windows over the period: the draw comes out as it went in."""
    win = _profile([0] * 5, [100, 200, 300, 400, 500], [3, 3, 3, 3, 3])
    u = np.linspace(0.0, 0.99, 12)
    out = profile_phases(u, np.zeros(12, np.int64), np.full(12, 500.0 * MS), *win)
    assert out == pytest.approx(u, abs=1e-9)


def test_a_burst_gathers_the_phases_in_its_window() -> None:
    """All of the process's writes were counted at the pass ending at 200 ms (the window
    100-200 ms): a row writing every 500 ms makes its first write there."""
    win = _profile([0] * 5, [100, 200, 300, 400, 500], [0, 40, 0, 0, 0])
    u = np.linspace(0.0, 0.99, 50)
    out = profile_phases(u, np.zeros(50, np.int64), np.full(50, 500.0 * MS), *win)
    assert out.min() >= 0.2 - 1e-12
    assert out.max() <= 0.4 + 1e-12
    # uniform within the window, in the order of the draws
    assert np.all(np.diff(out) >= 0)
    assert out == pytest.approx(0.2 + 0.2 * u)


def test_rows_follow_their_own_process() -> None:
    """Two processes writing in different windows; a third without a profile, and a
    process whose writes all fall after the row's first period, keep the draw."""
    win = _profile(
        [1, 1, 1, 1, 3, 3, 5, 5],
        [100, 200, 300, 400, 100, 200, 400, 900],
        [5, 0, 0, 0, 0, 7, 0, 4],
    )
    u = np.array([0.5, 0.5, 0.5, 0.5])
    mm = np.array([1, 3, 4, 5], np.int64)
    out = profile_phases(u, mm, np.full(4, 400.0 * MS), *win)
    assert out[0] == pytest.approx(0.125)  # mm 1: the window 0-100 ms of 400
    assert out[1] == pytest.approx(0.375)  # mm 3: 100-200 ms
    assert out[2] == 0.5  # mm 4: no passes
    assert out[3] == 0.5  # mm 5: its writes came after 400 ms


def test_the_period_cuts_a_window() -> None:
    """A row whose period ends inside a window takes that window's share up to its end."""
    win = _profile([0, 0], [100, 300], [1, 4])
    # period 200 ms: weight 1 in 0-100, 4 x 1/2 in 100-200: a third of the draws before 100
    out = profile_phases(np.array([1 / 3 - 1e-9, 1 / 3 + 1e-9]), np.zeros(2, np.int64),
                         np.full(2, 200.0 * MS), *win)  # fmt: skip
    assert out[0] == pytest.approx(0.5, abs=1e-6)
    assert out[1] == pytest.approx(0.5, abs=1e-6)
    out = profile_phases(np.array([2 / 3]), np.zeros(1, np.int64), np.full(1, 200.0 * MS), *win)
    assert out[0] == pytest.approx(0.75)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    windows=st.lists(
        st.tuples(st.integers(0, 3), st.integers(1, 400), st.sampled_from([0.0, 0.5, 1.0, 7.0])),
        min_size=0,
        max_size=12,
    ),
    rows=st.lists(
        st.tuples(st.integers(0, 4), st.floats(0.0, 0.999), st.integers(1, 1500)),
        min_size=1,
        max_size=10,
    ),
)
def test_the_vectorized_phases_are_the_row_by_row_definition(
    windows: list[tuple[int, int, float]], rows: list[tuple[int, float, int]]
) -> None:
    # each mm's windows contiguous, ends increasing, sorted by mm
    win_mm: list[int] = []
    end: list[int] = []
    w: list[float] = []
    for m in sorted({x[0] for x in windows}):
        t = 0
        for owner, width, weight in windows:
            if owner == m:
                t += width
                win_mm.append(m)
                end.append(t * MS)
                w.append(weight)
    wm, we, ww = np.asarray(win_mm, np.int64), np.asarray(end, np.int64), np.asarray(w)
    u = np.asarray([r[1] for r in rows])
    mm = np.asarray([r[0] for r in rows], np.int64)
    period = np.asarray([r[2] * MS for r in rows], np.float64)
    out = profile_phases(u, mm, period, wm, we, ww)
    want = [_reference(r[1], r[0], r[2] * MS, wm, we, ww) for r in rows]
    assert out == pytest.approx(want, abs=1e-9)
    assert np.all((out >= 0) & (out < 1))


def _samples(rows: list[tuple[int, int, int, float, float, int | None, int, str]]) -> pa.Table:
    keys = ("snapshot_id", "sample", "pid", "t0_s", "t1_s", "same_content_writes",
            "pages_changed", "state")  # fmt: skip
    cols = {k: [r[i] for r in rows] for i, k in enumerate(keys)}
    cols["proc_start"] = [7] * len(rows)
    return pa.Table.from_pydict(
        {f.name: cols.get(f.name, [None] * len(rows)) for f in SAMPLES_SCHEMA}, SAMPLES_SCHEMA
    )


def test_the_profile_is_read_from_the_samples_table() -> None:
    """Per pass and process of the snapshot's interval: the windows end at the look (same
    writes) and at the pass's end (content changes), in ns from the snapshot's time; passes
    of other intervals, of processes that were gone and of unknown processes are left."""
    table = _samples([
        (1, 0, 10, 10.2, 10.25, 4, 1, "ok"),
        (1, 1, 10, 10.4, 10.45, None, 2, "ok"),
        (1, 0, 20, 10.21, 10.3, 9, 0, "ok"),
        (1, 1, 20, 10.41, 10.41, None, 0, "gone"),
        (1, 0, 30, 10.22, 10.3, 5, 5, "ok"),  # not a process of the snapshot
        (2, 0, 10, 12.2, 12.25, 8, 8, "ok"),
    ])  # fmt: skip
    t = pass_timing(SampleRows.of(table), 1, 10.0, {(10, 7): 0, (20, 7): 3})
    assert isinstance(t, PassTiming)
    assert t.mm.tolist() == [0, 0, 3]
    assert t.same_end_ns.tolist() == [200_000_000, 400_000_000, 210_000_000]
    assert t.content_end_ns.tolist() == [250_000_000, 450_000_000, 300_000_000]
    assert t.same.tolist() == [4, 0, 9]
    assert t.content.tolist() == [1, 2, 0]
    # the row's draw goes through its process's same or content windows
    u = np.array([0.5])
    same = t.phases(u, np.array([3]), np.array([400.0 * MS]), SAME_KIND)
    assert same[0] == pytest.approx(0.2625)  # mm 3: all in 0-210 ms
    content = t.phases(u, np.array([0]), np.array([500.0 * MS]), CONTENT_KIND)
    assert content[0] == pytest.approx(((250 + 0.25 * 200) / 500), abs=1e-9)
    # no write counted, no pass of the interval: no profile
    quiet = _samples([(1, 0, 10, 10.2, 10.3, 0, 0, "ok")])
    assert pass_timing(SampleRows.of(quiet), 1, 10.0, {(10, 7): 0}) is None
    assert pass_timing(SampleRows.of(table), 5, 10.0, {(10, 7): 0}) is None
    assert pass_timing(SampleRows.of(table.slice(0, 0)), 1, 10.0, {(10, 7): 0}) is None


def test_a_replay_times_the_writes_of_a_sampled_trace_by_its_passes() -> None:
    """Two workers rewrite their 8 pages 4 times in a 2 s interval; the samples table has a
    pass every 100 ms per worker, and both counted their writes at the pass looking at
    200 ms: every row's first write falls in 100-200 ms, its next ones 500 ms apart. The
    same trace without its samples table spreads the first writes over the period."""
    import dataclasses

    from planner.engine.prepare import prepare
    from planner.engine.writes import TraceWrites

    from .test_writes import _counted, _two_workers

    w = _two_workers(pages=8)
    w.snapshot(0.0)
    w.snapshot(2.0)
    ht = _counted(w.host_trace(), {}, {r: 4 for r in range(16)}, None)
    sid0 = int(ht.snapshots.column("snapshot_id")[0].as_py())
    procs = ht.processes.filter(pc.equal(ht.processes.column("snapshot_id"), sid0))
    starts = dict(
        zip(procs.column("pid").to_pylist(), procs.column("proc_start").to_pylist(), strict=True)
    )
    rows = []
    for pid in (100, 101):
        for i in range(19):
            look = 0.1 * (i + 1)
            rows.append({"snapshot_id": sid0, "sample": i, "pid": pid, "proc_start": starts[pid],
                         "t0_s": look, "t1_s": look + 0.01, "pages_changed": 0,
                         "same_content_writes": 8 if i == 1 else 0, "state": "ok"})  # fmt: skip
    timed = dataclasses.replace(ht, samples=pa.Table.from_pylist(rows, schema=SAMPLES_SCHEMA))

    def first_writes(trace: object) -> list[int]:
        """How many rows were written by 100, 200 and 500 ms."""
        inp = prepare(trace)  # type: ignore[arg-type]
        src = TraceWrites(inp, seed=3)
        src.start_interval(0, 0)
        out = []
        for t_ms in (100, 200, 500):
            got = src.take_until(t_ms * MS + 1)
            out.append((out[-1] if out else 0) + (0 if got is None else len(got)))
        return out

    assert first_writes(timed) == [0, 16, 16]
    assert prepare(timed).writes[0].timing is not None  # type: ignore[union-attr]
    spread = first_writes(ht)
    assert prepare(ht).writes[0].timing is None  # type: ignore[union-attr]
    assert spread[2] == 16
    assert spread[1] < 16, spread  # uniform phases: most rows write after 200 ms
