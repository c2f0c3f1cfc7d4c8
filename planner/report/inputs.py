"""What a review is built from, in the shape the review needs it.

The computing happens elsewhere (the replay engine, the what-if planner, the trace
summary, :mod:`planner.report.analysis`); this module only gathers the results:

* :class:`ScenarioOutcome` -- one scenario (a policy set under one knob setting): its
  steady-state numbers, its replay (timelines, per-process counters), and, when the
  what-if planner computed them, capacity gain, intervals and cross-domain figures;
* :class:`TraceFacts` -- scope and provenance of the trace;
* :class:`ReviewInputs` -- everything together, plus how to reproduce it.

Steady state means the end of the replay: the last snapshot held for the replay's settle
scans (``ReplayOptions.settle_scans``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from planner.engine.knobs import DISPLAY_ORDER

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from planner.engine.result import ReplayResult
    from planner.report.analysis import CowEstimate, CurrentState
    from planner.trace.io import HostTrace, Trace
    from planner.trace.summary import TraceSummary

#: Knobs shown in scenario names when they vary (in this order): the knob table's display order.
KNOB_ORDER = DISPLAY_ORDER


@dataclass(frozen=True)
class Interval:
    """A point estimate and its confidence interval."""

    value: float
    lo: float
    hi: float
    level: float = 0.95

    def to_dict(self) -> dict[str, float]:
        """JSON-ready dict."""
        return {"value": self.value, "lo": self.lo, "hi": self.hi, "level": self.level}


@dataclass(frozen=True)
class ProcessOutcome:
    """One process at steady state under a scenario."""

    pid: int
    registration: str  # "prctl", "madvise", "off"
    rule: str | None
    domain: str | None
    rmap_items: int
    merging_pages: int
    zero_pages: int
    profit_bytes: int

    @property
    def items_per_merging_page(self) -> float:
        """``ksm_rmap_items / ksm_merging_pages`` (inf when nothing merged but items exist)."""
        if self.merging_pages:
            return self.rmap_items / self.merging_pages
        return float("inf") if self.rmap_items else float("nan")


@dataclass(frozen=True)
class Capacity:
    """Workers per host without and with KSM, and the gain (from the what-if planner)."""

    host_mem_bytes: int
    headroom_bytes: int
    worker_bytes_without: float  # anonymous + other memory of one worker, without KSM
    worker_bytes_with: float
    workers_without: float
    workers_with: float
    gain: Interval  # fraction: 0.12 = +12 % workers per host
    limited_by: str = "memory"  # what limits the workers with KSM: "memory" or "cpu"
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Timeline:
    """A scenario over time: the regular grid and the end of every full scan."""

    grid_t_s: tuple[float, ...]
    grid_net_saved_bytes: tuple[float, ...]
    scan_t_s: tuple[float, ...]
    scan_full_scans: tuple[int, ...]
    scan_time_s: tuple[float, ...]
    scan_net_saved_bytes: tuple[float, ...]
    scan_pages_sharing: tuple[int, ...]

    @classmethod
    def of_replay(cls, res: ReplayResult) -> Timeline:
        """The timeline of one engine replay."""
        return cls(
            grid_t_s=tuple(g.t_s for g in res.grid),
            grid_net_saved_bytes=tuple(float(g.truth.net_saved_bytes) for g in res.grid),
            scan_t_s=tuple(sc.t_s for sc in res.scans),
            scan_full_scans=tuple(sc.full_scans for sc in res.scans),
            scan_time_s=tuple(sc.scan_time_s for sc in res.scans),
            scan_net_saved_bytes=tuple(float(sc.truth.net_saved_bytes) for sc in res.scans),
            scan_pages_sharing=tuple(int(sc.counters.get("pages_sharing", 0)) for sc in res.scans),
        )


@dataclass(frozen=True)
class ScenarioOutcome:
    """One scenario: a policy set under one knob setting, at steady state and over time.

    Memory is in bytes of physical frames at steady state; ``anon_bytes`` is the memory of
    the trace's pages without KSM (fork-shared frames once).
    """

    name: str
    policy_set: str
    policy_description: str
    knobs: Mapping[str, Any]
    page_size: int
    anon_bytes: int
    saved_bytes: int  # freed by KSM, before its metadata
    metadata_bytes: int  # KSM's own memory (rmap_items, stable nodes)
    ideal_saved_bytes: int  # static potential of the same (eligible) pages, last snapshot
    zero_saved_bytes: int  # part of saved_bytes that merged zero-content pages (estimate)
    time_to_s: Mapping[str, float | None]  # "50"/"90"/"99" -> seconds from the first snapshot
    cpu_s: float  # ksmd CPU over the replay
    cpu_percent: float  # ... as % of one core over the replay
    steady_cpu_percent: float  # % of one core at steady state
    pages_per_full_scan: float  # pages_scanned per full scan at steady state
    pages_skipped_per_full_scan: float
    full_scan_s: float  # duration of a full scan at steady state
    final_counters: Mapping[str, int]  # /sys/kernel/mm/ksm at the end (plus rmap_items)
    timeline: Timeline
    processes: tuple[ProcessOutcome, ...]
    cross_domain_saved_bytes: int | None = None
    domains: tuple[str, ...] = ()
    domains_merged: tuple[tuple[str, str], ...] = ()
    domain_mode: str | None = None  # "allow" | "deny" | None
    capacity: Capacity | None = None
    saving_interval: Interval | None = None  # projected saving fraction, if computed
    pareto: bool = False
    #: How much larger a full scan is on the projected host than on the traced one
    #: (mergeable pages at the projected worker count / in the trace); None: not projected.
    host_scale: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def projected_time_to_90_s(self) -> float | None:
        """Time to 90 % on the projected host: the replay's, scaled with the pages to scan."""
        t = self.time_to_s.get("90")
        return None if t is None or self.host_scale is None else t * self.host_scale

    @property
    def decisive_time_to_90_s(self) -> float | None:
        """The time to 90 % the decision uses: projected when there is a projection."""
        return (
            self.projected_time_to_90_s if self.host_scale is not None else self.time_to_s.get("90")
        )

    @classmethod
    def of_replay(
        cls,
        res: ReplayResult,
        *,
        name: str,
        policy_set: str,
        policy_description: str,
        processes: Sequence[ProcessOutcome],
        ideal_saved_frames: int,
        zero_saved_frames: int,
    ) -> ScenarioOutcome:
        """A scenario from one engine replay (steady state = the end of the replay)."""
        truth = res.final_truth
        tail = steady_scans(res)
        wall = sum(sc.scan_time_s for sc in tail)
        return cls(
            name=name,
            policy_set=policy_set,
            policy_description=policy_description,
            knobs=dict(res.knobs),
            page_size=res.page_size,
            anon_bytes=truth.frames_without_ksm * res.page_size,
            saved_bytes=truth.saved_bytes,
            metadata_bytes=truth.metadata_bytes,
            ideal_saved_bytes=ideal_saved_frames * res.page_size,
            zero_saved_bytes=min(zero_saved_frames, truth.saved_frames) * res.page_size,
            time_to_s=dict(res.cost.time_to_saving_s),
            cpu_s=res.cost.cpu_s,
            cpu_percent=res.cost.cpu_percent,
            steady_cpu_percent=100.0 * sum(sc.cpu_s for sc in tail) / wall if wall > 0 else 0.0,
            pages_per_full_scan=_per_scan(res, "pages_scanned"),
            pages_skipped_per_full_scan=_per_scan(res, "pages_skipped"),
            full_scan_s=float(np.mean([sc.scan_time_s for sc in tail])) if tail else math.nan,
            final_counters={**res.final_counters, "rmap_items": truth.rmap_items},
            timeline=Timeline.of_replay(res),
            processes=tuple(processes),
        )

    # --- derived ------------------------------------------------------------------------
    @property
    def net_saved_bytes(self) -> int:
        """Bytes freed net of KSM metadata at steady state."""
        return self.saved_bytes - self.metadata_bytes

    @property
    def net_saved_fraction(self) -> float:
        """Net saving as a share of anonymous memory without KSM."""
        return self.net_saved_bytes / self.anon_bytes if self.anon_bytes else 0.0

    @property
    def realization(self) -> float:
        """Memory KSM freed at steady state over the static ideal of the same pages."""
        return self.saved_bytes / self.ideal_saved_bytes if self.ideal_saved_bytes else math.nan

    @property
    def scans_to_90(self) -> int | None:
        """Full scans completed when 90 % of the steady-state saving is reached."""
        t90 = self.time_to_s.get("90")
        if t90 is None:
            return None
        tl = self.timeline
        return next(
            (n for t, n in zip(tl.scan_t_s, tl.scan_full_scans, strict=True) if t >= t90 - 1e-9),
            None,
        )

    @property
    def enabled(self) -> bool:
        """Whether any process is registered with KSM."""
        return any(p.registration != "off" for p in self.processes)


