"""Fixtures of the report tests: a small forked-workers trace and review inputs built on it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
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


def direct_inputs(
    trace_dir: Path,
    policies: Sequence[str] = ("off", "prctl-all", "workers-prctl"),
    pages_to_scan: Sequence[int] = (10, 100),
    **options: Any,
) -> Any:
    """Review inputs from direct replays (no what-if planner): one per policy x knob."""
    from planner.engine import KsmKnobs, ReplayOptions, prepare, replay
    from planner.policy import preset
    from planner.report.analysis import (
        cow_breaks,
        current_state,
        eligible_potential,
        pareto_front,
    )
    from planner.report.inputs import (
        ProcessOutcome,
        ReviewInputs,
        ScenarioOutcome,
        TraceFacts,
        scenario_name,
        varying_knobs,
    )
    from planner.trace.io import open_trace
    from planner.trace.summary import summarize_trace

    trace = open_trace(trace_dir)
    ht = trace.load_host()
    summary = summarize_trace(trace_dir)
    scen = []
    for name in policies:
        ps = preset(name)
        inp = prepare(ht, resolver=ps.resolver())
        pot = eligible_potential(inp)
        for pts in pages_to_scan:
            res = replay(
                inp, knobs=KsmKnobs(pages_to_scan=pts), options=ReplayOptions(settle_scans=6)
            )
            procs = tuple(
                ProcessOutcome(
                    mm.pid,
                    mm.registration.mode,
                    mm.registration.rule,
                    mm.registration.domain,
                    res.final_processes.get(str(mm.pid), {}).get("ksm_rmap_items", 0),
                    res.final_processes.get(str(mm.pid), {}).get("ksm_merging_pages", 0),
                    res.final_processes.get(str(mm.pid), {}).get("ksm_zero_pages", 0),
                    res.final_processes.get(str(mm.pid), {}).get("ksm_process_profit", 0),
                )
                for mm in inp.mms
            )
            scen.append(
                ScenarioOutcome.of_replay(
                    res,
                    name="",
                    policy_set=name,
                    policy_description=ps.description,
                    processes=procs,
                    ideal_saved_frames=pot.ideal_saved_frames,
                    zero_saved_frames=max(0, pot.zero_frames - 1),
                )
            )
    vary = varying_knobs([s.knobs for s in scen])
    front = pareto_front([(s.steady_cpu_percent, s.net_saved_bytes) for s in scen])
    scen = [
        replace(s, name=scenario_name(s.policy_set, s.knobs, vary), pareto=f and s.enabled)
        for s, f in zip(scen, front, strict=True)
    ]
    return ReviewInputs(
        trace=TraceFacts.of(trace, ht, summary, name=trace_dir.name),
        summary=summary,
        state=current_state(ht),
        cow=cow_breaks(ht),
        scenarios=tuple(scen),
        command=f"ksm-planner report {trace_dir.name} --out review",
        baseline="off",
        options={"tool_version": "ksm-planner test", "settle_scans": 6, **options},
    )


@pytest.fixture(scope="session")
def small_inputs(small_trace: Path) -> Any:
    """Review inputs of the small trace from direct replays."""
    return direct_inputs(small_trace)


@pytest.fixture
def make_inputs() -> Callable[..., Any]:
    """Build review inputs from direct replays: ``make_inputs(trace_dir, policies, pages)``."""
    return direct_inputs
