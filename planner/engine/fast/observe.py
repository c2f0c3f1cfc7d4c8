"""What the fast engine reports besides the state row: per-process merging, node members."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from planner.engine.fast._jit import jit, kernel
from planner.engine.fast.state import (
    IB_STABLE,
    NF_ALIVE,
    S_MERGING_STALE,
    S_N_NODES,
    S_N_ROWS,
    KState,
)
from planner.engine.rows import MM_SHIFT


@kernel
def recount_merging(st: KState, o_mm: Any) -> None:
    """Per-mm items on a live stable node, counted again after nodes were removed."""
    st.mm_merging[:] = 0
    n_rows = st.sc[S_N_ROWS]
    for i in range(st.lay_mm.size):
        mm = st.lay_mm[i]
        for r in range(st.lay_lo[i], st.lay_hi[i]):
            b = st.it_bits[r]
            if b & IB_STABLE:
                if st.n_flags[st.it_node[r]] & NF_ALIVE:
                    st.mm_merging[mm] += 1
                else:
                    st.it_bits[r] = b & (0xFF ^ IB_STABLE)
    for o in range(o_mm.size):
        it = n_rows + o
        b = st.it_bits[it]
        if b & IB_STABLE:
            if st.n_flags[st.it_node[it]] & NF_ALIVE:
                st.mm_merging[o_mm[o]] += 1
            else:
                st.it_bits[it] = b & (0xFF ^ IB_STABLE)
    st.sc[S_MERGING_STALE] = 0


def stable_tree(
    st: KState, content_hash: npt.NDArray[np.uint64]
) -> dict[int, list[tuple[tuple[int, int], ...]]]:
    """Content hash -> its stable nodes (a chain's dups head first), each as the sorted
    (mm, page) of its items (as the reference's ``stable_tree``; slow: tests only)."""
    n_rows = int(st.sc[S_N_ROWS])
    mm_rows = np.repeat(st.lay_mm, st.lay_hi - st.lay_lo)
    items: dict[int, list[tuple[int, int]]] = {}
    for i in np.flatnonzero((st.it_bits & IB_STABLE) != 0).tolist():
        nd = int(st.it_node[i])
        if not st.n_flags[nd] & NF_ALIVE:
            continue
        if i < n_rows:
            key = (int(mm_rows[i]), int(st.r_page[i]))
        else:
            k = int(st.o_key[i - n_rows])
            key = (k >> int(MM_SHIFT), k & ((1 << int(MM_SHIFT)) - 1))
        items.setdefault(nd, []).append(key)
    out: dict[int, list[tuple[tuple[int, int], ...]]] = {}
    for g in np.flatnonzero(st.c_stable != -1).tolist():
        s = int(st.c_stable[g])
        nodes = [s] if s >= 0 else []
        d = int(st.ch_head[-(s + 2)]) if s < 0 else -1
        while d >= 0:
            nodes.append(d)
            d = int(st.n_next[d])
        out[int(content_hash[g])] = [tuple(sorted(items.get(nd, []))) for nd in nodes]
    return out


@jit
def _member_pass(st: KState, lowest: Any, rank: Any, width: int) -> Any:
    """Over every item on a live stable node: with ``rank`` empty, the lowest
    ``(mm << 36) | page`` of each node into ``lowest``; else one ``rank[node] * width + mm``
    per item (returned)."""
    bits, inode, flags, page = st.it_bits, st.it_node, st.n_flags, st.r_page  # no NRT in loops
    lay_mm, lay_hi, o_key, o_mm = st.lay_mm, st.lay_hi, st.o_key, st.o_mm
    n_rows = st.sc[S_N_ROWS]
    total = n_rows + o_key.size
    count = 0
    if rank.size:
        for i in range(total):
            if bits[i] & IB_STABLE and flags[inode[i]] & NF_ALIVE:
                count += 1
    out = np.empty(count, np.int64)
    k = 0
    seg = 0
    for i in range(total):
        if i < n_rows:
            while lay_hi[seg] <= i:
                seg += 1
        if not (bits[i] & IB_STABLE and flags[inode[i]] & NF_ALIVE):
            continue
        nd = inode[i]
        if i < n_rows:
            mm = lay_mm[seg]
            key = (np.uint64(mm) << np.uint64(36)) | page[i]
        else:
            mm = o_mm[i - n_rows]
            key = o_key[i - n_rows]
        if rank.size:
            out[k] = rank[nd] * width + mm
            k += 1
        elif key < lowest[nd]:
            lowest[nd] = key
    return out


def node_members(st: KState, content_hash: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
    """``(node, mm, items)`` of every KSM page with items; nodes numbered by content, then
    by their lowest (mm, page) item (as the reference model numbers them)."""
    nn = int(st.sc[S_N_NODES])
    none = np.iinfo(np.uint64).max
    lowest = np.full(nn, none, np.uint64)
    _member_pass(st, lowest, np.empty(0, np.int64), 0)
    used = np.flatnonzero(lowest != none)
    if used.size == 0:
        return np.zeros((0, 3), np.int64)
    rank = np.zeros(nn, np.int64)
    rank[used[np.lexsort((lowest[used], content_hash[st.n_gid[used]]))]] = np.arange(used.size)
    del lowest
    width = int(st.mm_rmap.size)
    pair = _member_pass(st, np.empty(0, np.uint64), rank, width)
    del rank
    pair.sort()
    table: npt.NDArray[np.int64] = _runs_table(pair, width)
    return table


@jit
def _runs_table(pair: Any, width: int) -> Any:
    """Sorted ``rank * width + mm`` values as ``(rank, mm, how many)`` rows."""
    k = 0
    for i in range(pair.size):
        if i == 0 or pair[i] != pair[i - 1]:
            k += 1
    out = np.zeros((k, 3), np.int64)
    j = -1
    for i in range(pair.size):
        if i == 0 or pair[i] != pair[i - 1]:
            j += 1
            out[j, 0] = pair[i] // width
            out[j, 1] = pair[i] % width
        out[j, 2] += 1
    return out
