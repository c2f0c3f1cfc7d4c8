"""Sources of uncertainty: the published model error, a canary's, the traced time, the draws."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from planner.whatif.capacity import CapacityInputs
from planner.whatif.extrapolate import GrowthFit
from planner.whatif.footprint import plan_capacity
from planner.whatif.observed import CounterSeries, ObservedComparison
from planner.whatif.uncertainty import (
    CANARY_FIT,
    CANARY_RATIO_BAND,
    PUBLISHED,
    PUBLISHED_SOFT_DIRTY,
    ModelError,
    SourceInterval,
    TimeSpread,
    canary_error,
    canary_warning,
    dominant,
    draw_sets,
    published_error,
    published_workload,
)

ROOT = Path(__file__).resolve().parents[2]


def _number(text: str) -> float:
    return float(text.replace("−", "-").replace("+", "").replace(",", ""))


def _section(title: str) -> str:
    """The text of docs/live-validation.md's section ``title`` (up to the next one)."""
    text = (ROOT / "docs" / "live-validation.md").read_text()
    head = re.search(rf"^## {re.escape(title)}.*$", text, re.M)
    assert head is not None, f"docs/live-validation.md has no section {title!r}"
    rest = text[head.end() :]
    end = re.search(r"^## ", rest, re.M)
    return rest[: end.start()] if end else rest


def test_the_published_table_is_the_documents() -> None:
    # planner/whatif/uncertainty.py carries the figures of docs/live-validation.md's
    # section "The published errors" (the runs of the planner as it is, not the baseline's)
    doc = _section("The published errors")
    rows: dict[str, list[tuple[float, float, float]]] = {}
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 8 or cells[0] not in PUBLISHED or not cells[1].isdigit():
            continue
        err = re.search(r"([+−-]?[\d.]+) %", cells[4])
        cpu = re.search(r"\(([+−-]?[\d.]+) %\)", cells[6])
        scans = re.search(r"\(([+−-]?[\d.]+) %\)", cells[7])
        assert err, line
        assert cpu, line
        assert scans, line
        rows.setdefault(cells[0], []).append(
            (
                _number(err.group(1)) / 100,
                _number(cpu.group(1)) / 100,
                _number(scans.group(1)) / 100,
            )
        )
    assert set(rows) == set(PUBLISHED)
    for name, runs in PUBLISHED.items():
        assert [r[0] for r in rows[name]] == pytest.approx(list(runs.pages_sharing_errors))
        assert [r[1] for r in rows[name]] == pytest.approx(list(runs.ksmd_cpu_errors))
        assert [r[2] for r in rows[name]] == pytest.approx(list(runs.full_scan_errors))
    spread = re.search(r"steady\s+`pages_sharing` ([^;]+);", doc)
    assert spread is not None
    named = {
        "PostgreSQL": "postgres",
        "churn": "churn",
        "Django": "django",
        "Node": "node",
        "JVM": "jvm",
    }
    found = {who: v for v, who in re.findall(r"([\d.]+) % (\w+)", spread.group(1)) if who in named}
    assert set(found) == set(named)
    for who, value in found.items():
        assert PUBLISHED[named[who]].truth_spread == pytest.approx(float(value) / 100)


def test_published_error_of_the_traced_workload_or_of_all() -> None:
    assert published_workload({"workload": "django-gunicorn"}) == "django"
    assert published_workload({"workload": "djangoish"}) is None
    assert published_workload({}) is None
    django = published_error({"workload": "django-gunicorn"})
    assert django.source == "published"
    errors = PUBLISHED["django"].pages_sharing_errors
    assert django.ratios == pytest.approx([1 / (1 + e) for e in errors])
    assert django.point == pytest.approx(1 / (1 + sorted(errors)[1]))  # the median run
    every = published_error({})
    all_errors = [e for r in PUBLISHED.values() for e in r.pages_sharing_errors]
    assert len(every.ratios) == len(all_errors) == 27
    assert min(every.ratios) == pytest.approx(1 / (1 + max(all_errors)))
    assert max(every.ratios) == pytest.approx(1 / (1 + min(all_errors)))
    assert "5 workloads" in every.basis
    # the band covers every run, widened by the kernel's own run-to-run spread
    assert every.low < min(every.ratios) < max(every.ratios) < every.high


