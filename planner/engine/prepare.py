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

import dataclasses
import itertools
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from planner._heap import normal_pages, release_memory
from planner.engine.registration import (
    PRCTL_AT_DEFAULT,
    PrctlAt,
    ProcessInfo,
    Registration,
    Resolver,
    prctl_everything,
)
from planner.engine.rows import (
    F_ELIGIBLE,
    F_THP,
    F_ZERO,
    ContentCatalog,
    MmLayout,
    RowColumns,
    RowIds,
    SnapshotDelta,
    SnapshotRows,
    SnapshotSequence,
    Transition,
    build_delta,
    isin,
    row_keys,
    transition,
)
from planner.engine.write_timing import PassTiming
from planner.engine.writes import (
    IntervalWrites,
    OtherContents,
    carry_toggles,
    changed_between,
    classify_toggles,
    continue_trend,
    effective_changes,
    effective_same_writes,
    fill_unchecked,
)
from planner.errors import InputDataError
from planner.trace.check import MappingStarts, as_numpy, program_generations
from planner.trace.io import read_ahead
from planner.trace.schema import PAGE_CHANGE_COLUMNS, PageFlag
from planner.trace.views import PageChanges, page_changes

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    from planner.engine.timing import HostLoad
    from planner.trace.io import HostTrace, Trace

I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
U16 = npt.NDArray[np.uint16]
B = npt.NDArray[np.bool_]
F64 = npt.NDArray[np.float64]


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
    #: CPUs it used over the trace (user + system time between its first and last snapshot
    #: over their distance), None where the trace has no CPU times (the canary's roles,
    #: :func:`planner.engine.writes.process_roles`)
    cpu_share: float | None = None


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
    #: per snapshot, the writes the sampler saw on its rows over the interval after it
    #: (None: not sampled, or a version-1 trace); :mod:`planner.engine.writes`
    writes: list[IntervalWrites | None] = field(default_factory=list)
    _seq: SnapshotSequence | None = field(default=None, repr=False)

    @property
    def n_contents(self) -> int:
        """Distinct contents over the whole trace."""
        return int(self.content_hash.size)

    @property
    def snapshots(self) -> SnapshotSequence:
        """The snapshots in full, rebuilt from the deltas on demand."""
        if self._seq is None:
            self._seq = SnapshotSequence(self.deltas, self.content_hash)
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
        held = sum(d.nbytes for d in self.deltas) + self.content_hash.nbytes
        return held + sum(w.nbytes for w in self.writes if w is not None)

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
    present: list[list[int]] = [[] for _ in sids]
    raw: list[dict[str, Any]] = []
    row_mm = np.full(len(procs["pid"]), -1, np.int64)
    live = [r for r in range(len(procs["pid"])) if procs["state"][r] == "ok"]
    for r in live:
        if procs["snapshot_id"][r] not in sid_index:
            raise InputDataError(
                f"processes row {r} refers to unknown snapshot {procs['snapshot_id'][r]}"
            )
    live.sort(key=lambda r: sid_index[procs["snapshot_id"][r]])  # (stable: table order)
    # an exec (not a rename: setproctitle) is a new mm for the same process
    gens = program_generations(procs, live, MappingStarts(ht.mappings))
    for r, g in zip(live, gens, strict=True):
        k = sid_index[procs["snapshot_id"][r]]
        pid, start = int(procs["pid"][r]), int(procs["proc_start"][r])
        key = (pid, start, g)
        if key not in key_mm:
            key_mm[key] = len(raw)
            raw.append({"pid": pid, "start": start, "first": k, "row": r})
        row_mm[r] = key_mm[key]
        present[k].append(key_mm[key])
        raw[key_mm[key]]["last"] = (r, k)
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
                cpu_share=_cpu_share(procs, raw[m], times_s),
            )
        )
    return mms


def _mapping_spans(sids: list[int], maps: _MappingRows) -> dict[str, Any]:
    """The trace's mappings as arrays (``meta["mappings"]``): per mapping its snapshot's
    index, pid, start, end and kind; the canary's page classes need them
    (:func:`planner.engine.writes.with_canary`)."""
    index = {sid: k for k, sid in enumerate(sids)}
    return {
        "snapshot": np.array([index.get(int(x), -1) for x in maps.sid.tolist()], np.int64),
        "pid": np.asarray(maps.pid, np.int64),
        "start": np.asarray(maps.start, np.uint64),
        "end": np.asarray(maps.end, np.uint64),
        "kind": np.array(maps.kind, dtype=object),
    }


def _cpu_share(
    procs: dict[str, list[Any]], raw: dict[str, Any], times_s: list[float]
) -> float | None:
    """CPUs a process used between its first and last snapshot (None: not recorded)."""
    (r0, k0), (r1, k1) = (raw["row"], raw["first"]), raw.get("last", (raw["row"], raw["first"]))
    if k1 <= k0 or "cpu_user_s" not in procs or "cpu_system_s" not in procs:
        return None
    cpu = []
    for r in (r0, r1):
        user, system = procs["cpu_user_s"][r], procs["cpu_system_s"][r]
        if user is None or system is None:
            return None
        cpu.append(float(user) + float(system))
    span_s = float(times_s[k1] - times_s[k0])
    return max(0.0, cpu[1] - cpu[0]) / span_s if span_s > 0 else None


_NO_ROWS = np.empty(0, np.uint64)  # a consumed column of _PageColumns or RowColumns
_NO_ROWS_U32 = np.empty(0, np.uint32)


@dataclass(frozen=True)
class _PageRuns:
    """A snapshot's rows in runs of one (pid, mapping start, high half of the page
    number), in the order the trace gives them: what is the same for many rows is kept
    once per run, not once per row (a run starts at row ``start``)."""

    start: I64
    pid: npt.NDArray[np.int32]
    vma: U64
    page_hi: U64  # the page number >> 32 of every row of the run


