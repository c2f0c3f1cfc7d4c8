"""What-if planning: policy sets x knob grids replayed in parallel, compared, extrapolated.

The entry point is :func:`run_whatif`::

    from planner.policy import preset
    from planner.whatif import CapacityInputs, KnobGrid, run_whatif

    result = run_whatif(
        "traces/django-preload",
        policy_sets=[preset("prctl-all"), preset("workers-prctl")],
        grid=KnobGrid(axes=(("pages_to_scan", (100, 1000)), ("sleep_ms", (20, 200)))),
        capacity=CapacityInputs(host_mem_bytes=64 << 30, headroom_fraction=0.1),
    )
    result.to_frame()            # the comparison table (one row per scenario)
    result.pareto_front()        # scenarios on the saving/CPU Pareto front
    result.scenarios[0].hosts[0] # every figure of a scenario on a host (HostScenario)
    to_jsonable(result)          # the whole result as JSON (planner.jsonable)

Modules: :mod:`~planner.whatif.grid` (knob grids), :mod:`~planner.whatif.run`
(orchestration), :mod:`~planner.whatif.tasks` (the units executors run),
:mod:`~planner.whatif.outcome` (what one replay measured; the definition of steady state),
:mod:`~planner.whatif.aggregate` (scenario figures from replays), :mod:`~planner.whatif.series`
(replays summed across security domains), :mod:`~planner.whatif.compare` (Pareto front, knob
effects, saving range),
:mod:`~planner.whatif.executors` (local pool, inline, Dask),
:mod:`~planner.whatif.extrapolate` (replica growth fit + bootstrap),
:mod:`~planner.whatif.capacity` (workers per host), :mod:`~planner.whatif.observed`
(predicted against observed), :mod:`~planner.whatif.result` (result types),
:mod:`~planner.whatif.fleet` (many hosts: :func:`run_fleet`, per host and fleet figures).
"""

from __future__ import annotations

from planner.whatif.capacity import (
    CapacityEstimate,
    CapacityInputs,
    HostCapacityModel,
    estimate_capacity,
    memory_bound_gain,
    parse_headroom,
    parse_size,
)
from planner.whatif.executors import InlineExecutor, dask_executor, local_executor
from planner.whatif.extrapolate import (
    ExtrapolationFit,
    ExtrapolationSpec,
    GrowthFit,
    extrapolate,
    fit_growth,
    policy_ideal_saved_frames,
)
from planner.whatif.fleet import FleetResult, run_fleet
from planner.whatif.grid import KnobGrid, load_grid, parse_knob_list
from planner.whatif.observed import ObservedComparison
from planner.whatif.outcome import ProcessOutcome, ReplayOutcome, SteadyState, Timeline
from planner.whatif.result import (
    Estimate,
    HostScenario,
    KnobEffect,
    ProjectedSaving,
    SavingRange,
    ScenarioResult,
    WhatIfResult,
)
from planner.whatif.run import run_whatif

__all__ = [
    "CapacityEstimate",
    "CapacityInputs",
    "Estimate",
    "ExtrapolationFit",
    "ExtrapolationSpec",
    "FleetResult",
    "GrowthFit",
    "HostCapacityModel",
    "HostScenario",
    "InlineExecutor",
    "KnobEffect",
    "KnobGrid",
    "ObservedComparison",
    "ProcessOutcome",
    "ProjectedSaving",
    "ReplayOutcome",
    "SavingRange",
    "ScenarioResult",
    "SteadyState",
    "Timeline",
    "WhatIfResult",
    "dask_executor",
    "estimate_capacity",
    "extrapolate",
    "fit_growth",
    "load_grid",
    "local_executor",
    "memory_bound_gain",
    "parse_headroom",
    "parse_knob_list",
    "parse_size",
    "policy_ideal_saved_frames",
    "run_fleet",
    "run_whatif",
]