def test_the_soft_dirty_runs_are_the_documents() -> None:
    # docs/live-validation.md, "Writes in step": its table of runs, the error with the
    # soft-dirty counts in the fourth column
    doc = _section("Writes in step")
    rows: dict[str, list[float]] = {}
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 5 or cells[0] not in PUBLISHED_SOFT_DIRTY:
            continue
        err = re.search(r"([+−-]?[\d.]+) %", cells[3])
        assert err, line
        rows.setdefault(cells[0], []).append(_number(err.group(1)) / 100)
    assert rows == {k: pytest.approx(list(v)) for k, v in PUBLISHED_SOFT_DIRTY.items()}


def test_the_canary_fit_errors_are_the_documents() -> None:
    # docs/busy-host.md, "A canary's fitted cost on another run": the crossed runs' table
    # (CPU in the third column, full scans in the fourth) and the fresh round whose figures
    # it gives (round 2: CPU and full scans first in each crossing's cell), in that order
    text = (ROOT / "docs" / "busy-host.md").read_text()
    head = re.search(r"^### A canary's fitted cost on another run.*$", text, re.M)
    assert head is not None
    section = text[head.end() :].split("\n## ", 1)[0].split("\n### ", 1)[0]
    pct = re.compile(r"\((?:\*\*)?([+−-]?[\d.]+) %(?:\*\*)?\)")
    cpu: list[float] = []
    scans: list[float] = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and pct.findall(cells[2]):  # the crossed runs' table
            cpu.append(_number(pct.findall(cells[2])[0]) / 100)
            scans.append(_number(pct.findall(cells[3])[0]) / 100)
        elif len(cells) == 3 and cells[0] == "2":
            for cell in cells[1:]:
                found = pct.findall(cell)
                cpu.append(_number(found[0]) / 100)
                scans.append(_number(found[1]) / 100)
    assert cpu == pytest.approx(list(CANARY_FIT.ksmd_cpu_errors))
    assert scans == pytest.approx(list(CANARY_FIT.full_scan_errors))


def test_a_trace_captured_with_soft_dirty_is_held_to_the_runs_captured_so() -> None:
    pg = published_error({"workload": "postgres"}, soft_dirty=True)
    assert pg.ratios == pytest.approx([1 / (1 + e) for e in PUBLISHED_SOFT_DIRTY["postgres"]])
    assert pg.noise == PUBLISHED["postgres"].truth_spread
    assert "soft-dirty" in pg.basis
    # without soft-dirty the same label takes the runs that could not see the writes
    assert published_error({"workload": "postgres"}).ratios != pg.ratios
    # a workload without soft-dirty runs: all of them, and the widest spread of any workload
    node = published_error({"workload": "node-cluster"}, soft_dirty=True)
    every = [e for runs in PUBLISHED_SOFT_DIRTY.values() for e in runs]
    assert node.ratios == pytest.approx([1 / (1 + e) for e in every])
    assert node.noise == max(r.truth_spread for r in PUBLISHED.values())
    assert "names none of them" in node.basis
    django = published_error({"workload": "django-gunicorn"}, soft_dirty=True)
    assert django.ratios == pytest.approx([1 / (1 + e) for e in PUBLISHED_SOFT_DIRTY["django"]])
    assert django.noise == PUBLISHED["django"].truth_spread
    # the longest name wins: churn-rewrite's own runs, not the churn workload's
    rewrite = published_error({"workload": "churn-rewrite-4"}, soft_dirty=True)
    assert rewrite.ratios == pytest.approx(
        [1 / (1 + e) for e in PUBLISHED_SOFT_DIRTY["churn-rewrite"]]
    )
    assert rewrite.noise == PUBLISHED["churn"].truth_spread


