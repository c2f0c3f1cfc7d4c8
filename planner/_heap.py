"""The C library's heap while a replay runs: freed memory kept for the next array, then
given back once.

A replay allocates and frees arrays of one snapshot's size over and over (the decoded pages,
the sorted rows, the delta, the engine's moved state). With glibc's defaults each freed block
goes back to the system -- :func:`release_memory` trims the heap, and a block above the
mmap threshold is unmapped -- and the next array of the same size is faulted in and zeroed
again, page by page: 663-676 k page faults and 2.0-2.8 s of system time of the 4 M-page
command (docs/engine.md, "Speed and memory"). Inside :func:`retained_heap` blocks up to
32 MiB come from the heap and stay there when freed, so the next array reuses them without
a fault (408-436 k faults, 0.8-1.4 s); on the way out the heap is trimmed once. The peak
resident size grows by what no later array reuses (1.55-1.59 GB -> 1.70-1.72 GB there).

Elsewhere than glibc nothing is changed and :func:`release_memory` does nothing.

numpy asks the kernel for transparent huge pages (``madvise``) for every array of 4 MiB or
more. :func:`normal_pages` turns that off while arrays that are written once and soon freed
are made (``prepare``), and :func:`state_pages` while the engine's state is allocated on a
machine where a fresh huge page is cold (:func:`huge_pages_are_cold`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

#: mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: glibc's largest mmap threshold on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX), the value
#: its dynamic threshold reaches once a replay freed one snapshot-sized array; the trim
#: threshold glibc then sets is twice that
MMAP_THRESHOLD_MAX = 32 << 20
#: a trim threshold no heap top reaches (mallopt takes a C int)
NEVER_TRIM = (1 << 31) - 1


def _libc() -> Any | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018 - both must exist (glibc)
    except (OSError, AttributeError):  # not glibc
        return None
    return libc


_LIBC = _libc()
_LOCK = threading.Lock()
_retaining = 0  # retained_heap blocks open (nested or in several threads)


def release_memory() -> None:
    """Give the arrays freed so far back to the system (outside :func:`retained_heap`).

    glibc raises its mmap threshold after large blocks are freed, so the old row arrays
    of one snapshot stay in the heap as free space and the resident size only grows; a
    trim returns them (a few ms). Inside :func:`retained_heap` they are kept for reuse.
    """
    if _LIBC is not None and not _retaining:
        _LIBC.malloc_trim(0)


@contextlib.contextmanager
def retained_heap() -> Iterator[None]:
    """Freed blocks of up to :data:`MMAP_THRESHOLD_MAX` stay in the heap while the block
    runs (see the module notes); then the heap is trimmed and the trim threshold is glibc's
    again. The mmap threshold stays at :data:`MMAP_THRESHOLD_MAX`, where glibc's own
    dynamic threshold goes after the first large array is freed."""
    global _retaining
    if _LIBC is None:
        yield
        return
    with _LOCK:
        if not _retaining:
            _LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
            _LIBC.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM)
        _retaining += 1
    try:
        yield
    finally:
        with _LOCK:
            _retaining -= 1
            if not _retaining:
                _LIBC.mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD_MAX)
                _LIBC.malloc_trim(0)


#: Rows of an input above which a what-if worker replays it without :func:`retained_heap`:
#: the blocks no later array reuses add ~10 % to the peak, and a 16 M-page host in a 4 GiB
#: Dask worker (3.8 GB without them) then no longer fits (measured: the worker was killed).
RETAIN_MAX_ROWS = 1 << 22


def retained_heap_below(rows: int) -> contextlib.AbstractContextManager[None]:
    """:func:`retained_heap` for work on an input of ``rows`` rows up to
    :data:`RETAIN_MAX_ROWS`; above, glibc's defaults (the smaller peak)."""
    return retained_heap() if rows <= RETAIN_MAX_ROWS else contextlib.nullcontext()


_PAGES_LOCK = threading.Lock()
_normal = 0  # normal_pages blocks open (nested or in several threads)
_huge_before = True  # numpy's switch before the outermost block


def _madvise_switch() -> Any | None:
    try:
        from numpy._core.multiarray import (  # type: ignore[attr-defined]
            _set_madvise_hugepage,
        )
    except ImportError:  # pragma: no cover - numpy without the switch
        return None
    return _set_madvise_hugepage


@contextlib.contextmanager
def normal_pages() -> Iterator[None]:
    """Arrays allocated inside get normal pages: numpy's ``madvise`` for transparent huge
    pages is off while the block runs (nested or in several threads: off until the last
    one ends, then as it was). Each fresh huge page is zeroed whole when first touched,
    2 MiB at a time: for arrays written once and freed soon (``prepare``) that was 40 %
    of the 4 M-page replay's CPU (``clear_page_erms`` under ``do_huge_pmd_anonymous_page``,
    docs/engine.md "Speed and memory"). The switch is numpy's, for the whole process."""
    global _normal, _huge_before
    switch = _madvise_switch()
    if switch is None:  # pragma: no cover - numpy without the switch
        yield
        return
    with _PAGES_LOCK:
        if not _normal:
            _huge_before = bool(switch(False))
        _normal += 1
    try:
        yield
    finally:
        with _PAGES_LOCK:
            _normal -= 1
            if not _normal:
                switch(_huge_before)


#: virtio's feature bit of a balloon device that reports free pages to its host
#: (VIRTIO_BALLOON_F_REPORTING, include/uapi/linux/virtio_balloon.h)
BALLOON_F_REPORTING = 5


@functools.cache
def huge_pages_are_cold(sys_root: Path = Path("/sys")) -> bool:
    """Whether this machine is a virtual machine whose free memory goes back to its host in
    blocks of a huge page or more (a virtio balloon with free page reporting, whose
    ``features`` in sysfs have bit :data:`BALLOON_F_REPORTING` set).

    There a transparent huge page comes from such a block, which the host backs again
    page by page when it is first touched: 2.5-4 ms per MB on this project's VMs, against
    0.14 for a normal page the guest freed a moment before (docs/engine.md, "2026-12-05:
    what a fresh page costs"). Read once per process; False when sysfs says nothing."""
    try:
        devices = sorted((sys_root / "bus/virtio/drivers/virtio_balloon").glob("virtio*"))
        for dev in devices:
            bits = (dev / "features").read_text().strip()
            if len(bits) > BALLOON_F_REPORTING and bits[BALLOON_F_REPORTING] == "1":
                return True
    except OSError:
        return False
    return False


def state_pages() -> contextlib.AbstractContextManager[None]:
    """Where tables that live long and are read at random are allocated (the fast engine's
    state at each snapshot's application, ``info``'s dense-id tables):
    :func:`normal_pages` on a machine where huge pages are cold, else numpy's default.
    Huge pages make the kernel's random accesses 2-8 % faster (fewer TLB misses); where
    they are cold, faulting them in cost the 4 M-page replay 0.5-0.7 s of its ~4.5 s, and
    ``info`` on its 12 M rows 0.5-1.2 s of 1.8-2.6."""
    return normal_pages() if huge_pages_are_cold() else contextlib.nullcontext()


__all__ = [
    "RETAIN_MAX_ROWS",
    "huge_pages_are_cold",
    "normal_pages",
    "release_memory",
    "retained_heap",
    "retained_heap_below",
    "state_pages",
]
