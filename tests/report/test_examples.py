"""The example reviews in reports/ are what the code makes of the sample traces, byte for byte."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REBUILD = ROOT / "reports" / "rebuild.py"


def _examples() -> dict[str, list[str]]:
    spec = importlib.util.spec_from_file_location("reports_rebuild", REBUILD)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    examples: dict[str, list[str]] = module.EXAMPLES
    return examples


def test_every_example_is_committed_and_documented() -> None:
    readme = (ROOT / "reports" / "README.md").read_text()
    for name, args in _examples().items():
        assert (ROOT / "reports" / name / "review.html").is_file(), name
        assert (ROOT / "reports" / name / "review.md").is_file(), name
        assert f"ksm-planner report {' '.join(args)} --out reports/{name} --force" in readme


def test_examples_rebuild_byte_for_byte() -> None:
    run = subprocess.run(
        [sys.executable, str(REBUILD), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert "match" in run.stderr
