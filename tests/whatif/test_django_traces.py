"""Checks of the ideal, the realization ratio and the extrapolation on the shipped Django traces."""

from __future__ import annotations

from pathlib import Path

import pytest

from planner.engine import ReplayOptions, prepare
from planner.engine.timing import HostLoad
from planner.jsonable import to_jsonable
from planner.policy import preset
from planner.trace.io import open_trace
from planner.trace.summary import host_potential
from planner.whatif import (
    ExtrapolationSpec,
    InlineExecutor,
    KnobGrid,
    extrapolate,
    policy_ideal_saved_frames,
    run_whatif,
)

TRACES = Path(__file__).resolve().parents[2] / "traces"
SAMPLES = ["django-nopreload", "django-preload"]


@pytest.fixture(params=SAMPLES)
def sample(request: pytest.FixtureRequest) -> Path:
    path = TRACES / str(request.param)
    if not path.exists():
        pytest.skip(f"{path} is not in this checkout")
    return path


def test_under_prctl_all_the_policy_ideal_is_the_static_ideal_of_ksm_planner_info(
    sample: Path,
) -> None:
    ht = open_trace(sample).load_host()
    # 'info' counts every mapping: the prctl made inside the running processes (a launcher's
    # prctl before exec leaves the exec-time stacks out, docs/kernel-semantics.md §2.6)
    last = prepare(ht, resolver=preset("prctl-all").resolver(), prctl_at="running").snapshots[-1]
    info = host_potential(ht)[-1]
    # 'info' frees every zero-content frame (use_zero_pages); without it one zero KSM page stays
    assert policy_ideal_saved_frames(last, use_zero_pages=True) == info.ideal_saved_frames
    assert policy_ideal_saved_frames(last) == info.ideal_saved_frames - 1


def test_realization_and_extrapolation_hold_out(sample: Path) -> None:
    res = run_whatif(
        sample,
        policy_sets=[preset("prctl-all"), preset("workers-prctl")],
        grid=KnobGrid.from_mapping({"pages_to_scan": 1000, "sleep_ms": 20}),
        extrapolation=ExtrapolationSpec(n_resamples=30),
        executor=InlineExecutor(),
    )
    for s in res.scenarios:
        assert s.realization_ratio is not None
        # the sampled traces' writes keep their fastest-changing pages out of the stable tree
        # (docs/kernel-semantics.md §6.5): a few % of the ideal is never realized
        assert 0.9 <= s.realization_ratio < 1.0
        fit = res.fit(s.policy_set, "allow", "vm")
        assert fit is not None
        assert fit.k == 8  # the 8 gunicorn workers; the master is the base
        assert fit.holdout is not None
        assert fit.holdout.relative_error is not None
        assert abs(fit.holdout.relative_error) < 0.05
        # the fit goes through the data at k: the ideal the replay's ratio refers to
        assert fit.ideal_saved_frames_at_k * 4096 == s.policy_ideal_saved_bytes


def test_a_replay_stopped_early_realizes_less(sample: Path) -> None:
    # 1000 pages per 200 ms on an idle host: a full scan of the ~100k pages takes ~20 s; the
    # last snapshot is at 40 s. At 30 s the second scan (the first that can merge) is under way.
    # (The load the sample recorded would stretch every batch: docs/busy-host.md.)
    ratios = []
    for duration_s in (30.0, 60.0):
        res = run_whatif(
            sample,
            policy_sets=[preset("prctl-all")],
            grid=KnobGrid.from_mapping({"pages_to_scan": 1000, "sleep_ms": 200}),
            replay_options=ReplayOptions(duration_s=duration_s, host_load=HostLoad.given(0.0)),
            executor=InlineExecutor(),
        )
        ratio = res.scenarios[0].realization_ratio
        assert ratio is not None
        ratios.append(ratio)
    assert 0.2 < ratios[0] < 0.6
    assert 0.9 < ratios[1] <= 1.0


def test_fit_on_a_single_sample_is_deterministic() -> None:
    path = TRACES / "django-preload"
    if not path.exists():
        pytest.skip(f"{path} is not in this checkout")
    inp = prepare(open_trace(path).load_host(), resolver=preset("prctl-all").resolver())
    a = extrapolate(inp, spec=ExtrapolationSpec(n_resamples=20))
    b = extrapolate(inp, spec=ExtrapolationSpec(n_resamples=20))
    assert to_jsonable(a, include={"replicates"}) == to_jsonable(b, include={"replicates"})


