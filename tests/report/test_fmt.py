"""Number formatting: stable, unit-bearing, never 'nan' or '-0.0'."""

from __future__ import annotations

import math

import pytest

from planner.report import fmt as F


@pytest.mark.parametrize(
    ("value", "text"),
    [(117_792_768, "112.3 MiB"), (0, "0.0 MiB"), (-1, "0.0 MiB"), (math.nan, "n/a"), (None, "n/a")],
)
def test_mib(value: float | None, text: str) -> None:
    assert F.mib(value) == text


def test_pct_percent_and_intervals() -> None:
    assert F.pct(0.3468) == "34.7 %"
    assert F.percent(12) == "12.0 %"
    assert F.percent(4.56) == "4.6 %"
    assert F.interval(0.121, 0.188, F.pct) == "12.1 % – 18.8 %"
    assert F.interval(0.1, math.inf, F.pct) == "n/a"


@pytest.mark.parametrize(
    ("s", "text"),
    [(0.444, "0.44 s"), (51.2, "51 s"), (355.0, "5.9 min"), (9000.0, "2.5 h"), (None, "n/a")],
)
def test_seconds(s: float | None, text: str) -> None:
    assert F.seconds(s) == text


def test_size_picks_the_unit() -> None:
    assert [F.size(v) for v in (512, 2048, 3 << 20, 5 << 30)] == [
        "512 B",
        "2.0 KiB",
        "3.0 MiB",
        "5.00 GiB",
    ]


def test_format_value_by_column_format() -> None:
    assert F.format_value(None, "mib") == F.DASH
    assert F.format_value(1 << 20, "mib") == "1.0"
    assert F.format_value(0.5, "pct") == "50.0"
    assert F.format_value(True, "bool") == "yes"
    assert F.format_value(1234567, "int") == "1,234,567"
    assert F.format_value("x", "int") == "x"
    with pytest.raises(ValueError, match="unknown format"):
        F.format_value(1, "nope")  # type: ignore[arg-type]


def test_stable_float_rounds_the_last_bits_away() -> None:
    assert F.SIGNIFICANT_DIGITS == 6
    assert F.stable_float(0.1 + 0.2) == 0.3
    assert F.stable_float(1 / 3) == 0.333333
    assert F.stable_float(2962369350.0) == 2962370000.0
    assert F.stable_float(-1.23456789e-7) == -1.23457e-7
    assert math.isnan(F.stable_float(math.nan))
    assert F.stable_float(0.0) == 0.0


def test_display_rounds_the_value_the_data_files_hold() -> None:
    # noise below the 6th significant digit cannot change a displayed figure
    for noisy in (112.349999999, 112.350000001):
        assert F.fixed(noisy, 1) == F.fixed(112.35, 1)
    assert F.integer(413.4999999999) == F.integer(413.5) == "414"
    assert F.integer(10**12 + 1) == "1,000,000,000,001"  # integers are exact