def steady_scans(res: ReplayResult) -> list[Any]:
    """The full scans of the steady state: those that started after the last snapshot."""
    scans = res.scans
    if not scans:
        return []
    applied = [t for t in res.snapshot_applied_s if t is not None]
    last = applied[-1] if applied else 0.0
    first = next(
        (i for i, s in enumerate(scans) if s.t_s - s.scan_time_s >= last - 1e-9), len(scans) - 1
    )
    return list(scans[first:])


def _per_scan(res: ReplayResult, counter: str) -> float:
    """A cumulative counter's increase per full scan at steady state."""
    window = steady_scans(res)
    if not window:
        return math.nan
    i = res.scans.index(window[0])
    before = res.scans[i - 1].counters.get(counter, 0) if i > 0 else 0
    return float(window[-1].counters.get(counter, 0) - before) / len(window)


def scenario_name(policy_set: str, knobs: Mapping[str, Any], varying: Sequence[str]) -> str:
    """A short unique name: the policy set and the knobs that vary across scenarios.

    Examples
    --------
    >>> scenario_name("prctl-all", {"pages_to_scan": 1000, "smart_scan": True}, ["pages_to_scan"])
    'prctl-all · pages_to_scan=1000'
    """
    parts = [policy_set]
    knob_text = " ".join(f"{k}={_knob_value(knobs[k])}" for k in varying if k in knobs)
    return f"{parts[0]} · {knob_text}" if knob_text else parts[0]


