"""Where a changed row's physical page comes from (``planner.engine.rows._links``): the
compiled tables against the numpy formulation it replaced, kept here as the oracle, on
random snapshots with forks, shared frames, parents, opaque frame ids and content-key
collisions."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.engine.rows import (
    L_FRESH,
    L_OLD,
    L_ROW,
    MM_SHIFT,
    RowColumns,
    _groups_by_first_row,
    _links,
)

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _content_key(frame: U64, hash_: U64) -> U64:
    with np.errstate(over="ignore"):
        return frame ^ (hash_ * GOLDEN)


def _first_row_by_pair(rows: I64, frame: U64, hash_: U64) -> tuple[U64, I64]:
    k = _content_key(frame[rows], hash_[rows])
    order = np.lexsort((rows, k))
    ks, rs = k[order], rows[order]
    first = np.ones(ks.size, dtype=bool)
    first[1:] = ks[1:] != ks[:-1]
    return ks[first], rs[first]


def _lookup_pair(
    keys_sorted: U64, src_rows: I64, src: RowColumns, frame: U64, hash_: U64, kq: U64
) -> I64:
    out = np.full(kq.size, -1, np.int64)
    if keys_sorted.size == 0 or kq.size == 0:
        return out
    pc = np.minimum(np.searchsorted(keys_sorted, kq), keys_sorted.size - 1)
    cand = src_rows[pc]
    ok = (keys_sorted[pc] == kq) & (src.frame[cand] == frame) & (src.hash[cand] == hash_)
    out[ok] = cand[ok]
    return out


def oracle_links(
    prev: RowColumns, cur: RowColumns, moved: I64, carried: npt.NDArray[np.bool_], parent_of: I64
) -> tuple[npt.NDArray[np.int8], I64]:
    """The numpy formulation of ``_links`` before it was compiled (same semantics, sorts and
    searches instead of hash tables)."""
    m = moved.size
    kind = np.full(m, L_FRESH, np.int8)
    link = np.full(m, -1, np.int64)
    if m == 0:
        return kind, link
    rf, rh = cur.frame[moved], cur.hash[moved]
    kq = _content_key(rf, rh)
    frames = np.unique(rf)
    inh = np.full(m, -1, np.int64)
    inh_old = np.full(m, -1, np.int64)
    cand_new = np.flatnonzero(np.isin(cur.frame, frames))
    cand_new = cand_new[carried[cand_new]]
    if cand_new.size:
        ks, rs = _first_row_by_pair(cand_new, cur.frame, cur.hash)
        inh = _lookup_pair(ks, rs, cur, rf, rh, kq)
    cand_old = np.flatnonzero(np.isin(prev.frame, frames))
    if cand_old.size:
        ks, rs = _first_row_by_pair(cand_old, prev.frame, prev.hash)
        got = _lookup_pair(ks, rs, prev, rf, rh, kq)
        inh_old = np.where(inh < 0, got, -1)
    par = parent_of[cur.mm[moved]]
    cand = np.flatnonzero((par >= 0) & ((inh >= 0) | (inh_old >= 0)))
    if cand.size:
        rows = moved[cand]
        pkey = (par[cand].astype(np.uint64) << MM_SHIFT) | cur.page[rows]
        q = np.minimum(np.searchsorted(cur.key, pkey), cur.key.size - 1)
        ok = (
            (cur.key[q] == pkey)
            & carried[q]
            & (cur.frame[q] == cur.frame[rows])
            & (cur.hash[q] == cur.hash[rows])
        )
        inh[cand[ok]] = q[ok]
        inh_old[cand[ok]] = -1
        if prev.key.size:
            q2 = np.minimum(np.searchsorted(prev.key, pkey), prev.key.size - 1)
            ok2 = (
                ~ok
                & (prev.key[q2] == pkey)
                & (prev.frame[q2] == cur.frame[rows])
                & (prev.hash[q2] == cur.hash[rows])
            )
            inh_old[cand[ok2]] = q2[ok2]
            inh[cand[ok2]] = -1
    kind[inh >= 0] = L_ROW
    link[inh >= 0] = inh[inh >= 0]
    kind[inh_old >= 0] = L_OLD
    link[inh_old >= 0] = inh_old[inh_old >= 0]
    need = np.flatnonzero(kind == L_FRESH)
    if need.size:
        g, _ = _groups_by_first_row(rf[need], rh[need])
        link[need] = g
    return kind, link


def _rows(
    rng: np.random.Generator, mms: int, pages: int, frames: int, hashes: int, opaque: bool
) -> RowColumns:
    keys = np.unique(
        (rng.integers(0, mms, mms * pages).astype(np.uint64) << MM_SHIFT)
        | rng.integers(0, pages, mms * pages).astype(np.uint64)
    )
    n = keys.size
    frame = rng.integers(1, frames + 1, n).astype(np.uint64)
    if opaque:  # an ingested trace's frame ids: far above the row count
        frame = frame * np.uint64(0x1000_0000_0001)
    return RowColumns(
        key=keys,
        hash=rng.integers(0, hashes, n).astype(np.uint64),
        frame=frame,
        flags=np.zeros(n, np.uint8),
    )


def _collide(rows: RowColumns, rng: np.random.Generator) -> None:
    """Give a few rows a (frame, hash) pair whose content key is another row's."""
    n = rows.key.size
    for a, b in rng.integers(0, n, (max(1, n // 10), 2)):
        h = np.uint64(rng.integers(0, 1 << 62))
        with np.errstate(over="ignore"):
            rows.frame[b] = _content_key(rows.frame[a : a + 1], rows.hash[a : a + 1])[0] ^ (
                h * GOLDEN
            )
        rows.hash[b] = h


@settings(max_examples=150)
@given(
    seed=st.integers(0, 2**32 - 1),
    mms=st.integers(1, 6),
    pages=st.integers(1, 12),
    frames=st.integers(1, 20),
    hashes=st.integers(1, 4),
    opaque=st.booleans(),
    collide=st.booleans(),
)
def test_compiled_links_match_the_numpy_formulation(
    seed: int, mms: int, pages: int, frames: int, hashes: int, opaque: bool, collide: bool
) -> None:
    rng = np.random.default_rng(seed)
    prev = _rows(rng, mms, pages, frames, hashes, opaque)
    cur = _rows(rng, mms, pages, frames, hashes, opaque)
    if collide:
        _collide(prev, rng)
        _collide(cur, rng)
    n = cur.key.size
    carried = rng.random(n) < 0.5
    moved = np.flatnonzero(~carried & (rng.random(n) < 0.9)).astype(np.int64)
    parent_of = np.full(mms + 1, -1, np.int64)
    for child in range(1, mms):
        if rng.random() < 0.6:
            parent_of[child] = rng.integers(0, child)
    got = _links(prev, cur, moved, carried, parent_of)
    want = oracle_links(prev, cur, moved, carried, parent_of)
    assert got[0].tolist() == want[0].tolist()
    assert got[1].tolist() == want[1].tolist()


@pytest.mark.parametrize("opaque", [False, True])
def test_links_of_a_fork_prefer_the_parents_row(opaque: bool) -> None:
    """A child (mm 1) whose pages are its parent's (mm 0) frames and contents maps the
    parent's row at the same page, even where another carried row has the same pair first;
    without a match the row is fresh, numbered by (frame, content)."""
    scale = np.uint64(0x1000_0000_0001 if opaque else 1)
    keys = np.array([0, 1, 2, (1 << 36) | 0, (1 << 36) | 1, (1 << 36) | 2], np.uint64)
    frame = np.array([5, 5, 6, 5, 5, 9], np.uint64) * scale
    cur = RowColumns(
        key=keys,
        hash=np.array([1, 1, 2, 1, 1, 3], np.uint64),
        frame=frame,
        flags=np.zeros(6, np.uint8),
    )
    prev = RowColumns(key=keys[:3], hash=cur.hash[:3], frame=frame[:3], flags=np.zeros(3, np.uint8))
    carried = np.array([True, True, True, False, False, False])
    moved = np.array([3, 4, 5], np.int64)
    parent_of = np.array([-1, 0, -1], np.int64)
    kind, link = _links(prev, cur, moved, carried, parent_of)
    assert kind.tolist() == [L_ROW, L_ROW, L_FRESH]
    assert link.tolist() == [0, 1, 0]
