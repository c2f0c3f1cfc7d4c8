"""``whatif --observed CANARY`` fits ksmd's cost to the canary, as ``replay --observed`` does.

The canary here is a recording made from a replay of the trace with known costs and share
(the "real" ksmd), read through a patched ``read_observed``; its write rates are not what is
tested (none).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

import planner.engine.writes as W
import planner.trace.recording as R
from planner.engine import CostProfile, KsmKnobs, ReplayOptions, prepare, replay
from planner.engine.timing import HostLoad
from planner.engine.writes import CanaryVariant
from planner.testing.synth import SynthSpec, write_synthetic_trace
from planner.trace.io import open_trace
from planner.trace.recording import ObservedTimeline
from planner.whatif.run import _fit_cost

SPEC = SynthSpec(pages=3_000, processes=3, family_size=3, snapshots=2, interval_s=1.0, seed=5)
LOAD = HostLoad.given(3.0)
REAL = replace(CostProfile.default().scaled(1.5), sched_contention=0.6)
KNOBS = KsmKnobs(pages_to_scan=300, sleep_ms=20, hz=250)


@pytest.fixture
def trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return _traced_with_canary(tmp_path, monkeypatch, KNOBS)


def _traced_with_canary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, knobs: KsmKnobs) -> Path:
    """The trace, and its canary (any path) recorded at ``knobs`` from the "real" ksmd."""
    out = tmp_path / "trace"
    write_synthetic_trace(SPEC, out)
    inp = prepare(open_trace(out).load_host())
    res = replay(
        inp, knobs=knobs, options=ReplayOptions(duration_s=15.0, cost=REAL, host_load=LOAD)
    )
    rows, cpu = [{"t_s": 0.0, "full_scans": 0, "pages_scanned": 0, "pages_skipped": 0}], 0.0
    cpus = [0.0]
    for s in res.scans:
        cpu += s.cpu_s
        cpus.append(cpu)
        rows.append(
            {"t_s": s.t_s, "full_scans": s.full_scans, "pages_scanned": s.counters["pages_scanned"],
             "pages_skipped": s.counters["pages_skipped"]}
        )  # fmt: skip
    df = pd.DataFrame(rows).set_index("t_s")
    df["ksmd_runtime_ns"] = [round(c * 1e9) + 10**9 for c in cpus]
    df = df.assign(run=1, pages_to_scan=knobs.pages_to_scan, sleep_millisecs=20, smart_scan=1)
    timeline = ObservedTimeline(meta={}, counters=df, processes=pd.DataFrame())
    monkeypatch.setattr(R, "read_observed", lambda path: timeline)
    monkeypatch.setattr(W, "canary_rates", lambda obs, page_size: None)
    return out


def test_one_host_is_fitted_to_its_canary(trace: Path) -> None:
    opts = ReplayOptions(host_load=LOAD)
    profile, note, variant = _fit_cost(open_trace(trace), ["synthetic"], "canary", None, opts)
    # (how the canary's rates reach the rows is weighed in tests/engine/test_costfit.py)
    assert variant == CanaryVariant()
    assert note is not None
    assert note["fitted"] is True
    assert profile is not None
    assert profile.name == "default+recording"
    assert note["cost_scale"] == pytest.approx(1.5, rel=0.05)
    assert profile.sched_contention == pytest.approx(0.6, rel=0.05)


def test_no_canary_or_several_hosts_keep_the_profile(trace: Path) -> None:
    opts = ReplayOptions(host_load=LOAD)
    given = CostProfile.default().scaled(2.0)
    assert _fit_cost(open_trace(trace), ["synthetic"], None, given, opts) == (
        given,
        None,
        CanaryVariant(),
    )
    profile, note, variant = _fit_cost(open_trace(trace), ["a", "b"], "canary", given, opts)
    assert variant == CanaryVariant()
    assert profile is given
    assert note is not None
    assert note["fitted"] is False
    assert "2 hosts" in note["why"]


def test_the_review_says_when_the_canarys_page_classes_were_set_aside() -> None:
    from planner.whatif.run import _page_classes_warning

    weighed = {
        "recorded_cow_per_s": 1240.9,
        "with_classes_cow_per_s": 4983.9,
        "without_classes_cow_per_s": 1462.3,
        "used": False,
    }
    (line,) = _page_classes_warning({"fitted": True, "page_classes": weighed})
    assert "4,984 merges a second" in line
    assert "host broke 1,241" in line
    assert "(1,462 a second)" in line
    assert _page_classes_warning({"page_classes": {**weighed, "used": True}}) == []
    assert _page_classes_warning({"fitted": True}) == []
    assert _page_classes_warning(None) == []


def test_a_canary_of_short_batches_is_said_to_guess_ksmds_share_at_longer_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 100 pages the "real" ksmd's batches end within their tick: the fit's share is the
    middle of a wide range, and a replay at longer batches says so (docs/busy-host.md §4);
    the 300-page canary above, whose batches were stretched across ticks, is not."""
    from planner.engine.costfit import short_batch_warning
    from planner.replay import replay_trace

    at_100 = KsmKnobs(pages_to_scan=100, sleep_ms=20, hz=250)
    trace = _traced_with_canary(tmp_path, monkeypatch, at_100)
    opts = ReplayOptions(host_load=LOAD)
    _, note, _ = _fit_cost(open_trace(trace), ["synthetic"], "canary", None, opts)
    assert note is not None
    assert "short_batches" in note
    assert short_batch_warning(note, [at_100]) is None
    assert short_batch_warning(note, [KNOBS]) is not None
    res = replay_trace(trace, knobs={"pages_to_scan": 1000}, options=opts, observed="canary")
    (line,) = res.provenance["cost_warnings"]
    assert "pages_to_scan=100" in line
    assert "10 times as long" in line
    res = replay_trace(trace, knobs={"pages_to_scan": 100}, options=opts, observed="canary")
    assert res.provenance["cost_warnings"] == []


def test_a_canary_whose_batches_crossed_ticks_bounds_the_share(trace: Path) -> None:
    from planner.engine.costfit import short_batch_warning

    opts = ReplayOptions(host_load=LOAD)
    _, note, _ = _fit_cost(open_trace(trace), ["synthetic"], "canary", None, opts)
    assert note is not None
    assert "short_batches" not in note
    assert short_batch_warning(note, [KsmKnobs(pages_to_scan=4000, hz=250)]) is None
