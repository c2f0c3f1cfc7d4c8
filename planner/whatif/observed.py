"""Predicted against observed: a scenario's replay next to a recording of the real KSM.

A recording (``ksm-planner observe``, :func:`planner.trace.recording.read_observed`) holds
the ``/sys/kernel/mm/ksm`` counters of a canary host over time. The comparison takes the
scenario whose knobs match the recording's knobs (or the one asked for), samples the
replay's counters at the recording's times and reports both side by side.

Time zero of the recording is its first sample and time zero of the replay is the trace's
first snapshot: start ``observe`` when the traced workload starts (or when KSM is enabled
for it) for the two to line up.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from planner.engine.knobs import knobs_from_sysfs, spec
from planner.errors import UsageProblem

if TYPE_CHECKING:
    import os
    from collections.abc import Mapping

    import pandas as pd

    from planner.trace.recording import ObservedTimeline
    from planner.whatif.result import HostScenario, ScenarioResult
    from planner.whatif.writes import CowEstimate

#: Counters compared (kernel names).
COMPARED = ("pages_sharing", "pages_shared", "general_profit")

#: Full scans a canary must record before its second half stands for KSM's steady state:
#: merging ends with the second scan of a page, its writes then break and re-merge at later
#: ones (docs/live-validation.md, "The sample traces recaptured": a canary that ended within
#: its second scan predicted a longer one's level 11.8 % low).
MIN_CANARY_FULL_SCANS = 4

#: Recording knob (sysfs name) -> replay knob, for the main knobs a deployment always states
#: (the names from the knob table, :mod:`planner.engine.knobs`).
_MAIN_KNOBS = ("pages_to_scan", "sleep_ms", "smart_scan", "advisor", "max_page_sharing")
SYSFS_KNOBS = {str(spec(n).sysfs): n for n in (*_MAIN_KNOBS, "use_zero_pages")}


def load_observed(path: str | os.PathLike[str]) -> ObservedTimeline:
    """Read a recording of ``ksm-planner observe`` (see ``planner.trace.recording``)."""
    from planner.trace.recording import read_observed

    return read_observed(path)


def observed_knobs(obs: ObservedTimeline) -> dict[str, Any]:
    """The recording's knobs at its start, under the replay's knob names (every knob of the
    knob table the recording holds: :func:`planner.engine.knobs.knobs_from_sysfs`)."""
    return knobs_from_sysfs(dict(obs.meta.get("knobs_at_start") or {}))


def knob_differences(
    knobs: Mapping[str, Any], observed: Mapping[str, Any]
) -> dict[str, tuple[Any, Any]]:
    """Knobs that differ: ``{name: (observed, scenario)}``.

    ``pages_to_scan`` is ignored when the advisor runs on both sides (it sets it).
    """
    out: dict[str, tuple[Any, Any]] = {}
    for k, v in observed.items():
        if (
            k == "pages_to_scan"
            and observed.get("advisor") == "scan-time"
            and knobs.get("advisor") == "scan-time"
        ):
            continue
        if k in knobs and knobs[k] != v:
            out[k] = (v, knobs[k])
    return out


@dataclass(frozen=True)
class CounterSeries:
    """The compared counters over time (kernel names); ``None`` where a sample lacks one."""

    pages_sharing: tuple[float | None, ...] = ()
    pages_shared: tuple[float | None, ...] = ()
    general_profit: tuple[float | None, ...] = ()

    def items(self) -> list[tuple[str, tuple[float | None, ...]]]:
        """``(counter, values)`` pairs, in :data:`COMPARED` order."""
        return [(c, getattr(self, c)) for c in COMPARED]


@dataclass
class ObservedComparison:
    """A scenario's replayed counters at the recording's sample times, and how they differ.

    ``observed`` holds what the real KSM did (``None`` where the recording lacks a value),
    ``predicted`` the replay of scenario ``scenario_id`` sampled at the same times.
    """

    __json_properties__: ClassVar[tuple[str, ...]] = (
        "final_relative_error",
        "mean_relative_gap",
        "first_merge_observed_s",
        "first_merge_predicted_s",
    )

    scenario_id: str
    host: str
    source: str  # where the recording was made ("host NAME")
    knobs_match: bool
    knob_differences: dict[str, tuple[object, object]]  # knob -> (observed, scenario)
    t_s: tuple[float, ...]
    observed: CounterSeries
    predicted: CounterSeries
    notes: list[str] = field(default_factory=list)
    #: What the canary measured over the second half of the recording, next to the model:
    #: ksmd's CPU (% of one core, from its runtime), copy-on-write breaks of KSM pages per
    #: second (``cow_ksm``) and the wall time of a full scan
    rates: CanaryRates | None = None

    @property
    def final_relative_error(self) -> float | None:
        """``pages_sharing``: (predicted - observed) / observed at the last sample with a value."""
        obs = [v for v in self.observed.pages_sharing if v is not None]
        pred = self.predicted.pages_sharing
        if not obs or not pred or obs[-1] == 0 or pred[-1] is None:
            return None
        return (pred[-1] - obs[-1]) / obs[-1]

    def _pairs(self) -> list[tuple[float, float, float]] | None:
        o = self.observed.pages_sharing
        p = self.predicted.pages_sharing
        if not self.t_s or len(o) != len(self.t_s) or len(p) != len(self.t_s):
            return None
        return [
            (t, math.nan if a is None else float(a), math.nan if b is None else float(b))
            for t, a, b in zip(self.t_s, o, p, strict=True)
        ]

    @property
    def mean_relative_gap(self) -> float | None:
        """``pages_sharing``: mean (predicted - observed) / observed over the second half of
        the recording (samples where the observed value is positive)."""
        pairs = self._pairs()
        if pairs is None:
            return None
        end = self.t_s[-1]
        half = [(p - o) / o for t, o, p in pairs if t >= end / 2 and o > 0 and math.isfinite(o)]
        return sum(half) / len(half) if half else None

    @property
    def first_merge_observed_s(self) -> float | None:
        """When ``pages_sharing`` first rose above 0 on the host."""
        pairs = self._pairs()
        return next((t for t, o, _ in pairs if o > 0), None) if pairs else None

    @property
    def first_merge_predicted_s(self) -> float | None:
        """When ``pages_sharing`` first rose above 0 in the replay."""
        pairs = self._pairs()
        return next((t for t, _, p in pairs if p > 0), None) if pairs else None

    def to_frame(self) -> Any:
        """``t_s`` with ``observed_<counter>`` and ``predicted_<counter>`` columns."""
        import pandas as pd

        cols: dict[str, Any] = {"t_s": list(self.t_s)}
        for (c, o), (_, p) in zip(self.observed.items(), self.predicted.items(), strict=True):
            cols[f"observed_{c}"] = list(o)
            cols[f"predicted_{c}"] = list(p)
        return pd.DataFrame(cols)


@dataclass(frozen=True)
class CanaryRates:
    """Rates a canary measured over the second half of its recording, and the model's.

    ``None`` where the recording lacks the counter. The model's copy-on-write rates are the
    trace's estimate (writes to mergeable pages between snapshots, a lower bound on writes)
    and, where the replay modelled writes, the breaks of the compared scenario's replay.
    Every measured rate is read through the recording's reader
    (:meth:`planner.trace.recording.ObservedTimeline.counter_rate` and, for a recording in
    canary mode, :meth:`~planner.trace.recording.ObservedTimeline.unmerges_per_s`).
    """

    window_s: float
    observed_ksmd_cpu_percent: float | None
    predicted_ksmd_cpu_percent: float
    observed_cow_per_s: float | None
    predicted_cow_per_s: float | None
    observed_full_scan_s: float | None
    predicted_full_scan_s: float | None
    observed_pages_sharing: float | None  # mean over the window
    #: The compared scenario's replay over the same window of its own time: merges its
    #: writes broke per second (with the canary's writes when the replay took them); None: no
    #: writes replayed, or the replay ended before the window
    replayed_cow_per_s: float | None = None
    #: The compared scenario's replay at steady state: breaks per second per page it holds
    #: merged (:attr:`HostScenario.modelled_cow_per_merged_page_per_s`); None: no writes
    replayed_cow_per_merged_page_per_s: float | None = None
    #: Canary mode (``observe --ksm-pages``): merges lost per second on the sampled
    #: processes, by kind (``unmerged_same_content``, ``unmerged_changed``, ``unmerged``,
    #: ``unmapped``); ``None`` for a recording of the counters only
    observed_unmerges_per_s: dict[str, float] | None = None

    @property
    def cow_per_merged_page_per_s(self) -> float | None:
        """Copy-on-write breaks per second per page merged on the canary."""
        if self.observed_cow_per_s is None or not self.observed_pages_sharing:
            return None
        return self.observed_cow_per_s / self.observed_pages_sharing


def canary_rates(
    obs: ObservedTimeline, scen: ScenarioResult, writes: CowEstimate | None
) -> CanaryRates:
    """The canary's measured rates over the second half of its recording, and the model's."""
    host = scen.hosts[0]
    t = obs.counters.index.to_numpy(dtype="float64")
    since_s = float(t[-1]) / 2 if t.size else None
    window = t[t >= since_s] if since_s is not None else t
    scans = obs.counter_rate("full_scans", since_s=since_s)
    runtime_ns = obs.counter_rate("ksmd_runtime_ns", since_s=since_s)
    sharing = None
    if "pages_sharing" in obs.counters.columns and window.size:
        v = obs.counters["pages_sharing"].astype("float64").to_numpy()
        sharing = float(np.nanmean(v[t >= window[0]]))
    unmerges = None
    if obs.canary is not None:
        unmerges = {k: v for k, v in obs.unmerges_per_s(since_s=since_s).items() if k != "cow_ksm"}
    return CanaryRates(
        window_s=float(window[-1] - window[0]) if window.size else 0.0,
        observed_ksmd_cpu_percent=None if runtime_ns is None else 100.0 * runtime_ns / 1e9,
        predicted_ksmd_cpu_percent=host.ksmd_cpu_percent,
        observed_cow_per_s=obs.counter_rate("cow_ksm", since_s=since_s),
        predicted_cow_per_s=writes.breaks_per_s if writes is not None else None,
        observed_full_scan_s=1.0 / scans if scans else None,
        predicted_full_scan_s=host.full_scan_s,
        observed_pages_sharing=sharing,
        observed_unmerges_per_s=unmerges,
        replayed_cow_per_s=_replayed_rate(host, window),
        replayed_cow_per_merged_page_per_s=host.modelled_cow_per_merged_page_per_s,
    )


def _replayed_rate(host: HostScenario, window: np.ndarray[Any, Any]) -> float | None:
    """Merges the replay's writes broke per second over ``window`` (the replay's time since
    its first snapshot, aligned with the recording's as in :func:`compare_observed`)."""
    if host.modelled_cow_breaks_per_s is None or window.size < 2:
        return None
    grid = host.timeline.grid
    if not grid.cow_breaks:
        return None
    t0, t1 = float(window[0]), float(window[-1])
    if t1 <= t0 or grid.t_s[-1] < t1:
        return None
    start, end = _step(list(grid.t_s), list(grid.cow_breaks), np.array([t0, t1]))
    return float(end - start) / (t1 - t0)


