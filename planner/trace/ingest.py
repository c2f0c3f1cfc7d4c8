"""Ingest other people's page traces and older versions of our own format.

Two kinds of input become a trace directory (format v2, see :mod:`planner.trace.schema`):

* the **interchange format** (its columns, one definition:
  :data:`planner.trace.schema.INTERCHANGE_COLUMNS`): a flat CSV or Parquet table, one row
  per present eligible page per snapshot, with the header
  ``time_s,pid,ppid,comm,vma_start,vma_kind,page_addr,content_hash,frame`` (``ppid``,
  ``comm``, ``vma_start``, ``vma_kind`` and ``frame`` optional), an optional ``is_zero``
  (0/1), an optional ``host`` column and the optional per-page change counts of
  :data:`~planner.trace.schema.INTERCHANGE_COUNTS` (schema v2: over the interval after the
  row's snapshot). ``ksm-planner export`` adds the extension columns of
  :data:`EXTENSION_COLUMNS` so that a trace survives the round trip;
* **schema version 0**: the capture prototype's flat Parquet (docs/capture.md §7),
  recognised by its columns. Its PFNs become opaque frame ids (never written), its
  ``kpageflags``, ``kpagecount`` and ``flags`` bits become :class:`~planner.trace.schema.PageFlag`
  bits, and its pages mapped to the shared zero page are counted per process
  (``processes.zero_pfn_pages``) instead of being recorded.

Input is read as a stream of record batches (``pyarrow.csv.open_csv`` with explicit column
types, ``ParquetFile.iter_batches``). Rows must come in time order; one snapshot per host is
buffered, sorted by ``(pid, page_addr)`` and handed to the
:class:`~planner.trace.flat.FlatConverter` and the trace writer in chunks. A snapshot larger
than ``sort_buffer_rows`` is sorted in runs spilled to disk (Arrow IPC streams in a private
directory next to the output) and merged, so memory stays bounded whatever the input size.

Every problem in the input raises :class:`~planner.errors.TraceFormatError` with one line
naming the file, the 1-based data row and the column; nothing is left at the output path.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import json
import os
import shutil
import stat
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NoReturn

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.ipc as ipc

from planner._input import file_kind, sniff
from planner._progress import NULL_PROGRESS
from planner.errors import TraceFormatError, UsageProblem
from planner.provenance import tool_version
from planner.trace import schema as S
from planner.trace.check import short
from planner.trace.flat import FlatConverter
from planner.trace.io import TraceWriter, streamed_parquet, valid_host_name

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

    from planner._progress import Progress
    from planner.trace.io import HostWriter

SourceFormat = Literal["interchange-csv", "interchange-parquet", "v0-parquet"]

_DICT_STR: Final = pa.dictionary(pa.int32(), pa.string())
_INT32_MAX: Final = 2**31 - 1
_PAGE: Final = S.PAGE_SIZE_BYTES

#: Extension columns of the interchange format (:data:`planner.trace.schema.EXTENSION_COLUMNS`),
#: written by ``ksm-planner export`` so that a trace survives export + ingest.
EXTENSION_COLUMNS: Final = S.EXTENSION_COLUMNS
#: Every column the interchange reader knows, with the type it is read as
#: (:data:`planner.trace.schema.INTERCHANGE_COLUMNS`). Other columns are ignored (and reported).
INTERCHANGE_TYPES: Final = S.INTERCHANGE_READ_TYPES

#: Columns of the capture prototype's flat Parquet (schema version 0), docs/capture.md §7.
V0_COLUMNS: Final = (
    "snapshot_id",
    "snapshot_ts",
    "proc_ts",
    "host",
    "setup",
    "pid",
    "ppid",
    "proc_start",
    "comm",
    "cgroup",
    "vma_start",
    "vma_end",
    "vma_kind",
    "perms",
    "vma_path",
    "page_addr",
    "content_hash",
    "is_zero",
    "pfn",
    "kpageflags",
    "kpagecount",
    "flags",
)
V0_REQUIRED: Final = ("snapshot_id", "snapshot_ts", "pid", "page_addr", "content_hash", "pfn")
_V0_SIGNATURE: Final = frozenset({"snapshot_id", "snapshot_ts", "pfn"})
_V0_TYPES: Final[dict[str, pa.DataType]] = {
    "snapshot_id": pa.int64(),
    "host": _DICT_STR,
    "setup": _DICT_STR,
    "pid": pa.int64(),
    "ppid": pa.int64(),
    "proc_start": pa.uint64(),
    "comm": _DICT_STR,
    "cgroup": _DICT_STR,
    "vma_start": pa.uint64(),
    "vma_end": pa.uint64(),
    "vma_kind": _DICT_STR,
    "perms": _DICT_STR,
    "vma_path": _DICT_STR,
    "page_addr": pa.uint64(),
    "content_hash": pa.uint64(),
    "is_zero": pa.bool_(),
    "pfn": pa.uint64(),
    "kpageflags": pa.uint64(),
    "kpagecount": pa.int64(),
    "flags": pa.int64(),
}

# /proc/kpageflags bits (include/uapi/linux/kernel-page-flags.h)
KPF_KSM: Final = 21
KPF_THP: Final = 22
KPF_ZERO_PAGE: Final = 24

#: Names of the prototype's ``flags`` bits (legend in the file metadata) -> our flags.
#: ``None``: the page maps the shared zero page (not a candidate; counted, not recorded).
_V0_FLAG_NAMES: Final[dict[str, int | None]] = {
    "zero_content": int(S.PageFlag.ZERO),
    "zero": int(S.PageFlag.ZERO),
    "is_zero": int(S.PageFlag.ZERO),
    "thp": int(S.PageFlag.THP),
    "ksm": int(S.PageFlag.KSM),
    "racy": int(S.PageFlag.RACY),
    "swapped": int(S.PageFlag.SWAPPED),
    "read_error": int(S.PageFlag.READ_ERROR),
    "exclusive": int(S.PageFlag.EXCLUSIVE),
    "soft_dirty": int(S.PageFlag.SOFT_DIRTY),
    "zero_pfn": None,
}

_REQUIRED_HINT: Final = (
    "an interchange trace has the header "
    "time_s,pid,ppid,comm,vma_start,vma_kind,page_addr,content_hash,frame "
    "where ppid, comm, vma_start, vma_kind and frame are optional"
)
_DESCRIBE: Final = {
    "content_hash": "a decimal unsigned 64-bit integer",
    "time_s": "a number of seconds",
    "is_zero": "0 or 1",
}
_CSV_BLOCK_BYTES: Final = 4 << 20
#: What pyarrow raises on damaged input (a corrupt Parquet footer can even give a
#: UnicodeDecodeError for a column name): turned into one line naming the file.
_READ_ERRORS: Final = (OSError, ValueError, TypeError, KeyError, IndexError, pa.ArrowException)
_PARQUET_BATCH_ROWS: Final = 1 << 16
_SPILL_BATCH_ROWS: Final = 1 << 16
DEFAULT_SORT_BUFFER_ROWS: Final = 4 << 20
DEFAULT_CHUNK_ROWS: Final = 1 << 19


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class HostIngestStats:
    """What one host of the ingested trace holds."""

    host: str
    snapshots: int
    pages: int
    processes: int
    zero_pfn_pages: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class IngestResult:
    """The outcome of :func:`ingest`."""

    source: str
    source_format: SourceFormat
    out: str
    rows: int
    hosts: tuple[HostIngestStats, ...]
    trace_hash: str
    elapsed_s: float
    spilled_runs: int
    zero_hash: int
    warnings: tuple[str, ...] = ()
    ignored_columns: tuple[str, ...] = ()
    tool_version: str = field(default_factory=tool_version)

    @property
    def rows_per_s(self) -> float:
        """Input rows per second of wall time."""
        return self.rows / self.elapsed_s if self.elapsed_s > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (with provenance)."""
        return {
            "source": self.source,
            "source_format": self.source_format,
            "out": self.out,
            "rows": self.rows,
            "hosts": [h.to_dict() for h in self.hosts],
            "snapshots": sum(h.snapshots for h in self.hosts),
            "pages": sum(h.pages for h in self.hosts),
            "elapsed_s": self.elapsed_s,
            "rows_per_s": self.rows_per_s,
            "spilled_runs": self.spilled_runs,
            "warnings": list(self.warnings),
            "ignored_columns": list(self.ignored_columns),
            "provenance": {
                "tool_version": self.tool_version,
                "trace_hash": self.trace_hash,
                "zero_hash": str(self.zero_hash),
            },
        }


# ----------------------------------------------------------------------------- helpers


def _first(mask: np.ndarray[Any, np.dtype[np.bool_]]) -> int | None:
    idx = np.flatnonzero(mask)
    return int(idx[0]) if len(idx) else None


def _null_mask(col: Any) -> np.ndarray[Any, np.dtype[np.bool_]]:
    return np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)


def _np(col: Any, dtype: Any, fill: Any = 0) -> np.ndarray[Any, Any]:
    """A column as a numpy array of ``dtype`` (nulls replaced by ``fill``)."""
    if col.null_count:
        col = col.fill_null(fill)
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=dtype)


def _equal_mask(col: Any, value: Any) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """``col == value`` as a numpy mask (nulls are not equal)."""
    eq: Any = pc.equal(col, pa.scalar(value, col.type))
    return _np(eq, bool, False)


def _describe(column: str, target: pa.DataType) -> str:
    if column in _DESCRIBE:
        return _DESCRIBE[column]
    if pa.types.is_unsigned_integer(target):
        return "a non-negative integer"
    if pa.types.is_integer(target):
        return "an integer"
    if pa.types.is_floating(target):
        return "a number"
    if pa.types.is_boolean(target):
        return "0 or 1"
    return f"a {target}"


def _try_cast(arr: Any, target: pa.DataType) -> Any:
    """Cast ``arr`` to ``target`` the way the CSV reader would (strings are trimmed)."""
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        arr = pc.utf8_trim_whitespace(arr)
    if pa.types.is_boolean(target) and pa.types.is_integer(arr.type):
        ok = np.isin(_np(arr, np.int64), (0, 1))
        if not ok.all():
            raise pa.ArrowInvalid("not 0 or 1")
    return arr.cast(target)


