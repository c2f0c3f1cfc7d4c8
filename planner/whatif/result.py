"""Results of a what-if run: per scenario, per host, with timelines, fits and provenance.

Everything is a plain dataclass with ``to_dict()`` (JSON-ready); :meth:`WhatIfResult.to_frame`
gives the comparison table as a pandas DataFrame (one row per scenario) and
:meth:`WhatIfResult.timelines` the replay timelines of a scenario for plots.

Units are in the names: ``*_bytes``, ``*_s``, ``*_percent`` (0-100), ``*_cores``. Memory
figures are at steady state (the end of the replay: ``settle_scans`` full scans after the
last snapshot). "Anonymous memory" is the distinct physical frames of the trace's
processes without KSM (fork-shared frames count once).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from planner.whatif.grid import knob_label

if TYPE_CHECKING:
    import pandas as pd

    from planner.policy.model import PolicySet
    from planner.policy.resolve import MatchReport
    from planner.whatif.capacity import CapacityEstimate, CapacityInputs
    from planner.whatif.extrapolate import ExtrapolationFit, ExtrapolationSpec
    from planner.whatif.grid import KnobGrid
    from planner.whatif.observed import ObservedComparison
    from planner.whatif.tasks import ReplayOutcome

MIB = 1 << 20


@dataclass(frozen=True)
class Estimate:
    """A value with its interval (``low``/``high`` at ``confidence``)."""

    value: float
    low: float
    high: float
    confidence: float

    def to_dict(self) -> dict[str, float]:
        """JSON-ready dict."""
        return {
            "value": self.value,
            "low": self.low,
            "high": self.high,
            "confidence": self.confidence,
        }


@dataclass(frozen=True)
class ProjectedSaving:
    """The saving projected to N replicas per host (fleet extrapolation)."""

    replicas: int  # N per host
    hosts: int
    anon_bytes: float  # memory without KSM at N (all hosts)
    ideal_saved_bytes: Estimate
    net_saved_bytes: Estimate  # ideal x realization ratio - KSM metadata
    net_saved_percent: Estimate  # of anon_bytes
    replicate_ideal_bytes: tuple[float, ...] = field(default=(), repr=False)
    replicate_net_bytes: tuple[float, ...] = field(default=(), repr=False)
    replicate_anon_bytes: tuple[float, ...] = field(default=(), repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "replicas": self.replicas,
            "hosts": self.hosts,
            "anon_bytes": self.anon_bytes,
            "ideal_saved_bytes": self.ideal_saved_bytes.to_dict(),
            "net_saved_bytes": self.net_saved_bytes.to_dict(),
            "net_saved_percent": self.net_saved_percent.to_dict(),
        }


@dataclass
class HostScenario:
    """One scenario on one host."""

    host: str
    page_size: int
    anon_bytes: int
    saved_bytes: int
    metadata_bytes: int
    net_saved_bytes: int
    ideal_saved_bytes: int
    realization_ratio: float | None
    time_to_90_s: float | None
    ksmd_cpu_percent: float
    pages_scanned_per_full_scan: float | None
    pages_skipped_per_full_scan: float | None
    cross_domain_saved_bytes: int
    cross_domain_ksm_pages: int
    domain_pairs: list[dict[str, Any]]
    domains: tuple[str, ...]
    eligible_pages: int
    replays: list[ReplayOutcome]  # the replays of this scenario (one, or one per domain)
    counterfactual: list[ReplayOutcome] = field(default_factory=list)  # allow: each domain alone
    capacity: CapacityEstimate | None = None
    projected: ProjectedSaving | None = None

    @property
    def net_saved_percent(self) -> float:
        """Net saving as a percentage of anonymous memory."""
        return 100.0 * self.net_saved_bytes / self.anon_bytes if self.anon_bytes else 0.0

    def to_dict(self, *, timelines: bool = False) -> dict[str, Any]:
        """JSON-ready dict; the replays' timelines only when asked."""
        d: dict[str, Any] = {
            "host": self.host,
            "anon_bytes": self.anon_bytes,
            "saved_bytes": self.saved_bytes,
            "metadata_bytes": self.metadata_bytes,
            "net_saved_bytes": self.net_saved_bytes,
            "net_saved_percent": self.net_saved_percent,
            "ideal_saved_bytes": self.ideal_saved_bytes,
            "realization_ratio": self.realization_ratio,
            "time_to_90_s": self.time_to_90_s,
            "ksmd_cpu_percent": self.ksmd_cpu_percent,
            "pages_scanned_per_full_scan": self.pages_scanned_per_full_scan,
            "pages_skipped_per_full_scan": self.pages_skipped_per_full_scan,
            "cross_domain_saved_bytes": self.cross_domain_saved_bytes,
            "cross_domain_ksm_pages": self.cross_domain_ksm_pages,
            "domain_pairs": self.domain_pairs,
            "domains": list(self.domains),
            "eligible_pages": self.eligible_pages,
            "capacity": self.capacity.to_dict() if self.capacity else None,
            "projected": self.projected.to_dict() if self.projected else None,
            "replays": [_replay_dict(r, timelines=timelines) for r in self.replays],
            "counterfactual": [_replay_dict(r, timelines=timelines) for r in self.counterfactual],
        }
        return d


