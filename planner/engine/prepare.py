"""From a trace to what ksmd would see: processes (mms), their pages per snapshot, and how
each snapshot's pages relate to the previous snapshot's.

Both engines replay the same :class:`ReplayInput`; everything here is trace logic, with no
KSM state:

* **mms**: one per process instance (pid, start time, exec generation), with its
  registration (from the policy resolver), first/last snapshot and exit snapshot;
* **rows** of each snapshot, sorted by (mm, page): the page number, 64-bit content hash,
  trace frame id, and flags (zero content, THP, VM_MERGEABLE under the policy);
* **deltas** (:mod:`planner.engine.rows`): the first snapshot in full, every later one as
  the rows that vanished, appeared or changed, and where each changed row's physical page
  comes from (kept, a forked child's parent page, or a fresh one). Snapshots are read one at
  a time and only two are held at once while the deltas are built.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from planner.engine.registration import ProcessInfo, Registration, Resolver, prctl_everything
from planner.engine.rows import (
    F_ELIGIBLE,
    F_THP,
    F_ZERO,
    ContentCatalog,
    MmLayout,
    RowColumns,
    SnapshotDelta,
    SnapshotRows,
    SnapshotSequence,
    Transition,
    build_delta,
    row_keys,
    transition,
)
from planner.errors import InputDataError
from planner.trace.schema import PageFlag

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from planner.trace.io import HostTrace, Trace

I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
B = npt.NDArray[np.bool_]


@dataclass
class MmInfo:
    """One process instance (an mm_struct) across the trace."""

    mm: int
    pid: int
    proc_start: int
    ppid: int | None
    comm: str | None
    parent_mm: int | None
    first_snap: int
    exit_snap: int | None  # first snapshot in which it is gone; None if present at the end
    registration: Registration
    reg_order: tuple[float, int, int]  # sort key among mms registering together
    info: ProcessInfo


@dataclass
class ReplayInput:
    """Everything the engines replay: mms, snapshot deltas, trace facts.

    ``deltas[0]`` holds the first snapshot (every row added); ``snapshots[k]`` rebuilds
    snapshot ``k`` in full (for the reference model and the what-if layer).
    """

    host: str
    page_size: int
    hz: int | None
    trace_hash: str
    mms: list[MmInfo]
    deltas: list[SnapshotDelta]
    meta: dict[str, Any] = field(default_factory=dict)
    #: the hash of each content id (``SnapshotDelta.upd_gid``)
    content_hash: U64 = field(default_factory=lambda: np.empty(0, np.uint64))
    _seq: SnapshotSequence | None = field(default=None, repr=False)

    @property
    def n_contents(self) -> int:
        """Distinct contents over the whole trace."""
        return int(self.content_hash.size)

    @property
    def snapshots(self) -> SnapshotSequence:
        """The snapshots in full, rebuilt from the deltas on demand."""
        if self._seq is None:
            self._seq = SnapshotSequence(self.deltas)
        return self._seq

    @property
    def n_snapshots(self) -> int:
        """Number of snapshots."""
        return len(self.deltas)

    @property
    def times_ns(self) -> list[int]:
        """Snapshot times in ns."""
        return [d.time_ns for d in self.deltas]

    @property
    def max_rows(self) -> int:
        """Rows of the largest snapshot (the pages a replay tracks)."""
        return max((d.n_rows for d in self.deltas), default=0)

    @property
    def nbytes(self) -> int:
        """Memory held by the deltas (the first snapshot included) and the content ids."""
        return sum(d.nbytes for d in self.deltas) + self.content_hash.nbytes

    def transition(self, k: int) -> Transition:
        """Per-row transition arrays of snapshot ``k`` (for the reference model)."""
        old = self.snapshots[k - 1] if k > 0 else None
        return transition(old, self.snapshots[k], self.deltas[k])

    def entering(self, k: int) -> list[int]:
        """mms that register at snapshot ``k``, in registration order."""
        out = [m for m in self.mms if m.first_snap == k and m.registration.mode != "off"]
        out.sort(key=lambda m: m.reg_order)
        return [m.mm for m in out]

    def exiting(self, k: int) -> list[int]:
        """mms that are gone at snapshot ``k``."""
        return [m.mm for m in self.mms if m.exit_snap == k]


def _labels(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    try:
        d = json.loads(text)
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in d.items()} if isinstance(d, dict) else {}


@dataclass
class _Processes:
    """The process instances of a trace and where each process row belongs."""

    mms: list[MmInfo]
    row_mm: I64  # per processes-table row: its mm (-1: not a live process)
    present: list[list[int]]  # per snapshot: mms present


def _process_instances(
    ht: HostTrace, resolver: Resolver, include_mms: Sequence[int] | None
) -> _Processes:
    """mms from the processes table: identity, exec generations, parents, registration."""
    snaps = ht.snapshots.to_pydict()
    sids: list[int] = snaps["snapshot_id"]
    times_s: list[float] = snaps["time_s"]
    sid_index = {sid: i for i, sid in enumerate(sids)}
    procs = ht.processes.to_pydict()
    key_mm: dict[tuple[int, int, int], int] = {}
    # (pid, start) -> (generation, comm, cmdline_hash)
    gen: dict[tuple[int, int], tuple[int, Any, Any]] = {}
    present: list[list[int]] = [[] for _ in sids]
    raw: list[dict[str, Any]] = []
    row_mm = np.full(len(procs["pid"]), -1, np.int64)
    for r in range(len(procs["pid"])):
        if procs["state"][r] != "ok":
            continue
        k = sid_index.get(procs["snapshot_id"][r])
        if k is None:
            raise InputDataError(
                f"processes row {r} refers to unknown snapshot {procs['snapshot_id'][r]}"
            )
        pid, start = int(procs["pid"][r]), int(procs["proc_start"][r])
        comm, ch = procs["comm"][r], procs["cmdline_hash"][r]
        g, pcomm, pch = gen.get((pid, start), (0, comm, ch))
        if (comm is not None and pcomm is not None and comm != pcomm) or (
            ch is not None and pch is not None and ch != pch
        ):
            g += 1  # exec: a new mm for the same process
        gen[(pid, start)] = (g, comm, ch)
        key = (pid, start, g)
        if key not in key_mm:
            key_mm[key] = len(raw)
            raw.append({"pid": pid, "start": start, "first": k, "row": r})
        row_mm[r] = key_mm[key]
        present[k].append(key_mm[key])
    # mm ids in order of (first snapshot, pid, start): renumber
    order = sorted(range(len(raw)), key=lambda i: (raw[i]["first"], raw[i]["pid"], raw[i]["start"]))
    renum = {old: new for new, old in enumerate(order)}
    renum_arr = np.array([renum[i] for i in range(len(raw))] + [-1], dtype=np.int64)
    row_mm = renum_arr[row_mm]  # -1 stays -1 (the last entry)
    present = [sorted(renum[m] for m in p) for p in present]
    raw = [raw[i] for i in order]
    n_mm = len(raw)
    last_seen = [-1] * n_mm
    for k, p in enumerate(present):
        for m in p:
            last_seen[m] = k
    first = [r["first"] for r in raw]
    present_sets = [set(p) for p in present]
    for m in range(n_mm):
        for k in range(first[m], last_seen[m] + 1):
            if m not in present_sets[k]:
                raise InputDataError(
                    f"process {raw[m]['pid']} (start {raw[m]['start']}) disappears at "
                    f"snapshot {sids[k]} and "
                    "comes back with the same start time",
                    hint="a process cannot come back; check the trace's proc_start values",
                )
    keep = set(include_mms) if include_mms is not None else set(range(n_mm))
    mms = _mm_infos(procs, raw, first, last_seen, len(sids), times_s, resolver, keep)
    return _Processes(mms=mms, row_mm=row_mm, present=present)


def _mm_infos(
    procs: dict[str, list[Any]],
    raw: list[dict[str, Any]],
    first: list[int],
    last_seen: list[int],
    n_snaps: int,
    times_s: list[float],
    resolver: Resolver,
    keep: set[int],
) -> list[MmInfo]:
    """Parents, ancestry and registration of each mm (parents resolve before children)."""
    n_mm = len(raw)
    # parents: the latest mm of pid == ppid present at (or before) the child's first snapshot
    pid_history: dict[int, list[tuple[int, int]]] = {}
    for m in range(n_mm):
        pid_history.setdefault(raw[m]["pid"], []).append((first[m], m))
    mms: list[MmInfo] = []
    regs: list[Registration] = []
    for m in range(n_mm):
        r = raw[m]["row"]
        ppid = procs["ppid"][r]
        parent = None
        if ppid is not None:
            # the parent existed before the child (it forked it); else it appeared together
            hist = [(f, mm) for (f, mm) in pid_history.get(int(ppid), []) if mm != m]
            before = [mm for (f, mm) in hist if f < first[m] and last_seen[mm] >= first[m] - 1]
            same = [mm for (f, mm) in hist if f == first[m]]
            parent = before[-1] if before else (same[-1] if same else None)
        ancestors: list[int] = []
        a = parent
        while a is not None and a not in ancestors and len(ancestors) < 64:
            ancestors.append(a)
            a = mms[a].parent_mm if a < len(mms) else None
        info = ProcessInfo(
            mm=m,
            pid=raw[m]["pid"],
            proc_start=raw[m]["start"],
            ppid=None if ppid is None else int(ppid),
            comm=procs["comm"][r],
            cmdline=procs["cmdline"][r],
            cgroup=procs["cgroup"][r],
            uid=procs["uid"][r],
            labels=_labels(procs["labels"][r]),
            parent_mm=parent,
            ancestors=tuple(ancestors),
            first_time_s=float(times_s[first[m]]),
        )
        parent_reg = regs[parent] if parent is not None and parent < len(regs) else None
        reg = resolver(info, parent_reg) if m in keep else Registration(mode="off", rule="excluded")
        regs.append(reg)
        exit_snap = last_seen[m] + 1 if last_seen[m] + 1 < n_snaps else None
        rt = procs["reg_time_s"][r]
        mms.append(
            MmInfo(
                mm=m,
                pid=raw[m]["pid"],
                proc_start=raw[m]["start"],
                ppid=info.ppid,
                comm=info.comm,
                parent_mm=parent,
                first_snap=first[m],
                exit_snap=exit_snap,
                registration=reg,
                reg_order=(
                    float(rt) if rt is not None else float("inf"),
                    raw[m]["pid"],
                    raw[m]["start"],
                ),
                info=info,
            )
        )
    return mms


@dataclass
class _PageColumns:
    """One snapshot's pages as numpy columns (zero-copy where Arrow allows)."""

    pid: npt.NDArray[np.integer[Any]]
    vma: U64
    addr: U64
    hash: U64
    frame: U64
    flags: npt.NDArray[np.uint16]
    usable: B | None  # rows with a hash and a frame (None: every row)


