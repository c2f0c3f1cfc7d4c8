"""``ksm-planner ingest`` against hostile or careless input (issue 8).

Non-regular inputs (a FIFO must not block), encodings (BOM, UTF-16, Latin-1, NUL bytes),
compressed data under the wrong name, values that look missing ('nan'), fields over
4 MiB, nested or binary Parquet columns, and rows that contradict each other in one
snapshot (one frame with two hashes, one pid with two ppids, pid 0, ...). Every case:
one line naming the file (and, where there is one, the row and the column), exit code 4,
no traceback, nothing left at ``--out``.
"""

from __future__ import annotations

import bz2
import gzip
import io
import os
import socket
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from planner.errors import TraceFormatError
from planner.trace import schema as S
from planner.trace.ingest import MAX_FIELD_BYTES, ingest
from planner.trace.io import open_trace

HEADER = "time_s,pid,ppid,comm,vma_start,vma_kind,page_addr,content_hash,frame"
GOOD = "0,100,1,web,4096,anon,4096,11,1"


def csv_text(rows: list[str], header: str = HEADER) -> str:
    return "\n".join([header, *rows]) + "\n"


def many_rows(n: int, t: float = 0.0) -> list[str]:
    return [f"{t:g},100,1,web,4096,anon,{4096 * (i + 1)},{i + 20},{i + 20}" for i in range(n)]


def refused(cli: Any, tmp_path: Path, src: Path, *needles: str) -> str:
    """Ingest ``src``: exit 4, one line naming it and ``needles``, nothing written."""
    out = tmp_path / "out.trace"
    before = set(tmp_path.iterdir())
    code, stdout, err = cli(["ingest", src, "--out", out])
    assert code == 4, err
    assert stdout == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ksm-planner: error: ")
    assert "Traceback" not in err
    assert not out.exists()
    assert set(tmp_path.iterdir()) == before
    assert str(src) in lines[0]
    for n in needles:
        assert n in lines[0], lines[0]
    assert len(lines[0]) < 600  # never a 4 MiB value in the message
    return lines[0]


def accepted(cli: Any, tmp_path: Path, src: Path, name: str = "ok.trace") -> Path:
    out = tmp_path / name
    code, _, err = cli(["ingest", src, "--out", out])
    assert code == 0, err
    return out


# ----------------------------------------------------------------------------- not a file


@pytest.mark.timeout(60)
def test_fifo_is_refused_without_blocking(cli: Any, tmp_path: Path) -> None:
    src = tmp_path / "pipe.csv"
    os.mkfifo(src)
    refused(cli, tmp_path, src, "named pipe (FIFO)", "not a regular file")


def test_directory_is_refused(cli: Any, tmp_path: Path) -> None:
    d = tmp_path / "dir.csv"
    d.mkdir()
    refused(cli, tmp_path, d, "is a directory")


def test_character_device_is_refused(cli: Any, tmp_path: Path) -> None:
    refused(cli, tmp_path, Path("/dev/zero"), "character device")


