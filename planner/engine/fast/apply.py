"""A snapshot delta applied to the fast engine's state, in named steps.

The world moves from one snapshot to the next as the reference model's ``apply_snapshot``
says, but only the delta is read (:class:`planner.engine.rows.SnapshotDelta`): rows that
persist keep their state and, when no row appears or vanishes, stay in place. The steps:

1. :func:`row_arrays` -- the rows' page, content and flags; the items follow their
   (mm, page): an item whose page vanished becomes an orphan, an orphan whose page is back
   is attached again;
2. :func:`physical_pages` -- every row whose physical page is not carried gets the one its
   link names (a carried row's, an old row's, or a fresh one); new mappings are counted,
   then released ones (pages left without a mapper make their stable node stale);
3. :func:`tree_entries` -- unstable-tree entries of this scan follow their page if its
   content is unchanged; huge pages split by KSM; contents no other row has.

Exits and registrations (the mm list) are the engine's (:mod:`planner.engine.fast.engine`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from numba import njit

from planner.engine.fast.kernel import _acquire, _release
from planner.engine.fast.state import (
    IB_EXISTS,
    IB_INTREE,
    RF_SPLIT,
    RF_THP,
    RF_UNIQ,
    S_N_CONTENTS,
    S_N_ENTS,
    S_N_ORPH,
    S_N_ROWS,
    ZERO,
    KState,
)
from planner.engine.result import R_FRAMES_WITHOUT
from planner.engine.rows import L_CARRY, L_FRESH, L_OLD, L_ROW, MM_SHIFT, SnapshotDelta

if TYPE_CHECKING:
    from planner.engine.rows import MmLayout

I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]

ITEM_FIELDS = ("it_bits", "it_age", "it_rem", "it_node", "it_sum")
ITEM_FILL = {"it_bits": 0, "it_age": 0, "it_rem": 0, "it_node": -1, "it_sum": -1}


def _extend(a: npt.NDArray[Any], n: int, fill: int) -> npt.NDArray[Any]:
    if n <= a.size:
        return a
    out = np.full(max(n, a.size + a.size // 4), fill, a.dtype)
    out[: a.size] = a
    return out


def old_row_mm(st: KState, rows: I64 | I32) -> I32:
    """The mm of rows of the snapshot ``st`` holds."""
    i = np.searchsorted(st.lay_hi, rows, side="right")
    return st.lay_mm[i]


@dataclass
class Moves:
    """How the rows of the old snapshot map to the new one."""

    src: I32 | None  # per new row: its old row, -1 if added (None: rows stay in place)
    survivors_old: I32
    survivors_new: I32


def moves(d: SnapshotDelta) -> Moves:
    if d.removed.size == 0 and d.added.size == 0:
        return Moves(None, np.empty(0, np.int32), np.empty(0, np.int32))
    so, sn = d.survivors()
    src = np.full(d.n_rows, -1, np.int32)
    src[sn] = so
    return Moves(src, so, sn)


def _gather(a: npt.NDArray[Any], src: I32, fill: Any) -> npt.NDArray[Any]:
    out = a[np.maximum(src, 0)] if a.size else np.zeros(src.size, a.dtype)
    out[src < 0] = fill
    return out


def row_arrays(
    st: KState, d: SnapshotDelta, mv: Moves, g_upd: I32, layout: MmLayout
) -> tuple[KState, U64]:
    """New rows' page, content and flags; items follow their (mm, page) (orphans too).

    Returns the new state and the old physical pages (for the links to old rows).
    """
    n0, n1 = int(st.sc[S_N_ROWS]), d.n_rows
    n_orph = int(st.sc[S_N_ORPH])
    old_phys = st.r_phys[:n0]
    # orphans: still-existing old orphans, plus the items of vanished rows
    live_o = np.flatnonzero(st.it_bits[n0 : n0 + n_orph] & IB_EXISTS)
    gone = d.removed[(st.it_bits[d.removed] & IB_EXISTS) != 0] if n0 else d.removed
    o_key = np.concatenate(
        [
            st.o_key[live_o],
            (old_row_mm(st, gone).astype(np.uint64) << MM_SHIFT) | st.r_page[gone],
        ]
    )
    o_mm = np.concatenate([st.o_mm[live_o], old_row_mm(st, gone)]).astype(np.int32)
    o_items = {f: np.concatenate([getattr(st, f)[n0 + live_o], getattr(st, f)[gone]]) for f in ITEM_FIELDS}
    order = np.argsort(o_key, kind="stable")
    o_key, o_mm = o_key[order], o_mm[order]
    o_items = {f: v[order] for f, v in o_items.items()}
    o_items["it_bits"] &= 0xFF ^ IB_INTREE
    # rows: pages, contents, flags
    if mv.src is None:
        r_page, r_gid, r_flags = st.r_page, st.r_gid, st.r_flags
        items = {f: getattr(st, f)[:n1] for f in ITEM_FIELDS}
    else:
        r_page = _gather(st.r_page[:n0], mv.src, 0)
        r_gid = _gather(st.r_gid[:n0], mv.src, -1)
        r_flags = _gather(st.r_flags[:n0], mv.src, 0)
        items = {f: _gather(getattr(st, f)[:n0], mv.src, ITEM_FILL[f]) for f in ITEM_FIELDS}
    r_page[d.added] = d.added_page
    # unstable-tree entries: dropped where the content changed (below: flags, zero pages)
    upd = d.upd
    changed = r_gid[upd] != g_upd
    items["it_bits"][upd[changed]] &= 0xFF ^ IB_INTREE
    r_gid[upd] = g_upd
    r_flags[upd] = d.upd_flags
    # orphans whose page is back are attached again
    if d.added.size and o_key.size:
        a_key = (layout.mm_of_rows()[d.added].astype(np.uint64) << MM_SHIFT) | d.added_page
        pos = np.minimum(np.searchsorted(o_key, a_key), o_key.size - 1)
        hit = o_key[pos] == a_key
        back = pos[hit]
        for f in ITEM_FIELDS:
            items[f][d.added[hit]] = o_items[f][back]
        keep = np.ones(o_key.size, bool)
        keep[back] = False
        o_key, o_mm = o_key[keep], o_mm[keep]
        o_items = {f: v[keep] for f, v in o_items.items()}
    st = st._replace(
        r_page=r_page,
        r_gid=r_gid,
        r_flags=r_flags,
        o_key=o_key,
        o_mm=o_mm,
        **{f: np.concatenate([items[f], o_items[f]]) for f in ITEM_FIELDS},
    )
    st.sc[S_N_ORPH] = o_key.size
    return st, old_phys


@njit(cache=True, nogil=True, _nrt=False)  # no allocation: no reference counting
def _count_mappings(st: KState, ents: Any, mms: Any, acquire: bool) -> None:
    for i in range(ents.size):
        if acquire:
            _acquire(st, ents[i], mms[i])
        else:
            _release(st, ents[i], mms[i])


def physical_pages(
    st: KState, d: SnapshotDelta, mv: Moves, old_phys: I32, old_layout: tuple[I32, I64]
) -> KState:
    """Each row's physical page; new mappings counted first, then the released ones."""
    n1 = d.n_rows
    base = int(st.sc[S_N_ENTS])
    if mv.src is None:
        phys = old_phys.copy() if old_phys.size == n1 else np.zeros(n1, np.int32)
    else:
        phys = _gather(old_phys, mv.src, 0)
    kind, link = d.upd_link_kind, d.upd_link
    moved = kind != L_CARRY
    u = d.upd[moved]
    k_m, l_m = kind[moved], link[moved]
    vals = np.empty(u.size, np.int32)
    m = k_m == L_FRESH
    vals[m] = base + l_m[m]
    m = k_m == L_OLD
    vals[m] = old_phys[l_m[m]]
    m = k_m == L_ROW
    vals[m] = phys[l_m[m]]  # carried rows already hold theirs
    phys[u] = vals
    n_ents = base + d.n_fresh
    st = st._replace(
        r_phys=phys,
        e_map=_extend(st.e_map, n_ents, 0),
        e_node=_extend(st.e_node, n_ents, -1),
    )
    st.sc[S_N_ENTS] = n_ents
    new_mm = d.layout.mm_of_rows()
    _count_mappings(st, vals, new_mm[u], True)
    released = np.concatenate([d.removed, d.upd_old[moved & (d.upd_old >= 0)]])
    if released.size:
        lay_mm, lay_hi = old_layout
        mm_r = lay_mm[np.searchsorted(lay_hi, released, side="right")]
        _count_mappings(st, old_phys[released], mm_r, False)
    return st


