"""Fleets: many hosts under the same scenarios, reported per host and for the whole fleet.

A capacity review usually covers many hosts. A *fleet* is either a directory of traces (each
subdirectory holding a ``ksm-trace.json`` is one trace, in name order) or one trace with
several host partitions (``host=<name>/``), or both: every host of every trace is a member.
:func:`fleet_members` finds them and gives each a label unique in the fleet (the host name,
or ``<trace directory>/<host>`` when two traces hold hosts of the same name).

:func:`run_fleet` runs :func:`planner.whatif.run_whatif` once per trace, all of them at once
on one executor (a local process pool, or a Dask cluster), so every replay and fit of every
host is in flight together and the cores stay busy however the work is spread over the
traces. Results are put together in member order, never in completion order: the same
fleet gives the same figures on any executor.

Every fleet figure is computed here, once (the review and the command line only render
them): per scenario, the fleet totals (memory and ksmd cores summed over the hosts), the
distribution across hosts (:class:`Distribution`: quantiles of the net saving, of ksmd's CPU
and of the capacity gain), and, with a capacity model, the fleet's workers without and with
KSM (summed bootstrap replicate by replicate for the interval,
:func:`planner.whatif.capacity.combine_hosts`), the extra workers and what they are worth in
hosts. Each host's figures are those of its own what-if (:class:`~planner.whatif.result.
HostScenario`); :class:`FleetHost` restates the ones a fleet view compares.
"""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from planner._progress import NULL_PROGRESS, Progress
from planner.errors import TraceFormatError, UsageProblem
from planner.jsonable import skip, to_jsonable
from planner.provenance import HostInfo
from planner.trace import schema as S
from planner.whatif.capacity import CapacityEstimate, combine_hosts
from planner.whatif.executors import InlineExecutor, describe, local_executor
from planner.whatif.grid import knob_label

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence

    import pandas as pd

    from planner.whatif.result import HostScenario, ScenarioResult, WhatIfResult

MIB = 1 << 20
#: The quantiles of a :class:`Distribution` (besides min, max and mean).
QUANTILES = (0.1, 0.5, 0.9)
#: At most this many traces' what-ifs are submitted at once (one client thread each).
MAX_CONCURRENT_TRACES = 64


# ----------------------------------------------------------------------------- members


@dataclass(frozen=True)
class FleetMember:
    """One host of a fleet: where it is and its label (unique in the fleet)."""

    label: str
    trace_path: str
    host: str


def _trace_dirs(root: Path) -> list[Path]:
    """The traces ``root`` designates: itself, or its subdirectories that are traces."""
    if (root / S.MANIFEST_NAME).is_file():
        return [root]
    if not root.is_dir():
        from planner.trace.io import open_trace

        open_trace(root)  # raises the precise error (missing, a file, ...)
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    traces = [d for d in subdirs if (d / S.MANIFEST_NAME).is_file()]
    if not traces:
        raise TraceFormatError(
            f"{root} is neither a trace nor a directory of traces "
            f"(no {S.MANIFEST_NAME} in it or in any subdirectory)",
            hint="give a trace directory (from capture or ingest) or a directory of them",
        )
    return traces


def fleet_members(
    path: str | os.PathLike[str], hosts: Sequence[str] | None = None
) -> list[FleetMember]:
    """The hosts of the trace or directory of traces at ``path``, in order.

    ``hosts`` keeps only these (each a label, or a host name that is unique in the fleet).

    Raises
    ------
    TraceFormatError
        ``path`` is not a trace nor a directory holding traces, or a trace is damaged (4).
    UsageProblem
        A name of ``hosts`` matches no member, or several (2).
    """
    from planner.trace.io import open_trace

    found: list[tuple[Path, str]] = []
    for d in _trace_dirs(Path(path)):
        tr = open_trace(d)
        if not tr.hosts:
            raise TraceFormatError(f"{d} holds no host", hint="re-create the trace")
        found += [(d, h) for h in tr.hosts]
    names = [h for _, h in found]
    unique = len(set(names)) == len(names)
    members = [FleetMember(h if unique else f"{d.name}/{h}", str(d.resolve()), h) for d, h in found]
    if not hosts:
        return members
    out: list[FleetMember] = []
    for name in hosts:
        hit = [m for m in members if m.label == name] or [m for m in members if m.host == name]
        if len(hit) != 1:
            labels = ", ".join(m.label for m in members)
            what = "no host" if not hit else f"{len(hit)} hosts named"
            raise UsageProblem(f"{path} has {what} {name!r}", hint=f"hosts are: {labels}")
        if hit[0] not in out:
            out.append(hit[0])
    return out


