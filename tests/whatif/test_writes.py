"""``planner.whatif.writes``: the copy-on-write estimate of a trace, and its linear steps
held to the set operations they replaced."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from planner.whatif.writes import _on_two_frames, _union_sorted

_SMALL = st.integers(0, 12)


@settings(max_examples=200, deadline=None)
@given(
    pairs=st.lists(st.tuples(_SMALL | st.integers(0, 2**64 - 1), _SMALL), max_size=60),
)
def test_on_two_frames_is_the_distinct_pairs_count(pairs: list[tuple[int, int]]) -> None:
    """A row's content is on two frames iff its hash has at least two distinct (hash,
    frame) pairs: what ``np.unique`` of the stacked pairs counted before."""
    h = np.array([p[0] for p in pairs], np.uint64)
    f = np.array([p[1] for p in pairs], np.uint64)
    want = np.zeros(h.size, bool)
    if h.size:
        distinct = np.unique(np.stack([h, f], axis=1), axis=0)
        hashes, n_frames = np.unique(distinct[:, 0], return_counts=True)
        want = np.isin(h, hashes[n_frames >= 2])
    got = _on_two_frames(h, f)
    assert got.dtype == np.bool_
    np.testing.assert_array_equal(got, want)


@given(
    a=hnp.arrays(np.uint64, st.integers(0, 30), elements=st.integers(0, 40)),
    b=hnp.arrays(np.uint64, st.integers(0, 30), elements=st.integers(0, 40)),
)
def test_union_sorted_is_union1d_of_sorted_arrays(a: np.ndarray, b: np.ndarray) -> None:
    a, b = np.sort(a), np.sort(b)  # repeats allowed
    got = _union_sorted(a, b)
    np.testing.assert_array_equal(got, np.union1d(a, b))
    assert got.dtype == np.uint64
