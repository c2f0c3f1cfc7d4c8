"""Classify the mappings of a process into the kinds of :data:`planner.trace.schema.VMA_KINDS`.

Rules (docs/capture.md §2 and §4.3-§4.4):

* shared mappings (``s`` in perms), ``PROT_NONE`` mappings (``---p``: guard pages, thread
  stack guards, arena reserves; reading them through ``/proc/<pid>/mem`` would fault them in),
  hugetlb / ``VM_IO`` / ``VM_PFNMAP`` mappings (smaps VmFlags ``ht``, ``io``, ``pf``) and
  special mappings (every ``[...]`` name other than ``[heap]``, ``[stack]`` and
  ``[anon:...]``: ``[vvar]``, ``[vvar_vclock]``, ``[vdso]``, ``[vsyscall]``, ...) are skipped;
* ``[heap]``, ``[stack]``, ``[anon:<name>]`` are ``heap``, ``stack``, ``anon_named``;
* an anonymous mapping that starts inside the zero-filled tail of an ELF's writable
  ``PT_LOAD`` segment (checked against the program headers of the file mapped just before
  it) is ``bss``; any other anonymous mapping is ``anon``;
* private file mappings are ``file_data`` (writable), ``file_text`` (executable) or
  ``file_relro`` (read-only); only their anonymous copy-on-write pages are recorded.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from planner.capture.procfs import PAGE_SIZE_BYTES, MapEntry

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

SKIP_VM_FLAGS: Final = frozenset({"ht", "io", "pf"})
_PT_LOAD: Final = 1
_PF_W: Final = 2


@dataclass(frozen=True)
class LoadSegment:
    """A writable ``PT_LOAD`` program header whose memory size exceeds its file size."""

    offset: int
    vaddr: int
    filesz: int
    memsz: int


def classify(
    entry: MapEntry, prev: MapEntry | None, bss_segments: Callable[[str], Sequence[LoadSegment]]
) -> str | None:
    """The kind of ``entry``, or ``None`` when the mapping is skipped.

    Parameters
    ----------
    entry
        The mapping to classify.
    prev
        The mapping just before it in the address space (for the ``bss`` check).
    bss_segments
        Returns the writable ``PT_LOAD`` segments with a zero-filled tail of a mapped file
        (empty when the file is not an ELF or cannot be read).

    Examples
    --------
    >>> from planner.capture.procfs import parse_maps
    >>> e = parse_maps("7f00-8f00 rw-p 00000000 00:00 0 [heap]\\n")[0]
    >>> classify(e, None, lambda path: ())
    'heap'
    """
    perms, name = entry.perms, entry.path
    if perms[3] == "s" or perms[:3] == "---":
        return None
    flags = entry.vm_flags
    if flags is not None and flags & SKIP_VM_FLAGS:
        return None
    if name.startswith("["):
        if name == "[heap]":
            return "heap"
        if name == "[stack]":
            return "stack"
        if name.startswith("[anon:"):
            return "anon_named"
        return None
    if not name and entry.inode == 0:
        return "bss" if _is_bss(entry, prev, bss_segments) else "anon"
    if "w" in perms:
        return "file_data"
    if "x" in perms:
        return "file_text"
    return "file_relro"


def _is_bss(
    entry: MapEntry, prev: MapEntry | None, bss_segments: Callable[[str], Sequence[LoadSegment]]
) -> bool:
    if prev is None or prev.end != entry.start or prev.inode == 0 or not prev.path.startswith("/"):
        return False
    prev_bytes = prev.end - prev.start
    for seg in bss_segments(prev.path):
        file_end = seg.offset + seg.filesz  # file offset just past the segment's file part
        if not prev.offset <= file_end <= prev.offset + prev_bytes:
            continue  # the file mapping before us does not hold the end of this segment
        bss_start = prev.start + (file_end - prev.offset)
        bss_end = prev.start + (seg.offset + seg.memsz - prev.offset)
        bss_end = -(-bss_end // PAGE_SIZE_BYTES) * PAGE_SIZE_BYTES
        if bss_start - PAGE_SIZE_BYTES < entry.start < bss_end:
            return True
    return False


def read_bss_segments(path: str | os.PathLike[str]) -> tuple[LoadSegment, ...]:
    """The writable ``PT_LOAD`` segments of an ELF file that have a zero-filled tail.

    Returns ``()`` for files that are not ELF or cannot be read. Handles 32/64-bit and both
    byte orders.
    """
    try:
        with open(path, "rb") as f:
            ident = f.read(64)
            if len(ident) < 52 or ident[:4] != b"\x7fELF":
                return ()
            is64 = ident[4] == 2
            end = "<" if ident[5] == 1 else ">"
            if is64:
                (phoff,) = struct.unpack_from(end + "Q", ident, 32)
                phentsize, phnum = struct.unpack_from(end + "HH", ident, 54)
            else:
                (phoff,) = struct.unpack_from(end + "I", ident, 28)
                phentsize, phnum = struct.unpack_from(end + "HH", ident, 42)
            if phnum == 0 or phnum > 4096 or phentsize < (56 if is64 else 32):
                return ()
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return ()
    out = []
    for i in range(min(phnum, len(table) // phentsize)):
        base = i * phentsize
        if is64:
            p_type, p_flags, p_offset, p_vaddr, _p, p_filesz, p_memsz = struct.unpack_from(
                end + "IIQQQQQ", table, base
            )
        else:
            p_type, p_offset, p_vaddr, _p, p_filesz, p_memsz, p_flags = struct.unpack_from(
                end + "IIIIIII", table, base
            )
        if p_type == _PT_LOAD and p_flags & _PF_W and p_memsz > p_filesz:
            out.append(LoadSegment(offset=p_offset, vaddr=p_vaddr, filesz=p_filesz, memsz=p_memsz))
    return tuple(out)


_SEGMENT_CACHE: dict[tuple[int, int, int, int], tuple[LoadSegment, ...]] = {}
_SEGMENT_CACHE_MAX: Final = 4096


def cached_bss_segments(path: str | os.PathLike[str]) -> tuple[LoadSegment, ...]:
    """:func:`read_bss_segments`, cached by the file's identity (device, inode, mtime, size).

    The path differs per process (``/proc/<pid>/root/...``) but the identity does not, so
    every library is read once per capture however many processes map it.
    """
    try:
        st = os.stat(path)
    except OSError:
        return ()
    ident = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
    hit = _SEGMENT_CACHE.get(ident)
    if hit is None:
        if len(_SEGMENT_CACHE) >= _SEGMENT_CACHE_MAX:
            _SEGMENT_CACHE.clear()
        hit = _SEGMENT_CACHE[ident] = read_bss_segments(path)
    return hit
