"""Writes to mergeable pages, from the trace: the copy-on-write rate KSM would face.

Between two consecutive snapshots, a page that KSM would hold merged (its content sits on at
least two distinct frames, or is all zero) and whose content changed at the same address by
the next snapshot has been written: had it been merged, that write would have broken
copy-on-write (a page fault, a 4 KiB copy and a fresh frame). The rate is counted per second
of trace time. Several writes to one page between two snapshots count once, so this is a
lower bound on writes; pages KSM had not merged yet count as if merged, so it is an upper
bound on breaks of pages KSM had actually merged. A canary's ``cow_ksm`` counts the real
breaks (:class:`planner.whatif.observed.ObservedComparison`).

Which pages are rewritten matters as much as how many: a rate of 100 pages per second can
be the same few hundred pages rewritten again and again (a hot set KSM should not merge)
or a steady churn through all of them. :class:`CowEstimate` keeps both: the rate, the
distinct pages ever rewritten over the trace, and the pages rewritten in every interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from planner._heap import release_memory
from planner._idtable import table_slots
from planner._jit import compiled_on_first_call
from planner.trace import schema as S
from planner.trace.check import as_numpy

if TYPE_CHECKING:
    from collections.abc import Iterable

    import pyarrow as pa

    from planner.trace.io import HostTrace

Arr = np.ndarray[Any, Any]

_PAGE_SHIFT = 12
_KEY_PID_SHIFT = np.uint64(36)


@dataclass(frozen=True)
class CowInterval:
    """Copy-on-write breaks between two consecutive snapshots."""

    t0_s: float
    t1_s: float
    mergeable_pages: int  # pages KSM would hold merged at t0
    rewritten_pages: int  # of those, pages whose content changed at the same address by t1

    @property
    def breaks_per_s(self) -> float:
        """Rewritten mergeable pages per second."""
        dt = self.t1_s - self.t0_s
        return self.rewritten_pages / dt if dt > 0 else float("nan")

    @property
    def rewritten_fraction(self) -> float:
        """Share of the mergeable pages rewritten in the interval."""
        return self.rewritten_pages / self.mergeable_pages if self.mergeable_pages else 0.0


@dataclass(frozen=True)
class CowEstimate:
    """Copy-on-write break rate of mergeable pages over a trace, and which pages it hits."""

    __json_properties__: ClassVar[tuple[str, ...]] = (
        "breaks_per_s",
        "bytes_per_s",
        "rewritten_share",
    )

    intervals: tuple[CowInterval, ...]
    page_size: int
    #: Distinct mergeable pages (pid, address) rewritten in at least one interval
    distinct_rewritten_pages: int = 0
    #: Mergeable pages rewritten in every interval: the hot set
    hot_pages: int = 0
    #: Distinct pages mergeable at the start of at least one interval
    mergeable_pages: int = 0

    @property
    def breaks_per_s(self) -> float:
        """Rewritten mergeable pages per second over the whole trace (NaN with one snapshot)."""
        dt = sum(i.t1_s - i.t0_s for i in self.intervals)
        return sum(i.rewritten_pages for i in self.intervals) / dt if dt > 0 else float("nan")

    @property
    def bytes_per_s(self) -> float:
        """Memory newly needed per second by those breaks (each takes a fresh frame)."""
        return self.breaks_per_s * self.page_size

    @property
    def rewritten_share(self) -> float:
        """Distinct mergeable pages rewritten at least once over the trace, as a share of
        the distinct mergeable pages (NaN without intervals)."""
        if not self.mergeable_pages:
            return float("nan")
        return self.distinct_rewritten_pages / self.mergeable_pages

    @property
    def span_s(self) -> float:
        """The trace time the intervals cover."""
        return sum(i.t1_s - i.t0_s for i in self.intervals)


def _snapshot_arrays(pages: pa.Table, zero_flag: int) -> tuple[Arr, Arr, Arr]:
    """Keys ``(pid << 36 | page)`` (sorted), hashes and a mergeable mask of one snapshot's
    hashed pages. Arrow's columns are read in place where they hold no null, and pages in
    scan order (as traces hold them) are not sorted again."""
    h_col: Any = pages.column("content_hash")
    ok = None if h_col.null_count == 0 else ~as_numpy(h_col.is_null(), bool)

    def col(name: str, dtype: Any) -> Arr:
        values = as_numpy(pages.column(name), dtype, null=0)
        return values if ok is None else values[ok]

    key = col("pid", np.uint64) << _KEY_PID_SHIFT
    key |= col("page_addr", np.uint64) >> np.uint64(_PAGE_SHIFT)
    h = col("content_hash", np.uint64)
    mergeable = _on_two_frames(h, col("frame_id", np.uint64))
    mergeable |= (col("flags", np.uint16) & np.uint16(zero_flag)) != 0
    if key.size > 1 and not bool(np.all(key[1:] > key[:-1])):
        order = np.argsort(key, kind="stable")
        key, h, mergeable = key[order], h[order], mergeable[order]
    return key, h, mergeable


def _on_two_frames(h: Arr, f: Arr) -> Arr:
    """Per row: its content sits on at least two distinct frames (KSM has something to
    merge). Sorting the (hash, frame) pairs, as ``np.unique(..., axis=0)`` did, took ~4 s
    per 4 M-row snapshot and ~100 s and 3.9 GB for a 16 M-page host (then in the client of
    a fleet what-if); now one compiled pass (:func:`_two_frames`) with a table of 5 bytes a
    slot, allocated here (numpy gives large arrays transparent huge pages)."""
    out = np.empty(h.size, np.bool_)
    if not h.size:
        return out
    cap = table_slots(h.size)
    slot_row = np.full(cap, -1, np.int32)
    slot_multi = np.zeros(cap, np.bool_)
    slot_of = np.empty(h.size, np.int32)
    _two_frames(
        np.ascontiguousarray(h, np.uint64), np.ascontiguousarray(f, np.uint64),
        slot_row, slot_multi, slot_of, out,
    )  # fmt: skip
    return out


@compiled_on_first_call(cache=True, nogil=True)
def _two_frames(
    h: Arr, f: Arr, slot_row: Arr, slot_multi: Arr, slot_of: Arr, out: Arr
) -> None:  # pragma: no cover - compiled
    """Open addressing on the hash: a slot holds the first row of its content (``-1``:
    free) and whether a later row of it was on another frame; each row's slot kept in
    ``slot_of``, then read back into ``out``."""
    mask = slot_row.size - 1
    for j in range(h.size):
        v = h[j]
        i = np.int64((v * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)) & mask
        while True:
            r = slot_row[i]
            if r < 0:
                slot_row[i] = j
                break
            if h[r] == v:
                if f[r] != f[j]:
                    slot_multi[i] = True
                break
            i = (i + 1) & mask
        slot_of[j] = i
    for j in range(h.size):
        out[j] = slot_multi[slot_of[j]]


def _union_sorted(*parts: Arr) -> Arr:
    """The sorted distinct values of sorted arrays (a stable sort of the runs merges them:
    linear, where ``np.union1d`` sorts from scratch)."""
    c = np.concatenate(parts)
    c.sort(kind="stable")
    keep = np.ones(c.size, bool)
    keep[1:] = c[1:] != c[:-1]
    return c[keep]


#: The pages columns :func:`cow_breaks` reads.
COW_COLUMNS = ("pid", "page_addr", "content_hash", "frame_id", "flags")


def cow_breaks(ht: HostTrace, pages: Iterable[tuple[int, pa.Table]] | None = None) -> CowEstimate:
    """The copy-on-write break rate of mergeable pages between consecutive snapshots.

    ``pages``: the host's pages as ``(snapshot_id, table)`` in order (e.g.
    ``Trace.iter_snapshot_pages(host, COW_COLUMNS)``, one snapshot in memory at a time);
    default: ``ht``'s own pages. Memory holds two snapshots' keys and the running sets.
    """
    ids = ht.snapshot_ids.tolist()
    times = ht.times_s.tolist()
    page_size = int(ht.meta().get("page_size") or S.PAGE_SIZE_BYTES)
    stream = iter(pages) if pages is not None else ((sid, ht.pages_of(sid)) for sid in ids)
    empty: pa.Table | None = None
    out: list[CowInterval] = []
    prev: tuple[Arr, Arr, Arr] | None = None
    ever = np.empty(0, np.uint64)  # keys rewritten in some interval
    hot: Arr | None = None  # keys rewritten in every interval
    seen = np.empty(0, np.uint64)  # keys mergeable at the start of some interval
    nxt = next(stream, None)
    for i, sid in enumerate(ids):
        if nxt is not None and nxt[0] == sid:
            table, nxt = nxt[1], None
        else:  # a snapshot without pages
            empty = empty if empty is not None else ht.pages.schema.empty_table()
            table = empty
        cur = _snapshot_arrays(table, int(S.PageFlag.ZERO))
        del table
        release_memory()  # the table and the pass given back before the next is read
        if nxt is None:  # the next snapshot read once this one is arrays
            nxt = next(stream, None)
        if prev is not None:
            k0, h0, m0 = prev
            k1, h1, _ = cur
            pos = np.searchsorted(k1, k0)
            pos_c = np.minimum(pos, max(len(k1) - 1, 0))
            present = (pos < len(k1)) & (k1[pos_c] == k0) if len(k1) else np.zeros(len(k0), bool)
            changed = present & (h1[pos_c] != h0)
            keys = _union_sorted(k0[changed & m0])  # distinct: ``hot`` assumes it
            ever = _union_sorted(ever, keys)
            hot = keys if hot is None else np.intersect1d(hot, keys, assume_unique=True)
            seen = _union_sorted(seen, k0[m0])
            out.append(
                CowInterval(
                    t0_s=float(times[i - 1]),
                    t1_s=float(times[i]),
                    mergeable_pages=int(np.count_nonzero(m0)),
                    rewritten_pages=int(np.count_nonzero(changed & m0)),
                )
            )
        prev = cur
    return CowEstimate(
        tuple(out),
        page_size,
        distinct_rewritten_pages=int(ever.size),
        hot_pages=int(hot.size) if hot is not None else 0,
        mergeable_pages=int(seen.size),
    )


__all__ = ["COW_COLUMNS", "CowEstimate", "CowInterval", "cow_breaks"]
