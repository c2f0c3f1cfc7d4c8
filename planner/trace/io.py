"""Reading and writing ksm-planner traces (the format of ``planner.trace.schema``).

Writing goes through :class:`TraceWriter`, which builds the whole dataset in a private
temporary directory and renames it into place only when it is complete, so a failed
capture or ingest leaves nothing at the output path. Reading goes through
:func:`open_trace` (manifest checks, cheap) and the readers of :class:`Trace`
(:meth:`Trace.load_host` for the tables of one host as Arrow tables, the streaming
:meth:`Trace.iter_pages`), which verify every file's SHA-256 before anything decoded from it
is used and check the tables' consistency (see "verifying" below).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import queue
import re
import stat
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from planner._fs import atomic_dir
from planner._input import file_kind
from planner.errors import TraceFormatError, UsageProblem
from planner.provenance import tool_version
from planner.trace import schema as S
from planner.trace.check import (
    PAGE_CHANGE_COLUMNS,
    HostIndex,
    PagesCheck,
    as_numpy,
    check_required,
    check_small_tables,
    short,
)

if TYPE_CHECKING:
    from collections.abc import Generator, Iterator, Mapping, Sequence
    from types import TracebackType

    from planner.trace.views import (
        CgroupMemory,
        HostMemory,
        Interval,
        PageChanges,
        ProcessFootprints,
    )

_HASH_CHUNK = 1 << 20
#: Bytes of a Parquet column chunk read at a time where a file is streamed
#: (:func:`streamed_parquet`).
STREAM_BUFFER_BYTES = 1 << 20
#: Batches of pages a streaming reader decodes and checks while the file is still being
#: hashed (:meth:`Trace.iter_pages`); it then waits for the hash.
_HASH_AHEAD_BATCHES = 4


def streamed_parquet(source: Any) -> pq.ParquetFile:
    """A Parquet file to be read batch by batch: its column chunks read through a buffer
    of :data:`STREAM_BUFFER_BYTES`, one row group at a time.

    pyarrow's ``ParquetFile`` pre-buffers by default: the first batch reads the column
    chunks of every row group (in large, coalesced reads) and keeps them until the reader
    is done, so a streaming reader held the whole file's compressed bytes (398 MB of a
    16 M-page trace's pages, 132 MB a snapshot) beside what it decoded. Read through a
    buffer, the same batches come as fast and the reader holds a few MB
    (docs/engine.md, "Parquet files read without pre-buffering")."""
    return pq.ParquetFile(source, pre_buffer=False, buffer_size=STREAM_BUFFER_BYTES)


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


#: Longest host name: a host directory name (``host=`` + name) must fit in 255 bytes.
MAX_HOST_NAME_BYTES = 250


def valid_host_name(name: str) -> bool:
    """Whether ``name`` can name a host partition (a directory ``host=<name>``)."""
    return (
        bool(name)
        and "/" not in name
        and "\0" not in name
        and name not in (".", "..")
        and len(name.encode("utf-8", "surrogatepass")) <= MAX_HOST_NAME_BYTES
    )


def host_dir_name(host: str) -> str:
    """Directory name of a host partition (hive style ``host=<name>``)."""
    if not valid_host_name(host):
        raise TraceFormatError(
            f"invalid host name {host!r}",
            hint=f"host names are 1 to {MAX_HOST_NAME_BYTES} bytes without '/' or NUL",
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
        self._small: dict[str, list[pa.Table]] = {name: [] for name in S.TABLES if name != "pages"}
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
        cgroups: pa.Table | None = None,
        samples: pa.Table | None = None,
    ) -> None:
        """Add one snapshot: its row of ``snapshots`` and its rows of the other tables.

        ``pages`` must be sorted by ``(pid, page_addr)``; all tables must carry the
        snapshot's ``snapshot_id``. Columns missing from the inputs are written as nulls;
        ``cgroups`` and ``samples`` (schema version 2) may be left out.
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
        for name, table in (("cgroups", cgroups), ("samples", samples)):
            if table is not None:
                self._small[name].append(conform(table, name))
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
        import pyarrow.compute as pc  # (here: readers need not import it, 50-70 ms)

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
    cgroups: pa.Table = field(default_factory=S.CGROUPS_SCHEMA.empty_table)
    """Memory accounting of the traced processes' cgroups (schema v2; empty for v1)."""
    samples: pa.Table = field(default_factory=S.SAMPLES_SCHEMA.empty_table)
    """One row per sampling pass and process between snapshots (schema v2)."""

    @property
    def snapshot_ids(self) -> np.ndarray[Any, np.dtype[np.int32]]:
        """Snapshot ids in time order."""
        return self.snapshots.column("snapshot_id").to_numpy()

    @property
    def times_s(self) -> np.ndarray[Any, np.dtype[np.float64]]:
        """Snapshot times (seconds since the first snapshot), in order."""
        return self.snapshots.column("time_s").to_numpy()

    @property
    def hz(self) -> int | None:
        """The kernel's CONFIG_HZ the capture recorded; ``None`` when it recorded none."""
        return recorded_hz(self.snapshots)

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

    # ---------------------------------------------------------------- schema v2 facts

    @property
    def sampled(self) -> bool:
        """Whether the capture sampled pages between snapshots (``--sample-ms``)."""
        col = self.snapshots.column("sample_ms")
        return col.null_count < len(col)

    def page_changes(self, snapshot_id: int) -> PageChanges:
        """Per page row of ``pages_of(snapshot_id)``: what changed over the interval after it."""
        from planner.trace.views import page_changes

        return page_changes(self.snapshots, self.pages_of(snapshot_id), snapshot_id)

    def intervals(self) -> list[Interval]:
        """The interval after each snapshot: host load, traced processes' CPU, sampling."""
        from planner.trace.views import intervals

        return intervals(self.snapshots, self.processes)

    def host_memory(self, snapshot_id: int) -> HostMemory:
        """The host's memory (``/proc/meminfo``) and CPUs at one snapshot."""
        from planner.trace.views import host_memory

        return host_memory(self.snapshots, snapshot_id)

    def process_footprints(self, snapshot_id: int) -> ProcessFootprints:
        """Every live process's whole footprint (PSS split, page tables) and CPU time."""
        from planner.trace.views import process_footprints

        return process_footprints(self.processes, snapshot_id)

    def cgroup_memory(self, snapshot_id: int) -> list[CgroupMemory]:
        """The memory accounting of the traced processes' cgroups at one snapshot."""
        from planner.trace.views import cgroup_memory

        return cgroup_memory(self.cgroups, snapshot_id)


