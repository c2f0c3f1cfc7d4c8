"""``replay --no-writes`` and ``--prctl-at``: accepted, and the result says what was assumed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from planner.testing.builder import World
from tests.procs import run


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    w = World()
    for pid in (100, 101):
        w.spawn(pid, comm="w")
        w.map(pid, 0x10000, [1, 2, 3])
        w.map(pid, 0x7FF000000, [4, 5], kind="stack")
    w.snapshot(0.0)
    out = tmp_path_factory.mktemp("t") / "trace"
    w.write_trace(out)
    return out


def ksm(*args: str) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "planner", *args], timeout_s=300)


def test_prctl_at_and_writes_are_options_and_the_result_says_which(trace: Path) -> None:
    docs = {}
    for at in ("exec", "running"):
        r = ksm("replay", str(trace), "--prctl-at", at, "--no-writes", "--json")
        assert r.returncode == 0, r.stderr
        docs[at] = json.loads(r.stdout)
    assert "before exec" in docs["exec"]["provenance"]["prctl_at"]
    assert "running" in docs["running"]["provenance"]["prctl_at"]
    assert docs["exec"]["final"]["pages_sharing"] == 3  # the stacks stay out
    assert docs["running"]["final"]["pages_sharing"] == 5
    assert docs["exec"]["provenance"]["writes"]["model"] == "none in the trace"
    assert docs["exec"]["cow_breaks_per_s"] is None


def test_a_bad_prctl_at_is_one_line(trace: Path) -> None:
    r = ksm("replay", str(trace), "--prctl-at", "later")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "--prctl-at" in r.stderr


def test_a_trace_of_another_cpu_than_the_cost_profiles_is_warned_of(tmp_path: Path) -> None:
    w = World()
    w.spawn(100, comm="w")
    w.map(100, 0x10000, [1, 1, 2])
    w.snapshot(0.0)
    other = "Intel(R) Xeon(R) Processor @ 2.80GHz (family 6, model 106)"
    for cpu, warned in ((other, True), ("Intel Xeon (family 6, model 207)", False)):
        out = tmp_path / f"t{int(warned)}"
        w.write_trace(out, extra={"capture": {"host_cpu": cpu}})
        r = ksm("replay", str(out), "--json")
        assert r.returncode == 0, r.stderr
        said = [line for line in r.stderr.splitlines() if "cost profile" in line]
        assert len(said) == int(warned), r.stderr
        assert json.loads(r.stdout)["provenance"]["cost_warnings"] == (
            [said[0].removeprefix("ksm-planner: warning: ")] if warned else []
        )