def choose_scenario(
    scenarios: list[ScenarioResult], obs_knobs: dict[str, Any], scenario_id: str | None = None
) -> tuple[ScenarioResult, dict[str, tuple[Any, Any]]]:
    """The scenario to compare with: ``scenario_id``, else the first whose knobs match the
    recording's (preferring sets that enable KSM), else the one saving the most."""
    if not scenarios:
        raise UsageProblem("no scenario to compare the recording with")
    if scenario_id is not None:
        for s in scenarios:
            if s.id == scenario_id:
                return s, knob_differences(asdict(s.knobs_full), obs_knobs)
        raise UsageProblem(
            f"no scenario {scenario_id!r}", hint="use an id of the what-if table (s01, ...)"
        )
    matching = [s for s in scenarios if not knob_differences(asdict(s.knobs_full), obs_knobs)]
    enabled = [s for s in matching if s.saved_bytes > 0 or s.ksmd_cores > 0]
    if enabled or matching:
        s = (enabled or matching)[0]
        return s, {}
    best = max(scenarios, key=lambda s: s.net_saved_bytes)
    return best, knob_differences(asdict(best.knobs_full), obs_knobs)


def _step(
    times: list[float], values: list[float], at: np.ndarray[Any, Any]
) -> np.ndarray[Any, Any]:
    if not times:
        return np.zeros(at.size)
    t = np.asarray(times, dtype=float)
    v = np.asarray(values, dtype=float)
    idx = np.searchsorted(t, at, side="right") - 1
    return np.where(idx >= 0, v[np.clip(idx, 0, v.size - 1)], 0.0)


