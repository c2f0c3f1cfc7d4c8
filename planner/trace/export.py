"""Write a trace back out in the interchange format (``ksm-planner export``).

One row per recorded page per snapshot, with the interchange header
``time_s,pid,ppid,comm,vma_start,vma_kind,page_addr,content_hash,frame`` plus ``is_zero``
(0/1) and ``host``. Unless ``minimal`` is asked for, the extension columns of
:data:`planner.trace.schema.EXTENSION_COLUMNS` follow (process start time, page flags,
mapping end, and the process/mapping attributes the trace holds) and, for a sampled trace
(schema v2), the per-page change counts of :data:`planner.trace.schema.INTERCHANGE_COUNTS`,
so that ``ingest(export(trace))`` gives back the same pages, frames, hashes, counts,
processes and mappings.
Frame ids are written as they are (they are opaque already).

The format follows the file name: ``.parquet``/``.pq`` (zstd, dictionary-encoded strings,
provenance in the file metadata), ``.csv`` or ``.csv.gz``. The pages are streamed in
batches; the output is written under a temporary name and renamed when complete. Snapshots
without pages cannot be represented (the format has no rows for them) and are counted in
the result.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from planner._fs import atomic_file
from planner._progress import NULL_PROGRESS
from planner.errors import UsageProblem
from planner.provenance import tool_version
from planner.trace import schema as S
from planner.trace.flat import lookup_rows
from planner.trace.io import open_trace

if TYPE_CHECKING:
    import os

    from planner._progress import Progress
    from planner.trace.io import Trace

ExportFormat = Literal["csv", "csv.gz", "parquet"]

#: Column order and types of an export (:data:`planner.trace.schema.INTERCHANGE_COLUMNS`).
EXPORT_SCHEMA: Final = S.EXPORT_SCHEMA
_MINIMAL: Final = S.INTERCHANGE_MINIMAL
_ALWAYS_EXTENDED: Final = ("proc_start", "flags", "vma_end")
#: Optional extension columns, written when the trace holds any value for them.
_PROCESS_EXTRAS: Final = {"uid": "uid", "cgroup": "cgroup", "labels": "labels"}
_MAPPING_EXTRAS: Final = {"perms": "perms", "vma_path": "path"}
_PAGE_COLUMNS: Final = (
    "snapshot_id",
    "pid",
    "vma_start",
    "page_addr",
    "content_hash",
    "frame_id",
    "flags",
)


@dataclass(frozen=True)
class ExportResult:
    """The outcome of :func:`export_trace`."""

    trace: str
    out: str
    format: ExportFormat
    columns: tuple[str, ...]
    rows: int
    hosts: tuple[str, ...]
    snapshots: int
    empty_snapshots: int
    trace_hash: str
    elapsed_s: float
    tool_version: str = field(default_factory=tool_version)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (with provenance)."""
        return {
            "trace": self.trace,
            "out": self.out,
            "format": self.format,
            "columns": list(self.columns),
            "rows": self.rows,
            "hosts": list(self.hosts),
            "snapshots": self.snapshots,
            "empty_snapshots_not_exported": self.empty_snapshots,
            "elapsed_s": self.elapsed_s,
            "provenance": {"tool_version": self.tool_version, "trace_hash": self.trace_hash},
        }


def export_format(path: Path) -> ExportFormat:
    """The export format named by ``path``'s suffix."""
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith(".csv.gz"):
        return "csv.gz"
    if name.endswith(".csv"):
        return "csv"
    raise UsageProblem(
        f"cannot tell the export format of {path}",
        hint="name the output *.csv, *.csv.gz or *.parquet",
    )


def _has_values(trace: Trace, table: str, column: str) -> bool:
    for host in trace.hosts:
        col = trace.read_table(host, table, [column]).column(column)
        if col.null_count < len(col):
            return True
    return False


