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
import re
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from planner.engine.knobs import DISPLAY_ORDER
from planner.errors import UsageProblem

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from planner.engine.knobs import KsmKnobs
    from planner.report.analysis import CurrentState
    from planner.trace.io import HostTrace, Trace
    from planner.trace.summary import TraceSummary
    from planner.whatif import HostScenario, ScenarioResult, WhatIfResult
    from planner.whatif.footprint import Sourced
    from planner.whatif.writes import CowEstimate

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
    def host_cpus(self) -> Sourced | None:
        """The planned host's CPUs (given or assumed), ``None`` without a planned host."""
        cap = self.host.capacity
        return cap.plan.host_cpus if cap is not None and cap.plan is not None else None

    @property
    def ksmd_host_share(self) -> float:
        """ksmd's steady-state CPU as a share of the planned host (of one core without one)."""
        cpus = self.host_cpus
        return self.host.ksmd_cores / (cpus.value if cpus is not None else 1.0)

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
    sampled: bool = False
    """The capture sampled the pages between snapshots (``--sample-ms``, trace format v2)."""

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
            hz=ht.hz,
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
            sampled=ht.sampled,
        )


@dataclass(frozen=True)
class ReviewGates:
    """What a recommended scenario must meet (``report --max-ksmd-cpu``, ``--max-time-to-90``,
    ``--near-best``).

    Parameters
    ----------
    max_ksmd_host_share
        ksmd's steady-state CPU as a share of the planned host's CPUs (of one core when the
        review has no planned host).
    max_time_to_90_s
        Time from switching KSM on to 90 % of the saving, on the planned host.
    near_best
        Scenarios whose expected net saving is within this share of the best count as
        equally good; the one with the least ksmd CPU of them is recommended.
    """

    max_ksmd_host_share: float = 0.02
    max_time_to_90_s: float = 600.0
    near_best: float = 0.02

    def __post_init__(self) -> None:
        if not 0 < self.max_ksmd_host_share <= 1:
            raise UsageProblem(
                f"the ksmd CPU gate {100 * self.max_ksmd_host_share:g} % of the host is out of "
                "bounds",
                hint="give a share of the host in (0 %, 100 %], e.g. --max-ksmd-cpu 2%",
            )
        if not self.max_time_to_90_s > 0:
            raise UsageProblem(
                "the time-to-90 % gate must be positive", hint="e.g. --max-time-to-90 10min"
            )
        if not 0 <= self.near_best < 1:
            raise UsageProblem(
                f"the near-best margin {100 * self.near_best:g} % is out of bounds",
                hint="give a share in [0 %, 100 %), e.g. --near-best 2%",
            )


def parse_share(text: str, *, option: str) -> float:
    """A share from ``2%`` (or ``0.02``).

    Examples
    --------
    >>> parse_share("2%", option="--max-ksmd-cpu"), parse_share("0.5", option="--near-best")
    (0.02, 0.5)
    """
    t = str(text).strip()
    try:
        return float(t[:-1]) / 100.0 if t.endswith("%") else float(t)
    except ValueError:
        raise UsageProblem(f"{option} {text!r} is not a share", hint=f"e.g. {option} 2%") from None


_DURATION_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str, *, option: str) -> float:
    """Seconds of ``600``, ``90s``, ``10min`` or ``1.5h``.

    Examples
    --------
    >>> parse_duration("10min", option="--max-time-to-90"), parse_duration("1.5h", option="x")
    (600.0, 5400.0)
    """
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([a-z]*)\s*", str(text).lower())
    if not m or m.group(2) not in _DURATION_UNITS:
        raise UsageProblem(
            f"{option} {text!r} is not a duration", hint=f"e.g. {option} 10min (s, min, h)"
        )
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


@dataclass(frozen=True)
class ReviewOptions:
    """The options a review records (its appendix and ``data/review.json``)."""

    tool_version: str
    cost_profile: str
    max_ksmd_host_share: float
    max_time_to_90_s: float
    near_best: float
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
    worker_file_bytes: int | None = None
    worker_shmem_bytes: int | None = None
    worker_page_tables_bytes: int | None = None
    worker_other_bytes: int | None = None
    base_other_bytes: int | None = None
    host_cpus: float | None = None
    cpu_per_worker: float | None = None
    #: the CPU the cost profile was measured on (docs/busy-host.md §7), if it says
    cost_profile_cpu: str | None = None

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
    gates: ReviewGates = ReviewGates()  # what a recommendation must meet
    policy_file: str | None = None  # the --policies file, as given (for the replay commands)

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
    "ReviewGates",
    "ReviewInputs",
    "ReviewOptions",
    "ReviewScenario",
    "TraceFacts",
    "knobs_text",
    "parse_duration",
    "parse_share",
    "varying_knobs",
]
