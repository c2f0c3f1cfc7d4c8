"""Soft-dirty write tracking: whether the kernel has it, and what using it costs.

Writing ``4`` to ``/proc/<pid>/clear_refs`` clears the soft-dirty bit of every page-table
entry of a process and write-protects them; the process's next write to each page takes a
minor fault that sets the bit again, and pagemap bit 55 shows it. Unlike comparing content
hashes, this sees writes that leave a page's content unchanged -- exactly the writes that
break a KSM merge without changing what a snapshot shows (docs/capture.md §9.3).

It is the only thing the capture ever *writes* about a target, and it has a cost the
target pays: every page written after a clear takes one extra write-protect fault (about
a microsecond each), so sampling every 100 ms costs a process that keeps rewriting N pages
about 10 N faults per second; and the bits are shared state -- clearing them breaks any
other user of soft-dirty on the same process (CRIU's incremental dumps, another tracker).
``--no-soft-dirty`` turns it off; content sampling then carries on alone.

Kernels built without ``CONFIG_MEM_SOFT_DIRTY`` accept the write of ``4`` and never set the
bit, so availability is probed with a page of a helper process this capture starts itself:
the page is written, its bits cleared, checked clear, written again and checked set.
"""

from __future__ import annotations

import contextlib
import os
import struct
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from planner.capture.procfs import PAGE_SIZE_BYTES, PAGEMAP_ENTRY_BYTES, PM_SOFT_DIRTY_BIT

if TYPE_CHECKING:
    from planner.capture.procfs import ProcFS

#: Cost per written page after a clear (a write-protect fault), from the kernel's fault
#: path; counted on a kernel with soft-dirty (a guest: docs/capture.md §9.3), where a
#: process rewriting 2,000 pages 5 times a second took about 0.5 faults per page and pass.
FAULT_COST_NOTE: Final = "one write-protect fault per page written after each clear"

_HELPER: Final = textwrap.dedent(
    """
    import ctypes, mmap, sys
    m = mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    m[0] = 1
    print(addr, flush=True)
    for line in sys.stdin:
        m[0] = (m[0] + 1) % 256   # one write per line
        print("ok", flush=True)
    """
)


@dataclass(frozen=True)
class SoftDirtySupport:
    """Whether soft-dirty tracking works here, and why not when it does not."""

    available: bool
    reason: str
    """One line for the user: what was found."""


def _bit(procfs: ProcFS, pid: int, addr: int) -> bool:
    fd = os.open(procfs.path(pid, "pagemap"), os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.pread(fd, PAGEMAP_ENTRY_BYTES, addr // PAGE_SIZE_BYTES * PAGEMAP_ENTRY_BYTES)
    finally:
        os.close(fd)
    (entry,) = struct.unpack("<Q", data)
    return bool(entry >> PM_SOFT_DIRTY_BIT & 1)


def probe_soft_dirty(procfs: ProcFS) -> SoftDirtySupport:
    """Write, clear, check, write, check a page of a helper process (live procfs only)."""
    if not procfs.is_live or procfs.self_pid() != os.getpid():
        return SoftDirtySupport(False, f"{procfs.root} is not this system's /proc: not probed")
    helper = subprocess.Popen(
        [sys.executable, "-c", _HELPER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert helper.stdin is not None
        assert helper.stdout is not None
        addr = int(helper.stdout.readline())
        try:
            first = _bit(procfs, helper.pid, addr)
            procfs.clear_soft_dirty(helper.pid)
            cleared = not _bit(procfs, helper.pid, addr)
            helper.stdin.write("w\n")
            helper.stdin.flush()
            helper.stdout.readline()
            written = _bit(procfs, helper.pid, addr)
        except OSError as exc:
            return SoftDirtySupport(False, f"soft-dirty could not be probed ({exc.strerror})")
    finally:
        helper.kill()
        helper.wait(timeout=30)
        for f in (helper.stdin, helper.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
    if first and cleared and written:
        return SoftDirtySupport(True, "soft-dirty works: writes are tracked between samples")
    if not first and not written:
        return SoftDirtySupport(
            False,
            "this kernel has no soft-dirty tracking (CONFIG_MEM_SOFT_DIRTY): pagemap bit 55 "
            "stayed clear after writes; same-content writes are not seen, content sampling only",
        )
    return SoftDirtySupport(
        False,
        f"soft-dirty did not behave (set after a write: {first}, clear after clear_refs: "
        f"{cleared}, set after the next write: {written}); content sampling only",
    )


__all__ = ["FAULT_COST_NOTE", "SoftDirtySupport", "probe_soft_dirty"]