def _columns(trace: Trace, minimal: bool) -> list[str]:
    if minimal:
        return list(_MINIMAL)
    cols = [*_MINIMAL, *_ALWAYS_EXTENDED]
    for out_name, src in _PROCESS_EXTRAS.items():
        if _has_values(trace, "processes", src):
            cols.append(out_name)
    for out_name, src in _MAPPING_EXTRAS.items():
        if _has_values(trace, "mappings", src):
            cols.append(out_name)
    if _has_values(trace, "snapshots", "sample_ms"):  # sampled: the change counts
        cols.extend(c for c in S.INTERCHANGE_COUNTS if c != "same_content_writes")
        if _any_true(trace, "snapshots", "soft_dirty"):
            cols.append("same_content_writes")
        if trace.schema_version >= 3:  # (a version 2 trace has no other contents)
            cols.append("other_hash")
    return [c for c in EXPORT_SCHEMA.names if c in cols]


def _any_true(trace: Trace, table: str, column: str) -> bool:
    return any(
        bool(v)
        for host in trace.hosts
        for v in trace.read_table(host, table, [column]).column(column).to_pylist()
    )


def _by_snapshot(table: pa.Table) -> dict[int, pa.Table]:
    if not table.num_rows:
        return {}
    sid = np.asarray(table.column("snapshot_id").to_numpy())
    values, starts = np.unique(sid, return_index=True)
    ends = np.append(starts[1:], len(sid))
    return {
        int(v): table.slice(int(a), int(b - a))
        for v, a, b in zip(values.tolist(), starts.tolist(), ends.tolist(), strict=True)
    }


class _HostFlattener:
    """Turns pages batches of one host into export rows (joins processes and mappings)."""

    def __init__(self, trace: Trace, host: str, schema: pa.Schema) -> None:
        self.host = host
        self.schema = schema
        snaps = trace.read_table(host, "snapshots", ["snapshot_id", "time_s"])
        self.times = {
            int(k): float(v)
            for k, v in zip(
                snaps.column("snapshot_id").to_numpy(),
                snaps.column("time_s").to_numpy(),
                strict=True,
            )
        }
        self.procs = _by_snapshot(trace.read_table(host, "processes"))
        self.maps = _by_snapshot(trace.read_table(host, "mappings"))

    def rows(self, sid: int, pages: pa.Table) -> pa.Table:
        n = pages.num_rows
        pid = np.asarray(pages.column("pid").to_numpy(), dtype=np.int64)
        vstart = np.asarray(pages.column("vma_start").to_numpy(), dtype=np.uint64)
        procs = self.procs.get(sid, S.PROCESSES_SCHEMA.empty_table())
        maps = self.maps.get(sid, S.MAPPINGS_SCHEMA.empty_table())
        ppid_key = np.asarray(procs.column("pid").to_numpy(), dtype=np.int64)
        prow = lookup_rows(ppid_key, np.zeros(len(ppid_key), np.int64), pid, np.zeros(n, np.int64))
        mrow = lookup_rows(
            np.asarray(maps.column("pid").to_numpy(), dtype=np.int64),
            np.asarray(maps.column("start").to_numpy(), dtype=np.uint64),
            pid,
            vstart,
        )
        pidx = pa.array(prow, mask=prow < 0)
        midx = pa.array(mrow, mask=mrow < 0)
        flags = np.asarray(pages.column("flags").to_numpy(), dtype=np.uint16)
        cols: dict[str, Any] = {
            "time_s": pa.array(np.full(n, self.times.get(sid, float("nan")))),
            "pid": pages.column("pid"),
            "ppid": procs.column("ppid").take(pidx),
            "comm": procs.column("comm").take(pidx),
            "vma_start": pages.column("vma_start"),
            "vma_kind": maps.column("kind").take(midx),
            "page_addr": pages.column("page_addr"),
            "content_hash": pages.column("content_hash"),
            "frame": pages.column("frame_id"),
            "is_zero": pa.array(((flags & np.uint16(S.PageFlag.ZERO)) != 0).astype(np.uint8)),
            "host": pa.array(np.full(n, self.host, dtype=object), pa.string()),
            "proc_start": procs.column("proc_start").take(pidx),
            "flags": pages.column("flags"),
            "vma_end": maps.column("end").take(midx),
            "uid": procs.column("uid").take(pidx),
            "cgroup": procs.column("cgroup").take(pidx),
            "labels": procs.column("labels").take(pidx),
            "perms": maps.column("perms").take(midx),
            "vma_path": maps.column("path").take(midx),
            **{c: pages.column(c) for c in S.INTERCHANGE_CHANGES if c in pages.column_names},
        }
        arrays = [cols[f.name] for f in self.schema]
        return pa.Table.from_arrays(arrays, schema=self.schema)


