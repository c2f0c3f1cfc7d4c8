"""The fast engine's kernel: ksmd's loop and cmp_and_merge_page, compiled with numba.

It follows :mod:`planner.engine.reference` step for step -- the same functions under the
same names, on the arrays of :class:`planner.engine.fast.state.KState` instead of Python
objects -- so that reading one against the other is direct. What differs is only how
state is found, never what happens:

* contents are dense ids (``r_gid``), so a tree lookup is an array index; a row whose
  content no other row has (``RF_UNIQ``) cannot match anything and skips the lookup;
* a stable-tree walk (reference ``_walk``) visits only the chains a visit could change (a
  *dirty list*: a chain is listed when a dup's length or staleness changes, a dup is added
  or removed, or a prune is due), and the stale plain nodes queued when their page lost its
  last mapper: visiting any other chain is a no-op in the reference;
* a removed stable node leaves its items pointing at it; an item on a dead node reads as
  not in a tree (``_state``), and the per-process merging counts are recounted
  (``S_MERGING_STALE``) rather than updated item by item.

The loop is sequential by nature (each visit sees the trees as the previous ones left
them), which is why it is compiled rather than vectorized. ``cache=True`` keeps the
compiled code across processes (first call in a fresh checkout: see docs/engine.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import numpy as np

from planner.engine.fast._jit import hot, kernel
from planner.engine.fast.state import (
    CF_ALIVE,
    CF_INLIST,
    CF_PLAIN,
    CF_PRUNE,
    CF_WALKED,
    IB_EXISTS,
    IB_INTREE,
    IB_STABLE,
    IB_UNSTABLE,
    NF_ALIVE,
    NF_STALEQ,
    NO_SUM,
    RF_ELIG,
    RF_HELD,
    RF_HELD_ZERO,
    RF_SPLIT,
    RF_THP,
    RF_UNIQ,
    RF_ZERO,
    S_CUR_PAGE,
    S_CUR_SEG,
    S_DIRTY_N,
    S_EVENTS,
    S_INSERTS,
    S_M,
    S_MERGING_STALE,
    S_N_CHAINS,
    S_N_CONTENTS,
    S_N_ENTS,
    S_N_NODES,
    S_N_ROWS,
    S_PRUNE_DONE,
    S_PRUNE_NS,
    S_SCAN_START,
    S_SMART,
    S_SPLIT_N,
    S_STALE_N,
    S_USE_ZERO,
    S_WALK,
    S_WALKS,
    SKIP_AGE,
    ST_BOUNDARY,
    ST_FULL,
    ST_GROW,
    ST_SCAN_END,
    ZERO,
    KState,
)
from planner.engine.result import (
    N_ROW,
    R_CHAINS,
    R_DUPS,
    R_FRAMES_WITH,
    R_FULL_SCANS,
    R_KSM_PAGES,
    R_RMAP,
    R_SCANNED,
    R_SHARED,
    R_SHARING,
    R_SKIPPED,
    R_STABLE_NODES,
    R_UNSHARED,
    R_ZERO,
)

if TYPE_CHECKING:
    from collections.abc import Callable

NONE, UNSTABLE, STABLE = 0, 1, 2
# path codes, in the order of planner.engine.cost.PATHS
P_KSM, P_FORK, P_SKIP, P_FIRST, P_VOL, P_UNST, P_MERGE, P_ZERO, P_NOMERGE = range(9)
THP_SHIFT = 9
# calls that are not inlined take int64 arguments only (one compiled version each)
i64 = cast("Callable[[object], int]", np.int64)
_SKIP_AGE = SKIP_AGE
_PAGE_MASK = np.uint64((1 << 36) - 1)

# Per-visit helpers are inlined (@hot); the rarer steps (walks, chains, node removal,
# splits, merges) are compiled once each (@kernel) and called.

# ----------------------------------------------------------------------------- physical pages


@hot
def _acquire(st: KState, e: int, mm: int) -> None:
    sc = st.sc
    if e == ZERO:
        sc[R_ZERO] += 1
        st.mm_zero[mm] += 1
        return
    m = st.e_map[e] + 1
    st.e_map[e] = m
    if m == 1:
        sc[R_FRAMES_WITH] += 1
        if st.e_node[e] >= 0:
            sc[R_KSM_PAGES] += 1


@hot
def _release(st: KState, e: int, mm: int) -> None:
    sc = st.sc
    if e == ZERO:
        sc[R_ZERO] -= 1
        st.mm_zero[mm] -= 1
        return
    m = st.e_map[e] - 1
    st.e_map[e] = m
    if m == 0:
        sc[R_FRAMES_WITH] -= 1
        nd = st.e_node[e]
        if nd >= 0:
            sc[R_KSM_PAGES] -= 1
            if st.n_chain[nd] >= 0:
                _mark_chain(st, st.n_chain[nd])
            elif not st.n_flags[nd] & NF_STALEQ:
                st.n_flags[nd] |= NF_STALEQ
                st.stale[sc[S_STALE_N]] = nd
                sc[S_STALE_N] += 1


@hot
def _replace(st: KState, r: int, mm: int, e: int) -> None:
    """The row's PTE now maps physical page ``e``."""
    _release(st, st.r_phys[r], mm)
    st.r_phys[r] = e
    _acquire(st, e, mm)
    st.sc[S_EVENTS] += 1