def short_recording_note(counters: pd.DataFrame, t_s: np.ndarray[Any, Any]) -> str | None:
    """A note where the recording ended before ksmd finished :data:`MIN_CANARY_FULL_SCANS`
    full scans (None otherwise, and where it lacks ``full_scans``)."""
    if "full_scans" not in counters.columns or t_s.size < 2:
        return None
    scans = counters["full_scans"].astype("float64").to_numpy()
    scans = scans[np.isfinite(scans)]
    if scans.size < 2:
        return None
    done = int(scans[-1] - scans[0])
    if done >= MIN_CANARY_FULL_SCANS:
        return None
    span_s = float(t_s[-1] - t_s[0])
    needed = f" (about {MIN_CANARY_FULL_SCANS * span_s / done:.0f} s at its knobs)" if done else ""
    return (
        f"the recording ended after {done} full scan{'s' if done != 1 else ''} of ksmd: its "
        "second half is still KSM's first merging, so its level and the writes it saw are a "
        "ramp's, not the steady state the replay is scaled to; record a canary of at least "
        f"{MIN_CANARY_FULL_SCANS} full scans{needed}"
    )


def _source(obs: ObservedTimeline) -> str:
    """Where a recording was made, as the review names it: ``host NAME``."""
    prov = dict(obs.meta.get("provenance") or {})
    host = prov.get("host") or dict(obs.meta.get("host") or {}).get("host") or "?"
    return f"host {host}"


