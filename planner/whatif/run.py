"""``run_whatif``: every scenario of a sweep, replayed in parallel, compared, extrapolated.

A *scenario* is a policy set, a cross-domain rule (``allow``/``deny``) and one point of the
knob grid. For every scenario and host the run replays the host (one task per replay, on
any :class:`concurrent.futures.Executor`), then aggregates:

* **allow** -- one replay with every domain registered; when the set has two or more
  domains on the host, every domain is also replayed alone (the *counterfactual*), and the
  difference is the saving that came from merging across domains. The KSM pages whose
  mappers belong to several domains at the end say which domains were merged together;
* **deny** -- every domain replayed alone, "as if on separate hosts"; savings, metadata
  and ksmd CPU add up (one ksmd per host).

Identical replays (the same host, policy, domain and effective knobs -- the advisor
ignores ``pages_to_scan``; knobs do not matter to a set that registers no process) run
once. A trace with many hosts runs one task per host and the scenario's figures are
fleet-wide sums (CPU and scan sizes: mean per host).
"""

from __future__ import annotations

import math
import time
from concurrent.futures import Executor, Future, as_completed
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from planner._progress import NULL_PROGRESS, Progress
from planner.engine.cost import CostProfile
from planner.engine.knobs import KsmKnobs
from planner.engine.options import ReplayOptions
from planner.errors import ClusterError, PlannerError, PolicyError, UsageProblem
from planner.policy.presets import DEFAULT_PRESETS, preset
from planner.policy.resolve import check_matches, host_processes, match_processes
from planner.provenance import HostInfo, Provenance
from planner.trace.io import Trace, open_trace
from planner.whatif.capacity import (
    CapacityEstimate,
    CapacityInputs,
    HostCapacityModel,
    combine_hosts,
    estimate_capacity,
)
from planner.whatif.executors import (
    InlineExecutor,
    default_workers,
    describe,
    is_remote,
    local_executor,
)
from planner.whatif.extrapolate import ExtrapolationFit, ExtrapolationSpec
from planner.whatif.grid import CrossDomain, KnobGrid
from planner.whatif.result import (
    Estimate,
    HostScenario,
    ProjectedSaving,
    ScenarioResult,
    WhatIfResult,
    pareto_flags,
)
from planner.whatif.tasks import FitSpec, ReplayOutcome, ReplaySpec, TaskFailure, run_batch

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence

    from planner.policy.model import PolicySet
    from planner.policy.resolve import MatchReport
    from planner.trace.recording import ObservedTimeline

_OPTION_FIELDS = ("duration_s", "settle_scans", "max_scans", "grid_s", "snapshot_alignment")


def _options_items(opts: ReplayOptions) -> tuple[tuple[str, Any], ...]:
    if opts.snapshot_scans is not None:
        raise UsageProblem(
            "snapshot_scans cannot be used in a what-if sweep", hint="align snapshots by time"
        )
    return tuple((f, getattr(opts, f)) for f in _OPTION_FIELDS)


def _host_facts(trace: Trace, host: str) -> dict[str, Any]:
    snaps = trace.read_table(host, "snapshots", ["page_size", "kernel_release"])
    row = snaps.slice(0, 1).to_pylist()[0] if snaps.num_rows else {}
    return {
        "hz": trace.hz(host),
        "page_size": int(row.get("page_size") or 4096),
        "kernel": row.get("kernel_release"),
    }


def _validate_group(ht_stub: Any, policy: PolicySet, spec: ExtrapolationSpec) -> None:
    from planner.engine.prepare import prepare
    from planner.whatif.extrapolate import select_group

    select_group(prepare(ht_stub, resolver=policy.resolver()), spec.group)


