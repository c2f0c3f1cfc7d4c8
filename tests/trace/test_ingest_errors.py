"""``ksm-planner ingest`` rejects bad input: one line naming file, row, column; exit 4; no output.

One test case per class of bad input. Each checks the exit code, that stderr is exactly one
error line (no traceback) naming the file and, where there is one, the 1-based data row and
the column, and that nothing is left at ``--out`` or next to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

HEADER = "time_s,pid,ppid,comm,vma_start,vma_kind,page_addr,content_hash,frame"
GOOD = "0,100,1,web,4096,anon,4096,11,1"


def csv_text(rows: list[str], header: str = HEADER) -> str:
    return "\n".join([header, *rows]) + "\n"


def _run_bad(cli: Any, tmp_path: Path, src: Path) -> str:
    """Ingest ``src``; assert exit 4, one clean error line, nothing written. Return the line."""
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
    assert set(tmp_path.iterdir()) == before  # no temporary or spill directory left behind
    assert str(src) in lines[0]
    return lines[0]


# (case id, CSV text, substrings the error line must contain)
CSV_CASES = [
    (
        "missing-required-column",
        "time_s,pid,page_addr\n0,100,4096\n",
        ["missing required column content_hash"],
    ),
    (
        "not-a-trace",
        "name,age,city\nbob,5,paris\n",
        ["not an interchange trace", "name,age,city"],
    ),
    (
        "empty-file",
        "",
        ["is empty"],
    ),
    (
        "header-only",
        HEADER + "\n",
        ["no data rows"],
    ),
    (
        "non-numeric-hash",
        csv_text([GOOD, "0,100,1,web,4096,anon,8192,0xzz,2"]),
        ["row 2", "column content_hash", "'0xzz'"],
    ),
    (
        "negative-pid",
        csv_text([GOOD, "0,-7,1,web,4096,anon,8192,12,2"]),
        ["row 2", "column pid", "negative pid -7"],
    ),
    (
        "negative-ppid",
        csv_text([GOOD, GOOD.replace("0,100,1,", "5,100,-1,")]),
        ["row 2", "column ppid", "negative ppid -1"],
    ),
    (
        "negative-frame",
        csv_text([GOOD, "0,100,1,web,4096,anon,8192,12,-3"]),
        ["row 2", "column frame", "'-3'"],
    ),
    (
        "pid-out-of-range",
        csv_text([GOOD, "0,3000000000,1,web,4096,anon,8192,12,2"]),
        ["row 2", "column pid", "out of range"],
    ),
    (
        "unaligned-page",
        csv_text([GOOD, GOOD, "0,100,1,web,4096,anon,8200,12,2"]),
        ["row 3", "column page_addr", "not a multiple of 4096"],
    ),
    (
        "vma-start-above-page",
        csv_text([GOOD, "0,100,1,web,16384,anon,8192,12,2"]),
        ["row 2", "column vma_start", "above its page"],
    ),
    (
        "overlapping-mappings",
        csv_text([GOOD, "0,100,1,web,4096,anon,8192,12,2", "0,100,1,web,8192,anon,12288,13,3"]),
        ["row 3", "column vma_start", "overlaps"],
    ),
    (
        "same-page-twice",
        csv_text([GOOD, "0,100,1,web,4096,anon,8192,12,2", "0,100,1,web,4096,anon,4096,13,3"]),
        ["row 3", "column page_addr", "appears twice", "first at row 1"],
    ),
    (
        "time-backwards",
        csv_text(["10,100,1,web,4096,anon,4096,11,1", "20,100,1,web,4096,anon,4096,11,1", GOOD]),
        ["row 3", "column time_s", "goes backwards"],
    ),
    (
        "negative-time",
        csv_text(["-1,100,1,web,4096,anon,4096,11,1"]),
        ["row 1", "column time_s"],
    ),
    (
        "empty-hash",
        csv_text([GOOD, "0,100,1,web,4096,anon,8192,,2"]),
        ["row 2", "column content_hash", "empty"],
    ),
    (
        "frame-for-some-pages-only",
        csv_text([GOOD, "0,100,1,web,4096,anon,8192,12,"]),
        ["row 2", "column frame"],
    ),
    (
        "bad-is-zero",
        csv_text(["0,100,4096,11,2"], header="time_s,pid,page_addr,content_hash,is_zero"),
        ["row 1", "column is_zero", "0 or 1"],
    ),
    (
        "truncated-short-row",
        csv_text([GOOD, "0,100,1,web,4096,anon,8192,12,2", "0,100,1,web,40"]),
        ["row 3", "column vma_kind", "expected 9 fields, got 5"],
    ),
    (
        "truncated-mid-field",
        csv_text([GOOD]) + "0,100,1,web,4096,anon,8192,123",
        ["row 2", "column content_hash", "cut"],
    ),
    (
        "binary-garbage",
        "\x00\x01\x02\x03 not text",
        ["contains a NUL byte", "binary data, not CSV text"],
    ),
    (
        "change-count-above-samples",
        csv_text(
            [GOOD + ",3,3,2", "0,100,1,web,4096,anon,8192,12,2,3,2,5"],
            HEADER + ",samples,content_checks,frame_changes",
        ),
        ["row 2", "column frame_changes", "5 is more than samples (3)"],
    ),
    (
        "content-changes-above-checks",
        csv_text([GOOD + ",4,1,2"], HEADER + ",samples,content_checks,content_changes"),
        ["row 1", "column content_changes", "more than content_checks (1)"],
    ),
    (
        "counts-without-samples-column",
        csv_text([GOOD + ",1"], HEADER + ",content_changes"),
        ["row 1", "column content_changes", "need the samples column"],
    ),
    (
        "count-without-samples-value",
        csv_text([GOOD + ",,1"], HEADER + ",samples,absent_samples"),
        ["row 1", "column absent_samples", "samples is empty"],
    ),
    (
        "count-out-of-range",
        csv_text([GOOD + ",70000"], HEADER + ",samples"),
        ["row 1", "column samples", "70000 is not a count from 0 to 65535"],
    ),
    (
        "other-content-without-a-change",
        csv_text(
            [GOOD + ",3,3,1,99", "0,100,1,web,4096,anon,8192,12,2,3,3,0,98"],
            HEADER + ",samples,content_checks,content_changes,other_hash",
        ),
        ["row 2", "column other_hash", "content_changes counts no change"],
    ),
    (
        "other-content-without-counts",
        csv_text([GOOD + ",99"], HEADER + ",other_hash"),
        ["row 1", "column other_hash", "needs the change counts"],
    ),
    (
        "negative-count",
        csv_text([GOOD + ",2,-1"], HEADER + ",samples,content_checks"),
        ["row 1", "column content_checks"],
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in CSV_CASES], ids=[c[0] for c in CSV_CASES]
)
def test_bad_csv_is_rejected(cli: Any, tmp_path: Path, text: str, expected: list[str]) -> None:
    src = tmp_path / "in.csv"
    src.write_bytes(text.encode())
    line = _run_bad(cli, tmp_path, src)
    for part in expected:
        assert part in line, line


def test_multi_host_time_backwards_names_the_host(cli: Any, tmp_path: Path) -> None:
    header = HEADER + ",host"
    rows = [
        "0,100,1,web,4096,anon,4096,11,1,a",
        "5,100,1,web,4096,anon,4096,11,1,b",
        "10,100,1,web,4096,anon,4096,11,1,a",
        "3,100,1,web,4096,anon,4096,11,1,b",  # b goes back; a's rows interleave legitimately
    ]
    src = tmp_path / "hosts.csv"
    src.write_text(csv_text(rows, header))
    line = _run_bad(cli, tmp_path, src)
    assert "row 4" in line
    assert "column time_s" in line
    assert "host b" in line


def test_spilled_snapshot_duplicate_is_found_across_runs(tmp_path: Path) -> None:
    """A duplicate page in different spilled runs is still reported with both rows."""
    from planner.errors import TraceFormatError
    from planner.trace.ingest import ingest

    rows = [f"0,100,1,web,4096,anon,{4096 * (i + 1)},{i},{i}" for i in range(50)]
    rows.append("0,100,1,web,4096,anon,40960,99,99")  # the page of row 10 again
    src = tmp_path / "dup.csv"
    src.write_text(csv_text(rows))
    with pytest.raises(TraceFormatError) as info:
        ingest(src, tmp_path / "o", sort_buffer_rows=8, chunk_rows=5)
    msg = info.value.one_line()
    assert "row 51, column page_addr" in msg
    assert "first at row 10" in msg
    assert not (tmp_path / "o").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dup.csv"]


def _interchange_table() -> pa.Table:
    return pa.table(
        {
            "time_s": pa.array([0.0, 0.0, 10.0]),
            "pid": pa.array([100, 100, 100], pa.int32()),
            "page_addr": pa.array([4096, 8192, 4096], pa.uint64()),
            "content_hash": pa.array([1, 2, 3], pa.uint64()),
        }
    )


def test_truncated_parquet_without_footer(cli: Any, tmp_path: Path) -> None:
    good = tmp_path / "good.parquet"
    pq.write_table(_interchange_table(), good)
    data = good.read_bytes()
    src = tmp_path / "cut.parquet"
    src.write_bytes(data[: len(data) // 2])
    good.unlink()
    line = _run_bad(cli, tmp_path, src)
    assert "not a readable Parquet file" in line
    assert "truncated" in line


def test_parquet_with_mistyped_hash_column(cli: Any, tmp_path: Path) -> None:
    table = _interchange_table().set_column(
        3, "content_hash", pa.array(["1", "2", "three"], pa.string())
    )
    src = tmp_path / "typed.parquet"
    pq.write_table(table, src)
    line = _run_bad(cli, tmp_path, src)
    assert "row 3, column content_hash" in line
    assert "'three'" in line


def test_parquet_with_negative_pid(cli: Any, tmp_path: Path) -> None:
    table = _interchange_table().set_column(1, "pid", pa.array([100, -2, 100], pa.int64()))
    src = tmp_path / "neg.parquet"
    pq.write_table(table, src)
    line = _run_bad(cli, tmp_path, src)
    assert "row 2, column pid" in line


def test_parquet_random_table_is_not_a_trace(cli: Any, tmp_path: Path) -> None:
    src = tmp_path / "random.parquet"
    pq.write_table(pa.table({"a": [1, 2], "b": ["x", "y"]}), src)
    line = _run_bad(cli, tmp_path, src)
    assert "not an interchange trace" in line


def test_v0_negative_snapshot_id(cli: Any, tmp_path: Path) -> None:
    table = pa.table(
        {
            "snapshot_id": pa.array([0, -1], pa.int32()),
            "snapshot_ts": pa.array([1.7e9, 1.7e9 + 10]),
            "pid": pa.array([100, 100], pa.int32()),
            "page_addr": pa.array([4096, 4096], pa.uint64()),
            "content_hash": pa.array([1, 2], pa.uint64()),
            "pfn": pa.array([77, 78], pa.uint64()),
        }
    )
    src = tmp_path / "v0.parquet"
    pq.write_table(table, src)
    line = _run_bad(cli, tmp_path, src)
    assert "row 2, column snapshot_id" in line


def test_out_exists_is_a_usage_error(cli: Any, tmp_path: Path) -> None:
    src = tmp_path / "ok.csv"
    src.write_text(csv_text([GOOD]))
    out = tmp_path / "exists"
    out.mkdir()
    code, _, err = cli(["ingest", src, "--out", out])
    assert code == 2
    assert "already exists" in err
    assert list(out.iterdir()) == []


def test_missing_source_file(cli: Any, tmp_path: Path) -> None:
    code, _, err = cli(["ingest", tmp_path / "nope.csv", "--out", tmp_path / "o"])
    assert code == 4
    assert "does not exist" in err
    assert not (tmp_path / "o").exists()


def test_parquet_float_hash_column_loses_precision(cli: Any, tmp_path: Path) -> None:
    """A hash stored as double (as CSV type inference does for values above 2^63) is rejected."""
    table = _interchange_table().set_column(
        3, "content_hash", pa.array([1.0, 2.0, 1.0653106456947493e19], pa.float64())
    )
    src = tmp_path / "float.parquet"
    pq.write_table(table, src)
    line = _run_bad(cli, tmp_path, src)
    assert "row 3, column content_hash" in line
    assert "floating-point" in line


def test_host_option_with_host_column_is_usage_error(cli: Any, tmp_path: Path) -> None:
    src = tmp_path / "h.csv"
    src.write_text(csv_text([GOOD + ",a"], header=HEADER + ",host"))
    code, _, err = cli(["ingest", src, "--out", tmp_path / "o", "--host", "x"])
    assert code == 2
    assert "host column" in err
    assert not (tmp_path / "o").exists()
