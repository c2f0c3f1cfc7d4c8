"""Read many scattered pages of another process quickly, without changing it, and hash them.

The capture reads only the present anonymous pages of a process (docs/capture.md §4.2),
which in an interpreter's heap come in short runs: in 32 small Python processes the runs
averaged three pages, so the cost of a capture was one ``preadv`` of ``/proc/<pid>/mem``
called from Python per three pages. Here the pages of a process are read in chunks of up
to :data:`CHUNK_PAGES` pages (4 MiB): one compiled loop (numba, no GIL held) calls
``pread`` once per run of the chunk straight into one buffer, and one compiled call hashes
the chunk (:mod:`planner.capture.xxh3`). Chunks of one process are read and hashed by a
small pool of threads at once.

**Why not ``process_vm_readv``.** It reads scattered ranges in one system call and moved
2-2.6 times more bytes per second than ``/proc/<pid>/mem`` here, but it pins the pages it
reads (``FOLL_PIN``), and pinning an anonymous page that is not exclusive to the process --
every page still shared with a parent or child since a fork -- makes the kernel *unshare* it
first: it copies the page. Measured here: two fork-shared pages of a child got new frames
after one ``process_vm_readv`` of them, while a ``pread`` of ``/proc/<pid>/mem`` left the
next two shared (docs/capture.md §4.16). A capture that breaks fork sharing changes the very
memory it measures, so only ``/proc/<pid>/mem`` is read (``FOLL_GET``, never an unshare).

A run that comes back short (the page vanished, a mapping without read permission) is read
again page by page through :meth:`~planner.capture.procfs.ProcFS.pread_into`; a page that
still fails is flagged ``READ_ERROR``.
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast

import numpy as np
import numpy.typing as npt

from planner.capture.procfs import MAX_FILE_OFFSET, PAGE_SIZE_BYTES
from planner.capture.xxh3 import hash_pages

if TYPE_CHECKING:
    from collections.abc import Callable

    from planner.capture.procfs import ProcFS
    from planner.capture.xxh3 import PageSecret

#: Pages read and hashed per chunk (4 MiB).
CHUNK_PAGES: Final = 1024

_I64 = np.int64
_PREAD_LOCK = threading.Lock()


def _pread_loop(
    pread: Any, fd: int, base: int, local: Any, remote: Any, lengths: Any
) -> int:  # pragma: no cover - compiled
    """``pread`` each run into ``base + local[i]``; the index of the first short run."""
    for i in range(len(local)):
        if pread(fd, base + local[i], lengths[i], remote[i]) != lengths[i]:
            return i
    return len(local)


_LOOP: Callable[..., int] | None = None


def _loop() -> Callable[..., int]:
    """The compiled loop (compiled, or loaded from numba's cache, on first use)."""
    global _LOOP
    with _PREAD_LOCK:
        if _LOOP is None:
            import numba

            _LOOP = cast("Callable[..., int]", numba.njit(nogil=True, cache=True)(_pread_loop))
        return _LOOP


_PREAD: Any = None


def _libc_pread() -> Any:
    """libc's ``pread`` as a ctypes function (passed to the compiled loop as an argument,
    which keeps the loop cacheable: a function pointer baked in would not be)."""
    global _PREAD
    with _PREAD_LOCK:
        if _PREAD is None:
            fn = ctypes.CDLL(None, use_errno=True).pread
            fn.restype = ctypes.c_ssize_t
            fn.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64)
            _PREAD = fn
        return _PREAD


