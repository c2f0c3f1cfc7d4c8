"""Read-only access to ``/proc`` (and ``/sys``) through an object with an injectable root.

Everything capture reads from the kernel goes through :class:`ProcFS`, so tests can point
it at a fake tree under ``tmp_path`` (regular files standing in for ``maps``, ``pagemap``,
``mem``, ``kpageflags``, ...). Nothing here ever writes to ``/proc`` or ``/sys``; files are
opened ``O_RDONLY``.

A process that vanishes while it is read raises :class:`ProcessGone` (an internal signal,
not a :class:`~planner.errors.PlannerError`): the capture records it as ``gone`` and goes on.
Missing privileges raise :class:`~planner.errors.CapturePermissionError` naming what is needed.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt

from planner.errors import CapturePermissionError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from planner.capture.xxh3 import PageSecret

PAGE_SIZE_BYTES: Final = 4096
PAGEMAP_ENTRY_BYTES: Final = 8

# /proc/<pid>/pagemap bits (Documentation/admin-guide/mm/pagemap.rst).
PM_PFN_MASK: Final = (1 << 55) - 1
PM_SOFT_DIRTY_BIT: Final = 55
PM_EXCLUSIVE_BIT: Final = 56
PM_UFFD_WP_BIT: Final = 57
PM_GUARD_BIT: Final = 58
PM_FILE_BIT: Final = 61
PM_SWAP_BIT: Final = 62
PM_PRESENT_BIT: Final = 63

# /proc/kpageflags bits (include/uapi/linux/kernel-page-flags.h).
KPF_ANON: Final = 12
KPF_HUGE: Final = 17
KPF_KSM: Final = 21
KPF_THP: Final = 22
KPF_ZERO_PAGE: Final = 24

#: task flag of kernel threads (``/proc/<pid>/stat`` field 9).
PF_KTHREAD: Final = 0x00200000
#: personality(2) flag: ASLR disabled (``setarch -R``).
ADDR_NO_RANDOMIZE: Final = 0x0040000

#: Largest file offset ``pread`` accepts (``off_t`` is signed 64-bit); ``[vsyscall]`` lies above.
MAX_FILE_OFFSET: Final = (1 << 63) - 1

_GONE_ERRNOS: Final = frozenset({errno.ENOENT, errno.ESRCH})

PTRACE_HINT: Final = (
    "run as root, or grant CAP_SYS_PTRACE "
    "(ptrace access is needed to read /proc/<pid>/mem and pagemap)"
)


class ProcessGone(Exception):
    """The process exited (or became a zombie) while it was being read."""

    def __init__(self, pid: int) -> None:
        super().__init__(f"process {pid} is gone")
        self.pid = pid


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` that capture uses."""

    pid: int
    comm: str
    state: str
    ppid: int
    flags: int
    starttime_ticks: int
    """Field 22: start time in clock ticks since boot (identifies the process with its pid)."""
    utime_ticks: int = 0
    """Field 14: CPU time in user mode, clock ticks."""
    stime_ticks: int = 0
    """Field 15: CPU time in kernel mode, clock ticks."""
    num_threads: int = 0
    """Field 20."""

    @property
    def is_kernel_thread(self) -> bool:
        """True for kernel threads (they have no user memory)."""
        return bool(self.flags & PF_KTHREAD)

    @property
    def is_dead(self) -> bool:
        """True for zombies and dead tasks (their memory is gone)."""
        return self.state in ("Z", "X", "x")


