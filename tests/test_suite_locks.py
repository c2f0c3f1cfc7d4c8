"""The suite's own locks (tests/conftest.py, docs/testing.md "Rules the suite follows"): a
pytest that a test runs as a child is covered by the test's locks and takes none."""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

from tests import procs
from tests.conftest import LOCKS_HELD_ENV, TURNSTILE

ROOT = Path(__file__).resolve().parents[1]
CHILD_TEST = "tests/test_fs.py::test_a_directory_output_is_marked_with_its_kind"


def test_a_child_pytest_passes_a_waiting_exclusive_test() -> None:
    """The deadlock of 2026-12-04: the other worker's ``quiet`` test held the turnstile while
    it waited for this test's shared lock, and a pytest child of this test waited at the
    turnstile until its timeout. Here this test holds the turnstile itself, as that waiting
    test did: the child must run all the same."""
    assert os.environ.get(LOCKS_HELD_ENV) == str(os.getpid())  # set while the test runs
    fd = os.open(TURNSTILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        run = procs.run(
            [sys.executable, "-m", "pytest", CHILD_TEST, "-q", "-p", "no:cacheprovider",
             "-o", "addopts=", "-p", "no:randomly"],
            cwd=ROOT, timeout_s=60,
        )  # fmt: skip
    finally:
        os.close(fd)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "1 passed" in run.stdout
