"""Static dedup potential (``ksm-planner info``) on a hand-made trace with known answers.

The world (content ids; 0 is the zero page; F<n> are physical frames)::

    t=0   master 100  heap 0x10000: 1 1 2 0 0   (F1..F5)   anon 0x100000: 3 4 (F6 F7)
    then  fork 101 and 102 ("worker"): they map F1..F7 (fork COW sharing)
          101 writes 5 at 0x12000 (COW -> F8); 102 writes 5 there too (F9)
          102 writes 3 at 0x100000 (COW -> F10: same content as F6, a new frame)
          spawn 200 ("other", no labels) anon 0x200000: 1 0 (F11 F12)
    t=10  snapshot

Expected numbers at t=10, worked out by hand:

* pages 23 = 7 + 7 + 7 + 2; frames 12 (F1..F12); distinct hashes 6 {0,1,2,3,4,5};
* zero pages 7 (two per heap, one in 200), zero frames 3 (F4, F5, F12);
* naive = 23 - 6 = 17;
* ideal = (non-zero frames 9 - non-zero hashes 5) + zero frames 3 = 7;
* fork-shared = 23 - 12 = 11;
* (hash, pid) pairs 5 + 5 + 5 + 2 = 17: within-process 23 - 17 = 6, cross-process 17 - 6 = 11.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from planner.testing.builder import World
from planner.trace import schema as S
from planner.trace.summary import (
    GroupPotential,
    SnapshotCounter,
    SnapshotPotential,
    host_potential,
    snapshot_potential,
    summarize_trace,
)


def _world() -> World:
    w = World(host="web-1")
    w.spawn(100, comm="master", labels={"svc": "web"})
    w.map(100, 0x10000, [1, 1, 2, 0, 0], kind="heap")
    w.map(100, 0x100000, [3, 4], kind="anon")
    w.snapshot(0.0)
    w.fork(100, 101, comm="worker")
    w.fork(100, 102, comm="worker")
    w.write(101, 0x12000, 5)
    w.write(102, 0x12000, 5)
    w.write(102, 0x100000, 3)
    w.spawn(200, comm="other")
    w.map(200, 0x200000, [1, 0], kind="anon")
    w.snapshot(10.0)
    return w


def _group(groups: tuple[GroupPotential, ...], name: str) -> GroupPotential:
    return next(g for g in groups if g.group == name)


@pytest.fixture(scope="module")
def potentials() -> list[SnapshotPotential]:
    return host_potential(_world().host_trace())


def test_first_snapshot_single_process(potentials: list[SnapshotPotential]) -> None:
    s = potentials[0]
    assert (s.processes, s.pages, s.frames, s.distinct_hashes) == (1, 7, 7, 5)
    assert (s.zero_pages, s.zero_frames) == (2, 2)
    assert s.naive_saved_pages == 2  # the second "1" and the second zero page
    assert s.ideal_saved_frames == 3  # (5 - 4) non-zero + 2 zero frames
    assert s.fork_shared_pages == 0
    assert (s.within_process_saved_pages, s.cross_process_saved_pages) == (2, 0)


def test_totals_with_fork_shared_frames_and_zero_pages(potentials: list[SnapshotPotential]) -> None:
    s = potentials[1]
    assert s.time_s == 10.0
    assert (s.processes, s.pages, s.frames, s.distinct_hashes) == (4, 23, 12, 6)
    assert (s.zero_pages, s.zero_frames) == (7, 3)
    assert s.naive_saved_pages == 17
    assert s.ideal_saved_frames == 7
    assert s.fork_shared_pages == 11
    assert (s.within_process_saved_pages, s.cross_process_saved_pages) == (6, 11)
    assert s.naive_saved_fraction == pytest.approx(17 / 23)
    assert s.ideal_saved_fraction == pytest.approx(7 / 12)


def test_by_mapping_kind(potentials: list[SnapshotPotential]) -> None:
    s = potentials[1]
    heap, anon = _group(s.by_kind, "heap"), _group(s.by_kind, "anon")
    # heap: 15 pages; redundant copies beyond the first (scan order pid, address): 2 in 100,
    # 4 in 101 (its "5" is the first 5), 5 in 102; frames freed: F2, F9 + zero F4, F5
    assert (heap.pages, heap.zero_pages, heap.frames, heap.distinct_hashes) == (15, 6, 7, 4)
    assert (heap.naive_saved_pages, heap.ideal_saved_frames, heap.fork_shared_pages) == (11, 4, 8)
    # anon: 8 pages; 101: 2, 102: 2, 200: 2 redundant; frames freed F10, F11 + zero F12
    assert (anon.pages, anon.zero_pages, anon.frames, anon.distinct_hashes) == (8, 1, 5, 4)
    assert (anon.naive_saved_pages, anon.ideal_saved_frames, anon.fork_shared_pages) == (6, 3, 3)
    # attributed columns add up to the snapshot totals
    assert sum(g.naive_saved_pages for g in s.by_kind) == s.naive_saved_pages
    assert sum(g.ideal_saved_frames for g in s.by_kind) == s.ideal_saved_frames
    assert sum(g.fork_shared_pages for g in s.by_kind) == s.fork_shared_pages


def test_by_comm_and_labels(potentials: list[SnapshotPotential]) -> None:
    s = potentials[1]
    got = {
        g.group: (g.pages, g.naive_saved_pages, g.ideal_saved_frames, g.fork_shared_pages)
        for g in s.by_comm
    }
    assert got == {"master": (7, 2, 3, 0), "worker": (14, 13, 2, 11), "other": (2, 2, 2, 0)}
    labels = {g.group: (g.pages, g.naive_saved_pages, g.ideal_saved_frames) for g in s.by_label}
    assert labels == {"svc=web": (21, 15, 5), "(no labels)": (2, 2, 2)}


def test_unhashed_pages_are_not_candidates() -> None:
    """Swapped pages (no hash, no frame) are counted apart and change nothing else."""
    pages = pa.table(
        {
            "pid": pa.array([1, 1, 1, 2], pa.int32()),
            "vma_start": pa.array([4096] * 4, pa.uint64()),
            "content_hash": pa.array([7, None, 7, 7], pa.uint64()),
            "frame_id": pa.array([10, None, 11, 10], pa.uint64()),
            "flags": pa.array([0, int(S.PageFlag.SWAPPED), 0, 0], pa.uint16()),
        }
    )
    procs = pa.table({"pid": pa.array([1, 2], pa.int32()), "comm": ["a", "b"]})
    maps = pa.table(
        {
            "pid": pa.array([1, 2], pa.int32()),
            "start": pa.array([4096, 4096], pa.uint64()),
            "kind": ["anon", "anon"],
        }
    )
    s = snapshot_potential(pages, procs, maps)
    assert (s.pages, s.unhashed_pages, s.frames, s.distinct_hashes) == (3, 1, 2, 1)
    assert (s.naive_saved_pages, s.ideal_saved_frames, s.fork_shared_pages) == (2, 1, 1)
    assert (s.within_process_saved_pages, s.cross_process_saved_pages) == (1, 1)


def test_summarize_trace_directory(tmp_path: Path) -> None:
    _world().write_trace(tmp_path / "t")
    summary = summarize_trace(tmp_path / "t")
    assert summary.processes == 4  # 100, 101, 102, 200 (distinct pid and start time)
    assert summary.pages == 7 + 23
    assert [s.ideal_saved_frames for s in summary.snapshots] == [3, 7]
    assert [s.naive_saved_pages for s in summary.snapshots] == [2, 17]
    manifest = json.loads((tmp_path / "t" / S.MANIFEST_NAME).read_text())
    pages_bytes = manifest["files"]["host=web-1/pages.parquet"]["bytes"]
    assert summary.bytes_per_page == pytest.approx(pages_bytes / 30)
    total = (
        sum(f["bytes"] for f in manifest["files"].values())
        + (tmp_path / "t" / S.MANIFEST_NAME).stat().st_size
    )
    assert summary.total_bytes_per_page == pytest.approx(total / 30)
    d: dict[str, Any] = summary.to_dict()
    assert d["provenance"]["trace_hash"] == manifest["trace_hash"]
    assert d["hosts"][0]["snapshots"] == 2


@pytest.mark.parametrize("batch_rows", [3, 4, 1 << 20])
def test_streamed_summary_equals_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch_rows: int
) -> None:
    """Streaming pages in small batches gives the same numbers as the whole table (``info``
    counts batch by batch; batches of 3 and 4 rows cross the snapshots' boundaries)."""
    import planner.trace.summary as summary

    monkeypatch.setattr(summary, "_BATCH_ROWS", batch_rows)
    w = _world()
    w.write_trace(tmp_path / "t")
    from planner.trace.io import open_trace

    trace = open_trace(tmp_path / "t")
    parts = list(trace.iter_snapshot_pages("web-1", batch_rows=4))
    assert [sid for sid, _ in parts] == [0, 1]
    assert [t.num_rows for _, t in parts] == [7, 23]
    assert [s.to_dict() for s in summarize_trace(tmp_path / "t").snapshots] == [
        {**s.to_dict(), "host": "web-1"} for s in host_potential(w.host_trace())
    ]


def test_empty_snapshot_is_reported(tmp_path: Path) -> None:
    w = World(host="h")
    w.spawn(1)
    w.map(1, 4096, [1, 1])
    w.snapshot(0.0)
    w.exit(1)
    w.snapshot(5.0)
    w.write_trace(tmp_path / "t")
    snaps = summarize_trace(tmp_path / "t").snapshots
    assert [(s.time_s, s.pages, s.naive_saved_pages) for s in snaps] == [(0.0, 2, 1), (5.0, 0, 0)]


def test_pages_whose_pids_are_not_in_runs() -> None:
    """Pages whose pids do not come in runs: the distinct (hash, pid) pairs are counted
    exactly (a table of the pairs); a counter told they are in runs refuses them."""
    pages = pa.table(
        {
            "pid": pa.array([1, 2, 1, 2], pa.int32()),
            "vma_start": pa.array([4096] * 4, pa.uint64()),
            "content_hash": pa.array([7, 7, 7, 8], pa.uint64()),
            "frame_id": pa.array([1, 2, 3, 4], pa.uint64()),
            "flags": pa.array([0] * 4, pa.uint16()),
        }
    )
    procs = pa.table({"pid": pa.array([1, 2], pa.int32()), "comm": ["a", "b"]})
    maps = pa.table(
        {"pid": pa.array([1, 2], pa.int32()), "start": pa.array([4096] * 2, pa.uint64()),
         "kind": ["anon", "anon"]}
    )  # fmt: skip
    s = snapshot_potential(pages, procs, maps)
    # pairs (7, 1), (7, 2), (8, 2): one within-process duplicate, one across
    assert (s.within_process_saved_pages, s.cross_process_saved_pages) == (1, 1)
    counter = SnapshotCounter(procs, maps, ordered=True)
    with pytest.raises(ValueError, match="not in runs of pids"):
        counter.feed(pages)


def _oracle(rows: list[tuple[int, int, int, int, bool]], group_of: Any) -> dict[str, Any]:
    """The potential of candidate pages ``(pid, vma, hash, frame, zero)`` in scan order,
    by sets and loops (the definitions of the module docstring, nothing shared)."""
    seen_h: set[int] = set()
    seen_f: set[int] = set()
    kept: set[int] = set()
    groups: dict[str, dict[str, Any]] = {}
    freed_total = 0
    for pid, vma, h, f, zero in rows:
        first_h, first_f = h not in seen_h, f not in seen_f
        seen_h.add(h)
        seen_f.add(f)
        freed = False
        if first_f:
            if zero or h in kept:
                freed = True
            else:
                kept.add(h)
        freed_total += freed
        g = groups.setdefault(
            group_of(pid, vma),
            {"n": 0, "z": 0, "naive": 0, "fork": 0, "ideal": 0, "f": set(), "h": set()},
        )
        g["n"] += 1
        g["z"] += zero
        g["naive"] += not first_h
        g["fork"] += not first_f
        g["ideal"] += freed
        g["f"].add(f)
        g["h"].add(h)
    pairs = {(h, pid) for pid, _, h, _, _ in rows}
    return {
        "totals": (
            len(rows), len(seen_f), len(seen_h), freed_total,
            len({f for _, _, _, f, z in rows if z}), len(rows) - len(pairs),
        ),
        "groups": {
            k: (v["n"], v["z"], len(v["f"]), len(v["h"]), v["naive"], v["ideal"], v["fork"])
            for k, v in groups.items()
        },
    }  # fmt: skip


@dataclass
class _Snap:
    pages: pa.Table
    procs: pa.Table
    maps: pa.Table
    n: int
    pid: Any
    vma: Any
    h: Any
    f: Any
    base: Any
    unhashed: Any
    lone: Any
    zero: Any
    kinds: list[str]
    comm: dict[int, str]


def _random_snapshot(rng: Any, n_pids: int, ids: str, *, labels: bool = True) -> _Snap:
    """A random snapshot of ``n_pids`` processes (see the oracle test below); ``labels``:
    label sets on four processes of five, else none (a breakdown fewer)."""
    import numpy as np

    n = int(rng.integers(1, 400)) * (1 + n_pids // 20)
    pids = range(1, n_pids + 1)
    pid = np.sort(rng.integers(1, n_pids + 1, n)).astype(np.int32)
    vma = (rng.integers(1, 4, n) * 0x100000).astype(np.uint64)
    h = rng.integers(0, 12, n).astype(np.uint64)
    f = rng.integers(0, 40, n).astype(np.uint64)
    unhashed = rng.random(n) < 0.05
    lone = (rng.random(n) < 0.03) & ~unhashed  # hashed, without a frame: its own frame
    zero = h == 0
    flags = np.where(zero, int(S.PageFlag.ZERO), 0) | np.where(unhashed, int(S.PageFlag.SWAPPED), 0)
    base = np.full(n, 2**60 if ids == "big" else 0, np.uint64)
    if ids == "mixed":
        base[n // 2 :] = np.uint64(2**60)
    pages = pa.table(
        {
            "pid": pa.array(pid),
            "vma_start": pa.array(vma),
            "content_hash": pa.array(h + base, mask=unhashed),
            "frame_id": pa.array(f + base, mask=unhashed | lone),
            "flags": pa.array(flags.astype(np.uint16)),
        }
    )
    kinds = ["heap", "anon", "stack"]
    maps = pa.table(
        {
            "pid": pa.array([p for p in pids for _ in kinds], pa.int32()),
            "start": pa.array([v * 0x100000 for _ in pids for v in (1, 2, 3)], pa.uint64()),
            "kind": [k for _ in pids for k in kinds],
        }
    )
    n_comms = 3 if n_pids < 20 else 40 if n_pids < 64 else 70
    comm = {p: f"c{p % n_comms}" for p in pids}
    label = {p: json.dumps({"team": f"t{p % 4}"}) if p % 5 and labels else None for p in pids}
    procs = pa.table(
        {
            "pid": pa.array(pids, pa.int32()),
            "comm": [comm[p] for p in pids],
            "labels": pa.array([label[p] for p in pids], pa.string()),
        }
    )
    return _Snap(pages, procs, maps, n, pid, vma, h, f, base, unhashed, lone, zero, kinds, comm)


@pytest.mark.parametrize("ids", ["small", "big", "mixed"])
@pytest.mark.parametrize(
    ("seed", "n_pids"), [(s, 5) for s in range(4)] + [(9, 50), (7, 90), (8, 200)]
)
def test_potential_equals_a_set_based_oracle(seed: int, n_pids: int, ids: str) -> None:
    """Random snapshots with repeated hashes, shared frames (some with two contents),
    zero pages, unhashed pages and hashed pages without a frame: totals and the
    breakdowns against an oracle (with 3 comms, 40, and 70: masks of 8 and 64 bits per
    id, and the group-by-group count; kinds, comms and label sets in one pass), with ids
    small enough for the direct table or not (``big``: hashes and frames from 2**60, the
    hash table; ``mixed``: those of the later pages only, so that a counter fed batch by
    batch moves from the direct table to the hash table on the way). The same pages fed
    to a :class:`SnapshotCounter` in random batches, its tables sized for one row (they
    grow), give the same potential."""
    import numpy as np

    rng = np.random.default_rng(seed)
    snap = _random_snapshot(rng, n_pids, ids)
    pages, procs, maps = snap.pages, snap.procs, snap.maps
    n, pid, vma, h, f, base = snap.n, snap.pid, snap.vma, snap.h, snap.f, snap.base
    unhashed, lone, zero, kinds, comm = snap.unhashed, snap.lone, snap.zero, snap.kinds, snap.comm
    s = snapshot_potential(pages, procs, maps)
    for _ in range(3):
        cuts = np.unique(np.concatenate([[0, n], rng.integers(0, n + 1, rng.integers(0, 6))]))
        counter = SnapshotCounter(procs, maps, expected_rows=1)
        for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True):
            counter.feed(pages.slice(a, b - a))
        assert counter.result() == s
    keep = ~unhashed
    frame = np.where(lone, -1 - np.arange(n), (f + base).astype(np.int64))  # lone: a new frame
    rows = list(
        zip(
            pid[keep].tolist(), vma[keep].tolist(), (h + base)[keep].tolist(), frame[keep].tolist(),
            zero[keep].tolist(), strict=True,
        )
    )  # fmt: skip
    want = _oracle(rows, lambda p, v: kinds[v // 0x100000 - 1])
    got = (s.pages, s.frames, s.distinct_hashes, s.ideal_saved_frames, s.zero_frames,
           s.within_process_saved_pages)  # fmt: skip
    assert got == want["totals"]
    assert s.naive_saved_pages == s.pages - s.distinct_hashes
    assert {
        g.group: (g.pages, g.zero_pages, g.frames, g.distinct_hashes, g.naive_saved_pages,
                  g.ideal_saved_frames, g.fork_shared_pages)
        for g in s.by_kind
    } == want["groups"]  # fmt: skip
    by_comm = _oracle(rows, lambda p, v: comm[p])["groups"]
    assert len(s.by_comm) == len(by_comm)
    assert {
        g.group: (g.pages, g.zero_pages, g.frames, g.distinct_hashes, g.naive_saved_pages,
                  g.ideal_saved_frames, g.fork_shared_pages)
        for g in s.by_comm
    } == by_comm  # fmt: skip
    by_label = _oracle(rows, lambda p, v: f"team=t{p % 4}" if p % 5 else "(no labels)")["groups"]
    assert {
        g.group: (g.pages, g.zero_pages, g.frames, g.distinct_hashes, g.naive_saved_pages,
                  g.ideal_saved_frames, g.fork_shared_pages)
        for g in s.by_label
    } == by_label  # fmt: skip
    assert len(s.by_label) > 1


@pytest.mark.parametrize("seed", range(6))
def test_a_counter_that_reuses_the_tables_of_the_one_before_counts_as_a_new_one(
    seed: int,
) -> None:
    """``info`` counts each snapshot with the tables of the one before, cleared (a fresh
    table is faulted in page by page). A chain of counters over unrelated snapshots (the
    same small hashes and frames in each, so that anything left from the snapshot before
    would count; direct tables, hash tables and a move between them; 3, 40 and 70 comms,
    with and without label sets: masks of other widths and other breakdowns; tables sized
    for one row or for all), each fed in random batches and reusing the one before, gives
    each snapshot's potential as a counter of its own does."""
    import numpy as np

    rng = np.random.default_rng(seed)
    counter: SnapshotCounter | None = None
    for _ in range(8):
        n_pids = int(rng.choice([5, 50, 90]))
        ids = str(rng.choice(["small", "big", "mixed"]))
        snap = _random_snapshot(rng, n_pids, ids, labels=bool(rng.integers(2)))
        want = snapshot_potential(snap.pages, snap.procs, snap.maps)
        expected = int(rng.choice([1, snap.n]))
        spent = counter
        counter = SnapshotCounter(snap.procs, snap.maps, expected_rows=expected, reuse=spent)
        if spent is not None:
            with pytest.raises(AttributeError):
                spent.feed(snap.pages)  # its tables are the new counter's: it cannot count
        cuts = np.unique(np.concatenate([[0, snap.n], rng.integers(0, snap.n + 1, 4)]))
        for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True):
            counter.feed(snap.pages.slice(a, b - a))
        assert counter.result() == want


def test_the_summary_names_the_cpu_the_capture_ran_on(tmp_path: Path) -> None:
    w = World()
    w.spawn(100, comm="w")
    w.map(100, 0x10000, [1, 1])
    w.snapshot(0.0)
    cpu = "Xeon @ 2.80GHz (family 6, model 106)"
    w.write_trace(tmp_path / "a", extra={"capture": {"host_cpu": cpu}})
    w.write_trace(tmp_path / "b")
    assert summarize_trace(tmp_path / "a").to_dict()["host_cpu"] == cpu
    assert summarize_trace(tmp_path / "b").host_cpu is None  # an ingested or older trace
