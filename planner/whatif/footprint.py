"""Whole-host accounting: what a worker and a host need besides the anonymous pages a trace holds.

A trace records the anonymous pages of the traced processes; KSM merges only those. A host
also holds, per worker, the file-backed pages only that worker maps, its shared memory,
its page tables and its kernel objects; and, once per host, the file pages every worker maps
(the interpreter, its libraries: shared, counted once). Capacity is about all of it, and
about CPU. This module turns what is known into typed, sourced inputs of the capacity
model (:class:`CapacityPlan`):

* **measured** -- read from the trace (per process ``smaps_rollup``, page tables, CPU time;
  per host ``/proc/meminfo``, the cgroup's memory, the CPU count), when the trace records it
  (:func:`whole_host_facts`);
* **given** -- a command-line option (``--worker-file``, ``--worker-page-tables``,
  ``--worker-other``, ``--host-cpus``, ``--cpu-per-worker``, ...): it overrides what the trace
  measured;
* **assumed** -- neither: a documented default (:data:`DEFAULTS`, measured on the live Django
  sample of ``traces/django`` by ``docs/measure/worker_footprint.py``; see docs/capacity.md),
  with a plausible range that the review's interval covers.

The review states, input by input, which were measured and which assumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from planner.errors import UsageProblem

if TYPE_CHECKING:
    from planner.trace.io import Trace
    from planner.whatif.capacity import CapacityInputs

Source = Literal["measured", "given", "assumed"]

MIB = 1 << 20
GIB = 1 << 30


@dataclass(frozen=True)
class Sourced:
    """A model input, where it came from, and (for an assumed one) its plausible range.

    ``low``/``high`` bound what the input could be on another deployment of the same kind
    (an assumed input) or across the traced workers (a measured one); the review's interval
    covers that range. A given input has no range: the user stated it.
    """

    __json_properties__: ClassVar[tuple[str, ...]] = ()

    value: float
    source: Source
    basis: str  # what measured it, which option gave it, or where the default comes from
    low: float | None = None
    high: float | None = None

    @property
    def uncertain(self) -> bool:
        """Whether the input has a range wider than its value."""
        return (
            self.low is not None
            and self.high is not None
            and (self.low < self.value or self.high > self.value)
        )

    def at(self, position: float) -> float:
        """The value at ``position`` in its range: 0 is ``low``, 1 is ``high`` (linear)."""
        if self.low is None or self.high is None:
            return self.value
        return self.low + position * (self.high - self.low)

    def quantile(self, q: float) -> float:
        """A draw of the input for ``q`` uniform in [0, 1): uniform from ``low`` to ``value``
        below the median, from ``value`` to ``high`` above it (the value stays the median,
        however lopsided the range)."""
        if self.low is None or self.high is None:
            return self.value
        if q < 0.5:
            return self.low + (self.value - self.low) * (q / 0.5)
        return self.value + (self.high - self.value) * ((q - 0.5) / 0.5)


@dataclass(frozen=True)
class Default:
    """A documented default: its value, range and where it comes from."""

    value: float
    low: float
    high: float
    basis: str

    def sourced(self) -> Sourced:
        """As an assumed input."""
        return Sourced(self.value, "assumed", self.basis, self.low, self.high)


_SAMPLE = "docs/capacity.md, measured on the Django sample"

#: Defaults of the inputs a v1 trace does not measure (docs/capacity.md, measured with
#: ``docs/measure/worker_footprint.py``): the mean over the 8 workers of the live sample,
#: and a range of half to twice that (file-backed: from nothing to the worker's whole
#: proportional share, ``Pss_File``, as if every shared file page grew with the workers).
DEFAULTS: dict[str, Default] = {
    "worker_file_bytes": Default(
        26_100, 0.0, 788_000, f"private file-backed pages per worker ({_SAMPLE})"
    ),
    "worker_shmem_bytes": Default(0.0, 0.0, 0.0, f"Pss_Shmem per worker ({_SAMPLE})"),
    "worker_page_tables_bytes": Default(
        174_000, 87_000, 348_000, f"page tables (VmPTE) per worker ({_SAMPLE})"
    ),
    "worker_kernel_bytes": Default(
        139_000,
        69_500,
        278_000,
        f"kernel stack and per-process kernel objects per worker ({_SAMPLE})",
    ),
    "base_extra_bytes": Default(
        12_870_000,
        6_435_000,
        25_740_000,
        f"file pages mapped once per host, the master's page tables and kernel objects ({_SAMPLE})",
    ),
}

#: Memory per CPU of the planned host when ``--host-cpus`` is not given: 4 GiB per vCPU,
#: the ratio of general-purpose cloud instances; the range covers compute-optimised (2 GiB)
#: to memory-optimised (8 GiB) shapes.
GIB_PER_CPU = 4.0
GIB_PER_CPU_RANGE = (8.0, 2.0)  # (fewest CPUs, most CPUs)


@dataclass(frozen=True)
class ProcessFacts:
    """What the kernel knows about one traced process (trace format v2)."""

    pid: int
    pss_anon_bytes: int
    pss_file_bytes: int
    pss_shmem_bytes: int
    rss_file_bytes: int
    page_tables_bytes: int
    cpu_s: float  # utime + stime over the traced window
    window_s: float


@dataclass(frozen=True)
class WholeHostFacts:
    """What a trace measured about the traced host besides anonymous pages (format v2)."""

    host: str
    processes: tuple[ProcessFacts, ...]
    mem_total_bytes: int | None
    cpus: int | None
    cgroup_memory_current_bytes: int | None  # summed over the traced processes' cgroups
    load_average: float | None  # mean runnable tasks over the traced intervals


def whole_host_facts(trace: Trace, host: str) -> WholeHostFacts | None:
    """The per-process ``smaps_rollup``, page tables and CPU time, and the host's memory and
    CPUs, as the trace recorded them; ``None`` when it recorded none.

    Read through the trace's typed views (:mod:`planner.trace.views`) of the snapshots and
    processes tables only (never the pages). A process's footprint is the one at the last
    snapshot it was alive at; its CPU time is what it used between the first and the last
    snapshot it was alive at (``utime + stime``), over that window. Traces of schema v1 hold
    anonymous pages only (and a v2 trace of a kernel without ``smaps_rollup`` has no PSS):
    this returns ``None`` for them, and the capacity model falls back on what the command
    line gives and on :data:`DEFAULTS`.
    """
    import math

    from planner.trace.views import cgroup_memory, host_memory, intervals, process_footprints

    if trace.schema_version < 2:
        return None
    snaps = trace.read_table(host, "snapshots")
    procs = trace.read_table(host, "processes")
    if not snaps.num_rows:
        return None
    ids = [int(x) for x in snaps.column("snapshot_id").to_numpy()]
    times = [float(x) for x in snaps.column("time_s").to_numpy()]
    first: dict[tuple[int, int], tuple[float, float]] = {}  # (pid, start) -> (time, cpu_s)
    last: dict[tuple[int, int], tuple[float, Any]] = {}  # -> (time, (footprints, row))
    for sid, t in zip(ids, times, strict=True):
        fp = process_footprints(procs, sid)
        for i, (pid, start) in enumerate(zip(fp.pid.tolist(), fp.proc_start.tolist(), strict=True)):
            key = (int(pid), int(start))
            if key not in first and math.isfinite(fp.cpu_s[i]):
                first[key] = (t, float(fp.cpu_s[i]))
            last[key] = (t, (fp, i))
    kib = 1024
    out = []
    for key, (t_end, (fp, i)) in sorted(last.items()):
        pss = (fp.pss_anon_kb[i], fp.pss_file_kb[i], fp.pss_shmem_kb[i], fp.rss_file_kb[i])
        if not all(math.isfinite(v) for v in pss):
            continue  # no smaps_rollup for this process
        t0, cpu0 = first.get(key, (t_end, math.nan))
        cpu_s = float(fp.cpu_s[i]) - cpu0
        pte = fp.vm_pte_kb[i]
        out.append(
            ProcessFacts(
                pid=key[0],
                pss_anon_bytes=int(pss[0] * kib),
                pss_file_bytes=int(pss[1] * kib),
                pss_shmem_bytes=int(pss[2] * kib),
                rss_file_bytes=int(pss[3] * kib),
                page_tables_bytes=int(pte * kib) if math.isfinite(pte) else 0,
                cpu_s=cpu_s if math.isfinite(cpu_s) else 0.0,
                window_s=t_end - t0 if math.isfinite(cpu_s) else 0.0,
            )
        )
    if not out:
        return None
    mem = host_memory(snaps, ids[-1])
    groups = cgroup_memory(trace.read_table(host, "cgroups"), ids[-1])
    current = [g.memory_current_bytes for g in groups if g.memory_current_bytes is not None]
    runnable = [iv.runnable_mean for iv in intervals(snaps, procs) if iv.runnable_mean is not None]
    return WholeHostFacts(
        host=host,
        processes=tuple(out),
        mem_total_bytes=None if mem.mem_total_kb is None else mem.mem_total_kb * kib,
        cpus=mem.cpus_online,
        cgroup_memory_current_bytes=sum(current) if current else None,
        load_average=sum(runnable) / len(runnable) if runnable else None,
    )


@dataclass(frozen=True)
class WorkerFootprint:
    """What one worker needs besides its anonymous memory, and the base's once per host."""

    __json_properties__: ClassVar[tuple[str, ...]] = ("extra_bytes",)

    file_bytes: Sourced  # file-backed pages only this worker maps
    shmem_bytes: Sourced
    page_tables_bytes: Sourced
    kernel_bytes: Sourced  # kernel stack and per-process kernel objects
    base_extra_bytes: Sourced  # once per host: shared file pages, the base's own overhead

    def parts(self) -> tuple[tuple[str, Sourced], ...]:
        """``(name, input)`` of the per-worker parts."""
        return (
            ("file-backed (private)", self.file_bytes),
            ("shared memory", self.shmem_bytes),
            ("page tables", self.page_tables_bytes),
            ("kernel objects", self.kernel_bytes),
        )

    @property
    def extra_bytes(self) -> float:
        """Per-worker memory outside the trace (the sum of the parts)."""
        return sum(p.value for _, p in self.parts())