def _first_cast_failure(arr: Any, target: pa.DataType) -> int:
    """Index of the first value of ``arr`` that does not cast to ``target`` (bisection)."""
    lo, hi = 0, len(arr)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            _try_cast(arr.slice(lo, mid - lo), target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            hi = mid
        else:
            lo = mid
    return lo


def _fmt_s(value: Any) -> str:
    """A time or id for messages: exact to the millisecond, no exponent."""
    return f"{float(value):.3f}".rstrip("0").rstrip(".")


def _host_default(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".bz2", ".zst", ".lz4"):
        name = name.removesuffix(suffix)
    for suffix in (".csv", ".parquet", ".pq"):
        name = name.removesuffix(suffix)
    return name or "host"


def _valid_host(name: str) -> bool:
    return valid_host_name(name)


def _v0_flag_map(metadata: Mapping[bytes, bytes] | None) -> dict[int, int | None] | None:
    """The prototype's ``flags`` legend (file metadata) as ``{source mask: our bit}``.

    The legend is a JSON object or list under a metadata key containing ``flag``: a list of
    names by bit index, ``{name: bit index}``, ``{name: mask}`` or ``{bit index: name}``.
    Returns ``None`` when there is no legend.
    """
    for key, raw in (metadata or {}).items():
        if b"flag" not in key.lower():
            continue
        try:
            legend = json.loads(raw)
        except ValueError:
            continue
        pairs: list[tuple[str, int]] = []
        if isinstance(legend, list):
            pairs = [(str(name), i) for i, name in enumerate(legend)]
        elif isinstance(legend, dict) and legend:
            if all(isinstance(v, int) for v in legend.values()):
                vals = [int(v) for v in legend.values()]
                masks = 0 not in vals and all(v & (v - 1) == 0 for v in vals) and max(vals) > 2
                pairs = [
                    (str(k), (int(v).bit_length() - 1) if masks else int(v))
                    for k, v in legend.items()
                ]
            elif all(str(k).isdigit() for k in legend):
                pairs = [(str(v), int(k)) for k, v in legend.items()]
        if pairs:
            out: dict[int, int | None] = {}
            for name, bit in pairs:
                if name.lower() in _V0_FLAG_NAMES and 0 <= bit < 63:
                    out[1 << bit] = _V0_FLAG_NAMES[name.lower()]
            return out
    return None


# ----------------------------------------------------------------------------- sources

#: Longest value accepted in one field (and, so that the CSV reader can hold it in one
#: block, the longest row): interchange values are numbers and short names.
MAX_FIELD_BYTES: Final = 4 << 20
_HEAD_BYTES: Final = 1 << 16

Codec = Literal["bz2", "gzip", "lz4", "zstd"]
_CODECS: Final[dict[str, Codec]] = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".lz4": "lz4"}
_CODEC_NAMES: Final = {
    ".gz": "gzip-compressed data",
    ".bz2": "bzip2-compressed data",
    ".zst": "zstd-compressed data",
    ".lz4": "lz4-compressed data",
}


class _Input:
    """The input file, opened once: a regular file (checked on the open descriptor)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise TraceFormatError(
                f"{path} does not exist", hint="give the path of a CSV or Parquet file"
            ) from None
        except OSError as exc:
            raise TraceFormatError(f"cannot read {path}: {exc.strerror}") from None
        if stat.S_ISDIR(st.st_mode):
            raise TraceFormatError(
                f"{path} is a directory, not an interchange file",
                hint="give one CSV or Parquet file (a trace directory needs no ingest)",
            )
        self._check_regular(st.st_mode)
        try:  # O_NONBLOCK: a FIFO swapped in since the stat must not block the open
            self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise TraceFormatError(f"cannot open {path}: {exc.strerror}") from None
        st = os.fstat(self.fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(self.fd)
            self._check_regular(st.st_mode)
        os.set_blocking(self.fd, True)
        self.size = st.st_size
        self.codec: Codec | None = _CODECS.get(path.suffix.lower())

    def _check_regular(self, mode: int) -> None:
        if not stat.S_ISREG(mode):
            raise TraceFormatError(
                f"{self.path} is {file_kind(mode)}, not a regular file",
                hint="ingest reads a file; save the data to a file first",
            )

    def raw(self) -> pa.NativeFile:
        """The file's bytes from the start, through a new handle on the file opened here.

        Every pass over the input (header sniffing, the last-row check, the batches, the
        diagnosis of an error) gets its own handle and offset. On Linux the handle comes
        from ``/proc/self/fd``, so the path is never resolved again (it could have been
        replaced by a FIFO meanwhile); elsewhere the path is opened if it still names the
        same file.
        """
        try:
            return pa.OSFile(f"/proc/self/fd/{self.fd}", "rb")
        except (OSError, pa.ArrowException):
            pass
        try:
            st, fst = os.stat(self.path), os.fstat(self.fd)
            same = (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)
            if same and stat.S_ISREG(st.st_mode):
                return pa.OSFile(str(self.path), "rb")
        except (OSError, pa.ArrowException) as exc:
            raise TraceFormatError(f"cannot read {self.path}: {exc}") from None
        raise TraceFormatError(
            f"{self.path} was replaced while it was being read", hint="run the command again"
        )

    def stream(self) -> Any:
        """The file's content (decompressed when its suffix names a codec), from the start."""
        raw = self.raw()
        return pa.CompressedInputStream(raw, self.codec) if self.codec else raw

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


