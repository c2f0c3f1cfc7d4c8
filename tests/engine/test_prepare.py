"""From a trace to the engine's input: processes, rows, physical-page transitions."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

from planner.engine.prepare import prepare
from planner.engine.registration import ProcessInfo, Registration
from planner.errors import InputDataError
from planner.testing.builder import World


def test_a_forked_child_maps_its_parents_pages_even_after_the_parent_exits() -> None:
    w = World()
    w.spawn(100)
    w.map(100, 0x10000, [1, 1, 2, 0])
    w.snapshot(0.0)
    w.fork(100, 101)
    w.write(101, 0x11000, 7)
    w.exit(100)
    w.spawn(100)  # the pid is reused by a new process
    w.map(100, 0x20000, [5])
    w.snapshot(5.0)
    inp = prepare(w.host_trace())
    assert [(m.pid, m.first_snap, m.exit_snap, m.parent_mm) for m in inp.mms] == [
        (100, 0, 1, None),
        (100, 1, None, None),
        (101, 1, None, 0),
    ]
    child = inp.snapshots[1].mm == 2
    t1 = inp.transition(1)
    # the child's unwritten pages keep the old master's physical pages; the written one is fresh
    assert t1.inherit_old[child].tolist() == [0, -1, 2, 3]
    assert t1.fresh_group[child].tolist()[1] >= 0
    assert t1.released_old.tolist() == [0, 1, 2, 3]


def test_unchanged_pages_keep_their_physical_page() -> None:
    w = World()
    w.spawn(100)
    w.map(100, 0x10000, [1, 2, 3])
    w.snapshot(0.0)
    w.write(100, 0x11000, 9)
    w.snapshot(1.0)
    inp = prepare(w.host_trace())
    t1 = inp.transition(1)
    assert t1.carry_src.tolist() == [0, -1, 2]
    # a private page written in place keeps its frame but gets a fresh physical page
    assert t1.fresh_group.tolist() == [-1, 0, -1]
    assert t1.same_content_src.tolist() == [0, -1, 2]
    # the delta holds the one changed row only
    d1 = inp.deltas[1]
    assert (d1.removed.size, d1.added.size, d1.upd.tolist()) == (0, 0, [1])


def test_eligibility_follows_the_policy() -> None:
    w = World()
    w.spawn(100, comm="a")
    w.map(100, 0x10000, [1, 2], kind="heap")
    w.map(100, 0x90000, [3], kind="stack")
    w.spawn(101, comm="b")
    w.map(101, 0x10000, [1])
    w.snapshot(0.0)

    def pol(info: ProcessInfo, parent: Registration | None) -> Registration:
        if info.comm == "a":
            return Registration(mode="madvise", kinds=frozenset({"heap"}))
        return Registration(mode="off")

    s0 = prepare(w.host_trace(), resolver=pol).snapshots[0]
    assert s0.eligible.tolist() == [True, True, False, False]
    assert s0.mm_mergeable.tolist() == [True, False]


def test_processes_cannot_come_back_with_the_same_start_time() -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    w = World()
    w.spawn(100)
    w.map(100, 0x10000, [1])
    for t in (0.0, 1.0, 2.0):
        w.snapshot(t)
    ht = w.host_trace()
    procs = ht.processes
    gone_mid = pc.equal(procs.column("snapshot_id"), 1)
    state = pc.if_else(gone_mid, pa.scalar("gone"), procs.column("state"))
    procs = procs.set_column(procs.schema.get_field_index("state"), "state", state)
    pages = ht.pages.filter(pc.not_equal(ht.pages.column("snapshot_id"), 1))
    ht2 = type(ht)(
        host=ht.host,
        snapshots=ht.snapshots,
        processes=procs,
        mappings=ht.mappings,
        pages=pages,
        trace_hash=ht.trace_hash,
    )
    with pytest.raises(InputDataError, match="comes back"):
        prepare(ht2)


def test_a_synthetic_input_equals_the_prepared_synthetic_trace() -> None:
    from planner.engine import KsmKnobs, ReplayOptions, replay
    from planner.testing.synth import SynthSpec, synthetic_host, synthetic_input

    spec = SynthSpec.with_chains(8_000, processes=8, family_size=4, snapshots=3)
    knobs = KsmKnobs(pages_to_scan=500, max_page_sharing=8)
    opts = ReplayOptions(settle_scans=3)
    a = replay(prepare(synthetic_host(spec)), knobs=knobs, options=opts)
    b = replay(synthetic_input(spec), knobs=knobs, options=opts)
    assert a.final_counters["stable_node_chains"] > 0
    assert [s.counters for s in a.scans] == [s.counters for s in b.scans]
    assert (a.final_truth, a.final_processes) == (b.final_truth, b.final_processes)


def test_a_trace_directory_prepared_snapshot_by_snapshot_equals_the_loaded_trace(
    tmp_path: object,
) -> None:
    from pathlib import Path

    from planner.engine import KsmKnobs, ReplayOptions, replay
    from planner.engine.prepare import prepare_trace
    from planner.testing.random_world import WorldSpec, random_world
    from planner.trace.io import open_trace

    out = Path(str(tmp_path)) / "t"
    random_world(5, WorldSpec(processes=4, pages=20, snapshots=4)).write_trace(out)
    tr = open_trace(out)
    a, b = prepare(tr.load_host()), prepare_trace(tr)
    assert [d.n_rows for d in a.deltas] == [d.n_rows for d in b.deltas]
    knobs, opts = KsmKnobs(pages_to_scan=5, max_page_sharing=3), ReplayOptions(settle_scans=4)
    ra, rb = replay(a, knobs=knobs, options=opts), replay(b, knobs=knobs, options=opts)
    assert [s.counters for s in ra.scans] == [s.counters for s in rb.scans]
    assert ra.final_node_members == rb.final_node_members


def test_opaque_frame_ids_give_the_same_deltas() -> None:
    """Frame ids a capture numbers densely are looked up in tables indexed by the id;
    opaque ids (an ingested trace) in hash tables: both give the same deltas."""
    import dataclasses

    import numpy as np
    import pyarrow as pa

    from planner.engine.rows import L_OLD, L_ROW
    from planner.testing.random_world import WorldSpec, random_world

    kinds = np.zeros(4, np.int64)
    for seed in range(6):
        ht = random_world(seed, WorldSpec(processes=6, pages=40, snapshots=4)).host_trace()
        frame = np.asarray(ht.pages.column("frame_id").to_numpy(), np.uint64)
        with np.errstate(over="ignore"):  # a bijection of uint64 onto large, scattered ids
            opaque = frame * np.uint64(0x9E3779B97F4A7C15) + np.uint64(1 << 63)
        i = ht.pages.schema.get_field_index("frame_id")
        pages = ht.pages.set_column(i, ht.pages.schema.field(i), pa.array(opaque, pa.uint64()))
        dense, scattered = prepare(ht), prepare(dataclasses.replace(ht, pages=pages))
        for a, b in zip(dense.deltas, scattered.deltas, strict=True):
            assert a.n_frames == b.n_frames
            assert a.n_fresh == b.n_fresh
            for name in ("removed", "added", "upd", "upd_old", "upd_link_kind", "upd_link"):
                assert np.array_equal(getattr(a, name), getattr(b, name)), (seed, name)
            kinds += np.bincount(a.upd_link_kind, minlength=4)
    assert kinds[L_ROW]
    assert kinds[L_OLD]


def _pages_part(
    base: int, n: int, *, sampled: bool = False, null_hash_at: int | None = None
) -> Any:
    """``n`` page rows numbered from ``base`` in the pages table's types (count columns
    all null unless ``sampled``)."""
    import numpy as np
    import pyarrow as pa

    from planner.trace.schema import PAGE_CHANGE_COUNTS, PAGES_SCHEMA

    vals = np.arange(base, base + n)
    cols = {}
    for f in PAGES_SCHEMA:
        if f.name in PAGE_CHANGE_COUNTS:
            cols[f.name] = pa.array(vals % 3 if sampled else [None] * n, f.type)
        elif f.name == "flags":
            cols[f.name] = pa.array(vals % 8, f.type)
        elif f.name == "pid":  # processes of 1,000 rows, mappings of 100, pages 4 KiB apart
            cols[f.name] = pa.array(vals // 1_000, f.type)
        elif f.name == "vma_start":
            cols[f.name] = pa.array((vals // 100) * 100 * 4096, f.type)
        elif f.name == "page_addr":
            cols[f.name] = pa.array(vals * 4096, f.type)
        else:
            mask = (
                None
                if null_hash_at is None or f.name != "content_hash"
                else (vals == base + null_hash_at)
            )
            cols[f.name] = pa.array(vals, f.type, mask=mask)
    return pa.table(cols, schema=PAGES_SCHEMA)


@pytest.mark.parametrize("hint", [0, 1_000, 120_000, 500_000, 1 << 40, -5])
def test_snapshot_pages_copy_each_part_out_and_hold_no_arrow_memory(hint: int) -> None:
    """A snapshot's pages are copied out part by part into columns sized by the rows its
    processes announce (grown past a short hint, cut to a long one): once the parts are
    dropped no Arrow memory is held, so a snapshot is never held as an Arrow table and as
    numpy columns side by side at the peak of prepare."""
    import numpy as np
    import pyarrow as pa

    prep = importlib.import_module("planner.engine.prepare")  # (the package's name is the function)
    n = 40_000
    before = pa.total_allocated_bytes()
    snap = prep.SnapshotPages(hint)
    for i in range(3):
        part = _pages_part(i * n, n)
        snap.add(part)
        del part
        assert pa.total_allocated_bytes() - before == 0  # nothing of the part kept
    assert snap.rows == 3 * n
    assert snap.counts() is None  # no row sampled: the counts are not decoded
    cols = prep._page_columns(snap, None)
    assert cols.page_lo.tolist() == list(range(3 * n))
    assert cols.hash.dtype == np.uint64
    # a run per mapping of 100 rows (the parts' bounds fall on mappings' here)
    assert cols.runs.start.tolist() == list(range(0, 3 * n, 100))
    assert cols.runs.pid.tolist() == [i // 1_000 for i in range(0, 3 * n, 100)]
    assert cols.runs.vma.tolist() == [i * 4096 for i in range(0, 3 * n, 100)]
    assert not cols.runs.page_hi.any()
    assert cols.flags.tolist() == (np.arange(3 * n) % 8).tolist()
    assert cols.usable is None


def test_snapshot_pages_keep_the_rows_without_a_hash_and_the_counts_of_sampled_parts() -> None:
    """Rows without a hash are marked unusable where their part put them; the count
    columns come whole, as nulls for a part in which no row was sampled."""
    prep = importlib.import_module("planner.engine.prepare")
    snap = prep.SnapshotPages(10)
    snap.add(_pages_part(0, 5))
    snap.add(_pages_part(5, 7, sampled=True, null_hash_at=2))
    counts = snap.counts()
    assert counts is not None
    assert counts.column("samples").to_pylist() == [None] * 5 + [i % 3 for i in range(5, 12)]
    cols = prep._page_columns(snap, None)
    assert cols.usable is not None
    assert [i for i, u in enumerate(cols.usable.tolist()) if not u] == [7]
    assert cols.page_lo.tolist() == list(range(12))
    assert cols.runs.start.tolist() == [0, 5]  # (a run that goes on into a part is cut)


def test_a_trace_prepared_part_by_part_equals_one_prepared_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``prepare_trace`` (the pages copied out batch by batch, with or without reading
    ahead, batches smaller than a snapshot) builds the input ``prepare`` builds from the
    whole table."""
    import numpy as np

    from planner.testing.synth import SynthSpec, synthetic_host, write_synthetic_trace
    from planner.trace.io import open_trace

    spec = SynthSpec(pages=30_000, processes=6, snapshots=3, interval_s=5.0)
    write_synthetic_trace(spec, tmp_path / "t")
    ref = prepare(synthetic_host(spec))
    prep = importlib.import_module("planner.engine.prepare")
    monkeypatch.setattr(prep, "BATCH_ROWS", 3_000)  # several parts per snapshot
    for ahead in (True, False):
        tr = open_trace(tmp_path / "t")
        got = prep.prepare_trace(tr, ahead=ahead)
        assert len(got.deltas) == len(ref.deltas)
        for a, b in zip(ref.deltas, got.deltas, strict=True):
            for name, value in vars(a).items():
                if isinstance(value, np.ndarray):
                    assert np.array_equal(value, getattr(b, name)), (ahead, name)
        assert np.array_equal(ref.content_hash, got.content_hash)


