"""Capacity: workers per host without and with KSM, and the gain, with intervals.

The arithmetic, for one host running the base processes and n workers (replicas):

* memory without KSM: ``M0(n) = F(n) * page_size + n * worker_other_bytes``, where
  ``F(n)`` is the fitted count of distinct anonymous frames (:class:`GrowthFit`: the base's
  frames plus ``frames_b`` per worker; fork-shared frames count once) and
  ``worker_other_bytes`` what a worker uses besides anonymous memory (page cache, kernel
  memory, ...: not in the trace, an input);
* KSM's net saving: ``S(n) = r * (F(n) - U(n)) * page_size - m * E(n)``: the ideal saving
  ``F - U`` times the replay's realization ratio ``r`` (steady state under the scenario's
  knobs), minus KSM's metadata: ``m`` bytes (rmap_items and stable nodes, as the replay
  measured them) per mergeable mapped page ``E(n)``;
* memory with KSM: ``M1(n) = M0(n) - S(n)``;
* budget: ``host_mem_bytes - headroom_bytes - headroom_fraction * host_mem_bytes``;
* CPU (when ``host_cpus`` and ``cpu_per_worker`` are given): ``n * cpu_per_worker <=
  host_cpus`` without KSM and ``<= host_cpus - ksmd_cores`` with it (ksmd's steady-state
  CPU from the replay; taken as independent of n, since ksmd's scan rate is set by its
  knobs, not by the amount of memory).

Workers per host are the largest n that fits both; the capacity gain is
``workers_with / workers_without - 1``. The point estimate uses the point fit; the interval
repeats the arithmetic for every bootstrap replicate of the fit and takes percentiles.
A purely memory-bound host saving a fraction ``s`` of its memory gains at most
``1 / (1 - s) - 1`` (``1 / 0.7 - 1``: 30 % saved allows at most +43 %).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from planner.errors import UsageProblem
from planner.jsonable import detail

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from planner.whatif.extrapolate import GrowthFit

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
    worker_other: str,
    host_cpus: float | None = None,
    cpu_per_worker: float | None = None,
) -> CapacityInputs | None:
    """:class:`CapacityInputs` from command-line texts (``64GiB``, ``10%``), or ``None``
    without ``host_mem``."""
    if host_mem is None:
        return None
    room_bytes, room_fraction = parse_headroom(headroom)
    return CapacityInputs(
        host_mem_bytes=parse_size(host_mem),
        headroom_bytes=room_bytes,
        headroom_fraction=room_fraction,
        worker_other_bytes=parse_size(worker_other),
        host_cpus=host_cpus,
        cpu_per_worker=cpu_per_worker,
    )


@dataclass(frozen=True)
class CapacityInputs:
    """What a host offers and what a worker needs besides its anonymous memory.

    Parameters
    ----------
    host_mem_bytes
        Memory of the host.
    headroom_bytes, headroom_fraction
        Memory kept free (absolute and as a fraction of ``host_mem_bytes``; both add up).
    worker_other_bytes
        Per-worker memory that is not anonymous memory in the trace (page cache, kernel
        memory, ...). The trace only holds anonymous pages.
    host_cpus, cpu_per_worker
        Cores of the host and cores a worker needs; when both are given, workers per host
        are CPU-limited too, and ksmd's CPU is taken from the host.
    max_workers
        Upper bound of the search.
    """

    __json_properties__: ClassVar[tuple[str, ...]] = ("budget_bytes",)

    host_mem_bytes: int
    headroom_bytes: int = 0
    headroom_fraction: float = 0.0
    worker_other_bytes: int = 0
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
        if self.worker_other_bytes < 0:
            raise UsageProblem("per-worker memory cannot be negative")
        if (self.host_cpus is None) != (self.cpu_per_worker is None):
            raise UsageProblem(
                "CPU limits need both --host-cpus and --cpu-per-worker", hint="give both or neither"
            )
        if self.host_cpus is not None and not self.host_cpus > 0:
            raise UsageProblem("host CPUs must be positive")
        if self.cpu_per_worker is not None and not self.cpu_per_worker > 0:
            raise UsageProblem("CPU per worker must be positive")
        if self.max_workers < 1:
            raise UsageProblem("max_workers must be at least 1")

    @property
    def budget_bytes(self) -> float:
        """Memory available to the base processes and the workers."""
        return (
            self.host_mem_bytes - self.headroom_bytes - self.headroom_fraction * self.host_mem_bytes
        )

    def cpu_limit(self, ksmd_cores: float = 0.0) -> int | None:
        """Workers the CPUs allow (``None`` without CPU inputs)."""
        if self.host_cpus is None or self.cpu_per_worker is None:
            return None
        free = self.host_cpus - ksmd_cores
        return max(0, math.floor(free / self.cpu_per_worker + 1e-9))


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
    """

    page_size: int
    growth: GrowthFit
    realization_ratio: float
    metadata_bytes_per_page: float
    ksmd_cores: float

    def memory_without_ksm_bytes(
        self, n: float, inputs: CapacityInputs, growth: GrowthFit | None = None
    ) -> float:
        """``M0(n)``: memory of the base and ``n`` workers without KSM."""
        g = growth or self.growth
        return float(g.frames(n)) * self.page_size + n * inputs.worker_other_bytes

    def ksm_saved_bytes(self, n: float, growth: GrowthFit | None = None) -> float:
        """What KSM frees at ``n`` workers before its metadata: the policy ideal times the
        realization ratio (and what an unmerge needs back at once)."""
        g = growth or self.growth
        return self.realization_ratio * float(g.ideal_saved(n)) * self.page_size

    def ksm_net_saved_bytes(self, n: float, growth: GrowthFit | None = None) -> float:
        """``S(n)``: what KSM saves at ``n`` workers, net of its metadata."""
        g = growth or self.growth
        return self.ksm_saved_bytes(n, g) - self.metadata_bytes_per_page * float(
            g.eligible_pages(n)
        )

    def memory_with_ksm_bytes(
        self, n: float, inputs: CapacityInputs, growth: GrowthFit | None = None
    ) -> float:
        """``M1(n) = M0(n) - S(n)``."""
        return self.memory_without_ksm_bytes(n, inputs, growth) - self.ksm_net_saved_bytes(
            n, growth
        )


