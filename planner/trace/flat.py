"""Flat page rows (one row per page per snapshot) to the four trace tables.

This is the one conversion path from "a table of pages" to the normalised trace format,
used by ``ksm-planner ingest`` (interchange CSV/Parquet, old schema versions) and by the
synthetic trace builder of :mod:`planner.testing`. Input columns (per snapshot):

* required: ``pid`` (int32), ``page_addr`` (uint64), ``content_hash`` (uint64);
* optional: ``ppid``, ``comm``, ``vma_start``, ``vma_kind``, ``frame``, ``is_zero``
  (bool), ``flags`` (uint16, :class:`~planner.trace.schema.PageFlag` bits),
  ``proc_start`` (uint64), ``cgroup``, ``uid``, ``labels`` (JSON text).

Missing values are derived: a missing ``frame`` means every page has its own frame (a
stable id per process incarnation and address); a missing ``vma_start`` makes each run of
contiguous pages one mapping; a missing ``proc_start`` makes a pid that disappears and
comes back a new process (an incarnation number is recorded instead).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from planner.errors import TraceFormatError
from planner.trace import schema as S
from planner.trace.io import HostTrace, conform

_FRAME_PROC_SHIFT = 36  # frame = (process incarnation << 36) | page number, when frames are absent


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

    def convert(
        self, snapshot_id: int, time_s: float, rows: pa.Table
    ) -> tuple[dict[str, Any], pa.Table, pa.Table, pa.Table]:
        """Return ``(snapshot_row, processes, mappings, pages)`` for one snapshot."""
        if snapshot_id <= self._last_sid:
            raise TraceFormatError(f"snapshot ids must increase ({snapshot_id} after {self._last_sid})")
        if time_s < self._last_time:
            raise TraceFormatError(f"time goes backwards ({time_s} after {self._last_time})")
        self._last_sid, self._last_time = snapshot_id, time_s
        names = set(rows.column_names)
        n = rows.num_rows
        pid = rows.column("pid").to_numpy().astype(np.int32, copy=False)
        addr = rows.column("page_addr").to_numpy().astype(np.uint64, copy=False)
        order = np.lexsort((addr, pid))
        rows = rows.take(pa.array(order))
        pid, addr = pid[order], addr[order]
        if n and np.any((pid[1:] == pid[:-1]) & (addr[1:] == addr[:-1])):
            i = int(np.flatnonzero((pid[1:] == pid[:-1]) & (addr[1:] == addr[:-1]))[0])
            raise TraceFormatError(
                f"page 0x{int(addr[i]):x} of pid {int(pid[i])} appears twice in snapshot at time_s={time_s}"
            )

        upids, first = np.unique(pid, return_index=True)
        # --- process incarnations ------------------------------------------------------
        if "proc_start" in names:
            pstart_rows = rows.column("proc_start").to_numpy(zero_copy_only=False).astype(np.uint64)
            proc_start = pstart_rows[first]
        else:
            proc_start = np.empty(len(upids), dtype=np.uint64)
            for i, p in enumerate(upids.tolist()):
                if p not in self._prev_pids or p not in self._incarnation:
                    self._incarnation[p] = self._next_incarnation
                    self._next_incarnation += 1
                proc_start[i] = self._incarnation[p]
        self._prev_pids = set(upids.tolist())
        proc_idx = np.empty(len(upids), dtype=np.int64)
        for i, (p, s) in enumerate(zip(upids.tolist(), proc_start.tolist(), strict=True)):
            proc_idx[i] = self._proc_index.setdefault((p, s), len(self._proc_index))
        counts = np.diff(np.append(first, n))
        row_proc = np.repeat(np.arange(len(upids)), counts)

        # --- frames, flags ----------------------------------------------------------------
        if "frame" in names and rows.column("frame").null_count < n:
            frame = rows.column("frame")
            if frame.null_count:
                raise TraceFormatError("column 'frame' has empty values; give a frame for every page or none")
            frame_np = frame.to_numpy().astype(np.uint64, copy=False)
        else:
            frame_np = (proc_idx[row_proc].astype(np.uint64) << np.uint64(_FRAME_PROC_SHIFT)) | (
                addr // np.uint64(self.page_size)
            )
        flags = (
            rows.column("flags").to_numpy(zero_copy_only=False).astype(np.uint16)
            if "flags" in names
            else np.zeros(n, dtype=np.uint16)
        )
        if "is_zero" in names:
            z = rows.column("is_zero").to_numpy(zero_copy_only=False).astype(bool)
            flags = np.where(z, flags | np.uint16(S.PageFlag.ZERO), flags & np.uint16(~S.PageFlag.ZERO & 0xFFFF))

        # --- mappings ---------------------------------------------------------------------
        if "vma_start" in names and rows.column("vma_start").null_count == 0:
            vma_start = rows.column("vma_start").to_numpy().astype(np.uint64, copy=False)
            if np.any(vma_start > addr):
                i = int(np.flatnonzero(vma_start > addr)[0])
                raise TraceFormatError(f"vma_start 0x{int(vma_start[i]):x} is above its page 0x{int(addr[i]):x}")
        else:
            new_run = np.ones(n, dtype=bool)
            if n:
                new_run[1:] = (pid[1:] != pid[:-1]) | (addr[1:] != addr[:-1] + np.uint64(self.page_size))
            run_id = np.cumsum(new_run) - 1
            vma_start = addr[np.flatnonzero(new_run)][run_id] if n else addr
        kinds = rows.column("vma_kind") if "vma_kind" in names else None
        key_change = np.ones(n, dtype=bool)
        if n:
            key_change[1:] = (pid[1:] != pid[:-1]) | (vma_start[1:] != vma_start[:-1])
        vstarts = np.flatnonzero(key_change)
        vends = np.append(vstarts[1:], n) - 1
        if kinds is not None:
            kind_vals = pc.fill_null(kinds, "other").take(pa.array(vstarts))
        else:
            kind_vals = pa.array(["other"] * len(vstarts), pa.string())
        mappings = pa.table(
            {
                "snapshot_id": pa.array(np.full(len(vstarts), snapshot_id, np.int32)),
                "pid": pa.array(pid[vstarts]),
                "start": pa.array(vma_start[vstarts]),
                "end": pa.array(addr[vends] + np.uint64(self.page_size)),
                "kind": kind_vals,
                "present_pages": pa.array((vends - vstarts + 1).astype(np.int64)),
            }
        )

        # --- processes --------------------------------------------------------------------
        def per_proc(col: str) -> pa.Array | None:
            return rows.column(col).take(pa.array(first)) if col in names else None

        procs: dict[str, Any] = {
            "snapshot_id": pa.array(np.full(len(upids), snapshot_id, np.int32)),
            "pid": pa.array(upids),
            "proc_start": pa.array(proc_start),
            "state": pa.array(["ok"] * len(upids)),
            "pages": pa.array(counts.astype(np.int64)),
        }
        for col in ("ppid", "comm", "cgroup", "uid", "labels", "cmdline", "exe", "reg_time_s"):
            v = per_proc(col)
            if v is not None:
                procs[col] = v
        processes = pa.table(procs)

        pages = pa.table(
            {
                "snapshot_id": pa.array(np.full(n, snapshot_id, np.int32)),
                "pid": pa.array(pid),
                "vma_start": pa.array(vma_start),
                "page_addr": pa.array(addr),
                "content_hash": rows.column("content_hash").cast(pa.uint64()),
                "frame_id": pa.array(frame_np),
                "flags": pa.array(flags),
            }
        )
        snapshot = {"snapshot_id": snapshot_id, "time_s": float(time_s), "page_size": self.page_size}
        snapshot.update(self.snapshot_meta)
        return snapshot, processes, mappings, pages


@dataclass
class InMemoryHost:
    """Collects converted snapshots into a :class:`HostTrace` without touching the disk."""

    host: str
    trace_hash: str = "memory"
    _parts: dict[str, list[pa.Table]] = field(
        default_factory=lambda: {"snapshots": [], "processes": [], "mappings": [], "pages": []}
    )

    def add_snapshot(
        self, snapshot: Mapping[str, Any], *, processes: pa.Table, mappings: pa.Table, pages: pa.Table
    ) -> None:
        """Same signature as :meth:`planner.trace.io.HostWriter.add_snapshot`."""
        snap = {"host": self.host, "tool_version": "in-memory", "hash_algo": "synthetic", **snapshot}
        self._parts["snapshots"].append(
            conform(pa.Table.from_pylist([snap], schema=pa.schema([f for f in S.SNAPSHOTS_SCHEMA if f.name in snap])),
                    "snapshots")
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
        return HostTrace(host=self.host, trace_hash=self.trace_hash, **tables)
