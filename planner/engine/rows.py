"""Snapshot rows and snapshot deltas: what ksmd could see, and how it changes.

A replay input holds the first snapshot in full and every later snapshot as a
:class:`SnapshotDelta` against the one before it: the rows that vanished, the rows that
appeared, the rows whose content, frame or flags changed, and for every row whose physical
page is not the one it had (new, written, copied-on-write) where that physical page comes
from. A day of hourly snapshots that mostly repeat costs what changed, not 24 tables.

Rows are sorted by ``(mm, page)``; a row's *key* is ``(mm << 36) | page`` (user pages are
below ``2**35``). Positions are row indexes (int32: up to 2**31 rows per snapshot).

Physical pages (the engines' *entities*) follow the trace's frame ids:

* a row whose (mm, page) persists with the same content and frame keeps its physical page
  (possibly a KSM page in the replay): link :data:`L_CARRY` (or no entry at all);
* otherwise it maps the physical page of another row with the same frame and content -- a
  carried row of the same snapshot (:data:`L_ROW`, a forked child) or a row of the previous
  snapshot (:data:`L_OLD`, e.g. a child whose parent exited after the fork) -- preferring the
  parent process's row at the same page;
* otherwise it gets a fresh physical page (:data:`L_FRESH`), shared by the rows of one
  (frame, content); fresh pages are numbered in order of their first row.

:meth:`ReplayInputRows.rows` rebuilds any snapshot in full (:class:`SnapshotRows`) and
:func:`transition` expands a delta into per-row arrays; the reference model replays those.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import numpy.typing as npt

from planner._idtable import FingerprintIdTable
from planner._jit import compiled_on_first_call

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
#: what tells contents apart: 64-bit hashes, or content ids as unsigned 32-bit integers
Contents = npt.NDArray[np.unsignedinteger[Any]]
#: frame ids: 32-bit where every id of a snapshot fits (a capture numbers its frames from
#: 1), else 64-bit (an ingested trace's opaque ids)
Frames = npt.NDArray[np.unsignedinteger[Any]]
U8 = npt.NDArray[np.uint8]
B = npt.NDArray[np.bool_]
_Built = TypeVar("_Built")  # what SnapshotSequence rebuilds: whole snapshots, or pages

MM_SHIFT = np.uint64(36)  # row key = (mm << 36) | page number
PAGE_BITS = (1 << 36) - 1  # (a Python int: what compiled code folds in)
PAGE_MASK = np.uint64(PAGE_BITS)

#: row flags (``SnapshotRows.flags``, ``SnapshotDelta.upd_flags``)
F_ELIGIBLE, F_ZERO, F_THP = 1, 2, 4

#: where a row's physical page comes from (``SnapshotDelta.upd_link_kind``)
L_CARRY, L_FRESH, L_ROW, L_OLD = 0, 1, 2, 3


def row_keys(mm: npt.NDArray[np.integer[Any]], page: U64) -> U64:
    """``(mm << 36) | page`` for each row."""
    return (mm.astype(np.uint64) << MM_SHIFT) | page


def isin(values: npt.NDArray[Any], of: npt.NDArray[Any], *, of_sorted: bool = False) -> B:
    """``np.isin(values, of)`` by binary search in ``of`` (sorted here unless ``of_sorted``).

    numpy 2.x's ``np.isin`` on millions of 64-bit keys goes through a hashed ``unique`` of
    both arrays and took 3-5 s for 4M keys on these machines; a sort and ``searchsorted``
    take 0.1-0.3 s, for the same answer."""
    if of.size == 0 or values.size == 0:
        return np.zeros(values.shape, bool)
    ref = of if of_sorted else np.sort(of)
    pos = np.minimum(np.searchsorted(ref, values), ref.size - 1)
    return np.asarray(ref[pos] == values, dtype=bool)


@dataclass(frozen=True)
class MmLayout:
    """Which mms a snapshot holds and where their rows are."""

    present: I32  # mm ids present (sorted)
    lo: I64  # row range [lo, hi) of each present mm
    hi: I64
    mergeable: B  # per present mm: has at least one VM_MERGEABLE mapping

    def rows_of(self, mm: int) -> tuple[int, int]:
        """Row range [lo, hi) of ``mm`` (empty when absent)."""
        i = int(np.searchsorted(self.present, mm))
        if i < self.present.size and self.present[i] == mm:
            return int(self.lo[i]), int(self.hi[i])
        return 0, 0

    def rows_of_many(self, mms: I64) -> tuple[I64, I64]:
        """:meth:`rows_of` of each of ``mms``: their rows' starts and ends (empty ranges for
        the absent), in one search."""
        if not self.present.size:
            return np.zeros(mms.size, np.int64), np.zeros(mms.size, np.int64)
        i = np.minimum(np.searchsorted(self.present, mms), self.present.size - 1)
        here = self.present[i] == mms
        return np.where(here, self.lo[i], 0), np.where(here, self.hi[i], 0)

    def mm_of_rows(self) -> I32:
        """The mm of every row."""
        return np.repeat(self.present, (self.hi - self.lo)).astype(np.int32)

    def is_mergeable(self, mm: int) -> bool:
        """Whether present ``mm`` has a VM_MERGEABLE mapping."""
        i = int(np.searchsorted(self.present, mm))
        return bool(i < self.present.size and self.present[i] == mm and self.mergeable[i])

    @property
    def n(self) -> int:
        """Number of rows."""
        return int(self.hi[-1]) if self.hi.size else 0


@dataclass
class SnapshotRows:
    """The pages of one snapshot as ksmd could see them, in full, sorted by (mm, page)."""

    index: int
    time_ns: int
    mm: I32
    page: U64  # virtual page number (address // page size)
    hash: U64
    frame: U64  # trace frame id (equal within a snapshot <=> same physical page at capture)
    flags: U8  # F_ELIGIBLE | F_ZERO | F_THP
    layout: MmLayout
    n_frames: int  # distinct trace frames (physical pages without KSM)
    _groups: tuple[U64, I32] | None = field(default=None, repr=False)
    #: each row's content id (``ReplayInput.content_hash`` of it is its hash), where the rows
    #: were rebuilt from deltas (:func:`apply_delta`); None elsewhere
    content: I32 | None = field(default=None, repr=False)

    @property
    def n(self) -> int:
        """Number of rows."""
        return int(self.mm.size)

    @property
    def zero(self) -> B:
        """Zero-filled content."""
        return np.asarray((self.flags & F_ZERO) != 0)

    @property
    def thp(self) -> B:
        """Mapped by a transparent huge page."""
        return np.asarray((self.flags & F_THP) != 0)

    @property
    def eligible(self) -> B:
        """VM_MERGEABLE under the policy."""
        return np.asarray((self.flags & F_ELIGIBLE) != 0)

    @property
    def mm_present(self) -> I32:
        """mms present in this snapshot (sorted)."""
        return self.layout.present

    @property
    def mm_lo(self) -> I64:
        """First row of each present mm."""
        return self.layout.lo

    @property
    def mm_hi(self) -> I64:
        """End row of each present mm."""
        return self.layout.hi

    @property
    def mm_mergeable(self) -> B:
        """Per present mm: has at least one VM_MERGEABLE mapping."""
        return self.layout.mergeable

    def groups(self) -> tuple[U64, I32]:
        """Distinct contents (sorted hashes) and each row's content index, computed once."""
        if self._groups is None:
            gkey, gid = np.unique(self.hash, return_inverse=True)
            self._groups = (gkey, gid.reshape(-1).astype(np.int32))
        return self._groups

    def keys(self) -> U64:
        """Row keys ``(mm << 36) | page``, sorted."""
        return row_keys(self.mm, self.page)

    def rows_of(self, mm: int) -> tuple[int, int]:
        """Row range [lo, hi) of ``mm`` (empty when absent)."""
        return self.layout.rows_of(mm)


