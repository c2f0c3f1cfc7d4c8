"""The recommendation's gates, a CPU-bound host, the kernel's defaults, and Meta's knobs on a
64 GiB host: the review recommends or names the gate that blocks it, with every figure."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from planner.report import fmt as F
from planner.report.decision import kernel_defaults_text, recommend
from planner.report.doc import Bullets, Callout, Document, KeyFigures, Para
from planner.report.inputs import ReviewGates, parse_duration, parse_share
from planner.report.review import build_review

ROOT = Path(__file__).resolve().parents[2]


def _review(trace: Path, **capacity: Any) -> Any:
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
    from planner.whatif.gridpoints import with_kernel_defaults

    tr = open_trace(trace)
    grid = capacity.pop("grid", {"pages_to_scan": [10, 100]})
    policies = capacity.pop("policies", ("off", "prctl-all"))
    settle = capacity.pop("settle_scans", 6)
    result = run_whatif(
        tr,
        policy_sets=[preset(p) for p in policies],
        grid=with_kernel_defaults(KnobGrid.from_mapping(grid)),
        replay_options=ReplayOptions(settle_scans=settle),
        capacity=CapacityInputs(**capacity),
        extrapolation=ExtrapolationSpec(n_resamples=50),
        executor=InlineExecutor(),
    )
    return review_inputs(result, trace=tr, trace_text=trace.name, command="ksm-planner report x")


def _decision_text(doc: Document) -> str:
    sec = doc.sections[0]
    out = []
    for b in sec.blocks:
        if isinstance(b, Para | Callout):
            out.append(b.text)
        if isinstance(b, Bullets):
            out += b.items
        if isinstance(b, KeyFigures):
            out += [f"{k.value} {k.label} {k.detail}" for k in b.items]
    return " ".join(out)


def test_gate_options_parse() -> None:
    assert parse_share("2%", option="--max-ksmd-cpu") == 0.02
    assert parse_duration("10min", option="--max-time-to-90") == 600
    assert parse_duration("1.5h", option="--max-time-to-90") == 5400
    assert parse_duration("90", option="--max-time-to-90") == 90


def test_a_cpu_bound_host_shows_no_gain_and_says_why(small_trace: Path) -> None:
    # 16 MiB would hold more workers than 2 CPUs at 0.5 cores each: CPU-bound with and without
    inputs = _review(small_trace, host_mem_bytes=16 << 20, host_cpus=2, cpu_per_worker=0.5)
    doc = build_review(inputs)
    choice = recommend(inputs)
    shown = choice.shown
    assert shown is not None
    cap = shown.host.capacity
    assert cap is not None
    assert (cap.limit_without, cap.limit_with) == ("cpu", "cpu")
    assert cap.cpu_limit_without == 4
    assert cap.memory_limit_with > cap.memory_limit_without > 4
    assert cap.gain is not None
    assert cap.gain <= 0  # ksmd's CPU can only cost workers
    results = " ".join(
        b.text for s in doc.sections if s.id == "results" for b in s.blocks if isinstance(b, Para)
    )
    assert "The host is CPU-bound with and without KSM" in results
    text = _decision_text(doc)
    assert (
        f"The host is CPU-bound: its 2.0 CPUs run 4 workers, while its memory holds "
        f"{cap.memory_limit_without} without KSM, so KSM frees memory the CPUs cannot use"
    ) in text
    assert "for capacity, enable it only on hosts with less memory per CPU" in text
    assert text.startswith("Do not enable KSM to add workers to this host: it buys none")
    rows = {r["input"]: r for r in next(t for t in doc.tables() if t.name == "inputs").rows}
    assert rows["CPU per worker"]["source"] == "given"
    assert rows["host CPUs"]["source"] == "given"


def test_without_cpu_per_worker_the_review_asks_for_it(small_inputs: Any) -> None:
    doc = build_review(small_inputs)
    text = _decision_text(doc)
    assert "give `--cpu-per-worker`" in text
    rows = {r["input"]: r for r in next(t for t in doc.tables() if t.name == "inputs").rows}
    assert rows["CPU per worker"]["source"] == "not measured"
    assert rows["host CPUs"]["source"] == "assumed"
    assert rows["worker page tables"]["source"] == "assumed"


def test_kernel_defaults_are_always_shown(small_trace: Path) -> None:
    inputs = _review(small_trace, host_mem_bytes=16 << 20, grid={"pages_to_scan": [1000]})
    # the grid asked for 1000 only: the kernel's 100 was added
    assert sorted({s.knobs.pages_to_scan for s in inputs.scenarios}) == [100, 1000]
    choice = recommend(inputs)
    text = kernel_defaults_text(inputs, choice)
    assert text.startswith(
        "At the kernel's default knobs (`pages_to_scan=100, sleep_millisecs=20`)"
    )
    assert text in _decision_text(build_review(inputs))


def test_a_blocked_recommendation_names_the_gate_and_the_relaxation(small_inputs: Any) -> None:
    slow = replace(small_inputs, gates=ReviewGates(max_time_to_90_s=1e-3))
    choice = recommend(slow)
    assert choice.scenario is None
    assert choice.candidate is not None
    gates = {e.gate for e in choice.exclusions if e.scenario == choice.candidate.name}
    assert gates == {"time to 90 %"}
    doc = build_review(slow)
    callout = doc.sections[0].blocks[0]
    assert isinstance(callout, Callout)
    assert "blocked by the time to 90 % gate" in callout.text
    assert "relax with `--max-time-to-90 " in callout.text
    # every figure is still there: the candidate's
    figures = next(b for b in doc.sections[0].blocks if isinstance(b, KeyFigures))
    labels = " ".join(k.label for k in figures.items)
    for what in ("capacity gain", "memory freed", "time to 90 %", "ksmd CPU", "switch KSM off"):
        assert what in labels
    # the near-best margin: with none, only the very best saving qualifies
    strict = recommend(replace(small_inputs, gates=ReviewGates(near_best=0.0)))
    best = max(s.host.net_saved_bytes for s in small_inputs.scenarios if s.enabled)
    assert strict.scenario is not None
    assert strict.scenario.host.net_saved_bytes == best


@pytest.fixture(scope="module")
def meta_review() -> Any:
    trace = ROOT / "traces" / "django-preload"
    if not trace.exists():
        pytest.skip(f"{trace} is not in this checkout")
    # Meta's Instagram knobs (pages_to_scan 4000, sleep 20 ms) on a 64 GiB host
    return _review(
        trace,
        host_mem_bytes=64 << 30,
        headroom_fraction=0.1,
        grid={"pages_to_scan": [4000], "sleep_ms": [20]},
        policies=("prctl-all",),
        settle_scans=24,
    )


def test_meta_knobs_on_a_64_gib_host(meta_review: Any) -> None:
    doc = build_review(meta_review)
    choice = recommend(meta_review)
    meta = next(s for s in meta_review.scenarios if s.knobs.pages_to_scan == 4000)
    # the ksmd budget is a share of the host: 0.13 cores of 16 (assumed) CPUs is under 2 %
    assert meta.ksmd_host_share < 0.02
    assert meta.host_cpus is not None
    assert meta.host_cpus.value == 16
    callout = doc.sections[0].blocks[0]
    assert isinstance(callout, Callout)
    if choice.scenario is not None:
        assert choice.scenario.name == meta.name
        assert callout.kind == "decision"
    else:  # or the review names the gate that blocks it
        assert callout.kind == "warning"
        assert "blocked by the" in callout.text
    # with every figure shown, either way
    figures = next(b for b in doc.sections[0].blocks if isinstance(b, KeyFigures))
    assert len(figures.items) == 6
    cap = meta.host.capacity
    assert cap is not None
    assert cap.gain is not None
    assert F.pct(cap.gain) in figures.items[0].value
    assert {"inputs", "uncertainty"} <= {t.name for t in doc.sections[0].tables}


def test_meta_knobs_under_a_tight_budget_name_the_blocking_gate(meta_review: Any) -> None:
    # a budget at half of what Meta's knobs take (their share depends on the load the trace
    # recorded: docs/busy-host.md)
    share = next(s for s in meta_review.scenarios if s.knobs.pages_to_scan == 4000).ksmd_host_share
    tight = replace(meta_review, gates=ReviewGates(max_ksmd_host_share=share / 2))
    choice = recommend(tight)
    meta = next(s for s in tight.scenarios if s.knobs.pages_to_scan == 4000)
    blocked = next(e for e in choice.exclusions if e.scenario == meta.name)
    assert blocked.gate == "ksmd CPU"
    assert blocked.relax == f"--max-ksmd-cpu {F.fixed(100 * meta.ksmd_host_share + 0.05, 1)}%"
    # the best candidate is the one that needs the least relaxation among the best savers
    assert choice.candidate is not None
    assert choice.candidate.name == meta.name
    doc = build_review(tight)
    callout = doc.sections[0].blocks[0]
    assert isinstance(callout, Callout)
    assert f"The best candidate is `{meta.name}`" in callout.text
    assert f"relax with `{blocked.relax}`" in callout.text


def test_a_review_grid_holds_the_canarys_knobs() -> None:
    # the shipped canary ran pages_to_scan=1000: a review of 4000 also replays 1000 (and the
    # kernel's default, 100), so the canary is compared with the scenario it ran
    from planner.report.make import _review_grid
    from planner.whatif import KnobGrid

    canary = ROOT / "reports" / "canary" / "django-preload"
    grid = _review_grid(KnobGrid.from_mapping({"pages_to_scan": [4000]}), canary)
    assert grid is not None
    assert grid.axes == (("pages_to_scan", (100, 1000, 4000)),)
    assert _review_grid(None, None) is None