# ----------------------------------------------------------------------------- stable tree


@hot
def _stale(st: KState, nd: int) -> bool:
    return bool(st.e_map[st.n_ent[nd]] == 0)


@hot
def _cand(st: KState, nd: int, offset: int) -> bool:
    n = st.n_len[nd]
    return bool(n > 0 and n + offset < st.sc[S_M])


@hot
def _mark_chain(st: KState, ch: int) -> None:
    """Something changed in chain ``ch``: the next walk visits it."""
    f = st.ch_flags[ch] | CF_PLAIN | CF_PRUNE
    if not f & CF_INLIST:
        f |= CF_INLIST
        st.dirty[st.sc[S_DIRTY_N]] = ch
        st.sc[S_DIRTY_N] += 1
    st.ch_flags[ch] = f


@hot
def _prune_due(st: KState, ch: int) -> bool:
    return bool(st.sc[S_SCAN_START] >= st.ch_prune[ch] + st.sc[S_PRUNE_NS])


@kernel
def _remove_node(st: KState, nd: int, prev: int) -> None:
    """remove_node_from_stable_tree: the node goes, its items read as not in a tree.

    ``prev`` is the dup before ``nd`` in its chain (-1: the head; -2: find it).
    """
    sc = st.sc
    ln = st.n_len[nd]
    if ln > 0:
        sc[R_SHARED] -= 1
        sc[R_SHARING] -= ln - 1
        sc[S_MERGING_STALE] = 1
    st.n_len[nd] = 0
    st.n_flags[nd] = 0
    sc[R_STABLE_NODES] -= 1
    sc[S_EVENTS] += 1
    ch = st.n_chain[nd]
    if ch >= 0:
        if prev == -2:
            prev = -1
            d = st.ch_head[ch]
            while d != nd:
                prev = d
                d = st.n_next[d]
        if prev < 0:
            st.ch_head[ch] = st.n_next[nd]
        else:
            st.n_next[prev] = st.n_next[nd]
        st.ch_ndups[ch] -= 1
        sc[R_DUPS] -= 1
        _mark_chain(st, ch)
    elif st.c_stable[st.n_gid[nd]] == nd:
        st.c_stable[st.n_gid[nd]] = -1
    e = st.n_ent[nd]
    if st.e_node[e] == nd:
        st.e_node[e] = -1
        if st.e_map[e] > 0:
            sc[R_KSM_PAGES] -= 1