@dataclass(frozen=True)
class SnapshotDelta:
    """Snapshot ``index`` as changes to the snapshot before it.

    ``removed`` are old positions of rows whose (mm, page) vanished; ``added`` the new
    positions of rows whose (mm, page) is new, with their pages. ``upd`` lists, sorted, the
    new positions of every added row and of every persisting row whose content, frame or
    flags changed, with the new values and, for each, where its physical page comes from
    (``upd_link_kind`` / ``upd_link``: :data:`L_CARRY`; :data:`L_FRESH` and a fresh-page
    number; :data:`L_ROW` and a new position; :data:`L_OLD` and an old position).
    ``upd_old`` is the old position of a changed row (-1 for an added one); ``upd_gid`` its
    content id (dense, in order of first appearance over the trace). A row's hash is its
    content id's (``ReplayInput.content_hash``): a delta keeps no hash column of its own,
    8 bytes a row of the first snapshot (docs/engine.md, "The deltas keep content ids").
    """

    index: int
    time_ns: int
    n_rows: int
    n_old: int
    n_frames: int
    layout: MmLayout
    removed: I32
    added: I32
    added_page: U64
    upd: I32
    upd_old: I32
    upd_frame: Frames
    upd_flags: U8
    upd_link_kind: npt.NDArray[np.int8]
    upd_link: I32
    n_fresh: int
    upd_gid: I32  # content id of each upd row (see ContentCatalog)

    @property
    def nbytes(self) -> int:
        """Memory held by the delta's arrays."""
        return sum(v.nbytes for v in vars(self).values() if isinstance(v, np.ndarray))

    def survivors(self) -> tuple[I32, I32]:
        """(old positions, new positions) of the rows whose (mm, page) persists, in order."""
        keep = np.ones(self.n_old, bool)
        keep[self.removed] = False
        stay = np.ones(self.n_rows, bool)
        stay[self.added] = False
        return (
            np.flatnonzero(keep).astype(np.int32),
            np.flatnonzero(stay).astype(np.int32),
        )


@dataclass
class Transition:
    """A delta expanded to per-row arrays of the new snapshot (-1: none), for the reference.

    ``carry_src``: old row whose physical page this row keeps; ``inherit_src``: carried row
    of this snapshot whose physical page it maps; ``inherit_old``: old row whose physical
    page it maps; ``fresh_group``: fresh physical page; ``same_content_src``: old row at the
    same (mm, page) with the same content; ``key_src``: old row at the same (mm, page);
    ``released_old``: old rows whose mapping went away (not carried).
    """

    carry_src: I64
    inherit_src: I64
    inherit_old: I64
    fresh_group: I64
    n_fresh: int
    same_content_src: I64
    key_src: I64
    released_old: I64