def _retitled(ht: Any, titles: dict[int, tuple[str, int]], *, aslr_off: bool = False) -> Any:
    """``ht`` with process rows renamed: per snapshot index, the ``(comm, cmdline_hash)`` of
    every process (as ``setproctitle`` or an exec would leave them)."""
    import dataclasses

    import pyarrow as pa

    procs = ht.processes
    sids = ht.snapshot_ids.tolist()
    at = [sids.index(s) for s in procs.column("snapshot_id").to_pylist()]
    comm = [titles[k][0] for k in at]
    chash = [titles[k][1] for k in at]
    procs = procs.set_column(
        procs.schema.get_field_index("comm"), "comm", pa.array(comm, pa.string())
    )
    procs = procs.set_column(
        procs.schema.get_field_index("cmdline_hash"), "cmdline_hash", pa.array(chash, pa.uint64())
    )
    if aslr_off:
        i = procs.schema.get_field_index("aslr_disabled")
        procs = procs.set_column(i, "aslr_disabled", pa.array([True] * len(at), pa.bool_()))
    return dataclasses.replace(ht, processes=procs)


def _titled_world(moved: bool) -> Any:
    """One process, three snapshots; ``moved``: its mappings lie elsewhere from the second
    on, as after an exec."""
    w = World()
    w.spawn(100, comm="postgres")
    w.map(100, 0x10000, [1, 2, 3])
    w.map(100, 0x100000, [4, 5])
    w.snapshot(0.0)
    if moved:
        w.unmap(100, 0x10000, 3)
        w.unmap(100, 0x100000, 2)
        w.map(100, 0x7000000, [1, 2, 3])
        w.map(100, 0x7100000, [4, 5])
    w.snapshot(1.0)
    w.write(100, 0x7000000 if moved else 0x10000, 9)
    w.snapshot(2.0)
    return w.host_trace()


