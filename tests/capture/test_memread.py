"""Reading runs of pages with one compiled pread loop, and what happens when a run fails."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import xxhash

from planner.capture.memread import pread_runs, read_and_hash, segments
from planner.capture.procfs import MAX_FILE_OFFSET, ProcFS
from planner.capture.xxh3 import PageSecret

PAGE = 4096


def _file(tmp_path: Path, npages: int) -> tuple[Path, bytes]:
    data = b"".join(i.to_bytes(8, "little") * (PAGE // 8) for i in range(npages))
    path = tmp_path / "mem"
    path.write_bytes(data)
    return path, data


def test_pread_runs_reads_each_run_in_order_and_stops_at_a_short_one(tmp_path: Path) -> None:
    path, data = _file(tmp_path, 8)
    fd = os.open(path, os.O_RDONLY)
    try:
        buf = np.zeros(4 * PAGE, np.uint8)
        local = np.array([0, PAGE, 3 * PAGE], np.int64)
        remote = np.array([5 * PAGE, 1 * PAGE, 7 * PAGE], np.int64)
        sizes = np.array([PAGE, 2 * PAGE, PAGE], np.int64)
        assert pread_runs(fd, buf, local, remote, sizes) == 3
        assert buf.tobytes() == data[5 * PAGE : 6 * PAGE] + data[PAGE : 3 * PAGE] + data[7 * PAGE :]
        # a run past the end of the file is short: the loop stops there
        remote[1] = 7 * PAGE
        assert pread_runs(fd, buf, local, remote, sizes) == 1
        # an offset beyond off_t is never asked for
        remote[1] = MAX_FILE_OFFSET - PAGE + 1
        assert pread_runs(fd, buf, local, remote, sizes) == 1
        with pytest.raises(ValueError, match="fit"):
            pread_runs(fd, buf[:PAGE], local, remote, sizes)
    finally:
        os.close(fd)


class _FailingProcFS(ProcFS):
    """Runs touching ``bad`` come back short; single pages of ``bad`` fail too."""

    def __init__(self, root: Path, bad: set[int]) -> None:
        super().__init__(root)
        self.bad = bad
        self.single: list[int] = []

    def read_runs(self, fd, buffer, local, remote, lengths):  # type: ignore[no-untyped-def]
        for i, (at, size) in enumerate(zip(remote.tolist(), lengths.tolist(), strict=True)):
            if any(at <= b * PAGE < at + size for b in self.bad):
                return i
            one = slice(i, i + 1)
            if super().read_runs(fd, buffer, local[one], remote[one], lengths[one]) != 1:
                return i
        return len(remote)

    def pread_into(self, fd: int, view: memoryview, offset: int) -> int:
        self.single.append(offset // PAGE)
        if offset // PAGE in self.bad:
            raise OSError(errno.EIO, "injected")
        return super().pread_into(fd, view, offset)


def test_a_short_run_is_read_again_page_by_page(tmp_path: Path) -> None:
    path, data = _file(tmp_path, 12)
    fs = _FailingProcFS(tmp_path, bad={3})
    fd = os.open(path, os.O_RDONLY)
    try:
        vpn = np.array([0, 1, 2, 3, 4, 8, 9], np.int64)
        secret = PageSecret.from_seed(11)
        res = read_and_hash(fs, fd, secret, vpn, np.zeros(8 * PAGE, np.uint8))
    finally:
        os.close(fd)
    assert fs.single == [0, 1, 2, 3, 4]  # the failed run 0-4, page by page; 8-9 read as a run
    assert res.read_error.tolist() == [False, False, False, True, False, False, False]
    want = [
        xxhash.xxh3_64_intdigest(data[v * PAGE : (v + 1) * PAGE], seed=11) for v in vpn.tolist()
    ]
    want[3] = 0
    assert res.hashes.tolist() == want


def test_segments() -> None:
    first, length = segments(np.array([7], np.int64))
    assert (first.tolist(), length.tolist()) == ([0], [1])
    first, length = segments(np.zeros(0, np.int64))
    assert (len(first), len(length)) == (0, 0)