def transition(old: SnapshotRows | None, new: SnapshotRows, delta: SnapshotDelta) -> Transition:
    """Per-row transition arrays of ``new`` from ``delta`` (``old`` is the snapshot before)."""
    n = new.n
    key_src = np.full(n, -1, np.int64)
    if old is not None:
        so, sn = delta.survivors()
        key_src[sn] = so
    carry = key_src.copy()
    same = key_src.copy()
    inherit = np.full(n, -1, np.int64)
    inherit_old = np.full(n, -1, np.int64)
    fresh = np.full(n, -1, np.int64)
    u = delta.upd.astype(np.int64)
    kind = delta.upd_link_kind
    moved = kind != L_CARRY
    carry[u[moved]] = -1
    if old is not None:
        ks = key_src[u]
        differs = ks < 0
        differs[~differs] = old.hash[ks[~differs]] != new.hash[u[~differs]]
        same[u[differs]] = -1
    link = delta.upd_link.astype(np.int64)
    inherit[u[kind == L_ROW]] = link[kind == L_ROW]
    inherit_old[u[kind == L_OLD]] = link[kind == L_OLD]
    fresh[u[kind == L_FRESH]] = link[kind == L_FRESH]
    released = np.ones(old.n if old is not None else 0, bool)
    released[carry[carry >= 0]] = False
    return Transition(
        carry_src=carry,
        inherit_src=inherit,
        inherit_old=inherit_old,
        fresh_group=fresh,
        n_fresh=delta.n_fresh,
        same_content_src=same,
        key_src=key_src,
        released_old=np.flatnonzero(released).astype(np.int64),
    )


def _apply_pages(
    old: U64 | None, delta: SnapshotDelta, survivors: tuple[I32, I32] | None = None
) -> U64:
    """The page column of ``delta``'s snapshot, from the one before (``survivors``:
    :meth:`SnapshotDelta.survivors`, if the caller has them)."""
    page = np.empty(delta.n_rows, np.uint64)
    if old is not None and delta.n_old:
        so, sn = delta.survivors() if survivors is None else survivors
        page[sn] = old[so]
    page[delta.added] = delta.added_page
    return page


def apply_delta(old: SnapshotRows | None, delta: SnapshotDelta, content_hash: U64) -> SnapshotRows:
    """The full rows of ``delta``'s snapshot, from the snapshot before it (``content_hash``:
    the hash of each content id, ``ReplayInput.content_hash``)."""
    n = delta.n_rows
    hash_ = np.empty(n, np.uint64)
    frame = np.empty(n, np.uint64)
    flags = np.empty(n, np.uint8)
    survivors = None
    carried = old is not None and delta.n_old > 0
    # each row's content id where the rows before have theirs (rows rebuilt from deltas);
    # their hashes alone otherwise. A carried row's hash is copied with it, not looked up
    # again by its id (a gather of every row at random: +8 % on a day of a 16 M-page host)
    content: I32 | None = None
    if old is None or old.content is not None or not carried:
        content = np.empty(n, np.int32)
    if old is not None and carried:
        survivors = so, sn = delta.survivors()
        if content is not None:
            assert old.content is not None
            content[sn] = old.content[so]
        hash_[sn] = old.hash[so]
        frame[sn] = old.frame[so]
        flags[sn] = old.flags[so]
    page = _apply_pages(None if old is None else old.page, delta, survivors)
    if content is not None:
        content[delta.upd] = delta.upd_gid
    hash_[delta.upd] = content_hash[delta.upd_gid]
    frame[delta.upd] = delta.upd_frame
    flags[delta.upd] = delta.upd_flags
    return SnapshotRows(
        index=delta.index,
        time_ns=delta.time_ns,
        mm=delta.layout.mm_of_rows(),
        page=page,
        hash=hash_,
        frame=frame,
        flags=flags,
        layout=delta.layout,
        n_frames=delta.n_frames,
        content=content,
    )


