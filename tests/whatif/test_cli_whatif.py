"""``ksm-planner whatif``: table, --json, --csv, --out, and one clear line per bad input."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from tests.procs import run

CliRunner = Callable[[Sequence[object]], tuple[int, str, str]]

POLICIES = """
[sets.workers]
description = "forked workers only"
[[sets.workers.rules]]
match = { root = false }
action = "prctl"

[sets.everything]
default = "prctl"
"""


def test_table_on_stderr(cli: CliRunner, family_trace: Path, tmp_path: Path) -> None:
    pol = tmp_path / "p.toml"
    pol.write_text(POLICIES)
    code, out, err = cli(
        [
            "whatif",
            family_trace,
            "--policies",
            pol,
            "--preset",
            "off",
            "--pages-to-scan",
            "100,1000",
            "--sleep-ms",
            "20",
            "--workers",
            "1",
        ]
    )
    assert code == 0, err
    assert out == ""
    assert "6 scenarios" in err
    for header in (
        "policy set",
        "pages to scan",
        "saved MiB",
        "% anon",
        "t90 s",
        "ksmd %cpu",
        "pages/scan",
        "realized",
    ):
        assert header in err
    lines = [ln for ln in err.splitlines() if ln.strip().startswith("s0")]
    assert [ln.split()[1] for ln in lines] == [
        "off",
        "off",
        "workers",
        "workers",
        "everything",
        "everything",
    ]
    assert lines[0].rstrip().endswith("*")  # off: no CPU, on the Pareto front
    assert lines[1].rstrip().endswith("=s01")  # nothing registered: the knobs change nothing


def test_json_csv_and_out(cli: CliRunner, family_trace: Path, tmp_path: Path) -> None:
    args = [
        "whatif",
        family_trace,
        "--preset",
        "prctl-all",
        "--pages-to-scan",
        "100,1000",
        "--workers",
        "1",
        "--host-mem",
        "64MiB",
        "--headroom",
        "10%",
        "--worker-other",
        "100KiB",
        "--replicas",
        "8",
        "--bootstrap",
        "20",
    ]
    code, out, err = cli([*args, "--json"])
    assert code == 0, err
    doc = json.loads(out)
    assert doc["schema_version"] == 1
    scen = doc["whatif"]["scenarios"]
    assert [s["id"] for s in scen] == ["s01", "s02"]
    assert scen[0]["capacity"]["workers_with"] >= scen[0]["capacity"]["workers_without"]
    assert scen[0]["capacity"]["gain_interval"] is not None
    assert scen[0]["projected"]["replicas"] == 8
    assert doc["whatif"]["capacity_inputs"]["headroom_fraction"] == 0.1
    assert doc["whatif"]["fits"][0]["holdout"] is not None
    code, out, err = cli([*args, "--csv"])
    assert code == 0, err
    header = out.splitlines()[0].split(",")
    assert header[:4] == ["scenario", "policy_set", "cross_domain", "knob_pages_to_scan"]
    assert "capacity_gain_percent" in header
    assert len(out.splitlines()) == 3
    dest = tmp_path / "run"
    code, out, err = cli([*args, "--out", dest])
    assert code == 0, err
    full = json.loads((dest / "whatif.json").read_text())
    assert "timeline" in full["scenarios"][0]["hosts"][0]["replays"][0]
    assert (dest / "scenarios.csv").read_text().startswith("scenario,")
    before = (dest / "whatif.json").read_text()
    code, out, err = cli([*args, "--out", dest])
    assert code == 2
    assert "already exists" in err
    assert (dest / "whatif.json").read_text() == before


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("extra", "code", "words"),
    [
        (["--knob", "bogus=1"], 2, "unknown knob 'bogus'"),
        (["--pages-to-scan", "100,0"], 2, "pages_to_scan must be at least 1"),
        (["--sleep-ms=-5"], 2, "sleep_ms cannot be negative"),
        (["--smart-scan", "sometimes"], 2, "is not on/off"),
        (["--advisor", "auto"], 2, "unknown advisor 'auto'"),
        (["--json", "--csv"], 2, "--json and --csv both print on stdout"),
        (["--host-cpus", "8"], 2, "capacity options need --host-mem"),
        (["--host-mem", "lots"], 2, "'lots' is not a size"),
        (["--host-mem", "1GiB", "--host-cpus", "0"], 2, "Invalid value for '--host-cpus'"),
        (["--worker-file", "1MiB"], 2, "capacity options need --host-mem"),
        (["--group", "comm:java"], 2, "selects no process of host web-1"),
        (["--host", "db"], 2, "has no host 'db'"),
        (["--preset", "everything"], 2, "--preset 'everything' is not a preset"),
        (["--set", "x"], 2, "--set needs --policies"),
        (
            ["--grid", "/nonexistent/grid.toml"],
            2,
            "grid file /nonexistent/grid.toml does not exist",
        ),
        (
            ["--scheduler", "tcp://127.0.0.1:{port}", "--cluster-timeout", "1"],
            3,
            "did not answer within 1 s",
        ),
    ],
)
def test_bad_input_is_one_line(
    cli: CliRunner, family_trace: Path, tmp_path: Path, extra: list[str], code: int, words: str
) -> None:
    out_dir = tmp_path / "never"
    args = [a.format(port=_closed_port()) for a in extra]
    got, out, err = cli(["whatif", family_trace, "--workers", "1", "--out", out_dir, *args])
    assert got == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ksm-planner: error:")
    assert words in lines[0]
    assert out == ""
    assert not out_dir.exists()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (
            '[sets.x]\n[[sets.x.rules]]\nmatch = { comm = "java" }\naction = "prctl"\n',
            "matches no process",
        ),
        (
            '[sets.x]\n[[sets.x.rules]]\nmatch = { comm = "(" }\naction = "prctl"\n',
            "invalid regular expression",
        ),
        ("[sets.x]\nrules = 3\n", "sets.x.rules"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_bad_policy_files_exit_4(
    cli: CliRunner, family_trace: Path, tmp_path: Path, text: str, words: str
) -> None:
    pol = tmp_path / "p.toml"
    pol.write_text(text)
    code, out, err = cli(["whatif", family_trace, "--policies", pol, "--workers", "1"])
    assert code == 4
    assert len(err.strip().splitlines()) == 1
    assert words in err
    assert out == ""


def test_not_a_trace(cli: CliRunner, tmp_path: Path) -> None:
    code, out, err = cli(["whatif", tmp_path / "absent"])
    assert code == 4
    assert out == ""
    assert "does not exist" in err


def test_help_is_fast_and_imports_nothing_heavy() -> None:
    code = (
        "import sys, planner.cli; "
        "heavy = ('pandas', 'scipy', 'dask', 'distributed', 'pydantic', 'planner.whatif.run'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    r = run([sys.executable, "-c", code], timeout_s=60)
    assert r.stdout.strip() == "[]"
    r = run([sys.executable, "-m", "planner", "whatif", "--help"], timeout_s=60)
    assert r.returncode == 0
    for opt in (
        "--policies",
        "--pages-to-scan",
        "--grid",
        "--scheduler",
        "--host-mem",
        "--replicas",
        "--csv",
    ):
        assert opt in r.stdout
