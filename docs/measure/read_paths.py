"""Compare the ways of reading another process's pages (root; used for docs/capture.md §4.16).

Prints JSON with, for runs of 1, 3, 16 and 512 present pages separated by one-page holes
(the shapes of an interpreter's heap and of one big buffer) in a child holding 256 MiB of
random bytes:

* ``pread_python``: one ``os.preadv`` of ``/proc/<pid>/mem`` per run, called from Python
  (what the capture did before);
* ``pread_compiled``: one ``pread`` per run from a numba loop (what it does now);
* ``process_vm_readv``: one call per 1024 runs;

each in pages per second (best of 3); and ``unshare``: the PFNs of four pages of a forked
child that are still shared with its parent, before and after reading two of them with
``process_vm_readv`` and the other two with ``pread`` of ``/proc/<pid>/mem``.

Run from the repository root: ``sudo .venv/bin/python docs/measure/read_paths.py``.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import struct
import subprocess
import sys
import time

import numba
import numpy as np

PAGE = 4096
PFN_MASK = (1 << 55) - 1
HOLDER = """
import ctypes, mmap, sys
import numpy as np
n = 256 << 20
m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
np.frombuffer(m, dtype=np.uint8)[:] = np.random.default_rng(1).integers(0, 256, n, dtype=np.uint8)
print(ctypes.addressof(ctypes.c_char.from_buffer(m)), flush=True)
sys.stdin.read()
"""

LIBC = ctypes.CDLL(None, use_errno=True)
PVR = LIBC.process_vm_readv
PVR.restype = ctypes.c_ssize_t
PVR.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong]
PVR.argtypes.append(ctypes.c_ulong)
PREAD = LIBC.pread
PREAD.restype = ctypes.c_ssize_t
PREAD.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64]


@numba.njit(nogil=True)
def _pread_loop(fn, fd, base, local, remote, sizes):  # type: ignore[no-untyped-def]
    for i in range(len(local)):
        if fn(fd, base + local[i], sizes[i], remote[i]) != sizes[i]:
            return i
    return len(local)


def _best(fn: object, rounds: int = 3) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        best = min(best, time.perf_counter() - t)
    return best


def throughput() -> dict[str, dict[str, float]]:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        addr = int(child.stdout.readline())
        npages = (256 << 20) // PAGE
        buf = np.empty(256 << 20, np.uint8)
        fd = os.open(f"/proc/{child.pid}/mem", os.O_RDONLY)
        out: dict[str, dict[str, float]] = {}
        try:
            for run in (1, 3, 16, 512):
                starts = np.arange(0, npages, run + 1)
                lens = np.minimum(run, npages - starts)
                total = int(lens.sum())
                local = (np.concatenate(([0], np.cumsum(lens)[:-1])) * PAGE).astype(np.int64)
                remote = (addr + starts * PAGE).astype(np.int64)
                sizes = (lens * PAGE).astype(np.int64)
                view = memoryview(buf)

                def py(local=local, remote=remote, sizes=sizes, view=view) -> None:  # type: ignore[no-untyped-def]
                    for o, r, n in zip(
                        local.tolist(), remote.tolist(), sizes.tolist(), strict=True
                    ):
                        os.preadv(fd, [view[o : o + n]], r)

                def compiled(local=local, remote=remote, sizes=sizes) -> None:  # type: ignore[no-untyped-def]
                    _pread_loop(PREAD, fd, buf.ctypes.data, local, remote, sizes)

                iov = np.empty((2, len(starts), 2), np.uint64)
                iov[0, :, 0] = buf.ctypes.data + local.astype(np.uint64)
                iov[0, :, 1] = sizes
                iov[1, :, 0] = remote.astype(np.uint64)
                iov[1, :, 1] = sizes

                def pvr(iov=iov, starts=starts) -> None:  # type: ignore[no-untyped-def]
                    for i in range(0, len(starts), 1024):
                        k = min(1024, len(starts) - i)
                        PVR(child.pid, iov[0, i:].ctypes.data, k, iov[1, i:].ctypes.data, k, 0)

                compiled()  # compile first
                out[str(run)] = {
                    "pread_python_pages_per_s": total / _best(py),
                    "pread_compiled_pages_per_s": total / _best(compiled),
                    "process_vm_readv_pages_per_s": total / _best(pvr),
                }
        finally:
            os.close(fd)
        return out
    finally:
        child.kill()
        child.wait()


def unshare() -> dict[str, list[int]]:
    m = mmap.mmap(-1, 4 * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for i in range(4):
        m[i * PAGE : (i + 1) * PAGE] = bytes([i + 1]) * PAGE
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.read(r, 1)
        os._exit(0)

    def pfns(p: int) -> list[int]:
        with open(f"/proc/{p}/pagemap", "rb") as f:
            f.seek(addr // PAGE * 8)
            return [e & PFN_MASK for e in struct.unpack("<4Q", f.read(32))]

    try:
        parent, before = pfns(os.getpid()), pfns(pid)
        buf = ctypes.create_string_buffer(2 * PAGE)
        local = (ctypes.c_uint64 * 2)(ctypes.addressof(buf), 2 * PAGE)
        remote = (ctypes.c_uint64 * 2)(addr, 2 * PAGE)
        PVR(pid, ctypes.addressof(local), 1, ctypes.addressof(remote), 1, 0)
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
        os.pread(fd, 2 * PAGE, addr + 2 * PAGE)
        os.close(fd)
        return {
            "parent": parent,
            "child_before": before,
            "child_after": pfns(pid),
            "read_by": ["process_vm_readv"] * 2 + ["pread /proc/<pid>/mem"] * 2,
        }
    finally:
        os.write(w, b"x")
        os.waitpid(pid, 0)


if __name__ == "__main__":
    print(json.dumps({"unshare": unshare(), "throughput": throughput()}, indent=1))
