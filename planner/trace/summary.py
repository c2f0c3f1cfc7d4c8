"""What a trace holds, and its static dedup potential (``ksm-planner info``).

For every snapshot, among the *candidate pages* (pages with a content hash: swapped pages
and read errors are left out), the static potential is what an ideal scanner could free if
every duplicate merged at once (docs/capture.md §3.1):

* ``naive_saved_pages`` = pages − distinct hashes. It counts fork-shared frames (the same
  physical page mapped by several processes) as savings, so it overstates KSM;
* ``ideal_saved_frames`` = (distinct non-zero frames − distinct non-zero hashes) + distinct
  zero-content frames: frames, not mappings, so fork-shared frames are not savings; zero
  frames are all freed (KSM with ``use_zero_pages`` maps them to the shared zero page);
* ``fork_shared_pages`` = pages − distinct frames (already shared before KSM);
* the naive saving split into ``within_process`` (pages − distinct (hash, pid) pairs) and
  ``cross_process`` (distinct (hash, pid) pairs − distinct hashes) duplicates.

Breakdowns by mapping kind, by process group (``comm``) and by label set *attribute* each
saving to the group of the page that is not kept, in scan order ``(pid, page_addr)``: the
first mapping of a hash (or of a frame) is kept, every later one is attributed. So the
attributed columns of a breakdown add up to the snapshot's totals; ``frames`` and
``distinct_hashes`` of a group count within the group and do not add up. A frame's hash is
the hash of its first mapping.

Counting is by dense ids and linear compiled passes (see "grouping" below), batch by
batch as the pages file is decoded (:class:`SnapshotCounter`): memory holds a batch of
pages and a few bytes per distinct hash and frame of a snapshot, whatever the trace size.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from planner._heap import state_pages
from planner._idtable import IdTable
from planner._jit import compiled_code_loading, compiled_on_first_call
from planner._progress import NULL_PROGRESS
from planner.provenance import tool_version
from planner.trace import schema as S
from planner.trace.check import as_numpy
from planner.trace.flat import lookup_rows
from planner.trace.io import open_trace, read_ahead

if TYPE_CHECKING:
    import os
    from collections.abc import Iterator

    import pyarrow as pa

    from planner._progress import Progress
    from planner.trace.io import HostTrace, Trace

Arr = np.ndarray[Any, Any]

_PAGE_COLUMNS = ("pid", "vma_start", "content_hash", "frame_id", "flags")
_UNKNOWN = "(unknown)"
_NO_LABELS = "(no labels)"
#: Rows of the batches ``info`` decodes (a thread) and counts (the caller) side by side.
_BATCH_ROWS = 1 << 20


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class GroupPotential:
    """Static potential of one group of pages (a mapping kind, a comm, a label set)."""

    group: str
    pages: int
    zero_pages: int
    frames: int
    distinct_hashes: int
    naive_saved_pages: int
    ideal_saved_frames: int
    fork_shared_pages: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "group": self.group,
            "pages": self.pages,
            "zero_pages": self.zero_pages,
            "frames": self.frames,
            "distinct_hashes": self.distinct_hashes,
            "naive_saved_pages": self.naive_saved_pages,
            "ideal_saved_frames": self.ideal_saved_frames,
            "fork_shared_pages": self.fork_shared_pages,
        }


@dataclass(frozen=True)
class SnapshotPotential:
    """The static dedup potential of one snapshot of one host."""

    host: str
    snapshot_id: int
    time_s: float
    processes: int
    pages: int
    frames: int
    distinct_hashes: int
    zero_pages: int
    zero_frames: int
    naive_saved_pages: int
    ideal_saved_frames: int
    fork_shared_pages: int
    within_process_saved_pages: int
    cross_process_saved_pages: int
    unhashed_pages: int = 0
    zero_pfn_pages: int = 0
    by_kind: tuple[GroupPotential, ...] = ()
    by_comm: tuple[GroupPotential, ...] = ()
    by_label: tuple[GroupPotential, ...] = ()

    @property
    def naive_saved_fraction(self) -> float:
        """Naive saving as a share of candidate pages."""
        return self.naive_saved_pages / self.pages if self.pages else 0.0

    @property
    def ideal_saved_fraction(self) -> float:
        """Frame-aware saving as a share of physical frames."""
        return self.ideal_saved_frames / self.frames if self.frames else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "host": self.host,
            "snapshot_id": self.snapshot_id,
            "time_s": self.time_s,
            "processes": self.processes,
            "pages": self.pages,
            "frames": self.frames,
            "distinct_hashes": self.distinct_hashes,
            "zero_pages": self.zero_pages,
            "zero_frames": self.zero_frames,
            "naive_saved_pages": self.naive_saved_pages,
            "ideal_saved_frames": self.ideal_saved_frames,
            "naive_saved_fraction": self.naive_saved_fraction,
            "ideal_saved_fraction": self.ideal_saved_fraction,
            "fork_shared_pages": self.fork_shared_pages,
            "within_process_saved_pages": self.within_process_saved_pages,
            "cross_process_saved_pages": self.cross_process_saved_pages,
            "unhashed_pages": self.unhashed_pages,
            "zero_pfn_pages": self.zero_pfn_pages,
            "by_kind": [g.to_dict() for g in self.by_kind],
            "by_comm": [g.to_dict() for g in self.by_comm],
            "by_label": [g.to_dict() for g in self.by_label],
        }


@dataclass(frozen=True)
class HostSummary:
    """Size facts of one host of a trace."""

    host: str
    snapshots: int
    processes: int
    pages: int
    pages_file_bytes: int
    total_bytes: int
    time_span_s: float
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def bytes_per_page(self) -> float:
        """``pages.parquet`` bytes per page row."""
        return self.pages_file_bytes / self.pages if self.pages else float("nan")

    @property
    def total_bytes_per_page(self) -> float:
        """All bytes of the host's files per page row."""
        return self.total_bytes / self.pages if self.pages else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "host": self.host,
            "snapshots": self.snapshots,
            "processes": self.processes,
            "pages": self.pages,
            "pages_file_bytes": self.pages_file_bytes,
            "total_bytes": self.total_bytes,
            "bytes_per_page": self.bytes_per_page,
            "total_bytes_per_page": self.total_bytes_per_page,
            "time_span_s": self.time_span_s,
            **{
                k: (str(v) if k == "zero_hash" and v is not None else v)
                for k, v in self.meta.items()
            },
        }