def _knob_value(v: Any) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    return str(v)


def knobs_text(knobs: Mapping[str, Any], keys: Sequence[str] = KNOB_ORDER[:4]) -> str:
    """``pages_to_scan=1000, sleep_ms=20, smart_scan=on, advisor=none``."""
    return ", ".join(f"{k}={_knob_value(knobs[k])}" for k in keys if k in knobs)


def varying_knobs(knob_sets: Sequence[Mapping[str, Any]]) -> list[str]:
    """The knobs whose value differs between scenarios, in :data:`KNOB_ORDER`."""
    keys = [k for k in KNOB_ORDER if any(k in ks for ks in knob_sets)]
    extra = sorted({k for ks in knob_sets for k in ks} - set(KNOB_ORDER))
    out = []
    for k in [*keys, *extra]:
        values = {json.dumps(ks.get(k), sort_keys=True, default=str) for ks in knob_sets}
        if len(values) > 1:
            out.append(k)
    return out


@dataclass(frozen=True)
class TraceFacts:
    """Scope and provenance of the trace a review is about."""

    path: str
    name: str
    trace_hash: str
    source: str | None
    created_by: str | None
    hosts: tuple[str, ...]
    kernel_release: str | None
    page_size: int
    hz: int | None
    thp_mode: str | None
    hash_algo: str | None
    hash_key_id: str | None
    capture: Mapping[str, Any]
    snapshots: int
    time_span_s: float
    snapshot_times_s: tuple[float, ...]
    processes: int
    pages: int
    ksm_at_capture: Mapping[str, Any]

    @classmethod
    def of(cls, trace: Trace, ht: HostTrace, summary: TraceSummary, *, name: str) -> TraceFacts:
        """Gather the facts from an opened trace, one of its hosts and its summary."""
        meta = ht.meta()
        snaps = ht.snapshots
        ksm: dict[str, Any] = {}
        if "ksm_sysfs" in snaps.column_names and snaps.num_rows:
            raw = snaps.column("ksm_sysfs")[0].as_py()
            if raw:
                try:
                    ksm = dict(json.loads(raw))
                except ValueError:
                    ksm = {}
        times = tuple(float(t) for t in ht.times_s.tolist())
        return cls(
            path=str(trace.path),
            name=name,
            trace_hash=trace.trace_hash,
            source=trace.manifest.get("source"),
            created_by=trace.manifest.get("created_by"),
            hosts=tuple(trace.hosts),
            kernel_release=meta.get("kernel_release"),
            page_size=int(meta.get("page_size") or 4096),
            hz=meta.get("hz"),
            thp_mode=meta.get("thp_mode"),
            hash_algo=meta.get("hash_algo"),
            hash_key_id=meta.get("hash_key_id"),
            capture=dict(trace.manifest.get("capture") or {}),
            snapshots=int(snaps.num_rows),
            time_span_s=(max(times) - min(times)) if times else 0.0,
            snapshot_times_s=times,
            processes=summary.processes,
            pages=summary.pages,
            ksm_at_capture=ksm,
        )


@dataclass(frozen=True)
class Observed:
    """A scenario's prediction next to what a real host's KSM did (``ksm-planner observe``)."""

    source: str  # where the recording was made
    scenario: str  # the scenario compared
    t_s: tuple[float, ...]  # seconds since the recording's first sample
    observed: Mapping[str, tuple[float | None, ...]]  # counter -> values (kernel names)
    predicted: Mapping[str, tuple[float, ...]]
    knob_differences: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    final_relative_error: float | None = None  # pages_sharing, (predicted - observed) / observed
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReviewInputs:
    """Everything a review is built from."""

    trace: TraceFacts
    summary: TraceSummary
    state: CurrentState
    cow: CowEstimate
    scenarios: tuple[ScenarioOutcome, ...]
    command: str  # the command that reproduces the review
    baseline: str | None = None  # name of the KSM-off scenario, if any
    recommended: str | None = None  # name of the recommended scenario (None: the review picks)
    cpu_budget_percent: float = 10.0  # ksmd CPU a recommendation may use (% of one core)
    observed: Observed | None = None
    validation: Mapping[str, Any] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    extrapolation: Mapping[str, Any] | None = None
    notes: tuple[str, ...] = ()

    def scenario(self, name: str) -> ScenarioOutcome:
        """The scenario called ``name``."""
        for s in self.scenarios:
            if s.name == name:
                return s
        raise KeyError(name)


__all__ = [
    "KNOB_ORDER",
    "Capacity",
    "Interval",
    "Observed",
    "ProcessOutcome",
    "ReviewInputs",
    "ScenarioOutcome",
    "Timeline",
    "TraceFacts",
    "knobs_text",
    "scenario_name",
    "varying_knobs",
]
