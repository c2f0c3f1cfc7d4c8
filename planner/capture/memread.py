"""Read many scattered pages of another process quickly, without changing it, and hash them.

The capture reads only the present anonymous pages of a process (docs/capture.md §4.2). They
come in runs of consecutive pages: short ones in an interpreter's heap (three pages on
average in 32 small Python processes), long ones in a big buffer. Each run is cut into
*pieces* of at most :data:`PIECE_PAGES` pages, and one compiled loop (numba, no GIL held)
reads each piece with one ``pread`` of ``/proc/<pid>/mem`` into a small buffer and hashes
its pages at once, while they are still in the CPU's cache: a page is copied into the
buffer by the kernel and read once by the hash, never written to or read back from main
memory (docs/capture.md §5.1). The hash is the ``xxhash`` library's own
``XXH3_64bits_withSeed`` called through its address (:func:`planner.capture.xxh3.library_xxh3`),
or where that is not available the module's compiled copy of it
(:func:`planner.capture.xxh3.hash_pages`). A snapshot hands a process's pages to a small pool
of threads window by window (:mod:`planner.capture.snapshot`), the sampler between snapshots
in chunks of at most :data:`CHUNK_PAGES` pages; the result does not depend on how they were
split.

**Why not ``process_vm_readv``.** It reads scattered ranges in one system call and moved
1.4-2.6 times more bytes per second than ``/proc/<pid>/mem`` here, but it pins the pages it
reads (``FOLL_PIN``), and pinning an anonymous page that is not exclusive to the process --
every page still shared with a parent or child since a fork, every KSM page -- makes the
kernel *unshare* it first: it copies the page. Measured again on Linux 6.18: the two
fork-shared pages of a child read with ``process_vm_readv`` got new frames, the two read with
a ``pread`` of ``/proc/<pid>/mem`` stayed shared (docs/capture.md §4.16). A capture
that breaks fork sharing changes the very memory it measures, so only ``/proc/<pid>/mem`` is
read (``FOLL_GET``, never an unshare).

A piece that comes back short (the page vanished, a mapping without read permission) is read
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

from planner._jit import njit_cached
from planner.capture import xxh3
from planner.capture.procfs import MAX_FILE_OFFSET, PAGE_SIZE_BYTES

if TYPE_CHECKING:
    from collections.abc import Callable

    from planner.capture.procfs import ProcFS
    from planner.capture.xxh3 import PageSecret

#: Most pages one thread reads and hashes as one task of the sampler (16 MiB).
CHUNK_PAGES: Final = 4096
#: Most pages read by one ``pread`` (256 KiB): the buffer they go to stays in the CPU's
#: cache until they are hashed. ``tests/benchmarks/test_capture_speed.py::test_read_piece_size``
#: compares sizes.
PIECE_PAGES: Final = 64

_I64 = np.int64
_LOCK = threading.Lock()


def _pread_hash_library(
    pread: Any,
    xxh: Any,
    fd: int,
    buf: int,
    remote: Any,
    lengths: Any,
    out_at: Any,
    seed: Any,
    out: Any,
) -> int:  # pragma: no cover - compiled
    """``pread`` piece ``i`` into ``buf`` and hash its pages into ``out[out_at[i]:]`` with the
    library's function; the index of the first short piece (``len(remote)`` if none)."""
    for i in range(len(remote)):
        if pread(fd, buf, lengths[i], remote[i]) != lengths[i]:
            return i
        at = out_at[i]
        for j in range(lengths[i] // 4096):
            out[at + j] = xxh(buf + j * 4096, 4096, seed)
    return len(remote)


def _pread_hash_own(
    pread: Any,
    fd: int,
    buf: int,
    words_view: Any,
    remote: Any,
    lengths: Any,
    out_at: Any,
    words: Any,
    last: Any,
    merge: Any,
    out: Any,
) -> int:  # pragma: no cover - compiled
    """The same with the compiled copy of the hash (``words_view``: ``buf`` as uint64)."""
    for i in range(len(remote)):
        if pread(fd, buf, lengths[i], remote[i]) != lengths[i]:
            return i
        at = out_at[i]
        _own_hash(words_view, 0, lengths[i] // 4096, words, last, merge, out[at:])
    return len(remote)


def _pread_loop(
    pread: Any, fd: int, base: int, local: Any, remote: Any, lengths: Any
) -> int:  # pragma: no cover - compiled
    """``pread`` each run into ``base + local[i]``; the index of the first short run."""
    for i in range(len(local)):
        if pread(fd, base + local[i], lengths[i], remote[i]) != lengths[i]:
            return i
    return len(local)


def _window_library(
    pread: Any,
    xxh: Any,
    pm_fd: int,
    mem_fd: int,
    first: int,
    count: int,
    lo: Any,
    hi: Any,
    index: Any,
    zero_pfn: Any,
    seed: Any,
    piece_pages: int,
    max_vpn: int,
    pm: Any,
    pm_at: int,
    again: Any,
    again_at: int,
    buf: int,
    rec_vpn: Any,
    vpn_out: Any,
    entry_out: Any,
    owner_out: Any,
    rec_out: Any,
    hash_out: Any,
    error_out: Any,
    racy_out: Any,
    stats: Any,
) -> int:  # pragma: no cover - compiled
    """One pagemap window of a process, read and hashed without leaving compiled code.

    The same steps as :meth:`planner.capture.snapshot.ProcessReader._read_window` does with
    numpy, in one pass: the window's pagemap (``count`` entries from page ``first``) into
    ``pm``; the live pages of each member span ``lo[m] .. hi[m]`` (mapping ``index[m]``) as
    rows -- present anonymous pages other than the zero page are *recorded*, swapped
    anonymous pages kept without content; runs of consecutive recorded pages read in pieces
    of at most ``piece_pages`` (one ``pread`` each, a short one again page by page, a page
    that still fails flagged) and hashed with the library's function while in the cache;
    then the pagemap again into ``again`` and the recorded pages whose PFN or present bit
    changed flagged racy. ``stats`` receives rows, recorded pages, zero-page PTEs and
    ``pread`` calls. Returns 0, 1 when a pagemap read came back short (the process is
    gone), 2 when every recorded page has PFN 0 (PFNs hidden).
    """
    present_bit = np.uint64(1) << np.uint64(63)
    swap_bit = np.uint64(1) << np.uint64(62)
    file_bit = np.uint64(1) << np.uint64(61)
    pfn_mask = (np.uint64(1) << np.uint64(55)) - np.uint64(1)
    live_bits = present_bit | swap_bit
    identity = pfn_mask | present_bit
    zero = np.uint64(0)
    if pread(pm_fd, pm_at, count * 8, first * 8) != count * 8:
        return 1
    rows = 0
    nrec = 0
    zeros = 0
    any_pfn = False
    for m in range(len(lo)):
        for p in range(lo[m], hi[m]):
            e = pm[p - first]
            if (e & live_bits) == zero or (e & file_bit) != zero:
                continue
            if (e & present_bit) != zero:
                pfn = e & pfn_mask
                if pfn == zero_pfn:
                    zeros += 1
                    continue
                if pfn != zero:
                    any_pfn = True
                rec_out[rows] = True
                rec_vpn[nrec] = p
                nrec += 1
            else:
                rec_out[rows] = False
            vpn_out[rows] = p
            entry_out[rows] = e
            owner_out[rows] = index[m]
            rows += 1
    stats[0] = rows
    stats[1] = nrec
    stats[2] = zeros
    stats[3] = 0
    if nrec == 0:
        return 0
    if not any_pfn:
        return 2
    reads = 0
    i = 0
    while i < nrec:
        start = rec_vpn[i]
        j = i + 1
        while j < nrec and j - i < piece_pages and rec_vpn[j] == rec_vpn[j - 1] + 1:
            j += 1
        n = j - i
        reads += 1
        whole = start <= max_vpn - n and pread(mem_fd, buf, n * 4096, start * 4096) == n * 4096
        if whole:
            for k in range(n):
                hash_out[i + k] = xxh(buf + k * 4096, 4096, seed)
                error_out[i + k] = False
        else:  # short: the pages one by one
            for k in range(n):
                v = rec_vpn[i + k]
                reads += 1
                good = v <= max_vpn - 1 and pread(mem_fd, buf, 4096, v * 4096) == 4096
                hash_out[i + k] = xxh(buf, 4096, seed) if good else zero
                error_out[i + k] = not good
        i = j
    stats[3] = reads
    if pread(pm_fd, again_at, count * 8, first * 8) != count * 8:
        return 1
    for k in range(nrec):
        at = rec_vpn[k] - first
        racy_out[k] = ((again[at] ^ pm[at]) & identity) != zero
    return 0


def _own_hash(*args: Any) -> None:  # pragma: no cover - replaced by the compiled kernel
    raise NotImplementedError


_LOOPS: dict[str, Callable[..., int]] = {}


def _loop(name: str) -> Callable[..., int]:
    """A compiled loop (compiled, or loaded from numba's cache, on first use)."""
    with _LOCK:
        if name not in _LOOPS:
            options: dict[str, Any] = {"nogil": True}
            if name == "plain":
                _LOOPS[name] = cast("Callable[..., int]", njit_cached(_pread_loop, **options))
            elif name == "window":
                _LOOPS[name] = cast("Callable[..., int]", njit_cached(_window_library, **options))
            elif name == "own":  # the kernel must be compiled before the loop that calls it
                globals()["_own_hash"] = xxh3.compiled_kernel()
                _LOOPS[name] = cast("Callable[..., int]", njit_cached(_pread_hash_own, **options))
            else:
                _LOOPS[name] = cast(
                    "Callable[..., int]", njit_cached(_pread_hash_library, **options)
                )
        return _LOOPS[name]


_PREAD: Any = None


def _libc_pread() -> Any:
    """libc's ``pread`` as a ctypes function (passed to the compiled loop as an argument,
    which keeps the loop cacheable: a function pointer baked in would not be)."""
    global _PREAD
    with _LOCK:
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

    One compiled loop, one ``pread`` per run, the GIL released (``kpageflags`` and
    ``kpagecount`` are read this way). Returns how many leading runs were read in full;
    offsets that do not fit ``off_t`` stop the loop there.
    """
    if not len(local):
        return 0
    if int(local[-1]) + int(lengths[-1]) > len(buffer) or np.any(local < 0):
        raise ValueError("a run does not fit the buffer")
    stop = _first_too_far(remote, lengths)
    return int(
        _loop("plain")(
            _libc_pread(), fd, buffer.ctypes.data, local[:stop], remote[:stop], lengths[:stop]
        )
    )


def _first_too_far(remote: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64]) -> int:
    """The first read whose end does not fit ``off_t`` (``len(remote)`` if none)."""
    too_far = np.flatnonzero(
        remote.astype(np.uint64) > np.uint64(MAX_FILE_OFFSET) - lengths.astype(np.uint64)
    )
    return int(too_far[0]) if len(too_far) else len(remote)


def pread_hash(
    fd: int,
    buffer: npt.NDArray[np.uint8],
    remote: npt.NDArray[np.int64],
    lengths: npt.NDArray[np.int64],
    out_at: npt.NDArray[np.int64],
    secret: PageSecret,
    out: npt.NDArray[np.uint64],
    *,
    library: bool | None = None,
) -> int:
    """Read ``lengths[i]`` bytes at ``remote[i]`` of ``fd`` and hash them into ``out[out_at[i]:]``.

    One compiled loop, one ``pread`` per piece into ``buffer`` (which holds the largest piece),
    the GIL released. Returns how many leading pieces were read and hashed in full
    (``len(remote)`` when all were); offsets that do not fit ``off_t`` stop the loop there
    (``[vsyscall]`` lies above 2^63, docs/capture.md §4.4). ``library``: hash with the
    ``xxhash`` library's function (``None``: when it is available).
    """
    if not len(remote):
        return 0
    if np.any(lengths % PAGE_SIZE_BYTES) or np.any(lengths <= 0):
        raise ValueError("pieces must be whole pages")
    if int(lengths.max()) > len(buffer) or int(buffer.ctypes.data) % 8:
        raise ValueError("a piece does not fit the buffer")
    if np.any(out_at < 0) or np.any(out_at + lengths // PAGE_SIZE_BYTES > len(out)):
        raise ValueError("a piece's hashes do not fit the output")
    stop = _first_too_far(remote, lengths)
    fn = xxh3.library_xxh3() if library is not False else None
    if library and fn is None:
        raise RuntimeError("the xxhash library's XXH3_64bits_withSeed is not available")
    args = (remote[:stop], lengths[:stop], out_at[:stop])
    if fn is not None:
        seed = np.uint64(secret.seed)
        return int(_loop("library")(_libc_pread(), fn, fd, buffer.ctypes.data, *args, seed, out))
    words_view = buffer.view(np.uint64)
    return int(
        _loop("own")(
            _libc_pread(),
            fd,
            buffer.ctypes.data,
            words_view,
            *args,
            secret.words,
            secret.last,
            secret.merge,
            out,
        )
    )


#: :func:`read_window`'s results besides ``ok``: the process is gone, its PFNs are hidden.
WINDOW_GONE: Final = 1
WINDOW_PFNS_HIDDEN: Final = 2
_MAX_VPN: Final = MAX_FILE_OFFSET // PAGE_SIZE_BYTES
_NO_PFN: Final = (1 << 55) - 1  # no frame has this PFN (when the zero page is unknown)


class WindowScratch:
    """One thread's reused buffers for :func:`read_window` (windows up to ``pages``)."""

    def __init__(self, pages: int, piece_pages: int) -> None:
        self.pages = pages
        self.piece_pages = piece_pages
        self.buf = np.empty(piece_pages * PAGE_SIZE_BYTES, np.uint8)
        self.pm = np.empty(pages, np.uint64)
        self.again = np.empty(pages, np.uint64)
        self.rec_vpn = np.empty(pages, np.int64)
        self.vpn = np.empty(pages, np.int64)
        self.entry = np.empty(pages, np.uint64)
        self.owner = np.empty(pages, np.intp)
        self.rec = np.empty(pages, np.bool_)
        self.hashes = np.empty(pages, np.uint64)
        self.error = np.empty(pages, np.bool_)
        self.racy = np.empty(pages, np.bool_)
        self.stats = np.zeros(4, np.int64)


@dataclass
class WindowRows:
    """The live pages of one pagemap window, in address order, and what was read of them."""

    vpn: npt.NDArray[np.int64]
    """Present or swapped pages kept as rows."""
    entry: npt.NDArray[np.uint64]
    owner: npt.NDArray[np.intp]
    """Index of each page's mapping in the kept mappings."""
    is_rec: npt.NDArray[np.bool_]
    """Rows whose content was read (present anonymous pages, not the zero page)."""
    hashes: npt.NDArray[np.uint64]
    """One per ``is_rec`` row, as are ``read_error`` and ``racy``."""
    read_error: npt.NDArray[np.bool_]
    racy: npt.NDArray[np.bool_]
    zero_pfn_pages: int = 0
    reads: int = 0

    @classmethod
    def concat(cls, parts: list[WindowRows]) -> WindowRows:
        """The rows of all windows in address order (windows of the anonymous mappings and
        of the file mappings were read apart and may interleave)."""

        def cat(name: str, dtype: type) -> Any:
            arrays = [getattr(p, name) for p in parts]
            return np.concatenate(arrays) if arrays else np.zeros(0, dtype)

        w = cls(
            vpn=cat("vpn", np.int64),
            entry=cat("entry", np.uint64),
            owner=cat("owner", np.intp),
            is_rec=cat("is_rec", np.bool_),
            hashes=cat("hashes", np.uint64),
            read_error=cat("read_error", np.bool_),
            racy=cat("racy", np.bool_),
        )
        if len(w.vpn) < 2 or bool(np.all(w.vpn[1:] > w.vpn[:-1])):
            return w
        return w.take(np.argsort(w.vpn, kind="stable"))

    def take(self, rows: npt.NDArray[np.intp]) -> WindowRows:
        """These rows (in this order), with the read results of the recorded ones."""
        rec_at = np.cumsum(self.is_rec) - 1  # each recorded row's place in ``hashes``
        rec_rows = rows[self.is_rec[rows]]
        rec = rec_at[rec_rows]
        return WindowRows(
            vpn=self.vpn[rows],
            entry=self.entry[rows],
            owner=self.owner[rows],
            is_rec=self.is_rec[rows],
            hashes=self.hashes[rec],
            read_error=self.read_error[rec],
            racy=self.racy[rec],
        )


@dataclass
class WindowRead:
    """What :func:`read_window` found in one window (arrays are the caller's own)."""

    status: int
    """0, :data:`WINDOW_GONE` or :data:`WINDOW_PFNS_HIDDEN`."""
    recorded: int
    """Present anonymous pages other than the zero page (whose contents were read)."""
    rows: WindowRows


def window_in_compiled_code() -> bool:
    """Whether :func:`read_window` can run here (it hashes with the ``xxhash`` library's
    function; without it the capture reads windows with numpy and the module's own hash)."""
    return xxh3.library_xxh3() is not None


def read_window(
    pm_fd: int,
    mem_fd: int,
    first: int,
    count: int,
    members: list[tuple[int, int, int]],
    zero_pfn: int | None,
    secret: PageSecret,
    scratch: WindowScratch,
) -> WindowRead:
    """Read one pagemap window and the contents of its recorded pages in one compiled call
    that holds no GIL (:func:`_window_library`).

    ``members`` are ``(mapping index, first page, end page)`` spans inside the window. The
    result is the same as the numpy path's of :mod:`planner.capture.snapshot` (tested);
    here a reader thread never needs the GIL between its system calls, so a reader
    throttled by its deadline reservation cannot stop the others.
    """
    if count > scratch.pages:
        raise ValueError(f"a window of {count} pages does not fit the scratch buffers")
    if not members:
        raise ValueError("a window without member spans")
    fn = xxh3.library_xxh3()
    if fn is None:
        raise RuntimeError("the xxhash library's XXH3_64bits_withSeed is not available")
    # one contiguous array per column: a column sliced from the (n, 3) table is strided
    # (numba's layout 'A') unless n is 1 ('C'), and each layout is a compilation of its own,
    # so the warm-up's one-span window left a real snapshot's first window to compile
    index, lo, hi = np.array(members, dtype=_I64).reshape(-1, 3).T.copy()
    sc = scratch
    status = int(
        _loop("window")(
            _libc_pread(),
            fn,
            pm_fd,
            mem_fd,
            first,
            count,
            lo,
            hi,
            index,
            np.uint64(zero_pfn if zero_pfn else _NO_PFN),
            np.uint64(secret.seed),
            sc.piece_pages,
            _MAX_VPN,
            sc.pm,
            sc.pm.ctypes.data,
            sc.again,
            sc.again.ctypes.data,
            sc.buf.ctypes.data,
            sc.rec_vpn,
            sc.vpn,
            sc.entry,
            sc.owner,
            sc.rec,
            sc.hashes,
            sc.error,
            sc.racy,
            sc.stats,
        )
    )
    n_rows, nrec, zeros, reads = (int(x) for x in sc.stats)
    rows = WindowRows(
        vpn=sc.vpn[:n_rows].copy(),
        entry=sc.entry[:n_rows].copy(),
        owner=sc.owner[:n_rows].copy(),
        is_rec=sc.rec[:n_rows].copy(),
        hashes=sc.hashes[:nrec].copy(),
        read_error=sc.error[:nrec].copy(),
        racy=sc.racy[:nrec].copy(),
        zero_pfn_pages=zeros,
        reads=reads,
    )
    return WindowRead(status=status, recorded=nrec, rows=rows)


def warm_up() -> None:
    """Compile (or load from numba's cache) the read loop before a timed snapshot."""
    r, w = os.pipe()
    try:
        os.write(w, b"x")
        buf = np.zeros(PAGE_SIZE_BYTES, np.uint8)
        zero = np.zeros(1, np.int64)
        page = np.full(1, PAGE_SIZE_BYTES, np.int64)
        out = np.zeros(1, np.uint64)
        secret = xxh3.PageSecret.from_seed(0)
        pread_runs(r, buf, zero, zero, np.ones(1, np.int64))
        # a pipe: the read is short, nothing is hashed
        pread_hash(r, buf, zero, page, zero, secret, out, library=False)
        if xxh3.library_xxh3() is not None:
            pread_hash(r, buf, zero, page, zero, secret, out)
            # a pipe as pagemap: the read is short, nothing else is read
            read_window(r, r, 0, 1, [(0, 0, 1)], None, secret, WindowScratch(1, 1))
    finally:
        os.close(r)
        os.close(w)


@dataclass
class ReadResult:
    """Hashes of the pages asked for, in order, and which of them could not be read."""

    hashes: npt.NDArray[np.uint64]
    read_error: npt.NDArray[np.bool_]
    reads: int
    """``pread`` calls made (pieces, plus single pages read again after a short piece)."""


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


def pieces(
    vpn: npt.NDArray[np.int64], piece_pages: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Runs of sorted ``vpn`` cut into pieces of at most ``piece_pages``: ``(first index,
    length)`` each, in order.

    Examples
    --------
    >>> [a.tolist() for a in pieces(np.array([3, 4, 5, 6, 7, 9]), 2)]
    [[0, 2, 4, 5], [2, 2, 1, 1]]
    """
    first, length = segments(vpn)
    count = -(-length // piece_pages)
    run = np.repeat(np.arange(len(first)), count)
    k = np.arange(len(run), dtype=_I64) - np.repeat(np.cumsum(count) - count, count)
    at = first[run] + k * piece_pages
    return at, np.minimum(length[run] - k * piece_pages, piece_pages)


def read_and_hash(
    procfs: ProcFS,
    mem_fd: int,
    secret: PageSecret,
    vpn: npt.NDArray[np.int64],
    buffer: npt.NDArray[np.uint8],
) -> ReadResult:
    """Read pages ``vpn`` (sorted page numbers) and hash them, a buffer's worth at a time.

    Each piece (a run of consecutive pages, or a buffer's worth of one) is one ``pread`` of
    ``/proc/<pid>/mem`` (:meth:`ProcFS.read_hash_runs`); a piece that comes back short is
    read again page by page (:meth:`ProcFS.pread_into`), and a page that still fails is
    flagged in ``read_error`` (hash 0).
    """
    n = len(vpn)
    error = np.zeros(n, bool)
    hashes = np.zeros(n, np.uint64)
    first, length = pieces(vpn, len(buffer) // PAGE_SIZE_BYTES)
    remote = vpn[first] * PAGE_SIZE_BYTES
    sizes = length * PAGE_SIZE_BYTES
    reads = 0
    done_to = 0
    view = memoryview(buffer.data)[:PAGE_SIZE_BYTES]
    while done_to < len(first):
        done = procfs.read_hash_runs(
            mem_fd, buffer, remote[done_to:], sizes[done_to:], first[done_to:], secret, hashes
        )
        reads += done + (done_to + done < len(first))
        done_to += done
        if done_to < len(first):  # piece ``done_to`` came back short: its pages one by one
            for k in range(int(first[done_to]), int(first[done_to] + length[done_to])):
                reads += 1
                try:
                    got = procfs.pread_into(mem_fd, view, int(vpn[k]) * PAGE_SIZE_BYTES)
                except OSError:
                    got = 0
                if got == PAGE_SIZE_BYTES:
                    xxh3.hash_pages(secret, buffer, 1, out=hashes[k : k + 1])
                else:
                    error[k] = True
            done_to += 1
    hashes[error] = 0
    return ReadResult(hashes=hashes, read_error=error, reads=reads)


__all__ = [
    "CHUNK_PAGES",
    "PIECE_PAGES",
    "WINDOW_GONE",
    "WINDOW_PFNS_HIDDEN",
    "ReadResult",
    "WindowRead",
    "WindowRows",
    "WindowScratch",
    "pieces",
    "pread_hash",
    "pread_runs",
    "read_and_hash",
    "read_window",
    "segments",
    "window_in_compiled_code",
]
