"""Running a command of the suite in a child process, so that a hang says where it hangs.

One ``ksm-planner replay`` run hung for 300 s, with nothing on stderr, in a fresh clone's full
suite (2026-12-05; not again since). A child that hangs without a word leaves only its
timeout, or pytest's 900 s, and no clue. :func:`run` is ``subprocess.run(capture_output=True,
text=True)`` with a time limit that every caller states: a child still running at its limit
is sent SIGABRT, which ``PYTHONFAULTHANDLER`` (set here) turns into every thread's stack on
its stderr, and the test fails with those stacks. The child runs in a session of its own, so
that whatever it started is killed with it at its limit and cannot hold the pipes open.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

ABORT_GRACE_S = 10.0
"""How long an aborted child has to write its stacks before its whole session is killed."""


def run(
    cmd: Sequence[str | Path],
    *,
    timeout_s: float,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """``cmd`` with its output captured as text. A child that runs over ``timeout_s`` fails
    the test with its threads' stacks; ``check`` fails it on a non-zero exit, with stderr."""
    args = [str(a) for a in cmd]
    child_env = {**(os.environ if env is None else env), "PYTHONFAULTHANDLER": "1"}
    with subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=child_env,
        start_new_session=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=ABORT_GRACE_S)  # the stacks are written by then
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # it, if still there, and what it started
            out, err = proc.communicate()
            pytest.fail(f"{' '.join(args)} ran over {timeout_s:g} s; its threads:\n{err}")
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {proc.returncode}:\n{err[-4000:]}")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)
