"""``validate --kernel``: replay a trace, run it on the real kernel, compare scan by scan.

:func:`validate_on_kernel` replays the trace with snapshot-at-scan-boundary semantics
(``ReplayOptions(snapshot_alignment="scan")``: a snapshot takes effect when the first full
scan starting at or after its time starts), takes the full scan at which the replay applied
each snapshot, runs the same schedule on the real ksmd (:func:`run_on_kernel`) and compares
every global counter and every process's ``ksm_stat`` after each full scan. They must agree
exactly.

Notes
-----
``pages_scanned`` and ``pages_skipped`` are compared as counts since the start of the run (the
kernel never resets them, docs/kernel-semantics.md §6.3). Timing (``t_s``) is reported but
not compared: the kernel's real batch period differs from the replay's model by a jiffy here
and there, and the schedule is fixed by scan numbers, not times.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from planner._progress import NULL_PROGRESS, Progress
from planner.errors import UsageProblem
from planner.kernel.run import KernelRun, run_on_kernel, sysfs_knobs
from planner.kernel.sysfs import COUNTERS, KsmLease
from planner.provenance import HostInfo, Provenance
from planner.trace.io import HostTrace, open_trace

if TYPE_CHECKING:
    import os

    from planner.engine import KsmKnobs
    from planner.engine.api import EngineName

#: Full scans run after the replay applied the last snapshot, when ``scans`` is not given.
DEFAULT_SETTLE_SCANS = 4
#: Per-process ``ksm_stat`` fields compared.
PROCESS_FIELDS = ("ksm_rmap_items", "ksm_merging_pages", "ksm_zero_pages", "ksm_process_profit")


@dataclass(frozen=True)
class ScanComparison:
    """Kernel and replay after one full scan, and where they differ (``replay - kernel``)."""

    full_scans: int
    kernel: dict[str, int] | None
    replay: dict[str, int] | None
    diff: dict[str, int]
    kernel_t_s: float | None
    replay_t_s: float | None
    processes: dict[str, dict[str, dict[str, int | None]]] = field(default_factory=dict)
    """Per pid, only where they differ: ``{"kernel": {...}, "replay": {...}}``."""

    @property
    def agree(self) -> bool:
        """Whether every counter and every process value is equal."""
        return (
            self.kernel is not None
            and self.replay is not None
            and not self.diff
            and not self.processes
        )


@dataclass(frozen=True)
class KernelValidation:
    """The result of :func:`validate_on_kernel`."""

    scans: list[ScanComparison]
    snapshot_scans: list[int | None]
    knobs: dict[str, Any]
    sysfs_knobs: dict[str, int | str]
    engine: str
    kernel: KernelRun
    provenance: Provenance
    notes: list[str] = field(default_factory=list)

    @property
    def agree(self) -> bool:
        """Whether the kernel and the replay agree on every full scan."""
        return bool(self.scans) and all(s.agree for s in self.scans)

    @property
    def mismatched_scans(self) -> list[int]:
        """Full scans where they differ."""
        return [s.full_scans for s in self.scans if not s.agree]

    def summary(self) -> str:
        """One line: agreement, or where the first difference is."""
        n = len(self.scans)
        if self.agree:
            return f"the kernel and the replay ({self.engine}) agree on all {n} full scans"
        bad = self.mismatched_scans
        first = next(s for s in self.scans if not s.agree)
        if first.kernel is None or first.replay is None:
            what = (
                "the kernel ran no such scan"
                if first.kernel is None
                else "the replay has no such scan"
            )
        elif first.diff:
            k = next(iter(first.diff))
            what = f"{k} kernel {first.kernel.get(k)} replay {first.replay.get(k)}"
        else:
            pid, vals = next(iter(first.processes.items()))
            key = next(
                (f for f in PROCESS_FIELDS if vals["kernel"].get(f) != vals["replay"].get(f)),
                PROCESS_FIELDS[0],
            )
            what = (
                f"pid {pid} {key} kernel {vals['kernel'].get(key)} replay {vals['replay'].get(key)}"
            )
        return (
            f"the kernel and the replay ({self.engine}) differ in {len(bad)} of {n} full scans, "
            f"first at scan {first.full_scans}: {what}"
        )

    def to_dict(self) -> dict[str, Any]:
        """The ``validate --kernel --json`` document."""
        return {
            "command": "validate --kernel",
            "agree": self.agree,
            "summary": self.summary(),
            "engine": self.engine,
            "knobs": self.knobs,
            "sysfs_knobs": self.sysfs_knobs,
            "snapshot_scans": self.snapshot_scans,
            "scans_compared": len(self.scans),
            "mismatched_scans": self.mismatched_scans,
            "scans": [
                {
                    "full_scans": s.full_scans,
                    "agree": s.agree,
                    "kernel_t_s": s.kernel_t_s,
                    "replay_t_s": s.replay_t_s,
                    "kernel": s.kernel,
                    "replay": s.replay,
                    "diff": s.diff,
                    "processes": s.processes,
                }
                for s in self.scans
            ],
            "kernel_run": {
                "ended_early": self.kernel.ended_early,
                "late_scans": [r.full_scans for r in self.kernel.scans if r.late],
                "snapshots_applied_before_scan": self.kernel.snapshot_scans,
            },
            "notes": self.notes,
            "provenance": self.provenance.to_dict(),
        }


def _compare(kernel: KernelRun, replay_scans: list[Any], n: int) -> list[ScanComparison]:
    k_by = {r.full_scans: r for r in kernel.scans}
    r_by = {int(r.full_scans): r for r in replay_scans}
    out = []
    for b in range(1, n + 1):
        kr, rr = k_by.get(b), r_by.get(b)
        names: tuple[str, ...] = COUNTERS
        kc = {c: kr.counters[c] for c in names if c in kr.counters} if kr else None
        rc = {c: int(rr.counters[c]) for c in names if c in rr.counters} if rr else None
        diff: dict[str, int] = {}
        procs: dict[str, dict[str, dict[str, int | None]]] = {}
        if kc is not None and rc is not None:
            diff = {c: rc[c] - kc[c] for c in kc if c in rc and rc[c] != kc[c]}
            diff.update({c: rc[c] for c in rc if c not in kc})
            kp = {str(pid): v for pid, v in kr.processes.items()} if kr else {}
            rp = {str(pid): v for pid, v in rr.processes.items()} if rr else {}
            for pid in sorted(set(kp) | set(rp), key=lambda p: (len(p), p)):
                kv = {f: kp[pid].get(f) for f in PROCESS_FIELDS} if pid in kp else {}
                rv = {f: rp[pid].get(f) for f in PROCESS_FIELDS} if pid in rp else {}
                if kv != rv:
                    procs[pid] = {"kernel": kv, "replay": rv}
        out.append(
            ScanComparison(
                full_scans=b,
                kernel=kc,
                replay=rc,
                diff=diff,
                kernel_t_s=kr.t_s if kr else None,
                replay_t_s=float(rr.t_s) if rr else None,
                processes=procs,
            )
        )
    return out


def validate_on_kernel(
    source: HostTrace | str | os.PathLike[str],
    *,
    knobs: KsmKnobs | None = None,
    host: str | None = None,
    scans: int | None = None,
    engine: EngineName = "vectorized",
    lease: KsmLease | None = None,
    progress: Progress = NULL_PROGRESS,
) -> KernelValidation:
    """Replay a trace and run it on the real kernel; compare every full scan.

    Parameters
    ----------
    source
        A host trace, or the path of a trace directory (``host`` picks the host).
    knobs
        The replay's knobs (default: the kernel's defaults with this kernel's HZ). They are
        written to ``/sys/kernel/mm/ksm`` for the kernel run (:func:`sysfs_knobs`).
    scans
        Full scans to run and compare (default: until :data:`DEFAULT_SETTLE_SCANS` scans
        after the last snapshot, as the replay decides).
    engine
        The replay engine (``vectorized`` or ``reference``).
    lease
        A KSM lease the caller holds (tests); by default one is taken.

    Returns
    -------
    KernelValidation
        ``.agree`` tells whether kernel and replay agree on every counter after every scan.
    """
    from planner.engine import KsmKnobs, replay
    from planner.engine.options import ReplayOptions
    from planner.provenance import kernel_hz

    if lease is None:
        KsmLease().preflight()  # fail fast (not root, no KSM, KSM busy) before the replay
    ht = source if isinstance(source, HostTrace) else open_trace(source).load_host(host)
    if knobs is None:
        knobs = KsmKnobs.for_hz(kernel_hz())
    if scans is not None and scans < 1:
        raise UsageProblem(
            f"--scans must be at least 1, not {scans}", hint="ask for one full scan or more"
        )
    if scans is None:
        opts = ReplayOptions(snapshot_alignment="scan", settle_scans=DEFAULT_SETTLE_SCANS)
    else:
        opts = ReplayOptions(snapshot_alignment="scan", max_scans=scans, settle_scans=scans)
    res = replay(ht, knobs=knobs, options=opts, engine=engine, progress=progress)
    n = scans if scans is not None else len(res.scans)
    if n < 1:
        raise UsageProblem(
            "the replay ran no full scan, so there is nothing to compare",
            hint="check that the trace has pages and that KSM is enabled for its processes",
        )
    schedule = [s if s is not None else n + 2 for s in res.snapshot_first_scan]
    kern = sysfs_knobs(knobs)
    run = run_on_kernel(
        ht, knobs=kern, snapshot_scans=schedule, scans=n, lease=lease, progress=progress
    )
    comparisons = _compare(run, list(res.scans), n)
    notes = []
    late = [r.full_scans for r in run.scans if r.late]
    if late:
        notes.append(
            f"the end of full scans {late} was noticed late; ksmd may have begun the next scan "
            "before it was stopped (raise --sleep-ms if these scans differ)"
        )
    if run.ended_early:
        notes.append(
            f"ksmd's list became empty after {len(run.scans)} full scans (every process exited)"
        )
    hz_kernel = kernel_hz()
    if hz_kernel is not None and hz_kernel != knobs.hz:
        notes.append(f"the replay used hz={knobs.hz} but this kernel runs at HZ={hz_kernel}")
    provenance = Provenance(
        trace_path=str(ht.path.parent) if ht.path is not None else None,
        trace_hash=ht.trace_hash,
        hosts=(ht.host,),
        kernel_release=platform.release(),
        knobs=knobs.to_dict(),
        command="validate --kernel",
        extra={
            "engine": engine,
            "sysfs_knobs": kern,
            "host": HostInfo.collect().to_dict(),
            "kernel_run": run.provenance.to_dict()["extra"],
            "replay_provenance": res.provenance,
        },
    )
    return KernelValidation(
        scans=comparisons,
        snapshot_scans=list(run.snapshot_scans),
        knobs=knobs.to_dict(),
        sysfs_knobs=kern,
        engine=engine,
        kernel=run,
        provenance=provenance,
        notes=notes,
    )