def max_fit(memory_bytes: Callable[[int], float], budget_bytes: float, *, upper: int) -> int:
    """The largest ``n`` in ``[0, upper]`` with ``memory_bytes(n) <= budget_bytes``.

    ``memory_bytes`` must be non-decreasing. Returns 0 when even ``n = 0`` does not fit
    (the base processes alone exceed the budget).

    Examples
    --------
    >>> max_fit(lambda n: 100 + 10 * n, 1000, upper=10_000)
    90
    """
    if memory_bytes(0) > budget_bytes:
        return 0
    lo, hi = 0, 1
    while hi < upper and memory_bytes(hi) <= budget_bytes:
        lo, hi = hi, min(upper, hi * 2)
    if memory_bytes(hi) <= budget_bytes:
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if memory_bytes(mid) <= budget_bytes:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class CapacityEstimate:
    """Workers per host without and with KSM, the gain, and their intervals.

    Memory figures are per host (summed over the hosts of a fleet); ``host_mem_bytes`` and
    ``headroom_bytes`` restate the inputs (all the memory kept free, absolute and relative).
    """

    __json_properties__: ClassVar[tuple[str, ...]] = ("ksm_saved_fraction_at_workers_with",)

    workers_without: int
    workers_with: int
    limit_without: str  # "memory" | "cpu"
    limit_with: str
    workers_with_interval: tuple[float, float]
    gain: float | None  # workers_with / workers_without - 1
    gain_interval: tuple[float, float] | None
    confidence: float
    per_worker_anon_bytes: float
    worker_other_bytes: int
    base_bytes: float
    ksm_net_saved_bytes: float  # at workers_with (point)
    #: At workers_with, before KSM's metadata: the memory an unmerge needs back at once
    ksm_saved_bytes: float
    ksmd_cores: float
    realization_ratio: float
    host_mem_bytes: float = 0.0
    headroom_bytes: float = 0.0  # memory kept free (host memory - budget)
    #: ``M0(workers_with)``: what the workers with KSM would need without it
    without_ksm_at_workers_with_bytes: float = 0.0
    hosts: int = 1
    replicate_workers_with: tuple[int, ...] = field(default=(), metadata=detail("replicates"))
    replicate_workers_without: tuple[int, ...] = field(default=(), metadata=detail("replicates"))

    @property
    def worker_bytes(self) -> float:
        """Memory one worker needs without KSM: anonymous (from the trace) and other."""
        return self.per_worker_anon_bytes + self.worker_other_bytes

    @property
    def budget_bytes(self) -> float:
        """Memory left for the service after the headroom."""
        return self.host_mem_bytes - self.headroom_bytes

    @property
    def ksm_saved_fraction_at_workers_with(self) -> float:
        """KSM's net saving at ``workers_with`` as a share of what they need without KSM."""
        m = self.without_ksm_at_workers_with_bytes
        return self.ksm_net_saved_bytes / m if m else 0.0


def _gain(with_: float, without: float) -> float | None:
    return with_ / without - 1.0 if without > 0 else None


def _interval(values: Sequence[float], confidence: float) -> tuple[float, float]:
    alpha = (1 - confidence) / 2
    lo, hi = np.percentile(np.asarray(values, dtype=float), [100 * alpha, 100 * (1 - alpha)])
    return float(lo), float(hi)


def _counts(
    model: HostCapacityModel, inputs: CapacityInputs, g: GrowthFit
) -> tuple[int, str, int, str]:
    budget = inputs.budget_bytes
    mem0 = max_fit(
        lambda n: model.memory_without_ksm_bytes(n, inputs, g), budget, upper=inputs.max_workers
    )
    mem1 = max_fit(
        lambda n: model.memory_with_ksm_bytes(n, inputs, g), budget, upper=inputs.max_workers
    )
    cpu0 = inputs.cpu_limit(0.0)
    cpu1 = inputs.cpu_limit(model.ksmd_cores)
    n0, lim0 = (mem0, "memory") if cpu0 is None or mem0 <= cpu0 else (cpu0, "cpu")
    n1, lim1 = (mem1, "memory") if cpu1 is None or mem1 <= cpu1 else (cpu1, "cpu")
    return n0, lim0, n1, lim1


