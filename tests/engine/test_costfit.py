"""A cost profile fitted to a recording of ksmd (``replay``/``whatif --observed``).

The "real" ksmd here is the model itself with other costs and another share of the CPU (a
recording made from its replay), so the fit must recover them; and, what ``--observed`` is
for, a fit made at one knob setting must predict ksmd at another.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any, cast

import numpy as np
import pandas as pd
import pytest

from planner.engine import CostProfile, KsmKnobs, ReplayOptions, prepare, replay
from planner.engine.costfit import (
    FIT_METHOD,
    HOLD_SHARING_BAND,
    UNSEEN_REFITS,
    UNSEEN_TOLERANCE,
    KsmdWindow,
    ShortBatches,
    busier_load_warning,
    fit_to_recording,
    is_fitted,
    ksmd_window,
    short_batch_warning,
    weigh_held_content,
    weigh_unseen_breaks,
    weigh_unseen_rows,
)
from planner.engine.prepare import ReplayInput
from planner.engine.timing import HostLoad
from planner.engine.writes import CanaryRates
from planner.testing.ksmd import ksmd_counters
from planner.testing.synth import SynthSpec, write_synthetic_trace
from planner.trace.io import open_trace

SPEC = SynthSpec(pages=5_000, processes=5, family_size=5, snapshots=2, interval_s=1.0, seed=11)
LOAD = HostLoad.given(3.0)
#: the "real" host: costs 1.6x the shipped profile's, ksmd meets 0.6 of the runnable tasks
REAL = replace(CostProfile.default().scaled(1.6), sched_contention=0.6)
AT_300 = KsmKnobs(pages_to_scan=300, sleep_ms=20, hz=250)
AT_100 = KsmKnobs(pages_to_scan=100, sleep_ms=20, hz=250)
AT_1000 = KsmKnobs(pages_to_scan=1000, sleep_ms=20, hz=250)
SECONDS = 20.0


@pytest.fixture(scope="module")
def inp(tmp_path_factory: pytest.TempPathFactory) -> ReplayInput:
    out = tmp_path_factory.mktemp("costfit") / "trace"
    write_synthetic_trace(SPEC, out)
    return prepare(open_trace(out).load_host())


def recording(inp: ReplayInput, knobs: KsmKnobs) -> pd.DataFrame:
    """An ``observe`` recording's counters of the "real" ksmd at ``knobs``: one row per
    full scan, ksmd on from the start."""
    opts = ReplayOptions(duration_s=SECONDS, cost=REAL, host_load=LOAD)
    return ksmd_counters(replay(inp, knobs=knobs, options=opts), knobs)


def test_a_fit_at_one_knob_setting_predicts_ksmd_at_another(inp: ReplayInput) -> None:
    base = ReplayOptions(duration_s=SECONDS, host_load=LOAD)
    fitted, note = fit_to_recording(inp, recording(inp, AT_300), base)
    assert note["fitted"] is True
    assert note["cost_scale"] == pytest.approx(1.6, rel=0.05)
    assert fitted.cost is not None
    assert fitted.cost.sched_contention == pytest.approx(0.6, rel=0.05)
    assert is_fitted(fitted.cost)
    assert fitted.cost.source == FIT_METHOD
    assert fitted.host_load == LOAD  # the replay keeps the load it was given
    for knobs in (AT_300, AT_100, AT_1000):
        real = replay(inp, knobs=knobs, options=replace(base, cost=REAL))
        model = replay(inp, knobs=knobs, options=fitted)
        shipped = replay(inp, knobs=knobs, options=base)
        assert model.cost.cpu_s == pytest.approx(real.cost.cpu_s, rel=0.05), knobs
        assert model.final_counters["pages_scanned"] == pytest.approx(
            real.final_counters["pages_scanned"], rel=0.05
        ), knobs
        # the check has teeth: the shipped profile is far from the "real" ksmd
        off = (
            shipped.final_counters["pages_scanned"] / real.final_counters["pages_scanned"] - 1,
            shipped.cost.cpu_s / real.cost.cpu_s - 1,
        )
        assert max(abs(e) for e in off) > 0.15, (knobs, off)


def test_what_cannot_be_fitted_is_left_as_given(inp: ReplayInput) -> None:
    base = ReplayOptions(duration_s=SECONDS, host_load=LOAD)
    no_cpu = recording(inp, AT_300).drop(columns=["ksmd_runtime_ns"])
    same, note = fit_to_recording(inp, no_cpu, base)
    assert same is base
    assert note["fitted"] is False
    assert "ksmd_runtime_ns" in note["why"]
    fitted, _ = fit_to_recording(inp, recording(inp, AT_300), base)
    again, note = fit_to_recording(inp, recording(inp, AT_100), fitted)
    assert again is fitted  # a fitted profile is not fitted a second time
    assert note["fitted"] is False
    assert "fitted" in note["why"]


def test_the_recorded_copy_on_write_is_read_over_ksmds_window(inp: ReplayInput) -> None:
    from planner.engine.costfit import recorded_cow_per_s

    counters = recording(inp, AT_300)
    t = counters.index.to_numpy(np.float64)
    counters = counters.assign(cow_ksm=np.rint(50.0 * t * t))  # 100 t breaks a second at t
    real = ksmd_window(counters)
    a, b = real.start_s, real.start_s + real.wall_s
    assert recorded_cow_per_s(counters, real) == pytest.approx(50.0 * (b * b - a * a) / (b - a))
    short = replace(real, wall_s=real.wall_s / 2)
    assert recorded_cow_per_s(counters, short) < recorded_cow_per_s(counters, real)
    assert recorded_cow_per_s(counters.drop(columns=["cow_ksm"]), real) is None


class _FakeFit:
    def __init__(self, cow: float | None, sharing: int | None = 1000) -> None:
        self.model_cow_per_s = cow
        self.model_pages_sharing = sharing
        self.real = "window"


def _choose(
    monkeypatch: pytest.MonkeyPatch,
    cows: dict[bool, float | None],
    classes: bool = True,
    fitted_before: bool = False,
) -> tuple[Any, list[bool]]:
    """fit_canary with the fitting replays replaced: each breaks ``cows[page_classes]`` merges
    a second, against a recorded 1,000; returns its choice and the variants it replayed.
    ``fitted_before``: the profile is fitted already (nothing is fitted again; one replay
    per variant says its breaks)."""
    from planner.engine import costfit
    from planner.engine import writes as writes_module

    fitted: list[bool] = []

    def fake_fit(source: Any, counters: Any, options: Any, canary: Any) -> Any:
        if fitted_before:
            return options, {"fitted": False, "why": "the profile is fitted"}, None
        fitted.append(canary.page_classes)
        return (
            options,
            {"fitted": True, "variant": canary.page_classes},
            _FakeFit(cows[canary.page_classes]),
        )

    def fake_breaks(source: Any, real: Any, options: Any, canary: Any) -> Any:
        assert fitted_before
        assert real == "window"
        fitted.append(canary.page_classes)
        return cows[canary.page_classes], 1000

    monkeypatch.setattr(costfit, "_fit_recording", fake_fit)
    monkeypatch.setattr(costfit, "_breaks_at", fake_breaks)
    monkeypatch.setattr(costfit, "_window_or_none", lambda counters: "window")
    monkeypatch.setattr(costfit, "recorded_cow_per_s", lambda counters, real: 1000.0)
    monkeypatch.setattr(
        writes_module, "by_page_class", lambda inp, rates: classes and rates.page_classes
    )
    monkeypatch.setattr(costfit, "unseen_rows", lambda source: None)  # no rows take them
    monkeypatch.setattr(
        "planner.engine.api.derive_input",
        lambda inp, opts, canary: ("derived", canary.page_classes),
    )
    canary = CanaryRates(
        key=np.zeros(0, np.uint64), rate_per_s=np.zeros(0), by_comm={}, events=0, merged_s=0.0
    )
    return costfit.fit_canary(cast(Any, None), None, ReplayOptions(), canary), fitted


def test_page_classes_that_break_far_more_merges_than_the_host_give_way_to_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A canary of another run whose page classes make the fitting replays break 5,000 merges
    a second where the host broke 1,000 is applied again without them (1,400: nearer), as on
    the Django sample with a fresh canary (docs/live-validation.md)."""
    got, fitted = _choose(monkeypatch, {True: 5000.0, False: 1400.0})
    assert fitted == [True, False]
    assert got.canary.page_classes is False
    assert got.source == ("derived", False)
    assert got.note["variant"] is False
    assert got.note["page_classes"] == {
        "recorded_cow_per_s": 1000.0,
        "with_classes_cow_per_s": 5000.0,
        "without_classes_cow_per_s": 1400.0,
        "used": False,
    }