def compare_observed(
    obs: ObservedTimeline,
    scenarios: list[ScenarioResult],
    *,
    scenario_id: str | None = None,
    writes: Mapping[str, CowEstimate] | None = None,
) -> ObservedComparison:
    """Compare a recording with the replay of one scenario (see the module docstring).

    ``writes`` (the trace's copy-on-write estimate per host) is set next to the canary's
    measured ``cow_ksm`` rate.
    """
    knobs = observed_knobs(obs)
    scen, diffs = choose_scenario(scenarios, knobs, scenario_id)
    host = scen.hosts[0]
    counters = obs.counters
    t = np.asarray(
        counters.index.to_numpy(dtype=float) if counters.index.name == "t_s" else counters["t_s"],
        dtype=float,
    )
    grid = host.timeline.grid
    observed: dict[str, tuple[float | None, ...]] = {}
    predicted: dict[str, tuple[float | None, ...]] = {}
    for c in COMPARED:
        observed[c] = (
            tuple(None if v != v else float(v) for v in counters[c].astype("float64").tolist())
            if c in counters.columns
            else (None,) * t.size
        )
        predicted[c] = tuple(_step(list(grid.t_s), list(getattr(grid, c)), t).tolist())
    notes = [n for n in [short_recording_note(counters, t)] if n is not None]
    if len(scen.hosts) > 1:
        notes.append(f"the recording is compared with host {host.host} of {len(scen.hosts)}")
    if diffs:
        notes.append(
            "no scenario has the recording's knobs: "
            + ", ".join(f"{k} observed {a} vs {b}" for k, (a, b) in diffs.items())
            + "; the model's error is not taken from this recording (the published runs "
            "stand in): add the recording's knobs to the grid"
        )
    return ObservedComparison(
        scenario_id=scen.id,
        host=host.host,
        source=_source(obs),
        knobs_match=not diffs,
        knob_differences=diffs,
        t_s=tuple(float(x) for x in t),
        observed=CounterSeries(**observed),
        predicted=CounterSeries(**predicted),
        notes=notes,
        rates=canary_rates(obs, scen, (writes or {}).get(host.host)),
    )


__all__ = [
    "COMPARED",
    "SYSFS_KNOBS",
    "CanaryRates",
    "CounterSeries",
    "ObservedComparison",
    "canary_rates",
    "choose_scenario",
    "compare_observed",
    "load_observed",
    "observed_knobs",
    "short_recording_note",
]