@dataclass(frozen=True)
class TraceSummary:
    """What ``ksm-planner info`` reports: hosts, sizes, and per-snapshot static potential."""

    path: str
    schema_version: int
    trace_hash: str
    source: str | None
    created_by: str | None
    hosts: tuple[HostSummary, ...]
    processes: int
    pages: int
    pages_file_bytes: int
    total_bytes: int
    snapshots: tuple[SnapshotPotential, ...]
    tool_version: str = field(default_factory=tool_version)
    host_cpu: str | None = None
    """The CPU the capture ran on (its manifest's ``capture.host_cpu``), if it says: the
    cost profile to replay the trace with is one measured on such a CPU."""

    @property
    def bytes_per_page(self) -> float:
        """``pages.parquet`` bytes per page row, all hosts."""
        return self.pages_file_bytes / self.pages if self.pages else float("nan")

    @property
    def total_bytes_per_page(self) -> float:
        """All trace bytes (manifest included) per page row."""
        return self.total_bytes / self.pages if self.pages else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (with provenance)."""
        return {
            "path": self.path,
            "schema_version": self.schema_version,
            "host_cpu": self.host_cpu,
            "hosts": [h.to_dict() for h in self.hosts],
            "processes": self.processes,
            "pages": self.pages,
            "bytes_per_page": {
                "pages_file": self.bytes_per_page,
                "total": self.total_bytes_per_page,
                "pages_file_bytes": self.pages_file_bytes,
                "total_bytes": self.total_bytes,
            },
            "snapshots": [s.to_dict() for s in self.snapshots],
            "provenance": {
                "tool_version": self.tool_version,
                "trace_path": self.path,
                "trace_hash": self.trace_hash,
                "trace_source": self.source,
                "trace_created_by": self.created_by,
                "hosts": [h.host for h in self.hosts],
            },
        }


# ----------------------------------------------------------------------------- grouping
#
# Every count below is "distinct values" or "first occurrence in scan order", of hashes
# and of frames, over all pages and within each group. They are computed with dense ids
# (ids in order of first appearance) and linear passes over the pages, compiled, instead
# of stable sorts of 64-bit columns: sorting was ~90 % of ``info``'s time (13.6 s on 12 M
# rows before, docs/engine.md "Speed and memory").
#
# A snapshot's pages are counted as they come, batch by batch (:class:`SnapshotCounter`):
# the dense-id tables, the per-id marks and the counts carry from one batch to the next,
# so ``info`` counts a batch while the next is decoded and holds no snapshot in full.
#
# Dense ids come from one of two compiled passes that give the same ids:
#
# * values below a small bound (the frame ids of a capture are numbered from 0 in order of
#   first sight; hashes of hand-made test traces): one direct-addressed table, one
#   access per page;
# * any other values (content hashes): an open-addressing hash table, one probe per page
#   (:class:`planner._idtable.IdTable`, the engine's content catalog).
#
# Every scratch table is allocated by numpy, not inside the compiled code, and filled or
# zeroed there: numpy asks for transparent huge pages for large arrays, which makes the
# random accesses into tables of tens of MB ~1.5x faster here (fewer TLB misses); numba's
# own allocations get none.

#: Values below ``max(_SMALL_IDS_MIN, _SMALL_IDS_PER_ROW * rows)`` take the direct table
#: (``rows``: the snapshot's expected rows, or those seen when more).
_SMALL_IDS_PER_ROW = 4
_SMALL_IDS_MIN = 1 << 16
#: A page without a frame (a hashed page whose frame the capture could not read) has
#: this frame id in the passes: a frame of its own, seen once.
_LONE = -1


@compiled_on_first_call(cache=True, nogil=True)
def _small_ids(
    values: Arr, label: Arr, ids: Arr, first: Arr, k: int
) -> int:  # pragma: no cover - compiled
    """Dense ids of ``values``, all below ``label.size``, into ``ids`` (``label``: the id of
    each value seen, -1 for the others), first-row flags into ``first`` (all False); ``k``
    distinct values were seen before (by earlier calls on the same ``label``); returns the
    number seen now."""
    for j in range(values.size):
        v = values[j]
        g = label[v]
        if g < 0:
            label[v] = k
            ids[j] = k
            first[j] = True
            k += 1
        else:
            ids[j] = g
    return k


def _readonly(values: Arr, dtype: Any) -> Arr:
    """``values`` as a contiguous read-only array of ``dtype`` (a view when it already is
    one): compiled code is specialised on the array type, writability included, so its
    inputs are always read-only (Arrow's buffers are) and one compiled version serves."""
    out = np.ascontiguousarray(values, dtype=dtype)
    if out.flags.writeable:
        out = out.view()
        out.flags.writeable = False
    return out


class _DenseIds:
    """Dense ids (in order of first appearance) of the values of one column of a
    snapshot, fed part by part: a direct-addressed table while every value is below
    ``max(_SMALL_IDS_MIN, _SMALL_IDS_PER_ROW * rows)``, else (from the part that brings a
    larger one) an :class:`IdTable` given the values seen so far in id order first, so
    that the ids go on unchanged."""

    def __init__(self, expected_rows: int) -> None:
        self._expected = expected_rows
        self._rows = 0
        self._label = np.empty(0, np.int32)
        self._table: IdTable | None = None
        self._spare: IdTable | None = None  # a cleared table, kept from an earlier use
        self.n = 0

    @classmethod
    def reused(cls, old: _DenseIds | None, expected_rows: int) -> _DenseIds:
        """``old`` reset for a snapshot of ``expected_rows`` (see :meth:`reset`), or a new
        instance where there is none."""
        if old is None:
            return cls(expected_rows)
        old.reset(expected_rows)
        return old

    def reset(self, expected_rows: int) -> None:
        """Forget every value, as a new instance for ``expected_rows`` would, but keep the
        tables' memory for the next snapshot: a fresh table is faulted in page by page (the
        kernel zeroes each), 1 MB of them costing 0.15-4 ms on this project's VMs, where
        clearing a table already in memory costs ~0.1 ms per MB."""
        self._expected = expected_rows
        self._rows = 0
        self.n = 0
        self._label.fill(-1)
        if self._table is not None:
            self._table.clear()
            self._spare, self._table = self._table, None

    def ids_of(self, values: Arr, ids: Arr, first: Arr) -> None:
        """Ids of ``values`` (uint64, read-only) into ``ids`` (int32), first rows flagged
        in ``first`` (all False)."""
        self._rows += len(values)
        if not len(values):
            return
        if self._table is None:
            top = int(values.max())
            bound = max(_SMALL_IDS_MIN, _SMALL_IDS_PER_ROW * max(self._expected, self._rows))
            if top >= bound:
                self._to_table()
            elif top >= self._label.size:
                grown = np.full(min(bound, max(top + 1, 2 * self._label.size)), -1, np.int32)
                grown[: self._label.size] = self._label
                self._label = grown
        if self._table is None:
            self.n = int(_small_ids(values, self._label, ids, first, self.n))
        else:
            self._table.ids_of(values, first, ids)
            self.n = self._table.n

    def _to_table(self) -> None:
        seen = np.flatnonzero(self._label >= 0)
        by_id = np.empty(self.n, np.uint64)
        by_id[self._label[seen]] = seen
        self._label = np.empty(0, np.int32)
        need = max(self._expected, self._rows)
        table, self._spare = self._spare, None
        if table is None or table.capacity < need:
            table = None  # (freed before the larger one is made)
            table = IdTable(need, keep_values=True)
        self._table = table
        self._table.ids_of(by_id)  # distinct, in id order: ids 0..n-1 again


def _refilled(old: Arr | None, shape: tuple[int, ...], dtype: Any, fill: Any) -> Arr:
    """A table of ``shape`` (or more rows) all ``fill``: ``old`` refilled where it has the
    dtype, the columns and the rows (its memory is faulted in already), else a new one."""
    if (
        old is None
        or old.dtype != np.dtype(dtype)
        or old.shape[1:] != shape[1:]
        or len(old) < shape[0]
    ):
        old = None  # (freed before the new one is made)
        return np.full(shape, fill, dtype)
    old.fill(fill)
    return old


def _room(table: Arr, n: int, fill: Any) -> Arr:
    """``table`` (one row per id) with at least ``n`` rows: itself, or a copy grown to
    twice its rows or ``n``, the new rows ``fill``."""
    if len(table) >= n:
        return table
    grown = np.full((max(n, 2 * len(table)), *table.shape[1:]), fill, table.dtype)
    grown[: len(table)] = table
    return grown


@compiled_on_first_call(cache=True, nogil=True)
def _count_runs(
    heads: Arr, codes: Arr, hid: Arr, fid: Arr, first_hash: Arr, first_frame: Arr,
    zero: Arr, pid: Arr, kept: Arr, zero_seen: Arr, last_run: Arr, freed: Arr, state: Arr,
    out: Arr, seen_hash: Arr, seen_frame: Arr,
) -> None:  # fmt: skip  # pragma: no cover - compiled
    """One pass in scan order over a batch, run by run (``heads``: the first row of each
    run of pages of one mapping), for the totals and the groupings of up to 64 groups.

    Totals: the frames an ideal scanner frees into ``freed`` (one row per frame: its
    first; the first frame of each hash is kept, every zero-content frame is freed), the
    distinct (hash, pid) pairs (pids come in runs) and the distinct zero frames (a frame
    id of ``_LONE``: a frame of its own). ``kept``, ``zero_seen`` and ``last_run`` carry
    from batch to batch (all False, -1 at first); ``state`` too: the run of pids, the
    last pid, the pairs and the zero frames so far.

    Groupings: ``codes[k, q]`` the group of run ``q`` in grouping ``k``, ``out[k]`` its
    counts per group (pages, zero pages, naive saved pages, fork-shared pages, ideal saved
    frames, distinct frames, distinct hashes), and per id one mask of groups per grouping
    side by side (``seen_*[id, k]``), so one pass reads the columns once and the masks of
    an id in one cache line; the counts of a run are added to its groups once."""
    n_sets = codes.shape[0]
    one = seen_hash.dtype.type(1)
    bits = np.zeros(n_sets, seen_hash.dtype)
    new_frames = np.zeros(n_sets, np.int64)
    new_hashes = np.zeros(n_sets, np.int64)
    run = state[0]
    last = state[1]
    pairs = state[2]
    zero_frames = state[3]
    n = hid.size
    for q in range(heads.size):
        a = heads[q]
        b = heads[q + 1] if q + 1 < heads.size else n
        p = pid[a]
        if p != last:
            run += 1
            last = p
        for k in range(n_sets):
            bits[k] = one << seen_hash.dtype.type(codes[k, q])
            new_frames[k] = 0
            new_hashes[k] = 0
        zeros = 0
        naive = 0
        fork = 0
        frees = 0
        for r in range(a, b):
            h = hid[r]
            f = fid[r]
            z = zero[r]
            if last_run[h] != run:
                last_run[h] = run
                pairs += 1
            if first_frame[r]:
                if z or kept[h]:
                    freed[r] = True
                    frees += 1
                else:
                    kept[h] = True
            else:
                fork += 1
            if not first_hash[r]:
                naive += 1
            if z:
                zeros += 1
                if f < 0:
                    zero_frames += 1
                elif not zero_seen[f]:
                    zero_seen[f] = True
                    zero_frames += 1
            for k in range(n_sets):
                bit = bits[k]
                if f < 0:
                    new_frames[k] += 1
                elif not seen_frame[f, k] & bit:
                    seen_frame[f, k] |= bit
                    new_frames[k] += 1
                if not seen_hash[h, k] & bit:
                    seen_hash[h, k] |= bit
                    new_hashes[k] += 1
        for k in range(n_sets):
            g = codes[k, q]
            out[k, g, 0] += b - a
            out[k, g, 1] += zeros
            out[k, g, 2] += naive
            out[k, g, 3] += fork
            out[k, g, 4] += frees
            out[k, g, 5] += new_frames[k]
            out[k, g, 6] += new_hashes[k]
    state[0] = run
    state[1] = last
    state[2] = pairs
    state[3] = zero_frames


@compiled_on_first_call(cache=True, nogil=True)
def _group_counts(
    codes: Arr, hid: Arr, fid: Arr, first_hash: Arr, first_frame: Arr, freed: Arr, zero: Arr,
    out: Arr, seen_hash: Arr, seen_frame: Arr,
) -> None:  # fmt: skip  # pragma: no cover - compiled
    """Per group (``codes`` per row) into ``out`` (zeros, one row per group): pages, zero
    pages, naive saved pages, fork-shared pages, ideal saved frames, distinct frames,
    distinct hashes. ``seen_hash`` and ``seen_frame``: zeros (64 bits), one per id; no
    frame id is ``_LONE`` here.

    For a grouping of more groups than a mask has bits (up to 64 groups,
    :func:`_count_runs` keeps per id the set of groups that have seen it): rows are
    visited group by group (a counting sort) and one mark per id (the group + 1) tells
    whether the group has seen it. So it needs the whole snapshot's rows at once."""
    n = codes.size
    n_groups = out.shape[0]
    for r in range(n):
        g = codes[r]
        out[g, 0] += 1
        out[g, 1] += zero[r]
        out[g, 2] += not first_hash[r]
        out[g, 3] += not first_frame[r]
        out[g, 4] += freed[r]
    start = np.zeros(n_groups + 1, np.int64)
    for r in range(n):
        start[codes[r] + 1] += 1
    for g in range(n_groups):
        start[g + 1] += start[g]
    pos = start[:-1].copy()
    order = np.empty(n, np.int64)
    for r in range(n):
        order[pos[codes[r]]] = r
        pos[codes[r]] += 1
    for g in range(n_groups):
        mark = seen_hash.dtype.type(g + 1)
        for k in range(start[g], start[g + 1]):
            r = order[k]
            if seen_frame[fid[r]] != mark:
                seen_frame[fid[r]] = mark
                out[g, 5] += 1
            if seen_hash[hid[r]] != mark:
                seen_hash[hid[r]] = mark
                out[g, 6] += 1


def _label_set(text: str | None) -> str:
    if not text:
        return _NO_LABELS
    try:
        obj = json.loads(text)
    except ValueError:
        return text
    if not isinstance(obj, dict) or not obj:
        return _NO_LABELS
    return ",".join(f"{k}={obj[k]}" for k in sorted(obj))


@dataclass(frozen=True)
class _Grouping:
    """Group names, and the code of each key row (processes or mappings) of a snapshot."""

    names: list[str]
    key_codes: Arr  # int32, one per key row, then one for a row no key has (index -1)

    @classmethod
    def of(cls, names_per_key: list[str], missing: str) -> _Grouping:
        names, codes = np.unique(
            np.asarray([*names_per_key, missing], dtype=object), return_inverse=True
        )
        return cls([str(x) for x in names], np.asarray(codes, dtype=np.int32))


#: Masks of groups per id in :func:`_count_runs`: the narrowest with a bit per group
#: of the widest grouping (a table of a byte per id for up to 8 groups fits the caches far
#: better than one of 8).
_MASK_TYPES = (np.uint8, np.uint16, np.uint32, np.uint64)
#: Groups beyond which a grouping is counted alone, group by group (:func:`_group_counts`).
_MASK_GROUPS_MAX = 64


def _mask_type(n_groups: int) -> type[np.unsignedinteger[Any]]:
    for t in _MASK_TYPES:
        if n_groups <= np.dtype(t).itemsize * 8:
            return t
    raise ValueError(f"{n_groups} groups: more than a mask has bits")


def _potentials(names: list[str], counts: list[list[int]]) -> tuple[GroupPotential, ...]:
    out = [
        GroupPotential(
            group=names[i],
            pages=int(c[0]),
            zero_pages=int(c[1]),
            frames=int(c[5]),
            distinct_hashes=int(c[6]),
            naive_saved_pages=int(c[2]),
            ideal_saved_frames=int(c[4]),
            fork_shared_pages=int(c[3]),
        )
        for i, c in enumerate(counts)
        if c[0]
    ]
    out.sort(key=lambda g: (-g.pages, g.group))
    return tuple(out)


@dataclass(frozen=True)
class _Runs:
    """Runs of consecutive pages with equal keys (one process, or one mapping)."""

    heads: Arr  # first row of each run
    lengths: Arr  # rows of each run

    @classmethod
    def of(cls, *keys: Arr) -> _Runs:
        n = len(keys[0])
        change = np.zeros(n, dtype=bool)
        if n:
            change[0] = True
            for key in keys:
                change[1:] |= key[1:] != key[:-1]
        heads = np.flatnonzero(change)
        return cls(heads=heads, lengths=np.diff(np.append(heads, n)))


@dataclass
class _Batch:
    """One batch's candidate pages: their columns and what the passes make of them."""

    pid: Arr
    vma: Arr
    zero: Arr
    hid: Arr
    fid: Arr
    first_hash: Arr
    first_frame: Arr
    freed: Arr


class SnapshotCounter:
    """The static potential of one snapshot, its pages fed batch by batch in scan order
    (:meth:`feed`), then :meth:`result`.

    Memory holds the batch being counted and, per distinct hash and frame, a few bytes
    (dense-id tables, marks); not the snapshot's pages. ``expected_rows`` sizes the
    tables (they grow past it). ``ordered``: the pids come in runs (pages in scan order
    ``(pid, page_addr)``, as every trace file is checked to be), so the distinct
    ``(hash, pid)`` pairs are counted per run; otherwise by a table of the pairs.
    ``reuse``: a counter whose result was taken, whose tables this one clears and keeps
    (the next snapshot's counter: its tables are then in memory already).
    """

    def __init__(
        self,
        processes: pa.Table,
        mappings: pa.Table,
        *,
        expected_rows: int = 0,
        ordered: bool = True,
        reuse: SnapshotCounter | None = None,
    ) -> None:
        expected = max(int(expected_rows), 1)
        self._processes = processes
        self._map_pid = as_numpy(mappings.column("pid"), np.int64)
        self._map_start = as_numpy(mappings.column("start"), np.uint64)
        self._proc_pid = as_numpy(processes.column("pid"), np.int64)
        self._proc_key = np.zeros(len(self._proc_pid), np.int64)  # a pid alone is the key
        kinds = [k if k else _UNKNOWN for k in mappings.column("kind").to_pylist()]
        names = processes.column_names
        comms = processes.column("comm").to_pylist() if "comm" in names else []
        comm_of = (
            [c if c else _UNKNOWN for c in comms] if comms else [_UNKNOWN] * processes.num_rows
        )
        labels = processes.column("labels").to_pylist() if "labels" in names else []
        self._groupings = [_Grouping.of(kinds, _UNKNOWN), _Grouping.of(comm_of, _UNKNOWN)]
        if any(labels):
            self._groupings.append(_Grouping.of([_label_set(x) for x in labels], _NO_LABELS))
        self._small = [i for i, g in enumerate(self._groupings) if len(g.names) <= _MASK_GROUPS_MAX]
        self._large = [i for i in range(len(self._groupings)) if i not in self._small]
        widest = max((len(self._groupings[i].names) for i in self._small), default=1)
        mask = _mask_type(widest)
        self._counts = np.zeros((len(self._small), widest, 7), np.int64)
        old = reuse._give_tables() if reuse is not None else {}
        shape = (expected, len(self._small))
        self._seen_hash = _refilled(old.pop("_seen_hash", None), shape, mask, 0)
        self._seen_frame = _refilled(old.pop("_seen_frame", None), shape, mask, 0)
        self._hashes = _DenseIds.reused(old.pop("_hashes", None), expected)
        self._frames = _DenseIds.reused(old.pop("_frames", None), expected)
        self._lone = 0
        self._kept = _refilled(old.pop("_kept", None), (expected,), np.bool_, False)
        self._last_run = _refilled(old.pop("_last_run", None), (expected,), np.int32, -1)
        self._zero_seen = _refilled(old.pop("_zero_seen", None), (expected,), np.bool_, False)
        self._state = np.array([-1, np.iinfo(np.int64).min, 0, 0], np.int64)
        self._ordered = ordered
        self._pairs = None if ordered else IdTable(expected)
        self._last_pid: int | None = None
        self._large_rows: list[tuple[Arr, ...]] = []  # per batch, for the large groupings
        self.pages = 0
        self.unhashed = 0
        self.zero_pages = 0
        self.freed_frames = 0

    #: What a counter hands to the next snapshot's (``reuse``): every table sized by ids.
    _TABLES = ("_seen_hash", "_seen_frame", "_hashes", "_frames", "_kept", "_last_run",
               "_zero_seen")  # fmt: skip

    def _give_tables(self) -> dict[str, Any]:
        """This counter's tables, for the next snapshot's counter; this one is left with
        nothing (using it raises AttributeError), so that no two counters share a table."""
        tables = {k: getattr(self, k) for k in self._TABLES}
        vars(self).clear()
        return tables

    def feed(self, pages: pa.Table | pa.RecordBatch) -> None:
        """Count the next pages (columns ``pid, vma_start, content_hash, frame_id,
        flags``), which follow every page fed before in scan order."""
        batches = pages.to_batches() if hasattr(pages, "to_batches") else [pages]
        for batch in batches:
            if batch.num_rows:
                self._count(self._batch(batch))

    def _batch(self, pages: pa.RecordBatch) -> _Batch:
        chash: Any = pages.column("content_hash")
        keep: Arr | None = None
        if chash.null_count:
            keep = ~as_numpy(chash.is_null(), bool)
            self.unhashed += len(keep) - int(np.count_nonzero(keep))

        def col(name: str, dtype: Any) -> Arr:
            values = as_numpy(pages.column(name), dtype, null=0)
            return _readonly(values if keep is None else values[keep], dtype)

        pid = col("pid", np.int32)
        n = len(pid)
        zero = (col("flags", np.uint16) & np.uint16(S.PageFlag.ZERO)) != 0
        hid = np.empty(n, np.int32)
        first_hash = np.zeros(n, np.bool_)
        self._hashes.ids_of(col("content_hash", np.uint64), hid, first_hash)
        fid = np.empty(n, np.int32)
        first_frame = np.zeros(n, np.bool_)
        frames: Any = pages.column("frame_id")
        lone = as_numpy(frames.is_null(), bool) if frames.null_count else None
        if lone is not None and keep is not None:
            lone = lone[keep]
        if lone is None or not lone.any():
            self._frames.ids_of(col("frame_id", np.uint64), fid, first_frame)
        else:  # a hashed page without a frame: a frame of its own
            have = ~lone
            ids = np.empty(int(np.count_nonzero(have)), np.int32)
            first = np.zeros(len(ids), np.bool_)
            self._frames.ids_of(_readonly(col("frame_id", np.uint64)[have], np.uint64), ids, first)
            fid[have], first_frame[have] = ids, first
            fid[lone], first_frame[lone] = _LONE, True
            self._lone += len(lone) - len(ids)
        return _Batch(
            pid=pid, vma=col("vma_start", np.uint64), zero=zero, hid=hid, fid=fid,
            first_hash=first_hash, first_frame=first_frame, freed=np.zeros(n, np.bool_),
        )  # fmt: skip

    def _count(self, b: _Batch) -> None:
        n_hashes, n_frames = self._hashes.n, self._frames.n
        self._kept = _room(self._kept, n_hashes, False)
        self._last_run = _room(self._last_run, n_hashes, -1)
        self._zero_seen = _room(self._zero_seen, n_frames, False)
        if self._ordered:
            if len(b.pid) > 1 and not bool(np.all(b.pid[1:] >= b.pid[:-1])):
                raise ValueError("pages fed as ordered are not in runs of pids")
            if self._last_pid is not None and int(b.pid[0]) < self._last_pid:
                raise ValueError("pages fed as ordered are not in runs of pids")
            self._last_pid = int(b.pid[-1])
        runs = _Runs.of(b.pid, b.vma)
        run_pid, run_vma = b.pid[runs.heads], b.vma[runs.heads]
        map_row = lookup_rows(self._map_pid, self._map_start, run_pid, run_vma)
        proc_row = lookup_rows(self._proc_pid, self._proc_key, run_pid, np.zeros_like(run_pid))
        run_codes = [
            g.key_codes[map_row if i == 0 else proc_row] for i, g in enumerate(self._groupings)
        ]
        self._seen_hash = _room(self._seen_hash, n_hashes, 0)
        self._seen_frame = _room(self._seen_frame, n_frames, 0)
        small = np.empty((len(self._small), len(runs.heads)), np.int32)
        for k, i in enumerate(self._small):
            small[k] = run_codes[i]
        _count_runs(
            runs.heads, _readonly(small, np.int32), b.hid, b.fid, b.first_hash, b.first_frame,
            b.zero, b.pid, self._kept, self._zero_seen, self._last_run, b.freed, self._state,
            self._counts, self._seen_hash, self._seen_frame,
        )  # fmt: skip
        if self._pairs is not None:
            keys = (b.hid.astype(np.uint64) << np.uint64(32)) | b.pid.astype(np.uint32)
            self._pairs.ids_of(keys)
        self.pages += len(b.pid)
        self.zero_pages += int(np.count_nonzero(b.zero))
        self.freed_frames += int(np.count_nonzero(b.freed))
        if self._large:
            self._large_rows.append(
                (*(np.repeat(run_codes[i], runs.lengths) for i in self._large), b.hid, b.fid,
                 b.first_hash, b.first_frame, b.freed, b.zero)
            )  # fmt: skip

    def _large_counts(self) -> list[Arr]:
        """The counts of the groupings of more groups than a mask has bits, from the
        rows kept for them (:func:`_group_counts` visits each group's rows together)."""
        k = len(self._large)
        cols = [np.concatenate(c) for c in zip(*self._large_rows, strict=True)]
        hid, fid, first_hash, first_frame, freed, zero = cols[k:]
        lone = fid < 0
        fid[lone] = np.arange(self._frames.n, self._frames.n + int(lone.sum()), dtype=np.int32)
        out = []
        for j, i in enumerate(self._large):
            counts = np.zeros((len(self._groupings[i].names), 7), np.int64)
            _group_counts(
                cols[j], hid, fid, first_hash, first_frame, freed, zero, counts,
                np.zeros(self._hashes.n, np.uint64),
                np.zeros(self._frames.n + self._lone, np.uint64),
            )  # fmt: skip
            out.append(counts)
        return out

    def result(
        self, *, host: str = "", snapshot_id: int = 0, time_s: float = 0.0
    ) -> SnapshotPotential:
        """The snapshot's potential, from every page fed."""
        n = self.pages
        n_hashes = self._hashes.n
        n_frames = self._frames.n + self._lone
        pairs = int(self._state[2]) if self._pairs is None else self._pairs.n
        breakdowns: list[tuple[GroupPotential, ...]] = [() for _ in self._groupings]
        for k, i in enumerate(self._small):
            breakdowns[i] = _potentials(self._groupings[i].names, self._counts[k].tolist())
        if self._large and self._large_rows:
            for i, counts in zip(self._large, self._large_counts(), strict=True):
                breakdowns[i] = _potentials(self._groupings[i].names, counts.tolist())
        by_kind, by_comm, *by_labels = breakdowns
        zero_pfn = 0
        if "zero_pfn_pages" in self._processes.column_names:
            zp: Any = self._processes.column("zero_pfn_pages")
            zero_pfn = int(np.sum(as_numpy(zp, np.int64, null=0)))
        return SnapshotPotential(
            host=host,
            snapshot_id=int(snapshot_id),
            time_s=float(time_s),
            processes=int(self._processes.num_rows),
            pages=n,
            frames=n_frames,
            distinct_hashes=n_hashes,
            zero_pages=self.zero_pages,
            zero_frames=int(self._state[3]),
            naive_saved_pages=n - n_hashes,
            ideal_saved_frames=self.freed_frames,
            fork_shared_pages=n - n_frames,
            within_process_saved_pages=n - pairs,
            cross_process_saved_pages=pairs - n_hashes,
            unhashed_pages=self.unhashed,
            zero_pfn_pages=zero_pfn,
            by_kind=by_kind,
            by_comm=by_comm,
            by_label=by_labels[0] if by_labels else (),
        )


def snapshot_potential(
    pages: pa.Table,
    processes: pa.Table,
    mappings: pa.Table,
    *,
    host: str = "",
    snapshot_id: int = 0,
    time_s: float = 0.0,
) -> SnapshotPotential:
    """The static dedup potential of one snapshot (a :class:`SnapshotCounter` fed the
    whole table).

    Parameters
    ----------
    pages
        The snapshot's ``pages`` rows (columns ``pid, vma_start, content_hash, frame_id,
        flags``), in scan order ``(pid, page_addr)``; rows whose pids do not come in runs
        are counted too (the attribution follows the row order).
    processes, mappings
        The snapshot's ``processes`` and ``mappings`` rows (for ``comm``/``labels`` and
        mapping kinds).
    host, snapshot_id, time_s
        Recorded in the result.

    Returns
    -------
    SnapshotPotential
        Totals and breakdowns by mapping kind, comm and label set.
    """
    pid = as_numpy(pages.column("pid"), np.int32)
    ordered = len(pid) < 2 or bool(np.all(pid[1:] >= pid[:-1]))
    counter = SnapshotCounter(processes, mappings, expected_rows=pages.num_rows, ordered=ordered)
    counter.feed(pages)
    return counter.result(host=host, snapshot_id=snapshot_id, time_s=time_s)


def _slice_by_snapshot(table: pa.Table) -> dict[int, pa.Table]:
    """Rows of a small table per ``snapshot_id`` (the table is sorted by it)."""
    if not table.num_rows:
        return {}
    sid = as_numpy(table.column("snapshot_id"), np.int64)
    order = np.argsort(sid, kind="stable")
    if np.any(order[1:] < order[:-1]):
        table, sid = table.take(order), sid[order]
    values, starts = np.unique(sid, return_index=True)
    ends = np.append(starts[1:], len(sid))
    return {
        int(v): table.slice(int(a), int(b - a))
        for v, a, b in zip(values.tolist(), starts.tolist(), ends.tolist(), strict=True)
    }


def _rows_or_empty(by_snapshot: dict[int, pa.Table], sid: int, name: str) -> pa.Table:
    """The rows of one snapshot, or an empty table (built only when needed: building one
    makes pyarrow import pandas)."""
    rows = by_snapshot.get(sid)
    return rows if rows is not None else S.SCHEMAS[name].empty_table()


def host_potential(ht: HostTrace) -> list[SnapshotPotential]:
    """Static potential of every snapshot of an in-memory :class:`HostTrace`."""
    procs = _slice_by_snapshot(ht.processes)
    maps = _slice_by_snapshot(ht.mappings)
    out = []
    for sid, t in zip(ht.snapshot_ids.tolist(), ht.times_s.tolist(), strict=True):
        out.append(
            snapshot_potential(
                ht.pages_of(sid),
                _rows_or_empty(procs, sid, "processes"),
                _rows_or_empty(maps, sid, "mappings"),
                host=ht.host,
                snapshot_id=sid,
                time_s=t,
            )
        )
    return out


def summarize_trace(
    path: str | os.PathLike[str], *, progress: Progress = NULL_PROGRESS
) -> TraceSummary:
    """Summarise a trace directory: hosts, sizes, and per-snapshot static potential.

    Pages are streamed batch by batch (:meth:`~planner.trace.io.Trace.iter_pages`), each
    counted while the next is decoded.

    Raises
    ------
    TraceFormatError
        ``path`` is not a readable trace.
    """
    # the compiled code loads from numba's cache while the trace is opened, hashed and its
    # first snapshot decoded
    # (its tables, in memory from the first snapshot to the last, on normal pages where
    # fresh huge pages are cold: planner._heap.state_pages)
    trace = open_trace(path)  # a path that is no trace is one line at once, no thread started
    with compiled_code_loading((__name__, "planner._idtable")), state_pages():
        return _summarize_trace(trace, progress)


def _host_pages(trace: Trace, host: str) -> Iterator[int | pa.Table]:
    """For :func:`read_ahead`'s thread: 0 at once (taking it starts the thread), the row
    count of ``host``'s pages file (its footer, once the file is verified), then its
    batches of pages in file order. So the pages file is hashed (hashlib releases the GIL)
    and its first batches decoded while the caller reads the small tables, and each later
    batch is decoded while the caller counts the one before."""
    yield 0
    batches = trace.iter_pages(host, ("snapshot_id", *_PAGE_COLUMNS), batch_rows=_BATCH_ROWS)
    first = next(batches, None)  # hashed while decoded: verified when it comes
    yield trace.pages_rows(host)
    if first is not None:
        yield first
        del first
        yield from batches


def _summarize_trace(trace: Trace, progress: Progress) -> TraceSummary:
    files: dict[str, dict[str, Any]] = trace.manifest.get("files", {})
    hosts: list[HostSummary] = []
    snapshots: list[SnapshotPotential] = []
    process_keys = 0
    for host in trace.hosts:
        hosts.append(_summarize_host(trace, host, files, snapshots, progress))
        process_keys += hosts[-1].processes
    progress.finish()
    manifest_bytes = (trace.path / S.MANIFEST_NAME).stat().st_size
    return TraceSummary(
        path=str(trace.path),
        schema_version=trace.schema_version,
        trace_hash=trace.trace_hash,
        source=trace.manifest.get("source"),
        created_by=trace.manifest.get("created_by"),
        hosts=tuple(hosts),
        processes=process_keys,
        pages=sum(h.pages for h in hosts),
        pages_file_bytes=sum(h.pages_file_bytes for h in hosts),
        total_bytes=sum(h.total_bytes for h in hosts) + manifest_bytes,
        snapshots=tuple(snapshots),
        host_cpu=trace.host_cpu,
    )


def _summarize_host(
    trace: Trace,
    host: str,
    files: dict[str, dict[str, Any]],
    snapshots: list[SnapshotPotential],
    progress: Progress,
) -> HostSummary:
    """One host's summary; its snapshots' potentials appended to ``snapshots`` in order."""
    with contextlib.closing(read_ahead(_host_pages(trace, host))) as stream:
        next(stream)  # the thread runs: the pages file is being hashed
        snaps = trace.read_table(host, "snapshots")
        procs = trace.read_table(host, "processes")
        maps = trace.read_table(host, "mappings", ["snapshot_id", "pid", "start", "kind"])
        proc_by = _slice_by_snapshot(procs)
        map_by = _slice_by_snapshot(maps)
        times: dict[int, float] = {
            int(k): float(v)
            for k, v in zip(
                as_numpy(snaps.column("snapshot_id"), np.int64).tolist(),
                as_numpy(snaps.column("time_s"), np.float64).tolist(),
                strict=True,
            )
        }
        pages_by: dict[int, SnapshotPotential] = {}
        rows = cast("int", next(stream))
        progress.start(f"info: pages of {host}", rows)
        expected = rows // max(len(times), 1)  # the first snapshot's; then the one before's
        current: tuple[int, SnapshotCounter] | None = None

        def finish() -> int:
            if current is None:
                return expected
            sid, counter = current
            pages_by[sid] = counter.result(
                host=host, snapshot_id=sid, time_s=times.get(sid, float("nan"))
            )
            return counter.pages + counter.unhashed

        for item in stream:
            table = cast("pa.Table", item)
            ids = as_numpy(table.column("snapshot_id"), np.int64)
            cuts = [0, *(np.flatnonzero(ids[1:] != ids[:-1]) + 1).tolist(), len(ids)]
            for a, b in itertools.pairwise(cuts):
                value = int(ids[a])
                if current is None or current[0] != value:
                    expected = finish()
                    current = (
                        value,
                        SnapshotCounter(
                            _rows_or_empty(proc_by, value, "processes"),
                            _rows_or_empty(map_by, value, "mappings"),
                            expected_rows=expected,
                            reuse=None if current is None else current[1],
                        ),
                    )
                current[1].feed(table.slice(a, b - a))
            progress.advance(table.num_rows)
            del table, item  # the reader's next batch may take its memory
        finish()
    for sid, t in times.items():
        if sid not in pages_by:
            pages_by[sid] = snapshot_potential(
                S.PAGES_SCHEMA.empty_table(),
                _rows_or_empty(proc_by, sid, "processes"),
                _rows_or_empty(map_by, sid, "mappings"),
                host=host,
                snapshot_id=sid,
                time_s=t,
            )
    snapshots.extend(pages_by[s] for s in sorted(pages_by))
    n_proc = _distinct_processes(procs)
    prefix = f"{S.HOST_DIR_PREFIX}{host}/"
    host_files = {k: v for k, v in files.items() if k.startswith(prefix)}
    time_values = list(times.values())
    meta_row = snaps.slice(0, 1).to_pylist()[0] if snaps.num_rows else {}
    return HostSummary(
        host=host,
        snapshots=snaps.num_rows,
        processes=n_proc,
        pages=rows,
        pages_file_bytes=int(host_files.get(f"{prefix}pages.parquet", {}).get("bytes", 0)),
        total_bytes=sum(int(v.get("bytes", 0)) for v in host_files.values()),
        time_span_s=(max(time_values) - min(time_values)) if time_values else 0.0,
        meta={
            k: meta_row.get(k)
            for k in (
                "kernel_release",
                "page_size",
                "hz",
                "hash_algo",
                "zero_hash",
                "tool_version",
            )
        },
    )


def _distinct_processes(procs: pa.Table) -> int:
    """Distinct processes ``(pid, proc_start)`` of one host."""
    if not procs.num_rows:
        return 0
    pid = as_numpy(procs.column("pid"), np.int64)
    start = as_numpy(procs.column("proc_start"), np.uint64)
    order = np.lexsort((start, pid))
    p, s = pid[order], start[order]
    new = np.ones(len(p), dtype=bool)
    new[1:] = (p[1:] != p[:-1]) | (s[1:] != s[:-1])
    return int(np.count_nonzero(new))


__all__ = [
    "GroupPotential",
    "HostSummary",
    "SnapshotCounter",
    "SnapshotPotential",
    "TraceSummary",
    "host_potential",
    "snapshot_potential",
    "summarize_trace",
]
