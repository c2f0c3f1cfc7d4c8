"""Reading runs of pages with one compiled pread loop, and what happens when a run fails."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import xxhash

from planner.capture.memread import pieces, pread_hash, pread_runs, read_and_hash, segments
from planner.capture.procfs import MAX_FILE_OFFSET, ProcFS
from planner.capture.xxh3 import PageSecret, library_xxh3
from tests.procs import run

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


def _want(data: bytes, vpn: list[int], seed: int) -> list[int]:
    return [xxhash.xxh3_64_intdigest(data[v * PAGE : (v + 1) * PAGE], seed=seed) for v in vpn]


@pytest.mark.parametrize("library", [True, False], ids=["xxhash-library", "own-kernel"])
def test_pread_hash_reads_and_hashes_each_piece(tmp_path: Path, library: bool) -> None:
    if library and library_xxh3() is None:
        pytest.fail("the xxhash library's XXH3_64bits_withSeed was not found")
    path, data = _file(tmp_path, 8)
    data = bytes(b ^ (i * 7 % 251) for i, b in enumerate(data))  # pages unlike each other
    path.write_bytes(data)
    seed = 2**64 - 3
    secret = PageSecret.from_seed(seed)
    fd = os.open(path, os.O_RDONLY)
    try:
        buf = np.zeros(2 * PAGE, np.uint8)
        remote = np.array([5, 1, 7], np.int64) * PAGE
        sizes = np.array([PAGE, 2 * PAGE, PAGE], np.int64)
        out_at = np.array([0, 1, 3], np.int64)
        out = np.zeros(4, np.uint64)
        assert pread_hash(fd, buf, remote, sizes, out_at, secret, out, library=library) == 3
        assert out.tolist() == _want(data, [5, 1, 2, 7], seed)
        # a piece past the end of the file is short: the loop stops there
        out[:] = 0
        remote[1] = 7 * PAGE
        assert pread_hash(fd, buf, remote, sizes, out_at, secret, out, library=library) == 1
        assert out.tolist() == [*_want(data, [5], seed), 0, 0, 0]
        # an offset beyond off_t is never asked for
        remote[1] = MAX_FILE_OFFSET - PAGE + 1
        assert pread_hash(fd, buf, remote, sizes, out_at, secret, out, library=library) == 1
        with pytest.raises(ValueError, match="fit the buffer"):
            pread_hash(fd, buf[:PAGE], remote, sizes, out_at, secret, out, library=library)
        with pytest.raises(ValueError, match="fit the output"):
            pread_hash(fd, buf, remote, sizes, out_at + 1, secret, out, library=library)
        with pytest.raises(ValueError, match="whole pages"):
            pread_hash(fd, buf, remote, sizes - 1, out_at, secret, out, library=library)
    finally:
        os.close(fd)


def test_pieces_cut_runs_to_the_buffer() -> None:
    vpn = np.array([3, 4, 5, 6, 7, 9, 20, 21, 22], np.int64)
    first, length = pieces(vpn, 2)
    assert first.tolist() == [0, 2, 4, 5, 6, 8]
    assert length.tolist() == [2, 2, 1, 1, 2, 1]
    first, length = pieces(vpn, 100)
    assert (first.tolist(), length.tolist()) == ([0, 5, 6], [5, 1, 3])
    first, length = pieces(np.zeros(0, np.int64), 4)
    assert (len(first), len(length)) == (0, 0)


class _FailingProcFS(ProcFS):
    """Pieces touching ``bad`` come back short; single pages of ``bad`` fail too."""

    def __init__(self, root: Path, bad: set[int]) -> None:
        super().__init__(root)
        self.bad = bad
        self.pieces: list[tuple[int, int]] = []
        self.single: list[int] = []

    def read_hash_runs(self, fd, buffer, remote, lengths, out_at, secret, out):  # type: ignore[no-untyped-def]
        for i, (at, size) in enumerate(zip(remote.tolist(), lengths.tolist(), strict=True)):
            self.pieces.append((at // PAGE, size // PAGE))
            if any(at <= b * PAGE < at + size for b in self.bad):
                return i
            one = slice(i, i + 1)
            if (
                super().read_hash_runs(
                    fd, buffer, remote[one], lengths[one], out_at[one], secret, out
                )
                != 1
            ):
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
        res = read_and_hash(fs, fd, secret, vpn, np.zeros(4 * PAGE, np.uint8))
    finally:
        os.close(fd)
    # pieces of at most 4 pages (the buffer): 0-3 fails and is read page by page; 4 and 8-9
    # are read as pieces
    assert fs.pieces == [(0, 4), (4, 1), (8, 2)]
    assert fs.single == [0, 1, 2, 3]
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


#: warms the capture up as a capture does, then reads a window of two spans (a pagemap of
#: zeros: nothing present) and prints which numba functions gained a compiled version
AFTER_WARM_UP = """
import json, os, sys
from planner.capture import memread, session, xxh3
from planner.capture.xxh3 import PageSecret

session.warm_up()
if xxh3.library_xxh3() is None:
    print(json.dumps(None))
    sys.exit()
before = {n: set(d.signatures) for n, d in memread._LOOPS.items()}
fd = os.open(sys.argv[1], os.O_RDONLY)
memread.read_window(fd, fd, 0, 8, [(0, 0, 3), (1, 5, 8)], None, PageSecret.from_seed(1),
                    memread.WindowScratch(8, 8))
after = {n: set(d.signatures) for n, d in memread._LOOPS.items()}
print(json.dumps(sorted(n for n in after if after[n] != before.get(n))))
"""


def test_a_window_after_the_warm_up_compiles_nothing(tmp_path: Path) -> None:
    """The capture's warm-up compiles the window loop for the argument types of every real
    window. It used to pass one span, whose columns numba types as contiguous, where a real
    window's several spans were strided columns: on a cold cache the first snapshot
    compiled the loop again (1.3-1.5 s here), stretching its interval (a 0.3 s interval
    measured 2.4-3.5 s)."""
    pagemap = tmp_path / "pagemap"
    pagemap.write_bytes(bytes(8 * 8))
    out = run(
        [sys.executable, "-c", AFTER_WARM_UP, str(pagemap)],
        cwd=Path(__file__).resolve().parents[2],
        check=True,
        timeout_s=600,
    )
    changed = json.loads(out.stdout.strip().splitlines()[-1])
    if changed is None:
        pytest.skip("the xxhash library's XXH3_64bits_withSeed is not available")
    assert changed == [], f"compiled after the warm-up: {changed}"
