"""Measure ksmd's CPU cost per page and code path on this host: a :class:`CostProfile`.

:func:`calibrate` drives the real KSM inside a :class:`~planner.kernel.sysfs.KsmLease`
(the only writer of ``/sys/kernel/mm/ksm``; every knob is restored on exit) with holder
processes (:mod:`planner.kernel.holder`) that own private anonymous pages of chosen
contents, and reads ksmd's CPU time from ``/proc/<ksmd>/schedstat`` (first field: nanoseconds
on a CPU). The method is the one of docs/kernel-semantics.md §10.3:

* **One wake-up is one full scan.** ``pages_to_scan`` is far above the pages present and
  ``sleep_millisecs`` is 100, so each wake-up scans everything in one batch. ksmd is stopped
  (``run=0``) right after each ``full_scans`` increment and started again for the next scan,
  so the runtime delta between two stops is the cost of exactly one full scan.
* **Wake-up and scan-start overhead** (``wake`` phases): a few already-merged pages, first
  with one batch per full scan, then with ``pages_to_scan=1`` (one page per batch), both at
  ``sleep_millisecs=20``. The two windows give two linear equations in the cost of a batch
  ``b`` and of a scan start ``s`` (``lru_add_drain_all`` and friends); ``b + s`` is
  subtracted from every one-batch scan below, ``s`` is the profile's ``scan_start_ns``.
* **Per-path costs** (per size ``N`` of ``sizes``), one holder each:

  - ``unique``: ``N`` different pages (they differ in the first word), smart scan on.
    Scan 1 = first visit (rmap_item allocation + checksum); the pages are rewritten while
    ksmd is stopped, so scan 2 = changed page (checksum only); scans 3 and 4 = unchanged
    unique page inserted into the unstable tree (``N`` items); scan 5 = smart-scan skip of
    every page (age 4, §7).
  - ``same``: ``N`` identical pages. Scan 1 = first visit, scan 2 = merge (pairs, then joins),
    scan 3 = already-KSM page; then the holder forks, and scan 4 = the parent's KSM pages
    plus the child's first visits of KSM pages (``fork_join``).
  - ``zero`` (one size): zero-filled pages with ``use_zero_pages=1``: scan 2 = zero merge.

  The unstable-insert cost is fitted as ``unstable_base_ns + unstable_per_level_ns *
  L(N)`` with ``L(N)`` the mean levels an insert walks in a scan of ``N`` inserts into the
  tree emptied at the scan's start (non-negative least squares over the sizes; the formula
  of :meth:`CostProfile.scan_insert_ns`, the one the engines charge insert by insert); the
  other paths take the median over the sizes.
* **Batch overhead and wake latency** (``defaults`` phase): ``N`` unique pages with smart
  scan off are brought to the steady state (every visit an unstable insert, whose warm cost
  is measured by a one-batch scan), then ksmd runs at the defaults (100 pages every 20 ms)
  for a window. The CPU left after the warm per-page costs and the scan starts, per batch,
  is ``batch_overhead_ns`` (it includes the cold-cache penalty of small batches, like the
  default profile's fit); the measured batch period minus the CPU of a batch and minus
  the slept jiffies (:func:`planner.engine.timing.sleep_ns`, §4.4) is ``wake_latency_ns``
  (clamped at 0: where ksmd wakes on a tick boundary, the batch's CPU time hides inside the
  jiffy-rounded sleep; the raw value is kept in the fit).

* **The busy-host terms** cannot be measured on an idle host. The profile takes the shipped
  profile's ``sched_contention``, and its ``busy_page_factor`` anchored to this host's
  unstable-tree insert (:meth:`CostProfile.busy_factor_anchored_to`): a busy host's insert
  costs what the shipped profile's live runs measured, whatever this host's idle cost
  (docs/busy-host.md §5). The fit records the figures (``busy_anchor``).

Expect ±30 % between runs on a VM (docs/kernel-semantics.md §10.3), more on a busy host:
the load average at start and end is recorded in the profile's provenance together with
every raw measurement.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from planner._fs import atomic_file
from planner._progress import NULL_PROGRESS, Progress
from planner.capture.procfs import ProcessGone, ProcFS
from planner.engine.cost import (
    BUSY_ANCHOR_INSERTS,
    CostProfile,
    mean_insert_levels,
    profile_for_trace,
    same_cpu,
)
from planner.engine.costfit import (
    FIT_METHOD,
    CostFit,
    KsmdWindow,
    fit_cost,
    fitted_profile,
    ksmd_window,
    recorded_cow_per_s,
    unseen_rows,
    weigh_held_content,
    weigh_missed_spread,
    weigh_page_classes,
    weigh_unseen,
)
from planner.engine.timing import NS_PER_S, HostLoad, sleep_ns, tick_ns
from planner.errors import (
    CapturePermissionError,
    EnvironmentProblem,
    KernelUnsupportedError,
    UsageProblem,
)
from planner.kernel.holder import PAGE_BYTES, Holder, HolderError
from planner.kernel.sysfs import PROC_ROOT, KsmLease, KsmSysfs
from planner.provenance import HostInfo, cpu_identity, kernel_hz, tool_version

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    import numpy.typing as npt

    from planner.engine.prepare import ReplayInput
    from planner.engine.registration import Resolver
    from planner.engine.writes import CanaryRates
    from planner.kernel.sysfs import LeasedScanStopper

#: Sizes (pages) of the per-path scenarios: full run and ``quick`` run.
FULL_SIZES: Final = (1000, 10000, 100000, 300000)
QUICK_SIZES: Final = (1000, 4000, 16000)
MIN_SIZE: Final = 256
MAX_SIZE: Final = 2_000_000
#: Knobs of the one-wake-one-scan scenarios.
ONE_SCAN_PAGES: Final = 10_000_000
ONE_SCAN_SLEEP_MS: Final = 100
#: The kernel defaults the batch-overhead phase runs at.
DEFAULT_PAGES_TO_SCAN: Final = 100
DEFAULT_SLEEP_MS: Final = 20
#: Already-merged pages of the wake-up phases.
WAKE_PAGES: Final = 64
METHOD: Final = (
    "ksm-planner calibrate: ksmd runtime from /proc/<ksmd>/schedstat; one wake-up = one full "
    "scan (pages_to_scan 10^7, sleep 100 ms, ksmd stopped between scans); per-path cost = "
    "(scan CPU - wake-up CPU) / pages; unstable insert fitted base + per_level * the mean "
    "levels of N inserts into an emptied tree, sum(ceil(log2 k), k=1..N) / N "
    "(NNLS); wake-up and scan-start CPU from 64 KSM pages at 1 and at 10^7 pages per batch; "
    "batch overhead and wake latency from a window at 100 pages / 20 ms on steady unique pages"
)


@dataclass(frozen=True)
class CalibrationPlan:
    """What a calibration run measures (see :func:`plan_calibration`)."""

    sizes: tuple[int, ...]
    zero_size: int
    defaults_size: int
    wake_window_s: float
    defaults_window_s: float
    quick: bool

    def steps(self) -> int:
        """Progress units: one per full scan or measurement window."""
        wake, per_size, zero, defaults = 2 + 2, 5 + 4, 2, 3 + 1
        return wake + len(self.sizes) * per_size + zero + defaults

    def max_pages(self) -> int:
        """The most pages held at once (a ``same`` holder and its fork share their pages)."""
        return max(*self.sizes, self.zero_size, self.defaults_size)


def plan_calibration(sizes: Sequence[int] | None = None, *, quick: bool = False) -> CalibrationPlan:
    """Check the sizes and choose the phases' sizes and windows.

    Raises
    ------
    UsageProblem
        Fewer than two distinct sizes, or a size outside ``[256, 2 000 000]`` pages.

    Examples
    --------
    >>> plan_calibration(quick=True).sizes
    (1000, 4000, 16000)
    """
    chosen = tuple(sorted(set(sizes))) if sizes else (QUICK_SIZES if quick else FULL_SIZES)
    bad = [s for s in chosen if not MIN_SIZE <= s <= MAX_SIZE]
    if bad:
        raise UsageProblem(
            f"calibration sizes must be between {MIN_SIZE} and {MAX_SIZE} pages, got {bad}",
            hint="give page counts such as --sizes 1000,10000,100000",
        )
    if len(chosen) < 2:
        raise UsageProblem(
            "calibration needs at least two different sizes to fit the unstable-tree cost",
            hint="give two or more page counts, e.g. --sizes 1000,10000",
        )
    return CalibrationPlan(
        sizes=chosen,
        zero_size=min(chosen[-1], 100_000),
        defaults_size=5000 if quick else 20000,
        wake_window_s=2.0 if quick else 5.0,
        defaults_window_s=3.0 if quick else 10.0,
        quick=quick,
    )


# ----------------------------------------------------------------------------- measurements


@dataclass(frozen=True)
class ScanCost:
    """ksmd's CPU time of one full scan done in one wake-up."""

    scenario: str
    pages: int
    """Pages the holder(s) of the scenario own (``N``)."""
    scan: int
    """Full scan within the scenario (1-based)."""
    path: str
    """The code path every page of this scan took (``first_visit``, ``merge``, ...)."""
    cpu_ns: int
    scanned: int
    """``pages_scanned`` increase (pages handed to cmp_and_merge_page)."""
    skipped: int
    """``pages_skipped`` increase (smart scan)."""
    counters: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Window:
    """ksmd running freely for a while: CPU, pages, full scans and wall time."""

    phase: str
    pages_to_scan: int
    sleep_ms: int
    wall_ns: int
    cpu_ns: int
    scanned: int
    full_scans: int
    wait_ns: int | None = None
    """ksmd's time runnable but waiting for a CPU during the window (the second field of its
    ``schedstat``): what a busy host adds to the batch period; ``None`` where not recorded."""

    @property
    def batches(self) -> float:
        """Batches run: full batches plus the one that ends each full scan
        (docs/kernel-semantics.md §4.2)."""
        return self.scanned / self.pages_to_scan + self.full_scans


