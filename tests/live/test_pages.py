"""The per-page join of the model's KSM pages with a canary's (planner.testing.live.pages)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from planner.engine.writes import CanaryRates, canary_rates
from planner.errors import InputDataError
from planner.testing.live.compare import CompareOptions
from planner.testing.live.pages import _grown_seen, classify, kernel_page_states, page_truth
from planner.testing.live.protocol import LiveRun
from planner.trace.recording import CANARY_SCHEMA, EVENTS_SCHEMA
from tests.engine.test_writes import _canary

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


def test_at_a_time_both_sides_are_taken_then(synthetic_run: Callable[..., LiveRun]) -> None:
    """At 1.5 s the ten pages of pid 102 the kernel lost at 2 s are still merged on its
    side; the model's side is its replay stopped then. A time before ksmd's start or past
    the observation is refused."""
    run = synthetic_run()
    rows = [(1.0, pid, i, "merged") for pid in PIDS for i in range(100)]
    rows += [(2.0, 102, i, "unmerged_same_content") for i in range(10)]
    _add_canary(run, rows)
    opts = CompareOptions(min_window_s=2)
    end = page_truth(run, opts)
    early = page_truth(run, opts, at_s=1.5)
    assert (end.kernel_ksm_pages, early.kernel_ksm_pages) == (290, 300)
    assert early.at_s == 1.5
    assert end.at_s is None
    assert "at 1.5 s" in early.summary()
    assert early.grown_seen is None  # no canary growth: no rows placed for its pages
    before = page_truth(run, opts, at_s=0.2)
    assert before.kernel_ksm_pages == 0
    for bad in (0.0, -1.0, end.duration_s + 1.0):
        with pytest.raises(InputDataError, match="no per-page truth"):
            page_truth(run, opts, at_s=bad)


def test_grown_rows_are_joined_with_the_pages_they_stand_for() -> None:
    """A row the canary growth placed for a page seen merged takes the kernel's state of
    that page (through ``CanaryRates.renamed_keys``); rows placed for no such page, and
    traced rows, are left out."""
    pid = np.array([100, 100, 100, 101], np.int64)
    page = np.array([0x20, 0x41, 0x42, 0x43], np.uint64)
    grown = np.array([False, True, True, True])
    model = np.array([True, True, False, True])
    old = np.array([(100 << 36) | 0x30, (100 << 36) | 0x31], np.uint64)
    new = np.array([(100 << 36) | 0x42, (100 << 36) | 0x41], np.uint64)
    rates = dataclasses.replace(_rates_stub(), renamed_keys=(old, new))
    kern = pd.DataFrame(
        {"ksm": [True, False]}, index=pd.MultiIndex.from_tuples([(100, 0x30), (100, 0x31)])
    )
    got = _grown_seen(pid, page, grown, model, rates, kern)
    # row 0x41 stands for 0x31 (not merged in the kernel), row 0x42 for 0x30 (merged)
    assert got == {"rows": 2, "model_ksm": 1, "kernel_ksm": 1, "both": 0}
    assert _grown_seen(pid, page, grown, model, _rates_stub(), kern) is None
    assert _grown_seen(pid, page, grown, model, None, kern) is None


def _rates_stub() -> CanaryRates:
    return canary_rates(_canary([(1.0, 100, 0x10000, "merged")], end_s=2.0))
