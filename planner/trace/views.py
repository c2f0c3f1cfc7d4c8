"""Typed views of what a trace says beyond its pages (schema v2), for the layers above.

The replay's write model, the busy-host CPU model and the whole-host capacity model read
these instead of Parquet columns (:class:`~planner.trace.io.HostTrace` has one accessor
each):

* :class:`PageChanges` -- per page row of one snapshot, what the sampler saw over the
  interval after it (docs/capture.md §9): passes, content checks and changes, frame changes,
  absences, same-content writes (where soft-dirty tracked them);
* :class:`Interval` -- per snapshot, the interval after it: its length, the host's busy CPU
  share and runnable tasks, the traced processes' own CPU seconds, the capture's, and how
  the sampling went;
* :class:`HostMemory` -- per snapshot, ``/proc/meminfo`` and the host's CPUs;
* :class:`ProcessFootprints` -- per snapshot, every live process's whole footprint
  (``smaps_rollup`` PSS split, page tables, swap) and CPU time;
* :class:`CgroupMemory` -- per snapshot, the memory accounting of the traced processes'
  cgroups.

A version-1 trace has none of these facts: every field is ``None`` (or an array of zeros
with an all-false ``sampled`` mask) rather than a guess.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from planner.trace.check import as_numpy

if TYPE_CHECKING:
    import pyarrow as pa

#: Per-page count columns of :class:`PageChanges` (``same_content_writes`` aside).
COUNT_COLUMNS = ("samples", "content_checks", "content_changes", "frame_changes", "absent_samples")


def _row(table: pa.Table, snapshot_id: int) -> dict[str, Any]:
    sid = as_numpy(table.column("snapshot_id"), np.int64)
    hit = np.flatnonzero(sid == snapshot_id)
    if not len(hit):
        raise KeyError(f"no snapshot {snapshot_id} in this trace")
    return dict(table.slice(int(hit[0]), 1).to_pylist()[0])


def _u16(col: Any) -> tuple[npt.NDArray[np.uint16], npt.NDArray[np.bool_]]:
    valid = ~as_numpy(col.is_null(), bool)
    return as_numpy(col, np.uint16, null=0), valid


def _take(table: pa.Table, rows: npt.NDArray[np.int64]) -> pa.Table:
    """``table.take(rows)``; pyarrow converts a numpy index through pandas (importing it,
    0.3 s of a replay's start-up), not an Arrow array made from the same buffer."""
    import pyarrow as pa

    rows = np.ascontiguousarray(rows, np.int64)
    return table.take(pa.Array.from_buffers(pa.int64(), rows.size, [None, pa.py_buffer(rows.data)]))


@dataclass(frozen=True)
class PageChanges:
    """What happened to each page row of one snapshot over the interval after it.

    Arrays are aligned with the snapshot's rows of ``pages`` (``HostTrace.pages_of``).
    Rows the sampler never looked at (not sampled, swapped, unreadable, a process it did
    not follow) have ``sampled`` false and counts 0.
    """

    snapshot_id: int
    interval_s: float | None
    """Length of the interval the counts cover (``None``: no interval after it)."""
    sample_ms: float | None
    """The sampling period asked (``None``: the trace was not sampled)."""
    soft_dirty: bool
    """Same-content writes were tracked (soft-dirty)."""
    sampled: npt.NDArray[np.bool_]
    samples: npt.NDArray[np.uint16]
    content_checks: npt.NDArray[np.uint16]
    content_changes: npt.NDArray[np.uint16]
    frame_changes: npt.NDArray[np.uint16]
    absent_samples: npt.NDArray[np.uint16]
    same_content_writes: npt.NDArray[np.uint16] | None
    """``None`` where writes were not tracked (a kernel without soft-dirty)."""
    other_hash: npt.NDArray[np.uint64] | None = None
    """The first content other than the snapshot's that the sampler found at each page,
    keyed as ``content_hash`` (0: none found; a keyed hash of 0, one chance in 2^64, reads
    as none). ``None``: no page has one (a trace of schema version 2 or older, or no page
    changed)."""

    def content_change_rate_per_s(self) -> npt.NDArray[np.float64]:
        """Observed content changes per second of each page (NaN where not sampled).

        A lower bound: two changes between two checks of a page count once, so a page
        checked every ``interval_s / content_checks`` seconds cannot show more changes than
        checks.
        """
        rate = np.full(len(self.sampled), np.nan)
        if self.interval_s:
            ok = self.sampled
            rate[ok] = self.content_changes[ok] / self.interval_s
        return rate

    def changed_share(self) -> npt.NDArray[np.float64]:
        """Share of each page's content checks that found a change (NaN: never checked)."""
        out = np.full(len(self.sampled), np.nan)
        checked = self.content_checks > 0
        out[checked] = self.content_changes[checked] / self.content_checks[checked]
        return out


def page_changes(snapshots: pa.Table, pages: pa.Table, snapshot_id: int) -> PageChanges:
    """The :class:`PageChanges` of ``pages`` (the rows of snapshot ``snapshot_id``)."""
    snap = _row(snapshots, snapshot_id)
    cols = {c: _u16(pages.column(c)) for c in COUNT_COLUMNS}
    sampled = cols["samples"][1]
    soft = bool(snap.get("soft_dirty"))
    same = _u16(pages.column("same_content_writes"))[0] if soft else None
    other = None
    if "other_hash" in pages.column_names:
        col = pages.column("other_hash")
        if col.null_count < len(col):
            other = as_numpy(col, np.uint64, null=0)
    return PageChanges(
        snapshot_id=snapshot_id,
        interval_s=snap.get("interval_s"),
        sample_ms=snap.get("sample_ms"),
        soft_dirty=soft,
        sampled=sampled,
        samples=cols["samples"][0],
        content_checks=cols["content_checks"][0],
        content_changes=cols["content_changes"][0],
        frame_changes=cols["frame_changes"][0],
        absent_samples=cols["absent_samples"][0],
        same_content_writes=same,
        other_hash=other,
    )


@dataclass(frozen=True)
class Interval:
    """The interval after one snapshot: the host's load, the traced processes' CPU, sampling."""

    snapshot_id: int
    start_s: float
    """Trace time the interval starts (the snapshot's start)."""
    length_s: float | None
    """``None``: no interval was recorded after this snapshot (the last, unsampled)."""
    host_cpu_busy_share: float | None
    """Busy share of all the host's CPUs (``/proc/stat``)."""
    runnable_mean: float | None
    """Mean of ``procs_running`` sampled over the interval."""
    cpus_online: int | None
    traced_cpu_s: float | None
    """CPU seconds the traced processes used (those alive at both ends; ``None`` for the
    last snapshot)."""
    capture_cpu_s: float | None
    """The capture's own CPU over the interval (sampling included)."""
    sample_ms: float | None
    samples: int | None
    """Sampling passes."""
    soft_dirty: bool
    sample_coverage: float | None
    sample_checks_per_page: float | None
    sample_cpu_s: float | None

    @property
    def traced_cpu_share(self) -> float | None:
        """The traced processes' CPU as a share of the host's CPUs over the interval."""
        if self.traced_cpu_s is None or not self.length_s or not self.cpus_online:
            return None
        return self.traced_cpu_s / (self.length_s * self.cpus_online)


def _cpu_by_process(processes: pa.Table, snapshot_id: int) -> dict[tuple[int, int], float]:
    out: dict[tuple[int, int], float] = {}
    sid = as_numpy(processes.column("snapshot_id"), np.int64)
    rows = _take(processes, np.flatnonzero(sid == snapshot_id)).to_pylist()
    for r in rows:
        if r["state"] == "ok" and r["cpu_user_s"] is not None and r["cpu_system_s"] is not None:
            out[(r["pid"], r["proc_start"])] = r["cpu_user_s"] + r["cpu_system_s"]
    return out


def intervals(snapshots: pa.Table, processes: pa.Table) -> list[Interval]:
    """One :class:`Interval` per snapshot, in time order."""
    snaps = snapshots.to_pylist()
    out = []
    for k, s in enumerate(snaps):
        traced = None
        if k + 1 < len(snaps):
            a = _cpu_by_process(processes, s["snapshot_id"])
            b = _cpu_by_process(processes, snaps[k + 1]["snapshot_id"])
            both = a.keys() & b.keys()
            if both:
                traced = sum(max(0.0, b[key] - a[key]) for key in both)
        out.append(
            Interval(
                snapshot_id=s["snapshot_id"],
                start_s=s["time_s"],
                length_s=s.get("interval_s"),
                host_cpu_busy_share=s.get("interval_cpu_busy_share"),
                runnable_mean=s.get("interval_runnable_mean"),
                cpus_online=s.get("cpus_online"),
                traced_cpu_s=traced,
                capture_cpu_s=s.get("interval_capture_cpu_s"),
                sample_ms=s.get("sample_ms"),
                samples=s.get("samples"),
                soft_dirty=bool(s.get("soft_dirty")),
                sample_coverage=s.get("sample_coverage"),
                sample_checks_per_page=s.get("sample_checks_per_page"),
                sample_cpu_s=s.get("sample_cpu_s"),
            )
        )
    return out


@dataclass(frozen=True)
class HostMemory:
    """The host at one snapshot: memory (kB, ``/proc/meminfo``) and CPUs."""

    snapshot_id: int
    mem_total_kb: int | None
    mem_available_kb: int | None
    mem_free_kb: int | None
    anon_pages_kb: int | None
    cached_kb: int | None
    buffers_kb: int | None
    shmem_kb: int | None
    slab_kb: int | None
    kernel_stack_kb: int | None
    page_tables_kb: int | None
    swap_total_kb: int | None
    swap_free_kb: int | None
    meminfo: dict[str, int]
    """Every ``/proc/meminfo`` field (empty for version-1 traces)."""
    cpus_online: int | None
    hz: int | None
    user_hz: int | None


def host_memory(snapshots: pa.Table, snapshot_id: int) -> HostMemory:
    """The :class:`HostMemory` of one snapshot."""
    s = _row(snapshots, snapshot_id)
    fields = HostMemory.__dataclass_fields__
    values = {k: s.get(k) for k in fields if k not in ("snapshot_id", "meminfo")}
    return HostMemory(
        snapshot_id=snapshot_id,
        meminfo=json.loads(s["meminfo"]) if s.get("meminfo") else {},
        **values,
    )


@dataclass(frozen=True)
class ProcessFootprints:
    """Every live process of one snapshot: its whole footprint (kB) and CPU time (s).

    Arrays are aligned; a value the trace does not have is NaN (version-1 traces, or a
    kernel without ``smaps_rollup``).
    """

    snapshot_id: int
    pid: npt.NDArray[np.int32]
    proc_start: npt.NDArray[np.uint64]
    comm: list[str | None]
    memory_cgroup: list[str | None]
    rss_anon_kb: npt.NDArray[np.float64]
    rss_file_kb: npt.NDArray[np.float64]
    rss_shmem_kb: npt.NDArray[np.float64]
    rss_kb: npt.NDArray[np.float64]
    pss_kb: npt.NDArray[np.float64]
    pss_anon_kb: npt.NDArray[np.float64]
    pss_file_kb: npt.NDArray[np.float64]
    pss_shmem_kb: npt.NDArray[np.float64]
    swap_pss_kb: npt.NDArray[np.float64]
    vm_pte_kb: npt.NDArray[np.float64]
    cpu_s: npt.NDArray[np.float64]
    """``utime`` + ``stime`` since the process started."""

    @property
    def footprint_kb(self) -> npt.NDArray[np.float64]:
        """What each process costs the host: PSS (its share of every page it maps,
        anonymous, file and shared memory), its share of swap, and its page tables."""
        return self.pss_kb + np.nan_to_num(self.swap_pss_kb) + self.vm_pte_kb


def process_footprints(processes: pa.Table, snapshot_id: int) -> ProcessFootprints:
    """The :class:`ProcessFootprints` of one snapshot (live processes only)."""
    sid = as_numpy(processes.column("snapshot_id"), np.int64)
    state = processes.column("state").to_pylist()
    rows = np.flatnonzero((sid == snapshot_id) & np.array([s == "ok" for s in state], bool))
    t = processes.take(rows)

    def f64(name: str) -> npt.NDArray[np.float64]:
        return np.array(as_numpy(t.column(name), np.float64), dtype=np.float64)

    return ProcessFootprints(
        snapshot_id=snapshot_id,
        pid=np.array(as_numpy(t.column("pid"), np.int32)),
        proc_start=np.array(as_numpy(t.column("proc_start"), np.uint64)),
        comm=t.column("comm").to_pylist(),
        memory_cgroup=t.column("memory_cgroup").to_pylist(),
        rss_anon_kb=f64("rss_anon_kb"),
        rss_file_kb=f64("rss_file_kb"),
        rss_shmem_kb=f64("rss_shmem_kb"),
        rss_kb=f64("rss_kb"),
        pss_kb=f64("pss_kb"),
        pss_anon_kb=f64("pss_anon_kb"),
        pss_file_kb=f64("pss_file_kb"),
        pss_shmem_kb=f64("pss_shmem_kb"),
        swap_pss_kb=f64("swap_pss_kb"),
        vm_pte_kb=f64("vm_pte_kb"),
        cpu_s=f64("cpu_user_s") + f64("cpu_system_s"),
    )


@dataclass(frozen=True)
class CgroupMemory:
    """The memory accounting of one cgroup at one snapshot (bytes)."""

    snapshot_id: int
    cgroup: str
    cgroup_version: int
    memory_current_bytes: int | None
    memory_max_bytes: int | None
    memory_swap_current_bytes: int | None
    anon_bytes: int | None
    file_bytes: int | None
    shmem_bytes: int | None
    kernel_bytes: int | None
    slab_bytes: int | None
    pagetables_bytes: int | None
    memory_stat: dict[str, int]


def cgroup_memory(cgroups: pa.Table, snapshot_id: int) -> list[CgroupMemory]:
    """The :class:`CgroupMemory` rows of one snapshot."""
    sid = as_numpy(cgroups.column("snapshot_id"), np.int64)
    out = []
    for r in cgroups.take(np.flatnonzero(sid == snapshot_id)).to_pylist():
        stat = json.loads(r.pop("memory_stat")) if r.get("memory_stat") else {}
        out.append(CgroupMemory(memory_stat=stat, **r))
    return out


__all__ = [
    "CgroupMemory",
    "HostMemory",
    "Interval",
    "PageChanges",
    "ProcessFootprints",
    "cgroup_memory",
    "host_memory",
    "intervals",
    "page_changes",
    "process_footprints",
]
