"""Coalesced kpageflags/kpagecount reads and session frame ids."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import pytest

from planner.capture.frames import FrameIds
from planner.capture.kpage import KPageReader, coalesce
from planner.errors import CapturePermissionError, KernelUnsupportedError

if TYPE_CHECKING:
    from conftest import FakeProc


def _u64(values: list[int]) -> np.ndarray:
    return np.array(values, dtype=np.uint64)


def test_coalesce_merges_small_gaps_only() -> None:
    pfns = _u64([10, 11, 20, 200, 201, 1000])
    # 8 entries lie between pfn 11 and pfn 20
    assert coalesce(pfns, gap_entries=7, max_read_entries=1 << 10) == [
        (10, 2),
        (20, 1),
        (200, 2),
        (1000, 1),
    ]
    assert coalesce(pfns, gap_entries=8, max_read_entries=1 << 10) == [
        (10, 11),
        (200, 2),
        (1000, 1),
    ]
    assert coalesce(pfns, gap_entries=1000, max_read_entries=1 << 10) == [(10, 991)]
    assert coalesce(_u64([]), gap_entries=8, max_read_entries=8) == []


def test_coalesce_splits_long_reads_and_skips_gaps() -> None:
    pfns = _u64([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 30])
    reads = coalesce(pfns, gap_entries=100, max_read_entries=4)
    assert reads == [(0, 4), (4, 4), (8, 4), (30, 1)]
    covered = {p for first, n in reads for p in range(first, first + n)}
    assert set(pfns.tolist()) <= covered


def test_kpage_lookup_reads_flags_and_counts(fake_proc: FakeProc) -> None:
    rng = np.random.default_rng(3)
    pfns = np.unique(rng.integers(1, 50_000, 400)).astype(np.uint64)
    for p in pfns.tolist():
        fake_proc.kpage(p, flags=p * 3, count=p % 5)
    fake_proc.write_kpage()
    with KPageReader(fake_proc.procfs(), gap_entries=16, max_read_entries=256) as kp:
        flags, counts = kp.lookup(pfns)
        assert flags.tolist() == (pfns * np.uint64(3)).tolist()
        assert counts.tolist() == (pfns % np.uint64(5)).tolist()
        # beyond the end of the files: zeros, no error
        f2, c2 = kp.lookup(_u64([10**7]))
        assert f2.tolist() == [0]
        assert c2.tolist() == [0]
        assert kp.stats.frames == len(pfns) + 1
        assert 0 < kp.stats.reads < 2 * len(pfns)  # coalesced


def test_kpage_missing_files(fake_proc: FakeProc) -> None:
    os.unlink(fake_proc.root / "kpageflags")
    with pytest.raises(KernelUnsupportedError, match="kpageflags"), KPageReader(fake_proc.procfs()):
        pass


def test_kpage_unreadable_files(fake_proc: FakeProc, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def deny(path: object, *args: object, **kw: object) -> int:
        if str(path).endswith("kpagecount"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(CapturePermissionError, match="root"), KPageReader(fake_proc.procfs()):
        pass


def test_frame_ids_first_seen_order_and_stable() -> None:
    f = FrameIds()
    first = f.assign(_u64([0x9000_0000, 0x1234, 0x9000_0000, 0x777777]))
    assert first.tolist() == [0, 1, 0, 2]
    second = f.assign(_u64([0x777777, 0x55, 0x1234, 0x55]))
    assert second.tolist() == [2, 3, 1, 3]
    assert len(f) == 4
    assert f.assign(_u64([])).tolist() == []


def test_frame_ids_random_roundtrip() -> None:
    rng = np.random.default_rng(7)
    f = FrameIds()
    seen: dict[int, int] = {}
    for _ in range(5):
        pfns = rng.integers(0, 5_000, 2_000).astype(np.uint64)
        ids = f.assign(pfns).tolist()
        for p, i in zip(pfns.tolist(), ids, strict=True):
            assert seen.setdefault(p, len(seen)) == i
    assert max(seen.values()) == len(seen) - 1