def test_a_process_that_renames_itself_is_one_process() -> None:
    """PostgreSQL's backends (and setproctitle's users) rewrite their command line, some
    their comm too, while every mapping stays where it was: one mm for all three snapshots,
    not one per title (which left each without CPU time between snapshots, and so
    without a role)."""
    ht = _retitled(_titled_world(False), {0: ("postgres", 1), 1: ("postgres", 2), 2: ("pg", 3)})
    inp = prepare(ht)
    assert [(m.pid, m.first_snap, m.exit_snap) for m in inp.mms] == [(100, 0, None)]


def test_an_exec_is_a_new_program_and_a_rename_without_randomisation_too() -> None:
    """A new title with the mappings elsewhere is an exec (a new mm); with address-space
    randomisation off for the process the mappings cannot tell, and a new title is one
    too, as before."""
    titles = {0: ("sh", 1), 1: ("postgres", 2), 2: ("postgres", 2)}
    inp = prepare(_retitled(_titled_world(True), titles))
    assert [(m.pid, m.first_snap, m.exit_snap) for m in inp.mms] == [(100, 0, 1), (100, 1, None)]
    inp = prepare(_retitled(_titled_world(False), titles, aslr_off=True))
    assert [(m.pid, m.first_snap, m.exit_snap) for m in inp.mms] == [(100, 0, 1), (100, 1, None)]


