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
   candidate goes to the unstable tree (docs/kernel-semantics.md §11);
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

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from planner._progress import NULL_PROGRESS, Progress
from planner.engine.cost import PATHS
from planner.engine.options import MAX_GRID_POINTS, grid_overflow
from planner.engine.result import (
    GridRecord,
    ReplayResult,
    ScanRecord,
    Truth,
    assemble_result,
    global_counters,
    process_counters,
)
from planner.engine.timing import NS_PER_MS, NS_PER_S, AdvisorState, advisor_step, sleep_ns

if TYPE_CHECKING:
    from planner.engine.knobs import KsmKnobs
    from planner.engine.options import ReplayOptions
    from planner.engine.prepare import ReplayInput, SnapshotRows

I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]
U64 = npt.NDArray[np.uint64]

ZERO = -1
NONE, UNSTABLE, STABLE = 0, 1, 2
THP_SHIFT = 9
_KEY_SHIFT = np.uint64(36)
_PAGE_MASK = np.uint64((1 << 36) - 1)
#: skip_age(age) for age 0..255 (mm/ksm.c)
# an epoch visits at most this many pages (cut at a batch start): bounds the working arrays
EPOCH_POSITIONS = 1 << 18
_SKIP_AGE = np.array([1, 1, 1, 1, 2, 2, 4, 4, 4] + [8] * 247, dtype=np.uint8)

# path codes, in the order of cost.PATHS
P_KSM, P_FORK, P_SKIP, P_FIRST, P_VOL, P_UNST, P_MERGE, P_ZERO, P_NOMERGE = range(len(PATHS))
# counters carried as deltas
C_SHARED, C_SHARING, C_UNSHARED, C_RMAP, C_CHAINS, C_DUPS, C_ZERO, C_FRAMES, C_KSMPAGES, C_NODES = (
    range(10)
)
N_COUNTERS = 10

