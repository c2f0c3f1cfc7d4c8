"""Materialisation plans (pure) and page contents: no processes, no sysfs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from planner.errors import InputDataError
from planner.kernel.holder import FILLER, page_bytes
from planner.kernel.materialize import (
    HPAGE_SLOTS,
    MaterializationPlan,
    ProcKey,
    Step,
    plan_materialization,
)
from planner.testing import World, content_hash
from planner.trace import schema as S
from planner.trace.flat import FlatConverter, InMemoryHost
from planner.trace.io import HostTrace

PAGE = 4096


def steps(plan: MaterializationPlan, k: int) -> list[tuple[str, int]]:
    return [(s.action, s.key.pid) for s in plan.snapshots[k].steps]


def step_of(plan: MaterializationPlan, k: int, pid: int) -> Step:
    return next(s for s in plan.snapshots[k].steps if s.key.pid == pid)


def flat_trace(snapshots: list[list[dict[str, Any]]]) -> HostTrace:
    """A trace from flat rows (pid, page_addr, content_hash, frame[, ppid, flags])."""
    conv = FlatConverter("flat")
    sink = InMemoryHost("flat")
    for sid, rows in enumerate(snapshots):
        table = pa.table(
            {
                "pid": pa.array([r["pid"] for r in rows], pa.int32()),
                "ppid": pa.array([r.get("ppid", 1) for r in rows], pa.int32()),
                "page_addr": pa.array([r["page_addr"] for r in rows], pa.uint64()),
                "content_hash": pa.array([r["content_hash"] for r in rows], pa.uint64()),
                "frame": pa.array([r["frame"] for r in rows], pa.uint64()),
                "flags": pa.array([r.get("flags", 0) for r in rows], pa.uint16()),
            }
        )
        snap, procs, maps, pages = conv.convert(sid, float(sid), table)
        sink.add_snapshot(snap, processes=procs, mappings=maps, pages=pages)
    return sink.build()


# ------------------------------------------------------------------------------ contents


def test_page_bytes_put_the_hash_first_big_endian_and_never_give_a_zero_page() -> None:
    p = page_bytes(0x0102030405060708)
    assert len(p) == PAGE
    assert p[:8] == bytes(range(1, 9))
    assert p[8:] == FILLER
    assert page_bytes(0) != bytes(PAGE)  # a non-zero row whose hash happens to be 0
    assert page_bytes(None) == bytes(PAGE)


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_equal_hash_equal_bytes_and_memcmp_order_is_hash_order(a: int, b: int) -> None:
    pa_, pb = page_bytes(a), page_bytes(b)
    assert (pa_ == pb) == (a == b)
    assert (pa_ < pb) == (a < b)
    if a != b:
        assert pa_[:8] != pb[:8]


# ------------------------------------------------------------------------------ plans


def test_one_process_is_spawned_written_and_registered() -> None:
    w = World()
    w.spawn(100)
    w.map(100, 0x10000, [1, 1, 2, 0])
    w.snapshot(0.0)
    plan = plan_materialization(w.host_trace())
    [s] = plan.snapshots[0].steps
    assert (s.action, s.key.pid, s.register) == ("spawn", 100, True)
    assert s.write_slots.tolist() == [0, 1, 2, 3]
    assert s.write_contents() == [content_hash(1), content_hash(1), content_hash(2), None]
    assert plan.family_of(s.key).nslots == 4
    assert plan.registration_order(0) == [s.key]


def test_slots_keep_address_order_over_the_union_of_a_family() -> None:
    w = World()
    w.spawn(100)
    w.map(100, 0x7F0000000000, [1, 2])
    w.map(100, 0x10000, [3])
    w.snapshot(0.0)
    w.fork(100, 101)
    w.map(101, 0x5000_0000, [4, 5, 6])  # the child's own mapping sits between the parent's
    w.snapshot(1.0)
    plan = plan_materialization(w.host_trace())
    fam = plan.family_of(ProcKey(100, 1))
    assert plan.family_of(ProcKey(101, 2)) is fam
    assert fam.addrs.tolist() == [
        0x10000,
        0x5000_0000,
        0x5000_1000,
        0x5000_2000,
        0x7F0000000000,
        0x7F0000001000,
    ]
    assert fam.slots.tolist() == [0, 1, 2, 3, 4, 5]
    fork = step_of(plan, 1, 101)
    assert fork.action == "fork"
    assert fork.parent == ProcKey(100, 1)
    assert fork.write_slots.tolist() == [1, 2, 3]  # only its own pages; the rest is shared


def test_thp_blocks_stay_aligned_512_slot_blocks() -> None:
    w = World()
    w.spawn(100)
    w.map(100, 0x3FFF0000, [1, 2, 3])  # three 4 KiB pages before the THPs
    w.map(100, 0x40000000, [7] * 1024, thp=True)
    w.snapshot(0.0)
    plan = plan_materialization(w.host_trace())
    fam = plan.family_of(ProcKey(100, 1))
    assert fam.thp_blocks == (1, 2)
    thp_slots = fam.slot_of(np.array([0x40000000, 0x40200000], np.uint64))
    assert thp_slots.tolist() == [HPAGE_SLOTS, 2 * HPAGE_SLOTS]
    assert fam.nslots == 3 * HPAGE_SLOTS


def test_changes_become_updates_unmaps_and_exits() -> None:
    w = World()
    w.spawn(100)
    w.map(100, 0x10000, [1, 2, 3, 4])
    w.spawn(200)
    w.map(200, 0x10000, [1])
    w.snapshot(0.0)
    w.write(100, 0x11000, 9)  # in place (private frame): same frame, new content
    w.unmap(100, 0x13000, 1)
    w.exit(200)
    w.snapshot(1.0)
    w.snapshot(2.0)  # nothing changes
    plan = plan_materialization(w.host_trace())
    assert steps(plan, 1) == [("update", 100), ("exit", 200)]
    upd = step_of(plan, 1, 100)
    assert upd.write_slots.tolist() == [1]
    assert upd.write_contents() == [content_hash(9)]
    assert upd.dontneed_slots.tolist() == [3]
    assert steps(plan, 2) == []


def test_fork_then_cow_on_both_sides() -> None:
    w = World()
    w.spawn(100)
    w.map(100, 0x10000, [1, 2, 3])
    w.snapshot(0.0)
    w.fork(100, 101)
    w.snapshot(1.0)
    w.write(100, 0x10000, 5)  # parent COWs page 0
    w.write(101, 0x12000, 6)  # child COWs page 2
    w.snapshot(2.0)
    plan = plan_materialization(w.host_trace())
    fork = step_of(plan, 1, 101)
    assert (fork.action, fork.write_slots.size, fork.dontneed_slots.size) == ("fork", 0, 0)
    assert plan.registration_order(1) == [ProcKey(101, 2)]  # at fork: the parent is registered
    assert not fork.register
    assert step_of(plan, 2, 100).write_slots.tolist() == [0]
    assert step_of(plan, 2, 101).write_slots.tolist() == [2]


def test_a_child_without_shared_frames_is_a_fresh_process() -> None:
    w = World()
    w.spawn(100)
    w.map(100, 0x10000, [1])
    w.snapshot(0.0)
    w.spawn(101, ppid=100)  # e.g. exec'd: nothing shared
    w.map(101, 0x10000, [1])
    w.snapshot(1.0)
    plan = plan_materialization(w.host_trace())
    s = step_of(plan, 1, 101)
    assert (s.action, s.register) == ("spawn", True)
    assert plan.family_of(ProcKey(101, 2)) is not plan.family_of(ProcKey(100, 1))


def test_new_processes_register_in_pid_order_even_when_a_parent_comes_later() -> None:
    w = World()
    w.spawn(300)
    w.map(300, 0x10000, [1, 2])
    w.fork(300, 200)  # parent 300 (new, higher pid) forks 200 in the same snapshot
    w.spawn(250)
    w.map(250, 0x10000, [3])
    w.snapshot(0.0)
    plan = plan_materialization(w.host_trace())
    assert [k.pid for k in plan.registration_order(0)] == [200, 250, 300]
    assert steps(plan, 0) == [("spawn", 300), ("fork", 200), ("spawn", 250), ("register", 300)]


def test_a_registration_order_fork_cannot_reproduce_is_refused() -> None:
    w = World()
    w.spawn(300)
    w.map(300, 0x10000, [1])
    w.snapshot(0.0)
    w.fork(300, 200)  # registers at fork (300 is registered) ...
    w.fork(200, 50)  # ... before 50, a lower pid new in the same snapshot
    w.snapshot(1.0)
    with pytest.raises(InputDataError, match="pid 200 would join KSM before pid 50"):
        plan_materialization(w.host_trace())


def test_frames_shared_by_unrelated_processes_are_refused() -> None:
    rows = [
        {"pid": 10, "page_addr": 0x1000, "content_hash": 5, "frame": 77},
        {"pid": 20, "page_addr": 0x1000, "content_hash": 5, "frame": 77},
    ]
    with pytest.raises(
        InputDataError, match="frame 77 is mapped by pid 10 at 0x1000 and by pid 20"
    ):
        plan_materialization(flat_trace([rows]))


def test_frames_shared_at_another_address_are_refused_even_after_fork() -> None:
    rows = [
        {"pid": 10, "page_addr": 0x1000, "content_hash": 5, "frame": 77},
        {"pid": 20, "ppid": 10, "page_addr": 0x2000, "content_hash": 5, "frame": 77},
    ]
    with pytest.raises(InputDataError, match="only fork shares frames"):
        plan_materialization(flat_trace([rows]))


def test_ksm_flagged_and_swapped_rows() -> None:
    ksm = int(S.PageFlag.KSM)
    rows = [
        {"pid": 10, "page_addr": 0x1000, "content_hash": 5, "frame": 77, "flags": ksm},
        {"pid": 20, "page_addr": 0x8000, "content_hash": 5, "frame": 77, "flags": ksm},
        {
            "pid": 20,
            "page_addr": 0x9000,
            "content_hash": 6,
            "frame": 78,
            "flags": int(S.PageFlag.SWAPPED),
        },
    ]
    plan = plan_materialization(flat_trace([rows]))  # merged at capture: private pages here
    assert steps(plan, 0) == [("spawn", 10), ("spawn", 20)]
    assert step_of(plan, 0, 20).write_slots.tolist() == [0]  # the swapped page is absent
    assert plan.snapshots[0].pages == 2


def test_zero_rows_are_written_as_zero_pages() -> None:
    w = World()
    w.spawn(100)
    w.map(100, 0x10000, [0, 3, 0])
    w.snapshot(0.0)
    s = step_of(plan_materialization(w.host_trace()), 0, 100)
    assert s.write_zero.tolist() == [True, False, True]
    assert s.write_contents()[0] is None
