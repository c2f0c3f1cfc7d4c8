"""What the kernel knows about the traced processes and their host, beyond their pages.

The trace's pages are the anonymous memory KSM could merge. A capacity review needs the
rest of each worker's footprint and the host's CPU (issue 11): page cache, file-backed
text and data, shared memory, page tables, slab, the cgroup's accounting, CPU time. This
module reads them read-only, through the injectable :class:`~planner.capture.procfs.ProcFS`
(so the tests read a fake ``/proc`` and ``/sys``), into plain dicts whose keys are columns of
the trace's tables (``planner.trace.schema``, docs/capture.md §8):

* per process and snapshot (:func:`process_facts`): ``smaps_rollup`` (``Rss``, ``Pss``,
  ``Pss_Anon``, ``Pss_File``, ``Pss_Shmem``, ``Pss_Dirty``, ``Swap``, ``SwapPss``), the
  ``status`` sizes (``RssFile``, ``RssShmem``, ``VmPTE``), CPU time (``utime`` + ``stime``
  of ``/proc/<pid>/stat``) and threads, and the memory cgroup it is charged to;
* per host and snapshot (:func:`host_facts`): ``/proc/meminfo``, the CPUs online, ``USER_HZ``,
  the cumulative CPU counters of ``/proc/stat`` and ``procs_running`` / the load average
  of ``/proc/loadavg``;
* per memory cgroup of the traced processes (:func:`cgroup_memory`): cgroup v2
  ``memory.current``, ``memory.max``, ``memory.swap.current`` and ``memory.stat``, or the
  cgroup v1 memory controller's ``memory.usage_in_bytes``, ``memory.limit_in_bytes`` and
  ``memory.stat`` on hosts that still mount it;
* over the interval after each snapshot (:class:`LoadMonitor`): the host's busy CPU share
  and the mean number of runnable tasks, sampled while the capture waits or samples.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from planner.capture.procfs import ProcessGone, parse_kv
from planner.errors import CapturePermissionError

if TYPE_CHECKING:
    from pathlib import Path

    from planner.capture.procfs import ProcFS, ProcStat

#: smaps_rollup fields kept per process (kernel names) -> column.
ROLLUP_COLUMNS: Final = {
    "Rss": "rss_kb",
    "Pss": "pss_kb",
    "Pss_Anon": "pss_anon_kb",
    "Pss_File": "pss_file_kb",
    "Pss_Shmem": "pss_shmem_kb",
    "Pss_Dirty": "pss_dirty_kb",
    "Swap": "swap_kb",
    "SwapPss": "swap_pss_kb",
}
#: ``/proc/<pid>/status`` sizes kept per process -> column.
STATUS_COLUMNS: Final = {"RssFile": "rss_file_kb", "RssShmem": "rss_shmem_kb", "VmPTE": "vm_pte_kb"}
#: ``/proc/meminfo`` fields with a column of their own (every field is also in ``meminfo``).
MEMINFO_COLUMNS: Final = {
    "MemTotal": "mem_total_kb",
    "MemFree": "mem_free_kb",
    "MemAvailable": "mem_available_kb",
    "Buffers": "buffers_kb",
    "Cached": "cached_kb",
    "AnonPages": "anon_pages_kb",
    "Shmem": "shmem_kb",
    "Slab": "slab_kb",
    "KernelStack": "kernel_stack_kb",
    "PageTables": "page_tables_kb",
    "SwapTotal": "swap_total_kb",
    "SwapFree": "swap_free_kb",
}
#: ``memory.stat`` keys (v2, v1) behind the cgroup columns, in bytes.
CGROUP_STAT_COLUMNS: Final[dict[str, tuple[str, str | None]]] = {
    "anon_bytes": ("anon", "total_rss"),
    "file_bytes": ("file", "total_cache"),
    "shmem_bytes": ("shmem", "total_shmem"),
    "kernel_bytes": ("kernel", None),
    "slab_bytes": ("slab", None),
    "pagetables_bytes": ("pagetables", None),
}


def _kb(value: str | None) -> int | None:
    if value is None:
        return None
    head = value.split(" ", 1)[0]
    return int(head) if head.isdigit() else None


def parse_sizes_kb(text: str) -> dict[str, int]:
    """``Key:  123 kB`` lines (meminfo, smaps_rollup, status) as ``{key: kB}``.

    Examples
    --------
    >>> parse_sizes_kb("MemTotal:  100 kB\\nHugePages_Total: 0\\nVmPTE:\\t52 kB\\n")
    {'MemTotal': 100, 'HugePages_Total': 0, 'VmPTE': 52}
    """
    out: dict[str, int] = {}
    for key, value in parse_kv(text).items():
        number = _kb(value)
        if number is not None:
            out[key] = number
    return out


def process_facts(
    procfs: ProcFS, st: ProcStat, status: dict[str, str], memory_cgroup: str | None
) -> dict[str, Any]:
    """The footprint and CPU columns of one process (``None`` where unreadable)."""
    out: dict[str, Any] = dict.fromkeys(ROLLUP_COLUMNS.values())
    try:
        rollup = parse_sizes_kb(procfs.text(st.pid, "smaps_rollup"))
    except (OSError, CapturePermissionError, ProcessGone):
        # a kernel without smaps_rollup (< 4.14), not allowed, or the process is exiting
        # (which the capture notices by itself)
        rollup = {}
    for key, column in ROLLUP_COLUMNS.items():
        out[column] = rollup.get(key)
    for key, column in STATUS_COLUMNS.items():
        out[column] = _kb(status.get(key))
    hz = procfs.clock_ticks_per_s()
    out["cpu_user_s"] = st.utime_ticks / hz
    out["cpu_system_s"] = st.stime_ticks / hz
    out["num_threads"] = st.num_threads
    out["memory_cgroup"] = memory_cgroup
    return out


def memory_cgroup_of(cgroups: dict[str, str], hierarchy: CgroupHierarchy | None) -> str | None:
    """The path of the cgroup whose memory controller charges this process."""
    if hierarchy is None:
        return None
    if hierarchy.version == 2:
        return cgroups.get("")
    for controllers, path in cgroups.items():
        if "memory" in controllers.split(","):
            return path
    return None


@dataclass(frozen=True)
class CgroupHierarchy:
    """Where the memory controller is mounted: cgroup ``version`` 2 or 1 at ``root``."""

    version: int
    root: Path

    @classmethod
    def find(cls, procfs: ProcFS) -> CgroupHierarchy | None:
        """The memory controller of the host whose ``/sys`` the procfs sees (or ``None``)."""
        base = procfs.sys_root / "fs" / "cgroup"
        for root in (base, base / "unified"):
            with contextlib.suppress(OSError):
                if "memory" in (root / "cgroup.controllers").read_text().split():
                    return cls(version=2, root=root)
        if (base / "memory" / "memory.usage_in_bytes").exists():
            return cls(version=1, root=base / "memory")
        return None

    def directory(self, path: str) -> Path | None:
        """The directory of cgroup ``path`` (``None`` for a path that leaves the hierarchy)."""
        parts = [p for p in path.split("/") if p]
        if any(p in (".", "..") for p in parts):
            return None
        return self.root.joinpath(*parts)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def cgroup_memory(hierarchy: CgroupHierarchy, path: str) -> dict[str, Any] | None:
    """The memory accounting of one cgroup (``None`` when it has none, e.g. the v2 root)."""
    d = hierarchy.directory(path)
    if d is None:
        return None
    v2 = hierarchy.version == 2
    current = _read_int(d / ("memory.current" if v2 else "memory.usage_in_bytes"))
    if current is None:
        return None
    limit = _read_int(d / ("memory.max" if v2 else "memory.limit_in_bytes"))
    if limit is not None and limit >= 1 << 62:  # v1 reports "no limit" as a huge number
        limit = None
    swap = _read_int(d / "memory.swap.current") if v2 else None
    stat: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in (d / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if value.strip().isdigit():
                stat[key] = int(value)
    row: dict[str, Any] = {
        "cgroup": path,
        "cgroup_version": hierarchy.version,
        "memory_current_bytes": current,
        "memory_max_bytes": limit,
        "memory_swap_current_bytes": swap,
        "memory_stat": json.dumps(stat, sort_keys=True),
    }
    for column, (v2_key, v1_key) in CGROUP_STAT_COLUMNS.items():
        stat_key = v2_key if v2 else v1_key
        row[column] = stat.get(stat_key) if stat_key is not None else None
    return row


@dataclass(frozen=True)
class CpuTimes:
    """The host's cumulative CPU counters (``/proc/stat``, first line), in ``USER_HZ`` ticks."""

    busy_ticks: int
    total_ticks: int

    @classmethod
    def parse(cls, text: str) -> CpuTimes | None:
        """From the text of ``/proc/stat`` (``None`` when there is no ``cpu`` line)."""
        for line in text.splitlines():
            if line.startswith("cpu "):
                values = [int(v) for v in line.split()[1:] if v.isdigit()]
                # user nice system idle iowait irq softirq steal [guest guest_nice]: guest
                # time is already inside user and nice
                total = sum(values[:8])
                idle = sum(values[3:5])
                return cls(busy_ticks=total - idle, total_ticks=total)
        return None


