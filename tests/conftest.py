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

#: KSM is one per host, and the suite runs on two pytest workers (``-n auto``, README). A
#: ``kernel``-marked test holds this lock exclusively for its whole run; every other test holds
#: it shared. So a kernel test runs alone on the host, as in a serial run: no other kernel
#: test (whose holders, registered with KSM, would make its lease refuse, or which could take
#: the lease between a test's check that KSM is free and its command's lease), and no other
#: test's load under a calibration's timings (a quick calibration beside the other worker's
#: tests fitted ``ksm_page_ns`` at 0). :data:`TURNSTILE` keeps a waiting kernel test from being
#: starved by the other worker's stream of shared holders.
KERNEL_TEST_MUTEX = Path(tempfile.gettempdir()) / "ksm-planner-kernel-tests.lock"
TURNSTILE = Path(tempfile.gettempdir()) / "ksm-planner-kernel-tests.turnstile"


def _locked(path: Path, how: int) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, how)  # pytest-timeout bounds the wait
    return fd


@pytest.fixture(autouse=True)
def _kernel_tests_alone(request: pytest.FixtureRequest) -> Iterator[None]:
    kernel = request.node.get_closest_marker("kernel") is not None
    turnstile = _locked(TURNSTILE, fcntl.LOCK_EX)
    try:
        mutex = _locked(KERNEL_TEST_MUTEX, fcntl.LOCK_EX if kernel else fcntl.LOCK_SH)
    finally:
        if not kernel:
            os.close(turnstile)  # let the next test in (a waiting kernel test first)
    try:
        yield
    finally:
        os.close(mutex)  # closing releases the lock
        if kernel:
            os.close(turnstile)


#: Files whose tests take the longest (minutes in all on 2 cores), started first: a kernel
#: test waits for the other worker's running test to end, and waiting for one of these idled
#: a worker for up to 168 s (the example rebuild). Longest first; measured with
#: ``--durations`` (docs/testing.md).
LONGEST_FILES = (
    "tests/report/test_examples.py",
    "tests/whatif/test_django_traces.py",
    "tests/trace/test_integrity.py",
    "tests/test_knob_table.py",
    "tests/engine/test_busy_host.py",
    "tests/report/test_review_gates.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order the files for two workers (``--dist loadfile --no-loadscope-reorder``): the
    longest files first, then the other files without a kernel test (most tests first, as
    xdist orders them by default), then the files holding kernel tests, whose tests run
    alone (:func:`_kernel_tests_alone`) and are short: by then no long test is left for
    them to wait on."""
    del config
    path_of = {id(item): item.nodeid.split("::", 1)[0] for item in items}
    count: dict[str, int] = {}
    kernel_files: set[str] = set()
    for item in items:
        path = path_of[id(item)]
        count[path] = count.get(path, 0) + 1
        if item.get_closest_marker("kernel") is not None:
            kernel_files.add(path)

    def rank(item: pytest.Item) -> tuple[int, int]:
        path = path_of[id(item)]
        if path in LONGEST_FILES and path not in kernel_files:
            return 0, LONGEST_FILES.index(path)
        return (2 if path in kernel_files else 1), -count[path]

    items.sort(key=rank)  # stable: a file's tests keep their order


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
