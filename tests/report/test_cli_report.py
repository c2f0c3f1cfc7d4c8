"""``ksm-planner report``: files, JSON, exit codes, nothing written on failure, domains."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from planner.testing.builder import World

Cli = Callable[[Sequence[object]], tuple[int, str, str]]


def test_writes_the_review_and_prints_json(cli: Cli, small_trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "review"
    code, stdout, stderr = cli(
        [
            "report",
            small_trace,
            "--preset",
            "off",
            "--preset",
            "prctl-all",
            "--pages-to-scan",
            "10,100",
            "--settle-scans",
            "6",
            "--workers",
            "1",
            "--out",
            out,
            "--json",
        ]
    )
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert doc["command"] == "report"
    assert doc["scenarios"] == 4
    assert doc["recommended"].startswith("prctl-all · pages_to_scan=")
    assert len(doc["sections"]) == 13
    assert Path(doc["files"]["html"]) == out / "review.html"
    assert (out / "review.md").is_file()
    assert (out / "data" / "review.json").is_file()
    review = json.loads((out / "data" / "review.json").read_text())
    assert review["provenance"]["command"] == (
        f"ksm-planner report {small_trace} --preset off --preset prctl-all "
        "--pages-to-scan 10,100 --settle-scans 6 --out DIR"
    )


def test_without_json_the_files_and_the_recommendation_go_to_stderr(
    cli: Cli, small_trace: Path, tmp_path: Path
) -> None:
    out = tmp_path / "review"
    args = ["report", small_trace, "--preset", "prctl-all", "--pages-to-scan", "10"]
    code, stdout, stderr = cli([*args, "--settle-scans", "4", "--workers", "1", "--out", out])
    assert code == 0, stderr
    assert stdout == ""
    lines = " ".join(stderr.split())
    assert f"wrote {out / 'review.html'}" in lines
    assert f"{out / 'review.md'}, " in lines
    assert "recommendation: prctl-all · pages_to_scan=10" in lines


def test_any_knob_on_the_grid(cli: Cli, small_trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "review"
    code, stdout, stderr = cli(
        [
            "report",
            small_trace,
            "--preset",
            "prctl-all",
            "--knob",
            "max_page_sharing=2,256",
            "--settle-scans",
            "4",
            "--workers",
            "1",
            "--out",
            out,
            "--json",
        ]
    )
    assert code == 0, stderr
    assert json.loads(stdout)["scenarios"] == 2
    review = json.loads((out / "data" / "review.json").read_text())
    names = [r["scenario"] for r in review["tables"]["scenarios"]["rows"]]
    assert names == ["prctl-all · max_page_sharing=2", "prctl-all · max_page_sharing=256"]
    assert "--knob max_page_sharing=2,256" in review["provenance"]["command"]


def test_existing_output_is_refused_before_any_work(
    cli: Cli, small_trace: Path, tmp_path: Path
) -> None:
    out = tmp_path / "review"
    out.mkdir()
    (out / "keep").write_text("x")
    code, stdout, stderr = cli(["report", small_trace, "--out", out])
    assert code == 2
    assert stdout == ""
    assert "already exists" in stderr
    assert "--force" in stderr
    assert [p.name for p in out.iterdir()] == ["keep"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--pages-to-scan", "0"], 2, "pages_to_scan"),
        (["--sleep-ms", "-5"], 2, "sleep_ms"),
        (["--preset", "nope"], 2, "--preset 'nope' is not a preset"),
        (["--set", "x"], 2, "--set needs --policies"),
        (["--host-mem", "lots"], 2, "is not a size"),
        (["--max-ksmd-cpu", "0%"], 2, "ksmd CPU gate 0 % of the host is out of bounds"),
        (["--max-ksmd-cpu", "lots"], 2, "--max-ksmd-cpu 'lots' is not a share"),
        (["--max-time-to-90", "soon"], 2, "--max-time-to-90 'soon' is not a duration"),
        (["--max-time-to-90", "0min"], 2, "the time-to-90 % gate must be positive"),
        (["--near-best", "100%"], 2, "near-best margin 100 % is out of bounds"),
        (["--host-mem", "1GiB", "--worker-file", "-1MiB"], 2, "is not a size"),
        (["--knob", "advisor_max_cpu"], 2, "is not NAME=V1,V2"),
        (["--knob", "warp_speed=9"], 2, "warp_speed"),
        (["--observed", "/nonexistent"], 4, "/nonexistent"),
    ],
)
def test_bad_input_exits_with_one_line_and_writes_nothing(
    cli: Cli, small_trace: Path, tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    out = tmp_path / "review"
    got, _, stderr = cli(["report", small_trace, "--out", out, *args])
    assert got == code, stderr
    assert message in stderr
    assert stderr.count("\n") == 1
    assert "Traceback" not in stderr
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_not_a_trace(cli: Cli, tmp_path: Path) -> None:
    code, _, stderr = cli(["report", tmp_path / "missing", "--out", tmp_path / "r"])
    assert code == 4
    assert "missing" in stderr


def test_missing_parent_directory(cli: Cli, small_trace: Path, tmp_path: Path) -> None:
    code, _, stderr = cli(["report", small_trace, "--out", tmp_path / "no" / "r"])
    assert code == 2
    assert "does not exist" in stderr


def _tenants(out: Path) -> None:
    """Two tenants (label tenant=a/b), each a master and two workers; all workers share
    content 500..519 across tenants, and each tenant's workers share 600+..."""
    w = World("tenants")
    for base, tenant in ((10, "a"), (20, "b")):
        w.spawn(base, comm="app", labels={"tenant": tenant})
        w.map(base, 0x10000, [base * 1000 + i for i in range(30)])
        for k in (1, 2):
            w.fork(base, base + k)
            w.write_range(base + k, 0x10000, [500 + i for i in range(20)])
            w.write_range(base + k, 0x10000 + 20 * 4096, [base * 100 + i for i in range(10)])
    w.snapshot(0.0)
    w.snapshot(10.0)
    w.write_trace(out)