def parse_cpu_list(text: str) -> int:
    """How many CPUs a kernel CPU list names (``0-3,6`` -> 5).

    Examples
    --------
    >>> parse_cpu_list("0-1\\n"), parse_cpu_list("0,2-4")
    (2, 4)
    """
    n = 0
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        n += int(hi) - int(lo) + 1 if hi else 1
    return n


def read_loadavg(procfs: ProcFS) -> tuple[float | None, int | None]:
    """``(1-minute load average, procs_running)`` from ``/proc/loadavg``."""
    try:
        fields = (procfs.host_text("loadavg") or "").split()
        running = int(fields[3].split("/")[0])
        return float(fields[0]), running
    except (ValueError, IndexError):
        return None, None


def read_cpu_times(procfs: ProcFS) -> CpuTimes | None:
    """The host's cumulative CPU counters, or ``None`` where unreadable."""
    text = procfs.host_text("stat")
    return CpuTimes.parse(text) if text is not None else None


def host_facts(procfs: ProcFS) -> dict[str, Any]:
    """The host columns of one snapshot row (``None`` where unreadable)."""
    out: dict[str, Any] = dict.fromkeys(MEMINFO_COLUMNS.values())
    meminfo = parse_sizes_kb(procfs.host_text("meminfo") or "")
    for key, column in MEMINFO_COLUMNS.items():
        out[column] = meminfo.get(key)
    out["meminfo"] = json.dumps(meminfo, sort_keys=True) if meminfo else None
    cpus = None
    with contextlib.suppress(OSError, ValueError):
        cpus = parse_cpu_list(
            (procfs.sys_root / "devices" / "system" / "cpu" / "online").read_text()
        )
    out["cpus_online"] = cpus or (os.cpu_count() if procfs.is_live else None)
    out["user_hz"] = procfs.clock_ticks_per_s()
    times = read_cpu_times(procfs)
    out["cpu_busy_ticks"] = times.busy_ticks if times else None
    out["cpu_total_ticks"] = times.total_ticks if times else None
    out["loadavg_1m"], out["procs_running"] = read_loadavg(procfs)
    return out