class SnapshotSequence:
    """The snapshots of a replay input, rebuilt in full on demand from the deltas.

    Sequential access (``for rows in inp.snapshots``) applies one delta per step; the last
    snapshot rebuilt is kept, so ``inp.snapshots[-1]`` twice costs one rebuild.
    """

    def __init__(self, deltas: list[SnapshotDelta], content_hash: U64) -> None:
        self._deltas = deltas
        self._content_hash = content_hash
        self._cache: tuple[int, SnapshotRows] | None = None
        self._pages: tuple[int, U64] | None = None  # the last pages rebuilt by keys()

    def __len__(self) -> int:
        return len(self._deltas)

    def __getitem__(self, k: int) -> SnapshotRows:
        k = self._index(k)
        if self._cache is not None and self._cache[0] == k:
            return self._cache[1]
        rows = self._rebuilt(self._cache, k, self._apply)
        self._cache = (k, rows)
        return rows

    def _index(self, k: int) -> int:
        if k < 0:
            k += len(self._deltas)
        if not 0 <= k < len(self._deltas):
            raise IndexError(k)
        return k

    def _rebuilt(
        self,
        cached: tuple[int, _Built] | None,
        k: int,
        apply: Callable[[Any, SnapshotDelta], _Built],
    ) -> _Built:
        """Snapshot ``k``'s ``apply`` result, from ``cached`` (an earlier snapshot's) when it
        is one before ``k``, else from the first delta on."""
        start, out = -1, None
        if cached is not None and cached[0] < k:
            start, out = cached
        for j in range(start + 1, k + 1):
            out = apply(out, self._deltas[j])
        assert out is not None
        return out

    def __iter__(self) -> Iterator[SnapshotRows]:
        rows: SnapshotRows | None = None
        for d in self._deltas:
            rows = apply_delta(rows, d, self._content_hash)
            yield rows

    def _apply(self, old: SnapshotRows | None, delta: SnapshotDelta) -> SnapshotRows:
        return apply_delta(old, delta, self._content_hash)

    def keys(self, k: int) -> U64:
        """The row keys of snapshot ``k`` (:meth:`SnapshotRows.keys`), rebuilt from the
        deltas' pages alone: the write model asks for nothing else, and a full rebuild
        (five columns, kept until the next) cost it ~3 % of a review's CPU. The last pages
        rebuilt are kept, so sequential access applies one delta's pages per step."""
        k = self._index(k)
        if self._cache is not None and self._cache[0] == k:
            page = self._cache[1].page
        elif self._pages is not None and self._pages[0] == k:
            page = self._pages[1]
        else:
            page = self._rebuilt(self._pages, k, _apply_pages)
            self._pages = (k, page)
        return row_keys(self._deltas[k].layout.mm_of_rows(), page)


# ----------------------------------------------------------------------------- building


class ContentCatalog(FingerprintIdTable):
    """Dense content ids: each distinct hash gets the next id when first seen, the same id
    over the whole replay.

    One open-addressing table (:class:`planner._idtable.FingerprintIdTable`, compiled:
    8-byte slots of a fingerprint and an id, the hashes in the id-ordered values) maps
    hashes to ids; it is filled to at most three quarters and rebuilt larger when a snapshot's new
    contents would fill it more. A snapshot costs one probe per row whatever the contents
    seen before (pandas' hash tables, used before, cost 3-4 times as much per row and one
    table per batch).

    Three quarters, not the half of other tables: the catalog lives through all of
    ``prepare`` and is the largest array at its peak, and the doubling a half-full bound
    forces costs more memory than the longer probes cost time. A 16 M-page host with 5 %
    growth per snapshot reaches 17.5 M contents: at half full its catalog doubled to 2^26
    slots (805 MB of 12-byte slots) at the third snapshot; at three quarters it stays at
    2^25 (403 MB then, 268 MB of fingerprint slots) (docs/engine.md, "The content catalog
    grows with its contents").
    """

    max_fill = 0.75

    def hashes(self) -> U64:
        """The hash of every content id."""
        return self.values()


@compiled_on_first_call(cache=True, nogil=True)
def _pair_groups(frame: Frames, hash_: Contents, out: I32) -> int:  # pragma: no cover - compiled
    """Number the distinct (frame, hash) pairs in order of first appearance (``out`` per
    row); returns how many. An open-addressing table of first rows, compared on both
    columns: no collision can merge two pairs. A slot holds only its pair's first row (4
    bytes, not the pair and its number: 20), so the table of a 4 M-row snapshot is 32 MiB,
    not 160."""
    n = frame.size
    cap = 16
    while cap < 2 * n:
        cap *= 2
    mask = cap - 1
    slot_row = np.full(cap, -1, np.int32)
    groups = 0
    for j in range(n):
        f = frame[j]
        h = hash_[j]
        k = f ^ (h * np.uint64(0x9E3779B97F4A7C15))
        i = np.int64((k * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)) & mask
        while True:
            r = slot_row[i]
            if r < 0:
                slot_row[i] = j
                out[j] = groups
                groups += 1
                break
            if frame[r] == f and hash_[r] == h:
                out[j] = out[r]
                break
            i = (i + 1) & mask
    return groups


class _Keyed:
    """Rows whose page and mm are their key's (``(mm << 36) | page``): derived where a delta
    needs them, not kept beside it (12 bytes a row of the two snapshots held at the peak of
    ``prepare``; docs/engine.md, "Rows keep their keys alone")."""

    key: U64

    @property
    def page(self) -> U64:
        """Each row's page number (from its key)."""
        return self.key & PAGE_MASK

    @property
    def mm(self) -> I32:
        """Each row's mm (from its key)."""
        return (self.key >> MM_SHIFT).astype(np.int32)


@dataclass
class RowColumns(_Keyed):
    """One snapshot's rows, sorted by key, while deltas are built (two are held at a time;
    a row's page and mm are its key's)."""

    key: U64
    hash: U64
    frame: Frames
    flags: U8

    @property
    def content(self) -> U64:
        """What tells the rows' contents apart: their hashes."""
        return self.hash


