"""What changes between snapshots: sampling the pages of a snapshot until the next one.

Snapshots show memory at points in time; ksmd sees it continuously. A page rewritten faster
than ksmd revisits it never passes the checksum gate, yet two snapshots can show it
unchanged; a page rewritten with the same bytes breaks its merge at every write
(docs/kernel-semantics.md §5.2, §6.1). ``capture --sample-ms MS`` therefore follows the
pages of each snapshot through the interval after it (to the next snapshot, and for the last
one a tail of ``--interval`` seconds), one *pass* every ``MS`` milliseconds
(docs/capture.md §9):

* every pass reads each process's pagemap over the snapshot's mappings (cheap: 8 bytes per
  page) and counts, per tracked page, passes that found it absent or on another frame;
* it then reads and hashes (:mod:`planner.capture.memread`) the pages it *checks* and
  counts those whose content changed since the page was last checked. Which pages are
  checked: every page that changed at one of its last :data:`HOT_CHECKS` checks, or moved
  to another frame, or came back (the *hot* set), plus a rotating slice of the others sized
  so that a pass costs at most the capture's CPU budget for one period (the pacer's token
  bucket, :mod:`planner.capture.pace`). A page that changes is found again within one
  rotation; the rotation's length is what the coverage figures report;
* where the kernel tracks soft-dirty (:mod:`planner.capture.softdirty`) the pass clears the
  bits after reading them, checks exactly the pages written since the previous pass, and
  counts *same-content writes*: pages written whose content did not change;
* the first time a check finds a page's content changed, it keeps the new content's keyed
  hash (``other_hash``): a page that alternates between two contents shows the other one
  even where it is back to the snapshot's at the next snapshot, or where the next
  snapshot comes too late to show it come back.

Counts end up in the snapshot's page rows (``samples``, ``content_checks``,
``content_changes``, ``frame_changes``, ``absent_samples``, ``same_content_writes``,
``other_hash``) and each pass of each process in the ``samples`` table. Nothing here faults
a page in: only pages the pass's pagemap shows present are read, as in a snapshot
(docs/capture.md §4.2).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from planner.capture.procfs import (
    PAGE_SIZE_BYTES,
    PM_FILE_BIT,
    PM_PFN_MASK,
    PM_PRESENT_BIT,
    PM_SOFT_DIRTY_BIT,
    ProcessGone,
)
from planner.errors import CapturePermissionError

if TYPE_CHECKING:
    from planner.capture.facts import LoadMonitor
    from planner.capture.pace import Pacer
    from planner.capture.procfs import ProcFS
    from planner.capture.snapshot import ProcessCapture, ProcessReader

#: A page stays hot (checked every pass) until this many checks in a row found it unchanged.
HOT_CHECKS: Final = 3
#: Shortest sampling period accepted (ms).
MIN_SAMPLE_MS: Final = 10.0
#: CPU seconds per checked page assumed before the first pass has measured it.
INITIAL_PAGE_COST_S: Final = 3e-6
_U64 = np.uint64
_PFN = _U64(PM_PFN_MASK)
_U16_MAX: Final = 65535


@dataclass
class Tracker:
    """The tracked pages of one process over one interval, and their counts."""

    pid: int
    proc_start: int
    rows: npt.NDArray[np.int64]
    """Indexes of the tracked pages in the snapshot's page rows."""
    vpn: npt.NDArray[np.int64]
    spans: list[tuple[int, int, int]]
    last_hash: npt.NDArray[np.uint64]
    last_pfn: npt.NDArray[np.uint64]
    present: npt.NDArray[np.bool_] = field(init=False)
    quiet: npt.NDArray[np.uint8] = field(init=False)
    samples: npt.NDArray[np.uint32] = field(init=False)
    checks: npt.NDArray[np.uint32] = field(init=False)
    content_changes: npt.NDArray[np.uint32] = field(init=False)
    frame_changes: npt.NDArray[np.uint32] = field(init=False)
    absent: npt.NDArray[np.uint32] = field(init=False)
    same_writes: npt.NDArray[np.uint32] = field(init=False)
    other_hash: npt.NDArray[np.uint64] = field(init=False)
    """The first content other than the snapshot's that a check found (where ``has_other``)."""
    has_other: npt.NDArray[np.bool_] = field(init=False)
    cursor: int = 0
    gone: bool = False
    pagemap_fd: int | None = None
    mem_fd: int | None = None
    """Both files stay open for the interval: they keep naming this process even if its pid
    were reused."""

    def __post_init__(self) -> None:
        n = len(self.vpn)
        self.present = np.ones(n, bool)
        self.quiet = np.full(n, HOT_CHECKS, np.uint8)  # nothing is hot at the snapshot
        self.other_hash = np.zeros(n, np.uint64)
        self.has_other = np.zeros(n, bool)
        for name in (
            "samples",
            "checks",
            "content_changes",
            "frame_changes",
            "absent",
            "same_writes",
        ):
            setattr(self, name, np.zeros(n, np.uint32))