def test_page_classes_are_kept_within_the_band_below_it_or_where_none_does_worse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # within 20 % above, or below (raising the rates would not raise the breaks): not weighed
    for cow in (1150.0, 600.0):
        got, fitted = _choose(monkeypatch, {True: cow, False: 1000.0})
        assert fitted == [True]
        assert got.canary.page_classes is True
        assert got.note["page_classes"]["used"] is True
    # weighed, and none is further off (by ratio: 1,300 / 1,000 against 1,000 / 300)
    got, fitted = _choose(monkeypatch, {True: 1300.0, False: 300.0})
    assert fitted == [True, False]
    assert got.canary.page_classes is True
    assert got.note["page_classes"]["without_classes_cow_per_s"] == 300.0
    # a recording of the traced run, or without mapping starts: nothing to weigh
    got, fitted = _choose(monkeypatch, {True: 5000.0, False: 1000.0}, classes=False)
    assert fitted == [True]
    assert "page_classes" not in got.note


def test_page_classes_are_weighed_with_a_profile_fitted_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A profile from ``calibrate --trace --observed`` is not fitted again, but the classes
    are still held to the recording: one replay per variant at its knobs."""
    got, replayed = _choose(monkeypatch, {True: 5000.0, False: 1400.0}, fitted_before=True)
    assert replayed == [True, False]
    assert got.canary.page_classes is False
    assert got.note["fitted"] is False
    assert got.note["page_classes"]["without_classes_cow_per_s"] == 1400.0
    got, replayed = _choose(monkeypatch, {True: 900.0, False: 1400.0}, fitted_before=True)
    assert replayed == [True]
    assert got.canary.page_classes is True


def _choose_spread(
    monkeypatch: pytest.MonkeyPatch,
    cows: dict[tuple[bool, bool], float],
    fitted_before: bool = False,
) -> tuple[Any, list[tuple[bool, bool]]]:
    """fit_canary on a canary of another run that missed breaks (``missed_scale`` 2), with
    the fitting replays replaced: each breaks ``cows[(page_classes, missed_spread)]`` merges a
    second against a recorded 1,000; its choice and the variants it replayed."""
    from planner.engine import costfit
    from planner.engine import writes as writes_module

    replayed: list[tuple[bool, bool]] = []

    def variant(canary: Any) -> tuple[bool, bool]:
        return (canary.page_classes, canary.missed_spread)

    def fake_fit(source: Any, counters: Any, options: Any, canary: Any) -> Any:
        if fitted_before:
            return options, {"fitted": False, "why": "the profile is fitted"}, None
        replayed.append(variant(canary))
        return (
            options,
            {"fitted": True, "variant": variant(canary)},
            _FakeFit(cows[variant(canary)]),
        )

    def fake_breaks(source: Any, real: Any, options: Any, canary: Any) -> Any:
        assert fitted_before
        replayed.append(variant(canary))
        return cows[variant(canary)], 1000

    monkeypatch.setattr(costfit, "_fit_recording", fake_fit)
    monkeypatch.setattr(costfit, "_breaks_at", fake_breaks)
    monkeypatch.setattr(costfit, "_window_or_none", lambda counters: "window")
    monkeypatch.setattr(costfit, "recorded_cow_per_s", lambda counters, real: 1000.0)
    monkeypatch.setattr(writes_module, "by_page_class", lambda inp, rates: rates.page_classes)
    monkeypatch.setattr(
        writes_module,
        "spreads_missed_breaks",
        lambda inp, rates: (
            not rates.page_classes and rates.missed_spread and rates.missed_scale > 1.0
        ),
    )
    monkeypatch.setattr(costfit, "unseen_rows", lambda source: None)  # no rows take them
    monkeypatch.setattr(
        "planner.engine.api.derive_input", lambda inp, opts, canary: ("derived", variant(canary))
    )
    canary = CanaryRates(
        key=np.zeros(0, np.uint64), rate_per_s=np.zeros(0), by_comm={}, events=0, merged_s=0.0,
        missed_scale=2.0,
    )  # fmt: skip
    return costfit.fit_canary(cast(Any, None), None, ReplayOptions(), canary), replayed


def test_the_unseen_breaks_are_spread_only_where_that_breaks_nearer_the_hosts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without page classes the unseen breaks are spread pro rata (every rate x2 here) or
    not at all: the rates as measured where their breaks lie within the band (20 %) of the
    recorded ``cow_ksm``, else whichever breaks nearer it (by ratio). The fresh Django
    canaries of docs/live-validation.md ("The breaks a canary does not see", "Within the
    band, the rates as measured") drop it, the committed one keeps it."""
    # the classes give way first (5,000 against 1,000), then the spreading (1,130 against 910)
    cows = {(True, True): 5000.0, (False, True): 1130.0, (False, False): 910.0}
    got, replayed = _choose_spread(monkeypatch, cows)
    assert replayed == [(True, True), (False, True), (False, False)]
    assert (got.canary.page_classes, got.canary.missed_spread) == (False, False)
    assert got.source == ("derived", (False, False))
    assert got.note["variant"] == (False, False)
    assert got.note["page_classes"]["used"] is False
    assert got.note["missed_breaks"] == {
        "recorded_cow_per_s": 1000.0,
        "spread_cow_per_s": 1130.0,
        "unspread_cow_per_s": 910.0,
        "scale": 2.0,
        "spread": False,
    }
    # the spreading nearer (870 against 720) and the rates as measured short by more than
    # the band (the committed canary): kept
    cows = {(True, True): 5000.0, (False, True): 870.0, (False, False): 720.0}
    got, replayed = _choose_spread(monkeypatch, cows)
    assert (got.canary.page_classes, got.canary.missed_spread) == (False, True)
    assert got.note["variant"] == (False, True)
    assert got.note["missed_breaks"]["spread"] is True
    # the spreading nearer (1,040 against 870), but the rates as measured within the band
    # (0.87 of the recording; the fresh canaries of 2026-12-05 17:30): dropped
    cows = {(True, True): 5000.0, (False, True): 1040.0, (False, False): 870.0}
    got, replayed = _choose_spread(monkeypatch, cows)
    assert (got.canary.page_classes, got.canary.missed_spread) == (False, False)
    assert got.note["missed_breaks"]["spread"] is False
    # within the band above it too: the rates as measured (1,190 against a spread 1,010)
    cows = {(True, True): 5000.0, (False, True): 1010.0, (False, False): 1190.0}
    got, replayed = _choose_spread(monkeypatch, cows)
    assert got.canary.missed_spread is False
    # just outside the band below (830: 0.83 of the recording) and the spreading nearer
    cows = {(True, True): 5000.0, (False, True): 1100.0, (False, False): 830.0}
    got, replayed = _choose_spread(monkeypatch, cows)
    assert got.canary.missed_spread is True
    # classes kept: the unseen breaks go to their candidates, nothing spread to weigh
    cows = {(True, True): 1100.0}
    got, replayed = _choose_spread(monkeypatch, cows)
    assert replayed == [(True, True)]
    assert "missed_breaks" not in got.note
    # with a profile fitted before: one replay per variant
    cows = {(True, True): 5000.0, (False, True): 1300.0, (False, False): 1050.0}
    got, replayed = _choose_spread(monkeypatch, cows, fitted_before=True)
    assert replayed == [(True, True), (False, True), (False, False)]
    assert (got.canary.page_classes, got.canary.missed_spread) == (False, False)


