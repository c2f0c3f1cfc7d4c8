"""``calibrate --trace --observed``: a cost profile that holds on the traced workload.

The "real" ksmd of these tests is the model itself with known costs and share (a recording
made from a replay), so the calibration must recover them; the kernel-marked test in
tests/kernel/test_calibrate_kernel.py does it on the real ksmd.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import planner.trace.recording as R
from planner.engine import CostProfile, KsmKnobs, ReplayOptions, prepare, replay
from planner.engine.costfit import ksmd_window, solve_contention
from planner.engine.timing import HostLoad
from planner.errors import InputDataError, UsageProblem
from planner.kernel.calibrate import calibrate_workload
from planner.testing.ksmd import ksmd_counters
from planner.testing.synth import SynthSpec, write_synthetic_trace
from planner.trace.io import open_trace
from planner.trace.recording import ObservedTimeline

CliRunner = Any
SPEC = SynthSpec(pages=5_000, processes=5, family_size=5, snapshots=2, interval_s=1.0, seed=7)
KNOBS = KsmKnobs(pages_to_scan=300, sleep_ms=20, hz=250)
LOAD = HostLoad.given(3.0)
#: the "real" host: costs 1.8x the shipped profile's, ksmd meets 0.6 of the runnable tasks
REAL = replace(CostProfile.default().scaled(1.8), sched_contention=0.6)


def recording_of(
    trace: Path, profile: CostProfile, load: HostLoad, seconds: float, knobs: KsmKnobs = KNOBS
) -> pd.DataFrame:
    """An ``observe`` recording's counters of what ``profile`` does on ``trace``: one row
    per full scan (ksmd_runtime_ns, pages_scanned, knobs), ksmd on from the start."""
    inp = prepare(open_trace(trace).load_host())
    res = replay(
        inp, knobs=knobs, options=ReplayOptions(duration_s=seconds, cost=profile, host_load=load)
    )
    return ksmd_counters(res, knobs)


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    out = tmp_path / "trace"
    write_synthetic_trace(SPEC, out)
    return out


@pytest.fixture
def observed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, trace: Path) -> Path:
    counters = recording_of(trace, REAL, LOAD, 20.0)
    timeline = ObservedTimeline(meta={}, counters=counters, processes=pd.DataFrame())
    monkeypatch.setattr(R, "read_observed", lambda path: timeline)
    return tmp_path / "observed"


def test_the_calibration_recovers_the_real_costs_and_share(
    trace: Path, observed: Path, tmp_path: Path
) -> None:
    out = tmp_path / "workload.json"
    cal = calibrate_workload(trace, observed, host_load=LOAD, out=out)
    assert cal.cost_scale == pytest.approx(1.8, rel=0.03)
    assert cal.profile.sched_contention == pytest.approx(0.6, rel=0.1)
    assert cal.profile.merge_ns == pytest.approx(REAL.merge_ns, rel=0.03)
    # the written profile is one replay accepts, and it reproduces the "real" ksmd
    prof = CostProfile.load(out)
    assert prof.provenance is not None
    assert prof.provenance["host_load"]["source"] == "given"
    inp = prepare(open_trace(trace).load_host())
    opts = ReplayOptions(duration_s=20.0, cost=prof, host_load=LOAD)
    real = replay(inp, knobs=KNOBS, options=replace(opts, cost=REAL))
    model = replay(inp, knobs=KNOBS, options=opts)
    assert model.cost.cpu_s == pytest.approx(real.cost.cpu_s, rel=0.05)
    assert model.cost.full_scans == pytest.approx(real.cost.full_scans, rel=0.1)
    assert json.loads(out.read_text())["name"].startswith("workload-")


def test_the_shipped_profile_is_off_until_calibrated(trace: Path, observed: Path) -> None:
    # the check has teeth: before calibration the model's CPU is far from the "real" one
    inp = prepare(open_trace(trace).load_host())
    opts = ReplayOptions(duration_s=20.0, host_load=LOAD)
    shipped = replay(inp, knobs=KNOBS, options=opts)
    real = replay(inp, knobs=KNOBS, options=replace(opts, cost=REAL))
    assert abs(shipped.cost.cpu_s / real.cost.cpu_s - 1) > 0.25


def test_a_version_1_trace_needs_a_load(trace: Path, observed: Path) -> None:
    with pytest.raises(UsageProblem, match="recorded no CPU load"):
        calibrate_workload(trace, observed)


def test_a_recording_without_a_running_ksmd_is_refused() -> None:
    df = pd.DataFrame(
        {"run": [0, 0], "ksmd_runtime_ns": [1, 2], "pages_scanned": [0, 0],
         "pages_skipped": [0, 0], "full_scans": [0, 0], "pages_to_scan": [100, 100],
         "sleep_millisecs": [20, 20], "smart_scan": [1, 1]},
        index=pd.Index([0.0, 1.0], name="t_s"),
    )  # fmt: skip
    with pytest.raises(InputDataError, match="running ksmd"):
        ksmd_window(df)
    with pytest.raises(InputDataError, match="ksmd_runtime_ns"):
        ksmd_window(df.drop(columns=["ksmd_runtime_ns"]))
    on = df.assign(run=1)
    with pytest.raises(InputDataError, match="scanned no page"):
        ksmd_window(on)


def test_the_window_stops_where_the_knobs_change() -> None:
    df = pd.DataFrame(
        {"run": [1, 1, 1, 1], "ksmd_runtime_ns": [0, 10**9, 2 * 10**9, 9 * 10**9],
         "pages_scanned": [0, 1000, 2000, 9000], "pages_skipped": [0, 0, 0, 0],
         "full_scans": [0, 1, 2, 9], "pages_to_scan": [100, 100, 100, 5000],
         "sleep_millisecs": [20, 20, 20, 20], "smart_scan": [1, 1, 1, 1]},
        index=pd.Index([0.0, 1.0, 2.0, 3.0], name="t_s"),
    )  # fmt: skip
    w = ksmd_window(df)
    assert (w.wall_s, w.cpu_s, w.pages_scanned, w.full_scans) == (2.0, 2.0, 2000, 2)
    assert w.ns_per_page == pytest.approx(1e6)
    assert w.batches == pytest.approx(2000 / 100 + 2)


def test_solve_contention() -> None:
    assert solve_contention(335 / (335 + 1024), 1.0, 0.3) == pytest.approx(1.0)
    assert solve_contention(335 / (335 + 1024), 2.0, 0.3) == pytest.approx(0.5)
    assert solve_contention(0.5, 0.0, 0.3) == 0.3  # an idle host cannot tell
    assert solve_contention(1.0, 4.0, 0.3) == 0.0  # a whole CPU: no contention met


def test_cli_needs_both_inputs_and_a_load(cli: CliRunner, trace: Path, observed: Path) -> None:
    code, _, err = cli(["calibrate", "--trace", str(trace)])
    assert code == 2
    assert "--observed" in err
    code, _, err = cli(["calibrate", "--trace", str(trace), "--observed", str(observed)])
    assert code == 2
    assert "--host-load" in err
    code, _, err = cli(["calibrate", "--host-load", "2"])
    assert code == 2
    assert "--trace" in err


def test_cli_writes_the_profile(
    cli: CliRunner, trace: Path, observed: Path, tmp_path: Path
) -> None:
    out = tmp_path / "w.json"
    args = ["calibrate", "--trace", str(trace), "--observed", str(observed), "--host-load", "3"]
    code, stdout, err = cli([*args, "--out", str(out), "--json"])
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["cost_scale"] == pytest.approx(1.8, rel=0.03)
    assert doc["written"] == str(out)
    assert CostProfile.load(out).name == doc["profile"]["name"]
    code, _, err = cli([*args, "--out", str(out)])
    assert code == 2  # an existing output is refused
    code, _, err = cli([*args])
    assert code == 0
    assert "x1.8" in err
    assert "not saved" in err


def test_the_canarys_page_classes_and_spreading_are_weighed_as_replay_weighs_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``calibrate --trace --observed`` fits with the canary's page classes set aside where
    its fitting replays break far more merges than the recording, then without the unseen
    breaks spread pro rata where that breaks nearer the recording (as ``replay --observed``
    does, :func:`planner.engine.costfit.fit_canary`), so that the profile is fitted on the
    path mix of the writes the replays will use."""
    import numpy as np

    import planner.engine.writes as W
    import planner.kernel.calibrate as C
    from planner.engine.writes import CanaryRates

    canary = CanaryRates(
        key=np.zeros(0, np.uint64), rate_per_s=np.zeros(0), by_comm={}, events=0, merged_s=0.0,
        missed_scale=2.0,
    )  # fmt: skip
    cows = {(True, True): 5000.0, (False, True): 1400.0, (False, False): 1100.0}
    calls: list[tuple[bool, bool]] = []

    class Fit:
        def __init__(self, variant: tuple[bool, bool]) -> None:
            self.model_cow_per_s = cows[variant]
            self.variant = variant

    def fake_fit_cost(inp: Any, real: Any, load: Any, *, base: Any, canary: Any) -> Any:
        calls.append((canary.page_classes, canary.missed_spread))
        return Fit(calls[-1])

    monkeypatch.setattr(C, "fit_cost", fake_fit_cost)
    monkeypatch.setattr(C, "recorded_cow_per_s", lambda counters, real: 1000.0)
    monkeypatch.setattr(C, "_unseen_rows", lambda inp, rates: None)  # no rows take them
    monkeypatch.setattr(W, "by_page_class", lambda inp, rates: rates.page_classes)
    monkeypatch.setattr(
        W,
        "spreads_missed_breaks",
        lambda inp, rates: not rates.page_classes and rates.missed_spread,
    )

    def weigh(fit: Any, rates: Any = canary) -> tuple[Any, dict[str, Any]]:
        return C._weigh_canary(None, rates, None, None, None, None, fit)  # type: ignore[arg-type]

    fit, notes = weigh(Fit((True, True)))
    assert calls == [(False, True), (False, False)]
    assert fit.variant == (False, False)
    assert notes["page_classes"] == {
        "recorded_cow_per_s": 1000.0,
        "with_classes_cow_per_s": 5000.0,
        "without_classes_cow_per_s": 1400.0,
        "used": False,
    }
    assert notes["missed_breaks"] == {
        "recorded_cow_per_s": 1000.0,
        "spread_cow_per_s": 1400.0,
        "unspread_cow_per_s": 1100.0,
        "scale": 2.0,
        "spread": False,
    }
    cows[(True, True)] = 1100.0  # within the band: kept, nothing refitted, nothing spread
    calls.clear()
    fit, notes = weigh(Fit((True, True)))
    assert calls == []
    assert notes["page_classes"]["used"] is True
    assert "missed_breaks" not in notes
    assert weigh(fit, None) == (fit, {})