def _page_columns(pages: pa.Table, zero_hash: int | None) -> _PageColumns:
    hash_col = pages.column("content_hash")
    frame_col = pages.column("frame_id")
    usable = None
    if hash_col.null_count or frame_col.null_count:
        usable = np.ones(pages.num_rows, dtype=bool)
        for col in (hash_col, frame_col):
            if col.null_count:
                usable &= ~np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)

    def u64(col: pa.ChunkedArray[Any]) -> U64:
        if col.null_count:
            col = col.fill_null(pa.scalar(0, pa.uint64()))
        return np.asarray(col.to_numpy(), dtype=np.uint64)

    p_hash, p_frame = u64(hash_col), u64(frame_col)
    p_flags = np.asarray(pages.column("flags").to_numpy(), dtype=np.uint16)
    if zero_hash is not None:
        # the zero flag also marks pages whose hash is the zero page's
        p_flags = p_flags | ((p_hash == np.uint64(zero_hash)) * np.uint16(PageFlag.ZERO))
    return _PageColumns(
        pid=pages.column("pid").to_numpy(),
        vma=np.asarray(pages.column("vma_start").to_numpy(), dtype=np.uint64),
        addr=np.asarray(pages.column("page_addr").to_numpy(), dtype=np.uint64),
        hash=p_hash,
        frame=p_frame,
        flags=p_flags,
        usable=usable,
    )


