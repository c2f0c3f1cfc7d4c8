"""Predicted against observed, with a real (read-only) recording of this host's KSM."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from planner.jsonable import to_jsonable
from planner.policy import preset
from planner.whatif import InlineExecutor, KnobGrid, run_whatif
from planner.whatif.observed import knob_differences, observed_knobs

CliRunner = Callable[[Sequence[object]], tuple[int, str, str]]


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not Path("/sys/kernel/mm/ksm/pages_sharing").exists():
        pytest.skip("this kernel has no KSM (/sys/kernel/mm/ksm)")
    from planner.kernel.observe import observe

    out = tmp_path_factory.mktemp("obs") / "rec"
    observe(out, interval_s=0.05, duration_s=0.25)  # reads sysfs only
    return out


def test_a_recording_is_compared_with_the_scenario_of_its_knobs(
    recording: Path, family_trace: Path
) -> None:
    from planner.trace.recording import read_observed

    obs = read_observed(recording)
    knobs = observed_knobs(obs)
    assert set(knobs) >= {"pages_to_scan", "sleep_ms", "smart_scan", "advisor"}
    grid = KnobGrid.from_mapping(
        {
            "pages_to_scan": [knobs["pages_to_scan"], knobs["pages_to_scan"] + 1],
            "sleep_ms": knobs["sleep_ms"],
            "smart_scan": knobs["smart_scan"],
            "advisor": knobs["advisor"],
            "max_page_sharing": knobs["max_page_sharing"],
            "use_zero_pages": knobs["use_zero_pages"],
        }
    )
    res = run_whatif(
        family_trace,
        policy_sets=[preset("prctl-all")],
        grid=grid,
        observed=recording,
        executor=InlineExecutor(),
    )
    cmp = res.observed
    assert cmp is not None
    assert cmp.scenario_id == "s01"
    assert cmp.knobs_match
    assert len(cmp.t_s) == len(obs.counters)
    assert len(cmp.predicted.pages_sharing) == len(cmp.t_s)
    assert cmp.to_frame().columns[0] == "t_s"
    json.dumps(to_jsonable(res)["observed"], allow_nan=False)


def test_cli_observed(cli: CliRunner, recording: Path, family_trace: Path) -> None:
    code, out, err = cli(
        [
            "whatif",
            family_trace,
            "--preset",
            "prctl-all",
            "--workers",
            "1",
            "--observed",
            recording,
            "--json",
        ]
    )
    assert code == 0, err
    doc = json.loads(out)["whatif"]["observed"]
    assert doc["scenario_id"] == "s01"
    assert isinstance(doc["knobs_match"], bool)
    code, out, err = cli(
        [
            "whatif",
            family_trace,
            "--preset",
            "prctl-all",
            "--workers",
            "1",
            "--observed",
            family_trace,
        ]
    )
    assert code == 4
    assert "not a recording" in err


def test_knob_differences() -> None:
    assert knob_differences({"pages_to_scan": 100, "advisor": "none"}, {"pages_to_scan": 200}) == {
        "pages_to_scan": (200, 100)
    }
    # the advisor sets pages_to_scan itself on both sides
    assert (
        knob_differences(
            {"pages_to_scan": 500, "advisor": "scan-time"},
            {"pages_to_scan": 1234, "advisor": "scan-time"},
        )
        == {}
    )


def _one_host_scenario() -> Any:
    """A compared scenario of one host at 4 % ksmd CPU and 1 s full scans, without writes
    replayed (what :func:`planner.whatif.observed.canary_rates` reads of it)."""
    from types import SimpleNamespace

    host = SimpleNamespace(
        ksmd_cpu_percent=4.0,
        full_scan_s=1.0,
        modelled_cow_breaks_per_s=None,
        modelled_cow_per_merged_page_per_s=None,
    )
    return SimpleNamespace(hosts=[host])


def test_the_canary_rates_of_the_shipped_recording() -> None:
    # reports/canary/django-preload (canary mode): what the real ksmd did over the second half

    import numpy as np

    from planner.trace.recording import read_observed
    from planner.whatif.observed import canary_rates

    root = Path(__file__).resolve().parents[2] / "reports" / "canary" / "django-preload"
    obs = read_observed(root)
    c = obs.counters
    t = np.asarray(c.index.to_numpy(dtype=float))
    scen = _one_host_scenario()
    r = canary_rates(obs, scen, None)  # type: ignore[arg-type]
    half = t >= t[-1] / 2
    dt = t[-1] - t[half][0]
    cow = c["cow_ksm"].to_numpy()
    assert r.observed_cow_per_s == pytest.approx((cow[-1] - cow[half][0]) / dt)
    assert r.observed_cow_per_s == pytest.approx(1011, rel=0.01)
    ns = c["ksmd_runtime_ns"].to_numpy()
    assert r.observed_ksmd_cpu_percent == pytest.approx(100 * (ns[-1] - ns[half][0]) / 1e9 / dt)
    assert r.observed_full_scan_s == pytest.approx(0.897, rel=0.01)
    assert r.predicted_ksmd_cpu_percent == 4.0
    assert r.predicted_cow_per_s is None  # no trace estimate given
    # canary mode: merges lost on the sampled workers, by cause, over the same window
    assert r.observed_unmerges_per_s is not None
    since = t[-1] / 2
    for kind in ("unmerged_same_content", "unmerged_changed"):
        rows = obs.canary[obs.canary["t_s"] > t[half][0]]
        assert r.observed_unmerges_per_s[kind] == pytest.approx(rows[kind].sum() / dt)
        assert r.observed_unmerges_per_s[kind] == obs.unmerges_per_s(since_s=since)[kind]
    assert r.observed_unmerges_per_s["unmerged_same_content"] == pytest.approx(432.6, rel=0.01)
    assert r.cow_per_merged_page_per_s == pytest.approx(
        r.observed_cow_per_s / np.mean(c["pages_sharing"].to_numpy()[half])
    )


def test_canary_rates_of_a_recording_in_canary_mode_come_from_its_reader() -> None:
    # observe --ksm-pages: merges lost per second by kind, over the second half, read through
    # ObservedTimeline.unmerges_per_s; cow_ksm and ksmd's CPU through counter_rate

    import pandas as pd

    from planner.trace.recording import CANARY_EVENTS, ObservedTimeline
    from planner.whatif.observed import canary_rates

    t = [0.0, 1.0, 2.0, 3.0, 4.0]
    counters = pd.DataFrame(
        {
            "cow_ksm": [0, 10, 20, 60, 100],
            "ksmd_runtime_ns": [0, 1e8, 2e8, 3e8, 5e8],
            "full_scans": [0, 1, 2, 3, 4],
            "pages_sharing": [0, 100, 200, 200, 200],
        },
        index=pd.Index(t, name="t_s"),
    )
    rows = []
    for i, ts in enumerate(t):
        row = {"sample": i, "t_s": ts, "pid": 7, "present_pages": 300, "ksm_pages": 200}
        row.update({e: 0 for e in CANARY_EVENTS})
        row["unmerged_same_content"] = 4 * i  # 12 + 16 after t = 2
        row["unmerged_changed"] = 1
        rows.append(row)
    obs = ObservedTimeline(
        meta={}, counters=counters, processes=pd.DataFrame(), canary=pd.DataFrame(rows)
    )
    scen = _one_host_scenario()
    r = canary_rates(obs, scen, None)  # type: ignore[arg-type]
    assert r.window_s == 2.0  # samples at 2, 3 and 4 s
    assert r.observed_cow_per_s == pytest.approx((100 - 20) / 2)
    assert r.observed_ksmd_cpu_percent == pytest.approx(100 * 0.3 / 2)
    assert r.observed_full_scan_s == pytest.approx(1.0)
    assert r.observed_pages_sharing == pytest.approx(200)
    assert r.cow_per_merged_page_per_s == pytest.approx(40 / 200)
    assert r.observed_unmerges_per_s is not None
    assert r.observed_unmerges_per_s["unmerged_same_content"] == pytest.approx((12 + 16) / 2)
    assert r.observed_unmerges_per_s["unmerged_changed"] == pytest.approx(2 / 2)
    assert obs.unmerges_per_s()["unmerged_changed"] == pytest.approx(4 / 4)  # whole recording


def test_the_replays_breaks_are_taken_over_the_canarys_window() -> None:
    """The model's copy-on-write next to a canary's is the replay's own breaks over the same
    seconds (the second half of the recording), from its cumulative series on its time grid;
    none when the replay ended before the window did or replayed no writes."""
    from types import SimpleNamespace

    import pandas as pd

    from planner.trace.recording import ObservedTimeline
    from planner.whatif.observed import canary_rates

    t = [0.0, 1.0, 2.0, 3.0, 4.0]
    counters = pd.DataFrame(
        {"cow_ksm": [0, 10, 20, 60, 100], "pages_sharing": [0, 100, 200, 200, 200]},
        index=pd.Index(t, name="t_s"),
    )
    obs = ObservedTimeline(meta={}, counters=counters, processes=pd.DataFrame())

    def host(times: tuple[float, ...], breaks: tuple[int, ...], rate: float | None) -> Any:
        grid = SimpleNamespace(t_s=times, cow_breaks=breaks)
        return SimpleNamespace(
            ksmd_cpu_percent=1.0,
            full_scan_s=1.0,
            modelled_cow_breaks_per_s=rate,
            modelled_cow_per_merged_page_per_s=None,
            timeline=SimpleNamespace(grid=grid),
        )

    def rate(h: Any) -> float | None:
        return canary_rates(obs, SimpleNamespace(hosts=[h]), None).replayed_cow_per_s  # type: ignore[arg-type]

    grid_t = (0.0, 0.5, 1.5, 2.5, 3.5, 4.5)
    # steps: 30 breaks by t=2 (the value at 1.5), 90 by t=4 (the value at 3.5)
    assert rate(host(grid_t, (0, 5, 30, 50, 90, 95), 9.0)) == pytest.approx((90 - 30) / 2)
    assert rate(host(grid_t[:4], (0, 5, 30, 50), 9.0)) is None  # the replay ended at 2.5 s
    assert rate(host(grid_t, (0, 5, 30, 50, 90, 95), None)) is None  # no writes replayed


@pytest.mark.parametrize(
    ("scans", "note"),
    [
        ([0, 0, 1, 1, 2], "ended after 2 full scans of ksmd"),
        ([5, 5, 5, 5, 5], "ended after 0 full scans of ksmd"),
        ([0, 1, 2, 3, 4], None),
        ([0, 10, 20, 30, 65], None),
    ],
)
def test_a_canary_that_ended_while_merging_is_named(scans: list[int], note: str | None) -> None:
    """A recording of fewer than four full scans saw KSM's first merging, not its steady
    state: the comparison says so, with the length to record where the pace is known."""
    import numpy as np
    import pandas as pd

    from planner.whatif.observed import short_recording_note

    t = np.array([0.0, 10.0, 20.0, 30.0, 40.0])
    got = short_recording_note(pd.DataFrame({"full_scans": scans}, index=t), t)
    if note is None:
        assert got is None
        return
    assert got is not None
    assert note in got
    assert "record a canary of at least 4 full scans" in got
    assert ("(about 80 s at its knobs)" in got) == (scans[-1] - scans[0] == 2)
    assert short_recording_note(pd.DataFrame({"pages_sharing": scans}, index=t), t) is None