# ----------------------------------------------------------------------------- verifying
#
# Trust. A trace directory may come from anywhere (another team, a ticket attachment, a
# disk that flipped bits), so nothing in it is trusted before it is checked:
#
# * the manifest (``ksm-trace.json``) is parsed strictly: types, a host list, exactly the
#   files of those hosts (``host=<name>/<table>.parquet``; a name outside the trace
#   directory such as ``../../etc/passwd`` is refused before anything touches the
#   filesystem), and a ``trace_hash`` equal to the hash of the listed file hashes;
# * a trace file is opened relative to the trace directory without following symbolic
#   links (``O_NOFOLLOW`` on the host directory and the file) and must be a regular file
#   of the size the manifest gives: links, FIFOs, devices and directories are refused,
#   never opened for reading data;
# * the bytes of a file are hashed (SHA-256) before anything decoded from them is used.
#   Whole-table reads read the file once into memory, hashing as they read, and decode
#   those very bytes. Streaming reads (``info``, ``export``, the replay's pages) decode
#   through the open descriptor while a thread hashes it by offset (:class:`_Hashing`),
#   hold back what they decoded until the hash matched, report a mismatch before any
#   decoding error, and check afterwards that the file did not change meanwhile
#   (``fstat``: size, mtime and ctime);
# * the decoded tables pass :mod:`planner.trace.check`, the one consistency check every
#   reader runs, so every command accepts and rejects the same traces.
#
# Hashing costs about 4 % of decoding the pages (measured by
# ``tests/trace/test_bench_verify.py``), so nothing is cached on disk. Within one process
# a file whose bytes were hashed is remembered by ``(device, inode, size, mtime_ns,
# ctime_ns)``, so that a command reading a trace several times (``report``) hashes it
# once. That key cannot be forged by whoever can write the file: restoring the mtime
# (``touch -d``) sets the ctime to the current time, and the ctime cannot be set from
# user space. A file changed within the same clock tick as its previous change could keep
# its ctime (filesystem timestamps are coarse), so a file whose ctime is less than
# :data:`_RACY_S` seconds older than the moment it was hashed is not remembered (the rule
# git uses for "racily clean" index entries). The memory lives and dies with the process;
# a new command hashes again.

_MANIFEST_MAX_BYTES = 64 << 20
_RACY_S = 2.0
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_TRACE_HASH = re.compile(r"sha256:[0-9a-f]{64}")
_RECREATE = "re-create the trace (capture or ingest) or restore it from a good copy"
_DECODE_ERRORS = (OSError, ValueError, TypeError, KeyError, IndexError, pa.ArrowException)

_VerifiedKey = tuple[int, int, int, int, int, str]
_VERIFIED: dict[_VerifiedKey, float] = {}
_VERIFIED_MAX = 4096
_VERIFIED_LOCK = threading.Lock()


def _stat_key(st: os.stat_result, sha256: str) -> _VerifiedKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, sha256)


def _remember(st: os.stat_result, sha256: str, hashed_at_ns: int) -> None:
    if hashed_at_ns - st.st_ctime_ns < _RACY_S * 1e9:
        return  # racily clean: the next read hashes again
    with _VERIFIED_LOCK:
        if len(_VERIFIED) >= _VERIFIED_MAX:
            _VERIFIED.clear()
        _VERIFIED[_stat_key(st, sha256)] = time.time()


def _known_good(st: os.stat_result, sha256: str) -> bool:
    with _VERIFIED_LOCK:
        return _stat_key(st, sha256) in _VERIFIED


def forget_verified() -> None:
    """Forget which files this process has hashed (the next read of every file hashes it)."""
    with _VERIFIED_LOCK:
        _VERIFIED.clear()


@dataclass(frozen=True)
class _FileEntry:
    """A file the manifest lists: where it is and what it must hold."""

    rel: str  # host=<name>/<table>.parquet
    size: int
    sha256: str