def pread_runs(
    fd: int,
    buffer: npt.NDArray[np.uint8],
    local: npt.NDArray[np.int64],
    remote: npt.NDArray[np.int64],
    lengths: npt.NDArray[np.int64],
) -> int:
    """Read ``lengths[i]`` bytes at ``remote[i]`` of ``fd`` into ``buffer[local[i]:]``, in order.

    One compiled loop, one ``pread`` per run, the GIL released. Returns how many leading
    runs were read in full (``len(local)`` when all were); offsets that do not fit
    ``off_t`` stop the loop there (``[vsyscall]`` lies above 2^63, docs/capture.md §4.4).
    """
    if not len(local):
        return 0
    if int(local[-1]) + int(lengths[-1]) > len(buffer) or np.any(local < 0):
        raise ValueError("a run does not fit the buffer")
    too_far = np.flatnonzero(
        remote.astype(np.uint64) > np.uint64(MAX_FILE_OFFSET) - lengths.astype(np.uint64)
    )
    stop = int(too_far[0]) if len(too_far) else len(local)
    return int(
        _loop()(_libc_pread(), fd, buffer.ctypes.data, local[:stop], remote[:stop], lengths[:stop])
    )


def warm_up() -> None:
    """Compile (or load from numba's cache) the read loop before a timed snapshot."""
    r, w = os.pipe()
    try:
        os.write(w, b"x")
        buf = np.zeros(PAGE_SIZE_BYTES, np.uint8)
        zero = np.zeros(1, np.int64)
        pread_runs(r, buf, zero, zero, np.ones(1, np.int64))  # a pipe: the read is short
    finally:
        os.close(r)
        os.close(w)


@dataclass
class ReadResult:
    """Hashes of the pages asked for, in order, and which of them could not be read."""

    hashes: npt.NDArray[np.uint64]
    read_error: npt.NDArray[np.bool_]
    reads: int
    """``pread`` calls made (runs, plus single pages read again after a short run)."""


def segments(vpn: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Runs of consecutive page numbers in sorted ``vpn``: ``(first index, length)`` each.

    Examples
    --------
    >>> [a.tolist() for a in segments(np.array([3, 4, 5, 9, 11, 12]))]
    [[0, 3, 4], [3, 1, 2]]
    """
    n = len(vpn)
    if n == 0:
        return np.zeros(0, _I64), np.zeros(0, _I64)
    starts = np.flatnonzero(np.diff(vpn) != 1) + 1
    first = np.concatenate(([0], starts)).astype(_I64)
    length = np.diff(np.concatenate((first, [n]))).astype(_I64)
    return first, length


def read_and_hash(
    procfs: ProcFS,
    mem_fd: int,
    secret: PageSecret,
    vpn: npt.NDArray[np.int64],
    buffer: npt.NDArray[np.uint8],
) -> ReadResult:
    """Read pages ``vpn`` (sorted page numbers, at most the buffer's pages) and hash them.

    Each run of consecutive pages is one ``pread`` of ``/proc/<pid>/mem``
    (:meth:`ProcFS.read_runs`); a run that comes back short is read again page by page
    (:meth:`ProcFS.pread_into`), and a page that still fails is flagged in ``read_error``
    (hash 0).
    """
    n = len(vpn)
    error = np.zeros(n, bool)
    first, length = segments(vpn)
    local = first * PAGE_SIZE_BYTES
    remote = vpn[first] * PAGE_SIZE_BYTES
    sizes = length * PAGE_SIZE_BYTES
    reads = 0
    run = 0
    view = memoryview(buffer.data)
    while run < len(first):
        done = procfs.read_runs(mem_fd, buffer, local[run:], remote[run:], sizes[run:])
        reads += done + (run + done < len(first))
        run += done
        if run < len(first):  # run ``run`` came back short: its pages one by one
            for k in range(int(first[run]), int(first[run] + length[run])):
                at = k * PAGE_SIZE_BYTES
                reads += 1
                try:
                    got = procfs.pread_into(
                        mem_fd, view[at : at + PAGE_SIZE_BYTES], int(vpn[k]) * PAGE_SIZE_BYTES
                    )
                except OSError:
                    got = 0
                if got != PAGE_SIZE_BYTES:
                    error[k] = True
            run += 1
    hashes = hash_pages(secret, buffer, n)
    hashes[error] = 0
    return ReadResult(hashes=hashes, read_error=error, reads=reads)


__all__ = ["CHUNK_PAGES", "ReadResult", "pread_runs", "read_and_hash", "segments"]
