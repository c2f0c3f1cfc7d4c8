"""When prctl processes registered (docs/kernel-semantics.md §2.6): before exec or inside."""

from __future__ import annotations

from planner.engine import KsmKnobs, ReplayOptions, prepare, replay
from planner.engine.registration import Registration
from planner.testing.builder import World


def _world() -> World:
    """Two workers with the same heap and the same stack contents."""
    w = World()
    for pid in (100, 101):
        w.spawn(pid, comm="worker")
        w.map(pid, 0x10000, [1, 2, 3, 4], kind="heap")
        w.map(pid, 0x7FF000000, [5, 6, 7], kind="stack")
    w.snapshot(0.0)
    return w


def _eligible(prctl_at: str) -> int:
    inp = prepare(_world().host_trace(), prctl_at=prctl_at)  # type: ignore[arg-type]
    return int(inp.snapshots[0].eligible.sum())


def test_a_launcher_prctl_leaves_the_exec_stack_out() -> None:
    assert _eligible("running") == 14
    assert _eligible("exec") == 8  # the 2 x 3 stack pages are not VM_MERGEABLE


def test_the_default_is_the_launcher_case_and_the_result_says_so() -> None:
    ht = _world().host_trace()
    knobs = KsmKnobs(pages_to_scan=100, sleep_ms=20)
    opts = ReplayOptions(settle_scans=4)
    launcher = replay(ht, knobs=knobs, options=opts)
    inside = replay(ht, knobs=knobs, options=opts, prctl_at="running")
    assert launcher.final_counters["pages_sharing"] == 4
    assert inside.final_counters["pages_sharing"] == 7
    assert "before exec" in launcher.provenance["prctl_at"]
    assert "running process" in inside.provenance["prctl_at"]


def test_madvise_policies_are_not_affected() -> None:
    def stack_only(info: object, parent: object) -> Registration:
        return Registration(mode="madvise", kinds=frozenset({"stack"}))

    for at in ("exec", "running"):
        inp = prepare(_world().host_trace(), resolver=stack_only, prctl_at=at)  # type: ignore[arg-type]
        assert int(inp.snapshots[0].eligible.sum()) == 6
