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
from planner.engine.writes import CanaryVariant
from planner.whatif.outcome import (
    DomainPair,
    KsmCounters,
    ProcessOutcome,
    ReplayOutcome,
    SteadyState,
    Timeline,
    process_series,
)
from planner.whatif.writes import COW_COLUMNS, CowEstimate, cow_breaks

if TYPE_CHECKING:
    from planner.engine.api import DerivedInput
    from planner.engine.options import ReplayOptions
    from planner.engine.prepare import ReplayInput
    from planner.engine.result import ReplayResult
    from planner.engine.writes import CanaryRates
    from planner.trace.io import Trace
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
    #: A canary recording (``observe --ksm-pages``) whose same-content write rates calibrate
    #: the write model (``replay --observed``; None: the trace's writes alone)
    canary_path: str | None = None
    #: How the canary's rates reach a trace of another run (page classes, the unseen breaks
    #: spread or not), as the fit to its recording chose
    #: (:func:`planner.engine.costfit.fit_canary`)
    canary_variant: CanaryVariant = field(default_factory=CanaryVariant)

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
            self.canary_path,
            self.canary_variant,
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
    #: Fit the replicas of this domain alone (a host of that domain only), or all (None)
    only_domain: str | None = None

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
            self.only_domain,
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


# ----------------------------------------------------------------------------- worker side

_CACHE_LOCK = threading.Lock()
_PREPARED: OrderedDict[tuple[Any, ...], ReplayInput] = OrderedDict()
#: At most this many prepared inputs (the byte budget below bounds big hosts; a fleet of small
#: hosts interleaves many inputs on a worker, and preparing one again costs more than keeping it)
_MAX_PREPARED = 16
#: Bytes of prepared inputs a worker keeps for later tasks (the newest is always kept).
#: Before preparing another input the cache is cut to half of it, so that a worker holds at
#: most this much besides the input being prepared and replayed (a 16 M-page host within a
#: 4 GiB Dask worker: docs/fleet.md §4).
_MAX_PREPARED_BYTES = 1 << 30


def _system_arrow_pool() -> None:
    """Arrow allocates from the C library from now on (in this worker process).

    Its default allocator (mimalloc or jemalloc) keeps what it freed for later, so a worker
    that prepared a big host stays at its peak; from malloc, the trims of ``prepare`` and of
    the replay give it back (a 16 M-page host: 3.3 GB peak instead of 4.3, docs/fleet.md §4).
    """
    import pyarrow as pa

    if pa.default_memory_pool().backend_name != "system":
        pa.set_memory_pool(pa.system_memory_pool())


def _trace(trace_path: str, trace_hash: str) -> Trace:
    from planner.trace.io import open_trace

    trace = open_trace(trace_path)
    if trace.trace_hash != trace_hash:
        raise E.TraceFormatError(f"{trace_path} changed while the what-if ran", hint="run it again")
    return trace


def _evict(limit_bytes: int, keep: int) -> None:
    """Drop the oldest prepared inputs (never the ``keep`` newest) down to ``limit_bytes``."""
    while len(_PREPARED) > keep and (
        len(_PREPARED) > _MAX_PREPARED or sum(i.nbytes for i in _PREPARED.values()) > limit_bytes
    ):
        _PREPARED.popitem(last=False)