#: ksmd's windows in two canaries of the Django sample on an AMD EPYC at HZ 250
#: (docs/busy-host.md §4, "A canary of short batches"): 100 and 1000 pages / 20 ms
AMD_100 = KsmdWindow(
    start_s=1.0, wall_s=149.0, cpu_s=2.552, pages_scanned=605_009, pages_skipped=230_457,
    full_scans=8, pages_to_scan=100, sleep_ms=20, smart_scan=True, batch_count=6054.0,
)  # fmt: skip
AMD_1000 = KsmdWindow(
    start_s=1.0, wall_s=71.0, cpu_s=6.638, pages_scanned=2_750_592, pages_skipped=4_139_522,
    full_scans=67, pages_to_scan=1000, sleep_ms=20, smart_scan=True, batch_count=2779.6,
)  # fmt: skip


def test_a_recording_of_short_batches_bounds_ksmds_share_loosely() -> None:
    """0.42 ms batches in 24.6 ms periods: 0.6 ms beyond the slept 24 ms, so a batch took
    from 0.6 ms to a tick more; the share lies anywhere from 0.09 to 0.69 (0.16 taken,
    where ksmd got 0.67-0.74 in longer batches on the same host)."""
    low, high = AMD_100.share_range(250, 0)
    assert low < AMD_100.share(250, 0) < high
    assert (low, high) == pytest.approx((0.091, 0.69), abs=0.01)
    short = ShortBatches.of(AMD_100, 250, 0)
    assert short is not None
    assert short.batch_cpu_ns == pytest.approx(0.4215e6, rel=0.01)
    assert (short.share_low, short.share_high) == (low, high)
    assert ShortBatches.of(AMD_1000, 250, 0) is None  # 2.39 ms of CPU: over half a tick
    # short batches the host stretched across ticks (6 ms crossed): within a factor of two
    stretched = replace(AMD_100, wall_s=AMD_100.batches * 0.030)
    assert ShortBatches.of(stretched, 250, 0) is None
    lo, hi = stretched.share_range(250, 0)
    assert lo < stretched.share(250, 0) < hi <= 2 * lo
    # without a timed sleep the period is the batch: nothing to bound
    assert ShortBatches.of(replace(AMD_100, sleep_ms=0), 250, 0) is None


