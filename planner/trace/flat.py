"""Flat page rows (one row per page per snapshot) to the four trace tables.

This is the one conversion path from "a table of pages" to the normalised trace format,
used by ``ksm-planner ingest`` (interchange CSV/Parquet, old schema versions) and by the
synthetic trace builder of :mod:`planner.testing`. Input columns (per snapshot):

* required: ``pid`` (int32), ``page_addr`` (uint64), ``content_hash`` (uint64);
* optional: ``ppid``, ``comm``, ``vma_start``, ``vma_kind``, ``frame``, ``is_zero``
  (bool), ``flags`` (uint16, :class:`~planner.trace.schema.PageFlag` bits),
  ``proc_start`` (uint64), ``cgroup``, ``uid``, ``labels`` (JSON text), ``vma_end``,
  ``perms``, ``vma_path`` (mapping attributes, taken from the mapping's first page),
  ``capture_t0_s``, ``capture_t1_s``, the change counts of
  :data:`~planner.trace.schema.INTERCHANGE_COUNTS` (uint16, already checked), and ``_row``
  (int64, the source row number, used in error messages only).

Missing values are derived: a missing ``frame`` means every page has its own frame (a
stable id per process incarnation and address); a missing ``vma_start`` makes each run of
contiguous pages one mapping; a missing ``proc_start`` makes a pid that disappears and
comes back a new process (an incarnation number is recorded instead).

A snapshot can be converted in one call (:meth:`FlatConverter.convert`) or streamed:
:meth:`FlatConverter.begin`, then :meth:`FlatConverter.feed` with consecutive chunks
sorted by ``(pid, page_addr)`` (each returns its ``pages`` rows), then
:meth:`FlatConverter.end` for the snapshot row and the ``processes`` and ``mappings``
tables. Streaming keeps memory bounded by the chunk size, whatever the snapshot size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from planner.errors import TraceFormatError
from planner.trace import schema as S
from planner.trace.check import short
from planner.trace.io import HostTrace, conform

if TYPE_CHECKING:
    from collections.abc import Mapping

_FRAME_PROC_SHIFT = 36  # frame = (process incarnation << 36) | page number, when frames are absent

#: Optional per-process columns, taken from the first row of each process in a snapshot.
PROCESS_COLUMNS = (
    "ppid",
    "comm",
    "cgroup",
    "uid",
    "labels",
    "cmdline",
    "exe",
    "reg_time_s",
    "capture_t0_s",
    "capture_t1_s",
)
#: Optional per-mapping columns of the flat input and the ``mappings`` column they fill.
MAPPING_COLUMNS = {"vma_end": "end", "perms": "perms", "vma_path": "path"}

#: Attributes of a process that every row of it in one snapshot must repeat exactly (a
#: process has one parent, one name, ... at a time). Capture times may differ per row.
CONSISTENT_PROCESS_COLUMNS = ("ppid", "comm", "proc_start", "cgroup", "uid", "labels", "exe")
#: Attributes of a mapping that every page of it (same pid and vma_start) must repeat.
CONSISTENT_MAPPING_COLUMNS = ("vma_kind", "vma_end", "perms", "vma_path")

_NO_HASH_FLAGS = int(S.PageFlag.SWAPPED | S.PageFlag.READ_ERROR)
_NO_FRAME_FLAGS = int(S.PageFlag.SWAPPED)

U64 = np.ndarray[Any, np.dtype[np.uint64]]
I64 = np.ndarray[Any, np.dtype[np.int64]]


def _where(rows: pa.Table, i: int, column: str) -> str:
    """``"row N, column C: "`` (the row only when the input carries source row numbers)."""
    if "_row" in rows.column_names:
        return f"row {rows.column('_row')[i].as_py()}, column {column}: "
    return f"column {column}: "


def _u64(col: Any) -> U64:
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.uint64)


def _differs(a: Any, b: Any) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """``a[i] != b[i]`` for two equally long arrays, where null equals only null."""
    import pyarrow.compute as pc  # (imported where used: ``info`` needs none of it)

    ne: Any = pc.fill_null(pc.not_equal(a, b), False)
    na = np.asarray(a.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    nb = np.asarray(b.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    out: np.ndarray[Any, np.dtype[np.bool_]] = np.asarray(
        ne.to_numpy(zero_copy_only=False), dtype=bool
    ) | (na != nb)
    return out


def _comparable(col: Any) -> tuple[Any, Any]:
    """``(values, keys)`` of a column: equal keys exactly where values are equal.

    A dictionary column compares by its indices when its dictionary has no value twice
    (pyarrow's encoders and unifiers guarantee it), which avoids decoding the strings.
    """
    import pyarrow.compute as pc

    arr: Any = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_dictionary(arr.type):
        d = arr.dictionary
        distinct: Any = pc.count_distinct(d, mode="all")
        if distinct.as_py() == len(d):
            return arr, arr.indices
        arr = arr.cast(arr.type.value_type)
    return arr, arr


def _adjacent_differs(keys: Any) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """``keys[i + 1] != keys[i]`` (null equals only null), length ``len(keys) - 1``."""
    t = keys.type
    if keys.null_count == 0 and (pa.types.is_integer(t) or pa.types.is_boolean(t)):
        v = np.asarray(keys.to_numpy(zero_copy_only=False))
        out: np.ndarray[Any, np.dtype[np.bool_]] = v[1:] != v[:-1]
        return out
    return _differs(keys.slice(1), keys.slice(0, len(keys) - 1))


def _pack_keys(
    key_a: np.ndarray[Any, Any],
    key_b: np.ndarray[Any, Any],
    query_a: np.ndarray[Any, Any],
    query_b: np.ndarray[Any, Any],
) -> tuple[U64, U64] | None:
    """Keys ``(a, b)`` packed into one uint64 (``a`` in 22 bits), or ``None`` if they do not fit.

    ``b`` loses its low 12 bits when every ``b`` is a multiple of 4096 (page addresses).
    """
    parts = [np.asarray(x) for x in (key_a, key_b, query_a, query_b)]
    if any(p.dtype.kind not in "iu" for p in parts):
        return None
    if any(p.dtype.kind == "i" and len(p) and int(p.min()) < 0 for p in parts):
        return None
    a_max = max(int(parts[0].max()), int(parts[2].max()))
    if a_max >= 1 << 22:
        return None
    kb, qb = parts[1].astype(np.uint64), parts[3].astype(np.uint64)
    shift = np.uint64(0)
    if not (np.any(kb & np.uint64(4095)) or np.any(qb & np.uint64(4095))):
        shift = np.uint64(12)
    if max(int(kb.max()), int(qb.max())) >> int(shift) >= 1 << 42:
        return None
    top = np.uint64(42)
    kkey = (parts[0].astype(np.uint64) << top) | (kb >> shift)
    qkey = (parts[2].astype(np.uint64) << top) | (qb >> shift)
    return kkey, qkey


def lookup_rows(
    key_a: np.ndarray[Any, Any],
    key_b: np.ndarray[Any, Any],
    query_a: np.ndarray[Any, Any],
    query_b: np.ndarray[Any, Any],
) -> np.ndarray[Any, np.dtype[np.int64]]:
    """For each query ``(query_a[i], query_b[i])`` the row of the equal key, or -1.

    Keys ``(key_a, key_b)`` must be unique (e.g. ``(pid, start)`` of the mappings of one
    snapshot). Vectorised with one sort of keys and queries together, so joining the pages
    of a snapshot to its mappings or processes costs no Python loop.

    Examples
    --------
    >>> keys = np.array([1, 1, 2]), np.array([0, 8, 0])
    >>> lookup_rows(*keys, np.array([2, 1, 3]), np.array([0, 8, 0]))
    array([ 2,  1, -1])
    """
    nk = len(key_a)
    nq = len(query_a)
    result = np.full(nq, -1, dtype=np.int64)
    if nk == 0 or nq == 0:
        return result
    packed = _pack_keys(key_a, key_b, query_a, query_b)
    if packed is not None:  # the common case: one sorted uint64 key and a binary search
        kkey, qkey = packed
        order = np.argsort(kkey, kind="stable")
        ks = kkey[order]
        pos = np.minimum(np.searchsorted(ks, qkey), nk - 1)
        hit = ks[pos] == qkey
        result[hit] = order[pos[hit]]
        return result
    all_a = np.concatenate([np.asarray(key_a), np.asarray(query_a)])
    all_b = np.concatenate([np.asarray(key_b), np.asarray(query_b)])
    tag = np.concatenate([np.zeros(nk, np.int8), np.ones(nq, np.int8)])
    order = np.lexsort((tag, all_b, all_a))  # a key sorts just before its equal queries
    is_key = order < nk
    positions = np.where(is_key, np.arange(len(order)), -1)
    last_key = np.maximum.accumulate(positions)
    candidate = np.where(last_key >= 0, order[np.maximum(last_key, 0)], -1)
    q_sorted = ~is_key
    cand = candidate[q_sorted]
    qid = order[q_sorted] - nk
    ok = cand >= 0
    ok[ok] = (all_a[cand[ok]] == all_a[nk + qid[ok]]) & (all_b[cand[ok]] == all_b[nk + qid[ok]])
    result[qid] = np.where(ok, cand, -1)
    return result


@dataclass
class _SnapshotState:
    """Accumulators of the snapshot being streamed."""

    snapshot_id: int
    time_s: float
    extra: dict[str, Any]
    last_pid: int | None = None
    last_addr: int = 0
    last_row: Any = None
    last_vma_start: int = 0
    #: the last row's value of each checked process / mapping attribute (see _consistent)
    last_values: dict[str, Any] = field(default_factory=dict)
    cur_proc_idx: int = -1
    pids: list[np.ndarray[Any, np.dtype[np.int32]]] = field(default_factory=list)
    proc_starts: list[U64] = field(default_factory=list)
    proc_counts: list[I64] = field(default_factory=list)
    proc_attrs: list[pa.Table] = field(default_factory=list)
    map_pid: list[np.ndarray[Any, np.dtype[np.int32]]] = field(default_factory=list)
    map_start: list[U64] = field(default_factory=list)
    map_end: list[U64] = field(default_factory=list)
    map_count: list[I64] = field(default_factory=list)
    map_attrs: list[pa.Table] = field(default_factory=list)
    seen_pids: set[int] = field(default_factory=set)


@dataclass
class FlatConverter:
    """Convert the flat rows of consecutive snapshots of one host into trace tables.

    Keeps the state needed across snapshots: process incarnations (pid reuse) and the
    synthetic frame ids of traces without frames.
    """

    host: str
    page_size: int = S.PAGE_SIZE_BYTES
    snapshot_meta: Mapping[str, Any] = field(default_factory=dict)
    _incarnation: dict[int, int] = field(default_factory=dict)
    _next_incarnation: int = 0
    _proc_index: dict[tuple[int, int], int] = field(default_factory=dict)
    _prev_pids: set[int] = field(default_factory=set)
    _last_sid: int = -1
    _last_time: float = float("-inf")
    _snap: _SnapshotState | None = None

    @property
    def processes_seen(self) -> int:
        """Distinct processes (pid and start time) converted so far."""
        return len(self._proc_index)

    # -- one call per snapshot ---------------------------------------------------------------

    def convert(
        self, snapshot_id: int, time_s: float, rows: pa.Table
    ) -> tuple[dict[str, Any], pa.Table, pa.Table, pa.Table]:
        """Return ``(snapshot_row, processes, mappings, pages)`` for one snapshot.

        ``rows`` may be in any order; a ``frame`` or ``vma_start`` column that is entirely
        empty counts as absent.
        """
        for name in ("frame", "vma_start"):
            if name in rows.column_names:
                col = rows.column(name)
                all_empty = rows.num_rows > 0 and col.null_count == rows.num_rows
                if all_empty or (name == "vma_start" and col.null_count):
                    rows = rows.drop_columns([name])
        pid = rows.column("pid").to_numpy(zero_copy_only=False)
        addr = _u64(rows.column("page_addr"))
        order = np.lexsort((addr, pid))
        if np.any(order[1:] < order[:-1]):
            rows = rows.take(order)
        self.begin(snapshot_id, time_s)
        pages = self.feed(rows)
        snapshot, processes, mappings = self.end()
        return snapshot, processes, mappings, pages

    # -- streaming ---------------------------------------------------------------------------

    def begin(
        self, snapshot_id: int, time_s: float, extra: Mapping[str, Any] | None = None
    ) -> None:
        """Start snapshot ``snapshot_id`` at ``time_s``; ``extra`` adds snapshot-row fields."""
        if self._snap is not None:
            raise RuntimeError("the previous snapshot was not ended")
        if snapshot_id <= self._last_sid:
            raise TraceFormatError(
                f"snapshot ids must increase ({snapshot_id} after {self._last_sid})"
            )
        if time_s < self._last_time:
            raise TraceFormatError(f"time goes backwards ({time_s} after {self._last_time})")
        self._last_sid, self._last_time = snapshot_id, time_s
        self._snap = _SnapshotState(snapshot_id, float(time_s), dict(extra or {}))

    def feed(self, rows: pa.Table) -> pa.Table:
        """Convert the next chunk of the current snapshot and return its ``pages`` rows.

        Chunks must be sorted by ``(pid, page_addr)`` and continue where the previous
        chunk of the snapshot ended. A page that appears twice, a ``vma_start`` above its
        page or overlapping the previous mapping, and missing hashes or frames on pages
        that should have them raise :class:`TraceFormatError` naming the source row.
        """
        st = self._snap
        if st is None:
            raise RuntimeError("feed() outside begin()/end()")
        n = rows.num_rows
        if n == 0:
            return S.PAGES_SCHEMA.empty_table()
        names = set(rows.column_names)
        pid = np.asarray(rows.column("pid").to_numpy(zero_copy_only=False), dtype=np.int32)
        addr = _u64(rows.column("page_addr"))
        same_pid, paddr = self._check_order(st, rows, pid, addr)
        row_proc_idx = self._feed_processes(st, rows, pid, same_pid)
        flags, chash, frame = self._frames_flags_hashes(rows, addr, row_proc_idx)
        vma_start = self._feed_mappings(st, rows, pid, addr, paddr, same_pid)

        st.last_pid, st.last_addr = int(pid[-1]), int(addr[-1])
        st.last_vma_start = int(vma_start[-1])
        st.last_row = rows.column("_row")[n - 1].as_py() if "_row" in names else None
        out: dict[str, Any] = {
            "snapshot_id": pa.array(np.full(n, st.snapshot_id, np.int32)),
            "pid": pa.array(pid),
            "vma_start": pa.array(vma_start),
            "page_addr": pa.array(addr),
            "content_hash": chash,
            "frame_id": frame,
            "flags": pa.array(flags),
        }
        for c in S.INTERCHANGE_COUNTS:  # change counts over the interval after the snapshot
            if c in names:
                out[c] = rows.column(c).cast(pa.uint16())
        if "other_hash" in names:  # the first other content (already checked)
            out["other_hash"] = rows.column("other_hash").cast(pa.uint64())
        return pa.table(out)

    def _check_order(
        self,
        st: _SnapshotState,
        rows: pa.Table,
        pid: np.ndarray[Any, Any],
        addr: np.ndarray[Any, Any],
    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """Refuse rows out of ``(pid, page_addr)`` order and pages that appear twice; return, per
        row, whether it continues the previous row's process and the previous row's address."""
        n = rows.num_rows
        names = set(rows.column_names)
        has_prev = st.last_pid is not None
        prev_pid = np.int32(st.last_pid if st.last_pid is not None else 0)
        prev_addr = np.uint64(st.last_addr)
        # previous row's pid and address for every row (row -1 is the last of the previous chunk)
        ppid_arr = np.empty(n, np.int32)
        paddr = np.empty(n, np.uint64)
        ppid_arr[1:], paddr[1:] = pid[:-1], addr[:-1]
        ppid_arr[0], paddr[0] = prev_pid, prev_addr
        same_pid = ppid_arr == pid
        if not has_prev:
            same_pid[0] = False
        out_of_order = (pid < ppid_arr) | (same_pid & (addr <= paddr))
        if not has_prev:
            out_of_order[0] = False
        if out_of_order.any():
            i = int(np.flatnonzero(out_of_order)[0])
            if same_pid[i] and addr[i] == paddr[i]:
                first = (
                    st.last_row
                    if i == 0
                    else (rows.column("_row")[i - 1].as_py() if "_row" in names else None)
                )
                where = f" (first at row {first})" if first is not None else ""
                raise TraceFormatError(
                    f"{_where(rows, i, 'page_addr')}page 0x{int(addr[i]):x} of pid {int(pid[i])} "
                    f"appears twice in the snapshot at time_s={st.time_s:g}{where}",
                    hint="each page may appear once per snapshot",
                )
            raise ValueError("feed() needs rows sorted by (pid, page_addr)")
        return same_pid, paddr

    def _feed_processes(
        self,
        st: _SnapshotState,
        rows: pa.Table,
        pid: np.ndarray[Any, Any],
        same_pid: np.ndarray[Any, Any],
    ) -> np.ndarray[Any, Any]:
        """Record the processes that start in this chunk; return each row's process index."""
        n = rows.num_rows
        names = set(rows.column_names)
        self._consistent(st, rows, same_pid, CONSISTENT_PROCESS_COLUMNS, pid, None)
        new_proc = ~same_pid
        starts = np.flatnonzero(new_proc)
        new_pids = pid[starts]
        if "proc_start" in names:
            pstart = _u64(rows.column("proc_start").take(starts))
        else:
            pstart = np.empty(len(starts), dtype=np.uint64)
            for i, p in enumerate(new_pids.tolist()):
                if p not in self._prev_pids or p not in self._incarnation:
                    self._incarnation[p] = self._next_incarnation
                    self._next_incarnation += 1
                pstart[i] = self._incarnation[p]
        new_idx = np.empty(len(starts), dtype=np.int64)
        for i, (p, s) in enumerate(zip(new_pids.tolist(), pstart.tolist(), strict=True)):
            if p in st.seen_pids:  # pragma: no cover - excluded by the order check
                raise ValueError("pid seen twice in one snapshot")
            st.seen_pids.add(p)
            new_idx[i] = self._proc_index.setdefault((p, s), len(self._proc_index))
        seg = np.cumsum(new_proc) - 1  # -1: rows continuing the previous chunk's process
        seg_idx = np.append(new_idx, st.cur_proc_idx)  # index -1 -> the continuing process
        row_proc_idx = seg_idx[seg]
        bounds = np.append(starts, n)
        counts = np.diff(bounds).astype(np.int64)
        if len(starts) == 0 or starts[0] > 0:  # the chunk opens inside the previous process
            st.proc_counts[-1][-1] += int(starts[0] if len(starts) else n)
        if len(starts):  # (empty arrays are never appended: the last entry is always open)
            st.pids.append(new_pids)
            st.proc_starts.append(pstart)
            st.proc_counts.append(counts)
            proc_cols = [c for c in PROCESS_COLUMNS if c in names]
            if proc_cols:
                st.proc_attrs.append(rows.select(proc_cols).take(starts))
            st.cur_proc_idx = int(new_idx[-1])
        return np.asarray(row_proc_idx, dtype=np.int64)

    def _frames_flags_hashes(
        self, rows: pa.Table, addr: np.ndarray[Any, Any], row_proc_idx: np.ndarray[Any, Any]
    ) -> tuple[np.ndarray[Any, Any], Any, Any]:
        """The rows' flags, content hashes and frames (made up per process and page when the
        source gives none); missing hashes or frames where a page should have them are refused."""
        n = rows.num_rows
        names = set(rows.column_names)
        page = np.uint64(self.page_size)
        flags = (
            np.asarray(rows.column("flags").to_numpy(zero_copy_only=False), dtype=np.uint16)
            if "flags" in names
            else np.zeros(n, dtype=np.uint16)
        )
        if "is_zero" in names:
            z_col: Any = rows.column("is_zero")
            z = np.asarray(z_col.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
            zero_bit = np.uint16(S.PageFlag.ZERO)
            flags = np.where(z, flags | zero_bit, flags & ~zero_bit).astype(np.uint16)
        chash: Any = rows.column("content_hash")
        if chash.type != pa.uint64():
            chash = chash.cast(pa.uint64())
        if chash.null_count:
            bad = np.asarray(chash.is_null().to_numpy(zero_copy_only=False)) & (
                (flags & np.uint16(_NO_HASH_FLAGS)) == 0
            )
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise TraceFormatError(
                    f"{_where(rows, i, 'content_hash')}empty value",
                    hint="every page that was read needs a content hash",
                )
        frame: Any
        if "frame" in names:
            frame = rows.column("frame")
            if frame.type != pa.uint64():
                frame = frame.cast(pa.uint64())
            if frame.null_count:
                bad = np.asarray(frame.is_null().to_numpy(zero_copy_only=False)) & (
                    (flags & np.uint16(_NO_FRAME_FLAGS)) == 0
                )
                if bad.any():
                    i = int(np.flatnonzero(bad)[0])
                    raise TraceFormatError(
                        f"{_where(rows, i, 'frame')}empty value",
                        hint="give a frame for every page or for none",
                    )
        else:
            frame = pa.array(
                (row_proc_idx.astype(np.uint64) << np.uint64(_FRAME_PROC_SHIFT)) | (addr // page)
            )
        return flags, chash, frame

    def _feed_mappings(
        self,
        st: _SnapshotState,
        rows: pa.Table,
        pid: np.ndarray[Any, Any],
        addr: np.ndarray[Any, Any],
        paddr: np.ndarray[Any, Any],
        same_pid: np.ndarray[Any, Any],
    ) -> np.ndarray[Any, Any]:
        """Record the mappings that start in this chunk; return each row's ``vma_start``."""
        n = rows.num_rows
        names = set(rows.column_names)
        page = np.uint64(self.page_size)
        new_proc = ~same_pid
        if "vma_start" in names:
            vcol = rows.column("vma_start")
            if vcol.null_count:
                nulls = np.asarray(vcol.is_null().to_numpy(zero_copy_only=False))
                i = int(np.flatnonzero(nulls)[0])
                raise TraceFormatError(
                    f"{_where(rows, i, 'vma_start')}empty value",
                    hint="give a vma_start for every page or for none",
                )
            vma_start = _u64(vcol)
            above = vma_start > addr
            if above.any():
                i = int(np.flatnonzero(above)[0])
                raise TraceFormatError(
                    f"{_where(rows, i, 'vma_start')}0x{int(vma_start[i]):x} is above "
                    f"its page 0x{int(addr[i]):x}",
                    hint="vma_start is the start of the mapping that holds the page",
                )
            pvs = np.empty(n, np.uint64)
            pvs[1:] = vma_start[:-1]
            pvs[0] = st.last_vma_start
            new_map = new_proc | (vma_start != pvs)
            overlap = same_pid & new_map & (vma_start <= paddr)
            if overlap.any():
                i = int(np.flatnonzero(overlap)[0])
                raise TraceFormatError(
                    f"{_where(rows, i, 'vma_start')}mapping 0x{int(vma_start[i]):x} "
                    f"of pid {int(pid[i])} overlaps the previous mapping "
                    f"(page 0x{int(paddr[i]):x})",
                    hint="mappings of one process must not overlap",
                )
        else:
            new_map = new_proc | (addr != paddr + page)
            run_id = np.cumsum(new_map) - 1
            run_starts = np.append(addr[np.flatnonzero(new_map)], np.uint64(st.last_vma_start))
            vma_start = run_starts[run_id]
        if "vma_start" in names:
            self._consistent(st, rows, ~new_map, CONSISTENT_MAPPING_COLUMNS, pid, vma_start)
        mstarts = np.flatnonzero(new_map)
        mlast = np.append(mstarts[1:], n) - 1
        mcounts = np.diff(np.append(mstarts, n)).astype(np.int64)
        mends = addr[mlast] + page if len(mstarts) else np.empty(0, np.uint64)
        if len(mstarts) == 0 or mstarts[0] > 0:  # continues the previous chunk's mapping
            k = int(mstarts[0]) if len(mstarts) else n
            st.map_count[-1][-1] += k
            st.map_end[-1][-1] = addr[k - 1] + page
        if len(mstarts):
            st.map_pid.append(pid[mstarts])
            st.map_start.append(vma_start[mstarts])
            st.map_end.append(mends)
            st.map_count.append(mcounts)
            attrs: dict[str, Any] = {}
            if "vma_kind" in names:
                kind: Any = rows.column("vma_kind").take(mstarts).cast(pa.string())
                attrs["kind"] = kind.fill_null("other")
            else:
                attrs["kind"] = pa.array(["other"] * len(mstarts), pa.string())
            for src, dst in MAPPING_COLUMNS.items():
                if src in names:
                    attrs[dst] = rows.column(src).take(mstarts)
            st.map_attrs.append(pa.table(attrs))
        return vma_start

    def _consistent(
        self,
        st: _SnapshotState,
        rows: pa.Table,
        same: np.ndarray[Any, np.dtype[np.bool_]],
        columns: tuple[str, ...],
        pid: np.ndarray[Any, Any],
        vma_start: np.ndarray[Any, Any] | None,
    ) -> None:
        """Rows of one process (``same``: as the previous row) repeat its attributes exactly.

        One frame of evidence: a row differs from the previous row of the same process (or
        mapping, with ``vma_start``), which may be the last row of the previous chunk.
        """
        n = rows.num_rows
        for c in columns:
            if c not in rows.column_names:
                continue
            a, keys = _comparable(rows.column(c))
            bad = np.zeros(n, dtype=bool)
            if n > 1:
                bad[1:] = _adjacent_differs(keys)
            if c in st.last_values:
                bad[0] = a[0].as_py() != st.last_values[c]
            bad &= same
            i = int(np.flatnonzero(bad)[0]) if bad.any() else None
            if i is not None:
                prev = st.last_values[c] if i == 0 else a[i - 1].as_py()
                prev_row = (
                    st.last_row
                    if i == 0
                    else (
                        rows.column("_row")[i - 1].as_py() if "_row" in rows.column_names else None
                    )
                )
                at = f" at row {prev_row}" if prev_row is not None else " on the previous row"
                what = (
                    f"pid {int(pid[i])}"
                    if vma_start is None
                    else f"mapping 0x{int(vma_start[i]):x} of pid {int(pid[i])}"
                )
                unit = "row of a process" if vma_start is None else "page of a mapping"

                def said(value: Any, c: str = c) -> str:
                    return f"no {c}" if value is None else f"{c} {short(value)}"

                raise TraceFormatError(
                    f"{_where(rows, i, c)}{what} has {said(a[i].as_py())} here but "
                    f"{said(prev)}{at} in the snapshot at time_s={st.time_s:g}",
                    hint=f"every {unit} in one snapshot must give the same {c}",
                )
            st.last_values[c] = a[n - 1].as_py()

    def end(self) -> tuple[dict[str, Any], pa.Table, pa.Table]:
        """Finish the current snapshot: ``(snapshot_row, processes, mappings)``."""
        import pyarrow.compute as pc

        st = self._snap
        if st is None:
            raise RuntimeError("end() without begin()")
        self._snap = None
        sid = st.snapshot_id
        pids = np.concatenate(st.pids) if st.pids else np.empty(0, np.int32)
        nproc = len(pids)
        procs: dict[str, Any] = {
            "snapshot_id": pa.array(np.full(nproc, sid, np.int32)),
            "pid": pa.array(pids, pa.int32()),
            "proc_start": pa.array(
                np.concatenate(st.proc_starts) if st.proc_starts else np.empty(0, np.uint64),
                pa.uint64(),
            ),
            "state": pa.array(["ok"] * nproc, pa.string()),
            "pages": pa.array(
                np.concatenate(st.proc_counts) if st.proc_counts else np.empty(0, np.int64),
                pa.int64(),
            ),
        }
        if st.proc_attrs:
            attrs = pa.concat_tables(st.proc_attrs, promote_options="permissive")
            for name in attrs.column_names:
                procs[name] = attrs.column(name)
        processes = pa.table(procs)

        nmap = sum(len(a) for a in st.map_pid)
        maps: dict[str, Any] = {
            "snapshot_id": pa.array(np.full(nmap, sid, np.int32)),
            "pid": pa.array(
                np.concatenate(st.map_pid) if st.map_pid else np.empty(0, np.int32), pa.int32()
            ),
            "start": pa.array(
                np.concatenate(st.map_start) if st.map_start else np.empty(0, np.uint64),
                pa.uint64(),
            ),
            "end": pa.array(
                np.concatenate(st.map_end) if st.map_end else np.empty(0, np.uint64), pa.uint64()
            ),
            "present_pages": pa.array(
                np.concatenate(st.map_count) if st.map_count else np.empty(0, np.int64),
                pa.int64(),
            ),
            "kind": pa.array([], pa.string()),
        }
        if st.map_attrs:
            mattrs = pa.concat_tables(st.map_attrs, promote_options="permissive")
            maps["kind"] = mattrs.column("kind")
            if "end" in mattrs.column_names:  # a given vma_end wins over the last page's end
                given = mattrs.column("end").cast(pa.uint64())
                maps["end"] = pc.if_else(given.is_null(), maps["end"], given)
            for name in ("perms", "path"):
                if name in mattrs.column_names:
                    maps[name] = mattrs.column(name)
        mappings = pa.table(maps)

        self._prev_pids = {int(p) for p in pids.tolist()}
        snapshot: dict[str, Any] = {
            "snapshot_id": sid,
            "time_s": st.time_s,
            "page_size": self.page_size,
        }
        snapshot.update(self.snapshot_meta)
        snapshot.update(st.extra)
        return snapshot, processes, mappings


@dataclass
class InMemoryHost:
    """Collects converted snapshots into a :class:`HostTrace` without touching the disk."""

    host: str
    trace_hash: str = "memory"
    _parts: dict[str, list[pa.Table]] = field(
        default_factory=lambda: {"snapshots": [], "processes": [], "mappings": [], "pages": []}
    )

    def add_pages(self, pages: pa.Table) -> None:
        """Same as :meth:`planner.trace.io.HostWriter.add_pages`."""
        self._parts["pages"].append(conform(pages, "pages"))

    def add_snapshot(
        self,
        snapshot: Mapping[str, Any],
        *,
        processes: pa.Table,
        mappings: pa.Table,
        pages: pa.Table,
    ) -> None:
        """Same signature as :meth:`planner.trace.io.HostWriter.add_snapshot`."""
        snap = {
            "host": self.host,
            "tool_version": "in-memory",
            "hash_algo": "synthetic",
            **snapshot,
        }
        schema = pa.schema([f for f in S.SNAPSHOTS_SCHEMA if f.name in snap])
        self._parts["snapshots"].append(
            conform(pa.Table.from_pylist([snap], schema=schema), "snapshots")
        )
        self._parts["processes"].append(conform(processes, "processes"))
        self._parts["mappings"].append(conform(mappings, "mappings"))
        self._parts["pages"].append(conform(pages, "pages"))

    def build(self) -> HostTrace:
        """The collected snapshots as one :class:`HostTrace`."""
        tables = {
            k: (pa.concat_tables(v) if v else S.SCHEMAS[k].empty_table()).combine_chunks()
            for k, v in self._parts.items()
        }
        return HostTrace(
            host=self.host,
            trace_hash=self.trace_hash,
            snapshots=tables["snapshots"],
            processes=tables["processes"],
            mappings=tables["mappings"],
            pages=tables["pages"],
        )
