"""Results of a what-if run: per scenario, per host, with timelines, fits and provenance.

Every figure a report shows is a field or a property of these types, computed once by the
what-if run (:mod:`planner.whatif.run`); a review only renders them. They are plain
dataclasses: :func:`planner.jsonable.to_jsonable` writes any of them as JSON (timelines
with ``include={"timelines"}``, bootstrap replicates with ``"replicates"``);
:meth:`WhatIfResult.to_frame` gives the comparison table (one row per scenario).

Units are in the names: ``*_bytes``, ``*_s``, ``*_percent`` (0-100), ``*_fraction``
(0-1), ``*_cores``. "Steady state" is defined once, in :mod:`planner.whatif.outcome`:
memory at the end of the replay (``settle_scans`` full scans after the last snapshot),
ksmd's CPU over the full scans that started after the last snapshot, sleeps included.
"Anonymous memory" is the distinct physical frames of the trace's processes without KSM
(fork-shared frames count once).

Three kinds of saving, each with its own name:

* ``saved_bytes`` -- what the replay freed: the truth of the model at steady state;
* ``policy_ideal_saved_bytes`` -- what an ideal KSM would free under the same policy at the
  last snapshot (:func:`planner.whatif.extrapolate.policy_ideal_saved_frames`: every
  duplicate among the pages the policy makes mergeable merged at once); the realization
  ratio is the first over this one;
* the *static ideal* of the trace (every duplicate page of every process merged, whatever
  the policy: :attr:`planner.report.analysis.CurrentState.static_ideal_saved_bytes`), the
  upper bound ``ksm-planner info`` reports.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from planner.jsonable import detail, skip
from planner.whatif.grid import knob_label
from planner.whatif.uncertainty import TimeSpread

if TYPE_CHECKING:
    import pandas as pd

    from planner.engine.knobs import KsmKnobs
    from planner.engine.timing import HostLoad
    from planner.policy.model import PolicySet
    from planner.policy.resolve import MatchReport
    from planner.whatif.capacity import CapacityEstimate, CapacityInputs
    from planner.whatif.extrapolate import ExtrapolationFit, ExtrapolationSpec
    from planner.whatif.grid import KnobGrid
    from planner.whatif.observed import ObservedComparison
    from planner.whatif.outcome import (
        DomainPair,
        KsmCounters,
        ProcessOutcome,
        ReplayOutcome,
        Timeline,
    )
    from planner.whatif.uncertainty import ModelError
    from planner.whatif.writes import CowEstimate

MIB = 1 << 20


@dataclass(frozen=True)
class Estimate:
    """A value with its interval (``low``/``high`` at ``confidence``)."""

    value: float
    low: float
    high: float
    confidence: float

    def scaled(self, factor: float) -> Estimate:
        """The same estimate in another unit (``0.01``: percent to fraction)."""
        return Estimate(self.value * factor, self.low * factor, self.high * factor, self.confidence)


@dataclass(frozen=True)
class ProjectedSaving:
    """The saving projected to N replicas per host (fleet extrapolation)."""

    __json_properties__: ClassVar[tuple[str, ...]] = ()

    replicas: int  # N per host
    hosts: int
    anon_bytes: float  # memory without KSM at N (all hosts)
    ideal_saved_bytes: Estimate  # the policy ideal at N
    net_saved_bytes: Estimate  # ideal x realization ratio - KSM metadata
    net_saved_percent: Estimate  # of anon_bytes
    replicate_ideal_bytes: tuple[float, ...] = field(default=(), metadata=detail("replicates"))
    replicate_net_bytes: tuple[float, ...] = field(default=(), metadata=detail("replicates"))
    replicate_anon_bytes: tuple[float, ...] = field(default=(), metadata=detail("replicates"))

    @property
    def net_saved_fraction(self) -> Estimate:
        """The net saving as a fraction of the anonymous memory at N."""
        return self.net_saved_percent.scaled(0.01)


@dataclass(frozen=True)
class DomainResult:
    """One security domain of a scenario that keeps domains apart, replayed alone.

    Mainline KSM has no per-domain merge boundary, so keeping domains apart is deployable in
    two ways, both of which this replay describes: KSM for this domain only on the traced
    host (the other domains' processes off), or this domain on hosts of its own.
    """

    __json_properties__: ClassVar[tuple[str, ...]] = ("projected_time_to_90_s",)

    domain: str
    saved_bytes: int
    net_saved_bytes: int
    ksmd_cpu_percent: float  # % of one core: this domain's own ksmd
    time_to_90_s: float | None
    full_scan_s: float | None
    capacity: CapacityEstimate | None = None  # a host of this domain alone
    host_scale: float | None = None

    @property
    def projected_time_to_90_s(self) -> float | None:
        """Time to 90 % on a projected host of this domain alone."""
        if self.time_to_90_s is None or self.host_scale is None:
            return None
        return self.time_to_90_s * self.host_scale


@dataclass
class HostScenario:
    """One scenario on one host: every figure a review of that host shows.

    Memory at steady state (the end of the replay), ksmd at steady state (the full scans
    after the last snapshot, :class:`~planner.whatif.outcome.SteadyState`), the time to 50,
    90 and 99 % of the saving, the saving over time summed across the replays (one per
    security domain when merging across them is denied, which add up "as if on separate
    hosts"), the ``/sys/kernel/mm/ksm`` counters and the processes at the end, and, when the
    what-if extrapolated, the capacity and the projection to a full host.
    """

    __json_properties__: ClassVar[tuple[str, ...]] = (
        "net_saved_percent",
        "realization_ratio",
        "ksmd_cpu_percent_from_start",
        "projected_full_scan_s",
        "projected_time_to_90_s",
        "projected_first_full_scan_s",
        "projected_cow_breaks_per_s",
        "projected_canary_cow_per_s",
        "expected_saved_bytes",
        "expected_net_saved_bytes",
        "time_spread",
    )

    host: str
    page_size: int
    domains: tuple[str, ...]  # security domains of the registered processes
    registered_processes: int
    # --- memory at steady state
    anon_bytes: int
    saved_bytes: int  # freed by KSM, before its metadata (the replay's truth)
    metadata_bytes: int  # KSM's own memory: rmap_items and stable nodes
    net_saved_bytes: int
    policy_ideal_saved_bytes: int
    zero_saved_bytes: int  # part of saved_bytes that merged zero-content pages (estimate)
    eligible_pages: int  # VM_MERGEABLE pages mapped at the last snapshot
    # --- time, from the first snapshot (saved frames, as the engine's time_to_saving_s)
    time_to_50_s: float | None
    time_to_90_s: float | None
    time_to_99_s: float | None
    full_scans_to_90: int | None  # full scans completed when 90 % of the saving is there
    # --- ksmd: at steady state (summed over the replays: one ksmd each) and over the replay
    ksmd_cpu_percent: float  # % of one core
    full_scan_s: float | None  # mean over the replays
    pages_scanned_per_full_scan: float | None
    pages_skipped_per_full_scan: float | None
    ksmd_cpu_s: float  # over the whole replay
    duration_s: float  # of the longest replay
    # --- security domains
    cross_domain_saved_bytes: int  # saved only because pages merged across domains
    cross_domain_ksm_pages: int
    domain_pairs: tuple[DomainPair, ...]
    # --- the end of the replay, and over time
    final_counters: KsmCounters
    processes: tuple[ProcessOutcome, ...]
    timeline: Timeline = field(metadata=detail("timelines"))
    replays: tuple[ReplayOutcome, ...] = ()  # one, or one per domain (deny)
    counterfactual: tuple[ReplayOutcome, ...] = ()  # allow with 2+ domains: each domain alone
    # --- the projection to a full host (when the what-if extrapolated)
    capacity: CapacityEstimate | None = None
    projected: ProjectedSaving | None = None
    #: Workers per host the projection is about: the capacity with KSM, else the replicas asked.
    projected_workers: int | None = None
    #: How much larger a full scan is on the projected host than on the traced one (mergeable
    #: pages at ``projected_workers`` over those in the trace); None: not projected.
    host_scale: float | None = None
    #: The growth fit behind ``capacity`` and ``projected`` (listed in ``WhatIfResult.fits``).
    fit: ExtrapolationFit | None = field(default=None, metadata=skip())
    # --- the traced window, the first scans, writes
    #: The policy ideal at every snapshot (bytes) and the snapshots' times
    policy_ideal_by_snapshot_bytes: tuple[int, ...] = ()
    snapshot_times_s: tuple[float, ...] = ()
    #: When the replay applied its last change of memory (the last snapshot, or the last
    #: step of the growth continued after it): the steady state is measured from there
    #: (:meth:`planner.whatif.outcome.SteadyState.of_replay`); None: nothing applied
    last_applied_s: float | None = None
    #: Mean wall time of the full scans until 90 % of the saving is there (the first scans
    #: visit every page; at steady state smart scan skips many)
    first_full_scan_s: float | None = None
    #: Writes to mergeable pages between snapshots (copy-on-write), from the trace
    writes: CowEstimate | None = None
    #: Merges the replay's writes broke per second after the last snapshot, summed over the
    #: replays (the model's ``cow_ksm`` on the traced host; None: no writes were replayed)
    modelled_cow_breaks_per_s: float | None = None
    #: The model's measured error applied to the saving (observed / predicted; 1: none)
    saving_factor: float = 1.0
    #: Copy-on-write breaks per second per merged page measured on a canary (``cow_ksm``)
    canary_cow_per_merged_page_per_s: float | None = None
    #: How this scenario's knobs change that rate, as the replay models it: its modelled
    #: breaks per merged page over those of the scenario compared with the canary (at the
    #: canary's knobs); None: not known (no canary, no writes replayed, other knobs compared)
    canary_cow_knob_factor: float | None = None
    # --- security domains as they can be deployed
    #: ``one host`` (every registered process on one host: merging across domains happens
    #: if they are several) or ``separate hosts`` (merging across domains denied: mainline
    #: KSM cannot keep domains apart on one host, so each domain runs on hosts of its own)
    placement: str = "one host"
    domain_results: tuple[DomainResult, ...] = ()

    @property
    def enabled(self) -> bool:
        """Whether the policy set registers any process on this host."""
        return self.registered_processes > 0

    @property
    def net_saved_fraction(self) -> float:
        """Net saving as a share of the anonymous memory."""
        return self.net_saved_bytes / self.anon_bytes if self.anon_bytes else 0.0

    @property
    def net_saved_percent(self) -> float:
        """Net saving as a percentage of the anonymous memory."""
        return 100.0 * self.net_saved_fraction

    @property
    def saved_fraction(self) -> float:
        """Saving before metadata (what an unmerge needs back) as a share of anonymous memory."""
        return self.saved_bytes / self.anon_bytes if self.anon_bytes else 0.0

    @property
    def realization_ratio(self) -> float | None:
        """Memory the replay freed over the policy ideal of the same pages (None: no ideal)."""
        if self.policy_ideal_saved_bytes <= 0:
            return None
        return self.saved_bytes / self.policy_ideal_saved_bytes

    @property
    def content_saved_bytes(self) -> int:
        """The part of the saving that merged pages of non-zero content."""
        return self.saved_bytes - self.zero_saved_bytes

    @property
    def with_ksm_bytes(self) -> int:
        """Anonymous memory left with KSM, its metadata included."""
        return self.anon_bytes - self.net_saved_bytes

    @property
    def ksmd_cpu_percent_from_start(self) -> float:
        """ksmd CPU averaged over the whole replay, start-up included (% of one core)."""
        return 100.0 * self.ksmd_cpu_s / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def ksmd_cores(self) -> float:
        """ksmd CPU at steady state, in cores (on every host of the placement together)."""
        if self.domain_results:
            return sum(d.ksmd_cpu_percent for d in self.domain_results) / 100.0
        return self.ksmd_cpu_percent / 100.0

    @property
    def projected_full_scan_s(self) -> float | None:
        """A full scan on the projected host: the replay's, scaled with the pages to scan."""
        if self.full_scan_s is None or self.host_scale is None:
            return None
        return self.full_scan_s * self.host_scale

    @property
    def projected_time_to_90_s(self) -> float | None:
        """Time to 90 % on the projected host: the replay's, scaled with the pages to scan."""
        if self.time_to_90_s is None or self.host_scale is None:
            return None
        return self.time_to_90_s * self.host_scale

    @property
    def projected_first_full_scan_s(self) -> float | None:
        """One of the first full scans on the projected host (every page visited)."""
        if self.first_full_scan_s is None or self.host_scale is None:
            return None
        return self.first_full_scan_s * self.host_scale

    @property
    def projected_cow_breaks_per_s(self) -> float | None:
        """Writes to merged pages per second at the planned size: the trace's rate scaled
        with the mergeable pages (``host_scale``)."""
        if self.writes is None or self.host_scale is None:
            return None
        return self.writes.breaks_per_s * self.host_scale

    @property
    def modelled_cow_per_merged_page_per_s(self) -> float | None:
        """The replay's breaks per second per page it holds merged at steady state."""
        merged_pages = self.saved_bytes / self.page_size
        if self.modelled_cow_breaks_per_s is None or merged_pages <= 0:
            return None
        return self.modelled_cow_breaks_per_s / merged_pages

    @property
    def projected_canary_cow_per_s(self) -> float | None:
        """Copy-on-write breaks per second at the planned size as the canary measured them:
        its rate per merged page, carried to this scenario's knobs by the replay
        (``canary_cow_knob_factor``, where known), times the pages merged there (KSM's
        saving in pages)."""
        rate = self.canary_cow_per_merged_page_per_s
        if rate is None or self.capacity is None:
            return None
        factor = 1.0 if self.canary_cow_knob_factor is None else self.canary_cow_knob_factor
        return rate * factor * self.capacity.ksm_saved_bytes / self.page_size

    @property
    def expected_saved_bytes(self) -> float:
        """The replay's saving times the model's measured error (before metadata)."""
        return self.saving_factor * self.saved_bytes

    @property
    def expected_net_saved_bytes(self) -> float:
        """The replay's saving times the model's measured error, net of KSM's metadata."""
        return self.expected_saved_bytes - self.metadata_bytes

    @property
    def time_spread(self) -> TimeSpread:
        """The policy ideal at each snapshot relative to the last one."""
        return TimeSpread.of(self.snapshot_times_s, self.policy_ideal_by_snapshot_bytes)

    @property
    def decisive_time_to_90_s(self) -> float | None:
        """The time to 90 % a decision uses: on the projected host when there is one."""
        return self.projected_time_to_90_s if self.host_scale is not None else self.time_to_90_s


@dataclass
class ScenarioResult:
    """One scenario (policy set x cross-domain rule x knobs), aggregated over the hosts.

    Memory and CPU in cores add up over the hosts; ksmd's CPU percentage and scan sizes are
    means per host. Per-host figures are in :attr:`hosts`.
    """

    __json_properties__: ClassVar[tuple[str, ...]] = (
        "label",
        "net_saved_percent",
        "realization_ratio",
    )

    id: str
    policy_set: str
    cross_domain: str
    knobs: dict[str, Any]  # the grid point (knobs on an axis)
    knobs_full: KsmKnobs  # every knob of the replay (first host)
    hosts: list[HostScenario]
    anon_bytes: int
    saved_bytes: int
    metadata_bytes: int
    net_saved_bytes: int
    policy_ideal_saved_bytes: int
    time_to_90_s: float | None
    ksmd_cpu_percent: float  # mean over hosts, % of one core, steady state
    ksmd_cores: float  # summed over hosts
    pages_scanned_per_full_scan: float | None  # mean over hosts
    pages_skipped_per_full_scan: float | None
    cross_domain_saved_bytes: int
    cross_domain_ksm_pages: int
    domain_pairs: tuple[DomainPair, ...]
    capacity: CapacityEstimate | None = None
    projected: ProjectedSaving | None = None
    pareto: bool = False
    same_replay_as: str | None = None

    @property
    def label(self) -> str:
        """``set [cross-domain] knobs`` for people."""
        return f"{self.policy_set} [{self.cross_domain}] {knob_label(self.knobs)}"

    @property
    def enabled(self) -> bool:
        """Whether the policy set registers any process on any host."""
        return any(h.enabled for h in self.hosts)

    @property
    def net_saved_percent(self) -> float:
        """Net saving as a percentage of anonymous memory (steady state)."""
        return 100.0 * self.net_saved_bytes / self.anon_bytes if self.anon_bytes else 0.0

    @property
    def realization_ratio(self) -> float | None:
        """Memory the replays freed over the policy ideal of the same pages."""
        if self.policy_ideal_saved_bytes <= 0:
            return None
        return self.saved_bytes / self.policy_ideal_saved_bytes

    def host(self, name: str) -> HostScenario:
        """The scenario on one host (``KeyError`` when absent)."""
        for h in self.hosts:
            if h.host == name:
                return h
        raise KeyError(name)

    def row(self) -> dict[str, Any]:
        """The scenario as one flat row of the comparison table (``to_frame``/CSV)."""
        cap = self.capacity
        gi = cap.gain_interval if cap is not None else None
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
            "ideal_saved_mib": self.policy_ideal_saved_bytes / MIB,
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
            "capacity_gain_low_percent": 100 * gi[0] if gi else None,
            "capacity_gain_high_percent": 100 * gi[1] if gi else None,
            "capacity_limit": cap.limit_with if cap else None,
            "pareto": self.pareto,
            "same_replay_as": self.same_replay_as,
        }
        proj = self.projected
        if proj is not None:
            row.update(
                projected_replicas=proj.replicas,
                projected_net_saved_mib=proj.net_saved_bytes.value / MIB,
                projected_net_saved_low_mib=proj.net_saved_bytes.low / MIB,
                projected_net_saved_high_mib=proj.net_saved_bytes.high / MIB,
                projected_net_saved_percent=proj.net_saved_percent.value,
            )
        return row


@dataclass(frozen=True)
class KnobGroup:
    """Scenarios that differ in one knob only (same policy set, rule and other knobs)."""

    policy_set: str
    cross_domain: str
    scenario_ids: tuple[str, ...]  # in increasing order of the knob's value
    #: The largest relative range of the net saving in the group: ``(max - min) / max``.
    saving_spread: float
    faster_with_more: bool  # a larger value never lengthens the time to 90 %
    costlier_with_more: bool  # a larger value never lowers ksmd's CPU


@dataclass(frozen=True)
class KnobEffect:
    """How the scenarios that use KSM move with one numeric knob, the others held."""

    __json_properties__: ClassVar[tuple[str, ...]] = ("saving_spread", "trades_cpu_for_speed")

    knob: str
    groups: tuple[KnobGroup, ...]

    @property
    def saving_spread(self) -> float:
        """The largest relative range of the net saving in any group (0: the same saving)."""
        return max((g.saving_spread for g in self.groups), default=0.0)

    @property
    def trades_cpu_for_speed(self) -> bool:
        """Whether, in every group, more of the knob is faster and costs more CPU."""
        return bool(self.groups) and all(
            g.faster_with_more and g.costlier_with_more for g in self.groups
        )


@dataclass(frozen=True)
class SavingRange:
    """How the net saving varies across the scenarios that use KSM.

    ``within_sets`` is how much the knobs move it: the largest relative range
    ``(max - min) / max`` among the scenarios of one policy set (and cross-domain rule);
    ``across_sets`` how much the policy set moves it: the relative range of the sets' best
    savings (``None`` with one set).
    """

    lowest: str  # scenario id
    highest: str
    scenarios: int
    within_sets: float
    across_sets: float | None


@dataclass(frozen=True)
class SweepOptions:
    """The replay options every scenario ran with (the cost profile by name)."""

    duration_s: float | None
    settle_scans: int
    max_scans: int
    grid_s: float | None
    snapshot_alignment: str
    cost_profile: str
    writes: bool = True
    """The writes a sampled trace recorded were replayed (``--no-writes``: not)."""
    growth: bool = True
    """The growth the last snapshots show was continued where it slows down
    (:mod:`planner.engine.growth`; ``--no-growth``: not)."""
    host_load: dict[str, HostLoad] | None = None
    """Per host: the CPU load ksmd was replayed against and where it came from."""
    writes_canary: str | None = None
    """The canary recording whose same-content write rates calibrated the writes."""
    cost_profile_cpu: str | None = None
    """The CPU the cost profile was measured on (its provenance; docs/busy-host.md §7), or
    the canary's it was fitted to; ``None`` where they do not say."""


@dataclass
class WhatIfResult:
    """Everything a what-if run computed, with its inputs and provenance."""

    __json_properties__: ClassVar[tuple[str, ...]] = ("pareto_ids",)

    trace_path: str
    trace_hash: str
    hosts: tuple[str, ...]
    scenarios: list[ScenarioResult]
    policy_sets: list[PolicySet]
    matches: list[MatchReport]
    grid: KnobGrid
    replay_options: SweepOptions
    capacity_inputs: CapacityInputs | None
    extrapolation: ExtrapolationSpec | None
    fits: list[ExtrapolationFit]
    provenance: dict[str, Any]
    knob_effects: tuple[KnobEffect, ...] = ()
    saving_range: SavingRange | None = None
    warnings: list[str] = field(default_factory=list)
    observed: ObservedComparison | None = None
    #: The model's measured error applied to every capacity figure (a canary's, else the
    #: published live-validation runs'); None without capacity inputs
    model_error: ModelError | None = None
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

    @property
    def pareto_ids(self) -> list[str]:
        """Ids of the scenarios on the Pareto front."""
        return [s.id for s in self.pareto_front()]

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

        from planner.jsonable import to_jsonable

        scen = self.scenario(scenario_id)
        parts: dict[str, list[pd.DataFrame]] = {"grid": [], "scans": [], "processes": []}
        for h in scen.hosts:
            if host is not None and h.host != host:
                continue
            for r in h.replays:
                tables = {
                    "grid": r.timeline.grid,
                    "scans": r.timeline.scans,
                    "processes": r.process_timeline,
                }
                for name, series in tables.items():
                    df = pd.DataFrame(to_jsonable(series))
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


__all__ = [
    "DomainResult",
    "Estimate",
    "HostScenario",
    "KnobEffect",
    "KnobGroup",
    "ProjectedSaving",
    "SavingRange",
    "ScenarioResult",
    "SweepOptions",
    "WhatIfResult",
]