ITEM_FIELDS = {
    "state": (np.int8, NONE),
    "node": (np.int32, -1),
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
            new = np.full(max(n, self.a.size + self.a.size // 4), self.fill, dtype=self.a.dtype)
            new[: self.a.size] = self.a
            self.a = new
        self.n = max(self.n, n)


def _set_n(grows: tuple[_Grow, ...], n: int) -> None:
    """Undo of node allocations: the growable node arrays end at ``n`` again."""
    for g in grows:
        g.n = n


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
    """Counter deltas and path visits attached to positions of an epoch.

    Arrays come from the vectorized part; single events (the event loop) are collected in
    plain lists. :meth:`per_batch` sums them per batch without touching every position.
    """

    def __init__(self) -> None:
        self.parts: list[tuple[I64, int, Any]] = []  # (positions, counter, value: int or array)
        self.pparts: list[tuple[I64, int]] = []  # (positions, path)
        self.one_pos: list[int] = []
        self.one_slot: list[int] = []
        self.one_val: list[int] = []
        self.one_ppos: list[int] = []
        self.one_path: list[int] = []

    def add(self, pos: Any, counter: int, val: Any) -> None:
        p = np.asarray(pos, dtype=np.int64).reshape(-1)
        if p.size == 0:
            return
        v = val if np.isscalar(val) else np.asarray(val, dtype=np.int64).reshape(-1)
        self.parts.append((p, counter, v))

    def one(self, pos: int, counter: int, val: int) -> None:
        self.one_pos.append(pos)
        self.one_slot.append(counter)
        self.one_val.append(val)

    def add_path(self, pos: Any, path: int) -> None:
        p = np.asarray(pos, dtype=np.int64).reshape(-1)
        if p.size:
            self.pparts.append((p, path))

    def one_path_at(self, pos: int, path: int) -> None:
        self.one_ppos.append(pos)
        self.one_path.append(path)

    @staticmethod
    def _counts(pos: I64, bpos: I64) -> I64:
        if pos.size > 1 and np.any(pos[1:] < pos[:-1]):
            pos = np.sort(pos)
        return np.diff(np.searchsorted(pos, bpos))

    @staticmethod
    def _sums(pos: I64, val: I64, bpos: I64) -> I64:
        if pos.size > 1 and np.any(pos[1:] < pos[:-1]):
            o = np.argsort(pos, kind="stable")
            pos, val = pos[o], val[o]
        cs = np.zeros(val.size + 1, np.int64)
        np.cumsum(val, out=cs[1:])
        return np.diff(cs[np.searchsorted(pos, bpos)])

    def per_batch(self, bpos: I64, nb: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """(counter deltas, path visits) per batch; batch b holds positions [bpos[b], bpos[b+1])."""
        delta = np.zeros((nb, N_COUNTERS), np.int64)
        for p, slot, v in self.parts:
            if np.isscalar(v):
                delta[:, slot] += self._counts(p, bpos) * int(v)  # type: ignore[arg-type]
            else:
                delta[:, slot] += self._sums(p, v, bpos)
        paths = np.zeros((nb, len(PATHS)), np.int64)
        for p, path in self.pparts:
            paths[:, path] += self._counts(p, bpos)
        if self.one_pos:
            b = np.searchsorted(bpos, np.asarray(self.one_pos, np.int64), side="right") - 1
            np.add.at(
                delta, (b, np.asarray(self.one_slot, np.int64)), np.asarray(self.one_val, np.int64)
            )
        if self.one_ppos:
            b = np.searchsorted(bpos, np.asarray(self.one_ppos, np.int64), side="right") - 1
            np.add.at(paths, (b, np.asarray(self.one_path, np.int64)), 1)
        return delta, paths

    def paths(self) -> tuple[I64, I64]:
        """All path events (for the debugging visit log)."""
        pos = [p for p, _ in self.pparts] + [np.asarray(self.one_ppos, np.int64)]
        path = [np.full(p.size, c, np.int64) for p, c in self.pparts] + [
            np.asarray(self.one_path, np.int64)
        ]
        return np.concatenate(pos), np.concatenate(path)


class _Masked:
    """Write per-position values to row-aligned arrays (a slice when the rows are contiguous)."""

    def __init__(self, rows: Any, P: int, contiguous: bool) -> None:
        self.rows = rows
        self.P = P
        self.r0 = int(rows(0)) if P else 0
        self.contiguous = contiguous

    def assign(self, target: Any, mask: B, values: Any) -> None:
        if self.contiguous:
            view = target[self.r0 : self.r0 + self.P]
            np.copyto(view, values, where=mask, casting="unsafe")
        else:
            idx = np.flatnonzero(mask)
            target[self.rows(idx)] = values if np.isscalar(values) else values[idx]


@dataclass
class _Epoch:
    """What one epoch did, aggregated per batch (state already committed)."""

    batch_times: I64  # start time of each batch
    batch_cpu: I64  # CPU ns of each batch
    cum: npt.NDArray[
        np.int64
    ]  # (batches, N_COUNTERS + 2): counters after each batch (+scanned, skipped)
    scan_ended: bool


class VectorizedEngine:
    """Replays a :class:`ReplayInput` an epoch (part of a scan under one snapshot) at a time."""

    name = "vectorized"

    def __init__(
        self,
        inp: ReplayInput,
        knobs: KsmKnobs,
        opts: ReplayOptions,
        *,
        progress: Progress = NULL_PROGRESS,
        epoch_positions: int = EPOCH_POSITIONS,
    ) -> None:
        self.inp = inp
        self.epoch_positions = max(1, epoch_positions)
        self.k = knobs
        self.opts = opts
        self.cost = opts.cost
        self.progress = progress
        self.page_size = inp.page_size
        self.M = knobs.max_page_sharing
        n_mm = len(inp.mms)
        self.snap_i = -1
        self.snap: SnapshotRows | None = None
        self.phys = np.empty(0, np.int32)
        self.it_exists = np.empty(0, bool)
        self.it: dict[str, Any] = {f: np.empty(0, dt) for f, (dt, _) in ITEM_FIELDS.items()}
        self.o_key = np.empty(0, np.uint64)  # items whose page is absent from the snapshot
        self.orph: dict[str, Any] = {f: np.empty(0, dt) for f, (dt, _) in ITEM_FIELDS.items()}
        # per physical page (entity): mappers, and its stable node (-1: not a KSM page)
        self.ent_map = _Grow(np.int32, 0)
        self.ent_node = _Grow(np.int32, -1)
        self.node_key = _Grow(np.uint64, 0)
        self.node_ent = _Grow(np.int64, -1)
        self.node_len = _Grow(np.int64, 0)
        self.node_chain = _Grow(np.int64, -1)  # key of its chain, -1 when plain
        self.node_alive = _Grow(np.bool_, False)
        self.chains: dict[int, _VChain] = {}
        # content groups of the current snapshot: sorted distinct hashes, each row's group,
        # the live plain stable node of each content, the unstable-tree entry of each content
        self.gkey = np.empty(0, np.uint64)
        self.gid = np.empty(0, np.int32)
        self.g_node = np.empty(0, np.int32)
        self._g_count = np.zeros(0, np.int32)
        self._g_mark = np.zeros(0, bool)
        self.g_occ_row = np.empty(0, np.int32)
        self.g_occ_scan = np.empty(0, np.int32)
        self.scan_id = 0
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

    def _mappers(self, ents: npt.NDArray[np.integer[Any]], delta: int, mms: I64) -> None:
        zero = ents == ZERO
        if zero.any():
            np.add.at(self.mm_zero, mms[zero], delta)
            self.c[C_ZERO] += delta * int(zero.sum())
        e = ents[~zero]
        if e.size:
            np.add.at(self.ent_map.a, e, np.int32(delta))

    def _apply_snapshot(self, k: int) -> None:
        """The trace's world moves to snapshot ``k``."""
        new = self.inp.snapshots[k]
        old = self.snap
        n = new.n
        phys = np.empty(n, np.int32)
        carry, inh, inh_old, fresh = (
            new.carry_src,
            new.inherit_src,
            new.inherit_old,
            new.fresh_group,
        )
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
        # content groups of the new snapshot; unstable-tree entries of this scan follow their
        # page when its content did not change (else they are dropped); plain nodes by content
        occ_new = np.empty(0, np.int64)
        if old is not None and self.g_occ_scan.size and new.n:
            valid = np.flatnonzero(self.g_occ_scan == self.scan_id)
            if valid.size:
                r_old = self.g_occ_row[valid].astype(np.int64)
                j = self._rows_at(new, old.mm[r_old].astype(np.int64), old.page[r_old])
                j = np.minimum(j, new.n - 1)
                j = j[new.same_content_src[j] == r_old]
                occ_new = j[new.eligible[j] & (phys[j] != ZERO)]
        # the old snapshot's per-content arrays go before the new ones are made (peak memory)
        self.g_occ_row = self.g_occ_scan = self.g_node = self._g_count = np.empty(0, np.int32)
        self._g_mark = np.empty(0, bool)
        gkey, gid = new.groups()
        G = gkey.size
        g_occ_row = np.full(G, -1, np.int32)
        g_occ_scan = np.full(G, -1, np.int32)
        g_occ_row[gid[occ_new]] = occ_new
        g_occ_scan[gid[occ_new]] = self.scan_id
        g_node = np.full(G, -1, np.int32)
        n_nodes = self.node_key.n
        if n_nodes and G:
            plain = np.flatnonzero(self.node_alive.a[:n_nodes] & (self.node_chain.a[:n_nodes] < 0))
            keys = self.node_key.a[plain]
            q = np.minimum(np.searchsorted(gkey, keys), G - 1)
            hit = gkey[q] == keys
            # a live node wins over a stale one of the same content
            live = self.ent_map.a[self.node_ent.a[plain]] > 0
            order = np.lexsort((live, q))
            g_node[q[order][hit[order]]] = plain[order][hit[order]]
        self.gkey, self.gid, self.g_node = gkey, gid, g_node
        self._g_count = np.zeros(G, np.int32)
        self._g_mark = np.zeros(G, bool)
        self.g_occ_row, self.g_occ_scan = g_occ_row, g_occ_scan
        self.phys = phys
        self.snap = new
        self.snap_i = k
        self.frames_without = new.n_frames
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

    @staticmethod
    def _rows_at(snap: SnapshotRows, mm: I64, page: U64) -> I64:
        """Row where (mm, page) is or would be inserted in ``snap`` (rows are sorted by mm,
        then page)."""
        out = np.empty(mm.size, np.int64)
        order = np.argsort(mm, kind="stable")
        ms = mm[order]
        cut = np.flatnonzero(np.r_[True, ms[1:] != ms[:-1], True])
        for a_, b_ in zip(cut[:-1].tolist(), cut[1:].tolist(), strict=True):
            idx = order[a_:b_]
            lo, hi = snap.rows_of(int(ms[a_]))
            if hi == lo:  # absent: the insertion point among the present mms
                i = int(np.searchsorted(snap.mm_present, ms[a_]))
                out[idx] = int(snap.mm_lo[i]) if i < snap.mm_present.size else snap.n
            else:
                out[idx] = lo + np.searchsorted(snap.page[lo:hi], page[idx])
        return out

    def _mm_has_items(self, mm: int) -> bool:
        if self.snap is not None:
            lo, hi = self.snap.rows_of(mm)
            if hi > lo and self.it_exists[lo:hi].any():
                return True
        return bool(((self.o_key >> _KEY_SHIFT) == np.uint64(mm)).any())

    def _remap_items(self, old: SnapshotRows | None, new: SnapshotRows) -> None:
        """Items follow their (mm, page) from the old rows to the new ones, or become orphans."""
        n = new.n
        ex = np.zeros(n, bool)
        it: dict[str, Any] = {}
        orph_keys: list[U64] = []
        orph_fields = []
        if old is not None and old.n:
            # items of the previous rows follow their (mm, page) (prepare linked the rows)
            src = new.key_src
            dst = np.flatnonzero(src >= 0)
            src = src[dst]
            live = self.it_exists[src]
            dst, src = dst[live], src[live]
            ex[dst] = True
            lost = self.it_exists
            lost[src] = False  # the old existence flags are not needed after this
            lost_rows = np.flatnonzero(lost)
            orph_keys.append(
                (old.mm[lost_rows].astype(np.uint64) << _KEY_SHIFT) | old.page[lost_rows]
            )
            orph_fields.append({f: v[lost_rows] for f, v in self.it.items()})
            for f, (dt, fill) in ITEM_FIELDS.items():  # field by field: one old array at a time
                it[f] = np.full(n, fill, dt)
                it[f][dst] = self.it[f][src]
                self.it[f] = np.empty(0, dt)
        else:
            it = {f: np.full(n, fill, dt) for f, (dt, fill) in ITEM_FIELDS.items()}
        if self.o_key.size:
            # items whose page was absent: back when their (mm, page) is present again
            o_mm = (self.o_key >> _KEY_SHIFT).astype(np.int64)
            o_page = self.o_key & _PAGE_MASK
            j = np.minimum(self._rows_at(new, o_mm, o_page), max(n - 1, 0))
            hit = (new.mm[j] == o_mm) & (new.page[j] == o_page) if n else np.zeros(o_mm.size, bool)
            dst = j[hit]
            ex[dst] = True
            for f in ITEM_FIELDS:
                it[f][dst] = self.orph[f][hit]
            orph_keys.append(self.o_key[~hit])
            orph_fields.append({f: v[~hit] for f, v in self.orph.items()})
        if orph_keys:
            keys = np.concatenate(orph_keys)
            order = np.argsort(keys, kind="stable")
            self.o_key = keys[order]
            self.orph = {
                f: np.concatenate([of[f] for of in orph_fields])[order] for f in ITEM_FIELDS
            }
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
                self._cand(d)
                and (not self._cand(found) or self.node_len.a[d] > self.node_len.a[found])
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

    def counters(
        self,
        c: npt.NDArray[np.int64] | None = None,
        scanned: int | None = None,
        skipped: int | None = None,
        full_scans: int | None = None,
    ) -> dict[str, int]:
        """The global counters (now, or from a per-batch vector)."""
        c = self.c if c is None else c
        return global_counters(
            shared=int(c[C_SHARED]),
            sharing=int(c[C_SHARING]),
            unshared=int(c[C_UNSHARED]),
            rmap_items=int(c[C_RMAP]),
            scanned=self.scanned if scanned is None else scanned,
            skipped=self.skipped if skipped is None else skipped,
            full_scans=self.seqnr if full_scans is None else full_scans,
            chains=int(c[C_CHAINS]),
            dups=int(c[C_DUPS]),
            zero_pages=int(c[C_ZERO]),
            page_size=self.page_size,
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
                rmap_items=int(self.mm_rmap[mm]),
                merging=int(self.mm_merging[mm]),
                zero=int(self.mm_zero[mm]),
                page_size=self.page_size,
            )
        return out

    # ================================================================== content groups

    def _gid(self, key: int) -> int:
        """Index of content ``key`` among the current snapshot's contents, or -1."""
        i = int(np.searchsorted(self.gkey, np.uint64(key)))
        return i if i < self.gkey.size and int(self.gkey[i]) == key else -1

    def _plain(self, key: int) -> int | None:
        g = self._gid(key)
        if g < 0:
            return None
        nd = int(self.g_node[g])
        return nd if nd >= 0 else None

    def _occ(self, g: int) -> int | None:
        return int(self.g_occ_row[g]) if g >= 0 and self.g_occ_scan[g] == self.scan_id else None

    # ================================================================== one epoch

    def _window_cut(self, lo: I64, L: I64, seg_start: I64, P_full: int) -> int | None:
        """Where to end an epoch that would visit more than ``epoch_positions`` pages.

        The cut falls on a batch start (like a snapshot boundary's), so the epoch's working
        arrays stay bounded whatever the host's size. ``None`` when the scan's rest fits."""
        W = self.epoch_positions
        pts = self.pages_to_scan
        snap = self.snap
        assert snap is not None
        while P_full > W:
            # the window's rows: each segment's first rows, up to W positions in all
            Lw = np.clip(W - seg_start, 0, L)
            idx = np.repeat(lo - seg_start, Lw) + np.arange(int(Lw.sum()))
            ph = self.phys[idx]
            vis = snap.eligible[idx] & (ph != ZERO)
            if self.k.smart_scan:
                ksm = np.where(vis, self.ent_node.a[np.maximum(ph, 0)], -1) >= 0
                age = self.it["age"][idx]
                proc = vis & ~(vis & ~ksm & (age >= 3) & (self.it["rem"][idx] > 0))
            else:
                proc = vis
            done = np.cumsum(proc)
            full_batches = int(done[-1]) // pts if done.size else 0
            if full_batches >= 1:
                before = done - proc
                return int(np.searchsorted(before, full_batches * pts, side="left"))
            W *= 2
        return None

    def _epoch_pass(self, t0: int, starts_scan: bool, limit: int | None) -> dict[str, Any]:
        """Compute one epoch (functional for the vectorized part; the event loop logs undo)."""
        snap = self.snap
        assert snap is not None
        assert self.cursor is not None
        K = self.k
        M = self.M
        pts = self.pages_to_scan
        ev = _Events()
        undo = _Undo()
        phys = self.phys
        it = self.it
        ent_map, ent_node = self.ent_map.a, self.ent_node.a
        node_ent, node_len = self.node_ent.a, self.node_len.a
        # ---- A. the cursor's path: slots from the cursor, each mm's rows in address order
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
        L = hi - lo
        seg_start = np.cumsum(L) - L
        seg_end = seg_start + L  # the END of a segment sits just before the next one's first visit
        P_full = int(L.sum())
        window_cut = False
        if limit is None and P_full > self.epoch_positions:
            limit = self._window_cut(lo, L, seg_start, P_full)
            window_cut = limit is not None
        P = P_full if limit is None else limit
        Lp = np.clip(P - seg_start, 0, L)  # each segment's positions in this epoch
        P_ev = P + 1 if limit is None else P  # event positions in [0, P_ev): the final END is at P
        nonempty = L > 0
        contiguous = bool(np.all(lo[nonempty][1:] == hi[nonempty][:-1])) if nonempty.any() else True
        if contiguous:
            r0 = int(lo[nonempty][0]) if nonempty.any() else 0
            prow = None

            def take(a: Any) -> Any:
                return a[r0 : r0 + P]

            def rows(pos: Any) -> Any:
                return pos + r0
        else:
            prow = np.repeat(lo - seg_start, Lp) + np.arange(P)

            def take(a: Any) -> Any:
                return a[prow]

            def rows(pos: Any) -> Any:
                return prow[pos]

        rem_arr = np.asarray(rem, np.int64)
        ar = np.arange(P)
        # ---- B. visits: smart-scan skips (tentative: with each page's KSM state at the start)
        ph = take(phys)
        vis = take(snap.eligible) & (ph != ZERO)
        rit = take(self.it_exists)
        en = np.where(vis, ent_node[np.maximum(ph, 0)], -1)
        ksm = en >= 0
        age = take(it["age"])
        rmn = take(it["rem"])
        if K.smart_scan:
            aging = vis & ~ksm
            new_age = np.where(aging & (age < 255), age + 1, age).astype(np.uint8)
            old_enough = aging & (age >= 3)
            skip = old_enough & (rmn > 0)
            new_rem = np.where(
                old_enough & (rmn == 0), _SKIP_AGE[age], np.where(skip, rmn - 1, rmn)
            ).astype(np.uint8)
        else:
            new_age, new_rem, skip = age, rmn, np.zeros(P, bool)
        proc = vis & ~skip
        st = take(it["state"])
        ndl = take(it["node"])
        h = take(snap.hash)
        ksm_page = proc & ksm & (st == STABLE) & (ndl == en)
        fork = proc & ksm & ~ksm_page
        nonksm = proc & ~ksm
        gate = rit & take(it["has"]) & (take(it["sum"]) == h)
        first = nonksm & ~rit
        vol = nonksm & rit & ~gate
        zero_m = nonksm & gate & (take(snap.zero) if K.use_zero_pages else False)
        cand = nonksm & gate & ~zero_m
        # ---- C. items touched with remove_rmap_item_from_tree: skips, handled visits, frees
        seg_end_of = np.repeat(seg_end, Lp)
        stop_idx = np.where(vis, ar, seg_end_of)
        next_stop = np.minimum.accumulate(stop_idx[::-1])[::-1] if P else stop_idx
        t_vis = np.flatnonzero(rit & vis & ~ksm_page)
        fr_pos = np.flatnonzero(rit & ~vis)
        fr_tpos = next_stop[fr_pos]
        okr = fr_tpos < P_ev
        fr_pos, fr_tpos = fr_pos[okr], fr_tpos[okr]
        free_rows = rows(fr_pos)
        o_mm = (self.o_key >> _KEY_SHIFT).astype(np.int64)
        o_page = self.o_key & _PAGE_MASK
        slot_of = np.full(len(self.inp.mms) + 1, -1, np.int64)
        slot_of[rem_arr] = np.arange(S)
        o_s = slot_of[o_mm] if o_mm.size else o_mm
        o_sel = np.flatnonzero(o_s >= 0)
        o_tpos = np.full(o_sel.size, P_ev, np.int64)
        if o_sel.size:
            s_ = o_s[o_sel]
            ex = np.fromiter((rem[int(x)] in self.exited for x in s_), bool, s_.size)
            o_tpos[ex] = seg_end[s_][ex]
            ne = ~ex
            if ne.any():
                j = self._rows_at(snap, o_mm[o_sel[ne]], o_page[o_sel[ne]]) - lo[s_[ne]]
                before = (s_[ne] == 0) & (o_page[o_sel[ne]] < np.uint64(self.cursor_page))
                pp = seg_start[s_[ne]] + np.maximum(j, 0)
                se = seg_end[s_[ne]]
                inside = (pp < se) & (pp < P)
                tp = np.where(inside, next_stop[np.minimum(pp, max(P - 1, 0))] if P else se, se)
                o_tpos[ne] = np.where(before, P_ev, tp)
        okd = o_tpos < P_ev
        o_hit = o_sel[okd]
        o_hpos = o_tpos[okd]
        tv_row = rows(t_vis)
        touch_pos = np.concatenate([t_vis, fr_tpos, o_hpos])
        touch_sub = np.concatenate(
            [np.ones(t_vis.size, np.int64), np.zeros(fr_tpos.size + o_hpos.size, np.int64)]
        )
        touch_state = np.concatenate([st[t_vis], it["state"][free_rows], self.orph["state"][o_hit]])
        touch_node = np.concatenate([ndl[t_vis], it["node"][free_rows], self.orph["node"][o_hit]])
        mm_pos = take(snap.mm).astype(np.int64)
        touch_mm = np.concatenate([mm_pos[t_vis], snap.mm[free_rows].astype(np.int64), o_mm[o_hit]])
        touch_row = np.concatenate([tv_row, free_rows, np.full(o_hit.size, -1, np.int64)])
        touch_orph = np.concatenate([np.full(tv_row.size + free_rows.size, -1, np.int64), o_hit])
        ev.add(touch_pos[touch_state == UNSTABLE], C_UNSHARED, -1)
        stab_idx = np.flatnonzero(touch_state == STABLE)
        s_node = touch_node[stab_idx]
        s_stale = ent_map[node_ent[s_node]] == 0
        s_plain = self.node_chain.a[s_node] < 0
        live_leave = stab_idx[~s_stale]
        n_nodes = self.node_key.n
        leave_nodes, leave_counts = np.unique(touch_node[live_leave], return_counts=True)
        stale_plain_touch = stab_idx[s_stale & s_plain]

        # ---- D. content groups of the candidates: closed form, or event by event
        cpos_all = np.flatnonzero(cand)
        crow_all = rows(cpos_all)
        cg_all = self.gid[crow_all]
        G = self.gkey.size
        # per-group scratch arrays (sized G once per snapshot, cleared after use): an epoch
        # costs its own size, not the snapshot's
        g_count, g_mark = self._g_count, self._g_mark
        np.add.at(g_count, cg_all, np.int32(1))
        multi_c = g_count[cg_all] > 1
        g_count[cg_all] = 0
        single_idx = np.flatnonzero(~multi_c)
        multi_idx = np.flatnonzero(multi_c)
        multi_idx = multi_idx[np.argsort(cg_all[multi_idx], kind="stable")]
        order = np.concatenate([single_idx, multi_idx])
        cpos, crow, cg = cpos_all[order], crow_all[order], cg_all[order]
        ckey = self.gkey[cg]
        gs = np.ones(cg.size, bool)
        if multi_idx.size:
            mi = np.arange(single_idx.size + 1, cg.size)
            gs[mi] = cg[mi] != cg[mi - 1]
        gstart = np.flatnonzero(gs)
        gk = np.diff(np.r_[gstart, cg.size])
        G_ = gstart.size
        gg = cg[gstart]  # content group (snapshot gid) of each candidate group
        gkey = ckey[gstart]
        chain_ids = np.empty(0, np.int64)
        if self.chains:
            ckeys = np.fromiter(self.chains.keys(), np.uint64, len(self.chains))
            q = np.searchsorted(self.gkey, ckeys)
            okq = q < G
            okq[okq] = self.gkey[q[okq]] == ckeys[okq]
            chain_ids = q[okq]
        fork_pos = np.flatnonzero(fork)
        fork_ids = self.gid[rows(fork_pos)]

        def marked(ids: I64, at: I64) -> B:
            """at[i] is one of ids (through the scratch marks, left clear)."""
            g_mark[ids] = True
            out = g_mark[at]
            g_mark[ids] = False
            return out

        gnode = self.g_node[gg]
        g_live = gnode >= 0
        g_live[g_live] = ent_map[node_ent[gnode[g_live]]] > 0
        g_L0 = np.where(g_live, node_len[np.maximum(gnode, 0)], 0)
        lq = np.minimum(np.searchsorted(leave_nodes, gnode), max(leave_nodes.size - 1, 0))
        g_leave = (
            np.where(g_live & (leave_nodes[lq] == gnode), leave_counts[lq], 0)
            if leave_nodes.size
            else 0
        )
        gocc = np.where(self.g_occ_scan[gg] == self.scan_id, self.g_occ_row[gg], -1)
        has_occ = gocc >= 0
        cent = phys[crow]
        thp = snap.thp[crow]
        g_thp = np.add.reduceat(thp.astype(np.int64), gstart) > 0 if G_ else np.zeros(0, bool)
        if has_occ.any():
            g_thp[has_occ] |= snap.thp[gocc[has_occ]]
        plain_ok = ~marked(np.concatenate([chain_ids, fork_ids]), gg) & ~g_thp
        # case A: a live KSM page with room for every candidate -- they all join it
        case_a = plain_ok & g_live & (g_L0 >= 1) & (g_L0 - g_leave >= 1) & (g_L0 + gk <= M)
        # case B: no live KSM page. The tree entry (an occupant from earlier in the scan, or the
        # first candidate) is found by the next candidates; those on the same physical page stop
        # there; the first on another page pairs with it (its page becomes the KSM page) and the
        # rest join. Closed form when that page is private (nobody else turns KSM under it).
        cgrp = np.repeat(np.arange(G_), gk) if G_ else np.empty(0, np.int64)
        crank = np.arange(cgrp.size) - (gstart[cgrp] if G_ else 0)
        c_occ = has_occ[cgrp] if G_ else np.zeros(0, bool)
        tree_ent = np.where(has_occ, phys[np.maximum(gocc, 0)], cent[gstart] if G_ else 0)
        after_tree = c_occ | (crank >= 1)
        big = np.iinfo(np.int64).max
        diff_rank = np.where(after_tree & (cent != (tree_ent[cgrp] if G_ else 0)), crank, big)
        pair_rank = np.minimum.reduceat(diff_rank, gstart) if G_ else np.empty(0, np.int64)
        has_pair = pair_rank < big
        pr = np.where(has_pair, pair_rank, 0)
        cur_private = ent_map[cent[gstart + pr]] == 1 if G_ else np.zeros(0, bool)
        members = 2 + (gk - pr - 1)
        case_b = plain_ok & ~g_live & (~has_pair | (cur_private & (members <= M)))
        simple = case_a | case_b
        complex_ids = np.concatenate([gg[~simple], chain_ids, fork_ids])
        # visits replayed event by event: complex candidates, fork children, and the pages
        # that share a physical page with a complex candidate (it may become KSM under them)
        lc_pos = cpos_all[marked(complex_ids, cg_all)]
        loop_cand = np.zeros(P, bool)
        loop_cand[lc_pos] = True
        loop_vis = loop_cand | fork
        if lc_pos.size:
            lents = np.unique(ph[lc_pos])
            loop_vis |= vis & ~ksm_page & np.isin(ph, lents)
        # complex nodes: dups, and nodes of complex contents -- computed for the nodes this
        # epoch touches (removal touches, and the items of the event loop's rows)
        node_is_complex = np.zeros(n_nodes, bool)
        if n_nodes:
            lv_rows = rows(np.flatnonzero(loop_vis))
            lv_nodes = it["node"][lv_rows][it["state"][lv_rows] == STABLE]
            rel = np.unique(np.concatenate([touch_node[stab_idx], lv_nodes]))
            if rel.size:
                nk = self.node_key.a[rel]
                q = np.minimum(np.searchsorted(self.gkey, nk), max(G - 1, 0))
                isc = self.node_chain.a[rel] >= 0
                if G:
                    isc |= (self.gkey[q] == nk) & marked(complex_ids, q)
                node_is_complex[rel] = isc

        # ---- E. closed-form groups
        upd: dict[str, Any] = {}
        simple_vis = vis & ~loop_vis
        # per-position updates of the closed-form visits, applied at commit (slices when contiguous)
        upd["age_mask"], upd["age"], upd["rem"] = simple_vis, new_age, new_rem
        upd["none_mask"] = simple_vis & rit & ~ksm_page
        ev.add_path(np.flatnonzero(simple_vis & skip), P_SKIP)
        ev.add_path(np.flatnonzero(simple_vis & ksm_page), P_KSM)
        ev.add_path(np.flatnonzero(simple_vis & first), P_FIRST)
        ev.add_path(np.flatnonzero(simple_vis & vol), P_VOL)
        upd["sum_mask"], upd["sum"] = simple_vis & (first | vol), h
        zv = np.flatnonzero(simple_vis & zero_m)
        upd["zero_rows"] = rows(zv)
        ev.add_path(zv, P_ZERO)
        ev.add(zv, C_ZERO, 1)
        if zv.size:
            ze = ph[zv]
            o_ = np.lexsort((zv, ze))
            ze2, zp = ze[o_], zv[o_]
            startz = np.r_[True, ze2[1:] != ze2[:-1]]
            rank = (
                np.arange(ze2.size)
                - np.maximum.accumulate(np.where(startz, np.arange(ze2.size), 0))
                + 1
            )
            ev.add(zp[ent_map[ze2] - rank == 0], C_FRAMES, -1)
        join_node_parts: list[I64] = []
        join_pos_parts: list[I64] = []
        join_mm_parts: list[I64] = []
        join_order_parts: list[I64] = []
        set_rows_parts: list[I64] = []
        set_state_parts: list[I64] = []
        set_node_parts: list[I64] = []
        set_phys_rows: list[I64] = []
        set_phys_vals: list[I64] = []
        occ_new_g: list[I64] = []
        occ_new_rows: list[I64] = []
        occ_del_g: list[I64] = []
        base_node = n_nodes
        c_simple = simple[cgrp] if G_ else np.zeros(0, bool)
        walk_simple = np.sort(cpos[c_simple])
        # entities whose mapper leaves (frames freed at the last one)
        rel_ent: list[npt.NDArray[np.integer[Any]]] = []
        rel_pos: list[I64] = []

        def occupy(idx: I64) -> None:
            """Lone candidates go to the unstable tree."""
            occ_new_g.append(cg[idx])
            occ_new_rows.append(crow[idx])
            set_rows_parts.append(crow[idx])
            set_state_parts.append(np.full(idx.size, UNSTABLE, np.int64))
            set_node_parts.append(np.full(idx.size, -1, np.int64))
            ev.add(cpos[idx], C_UNSHARED, 1)
            ev.add_path(cpos[idx], P_UNST)

        ia = np.flatnonzero(c_simple & case_a[cgrp]) if G_ else np.empty(0, np.int64)
        if ia.size:
            nodes = gnode[cgrp[ia]]
            join_node_parts.append(nodes)
            join_pos_parts.append(cpos[ia])
            join_mm_parts.append(snap.mm[crow[ia]].astype(np.int64))
            join_order_parts.append(np.ones(ia.size, np.int64))
            set_rows_parts.append(crow[ia])
            set_state_parts.append(np.full(ia.size, STABLE, np.int64))
            set_node_parts.append(nodes)
            set_phys_rows.append(crow[ia])
            set_phys_vals.append(node_ent[nodes])
            rel_ent.append(cent[ia])
            rel_pos.append(cpos[ia])
            ev.add_path(cpos[ia], P_MERGE)
        cb = c_simple & case_b[cgrp] if G_ else np.zeros(0, bool)
        c_pr = pair_rank[cgrp] if G_ else np.empty(0, np.int64)
        # the first candidate is the tree entry when there is no occupant
        tree_c = cb & ~c_occ & (crank == 0)
        g_pair_c = has_pair[cgrp] if G_ else np.zeros(0, bool)
        occupy(np.flatnonzero(tree_c & ~g_pair_c))
        # a tree entry that pairs in the same batch: inserted, then taken out by the merge
        ev.add(cpos[tree_c & g_pair_c], C_UNSHARED, 1)
        ev.add_path(cpos[tree_c & g_pair_c], P_UNST)
        # candidates on the tree entry's page, before any pair: same page, no merge
        ev.add_path(cpos[cb & after_tree & (crank < c_pr)], P_NOMERGE)
        pair_groups = np.flatnonzero(case_b & has_pair)
        new_nodes_key = gkey[pair_groups]
        n_pairs = pair_groups.size
        new_ids = base_node + np.arange(n_pairs)
        new_nodes_ent = np.empty(0, np.int64)
        if n_pairs:
            gid_ = np.full(G_, -1, np.int64)
            gid_[pair_groups] = np.arange(n_pairs)
            cur_idx = gstart[pair_groups] + pair_rank[pair_groups]
            pair_pos = cpos[cur_idx]
            ents = cent[cur_idx]
            new_nodes_ent = ents
            occ_p = has_occ[pair_groups]
            tree_rows = np.where(occ_p, gocc[pair_groups], crow[gstart[pair_groups]])
            tree_old = phys[tree_rows]
            occ_del_g.append(gg[pair_groups[occ_p]])
            ev.add(pair_pos, C_UNSHARED, -1)
            ev.add(pair_pos, C_NODES, 1)
            ev.add(pair_pos, C_KSMPAGES, 1)
            jn = (
                np.flatnonzero(cb & has_pair[cgrp] & (crank > c_pr))
                if G_
                else np.empty(0, np.int64)
            )
            jnode = new_ids[gid_[cgrp[jn]]]
            members_rows = np.concatenate([tree_rows, crow[cur_idx], crow[jn]])
            members_pos = np.concatenate([pair_pos, pair_pos, cpos[jn]])
            members_node = np.concatenate([new_ids, new_ids, jnode])
            members_ord = np.concatenate(
                [np.ones(n_pairs, np.int64), np.full(n_pairs + jn.size, 2, np.int64)]
            )
            join_node_parts.append(members_node)
            join_pos_parts.append(members_pos)
            join_mm_parts.append(snap.mm[members_rows].astype(np.int64))
            join_order_parts.append(members_ord)
            set_rows_parts.append(members_rows)
            set_state_parts.append(np.full(members_rows.size, STABLE, np.int64))
            set_node_parts.append(members_node)
            set_phys_rows.append(np.concatenate([tree_rows, crow[jn]]))
            set_phys_vals.append(np.concatenate([ents, ents[gid_[cgrp[jn]]]]))
            rel_ent.extend([tree_old, cent[jn]])
            rel_pos.extend([pair_pos, cpos[jn]])
            ev.add_path(np.concatenate([pair_pos, cpos[jn]]), P_MERGE)
        if rel_ent:
            # a frame is freed when its last mapper moves to the KSM page
            re_, rp_ = np.concatenate(rel_ent), np.concatenate(rel_pos)
            o_ = np.lexsort((rp_, re_))
            re_, rp_ = re_[o_], rp_[o_]
            st_ = np.r_[True, re_[1:] != re_[:-1]]
            rank_ = (
                np.arange(re_.size)
                - np.maximum.accumulate(np.where(st_, np.arange(re_.size), 0))
                + 1
            )
            ev.add(rp_[ent_map[re_] - rank_ == 0], C_FRAMES, -1)
        # reserve the ids of the closed-form groups' new nodes before the event loop adds its own
        if n_pairs:
            grows = (self.node_key, self.node_ent, self.node_len, self.node_chain, self.node_alive)
            for g in grows:
                g.ensure(base_node + n_pairs)
            self.node_key.a[base_node : base_node + n_pairs] = new_nodes_key
            self.node_ent.a[base_node : base_node + n_pairs] = new_nodes_ent
            self.node_len.a[base_node : base_node + n_pairs] = 0
            self.node_chain.a[base_node : base_node + n_pairs] = -1
            self.node_alive.a[base_node : base_node + n_pairs] = True
            undo.call(lambda: _set_n(grows, base_node))
        # stale plain nodes, and their items, before the event loop may touch them
        na = self.node_alive.a[:n_nodes]
        stale_nodes = np.flatnonzero(
            na & (self.node_chain.a[:n_nodes] < 0) & (ent_map[node_ent[:n_nodes]] == 0)
        )
        if stale_nodes.size:
            sr = np.flatnonzero((it["state"] == STABLE) & np.isin(it["node"], stale_nodes))
            so_ = np.flatnonzero(
                (self.orph["state"] == STABLE) & np.isin(self.orph["node"], stale_nodes)
            )
            st_rows_nodes, st_orph_nodes = it["node"][sr], self.orph["node"][so_]
        else:
            sr = so_ = st_rows_nodes = st_orph_nodes = np.empty(0, np.int64)
        # ---- F. the event-by-event part (chains, fork-shared pages, THP, full nodes)
        loop = _Loop(
            self,
            undo,
            ev,
            snap,
            np.flatnonzero(loop_vis),
            rows,
            skip,
            node_is_complex,
            touch_pos,
            touch_sub,
            touch_state,
            touch_node,
            touch_mm,
            touch_row,
            touch_orph,
            walk_simple,
            mm_pos,
        )
        loop.run()
        # ---- G. shared/sharing of closed-form nodes: per node, in position order
        leave_simple = (
            live_leave[~node_is_complex[touch_node[live_leave]]] if live_leave.size else live_leave
        )
        all_nodes = np.concatenate([*join_node_parts, touch_node[leave_simple]])
        if all_nodes.size:
            all_pos = np.concatenate([*join_pos_parts, touch_pos[leave_simple]])
            all_mm = np.concatenate([*join_mm_parts, touch_mm[leave_simple]])
            all_ord = np.concatenate([*join_order_parts, touch_sub[leave_simple] - 2])
            n_j = all_nodes.size - leave_simple.size
            all_d = np.concatenate([np.ones(n_j, np.int64), -np.ones(leave_simple.size, np.int64)])
            o_ = np.lexsort((all_ord, all_pos, all_nodes))
            nds, ps, ds, mms = all_nodes[o_], all_pos[o_], all_d[o_], all_mm[o_]
            L0 = np.where(nds < base_node, node_len[np.minimum(nds, max(n_nodes - 1, 0))], 0)
            startn = np.r_[True, nds[1:] != nds[:-1]]
            cs = np.cumsum(ds)
            seg_base = np.maximum.accumulate(np.where(startn, np.arange(nds.size), 0))
            grp_first_cs = np.where(seg_base > 0, cs[seg_base - 1], 0)
            len_after = L0 + (cs - grp_first_cs)
            len_before = len_after - ds
            sh = (len_after > 0).astype(np.int64) - (len_before > 0).astype(np.int64)
            sg = (len_after - (len_after > 0)) - (len_before - (len_before > 0))
            ev.add(ps, C_SHARED, sh)
            ev.add(ps, C_SHARING, sg)
            lastn = np.r_[nds[1:] != nds[:-1], True]
            upd["node_len"] = (nds[lastn], len_after[lastn])
            upd["merging"] = (mms, ds)
        else:
            upd["node_len"] = (np.empty(0, np.int64), np.empty(0, np.int64))
            upd["merging"] = (np.empty(0, np.int64), np.empty(0, np.int64))
        # ---- H. stale plain nodes: removed by the first walk or the first touch of an item
        first_walk = min(int(walk_simple[0]) if walk_simple.size else P_ev, loop.first_walk)
        rm_nodes = np.empty(0, np.int64)
        if stale_nodes.size:
            ft = np.full(stale_nodes.size, P_ev, np.int64)
            if stale_plain_touch.size:
                q = np.searchsorted(stale_nodes, touch_node[stale_plain_touch])
                np.minimum.at(ft, np.minimum(q, stale_nodes.size - 1), touch_pos[stale_plain_touch])
            rmpos = np.minimum(ft, first_walk)
            ok = rmpos < P_ev
            rm_nodes, rmp = stale_nodes[ok], rmpos[ok]
            ln = node_len[rm_nodes]
            pos_ = ln > 0
            ev.add(rmp[pos_], C_SHARED, -1)
            ev.add(rmp[pos_], C_SHARING, -(ln[pos_] - 1))
            ev.add(rmp, C_NODES, -1)
        rm_rows = sr[np.isin(st_rows_nodes, rm_nodes)]
        rm_orph = so_[np.isin(st_orph_nodes, rm_nodes)]
        rm_mms = np.concatenate(
            [
                snap.mm[rm_rows].astype(np.int64),
                (self.o_key[rm_orph] >> _KEY_SHIFT).astype(np.int64),
            ]
        )
        # ---- I. new and freed items
        new_pos = np.flatnonzero(vis & ~rit)
        ev.add(new_pos, C_RMAP, 1)
        ev.add(np.concatenate([fr_tpos, o_hpos]), C_RMAP, -1)
        # ---- J. batches: processed visits (with the flips the event loop found)
        processed = proc.copy()
        skipped_m = skip.copy()
        if loop.flips:
            fl = np.asarray(loop.flips, np.int64)
            processed[fl] = True
            skipped_m[fl] = False
        proc_before = np.zeros(P + 1, np.int64)
        np.cumsum(processed, out=proc_before[1:])
        total_proc = int(proc_before[P])
        scan_end = limit is None
        nb = total_proc // pts + 1 if scan_end else max(1, -(-total_proc // pts))
        bpos = np.searchsorted(proc_before, np.arange(nb + 1, dtype=np.int64) * pts, side="left")
        bpos[0] = 0
        bpos[nb] = P_ev
        delta, paths_b = ev.per_batch(bpos, nb)
        scanned_b = np.diff(np.minimum(np.arange(nb + 1, dtype=np.int64) * pts, total_proc))
        skipped_b = np.diff(np.searchsorted(np.flatnonzero(skipped_m), bpos))
        costs = np.array(self.cost.path_costs(self.tree_pages_for_cost), np.int64)
        cpu_b = self.cost.batch_overhead_ns + paths_b @ costs
        if starts_scan:
            cpu_b[0] += self.cost.scan_start_ns
        sleep = sleep_ns(K.sleep_ms, K.hz) + self.cost.wake_latency_ns
        times = t0 + np.r_[0, np.cumsum(cpu_b + sleep)[:-1]]
        end_slots = [int(rem_arr[s]) for s in range(S) if seg_end[s] < P_ev]
        return {
            "undo": undo,
            "ev": ev,
            "upd": upd,
            "window_cut": window_cut,
            "P": P,
            "rows": rows,
            "contiguous": contiguous,
            "mm_pos": mm_pos,
            "proc_before": proc_before,
            "nb": nb,
            "delta": delta,
            "scanned_b": scanned_b,
            "skipped_b": skipped_b,
            "paths_b": paths_b,
            "cpu_b": cpu_b,
            "times": times,
            "scan_end": scan_end,
            "set_rows": set_rows_parts,
            "set_state": set_state_parts,
            "set_node": set_node_parts,
            "set_phys_rows": set_phys_rows,
            "set_phys_vals": set_phys_vals,
            "new_nodes_key": new_nodes_key,
            "new_nodes_ent": new_nodes_ent,
            "base_node": base_node,
            "occ_new_g": occ_new_g,
            "occ_new_rows": occ_new_rows,
            "occ_del_g": occ_del_g,
            "rm_nodes": rm_nodes,
            "rm_rows": rm_rows,
            "rm_orph": rm_orph,
            "rm_mms": rm_mms,
            "free_rows": free_rows,
            "o_hit": o_hit,
            "new_item_rows": rows(new_pos),
            "loop": loop,
            "end_slots": end_slots,
        }

    def _epoch(self, t0: int, starts_scan: bool, boundary_ns: int | None) -> _Epoch:
        """Run one epoch from the cursor and commit it; cut it before ``boundary_ns``."""
        plan = self._epoch_pass(t0, starts_scan, None)
        if plan["window_cut"]:
            # the window was cut with each page's skip as at the epoch start; a page the event
            # loop made KSM-related is visited instead of skipped, so end on a batch start again
            pb = plan["proc_before"]
            full = int(pb[-1]) // self.pages_to_scan * self.pages_to_scan
            if full != int(pb[-1]):
                plan["undo"].rollback()
                limit = int(np.searchsorted(pb, full, side="left"))
                plan = self._epoch_pass(t0, starts_scan, limit)
        if boundary_ns is not None:
            late = np.flatnonzero(plan["times"] >= boundary_ns)
            late = late[late >= 1]
            if late.size:
                b_star = int(late[0])
                plan["undo"].rollback()
                limit = int(
                    np.searchsorted(plan["proc_before"], b_star * self.pages_to_scan, side="left")
                )
                plan = self._epoch_pass(t0, starts_scan, limit)
        return self._commit(plan)

    def _commit(self, plan: dict[str, Any]) -> _Epoch:
        snap = self.snap
        assert snap is not None
        it = self.it
        upd = plan["upd"]
        ent_map = self.ent_map.a
        # stale plain nodes removed in this epoch (before new nodes may take their content)
        rm = plan["rm_nodes"]
        if rm.size:
            self.node_alive.a[rm] = False
            ents = self.node_ent.a[rm]
            own = self.ent_node.a[ents] == rm
            self.ent_node.a[ents[own]] = -1
            keys = self.node_key.a[rm]
            q = np.minimum(np.searchsorted(self.gkey, keys), max(self.gkey.size - 1, 0))
            hit = (self.gkey[q] == keys) if self.gkey.size else np.zeros(rm.size, bool)
            hit[hit] &= self.g_node[q[hit]] == rm[hit]
            self.g_node[q[hit]] = -1
            np.add.at(self.mm_merging, plan["rm_mms"], -1)
            mr, mo = plan["rm_rows"], plan["rm_orph"]
            on = (it["state"][mr] == STABLE) & np.isin(it["node"][mr], rm)
            it["state"][mr[on]] = NONE
            it["node"][mr[on]] = -1
            oo = (self.orph["state"][mo] == STABLE) & np.isin(self.orph["node"][mo], rm)
            self.orph["state"][mo[oo]] = NONE
            self.orph["node"][mo[oo]] = -1
            self.node_len.a[rm] = 0
        # closed-form results
        pmask = _Masked(plan["rows"], plan["P"], plan["contiguous"])
        pmask.assign(it["age"], upd["age_mask"], upd["age"])
        pmask.assign(it["rem"], upd["age_mask"], upd["rem"])
        pmask.assign(it["state"], upd["none_mask"], NONE)
        pmask.assign(it["node"], upd["none_mask"], -1)
        pmask.assign(it["sum"], upd["sum_mask"], upd["sum"])
        pmask.assign(it["has"], upd["sum_mask"], True)
        zr = upd["zero_rows"]
        if zr.size:
            np.add.at(ent_map, self.phys[zr], np.int32(-1))
            np.add.at(self.mm_zero, snap.mm[zr].astype(np.int64), 1)
            self.phys[zr] = ZERO
        nn = len(plan["new_nodes_key"])
        if nn:
            base = plan["base_node"]
            ids = np.arange(base, base + nn)
            self.ent_node.a[plan["new_nodes_ent"]] = ids
            self.g_node[np.searchsorted(self.gkey, plan["new_nodes_key"])] = ids
        if plan["set_rows"]:
            r_ = np.concatenate(plan["set_rows"])
            it["state"][r_] = np.concatenate(plan["set_state"])
            it["node"][r_] = np.concatenate(plan["set_node"])
        if plan["set_phys_rows"]:
            r_ = np.concatenate(plan["set_phys_rows"])
            vals = np.concatenate(plan["set_phys_vals"])
            np.add.at(ent_map, self.phys[r_], np.int32(-1))
            np.add.at(ent_map, vals, np.int32(1))
            self.phys[r_] = vals
        nodes, lens = upd["node_len"]
        if nodes.size:
            self.node_len.a[nodes] = lens
        mms, ds = upd["merging"]
        if mms.size:
            np.add.at(self.mm_merging, mms, ds)
        for g in plan["occ_del_g"]:
            self.g_occ_scan[g] = -1
        if plan["occ_new_g"]:
            g = np.concatenate(plan["occ_new_g"])
            self.g_occ_row[g] = np.concatenate(plan["occ_new_rows"])
            self.g_occ_scan[g] = self.scan_id
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
        cum = np.empty((nb, N_COUNTERS + 2), np.int64)
        cum[:, :N_COUNTERS] = self.c + np.cumsum(delta, axis=0)
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
        if self.visit_log is not None:
            ppos, ppath = plan["ev"].paths()
            o_ = np.argsort(ppos, kind="stable")
            rws = plan["rows"](ppos[o_])
            for r_, c_ in zip(np.atleast_1d(rws).tolist(), ppath[o_].tolist(), strict=True):
                self.visit_log.append((self.seqnr, int(snap.mm[r_]), int(snap.page[r_]), PATHS[c_]))
        # slots: ENDs passed (exited mms torn down, mms without mergeable mappings dropped)
        for mm in plan["end_slots"]:
            if mm in self.exited:
                self.slots.remove(mm)
            else:
                i = int(np.searchsorted(snap.mm_present, mm))
                if not bool(snap.mm_mergeable[i]):
                    self.slots.remove(mm)
        if plan["scan_end"]:
            self.cursor = None
        else:
            q = plan["P"] - 1
            self.cursor = int(plan["mm_pos"][q])
            self.cursor_page = int(snap.page[int(plan["rows"](q))]) + 1
        return _Epoch(
            batch_times=plan["times"], batch_cpu=plan["cpu_b"], cum=cum, scan_ended=plan["scan_end"]
        )

    # ================================================================== the ksmd loop

    def run(self) -> ReplayResult:
        """Replay the whole trace; return the result."""
        snaps = self.inp.snapshots
        K = len(snaps)
        opts = self.opts
        end_ns = int(opts.duration_s * NS_PER_S) if opts.duration_s is not None else None
        span_ns = snaps[-1].time_ns if K else 0
        grid_ns = opts.grid_step_ns(span_ns)
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

        def sample(
            limit: int,
            inclusive: bool,
            cum: npt.NDArray[np.int64] | None = None,
            times: I64 | None = None,
        ) -> None:
            nonlocal next_grid
            while next_grid < limit or (inclusive and next_grid == limit):
                if end_ns is not None and next_grid > end_ns:
                    return
                if len(grid) >= MAX_GRID_POINTS:
                    raise grid_overflow(len(grid) + 1)
                if cum is not None and times is not None:
                    b = int(np.searchsorted(times, next_grid, side="right")) - 1
                    row = cum[b]
                    fs = self.seqnr if b == cum.shape[0] - 1 else self._seq_before
                    grid.append(
                        GridRecord(
                            next_grid / NS_PER_S,
                            self.counters(
                                row[:N_COUNTERS], int(row[N_COUNTERS]), int(row[N_COUNTERS + 1]), fs
                            ),
                            self.truth(row[:N_COUNTERS]),
                        )
                    )
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
                    due = (
                        (opts.snapshot_scans[k] <= self.seqnr + 1)
                        if opts.snapshot_scans is not None
                        else snaps[k].time_ns <= t
                    )
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
                self.scan_id += 1
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
                        self.advisor,
                        pages_to_scan=self.pages_to_scan,
                        now_ns=end_t,
                        ksmd_cpu_ns=self.cpu_ns,
                        target_scan_time_s=self.k.advisor_target_scan_time_s,
                        max_cpu=self.k.advisor_max_cpu,
                        max_pages=self.k.advisor_max_pages_to_scan,
                    )
                    self.pages_to_scan = pages
                self.tree_pages_for_cost = int(self.c[C_UNSHARED])
                scans.append(
                    ScanRecord(
                        full_scans=self.seqnr,
                        t_s=end_t / NS_PER_S,
                        scan_time_s=(end_t - scan_start_t) / NS_PER_S,
                        cpu_s=(self.cpu_ns - scan_cpu0) / NS_PER_S,
                        pages_to_scan=pts,
                        batches=scan_batches,
                        counters=self.counters(),
                        processes=self.processes(),
                        truth=self.truth(),
                    )
                )
                self.progress.advance(1)
                if self.next_snap >= K:
                    scans_after_last = (scans_after_last or 0) + 1
                if (
                    end_ns is None
                    and scans_after_last is not None
                    and scans_after_last >= opts.settle_scans
                ):
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

    def _result(
        self, end_ns: int, scans: list[ScanRecord], grid: list[GridRecord], batches: int
    ) -> ReplayResult:
        return assemble_result(
            engine=self.name,
            knobs={**self.k.to_dict(), "cost_profile": self.cost.name},
            inp=self.inp,
            page_size=self.page_size,
            end_ns=end_ns,
            scans=scans,
            grid=grid,
            batches=batches,
            cpu_ns=self.cpu_ns - self.cpu_start_ns,
            full_scans=self.seqnr,
            path_visits=dict(zip(PATHS, self.path_visits.tolist(), strict=True)),
            path_cpu_ns=dict(zip(PATHS, self.path_cpu_ns.tolist(), strict=True)),
            final_counters=self.counters(),
            final_processes=self.processes(),
            final_truth=self.truth(),
            snapshot_first_scan=self.snapshot_first_scan,
            snapshot_applied_ns=self.snapshot_applied_ns,
            final_node_members=self._node_members(),
        )

    def _node_members(self) -> list[tuple[int, int, int]]:
        snap = self.snap
        rows = (
            np.flatnonzero(self.it["state"] == STABLE)
            if snap is not None
            else np.empty(0, np.int64)
        )
        node = np.concatenate(
            [self.it["node"][rows], self.orph["node"][self.orph["state"] == STABLE]]
        )
        mm = np.concatenate(
            [
                snap.mm[rows].astype(np.int64) if snap is not None else np.empty(0, np.int64),
                (self.o_key[self.orph["state"] == STABLE] >> _KEY_SHIFT).astype(np.int64),
            ]
        )
        if node.size == 0:
            return []
        # number nodes by (content, entity) like the reference does
        used = np.unique(node)
        o = np.lexsort((self.node_ent.a[used], self.node_key.a[used]))
        rank = np.empty(self.node_key.n, np.int64)
        rank[used[o]] = np.arange(used.size)
        n_mm = len(self.inp.mms) + 1
        key, counts = np.unique(rank[node] * n_mm + mm, return_counts=True)
        out = list(zip((key // n_mm).tolist(), (key % n_mm).tolist(), counts.tolist(), strict=True))
        return sorted(out)


class _Loop:
    """The event-by-event part of an epoch: what the closed forms do not cover.

    It replays, in position order and exactly like the reference model, the visits of the
    complex content groups (chains, pages shared by several visited rows, THP, full or
    emptied stable nodes, fork children of KSM pages), every removal touching a node of
    those contents, and the passing stable-tree walks of the closed-form groups when a
    chain would change under them.
    """

    def __init__(
        self,
        eng: VectorizedEngine,
        undo: _Undo,
        ev: _Events,
        snap: SnapshotRows,
        loop_pos: I64,
        rows: Any,
        skip: B,
        node_is_complex: B,
        touch_pos: I64,
        touch_sub: I64,
        touch_state: Any,
        touch_node: I64,
        touch_mm: I64,
        touch_row: I64,
        touch_orph: I64,
        walk_simple: I64,
        mm_pos: I64,
    ) -> None:
        self.e = eng
        self._lo = 0  # events before this position are done (closed-form walks pass by)
        self.u = undo
        self.ev = ev
        self.snap = snap
        self.rows = rows
        self.skip = skip
        self.mm_pos = mm_pos
        self.base_nodes = eng.node_key.n
        self.node_is_complex = node_is_complex
        self.first_walk = 1 << 62
        self.flips: list[int] = []
        self.walks = walk_simple
        loop_rows = np.asarray(rows(loop_pos), np.int64)
        ev_pos = [loop_pos]
        ev_sub = [np.ones(loop_pos.size, np.int64)]
        ev_kind = [np.zeros(loop_pos.size, np.int64)]
        ev_x = [loop_pos]
        cx = np.flatnonzero(touch_state == STABLE)
        if cx.size:
            nd = touch_node[cx]
            ok = nd >= self.base_nodes
            inb = nd < node_is_complex.size
            ok[inb] |= node_is_complex[nd[inb]]
            cx = cx[ok]
            own = (touch_sub[cx] == 1) & np.isin(touch_row[cx], loop_rows)
            cx = cx[~own]  # a loop visit handles its own item
            ev_pos.append(touch_pos[cx])
            ev_sub.append(touch_sub[cx])
            ev_kind.append(np.ones(cx.size, np.int64))
            ev_x.append(cx)
        pos_a, sub_a = np.concatenate(ev_pos), np.concatenate(ev_sub)
        kind_a, x_a = np.concatenate(ev_kind), np.concatenate(ev_x)
        o = np.lexsort((sub_a, pos_a))
        self.events = list(zip(pos_a[o].tolist(), kind_a[o].tolist(), x_a[o].tolist(), strict=True))
        self.touch_row, self.touch_orph, self.touch_mm = touch_row, touch_orph, touch_mm
        self.dirty = {key for key, ch in eng.chains.items() if eng._chain_dirty(ch)}
        self.touched: set[int] = set()

    # ---------------------------------------------------------------- helpers
    def _ev(self, p: int, counter: int, v: int) -> None:
        if v:
            self.ev.one(p, counter, v)

    def _complex_node(self, nd: int) -> bool:
        return nd >= self.base_nodes or (
            nd < self.node_is_complex.size and bool(self.node_is_complex[nd])
        )

    def _set_item(self, kind: int, idx: int, field: str, v: Any) -> None:
        arr = self.e.it[field] if kind == 0 else self.e.orph[field]
        self.u.set(arr, idx, v)

    def _set_g_node(self, key: int, nd: int) -> None:
        g = self.e._gid(key)
        if g >= 0:
            self.u.set(self.e.g_node, g, nd)

    def _chain_key(self, nd: int) -> int | None:
        return int(self.e.node_key.a[nd]) if self.e.node_chain.a[nd] >= 0 else None

    def _remove_node(self, nd: int, p: int) -> None:
        """remove_node_from_stable_tree of a stale dup (stale plain nodes are removed globally)."""
        e = self.e
        ln = int(e.node_len.a[nd])
        if ln > 0:
            self._ev(p, C_SHARED, -1)
            self._ev(p, C_SHARING, -(ln - 1))
        rs = np.flatnonzero((e.it["state"] == STABLE) & (e.it["node"] == nd))
        for r in rs.tolist():
            self._set_item(0, r, "state", NONE)
            self._set_item(0, r, "node", -1)
            mm = int(self.snap.mm[r])
            self.u.set(e.mm_merging, mm, e.mm_merging[mm] - 1)
        os_ = np.flatnonzero((e.orph["state"] == STABLE) & (e.orph["node"] == nd))
        for o in os_.tolist():
            self._set_item(1, o, "state", NONE)
            self._set_item(1, o, "node", -1)
            mm = int(e.o_key[o] >> _KEY_SHIFT)
            self.u.set(e.mm_merging, mm, e.mm_merging[mm] - 1)
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
            self.touched.add(key)
        elif self.e._plain(key) == nd:
            self._set_g_node(key, -1)

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
        ck = self._chain_key(nd)
        if ck is not None:
            self.touched.add(ck)
        self._ev(p, C_SHARING if ln > 0 else C_SHARED, -1)
        self.u.set(e.mm_merging, mm, e.mm_merging[mm] - 1)
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
            g = int(e.gid[row])
            if e._occ(g) == row:
                self.u.set(e.g_occ_scan, g, -1)
        self._set_item(0, row, "state", NONE)
        self._set_item(0, row, "node", -1)

    def _append(self, row: int, mm: int, nd: int, p: int) -> None:
        e = self.e
        ln = int(e.node_len.a[nd]) + 1
        self.u.set(e.node_len.a, nd, ln)
        ck = self._chain_key(nd)
        if ck is not None:
            self.touched.add(ck)
        self._ev(p, C_SHARED if ln == 1 else C_SHARING, 1)
        self.u.set(e.mm_merging, mm, e.mm_merging[mm] + 1)
        self._set_item(0, row, "state", STABLE)
        self._set_item(0, row, "node", nd)

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
        self.touched.add(key)
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
            if found is None or (
                e._cand(d) and (not e._cand(found) or e.node_len.a[d] > e.node_len.a[found])
            ):
                found = d
                if not prune and e._cand(found):
                    break
        if found is not None:
            if len(ch.dups) == 1:
                del e.chains[key]
                self.u.call(lambda key=key, ch=ch: e.chains.__setitem__(key, ch))
                self._set_g_node(key, found)
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
        """A stable-tree walk: every chain a walk would change is visited (others are no-ops)."""
        self.first_walk = min(self.first_walk, p)
        chosen = None
        keys = set(self.dirty)
        if target is not None and target in self.e.chains:
            keys.add(target)
        for key in sorted(keys):
            if key not in self.e.chains:
                continue
            got = self._chain_visit(key, prune, p)
            if key == target:
                chosen = got
        self._refresh()
        return chosen

    def _refresh(self) -> None:
        e = self.e
        for key in self.touched:
            ch = e.chains.get(key)
            if ch is not None and e._chain_dirty(ch):
                self.dirty.add(key)
            else:
                self.dirty.discard(key)
        self.touched.clear()

    def _passerby_until(self, limit: int) -> None:
        """A closed-form group's walk before position ``limit`` passes by the chains."""
        if not self.dirty:
            return
        i = int(np.searchsorted(self.walks, int(self._lo), side="left"))
        if i < self.walks.size and int(self.walks[i]) < limit:
            w = int(self.walks[i])
            self._walk(w, True, None)
            self._lo = w + 1

    def _stable_search(self, key: int, row: int, p: int) -> int | None:
        e = self.e
        chosen = self._walk(p, True, key)
        if key in e.chains:
            nd = chosen
        else:
            g = int(e.gid[row])
            nd = int(e.g_node[g])
            if nd < 0 or e._stale(nd):
                return None
        return nd if nd is not None and e._cand(nd) else None

    def _stable_insert(self, key: int, row: int, ent: int, p: int) -> int:
        e = self.e
        self._walk(p, False, key)
        nid = e.node_key.n
        for g, v in (
            (e.node_key, key),
            (e.node_ent, ent),
            (e.node_len, 0),
            (e.node_chain, -1),
            (e.node_alive, True),
        ):
            g.ensure(nid + 1)
            g.a[nid] = v
        grows = (e.node_key, e.node_ent, e.node_len, e.node_chain, e.node_alive)
        self.u.call(lambda nid=nid: _set_n(grows, nid))
        gid = int(e.gid[row])
        if key in e.chains:
            ch = e.chains[key]
            ch.dups.insert(0, nid)
            self.u.call(lambda ch=ch, nid=nid: ch.dups.remove(nid))
            self.u.set(e.node_chain.a, nid, 1)
            self._ev(p, C_DUPS, 1)
        else:
            old = int(e.g_node[gid])
            if old >= 0 and not e._stale(old):
                ch = _VChain(key=key, prune_ns=e.scan_start_ns, dups=[nid, old])
                e.chains[key] = ch
                self.u.call(lambda key=key: e.chains.pop(key, None))
                self.u.set(e.g_node, gid, -1)
                self.u.set(e.node_chain.a, old, 1)
                self.u.set(e.node_chain.a, nid, 1)
                self._ev(p, C_CHAINS, 1)
                self._ev(p, C_DUPS, 2)
            else:
                self.u.set(e.g_node, gid, nid)
        self.touched.add(key)
        self._ev(p, C_NODES, 1)
        self._ev(p, C_KSMPAGES, 1)
        self.u.set(e.ent_node.a, ent, nid)
        return nid

    # ---------------------------------------------------------------- the events
    def run(self) -> None:
        self._lo = 0
        for p, kind, x in self.events:
            self._passerby_until(p)
            self._lo = max(self._lo, p)
            if kind == 0:
                self._visit(p)
            else:
                self._touch(p, x)
            if self.touched:
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

    def _visit(self, p: int) -> None:
        e = self.e
        K = e.k
        row = int(self.rows(p))
        mm = int(self.mm_pos[p])
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
                    self.ev.one_path_at(p, P_SKIP)
                    return
        if self.skip[p]:
            self.flips.append(p)
        if node >= 0:
            if int(it["state"][row]) == STABLE and int(it["node"][row]) == node:
                self.ev.one_path_at(p, P_KSM)
                return
            self._remove(row, mm, p)
            self._append(row, mm, node, p)
            self.ev.one_path_at(p, P_FORK)
            return
        self._remove(row, mm, p)
        h = int(self.snap.hash[row])
        if not bool(it["has"][row]) or int(it["sum"][row]) != h:
            self.ev.one_path_at(p, P_FIRST if not bool(e.it_exists[row]) else P_VOL)
            self.u.set(it["sum"], row, np.uint64(h))
            self.u.set(it["has"], row, True)
            return
        if K.use_zero_pages and bool(self.snap.zero[row]):
            self._replace(row, ZERO, p)
            self.ev.one_path_at(p, P_ZERO)
            return
        kd = self._stable_search(h, row, p)
        if kd is not None:
            self._split(row)
            self._replace(row, int(e.node_ent.a[kd]), p)
            self._append(row, mm, kd, p)
            self.ev.one_path_at(p, P_MERGE)
            return
        g = int(e.gid[row])
        j = e._occ(g)
        if j is not None:
            if int(e.phys[j]) == int(e.phys[row]):
                self.ev.one_path_at(p, P_NOMERGE)
                return
            bi, bj = self._thp_block(row), self._thp_block(j)
            if bi is not None and bi == bj:
                e.split_thp.add(bi)
                self.u.call(lambda bi=bi: e.split_thp.discard(bi))
                self.ev.one_path_at(p, P_NOMERGE)
                return
            self._split(row)
            self._split(j)
            E = int(e.phys[row])
            mmj = int(self.snap.mm[j])
            self._set_item(0, j, "state", NONE)
            self.u.set(e.g_occ_scan, g, -1)
            self._ev(p, C_UNSHARED, -1)
            self._replace(j, E, p)
            nid = self._stable_insert(h, row, E, p)
            self._append(j, mmj, nid, p)
            self._append(row, mm, nid, p)
            self.ev.one_path_at(p, P_MERGE)
            return
        self.u.set(e.g_occ_row, g, row)
        self.u.set(e.g_occ_scan, g, e.scan_id)
        self._set_item(0, row, "state", UNSTABLE)
        self._ev(p, C_UNSHARED, 1)
        self.ev.one_path_at(p, P_UNST)


__all__ = ["VectorizedEngine"]