@dataclass
class _Source:
    """An input file: its format, its header and a reader of typed record batches."""

    path: Path
    kind: Literal["csv", "parquet"]
    fmt: SourceFormat
    header: list[str]
    columns: list[str]
    types: dict[str, pa.DataType]
    inp: _Input
    total_rows: int | None = None
    metadata: dict[bytes, bytes] | None = None

    @property
    def name(self) -> str:
        return str(self.path)

    def fail(
        self, row: int | None, column: str | None, what: str, hint: str | None = None
    ) -> NoReturn:
        where = [self.name]
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column}")
        raise TraceFormatError(": ".join([", ".join(where), what]), hint=hint)

    def close(self) -> None:
        self.inp.close()

    # -- CSV ----------------------------------------------------------------------------

    def _csv_reader(
        self, types: Mapping[str, pa.DataType], invalid: list[Any], *, threads: bool
    ) -> Any:
        def on_invalid(row: Any) -> Literal["skip", "error"]:
            invalid.append(row)
            return "error"

        return pacsv.open_csv(
            self.inp.stream(),
            read_options=pacsv.ReadOptions(use_threads=threads, block_size=_CSV_BLOCK_BYTES),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types=dict(types),
                include_columns=list(types),
                # only an empty field is "no value": 'nan', 'NA' or 'null' are values (and
                # errors where a number is expected), not silently missing
                null_values=[""],
                strings_can_be_null=True,
                true_values=["1", "true", "True", "TRUE"],
                false_values=["0", "false", "False", "FALSE"],
            ),
        )

    def _csv_parse_error(self, row: Any) -> NoReturn:
        line = row.number
        got, want = row.actual_columns, row.expected_columns
        column = self.header[got] if 0 <= got < len(self.header) else None
        what = (
            f"expected {want} fields, got {got} (the row is cut short: truncated or malformed file)"
            if got < want
            else f"expected {want} fields, got {got} (more fields than the header)"
        )
        self.fail(
            line - 1 if line is not None else None, column, what, "repair or re-export the file"
        )

    def _csv_batches(self) -> Iterator[tuple[int, pa.Table]]:
        invalid: list[Any] = []
        row0 = 0
        try:
            # threads let pyarrow parse ahead; they lose the row numbers of parse errors,
            # which the single-threaded diagnosis pass below finds again
            reader = self._csv_reader(
                {c: self.types[c] for c in self.columns}, invalid, threads=True
            )
            for batch in reader:
                yield row0, pa.Table.from_batches([batch])
                row0 += batch.num_rows
        except pa.ArrowInvalid as exc:
            if "straddling" in str(exc):
                self._long_row()
            if invalid and invalid[0].number is not None:
                self._csv_parse_error(invalid[0])
            self._diagnose_csv(exc)
        except OSError as exc:
            self.fail(
                None,
                None,
                f"cannot read the file ({' '.join(str(exc).split())[:200]})",
                "the file is damaged or truncated",
            )

    def _diagnose_csv(self, exc: Exception) -> NoReturn:
        """Find the row and column of a conversion error: re-read everything as text."""
        invalid: list[Any] = []
        row0 = 0
        try:
            reader = self._csv_reader(
                {c: pa.string() for c in self.columns}, invalid, threads=False
            )
            for batch in reader:
                for c in self.columns:
                    target = self.types[c]
                    if pa.types.is_dictionary(target) or pa.types.is_string(target):
                        continue
                    arr = batch.column(c)
                    try:
                        _try_cast(arr, target)
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                        i = _first_cast_failure(arr, target)
                        value = arr[i].as_py()
                        what = (
                            f"{short(value)} contains a NUL byte (binary data, not text)"
                            if "\x00" in value
                            else f"{short(value)} is not {_describe(c, target)}"
                        )
                        self.fail(
                            row0 + i + 1,
                            c,
                            what,
                            "fix the value or remove the row (an empty field means no value)",
                        )
                row0 += batch.num_rows
        except pa.ArrowInvalid:
            if invalid:
                self._csv_parse_error(invalid[0])
            self._text_problem()
        self.fail(None, None, f"cannot read the file ({' '.join(str(exc).split())[:200]})")

    def _scan(self) -> Iterator[tuple[int, bytes]]:
        """``(offset, chunk)`` of the (decompressed) content, for diagnoses."""
        stream = self.inp.stream()
        offset = 0
        try:
            while chunk := stream.read(1 << 20):
                yield offset, bytes(chunk)
                offset += len(chunk)
        except _READ_ERRORS as exc:
            self.fail(None, None, f"cannot read the file ({exc})", "the file is damaged")

    def _text_problem(self) -> NoReturn:
        """The first byte that makes the content not UTF-8 text (or a NUL byte)."""
        decoder = codecs.getincrementaldecoder("utf-8")()
        lines = 0
        line_start = b""
        for _, chunk in self._scan():
            nul = chunk.find(b"\x00")
            try:
                decoder.decode(chunk if nul < 0 else chunk[:nul])
            except UnicodeDecodeError as err:
                pos = err.start
                before = line_start + chunk[:pos]
                self._text_fail(lines + before.count(b"\n"), before, chunk[pos : pos + 1])
            if nul >= 0:
                before = line_start + chunk[:nul]
                self._text_fail(lines + before.count(b"\n"), before, b"\x00")
            lines += chunk.count(b"\n")
            line_start = chunk[chunk.rfind(b"\n") + 1 :] if b"\n" in chunk else line_start + chunk
            line_start = line_start[-(MAX_FIELD_BYTES + 1) :]
        self.fail(None, None, "cannot read the file as CSV text", "repair or re-export the file")

    def _text_fail(self, line: int, before: bytes, byte: bytes) -> NoReturn:
        text_before = before[before.rfind(b"\n") + 1 :]
        column_index = text_before.count(b",")
        column = self.header[column_index] if column_index < len(self.header) else None
        if byte == b"\x00":
            self.fail(
                line or None,
                column,
                "contains a NUL byte: binary data, not CSV text",
                "the file is damaged or not an interchange CSV",
            )
        self.fail(
            line or None,
            column,
            f"byte 0x{byte[0]:02x} is not UTF-8 text (the file looks Latin-1 or "
            "Windows-1252 encoded)",
            f"convert it to UTF-8, e.g. iconv -f latin1 -t utf-8 {self.path.name} > utf8.csv",
        )

    def _long_row(self) -> NoReturn:
        """The first row longer than :data:`MAX_FIELD_BYTES` (the CSV reader's block)."""
        lines = 0
        length = 0
        for _, chunk in self._scan():
            start = 0
            while True:
                nl = chunk.find(b"\n", start)
                end = len(chunk) if nl < 0 else nl
                length += end - start
                if length > MAX_FIELD_BYTES:
                    self.fail(
                        lines or None,
                        None,
                        f"the row is longer than {MAX_FIELD_BYTES >> 20} MiB (a field this "
                        "large is not page data)",
                        "the file is damaged or not an interchange CSV",
                    )
                if nl < 0:
                    break
                lines += 1
                length = 0
                start = nl + 1
        self.fail(
            None, None, f"a row is longer than {MAX_FIELD_BYTES >> 20} MiB", "repair the file"
        )

    # -- Parquet ------------------------------------------------------------------------

    def _parquet_batches(self) -> Iterator[tuple[int, pa.Table]]:
        row0 = 0
        try:
            pf = streamed_parquet(self.inp.raw())
            batches = pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=self.columns)
        except _READ_ERRORS as exc:
            self.fail(None, None, f"cannot read the data ({exc})", "the file is damaged")
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except _READ_ERRORS as exc:
                self.fail(
                    row0 + 1,
                    None,
                    f"cannot read the data after this row ({exc})",
                    "the file is damaged",
                )
            table = pa.Table.from_batches([batch])
            yield row0, self._cast(table, row0)
            row0 += batch.num_rows

    def _cast(self, table: pa.Table, row0: int) -> pa.Table:
        cols = []
        for c in table.column_names:
            col = table.column(c)
            target = self.types.get(c)
            if target is None or col.type == target:
                cols.append(col)
                continue
            if pa.types.is_dictionary(target):
                if not pa.types.is_dictionary(col.type):
                    try:
                        col = col.cast(pa.string()).dictionary_encode()
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                        self.fail(None, c, f"type {col.type} cannot be read as text")
                cols.append(col)
                continue
            arr = col.combine_chunks()
            if pa.types.is_floating(arr.type) and pa.types.is_integer(target):
                # a float holds integers exactly only below 2^53: hashes and addresses do not fit
                v = _np(arr, np.float64, 0.0)
                i = _first(np.abs(v) >= 2.0**53)
                if i is not None:
                    self.fail(
                        row0 + i + 1,
                        c,
                        f"{v[i]!r} is a floating-point value, too large to be exact",
                        f"store {c} as an integer column (uint64)",
                    )
            try:
                cols.append(_try_cast(arr, target))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                i = _first_cast_failure(arr, target)
                self.fail(
                    row0 + i + 1,
                    c,
                    f"{short(arr[i].as_py())} is not {_describe(c, target)}",
                    "fix the value or remove the row",
                )
        return pa.Table.from_arrays(cols, names=table.column_names)

    def batches(self) -> Iterator[tuple[int, pa.Table]]:
        """``(rows before this batch, typed batch)`` for the whole file."""
        if self.kind == "csv":
            yield from self._csv_batches()
        else:
            yield from self._parquet_batches()


def _open_source(path: Path) -> _Source:
    """Recognise ``path`` (CSV / Parquet, interchange / v0) and check its header."""
    inp = _Input(path)
    try:
        with inp.raw() as f:
            magic = f.read(_HEAD_BYTES)
        if magic[:4] == b"PAR1":
            return _open_parquet(path, inp)
        return _open_csv(path, inp, magic)
    except BaseException:
        inp.close()
        raise


def _not_a_trace(path: Path, header: Sequence[str]) -> NoReturn:
    shown = ",".join(header[:8]) + (",..." if len(header) > 8 else "")
    raise TraceFormatError(
        f"{path}: not an interchange trace: its header ({short(shown, 200)}) has none of the "
        f"columns {', '.join(S.INTERCHANGE_REQUIRED)}",
        hint=_REQUIRED_HINT,
    )


def _check_interchange_header(path: Path, header: Sequence[str]) -> None:
    if not set(header) & set(S.INTERCHANGE_REQUIRED):
        _not_a_trace(path, header)
    missing = [c for c in S.INTERCHANGE_REQUIRED if c not in header]
    if missing:
        raise TraceFormatError(
            f"{path}: header: missing required column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)}",
            hint=_REQUIRED_HINT,
        )
    dup = sorted({c for c in header if header.count(c) > 1 and c in INTERCHANGE_TYPES})
    if dup:
        raise TraceFormatError(f"{path}: header: column {dup[0]} appears twice")


def _check_compression(path: Path, inp: _Input, magic: bytes) -> None:
    """The file's content must be what its name says: CSV text, or CSV compressed by its suffix."""
    sniffed = sniff(magic)
    suffix = path.suffix.lower()
    if inp.codec is None:
        if sniffed is None:  # UTF-16 text is told with its own fix below
            return
        what, fix = sniffed
        hint = (
            f"rename it to {path.name}{fix} to read it compressed, or decompress it"
            if fix in _CODECS
            else "convert it to a CSV or Parquet interchange file"
        )
        raise TraceFormatError(f"{path} is {what}, not CSV text or Parquet", hint=hint)
    want = _CODEC_NAMES[suffix]
    if sniffed is None or sniffed[1] != suffix:
        got = sniffed[0] if sniffed else "not compressed data"
        raise TraceFormatError(
            f"{path} is named {suffix} but is {got}, not {want}",
            hint="rename the file after what it holds",
        )


def _open_csv(path: Path, inp: _Input, magic: bytes) -> _Source:
    _check_compression(path, inp, magic)
    try:
        f = inp.stream()
        head = bytes(f.read(_HEAD_BYTES))
    except _READ_ERRORS as exc:
        raise TraceFormatError(
            f"{path}: cannot read the file ({' '.join(str(exc).split())[:200]})",
            hint="the file is damaged or truncated",
        ) from exc
    if inp.codec is not None:
        inner = sniff(head)
        if inner is not None:
            what = "Parquet data" if head[:4] == b"PAR1" else inner[0]
            raise TraceFormatError(
                f"{path} holds {what} inside its {path.suffix} compression, not CSV text",
                hint="decompress it and ingest what it holds",
            )
    bom = head.startswith(codecs.BOM_UTF8)
    if bom:  # a UTF-8 byte order mark (spreadsheets write one): skipped, as the reader does
        head = head[len(codecs.BOM_UTF8) :]
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise TraceFormatError(
            f"{path} is UTF-16 text, not UTF-8",
            hint=f"save it as UTF-8, e.g. iconv -f utf-16 -t utf-8 {path.name} > utf8.csv",
        )
    if not head.strip():
        raise TraceFormatError(f"{path} is empty, not an interchange trace", hint=_REQUIRED_HINT)
    header_len = head.find(b"\n")
    if header_len < 0 and len(head) >= _HEAD_BYTES - len(codecs.BOM_UTF8) * bom:
        raise TraceFormatError(
            f"{path}: the first line is longer than {_HEAD_BYTES >> 10} KiB: not an "
            "interchange header (binary data?)",
            hint=_REQUIRED_HINT,
        )
    src = _Source(path, "csv", "interchange-csv", [], [], dict(INTERCHANGE_TYPES), inp)
    nul = head.find(b"\x00")
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        decoder.decode(head if nul < 0 else head[:nul])
    except UnicodeDecodeError as err:
        before = head[: err.start]
        src.header = _header_fields(before.split(b"\n", 1)[0]) if b"\n" in before else []
        src._text_fail(before.count(b"\n"), before, head[err.start : err.start + 1])
    if nul >= 0:
        before = head[:nul]
        src.header = _header_fields(before.split(b"\n", 1)[0]) if b"\n" in before else []
        src._text_fail(before.count(b"\n"), before, b"\x00")
    header = _header_fields(head.split(b"\n", 1)[0])
    _check_interchange_header(path, header)
    src.header = header
    src.columns = [c for c in header if c in INTERCHANGE_TYPES]
    _check_csv_tail(src)
    return src


def _header_fields(line: bytes) -> list[str]:
    return next(csv.reader([line.decode("utf-8", "replace").rstrip("\r")]), [])


