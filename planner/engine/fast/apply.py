"""A snapshot delta applied to the fast engine's state, in named steps.

The world moves from one snapshot to the next as the reference model's ``apply_snapshot``
says, but only the delta is read (:class:`planner.engine.rows.SnapshotDelta`): rows that
persist keep their state, in place when no row appears or vanishes. The steps:

1. :func:`orphans_after` -- the items whose page is absent after the snapshot: the ones
   already absent, and those of vanished rows (an orphan whose page is back is attached
   again by the next step);
2. :func:`move_rows` -- every row array follows its (mm, page) to its new position, one
   array at a time (peak memory: one array twice, not the state twice);
3. :func:`physical_pages` -- every row whose physical page is not carried gets the one its
   link names (a carried row's, an old row's, or a fresh one); new mappings are counted,
   then released ones (a page left without a mapper makes its stable node stale);
4. :func:`tree_entries` -- unstable-tree entries of this scan follow their page if its
   content is unchanged; huge pages split by KSM; contents no other row has;
5. :func:`compact_entities` -- physical pages nobody maps any more are dropped when they
   are a quarter of all (a day of snapshots would otherwise grow them without bound).

Exits and registrations (the mm list) are the engine's (:mod:`planner.engine.fast.engine`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from planner._heap import release_memory
from planner.engine.fast._jit import jit, kernel
from planner.engine.fast.kernel import _acquire, _release
from planner.engine.fast.state import (
    IB_EXISTS,
    IB_INTREE,
    RF_ELIG,
    RF_SPLIT,
    RF_THP,
    RF_UNIQ,
    S_N_CONTENTS,
    S_N_ENTS,
    S_N_NODES,
    S_N_ORPH,
    S_N_ROWS,
    ZERO,
    KState,
)
from planner.engine.result import R_FRAMES_WITHOUT
from planner.engine.rows import L_CARRY, L_FRESH, L_OLD, MM_SHIFT, SnapshotDelta

I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]

ITEM_FIELDS = ("it_bits", "it_age", "it_rem", "it_node", "it_sum")
ITEM_FILL = {"it_bits": 0, "it_age": 0, "it_rem": 0, "it_node": -1, "it_sum": -1}


def _mm_of(lay_mm: I32, lay_hi: I64, rows: npt.NDArray[np.integer[Any]]) -> I32:
    """The mm of some rows of a snapshot (from its layout)."""
    return lay_mm[np.searchsorted(lay_hi, rows, side="right")]


@jit
def _survivor_map(removed: Any, added: Any, src: Any) -> None:
    """``src[new row]`` = its old row, or -1 for an added one (both lists sorted)."""
    i_old = ir = ia = 0
    for j in range(src.size):
        if ia < added.size and added[ia] == j:
            src[j] = -1
            ia += 1
            continue
        while ir < removed.size and removed[ir] == i_old:
            i_old += 1
            ir += 1
        src[j] = i_old
        i_old += 1


@jit
def _take(a: Any, src: Any, fill: Any, out: Any) -> None:
    for j in range(src.size):
        out[j] = a[src[j]] if src[j] >= 0 else fill


@dataclass
class Orphans:
    """Items whose (mm, page) is absent from the snapshot, sorted by key."""

    key: U64
    mm: I32
    items: dict[str, npt.NDArray[Any]]

    def take(self, keep: npt.NDArray[np.bool_]) -> Orphans:
        return Orphans(self.key[keep], self.mm[keep], {f: v[keep] for f, v in self.items.items()})


def orphans_after(st: KState, d: SnapshotDelta) -> Orphans:
    """Existing orphans, and the items of rows that vanish; not in any unstable tree."""
    n0 = int(st.sc[S_N_ROWS])
    n_orph = int(st.sc[S_N_ORPH])
    live = n0 + np.flatnonzero(st.it_bits[n0 : n0 + n_orph] & IB_EXISTS)
    gone = d.removed[(st.it_bits[d.removed] & IB_EXISTS) != 0] if n0 else d.removed
    gone_mm = _mm_of(st.lay_mm, st.lay_hi, gone)
    key = np.concatenate(
        [st.o_key[live - n0], (gone_mm.astype(np.uint64) << MM_SHIFT) | st.r_page[gone]]
    )
    order = np.argsort(key, kind="stable")
    items = {
        f: np.concatenate([getattr(st, f)[live], getattr(st, f)[gone]])[order] for f in ITEM_FIELDS
    }
    items["it_bits"] &= 0xFF ^ IB_INTREE
    mm = np.concatenate([st.o_mm[live - n0], gone_mm]).astype(np.int32)[order]
    return Orphans(key[order], mm, items)


class Holder(Protocol):
    """What holds the state while a snapshot is applied: each step replaces the arrays it
    rebuilds in ``st`` (the only reference), so an old array is freed as soon as its new
    one exists."""

    st: KState


def move_rows(h: Holder, d: SnapshotDelta, src: I32 | None, orph: Orphans) -> None:
    """Rows (page, content, flags, items) at their new positions; orphans back attached."""
    n1 = d.n_rows
    # orphans whose page is back: attached again to their row
    back_rows = np.empty(0, np.int64)
    back = np.empty(0, np.int64)
    if d.added.size and orph.key.size:
        a_mm = _mm_of(d.layout.present, d.layout.hi, d.added)
        a_key = (a_mm.astype(np.uint64) << MM_SHIFT) | d.added_page
        pos = np.minimum(np.searchsorted(orph.key, a_key), orph.key.size - 1)
        hit = orph.key[pos] == a_key
        back_rows, back = d.added[hit], pos[hit]
        keep = np.ones(orph.key.size, bool)
        keep[back] = False
    fields: list[tuple[str, Any]] = [("r_page", 0), ("r_gid", -1), ("r_flags", 0)]
    fields += [(f, ITEM_FILL[f]) for f in ITEM_FIELDS]
    for name, fill in fields:
        old = getattr(h.st, name)
        is_item = name.startswith("it_")
        size = n1 + (orph.key.size - back.size if is_item else 0)
        new = np.empty(size, old.dtype)
        if src is None:
            new[:n1] = old[:n1]
        else:
            _take(old, src, old.dtype.type(fill), new[:n1])
        if is_item:
            new[back_rows] = orph.items[name][back]
            rest = orph.items[name] if back.size == 0 else orph.items[name][keep]
            new[n1:] = rest
        h.st = h.st._replace(**{name: new})
        del old, new
        release_memory()
    if back.size:
        orph = orph.take(keep)
    h.st = st = h.st._replace(o_key=orph.key, o_mm=orph.mm)
    st.sc[S_N_ORPH] = orph.key.size
    st.r_page[d.added] = d.added_page
    # unstable-tree entries are dropped where the content changed
    upd = d.upd
    changed = st.r_gid[upd] != d.upd_gid
    st.it_bits[upd[changed]] &= 0xFF ^ IB_INTREE
    st.r_gid[upd] = d.upd_gid
    st.r_flags[upd] = d.upd_flags


@kernel
def _link_pages(
    st: KState,
    old_phys: Any,
    upd: Any,
    kind: Any,
    link: Any,
    base: int,
    lay_mm: Any,
    lay_hi: Any,
) -> None:
    """Rows whose physical page is not carried take the one their link names; each new
    mapping is counted (the rows' new physical pages are in ``st.r_phys``)."""
    phys = st.r_phys
    seg = 0
    for i in range(upd.size):
        k = kind[i]
        if k == L_CARRY:
            continue
        r = upd[i]
        if k == L_FRESH:
            e = base + link[i]
        elif k == L_OLD:
            e = old_phys[link[i]]
        else:  # L_ROW: a carried row, which already holds its page
            e = phys[link[i]]
        phys[r] = e
        while lay_hi[seg] <= r:  # rows come in order: the mm of row r
            seg += 1
        _acquire(st, e, lay_mm[seg])


@kernel
def _release_old(
    st: KState, old_phys: Any, rows: Any, upd_old: Any, kind: Any, lay_mm: Any, lay_hi: Any
) -> None:
    """The old rows whose mapping went away (vanished, or not carried) are uncounted."""
    for i in range(rows.size + upd_old.size):
        if i < rows.size:
            r = rows[i]
        else:
            j = i - rows.size
            if kind[j] == L_CARRY or upd_old[j] < 0:
                continue
            r = upd_old[j]
        _release(st, old_phys[r], lay_mm[np.searchsorted(lay_hi, r, side="right")])


def physical_pages(
    h: Holder, d: SnapshotDelta, src: I32 | None, old_layout: tuple[I32, I64]
) -> None:
    """Each row's physical page; new mappings counted first, then the released ones."""
    st = h.st
    n0, n1 = int(st.sc[S_N_ROWS]), d.n_rows
    base = int(st.sc[S_N_ENTS])
    n_ents = base + d.n_fresh
    if n_ents > st.e_map.size:  # room for the fresh pages, before the rows move
        h.st = st = st._replace(e_map=_extend(st.e_map, n_ents, 0))
        h.st = st = st._replace(e_node=_extend(st.e_node, n_ents, -1))
        release_memory()
    st.sc[S_N_ENTS] = n_ents
    old_phys = st.r_phys
    phys = np.empty(n1, np.int32)
    if src is None:
        phys[:] = old_phys[:n1]
    else:
        _take(old_phys[:n0], src, np.int32(0), phys)
    h.st = st = st._replace(r_phys=phys)
    lay = d.layout
    _link_pages(st, old_phys, d.upd, d.upd_link_kind, d.upd_link, base, lay.present, lay.hi)
    _release_old(st, old_phys, d.removed, d.upd_old, d.upd_link_kind, *old_layout)


def _extend(a: npt.NDArray[Any], n: int, fill: int) -> npt.NDArray[Any]:
    if n <= a.size:
        return a
    out = np.full(max(n, a.size + a.size // 4), fill, a.dtype)
    out[: a.size] = a
    return out


#: no contents
_NONE: I64 = np.empty(0, np.int64)


@jit
def _unique_flags(r_gid: Any, r_flags: Any, n_contents: int, shared: Any) -> None:
    count = np.zeros(n_contents, np.int32)
    for r in range(r_gid.size):
        count[r_gid[r]] += 1
    for i in range(shared.size):  # contents a write may give: another row may hold them
        count[shared[i]] += 2
    for r in range(r_gid.size):
        if count[r_gid[r]] == 1:
            r_flags[r] |= RF_UNIQ
        else:
            r_flags[r] &= 0xFF ^ RF_UNIQ


@jit
def _tree_entries(r_flags: Any, r_phys: Any, r_gid: Any, it_bits: Any, c_occ: Any) -> None:
    """Entries of rows no longer eligible or on the zero page go; the others are found."""
    for r in range(r_flags.size):
        if it_bits[r] & IB_INTREE:
            if not r_flags[r] & RF_ELIG or r_phys[r] == ZERO:
                it_bits[r] &= 0xFF ^ IB_INTREE
            else:
                c_occ[r_gid[r]] = r


def tree_entries(st: KState, d: SnapshotDelta, split_keys: U64, shared: I64) -> None:
    """Unstable entries, split huge pages and unique contents of the new rows (a row whose
    content no other row has; ``shared``: contents a write may give a row, never unique)."""
    _tree_entries(st.r_flags, st.r_phys, st.r_gid, st.it_bits, st.c_occ)
    thp = np.flatnonzero(st.r_flags & RF_THP)
    st.r_flags[thp] &= 0xFF ^ RF_SPLIT
    if thp.size and split_keys.size:
        mm = _mm_of(d.layout.present, d.layout.hi, thp).astype(np.int64)
        key = (mm << 27) | (st.r_page[thp] >> np.uint64(9)).astype(np.int64)
        st.r_flags[thp[np.isin(key.astype(np.uint64), split_keys)]] |= RF_SPLIT
    _unique_flags(st.r_gid, st.r_flags, int(st.sc[S_N_CONTENTS]), shared)


#: unmapped physical pages worth a renumbering (at least a quarter of all, too)
COMPACT_MIN_DEAD = 1 << 16


@jit
def _compact_entities(st: KState, n: int) -> int:
    """Renumber in place the first ``n`` physical pages: mapped ones keep their order, the
    others become the one unmapped id returned (stale nodes still point at it)."""
    e_map, e_node, phys, n_ent = st.e_map, st.e_node, st.r_phys, st.n_ent  # locals: no NRT
    new_id = np.empty(n, np.int32)
    live = 0
    for e in range(n):
        if e_map[e] > 0:
            new_id[e] = live
            e_map[live] = e_map[e]
            e_node[live] = e_node[e]
            live += 1
        else:
            new_id[e] = -1
    e_map[live:n] = 0  # the unmapped id, and room for the next fresh pages
    e_node[live:n] = -1
    for r in range(st.sc[S_N_ROWS]):
        p = phys[r]
        if p != ZERO:
            phys[r] = new_id[p] if new_id[p] >= 0 else live
    for nd in range(st.sc[S_N_NODES]):
        e = n_ent[nd]
        n_ent[nd] = new_id[e] if new_id[e] >= 0 else live
    return live


def compact_entities(h: Holder, min_dead: int = COMPACT_MIN_DEAD) -> None:
    """Renumber the physical pages still mapped (order kept); stale nodes' pages share one
    unmapped id. Done when unmapped pages are a quarter of all and at least ``min_dead``."""
    st = h.st
    n = int(st.sc[S_N_ENTS])
    n_live = int(np.count_nonzero(st.e_map[:n] > 0))
    if n - n_live < max(n // 4, min_dead, 1):
        return
    st.sc[S_N_ENTS] = _compact_entities(st, n) + 1


def apply_delta(
    h: Holder,
    d: SnapshotDelta,
    split_keys: U64,
    compact_min_dead: int = COMPACT_MIN_DEAD,
    shared: I64 = _NONE,
) -> None:
    """``h.st`` becomes the state after snapshot ``d`` (see the module notes; ``shared``:
    the contents a write may give a row, :func:`tree_entries`)."""
    old_layout = (h.st.lay_mm, h.st.lay_hi)
    src: I32 | None = None
    if d.removed.size or d.added.size:
        src = np.empty(d.n_rows, np.int32)
        _survivor_map(d.removed, d.added, src)
    orph = orphans_after(h.st, d)
    physical_pages(h, d, src, old_layout)
    release_memory()
    move_rows(h, d, src, orph)
    del src, orph, old_layout
    h.st = h.st._replace(lay_mm=d.layout.present, lay_lo=d.layout.lo, lay_hi=d.layout.hi)
    h.st.sc[S_N_ROWS] = d.n_rows
    h.st.sc[R_FRAMES_WITHOUT] = d.n_frames
    tree_entries(h.st, d, split_keys, shared)
    compact_entities(h, compact_min_dead)
    release_memory()


__all__ = ["apply_delta", "release_memory"]