@kernel
def _chain_visit(st: KState, ch: int, prune: int) -> int:
    """stable_node_dup(): pick a dup; free stale dups met; collapse or free the chain."""
    sc = st.sc
    if prune:
        st.ch_prune[ch] = sc[S_SCAN_START]
    found, fprev, prev = -1, -1, -1
    d = st.ch_head[ch]
    while d >= 0:
        nxt = st.n_next[d]
        if _stale(st, d):
            _remove_node(st, i64(d), i64(prev))
            d = nxt
            continue
        if found < 0 or (
            _cand(st, d, 0) and (not _cand(st, found, 0) or st.n_len[d] > st.n_len[found])
        ):
            found, fprev = d, prev
            if not prune and _cand(st, found, 0):
                break
        prev = d
        d = nxt
    g = st.ch_gid[ch]
    keep = st.ch_flags[ch] & (CF_INLIST | CF_WALKED)
    if found >= 0:
        if st.ch_ndups[ch] == 1:  # one dup left: it becomes a plain node again
            st.c_stable[g] = found
            st.n_chain[found] = -1
            st.n_next[found] = -1
            st.ch_flags[ch] = keep
            sc[R_CHAINS] -= 1
            sc[R_DUPS] -= 1
            sc[R_STABLE_NODES] -= 1
            sc[S_EVENTS] += 1
            return found
        if st.ch_head[ch] != found and _cand(st, found, 1):
            st.n_next[fprev] = st.n_next[found]
            st.n_next[found] = st.ch_head[ch]
            st.ch_head[ch] = found
            _mark_chain(st, ch)
            sc[S_EVENTS] += 1
    else:
        st.c_stable[g] = -1
        st.ch_flags[ch] = keep
        sc[R_CHAINS] -= 1
        sc[R_STABLE_NODES] -= 1
        sc[S_EVENTS] += 1
        return found
    # the same kind of visit would now change nothing
    st.ch_flags[ch] &= 0xFF ^ (CF_PRUNE if prune else CF_PLAIN)
    return found


@kernel
def _walk(st: KState, prune: int, target: int) -> int:
    """A stable-tree walk: stale nodes removed, chains visited (see the module notes).

    Returns the dup picked in content ``target``'s chain (-1: none or no chain).
    """
    sc = st.sc
    for i in range(sc[S_STALE_N]):
        nd = st.stale[i]
        st.n_flags[nd] &= 0xFF ^ NF_STALEQ
        if st.n_flags[nd] & NF_ALIVE and st.n_chain[nd] < 0 and _stale(st, nd):
            _remove_node(st, i64(nd), i64(-1))
    sc[S_STALE_N] = 0
    tch = -1
    if target >= 0 and st.c_stable[target] <= -2:
        tch = -(st.c_stable[target] + 2)
    # the target's kind of visit is decided now, before the prune clocks move below
    tpe = tch >= 0 and prune != 0 and _prune_due(st, tch)
    got, seen = -1, False
    interval = sc[S_PRUNE_NS]
    if prune:
        sc[S_WALKS] += 1
    if prune and interval > 0 and sc[S_PRUNE_DONE] == 0:
        # the first pruning walk of a scan prunes every chain whose prune is due
        sc[S_PRUNE_DONE] = 1
        for ch in range(sc[S_N_CHAINS]):
            if st.ch_flags[ch] & CF_ALIVE and _prune_due(st, ch):
                if st.ch_flags[ch] & CF_PRUNE:
                    st.ch_flags[ch] |= CF_WALKED  # the list below must not visit it again
                    f = _chain_visit(st, i64(ch), i64(1))
                    if ch == tch:
                        got, seen = f, True
                    if not st.ch_flags[ch] & CF_INLIST:
                        st.ch_flags[ch] &= 0xFF ^ CF_WALKED
                else:  # its pruning visit would only move the prune clock
                    st.ch_prune[ch] = sc[S_SCAN_START]
                    if st.ch_flags[ch] & CF_INLIST:  # this walk's visit was that one
                        st.ch_flags[ch] |= CF_WALKED
    keep = 0
    for i in range(sc[S_DIRTY_N]):
        ch = st.dirty[i]
        fl = st.ch_flags[ch]
        if fl & CF_ALIVE and not fl & CF_WALKED:
            pe = prune != 0 and _prune_due(st, ch)
            if fl & (CF_PRUNE if pe else CF_PLAIN):
                f = _chain_visit(st, i64(ch), i64(pe))
                if ch == tch:
                    got, seen = f, True
        fl = st.ch_flags[ch] & (0xFF ^ CF_WALKED)
        if fl & CF_ALIVE and (fl & CF_PLAIN or (interval == 0 and fl & CF_PRUNE)):
            st.dirty[keep] = ch
            keep += 1
            st.ch_flags[ch] = fl
        else:
            st.ch_flags[ch] = fl & (0xFF ^ CF_INLIST)
    sc[S_DIRTY_N] = keep
    if tch >= 0 and not seen:  # a clean chain: visiting it changes nothing, only picks
        got = _chain_visit(st, i64(tch), i64(tpe))
    return got