@dataclass
class _MappingRows:
    """The mappings table, by snapshot."""

    sid: npt.NDArray[np.integer[Any]]
    pid: npt.NDArray[np.integer[Any]]
    start: npt.NDArray[np.integer[Any]]
    end: npt.NDArray[np.integer[Any]]
    kind: list[str]


def _eligibility(
    mms: list[MmInfo],
    maps: _MappingRows,
    sid: int,
    pid_to_mm: dict[int, int],
    mm_present: I32,
    r_pid: npt.NDArray[np.integer[Any]],
    r_vma: U64,
    page_size: int,
) -> tuple[B, B]:
    """Per row: VM_MERGEABLE under the policy; per present mm: has a mergeable mapping."""
    mode = {m: mms[m].registration.mode for m in mm_present.tolist()}
    mergeable = np.array([mode[m] == "prctl" for m in mm_present.tolist()], dtype=bool)
    n = r_pid.size
    if all(v == "prctl" for v in mode.values()):
        return np.ones(n, bool), mergeable
    mm_pos = {int(m): i for i, m in enumerate(mm_present.tolist())}
    mlo, mhi = (int(x) for x in np.searchsorted(maps.sid, [sid, sid + 1]))
    map_key: dict[tuple[int, int], bool] = {}
    for j in range(mlo, mhi):
        mm_j = pid_to_mm.get(int(maps.pid[j]))
        if mm_j is None:
            continue
        ok = mms[mm_j].registration.mergeable(
            str(maps.kind[j]), int(maps.start[j]), int(maps.end[j])
        )
        map_key[(int(maps.pid[j]), int(maps.start[j]))] = ok
        if ok:
            mergeable[mm_pos[mm_j]] = True
    eligible = np.zeros(n, bool)
    if n:
        # runs of rows of one (pid, mapping): look up each run once
        heads = np.flatnonzero(np.r_[True, (r_pid[1:] != r_pid[:-1]) | (r_vma[1:] != r_vma[:-1])])
        ends = np.r_[heads[1:], n]
        for a, b in zip(heads.tolist(), ends.tolist(), strict=True):
            pid_u, vs = int(r_pid[a]), int(r_vma[a])
            mm_u = pid_to_mm[pid_u]
            if mode[mm_u] == "prctl":
                ok = True
            elif (pid_u, vs) in map_key:
                ok = map_key[(pid_u, vs)]
            else:
                # rows whose (pid, vma_start) has no mapping row: the page's own check
                ok = mms[mm_u].registration.mergeable("other", vs, vs + page_size)
                if ok:
                    mergeable[mm_pos[mm_u]] = True
            if ok:
                eligible[a:b] = True
    return eligible, mergeable


