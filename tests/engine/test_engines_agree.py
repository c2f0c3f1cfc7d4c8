"""The vectorized engine is held to the reference model: identical results, scan by scan."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.engine import KsmKnobs, ReplayOptions, prepare, replay
from planner.engine.driver import Core, Driver
from planner.engine.fast import FastEngine
from planner.engine.fast.apply import COMPACT_MIN_DEAD
from planner.engine.fast.engine import OUT_BATCHES
from planner.engine.reference import ReferenceEngine
from planner.engine.result import ReplayResult
from planner.testing.random_world import WorldSpec, random_world
from planner.testing.strategies import knob_sets, replay_options, world_specs


def assert_same(a: ReplayResult, b: ReplayResult) -> None:
    """Every full scan, every grid point, the final state and the cost must agree exactly."""
    assert len(a.scans) == len(b.scans)
    for sa, sb in zip(a.scans, b.scans, strict=True):
        assert sa.full_scans == sb.full_scans
        assert sa.counters == sb.counters, f"full scan {sa.full_scans}"
        assert sa.processes == sb.processes, f"full scan {sa.full_scans}"
        assert sa.truth == sb.truth, f"full scan {sa.full_scans}"
        assert (sa.t_s, sa.cpu_s, sa.pages_to_scan, sa.batches) == (
            sb.t_s,
            sb.cpu_s,
            sb.pages_to_scan,
            sb.batches,
        )
    assert [(g.t_s, g.counters, g.truth) for g in a.grid] == [
        (g.t_s, g.counters, g.truth) for g in b.grid
    ]
    assert a.final_counters == b.final_counters
    assert a.final_processes == b.final_processes
    assert a.final_truth == b.final_truth
    assert a.cost.path_visits == b.cost.path_visits
    assert a.final_node_members == b.final_node_members
    assert a.snapshot_first_scan == b.snapshot_first_scan


# a kernel call that hands back its batches after a few exercises the re-entry mid-scan;
# renumbering the physical pages at every snapshot exercises what long traces do
out_sizes = st.sampled_from([OUT_BATCHES, OUT_BATCHES, 1, 2, 5])
compactions = st.sampled_from([COMPACT_MIN_DEAD, 0])


def _fast(ht: object, knobs: KsmKnobs, opts: ReplayOptions, out_batches: int) -> ReplayResult:
    inp = prepare(ht)  # type: ignore[arg-type]
    return Driver(FastEngine(inp, knobs, out_batches=out_batches), inp, knobs, opts).run()


class _Members(Driver):
    """A driver that also records the whole stable tree after each scan: which items sit on
    which KSM page, and a chain's dups in order (neither shows in a counter, so a
    divergence could heal unseen or surface scans later)."""

    def __init__(self, core: Core, *args: object) -> None:
        super().__init__(core, *args)  # type: ignore[arg-type]
        self.members: list[object] = []

    def _scan_ended(self, *args: object) -> bool:
        self.members.append(self.core.stable_tree())  # type: ignore[attr-defined]
        return super()._scan_ended(*args)  # type: ignore[arg-type]


def assert_engines_agree(
    ht: object,
    knobs: KsmKnobs,
    opts: ReplayOptions,
    out_batches: int = OUT_BATCHES,
    compact: int = COMPACT_MIN_DEAD,
) -> ReplayResult:
    """Both engines on one trace: identical results and KSM-page membership after every scan."""
    inp = prepare(ht)  # type: ignore[arg-type]
    ref = _Members(ReferenceEngine(inp, knobs), inp, knobs, opts)
    fast_core = FastEngine(inp, knobs, out_batches=out_batches, compact_min_dead=compact)
    fast = _Members(fast_core, inp, knobs, opts)
    a, b = ref.run(), fast.run()
    assert_same(a, b)
    for n, (ma, mb) in enumerate(zip(ref.members, fast.members, strict=True), 1):
        assert ma == mb, f"stable tree after full scan {n}"
    return a


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**20),
    spec=world_specs(),
    knobs=knob_sets(),
    opts=replay_options(),
    ep=out_sizes,
    compact=compactions,
)
def test_vectorized_matches_reference(
    seed: int, spec: WorldSpec, knobs: KsmKnobs, opts: ReplayOptions, ep: int, compact: int
) -> None:
    assert_engines_agree(random_world(seed, spec).host_trace(), knobs, opts, ep, compact)


@pytest.mark.slow
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**20),
    spec=world_specs(),
    knobs=knob_sets(),
    opts=replay_options(),
    ep=out_sizes,
    compact=compactions,
)
def test_vectorized_matches_reference_many(
    seed: int, spec: WorldSpec, knobs: KsmKnobs, opts: ReplayOptions, ep: int, compact: int
) -> None:
    assert_engines_agree(random_world(seed, spec).host_trace(), knobs, opts, ep, compact)


def test_engines_agree_on_a_busier_world_with_many_batches() -> None:
    spec = WorldSpec(
        processes=6, pages=120, contents=20, snapshots=6, churn=0.3, fork_prob=0.8, span_s=1.0
    )
    ht = random_world(7, spec).host_trace()
    knobs = KsmKnobs(pages_to_scan=16, sleep_ms=1, max_page_sharing=3)
    opts = ReplayOptions(settle_scans=8, grid_s=0.01)
    a = replay(ht, knobs=knobs, options=opts, engine="reference")
    b = replay(ht, knobs=knobs, options=opts, engine="vectorized")
    assert a.final_truth.saved_frames > 0  # something merged: the comparison is not vacuous
    assert (
        a.final_counters["stable_node_chains"]
        + sum(s.counters["stable_node_chains"] for s in a.scans)
        > 0
    )
    assert_same(a, b)


@pytest.mark.parametrize("out_batches", [1, 7, 40])
def test_engines_agree_when_kernel_calls_are_cut_short(out_batches: int) -> None:
    spec = WorldSpec(
        processes=6, pages=120, contents=20, snapshots=6, churn=0.3, fork_prob=0.8, span_s=1.0
    )
    ht = random_world(11, spec).host_trace()
    knobs = KsmKnobs(pages_to_scan=16, sleep_ms=1, max_page_sharing=3)
    opts = ReplayOptions(settle_scans=8, grid_s=0.01)
    a = replay(ht, knobs=knobs, options=opts, engine="reference")
    assert a.final_truth.saved_frames > 0
    assert_same(a, _fast(ht, knobs, opts, out_batches))


# ---------------------------------------------------------------- steady scans fast-forwarded


@st.composite
def long_settle(draw: st.DrawFn) -> ReplayOptions:
    """Replays that settle long enough for smart scan's rhythm to become periodic."""
    return ReplayOptions(
        settle_scans=draw(st.integers(30, 80)),
        grid_s=0.05,
        snapshot_alignment=draw(st.sampled_from(["time", "scan"])),
    )


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**20), spec=world_specs(), knobs=knob_sets(), opts=long_settle())
def test_fast_forwarded_steady_scans_match_the_reference(
    seed: int, spec: WorldSpec, knobs: KsmKnobs, opts: ReplayOptions
) -> None:
    assert_engines_agree(random_world(seed, spec).host_trace(), knobs, opts)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**20), spec=world_specs(), knobs=knob_sets(), opts=long_settle())
def test_fast_forwarded_steady_scans_match_the_reference_many(
    seed: int, spec: WorldSpec, knobs: KsmKnobs, opts: ReplayOptions
) -> None:
    assert_engines_agree(random_world(seed, spec).host_trace(), knobs, opts)


@pytest.mark.parametrize("smart_scan", [True, False])
def test_steady_scans_are_fast_forwarded_and_exact(smart_scan: bool) -> None:
    spec = WorldSpec(processes=4, pages=40, contents=6, snapshots=3, churn=0.3, span_s=0.5)
    ht = random_world(3, spec).host_trace()
    knobs = KsmKnobs(pages_to_scan=7, sleep_ms=20, max_page_sharing=3, smart_scan=smart_scan)
    opts = ReplayOptions(settle_scans=60, grid_s=0.05)
    inp = prepare(ht)
    fast = FastEngine(inp, knobs)
    b = Driver(fast, inp, knobs, opts).run()
    a = replay(inp, knobs=knobs, options=opts, engine="reference")
    assert fast.steady is not None
    assert fast.steady.scans_skipped >= 18  # not vacuous
    assert a.final_counters["pages_sharing"] > 0
    assert_same(a, b)