def _check_csv_tail(src: _Source) -> None:
    """A CSV cut mid-row: the file must end with a newline (uncompressed files only)."""
    if src.inp.codec is not None:
        return
    size = src.inp.size
    with src.inp.raw() as f:
        f.seek(max(size - 1, 0))
        if f.read(1) == b"\n":
            return
        f.seek(0)
        newlines = 0
        last = b""
        while chunk := f.read(1 << 24):
            newlines += chunk.count(b"\n")
            last = (last + chunk)[-(1 << 16) :]
    last_line = last.rsplit(b"\n", 1)[-1].decode("utf-8", "replace")
    fields = next(csv.reader([last_line]), [])
    column = src.header[len(fields) - 1] if 0 < len(fields) <= len(src.header) else None
    src.fail(
        newlines,
        column,
        "the last row is cut (the file does not end with a newline: truncated?)",
        "re-copy the complete file; if it is complete, add a final newline",
    )


def _is_text(t: pa.DataType) -> bool:
    return bool(
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or (pa.types.is_dictionary(t) and _is_text(t.value_type))
    )


def _check_parquet_types(path: Path, schema: pa.Schema, types: Mapping[str, pa.DataType]) -> None:
    """Columns of a Parquet input: numbers or text where we read numbers, text for text."""
    for f in schema:
        target = types.get(f.name)
        if target is None:
            continue
        t = f.type
        nested = pa.types.is_nested(t) or pa.types.is_union(t) or pa.types.is_map(t)
        binary = (
            pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t)
        )
        if pa.types.is_dictionary(target) or pa.types.is_string(target):
            ok = (not nested and not binary and not pa.types.is_dictionary(t)) or _is_text(t)
            want = "text (UTF-8 strings)"
        else:
            ok = (
                pa.types.is_integer(t)
                or pa.types.is_floating(t)
                or pa.types.is_boolean(t)
                or pa.types.is_null(t)
                or pa.types.is_timestamp(t)
                or pa.types.is_decimal(t)
                or _is_text(t)
            )
            want = (
                f"an integer column ({target})"
                if pa.types.is_integer(target)
                else "0/1 or true/false"
                if pa.types.is_boolean(target)
                else "a number column"
            )
        if not ok:
            raise TraceFormatError(
                f"{path}: column {f.name} has type {t}; expected {want}",
                hint=f"write {f.name} as a plain column of {want}",
            )


def _open_parquet(path: Path, inp: _Input) -> _Source:
    try:
        pf = streamed_parquet(inp.raw())
        schema = pf.schema_arrow
        num_rows = pf.metadata.num_rows
    except _READ_ERRORS as exc:
        raise TraceFormatError(
            f"{path}: not a readable Parquet file ({' '.join(str(exc).split())[:200]})",
            hint="the file is truncated (no footer) or damaged; re-copy or re-export it",
        ) from exc
    header = list(schema.names)
    meta = dict(schema.metadata or {})
    if set(header) >= _V0_SIGNATURE:
        missing = [c for c in V0_REQUIRED if c not in header]
        if missing:
            raise TraceFormatError(f"{path}: schema v0 file lacks column {missing[0]}")
        columns = [c for c in header if c in V0_COLUMNS]
        types = dict(_V0_TYPES)
        fmt: SourceFormat = "v0-parquet"
    else:
        _check_interchange_header(path, header)
        columns = [c for c in header if c in INTERCHANGE_TYPES]
        types = dict(INTERCHANGE_TYPES)
        fmt = "interchange-parquet"
    _check_parquet_types(path, schema, types)
    return _Source(path, "parquet", fmt, header, columns, types, inp, num_rows, meta)


# ----------------------------------------------------------------------------- normalising


class _FrameIds:
    """Opaque frame ids for PFNs: numbered in order of first appearance, never the PFN."""

    def __init__(self) -> None:
        self._pfns = np.empty(0, np.uint64)
        self._ids = np.empty(0, np.uint64)

    def __call__(
        self, pfns: np.ndarray[Any, np.dtype[np.uint64]]
    ) -> np.ndarray[Any, np.dtype[np.uint64]]:
        uniq, first, inverse = np.unique(pfns, return_index=True, return_inverse=True)
        pos = np.asarray(np.searchsorted(self._pfns, uniq), dtype=np.intp)
        found = np.zeros(len(uniq), dtype=bool)
        inside = pos < len(self._pfns)
        found[inside] = self._pfns[pos[inside]] == uniq[inside]
        new = np.flatnonzero(~found)
        if len(new):
            by_first = new[np.argsort(first[new], kind="stable")]
            new_ids = np.empty(len(uniq), np.uint64)
            new_ids[by_first] = np.arange(
                len(self._ids), len(self._ids) + len(new), dtype=np.uint64
            )
            pfn_all = np.concatenate([self._pfns, uniq[new]])
            id_all = np.concatenate([self._ids, new_ids[new]])
            order = np.argsort(pfn_all, kind="stable")
            self._pfns, self._ids = pfn_all[order], id_all[order]
            pos = np.asarray(np.searchsorted(self._pfns, uniq), dtype=np.intp)
        ids: np.ndarray[Any, np.dtype[np.uint64]] = self._ids[pos][inverse]
        return ids


