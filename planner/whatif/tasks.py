"""The units of work of a what-if run, as executors run them (locally or on Dask workers).

A task is a small, picklable spec (the trace *path*, a host, a policy set as JSON, knobs);
the worker loads the host itself, prepares it under the policy (cached per worker
process), replays or fits, and returns a small result. Errors of the planner are returned
as :class:`TaskFailure` (exceptions with keyword arguments do not survive pickling) and
raised again on the client.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from planner import errors as E

if TYPE_CHECKING:
    from planner.engine.prepare import ReplayInput
    from planner.engine.result import ReplayResult
    from planner.trace.io import HostTrace
    from planner.whatif.extrapolate import ExtrapolationFit, ExtrapolationSpec


@dataclass(frozen=True)
class ReplaySpec:
    """One replay: a host under a policy set (optionally one domain alone) and knobs."""

    trace_path: str
    trace_hash: str
    host: str
    policy_json: str
    only_domain: str | None
    knobs: tuple[tuple[str, Any], ...]  # full KsmKnobs as sorted items
    options: tuple[tuple[str, Any], ...]  # ReplayOptions fields other than cost
    cost_profile: tuple[tuple[str, Any], ...] | None  # None: the default profile

    @property
    def key(self) -> tuple[Any, ...]:
        """Identity of the replay (equal specs give equal results: the replay is deterministic)."""
        return (
            "replay",
            self.trace_path,
            self.trace_hash,
            self.host,
            self.policy_json,
            self.only_domain,
            self.knobs,
            self.options,
            self.cost_profile,
        )

    @property
    def prepare_key(self) -> tuple[Any, ...]:
        """Identity of the prepared input it needs."""
        return (self.trace_path, self.trace_hash, self.host, self.policy_json, self.only_domain)


@dataclass(frozen=True)
class FitSpec:
    """One extrapolation fit: a host under a policy set, contents merged within domains or not."""

    trace_path: str
    trace_hash: str
    host: str
    policy_json: str
    cross_domain: str  # "allow" or "deny"
    spec: ExtrapolationSpec

    @property
    def key(self) -> tuple[Any, ...]:
        """Identity of the fit."""
        return (
            "fit",
            self.trace_path,
            self.trace_hash,
            self.host,
            self.policy_json,
            self.cross_domain,
            self.spec,
        )


@dataclass(frozen=True)
class TaskFailure:
    """A planner error raised in a worker, carried back to the client."""

    kind: str
    message: str
    hint: str | None

    def reraise(self) -> None:
        """Raise the error again (same class when it is one of :mod:`planner.errors`)."""
        cls = getattr(E, self.kind, None)
        if not (isinstance(cls, type) and issubclass(cls, E.PlannerError)):
            cls = E.PlannerError
        raise cls(self.message, hint=self.hint)


@dataclass
class Timeline:
    """The replay over time, in columns (lists), small enough to ship back and to plot.

    ``grid``: the regular time grid (``t_s``, saved frames, net saved bytes, frames
    without KSM, pages_sharing, pages_shared, general_profit). ``scans``: one row per full
    scan (its end ``t_s``, ``scan_time_s``, ``cpu_s``, ``pages_to_scan``, cumulative
    ``pages_scanned``/``pages_skipped``, pages_sharing, saved frames, net saved bytes).
    ``processes``: per full scan and process, the ksm_stat counters.
    """

    grid: dict[str, list[Any]] = field(default_factory=dict)
    scans: dict[str, list[Any]] = field(default_factory=dict)
    processes: dict[str, list[Any]] = field(default_factory=dict)

    def frames(self) -> dict[str, Any]:
        """The three tables as pandas DataFrames."""
        import pandas as pd

        return {name: pd.DataFrame(getattr(self, name)) for name in ("grid", "scans", "processes")}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of columns."""
        return {"grid": self.grid, "scans": self.scans, "processes": self.processes}