#: ksmd's windows in canaries of the Django sample on that AMD EPYC with ksmd's wait for a
#: CPU (``schedstat``; docs/busy-host.md §4, "The scheduler's account"): 100 pages alone
#: and beside four busy loops, 1000 pages alone.
SCHED_100 = KsmdWindow(
    start_s=2.0, wall_s=119.1, cpu_s=2.226, pages_scanned=485_000, pages_skipped=0,
    full_scans=8, pages_to_scan=100, sleep_ms=20, smart_scan=True, batch_count=4850.0,
    wait_s=1.4065,
)  # fmt: skip
SCHED_100_BUSY = replace(SCHED_100, wall_s=123.5, cpu_s=2.021, wait_s=2.705, batch_count=4847.0)
SCHED_1000 = KsmdWindow(
    start_s=2.0, wall_s=71.09, cpu_s=6.406, pages_scanned=2_801_000, pages_skipped=0,
    full_scans=67, pages_to_scan=1000, sleep_ms=20, smart_scan=True, batch_count=2801.0,
    wait_s=1.4985,
)  # fmt: skip


def test_the_schedulers_account_picks_the_share_of_short_batches() -> None:
    """Short batches: the share is ksmd's CPU over its CPU and its wait for a CPU, brought
    within the range the period allows. Long batches keep the period's share."""
    assert SCHED_100.short(250, 0)
    assert SCHED_100.sched_share == pytest.approx(0.613, abs=0.001)
    low, high = SCHED_100.share_range(250, 0)
    assert low < SCHED_100.sched_share < high
    assert SCHED_100.share(250, 0) == SCHED_100.sched_share
    assert SCHED_100.period_share(250, 0) == pytest.approx(0.18, abs=0.01)  # the middle
    # beside busy loops the scheduler says 0.43, more than the period allows (0.28): the
    # period also holds delays that are not a wait for a CPU
    assert SCHED_100_BUSY.sched_share == pytest.approx(0.428, abs=0.001)
    low, high = SCHED_100_BUSY.share_range(250, 0)
    assert high == pytest.approx(0.28, abs=0.01)
    assert SCHED_100_BUSY.share(250, 0) == high
    # a recording without the wait: the middle, as before
    assert replace(SCHED_100, wait_s=None).share(250, 0) == SCHED_100.period_share(250, 0)
    # long batches: the period's share, not the scheduler's (0.81)
    assert not SCHED_1000.short(250, 0)
    assert SCHED_1000.sched_share == pytest.approx(0.81, abs=0.01)
    assert SCHED_1000.share(250, 0) == SCHED_1000.period_share(250, 0)
    assert SCHED_1000.share(250, 0) == pytest.approx(0.68, abs=0.01)
    # the fit's provenance carries it, and nothing is left to warn of
    short = ShortBatches.of(SCHED_100, 250, 0)
    assert short is not None
    assert short.sched_share == SCHED_100.sched_share
    note = {
        "fitted": True,
        "real": asdict(SCHED_100),
        "real_share": SCHED_100.share(250, 0),
        "short_batches": asdict(short),
    }
    assert short_batch_warning(note, [KsmKnobs(pages_to_scan=4000, hz=250)]) is None


