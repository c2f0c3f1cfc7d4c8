"""The vectorized engine: the reference model's semantics, a full scan at a time.

A replay is cut into *epochs*: the part of one full scan that sees one snapshot. Within an
epoch the cursor's path is known in advance (the mm list from the cursor, each mm's rows in
address order), so every page visit of the epoch is a position in one array and the per
page rules become array operations:

1. smart-scan ageing/skips, the checksum gate and the kernel-page test are per item;
2. merging is decided per *content group* (all candidates with one hash): in the common
   case (no chain, no page shared by two visited rows, no THP, room in the stable node)
   the outcome has a closed form: candidates join the existing KSM page, or the first two
   pair up (the second one's page becomes the KSM page) and the rest join it, or a lone
   candidate goes to the unstable tree (docs/ksm-kernel-semantics.md §10);
3. the other groups -- chains and dups, fork-shared pages, THP, full stable nodes -- are
   replayed event by event in position order, exactly as the reference model does,
   together with every event that touches a chain;
4. counter deltas are attached to positions, positions to batches (``pages_to_scan`` page
   visits, skips free), batches to times (cost model, sleep), and an epoch that would run
   into the next snapshot's time is re-done up to that batch.

It is held to :mod:`planner.engine.reference` by property tests (identical counters after
every full scan) and to the kernel by the conformance tests.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from planner._progress import NULL_PROGRESS, Progress
from planner.engine.cost import PATHS
from planner.engine.knobs import KsmKnobs
from planner.engine.options import ReplayOptions
from planner.engine.prepare import ReplayInput, SnapshotRows
from planner.engine.result import (
    CostSummary,
    GridRecord,
    ReplayResult,
    ScanRecord,
    Truth,
    global_counters,
    process_counters,
    time_to_fraction,
)
from planner.engine.timing import NS_PER_MS, NS_PER_S, AdvisorState, advisor_step, sleep_ns
from planner.provenance import tool_version

I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]

ZERO = -1
NONE, UNSTABLE, STABLE = 0, 1, 2
THP_SHIFT = 9
_KEY_SHIFT = np.uint64(36)
_PAGE_MASK = np.uint64((1 << 36) - 1)
#: skip_age(age) for age 0..255 (mm/ksm.c)
_SKIP_AGE = np.array([1, 1, 1, 1, 2, 2, 4, 4, 4] + [8] * 247, dtype=np.uint8)

# path codes, in the order of cost.PATHS
P_KSM, P_FORK, P_SKIP, P_FIRST, P_VOL, P_UNST, P_MERGE, P_ZERO, P_NOMERGE = range(len(PATHS))
# counters carried as deltas
C_SHARED, C_SHARING, C_UNSHARED, C_RMAP, C_CHAINS, C_DUPS, C_ZERO, C_FRAMES, C_KSMPAGES, C_NODES = range(10)
N_COUNTERS = 10

ITEM_FIELDS = {
    "state": (np.int8, NONE),
    "node": (np.int64, -1),
    "sum": (np.uint64, 0),
    "has": (np.bool_, False),
    "age": (np.uint8, 0),
    "rem": (np.uint8, 0),
}


class _Grow:
    """A growable 1-D numpy array (``a[:n]`` is in use)."""

    def __init__(self, dtype: Any, fill: Any, cap: int = 1024) -> None:
        self.a = np.full(cap, fill, dtype=dtype)
        self.n = 0
        self.fill = fill

    def ensure(self, n: int) -> None:
        if n > self.a.size:
            new = np.full(max(n, 2 * self.a.size), self.fill, dtype=self.a.dtype)
            new[: self.a.size] = self.a
            self.a = new
        self.n = max(self.n, n)


@dataclass(eq=False)
class _VChain:
    key: int
    prune_ns: int
    dups: list[int] = field(default_factory=list)  # node ids, head first


class _Undo:
    """Undo log of the event-by-event part of an epoch (an epoch may be redone shorter)."""

    def __init__(self) -> None:
        self.log: list[tuple[Any, Any, Any]] = []

    def set(self, arr: Any, i: Any, v: Any) -> None:
        self.log.append((arr, i, arr[i]))
        arr[i] = v

    def call(self, undo: Any) -> None:
        self.log.append((None, undo, None))

    def rollback(self) -> None:
        for arr, i, v in reversed(self.log):
            if arr is None:
                i()
            else:
                arr[i] = v
        self.log.clear()


class _Events:
    """Counter deltas and path visits attached to positions of an epoch."""

    def __init__(self) -> None:
        self.pos: list[I64] = []
        self.slot: list[I64] = []
        self.val: list[I64] = []
        self.ppos: list[I64] = []
        self.path: list[I64] = []

    def add(self, pos: Any, counter: int, val: Any) -> None:
        p = np.asarray(pos, dtype=np.int64).reshape(-1)
        if p.size == 0:
            return
        self.pos.append(p)
        self.slot.append(np.full(p.size, counter, np.int64))
        self.val.append(np.broadcast_to(np.asarray(val, dtype=np.int64), p.shape).copy())

    def add_path(self, pos: Any, path: int) -> None:
        p = np.asarray(pos, dtype=np.int64).reshape(-1)
        if p.size:
            self.ppos.append(p)
            self.path.append(np.full(p.size, path, np.int64))

    @staticmethod
    def _cat(parts: list[I64]) -> I64:
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    def counters(self) -> tuple[I64, I64, I64]:
        return self._cat(self.pos), self._cat(self.slot), self._cat(self.val)

    def paths(self) -> tuple[I64, I64]:
        return self._cat(self.ppos), self._cat(self.path)


@dataclass
class _Epoch:
    """What one epoch did, aggregated per batch (state already committed)."""

    batch_times: I64  # start time of each batch
    batch_cpu: I64  # CPU ns of each batch
    cum: npt.NDArray[np.int64]  # (batches, N_COUNTERS + 2): counters after each batch (+scanned, skipped)
    scan_ended: bool


class VectorizedEngine:
    """Replays a :class:`ReplayInput` an epoch (part of a scan under one snapshot) at a time."""

    name = "vectorized"

    def __init__(
        self, inp: ReplayInput, knobs: KsmKnobs, opts: ReplayOptions, *, progress: Progress = NULL_PROGRESS
    ) -> None:
        self.inp = inp
        self.k = knobs
        self.opts = opts
        self.cost = opts.cost
        self.progress = progress
        self.page_size = inp.page_size
        self.M = knobs.max_page_sharing
        n_mm = len(inp.mms)
        self.snap_i = -1
        self.snap: SnapshotRows | None = None
        self.phys = np.empty(0, np.int64)
        self.it_exists = np.empty(0, bool)
        self.it: dict[str, Any] = {f: np.empty(0, dt) for f, (dt, _) in ITEM_FIELDS.items()}
        self.o_key = np.empty(0, np.uint64)  # items whose page is absent from the snapshot
        self.orph: dict[str, Any] = {f: np.empty(0, dt) for f, (dt, _) in ITEM_FIELDS.items()}
        self.ent_map = _Grow(np.int64, 0)
        self.ent_node = _Grow(np.int64, -1)
        self.node_key = _Grow(np.uint64, 0)
        self.node_ent = _Grow(np.int64, -1)
        self.node_len = _Grow(np.int64, 0)
        self.node_chain = _Grow(np.int64, -1)  # key of its chain, -1 when plain
        self.node_alive = _Grow(np.bool_, False)
        self.plain: dict[int, int] = {}
        self.chains: dict[int, _VChain] = {}
        self.occupant: dict[int, int] = {}  # unstable tree of this scan: content -> row
        self.split_thp: set[tuple[int, int]] = set()
        self.slots: list[int] = []
        self.cursor: int | None = None
        self.cursor_page = 0
        self.exited: set[int] = set()
        self.seqnr = 0
        self.scan_start_ns = 0
        self.c = np.zeros(N_COUNTERS, np.int64)
        self.scanned = 0
        self.skipped = 0
        self.mm_rmap = np.zeros(n_mm + 1, np.int64)
        self.mm_merging = np.zeros(n_mm + 1, np.int64)
        self.mm_zero = np.zeros(n_mm + 1, np.int64)
        self.frames_without = 0
        self.pages_to_scan = knobs.initial_pages_to_scan
        self.advisor = AdvisorState()
        self.cpu_ns = int(knobs.advisor_initial_cpu_s * NS_PER_S)
        self.cpu_start_ns = self.cpu_ns
        self.tree_pages_for_cost = 0
        self.path_visits = np.zeros(len(PATHS), np.int64)
        self.path_cpu_ns = np.zeros(len(PATHS), np.int64)
        self.snapshot_first_scan: list[int | None] = [None] * len(inp.snapshots)
        self.snapshot_applied_ns: list[int | None] = [None] * len(inp.snapshots)
        self.next_snap = 0
        self.now_ns = 0
        self._seq_before = 0
        #: optional debugging aid: (full scan, mm, page, path) of every visit, when a list
        self.visit_log: list[tuple[int, int, int, str]] | None = None

    # ================================================================== snapshots

    def _mappers(self, ents: I64, delta: int, mms: I64) -> None:
        zero = ents == ZERO
        if zero.any():
            np.add.at(self.mm_zero, mms[zero], delta)
            self.c[C_ZERO] += delta * int(zero.sum())
        e = ents[~zero]
        if e.size:
            np.add.at(self.ent_map.a, e, delta)

    def _apply_snapshot(self, k: int) -> None:
        """The trace's world moves to snapshot ``k``."""
        new = self.inp.snapshots[k]
        old = self.snap
        n = new.n
        phys = np.empty(n, np.int64)
        carry, inh, inh_old, fresh = new.carry_src, new.inherit_src, new.inherit_old, new.fresh_group
        has_c = carry >= 0
        phys[has_c] = self.phys[carry[has_c]]
        m = inh >= 0
        phys[m] = phys[inh[m]]
        m = inh_old >= 0
        phys[m] = self.phys[inh_old[m]]
        m = fresh >= 0
        base = self.ent_map.n
        phys[m] = base + fresh[m]
        self.ent_map.ensure(base + new.n_fresh)
        self.ent_node.ensure(base + new.n_fresh)
        nc = ~has_c
        self._mappers(phys[nc], +1, new.mm[nc].astype(np.int64))
        if old is not None and new.released_old.size:
            ro = new.released_old
            self._mappers(self.phys[ro], -1, old.mm[ro].astype(np.int64))
        self._remap_items(old, new)
        if self.occupant and old is not None:
            src = new.same_content_src
            inv = np.full(old.n, -1, np.int64)
            ok = src >= 0
            inv[src[ok]] = np.flatnonzero(ok)
            keep: dict[int, int] = {}
            for key, row in self.occupant.items():
                j = int(inv[row])
                if j >= 0 and bool(new.eligible[j]) and phys[j] != ZERO:
                    keep[key] = j
            self.occupant = keep
        self.phys = phys
        self.snap = new
        self.snap_i = k
        self.frames_without = int(np.unique(new.frame).size)
        used = self.ent_map.a[: self.ent_map.n] > 0
        self.c[C_FRAMES] = int(np.count_nonzero(used))
        self.c[C_KSMPAGES] = int(np.count_nonzero(used & (self.ent_node.a[: self.ent_map.n] >= 0)))
        for mm in self.inp.exiting(k):
            self.exited.add(mm)
            for blk in [b for b in self.split_thp if b[0] == mm]:
                self.split_thp.discard(blk)
            if mm in self.slots and self.cursor != mm:
                self.slots.remove(mm)
                if self._mm_has_items(mm):
                    at = 0 if self.cursor is None else self.slots.index(self.cursor) + 1
                    self.slots.insert(at, mm)
        entering = self.inp.entering(k)
        later = [
            int(m)
            for m, ok in zip(new.mm_present.tolist(), new.mm_mergeable.tolist(), strict=True)
            if ok and int(m) not in entering and self.inp.mms[int(m)].registration.mode != "off"
        ]
        pos = {int(m): i for i, m in enumerate(new.mm_present.tolist())}
        for mm in entering + later:
            if mm in self.slots or mm in self.exited or not new.mm_mergeable[pos[mm]]:
                continue
            at = len(self.slots) if self.cursor is None else self.slots.index(self.cursor)
            self.slots.insert(at, mm)
        self.snapshot_first_scan[k] = self.seqnr + 1
        self.snapshot_applied_ns[k] = self.now_ns

    def _mm_has_items(self, mm: int) -> bool:
        if self.snap is not None:
            lo, hi = self.snap.rows_of(mm)
            if hi > lo and self.it_exists[lo:hi].any():
                return True
        return bool(((self.o_key >> _KEY_SHIFT) == np.uint64(mm)).any())

    def _remap_items(self, old: SnapshotRows | None, new: SnapshotRows) -> None:
        """Items follow their (mm, page) from the old rows to the new ones, or become orphans."""
        n = new.n
        ck = new.keys()
        ex = np.zeros(n, bool)
        it = {f: np.full(n, fill, dt) for f, (dt, fill) in ITEM_FIELDS.items()}
        src_keys = [self.o_key]
        src_fields = [self.orph]
        if old is not None and old.n:
            have = np.flatnonzero(self.it_exists)
            src_keys.insert(0, old.keys()[have])
            src_fields.insert(0, {f: v[have] for f, v in self.it.items()})
        keys = np.concatenate(src_keys)
        fields = {f: np.concatenate([sf[f] for sf in src_fields]) for f in ITEM_FIELDS}
        if keys.size and n:
            pos = np.minimum(np.searchsorted(ck, keys), n - 1)
            hit = ck[pos] == keys
        else:
            pos = np.zeros(keys.size, np.int64)
            hit = np.zeros(keys.size, bool)
        dst = pos[hit]
        ex[dst] = True
        for f in ITEM_FIELDS:
            it[f][dst] = fields[f][hit]
        miss = ~hit
        order = np.argsort(keys[miss], kind="stable")
        self.o_key = keys[miss][order]
        self.orph = {f: fields[f][miss][order] for f in ITEM_FIELDS}
        self.it_exists = ex
        self.it = it

    # ================================================================== stable tree helpers

    def _stale(self, nd: int) -> bool:
        return bool(self.ent_map.a[self.node_ent.a[nd]] == 0)

    def _cand(self, nd: int, offset: int = 0) -> bool:
        ln = int(self.node_len.a[nd])
        return ln > 0 and ln + offset < self.M

    def _prune_due(self, ch: _VChain) -> bool:
        return self.scan_start_ns >= ch.prune_ns + self.k.stable_node_chains_prune_ms * NS_PER_MS

    def _chain_find(self, ch: _VChain, prune: bool) -> tuple[int | None, list[int]]:
        found: int | None = None
        stale: list[int] = []
        for d in ch.dups:
            if self._stale(d):
                stale.append(d)
                continue
            if found is None or (
                self._cand(d) and (not self._cand(found) or self.node_len.a[d] > self.node_len.a[found])
            ):
                found = d
                if not prune and self._cand(found):
                    break
        return found, stale

    def _chain_dirty(self, ch: _VChain) -> bool:
        """Whether a passing stable-tree walk would change this chain (see reference module)."""
        if self._prune_due(ch):
            return True
        found, stale = self._chain_find(ch, False)
        if stale or found is None:
            return True
        if len(ch.dups) == 1:
            return True
        return ch.dups[0] != found and self._cand(found, 1)

    # ================================================================== observation

    def counters(self, c: npt.NDArray[np.int64] | None = None, scanned: int | None = None,
                 skipped: int | None = None, full_scans: int | None = None) -> dict[str, int]:
        """The global counters (now, or from a per-batch vector)."""
        c = self.c if c is None else c
        return global_counters(
            shared=int(c[C_SHARED]), sharing=int(c[C_SHARING]), unshared=int(c[C_UNSHARED]),
            rmap_items=int(c[C_RMAP]), scanned=self.scanned if scanned is None else scanned,
            skipped=self.skipped if skipped is None else skipped,
            full_scans=self.seqnr if full_scans is None else full_scans, chains=int(c[C_CHAINS]),
            dups=int(c[C_DUPS]), zero_pages=int(c[C_ZERO]), page_size=self.page_size,
        )

    def truth(self, c: npt.NDArray[np.int64] | None = None) -> Truth:
        """Physical frames with and without KSM."""
        c = self.c if c is None else c
        return Truth(
            frames_without_ksm=self.frames_without,
            frames_with_ksm=int(c[C_FRAMES]),
            ksm_pages=int(c[C_KSMPAGES]),
            zero_mapped_pages=int(c[C_ZERO]),
            rmap_items=int(c[C_RMAP]),
            stable_nodes=int(c[C_NODES] + c[C_CHAINS]),
            page_size=self.page_size,
        )

    def processes(self) -> dict[str, dict[str, int]]:
        """ksm_stat of every live process."""
        if self.snap is None:
            return {}
        out: dict[str, dict[str, int]] = {}
        for mm in self.snap.mm_present.tolist():
            out[str(self.inp.mms[mm].pid)] = process_counters(
                rmap_items=int(self.mm_rmap[mm]), merging=int(self.mm_merging[mm]), zero=int(self.mm_zero[mm]),
                page_size=self.page_size,
            )
        return out

    # ================================================================== one epoch

    def _epoch_pass(self, t0: int, starts_scan: bool, limit: int | None) -> dict[str, Any]:
        """Compute one epoch (functional for the vectorized part; the event loop logs undo)."""
        snap = self.snap
        assert snap is not None and self.cursor is not None
        K = self.k
        M = self.M
        pts = self.pages_to_scan
        ev = _Events()
        undo = _Undo()
        phys = self.phys
        it = self.it
        ent_map, ent_node = self.ent_map.a, self.ent_node.a
        # ---- A. the cursor's path: slots from the cursor, each mm's rows, an END per mm
        ci = self.slots.index(self.cursor)
        rem = self.slots[ci:]
        S = len(rem)
        lo = np.zeros(S, np.int64)
        hi = np.zeros(S, np.int64)
        for s, mm in enumerate(rem):
            if mm in self.exited:
                continue
            a, b = snap.rows_of(mm)
            if s == 0:
                a += int(np.searchsorted(snap.page[a:b], np.uint64(self.cursor_page)))
            lo[s], hi[s] = a, b
        L = hi - lo + 1
        seg_start = np.cumsum(L) - L
        P_full = int(L.sum())
        seg = np.repeat(np.arange(S), L)
        local = np.arange(P_full) - seg_start[seg]
        is_end = local == (L - 1)[seg]
        row = np.where(is_end, -1, lo[seg] + local)
        P = P_full if limit is None else limit
        seg, is_end, row = seg[:P], is_end[:P], row[:P]
        rem_arr = np.asarray(rem, np.int64)
        pos_mm = rem_arr[seg]
        ar = np.arange(P)
        r = np.where(row >= 0, row, 0)
        if snap.n:
            vis = ~is_end & snap.eligible[r] & (phys[r] != ZERO)
            rit = ~is_end & self.it_exists[r]
        else:
            vis = np.zeros(P, bool)
            rit = np.zeros(P, bool)
        stop_idx = np.where(vis | is_end, ar, P)
        next_stop = np.minimum.accumulate(stop_idx[::-1])[::-1] if P else stop_idx

        # ---- B. visits: smart-scan skips (tentative: with each page's KSM state at the start)
        vp = np.flatnonzero(vis)
        vr = row[vp]
        v_has = self.it_exists[vr]
        v_ent = phys[vr]
        v_node = ent_node[v_ent]
        v_ksm = v_node >= 0
        age = np.where(v_has, it["age"][vr], 0).astype(np.uint8)
        rmn = np.where(v_has, it["rem"][vr], 0).astype(np.uint8)
        if K.smart_scan:
            aging = ~v_ksm
            new_age = np.where(aging & (age < 255), age + 1, age).astype(np.uint8)
            old_enough = aging & (age >= 3)
            refill = old_enough & (rmn == 0)
            skip = old_enough & (rmn > 0)
            new_rem = np.where(refill, _SKIP_AGE[age], np.where(skip, rmn - 1, rmn)).astype(np.uint8)
        else:
            new_age, new_rem, skip = age, rmn, np.zeros(vp.size, bool)
        proc = ~skip
        st = np.where(v_has, it["state"][vr], NONE)
        nd = np.where(v_has, it["node"][vr], -1)
        h = snap.hash[vr]
        ksm_page = proc & v_ksm & (st == STABLE) & (nd == v_node)
        fork = proc & v_ksm & ~ksm_page
        nonksm = proc & ~v_ksm
        gate = v_has & it["has"][vr] & (it["sum"][vr] == h)
        first = nonksm & ~v_has
        vol = nonksm & v_has & ~gate
        zero_m = nonksm & gate & K.use_zero_pages & snap.zero[vr]
        cand = nonksm & gate & ~zero_m

        # ---- C. items touched with remove_rmap_item_from_tree: skipped or handled visits, and frees
        t_vis = v_has & ~ksm_page  # visit touches
        free_rows_pos = np.flatnonzero(rit & ~vis)
        free_rows_tpos = next_stop[free_rows_pos] if free_rows_pos.size else free_rows_pos
        okr = free_rows_tpos < P
        free_rows_pos, free_rows_tpos = free_rows_pos[okr], free_rows_tpos[okr]
        free_rows = row[free_rows_pos]
        # orphans of the mms ahead of the cursor
        o_mm = (self.o_key >> _KEY_SHIFT).astype(np.int64)
        o_page = self.o_key & _PAGE_MASK
        slot_of = np.full(len(self.inp.mms) + 1, -1, np.int64)
        slot_of[rem_arr] = np.arange(S)
        o_s = slot_of[o_mm] if o_mm.size else o_mm
        o_sel = np.flatnonzero(o_s >= 0)
        o_tpos = np.full(o_sel.size, P, np.int64)
        if o_sel.size:
            s_ = o_s[o_sel]
            ex = np.array([rem[int(x)] in self.exited for x in s_], dtype=bool)
            o_tpos[ex] = (seg_start[s_] + L[s_] - 1)[ex]
            ne = ~ex
            if ne.any():
                keys = snap.keys()
                j = np.searchsorted(keys, self.o_key[o_sel[ne]]) - lo[s_[ne]]
                first_seg = (s_[ne] == 0) & (o_page[o_sel[ne]] < np.uint64(self.cursor_page))
                pp = seg_start[s_[ne]] + np.maximum(j, 0)
                tp = np.where(pp < P, next_stop[np.minimum(pp, max(P - 1, 0))] if P else P, P)
                tp = np.where(first_seg, P, tp)
                o_tpos[ne] = tp
            o_tpos = np.where(o_tpos < P, o_tpos, P)
        o_hit = o_sel[o_tpos < P]
        o_hpos = o_tpos[o_tpos < P]
        # touch table: removal touches (visits, row frees, orphan frees)
        tv_pos = vp[t_vis]
        tv_row = vr[t_vis]
        touch_pos = np.concatenate([tv_pos, free_rows_tpos, o_hpos])
        touch_sub = np.concatenate([np.ones(tv_pos.size, np.int64), np.zeros(free_rows_tpos.size + o_hpos.size, np.int64)])
        touch_state = np.concatenate([it["state"][tv_row], it["state"][free_rows], self.orph["state"][o_hit]])
        touch_node = np.concatenate([it["node"][tv_row], it["node"][free_rows], self.orph["node"][o_hit]])
        touch_mm = np.concatenate([snap.mm[tv_row].astype(np.int64), snap.mm[free_rows].astype(np.int64), o_mm[o_hit]])
        touch_row = np.concatenate([tv_row, free_rows, np.full(o_hit.size, -1, np.int64)])
        touch_orph = np.concatenate([np.full(tv_row.size + free_rows.size, -1, np.int64), o_hit])
        ev.add(touch_pos[touch_state == UNSTABLE], C_UNSHARED, -1)
        stab = touch_state == STABLE
        s_node = touch_node[stab]
        s_stale = ent_map[self.node_ent.a[s_node]] == 0 if s_node.size else np.zeros(0, bool)
        s_plain = self.node_chain.a[s_node] < 0 if s_node.size else np.zeros(0, bool)
        stab_idx = np.flatnonzero(stab)
        live_leave = stab_idx[~s_stale]
        n_leave = np.bincount(touch_node[live_leave], minlength=self.node_key.n) if live_leave.size else np.zeros(self.node_key.n, np.int64)
        stale_plain_touch = stab_idx[s_stale & s_plain]

        # ---- D. content groups of the candidates: closed form, or event by event
        cpos = vp[cand]
        crow = vr[cand]
        ckey = h[cand]
        order = np.lexsort((cpos, ckey))
        cpos, crow, ckey = cpos[order], crow[order], ckey[order]
        gstart = np.flatnonzero(np.r_[True, ckey[1:] != ckey[:-1]]) if ckey.size else np.empty(0, np.int64)
        gkey = ckey[gstart]
        gk = np.diff(np.r_[gstart, ckey.size])
        G = gkey.size
        chain_keys = np.fromiter(self.chains.keys(), np.uint64, len(self.chains))
        fork_keys = np.unique(h[fork])
        plain_keys = np.fromiter(self.plain.keys(), np.uint64, len(self.plain))
        plain_nodes = np.fromiter(self.plain.values(), np.int64, len(self.plain))
        po = np.argsort(plain_keys)
        plain_keys, plain_nodes = plain_keys[po], plain_nodes[po]
        gnode = np.full(G, -1, np.int64)
        if plain_keys.size and G:
            q = np.minimum(np.searchsorted(plain_keys, gkey), plain_keys.size - 1)
            hitk = plain_keys[q] == gkey
            gnode[hitk] = plain_nodes[q[hitk]]
        g_live = gnode >= 0
        if g_live.any():
            g_live[g_live] = ent_map[self.node_ent.a[gnode[g_live]]] > 0
        g_L0 = np.where(g_live, self.node_len.a[np.maximum(gnode, 0)], 0)
        g_leave = np.where(g_live, n_leave[np.maximum(gnode, 0)] if n_leave.size else 0, 0)
        occ_keys = np.fromiter(self.occupant.keys(), np.uint64, len(self.occupant))
        occ_rows = np.fromiter(self.occupant.values(), np.int64, len(self.occupant))
        oo = np.argsort(occ_keys)
        occ_keys, occ_rows = occ_keys[oo], occ_rows[oo]
        gocc = np.full(G, -1, np.int64)
        if occ_keys.size and G:
            q = np.minimum(np.searchsorted(occ_keys, gkey), occ_keys.size - 1)
            hitk = occ_keys[q] == gkey
            gocc[hitk] = occ_rows[q[hitk]]
        has_occ = gocc >= 0
        multi = ent_map[phys[crow]] > 1
        thp = snap.thp[crow]
        g_multi = np.add.reduceat(multi.astype(np.int64), gstart) > 0 if G else np.zeros(0, bool)
        g_thp = np.add.reduceat(thp.astype(np.int64), gstart) > 0 if G else np.zeros(0, bool)
        if has_occ.any():
            orow = gocc[has_occ]
            g_multi[has_occ] |= ent_map[phys[orow]] > 1
            g_thp[has_occ] |= snap.thp[orow]
        g_m = gk + has_occ
        case_a = g_live & (g_L0 >= 1) & (g_L0 - g_leave >= 1) & (g_L0 + gk <= M)
        no_node = gnode < 0
        if (~no_node).any():
            no_node[~no_node] = ~g_live[~no_node]  # a stale plain node counts as absent
        case_b = no_node & (g_m <= M)
        simple = ~np.isin(gkey, chain_keys) & ~np.isin(gkey, fork_keys) & ~g_multi & ~g_thp & (case_a | case_b)
        complex_keys = np.unique(np.concatenate([gkey[~simple], chain_keys, fork_keys]))
        loop_vis = np.isin(h, complex_keys) & ~ksm_page  # visits replayed event by event
        node_is_complex = np.zeros(self.node_key.n, bool)
        if self.node_key.n and complex_keys.size:
            node_is_complex = np.isin(self.node_key.a[: self.node_key.n], complex_keys)

        # ---- E. closed-form groups
        upd: dict[str, Any] = {}  # row -> new item fields, applied at commit
        simple_vis = ~loop_vis
        sv = np.flatnonzero(simple_vis)
        # age/rem for every non-loop visit; items of skipped/handled visits leave their tree
        upd["age_rows"], upd["age"] = vr[sv], new_age[sv]
        upd["rem"] = new_rem[sv]
        touched_sv = sv[t_vis[sv]]
        upd["none_rows"] = vr[touched_sv]
        ev.add_path(vp[sv[skip[sv]]], P_SKIP)
        ev.add_path(vp[sv[ksm_page[sv]]], P_KSM)
        fv = sv[(first | vol)[sv]]
        ev.add_path(vp[sv[first[sv]]], P_FIRST)
        ev.add_path(vp[sv[vol[sv]]], P_VOL)
        upd["sum_rows"], upd["sum"] = vr[fv], h[fv]
        zv = sv[zero_m[sv]]
        upd["zero_rows"] = vr[zv]
        ev.add_path(vp[zv], P_ZERO)
        ev.add(vp[zv], C_ZERO, 1)
        # frames freed by zero merges: the last mapper of an entity in position order
        if zv.size:
            ze, zp = v_ent[zv], vp[zv]
            o_ = np.lexsort((zp, ze))
            ze, zp = ze[o_], zp[o_]
            startz = np.r_[True, ze[1:] != ze[:-1]]
            rank = np.arange(ze.size) - np.maximum.accumulate(np.where(startz, np.arange(ze.size), 0)) + 1
            ev.add(zp[ent_map[ze] - rank == 0], C_FRAMES, -1)
        # candidates of simple groups
        gsimple = np.flatnonzero(simple)
        join_node_parts: list[I64] = []
        join_pos_parts: list[I64] = []
        join_mm_parts: list[I64] = []
        join_order_parts: list[I64] = []
        set_rows_parts: list[I64] = []
        set_state_parts: list[I64] = []
        set_node_parts: list[I64] = []
        set_phys_rows: list[I64] = []
        set_phys_vals: list[I64] = []
        new_nodes_key: list[int] = []
        new_nodes_ent: list[int] = []
        new_occ: dict[int, int] = {}
        del_occ: list[int] = []
        base_node = self.node_key.n
        walk_simple = cpos[np.isin(ckey, gkey[gsimple])] if G else np.empty(0, np.int64)
        # case A: every candidate joins the existing KSM page
        ga = gsimple[case_a[gsimple]]
        if ga.size:
            idx = np.concatenate([np.arange(gstart[g], gstart[g] + gk[g]) for g in ga])
            nodes = np.repeat(gnode[ga], gk[ga])
            join_node_parts.append(nodes)
            join_pos_parts.append(cpos[idx])
            join_mm_parts.append(snap.mm[crow[idx]].astype(np.int64))
            join_order_parts.append(np.ones(idx.size, np.int64))
            set_rows_parts.append(crow[idx])
            set_state_parts.append(np.full(idx.size, STABLE, np.int64))
            set_node_parts.append(nodes)
            set_phys_rows.append(crow[idx])
            set_phys_vals.append(self.node_ent.a[nodes])
            ev.add(cpos[idx], C_FRAMES, -1)
            ev.add_path(cpos[idx], P_MERGE)
        # case B: pair (+ joiners), or a lone candidate into the unstable tree
        gb = gsimple[~case_a[gsimple]]
        for g in gb.tolist():
            a0, k_ = int(gstart[g]), int(gk[g])
            rows_g = crow[a0 : a0 + k_]
            pos_g = cpos[a0 : a0 + k_]
            key = int(gkey[g])
            u = int(gocc[g])
            if u < 0 and k_ == 1:
                new_occ[key] = int(rows_g[0])
                set_rows_parts.append(rows_g)
                set_state_parts.append(np.array([UNSTABLE], np.int64))
                set_node_parts.append(np.array([-1], np.int64))
                ev.add(pos_g, C_UNSHARED, 1)
                ev.add_path(pos_g, P_UNST)
                continue
            if u >= 0:
                tree_row, tree_pos, cur = u, int(pos_g[0]), 0
                del_occ.append(key)
                pair_pos = int(pos_g[0])
            else:
                tree_row, cur = int(rows_g[0]), 1
                pair_pos = int(pos_g[1])
                ev.add(pos_g[:1], C_UNSHARED, 1)  # inserted, then found by the second one
                ev.add_path(pos_g[:1], P_UNST)
            nid = base_node + len(new_nodes_key)
            ent = int(phys[rows_g[cur]])
            new_nodes_key.append(key)
            new_nodes_ent.append(ent)
            ev.add([pair_pos], C_UNSHARED, -1)
            ev.add([pair_pos], C_NODES, 1)
            ev.add([pair_pos], C_KSMPAGES, 1)
            members = np.r_[tree_row, rows_g[cur:]]
            mpos = np.r_[pair_pos, pos_g[cur:]]
            join_node_parts.append(np.full(members.size, nid, np.int64))
            join_pos_parts.append(mpos.astype(np.int64))
            join_mm_parts.append(snap.mm[members].astype(np.int64))
            join_order_parts.append(np.r_[1, np.full(members.size - 1, 2, np.int64)])
            set_rows_parts.append(members)
            set_state_parts.append(np.full(members.size, STABLE, np.int64))
            set_node_parts.append(np.full(members.size, nid, np.int64))
            others = np.r_[tree_row, rows_g[cur + 1 :]]
            opos = np.r_[pair_pos, pos_g[cur + 1 :]]
            set_phys_rows.append(others)
            set_phys_vals.append(np.full(others.size, ent, np.int64))
            ev.add(opos, C_FRAMES, -1)
            ev.add_path(pos_g[cur:], P_MERGE)
        # reserve the ids of the closed-form groups' new nodes before the event loop adds its own
        nn = len(new_nodes_key)
        if nn:
            grows = (self.node_key, self.node_ent, self.node_len, self.node_chain, self.node_alive)
            for g in grows:
                g.ensure(base_node + nn)
            self.node_key.a[base_node : base_node + nn] = np.array(new_nodes_key, np.uint64)
            self.node_ent.a[base_node : base_node + nn] = np.array(new_nodes_ent, np.int64)
            self.node_len.a[base_node : base_node + nn] = 0
            self.node_chain.a[base_node : base_node + nn] = -1
            self.node_alive.a[base_node : base_node + nn] = True
            undo.call(lambda: [setattr(g, "n", base_node) for g in grows])
        # items of stale plain nodes, recorded before the event loop may touch them
        stale_nodes = np.fromiter(
            (nd_ for nd_ in self.plain.values() if ent_map[self.node_ent.a[nd_]] == 0), np.int64
        )
        if stale_nodes.size:
            sr = np.flatnonzero((it["state"] == STABLE) & np.isin(it["node"], stale_nodes))
            so_ = np.flatnonzero((self.orph["state"] == STABLE) & np.isin(self.orph["node"], stale_nodes))
            st_rows_nodes, st_orph_nodes = it["node"][sr], self.orph["node"][so_]
        else:
            sr = so_ = np.empty(0, np.int64)
            st_rows_nodes = st_orph_nodes = np.empty(0, np.int64)
        # ---- F. the event-by-event part (chains, fork-shared pages, THP, full nodes)
        loop = _Loop(self, undo, ev, snap, vp, vr, loop_vis, skip, v_has, age, rmn, h, node_is_complex,
                     touch_pos, touch_sub, touch_state, touch_node, touch_mm, touch_row, touch_orph,
                     walk_simple, pos_mm, starts_scan)
        loop.run()
        # ---- G. shared/sharing of closed-form nodes: per node, in position order
        leave_simple = live_leave[~node_is_complex[touch_node[live_leave]]] if live_leave.size else live_leave
        all_nodes = np.concatenate(join_node_parts + [touch_node[leave_simple]])
        all_pos = np.concatenate(join_pos_parts + [touch_pos[leave_simple]])
        all_mm = np.concatenate(join_mm_parts + [touch_mm[leave_simple]])
        all_ord = np.concatenate(join_order_parts + [touch_sub[leave_simple] - 2])  # leaves first
        all_d = np.concatenate([np.ones(sum(x.size for x in join_node_parts), np.int64),
                                -np.ones(leave_simple.size, np.int64)])
        node_len_new = np.zeros(0, np.int64)
        n_new = len(new_nodes_key)
        if all_nodes.size:
            o_ = np.lexsort((all_ord, all_pos, all_nodes))
            nds, ps, ds, mms = all_nodes[o_], all_pos[o_], all_d[o_], all_mm[o_]
            L0 = np.where(nds < base_node, self.node_len.a[np.minimum(nds, max(self.node_len.n - 1, 0))], 0)
            startn = np.r_[True, nds[1:] != nds[:-1]]
            cs = np.cumsum(ds)
            seg_base = np.maximum.accumulate(np.where(startn, np.arange(nds.size), 0))
            before_cs = np.where(startn, 0, cs - ds - np.where(seg_base > 0, cs[seg_base - 1], 0))
            # running length before/after each event
            grp_first_cs = np.where(seg_base > 0, cs[seg_base - 1], 0)
            len_after = L0 + (cs - grp_first_cs)
            len_before = len_after - ds
            del before_cs
            sh = (len_after > 0).astype(np.int64) - (len_before > 0).astype(np.int64)
            sg = (len_after - (len_after > 0)) - (len_before - (len_before > 0))
            ev.add(ps, C_SHARED, sh)
            ev.add(ps, C_SHARING, sg)
            lastn = np.r_[nds[1:] != nds[:-1], True]
            fin_nodes, fin_len = nds[lastn], len_after[lastn]
            upd["node_len"] = (fin_nodes, fin_len)
            upd["merging"] = (mms, ds)
        else:
            upd["node_len"] = (np.empty(0, np.int64), np.empty(0, np.int64))
            upd["merging"] = (np.empty(0, np.int64), np.empty(0, np.int64))
        del n_new

        # ---- H. stale plain nodes: removed by the first walk or the first touch of an item
        first_walk = min(int(walk_simple.min()) if walk_simple.size else P, loop.first_walk)
        rm_nodes: list[int] = []
        if stale_nodes.size:
            ft = np.full(stale_nodes.size, P, np.int64)
            if stale_plain_touch.size:
                tn = touch_node[stale_plain_touch]
                tp = touch_pos[stale_plain_touch]
                so = np.argsort(stale_nodes)
                q = np.searchsorted(stale_nodes[so], tn)
                np.minimum.at(ft, so[np.minimum(q, so.size - 1)], tp)
            rmpos = np.minimum(ft, first_walk)
            ok = rmpos < P
            for nd_, p_ in zip(stale_nodes[ok].tolist(), rmpos[ok].tolist(), strict=True):
                ln = int(self.node_len.a[nd_])
                if ln > 0:
                    ev.add([p_], C_SHARED, -1)
                    ev.add([p_], C_SHARING, -(ln - 1))
                ev.add([p_], C_NODES, -1)
                rm_nodes.append(nd_)
        rm_arr = np.asarray(rm_nodes, np.int64)
        rm_rows = sr[np.isin(st_rows_nodes, rm_arr)]
        rm_orph = so_[np.isin(st_orph_nodes, rm_arr)]
        rm_mms = np.concatenate([snap.mm[rm_rows].astype(np.int64), (self.o_key[rm_orph] >> _KEY_SHIFT).astype(np.int64)])

        # ---- I. new and freed items
        new_item_pos = vp[~v_has]
        ev.add(new_item_pos, C_RMAP, 1)
        free_pos = np.concatenate([free_rows_tpos, o_hpos])
        ev.add(free_pos, C_RMAP, -1)

        # ---- J. batches: processed visits (with the flips the event loop found)
        processed = np.zeros(P, bool)
        processed[vp[proc]] = True
        skipped_pos = np.zeros(P, bool)
        skipped_pos[vp[skip]] = True
        if loop.flips:
            fl = np.asarray(loop.flips, np.int64)
            processed[fl] = True
            skipped_pos[fl] = False
        proc_before = np.cumsum(processed) - processed
        total_proc = int(processed.sum())
        scan_end = limit is None
        nb = total_proc // pts + 1 if scan_end else max(1, (total_proc + pts - 1) // pts)
        bpos = np.minimum(proc_before // pts, nb - 1)
        epos, eslot, eval_ = ev.counters()
        delta = np.zeros((nb, N_COUNTERS), np.int64)
        if epos.size:
            np.add.at(delta, (bpos[epos], eslot), eval_)
        scanned_b = np.bincount(bpos[processed], minlength=nb)
        skipped_b = np.bincount(bpos[skipped_pos], minlength=nb)
        ppos, ppath = ev.paths()
        paths_b = np.zeros((nb, len(PATHS)), np.int64)
        if ppos.size:
            np.add.at(paths_b, (bpos[ppos], ppath), 1)
        costs = np.array(self.cost.path_costs(self.tree_pages_for_cost), np.int64)
        cpu_b = self.cost.batch_overhead_ns + paths_b @ costs
        if starts_scan:
            cpu_b[0] += self.cost.scan_start_ns
        sleep = sleep_ns(K.sleep_ms, K.hz) + self.cost.wake_latency_ns
        times = t0 + np.r_[0, np.cumsum(cpu_b + sleep)[:-1]]
        return {
            "undo": undo, "ev": ev, "upd": upd, "P": P, "P_full": P_full, "row": row, "pos_mm": pos_mm,
            "vp": vp, "vr": vr, "loop_vis": loop_vis, "skip": skip, "proc_before": proc_before,
            "nb": nb, "delta": delta, "scanned_b": scanned_b, "skipped_b": skipped_b, "paths_b": paths_b,
            "cpu_b": cpu_b, "times": times, "scan_end": scan_end, "set_rows": set_rows_parts,
            "set_state": set_state_parts, "set_node": set_node_parts, "set_phys_rows": set_phys_rows,
            "set_phys_vals": set_phys_vals, "new_nodes_key": new_nodes_key, "new_nodes_ent": new_nodes_ent, "base_node": base_node,
            "new_occ": new_occ, "del_occ": del_occ, "rm_nodes": rm_nodes, "rm_rows": rm_rows, "rm_orph": rm_orph,
            "rm_mms": rm_mms, "free_rows": free_rows,
            "o_hit": o_hit, "new_item_rows": vr[~v_has], "loop": loop, "rem": rem, "is_end": is_end,
            "processed": processed,
        }

    def _epoch(self, t0: int, starts_scan: bool, boundary_ns: int | None) -> _Epoch:
        """Run one epoch from the cursor and commit it; cut it before ``boundary_ns``."""
        plan = self._epoch_pass(t0, starts_scan, None)
        if boundary_ns is not None:
            late = np.flatnonzero(plan["times"] >= boundary_ns)
            late = late[late >= 1]
            if late.size:
                b_star = int(late[0])
                plan["undo"].rollback()
                limit = int(np.searchsorted(plan["proc_before"], b_star * self.pages_to_scan, side="left"))
                plan = self._epoch_pass(t0, starts_scan, limit)
        return self._commit(plan)

    def _commit(self, plan: dict[str, Any]) -> _Epoch:
        snap = self.snap
        assert snap is not None
        it = self.it
        upd = plan["upd"]
        ent_map = self.ent_map.a
        # stale plain nodes removed in this epoch (before new nodes may take their key)
        rm = np.asarray(plan["rm_nodes"], np.int64)
        if rm.size:
            for nd in rm.tolist():
                self.node_alive.a[nd] = False
                ent = int(self.node_ent.a[nd])
                if self.ent_node.a[ent] == nd:
                    self.ent_node.a[ent] = -1
                key = int(self.node_key.a[nd])
                if self.plain.get(key) == nd:
                    del self.plain[key]
            mr, mo = plan["rm_rows"], plan["rm_orph"]
            np.add.at(self.mm_merging, plan["rm_mms"], -1)
            on = (it["state"][mr] == STABLE) & np.isin(it["node"][mr], rm)
            it["state"][mr[on]] = NONE
            it["node"][mr[on]] = -1
            oo = (self.orph["state"][mo] == STABLE) & np.isin(self.orph["node"][mo], rm)
            self.orph["state"][mo[oo]] = NONE
            self.orph["node"][mo[oo]] = -1
            self.node_len.a[rm] = 0
        # closed-form results
        it["age"][upd["age_rows"]] = upd["age"]
        it["rem"][upd["age_rows"]] = upd["rem"]
        it["state"][upd["none_rows"]] = NONE
        it["node"][upd["none_rows"]] = -1
        it["sum"][upd["sum_rows"]] = upd["sum"]
        it["has"][upd["sum_rows"]] = True
        zr = upd["zero_rows"]
        if zr.size:
            np.add.at(ent_map, self.phys[zr], -1)
            np.add.at(self.mm_zero, snap.mm[zr].astype(np.int64), 1)
            self.phys[zr] = ZERO
        nn = len(plan["new_nodes_key"])
        if nn:
            base = plan["base_node"]
            ents = np.array(plan["new_nodes_ent"], np.int64)
            self.ent_node.a[ents] = np.arange(base, base + nn)
            for i, key in enumerate(plan["new_nodes_key"]):
                self.plain[int(key)] = base + i
        if plan["set_rows"]:
            rows = np.concatenate(plan["set_rows"])
            it["state"][rows] = np.concatenate(plan["set_state"])
            it["node"][rows] = np.concatenate(plan["set_node"])
        if plan["set_phys_rows"]:
            rows = np.concatenate(plan["set_phys_rows"])
            vals = np.concatenate(plan["set_phys_vals"])
            np.add.at(ent_map, self.phys[rows], -1)
            np.add.at(ent_map, vals, 1)
            self.phys[rows] = vals
        nodes, lens = upd["node_len"]
        if nodes.size:
            self.node_len.a[nodes] = lens
        mms, ds = upd["merging"]
        if mms.size:
            np.add.at(self.mm_merging, mms, ds)
        for key in plan["del_occ"]:
            self.occupant.pop(int(key), None)
        self.occupant.update(plan["new_occ"])
        # items: created and freed
        nrows = plan["new_item_rows"]
        self.it_exists[nrows] = True
        np.add.at(self.mm_rmap, snap.mm[nrows].astype(np.int64), 1)
        fr = plan["free_rows"]
        if fr.size:
            np.add.at(self.mm_rmap, snap.mm[fr].astype(np.int64), -1)
            self.it_exists[fr] = False
            for f, (_dt, fill) in ITEM_FIELDS.items():
                it[f][fr] = fill
        oh = plan["o_hit"]
        if oh.size:
            np.add.at(self.mm_rmap, (self.o_key[oh] >> _KEY_SHIFT).astype(np.int64), -1)
            keep = np.ones(self.o_key.size, bool)
            keep[oh] = False
            self.o_key = self.o_key[keep]
            self.orph = {f: v[keep] for f, v in self.orph.items()}
        # counters, paths, cpu
        delta = plan["delta"]
        nb = plan["nb"]
        base_c = self.c.copy()
        cum = np.empty((nb, N_COUNTERS + 2), np.int64)
        cum[:, :N_COUNTERS] = base_c + np.cumsum(delta, axis=0)
        cum[:, N_COUNTERS] = self.scanned + np.cumsum(plan["scanned_b"])
        cum[:, N_COUNTERS + 1] = self.skipped + np.cumsum(plan["skipped_b"])
        self.c = cum[-1, :N_COUNTERS].copy()
        self.scanned = int(cum[-1, N_COUNTERS])
        self.skipped = int(cum[-1, N_COUNTERS + 1])
        costs = np.array(self.cost.path_costs(self.tree_pages_for_cost), np.int64)
        pb = plan["paths_b"].sum(axis=0)
        self.path_visits += pb
        self.path_cpu_ns += pb * costs
        self.cpu_ns += int(plan["cpu_b"].sum())
        # slots: ENDs passed (exited mms torn down, mms without mergeable mappings dropped)
        is_end = plan["is_end"]
        pos_mm = plan["pos_mm"]
        for mm in pos_mm[is_end].tolist():
            if mm in self.exited:
                self.slots.remove(mm)
            else:
                i = int(np.searchsorted(snap.mm_present, mm))
                if not bool(snap.mm_mergeable[i]):
                    self.slots.remove(mm)
        if self.visit_log is not None:
            ppos, ppath = plan["ev"].paths()
            o_ = np.argsort(ppos, kind="stable")
            for p_, c_ in zip(ppos[o_].tolist(), ppath[o_].tolist(), strict=True):
                self.visit_log.append((self.seqnr, int(pos_mm[p_]), int(snap.page[int(plan["row"][p_])]), PATHS[c_]))
        if plan["scan_end"]:
            self.cursor = None
        else:
            q = plan["P"] - 1
            self.cursor = int(pos_mm[q])
            self.cursor_page = int(snap.page[int(plan["row"][q])]) + 1
        return _Epoch(batch_times=plan["times"], batch_cpu=plan["cpu_b"], cum=cum, scan_ended=plan["scan_end"])

    # ================================================================== the ksmd loop

    def run(self) -> ReplayResult:
        """Replay the whole trace; return the result."""
        snaps = self.inp.snapshots
        K = len(snaps)
        opts = self.opts
        end_ns = int(opts.duration_s * NS_PER_S) if opts.duration_s is not None else None
        span_ns = snaps[-1].time_ns if K else 0
        grid_ns = int((opts.grid_s if opts.grid_s else (1.0 if span_ns <= 600 * NS_PER_S else span_ns / 600 / NS_PER_S)) * NS_PER_S)
        grid: list[GridRecord] = []
        next_grid = 0
        scans: list[ScanRecord] = []
        scans_after_last: int | None = None
        sleep = sleep_ns(self.k.sleep_ms, self.k.hz) + self.cost.wake_latency_ns
        t = 0
        batches = 0
        scan_start_t = 0
        scan_cpu0 = self.cpu_ns
        scan_batches = 0
        self.progress.start("replay", None)

        def sample(limit: int, inclusive: bool, cum: npt.NDArray[np.int64] | None = None,
                   times: I64 | None = None) -> None:
            nonlocal next_grid
            while next_grid < limit or (inclusive and next_grid == limit):
                if end_ns is not None and next_grid > end_ns:
                    return
                if cum is not None and times is not None:
                    b = int(np.searchsorted(times, next_grid, side="right")) - 1
                    row = cum[b]
                    fs = self.seqnr if b == cum.shape[0] - 1 else self._seq_before
                    grid.append(GridRecord(next_grid / NS_PER_S,
                                           self.counters(row[:N_COUNTERS], int(row[N_COUNTERS]), int(row[N_COUNTERS + 1]), fs),
                                           self.truth(row[:N_COUNTERS])))
                else:
                    grid.append(GridRecord(next_grid / NS_PER_S, self.counters(), self.truth()))
                next_grid += grid_ns

        def apply(k: int) -> None:
            self.now_ns = t
            sample(snaps[k].time_ns if not opts.aligned_to_scans else t, False)
            self._apply_snapshot(k)

        while True:
            if end_ns is not None and t >= end_ns:
                break
            self.now_ns = t
            if not opts.aligned_to_scans:
                while self.next_snap < K and snaps[self.next_snap].time_ns <= t:
                    apply(self.next_snap)
                    self.next_snap += 1
            elif self.next_snap == 0 and K:
                apply(0)
                self.next_snap = 1
            if self.cursor is None and opts.aligned_to_scans:
                while self.next_snap < K:
                    k = self.next_snap
                    due = (opts.snapshot_scans[k] <= self.seqnr + 1) if opts.snapshot_scans is not None else snaps[k].time_ns <= t
                    if not due:
                        break
                    apply(k)
                    self.next_snap += 1
            if not self.slots and self.cursor is None:
                if self.next_snap >= K:
                    break
                t = max(t, snaps[self.next_snap].time_ns)
                if end_ns is not None and t >= end_ns:
                    break
                apply(self.next_snap)
                self.next_snap += 1
                continue
            starts = self.cursor is None
            if starts:
                self.scan_start_ns = t
                self.advisor.start_scan_ns = t
                self.occupant.clear()
                self.cursor = self.slots[0]
                self.cursor_page = 0
                scan_start_t, scan_cpu0, scan_batches = t, self.cpu_ns, 0
            boundary = None
            if not opts.aligned_to_scans and self.next_snap < K:
                boundary = snaps[self.next_snap].time_ns
            if end_ns is not None:
                boundary = end_ns if boundary is None else min(boundary, end_ns)
            pts = self.pages_to_scan
            sample(t, False)
            self._seq_before = self.seqnr
            ep = self._epoch(t, starts, boundary)
            nb = ep.batch_times.size
            batches += nb
            scan_batches += nb
            if ep.scan_ended:
                self.seqnr += 1
            last_t = int(ep.batch_times[-1])
            sample(last_t, True, ep.cum, ep.batch_times)
            if ep.scan_ended:
                end_t = last_t + int(ep.batch_cpu[-1])
                if self.k.advisor == "scan-time":
                    pages, _, _ = advisor_step(
                        self.advisor, pages_to_scan=self.pages_to_scan, now_ns=end_t, ksmd_cpu_ns=self.cpu_ns,
                        target_scan_time_s=self.k.advisor_target_scan_time_s, max_cpu=self.k.advisor_max_cpu,
                        max_pages=self.k.advisor_max_pages_to_scan,
                    )
                    self.pages_to_scan = pages
                self.tree_pages_for_cost = int(self.c[C_UNSHARED])
                scans.append(
                    ScanRecord(
                        full_scans=self.seqnr, t_s=end_t / NS_PER_S, scan_time_s=(end_t - scan_start_t) / NS_PER_S,
                        cpu_s=(self.cpu_ns - scan_cpu0) / NS_PER_S, pages_to_scan=pts, batches=scan_batches,
                        counters=self.counters(), processes=self.processes(), truth=self.truth(),
                    )
                )
                self.progress.advance(1)
                if self.next_snap >= K:
                    scans_after_last = (scans_after_last or 0) + 1
                if end_ns is None and scans_after_last is not None and scans_after_last >= opts.settle_scans:
                    t = end_t
                    break
                if self.seqnr >= opts.max_scans:
                    t = end_t
                    break
            t = last_t + int(ep.batch_cpu[-1]) + sleep
        end = end_ns if end_ns is not None else t
        self.now_ns = end
        if not opts.aligned_to_scans:
            while self.next_snap < K and snaps[self.next_snap].time_ns <= end:
                t = end
                apply(self.next_snap)
                self.next_snap += 1
        sample(end, True)
        self.progress.finish()
        return self._result(end, scans, grid, batches)

    def _result(self, end_ns: int, scans: list[ScanRecord], grid: list[GridRecord], batches: int) -> ReplayResult:
        duration_s = end_ns / NS_PER_S
        truth = self.truth()
        points = sorted([(g.t_s, float(g.truth.saved_frames)) for g in grid]
                        + [(r.t_s, float(r.truth.saved_frames)) for r in scans])
        scan_times = [s.scan_time_s for s in scans]
        cost = CostSummary(
            cpu_s=(self.cpu_ns - self.cpu_start_ns) / NS_PER_S,
            duration_s=duration_s,
            batches=batches,
            full_scans=self.seqnr,
            path_visits={p: int(self.path_visits[i]) for i, p in enumerate(PATHS)},
            path_cpu_s={p: int(self.path_cpu_ns[i]) / NS_PER_S for i, p in enumerate(PATHS)},
            mean_scan_time_s=sum(scan_times) / len(scan_times) if scan_times else None,
            last_scan_time_s=scan_times[-1] if scan_times else None,
            time_to_saving_s=time_to_fraction(points, float(truth.saved_frames)),
        )
        return ReplayResult(
            engine=self.name,
            knobs={**self.k.to_dict(), "cost_profile": self.cost.name},
            provenance={
                "tool_version": tool_version(),
                "trace_hash": self.inp.trace_hash,
                "host": self.inp.host,
                "kernel_release": self.inp.meta.get("kernel_release"),
                "trace_tool_version": self.inp.meta.get("tool_version"),
            },
            page_size=self.page_size,
            duration_s=duration_s,
            scans=scans,
            grid=grid,
            final_counters=self.counters(),
            final_processes=self.processes(),
            final_truth=truth,
            cost=cost,
            snapshot_first_scan=self.snapshot_first_scan,
            snapshot_applied_s=[None if v is None else v / NS_PER_S for v in self.snapshot_applied_ns],
            final_node_members=self._node_members(),
        )

    def _node_members(self) -> list[tuple[int, int, int]]:
        snap = self.snap
        rows = np.flatnonzero(self.it["state"] == STABLE) if snap is not None else np.empty(0, np.int64)
        node = np.concatenate([self.it["node"][rows], self.orph["node"][self.orph["state"] == STABLE]])
        mm = np.concatenate([
            snap.mm[rows].astype(np.int64) if snap is not None else np.empty(0, np.int64),
            (self.o_key[self.orph["state"] == STABLE] >> _KEY_SHIFT).astype(np.int64),
        ])
        if node.size == 0:
            return []
        # number nodes by (content, entity) like the reference does
        keys = self.node_key.a[node]
        ents = self.node_ent.a[node]
        uk = np.unique(np.stack([keys, ents.astype(np.uint64)]), axis=1)
        rank = {(int(a), int(b)): i for i, (a, b) in enumerate(zip(uk[0].tolist(), uk[1].tolist(), strict=True))}
        pairs, counts = np.unique(np.stack([node, mm]), axis=1, return_counts=True)
        out = [(rank[(int(self.node_key.a[n]), int(self.node_ent.a[n]))], int(m), int(c))
               for n, m, c in zip(pairs[0].tolist(), pairs[1].tolist(), counts.tolist(), strict=True)]
        return sorted(out)


class _Loop:
    """The event-by-event part of an epoch: what the closed forms do not cover.

    It replays, in position order and exactly like the reference model, the visits of the
    complex content groups (chains, pages shared by several visited rows, THP, full or
    emptied stable nodes, fork children of KSM pages), every removal touching a node of
    those contents, and the passing stable-tree walks of the closed-form groups when a
    chain would change under them.
    """

    def __init__(self, eng: VectorizedEngine, undo: _Undo, ev: _Events, snap: SnapshotRows, vp: I64, vr: I64,
                 loop_vis: B, skip: B, v_has: B, age: Any, rmn: Any, h: Any, node_is_complex: B,
                 touch_pos: I64, touch_sub: I64, touch_state: Any, touch_node: I64, touch_mm: I64,
                 touch_row: I64, touch_orph: I64, walk_simple: I64, pos_mm: I64, starts_scan: bool) -> None:
        self.e = eng
        self.u = undo
        self.ev = ev
        self.snap = snap
        self.vp, self.vr, self.skip, self.h = vp, vr, skip, h
        self.pos_mm = pos_mm
        self.base_nodes = eng.node_key.n
        self.node_is_complex = node_is_complex
        self.first_walk = 1 << 62
        self.flips: list[int] = []
        self.walks = np.sort(walk_simple)
        loop_rows = set(vr[loop_vis].tolist())
        events: list[tuple[int, int, int, int]] = [(int(vp[i]), 1, 0, int(i)) for i in np.flatnonzero(loop_vis)]
        cx = np.flatnonzero(touch_state == STABLE)
        if cx.size:
            nd = touch_node[cx]
            ok = np.zeros(cx.size, bool)
            ok |= nd >= self.base_nodes
            inb = nd < node_is_complex.size
            ok[inb] |= node_is_complex[nd[inb]]
            for j in cx[ok].tolist():
                r = int(touch_row[j])
                if touch_sub[j] == 1 and r in loop_rows:
                    continue  # handled by the visit itself
                events.append((int(touch_pos[j]), int(touch_sub[j]), 1, j))
        events.sort()
        self.events = events
        self.touch_row, self.touch_orph, self.touch_mm = touch_row, touch_orph, touch_mm
        # items hanging on complex nodes (needed when a stale dup is removed)
        self.node_items: dict[int, set[tuple[int, int, int]]] = {}
        cn = np.flatnonzero(node_is_complex)
        if cn.size:
            rs = np.flatnonzero((eng.it["state"] == STABLE) & np.isin(eng.it["node"], cn))
            for r in rs.tolist():
                self.node_items.setdefault(int(eng.it["node"][r]), set()).add((0, r, int(snap.mm[r])))
            os_ = np.flatnonzero((eng.orph["state"] == STABLE) & np.isin(eng.orph["node"], cn))
            for o in os_.tolist():
                self.node_items.setdefault(int(eng.orph["node"][o]), set()).add(
                    (1, o, int(eng.o_key[o] >> _KEY_SHIFT)))
        self.pending = any(eng._chain_dirty(ch) for ch in eng.chains.values())

    # ---------------------------------------------------------------- helpers
    def _ev(self, p: int, counter: int, v: int) -> None:
        if v:
            self.ev.add([p], counter, v)

    def _complex_node(self, nd: int) -> bool:
        return nd >= self.base_nodes or (nd < self.node_is_complex.size and bool(self.node_is_complex[nd]))

    def _set_item(self, kind: int, idx: int, field: str, v: Any) -> None:
        arr = self.e.it[field] if kind == 0 else self.e.orph[field]
        self.u.set(arr, idx, v)

    def _remove_node(self, nd: int, p: int) -> None:
        e = self.e
        ln = int(e.node_len.a[nd])
        if ln > 0:
            self._ev(p, C_SHARED, -1)
            self._ev(p, C_SHARING, -(ln - 1))
        for kind, idx, mm in list(self.node_items.get(nd, ())):
            self._set_item(kind, idx, "state", NONE)
            self._set_item(kind, idx, "node", -1)
            self.u.set(e.mm_merging, mm, e.mm_merging[mm] - 1)
        self.node_items.pop(nd, None)
        self.u.set(e.node_len.a, nd, 0)
        self.u.set(e.node_alive.a, nd, False)
        self._ev(p, C_NODES, -1)
        ent = int(e.node_ent.a[nd])
        if e.ent_node.a[ent] == nd:
            self.u.set(e.ent_node.a, ent, -1)
        key = int(e.node_key.a[nd])
        if e.node_chain.a[nd] >= 0:
            ch = e.chains[key]
            i = ch.dups.index(nd)
            ch.dups.pop(i)
            self.u.call(lambda ch=ch, i=i, nd=nd: ch.dups.insert(i, nd))
            self._ev(p, C_DUPS, -1)
        elif e.plain.get(key) == nd:
            del e.plain[key]
            self.u.call(lambda key=key, nd=nd: e.plain.__setitem__(key, nd))

    def _leave(self, kind: int, idx: int, mm: int, nd: int, p: int) -> None:
        """remove_rmap_item_from_tree for an item on node ``nd`` (complex nodes only)."""
        e = self.e
        if e._stale(nd):
            if e.node_chain.a[nd] >= 0:
                self._remove_node(nd, p)
            else:
                self._set_item(kind, idx, "state", NONE)  # stale plain node: removed globally
            return
        ln = int(e.node_len.a[nd]) - 1
        self.u.set(e.node_len.a, nd, ln)
        self._ev(p, C_SHARING if ln > 0 else C_SHARED, -1)
        self.u.set(e.mm_merging, mm, e.mm_merging[mm] - 1)
        items = self.node_items.get(nd)
        if items is not None:
            items.discard((kind, idx, mm))
        self._set_item(kind, idx, "state", NONE)
        self._set_item(kind, idx, "node", -1)

    def _remove(self, row: int, mm: int, p: int) -> None:
        e = self.e
        st = int(e.it["state"][row])
        if st == STABLE:
            nd = int(e.it["node"][row])
            if self._complex_node(nd):
                self._leave(0, row, mm, nd, p)
                return
        elif st == UNSTABLE:
            key = int(self.snap.hash[row])
            if e.occupant.get(key) == row:
                del e.occupant[key]
                self.u.call(lambda key=key, row=row: e.occupant.__setitem__(key, row))
        self._set_item(0, row, "state", NONE)
        self._set_item(0, row, "node", -1)

    def _append(self, row: int, mm: int, nd: int, p: int) -> None:
        e = self.e
        ln = int(e.node_len.a[nd]) + 1
        self.u.set(e.node_len.a, nd, ln)
        self._ev(p, C_SHARED if ln == 1 else C_SHARING, 1)
        self.u.set(e.mm_merging, mm, e.mm_merging[mm] + 1)
        self._set_item(0, row, "state", STABLE)
        self._set_item(0, row, "node", nd)
        self.node_items.setdefault(nd, set()).add((0, row, mm))

    def _replace(self, row: int, ent: int, p: int) -> None:
        e = self.e
        mm = int(self.snap.mm[row])
        old = int(e.phys[row])
        if old == ZERO:
            self.u.set(e.mm_zero, mm, e.mm_zero[mm] - 1)
            self._ev(p, C_ZERO, -1)
        else:
            m = int(e.ent_map.a[old]) - 1
            self.u.set(e.ent_map.a, old, m)
            if m == 0:
                self._ev(p, C_FRAMES, -1)
        if ent == ZERO:
            self.u.set(e.mm_zero, mm, e.mm_zero[mm] + 1)
            self._ev(p, C_ZERO, 1)
        else:
            m = int(e.ent_map.a[ent]) + 1
            self.u.set(e.ent_map.a, ent, m)
            if m == 1:
                self._ev(p, C_FRAMES, 1)
        self.u.set(e.phys, row, ent)

    def _thp_block(self, row: int) -> tuple[int, int] | None:
        if not self.snap.thp[row]:
            return None
        blk = (int(self.snap.mm[row]), int(self.snap.page[row]) >> THP_SHIFT)
        return None if blk in self.e.split_thp else blk

    def _split(self, row: int) -> None:
        blk = self._thp_block(row)
        if blk is not None:
            self.e.split_thp.add(blk)
            self.u.call(lambda blk=blk: self.e.split_thp.discard(blk))

    # ---------------------------------------------------------------- chains and walks
    def _chain_visit(self, key: int, prune: bool, p: int) -> int | None:
        e = self.e
        ch = e.chains[key]
        if prune and e._prune_due(ch):
            old = ch.prune_ns
            ch.prune_ns = e.scan_start_ns
            self.u.call(lambda ch=ch, old=old: setattr(ch, "prune_ns", old))
        else:
            prune = False
        found: int | None = None
        for d in list(ch.dups):
            if e._stale(d):
                self._remove_node(d, p)
                continue
            if found is None or (e._cand(d) and (not e._cand(found) or e.node_len.a[d] > e.node_len.a[found])):
                found = d
                if not prune and e._cand(found):
                    break
        if found is not None:
            if len(ch.dups) == 1:
                del e.chains[key]
                self.u.call(lambda key=key, ch=ch: e.chains.__setitem__(key, ch))
                e.plain[key] = found
                self.u.call(lambda key=key: e.plain.pop(key, None))
                self.u.set(e.node_chain.a, found, -1)
                self._ev(p, C_CHAINS, -1)
                self._ev(p, C_DUPS, -1)
            elif ch.dups[0] != found and e._cand(found, 1):
                i = ch.dups.index(found)
                ch.dups.pop(i)
                ch.dups.insert(0, found)
                self.u.call(lambda ch=ch, i=i, f=found: (ch.dups.remove(f), ch.dups.insert(i, f)))
        else:
            del e.chains[key]
            self.u.call(lambda key=key, ch=ch: e.chains.__setitem__(key, ch))
            self._ev(p, C_CHAINS, -1)
        return found

    def _walk(self, p: int, prune: bool, target: int | None) -> int | None:
        self.first_walk = min(self.first_walk, p)
        chosen = None
        for key in list(self.e.chains):
            got = self._chain_visit(key, prune, p)
            if key == target:
                chosen = got
        self.pending = False
        return chosen

    def _passerby_until(self, limit: int) -> None:
        """A closed-form group's walk before position ``limit`` passes by the chains."""
        if not self.pending:
            return
        i = int(np.searchsorted(self.walks, self._lo, side="left"))
        if i < self.walks.size and int(self.walks[i]) < limit:
            w = int(self.walks[i])
            self._walk(w, True, None)
            self._lo = w + 1

    def _refresh(self) -> None:
        self.pending = any(self.e._chain_dirty(ch) for ch in self.e.chains.values())

    def _stable_search(self, key: int, p: int) -> int | None:
        e = self.e
        chosen = self._walk(p, True, key)
        if key in e.chains:
            nd = chosen
        else:
            nd = e.plain.get(key)
            if nd is not None and e._stale(nd):
                nd = None
        return nd if nd is not None and e._cand(nd) else None

    def _stable_insert(self, key: int, ent: int, p: int) -> int:
        e = self.e
        self._walk(p, False, key)
        nid = e.node_key.n
        for g, v in ((e.node_key, key), (e.node_ent, ent), (e.node_len, 0), (e.node_chain, -1), (e.node_alive, True)):
            g.ensure(nid + 1)
            g.a[nid] = v
        self.u.call(lambda nid=nid: [setattr(g, "n", nid) for g in (e.node_key, e.node_ent, e.node_len, e.node_chain, e.node_alive)])
        if key in e.chains:
            ch = e.chains[key]
            ch.dups.insert(0, nid)
            self.u.call(lambda ch=ch, nid=nid: ch.dups.remove(nid))
            self.u.set(e.node_chain.a, nid, 1)
            self._ev(p, C_DUPS, 1)
        else:
            old = e.plain.get(key)
            if old is not None and not e._stale(old):
                ch = _VChain(key=key, prune_ns=e.scan_start_ns, dups=[nid, old])
                e.chains[key] = ch
                self.u.call(lambda key=key: e.chains.pop(key, None))
                del e.plain[key]
                self.u.call(lambda key=key, old=old: e.plain.__setitem__(key, old))
                self.u.set(e.node_chain.a, old, 1)
                self.u.set(e.node_chain.a, nid, 1)
                self._ev(p, C_CHAINS, 1)
                self._ev(p, C_DUPS, 2)
            else:
                prev = e.plain.get(key)
                e.plain[key] = nid
                self.u.call(lambda key=key, prev=prev: e.plain.__setitem__(key, prev) if prev is not None else e.plain.pop(key, None))
        self._ev(p, C_NODES, 1)
        self._ev(p, C_KSMPAGES, 1)
        self.u.set(e.ent_node.a, ent, nid)
        return nid

    # ---------------------------------------------------------------- the events
    def run(self) -> None:
        self._lo = 0
        for p, _sub, kind, x in self.events:
            self._passerby_until(p)
            self._lo = max(self._lo, p)
            if kind == 0:
                self._visit(p, x)
            else:
                self._touch(p, x)
            self._refresh()
        self._passerby_until(1 << 62)

    def _touch(self, p: int, j: int) -> None:
        e = self.e
        r, o, mm = int(self.touch_row[j]), int(self.touch_orph[j]), int(self.touch_mm[j])
        kind, idx = (0, r) if r >= 0 else (1, o)
        arr = e.it if kind == 0 else e.orph
        if int(arr["state"][idx]) != STABLE:
            return
        self._leave(kind, idx, mm, int(arr["node"][idx]), p)

    def _visit(self, p: int, i: int) -> None:
        e = self.e
        K = e.k
        row = int(self.vr[i])
        mm = int(self.pos_mm[p])
        it = e.it
        ent = int(e.phys[row])
        node = int(e.ent_node.a[ent])
        if K.smart_scan and node < 0:
            a = int(it["age"][row])
            if a < 255:
                self.u.set(it["age"], row, a + 1)
            if a >= 3:
                if int(it["rem"][row]) == 0:
                    self.u.set(it["rem"], row, int(_SKIP_AGE[a]))
                else:
                    self.u.set(it["rem"], row, int(it["rem"][row]) - 1)
                    self._remove(row, mm, p)
                    self.ev.add_path([p], P_SKIP)
                    return
        if self.skip[i]:
            self.flips.append(p)
        if node >= 0:
            if int(it["state"][row]) == STABLE and int(it["node"][row]) == node:
                self.ev.add_path([p], P_KSM)
                return
            self._remove(row, mm, p)
            self._append(row, mm, node, p)
            self.ev.add_path([p], P_FORK)
            return
        self._remove(row, mm, p)
        h = int(self.snap.hash[row])
        if not bool(it["has"][row]) or int(it["sum"][row]) != h:
            self.ev.add_path([p], P_FIRST if not bool(e.it_exists[row]) else P_VOL)
            self.u.set(it["sum"], row, np.uint64(h))
            self.u.set(it["has"], row, True)
            return
        if K.use_zero_pages and bool(self.snap.zero[row]):
            self._replace(row, ZERO, p)
            self.ev.add_path([p], P_ZERO)
            return
        kd = self._stable_search(h, p)
        if kd is not None:
            self._split(row)
            self._replace(row, int(e.node_ent.a[kd]), p)
            self._append(row, mm, kd, p)
            self.ev.add_path([p], P_MERGE)
            return
        j = e.occupant.get(h)
        if j is not None:
            if int(e.phys[j]) == int(e.phys[row]):
                self.ev.add_path([p], P_NOMERGE)
                return
            bi, bj = self._thp_block(row), self._thp_block(j)
            if bi is not None and bi == bj:
                e.split_thp.add(bi)
                self.u.call(lambda bi=bi: e.split_thp.discard(bi))
                self.ev.add_path([p], P_NOMERGE)
                return
            self._split(row)
            self._split(j)
            E = int(e.phys[row])
            mmj = int(self.snap.mm[j])
            self._set_item(0, j, "state", NONE)
            del e.occupant[h]
            self.u.call(lambda h=h, j=j: e.occupant.__setitem__(h, j))
            self._ev(p, C_UNSHARED, -1)
            self._replace(j, E, p)
            nid = self._stable_insert(h, E, p)
            self._append(j, mmj, nid, p)
            self._append(row, mm, nid, p)
            self.ev.add_path([p], P_MERGE)
            return
        e.occupant[h] = row
        self.u.call(lambda h=h: e.occupant.pop(h, None))
        self._set_item(0, row, "state", UNSTABLE)
        self._ev(p, C_UNSHARED, 1)
        self.ev.add_path([p], P_UNST)
__all__ = ["VectorizedEngine"]