@dataclass
class RowIds(_Keyed):
    """One snapshot's rows as :func:`build_delta` keeps them for the next delta: each
    row's content id (4 B, the catalog's) instead of its hash (8 B), which the id gives
    (docs/engine.md, "Rows keep content ids")."""

    key: U64
    gid: I32
    frame: Frames
    flags: U8

    @property
    def content(self) -> npt.NDArray[np.uint32]:
        """What tells the rows' contents apart: their ids (as unsigned: compiled code mixes
        them with unsigned 64-bit keys)."""
        return self.gid.view(np.uint32)


def _groups_by_first_row(frame: Frames, content: Contents) -> tuple[I32, int]:
    """Rows of one (frame, content) share a group; groups numbered by their first row
    (``content``: hashes, or content ids as unsigned 32-bit integers)."""
    out = np.empty(frame.size, np.int32)
    if frame.size == 0:
        return out, 0
    if content.dtype != np.uint32:
        content = np.ascontiguousarray(content, dtype=np.uint64)
    if frame.dtype != np.uint32:
        frame = np.ascontiguousarray(frame, dtype=np.uint64)
    n = _pair_groups(np.ascontiguousarray(frame), np.ascontiguousarray(content), out)
    return out, int(n)


#: frame ids up to this many times the rows are marked in a table indexed by the id
DIRECT_KEYS_PER_QUERY = 4


def _direct(top: int, rows: int) -> bool:
    """Whether frame ids up to ``top`` go in a table indexed by the id: a capture numbers
    frames from 1 in order of first sight, so its ids stay below a few times the row count,
    and rows in scan order see them mostly in increasing order (the table is read almost
    sequentially). Opaque frame ids (an ingested trace) are searched in sorted order."""
    return top <= DIRECT_KEYS_PER_QUERY * rows + 4096


def _n_frames(frame: Frames) -> int:
    """Distinct frame ids (see :func:`_direct`)."""
    if frame.size == 0:
        return 0
    top = int(frame.max())
    if _direct(top, frame.size):
        seen = np.zeros(top + 1, np.bool_)
        seen[frame] = True
        return int(np.count_nonzero(seen))
    f = np.sort(frame)
    return int(1 + np.count_nonzero(f[1:] != f[:-1]))


@compiled_on_first_call(cache=True, nogil=True)
def _first_rows(
    frame: Frames, hash_: Contents, keep: B, use_keep: bool, marked: B, frames: Frames
) -> tuple[U64, I32]:  # pragma: no cover - compiled
    """The rows (``keep``-ing only those where it is set, if ``use_keep``) whose frame is
    one of the moved rows' (marked in ``marked``, indexed by frame id, if it is not empty;
    else one of the sorted ``frames``), in an open-addressing table keyed by the content key
    ``frame ^ hash * golden``: each key with the lowest such row having it. An empty slot's
    row is -1. Rows of one key with another (frame, hash) pair (a collision) are not there:
    :func:`_link_rows` verifies the pair."""
    golden = np.uint64(0x9E3779B97F4A7C15)
    n = frame.size
    direct = marked.size > 0
    hit = np.zeros(n, np.bool_)
    count = 0
    for r in range(n):
        if use_keep and not keep[r]:
            continue
        f = frame[r]
        if direct:
            ok = f < marked.size and marked[f]
        else:
            j = np.searchsorted(frames, f)
            ok = j < frames.size and frames[j] == f
        if ok:
            hit[r] = True
            count += 1
    cap = 16
    while cap < 2 * count:
        cap *= 2
    mask = cap - 1
    slot_key = np.zeros(cap, np.uint64)
    slot_row = np.full(cap, -1, np.int32)
    for r in range(n):
        if not hit[r]:
            continue
        k = frame[r] ^ (hash_[r] * golden)
        i = np.int64((k * golden) >> np.uint64(32)) & mask
        while slot_row[i] >= 0 and slot_key[i] != k:
            i = (i + 1) & mask
        if slot_row[i] < 0:  # a key already there keeps its lower row
            slot_row[i] = r
            slot_key[i] = k
    return slot_key, slot_row


