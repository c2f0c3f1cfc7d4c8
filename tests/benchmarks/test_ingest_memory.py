"""Peak memory and throughput of ``ksm-planner ingest`` on a large interchange CSV.

Run with ``.venv/bin/pytest tests/benchmarks/test_ingest_memory.py -m benchmark -s``.
``KSM_PLANNER_BENCH_ROWS`` sets the CSV size (default 2,000,000 rows; the requirement is
checked in full with 50,000,000) and ``KSM_PLANNER_BENCH_SNAPSHOTS`` the number of snapshots
of the multi-snapshot case (default 10).

Each ingest runs in a child process; its peak RSS comes from ``os.wait4`` (the child's own
``ru_maxrss``). Baselines measured in the same run, in children too:

* memory: a child that imports the ingest module and pyarrow and exits;
* speed: a child that only streams the same CSV through ``pyarrow.csv.open_csv`` with the
  same column types (the parse floor of any ingest).

The figures (peak RSS, rows/s and their ratios to the baselines) are printed and stored in
``benchmark.extra_info``. Nothing asserts a time; the one assertion is the requirement that
the ingest stays within 2 GiB of memory.

Cases:

* ``many-snapshots``: the rows spread over several snapshots, each shuffled inside;
* ``one-snapshot``: every row in one snapshot, in an order that interleaves all processes,
  so the snapshot is larger than the sort buffer and is sorted in spilled runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

pytestmark = pytest.mark.benchmark

GIB = 1 << 30
MEMORY_LIMIT_BYTES = 2 * GIB
ROWS = int(os.environ.get("KSM_PLANNER_BENCH_ROWS", "2000000"))
SNAPSHOTS = int(os.environ.get("KSM_PLANNER_BENCH_SNAPSHOTS", "10"))
CHUNK_ROWS = 1 << 20
PAGE = 4096
ZERO = 10653106456947493306

PARSE_ONLY = textwrap.dedent(
    """
    import sys, time
    import pyarrow.csv as pacsv
    from planner.trace.ingest import INTERCHANGE_TYPES
    t = time.perf_counter()
    header = open(sys.argv[1]).readline().strip().replace('"', '').split(',')
    types = {c: INTERCHANGE_TYPES[c] for c in header}
    r = pacsv.open_csv(sys.argv[1], read_options=pacsv.ReadOptions(use_threads=False,
        block_size=4 << 20), convert_options=pacsv.ConvertOptions(column_types=types))
    n = sum(b.num_rows for b in r)
    print(n, time.perf_counter() - t)
    """
)
LAUNCHER = textwrap.dedent(
    """
    import os, resource, sys, time
    t = time.perf_counter()
    pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
    _, status = os.waitpid(pid, 0)
    wall = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with open(sys.argv[1], "w") as f:
        f.write(f"{os.waitstatus_to_exitcode(status)} {wall} {rss}")
    """
)
IMPORT_ONLY = "import pyarrow.csv, pyarrow.parquet, planner.trace.ingest, planner.cli"


def _generate(path: Path, rows: int, snapshots: int, *, interleave: bool) -> None:
    """Write a fleet-like interchange CSV in chunks (bounded memory in this process).

    400 processes in 40 comm groups; 35 % of pages draw their content from a small pool
    (duplicates), 3 % are zero pages, the rest unique; frames are per page except a
    fork-shared half of the pooled pages.
    """
    rng = np.random.default_rng(20261201)
    per_snap = -(-rows // snapshots)
    written = 0
    with pacsv.CSVWriter(
        str(path),
        pa.schema(
            [
                ("time_s", pa.float64()),
                ("pid", pa.int32()),
                ("ppid", pa.int32()),
                ("comm", pa.string()),
                ("vma_start", pa.uint64()),
                ("vma_kind", pa.string()),
                ("page_addr", pa.uint64()),
                ("content_hash", pa.uint64()),
                ("frame", pa.uint64()),
            ]
        ),
    ) as w:
        for snap in range(snapshots):
            n_snap = min(per_snap, rows - written)
            for c0 in range(0, n_snap, CHUNK_ROWS):
                n = min(CHUNK_ROWS, n_snap - c0)
                idx = np.arange(c0, c0 + n, dtype=np.uint64)
                if interleave:  # every chunk touches every process: runs overlap
                    pid = (idx % np.uint64(400)).astype(np.int32) + 1000
                    page = idx // np.uint64(400)
                else:  # process-major order, shuffled inside the chunk
                    pid = (idx * np.uint64(400) // np.uint64(max(n_snap, 1))).astype(
                        np.int32
                    ) + 1000
                    page = idx
                    perm = rng.permutation(n)
                    pid, page = pid[perm], page[perm]
                addr = (page + np.uint64(0x7F000000)) * np.uint64(PAGE)
                kind = rng.random(n)
                pooled = kind < 0.35
                zero = (kind >= 0.35) & (kind < 0.38)
                chash = rng.integers(1, 2**63, n, dtype=np.uint64)
                chash[pooled] = rng.integers(1, 50_000, int(pooled.sum()), dtype=np.uint64)
                chash[zero] = np.uint64(ZERO)
                frame = (np.uint64(snap) << np.uint64(40)) | (np.uint64(written) + idx)
                shared = pooled & (kind < 0.175)
                frame[shared] = chash[shared] | np.uint64(1 << 60)  # one frame per content
                table = pa.table(
                    {
                        "time_s": np.full(n, 10.0 * snap),
                        "pid": pid,
                        "ppid": np.full(n, 1, np.int32),
                        "comm": pa.array([f"svc{p % 40}" for p in range(1000, 1400)]).take(
                            pa.array(pid - 1000)
                        ),
                        "vma_start": addr - (addr % np.uint64(1 << 24)),
                        "vma_kind": pa.array(["anon", "heap"]).take(
                            pa.array((pid % 2).astype(np.int64))
                        ),
                        "page_addr": addr,
                        "content_hash": chash,
                        "frame": frame,
                    }
                )
                w.write_table(table)
            written += n_snap


def _run_child(args: list[str], log: Path) -> tuple[int, float, int, str]:
    """Run ``args``; return (exit code, wall s, peak RSS bytes of that child, stdout).

    A child started by this (large) test process would report at least this process's RSS:
    Linux carries the parent's high-water mark into the child's ``ru_maxrss`` across
    fork/vfork + exec. So a minimal launcher (``python -S``, a few MiB) starts the command
    and reads ``getrusage(RUSAGE_CHILDREN)`` once its only child has exited.
    """
    measure = log.with_suffix(".rusage")
    with log.open("w") as out, (log.with_suffix(".err")).open("w") as err:
        subprocess.run(
            [sys.executable, "-S", "-c", LAUNCHER, str(measure), *args],
            stdout=out,
            stderr=err,
            check=False,
        )
    code, wall, maxrss_kib = measure.read_text().split()
    return int(code), float(wall), int(maxrss_kib) * 1024, log.read_text()


def _report(capsys: pytest.CaptureFixture[str], title: str, figures: dict[str, Any]) -> None:
    with capsys.disabled():
        print(f"\n[{title}]")
        for k, v in figures.items():
            print(f"  {k:>32}: {v:,.3f}" if isinstance(v, float) else f"  {k:>32}: {v:,}")


@pytest.mark.parametrize(
    ("case", "snapshots", "interleave"),
    [("many-snapshots", SNAPSHOTS, False), ("one-snapshot", 1, True)],
)
def test_ingest_memory(
    benchmark: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: str,
    snapshots: int,
    interleave: bool,
) -> None:
    src = tmp_path / "big.csv"
    _generate(src, ROWS, snapshots, interleave=interleave)
    py = sys.executable

    code, _, import_rss, _ = _run_child([py, "-c", IMPORT_ONLY], tmp_path / "import.log")
    assert code == 0
    code, _, parse_rss, parse_out = _run_child(
        [py, "-c", PARSE_ONLY, str(src)], tmp_path / "parse.log"
    )
    assert code == 0, (tmp_path / "parse.err").read_text()
    parsed_rows, parse_s = parse_out.split()
    assert int(parsed_rows) == ROWS

    runs: list[tuple[float, int, dict[str, Any]]] = []

    def one_ingest() -> None:
        out = tmp_path / f"trace{len(runs)}"
        code, wall, rss, stdout = _run_child(
            [py, "-m", "planner", "ingest", str(src), "--out", str(out), "--json"],
            tmp_path / "ingest.log",
        )
        assert code == 0, (tmp_path / "ingest.err").read_text()
        runs.append((wall, rss, json.loads(stdout)))

    benchmark.pedantic(one_ingest, rounds=1, iterations=1, warmup_rounds=0)
    wall, rss, doc = runs[-1]
    assert doc["rows"] == ROWS
    assert doc["pages"] == ROWS
    figures = {
        "rows": ROWS,
        "snapshots": doc["snapshots"],
        "csv_bytes": src.stat().st_size,
        "spilled_runs": doc["spilled_runs"],
        "ingest_peak_rss_MiB": rss / 2**20,
        "import_only_peak_rss_MiB": import_rss / 2**20,
        "parse_only_peak_rss_MiB": parse_rss / 2**20,
        "ratio_ingest_rss_to_import_only": rss / import_rss,
        "ingest_rows_per_s": doc["rows_per_s"],
        "ingest_end_to_end_rows_per_s": ROWS / wall,
        "parse_only_rows_per_s": ROWS / float(parse_s),
        "ratio_ingest_to_parse_only_speed": doc["rows_per_s"] / (ROWS / float(parse_s)),
        "memory_limit_MiB": MEMORY_LIMIT_BYTES / 2**20,
    }
    benchmark.extra_info.update(figures)
    _report(capsys, f"ingest {case}: {ROWS:,} rows", figures)
    assert rss < MEMORY_LIMIT_BYTES, f"ingest peaked at {rss / 2**20:,.0f} MiB"
