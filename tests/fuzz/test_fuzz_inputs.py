"""Fuzzing the inputs through the real command line (in-process): no traceback, ever.

Three targets, each mutated at random by hypothesis:

* an interchange CSV (bytes flipped, inserted, deleted; lines duplicated; fields replaced
  by hostile tokens: ``nan``, ``-1``, NUL, ``\\xff``, a BOM, 2^64, quotes, ...);
* an interchange Parquet file (columns replaced by arrays of other types -- nulls,
  negatives, NaN, nested, binary -- rows shuffled, bytes flipped);
* a trace directory (bytes flipped at random offsets of ``pages.parquet``, the other
  tables or the manifest, truncations, deletions, appended bytes; and the same changes by a
  "forger" who rewrites the manifest hashes so that the hash check passes).

The properties: the command ends with a documented exit code (0, or 4 for bad input
data), a failure is exactly one line on stderr and leaves nothing at ``--out`` (no
temporary or spill file either), and a success of ``ingest`` writes a trace that every
reader accepts. The default run is short and derandomised (a few dozen examples, seconds);
``-m slow`` runs many more, with fresh randomness.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.testing.builder import World
from planner.testing.tamper import rehash_manifest
from planner.trace import schema as S
from planner.trace.io import open_trace

QUICK = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
THOROUGH = settings(
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

HEADER = "time_s,pid,ppid,comm,vma_start,vma_kind,page_addr,content_hash,frame,is_zero"
ZERO = S.PLAIN_XXH3_ZERO_PAGE_HASH


def _base_csv() -> bytes:
    """A valid interchange CSV: two snapshots, a master and two forked workers."""
    rows = []
    for t in (0.0, 10.0):
        for pid, ppid, comm in ((100, 1, "master"), (101, 100, "worker"), (102, 100, "worker")):
            for i in range(6):
                shared = i < 3  # fork-shared pages: same frame in every process
                chash = ZERO if i == 5 else 1000 + i + (0 if shared else pid * 10)
                frame = i if shared else pid * 100 + i
                kind = "heap" if i < 4 else "anon"
                vma = 0x10000 if i < 4 else 0x20000
                addr = (0x10000 if i < 4 else 0x20000 - 4 * 4096) + 4096 * i
                rows.append(
                    f"{t:g},{pid},{ppid},{comm},{vma},{kind},{addr},{chash},{frame},"
                    f"{int(chash == ZERO)}"
                )
    return ("\n".join([HEADER, *rows]) + "\n").encode()


BASE_CSV = _base_csv()
TOKENS = [
    b",",
    b"\n",
    b"\r\n",
    b'"',
    b"nan",
    b"-1",
    b"0",
    b"\x00",
    b"\xff",
    b"\xef\xbb\xbf",
    b"18446744073709551616",
    b"1e400",
    b" ",
    b"",
    b"inf",
    b"0x10",
    b"4097",
    b"\t",
    b"\x1b[2J",
    b"<script>",
    b"999999999999",
]


def _ok_or_one_line(code: int, stdout: str, err: str, allowed: set[int]) -> None:
    assert "Traceback" not in err, err
    assert code in allowed, (code, err)
    if code != 0:
        lines = err.splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith("ksm-planner: error: "), err
        assert stdout == ""


def _no_leftovers(folder: Path, expected: set[str]) -> None:
    assert {p.name for p in folder.iterdir()} == expected


def _every_reader_accepts(trace: Path) -> None:
    tr = open_trace(trace)
    for h in tr.hosts:
        tr.load_host(h)
        for _ in tr.iter_snapshot_pages(h):
            pass


# ----------------------------------------------------------------------------- interchange CSV

csv_mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(1, 255)),
    st.tuples(
        st.just("insert"),
        st.integers(0, 1 << 20),
        st.sampled_from(TOKENS) | st.binary(min_size=1, max_size=6),
    ),
    st.tuples(st.just("delete"), st.integers(0, 1 << 20), st.integers(1, 40)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 20), st.just(0)),
    st.tuples(st.just("dupline"), st.integers(0, 100), st.integers(0, 100)),
    st.tuples(st.just("field"), st.integers(0, 100), st.integers(0, 9), st.sampled_from(TOKENS)),
)


def _mutate_csv(data: bytes, mutations: list[tuple[Any, ...]]) -> bytes:
    for m in mutations:
        kind = m[0]
        if kind == "flip" and data:
            i = m[1] % len(data)
            data = data[:i] + bytes([data[i] ^ m[2]]) + data[i + 1 :]
        elif kind == "insert":
            i = m[1] % (len(data) + 1)
            data = data[:i] + m[2] + data[i:]
        elif kind == "delete" and data:
            i = m[1] % len(data)
            data = data[:i] + data[i + m[2] :]
        elif kind == "truncate":
            data = data[: m[1] % (len(data) + 1)]
        elif kind in ("dupline", "field"):
            lines = data.split(b"\n")
            i = m[1] % len(lines)
            if kind == "dupline":
                lines.insert(m[2] % len(lines), lines[i])
            else:
                fields = lines[i].split(b",")
                fields[m[2] % len(fields)] = m[3]
                lines[i] = b",".join(fields)
            data = b"\n".join(lines)
    return data


def _ingest_case(cli: Any, name: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        src = folder / name
        src.write_bytes(data)
        out = folder / "out.trace"
        code, stdout, err = cli(["ingest", src, "--out", out, "--json"])
        _ok_or_one_line(code, stdout, err, {0, 4})
        if code == 0:
            _every_reader_accepts(out)
            _no_leftovers(folder, {name, "out.trace"})
        else:
            _no_leftovers(folder, {name})


def _fuzz_csv(cli: Any, mutations: list[tuple[Any, ...]], suffix: str) -> None:
    _ingest_case(cli, f"fuzz{suffix}", _mutate_csv(BASE_CSV, mutations))


@QUICK
@given(mutations=st.lists(csv_mutation, min_size=1, max_size=4), suffix=st.just(".csv"))
def test_fuzz_interchange_csv(cli: Any, mutations: list[tuple[Any, ...]], suffix: str) -> None:
    _fuzz_csv(cli, mutations, suffix)


@pytest.mark.slow
@THOROUGH
@given(
    mutations=st.lists(csv_mutation, min_size=1, max_size=8),
    suffix=st.sampled_from([".csv", ".txt", ".csv.gz", ".parquet"]),
)
def test_fuzz_interchange_csv_thoroughly(
    cli: Any, mutations: list[tuple[Any, ...]], suffix: str
) -> None:
    _fuzz_csv(cli, mutations, suffix)


# ----------------------------------------------------------------------------- interchange Parquet


def _base_table() -> pa.Table:
    return pacsv.read_csv(io.BytesIO(BASE_CSV))


def _hostile_array(kind: str, n: int, seed: int) -> pa.Array:
    values = [(seed * 2654435761 + i * 40503) % 1000 for i in range(n)]
    arrays: dict[str, Any] = {
        "nulls": lambda: pa.nulls(n, pa.int64()),
        "negative": lambda: pa.array([-v - 1 for v in values], pa.int64()),
        "huge": lambda: pa.array([2**64 - 1 - v for v in values], pa.uint64()),
        "nan": lambda: pa.array([float("nan") if v % 3 == 0 else v * 4096.0 for v in values]),
        "text": lambda: pa.array([["nan", "x", "", "\x00", "\xff"][v % 5] for v in values]),
        "list": lambda: pa.array([[v] for v in values], pa.list_(pa.int64())),
        "struct": lambda: pa.array([{"v": v} for v in values], pa.struct([("v", pa.int64())])),
        "binary": lambda: pa.array([bytes([v % 256]) for v in values], pa.binary()),
        "bool": lambda: pa.array([v % 2 == 0 for v in values]),
        "timestamp": lambda: pa.array(values, pa.timestamp("s")),
        "dictionary": lambda: pa.array([str(v) for v in values]).dictionary_encode(),
        "zero": lambda: pa.array([0] * n, pa.int64()),
    }
    result: pa.Array = arrays[kind]()
    return result


parquet_change = st.one_of(
    st.tuples(
        st.just("column"),
        st.sampled_from(HEADER.split(",")),
        st.sampled_from(
            [
                "nulls",
                "negative",
                "huge",
                "nan",
                "text",
                "list",
                "struct",
                "binary",
                "bool",
                "timestamp",
                "dictionary",
                "zero",
            ]
        ),
        st.integers(0, 1000),
    ),
    st.tuples(st.just("drop"), st.sampled_from(HEADER.split(",")), st.just(""), st.just(0)),
    st.tuples(st.just("shuffle"), st.just(""), st.just(""), st.integers(0, 1000)),
    st.tuples(st.just("flip"), st.just(""), st.just(""), st.integers(0, 1 << 20)),
    st.tuples(st.just("cut"), st.just(""), st.just(""), st.integers(0, 1 << 20)),
)


def _parquet_bytes(changes: list[tuple[Any, ...]]) -> bytes:
    table = _base_table()
    flips: list[int] = []
    cut: int | None = None
    for kind, column, how, seed in changes:
        if kind == "column" and column in table.column_names:
            i = table.column_names.index(column)
            table = table.set_column(i, column, _hostile_array(how, table.num_rows, seed))
        elif kind == "drop" and column in table.column_names:
            table = table.drop_columns([column])
        elif kind == "shuffle":
            n = table.num_rows
            table = table.take(pa.array([(seed + 7 * i) % n for i in range(n)]))
        elif kind == "flip":
            flips.append(seed)
        elif kind == "cut":
            cut = seed
    buf = io.BytesIO()
    pq.write_table(table, buf)
    data = bytearray(buf.getvalue())
    for f in flips:
        data[f % len(data)] ^= 0xA5
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    return bytes(data)


@QUICK
@given(changes=st.lists(parquet_change, min_size=1, max_size=3))
def test_fuzz_interchange_parquet(cli: Any, changes: list[tuple[Any, ...]]) -> None:
    _ingest_case(cli, "fuzz.parquet", _parquet_bytes(changes))


@pytest.mark.slow
@THOROUGH
@given(changes=st.lists(parquet_change, min_size=1, max_size=6))
def test_fuzz_interchange_parquet_thoroughly(cli: Any, changes: list[tuple[Any, ...]]) -> None:
    _ingest_case(cli, "fuzz.parquet", _parquet_bytes(changes))


# ----------------------------------------------------------------------------- traces


@pytest.fixture(scope="session")
def base_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small trace, built once per session (pytest removes it with its other temporaries)."""
    w = World(host="web")
    w.spawn(100, comm="master", labels={"tenant": "a"})
    w.map(100, 0x10000, [1, 1, 2, 0, 3, 4, 5, 6], kind="heap")
    w.snapshot(0.0)
    for pid in (101, 102):
        w.fork(100, pid, comm="worker")
        w.map(pid, 0x40000, [10 + pid, 20, 20, 0], kind="anon")
    w.write(101, 0x11000, 7)
    w.snapshot(10.0)
    w.write(102, 0x12000, 8)
    w.exit(101)
    w.snapshot(20.0)
    out = tmp_path_factory.mktemp("fuzz-base") / "t"
    w.write_trace(out)
    return out