def is_fleet(path: str | os.PathLike[str], hosts: Sequence[str] | None = None) -> bool:
    """Whether ``path`` (with ``--host`` names ``hosts``) designates more than one host, or
    is a directory of traces. Anything unreadable is not a fleet (the one-trace path then
    reports the problem)."""
    root = Path(path)
    if root.is_dir() and not (root / S.MANIFEST_NAME).exists():
        return any((d / S.MANIFEST_NAME).is_file() for d in root.iterdir() if d.is_dir())
    try:
        from planner.trace.io import open_trace

        n = len(open_trace(root).hosts)
    except TraceFormatError:
        return False
    return (len(set(hosts)) if hosts else n) > 1


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Distribution:
    """One figure across the hosts of a fleet: min, quantiles, max and mean.

    Quantiles interpolate linearly between hosts (numpy's default), so with 8 hosts ``p10``
    lies between the lowest and the second lowest host.
    """

    hosts: int
    min: float
    p10: float
    p50: float
    p90: float
    max: float
    mean: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Distribution:
        """The distribution of ``values`` (one per host; at least one)."""
        a = np.asarray(values, dtype=np.float64)
        q = np.quantile(a, QUANTILES)
        return cls(
            hosts=int(a.size),
            min=float(a.min()),
            p10=float(q[0]),
            p50=float(q[1]),
            p90=float(q[2]),
            max=float(a.max()),
            mean=float(a.mean()),
        )


@dataclass(frozen=True)
class FleetHost:
    """One scenario on one host of the fleet: the figures a fleet view compares."""

    __json_properties__: ClassVar[tuple[str, ...]] = ("net_saved_fraction",)

    label: str
    trace_path: str
    host: str
    registered_processes: int
    anon_bytes: int
    saved_bytes: int
    metadata_bytes: int
    net_saved_bytes: int
    ksmd_cpu_percent: float
    time_to_90_s: float | None
    workers_without: int | None = None
    workers_with: int | None = None
    capacity_gain: float | None = None  # workers_with / workers_without - 1
    capacity_gain_interval: tuple[float, float] | None = None
    capacity_limit: str | None = None  # "memory" | "cpu"

    @classmethod
    def of(cls, member: FleetMember, hs: HostScenario) -> FleetHost:
        """The fleet view of a host's scenario result."""
        cap = hs.capacity
        return cls(
            label=member.label,
            trace_path=member.trace_path,
            host=member.host,
            registered_processes=hs.registered_processes,
            anon_bytes=hs.anon_bytes,
            saved_bytes=hs.saved_bytes,
            metadata_bytes=hs.metadata_bytes,
            net_saved_bytes=hs.net_saved_bytes,
            ksmd_cpu_percent=hs.ksmd_cpu_percent,
            time_to_90_s=hs.time_to_90_s,
            workers_without=cap.workers_without if cap else None,
            workers_with=cap.workers_with if cap else None,
            capacity_gain=cap.gain if cap else None,
            capacity_gain_interval=cap.gain_interval if cap else None,
            capacity_limit=cap.limit_with if cap else None,
        )

    @property
    def net_saved_fraction(self) -> float:
        """Net saving as a share of the host's anonymous memory."""
        return self.net_saved_bytes / self.anon_bytes if self.anon_bytes else 0.0