def _time_to(outcomes: Sequence[ReplayOutcome], fraction: int = 90) -> float | None:
    """First time the summed saving of several replays reaches ``fraction`` % of its end value."""
    from planner.engine.result import time_to_fraction

    series = [o.saving_points() for o in outcomes]
    final = float(sum(o.final_truth["saved_frames"] for o in outcomes))
    if len(series) == 1:
        return time_to_fraction(series[0], final, (fraction,))[str(fraction)]
    times = sorted({t for s in series for t, _ in s})
    if not times:
        return None
    at = np.asarray(times)
    total = np.zeros(at.size)
    for s in series:
        if not s:
            continue
        t = np.asarray([p[0] for p in s])
        v = np.asarray([p[1] for p in s])
        idx = np.searchsorted(t, at, side="right") - 1
        total += np.where(idx >= 0, v[np.clip(idx, 0, v.size - 1)], 0.0)
    return time_to_fraction(list(zip(times, total.tolist(), strict=True)), final, (fraction,))[
        str(fraction)
    ]


def _sum_opt(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(sum(vals)) if vals else None


def _mean_opt(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


class _Plan:
    """Scenarios and the deduplicated tasks behind them."""

    def __init__(self) -> None:
        self.tasks: dict[tuple[Any, ...], ReplaySpec | FitSpec] = {}
        # scenario index -> host -> (main keys, counterfactual keys, fit key or None, domains)
        self.links: list[
            dict[
                str,
                tuple[
                    list[tuple[Any, ...]],
                    list[tuple[Any, ...]],
                    tuple[Any, ...] | None,
                    tuple[str, ...],
                ],
            ]
        ] = []

    def add(self, spec: ReplaySpec | FitSpec) -> tuple[Any, ...]:
        self.tasks.setdefault(spec.key, spec)
        return spec.key


def _batches(plan: _Plan, workers: int) -> list[tuple[ReplaySpec | FitSpec, ...]]:
    """Tasks in submission order: fits first (the longest), then replays in batches.

    Replays of one host under one policy set (one prepared input) are batched in chunks so
    that there are about three batches per worker: enough to balance the load, few enough
    that a worker rarely prepares the same input twice.
    """
    fits = [s for s in plan.tasks.values() if isinstance(s, FitSpec)]
    replays = [s for s in plan.tasks.values() if isinstance(s, ReplaySpec)]
    groups: dict[tuple[Any, ...], list[ReplaySpec | FitSpec]] = {}
    for r in replays:
        groups.setdefault(r.prepare_key, []).append(r)
    size = max(1, math.ceil(len(replays) / max(1, 3 * workers)))
    chunks = [tuple(g[i : i + size]) for g in groups.values() for i in range(0, len(g), size)]
    chunks.sort(key=len, reverse=True)
    return [(f,) for f in fits] + chunks


def _execute(
    plan: _Plan, executor: Executor, progress: Progress, *, workers: int
) -> dict[tuple[Any, ...], ReplayOutcome | ExtrapolationFit]:
    batches = _batches(plan, workers)
    progress.start("what-if: replays and fits", len(plan.tasks))
    futures: dict[Future[Any], tuple[ReplaySpec | FitSpec, ...]] = {}
    out: dict[tuple[Any, ...], ReplayOutcome | ExtrapolationFit] = {}
    remote = is_remote(executor)
    try:
        for batch in batches:
            futures[executor.submit(run_batch, batch)] = batch
        for fut in as_completed(futures):
            try:
                results = fut.result()
            except PlannerError:
                raise
            except Exception as exc:
                if remote:
                    raise ClusterError(
                        f"a what-if task failed on the cluster: {type(exc).__name__}: {exc}",
                        hint="check the workers' logs and that they can read the trace "
                        "at the same path",
                    ) from exc
                raise
            for spec, res in zip(futures[fut], results, strict=False):
                if isinstance(res, TaskFailure):
                    res.reraise()
                out[spec.key] = res
            progress.advance(len(results))
    except BaseException:
        for f in futures:
            f.cancel()
        raise
    finally:
        progress.finish()
    return out


def run_whatif(
    trace: str | os.PathLike[str] | Trace,
    *,
    policy_sets: Sequence[PolicySet] | None = None,
    grid: KnobGrid | None = None,
    replay_options: ReplayOptions | None = None,
    cost_profile: CostProfile | None = None,
    capacity: CapacityInputs | None = None,
    extrapolation: ExtrapolationSpec | None = None,
    observed: ObservedTimeline | str | os.PathLike[str] | None = None,
    observed_scenario: str | None = None,
    hosts: Sequence[str] | None = None,
    executor: Executor | None = None,
    max_workers: int | None = None,
    progress: Progress = NULL_PROGRESS,
) -> WhatIfResult:
    """Compare policy sets across a knob grid on a trace (one or many hosts).

    Parameters
    ----------
    trace
        A trace directory (or an opened :class:`~planner.trace.io.Trace`). Workers read
        it from this path.
    policy_sets
        The sets to compare (default: the presets ``off``, ``prctl-all``,
        ``workers-prctl``, ``madvise-heap``).
    grid
        Knob axes (default: one scenario per set with the kernel's default knobs).
    replay_options
        Duration, settle scans, grid step of every replay (``cost`` is ignored: use
        ``cost_profile``).
    cost_profile
        ksmd cost model (default: the shipped profile).
    capacity
        Host memory, headroom, per-worker extra memory and CPU: computes workers per host
        without and with KSM and the capacity gain, with intervals.
    extrapolation
        Replica group, N and bootstrap settings. A fit is made when this or ``capacity``
        is given (default spec when only ``capacity`` is).
    observed, observed_scenario
        A recording of ``ksm-planner observe`` (or its directory) to compare with the
        scenario of matching knobs (or ``observed_scenario``).
    hosts
        Only these hosts of the trace.
    executor
        Where tasks run (default: a process pool of ``max_workers`` processes, the cores).
        A Dask cluster: :func:`planner.whatif.executors.dask_executor`.
    progress
        Receives one step per finished task.

    Returns
    -------
    WhatIfResult

    Raises
    ------
    PolicyError
        A rule or set matches nothing, duplicate set names.
    KnobError
        An impossible knob value in the grid.
    UsageProblem
        An unknown host, an extrapolation group that selects nothing.
    TraceFormatError
        The trace cannot be read.
    ClusterError
        A remote task failed.
    """
    t0 = time.perf_counter()
    tr = trace if isinstance(trace, Trace) else open_trace(trace)
    trace_path = str(Path(tr.path).resolve())
    host_list = list(hosts) if hosts else list(tr.hosts)
    unknown = [h for h in host_list if h not in tr.hosts]
    if unknown:
        raise UsageProblem(
            f"{tr.path} has no host {unknown[0]!r}", hint=f"hosts are: {', '.join(tr.hosts)}"
        )
    if not host_list:
        raise UsageProblem(f"{tr.path} holds no host")
    sets = list(policy_sets) if policy_sets else [preset(n) for n in DEFAULT_PRESETS]
    names = [s.name for s in sets]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise PolicyError(
            f"two policy sets are named {dup!r}", hint="give each compared set a distinct name"
        )
    grid = grid or KnobGrid()
    opts = replay_options or ReplayOptions()
    opt_items = _options_items(opts)
    cost_items = tuple(sorted(cost_profile.to_dict().items())) if cost_profile else None
    if capacity is not None and extrapolation is None:
        extrapolation = ExtrapolationSpec()

    # ---- plan: facts, policy matches, knob points ------------------------------------------
    facts = {h: _host_facts(tr, h) for h in host_list}
    stubs = {h: host_processes(tr, h) for h in host_list}
    matches: list[MatchReport] = []
    domains: dict[tuple[str, str], tuple[str, ...]] = {}
    registered: dict[tuple[str, str], int] = {}
    warnings: list[str] = []
    for s in sets:
        reports = [match_processes(stubs[h], s) for h in host_list]
        warnings += check_matches(reports, s)
        matches += reports
        for h, r in zip(host_list, reports, strict=True):
            domains[(h, s.name)] = r.domains
            registered[(h, s.name)] = r.registered
            if extrapolation is not None and r.registered:
                _validate_group(stubs[h], s, extrapolation)
    points = grid.points()
    host_points = {h: [grid.knobs(p, hz=facts[h]["hz"]) for p in points] for h in host_list}
    for h in host_list:  # every combination valid for every host's HZ
        grid.points(hz=facts[h]["hz"])

    plan = _Plan()
    scen_meta: list[tuple[PolicySet, CrossDomain, dict[str, Any], dict[str, Any]]] = []
    for s in sets:
        policy_json = s.model_dump_json()
        crosses: tuple[CrossDomain, ...] = grid.cross_domain or (s.cross_domain,)
        for cross in crosses:
            for i, point in enumerate(points):
                links: dict[str, Any] = {}
                knobs_full: dict[str, Any] = {}
                for h in host_list:
                    knobs = host_points[h][i]
                    if knobs.advisor == "scan-time":  # the advisor sets pages_to_scan itself
                        knobs = knobs.with_(pages_to_scan=knobs.advisor_min_pages_to_scan)
                    knobs_full = knobs_full or knobs.to_dict()
                    if not registered[(h, s.name)]:  # nothing to scan: the knobs change nothing
                        knobs = KsmKnobs(hz=knobs.hz)
                    base = (trace_path, tr.trace_hash, h, policy_json)
                    rest = (tuple(sorted(knobs.to_dict().items())), opt_items, cost_items)
                    doms = domains[(h, s.name)]
                    multi = len(doms) >= 2
                    if cross == "deny" and multi:
                        main_keys = [plan.add(ReplaySpec(*base, d, *rest)) for d in doms]
                        cf_keys: list[tuple[Any, ...]] = []
                    else:
                        main_keys = [plan.add(ReplaySpec(*base, None, *rest))]
                        cf_keys = (
                            [plan.add(ReplaySpec(*base, d, *rest)) for d in doms] if multi else []
                        )
                    fit_key = None
                    if extrapolation is not None:
                        fit_cross = "deny" if (cross == "deny" and multi) else "allow"
                        fit_key = plan.add(FitSpec(*base, fit_cross, extrapolation))
                    links[h] = (main_keys, cf_keys, fit_key, doms)
                plan.links.append(links)
                scen_meta.append((s, cross, point, knobs_full))

    # ---- run -----------------------------------------------------------------------------
    own = executor is None
    ex = executor if executor is not None else local_executor(max_workers)
    try:
        results = _execute(plan, ex, progress, workers=_workers(ex, max_workers))
    finally:
        if own:
            ex.shutdown(wait=True, cancel_futures=True)

    # ---- assemble ------------------------------------------------------------------------
    width = max(2, len(str(len(scen_meta))))
    scenarios: list[ScenarioResult] = []
    seen_main: dict[tuple[Any, ...], str] = {}
    fits_used: dict[tuple[Any, ...], ExtrapolationFit] = {}
    for idx, ((s, cross, point, knobs_full), links) in enumerate(
        zip(scen_meta, plan.links, strict=True)
    ):
        sid = f"s{idx + 1:0{width}d}"
        host_results = []
        for h in host_list:
            main_keys, cf_keys, fit_key, doms = links[h]
            main = [_outcome(results[k]) for k in main_keys]
            cf = [_outcome(results[k]) for k in cf_keys]
            fit = results.get(fit_key) if fit_key is not None else None
            if isinstance(fit, ExtrapolationFit):
                fits_used[fit_key] = fit  # type: ignore[index]
            host_results.append(
                _host_scenario(
                    h,
                    facts[h]["page_size"],
                    main,
                    cf,
                    doms,
                    fit if isinstance(fit, ExtrapolationFit) else None,
                    capacity,
                    extrapolation,
                )
            )
        scen = _aggregate(sid, s.name, cross, point, knobs_full, host_results, capacity)
        key = tuple(k for h in host_list for k in links[h][0])
        scen.same_replay_as = seen_main.get(key)
        seen_main.setdefault(key, sid)
        scenarios.append(scen)
    for scen, on_front in zip(
        scenarios,
        pareto_flags([(float(x.net_saved_bytes), x.ksmd_cores) for x in scenarios]),
        strict=True,
    ):
        scen.pareto = on_front

    comparison = None
    if observed is not None:
        from planner.whatif.observed import compare_observed, load_observed

        obs = load_observed(observed) if isinstance(observed, str | Path) else observed
        comparison = compare_observed(obs, scenarios, scenario_id=observed_scenario)  # type: ignore[arg-type]
        warnings += comparison.notes

    kernel = facts[host_list[0]]["kernel"]
    prov = Provenance(
        trace_path=trace_path,
        trace_hash=tr.trace_hash,
        hosts=tuple(host_list),
        kernel_release=kernel,
        knobs=grid.to_dict(),
        policy_set=",".join(names),
        command="whatif",
        extra={
            "policy_sets": [p.model_dump(mode="json") for p in sets],
            "replay_options": dict(opt_items),
            "cost_profile": (cost_profile or CostProfile.default()).name,
            "capacity": capacity.to_dict() if capacity else None,
            "extrapolation": extrapolation.to_dict() if extrapolation else None,
            "run_on": HostInfo.collect().to_dict(),
            "tasks": len(plan.tasks),
            **describe(ex),
        },
    ).to_dict()
    return WhatIfResult(
        trace_path=trace_path,
        trace_hash=tr.trace_hash,
        hosts=tuple(host_list),
        scenarios=scenarios,
        policy_sets=sets,
        matches=matches,
        grid=grid,
        replay_options=dict(opt_items),
        capacity_inputs=capacity,
        extrapolation=extrapolation,
        fits=list(fits_used.values()),
        provenance=prov,
        warnings=warnings,
        observed=comparison,
        elapsed_s=time.perf_counter() - t0,
    )


def _workers(executor: Executor, max_workers: int | None) -> int:
    """How many tasks the executor runs at once (a guess for executors that do not say)."""
    n = getattr(executor, "_max_workers", None)
    if isinstance(n, int) and n > 0:
        return n
    if isinstance(executor, InlineExecutor):
        return 1
    return max_workers or default_workers()


def _outcome(res: ReplayOutcome | ExtrapolationFit) -> ReplayOutcome:
    if not isinstance(res, ReplayOutcome):  # pragma: no cover - keys are distinct by kind
        raise TypeError("expected a replay outcome")
    return res


def _host_scenario(
    host: str,
    page_size: int,
    main: list[ReplayOutcome],
    cf: list[ReplayOutcome],
    doms: tuple[str, ...],
    fit: ExtrapolationFit | None,
    capacity: CapacityInputs | None,
    extrapolation: ExtrapolationSpec | None,
) -> HostScenario:
    ps = page_size
    truth = [o.final_truth for o in main]
    anon = int(truth[0]["frames_without_ksm"]) * ps
    saved = sum(int(t["saved_frames"]) for t in truth) * ps
    meta = sum(int(t["metadata_bytes"]) for t in truth)
    net = sum(int(t["net_saved_bytes"]) for t in truth)
    ideal = sum(o.ideal_saved_frames for o in main) * ps
    ratio = saved / ideal if ideal > 0 else None
    cpu = float(sum(o.steady_cpu_percent for o in main))
    eligible = sum(o.eligible_pages for o in main)
    registered = sum(o.registered_processes for o in main)
    cross_saved = saved - sum(int(o.final_truth["saved_frames"]) for o in cf) * ps if cf else 0
    pairs = main[0].domain_pairs if len(main) == 1 else []
    crossing = main[0].cross_domain_ksm_pages if len(main) == 1 else 0
    hs = HostScenario(
        host=host,
        page_size=ps,
        anon_bytes=anon,
        saved_bytes=saved,
        metadata_bytes=meta,
        net_saved_bytes=net,
        ideal_saved_bytes=ideal,
        realization_ratio=ratio,
        time_to_90_s=_time_to(main, 90),
        ksmd_cpu_percent=cpu,
        pages_scanned_per_full_scan=_sum_opt([o.pages_scanned_per_full_scan for o in main]),
        pages_skipped_per_full_scan=_sum_opt([o.pages_skipped_per_full_scan for o in main]),
        cross_domain_saved_bytes=cross_saved,
        cross_domain_ksm_pages=crossing,
        domain_pairs=pairs,
        domains=doms,
        eligible_pages=eligible,
        replays=main,
        counterfactual=cf,
    )
    if fit is None:
        return hs
    model = HostCapacityModel(
        page_size=ps,
        growth=fit.point,
        realization_ratio=ratio or 0.0,
        metadata_bytes_per_page=meta / eligible if eligible else 0.0,
        ksmd_cores=cpu / 100.0 if registered else 0.0,
    )
    if capacity is not None:
        hs.capacity = estimate_capacity(
            model, capacity, replicates=fit.replicates, confidence=fit.confidence
        )
    if extrapolation is not None and extrapolation.replicas is not None:
        hs.projected = _project(model, fit, extrapolation.replicas)
    return hs


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


def _combine_projected(hosts: list[HostScenario]) -> ProjectedSaving | None:
    """Fleet projection: host values summed, replicate by replicate for the interval."""
    parts = [h.projected for h in hosts]
    if not parts or any(p is None for p in parts):
        return None
    ps = [p for p in parts if p is not None]
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


def _aggregate(
    sid: str,
    set_name: str,
    cross: str,
    point: dict[str, Any],
    knobs_full: dict[str, Any],
    hosts: list[HostScenario],
    capacity: CapacityInputs | None,
) -> ScenarioResult:
    saved = sum(h.saved_bytes for h in hosts)
    ideal = sum(h.ideal_saved_bytes for h in hosts)
    pairs: dict[tuple[str, ...], dict[str, Any]] = {}
    for h in hosts:
        for p in h.domain_pairs:
            k = tuple(p["domains"])
            acc = pairs.setdefault(k, {"domains": list(k), "ksm_pages": 0, "mappings": 0})
            acc["ksm_pages"] += p["ksm_pages"]
            acc["mappings"] += p["mappings"]
    cap: CapacityEstimate | None = None
    caps = [h.capacity for h in hosts if h.capacity is not None]
    if capacity is not None and caps and len(caps) == len(hosts):
        cap = combine_hosts(caps)
    return ScenarioResult(
        id=sid,
        policy_set=set_name,
        cross_domain=cross,
        knobs=dict(point),
        knobs_full=knobs_full,
        hosts=hosts,
        anon_bytes=sum(h.anon_bytes for h in hosts),
        saved_bytes=saved,
        metadata_bytes=sum(h.metadata_bytes for h in hosts),
        net_saved_bytes=sum(h.net_saved_bytes for h in hosts),
        ideal_saved_bytes=ideal,
        realization_ratio=saved / ideal if ideal > 0 else None,
        time_to_90_s=_time_to([o for h in hosts for o in h.replays], 90),
        ksmd_cpu_percent=float(np.mean([h.ksmd_cpu_percent for h in hosts])),
        ksmd_cores=sum(h.ksmd_cpu_percent for h in hosts) / 100.0,
        pages_scanned_per_full_scan=_mean_opt([h.pages_scanned_per_full_scan for h in hosts]),
        pages_skipped_per_full_scan=_mean_opt([h.pages_skipped_per_full_scan for h in hosts]),
        cross_domain_saved_bytes=sum(h.cross_domain_saved_bytes for h in hosts),
        cross_domain_ksm_pages=sum(h.cross_domain_ksm_pages for h in hosts),
        domain_pairs=list(pairs.values()),
        capacity=cap,
        projected=_combine_projected(hosts),
    )


def options_from(**values: Any) -> ReplayOptions:
    """:class:`ReplayOptions` from keyword values, ignoring ``None`` (a CLI helper)."""
    known = {f.name for f in fields(ReplayOptions)}
    return ReplayOptions(**{k: v for k, v in values.items() if v is not None and k in known})


__all__ = ["options_from", "run_whatif"]
