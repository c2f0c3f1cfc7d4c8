"""The one HZ accessor of a trace: ``Trace.hz(host)`` and ``HostTrace.hz``."""

from __future__ import annotations

from pathlib import Path

import pytest

from planner.replay import replay_trace
from planner.testing.builder import World
from planner.trace.io import open_trace


@pytest.mark.parametrize("hz", [100, 1000, None])
def test_the_recorded_hz_is_read_one_way(tmp_path: Path, hz: int | None) -> None:
    w = World("h", hz=hz)
    w.spawn(1)
    w.map(1, 0x10000, [1, 1, 2])
    w.snapshot(0.0)
    w.write_trace(tmp_path / "t")
    tr = open_trace(tmp_path / "t")
    assert tr.hz("h") == hz
    assert tr.load_host("h").hz == hz
    # a replay runs at the trace's HZ (250 when it records none) unless told otherwise
    res = replay_trace(tmp_path / "t", options=None)
    assert res.knobs["hz"] == (hz or 250)
    assert replay_trace(tmp_path / "t", knobs={"hz": 300}).knobs["hz"] == 300
