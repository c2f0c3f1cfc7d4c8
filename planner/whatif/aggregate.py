"""From replay outcomes to scenario results: every figure of a scenario, computed once.

:func:`host_scenario` turns the replays of one scenario on one host (one replay, or one per
security domain when merging across domains is denied) into a
:class:`~planner.whatif.result.HostScenario`: memory, ksmd at steady state, time to 50, 90
and 99 % of the saving, the summed timeline and counters, the processes, the policy ideal
at every snapshot. :func:`project_host` adds -- with a growth fit -- capacity, projection and
``host_scale``, once the model's measured error is known (a canary's, compared after the
replays). :func:`scenario` aggregates the hosts of a scenario, :func:`finish_scenario` its
capacity; :func:`attach_curves` gives each fit the curve a review draws.

**Security domains as they can be deployed.** Mainline KSM has no per-domain merge boundary:
what is registered on one host merges with everything else registered there. A scenario
that denies merging across domains is therefore the placement "each domain on hosts of its
own": each domain's replay is its own host (its own ksmd: the placement's ksmd CPU per
host is the busiest domain's, its time to benefit the slowest domain's), each domain has
its own growth fit and capacity, and the placement's capacity adds up one host per domain.
Each domain's replay is also the figure of the other deployable form, KSM for that domain
only on a shared host (:class:`~planner.whatif.result.DomainResult`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from planner.whatif.capacity import (
    CapacityEstimate,
    CapacityInputs,
    HostCapacityModel,
    combine_hosts,
    estimate_capacity,
)
from planner.whatif.extrapolate import ExtrapolationFit, ExtrapolationSpec, fitted_curve
from planner.whatif.footprint import plan_capacity
from planner.whatif.outcome import DomainPair, KsmCounters, ProcessOutcome, ReplayOutcome
from planner.whatif.result import (
    DomainResult,
    Estimate,
    HostScenario,
    ProjectedSaving,
    ScenarioResult,
)
from planner.whatif.series import scans_to, summed_timeline, time_to_fractions

if TYPE_CHECKING:
    from collections.abc import Sequence

    from planner.engine.knobs import KsmKnobs
    from planner.whatif.footprint import WholeHostFacts
    from planner.whatif.outcome import Timeline
    from planner.whatif.uncertainty import ModelError
    from planner.whatif.writes import CowEstimate


def _sum_opt(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(sum(vals)) if vals else None


def _max_opt(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(max(vals)) if vals else None


def _mean_opt(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def merged_processes(replays: Sequence[ReplayOutcome]) -> tuple[ProcessOutcome, ...]:
    """The processes of several replays of one host, each once (its registered entry first).

    A domain replayed alone holds every process, the other domains' unregistered.
    """
    by_pid: dict[int, ProcessOutcome] = {}
    for r in replays:
        for p in r.processes:
            if p.pid not in by_pid or (not by_pid[p.pid].registered and p.registered):
                by_pid[p.pid] = p
    return tuple(by_pid[pid] for pid in sorted(by_pid))


@dataclass(frozen=True)
class HostReplays:
    """The replays of one scenario on one host, with what is known about the host.

    ``fits`` holds the growth fit of the host, or, when the domains are placed on separate
    hosts, one fit per domain (in the order of ``main``).
    """

    host: str
    page_size: int
    main: tuple[ReplayOutcome, ...]  # one, or one per domain (deny)
    counterfactual: tuple[ReplayOutcome, ...]  # allow with 2+ domains: each domain alone
    domains: tuple[str, ...]
    fits: tuple[ExtrapolationFit, ...] = ()
    writes: CowEstimate | None = None

    @property
    def separate(self) -> bool:
        """Whether the domains are placed on separate hosts (merging across them denied)."""
        return len(self.main) > 1


def _first_scans_s(timeline: Timeline, scans_to_90: int | None) -> float | None:
    """Mean wall time of the full scans until the one that reached 90 % (from the start)."""
    if not scans_to_90:
        return None
    s = timeline.scans
    end = next((t for t, n in zip(s.t_s, s.full_scans, strict=True) if n == scans_to_90), None)
    return end / scans_to_90 if end is not None else None


def _domain_result(o: ReplayOutcome) -> DomainResult:
    times = time_to_fractions([o], (90,))
    return DomainResult(
        domain=o.only_domain or "(none)",
        saved_bytes=o.final_truth.saved_frames * o.page_size,
        net_saved_bytes=o.final_truth.net_saved_bytes,
        ksmd_cpu_percent=o.steady.cpu_percent if o.steady is not None else 0.0,
        time_to_90_s=times[90],
        full_scan_s=o.steady.full_scan_s if o.steady is not None else None,
    )


def host_scenario(r: HostReplays) -> HostScenario:
    """Every figure of one scenario on one host, before any projection (module docstring)."""
    ps, main = r.page_size, r.main
    saved = sum(o.final_truth.saved_frames for o in main) * ps
    steady = [o.steady for o in main if o.steady is not None]
    timeline = summed_timeline(main)
    times = time_to_fractions(main)
    cf_saved = sum(o.final_truth.saved_frames for o in r.counterfactual) * ps
    counters = KsmCounters()
    for o in main:
        counters += o.final_counters
    domains = tuple(_domain_result(o) for o in main) if r.separate else ()
    cpu = [s.cpu_percent for s in steady]
    scans_to_90 = scans_to(timeline, times[90])
    return HostScenario(
        host=r.host,
        page_size=ps,
        domains=r.domains,
        registered_processes=sum(o.registered_processes for o in main),
        anon_bytes=main[0].final_truth.frames_without_ksm * ps,
        saved_bytes=saved,
        metadata_bytes=sum(o.final_truth.metadata_bytes for o in main),
        net_saved_bytes=sum(o.final_truth.net_saved_bytes for o in main),
        policy_ideal_saved_bytes=sum(o.policy_ideal_saved_frames for o in main) * ps,
        zero_saved_bytes=sum(o.zero_saved_frames for o in main) * ps,
        eligible_pages=sum(o.eligible_pages for o in main),
        time_to_50_s=times[50],
        time_to_90_s=times[90],
        time_to_99_s=times[99],
        full_scans_to_90=scans_to_90,
        # separate hosts: each runs its own ksmd; a host's ksmd is the busiest domain's
        ksmd_cpu_percent=float(max(cpu) if r.separate and cpu else sum(cpu)),
        full_scan_s=_mean_opt([s.full_scan_s for s in steady]),
        pages_scanned_per_full_scan=_sum_opt([s.pages_scanned_per_full_scan for s in steady]),
        pages_skipped_per_full_scan=_sum_opt([s.pages_skipped_per_full_scan for s in steady]),
        ksmd_cpu_s=float(sum(o.cost.cpu_s for o in main)),
        duration_s=max(o.duration_s for o in main),
        cross_domain_saved_bytes=saved - cf_saved if r.counterfactual else 0,
        cross_domain_ksm_pages=main[0].cross_domain_ksm_pages if len(main) == 1 else 0,
        domain_pairs=main[0].domain_pairs if len(main) == 1 else (),
        final_counters=counters,
        processes=merged_processes(main),
        timeline=timeline,
        replays=main,
        counterfactual=r.counterfactual,
        policy_ideal_by_snapshot_bytes=tuple(
            sum(vals) * ps for vals in zip(*(o.policy_ideal_by_snapshot for o in main), strict=True)
        ),
        snapshot_times_s=main[0].snapshot_times_s,
        last_applied_s=_max_opt([o.last_snapshot_s for o in main]),
        first_full_scan_s=_first_scans_s(timeline, scans_to_90),
        writes=r.writes,
        modelled_cow_breaks_per_s=_sum_opt([o.cow_breaks_per_s for o in main]),
        placement="separate hosts" if r.separate else "one host",
        domain_results=domains,
    )


@dataclass(frozen=True)
class Evidence:
    """What every projection of a run shares: the capacity inputs and the model's error."""

    capacity: CapacityInputs | None
    extrapolation: ExtrapolationSpec | None
    model_error: ModelError | None
    facts: WholeHostFacts | None = None
    canary_cow_per_merged_page_per_s: float | None = None
    #: The replay's breaks per merged page in the scenario compared with the canary, at the
    #: canary's knobs (None: other knobs, or no writes replayed)
    canary_modelled_cow_per_merged_page_per_s: float | None = None


