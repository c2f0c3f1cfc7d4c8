"""The scan stopper's child process, against a fake sysfs directory (no ksmd needed)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from planner.kernel.scanstop import ScanStopError, ScanStopper


def _fake_ksm(tmp_path: Path, full_scans: int = 0) -> Path:
    root = tmp_path / "ksm"
    root.mkdir()
    (root / "run").write_text("0")
    _set(root, full_scans)
    return root


def _set(root: Path, full_scans: int) -> None:
    tmp = root / ".full_scans"
    tmp.write_text(f"{full_scans}\n")
    os.replace(tmp, root / "full_scans")  # never seen half-written


class _FakeKsmd(threading.Thread):
    """Counts full scans every ``period_s`` while ``run`` is 1; records ``run`` at each."""

    def __init__(self, root: Path, period_s: float) -> None:
        super().__init__(daemon=True)
        self.root, self.period_s = root, period_s
        self.done = threading.Event()
        self.scans = int((root / "full_scans").read_text())

    def run(self) -> None:
        while not self.done.wait(self.period_s):
            if (self.root / "run").read_text().strip() == "1":
                self.scans += 1
                _set(self.root, self.scans)


def test_it_starts_ksmd_and_stops_it_at_the_target(tmp_path: Path) -> None:
    root = _fake_ksm(tmp_path, full_scans=4)
    ksmd = _FakeKsmd(root, 0.05)
    ksmd.start()
    try:
        with ScanStopper(root) as stopper:
            assert stopper.policy in ("fifo", "other")
            stop = stopper.run_to(6, timeout_s=10)
            assert (root / "run").read_text() == "0"
            assert (stop.full_scans_seen, stop.full_scans_after) == (6, 6)
            assert not stop.timed_out
            assert 0 < stop.gap_s < 5
            stop = stopper.run_to(7, timeout_s=10)  # the same child serves the next scan
            assert stop.full_scans_after == 7
    finally:
        ksmd.done.set()
        ksmd.join()


def test_a_target_not_reached_stops_ksmd_at_the_timeout(tmp_path: Path) -> None:
    root = _fake_ksm(tmp_path, full_scans=2)
    with ScanStopper(root) as stopper:
        t0 = time.monotonic()
        stop = stopper.run_to(3, timeout_s=0.3)
        assert time.monotonic() - t0 >= 0.3
    assert stop.timed_out
    assert stop.full_scans_after == 2
    assert (root / "run").read_text() == "0"


def test_a_missing_knob_is_an_error_and_the_child_keeps_serving(tmp_path: Path) -> None:
    root = _fake_ksm(tmp_path)
    (root / "full_scans").unlink()
    with ScanStopper(root) as stopper:
        with pytest.raises(ScanStopError, match="full_scans"):
            stopper.run_to(1, timeout_s=1)
        _set(root, 5)
        assert stopper.run_to(5, timeout_s=1).full_scans_after == 5


def test_the_child_ends_with_the_stopper(tmp_path: Path) -> None:
    stopper = ScanStopper(_fake_ksm(tmp_path))
    with stopper:
        popen = stopper._popen
        assert popen is not None
        assert popen.poll() is None
    assert popen.poll() is not None
    with pytest.raises(ScanStopError, match="not running"):
        stopper.run_to(1, timeout_s=1)
