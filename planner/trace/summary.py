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

Counting is by dense ids and linear compiled passes (see "grouping" below), one
snapshot at a time: memory holds one snapshot's columns, whatever the trace size.
"""

from __future__ import annotations

import contextlib
import json
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np

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
    from collections.abc import Iterator, Sequence

    import pyarrow as pa

    from planner._progress import Progress
    from planner.trace.io import HostTrace, Trace

Arr = np.ndarray[Any, Any]

_PAGE_COLUMNS = ("pid", "vma_start", "content_hash", "frame_id", "flags")
#: Columns :func:`snapshot_potential` joins into one array (the others are read in parts).
_JOINED_COLUMNS = ("pid", "vma_start")
_UNKNOWN = "(unknown)"
_NO_LABELS = "(no labels)"
#: Snapshots whose potentials ``info`` computes at once (a thread each; the compiled
#: passes release the GIL): each holds its pages and scratch arrays, ~0.3 GB for a 4 M-page
#: snapshot, so two, whatever the cores (one more than before: the reader's next snapshot
#: was decoded while one was counted, and a core then idled).
_IN_FLIGHT = 2


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

#: Values below ``max(_SMALL_IDS_MIN, _SMALL_IDS_PER_ROW * rows)`` take the direct table.
_SMALL_IDS_PER_ROW = 4
_SMALL_IDS_MIN = 1 << 16


def _distinct(values: Arr) -> int:
    if not len(values):
        return 0
    v = np.sort(values)
    return int(1 + np.count_nonzero(v[1:] != v[:-1]))


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


def _dense_ids(chunks: Sequence[Arr]) -> tuple[Arr, Arr, int]:
    """Per row of the ``chunks`` (one column, in parts): a dense id of its value (ids in
    order of first appearance) and whether it is the value's first row; and the number of
    distinct values. The parts are read where they are (Arrow's buffers), not joined."""
    parts = [_readonly(c, np.uint64) for c in chunks if len(c)]
    n = sum(len(c) for c in parts)
    ids = np.empty(n, np.int32)
    first = np.zeros(n, np.bool_)
    if n == 0:
        return ids, first, 0
    top = max(int(c.max()) for c in parts)
    ends = np.cumsum([len(c) for c in parts]).tolist()
    spans = [
        (c, ids[e - len(c) : e], first[e - len(c) : e]) for c, e in zip(parts, ends, strict=True)
    ]
    k = 0
    if top < max(_SMALL_IDS_MIN, _SMALL_IDS_PER_ROW * n):
        label = np.full(top + 1, -1, np.int32)
        for c, ids_c, first_c in spans:
            k = _small_ids(c, label, ids_c, first_c, k)
    else:
        table = IdTable(n, keep_values=False)
        for c, ids_c, first_c in spans:
            table.ids_of(c, first_c, ids_c)
        k = table.n
    return ids, first, int(k)


def _frame_ids(chunks: Sequence[Arr], missing: Arr | None) -> tuple[Arr, Arr, int]:
    """:func:`_dense_ids` of the frames, a page without a frame (``missing``) being its own."""
    if missing is None or not missing.any():
        return _dense_ids(chunks)
    f = np.concatenate(chunks) if chunks else np.empty(0, np.uint64)
    ids = np.empty(len(f), np.int32)
    first = np.ones(len(f), np.bool_)
    have = ~missing
    ids[have], first[have], k = _dense_ids([f[have]])
    lone = int(np.count_nonzero(missing))
    ids[missing] = np.arange(k, k + lone, dtype=np.int32)
    return ids, first, k + lone


@compiled_on_first_call(cache=True, nogil=True)
def _totals(
    hid: Arr, fid: Arr, first_frame: Arr, zero: Arr, pid: Arr,
    kept: Arr, zero_seen: Arr, last_run: Arr, freed: Arr,
) -> tuple[int, int]:  # fmt: skip  # pragma: no cover - compiled
    """One pass in scan order: the frames an ideal scanner frees into ``freed`` (one row
    per frame: its first; the first frame of each hash is kept, every zero-content frame
    is freed), the distinct (hash, pid) pairs (pids come in runs), and the distinct zero
    frames. Scratch: ``kept`` and ``zero_seen`` all False, ``last_run`` all -1."""
    run = -1
    pairs = 0
    zero_frames = 0
    for r in range(hid.size):
        if r == 0 or pid[r] != pid[r - 1]:
            run += 1
        h = hid[r]
        if last_run[h] != run:
            last_run[h] = run
            pairs += 1
        if first_frame[r]:
            if zero[r] or kept[h]:
                freed[r] = True
            else:
                kept[h] = True
        if zero[r] and not zero_seen[fid[r]]:
            zero_seen[fid[r]] = True
            zero_frames += 1
    return pairs, zero_frames


@compiled_on_first_call(cache=True, nogil=True)
def _group_counts(
    codes: Arr, hid: Arr, fid: Arr, first_hash: Arr, first_frame: Arr, freed: Arr, zero: Arr,
    out: Arr, seen_hash: Arr, seen_frame: Arr,
) -> None:  # fmt: skip  # pragma: no cover - compiled
    """Per group (``codes`` per row) into ``out`` (zeros, one row per group): pages, zero
    pages, naive saved pages, fork-shared pages, ideal saved frames, distinct frames,
    distinct hashes. ``seen_hash`` and ``seen_frame``: zeros (64 bits), one per id.

    For a grouping of more groups than a mask has bits (up to 64 groups,
    :func:`_grouped_counts` keeps per id the set of groups that have seen it): rows are
    visited group by group (a counting sort) and one mark per id (the group + 1) tells
    whether the group has seen it."""
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


@compiled_on_first_call(cache=True, nogil=True)
def _grouped_counts(
    codes: Arr, hid: Arr, fid: Arr, first_hash: Arr, first_frame: Arr, freed: Arr, zero: Arr,
    out: Arr, seen_hash: Arr, seen_frame: Arr,
) -> None:  # fmt: skip  # pragma: no cover - compiled
    """:func:`_group_counts` of several groupings at once, each of up to 64 groups:
    ``codes[k]`` the group of each row in grouping ``k``, ``out[k]`` its counts, and per
    id one mask per grouping side by side (``seen_*[id, k]``), so one pass reads the
    columns once and the masks of an id in one cache line."""
    n_sets = codes.shape[0]
    one = seen_hash.dtype.type(1)
    for r in range(codes.shape[1]):
        h = hid[r]
        f = fid[r]
        for k in range(n_sets):
            g = codes[k, r]
            out[k, g, 0] += 1
            out[k, g, 1] += zero[r]
            out[k, g, 2] += not first_hash[r]
            out[k, g, 3] += not first_frame[r]
            out[k, g, 4] += freed[r]
            bit = one << seen_hash.dtype.type(g)
            if not seen_frame[f, k] & bit:
                seen_frame[f, k] |= bit
                out[k, g, 5] += 1
            if not seen_hash[h, k] & bit:
                seen_hash[h, k] |= bit
                out[k, g, 6] += 1


def _group_codes(
    names_per_key: list[str], runs: _Runs, key_row: Arr, missing: str
) -> tuple[list[str], Arr]:
    """Group names and a code per row, from the name of each key row (-1: ``missing``)
    and the key row of each run of pages."""
    names, key_codes = np.unique(
        np.asarray([*names_per_key, missing], dtype=object), return_inverse=True
    )
    codes = np.asarray(key_codes, dtype=np.int32)[key_row]  # key_row -1 -> the `missing` entry
    return [str(x) for x in names], _readonly(np.repeat(codes, runs.lengths), np.int32)


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
class _Attribution:
    """Per page: dense hash and frame ids, first-of-hash/frame masks, zero content and
    the frames an ideal scanner frees."""

    hid: Arr
    n_hashes: int
    fid: Arr
    n_frames: int
    first_hash: Arr
    first_frame: Arr
    zero: Arr
    freed_frame: Arr


#: Masks of groups per id in :func:`_grouped_counts`: the narrowest with a bit per group
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


def _breakdowns(
    groupings: list[tuple[list[str], Arr]], att: _Attribution
) -> list[tuple[GroupPotential, ...]]:
    """The breakdown of each grouping (group names, a code per row): those of up to
    :data:`_MASK_GROUPS_MAX` groups in one pass (:func:`_grouped_counts`), any other alone."""
    result: list[tuple[GroupPotential, ...]] = [() for _ in groupings]
    small = [i for i, (names, _) in enumerate(groupings) if len(names) <= _MASK_GROUPS_MAX]
    for i, (names, codes) in enumerate(groupings):
        if i in small:
            continue
        counts = np.zeros((len(names), 7), np.int64)
        _group_counts(
            codes, att.hid, att.fid, att.first_hash,
            att.first_frame, att.freed_frame, att.zero, counts,
            np.zeros(att.n_hashes, np.uint64), np.zeros(att.n_frames, np.uint64),
        )  # fmt: skip
        result[i] = _potentials(names, counts.tolist())
    if small:
        widest = max(len(groupings[i][0]) for i in small)
        seen = _mask_type(widest)
        codes = np.empty((len(small), len(att.hid)), np.int32)
        for k, i in enumerate(small):
            codes[k] = groupings[i][1]
        counts = np.zeros((len(small), widest, 7), np.int64)
        _grouped_counts(
            _readonly(codes, np.int32), att.hid, att.fid, att.first_hash,
            att.first_frame, att.freed_frame, att.zero, counts,
            np.zeros((att.n_hashes, len(small)), seen),
            np.zeros((att.n_frames, len(small)), seen),
        )  # fmt: skip
        for k, i in enumerate(small):
            result[i] = _potentials(groupings[i][0], counts[k].tolist())
    return result


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


def _chunks(col: Any, dtype: Any, keep: Arr | None) -> list[Arr]:
    """A column's values (nulls as 0) in its parts as Arrow holds them (no copy), or as
    one array of the rows of ``keep``."""
    parts = col.chunks if hasattr(col, "chunks") else [col]
    values = [as_numpy(c, dtype, null=0) for c in parts]
    if keep is None:
        return values
    joined = np.concatenate(values) if values else np.empty(0, dtype)
    return [joined[keep]]


def _joined(parts: list[Arr], dtype: Any) -> Arr:
    return _readonly(np.concatenate(parts) if len(parts) != 1 else parts[0], dtype)


def snapshot_potential(
    pages: pa.Table,
    processes: pa.Table,
    mappings: pa.Table,
    *,
    host: str = "",
    snapshot_id: int = 0,
    time_s: float = 0.0,
) -> SnapshotPotential:
    """The static dedup potential of one snapshot.

    Parameters
    ----------
    pages
        The snapshot's ``pages`` rows (columns ``pid, vma_start, content_hash, frame_id,
        flags``), in scan order ``(pid, page_addr)``.
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
    chash: Any = pages.column("content_hash")
    hashed: Arr | None = None
    if chash.null_count:
        hashed = ~as_numpy(chash.is_null(), bool)
    unhashed = 0 if hashed is None else int(np.count_nonzero(~hashed))

    def col(name: str, dtype: Any) -> list[Arr]:
        return _chunks(pages.column(name), dtype, hashed)

    pid = _joined(col("pid", np.int32), np.int32)
    zero = np.concatenate([(c & np.uint16(S.PageFlag.ZERO)) != 0 for c in col("flags", np.uint16)])
    n = len(pid)

    # --- totals ---------------------------------------------------------------------------
    hid, first_hash, n_hashes = _dense_ids(col("content_hash", np.uint64))
    frame_col: Any = pages.column("frame_id")
    missing = None
    if frame_col.null_count:  # a hashed page without a frame: its own frame
        missing = as_numpy(frame_col.is_null(), bool)
        if hashed is not None:
            missing = missing[hashed]
    fid, first_frame, n_frames = _frame_ids(col("frame_id", np.uint64), missing)
    freed = np.zeros(n, np.bool_)
    pairs, zero_frames = _totals(
        hid, fid, first_frame, zero, pid, np.zeros(n_hashes, np.bool_),
        np.zeros(n_frames, np.bool_), np.full(n_hashes, -1, np.int32), freed,
    )  # fmt: skip
    if n > 1 and not bool(np.all(pid[1:] >= pid[:-1])):  # pids not in runs: count exactly
        pairs = _distinct((hid.astype(np.uint64) << np.uint64(32)) | pid.astype(np.uint32))
    att = _Attribution(
        hid=hid, n_hashes=int(n_hashes), fid=fid, n_frames=int(n_frames),
        first_hash=first_hash, first_frame=first_frame, zero=zero, freed_frame=freed,
    )  # fmt: skip

    # --- breakdowns: a code per page, from the code of each run of pages ---------------------
    vma = _joined(col("vma_start", np.uint64), np.uint64)
    runs = _Runs.of(pid, vma)
    map_row = lookup_rows(
        as_numpy(mappings.column("pid"), np.int64),
        as_numpy(mappings.column("start"), np.uint64),
        pid[runs.heads],
        vma[runs.heads],
    )
    del vma
    kinds = [k if k else _UNKNOWN for k in mappings.column("kind").to_pylist()]
    groupings = [_group_codes(kinds, runs, map_row, _UNKNOWN)]

    proc_pid = as_numpy(processes.column("pid"), np.int64)
    runs = _Runs.of(pid)
    no_key = np.zeros(len(runs.heads), np.int64)
    proc_row = lookup_rows(proc_pid, np.zeros(len(proc_pid), np.int64), pid[runs.heads], no_key)
    comms = processes.column("comm").to_pylist() if "comm" in processes.column_names else []
    comm_of = [c if c else _UNKNOWN for c in comms] if comms else [_UNKNOWN] * len(proc_pid)
    groupings.append(_group_codes(comm_of, runs, proc_row, _UNKNOWN))

    labels = processes.column("labels").to_pylist() if "labels" in processes.column_names else []
    if any(labels):
        label_of = [_label_set(x) for x in labels]
        groupings.append(_group_codes(label_of, runs, proc_row, _NO_LABELS))
    by_kind, by_comm, *by_labels = _breakdowns(groupings, att)
    by_label = by_labels[0] if by_labels else ()

    zero_pfn = 0
    if "zero_pfn_pages" in processes.column_names:
        zp: Any = processes.column("zero_pfn_pages")
        zero_pfn = int(np.sum(as_numpy(zp, np.int64, null=0)))
    return SnapshotPotential(
        host=host,
        snapshot_id=int(snapshot_id),
        time_s=float(time_s),
        processes=int(processes.num_rows),
        pages=n,
        frames=int(n_frames),
        distinct_hashes=int(n_hashes),
        zero_pages=int(np.count_nonzero(zero)),
        zero_frames=int(zero_frames),
        naive_saved_pages=n - int(n_hashes),
        ideal_saved_frames=int(np.count_nonzero(freed)),
        fork_shared_pages=n - int(n_frames),
        within_process_saved_pages=n - int(pairs),
        cross_process_saved_pages=int(pairs) - int(n_hashes),
        unhashed_pages=unhashed,
        zero_pfn_pages=zero_pfn,
        by_kind=by_kind,
        by_comm=by_comm,
        by_label=by_label,
    )


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

    Pages are streamed one snapshot at a time (:meth:`~planner.trace.io.Trace.iter_snapshot_pages`).

    Raises
    ------
    TraceFormatError
        ``path`` is not a readable trace.
    """
    # the compiled code loads from numba's cache while the trace is opened, hashed and its
    # first snapshot decoded
    with compiled_code_loading((__name__, "planner._idtable")):
        return _summarize_trace(path, progress)


def _host_pages(trace: Trace, host: str) -> Iterator[int | tuple[int, pa.Table]]:
    """For :func:`read_ahead`'s thread: 0 at once (taking it starts the thread), the row
    count of ``host``'s pages file (its footer, once the file is verified), then
    ``(snapshot_id, pages)`` of each snapshot. So the pages file is hashed (hashlib
    releases the GIL) and its first snapshot decoded while the caller reads the small
    tables, and each later snapshot is decoded while the caller counts the one before.
    The columns :func:`snapshot_potential` reads as whole arrays (``pid``,
    ``vma_start``) come joined (copied here, in the thread, not in the caller's)."""
    yield 0
    snapshots = (
        _joined_columns(sid, t) for sid, t in trace.iter_snapshot_pages(host, _PAGE_COLUMNS)
    )
    first = next(snapshots, None)  # hashed while decoded: verified when it comes
    yield trace.pages_rows(host)
    if first is not None:
        yield first
        del first
        yield from snapshots


def _joined_columns(sid: int, pages: pa.Table) -> tuple[int, pa.Table]:
    for name in _JOINED_COLUMNS:
        i = pages.schema.get_field_index(name)
        pages = pages.set_column(i, name, pages.column(i).combine_chunks())
    return sid, pages


def _summarize_trace(path: str | os.PathLike[str], progress: Progress) -> TraceSummary:
    trace = open_trace(path)
    files: dict[str, dict[str, Any]] = trace.manifest.get("files", {})
    hosts: list[HostSummary] = []
    snapshots: list[SnapshotPotential] = []
    process_keys = 0
    pool = ThreadPoolExecutor(_IN_FLIGHT, thread_name_prefix="ksm-planner-info")
    with pool:
        for host in trace.hosts:
            hosts.append(_summarize_host(trace, host, files, snapshots, pool, progress))
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
    )


