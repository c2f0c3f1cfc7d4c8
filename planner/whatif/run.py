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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from planner._progress import NULL_PROGRESS, Progress
from planner.engine.cost import CostProfile, cost_cpu_warning, profile_for_trace
from planner.engine.costfit import busier_load_warning, fit_facts, short_batch_warning
from planner.engine.knobs import KsmKnobs
from planner.engine.options import ReplayOptions
from planner.engine.writes import CanaryVariant
from planner.errors import ClusterError, PlannerError, PolicyError, UsageProblem
from planner.jsonable import to_jsonable
from planner.policy.presets import DEFAULT_PRESETS, preset
from planner.policy.resolve import check_matches, host_processes, match_processes
from planner.provenance import HostInfo, Provenance
from planner.trace.io import Trace, open_trace
from planner.whatif import aggregate
from planner.whatif.compare import knob_effects, pareto_flags, saving_range
from planner.whatif.executors import (
    InlineExecutor,
    default_workers,
    describe,
    is_remote,
    local_executor,
)
from planner.whatif.extrapolate import ExtrapolationFit, ExtrapolationSpec
from planner.whatif.footprint import whole_host_facts
from planner.whatif.grid import CrossDomain, KnobGrid
from planner.whatif.outcome import ReplayOutcome
from planner.whatif.result import ScenarioResult, SweepOptions, WhatIfResult
from planner.whatif.tasks import FitSpec, ReplaySpec, TaskFailure, run_batch, run_cow
from planner.whatif.uncertainty import canary_error, canary_warning, published_error

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence

    from planner.engine.timing import HostLoad
    from planner.policy.model import PolicySet
    from planner.policy.resolve import MatchReport
    from planner.trace.recording import ObservedTimeline
    from planner.whatif.capacity import CapacityInputs
    from planner.whatif.observed import ObservedComparison
    from planner.whatif.uncertainty import ModelError
    from planner.whatif.writes import CowEstimate

_OPTION_FIELDS = (
    "duration_s",
    "settle_scans",
    "max_scans",
    "grid_s",
    "snapshot_alignment",
    "writes",
    "growth",
    "host_load",
)


def _host_load(trace: Trace, host: str, opts: ReplayOptions) -> HostLoad:
    """The CPU load the replays of ``host`` assume: given, recorded by the trace, or idle."""
    from planner.engine.timing import HostLoad, recorded_load
    from planner.trace.views import intervals

    if opts.host_load is not None:
        return opts.host_load
    snaps = trace.read_table(host, "snapshots")
    rec = recorded_load(intervals(snaps, trace.read_table(host, "processes")))
    return rec or HostLoad.idle("the trace recorded no CPU load (version 1): an idle host assumed")


def _options_items(opts: ReplayOptions) -> tuple[tuple[str, Any], ...]:
    if opts.snapshot_scans is not None:
        raise UsageProblem(
            "snapshot_scans cannot be used in a what-if sweep", hint="align snapshots by time"
        )
    return tuple((f, getattr(opts, f)) for f in _OPTION_FIELDS)


def _task_result(fut: Future[Any], remote: bool) -> Any:
    """A task's result; a planner error of the worker raised again here."""
    try:
        res = fut.result()
    except PlannerError:
        raise
    except Exception as exc:
        if remote:
            raise ClusterError(
                f"a what-if task failed on the cluster: {type(exc).__name__}: {exc}",
                hint="check the workers' logs and that they can read the trace at the same path",
            ) from exc
        raise
    if isinstance(res, TaskFailure):
        res.reraise()
    return res


def _canary_path(
    observed: ObservedTimeline | str | os.PathLike[str] | None, opts: ReplayOptions
) -> str | None:
    """The canary-mode recording whose write rates calibrate the replays, if any."""
    import os

    if observed is None or not opts.writes or not isinstance(observed, str | os.PathLike):
        return None
    from planner.trace.recording import read_observed

    path = str(Path(observed).resolve())
    return path if read_observed(path).page_events is not None else None


