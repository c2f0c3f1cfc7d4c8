"""The fast engine's state: one record of arrays at minimum widths, shared with the kernel.

Everything the compiled kernel reads or writes is in :class:`KState` (a named tuple of
numpy arrays, which numba passes by reference). Indexes:

* **rows** of the current snapshot (``r_*``), in scan order within each mm: the page
  number, the content id, flags, the physical page (entity) the row maps;
* **items** (``it_*``): an rmap_item per (mm, page), at the row's index, or -- for an item
  whose page is absent from the snapshot (an *orphan*, freed when the cursor passes its
  address) -- at ``n_rows + o`` for orphan ``o`` (``o_key``, ``o_mm``, sorted by key);
* **entities** (``e_*``): physical pages: how many rows map each, and its stable node;
* **contents** (``c_*``): per distinct content ever seen (ids in order of appearance): its
  stable-tree slot (a plain node, or a chain) and its unstable-tree occupant;
* **nodes** (``n_*``) and **chains** (``ch_*``): stable nodes, and chains of dups as
  singly linked lists (head first);
* ``sc``: the counters (the first :data:`planner.engine.result.N_ROW` are a state row)
  and the kernel's scalars.

Bytes per tracked page between snapshots: rows 17, items 11 (+ orphans), entities 8,
contents ~8-12 (one per distinct content), nodes ~21 per KSM page.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from planner.engine.result import N_ROW

# row flags: F_ELIGIBLE, F_ZERO, F_THP of planner.engine.rows, and:
RF_ELIG, RF_ZERO, RF_THP = 1, 2, 4
RF_SPLIT = 8  # its huge page was split by KSM
RF_UNIQ = 16  # no other row of the snapshot has its content (no tree can match it)
RF_HELD = 32  # a write gave it a content other rows of the snapshot hold (a canary's join)
RF_HELD_ZERO = 64  # with RF_HELD: that content is the zero-filled one (RF_ZERO is the snapshot's)
# item bits
IB_EXISTS, IB_UNSTABLE, IB_STABLE, IB_INTREE = 1, 2, 4, 8
# node flags
NF_ALIVE, NF_STALEQ = 1, 2
# chain flags: alive; a plain visit may change it; a pruning visit may change it (a visit
# of either kind leaves the chain so that the next visit *of the same kind* changes
# nothing, but the other kind may pick another dup); in the dirty list; visited in this walk
CF_ALIVE, CF_PLAIN, CF_PRUNE, CF_INLIST, CF_WALKED = 1, 2, 4, 8, 16

ZERO = -1  # physical page of a PTE mapping the kernel zero page (use_zero_pages)
NO_SUM = -1  # an item's checksum before its first visit

# sc: the first N_ROW slots are the state row (planner.engine.result.R_*), then:
(
    S_N_ROWS,
    S_N_ORPH,
    S_N_ENTS,
    S_N_CONTENTS,
    S_N_NODES,  # node ids in use (allocation watermark; dead ones included)
    S_N_CHAINS,  # chain ids in use (watermark)
    S_STALE_N,  # stale-list length
    S_DIRTY_N,  # dirty-list length
    S_SPLIT_N,  # new split huge pages since the engine last took them
    S_SCAN_START,  # the prune clock: when the current full scan started
    S_PRUNE_DONE,  # the first pruning walk of this scan happened
    S_PRUNE_NS,  # stable_node_chains_prune_millisecs, in ns
    S_M,  # max_page_sharing
    S_SMART,
    S_USE_ZERO,
    S_MERGING_STALE,  # a node with items was removed: per-mm merging counts need a recount
    S_CUR_SEG,  # the kernel's cursor on return: segments done, and the page to go on from
    S_CUR_PAGE,
    S_WALKS,  # pruning walks in the current scan
    S_EVENTS,  # state changes other than ageing and unstable-tree churn (steady detection)
    S_INSERTS,  # unstable-tree inserts in the current full scan (the tree's size for costs)
    S_WALK,  # unstable-tree levels the current visit walked (cost.tree_levels)
) = range(N_ROW, N_ROW + 22)
N_SC = N_ROW + 22

# kernel return statuses
ST_SCAN_END, ST_BOUNDARY, ST_FULL, ST_GROW = 0, 1, 2, 3

#: skip_age(age) for age 0..255 (mm/ksm.c)
SKIP_AGE = np.array([1, 1, 1, 1, 2, 2, 4, 4, 4] + [8] * 247, dtype=np.uint8)

I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
U8 = npt.NDArray[np.uint8]


class KState(NamedTuple):
    """All the fast engine's KSM state (see the module notes)."""

    r_page: U64
    r_gid: I32
    r_flags: U8
    r_phys: I32
    it_bits: U8
    it_age: U8
    it_rem: U8
    it_node: I32
    it_sum: I32
    o_key: U64
    o_mm: I32
    e_map: I32
    e_node: I32
    c_stable: I32  # -1 none, >= 0 a plain node, <= -2 chain -(v + 2)
    c_occ: I32  # the row in the unstable tree, if its item has IB_INTREE
    n_gid: I32
    n_ent: I32
    n_len: I32
    n_chain: I32
    n_next: I32
    n_flags: U8
    ch_gid: I32
    ch_head: I32
    ch_ndups: I32
    ch_prune: I64
    ch_flags: U8
    stale: I32  # plain nodes whose page lost its last mapper (to remove at the next walk)
    dirty: I32  # chains a walk must visit
    split_out: U64  # huge pages split by KSM: (mm << 27) | (page >> 9)
    mm_rmap: I64
    mm_merging: I64
    mm_zero: I64
    lay_mm: I32  # the current snapshot's mms and their row ranges
    lay_lo: I64
    lay_hi: I64
    sc: I64