@dataclass
class _Normaliser:
    """Validates typed batches and turns them into the flat rows of :class:`FlatConverter`.

    Output columns: ``_row`` (1-based source row), ``_key`` (snapshot key: time or v0
    snapshot id), ``_t`` (snapshot time, s), ``host`` (when present), ``_zero_pfn`` (v0:
    the row maps the shared zero page) and the converter's flat columns.
    """

    src: _Source
    zero_hash: int
    has_vma_start: bool | None = None
    has_frame: bool | None = None
    unknown_kinds: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    ts_scale: float | None = None
    frame_ids: _FrameIds = field(default_factory=_FrameIds)
    v0_flags: dict[int, int | None] | None = None
    _labels_ok: set[str] = field(default_factory=set)

    def fail(
        self, rows: np.ndarray[Any, Any], i: int, column: str, what: str, hint: str | None = None
    ) -> NoReturn:
        self.src.fail(int(rows[i]), column, what, hint)

    # -- shared checks -------------------------------------------------------------------

    def _required(self, t: pa.Table, rows: np.ndarray[Any, Any], names: Sequence[str]) -> None:
        for c in names:
            col = t.column(c)
            if col.null_count:
                i = _first(_null_mask(col))
                assert i is not None
                self.fail(rows, i, c, "empty value", f"every row needs a {c}")

    def _id32(self, t: pa.Table, rows: np.ndarray[Any, Any], c: str, out: dict[str, Any]) -> None:
        """A non-negative int32 id column (pid, ppid, uid); nulls kept for optional ones.

        A pid is positive: pid 0 is the kernel's idle task, which has no user memory.
        """
        col = t.column(c)
        v = _np(col, np.int64)
        i = _first(v < 0)
        if i is not None:
            self.fail(
                rows, i, c, f"negative {c} {int(v[i])}", f"{c} values are non-negative integers"
            )
        if c == "pid":
            i = _first(v == 0)
            if i is not None:
                self.fail(
                    rows,
                    i,
                    c,
                    "pid 0 is not a user process (it is the kernel's idle task)",
                    "pids of processes start at 1",
                )
        i = _first(v > _INT32_MAX)
        if i is not None:
            self.fail(rows, i, c, f"{c} {int(v[i])} is out of range (above 2^31-1)")
        mask = _null_mask(col) if col.null_count else None
        out[c] = pa.array(v.astype(np.int32), mask=mask)

    def _addresses(
        self, t: pa.Table, rows: np.ndarray[Any, Any], out: dict[str, Any]
    ) -> np.ndarray[Any, Any]:
        addr = _np(t.column("page_addr"), np.uint64)
        i = _first(addr % np.uint64(_PAGE) != 0)
        if i is not None:
            self.fail(
                rows,
                i,
                "page_addr",
                f"page address {int(addr[i])} (0x{int(addr[i]):x}) is not a multiple of {_PAGE}",
                "page_addr is the start address of a 4 KiB page",
            )
        out["page_addr"] = pa.array(addr)
        if "vma_start" in t.column_names:
            col = t.column("vma_start")
            nulls = _null_mask(col) if col.null_count else np.zeros(len(addr), bool)
            if self.has_vma_start is None:
                self.has_vma_start = not bool(nulls[0])
            if self.has_vma_start:
                i = _first(nulls)
                if i is not None:
                    self.fail(
                        rows,
                        i,
                        "vma_start",
                        "empty value, but row 1 has one",
                        "give a vma_start for every page or for none",
                    )
                vs = _np(col, np.uint64)
                i = _first(vs > addr)
                if i is not None:
                    self.fail(
                        rows,
                        i,
                        "vma_start",
                        f"vma_start 0x{int(vs[i]):x} is above its page 0x{int(addr[i]):x}",
                        "vma_start is the start of the mapping that holds the page",
                    )
                i = _first(vs % np.uint64(_PAGE) != 0)
                if i is not None:
                    self.fail(
                        rows, i, "vma_start", f"0x{int(vs[i]):x} is not a multiple of {_PAGE}"
                    )
                out["vma_start"] = pa.array(vs)
            else:
                i = _first(~nulls)
                if i is not None:
                    self.fail(
                        rows,
                        i,
                        "vma_start",
                        "has a value, but row 1 has none",
                        "give a vma_start for every page or for none",
                    )
        if "vma_end" in t.column_names:
            col = t.column("vma_end")
            ve = _np(col, np.uint64, fill=np.iinfo(np.uint64).max)
            i = _first(ve <= addr)
            if i is not None:
                self.fail(
                    rows,
                    i,
                    "vma_end",
                    f"vma_end 0x{int(ve[i]):x} is not above its page 0x{int(addr[i]):x}",
                )
            out["vma_end"] = col
        return addr

    def _flags(self, t: pa.Table, rows: np.ndarray[Any, Any]) -> np.ndarray[Any, Any] | None:
        if "flags" not in t.column_names:
            return None
        f = _np(t.column("flags"), np.int64)
        i = _first((f < 0) | (f > 0xFFFF))
        if i is not None:
            self.fail(rows, i, "flags", f"{int(f[i])} is not a 16-bit flag set")
        return f.astype(np.uint16)

    def _text(self, t: pa.Table, rows: np.ndarray[Any, Any]) -> None:
        """Text values hold no NUL byte and are at most :data:`MAX_FIELD_BYTES` long."""
        for c in t.column_names:
            col = t.column(c)
            if not _is_text(col.type):
                continue
            offset = 0
            chunk: Any
            for chunk in col.chunks:
                values = chunk.dictionary if pa.types.is_dictionary(chunk.type) else chunk
                nul: Any = pc.match_substring(values, "\x00")
                size: Any = pc.binary_length(values)
                bad_value = _np(nul, bool, False) | (_np(size, np.int64, 0) > MAX_FIELD_BYTES)
                if bad_value.any():
                    if pa.types.is_dictionary(chunk.type):
                        idx = _np(chunk.indices, np.int64, -1)
                        hit = np.zeros(len(idx), bool)
                        ok = idx >= 0
                        hit[ok] = bad_value[idx[ok]]
                    else:
                        hit = bad_value
                    i = _first(hit)
                    assert i is not None
                    value = chunk[i].as_py()
                    if "\x00" in value:
                        what = f"{short(value)} contains a NUL byte: binary data, not text"
                    else:
                        what = (
                            f"a value of {len(value.encode())} bytes, more than the "
                            f"{MAX_FIELD_BYTES >> 20} MiB a field may hold"
                        )
                    self.fail(rows, offset + i, c, what, "the file is damaged or not a trace")
                offset += len(chunk)

    def _kinds(self, t: pa.Table, out: dict[str, Any]) -> None:
        if "vma_kind" not in t.column_names:
            return
        kinds = t.column("vma_kind").cast(pa.string())
        known = pc.is_in(kinds, value_set=pa.array(S.VMA_KINDS))
        unknown = pc.and_(pc.invert(known), pc.invert(pc.is_null(kinds)))
        n_unknown = int(np.count_nonzero(_np(unknown, bool, False)))
        if n_unknown:
            counts: Any = pc.value_counts(kinds.filter(unknown))
            for item in counts.to_pylist():
                self.unknown_kinds[item["values"]] = (
                    self.unknown_kinds.get(item["values"], 0) + item["counts"]
                )
            kinds = pc.if_else(unknown, "other", kinds)
        out["vma_kind"] = kinds.dictionary_encode()

    def _labels(self, t: pa.Table, rows: np.ndarray[Any, Any], out: dict[str, Any]) -> None:
        if "labels" not in t.column_names:
            return
        col = t.column("labels").cast(pa.string())
        for value in pc.unique(col).to_pylist():
            if value is None or value in self._labels_ok:
                continue
            try:
                ok = isinstance(json.loads(value), dict)
            except ValueError:
                ok = False
            if not ok:
                i = _first(_equal_mask(col, value))
                assert i is not None
                self.fail(
                    rows,
                    i,
                    "labels",
                    f"{value!r} is not a JSON object",
                    'labels are a JSON object such as {"service": "web"}',
                )
            self._labels_ok.add(value)
        out["labels"] = t.column("labels")

    def _hosts(
        self, t: pa.Table, rows: np.ndarray[Any, Any], out: dict[str, Any], *, allow_null: bool
    ) -> None:
        if "host" not in t.column_names:
            return
        col = t.column("host")
        if col.null_count and not allow_null:
            i = _first(_null_mask(col))
            assert i is not None
            self.fail(rows, i, "host", "empty value", "give a host for every row or use --host")
        hosts = col.cast(pa.string())
        for value in pc.unique(hosts).to_pylist():
            if value is not None and not _valid_host(value):
                i = _first(_equal_mask(hosts, value))
                assert i is not None
                self.fail(
                    rows,
                    i,
                    "host",
                    f"invalid host name {value!r}",
                    "host names cannot be empty or contain '/'",
                )
        out["host"] = col

    # -- interchange -----------------------------------------------------------------------

    def interchange(self, t: pa.Table, row0: int) -> pa.Table:
        n = t.num_rows
        rows = np.arange(row0 + 1, row0 + n + 1, dtype=np.int64)
        self._text(t, rows)
        names = set(t.column_names)
        flags = self._flags(t, rows)
        required = ["time_s", "pid", "page_addr"]
        if flags is None:
            required.append("content_hash")
        self._required(t, rows, required)
        out: dict[str, Any] = {"_row": pa.array(rows)}
        ts = _np(t.column("time_s"), np.float64)
        i = _first(~np.isfinite(ts) | (ts < 0))
        if i is not None:
            self.fail(
                rows,
                i,
                "time_s",
                f"{float(ts[i])!r} is not a finite, non-negative number of seconds",
            )
        out["_key"] = pa.array(ts)
        out["_t"] = out["_key"]
        self._hosts(t, rows, out, allow_null=False)
        self._id32(t, rows, "pid", out)
        for c in ("ppid", "uid"):
            if c in names:
                self._id32(t, rows, c, out)
        self._addresses(t, rows, out)
        chash = t.column("content_hash")
        out["content_hash"] = chash
        if "is_zero" in names and t.column("is_zero").null_count == 0:
            out["is_zero"] = t.column("is_zero")
        else:
            zero: Any = pa.array(_equal_mask(chash, self.zero_hash))
            if "is_zero" in names:
                iz = t.column("is_zero")
                zero = pc.if_else(pc.is_null(iz), zero, iz)
            out["is_zero"] = zero
        if flags is not None:
            out["flags"] = pa.array(flags)
        if "frame" in names:
            col = t.column("frame")
            nulls = _null_mask(col) if col.null_count else np.zeros(n, bool)
            # swapped pages have no frame: the first other row decides whether frames exist
            framed = (
                np.ones(n, bool) if flags is None else (flags & np.uint16(S.PageFlag.SWAPPED)) == 0
            )
            if self.has_frame is None:
                i = _first(framed)
                if i is not None:
                    self.has_frame = not bool(nulls[i])
            if self.has_frame:
                i = _first(nulls & framed)
                if i is not None:
                    self.fail(
                        rows,
                        i,
                        "frame",
                        "empty value, but the first row has one",
                        "give a frame for every page or for none",
                    )
                out["frame"] = col
            elif self.has_frame is None:
                out["frame"] = col
            else:
                i = _first(~nulls)
                if i is not None:
                    self.fail(
                        rows,
                        i,
                        "frame",
                        "has a value, but the first row has none",
                        "give a frame for every page or for none",
                    )
        self._kinds(t, out)
        self._labels(t, rows, out)
        for c in ("comm", "proc_start", "cgroup", "perms", "vma_path"):
            if c in names:
                out[c] = t.column(c)
        self._counts(t, rows, out)
        return pa.table(out)

    def _counts(self, t: pa.Table, rows: np.ndarray[Any, Any], out: dict[str, Any]) -> None:
        """The optional change counts: 0 to 65535; a row without ``samples`` has none of
        them; no count above ``samples`` (content changes: above ``content_checks``)."""
        names = [c for c in S.INTERCHANGE_COUNTS if c in t.column_names]
        if "other_hash" in t.column_names and "content_changes" not in names:
            other = t.column("other_hash")
            if other.null_count < other.length():
                self.fail(
                    rows,
                    0,
                    "other_hash",
                    "the first other content needs the change counts",
                    "give samples and content_changes with other_hash",
                )
        if not names:
            return
        if "samples" not in names:
            self.fail(
                rows,
                0,
                names[0],
                "change counts need the samples column",
                "give samples (passes that looked at the page) with the counts",
            )
        values: dict[str, np.ndarray[Any, Any]] = {}
        nulls: dict[str, np.ndarray[Any, Any]] = {}
        for c in names:
            col = t.column(c)
            nulls[c] = _null_mask(col) if col.null_count else np.zeros(t.num_rows, bool)
            v = _np(col, np.int64)
            i = _first((v < 0) | (v > 65535))
            if i is not None:
                self.fail(rows, i, c, f"{int(v[i])} is not a count from 0 to 65535")
            values[c] = v
        seen = ~nulls["samples"]
        for c in names:
            i = _first(~nulls[c] & ~seen)
            if i is not None:
                self.fail(rows, i, c, "has a value but samples is empty")
            bound, what = (
                (values["content_checks"], "content_checks")
                if c == "content_changes" and "content_checks" in names
                else (values["samples"], "samples")
            )
            i = _first(values[c] > bound)
            if i is not None:
                self.fail(rows, i, c, f"{int(values[c][i])} is more than {what} ({int(bound[i])})")
            out[c] = pa.array(values[c], mask=nulls[c])
        if "other_hash" in t.column_names:
            self._other(t, rows, out, values, nulls)

    def _other(
        self,
        t: pa.Table,
        rows: np.ndarray[Any, Any],
        out: dict[str, Any],
        values: dict[str, np.ndarray[Any, Any]],
        nulls: dict[str, np.ndarray[Any, Any]],
    ) -> None:
        """The optional first other content: a keyed hash like ``content_hash``, given only
        where the row's ``content_changes`` counted a change."""
        col = t.column("other_hash")
        has = ~_null_mask(col) if col.null_count else np.ones(t.num_rows, bool)
        if not has.any():
            out["other_hash"] = pa.nulls(t.num_rows, pa.uint64())
            return
        changes = values.get("content_changes")
        changed = (
            np.zeros(t.num_rows, bool)
            if changes is None
            else (changes > 0) & ~nulls["content_changes"]
        )
        i = _first(has & ~changed)
        if i is not None:
            self.fail(
                rows,
                i,
                "other_hash",
                "has a value but content_changes counts no change",
                "give other_hash only for rows whose content changed (content_changes > 0)",
            )
        out["other_hash"] = col.cast(pa.uint64())

    # -- schema version 0 --------------------------------------------------------------------

    def _seconds(self, t: pa.Table, c: str, rows: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        col = t.column(c)
        if pa.types.is_timestamp(col.type):
            unit = col.type.unit
            scale = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}[unit]
            return _np(col.cast(pa.int64()), np.float64) * scale
        try:
            v = _np(col.cast(pa.float64()), np.float64)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            self.src.fail(int(rows[0]), c, f"type {col.type} is not a timestamp or a number")
        if pa.types.is_integer(col.type):
            if self.ts_scale is None:  # seconds, ms, us or ns since the epoch, by magnitude
                first = abs(float(v[0])) if len(v) else 0.0
                self.ts_scale = (
                    1e-9
                    if first > 1e17
                    else 1e-6
                    if first > 1e14
                    else 1e-3
                    if first > 1e11
                    else 1.0
                )
            v = v * self.ts_scale
        i = _first(~np.isfinite(v))
        if i is not None:
            self.fail(rows, i, c, f"{float(v[i])!r} is not a finite time")
        return v

    def v0(self, t: pa.Table, row0: int) -> pa.Table:
        n = t.num_rows
        rows = np.arange(row0 + 1, row0 + n + 1, dtype=np.int64)
        self._text(t, rows)
        names = set(t.column_names)
        self._required(t, rows, ["snapshot_id", "snapshot_ts", "pid", "page_addr"])
        out: dict[str, Any] = {"_row": pa.array(rows)}
        sid = _np(t.column("snapshot_id"), np.int64)
        i = _first(sid < 0)
        if i is not None:
            self.fail(rows, i, "snapshot_id", f"negative snapshot_id {int(sid[i])}")
        out["_key"] = pa.array(sid)
        out["_t"] = pa.array(self._seconds(t, "snapshot_ts", rows))
        if "proc_ts" in names:
            out["capture_t0_s"] = pa.array(
                self._seconds(t, "proc_ts", rows), mask=_null_mask(t.column("proc_ts"))
            )
        self._hosts(t, rows, out, allow_null=True)
        self._id32(t, rows, "pid", out)
        if "ppid" in names:
            self._id32(t, rows, "ppid", out)
        self._addresses(t, rows, out)

        # flags: kpageflags, kpagecount and the prototype's own bit set
        flags = np.zeros(n, np.uint16)
        zero_pfn = np.zeros(n, bool)
        if "kpageflags" in names:
            kpf = _np(t.column("kpageflags"), np.uint64)
            flags |= np.where(kpf & np.uint64(1 << KPF_KSM), np.uint16(S.PageFlag.KSM), 0).astype(
                np.uint16
            )
            flags |= np.where(kpf & np.uint64(1 << KPF_THP), np.uint16(S.PageFlag.THP), 0).astype(
                np.uint16
            )
            zero_pfn |= (kpf & np.uint64(1 << KPF_ZERO_PAGE)) != 0
        if "kpagecount" in names:
            cnt = _np(t.column("kpagecount"), np.int64)
            flags |= np.where(cnt > 1, np.uint16(S.PageFlag.SHARED_MAPCOUNT), 0).astype(np.uint16)
        if "flags" in names and self.v0_flags:
            src = _np(t.column("flags"), np.int64)
            for mask, ours in self.v0_flags.items():
                hit = (src & mask) != 0
                if ours is None:
                    zero_pfn |= hit
                else:
                    flags |= np.where(hit, np.uint16(ours), 0).astype(np.uint16)
        out["flags"] = pa.array(flags)
        out["_zero_pfn"] = pa.array(zero_pfn)
        chash = t.column("content_hash")
        out["content_hash"] = chash
        zero: Any = pa.array(_equal_mask(chash, self.zero_hash))
        if "is_zero" in names:
            iz = t.column("is_zero")
            zero = pc.if_else(pc.is_null(iz), zero, iz)
        out["is_zero"] = zero

        # frames: PFNs renumbered; a capture without CAP_SYS_ADMIN has all-zero PFNs
        pfn_col = t.column("pfn")
        pfn = _np(pfn_col, np.uint64)
        no_pfn = (pfn == 0) | (_null_mask(pfn_col) if pfn_col.null_count else False)
        framed = ((flags & np.uint16(S.PageFlag.SWAPPED)) == 0) & ~zero_pfn
        if self.has_frame is None and framed.any():  # the first present page decides
            self.has_frame = not bool(no_pfn[np.flatnonzero(framed)[0]])
            if not self.has_frame:
                self.warnings.append(
                    "the v0 file has no PFNs (captured without CAP_SYS_ADMIN?): every page "
                    "gets its own frame, so fork-shared frames cannot be discounted"
                )
        if self.has_frame:
            i = _first(no_pfn & framed)
            if i is not None:
                self.fail(rows, i, "pfn", "no PFN on a present page", "the v0 file is inconsistent")
            ids = np.zeros(n, np.uint64)
            have = ~no_pfn
            ids[have] = self.frame_ids(pfn[have])
            out["frame"] = pa.array(ids, mask=no_pfn)
        if "setup" in names:
            setup = t.column("setup").cast(pa.string())
            # the prototype's setup name becomes a label (a few distinct values per file)
            mapping = {
                v: json.dumps({"setup": v}) for v in pc.unique(setup).to_pylist() if v is not None
            }
            keys = pa.array(list(mapping), pa.string())
            vals = pa.array(list(mapping.values()), pa.string())
            idx = pc.index_in(setup, value_set=keys)
            out["labels"] = vals.take(idx).dictionary_encode()
        self._kinds(t, out)
        for c in ("comm", "proc_start", "cgroup", "perms", "vma_path"):
            if c in names:
                out[c] = t.column(c)
        return pa.table(out)