@dataclass
class ReplayOutcome:
    """What one replay measured, reduced to what the what-if needs."""

    spec_key: tuple[Any, ...]
    host: str
    only_domain: str | None
    page_size: int
    duration_s: float
    final_truth: dict[str, int]
    final_counters: dict[str, int]
    cost: dict[str, Any]
    steady_cpu_percent: float
    steady_scans: int
    pages_scanned_per_full_scan: float | None
    pages_skipped_per_full_scan: float | None
    ideal_saved_frames: int
    eligible_pages: int
    registered_processes: int
    last_snapshot_s: float | None
    domain_pairs: list[dict[str, Any]]
    cross_domain_ksm_pages: int
    #: final attribution per live process: pid, ppid, comm, cgroup, labels, mode, domain,
    #: rule, and its ksm_stat counters (ksm_rmap_items, ksm_merging_pages, ksm_zero_pages,
    #: ksm_process_profit)
    processes: list[dict[str, Any]]
    timeline: Timeline
    elapsed_s: float

    def saving_points(self) -> list[tuple[float, float]]:
        """(t_s, saved frames) over the replay: grid and scan ends, in time order."""
        pts = list(
            zip(
                self.timeline.grid.get("t_s", []),
                self.timeline.grid.get("saved_frames", []),
                strict=True,
            )
        )
        pts += list(
            zip(
                self.timeline.scans.get("t_s", []),
                self.timeline.scans.get("saved_frames", []),
                strict=True,
            )
        )
        return sorted((float(t), float(v)) for t, v in pts)


# ----------------------------------------------------------------------------- worker side

_CACHE_LOCK = threading.Lock()
_HOSTS: OrderedDict[tuple[str, str, str], HostTrace] = OrderedDict()
_PREPARED: OrderedDict[tuple[Any, ...], ReplayInput] = OrderedDict()
_MAX_HOSTS = 1
_MAX_PREPARED = 4


def _host(trace_path: str, trace_hash: str, host: str) -> HostTrace:
    from planner.trace.io import open_trace

    key = (trace_path, trace_hash, host)
    with _CACHE_LOCK:
        if key in _HOSTS:
            _HOSTS.move_to_end(key)
            return _HOSTS[key]
    trace = open_trace(trace_path)
    if trace.trace_hash != trace_hash:
        raise E.TraceFormatError(f"{trace_path} changed while the what-if ran", hint="run it again")
    ht = trace.load_host(host)
    with _CACHE_LOCK:
        _HOSTS[key] = ht
        while len(_HOSTS) > _MAX_HOSTS:
            _HOSTS.popitem(last=False)
    return ht


def _prepared(
    spec_key: tuple[Any, ...],
    trace_path: str,
    trace_hash: str,
    host: str,
    policy_json: str,
    only_domain: str | None,
) -> ReplayInput:
    from planner.engine.prepare import prepare
    from planner.policy.model import PolicySet

    with _CACHE_LOCK:
        if spec_key in _PREPARED:
            _PREPARED.move_to_end(spec_key)
            return _PREPARED[spec_key]
    policy = PolicySet.model_validate_json(policy_json)
    inp = prepare(
        _host(trace_path, trace_hash, host), resolver=policy.resolver(only_domain=only_domain)
    )
    with _CACHE_LOCK:
        _PREPARED[spec_key] = inp
        while len(_PREPARED) > _MAX_PREPARED:
            _PREPARED.popitem(last=False)
    return inp


def clear_caches() -> None:
    """Forget the hosts and prepared inputs cached in this process."""
    with _CACHE_LOCK:
        _HOSTS.clear()
        _PREPARED.clear()


def domain_codes(inp: ReplayInput) -> tuple[np.ndarray[Any, np.dtype[np.int64]], list[str]]:
    """A domain code per mm (registered processes; ``off`` ones get -1) and the domain names."""
    from planner.policy.resolve import domain_key

    names = sorted({domain_key(m.registration) for m in inp.mms if m.registration.mode != "off"})
    index = {n: i for i, n in enumerate(names)}
    codes = np.array(
        [index[domain_key(m.registration)] if m.registration.mode != "off" else -1 for m in inp.mms]
        or [0],
        dtype=np.int64,
    )[: len(inp.mms)]
    return codes, names


def _steady(res: ReplayResult) -> tuple[float, int, float | None, float | None]:
    """Steady-state ksmd CPU %, scans used, pages scanned and skipped per full scan."""
    scans = res.scans
    if not scans:
        return 0.0, 0, None, None
    applied = [t for t in res.snapshot_applied_s if t is not None]
    last = applied[-1] if applied else 0.0
    first = next(
        (i for i, s in enumerate(scans) if s.t_s - s.scan_time_s >= last - 1e-9), len(scans) - 1
    )
    window = scans[first:]
    # wall time from the end of the scan before the window to the end of the last scan: the
    # sleep between two scans belongs to neither scan's scan_time_s
    start = scans[first - 1].t_s if first > 0 else scans[first].t_s - scans[first].scan_time_s
    wall = scans[-1].t_s - start
    cpu = sum(s.cpu_s for s in window)
    before = scans[first - 1].counters if first > 0 else {"pages_scanned": 0, "pages_skipped": 0}
    after = scans[-1].counters
    n = len(window)
    scanned = (after["pages_scanned"] - before["pages_scanned"]) / n
    skipped = (after["pages_skipped"] - before["pages_skipped"]) / n
    return (100.0 * cpu / wall if wall > 0 else 0.0), n, float(scanned), float(skipped)