@dataclass(frozen=True)
class Measurements:
    """Every raw measurement of a calibration run (input of :func:`fit_profile`)."""

    scans: list[ScanCost]
    windows: list[Window]
    hz: int
    wake_pages: int = WAKE_PAGES

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "hz": self.hz,
            "wake_pages": self.wake_pages,
            "scans": [asdict(s) for s in self.scans],
            "windows": [asdict(w) for w in self.windows],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Measurements:
        """Inverse of :meth:`to_dict`."""
        return cls(
            scans=[ScanCost(**s) for s in d["scans"]],
            windows=[Window(**w) for w in d["windows"]],
            hz=int(d["hz"]),
            wake_pages=int(d.get("wake_pages", WAKE_PAGES)),
        )


@dataclass(frozen=True)
class Calibration:
    """The result of :func:`calibrate`: the profile, how it was fitted, and the shipped
    profile of this host's CPU next to it."""

    profile: CostProfile
    fit: dict[str, Any]
    measurements: Measurements
    written: str | None = None

    @property
    def shipped(self) -> CostProfile:
        """The shipped profile replays use for this host's CPU without a ``--cost-profile``
        (:meth:`CostProfile.for_cpu`: the default where none was measured on it)."""
        return CostProfile.for_cpu(self.profile.cpu)

    @property
    def shipped_is_this_cpus(self) -> bool:
        """Whether :attr:`shipped` was measured on this host's CPU generation (else it is
        the default, shipped for no CPU in particular)."""
        return same_cpu(self.profile.cpu, self.shipped.cpu)

    def comparison(self) -> list[dict[str, Any]]:
        """Each cost of the profile next to :attr:`shipped`'s (``shipped``, named by
        ``shipped_profile``), with their ratio."""
        shipped = self.shipped
        ref_costs = shipped.to_dict()
        rows = []
        for name, value in self.profile.to_dict().items():
            if not name.endswith("_ns"):
                continue
            ref = ref_costs[name]
            rows.append(
                {
                    "field": name,
                    "calibrated": value,
                    "shipped": ref,
                    "shipped_profile": shipped.name,
                    "ratio": value / ref if ref else None,
                }
            )
        return rows

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the profile document, the comparison and the fit)."""
        return {
            "profile": self.profile.to_dict(),
            "comparison": self.comparison(),
            "fit": self.fit,
            "written": self.written,
        }


# ----------------------------------------------------------------------------- fitting


def _median(values: Sequence[float], what: str) -> float:
    if not values:
        raise EnvironmentProblem(
            f"calibration measured no {what} cost (no scan took that path)",
            hint="check that nothing else changed the KSM knobs meanwhile and retry",
        )
    return float(statistics.median(values))


def _scans(m: Measurements, scenario: str, path: str) -> list[ScanCost]:
    return [s for s in m.scans if s.scenario == scenario and s.path == path]


def _window(m: Measurements, phase: str) -> Window:
    for w in m.windows:
        if w.phase == phase:
            if w.batches <= 0 or w.wall_ns <= 0:
                raise EnvironmentProblem(
                    f"ksmd ran no batch during the {phase} window",
                    hint="is ksmd starved of CPU? retry on a quieter host",
                )
            return w
    raise EnvironmentProblem(f"calibration has no {phase} window", hint="rerun calibrate")


def _fit_wakeup(m: Measurements) -> tuple[float, float, float]:
    """``(batch_ns, scan_start_ns, wake_ns)`` from the two wake-up windows.

    The windows' few KSM pages cost ksm_page each, which is measured net of the wake-up
    cost: a short fixed-point iteration settles both.
    """
    from scipy.optimize import nnls

    ksm_scans = [s for s in _scans(m, "same", "ksm_page") if s.scanned]
    a, b = _window(m, "wake_one_batch"), _window(m, "wake_one_page")
    lhs = np.array([[a.batches, a.full_scans], [b.batches, b.full_scans]], dtype=float)
    wake = batch_ns = scan_start = 0.0
    for _ in range(6):
        ksm_pp = _median([max(0.0, (s.cpu_ns - wake) / s.scanned) for s in ksm_scans], "KSM page")
        rhs = np.array([a.cpu_ns - a.scanned * ksm_pp, b.cpu_ns - b.scanned * ksm_pp])
        sol, _ = nnls(lhs, np.maximum(rhs, 0.0))
        batch_ns, scan_start = float(sol[0]), float(sol[1])
        wake = batch_ns + scan_start  # the overhead of a one-batch full scan
    return batch_ns, scan_start, wake


def _fit_unstable(
    unstable: dict[int, float],
) -> tuple[float, float, npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """``(base, per_level, levels, costs)``: the mean unstable-insert cost of a scan of ``N``
    inserts = base + per_level * levels, ``levels`` the mean levels walked
    (:func:`planner.engine.cost.mean_insert_levels`)."""
    from scipy.optimize import nnls

    if len(unstable) < 2:
        raise EnvironmentProblem(
            "the unstable-tree cost was measured at fewer than two sizes",
            hint="rerun calibrate; check that no other process uses KSM",
        )
    levels = np.array([mean_insert_levels(n) for n in unstable], dtype=float)
    costs = np.array(list(unstable.values()), dtype=float)
    usol, _ = nnls(np.column_stack([np.ones_like(levels), levels]), costs)
    return float(usol[0]), float(usol[1]), levels, costs


def fit_profile(
    m: Measurements, *, name: str = "calibrated", provenance: dict[str, Any] | None = None
) -> tuple[CostProfile, dict[str, Any]]:
    """Turn raw measurements into a :class:`CostProfile` (pure; see the module notes).

    Returns the profile and the intermediate figures of the fit (per path and size).

    Raises
    ------
    EnvironmentProblem
        A path was never measured, or the wake-up windows saw no batch.
    """

    def scans(scenario: str, path: str) -> list[ScanCost]:
        return _scans(m, scenario, path)

    def window(phase: str) -> Window:
        return _window(m, phase)

    # 1. wake-up and scan-start CPU: KSM pages, one batch per scan (a) or one page per batch (b)
    a = window("wake_one_batch")
    batch_ns, scan_start, wake = _fit_wakeup(m)

    def per_page(s: ScanCost, count: int) -> float:
        return max(0.0, (s.cpu_ns - wake) / count)

    def path_costs(scenario: str, path: str, *, skipped: bool = False) -> dict[int, float]:
        out: dict[int, list[float]] = {}
        for s in scans(scenario, path):
            count = s.skipped if skipped else s.scanned
            if count > 0:
                out.setdefault(s.pages, []).append(per_page(s, count))
        return {n: float(statistics.median(v)) for n, v in sorted(out.items())}

    first = path_costs("unique", "first_visit")
    first_same = path_costs("same", "first_visit")
    first_zero = path_costs("zero", "first_visit")
    volatile = path_costs("unique", "volatile")
    unstable = path_costs("unique", "unstable")
    skip = path_costs("unique", "skip", skipped=True)
    merge = path_costs("same", "merge")
    ksm_page = path_costs("same", "ksm_page")
    zero_merge = path_costs("zero", "zero_merge")
    fork_join: dict[int, float] = {}
    for s in scans("same", "fork_join"):
        n = s.pages
        if n in ksm_page and s.scanned > n:
            fork_join[n] = max(0.0, (s.cpu_ns - wake - n * ksm_page[n]) / (s.scanned - n))

    # 2. the unstable insert: base + per_level * mean levels of N inserts, non-negative LSQ
    u_base, u_level, levels, costs = _fit_unstable(unstable)
    u_fitted = u_base + u_level * levels

    # 3. batch overhead and wake latency at the defaults, steady unique pages
    d = window("defaults")
    steady = [s for s in scans("defaults", "unstable") if s.scanned]
    c_steady = _median([per_page(s, s.scanned) for s in steady], "steady unstable-insert")
    batch_overhead = max(
        0.0, (d.cpu_ns - d.scanned * c_steady - d.full_scans * scan_start) / d.batches
    )
    period = d.wall_ns / d.batches
    cpu_per_batch = d.cpu_ns / d.batches
    slept = sleep_ns(d.sleep_ms, m.hz)
    tick = tick_ns(m.hz)
    # a batch's CPU hides inside the tick its sleep ends on (timing.next_batch_ns): what the
    # period has beyond the slept jiffies and the ticks the CPU crosses is the wake-up
    # latency (negative by the timing noise when there is none: clamped to 0)
    wake_latency_raw = period - slept - cpu_per_batch // tick * tick
    wake_latency = max(0.0, wake_latency_raw)
    period_a = a.wall_ns / a.batches
    wake_latency_a = period_a - sleep_ns(a.sleep_ms, m.hz) - a.cpu_ns / a.batches // tick * tick

    values = {
        "ksm_page_ns": _median(list(ksm_page.values()), "KSM page"),
        "fork_join_ns": _median(list(fork_join.values()), "fork join"),
        "skip_ns": _median(list(skip.values()), "smart-scan skip"),
        "first_visit_ns": _median(
            [*first.values(), *first_same.values(), *first_zero.values()], "first visit"
        ),
        "volatile_ns": _median(list(volatile.values()), "changed page"),
        "unstable_base_ns": float(u_base),
        "unstable_per_level_ns": float(u_level),
        "merge_ns": _median(list(merge.values()), "merge"),
        "zero_merge_ns": _median(list(zero_merge.values()), "zero-page merge"),
        "batch_overhead_ns": batch_overhead,
        "scan_start_ns": float(scan_start),
        "wake_latency_ns": wake_latency,
    }
    prof, busy_anchor = _with_busy_terms(
        CostProfile(
            name=name,
            description=(
                "ksmd CPU cost per page by code path, measured on this host by "
                "'ksm-planner calibrate' (see provenance); the busy-host terms are the "
                "shipped profile's, its busy_page_factor anchored to this host's "
                "unstable-tree insert (fit.busy_anchor)"
            ),
            source=METHOD,
            provenance=provenance,
            **{k: round(v) for k, v in values.items()},
        )
    )
    fit = {
        "wake_batch_ns": batch_ns,
        "wake_scan_start_ns": scan_start,
        "wake_one_batch_scan_ns": wake,
        "per_size_ns": {
            "first_visit": first,
            "first_visit_same": first_same,
            "first_visit_zero": first_zero,
            "volatile": volatile,
            "unstable": unstable,
            "skip": skip,
            "merge": merge,
            "ksm_page": ksm_page,
            "fork_join": fork_join,
            "zero_merge": zero_merge,
        },
        "unstable_fit": {
            "levels": levels.tolist(),
            "measured_ns": costs.tolist(),
            "fitted_ns": u_fitted.tolist(),
        },
        "defaults": {
            "steady_unstable_ns": c_steady,
            "batches": d.batches,
            "batch_period_ns": period,
            "cpu_per_batch_ns": cpu_per_batch,
            "slept_ns": slept,
            "wake_latency_raw_ns": wake_latency_raw,
            # the part of the period ksmd waited for a CPU (a busy host's share of the latency)
            "cpu_wait_per_batch_ns": d.wait_ns / d.batches if d.wait_ns is not None else None,
            "period_minus_slept_ns": period - slept,
            "pages_per_s": d.scanned / (d.wall_ns / NS_PER_S),
            "ksmd_cpu_fraction": d.cpu_ns / d.wall_ns,
            "per_page_ns": d.cpu_ns / d.scanned if d.scanned else None,
        },
        "wake_latency_one_batch_raw_ns": wake_latency_a,
        "busy_anchor": busy_anchor,
    }
    return prof, fit


def _with_busy_terms(idle: CostProfile) -> tuple[CostProfile, dict[str, Any]]:
    """``idle`` (this host's idle costs) with the busy-host terms an idle host cannot show:
    the shipped profile's contention, and its busy_page_factor anchored so that a busy
    host's unstable-tree insert costs what the shipped profile's live runs measured
    (:meth:`CostProfile.busy_factor_anchored_to`, docs/busy-host.md §5); and the figures."""
    reference = CostProfile.default()
    prof = replace(
        idle,
        sched_contention=reference.sched_contention,
        busy_page_factor=idle.busy_factor_anchored_to(reference),
    )
    return prof, {
        "inserts": BUSY_ANCHOR_INSERTS,
        "insert_ns": prof.scan_insert_ns(BUSY_ANCHOR_INSERTS),
        "reference_insert_ns": reference.scan_insert_ns(BUSY_ANCHOR_INSERTS),
        "reference_busy_page_factor": reference.busy_page_factor,
        "busy_page_factor": prof.busy_page_factor,
    }


# ----------------------------------------------------------------------------- the kernel side


def ksmd_pid(proc_root: str = PROC_ROOT) -> int:
    """The pid of the ``ksmd`` kernel thread.

    Raises
    ------
    KernelUnsupportedError
        No ksmd thread (KSM not built in).
    """
    procfs = ProcFS(proc_root)
    for pid in procfs.list_pids():
        if procfs.comm(pid) != "ksmd":
            continue
        try:
            if procfs.cmdline(pid):  # a user process named ksmd
                continue
        except (ProcessGone, CapturePermissionError, OSError):
            continue
        return pid
    raise KernelUnsupportedError(
        "there is no ksmd kernel thread", hint="use a kernel built with CONFIG_KSM=y"
    )


def ksmd_runtime_ns(pid: int, proc_root: str = PROC_ROOT) -> int:
    """ksmd's CPU time so far (ns), the first field of ``/proc/<pid>/schedstat``.

    Raises
    ------
    KernelUnsupportedError
        ``schedstat`` cannot be read (kernel without CONFIG_SCHED_INFO).
    """
    return ksmd_schedstat_ns(pid, proc_root)[0]


def ksmd_schedstat_ns(pid: int, proc_root: str = PROC_ROOT) -> tuple[int, int]:
    """ksmd's CPU time and its time waiting for a CPU so far (ns): the first two fields of
    ``/proc/<pid>/schedstat``.

    Raises
    ------
    KernelUnsupportedError
        ``schedstat`` cannot be read (kernel without CONFIG_SCHED_INFO).
    """
    try:
        return ProcFS(proc_root).schedstat(pid)
    except (ProcessGone, CapturePermissionError, OSError, ValueError, IndexError) as exc:
        raise KernelUnsupportedError(
            f"cannot read ksmd's CPU time from {proc_root}/{pid}/schedstat ({exc})",
            hint="calibration needs a kernel with CONFIG_SCHED_INFO (schedstat)",
        ) from exc


@dataclass
class _Reading:
    t_ns: int
    cpu_ns: int
    wait_ns: int
    full_scans: int
    scanned: int
    skipped: int


class _Session:
    """ksmd under a lease: full scans one wake-up at a time, and free-running windows."""

    def __init__(
        self,
        lease: KsmLease,
        stopper: LeasedScanStopper,
        ksmd: int,
        progress: Progress,
        *,
        poll_s: float = 0.001,
    ) -> None:
        self.lease = lease
        self.stopper = stopper
        self.sysfs: KsmSysfs = lease.sysfs
        self.ksmd = ksmd
        self.progress = progress
        self.poll_s = poll_s
        self.full_scans = 0

    def read(self) -> _Reading:
        cpu, wait = ksmd_schedstat_ns(self.ksmd)
        return _Reading(
            t_ns=time.monotonic_ns(),
            cpu_ns=cpu,
            wait_ns=wait,
            full_scans=self.sysfs.read_int("full_scans"),
            scanned=self.sysfs.read_int("pages_scanned"),
            skipped=self.sysfs.read_int("pages_skipped"),
        )

    def reset(self, **knobs: int) -> None:
        """run=2, run=0 and the one-wake-one-scan knobs (plus ``knobs``)."""
        self.lease.reset(
            {"pages_to_scan": ONE_SCAN_PAGES, "sleep_millisecs": ONE_SCAN_SLEEP_MS, **knobs}
        )
        self.full_scans = self.sysfs.read_int("full_scans")

    def scan(self, scenario: str, pages: int, number: int, path: str) -> ScanCost:
        """Run exactly one full scan (ksmd stopped before and after) and measure it."""
        before = self.read()
        target = self.full_scans + 1
        timeout_s = 30.0 + pages * 60e-6
        # a process of its own catches the scan's end (planner.kernel.scanstop)
        stop = self.stopper.run_to(target, timeout_s=timeout_s, poll_s=self.poll_s)
        if stop.timed_out:
            raise EnvironmentProblem(
                f"ksmd did not finish a full scan of {pages} pages in {timeout_s:.0f} s",
                hint="is ksmd starved of CPU? retry on a quieter host",
            )
        after = self.read()
        if after.full_scans != target:
            raise EnvironmentProblem(
                f"ksmd ran full scan {after.full_scans} before it could be stopped after {target}",
                hint="the host is too busy to catch the end of a scan; retry on a quieter host",
            )
        self.full_scans = target
        self.progress.advance(1)
        c = self.sysfs.counters()
        return ScanCost(
            scenario=scenario,
            pages=pages,
            scan=number,
            path=path,
            cpu_ns=after.cpu_ns - before.cpu_ns,
            scanned=after.scanned - before.scanned,
            skipped=after.skipped - before.skipped,
            counters={
                k: c[k]
                for k in ("pages_shared", "pages_sharing", "pages_unshared", "pages_volatile")
                if k in c
            },
        )

    def window(self, phase: str, seconds: float, *, settle_s: float) -> Window:
        """Let ksmd run with the current knobs and measure a window of ``seconds``."""
        pts = self.sysfs.read_int("pages_to_scan")
        sleep_ms = self.sysfs.read_int("sleep_millisecs")
        self.lease.start()
        try:
            time.sleep(settle_s)
            before = self.read()
            time.sleep(seconds)
            after = self.read()
        finally:
            self.lease.stop()
        self.full_scans = self.sysfs.read_int("full_scans")
        self.progress.advance(1)
        return Window(
            phase=phase,
            pages_to_scan=pts,
            sleep_ms=sleep_ms,
            wall_ns=after.t_ns - before.t_ns,
            cpu_ns=after.cpu_ns - before.cpu_ns,
            scanned=after.scanned - before.scanned,
            full_scans=after.full_scans - before.full_scans,
            wait_ns=after.wait_ns - before.wait_ns,
        )


@contextlib.contextmanager
def _holder(npages: int, contents: Sequence[int | None]) -> Iterator[Holder]:
    """A holder owning ``npages`` pages of ``contents``, registered with KSM; killed after."""
    try:
        h = Holder.spawn()
    except HolderError as exc:
        raise EnvironmentProblem(
            f"a holder process did not start: {exc}", hint="check memory limits and dmesg"
        ) from exc
    try:
        h.map_region(npages)
        h.write(list(range(npages)), contents)
        h.register()
        yield h
    except HolderError as exc:
        raise EnvironmentProblem(
            f"a holder process failed: {exc}", hint="check memory limits (ulimit, cgroup) and dmesg"
        ) from exc
    finally:
        h.kill()


def _unique(rng: np.random.Generator, n: int) -> list[int | None]:
    """``n`` distinct non-zero 64-bit contents (pages that differ in their first word)."""
    values = np.unique(rng.integers(1, 2**63 - 1, size=n + 16, dtype=np.int64))
    rng.shuffle(values)
    if values.size < n:  # pragma: no cover - 2^63 values make this practically impossible
        raise RuntimeError("could not draw distinct page contents")
    return [int(v) for v in values[:n]]


def measure(
    plan: CalibrationPlan,
    lease: KsmLease,
    *,
    hz: int,
    progress: Progress = NULL_PROGRESS,
    seed: int = 20240917,
) -> Measurements:
    """Run every phase of ``plan`` on the real ksmd (the lease must be held)."""
    ksmd = ksmd_pid()
    ksmd_runtime_ns(ksmd)  # fail early without schedstat
    if "smart_scan" not in lease.sysfs.writable_names():
        raise KernelUnsupportedError(
            "this kernel has no smart_scan knob (Linux < 6.7)",
            hint="calibrate on the kernel the profile is meant for (6.7 or later)",
        )
    with lease.scan_stopper() as stopper:
        return _measure(plan, _Session(lease, stopper, ksmd, progress), hz=hz, seed=seed)


def _measure(plan: CalibrationPlan, s: _Session, *, hz: int, seed: int) -> Measurements:
    lease = s.lease
    rng = np.random.default_rng(seed)
    scans: list[ScanCost] = []
    windows: list[Window] = []

    # wake-up and scan-start overhead: a few KSM pages
    s.reset(smart_scan=1)
    with _holder(WAKE_PAGES, [0x5EED] * WAKE_PAGES):
        for i in (1, 2):
            s.scan("wake", WAKE_PAGES, i, "prepare")
        lease.write("sleep_millisecs", DEFAULT_SLEEP_MS)
        windows.append(s.window("wake_one_batch", plan.wake_window_s, settle_s=0.2))
        lease.write("pages_to_scan", 1)
        windows.append(s.window("wake_one_page", plan.wake_window_s, settle_s=0.2))

    for n in plan.sizes:
        s.reset(smart_scan=1)
        with _holder(n, _unique(rng, n)) as h:
            scans.append(s.scan("unique", n, 1, "first_visit"))
            h.write(list(range(n)), _unique(rng, n))  # ksmd is stopped: every page changes
            scans.append(s.scan("unique", n, 2, "volatile"))
            scans.append(s.scan("unique", n, 3, "unstable"))
            scans.append(s.scan("unique", n, 4, "unstable"))
            scans.append(s.scan("unique", n, 5, "skip"))
        s.reset(smart_scan=1)
        content = int(rng.integers(1, 2**63 - 1))
        with _holder(n, [content] * n) as h:
            scans.append(s.scan("same", n, 1, "first_visit"))
            scans.append(s.scan("same", n, 2, "merge"))
            scans.append(s.scan("same", n, 3, "ksm_page"))
            child = h.fork()  # the child maps the same KSM pages, with no rmap_items yet
            try:
                scans.append(s.scan("same", n, 4, "fork_join"))
            finally:
                child.kill()

    s.reset(smart_scan=1, use_zero_pages=1)
    with _holder(plan.zero_size, [None] * plan.zero_size):
        scans.append(s.scan("zero", plan.zero_size, 1, "first_visit"))
        scans.append(s.scan("zero", plan.zero_size, 2, "zero_merge"))

    n = plan.defaults_size
    s.reset(smart_scan=0)
    with _holder(n, _unique(rng, n)):
        scans.append(s.scan("defaults", n, 1, "first_visit"))
        scans.append(s.scan("defaults", n, 2, "unstable"))
        scans.append(s.scan("defaults", n, 3, "unstable"))
        lease.write("pages_to_scan", DEFAULT_PAGES_TO_SCAN)
        lease.write("sleep_millisecs", DEFAULT_SLEEP_MS)
        windows.append(s.window("defaults", plan.defaults_window_s, settle_s=0.3))
    return Measurements(scans=scans, windows=windows, hz=hz)


def _check_memory(plan: CalibrationPlan) -> None:
    need = plan.max_pages() * PAGE_BYTES + (64 << 20)
    avail = ProcFS().meminfo_bytes().get("MemAvailable")
    if avail is not None and need > 0.5 * avail:
        raise EnvironmentProblem(
            f"calibration with {plan.max_pages()} pages needs about {need / 2**30:.1f} GiB "
            f"but only {avail / 2**30:.1f} GiB is available",
            hint="give smaller --sizes",
        )


def calibrate(
    *,
    sizes: Sequence[int] | None = None,
    quick: bool = False,
    out: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    hz: int | None = None,
    lease: KsmLease | None = None,
    progress: Progress = NULL_PROGRESS,
) -> Calibration:
    """Measure ksmd's per-path costs on this host and return (and write) a cost profile.

    Parameters
    ----------
    sizes
        Page counts of the per-path scenarios (at least two; default
        :data:`FULL_SIZES`, or :data:`QUICK_SIZES` with ``quick``).
    quick
        Small sizes and short windows (well under a minute).
    out
        Where to write the profile JSON (atomically; checked before measuring).
    overwrite
        Replace ``out`` if it exists.
    hz
        The kernel's CONFIG_HZ (default: read from the kernel config).
    lease
        A lease the caller holds (tests); by default one is taken for the run.
    progress
        One unit per full scan or measurement window.

    Raises
    ------
    UsageProblem
        Bad sizes, HZ unknown, or ``out`` exists.
    KernelUnsupportedError, KsmBusyError
        No KSM, not root, KSM in use by another process or another ksm-planner run.
    EnvironmentProblem
        Not enough memory, a holder failed, or ksmd could not be caught between scans.
    """
    plan = plan_calibration(sizes, quick=quick)
    hz = hz or kernel_hz()
    if hz is None:
        raise UsageProblem(
            "this kernel's CONFIG_HZ cannot be read (no /proc/config.gz or /boot/config-*)",
            hint="pass --hz (for example 250 or 1000)",
        )
    _check_memory(plan)
    with contextlib.ExitStack() as stack:
        # the output is checked first (usage), then the host (environment), then KSM is leased
        target = (
            stack.enter_context(atomic_file(out, overwrite=overwrite, private=False))
            if out
            else None
        )
        if lease is None:
            KsmLease().preflight()
        held = lease if lease is not None else stack.enter_context(KsmLease())
        load_before = os.getloadavg()
        started = dt.datetime.now(dt.UTC)
        progress.start("calibrating ksmd", plan.steps())
        m = measure(plan, held, hz=hz, progress=progress)
        progress.finish()
        host = HostInfo.collect()
        prov: dict[str, Any] = {
            "tool_version": tool_version(),
            "host": host.host,
            "kernel": platform.release(),
            "kernel_version": platform.version(),
            "cpu_model": cpu_identity(),  # compared with a trace's (docs/busy-host.md §5)
            "date": started.isoformat(timespec="seconds"),
            "duration_s": round((dt.datetime.now(dt.UTC) - started).total_seconds(), 1),
            "method": METHOD,
            "host_info": host.to_dict(),
            "hz": hz,
            "options": {"sizes": list(plan.sizes), "quick": quick},
            "load_avg_before": list(load_before),
            "load_avg_after": list(os.getloadavg()),
            "measurements": m.to_dict(),
        }
        name = f"calibrated-{host.host}-{started.strftime('%Y%m%dT%H%M%SZ')}"
        profile, fit = fit_profile(m, name=name, provenance=prov)
        prov["fit"] = fit
        if target is not None:
            target.write_text(json.dumps(profile.to_dict(), indent=1) + "\n")
            CostProfile.load(target)  # the written file is one that replay accepts
    return Calibration(profile, fit, m, written=str(out) if out else None)


# ----------------------------------------------------------------------------- on a workload

WORKLOAD_METHOD: Final = "ksm-planner calibrate --trace/--observed: " + FIT_METHOD


@dataclass(frozen=True)
class WorkloadCalibration(CostFit):
    """The result of :func:`calibrate_workload` (JSON-ready with :meth:`to_dict`): the fit
    of :func:`planner.engine.costfit.fit_cost`, with ``profile`` the named profile written
    (its provenance states the fit) and the file it went to."""

    written: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The profile and what it was derived from."""
        return {"profile": self.profile.to_dict(), **super().to_dict(), "written": self.written}


def _unseen_rows(inp: ReplayInput, canary: CanaryRates) -> Mapping[str, Any] | None:
    """:func:`planner.engine.costfit.unseen_rows` of ``inp`` with ``canary`` applied."""
    from planner.engine.api import derive_input

    return unseen_rows(derive_input(inp, None, canary))


def _weigh_canary(
    inp: Any,
    canary: Any,
    counters: Any,
    real: KsmdWindow,
    load: HostLoad,
    base: CostProfile,
    fit: CostFit,
) -> tuple[CostFit, dict[str, Any]]:
    """How the canary's rates reach the trace, held to the recording's copy-on-write as
    ``replay --observed`` holds them (:func:`planner.engine.costfit.fit_canary`): its page
    classes, then the spreading of the breaks it did not see, each kept or dropped by
    :func:`~planner.engine.costfit.weigh_page_classes` and
    :func:`~planner.engine.costfit.weigh_missed_spread`, then how many rows take those
    breaks (the traced run's canary: :func:`~planner.engine.costfit.weigh_unseen_rows`) or
    their write rate (another run's: :func:`~planner.engine.costfit.weigh_unseen_breaks`) or whether
    they keep their content (:func:`~planner.engine.costfit.weigh_held_content`). Returns
    the fit kept and what the provenance says of each rule that applied (``page_classes``,
    ``missed_breaks``, ``unseen_breaks``, ``held_content``)."""
    from planner.engine.writes import by_page_class, spreads_missed_breaks

    notes: dict[str, Any] = {}
    if canary is None:
        return fit, notes
    recorded = recorded_cow_per_s(counters, real)

    def refit(alt: Any) -> tuple[CostFit, float | None]:
        alt_fit = fit_cost(inp, real, load, base=base, canary=alt)
        return alt_fit, alt_fit.model_cow_per_s

    if by_page_class(inp, canary):
        without = replace(canary, page_classes=False)
        chosen, notes["page_classes"] = weigh_page_classes(
            recorded, fit.model_cow_per_s, lambda: refit(without)
        )
        if chosen is not None:
            fit, canary = chosen, without
    if spreads_missed_breaks(inp, canary):
        unspread = replace(canary, missed_spread=False)
        chosen, notes["missed_breaks"] = weigh_missed_spread(
            recorded, fit.model_cow_per_s, lambda: refit(unspread), canary.missed_scale
        )
        if chosen is not None:
            fit, canary = chosen, unspread
    unseen = _unseen_rows(inp, canary)
    if unseen and unseen.get("candidates"):
        kept = canary
        chosen, notes["unseen_breaks"] = weigh_unseen(
            inp,
            kept,
            (recorded, fit.model_cow_per_s),
            unseen,
            real.wall_s / real.full_scans if real.full_scans > 0 else 0.0,
            refit,
        )
        if chosen is not None:
            fit = chosen
        else:
            held = replace(kept, unseen_hold_content=True)

            def refit_held() -> tuple[CostFit, float | None, int | None]:
                alt_fit = fit_cost(inp, real, load, base=base, canary=held)
                return alt_fit, alt_fit.model_cow_per_s, alt_fit.model_pages_sharing

            chosen, notes["held_content"] = weigh_held_content(
                recorded, (fit.model_cow_per_s, fit.model_pages_sharing), unseen, refit_held
            )
            if chosen is not None:
                fit = chosen
    return fit, notes


def calibrate_workload(
    trace: str | os.PathLike[str],
    observed: str | os.PathLike[str],
    *,
    host: str | None = None,
    base: CostProfile | None = None,
    host_load: HostLoad | None = None,
    resolver: Resolver | None = None,
    out: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> WorkloadCalibration:
    """A cost profile that holds on the traced workload itself (docs/busy-host.md §4).

    ``observed`` is a recording (``ksm-planner observe``) of the real ksmd working on the
    traced processes. Over the recording's first stretch with constant knobs it gives the
    real CPU per scanned page and the real batch period. The trace is replayed with those
    knobs, under ``host_load`` (default: the load the trace recorded), with ``base`` (the
    shipped profile by default); every CPU cost of ``base`` is then scaled by real over
    modelled CPU per scanned page, and ``sched_contention`` is solved so that the modelled
    share of a CPU is the one the batch period shows. ``resolver`` says which processes
    and mappings are registered (default: every process prctl, as ``replay``). No KSM
    lease is needed: nothing is written to the kernel.

    Raises
    ------
    UsageProblem
        The trace recorded no load and none is given, or ``out`` exists.
    InputDataError
        An unreadable trace or recording, or one in which ksmd did not run.
    """
    from planner.engine import prepare
    from planner.engine.timing import recorded_load
    from planner.engine.writes import canary_rates
    from planner.trace.io import open_trace
    from planner.trace.recording import read_observed

    with contextlib.ExitStack() as stack:
        target = (
            stack.enter_context(atomic_file(out, overwrite=overwrite, private=False))
            if out
            else None
        )
        recording = read_observed(observed)
        real = ksmd_window(recording.counters)
        tr = open_trace(trace)
        ht = tr.load_host(host)
        # as replay does: the shipped profile of the traced CPU unless one is given
        base = profile_for_trace(base, tr.host_cpu)
        load = host_load or recorded_load(ht.intervals())
        if load is None:
            raise UsageProblem(
                "the trace recorded no CPU load (a version-1 trace)",
                hint="give the load the recording ran under with --host-load",
            )
        inp = prepare(ht, resolver=resolver)
        # a canary's write rates give the fitting replays the path mix the recording saw
        canary = (
            canary_rates(recording, inp.page_size) if recording.page_events is not None else None
        )
        fit = fit_cost(inp, real, load, base=base, canary=canary)
        fit, weighed = _weigh_canary(inp, canary, recording.counters, real, load, base, fit)
        share, scale, contention = fit.real_share, fit.cost_scale, fit.profile.sched_contention
        started = dt.datetime.now(dt.UTC)
        profile = fitted_profile(
            fit,
            name=f"workload-{ht.host}-{started.strftime('%Y%m%dT%H%M%SZ')}",
            provenance={
                "tool_version": tool_version(),
                "date": started.isoformat(timespec="seconds"),
                "method": WORKLOAD_METHOD,
                "trace": str(trace),
                "trace_hash": ht.trace_hash,
                "observed": str(observed),
                "base_profile": base.name,
                "host_load": load.to_dict(),
                "real": asdict(real),
                "real_ns_per_page": real.ns_per_page,
                "real_share": share,
                "model_ns_per_page_before": fit.model_ns_per_page,
                "cost_scale": scale,
                "sched_contention": contention,
                **weighed,
                **(
                    {"short_batches": asdict(fit.short_batches)}
                    if fit.short_batches is not None
                    else {}
                ),
            },
        )
        profile = replace(profile, source=WORKLOAD_METHOD)
        if target is not None:
            target.write_text(json.dumps(profile.to_dict(), indent=1) + "\n")
            CostProfile.load(target)
    fitted = {f.name: getattr(fit, f.name) for f in fields(CostFit)}
    return WorkloadCalibration(**{**fitted, "profile": profile}, written=str(out) if out else None)