def _grow(a: npt.NDArray[Any], n: int, fill: Any) -> npt.NDArray[Any]:
    """``a`` with room for ``n`` entries (doubling), new room set to ``fill``."""
    if n <= a.size:
        return a
    out = np.full(max(n, 2 * a.size, 16), fill, dtype=a.dtype)
    out[: a.size] = a
    return out


def empty_state(
    n_mm: int, *, max_page_sharing: int, smart_scan: bool, use_zero: bool, prune_ns: int
) -> KState:
    """The state before the first snapshot."""
    z32 = np.zeros(0, np.int32)
    z64 = np.zeros(0, np.int64)
    zu8 = np.zeros(0, np.uint8)
    zu64 = np.zeros(0, np.uint64)
    sc = np.zeros(N_SC, np.int64)
    sc[S_M] = max_page_sharing
    sc[S_SMART] = int(smart_scan)
    sc[S_USE_ZERO] = int(use_zero)
    sc[S_PRUNE_NS] = prune_ns
    return KState(
        r_page=zu64, r_gid=z32, r_flags=zu8, r_phys=z32,
        it_bits=zu8, it_age=zu8, it_rem=zu8, it_node=z32, it_sum=z32,
        o_key=zu64, o_mm=z32,
        e_map=z32, e_node=z32,
        c_stable=z32, c_occ=z32,
        n_gid=np.zeros(16, np.int32), n_ent=np.zeros(16, np.int32),
        n_len=np.zeros(16, np.int32), n_chain=np.full(16, -1, np.int32),
        n_next=np.full(16, -1, np.int32), n_flags=np.zeros(16, np.uint8),
        ch_gid=np.zeros(16, np.int32), ch_head=np.full(16, -1, np.int32),
        ch_ndups=np.zeros(16, np.int32), ch_prune=np.zeros(16, np.int64),
        ch_flags=np.zeros(16, np.uint8),
        stale=np.zeros(16, np.int32), dirty=np.zeros(16, np.int32),
        split_out=np.zeros(16, np.uint64),
        mm_rmap=np.zeros(n_mm + 1, np.int64), mm_merging=np.zeros(n_mm + 1, np.int64),
        mm_zero=np.zeros(n_mm + 1, np.int64),
        lay_mm=z32, lay_lo=z64, lay_hi=z64,
        sc=sc,
    )  # fmt: skip


def reserve(st: KState, nodes: int, chains: int, splits: int) -> KState:
    """``st`` with room for ``nodes`` more stable nodes, ``chains`` more chains, ``splits``
    more split huge pages (arrays grow by doubling; nothing moves when there is room)."""
    sc = st.sc
    need_n = int(sc[S_N_NODES]) + nodes
    need_c = int(sc[S_N_CHAINS]) + chains
    need_s = int(sc[S_SPLIT_N]) + splits
    if need_n <= st.n_gid.size and need_c <= st.ch_gid.size and need_s <= st.split_out.size:
        return st
    return st._replace(
        n_gid=_grow(st.n_gid, need_n, 0),
        n_ent=_grow(st.n_ent, need_n, 0),
        n_len=_grow(st.n_len, need_n, 0),
        n_chain=_grow(st.n_chain, need_n, -1),
        n_next=_grow(st.n_next, need_n, -1),
        n_flags=_grow(st.n_flags, need_n, 0),
        stale=_grow(st.stale, need_n, 0),
        ch_gid=_grow(st.ch_gid, need_c, 0),
        ch_head=_grow(st.ch_head, need_c, -1),
        ch_ndups=_grow(st.ch_ndups, need_c, 0),
        ch_prune=_grow(st.ch_prune, need_c, 0),
        ch_flags=_grow(st.ch_flags, need_c, 0),
        dirty=_grow(st.dirty, need_c, 0),
        split_out=_grow(st.split_out, need_s, 0),
    )


def nbytes(st: KState) -> int:
    """Memory held by the state's arrays."""
    return sum(a.nbytes for a in st)


__all__ = ["KState", "empty_state", "nbytes", "reserve"]
