"""Joins (planner/engine/joins.py): pages that take a content other pages hold between
snapshots, counted from the deltas, against a world built to have them."""

from __future__ import annotations

import pytest

from planner.engine import KsmKnobs, ReplayOptions, prepare, replay
from planner.engine.joins import (
    WARN_MIN_PAGES_PER_MIN,
    WARN_TURNOVER_PER_MIN,
    JoinInterval,
    JoinNote,
    measure_joins,
)
from planner.testing.builder import PAGE, World

HOLD = 0x100000  # each worker's pages of content X (held: a group within the worker)
OWN = 0x200000  # each worker's own contents


def _world(*, churn: bool = True) -> World:
    """Two workers, three snapshots 2 s apart.

    Worker 100 holds content 7 on four pages of its own; worker 101 holds content 8 on two.
    Interval 0: four of 100's own pages take content 7 (joins in the process), one of 101's
    takes content 7 (a join onto another process's content), two of 100's holders of 7 take
    own contents (leaves), three of 101's own pages take other own contents (changed, no
    join). Interval 1: of the five joiners, one takes an own content again and one is
    unmapped (three keep their content) -- the first a leave; one of 101's own pages takes
    content 8 (a join in its process)."""
    w = World()
    w.spawn(100, comm="w")
    w.spawn(101, comm="w")
    w.map(100, HOLD, [7, 7, 7, 7])
    w.map(100, OWN, [1000 + i for i in range(10)])
    w.map(101, HOLD, [8, 8])
    w.map(101, OWN, [2000 + i for i in range(10)])
    w.snapshot(0.0)
    if churn:
        w.write_range(100, OWN, [7, 7, 7, 7])  # joins, in the process
        w.write(101, OWN, 7)  # a join onto worker 100's content
        w.write_range(100, HOLD, [3000, 3001])  # leaves
        w.write_range(101, OWN + 5 * PAGE, [4000, 4001, 4002])  # changed, no join
    w.snapshot(2.0)
    if churn:
        w.write(100, OWN, 5000)  # a joiner changes again
        w.unmap(100, OWN + PAGE, 1)  # a joiner goes
        w.write(101, OWN + 9 * PAGE, 8)  # a join in its process
    w.snapshot(4.0)
    return w


def test_joins_leaves_and_survival_are_counted_per_interval() -> None:
    note = measure_joins(prepare(_world().host_trace()))
    assert note.intervals == (
        JoinInterval(from_s=0.0, length_s=2.0, changed=10, joins=5, leaves=2, joins_in_process=4),
        JoinInterval(from_s=2.0, length_s=2.0, changed=2, joins=1, leaves=1, joins_in_process=1),
    )
    # the first interval's five joins: one changed again, one unmapped
    assert note.survived == (3, 5)
    # at the last snapshot: 7 on two of 100's holders, two of its joiners and 101's joiner
    # (5 rows); 8 on 101's two holders and its joiner (3 rows)
    assert note.held_rows == 8
    assert note.joins_per_s == pytest.approx(6 / 4.0)
    assert note.continued is False
    assert "1.5 pages/s" in note.summary()
    assert "3 of 5 joins kept their content" in note.summary()


def test_no_joins_without_changes_and_none_before_two_snapshots() -> None:
    quiet = measure_joins(prepare(_world(churn=False).host_trace()))
    assert [i.joins for i in quiet.intervals] == [0, 0]
    assert quiet.held_rows == 6  # content 7 on 100's four holders, 8 on 101's two
    assert quiet.warning is None
    w = World()
    w.spawn(1)
    w.map(1, HOLD, [1, 1])
    w.snapshot(0.0)
    assert measure_joins(prepare(w.host_trace())) == JoinNote()
    assert "not measured" in JoinNote().summary()


def _note(joins: int, held: int, length_s: float = 60.0) -> JoinNote:
    return JoinNote(
        intervals=(JoinInterval(0.0, length_s, joins, joins, 0, joins),), held_rows=held
    )


def test_the_warning_needs_fast_joins_against_the_shared_rows() -> None:
    held = 10_000
    at = int(WARN_TURNOVER_PER_MIN * held)  # joins in a minute at the threshold
    assert _note(at - 1, held).warning is None
    warning = _note(at, held).warning
    assert warning is not None
    assert f"{at / 60:,.0f} pages a second" in warning
    assert "50% of its 10,000 shared pages a minute" in warning
    assert "continues none of these joins" in warning
    # a few pages are no turnover worth a warning, whatever the share
    assert _note(WARN_MIN_PAGES_PER_MIN - 1, 10).warning is None
    assert _note(WARN_MIN_PAGES_PER_MIN, 10).warning is not None
    # a continued note needs none; one without shared rows has no turnover
    continued = JoinNote(_note(at, held).intervals, held, continued=True)
    assert continued.warning is None
    assert _note(at, 0).turnover_per_min is None


def test_the_replay_states_the_joins_and_the_scan_aligned_replay_none() -> None:
    inp = prepare(_world().host_trace())
    knobs = KsmKnobs(pages_to_scan=100, sleep_ms=20)
    res = replay(inp, knobs=knobs, options=ReplayOptions(duration_s=10.0))
    joins = res.provenance["joins"]
    assert [i["joins"] for i in joins["intervals"]] == [5, 1]
    assert joins["survived"] == [3, 5]
    assert joins["joins_per_s"] == 1.5
    assert joins["continued"] is False
    # 90 joins a minute, under the pages a warning needs
    assert joins["warning"] is None
    assert joins["summary"].startswith("joins: 1.5 pages/s")
    aligned = replay(inp, knobs=knobs, snapshot_scans=(1, 2, 3))
    assert aligned.provenance["joins"]["intervals"] == []
    assert "applied by full scan" in aligned.provenance["joins"]["summary"]