@dataclass(frozen=True)
class FleetScenario:
    """One scenario over the whole fleet: totals, the spread across hosts, capacity."""

    __json_properties__: ClassVar[tuple[str, ...]] = (
        "label",
        "net_saved_fraction",
        "extra_workers",
        "extra_host_equivalents",
        "hosts_freed_equivalent",
    )

    id: str
    policy_set: str
    cross_domain: str
    knobs: dict[str, Any]
    hosts: tuple[FleetHost, ...]
    # --- totals over the hosts
    anon_bytes: int
    saved_bytes: int
    metadata_bytes: int
    net_saved_bytes: int
    ksmd_cores: float
    # --- across the hosts
    net_saved_fraction_across_hosts: Distribution
    net_saved_bytes_across_hosts: Distribution
    ksmd_cpu_percent_across_hosts: Distribution
    capacity_gain_across_hosts: Distribution | None = None
    # --- capacity of the fleet (workers summed over the hosts)
    capacity: CapacityEstimate | None = None

    @property
    def label(self) -> str:
        """``set [cross-domain] knobs`` for people."""
        return f"{self.policy_set} [{self.cross_domain}] {knob_label(self.knobs)}"

    @property
    def net_saved_fraction(self) -> float:
        """The fleet's net saving as a share of its anonymous memory."""
        return self.net_saved_bytes / self.anon_bytes if self.anon_bytes else 0.0

    @property
    def extra_workers(self) -> int | None:
        """Workers the fleet holds with KSM beyond those it holds without."""
        c = self.capacity
        return None if c is None else c.workers_with - c.workers_without

    @property
    def extra_host_equivalents(self) -> float | None:
        """The extra workers in hosts of today's mean density (workers without KSM per host)."""
        c = self.capacity
        if c is None or c.workers_without <= 0:
            return None
        return (c.workers_with - c.workers_without) / (c.workers_without / len(self.hosts))

    @property
    def hosts_freed_equivalent(self) -> float | None:
        """Hosts (of the fleet's mean density with KSM) that today's workers no longer need.

        ``hosts - workers_without / (workers_with / hosts)``: the fleet's gain ``g`` as
        ``hosts * g / (1 + g)``.
        """
        c = self.capacity
        if c is None or c.workers_with <= 0:
            return None
        n = len(self.hosts)
        return n - c.workers_without / (c.workers_with / n)

    def row(self) -> dict[str, Any]:
        """The scenario as one flat row (``to_frame``/CSV): totals, quantiles, capacity."""
        d, cpu = self.net_saved_fraction_across_hosts, self.ksmd_cpu_percent_across_hosts
        c, g = self.capacity, self.capacity_gain_across_hosts
        gi = c.gain_interval if c is not None else None
        return {
            "scenario": self.id,
            "policy_set": self.policy_set,
            "cross_domain": self.cross_domain,
            **{f"knob_{k}": v for k, v in self.knobs.items()},
            "hosts": len(self.hosts),
            "anon_mib": self.anon_bytes / MIB,
            "net_saved_mib": self.net_saved_bytes / MIB,
            "net_saved_percent": 100 * self.net_saved_fraction,
            "host_net_saved_percent_min": 100 * d.min,
            "host_net_saved_percent_p10": 100 * d.p10,
            "host_net_saved_percent_p50": 100 * d.p50,
            "host_net_saved_percent_p90": 100 * d.p90,
            "host_net_saved_percent_max": 100 * d.max,
            "ksmd_cores": self.ksmd_cores,
            "host_ksmd_cpu_percent_p90": cpu.p90,
            "host_ksmd_cpu_percent_max": cpu.max,
            "workers_without": c.workers_without if c else None,
            "workers_with": c.workers_with if c else None,
            "capacity_gain_percent": 100 * c.gain if c and c.gain is not None else None,
            "capacity_gain_low_percent": 100 * gi[0] if gi else None,
            "capacity_gain_high_percent": 100 * gi[1] if gi else None,
            "host_capacity_gain_percent_p10": 100 * g.p10 if g else None,
            "host_capacity_gain_percent_p50": 100 * g.p50 if g else None,
            "host_capacity_gain_percent_p90": 100 * g.p90 if g else None,
            "extra_workers": self.extra_workers,
            "extra_host_equivalents": self.extra_host_equivalents,
            "hosts_freed_equivalent": self.hosts_freed_equivalent,
        }


