"""Canary mode of ``observe``: which pages are KSM pages, and merges lost to writes.

A capture taken before ksmd runs cannot see how often a merged page is written: on kernels
without soft-dirty tracking (docs/capture.md §9.3) a write that leaves a page's bytes as they
were is invisible to content sampling, yet it breaks the merge (a copy-on-write fault,
``cow_ksm`` in ``/proc/vmstat``; docs/kernel-semantics.md §6.1). With KSM on, a canary host
shows it directly. At every sample of ``observe --ksm-pages`` (:class:`Canary`), for each
sampled process:

* its private mappings' pagemap gives every present page's frame, and ``/proc/kpageflags``
  (``KPF_KSM``, bit 21) says which frames are KSM pages -- the page's KSM state now;
* a page that was a KSM page at the previous sample and is not now **lost its merge**: it
  was written (or unmapped, or unmerged). The capture reads its content now and compares it
  with the content of the KSM page it had (hashed once per KSM frame, when the frame was
  first seen): equal means a write that left the content unchanged -- the copy-on-write breaks
  a pre-KSM capture cannot predict on such kernels;
* a page that was not a KSM page and is now **gained** a merge.

Nothing is written anywhere but the recording: contents are read through
``/proc/<pid>/mem`` (never ``process_vm_readv``, which would unshare KSM pages,
docs/capture.md §4.16) and only present pages are read. Hashes are keyed with a key made
for this run and thrown away: the recording holds no hash.

What is recorded (files of the recording, format in :mod:`planner.trace.recording`): per
sample and process, the counts (``canary.parquet``); per page and state change, one event
(``page_events.parquet``: merged, unmerged with the content unchanged or changed, unmapped),
with the page's address, its mapping's kind and start, so that write rates can be calibrated
per page or per class of page (process role, mapping kind, offset in the mapping: a class
that another run of the workload has too). Each process row carries its CPU seconds, which
tell a busy process from an idle one of the same name. The first sample records every KSM
page it finds as ``merged``: the events give each page's KSM state at every sample.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from planner.capture import vma as V
from planner.capture.hashing import PageHasher
from planner.capture.keys import CaptureKey
from planner.capture.kpage import KPageReader
from planner.capture.procfs import (
    KPF_KSM,
    PAGE_SIZE_BYTES,
    PM_FILE_BIT,
    PM_PFN_MASK,
    PM_PRESENT_BIT,
    ProcessGone,
    parse_maps,
)
from planner.capture.snapshot import ProcessReader
from planner.errors import CapturePermissionError

if TYPE_CHECKING:
    from planner.capture.procfs import ProcFS

#: Event names of ``page_events.parquet``.
MERGED: Final = "merged"
UNMERGED_SAME: Final = "unmerged_same_content"
UNMERGED_CHANGED: Final = "unmerged_changed"
UNMERGED: Final = "unmerged"
"""Lost its merge; its content could not be compared (the KSM page was never read)."""
UNMAPPED: Final = "unmapped"
EVENTS: Final = (MERGED, UNMERGED_SAME, UNMERGED_CHANGED, UNMERGED, UNMAPPED)
_U64 = np.uint64
_PFN = _U64(PM_PFN_MASK)


@dataclass
class _PageState:
    """The KSM pages of one process at the previous sample."""

    start_ticks: int
    vpn: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    pfn: npt.NDArray[np.uint64] = field(default_factory=lambda: np.zeros(0, np.uint64))
    kind: list[str] = field(default_factory=list)
    vma_start: npt.NDArray[np.uint64] = field(default_factory=lambda: np.zeros(0, np.uint64))


class Canary:
    """Per-page KSM state of the sampled processes, sample after sample (see module notes).

    Use as a context manager (it holds ``/proc/kpageflags`` open).
    """

    def __init__(self, procfs: ProcFS) -> None:
        self.procfs = procfs
        self.hasher = PageHasher(CaptureKey.from_bytes(os.urandom(32)))
        self.reader = ProcessReader(procfs, self.hasher, threads=1)
        self.kpage = KPageReader(procfs)
        self._state: dict[int, _PageState] = {}
        self._ksm_hash: dict[int, int] = {}  # KSM frame -> keyed hash of its content
        self.totals = dict.fromkeys(EVENTS, 0)
        self._ticks_per_s = float(os.sysconf("SC_CLK_TCK"))

    def __enter__(self) -> Canary:
        self.kpage.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kpage.__exit__(*exc)
        self.reader.close()

    # ------------------------------------------------------------------ one sample

    def sample(
        self, pids: list[int], sample: int, t_s: float
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Look at ``pids`` now: per-process rows and page events of sample ``sample``."""
        rows: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        live = set()
        ksm_pfns_seen: set[int] = set()
        for pid in pids:
            try:
                got = self._process(pid, sample, t_s, events, ksm_pfns_seen)
            except (ProcessGone, CapturePermissionError, OSError):
                got = None
            if got is not None:
                rows.append(got)
                live.add(pid)
        for pid in set(self._state) - live:  # exited, or no longer sampled
            del self._state[pid]
        # a KSM frame no process maps as KSM any more may be freed and reused: forget it
        for pfn in set(self._ksm_hash) - ksm_pfns_seen:
            del self._ksm_hash[pfn]
        for e in events:
            self.totals[e["event"]] += 1
        return rows, events

    def _process(
        self,
        pid: int,
        sample: int,
        t_s: float,
        events: list[dict[str, Any]],
        ksm_pfns_seen: set[int],
    ) -> dict[str, Any] | None:
        fs = self.procfs
        st = fs.stat(pid)
        if st.is_dead or st.is_kernel_thread:
            return None
        prev = self._state.get(pid)
        if prev is not None and prev.start_ticks != st.starttime_ticks:
            prev = None  # the pid names another process now
        entries = parse_maps(fs.text(pid, "maps"))
        spans: list[tuple[int, int, int]] = []
        kinds: list[str] = []
        starts: list[int] = []
        before = None
        for e in entries:
            kind = V.classify(e, before, lambda path: ())  # no bss check: "anon" will do
            before = e
            if kind is None:
                continue
            spans.append((len(kinds), e.start // PAGE_SIZE_BYTES, e.end // PAGE_SIZE_BYTES))
            kinds.append(kind)
            starts.append(e.start)
        pm_fd = fs.open_pagemap(pid)
        try:
            vpn, entry, owner = self.reader.pagemap(pm_fd, spans, pid)
        finally:
            os.close(pm_fd)
        present = ((entry >> _U64(PM_PRESENT_BIT)) & _U64(1)) == 1
        present &= ((entry >> _U64(PM_FILE_BIT)) & _U64(1)) == 0
        vpn, pfn, owner = vpn[present], entry[present] & _PFN, owner[present]
        uniq, inverse = np.unique(pfn, return_inverse=True)
        flags, _counts = self.kpage.lookup(uniq, count=np.zeros(len(uniq), bool))
        is_ksm = (((flags >> _U64(KPF_KSM)) & _U64(1)) == 1)[inverse.reshape(-1)]
        ksm_vpn, ksm_pfn = vpn[is_ksm], pfn[is_ksm]
        ksm_kind = [kinds[i] for i in owner[is_ksm].tolist()]
        ksm_start = np.array(starts, np.uint64)[owner[is_ksm]] if starts else np.zeros(0, _U64)
        self._hash_new_frames(pid, ksm_vpn, ksm_pfn)
        ksm_pfns_seen.update(ksm_pfn.tolist())

        counts = dict.fromkeys(EVENTS, 0)

        def event(name: str, addr: int, kind: str, vma_start: int) -> None:
            counts[name] += 1
            events.append(
                {
                    "sample": sample,
                    "t_s": t_s,
                    "pid": pid,
                    "page_addr": addr * PAGE_SIZE_BYTES,
                    "vma_kind": kind,
                    "event": name,
                    "vma_start": vma_start,
                }
            )

        old_vpn = prev.vpn if prev is not None else np.zeros(0, np.int64)
        gained = ~np.isin(ksm_vpn, old_vpn)
        for v, k, a in zip(
            ksm_vpn[gained].tolist(),
            np.array(ksm_kind)[gained].tolist(),
            ksm_start[gained].tolist(),
            strict=True,
        ):
            event(MERGED, v, k, a)
        if prev is not None and len(old_vpn):
            lost = ~np.isin(old_vpn, ksm_vpn)
            lost_vpn, lost_pfn = old_vpn[lost], prev.pfn[lost]
            lost_kind = [k for k, flag in zip(prev.kind, lost.tolist(), strict=True) if flag]
            here = np.isin(lost_vpn, vpn)
            self._judge(pid, lost_vpn, lost_pfn, lost_kind, prev.vma_start[lost], here, event)
        self._state[pid] = _PageState(
            start_ticks=st.starttime_ticks,
            vpn=ksm_vpn,
            pfn=ksm_pfn,
            kind=ksm_kind,
            vma_start=ksm_start,
        )
        return {
            "sample": sample,
            "t_s": t_s,
            "pid": pid,
            "present_pages": len(vpn),
            "ksm_pages": len(ksm_vpn),
            "merged": counts[MERGED],
            "unmerged_same_content": counts[UNMERGED_SAME],
            "unmerged_changed": counts[UNMERGED_CHANGED],
            "unmerged": counts[UNMERGED],
            "unmapped": counts[UNMAPPED],
            "cpu_s": (st.utime_ticks + st.stime_ticks) / self._ticks_per_s,
        }

    def _hash_new_frames(
        self, pid: int, vpn: npt.NDArray[np.int64], pfn: npt.NDArray[np.uint64]
    ) -> None:
        """Hash one page of each KSM frame not seen before (its content never changes)."""
        if not len(pfn):
            return
        _, first = np.unique(pfn, return_index=True)
        new = [i for i in first.tolist() if int(pfn[i]) not in self._ksm_hash]
        if not new:
            return
        pick = np.sort(np.array(new, np.int64))
        hashes, error = self.reader.read_pages(pid, vpn[pick])
        for i, h, bad in zip(pick.tolist(), hashes.tolist(), error.tolist(), strict=True):
            if not bad:
                self._ksm_hash[int(pfn[i])] = int(h)

    def _judge(
        self,
        pid: int,
        vpn: npt.NDArray[np.int64],
        old_pfn: npt.NDArray[np.uint64],
        kinds: list[str],
        starts: npt.NDArray[np.uint64],
        present: npt.NDArray[np.bool_],
        event: Any,
    ) -> None:
        """Merges lost since the previous sample: content unchanged, changed, or unmapped."""
        gone = ~present
        for v, k, a in zip(
            vpn[gone].tolist(), np.array(kinds)[gone].tolist(), starts[gone].tolist(), strict=True
        ):
            event(UNMAPPED, v, k, a)
        if not present.any():
            return
        here_vpn = vpn[present]
        order = np.argsort(here_vpn)
        hashes, error = self.reader.read_pages(pid, here_vpn[order])
        here_pfn = old_pfn[present][order]
        here_kind = np.array(kinds)[present][order].tolist()
        here_start = starts[present][order].tolist()
        for v, h, bad, p, k, a in zip(
            here_vpn[order].tolist(),
            hashes.tolist(),
            error.tolist(),
            here_pfn.tolist(),
            here_kind,
            here_start,
            strict=True,
        ):
            was = self._ksm_hash.get(int(p))
            if bad or was is None:
                event(UNMERGED, v, k, a)
            else:
                event(UNMERGED_SAME if int(h) == was else UNMERGED_CHANGED, v, k, a)


__all__ = [
    "EVENTS",
    "MERGED",
    "UNMAPPED",
    "UNMERGED",
    "UNMERGED_CHANGED",
    "UNMERGED_SAME",
    "Canary",
]