def test_rows_read_from_runs_are_the_rows_read_one_by_one() -> None:
    """A row's page and eligibility come from its run (pid, mapping start, high page bits;
    :class:`planner.engine.prepare.SnapshotPages`): a mapping across page 2^32 (two runs),
    a process that came later with a lower pid (its rows come first in the table, last by
    mm: they are re-sorted), a mapping whose rows all lack a hash (a run dropped) and parts
    cut inside a mapping give the rows that reading the pages table row by row gives."""
    import dataclasses

    import pyarrow as pa
    import pyarrow.compute as pc

    prep = importlib.import_module("planner.engine.prepare")
    w = World()
    w.spawn(300, comm="a")
    heap = ((1 << 32) - 2) * 4096
    w.map(300, heap, [1, 2, 3, 4], kind="heap")  # pages 2^32-2 .. 2^32+1
    w.map(300, 0x7F0000, [5, 6], kind="stack")
    w.snapshot(0.0)
    w.spawn(200, comm="b")
    w.map(200, 0x10000, [1, 7])
    w.map(200, 0x50000, [8, 9])
    w.snapshot(1.0)
    ht = w.host_trace()
    pages = ht.pages
    lost = pc.equal(pages.column("vma_start"), 0x50000)  # this mapping's hashes are lost
    i = pages.schema.get_field_index("content_hash")
    pages = pages.set_column(
        i, pages.schema.field(i), pc.if_else(lost, pa.scalar(None, pa.uint64()), pages.column(i))
    )
    ht = dataclasses.replace(ht, pages=pages)

    def pol(info: ProcessInfo, parent: Registration | None) -> Registration:
        if info.comm == "a":
            return Registration(mode="madvise", kinds=frozenset({"heap"}))
        return Registration(mode="prctl")

    whole = prepare(ht, resolver=pol)
    snaps = []
    for sid in (0, 1):
        snap = prep.SnapshotPages(0, 12)
        mine = pages.filter(pc.equal(pages.column("snapshot_id"), sid))
        for lo in range(0, mine.num_rows, 3):  # parts of 3 rows, cut inside mappings
            snap.add(mine.slice(lo, 3))
        snaps.append((sid, snap))
    parted = prep._prepare(ht, iter(snaps), pol, None, prep.PRCTL_AT_DEFAULT)
    mm_of = {m.pid: m.mm for m in whole.mms}
    assert mm_of[300] < mm_of[200]
    for sid in (0, 1):
        rows = [
            r
            for r in pages.to_pylist()
            if r["snapshot_id"] == sid and r["content_hash"] is not None
        ]
        want = sorted(
            (
                mm_of[r["pid"]],
                r["page_addr"] >> 12,
                r["content_hash"],
                r["pid"] == 200 or r["vma_start"] == heap,
            )
            for r in rows
        )
        assert [r["pid"] for r in rows][:1] == ([300] if sid == 0 else [200])
        for inp in (whole, parted):
            s = inp.snapshots[sid]
            cols = (s.mm, s.page, s.hash, s.eligible)
            assert list(zip(*(c.tolist() for c in cols), strict=True)) == want
            assert s.page.max() == (1 << 32) + 1


