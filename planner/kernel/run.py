"""Drive the real ksmd over a materialised trace and sample its counters after every full scan.

:func:`run_on_kernel` takes a lease on ``/sys/kernel/mm/ksm`` (or uses the caller's), resets
KSM, creates the holder processes of the first snapshot, starts ksmd (``run=1``) and polls
``full_scans`` about every millisecond. Right after each full scan it writes ``run=0`` (ksmd
is asleep for ``sleep_millisecs`` then, so stopping it changes nothing it does), reads every
counter and each holder's ``/proc/<pid>/ksm_stat``, applies the snapshots due before the
next scan, and writes ``run=1`` again. The records have the shape of the replay engine's
(``full_scans``, ``t_s``, ``counters``, ``processes``), with ``pages_scanned`` and
``pages_skipped`` counted from the start of the run.

Notes
-----
Snapshot ``k`` becomes visible at the start of full scan ``snapshot_scans[k]`` (1-based): its
changes are applied while ksmd is stopped between scans ``s_k - 1`` and ``s_k``. New mms join
KSM's list behind the cursor, which is on the list head between scans, so they are visited
last in the next scan in the order they registered (docs/kernel-semantics.md §4.3).
ksmd only scans while its mm list is non-empty. When it is empty (no registered holder and
no exited mm left to tear down), the next snapshot is applied at once, as the replay does
(ksmd sleeps until a process registers); with no snapshot left the run ends early.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import math
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Final

from planner._progress import NULL_PROGRESS, Progress
from planner.capture.procfs import ProcFS
from planner.engine.knobs import KsmKnobs, spec, sysfs_names
from planner.errors import EnvironmentProblem, UsageProblem
from planner.kernel.holder import Holder, HolderError
from planner.kernel.materialize import (
    MaterializationPlan,
    ProcKey,
    SnapshotPlan,
    plan_materialization,
)
from planner.kernel.sysfs import KsmLease, KsmSysfs
from planner.provenance import HostInfo, Provenance, kernel_hz
from planner.trace.recording import VMSTAT_FIELDS

if TYPE_CHECKING:
    from types import TracebackType

    from planner.kernel.sysfs import LeasedScanStopper
    from planner.trace.io import HostTrace

PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
#: Per-process fields read from ``/proc/<pid>/ksm_stat`` (yes/no as 1/0).
PROCESS_FIELDS = (
    "ksm_rmap_items",
    "ksm_merging_pages",
    "ksm_zero_pages",
    "ksm_process_profit",
    "ksm_mergeable",
    "ksm_merge_any",
)
#: Counters reported as deltas from the start of the run (the kernel never resets them).
DELTA_COUNTERS = ("pages_scanned", "pages_skipped")
_HOLDER_OVERHEAD_BYTES = 16 << 20


@dataclass(frozen=True)
class ScanRecord:
    """Counters right after one full scan (ksmd stopped)."""

    full_scans: int
    t_s: float
    counters: dict[str, int]
    processes: dict[int, dict[str, int]]
    vmstat: dict[str, int] = field(default_factory=dict)
    late: bool = False
    """The scan end was noticed so late that ksmd might have begun the next scan's first batch."""


@dataclass(frozen=True)
class SnapshotRecord:
    """Counters right after a snapshot was applied, before the next scan (ksmd stopped)."""

    index: int
    snapshot_id: int
    before_scan: int
    t_s: float
    counters: dict[str, int]
    processes: dict[int, dict[str, int]]
    vmstat: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class KernelRun:
    """The result of :func:`run_on_kernel`."""

    scans: list[ScanRecord]
    snapshots: list[SnapshotRecord]
    snapshot_scans: list[int | None]
    """The scan before which each snapshot was applied (``None``: not applied)."""
    scans_requested: int
    knobs: dict[str, int | str]
    provenance: Provenance
    ended_early: bool = False

    def scan(self, full_scans: int) -> ScanRecord:
        """The record of full scan ``full_scans`` (1-based)."""
        for r in self.scans:
            if r.full_scans == full_scans:
                return r
        raise KeyError(full_scans)

    def after_snapshot(self, index: int) -> SnapshotRecord:
        """The record taken right after snapshot ``index`` was applied."""
        for r in self.snapshots:
            if r.index == index:
                return r
        raise KeyError(index)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "scans": [asdict(r) for r in self.scans],
            "snapshots": [asdict(r) for r in self.snapshots],
            "snapshot_scans": list(self.snapshot_scans),
            "scans_requested": self.scans_requested,
            "ended_early": self.ended_early,
            "knobs": dict(self.knobs),
            "provenance": self.provenance.to_dict(),
        }


