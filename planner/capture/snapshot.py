"""Capture the anonymous pages of one process: pagemap first, then only present pages.

For each kept mapping (see :mod:`planner.capture.vma`) the pagemap is read in windows of
``window_pages`` entries and decoded with numpy. The pages to record are the present,
anonymous ones (pagemap file bit 61 clear; in file mappings these are the copy-on-write
copies), minus PTEs of the shared zero page. Their contents are read from
``/proc/<pid>/mem`` with one ``preadv`` per run of contiguous recorded pages into one reused
buffer, so nothing that is not present is ever touched (reading a hole or a swapped page
would fault it in, docs/capture.md §4.2). Each page is hashed with the capture key.
Swapped anonymous pages become rows without hash or frame. The pagemap window is read
again after the contents; pages whose PFN or present bit changed are flagged ``RACY``.

Frame ids, the kpageflags-based flags and the Arrow tables are made per snapshot by
:mod:`planner.capture.session`; this module returns raw arrays (with raw PFNs, which never
leave the capture).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from planner._progress import NULL_PROGRESS, Progress
from planner.capture import vma as V
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
    from planner.capture.hashing import PageHasher

DEFAULT_WINDOW_PAGES: Final = 1 << 16  # 512 KiB of pagemap per read
DEFAULT_READ_CHUNK_PAGES: Final = 512  # 2 MiB per preadv

_U64 = np.uint64
_PFN_MASK = _U64(PM_PFN_MASK)
_FILE_KINDS: Final = frozenset({"file_data", "file_relro", "file_text"})

PFN_HIDDEN_HINT: Final = (
    "run as root or grant CAP_SYS_ADMIN: without it the kernel reports every PFN in "
    "/proc/<pid>/pagemap as 0, so shared frames cannot be told apart"
)


@dataclass
class Timings:
    """Seconds spent per capture phase (summed over processes and snapshots)."""

    maps_s: float = 0.0
    pagemap_s: float = 0.0
    read_s: float = 0.0
    hash_s: float = 0.0
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
    timings: Timings = field(default_factory=Timings)

    def __post_init__(self) -> None:
        self._buf = bytearray(self.read_chunk_pages * PAGE_SIZE_BYTES)
        self._mv = memoryview(self._buf)

    # ----------------------------------------------------------------- one process

    def capture(
        self, pid: int, *, proc_start: int | None = None, progress: Progress = NULL_PROGRESS
    ) -> ProcessCapture:
        """Capture ``pid``; ``proc_start`` (if given) must match, else the process is gone.

        Returns a :class:`ProcessCapture` with state ``ok``, or ``gone`` if the process
        exited (or the pid was reused) before or while it was read.

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
            pc.info = self._process_info(st)
            self._capture_pages(pc, progress)
            # A process that exits while it is read gives short reads, not errors: check.
            st2 = self.procfs.stat(pid)
            if st2.is_dead or st2.starttime_ticks != st.starttime_ticks:
                raise ProcessGone(pid)
        except ProcessGone:
            return ProcessCapture(
                pid=pid,
                proc_start=st.starttime_ticks,
                state="gone",
                info=pc.info,
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
        }
        self.timings.meta_s += time.perf_counter() - t
        return info

    def _capture_pages(self, pc: ProcessCapture, progress: Progress) -> None:
        fs, pid = self.procfs, pc.pid
        t = time.perf_counter()
        entries = fs.mappings(pid)
        kept: list[tuple[MapEntry, str]] = []
        prev: MapEntry | None = None
        for e in entries:
            kind = V.classify(e, prev, lambda path: V.cached_bss_segments(fs.elf_path(pid, path)))
            if kind is not None:
                kept.append((e, kind))
            prev = e
        self.timings.maps_s += time.perf_counter() - t
        if not kept:
            return
        parts: list[tuple[npt.NDArray[np.uint64], ...]] = []
        flag_parts: list[npt.NDArray[np.uint16]] = []
        counters = _Counters()
        pm_fd = fs.open_pagemap(pid)
        try:
            mem_fd = fs.open_mem(pid)
            try:
                for e, kind in kept:
                    before = counters.present
                    if (
                        kind in _FILE_KINDS
                        and e.smaps_kb("Anonymous") == 0
                        and e.smaps_kb("Swap") == 0
                    ):
                        pass  # smaps says the mapping holds no anonymous page: nothing to record
                    else:
                        for first in range(
                            e.start // PAGE_SIZE_BYTES, e.end // PAGE_SIZE_BYTES, self.window_pages
                        ):
                            count = min(self.window_pages, e.end // PAGE_SIZE_BYTES - first)
                            got = self._window(pm_fd, mem_fd, e.start, first, count, counters)
                            if got is None:
                                raise ProcessGone(pid)
                            arrays, flags = got
                            if len(flags):
                                parts.append(arrays)
                                flag_parts.append(flags)
                                progress.advance(len(flags))
                    pc.mappings.append(_mapping_row(e, kind, counters.present - before))
            finally:
                _close(mem_fd)
        finally:
            _close(pm_fd)
        if counters.present and counters.present == counters.pfn_zero:
            raise CapturePermissionError(
                f"pagemap of pid {pid} shows {counters.present} present pages but every PFN is 0 "
                "(PFNs are hidden without CAP_SYS_ADMIN)",
                hint=PFN_HIDDEN_HINT,
            )
        pc.zero_pfn_pages = counters.zero_pfn
        if parts:
            pc.addr, pc.vma_start, pc.content_hash, pc.pfn = (
                np.concatenate(c) for c in zip(*parts, strict=True)
            )
            pc.flags = np.concatenate(flag_parts)

    # ----------------------------------------------------------------- one pagemap window

    def _window(
        self, pm_fd: int, mem_fd: int, vma_start: int, first: int, count: int, counters: _Counters
    ) -> tuple[tuple[npt.NDArray[np.uint64], ...], npt.NDArray[np.uint16]] | None:
        """Record the pages of ``count`` virtual pages from page number ``first``.

        Returns ``((addr, vma_start, hash, pfn), flags)`` or ``None`` if the pagemap read
        came back short (the process is exiting).
        """
        fs = self.procfs
        t = time.perf_counter()
        pm = fs.read_pagemap(pm_fd, first, count)
        self.timings.pagemap_s += time.perf_counter() - t
        if len(pm) != count:
            return None
        present = (pm >> _U64(PM_PRESENT_BIT)).astype(bool)
        anon = ((pm >> _U64(PM_FILE_BIT)) & _U64(1)) == 0
        pfn = pm & _PFN_MASK
        present_anon = present & anon
        n_present = int(np.count_nonzero(present_anon))
        if n_present:
            counters.present += n_present
            counters.pfn_zero += int(np.count_nonzero(pfn[present_anon] == 0))
        record = present_anon
        if self.zero_pfn is not None and n_present:
            zp = present_anon & (pfn == _U64(self.zero_pfn))
            nz = int(np.count_nonzero(zp))
            if nz:
                counters.zero_pfn += nz
                counters.present -= nz
                record = present_anon & ~zp
        swapped = ((pm >> _U64(PM_SWAP_BIT)) & _U64(1)).astype(bool) & ~present & anon
        rec_idx = np.flatnonzero(record)
        swp_idx = np.flatnonzero(swapped)
        if len(rec_idx) == 0 and len(swp_idx) == 0:
            return (), np.empty(0, np.uint16)

        hashes, read_error = self._read_runs(mem_fd, first, rec_idx)

        if len(rec_idx):  # PTE re-check: PFN or present bit changed while we read
            t = time.perf_counter()
            pm2 = fs.read_pagemap(pm_fd, first, count)
            self.timings.pagemap_s += time.perf_counter() - t
            if len(pm2) != count:
                return None
            racy = ((pm2[rec_idx] ^ pm[rec_idx]) & (_PFN_MASK | _U64(1 << PM_PRESENT_BIT))) != 0
        else:
            racy = np.zeros(0, bool)

        idx = np.concatenate((rec_idx, swp_idx))
        order = np.argsort(idx, kind="stable") if len(swp_idx) else None
        entry = pm[idx]
        flags = np.zeros(len(idx), np.uint16)
        flags |= (((entry >> _U64(PM_EXCLUSIVE_BIT)) & _U64(1)) * _U64(PageFlag.EXCLUSIVE)).astype(
            np.uint16
        )
        flags |= (
            ((entry >> _U64(PM_SOFT_DIRTY_BIT)) & _U64(1)) * _U64(PageFlag.SOFT_DIRTY)
        ).astype(np.uint16)
        nrec = len(rec_idx)
        flags[:nrec] |= np.where(racy, np.uint16(PageFlag.RACY), np.uint16(0))
        flags[:nrec] |= np.where(read_error, np.uint16(PageFlag.READ_ERROR), np.uint16(0))
        is_zero = (hashes == _U64(self.hasher.zero_hash)) & ~read_error
        flags[:nrec] |= np.where(is_zero, np.uint16(PageFlag.ZERO), np.uint16(0))
        flags[nrec:] |= np.uint16(PageFlag.SWAPPED)
        page_hash = np.concatenate((hashes, np.zeros(len(swp_idx), np.uint64)))
        page_pfn = np.concatenate((pfn[rec_idx], np.zeros(len(swp_idx), np.uint64)))
        addr = (idx.astype(np.uint64) + _U64(first)) * _U64(PAGE_SIZE_BYTES)
        if order is not None:
            addr, page_hash, page_pfn, flags = (
                addr[order],
                page_hash[order],
                page_pfn[order],
                flags[order],
            )
        return (addr, np.full(len(idx), vma_start, np.uint64), page_hash, page_pfn), flags

    def _read_runs(
        self, mem_fd: int, first: int, rec_idx: npt.NDArray[np.intp]
    ) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.bool_]]:
        """Read and hash the pages ``first + rec_idx`` (sorted), one ``preadv`` per run."""
        n = len(rec_idx)
        read_error = np.zeros(n, bool)
        if n == 0:
            return np.zeros(0, np.uint64), read_error
        chunk = self.read_chunk_pages
        breaks = np.flatnonzero(np.diff(rec_idx) != 1) + 1
        starts = np.concatenate(([0], breaks)).tolist()
        ends = np.concatenate((breaks, [n])).tolist()
        base = rec_idx.tolist()
        hashes: list[int] = []
        pread, hash_pages = self.procfs.pread_into, self.hasher.hash_pages
        mv, ps = self._mv, PAGE_SIZE_BYTES
        t_read = t_hash = 0.0
        for s, e in zip(starts, ends, strict=True):
            page0 = first + base[s]
            for off in range(0, e - s, chunk):
                k = min(chunk, e - s - off)
                addr = (page0 + off) * ps
                t = time.perf_counter()
                try:
                    got = pread(mem_fd, mv[: k * ps], addr)
                except OSError:
                    got = 0
                t2 = time.perf_counter()
                t_read += t2 - t
                if got == k * ps:
                    hashes.extend(hash_pages(mv, k))
                    t_hash += time.perf_counter() - t2
                else:
                    hashes.extend(self._read_pages_one_by_one(mem_fd, addr, k, s + off, read_error))
        self.timings.read_s += t_read
        self.timings.hash_s += t_hash
        return np.array(hashes, dtype=np.uint64), read_error

    def _read_pages_one_by_one(
        self, mem_fd: int, addr: int, k: int, row0: int, read_error: npt.NDArray[np.bool_]
    ) -> list[int]:
        """Fallback after a failed or short run read: page by page, flagging failures."""
        ps, mv = PAGE_SIZE_BYTES, self._mv
        out: list[int] = []
        for i in range(k):
            try:
                got = self.procfs.pread_into(mem_fd, mv[:ps], addr + i * ps)
            except OSError:
                got = 0
            if got == ps:
                out.append(self.hasher.hash_bytes(mv[:ps]))
            else:
                out.append(0)
                read_error[row0 + i] = True
        return out


@dataclass
class _Counters:
    present: int = 0  # present anonymous pages seen (excluding zero-page PTEs)
    pfn_zero: int = 0  # ... of which PFN read as 0 (PFNs hidden)
    zero_pfn: int = 0  # PTEs mapping the shared zero page


def _mapping_row(e: MapEntry, kind: str, present_pages: int) -> dict[str, Any]:
    flags = e.vm_flags
    thp = e.smaps.get("THPeligible") if e.smaps else None
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


def _close(fd: int) -> None:
    os.close(fd)


__all__ = ["PTRACE_HINT", "ProcessCapture", "ProcessReader", "Timings"]
