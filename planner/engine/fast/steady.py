"""Fast-forward of steady full scans: exact, never approximate.

Smart scan visits a page whose checksum keeps changing or that found no partner less and
less often: at age 3 it skips 1 scan in 2, at age 5 two in 3, at 8 four in 5, and from age
9 on it is visited once every 9 scans (``skip_age``; the rhythm is periodic from the visit
at age 13). Once every page with an rmap_item is in that rhythm and nothing else happens
-- no merge or unmerge, no item allocated or freed, no stable node or chain changed, no
snapshot, the mm list unchanged -- each full scan repeats the one 9 scans earlier exactly
(without smart scan: the one before). The trees are rebuilt scan by scan from the same
visits in the same order, so the counters after every batch, the batch CPU times and the
per-process counters repeat too.

:class:`Steady` records the last period of scans the kernel ran. When they were quiet and
every page without a KSM page is old enough (its age at the start of the period was at
least 14), the next period is written from that record instead of run: batch times from
the record's CPU times, counters with the monotone ones (pages scanned and skipped, full
scans) advanced, and the state changed as those scans would change it: ages advanced by
the period, and the prune clock of each chain moved at each scan with a pruning walk
(a visit of a clean chain changes nothing else). Only whole periods are written, and only
when every batch of them starts before the next snapshot, write or end, and every scan
before the next scan-aligned snapshot, without the advisor (which may change
``pages_to_scan`` after any scan) and within the scans left to replay.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from numba import njit

from planner.engine.driver import BatchRun
from planner.engine.fast.state import (
    CF_ALIVE,
    CF_PLAIN,
    CF_PRUNE,
    IB_EXISTS,
    RF_ELIG,
    S_DIRTY_N,
    S_N_CHAINS,
    S_N_ROWS,
    S_PRUNE_NS,
    S_SCAN_START,
    S_STALE_N,
    ZERO,
    KState,
)
from planner.engine.result import R_FULL_SCANS, R_SCANNED, R_SKIPPED

if TYPE_CHECKING:
    from planner.engine.driver import BatchPlan

I64 = npt.NDArray[np.int64]
MONOTONE = [R_SCANNED, R_SKIPPED, R_FULL_SCANS]
#: age from which smart scan's rhythm is periodic (the visit at age 13 sets 8 skips)
RHYTHM_AGE = 14


@dataclass
class ScanRecord:
    """One full scan the kernel ran, from its first batch to its last."""

    offsets_ns: I64  # batch start times, from the scan's start
    cpu_ns: I64
    rows: I64  # state rows after each batch
    start_row: I64  # state row before the scan
    paths: I64
    processes: dict[str, dict[str, int]]
    pages_to_scan: int
    sleep_ns: int
    quiet: bool  # no state change but ageing and unstable-tree churn
    pruning_walk: bool  # a pruning walk happened (chains' prune clocks may move)
    slots_version: int


@njit(cache=True, nogil=True)
def _rhythm_ages(r_flags: Any, r_phys: Any, e_node: Any, it_bits: Any, it_age: Any,
                 add: int) -> int:  # fmt: skip
    """The lowest age of a page smart scan ages (an item, not a KSM page); with ``add``,
    every such age moves on by ``add`` scans (up to 255)."""
    low = 255
    for r in range(r_flags.size):
        if (
            r_flags[r] & RF_ELIG
            and r_phys[r] != ZERO
            and it_bits[r] & IB_EXISTS
            and e_node[r_phys[r]] < 0
        ):
            a = it_age[r]
            if a < low:
                low = a
            if add:
                it_age[r] = min(255, a + add)
    return low


class Steady:
    """The last period of full scans and the fast-forward built from it (module notes)."""

    def __init__(self, smart_scan: bool) -> None:
        self.period = 9 if smart_scan else 1
        self.smart_scan = smart_scan
        self.history: deque[ScanRecord] = deque(maxlen=self.period)
        self.scans_skipped = 0

    def record(self, rec: ScanRecord) -> None:
        """A full scan the kernel ran."""
        self.history.append(rec)

    def forget(self) -> None:
        """Something happened between scans (a snapshot, a change of the mm list)."""
        self.history.clear()

    def _ready(self, st: KState, plan: BatchPlan, slots_version: int) -> bool:
        h = self.history
        if len(h) < self.period or plan.horizon.advisor:
            return False
        if any(
            not r.quiet
            or r.pages_to_scan != plan.pages_to_scan
            or r.sleep_ns != plan.sleep_ns
            or r.slots_version != slots_version
            for r in h
        ):
            return False
        hz = plan.horizon
        sc = st.sc
        if hz.scans_left < self.period or int(sc[R_FULL_SCANS]) + self.period > hz.last_scan:
            return False
        if sc[S_STALE_N] or sc[S_DIRTY_N]:
            return False
        flags = st.ch_flags[: int(sc[S_N_CHAINS])]
        if np.any((flags & CF_ALIVE != 0) & (flags & (CF_PLAIN | CF_PRUNE) != 0)):
            return False
        if self.smart_scan:
            n = int(sc[S_N_ROWS])
            low = _rhythm_ages(st.r_flags, st.r_phys, st.e_node, st.it_bits[:n], st.it_age[:n], 0)
            if low < min(255, RHYTHM_AGE + self.period):
                return False
        return True

    def forward(self, st: KState, plan: BatchPlan, slots_version: int) -> BatchRun | None:
        """The next period of scans from the record, or None when it cannot be written."""
        if not self._ready(st, plan, slots_version):
            return None
        hz = plan.horizon
        t = plan.t0_ns
        times, cpus, rows = [], [], []
        ends, paths, procs = [], [], []
        starts = []
        mono = st.sc[MONOTONE].copy()
        nb = 0
        for rec in self.history:
            if t >= hz.scan_start_before_ns:
                return None
            tt = t + rec.offsets_ns
            if tt[-1] >= plan.boundary_ns:
                return None
            rr = rec.rows.copy()
            rr[:, MONOTONE] += mono - rec.start_row[MONOTONE]
            mono = rr[-1, MONOTONE].copy()
            starts.append((t, rec.pruning_walk))
            times.append(tt)
            cpus.append(rec.cpu_ns)
            rows.append(rr)
            nb += tt.size
            ends.append(nb - 1)
            paths.append(rec.paths.copy())
            procs.append(rec.processes)
            t = int(tt[-1] + rec.cpu_ns[-1] + rec.sleep_ns)
        self._advance(st, starts, mono)
        self.scans_skipped += self.period
        return BatchRun(
            times_ns=np.concatenate(times),
            cpu_ns=np.concatenate(cpus),
            rows=np.concatenate(rows),
            scan_end_batches=ends,
            paths=paths,
            processes=procs,
        )

    def _advance(self, st: KState, starts: list[tuple[int, bool]], mono: I64) -> None:
        """The state after the period written: counters, ages, prune clocks."""
        sc = st.sc
        sc[MONOTONE] = mono
        n = int(sc[S_N_ROWS])
        if self.smart_scan:
            _rhythm_ages(st.r_flags, st.r_phys, st.e_node, st.it_bits[:n], st.it_age[:n], self.period)
        interval = int(sc[S_PRUNE_NS])
        nch = int(sc[S_N_CHAINS])
        alive = (st.ch_flags[:nch] & CF_ALIVE) != 0
        for t, pruning in starts:
            if pruning:
                due = alive & (t >= st.ch_prune[:nch] + interval)
                st.ch_prune[:nch][due] = t
            sc[S_SCAN_START] = t


__all__ = ["ScanRecord", "Steady"]