def test_a_recordings_wait_for_a_cpu_reaches_ksmds_window(inp: ReplayInput) -> None:
    """``ksmd_wait_ns`` over the window where every sample has it; ``None`` where the
    recording predates the column or a sample lacks it."""
    c = recording(inp, AT_100)
    assert ksmd_window(c).wait_s is None
    waited = c.assign(ksmd_wait_ns=np.arange(len(c), dtype=np.int64) * 10**8 + 5 * 10**9)
    assert ksmd_window(waited).wait_s == pytest.approx((len(c) - 1) * 0.1)
    gap = waited.astype({"ksmd_wait_ns": "float64"})
    gap.iloc[1, gap.columns.get_loc("ksmd_wait_ns")] = np.nan
    assert ksmd_window(gap).wait_s is None


def test_a_fit_on_a_quieter_host_warns_where_the_busy_factor_carries_the_plan() -> None:
    """The fit measured the costs at its recording's load; the busy-host factor scales them
    to the planned one. Within a quarter more, nothing is said."""
    note = {"fitted": True, "host_load": {"runnable_per_cpu": 0.03}}
    prof = CostProfile.default()  # busy_page_factor 2.5
    warning = busier_load_warning(note, None, [0.03, 1.5])
    assert warning is not None
    assert "at 0.03 other runnable tasks" in warning
    assert "up to 1.50" in warning
    assert f"{prof.load_factor(1.5) / prof.load_factor(0.03):.2f} times" in warning
    assert "--host-load" in warning
    assert busier_load_warning(note, None, [0.03]) is None  # the recording's own load
    assert busier_load_warning(note, None, []) is None
    busy = {"fitted": True, "host_load": {"runnable_per_cpu": 0.8}}  # 2.2 -> 2.5: 1.14
    assert busier_load_warning(busy, None, [10.0]) is None
    flat = replace(prof, busy_page_factor=1.0)  # a factor of 1 extrapolates nothing
    assert busier_load_warning(note, flat, [10.0]) is None
    assert busier_load_warning({**note, "fitted": False}, None, [10.0]) is None
    assert busier_load_warning({"fitted": True}, None, [10.0]) is None
    assert busier_load_warning(None, None, [10.0]) is None