# ------------------------------------------------------------------------------ knobs


#: Replay knob name -> sysfs knob name, from the knob table (``hz`` has none: it is the
#: kernel's CONFIG_HZ; ``advisor_initial_cpu_s`` neither: it is the host's past).
REPLAY_TO_SYSFS: Final = sysfs_names()


def sysfs_knobs(knobs: KsmKnobs | Mapping[str, Any]) -> dict[str, int | str]:
    """Translate replay knobs (``KsmKnobs`` or a mapping with its names) to sysfs knobs.

    Knobs without a sysfs file (``hz``, ``advisor_initial_cpu_s``) are dropped. With the
    scan-time advisor ``pages_to_scan`` is dropped too: switching the advisor on starts it at
    ``advisor_min_pages_to_scan`` and the kernel refuses writes of ``pages_to_scan`` while it
    is on (the replay does the same).

    Examples
    --------
    >>> sysfs_knobs({"pages_to_scan": 1000, "sleep_ms": 100, "smart_scan": False})
    {'pages_to_scan': 1000, 'sleep_millisecs': 100, 'smart_scan': 0}
    """
    values = dict(knobs) if isinstance(knobs, Mapping) else knobs.to_dict()
    out: dict[str, int | str] = {}
    for src, dst in REPLAY_TO_SYSFS.items():
        if values.get(src) is not None:
            out[dst] = spec(src).to_sysfs(spec(src).check(values[src]))
    if out.get("advisor_mode", "none") != "none":
        out.pop("pages_to_scan", None)
    return out


# ------------------------------------------------------------------------------ holders


class HolderSet:
    """The live holder processes of a run; kills every one of them on exit."""

    def __init__(
        self, plan: MaterializationPlan, *, timeout_s: float = 600.0, procfs: ProcFS | None = None
    ) -> None:
        self.plan = plan
        self.timeout_s = timeout_s
        self.procfs = procfs or ProcFS()
        self.holders: dict[ProcKey, Holder] = {}
        self.registered: set[ProcKey] = set()
        self._created: list[Holder] = []
        self._old_subreaper: int | None = None
        self.pending_teardown = 0
        """Registered holders that exited with rmap items since the last scan (ksmd tears
        their mm down in the next scan, so the list is not empty)."""

    def __enter__(self) -> HolderSet:
        libc = ctypes.CDLL(None, use_errno=True)
        val = ctypes.c_int(0)
        if libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(val), 0, 0, 0) == 0:
            self._old_subreaper = val.value
            # Orphaned fork children (their holder parent exited) are re-parented to us and reaped.
            libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Kill every holder (children before parents) and wait until they are gone."""
        for h in reversed(self._created):
            with contextlib.suppress(Exception):
                h.kill()
        self._created.clear()
        self.holders.clear()
        if self._old_subreaper is not None:
            ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, self._old_subreaper, 0, 0, 0)
            self._old_subreaper = None

    def list_empty(self) -> bool:
        """Whether ksmd's mm list is empty (no scan would happen)."""
        return not self.registered and not self.pending_teardown

    def pids(self) -> dict[int, int]:
        """Trace pid -> holder pid of the live holders."""
        return {key.pid: h.pid for key, h in self.holders.items()}

    def apply(self, snap: SnapshotPlan) -> None:
        """Run the steps of one snapshot (ksmd must be stopped)."""
        try:
            for step in snap.steps:
                if step.action == "spawn":
                    fam = self.plan.family_of(step.key)
                    h = Holder.spawn(timeout_s=self.timeout_s)
                    self._created.append(h)
                    h.map_region(fam.nslots, fam.thp_blocks)
                    self.holders[step.key] = h
                elif step.action == "fork":
                    assert step.parent is not None
                    parent = self.holders[step.parent]
                    h = parent.fork()
                    self._created.append(h)
                    self.holders[step.key] = h
                    if step.parent in self.registered:
                        self.registered.add(step.key)
                elif step.action == "exit":
                    h = self.holders.pop(step.key)
                    rmap_items = self.procfs.ksm_stat(h.pid).get("ksm_rmap_items", 0)
                    if step.key in self.registered and rmap_items > 0:
                        self.pending_teardown += 1
                    h.exit()
                    self._created.remove(h)
                    self.registered.discard(step.key)
                    continue
                h = self.holders[step.key]
                if step.dontneed_slots.size:
                    h.dontneed(step.dontneed_slots.tolist())
                if step.write_slots.size:
                    h.write(step.write_slots.tolist(), step.write_contents())
                if step.register:
                    h.register()
                    self.registered.add(step.key)
        except HolderError as exc:
            raise EnvironmentProblem(
                f"a holder process failed while applying snapshot {snap.snapshot_id}: {exc}",
                hint="check memory limits (ulimit, cgroup) and dmesg",
            ) from exc

    def sample(self, *, detail: bool) -> dict[int, dict[str, int]]:
        """``ksm_stat`` (and with ``detail`` smaps_rollup KSM/AnonHugePages kB) per trace pid."""
        out: dict[int, dict[str, int]] = {}
        for key, h in sorted(self.holders.items()):
            stat = self.procfs.ksm_stat(h.pid, strict=True)  # a holder of ours: it is there
            rec = {k: int(stat.get(k, 0)) for k in PROCESS_FIELDS}
            if detail:
                rollup = self.procfs.smaps_rollup_kb(h.pid)
                rec["smaps_ksm_kb"] = rollup.get("KSM", 0)
                rec["anon_huge_kb"] = rollup.get("AnonHugePages", 0)
            out[key.pid] = rec
        return out

    def vmstat(self) -> dict[str, int]:
        """The KSM counters of ``/proc/vmstat`` (``cow_ksm``, ``ksm_swpin_copy``)."""
        vm = self.procfs.vmstat()
        return {k: vm[k] for k in VMSTAT_FIELDS if k in vm}