@hot
def _walk_is_noop(st: KState, prune: bool) -> bool:
    """Whether a walk would change nothing (no stale node, no chain to visit)."""
    sc = st.sc
    return not (
        sc[S_STALE_N]
        or sc[S_DIRTY_N]
        or (prune and sc[S_PRUNE_DONE] == 0 and sc[S_PRUNE_NS] > 0 and sc[R_CHAINS] > 0)
    )


@hot
def _stable_insert(st: KState, g: int, e: int) -> int:
    sc = st.sc
    if not _walk_is_noop(st, False):
        _walk(st, i64(0), i64(-1))
    nid = sc[S_N_NODES]
    sc[S_N_NODES] += 1
    st.n_gid[nid] = g
    st.n_ent[nid] = e
    st.n_len[nid] = 0
    st.n_chain[nid] = -1
    st.n_next[nid] = -1
    st.n_flags[nid] = NF_ALIVE
    sc[R_STABLE_NODES] += 1
    s = st.c_stable[g]
    if s == -1:
        st.c_stable[g] = nid
    elif s >= 0:  # a plain node: a chain of both
        ch = sc[S_N_CHAINS]
        sc[S_N_CHAINS] += 1
        st.ch_gid[ch] = g
        st.ch_head[ch] = nid
        st.n_next[nid] = s
        st.n_next[s] = -1
        st.ch_ndups[ch] = 2
        st.ch_prune[ch] = sc[S_SCAN_START]
        st.ch_flags[ch] = CF_ALIVE
        st.n_chain[nid] = ch
        st.n_chain[s] = ch
        st.c_stable[g] = -(ch + 2)
        sc[R_CHAINS] += 1
        sc[R_STABLE_NODES] += 1
        sc[R_DUPS] += 2
        _mark_chain(st, ch)
    else:
        ch = -(s + 2)
        st.n_next[nid] = st.ch_head[ch]
        st.ch_head[ch] = nid
        st.n_chain[nid] = ch
        st.ch_ndups[ch] += 1
        sc[R_DUPS] += 1
        _mark_chain(st, ch)
    st.e_node[e] = nid
    if st.e_map[e] > 0:
        sc[R_KSM_PAGES] += 1
    sc[S_EVENTS] += 1
    return int(nid)


# ----------------------------------------------------------------------------- items


@hot
def _state(st: KState, it: int) -> int:
    b = st.it_bits[it]
    if b & IB_STABLE:
        if st.n_flags[st.it_node[it]] & NF_ALIVE:
            return STABLE
        st.it_bits[it] = b & (0xFF ^ IB_STABLE)  # its node was removed
        return NONE
    return UNSTABLE if b & IB_UNSTABLE else NONE


@hot
def _append(st: KState, it: int, mm: int, nd: int) -> None:
    """stable_tree_append."""
    sc = st.sc
    n = st.n_len[nd] + 1
    st.n_len[nd] = n
    if n == 1:
        sc[R_SHARED] += 1
    else:
        sc[R_SHARING] += 1
    st.it_bits[it] = IB_EXISTS | IB_STABLE
    st.it_node[it] = nd
    st.mm_merging[mm] += 1
    if st.n_chain[nd] >= 0:
        _mark_chain(st, st.n_chain[nd])
    sc[S_EVENTS] += 1


