"""The knob table (:data:`planner.engine.knobs.KNOBS`) drives every place that names a knob.

Each test is parametrized over the table, so a knob added to ``KsmKnobs`` is checked in every
place at once: validation, the CLI options of replay, validate, whatif and report, the grid
parser (names, kernel spellings, values), the sysfs translation and the lease's kernel
defaults, and the display order of tables and the review. ``merge_across_nodes`` was added to
the table alone (and documented for the engines) to show it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import typer

from planner.cli import app
from planner.engine.knobs import (
    DISPLAY_ORDER,
    HZ_VALUES,
    KNOB_ALIASES,
    KNOBS,
    KnobSpec,
    KsmKnobs,
    knobs_from_sysfs,
    valid_hz,
)
from planner.errors import KnobError
from planner.kernel.run import REPLAY_TO_SYSFS, sysfs_knobs
from planner.kernel.sysfs import KERNEL_DEFAULTS
from planner.report.inputs import KNOB_ORDER
from planner.whatif.grid import KnobGrid, grid_from_options, knob_label, knob_name

by_name = pytest.mark.parametrize("spec", KNOBS, ids=lambda s: s.name)


def _other_value(spec: KnobSpec) -> Any:
    """A valid value that is not the default."""
    for v in spec.test_values:
        if v != spec.default:
            return v
    if spec.kind is bool:
        return not spec.default
    step = 1.5 if spec.kind is float else 1
    up = spec.default + step  # type: ignore[operator]
    return up if spec.maximum is None or up <= spec.maximum else spec.default - step  # type: ignore[operator]


def _text(spec: KnobSpec, value: Any) -> str:
    return spec.show(value)


def _options(command: str) -> dict[str, Any]:
    cmd = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    return {o: p for p in cmd.params for o in (*p.opts, *getattr(p, "secondary_opts", ()))}


def test_the_table_is_the_dataclass() -> None:
    assert [s.name for s in KNOBS] == [f.name for f in dataclasses.fields(KsmKnobs)]
    assert sorted(DISPLAY_ORDER) == sorted(s.name for s in KNOBS)
    assert len({s.rank for s in KNOBS}) == len(KNOBS), "display ranks must differ"
    assert len({s.flag for s in KNOBS}) == len(KNOBS)
    assert HZ_VALUES == (100, 250, 300, 1000)
    assert (valid_hz(300), valid_hz(None), valid_hz(7)) == (300, 250, 250)


@by_name
def test_defaults_and_validation_come_from_the_table(spec: KnobSpec) -> None:
    knobs = KsmKnobs()
    assert getattr(knobs, spec.name) == spec.default
    assert isinstance(getattr(knobs, spec.name), spec.kind)
    for value in spec.test_values:
        spec.check(value)
    with pytest.raises(KnobError, match=spec.name):
        KsmKnobs(**{spec.name: [1]})  # wrong type
    if spec.choices is not None:
        with pytest.raises(KnobError):
            KsmKnobs(**{spec.name: "no-such-value" if spec.kind is str else 123457})
    if spec.minimum is not None:
        below = spec.minimum - 1 if spec.kind is int else spec.minimum - 0.5
        with pytest.raises(KnobError, match=spec.name):
            KsmKnobs(**{spec.name: spec.kind(below)})
    if spec.maximum is not None:
        with pytest.raises(KnobError, match=spec.name):
            KsmKnobs(**{spec.name: spec.kind(spec.maximum + 1)})


@by_name
@pytest.mark.parametrize("command", ["replay", "validate", "whatif", "report"])
def test_every_command_has_an_option_for_every_knob(spec: KnobSpec, command: str) -> None:
    options = _options(command)
    assert spec.flag in options, f"{command} has no {spec.flag}"
    assert spec.help.split(".")[0] in (options[spec.flag].help or "")
    if spec.kind is bool and command in ("replay", "validate"):
        assert f"--no-{spec.flag[2:]}" in options


@by_name
def test_knob_options_reach_the_args(spec: KnobSpec, tmp_path: Any) -> None:
    from planner.cli._args import parse_args

    value = _other_value(spec)
    trace = str(tmp_path)
    if spec.kind is bool:
        single = [spec.flag if value else f"--no-{spec.flag[2:]}"]
    else:
        single = [spec.flag, _text(spec, value)]
    for command in ("replay", "validate"):
        args = parse_args(command, [trace, *single])
        assert args.knob_values == {spec.name: value}
        assert getattr(args.knobs(), spec.name) == value  # type: ignore[union-attr]
    for command in ("whatif", "report"):
        args = parse_args(command, [trace, spec.flag, _text(spec, value), "--out", "o"])
        assert args.knob_values == {spec.name: _text(spec, value)}
        grid = args.knob_grid()  # type: ignore[union-attr]
        assert grid.axes == ((spec.name, (value,)),)
        assert getattr(KnobGrid.knobs(grid.points()[0]), spec.name) == value
        assert f"{spec.flag} {_text(spec, value)}" in args.command


@by_name
def test_the_grid_parser_knows_every_name_and_spelling(spec: KnobSpec) -> None:
    value = _other_value(spec)
    for name in (spec.name, spec.name.replace("_", "-"), *spec.aliases):
        assert knob_name(name) == spec.name
        grid = KnobGrid.from_mapping({name: [value, spec.default]})
        assert grid.axes == ((spec.name, (value, spec.default)),)
    both = f"{_text(spec, value)},{_text(spec, spec.default)}"
    grid = grid_from_options(
        None, {spec.name: both}, [f"{spec.aliases[0]}={both}"] if spec.aliases else []
    )
    assert grid.axes == ((spec.name, (value, spec.default)),)
    assert f"{spec.name}=" in knob_label({spec.name: value})
    for alias, name in KNOB_ALIASES.items():
        assert knob_name(alias) == name


@by_name
def test_sysfs_translation_and_kernel_defaults(spec: KnobSpec) -> None:
    if spec.sysfs is None:
        assert spec.name not in REPLAY_TO_SYSFS
        assert all(k != spec.name for k in sysfs_knobs(KsmKnobs()))
        return
    assert REPLAY_TO_SYSFS[spec.name] == spec.sysfs
    assert KERNEL_DEFAULTS[spec.sysfs] == spec.to_sysfs(spec.default)
    value = _other_value(spec)
    assert sysfs_knobs({spec.name: value}) == {spec.sysfs: spec.to_sysfs(value)}
    assert sysfs_knobs(KsmKnobs(**{spec.name: value}))[spec.sysfs] == spec.to_sysfs(value)
    # and back, from a reading of the kernel's file (text; a word knob shows its choices)
    text = str(spec.to_sysfs(value))
    if spec.choices is not None and spec.kind is str:
        text = " ".join(f"[{c}]" if c == value else str(c) for c in spec.choices)
    assert knobs_from_sysfs({spec.sysfs: text, "run": "1"}) == {spec.name: value}


def test_the_kernel_knobs_are_the_tables() -> None:
    assert set(KERNEL_DEFAULTS) == {s.sysfs for s in KNOBS if s.sysfs is not None}


@by_name
def test_display_order_comes_from_the_table(spec: KnobSpec) -> None:
    assert spec.name in DISPLAY_ORDER
    assert KNOB_ORDER == DISPLAY_ORDER
    ranked = sorted(KNOBS, key=lambda s: s.rank)
    assert DISPLAY_ORDER.index(spec.name) == ranked.index(spec)


def test_merge_across_nodes_is_modelled_on_one_node() -> None:
    """Added through the table alone: on one NUMA node both values give the same replay."""
    from planner.engine import replay
    from planner.engine.options import ReplayOptions
    from planner.testing.builder import World

    w = World()
    w.spawn(1)
    w.map(1, 0x10000, [7] * 8 + list(range(100, 108)))
    w.fork(1, 2)
    w.write_range(2, 0x10000, [9] * 8)
    w.snapshot(0.0)
    ht = w.host_trace()
    opts = ReplayOptions(settle_scans=4)
    for engine in ("reference", "vectorized"):
        on = replay(ht, knobs=KsmKnobs(merge_across_nodes=True), options=opts, engine=engine)
        off = replay(ht, knobs=KsmKnobs(merge_across_nodes=False), options=opts, engine=engine)
        assert on.final_counters == off.final_counters
        assert on.final_counters["pages_sharing"] > 0
    assert sysfs_knobs(KsmKnobs(merge_across_nodes=False))["merge_across_nodes"] == 0