def _model(
    hs_figures: tuple[float, int, int, float, bool], ps: int, fit: ExtrapolationFit
) -> HostCapacityModel:
    realization, metadata, eligible, cpu_percent, enabled = hs_figures
    return HostCapacityModel(
        page_size=ps,
        growth=fit.point,
        realization_ratio=realization,
        metadata_bytes_per_page=metadata / eligible if eligible else 0.0,
        ksmd_cores=cpu_percent / 100.0 if enabled else 0.0,
    )


def _capacity(
    model: HostCapacityModel, fit: ExtrapolationFit, ev: Evidence, hs: HostScenario
) -> CapacityEstimate | None:
    if ev.capacity is None:
        return None
    plan = plan_capacity(ev.capacity, facts=ev.facts, group_pids=fit.group_pids)
    return estimate_capacity(
        model,
        plan,
        replicates=fit.replicates,
        model_error=ev.model_error if hs.enabled else None,
        time=hs.time_spread,
        confidence=fit.confidence,
        seed=fit.spec.seed,
    )


def project_host(hs: HostScenario, fits: tuple[ExtrapolationFit, ...], ev: Evidence) -> None:
    """Capacity, projected saving and ``host_scale`` of a host scenario with a growth fit."""
    hs.saving_factor = ev.model_error.point if ev.model_error is not None and hs.enabled else 1.0
    hs.canary_cow_per_merged_page_per_s = (
        ev.canary_cow_per_merged_page_per_s if hs.enabled else None
    )
    hs.canary_cow_knob_factor = _cow_knob_factor(hs, ev)
    if hs.placement == "separate hosts" and len(fits) == len(hs.replays):
        _project_separate(hs, fits, ev)
        return
    if not fits:
        return
    fit = fits[0]
    hs.fit = fit
    figures = (
        hs.realization_ratio or 0.0,
        hs.metadata_bytes,
        hs.eligible_pages,
        hs.ksmd_cpu_percent,
        hs.enabled,
    )
    model = _model(figures, hs.page_size, fit)
    hs.capacity = _capacity(model, fit, ev, hs)
    replicas = ev.extrapolation.replicas if ev.extrapolation is not None else None
    if replicas is not None:
        hs.projected = _project(model, fit, replicas)
    n = (hs.capacity.workers_with if hs.capacity is not None else None) or replicas
    hs.projected_workers = n
    if n and fit.point.eligible_b > 0 and hs.eligible_pages > 0:
        hs.host_scale = float(fit.point.eligible_pages(n)) / float(hs.eligible_pages)


