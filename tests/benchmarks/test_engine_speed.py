"""Replay speed and memory of the vectorized engine, against baselines measured in the same run.

Run with ``.venv/bin/pytest tests/benchmarks/test_engine_speed.py -m benchmark -s``. The
figures are printed and stored in ``benchmark.extra_info``; nothing here asserts a time.
``KSM_BENCH_PAGES`` sets the synthetic host's size (default 2,000,000 pages per snapshot).

* ``test_engine_throughput``: a synthetic host (forked worker families, Zipf patterns, churn,
  4 snapshots) replayed at ``pages_to_scan=100000``. Baseline: ``np.unique`` over the same
  snapshot's hash column -- the sort every content-dedup computation pays at least once. The
  ratio is the time of one full scan over the time of that sort.
* ``test_engine_memory``: peak memory the replay allocates (``tracemalloc``: numpy reports its
  buffers to it), per tracked page (per row of the largest snapshot), with the prepared input
  (rows, transitions, content groups: computed once and shared by every replay of the trace,
  as in a what-if sweep) already in memory and reported apart.
* ``test_engine_against_reference``: both engines on one 20,000-page host: the speed-up of the
  vectorized engine over the slow oracle, with identical counters.
"""

from __future__ import annotations

import os
import time
import tracemalloc
from typing import Any

import numpy as np
import pytest

from planner.engine import KsmKnobs, ReplayOptions, prepare, replay
from planner.engine.prepare import ReplayInput
from planner.engine.result import ReplayResult
from planner.testing.synth import SynthSpec, synthetic_host

pytestmark = pytest.mark.benchmark

PAGES = int(os.environ.get("KSM_BENCH_PAGES", "2000000"))
KNOBS = KsmKnobs(pages_to_scan=100_000, sleep_ms=20)
OPTIONS = ReplayOptions(settle_scans=6)


def _spec(pages: int) -> SynthSpec:
    return SynthSpec(pages=pages, processes=max(10, pages // 50_000))


@pytest.fixture(scope="module")
def big_input() -> ReplayInput:
    inp = prepare(synthetic_host(_spec(PAGES)))
    for s in inp.snapshots:  # content groups: derived input, computed once, shared by replays
        s.groups()
    return inp


def _input_bytes(inp: ReplayInput) -> int:
    arrays = [a for s in inp.snapshots for a in vars(s).values() if isinstance(a, np.ndarray)]
    arrays += [a for s in inp.snapshots for a in s.groups()]
    return sum(a.nbytes for a in arrays)


def _visits(r: ReplayResult) -> int:
    return int(sum(r.cost.path_visits.values()))


def _report(capsys: pytest.CaptureFixture[str], title: str, figures: dict[str, Any]) -> None:
    with capsys.disabled():
        print(f"\n[{title}]")
        for k, v in figures.items():
            print(f"  {k:>30}: {v:,.3f}" if isinstance(v, float) else f"  {k:>30}: {v:,}")


def _best_s(fn: Any, hashes: np.ndarray, rounds: int = 3) -> float:
    best = float("inf")
    for _ in range(rounds):
        h = hashes.copy()
        t = time.perf_counter()
        fn(h)
        best = min(best, time.perf_counter() - t)
    return best


def test_engine_throughput(
    benchmark: Any, big_input: ReplayInput, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = max(s.n for s in big_input.snapshots)
    unique_s = _best_s(np.unique, big_input.snapshots[0].hash)
    sort_s = _best_s(np.sort, big_input.snapshots[0].hash)
    t = time.perf_counter()
    r = benchmark.pedantic(
        replay,
        args=(big_input,),
        kwargs={"knobs": KNOBS, "options": OPTIONS, "engine": "vectorized"},
        rounds=1,
        iterations=1,
    )
    wall_s = time.perf_counter() - t
    full_scans = r.final_counters["full_scans"]
    visits = _visits(r)
    figures = {
        "rows per snapshot": rows,
        "snapshots": len(big_input.snapshots),
        "full scans": full_scans,
        "visits": visits,
        "replay wall s": wall_s,
        "visits per s": visits / wall_s,
        "np.unique rows per s": rows / unique_s,
        "full scan s / np.unique s": wall_s / max(full_scans, 1) / unique_s,
        # numpy >= 2.3 finds unique values with a hash table; a plain sort is the stricter floor
        "np.sort rows per s": rows / sort_s,
        "full scan s / np.sort s": wall_s / max(full_scans, 1) / sort_s,
        "saved frames": r.final_truth.saved_frames,
    }
    benchmark.extra_info.update(figures)
    _report(capsys, f"vectorized replay, {PAGES:,} pages", figures)
    assert full_scans > 0
    assert r.final_truth.saved_frames > 0


def test_engine_memory(
    benchmark: Any, big_input: ReplayInput, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = max(s.n for s in big_input.snapshots)
    input_bytes = _input_bytes(big_input)

    def traced() -> tuple[ReplayResult, int]:
        tracemalloc.start()
        try:
            res = replay(big_input, knobs=KNOBS, options=OPTIONS, engine="vectorized")
            return res, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    r, peak = benchmark.pedantic(traced, rounds=1, iterations=1)
    figures = {
        "tracked pages (largest snapshot)": rows,
        "prepared input bytes": input_bytes,
        "input bytes per row": input_bytes / sum(s.n for s in big_input.snapshots),
        "replay peak bytes": peak,
        "replay peak bytes per tracked page": peak / rows,
    }
    benchmark.extra_info.update(figures)
    _report(capsys, f"vectorized replay memory, {PAGES:,} pages", figures)
    assert r.final_counters["full_scans"] > 0


def test_engine_against_reference(benchmark: Any, capsys: pytest.CaptureFixture[str]) -> None:
    inp = prepare(synthetic_host(_spec(20_000)))
    knobs = KsmKnobs(pages_to_scan=2_000, sleep_ms=20)
    walls: dict[str, float] = {}
    results: dict[str, ReplayResult] = {}

    def both() -> None:
        for engine in ("reference", "vectorized"):
            t = time.perf_counter()
            results[engine] = replay(inp, knobs=knobs, options=OPTIONS, engine=engine)
            walls[engine] = time.perf_counter() - t

    benchmark.pedantic(both, rounds=1, iterations=1)
    ref, vec = results["reference"], results["vectorized"]
    assert [s.counters for s in ref.scans] == [s.counters for s in vec.scans]
    figures = {
        "visits": _visits(vec),
        "reference visits per s": _visits(ref) / walls["reference"],
        "vectorized visits per s": _visits(vec) / walls["vectorized"],
        "speed-up over the reference": walls["reference"] / walls["vectorized"],
    }
    benchmark.extra_info.update(figures)
    _report(capsys, "vectorized against the reference, 20,000 pages", figures)
