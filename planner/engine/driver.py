"""The replay's driver loop, shared by both engines: time, batches, snapshots, grid, records.

An engine (:class:`Core`) holds the KSM state and knows how to run ksmd's batches; the
driver decides *when*: it applies each snapshot when its time comes (or when a full scan
starts, with scan alignment), starts full scans, asks the engine to run batches up to the
next event, samples the time grid from the engine's per-batch state rows, runs the
scan-time advisor after each full scan and records it, and stops after the settle scans or
the duration. The result is assembled by :func:`planner.engine.result.assemble_result`.

**ksmd on a busy host** (docs/busy-host.md). ksmd gets only its scheduler share of a CPU
against the load the trace recorded (or the one given): the driver hands the engines the
cost profile stretched by ``1 / share`` (:meth:`CostProfile.stretched`), so a batch lasts
its CPU divided by the share in wall time while the sleeps stay as they are, and books
the unstretched CPU. The engines need not know: the time model is the driver's.

The two engines differ only behind :class:`Core`: the reference model runs one page at a
time in Python, the fast engine a compiled kernel; the driver cannot tell them apart.

**Writes between snapshots.** A trace shows memory only at snapshot times. The write model
(:mod:`planner.engine.writes`: per-page content changes and same-content writes at the
rates the trace recorded, between snapshots and after the last one) plugs in as a
:class:`WriteSource`: the driver cuts the batches at its event times (exactly as at a
snapshot time) and hands the due writes to :meth:`Core.apply_writes` before the next batch.
The writes of the interval after snapshot ``k`` come only once snapshot ``k`` was applied,
and those left when snapshot ``k + 1`` is applied are handed over just before it. The
semantics an engine must give them (docs/kernel-semantics.md §6.5): a write to a page
mapping a KSM page (or the zero page), or any page shared with another mapping, breaks the
sharing at write time (the row gets a fresh physical page; a KSM page's rmap_item stays on
its stable node until ksmd next visits it, as for a copy-on-write seen in a snapshot); a
write that changes the content makes the checksum gate see a change on the next visit and
takes the row out of the unstable tree; a same-content write does neither. A write to a
private page keeps its physical page. :data:`NO_WRITES` has no events (version-1 traces,
traces without counts, ``--no-writes``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
import numpy.typing as npt

from planner._progress import NULL_PROGRESS, Progress
from planner.engine.cost import PATHS
from planner.engine.options import MAX_GRID_POINTS, grid_overflow
from planner.engine.result import (
    R_FULL_SCANS,
    GridRecord,
    ReplayResult,
    ScanRecord,
    assemble_result,
    counters_from_row,
    truth_from_row,
)
from planner.engine.timing import (
    KSMD_NICE,
    NS_PER_S,
    SHARE_ONE_PPM,
    AdvisorState,
    HostLoad,
    advisor_step,
    cpu_of_wall_ns,
    next_batch_ns,
    sleep_ns,
    tick_ns,
)
from planner.engine.writes import Writes

if TYPE_CHECKING:
    from planner.engine.cost import CostProfile
    from planner.engine.knobs import KsmKnobs
    from planner.engine.options import ReplayOptions
    from planner.engine.prepare import ReplayInput

I64 = npt.NDArray[np.int64]
NEVER = (1 << 63) - 1


@dataclass(frozen=True)
class BatchPlan:
    """What the driver asks of one :meth:`Core.run` call.

    Run batches from ``t0_ns`` (a batch lasts ``batch_overhead_ns`` plus, for the batch
    that starts a full scan, ``scan_start_ns``, plus the visits' ``path_costs_ns`` and
    ``level_ns`` per unstable-tree level they walk (:func:`planner.engine.cost.tree_levels`
    of the inserts made so far in the scan): wall time, ksmd's CPU stretched by its share
    of a busy host; the next batch starts ``sleep_ns`` and the whole ticks of ``tick_ns`` the
    batch crossed after it started, :func:`planner.engine.timing.next_batch_ns`) until the full
    scan ends or the next batch
    would start at or after ``boundary_ns``. ``horizon`` bounds what an engine may do past
    this scan (see :class:`Horizon`).
    """

    t0_ns: int
    starts_scan: bool  # this run's first batch is a full scan's first
    pages_to_scan: int
    cost: CostProfile  # for an engine that runs scans ahead
    path_costs_ns: tuple[int, ...]
    level_ns: int
    batch_overhead_ns: int
    scan_start_ns: int
    sleep_ns: int
    tick_ns: int
    boundary_ns: int
    horizon: Horizon


@dataclass(frozen=True)
class Horizon:
    """How far an engine may run whole full scans ahead without the driver (fast-forward).

    Every batch it runs must start before ``boundary_ns`` (a snapshot, a write, the end);
    every full scan it starts must start before ``scan_start_before_ns`` and be at most
    full scan number ``last_scan`` (scan-aligned snapshots apply when a scan starts); at
    most ``scans_left`` more full scans may end. With the advisor on, ``pages_to_scan`` may
    change after any scan: no engine may run ahead then.
    """

    boundary_ns: int
    scan_start_before_ns: int
    last_scan: int
    scans_left: int
    advisor: bool


@dataclass
class BatchRun:
    """What one :meth:`Core.run` call did: per batch its start time, CPU and state row.

    ``cpu_ns`` is in the plan's costs: on a busy host the stretched (wall) duration of each
    batch, which the driver turns back into CPU.

    ``scans_ended`` is the number of full scans that ended in it (0 or 1 for one scan; more
    when an engine ran whole scans ahead), each at the batch given by ``scan_end_batches``.
    ``paths`` counts the visits per path (:data:`planner.engine.cost.PATHS`) of each scan
    in it, in order (one row per scan, the last one possibly unfinished); ``levels`` the
    unstable-tree levels those visits walked, per path, in the same rows.
    """

    times_ns: I64
    cpu_ns: I64
    rows: I64  # (batches, N_ROW)
    scan_end_batches: list[int] = field(default_factory=list)
    paths: list[I64] = field(default_factory=list)
    levels: list[I64] = field(default_factory=list)
    processes: list[dict[str, dict[str, int]]] = field(default_factory=list)

    @property
    def scans_ended(self) -> int:
        """Full scans that ended in this run."""
        return len(self.scan_end_batches)


@dataclass(frozen=True)
class Event:
    """A snapshot or a batch of writes the driver applied (``Driver.event_log``)."""

    kind: Literal["snapshot", "writes"]
    before_scan: int
    """The full scan (1-based) that starts after it."""
    snapshot: int = -1
    writes: object = None
    breaks: int = 0
    """Merges the writes broke."""


class WriteSource(Protocol):
    """Writes between snapshots (see the module notes)."""

    def start_interval(self, k: int, now_ns: int) -> None:
        """Snapshot ``k`` was applied at ``now_ns``: the writes of the interval after it
        come next."""

    def next_time_ns(self) -> int | None:
        """Time of the next write not yet handed out, or None."""

    def take_until(self, t_ns: int) -> object:
        """The writes at or before ``t_ns`` (an engine-neutral batch of writes, or None)."""

    def take_rest(self) -> object:
        """Every write left before the next snapshot (or None)."""


class _NoWrites:
    def start_interval(self, k: int, now_ns: int) -> None:
        return None

    def next_time_ns(self) -> int | None:
        return None

    def take_until(self, t_ns: int) -> object:
        return None

    def take_rest(self) -> object:
        return None


NO_WRITES: WriteSource = _NoWrites()


class Core(Protocol):
    """The KSM state of one engine, as the driver drives it."""

    name: str

    def apply_snapshot(self, k: int, now_ns: int) -> None:
        """The world moves to snapshot ``k`` at ``now_ns`` (exits, registrations included)."""

    def apply_writes(self, writes: object, now_ns: int) -> int:
        """Writes between snapshots (see the module notes); returns the merges broken
        (KSM pages written: the kernel's ``cow_ksm``)."""

    def has_work(self) -> bool:
        """Whether ksmd has an mm to scan (or is inside a full scan)."""

    def in_scan(self) -> bool:
        """Whether a full scan is in progress (the cursor is not at the list head)."""

    def start_scan(self, now_ns: int) -> None:
        """A full scan starts (the unstable tree is emptied; the prune clock is read)."""

    def run(self, plan: BatchPlan) -> BatchRun:
        """Run batches as ``plan`` says."""

    def state_row(self) -> I64:
        """The state row now."""

    def processes(self) -> dict[str, dict[str, int]]:
        """``ksm_stat`` of every live process now."""

    def node_members(self) -> list[tuple[int, int, int]] | I64:
        """Final KSM page membership (see :attr:`ReplayResult.final_node_members`)."""


class Driver:
    """Runs one replay of ``inp`` on an engine core (see the module notes)."""

    def __init__(
        self,
        core: Core,
        inp: ReplayInput,
        knobs: KsmKnobs,
        opts: ReplayOptions,
        *,
        progress: Progress = NULL_PROGRESS,
        writes: WriteSource = NO_WRITES,
        log_events: bool = False,
    ) -> None:
        self.core = core
        self.inp = inp
        self.k = knobs
        self.opts = opts
        self._busy_host(opts, inp)
        self.progress = progress
        self.writes = writes
        self.page_size = inp.page_size
        K = inp.n_snapshots
        self.times = inp.times_ns
        self.end_ns = int(opts.duration_s * NS_PER_S) if opts.duration_s is not None else None
        self.grid_ns = opts.grid_step_ns(self.times[-1] if K else 0)
        self.grid: list[GridRecord] = []
        self.next_grid = 0
        self.scans: list[ScanRecord] = []
        self.scans_after_last: int | None = None
        slept = sleep_ns(knobs.sleep_ms, knobs.hz)
        self.sleep = slept + self.cost.wake_latency_ns
        # without a timed sleep (sleep_millisecs 0) ksmd runs on: no tick to wait for
        self.tick = tick_ns(knobs.hz) if slept > 0 else 1
        self.next_snap = 0
        self.seqnr = 0
        self.pages_to_scan = knobs.initial_pages_to_scan
        self.advisor = AdvisorState()
        self.cpu_ns = int(knobs.advisor_initial_cpu_s * NS_PER_S)
        self.cpu_start_ns = self.cpu_ns
        self.path_visits = np.zeros(len(PATHS), np.int64)
        self.path_cpu_ns = np.zeros(len(PATHS), np.int64)
        self.batches = 0
        self.snapshot_first_scan: list[int | None] = [None] * K
        self.snapshot_applied_ns: list[int | None] = [None] * K
        self.scan_start_t = 0
        self.scan_cpu0 = self.cpu_ns
        self.scan_batches = 0
        self.scan_pts = self.pages_to_scan
        self.cow_breaks = 0  # merges broken by writes so far
        self.write_batches = 0
        self.cow_at_last_snapshot: tuple[int, int] | None = None  # (time, breaks then)
        #: with ``log_events``: every snapshot and write batch applied, in order, with the
        #: full scan (1-based) before which it came -- what ``validate --kernel`` reproduces
        self.event_log: list[Event] | None = [] if log_events else None

    # ------------------------------------------------------------------ busy host

    def _busy_host(self, opts: ReplayOptions, inp: ReplayInput) -> None:
        """ksmd's CPU share and the per-page costs under the load (docs/busy-host.md).

        The load is the one given (``opts.host_load``), else the one the trace recorded,
        else an idle host. ``cost`` holds the CPU costs under that load (what the result
        books as ksmd's CPU); ``wall`` the same costs stretched by ``1 / share`` (what the
        engines' clocks advance by while a batch runs). Sleeps stay wall time.
        """
        recorded = inp.meta.get("host_load")
        if opts.host_load is not None:
            self.load = opts.host_load
        elif isinstance(recorded, HostLoad):
            self.load = recorded
        else:
            self.load = HostLoad.idle(
                "the trace recorded no CPU load (version 1): an idle host assumed"
            )
        self.profile = opts.effective_cost  # read once (the default is a packaged file)
        self.cost = self.profile.under_load(self.load.runnable_per_cpu)
        self.share_ppm = self.load.share_ppm(self.profile.sched_contention)
        self.wall = self.cost.stretched(self.share_ppm)

    def host_load_record(self) -> dict[str, object]:
        """The load assumed, its source, ksmd's CPU share and the cost factor (JSON-ready)."""
        return {
            **self.load.to_dict(),
            "ksmd_nice": KSMD_NICE,
            "ksmd_cpu_share": self.share_ppm / SHARE_ONE_PPM,
            "sched_contention": self.profile.sched_contention,
            "cost_factor": self.profile.load_factor(self.load.runnable_per_cpu),
        }

    # ------------------------------------------------------------------ sampling

    def _sample(self, limit: int, inclusive: bool, run: BatchRun | None = None) -> None:
        """Grid points before ``limit`` (and at it when ``inclusive``): the state then.

        With a ``run``, a point at or after its first batch gets the state after the last
        batch that started at or before it; other points get the engine's state now.
        """
        while self.next_grid < limit or (inclusive and self.next_grid == limit):
            g = self.next_grid
            if self.end_ns is not None and g > self.end_ns:
                return
            if len(self.grid) >= MAX_GRID_POINTS:
                raise grid_overflow(len(self.grid) + 1)
            if run is not None and g >= int(run.times_ns[0]):
                row = run.rows[int(np.searchsorted(run.times_ns, g, side="right")) - 1]
            else:
                row = self.core.state_row()
            self.grid.append(
                GridRecord(
                    g / NS_PER_S,
                    counters_from_row(row, self.page_size),
                    truth_from_row(row, self.page_size),
                    cow_breaks=self.cow_breaks,
                )
            )
            self.next_grid += self.grid_ns

    # ------------------------------------------------------------------ events

    def _apply(self, k: int, t: int, *, sample_to: int) -> None:
        self._sample(sample_to, False)
        self._write(self.writes.take_rest(), t)  # the interval before it ends first
        self.core.apply_snapshot(k, t)
        if self.event_log is not None:
            self.event_log.append(Event("snapshot", self.seqnr + 1, snapshot=k))
        self.snapshot_first_scan[k] = self.seqnr + 1
        self.snapshot_applied_ns[k] = t
        self.next_snap = k + 1
        self.writes.start_interval(k, t)
        if k + 1 == len(self.times):
            self.cow_at_last_snapshot = (t, self.cow_breaks)

    def _write(self, writes: object, t: int) -> None:
        if writes is not None:
            parts = writes.parts() if isinstance(writes, Writes) else [(writes, True)]
            breaks = 0
            for part, cow in parts:  # pages that leave break merges without copy-on-write
                b = self.core.apply_writes(part, t)
                breaks += b if cow else 0
            self.cow_breaks += breaks
            self.write_batches += 1
            if self.event_log is not None:
                self.event_log.append(Event("writes", self.seqnr + 1, writes=writes, breaks=breaks))

    def _apply_due(self, t: int) -> None:
        """Snapshots (and writes) whose time has come at batch start ``t``."""
        opts = self.opts
        K = len(self.times)
        if not opts.aligned_to_scans:
            while self.next_snap < K and self.times[self.next_snap] <= t:
                self._apply(self.next_snap, t, sample_to=self.times[self.next_snap])
        elif self.next_snap == 0 and K:
            self._apply(0, t, sample_to=t)
        if not self.core.in_scan() and opts.aligned_to_scans:
            while self.next_snap < K and self._scan_due(self.next_snap, t):
                self._apply(self.next_snap, t, sample_to=t)
        wt = self.writes.next_time_ns()
        if wt is not None and wt <= t and not (opts.aligned_to_scans and self.core.in_scan()):
            self._sample(t, False)
            self._write(self.writes.take_until(t), t)

    def _scan_due(self, k: int, t: int) -> bool:
        if self.opts.snapshot_scans is not None:
            return self.opts.snapshot_scans[k] <= self.seqnr + 1
        return self.times[k] <= t

    def _boundary(self) -> int:
        """The next batch start at which the driver must act (snapshot, write, end)."""
        boundary = NEVER
        if not self.opts.aligned_to_scans and self.next_snap < len(self.times):
            boundary = self.times[self.next_snap]
        if self.end_ns is not None:
            boundary = min(boundary, self.end_ns)
        wt = self.writes.next_time_ns()
        if wt is None or self.opts.aligned_to_scans:  # scan-aligned: writes land between scans
            return boundary
        return min(boundary, wt)

    def _horizon(self, boundary: int) -> Horizon:
        opts = self.opts
        K = len(self.times)
        start_before, last_scan = NEVER, 1 << 62
        if opts.aligned_to_scans and self.next_snap < K:
            if opts.snapshot_scans is not None:
                last_scan = opts.snapshot_scans[self.next_snap] - 1
            else:
                start_before = self.times[self.next_snap]
        wt = self.writes.next_time_ns()
        if opts.aligned_to_scans and wt is not None:  # writes due at a scan's start
            start_before = min(start_before, wt)
        left = opts.max_scans - self.seqnr
        if self.end_ns is None and self.next_snap >= K:
            left = min(left, opts.settle_scans - (self.scans_after_last or 0))
        return Horizon(
            boundary_ns=boundary,
            scan_start_before_ns=start_before,
            last_scan=last_scan,
            scans_left=max(left, 0),
            advisor=self.k.advisor == "scan-time",
        )

    # ------------------------------------------------------------------ the loop

    def run(self) -> ReplayResult:
        """Replay the whole trace; return the result."""
        K = len(self.times)
        t = 0
        self.progress.start(f"replay ({self.core.name})", None)
        while True:
            if self.end_ns is not None and t >= self.end_ns:
                break
            self._apply_due(t)
            if not self.core.has_work():
                # ksmd sleeps until a process registers (the next snapshot)
                if self.next_snap >= K:
                    break
                t = max(t, self.times[self.next_snap])
                if self.end_ns is not None and t >= self.end_ns:
                    break
                self._apply(self.next_snap, t, sample_to=t)
                continue
            starts = not self.core.in_scan()
            if starts:
                self.core.start_scan(t)
                self.advisor.start_scan_ns = t
                self.scan_start_t, self.scan_cpu0, self.scan_batches = t, self.cpu_ns, 0
                self.scan_pts = self.pages_to_scan
            self._sample(t, False)
            run = self.core.run(self._plan(t, starts))
            t, stop = self._absorb(run)
            if stop:
                break
        end = self.end_ns if self.end_ns is not None else t
        if not self.opts.aligned_to_scans:
            while self.next_snap < K and self.times[self.next_snap] <= end:
                self._apply(self.next_snap, end, sample_to=self.times[self.next_snap])
        self._sample(end, True)
        self.progress.finish()
        return self._result(end)

    def _plan(self, t: int, starts: bool) -> BatchPlan:
        boundary = self._boundary()
        return BatchPlan(
            t0_ns=t,
            starts_scan=starts,
            pages_to_scan=self.pages_to_scan,
            cost=self.wall,
            path_costs_ns=self.wall.path_costs(),
            level_ns=self.wall.unstable_per_level_ns,
            batch_overhead_ns=self.wall.batch_overhead_ns,
            scan_start_ns=self.wall.scan_start_ns if starts else 0,
            sleep_ns=self.sleep,
            tick_ns=self.tick,
            boundary_ns=boundary,
            horizon=self._horizon(boundary),
        )

    def _absorb(self, run: BatchRun) -> tuple[int, bool]:
        """Book a run's batches and scans; return the next batch time and whether to stop."""
        self._sample(int(run.times_ns[-1]), True, run)
        begin = 0
        ends = [*run.scan_end_batches]
        if len(run.paths) > len(ends):
            ends.append(run.times_ns.size - 1)  # the unfinished scan's part
        costs = np.array(self.cost.path_costs(), np.int64)
        level_ns = self.cost.unstable_per_level_ns
        for j, last in enumerate(ends):
            self.path_visits += run.paths[j]
            self.path_cpu_ns += run.paths[j] * costs + run.levels[j] * level_ns
            self.cpu_ns += cpu_of_wall_ns(int(run.cpu_ns[begin : last + 1].sum()), self.share_ppm)
            self.batches += last + 1 - begin
            self.scan_batches += last + 1 - begin
            if j < run.scans_ended:
                end_t = int(run.times_ns[last]) + int(run.cpu_ns[last])
                if self._scan_ended(end_t, run.rows[last], run.processes[j]):
                    return end_t, True
                if j + 1 < len(ends):  # the engine ran the next scan ahead
                    self.scan_start_t = int(run.times_ns[last + 1])
                    self.scan_cpu0, self.scan_batches = self.cpu_ns, 0
                    self.advisor.start_scan_ns = self.scan_start_t
                    self.scan_pts = self.pages_to_scan
            begin = last + 1
        last_t, last_cpu = int(run.times_ns[-1]), int(run.cpu_ns[-1])
        return next_batch_ns(last_t, last_cpu, self.sleep, self.tick), False

    def _scan_ended(self, end_t: int, row: I64, processes: dict[str, dict[str, int]]) -> bool:
        """Advisor and record after a full scan; whether the replay stops here."""
        self.seqnr = int(row[R_FULL_SCANS])
        if self.k.advisor == "scan-time":
            pages, _, _ = advisor_step(
                self.advisor,
                pages_to_scan=self.pages_to_scan,
                now_ns=end_t,
                ksmd_cpu_ns=self.cpu_ns,
                target_scan_time_s=self.k.advisor_target_scan_time_s,
                max_cpu=self.k.advisor_max_cpu,
                max_pages=self.k.advisor_max_pages_to_scan,
            )
            self.pages_to_scan = pages
        self.scans.append(
            ScanRecord(
                full_scans=self.seqnr,
                t_s=end_t / NS_PER_S,
                scan_time_s=(end_t - self.scan_start_t) / NS_PER_S,
                cpu_s=(self.cpu_ns - self.scan_cpu0) / NS_PER_S,
                pages_to_scan=self.scan_pts,
                batches=self.scan_batches,
                counters=counters_from_row(row, self.page_size),
                processes=processes,
                truth=truth_from_row(row, self.page_size),
            )
        )
        self.progress.advance(1)
        if self.next_snap >= len(self.times):
            self.scans_after_last = (self.scans_after_last or 0) + 1
        if (
            self.end_ns is None
            and self.scans_after_last is not None
            and self.scans_after_last >= self.opts.settle_scans
        ):
            return True
        return self.seqnr >= self.opts.max_scans

    def _result(self, end_ns: int) -> ReplayResult:
        row = self.core.state_row()
        res = assemble_result(
            engine=self.core.name,
            knobs={**self.k.to_dict(), "cost_profile": self.cost.name},
            inp=self.inp,
            page_size=self.page_size,
            end_ns=end_ns,
            scans=self.scans,
            grid=self.grid,
            batches=self.batches,
            cpu_ns=self.cpu_ns - self.cpu_start_ns,
            full_scans=self.seqnr,
            path_visits=dict(zip(PATHS, self.path_visits.tolist(), strict=True)),
            path_cpu_ns=dict(zip(PATHS, self.path_cpu_ns.tolist(), strict=True)),
            final_counters=counters_from_row(row, self.page_size),
            final_processes=self.core.processes(),
            final_truth=truth_from_row(row, self.page_size),
            snapshot_first_scan=self.snapshot_first_scan,
            snapshot_applied_ns=self.snapshot_applied_ns,
            final_node_members=self.core.node_members(),
            cow_breaks=self.cow_breaks,
            cow_since_last_snapshot=self._cow_steady(end_ns),
            writes_modelled=self.writes is not NO_WRITES,
        )
        res.provenance["host_load"] = self.host_load_record()
        return res

    def _cow_steady(self, end_ns: int) -> tuple[int, float] | None:
        """Merges broken after the last snapshot and the time they took (None: no time)."""
        if self.cow_at_last_snapshot is None:
            return None
        t0, c0 = self.cow_at_last_snapshot
        return (self.cow_breaks - c0, (end_ns - t0) / NS_PER_S) if end_ns > t0 else None


__all__ = [
    "NO_WRITES",
    "BatchPlan",
    "BatchRun",
    "Core",
    "Driver",
    "Event",
    "Horizon",
    "WriteSource",
]