@pytest.mark.parametrize("traced_run", [False, True])
def test_the_rows_taking_the_unseen_breaks_are_weighed_as_replay_weighs_them(
    monkeypatch: pytest.MonkeyPatch, traced_run: bool
) -> None:
    """Where the canary's fitting replays break far more merges than the recording because
    of the rows taking the breaks the canary did not see, ``calibrate --trace --observed``
    fits as ``replay --observed`` does: with those rows written more slowly for a canary of
    another run (:func:`planner.engine.costfit.weigh_unseen_breaks`), with fewer of them for
    the traced run's own (:func:`planner.engine.costfit.weigh_unseen_rows`)."""
    import math
    import types

    import numpy as np

    import planner.engine.writes as W
    import planner.kernel.calibrate as C
    from planner.engine.writes import CanaryRates

    canary = CanaryRates(
        key=np.zeros(0, np.uint64), rate_per_s=np.zeros(0), by_comm={}, events=0, merged_s=0.0
    )

    def cow(rate: float | None) -> float:
        rate = 5.0 if rate is None else rate
        return 500.0 + 400 * 1.5 * (1 - math.exp(-2 * rate))

    def fake_fit_cost(inp: Any, real: Any, load: Any, *, base: Any, canary: Any) -> Any:
        rows = canary.unseen_cyclers
        if rows is not None:  # each of the 400 rows at the derived rate breaks 1.5 a second
            return types.SimpleNamespace(model_cow_per_s=500.0 + 1.5 * rows, rows=rows)
        return types.SimpleNamespace(
            model_cow_per_s=cow(canary.unseen_write_per_s), rate=canary.unseen_write_per_s
        )

    monkeypatch.setattr(C, "fit_cost", fake_fit_cost)
    monkeypatch.setattr(C, "recorded_cow_per_s", lambda counters, real: 700.0)
    monkeypatch.setattr(
        C, "_unseen_rows", lambda inp, rates: {"candidates": 400, "write_per_s": 5.0}
    )
    monkeypatch.setattr(W, "by_page_class", lambda inp, rates: False)
    monkeypatch.setattr(W, "spreads_missed_breaks", lambda inp, rates: False)
    monkeypatch.setattr(W, "records_traced_run", lambda inp, rates: traced_run)
    real = types.SimpleNamespace(wall_s=60.0, full_scans=150)
    first = fake_fit_cost(None, None, None, base=None, canary=canary)
    fit, notes = C._weigh_canary(None, canary, None, real, None, None, first)  # type: ignore[arg-type]
    assert notes["unseen_breaks"]["cow_per_s_used"] == pytest.approx(700.0, rel=0.05)
    assert fit.model_cow_per_s == notes["unseen_breaks"]["cow_per_s_used"]
    if traced_run:
        assert 0 < fit.rows < 400
        assert notes["unseen_breaks"]["rows_used"] == fit.rows
    else:
        assert 0 < fit.rate < 5.0