def _open_dir(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise TraceFormatError(
            f"cannot open the trace directory {path}: {exc.strerror}", hint=_RECREATE
        ) from None


def _open_member(root: Path, rel: str) -> tuple[int, os.stat_result]:
    """Open ``root/rel`` for reading without following links; it must be a regular file."""
    parts = rel.split("/")
    shown = root / rel
    fds: list[int] = []
    try:
        fds.append(_open_dir(root))
        for i, name in enumerate(parts):
            last = i == len(parts) - 1
            try:
                st = os.stat(name, dir_fd=fds[-1], follow_symlinks=False)
            except FileNotFoundError:
                what = "is missing" if last else "(its host directory) is missing"
                raise TraceFormatError(
                    f"{root / '/'.join(parts[: i + 1])} {what}", hint=_RECREATE
                ) from None
            want = stat.S_ISREG if last else stat.S_ISDIR
            if not want(st.st_mode):
                raise TraceFormatError(
                    f"{root / '/'.join(parts[: i + 1])} is {file_kind(st.st_mode)}, not a "
                    f"{'regular file' if last else 'directory'} of the trace",
                    hint="trace files are regular files inside the trace directory; " + _RECREATE,
                )
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
            if not last:
                flags |= os.O_DIRECTORY
            fds.append(os.open(name, flags, dir_fd=fds[-1]))
        fd = fds.pop()
    except OSError as exc:
        raise TraceFormatError(
            f"cannot open {shown}: {exc.strerror or exc}", hint=_RECREATE
        ) from None
    finally:
        for d in fds:
            os.close(d)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):  # swapped between the lstat and the open
        os.close(fd)
        raise TraceFormatError(f"{shown} is {file_kind(st.st_mode)}, not a regular file")
    os.set_blocking(fd, True)
    return fd, st


def _size_mismatch(path: Path, size: int, want: int) -> TraceFormatError:
    return TraceFormatError(
        f"{path} has {size} bytes but the manifest says {want} (truncated or modified)",
        hint=_RECREATE,
    )


def _hash_mismatch(path: Path) -> TraceFormatError:
    return TraceFormatError(
        f"{path} does not match the SHA-256 its manifest records (the file changed or is corrupt)",
        hint=_RECREATE,
    )


def _changed(path: Path) -> TraceFormatError:
    return TraceFormatError(f"{path} changed while it was being read", hint="run the command again")


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino, a.st_size, a.st_mtime_ns, a.st_ctime_ns) == (
        b.st_dev,
        b.st_ino,
        b.st_size,
        b.st_mtime_ns,
        b.st_ctime_ns,
    )


def _read_verified(root: Path, entry: _FileEntry) -> pa.Buffer:
    """The bytes of one trace file, read once and hashed while they are read.

    A file this process hashed before and that has not changed since (see the comment
    above) is read without hashing it again.
    """
    path = root / entry.rel
    fd, st = _open_member(root, entry.rel)
    try:
        if st.st_size != entry.size:
            raise _size_mismatch(path, st.st_size, entry.size)
        known = _known_good(st, entry.sha256)
        buf = pa.allocate_buffer(entry.size)  # (not zero-filled, unlike a bytearray)
        view = memoryview(buf)
        h = hashlib.sha256()
        started_ns = time.time_ns()
        pos = 0
        while pos < entry.size:
            n = os.readv(fd, [view[pos : pos + _HASH_CHUNK]])
            if n == 0:
                raise _changed(path)
            if not known:
                h.update(view[pos : pos + n])
            pos += n
        if os.read(fd, 1) or not _same_file(st, os.fstat(fd)):
            raise _changed(path)
    finally:
        os.close(fd)
    if not known:
        if h.hexdigest() != entry.sha256:
            raise _hash_mismatch(path)
        _remember(st, entry.sha256, started_ns)
    return buf


@contextlib.contextmanager
def _stream_verified(root: Path, entry: _FileEntry) -> Iterator[Any]:
    """A binary file object of one trace file whose bytes were hashed first.

    The hash is computed through the descriptor that is then decoded (or known from an
    earlier read in this process, see the comment above): :func:`_stream_hashing`, waited
    for before anything is read; when the caller is done, the file must still be the one
    that was hashed (same size, mtime and ctime).
    """
    with _stream_hashing(root, entry) as (f, hashing):
        if hashing is not None:
            hashing.verified()
        yield f


