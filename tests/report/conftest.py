"""Fixtures of the report tests: a small forked-workers trace, and review inputs made from a
real what-if run on it (:func:`planner.whatif.run_whatif`, then
:func:`planner.report.make.review_inputs`: exactly what ``ksm-planner report`` does)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from planner.testing.builder import World

#: Hand-made facts of the small trace (see ``small_world``).
MASTER, WORKERS = 100, (101, 102, 103)


def small_world() -> World:
    """A master with 50 anonymous pages and 10 heap pages, forked into three workers.

    Each worker writes 15 anonymous pages with content shared by all workers (KSM can merge
    them: 2 of every 3 copies) and 5 pages of its own. Worker 101 rewrites 3 of its shared
    pages with unique content between the first and the second snapshot.
    """
    w = World("small")
    w.spawn(MASTER, comm="gunicorn", cgroup="/svc", uid=1000, labels={"service": "web"})
    w.map(MASTER, 0x10000, [*range(1, 49), 0, 0])  # 48 distinct + 2 zero pages
    w.map(MASTER, 0x80000, list(range(101, 111)), kind="heap")
    for pid in WORKERS:
        w.fork(MASTER, pid)
    for pid in WORKERS:
        w.write_range(pid, 0x10000, list(range(201, 216)))  # 15 shared-content pages
        w.write_range(pid, 0x10000 + 15 * 4096, [1000 + 10 * pid + i for i in range(5)])
    w.snapshot(0.0)
    w.write_range(101, 0x10000, [5001, 5002, 5003])
    w.snapshot(10.0)
    w.snapshot(20.0)
    return w


@pytest.fixture(scope="session")
def small_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small trace as a trace directory."""
    out = tmp_path_factory.mktemp("traces") / "small"
    small_world().write_trace(out)
    return out


def whatif_inputs(
    trace_dir: Path,
    policies: tuple[str, ...] = ("off", "prctl-all", "workers-prctl"),
    pages_to_scan: tuple[int, ...] = (10, 100),
    *,
    host_mem: int | None = 16 << 20,
) -> Any:
    """Review inputs of a real what-if run (inline, 6 settle scans; capacity on a host of
    ``host_mem`` bytes with a small bootstrap, or none)."""
    from planner.engine import ReplayOptions
    from planner.policy import preset
    from planner.report.make import review_inputs
    from planner.trace.io import open_trace
    from planner.whatif import (
        CapacityInputs,
        ExtrapolationSpec,
        InlineExecutor,
        KnobGrid,
        run_whatif,
    )

    trace = open_trace(trace_dir)
    result = run_whatif(
        trace,
        policy_sets=[preset(p) for p in policies],
        grid=KnobGrid.from_mapping({"pages_to_scan": list(pages_to_scan)}),
        replay_options=ReplayOptions(settle_scans=6),
        capacity=CapacityInputs(host_mem_bytes=host_mem) if host_mem else None,
        extrapolation=ExtrapolationSpec(n_resamples=20) if host_mem else None,
        executor=InlineExecutor(),
    )
    return review_inputs(
        result,
        trace=trace,
        trace_text=trace_dir.name,
        command=f"ksm-planner report {trace_dir.name} --out DIR",
    )


@pytest.fixture(scope="session")
def small_inputs(small_trace: Path) -> Any:
    """Review inputs of the small trace: 3 policy sets x 2 knob settings, with capacity."""
    return whatif_inputs(small_trace)


@pytest.fixture(scope="session")
def bare_inputs(small_trace: Path) -> Any:
    """The same sweep without capacity inputs (no fit, no projection)."""
    return whatif_inputs(small_trace, host_mem=None)
