"""The per-page join of the model's KSM pages with a canary's (planner.testing.live.pages)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from planner.errors import InputDataError
from planner.testing.live.compare import CompareOptions
from planner.testing.live.pages import classify, kernel_page_states, page_truth
from planner.testing.live.protocol import LiveRun
from planner.trace.recording import CANARY_SCHEMA, EVENTS_SCHEMA

from .conftest import PIDS

BASE = 0x10000  # build_world maps 100 pages shared by every pid, then 20 of its own


def _events(rows: list[tuple[float, int, int, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sample": [int(t) for t, *_ in rows],
            "t_s": [t for t, *_ in rows],
            "pid": [pid for _, pid, _, _ in rows],
            "page_addr": [BASE + 4096 * i for _, _, i, _ in rows],
            "vma_kind": ["anon"] * len(rows),
            "event": [e for *_, e in rows],
            "vma_start": pd.array([BASE] * len(rows), dtype="UInt64"),
        }
    )


def _add_canary(run: LiveRun, rows: list[tuple[float, int, int, str]]) -> None:
    """Make the run's recording a canary recording whose page events are ``rows``."""
    obs = Path(run.observe_dir)
    ev = _events(rows)
    table = pa.Table.from_pandas(ev, preserve_index=False)
    table = table.cast(EVENTS_SCHEMA) if len(ev) else EVENTS_SCHEMA.empty_table()
    pq.write_table(table, obs / "page_events.parquet")
    pq.write_table(CANARY_SCHEMA.empty_table(), obs / "canary.parquet")
    meta = json.loads((obs / "observe.json").read_text())
    meta["version"] = max(int(meta["version"]), 2)
    meta.setdefault("files", {})["canary"] = "canary.parquet"
    meta["files"]["page_events"] = "page_events.parquet"
    (obs / "observe.json").write_text(json.dumps(meta))


def test_classify_names_each_case() -> None:
    got = classify([True, True, False, False], [True, False, True, False])
    assert got.tolist() == ["both", "model_only", "kernel_only", "neither"]


def test_kernel_state_is_the_last_event_of_each_page() -> None:
    ev = _events(
        [
            (2.0, 1, 0, "unmerged_same_content"),
            (1.0, 1, 0, "merged"),
            (1.0, 1, 1, "merged"),
            (3.0, 1, 0, "merged"),
            (2.0, 2, 0, "merged"),
            (4.0, 2, 0, "unmerged_changed"),
        ]
    )
    st = kernel_page_states(ev)
    p0 = (1, BASE // 4096)
    assert bool(st.loc[p0, "ksm"])  # merged, lost (same content), merged again: in time order
    assert st.loc[p0, "merges"] == 2
    assert st.loc[p0, "unmerged_same"] == 1
    assert not bool(st.loc[(2, BASE // 4096), "ksm"])
    assert st.loc[(2, BASE // 4096), "unmerged_changed"] == 1
    assert bool(st.loc[(1, BASE // 4096 + 1), "ksm"])


def test_a_run_without_a_canary_is_refused(synthetic_run: Callable[..., LiveRun]) -> None:
    run = synthetic_run()
    with pytest.raises(InputDataError, match="per-page KSM states"):
        page_truth(run)


def test_the_join_finds_exactly_the_pages_the_kernel_did_not_merge(
    synthetic_run: Callable[..., LiveRun],
) -> None:
    run = synthetic_run()
    # the kernel merged the 100 shared pages of every process, except 10 of pid 102 that it
    # merged and lost (a write); it also merged one page of pid 100 the model keeps unique
    rows = [(1.0, pid, i, "merged") for pid in PIDS for i in range(100)]
    rows += [(2.0, 102, i, "unmerged_same_content") for i in range(10)]
    rows += [(1.0, 100, 100, "merged")]
    _add_canary(run, rows)
    truth = page_truth(run, CompareOptions(min_window_s=2))
    assert truth.model_ksm_pages == 300  # 100 KSM pages x 3 mappers
    assert truth.kernel_ksm_pages == 291
    assert truth.counts == {"both": 290, "model_only": 10, "kernel_only": 1, "neither": 59}
    by_pid = {p["pid"]: p for p in truth.processes}
    assert by_pid[102]["model_only"] == 10
    assert by_pid[102]["kernel_ksm"] == 90
    assert by_pid[100]["kernel_only"] == 1
    mo = truth.classes["model_only"]
    assert mo["canary_unmerged_same"] == 10
    assert mo["canary_never_ksm"] == 0
    assert mo["unchanged_in_snapshots"] == 10
    assert mo["fork_shared"] == 0
    assert "model only 10" in truth.summary()
    json.dumps(truth.to_dict())