class _Hashing:
    """The SHA-256 of an open trace file computed by a thread (by offset, ``os.pread``,
    so the descriptor's position is the decoder's), for a reader that decodes the file
    meanwhile: nothing decoded may leave the reader before :meth:`verified` returned."""

    def __init__(self, fd: int, st: os.stat_result, path: Path, entry: _FileEntry) -> None:
        self._fd, self._st, self._path, self._entry = fd, st, path, entry
        self._stop = threading.Event()
        self._result: list[Any] = []  # the digest and the time hashing began, or an error
        self._done = False
        self._thread = threading.Thread(target=self._run, name="ksm-planner-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            h = hashlib.sha256()
            started_ns = time.time_ns()
            buf = bytearray(_HASH_CHUNK)
            view = memoryview(buf)
            pos = 0
            while pos < self._entry.size and not self._stop.is_set():
                n = os.preadv(self._fd, [view], pos)
                if n == 0:
                    break
                h.update(view[:n])
                pos += n
            self._result[:] = [h.hexdigest() if pos == self._entry.size else None, started_ns]
        except BaseException as exc:  # raised by verified(), in the reader's thread
            self._result[:] = [exc]

    @property
    def finished(self) -> bool:
        """Whether the hash is computed (:meth:`verified` does not wait)."""
        return not self._thread.is_alive()

    def verified(self) -> None:
        """Wait for the hash; raise unless the file is the one the manifest names."""
        if self._done:
            return
        self._thread.join()
        if len(self._result) == 1:
            raise self._result[0]
        digest, started_ns = self._result
        if digest is None or not _same_file(self._st, os.fstat(self._fd)):
            raise _changed(self._path)
        if digest != self._entry.sha256:
            raise _hash_mismatch(self._path)
        _remember(self._st, self._entry.sha256, started_ns)
        self._done = True

    def stop(self) -> None:
        """Stop hashing (the reader is done without it) and wait for the thread."""
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def _stream_hashing(root: Path, entry: _FileEntry) -> Iterator[tuple[Any, _Hashing | None]]:
    """A binary file object of one trace file, and the hash of its bytes being computed
    meanwhile (:class:`_Hashing`; ``None``: this process hashed the unchanged file before).
    The reader decodes while the file is hashed and lets nothing out before
    :meth:`_Hashing.verified`; when it is done, the file must still be the one hashed."""
    path = root / entry.rel
    fd, st = _open_member(root, entry.rel)
    f = os.fdopen(fd, "rb", buffering=0)
    with f:
        if st.st_size != entry.size:
            raise _size_mismatch(path, st.st_size, entry.size)
        hashing = None if _known_good(st, entry.sha256) else _Hashing(fd, st, path, entry)
        try:
            yield f, hashing
        finally:
            if hashing is not None:
                hashing.stop()
        if not _same_file(st, os.fstat(fd)):
            raise _changed(path)


def _decode_error(path: Path, exc: BaseException) -> TraceFormatError:
    text = " ".join(str(exc).split())
    if len(text) > 200:
        text = text[:200] + "..."
    return TraceFormatError(
        f"cannot decode {path}: {type(exc).__name__}: {text}",
        hint="the file matches its manifest hash, so the trace was written broken; " + _RECREATE,
    )


def _check_file_schema(path: Path, schema: pa.Schema, name: str, version: int) -> None:
    """The columns of a trace file: exactly those of its table in ``version``, with their types."""
    expected = S.SCHEMAS[name]
    names = S.file_columns(name, version)
    for f in schema:
        if f.name not in names:
            raise TraceFormatError(f"{path}: unknown column {f.name!r}", hint=_RECREATE)
        want = expected.field(f.name).type
        if f.type != want:
            raise TraceFormatError(
                f"{path}: column {f.name!r} has type {f.type}, expected {want}", hint=_RECREATE
            )
    missing = [n for n in names if n not in schema.names]
    if missing:
        raise TraceFormatError(f"{path}: missing columns {missing}", hint=_RECREATE)
    if len(set(schema.names)) != len(schema.names):
        raise TraceFormatError(f"{path}: a column appears twice", hint=_RECREATE)


def upgrade(table: pa.Table, name: str) -> pa.Table:
    """A table of an older schema version with the newer columns added as nulls.

    Columns keep the order of the current schema; a table that has them all is returned as
    it is.
    """
    schema = S.SCHEMAS[name]
    if table.column_names == schema.names:
        return table
    cols = [
        table.column(f.name) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(cols, schema=schema)


def _decode_table(path: Path, data: pa.Buffer, name: str, version: int) -> pa.Table:
    try:
        pf = pq.ParquetFile(pa.BufferReader(data))
        _check_file_schema(path, pf.schema_arrow, name, version)
        table = pf.read()
    except TraceFormatError:
        raise
    except _DECODE_ERRORS as exc:
        raise _decode_error(path, exc) from None
    return upgrade(table.replace_schema_metadata(None), name)


#: Content-addressed memory of checked small tables: (host, sha256 of snapshots, processes,
#: mappings) -> their index. Sound because every read verifies the bytes against the same
#: hashes, so equal keys mean equal tables.
_INDEX: dict[tuple[str, ...], HostIndex] = {}
_INDEX_MAX = 16
_INDEX_LOCK = threading.Lock()


@dataclass(frozen=True)
class Trace:
    """An opened trace directory: its manifest, checked; host tables are loaded on demand.

    Every table read verifies the file's SHA-256 against the manifest before decoding it
    and checks the tables' consistency (:mod:`planner.trace.check`).
    """

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

    @property
    def host_cpu(self) -> str | None:
        """The CPU the capture ran on (``capture.host_cpu``,
        :func:`planner.provenance.cpu_identity`); None where the trace does not say."""
        cpu = (self.manifest.get("capture") or {}).get("host_cpu")
        return cpu if isinstance(cpu, str) else None

    def _known_host(self, host: str) -> str:
        if host not in self.hosts:
            raise UsageProblem(
                f"{self.path} has no host {host!r}", hint=f"hosts are: {', '.join(self.hosts)}"
            )
        return host

    def host_path(self, host: str) -> Path:
        """The directory of one host partition (``UsageProblem`` for an unknown host)."""
        return self.path / host_dir_name(self._known_host(host))

    def _entry(self, host: str, name: str) -> _FileEntry:
        rel = f"{host_dir_name(self._known_host(host))}/{name}.parquet"
        info = self.manifest["files"][rel]
        return _FileEntry(rel=rel, size=int(info["bytes"]), sha256=str(info["sha256"]))

    def _where(self, host: str, name: str) -> str:
        return str(self.path / host_dir_name(host) / f"{name}.parquet")

    def has_table(self, name: str) -> bool:
        """Whether this trace's schema version has table ``name`` (v1: no cgroups, samples)."""
        return name in S.TABLES_BY_VERSION[self.schema_version]

    def _read(self, host: str, name: str) -> pa.Table:
        if not self.has_table(name):
            self._known_host(host)
            return S.SCHEMAS[name].empty_table()
        entry = self._entry(host, name)
        path = self.path / entry.rel
        table = _decode_table(path, _read_verified(self.path, entry), name, self.schema_version)
        check_required(str(path), table, name)
        return table

    def host_index(self, host: str) -> HostIndex:
        """The checked small tables of ``host`` (read and checked once per content)."""
        small = [n for n in S.TABLES if n != "pages"]
        key = (
            self._known_host(host),
            *(self._entry(host, n).sha256 if self.has_table(n) else "" for n in small),
        )
        with _INDEX_LOCK:
            if key in _INDEX:
                return _INDEX[key]
        tables = {n: self._read(host, n) for n in small}
        index = check_small_tables(host, tables, {n: self._where(host, n) for n in tables})
        with _INDEX_LOCK:
            if len(_INDEX) >= _INDEX_MAX:
                _INDEX.clear()
            _INDEX[key] = index
        return index

    def only_host(self, host: str | None = None) -> str:
        """``host`` if the trace has it; for ``None``, the trace's only host (else a
        ``UsageProblem`` naming the hosts)."""
        if host is None:
            if len(self.hosts) != 1:
                raise UsageProblem(
                    f"{self.path} holds {len(self.hosts)} hosts ({', '.join(self.hosts)})",
                    hint="name one with --host",
                )
            return self.hosts[0]
        return self._known_host(host)

    def load_host(
        self,
        host: str | None = None,
        *,
        columns: Mapping[str, Sequence[str]] | None = None,
        pages: bool = True,
    ) -> HostTrace:
        """Load every table of ``host`` (the only host when ``None``), verified and checked.

        With ``pages=False`` the pages table is left empty (not read): for a reader that
        streams the pages afterwards (:meth:`iter_snapshot_pages`).
        """
        host = self.only_host(host)
        index = self.host_index(host)
        names = S.TABLES if pages else [n for n in S.TABLES if n != "pages"]
        tables = {name: self._read(host, name) for name in names}
        if pages:
            PagesCheck(index, self._where(host, "pages")).feed(tables["pages"])
        else:
            # (Schema.empty_table imports pandas, 0.4 s; from_batches does not)
            tables["pages"] = pa.Table.from_batches([], schema=S.PAGES_SCHEMA)
        if columns:
            for name, cols in columns.items():
                tables[name] = _select(tables[name], name, cols, self._where(host, name))
        return HostTrace(host=host, trace_hash=self.trace_hash, path=self.host_path(host), **tables)

    def read_table(self, host: str, name: str, columns: Sequence[str] | None = None) -> pa.Table:
        """One table of one host (verified and checked), e.g. ``processes``."""
        if name not in S.SCHEMAS:
            raise TraceFormatError(f"a trace has no table {name!r}")
        index = self.host_index(host)
        table = self._read(host, name)
        if name == "pages":
            PagesCheck(index, self._where(host, name)).feed(table)
        return _select(table, name, columns, self._where(host, name)) if columns else table

    def hz(self, host: str) -> int | None:
        """The CONFIG_HZ recorded for ``host`` (``None``: none), reading only its snapshots.

        The one way HZ is read from a trace (:attr:`HostTrace.hz` for a loaded host).
        """
        return recorded_hz(self.read_table(host, "snapshots", ["hz"]))

    def pages_rows(self, host: str) -> int:
        """Rows of ``pages.parquet`` of ``host`` (from its verified footer)."""
        entry = self._entry(host, "pages")
        path = self.path / entry.rel
        with _stream_verified(self.path, entry) as f:
            try:
                return int(streamed_parquet(f).metadata.num_rows)
            except _DECODE_ERRORS as exc:
                raise _decode_error(path, exc) from None

    def iter_pages(
        self, host: str, columns: Sequence[str] | None = None, *, batch_rows: int = 1 << 20
    ) -> Iterator[pa.Table]:
        """Stream ``pages.parquet`` of ``host`` in batches (verified, checked batch by batch).

        Memory holds one batch whatever the trace size (while the file is being hashed,
        up to :data:`_HASH_AHEAD_BATCHES`: they are decoded and checked meanwhile, and
        come out once the hash matched). ``columns`` selects the columns returned. Every
        column is read (the check needs them) but the per-page change counts when the
        file's footer proves them all null (:func:`_all_null`; the footer is part of the
        hashed bytes), as in every trace captured without sampling: those pass the check
        whatever it is, so they are neither decoded nor checked, and those ``columns``
        asks for come as nulls (decoding them was ~30 % of reading a 4 M-page trace's
        pages for a replay, docs/engine.md "End to end").
        """
        cols = list(columns) if columns else list(S.PAGES_SCHEMA.names)
        where = self._where(host, "pages")
        unknown = [c for c in cols if c not in S.PAGES_SCHEMA.names]
        if unknown:
            raise TraceFormatError(f"{where}: no column {unknown[0]!r} in the pages table")
        index = self.host_index(host)
        entry = self._entry(host, "pages")
        path = self.path / entry.rel
        check = PagesCheck(index, where)
        with _stream_hashing(self.path, entry) as (f, hashing):
            pending: list[pa.Table] = []  # decoded and checked, the hash not known yet
            for table in self._decoded_pages(f, path, cols, batch_rows, check, hashing):
                if hashing is None:
                    yield table
                    continue
                pending.append(table)
                if hashing.finished or len(pending) >= _HASH_AHEAD_BATCHES:
                    hashing.verified()
                    hashing = None
                    yield from _take_each(pending)
            if hashing is not None:
                hashing.verified()
            yield from _take_each(pending)

    def _decoded_pages(
        self,
        f: Any,
        path: Path,
        cols: list[str],
        batch_rows: int,
        check: PagesCheck,
        hashing: _Hashing | None,
    ) -> Iterator[pa.Table]:
        """The batches of :meth:`iter_pages`, decoded and checked. While ``hashing`` has not
        verified the file, any failure is first checked against the hash: the bytes of a
        file that does not match its manifest are reported as such, whatever they decode
        to."""
        file_cols = list(S.file_columns("pages", self.schema_version))
        try:
            try:
                pf = streamed_parquet(f)
                _check_file_schema(path, pf.schema_arrow, "pages", self.schema_version)
                # change counts the file lacks (schema v1) or holds only as nulls (a
                # trace captured without sampling): neither decoded nor checked; those
                # the caller asks for are made as nulls
                skip = _all_null(pf.metadata, [c for c in PAGE_CHANGE_COLUMNS if c in file_cols])
                made = [S.PAGES_SCHEMA.field(c) for c in cols if c in PAGE_CHANGE_COLUMNS]
                batches = pf.iter_batches(
                    batch_size=batch_rows,
                    use_threads=False,
                    columns=[c for c in file_cols if not (skip and c in PAGE_CHANGE_COLUMNS)],
                )
            except TraceFormatError:
                raise
            except _DECODE_ERRORS as exc:
                raise _decode_error(path, exc) from None
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except _DECODE_ERRORS as exc:
                    raise _decode_error(path, exc) from None
                table = pa.Table.from_batches([batch])
                if not skip:
                    table = upgrade(table, "pages")
                check.feed(table)
                if skip:
                    # (the widest first: one zeroed buffer then serves every column)
                    for f in sorted(made, key=lambda f: -f.type.bit_width):
                        table = table.append_column(f, _nulls(table.num_rows, f.type))
                yield table.select(cols)
        except Exception:
            if hashing is not None:
                hashing.verified()  # a file that does not match: that is the error
            raise

    def iter_snapshot_pages(
        self, host: str, columns: Sequence[str] | None = None, *, batch_rows: int = 1 << 20
    ) -> Iterator[tuple[int, pa.Table]]:
        """Yield ``(snapshot_id, pages of that snapshot)`` in order, streaming ``pages.parquet``.

        Memory holds one snapshot's pages (plus one batch), whatever the trace size.
        Snapshots without pages are not yielded. ``columns`` always gains ``snapshot_id``.
        """
        parts: list[pa.Table] = []
        current: int | None = None
        for sid, part in self.iter_snapshot_batches(host, columns, batch_rows=batch_rows):
            if current is not None and sid != current:
                yield current, _take_all(parts)  # not kept here while the caller works
            current = sid
            parts.append(part)
        if current is not None:
            yield current, _take_all(parts)

    def iter_snapshot_batches(
        self, host: str, columns: Sequence[str] | None = None, *, batch_rows: int = 1 << 20
    ) -> Iterator[tuple[int, pa.Table]]:
        """Yield ``(snapshot_id, rows)`` for each batch of ``pages.parquet``, cut where the
        snapshot changes: a snapshot's rows come as one or more consecutive parts, in order.

        Memory holds one batch (:meth:`iter_pages`): a caller that copies out what it needs
        part by part never holds a snapshot's Arrow table whole. ``columns`` always gains
        ``snapshot_id``.
        """
        cols = list(columns) if columns else list(S.PAGES_SCHEMA.names)
        if "snapshot_id" not in cols:
            cols.insert(0, "snapshot_id")
        for table in self.iter_pages(host, cols, batch_rows=batch_rows):
            sid = as_numpy(table.column("snapshot_id"), np.int64)
            cuts = [0, *(np.flatnonzero(sid[1:] != sid[:-1]) + 1).tolist(), len(sid)]
            for a, b in itertools.pairwise(cuts):
                if a < b:
                    yield int(sid[a]), table.slice(a, b - a)

    def verify(self) -> None:
        """Hash every file of the trace and compare with the manifest (no decoding)."""
        for rel, info in sorted(self.manifest["files"].items()):
            entry = _FileEntry(rel=rel, size=int(info["bytes"]), sha256=str(info["sha256"]))
            with _stream_verified(self.path, entry):
                pass


def _all_null(meta: pq.FileMetaData, names: Sequence[str]) -> bool:
    """Whether a Parquet footer proves the (top-level) columns ``names`` null in every row
    of every row group: the statistics of each column chunk count a null per row."""
    where = {meta.schema.column(i).path: i for i in range(meta.num_columns)}
    for k in range(meta.num_row_groups):
        group = meta.row_group(k)
        for name in names:
            i = where.get(name)
            if i is None:
                return False
            stats: Any = group.column(i).statistics  # (the stubs misspell has_null_count)
            if stats is None or not stats.has_null_count or stats.null_count != group.num_rows:
                return False
    return True


_ZEROS: list[pa.Buffer] = []  # the zeroed buffer every column of _nulls shares


def _nulls(n: int, type_: pa.DataType) -> pa.Array[Any]:
    """``n`` nulls of the fixed-width ``type_``, their validity bitmap and values one zeroed
    buffer shared by every such column of the process (Arrow's arrays are immutable).
    ``pa.nulls`` allocates and zeroes a values buffer per call: the six change counts of a
    trace captured without sampling took 12 B per row, 192 MB of a 16 M-page snapshot."""
    size = max((n * type_.bit_width + 7) // 8, 1)
    zeros = _ZEROS[0] if _ZEROS else None
    if zeros is None or zeros.size < size:  # (another thread may swap it meanwhile: each
        zeros = pa.py_buffer(bytes(size))  # call uses the buffer it checked)
        _ZEROS[:] = [zeros]
    return pa.Array.from_buffers(type_, n, [zeros, zeros], null_count=n)


def _take_each(parts: list[pa.Table]) -> Iterator[pa.Table]:
    """The tables of ``parts`` in order, each dropped from ``parts`` as it is taken."""
    parts.reverse()
    while parts:
        yield parts.pop()


def _take_all(parts: list[pa.Table]) -> pa.Table:
    """The tables of ``parts`` as one, ``parts`` emptied (so only the result holds them)."""
    out = pa.concat_tables(parts)
    parts.clear()
    return out


def _select(table: pa.Table, name: str, columns: Sequence[str], where: str) -> pa.Table:
    unknown = [c for c in columns if c not in S.SCHEMAS[name].names]
    if unknown:
        raise TraceFormatError(f"{where}: no column {unknown[0]!r} in the {name} table")
    return table.select(list(columns))


# ----------------------------------------------------------------------------- manifest


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} appears twice")
        out[k] = v
    return out


def _read_manifest(p: Path) -> Any:
    mpath = p / S.MANIFEST_NAME
    dfd = _open_dir(p)
    try:
        try:
            st = os.stat(S.MANIFEST_NAME, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            raise TraceFormatError(
                f"{p} is not a ksm-planner trace (no {S.MANIFEST_NAME})",
                hint="create one with 'ksm-planner capture' or 'ksm-planner ingest'",
            ) from None
        if not stat.S_ISREG(st.st_mode):
            raise TraceFormatError(
                f"{mpath} is {file_kind(st.st_mode)}, not a regular file", hint=_RECREATE
            )
        if st.st_size > _MANIFEST_MAX_BYTES:
            raise TraceFormatError(
                f"{mpath} has {st.st_size} bytes, more than a manifest ever needs "
                f"({_MANIFEST_MAX_BYTES >> 20} MiB)",
                hint=_RECREATE,
            )
        try:
            fd = os.open(
                S.MANIFEST_NAME,
                os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                dir_fd=dfd,
            )
        except OSError as exc:
            raise TraceFormatError(f"cannot open {mpath}: {exc.strerror}") from None
    finally:
        os.close(dfd)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise TraceFormatError(f"{mpath} is not a regular file", hint=_RECREATE)
        raw = f.read(_MANIFEST_MAX_BYTES + 1)
    try:
        return json.loads(
            raw.decode("utf-8"), parse_constant=_reject_constant, object_pairs_hook=_unique_keys
        )
    except UnicodeDecodeError:
        raise TraceFormatError(f"{mpath} is not UTF-8 text", hint=_RECREATE) from None
    except RecursionError:
        raise TraceFormatError(f"{mpath} is nested too deeply to be a manifest") from None
    except ValueError as exc:
        raise TraceFormatError(f"{mpath} is not valid JSON: {exc}", hint=_RECREATE) from None


def _is_int(v: object) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def check_manifest(manifest: Any, mpath: Path) -> tuple[tuple[str, ...], dict[str, _FileEntry]]:
    """Check a parsed manifest; return its hosts and its file entries.

    Nothing here touches the filesystem: a file name the manifest lists is checked against
    the only names a trace has (``host=<name>/<table>.parquet`` of its hosts) first.
    """

    def bad(what: str) -> TraceFormatError:
        return TraceFormatError(f"{mpath}: {what}", hint=_RECREATE)

    if not isinstance(manifest, dict) or manifest.get("format") != S.FORMAT_NAME:
        raise TraceFormatError(f"{mpath} is not a ksm-planner trace manifest", hint=_RECREATE)
    version = manifest.get("schema_version")
    if not _is_int(version) or version < 1:
        raise bad(f"invalid schema_version {version!r}")
    if version > S.SCHEMA_VERSION:
        raise TraceFormatError(
            f"{mpath.parent} uses trace schema version {version}, "
            f"newer than this ksm-planner supports ({S.SCHEMA_VERSION})",
            hint="upgrade ksm-planner",
        )
    for key in ("source", "created_by", "created_at"):
        if key in manifest and manifest[key] is not None and not isinstance(manifest[key], str):
            raise bad(f"{key} must be a string, not {type(manifest[key]).__name__}")
    for key in ("capture", "ingest"):
        if key in manifest and manifest[key] is not None and not isinstance(manifest[key], dict):
            raise bad(f"{key} must be an object, not {type(manifest[key]).__name__}")
    hosts = manifest.get("hosts")
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
        raise bad(f"hosts must be a list of host names, not {type(hosts).__name__}")
    if not hosts:
        raise bad("the host list is empty (a trace holds at least one host)")
    for h in hosts:
        if not valid_host_name(h):
            raise bad(f"invalid host name {short(h)}")
    if len(set(hosts)) != len(hosts):
        raise bad("a host appears twice in the host list")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise bad(f"files must be an object, not {type(files).__name__}")
    tables = S.TABLES_BY_VERSION[version]
    expected = {f"{S.HOST_DIR_PREFIX}{h}/{t}.parquet" for h in hosts for t in tables}
    for rel in sorted(files):
        if rel not in expected:
            raise bad(
                f"lists {short(rel)}, which is not a file of this trace (a version {version} "
                f"trace holds exactly host=<name>/{{{','.join(tables)}}}.parquet for its hosts)"
            )
    missing = sorted(expected - set(files))
    if missing:
        raise bad(f"does not list {missing[0]} (the trace is incomplete)")
    entries: dict[str, _FileEntry] = {}
    for rel in sorted(files):
        info = files[rel]
        if not isinstance(info, dict):
            raise bad(f"files[{rel!r}] must be an object")
        size, digest = info.get("bytes"), info.get("sha256")
        if not _is_int(size) or size < 0:
            raise bad(f"files[{rel!r}].bytes must be a non-negative integer, not {size!r}")
        if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
            raise bad(f"files[{rel!r}].sha256 must be 64 lowercase hex digits")
        entries[rel] = _FileEntry(rel=rel, size=size, sha256=digest)
    th = manifest.get("trace_hash")
    if th is None:
        raise bad("no trace_hash (every trace records the hash of its files)")
    if not isinstance(th, str) or not _TRACE_HASH.fullmatch(th):
        raise bad("trace_hash must be 'sha256:' and 64 lowercase hex digits")
    if th != _trace_hash(files):
        raise TraceFormatError(
            f"{mpath}: trace_hash {th[:23]}... does not match the hashes of the files it "
            "lists (the manifest was edited or is corrupt)",
            hint=_RECREATE,
        )
    return tuple(hosts), entries


_T = TypeVar("_T")


def read_ahead(items: Iterator[_T]) -> Generator[_T]:
    """``items``, produced one ahead by a thread: with :meth:`Trace.iter_snapshot_pages`,
    the next snapshot is read, hashed, decoded and checked (hashlib, Arrow and numpy
    release the GIL) while the caller works on this one. Memory holds one more item (the
    next is produced once this one is taken). An exception of ``items`` is raised here;
    closing this generator stops the thread and closes ``items``."""
    slot: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=1)
    stop = threading.Event()
    # one permit per item the consumer took: the producer makes the next item only then.
    # A semaphore counts, so a take between the producer's checks is never lost (an event
    # cleared after such a take left the producer spinning until the next take).
    taken = threading.Semaphore(0)
    end = object()

    def put(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                slot.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
                del item
                while not taken.acquire(timeout=0.05):  # one ahead, not two
                    if stop.is_set():
                        return
            put((True, end))
        except BaseException as exc:  # handed to the consumer, raised there
            put((False, exc))

    worker = threading.Thread(target=produce, name="ksm-planner-read-ahead", daemon=True)
    worker.start()
    try:
        while True:
            entry = [slot.get()]
            taken.release()
            ok, item = entry[0]
            if not ok:
                raise item
            if item is end:
                return
            del item  # the caller holds the item alone: its ``del`` frees it
            yield entry.pop()[1]
    finally:
        stop.set()
        while worker.is_alive():
            with contextlib.suppress(queue.Empty):
                slot.get(timeout=0.05)
        worker.join()
        close = getattr(items, "close", None)
        if close is not None:
            close()  # a generator: its cleanup (the open file) runs now


def use_system_allocator() -> None:
    """Let Arrow allocate from the C library's ``malloc`` in this process, unless the
    environment variable ``ARROW_DEFAULT_MEMORY_POOL`` names an allocator.

    The pyarrow wheels default to mimalloc, which hands out memory on transparent huge
    pages and keeps what a batch freed away from the next batch: decoding a trace
    snapshot by snapshot then faults in (and zeroes) far more memory than it holds.
    Measured on the 4 M-page replay benchmark: 1.1-2.5 s more CPU than with the system
    allocator (docs/engine.md, "Speed and memory"). The command line calls this once,
    before any table is read; a program that embeds the library chooses for itself.
    """
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return
    pa.set_memory_pool(pa.system_memory_pool())


def open_trace(path: str | os.PathLike[str]) -> Trace:
    """Open a trace directory: read and check its manifest and the files it lists.

    Cheap: the manifest is checked (see :func:`check_manifest`) and every file it lists
    must exist as a regular file (no link) of the recorded size. File contents are hashed
    when a table is read. Raises :class:`TraceFormatError` with one line naming the file
    and the problem.
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise TraceFormatError(
            f"{p} does not exist", hint="give the path of a trace directory"
        ) from None
    except OSError as exc:
        raise TraceFormatError(f"cannot open {p}: {exc.strerror}") from None
    if stat.S_ISREG(st.st_mode):
        raise TraceFormatError(
            f"{p} is a file, not a ksm-planner trace directory",
            hint="convert interchange CSV/Parquet with 'ksm-planner ingest SRC --out DIR'",
        )
    if not stat.S_ISDIR(st.st_mode):
        raise TraceFormatError(
            f"{p} is {file_kind(st.st_mode)}, not a ksm-planner trace directory",
            hint="give the path of a trace directory",
        )
    manifest = _read_manifest(p)
    hosts, entries = check_manifest(manifest, p / S.MANIFEST_NAME)
    for entry in entries.values():
        fd, fst = _open_member(p, entry.rel)
        os.close(fd)
        if fst.st_size != entry.size:
            raise _size_mismatch(p / entry.rel, fst.st_size, entry.size)
    return Trace(path=p, manifest=manifest, hosts=hosts)


def recorded_hz(snapshots: pa.Table) -> int | None:
    """The first HZ a snapshots table records (``None`` when every row leaves it empty)."""
    if "hz" not in snapshots.column_names:
        return None
    hz = next((v for v in snapshots.column("hz").to_pylist() if v), None)
    return int(hz) if hz is not None else None