def estimate_capacity(
    model: HostCapacityModel,
    inputs: CapacityInputs,
    *,
    replicates: Sequence[GrowthFit] = (),
    confidence: float = 0.9,
) -> CapacityEstimate:
    """Workers per host without and with KSM under one scenario, with intervals.

    Parameters
    ----------
    model
        The host under the scenario (fit, realization ratio, metadata, ksmd CPU).
    inputs
        Host memory, headroom, per-worker memory besides the trace, CPU.
    replicates
        Bootstrap replicates of ``model.growth``; the intervals are percentiles over them
        (the point when there are none).
    confidence
        Confidence level of the intervals.
    """
    n0, lim0, n1, lim1 = _counts(model, inputs, model.growth)
    reps = [_counts(model, inputs, g) for g in replicates] or [(n0, lim0, n1, lim1)]
    with_reps = [r[2] for r in reps]
    without_reps = [r[0] for r in reps]
    gains = [g for r in reps if (g := _gain(r[2], r[0])) is not None]
    return CapacityEstimate(
        workers_without=n0,
        workers_with=n1,
        limit_without=lim0,
        limit_with=lim1,
        workers_with_interval=_interval(with_reps, confidence),
        gain=_gain(n1, n0),
        gain_interval=_interval(gains, confidence) if gains else None,
        confidence=confidence,
        per_worker_anon_bytes=model.growth.frames_b * model.page_size,
        worker_other_bytes=inputs.worker_other_bytes,
        base_bytes=model.growth.frames_a * model.page_size,
        ksm_net_saved_bytes=model.ksm_net_saved_bytes(n1),
        ksm_saved_bytes=model.ksm_saved_bytes(n1),
        ksmd_cores=model.ksmd_cores,
        realization_ratio=model.realization_ratio,
        host_mem_bytes=float(inputs.host_mem_bytes),
        headroom_bytes=inputs.host_mem_bytes - inputs.budget_bytes,
        without_ksm_at_workers_with_bytes=model.memory_without_ksm_bytes(n1, inputs),
        replicate_workers_with=tuple(with_reps),
        replicate_workers_without=tuple(without_reps),
    )


def combine_hosts(estimates: Sequence[CapacityEstimate]) -> CapacityEstimate:
    """The fleet: workers summed over hosts (replicate by replicate for the intervals)."""
    if len(estimates) == 1:
        return estimates[0]
    conf = estimates[0].confidence
    n0 = sum(e.workers_without for e in estimates)
    n1 = sum(e.workers_with for e in estimates)
    r = min(len(e.replicate_workers_with) for e in estimates)
    with_reps = [sum(e.replicate_workers_with[i] for e in estimates) for i in range(r)] or [n1]
    without_reps = [sum(e.replicate_workers_without[i] for e in estimates) for i in range(r)] or [
        n0
    ]
    gains = [
        g for a, b in zip(with_reps, without_reps, strict=True) if (g := _gain(a, b)) is not None
    ]
    limits_with = {e.limit_with for e in estimates}
    limits_without = {e.limit_without for e in estimates}
    return CapacityEstimate(
        workers_without=n0,
        workers_with=n1,
        limit_without=limits_without.pop() if len(limits_without) == 1 else "mixed",
        limit_with=limits_with.pop() if len(limits_with) == 1 else "mixed",
        workers_with_interval=_interval(with_reps, conf),
        gain=_gain(n1, n0),
        gain_interval=_interval(gains, conf) if gains else None,
        confidence=conf,
        per_worker_anon_bytes=float(np.mean([e.per_worker_anon_bytes for e in estimates])),
        worker_other_bytes=estimates[0].worker_other_bytes,
        base_bytes=sum(e.base_bytes for e in estimates),
        ksm_net_saved_bytes=sum(e.ksm_net_saved_bytes for e in estimates),
        ksm_saved_bytes=sum(e.ksm_saved_bytes for e in estimates),
        ksmd_cores=sum(e.ksmd_cores for e in estimates),
        realization_ratio=float(np.mean([e.realization_ratio for e in estimates])),
        host_mem_bytes=sum(e.host_mem_bytes for e in estimates),
        headroom_bytes=sum(e.headroom_bytes for e in estimates),
        without_ksm_at_workers_with_bytes=sum(
            e.without_ksm_at_workers_with_bytes for e in estimates
        ),
        hosts=sum(e.hosts for e in estimates),
        replicate_workers_with=tuple(with_reps),
        replicate_workers_without=tuple(without_reps),
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
    "HostCapacityModel",
    "capacity_from_options",
    "combine_hosts",
    "estimate_capacity",
    "max_fit",
    "memory_bound_gain",
    "parse_headroom",
    "parse_size",
]