def test_security_domains_allow_and_deny(cli: Cli, tmp_path: Path) -> None:
    trace = tmp_path / "tenants"
    _tenants(trace)
    policies = tmp_path / "p.toml"
    policies.write_text('[sets.tenants]\ndefault = "prctl"\ndefault_domain = "{label:tenant}"\n')
    out = tmp_path / "review"
    code, stdout, stderr = cli(
        [
            "report",
            trace,
            "--policies",
            policies,
            "--cross-domain",
            "allow,deny",
            "--settle-scans",
            "4",
            "--workers",
            "1",
            "--out",
            out,
            "--json",
        ]
    )
    assert code == 0, stderr
    rec = json.loads(stdout)["recommended"]
    assert rec == "tenants · deny cross-domain"  # allow merges across tenants: excluded
    data = json.loads((out / "data" / "review.json").read_text())
    rows = {r["scenario"]: r for r in data["tables"]["domains"]["rows"]}
    allow = rows["tenants · allow cross-domain"]
    deny = rows["tenants · deny cross-domain"]
    # the 20 shared pages: 4 copies, 1 kept across tenants, 2 kept with domains (one per tenant)
    assert allow["cross_domain_saved_bytes"] == 4096 * 20
    assert (allow["domains"], allow["merged_together"]) == ("a, b", "a + b")
    assert (deny["cross_domain_saved_bytes"], deny["merged_together"]) == (0, "none")
    excluded = {e["scenario"]: e["why"] for e in data["results"]["recommendation"]["excluded"]}
    assert excluded["tenants · allow cross-domain"] == "merges pages across security domains"


def test_whatif_and_report_give_the_same_figures(
    cli: Cli, small_trace: Path, tmp_path: Path
) -> None:
    """Identical inputs, identical figures: ``report`` renders what ``whatif`` computes."""
    from planner.report.fmt import stable_float

    options = [
        small_trace,
        "--preset",
        "off",
        "--preset",
        "prctl-all",
        "--preset",
        "workers-prctl",
        "--pages-to-scan",
        "10,100",
        "--settle-scans",
        "6",
        "--host-mem",
        "16MiB",
        "--headroom",
        "10%",
        "--bootstrap",
        "20",
        "--workers",
        "1",
    ]
    code, out, err = cli(["whatif", *options, "--json"])
    assert code == 0, err
    whatif = [s["hosts"][0] | {"id": s["id"]} for s in json.loads(out)["whatif"]["scenarios"]]
    code, _, err = cli(["report", *options, "--out", tmp_path / "review", "--json"])
    assert code == 0, err
    tables = json.loads((tmp_path / "review" / "data" / "review.json").read_text())["tables"]

    def rows(name: str) -> list[dict[str, Any]]:
        return list(tables[name]["rows"])

    def same(a: Any, b: Any) -> bool:
        if a is None or b is None:
            return a is b
        return bool(stable_float(float(a)) == stable_float(float(b)))

    scenarios, capacity = rows("scenarios"), rows("capacity")
    assert len(scenarios) == len(capacity) == len(whatif) == 6
    pairs = [
        ("scenarios", "net_saved_bytes", "net_saved_bytes"),
        ("scenarios", "time_to_90_s", "time_to_90_s"),
        ("scenarios", "steady_cpu_percent", "ksmd_cpu_percent"),
        ("capacity", "workers_without", ("capacity", "workers_without")),
        ("capacity", "workers_with", ("capacity", "workers_with")),
        ("capacity", "capacity_gain", ("capacity", "gain")),
        ("capacity", "ksm_net_saved_bytes", ("capacity", "ksm_net_saved_bytes")),
    ]
    compared = 0
    for i, w in enumerate(whatif):
        for table_name, column, key in pairs:
            ours = rows(table_name)[i][column]
            theirs = w[key[0]][key[1]] if isinstance(key, tuple) else w[key]
            assert same(ours, theirs), (w["id"], column, ours, theirs)
            compared += 1
    enabled = [w for w in whatif if w["registered_processes"]]
    cost = rows("cost")
    times = rows("time-to-saving")
    assert len(cost) == len(times) == len(enabled) == 4
    for w, c, t in zip(enabled, cost, times, strict=True):
        for ours, theirs in (
            (c["cpu_s"], w["ksmd_cpu_s"]),
            (c["cpu_percent"], w["ksmd_cpu_percent_from_start"]),
            (c["pages_per_full_scan"], w["pages_scanned_per_full_scan"]),
            (c["full_scan_s"], w["full_scan_s"]),
            (t["time_to_50_s"], w["time_to_50_s"]),
            (t["time_to_99_s"], w["time_to_99_s"]),
            (t["scans_to_90"], w["full_scans_to_90"]),
            (t["projected_time_to_90_s"], w["projected_time_to_90_s"]),
        ):
            assert same(ours, theirs), (w["id"], ours, theirs)
            compared += 1
    assert compared == 6 * len(pairs) + 4 * 8