@dataclass
class FleetResult:
    """A what-if over a fleet: the members, every scenario over them, how it ran."""

    path: str
    members: tuple[FleetMember, ...]
    scenarios: tuple[FleetScenario, ...]
    provenance: dict[str, Any]
    warnings: tuple[str, ...] = ()
    elapsed_s: float = 0.0
    #: The what-if of each trace (in member order), every figure of every host.
    runs: tuple[WhatIfResult, ...] = field(default=(), metadata=skip())

    def scenario(self, sid: str) -> FleetScenario:
        """The scenario ``sid`` (``KeyError`` when absent)."""
        for s in self.scenarios:
            if s.id == sid:
                return s
        raise KeyError(sid)

    def best(self, cpu_budget_percent: float | None = None) -> FleetScenario | None:
        """The scenario freeing the most net memory over the fleet whose busiest host's ksmd
        stays within ``cpu_budget_percent`` of one core (``None``: no budget); the first in
        order on a tie; ``None`` when none saves anything within the budget."""
        fits = [
            s
            for s in self.scenarios
            if s.net_saved_bytes > 0
            and (
                cpu_budget_percent is None
                or s.ksmd_cpu_percent_across_hosts.max <= cpu_budget_percent
            )
        ]
        return max(fits, key=lambda s: s.net_saved_bytes, default=None)

    def to_frame(self) -> pd.DataFrame:
        """One row per scenario (:meth:`FleetScenario.row`)."""
        import pandas as pd

        return pd.DataFrame([s.row() for s in self.scenarios])

    def hosts_frame(self) -> pd.DataFrame:
        """One row per scenario and host."""
        import pandas as pd

        rows = []
        for s in self.scenarios:
            for h in s.hosts:
                gi = h.capacity_gain_interval
                rows.append(
                    {
                        "scenario": s.id,
                        "host": h.label,
                        "trace": h.trace_path,
                        "anon_mib": h.anon_bytes / MIB,
                        "net_saved_mib": h.net_saved_bytes / MIB,
                        "net_saved_percent": 100 * h.net_saved_fraction,
                        "ksmd_cpu_percent": h.ksmd_cpu_percent,
                        "time_to_90_s": h.time_to_90_s,
                        "workers_without": h.workers_without,
                        "workers_with": h.workers_with,
                        "capacity_gain_percent": (
                            100 * h.capacity_gain if h.capacity_gain is not None else None
                        ),
                        "capacity_gain_low_percent": 100 * gi[0] if gi else None,
                        "capacity_gain_high_percent": 100 * gi[1] if gi else None,
                    }
                )
        return pd.DataFrame(rows)

    def to_csv(self) -> str:
        """:meth:`to_frame` as CSV text."""
        return _csv(self.to_frame())

    def hosts_csv(self) -> str:
        """:meth:`hosts_frame` as CSV text."""
        return _csv(self.hosts_frame())


def _csv(frame: pd.DataFrame) -> str:
    buf = io.StringIO()
    frame.to_csv(buf, index=False, float_format="%.6g", lineterminator="\n")
    return buf.getvalue()


# ----------------------------------------------------------------------------- assembly


