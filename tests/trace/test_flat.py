"""The flat-rows converter: streaming in chunks gives exactly the one-call result."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from planner.errors import TraceFormatError
from planner.trace.flat import FlatConverter, lookup_rows

PAGE = 4096


def _rows(seed: int, *, with_vma: bool, with_frame: bool) -> pa.Table:
    """Random sorted flat rows: few pids, runs of contiguous pages, some gaps."""
    rng = np.random.default_rng(seed)
    pids, addrs, vmas = [], [], []
    for pid in sorted(
        rng.choice(np.arange(1, 50), size=rng.integers(1, 6), replace=False).tolist()
    ):
        addr = 0x10000
        for _ in range(rng.integers(1, 5)):  # mappings
            start = addr
            for _ in range(rng.integers(1, 40)):
                if rng.random() < 0.8:  # present page
                    pids.append(pid)
                    addrs.append(addr)
                    vmas.append(start)
                addr += PAGE
            addr += PAGE * int(rng.integers(1, 4))
    n = len(pids)
    cols: dict[str, pa.Array] = {
        "pid": pa.array(pids, pa.int32()),
        "page_addr": pa.array(addrs, pa.uint64()),
        "content_hash": pa.array(rng.integers(0, 20, n).astype(np.uint64)),
        "is_zero": pa.array(rng.random(n) < 0.1),
        "comm": pa.array([f"c{p % 3}" for p in pids]),
        "ppid": pa.array([1] * n, pa.int32()),
        "vma_kind": pa.array(["anon"] * n),
        "_row": pa.array(np.arange(1, n + 1, dtype=np.int64)),
    }
    if with_vma:
        cols["vma_start"] = pa.array(vmas, pa.uint64())
    if with_frame:
        cols["frame"] = pa.array(rng.integers(0, 30, n).astype(np.uint64))
    return pa.table(cols)


@pytest.mark.parametrize("with_vma", [True, False])
@pytest.mark.parametrize("with_frame", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_chunked_feed_equals_one_call(seed: int, with_vma: bool, with_frame: bool) -> None:
    rows = _rows(seed, with_vma=with_vma, with_frame=with_frame)
    whole = FlatConverter("h")
    expected = [whole.convert(sid, float(sid), rows) for sid in range(2)]
    streamed = FlatConverter("h")
    rng = np.random.default_rng(100 + seed)
    for sid in range(2):
        streamed.begin(sid, float(sid))
        parts, i = [], 0
        while i < rows.num_rows:
            k = int(rng.integers(1, 9))  # chunks of 1..8 rows split processes and mappings
            parts.append(streamed.feed(rows.slice(i, k)))
            i += k
        snap, procs, maps = streamed.end()
        e_snap, e_procs, e_maps, e_pages = expected[sid]
        assert snap == e_snap
        assert procs.equals(e_procs)
        assert maps.equals(e_maps)
        assert pa.concat_tables(parts).equals(e_pages)


def test_duplicate_across_chunks_names_both_rows() -> None:
    rows = pa.table(
        {
            "pid": pa.array([5, 5], pa.int32()),
            "page_addr": pa.array([PAGE, PAGE], pa.uint64()),
            "content_hash": pa.array([1, 2], pa.uint64()),
            "_row": pa.array([3, 9], pa.int64()),
        }
    )
    conv = FlatConverter("h")
    conv.begin(0, 0.0)
    conv.feed(rows.slice(0, 1))
    with pytest.raises(TraceFormatError, match=r"row 9, column page_addr: .*first at row 3"):
        conv.feed(rows.slice(1, 1))


def test_convert_sorts_and_rejects_duplicates() -> None:
    rows = pa.table(
        {
            "pid": pa.array([2, 1, 1], pa.int32()),
            "page_addr": pa.array([PAGE, 2 * PAGE, PAGE], pa.uint64()),
            "content_hash": pa.array([1, 2, 3], pa.uint64()),
        }
    )
    _, procs, _, pages = FlatConverter("h").convert(0, 0.0, rows)
    assert pages.column("pid").to_pylist() == [1, 1, 2]
    assert pages.column("content_hash").to_pylist() == [3, 2, 1]
    assert procs.column("pages").to_pylist() == [2, 1]
    dup = rows.set_column(1, "page_addr", pa.array([PAGE, PAGE, PAGE], pa.uint64()))
    with pytest.raises(TraceFormatError, match="appears twice"):
        FlatConverter("h").convert(0, 0.0, dup)


def test_lookup_rows() -> None:
    keys_a = np.array([3, 1, 1, 2], dtype=np.int64)
    keys_b = np.array([0, 8, 0, 5], dtype=np.uint64)
    qa = np.array([1, 1, 2, 2, 9, 3], dtype=np.int64)
    qb = np.array([0, 8, 5, 6, 0, 0], dtype=np.uint64)
    assert lookup_rows(keys_a, keys_b, qa, qb).tolist() == [2, 1, 3, -1, -1, 0]
    assert lookup_rows(keys_a[:0], keys_b[:0], qa, qb).tolist() == [-1] * 6


def test_lookup_rows_without_packing() -> None:
    """Keys that do not fit one packed uint64 (unaligned, above 2^42) take the general path."""
    big = np.uint64(1 << 60)
    keys_a = np.array([1, 1, 2], dtype=np.int64)
    keys_b = np.array([big + np.uint64(3), np.uint64(5), big], dtype=np.uint64)
    qa = np.array([2, 1, 1, 1], dtype=np.int64)
    qb = np.array([big, np.uint64(5), big + np.uint64(3), big], dtype=np.uint64)
    assert lookup_rows(keys_a, keys_b, qa, qb).tolist() == [2, 1, 0, -1]
    neg = np.array([-1, 1], dtype=np.int64)  # negative ids cannot be packed either
    assert lookup_rows(
        neg, np.zeros(2, np.int64), np.array([1, -1]), np.zeros(2, np.int64)
    ).tolist() == [1, 0]