def _fit_cost(
    tr: Trace,
    host_list: Sequence[str],
    canary_path: str | None,
    cost_profile: CostProfile | None,
    opts: ReplayOptions,
) -> tuple[CostProfile | None, dict[str, Any] | None, CanaryVariant]:
    """The cost profile fitted to the canary's ksmd (CPU time, batch period), as ``replay
    --observed`` fits it (:func:`planner.engine.costfit.fit_canary`), what the provenance
    says about it, and how the canary's rates reach the trace's rows (page classes, the
    unseen breaks spread or not: as that fit chose); the profile as given where there is no
    canary. A canary is one host's: a trace of several hosts keeps the profile given.

    The profile given is, where it is ``None`` (the default, as in the tasks' keys), the
    shipped one of the traced CPU (:func:`planner.engine.cost.profile_for_trace`)."""
    chosen = profile_for_trace(cost_profile, tr.host_cpu)
    cost_profile = None if chosen == CostProfile.default() else chosen
    if canary_path is None:
        return cost_profile, None, CanaryVariant()
    if len(host_list) != 1:
        why = f"a canary is one host's ksmd and the replays cover {len(host_list)} hosts"
        return cost_profile, {"fitted": False, "why": why}, CanaryVariant()
    from dataclasses import replace

    from planner.engine.costfit import fit_canary
    from planner.engine.prepare import prepare
    from planner.engine.writes import canary_rates
    from planner.trace.recording import read_observed

    inp = prepare(tr.load_host(host_list[0]))
    recording = read_observed(canary_path)
    base = replace(opts, cost=cost_profile or CostProfile.default())
    fitted = fit_canary(inp, recording.counters, base, canary_rates(recording, inp.page_size))
    note = fitted.note
    note["canary_cpu"] = recording.host_cpu
    profile = fitted.options.cost if note["fitted"] else cost_profile
    return profile, note, CanaryVariant.of(fitted.canary)


def _profile_cpu(profile: CostProfile | None, cost_fit: dict[str, Any] | None) -> str | None:
    """The CPU ksmd's costs were measured on: the canary's where the profile was fitted to
    one (None where its recording does not say), else the profile's own."""
    if cost_fit is not None and cost_fit.get("fitted"):
        cpu = cost_fit.get("canary_cpu")
        return cpu if isinstance(cpu, str) else None
    return (profile or CostProfile.default()).cpu


def _cost_warnings(
    tr: Trace,
    host_list: Sequence[str],
    grid: KnobGrid,
    facts: dict[str, dict[str, Any]],
    cost_profile: CostProfile | None,
    cost_fit: dict[str, Any] | None,
    loads: dict[str, HostLoad],
) -> list[str]:
    """What the review says of ksmd's cost: measured on another CPU, a canary's page classes
    set aside, a share fitted to short batches guessed for the longer ones of the grid, costs
    fitted on a quieter host than the one planned."""
    other = cost_cpu_warning(cost_profile or CostProfile.default(), tr.host_cpu, cost_fit)
    fitted = fit_facts(cost_profile, cost_fit)
    short = short_batch_warning(
        fitted, [grid.knobs(p, hz=facts[h]["hz"]) for h in host_list for p in grid.points()]
    )
    busier = busier_load_warning(
        fitted, cost_profile, [loads[h].runnable_per_cpu for h in host_list]
    )
    return [w for w in (other, *_page_classes_warning(cost_fit), short, busier) if w]


def _page_classes_warning(cost_fit: dict[str, Any] | None) -> list[str]:
    """What the review says where the canary's page classes were set aside
    (:func:`planner.engine.costfit.fit_canary`)."""
    weighed = (cost_fit or {}).get("page_classes")
    if not isinstance(weighed, dict) or weighed.get("used") is not False:
        return []
    return [
        "the canary recorded another run whose pages do not line up with the trace's by "
        "their place in their mappings: placed so, its writes broke "
        f"{weighed['with_classes_cow_per_s']:,.0f} merges a second at its own knobs where the "
        f"host broke {weighed['recorded_cow_per_s']:,.0f}; its rates were applied by process "
        f"role instead ({weighed['without_classes_cow_per_s']:,.0f} a second)"
    ]


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

    select_group(prepare(ht_stub, resolver=policy.resolver(enforce_cross_domain=False)), spec.group)


