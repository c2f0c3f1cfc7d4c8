"""Comparisons across the scenarios of a sweep: the Pareto front, knob effects, saving range.

Each returns figures the review states in words, so that a sentence such as "the knob buys
speed with CPU, not memory" is written only when these figures say so.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from planner.whatif.result import KnobEffect, KnobGroup, SavingRange

if TYPE_CHECKING:
    from collections.abc import Sequence

    from planner.whatif.result import ScenarioResult


def pareto_flags(points: list[tuple[float, float]]) -> list[bool]:
    """Which ``(saving, cpu)`` points are on the Pareto front (more saving, less CPU).

    A point is on the front when no other point has at least its saving and at most its
    CPU with one of the two strictly better.

    Examples
    --------
    >>> pareto_flags([(10, 1), (20, 2), (15, 3), (20, 2)])
    [True, True, False, True]
    """
    out = []
    for i, (s, c) in enumerate(points):
        dominated = any(
            (s2 >= s and c2 <= c and (s2 > s or c2 < c))
            for j, (s2, c2) in enumerate(points)
            if j != i
        )
        out.append(not dominated)
    return out


def relative_range(values: Sequence[float]) -> float:
    """``(max - min) / max`` of ``values`` (0 when the largest is not positive).

    Examples
    --------
    >>> relative_range([90, 100, 95]), relative_range([0, 0]), relative_range([])
    (0.1, 0.0, 0.0)
    """
    if not values or max(values) <= 0:
        return 0.0
    return (max(values) - min(values)) / max(values)


def _numeric(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def varying_knobs(scenarios: Sequence[ScenarioResult]) -> list[str]:
    """The knobs whose value differs between scenarios, in the knobs' declaration order."""
    sets = [asdict(s.knobs_full) for s in scenarios]
    names = list(sets[0]) if sets else []
    return [k for k in names if len({repr(d[k]) for d in sets}) > 1]


def knob_effects(scenarios: Sequence[ScenarioResult]) -> tuple[KnobEffect, ...]:
    """How the scenarios that use KSM move with each numeric knob that varies.

    Scenarios are grouped by policy set, cross-domain rule and every other varying knob; in
    each group they are ordered by the knob's value.
    """
    used = [s for s in scenarios if s.enabled]
    vary = varying_knobs(used)
    out = []
    for knob in vary:
        values = [asdict(s.knobs_full)[knob] for s in used]
        if not all(_numeric(v) for v in values):
            continue
        others = [k for k in vary if k != knob]
        groups: dict[tuple[Any, ...], list[ScenarioResult]] = {}
        for s in used:
            d = asdict(s.knobs_full)
            key = (s.policy_set, s.cross_domain, *(repr(d[k]) for k in others))
            groups.setdefault(key, []).append(s)
        out.append(KnobEffect(knob, tuple(_group(knob, g) for _, g in sorted(groups.items()))))
    return tuple(out)


def _group(knob: str, members: list[ScenarioResult]) -> KnobGroup:
    members = sorted(members, key=lambda s: float(asdict(s.knobs_full)[knob]))
    t90 = [s.time_to_90_s if s.time_to_90_s is not None else math.inf for s in members]
    cpu = [s.ksmd_cpu_percent for s in members]
    return KnobGroup(
        policy_set=members[0].policy_set,
        cross_domain=members[0].cross_domain,
        scenario_ids=tuple(s.id for s in members),
        saving_spread=relative_range([float(s.net_saved_bytes) for s in members]),
        faster_with_more=all(b <= a for a, b in itertools.pairwise(t90)),
        costlier_with_more=all(b >= a for a, b in itertools.pairwise(cpu)),
    )


def saving_range(scenarios: Sequence[ScenarioResult]) -> SavingRange | None:
    """How the net saving varies within and across policy sets (``None``: none uses KSM)."""
    used = [s for s in scenarios if s.enabled]
    if not used:
        return None
    by_set: dict[tuple[str, str], list[float]] = {}
    for s in used:
        by_set.setdefault((s.policy_set, s.cross_domain), []).append(float(s.net_saved_bytes))
    best = [max(v) for v in by_set.values()]
    return SavingRange(
        lowest=min(used, key=lambda s: s.net_saved_bytes).id,
        highest=max(used, key=lambda s: s.net_saved_bytes).id,
        scenarios=len(used),
        within_sets=max(relative_range(v) for v in by_set.values()),
        across_sets=relative_range(best) if len(best) > 1 else None,
    )


__all__ = ["knob_effects", "pareto_flags", "relative_range", "saving_range", "varying_knobs"]
