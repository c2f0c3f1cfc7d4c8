"""Hypothesis strategies for engine property tests (worlds, knobs, replay options, and
the sampling counts of writes between snapshots)."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from hypothesis import reject
from hypothesis import strategies as st

from planner.engine.knobs import KNOBS, KsmKnobs
from planner.engine.options import ReplayOptions
from planner.errors import KnobError
from planner.testing.random_world import WorldSpec
from planner.trace.check import as_numpy

if TYPE_CHECKING:
    from planner.trace.io import HostTrace


@st.composite
def world_specs(draw: Any) -> WorldSpec:
    """Small worlds: a few processes with churn, forks, exits, zero pages, sometimes THP."""
    return WorldSpec(
        processes=draw(st.integers(1, 4)),
        pages=draw(st.integers(2, 30)),
        contents=draw(st.integers(1, 8)),
        snapshots=draw(st.integers(1, 5)),
        zero_share=draw(st.sampled_from([0.0, 0.15, 0.5])),
        churn=draw(st.sampled_from([0.0, 0.1, 0.25, 0.6])),
        fork_prob=draw(st.sampled_from([0.0, 0.4, 0.9])),
        exit_prob=draw(st.sampled_from([0.0, 0.15, 0.5])),
        thp=draw(st.booleans()),
        span_s=draw(st.sampled_from([0.05, 0.5, 3.0])),
    )


@st.composite
def knob_sets(draw: Any) -> KsmKnobs:
    """Every knob of the table drawn from its test values (:attr:`KnobSpec.test_values`).

    Batching, chains, zero pages, smart scan, the advisor, HZ: each knob's edges come from
    the knob table, so a knob added there is exercised here without another line.
    """
    values = {s.name: draw(st.sampled_from(s.test_values)) for s in KNOBS}
    try:
        return KsmKnobs(**values)
    except KnobError:  # a combination the kernel refuses (e.g. advisor max below min)
        reject()


@st.composite
def replay_options(draw: Any) -> ReplayOptions:
    """Short replays, time- or scan-aligned snapshots, a fine grid."""
    return ReplayOptions(
        settle_scans=draw(st.integers(2, 12)),
        grid_s=0.05,
        snapshot_alignment=draw(st.sampled_from(["time", "scan"])),
    )


@dataclass(frozen=True)
class ChurnSpec:
    """How much a trace's pages are written between snapshots (sampling counts, format v2)."""

    written_share: float = 0.4  # share of page rows with writes in an interval
    max_content_changes: int = 6
    max_same_writes: int = 4
    soft_dirty: bool = True  # same-content writes counted (else: frame changes only)
    last_interval_s: float | None = 0.5  # the interval sampled after the last snapshot
    other_share: float = 0.5  # share of changing rows whose first other content is known


def with_write_counts(ht: HostTrace, seed: int, spec: ChurnSpec = ChurnSpec()) -> HostTrace:
    """``ht`` with per-page sampling counts (docs/capture.md §9): each snapshot's rows get
    content changes and same-content writes (or frame changes) over the interval after it,
    drawn from ``seed``; the snapshots table says how long each interval was."""
    rnd = np.random.default_rng(seed)
    times = ht.times_s.tolist()
    n = ht.pages.num_rows
    pick = rnd.random(n) < spec.written_share
    content = np.where(pick, rnd.integers(0, spec.max_content_changes + 1, n), 0)
    same = np.where(pick, rnd.integers(0, spec.max_same_writes + 1, n), 0)
    checks = content + rnd.integers(0, 3, n)  # checked no more often than changed: saturated
    frame = content + (0 if spec.soft_dirty else same)
    samples = np.maximum(checks, np.maximum(frame, same)) + 1
    sid = ht.pages.column("snapshot_id").to_numpy()
    last_sid = int(ht.snapshot_ids[-1]) if len(times) else -1
    if spec.last_interval_s is None:
        content = np.where(sid == last_sid, 0, content)
        same = np.where(sid == last_sid, 0, same)
        frame = np.where(sid == last_sid, 0, frame)
    # the first other content (format v3): one the trace holds somewhere, so that copies
    # can alternate between the same two contents (none where it is the row's own)
    hash_col = ht.pages.column("content_hash")
    known = ~as_numpy(hash_col.is_null(), bool)
    hashes = as_numpy(hash_col, np.uint64, null=0)
    pool = hashes[known] if known.any() else np.ones(1, np.uint64)
    other = pool[rnd.integers(0, pool.size, n)]
    has_other = (content > 0) & (rnd.random(n) < spec.other_share) & (other != hashes)
    u16 = pa.uint16()
    cols: dict[str, pa.Array[Any]] = {
        "samples": pa.array(samples, u16),
        "content_checks": pa.array(checks, u16),
        "content_changes": pa.array(content, u16),
        "frame_changes": pa.array(frame, u16),
        "absent_samples": pa.array(np.zeros(n, np.int64), u16),
        "same_content_writes": pa.array(same if spec.soft_dirty else np.zeros(n, np.int64), u16),
        "other_hash": pa.array(other, pa.uint64(), mask=~has_other),
    }
    pages = ht.pages
    for name, arr in cols.items():
        pages = pages.set_column(pages.schema.get_field_index(name), name, arr)
    intervals = [b - a for a, b in itertools.pairwise(times)] + [spec.last_interval_s]
    snaps = ht.snapshots
    snap_cols: dict[str, pa.Array[Any]] = {
        "interval_s": pa.array(intervals, pa.float64()),
        "sample_ms": pa.array([100.0] * len(times), pa.float64()),
        "soft_dirty": pa.array([spec.soft_dirty] * len(times), pa.bool_()),
    }
    for name, col in snap_cols.items():
        snaps = snaps.set_column(snaps.schema.get_field_index(name), name, col)
    return dataclasses.replace(ht, pages=pages, snapshots=snaps)


@st.composite
def churn_specs(draw: Any) -> ChurnSpec:
    """Between no writes and pages rewritten several times an interval."""
    return ChurnSpec(
        written_share=draw(st.sampled_from([0.0, 0.2, 0.5, 0.9])),
        max_content_changes=draw(st.sampled_from([1, 3, 12])),
        max_same_writes=draw(st.sampled_from([0, 2, 8])),
        soft_dirty=draw(st.booleans()),
        last_interval_s=draw(st.sampled_from([None, 0.05, 0.5])),
    )