def test_a_profile_calibrated_on_short_batches_says_so_where_it_is_used_on_longer_ones(
    trace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 100 pages / 20 ms the "real" ksmd ends its batches within their tick: the profile
    records how loosely its share is bounded, and a replay with it at 1000 pages warns
    (docs/busy-host.md §4, "A canary of short batches"); at 100 pages it does not."""
    from planner.replay import replay_trace

    at_100 = KsmKnobs(pages_to_scan=100, sleep_ms=20, hz=250)
    counters = recording_of(trace, REAL, LOAD, 20.0, at_100)
    timeline = ObservedTimeline(meta={}, counters=counters, processes=pd.DataFrame())
    monkeypatch.setattr(R, "read_observed", lambda path: timeline)
    out = tmp_path / "short.json"
    calibrate_workload(trace, tmp_path / "observed", host_load=LOAD, out=out)
    prof = CostProfile.load(out)
    assert prof.provenance is not None
    short = prof.provenance["short_batches"]
    assert short["share_low"] < prof.provenance["real_share"] < short["share_high"]
    opts = ReplayOptions(cost=prof, host_load=LOAD, duration_s=5.0)
    res = replay_trace(trace, knobs={"pages_to_scan": 1000}, options=opts)
    assert any("pages_to_scan=100" in w for w in res.provenance["cost_warnings"])
    res = replay_trace(trace, knobs={"pages_to_scan": 100}, options=opts)
    assert res.provenance["cost_warnings"] == []


def test_a_profile_fitted_on_a_quiet_host_says_so_where_a_busier_one_is_planned(
    trace: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The busy-host factor multiplies the fitted costs at a busier planned load, a factor
    the quiet recording could not measure: the replay says so, and says nothing at the
    recording's own load."""
    from planner.replay import replay_trace

    quiet = HostLoad.given(0.05)
    counters = recording_of(trace, REAL, quiet, 20.0)
    timeline = ObservedTimeline(meta={}, counters=counters, processes=pd.DataFrame())
    monkeypatch.setattr(R, "read_observed", lambda path: timeline)
    out = tmp_path / "quiet.json"
    calibrate_workload(trace, tmp_path / "observed", host_load=quiet, out=out)
    prof = CostProfile.load(out)
    knobs = {"pages_to_scan": 300, "sleep_ms": 20}

    def warnings(load: HostLoad) -> list[str]:
        opts = ReplayOptions(duration_s=5.0, cost=prof, host_load=load)
        res = replay_trace(trace, knobs=knobs, options=opts)
        return [w for w in res.provenance["cost_warnings"] if "busy_page_factor" in w]

    assert warnings(quiet) == []
    (busier,) = warnings(HostLoad.given(2.0))
    assert "fitted to a recording at 0.05 other runnable tasks per CPU" in busier
    assert "up to 2.00" in busier
    assert "2.33 times" in busier  # 2.5 at a busy host over 1.075 at 0.05
