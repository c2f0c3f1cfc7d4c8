"""Process trees are stopped by pid with nothing left; the host's load is summarized."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from planner.testing.live.host import (
    HostLoadMonitor,
    ProcessTree,
    WorkloadError,
    read_cpu_sample,
    start_ticks,
    tree_members,
    wait_for_file,
)

#: A parent with two children, one of which moves to a session of its own (as PostgreSQL's
#: backends do); the parent ignores SIGTERM, so only the SIGKILL fallback stops it.
TREE = r"""
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
for own_session in (False, True):
    if os.fork() == 0:
        if own_session:
            os.setsid()
        time.sleep(120)
        os._exit(0)
open(sys.argv[1], "w").write("ready")
time.sleep(120)
"""


def test_a_tree_is_stopped_with_every_descendant(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    tree = ProcessTree(
        "tree",
        [sys.executable, "-c", TREE, str(ready)],
        under_ksm=False,
        log_path=tmp_path / "tree.log",
    )
    try:
        wait_for_file(ready, timeout_s=30, alive=tree)
        members = tree.refresh()
        assert len(members) == 3  # the one that left the session is found through its parent
        assert tree.root_pid() == tree.pid
        assert tree.cpu_s() >= 0
        killed = tree.stop(signal.SIGTERM, grace_s=0.5)
    finally:
        if tree.leftovers():
            tree.stop(signal.SIGKILL, grace_s=1)
    assert sorted(killed) == sorted(members)
    assert tree.leftovers() == []
    assert all(start_ticks(p) != t0 for p, t0 in members.items())


def test_a_dead_command_is_reported_with_its_log(tmp_path: Path) -> None:
    tree = ProcessTree(
        "fails",
        [sys.executable, "-c", "print('boom'); raise SystemExit(3)"],
        under_ksm=False,
        log_path=tmp_path / "fails.log",
    )
    tree.proc.wait(timeout=30)
    with pytest.raises(WorkloadError, match="exited with 3"):
        tree.check_alive()
    with pytest.raises(WorkloadError, match="boom"):
        wait_for_file(tmp_path / "never", timeout_s=5, alive=tree)
    assert tree.stop() == []


def test_a_missing_command_is_a_workload_error(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match="cannot start"):
        ProcessTree("x", [str(tmp_path / "nope")], under_ksm=False, log_path=tmp_path / "x.log")


def test_tree_members_of_this_process_include_itself() -> None:
    import os

    assert os.getpid() in tree_members(os.getpid())


def test_host_load_summary_counts_ours_and_others() -> None:
    with HostLoadMonitor(interval_s=0.05) as mon:
        a = mon.mark()
        t = time.process_time()
        while time.process_time() - t < 0.3:  # burn some CPU of our own
            pass
        b = mon.mark()
    s = mon.summary(a, b, {"harness": 0.3})
    assert 0 <= s.busy_fraction <= 1
    assert s.busy_cpu_s >= 0.2
    assert s.procs_running_max >= 1
    assert s.other_cpu_s >= 0
    assert "CPUs busy" in s.describe()
    assert read_cpu_sample().total_ticks >= b.total_ticks
