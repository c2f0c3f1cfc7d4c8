"""Knob validation and cost profiles."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from planner.engine import CostProfile, KsmKnobs, ReplayOptions
from planner.engine.cost import PATHS
from planner.errors import InputDataError, KnobError


@pytest.mark.parametrize(
    "bad",
    [
        {"pages_to_scan": 0},
        {"sleep_ms": -1},
        {"hz": 123},
        {"max_page_sharing": 1},
        {"advisor": "magic"},
        {"advisor_max_cpu": 0},
        {"advisor_min_pages_to_scan": 10, "advisor_max_pages_to_scan": 5},
    ],
)
def test_impossible_knobs_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(KnobError):
        KsmKnobs(**bad)  # type: ignore[arg-type]


def test_advisor_starts_at_its_minimum() -> None:
    assert KsmKnobs(advisor="scan-time").initial_pages_to_scan == 500
    assert KsmKnobs(pages_to_scan=4000).initial_pages_to_scan == 4000


@pytest.mark.parametrize(
    "bad",
    [{"duration_s": 0}, {"grid_s": -1}, {"snapshot_scans": (2, 3)}, {"snapshot_scans": (1, 3, 2)}],
)
def test_impossible_options_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(KnobError):
        ReplayOptions(**bad)  # type: ignore[arg-type]


def test_default_profile_and_round_trip(tmp_path: Path) -> None:
    prof = CostProfile.default()
    assert len(prof.path_costs()) == len(PATHS)
    assert prof.scan_insert_ns(1 << 20) > prof.scan_insert_ns(2)
    p = tmp_path / "p.json"
    p.write_text(json.dumps(prof.to_dict()))
    assert CostProfile.load(p) == prof


def test_bad_profiles_are_refused(tmp_path: Path) -> None:
    p = tmp_path / "p.json"
    d = CostProfile.default().to_dict()
    d["merge_ns"] = -5
    p.write_text(json.dumps(d))
    with pytest.raises(InputDataError, match="merge_ns"):
        CostProfile.load(p)
    d = CostProfile.default().to_dict()
    d["bogus_ns"] = 1
    p.write_text(json.dumps(d))
    with pytest.raises(InputDataError, match="unknown"):
        CostProfile.load(p)
    with pytest.raises(InputDataError, match="does not exist"):
        CostProfile.load(tmp_path / "missing.json")


def test_a_profile_warns_when_the_trace_was_captured_on_another_cpu() -> None:
    default = CostProfile.default()
    assert default.cpu is not None
    assert "family 6, model 207" in default.cpu
    other = "Intel(R) Xeon(R) Processor @ 2.80GHz (family 6, model 106)"
    text = default.other_cpu_warning(other)
    assert text is not None
    assert other in text
    assert default.cpu in text
    assert "calibrate" in text
    assert default.other_cpu_warning("Intel Xeon Gold (family 6, model 207)") is None  # same
    assert default.other_cpu_warning("Intel(R) Xeon(R) Processor @ 2.80GHz") is None  # unknown
    assert default.other_cpu_warning(None) is None
    bare = dataclasses.replace(default, provenance=None)
    assert bare.cpu is None
    assert bare.other_cpu_warning(other) is None


def test_a_profiles_items_are_hashable_and_give_it_back() -> None:
    # whatif keys its replay tasks by them: a calibrated profile carries its provenance (a
    # dict), which is no cost and stays out
    prof = dataclasses.replace(
        CostProfile.default(), provenance={"cpu_model": "x", "measurements": {"a": [1]}}
    )
    items = prof.items()
    assert hash(items) == hash(CostProfile.default().items())
    assert CostProfile.from_dict(dict(items)) == prof  # provenance is not compared


def test_a_canary_on_another_cpu_than_the_trace_is_warned_of() -> None:
    from planner.engine.cost import canary_cpu_warning, other_cpu

    a, b = "Xeon (family 6, model 106)", "Xeon Gold (family 6, model 207)"
    assert other_cpu(a, b)
    assert not other_cpu(a, "Other name (family 6, model 106)")  # the generation decides
    assert not other_cpu(a, "Xeon @ 2.80GHz")  # says no generation
    text = canary_cpu_warning(a, b)
    assert text is not None
    assert a in text
    assert b in text
    assert canary_cpu_warning(a, a) is None
    assert canary_cpu_warning(None, b) is None


def test_the_cost_warning_names_the_profiles_cpu_or_the_canarys() -> None:
    # replay and whatif ask the same question: the profile's CPU, or (a profile fitted to
    # a canary) the canary's, against the trace's
    from planner.engine.cost import cost_cpu_warning

    traced = "Xeon (family 6, model 106)"
    unfitted = cost_cpu_warning(CostProfile.default(), traced, None)
    assert unfitted is not None
    assert "cost profile 'default'" in unfitted
    assert cost_cpu_warning(CostProfile.default(), traced, {"fitted": False}) == unfitted
    fit = {"fitted": True, "canary_cpu": "Xeon (family 6, model 85)"}
    fitted = cost_cpu_warning(CostProfile.default(), traced, fit)
    assert fitted is not None
    assert fitted.startswith("the canary was recorded on Xeon (family 6, model 85)")
    same = {"fitted": True, "canary_cpu": traced}
    assert cost_cpu_warning(CostProfile.default(), traced, same) is None


def test_each_shipped_profile_is_chosen_for_its_own_cpu_and_the_default_otherwise() -> None:
    # docs/busy-host.md §7: a trace is replayed with the shipped profile measured on its CPU
    # generation; a profile given (not the default) is used as given
    from importlib import resources

    from planner.engine.cost import (
        SHIPPED_PROFILES,
        profile_choice,
        profile_choice_text,
        profile_for_trace,
    )
    from planner.provenance import cpu_generation

    shipped = CostProfile.shipped()
    default = CostProfile.default()
    assert shipped[0] == default
    assert len(shipped) >= 2
    folder = resources.files("planner.engine").joinpath("profiles")
    on_disk = {p.name for p in folder.iterdir() if p.name.endswith(".json")}
    assert on_disk == set(SHIPPED_PROFILES)  # a file added is listed, a listed file exists
    generations = [cpu_generation(p.cpu) for p in shipped]
    assert None not in generations
    assert len(set(generations)) == len(shipped)  # one profile per CPU generation
    assert len({p.name for p in shipped}) == len(shipped)
    for prof in shipped:
        assert prof.cpu is not None
        assert CostProfile.for_cpu(prof.cpu) == prof
        family_model = prof.cpu[prof.cpu.index("(") :]
        assert CostProfile.for_cpu(f"Another name {family_model}") == prof  # generation decides
        assert profile_for_trace(None, prof.cpu) == prof
        assert profile_for_trace(default, prof.cpu) is default  # given: used as given
        choice = profile_choice(prof, None, prof.cpu)
        assert choice == {"name": prof.name, "cpu": prof.cpu, "why": "traced CPU",
                          "traced_cpu": prof.cpu}  # fmt: skip
        assert "shipped for the trace's CPU" in profile_choice_text(choice)
    amd = CostProfile.for_cpu("AMD EPYC 7B13 (family 25, model 17)")
    assert amd.name == "amd-epyc-25-17"
    assert CostProfile.for_cpu("AMD EPYC 7742 (family 23, model 49)").name == "amd-epyc-23-49"
    assert amd != default
    assert amd.other_cpu_warning("AMD EPYC (family 25, model 17)") is None
    for unknown in (None, "Xeon @ 2.80GHz", "Xeon (family 6, model 106)"):
        assert CostProfile.for_cpu(unknown) == default
        choice = profile_choice(default, None, unknown)
        assert choice["why"] == "default"
        assert "the shipped default" in profile_choice_text(choice)
    choice = profile_choice(default, default, amd.cpu)  # the default given for an AMD trace
    assert choice["why"] == "given"
    assert profile_choice_text(choice).startswith("cost profile 'default' as given")
