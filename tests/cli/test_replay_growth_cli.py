"""``replay --growth/--no-growth``: the result states the growth the replay assumed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engine.test_growth import _growing_world
from tests.procs import run


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("t") / "trace"
    _growing_world().write_trace(out)
    return out


def ksm(*args: str) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "planner", *args], timeout_s=300)


def test_growth_is_stated_and_can_be_turned_off(trace: Path) -> None:
    docs = {}
    for flag in ("--growth", "--no-growth"):
        r = ksm("replay", str(trace), flag, "--duration", "30", "--json")
        assert r.returncode == 0, r.stderr
        docs[flag] = json.loads(r.stdout)["provenance"]["growth"]
    on, off = docs["--growth"], docs["--no-growth"]
    assert on["status"] == "continued"
    assert on["total_pages"] > 0
    assert on["rate_pages_per_s"] > 0
    assert on["horizon_s"] > 0
    assert off["status"] == "off"
    assert off["total_pages"] == 0
