"""Charts: deterministic SVG, ids unique per chart, nothing external, sized by CSS."""

from __future__ import annotations

import re

from planner.report import charts as C


def _waterfall(name: str = "wf") -> str:
    steps = [
        C.Step("raw", 400e6, "total"),
        C.Step("fork", 70e6, "down"),
        C.Step("metadata", 7e6, "up"),
        C.Step("with KSM", 337e6, "total"),
    ]
    return C.waterfall(name, "Where the memory goes", steps)


def test_same_input_same_bytes() -> None:
    assert _waterfall() == _waterfall()
    panel = C.Panel("p", [C.Series("a", [0, 1, 2], [0, 1e6, 2e6], C.PALETTE[0], [1], [1e6])], [0])
    assert C.time_panels("tp", "T", [panel]) == C.time_panels("tp", "T", [panel])


def test_inline_svg_is_clean() -> None:
    svg = _waterfall()
    assert svg.startswith("<svg ")
    assert "<?xml" not in svg
    assert "DOCTYPE" not in svg
    assert "<metadata>" not in svg
    assert "matplotlib.org" not in svg
    head = re.search(r"<svg [^>]*>", svg)
    assert head is not None
    assert "viewBox" in head.group(0)
    assert " width=" not in head.group(0)
    assert " height=" not in head.group(0)
    assert 'data-chart="wf"' in head.group(0)
    assert 'role="img"' in head.group(0)
    assert "<title>Where the memory goes</title>" in svg
    # every reference points at an id of the same chart
    ids = set(re.findall(r'\bid="([^"]+)"', svg))
    refs = set(re.findall(r'(?:href="#|url\(#)([^")]+)', svg))
    assert ids
    assert all(i.startswith("wf-") for i in ids)
    assert refs <= ids
    assert not re.search(r'(?:href|src)="(?:https?:)?//', svg)


def test_two_charts_share_no_id() -> None:
    a = set(re.findall(r'\bid="([^"]+)"', _waterfall("one")))
    b = set(re.findall(r'\bid="([^"]+)"', _waterfall("two")))
    assert a
    assert b
    assert not a & b


def test_standalone_file_has_a_size_and_a_prolog() -> None:
    svg = C.standalone_svg(_waterfall())
    assert svg.startswith('<?xml version="1.0"')
    assert re.search(r'<svg width="[\d.]+pt" height="[\d.]+pt" ', svg)


def test_waterfall_levels() -> None:
    steps = [
        C.Step("a", 100 << 20, "total"),
        C.Step("b", 30 << 20, "down"),
        C.Step("c", 5 << 20, "up"),
    ]
    assert [C.sum_levels(steps, i) for i in range(3)] == [100.0, 70.0, 75.0]


def test_every_chart_kind_renders() -> None:
    charts = [
        C.stacked_bars("s", "S", ["a", "b"], [C.Stack("x", [1e6, 2e6], C.GOOD)]),
        C.pareto("p", "P", [C.Point("a", 1.0, 1e6, C.ACCENT, on_front=True, chosen=True)]),
        C.bars("b", "B", ["a", "b"], [1.0, -2.0], threshold=0.5, threshold_label="t"),
        C.lines(
            "l", "L", [C.Series("a", [1, 10], [1, 2], C.ACCENT)], xlabel="x", ylabel="y", logx=True
        ),
    ]
    for svg in charts:
        assert svg.count("<svg ") == 1
        assert svg.rstrip().endswith("</svg>")
