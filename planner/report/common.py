"""Small helpers the review's sections share: wording of times, rates and intervals, colours,
scenario labels. They format; they compute nothing."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from planner.report import charts as C
from planner.report import fmt as F
from planner.report.inputs import knobs_text, varying_knobs

if TYPE_CHECKING:
    from collections.abc import Sequence

    from planner.report.inputs import ReviewInputs, ReviewScenario
    from planner.whatif.capacity import CapacityEstimate
    from planner.whatif.extrapolate import ExtrapolationFit
    from planner.whatif.observed import ObservedComparison

#: What each source of uncertainty is, in words (planner.whatif.uncertainty).
SOURCE_WORDS = {
    "sampling": "which workers happened to be traced",
    "model": "the model's measured error against the real KSM",
    "configuration": "the inputs that were assumed rather than measured",
    "time": "the traced window",
    "combined": "all of them together",
}


def t(v: float | None) -> str:
    """A duration, or ``never``."""
    return F.seconds(v) if v is not None else "never"


def rate(per_s: float | None) -> str:
    """A rate with as many decimals as it needs: ``117``, ``2.4``, ``0.15``."""
    if per_s is None or not math.isfinite(per_s):
        return F.NA
    return F.fixed(per_s, 0 if per_s >= 10 else 1 if per_s >= 1 else 2)


def interval_text(cap: CapacityEstimate) -> str:
    """``38.3 % – 47.2 %`` of a capacity gain (``n/a`` without an interval)."""
    lo, hi = cap.gain_interval or (None, None)
    return F.interval(lo, hi, F.pct)


def signed_pct(fraction: float | None) -> str:
    """``+41.7 %`` / ``−0.6 %`` / ``0.0 %`` (no sign for no change)."""
    if fraction is None or not math.isfinite(fraction):
        return F.NA
    text = F.pct(fraction)
    return text if text.startswith("-") or fraction == 0 else f"+{text}"


def more_workers(gain: float | None) -> str:
    """``41.7 % more workers``, ``0.6 % fewer workers``, ``no more workers``."""
    if gain is None or not math.isfinite(gain):
        return "an unknown number of workers"
    if F.pct(abs(gain)) == F.pct(0.0):
        return "no more workers"
    return f"{F.pct(abs(gain))} {'more' if gain > 0 else 'fewer'} workers"


def colors(scenarios: Sequence[ReviewScenario]) -> dict[str, str]:
    """One colour per policy set, in order of appearance."""
    out: dict[str, str] = {}
    for s in scenarios:
        if s.enabled and s.policy_set not in out:
            out[s.policy_set] = C.PALETTE[len(out) % len(C.PALETTE)]
    for s in scenarios:
        out.setdefault(s.policy_set, C.NEUTRAL)
    return out


def vary(inputs: ReviewInputs) -> list[str]:
    """The knobs that differ between the scenarios, in display order."""
    return varying_knobs([s.knob_values for s in inputs.scenarios])


def knob_label(s: ReviewScenario, varying: Sequence[str]) -> str:
    """The knobs of a scenario that vary across the review."""
    values = s.knob_values
    keys = [k for k in varying if k in values] or ["pages_to_scan", "sleep_ms"]
    return knobs_text(values, keys)


def fit_of(inputs: ReviewInputs, s: ReviewScenario | None) -> ExtrapolationFit | None:
    """The growth fit behind a scenario (or, without one, the first fit under which
    anything merges)."""
    if s is not None and s.host.fit is not None:
        return s.host.fit
    return next((f for f in inputs.whatif.fits if any(f.observed.ideal_saved)), None)


def observed_name(inputs: ReviewInputs, obs: ObservedComparison) -> str:
    """The review's name of the scenario a canary was compared with."""
    try:
        return inputs.scenario_by_id(obs.scenario_id).name
    except KeyError:
        return obs.scenario_id


def share_of_host(s: ReviewScenario) -> str:
    """ksmd's CPU as a share of the planned host: ``1.0 % of the host`` (``of one core``)."""
    cpus = s.host_cpus
    if cpus is None:
        return f"{F.pct(s.ksmd_host_share)} of one core"
    return f"{F.pct(s.ksmd_host_share)} of the host"


def cpus_text(s: ReviewScenario) -> str:
    """``4 CPUs, assumed`` / ``16 CPUs, given`` / ``one core``."""
    cpus = s.host_cpus
    if cpus is None:
        return "no planned host: read against one core"
    return f"{F.fixed(cpus.value, 0 if cpus.value >= 10 else 1)} CPUs, {cpus.source}"


__all__ = [
    "SOURCE_WORDS",
    "colors",
    "cpus_text",
    "fit_of",
    "interval_text",
    "knob_label",
    "more_workers",
    "observed_name",
    "rate",
    "share_of_host",
    "signed_pct",
    "t",
    "vary",
]