def _snapshot_rows(
    cols: _PageColumns,
    maps: _MappingRows,
    procs: _Processes,
    proc_sid: I64,
    proc_pid: I64,
    k: int,
    sid: int,
    shift: int,
    page_size: int,
) -> tuple[RowColumns, MmLayout]:
    """Snapshot ``k``'s rows sorted by (mm, page), and where each mm's rows are."""
    sel = np.flatnonzero((proc_sid == sid) & (procs.row_mm >= 0))
    pid_to_mm = {int(proc_pid[i]): int(procs.row_mm[i]) for i in sel}
    if cols.usable is None or cols.usable.all():
        idx: slice | I64 = slice(0, cols.pid.size)
    else:
        idx = np.flatnonzero(cols.usable)
    r_pid = cols.pid[idx]
    n = r_pid.size
    heads = np.flatnonzero(np.r_[True, r_pid[1:] != r_pid[:-1]]) if n else np.empty(0, np.int64)
    run_pid = r_pid[heads]
    missing = [int(p) for p in np.unique(run_pid) if int(p) not in pid_to_mm]
    if missing:
        raise InputDataError(
            f"snapshot {sid}: pages of pid {missing[0]} but no live process row for it",
            hint="the processes table must list every process that has pages",
        )
    run_mm = np.array([pid_to_mm[int(p)] for p in run_pid.tolist()], dtype=np.int32)
    run_len = np.diff(np.r_[heads, n])
    r_page = cols.addr[idx] >> np.uint64(shift)
    r_mm = np.repeat(run_mm, run_len)
    key = row_keys(r_mm, r_page)
    order: I64 | None = None
    if n > 1 and not bool(np.all(key[1:] > key[:-1])):
        order = np.lexsort((r_page, r_mm))  # the trace was not sorted by (pid, page)
        key, r_page, r_mm, r_pid = key[order], r_page[order], r_mm[order], r_pid[order]

    def take(col: npt.NDArray[Any]) -> npt.NDArray[Any]:
        c = col[idx]
        return c if order is None else c[order]

    mm_present = np.array(sorted(procs.present[k]), dtype=np.int32)
    eligible, mergeable = _eligibility(
        procs.mms, maps, sid, pid_to_mm, mm_present, r_pid, take(cols.vma), page_size
    )
    pf = take(cols.flags)
    flags = eligible.view(np.uint8) * np.uint8(F_ELIGIBLE)
    flags |= ((pf & np.uint16(PageFlag.ZERO)) != 0).view(np.uint8) * np.uint8(F_ZERO)
    flags |= ((pf & np.uint16(PageFlag.THP)) != 0).view(np.uint8) * np.uint8(F_THP)
    counts = (
        np.bincount(np.searchsorted(mm_present, r_mm), minlength=mm_present.size)
        if n
        else np.zeros(mm_present.size, np.int64)
    )
    mm_hi = np.cumsum(counts).astype(np.int64)
    rows = RowColumns(
        key=key,
        page=r_page,
        hash=np.ascontiguousarray(take(cols.hash)),
        frame=np.ascontiguousarray(take(cols.frame)),
        flags=flags,
        mm=r_mm.astype(np.int32),
    )
    return rows, MmLayout(present=mm_present, lo=mm_hi - counts, hi=mm_hi, mergeable=mergeable)