@dataclass(frozen=True)
class CapacityPlan:
    """Every input of the capacity model of one host, each with its source."""

    __json_properties__: ClassVar[tuple[str, ...]] = ("budget_bytes", "assumed", "measured")

    host_mem_bytes: int
    headroom_bytes: float  # all the memory kept free (absolute and relative, added)
    footprint: WorkerFootprint
    host_cpus: Sourced
    cpu_per_worker: Sourced | None  # None: unknown, no CPU bound
    max_workers: int

    @property
    def budget_bytes(self) -> float:
        """Memory left for the base processes and the workers."""
        return self.host_mem_bytes - self.headroom_bytes

    def inputs(self) -> tuple[tuple[str, Sourced], ...]:
        """``(name, input)`` of every sourced input, in the order a review lists them."""
        out = [
            *((f"worker {n}", p) for n, p in self.footprint.parts()),
            ("per host, once", self.footprint.base_extra_bytes),
            ("host CPUs", self.host_cpus),
        ]
        if self.cpu_per_worker is not None:
            out.append(("CPU per worker", self.cpu_per_worker))
        return tuple(out)

    @property
    def assumed(self) -> tuple[str, ...]:
        """Names of the inputs that are assumed (documented defaults)."""
        return tuple(n for n, p in self.inputs() if p.source == "assumed")

    @property
    def measured(self) -> tuple[str, ...]:
        """Names of the inputs measured from the trace."""
        return tuple(n for n, p in self.inputs() if p.source == "measured")

    def cpu_limit(self, ksmd_cores: float, *, cpus: float | None = None) -> int | None:
        """Workers the CPUs allow once ksmd took its share (``None``: CPU per worker unknown)."""
        if self.cpu_per_worker is None:
            return None
        host = self.host_cpus.value if cpus is None else cpus
        free = max(0.0, host - ksmd_cores)
        return int(free / self.cpu_per_worker.value + 1e-9)


