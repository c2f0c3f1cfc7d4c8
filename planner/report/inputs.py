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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from planner.engine.result import ReplayResult
    from planner.report.analysis import CowEstimate, CurrentState
    from planner.trace.io import HostTrace, Trace
    from planner.trace.summary import TraceSummary

#: Knobs shown in scenario names when they vary (in this order).
KNOB_ORDER = (
    "pages_to_scan",
    "sleep_ms",
    "smart_scan",
    "advisor",
    "max_page_sharing",
    "use_zero_pages",
    "advisor_max_cpu",
    "advisor_target_scan_time_s",
)


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
    worker_bytes_without: float
    worker_bytes_with: float
    workers_without: float
    workers_with: float
    gain: Interval  # fraction: 0.12 = +12 % workers per host
    replicas: int | None = None
    limited_by: str = "memory"
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ScenarioOutcome:
    """One scenario: a policy set under one knob setting, at steady state and over time."""

    name: str
    policy_set: str
    policy_description: str
    knobs: Mapping[str, Any]
    replay: ReplayResult
    processes: tuple[ProcessOutcome, ...]
    static_ideal_frames: int  # static potential of the same pages (frame-aware), last snapshot
    zero_saved_frames: int  # frames freed by merging zero-content pages (estimate)
    cross_domain_saved_bytes: int | None = None
    domains: tuple[str, ...] = ()
    domains_merged: tuple[tuple[str, str], ...] = ()
    domain_mode: str | None = None  # "allow" | "deny" | None
    capacity: Capacity | None = None
    saving_interval: Interval | None = None  # extrapolated saving fraction, if computed
    pareto: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    # --- steady state -------------------------------------------------------------------
    @property
    def frames_without_ksm(self) -> int:
        """Physical frames of anonymous memory without KSM (fork-shared frames once)."""
        return self.replay.final_truth.frames_without_ksm

    @property
    def page_size(self) -> int:
        """Page size of the trace."""
        return self.replay.page_size

    @property
    def anon_bytes(self) -> int:
        """Anonymous memory without KSM (bytes of physical frames)."""
        return self.frames_without_ksm * self.page_size

    @property
    def saved_bytes(self) -> int:
        """Bytes KSM freed at steady state, before its metadata."""
        return self.replay.final_truth.saved_bytes

    @property
    def metadata_bytes(self) -> int:
        """KSM's own memory at steady state (rmap_items and stable nodes)."""
        return self.replay.final_truth.metadata_bytes

    @property
    def net_saved_bytes(self) -> int:
        """Bytes freed net of KSM metadata at steady state."""
        return self.replay.final_truth.net_saved_bytes

    @property
    def net_saved_fraction(self) -> float:
        """Net saving as a share of anonymous memory without KSM."""
        return self.net_saved_bytes / self.anon_bytes if self.anon_bytes else 0.0

    @property
    def realization(self) -> float:
        """Frames KSM freed at steady state over the static ideal of the same pages."""
        if not self.static_ideal_frames:
            return float("nan")
        return self.replay.final_truth.saved_frames / self.static_ideal_frames

    @property
    def time_to_s(self) -> Mapping[str, float | None]:
        """Seconds from the first snapshot to 50/90/99 % of the steady-state saving."""
        return self.replay.cost.time_to_saving_s

    @property
    def cpu_percent(self) -> float:
        """ksmd CPU over the whole replay, % of one core."""
        return self.replay.cost.cpu_percent

    @property
    def steady_cpu_percent(self) -> float:
        """ksmd CPU over the last quarter of the full scans (at least one), % of one core."""
        scans = self.replay.scans
        if not scans:
            return 0.0
        tail = scans[-max(1, len(scans) // 4) :]
        wall = sum(s.scan_time_s for s in tail)
        return 100.0 * sum(s.cpu_s for s in tail) / wall if wall > 0 else 0.0

    @property
    def pages_per_full_scan(self) -> float:
        """Pages scanned per full scan at steady state (mean over the last quarter)."""
        return _per_scan(self.replay, "pages_scanned")

    @property
    def pages_skipped_per_full_scan(self) -> float:
        """Pages smart scan skipped per full scan at steady state."""
        return _per_scan(self.replay, "pages_skipped")

    @property
    def full_scan_s(self) -> float:
        """Duration of a full scan at steady state (mean over the last quarter), seconds."""
        scans = self.replay.scans
        if not scans:
            return float("nan")
        tail = scans[-max(1, len(scans) // 4) :]
        return float(np.mean([s.scan_time_s for s in tail]))

    @property
    def scans_to_90(self) -> int | None:
        """Full scans completed when 90 % of the steady-state saving is reached."""
        t90 = self.time_to_s.get("90")
        if t90 is None:
            return None
        return next((s.full_scans for s in self.replay.scans if s.t_s >= t90 - 1e-9), None)

    @property
    def enabled(self) -> bool:
        """Whether any process is registered with KSM."""
        return any(p.registration != "off" for p in self.processes)


def _per_scan(res: ReplayResult, counter: str) -> float:
    scans = res.scans
    if len(scans) < 2:
        return float(scans[0].counters.get(counter, 0)) if scans else float("nan")
    k = max(1, (len(scans) - 1) // 4)
    a, b = scans[-k - 1], scans[-1]
    return (b.counters.get(counter, 0) - a.counters.get(counter, 0)) / (b.full_scans - a.full_scans)


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
    """An observed KSM timeline (``ksm-planner observe``), aligned to the replay's clock."""

    source: str
    t_s: tuple[float, ...]
    counters: Mapping[str, tuple[float, ...]]  # e.g. pages_sharing, general_profit
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
    "TraceFacts",
    "knobs_text",
    "scenario_name",
    "varying_knobs",
]
