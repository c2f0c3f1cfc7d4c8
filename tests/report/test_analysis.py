"""Process roles, current state and copy-on-write breaks, by hand."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from planner.report.analysis import cow_breaks, current_state, process_roles
from planner.testing.builder import World
from planner.trace.io import open_trace


def test_roles_of_a_forked_family(small_trace: Path) -> None:
    roles = process_roles(open_trace(small_trace).load_host())
    assert [(r.pid, r.role, r.short) for r in roles] == [
        (100, "gunicorn 100 (parent)", "parent"),
        (101, "gunicorn children of 100", "child of 100"),
        (102, "gunicorn children of 100", "child of 100"),
        (103, "gunicorn children of 100", "child of 100"),
    ]
    assert {r.cgroup for r in roles} == {"/svc"}
    assert (roles[0].first_time_s, roles[0].last_time_s) == (0.0, 20.0)


def test_standalone_process_role() -> None:
    w = World()
    w.spawn(7, comm="redis", ppid=1)
    w.map(7, 0x1000, [1, 2])
    w.snapshot(0.0)
    (role,) = process_roles(w.host_trace())
    assert (role.role, role.short) == ("redis (standalone)", "standalone")


def test_current_state_totals_and_groups(small_trace: Path) -> None:
    cs = current_state(open_trace(small_trace).load_host())
    st = cs.snapshot
    # 4 processes x 60 pages; the master's 60 frames + 20 private frames per worker
    assert (st.pages, st.frames, st.fork_shared_pages) == (240, 120, 120)
    # 201..215 on three frames (2 freed each) except 201..203 rewritten by 101 (1 freed each),
    # plus the two zero frames
    assert st.ideal_saved_frames == 12 * 2 + 3 * 1 + 2
    assert cs.static_ideal_saved_bytes == st.ideal_saved_frames * 4096
    by_role = {g.group: g for g in cs.by_role}
    assert by_role["gunicorn 100 (parent)"].pages == 60
    assert by_role["gunicorn children of 100"].pages == 180
    # attributed columns add up to the totals
    assert sum(g.ideal_saved_frames for g in cs.by_role) == st.ideal_saved_frames
    assert sum(g.fork_shared_pages for g in cs.by_process) == st.fork_shared_pages
    assert [g.group for g in cs.by_process] == ["100", "101", "102", "103"]


def test_cow_breaks_counted_by_hand(small_trace: Path) -> None:
    cow = cow_breaks(open_trace(small_trace).load_host())
    first, second = cow.intervals
    # 45 pages of shared content (201..215 in 3 workers) + 8 zero pages (2 per process)
    assert (first.mergeable_pages, first.rewritten_pages) == (53, 3)
    assert first.breaks_per_s == pytest.approx(0.3)
    assert (second.mergeable_pages, second.rewritten_pages) == (50, 0)
    assert cow.breaks_per_s == pytest.approx(3 / 20)
    assert cow.bytes_per_s == pytest.approx(3 / 20 * 4096)


def test_cow_breaks_streamed_equal_the_loaded_ones(small_trace: Path) -> None:
    """What-if streams the pages one snapshot at a time: the same estimate."""
    from planner.whatif.writes import COW_COLUMNS

    for path in (small_trace, Path(__file__).resolve().parents[2] / "traces" / "django-preload"):
        if not path.exists():
            continue
        tr = open_trace(path)
        loaded = cow_breaks(tr.load_host())
        host = tr.hosts[0]
        streamed = cow_breaks(
            tr.load_host(host, pages=False), tr.iter_snapshot_pages(host, COW_COLUMNS)
        )
        assert streamed == loaded


def test_cow_breaks_of_one_snapshot_is_nan() -> None:
    w = World()
    w.spawn(1)
    w.map(1, 0x1000, [1, 1])
    w.snapshot(0.0)
    cow = cow_breaks(w.host_trace())
    assert cow.intervals == ()
    assert math.isnan(cow.breaks_per_s)