def _replay_dict(r: ReplayOutcome, *, timelines: bool) -> dict[str, Any]:
    d: dict[str, Any] = {
        "domain": r.only_domain,
        "duration_s": r.duration_s,
        "truth": r.final_truth,
        "counters": r.final_counters,
        "cost": r.cost,
        "steady_cpu_percent": r.steady_cpu_percent,
        "steady_scans": r.steady_scans,
        "pages_scanned_per_full_scan": r.pages_scanned_per_full_scan,
        "ideal_saved_frames": r.ideal_saved_frames,
        "eligible_pages": r.eligible_pages,
        "registered_processes": r.registered_processes,
        "processes": r.processes,
        "domain_pairs": r.domain_pairs,
        "elapsed_s": r.elapsed_s,
    }
    if timelines:
        d["timeline"] = r.timeline.to_dict()
    return d


@dataclass
class ScenarioResult:
    """One scenario (policy set x cross-domain rule x knobs), aggregated over the hosts."""

    id: str
    policy_set: str
    cross_domain: str
    knobs: dict[str, Any]  # the grid point (knobs on an axis)
    knobs_full: dict[str, Any]  # every knob of the replay (first host)
    hosts: list[HostScenario]
    anon_bytes: int
    saved_bytes: int
    metadata_bytes: int
    net_saved_bytes: int
    ideal_saved_bytes: int
    realization_ratio: float | None
    time_to_90_s: float | None
    ksmd_cpu_percent: float  # mean over hosts, % of one core, steady state
    ksmd_cores: float  # summed over hosts
    pages_scanned_per_full_scan: float | None  # mean over hosts
    pages_skipped_per_full_scan: float | None
    cross_domain_saved_bytes: int
    cross_domain_ksm_pages: int
    domain_pairs: list[dict[str, Any]]
    capacity: CapacityEstimate | None = None
    projected: ProjectedSaving | None = None
    pareto: bool = False
    same_replay_as: str | None = None

    @property
    def label(self) -> str:
        """``set [cross-domain] knobs`` for people."""
        return f"{self.policy_set} [{self.cross_domain}] {knob_label(self.knobs)}"

    @property
    def net_saved_percent(self) -> float:
        """Net saving as a percentage of anonymous memory (steady state)."""
        return 100.0 * self.net_saved_bytes / self.anon_bytes if self.anon_bytes else 0.0

    def row(self) -> dict[str, Any]:
        """The scenario as one flat row of the comparison table (``to_frame``/CSV)."""
        cap = self.capacity
        proj = self.projected
        row: dict[str, Any] = {
            "scenario": self.id,
            "policy_set": self.policy_set,
            "cross_domain": self.cross_domain,
            **{f"knob_{k}": v for k, v in self.knobs.items()},
            "net_saved_mib": self.net_saved_bytes / MIB,
            "net_saved_percent": self.net_saved_percent,
            "saved_mib": self.saved_bytes / MIB,
            "metadata_mib": self.metadata_bytes / MIB,
            "anon_mib": self.anon_bytes / MIB,
            "ideal_saved_mib": self.ideal_saved_bytes / MIB,
            "realization_ratio": self.realization_ratio,
            "time_to_90_s": self.time_to_90_s,
            "ksmd_cpu_percent": self.ksmd_cpu_percent,
            "pages_scanned_per_full_scan": self.pages_scanned_per_full_scan,
            "pages_skipped_per_full_scan": self.pages_skipped_per_full_scan,
            "cross_domain_saved_mib": self.cross_domain_saved_bytes / MIB,
            "cross_domain_ksm_pages": self.cross_domain_ksm_pages,
            "workers_without": cap.workers_without if cap else None,
            "workers_with": cap.workers_with if cap else None,
            "workers_with_low": cap.workers_with_interval[0] if cap else None,
            "workers_with_high": cap.workers_with_interval[1] if cap else None,
            "capacity_gain_percent": 100 * cap.gain if cap and cap.gain is not None else None,
            "capacity_gain_low_percent": 100 * cap.gain_interval[0]
            if cap and cap.gain_interval
            else None,
            "capacity_gain_high_percent": 100 * cap.gain_interval[1]
            if cap and cap.gain_interval
            else None,
            "capacity_limit": cap.limit_with if cap else None,
            "pareto": self.pareto,
            "same_replay_as": self.same_replay_as,
        }
        if proj is not None:
            row.update(
                projected_replicas=proj.replicas,
                projected_net_saved_mib=proj.net_saved_bytes.value / MIB,
                projected_net_saved_low_mib=proj.net_saved_bytes.low / MIB,
                projected_net_saved_high_mib=proj.net_saved_bytes.high / MIB,
                projected_net_saved_percent=proj.net_saved_percent.value,
            )
        return row

    def to_dict(self, *, timelines: bool = False) -> dict[str, Any]:
        """JSON-ready dict; per-host replay timelines only when asked."""
        return {
            "id": self.id,
            "label": self.label,
            "policy_set": self.policy_set,
            "cross_domain": self.cross_domain,
            "knobs": self.knobs,
            "knobs_full": self.knobs_full,
            "anon_bytes": self.anon_bytes,
            "saved_bytes": self.saved_bytes,
            "metadata_bytes": self.metadata_bytes,
            "net_saved_bytes": self.net_saved_bytes,
            "net_saved_percent": self.net_saved_percent,
            "ideal_saved_bytes": self.ideal_saved_bytes,
            "realization_ratio": self.realization_ratio,
            "time_to_90_s": self.time_to_90_s,
            "ksmd_cpu_percent": self.ksmd_cpu_percent,
            "ksmd_cores": self.ksmd_cores,
            "pages_scanned_per_full_scan": self.pages_scanned_per_full_scan,
            "pages_skipped_per_full_scan": self.pages_skipped_per_full_scan,
            "cross_domain_saved_bytes": self.cross_domain_saved_bytes,
            "cross_domain_ksm_pages": self.cross_domain_ksm_pages,
            "domain_pairs": self.domain_pairs,
            "capacity": self.capacity.to_dict() if self.capacity else None,
            "projected": self.projected.to_dict() if self.projected else None,
            "pareto": self.pareto,
            "same_replay_as": self.same_replay_as,
            "hosts": [h.to_dict(timelines=timelines) for h in self.hosts],
        }


