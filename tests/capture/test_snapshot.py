"""Capture of one process on a fake /proc tree: what is read, what is recorded."""

from __future__ import annotations

import errno
import os
import shutil
import threading
from typing import TYPE_CHECKING

import numpy as np
import pytest
import xxhash

from planner.capture.hashing import PageHasher
from planner.capture.keys import CaptureKey
from planner.capture.memread import WINDOW_GONE, WindowScratch, read_window
from planner.capture.procfs import ProcFS
from planner.capture.snapshot import ProcessCapture, ProcessReader
from planner.errors import CapturePermissionError
from planner.trace.schema import PageFlag as F

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import FakeProc

    from planner.capture.xxh3 import PageSecret

PAGE = 4096
BASE = 0x10000
ZERO_PFN = 77


class SpyProcFS(ProcFS):
    """Records every read of /proc/<pid>/mem and pagemap; can inject failures."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.mem_reads: list[tuple[int, int]] = []
        self.pagemap_reads: list[tuple[int, int]] = []
        self.fail_mem_at: set[int] = set()
        self.on_pagemap: list[object] = []

    def pread_into(self, fd: int, view: memoryview, offset: int) -> int:
        self.mem_reads.append((offset, len(view)))
        if any(offset <= a < offset + len(view) for a in self.fail_mem_at):
            raise OSError(errno.EIO, "injected")
        return super().pread_into(fd, view, offset)

    def read_hash_runs(
        self,
        fd: int,
        buffer: np.ndarray,
        remote: np.ndarray,
        lengths: np.ndarray,
        out_at: np.ndarray,
        secret: PageSecret,
        out: np.ndarray,
    ) -> int:
        for i, (offset, size) in enumerate(zip(remote.tolist(), lengths.tolist(), strict=True)):
            self.mem_reads.append((offset, size))
            if any(offset <= a < offset + size for a in self.fail_mem_at):
                return i  # a short piece: the reader goes on page by page
            one = slice(i, i + 1)
            if (
                super().read_hash_runs(
                    fd, buffer, remote[one], lengths[one], out_at[one], secret, out
                )
                != 1
            ):
                return i
        return len(remote)

    def read_pagemap(self, fd: int, first_page: int, count: int) -> np.ndarray:
        self.pagemap_reads.append((first_page, count))
        out = super().read_pagemap(fd, first_page, count).copy()
        if self.on_pagemap:
            hook = self.on_pagemap.pop(0)
            if callable(hook):
                out = hook(out)
        return out


def _reader(fs: ProcFS, key: CaptureKey, **kw: object) -> ProcessReader:
    return ProcessReader(fs, PageHasher(key), zero_pfn=ZERO_PFN, **kw)  # type: ignore[arg-type]


def _h(key: CaptureKey, content: bytes) -> int:
    return xxhash.xxh3_64_intdigest(content, seed=key.seed)


def test_only_present_pages_are_read_one_read_per_run(
    fake_proc: FakeProc, capture_key: CaptureKey
) -> None:
    p = fake_proc.process(100, rss_anon_kb=24)
    p.map(BASE, 10)
    contents = {i: fake_proc.unique_page(i + 1) for i in (0, 1, 2, 7, 9)}
    for i, c in contents.items():
        p.page(BASE + i * PAGE, c, pfn=1000 + i, exclusive=(i != 7), soft_dirty=(i == 9))
    p.page(BASE + 3 * PAGE, None, pfn=0, present=False)  # hole
    p.page(BASE + 4 * PAGE, None, pfn=5, present=False, swapped=True)
    p.page(BASE + 5 * PAGE, bytes(PAGE), pfn=ZERO_PFN)  # the shared zero page: counted only
    p.page(BASE + 6 * PAGE, fake_proc.page_of(0), pfn=1006)  # a real frame of zeros
    fake_proc.write()
    fs = SpyProcFS(fake_proc.root)
    pc = _reader(fs, capture_key).capture(100)
    assert pc.state == "ok"
    # one read for pages 0-2, one for page 6-7, one for page 9: never the hole, the swapped
    # page or the zero-page PTE
    assert fs.mem_reads == [(BASE, 3 * PAGE), (BASE + 6 * PAGE, 2 * PAGE), (BASE + 9 * PAGE, PAGE)]
    assert (pc.addr // PAGE - BASE // PAGE).tolist() == [0, 1, 2, 4, 6, 7, 9]
    assert pc.zero_pfn_pages == 1
    rows = dict(zip((pc.addr // PAGE - BASE // PAGE).tolist(), range(pc.pages), strict=True))
    for i, c in contents.items():
        assert int(pc.content_hash[rows[i]]) == _h(capture_key, c)
        assert int(pc.pfn[rows[i]]) == 1000 + i
    assert pc.flags[rows[4]] == F.SWAPPED
    assert pc.flags[rows[6]] == F.ZERO
    assert int(pc.content_hash[rows[6]]) == _h(capture_key, bytes(PAGE))
    assert pc.flags[rows[0]] == F.EXCLUSIVE
    assert pc.flags[rows[7]] == 0
    assert pc.flags[rows[9]] == F.EXCLUSIVE | F.SOFT_DIRTY
    assert set(pc.vma_start.tolist()) == {BASE}
    (m,) = pc.mappings
    assert (m["kind"], m["present_pages"], m["start"], m["end"]) == (
        "anon",
        6,
        BASE,
        BASE + 10 * PAGE,
    )
    assert m["mergeable"] is False
    assert pc.info["rss_anon_kb"] == 24


def test_file_mappings_record_only_anonymous_cow_pages(
    fake_proc: FakeProc, capture_key: CaptureKey
) -> None:
    p = fake_proc.process(101)
    p.map(BASE, 4, "rw-p", "/usr/lib/libx.so", offset=0x3000)  # file_data
    p.page(BASE, fake_proc.page_of(1), pfn=2000, file=True)  # page cache: not ours
    p.page(BASE + PAGE, fake_proc.page_of(2), pfn=2001)  # COW copy: recorded
    p.page(BASE + 2 * PAGE, None, pfn=0, present=False, swapped=True, file=True)  # not anon
    # a read-only file mapping whose smaps says it holds no anonymous page: pagemap not read
    p.map(BASE + 0x10000, 4, "r--p", "/usr/lib/libx.so", smaps={"Anonymous": "0 kB"})
    p.page(BASE + 0x10000, fake_proc.page_of(3), pfn=2002)
    fake_proc.write()
    fs = SpyProcFS(fake_proc.root)
    pc = _reader(fs, capture_key).capture(101)
    assert (pc.addr - BASE).tolist() == [PAGE]
    assert int(pc.content_hash[0]) == _h(capture_key, fake_proc.page_of(2))
    assert fs.mem_reads == [(BASE + PAGE, PAGE)]
    assert all(first < (BASE + 0x10000) // PAGE for first, _ in fs.pagemap_reads)
    assert [(m["kind"], m["path"], m["offset"], m["present_pages"]) for m in pc.mappings] == [
        ("file_data", "/usr/lib/libx.so", 0x3000, 1),
        ("file_relro", "/usr/lib/libx.so", 0, 0),
    ]


def test_skipped_mappings_are_never_read(fake_proc: FakeProc, capture_key: CaptureKey) -> None:
    p = fake_proc.process(102)
    p.map(BASE, 2, "---p")
    p.map(BASE + 0x10000, 2, "rw-s", "/dev/shm/seg")
    p.map(BASE + 0x20000, 2, "r--p", "[vvar]")
    p.map(BASE + 0x30000, 2, "r-xp", "[vdso]")
    for a in (BASE, BASE + 0x10000, BASE + 0x20000, BASE + 0x30000):
        p.page(a, fake_proc.page_of(9), pfn=3000 + a // PAGE)
    p.write()
    # [vsyscall] sits above 2**63: it must be skipped before any offset arithmetic
    with open(p.dir / "maps", "a") as f:
        f.write("ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]\n")
    with open(p.dir / "smaps", "a") as f:
        f.write("ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]\nVmFlags: ex\n")
    fs = SpyProcFS(fake_proc.root)
    pc = _reader(fs, capture_key).capture(102)
    assert pc.state == "ok"
    assert pc.pages == 0
    assert pc.mappings == []
    assert fs.mem_reads == []
    assert fs.pagemap_reads == []


def test_bss_mapping_of_a_fake_library(fake_proc: FakeProc, capture_key: CaptureKey) -> None:
    p = fake_proc.process(103)
    fake_proc.write_elf(
        p.dir / "root" / "lib" / "libfake.so",
        [(1, 5, 0, 0, 0x2000, 0x2000), (1, 6, 0x2000, 0x2000, 0x1800, 0x5000)],
    )
    p.map(0x100000, 2, "r-xp", "/lib/libfake.so")
    p.map(0x102000, 2, "rw-p", "/lib/libfake.so", offset=0x2000)
    p.map(0x104000, 3, "rw-p")
    p.map(0x107000, 1, "rw-p", "[heap]")
    p.page(0x104000, fake_proc.page_of(4), pfn=4000)
    fake_proc.write()
    pc = _reader(fake_proc.procfs(), capture_key).capture(103)
    assert [m["kind"] for m in pc.mappings] == ["file_text", "file_data", "bss", "heap"]
    assert pc.mappings[2]["present_pages"] == 1


def test_read_error_falls_back_page_by_page(fake_proc: FakeProc, capture_key: CaptureKey) -> None:
    p = fake_proc.process(104)
    p.map(BASE, 4)
    for i in range(4):
        p.page(BASE + i * PAGE, fake_proc.unique_page(50 + i), pfn=5000 + i)
    fake_proc.write()
    fs = SpyProcFS(fake_proc.root)
    fs.fail_mem_at = {BASE + 2 * PAGE}
    pc = _reader(fs, capture_key).capture(104)
    assert fs.mem_reads[0] == (BASE, 4 * PAGE)
    assert fs.mem_reads[1:] == [(BASE + i * PAGE, PAGE) for i in range(4)]
    assert pc.flags.tolist() == [0, 0, F.READ_ERROR, 0]
    assert int(pc.content_hash[3]) == _h(capture_key, fake_proc.unique_page(53))
    assert int(pc.pfn[2]) == 5002  # the frame is known even if its content is not


def test_pte_change_during_read_is_racy(fake_proc: FakeProc, capture_key: CaptureKey) -> None:
    p = fake_proc.process(105)
    p.map(BASE, 3)
    for i in range(3):
        p.page(BASE + i * PAGE, fake_proc.unique_page(60 + i), pfn=6000 + i, soft_dirty=True)
    fake_proc.write()
    fs = SpyProcFS(fake_proc.root)
    first = BASE // PAGE

    def moved(entries: np.ndarray) -> np.ndarray:
        entries[1] += np.uint64(1)  # PFN of page 1 changed
        entries[2] &= ~np.uint64(1 << 55)  # only soft-dirty changed: not a race
        return entries

    fs.on_pagemap = [None, moved]
    pc = _reader(fs, capture_key).capture(105)
    assert fs.pagemap_reads == [(first, 3), (first, 3)]
    assert (pc.flags & np.uint16(F.RACY)).astype(bool).tolist() == [False, True, False]


def test_each_window_is_checked_for_races_after_its_own_read(
    fake_proc: FakeProc, capture_key: CaptureKey
) -> None:
    p = fake_proc.process(115)
    p.map(BASE, 6)
    for i in range(6):
        p.page(BASE + i * PAGE, fake_proc.unique_page(80 + i), pfn=6100 + i)
    fake_proc.write()
    fs = SpyProcFS(fake_proc.root)
    first = BASE // PAGE

    def moved(entries: np.ndarray) -> np.ndarray:
        entries[0] += np.uint64(1)  # the first page of the window moved
        return entries

    # windows of 2 pages, one thread: each window's pagemap is read before and after its
    # contents; the second read of the second window sees a moved page
    fs.on_pagemap = [None, None, None, moved]
    pc = _reader(fs, capture_key, window_pages=2, threads=1).capture(115)
    assert fs.pagemap_reads == [(first + k // 2 * 2, 2) for k in range(6)]
    assert fs.mem_reads == [(BASE + k * 2 * PAGE, 2 * PAGE) for k in range(3)]
    assert (pc.flags & np.uint16(F.RACY)).astype(bool).tolist() == [False] * 2 + [True] + [
        False
    ] * 3


def test_a_process_is_cut_into_about_four_windows_per_thread(
    fake_proc: FakeProc, capture_key: CaptureKey
) -> None:
    p = fake_proc.process(117)
    p.map(BASE, 2048)
    for i in range(0, 2048, 64):
        p.page(BASE + i * PAGE, fake_proc.unique_page(i), pfn=9000 + i)
    fake_proc.write()
    for threads, windows in ((2, 8), (1, 1), (8, 8)):  # 2,048 / (4 x 2) = 256 pages each
        fs = SpyProcFS(fake_proc.root)
        reader = _reader(fs, capture_key, threads=threads)
        try:
            pc = reader.capture(117)
        finally:
            reader.close()
        assert len(fs.pagemap_reads) == 2 * windows  # before and after each window's contents
        assert pc.pages == 32


def test_process_gone_while_threads_read_its_windows(
    fake_proc: FakeProc, capture_key: CaptureKey
) -> None:
    p = fake_proc.process(116, starttime=900)
    p.map(BASE, 8)
    for i in range(8):
        p.page(BASE + i * PAGE, fake_proc.unique_page(90 + i), pfn=6200 + i)
    fake_proc.write()
    fs = SpyProcFS(fake_proc.root)

    def exit_now(entries: np.ndarray) -> np.ndarray:
        shutil.rmtree(p.dir, ignore_errors=True)
        return entries[:-1]  # the exiting process's pagemap comes back short

    fs.on_pagemap = [None, exit_now]
    reader = _reader(fs, capture_key, window_pages=2, threads=2)
    try:
        pc = reader.capture(116, proc_start=900)
    finally:
        reader.close()
    assert pc.state == "gone"
    assert pc.pages == 0


def test_hidden_pfns_fail_loudly(fake_proc: FakeProc, capture_key: CaptureKey) -> None:
    p = fake_proc.process(106)
    p.map(BASE, 2)
    p.page(BASE, fake_proc.page_of(1), pfn=0)
    p.page(BASE + PAGE, fake_proc.page_of(2), pfn=0)
    fake_proc.write()
    with pytest.raises(CapturePermissionError, match="CAP_SYS_ADMIN"):
        ProcessReader(fake_proc.procfs(), PageHasher(capture_key)).capture(106)


def test_window_boundaries_do_not_change_the_result(
    fake_proc: FakeProc, capture_key: CaptureKey
) -> None:
    p = fake_proc.process(107)
    p.map(BASE, 40)
    rng = np.random.default_rng(1)
    for i in sorted(rng.choice(40, 25, replace=False).tolist()):
        p.page(BASE + i * PAGE, fake_proc.unique_page(i), pfn=7000 + i)
    fake_proc.write()
    big = _reader(fake_proc.procfs(), capture_key).capture(107)
    small = _reader(fake_proc.procfs(), capture_key, window_pages=7, read_chunk_pages=3).capture(
        107
    )
    threaded = _reader(
        fake_proc.procfs(), capture_key, window_pages=3, read_piece_pages=2, threads=3
    )
    try:
        parallel = threaded.capture(107)  # 14 windows read and hashed by 3 threads
    finally:
        threaded.close()
    for name in ("addr", "content_hash", "pfn", "flags", "vma_start"):
        assert getattr(big, name).tolist() == getattr(small, name).tolist()
        assert getattr(big, name).tolist() == getattr(parallel, name).tolist()
    assert big.mappings == small.mappings == parallel.mappings
    assert big.pages == 25


def test_gone_before_and_during_capture(fake_proc: FakeProc, capture_key: CaptureKey) -> None:
    p = fake_proc.process(108, starttime=900)
    p.map(BASE, 2)
    p.page(BASE, fake_proc.page_of(1), pfn=8000)
    fake_proc.write()
    reader = _reader(fake_proc.procfs(), capture_key)
    assert reader.capture(108, proc_start=900).state == "ok"
    assert reader.capture(108, proc_start=899).state == "gone"  # pid reused by another process

    fs = SpyProcFS(fake_proc.root)

    def exit_now(entries: np.ndarray) -> np.ndarray:
        shutil.rmtree(p.dir)
        return entries

    fs.on_pagemap = [exit_now]
    pc = _reader(fs, capture_key).capture(108, proc_start=900)
    assert pc.state == "gone"
    assert pc.pages == 0
    assert pc.info["comm"] == "fake"
    assert _reader(fake_proc.procfs(), capture_key).capture(108).state == "gone"


def test_gone_before_its_info_is_read_keeps_its_first_stat(
    fake_proc: FakeProc, capture_key: CaptureKey
) -> None:
    """The process info is read while the threads read the pages: a process that exits
    before it is read (the order a loaded host gives at random) is gone, named by the ppid
    and comm of its first stat, never a capture without them."""
    p = fake_proc.process(112, starttime=900, comm="short", ppid=5)
    p.map(BASE, 2)
    p.page(BASE, fake_proc.page_of(1), pfn=8000)
    fake_proc.write()
    exited = threading.Event()

    class ExitsFirst(SpyProcFS):
        def status(self, pid: int) -> dict[str, str]:
            assert exited.wait(30), "the pagemap was never read"
            return super().status(pid)

    def exit_now(entries: np.ndarray) -> np.ndarray:
        shutil.rmtree(p.dir)
        exited.set()
        return entries

    fs = ExitsFirst(fake_proc.root)
    fs.on_pagemap = [exit_now]
    pc = _reader(fs, capture_key, threads=2).capture(112, proc_start=900)
    assert exited.is_set()
    assert pc.state == "gone"
    assert pc.pages == 0
    assert pc.info == {"ppid": 5, "comm": "short"}


def test_zombie_is_gone(fake_proc: FakeProc, capture_key: CaptureKey) -> None:
    fake_proc.process(109, state="Z").write()
    assert _reader(fake_proc.procfs(), capture_key).capture(109).state == "gone"


def test_process_info(fake_proc: FakeProc, capture_key: CaptureKey) -> None:
    fake_proc.process(110, comm="gunicorn", ppid=7, uid=33, personality=0x0040000).write()
    hasher = PageHasher(capture_key)
    info = ProcessReader(fake_proc.procfs(), hasher).capture(110).info
    assert info["ppid"] == 7
    assert info["comm"] == "gunicorn"
    assert info["uid"] == 33
    assert info["cgroup"] == "/system.slice/web.service"
    assert info["aslr_disabled"] is True
    assert info["cmdline"] is None
    assert info["cmdline_hash"] == hasher.hash_bytes(b"python\0-m\0app")
    assert info["ksm_mergeable"] is True
    assert info["ksm_merging_pages"] == 2
    kept = ProcessReader(fake_proc.procfs(), hasher, keep_cmdline=True).capture(110).info
    assert kept["cmdline"] == "python -m app"


def test_mem_without_ptrace_access_names_the_capability(
    fake_proc: FakeProc, capture_key: CaptureKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = fake_proc.process(111)
    p.map(BASE, 1)
    p.page(BASE, fake_proc.page_of(1), pfn=11)
    fake_proc.write()
    real_open = os.open

    def deny_mem(path: object, *args: object, **kw: object) -> int:
        if str(path).endswith("/mem"):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", deny_mem)
    with pytest.raises(CapturePermissionError) as info:
        _reader(fake_proc.procfs(), capture_key).capture(111)
    assert "CAP_SYS_PTRACE" in info.value.one_line()
    assert "/111/mem" in info.value.message


def test_compiled_windows_give_what_the_numpy_path_gives(
    fake_proc: FakeProc, capture_key: CaptureKey
) -> None:
    """A window read in one compiled call (memread.read_window) and the same window read
    with numpy: the same rows, hashes, flags, frames and zero-page count, for several window,
    piece and thread counts; pages past the end of ``mem`` fail one by one in both."""
    p = fake_proc.process(140, rss_anon_kb=64)
    p.map(BASE, 24)
    p.map(BASE + 30 * PAGE, 4, "rw-p", "/usr/lib/libx.so", offset=0x3000)
    p.map(BASE + 40 * PAGE, 12, "rw-p", "[heap]")
    for i in (0, 1, 2, 3, 4, 7, 8, 9, 12, 13, 14, 15, 16, 17, 23):
        p.page(BASE + i * PAGE, fake_proc.unique_page(300 + i), pfn=7000 + i, exclusive=i % 3 == 0)
    p.page(BASE + 5 * PAGE, None, pfn=9, present=False, swapped=True)
    p.page(BASE + 6 * PAGE, bytes(PAGE), pfn=ZERO_PFN)  # zero-page PTE: counted only
    p.page(BASE + 10 * PAGE, fake_proc.page_of(0), pfn=7010, soft_dirty=True)  # real zeros
    p.page(BASE + 30 * PAGE, fake_proc.page_of(1), pfn=7030, file=True)  # page cache
    p.page(BASE + 31 * PAGE, fake_proc.page_of(2), pfn=7031)  # COW copy
    p.page(BASE + 32 * PAGE, None, pfn=11, present=False, swapped=True, file=True)
    for i in range(40, 52):
        p.page(BASE + i * PAGE, fake_proc.unique_page(400 + i), pfn=7100 + i)
    fake_proc.write()
    os.truncate(p.dir / "mem", BASE + 46 * PAGE)  # heap pages 46-51: short reads
    fs = fake_proc.procfs()
    runs: dict[tuple[bool, int, int, int], ProcessCapture] = {}
    for compiled in (True, False):
        for window, piece, threads in ((8, 64, 1), (4, 2, 2), (64, 3, 2)):
            reader = _reader(
                fs,
                capture_key,
                window_pages=window,
                read_piece_pages=piece,
                threads=threads,
                compiled_windows=None if compiled else False,
            )
            try:
                assert reader._compiled_windows() is compiled
                runs[(compiled, window, piece, threads)] = reader.capture(140)
            finally:
                reader.close()
    reference = runs[(False, 8, 64, 1)]
    assert reference.state == "ok"
    assert bool(np.all(np.diff(reference.addr.astype(np.int64)) > 0))  # in address order
    rows = dict(
        zip((reference.addr // PAGE - BASE // PAGE).tolist(), range(reference.pages), strict=True)
    )
    recorded = [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17, 23, 31]
    assert sorted(rows) == recorded + list(range(40, 52))
    errors = (reference.flags & np.uint16(F.READ_ERROR)) != 0
    assert (reference.addr[errors] // PAGE - BASE // PAGE).tolist() == list(range(46, 52))
    assert reference.zero_pfn_pages == 1
    for key, pc in runs.items():
        assert pc.state == "ok", key
        for name in ("addr", "vma_start", "content_hash", "pfn", "flags", "kflags_needed"):
            assert np.array_equal(getattr(pc, name), getattr(reference, name)), (key, name)
        assert pc.zero_pfn_pages == reference.zero_pfn_pages, key
        assert pc.mappings == reference.mappings, key


def test_compiled_window_reports_hidden_pfns_and_a_gone_process(
    fake_proc: FakeProc, capture_key: CaptureKey
) -> None:
    p = fake_proc.process(141)
    p.map(BASE, 2)
    p.page(BASE, fake_proc.unique_page(1), pfn=0)
    p.page(BASE + PAGE, fake_proc.unique_page(2), pfn=0)
    fake_proc.write()
    reader = _reader(fake_proc.procfs(), capture_key, threads=1)
    assert reader._compiled_windows()
    with pytest.raises(CapturePermissionError, match="every PFN is 0"):
        reader.capture(141)
    p.page(BASE, fake_proc.unique_page(1), pfn=10)
    fake_proc.write()
    os.truncate(p.dir / "pagemap", BASE // PAGE * 8 + 8)  # a short pagemap: the process left
    fs = fake_proc.procfs()
    fd = fs.open_pagemap(141)
    try:
        got = read_window(
            fd,
            fd,
            BASE // PAGE,
            2,
            [(0, BASE // PAGE, BASE // PAGE + 2)],
            None,
            PageHasher(capture_key).secret,
            WindowScratch(2, 2),
        )
    finally:
        os.close(fd)
    assert got.status == WINDOW_GONE


def test_a_mapping_smaps_flags_as_hugetlb_io_or_pfnmap_is_dropped(
    fake_proc: FakeProc, capture_key: CaptureKey
) -> None:
    """Anonymous mappings are read from ``maps`` before smaps is: one that smaps then shows
    as a PFN map loses its rows, and the others keep theirs (renumbered), whatever the
    number of threads and on either path; a file mapping between two anonymous ones comes in
    address order; a hugetlb mapping (it shows a file) is never read."""
    p = fake_proc.process(142)
    p.map(BASE, 4)
    p.map(BASE + 4 * PAGE, 2, smaps={"VmFlags": "rd wr io pf"})
    p.map(BASE + 6 * PAGE, 2, "rw-p", "/usr/lib/libx.so")
    p.map(BASE + 8 * PAGE, 4, "rw-p", "[heap]")
    # hugetlb memory shows a file: skipped as soon as smaps is read, before any of it is read
    p.map(BASE + 12 * PAGE, 2, "rw-p", "/anon_hugepage (deleted)", smaps={"VmFlags": "rd wr ht"})
    for i in (0, 1, 4, 5, 7, 8, 11, 12):
        p.page(BASE + i * PAGE, fake_proc.unique_page(500 + i), pfn=8000 + i)
    fake_proc.write()
    for threads, fs in ((1, fake_proc.procfs()), (2, fake_proc.procfs()), (2, SpyProcFS(p.root))):
        reader = _reader(fs, capture_key, threads=threads, window_pages=16)
        try:
            pc = reader.capture(142)
        finally:
            reader.close()
        if isinstance(fs, SpyProcFS):
            assert all(offset < BASE + 12 * PAGE for offset, _size in fs.mem_reads)
        assert (pc.addr // PAGE - BASE // PAGE).tolist() == [0, 1, 7, 8, 11]
        assert [m["kind"] for m in pc.mappings] == ["anon", "file_data", "heap"]
        assert [m["present_pages"] for m in pc.mappings] == [2, 1, 2]
        assert (pc.vma_start - BASE).tolist() == [0, 0, 6 * PAGE, 8 * PAGE, 8 * PAGE]
        assert [lo - BASE // PAGE for _i, lo, _hi in pc.spans] == [0, 6, 8]
        assert [i for i, _lo, _hi in pc.spans] == [0, 1, 2]
        assert int(pc.content_hash[2]) == _h(capture_key, fake_proc.unique_page(507))
