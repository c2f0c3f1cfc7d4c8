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

#: The suite runs on two pytest workers (``-n auto``, README); two file locks in the temporary
#: directory keep their tests apart where they must be (:func:`_tests_apart`):
#:
#: * :data:`KSM_MUTEX`: KSM is one per host. A test that uses it (``kernel``-marked, or any test
#:   of ``tests/kernel`` and ``tests/live``, whose holders register with KSM) holds it
#:   exclusively: no other such test's holders make its lease refuse or add to its counters,
#:   and no other test takes the lease between its check that KSM is free and its command's.
#: * :data:`HOST_MUTEX`: a ``quiet``-marked test (its timings calibrate ksmd: a quick
#:   calibration beside the other worker's tests fitted ``ksm_page_ns`` at 0) holds it
#:   exclusively and runs alone on the host; every other test holds it shared.
#:
#: Other kernel tests wait for ksmd (30 of their 80 s are CPU) and run beside the other
#: worker's tests: when every kernel test ran alone, the other worker idled 80 s of a run.
#: :data:`TURNSTILE` keeps a test waiting for an exclusive lock from being starved by the
#: other worker's stream of shared holders.
HOST_MUTEX = Path(tempfile.gettempdir()) / "ksm-planner-tests-host.lock"
KSM_MUTEX = Path(tempfile.gettempdir()) / "ksm-planner-tests-ksm.lock"
TURNSTILE = Path(tempfile.gettempdir()) / "ksm-planner-tests.turnstile"
#: Test directories whose every test uses KSM (holders registered with it), marked or not.
KSM_DIRS = ("tests/kernel/", "tests/live/")


def _locked(path: Path, how: int) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, how)  # pytest-timeout bounds the wait
    return fd


def uses_ksm(item: pytest.Item) -> bool:
    """Whether a test uses the host's KSM (see :data:`KSM_MUTEX`)."""
    return item.get_closest_marker("kernel") is not None or item.nodeid.startswith(KSM_DIRS)


#: Set (to the holder's pid) while a test holds the locks: a pytest the test runs as a child
#: (``tests/report/test_browser.py`` runs one) is covered by them and takes none. Taking them
#: again deadlocked: the child waited at the turnstile behind the other worker's ``quiet``
#: test, which waited for the parent's shared lock, until the child's timeout.
LOCKS_HELD_ENV = "KSM_PLANNER_TEST_LOCKS_HELD"


@pytest.fixture(autouse=True)
def _tests_apart(request: pytest.FixtureRequest) -> Iterator[None]:
    if os.environ.get(LOCKS_HELD_ENV):  # a child of a test that holds them
        yield
        return
    quiet = request.node.get_closest_marker("quiet") is not None
    held: list[int] = []
    # the turnstile is held while taking the locks: a test waiting for an exclusive one
    # keeps the other worker's next test from taking a shared one meanwhile
    turnstile = _locked(TURNSTILE, fcntl.LOCK_EX)
    try:
        held.append(_locked(HOST_MUTEX, fcntl.LOCK_EX if quiet else fcntl.LOCK_SH))
        if uses_ksm(request.node):
            held.append(_locked(KSM_MUTEX, fcntl.LOCK_EX))
    except BaseException:
        for fd in held:
            os.close(fd)
        raise
    finally:
        os.close(turnstile)
    os.environ[LOCKS_HELD_ENV] = str(os.getpid())
    try:
        yield
    finally:
        os.environ.pop(LOCKS_HELD_ENV, None)
        for fd in reversed(held):
            os.close(fd)  # closing releases the lock


#: Files whose tests take the longest (minutes in all on 2 cores), started first (measured
#: with ``--durations``, docs/testing.md): a test that waits for an exclusive lock waits for
#: the other worker's running test to end, and the example rebuild runs 136-170 s. The
#: rebuild comes third: its report processes and their pools load the compiled code the first
#: two files' replays put in numba's cache; started first, from a fresh clone, five
#: processes compiled the same kernels at once (+53 s against a warm run instead of +34 s).
LONGEST_FILES = (
    "tests/whatif/test_django_traces.py",
    "tests/trace/test_integrity.py",
    "tests/report/test_examples.py",
    "tests/test_knob_table.py",
    "tests/engine/test_busy_host.py",
    "tests/report/test_review_gates.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order the files for two workers (``--dist loadfile --no-loadscope-reorder``): the
    longest files first; then the files of tests that use KSM (mostly waiting for ksmd, and
    one at a time: :data:`KSM_MUTEX`) each followed by one of the other files (most tests
    first, as xdist orders them by default), so that while one worker waits for ksmd the
    other computes; last the files of ``quiet`` tests, which run alone: by then no long test
    is left for them to wait on."""
    del config
    path_of = {id(item): item.nodeid.split("::", 1)[0] for item in items}
    count: dict[str, int] = {}
    ksm_files: set[str] = set()
    quiet_files: set[str] = set()
    for item in items:
        path = path_of[id(item)]
        count[path] = count.get(path, 0) + 1
        if item.get_closest_marker("quiet") is not None:
            quiet_files.add(path)
        elif uses_ksm(item):
            ksm_files.add(path)
    ksm_files -= quiet_files
    files = list(count)  # collection order
    first = [f for f in LONGEST_FILES if f in count and f not in ksm_files | quiet_files]
    waiting = [f for f in files if f in ksm_files]
    others = sorted(
        (f for f in files if f not in ksm_files | quiet_files and f not in first),
        key=lambda f: -count[f],
    )
    middle: list[str] = []
    for i in range(max(len(waiting), len(others))):
        middle += waiting[i : i + 1] + others[i : i + 1]
    order = {f: i for i, f in enumerate(first + middle + [f for f in files if f in quiet_files])}
    items.sort(key=lambda item: order[path_of[id(item)]])  # stable: a file keeps its order


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
