"""Reading and writing ksm-planner traces (the format of ``planner.trace.schema``).

Writing goes through :class:`TraceWriter`, which builds the whole dataset in a private
temporary directory and renames it into place only when it is complete, so a failed
capture or ingest leaves nothing at the output path. Reading goes through
:func:`open_trace` (manifest and schema checks, cheap) and :meth:`Trace.load_host`
(the tables of one host as Arrow tables).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from planner._fs import atomic_dir
from planner.errors import TraceFormatError
from planner.provenance import tool_version
from planner.trace import schema as S

if TYPE_CHECKING:
    import os
    from collections.abc import Iterator, Mapping, Sequence
    from types import TracebackType

_HASH_CHUNK = 1 << 20


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _trace_hash(files: Mapping[str, Mapping[str, Any]]) -> str:
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel}\t{files[rel]['sha256']}\n".encode())
    return "sha256:" + h.hexdigest()


def host_dir_name(host: str) -> str:
    """Directory name of a host partition (hive style ``host=<name>``)."""
    if not host or "/" in host or host in (".", ".."):
        raise TraceFormatError(
            f"invalid host name {host!r}", hint="host names cannot be empty or contain '/'"
        )
    return S.HOST_DIR_PREFIX + host


def conform(table: pa.Table, name: str) -> pa.Table:
    """Return ``table`` with exactly the columns and types of the ``name`` schema.

    Missing nullable columns are filled with nulls; extra columns are an error.
    """
    schema = S.SCHEMAS[name]
    extra = set(table.column_names) - set(schema.names)
    if extra:
        raise TraceFormatError(f"{name} table has unknown columns {sorted(extra)}")
    cols = []
    for f in schema:
        if f.name in table.column_names:
            col = table.column(f.name)
            if col.type != f.type:
                try:
                    col = col.cast(f.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise TraceFormatError(
                        f"{name}.{f.name} has type {col.type}, expected {f.type}"
                    ) from exc
            if not f.nullable and col.null_count:
                raise TraceFormatError(
                    f"{name}.{f.name} has {col.null_count} nulls but may not be null"
                )
            cols.append(col)
        else:
            if not f.nullable:
                raise TraceFormatError(f"{name} table lacks required column {f.name!r}")
            cols.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=schema)


# ----------------------------------------------------------------------------- writing


class HostWriter:
    """Accumulates the snapshots of one host; pages are streamed to Parquet in row groups."""

    def __init__(self, root: Path, host: str, *, row_group_rows: int) -> None:
        self.host = host
        self.dir = root / host_dir_name(host)
        self.dir.mkdir(mode=0o700)
        self._row_group_rows = row_group_rows
        self._small: dict[str, list[pa.Table]] = {"snapshots": [], "processes": [], "mappings": []}
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._snapshot_ids: list[int] = []
        self.pages_written = 0

    def add_snapshot(
        self,
        snapshot: Mapping[str, Any],
        *,
        processes: pa.Table,
        mappings: pa.Table,
        pages: pa.Table,
    ) -> None:
        """Add one snapshot: its row of ``snapshots`` and its rows of the other tables.

        ``pages`` must be sorted by ``(pid, page_addr)``; all tables must carry the
        snapshot's ``snapshot_id``. Columns missing from the inputs are written as nulls.
        """
        sid = int(snapshot["snapshot_id"])
        if self._snapshot_ids and sid <= self._snapshot_ids[-1]:
            raise TraceFormatError(
                f"snapshot ids must increase (got {sid} after {self._snapshot_ids[-1]})"
            )
        snap = {**snapshot, "host": self.host}
        snap.setdefault("tool_version", tool_version())
        snap.setdefault("page_size", S.PAGE_SIZE_BYTES)
        self._small["snapshots"].append(
            conform(
                pa.Table.from_pylist([snap], schema=_partial_schema(S.SNAPSHOTS_SCHEMA, snap)),
                "snapshots",
            )
        )
        self._small["processes"].append(conform(processes, "processes"))
        self._small["mappings"].append(conform(mappings, "mappings"))
        pages = conform(pages, "pages")
        self._snapshot_ids.append(sid)
        if pages.num_rows:
            self._pending.append(pages)
            self._pending_rows += pages.num_rows
            if self._pending_rows >= self._row_group_rows:
                self._flush()

    def add_pages(self, pages: pa.Table) -> None:
        """Stream part of the pages of the snapshot being built, before its :meth:`add_snapshot`.

        Lets a snapshot larger than memory be written in chunks: call ``add_pages`` for each
        chunk (sorted by ``(pid, page_addr)``, continuing the previous chunk), then
        :meth:`add_snapshot` with the snapshot's remaining (possibly empty) ``pages``.
        """
        pages = conform(pages, "pages")
        if not pages.num_rows:
            return
        sid = pages.column("snapshot_id")
        lo, hi = pc.min_max(sid).values()
        if lo.as_py() != hi.as_py() or (
            self._snapshot_ids and lo.as_py() <= self._snapshot_ids[-1]
        ):
            raise TraceFormatError(
                "add_pages() takes the pages of one new snapshot (snapshot ids must increase)"
            )
        self._pending.append(pages)
        self._pending_rows += pages.num_rows
        if self._pending_rows >= self._row_group_rows:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        table = pa.concat_tables(self._pending).combine_chunks()
        self._pending, self._pending_rows = [], 0
        if self._writer is None:
            self._writer = pq.ParquetWriter(
                self.dir / "pages.parquet",
                S.PAGES_SCHEMA.with_metadata(_meta()),
                **_parquet_options("pages"),
            )
        self._writer.write_table(table, row_group_size=max(table.num_rows, 1))
        self.pages_written += table.num_rows

    def abort(self) -> None:
        """Close the pages file without finishing it (the directory is being discarded)."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None

    def close(self) -> None:
        """Write the small tables and finish the pages file."""
        self._flush()
        if self._writer is None:  # a host without pages still gets an (empty) pages file
            pq.write_table(
                S.PAGES_SCHEMA.empty_table().replace_schema_metadata(_meta()),
                self.dir / "pages.parquet",
            )
        else:
            self._writer.close()
        for name, parts in self._small.items():
            schema = S.SCHEMAS[name]
            table = pa.concat_tables(parts) if parts else schema.empty_table()
            table = table.sort_by([(k, "ascending") for k in S.SORT_KEYS[name]])
            pq.write_table(
                table.replace_schema_metadata(_meta()),
                self.dir / f"{name}.parquet",
                **_parquet_options("default"),
            )