Key = tuple[Any, ...]


@dataclass(frozen=True)
class _Link:
    """The tasks behind one scenario on one host."""

    main: list[Key]  # one replay, or one per domain (deny)
    counterfactual: list[Key]  # allow with 2+ domains: each domain alone
    fits: list[Key]  # the host's fit, or one per domain (deny: domains on separate hosts)
    domains: tuple[str, ...]


@dataclass(frozen=True)
class _Meta:
    """One scenario before it ran."""

    policy: PolicySet
    cross: CrossDomain
    point: dict[str, Any]
    knobs_full: KsmKnobs


@dataclass
class _Plan:
    """Scenarios and the deduplicated tasks behind them."""

    tasks: dict[Key, ReplaySpec | FitSpec] = field(default_factory=dict)
    links: list[dict[str, _Link]] = field(default_factory=list)  # per scenario: host -> link
    meta: list[_Meta] = field(default_factory=list)

    def add(self, spec: ReplaySpec | FitSpec) -> Key:
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


def _run_tasks(
    plan: _Plan,
    tr: Trace,
    host_list: Sequence[str],
    executor: Executor | None,
    max_workers: int | None,
    progress: Progress,
) -> tuple[
    dict[tuple[Any, ...], ReplayOutcome | ExtrapolationFit], dict[str, CowEstimate], Executor
]:
    """The plan's replays and fits, and each host's copy-on-write estimate, on ``executor``
    (a local pool of ``max_workers``, shut down after, when None); and the executor used.
    The estimates read every snapshot's pages: they run as tasks beside the replays, not
    in the client after them (9 s and 2.8 GB for a 16 M-page host), and count in the
    progress like them."""
    ex = executor if executor is not None else local_executor(max_workers)
    try:
        path = str(Path(tr.path).resolve())
        cows = [(path, tr.trace_hash, h) for h in host_list]
        results, writes = _execute(plan, cows, ex, progress, workers=_workers(ex, max_workers))
    finally:
        if executor is None:
            ex.shutdown(wait=True, cancel_futures=True)
    return results, writes, ex