@dataclass
class WhatIfResult:
    """Everything a what-if run computed, with its inputs and provenance."""

    trace_path: str
    trace_hash: str
    hosts: tuple[str, ...]
    scenarios: list[ScenarioResult]
    policy_sets: list[PolicySet]
    matches: list[MatchReport]
    grid: KnobGrid
    replay_options: dict[str, Any]
    capacity_inputs: CapacityInputs | None
    extrapolation: ExtrapolationSpec | None
    fits: list[ExtrapolationFit]
    provenance: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    observed: ObservedComparison | None = None
    elapsed_s: float = 0.0

    # ------------------------------------------------------------------ access

    def scenario(self, scenario_id: str) -> ScenarioResult:
        """The scenario with this id (``KeyError`` when absent)."""
        for s in self.scenarios:
            if s.id == scenario_id:
                return s
        raise KeyError(scenario_id)

    def pareto_front(self) -> list[ScenarioResult]:
        """Scenarios no other beats on both net saving (higher) and ksmd CPU (lower)."""
        return [s for s in self.scenarios if s.pareto]

    def fit(self, policy_set: str, cross_domain: str, host: str) -> ExtrapolationFit | None:
        """The extrapolation fit of a policy set on a host (``None`` when not computed)."""
        for f in self.fits:
            if f.policy_set == policy_set and f.host == host and f.cross_domain == cross_domain:
                return f
        return None

    def timelines(self, scenario_id: str, host: str | None = None) -> dict[str, pd.DataFrame]:
        """Timelines of a scenario's replays as DataFrames: ``grid``, ``scans``, ``processes``.

        Rows carry ``host`` and ``domain`` (``None`` for a replay of every domain together)
        columns, so a deny scenario's separate replays can be told apart or summed.
        """
        import pandas as pd

        scen = self.scenario(scenario_id)
        parts: dict[str, list[pd.DataFrame]] = {"grid": [], "scans": [], "processes": []}
        for h in scen.hosts:
            if host is not None and h.host != host:
                continue
            for r in h.replays:
                for name, df in r.timeline.frames().items():
                    parts[name].append(df.assign(host=h.host, domain=r.only_domain))
        return {
            k: pd.concat(v, ignore_index=True) if v else pd.DataFrame() for k, v in parts.items()
        }

    # ------------------------------------------------------------------ output

    def to_frame(self) -> pd.DataFrame:
        """The comparison table: one row per scenario (see :meth:`ScenarioResult.row`)."""
        import pandas as pd

        return pd.DataFrame([s.row() for s in self.scenarios])

    def to_csv(self) -> str:
        """The comparison table as CSV text."""
        buf = io.StringIO()
        self.to_frame().to_csv(buf, index=False, float_format="%.6g")
        return buf.getvalue()

    def to_dict(self, *, timelines: bool = False, replicates: bool = False) -> dict[str, Any]:
        """JSON-ready dict of everything (timelines and bootstrap replicates when asked)."""
        doc: dict[str, Any] = _json_safe(
            {
                "trace": {
                    "path": self.trace_path,
                    "trace_hash": self.trace_hash,
                    "hosts": list(self.hosts),
                },
                "scenarios": [s.to_dict(timelines=timelines) for s in self.scenarios],
                "pareto_front": [s.id for s in self.pareto_front()],
                "policy_sets": [p.model_dump(mode="json") for p in self.policy_sets],
                "matches": [m.to_dict() for m in self.matches],
                "grid": self.grid.to_dict(),
                "replay_options": self.replay_options,
                "capacity_inputs": self.capacity_inputs.to_dict() if self.capacity_inputs else None,
                "extrapolation": self.extrapolation.to_dict() if self.extrapolation else None,
                "fits": [f.to_dict(replicates=replicates) for f in self.fits],
                "observed": self.observed.to_dict() if self.observed else None,
                "provenance": self.provenance,
                "warnings": list(self.warnings),
                "elapsed_s": self.elapsed_s,
            }
        )
        return doc


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    item = getattr(obj, "item", None)
    if callable(item) and type(obj).__module__ == "numpy":
        return _json_safe(item())
    return obj


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


__all__ = [
    "Estimate",
    "HostScenario",
    "ProjectedSaving",
    "ScenarioResult",
    "WhatIfResult",
    "pareto_flags",
]
