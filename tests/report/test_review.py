"""The review document: twelve sections, the recommendation rule, numbers taken from the inputs."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from planner.report import fmt as F
from planner.report.doc import Callout, KeyFigures, Table
from planner.report.review import build_review, recommend

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
    "sensitivity",
    "validation",
    "appendix",
]


def _table(doc: Any, name: str) -> Table:
    return next(t for t in doc.tables() if t.name == name)


def test_twelve_sections_in_order(small_inputs: Any) -> None:
    doc = build_review(small_inputs)
    assert [s.id for s in doc.sections] == SECTION_IDS
    assert all(s.blocks for s in doc.sections)
    assert doc.provenance["trace_hash"] == small_inputs.trace.trace_hash


def test_recommendation_is_the_cheapest_near_best(small_inputs: Any) -> None:
    choice = recommend(small_inputs)
    chosen = choice.scenario
    assert chosen is not None
    assert chosen.enabled
    used = [s for s in small_inputs.scenarios if s.enabled]
    best = max(s.net_saved_bytes for s in used)
    near = [s for s in used if s.net_saved_bytes >= 0.98 * best]
    assert chosen.steady_cpu_percent == min(s.steady_cpu_percent for s in near)
    excluded = dict(choice.excluded)
    for s in small_inputs.scenarios:
        if not s.enabled:
            assert excluded[s.name] == "KSM off (baseline)"
        elif s.name in excluded:
            assert s.steady_cpu_percent > small_inputs.cpu_budget_percent
            assert excluded[s.name].startswith("ksmd CPU above the budget: ")


def test_decision_states_the_chosen_numbers(small_inputs: Any) -> None:
    doc = build_review(small_inputs)
    chosen = recommend(small_inputs).scenario
    assert chosen is not None
    decision = doc.sections[0]
    callout = next(b for b in decision.blocks if isinstance(b, Callout))
    assert callout.kind == "decision"
    assert f"**{chosen.policy_set}**" in callout.text
    assert F.mib(chosen.net_saved_bytes) in callout.text
    assert F.pct(chosen.net_saved_fraction) in callout.text
    figures = next(b for b in decision.blocks if isinstance(b, KeyFigures))
    assert figures.items[0].value == F.mib(chosen.net_saved_bytes)
    rows = _table(doc, "scenarios")
    (hl,) = rows.highlight
    assert rows.rows[hl]["scenario"] == chosen.name


def test_cross_domain_and_cpu_budget_exclude(small_inputs: Any) -> None:
    scen = list(small_inputs.scenarios)
    first = recommend(small_inputs).scenario
    assert first is not None
    leaky = [replace(s, cross_domain_saved_bytes=4096) if s is first else s for s in scen]
    second = recommend(replace(small_inputs, scenarios=tuple(leaky)))
    assert second.scenario is not None
    assert second.scenario.name != first.name
    assert (first.name, "merges pages across security domains") in second.excluded

    poor = recommend(replace(small_inputs, cpu_budget_percent=0.01))
    assert poor.scenario is None
    doc = build_review(replace(small_inputs, cpu_budget_percent=0.01))
    callout = doc.sections[0].blocks[0]
    assert isinstance(callout, Callout)
    assert callout.kind == "warning"


def test_named_recommendation_is_honoured(small_inputs: Any) -> None:
    last = small_inputs.scenarios[-1].name
    assert recommend(replace(small_inputs, recommended=last)).scenario.name == last


def test_internal_checks_pass(small_inputs: Any) -> None:
    checks = _table(build_review(small_inputs), "checks")
    assert checks.rows
    assert all(r["passed"] for r in checks.rows), checks.rows


def test_a_broken_identity_is_reported(small_inputs: Any) -> None:
    bad = [
        replace(s, final_counters={**s.final_counters, "general_profit": 1}) if s.enabled else s
        for s in small_inputs.scenarios
    ]
    checks = _table(build_review(replace(small_inputs, scenarios=tuple(bad))), "checks")
    failed = {r["check"] for r in checks.rows if not r["passed"]}
    assert any(c.startswith("general_profit") for c in failed)
    assert any(c.startswith("per-process profits") for c in failed)


def test_waterfall_adds_up(small_inputs: Any) -> None:
    doc = build_review(small_inputs)
    rows = _table(doc, "waterfall-all").rows
    for r in rows:
        phys = r["physical_bytes"]
        assert r["raw_anonymous_bytes"] - r["fork_shared_bytes"] == phys
        left = phys - r["zero_pages_bytes"] - r["content_merged_bytes"] + r["KSM_metadata_bytes"]
        assert left == r["with_KSM_bytes"]


def test_attribution_flags_net_loss(small_inputs: Any) -> None:
    rows = _table(build_review(small_inputs), "attribution").rows
    for r in rows:
        assert r["net_loss"] == (r["profit_bytes"] < 0)
        if r["merging_pages"]:
            assert r["net_loss"] == (r["rmap_items"] / r["merging_pages"] > 64)


def test_cow_table_is_the_estimate(small_inputs: Any) -> None:
    rows = _table(build_review(small_inputs), "cow-breaks").rows
    assert [(r["mergeable_pages"], r["rewritten_pages"]) for r in rows] == [(53, 3), (50, 0)]


def test_same_inputs_same_document(small_inputs: Any) -> None:
    assert build_review(small_inputs).to_json() == build_review(small_inputs).to_json()


def test_observed_canary_in_validation_and_decision(small_inputs: Any) -> None:
    from planner.report.inputs import Observed

    chosen = recommend(small_inputs).scenario
    assert chosen is not None
    t = (0.0, 1.0, 2.0, 3.0)
    obs = Observed(
        source="host canary",
        scenario=chosen.name,
        t_s=t,
        observed={"pages_sharing": (0.0, 0.0, 40.0, 40.0)},
        predicted={"pages_sharing": (0.0, 10.0, 50.0, 50.0)},
        final_relative_error=0.25,
    )
    doc = build_review(replace(small_inputs, observed=obs))
    validation = next(s for s in doc.sections if s.id == "validation")
    assert [f.name for f in validation.figures] == ["validation"]
    text = " ".join(b.text for b in validation.blocks if hasattr(b, "text"))
    assert "Merging starts after 2.00 s on the host and 1.00 s in the replay" in text
    assert "on average 25.0 % above the observed one" in text
    assert "25.0 % above the observed value" in text
    rows = _table(doc, "validation").rows
    assert [r["observed_pages_sharing"] for r in rows] == [0.0, 0.0, 40.0, 40.0]
    decision = " ".join(
        item
        for b in doc.sections[0].blocks
        if hasattr(b, "items")
        for item in b.items  # type: ignore[attr-defined]
        if isinstance(item, str)
    )
    assert "was 25.0 % above what the real KSM merged; plan with the lower figure" in decision
