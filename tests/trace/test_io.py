"""Streaming parts of the trace reader/writer: ``add_pages``, ``iter_snapshot_pages``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from planner.errors import TraceFormatError, UsageProblem
from planner.testing.builder import World
from planner.trace import schema as S
from planner.trace.flat import FlatConverter
from planner.trace.io import TraceWriter, open_trace


def _rows(n: int) -> pa.Table:
    return pa.table(
        {
            "pid": pa.array([1] * n, pa.int32()),
            "page_addr": pa.array([4096 * (i + 1) for i in range(n)], pa.uint64()),
            "content_hash": pa.array(list(range(n)), pa.uint64()),
        }
    )


def test_add_pages_streams_a_snapshot_in_chunks(tmp_path: Path) -> None:
    conv = FlatConverter("h", snapshot_meta={"hash_algo": "test"})
    rows = _rows(10)
    with TraceWriter(tmp_path / "t", source="test", row_group_rows=3) as tw:
        hw = tw.host("h")
        conv.begin(0, 0.0)
        for i in range(0, 10, 4):
            hw.add_pages(conv.feed(rows.slice(i, 4)))
        snap, procs, maps = conv.end()
        hw.add_snapshot(snap, processes=procs, mappings=maps, pages=S.PAGES_SCHEMA.empty_table())
    ht = open_trace(tmp_path / "t").load_host()
    assert ht.pages.column("content_hash").to_pylist() == list(range(10))
    assert ht.processes.column("pages").to_pylist() == [10]
    assert ht.mappings.column("present_pages").to_pylist() == [10]


def test_add_pages_only_for_a_new_snapshot(tmp_path: Path) -> None:
    conv = FlatConverter("h", snapshot_meta={"hash_algo": "test"})
    snap, procs, maps, pages = conv.convert(0, 0.0, _rows(2))
    with TraceWriter(tmp_path / "t", source="test") as tw:
        hw = tw.host("h")
        hw.add_snapshot(snap, processes=procs, mappings=maps, pages=pages)
        with pytest.raises(TraceFormatError, match="snapshot ids must increase"):
            hw.add_pages(pages)  # snapshot 0 is complete already
        mixed = pa.concat_tables(
            [pages, pages.set_column(0, "snapshot_id", pa.array([1, 1], pa.int32()))]
        )
        with pytest.raises(TraceFormatError, match="one new snapshot"):
            hw.add_pages(mixed)  # two snapshots in one call
    assert open_trace(tmp_path / "t").load_host().pages.num_rows == 2


def test_iter_snapshot_pages_batches_across_snapshots(tmp_path: Path) -> None:
    w = World(host="h")
    w.spawn(1)
    w.map(1, 4096, [1, 2, 3])
    for t in range(4):
        w.snapshot(float(t))
    w.write_trace(tmp_path / "t")
    trace = open_trace(tmp_path / "t")
    got = [
        (sid, t.num_rows)
        for sid, t in trace.iter_snapshot_pages("h", ["content_hash"], batch_rows=2)
    ]
    assert got == [(0, 3), (1, 3), (2, 3), (3, 3)]
    with pytest.raises(TraceFormatError, match="no column"):
        list(trace.iter_snapshot_pages("h", ["nope"]))
    with pytest.raises(UsageProblem, match="no host 'x'") as info:
        trace.read_table("x", "pages")
    assert info.value.hint == "hosts are: h"


def _fed_columns(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The columns of every table the pages check is fed from now on."""
    from planner.trace import check

    seen: list[list[str]] = []
    feed = check.PagesCheck.feed

    def spy(self: check.PagesCheck, pages: pa.Table) -> None:
        seen.append(list(pages.column_names))
        feed(self, pages)

    monkeypatch.setattr(check.PagesCheck, "feed", spy)
    return seen


def _two_snapshots(out: Path) -> None:
    w = World(host="h")
    w.spawn(1)
    w.map(1, 4096, [1, 2, 3])
    w.snapshot(0.0)
    w.snapshot(1.0)
    w.write_trace(out)


