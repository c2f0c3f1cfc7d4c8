"""What a review is built from: the what-if result, and the trace facts around it.

Every number of a review comes from a what-if run (:class:`~planner.whatif.WhatIfResult`:
scenarios, per-host figures, fits, knob effects, the canary comparison) or from the trace
itself (:class:`TraceFacts`, the current state and copy-on-write rate of
:mod:`planner.report.analysis`). This module only names them for the review:

* :class:`ReviewScenario` -- one scenario with the name the review gives it, the what-if's
  :class:`~planner.whatif.ScenarioResult` and its figures on the reviewed host
  (:class:`~planner.whatif.HostScenario`), read field by field;
* :class:`TraceFacts` -- scope and provenance of the trace;
* :class:`ReviewOptions` -- the options the review records;
* :class:`ReviewInputs` -- everything together, plus how to reproduce it.

A section that needs a new number reads a new field of the what-if's result types; nothing
here changes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from planner.engine.knobs import DISPLAY_ORDER

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from planner.engine.knobs import KsmKnobs
    from planner.report.analysis import CowEstimate, CurrentState
    from planner.trace.io import HostTrace, Trace
    from planner.trace.summary import TraceSummary
    from planner.whatif import HostScenario, ScenarioResult, WhatIfResult

#: Knobs shown in scenario names when they vary (in this order): the knob table's display order.
KNOB_ORDER = DISPLAY_ORDER


@dataclass(frozen=True)
class ReviewScenario:
    """One scenario as the review names it, with the what-if's figures on the reviewed host."""

    name: str  # unique, for people: the policy set and the knobs that vary
    description: str  # what the policy set does
    result: ScenarioResult  # the scenario (identity, knobs, Pareto flag)
    host: HostScenario  # every figure of the scenario on the reviewed host

    @property
    def id(self) -> str:
        """The what-if's scenario id (``s01`` ...)."""
        return self.result.id

    @property
    def policy_set(self) -> str:
        """The policy set's name."""
        return self.result.policy_set

    @property
    def knobs(self) -> KsmKnobs:
        """Every knob of the scenario's replay."""
        return self.result.knobs_full

    @property
    def knob_values(self) -> dict[str, Any]:
        """The knobs by name (for texts that list them)."""
        return asdict(self.result.knobs_full)

    @property
    def pareto(self) -> bool:
        """Whether no other scenario saves more for less ksmd CPU."""
        return self.result.pareto

    @property
    def enabled(self) -> bool:
        """Whether the policy set registers any process on the host."""
        return self.host.enabled

    @property
    def domain_mode(self) -> str | None:
        """``allow``/``deny`` merging across security domains; None with one domain."""
        return self.result.cross_domain if len(self.host.domains) > 1 else None


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
    def of(
        cls, trace: Trace, ht: HostTrace, summary: TraceSummary, *, name: str, path: str
    ) -> TraceFacts:
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
            path=path,
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
class ReviewOptions:
    """The options a review records (its appendix and ``data/review.json``)."""

    tool_version: str
    cost_profile: str
    cpu_budget_percent: float
    policy_sets: str
    grid: str
    settle_scans: int
    max_scans: int
    snapshot_alignment: str
    duration_s: float | None = None
    grid_s: float | None = None
    host_mem_bytes: int | None = None
    headroom_bytes: int | None = None
    headroom_fraction: float | None = None
    worker_other_bytes: int | None = None
    host_cpus: float | None = None
    cpu_per_worker: float | None = None

    def items(self) -> list[tuple[str, Any]]:
        """``(option, value)`` of every option given, by name."""
        pairs = [(f.name, getattr(self, f.name)) for f in fields(self)]
        return sorted((k, v) for k, v in pairs if v is not None)


@dataclass(frozen=True)
class ReviewInputs:
    """Everything a review is built from."""

    trace: TraceFacts
    summary: TraceSummary
    state: CurrentState
    cow: CowEstimate
    whatif: WhatIfResult  # the run: fits, knob effects, the canary comparison, warnings
    scenarios: tuple[ReviewScenario, ...]  # its scenarios, named, on the reviewed host
    command: str  # the command that reproduces the review
    options: ReviewOptions
    recommended: str | None = None  # name of the recommended scenario (None: the review picks)
    cpu_budget_percent: float = 10.0  # ksmd CPU a recommendation may use (% of one core)

    def scenario(self, name: str) -> ReviewScenario:
        """The scenario called ``name``."""
        for s in self.scenarios:
            if s.name == name:
                return s
        raise KeyError(name)

    def scenario_by_id(self, scenario_id: str) -> ReviewScenario:
        """The scenario of a what-if id (``s01`` ...)."""
        for s in self.scenarios:
            if s.id == scenario_id:
                return s
        raise KeyError(scenario_id)


__all__ = [
    "KNOB_ORDER",
    "ReviewInputs",
    "ReviewOptions",
    "ReviewScenario",
    "TraceFacts",
    "knobs_text",
    "varying_knobs",
]
