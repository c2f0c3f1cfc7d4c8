"""The local pool stops for real: unfinished work is terminated, workers follow their parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from planner.errors import Interrupted
from planner.whatif.executors import InlineExecutor, LocalPool, local_executor


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _sleep_then(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def _touch_then_sleep(path: Path, seconds: float) -> int:
    path.touch()
    time.sleep(seconds)
    return os.getpid()


def _wait_until(condition: object, timeout_s: float = 30.0) -> None:
    t0 = time.monotonic()
    while not condition():  # type: ignore[operator]
        assert time.monotonic() - t0 < timeout_s
        time.sleep(0.02)


def test_shutdown_with_unfinished_work_terminates_the_workers() -> None:
    pool = local_executor(2)
    assert isinstance(pool, LocalPool)
    futures = [pool.submit(_sleep_then, 120) for _ in range(4)]
    _wait_until(lambda: sum(f.running() for f in futures) >= 2)
    pids = list(pool._processes)  # type: ignore[attr-defined]
    assert len(pids) == 2
    t0 = time.monotonic()
    pool.shutdown(wait=True, cancel_futures=True)
    assert time.monotonic() - t0 < 20  # not the 120 s of the running tasks
    assert [p for p in pids if _alive(p)] == []
    assert all(f.done() for f in futures)


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_other_start_methods_run_tasks(method: str) -> None:
    pool = local_executor(2, start_method=method)
    try:
        futures = [pool.submit(os.getpid) for _ in range(2)]
        assert all(isinstance(f.result(timeout=120), int) for f in futures)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def test_shutdown_after_the_work_is_done_is_ordinary() -> None:
    pool = local_executor(2)
    results = [pool.submit(_sleep_then, 0.01).result() for _ in range(3)]
    pool.shutdown(wait=True, cancel_futures=True)
    assert all(isinstance(r, int) for r in results)


def test_workers_leave_ctrl_c_to_the_parent(tmp_path: Path) -> None:
    pool = local_executor(2)
    try:
        futures = [pool.submit(_touch_then_sleep, tmp_path / f"s{i}", 1.0) for i in range(2)]
        _wait_until(lambda: (tmp_path / "s0").exists() and (tmp_path / "s1").exists())
        for pid in list(pool._processes):  # type: ignore[attr-defined]
            os.kill(pid, signal.SIGINT)  # what a terminal's ^C sends to the whole group
        assert all(isinstance(f.result(timeout=30), int) for f in futures)
    finally:
        pool.shutdown(wait=True)


_ORPHAN = textwrap.dedent(
    """
    import time
    from planner.whatif.executors import local_executor
    pool = local_executor(2)
    futures = [pool.submit(time.sleep, 120) for _ in range(2)]
    while not all(f.running() for f in futures):
        time.sleep(0.02)
    print(" ".join(map(str, pool._processes)), flush=True)
    time.sleep(120)
    """
)


def test_workers_die_with_their_parent() -> None:
    parent = subprocess.Popen([sys.executable, "-c", _ORPHAN], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        workers = [int(p) for p in parent.stdout.readline().split()]
        assert len(workers) == 2
    finally:
        parent.kill()  # SIGKILL: no clean-up of its own
        parent.wait()
    _wait_until(lambda: not any(_alive(p) for p in workers))


def test_the_inline_executor_lets_a_signal_through_at_once() -> None:
    ex = InlineExecutor()

    def interrupted() -> None:
        raise Interrupted(signal.SIGTERM)

    with pytest.raises(Interrupted):
        ex.submit(interrupted)
    fut = ex.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        fut.result()
