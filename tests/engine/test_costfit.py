"""A cost profile fitted to a recording of ksmd (``replay``/``whatif --observed``).

The "real" ksmd here is the model itself with other costs and another share of the CPU (a
recording made from its replay), so the fit must recover them; and, what ``--observed`` is
for, a fit made at one knob setting must predict ksmd at another.
"""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest

from planner.engine import CostProfile, KsmKnobs, ReplayOptions, prepare, replay
from planner.engine.costfit import FIT_METHOD, fit_to_recording, is_fitted
from planner.engine.prepare import ReplayInput
from planner.engine.timing import HostLoad
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