def fleet_scenario(
    scenarios: Sequence[ScenarioResult], members: Sequence[FleetMember]
) -> FleetScenario:
    """One scenario over the fleet from the same scenario of every trace's what-if.

    ``members`` are the fleet's hosts in the order of the traces' hosts.
    """
    first = scenarios[0]
    host_results = [h for s in scenarios for h in s.hosts]
    if len(host_results) != len(members):  # pragma: no cover - one HostScenario per member
        raise ValueError("every member needs one host result")
    hosts = tuple(FleetHost.of(m, hs) for m, hs in zip(members, host_results, strict=True))
    caps = [h.capacity for h in host_results]
    capacity = None
    gains = None
    if caps and all(c is not None for c in caps):
        capacity = combine_hosts([c for c in caps if c is not None])
        g = [h.capacity_gain for h in hosts if h.capacity_gain is not None]
        gains = Distribution.of(g) if g else None
    return FleetScenario(
        id=first.id,
        policy_set=first.policy_set,
        cross_domain=first.cross_domain,
        knobs=dict(first.knobs),
        hosts=hosts,
        anon_bytes=sum(h.anon_bytes for h in hosts),
        saved_bytes=sum(h.saved_bytes for h in hosts),
        metadata_bytes=sum(h.metadata_bytes for h in hosts),
        net_saved_bytes=sum(h.net_saved_bytes for h in hosts),
        ksmd_cores=sum(h.ksmd_cpu_percent for h in hosts) / 100.0,
        net_saved_fraction_across_hosts=Distribution.of([h.net_saved_fraction for h in hosts]),
        net_saved_bytes_across_hosts=Distribution.of([h.net_saved_bytes for h in hosts]),
        ksmd_cpu_percent_across_hosts=Distribution.of([h.ksmd_cpu_percent for h in hosts]),
        capacity_gain_across_hosts=gains,
        capacity=capacity,
    )


def assemble_fleet(
    path: str,
    members: Sequence[FleetMember],
    runs: Sequence[WhatIfResult],
    *,
    executor_info: dict[str, Any] | None = None,
    elapsed_s: float = 0.0,
) -> FleetResult:
    """The fleet result of the what-ifs of its traces (``runs`` in trace order, each over
    its members' hosts in member order)."""
    for r in runs[1:]:
        same = [(s.policy_set, s.cross_domain, s.knobs) for s in r.scenarios] == [
            (s.policy_set, s.cross_domain, s.knobs) for s in runs[0].scenarios
        ]
        if not same:  # pragma: no cover - the same sets and grid give the same scenarios
            raise ValueError("the traces' what-ifs have different scenarios")
    scenarios = tuple(
        fleet_scenario([r.scenarios[i] for r in runs], members)
        for i in range(len(runs[0].scenarios))
    )
    warnings: list[str] = []
    for r in runs:
        warnings += [w for w in r.warnings if w not in warnings]
    first = runs[0].provenance
    provenance = {
        "command": "whatif",
        "fleet": path,
        "hosts": [m.label for m in members],
        "traces": [
            {
                "path": str(r.trace_path),
                "trace_hash": r.trace_hash,
                "hosts": list(r.hosts),
                # each trace's own: the shipped profile of its CPU unless one was given
                "cost_profile": r.replay_options.cost_profile,
            }
            for r in runs
        ],
        "tool_version": first.get("tool_version"),
        "knobs": first.get("knobs"),
        "policy_set": first.get("policy_set"),
        "extra": {
            **{k: v for k, v in (first.get("extra") or {}).items() if k not in ("tasks", "run_on")},
            "tasks": sum(int((r.provenance.get("extra") or {}).get("tasks", 0)) for r in runs),
            "run_on": HostInfo.collect().to_dict(),
            **(executor_info or {}),
        },
    }
    return FleetResult(
        path=path,
        members=tuple(members),
        scenarios=scenarios,
        provenance=to_jsonable(provenance),
        warnings=tuple(warnings),
        elapsed_s=elapsed_s,
        runs=tuple(runs),
    )


# ----------------------------------------------------------------------------- running


class _SharedProgress:
    """One progress for the what-ifs of several traces running at once (thread-safe):
    every task of every trace counts once (no total: each what-if plans its own tasks)."""

    def __init__(self, outer: Progress, traces: int) -> None:
        self._outer = outer
        self._lock = threading.Lock()
        self._traces = traces
        self._started = False

    def start(self, task: str, total: float | None) -> None:
        del task, total
        with self._lock:
            if not self._started:
                self._started = True
                self._outer.start(
                    f"fleet what-if ({self._traces} traces): "
                    "replays, fits and copy-on-write estimates",
                    None,
                )

    def advance(self, amount: float) -> None:
        with self._lock:
            self._outer.advance(amount)

    def finish(self) -> None:
        pass


