"""Capacity: workers per host without and with KSM, the gain, and the risks at that size.

The arithmetic, for one host running the base processes and n workers (replicas), with
every input resolved and sourced by :func:`planner.whatif.footprint.plan_capacity`:

* memory without KSM: ``M0(n) = F(n) * page_size + B + n * W``, where ``F(n)`` is the fitted
  count of distinct anonymous frames (:class:`GrowthFit`: the base's frames plus
  ``frames_b`` per worker; fork-shared frames count once), ``W`` what a worker needs
  besides its anonymous memory (its own file-backed pages, shared memory, page tables,
  kernel objects) and ``B`` what the host needs once besides the base's anonymous memory
  (the file pages every worker maps, counted once; the base's own overhead);
* KSM's net saving: ``S(n) = k * r * (F(n) - U(n)) * page_size - m * E(n)``: the ideal
  saving ``F - U`` times the replay's realization ratio ``r`` (steady state under the
  scenario's knobs) times ``k``, the model's measured error (a canary's observed / predicted
  ``pages_sharing``, or the published live-validation runs:
  :mod:`planner.whatif.uncertainty`), minus KSM's metadata: ``m`` bytes (rmap_items and
  stable nodes, as the replay measured them) per mergeable mapped page ``E(n)``;
* memory with KSM: ``M1(n) = M0(n) - S(n)``;
* budget: ``host_mem_bytes - headroom_bytes - headroom_fraction * host_mem_bytes``;
* CPU, when the CPU a worker needs is known (measured or given): ``n * cpu_per_worker <=
  host_cpus`` without KSM and ``<= host_cpus - ksmd_cores`` with it (ksmd's steady-state CPU
  from the replay; taken as independent of n, since ksmd's scan rate is set by its knobs,
  not by the amount of memory).

Workers per host are the largest n that fits both; the capacity gain is
``workers_with / workers_without - 1``. The point estimate takes every input at its centre;
the intervals repeat the arithmetic for draws of every source of uncertainty (replicas,
model error, assumed inputs, traced time: :mod:`planner.whatif.uncertainty`) and take
percentiles. A purely memory-bound host saving a fraction ``s`` of its memory gains at most
``1 / (1 - s) - 1`` (``1 / 0.7 - 1``: 30 % saved allows at most +43 %).

At the planned size the estimate also gives what switching KSM off would need:
``unmerge_bytes`` (KSM's saving before its metadata, all needed back at once) against the
memory free on the host then, and how many workers would have to be drained first so that
the host does not run out of memory.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from planner.errors import UsageProblem
from planner.jsonable import detail
from planner.whatif.footprint import check_sizes
from planner.whatif.uncertainty import (
    SOURCES,
    SourceInterval,
    basis,
    dominant,
    draw_sets,
    percentile_interval,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from planner.whatif.extrapolate import GrowthFit
    from planner.whatif.footprint import CapacityPlan
    from planner.whatif.uncertainty import Draw, ModelError, TimeSpread

#: ``(per worker, per host)`` memory outside the trace, in bytes.
Extra = tuple[float, float]
SOURCES_ORDER: tuple[str, ...] = SOURCES

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "kb": 1000,
    "m": 1 << 20,
    "mib": 1 << 20,
    "mb": 1000**2,
    "g": 1 << 30,
    "gib": 1 << 30,
    "gb": 1000**3,
    "t": 1 << 40,
    "tib": 1 << 40,
    "tb": 1000**4,
}
_SIZE_RX = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """Bytes of a size such as ``64GiB``, ``64G`` (binary), ``64GB`` (decimal) or ``4096``.

    Raises
    ------
    UsageProblem
        Not a size.

    Examples
    --------
    >>> parse_size("64GiB"), parse_size("1.5 MiB"), parse_size("2GB")
    (68719476736, 1572864, 2000000000)
    """
    m = _SIZE_RX.match(str(text))
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS:
        raise UsageProblem(
            f"{text!r} is not a size", hint="use e.g. 64GiB, 512MiB, 64G or a number of bytes"
        )
    return round(float(m.group(1)) * _UNITS[unit])


def parse_headroom(text: str) -> tuple[int, float]:
    """``(headroom_bytes, headroom_fraction)`` of ``10%`` or a size such as ``4GiB``.

    Examples
    --------
    >>> parse_headroom("10%"), parse_headroom("1GiB")
    ((0, 0.1), (1073741824, 0.0))
    """
    t = str(text).strip()
    if t.endswith("%"):
        try:
            pct = float(t[:-1])
        except ValueError:
            raise UsageProblem(f"{text!r} is not a percentage", hint="use e.g. 10%") from None
        if not 0 <= pct < 100:
            raise UsageProblem(f"headroom {text} must be in [0%, 100%)")
        return 0, pct / 100.0
    return parse_size(t), 0.0


def capacity_from_options(
    host_mem: str | None,
    *,
    headroom: str,
    worker_other: str | None = None,
    worker_file: str | None = None,
    worker_shmem: str | None = None,
    worker_page_tables: str | None = None,
    base_other: str | None = None,
    host_cpus: float | None = None,
    cpu_per_worker: float | None = None,
) -> CapacityInputs | None:
    """:class:`CapacityInputs` from command-line texts (``64GiB``, ``10%``), or ``None``
    without ``host_mem``. A size option left out (``None``) is measured from the trace or
    assumed (:func:`planner.whatif.footprint.plan_capacity`)."""
    if host_mem is None:
        return None
    room_bytes, room_fraction = parse_headroom(headroom)

    def size(text: str | None) -> int | None:
        return None if text is None else parse_size(text)

    return CapacityInputs(
        host_mem_bytes=parse_size(host_mem),
        headroom_bytes=room_bytes,
        headroom_fraction=room_fraction,
        worker_file_bytes=size(worker_file),
        worker_shmem_bytes=size(worker_shmem),
        worker_page_tables_bytes=size(worker_page_tables),
        worker_other_bytes=size(worker_other),
        base_other_bytes=size(base_other),
        host_cpus=host_cpus,
        cpu_per_worker=cpu_per_worker,
    )


@dataclass(frozen=True)
class CapacityInputs:
    """What the command line says about the planned host and its workers.

    Every per-worker size left ``None`` is measured from the trace when it records it, else
    assumed (:data:`planner.whatif.footprint.DEFAULTS`); a given one overrides both.

    Parameters
    ----------
    host_mem_bytes
        Memory of the host.
    headroom_bytes, headroom_fraction
        Memory kept free (absolute and as a fraction of ``host_mem_bytes``; both add up).
    worker_file_bytes, worker_shmem_bytes, worker_page_tables_bytes
        Per worker: file-backed pages only it maps, shared memory, page tables.
    worker_other_bytes
        Per worker: kernel objects and anything else outside the trace.
    base_other_bytes
        Once per host: the file pages every worker maps and the base processes' overhead.
    host_cpus, cpu_per_worker
        Cores of the host (default: assumed from its memory) and cores a worker needs
        (default: measured from the trace, else unknown: no CPU bound).
    max_workers
        Upper bound of the search.
    """

    __json_properties__: ClassVar[tuple[str, ...]] = ("budget_bytes",)

    host_mem_bytes: int
    headroom_bytes: int = 0
    headroom_fraction: float = 0.0
    worker_file_bytes: int | None = None
    worker_shmem_bytes: int | None = None
    worker_page_tables_bytes: int | None = None
    worker_other_bytes: int | None = None
    base_other_bytes: int | None = None
    host_cpus: float | None = None
    cpu_per_worker: float | None = None
    max_workers: int = 10_000_000

    def __post_init__(self) -> None:
        if self.host_mem_bytes <= 0:
            raise UsageProblem("host memory must be positive", hint="give --host-mem, e.g. 64GiB")
        if self.headroom_bytes < 0 or not 0 <= self.headroom_fraction < 1:
            raise UsageProblem("headroom cannot be negative or 100 % or more")
        if self.budget_bytes <= 0:
            raise UsageProblem("the headroom leaves no memory for workers", hint="lower --headroom")
        check_sizes(
            worker_file=self.worker_file_bytes,
            worker_shmem=self.worker_shmem_bytes,
            worker_page_tables=self.worker_page_tables_bytes,
            worker_other=self.worker_other_bytes,
            base_other=self.base_other_bytes,
        )
        if self.host_cpus is not None and not self.host_cpus > 0:
            raise UsageProblem("host CPUs must be positive", hint="give --host-cpus, e.g. 16")
        if self.cpu_per_worker is not None and not self.cpu_per_worker > 0:
            raise UsageProblem("CPU per worker must be positive", hint="e.g. --cpu-per-worker 0.05")
        if self.max_workers < 1:
            raise UsageProblem("max_workers must be at least 1")

    @property
    def budget_bytes(self) -> float:
        """Memory available to the base processes and the workers."""
        return (
            self.host_mem_bytes - self.headroom_bytes - self.headroom_fraction * self.host_mem_bytes
        )


@dataclass(frozen=True)
class HostCapacityModel:
    """One host under one scenario: the fitted growth and what the replay measured.

    Parameters
    ----------
    page_size
        Bytes per page.
    growth
        Fitted frames without and with an ideal KSM, and mergeable pages, per n workers.
    realization_ratio
        Replay's steady-state saved frames / ideal saved frames (0 when KSM is off).
    metadata_bytes_per_page
        KSM metadata per mergeable mapped page (replay's metadata bytes / mergeable pages).
    ksmd_cores
        ksmd's steady-state CPU, in cores (0 when KSM is off).
    saving_factor
        The model's measured error on KSM's saving (observed / predicted; 1: none applied).
    """

    page_size: int
    growth: GrowthFit
    realization_ratio: float
    metadata_bytes_per_page: float
    ksmd_cores: float
    saving_factor: float = 1.0

    def memory_without_ksm_bytes(
        self, n: float, extra: Extra = (0.0, 0.0), growth: GrowthFit | None = None
    ) -> float:
        """``M0(n)``: memory of the base and ``n`` workers without KSM; ``extra`` is
        ``(per worker, per host)`` memory outside the trace."""
        g = growth or self.growth
        return _frames(g, n) * self.page_size + extra[1] + n * extra[0]

    def ksm_saved_bytes(
        self, n: float, growth: GrowthFit | None = None, factor: float | None = None
    ) -> float:
        """What KSM frees at ``n`` workers before its metadata: the policy ideal times the
        realization ratio times the model's measured error (and what an unmerge needs back
        at once)."""
        g = growth or self.growth
        k = self.saving_factor if factor is None else factor
        return k * self.realization_ratio * _ideal(g, n) * self.page_size

    def ksm_net_saved_bytes(
        self, n: float, growth: GrowthFit | None = None, factor: float | None = None
    ) -> float:
        """``S(n)``: what KSM saves at ``n`` workers, net of its metadata."""
        g = growth or self.growth
        return self.ksm_saved_bytes(n, g, factor) - self.metadata_bytes_per_page * _eligible(g, n)

    def memory_with_ksm_bytes(
        self,
        n: float,
        extra: Extra = (0.0, 0.0),
        growth: GrowthFit | None = None,
        factor: float | None = None,
    ) -> float:
        """``M1(n) = M0(n) - S(n)``."""
        return self.memory_without_ksm_bytes(n, extra, growth) - self.ksm_net_saved_bytes(
            n, growth, factor
        )


def _whole(n: float) -> bool:
    return isinstance(n, int) or float(n).is_integer()


def _frames(g: GrowthFit, n: float) -> float:
    return g.frames_at(int(n)) if _whole(n) and n >= 0 else float(g.frames(n))


def _ideal(g: GrowthFit, n: float) -> float:
    return g.ideal_saved_at(int(n)) if _whole(n) and n >= 0 else float(g.ideal_saved(n))


def _eligible(g: GrowthFit, n: float) -> float:
    return g.eligible_at(int(n)) if _whole(n) and n >= 0 else float(g.eligible_pages(n))


def max_fit(
    memory_bytes: Callable[[int], float],
    budget_bytes: float,
    *,
    upper: int,
    hint: int | None = None,
) -> int:
    """The largest ``n`` in ``[0, upper]`` with ``memory_bytes(n) <= budget_bytes``.

    ``memory_bytes`` must be non-decreasing. Returns 0 when even ``n = 0`` does not fit
    (the base processes alone exceed the budget). ``hint``: a guess of the answer (another
    draw's, :func:`estimate_capacity`): the search gallops from it, up or down, and then
    bisects, so that an answer near the guess costs a few evaluations instead of twice
    ``log2(upper)``; the answer is the same.

    Examples
    --------
    >>> max_fit(lambda n: 100 + 10 * n, 1000, upper=10_000)
    90
    >>> max_fit(lambda n: 100 + 10 * n, 1000, upper=10_000, hint=85)
    90
    """
    if hint is None:
        if memory_bytes(0) > budget_bytes:
            return 0
        lo, hi = 0, 1
        while hi < upper and memory_bytes(hi) <= budget_bytes:
            lo, hi = hi, min(upper, hi * 2)
        if memory_bytes(hi) <= budget_bytes:
            return hi
    else:
        bracket = _bracket(memory_bytes, budget_bytes, upper, min(max(hint, 0), upper))
        if isinstance(bracket, int):
            return bracket
        lo, hi = bracket
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if memory_bytes(mid) <= budget_bytes:
            lo = mid
        else:
            hi = mid
    return lo


def _bracket(
    memory_bytes: Callable[[int], float], budget_bytes: float, upper: int, start: int
) -> int | tuple[int, int]:
    """:func:`max_fit` from ``start``: the answer, or ``(lo, hi)`` with ``lo`` fitting and
    ``hi`` not (steps doubling away from ``start``)."""
    step = 1
    if memory_bytes(start) <= budget_bytes:  # the answer is start or above
        lo = start
        while lo < upper:
            nxt = min(upper, lo + step)
            if memory_bytes(nxt) > budget_bytes:
                return lo, nxt
            lo, step = nxt, 2 * step
        return upper
    hi = start  # the answer is below start
    while hi > 0:
        nxt = max(0, hi - step)
        if memory_bytes(nxt) <= budget_bytes:
            return nxt, hi
        hi, step = nxt, 2 * step
    return 0  # even 0 does not fit


@dataclass(frozen=True)
class SourceDraws:
    """Workers per host over the draws of one source of uncertainty (or all: ``combined``)."""

    source: str
    workers_with: tuple[int, ...]
    workers_without: tuple[int, ...]


@dataclass(frozen=True)
class CapacityEstimate:
    """Workers per host without and with KSM, the gain, its intervals, and the risks there.

    Memory figures are per host (summed over the hosts of a fleet); ``host_mem_bytes`` and
    ``headroom_bytes`` restate the inputs (all the memory kept free, absolute and relative).
    ``gain_interval`` and ``workers_with_interval`` are the combined intervals (every source
    of uncertainty together); ``intervals`` holds one per source and the combined one.
    """

    __json_properties__: ClassVar[tuple[str, ...]] = (
        "ksm_saved_fraction_at_workers_with",
        "ksmd_host_share",
        "free_at_workers_with_bytes",
        "drain_workers",
        "worker_bytes",
    )

    workers_without: int
    workers_with: int
    limit_without: str  # "memory" | "cpu"
    limit_with: str
    workers_with_interval: tuple[float, float]
    gain: float | None  # workers_with / workers_without - 1
    gain_interval: tuple[float, float] | None
    confidence: float
    per_worker_anon_bytes: float
    worker_extra_bytes: float  # per worker, outside the trace
    base_bytes: float  # the base's anonymous memory
    base_extra_bytes: float  # per host, outside the trace
    ksm_net_saved_bytes: float  # at workers_with (point)
    #: At workers_with, before KSM's metadata: the memory an unmerge needs back at once
    ksm_saved_bytes: float
    ksmd_cores: float
    realization_ratio: float
    saving_factor: float  # the model's measured error applied (observed / predicted)
    metadata_bytes_per_page: float  # KSM metadata per mergeable mapped page
    host_mem_bytes: float
    headroom_bytes: float  # memory kept free (host memory - budget)
    #: ``M0(workers_with)``: what the workers with KSM would need without it
    without_ksm_at_workers_with_bytes: float
    memory_limit_without: int
    memory_limit_with: int
    cpu_limit_without: int | None  # None: the CPU a worker needs is unknown
    cpu_limit_with: int | None
    host_cpus: float
    #: The most workers whose KSM could be switched off without running out of memory (the
    #: unmerge needs its saving back while the merged state is still in memory)
    unmerge_fits_workers: int
    intervals: tuple[SourceInterval, ...] = ()
    dominant_source: str | None = None
    plan: CapacityPlan | None = None
    hosts: int = 1
    draws: tuple[SourceDraws, ...] = field(default=(), metadata=detail("replicates"))

    @property
    def worker_bytes(self) -> float:
        """Memory one worker needs without KSM: anonymous (from the trace) and the rest."""
        return self.per_worker_anon_bytes + self.worker_extra_bytes

    @property
    def budget_bytes(self) -> float:
        """Memory left for the service after the headroom."""
        return self.host_mem_bytes - self.headroom_bytes

    @property
    def ksm_saved_fraction_at_workers_with(self) -> float:
        """KSM's net saving at ``workers_with`` as a share of what they need without KSM."""
        m = self.without_ksm_at_workers_with_bytes
        return self.ksm_net_saved_bytes / m if m else 0.0

    @property
    def ksmd_host_share(self) -> float:
        """ksmd's steady-state CPU as a share of the host's CPUs."""
        return self.ksmd_cores / self.host_cpus if self.host_cpus > 0 else math.inf

    @property
    def free_at_workers_with_bytes(self) -> float:
        """Memory free on the host at ``workers_with`` with KSM (the headroom included)."""
        return self.host_mem_bytes - (
            self.without_ksm_at_workers_with_bytes - self.ksm_net_saved_bytes
        )

    @property
    def unmerge_shortfall_bytes(self) -> float:
        """How much an unmerge at ``workers_with`` would lack (0: it fits in the free memory)."""
        return max(0.0, self.ksm_saved_bytes - self.free_at_workers_with_bytes)

    @property
    def drain_workers(self) -> int:
        """Workers to drain before KSM can be switched off at ``workers_with`` (0: none)."""
        return max(0, self.workers_with - self.unmerge_fits_workers)

    def interval(self, source: str) -> SourceInterval | None:
        """The interval of one source (``combined`` for all)."""
        return next((i for i in self.intervals if i.source == source), None)


def _gain(with_: float, without: float) -> float | None:
    return with_ / without - 1.0 if without > 0 else None


def _interval(values: Sequence[float], confidence: float) -> tuple[float, float]:
    return percentile_interval(values, confidence)


def _limits(
    model: HostCapacityModel,
    plan: CapacityPlan,
    d: Draw,
    hints: tuple[int, int] | None = None,
) -> tuple[int, int, int | None, int | None]:
    """Memory and CPU limits without and with KSM under one draw (``hints``: the memory
    limits of another draw, where :func:`max_fit`'s search starts)."""
    g = d.growth or model.growth
    extra = (d.worker_extra_bytes, d.host_extra_bytes)
    budget = plan.budget_bytes
    top = plan.max_workers
    h0, h1 = hints if hints is not None else (None, None)
    mem0 = max_fit(
        lambda n: model.memory_without_ksm_bytes(n, extra, g), budget, upper=top, hint=h0
    )
    mem1 = max_fit(
        lambda n: model.memory_with_ksm_bytes(n, extra, g, d.saving_factor),
        budget,
        upper=top,
        hint=h1,
    )
    cpu0 = plan.cpu_limit(0.0, cpus=d.host_cpus)
    cpu1 = plan.cpu_limit(model.ksmd_cores, cpus=d.host_cpus)
    return mem0, mem1, cpu0, cpu1


def _counts(
    model: HostCapacityModel,
    plan: CapacityPlan,
    d: Draw,
    hints: tuple[int, int] | None = None,
) -> tuple[int, str, int, str]:
    return _bound(*_limits(model, plan, d, hints))


def _bound(mem0: int, mem1: int, cpu0: int | None, cpu1: int | None) -> tuple[int, str, int, str]:
    """Workers without and with KSM, and what bounds each, from the limits."""
    n0, lim0 = (mem0, "memory") if cpu0 is None or mem0 <= cpu0 else (cpu0, "cpu")
    n1, lim1 = (mem1, "memory") if cpu1 is None or mem1 <= cpu1 else (cpu1, "cpu")
    return n0, lim0, n1, lim1


def _source_interval(
    source: str, counts: Sequence[tuple[int, str, int, str]], confidence: float, text: str
) -> SourceInterval:
    gains = [g for r in counts if (g := _gain(r[2], r[0])) is not None]
    lo, hi = _interval([r[2] for r in counts], confidence)
    glo, ghi = _interval(gains, confidence) if gains else (None, None)
    return SourceInterval(source, glo, ghi, lo, hi, text)


def estimate_capacity(
    model: HostCapacityModel,
    plan: CapacityPlan,
    *,
    replicates: Sequence[GrowthFit] = (),
    model_error: ModelError | None = None,
    time: TimeSpread | None = None,
    confidence: float = 0.9,
    seed: int = 0,
) -> CapacityEstimate:
    """Workers per host without and with KSM under one scenario, with intervals.

    Parameters
    ----------
    model
        The host under the scenario (fit, realization ratio, metadata, ksmd CPU); its
        ``saving_factor`` is replaced by ``model_error``'s point when one is given.
    plan
        Host memory, headroom, per-worker memory besides the trace, CPU: every input sourced.
    replicates
        Bootstrap replicates of ``model.growth`` (sampling).
    model_error, time
        The model's measured error and the spread over the traced time (None: not known).
    confidence
        Confidence level of the intervals.
    seed
        Seed of the draws (results are deterministic).
    """
    if model_error is not None:
        model = replace(model, saving_factor=model_error.point)
    point, sets = draw_sets(
        replicates=replicates, model=model_error, time=time, plan=plan, seed=seed
    )
    mem0, mem1, cpu0, cpu1 = _limits(model, plan, point)
    n0, lim0, n1, lim1 = _bound(mem0, mem1, cpu0, cpu1)
    # every draw's search starts at the point's limits: the same counts, a third of the
    # evaluations (each one a growth fit evaluated in Python)
    per_set = {
        name: [_counts(model, plan, d, (mem0, mem1)) for d in draws] for name, draws in sets.items()
    }
    intervals = tuple(
        _source_interval(
            name,
            per_set[name],
            confidence,
            basis(name, model=model_error, time=time, plan=plan, replicates=len(replicates)),
        )
        for name in (*SOURCES_ORDER, "combined")
    )
    combined = per_set["combined"]
    gains = [g for r in combined if (g := _gain(r[2], r[0])) is not None]
    extra = (point.worker_extra_bytes, point.host_extra_bytes)
    unmerge_fits = max_fit(
        lambda n: model.memory_with_ksm_bytes(n, extra) + model.ksm_saved_bytes(n),
        float(plan.host_mem_bytes),
        upper=plan.max_workers,
    )
    return CapacityEstimate(
        workers_without=n0,
        workers_with=n1,
        limit_without=lim0,
        limit_with=lim1,
        workers_with_interval=_interval([r[2] for r in combined], confidence),
        gain=_gain(n1, n0),
        gain_interval=_interval(gains, confidence) if gains else None,
        confidence=confidence,
        per_worker_anon_bytes=model.growth.frames_b * model.page_size,
        worker_extra_bytes=point.worker_extra_bytes,
        base_bytes=model.growth.frames_a * model.page_size,
        base_extra_bytes=point.host_extra_bytes,
        ksm_net_saved_bytes=model.ksm_net_saved_bytes(n1),
        ksm_saved_bytes=model.ksm_saved_bytes(n1),
        ksmd_cores=model.ksmd_cores,
        realization_ratio=model.realization_ratio,
        saving_factor=model.saving_factor,
        metadata_bytes_per_page=model.metadata_bytes_per_page,
        host_mem_bytes=float(plan.host_mem_bytes),
        headroom_bytes=plan.headroom_bytes,
        without_ksm_at_workers_with_bytes=model.memory_without_ksm_bytes(n1, extra),
        memory_limit_without=mem0,
        memory_limit_with=mem1,
        cpu_limit_without=cpu0,
        cpu_limit_with=cpu1,
        host_cpus=plan.host_cpus.value,
        unmerge_fits_workers=unmerge_fits,
        intervals=intervals,
        dominant_source=dominant(intervals),
        plan=plan,
        draws=tuple(
            SourceDraws(name, tuple(r[2] for r in rows), tuple(r[0] for r in rows))
            for name, rows in per_set.items()
        ),
    )


def _sum_draws(estimates: Sequence[CapacityEstimate], source: str) -> tuple[list[int], list[int]]:
    parts = [next((d for d in e.draws if d.source == source), None) for e in estimates]
    if any(p is None for p in parts) or not parts:
        return [], []
    ok = [p for p in parts if p is not None]
    r = min(len(p.workers_with) for p in ok)
    return (
        [sum(p.workers_with[i] for p in ok) for i in range(r)],
        [sum(p.workers_without[i] for p in ok) for i in range(r)],
    )


def combine_hosts(estimates: Sequence[CapacityEstimate]) -> CapacityEstimate:
    """The fleet: workers summed over hosts (draw by draw for the intervals)."""
    if len(estimates) == 1:
        return estimates[0]
    conf = estimates[0].confidence
    n0 = sum(e.workers_without for e in estimates)
    n1 = sum(e.workers_with for e in estimates)
    intervals = []
    draws = []
    for source in (*SOURCES_ORDER, "combined"):
        with_d, without_d = _sum_draws(estimates, source)
        with_d, without_d = with_d or [n1], without_d or [n0]
        rows = [(b, "", a, "") for a, b in zip(with_d, without_d, strict=True)]
        first = estimates[0].interval(source)
        intervals.append(_source_interval(source, rows, conf, first.basis if first else ""))
        draws.append(SourceDraws(source, tuple(with_d), tuple(without_d)))
    combined = next(i for i in intervals if i.source == "combined")
    limits_with = {e.limit_with for e in estimates}
    limits_without = {e.limit_without for e in estimates}

    def total_opt(values: list[int | None]) -> int | None:
        return None if any(v is None for v in values) else sum(v for v in values if v is not None)

    return CapacityEstimate(
        workers_without=n0,
        workers_with=n1,
        limit_without=limits_without.pop() if len(limits_without) == 1 else "mixed",
        limit_with=limits_with.pop() if len(limits_with) == 1 else "mixed",
        workers_with_interval=(combined.workers_low, combined.workers_high),
        gain=_gain(n1, n0),
        gain_interval=(combined.gain_low, combined.gain_high)
        if combined.gain_low is not None and combined.gain_high is not None
        else None,
        confidence=conf,
        per_worker_anon_bytes=float(np.mean([e.per_worker_anon_bytes for e in estimates])),
        worker_extra_bytes=float(np.mean([e.worker_extra_bytes for e in estimates])),
        base_bytes=sum(e.base_bytes for e in estimates),
        base_extra_bytes=sum(e.base_extra_bytes for e in estimates),
        ksm_net_saved_bytes=sum(e.ksm_net_saved_bytes for e in estimates),
        ksm_saved_bytes=sum(e.ksm_saved_bytes for e in estimates),
        ksmd_cores=sum(e.ksmd_cores for e in estimates),
        realization_ratio=float(np.mean([e.realization_ratio for e in estimates])),
        saving_factor=estimates[0].saving_factor,
        metadata_bytes_per_page=float(np.mean([e.metadata_bytes_per_page for e in estimates])),
        host_mem_bytes=sum(e.host_mem_bytes for e in estimates),
        headroom_bytes=sum(e.headroom_bytes for e in estimates),
        without_ksm_at_workers_with_bytes=sum(
            e.without_ksm_at_workers_with_bytes for e in estimates
        ),
        memory_limit_without=sum(e.memory_limit_without for e in estimates),
        memory_limit_with=sum(e.memory_limit_with for e in estimates),
        cpu_limit_without=total_opt([e.cpu_limit_without for e in estimates]),
        cpu_limit_with=total_opt([e.cpu_limit_with for e in estimates]),
        host_cpus=sum(e.host_cpus for e in estimates),
        unmerge_fits_workers=sum(e.unmerge_fits_workers for e in estimates),
        intervals=tuple(intervals),
        dominant_source=dominant(intervals),
        plan=estimates[0].plan,
        hosts=sum(e.hosts for e in estimates),
        draws=tuple(draws),
    )


def memory_bound_gain(saved_fraction: float) -> float:
    """The most capacity a memory-bound host gains from saving ``saved_fraction`` of memory.

    Examples
    --------
    >>> round(memory_bound_gain(0.3), 4)
    0.4286
    """
    if not 0 <= saved_fraction < 1:
        raise UsageProblem(f"saved fraction {saved_fraction} must be in [0, 1)")
    return 1.0 / (1.0 - saved_fraction) - 1.0


__all__ = [
    "CapacityEstimate",
    "CapacityInputs",
    "Extra",
    "HostCapacityModel",
    "SourceDraws",
    "capacity_from_options",
    "combine_hosts",
    "estimate_capacity",
    "max_fit",
    "memory_bound_gain",
    "parse_headroom",
    "parse_size",
]