def test_a_fit_to_short_batches_warns_where_the_knobs_ask_longer_ones() -> None:
    short = ShortBatches.of(AMD_100, 250, 0)
    assert short is not None
    note = {
        "fitted": True,
        "real": asdict(AMD_100),
        "real_share": AMD_100.share(250, 0),
        "short_batches": asdict(short),
    }
    at = [KsmKnobs(pages_to_scan=p, hz=250) for p in (100, 1000, 4000)]
    warning = short_batch_warning(note, at)
    assert warning is not None
    assert "pages_to_scan=100" in warning
    assert "0.09 to 0.69 (0.16 taken" in warning
    assert "40 times as long" in warning
    assert "pages_to_scan 1,000, 4,000" in warning
    assert "records ksmd's wait for a CPU" in warning  # the remedy
    assert short_batch_warning(note, at[:1]) is None  # nothing longer than recorded
    advisor = KsmKnobs(advisor="scan-time", hz=250)  # it may go up to 30,000 pages
    assert short_batch_warning(note, [advisor]) is not None
    assert short_batch_warning({k: v for k, v in note.items() if k != "short_batches"}, at) is None
    assert short_batch_warning({**note, "fitted": False}, at) is None
    assert short_batch_warning(None, at) is None


def test_the_fits_provenance_says_where_the_recorded_batches_were_short(
    inp: ReplayInput,
) -> None:
    """The "real" ksmd at 100 pages / 20 ms ends nearly every batch in its tick (short);
    at 1000 pages its batches are stretched across ticks: the period bounds the share."""
    base = ReplayOptions(duration_s=SECONDS, host_load=LOAD)
    _, short = fit_to_recording(inp, recording(inp, AT_100), base)
    _, long = fit_to_recording(inp, recording(inp, AT_1000), base)
    assert short["short_batches"]["share_low"] < short["real_share"]
    assert short["real_share"] < short["short_batches"]["share_high"]
    assert short_batch_warning(short, [AT_1000]) is not None
    assert "short_batches" not in long
    assert short_batch_warning(long, [AT_100, AT_1000, KsmKnobs(pages_to_scan=4000)]) is None