def _timeline(res: ReplayResult) -> Timeline:
    grid: dict[str, list[Any]] = {
        "t_s": [g.t_s for g in res.grid],
        "saved_frames": [g.truth.saved_frames for g in res.grid],
        "net_saved_bytes": [g.truth.net_saved_bytes for g in res.grid],
        "frames_without_ksm": [g.truth.frames_without_ksm for g in res.grid],
        "pages_sharing": [g.counters.get("pages_sharing", 0) for g in res.grid],
        "pages_shared": [g.counters.get("pages_shared", 0) for g in res.grid],
        "general_profit": [g.counters.get("general_profit", 0) for g in res.grid],
    }
    scans: dict[str, list[Any]] = {
        "full_scans": [s.full_scans for s in res.scans],
        "t_s": [s.t_s for s in res.scans],
        "scan_time_s": [s.scan_time_s for s in res.scans],
        "cpu_s": [s.cpu_s for s in res.scans],
        "pages_to_scan": [s.pages_to_scan for s in res.scans],
        "pages_scanned": [s.counters.get("pages_scanned", 0) for s in res.scans],
        "pages_skipped": [s.counters.get("pages_skipped", 0) for s in res.scans],
        "pages_sharing": [s.counters.get("pages_sharing", 0) for s in res.scans],
        "saved_frames": [s.truth.saved_frames for s in res.scans],
        "net_saved_bytes": [s.truth.net_saved_bytes for s in res.scans],
    }
    procs: dict[str, list[Any]] = {
        k: []
        for k in (
            "full_scans",
            "t_s",
            "pid",
            "ksm_rmap_items",
            "ksm_merging_pages",
            "ksm_process_profit",
        )
    }
    for s in res.scans:
        for pid, st in s.processes.items():
            procs["full_scans"].append(s.full_scans)
            procs["t_s"].append(s.t_s)
            procs["pid"].append(int(pid))
            procs["ksm_rmap_items"].append(st.get("ksm_rmap_items", 0))
            procs["ksm_merging_pages"].append(st.get("ksm_merging_pages", 0))
            procs["ksm_process_profit"].append(st.get("ksm_process_profit", 0))
    return Timeline(grid=grid, scans=scans, processes=procs)


def _domain_pairs(
    inp: ReplayInput, members: list[tuple[int, int, int]]
) -> tuple[list[dict[str, Any]], int]:
    """Which domains share KSM pages at the end, and the KSM pages shared across domains."""
    from planner.policy.resolve import domain_key

    by_node: dict[int, dict[str, int]] = {}
    for node, mm, items in members:
        d = domain_key(inp.mms[mm].registration)
        by_node.setdefault(node, {})
        by_node[node][d] = by_node[node].get(d, 0) + items
    pairs: dict[tuple[str, ...], list[int]] = {}
    crossing = 0
    for doms in by_node.values():
        if len(doms) < 2:
            continue
        crossing += len(doms) - 1
        key = tuple(sorted(doms))
        acc = pairs.setdefault(key, [0, 0])
        acc[0] += 1
        acc[1] += sum(doms.values())
    out = [
        {"domains": list(k), "ksm_pages": v[0], "mappings": v[1]} for k, v in sorted(pairs.items())
    ]
    return out, crossing


def run_replay(spec: ReplaySpec) -> ReplayOutcome | TaskFailure:
    """Run one replay task (in a worker). Never raises a planner error: returns it."""
    try:
        return _run_replay(spec)
    except E.PlannerError as err:
        return TaskFailure(type(err).__name__, err.message, err.hint)