def test_change_counts_all_null_by_the_footer_are_not_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without sampling, the per-page change counts are all null and the footer's
    statistics say so: they are neither decoded nor checked; a reader that asks for them
    gets them as nulls of their schema types."""
    from planner.trace.check import PAGE_CHANGE_COLUMNS

    _two_snapshots(tmp_path / "t")
    seen = _fed_columns(monkeypatch)
    trace = open_trace(tmp_path / "t")
    got = list(trace.iter_snapshot_pages("h", ["content_hash"], batch_rows=2))
    assert [(sid, t.num_rows) for sid, t in got] == [(0, 3), (1, 3)]
    assert seen
    assert all(not set(PAGE_CHANGE_COLUMNS) & set(cols) for cols in seen)
    seen.clear()
    asked = ["content_hash", *PAGE_CHANGE_COLUMNS]
    wanted = list(trace.iter_snapshot_pages("h", asked))
    for _, t in wanted:
        assert t.column_names == ["snapshot_id", *asked]
        for c in PAGE_CHANGE_COLUMNS:
            assert t.column(c).null_count == t.num_rows == 3
            assert t.schema.field(c).type == S.PAGES_SCHEMA.field(c).type
            assert t.column(c).to_pylist() == [None] * 3
        # one zeroed buffer behind every such column (pa.nulls zeroed one per column: 12 B
        # per row for the six, 192 MB of a 16 M-page snapshot)
        buffers = {t.column(c).chunk(0).buffers()[1].address for c in PAGE_CHANGE_COLUMNS}
        assert len(buffers) == 1
    assert seen
    assert all(not set(PAGE_CHANGE_COLUMNS) & set(cols) for cols in seen)


def test_change_counts_without_statistics_are_decoded_and_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pages file whose footer has no statistics for the change counts (written before
    they were kept) proves nothing: its counts are decoded and checked as before."""
    from planner.trace.check import PAGE_CHANGE_COLUMNS

    options = {**S.PARQUET_OPTIONS["pages"], "write_statistics": ["snapshot_id", "pid"]}
    monkeypatch.setitem(S.PARQUET_OPTIONS, "pages", options)
    _two_snapshots(tmp_path / "t")
    seen = _fed_columns(monkeypatch)
    got = list(open_trace(tmp_path / "t").iter_snapshot_pages("h", ["content_hash"]))
    assert [t.num_rows for _, t in got] == [3, 3]
    assert seen
    assert all(set(PAGE_CHANGE_COLUMNS) <= set(cols) for cols in seen)


@pytest.mark.parametrize("batch_rows", [1, 1000], ids=["batches-ahead", "one-batch"])
def test_pages_decoded_while_hashed_come_out_only_if_the_hash_matches(
    tmp_path: Path, batch_rows: int
) -> None:
    """The pages file is decoded and checked while it is hashed; a file that decodes and
    checks well but does not match its manifest's SHA-256 yields nothing, however many
    batches were decoded before the hash was known."""
    import json

    from planner.testing.tamper import manifest, write_manifest
    from planner.trace.io import _trace_hash

    w = World(host="h")
    w.spawn(1)
    w.map(1, 4096, list(range(1, 41)))
    w.snapshot(0.0)
    w.snapshot(1.0)
    w.write_trace(tmp_path / "t")
    good = [t.num_rows for t in open_trace(tmp_path / "t").iter_pages("h", batch_rows=batch_rows)]
    assert sum(good) == 80
    doc = manifest(tmp_path / "t")
    doc["files"]["host=h/pages.parquet"]["sha256"] = "0" * 64  # the file: intact, valid
    doc["trace_hash"] = _trace_hash(doc["files"])
    write_manifest(tmp_path / "t", json.loads(json.dumps(doc)))
    got: list[pa.Table] = []
    with pytest.raises(TraceFormatError, match="does not match the SHA-256"):
        got.extend(open_trace(tmp_path / "t").iter_pages("h", batch_rows=batch_rows))
    assert got == []
    with pytest.raises(TraceFormatError, match="does not match the SHA-256"):
        list(open_trace(tmp_path / "t").iter_snapshot_pages("h", ["content_hash"]))


