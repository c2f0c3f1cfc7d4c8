"""Fixtures shared by every test package (package-specific ones live in their own conftest)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from planner.cli import main

CliRunner = Callable[[Sequence[object]], tuple[int, str, str]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> CliRunner:
    """Run ``ksm-planner ARGS`` in-process: ``(exit code, stdout, stderr)``."""

    def run(args: Sequence[object]) -> tuple[int, str, str]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            main([str(a) for a in args])
        out, err = capsys.readouterr()
        return int(info.value.code or 0), out, err

    return run