@hot
def _remove_from_tree(st: KState, it: int, mm: int) -> None:
    """remove_rmap_item_from_tree: the lazy effects of COW, unmap, exit."""
    sc = st.sc
    s = _state(st, it)
    if s == STABLE:
        nd = st.it_node[it]
        st.it_bits[it] &= 0xFF ^ IB_STABLE
        sc[S_EVENTS] += 1
        if _stale(st, nd):
            _remove_node(st, i64(nd), i64(-2))
            return
        n = st.n_len[nd] - 1
        st.n_len[nd] = n
        if n > 0:
            sc[R_SHARING] -= 1
        else:
            sc[R_SHARED] -= 1
        st.mm_merging[mm] -= 1
        if st.n_chain[nd] >= 0:
            _mark_chain(st, st.n_chain[nd])
    elif s == UNSTABLE:
        sc[R_UNSHARED] -= 1
        st.it_bits[it] &= 0xFF ^ (IB_UNSTABLE | IB_INTREE)


@hot
def _free_item(st: KState, it: int, mm: int) -> None:
    _remove_from_tree(st, it, mm)
    st.it_bits[it] = 0
    st.sc[R_RMAP] -= 1
    st.mm_rmap[mm] -= 1
    st.sc[S_EVENTS] += 1


# ----------------------------------------------------------------------------- THP


@hot
def _mm_range(st: KState, r: int) -> tuple[int, int, int]:
    """(mm, first row, end row) of the mm holding row ``r``."""
    i = np.searchsorted(st.lay_hi, r, side="right")
    return st.lay_mm[i], st.lay_lo[i], st.lay_hi[i]


@hot
def _block(st: KState, r: int, mm: int) -> int:
    """The unsplit huge page of row ``r`` as ``(mm << 27) | block``, or -1."""
    f = st.r_flags[r]
    if not f & RF_THP or f & RF_SPLIT:
        return -1
    return int((mm << 27) | (np.int64(st.r_page[r]) >> THP_SHIFT))


@kernel
def _split_block(st: KState, r: int, key: int) -> None:
    """KSM splits the huge page of row ``r``: every row in it is a small page now."""
    _, lo, hi = _mm_range(st, i64(r))
    blk = np.int64(st.r_page[r]) >> THP_SHIFT
    a = r
    while a > lo and np.int64(st.r_page[a - 1]) >> THP_SHIFT == blk:
        a -= 1
    b = r
    while b < hi and np.int64(st.r_page[b]) >> THP_SHIFT == blk:
        st.r_flags[b] |= RF_SPLIT
        b += 1
    for i in range(a, r):
        st.r_flags[i] |= RF_SPLIT
    st.split_out[st.sc[S_SPLIT_N]] = np.uint64(key)
    st.sc[S_SPLIT_N] += 1
    st.sc[S_EVENTS] += 1


@hot
def _split(st: KState, r: int, mm: int) -> None:
    key = _block(st, r, mm)
    if key >= 0:
        _split_block(st, i64(r), i64(key))


# ----------------------------------------------------------------------------- a visit


@hot
def _occupant(st: KState, g: int) -> int:
    """The row of content ``g`` in the unstable tree, or -1."""
    j = st.c_occ[g]
    if 0 <= j < st.sc[S_N_ROWS] and st.r_gid[j] == g and st.it_bits[j] & IB_INTREE:
        return int(j)
    return -1


@kernel
def _fork_join(st: KState, r: int, mm: int, node: int) -> None:
    """A KSM page whose item is elsewhere (a forked child): linked without the gate."""
    _remove_from_tree(st, r, mm)
    _append(st, r, mm, node)


@kernel
def _zero_merge(st: KState, r: int, mm: int) -> None:
    """use_zero_pages: the PTE maps the kernel zero page."""
    _replace(st, r, mm, ZERO)