def _cow_knob_factor(hs: HostScenario, ev: Evidence) -> float | None:
    """The replay's breaks per merged page under ``hs``'s knobs over those at the canary's.

    A canary measures copy-on-write at its own knobs: a slower scan re-merges a written page
    later, so fewer merges are there to break. The replay, calibrated on the canary's writes,
    models that; its ratio carries the canary's measured rate to other knobs."""
    reference = ev.canary_modelled_cow_per_merged_page_per_s
    rate = hs.modelled_cow_per_merged_page_per_s
    if ev.canary_cow_per_merged_page_per_s is None or not hs.enabled:
        return None
    if reference is None or reference <= 0 or rate is None:
        return None
    return rate / reference


def _project_separate(hs: HostScenario, fits: tuple[ExtrapolationFit, ...], ev: Evidence) -> None:
    """Each domain on hosts of its own: one capacity per domain host, then the placement."""
    out: list[DomainResult] = []
    for o, fit, d in zip(hs.replays, fits, hs.domain_results, strict=True):
        ideal = o.policy_ideal_saved_frames
        figures = (
            o.final_truth.saved_frames / ideal if ideal > 0 else 0.0,
            o.final_truth.metadata_bytes,
            o.eligible_pages,
            d.ksmd_cpu_percent,
            o.registered_processes > 0,
        )
        model = _model(figures, hs.page_size, fit)
        cap = _capacity(model, fit, ev, hs)
        n = (cap.workers_with if cap is not None else None) or (
            ev.extrapolation.replicas if ev.extrapolation is not None else None
        )
        scale = (
            float(fit.point.eligible_pages(n)) / float(o.eligible_pages)
            if n and fit.point.eligible_b > 0 and o.eligible_pages > 0
            else None
        )
        out.append(replace(d, capacity=cap, host_scale=scale))
    hs.domain_results = tuple(out)
    caps = [d.capacity for d in out if d.capacity is not None]
    if caps and len(caps) == len(out):
        hs.capacity = combine_hosts(caps)
    # the placement is ready when its slowest domain is
    slowest = max(out, key=lambda d: d.projected_time_to_90_s or d.time_to_90_s or 0.0)
    hs.time_to_90_s = slowest.time_to_90_s
    hs.host_scale = slowest.host_scale
    hs.full_scan_s = slowest.full_scan_s
    hs.projected_workers = hs.capacity.workers_with if hs.capacity is not None else None