def _prepared(
    spec_key: tuple[Any, ...],
    trace_path: str,
    trace_hash: str,
    host: str,
    policy_json: str,
    only_domain: str | None,
) -> ReplayInput:
    """The prepared input of a host under a policy, cached per worker process; the host's
    pages are read one snapshot at a time (:func:`planner.engine.prepare_trace`)."""
    from planner.engine.prepare import prepare_trace
    from planner.policy.model import PolicySet

    with _CACHE_LOCK:
        if spec_key in _PREPARED:
            _PREPARED.move_to_end(spec_key)
            return _PREPARED[spec_key]
        _evict(_MAX_PREPARED_BYTES // 2, keep=0)
    _system_arrow_pool()
    policy = PolicySet.model_validate_json(policy_json)
    inp = prepare_trace(
        _trace(trace_path, trace_hash),
        host,
        # the what-if keeps domains apart itself (one replay per domain when they may not
        # merge), so the one-replay-one-domain check of ``replay --policy-set`` is off
        resolver=policy.resolver(only_domain=only_domain, enforce_cross_domain=False),
        ahead=False,  # a worker's memory is bounded: one snapshot's pages at a time
    )
    _release()
    with _CACHE_LOCK:
        _PREPARED[spec_key] = inp
        _evict(_MAX_PREPARED_BYTES, keep=1)
    return inp


def clear_caches() -> None:
    """Forget the prepared inputs (and their facts) cached in this process."""
    with _CACHE_LOCK:
        _PREPARED.clear()
        _DERIVED.clear()
        _IDEALS.clear()


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


def _domain_pairs(
    inp: ReplayInput, members: list[tuple[int, int, int]]
) -> tuple[tuple[DomainPair, ...], int]:
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
    out = tuple(DomainPair(k, v[0], v[1]) for k, v in sorted(pairs.items()))
    return out, crossing


def _processes(inp: ReplayInput, res: ReplayResult) -> tuple[ProcessOutcome, ...]:
    """The processes of the last snapshot, their registration and ``ksm_stat`` at the end."""
    if not inp.deltas:
        return ()
    present = set(inp.deltas[-1].layout.present.tolist())  # (no snapshot rebuilt for it)
    out = []
    for m in inp.mms:
        if m.mm not in present:
            continue
        st = res.final_processes.get(str(m.pid), {})
        out.append(
            ProcessOutcome(
                pid=m.pid,
                ppid=m.ppid,
                comm=m.comm,
                cgroup=m.info.cgroup,
                labels=dict(m.info.labels),
                mode=m.registration.mode,
                domain=m.registration.domain,
                rule=m.registration.rule,
                ksm_rmap_items=int(st.get("ksm_rmap_items", 0)),
                ksm_merging_pages=int(st.get("ksm_merging_pages", 0)),
                ksm_zero_pages=int(st.get("ksm_zero_pages", 0)),
                ksm_process_profit=int(st.get("ksm_process_profit", 0)),
            )
        )
    return tuple(out)


def run_replay(spec: ReplaySpec) -> ReplayOutcome | TaskFailure:
    """Run one replay task (in a worker). Never raises a planner error: returns it."""
    try:
        return _run_replay(spec)
    except E.PlannerError as err:
        return TaskFailure(type(err).__name__, err.message, err.hint)


def run_cow(trace_path: str, trace_hash: str, host: str) -> CowEstimate | TaskFailure:
    """The copy-on-write estimate of one host's snapshots
    (:func:`planner.whatif.writes.cow_breaks`), as a task: a big host's pages are read in a
    worker, beside the replays, not in the client after them (9 s and 2.8 GB for a 16
    M-page host). Never raises a planner error: returns it."""
    try:
        _system_arrow_pool()
        trace = _trace(trace_path, trace_hash)
        return cow_breaks(
            trace.load_host(host, pages=False), trace.iter_snapshot_pages(host, COW_COLUMNS)
        )
    except E.PlannerError as err:
        return TaskFailure(type(err).__name__, err.message, err.hint)


@dataclass(frozen=True)
class _Ideals:
    """What a replay's outcome needs of the input's snapshots in full."""

    #: the policy ideal (frames) at every snapshot
    by_snapshot: tuple[int, ...]
    #: of the last snapshot: the policy ideal, the zero-content frames an ideal KSM frees
    #: (the replay's own count is at most its saving) and the mergeable pages
    last: tuple[int, int, int]


_IDEALS: OrderedDict[tuple[Any, ...], _Ideals] = OrderedDict()


def _ideals(prepare_key: tuple[Any, ...], inp: ReplayInput, use_zero_pages: bool) -> _Ideals:
    """The :class:`_Ideals` of an input, in one pass over its snapshots (each rebuilt from
    the one before, so two are held at most), once per input and before a replay, so that
    their sorts never add to a replay's peak memory.

    No snapshot stays cached with the input: the last one, taken by index, was kept
    (``SnapshotSequence``) through the replays that followed and rebuilt a second time by
    the pass over all of them (the 16 M-page worker's peak, 3.42 GB, docs/fleet.md §4).
    """
    from planner.whatif.extrapolate import policy_ideal_saved_frames, zero_saved_frames

    key = (*prepare_key, use_zero_pages)
    with _CACHE_LOCK:
        if key in _IDEALS:
            return _IDEALS[key]
    by_snapshot: list[int] = []
    last = (0, 0, 0)
    for k, rows in enumerate(inp.snapshots):
        by_snapshot.append(policy_ideal_saved_frames(rows, use_zero_pages=use_zero_pages))
        if k == len(inp.snapshots) - 1:
            eligible = int(np.count_nonzero(rows.eligible))
            zero = zero_saved_frames(rows, use_zero_pages=use_zero_pages, saved_frames=eligible)
            last = (by_snapshot[-1], zero, eligible)
        _release()  # the sorts' arrays (the snapshot itself goes as the pass moves on)
    out = _Ideals(tuple(by_snapshot), last)
    with _CACHE_LOCK:
        _IDEALS[key] = out
        while len(_IDEALS) > 64:
            _IDEALS.popitem(last=False)
    return out


_CANARIES: OrderedDict[tuple[str, int, CanaryVariant], CanaryRates] = OrderedDict()


def _canary(path: str, page_size: int, variant: CanaryVariant | None = None) -> CanaryRates:
    """The canary's write rates (read once per worker process), in ``variant`` (page
    classes on or off, the unseen breaks spread or not; the default's otherwise)."""
    from planner.engine.writes import canary_rates
    from planner.trace.recording import read_observed

    variant = variant or CanaryVariant()
    key = (path, page_size, variant)
    with _CACHE_LOCK:
        if key in _CANARIES:
            return _CANARIES[key]
    rates = variant.apply(canary_rates(read_observed(path), page_size))
    with _CACHE_LOCK:
        _CANARIES[key] = rates
        while len(_CANARIES) > 4:
            _CANARIES.popitem(last=False)
    return rates


#: The input of the batch running in this process as its replays run it (grown, with the
#: canary's rates: :func:`planner.engine.derive_input`), by key: at most one, dropped at the
#: batch's end, so that a worker holds no more than while one replay runs.
_DERIVED: dict[tuple[Any, ...], DerivedInput] = {}


def _derived(
    spec: ReplaySpec, inp: ReplayInput, opts: ReplayOptions, canary: CanaryRates | None
) -> DerivedInput:
    """The derived input of a replay task: made once for the replays of one batch (one
    host under one policy set at several knob settings), whose growth and canary
    calibration do not depend on the knobs."""
    from planner.engine.api import derivation, derive_input

    key = (*spec.prepare_key, spec.canary_path, spec.canary_variant, *derivation(opts))
    with _CACHE_LOCK:
        if key in _DERIVED:
            return _DERIVED[key]
        _DERIVED.clear()  # the one before goes before this one is made
    derived = derive_input(inp, opts, canary)
    with _CACHE_LOCK:
        _DERIVED.clear()
        _DERIVED[key] = derived
    return derived


def _release() -> None:
    from planner.engine.fast.apply import release_memory

    release_memory()


def _run_replay(spec: ReplaySpec) -> ReplayOutcome:
    from planner._heap import retained_heap_below
    from planner.engine import CostProfile, KsmKnobs, ReplayOptions, replay

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
    ideals = _ideals(spec.prepare_key, inp, knobs.use_zero_pages)
    ideal, zero_freed, eligible = ideals.last
    canary = (
        _canary(spec.canary_path, inp.page_size, spec.canary_variant) if spec.canary_path else None
    )
    # a replay allocates and frees arrays of a snapshot's size at every batch: kept for
    # reuse (planner._heap; 45 -> 29 s for the Django what-if with its canary, the
    # page faults and trims gone), where the worker's memory has room for it
    with retained_heap_below(inp.max_rows):
        res = replay(_derived(spec, inp, opts, canary), knobs=knobs, options=opts)
    truth = res.final_truth
    pairs, crossing = _domain_pairs(inp, res.final_node_members)
    applied = [t for t in res.snapshot_applied_s if t is not None]
    return ReplayOutcome(
        spec_key=spec.key,
        host=spec.host,
        only_domain=spec.only_domain,
        page_size=res.page_size,
        duration_s=res.duration_s,
        final_truth=truth,
        final_counters=KsmCounters.of(res.final_counters, rmap_items=truth.rmap_items),
        cost=res.cost,
        steady=SteadyState.of_replay(res),
        policy_ideal_saved_frames=ideal,
        zero_saved_frames=min(zero_freed, max(0, truth.saved_frames)),
        eligible_pages=eligible,
        registered_processes=sum(1 for m in inp.mms if m.registration.mode != "off"),
        policy_ideal_by_snapshot=ideals.by_snapshot,
        # (from the deltas: each snapshot rebuilt in full for its time was the old way)
        snapshot_times_s=tuple((t - inp.times_ns[0]) / 1e9 for t in inp.times_ns),
        last_snapshot_s=applied[-1] if applied else None,
        domain_pairs=pairs,
        cross_domain_ksm_pages=crossing,
        processes=_processes(inp, res),
        timeline=Timeline.of_replay(res),
        process_timeline=process_series(res),
        elapsed_s=time.perf_counter() - t0,
        cow_breaks_per_s=res.cow_breaks_per_s,
        growth_summary=_note_text(res.provenance.get("growth"), "summary"),
        **_joins_fields(res.provenance.get("joins")),
        **_floor_fields(res.provenance.get("writes")),
    )


def _floor_fields(note: object) -> dict[str, Any]:
    """The outcome's ``writes_*`` fields from the provenance's ``writes``: the last traced
    interval's rows at the sampler's floor, its rows written, and whether its write phases
    followed the sampling passes (none where no writes were replayed)."""
    floor = note.get("last_interval_floor") if isinstance(note, dict) else None
    if not isinstance(floor, dict):
        return {}
    timed = note.get("phases_timed_by_passes") if isinstance(note, dict) else None
    return {
        "writes_floored_rows": int(floor["floored_rows"]),
        "writes_written_rows": int(floor["written_rows"]),
        "writes_timed_by_passes": bool(timed[-1]) if timed else None,
    }


def _joins_fields(note: object) -> dict[str, Any]:
    """The outcome's ``joins_*`` fields from the provenance's ``joins`` (None where it
    measured nothing)."""
    if not isinstance(note, dict) or not note.get("intervals"):
        return {}
    return {
        "joins_per_s": float(note["joins_per_s"]),
        "joins_held_rows": int(note["held_rows"]),
        "joins_turnover_per_min": (
            None if note.get("turnover_per_min") is None else float(note["turnover_per_min"])
        ),
        "joins_warning": _note_text(note, "warning"),
        "joins_canary_rows": int(note.get("canary_rows") or 0),
    }


def _note_text(note: object, key: str) -> str | None:
    """A provenance note's text ``key`` (``provenance["growth"]["summary"]``), if recorded."""
    text = note.get(key) if isinstance(note, dict) else None
    return text if isinstance(text, str) else None


def run_fit(spec: FitSpec) -> ExtrapolationFit | TaskFailure:
    """Run one extrapolation fit (in a worker). Never raises a planner error: returns it."""
    try:
        from planner.whatif.extrapolate import extrapolate

        with _CACHE_LOCK:  # a fit holds its own arrays: not beside a replay's derived input
            _DERIVED.clear()
        inp = _prepared(
            (spec.trace_path, spec.trace_hash, spec.host, spec.policy_json, spec.only_domain),
            spec.trace_path,
            spec.trace_hash,
            spec.host,
            spec.policy_json,
            spec.only_domain,
        )
        codes = None
        if spec.cross_domain == "deny":
            codes, _ = domain_codes(inp)
        from planner.policy.model import PolicySet

        name = PolicySet.model_validate_json(spec.policy_json).name
        return extrapolate(
            inp,
            spec=spec.spec,
            policy_set=name,
            cross_domain=spec.cross_domain,
            domain_of_mm=codes,
            only_domain=spec.only_domain,
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
    try:
        for spec in specs:
            res = run_task(spec)
            out.append(res)
            if isinstance(res, TaskFailure):
                break
    finally:
        with _CACHE_LOCK:
            _DERIVED.clear()
    return out


__all__ = [
    "FitSpec",
    "ReplaySpec",
    "TaskFailure",
    "clear_caches",
    "domain_codes",
    "run_batch",
    "run_cow",
    "run_fit",
    "run_replay",
    "run_task",
]
