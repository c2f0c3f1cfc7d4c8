"""The fast engine: a :class:`planner.engine.driver.Core` over the compiled kernel.

The KSM state lives in :class:`planner.engine.fast.state.KState`; the kernel
(:mod:`planner.engine.fast.kernel`) runs ksmd's batches on it; snapshots arrive as deltas
(:mod:`planner.engine.fast.apply`). What stays in Python is small and per mm: the mm list
(slots) and the cursor, exits and registrations, the per-process counters, and the
fast-forward of steady full scans (:mod:`planner.engine.fast.steady`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from planner._heap import state_pages
from planner.engine.cost import PATHS
from planner.engine.driver import BatchPlan, BatchRun
from planner.engine.fast import kernel
from planner.engine.fast.apply import COMPACT_MIN_DEAD, _extend, apply_delta, release_memory
from planner.engine.fast.observe import node_members, recount_merging, stable_tree
from planner.engine.fast.state import (
    IB_EXISTS,
    S_CUR_PAGE,
    S_CUR_SEG,
    S_EVENTS,
    S_MERGING_STALE,
    S_N_CONTENTS,
    S_N_ENTS,
    S_N_ORPH,
    S_N_ROWS,
    S_SPLIT_N,
    S_WALKS,
    ST_BOUNDARY,
    ST_SCAN_END,
    KState,
    empty_state,
    reserve,
)
from planner.engine.fast.steady import ScanRecord, Steady
from planner.engine.result import N_ROW, process_counters
from planner.engine.rows import MM_SHIFT
from planner.engine.timing import NS_PER_MS, next_batch_ns
from planner.engine.writes import Writes, written_contents

if TYPE_CHECKING:
    from planner.engine.knobs import KsmKnobs
    from planner.engine.prepare import ReplayInput

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]

#: batches one kernel call may record before handing them back
OUT_BATCHES = 4096
#: ``kernel.apply_writes``'s ``keep`` where no row keeps its page
_NO_KEEP = np.zeros(0, np.bool_)


class FastEngine:
    """The reference model's semantics, compiled (see the package notes)."""

    name = "vectorized"

    def __init__(
        self,
        inp: ReplayInput,
        knobs: KsmKnobs,
        *,
        out_batches: int = OUT_BATCHES,
        compact_min_dead: int = COMPACT_MIN_DEAD,
        fast_forward: bool = True,
    ) -> None:
        """``out_batches``, ``compact_min_dead`` and ``fast_forward`` are for tests (kernel
        re-entry, entity renumbering at every snapshot, steady scans run one by one)."""
        self.inp = inp
        self.k = knobs
        self.compact_min_dead = compact_min_dead
        self.page_size = inp.page_size
        self.st: KState = empty_state(
            len(inp.mms),
            max_page_sharing=knobs.max_page_sharing,
            smart_scan=knobs.smart_scan,
            use_zero=knobs.use_zero_pages,
            prune_ns=knobs.stable_node_chains_prune_ms * NS_PER_MS,
        )
        n = inp.n_contents
        self.st = self.st._replace(
            c_stable=np.full(n, -1, np.int32), c_occ=np.full(n, -1, np.int32)
        )
        self.st.sc[S_N_CONTENTS] = n
        self.split_keys = np.empty(0, np.uint64)  # huge pages KSM split: (mm << 27) | block
        self.snap_i = -1
        self.slots: list[int] = []
        self.cursor: int | None = None
        self.cursor_page = 0
        self.exited: set[int] = set()
        self.steady = Steady(knobs.smart_scan) if fast_forward else None
        self.slots_version = 0  # changes whenever the mm list does
        self.snap_gid = np.empty(0, np.int32)  # the snapshot's content per row (writes)
        #: contents a write may give a row (a toggle's other content): never unique
        self.shared_contents = written_contents(inp)
        self._out_t = np.zeros(out_batches, np.int64)
        self._out_cpu = np.zeros(out_batches, np.int64)
        self._out_rows = np.zeros((out_batches, N_ROW), np.int64)
        # per batch: visits per path, then the unstable-tree levels they walked
        self._out_bpaths = np.zeros((out_batches, 2 * len(PATHS)), np.int64)

    # ------------------------------------------------------------------ snapshots

    def apply_snapshot(self, k: int, now_ns: int) -> None:
        """The world moves to snapshot ``k``: its delta, then exits and registrations."""
        del now_ns
        if self.steady is not None:
            self.steady.forget()
        d = self.inp.deltas[k]
        with state_pages():  # (normal pages where huge ones are cold: planner._heap)
            apply_delta(self, d, self.split_keys, self.compact_min_dead, self.shared_contents)
        if self.inp.writes:  # the snapshot's contents, which a write may restore
            self.snap_gid = self.st.r_gid[: d.n_rows].copy()
        self.snap_i = k
        for mm in self.inp.exiting(k):
            self.exited.add(mm)
            if self.split_keys.size:
                owner = (self.split_keys >> np.uint64(27)).astype(np.int64)
                self.split_keys = self.split_keys[owner != mm]
            if mm in self.slots and self.cursor != mm:
                self.slots_version += 1
                self.slots.remove(mm)
                if self._has_items(mm):
                    at = 0 if self.cursor is None else self.slots.index(self.cursor) + 1
                    self.slots.insert(at, mm)
        entering = self.inp.entering(k)
        lay = d.layout
        later = [
            int(m)
            for m, ok in zip(lay.present.tolist(), lay.mergeable.tolist(), strict=True)
            if ok and int(m) not in entering and self.inp.mms[int(m)].registration.mode != "off"
        ]
        for mm in entering + later:
            if mm in self.slots or mm in self.exited or not lay.is_mergeable(mm):
                continue
            at = len(self.slots) if self.cursor is None else self.slots.index(self.cursor)
            self.slots.insert(at, mm)
            self.slots_version += 1

    def apply_writes(self, writes: object, now_ns: int) -> int:
        """Writes between snapshots (:mod:`planner.engine.writes`): the compiled
        ``kernel.apply_writes``, the reference model's ``apply_writes``; returns the merges
        broken."""
        del now_ns
        assert isinstance(writes, Writes)
        if self.steady is not None:
            self.steady.forget()
        st = self.st
        need = int(st.sc[S_N_ENTS]) + len(writes)
        if need > st.e_map.size:  # room for a fresh physical page per row written
            self.st = st = st._replace(
                e_map=_extend(st.e_map, need, 0), e_node=_extend(st.e_node, need, -1)
            )
        keep = _NO_KEEP if writes.keep is None else writes.keep
        return int(kernel.apply_writes(st, writes.rows, writes.content, self.snap_gid, keep))

    def _orphan_ranges(self, mm: I64, from_page: npt.NDArray[np.uint64]) -> tuple[I64, I64]:
        """Each mm's orphan rows from its page ``from_page`` on (one search for all)."""
        keys = self.st.o_key[: int(self.st.sc[S_N_ORPH])]
        mm_key = mm.astype(np.uint64) << MM_SHIFT
        lo = np.searchsorted(keys, mm_key | from_page).astype(np.int64)
        return lo, np.searchsorted(keys, mm_key + (np.uint64(1) << MM_SHIFT)).astype(np.int64)

    def _has_items(self, mm: int) -> bool:
        st = self.st
        lo, hi = self.inp.deltas[self.snap_i].layout.rows_of(mm)
        if hi > lo and (st.it_bits[lo:hi] & IB_EXISTS).any():
            return True
        o_lo, o_hi = self._orphan_ranges(np.array([mm], np.int64), np.zeros(1, np.uint64))
        a, b = int(o_lo[0]), int(o_hi[0])
        n_rows = int(st.sc[S_N_ROWS])
        return bool((st.it_bits[n_rows + a : n_rows + b] & IB_EXISTS).any())

    # ------------------------------------------------------------------ the ksmd loop

    def has_work(self) -> bool:
        """Whether an mm is registered or a full scan is in progress."""
        return bool(self.slots) or self.cursor is not None

    def in_scan(self) -> bool:
        """Whether a full scan is in progress."""
        return self.cursor is not None

    def start_scan(self, now_ns: int) -> None:
        """A full scan starts at the head of the mm list."""
        kernel.start_scan(self.st, now_ns)
        self.cursor = self.slots[0]
        self.cursor_page = 0

    def _path(self) -> tuple[list[int], I64, I64, I64, I64, I64]:
        """The cursor's path: the mms from the cursor, their row and orphan ranges (one
        search per kind of range for all of them: this runs once per batch)."""
        assert self.cursor is not None
        rem = self.slots[self.slots.index(self.cursor) :]
        mm = np.array(rem, np.int64)
        lo, hi = self.inp.deltas[self.snap_i].layout.rows_of_many(mm)
        gone = np.array([m in self.exited for m in rem], bool) if self.exited else None
        if gone is not None:  # an exited mm has orphans only
            lo[gone] = 0
            hi[gone] = 0
        page = np.zeros(mm.size, np.uint64)  # where each mm's walk starts: the cursor's page
        if self.cursor_page and (gone is None or not gone[0]):  # (an exited mm's: from 0)
            page[0] = self.cursor_page
            lo[0] += int(np.searchsorted(self.st.r_page[lo[0] : hi[0]], page[0]))
        olo, ohi = self._orphan_ranges(mm, page)
        return rem, mm, lo, hi, olo, ohi

    def run(self, plan: BatchPlan) -> BatchRun:
        """Batches from ``plan.t0_ns`` until the scan ends or the boundary comes.

        At the start of a scan, a steady period of scans may be written from the record
        instead (:mod:`planner.engine.fast.steady`).
        """
        starts = plan.starts_scan
        if starts and self.steady is not None:
            ahead = self.steady.forward(self.st, plan, self.slots_version)
            if ahead is not None:
                self.cursor = None
                return ahead
        start_row = self.state_row()
        events0 = int(self.st.sc[S_EVENTS])
        run, batch_paths = self._run_kernel(plan)
        if self.steady is not None:
            if starts and run.scans_ended:
                sc = self.st.sc
                self.steady.record(
                    self.st,
                    ScanRecord(
                        batch_paths=batch_paths,
                        rows=run.rows,
                        start_row=start_row,
                        processes=run.processes[0],
                        pages_to_scan=plan.pages_to_scan,
                        sleep_ns=plan.sleep_ns,
                        quiet=int(sc[S_EVENTS]) == events0,
                        pruning_walk=bool(sc[S_WALKS]),
                        slots_version=self.slots_version,
                    ),
                )
            elif not run.scans_ended:
                self.steady.forget()
        return run

    def _run_kernel(self, plan: BatchPlan) -> tuple[BatchRun, I64]:
        """The kernel's batches (called again as long as it stops for room or output),
        and each batch's visits per path."""
        costs = np.array([*plan.path_costs_ns, *[plan.level_ns] * len(PATHS)], np.int64)
        paths = np.zeros(2 * len(PATHS), np.int64)
        times: list[I64] = []
        cpus: list[I64] = []
        rows: list[npt.NDArray[np.int64]] = []
        bpaths: list[npt.NDArray[np.int64]] = []
        t, start_cost = plan.t0_ns, plan.scan_start_ns
        while True:
            st = self.st
            room = min(plan.pages_to_scan, int(st.sc[S_N_ROWS] + st.sc[S_N_ORPH])) + 2
            self.st = st = reserve(st, room, room, 2 * room)
            rem, mm, lo, hi, olo, ohi = self._path()
            args = (t, plan.pages_to_scan, plan.batch_overhead_ns, start_cost, plan.sleep_ns,
                    plan.boundary_ns, room, plan.tick_ns)  # fmt: skip
            nb, status = kernel.run_batches(
                st, mm, lo, hi, olo, ohi, self.cursor_page, args, costs,
                self._out_t, self._out_cpu, self._out_rows, paths, self._out_bpaths,
            )  # fmt: skip
            self._move_cursor(rem)
            if nb:
                times.append(self._out_t[:nb].copy())
                cpus.append(self._out_cpu[:nb].copy())
                rows.append(self._out_rows[:nb].copy())
                bpaths.append(self._out_bpaths[:nb].copy())
                last_t, last_cpu = int(self._out_t[nb - 1]), int(self._out_cpu[nb - 1])
                t = next_batch_ns(last_t, last_cpu, plan.sleep_ns, plan.tick_ns)
                start_cost = 0
            if status in (ST_SCAN_END, ST_BOUNDARY):
                break
        run = BatchRun(
            times_ns=np.concatenate(times),
            cpu_ns=np.concatenate(cpus),
            rows=np.concatenate(rows),
            paths=[paths[: len(PATHS)]],
            levels=[paths[len(PATHS) :]],
        )
        if status == ST_SCAN_END:
            run.scan_end_batches.append(run.times_ns.size - 1)
            run.processes.append(self.processes())
        return run, np.concatenate(bpaths)

    def _move_cursor(self, rem: list[int]) -> None:
        """After a kernel call: mms whose pass ended leave the list as ksmd drops them."""
        sc = self.st.sc
        done = int(sc[S_CUR_SEG])
        lay = self.inp.deltas[self.snap_i].layout
        for mm in rem[:done]:
            if mm in self.exited or not lay.is_mergeable(mm):
                self.slots.remove(mm)
                self.slots_version += 1
        if done >= len(rem):
            self.cursor = None
        else:
            self.cursor = rem[done]
            self.cursor_page = int(sc[S_CUR_PAGE])
        n = int(sc[S_SPLIT_N])
        if n:
            self.split_keys = np.union1d(self.split_keys, self.st.split_out[:n])
            sc[S_SPLIT_N] = 0

    # ------------------------------------------------------------------ observation

    def state_row(self) -> I64:
        """The counters and the truth now."""
        return self.st.sc[:N_ROW].copy()

    def processes(self) -> dict[str, dict[str, int]]:
        """ksm_stat of every live process now."""
        if self.snap_i < 0:
            return {}
        st = self.st
        if st.sc[S_MERGING_STALE]:
            n_orph = int(st.sc[S_N_ORPH])
            recount_merging(st, st.o_mm[:n_orph])
        out: dict[str, dict[str, int]] = {}
        for mm in self.inp.deltas[self.snap_i].layout.present.tolist():
            out[str(self.inp.mms[mm].pid)] = process_counters(
                rmap_items=int(st.mm_rmap[mm]),
                merging=int(st.mm_merging[mm]),
                zero=int(st.mm_zero[mm]),
                page_size=self.page_size,
            )
        return out

    def stable_tree(self) -> dict[int, list[tuple[tuple[int, int], ...]]]:
        """The whole stable tree, as the reference's ``stable_tree`` (tests, debugging)."""
        return stable_tree(self.st, self.inp.content_hash)

    def node_members(self) -> npt.NDArray[np.int64]:
        """Final KSM page membership (rows ``(node, mm, items)``), numbered as the reference
        numbers it."""
        release_memory()
        return node_members(self.st, self.inp.content_hash)


__all__ = ["FastEngine"]
