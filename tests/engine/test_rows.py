"""``planner.engine.rows``: snapshots as deltas, rebuilt."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.engine.prepare import prepare
from planner.engine.rows import SnapshotSequence
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
    want = [rows.keys() for rows in SnapshotSequence(inp.deltas)]
    seq = SnapshotSequence(inp.deltas)
    order = data.draw(st.lists(st.integers(-n, n - 1), max_size=3 * n))
    for k in [*order, *range(n)]:
        if data.draw(st.booleans()):
            _ = seq[k]  # a full rebuild meanwhile (its cache is read too)
        got = seq.keys(k)
        assert got.dtype == np.uint64
        np.testing.assert_array_equal(got, want[k])