@dataclass
class LoadMonitor:
    """The host's load over one interval: CPU counters at both ends, runnable tasks between.

    :meth:`start` at the interval's start, :meth:`sample` as often as the capture wakes up
    (each reads ``/proc/loadavg``: a few µs), :meth:`finish` at its end.
    """

    procfs: ProcFS
    _start: CpuTimes | None = None
    _running: list[int] = field(default_factory=list)

    def start(self) -> None:
        """Begin an interval."""
        self._start = read_cpu_times(self.procfs)
        self._running = []
        self.sample()

    def sample(self) -> None:
        """Record the number of runnable tasks now."""
        _, running = read_loadavg(self.procfs)
        if running is not None:
            self._running.append(running)

    def finish(self) -> dict[str, Any]:
        """The interval's columns: busy share of all CPUs, mean runnable tasks, samples."""
        self.sample()
        end = read_cpu_times(self.procfs)
        busy = None
        if self._start is not None and end is not None:
            total = end.total_ticks - self._start.total_ticks
            if total > 0:
                busy = (end.busy_ticks - self._start.busy_ticks) / total
        n = len(self._running)
        return {
            "interval_cpu_busy_share": busy,
            "interval_runnable_mean": sum(self._running) / n if n else None,
            "interval_load_samples": n,
        }


def read_cgroups(
    procfs: ProcFS, hierarchy: CgroupHierarchy | None, paths: set[str]
) -> list[dict[str, Any]]:
    """The memory accounting rows of the given memory cgroups (sorted by path)."""
    if hierarchy is None:
        return []
    rows = []
    for path in sorted(paths):
        row = cgroup_memory(hierarchy, path)
        if row is not None:
            rows.append(row)
    return rows


__all__ = [
    "MEMINFO_COLUMNS",
    "ROLLUP_COLUMNS",
    "STATUS_COLUMNS",
    "CgroupHierarchy",
    "CpuTimes",
    "LoadMonitor",
    "cgroup_memory",
    "host_facts",
    "memory_cgroup_of",
    "parse_cpu_list",
    "parse_sizes_kb",
    "process_facts",
    "read_cgroups",
]