def _execute(
    plan: _Plan,
    cows: Sequence[tuple[str, str, str]],
    executor: Executor,
    progress: Progress,
    *,
    workers: int,
) -> tuple[dict[tuple[Any, ...], ReplayOutcome | ExtrapolationFit], dict[str, CowEstimate]]:
    """Every task submitted (the estimates first, ``run_cow``'s arguments per host: each
    reads every snapshot of its host), their results collected as they come, each one step
    of the progress."""
    batches = _batches(plan, workers)
    progress.start(
        "what-if: replays, fits and copy-on-write estimates", len(plan.tasks) + len(cows)
    )
    host_of: dict[Future[Any], str] = {}
    futures: dict[Future[Any], tuple[ReplaySpec | FitSpec, ...]] = {}
    out: dict[tuple[Any, ...], ReplayOutcome | ExtrapolationFit] = {}
    writes: dict[str, CowEstimate] = {}
    remote = is_remote(executor)
    try:
        for args in cows:
            host_of[executor.submit(run_cow, *args)] = args[2]
        for batch in batches:
            futures[executor.submit(run_batch, batch)] = batch
        for fut in as_completed([*host_of, *futures]):
            if fut in host_of:
                writes[host_of[fut]] = _task_result(fut, remote)
                progress.advance(1)
                continue
            results = _task_result(fut, remote)
            for spec, res in zip(futures[fut], results, strict=False):
                if isinstance(res, TaskFailure):
                    res.reraise()
                out[spec.key] = res
            progress.advance(len(results))
    except BaseException:
        for f in [*host_of, *futures]:
            f.cancel()
        raise
    finally:
        progress.finish()
    return out, {h: writes[h] for h in host_of.values()}


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
        ksmd cost model (default: the shipped profile measured on the trace's CPU, else the
        reference machine's: :func:`planner.engine.cost.profile_for_trace`).
    capacity
        Host memory, headroom, per-worker extra memory and CPU: computes workers per host
        without and with KSM and the capacity gain, with intervals.
    extrapolation
        Replica group, N and bootstrap settings. A fit is made when this or ``capacity``
        is given (default spec when only ``capacity`` is).
    observed, observed_scenario
        A recording of ``ksm-planner observe`` (or its directory) to compare with the
        scenario of matching knobs (or ``observed_scenario``). A canary-mode recording
        (``--ksm-pages``) given as a directory also calibrates the write model of every
        replay with its same-content write rates, as ``replay --observed`` does (unless
        the replay options turn writes off).
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
    host_list = _hosts(tr, hosts)
    sets = _policy_sets(policy_sets)
    grid = grid or KnobGrid()
    opts = replay_options or ReplayOptions()
    opt_items = _options_items(opts)
    if capacity is not None and extrapolation is None:
        extrapolation = ExtrapolationSpec()
    facts = {h: _host_facts(tr, h) for h in host_list}
    matches, warnings, domains, registered = _match(tr, host_list, sets, extrapolation)
    canary_path = _canary_path(observed, opts)
    cost_profile, cost_fit, variant = _fit_cost(tr, host_list, canary_path, cost_profile, opts)
    loads = {h: _host_load(tr, h, opts) for h in host_list}  # read once: warnings, options
    warnings += _cost_warnings(tr, host_list, grid, facts, cost_profile, cost_fit, loads)
    plan = _plan(
        tr,
        host_list,
        sets,
        grid,
        facts,
        domains,
        registered,
        rest=(
            opt_items,
            cost_profile.items() if cost_profile else None,
            canary_path,
            variant,
        ),
        extrapolation=extrapolation,
    )
    results, writes, ex = _run_tasks(plan, tr, host_list, executor, max_workers, progress)
    warnings += _joins_warnings(plan, results, host_list)
    assembled = _assemble(plan, results, host_list, facts, writes)
    comparison = None
    if observed is not None:
        from planner.whatif.observed import compare_observed, load_observed

        obs = load_observed(observed) if isinstance(observed, str | Path) else observed
        comparison = compare_observed(
            obs,  # type: ignore[arg-type]
            [scen for scen, _ in assembled],
            scenario_id=observed_scenario,
            writes=writes,
        )
        warnings += comparison.notes
    model_error, evidence = _evidence(tr, host_list, comparison, capacity, extrapolation)
    warnings += [w for w in [canary_warning(model_error)] if w is not None]
    scenarios, fits = _project(assembled, results, evidence)
    options = SweepOptions(
        **{k: v for k, v in opt_items if k != "host_load"},
        host_load=loads,
        cost_profile=(cost_profile or CostProfile.default()).name,
        cost_profile_cpu=_profile_cpu(cost_profile, cost_fit),
        writes_canary=canary_path,
    )
    return WhatIfResult(
        trace_path=str(Path(tr.path).resolve()),
        trace_hash=tr.trace_hash,
        hosts=tuple(host_list),
        scenarios=scenarios,
        policy_sets=sets,
        matches=matches,
        grid=grid,
        replay_options=options,
        capacity_inputs=capacity,
        extrapolation=extrapolation,
        fits=fits,
        provenance=_provenance(
            tr, host_list, facts, sets, grid, options, plan, ex, capacity, extrapolation
        )
        | ({"cost_fit": cost_fit} if cost_fit is not None else {}),
        knob_effects=knob_effects(scenarios),
        saving_range=saving_range(scenarios),
        warnings=warnings,
        observed=comparison,
        model_error=model_error,
        elapsed_s=time.perf_counter() - t0,
    )


def _evidence(
    tr: Trace,
    host_list: list[str],
    comparison: ObservedComparison | None,
    capacity: CapacityInputs | None,
    extrapolation: ExtrapolationSpec | None,
) -> tuple[ModelError, dict[str, aggregate.Evidence]]:
    """The model's measured error (a canary's, else the published runs') and, per host,
    everything its projection uses (among it the replay's copy-on-write per merged page in
    the scenario compared with the canary, when its knobs are the canary's)."""
    labels = _labels(tr)
    model_error = (canary_error(comparison, labels) if comparison is not None else None) or (
        published_error(labels, soft_dirty=_tracked_with_soft_dirty(tr, host_list))
    )
    rates = comparison.rates if comparison is not None else None
    cow = rates.cow_per_merged_page_per_s if rates is not None else None
    # the replay's own rate at the canary's knobs: what carries the canary's to other knobs
    modelled = (
        rates.replayed_cow_per_merged_page_per_s
        if rates is not None and comparison is not None and comparison.knobs_match
        else None
    )
    evidence = {
        h: aggregate.Evidence(
            capacity,
            extrapolation,
            model_error,
            whole_host_facts(tr, h),
            cow if comparison is not None and comparison.host == h else None,
            modelled if comparison is not None and comparison.host == h else None,
        )
        for h in host_list
    }
    return model_error, evidence


def _tracked_with_soft_dirty(tr: Trace, hosts: Sequence[str]) -> bool:
    """Whether the capture tracked writes with soft-dirty on every host: some interval of
    each was sampled with it, and none without it (docs/capture.md §9.3)."""
    for host in hosts:
        snaps = tr.read_table(host, "snapshots", ["samples", "soft_dirty"])
        sampled = [
            bool(soft)
            for n, soft in zip(
                snaps.column("samples").to_pylist(),
                snaps.column("soft_dirty").to_pylist(),
                strict=True,
            )
            if n
        ]
        if not sampled or not all(sampled):
            return False
    return True


def _labels(tr: Trace) -> dict[str, str]:
    """The trace's capture labels (``workload=django-gunicorn``, ...)."""
    capture = tr.manifest.get("capture") or {}
    labels = capture.get("labels") if isinstance(capture, dict) else None
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}


