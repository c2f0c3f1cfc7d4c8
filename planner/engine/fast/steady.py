"""Fast-forward of steady full scans: exact, never approximate.

Smart scan visits a page whose checksum keeps changing or that found no partner less and
less often, and from age 9 on once every 9 scans (``skip_age``). Once nothing else
happens -- no merge or unmerge, no item allocated or freed, no stable node or chain
changed, no snapshot, the mm list unchanged -- the replay becomes periodic: if the items'
state (in which tree, how many scans to skip) is back to what it was a period of 9 scans
earlier (1 without smart scan), and every age was at least 9 then (the rule no longer
depends on it), the next period repeats the last one visit for visit: the trees are
rebuilt scan by scan from the same visits in the same order, so the counters after every
batch, the paths taken, the unstable-tree levels walked (the tree is rebuilt from empty
every scan) and the per-process counters repeat. Only what depends on the clock moves on:
the batch times follow from the CPU (recomputed from the recorded visits and levels at
the plan's costs), and a chain's prune clock moves at each scan with a pruning walk (a
visit of a clean chain changes nothing else).

:class:`Steady` records the last period of scans the kernel ran and compares the items'
state with the one a period earlier (a 2-byte-per-page copy). When the replay is periodic,
the next period is written from the record instead of run: times, CPU, state rows with the
monotone counters (pages scanned and skipped, full scans) advanced, and the state changed
as those scans change it (ages, prune clocks). Only whole periods are written, and only
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

from planner.engine.driver import BatchRun
from planner.engine.fast._jit import jit
from planner.engine.fast.state import (
    CF_ALIVE,
    CF_PLAIN,
    CF_PRUNE,
    IB_EXISTS,
    IB_STABLE,
    IB_UNSTABLE,
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
from planner.engine.timing import next_batch_ns

if TYPE_CHECKING:
    from planner.engine.driver import BatchPlan

I64 = npt.NDArray[np.int64]
MONOTONE = [R_SCANNED, R_SKIPPED, R_FULL_SCANS]
#: age from which smart scan's rule no longer depends on the age (skip_age is 8 from 9 on)
STEADY_AGE = 9
_STATE_BITS = IB_EXISTS | IB_UNSTABLE | IB_STABLE


@dataclass
class ScanRecord:
    """One full scan the kernel ran, from its first batch to its last."""

    batch_paths: I64  # visits per path of each batch, then the levels they walked (the CPU)
    rows: I64  # state rows after each batch
    start_row: I64  # state row before the scan
    processes: dict[str, dict[str, int]]
    pages_to_scan: int
    sleep_ns: int
    quiet: bool  # no state change but ageing and unstable-tree churn
    pruning_walk: bool  # a pruning walk happened (chains' prune clocks may move)
    slots_version: int


@jit
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
        # the items' state (tree bits, skip counters) when the current quiet stretch began
        self._ref: tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]] | None = None
        self._quiet = 0  # quiet scans since then
        self._periodic = False  # the state came back to it after a whole period

    def _items(self, st: KState) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
        return (st.it_bits & np.uint8(_STATE_BITS)).astype(np.uint8), st.it_rem.copy()

    def record(self, st: KState, rec: ScanRecord) -> None:
        """A full scan the kernel ran (``st``: the state after it)."""
        self.history.append(rec)
        if not rec.quiet or self._ref is None:
            self._ref, self._quiet, self._periodic = self._items(st), 0, False
            return
        self._quiet += 1
        if self._quiet < self.period or self._periodic:
            return
        bits, rem = self._items(st)
        ref_bits, ref_rem = self._ref
        if np.array_equal(bits, ref_bits) and np.array_equal(rem, ref_rem):
            self._periodic = True
        else:  # not yet: start again from here
            self._ref, self._quiet = (bits, rem), 0

    def forget(self) -> None:
        """Something happened between scans (a snapshot, a change of the mm list)."""
        self.history.clear()
        self._ref, self._quiet, self._periodic = None, 0, False

    def _ready(self, st: KState, plan: BatchPlan, slots_version: int) -> bool:
        h = self.history
        if not self._periodic or len(h) < self.period or plan.horizon.advisor:
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
            # every age was at least STEADY_AGE a period ago (ages grow by one a scan)
            n = int(sc[S_N_ROWS])
            low = _rhythm_ages(st.r_flags, st.r_phys, st.e_node, st.it_bits[:n], st.it_age[:n], 0)
            if low < min(255, STEADY_AGE + self.period):
                return False
        return True

    def forward(self, st: KState, plan: BatchPlan, slots_version: int) -> BatchRun | None:
        """The next period of scans from the record, or None when it cannot be written."""
        if not self._ready(st, plan, slots_version):
            return None
        hz = plan.horizon
        cost = plan.cost
        t = plan.t0_ns
        npaths = len(plan.path_costs_ns)
        costs = np.array([*plan.path_costs_ns, *[plan.level_ns] * npaths], np.int64)
        times, cpus, rows = [], [], []
        ends, paths, levels, procs = [], [], [], []
        starts = []
        mono = st.sc[MONOTONE].copy()
        nb = 0
        for rec in self.history:
            if t >= hz.scan_start_before_ns:
                return None
            cpu = cost.batch_overhead_ns + rec.batch_paths @ costs
            cpu[0] += cost.scan_start_ns
            step = rec.sleep_ns + cpu[:-1] // plan.tick_ns * plan.tick_ns  # timing.next_batch_ns
            tt = t + np.r_[0, np.cumsum(step)].astype(np.int64)
            if tt[-1] >= plan.boundary_ns:
                return None
            rr = rec.rows.copy()
            rr[:, MONOTONE] += mono - rec.start_row[MONOTONE]
            mono = rr[-1, MONOTONE].copy()
            starts.append((t, rec.pruning_walk))
            times.append(tt)
            cpus.append(cpu)
            rows.append(rr)
            nb += tt.size
            ends.append(nb - 1)
            visits = rec.batch_paths.sum(axis=0)
            paths.append(visits[:npaths])
            levels.append(visits[npaths:])
            procs.append(rec.processes)
            t = next_batch_ns(int(tt[-1]), int(cpu[-1]), rec.sleep_ns, plan.tick_ns)
        self._advance(st, starts, mono)
        self.scans_skipped += self.period
        return BatchRun(
            times_ns=np.concatenate(times),
            cpu_ns=np.concatenate(cpus).astype(np.int64),
            rows=np.concatenate(rows),
            scan_end_batches=ends,
            paths=paths,
            levels=levels,
            processes=procs,
        )

    def _advance(self, st: KState, starts: list[tuple[int, bool]], mono: I64) -> None:
        """The state after the period written: counters, ages, prune clocks."""
        sc = st.sc
        sc[MONOTONE] = mono
        n = int(sc[S_N_ROWS])
        if self.smart_scan:
            _rhythm_ages(
                st.r_flags, st.r_phys, st.e_node, st.it_bits[:n], st.it_age[:n], self.period
            )
        interval = int(sc[S_PRUNE_NS])
        nch = int(sc[S_N_CHAINS])
        alive = (st.ch_flags[:nch] & CF_ALIVE) != 0
        for t, pruning in starts:
            if pruning:
                due = alive & (t >= st.ch_prune[:nch] + interval)
                st.ch_prune[:nch][due] = t
            sc[S_SCAN_START] = t


__all__ = ["ScanRecord", "Steady"]