@dataclass
class _PageColumns:
    """One snapshot's pages as numpy columns (zero-copy where Arrow allows)."""

    hash: U64
    frame: U64
    flags: npt.NDArray[np.uint16]
    page_lo: npt.NDArray[np.uint32]  # the page number's low 32 bits (high ones: its run's)
    runs: _PageRuns
    usable: B | None  # rows with a hash and a frame (None: every row)
    #: per row, the writes the sampler saw in the interval after the snapshot: content
    #: changes and same-content writes (None: the trace has no counts for this snapshot)
    writes: WriteCounts | None = None


WriteCounts = tuple[U16, U16, U16, B, "U64 | None"]
"""Per row of a snapshot (:func:`_write_counts`): content changes, same-content writes,
content checks, whether the counts were raised to a floor, and the first other content's
hash (0: none; None: the trace records none)."""


def _write_counts(pc: PageChanges) -> WriteCounts | None:
    """Per row: content changes (:func:`planner.engine.writes.effective_changes`),
    same-content writes, the content checks the sampler made, whether the sampler saw
    the row change or written at every look, so that its count was raised to one per
    sampling period, and the first content other than the snapshot's it found (the
    trace's ``other_hash``, 0 for none; None where the trace has none) (None: unsampled).

    Same-content writes are soft-dirty's count where the capture tracked writes (a row
    written at every pass taken to write once per sampling period:
    :func:`planner.engine.writes.effective_same_writes`); elsewhere
    the frame changes beyond the content changes (a copy-on-write of unchanged bytes is the
    only same-content write a content sampler sees; docs/capture.md §9.3).
    """
    if not pc.sampled.any():
        return None
    content = effective_changes(pc.content_changes, pc.content_checks, pc.interval_s, pc.sample_ms)
    if pc.same_content_writes is not None:
        same = effective_same_writes(
            pc.same_content_writes, pc.content_changes, pc.samples, pc.interval_s, pc.sample_ms
        )
        floored = (content != pc.content_changes) | (same != pc.same_content_writes)
    else:
        extra = pc.frame_changes.astype(np.int32) - pc.content_changes.astype(np.int32)
        same = np.maximum(extra, 0).astype(np.uint16)
        floored = content != pc.content_changes
    # an interval that saw no write is kept: its unchecked rows take their rates from the
    # nearest interval that checked them (fill_unchecked), as a starved sampler's must
    return content, same, pc.content_checks, floored, pc.other_hash


def _sampled(pages: pa.Table) -> bool:
    """Whether the content sampler counted anything on these rows: a row it never sampled
    has a null ``samples`` (docs/capture.md §9), and without one sampled row
    :func:`_write_counts` finds no writes, so its five count columns need not be decoded
    (Arrow keeps each column's null count: no row is read)."""
    if "content_changes" not in pages.column_names or not pages.num_rows:
        return False
    return "samples" not in pages.column_names or (
        pages.column("samples").null_count < pages.num_rows
    )


def _np_column(col: pa.ChunkedArray[Any], dtype: npt.DTypeLike) -> npt.NDArray[Any]:
    """One column as numpy, nulls as 0, read from Arrow's buffers (a view where Arrow
    allows; Arrow's own conversion allocates on transparent huge pages, see
    :func:`planner._heap.normal_pages`, and ``to_numpy`` imports pandas)."""
    return as_numpy(col, dtype, null=0)


#: The page columns a replay copies out of a trace, row by row, with their numpy types
#: (:class:`SnapshotPages`); the pid, mapping start and page address are kept as runs
#: and each row's low page bits (:data:`_RUN_COLUMNS`).
_ROW_COLUMNS: tuple[tuple[str, type[np.generic]], ...] = (
    ("content_hash", np.uint64),
    ("frame_id", np.uint64),  # (kept in 32 bits while every id fits: SnapshotPages.add)
    ("flags", np.uint16),
)
_FRAME = 1  # the frame ids' place among the row columns
_FRAME_32 = np.uint64(0xFFFFFFFF)
_RUN_COLUMNS = ("pid", "vma_start", "page_addr")
#: Rows per batch :func:`prepare_trace` decodes: each is copied out and dropped before the
#: next (:class:`SnapshotPages`). A 4 M-page snapshot peaked 1,128 MB (no reading ahead,
#: the whole Arrow table then numpy), 1,052 MB in batches of 2**20 rows, 929 MB of 2**18,
#: in the same time (Arrow's decoding buffers scale with the batch).
BATCH_ROWS = 1 << 18
#: what :func:`prepare_trace` reads of the pages table
PAGE_COLUMNS = (*(name for name, _ in _ROW_COLUMNS), *_RUN_COLUMNS, *PAGE_CHANGE_COLUMNS)