TARGETS = ["pages", "pages", "pages", "snapshots", "processes", "mappings", "manifest"]

trace_change = st.tuples(
    st.sampled_from(TARGETS),
    st.sampled_from(["flip", "flip", "flip", "truncate", "delete", "append", "json"]),
    st.integers(0, 1 << 24),
    st.integers(1, 16),
)


def _manifest_edit(doc: Any, seed: int) -> Any:
    """A random structural edit of the manifest JSON (types, keys, values)."""
    keys = sorted(doc)
    key = keys[seed % len(keys)]
    choice = seed // len(keys) % 8
    if choice == 0:
        del doc[key]
    elif choice == 1:
        doc[key] = None
    elif choice == 2:
        doc[key] = "x"
    elif choice == 3:
        doc[key] = [doc[key]]
    elif choice == 4:
        doc[key] = 0
    elif choice == 5:
        doc["hosts"] = "web"
    elif choice == 6 and isinstance(doc.get("files"), dict):
        rel = sorted(doc["files"])[seed % len(doc["files"])]
        doc["files"]["../" * (seed % 3 + 1) + "etc/passwd"] = doc["files"].pop(rel)
    else:
        doc = [doc]
    return doc


def _data_files(trace: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((trace / "host=web").glob("*.parquet"))}


def _damage(trace: Path, changes: list[tuple[Any, ...]], forged: bool) -> bool:
    """Apply ``changes``; whether a data file was really changed (not only the manifest)."""
    before = _data_files(trace)
    for target, op, at, count in changes:
        p = (
            trace / S.MANIFEST_NAME
            if target == "manifest"
            else trace / "host=web" / f"{target}.parquet"
        )
        if not p.exists():
            continue
        data = bytearray(p.read_bytes())
        if op == "delete":
            p.unlink()
        elif op == "truncate":
            p.write_bytes(bytes(data[: at % max(len(data), 1)]))
        elif op == "append":
            p.write_bytes(bytes(data) + bytes(range(count)))
        elif op == "json" and target == "manifest":
            try:
                doc = json.loads(bytes(data))
                p.write_text(json.dumps(_manifest_edit(doc, at)))
            except ValueError:
                continue
        elif data:
            for k in range(count):
                data[(at + 131 * k) % len(data)] ^= 0x5A if k % 2 else 0xFF
            p.write_bytes(bytes(data))
    changed = _data_files(trace) != before  # (two equal flips cancel out)
    if forged and (trace / S.MANIFEST_NAME).exists():
        # a manifest too broken to rehash stays broken
        with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
            rehash_manifest(trace)
    return changed


