"""What the fast engine reports besides the state row: per-process merging, node members."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from planner.engine.fast._jit import kernel
from planner.engine.fast.state import (
    IB_STABLE,
    NF_ALIVE,
    S_MERGING_STALE,
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


def node_members(st: KState, content_hash: npt.NDArray[np.uint64]) -> list[tuple[int, int, int]]:
    """``(node, mm, items)`` of every KSM page with items; nodes numbered by content, then
    by their lowest (mm, page) item (as the reference model numbers them)."""
    n_rows = int(st.sc[S_N_ROWS])
    n_orph = st.o_key.size
    bits = st.it_bits[: n_rows + n_orph]
    node = st.it_node[: n_rows + n_orph]
    on = np.flatnonzero((bits & IB_STABLE) != 0)
    on = on[(st.n_flags[node[on]] & NF_ALIVE) != 0]
    if on.size == 0:
        return []
    rows = on[on < n_rows]
    orph = on[on >= n_rows] - n_rows
    mm_of_rows = np.repeat(st.lay_mm, st.lay_hi - st.lay_lo)
    key = np.concatenate(
        [(mm_of_rows[rows].astype(np.uint64) << MM_SHIFT) | st.r_page[rows], st.o_key[orph]]
    )
    nd = np.concatenate([node[rows], node[orph + n_rows]]).astype(np.int64)
    mm = (key >> MM_SHIFT).astype(np.int64)
    used, inv = np.unique(nd, return_inverse=True)
    inv = inv.reshape(-1)
    order = np.lexsort((key, inv))  # by node, then key: each node's lowest item first
    first = np.r_[True, inv[order][1:] != inv[order][:-1]]
    lowest = key[order][first]  # per used node, in node order
    content = content_hash[st.n_gid[used]]
    rank = np.empty(used.size, np.int64)
    rank[np.lexsort((lowest, content))] = np.arange(used.size)
    width = int(mm.max()) + 1
    pair, counts = np.unique(rank[inv] * width + mm, return_counts=True)  # sorted
    return list(
        zip((pair // width).tolist(), (pair % width).tolist(), counts.tolist(), strict=True)
    )
