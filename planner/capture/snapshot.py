"""Capture the anonymous pages of one process: pagemap first, then only present pages.

The kept mappings (see :mod:`planner.capture.vma`) are cut into windows of at most
``window_pages`` pages, each one task for the reader's threads: its pagemap is read with one
``pread`` and decoded with numpy. The pages to record are the present, anonymous ones
(pagemap file bit 61 clear; in file mappings these are the copy-on-write copies), minus PTEs
of the shared zero page. Their contents are read from ``/proc/<pid>/mem`` in pieces of runs of
contiguous recorded pages and hashed with the capture key as they are read
(:mod:`planner.capture.memread`), so nothing that is not present is ever touched (reading a
hole or a swapped page would fault it in, docs/capture.md §4.2). Swapped anonymous pages
become rows without hash or frame. The window's pagemap is read again after its contents;
pages whose PFN or present bit changed are flagged ``RACY``. Windows are assembled in address
order, so the rows do not depend on the number of threads.

Frame ids, the kpageflags-based flags and the Arrow tables are made per snapshot by
:mod:`planner.capture.session`; this module returns raw arrays (with raw PFNs, which never
leave the capture).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from planner._progress import NULL_PROGRESS, Progress
from planner.capture import vma as V
from planner.capture.facts import memory_cgroup_of, process_facts
from planner.capture.memread import (
    CHUNK_PAGES,
    PIECE_PAGES,
    WINDOW_GONE,
    WINDOW_PFNS_HIDDEN,
    ReadResult,
    WindowRows,
    WindowScratch,
    read_and_hash,
    read_window,
    window_in_compiled_code,
)
from planner.capture.procfs import (
    ADDR_NO_RANDOMIZE,
    PAGE_SIZE_BYTES,
    PM_EXCLUSIVE_BIT,
    PM_FILE_BIT,
    PM_PFN_MASK,
    PM_PRESENT_BIT,
    PM_SOFT_DIRTY_BIT,
    PM_SWAP_BIT,
    PTRACE_HINT,
    MapEntry,
    ProcessGone,
    ProcFS,
    ProcStat,
)
from planner.errors import CapturePermissionError
from planner.trace.schema import PageFlag

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from planner.capture.facts import CgroupHierarchy
    from planner.capture.hashing import PageHasher
    from planner.capture.pace import Pacer

#: Pages of address space per window (32 MiB; 64 KiB of pagemap): the unit of work of one
#: thread, whose pagemap is read in one ``pread`` before and after its contents.
DEFAULT_WINDOW_PAGES: Final = 1 << 13
#: Smallest window a process's address space is cut into to share it between threads.
MIN_WINDOW_PAGES: Final = 256
DEFAULT_READ_CHUNK_PAGES: Final = CHUNK_PAGES  # pages per task of the sampler's reads
#: Holes up to this many pages between two mappings are read through (32 KiB of pagemap
#: cost less than another system call).
PAGEMAP_GAP_PAGES: Final = 4096
#: Default threads reading and hashing the windows of one process at once.
DEFAULT_THREADS: Final = 2
#: Longest wait for the reading threads to start (:meth:`ProcessReader.start_threads`).
START_TIMEOUT_S: Final = 10.0

_U64 = np.uint64
_PFN_MASK = _U64(PM_PFN_MASK)
_LIVE_BITS = _U64((1 << PM_PRESENT_BIT) | (1 << PM_SWAP_BIT))
_PTE_IDENTITY = _PFN_MASK | _U64(1 << PM_PRESENT_BIT)
_NO_PFN: Final = (1 << 55) - 1  # no page has this PFN (used when the zero page is unknown)

PFN_HIDDEN_HINT: Final = (
    "run as root or grant CAP_SYS_ADMIN: without it the kernel reports every PFN in "
    "/proc/<pid>/pagemap as 0, so shared frames cannot be told apart"
)


@dataclass
class Timings:
    """Seconds spent per capture phase (summed over processes and snapshots).

    ``read_s`` is the wall time of reading the windows (pagemap, contents and hashes, on the
    reader's threads); ``pagemap_s`` the pagemap reads within it, summed over threads, where
    they are timed apart (windows read in one compiled call,
    :func:`~planner.capture.memread.read_window`, count only in ``read_s``).
    """

    maps_s: float = 0.0
    pagemap_s: float = 0.0
    read_s: float = 0.0
    meta_s: float = 0.0
    kpage_s: float = 0.0
    tables_s: float = 0.0
    write_s: float = 0.0

    def add(self, other: Timings) -> None:
        """Add ``other`` into this."""
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def to_dict(self) -> dict[str, float]:
        """A JSON-ready dict."""
        return {k: round(getattr(self, k), 6) for k in self.__dataclass_fields__}


@dataclass
class ProcessCapture:
    """What one process looked like in one snapshot (raw: PFNs still present)."""

    pid: int
    proc_start: int
    state: str  # "ok" | "gone" | "error"
    info: dict[str, Any] = field(default_factory=dict)
    """Process columns of the ``processes`` table (ppid, comm, uid, ksm_* ...)."""
    error: str | None = None
    mappings: list[dict[str, Any]] = field(default_factory=list)
    addr: npt.NDArray[np.uint64] = field(default_factory=lambda: np.empty(0, np.uint64))
    vma_start: npt.NDArray[np.uint64] = field(default_factory=lambda: np.empty(0, np.uint64))
    content_hash: npt.NDArray[np.uint64] = field(default_factory=lambda: np.empty(0, np.uint64))
    pfn: npt.NDArray[np.uint64] = field(default_factory=lambda: np.empty(0, np.uint64))
    flags: npt.NDArray[np.uint16] = field(default_factory=lambda: np.empty(0, np.uint16))
    spans: list[tuple[int, int, int]] = field(default_factory=list)
    """``(mapping index, first page, end page)`` of the mappings whose pagemap was read."""
    kflags_needed: npt.NDArray[np.bool_] = field(default_factory=lambda: np.empty(0, bool))
    """Pages whose frame flags (KSM, THP, huge zero page) must be read from kpageflags: the
    pages of mappings whose smaps does not rule them out (see :func:`needs_frame_flags`)."""
    zero_pfn_pages: int = 0
    t0: float = 0.0  # time.perf_counter() at start and end of this process's capture
    t1: float = 0.0

    @property
    def pages(self) -> int:
        """Rows recorded for this process."""
        return len(self.addr)


@dataclass
class ProcessReader:
    """Reads processes for one capture session (owns the reused read buffer).

    Parameters
    ----------
    procfs
        Where to read.
    hasher
        The keyed page hasher.
    zero_pfn
        PFN of the shared zero page if known (its PTEs are counted, not recorded or read).
    keep_cmdline
        Store the command line in clear (by default only its keyed hash).
    """

    procfs: ProcFS
    hasher: PageHasher
    zero_pfn: int | None = None
    keep_cmdline: bool = False
    window_pages: int = DEFAULT_WINDOW_PAGES
    read_chunk_pages: int = DEFAULT_READ_CHUNK_PAGES
    read_piece_pages: int = PIECE_PAGES
    """Most pages one ``pread`` reads (each thread's buffer holds that many)."""
    threads: int = DEFAULT_THREADS
    timings: Timings = field(default_factory=Timings)
    pacer: Pacer | None = None
    """Gives the reading threads the capture's priority (:mod:`planner.capture.pace`)."""
    cgroup_hierarchy: CgroupHierarchy | None = None
    """Where the memory controller is mounted (for ``processes.memory_cgroup``)."""
    compiled_windows: bool | None = None
    """Read each window in one compiled call (:func:`memread.read_window`): ``None`` where
    it can (see :meth:`_compiled_windows`), ``False`` never (the numpy path)."""

    def __post_init__(self) -> None:
        if not 1 <= self.read_chunk_pages <= CHUNK_PAGES:
            raise ValueError(f"read_chunk_pages must be 1 to {CHUNK_PAGES}")
        if not 1 <= self.read_piece_pages <= CHUNK_PAGES:
            raise ValueError(f"read_piece_pages must be 1 to {CHUNK_PAGES}")
        self._local = threading.local()
        self._timing_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._bss_cache: dict[tuple[str, int, str], Sequence[V.LoadSegment]] = {}
        self._compiled: bool | None = None
        self.mem_reads = 0
        """``pread`` calls of ``/proc/<pid>/mem`` made so far."""

    # ----------------------------------------------------------------- one process

    def capture(
        self, pid: int, *, proc_start: int | None = None, progress: Progress = NULL_PROGRESS
    ) -> ProcessCapture:
        """Capture ``pid``; ``proc_start`` (if given) must match, else the process is gone.

        Returns a :class:`ProcessCapture` with state ``ok``, or ``gone`` if the process
        exited (or the pid was reused) before or while it was read. A process that exits
        while it is read keeps the ``info`` read so far: at least its ``ppid`` and ``comm``.

        Raises
        ------
        CapturePermissionError
            ptrace access to the process, or PFN visibility (CAP_SYS_ADMIN), is missing.
        """
        t0 = time.perf_counter()
        try:
            st = self.procfs.stat(pid)
        except ProcessGone:
            return ProcessCapture(
                pid=pid, proc_start=proc_start or 0, state="gone", t0=t0, t1=time.perf_counter()
            )
        if st.is_dead or (proc_start is not None and st.starttime_ticks != proc_start):
            return ProcessCapture(
                pid=pid,
                proc_start=proc_start or st.starttime_ticks,
                state="gone",
                t0=t0,
                t1=time.perf_counter(),
            )
        pc = ProcessCapture(pid=pid, proc_start=st.starttime_ticks, state="ok", t0=t0)
        try:

            def info() -> None:  # read while the threads read the pages
                pc.info = self._process_info(st)

            self._capture_pages(pc, progress, meanwhile=info)
            # A process that exits while it is read gives short reads, not errors: check.
            st2 = self.procfs.stat(pid)
            if st2.is_dead or st2.starttime_ticks != st.starttime_ticks:
                raise ProcessGone(pid)
        except ProcessGone:
            # The process info is read while the threads read the pages; a process that
            # exits first leaves it unread: the gone capture still names the process by
            # what its first stat gave.
            return ProcessCapture(
                pid=pid,
                proc_start=st.starttime_ticks,
                state="gone",
                info=pc.info or {"ppid": st.ppid, "comm": st.comm},
                t0=t0,
                t1=time.perf_counter(),
            )
        pc.t1 = time.perf_counter()
        return pc

    def _process_info(self, st: ProcStat) -> dict[str, Any]:
        t = time.perf_counter()
        fs, pid = self.procfs, st.pid
        status = fs.status(pid)
        cgroups = fs.cgroups(pid)
        cmdline = fs.cmdline(pid)
        personality = fs.personality(pid)
        ksm = fs.ksm_stat(pid)
        uid = status.get("Uid", "").split()
        rss_anon = status.get("RssAnon", "").split()
        info: dict[str, Any] = {
            "ppid": st.ppid,
            "comm": st.comm,
            "cmdline": _argv_text(cmdline) if self.keep_cmdline else None,
            "cmdline_hash": self.hasher.hash_bytes(cmdline),
            "exe": fs.exe(pid),
            "cgroup": cgroups.get(""),
            "uid": int(uid[0]) if uid else None,
            "aslr_disabled": bool(personality & ADDR_NO_RANDOMIZE)
            if personality is not None
            else None,
            "rss_anon_kb": int(rss_anon[0]) if rss_anon else None,
            "ksm_merge_any": ksm.get("ksm_merge_any"),
            "ksm_mergeable": ksm.get("ksm_mergeable"),
            "ksm_rmap_items": ksm.get("ksm_rmap_items"),
            "ksm_merging_pages": ksm.get("ksm_merging_pages"),
            "ksm_zero_pages": ksm.get("ksm_zero_pages"),
            "ksm_process_profit": ksm.get("ksm_process_profit"),
            **process_facts(fs, st, status, memory_cgroup_of(cgroups, self.cgroup_hierarchy)),
        }
        self.timings.meta_s += time.perf_counter() - t
        return info

    def _capture_pages(
        self, pc: ProcessCapture, progress: Progress, *, meanwhile: Callable[[], None]
    ) -> None:
        """Read the pages of ``pc``; ``meanwhile`` runs while the threads read them.

        The mappings come from ``maps``, which costs no page-table walk: the threads start
        on the anonymous ones (no file behind them: heap, stack, ``bss``, anonymous) at
        once, while this thread reads ``smaps`` -- a walk of every page table, about a
        tenth of a microsecond per page -- and then hands them the file mappings whose
        smaps shows anonymous or swapped pages (in an interpreter most file mappings hold
        none: their pagemap is not read). A mapping whose smaps flags show it must be
        skipped (hugetlb, I/O, PFN map) loses whatever was read of it.
        """
        fs, pid = self.procfs, pc.pid
        t = time.perf_counter()
        kept = self._kept(pid, fs.maps(pid))
        self.timings.maps_s += time.perf_counter() - t
        if not kept:
            meanwhile()
            return
        early = [
            (i, e.start // PAGE_SIZE_BYTES, e.end // PAGE_SIZE_BYTES)
            for i, (e, kind) in enumerate(kept)
            if kind in ANONYMOUS_KINDS
        ]
        rows: list[dict[str, Any]] = []
        needs: list[bool] = []

        def late() -> list[tuple[int, int, int]]:
            """smaps, what follows from it for each mapping, and the file mappings to read."""
            nonlocal kept
            t = time.perf_counter()
            smaps = {(e.start, e.end): e for e in fs.mappings(pid)}
            # the smaps entry of each mapping where it has one (else the maps line: no fields)
            kept = [(smaps.get((e.start, e.end), e), kind) for e, kind in kept]
            rows.extend(_mapping_row(e, kind, 0) for e, kind in kept)
            needs.extend(needs_frame_flags(e) for e, _kind in kept)
            self.timings.maps_s += time.perf_counter() - t
            # Mappings smaps shows without any anonymous or swapped page hold nothing to
            # record: their pagemap is not read.
            return [
                (i, e.start // PAGE_SIZE_BYTES, e.end // PAGE_SIZE_BYTES)
                for i, (e, kind) in enumerate(kept)
                if kind not in ANONYMOUS_KINDS
                and not _skipped_by_flags(e)
                and _may_hold_anonymous(e)
            ]

        parts, spans = self._read_windows(early, pid, more=late, meanwhile=meanwhile)
        w = WindowRows.concat(parts)
        skip = np.array([_skipped_by_flags(e) for e, _kind in kept], dtype=bool)
        if skip.any():
            rows = [r for r, s in zip(rows, skip.tolist(), strict=True) if not s]
            needs = [n for n, s in zip(needs, skip.tolist(), strict=True) if not s]
            kept, spans, w = _without(kept, spans, w, skip)
        pc.spans = spans
        pc.zero_pfn_pages = sum(p.zero_pfn_pages for p in parts)
        present_per_map = np.bincount(w.owner[w.is_rec], minlength=len(kept))
        for row, present in zip(rows, present_per_map.tolist(), strict=True):
            row["present_pages"] = present
        pc.mappings = rows
        if not len(w.vpn):
            return
        entry, is_rec = w.entry, w.is_rec
        flags = ((entry >> _U64(PM_EXCLUSIVE_BIT)) & _U64(1)).astype(np.uint16) * np.uint16(
            PageFlag.EXCLUSIVE
        )
        flags |= ((entry >> _U64(PM_SOFT_DIRTY_BIT)) & _U64(1)).astype(np.uint16) * np.uint16(
            PageFlag.SOFT_DIRTY
        )
        rec_flags = np.zeros(int(np.count_nonzero(is_rec)), np.uint16)
        rec_flags[w.racy] |= np.uint16(PageFlag.RACY)
        rec_flags[w.read_error] |= np.uint16(PageFlag.READ_ERROR)
        zero = (w.hashes == _U64(self.hasher.zero_hash)) & ~w.read_error
        rec_flags[zero] |= np.uint16(PageFlag.ZERO)
        flags[is_rec] |= rec_flags
        flags[~is_rec] |= np.uint16(PageFlag.SWAPPED)
        page_hash = np.zeros(len(w.vpn), np.uint64)
        page_hash[is_rec] = w.hashes
        pc.addr = w.vpn.astype(np.uint64) * _U64(PAGE_SIZE_BYTES)
        starts = np.array([e.start for e, _kind in kept], dtype=np.uint64)
        pc.vma_start = starts[w.owner]
        pc.content_hash = page_hash
        pc.pfn = np.where(is_rec, entry & _PFN_MASK, _U64(0))
        pc.flags = flags
        pc.kflags_needed = np.array(needs, dtype=bool)[w.owner]
        progress.advance(len(w.vpn))

    def _kept(self, pid: int, entries: list[MapEntry]) -> list[tuple[MapEntry, str]]:
        """The mappings the capture reads, with their kinds (:func:`vma.classify`)."""
        kept: list[tuple[MapEntry, str]] = []
        prev: MapEntry | None = None
        for e in entries:
            kind = V.classify(e, prev, self._bss_segments(pid, prev))
            if kind is not None:
                kept.append((e, kind))
            prev = e
        return kept

    def _read_windows(
        self,
        spans: list[tuple[int, int, int]],
        pid: int,
        *,
        more: Callable[[], list[tuple[int, int, int]]],
        meanwhile: Callable[[], None],
    ) -> tuple[list[WindowRows], list[tuple[int, int, int]]]:
        """Every window of ``spans`` read by :meth:`_read_window` on the reader's threads,
        while this thread calls ``more`` (whose spans are read next) and ``meanwhile``.

        The windows are independent: each thread reads the pagemap of one, the contents of
        its present pages and its pagemap again, so the result is the same in any order
        and with any number of threads; :meth:`WindowRows.concat` puts it in address order.
        Returns the windows read and all the spans, in address order.
        """
        t = time.perf_counter()
        pm_fd = self.procfs.open_pagemap(pid)
        try:
            mem_fd = self.procfs.open_mem(pid)
            try:
                if self.threads <= 1:
                    spans = sorted(spans + more())
                    meanwhile()
                    parts = [
                        self._read_window(pm_fd, mem_fd, pid, *w)
                        for w in _windows(spans, self._window_size(spans))
                    ]
                else:
                    futures = self._submit(spans, pm_fd, mem_fd, pid)
                    try:
                        extra = more()
                        futures += self._submit(extra, pm_fd, mem_fd, pid)
                        spans = sorted(spans + extra)
                        meanwhile()
                    finally:
                        wait(futures)  # every thread is done with the descriptors before they close
                    parts = [f.result() for f in futures]
            finally:
                os.close(mem_fd)
        finally:
            os.close(pm_fd)
        self.timings.read_s += time.perf_counter() - t
        self.mem_reads += sum(p.reads for p in parts)
        return parts, spans

    def _submit(
        self, spans: list[tuple[int, int, int]], pm_fd: int, mem_fd: int, pid: int
    ) -> list[Future[WindowRows]]:
        """Hand the windows of ``spans`` to the reader's threads, the largest first (so that
        no thread is left with a big one at the end while the others idle)."""
        windows = list(_windows(spans, self._window_size(spans)))
        pool = self._executor()
        order = sorted(range(len(windows)), key=lambda k: -windows[k][1])
        return [pool.submit(self._read_window, pm_fd, mem_fd, pid, *windows[k]) for k in order]

    def _window_size(self, spans: list[tuple[int, int, int]]) -> int:
        """Pages per window for this process: at most :attr:`window_pages`, and small enough
        that the threads get about four windows each (so that one thread does not read most
        of a small process alone), but not under :data:`MIN_WINDOW_PAGES`."""
        if self.threads <= 1:
            return self.window_pages
        span_pages = sum(hi - lo for _index, lo, hi in spans)
        share = -(-span_pages // (4 * self.threads))
        return min(self.window_pages, max(MIN_WINDOW_PAGES, share))

    def _read_window(
        self,
        pm_fd: int,
        mem_fd: int,
        pid: int,
        first: int,
        count: int,
        members: list[tuple[int, int, int]],
    ) -> WindowRows:
        """One window: its pagemap, the contents of its present anonymous pages, and its
        pagemap again (pages whose PFN or present bit changed meanwhile are ``racy``).

        In one compiled call without the GIL where it can (:func:`memread.read_window`),
        else with numpy here; the two give the same window.
        """
        if self.pacer is not None:
            self.pacer.apply()
        if self._compiled_windows():
            return self._read_window_compiled(pm_fd, mem_fd, pid, first, count, members)
        t = time.perf_counter()
        pm = self.procfs.read_pagemap(pm_fd, first, count)
        if len(pm) != count:
            raise ProcessGone(pid)
        pagemap_s = time.perf_counter() - t
        vpns: list[npt.NDArray[np.int64]] = []
        owners: list[npt.NDArray[np.intp]] = []
        for index, lo, hi in members:
            live = np.flatnonzero(pm[lo - first : hi - first] & _LIVE_BITS)
            vpns.append(live.astype(np.int64) + lo)
            owners.append(np.full(len(live), index, np.intp))
        vpn = np.concatenate(vpns)
        entry = pm[vpn - first]
        present = (entry >> _U64(PM_PRESENT_BIT)).astype(bool)
        anon = ((entry >> _U64(PM_FILE_BIT)) & _U64(1)) == 0
        pfn = entry & _PFN_MASK
        present_anon = present & anon
        zero_pte = present_anon & (pfn == _U64(self.zero_pfn if self.zero_pfn else _NO_PFN))
        record = present_anon & ~zero_pte
        swapped = ((entry >> _U64(PM_SWAP_BIT)) & _U64(1)).astype(bool) & ~present & anon
        n_record = int(np.count_nonzero(record))
        if n_record and not np.any(pfn[record]):
            raise CapturePermissionError(
                f"pagemap of pid {pid} shows {n_record} present pages but every PFN is 0 "
                "(PFNs are hidden without CAP_SYS_ADMIN)",
                hint=PFN_HIDDEN_HINT,
            )
        keep = record | swapped
        rows = np.flatnonzero(keep)
        rec_vpn = vpn[record]
        if n_record:
            read = read_and_hash(self.procfs, mem_fd, self.hasher.secret, rec_vpn, self._buffer())
            t = time.perf_counter()
            again = self.procfs.read_pagemap(pm_fd, first, count)
            if len(again) != count:
                raise ProcessGone(pid)
            pagemap_s += time.perf_counter() - t
            racy = ((again[rec_vpn - first] ^ entry[record]) & _PTE_IDENTITY) != 0
        else:
            read = ReadResult(np.zeros(0, np.uint64), np.zeros(0, bool), 0)
            racy = np.zeros(0, bool)
        with self._timing_lock:
            self.timings.pagemap_s += pagemap_s
        return WindowRows(
            vpn=vpn[rows],
            entry=entry[rows],
            owner=np.concatenate(owners)[rows],
            is_rec=record[rows],
            hashes=read.hashes,
            read_error=read.read_error,
            racy=racy,
            zero_pfn_pages=int(np.count_nonzero(zero_pte)),
            reads=read.reads,
        )

    def _compiled_windows(self) -> bool:
        """Whether windows are read by :func:`memread.read_window`: where the ``xxhash``
        library's function is found, and the procfs reads through its own system calls (a
        procfs that intercepts ``read_pagemap``, ``read_hash_runs`` or ``pread_into``, as
        the tests' spies do, is read through those methods)."""
        if self.compiled_windows is False:
            return False
        if self._compiled is None:
            own = all(
                getattr(type(self.procfs), name) is getattr(ProcFS, name)
                for name in ("read_pagemap", "read_hash_runs", "pread_into")
            )
            self._compiled = own and window_in_compiled_code()
        return self._compiled

    def _read_window_compiled(
        self,
        pm_fd: int,
        mem_fd: int,
        pid: int,
        first: int,
        count: int,
        members: list[tuple[int, int, int]],
    ) -> WindowRows:
        scratch: WindowScratch | None = getattr(self._local, "scratch", None)
        if scratch is None or scratch.pages < count:
            scratch = WindowScratch(max(count, self.window_pages), self.read_piece_pages)
            self._local.scratch = scratch
        got = read_window(
            pm_fd, mem_fd, first, count, members, self.zero_pfn, self.hasher.secret, scratch
        )
        if got.status == WINDOW_GONE:
            raise ProcessGone(pid)
        if got.status == WINDOW_PFNS_HIDDEN:
            raise CapturePermissionError(
                f"pagemap of pid {pid} shows {got.recorded} present pages but every PFN is 0 "
                "(PFNs are hidden without CAP_SYS_ADMIN)",
                hint=PFN_HIDDEN_HINT,
            )
        return got.rows

    def _bss_segments(
        self, pid: int, prev: MapEntry | None
    ) -> Callable[[str], Sequence[V.LoadSegment]]:
        """The ELF check of the file mapped just before, cached by the file's identity.

        The identity is the device and inode the maps line shows, so a library mapped by
        every process is opened once per session, without a ``stat`` through
        ``/proc/<pid>/root`` per process.
        """

        def segments(path: str) -> Sequence[V.LoadSegment]:
            ident = (prev.dev, prev.inode, path) if prev is not None else None
            hit = self._bss_cache.get(ident) if ident is not None else None
            if hit is None:
                hit = V.cached_bss_segments(self.procfs.elf_path(pid, path))
                if ident is not None and prev is not None and prev.inode:
                    self._bss_cache[ident] = hit
            return hit

        return segments

    # ----------------------------------------------------------------- pagemap

    def read_pages(
        self, pid: int, vpn: npt.NDArray[np.int64], *, mem_fd: int | None = None
    ) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.bool_]]:
        """Hashes of the present pages ``vpn`` (sorted) of ``pid``, and which failed to read.

        ``mem_fd`` is an open ``/proc/<pid>/mem`` to read through (else one is opened).
        """
        return self._read_and_hash(pid, vpn, mem_fd=mem_fd)

    def pagemap(
        self, fd: int, spans: list[tuple[int, int, int]], pid: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint64], npt.NDArray[np.intp]]:
        """The present and swapped pages of ``spans`` (see :meth:`_pagemap`)."""
        return self._pagemap(fd, spans, pid)

    def _pagemap(
        self, fd: int, spans: list[tuple[int, int, int]], pid: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint64], npt.NDArray[np.intp]]:
        """Pagemap entries of every page of ``spans`` ``(mapping index, first, end)``.

        Neighbouring spans are read together (one ``pread`` per window of at most
        ``window_pages`` entries, across holes of at most :data:`PAGEMAP_GAP_PAGES`), and only
        the entries of pages that are present or swapped are kept. Returns their page numbers,
        entries and mapping indexes, in address order.
        """
        t = time.perf_counter()
        vpns: list[npt.NDArray[np.int64]] = []
        entries: list[npt.NDArray[np.uint64]] = []
        owners: list[npt.NDArray[np.intp]] = []
        for first, count, members in _windows(spans, self.window_pages):
            pm = self.procfs.read_pagemap(fd, first, count)
            if len(pm) != count:
                raise ProcessGone(pid)
            for index, lo, hi in members:
                part = pm[lo - first : hi - first]
                live = np.flatnonzero(part & _LIVE_BITS)
                if len(live):
                    vpns.append(live.astype(np.int64) + lo)
                    entries.append(part[live])
                    owners.append(np.full(len(live), index, np.intp))
        self.timings.pagemap_s += time.perf_counter() - t
        if not vpns:
            return np.zeros(0, np.int64), np.zeros(0, np.uint64), np.zeros(0, np.intp)
        return np.concatenate(vpns), np.concatenate(entries), np.concatenate(owners)

    # ----------------------------------------------------------------- contents

    def _read_and_hash(
        self, pid: int, vpn: npt.NDArray[np.int64], *, mem_fd: int | None = None
    ) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.bool_]]:
        """Read and hash the pages ``vpn`` (sorted), chunk by chunk, on the reader's threads."""
        n = len(vpn)
        if n == 0:
            return np.zeros(0, np.uint64), np.zeros(0, bool)
        t = time.perf_counter()
        own = mem_fd is None
        if mem_fd is None:
            mem_fd = self.procfs.open_mem(pid)
        try:
            chunk = self.read_chunk_pages
            bounds = [(a, min(a + chunk, n)) for a in range(0, n, chunk)]
            if len(bounds) == 1 or self.threads <= 1:
                results = [self._chunk(mem_fd, vpn[a:b]) for a, b in bounds]
            else:
                pool = self._executor()
                futures = [pool.submit(self._chunk, mem_fd, vpn[a:b]) for a, b in bounds]
                results = [f.result() for f in futures]
        finally:
            if own:
                os.close(mem_fd)
        self.timings.read_s += time.perf_counter() - t
        self.mem_reads += sum(r.reads for r in results)
        return (
            np.concatenate([r.hashes for r in results]),
            np.concatenate([r.read_error for r in results]),
        )

    def _chunk(self, mem_fd: int, vpn: npt.NDArray[np.int64]) -> ReadResult:
        if self.pacer is not None:
            self.pacer.apply()
        return read_and_hash(self.procfs, mem_fd, self.hasher.secret, vpn, self._buffer())

    def _buffer(self) -> npt.NDArray[np.uint8]:
        """This thread's read buffer (one piece)."""
        buf: npt.NDArray[np.uint8] | None = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = np.empty(self.read_piece_pages * PAGE_SIZE_BYTES, np.uint8)
        return buf

    def start_threads(self) -> None:
        """Start the reading threads now, each with the capture's scheduling.

        A pool starts its threads on first use; during a snapshot a new thread would run
        as an ordinary thread until its first task (on a busy host, tens of ms late) and
        would inherit the runtime left in the starting thread's deadline reservation.
        Started in the warm-up's burst, they are idle and ready when the snapshot begins.
        """
        if self.threads <= 1:
            return
        pool = self._executor()
        arrived = threading.Barrier(self.threads)

        def arrive() -> None:  # every task waits for the others: each gets its own thread
            if self.pacer is not None:
                self.pacer.apply()
            with contextlib.suppress(threading.BrokenBarrierError):
                arrived.wait(timeout=START_TIMEOUT_S)

        wait([pool.submit(arrive) for _ in range(self.threads)])

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="ksm-capture")
        return self._pool

    def close(self) -> None:
        """Stop the reader's threads (the reader can still be used: they start again)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


#: Kinds of mappings without a file behind them (read before smaps is, see
#: :meth:`ProcessReader._capture_pages`).
ANONYMOUS_KINDS: Final = frozenset({"anon", "anon_named", "bss", "heap", "stack"})


def _may_hold_anonymous(e: MapEntry) -> bool:
    """False when smaps shows no anonymous and no swapped page in this mapping."""
    return not (e.smaps_kb("Anonymous") == 0 and e.smaps_kb("Swap") == 0)


def _skipped_by_flags(e: MapEntry) -> bool:
    """Whether smaps' VmFlags put this mapping among those never captured
    (:data:`vma.SKIP_VM_FLAGS`: hugetlb, I/O, PFN map); ``maps`` does not show them."""
    flags = e.vm_flags
    return flags is not None and bool(flags & V.SKIP_VM_FLAGS)


def _without(
    kept: list[tuple[MapEntry, str]],
    spans: list[tuple[int, int, int]],
    w: WindowRows,
    skip: npt.NDArray[np.bool_],
) -> tuple[list[tuple[MapEntry, str]], list[tuple[int, int, int]], WindowRows]:
    """``kept``, ``spans`` and the rows of ``w`` without the mappings marked in ``skip``
    (mapping indexes renumbered)."""
    renumber = np.cumsum(~skip) - 1
    rows = np.flatnonzero(~skip[w.owner])
    w = w.take(rows)
    w.owner = renumber[w.owner].astype(np.intp)
    kept = [k for k, s in zip(kept, skip.tolist(), strict=True) if not s]
    spans = [(int(renumber[i]), lo, hi) for i, lo, hi in spans if not skip[i]]
    return kept, spans, w


def needs_frame_flags(e: MapEntry) -> bool:
    """Whether pages of this mapping can be KSM pages, huge pages or the huge zero page.

    smaps says so per mapping: ``KSM:`` counts its KSM pages, ``AnonHugePages:`` its
    transparent huge pages, and only a THP-eligible mapping can map the huge zero page. A
    mapping with ``KSM: 0 kB``, ``AnonHugePages: 0 kB`` and ``THPeligible: 0`` had none of
    them when smaps was read, about when its pagemap was: its frames need no ``kpageflags``
    lookup (docs/capture.md §4.12). Without smaps every frame is looked up.
    """
    thp = e.smaps_value("THPeligible")
    return not (e.smaps_kb("KSM") == 0 and e.smaps_kb("AnonHugePages") == 0 and thp == "0")


def _windows(
    spans: list[tuple[int, int, int]], window_pages: int
) -> Iterator[tuple[int, int, list[tuple[int, int, int]]]]:
    """Group sorted ``(index, first, end)`` spans into pagemap reads.

    Yields ``(first, count, members)``: one read of ``count`` entries from page ``first``
    covering the member spans (clipped to the window). Spans closer than
    :data:`PAGEMAP_GAP_PAGES` share a read; no read exceeds ``window_pages`` entries.
    """
    cur_first = cur_end = -1
    members: list[tuple[int, int, int]] = []
    for index, lo, hi in spans:
        while lo < hi:
            if members and lo - cur_end <= PAGEMAP_GAP_PAGES and lo + 1 - cur_first <= window_pages:
                piece_end = min(hi, cur_first + window_pages)
            else:
                if members:
                    yield cur_first, cur_end - cur_first, members
                members = []
                cur_first = lo
                piece_end = min(hi, lo + window_pages)
            members.append((index, lo, piece_end))
            cur_end = piece_end
            lo = piece_end
    if members:
        yield cur_first, cur_end - cur_first, members


def _mapping_row(e: MapEntry, kind: str, present_pages: int) -> dict[str, Any]:
    flags = e.vm_flags
    thp = e.smaps_value("THPeligible")
    return {
        "start": e.start,
        "end": e.end,
        "perms": e.perms,
        "kind": kind,
        "path": e.path or None,
        "offset": e.offset,
        "mergeable": ("mg" in flags) if flags is not None else None,
        "thp_eligible": (thp.strip() == "1") if thp is not None else None,
        "anon_huge_kb": e.smaps_kb("AnonHugePages"),
        "ksm_kb": e.smaps_kb("KSM"),
        "present_pages": present_pages,
    }


def _argv_text(cmdline: bytes) -> str:
    return " ".join(a.decode("utf-8", "backslashreplace") for a in cmdline.split(b"\0"))


__all__ = ["PTRACE_HINT", "ProcessCapture", "ProcessReader", "Timings"]