# ----------------------------------------------------------------------------- unseen breaks


def _rows_breaking(base: float, rows: int, per_row_max: float, k: float) -> Any:
    """A stand-in for the fitting replays: ``base`` breaks a second, plus ``rows`` rows
    that each break up to ``per_row_max`` a second, saturating in their write rate."""
    import math

    calls: list[float] = []

    def refit(rate: float) -> tuple[str, float]:
        calls.append(rate)
        return f"rate {rate:.4g}", base + rows * per_row_max * (1 - math.exp(-k * rate))

    return refit, calls


@pytest.mark.parametrize(("per_row_max", "k"), [(1.6, 2.5), (1.0, 10.0), (0.5, 50.0), (3.0, 0.05)])
def test_unseen_break_rows_are_written_slower_until_they_break_as_the_host_did(
    per_row_max: float, k: float
) -> None:
    """A Node canary's 692 candidate rows, written 2.9 times a second, broke 1,172 merges a
    second where the host broke 282 (74 without them): the rule finds the rate at which they
    make up the recording's breaks, within 5 %, in at most UNSEEN_REFITS fits after the one
    without them, whatever the shape of the model's saturation (the first guess, the
    saturation of a full scan, misjudges each of these)."""
    unseen = {"candidates": 692, "write_per_s": 2.94}
    refit, calls = _rows_breaking(base=74.0, rows=692, per_row_max=per_row_max, k=k)
    current = refit(2.94)[1]
    calls.clear()
    payload, note = weigh_unseen_breaks(282.0, current, unseen, 0.373, refit)
    assert payload is not None
    assert calls[0] == 0.0  # the breaks without them first
    assert len(calls) <= 1 + UNSEEN_REFITS
    assert note["cow_per_s_used"] == pytest.approx(282.0, rel=UNSEEN_TOLERANCE)
    assert payload == f"rate {note['used_write_per_s']:.4g}"
    assert note["without_cow_per_s"] == pytest.approx(74.0)
    # within the band: the rate as derived, no fit
    calls.clear()
    kept, within = weigh_unseen_breaks(282.0, 300.0, unseen, 0.373, refit)
    assert kept is None
    assert within["used_write_per_s"] == 2.94
    assert calls == []
    # under-breaking is left alone (the rows' rate is already fast), as is a recording
    # without cow_ksm or a canary without candidates
    for rec, cur, uns in ((282.0, 100.0, unseen), (None, 1172.0, unseen), (282.0, 1172.0, None)):
        assert weigh_unseen_breaks(rec, cur, uns, 0.373, refit)[0] is None, (rec, cur)
    assert calls == []