def _given(value: float, option: str) -> Sourced:
    return Sourced(float(value), "given", option)


def _measured_footprint(facts: WholeHostFacts, group_pids: tuple[int, ...]) -> dict[str, Sourced]:
    """Per-worker inputs from a v2 trace's facts (see docs/capacity.md for the estimators)."""
    workers = [p for p in facts.processes if p.pid in set(group_pids)]
    base = [p for p in facts.processes if p.pid not in set(group_pids)]
    if not workers:
        return {}
    m = len(facts.processes)

    def spread(values: list[float], what: str) -> Sourced:
        mean = sum(values) / len(values)
        return Sourced(mean, "measured", what, min(values), max(values))

    # a file page shared by all m traced processes counts 1/m in each Pss: the private part of
    # a worker is (m Pss - Rss) / (m - 1) when every shared page is shared by all of them
    private = [
        max(0.0, (m * p.pss_file_bytes - p.rss_file_bytes) / (m - 1)) if m > 1 else 0.0
        for p in workers
    ]
    shared = max(p.rss_file_bytes for p in facts.processes)
    return {
        "worker_file_bytes": spread(private, "trace: smaps_rollup Pss_File, Rss (per worker)"),
        "worker_shmem_bytes": spread(
            [float(p.pss_shmem_bytes) for p in workers], "trace: smaps_rollup Pss_Shmem"
        ),
        "worker_page_tables_bytes": spread(
            [float(p.page_tables_bytes) for p in workers], "trace: page tables per worker"
        ),
        "base_extra_bytes": Sourced(
            float(shared + sum(p.page_tables_bytes for p in base)),
            "measured",
            "trace: file pages mapped (largest Rss of file pages) and the base's page tables",
        ),
    }