def _run_replay(spec: ReplaySpec) -> ReplayOutcome:
    from planner.engine import CostProfile, KsmKnobs, ReplayOptions, replay
    from planner.whatif.extrapolate import ideal_saved_frames

    t0 = time.perf_counter()
    inp = _prepared(
        spec.prepare_key,
        spec.trace_path,
        spec.trace_hash,
        spec.host,
        spec.policy_json,
        spec.only_domain,
    )
    knobs = KsmKnobs(**dict(spec.knobs))
    cost = (
        CostProfile.from_dict(dict(spec.cost_profile))
        if spec.cost_profile
        else CostProfile.default()
    )
    opts = ReplayOptions(**dict(spec.options), cost=cost)
    res = replay(inp, knobs=knobs, options=opts)
    cpu_pct, n_steady, scanned, skipped = _steady(res)
    last = inp.snapshots[-1] if inp.snapshots else None
    ideal = ideal_saved_frames(last, use_zero_pages=knobs.use_zero_pages) if last is not None else 0
    eligible = int(np.count_nonzero(last.eligible)) if last is not None else 0
    pairs, crossing = _domain_pairs(inp, res.final_node_members)
    procs = []
    final = res.final_processes
    for m in inp.mms:
        if last is None or m.mm not in set(last.mm_present.tolist()):
            continue
        st = final.get(str(m.pid), {})
        procs.append(
            {
                "pid": m.pid,
                "ppid": m.ppid,
                "comm": m.comm,
                "cgroup": m.info.cgroup,
                "labels": dict(m.info.labels),
                "mode": m.registration.mode,
                "domain": m.registration.domain,
                "rule": m.registration.rule,
                **st,
            }
        )
    applied = [t for t in res.snapshot_applied_s if t is not None]
    return ReplayOutcome(
        spec_key=spec.key,
        host=spec.host,
        only_domain=spec.only_domain,
        page_size=res.page_size,
        duration_s=res.duration_s,
        final_truth=res.final_truth.to_dict(),
        final_counters=dict(res.final_counters),
        cost=res.cost.to_dict(),
        steady_cpu_percent=cpu_pct,
        steady_scans=n_steady,
        pages_scanned_per_full_scan=scanned,
        pages_skipped_per_full_scan=skipped,
        ideal_saved_frames=ideal,
        eligible_pages=eligible,
        registered_processes=sum(1 for m in inp.mms if m.registration.mode != "off"),
        last_snapshot_s=applied[-1] if applied else None,
        domain_pairs=pairs,
        cross_domain_ksm_pages=crossing,
        processes=procs,
        timeline=_timeline(res),
        elapsed_s=time.perf_counter() - t0,
    )


def run_fit(spec: FitSpec) -> ExtrapolationFit | TaskFailure:
    """Run one extrapolation fit (in a worker). Never raises a planner error: returns it."""
    try:
        from planner.whatif.extrapolate import extrapolate

        inp = _prepared(
            (spec.trace_path, spec.trace_hash, spec.host, spec.policy_json, None),
            spec.trace_path,
            spec.trace_hash,
            spec.host,
            spec.policy_json,
            None,
        )
        codes = None
        if spec.cross_domain == "deny":
            codes, _ = domain_codes(inp)
        from planner.policy.model import PolicySet

        name = PolicySet.model_validate_json(spec.policy_json).name
        return extrapolate(
            inp, spec=spec.spec, policy_set=name, cross_domain=spec.cross_domain, domain_of_mm=codes
        )
    except E.PlannerError as err:
        return TaskFailure(type(err).__name__, err.message, err.hint)


def run_task(spec: ReplaySpec | FitSpec) -> ReplayOutcome | ExtrapolationFit | TaskFailure:
    """Run a task of either kind."""
    if isinstance(spec, ReplaySpec):
        return run_replay(spec)
    return run_fit(spec)


def run_batch(
    specs: tuple[ReplaySpec | FitSpec, ...],
) -> list[ReplayOutcome | ExtrapolationFit | TaskFailure]:
    """Run several tasks in one worker, in order (the function executors are given).

    Replays of one host under one policy set share the prepared input (cached per worker
    process), so batching them keeps each worker from preparing the same input again.
    """
    out: list[ReplayOutcome | ExtrapolationFit | TaskFailure] = []
    for spec in specs:
        res = run_task(spec)
        out.append(res)
        if isinstance(res, TaskFailure):
            break
    return out


__all__ = [
    "FitSpec",
    "ReplayOutcome",
    "ReplaySpec",
    "TaskFailure",
    "Timeline",
    "clear_caches",
    "domain_codes",
    "run_batch",
    "run_fit",
    "run_replay",
    "run_task",
]