PageColumn = tuple["npt.NDArray[np.uint16] | npt.NDArray[np.uint64]", "npt.NDArray[np.bool_]"]
"""A page column's values and which rows have one (the others are null)."""


@dataclass
class IntervalResult:
    """What the sampler found over one interval, ready for the snapshot's tables."""

    page_columns: dict[str, PageColumn]
    """Column name -> ``(values, valid mask)`` aligned with the snapshot's page rows: the
    counts in uint16, ``other_hash`` in uint64."""
    sample_rows: list[dict[str, Any]]
    snapshot_columns: dict[str, Any]


class Sampler:
    """Samples the pages of the latest snapshot until the next one (see the module notes).

    Parameters
    ----------
    reader
        Reads and hashes pages (its thread pool and pacer are used).
    sample_ms
        Period of the passes.
    soft_dirty
        Track writes with soft-dirty (only where :func:`~planner.capture.softdirty.probe_soft_dirty`
        found it working, or on a fake procfs in tests).
    """

    def __init__(
        self,
        reader: ProcessReader,
        pacer: Pacer,
        *,
        sample_ms: float,
        soft_dirty: bool,
        zero_pfn: int | None,
        t0: float,
    ) -> None:
        self.reader = reader
        self.procfs: ProcFS = reader.procfs
        self.pacer = pacer
        self.period_s = sample_ms / 1000.0
        self.sample_ms = sample_ms
        self.soft_dirty = soft_dirty
        self.zero_pfn = zero_pfn
        self.t0 = t0
        self.trackers: list[Tracker] = []
        self.rows = 0
        self.passes = 0
        self.page_cost_s = INITIAL_PAGE_COST_S
        self.total_passes = 0
        self.total_cpu_s = 0.0
        self.total_wall_s = 0.0
        self.total_checked = 0
        self._sample_rows: list[dict[str, Any]] = []
        self._snapshot_id = 0
        self._cpu0 = 0.0
        self._wall0 = 0.0

    # ------------------------------------------------------------------ an interval

    def begin(
        self,
        snapshot_id: int,
        caps: list[ProcessCapture],
        row_proc: npt.NDArray[np.intp],
        addr: npt.NDArray[np.uint64],
        content_hash: npt.NDArray[np.uint64],
        pfn: npt.NDArray[np.uint64],
        has_hash: npt.NDArray[np.bool_],
    ) -> None:
        """Start following the pages of snapshot ``snapshot_id`` (its live processes ``caps``,
        in the order of ``row_proc``; only pages with a hash are followed)."""
        self.close()
        self._snapshot_id = snapshot_id
        self.rows = len(addr)
        self.passes = 0
        self._sample_rows = []
        self.trackers = []
        order = np.argsort(row_proc, kind="stable")
        bounds = np.searchsorted(row_proc[order], np.arange(len(caps) + 1))
        for i, pc in enumerate(caps):
            rows = order[bounds[i] : bounds[i + 1]]
            rows = rows[has_hash[rows]].astype(np.int64)
            if not len(rows) or not pc.spans:
                continue
            self.trackers.append(
                Tracker(
                    pid=pc.pid,
                    proc_start=pc.proc_start,
                    rows=rows,
                    vpn=(addr[rows] // _U64(PAGE_SIZE_BYTES)).astype(np.int64),
                    spans=pc.spans,
                    last_hash=content_hash[rows].copy(),
                    last_pfn=pfn[rows].copy(),
                )
            )
        if self.soft_dirty:  # writes are counted from here on
            for t in self.trackers:
                self._clear(t)
        self._cpu0, self._wall0 = time.process_time(), self.pacer.clock()

    def run(self, until: float, monitor: LoadMonitor, *, closing: bool = False) -> None:
        """Pass after pass every ``sample_ms`` until ``until`` (a :attr:`Pacer.clock` time).

        ``closing`` (the interval after the last snapshot, which no snapshot closes): one
        more pass at ``until`` checks every present page, whatever the budget. The next
        snapshot shows every page of an earlier interval as it ended; this pass does so for
        the last one, where the rotating slice would have seen only some pages come back (a
        churn run: every copy of 469 of 1,000 toggling pages, none of the others)."""
        start = self.pacer.clock()
        ticks = max(1, math.ceil((until - start) / self.period_s))
        tick = 0
        while tick < ticks:
            if tick:
                self.pacer.pay(until=start + tick * self.period_s)
            with self.pacer.burst():
                self._pass()
            monitor.sample()
            self.passes += 1
            # the next tick still ahead (a slow pass skips ticks); never past ``until``
            behind = int((self.pacer.clock() - start) / self.period_s)
            tick = max(tick + 1, min(behind + 1, ticks))
        self.pacer.pay(until=until)
        if closing:
            with self.pacer.burst():
                self._pass(every_page=True)
            self.passes += 1
        monitor.sample()

    def finish(self) -> IntervalResult:
        """The interval's counts (the trackers are released)."""
        columns: dict[str, PageColumn] = {}
        valid = np.zeros(self.rows, bool)
        for t in self.trackers:
            valid[t.rows] = True
        names = {
            "samples": "samples",
            "content_checks": "checks",
            "content_changes": "content_changes",
            "frame_changes": "frame_changes",
            "absent_samples": "absent",
        }
        if self.soft_dirty:
            names["same_content_writes"] = "same_writes"
        for column, attr in names.items():
            values = np.zeros(self.rows, np.uint16)
            for t in self.trackers:
                values[t.rows] = np.minimum(getattr(t, attr), _U16_MAX).astype(np.uint16)
            columns[column] = (values, valid)
        other = np.zeros(self.rows, np.uint64)
        has_other = np.zeros(self.rows, bool)
        for t in self.trackers:
            other[t.rows] = t.other_hash
            has_other[t.rows] = t.has_other
        columns["other_hash"] = (other, has_other)
        tracked = sum(len(t.vpn) for t in self.trackers)
        checked = sum(int(np.count_nonzero(t.checks)) for t in self.trackers)
        checks = sum(int(t.checks.sum()) for t in self.trackers)
        cpu = time.process_time() - self._cpu0
        wall = self.pacer.clock() - self._wall0
        self.total_passes += self.passes
        self.total_cpu_s += cpu
        self.total_wall_s += wall
        self.total_checked += checks
        result = IntervalResult(
            page_columns=columns,
            sample_rows=self._sample_rows,
            snapshot_columns={
                "sample_ms": self.sample_ms,
                "samples": self.passes,
                "soft_dirty": self.soft_dirty,
                "sample_coverage": checked / tracked if tracked else None,
                "sample_checks_per_page": checks / tracked if tracked else None,
                "sample_cpu_s": cpu,
            },
        )
        self.close()
        self.trackers = []
        return result

    def close(self) -> None:
        """Close the pagemap files of the trackers."""
        for t in self.trackers:
            for name in ("pagemap_fd", "mem_fd"):
                fd = getattr(t, name)
                if fd is not None:
                    os.close(fd)
                    setattr(t, name, None)

    # ------------------------------------------------------------------ one pass

    def _budget_pages(self, look_cpu_s: float) -> int | None:
        """How many pages this pass may check (``None``: all of them).

        What the budget allows for one period (or the tokens left, if fewer), less what
        reading the pagemaps cost this pass, at the measured cost of a checked page.
        """
        if self.pacer.cpu_budget is None:
            return None
        allowed = min(self.pacer.tokens_s(), self.pacer.cpu_budget * self.period_s)
        return max(0, int((allowed - look_cpu_s) / self.page_cost_s))

    def _pass(self, every_page: bool = False) -> None:
        live = [t for t in self.trackers if not t.gone]
        cpu0 = time.process_time()
        plans = []
        for t in live:
            t0 = self.pacer.clock()
            try:
                plans.append((t, t0, self._look(t)))
            except ProcessGone:
                self._gone(t, t0)
        look_cpu = time.process_time() - cpu0
        # the budget left after the must-check pages, shared by the cold pages of everyone
        must = sum(int(np.count_nonzero(p[2]["must"])) for p in plans)
        allowed = self._budget_pages(look_cpu)
        cold_total = sum(int(np.count_nonzero(p[2]["cold"])) for p in plans)
        share = 1.0 if allowed is None else min(1.0, max(0, allowed - must) / max(cold_total, 1))
        if every_page:
            share = 1.0
        checked = 0
        read_cpu = 0.0
        for t, t0, look in plans:
            try:
                n, cpu = self._check(t, t0, look, share)
                checked += n
                read_cpu += cpu
            except ProcessGone:
                self._gone(t, t0)
        if checked >= 64:  # what a checked page costs (reading and hashing), smoothed
            self.page_cost_s = 0.7 * self.page_cost_s + 0.3 * max(read_cpu / checked, 1e-7)

    def _look(self, t: Tracker) -> dict[str, Any]:
        """Pagemap of the tracked pages: present, frame, written; what must be checked."""
        if t.pagemap_fd is None:
            t.pagemap_fd = self.procfs.open_pagemap(t.pid)
        vpn_all, entry_all, _owner = self.reader.pagemap(t.pagemap_fd, t.spans, t.pid)
        present_all = ((entry_all >> _U64(PM_PRESENT_BIT)) & _U64(1)).astype(bool)
        present_all &= ((entry_all >> _U64(PM_FILE_BIT)) & _U64(1)) == 0
        if self.zero_pfn:
            present_all &= (entry_all & _PFN) != _U64(self.zero_pfn)
        idx = np.searchsorted(vpn_all, t.vpn)
        found = idx < len(vpn_all)
        found[found] = vpn_all[idx[found]] == t.vpn[found]
        entry = np.zeros(len(t.vpn), np.uint64)
        entry[found] = entry_all[idx[found]]
        present = np.zeros(len(t.vpn), bool)
        present[found] = present_all[idx[found]]
        pfn = entry & _PFN
        moved = present & (pfn != t.last_pfn)
        back = present & ~t.present
        written = (
            present & (((entry >> _U64(PM_SOFT_DIRTY_BIT)) & _U64(1)) == 1)
            if self.soft_dirty
            else np.zeros(len(t.vpn), bool)
        )
        t.samples += 1
        t.absent += ~present
        t.frame_changes += moved & ~back
        t.present = present
        t.last_pfn[present] = pfn[present]
        hot = t.quiet < HOT_CHECKS
        must = present & (moved | back | written | (hot & ~np.bool_(self.soft_dirty)))
        cold = present & ~must & ~np.bool_(self.soft_dirty)
        n_present = int(np.count_nonzero(present_all))
        tracked_present = int(np.count_nonzero(present))
        return {
            "must": must,
            "cold": cold,
            "written": written,
            "present": n_present,
            "new": n_present - tracked_present,
            "absent": int(np.count_nonzero(~present)),
            "moved": int(np.count_nonzero(moved & ~back)),
        }

    def _check(
        self, t: Tracker, t0: float, look: dict[str, Any], share: float
    ) -> tuple[int, float]:
        """Read and hash the pages to check; count changes; clear soft-dirty.

        Returns the pages checked and the CPU seconds their reading and hashing took.
        """
        check = look["must"].copy()
        cold = np.flatnonzero(look["cold"])
        if len(cold):
            k = len(cold) if share >= 1.0 else math.ceil(share * len(cold)) if share > 0 else 0
            if k:
                start = int(np.searchsorted(cold, t.cursor))
                chosen = np.take(cold, np.arange(start, start + k), mode="wrap")
                check[chosen] = True
                t.cursor = int(cold[(start + k - 1) % len(cold)]) + 1
        rows = np.flatnonzero(check)
        if t.mem_fd is None and len(rows):
            t.mem_fd = self.procfs.open_mem(t.pid)
        cpu0 = time.process_time()
        hashes, read_error = self.reader.read_pages(t.pid, t.vpn[rows], mem_fd=t.mem_fd)
        read_cpu = time.process_time() - cpu0
        ok = ~read_error
        seen = rows[ok]
        changed = hashes[ok] != t.last_hash[seen]
        t.checks[seen] += 1
        t.content_changes[seen[changed]] += 1
        new = changed & ~t.has_other[seen]  # (the first change: from the snapshot's content)
        t.other_hash[seen[new]] = hashes[ok][new]
        t.has_other[seen[new]] = True
        t.last_hash[seen] = hashes[ok]
        t.quiet[seen[changed]] = 0
        still = seen[~changed]
        t.quiet[still] = np.minimum(t.quiet[still].astype(np.int32) + 1, 255).astype(np.uint8)
        same_writes = None
        written_n = None
        if self.soft_dirty:
            same = look["written"][seen] & ~changed
            t.same_writes[seen[same]] += 1
            same_writes = int(np.count_nonzero(same))
            written_n = int(np.count_nonzero(look["written"]))
            self._clear(t)
        self._sample_rows.append(
            {
                "snapshot_id": self._snapshot_id,
                "sample": self.passes,
                "pid": t.pid,
                "proc_start": t.proc_start,
                "t0_s": t0 - self.t0,
                "t1_s": self.pacer.clock() - self.t0,
                "pages_tracked": len(t.vpn),
                "pages_present": look["present"],
                "pages_new": look["new"],
                "pages_hashed": int(np.count_nonzero(ok)),
                "pages_changed": int(np.count_nonzero(changed)),
                "frames_changed": look["moved"],
                "pages_absent": look["absent"],
                "pages_written": written_n,
                "same_content_writes": same_writes,
                "state": "ok",
            }
        )
        return len(rows), read_cpu

    def _clear(self, t: Tracker) -> None:
        try:
            self.procfs.clear_soft_dirty(t.pid)
        except (ProcessGone, CapturePermissionError, OSError):
            t.gone = t.gone or not os.path.exists(self.procfs.path(t.pid, "stat"))

    def _gone(self, t: Tracker, t0: float) -> None:
        t.gone = True
        self._sample_rows.append(
            {
                "snapshot_id": self._snapshot_id,
                "sample": self.passes,
                "pid": t.pid,
                "proc_start": t.proc_start,
                "t0_s": t0 - self.t0,
                "t1_s": max(t0, self.pacer.clock()) - self.t0,
                "pages_tracked": len(t.vpn),
                "state": "gone",
            }
        )


__all__ = ["HOT_CHECKS", "MIN_SAMPLE_MS", "IntervalResult", "Sampler", "Tracker"]