@compiled_on_first_call(cache=True, nogil=True)
def _link_rows(
    moved: I64, carried: B, parent_of: I64,
    cur_key: U64, cur_frame: Frames, cur_hash: Contents,
    new_key: U64, new_row: I32,
    prev_key: U64, prev_frame: Frames, prev_hash: Contents,
    old_key: U64, old_row: I32,
    kind: npt.NDArray[np.int8], link: I64,
) -> None:  # fmt: skip  # pragma: no cover - compiled
    """Each moved row's link (see :func:`_links`), from the tables of :func:`_first_rows`
    of the carried rows of this snapshot (``new_*``) and the rows of the one before
    (``old_*``)."""
    golden = np.uint64(0x9E3779B97F4A7C15)
    n, n_old = cur_key.size, prev_key.size
    new_mask, old_mask = new_key.size - 1, old_key.size - 1
    for x in range(moved.size):
        row = moved[x]
        f, h = cur_frame[row], cur_hash[row]
        k = f ^ (h * golden)
        slot = np.int64((k * golden) >> np.uint64(32))
        # the first carried row of this snapshot with the same content key, if its pair
        inh = -1
        i = slot & new_mask
        while new_row[i] >= 0 and new_key[i] != k:
            i = (i + 1) & new_mask
        r = new_row[i]
        if r >= 0 and cur_frame[r] == f and cur_hash[r] == h:
            inh = r
        # else the first row of the snapshot before
        inh_old = -1
        if inh < 0:
            i = slot & old_mask
            while old_row[i] >= 0 and old_key[i] != k:
                i = (i + 1) & old_mask
            r = old_row[i]
            if r >= 0 and prev_frame[r] == f and prev_hash[r] == h:
                inh_old = r
        # the parent process's row at the same page, where it maps the same frame
        par = parent_of[np.int64(cur_key[row] >> np.uint64(36))]
        if par >= 0 and (inh >= 0 or inh_old >= 0):
            pkey = (np.uint64(par) << np.uint64(36)) | (cur_key[row] & np.uint64(PAGE_BITS))
            q = min(np.searchsorted(cur_key, pkey), n - 1)
            if cur_key[q] == pkey and carried[q] and cur_frame[q] == f and cur_hash[q] == h:
                inh, inh_old = q, -1
            elif n_old:
                q = min(np.searchsorted(prev_key, pkey), n_old - 1)
                if prev_key[q] == pkey and prev_frame[q] == f and prev_hash[q] == h:
                    inh, inh_old = -1, q
        if inh >= 0:
            kind[x] = L_ROW
            link[x] = inh
        elif inh_old >= 0:
            kind[x] = L_OLD
            link[x] = inh_old


def _links(
    prev: RowColumns | RowIds, cur: RowColumns | RowIds, moved: I64, carried: B, parent_of: I64
) -> tuple[npt.NDArray[np.int8], I64]:
    """Where the physical page of each ``moved`` row comes from (kind, source).

    Two tables of first rows by content key (the carried rows of ``cur``, the rows of
    ``prev``, both only where the frame is one of the moved rows'), then one pass over the
    moved rows (all compiled, without the GIL); the rows left fresh are numbered by
    (frame, content) in order of their first row. A content is a hash or a content id
    (both snapshots' the same kind): the links do not depend on which."""
    if type(prev) is not type(cur):
        raise TypeError("both snapshots' rows must tell contents apart the same way")
    m = moved.size
    kind = np.full(m, L_FRESH, np.int8)
    link = np.full(m, -1, np.int64)
    if m == 0:
        return kind, link
    cur_c, prev_c = cur.content, prev.content
    rf, rh = cur.frame[moved], cur_c[moved]
    top = int(rf.max())
    if _direct(top, cur.key.size + prev.key.size):
        marked = np.zeros(top + 1, np.bool_)
        marked[rf] = True
        frames = np.empty(0, np.uint64)
    else:
        marked = np.empty(0, np.bool_)
        frames = np.unique(rf)
    new_key, new_row = _first_rows(cur.frame, cur_c, carried, True, marked, frames)
    old_key, old_row = _first_rows(prev.frame, prev_c, carried, False, marked, frames)
    _link_rows(
        np.ascontiguousarray(moved, np.int64), carried, parent_of,
        cur.key, cur.frame, cur_c, new_key, new_row,
        prev.key, prev.frame, prev_c, old_key, old_row, kind, link,
    )  # fmt: skip
    need = np.flatnonzero(kind == L_FRESH)
    if need.size:
        g, _ = _groups_by_first_row(rf[need], rh[need])
        link[need] = g
    return kind, link


_SAME, _FLAGS, _CHANGED, _ADDED = 0, 1, 2, 3  # how a row relates to the snapshot before


#: Placeholder for :data:`planner._jit.INTRINSICS`' ``prefetch``, set just before
#: :func:`_align` is compiled.
prefetch: Any = None
#: Old rows ahead whose hash :func:`_align` prefetches (the hash of a content id is read
#: at random where contents repeat across the rows)
_PREFETCH_ROWS = 16


@compiled_on_first_call(cache=True, nogil=True, intrinsics=("prefetch",))
def _align(
    old_key: U64, key: U64, old_gid: I32, hash_of: U64, hash_: U64, old_frame: Frames,
    frame: Frames, old_flags: U8, flags: U8, cls: U8, old_of: I32, removed: I32, gid: I32,
) -> int:  # fmt: skip  # pragma: no cover - compiled
    """Merge two snapshots' sorted keys: each new row's class (same, flags changed, content
    or frame changed, added) and old row; the old rows that vanished. Returns how many.
    An old row's hash is its content id's (``hash_of``), read at random where contents
    repeat across the rows: the hash of the id :data:`_PREFETCH_ROWS` old rows ahead is
    prefetched. ``gid``: each new row's old row's content id (-1: added)."""
    i = nr = 0
    ahead = old_key.size - _PREFETCH_ROWS
    for j in range(key.size):
        while i < old_key.size and old_key[i] < key[j]:
            removed[nr] = i
            nr += 1
            i += 1
        if i < old_key.size and old_key[i] == key[j]:
            if i < ahead:
                prefetch(hash_of, old_gid[i + _PREFETCH_ROWS])
            old_of[j] = i
            gid[j] = old_gid[i]
            if hash_of[old_gid[i]] != hash_[j] or old_frame[i] != frame[j]:
                cls[j] = _CHANGED
            elif old_flags[i] != flags[j]:
                cls[j] = _FLAGS
            else:
                cls[j] = _SAME
            i += 1
        else:
            old_of[j] = -1
            gid[j] = -1
            cls[j] = _ADDED
    while i < old_key.size:
        removed[nr] = i
        nr += 1
        i += 1
    return nr


