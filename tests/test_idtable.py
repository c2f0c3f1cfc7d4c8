"""Dense ids of 64-bit values (planner._idtable): held to ids made by sorting."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner._idtable import FingerprintIdTable, IdTable
from planner.engine.rows import ContentCatalog

U64_MAX = (1 << 64) - 1


def _expected(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ids in order of first appearance, first-row flags and the value of each id, by a
    sort (np.unique)."""
    uniq, first_row, inverse = np.unique(values, return_index=True, return_inverse=True)
    order = np.argsort(first_row, kind="stable")  # ids by first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    first = np.zeros(len(values), bool)
    first[first_row] = True
    return rank[inverse.ravel()].astype(np.int32), first, uniq[order]


#: values of few low halves: fingerprints (a value's low 32 bits) collide all the time
_SAME_LOW_BITS = st.builds(lambda lo, hi: lo | (hi << 32), st.integers(0, 3), st.integers(0, 9))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(
            st.one_of(st.integers(0, 40), st.integers(0, U64_MAX), _SAME_LOW_BITS),
            min_size=0,
            max_size=300,
        ),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from(["keep", "lean", "fingerprint"]),
)
def test_ids_over_several_calls_equal_a_sort(calls: list[list[int]], kind: str) -> None:
    """Ids given call after call (a table that keeps its values growing from 16 slots,
    with whole values or fingerprints in its slots; one that does not keep them sized
    for them all) are the ids of the concatenated values; first-row flags mark each
    value's first row overall; the value of each id is kept where asked."""
    total = sum(len(c) for c in calls)
    keep = kind != "lean"
    table = {
        "keep": lambda: IdTable(keep_values=True),
        "lean": lambda: IdTable(total, keep_values=False),
        "fingerprint": lambda: FingerprintIdTable(),
    }[kind]()
    got, flags = [], []
    for values in calls:
        v = np.array(values, np.uint64)
        first = np.zeros(len(v), bool)
        got.append(table.ids_of(v, first))
        flags.append(first)
    everything = np.array([x for c in calls for x in c], np.uint64)
    ids, first, values = _expected(everything)
    assert np.concatenate(got).tolist() == ids.tolist()
    assert np.concatenate(flags).tolist() == first.tolist()
    assert table.n == len(values)
    if keep:
        assert table.values().tolist() == values.tolist()
    else:
        with pytest.raises(ValueError, match="does not keep"):
            table.values()


def test_fingerprint_slots_take_two_thirds_of_the_memory() -> None:
    """The catalog's slots hold a 4-byte fingerprint and a 4-byte id, not the 8-byte value:
    8 bytes a slot, and a value whose fingerprint another value shares is still told
    apart by its whole value."""
    whole, fp = IdTable(1_000), FingerprintIdTable(1_000)
    assert whole._slots.nbytes == 12 * whole._slots.size
    assert fp._slots.nbytes == 8 * fp._slots.size == 8 * whole._slots.size
    assert isinstance(ContentCatalog(), FingerprintIdTable)
    # values of one fingerprint whose probes start at the same slot of a 16-slot table
    golden = 0x9E3779B97F4A7C15

    def home(v: int) -> int:
        return ((v * golden) % (1 << 64) >> 32) & 15

    twins = [v for v in (7 | (hi << 32) for hi in range(1, 2_000)) if home(v) == home(7)][:3]
    table = FingerprintIdTable()
    assert table._slots.size == 16
    values = np.array([7, *twins, 7, *twins], np.uint64)
    assert table.ids_of(values).tolist() == [0, 1, 2, 3, 0, 1, 2, 3]


def test_signed_values_are_their_unsigned_bits_and_out_is_filled() -> None:
    table = IdTable(expected=4)
    out = np.full(4, -7, np.int32)
    ids = table.ids_of(np.array([-1, 3, -1, 0], np.int64), out=out)
    assert ids is out
    assert out.tolist() == [0, 1, 0, 2]
    assert table.values().tolist() == [U64_MAX, 3, 0]
    assert table.ids_of(np.array([U64_MAX, 9], np.uint64)).tolist() == [0, 3]