def _hosts(tr: Trace, hosts: Sequence[str] | None) -> list[str]:
    host_list = list(hosts) if hosts else list(tr.hosts)
    unknown = [h for h in host_list if h not in tr.hosts]
    if unknown:
        raise UsageProblem(
            f"{tr.path} has no host {unknown[0]!r}", hint=f"hosts are: {', '.join(tr.hosts)}"
        )
    if not host_list:
        raise UsageProblem(f"{tr.path} holds no host")
    return host_list


def _policy_sets(policy_sets: Sequence[PolicySet] | None) -> list[PolicySet]:
    sets = list(policy_sets) if policy_sets else [preset(n) for n in DEFAULT_PRESETS]
    names = [s.name for s in sets]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise PolicyError(
            f"two policy sets are named {dup!r}", hint="give each compared set a distinct name"
        )
    return sets


def _match(
    tr: Trace,
    host_list: list[str],
    sets: list[PolicySet],
    extrapolation: ExtrapolationSpec | None,
) -> tuple[
    list[MatchReport], list[str], dict[tuple[str, str], tuple[str, ...]], dict[tuple[str, str], int]
]:
    """Which processes every set registers on every host (checked before any replay)."""
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
    return matches, warnings, domains, registered


def _plan(
    tr: Trace,
    host_list: list[str],
    sets: list[PolicySet],
    grid: KnobGrid,
    facts: dict[str, dict[str, Any]],
    domains: dict[tuple[str, str], tuple[str, ...]],
    registered: dict[tuple[str, str], int],
    *,
    rest: tuple[Any, Any, str | None, CanaryVariant],
    extrapolation: ExtrapolationSpec | None,
) -> _Plan:
    """Every scenario, and the deduplicated replay and fit tasks behind it."""
    trace_path = str(Path(tr.path).resolve())
    points = grid.points()
    host_points = {h: [grid.knobs(p, hz=facts[h]["hz"]) for p in points] for h in host_list}
    for h in host_list:  # every combination valid for every host's HZ
        grid.points(hz=facts[h]["hz"])
    plan = _Plan()
    for s in sets:
        policy_json = s.model_dump_json()
        crosses: tuple[CrossDomain, ...] = grid.cross_domain or (s.cross_domain,)
        for cross in crosses:
            for i, point in enumerate(points):
                links: dict[str, _Link] = {}
                for h in host_list:
                    knobs = _effective(host_points[h][i])
                    if not registered[(h, s.name)]:  # nothing to scan: the knobs change nothing
                        knobs = KsmKnobs(hz=knobs.hz)
                    base = (trace_path, tr.trace_hash, h, policy_json)
                    items = (tuple(sorted(knobs.to_dict().items())), *rest)
                    links[h] = _link(plan, base, items, domains[(h, s.name)], cross, extrapolation)
                plan.links.append(links)
                full = _effective(host_points[host_list[0]][i])
                plan.meta.append(_Meta(s, cross, point, full))
    return plan


