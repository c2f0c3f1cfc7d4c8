"""Fixtures of the what-if tests: small synthetic traces on disk, an in-process CLI runner."""

from __future__ import annotations

from pathlib import Path

import pytest

from planner.testing.builder import World


def build_family(
    host: str = "web-1", *, workers: int = 4, tenants: bool = False, seed: int = 0
) -> World:
    """A master and its forked workers: common content (own frames), some private pages.

    With ``tenants``, the first half of the workers carry label tenant=a, the rest tenant=b
    (the master: a).
    """
    w = World(host)
    w.spawn(100, comm="gunicorn", labels={"tenant": "a"} if tenants else None, cgroup="/web.slice")
    w.map(100, 0x10000, [1000 + i for i in range(40)], kind="heap")
    w.snapshot(0.0)
    for i in range(workers):
        pid = 101 + i
        w.fork(100, pid)
        if tenants:
            w.procs[pid].labels = {"tenant": "a" if i < workers // 2 else "b"}
        # interpreter state every worker builds the same way, on its own frames
        w.map(pid, 0x200000, [5000 + j for j in range(60)], kind="anon")
        w.map(pid, 0x400000, [(seed + 1) * 100_000 + 1000 * i + j for j in range(20)], kind="heap")
        w.write_range(pid, 0x10000, [7000 + 100 * i + j for j in range(5)])  # COW of a few
    w.snapshot(10.0)
    for i in range(workers):
        w.write_range(101 + i, 0x400000, [(seed + 2) * 100_000 + 1000 * i + j for j in range(5)])
    w.snapshot(20.0)
    return w


@pytest.fixture
def family_trace(tmp_path: Path) -> Path:
    """One host: a master and 4 workers."""
    out = tmp_path / "family.trace"
    build_family().write_trace(out)
    return out


@pytest.fixture
def tenant_trace(tmp_path: Path) -> Path:
    """One host: a master and 4 workers of two tenants (labels)."""
    out = tmp_path / "tenants.trace"
    build_family(workers=4, tenants=True).write_trace(out)
    return out


@pytest.fixture
def fleet_trace(tmp_path: Path) -> Path:
    """Two hosts in one trace (a dataset partitioned by host)."""
    from planner.trace.io import TraceWriter

    out = tmp_path / "fleet.trace"
    worlds = [build_family("web-1", workers=4, seed=0), build_family("web-2", workers=6, seed=5)]
    with TraceWriter(out, source="synthetic") as tw:
        for w in worlds:
            ht = w.host_trace()
            hw = tw.host(w.host)
            for sid in ht.snapshot_ids.tolist():
                snap = next(r for r in ht.snapshots.to_pylist() if r["snapshot_id"] == sid)
                procs = ht.processes.filter(ht.processes.column("snapshot_id").to_numpy() == sid)
                maps = ht.mappings.filter(ht.mappings.column("snapshot_id").to_numpy() == sid)
                hw.add_snapshot(snap, processes=procs, mappings=maps, pages=ht.pages_of(sid))
    return out