@njit(cache=True, nogil=True)
def _unique_flags(r_gid: Any, r_flags: Any, n_contents: int) -> None:
    count = np.zeros(n_contents, np.int32)
    for r in range(r_gid.size):
        count[r_gid[r]] += 1
    for r in range(r_gid.size):
        if count[r_gid[r]] == 1:
            r_flags[r] |= RF_UNIQ
        else:
            r_flags[r] &= (0xFF ^ RF_UNIQ)


def tree_entries(st: KState, d: SnapshotDelta, split_keys: U64) -> None:
    """Unstable entries, split huge pages and unique contents of the new rows."""
    bits = st.it_bits
    n1 = d.n_rows
    elig = (st.r_flags & 1) != 0
    drop = (~elig) | (st.r_phys == ZERO)
    bits[:n1][drop] &= 0xFF ^ IB_INTREE
    rows = np.flatnonzero(bits[:n1] & IB_INTREE)
    st.c_occ[st.r_gid[rows]] = rows
    thp = np.flatnonzero(st.r_flags & RF_THP)
    st.r_flags[thp] &= 0xFF ^ RF_SPLIT
    if thp.size and split_keys.size:
        mm = d.layout.mm_of_rows()[thp].astype(np.int64)
        key = (mm << 27) | (st.r_page[thp] >> np.uint64(9)).astype(np.int64)
        st.r_flags[thp[np.isin(key.astype(np.uint64), split_keys)]] |= RF_SPLIT
    _unique_flags(st.r_gid, st.r_flags, int(st.sc[S_N_CONTENTS]))


def apply_delta(st: KState, d: SnapshotDelta, split_keys: U64) -> KState:
    """The state after snapshot ``d`` (see the module notes)."""
    old_layout = (st.lay_mm, st.lay_hi)
    g_upd = d.upd_gid
    mv = moves(d)
    st, old_phys = row_arrays(st, d, mv, g_upd, d.layout)
    st = physical_pages(st, d, mv, old_phys, old_layout)
    st = st._replace(lay_mm=d.layout.present, lay_lo=d.layout.lo, lay_hi=d.layout.hi)
    st.sc[S_N_ROWS] = d.n_rows
    st.sc[R_FRAMES_WITHOUT] = d.n_frames
    tree_entries(st, d, split_keys)
    return st


__all__ = ["apply_delta"]