def test_canary_error_takes_the_second_half() -> None:
    t = (0.0, 10.0, 20.0, 30.0, 40.0)
    obs = ObservedComparison(
        scenario_id="s01",
        host="h",
        source="host canary",
        knobs_match=True,
        knob_differences={},
        t_s=t,
        observed=CounterSeries((0.0, 50.0, 80.0, 90.0, 70.0)),
        predicted=CounterSeries((0.0, 100.0, 100.0, 100.0, 100.0)),
    )
    err = canary_error(obs, {"workload": "django-gunicorn"})
    assert err is not None
    assert err.source == "canary"
    assert err.ratios == (0.8, 0.9, 0.7)  # t >= 20 s
    assert err.point == pytest.approx(0.8)
    assert err.noise == PUBLISHED["django"].truth_spread
    empty = ObservedComparison(
        "s01", "h", "x", True, {}, t, CounterSeries((0.0,) * 5), CounterSeries((0.0,) * 5)
    )
    assert canary_error(empty, {}) is None


def test_a_canary_far_from_the_replay_is_warned_about() -> None:
    def canary(*ratios: float) -> ModelError:
        return ModelError("canary", "a canary", ratios, 0.03)

    # the JVM canary of docs/live-validation.md before its joins were continued: 1.49-2.35
    # over the second half, median 2.08
    jvm = canary_warning(canary(1.49, 1.87, 2.08, 2.12, 2.35))
    assert jvm is not None
    assert "2.08 times" in jvm
    assert "every figure" in jvm
    assert canary_warning(canary(0.5, 0.6, 0.7)) is not None  # the model over-predicts too
    low, high = CANARY_RATIO_BAND
    for point in (low, 1.02, high):  # the band's edges are within it
        assert canary_warning(canary(point)) is None
    # the published runs are the project's own evidence, not a measurement of this workload
    assert canary_warning(ModelError("published", "runs", (2.0, 2.5), 0.48)) is None


def test_time_spread_leaves_out_the_first_snapshot() -> None:
    spread = TimeSpread.of((0.0, 10.0, 20.0, 30.0), (50, 90, 110, 100))
    assert spread.ratios == (0.9, 1.1, 1.0)
    assert (spread.low, spread.high) == (0.9, 1.1)
    assert TimeSpread.of((0.0,), (0,)).ratios == (1.0,)


def test_draws_are_deterministic_and_vary_one_source_each() -> None:
    plan = plan_capacity(CapacityInputs(host_mem_bytes=64 << 30, worker_file_bytes=0))
    reps = [GrowthFit(0, 256, 0, 256 - s, eligible_b=256) for s in (32, 64, 96)]
    err = published_error({})
    time = TimeSpread((10.0, 20.0), (0.95, 1.0))
    point, sets = draw_sets(replicates=reps, model=err, time=time, plan=plan, seed=3)
    again = draw_sets(replicates=reps, model=err, time=time, plan=plan, seed=3)
    assert (point, sets) == again
    assert point.saving_factor == pytest.approx(err.point)
    assert point.growth is None
    assert {d.growth for d in sets["sampling"]} <= set(reps)
    assert all(d.saving_factor == point.saving_factor for d in sets["sampling"])
    assert len({d.saving_factor for d in sets["model"]}) > 1
    assert all(d.growth is None for d in sets["model"])
    assert all(
        0.95 * point.saving_factor <= d.saving_factor <= point.saving_factor for d in sets["time"]
    )
    # configuration: the assumed inputs move (the file-backed one was given: 0), CPUs too
    worker = {d.worker_extra_bytes for d in sets["configuration"]}
    assert len(worker) > 1
    assert {d.host_cpus for d in sets["configuration"]} != {point.host_cpus}
    assert len(sets["combined"]) == 200  # at least 200 draws, however few replicates
    assert np.isfinite([d.saving_factor for d in sets["combined"]]).all()


def test_dominant_is_the_widest() -> None:
    iv = [
        SourceInterval("sampling", 0.1, 0.2, 1, 2, ""),
        SourceInterval("model", 0.0, 0.4, 1, 2, ""),
        SourceInterval("combined", -1.0, 1.0, 1, 2, ""),
    ]
    assert dominant(iv) == "model"
    assert dominant([SourceInterval("time", 0.1, 0.1, 1, 1, "")]) is None
