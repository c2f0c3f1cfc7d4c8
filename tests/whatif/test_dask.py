"""Scenarios on a Dask cluster (a LocalCluster of threads), and a cluster that does not answer."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from planner.errors import ClusterError
from planner.policy import preset
from planner.whatif import InlineExecutor, KnobGrid, dask_executor, run_whatif

distributed = pytest.importorskip(
    "distributed", reason="the 'dist' extra (dask[distributed]) is not installed"
)

GRID = KnobGrid.from_mapping({"pages_to_scan": [100, 1000]})


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A cheap in-process cluster: 2 workers of 1 thread (HTTP on a free port, not 8787)."""
    with distributed.LocalCluster(
        processes=False, n_workers=2, threads_per_worker=1, dashboard_address=":0"
    ) as c:
        yield c


def test_scenarios_on_a_dask_cluster_match_a_local_run(cluster: Any, family_trace: Path) -> None:
    sets = [preset("prctl-all"), preset("workers-prctl")]
    with dask_executor(cluster.scheduler_address, timeout_s=10) as ex:
        remote = run_whatif(family_trace, policy_sets=sets, grid=GRID, executor=ex)
    local = run_whatif(family_trace, policy_sets=sets, grid=GRID, executor=InlineExecutor())
    pd.testing.assert_frame_equal(remote.to_frame(), local.to_frame())
    assert remote.provenance["extra"]["executor"] != "InlineExecutor"


def test_a_fleet_runs_one_task_per_host_on_the_cluster(cluster: Any, fleet_trace: Path) -> None:
    with dask_executor(cluster.scheduler_address) as ex:
        res = run_whatif(fleet_trace, policy_sets=[preset("prctl-all")], grid=GRID, executor=ex)
    assert res.provenance["extra"]["tasks"] == 4  # 2 hosts x 2 knob points
    assert [h.host for h in res.scenarios[0].hosts] == ["web-1", "web-2"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_scheduler_that_does_not_answer_is_a_cluster_error() -> None:
    port = _closed_port()
    t0 = time.monotonic()
    with pytest.raises(ClusterError, match=f"tcp://127.0.0.1:{port} did not answer within 1 s"):  # noqa: SIM117
        with dask_executor(f"tcp://127.0.0.1:{port}", timeout_s=1):
            pass
    assert time.monotonic() - t0 < 30


def test_a_scheduler_without_workers_is_a_cluster_error() -> None:
    with distributed.LocalCluster(processes=False, n_workers=0, dashboard_address=":0") as empty:  # noqa: SIM117
        with pytest.raises(ClusterError, match="has no worker"):
            with dask_executor(empty.scheduler_address, timeout_s=1):
                pass


def test_without_the_dist_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from planner.errors import MissingExtraError

    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(MissingExtraError, match="distributed is needed") as info:  # noqa: SIM117
        with dask_executor("tcp://127.0.0.1:1"):
            pass
    assert info.value.hint == "pip install 'ksm-planner[dist]'"
