"""Knob grids: CLI lists, TOML files, validation of every combination."""

from __future__ import annotations

from pathlib import Path

import pytest

from planner.errors import KnobError
from planner.whatif.grid import (
    KnobGrid,
    knob_label,
    knob_name,
    load_grid,
    parse_cross_domain,
    parse_knob_list,
)


def test_cli_lists() -> None:
    assert parse_knob_list("pages-to-scan", "100,1000, 4000") == (100, 1000, 4000)
    assert parse_knob_list("smart_scan", "on,off") == (True, False)
    assert parse_knob_list("advisor", "none,scan-time") == ("none", "scan-time")
    assert parse_knob_list("sleep_millisecs", "20,20,200") == (
        20,
        200,
    )  # kernel alias, deduplicated
    assert parse_knob_list("advisor_initial_cpu_s", "0.5") == (0.5,)
    assert parse_knob_list("pages_to_scan", "0x10") == (16,)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("pages_to_scna", "1", "unknown knob 'pages_to_scna'"),
        ("pages_to_scan", "ten", "is not an integer"),
        ("smart_scan", "maybe", "is not on/off"),
        ("sleep_ms", "", "no value given"),
        ("pages_to_scan", "1.5", "is not an integer"),
    ],
)
def test_bad_cli_lists(name: str, text: str, message: str) -> None:
    with pytest.raises(KnobError, match=message):
        parse_knob_list(name, text)


def test_unknown_knob_suggests_the_closest() -> None:
    with pytest.raises(KnobError) as info:
        knob_name("pages_to_scna")
    assert info.value.hint == "did you mean pages_to_scan?"


def test_points_are_the_cartesian_product_in_order() -> None:
    grid = KnobGrid(
        axes=(("pages_to_scan", (100, 4000)), ("sleep_ms", (20, 200)), ("smart_scan", (True,)))
    )
    pts = grid.points()
    assert pts == [
        {"pages_to_scan": 100, "sleep_ms": 20, "smart_scan": True},
        {"pages_to_scan": 100, "sleep_ms": 200, "smart_scan": True},
        {"pages_to_scan": 4000, "sleep_ms": 20, "smart_scan": True},
        {"pages_to_scan": 4000, "sleep_ms": 200, "smart_scan": True},
    ]
    assert grid.varied == ("pages_to_scan", "sleep_ms")
    assert KnobGrid().points() == [{}]


def test_knobs_take_the_trace_hz_unless_set() -> None:
    assert KnobGrid.knobs({}, hz=1000).hz == 1000
    assert KnobGrid.knobs({"hz": 100}, hz=1000).hz == 100
    assert KnobGrid.knobs({}, hz=None).hz == 250
    assert KnobGrid.knobs({}, hz=123).hz == 250  # not a kernel HZ: the default


@pytest.mark.parametrize(
    ("axes", "message"),
    [
        (
            {"pages_to_scan": [100, 0]},
            r"pages_to_scan must be at least 1 \(grid point: pages_to_scan=0\)",
        ),
        ({"sleep_ms": -5}, "sleep_ms cannot be negative"),
        ({"advisor": ["none", "auto"]}, "unknown advisor 'auto'"),
        ({"max_page_sharing": 1}, "max_page_sharing must be at least 2"),
        ({"bogus": 1}, "unknown knob 'bogus'"),
        ({"sleep_ms": []}, "has no value"),
        ({"cross_domain": "maybe"}, "neither allow nor deny"),
    ],
)
def test_impossible_values_are_refused_up_front(axes: dict[str, object], message: str) -> None:
    with pytest.raises(KnobError, match=message):
        KnobGrid.from_mapping(axes, source="g")


def test_grid_file(tmp_path: Path) -> None:
    f = tmp_path / "grid.toml"
    f.write_text(
        "pages_to_scan = [100, 1000]\nsleep_millisecs = 20\nsmart_scan = [true, false]\n"
        'advisor_mode = ["none", "scan-time"]\ncross_domain = ["allow", "deny"]\n'
    )
    grid = load_grid(f)
    assert dict(grid.axes) == {
        "pages_to_scan": (100, 1000),
        "sleep_ms": (20,),
        "smart_scan": (True, False),
        "advisor": ("none", "scan-time"),
    }
    assert grid.cross_domain == ("allow", "deny")
    assert len(grid.points()) == 8
    wider = grid.with_axes([("sleep_ms", (20, 200))])
    assert {p["sleep_ms"] for p in wider.points()} == {20, 200}
    assert len(wider.points()) == 16
    assert grid.to_dict()["axes"]["pages_to_scan"] == [100, 1000]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pages_to_scan = [0]\n", "pages_to_scan must be at least 1"),
        ("pages_to_scan = [1]\npages_to_scan = [2]\n", "not valid TOML"),
        ("[knobs]\npages_to_scan = 1\n", r"\[knobs\] tables are not part of a grid"),
        ("page_to_scan = 1\n", "unknown knob 'page_to_scan'"),
        ("sleep_ms = true\n", "is not an integer"),
    ],
)
def test_bad_grid_files(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "grid.toml"
    f.write_text(text)
    with pytest.raises(KnobError, match=message):
        load_grid(f)


def test_missing_grid_file(tmp_path: Path) -> None:
    with pytest.raises(KnobError, match="does not exist"):
        load_grid(tmp_path / "nope.toml")


def test_cross_domain_and_labels() -> None:
    assert parse_cross_domain("allow,deny") == ("allow", "deny")
    assert parse_cross_domain(["deny", "deny"]) == ("deny",)
    assert knob_label({"smart_scan": False, "pages_to_scan": 100, "advisor": "none"}) == (
        "pages_to_scan=100 smart_scan=off advisor=none"
    )
    assert knob_label({}) == "kernel defaults"