def build_delta(
    prev: RowIds | RowColumns | None,
    cur: RowColumns,
    *,
    index: int,
    time_ns: int,
    layout: MmLayout,
    parent_of: I64,
    catalog: ContentCatalog,
) -> tuple[SnapshotDelta, RowIds]:
    """The delta from ``prev`` to ``cur`` (both sorted by key; ``prev`` None: all added),
    and ``cur``'s rows with content ids for the next delta.

    ``cur``'s hashes are consumed: once its rows' content ids are known, ``cur.hash`` is
    dropped (set empty), so that two snapshots' hashes are never held with the links'
    tables (8 B a row at the peak of ``prepare``). An unchanged row's id is its old row's;
    the catalog is asked for those of the rows whose content or frame changed or that
    were added (the only rows that can bring new contents, in the same order as before).
    ``prev`` given with hashes (a caller's rows) is given its ids first."""
    n = cur.key.size
    n_frames = _n_frames(cur.frame)
    if prev is None or prev.key.size == 0:
        gid = catalog.ids_of(cur.hash)
        ids = RowIds(key=cur.key, gid=gid, frame=cur.frame, flags=cur.flags)
        cur.hash = _NO_HASHES
        g, n_fresh = _groups_by_first_row(ids.frame, ids.content)
        allrows = np.arange(n, dtype=np.int32)
        delta = SnapshotDelta(
            index=index,
            time_ns=time_ns,
            n_rows=n,
            n_old=0,
            n_frames=n_frames,
            layout=layout,
            removed=np.empty(0, np.int32),
            added=allrows,
            added_page=ids.page,
            upd=allrows,
            upd_old=np.full(n, -1, np.int32),
            upd_frame=ids.frame,
            upd_flags=ids.flags,
            upd_link_kind=np.full(n, L_FRESH, np.int8),
            upd_link=g,
            n_fresh=n_fresh,
            upd_gid=gid,
        )
        return delta, ids
    if isinstance(prev, RowColumns):
        prev = RowIds(
            key=prev.key, gid=catalog.ids_of(prev.hash), frame=prev.frame, flags=prev.flags
        )
    n_old = prev.key.size
    cls = np.empty(n, np.uint8)
    old_of = np.empty(n, np.int32)
    removed = np.empty(n_old, np.int32)
    gid = np.empty(n, np.int32)
    n_removed = _align(prev.key, cur.key, prev.gid, catalog.value_view(), cur.hash,
                       prev.frame, cur.frame, prev.flags, cur.flags, cls, old_of,
                       removed, gid)  # fmt: skip
    removed = removed[:n_removed].copy()
    # content ids: an unchanged row's is its old row's (as _align gave them); the catalog
    # gives those of the rows changed or added
    fresh = np.flatnonzero(cls >= _CHANGED)
    gid[fresh] = catalog.ids_of(cur.hash[fresh])
    del fresh
    ids = RowIds(key=cur.key, gid=gid, frame=cur.frame, flags=cur.flags)
    cur.hash = _NO_HASHES
    added = np.flatnonzero(cls == _ADDED)
    upd = np.flatnonzero(cls != _SAME)
    same_content = cls <= _FLAGS
    hit = cls != _ADDED
    pos = old_of
    moved_mask = ~same_content[upd]
    kind = np.full(upd.size, L_CARRY, np.int8)
    link = np.full(upd.size, -1, np.int64)
    k_m, l_m = _links(prev, ids, upd[moved_mask], same_content, parent_of)
    kind[moved_mask] = k_m
    link[moved_mask] = l_m
    n_fresh = int(l_m[k_m == L_FRESH].max()) + 1 if np.any(k_m == L_FRESH) else 0
    delta = SnapshotDelta(
        index=index,
        time_ns=time_ns,
        n_rows=n,
        n_old=n_old,
        n_frames=n_frames,
        layout=layout,
        removed=removed,
        added=added.astype(np.int32),
        added_page=ids.key[added] & PAGE_MASK,
        upd=upd.astype(np.int32),
        upd_old=np.where(hit[upd], pos[upd], -1).astype(np.int32),
        upd_frame=ids.frame[upd],
        upd_flags=ids.flags[upd],
        upd_link_kind=kind,
        upd_link=link.astype(np.int32),
        n_fresh=n_fresh,
        upd_gid=gid[upd],
    )
    return delta, ids


_NO_HASHES = np.empty(0, np.uint64)  # a consumed hash column (build_delta)