def test_a_table_without_its_values_takes_what_it_was_sized_for() -> None:
    table = IdTable(8, keep_values=False)  # 16 slots: 8 values
    assert table.ids_of(np.array([9, 8, 9], np.uint64)).tolist() == [0, 1, 0]
    assert table.ids_of(np.array([8, 7, 6, 5, 4, 3], np.uint64)).tolist() == [1, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="at most 8 distinct values; 10 could be"):
        table.ids_of(np.array([2, 1, 0], np.uint64))  # 7 ids + 3


def test_a_big_table_is_rebuilt_with_its_ids() -> None:
    rng = np.random.default_rng(5)
    values = rng.integers(0, 1 << 63, 50_000, dtype=np.uint64)
    table = IdTable()
    first_ids = table.ids_of(values[:100])
    slots_before = table.table_bytes
    table.ids_of(values)  # grows the table: the first ids must hold
    assert table.table_bytes > slots_before
    assert table.ids_of(values[:100]).tolist() == first_ids.tolist()


def test_a_call_of_mostly_known_values_does_not_rebuild_the_table() -> None:
    """A table is rebuilt for the values that are new, not for the worst case of every
    value of a call new: 6,000 known values and 100 new ones fit the 16,384 slots that
    5,000 values asked for (before: rebuilt to 32,768 for 5,000 + 6,100 possible ids);
    10,000 new ones then rebuild it, ids kept."""
    rng = np.random.default_rng(7)
    known = rng.integers(0, 1 << 63, 5_000, dtype=np.uint64)
    table = IdTable()
    ids = table.ids_of(known)
    assert table.capacity == 8_192
    slots = table.table_bytes - table.values().nbytes
    new = rng.integers(0, 1 << 63, 100, dtype=np.uint64)
    call = np.concatenate([known, new, known[:1_000]])
    got = table.ids_of(call)
    assert table.capacity == 8_192  # not rebuilt
    assert got[:5_000].tolist() == ids.tolist()
    assert got[5_000:5_100].tolist() == list(range(5_000, 5_100))
    more = rng.integers(0, 1 << 63, 10_000, dtype=np.uint64)
    table.ids_of(np.concatenate([more, known]))
    assert table.capacity >= 16_384
    assert table.table_bytes - table.values().nbytes >= 2 * slots
    assert table.ids_of(known).tolist() == ids.tolist()
    assert table.n == 15_100


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, U64_MAX), max_size=200), min_size=1, max_size=4),
    st.booleans(),
)
def test_a_cleared_table_gives_ids_as_a_new_one(uses: list[list[int]], keep: bool) -> None:
    """A table cleared after each use (``info``'s, from snapshot to snapshot) numbers the
    next values from 0 as a new table would, whatever it held, keeps its memory and its
    capacity, and grows past it (values kept) as a new one does."""
    table = IdTable(8, keep_values=keep)
    for values in uses:
        v = np.array(values, np.uint64)
        table.clear()
        assert table.n == 0
        if not keep and len(values) > table.capacity:  # (it refuses a call that could bring more)
            continue
        slots = table.table_bytes
        first = np.zeros(len(v), bool)
        ids = table.ids_of(v, first)
        want_ids, want_first, want_values = _expected(v)
        assert ids.tolist() == want_ids.tolist()
        assert first.tolist() == want_first.tolist()
        assert table.n == len(want_values)
        if keep:
            assert table.values().tolist() == want_values.tolist()
        else:
            assert table.table_bytes == slots


@pytest.mark.parametrize(
    ("first", "out"),
    [(np.zeros(2, np.int8), None), (np.zeros(3, bool), None), (None, np.zeros(2, np.int64))],
)
def test_wrong_scratch_is_refused(first: np.ndarray | None, out: np.ndarray | None) -> None:
    with pytest.raises(ValueError, match="one per value"):
        IdTable().ids_of(np.array([1, 2], np.uint64), first, out)


def test_the_content_catalog_keeps_ids_over_a_replay() -> None:
    catalog = ContentCatalog()
    a = catalog.ids_of(np.array([10, 20, 10], np.uint64))
    b = catalog.ids_of(np.array([30, 20], np.uint64))
    assert (a.tolist(), b.tolist()) == ([0, 1, 0], [2, 1])
    assert catalog.hashes().tolist() == [10, 20, 30]