@kernel
def _stable_search_walk(st: KState, g: int) -> int:
    """stable_tree_search when the walk has work (stale nodes, chains to visit)."""
    got = _walk(st, i64(1), i64(g))
    s = st.c_stable[g]
    if s == -1:
        return -1
    nd = s if s >= 0 else got
    return nd if nd >= 0 and _cand(st, nd, 0) else -1


@kernel
def _merge_stable(st: KState, r: int, mm: int, kd: int) -> None:
    """The page joins KSM page ``kd`` found in the stable tree."""
    _split(st, i64(r), i64(mm))
    _replace(st, r, mm, st.n_ent[kd])
    _append(st, r, mm, kd)


@kernel
def _merge_unstable(st: KState, r: int, mm: int, j: int, g: int) -> int:
    """The page pairs with row ``j`` found in the unstable tree; returns the path."""
    mmj = _mm_range(st, i64(j))[0]
    bi, bj = _block(st, r, mm), _block(st, j, mmj)
    if bi >= 0 and bi == bj:  # both halves of one THP: split it, merge next time
        _split_block(st, i64(r), i64(bi))
        return P_NOMERGE
    _split(st, i64(r), i64(mm))
    _split(st, i64(j), i64(mmj))
    e = st.r_phys[r]  # the scanned page becomes the KSM page, in place
    _remove_from_tree(st, j, mmj)
    _replace(st, j, mmj, e)
    nid = _stable_insert(st, i64(g), i64(e))
    _append(st, j, mmj, nid)
    _append(st, r, mm, nid)
    return P_MERGE


@hot
def _cmp_and_merge(st: KState, r: int, mm: int, existed: bool) -> int:
    """cmp_and_merge_page for row ``r`` (its item is ``r``); returns the path taken.

    The common outcomes are decided here; the merges are separate (compiled) steps.
    """
    sc = st.sc
    node = st.e_node[st.r_phys[r]]
    if node >= 0:
        if _state(st, r) == STABLE and st.it_node[r] == node:
            return P_KSM
        _fork_join(st, i64(r), i64(mm), i64(node))
        return P_FORK
    _remove_from_tree(st, r, mm)
    g = st.r_gid[r]
    if st.it_sum[r] != g:
        st.it_sum[r] = g
        sc[S_EVENTS] += 1
        return P_VOL if existed else P_FIRST
    fl = st.r_flags[r]
    written = g >= sc[S_N_CONTENTS]  # a content a write made: no other row has it
    held = fl & RF_HELD  # a content a write gave it that other rows hold (not the snapshot's)
    zero = fl & RF_HELD_ZERO if held else fl & RF_ZERO
    if sc[S_USE_ZERO] and zero and not written:
        _zero_merge(st, i64(r), i64(mm))
        return P_ZERO
    if (fl & RF_UNIQ and not held) or written:  # a pruning walk passes (its result cannot matter)
        if _walk_is_noop(st, True):
            sc[S_WALKS] += 1
        else:
            _walk(st, i64(1), i64(-1))
    else:
        s = st.c_stable[g]
        if s >= -1 and _walk_is_noop(st, True):
            sc[S_WALKS] += 1
            kd = s if s >= 0 and _cand(st, s, 0) else -1
        else:
            kd = _stable_search_walk(st, i64(g))
        if kd >= 0:
            _merge_stable(st, i64(r), i64(mm), i64(kd))
            return P_MERGE
        sc[S_WALK] = _tree_levels(sc[S_INSERTS])  # unstable_tree_search_insert's walk
        j = _occupant(st, g)
        if j >= 0:
            if st.r_phys[j] == st.r_phys[r]:  # the same physical page (forked, not yet KSM)
                return P_NOMERGE
            return _merge_unstable(st, i64(r), i64(mm), i64(j), i64(g))
        st.c_occ[g] = r
    st.it_bits[r] = IB_EXISTS | IB_UNSTABLE | IB_INTREE
    sc[R_UNSHARED] += 1
    sc[S_WALK] = _tree_levels(sc[S_INSERTS])
    sc[S_INSERTS] += 1
    return P_UNST