def _fuzz_trace(
    cli: Any, base: Path, changes: list[tuple[Any, ...]], forged: bool, command: str
) -> None:
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        trace = folder / "t"
        shutil.copytree(base, trace)
        changed = _damage(trace, changes, forged)
        out = folder / "out"
        out.mkdir()
        args = {
            "replay": ["replay", trace, "--json"],
            "info": ["info", trace, "--json"],
            "export": ["export", trace, "--out", out / "x.csv", "--json"],
        }[command]
        code, stdout, err = cli(args)
        _ok_or_one_line(code, stdout, err, {0, 4})
        if changed and not forged:
            assert code == 4, err  # a changed data file never passes the hash check
        if code != 0:
            assert list(out.iterdir()) == []


@QUICK
@given(
    changes=st.lists(trace_change, min_size=1, max_size=3),
    forged=st.booleans(),
    command=st.sampled_from(["replay", "info", "export"]),
)
def test_fuzz_trace_files(
    cli: Any, base_trace: Path, changes: list[tuple[Any, ...]], forged: bool, command: str
) -> None:
    _fuzz_trace(cli, base_trace, changes, forged, command)


@pytest.mark.slow
@THOROUGH
@given(
    changes=st.lists(trace_change, min_size=1, max_size=5),
    forged=st.booleans(),
    command=st.sampled_from(["replay", "info", "export"]),
)
def test_fuzz_trace_files_thoroughly(
    cli: Any, base_trace: Path, changes: list[tuple[Any, ...]], forged: bool, command: str
) -> None:
    _fuzz_trace(cli, base_trace, changes, forged, command)