def test_a_canary_recording_calibrates_the_whatif_writes() -> None:
    """``--observed`` with a canary-mode recording replays its same-content write rates
    (``replay --observed`` alike): the modelled copy-on-write comes near the canary's
    ``cow_ksm`` (1,011/s) where the content sampler alone sees a few per second."""
    trace = TRACES / "django-preload"
    canary = TRACES.parent / "reports" / "canary" / "django-preload"
    if not trace.exists() or not canary.exists():
        pytest.skip("the sample trace or its canary is not in this checkout")
    rates = {}
    for observed in (None, canary):
        res = run_whatif(
            trace,
            policy_sets=[preset("prctl-all")],
            grid=KnobGrid.from_mapping({"pages_to_scan": 1000, "sleep_ms": 20}),
            replay_options=ReplayOptions(duration_s=72.0),
            observed=observed,
            executor=InlineExecutor(),
        )
        assert res.replay_options.writes_canary == (
            None if observed is None else str(canary.resolve())
        )
        cow = res.scenarios[0].hosts[0].modelled_cow_breaks_per_s
        assert cow is not None
        rates[observed is not None] = cow
    assert rates[False] < 100
    assert 505 < rates[True] < 2022, rates  # within 2x of the canary's cow_ksm (1,011/s)


@pytest.mark.parametrize("growth", [True, False])
def test_each_replay_outcome_states_the_growth_it_assumed(growth: bool) -> None:
    """The what-if carries each replay's growth note (provenance ``growth``) to the review,
    which states it, and the steady state starts where the replay last changed memory."""
    trace = TRACES / "django-preload"
    if not trace.exists():
        pytest.skip(f"{trace} is not in this checkout")
    res = run_whatif(
        trace,
        policy_sets=[preset("prctl-all")],
        grid=KnobGrid.from_mapping({"pages_to_scan": 1000, "sleep_ms": 20}),
        replay_options=ReplayOptions(duration_s=60.0, growth=growth),
        executor=InlineExecutor(),
    )
    host = res.scenarios[0].hosts[0]
    (outcome,) = host.replays
    assert outcome.growth_summary is not None
    assert outcome.growth_summary.startswith("growth after the trace: ")
    # on: the pages continued (this trace's growth is continued); off: said so
    assert ("pages over" in outcome.growth_summary) == growth, outcome.growth_summary
    last_snapshot_s = host.snapshot_times_s[-1]
    assert host.last_applied_s is not None
    if growth:
        assert host.last_applied_s > last_snapshot_s + 1.0  # growth steps applied after it
    else:
        assert host.last_applied_s == pytest.approx(last_snapshot_s, abs=1.0)


def test_the_canarys_copy_on_write_is_carried_to_other_knobs_by_the_replay() -> None:
    """A canary measures copy-on-write at its own knobs. At the canary's knobs the planned
    rate is its rate per merged page as measured (factor 1); at a slower scan the replay,
    calibrated on the canary's writes, breaks fewer merges per merged page, and the planned
    rate follows it (a written page is re-merged later, so fewer merges are there to break)."""
    from planner.whatif.capacity import CapacityInputs

    trace = TRACES / "django-preload"
    canary = TRACES.parent / "reports" / "canary" / "django-preload"
    if not trace.exists() or not canary.exists():
        pytest.skip("the sample trace or its canary is not in this checkout")
    res = run_whatif(
        trace,
        policy_sets=[preset("prctl-all")],
        grid=KnobGrid.from_mapping({"pages_to_scan": [100, 1000], "sleep_ms": 20}),
        replay_options=ReplayOptions(duration_s=150.0),
        observed=canary,
        capacity=CapacityInputs(host_mem_bytes=16 << 30),
        executor=InlineExecutor(),
    )
    assert res.observed is not None
    assert res.observed.knobs_match
    by_pages = {s.knobs["pages_to_scan"]: s.hosts[0] for s in res.scenarios}
    at_canary, slower = by_pages[1000], by_pages[100]
    assert at_canary.canary_cow_knob_factor == pytest.approx(1.0)
    assert at_canary.capacity is not None
    assert at_canary.canary_cow_per_merged_page_per_s
    assert at_canary.projected_canary_cow_per_s == pytest.approx(
        at_canary.canary_cow_per_merged_page_per_s
        * at_canary.capacity.ksm_saved_bytes
        / at_canary.page_size
    )
    ratio = slower.modelled_cow_per_merged_page_per_s
    reference = at_canary.modelled_cow_per_merged_page_per_s
    assert ratio is not None
    assert reference
    assert slower.canary_cow_knob_factor == pytest.approx(ratio / reference)
    assert slower.canary_cow_knob_factor < 0.8, slower.canary_cow_knob_factor
    assert slower.capacity is not None
    assert slower.projected_canary_cow_per_s is not None
    assert slower.projected_canary_cow_per_s == pytest.approx(
        slower.canary_cow_per_merged_page_per_s
        * slower.canary_cow_knob_factor
        * slower.capacity.ksm_saved_bytes
        / slower.page_size
    )