@dataclass(frozen=True)
class MapEntry:
    """One line of ``/proc/<pid>/maps`` plus, when ``smaps`` was read, its per-mapping fields."""

    start: int
    end: int
    perms: str
    offset: int
    dev: str
    inode: int
    path: str
    """The name column: a file path, ``[heap]``, ``[anon:name]``, ... or ``""``."""
    smaps_text: str | None = field(default=None, compare=False, repr=False)
    """The smaps lines of this mapping (parsed on first use), or ``None`` if not read."""

    @property
    def pages(self) -> int:
        """Number of 4 KiB pages the mapping spans."""
        return (self.end - self.start) // PAGE_SIZE_BYTES

    @cached_property
    def smaps(self) -> dict[str, str] | None:
        """Raw smaps fields (``Anonymous``, ``Swap``, ``VmFlags``, ...) or ``None`` if not read.

        Parsed lazily: a Python process has hundreds of mappings, of which capture needs the
        fields of the kept ones only (parsing all of smaps costs more than reading it).
        """
        if self.smaps_text is None:
            return None
        return {f.group(1): f.group(2).strip() for f in _SMAPS_FIELD.finditer(self.smaps_text)}

    def smaps_value(self, name: str) -> str | None:
        """The raw value of one smaps field of this mapping (``None`` if absent or not read).

        Found with one string search in this mapping's block: the capture needs four fields
        of each kept mapping, and building the whole field dict cost more than reading smaps.
        """
        text = self.smaps_text
        if text is None:
            return None
        key = name + ":"
        if text.startswith(key):
            at = 0
        else:
            at = text.find("\n" + key) + 1
            if at == 0:
                return None
        line_end = text.find("\n", at)
        return text[at + len(key) : line_end if line_end >= 0 else len(text)].strip()

    def smaps_kb(self, name: str) -> int | None:
        """An smaps size field in kB (``Anonymous``, ``Swap``, ``KSM``, ...), or ``None``."""
        value = self.smaps_value(name)
        if value is None:
            return None
        number = value.split(" ", 1)[0]
        return int(number) if number.isdigit() else None

    @cached_property
    def vm_flags(self) -> frozenset[str] | None:
        """The two-letter VmFlags of smaps (``mg`` = VM_MERGEABLE, ``ht`` = hugetlb, ...)."""
        text = self.smaps_text
        if text is None:
            return None
        at = text.rfind("VmFlags:")
        if at < 0:
            return None
        line_end = text.find("\n", at)
        return frozenset(text[at + 8 : line_end if line_end >= 0 else len(text)].split())


_MAPS_LINE = re.compile(
    r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) (\S+) (\d+)[ \t]*(.*)$", re.MULTILINE
)
_SMAPS_FIELD = re.compile(r"^([A-Za-z_]+):[ \t]*(.*)$", re.MULTILINE)


def parse_maps(text: str) -> list[MapEntry]:
    """Parse the text of ``/proc/<pid>/maps`` or ``/proc/<pid>/smaps``.

    For smaps, each mapping's field lines (after its header) are kept in
    :attr:`MapEntry.smaps_text` and parsed on first use.

    Examples
    --------
    >>> [e.path for e in parse_maps("00400000-00401000 r-xp 00000000 08:01 42 /bin/x\\n")]
    ['/bin/x']
    """
    headers = list(_MAPS_LINE.finditer(text))
    out: list[MapEntry] = []
    for i, m in enumerate(headers):
        block_end = headers[i + 1].start() if i + 1 < len(headers) else len(text)
        start, end, perms, offset, dev, inode, path = m.groups()
        out.append(
            MapEntry(
                start=int(start, 16),
                end=int(end, 16),
                perms=perms,
                offset=int(offset, 16),
                dev=dev,
                inode=int(inode),
                path=path,
                smaps_text=text[m.end() + 1 : block_end] if block_end > m.end() + 1 else None,
            )
        )
    return out


def parse_stat(pid: int, text: str) -> ProcStat:
    """Parse ``/proc/<pid>/stat`` (the comm may contain spaces and parentheses)."""
    lpar, rpar = text.index("("), text.rindex(")")
    rest = text[rpar + 2 :].split()
    return ProcStat(
        pid=pid,
        comm=text[lpar + 1 : rpar],
        state=rest[0],
        ppid=int(rest[1]),
        flags=int(rest[6]),
        starttime_ticks=int(rest[19]),
        utime_ticks=int(rest[11]),
        stime_ticks=int(rest[12]),
        num_threads=int(rest[17]),
    )


