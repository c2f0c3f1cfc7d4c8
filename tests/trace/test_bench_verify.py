"""What verifying a trace costs, as ratios to reading its pages in the same run.

Run with ``.venv/bin/pytest tests/trace/test_bench_verify.py -m benchmark -s
--benchmark-enable``. ``KSM_PLANNER_BENCH_VERIFY_ROWS`` sets the size of the synthetic
trace (default 10,000,000 pages in 5 snapshots of 200 processes).

For each trace (the two samples and the synthetic one), in one process, best of 3:

* ``decode``: ``pyarrow.parquet.read_table`` of ``pages.parquet`` -- reading the pages
  with no verification at all (the baseline);
* ``hash``: SHA-256 of the file's bytes (``hashlib``), what the verification adds to a read;
* ``check``: the consistency check of the decoded pages (:class:`planner.trace.check.PagesCheck`);
* ``verified``: :meth:`Trace.read_table` of the pages -- one read of the bytes, hashed while
  read, decoded from memory, checked -- end to end;
* ``stream``: :meth:`Trace.iter_pages` (hash pass, then batches checked one by one) against
  ``ParquetFile.iter_batches`` of the same file.

The figures are printed and stored in ``benchmark.extra_info``; nothing asserts a time.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from planner.trace import io as trace_io
from planner.trace.check import PagesCheck
from planner.trace.io import TraceWriter, open_trace

pytestmark = pytest.mark.benchmark

TRACES = Path(__file__).resolve().parents[2] / "traces"
ROWS = int(os.environ.get("KSM_PLANNER_BENCH_VERIFY_ROWS", "10000000"))
SNAPSHOTS = 5
PROCESSES = 200


def _synthetic(out: Path, rows: int) -> Path:
    """A large consistent trace written straight through the trace writer."""
    rng = np.random.default_rng(20261202)
    per_snap = rows // SNAPSHOTS
    per_proc = per_snap // PROCESSES
    pids = np.arange(1000, 1000 + PROCESSES, dtype=np.int32)
    with TraceWriter(out, source="benchmark") as tw:
        hw = tw.host("big")
        for s in range(SNAPSHOTS):
            pid = np.repeat(pids, per_proc)
            page = np.tile(np.arange(per_proc, dtype=np.uint64), PROCESSES)
            addr = (page + np.uint64(0x7F0000)) * np.uint64(4096)
            chash = rng.integers(1, 2**63, len(pid), dtype=np.uint64)
            pooled = rng.random(len(pid)) < 0.4
            chash[pooled] = rng.integers(1, 50_000, int(pooled.sum()), dtype=np.uint64)
            frame = np.arange(len(pid), dtype=np.uint64) + np.uint64(s * per_snap)
            pages = pa.table(
                {
                    "snapshot_id": np.full(len(pid), s, np.int32),
                    "pid": pid,
                    "vma_start": np.full(len(pid), 0x7F0000 * 4096, np.uint64),
                    "page_addr": addr,
                    "content_hash": chash,
                    "frame_id": frame,
                    "flags": np.zeros(len(pid), np.uint16),
                }
            )
            procs = pa.table(
                {
                    "snapshot_id": np.full(PROCESSES, s, np.int32),
                    "pid": pids,
                    "proc_start": np.arange(PROCESSES, dtype=np.uint64),
                    "state": ["ok"] * PROCESSES,
                }
            )
            maps = pa.table(
                {
                    "snapshot_id": np.full(PROCESSES, s, np.int32),
                    "pid": pids,
                    "start": np.full(PROCESSES, 0x7F0000 * 4096, np.uint64),
                    "end": np.full(PROCESSES, (0x7F0000 + per_proc) * 4096, np.uint64),
                    "kind": ["anon"] * PROCESSES,
                }
            )
            snap = {"snapshot_id": s, "time_s": 10.0 * s, "hash_algo": "benchmark"}
            hw.add_snapshot(snap, processes=procs, mappings=maps, pages=pages)
    return out


def _best(fn: Callable[[], Any], rounds: int = 3) -> float:
    best = float("inf")
    for _ in range(rounds):
        trace_io.forget_verified()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _figures(trace: Path) -> dict[str, Any]:
    tr = open_trace(trace)
    host = tr.hosts[0]
    pages = tr.host_path(host) / "pages.parquet"
    index = tr.host_index(host)
    decoded = pq.read_table(pages).replace_schema_metadata(None)

    def sha() -> None:
        h = hashlib.sha256()
        with pages.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)

    def stream_raw() -> None:
        for _ in pq.ParquetFile(pages).iter_batches(batch_size=1 << 20):
            pass

    def stream_verified() -> None:
        for _ in tr.iter_pages(host, batch_rows=1 << 20):
            pass

    decode_s = _best(lambda: pq.read_table(pages))
    hash_s = _best(sha)
    check_s = _best(lambda: PagesCheck(index, str(pages)).feed(decoded))
    verified_s = _best(lambda: tr.read_table(host, "pages"))
    raw_stream_s = _best(stream_raw)
    verified_stream_s = _best(stream_verified)
    return {
        "pages": decoded.num_rows,
        "file_MiB": pages.stat().st_size / 2**20,
        "decode_s": decode_s,
        "hash_s": hash_s,
        "check_s": check_s,
        "verified_read_s": verified_s,
        "hash_over_decode": hash_s / decode_s,
        "check_over_decode": check_s / decode_s,
        "verified_over_decode": verified_s / decode_s,
        "stream_raw_s": raw_stream_s,
        "stream_verified_s": verified_stream_s,
        "stream_verified_over_raw": verified_stream_s / raw_stream_s,
    }


@pytest.mark.parametrize("name", ["django-preload", "django-nopreload", "synthetic"])
def test_verification_cost(
    benchmark: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    trace = _synthetic(tmp_path / "big", ROWS) if name == "synthetic" else TRACES / name
    figures = benchmark.pedantic(lambda: _figures(trace), rounds=1, iterations=1)
    benchmark.extra_info.update(figures)
    with capsys.disabled():
        print(f"\n[verification cost: {name}]")
        for k, v in figures.items():
            print(f"  {k:>26}: {v:,.3f}" if isinstance(v, float) else f"  {k:>26}: {v:,}")
    assert figures["pages"] > 0