def moved_up(at: npt.NDArray[np.int64], inserted: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Where the rows ``at`` of a snapshot (positions, sorted) are once rows are inserted at
    ``inserted`` (their positions in the snapshot after, sorted): each moves up by the
    inserted rows placed before it, the i-th of which has ``inserted[i] - i`` rows of the
    snapshot before ahead of it. (A delta that only inserts rows: every growth step's.)"""
    ahead = inserted - np.arange(inserted.size)
    return np.asarray(at + np.searchsorted(ahead, at, side="right"), np.int64)


def appended_delta(
    prev: MmLayout,
    prev_n_frames: int,
    new: RowColumns,
    first_frame: int,
    *,
    index: int,
    time_ns: int,
    ids_of: Callable[[U64], I32],
) -> tuple[SnapshotDelta, I64]:
    """The delta that appends ``new``'s rows to a snapshot laid out as ``prev``, each row
    after every row of its mm (its page above theirs) and on a physical page of its own,
    numbered ``first_frame`` on in ``new``'s order (above every frame before): what
    :func:`build_delta` makes of the two snapshots, without them (the growth model's steps,
    :mod:`planner.engine.growth`: O(new rows) each instead of two full snapshots, a sort
    and a merge). ``new.mm`` must be present in ``prev``; ``new.frame`` is not read (the
    frames are the ones numbered here); ``new.key``'s order within an mm must be the
    pages'. ``ids_of`` gives content ids (:meth:`ContentCatalog.ids_of`),
    asked in the order of the rows after. Also returns, per row of ``new``, its position
    in the snapshot after."""
    m = new.mm.size
    at = np.searchsorted(prev.present, new.mm)
    if m and not np.array_equal(prev.present[np.minimum(at, prev.present.size - 1)], new.mm):
        raise ValueError("appended rows of an mm the snapshot does not hold")
    order = np.argsort(new.key, kind="stable")  # by mm, then page: their place after
    add = np.bincount(at, minlength=prev.present.size).astype(np.int64)
    hi = prev.hi + np.cumsum(add)
    lo = hi - (prev.hi - prev.lo) - add
    # the j-th appended row of block b (in key order) goes to hi[b] - add[b] + j
    block = at[order]
    start = np.cumsum(add) - add  # appended rows before block b
    pos = np.empty(m, np.int64)
    pos[order] = (hi - add)[block] + (np.arange(m, dtype=np.int64) - start[block])
    frame = np.uint64(first_frame) + np.arange(m, dtype=np.uint64)
    h, fl, pg = new.hash[order], new.flags[order], new.page[order]
    added = pos[order].astype(np.int32)
    layout = MmLayout(present=prev.present, lo=lo, hi=hi, mergeable=prev.mergeable)
    delta = SnapshotDelta(
        index=index,
        time_ns=time_ns,
        n_rows=prev.n + m,
        n_old=prev.n,
        n_frames=prev_n_frames + m,
        layout=layout,
        removed=np.empty(0, np.int32),
        added=added,
        added_page=pg,
        upd=added,
        upd_old=np.full(m, -1, np.int32),
        upd_frame=frame[order],
        upd_flags=fl,
        upd_link_kind=np.full(m, L_FRESH, np.int8),
        upd_link=np.arange(m, dtype=np.int32),  # one fresh page each, in row order
        n_fresh=m,
        upd_gid=ids_of(h),
    )
    return delta, pos


def with_flag_changes(
    delta: SnapshotDelta, pos: I64, old_pos: I64, frame: U64, flags: U8, gid: I32
) -> SnapshotDelta:
    """``delta`` whose snapshot also changes the flags of persisting rows: at positions
    ``pos`` after it (``old_pos`` before it, neither among the rows ``delta`` adds or
    changes), the same content and physical page (``frame``, content id ``gid``) with
    ``flags``. What :func:`build_delta` makes of a row whose flags alone changed (an
    :data:`L_CARRY` update): the growth held to a canary takes a page out of ksmd's reach,
    or gives it back, as its process shrinks and grows again
    (:mod:`planner.engine.canary_growth`)."""
    if not pos.size:
        return delta
    upd = np.concatenate([delta.upd.astype(np.int64), pos])
    order = np.argsort(upd, kind="stable")
    if np.any(np.diff(upd[order]) == 0):
        raise ValueError("a row's flags changed twice in one delta")

    def cat(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return np.concatenate([a, b.astype(a.dtype)])[order]

    m = pos.size
    return replace(
        delta,
        upd=upd[order].astype(np.int32),
        upd_old=cat(delta.upd_old, old_pos),
        upd_frame=cat(delta.upd_frame, frame),
        upd_flags=cat(delta.upd_flags, flags),
        upd_link_kind=cat(delta.upd_link_kind, np.full(m, L_CARRY, np.int8)),
        upd_link=cat(delta.upd_link, np.full(m, -1, np.int32)),
        upd_gid=cat(delta.upd_gid, gid),
    )


__all__ = [
    "F_ELIGIBLE",
    "F_THP",
    "F_ZERO",
    "L_CARRY",
    "L_FRESH",
    "L_OLD",
    "L_ROW",
    "ContentCatalog",
    "MmLayout",
    "RowColumns",
    "RowIds",
    "SnapshotDelta",
    "SnapshotRows",
    "SnapshotSequence",
    "Transition",
    "appended_delta",
    "apply_delta",
    "build_delta",
    "isin",
    "moved_up",
    "row_keys",
    "transition",
    "with_flag_changes",
]