@hot
def _tree_levels(items: int) -> int:
    """planner.engine.cost.tree_levels: ceil(log2(items + 1))."""
    levels = 0
    while items > 0:
        items >>= 1
        levels += 1
    return levels


@hot
def _should_skip(st: KState, r: int, mm: int) -> bool:
    """Smart scan: age the item; skip it when its turn has not come."""
    if not st.sc[S_SMART] or st.e_node[st.r_phys[r]] >= 0:
        return False
    age = st.it_age[r]
    if age < 255:
        st.it_age[r] = age + 1
    if age < 3:
        return False
    rem = st.it_rem[r]
    if rem == 0:
        st.it_rem[r] = _SKIP_AGE[age]
        return False
    st.it_rem[r] = rem - 1
    st.sc[R_SKIPPED] += 1
    _remove_from_tree(st, r, mm)
    return True


# ----------------------------------------------------------------------------- the loop


@kernel
def start_scan(st: KState, now_ns: int) -> None:
    """A full scan starts: the unstable tree is emptied, the prune clock read."""
    sc = st.sc
    sc[S_SCAN_START] = now_ns
    sc[S_PRUNE_DONE] = 0
    sc[S_WALKS] = 0
    sc[S_INSERTS] = 0
    bits = st.it_bits
    for r in range(sc[S_N_ROWS]):
        if bits[r] & IB_INTREE:
            bits[r] &= 0xFF ^ IB_INTREE


@kernel
def run_batches(
    st: KState,
    seg_mm: Any,
    seg_lo: Any,
    seg_hi: Any,
    seg_olo: Any,
    seg_ohi: Any,
    cursor_page: int,
    plan: Any,
    costs: Any,
    out_t: Any,
    out_cpu: Any,
    out_rows: Any,
    out_paths: Any,
    out_bpaths: Any,
) -> tuple[int, int]:
    """Run batches along the cursor's path (segments: one mm each, the first one from
    ``cursor_page``); stop at the end of the scan, before a batch starting at or after
    the boundary, or when the output or the node room runs out.

    ``plan`` = (t0, pages_to_scan, batch overhead, scan-start cost, sleep, boundary, node
    room per batch, tick: the next batch starts as :func:`planner.engine.timing.next_batch_ns`
    says); ``out_bpaths`` gets each batch's visits per path (columns 0-8) and the
    unstable-tree levels they walked (columns 9-17), ``out_paths`` sums them; ``costs``
    holds a cost for each of the 18 columns. Returns (batches run, status); the cursor is
    left in ``sc``.
    """
    sc = st.sc
    n_rows = sc[S_N_ROWS]
    t, pts, overhead, start_cost, sleep, boundary, room, tick = plan
    nseg = seg_mm.size
    s = 0
    r = seg_lo[0] if nseg else 0
    o = seg_olo[0] if nseg else 0
    nb = 0
    status = ST_SCAN_END
    while True:
        if t >= boundary:
            status = ST_BOUNDARY
            break
        if nb >= out_t.size:
            status = ST_FULL
            break
        if (
            sc[S_N_NODES] + room > st.n_gid.size
            or sc[S_N_CHAINS] + room > st.ch_gid.size
            or sc[S_SPLIT_N] + 2 * room > st.split_out.size
        ):
            status = ST_GROW
            break
        budget = pts
        paths = out_bpaths[nb]
        paths[:] = 0
        while budget > 0 and s < nseg:
            mm = seg_mm[s]
            if o < seg_ohi[s] and (r >= seg_hi[s] or (st.o_key[o] & _PAGE_MASK) < st.r_page[r]):
                it = n_rows + o
                if st.it_bits[it] & IB_EXISTS:
                    _free_item(st, it, mm)
                o += 1
                continue
            if r < seg_hi[s]:
                if st.r_flags[r] & RF_ELIG and st.r_phys[r] != ZERO:
                    cursor_page = int(st.r_page[r]) + 1
                    existed = st.it_bits[r] & IB_EXISTS != 0
                    if not existed:
                        sc[S_EVENTS] += 1
                        st.it_bits[r] = IB_EXISTS
                        st.it_age[r] = 0
                        st.it_rem[r] = 0
                        st.it_node[r] = -1
                        st.it_sum[r] = NO_SUM
                        sc[R_RMAP] += 1
                        st.mm_rmap[mm] += 1
                    if _should_skip(st, r, mm):
                        paths[P_SKIP] += 1
                    else:
                        sc[S_WALK] = 0
                        p = _cmp_and_merge(st, r, mm, existed)
                        paths[p] += 1
                        paths[9 + p] += sc[S_WALK]
                        sc[R_SCANNED] += 1
                        budget -= 1
                elif st.it_bits[r] & IB_EXISTS:
                    _free_item(st, r, mm)
                r += 1
                continue
            s += 1  # the end of this mm's pass
            if s < nseg:
                r, o, cursor_page = seg_lo[s], seg_olo[s], 0
        ended = s >= nseg
        cpu = overhead + (start_cost if nb == 0 else 0)
        for p in range(18):
            cpu += paths[p] * costs[p]
            out_paths[p] += paths[p]
        if ended:
            sc[R_FULL_SCANS] += 1
        out_t[nb] = t
        out_cpu[nb] = cpu
        for c in range(N_ROW):
            out_rows[nb, c] = sc[c]
        nb += 1
        if ended:
            status = ST_SCAN_END
            break
        t = t + sleep + cpu // tick * tick  # timing.next_batch_ns
    sc[S_CUR_SEG] = s
    sc[S_CUR_PAGE] = cursor_page
    return nb, status


