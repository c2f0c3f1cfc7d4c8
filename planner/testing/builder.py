"""Build small synthetic traces with a memory model that behaves like Linux.

A :class:`World` holds processes with anonymous pages (content ids) on physical frames.
Writes copy-on-write a shared frame (a private frame is written in place and keeps its
frame id), ``fork`` shares every frame of the parent with the child, ``exit`` and
``unmap`` remove pages. :meth:`World.snapshot` records the current state; the result is a
:class:`~planner.trace.io.HostTrace` (in memory) or a trace directory.

Content ids are small integers; id 0 is the all-zero page. Hashes are derived with
SplitMix64 so that different ids never collide.

Examples
--------
>>> w = World()
>>> w.spawn(100, comm="master")
>>> w.map(100, 0x10000, [1, 1, 2, 0])
>>> w.snapshot(0.0)
>>> w.fork(100, 101)
>>> w.write(101, 0x11000, 7)
>>> w.snapshot(10.0)
>>> ht = w.host_trace()
>>> ht.pages.num_rows
12
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from planner.trace import schema as S
from planner.trace.flat import FlatConverter, InMemoryHost
from planner.trace.io import HostTrace, TraceWriter

if TYPE_CHECKING:
    import os
    from collections.abc import Mapping

PAGE = S.PAGE_SIZE_BYTES
_M64 = (1 << 64) - 1


def content_hash(content_id: int) -> int:
    """The 64-bit hash of synthetic content ``content_id`` (0 is the zero page)."""
    if content_id == 0:
        return S.PLAIN_XXH3_ZERO_PAGE_HASH
    z = (content_id * 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    z ^= z >> 31
    return z if z != S.PLAIN_XXH3_ZERO_PAGE_HASH else z ^ 1


@dataclass
class _Page:
    content: int
    frame: int
    kind: str
    vma_start: int
    thp: bool = False


@dataclass
class _Proc:
    pid: int
    ppid: int
    comm: str
    proc_start: int
    cgroup: str | None
    uid: int | None
    labels: dict[str, str] | None
    pages: dict[int, _Page] = field(default_factory=dict)


class World:
    """A tiny model of processes, their anonymous pages and physical frames."""

    def __init__(self, host: str = "synthetic", *, hz: int | None = 250) -> None:
        self.host = host
        self.hz = hz
        self.procs: dict[int, _Proc] = {}
        self._next_frame = 1
        self._next_start = 1
        self._frame_refs: dict[int, int] = {}
        self._snapshots: list[tuple[float, pa.Table, list[dict[str, Any]]]] = []

    # -- processes -------------------------------------------------------------------------

    def spawn(
        self,
        pid: int,
        *,
        comm: str = "proc",
        ppid: int = 1,
        cgroup: str | None = None,
        uid: int | None = None,
        labels: dict[str, str] | None = None,
    ) -> None:
        """Start a new process with no pages."""
        if pid in self.procs:
            raise ValueError(f"pid {pid} exists")
        self.procs[pid] = _Proc(pid, ppid, comm, self._next_start, cgroup, uid, labels)
        self._next_start += 1

    def fork(self, parent: int, child: int, *, comm: str | None = None) -> None:
        """Fork: the child maps every frame of the parent (copy-on-write)."""
        p = self.procs[parent]
        self.spawn(
            child, comm=comm or p.comm, ppid=parent, cgroup=p.cgroup, uid=p.uid, labels=p.labels
        )
        c = self.procs[child]
        for addr, pg in p.pages.items():
            c.pages[addr] = _Page(pg.content, pg.frame, pg.kind, pg.vma_start, pg.thp)
            self._frame_refs[pg.frame] += 1

    def exit(self, pid: int) -> None:
        """The process exits; its pages are unmapped."""
        proc = self.procs.pop(pid)
        for pg in proc.pages.values():
            self._unref(pg.frame)

    # -- pages -----------------------------------------------------------------------------

    def map(
        self, pid: int, start: int, contents: list[int], *, kind: str = "anon", thp: bool = False
    ) -> None:
        """Map ``len(contents)`` fresh pages at ``start`` (one mapping) holding ``contents``."""
        proc = self.procs[pid]
        for i, c in enumerate(contents):
            addr = start + i * PAGE
            if addr in proc.pages:
                self._unref(proc.pages[addr].frame)
            proc.pages[addr] = _Page(c, self._new_frame(), kind, start, thp)

    def write(self, pid: int, addr: int, content: int) -> None:
        """Write ``content`` to the page at ``addr``: COW if its frame is shared, else in place."""
        pg = self.procs[pid].pages[addr]
        if self._frame_refs[pg.frame] > 1:
            self._unref(pg.frame)
            pg.frame = self._new_frame()
        pg.content = content

    def write_range(self, pid: int, start: int, contents: list[int]) -> None:
        """:meth:`write` consecutive pages from ``start``."""
        for i, c in enumerate(contents):
            self.write(pid, start + i * PAGE, c)

    def unmap(self, pid: int, start: int, npages: int) -> None:
        """Remove ``npages`` pages from ``start`` (munmap / MADV_DONTNEED)."""
        proc = self.procs[pid]
        for i in range(npages):
            pg = proc.pages.pop(start + i * PAGE, None)
            if pg is not None:
                self._unref(pg.frame)

    def _new_frame(self) -> int:
        f = self._next_frame
        self._next_frame += 1
        self._frame_refs[f] = 1
        return f

    def _unref(self, frame: int) -> None:
        self._frame_refs[frame] -= 1
        if not self._frame_refs[frame]:
            del self._frame_refs[frame]

    # -- snapshots -------------------------------------------------------------------------

    def snapshot(self, time_s: float) -> None:
        """Record the current state as a snapshot at ``time_s``."""
        cols: dict[str, list[Any]] = {
            k: []
            for k in (
                "pid",
                "ppid",
                "comm",
                "proc_start",
                "cgroup",
                "uid",
                "labels",
                "vma_start",
                "vma_kind",
                "page_addr",
                "content_hash",
                "frame",
                "is_zero",
                "flags",
            )
        }
        for pid in sorted(self.procs):
            proc = self.procs[pid]
            for addr in sorted(proc.pages):
                pg = proc.pages[addr]
                cols["pid"].append(pid)
                cols["ppid"].append(proc.ppid)
                cols["comm"].append(proc.comm)
                cols["proc_start"].append(proc.proc_start)
                cols["cgroup"].append(proc.cgroup)
                cols["uid"].append(proc.uid)
                cols["labels"].append(
                    json.dumps(proc.labels, sort_keys=True) if proc.labels else None
                )
                cols["vma_start"].append(pg.vma_start)
                cols["vma_kind"].append(pg.kind)
                cols["page_addr"].append(addr)
                cols["content_hash"].append(content_hash(pg.content))
                cols["frame"].append(pg.frame)
                cols["is_zero"].append(pg.content == 0)
                cols["flags"].append(int(S.PageFlag.THP) if pg.thp else 0)
        table = pa.table(
            {
                "pid": pa.array(cols["pid"], pa.int32()),
                "ppid": pa.array(cols["ppid"], pa.int32()),
                "comm": pa.array(cols["comm"], pa.string()),
                "proc_start": pa.array(cols["proc_start"], pa.uint64()),
                "cgroup": pa.array(cols["cgroup"], pa.string()),
                "uid": pa.array(cols["uid"], pa.int32()),
                "labels": pa.array(cols["labels"], pa.string()),
                "vma_start": pa.array(cols["vma_start"], pa.uint64()),
                "vma_kind": pa.array(cols["vma_kind"], pa.string()),
                "page_addr": pa.array(cols["page_addr"], pa.uint64()),
                "content_hash": pa.array(cols["content_hash"], pa.uint64()),
                "frame": pa.array(cols["frame"], pa.uint64()),
                "is_zero": pa.array(cols["is_zero"], pa.bool_()),
                "flags": pa.array(cols["flags"], pa.uint16()),
            }
        )
        if self._snapshots and time_s <= self._snapshots[-1][0]:
            raise ValueError("snapshot times must increase")
        alive = [
            {
                "pid": p.pid,
                "proc_start": p.proc_start,
                "ppid": p.ppid,
                "comm": p.comm,
                "cgroup": p.cgroup,
                "uid": p.uid,
                "labels": json.dumps(p.labels, sort_keys=True) if p.labels else None,
            }
            for p in self.procs.values()
            if not p.pages
        ]
        self._snapshots.append((float(time_s), table, alive))

    def _meta(self) -> dict[str, Any]:
        return {
            "hash_algo": "synthetic-splitmix64",
            "zero_hash": S.PLAIN_XXH3_ZERO_PAGE_HASH,
            "hz": self.hz,
            "kernel_release": "synthetic",
        }

    def _emit(self, sink: Any) -> None:
        conv = FlatConverter(self.host, snapshot_meta=self._meta())
        for sid, (t, rows, pageless) in enumerate(self._snapshots):
            snap, procs, maps, pages = conv.convert(sid, t, rows)
            if pageless:  # processes without pages are alive too
                extra = pa.Table.from_pylist(
                    [{"snapshot_id": sid, "state": "ok", "pages": 0, **p} for p in pageless],
                    schema=pa.schema(
                        [
                            procs.schema.field(n)
                            if n in procs.column_names
                            else S.PROCESSES_SCHEMA.field(n)
                            for n in (
                                "snapshot_id",
                                "state",
                                "pages",
                                "pid",
                                "proc_start",
                                "ppid",
                                "comm",
                                "cgroup",
                                "uid",
                                "labels",
                            )
                        ]
                    ),
                )
                procs = pa.concat_tables(
                    [procs, extra.select(procs.column_names)]
                    if set(extra.column_names) >= set(procs.column_names)
                    else [procs, extra],
                    promote_options="default",
                )
            sink.add_snapshot(snap, processes=procs, mappings=maps, pages=pages)

    def host_trace(self) -> HostTrace:
        """The recorded snapshots as an in-memory :class:`HostTrace`."""
        sink = InMemoryHost(self.host)
        self._emit(sink)
        return sink.build()

    def write_trace(
        self,
        out: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Write the recorded snapshots as a trace directory (``extra``: more manifest
        keys, e.g. the ``capture`` a capture would record)."""
        with TraceWriter(out, source="synthetic", overwrite=overwrite, extra=extra) as tw:
            self._emit(tw.host(self.host))


def joining_world(host: str = "synthetic", *, joins: int = 60) -> World:
    """Two workers, three snapshots 2 s apart, whose own pages take, ``joins`` each an
    interval, a content other pages of their process hold (:mod:`planner.engine.joins`):
    at 60, 3,600 joins a minute against 248 shared pages at the end."""
    w = World(host)
    for pid in (100, 101):
        w.spawn(pid, comm="node")
        w.map(pid, 0x100000, [7 + pid] * 4)  # the content the joins land on
        w.map(pid, 0x200000, [pid * 1000 + i for i in range(200)])
    w.snapshot(0.0)
    for k in (1, 2):
        for pid in (100, 101):
            w.write_range(pid, 0x200000 + (k - 1) * joins * PAGE, [7 + pid] * joins)
        w.snapshot(2.0 * k)
    return w
