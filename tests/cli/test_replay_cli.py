"""``ksm-planner replay``: JSON shape, Parquet timelines, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from planner.testing.builder import World, joining_world
from tests.procs import run


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    w = World()
    for pid in (100, 101, 102):
        w.spawn(pid, comm="w")
        w.map(pid, 0x10000, [1, 2, 3, 4] + [pid * 10 + i for i in range(4)])
    w.snapshot(0.0)
    w.write(101, 0x10000, 99)
    w.snapshot(5.0)
    out = tmp_path_factory.mktemp("t") / "trace"
    w.write_trace(out)
    return out


def ksm(*args: str) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "planner", *args], timeout_s=300)


def test_json_document(trace: Path) -> None:
    r = ksm("replay", str(trace), "--pages-to-scan", "1000", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert {"knobs", "scans", "final", "truth", "cost", "provenance"} <= set(doc)
    scan = doc["scans"][0]
    for k in (
        "full_scans",
        "t_s",
        "pages_shared",
        "pages_sharing",
        "pages_unshared",
        "pages_volatile",
        "pages_scanned",
        "pages_skipped",
        "stable_node_chains",
        "stable_node_dups",
        "ksm_zero_pages",
        "general_profit",
        "processes",
    ):
        assert k in scan
    assert set(scan["processes"]["100"]) == {
        "ksm_rmap_items",
        "ksm_merging_pages",
        "ksm_zero_pages",
        "ksm_process_profit",
    }
    assert doc["knobs"]["pages_to_scan"] == 1000
    assert doc["provenance"]["trace_hash"].startswith("sha256:")
    assert doc["truth"]["saved_frames"] == 7  # 3 copies of contents 2,3,4 and 2 copies of 1: 3*2+1
    assert doc["cost"]["time_to_saving_s"]["90"] is not None


def test_out_writes_timelines_atomically(trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "res"
    r = ksm("replay", str(trace), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert pq.read_table(out / "scans.parquet").num_rows > 3
    assert (out / "result.json").exists()
    r2 = ksm("replay", str(trace), "--out", str(out))
    assert r2.returncode == 2
    assert "already exists" in r2.stderr
    assert len(r2.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--pages-to-scan", "0"], 2, "pages_to_scan"),
        (["--sleep-ms", "-5"], 2, "sleep_ms"),
        (["--hz", "123"], 2, "CONFIG_HZ"),
        (["--advisor", "magic"], 2, "advisor"),
        (["--bogus"], 2, "--bogus"),
        (["--cost-profile", "/nonexistent.json"], 4, "cost profile"),
    ],
)
def test_bad_options_give_one_line(trace: Path, args: list[str], code: int, words: str) -> None:
    r = ksm("replay", str(trace), *args)
    assert r.returncode == code
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("ksm-planner: error:")
    assert words in lines[0]
    assert r.stdout == ""


def test_not_a_trace(tmp_path: Path) -> None:
    f = tmp_path / "x.csv"
    f.write_text("a,b\n1,2\n")
    r = ksm("replay", str(f))
    assert r.returncode == 4
    assert "ingest" in r.stderr


def test_policy_set_is_applied_and_a_rule_matching_nothing_is_an_error(
    trace: Path, tmp_path: Path
) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text(
        "[sets.one]\n"
        '[[sets.one.rules]]\nmatch = { pid = [100, 101] }\naction = "prctl"\n'
        "[sets.typo]\n"
        '[[sets.typo.rules]]\nmatch = { comm = "nginx" }\naction = "prctl"\n'
    )
    r = ksm("replay", str(trace), "--policy", str(policy), "--policy-set", "one", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["provenance"]["policy_set"] == "one"
    procs = doc["final"]["processes"]
    assert procs["100"]["ksm_merging_pages"] > 0
    assert procs["102"]["ksm_rmap_items"] == 0  # not in the set: never registered
    r = ksm("replay", str(trace), "--policy", str(policy), "--policy-set", "typo")
    assert r.returncode == 4
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "matches no process" in lines[0]


_ROOT = Path(__file__).resolve().parents[2]


def test_a_replay_fitted_to_a_canary_says_how(tmp_path: Path) -> None:
    """``--observed``: the replay names the share and the cost scale it fitted ksmd to, and
    the load it replayed at (the committed canary of the Django sample)."""
    r = ksm(
        "replay", str(_ROOT / "traces" / "django-preload"), "--pages-to-scan", "1000",
        "--observed", str(_ROOT / "reports" / "canary" / "django-preload"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    fitted = [line for line in r.stderr.splitlines() if "ksmd fitted to the recording" in line]
    assert len(fitted) == 1, r.stderr
    assert "share 63.9 %" in fitted[0]
    assert "(sched_contention 0.15), costs x0.86 of amd-epyc-25-17" in fitted[0]
    assert "wait for a CPU" not in fitted[0]  # a recording of long batches: the period's share
    assert "host load: 1.25 other runnable tasks per CPU" in r.stderr


def test_the_joins_the_trace_shows_are_one_warning_line(tmp_path: Path) -> None:
    out = tmp_path / "t"
    joining_world().write_trace(out)
    r = run([sys.executable, "-m", "planner", "replay", str(out), "--json"], timeout_s=300)
    assert r.returncode == 0, r.stderr
    said = [line for line in r.stderr.splitlines() if "joins" in line]
    assert len(said) == 1, r.stderr
    assert said[0].startswith("ksm-planner: warning: between its snapshots the trace shows 60")
    joins = json.loads(r.stdout)["provenance"]["joins"]
    assert said[0].removeprefix("ksm-planner: warning: ") == joins["warning"]
    assert joins["joins_per_s"] == 60.0
    assert joins["held_rows"] == 248