# ----------------------------------------------------------------------------- writes


@kernel
def apply_writes(st: KState, rows: Any, content: Any, snap_gid: Any, keep: Any) -> int:
    """Writes between snapshots (reference ``apply_writes``); returns the merges broken.

    ``rows`` ascending; ``content`` per row: -2 unchanged, -1 the snapshot's (``snap_gid``),
    a content id ``v >= 0`` (content ``n_contents + v``, which no snapshot row has), or
    ``v <= -3``: content ``(-3 - v) // 2``, which other rows of the snapshot hold
    (``RF_HELD``), zero-filled where ``(-3 - v) % 2`` (``RF_HELD_ZERO``).
    ``keep`` (empty, or per row): the row keeps its physical page (the write model's
    restore and reapply around a synthetic snapshot: no page is copied, no merge broken).
    The caller made room for one fresh physical page per row.
    """
    sc = st.sc
    n_contents = sc[S_N_CONTENTS]
    breaks = 0
    seg = 0
    for i in range(rows.size):
        r = rows[i]
        while st.lay_hi[seg] <= r:
            seg += 1
        mm = st.lay_mm[seg]
        e = st.r_phys[r]
        if (keep.size == 0 or not keep[i]) and (e == ZERO or st.e_node[e] >= 0 or st.e_map[e] > 1):
            if e != ZERO and st.e_node[e] >= 0:  # cow_ksm counts KSM pages only
                breaks += 1
            ne = sc[S_N_ENTS]
            sc[S_N_ENTS] += 1
            st.e_map[ne] = 0
            st.e_node[ne] = -1
            _replace(st, i64(r), i64(mm), i64(ne))
        v = content[i]
        if v == -2:
            continue
        if v <= -3:
            g = (-3 - v) // 2
            st.r_flags[r] |= RF_HELD
            if (-3 - v) % 2:
                st.r_flags[r] |= RF_HELD_ZERO
            else:
                st.r_flags[r] &= 0xFF ^ RF_HELD_ZERO
        else:
            g = snap_gid[r] if v == -1 else n_contents + v
            st.r_flags[r] &= 0xFF ^ (RF_HELD | RF_HELD_ZERO)
        if g != st.r_gid[r]:
            st.r_gid[r] = g
            st.it_bits[r] &= 0xFF ^ IB_INTREE
            sc[S_EVENTS] += 1
    return breaks


__all__ = ["apply_writes", "run_batches", "start_scan"]