def test_frame_ids_are_kept_in_32_bits_until_one_needs_64() -> None:
    """A snapshot's frame ids are copied into 32 bits while they fit (a capture's are
    numbered from 1), and the column is widened, its ids kept, at the first part with an
    id of 64 bits (an ingested trace's opaque ids); a trace whose later snapshots have
    such ids, read in parts, gives the deltas of the whole table read at once."""
    import dataclasses

    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from planner.testing.random_world import WorldSpec, random_world

    prep = importlib.import_module("planner.engine.prepare")
    snap = prep.SnapshotPages(0)
    snap.add(_pages_part(0, 5))
    assert snap._cols[1].dtype == np.uint32
    big = _pages_part(5, 4)
    i = big.schema.get_field_index("frame_id")
    wide = pa.array([(1 << 40) + k for k in range(4)], pa.uint64())
    snap.add(big.set_column(i, big.schema.field(i), wide))
    cols = prep._page_columns(snap, None)
    assert cols.frame.dtype == np.uint64
    assert cols.frame.tolist() == [0, 1, 2, 3, 4, *((1 << 40) + k for k in range(4))]

    for seed in range(4):
        ht = random_world(seed, WorldSpec(processes=5, pages=30, snapshots=4)).host_trace()
        pages = ht.pages
        frame = np.asarray(pages.column("frame_id").to_numpy(), np.uint64)
        later = np.asarray(pc.greater_equal(pages.column("snapshot_id"), 2).to_numpy(False))
        with np.errstate(over="ignore"):
            frame = np.where(
                later, frame * np.uint64(0x9E3779B97F4A7C15) | np.uint64(1 << 63), frame
            )
        i = pages.schema.get_field_index("frame_id")
        pages = pages.set_column(i, pages.schema.field(i), pa.array(frame, pa.uint64()))
        ht = dataclasses.replace(ht, pages=pages)
        whole = prepare(ht)
        parts = []
        for sid in ht.snapshot_ids.tolist():
            mine = pages.filter(pc.equal(pages.column("snapshot_id"), sid))
            s = prep.SnapshotPages(0)
            for lo in range(0, mine.num_rows, 7):
                s.add(mine.slice(lo, 7))
            parts.append((sid, s))
        parted = prep._prepare(ht, iter(parts), None, None, prep.PRCTL_AT_DEFAULT)
        assert [d.upd_frame.dtype for d in parted.deltas][:2] == [np.uint32, np.uint32]
        for a, b in zip(whole.deltas, parted.deltas, strict=True):
            for name, value in vars(a).items():
                if isinstance(value, np.ndarray):
                    assert np.array_equal(value, getattr(b, name)), (seed, name)
        for x, y in zip(whole.snapshots, parted.snapshots, strict=True):
            assert np.array_equal(x.frame, y.frame)
            assert y.frame.dtype == np.uint64