# ------------------------------------------------------------------------------ the run


@dataclass
class _Clock:
    hz: int
    sleep_ms: int
    pages_to_scan: int

    def min_sleep_s(self) -> float:
        """A lower bound of ksmd's sleep after a batch (jiffies rounding, one jiffy of slack)."""
        jiffies = math.ceil(self.sleep_ms * self.hz / 1000)
        return max(jiffies - 1, 0) / self.hz

    def scan_timeout_s(self, pages: int) -> float:
        batches = pages // max(self.pages_to_scan, 1) + 1
        period = (math.ceil(self.sleep_ms * self.hz / 1000) + 2) / self.hz * 1.3 + 0.005
        return 30.0 + 3.0 * (batches * period + pages * 50e-6)


class _Runner:
    def __init__(
        self,
        lease: KsmLease,
        holders: HolderSet,
        clock: _Clock,
        *,
        stopper: LeasedScanStopper,
        detail: bool,
        poll_s: float,
    ) -> None:
        self.lease = lease
        self.stopper = stopper
        self.sysfs: KsmSysfs = lease.sysfs
        self.holders = holders
        self.clock = clock
        self.detail = detail
        self.poll_s = poll_s
        self.base = self.sysfs.counters()
        self.base_vm = holders.vmstat()
        self.t0: float | None = None

    def t(self) -> float:
        return 0.0 if self.t0 is None else time.monotonic() - self.t0

    def counters(self) -> dict[str, int]:
        c = self.sysfs.counters()
        for k in DELTA_COUNTERS:
            if k in c:
                c[k] -= self.base.get(k, 0)
        return c

    def vmstat(self) -> dict[str, int]:
        return {k: v - self.base_vm.get(k, 0) for k, v in self.holders.vmstat().items()}

    def scan_to(self, b: int, pages: int) -> ScanRecord | None:
        """Let ksmd run to the end of full scan ``b``, stop it, sample. ``None``: no scan came.

        The stopper (a process of its own, :mod:`planner.kernel.scanstop`) writes ``run=1``,
        catches the end of the scan and writes ``run=0``: this process may be off the CPU
        meanwhile (another thread holding the GIL, a garbage collection) without missing it.
        """
        nothing_left = not self.holders.registered  # only exited mms to tear down
        timeout = self.clock.scan_timeout_s(pages)
        if nothing_left:
            timeout = min(timeout, 2.0 + 4 * self.clock.sleep_ms / 1000)
        if self.t0 is None:
            self.t0 = time.monotonic()
        stop = self.stopper.run_to(b, timeout_s=timeout, poll_s=self.poll_s)
        if stop.timed_out:
            if nothing_left:
                return None
            raise EnvironmentProblem(
                f"ksmd did not finish full scan {b} within {timeout:.0f} s "
                f"(full_scans={stop.full_scans_seen})",
                hint="is another process competing for CPU? try a larger --pages-to-scan",
            )
        if stop.full_scans_after != b:
            raise EnvironmentProblem(
                f"ksmd completed full scan {stop.full_scans_after} before it could be stopped "
                f"after scan {b}",
                hint="use a longer --sleep-ms so that the end of each scan can be caught",
            )
        # A scan of fewer pages than pages_to_scan is one batch: had ksmd begun the next one,
        # stopping would have waited for it and full_scans would show it (checked above).
        # Otherwise a stall longer than ksmd's sleep may hide the start of the next scan.
        late = pages >= self.clock.pages_to_scan and stop.gap_s > self.clock.min_sleep_s()
        self.holders.pending_teardown = 0
        return ScanRecord(
            full_scans=b,
            t_s=self.t(),
            counters=self.counters(),
            processes=self.holders.sample(detail=self.detail),
            vmstat=self.vmstat(),
            late=late,
        )

    def after_snapshot(self, snap: SnapshotPlan, before_scan: int) -> SnapshotRecord:
        return SnapshotRecord(
            index=snap.index,
            snapshot_id=snap.snapshot_id,
            before_scan=before_scan,
            t_s=self.t(),
            counters=self.counters(),
            processes=self.holders.sample(detail=self.detail),
            vmstat=self.vmstat(),
        )