def _effective(knobs: KsmKnobs) -> KsmKnobs:
    """The knobs a replay runs with: the advisor sets ``pages_to_scan`` itself."""
    if knobs.advisor == "scan-time":
        return knobs.with_(pages_to_scan=knobs.advisor_min_pages_to_scan)
    return knobs


def _link(
    plan: _Plan,
    base: tuple[str, str, str, str],
    rest: tuple[Any, ...],
    doms: tuple[str, ...],
    cross: CrossDomain,
    extrapolation: ExtrapolationSpec | None,
) -> _Link:
    """The tasks of one scenario on one host (added to ``plan`` once each)."""
    multi = len(doms) >= 2
    if cross == "deny" and multi:
        main = [plan.add(ReplaySpec(*base, d, *rest)) for d in doms]
        cf: list[Key] = []
    else:
        main = [plan.add(ReplaySpec(*base, None, *rest))]
        cf = [plan.add(ReplaySpec(*base, d, *rest)) for d in doms] if multi else []
    fits: list[Key] = []
    if extrapolation is not None:
        if cross == "deny" and multi:  # a host per domain: each domain's replicas alone
            fits = [plan.add(FitSpec(*base, "allow", extrapolation, d)) for d in doms]
        else:
            fits = [plan.add(FitSpec(*base, "allow", extrapolation))]
    return _Link(main, cf, fits, doms)


def _joins_warnings(
    plan: _Plan, results: dict[Key, ReplayOutcome | ExtrapolationFit], host_list: list[str]
) -> list[str]:
    """Per host, the warning of the joins its trace shows and no replay continues
    (:mod:`planner.engine.joins`: one trace, one note, whatever the scenario), named by its
    host (a fleet's what-if gathers the warnings of its traces)."""
    out: list[str] = []
    for h in host_list:
        outcomes = (results[k] for links in plan.links for k in links[h].main)
        found = next(
            (r.joins_warning for r in outcomes if isinstance(r, ReplayOutcome) and r.joins_warning),
            None,
        )
        if found is not None:
            out.append(f"host {h}: {found}")
    return out


