"""An independent reader recomputes the headline from a review's own data files.

The capacity gain, the net saving, the time to 90 % (on the traced and the planned host),
ksmd's share of the host and the memory an unmerge needs at the planned size are recomputed
here from ``data/*.csv`` alone -- with the csv module and the formulas the review states in
its appendix (docs/capacity.md) -- and must be the figures of ``data/headline.csv`` and of the
page. Nothing of ``planner`` is used for the arithmetic: only to write a fresh review.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def rows(data: Path, name: str) -> list[dict[str, str]]:
    with (data / f"{name}.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def num(text: str) -> float:
    return float(text) if text not in ("", "None") else math.nan


class Model:
    """One scenario's capacity arithmetic, from ``data/capacity-model.csv``."""

    def __init__(self, row: dict[str, str]) -> None:
        self.p = {k: num(v) for k, v in row.items() if k != "scenario"}

    def frames(self, n: int) -> float:
        return self.p["frames_a"] + self.p["frames_b"] * n

    def distinct(self, n: int) -> float:
        p = self.p
        unique = p["distinct_b"] * (n if p["distinct_beta"] == 1 else n ** p["distinct_beta"])
        pool = p["distinct_c"] * (1 - (1 - p["distinct_p"]) ** n)
        extra = p["extra_a"] + p["extra_b"] * n + p["extra_c"] * (1 - (1 - p["extra_p"]) ** n)
        return p["distinct_a"] + unique + pool + extra

    def saved(self, n: int) -> float:
        """What KSM frees at n workers, before its metadata (what an unmerge needs)."""
        p = self.p
        ideal = max(0.0, self.frames(n) - self.distinct(n))
        return p["saving_factor"] * p["realization_ratio"] * p["page_size"] * ideal

    def without(self, n: int) -> float:
        p = self.p
        return p["page_size"] * self.frames(n) + p["base_extra_bytes"] + n * p["worker_extra_bytes"]

    def with_ksm(self, n: int) -> float:
        p = self.p
        meta = p["metadata_bytes_per_page"] * (p["eligible_a"] + p["eligible_b"] * n)
        return self.without(n) - (self.saved(n) - meta)

    def workers(self, memory: object, ksmd: float) -> int:
        budget = self.p["budget_bytes"]
        fits = largest(lambda n: memory(n) <= budget)  # type: ignore[operator]
        cpw = self.p["cpu_per_worker"]
        if math.isnan(cpw):
            return fits
        return min(fits, int((self.p["host_cpus"] - ksmd) / cpw + 1e-9))


def largest(ok: object) -> int:
    """The largest n >= 0 for which the (monotone) ``ok`` holds."""
    if not ok(0):  # type: ignore[operator]
        return 0
    lo, hi = 0, 1
    while ok(hi):  # type: ignore[operator]
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)  # type: ignore[operator]
    return lo


def time_to_90(data: Path, scenario: str) -> float:
    points = [
        (num(r["t_s"]), num(r["saved_bytes"]))
        for name in ("time-to-benefit", "full-scans")
        for r in rows(data, name)
        if r["scenario"] == scenario
    ]
    points.sort()
    final = points[-1][1]
    return next(t for t, v in points if v >= 0.9 * final)


def ksmd_percent(data: Path, scenario: str, last_applied_s: float) -> float:
    """ksmd's CPU over the full scans that started after the replay's last change of memory
    (the last snapshot, or the last step of the growth continued after it), sleeps included."""
    scans = sorted(
        (num(r["t_s"]), num(r["scan_time_s"]), num(r["cpu_s"]))
        for r in rows(data, "full-scans")
        if r["scenario"] == scenario
    )
    first = next(i for i, (t, d, _) in enumerate(scans) if t - d >= last_applied_s - 1e-6)
    start = scans[first - 1][0] if first > 0 else scans[first][0] - scans[first][1]
    cpu = sum(c for _, _, c in scans[first:])
    return 100 * cpu / (scans[-1][0] - start)


