"""Fixtures of the command-line tests: a small trace (a master and its forked workers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from planner.testing.builder import World


@pytest.fixture(scope="session")
def workers_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One host ``web-1``: a master (pid 10) and three forked workers sharing pages."""
    w = World("web-1")
    w.spawn(10, comm="gunicorn")
    w.map(10, 0x10000, list(range(1, 41)))
    for pid in (11, 12, 13):
        w.fork(10, pid)
        w.write_range(pid, 0x10000, [100 + i for i in range(20)])
    w.snapshot(0.0)
    w.snapshot(10.0)
    out = tmp_path_factory.mktemp("cli") / "trace"
    w.write_trace(out)
    return out