def _assemble(
    plan: _Plan,
    results: dict[Key, ReplayOutcome | ExtrapolationFit],
    host_list: list[str],
    facts: dict[str, dict[str, Any]],
    writes: dict[str, CowEstimate],
) -> list[tuple[ScenarioResult, list[tuple[Key, ...]]]]:
    """Scenario results from the task results (not projected yet), each with the fits of
    its hosts (keys into ``results``), and Pareto flags."""
    width = max(2, len(str(len(plan.meta))))
    out: list[tuple[ScenarioResult, list[tuple[Key, ...]]]] = []
    seen_main: dict[Key, str] = {}
    for idx, (meta, links) in enumerate(zip(plan.meta, plan.links, strict=True)):
        sid = f"s{idx + 1:0{width}d}"
        host_results = []
        for h in host_list:
            link = links[h]
            replays = aggregate.HostReplays(
                host=h,
                page_size=facts[h]["page_size"],
                main=tuple(_outcome(results[k]) for k in link.main),
                counterfactual=tuple(_outcome(results[k]) for k in link.counterfactual),
                domains=link.domains,
                writes=writes.get(h),
            )
            host_results.append(aggregate.host_scenario(replays))
        scen = aggregate.scenario(
            sid, meta.policy.name, meta.cross, meta.point, meta.knobs_full, host_results
        )
        key = tuple(k for h in host_list for k in links[h].main)
        scen.same_replay_as = seen_main.get(key)
        seen_main.setdefault(key, sid)
        out.append((scen, [tuple(links[h].fits) for h in host_list]))
    flags = pareto_flags([(float(x.net_saved_bytes), x.ksmd_cores) for x, _ in out])
    for (scen, _), on_front in zip(out, flags, strict=True):
        scen.pareto = on_front
    return out


def _project(
    assembled: list[tuple[ScenarioResult, list[tuple[Key, ...]]]],
    results: dict[Key, ReplayOutcome | ExtrapolationFit],
    evidence: dict[str, aggregate.Evidence],
) -> tuple[list[ScenarioResult], list[ExtrapolationFit]]:
    """Capacity and projection of every scenario (now that the model's error is known)."""
    fits_used: dict[Key, ExtrapolationFit] = {}
    scenarios = []
    for scen, host_fits in assembled:
        for hs, keys in zip(scen.hosts, host_fits, strict=True):
            fits = tuple(f for k in keys if isinstance(f := results.get(k), ExtrapolationFit))
            fits_used.update(
                {k: f for k in keys if isinstance(f := results.get(k), ExtrapolationFit)}
            )
            aggregate.project_host(hs, fits, evidence[hs.host])
        aggregate.finish_scenario(scen, evidence[scen.hosts[0].host].capacity)
        scenarios.append(scen)
    return scenarios, aggregate.attach_curves(scenarios, list(fits_used.values()))


def _provenance(
    tr: Trace,
    host_list: list[str],
    facts: dict[str, dict[str, Any]],
    sets: list[PolicySet],
    grid: KnobGrid,
    options: SweepOptions,
    plan: _Plan,
    ex: Executor,
    capacity: CapacityInputs | None,
    extrapolation: ExtrapolationSpec | None,
) -> dict[str, Any]:
    prov = Provenance(
        trace_path=str(Path(tr.path).resolve()),
        trace_hash=tr.trace_hash,
        hosts=tuple(host_list),
        kernel_release=facts[host_list[0]]["kernel"],
        knobs=grid.to_dict(),
        policy_set=",".join(s.name for s in sets),
        command="whatif",
        extra={
            "policy_sets": [p.model_dump(mode="json") for p in sets],
            "replay_options": to_jsonable(options),
            "cost_profile": options.cost_profile,
            "capacity": to_jsonable(capacity),
            "extrapolation": to_jsonable(extrapolation),
            "run_on": HostInfo.collect().to_dict(),
            "tasks": len(plan.tasks),
            **describe(ex),
        },
    )
    doc: dict[str, Any] = to_jsonable(prov)
    return doc


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


def options_from(**values: Any) -> ReplayOptions:
    """:class:`ReplayOptions` from keyword values, ignoring ``None`` (a CLI helper)."""
    known = {f.name for f in fields(ReplayOptions)}
    return ReplayOptions(**{k: v for k, v in values.items() if v is not None and k in known})


__all__ = ["options_from", "run_whatif"]