def test_socket_is_refused(cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        refused(cli, tmp_path, path, "socket")


# ----------------------------------------------------------------------------- encodings


def test_utf8_bom_is_skipped(cli: Any, tmp_path: Path) -> None:
    plain, bom = tmp_path / "plain.csv", tmp_path / "bom.csv"
    plain.write_text(csv_text([GOOD, "0,100,1,web,4096,anon,8192,12,2"]))
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    a = open_trace(accepted(cli, tmp_path, plain, "a")).load_host()
    b = open_trace(accepted(cli, tmp_path, bom, "b")).load_host()
    assert a.pages.equals(b.pages)


def test_utf16_is_refused(cli: Any, tmp_path: Path) -> None:
    src = tmp_path / "u16.csv"
    src.write_bytes(csv_text([GOOD]).encode("utf-16"))
    refused(cli, tmp_path, src, "UTF-16 text", "iconv")


def test_latin1_in_the_first_rows(cli: Any, tmp_path: Path) -> None:
    src = tmp_path / "latin1.csv"
    src.write_bytes(csv_text([GOOD, "0,100,1,caf\xe9,4096,anon,8192,12,2"]).encode("latin-1"))
    refused(cli, tmp_path, src, "row 2", "column comm", "byte 0xe9 is not UTF-8", "Latin-1")


def test_latin1_far_into_the_file(cli: Any, tmp_path: Path) -> None:
    rows = many_rows(5000)
    rows[4321] = rows[4321].replace(",web,", ",caf\xe9,")
    src = tmp_path / "latin1-late.csv"
    src.write_bytes(csv_text(rows).encode("latin-1"))
    assert src.stat().st_size > 1 << 16  # beyond the header sniffing
    refused(cli, tmp_path, src, "row 4322", "column comm", "not UTF-8")


def test_nul_bytes_in_the_first_rows(cli: Any, tmp_path: Path) -> None:
    src = tmp_path / "nul.csv"
    src.write_bytes(csv_text([GOOD, "0,100,1,w\x00b,4096,anon,8192,12,2"]).encode())
    refused(cli, tmp_path, src, "row 2", "column comm", "NUL byte")


def test_nul_byte_far_into_a_text_column(cli: Any, tmp_path: Path) -> None:
    rows = many_rows(5000)
    rows[4000] = rows[4000].replace(",web,", ",w\x00b,")
    src = tmp_path / "nul-late.csv"
    src.write_text(csv_text(rows))
    refused(cli, tmp_path, src, "row 4001", "column comm", "NUL byte")


def test_nul_byte_far_into_a_number_column(cli: Any, tmp_path: Path) -> None:
    rows = many_rows(5000)
    rows[4000] = rows[4000].replace(",4020,4020", ",40\x0020,4020")
    src = tmp_path / "nul-num.csv"
    src.write_text(csv_text(rows))
    refused(cli, tmp_path, src, "row 4001", "column content_hash", "NUL byte")


# ----------------------------------------------------------------------------- compression


def test_gzip_named_csv_says_what_it_is(cli: Any, tmp_path: Path) -> None:
    src = tmp_path / "data.csv"
    src.write_bytes(gzip.compress(csv_text([GOOD]).encode()))
    refused(cli, tmp_path, src, "is gzip-compressed data", "rename it to data.csv.gz")


def test_gzip_named_csv_gz_is_read(cli: Any, tmp_path: Path) -> None:
    src = tmp_path / "data.csv.gz"
    src.write_bytes(gzip.compress(csv_text([GOOD]).encode()))
    accepted(cli, tmp_path, src)


def test_bz2_named_gz_is_refused(cli: Any, tmp_path: Path) -> None:
    src = tmp_path / "data.csv.gz"
    src.write_bytes(bz2.compress(csv_text([GOOD]).encode()))
    refused(cli, tmp_path, src, "is named .gz but is bzip2-compressed data")


def test_plain_text_named_gz_is_refused(cli: Any, tmp_path: Path) -> None:
    src = tmp_path / "data.csv.gz"
    src.write_text(csv_text([GOOD]))
    refused(cli, tmp_path, src, "is named .gz but is not compressed data")


def test_zip_archive_is_refused(cli: Any, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("data.csv", csv_text([GOOD]))
    src = tmp_path / "data.csv"
    src.write_bytes(buf.getvalue())
    refused(cli, tmp_path, src, "is a zip archive")


def test_corrupt_gzip_is_one_line(cli: Any, tmp_path: Path) -> None:
    data = bytearray(gzip.compress(csv_text(many_rows(3000)).encode()))
    for i in range(200, 260):
        data[i] ^= 0x5A
    src = tmp_path / "bad.csv.gz"
    src.write_bytes(bytes(data))
    refused(cli, tmp_path, src)


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("row", "needles"),
    [
        ("nan,100,1,web,4096,anon,4096,11,1", ["row 1", "column time_s", "nan is not a finite"]),
        ("inf,100,1,web,4096,anon,4096,11,1", ["row 1", "column time_s", "inf is not a finite"]),
        ("0,100,1,web,4096,anon,4096,nan,1", ["row 1", "column content_hash", "'nan' is not"]),
        ("0,NA,1,web,4096,anon,4096,11,1", ["row 1", "column pid", "'NA' is not"]),
        ("0,100,null,web,4096,anon,4096,11,1", ["row 1", "column ppid", "'null' is not"]),
    ],
    ids=["nan-time", "inf-time", "nan-hash", "NA-pid", "null-ppid"],
)
def test_values_that_look_missing_are_values(
    cli: Any, tmp_path: Path, row: str, needles: list[str]
) -> None:
    """Only an empty field means 'no value': 'nan' is reported as what it is."""
    src = tmp_path / "nan.csv"
    src.write_text(csv_text([row]))
    refused(cli, tmp_path, src, *needles)


def test_text_that_looks_missing_is_kept(cli: Any, tmp_path: Path) -> None:
    src = tmp_path / "na.csv"
    src.write_text(csv_text(["0,100,1,NA,4096,anon,4096,11,1"]))
    ht = open_trace(accepted(cli, tmp_path, src)).load_host()
    assert ht.processes.column("comm").to_pylist() == ["NA"]


def test_field_over_4_mib(cli: Any, tmp_path: Path) -> None:
    big = "x" * (MAX_FIELD_BYTES + 1)
    src = tmp_path / "big.csv"
    src.write_text(csv_text([GOOD, f"0,100,1,{big},4096,anon,8192,12,2"]))
    refused(cli, tmp_path, src, "row 2", "column comm", "more than the 4 MiB a field may hold")


@pytest.mark.parametrize("before", [0, 1, 30000])
def test_row_over_4_mib_that_the_reader_cannot_hold(cli: Any, tmp_path: Path, before: int) -> None:
    big = "x" * (2 * MAX_FIELD_BYTES + 5)
    src = tmp_path / "huge.csv"
    src.write_text(csv_text([*many_rows(before), f"1,100,1,{big},4096,anon,8192,12,2"]))
    refused(cli, tmp_path, src, f"row {before + 1}", "longer than 4 MiB")


def test_hash_of_4_mib_digits_is_cut_in_the_message(cli: Any, tmp_path: Path) -> None:
    src = tmp_path / "digits.csv"
    src.write_text(csv_text([f"0,100,1,web,4096,anon,4096,{'1' * MAX_FIELD_BYTES},1"]))
    refused(cli, tmp_path, src, "row 1", "column content_hash", "characters)")


# ----------------------------------------------------------------------------- Parquet types


def _table(**replace: Any) -> pa.Table:
    t = pa.table(
        {
            "time_s": pa.array([0.0, 0.0]),
            "pid": pa.array([100, 100], pa.int64()),
            "comm": pa.array(["web", "web"]),
            "page_addr": pa.array([4096, 8192], pa.uint64()),
            "content_hash": pa.array([11, 12], pa.uint64()),
        }
    )
    for name, arr in replace.items():
        t = t.set_column(t.column_names.index(name), name, arr)
    return t


PARQUET_CASES = {
    "list-hash": ("content_hash", pa.array([[1], [2]], pa.list_(pa.uint64())), "type list"),
    "struct-hash": (
        "content_hash",
        pa.array([{"a": 1}, {"a": 2}], pa.struct([("a", pa.int64())])),
        "type struct",
    ),
    "binary-hash": ("content_hash", pa.array([b"1", b"2"], pa.binary()), "type binary"),
    "list-comm": ("comm", pa.array([["a"], ["b"]]), "type list"),
    "struct-comm": ("comm", pa.array([{"a": "x"}, {"a": "y"}]), "type struct"),
    "binary-comm": ("comm", pa.array([b"\xff\x00", b"w"], pa.binary()), "type binary"),
    "map-pid": (
        "pid",
        pa.array([[("a", 1)], [("b", 2)]], pa.map_(pa.string(), pa.int64())),
        "type map",
    ),
}


@pytest.mark.parametrize("case", sorted(PARQUET_CASES))
def test_nested_and_binary_parquet_columns(cli: Any, tmp_path: Path, case: str) -> None:
    column, arr, needle = PARQUET_CASES[case]
    src = tmp_path / "typed.parquet"
    pq.write_table(_table(**{column: arr}), src)
    refused(cli, tmp_path, src, f"column {column}", needle)


def test_parquet_string_over_4_mib(cli: Any, tmp_path: Path) -> None:
    src = tmp_path / "big.parquet"
    pq.write_table(_table(comm=pa.array(["web", "x" * (MAX_FIELD_BYTES + 1)])), src)
    refused(cli, tmp_path, src, "row 2", "column comm", "4 MiB")


# ----------------------------------------------------------------------------- contradictions


CONTRADICTIONS = {
    "frame-with-two-hashes": (
        [GOOD, "0,101,1,web,4096,anon,4096,12,1"],
        ["row 2", "column frame", "frame 1 has content hash 12 here but 11 at row 1"],
    ),
    "pid-with-two-ppids": (
        [GOOD, "0,100,2,web,4096,anon,8192,12,2"],
        ["row 2", "column ppid", "pid 100 has ppid 2 here but ppid 1 at row 1"],
    ),
    "pid-with-two-comms": (
        [GOOD, "0,100,1,db,4096,anon,8192,12,2"],
        ["row 2", "column comm", "pid 100 has comm 'db' here but comm 'web'"],
    ),
    "mapping-with-two-kinds": (
        [GOOD, "0,100,1,web,4096,heap,8192,12,2"],
        ["row 2", "column vma_kind", "mapping 0x1000 of pid 100 has vma_kind 'heap'"],
    ),
    "pid-0": (
        ["0,0,1,web,4096,anon,4096,11,1"],
        ["row 1", "column pid", "pid 0 is not a user process"],
    ),
    "ppid-given-once": (
        [GOOD, "0,100,,web,4096,anon,8192,12,2"],
        ["row 2", "column ppid", "has no ppid here but ppid 1 at row 1"],
    ),
}


@pytest.mark.parametrize("case", sorted(CONTRADICTIONS))
def test_contradictory_rows(cli: Any, tmp_path: Path, case: str) -> None:
    rows, needles = CONTRADICTIONS[case]
    src = tmp_path / "c.csv"
    src.write_text(csv_text(rows))
    refused(cli, tmp_path, src, *needles)


def test_the_same_values_in_another_snapshot_are_fine(cli: Any, tmp_path: Path) -> None:
    """A reparented process (new ppid) and a reused frame (new content) across snapshots."""
    src = tmp_path / "ok.csv"
    src.write_text(
        csv_text([GOOD, "10,100,7,web,4096,anon,4096,99,1", "10,101,1,x,4096,anon,4096,5,2"])
    )
    accepted(cli, tmp_path, src)


def test_ppid_zero_is_a_parent(cli: Any, tmp_path: Path) -> None:
    src = tmp_path / "init.csv"
    src.write_text(csv_text(["0,1,0,init,4096,anon,4096,11,1"]))
    accepted(cli, tmp_path, src)


def test_racy_pages_may_disagree(cli: Any, tmp_path: Path) -> None:
    """A page flagged RACY changed while it was read: its hash may differ from the frame's."""
    racy = int(S.PageFlag.RACY)
    src = tmp_path / "racy.csv"
    header = HEADER + ",flags"
    src.write_text(csv_text([GOOD + ",0", f"0,101,1,web,4096,anon,4096,12,1,{racy}"], header))
    accepted(cli, tmp_path, src)


def test_two_hashes_for_a_frame_found_across_spilled_buckets(tmp_path: Path) -> None:
    """A snapshot larger than the buffer: the frame check spills and still finds it."""
    rows = many_rows(400)
    rows.append("0,101,1,web,4096,anon,4096,999,300")  # frame 300 held hash 300 at row 281
    src = tmp_path / "big.csv"
    src.write_text(csv_text(rows))
    with pytest.raises(TraceFormatError) as info:
        ingest(src, tmp_path / "o", sort_buffer_rows=50, chunk_rows=20)
    msg = info.value.one_line()
    assert "row 401, column frame" in msg
    assert "frame 300 has content hash 999 here but 300 at row 281" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.csv"]


def test_consistent_rows_across_chunks_are_fine(tmp_path: Path) -> None:
    """Rows of one process split over chunks and spilled runs: no false contradiction."""
    rng = np.random.default_rng(3)
    rows = many_rows(600)
    order = rng.permutation(len(rows))
    src = tmp_path / "shuffled.csv"
    src.write_text(csv_text([rows[i] for i in order]))
    result = ingest(src, tmp_path / "o", sort_buffer_rows=64, chunk_rows=17)
    assert result.spilled_runs > 0
    assert result.rows == 600


def test_input_is_read_through_the_descriptor_opened_first(tmp_path: Path) -> None:
    """Every pass reads the file that was checked, even if the path now names another."""
    from planner.trace.ingest import _Input

    src = tmp_path / "a.csv"
    src.write_text(csv_text([GOOD]))
    inp = _Input(src)
    try:
        src.rename(tmp_path / "moved.csv")
        os.mkfifo(src)  # the path is now a FIFO: opening it would block
        with inp.raw() as f:
            assert f.read(6) == b"time_s"
    finally:
        inp.close()


def test_without_proc_the_path_must_still_be_the_same_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from planner.trace.ingest import _Input

    real = pa.OSFile

    def no_proc(path: str, mode: str = "rb") -> Any:
        if path.startswith("/proc/self/fd/"):
            raise OSError("no /proc here")
        return real(path, mode)

    monkeypatch.setattr(pa, "OSFile", no_proc)
    src = tmp_path / "a.csv"
    src.write_text(csv_text([GOOD]))
    accepted_trace = ingest(src, tmp_path / "t")
    assert accepted_trace.rows == 1
    inp = _Input(src)
    try:
        src.unlink()
        src.write_text(csv_text([GOOD]))  # another file under the same name
        with pytest.raises(TraceFormatError, match="was replaced while it was being read"):
            inp.raw()
    finally:
        inp.close()
