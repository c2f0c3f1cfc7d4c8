"""``planner.engine.rows``: snapshots as deltas, rebuilt."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.engine.prepare import prepare
from planner.engine.rows import (
    F_ELIGIBLE,
    ContentCatalog,
    MmLayout,
    RowColumns,
    SnapshotSequence,
    appended_delta,
    build_delta,
    moved_up,
    row_keys,
    with_flag_changes,
)
from planner.testing.random_world import WorldSpec, random_world
from planner.testing.strategies import world_specs


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**20), spec=world_specs(), data=st.data())
def test_keys_alone_are_the_full_snapshots_keys_in_any_order(
    seed: int, spec: WorldSpec, data: st.DataObject
) -> None:
    """``SnapshotSequence.keys(k)`` rebuilds only the pages (what the write model asks
    for); in whatever order the snapshots are asked, with or without a full snapshot
    rebuilt in between, they are the keys of the full rebuild."""
    inp = prepare(random_world(seed, spec).host_trace())
    n = len(inp.deltas)
    want = [rows.keys() for rows in SnapshotSequence(inp.deltas, inp.content_hash)]
    seq = SnapshotSequence(inp.deltas, inp.content_hash)
    order = data.draw(st.lists(st.integers(-n, n - 1), max_size=3 * n))
    for k in [*order, *range(n)]:
        if data.draw(st.booleans()):
            _ = seq[k]  # a full rebuild meanwhile (its cache is read too)
        got = seq.keys(k)
        assert got.dtype == np.uint64
        np.testing.assert_array_equal(got, want[k])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**20), spec=world_specs(), data=st.data())
def test_appended_delta_is_build_deltas_delta_of_the_grown_snapshot(
    seed: int, spec: WorldSpec, data: st.DataObject
) -> None:
    """The growth model's steps (rows appended after every row of their mm, each on a new
    frame): ``appended_delta`` gives, field by field, what ``build_delta`` makes of the
    snapshot before and the one after built in full, and the content ids it gives are
    the same; the positions it returns hold the appended rows. With rows of the snapshot
    before taken out of ksmd's reach or given back (``with_flag_changes``: their
    eligibility toggled, as the growth held to a canary does), the same."""
    inp = prepare(random_world(seed, spec).host_trace())
    last = SnapshotSequence(inp.deltas, inp.content_hash)[-1]
    lay = last.layout
    filled = [int(m) for m, lo, hi in zip(lay.present, lay.lo, lay.hi, strict=True) if hi > lo]
    if not filled:
        return
    mms = data.draw(st.lists(st.sampled_from(filled), min_size=1, max_size=8))
    known = last.hash.tolist()
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("key", "page", "hash", "flags", "mm")}
    next_page = {m: int(last.page[lay.rows_of(m)[1] - 1]) + 1 for m in mms}
    for m in mms:  # in any order of mms, an mm possibly twice (pages still rising)
        c = data.draw(st.integers(1, 5))
        page = next_page[m] + np.arange(c, dtype=np.uint64)
        next_page[m] += c
        hashes = data.draw(
            st.lists(st.sampled_from(known) | st.integers(1, 2**64 - 1), min_size=c, max_size=c)
        )
        parts["key"].append(row_keys(np.full(c, m, np.int32), page))
        parts["page"].append(page)
        parts["hash"].append(np.array(hashes, np.uint64))
        parts["flags"].append(last.flags[lay.rows_of(m)[0] + np.zeros(c, np.int64)])
        parts["mm"].append(np.full(c, m, np.int32))
    cols = {k: np.concatenate(v) for k, v in parts.items() if k not in ("page", "mm")}
    first_frame = int(last.frame.max()) + 1
    new = RowColumns(frame=np.empty(0, np.uint64), **cols)

    got_catalog, want_catalog = ContentCatalog(), ContentCatalog()
    got_catalog.ids_of(inp.content_hash)
    want_catalog.ids_of(inp.content_hash)
    got, pos = appended_delta(
        lay, last.n_frames, new, first_frame, index=7, time_ns=11, ids_of=got_catalog.ids_of
    )

    flip = np.array(sorted(data.draw(st.sets(st.integers(0, last.n - 1), max_size=6))), np.int64)
    flipped = last.flags.copy()
    flipped[flip] ^= np.uint8(F_ELIGIBLE)
    if flip.size:
        got = with_flag_changes(
            got,
            moved_up(flip, np.sort(pos)),
            flip,
            last.frame[flip],
            flipped[flip],
            got_catalog.ids_of(last.hash[flip]),  # (known contents: no new id)
        )

    cur = RowColumns(key=last.keys(), hash=last.hash, frame=last.frame, flags=last.flags)
    frames = np.uint64(first_frame) + np.arange(new.key.size, dtype=np.uint64)
    key = np.concatenate([cur.key, new.key])
    order = np.argsort(key, kind="stable")
    nxt = RowColumns(
        key=key[order],
        hash=np.concatenate([cur.hash, new.hash])[order],
        frame=np.concatenate([cur.frame, frames])[order],
        flags=np.concatenate([flipped, new.flags])[order],
    )
    counts = np.bincount(np.searchsorted(lay.present, nxt.mm), minlength=lay.present.size)
    hi = np.cumsum(counts).astype(np.int64)
    layout = MmLayout(present=lay.present, lo=hi - counts, hi=hi, mergeable=lay.mergeable)
    parent_of = np.array(
        [mi.parent_mm if mi.parent_mm is not None else -1 for mi in inp.mms] + [-1], np.int64
    )
    want, _ = build_delta(
        cur, nxt, index=7, time_ns=11, layout=layout, parent_of=parent_of, catalog=want_catalog
    )
    for name, value in vars(want).items():
        mine = getattr(got, name)
        if isinstance(value, MmLayout):
            for f in ("present", "lo", "hi", "mergeable"):
                np.testing.assert_array_equal(getattr(mine, f), getattr(value, f), err_msg=f)
        elif isinstance(value, np.ndarray):
            assert mine.dtype == value.dtype, name
            np.testing.assert_array_equal(mine, value, err_msg=name)
        else:
            assert mine == value, name
    np.testing.assert_array_equal(got_catalog.hashes(), want_catalog.hashes())
    np.testing.assert_array_equal(nxt.key[pos], new.key)
    np.testing.assert_array_equal(nxt.frame[pos], frames)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**20), spec=world_specs())
def test_build_delta_hands_the_next_delta_content_ids_and_drops_the_hashes(
    seed: int, spec: WorldSpec
) -> None:
    """Each snapshot's rows are kept for the next delta with their content ids, not their
    hashes (the catalog's hash of each id is the row's hash), and the hashes handed in are
    dropped; the deltas are those ``prepare`` made, which the reference holds."""
    import pytest

    from planner.engine.rows import RowIds, _links

    inp = prepare(random_world(seed, spec).host_trace())
    full = list(SnapshotSequence(inp.deltas, inp.content_hash))
    catalog = ContentCatalog()
    parent_of = np.array(
        [mi.parent_mm if mi.parent_mm is not None else -1 for mi in inp.mms] + [-1], np.int64
    )
    prev: RowIds | None = None
    for k, snap in enumerate(full):
        rows = RowColumns(
            key=snap.keys(), hash=snap.hash.copy(), frame=snap.frame, flags=snap.flags
        )
        delta, ids = build_delta(
            prev, rows, index=k, time_ns=snap.time_ns, layout=snap.layout,
            parent_of=parent_of, catalog=catalog,
        )  # fmt: skip
        assert rows.hash.size == 0
        np.testing.assert_array_equal(catalog.hashes()[ids.gid], snap.hash)
        for name, value in vars(inp.deltas[k]).items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(getattr(delta, name), value, err_msg=name)
        if prev is not None:
            with pytest.raises(TypeError):
                _links(prev, RowColumns(ids.key, snap.hash, ids.frame, ids.flags), *_no_moves())
        prev = ids


def _no_moves() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.zeros(0, np.int64), np.zeros(0, bool), np.full(1, -1, np.int64)
