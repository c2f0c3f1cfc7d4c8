"""Fixtures shared by every test package (package-specific ones live in their own conftest)."""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

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

#: Held by every ``kernel``-marked test for its whole run: the suite runs on two pytest
#: workers (``-n auto``, pyproject.toml), and KSM is one per host. Without it a kernel test
#: on one worker finds the other's holders registered with KSM (the lease refuses), or
#: takes the lease between another test's check that KSM is free and its command's lease.
KERNEL_TEST_MUTEX = Path(tempfile.gettempdir()) / "ksm-planner-kernel-tests.lock"


@pytest.fixture(autouse=True)
def _one_kernel_test_at_a_time(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("kernel") is None:
        yield
        return
    fd = os.open(KERNEL_TEST_MUTEX, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # pytest-timeout bounds the wait
        yield
    finally:
        os.close(fd)  # releases the lock


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