def _interval(values: Any, confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.percentile(np.asarray(values, dtype=float), [100 * alpha, 100 * (1 - alpha)])
    return float(lo), float(hi)


def _projection(
    n: int,
    hosts: int,
    point: tuple[float, float, float],
    ideal: Any,
    net: Any,
    anon: Any,
    confidence: float,
) -> ProjectedSaving:
    """A :class:`ProjectedSaving` from point values ``(ideal, net, anon)`` and replicate arrays."""
    pi, pn, pa = point
    pct = 100.0 * np.asarray(net) / np.where(np.asarray(anon) > 0, np.asarray(anon), 1.0)
    return ProjectedSaving(
        replicas=n,
        hosts=hosts,
        anon_bytes=pa,
        ideal_saved_bytes=Estimate(pi, *_interval(ideal, confidence), confidence),
        net_saved_bytes=Estimate(pn, *_interval(net, confidence), confidence),
        net_saved_percent=Estimate(
            100.0 * pn / pa if pa else 0.0, *_interval(pct, confidence), confidence
        ),
        replicate_ideal_bytes=tuple(float(v) for v in ideal),
        replicate_net_bytes=tuple(float(v) for v in net),
        replicate_anon_bytes=tuple(float(v) for v in anon),
    )


def _project(model: HostCapacityModel, fit: ExtrapolationFit, n: int) -> ProjectedSaving:
    """The saving of one host projected to ``n`` replicas, with its bootstrap interval."""
    ps = model.page_size
    reps = fit.replicates or (fit.point,)
    ideal = np.array([float(g.ideal_saved(n)) for g in reps]) * ps
    net = np.array([model.ksm_net_saved_bytes(n, g) for g in reps])
    anon = np.array([float(g.frames(n)) for g in reps]) * ps
    point = (
        float(model.growth.ideal_saved(n)) * ps,
        model.ksm_net_saved_bytes(n),
        float(model.growth.frames(n)) * ps,
    )
    return _projection(n, 1, point, ideal, net, anon, fit.confidence)


def _combine_projected(hosts: Sequence[HostScenario]) -> ProjectedSaving | None:
    """Fleet projection: host values summed, replicate by replicate for the interval."""
    parts = [h.projected for h in hosts]
    ps = [p for p in parts if p is not None]
    if not parts or len(ps) != len(parts):
        return None
    if len(ps) == 1:
        return ps[0]
    r = min(len(p.replicate_net_bytes) for p in ps)

    def col(attr: str) -> Any:
        return np.sum([np.asarray(getattr(p, attr)[:r]) for p in ps], axis=0)

    point = (
        sum(p.ideal_saved_bytes.value for p in ps),
        sum(p.net_saved_bytes.value for p in ps),
        sum(p.anon_bytes for p in ps),
    )
    return _projection(
        ps[0].replicas,
        len(ps),
        point,
        col("replicate_ideal_bytes"),
        col("replicate_net_bytes"),
        col("replicate_anon_bytes"),
        ps[0].net_saved_bytes.confidence,
    )


def _domain_pairs(hosts: Sequence[HostScenario]) -> tuple[DomainPair, ...]:
    acc: dict[tuple[str, ...], tuple[int, int]] = {}
    for h in hosts:
        for p in h.domain_pairs:
            pages, maps = acc.get(p.domains, (0, 0))
            acc[p.domains] = (pages + p.ksm_pages, maps + p.mappings)
    return tuple(DomainPair(k, pages, maps) for k, (pages, maps) in acc.items())


def scenario(
    sid: str,
    set_name: str,
    cross: str,
    point: dict[str, Any],
    knobs_full: KsmKnobs,
    hosts: list[HostScenario],
) -> ScenarioResult:
    """A scenario over its hosts: memory summed, ksmd CPU as a mean per host and in cores.

    Its capacity and projection are set by :func:`finish_scenario` once the hosts are
    projected (after the canary comparison, whose error the projection applies).
    """
    return ScenarioResult(
        id=sid,
        policy_set=set_name,
        cross_domain=cross,
        knobs=dict(point),
        knobs_full=knobs_full,
        hosts=hosts,
        anon_bytes=sum(h.anon_bytes for h in hosts),
        saved_bytes=sum(h.saved_bytes for h in hosts),
        metadata_bytes=sum(h.metadata_bytes for h in hosts),
        net_saved_bytes=sum(h.net_saved_bytes for h in hosts),
        policy_ideal_saved_bytes=sum(h.policy_ideal_saved_bytes for h in hosts),
        time_to_90_s=time_to_fractions([o for h in hosts for o in h.replays], (90,))[90],
        ksmd_cpu_percent=float(np.mean([h.ksmd_cpu_percent for h in hosts])),
        ksmd_cores=sum(h.ksmd_cores for h in hosts),
        pages_scanned_per_full_scan=_mean_opt([h.pages_scanned_per_full_scan for h in hosts]),
        pages_skipped_per_full_scan=_mean_opt([h.pages_skipped_per_full_scan for h in hosts]),
        cross_domain_saved_bytes=sum(h.cross_domain_saved_bytes for h in hosts),
        cross_domain_ksm_pages=sum(h.cross_domain_ksm_pages for h in hosts),
        domain_pairs=_domain_pairs(hosts),
    )


def finish_scenario(scen: ScenarioResult, capacity: CapacityInputs | None) -> None:
    """The scenario's capacity and projection from its projected hosts."""
    caps = [h.capacity for h in scen.hosts if h.capacity is not None]
    if capacity is not None and caps and len(caps) == len(scen.hosts):
        scen.capacity = combine_hosts(caps)
    scen.projected = _combine_projected(scen.hosts)
    if any(h.placement == "separate hosts" for h in scen.hosts):
        scen.time_to_90_s = max(
            (h.time_to_90_s for h in scen.hosts if h.time_to_90_s is not None), default=None
        )


def attach_curves(
    scenarios: Sequence[ScenarioResult], fits: Sequence[ExtrapolationFit]
) -> list[ExtrapolationFit]:
    """Each fit with its curve, drawn as far as any scenario on its host projects.

    The host scenarios that use a fit are given the fit with its curve.
    """
    out = []
    for f in fits:
        users = [
            h for s in scenarios for h in s.hosts if h.fit is not None and h.fit.host == f.host
        ]
        top = max(
            [int(f.spec.replicas or 0)]
            + [h.capacity.workers_with for h in users if h.capacity is not None]
        )
        curved = replace(f, curve=fitted_curve(f, top))
        for h in users:
            if h.fit is f:
                h.fit = curved
        out.append(curved)
    return out


__all__ = [
    "Evidence",
    "HostReplays",
    "attach_curves",
    "finish_scenario",
    "host_scenario",
    "merged_processes",
    "project_host",
    "scenario",
]