def export_trace(
    trace_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    minimal: bool = False,
    progress: Progress = NULL_PROGRESS,
    batch_rows: int = 1 << 18,
) -> ExportResult:
    """Write the trace at ``trace_path`` as one interchange file ``out``.

    Parameters
    ----------
    trace_path
        A trace directory.
    out
        The output file; its suffix picks the format (``.csv``, ``.csv.gz``, ``.parquet``).
    overwrite
        Replace ``out`` if it exists.
    minimal
        Write only the interchange columns (plus ``is_zero`` and ``host``), no extensions.
    progress
        Receives the number of pages written.
    batch_rows
        Pages read and written at a time.

    Returns
    -------
    ExportResult
        Rows, columns, hosts and the trace hash.
    """
    started = time.perf_counter()
    outp = Path(out)
    fmt = export_format(outp)
    trace = open_trace(trace_path)
    columns = _columns(trace, minimal)
    schema = pa.schema([EXPORT_SCHEMA.field(c) for c in columns])
    provenance = {
        "tool_version": tool_version(),
        "trace_hash": trace.trace_hash,
        "trace_source": trace.manifest.get("source"),
        "format": "ksm-planner interchange",
    }
    total = sum(trace.pages_rows(h) for h in trace.hosts)
    rows = 0
    snapshots = 0
    exported: set[tuple[str, int]] = set()
    progress.start("export pages", total)
    with atomic_file(outp, overwrite=overwrite, private=True) as tmp:
        writer: Any
        sink: Any = None
        if fmt == "parquet":
            dict_columns: Any = [
                c
                for c in columns
                if pa.types.is_string(schema.field(c).type)
                or c in ("pid", "ppid", "vma_start", "flags", "content_hash")
            ]
            writer = pq.ParquetWriter(
                tmp,
                schema.with_metadata({b"ksm_trace.export": json.dumps(provenance).encode()}),
                compression="zstd",
                compression_level=3,
                use_dictionary=dict_columns,
            )
        else:
            sink = (
                pa.CompressedOutputStream(str(tmp), "gzip")
                if fmt == "csv.gz"
                else pa.OSFile(str(tmp), "wb")
            )
            writer = pacsv.CSVWriter(sink, schema)
        try:
            for host in trace.hosts:
                flat = _HostFlattener(trace, host, schema)
                snapshots += len(flat.times)
                page_columns = [*_PAGE_COLUMNS, *(c for c in S.INTERCHANGE_CHANGES if c in columns)]
                for table in trace.iter_pages(host, page_columns, batch_rows=batch_rows):
                    sid = np.asarray(table.column("snapshot_id").to_numpy())
                    cuts = [0, *(np.flatnonzero(sid[1:] != sid[:-1]) + 1).tolist(), len(sid)]
                    for a, b in itertools.pairwise(cuts):
                        s = int(sid[a])
                        part = flat.rows(s, table.slice(a, b - a))
                        writer.write_table(part)
                        exported.add((host, s))
                        rows += part.num_rows
                    progress.advance(table.num_rows)
        finally:
            writer.close()
            if sink is not None:
                sink.close()
    progress.finish()
    return ExportResult(
        trace=str(trace.path),
        out=str(outp),
        format=fmt,
        columns=tuple(columns),
        rows=rows,
        hosts=trace.hosts,
        snapshots=snapshots,
        empty_snapshots=snapshots - len(exported),
        trace_hash=trace.trace_hash,
        elapsed_s=time.perf_counter() - started,
    )


__all__ = ["EXPORT_SCHEMA", "ExportResult", "export_format", "export_trace"]