def _cpu_per_worker(facts: WholeHostFacts | None, group_pids: tuple[int, ...]) -> Sourced | None:
    if facts is None:
        return None
    rates = [
        p.cpu_s / p.window_s for p in facts.processes if p.pid in group_pids and p.window_s > 0
    ]
    if not rates:
        return None
    return Sourced(
        sum(rates) / len(rates),
        "measured",
        "trace: CPU time of the workers over the traced window (at the traced load)",
        min(rates),
        max(rates),
    )


def plan_capacity(
    inputs: CapacityInputs,
    *,
    facts: WholeHostFacts | None = None,
    group_pids: tuple[int, ...] = (),
) -> CapacityPlan:
    """Resolve every capacity input: given (an option) over measured (the trace) over assumed.

    Parameters
    ----------
    inputs
        What the command line gave (``None`` fields: not given).
    facts
        What the trace measured (:func:`whole_host_facts`), or ``None``.
    group_pids
        The replicas (workers) of the host, to tell their facts from the base's.
    """
    measured = _measured_footprint(facts, group_pids) if facts is not None else {}
    given = {
        "worker_file_bytes": (inputs.worker_file_bytes, "--worker-file"),
        "worker_shmem_bytes": (inputs.worker_shmem_bytes, "--worker-shmem"),
        "worker_page_tables_bytes": (inputs.worker_page_tables_bytes, "--worker-page-tables"),
        "worker_kernel_bytes": (inputs.worker_other_bytes, "--worker-other"),
        "base_extra_bytes": (inputs.base_other_bytes, "--base-other"),
    }
    chosen: dict[str, Sourced] = {}
    for name, (value, option) in given.items():
        if value is not None:
            chosen[name] = _given(value, option)
        elif name in measured:
            chosen[name] = measured[name]
        else:
            chosen[name] = DEFAULTS[name].sourced()
    footprint = WorkerFootprint(
        file_bytes=chosen["worker_file_bytes"],
        shmem_bytes=chosen["worker_shmem_bytes"],
        page_tables_bytes=chosen["worker_page_tables_bytes"],
        kernel_bytes=chosen["worker_kernel_bytes"],
        base_extra_bytes=chosen["base_extra_bytes"],
    )
    if inputs.host_cpus is not None:
        cpus = _given(inputs.host_cpus, "--host-cpus")
    else:
        gib = inputs.host_mem_bytes / GIB
        cpus = Sourced(
            max(1.0, gib / GIB_PER_CPU),
            "assumed",
            f"{GIB_PER_CPU:g} GiB of memory per CPU, as general-purpose instances "
            "(docs/capacity.md)",
            max(1.0, gib / GIB_PER_CPU_RANGE[0]),
            max(1.0, gib / GIB_PER_CPU_RANGE[1]),
        )
    if inputs.cpu_per_worker is not None:
        cpw: Sourced | None = _given(inputs.cpu_per_worker, "--cpu-per-worker")
    else:
        cpw = _cpu_per_worker(facts, group_pids)
    return CapacityPlan(
        host_mem_bytes=inputs.host_mem_bytes,
        headroom_bytes=inputs.host_mem_bytes - inputs.budget_bytes,
        footprint=footprint,
        host_cpus=cpus,
        cpu_per_worker=cpw,
        max_workers=inputs.max_workers,
    )


def check_sizes(**values: int | None) -> None:
    """Refuse negative sizes of the footprint options (one line naming the option)."""
    for name, v in values.items():
        if v is not None and v < 0:
            raise UsageProblem(f"{name.replace('_', '-')} cannot be negative")


__all__ = [
    "DEFAULTS",
    "GIB_PER_CPU",
    "CapacityPlan",
    "Default",
    "ProcessFacts",
    "Sourced",
    "WholeHostFacts",
    "WorkerFootprint",
    "check_sizes",
    "plan_capacity",
    "whole_host_facts",
]
