"""Hypothesis strategies for engine property tests (worlds, knobs, replay options)."""

from __future__ import annotations

from typing import Any

from hypothesis import reject
from hypothesis import strategies as st

from planner.engine.knobs import KNOBS, KsmKnobs
from planner.engine.options import ReplayOptions
from planner.errors import KnobError
from planner.testing.random_world import WorldSpec


@st.composite
def world_specs(draw: Any) -> WorldSpec:
    """Small worlds: a few processes with churn, forks, exits, zero pages, sometimes THP."""
    return WorldSpec(
        processes=draw(st.integers(1, 4)),
        pages=draw(st.integers(2, 30)),
        contents=draw(st.integers(1, 8)),
        snapshots=draw(st.integers(1, 5)),
        zero_share=draw(st.sampled_from([0.0, 0.15, 0.5])),
        churn=draw(st.sampled_from([0.0, 0.1, 0.25, 0.6])),
        fork_prob=draw(st.sampled_from([0.0, 0.4, 0.9])),
        exit_prob=draw(st.sampled_from([0.0, 0.15, 0.5])),
        thp=draw(st.booleans()),
        span_s=draw(st.sampled_from([0.05, 0.5, 3.0])),
    )


@st.composite
def knob_sets(draw: Any) -> KsmKnobs:
    """Every knob of the table drawn from its test values (:attr:`KnobSpec.test_values`).

    Batching, chains, zero pages, smart scan, the advisor, HZ: each knob's edges come from
    the knob table, so a knob added there is exercised here without another line.
    """
    values = {s.name: draw(st.sampled_from(s.test_values)) for s in KNOBS}
    try:
        return KsmKnobs(**values)
    except KnobError:  # a combination the kernel refuses (e.g. advisor max below min)
        reject()


@st.composite
def replay_options(draw: Any) -> ReplayOptions:
    """Short replays, time- or scan-aligned snapshots, a fine grid."""
    return ReplayOptions(
        settle_scans=draw(st.integers(2, 12)),
        grid_s=0.05,
        snapshot_alignment=draw(st.sampled_from(["time", "scan"])),
    )
