"""``export`` writes the interchange format; ``ingest(export(trace))`` gives the trace back."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from planner.errors import OutputExistsError, UsageProblem
from planner.testing.builder import World
from planner.trace import schema as S
from planner.trace.export import export_format, export_trace
from planner.trace.ingest import ingest
from planner.trace.io import HostTrace, open_trace


def _world(host: str = "web-1") -> World:
    """Fork sharing, COW, zero pages, THP flags, labels, cgroups, an exit and pid reuse."""
    w = World(host=host)
    w.spawn(100, comm="master", labels={"svc": "web"}, cgroup="/web", uid=33)
    w.map(100, 0x10000, [1, 1, 2, 0], kind="heap")
    w.map(100, 0x7F0000, [3, 4, 5], kind="anon", thp=True)
    w.snapshot(0.0)
    w.fork(100, 101, comm="worker")
    w.write(101, 0x11000, 7)
    w.snapshot(10.0)
    w.exit(100)
    w.spawn(100, comm="again")
    w.map(100, 0x10000, [1, 9], kind="stack")
    w.snapshot(20.25)
    return w


def _tables(ht: HostTrace) -> dict[str, Any]:
    return {name: getattr(ht, name) for name in ("pages", "processes", "mappings")}


@pytest.mark.parametrize("suffix", ["csv", "csv.gz", "parquet"])
def test_round_trip_is_exact(tmp_path: Path, suffix: str) -> None:
    _world().write_trace(tmp_path / "orig")
    result = export_trace(tmp_path / "orig", tmp_path / f"x.{suffix}")
    assert result.rows == 7 + 14 + 9
    assert result.columns[:10] == (*S.INTERCHANGE_HEADER, "is_zero")
    ingest(tmp_path / f"x.{suffix}", tmp_path / "back")
    a = open_trace(tmp_path / "orig").load_host()
    b = open_trace(tmp_path / "back").load_host()
    assert b.host == "web-1"
    assert b.times_s.tolist() == a.times_s.tolist()
    for name, table in _tables(a).items():
        assert table.equals(getattr(b, name)), name


def test_minimal_export_keeps_pages_frames_hashes(tmp_path: Path) -> None:
    w = World(host="h")
    w.spawn(1, comm="a")
    w.map(1, 4096, [1, 0, 2])
    w.snapshot(0.0)
    w.fork(1, 2)
    w.write(2, 8192, 5)
    w.snapshot(1.5)
    w.write_trace(tmp_path / "orig")
    result = export_trace(tmp_path / "orig", tmp_path / "x.csv", minimal=True)
    header = (tmp_path / "x.csv").read_text().splitlines()[0].replace('"', "")
    assert header == ",".join([*S.INTERCHANGE_HEADER, "is_zero", "host"])
    assert result.columns == (*S.INTERCHANGE_HEADER, "is_zero", "host")
    ingest(tmp_path / "x.csv", tmp_path / "back")
    a = open_trace(tmp_path / "orig").load_host()
    b = open_trace(tmp_path / "back").load_host()
    assert a.pages.equals(b.pages)  # frame ids are kept, not renumbered
    assert a.mappings.select(["snapshot_id", "pid", "start", "end", "kind"]).equals(
        b.mappings.select(["snapshot_id", "pid", "start", "end", "kind"])
    )


def test_export_columns_and_values(tmp_path: Path) -> None:
    _world().write_trace(tmp_path / "orig")
    export_trace(tmp_path / "orig", tmp_path / "x.parquet")
    table = pq.read_table(tmp_path / "x.parquet")
    first = table.slice(0, 1).to_pylist()[0]
    assert first["time_s"] == 0.0
    assert (first["pid"], first["ppid"], first["comm"]) == (100, 1, "master")
    assert (first["vma_kind"], first["vma_start"], first["page_addr"]) == ("heap", 0x10000, 0x10000)
    assert first["labels"] == '{"svc": "web"}'
    assert first["cgroup"] == "/web"
    assert first["uid"] == 33
    zero = [r["is_zero"] for r in table.to_pylist() if r["time_s"] == 0.0]
    assert zero == [0, 0, 0, 1, 0, 0, 0]
    meta = table.schema.metadata or {}
    assert b"ksm_trace.export" in meta
    assert open_trace(tmp_path / "orig").trace_hash.encode() in meta[b"ksm_trace.export"]


def test_csv_is_plain_interchange(tmp_path: Path) -> None:
    """A consumer that knows nothing about us can read the CSV with default inference."""
    _world().write_trace(tmp_path / "orig")
    export_trace(tmp_path / "orig", tmp_path / "x.csv")
    table = pacsv.read_csv(tmp_path / "x.csv")
    assert table.num_rows == 30
    assert set(S.INTERCHANGE_HEADER) <= set(table.column_names)


def test_multi_host_round_trip(tmp_path: Path) -> None:
    a, b = _world("a"), _world("b")
    with_trace = tmp_path / "two"
    from planner.trace.io import TraceWriter

    with TraceWriter(with_trace, source="test") as tw:
        a._emit(tw.host("a"))
        b._emit(tw.host("b"))
    export_trace(with_trace, tmp_path / "x.parquet")
    ingest(tmp_path / "x.parquet", tmp_path / "back")
    back = open_trace(tmp_path / "back")
    assert back.hosts == ("a", "b")
    for host in ("a", "b"):
        orig = open_trace(with_trace).load_host(host)
        got = back.load_host(host)
        assert orig.pages.equals(got.pages)


def test_output_is_private_and_atomic(tmp_path: Path) -> None:
    _world().write_trace(tmp_path / "orig")
    out = tmp_path / "x.csv"
    export_trace(tmp_path / "orig", out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    before = out.read_bytes()
    with pytest.raises(OutputExistsError):
        export_trace(tmp_path / "orig", out)
    assert out.read_bytes() == before
    export_trace(tmp_path / "orig", out, overwrite=True, minimal=True)
    assert out.read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orig", "x.csv"]


def test_format_from_suffix() -> None:
    assert export_format(Path("a.CSV")) == "csv"
    assert export_format(Path("a.csv.gz")) == "csv.gz"
    assert export_format(Path("a.pq")) == "parquet"
    with pytest.raises(UsageProblem):
        export_format(Path("a.json"))


def test_empty_snapshots_are_counted(tmp_path: Path) -> None:
    w = World(host="h")
    w.spawn(1)
    w.map(1, 4096, [1])
    w.snapshot(0.0)
    w.exit(1)
    w.snapshot(1.0)
    w.write_trace(tmp_path / "t")
    result = export_trace(tmp_path / "t", tmp_path / "x.csv")
    assert (result.snapshots, result.empty_snapshots, result.rows) == (2, 1, 1)


def _with_counts(src: Path, out: Path, *, soft_dirty: bool) -> None:
    """A copy of the trace at ``src`` whose pages carry change counts (a sampled trace)."""
    import numpy as np
    import pyarrow as pa

    from planner.trace.io import TraceWriter

    ht = open_trace(src).load_host()
    n = ht.pages.num_rows
    rng = np.random.default_rng(3)
    samples = rng.integers(0, 20, n).astype(np.uint16)
    checks = (samples * rng.random(n)).astype(np.uint16)
    counts = {
        "samples": samples,
        "content_checks": checks,
        "content_changes": (checks * rng.random(n)).astype(np.uint16),
        "frame_changes": (samples * rng.random(n) * 0.2).astype(np.uint16),
        "absent_samples": (samples * rng.random(n) * 0.1).astype(np.uint16),
        "same_content_writes": (samples * rng.random(n) * 0.3).astype(np.uint16),
    }
    unsampled = np.zeros(n, bool)
    unsampled[::5] = True  # pages the sampler never looked at
    pages = ht.pages
    for name, values in counts.items():
        if name == "same_content_writes" and not soft_dirty:
            continue
        pages = pages.drop_columns([name]).append_column(name, pa.array(values, mask=unsampled))
    # the first other content (schema v3): a content of the trace, where a change was seen
    hashes = pages["content_hash"].fill_null(0).to_numpy()
    other = hashes[rng.integers(0, n, n)]
    changed = (counts["content_changes"] > 0) & ~unsampled
    other_col = pa.array(other, pa.uint64(), mask=~changed)
    pages = pages.drop_columns(["other_hash"]).append_column("other_hash", other_col)
    snaps = ht.snapshots.to_pylist()
    with TraceWriter(out, source="test") as tw:
        hw = tw.host(ht.host)
        for snap in snaps:
            sid = snap["snapshot_id"]
            snap.update(sample_ms=100.0, samples=20, soft_dirty=soft_dirty)
            hw.add_snapshot(
                snap,
                processes=ht.processes.filter(pa.compute.equal(ht.processes["snapshot_id"], sid)),
                mappings=ht.mappings.filter(pa.compute.equal(ht.mappings["snapshot_id"], sid)),
                pages=pages.filter(pa.compute.equal(pages["snapshot_id"], sid)),
            )


@pytest.mark.parametrize("soft_dirty", [False, True])
@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_change_counts_round_trip(tmp_path: Path, suffix: str, soft_dirty: bool) -> None:
    _world().write_trace(tmp_path / "plain")
    _with_counts(tmp_path / "plain", tmp_path / "orig", soft_dirty=soft_dirty)
    result = export_trace(tmp_path / "orig", tmp_path / f"x.{suffix}")
    counts = [c for c in S.INTERCHANGE_CHANGES if soft_dirty or c != "same_content_writes"]
    assert result.columns[-len(counts) :] == tuple(counts)
    ingest(tmp_path / f"x.{suffix}", tmp_path / "back")
    a = open_trace(tmp_path / "orig").load_host().pages
    b = open_trace(tmp_path / "back").load_host().pages
    for c in S.INTERCHANGE_CHANGES:
        assert b.column(c).equals(a.column(c)), c
    assert 0 < a.column("other_hash").null_count < a.num_rows
    assert a.column("samples").null_count == len(range(0, a.num_rows, 5))
    # an unsampled trace exports no count column
    plain = export_trace(tmp_path / "plain", tmp_path / f"p.{suffix}")
    assert not set(plain.columns) & set(S.INTERCHANGE_COUNTS)