# ----------------------------------------------------------------------------- per host


def _keys(t: pa.Table) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    pid = np.asarray(t.column("pid").to_numpy(zero_copy_only=False), dtype=np.int32)
    addr = np.asarray(t.column("page_addr").to_numpy(zero_copy_only=False), dtype=np.uint64)
    return pid, addr


def _is_sorted(pid: np.ndarray[Any, Any], addr: np.ndarray[Any, Any]) -> bool:
    if len(pid) < 2:
        return True
    dp = pid[1:] - pid[:-1].astype(np.int64)
    return bool(np.all((dp > 0) | ((dp == 0) & (addr[1:] >= addr[:-1]))))


def _sort_order(pid: np.ndarray[Any, Any], addr: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The stable permutation sorting rows by ``(pid, addr)`` (addresses are page-aligned).

    One sort of a packed 64-bit key (pid in the top 22 bits, page number below) when the
    values fit, which is about twice as fast as a two-key ``lexsort``.
    """
    if len(pid) and int(pid.max()) < 1 << 22 and int(addr.max()) >> 12 < 1 << 42:
        key = (pid.astype(np.uint64) << np.uint64(42)) | (addr >> np.uint64(12))
        return np.argsort(key, kind="stable")
    return np.lexsort((addr, pid))


def _count_le(pid: np.ndarray[Any, Any], addr: np.ndarray[Any, Any], cp: int, ca: int) -> int:
    """Rows of a sorted run whose key ``(pid, addr)`` is at most ``(cp, ca)``."""
    lo = int(np.searchsorted(pid, cp, side="left"))
    hi = int(np.searchsorted(pid, cp, side="right"))
    return lo + int(np.searchsorted(addr[lo:hi], np.uint64(ca), side="right"))


class _Run:
    """One sorted run spilled to disk, read back one batch at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = pa.OSFile(str(path), "rb")
        self._reader = ipc.open_stream(self._file)
        self.table: pa.Table | None = None
        self.pid = np.empty(0, np.int32)
        self.addr = np.empty(0, np.uint64)
        self._load()

    def _load(self) -> None:
        try:
            batch = self._reader.read_next_batch()
        except StopIteration:
            self.table = None
            self._file.close()
            self.path.unlink(missing_ok=True)
            return
        self.table = pa.Table.from_batches([batch])
        self.pid, self.addr = _keys(self.table)

    def take(self, k: int) -> pa.Table:
        assert self.table is not None
        head = self.table.slice(0, k)
        if k >= self.table.num_rows:
            self._load()
        else:
            self.table = self.table.slice(k)
            self.pid, self.addr = self.pid[k:], self.addr[k:]
        return head

    def close(self) -> None:
        if self.table is not None:
            self._file.close()
            self.table = None


class _FrameCheck:
    """One frame holds one content at a time: no frame id with two hashes in a snapshot.

    Collects ``(frame, hash, source row)`` of the snapshot's pages (those with a frame and
    a hash, not flagged RACY: a page that changed while it was read) and checks them when
    the snapshot ends: sorted by frame, two equal frames with different hashes are a
    contradiction. Memory is bounded like the sort buffer: past ``limit`` rows the triples
    are hash-partitioned by frame into :data:`_FRAME_BUCKETS` spill files, each checked on
    its own (a frame's rows all land in one bucket).
    """

    def __init__(self, ing: _Ingest, limit: int) -> None:
        self.ing = ing
        self.limit = max(limit, 1)
        self.parts: list[tuple[np.ndarray[Any, Any], ...]] = []
        self.rows = 0
        self.buckets: list[tuple[Path, Any, Any]] | None = None

    def add(self, chunk: pa.Table) -> None:
        names = chunk.column_names
        if "frame" not in names or "_row" not in names:
            return
        frame = chunk.column("frame")
        chash = chunk.column("content_hash")
        keep = np.ones(chunk.num_rows, dtype=bool)
        if frame.null_count:
            keep &= ~_null_mask(frame)
        if chash.null_count:
            keep &= ~_null_mask(chash)
        if "flags" in names:
            keep &= (_np(chunk.column("flags"), np.uint16) & np.uint16(S.PageFlag.RACY)) == 0
        f = _np(frame, np.uint64)[keep]
        h = _np(chash, np.uint64)[keep]
        r = _np(chunk.column("_row"), np.int64)[keep]
        if not len(f):
            return
        self.parts.append((f, h, r))
        self.rows += len(f)
        if self.rows >= self.limit:
            self._spill()

    def _spill(self) -> None:
        if self.buckets is None:
            self.buckets = []
            for _ in range(_FRAME_BUCKETS):
                path = self.ing.spill_path()
                sink = pa.OSFile(str(path), "wb")
                writer = ipc.new_stream(sink, _FRAME_SCHEMA)
                self.buckets.append((path, sink, writer))
        for f, h, r in self.parts:
            bucket = ((f * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(58)).astype(np.uint8)
            order = np.argsort(bucket, kind="stable")  # a radix sort for 8-bit keys
            cuts = np.searchsorted(bucket[order], np.arange(_FRAME_BUCKETS + 1))
            for b in range(_FRAME_BUCKETS):
                sel = order[cuts[b] : cuts[b + 1]]
                if len(sel):
                    self.buckets[b][2].write_batch(
                        pa.record_batch(
                            [pa.array(f[sel]), pa.array(h[sel]), pa.array(r[sel])],
                            schema=_FRAME_SCHEMA,
                        )
                    )
        self.parts, self.rows = [], 0

    def finish(self, fail: Callable[[int, str, str], NoReturn]) -> None:
        """Check the snapshot's pages; ``fail(row, what, hint)`` reports a contradiction."""
        try:
            if self.buckets is None:
                if self.parts:
                    f, h, r = (np.concatenate(x) for x in zip(*self.parts, strict=True))
                    self._check(f, h, r, fail)
                return
            self._spill()
            for _, sink, writer in self.buckets:
                writer.close()
                sink.close()
            for path, _, _ in self.buckets:
                with pa.OSFile(str(path), "rb") as source:
                    table = ipc.open_stream(source).read_all()
                path.unlink()
                if table.num_rows:
                    self._check(
                        _np(table.column(0), np.uint64),
                        _np(table.column(1), np.uint64),
                        _np(table.column(2), np.int64),
                        fail,
                    )
        finally:
            self.close()

    def close(self) -> None:
        for path, sink, writer in self.buckets or []:
            with contextlib.suppress(Exception):
                writer.close()
            with contextlib.suppress(Exception):
                sink.close()
            path.unlink(missing_ok=True)
        self.buckets = None
        self.parts, self.rows = [], 0

    @staticmethod
    def _check(
        f: np.ndarray[Any, Any],
        h: np.ndarray[Any, Any],
        r: np.ndarray[Any, Any],
        fail: Callable[[int, str, str], NoReturn],
    ) -> None:
        order = np.argsort(f)  # one plain sort of the frames: equal frames side by side
        fs, hs = f[order], h[order]
        bad = (fs[1:] == fs[:-1]) & (hs[1:] != hs[:-1])
        if not bad.any():
            return
        # the frames in contradiction (few): for each, its first row and the first row that
        # disagrees with it; report the one found earliest in the file
        rows = np.flatnonzero(np.isin(f, np.unique(fs[1:][bad])))
        sub = rows[np.lexsort((r[rows], f[rows]))]
        best: tuple[int, int, int, int, int] | None = None
        start = 0
        while start < len(sub):
            end = start
            while end < len(sub) and f[sub[end]] == f[sub[start]]:
                end += 1
            first = sub[start]
            other = next((k for k in sub[start + 1 : end] if h[k] != h[first]), None)
            if other is not None and (best is None or int(r[other]) < best[0]):
                best = (int(r[other]), int(r[first]), int(f[first]), int(h[other]), int(h[first]))
            start = end
        assert best is not None
        row, first_row, frame, here, there = best
        fail(
            row,
            f"frame {frame} has content hash {here} here but {there} at row {first_row}",
            "one physical frame holds one content at a time: the frame or the hash is wrong",
        )


_FRAME_BUCKETS: Final = 64
#: Rows of (frame, hash, row) the frame check holds before it spills (24 bytes each).
_FRAME_CHECK_ROWS: Final = 1 << 20
_FRAME_SCHEMA: Final = pa.schema(
    [("frame", pa.uint64()), ("content_hash", pa.uint64()), ("row", pa.int64())]
)


class _HostIngest:
    """Buffers the current snapshot of one host and writes finished snapshots."""

    def __init__(self, name: str, writer: HostWriter, ingest: _Ingest) -> None:
        self.name = name
        self.writer = writer
        self.ing = ingest
        self.conv = FlatConverter(name, snapshot_meta=ingest.snapshot_meta)
        self.key: float | None = None
        self.time_s = 0.0
        self.t0: float | None = None
        self.prev_t: float | None = None
        self.sid = -1
        self.buf: list[pa.Table] = []
        self.buf_rows = 0
        self.runs: list[Path] = []
        self.snapshots = 0
        self.pages = 0
        self.zero_pfn: dict[int, int] = {}
        self.zero_pfn_total = 0
        self.wall_time_ns: int | None = None
        self.key_column = "snapshot_id" if ingest.src.fmt == "v0-parquet" else "time_s"
        self.time_column = "snapshot_ts" if ingest.src.fmt == "v0-parquet" else "time_s"

    def add(self, t: pa.Table) -> None:
        key = np.asarray(t.column("_key").to_numpy(zero_copy_only=False))
        rows = np.asarray(t.column("_row").to_numpy(zero_copy_only=False))
        if self.key is not None and key[0] < self.key:
            self._backwards(int(rows[0]), key[0], self.key)
        back = _first(key[1:] < key[:-1])
        if back is not None:
            self._backwards(int(rows[back + 1]), key[back + 1], key[back])
        cuts = np.concatenate([[0], np.flatnonzero(key[1:] != key[:-1]) + 1, [len(key)]])
        tt = np.asarray(t.column("_t").to_numpy(zero_copy_only=False), dtype=np.float64)
        for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True):
            if key[a] != self.key:
                self.end_snapshot()
                self.begin_snapshot(key[a], float(tt[a]), int(rows[a]))
            self._append(t.slice(a, b - a))

    def _backwards(self, row: int, got: Any, prev: Any) -> NoReturn:
        what = "time" if self.key_column == "time_s" else "snapshot_id"
        self.ing.src.fail(
            row,
            self.key_column,
            f"{what} goes backwards ({_fmt_s(got)} after {_fmt_s(prev)})"
            + (f" for host {self.name}" if self.ing.multi_host else ""),
            f"rows must be in time order: sort the file by {self.key_column}",
        )

    def begin_snapshot(self, key: Any, t: float, row: int) -> None:
        if self.prev_t is not None and t < self.prev_t:
            self.ing.src.fail(
                row,
                self.time_column,
                f"time goes backwards ({_fmt_s(t)} after {_fmt_s(self.prev_t)})",
                "snapshots must be in time order",
            )
        self.prev_t = t
        if self.t0 is None:
            self.t0 = t if self.key_column == "snapshot_id" else 0.0
        self.key = key
        self.time_s = t - self.t0
        # float seconds since the epoch are exact to about 0.2 us: keep microseconds
        self.wall_time_ns = round(t * 1e6) * 1000 if self.key_column == "snapshot_id" else None
        self.sid += 1

    def _append(self, part: pa.Table) -> None:
        if "_zero_pfn" in part.column_names:
            zp = np.asarray(part.column("_zero_pfn").to_numpy(zero_copy_only=False), dtype=bool)
            if zp.any():
                pids, counts = np.unique(
                    np.asarray(part.column("pid").to_numpy())[zp], return_counts=True
                )
                for p, c in zip(pids.tolist(), counts.tolist(), strict=True):
                    self.zero_pfn[p] = self.zero_pfn.get(p, 0) + c
                self.zero_pfn_total += int(zp.sum())
                part = part.filter(pa.array(~zp))
            part = part.drop_columns(["_zero_pfn"])
        drop: list[str] = [c for c in ("_key", "_t", "host") if c in part.column_names]
        part = part.drop_columns(drop)
        limit = self.ing.sort_buffer_rows
        while part.num_rows:
            take = min(part.num_rows, limit - self.buf_rows)
            self.buf.append(part.slice(0, take))
            self.buf_rows += take
            part = part.slice(take)
            if self.buf_rows >= limit:
                self._spill()

    def _buffer_sorted(self) -> tuple[pa.Table, np.ndarray[Any, Any] | None]:
        """The buffer and the permutation that sorts it (``None``: already sorted)."""
        table = pa.concat_tables(self.buf, promote_options="permissive")
        self.buf, self.buf_rows = [], 0
        pid, addr = _keys(table)
        if _is_sorted(pid, addr):
            return table, None
        order = _sort_order(pid, addr)
        del pid, addr
        return table.combine_chunks(), order

    def _spill(self) -> None:
        table, order = self._buffer_sorted()
        path = self.ing.spill_path()
        with pa.OSFile(str(path), "wb") as f, ipc.new_stream(f, table.schema) as w:
            for i in range(0, table.num_rows, _SPILL_BATCH_ROWS):
                part = (
                    table.slice(i, _SPILL_BATCH_ROWS)
                    if order is None
                    else table.take(order[i : i + _SPILL_BATCH_ROWS])
                )
                for b in part.combine_chunks().to_batches():
                    w.write_batch(b)
        self.runs.append(path)
        self.ing.spilled_runs += 1

    def _sorted_chunks(self) -> Iterator[pa.Table]:
        chunk = self.ing.chunk_rows
        if not self.runs:
            if not self.buf:
                return
            table, order = self._buffer_sorted()
            for i in range(0, table.num_rows, chunk):
                yield table.slice(i, chunk) if order is None else table.take(order[i : i + chunk])
            return
        if self.buf:
            self._spill()
        runs = [_Run(p) for p in self.runs]
        self.runs = []
        try:
            while True:
                live = [r for r in runs if r.table is not None]
                if not live:
                    return
                cp, ca = min((int(r.pid[-1]), int(r.addr[-1])) for r in live)
                parts = []
                for r in live:
                    k = _count_le(r.pid, r.addr, cp, ca)
                    if k:
                        parts.append(r.take(k))
                merged = pa.concat_tables(parts, promote_options="permissive")
                pid, addr = _keys(merged)
                if len(parts) > 1 and not _is_sorted(pid, addr):
                    merged = merged.take(_sort_order(pid, addr))
                yield merged
        finally:
            for r in runs:
                r.close()

    def end_snapshot(self) -> None:
        if self.key is None:
            return
        extra: dict[str, Any] = {}
        if self.wall_time_ns is not None:
            extra["wall_time_ns"] = self.wall_time_ns
        conv = self.conv
        frames = _FrameCheck(self.ing, min(self.ing.sort_buffer_rows, _FRAME_CHECK_ROWS))
        try:
            conv.begin(self.sid, self.time_s, extra)
            for chunk in self._sorted_chunks():
                frames.add(chunk)
                pages = conv.feed(chunk)
                self.writer.add_pages(pages)
                self.pages += pages.num_rows
            snap, procs, maps = conv.end()
        except TraceFormatError as exc:
            frames.close()
            sep = ", " if exc.message.startswith("row ") else ": "
            raise TraceFormatError(f"{self.ing.src.name}{sep}{exc.message}", hint=exc.hint) from exc
        where = f"{self.key_column}={_fmt_s(self.key)}" + (
            f" of host {self.name}" if self.ing.multi_host else ""
        )

        def frame_fail(row: int, what: str, hint: str) -> NoReturn:
            self.ing.src.fail(row, "frame", f"{what} in the same snapshot ({where})", hint)

        frames.finish(frame_fail)
        if "capture_t0_s" in procs.column_names and self.t0 is not None:
            idx = procs.column_names.index("capture_t0_s")
            procs = procs.set_column(
                idx, "capture_t0_s", pc.subtract(procs.column("capture_t0_s"), self.t0)
            )
        if self.ing.counts_zero_pfn:
            pids = [int(p) for p in procs.column("pid").to_numpy()]
            procs = procs.append_column(
                "zero_pfn_pages", pa.array([self.zero_pfn.get(p, 0) for p in pids], pa.int64())
            )
            self.zero_pfn = {}
        self.writer.add_snapshot(
            snap, processes=procs, mappings=maps, pages=S.PAGES_SCHEMA.empty_table()
        )
        self.snapshots += 1
        self.key = None

    def stats(self) -> HostIngestStats:
        return HostIngestStats(
            host=self.name,
            snapshots=self.snapshots,
            pages=self.pages,
            processes=self.conv.processes_seen,
            zero_pfn_pages=self.zero_pfn_total,
        )


# ----------------------------------------------------------------------------- driver


class _Ingest:
    def __init__(
        self,
        src: _Source,
        *,
        host: str | None,
        zero_hash: int,
        sort_buffer_rows: int,
        chunk_rows: int,
        spill_dir: Path,
    ) -> None:
        self.src = src
        self.default_host = host
        self.zero_hash = zero_hash
        self.sort_buffer_rows = max(int(sort_buffer_rows), 1)
        self.chunk_rows = max(int(chunk_rows), 1)
        self.spill_dir = spill_dir
        self.spilled_runs = 0
        self._spill_seq = 0
        self.multi_host = "host" in src.columns
        #: the source tells shared-zero-page mappings apart (v0 kpageflags or flags legend)
        self.counts_zero_pfn = False
        hash_algo = "xxh3_64" if src.fmt == "v0-parquet" else "interchange"
        self.snapshot_meta = {
            "hash_algo": hash_algo,
            "zero_hash": zero_hash,
            "capture_options": json.dumps(
                {"ingested_from": src.path.name, "source_format": src.fmt}, sort_keys=True
            ),
        }
        self.hosts: dict[str, _HostIngest] = {}

    def spill_path(self) -> Path:
        self._spill_seq += 1
        return self.spill_dir / f"run-{self._spill_seq:06d}.arrows"

    def host(self, tw: TraceWriter, name: str) -> _HostIngest:
        h = self.hosts.get(name)
        if h is None:
            h = self.hosts[name] = _HostIngest(name, tw.host(name), self)
        return h

    def route(self, tw: TraceWriter, t: pa.Table) -> None:
        if "host" not in t.column_names:
            assert self.default_host is not None
            self.host(tw, self.default_host).add(t)
            return
        col: Any = t.column("host").cast(pa.string())
        if col.null_count:  # v0 rows without a host: the default host
            col = col.fill_null(self.default_host or "host")
        values: list[str] = pc.unique(col).to_pylist()
        if len(values) == 1:
            self.host(tw, values[0]).add(t)
            return
        for value in values:
            self.host(tw, value).add(t.filter(_equal_mask(col, value)))


def ingest(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    host: str | None = None,
    zero_hash: int | None = None,
    overwrite: bool = False,
    progress: Progress = NULL_PROGRESS,
    sort_buffer_rows: int = DEFAULT_SORT_BUFFER_ROWS,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> IngestResult:
    """Convert an interchange CSV/Parquet file or a schema-v0 Parquet file into a trace.

    Parameters
    ----------
    src
        The input file. Parquet is recognised by its magic bytes, anything else is read as
        CSV (``.gz``/``.bz2``/``.zst`` compressed CSV is decompressed on the fly).
    out
        The trace directory to create (atomically: nothing is left there on failure).
    host
        Host name for inputs without a ``host`` column (default: the file name's stem; rows
        of a v0 file with an empty host get the stem too).
    zero_hash
        Hash of an all-zero page, used where the input has no ``is_zero`` value
        (default :data:`~planner.trace.schema.PLAIN_XXH3_ZERO_PAGE_HASH`).
    overwrite
        Replace ``out`` if it exists.
    progress
        Receives the number of input rows read.
    sort_buffer_rows
        Rows of one snapshot held in memory; larger snapshots are sorted in runs spilled
        next to ``out`` and merged.
    chunk_rows
        Rows handed to the converter and the writer at a time.

    Returns
    -------
    IngestResult
        Counts, the trace hash, throughput and warnings.

    Raises
    ------
    TraceFormatError
        The input is not a trace, is truncated or has a bad value (the message names the
        file, the row and the column).
    OutputExistsError
        ``out`` exists and ``overwrite`` is false.
    """
    started = time.perf_counter()
    path = Path(src)
    outp = Path(out)
    source = _open_source(path)
    try:
        return _ingest(
            source,
            outp,
            started=started,
            host=host,
            zero_hash=zero_hash,
            overwrite=overwrite,
            progress=progress,
            sort_buffer_rows=sort_buffer_rows,
            chunk_rows=chunk_rows,
        )
    finally:
        source.close()


def _ingest(
    source: _Source,
    outp: Path,
    *,
    started: float,
    host: str | None,
    zero_hash: int | None,
    overwrite: bool,
    progress: Progress,
    sort_buffer_rows: int,
    chunk_rows: int,
) -> IngestResult:
    path = source.path
    if host is not None and not _valid_host(host):
        raise UsageProblem(
            f"invalid host name {host!r}", hint="host names cannot be empty or contain '/'"
        )
    if host is not None and "host" in source.columns:
        raise UsageProblem(
            f"{path} has a host column; --host cannot rename its hosts",
            hint="drop --host (each row names its host)",
        )
    zh = S.PLAIN_XXH3_ZERO_PAGE_HASH if zero_hash is None else int(zero_hash)
    if not 0 <= zh < 2**64:
        raise UsageProblem(f"zero hash {zh} is not an unsigned 64-bit integer")
    norm = _Normaliser(source, zh)
    if source.fmt == "v0-parquet":
        norm.v0_flags = _v0_flag_map(source.metadata)
        if "flags" in source.columns and norm.v0_flags is None:
            norm.warnings.append(
                "the v0 flags column has no legend in the file metadata; its bits were ignored "
                "(kpageflags, kpagecount and is_zero were used)"
            )
    ignored = tuple(c for c in source.header if c not in source.columns)
    rows = 0
    with TraceWriter(
        outp,
        source=f"ingest:{source.fmt}",
        overwrite=overwrite,
        extra={
            "ingest": {
                "source_name": path.name,
                "source_bytes": source.inp.size,
                "source_format": source.fmt,
                "zero_hash": str(zh),
            }
        },
    ) as tw:
        spill_dir = Path(tempfile.mkdtemp(prefix=f".{outp.name}.spill-", dir=outp.parent))
        try:
            ing = _Ingest(
                source,
                host=host if host is not None else _host_default(path),
                zero_hash=zh,
                sort_buffer_rows=sort_buffer_rows,
                chunk_rows=chunk_rows,
                spill_dir=spill_dir,
            )
            ing.counts_zero_pfn = source.fmt == "v0-parquet" and (
                "kpageflags" in source.columns or None in (norm.v0_flags or {}).values()
            )
            progress.start(f"ingest {path.name}", source.total_rows)
            for row0, batch in source.batches():
                if not batch.num_rows:
                    continue
                flat = (
                    norm.v0(batch, row0)
                    if source.fmt == "v0-parquet"
                    else norm.interchange(batch, row0)
                )
                ing.route(tw, flat)
                rows = row0 + batch.num_rows
                progress.advance(batch.num_rows)
            if rows == 0:
                raise TraceFormatError(
                    f"{path} has a header but no data rows", hint="nothing to ingest"
                )
            for h in ing.hosts.values():
                h.end_snapshot()
            progress.finish()
        finally:
            shutil.rmtree(spill_dir, ignore_errors=True)
    assert tw.manifest is not None
    warnings = list(norm.warnings)
    if norm.unknown_kinds:
        shown = ", ".join(f"{k!r} ({v})" for k, v in sorted(norm.unknown_kinds.items())[:5])
        warnings.append(f"unknown vma_kind values recorded as 'other': {shown}")
    if ignored:
        warnings.append(f"ignored unknown columns: {', '.join(ignored)}")
    return IngestResult(
        source=str(path),
        source_format=source.fmt,
        out=str(outp),
        rows=rows,
        hosts=tuple(h.stats() for h in ing.hosts.values()),
        trace_hash=str(tw.manifest["trace_hash"]),
        elapsed_s=time.perf_counter() - started,
        spilled_runs=ing.spilled_runs,
        zero_hash=zh,
        warnings=tuple(warnings),
        ignored_columns=ignored,
    )


__all__ = [
    "EXTENSION_COLUMNS",
    "INTERCHANGE_TYPES",
    "V0_COLUMNS",
    "HostIngestStats",
    "IngestResult",
    "ingest",
]
