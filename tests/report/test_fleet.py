"""The fleet review and the fleet commands: ``report`` and ``whatif`` on a directory of traces
or a trace with several hosts; same figures in both; deterministic bytes; clear errors."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from planner.report.fmt import stable_float
from planner.testing.fleet import family_world, write_family_fleet
from planner.trace.io import TraceWriter

Cli = Callable[[Sequence[object]], tuple[int, str, str]]

OPTIONS = [
    "--preset",
    "prctl-all",
    "--preset",
    "workers-prctl",
    "--pages-to-scan",
    "100,1000",
    "--host-mem",
    "1GiB",
    "--bootstrap",
    "20",
    "--workers",
    "1",
]


@pytest.fixture(scope="module")
def fleet4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fleet") / "fleet4"
    write_family_fleet(root, 4)
    return root


@pytest.fixture(scope="module")
def fleet4_review(fleet4: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``report fleet4 ... --json`` run once for the module: the review and its stdout."""
    from planner.cli import main

    review = tmp_path_factory.mktemp("review") / "r"
    with pytest.MonkeyPatch.context() as mp:
        out = io.StringIO()
        mp.setattr(sys, "stdout", out)
        with pytest.raises(SystemExit) as info:
            main([str(a) for a in ["report", fleet4, *OPTIONS, "--out", review, "--json"]])
    assert not info.value.code
    return review, out.getvalue()


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    return bool(stable_float(float(a)) == stable_float(float(b)))


def test_report_on_a_fleet_renders_the_figures_whatif_computes(
    cli: Cli, fleet4: Path, fleet4_review: tuple[Path, str]
) -> None:
    code, out, err = cli(["whatif", fleet4, *OPTIONS, "--json"])
    assert code == 0, err
    fleet = json.loads(out)["fleet"]
    assert [m["label"] for m in fleet["members"]] == ["web-00", "web-01", "web-02", "web-03"]
    review, out = fleet4_review
    summary = json.loads(out)
    assert summary["sections"] == [
        "fleet-summary",
        "fleet-scenarios",
        "fleet-hosts",
        "fleet-method",
    ]
    for name in ("review.html", "review.md", "plots/fleet_spread.svg", "data/fleet_hosts.csv"):
        assert (review / name).is_file(), name
    data = json.loads((review / "data" / "review.json").read_text())
    rows = data["tables"]["fleet_scenarios"]["rows"]
    assert len(rows) == len(fleet["scenarios"]) == 4
    for row, s in zip(rows, fleet["scenarios"], strict=True):
        assert row["scenario"] == s["id"]
        assert row["net_saved_bytes"] == s["net_saved_bytes"]
        d = s["net_saved_fraction_across_hosts"]
        assert _same(row["host_p10"], d["p10"])
        assert _same(row["host_p90"], d["p90"])
        assert row["workers_with"] == s["capacity"]["workers_with"]
        assert _same(row["gain"], s["capacity"]["gain"])
    per_host = data["tables"]["fleet_host_results"]["rows"]
    assert len(per_host) == 4 * 4
    for row in per_host:
        s = next(x for x in fleet["scenarios"] if x["id"] == row["scenario"])
        h = next(x for x in s["hosts"] if x["label"] == row["host"])
        assert row["net_saved_bytes"] == h["net_saved_bytes"]
    best = data["results"]["best"]["scenario"]
    assert data["tables"]["fleet_scenarios"]["rows"][0]["scenario"] in {
        s["id"] for s in fleet["scenarios"]
    }
    assert best == max(fleet["scenarios"], key=lambda s: s["net_saved_bytes"])["id"]
    html = (review / "review.html").read_text()
    assert "KSM fleet capacity review: fleet4" in html
    members = data["tables"]["fleet_members"]["rows"]  # traces relative to the fleet
    assert [m["trace"] for m in members] == ["host-00", "host-01", "host-02", "host-03"]
    assert str(fleet4) not in json.dumps(data["results"])


def test_the_fleet_review_is_deterministic(
    cli: Cli, fleet4: Path, fleet4_review: tuple[Path, str], tmp_path: Path
) -> None:
    a, _ = fleet4_review  # the same command, another --out
    code, _, err = cli(["report", fleet4, *OPTIONS, "--out", tmp_path / "b", "--json"])
    assert code == 0, err
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) >= 8
    assert files == sorted(
        p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file()
    )
    for f in files:
        assert (a / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_whatif_on_a_fleet_writes_tables_and_csv(cli: Cli, fleet4: Path, tmp_path: Path) -> None:
    code, out, err = cli(["whatif", fleet4, *OPTIONS, "--out", tmp_path / "w"])
    assert code == 0, err
    assert out == ""
    for text in ("4 hosts in 4 traces", "hosts under s", "web-03"):
        assert text in err
    assert {p.name for p in (tmp_path / "w").iterdir() if not p.name.startswith(".")} == {
        "fleet.json",
        "fleet_scenarios.csv",
        "fleet_hosts.csv",
    }
    assert len((tmp_path / "w" / "fleet_hosts.csv").read_text().splitlines()) == 1 + 4 * 4
    code, out, err = cli(["whatif", fleet4, *OPTIONS, "--csv"])
    assert code == 0, err
    header = out.splitlines()[0].split(",")
    assert {"host_net_saved_percent_p90", "capacity_gain_percent"} <= set(header)
    assert len(out.splitlines()) == 5


def test_a_trace_with_several_hosts_gets_a_fleet_review_unless_one_host_is_named(
    cli: Cli, tmp_path: Path
) -> None:
    trace = tmp_path / "two"
    with TraceWriter(trace, source="synthetic") as tw:
        for name, workers in (("a", 2), ("b", 3)):
            family_world(name, workers=workers, seed=workers)._emit(tw.host(name))
    code, out, err = cli(["report", trace, *OPTIONS, "--out", tmp_path / "fleet", "--json"])
    assert code == 0, err
    assert json.loads(out)["sections"][0] == "fleet-summary"
    code, out, err = cli(
        ["report", trace, *OPTIONS, "--host", "b", "--out", tmp_path / "one", "--json"]
    )
    assert code == 0, err
    assert "fleet-summary" not in json.loads(out)["sections"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--host", "web-99"], 2, "has no host 'web-99'"),
        (["--observed", "."], 2, "--observed is a recording of one host"),
    ],
)
def test_bad_fleet_options_are_one_line(
    cli: Cli, fleet4: Path, tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    for cmd in (["whatif"], ["report", "--out", tmp_path / "r"]):
        got, _, err = cli([cmd[0], fleet4, *OPTIONS, *args, *cmd[1:]])
        assert got == code, err
        assert message in err
        assert len(err.strip().splitlines()) <= 2
        assert "Traceback" not in err
        assert not (tmp_path / "r").exists()


def test_a_directory_without_traces_is_bad_input(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "nothing" / "sub").mkdir(parents=True)
    code, _, err = cli(["report", tmp_path / "nothing", "--out", tmp_path / "r"])
    assert code == 4, err
    assert "ksm-trace.json" in err or "not a" in err
    assert not (tmp_path / "r").exists()