def _check_schedule(
    plan: MaterializationPlan, snapshot_scans: Sequence[int], scans: int
) -> list[int]:
    s = [int(x) for x in snapshot_scans]
    if len(s) != len(plan.snapshots):
        raise UsageProblem(
            f"snapshot_scans has {len(s)} entries, the trace {len(plan.snapshots)} snapshots",
            hint="give one full-scan index per snapshot",
        )
    if not s:
        raise UsageProblem(
            "the trace has no snapshots", hint="give a trace with at least one snapshot"
        )
    if s[0] != 1:
        raise UsageProblem(
            f"the first snapshot must be visible at full scan 1, not {s[0]} "
            "(ksmd does not scan an empty list)",
            hint="shift the schedule so that it starts at 1",
        )
    if any(b < a for a, b in itertools.pairwise(s)):
        raise UsageProblem(
            "snapshot_scans must not decrease", hint="give full-scan indices in snapshot order"
        )
    if scans < 1:
        raise UsageProblem(
            f"scans must be at least 1, not {scans}", hint="ask for one full scan or more"
        )
    return s


def _check_memory(plan: MaterializationPlan, procfs: ProcFS) -> None:
    need = plan.max_pages * 4096 + plan.max_processes * _HOLDER_OVERHEAD_BYTES
    avail = procfs.meminfo_bytes().get("MemAvailable")
    if avail is not None and need > 0.8 * avail:
        raise EnvironmentProblem(
            f"materialising the trace needs about {need / 2**30:.1f} GiB "
            f"({plan.max_pages} pages, {plan.max_processes} processes) "
            f"but only {avail / 2**30:.1f} GiB is available",
            hint="validate a smaller trace or a subset of its processes",
        )