@pytest.mark.parametrize("power", [1.0, 0.8, 1.2])
def test_fewer_unseen_break_rows_take_the_breaks_until_they_break_as_the_host_did(
    power: float,
) -> None:
    """The traced run's own canary: 10,035 candidate rows (a JVM canary's) broke 2,000
    merges a second where the host broke 750 (700 without them). The rule finds how many of
    them make up the recording's breaks, within 5 %, in at most UNSEEN_REFITS fits after
    the one without any, whether the breaks grow with the count linearly or not; the others
    leave. Within the band, under it, or without a recording nothing is fitted."""
    calls: list[int] = []
    n = 10_035

    def refit(rows: int) -> tuple[str, float]:
        calls.append(rows)
        return f"rows {rows}", 700.0 + 1_300.0 * (rows / n) ** power

    unseen = {"candidates": n, "write_per_s": 0.21}
    payload, note = weigh_unseen_rows(750.0, 2_000.0, unseen, refit)
    assert calls[0] == 0  # the breaks without them first
    assert len(calls) <= 1 + UNSEEN_REFITS
    assert note["cow_per_s_used"] == pytest.approx(750.0, rel=UNSEEN_TOLERANCE)
    assert payload == f"rows {note['rows_used']}"
    assert 0 < note["rows_used"] < n
    calls.clear()
    for rec, cur, uns in ((750.0, 800.0, unseen), (750.0, 400.0, unseen), (None, 2e3, unseen)):
        assert weigh_unseen_rows(rec, cur, uns, refit)[0] is None, (rec, cur)
    assert weigh_unseen_rows(750.0, 2e3, {"candidates": 1}, refit)[0] is None
    assert calls == []


def test_the_breaks_without_the_unseen_rows_are_kept_where_they_are_nearest() -> None:
    """Where the rows without the unseen breaks already break as many merges as the host,
    those are kept (the rate 0)."""
    refit, calls = _rows_breaking(base=300.0, rows=692, per_row_max=1.6, k=2.5)
    payload, note = weigh_unseen_breaks(
        282.0, 1172.0, {"candidates": 692, "write_per_s": 2.94}, 0.373, refit
    )
    assert calls == [0.0]
    assert payload == "rate 0"
    assert note["used_write_per_s"] == 0.0


def test_unseen_break_rows_keep_their_content_where_it_breaks_nearer_and_merges_alike() -> None:
    """Rows taking the unseen breaks whose content the sampler saw change, in fitting
    replays that break too few merges (PostgreSQL: 173 a second where the host broke 298),
    are fitted again holding their content: kept where that breaks nearer the recording
    (249) and leaves the merged pages as they were (within HOLD_SHARING_BAND); not where
    the merged pages rise (a trial that also slowed the rows: +18 % on churn), nor where it
    breaks further off (churn B: 1,339 against 931 where the counted rows broke 653), nor
    where the replays are within the band, over it, or no such row changes."""
    unseen = {"candidates": 464, "write_per_s": 36.9, "changing": 143}
    calls: list[int] = []

    def refit(cow: float, sharing: int) -> Any:
        def run() -> tuple[str, float, int]:
            calls.append(1)
            return "held", cow, sharing

        return run

    payload, note = weigh_held_content(298.0, (173.0, 3351), unseen, refit(249.0, 3354))
    assert payload == "held"
    assert note == {
        "recorded_cow_per_s": 298.0,
        "cow_per_s": 173.0,
        "pages_sharing": 3351,
        "changing": 143,
        "held_cow_per_s": 249.0,
        "held_pages_sharing": 3354,
        "held": True,
    }
    # the merged pages move beyond the band: the canary never saw these rows merged
    moved = 3351 + int(HOLD_SHARING_BAND * 3351) + 1
    kept, note = weigh_held_content(916.0, (643.0, 35154), unseen, refit(905.0, 41924))
    assert kept is None
    assert note["held"] is False
    assert note["held_pages_sharing"] == 41924
    assert weigh_held_content(298.0, (173.0, 3351), unseen, refit(249.0, moved))[0] is None
    # breaks further off than before, by however little
    assert weigh_held_content(298.0, (173.0, 3351), unseen, refit(900.0, 3351))[0] is None
    assert weigh_held_content(931.0, (653.0, 35052), unseen, refit(1339.0, 35052))[0] is None
    # not weighed: within the band, over it, no recording, no changing row
    calls.clear()
    for rec, cur, uns in (
        (298.0, 250.0, unseen),
        (298.0, 400.0, unseen),
        (None, 173.0, unseen),
        (298.0, 173.0, {**unseen, "changing": 0}),
        (298.0, 173.0, None),
    ):
        assert weigh_held_content(rec, (cur, 3351), uns, refit(249.0, 3351))[0] is None
    assert calls == []
