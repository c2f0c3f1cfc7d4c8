"""Fixtures shared by every test package (package-specific ones live in their own conftest)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import pytest
from hypothesis import HealthCheck, settings

from planner.cli import main

# Hypothesis, settled here for every property test: a test's own ``@settings`` gives only its
# ``max_examples`` (what its examples cost decides how many the default run affords).
# * no deadline: an example's wall time on a loaded 2-core host (other suites, a JIT compile)
#   says nothing about the code, and a missed deadline fails the test;
# * ``too_slow`` off: the generators build traces on purpose;
# * in CI (``KSM_PLANNER_CI=1``) the examples are derandomized and no database is kept, so a
#   CI run checks the same examples every time and fails only for what a change did;
#   elsewhere each run draws new ones (and a failure prints the blob that reproduces it).
#   ``HYPOTHESIS_PROFILE=ci`` or ``=dev`` chooses either.
settings.register_profile(
    "dev",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("ci", settings.get_profile("dev"), derandomize=True, database=None)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("KSM_PLANNER_CI") else "dev")
)

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