def run_fleet(
    path: str | os.PathLike[str],
    *,
    hosts: Sequence[str] | None = None,
    executor: Executor | None = None,
    max_workers: int | None = None,
    progress: Progress = NULL_PROGRESS,
    **whatif: Any,
) -> FleetResult:
    """Run the same what-if on every host of a fleet and put the fleet together.

    Parameters
    ----------
    path
        A trace directory (one or many hosts) or a directory of trace directories.
    hosts
        Only these members (labels, or host names unique in the fleet).
    executor, max_workers
        Where the replays run (default: one local process pool of ``max_workers`` processes
        for the whole fleet; a Dask cluster: :func:`planner.whatif.executors.dask_executor`).
    progress
        Receives one step per finished replay or fit, over the whole fleet.
    whatif
        The arguments of :func:`planner.whatif.run_whatif` (``policy_sets``, ``grid``,
        ``replay_options``, ``cost_profile``, ``capacity``, ``extrapolation``); not
        ``observed``: a recording is of one host.

    Raises
    ------
    UsageProblem
        ``observed`` given, an unknown ``hosts`` name.
    TraceFormatError, PolicyError, KnobError, ClusterError
        As :func:`~planner.whatif.run_whatif`.
    """
    from planner.whatif.run import run_whatif

    if whatif.get("observed") is not None:
        raise UsageProblem(
            "a recording (--observed) is of one host; a fleet what-if cannot compare with it",
            hint="review that host alone with --host NAME --observed DIR",
        )
    whatif.pop("observed", None)
    t0 = time.perf_counter()
    members = fleet_members(path, hosts)
    groups: dict[str, list[FleetMember]] = {}
    for m in members:
        groups.setdefault(m.trace_path, []).append(m)
    ordered = [m for g in groups.values() for m in g]
    own = executor is None
    ex = executor if executor is not None else local_executor(max_workers)
    shared = _SharedProgress(progress, len(groups))
    # an executor that runs tasks in the submitting thread (inline: one core) gets the
    # traces one after the other: nothing of the what-if runs concurrently in-process
    at_once = 1 if isinstance(ex, InlineExecutor) else min(len(groups), MAX_CONCURRENT_TRACES)
    threads = ThreadPoolExecutor(at_once, thread_name_prefix="fleet-trace")
    futures: list[Future[WhatIfResult]] = []
    done = False
    try:
        for trace, g in groups.items():
            futures.append(
                threads.submit(
                    run_whatif,
                    trace,
                    hosts=[m.host for m in g],
                    executor=ex,
                    max_workers=max_workers,
                    progress=shared,
                    **whatif,
                )
            )
        runs = [f.result() for f in futures]
        done = True
    except BaseException:
        for f in futures:
            f.cancel()
        raise
    finally:
        # on an error, the other traces' threads are not waited for: their tasks end with
        # the executor (our pool, terminated below; a cluster's client when the caller
        # closes it)
        threads.shutdown(wait=done, cancel_futures=True)
        if own:
            ex.shutdown(wait=True, cancel_futures=True)
        progress.finish()
    return assemble_fleet(
        str(Path(path).resolve()),
        ordered,
        runs,
        executor_info=describe(ex),
        elapsed_s=time.perf_counter() - t0,
    )


def total_hosts_line(result: FleetResult) -> str:
    """``8 hosts in 3 traces`` for people."""
    traces = len({m.trace_path for m in result.members})
    n = len(result.members)
    return f"{n} host{'s' if n != 1 else ''} in {traces} trace{'s' if traces != 1 else ''}"


__all__ = [
    "QUANTILES",
    "Distribution",
    "FleetHost",
    "FleetMember",
    "FleetResult",
    "FleetScenario",
    "assemble_fleet",
    "fleet_members",
    "fleet_scenario",
    "is_fleet",
    "run_fleet",
    "total_hosts_line",
]
