"""The conformance scenarios themselves (no kernel): traces, plans, and the checker.

The replay side of conformance is here too: the replay engines must produce the measured
counters of every scenario that a replay can express (one set of knobs, scan checkpoints).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from planner.kernel.materialize import plan_materialization
from planner.kernel.run import sysfs_knobs
from planner.testing.conformance import E1, E6_SKIPPED_SCANS, SCENARIOS, Scenario, scenario


@dataclass
class Rec:
    full_scans: int
    counters: dict[str, int]
    processes: dict[int, dict[str, int]] = field(default_factory=dict)


def e1_records(*, sharing_at_2: int = 199) -> list[Rec]:
    c1 = dict(
        full_scans=1,
        pages_scanned=300,
        pages_volatile=300,
        pages_shared=0,
        pages_sharing=0,
        pages_unshared=0,
        general_profit=-19200,
    )
    c2 = dict(
        full_scans=2,
        pages_scanned=600,
        pages_shared=1,
        pages_sharing=sharing_at_2,
        pages_unshared=100,
        pages_volatile=0,
        general_profit=795904,
    )
    c3 = {**c2, "full_scans": 3, "pages_scanned": 900, "pages_sharing": 199}
    p = {
        100: {
            "ksm_rmap_items": 300,
            "ksm_merging_pages": 200,
            "ksm_process_profit": 800000,
            "smaps_ksm_kb": 800,
        }
    }
    return [Rec(1, c1), Rec(2, c2), Rec(3, c3, p)]


@pytest.mark.parametrize("sc", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_every_scenario_builds_a_plannable_trace_with_a_valid_schedule(sc: Scenario) -> None:
    ht = sc.host_trace()
    plan = plan_materialization(ht)
    assert len(sc.snapshot_scans) == len(plan.snapshots)
    assert sc.snapshot_scans[0] == 1
    assert list(sc.snapshot_scans) == sorted(sc.snapshot_scans)
    assert sc.expects
    for e in sc.expects:
        assert (e.scan is None) != (e.snapshot is None)
        assert e.scan is None or 1 <= e.scan <= sc.scans
        assert e.source
    sysfs_knobs(sc.knobs)


def test_the_checker_accepts_the_measured_values_and_flags_a_different_one() -> None:
    good = E1.check(e1_records())
    assert good
    assert all(r.ok for r in good), [str(r) for r in good if not r.ok]
    bad = [r for r in E1.check(e1_records(sharing_at_2=198)) if not r.ok]
    assert [(r.where, r.key, r.expected, r.measured) for r in bad] == [
        ("scan 2", "pages_sharing", 199, 198)
    ]


def test_missing_records_and_kernel_only_fields() -> None:
    recs = e1_records()[:2]
    results = E1.check(recs)
    assert any(r.where == "scan 3" and r.measured is None and not r.ok for r in results)
    without = E1.check(e1_records(), kernel_only=False)
    assert not any("smaps_ksm_kb" in r.key for r in without)


def test_e6_skip_pattern_is_the_smart_scan_schedule() -> None:
    """The copied measured pattern equals the kernel's age/skip rule.

    See docs/kernel-semantics.md §7.
    """
    age, rem, skipped = 0, 0, []
    for scan in range(1, 27):
        a, age = age, min(age + 1, 255)
        if a < 3:
            continue
        if rem == 0:
            rem = 1 if a <= 3 else 2 if a <= 5 else 4 if a <= 8 else 8
            continue
        rem -= 1
        skipped.append(scan)
    assert tuple(skipped) == E6_SKIPPED_SCANS


def test_scenarios_are_found_by_name() -> None:
    assert scenario("THP").name == "THP"
    with pytest.raises(KeyError):
        scenario("E99")


# ------------------------------------------------------------------------------ the replay side


REPLAYABLE = [s for s in SCENARIOS if not s.needs_knob_changes]


@pytest.mark.parametrize("engine", ["reference", "vectorized"])
@pytest.mark.parametrize("sc", REPLAYABLE, ids=[s.name for s in REPLAYABLE])
def test_the_replay_reproduces_the_measured_counters(sc: Scenario, engine: str) -> None:
    from planner.engine import KsmKnobs, replay
    from planner.engine.options import ReplayOptions

    res = replay(
        sc.host_trace(),
        knobs=KsmKnobs(**sc.knobs, hz=250),
        options=ReplayOptions(
            snapshot_scans=sc.snapshot_scans, max_scans=sc.scans, settle_scans=sc.scans
        ),
        engine=engine,  # type: ignore[arg-type]
    )
    recs = [
        Rec(r.full_scans, r.counters, {int(p): v for p, v in r.processes.items()})
        for r in res.scans
    ]
    results = sc.check(recs, kernel_only=False)
    bad = [str(r) for r in results if not r.ok]
    assert not bad, "\n".join(bad)