def _summarize_host(
    trace: Trace,
    host: str,
    files: dict[str, dict[str, Any]],
    snapshots: list[SnapshotPotential],
    pool: ThreadPoolExecutor,
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
        rows = 0
        progress.start(f"info: pages of {host}", cast("int", next(stream)))
        # up to _IN_FLIGHT snapshots counted at once (the compiled passes release the
        # GIL), each from the time it is decoded; results kept in snapshot order
        running: deque[tuple[int, Future[SnapshotPotential]]] = deque()

        def collect() -> None:
            n_rows, done = running.popleft()
            potential = done.result()
            pages_by[potential.snapshot_id] = potential
            progress.advance(n_rows)

        for item in stream:
            sid, pages = cast("tuple[int, pa.Table]", item)
            if len(running) == _IN_FLIGHT:
                collect()
            running.append(
                (
                    pages.num_rows,
                    pool.submit(
                        snapshot_potential,
                        pages,
                        _rows_or_empty(proc_by, sid, "processes"),
                        _rows_or_empty(map_by, sid, "mappings"),
                        host=host,
                        snapshot_id=sid,
                        time_s=times.get(sid, float("nan")),
                    ),
                )
            )
            rows += pages.num_rows
            del pages, item  # held by the task only: freed when it is done
        while running:
            collect()
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
    "SnapshotPotential",
    "TraceSummary",
    "host_potential",
    "snapshot_potential",
    "summarize_trace",
]
