"""The review document: thirteen sections, the recommendation rule, numbers taken from what-if.

Every test builds the review from a real what-if run on the small trace (``conftest.py``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from planner.report import fmt as F
from planner.report.common import more_workers, signed_pct
from planner.report.doc import Bullets, Callout, Document, Figure, KeyFigures, Para, Table
from planner.report.inputs import ReviewGates
from planner.report.review import (
    NEAR_BEST,
    _published_cpu_text,
    _scans_text,
    build_review,
    knob_sentence,
    range_sentence,
    recommend,
)
from planner.whatif import KnobEffect, SavingRange
from planner.whatif.result import KnobGroup

SECTION_IDS = [
    "decision",
    "scope",
    "state",
    "method",
    "results",
    "time",
    "cost",
    "attribution",
    "risks",
    "deployment",
    "sensitivity",
    "validation",
    "appendix",
]


def _table(doc: Document, name: str) -> Table:
    return next(t for t in doc.tables() if t.name == name)


def _text(doc: Document, section: str) -> str:
    """Every sentence of a section (paragraphs, bullets, callouts, captions)."""
    sec = next(s for s in doc.sections if s.id == section)
    parts: list[str] = []
    for b in sec.blocks:
        if isinstance(b, Para | Callout):
            parts.append(b.text)
        elif isinstance(b, Bullets):
            parts += b.items
        elif isinstance(b, Figure):
            parts.append(b.caption)
    return " ".join(parts)


def _with_host(inputs: Any, name: str, **changes: Any) -> Any:
    """``inputs`` with the host figures of one scenario changed."""
    scen = [
        replace(s, host=replace(s.host, **changes)) if s.name == name else s
        for s in inputs.scenarios
    ]
    return replace(inputs, scenarios=tuple(scen))


def test_thirteen_sections_in_order(small_inputs: Any) -> None:
    doc = build_review(small_inputs)
    assert [s.id for s in doc.sections] == SECTION_IDS
    assert all(s.blocks for s in doc.sections)
    assert doc.provenance["trace_hash"] == small_inputs.trace.trace_hash


def test_the_review_states_the_whatif_figures(small_inputs: Any) -> None:
    # the review renders what-if's fields: the same numbers, one row per scenario
    doc = build_review(small_inputs)
    rows = {r["scenario"]: r for r in _table(doc, "scenarios").rows}
    times = {r["scenario"]: r for r in _table(doc, "time-to-saving").rows}
    for s in small_inputs.scenarios:
        h = small_inputs.whatif.scenario(s.id).host("small")
        assert rows[s.name]["net_saved_bytes"] == h.net_saved_bytes
        assert rows[s.name]["steady_cpu_percent"] == h.ksmd_cpu_percent
        assert rows[s.name]["time_to_90_s"] == h.time_to_90_s
        if s.enabled:
            assert times[s.name]["full_scan_s"] == h.full_scan_s
            assert times[s.name]["time_to_50_s"] == h.time_to_50_s
            assert times[s.name]["scans_to_90"] == h.full_scans_to_90


def test_recommendation_is_the_cheapest_near_best(small_inputs: Any) -> None:
    choice = recommend(small_inputs)
    chosen = choice.scenario
    assert chosen is not None
    assert chosen.enabled
    used = [s for s in small_inputs.scenarios if s.enabled]
    best = max(s.host.net_saved_bytes for s in used)
    near = [s for s in used if s.host.net_saved_bytes >= (1 - NEAR_BEST) * best]
    assert chosen.host.ksmd_cpu_percent == min(s.host.ksmd_cpu_percent for s in near)
    excluded = dict(choice.excluded)
    for s in small_inputs.scenarios:
        if not s.enabled:
            assert excluded[s.name] == "KSM off (baseline)"
        elif s.name in excluded:
            assert excluded[s.name].startswith(("ksmd CPU above the budget: ", "too slow: "))


def test_decision_states_the_chosen_numbers(small_inputs: Any) -> None:
    doc = build_review(small_inputs)
    chosen = recommend(small_inputs).scenario
    assert chosen is not None
    h = chosen.host
    decision = doc.sections[0]
    callout = next(b for b in decision.blocks if isinstance(b, Callout))
    assert callout.kind == "decision"
    assert f"**{chosen.policy_set}**" in callout.text
    assert F.mib(h.net_saved_bytes) in callout.text
    assert F.pct(h.net_saved_fraction) in callout.text
    assert h.capacity is not None
    assert f"**{more_workers(h.capacity.gain)} per host**" in callout.text
    figures = next(b for b in decision.blocks if isinstance(b, KeyFigures))
    assert figures.items[0].value == signed_pct(h.capacity.gain)
    assert figures.items[1].value == F.mib(h.net_saved_bytes)
    rows = _table(doc, "scenarios")
    (hl,) = rows.highlight
    assert rows.rows[hl]["scenario"] == chosen.name


def test_cross_domain_and_cpu_budget_exclude(small_inputs: Any) -> None:
    first = recommend(small_inputs).scenario
    assert first is not None
    leaky = _with_host(small_inputs, first.name, cross_domain_saved_bytes=4096)
    second = recommend(leaky)
    assert second.scenario is not None
    assert second.scenario.name != first.name
    assert (first.name, "merges pages across security domains") in second.excluded

    poor = replace(small_inputs, gates=ReviewGates(max_ksmd_host_share=1e-6))
    none = recommend(poor)
    assert none.scenario is None
    # no recommendation still shows every figure: the best candidate's, and how to get one
    assert none.candidate is not None
    doc = build_review(poor)
    callout = doc.sections[0].blocks[0]
    assert isinstance(callout, Callout)
    assert callout.kind == "warning"
    assert f"The best candidate is `{none.candidate.name}`" in callout.text
    assert "blocked by the ksmd CPU gate" in callout.text
    assert "relax with `--max-ksmd-cpu " in callout.text
    figures = next(b for b in doc.sections[0].blocks if isinstance(b, KeyFigures))
    assert len(figures.items) >= 5
    assert {"inputs", "uncertainty"} <= {t.name for t in doc.sections[0].tables}


def test_named_recommendation_is_honoured(small_inputs: Any) -> None:
    last = small_inputs.scenarios[-1].name
    chosen = recommend(replace(small_inputs, recommended=last)).scenario
    assert chosen is not None
    assert chosen.name == last


def test_internal_checks_pass(small_inputs: Any) -> None:
    checks = _table(build_review(small_inputs), "checks")
    assert checks.rows
    assert all(r["passed"] for r in checks.rows), checks.rows


def test_a_broken_identity_is_reported(small_inputs: Any) -> None:
    bad = small_inputs
    for s in small_inputs.scenarios:
        if s.enabled:
            counters = replace(s.host.final_counters, general_profit=1)
            bad = _with_host(bad, s.name, final_counters=counters)
    checks = _table(build_review(bad), "checks")
    failed = {r["check"] for r in checks.rows if not r["passed"]}
    assert any(c.startswith("general_profit") for c in failed)
    assert any(c.startswith("per-process profits") for c in failed)


def test_waterfall_adds_up(small_inputs: Any) -> None:
    rows = _table(build_review(small_inputs), "waterfall-all").rows
    for r in rows:
        phys = r["physical_bytes"]
        assert r["raw_anonymous_bytes"] - r["fork_shared_bytes"] == phys
        left = phys - r["zero_pages_bytes"] - r["content_merged_bytes"] + r["KSM_metadata_bytes"]
        assert left == r["with_KSM_bytes"]


def test_zero_pages_come_from_the_replay(small_inputs: Any) -> None:
    # the small trace has two zero frames (the master's, mapped by its workers too): without
    # use_zero_pages they merge into one KSM page, so one frame is freed -- counted by the
    # what-if worker from the pages the policy makes mergeable
    rows = {r["scenario"]: r for r in _table(build_review(small_inputs), "waterfall-all").rows}
    for s in small_inputs.scenarios:
        assert rows[s.name]["zero_pages_bytes"] == s.host.zero_saved_bytes
        assert s.host.zero_saved_bytes == (4096 if s.host.saved_bytes else 0)


def test_attribution_flags_net_loss(small_inputs: Any) -> None:
    rows = _table(build_review(small_inputs), "attribution").rows
    assert rows
    for r in rows:
        assert r["net_loss"] == (r["profit_bytes"] < 0)
        if r["merging_pages"]:
            assert r["net_loss"] == (r["rmap_items"] / r["merging_pages"] > 64)


def test_cow_table_is_the_estimate(small_inputs: Any) -> None:
    rows = _table(build_review(small_inputs), "cow-breaks").rows
    assert [(r["mergeable_pages"], r["rewritten_pages"]) for r in rows] == [(53, 3), (50, 0)]


def test_same_inputs_same_document(small_inputs: Any) -> None:
    assert build_review(small_inputs).to_json() == build_review(small_inputs).to_json()


def test_capacity_projection_and_growth_curve(small_inputs: Any, bare_inputs: Any) -> None:
    doc = build_review(small_inputs)
    names = {t.name for t in doc.tables()}
    assert {"capacity", "intervals", "replica-growth"} <= names
    growth = _table(doc, "replica-growth").rows
    chosen = recommend(small_inputs).scenario
    assert chosen is not None
    fit = chosen.host.fit
    assert fit is not None
    assert fit.curve is not None
    assert [r["replicas"] for r in growth] == list(fit.curve.n)
    assert chosen.host.projected_workers is not None
    assert max(fit.curve.n) >= chosen.host.projected_workers
    bare = build_review(bare_inputs)
    assert not {"capacity", "intervals", "replica-growth"} & {t.name for t in bare.tables()}
    assert "No interval was computed" in _text(bare, "sensitivity")


def test_capacity_sentence_follows_the_shares(small_inputs: Any) -> None:
    chosen = recommend(small_inputs).scenario
    assert chosen is not None
    cap = chosen.host.capacity
    assert cap is not None
    larger = "The saving share at this size is larger than on the traced host"
    smaller = "The saving share at this size is not larger than on the traced host"
    text = _text(build_review(small_inputs), "results")
    if cap.ksm_saved_fraction_at_workers_with > chosen.host.net_saved_fraction:
        assert larger in text
    else:
        assert smaller in text
    flipped = replace(cap, ksm_net_saved_bytes=0.0)
    other = _text(build_review(_with_host(small_inputs, chosen.name, capacity=flipped)), "results")
    assert smaller in other
    assert larger not in other


# ----------------------------------------------------------------------------- sentences


def _effect(spread: float, faster: bool, costlier: bool) -> KnobEffect:
    return KnobEffect(
        "pages_to_scan",
        (KnobGroup("prctl-all", "allow", ("s03", "s04"), spread, faster, costlier),),
    )


def test_knob_sentence_follows_the_figures() -> None:
    trade = knob_sentence(_effect(0.01, faster=True, costlier=True))
    assert "moves by at most 1.0 %" in trade
    assert trade.endswith("the knob buys speed with CPU, not memory.")
    memory = knob_sentence(_effect(0.2, faster=True, costlier=True))
    assert "moves by up to 20.0 %" in memory
    assert "the knob changes how much is saved" in memory
    assert "not memory" not in memory
    mixed = knob_sentence(_effect(0.0, faster=False, costlier=True))
    assert "buys speed" not in mixed
    assert "not always faster and costlier" in mixed


def test_range_sentence_follows_the_figures() -> None:
    by_set = range_sentence(SavingRange("s01", "s02", 4, within_sets=0.01, across_sets=0.5))
    assert by_set.startswith("the policy set decides the saving (the sets' best differ by up to")
    assert "the knobs decide how fast it comes and what it costs" in by_set
    by_knobs = range_sentence(SavingRange("s01", "s02", 4, within_sets=0.3, across_sets=0.5))
    assert "policy set decides" not in by_knobs
    assert "the knobs matter for the saving too" in by_knobs
    alike = range_sentence(SavingRange("s01", "s02", 4, within_sets=0.0, across_sets=0.01))
    assert "the policy sets save about the same" in alike
    one = range_sentence(SavingRange("s01", "s02", 2, within_sets=0.0, across_sets=None))
    assert one.startswith("one policy set uses KSM")


def test_the_sentences_in_the_review_follow_its_data(small_inputs: Any) -> None:
    w = small_inputs.whatif
    (effect,) = w.knob_effects
    rng = w.saving_range
    assert rng is not None
    text = _text(build_review(small_inputs), "sensitivity")
    assert knob_sentence(effect) in text
    assert range_sentence(rng) in text
    # the same review over data that says otherwise says otherwise
    moved = replace(
        effect,
        groups=tuple(
            replace(g, saving_spread=0.5, costlier_with_more=False) for g in effect.groups
        ),
    )
    changed = replace(
        small_inputs,
        whatif=replace(
            w, knob_effects=(moved,), saving_range=replace(rng, within_sets=0.5, across_sets=0.6)
        ),
    )
    other = _text(build_review(changed), "sensitivity")
    assert "buys speed with CPU, not memory" not in other
    assert "the knob changes how much is saved" in other
    assert "the policy set decides the saving" not in other
    assert "the knobs matter for the saving too" in other


def test_the_small_sweep_measures_what_the_sentences_say(small_inputs: Any) -> None:
    # the knob effect and the saving range are computed by what-if from the scenarios
    w = small_inputs.whatif
    (effect,) = w.knob_effects
    assert effect.knob == "pages_to_scan"
    assert {g.policy_set for g in effect.groups} == {"prctl-all", "workers-prctl"}
    for g in effect.groups:
        a, b = (w.scenario(i) for i in g.scenario_ids)
        assert a.knobs_full.pages_to_scan < b.knobs_full.pages_to_scan
        saved = [a.net_saved_bytes, b.net_saved_bytes]
        assert g.saving_spread == pytest.approx((max(saved) - min(saved)) / max(saved))
        assert g.costlier_with_more == (b.ksmd_cpu_percent >= a.ksmd_cpu_percent)


# ----------------------------------------------------------------------------- canary


def test_observed_canary_in_validation_and_decision(small_inputs: Any) -> None:
    from planner.whatif.observed import CounterSeries, ObservedComparison

    chosen = recommend(small_inputs).scenario
    assert chosen is not None
    t = (0.0, 1.0, 2.0, 3.0)
    nothing = (None, None, None, None)
    obs = ObservedComparison(
        scenario_id=chosen.id,
        host="small",
        source="host canary",
        knobs_match=True,
        knob_differences={},
        t_s=t,
        observed=CounterSeries((0.0, 0.0, 40.0, 40.0), nothing, nothing),
        predicted=CounterSeries((0.0, 10.0, 50.0, 50.0), nothing, nothing),
    )
    assert obs.final_relative_error == pytest.approx(0.25)
    doc = build_review(replace(small_inputs, whatif=replace(small_inputs.whatif, observed=obs)))
    validation = next(s for s in doc.sections if s.id == "validation")
    assert [f.name for f in validation.figures] == ["validation"]
    text = _text(doc, "validation")
    assert f"The scenario `{chosen.name}` was compared" in text
    assert "Merging starts after 2.00 s on the host and 1.00 s in the replay" in text
    assert "on average 25.0 % above the observed one" in text
    assert "25.0 % above the observed value" in text
    rows = _table(doc, "validation").rows
    assert [r["observed_pages_sharing"] for r in rows] == [0.0, 0.0, 40.0, 40.0]
    decision = _text(doc, "decision")
    assert "the replay predicted 25.0 % more merged pages than the real KSM merged" in decision


def test_unmerge_at_the_projected_size(small_inputs: Any, bare_inputs: Any) -> None:
    # a number what-if computes (CapacityEstimate.ksm_saved_bytes), rendered in two places
    doc = build_review(small_inputs)
    rows = {r["scenario"]: r for r in _table(doc, "unmerge").rows}
    for s in small_inputs.scenarios:
        if not s.enabled:
            continue
        cap = s.host.capacity
        assert cap is not None
        assert rows[s.name]["projected_saved_bytes"] == cap.ksm_saved_bytes
        assert rows[s.name]["workers_with"] == cap.workers_with
        assert cap.ksm_saved_bytes >= cap.ksm_net_saved_bytes
    chosen = recommend(small_inputs).scenario
    assert chosen is not None
    assert chosen.host.capacity is not None
    cap = chosen.host.capacity
    figures = next(b for b in doc.sections[0].blocks if isinstance(b, KeyFigures))
    unmerge = next(k for k in figures.items if k.label.startswith("memory needed at once"))
    assert unmerge.value == F.gib(cap.ksm_saved_bytes)
    assert f"at {F.integer(cap.workers_with)} workers" in unmerge.detail
    risks = _text(doc, "risks")
    assert f"an unmerge needs {F.gib(cap.ksm_saved_bytes)} at once" in risks
    bare = build_review(bare_inputs)
    assert all(r["projected_saved_bytes"] is None for r in _table(bare, "unmerge").rows)
    assert "gives every merged page its own copy again" in _text(bare, "risks")
    assert "on the planned host, an unmerge needs" not in _text(bare, "risks")


@pytest.mark.parametrize(
    ("lo", "hi", "says", "never"),
    [
        (-0.46, -0.42, "42 % to 46 % below the real one", "above"),
        (0.53, 0.62, "53 % to 62 % above the real one", "below"),
        (-0.2, 0.1, "between 20 % below and 10 % above the real one", "to 10 %"),
    ],
)
def test_the_published_ksmd_cpu_error_is_told_the_way_it_went(
    lo: float, hi: float, says: str, never: str
) -> None:
    # the published runs' errors of the model's ksmd CPU may be of either sign (the planner
    # changed, and a page's cost depends on the host's CPU): the review says which
    text = _published_cpu_text("postgres", lo, hi)
    assert says in text
    assert never not in text
    assert "calibrate" in text


@pytest.mark.parametrize(
    ("lo", "hi", "says"),
    [
        (0.77, 1.0, "77 % to 100 % more full scans"),
        (-0.27, -0.2, "20 % to 27 % fewer full scans"),
        (-0.1, 0.3, "from 10 % fewer to 30 % more full scans"),
    ],
)
def test_the_published_full_scan_error_is_told_the_way_it_went(
    lo: float, hi: float, says: str
) -> None:
    text = _scans_text("On the published live runs of the node workload", lo, hi)
    assert says in text
    assert ("longer" in text) == (hi > 0)
    assert ("quicker" in text) == (hi <= 0)


def test_the_joins_the_trace_shows_are_among_what_is_not_modelled(
    small_inputs: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from planner.testing.builder import joining_world
    from tests.report.conftest import whatif_inputs

    bullet = "**Pages that take a shared content after the trace** are not continued"
    # the small trace's worker leaves its shared contents and nothing joins: no bullet
    assert bullet not in _text(build_review(small_inputs), "method")
    out = tmp_path_factory.mktemp("traces") / "joining"
    joining_world("joining").write_trace(out)
    inputs = whatif_inputs(out, policies=("prctl-all",), pages_to_scan=(100,), host_mem=None)
    text = _text(build_review(inputs), "method")
    assert bullet in text
    # 120 joins an interval of 2 s, against 248 shared pages at the end
    assert "60.0 pages a second taking a content other pages hold" in text
    assert f"({F.pct(60.0 * 60 / 248)} of the 248 shared pages in a minute)" in text
    assert any("continues none of these joins" in w for w in inputs.whatif.warnings)
    # where a canary of the traced run saw pages join (the replays' provenance says how
    # many rows the canary had join), the bullet says they are continued, and how many
    joined = dataclasses.replace(
        inputs,
        scenarios=tuple(
            dataclasses.replace(
                sc,
                host=dataclasses.replace(
                    sc.host,
                    replays=tuple(
                        dataclasses.replace(o, joins_canary_rows=37) for o in sc.host.replays
                    ),
                ),
            )
            for sc in inputs.scenarios
        ),
    )
    text = _text(build_review(joined), "method")
    assert bullet not in text
    assert "are continued as the canary saw them: 37 pages" in text
    assert "60.0 pages a second taking a content other pages hold" in text


def test_a_review_says_which_write_rates_are_the_samplers_floor(small_inputs: Any) -> None:
    # docs/live-validation.md, "Soft-dirty: rows written at every pass": postgres-2's
    # sampler made 3 passes in its last interval, and saw 1,074 of the 1,141 rows written
    # there written or changing at each of them; the review says their rates are floors
    from tests.report.conftest import whatif_inputs

    floor = "at every look of the sampler: their rates are floors"
    assert floor not in _text(build_review(small_inputs), "method")
    run = Path(__file__).resolve().parents[2] / "traces" / "softdirty" / "postgres-2" / "trace"
    inputs = whatif_inputs(run, policies=("prctl-all",), pages_to_scan=(1000,), host_mem=None)
    text = _text(build_review(inputs), "method")
    assert "1,074 of the 1,141 pages written changed or were written " + floor in text


def test_a_review_says_when_the_replayed_writes_happen(small_inputs: Any) -> None:
    # docs/live-validation.md, "Writes in step": a trace with sampling passes has each
    # page's writes where its process's passes counted them; a trace replayed without
    # writes (the small one) says nothing of their times
    from tests.report.conftest import whatif_inputs

    timed = "The sampled writes of each page fall where its process's sampling passes"
    assert timed not in _text(build_review(small_inputs), "method")
    assert "independent times" not in _text(build_review(small_inputs), "method")
    run = Path(__file__).resolve().parents[2] / "traces" / "softdirty" / "postgres-2" / "trace"
    inputs = whatif_inputs(run, policies=("prctl-all",), pages_to_scan=(1000,), host_mem=None)
    assert all(o.writes_timed_by_passes for sc in inputs.scenarios for o in sc.host.replays)
    text = _text(build_review(inputs), "method")
    assert timed + " counted writes, so processes that wrote together write together." in text

    # the same outcome without passes (a trace whose samples table is empty)
    def untimed_host(host: Any) -> Any:
        return replace(
            host, replays=[replace(o, writes_timed_by_passes=False) for o in host.replays]
        )

    untimed = replace(
        inputs, scenarios=[replace(sc, host=untimed_host(sc.host)) for sc in inputs.scenarios]
    )
    assert "Pages write at independent times" in _text(build_review(untimed), "method")
    # replays of which one had no passes: both said
    sc = inputs.scenarios[0]
    replays = [replace(sc.host.replays[0], writes_timed_by_passes=False), *sc.host.replays]
    mixed = replace(inputs, scenarios=[replace(sc, host=replace(sc.host, replays=replays))])
    assert "elsewhere at independent times." in _text(build_review(mixed), "method")


def test_a_review_fitted_to_a_canary_quotes_what_such_a_fit_did_on_other_runs(
    small_inputs: Any,
) -> None:
    # docs/busy-host.md, "A canary's fitted cost on another run": where the what-if fitted
    # ksmd's cost to a canary, the review quotes that fit's errors on other runs, not the
    # shipped profile's published ones, and does not ask for the calibration it made
    from planner.whatif.uncertainty import CANARY_FIT

    wi = small_inputs.whatif
    fitted = replace(
        small_inputs, whatif=replace(wi, provenance={**wi.provenance, "cost_fit": {"fitted": True}})
    )
    labelled = replace(
        small_inputs.trace,
        capture={**small_inputs.trace.capture, "labels": {"workload": "django-gunicorn"}},
    )
    lo, hi = CANARY_FIT.ksmd_cpu_error_range
    for inputs in (fitted, replace(fitted, trace=labelled)):
        doc = build_review(inputs)
        cost, time_ = _text(doc, "cost"), _text(doc, "time")
        assert "With ksmd's cost fitted to a canary, as here" in cost
        assert f"between {F.pct(-lo, 0)} below and {F.pct(hi, 0)} above the real one" in cost
        assert "calibrate the cost profile" not in cost
        assert "published live runs" not in cost + time_
        assert "0 % to 7 % more full scans" in time_  # -0.3 % is told as 0 %
    # without the fit: the published runs of the labelled workload, and the advice
    published = build_review(replace(small_inputs, trace=labelled))
    assert "On the published live runs of the django workload" in _text(published, "cost")
    assert "calibrate the cost profile" in _text(published, "cost")
    assert "With ksmd's cost fitted" not in _text(published, "cost")
