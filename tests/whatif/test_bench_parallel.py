"""Benchmark: scenarios on a local process pool against one after the other (same run)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from planner.policy import preset
from planner.whatif import InlineExecutor, KnobGrid, local_executor, run_whatif

TRACE = Path(__file__).resolve().parents[2] / "traces" / "django-preload"


@pytest.mark.benchmark
def test_process_pool_speedup(benchmark: Any) -> None:
    if not TRACE.exists():
        pytest.skip(f"{TRACE} is not in this checkout")
    sets = [preset("prctl-all"), preset("workers-prctl")]
    grid = KnobGrid.from_mapping({"pages_to_scan": [100, 1000, 4000], "sleep_ms": [20, 200]})

    def inline() -> float:
        t0 = time.perf_counter()
        run_whatif(TRACE, policy_sets=sets, grid=grid, executor=InlineExecutor())
        return time.perf_counter() - t0

    def pooled() -> float:
        pool = local_executor()
        try:
            t0 = time.perf_counter()
            run_whatif(TRACE, policy_sets=sets, grid=grid, executor=pool)
            return time.perf_counter() - t0
        finally:
            pool.shutdown()

    baseline = inline()
    parallel = benchmark.pedantic(pooled, rounds=1, iterations=1)
    benchmark.extra_info.update(
        inline_s=baseline,
        pool_s=parallel,
        speedup=baseline / parallel,
        cores=os.cpu_count(),
        scenarios=12,
    )
    print(
        f"\n12 scenarios: inline {baseline:.1f} s, pool {parallel:.1f} s, "
        f"speedup x{baseline / parallel:.2f}"
    )
