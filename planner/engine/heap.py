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
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
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


__all__ = ["RETAIN_MAX_ROWS", "release_memory", "retained_heap", "retained_heap_below"]