def test_read_ahead_keeps_no_item_the_caller_took() -> None:
    """A taken item is the caller's alone: once the caller drops it, it is gone, before the
    next one is asked for (a snapshot's pages held by the generator were ~200 MB of a 4 M-page
    replay's peak)."""
    import gc
    import weakref

    from planner.trace.io import read_ahead

    class Item:
        pass

    refs: list[weakref.ref[Item]] = []

    def made() -> Item:
        item = Item()
        refs.append(weakref.ref(item))
        return item

    def items() -> Iterator[Item]:
        for _ in range(3):
            yield made()

    ahead = read_ahead(items())
    first = next(ahead)
    assert refs[0]() is first
    del first
    gc.collect()
    assert refs[0]() is None
    assert len(list(ahead)) == 2


def test_read_ahead_makes_the_next_item_once_this_one_is_taken_and_not_before() -> None:
    """One item ahead, never two (each is a snapshot of up to ~200 MB at 4 M pages), and the
    producer waits without spinning while the caller holds an item."""
    import time

    from planner.trace.io import read_ahead

    made: list[int] = []

    def items() -> Iterator[int]:
        for i in range(4):
            made.append(i)
            yield i

    ahead = read_ahead(items())
    for i in range(3):
        assert next(ahead) == i
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline and len(made) < i + 2:
            time.sleep(0.01)
        t_cpu = time.process_time()
        time.sleep(0.3)  # the caller works on item i
        assert made == list(range(i + 2)), made  # item i + 1 made, i + 2 not
        assert time.process_time() - t_cpu < 0.1  # the producer waits, it does not spin
    assert list(ahead) == [3]


def test_read_ahead_keeps_order_raises_and_stops() -> None:
    """The snapshot read-ahead: items in order, the source's exception raised in the
    consumer, and closing early stops the thread and closes the source."""
    import threading

    from planner.errors import TraceFormatError
    from planner.trace.io import read_ahead

    assert list(read_ahead(iter(range(50)))) == list(range(50))

    def broken() -> Iterator[int]:
        yield 1
        raise TraceFormatError("pages.parquet: row 7: bad")

    failing = read_ahead(broken())
    assert next(failing) == 1
    with pytest.raises(TraceFormatError, match="row 7"):
        next(failing)

    closed = []

    def endless() -> Iterator[int]:
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.append(True)

    ahead = read_ahead(endless())
    assert [next(ahead) for _ in range(3)] == [0, 1, 2]
    ahead.close()
    assert closed == [True]
    assert not [t for t in threading.enumerate() if t.name == "ksm-planner-read-ahead"]


def test_streamed_pages_hold_one_buffer_not_the_files_compressed_bytes(tmp_path: Path) -> None:
    """Streaming a pages file holds a read buffer, not its row groups' column chunks:
    pyarrow's default (pre-buffering) read every row group's bytes at the first batch and
    kept them until the last, the whole compressed file beside what was decoded (398 MB
    of a 16 M-page trace). The bytes it reads through a Python file object are Python
    objects, which tracemalloc sees."""
    import tracemalloc

    from planner.testing.synth import SynthSpec, write_synthetic_trace

    spec = SynthSpec(pages=300_000, processes=4, snapshots=3, interval_s=5.0)
    write_synthetic_trace(spec, tmp_path / "t")
    tr = open_trace(tmp_path / "t")
    host = tr.hosts[0]
    size = (tmp_path / "t" / f"host={host}" / "pages.parquet").stat().st_size
    assert size > 4 << 20  # (several 1 MiB buffers' worth a row group)
    for hashed in (False, True):  # (the second time, this process knows the file's hash)
        tracemalloc.start()
        try:
            peak = 0
            rows = 0
            for batch in tr.iter_pages(host, ["content_hash"], batch_rows=1 << 15):
                rows += batch.num_rows
                peak = max(peak, tracemalloc.get_traced_memory()[0])
        finally:
            tracemalloc.stop()
        assert rows == tr.pages_rows(host)
        assert peak < size // 4, (hashed, peak, size)
