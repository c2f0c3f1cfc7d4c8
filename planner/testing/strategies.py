"""Hypothesis strategies for engine property tests (worlds, knobs, replay options)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from planner.engine.knobs import KsmKnobs
from planner.engine.options import ReplayOptions
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
    """Knobs that stress batching, chains, zero pages, smart scan and the advisor."""
    return KsmKnobs(
        pages_to_scan=draw(st.sampled_from([1, 2, 3, 7, 20, 1000])),
        sleep_ms=draw(st.sampled_from([0, 1, 20, 100])),
        max_page_sharing=draw(st.sampled_from([2, 3, 4, 256])),
        use_zero_pages=draw(st.booleans()),
        smart_scan=draw(st.booleans()),
        advisor=draw(st.sampled_from(["none", "none", "scan-time"])),
        stable_node_chains_prune_ms=draw(st.sampled_from([0, 50, 2000])),
    )


@st.composite
def replay_options(draw: Any) -> ReplayOptions:
    """Short replays, time- or scan-aligned snapshots, a fine grid."""
    return ReplayOptions(
        settle_scans=draw(st.integers(2, 12)),
        grid_s=0.05,
        snapshot_alignment=draw(st.sampled_from(["time", "scan"])),
    )