# ----------------------------------------------------------------------------- forged tables
#
# A forger edits decoded values (not bytes) and rewrites the manifest hashes: the trace
# passes the hash check, so the consistency check and the readers must cope with whatever
# values the types allow.

_VALUES: dict[str, list[Any]] = {
    "int": [0, -1, 1, 2, 7, 2**31 - 1, -(2**31)],
    "uint": [0, 1, 4096, 4097, 2**63, 2**64 - 1],
    "float": [0.0, -1.0, 1e308, float("nan"), float("inf"), 5.0],
    "str": ["", "ok", "gone", "x" * 300, "\x1b[2J", "web"],
    "bool": [True, False],
}

table_edit = st.tuples(
    st.sampled_from(["snapshots", "processes", "mappings", "pages"]),
    st.integers(0, 1000),  # which column
    st.integers(0, 1000),  # which row (or all rows)
    st.integers(0, 1000),  # which value
    st.booleans(),  # every row
)


def _kind(t: pa.DataType) -> str:
    if pa.types.is_unsigned_integer(t):
        return "uint"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_boolean(t):
        return "bool"
    return "str"


def _edit_table(table: pa.Table, col: int, row: int, value: int, every: bool) -> pa.Table:
    if table.num_rows == 0:
        return table
    i = col % table.num_columns
    field = table.schema.field(i)
    pool = _VALUES[_kind(field.type)]
    v = pool[value % len(pool)]
    if field.nullable and value % 7 == 0:
        v = None
    values = table.column(i).to_pylist()
    for r in range(len(values)) if every else [row % len(values)]:
        values[r] = v
    try:
        arr = pa.array(values, field.type)
    except (pa.ArrowInvalid, OverflowError, TypeError):
        return table
    return table.set_column(i, field, arr)


def _fuzz_forged_tables(cli: Any, base: Path, edits: list[tuple[Any, ...]], command: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        trace = folder / "t"
        shutil.copytree(base, trace)
        for name, col, row, value, every in edits:
            p = trace / "host=web" / f"{name}.parquet"
            table = pq.read_table(p)
            pq.write_table(_edit_table(table, col, row, value, every), p)
        rehash_manifest(trace)
        out = folder / "out"
        out.mkdir()
        args = {
            "replay": ["replay", trace, "--json"],
            "info": ["info", trace, "--json"],
            "export": ["export", trace, "--out", out / "x.csv", "--json"],
        }[command]
        code, stdout, err = cli(args)
        _ok_or_one_line(code, stdout, err, {0, 4})
        if code != 0:
            assert list(out.iterdir()) == []


@QUICK
@given(
    edits=st.lists(table_edit, min_size=1, max_size=3),
    command=st.sampled_from(["replay", "info", "export"]),
)
def test_fuzz_forged_tables(
    cli: Any, base_trace: Path, edits: list[tuple[Any, ...]], command: str
) -> None:
    _fuzz_forged_tables(cli, base_trace, edits, command)


@pytest.mark.slow
@THOROUGH
@given(
    edits=st.lists(table_edit, min_size=1, max_size=5),
    command=st.sampled_from(["replay", "info", "export"]),
)
def test_fuzz_forged_tables_thoroughly(
    cli: Any, base_trace: Path, edits: list[tuple[Any, ...]], command: str
) -> None:
    _fuzz_forged_tables(cli, base_trace, edits, command)