def _parquet_options(name: str) -> dict[str, Any]:
    opts: dict[str, Any] = dict(S.PARQUET_OPTIONS[name])
    return opts


def _partial_schema(schema: pa.Schema, row: Mapping[str, Any]) -> pa.Schema:
    return pa.schema([f for f in schema if f.name in row])


def _meta() -> dict[bytes, bytes]:
    return {
        S.METADATA_KEY: str(S.SCHEMA_VERSION).encode(),
        b"ksm_trace.format": S.FORMAT_NAME.encode(),
    }


class TraceWriter:
    """Write a trace directory atomically.

    Examples
    --------
    >>> with TraceWriter(out, source="capture") as tw:          # doctest: +SKIP
    ...     hw = tw.host("web-1")
    ...     hw.add_snapshot(snap_row, processes=procs, mappings=maps, pages=pages)
    """

    def __init__(
        self,
        out: str | os.PathLike[str],
        *,
        source: str,
        overwrite: bool = False,
        row_group_rows: int = 1 << 20,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.out = Path(out)
        self.source = source
        self._overwrite = overwrite
        self._row_group_rows = row_group_rows
        self._extra = dict(extra or {})
        self._hosts: dict[str, HostWriter] = {}
        self._stack: contextlib.ExitStack | None = None
        self._root: Path | None = None
        self.manifest: dict[str, Any] | None = None

    def __enter__(self) -> TraceWriter:
        self._stack = contextlib.ExitStack()
        self._root = self._stack.enter_context(
            atomic_dir(self.out, overwrite=self._overwrite, private=True)
        )
        return self

    def host(self, name: str) -> HostWriter:
        """The writer of host ``name`` (created on first use)."""
        if self._root is None:
            raise RuntimeError("TraceWriter must be used as a context manager")
        if name not in self._hosts:
            self._hosts[name] = HostWriter(self._root, name, row_group_rows=self._row_group_rows)
        return self._hosts[name]

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._stack is not None
        assert self._root is not None
        stack = self._stack
        if exc_type is None:
            try:
                for hw in self._hosts.values():
                    hw.close()
                self.manifest = _write_manifest(self._root, source=self.source, extra=self._extra)
            except BaseException as err:
                self._abort()
                stack.__exit__(type(err), err, err.__traceback__)
                raise
        else:
            self._abort()
        stack.__exit__(exc_type, exc, tb)

    def _abort(self) -> None:
        for hw in self._hosts.values():
            hw.abort()


def _write_manifest(root: Path, *, source: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    files: dict[str, dict[str, Any]] = {}
    hosts = []
    for d in sorted(root.iterdir()):
        if d.is_dir() and d.name.startswith(S.HOST_DIR_PREFIX):
            hosts.append(d.name[len(S.HOST_DIR_PREFIX) :])
            for f in sorted(d.iterdir()):
                rel = f"{d.name}/{f.name}"
                files[rel] = {"bytes": f.stat().st_size, "sha256": _sha256(f)}
    manifest = {
        "format": S.FORMAT_NAME,
        "schema_version": S.SCHEMA_VERSION,
        "created_by": tool_version(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": source,
        "hosts": hosts,
        "files": files,
        "trace_hash": _trace_hash(files),
        **dict(extra),
    }
    (root / S.MANIFEST_NAME).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class HostTrace:
    """All tables of one host of a trace, as Arrow tables sorted by their keys."""

    host: str
    snapshots: pa.Table
    processes: pa.Table
    mappings: pa.Table
    pages: pa.Table
    trace_hash: str
    path: Path | None = None

    @property
    def snapshot_ids(self) -> np.ndarray[Any, np.dtype[np.int32]]:
        """Snapshot ids in time order."""
        return self.snapshots.column("snapshot_id").to_numpy()

    @property
    def times_s(self) -> np.ndarray[Any, np.dtype[np.float64]]:
        """Snapshot times (seconds since the first snapshot), in order."""
        return self.snapshots.column("time_s").to_numpy()

    def meta(self) -> dict[str, Any]:
        """Per-trace facts from the first snapshot row (kernel, page size, hash, tool, HZ)."""
        if self.snapshots.num_rows == 0:
            return {}
        row = self.snapshots.slice(0, 1).to_pylist()[0]
        return {
            k: row[k]
            for k in (
                "host",
                "kernel_release",
                "page_size",
                "hz",
                "thp_mode",
                "hash_algo",
                "hash_key_id",
                "zero_hash",
                "tool_version",
                "capture_options",
            )
        }

    def pages_of(self, snapshot_id: int) -> pa.Table:
        """The pages rows of one snapshot (a zero-copy slice: pages are sorted by snapshot)."""
        sid = self.pages.column("snapshot_id").to_numpy()
        lo, hi = np.searchsorted(sid, [snapshot_id, snapshot_id + 1])
        return self.pages.slice(int(lo), int(hi - lo))


@dataclass(frozen=True)
class Trace:
    """An opened trace directory: its manifest, checked; host tables are loaded on demand."""

    path: Path
    manifest: dict[str, Any]
    hosts: tuple[str, ...] = field(default=())

    @property
    def trace_hash(self) -> str:
        """The trace hash recorded in the manifest (SHA-256 over the data files' hashes)."""
        return str(self.manifest["trace_hash"])

    @property
    def schema_version(self) -> int:
        """The schema version the trace was written with."""
        return int(self.manifest["schema_version"])

    def host_path(self, host: str) -> Path:
        """The directory of one host partition."""
        return self.path / host_dir_name(host)

    def load_host(
        self, host: str | None = None, *, columns: Mapping[str, Sequence[str]] | None = None
    ) -> HostTrace:
        """Load every table of ``host`` (the only host when ``None``)."""
        if host is None:
            if len(self.hosts) != 1:
                raise TraceFormatError(
                    f"{self.path} holds {len(self.hosts)} hosts ({', '.join(self.hosts)})",
                    hint="name one with --host",
                )
            host = self.hosts[0]
        if host not in self.hosts:
            raise TraceFormatError(
                f"{self.path} has no host {host!r}", hint=f"hosts are: {', '.join(self.hosts)}"
            )
        d = self.host_path(host)
        tables = {}
        for name in S.TABLES:
            cols = list(columns[name]) if columns and name in columns else None
            tables[name] = _read_table(d / f"{name}.parquet", name, cols)
        return HostTrace(host=host, trace_hash=self.trace_hash, path=d, **tables)

    def read_table(self, host: str, name: str, columns: Sequence[str] | None = None) -> pa.Table:
        """One table of one host (checked against its schema), e.g. ``processes``."""
        if host not in self.hosts:
            raise TraceFormatError(
                f"{self.path} has no host {host!r}", hint=f"hosts are: {', '.join(self.hosts)}"
            )
        return _read_table(
            self.host_path(host) / f"{name}.parquet", name, list(columns) if columns else None
        )

    def iter_snapshot_pages(
        self, host: str, columns: Sequence[str] | None = None, *, batch_rows: int = 1 << 20
    ) -> Iterator[tuple[int, pa.Table]]:
        """Yield ``(snapshot_id, pages of that snapshot)`` in order, streaming ``pages.parquet``.

        Memory holds one snapshot's pages (plus one batch), whatever the trace size.
        Snapshots without pages are not yielded. ``columns`` always gains ``snapshot_id``.
        """
        if host not in self.hosts:
            raise TraceFormatError(
                f"{self.path} has no host {host!r}", hint=f"hosts are: {', '.join(self.hosts)}"
            )
        path = self.host_path(host) / "pages.parquet"
        cols = list(columns) if columns else list(S.PAGES_SCHEMA.names)
        if "snapshot_id" not in cols:
            cols.insert(0, "snapshot_id")
        unknown = [c for c in cols if c not in S.PAGES_SCHEMA.names]
        if unknown:
            raise TraceFormatError(f"{path}: no column {unknown[0]!r} in the pages table")
        try:
            pf = pq.ParquetFile(path)
            batches = pf.iter_batches(batch_size=batch_rows, columns=cols)
            parts: list[pa.Table] = []
            current: int | None = None
            for batch in batches:
                table = pa.Table.from_batches([batch])
                sid = np.asarray(table.column("snapshot_id").to_numpy())
                cuts = [0, *(np.flatnonzero(sid[1:] != sid[:-1]) + 1).tolist(), len(sid)]
                for a, b in itertools.pairwise(cuts):
                    if a == b:
                        continue
                    value = int(sid[a])
                    if current is not None and value != current:
                        if value < current:
                            raise TraceFormatError(
                                f"{path}: pages are not sorted by snapshot_id",
                                hint="re-create the trace",
                            )
                        yield current, pa.concat_tables(parts)
                        parts = []
                    current = value
                    parts.append(table.slice(a, b - a))
            if current is not None:
                yield current, pa.concat_tables(parts)
        except (OSError, pa.ArrowInvalid) as exc:
            raise TraceFormatError(
                f"cannot read {path}: {exc}", hint="the file is truncated or not Parquet"
            ) from exc

    def verify(self) -> None:
        """Recompute every file's SHA-256 and compare with the manifest."""
        for rel, info in self.manifest["files"].items():
            got = _sha256(self.path / rel)
            if got != info["sha256"]:
                raise TraceFormatError(
                    f"{self.path / rel} does not match its manifest hash "
                    "(the file changed or is corrupt)",
                    hint="re-create the trace or restore the file",
                )


def _read_table(path: Path, name: str, columns: list[str] | None) -> pa.Table:
    try:
        table = pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowInvalid) as exc:
        raise TraceFormatError(
            f"cannot read {path}: {exc}", hint="the file is truncated or not Parquet"
        ) from exc
    expected = S.SCHEMAS[name]
    for f in table.schema:
        want = expected.field(f.name) if f.name in expected.names else None
        if want is None:
            raise TraceFormatError(f"{path}: unknown column {f.name!r}")
        if f.type != want.type:
            raise TraceFormatError(
                f"{path}: column {f.name!r} has type {f.type}, expected {want.type}"
            )
    missing = [n for n in (columns or expected.names) if n not in table.column_names]
    if missing:
        raise TraceFormatError(f"{path}: missing columns {missing}")
    return table.replace_schema_metadata(None)


def open_trace(path: str | os.PathLike[str]) -> Trace:
    """Open a trace directory: read and check its manifest and the files it lists.

    Raises :class:`TraceFormatError` with one line naming the file and the problem when
    ``path`` is not a trace, was written by a newer schema, or has missing or truncated files.
    """
    p = Path(path)
    if not p.exists():
        raise TraceFormatError(f"{p} does not exist", hint="give the path of a trace directory")
    if p.is_file():
        raise TraceFormatError(
            f"{p} is a file, not a ksm-planner trace directory",
            hint="convert interchange CSV/Parquet with 'ksm-planner ingest SRC --out DIR'",
        )
    mpath = p / S.MANIFEST_NAME
    try:
        manifest = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise TraceFormatError(
            f"{p} is not a ksm-planner trace (no {S.MANIFEST_NAME})",
            hint="create one with 'ksm-planner capture' or 'ksm-planner ingest'",
        ) from None
    except (OSError, ValueError) as exc:
        raise TraceFormatError(
            f"{mpath} is unreadable: {exc}", hint="the trace is damaged; re-create it"
        ) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != S.FORMAT_NAME:
        raise TraceFormatError(f"{mpath} is not a ksm-planner trace manifest")
    version = manifest.get("schema_version")
    if not isinstance(version, int) or version < 1:
        raise TraceFormatError(f"{mpath}: invalid schema_version {version!r}")
    if version > S.SCHEMA_VERSION:
        raise TraceFormatError(
            f"{p} uses trace schema version {version}, "
            f"newer than this ksm-planner supports ({S.SCHEMA_VERSION})",
            hint="upgrade ksm-planner",
        )
    files = manifest.get("files", {})
    for rel, info in files.items():
        fp = p / rel
        try:
            size = fp.stat().st_size
        except FileNotFoundError:
            raise TraceFormatError(
                f"{fp} is missing", hint="the trace is incomplete; re-create it"
            ) from None
        if size != info.get("bytes"):
            raise TraceFormatError(
                f"{fp} has {size} bytes but the manifest says {info.get('bytes')} "
                "(truncated or modified)",
                hint="re-create the trace",
            )
    hosts = tuple(manifest.get("hosts", []))
    for h in hosts:
        for name in S.TABLES:
            if f"{host_dir_name(h)}/{name}.parquet" not in files:
                raise TraceFormatError(
                    f"{p}: host {h!r} lacks {name}.parquet", hint="the trace is incomplete"
                )
    return Trace(path=p, manifest=manifest, hosts=hosts)


def iter_hosts(trace: Trace) -> Iterator[HostTrace]:
    """Load each host of ``trace`` in turn."""
    for h in trace.hosts:
        yield trace.load_host(h)