def parse_kv(text: str) -> dict[str, str]:
    """Parse ``key: value`` or ``key value`` lines (status, ksm_stat, meminfo)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            key, _, value = line.partition(" ")
        if key:
            out[key.strip()] = value.strip()
    return out


def parse_ksm_stat(text: str) -> dict[str, int | bool]:
    """Parse ``/proc/<pid>/ksm_stat``: counters as integers, ``yes``/``no`` as booleans.

    Examples
    --------
    >>> parse_ksm_stat("ksm_rmap_items 3\\nksm_merge_any: no\\nksm_mergeable: yes\\n")
    {'ksm_rmap_items': 3, 'ksm_merge_any': False, 'ksm_mergeable': True}
    """
    out: dict[str, int | bool] = {}
    for key, value in parse_kv(text).items():
        if value in ("yes", "no"):
            out[key] = value == "yes"
        else:
            try:
                out[key] = int(value)
            except ValueError:
                continue
    return out


def parse_kb_fields(text: str) -> dict[str, int]:
    """The ``Name:  123 kB`` lines of ``smaps_rollup`` or ``meminfo``, in kB.

    Examples
    --------
    >>> parse_kb_fields("Rss:  100 kB\\nKSM:   40 kB\\nVmFlags: rd wr\\n")
    {'Rss': 100, 'KSM': 40}
    """
    out: dict[str, int] = {}
    for key, value in parse_kv(text).items():
        parts = value.split()
        if parts and parts[0].isdigit() and parts[1:] in ([], ["kB"]):
            out[key] = int(parts[0])
    return out


class ProcFS:
    """Read-only view of a procfs tree (``/proc`` by default) and the sysfs tree next to it.

    Parameters
    ----------
    root
        The procfs mount to read (``/proc``; ``/host/proc`` in a container; a fake tree in tests).
    sys_root
        The sysfs mount (for ``kernel/mm/ksm``).
    """

    def __init__(
        self, root: str | os.PathLike[str] = "/proc", *, sys_root: str | os.PathLike[str] = "/sys"
    ) -> None:
        self.root = Path(root)
        self.sys_root = Path(sys_root)

    def __repr__(self) -> str:
        return f"ProcFS({str(self.root)!r})"

    @property
    def is_live(self) -> bool:
        """True when this reads the procfs of the running system (``/proc``)."""
        return self.root.resolve() == Path("/proc")

    # --------------------------------------------------------------------- paths, listing

    def path(self, pid: int, name: str) -> Path:
        """``<root>/<pid>/<name>``."""
        return self.root / str(pid) / name

    def list_pids(self) -> list[int]:
        """All process ids (thread-group leaders) in ascending order."""
        return sorted(int(d) for d in os.listdir(self.root) if d.isdigit())

    def self_pid(self) -> int | None:
        """The pid of the calling process as this procfs sees it (``<root>/self``), if any."""
        try:
            return int(os.readlink(self.root / "self"))
        except (OSError, ValueError):
            return None

    # --------------------------------------------------------------------- small files

    def _read_text(self, pid: int, name: str) -> str:
        try:
            with open(self.path(pid, name), encoding="utf-8", errors="surrogateescape") as f:
                return f.read()
        except OSError as exc:
            raise self._translate(pid, name, exc) from exc

    def _read_bytes(self, pid: int, name: str) -> bytes:
        try:
            with open(self.path(pid, name), "rb") as f:
                return f.read()
        except OSError as exc:
            raise self._translate(pid, name, exc) from exc

    def _translate(self, pid: int, name: str, exc: OSError) -> Exception:
        if exc.errno in _GONE_ERRNOS:
            return ProcessGone(pid)
        if exc.errno in (errno.EACCES, errno.EPERM):
            return CapturePermissionError(
                f"cannot read {self.path(pid, name)}: permission denied", hint=PTRACE_HINT
            )
        return exc

    def text(self, pid: int, name: str) -> str:
        """The text of ``/proc/<pid>/<name>``.

        Raises
        ------
        ProcessGone
            The process (or the file) does not exist.
        CapturePermissionError
            Not allowed to read it.
        """
        return self._read_text(pid, name)

    def comm(self, pid: int) -> str | None:
        """``/proc/<pid>/comm`` (``None`` when the process is gone or unreadable)."""
        try:
            return self._read_text(pid, "comm").strip()
        except (ProcessGone, CapturePermissionError, OSError):
            return None

    def stat(self, pid: int) -> ProcStat:
        """Parse ``/proc/<pid>/stat``."""
        return parse_stat(pid, self._read_text(pid, "stat"))

    def status(self, pid: int) -> dict[str, str]:
        """``/proc/<pid>/status`` as a dict of raw values."""
        return parse_kv(self._read_text(pid, "status"))

    def cgroups(self, pid: int) -> dict[str, str]:
        """``/proc/<pid>/cgroup`` as ``{controllers: path}``; the v2 hierarchy has key ``""``."""
        out: dict[str, str] = {}
        for line in self._read_text(pid, "cgroup").splitlines():
            parts = line.split(":", 2)
            if len(parts) == 3:
                out[parts[1]] = parts[2]
        return out

    def clear_soft_dirty(self, pid: int) -> None:
        """Write ``4`` to ``<root>/<pid>/clear_refs``: clear the soft-dirty bits of ``pid``.

        The one write the capture ever makes about a target (only when it samples with
        soft-dirty, docs/capture.md §9.3): every page-table entry of the process is
        write-protected, and its next write to each page takes a fault that sets the bit.
        """
        try:
            fd = os.open(self.path(pid, "clear_refs"), os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise self._translate(pid, "clear_refs", exc) from exc
        try:
            os.write(fd, b"4")
        except OSError as exc:
            raise self._translate(pid, "clear_refs", exc) from exc
        finally:
            os.close(fd)

    def cmdline(self, pid: int) -> bytes:
        """The raw NUL-separated argv (without the trailing NUL)."""
        return self._read_bytes(pid, "cmdline").rstrip(b"\0")

    def exe(self, pid: int) -> str | None:
        """The target of ``/proc/<pid>/exe`` (``None`` for kernel threads or when unreadable)."""
        try:
            return os.readlink(self.path(pid, "exe"))
        except OSError:
            return None

    def personality(self, pid: int) -> int | None:
        """The personality(2) flags (hex in procfs), or ``None`` if unreadable."""
        try:
            return int(self._read_text(pid, "personality").strip(), 16)
        except (OSError, ValueError, ProcessGone, CapturePermissionError):
            return None

    def ksm_stat(self, pid: int, *, strict: bool = False) -> dict[str, int | bool]:
        """``/proc/<pid>/ksm_stat`` (Linux >= 6.1): counters, and ``yes``/``no`` as booleans.

        Empty when the file cannot be read, unless ``strict`` (then :meth:`text`'s errors).
        """
        try:
            text = self._read_text(pid, "ksm_stat")
        except (ProcessGone, CapturePermissionError, OSError):
            if strict:
                raise
            return {}
        return parse_ksm_stat(text)

    def smaps_rollup_kb(self, pid: int) -> dict[str, int]:
        """The kB fields of ``/proc/<pid>/smaps_rollup`` (``KSM``, ``AnonHugePages``, ...).

        Empty when the process is gone or the file unreadable.
        """
        try:
            return parse_kb_fields(self._read_text(pid, "smaps_rollup"))
        except (ProcessGone, CapturePermissionError, OSError):
            return {}

    def schedstat(self, pid: int) -> tuple[int, int]:
        """Nanoseconds the task ran on a CPU and nanoseconds it waited, runnable, for one: the
        first two fields of ``/proc/<pid>/schedstat`` (``sum_exec_runtime`` and
        ``run_delay``).

        Raises
        ------
        ProcessGone, CapturePermissionError, OSError, ValueError, IndexError
            Unreadable (a kernel without CONFIG_SCHED_INFO has no such file).
        """
        fields = self._read_text(pid, "schedstat").split()
        return int(fields[0]), int(fields[1])

    def maps(self, pid: int) -> list[MapEntry]:
        """The mappings of ``pid`` from ``maps``: no smaps fields, but no page-table walk."""
        return parse_maps(self._read_text(pid, "maps"))

    def mappings(self, pid: int) -> list[MapEntry]:
        """The mappings of ``pid`` with smaps fields (from ``maps`` if smaps is unreadable)."""
        try:
            text = self._read_text(pid, "smaps")
        except (OSError, CapturePermissionError, ProcessGone):
            text = self._read_text(pid, "maps")  # raises ProcessGone if the process is gone
        return parse_maps(text)

    # --------------------------------------------------------------------- big binary files

    def open_pagemap(self, pid: int) -> int:
        """Open ``/proc/<pid>/pagemap`` read-only and return the file descriptor."""
        return self._open(pid, "pagemap")

    def open_mem(self, pid: int) -> int:
        """Open ``/proc/<pid>/mem`` read-only (never for writing) and return the descriptor."""
        return self._open(pid, "mem")

    def _open(self, pid: int, name: str) -> int:
        try:
            return os.open(self.path(pid, name), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise self._translate(pid, name, exc) from exc

    def read_pagemap(self, fd: int, first_page: int, count: int) -> npt.NDArray[np.uint64]:
        """``count`` pagemap entries from virtual page ``first_page`` (short if it exited)."""
        data = os.pread(fd, count * PAGEMAP_ENTRY_BYTES, first_page * PAGEMAP_ENTRY_BYTES)
        usable = len(data) - len(data) % PAGEMAP_ENTRY_BYTES
        return np.frombuffer(data[:usable], dtype=np.uint64)

    def pread_into(self, fd: int, view: memoryview, offset: int) -> int:
        """Read into ``view`` from ``offset`` of ``fd`` (one ``preadv``); return the byte count."""
        if offset > MAX_FILE_OFFSET - len(view):
            raise OSError(errno.EINVAL, "offset does not fit off_t")
        return os.preadv(fd, [view], offset)

    def read_hash_runs(
        self,
        fd: int,
        buffer: npt.NDArray[np.uint8],
        remote: npt.NDArray[np.int64],
        lengths: npt.NDArray[np.int64],
        out_at: npt.NDArray[np.int64],
        secret: PageSecret,
        out: npt.NDArray[np.uint64],
    ) -> int:
        """Read pieces of ``mem`` and hash their pages (one compiled loop, GIL released).

        Piece ``i`` is ``lengths[i]`` bytes at offset ``remote[i]``, read into ``buffer`` and
        hashed into ``out[out_at[i]:]``. Returns how many leading pieces were read in full.
        """
        from planner.capture.memread import pread_hash

        return pread_hash(fd, buffer, remote, lengths, out_at, secret, out)

    # --------------------------------------------------------------------- host-wide files

    def kpage_path(self, name: str) -> Path:
        """``<root>/kpageflags`` or ``<root>/kpagecount``."""
        return self.root / name

    def elf_path(self, pid: int, path: str) -> Path:
        """Where to open a mapped file as the process sees it (``<root>/<pid>/root/<path>``)."""
        return self.path(pid, "root") / path.lstrip("/")

    def boot_time_s(self) -> float:
        """Unix time of boot: ``btime`` of ``<root>/stat``, refined by CLOCK_BOOTTIME when live.

        ``btime`` has whole-second resolution; on the live system the boot clock gives the
        same instant to the microsecond (the kernel counts process start times on it).
        """
        try:
            btime = float(parse_kv((self.root / "stat").read_text()).get("btime", "nan"))
        except OSError:
            btime = math.nan
        if self.is_live:
            precise = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
            if math.isnan(btime) or abs(precise - btime) < 2.0:
                return precise
        return btime

    def clock_ticks_per_s(self) -> int:
        """``CLK_TCK``: the unit of ``/proc/<pid>/stat`` start times."""
        return int(os.sysconf("SC_CLK_TCK"))

    def host_text(self, name: str) -> str | None:
        """A host-wide file of the procfs (``vmstat``, ``meminfo``, ``cpuinfo``); ``None``
        when it cannot be read."""
        try:
            return (self.root / name).read_text(encoding="utf-8", errors="surrogateescape")
        except OSError:
            return None

    def vmstat(self) -> dict[str, int]:
        """``/proc/vmstat`` (empty when unreadable)."""
        out: dict[str, int] = {}
        for line in (self.host_text("vmstat") or "").splitlines():
            name, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                out[name] = int(value)
        return out

    def meminfo_bytes(self) -> dict[str, int]:
        """``/proc/meminfo`` in bytes (``MemAvailable``, ...; empty when unreadable)."""
        return {k: v * 1024 for k, v in parse_kb_fields(self.host_text("meminfo") or "").items()}

    def ksm_sysfs(self) -> dict[str, str]:
        """Every readable file of ``<sys>/kernel/mm/ksm`` (read-only), as raw strings."""
        d = self.sys_root / "kernel" / "mm" / "ksm"
        out: dict[str, str] = {}
        try:
            names = sorted(os.listdir(d))
        except OSError:
            return out
        for name in names:
            try:
                out[name] = (d / name).read_text().strip()
            except OSError:
                continue
        return out

    def iter_stats(self) -> Iterator[ProcStat]:
        """``stat`` of every process (processes that vanish while listed are skipped)."""
        for pid in self.list_pids():
            try:
                yield self.stat(pid)
            except (ProcessGone, CapturePermissionError, OSError, ValueError, IndexError):
                continue


def probe_own_pfns(procfs: ProcFS) -> tuple[int, int]:
    """Map two private pages in this process; return ``(pfn_of_written_page, zero_page_pfn)``.

    The first page is written (a real frame), the second only read (the kernel maps the
    shared zero page). Reading them back through ``<root>/self/pagemap`` tells whether PFNs
    are visible at all (without CAP_SYS_ADMIN they silently read as 0) and which PFN is the
    shared zero page. Only meaningful on the live procfs.
    """
    import ctypes
    import mmap

    m = mmap.mmap(-1, 2 * PAGE_SIZE_BYTES, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        holder = ctypes.c_char.from_buffer(m)
        addr = ctypes.addressof(holder)
        del holder
        m[0] = 1  # real frame
        _ = m[PAGE_SIZE_BYTES]  # read fault: the shared zero page
        fd = os.open(procfs.root / "self" / "pagemap", os.O_RDONLY | os.O_CLOEXEC)
        try:
            entries = procfs.read_pagemap(fd, addr // PAGE_SIZE_BYTES, 2)
        finally:
            os.close(fd)
    finally:
        m.close()
    if len(entries) != 2:
        return 0, 0
    pfns = (entries & np.uint64(PM_PFN_MASK)).tolist()
    return int(pfns[0]), int(pfns[1])