class SnapshotPages:
    """One snapshot's pages, copied out of the trace part by part into numpy columns.

    A trace's pages come in batches of Arrow rows (:meth:`Trace.iter_snapshot_batches`).
    Each part's columns are copied into arrays sized for the snapshot (``rows_hint``: the
    rows its processes' ``pages`` announce; the arrays are grown or cut to the rows that
    came, in place where the C library can), and the part is dropped. So the snapshot is
    never held as an Arrow table and as numpy columns side by side: at 4 M pages that was
    ~270 MB of Arrow memory at the peak of ``prepare`` (docs/engine.md, "Speed and
    memory"). The sampler's count columns are kept as Arrow parts, and only from parts in
    which some row was sampled (:func:`_sampled`).

    A row keeps its hash, frame id and flags and the low 32 bits of its page number (18 B;
    22 B where a frame id of the snapshot needs 64 bits, as an ingested trace's opaque ids
    may: a capture numbers its frames from 1, docs/engine.md "Frame ids in 32 bits"); its
    pid, mapping start and the page number's high bits, the same for a mapping's rows, are
    kept once per run of rows that share them (:class:`_PageRuns`), not the 20 B a row
    they took as columns (docs/engine.md, "Pages kept in runs").
    ``page_shift``: log2 of the page size.
    """

    def __init__(self, rows_hint: int = 0, page_shift: int = 12) -> None:
        # a hint is a trace's word, not a fact: one no snapshot can have (row positions
        # are int32), or that this machine cannot reserve, is dropped, and the columns
        # grow as the rows come (np.empty reserves; only the rows written are touched)
        cap = max(int(rows_hint), 0)
        self.rows = 0
        self._shift = np.uint64(page_shift)
        try:
            if cap >= 1 << 31:
                raise MemoryError
            self._cols = self._empty(cap)
        except MemoryError:
            self._cols = self._empty(0)
        self._runs: list[tuple[I64, npt.NDArray[np.int32], U64, U64]] = []
        self._unusable: list[I64] = []  # rows without a hash or a frame
        self._counts: list[tuple[int, pa.Table | None]] = []  # (rows, count columns)
        self._sampled = False

    @staticmethod
    def _empty(n: int) -> list[npt.NDArray[Any]]:
        cols = [np.empty(n, dtype) for _, dtype in _ROW_COLUMNS]
        cols[_FRAME] = np.empty(n, np.uint32)  # (until an id needs 64 bits)
        return [*cols, np.empty(n, np.uint32)]

    @classmethod
    def of(cls, pages: pa.Table, page_shift: int = 12) -> SnapshotPages:
        """A snapshot whose pages are one table held anyway (a trace loaded in memory): its
        row columns are viewed where Arrow allows, not copied."""
        out = cls(page_shift=page_shift)
        out._cols = [
            *(_np_column(pages.column(name), dtype) for name, dtype in _ROW_COLUMNS),
            out._page_lo_and_runs(pages, 0),
        ]
        out._note_part(pages, 0)
        out.rows = pages.num_rows
        return out

    def _page_lo_and_runs(self, part: pa.Table, lo: int) -> npt.NDArray[np.uint32]:
        """A part's low page bits, its runs noted (a run is cut where the pid, the mapping
        start or the page's high bits change; one that goes on into the next part is cut
        there too, which costs a run, not a row)."""
        pid = _np_column(part.column("pid"), np.int32)
        vma = _np_column(part.column("vma_start"), np.uint64)
        page = _np_column(part.column("page_addr"), np.uint64) >> self._shift
        hi = page >> np.uint64(32)
        n = pid.size
        cut = np.empty(n, bool)
        cut[:1] = True
        np.not_equal(pid[1:], pid[:-1], out=cut[1:])
        cut[1:] |= vma[1:] != vma[:-1]
        cut[1:] |= hi[1:] != hi[:-1]
        heads = np.flatnonzero(cut)
        self._runs.append((heads + lo, pid[heads], vma[heads], hi[heads]))
        return page.astype(np.uint32)  # (the low 32 bits)

    def _note_part(self, part: pa.Table, lo: int) -> None:
        """A part's rows without a hash or a frame, and its count columns if sampled."""
        for name in ("content_hash", "frame_id"):
            col = part.column(name)
            if col.null_count:
                self._unusable.append(np.flatnonzero(_np_column(col.is_null(), bool)) + lo)
        sampled = _sampled(part)
        self._sampled |= sampled
        counts = [c for c in PAGE_CHANGE_COLUMNS if c in part.column_names]
        self._counts.append((part.num_rows, part.select(counts) if sampled else None))

    def add(self, part: pa.Table) -> None:
        """The snapshot's next rows (copied: ``part`` may be dropped at once)."""
        m = part.num_rows
        if not m:
            return
        lo, hi = self.rows, self.rows + m
        if hi > self._cols[0].size:
            cap = max(hi, self._cols[0].size + self._cols[0].size // 2)
            for arr in self._cols:
                arr.resize(cap, refcheck=False)  # realloc: large blocks are remapped
        for i, (name, dtype) in enumerate(_ROW_COLUMNS):
            col = _np_column(part.column(name), dtype)
            narrow = i == _FRAME and self._cols[i].dtype == np.uint32
            if narrow and col.size and col.max() > _FRAME_32:  # ids now take 64 bits
                self._cols[i] = self._cols[i].astype(np.uint64)
            self._cols[i][lo:hi] = col
        self._cols[-1][lo:hi] = self._page_lo_and_runs(part, lo)
        self._note_part(part, lo)
        self.rows = hi

    def counts(self) -> pa.Table | None:
        """The sampler's count columns of every row (None: no row was sampled)."""
        if not self._sampled:
            return None
        tables = [t for _, t in self._counts if t is not None]
        schema = tables[0].schema
        parts = [
            t if t is not None else pa.table([pa.nulls(n, f.type) for f in schema], schema=schema)
            for n, t in self._counts
        ]
        return pa.concat_tables(parts)

    def take_columns(self) -> tuple[list[npt.NDArray[Any]], _PageRuns, B | None]:
        """The row columns (hash, frame, flags, low page bits) cut to the rows that came,
        the runs, and the rows with a hash and a frame (None: every row); handed over, not
        kept."""
        cols, self._cols = self._cols, []
        for arr in cols:
            if arr.size != self.rows:
                arr.resize(self.rows, refcheck=False)
        parts, self._runs = self._runs, []
        runs = _PageRuns(
            start=np.concatenate([r[0] for r in parts]) if parts else np.empty(0, np.int64),
            pid=np.concatenate([r[1] for r in parts]) if parts else np.empty(0, np.int32),
            vma=np.concatenate([r[2] for r in parts]) if parts else np.empty(0, np.uint64),
            page_hi=np.concatenate([r[3] for r in parts]) if parts else np.empty(0, np.uint64),
        )
        usable = None
        if self._unusable:
            usable = np.ones(self.rows, dtype=bool)
            for rows in self._unusable:
                usable[rows] = False
            self._unusable = []
        return cols, runs, usable


def snapshot_pages(
    parts: Iterable[tuple[int, pa.Table]], rows_hint: dict[int, int], page_shift: int = 12
) -> Iterator[tuple[int, SnapshotPages]]:
    """Consecutive parts of one snapshot (:meth:`Trace.iter_snapshot_batches`) gathered
    into a :class:`SnapshotPages` each, in order (``rows_hint``: the rows each snapshot
    announces, to size its columns; ``page_shift``: log2 of the page size)."""
    current: tuple[int, SnapshotPages] | None = None
    for sid, part in parts:
        if current is None or current[0] != sid:
            if current is not None:
                yield current
            current = (sid, SnapshotPages(rows_hint.get(sid, 0), page_shift))
        current[1].add(part)
        del part
    if current is not None:
        yield current


def _page_size(meta: dict[str, Any]) -> int:
    """The trace's page size (4096 where it does not say)."""
    return int(meta.get("page_size") or 4096)


def _rows_hint(ht: HostTrace) -> dict[int, int]:
    """Per snapshot, the page rows its processes' ``pages`` announce (a size hint only)."""
    procs = ht.processes
    if "pages" not in procs.column_names or not procs.num_rows:
        return {}
    sid = as_numpy(procs.column("snapshot_id"), np.int64)
    rows = as_numpy(procs.column("pages"), np.int64, null=0)
    ids, inverse = np.unique(sid, return_inverse=True)
    total = np.bincount(inverse, weights=np.maximum(rows, 0), minlength=ids.size)
    return {int(i): int(t) for i, t in zip(ids.tolist(), total.tolist(), strict=True)}


def _page_columns(
    pages: SnapshotPages, zero_hash: int | None, changes: PageChanges | None = None
) -> _PageColumns:
    """The snapshot's pages as numpy columns (``pages`` is emptied: they are handed over)."""
    out, runs, usable = pages.take_columns()
    p_hash, p_frame, p_flags, page_lo = out
    if zero_hash is not None:
        # the zero flag also marks pages whose hash is the zero page's
        p_flags = p_flags | ((p_hash == np.uint64(zero_hash)) * np.uint16(PageFlag.ZERO))
    return _PageColumns(
        hash=p_hash,
        frame=p_frame,
        flags=p_flags,
        page_lo=page_lo,
        runs=runs,
        usable=usable,
        writes=None if changes is None else _write_counts(changes),
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
    run_pid: npt.NDArray[np.integer[Any]],
    run_vma: U64,
    page_size: int,
    prctl_at: PrctlAt = PRCTL_AT_DEFAULT,
) -> tuple[B, B]:
    """Per run of rows of one (pid, mapping start): VM_MERGEABLE under the policy; per
    present mm: has a mergeable mapping.

    A prctl process has every mapping mergeable, but for its exec-time ``[stack]`` when the
    prctl came before exec (``prctl_at="exec"``, docs/kernel-semantics.md §2.6)."""
    mode = {m: mms[m].registration.mode for m in mm_present.tolist()}
    mergeable = np.array([mode[m] == "prctl" for m in mm_present.tolist()], dtype=bool)
    n = run_pid.size
    every = prctl_at == "running"  # a prctl process: every row, without a look at its mappings
    if every and all(v == "prctl" for v in mode.values()):
        return np.ones(n, bool), mergeable
    mm_pos = {int(m): i for i, m in enumerate(mm_present.tolist())}
    mlo, mhi = (int(x) for x in np.searchsorted(maps.sid, [sid, sid + 1]))
    map_key: dict[tuple[int, int], bool] = {}
    for j in range(mlo, mhi):
        mm_j = pid_to_mm.get(int(maps.pid[j]))
        if mm_j is None:
            continue
        ok = mms[mm_j].registration.mergeable(
            str(maps.kind[j]), int(maps.start[j]), int(maps.end[j]), prctl_at
        )
        map_key[(int(maps.pid[j]), int(maps.start[j]))] = ok
        if ok:
            mergeable[mm_pos[mm_j]] = True
    eligible = np.zeros(n, bool)
    # each (pid, mapping) looked up once, however many runs the rows' order cut it into
    seen: dict[tuple[int, int], bool] = {}
    for i, (pid_u, vs) in enumerate(zip(run_pid.tolist(), run_vma.tolist(), strict=True)):
        ok_run = seen.get((pid_u, vs))
        if ok_run is None:
            mm_u = pid_to_mm[pid_u]
            if mode[mm_u] == "prctl" and every:
                ok_run = True
            elif (pid_u, vs) in map_key:
                ok_run = map_key[(pid_u, vs)]
            else:
                # rows whose (pid, vma_start) has no mapping row: the page's own check
                ok_run = mms[mm_u].registration.mergeable("other", vs, vs + page_size)
                if ok_run:
                    mergeable[mm_pos[mm_u]] = True
            seen[(pid_u, vs)] = ok_run
        eligible[i] = ok_run
    return eligible, mergeable


def _snapshot_rows(
    cols: _PageColumns,
    maps: _MappingRows,
    procs: _Processes,
    proc_sid: I64,
    proc_pid: I64,
    k: int,
    sid: int,
    page_size: int,
    prctl_at: PrctlAt = PRCTL_AT_DEFAULT,
) -> tuple[RowColumns, MmLayout, WriteCounts | None]:
    """Snapshot ``k``'s rows sorted by (mm, page), where each mm's rows are, and the
    writes the sampler saw on each row after it (if the trace has them). ``cols`` is
    consumed: its low page bits are dropped once the keys are made."""
    sel = np.flatnonzero((proc_sid == sid) & (procs.row_mm >= 0))
    pid_to_mm = {int(proc_pid[i]): int(procs.row_mm[i]) for i in sel}
    runs = cols.runs
    if cols.usable is None or cols.usable.all():
        n = cols.page_lo.size
        idx: slice | I64 = slice(0, n)
        heads = runs.start
    else:
        idx = np.flatnonzero(cols.usable)
        n = idx.size
        heads = np.searchsorted(idx, runs.start)  # each run's first usable row
    run_len = np.diff(np.r_[heads, n]).astype(np.int64) if heads.size else heads
    live = run_len > 0  # (runs of unusable rows only are dropped)
    run_pid, run_vma, run_hi, run_len = (
        runs.pid[live],
        runs.vma[live],
        runs.page_hi[live],
        run_len[live],
    )
    missing = [int(p) for p in np.unique(run_pid) if int(p) not in pid_to_mm]
    if missing:
        raise InputDataError(
            f"snapshot {sid}: pages of pid {missing[0]} but no live process row for it",
            hint="the processes table must list every process that has pages",
        )
    run_mm = np.array([pid_to_mm[int(p)] for p in run_pid.tolist()], dtype=np.int32)
    # a row's key is (mm << 36) | page: its run's mm and high page bits, and its low bits
    key = cols.page_lo[idx].astype(np.uint64)
    cols.page_lo = _NO_ROWS_U32  # consumed: each snapshot-sized column is given back once
    key |= np.repeat(row_keys(run_mm, run_hi << np.uint64(32)), run_len)
    release_memory()  # the rows have no use for it
    order: I64 | None = None
    if n > 1 and not bool(np.all(key[1:] > key[:-1])):
        order = np.argsort(key, kind="stable")  # the trace was not sorted by (pid, page)
        key = key[order]

    def take(col: npt.NDArray[Any]) -> npt.NDArray[Any]:
        c = col[idx]
        return c if order is None else c[order]

    mm_present = np.array(sorted(procs.present[k]), dtype=np.int32)
    run_ok, mergeable = _eligibility(
        procs.mms, maps, sid, pid_to_mm, mm_present, run_pid, run_vma, page_size, prctl_at
    )
    eligible = np.repeat(run_ok, run_len)
    if order is not None:
        eligible = eligible[order]
    pf = take(cols.flags)
    flags = eligible.view(np.uint8) * np.uint8(F_ELIGIBLE)
    flags |= ((pf & np.uint16(PageFlag.ZERO)) != 0).view(np.uint8) * np.uint8(F_ZERO)
    flags |= ((pf & np.uint16(PageFlag.THP)) != 0).view(np.uint8) * np.uint8(F_THP)
    # rows per mm from the runs of one pid (an mm's rows are its runs' wherever the sort
    # put them): one search per run, not per row
    counts = np.zeros(mm_present.size, np.int64)
    np.add.at(counts, np.searchsorted(mm_present, run_mm), run_len)
    mm_hi = np.cumsum(counts).astype(np.int64)
    rows = RowColumns(
        key=key,
        hash=np.ascontiguousarray(take(cols.hash)),
        frame=np.ascontiguousarray(take(cols.frame)),
        flags=flags,
    )
    writes: WriteCounts | None = None
    if cols.writes is not None:
        content, same, checks, floored, other = cols.writes
        writes = (
            take(content),
            take(same),
            take(checks),
            take(floored),
            None if other is None else take(other),
        )
    layout = MmLayout(present=mm_present, lo=mm_hi - counts, hi=mm_hi, mergeable=mergeable)
    return rows, layout, writes


def _mapping_starts(
    maps: _MappingRows, procs: _Processes, proc_sid: I64, proc_pid: I64, sid: int, shift: int
) -> U64:
    """Snapshot ``sid``'s mapping starts as sorted row keys (``(mm << 36) | first page``):
    what the growth model splits new rows by (:mod:`planner.engine.growth`)."""
    sel = np.flatnonzero((proc_sid == sid) & (procs.row_mm >= 0))
    pid_to_mm = {int(proc_pid[i]): int(procs.row_mm[i]) for i in sel}
    mlo, mhi = (int(x) for x in np.searchsorted(maps.sid, [sid, sid + 1]))
    pids = maps.pid[mlo:mhi].tolist()
    keep = np.array([p in pid_to_mm for p in pids], dtype=bool)
    mm = np.array([pid_to_mm.get(p, 0) for p in pids], dtype=np.int64)
    start = maps.start[mlo:mhi].astype(np.uint64) >> np.uint64(shift)
    return np.unique(row_keys(mm[keep], start[keep]))


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
        self.prev: RowIds | None = None
        self.parent_of = np.array(
            [mi.parent_mm if mi.parent_mm is not None else -1 for mi in mms] + [-1], np.int64
        )
        self.writes: list[IntervalWrites | None] = []
        self._pending: tuple[WriteCounts, int | None, PassTiming | None] | None = None
        self._keys: list[U64 | None] = []  # per snapshot with counts: its row keys
        self._checked: list[npt.NDArray[np.bool_] | None] = []
        self._differs: list[npt.NDArray[np.bool_] | None] = []
        self._prev_toggle: tuple[U64, npt.NDArray[np.bool_]] | None = None
        #: the previous snapshot's rows' content history (:func:`content_history`), kept
        #: while the trace has counts
        self._history: ContentHistory | None = None
        #: the content ids rows held zero-filled (the zero page's content), sorted
        self._zero_ids = np.empty(0, np.int32)

    def add(
        self,
        time_ns: int,
        rows: RowColumns,
        layout: MmLayout,
        writes: WriteCounts | None = None,
        interval_ns: int | None = None,
        timing: PassTiming | None = None,
    ) -> None:
        """The next snapshot's rows (sorted by key) and layout, and the writes the sampler
        saw on its rows over the interval after it (``interval_ns`` long; ``timing``: when
        each process wrote, :mod:`planner.engine.write_timing`). Frame ids given in 64
        bits that fit 32 (a generator's, a trace held in memory) are kept in 32."""
        if rows.frame.dtype != np.uint32 and rows.frame.size and rows.frame.max() <= _FRAME_32:
            rows.frame = rows.frame.astype(np.uint32)  # (the rows are consumed anyway)
        delta, ids = build_delta(
            self.prev,
            rows,
            index=len(self.deltas),
            time_ns=time_ns,
            layout=layout,
            parent_of=self.parent_of,
            catalog=self.catalog,
        )  # (``rows``' hashes are consumed: its content ids replace them)
        history = None
        if writes is not None:  # (5 B a row, only where the trace has counts)
            history = content_history(self.prev, self._history, ids)
            zero = np.unique(ids.gid[(ids.flags & np.uint8(F_ZERO)) != 0])
            if np.setdiff1d(zero, self._zero_ids).size:
                self._zero_ids = np.union1d(self._zero_ids, zero).astype(np.int32)
        self._close_writes(ids)
        self._history = history
        self._pending = None if writes is None else (writes, interval_ns, timing)
        self.deltas.append(delta)
        # the next delta reads the previous rows' keys, content ids, frames and flags (21 B
        # per row, held until the next snapshot is added)
        self.prev = ids

    def _close_writes(self, nxt: RowIds | None) -> None:
        """The previous snapshot's writes, now that the next snapshot (or none) is known."""
        prev = self.prev
        if prev is None:
            return
        if self._pending is None:
            self.writes.append(None)
            self._keys.append(None)
            self._checked.append(None)
            self._differs.append(None)
            self._prev_toggle = None
            return
        (content, same, checks, floored, other), interval_ns, timing = self._pending
        self._keys.append(prev.key)
        self._checked.append(checks > 0)
        self._differs.append(
            None if nxt is None else changed_between(prev.key, prev.gid, nxt.key, nxt.gid)
        )
        if nxt is not None:
            toggle = classify_toggles(prev.key, prev.gid, nxt.key, nxt.gid)
        elif self._prev_toggle is not None:
            toggle = carry_toggles(*self._prev_toggle, prev.key)
        else:
            toggle = np.zeros(prev.key.size, bool)
        others = None
        if other is not None or (nxt is None and self._history is not None):
            toggle, others = two_contents(
                toggle,
                other,
                None if nxt is not None else self._history,
                self.catalog,
                self._zero_ids,
                prev.gid,
            )
        self.writes.append(
            IntervalWrites(
                content,
                same,
                toggle,
                interval_ns,
                floored_rows=int(np.count_nonzero(floored)),
                timing=timing,
                others=others,
            )
        )
        self._prev_toggle = (prev.key, toggle)
        self._pending = None

    def build(self) -> ReplayInput:
        """The input, once every snapshot was added."""
        self._close_writes(None)
        self.prev = None
        if any(w is not None for w in self.writes):
            contents = [None if w is None else w.content for w in self.writes]
            lengths = [
                None if w is None or not w.length_ns else w.length_ns / 1e9 for w in self.writes
            ]
            fill_unchecked(self._keys, contents, self._checked, lengths)
            last = self.writes[-1]
            cont = continue_trend(
                self._keys, contents, self._differs, lengths, None if last is None else last.same
            )
            if cont is not None and last is not None:
                c, s, span_s = cont
                same = last.same if s is None else s
                self.writes[-1] = dataclasses.replace(
                    last, content=c, same=same, length_ns=round(span_s * 1e9)
                )
        self._keys, self._checked, self._differs = [], [], []
        return ReplayInput(
            host=self.host,
            page_size=self.page_size,
            hz=self.hz,
            trace_hash=self.trace_hash,
            mms=self.mms,
            deltas=self.deltas,
            meta=self.meta,
            content_hash=self.catalog.hashes(),
            writes=self.writes if any(w is not None for w in self.writes) else [],
        )


@dataclass(frozen=True)
class ContentHistory:
    """Per row of a snapshot: the content it held before its current one, and whether it
    came back to a content it held before (:func:`content_history`)."""

    was: npt.NDArray[np.int32]
    """The content id the row held before it took its current content (-1: none seen)."""
    back: B
    """The row once came back to the content it held before (a toggle the snapshots show)."""


def content_history(
    prev: RowIds | None, prev_history: ContentHistory | None, cur: RowIds
) -> ContentHistory:
    """The rows of ``cur``: :class:`ContentHistory`, from the previous snapshot's rows and
    history (a row new in ``cur``, or the first snapshot's, has none)."""
    n = cur.key.size
    was = np.full(n, -1, np.int32)
    back = np.zeros(n, bool)
    if prev is None or not prev.key.size or not n:
        return ContentHistory(was, back)
    pos = np.minimum(np.searchsorted(prev.key, cur.key), prev.key.size - 1)
    hit = prev.key[pos] == cur.key
    before = prev.gid[pos]
    changed = hit & (before != cur.gid)
    was[changed] = before[changed]
    if prev_history is not None:
        kept = hit & ~changed
        was[kept] = prev_history.was[pos[kept]]
        back = changed & (prev_history.was[pos] == cur.gid)
        back |= hit & prev_history.back[pos]
    return ContentHistory(was, back)


def two_contents(
    toggle: B,
    other: U64 | None,
    history: ContentHistory | None,
    catalog: ContentCatalog,
    zero_ids: npt.NDArray[np.int32] | None = None,
    content: npt.NDArray[np.int32] | None = None,
) -> tuple[B, OtherContents | None]:
    """Rows that alternate between their snapshot's content and one other the trace
    knows, and that content (docs/engine.md, "Pages that alternate between two contents").

    * ``history`` (the last snapshot's rows only: the continuation's): a row that once came
      back to a content it held before, or whose first other content in the interval
      (``other``, the sampler's ``other_hash``) is the one it held before, alternates
      between the two, whatever ``toggle`` said; and so does every row that holds the same
      content and held the same one before (``content``: the rows' content ids): the
      copies of one page in forked workers, of which the sampler's rotating slice of
      checks may have reached some after they went back and others before.
    * Any other toggling row whose first other content the sampler saw alternates with that
      one (a page that went there and back within the interval).

    Returns the toggles and the rows' other contents as catalog ids (None: none known),
    zero-filled where ``zero_ids`` (sorted: the contents rows held zero-filled) has them;
    the catalog gains the contents no snapshot row has."""
    n = toggle.size
    other_id = np.full(n, -1, np.int64)
    if history is not None:
        two = history.was >= 0
        seen_back = history.back.copy()
        if other is not None:
            cand = np.flatnonzero(two & (other != 0))
            held = catalog.value_view()[history.was[cand]]
            seen_back[cand[held == other[cand]]] = True
        if content is not None and (two & seen_back).any():  # copies with that history
            pair = (content.astype(np.int64) << 32) | history.was.astype(np.int64)
            known = np.unique(pair[two & seen_back])
            seen_back |= isin(pair, known, of_sorted=True)
        two &= seen_back
        toggle = toggle | two
        other_id[two] = history.was[two]
    if other is not None:
        fill = np.flatnonzero(toggle & (other_id < 0) & (other != 0))
        if fill.size:
            other_id[fill] = catalog.ids_of(np.ascontiguousarray(other[fill]))
    rows = np.flatnonzero(other_id >= 0)
    if not rows.size:
        return toggle, None
    ids = other_id[rows]
    zero = None
    if zero_ids is not None and zero_ids.size:
        z = isin(ids, zero_ids.astype(np.int64), of_sorted=True)
        zero = z if z.any() else None
    return toggle, OtherContents(rows, ids, zero)


def prepare(
    ht: HostTrace,
    *,
    resolver: Resolver | None = None,
    include_mms: Sequence[int] | None = None,
    prctl_at: PrctlAt = PRCTL_AT_DEFAULT,
) -> ReplayInput:
    """Build the :class:`ReplayInput` of one host trace under a policy ``resolver``.

    ``include_mms`` restricts the replay to some process instances (used for security
    domains that must not merge with each other: each domain is replayed alone).
    ``prctl_at`` says when prctl processes registered
    (:data:`planner.engine.registration.PrctlAt`; the launcher case by default).
    """
    sids = [int(sid) for sid in ht.snapshot_ids.tolist()]
    # pages are sorted by snapshot: cut the table once (pages_of reads the column per call)
    col = as_numpy(ht.pages.column("snapshot_id"), np.int64)
    cuts = np.searchsorted(col, np.array([*sids, sids[-1] + 1] if sids else [], np.int64))
    del col
    shift = _page_size(ht.meta()).bit_length() - 1
    parts = (
        (sid, SnapshotPages.of(ht.pages.slice(int(cuts[i]), int(cuts[i + 1] - cuts[i])), shift))
        for i, sid in enumerate(sids)
    )
    return _prepare(ht, parts, resolver, include_mms, prctl_at)


def prepare_trace(
    trace: Trace,
    host: str | None = None,
    *,
    resolver: Resolver | None = None,
    include_mms: Sequence[int] | None = None,
    prctl_at: PrctlAt = PRCTL_AT_DEFAULT,
    tables: HostTrace | None = None,
    ahead: bool = True,
) -> ReplayInput:
    """:func:`prepare` for one host of a trace directory, reading its pages one snapshot at
    a time: memory holds two snapshots' rows and the deltas, not the whole trace.

    ``tables``: the host's small tables, if the caller has already loaded them
    (``trace.load_host(host, pages=False)``, e.g. to match a policy to its processes).
    ``ahead``: read the next snapshot in a thread meanwhile (faster; one more snapshot's
    pages in memory). A memory-bound what-if worker turns it off.
    """
    if tables is None:
        tables = trace.load_host(host, pages=False)
    # each batch of pages is copied out as it comes (SnapshotPages): one snapshot's columns
    # and one batch of Arrow rows in memory, never a snapshot's whole Arrow table
    batches = trace.iter_snapshot_batches(tables.host, PAGE_COLUMNS, batch_rows=BATCH_ROWS)
    shift = _page_size(tables.meta()).bit_length() - 1
    stream = snapshot_pages(batches, _rows_hint(tables), shift)
    try:
        if not ahead:
            return _prepare(tables, stream, resolver, include_mms, prctl_at)
        pages = read_ahead(stream)
        try:
            return _prepare(tables, pages, resolver, include_mms, prctl_at)
        finally:
            pages.close()
    finally:
        # the decoded pages are gone; Arrow's allocator (mimalloc) keeps their memory for
        # its next allocation, which a replay never makes: ~400 MB of a 4 M-page replay's
        # resident size, given back
        pa.default_memory_pool().release_unused()


def _load(ht: HostTrace) -> HostLoad | None:
    """The CPU load the trace recorded (version 2), for the time model."""
    from planner.engine.timing import recorded_load

    return recorded_load(ht.intervals())


def _prepare(
    ht: HostTrace,
    pages: Iterable[tuple[int, SnapshotPages]],
    resolver: Resolver | None,
    include_mms: Sequence[int] | None,
    prctl_at: PrctlAt = PRCTL_AT_DEFAULT,
) -> ReplayInput:
    """The input from ``ht``'s small tables and its pages, snapshot by snapshot (in order;
    a snapshot without pages may be missing)."""
    with normal_pages():  # arrays used once (docs/engine.md, "Speed and memory")
        inp = _prepare_rows(ht, pages, resolver, include_mms, prctl_at)
    release_memory()  # the snapshots' pages and rows, freed, go back to the system
    return inp


@dataclass(frozen=True)
class SampleRows:
    """The columns of a trace's ``samples`` table that time the writes, as numpy arrays
    (read once per trace: :func:`pass_timing` takes one interval's rows at a time)."""

    snapshot_id: npt.NDArray[np.int32]
    pid: I64
    proc_start: npt.NDArray[np.uint64]
    ok: B
    """The pass read the process (``state`` "ok"), not a process gone meanwhile."""
    t0_s: F64
    t1_s: F64
    same_content_writes: F64
    pages_changed: F64

    @classmethod
    def of(cls, samples: pa.Table) -> SampleRows:
        """The columns of ``samples`` (nulls as 0)."""
        # (numpy columns, one pass: a table's ``take`` of numpy indices imports pandas)
        states = samples.column("state").to_pylist()
        return cls(
            snapshot_id=as_numpy(samples.column("snapshot_id"), np.int32),
            pid=as_numpy(samples.column("pid"), np.int64),
            proc_start=as_numpy(samples.column("proc_start"), np.uint64),
            ok=np.fromiter((s == "ok" for s in states), bool, len(states)),
            t0_s=as_numpy(samples.column("t0_s"), np.float64, null=0),
            t1_s=as_numpy(samples.column("t1_s"), np.float64, null=0),
            same_content_writes=as_numpy(samples.column("same_content_writes"), np.float64, null=0),
            pages_changed=as_numpy(samples.column("pages_changed"), np.float64, null=0),
        )


def pass_timing(
    samples: SampleRows, snapshot_id: int, start_s: float, mm_of: dict[tuple[int, int], int]
) -> PassTiming | None:
    """The write profiles of the interval after snapshot ``snapshot_id`` (taken at trace
    time ``start_s``) from the trace's ``samples`` table; ``mm_of`` maps (pid, proc_start)
    to the mm present at that snapshot. None: no pass of a known process counted a write."""
    at = np.flatnonzero(samples.snapshot_id == snapshot_id)
    if at.size == 0:
        return None
    pid, start = samples.pid[at], samples.proc_start[at]
    mm = np.fromiter(
        (mm_of.get((int(a), int(b)), -1) for a, b in zip(pid, start, strict=True)),
        np.int64,
        pid.size,
    )
    keep = samples.ok[at] & (mm >= 0)
    at, mm = at[keep], mm[keep]
    same, content = samples.same_content_writes[at], samples.pages_changed[at]
    if not (same.any() or content.any()):
        return None
    t0, t1 = samples.t0_s[at], samples.t1_s[at]
    order = np.lexsort((t0, mm))

    def ns(t: F64) -> I64:
        return np.maximum(np.round((t[order] - start_s) * 1e9), 0).astype(np.int64)

    return PassTiming(
        mm=mm[order],
        same_end_ns=ns(t0),
        content_end_ns=ns(t1),
        same=same[order],
        content=content[order],
    )


def _mm_of(mms: list[MmInfo], k: int) -> dict[tuple[int, int], int]:
    """(pid, proc_start) -> the mm of that process present at snapshot ``k``."""
    return {
        (m.pid, m.proc_start): m.mm
        for m in mms
        if m.first_snap <= k and (m.exit_snap is None or m.exit_snap > k)
    }


def _prepare_rows(
    ht: HostTrace,
    pages: Iterable[tuple[int, SnapshotPages]],
    resolver: Resolver | None,
    include_mms: Sequence[int] | None,
    prctl_at: PrctlAt,
) -> ReplayInput:
    resolver = resolver or prctl_everything
    meta = ht.meta()
    page_size = _page_size(meta)
    shift = page_size.bit_length() - 1
    snaps = ht.snapshots.to_pydict()
    sids: list[int] = snaps["snapshot_id"]
    times_s: list[float] = snaps["time_s"]
    if any(b < a for a, b in itertools.pairwise(times_s)):
        raise InputDataError("snapshot times go backwards", hint="re-create or re-ingest the trace")
    procs = _process_instances(ht, resolver, include_mms)
    m = ht.mappings
    maps = _MappingRows(
        sid=as_numpy(m.column("snapshot_id"), np.int32),
        pid=as_numpy(m.column("pid"), np.int32),
        start=as_numpy(m.column("start"), np.uint64),
        end=as_numpy(m.column("end"), np.uint64),
        kind=[str(k) for k in m.column("kind").to_pylist()],
    )
    proc_sid = as_numpy(ht.processes.column("snapshot_id"), np.int64)
    proc_pid = as_numpy(ht.processes.column("pid"), np.int64)
    # per mm: its start relative to trace time 0, where the trace states it (the growth
    # model's horizon for a steady component, planner.engine.growth)
    started: list[float | None] = (
        ht.processes.column("start_time_s").to_pylist()
        if "start_time_s" in ht.processes.column_names
        else [None] * len(proc_pid)
    )
    mm_start_s = {
        int(m): float(t)
        for m, t in zip(procs.row_mm.tolist(), started, strict=True)
        if m >= 0 and t is not None
    }
    intervals_s: list[float | None] = snaps.get("interval_s") or [None] * len(sids)
    builder = InputBuilder(
        host=ht.host,
        page_size=page_size,
        hz=ht.hz,
        trace_hash=ht.trace_hash,
        mms=procs.mms,
        meta={k: v for k, v in meta.items() if k != "zero_hash"}
        | {
            "prctl_at": prctl_at,
            "host_load": _load(ht),
            "mappings": _mapping_spans(sids, maps),
            "mm_start_s": mm_start_s,
        },
    )
    sample_rows: SampleRows | None = None  # read at the first sampled snapshot
    stream = iter(pages)
    nxt: tuple[int, SnapshotPages] | None = None
    for k, sid in enumerate(sids):
        # the next snapshot's pages are asked for only now, and each is dropped as soon as
        # its columns are out: memory holds one snapshot's pages at a time here
        nxt = next(stream, None) if nxt is None else nxt
        snap = SnapshotPages()
        if nxt is not None and nxt[0] == sid:
            snap, nxt = nxt[1], None
        counts = snap.counts()
        changes = None if counts is None else page_changes(ht.snapshots, counts, sid)
        del counts
        cols = _page_columns(snap, meta.get("zero_hash"), changes)
        del changes, snap
        release_memory()
        pa.default_memory_pool().release_unused()  # (its allocator keeps freed memory)
        cur, layout, writes = _snapshot_rows(
            cols, maps, procs, proc_sid, proc_pid, k, sid, page_size, prctl_at
        )
        del cols
        length = intervals_s[k]
        length_ns = round(length * 1e9) if length else None
        timing = None
        if writes is not None:
            sample_rows = sample_rows or SampleRows.of(ht.samples)
            timing = pass_timing(sample_rows, sid, times_s[k], _mm_of(procs.mms, k))
        builder.add(round(times_s[k] * 1e9), cur, layout, writes, length_ns, timing)
        builder.meta.setdefault("mapping_starts", []).append(
            _mapping_starts(maps, procs, proc_sid, proc_pid, sid, shift)
        )
        del cur, writes
        release_memory()  # what the snapshot's rows and delta used, before the next is read
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