def recompute(data: Path) -> tuple[dict[str, float], dict[str, str], str]:
    head = {r["figure"]: r for r in rows(data, "headline")}
    scenario = head["scenario"]["shown"]
    got: dict[str, float] = {}
    model_rows = {r["scenario"]: r for r in rows(data, "capacity-model")}
    if scenario in model_rows:
        m = Model(model_rows[scenario])
        n0 = m.workers(m.without, 0.0)
        n1 = m.workers(m.with_ksm, m.p["ksmd_cores"])
        got |= {
            "workers_without": n0,
            "workers_with": n1,
            "capacity_gain": n1 / n0 - 1,
            "unmerge_bytes": m.saved(n1),
            "ksmd_host_share": ksmd_percent(data, scenario, m.p["last_applied_s"])
            / 100
            / m.p["host_cpus"],
        }
        t90 = time_to_90(data, scenario)
        scale = (m.p["eligible_a"] + m.p["eligible_b"] * n1) / m.p["eligible_pages"]
        got |= {"time_to_90_s": t90, "projected_time_to_90_s": t90 * scale}
    wf = next(r for r in rows(data, "waterfall-all") if r["scenario"] == scenario)
    got["net_saved_bytes"] = num(wf["physical_bytes"]) - num(wf["with_KSM_bytes"])
    shown = {k: r["shown"] for k, r in head.items()}
    return got, shown, scenario


def check(data: Path, page: str) -> None:
    got, shown, scenario = recompute(data)
    head = {r["figure"]: num(r["value"]) for r in rows(data, "headline")}
    assert got["workers_without"] == head["workers_without"], scenario
    assert got["workers_with"] == head["workers_with"], scenario
    for key in ("capacity_gain", "unmerge_bytes", "time_to_90_s", "projected_time_to_90_s"):
        assert got[key] == pytest.approx(head[key], rel=1e-4), key
    assert got["ksmd_host_share"] == pytest.approx(head["ksmd_host_share"], rel=1e-3)
    assert got["net_saved_bytes"] == head["net_saved_bytes"]
    # and the page shows them as the data says
    gain = 100 * got["capacity_gain"]
    assert shown["capacity_gain"] == f"{'+' if gain > 0 else ''}{gain:,.1f} %"
    assert f"**{shown['capacity_gain']}**" in page
    for key in ("net_saved_bytes", "unmerge_bytes", "ksmd_host_share"):
        assert f"**{shown[key]}**" in page, key


@pytest.mark.parametrize("example", ["django-preload", "django-nopreload"])
def test_the_committed_examples_recompute(example: str) -> None:
    root = ROOT / "reports" / example
    if not (root / "data" / "headline.csv").is_file():
        pytest.fail(f"reports/{example} has no data/headline.csv: run reports/rebuild.py")
    check(root / "data", (root / "review.md").read_text())


def test_a_fresh_review_recomputes(small_trace: Path, tmp_path: Path) -> None:
    # a CPU-limited host, so that the CPU bound takes part in the arithmetic
    from planner.report.make import make_report
    from planner.whatif import CapacityInputs, ExtrapolationSpec, KnobGrid

    out = tmp_path / "review"
    make_report(
        small_trace,
        out=out,
        grid=KnobGrid.from_mapping({"pages_to_scan": [10, 100]}),
        capacity=CapacityInputs(host_mem_bytes=16 << 20, host_cpus=2, cpu_per_worker=0.1),
        extrapolation=ExtrapolationSpec(n_resamples=20),
    )
    check(out / "data", (out / "review.md").read_text())


def test_the_canary_implied_gain_is_inside_the_headline_interval() -> None:
    # the preload example with its canary: the gain the canary's measured saving implies (the
    # replay's saving times observed / predicted pages_sharing, over the second half of the
    # recording, or at its last sample) lies in the headline's interval
    data = ROOT / "reports" / "django-preload" / "data"
    head = {r["figure"]: num(r["value"]) for r in rows(data, "headline")}
    scenario = next(r["shown"] for r in rows(data, "headline") if r["figure"] == "scenario")
    m = Model(next(r for r in rows(data, "capacity-model") if r["scenario"] == scenario))
    samples = [
        (num(r["t_s"]), num(r["observed_pages_sharing"]), num(r["predicted_pages_sharing"]))
        for r in rows(data, "validation")
    ]
    end = samples[-1][0]
    half = [o / p for t, o, p in samples if t >= end / 2 and o > 0 and p > 0]
    for ratio in (sum(half) / len(half), samples[-1][1] / samples[-1][2]):
        m.p["saving_factor"] = ratio
        n0 = m.workers(m.without, 0.0)
        n1 = m.workers(m.with_ksm, m.p["ksmd_cores"])
        implied = n1 / n0 - 1
        assert head["capacity_gain_low"] <= implied <= head["capacity_gain_high"], (ratio, implied)
    # and the first screen states what was measured and what was assumed
    page = (ROOT / "reports" / "django-preload" / "review.md").read_text()
    first = page.split('<a id="scope"></a>')[0]
    assert "**Prediction against reality.**" in first
    inputs = rows(data, "inputs")
    assert {r["source"] for r in inputs} >= {"measured", "given", "assumed"}
    for r in inputs:
        assert f"| {r['input']} | {r['value']} | {r['source']} |" in first
