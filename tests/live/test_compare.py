"""The comparison's arithmetic, and :func:`compare_run` on synthetic runs with known errors."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from planner.errors import InputDataError, UsageProblem
from planner.testing.live.compare import (
    CompareOptions,
    compare_run,
    find_steady_window,
    first_reaching,
    metric,
    report_table,
    sharing_target,
    step_mean,
)
from planner.testing.live.protocol import LiveRun
from planner.testing.live.workloads import make_params

# ----------------------------------------------------------------------------- series tools


def test_step_mean_weights_by_time() -> None:
    assert step_mean([0, 1, 3], [10, 20, 30], 0, 4) == pytest.approx((10 + 40 + 30) / 4)
    assert step_mean([0, 1, 3], [10, 20, 30], 1, 3) == pytest.approx(20)
    assert step_mean([0, 1, 3], [10, 20, 30], 2.5, 3.5) == pytest.approx(25)


def test_step_mean_unsorted_input_and_degenerate_windows() -> None:
    assert step_mean([3, 0, 1], [30, 10, 20], 0, 4) == pytest.approx(20)
    assert step_mean([], [], 0, 1) is None
    assert step_mean([5], [1], 0, 2) is None  # the window ends before the first sample
    assert step_mean([0, 1], [1, 2], 1, 1) == 2


def test_steady_window_extends_back_while_within_tolerance() -> None:
    t = [1, 2, 3, 4, 5, 6]
    v = [10, 500, 990, 1000, 1010, 1000]
    w = find_steady_window(t, [1, 2, 3, 4, 5, 6], v, end_s=7, tolerance=0.02, min_scans=3)
    assert w.steady
    assert (w.start_s, w.end_s, w.full_scans) == (3, 7, 4)
    assert w.spread is not None
    assert w.spread <= 0.02


def test_a_short_steady_window_is_widened_to_the_minimum() -> None:
    t = [1, 2, 3, 4, 5, 6, 7, 8]
    v = [100, 200, 100, 200, 100, 300, 300, 300]
    w = find_steady_window(t, range(1, 9), v, end_s=8.5, min_scans=3, min_window_s=5)
    assert w.steady
    assert w.start_s == pytest.approx(3.5)
    assert w.full_scans == 5  # boundaries at 4..8
    assert w.spread is not None
    assert w.spread > 0.02


def test_steady_window_falls_back_to_the_last_third() -> None:
    t = [1, 2, 3, 4]
    w = find_steady_window(t, [1, 2, 3, 4], [100, 200, 300, 400], end_s=9, min_scans=3)
    assert not w.steady
    assert w.start_s == pytest.approx(6)
    assert w.spread is not None
    assert w.spread > 0.02


def test_steady_window_needs_min_scans_and_accepts_all_zero() -> None:
    assert not find_steady_window([1, 2], [1, 2], [5, 5], end_s=3, min_scans=3).steady
    w = find_steady_window([1, 2, 3], [1, 2, 3], [0, 0, 0], end_s=3, min_scans=3)
    assert w.steady
    assert w.start_s == 1


def test_first_reaching() -> None:
    assert first_reaching([1, 2, 3], [1, 2, 3], [10, 95, 100], 90) == (2, 2.0)
    assert first_reaching([1, 2], [1, 2], [1, 2], 90) == (None, None)
    assert first_reaching([1], [1], [1], None) == (None, None)


def test_metric_errors_and_targets() -> None:
    m = metric("x", "pages", 100, 111, target=0.05)
    assert m.error == pytest.approx(0.11)
    assert m.within is False
    assert "+11.0%" in m.describe()
    assert "target ±5%" in m.describe()
    d = metric("scan", "scans", 3, 3, kind="difference", target=0)
    assert d.error == 0
    assert d.within is True
    missing = metric("cow", "1/s", 10, None, target=0.2, note="no write model")
    assert missing.error is None
    assert missing.within is False
    assert "no write model" in missing.describe()
    assert metric("z", "", 0, 0).error == 0.0
    assert metric("z", "", 0, 1).error is None
    assert metric("i", "", 1, 2).within is None  # informative: no target


def test_sharing_targets_are_the_issues() -> None:
    assert sharing_target("postgres") == 0.03
    assert sharing_target("node") == 0.05
    assert sharing_target("churn") == sharing_target("churn-osc") == 0.10
    assert sharing_target("django") == 0.05


def test_options_are_checked() -> None:
    with pytest.raises(UsageProblem):
        CompareOptions(alignment="sideways")  # type: ignore[arg-type]
    with pytest.raises(UsageProblem):
        CompareOptions(steady_tolerance=0)


def test_copy_on_write_is_compared_over_the_same_window_on_both_sides() -> None:
    from types import SimpleNamespace

    import numpy as np

    from planner.testing.live.compare import _copy_on_write

    # the kernel: 18,000 breaks over a 60 s observation (its samples of `cow_ksm`)
    cow = np.array([500.0, 4_500.0, 12_000.0, 18_500.0])
    ks = SimpleNamespace(end_s=60.0, col=lambda name: cow)
    # the model: 15,600 breaks over the same 60 s, 243 /s after its last snapshot
    res = SimpleNamespace(cow_breaks=15_600, cow_breaks_per_s=243.0, duration_s=60.0)
    c = _copy_on_write(ks, res)
    assert c.per_s.kernel == pytest.approx(300.0)
    assert c.per_s.model == pytest.approx(260.0)  # its whole minute, not its steady rate
    assert c.kernel_total == pytest.approx(18_000.0)
    off = SimpleNamespace(cow_breaks=0, cow_breaks_per_s=None, duration_s=60.0)
    assert _copy_on_write(ks, off).per_s.model is None


# ----------------------------------------------------------------------------- compare_run


def test_a_kernel_that_behaves_as_the_model_scores_zero_errors(
    synthetic_run: Callable[..., LiveRun],
) -> None:
    run = synthetic_run()
    cmp = compare_run(run.run_dir, CompareOptions(min_window_s=2))
    m = cmp.metrics
    assert cmp.window.steady
    assert m["pages_sharing_steady"].error == pytest.approx(0, abs=1e-9)
    assert m["pages_sharing_steady"].kernel == pytest.approx(200)  # 100 pages x 3 processes
    assert m["scan_reaching_90"].error == 0
    assert m["scan_reaching_90"].within
    assert m["ksmd_cpu_s_first_window"].error == pytest.approx(0, abs=1e-6)
    assert m["full_scans_first_window"].error == 0
    assert m["rmap_items_total_steady"].error == pytest.approx(0, abs=1e-9)
    assert m["cow_ksm_per_s"].model is None
    assert m["cow_ksm_per_s"].within is False
    assert cmp.failures() == [m["cow_ksm_per_s"].describe()]
    assert {p.pid for p in cmp.processes} == {100, 101, 102}
    json.dumps(cmp.to_dict())  # JSON-ready


def test_known_errors_are_measured(synthetic_run: Callable[..., LiveRun]) -> None:
    run = synthetic_run(sharing_scale=0.8, cpu_scale=2.0, rmap_scale=0.5)
    cmp = compare_run(run.run_dir, CompareOptions(alignment="last", min_window_s=2))
    m = cmp.metrics
    assert m["pages_sharing_steady"].error == pytest.approx(0.25)  # model 200 vs kernel 160
    assert m["ksmd_cpu_s_first_window"].error == pytest.approx(-0.5, abs=1e-6)
    assert m["rmap_items_total_steady"].error == pytest.approx(1.0, rel=0.02)
    assert not m["pages_sharing_steady"].within
    assert "+25.0%" in m["pages_sharing_steady"].describe()
    assert cmp.alignment == "last"


def test_a_report_becomes_the_documents_table(synthetic_run: Callable[..., LiveRun]) -> None:
    # tools/live_validate.py --table: the rows docs/live-validation.md's tables hold, and
    # tests/whatif/test_uncertainty.py reads back (error, CPU and full-scan cells)
    run = synthetic_run(sharing_scale=0.8, cpu_scale=2.0)
    cmp = compare_run(run.run_dir, CompareOptions(alignment="last", min_window_s=2))
    report: dict[str, Any] = {
        "runs": [{"workload": "django", "run": 2, "comparisons": {"last": cmp.to_dict()}}]
    }
    head, rule, row = report_table(report, "last").splitlines()
    assert head.count("|") == rule.count("|") == row.count("|") == 12
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:2] == ["django", "2"]
    assert cells[4].startswith("**+25.0 %**")
    assert cells[6].endswith("(\N{MINUS SIGN}50 %)")
    assert report_table(report, "time") == f"{head}\n{rule}\n"  # no run of that alignment
    noise = {"pages_sharing_steady": {"spread": 0.017}, "full_scans_end": {"spread": None}}
    report["summary"] = {"django": {"kernel_noise": noise}, "node": {"kernel_noise": {}}}
    last = report_table(report, "last").splitlines()[-1]
    assert last.endswith("steady `pages_sharing` 1.7 % Django.")


def test_fewer_kernel_scans_are_counted(synthetic_run: Callable[..., LiveRun]) -> None:
    run = synthetic_run(drop_scans=2)
    cmp = compare_run(run.run_dir)
    full = cmp.metrics["full_scans_first_window"]
    assert full.model is not None
    assert full.kernel is not None
    assert full.model - full.kernel == 2
    assert not math.isnan(full.error or math.nan)


def test_pages_per_full_scan_split_the_full_scans_error(
    synthetic_run: Callable[..., LiveRun],
) -> None:
    """Full scans = CPU / (ns per page x pages per full scan): a model that scans more pages
    per full scan than the kernel (merges it keeps that the kernel lost, never skipped) is
    told apart from one whose pages cost more. Counted from the start row, over the full
    scans completed in the window."""
    same = compare_run(synthetic_run().run_dir, CompareOptions(min_window_s=2)).metrics
    for name in ("pages_scanned_per_full_scan", "pages_skipped_per_full_scan"):
        assert same[name].kernel is not None
        assert same[name].kernel > 0
        assert same[name].error == pytest.approx(0, abs=1e-9), name
    assert "pages scanned per full scan" in same["pages_scanned_per_full_scan"].describe()


def test_more_pages_per_full_scan_in_the_model_is_measured(
    synthetic_run: Callable[..., LiveRun],
) -> None:
    cmp = compare_run(synthetic_run(scanned_scale=0.8).run_dir, CompareOptions())
    m = cmp.metrics
    assert m["pages_scanned_per_full_scan"].error == pytest.approx(0.25)
    assert m["pages_skipped_per_full_scan"].error == pytest.approx(0.25)
    assert m["full_scans_first_window"].error == 0
    split = cmp.full_scans_split()
    assert split is not None
    assert split.startswith("full scans +0.0 % = CPU ")
    assert "/ pages per full scan +25.0 %" in split
    assert split in cmp.summary()


def test_pages_per_full_scan_over_the_same_scans(synthetic_run: Callable[..., LiveRun]) -> None:
    """A kernel whose full scans are the model's, each ending 2.5 times later: it completes
    fewer in the window, and under smart scan the later scans skip more, so the pages per
    full scan over each side's own scans differ though every scan agrees; over the same
    first scans they agree."""
    m = compare_run(synthetic_run(slower=2.5).run_dir, CompareOptions()).metrics
    assert m["full_scans_first_window"].error > 1.0, m["full_scans_first_window"].describe()
    assert m["pages_scanned_per_full_scan"].error < -0.03  # the model's average skips more
    same = m["pages_scanned_per_same_full_scans"]
    assert same.error == pytest.approx(0, abs=1e-9), same.describe()
    kernel_scans = m["full_scans_first_window"].kernel
    assert kernel_scans is not None
    assert f"(the first {kernel_scans:g} of each)" in same.describe()


def test_a_directory_that_is_not_a_run_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputDataError):
        LiveRun.read(str(tmp_path))


def test_run_live_refuses_before_creating_anything(tmp_path: Path) -> None:
    from planner.testing.live.protocol import run_live

    with pytest.raises(UsageProblem, match="unknown workload"):
        run_live("mysql", tmp_path / "run")
    with pytest.raises(UsageProblem, match="needs ChurnParams"):
        run_live("churn", tmp_path / "run", params=make_params("postgres"))
    assert not (tmp_path / "run").exists()
    (tmp_path / "taken").mkdir()
    with pytest.raises(UsageProblem, match="already exists"):
        run_live("churn", tmp_path / "taken")


def test_the_capture_budget_is_the_captures_default_and_is_checked() -> None:
    from planner.capture.pace import DEFAULT_CPU_BUDGET
    from planner.testing.live.protocol import LiveConfig

    assert LiveConfig().capture_cpu_budget == DEFAULT_CPU_BUDGET
    assert LiveConfig(capture_cpu_budget=None).capture_cpu_budget is None
    with pytest.raises(UsageProblem, match="capture_cpu_budget"):
        LiveConfig(capture_cpu_budget=0)


def test_the_writes_option_reaches_the_replay(synthetic_run: Callable[..., LiveRun]) -> None:
    from planner.testing.live.compare import replay_setup

    run = synthetic_run()
    assert replay_setup(run, CompareOptions(), 6.0).options.writes
    off = replay_setup(run, CompareOptions(writes=False, alignment="last"), 6.0).options
    assert not off.writes
    assert off.snapshot_scans == (1, 1)  # the last alignment: every snapshot before scan 1


def test_a_canarys_replay_is_scored_with_the_cost_fitted_to_it(
    synthetic_run: Callable[..., LiveRun], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the canary's writes the comparison replays as ``replay --observed`` does, with
    the options the canary's fit returns (ksmd's cost fitted to the canary: the cost under
    which the fit chose the canary's variant); ``canary_cost=False`` keeps the shipped
    profile, and a profile given is used as given. (The fit itself is
    tests/engine/test_costfit.py's: the synthetic recording is too short to fit.)"""
    from dataclasses import replace

    import planner.engine.costfit as costfit
    from planner.engine import CostProfile
    from planner.testing.live.compare import replay_setup
    from tests.live.test_pages import _add_canary

    from .conftest import PIDS

    run = synthetic_run()
    _add_canary(run, [(1.0, pid, i, "merged") for pid in PIDS for i in range(100)])
    real_fit = costfit.fit_canary
    marker = replace(CostProfile.default(), name="fitted-to-the-canary")

    def fit(*args: Any, **kwargs: Any) -> Any:
        got = real_fit(*args, **kwargs)
        return replace(got, options=replace(got.options, cost=marker))

    monkeypatch.setattr(costfit, "fit_canary", fit)
    fitted = replay_setup(run, CompareOptions(calibrate_writes=True), 6.0)
    assert fitted.options.cost == marker
    assert fitted.canary is not None
    shipped = replay_setup(run, CompareOptions(calibrate_writes=True, canary_cost=False), 6.0)
    assert shipped.options.cost == replay_setup(run, CompareOptions(), 6.0).options.cost
    assert shipped.options.cost != marker
    given = tmp_path / "given.json"
    given.write_text(json.dumps(CostProfile.default().to_dict()))
    kept = replay_setup(run, CompareOptions(calibrate_writes=True, cost_profile=str(given)), 6.0)
    assert kept.options.cost == CostProfile.load(given)
