"""The suite's child-process runner (tests/procs.py) says where a hung child hangs."""

from __future__ import annotations

import sys
import textwrap
import time

import pytest

from tests.procs import run

HANGS = textwrap.dedent(
    """
    import os, subprocess, sys, threading, time
    def stuck_in_a_thread():
        time.sleep(600)
    def stuck_in_main():
        time.sleep(600)
    threading.Thread(target=stuck_in_a_thread, daemon=True).start()
    # a grandchild that holds the pipes open past the child's death
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print("started", flush=True)
    stuck_in_main()
    """
)


def test_a_child_over_its_time_fails_the_test_with_its_threads_stacks() -> None:
    t0 = time.monotonic()
    with pytest.raises(pytest.fail.Exception) as failed:
        run([sys.executable, "-c", HANGS], timeout_s=2)
    message = str(failed.value)
    assert "ran over 2 s" in message
    assert "stuck_in_a_thread" in message  # every thread's stack, not only the main one
    assert "stuck_in_main" in message
    assert time.monotonic() - t0 < 30  # the grandchild holding the pipes did not stall it


def test_a_child_in_time_is_as_subprocess_run_gives_it() -> None:
    done = run([sys.executable, "-c", "import sys; print('out'); sys.exit(3)"], timeout_s=60)
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "")
    with pytest.raises(pytest.fail.Exception, match="exited 3"):
        run([sys.executable, "-c", "import sys; sys.exit(3)"], timeout_s=60, check=True)