class InputBuilder:
    """Builds a :class:`ReplayInput` one snapshot at a time (only two are held at once).

    :func:`prepare` feeds it from a trace; :mod:`planner.testing.synth` feeds it generated
    rows directly (a day of a large host, without the trace in memory).
    """

    def __init__(
        self,
        *,
        host: str,
        page_size: int,
        hz: int | None,
        trace_hash: str,
        mms: list[MmInfo],
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.host, self.page_size, self.hz, self.trace_hash = host, page_size, hz, trace_hash
        self.mms = mms
        self.meta = dict(meta or {})
        self.deltas: list[SnapshotDelta] = []
        self.catalog = ContentCatalog()
        self.prev: RowColumns | None = None
        self.parent_of = np.array(
            [mi.parent_mm if mi.parent_mm is not None else -1 for mi in mms] + [-1], np.int64
        )

    def add(self, time_ns: int, rows: RowColumns, layout: MmLayout) -> None:
        """The next snapshot's rows (sorted by key) and layout."""
        self.deltas.append(
            build_delta(
                self.prev,
                rows,
                index=len(self.deltas),
                time_ns=time_ns,
                layout=layout,
                parent_of=self.parent_of,
                catalog=self.catalog,
            )
        )
        self.prev = rows

    def build(self) -> ReplayInput:
        """The input, once every snapshot was added."""
        self.prev = None
        return ReplayInput(
            host=self.host,
            page_size=self.page_size,
            hz=self.hz,
            trace_hash=self.trace_hash,
            mms=self.mms,
            deltas=self.deltas,
            meta=self.meta,
            content_hash=self.catalog.hashes(),
        )


def prepare(
    ht: HostTrace,
    *,
    resolver: Resolver | None = None,
    include_mms: Sequence[int] | None = None,
) -> ReplayInput:
    """Build the :class:`ReplayInput` of one host trace under a policy ``resolver``.

    ``include_mms`` restricts the replay to some process instances (used for security
    domains that must not merge with each other: each domain is replayed alone).
    """
    sids = [int(sid) for sid in ht.snapshot_ids.tolist()]
    # pages are sorted by snapshot: cut the table once (pages_of reads the column per call)
    col = np.asarray(ht.pages.column("snapshot_id").to_numpy())
    cuts = np.searchsorted(col, np.array([*sids, sids[-1] + 1] if sids else [], np.int64))
    del col
    parts = (
        (sid, ht.pages.slice(int(cuts[i]), int(cuts[i + 1] - cuts[i])))
        for i, sid in enumerate(sids)
    )
    return _prepare(ht, parts, resolver, include_mms)


def prepare_trace(
    trace: Trace,
    host: str | None = None,
    *,
    resolver: Resolver | None = None,
    include_mms: Sequence[int] | None = None,
) -> ReplayInput:
    """:func:`prepare` for one host of a trace directory, reading its pages one snapshot at
    a time: memory holds two snapshots' rows and the deltas, not the whole trace."""
    from planner.trace import schema as S
    from planner.trace.io import HostTrace

    if host is None:
        if len(trace.hosts) != 1:
            raise InputDataError(
                f"{trace.path} holds {len(trace.hosts)} hosts ({', '.join(trace.hosts)})",
                hint="name one with --host",
            )
        host = trace.hosts[0]
    tables = {n: trace.read_table(host, n) for n in ("snapshots", "processes", "mappings")}
    ht = HostTrace(
        host=host,
        trace_hash=trace.trace_hash,
        path=trace.host_path(host),
        pages=S.PAGES_SCHEMA.empty_table(),
        **tables,
    )
    columns = ["pid", "vma_start", "page_addr", "flags", "content_hash", "frame_id"]
    return _prepare(ht, trace.iter_snapshot_pages(host, columns), resolver, include_mms)


def _prepare(
    ht: HostTrace,
    pages: Iterable[tuple[int, pa.Table]],
    resolver: Resolver | None,
    include_mms: Sequence[int] | None,
) -> ReplayInput:
    """The input from ``ht``'s small tables and its pages, snapshot by snapshot (in order;
    a snapshot without pages may be missing)."""
    from planner.engine.fast.apply import release_memory  # (numba: not at import time)

    resolver = resolver or prctl_everything
    meta = ht.meta()
    page_size = int(meta.get("page_size") or 4096)
    shift = page_size.bit_length() - 1
    snaps = ht.snapshots.to_pydict()
    sids: list[int] = snaps["snapshot_id"]
    times_s: list[float] = snaps["time_s"]
    if any(b < a for a, b in itertools.pairwise(times_s)):
        raise InputDataError("snapshot times go backwards", hint="re-create or re-ingest the trace")
    procs = _process_instances(ht, resolver, include_mms)
    m = ht.mappings
    maps = _MappingRows(
        sid=m.column("snapshot_id").to_numpy(),
        pid=m.column("pid").to_numpy(),
        start=m.column("start").to_numpy(),
        end=m.column("end").to_numpy(),
        kind=[str(k) for k in m.column("kind").to_pylist()],
    )
    proc_sid = np.asarray(ht.processes.column("snapshot_id").to_numpy(), dtype=np.int64)
    proc_pid = np.asarray(ht.processes.column("pid").to_numpy(), dtype=np.int64)
    hz = meta.get("hz")
    builder = InputBuilder(
        host=ht.host,
        page_size=page_size,
        hz=int(hz) if hz else None,
        trace_hash=ht.trace_hash,
        mms=procs.mms,
        meta={k: v for k, v in meta.items() if k != "zero_hash"},
    )
    empty = ht.pages.schema.empty_table()
    stream = iter(pages)
    nxt = next(stream, None)
    for k, sid in enumerate(sids):
        table = empty
        taken = nxt is not None and nxt[0] == sid
        if nxt is not None and taken:
            table, nxt = nxt[1], None
        cols = _page_columns(table, meta.get("zero_hash"))
        del table  # the columns are numpy now (copies of a chunked table): Arrow's goes
        release_memory()
        cur, layout = _snapshot_rows(
            cols, maps, procs, proc_sid, proc_pid, k, sid, shift, page_size
        )
        del cols
        builder.add(round(times_s[k] * 1e9), cur, layout)
        del cur
        release_memory()  # what the snapshot's rows and delta used, before the next is read
        if taken:  # the next snapshot's pages are read only now: one snapshot in memory
            nxt = next(stream, None)
    return builder.build()


__all__ = [
    "InputBuilder",
    "MmInfo",
    "ReplayInput",
    "SnapshotDelta",
    "SnapshotRows",
    "prepare",
    "prepare_trace",
]