def run_on_kernel(
    trace: HostTrace | MaterializationPlan,
    *,
    knobs: Mapping[str, int | str],
    snapshot_scans: Sequence[int],
    scans: int,
    knob_changes: Mapping[int, Mapping[str, int | str]] | None = None,
    detail: bool = False,
    lease: KsmLease | None = None,
    progress: Progress = NULL_PROGRESS,
    poll_s: float = 0.001,
    procfs: ProcFS | None = None,
) -> KernelRun:
    """Replay a trace on the real kernel and sample KSM after every full scan.

    Parameters
    ----------
    trace
        The trace of one host, or a plan made from it by :func:`plan_materialization`.
    knobs
        sysfs knobs (``pages_to_scan``, ``sleep_millisecs``, ...); others get kernel defaults.
        See :func:`sysfs_knobs` for replay-style names.
    snapshot_scans
        For snapshot ``k``, the full scan (1-based) at whose start it is visible. Must start at
        1 and not decrease. Snapshots due at ``scans + 1`` are applied after the last scan
        (with an after-snapshot record); later ones are not applied.
    scans
        How many full scans to run.
    knob_changes
        ``{scan: {knob: value}}``: knobs written (ksmd stopped) just before that scan.
    detail
        Also read smaps_rollup ``KSM:`` and ``AnonHugePages:`` of every holder.
    lease
        A lease already held by the caller (it is reset with ``knobs``); by default one is
        taken for the run.
    progress
        Receives one unit per full scan.
    poll_s
        How often ``full_scans`` is polled.
    procfs
        Where the holders' ``ksm_stat``, ``smaps_rollup``, ``/proc/vmstat`` and
        ``/proc/meminfo`` are read (default ``/proc``).

    Returns
    -------
    KernelRun
        One :class:`ScanRecord` per full scan and one :class:`SnapshotRecord` per applied snapshot.

    Raises
    ------
    KernelUnsupportedError, KsmBusyError
        No KSM, not root, or KSM in use (from the lease).
    InputDataError
        The trace cannot be materialised (see :mod:`planner.kernel.materialize`).
    EnvironmentProblem
        A holder failed, memory is short, or ksmd could not be caught between scans.
    """
    plan = trace if isinstance(trace, MaterializationPlan) else plan_materialization(trace)
    schedule = _check_schedule(plan, snapshot_scans, scans)
    procfs = procfs or ProcFS()
    _check_memory(plan, procfs)
    changes = {int(k): dict(v) for k, v in (knob_changes or {}).items()}
    due: dict[int, list[int]] = {}
    for k, b in enumerate(schedule):
        due.setdefault(b, []).append(k)
    own = lease is None
    cm: contextlib.AbstractContextManager[KsmLease] = (
        KsmLease(knobs) if lease is None else contextlib.nullcontext(lease)
    )
    started = time.monotonic()
    with cm as ls:
        if not own:
            ls.reset(knobs)
        applied = ls.applied
        clock = _Clock(
            hz=kernel_hz() or 100,
            sleep_ms=int(applied.get("sleep_millisecs", 20)),
            pages_to_scan=int(
                applied.get("pages_to_scan", applied.get("advisor_min_pages_to_scan", 100))
            ),
        )
        records: list[ScanRecord] = []
        snaps: list[SnapshotRecord] = []
        ended_early = False
        progress.start("kernel full scans", scans)
        applied_at: list[int | None] = [None] * len(schedule)
        with HolderSet(plan, procfs=procfs) as holders, ls.scan_stopper() as stopper:
            runner = _Runner(ls, holders, clock, stopper=stopper, detail=detail, poll_s=poll_s)
            nxt, b, pages = 0, 1, 0

            def apply_next(before_scan: int) -> None:
                nonlocal nxt, pages
                holders.apply(plan.snapshots[nxt])
                pages = plan.snapshots[nxt].pages
                snaps.append(runner.after_snapshot(plan.snapshots[nxt], before_scan))
                applied_at[nxt] = before_scan
                nxt += 1

            while b <= scans:
                while nxt < len(schedule) and schedule[nxt] <= b:
                    apply_next(b)
                if holders.list_empty():
                    if nxt < len(schedule):  # ksmd waits for a registration: the next snapshot
                        apply_next(b)
                        continue
                    ended_early = True
                    break
                for name, value in changes.get(b, {}).items():
                    ls.write(name, value)
                rec = runner.scan_to(b, pages)
                if rec is None:
                    ended_early = True
                    break
                records.append(rec)
                progress.advance(1)
                b += 1
            while not ended_early and nxt < len(schedule) and schedule[nxt] <= scans + 1:
                apply_next(scans + 1)
        progress.finish()
        saved = dict(ls.saved)
    provenance = Provenance(
        trace_hash=getattr(trace, "trace_hash", None),
        trace_path=str(getattr(trace, "path", "") or "") or None,
        hosts=(plan.host,),
        kernel_release=platform.release(),
        knobs=dict(applied),
        command="run_on_kernel",
        extra={
            "host": HostInfo.collect().to_dict(),
            "ksm_sysfs_before": saved,
            "snapshot_scans": schedule,
            "knob_changes": {str(k): v for k, v in changes.items()},
            "duration_s": round(time.monotonic() - started, 3),
            "pid": os.getpid(),
        },
    )
    return KernelRun(records, snaps, applied_at, scans, dict(applied), provenance, ended_early)
