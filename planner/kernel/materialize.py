"""Plan how to turn a trace into real processes: spawns, forks, writes, unmaps and exits.

:func:`plan_materialization` reads a :class:`~planner.trace.io.HostTrace` and returns a
:class:`MaterializationPlan`: for every snapshot, the ordered steps that make a set of
holder processes (:mod:`planner.kernel.holder`) hold exactly the trace's pages at that
snapshot. It is pure (no processes, no sysfs), so it is tested on its own; the runner
(:mod:`planner.kernel.run`) executes the steps.

Rules
-----
* **Processes.** A process is ``(pid, proc_start)``. It lives from the first to the last
  snapshot where it has pages (or a ``processes`` row with state ``ok``); processes that never
  have pages get no holder.
* **Pages.** Rows without a content hash or with the SWAPPED flag are absent pages (ksmd does
  not visit them). Each row becomes one slot of a private anonymous region; its content comes
  from the 64-bit hash (:func:`planner.kernel.holder.page_bytes`), ZERO rows are all zero bytes.
* **Address order.** ksmd walks an mm in address order, so slots keep the order of the trace
  addresses: the slot of an address is its rank in the sorted union of the addresses of its
  fork family (over all snapshots). A 2 MiB block holding THP rows keeps its 512 sub-pages in
  one aligned 512-slot block that gets ``MADV_HUGEPAGE``; everything else ``MADV_NOHUGEPAGE``.
* **Fork.** A process whose rows share frame ids with its parent's rows (``ppid``) at the
  snapshot where it first appears is created by fork of the parent's holder (after the
  parent's own changes of that snapshot), then applies its own differences. Otherwise it is a
  fresh holder. Frames shared in any other way cannot be produced with private memory and are
  refused with :class:`~planner.errors.InputDataError`. Rows flagged KSM (already merged at
  capture) are private pages here: ksmd merges them again.
* **Changes.** A row whose frame and content are unchanged is left alone (a write would
  copy-on-write a merged page). A changed row is written; a vanished row is
  ``MADV_DONTNEED``; a process that is gone exits.
* **Writes between snapshots** (a sampled trace, replayed with its write model):
  :func:`plan_with_writes` adds the replay's batches of writes as rounds of ``update`` steps
  between full scans, in the order the replay applied them.
* **Order within a snapshot** (ksmd stopped, its cursor between scans): updates of existing
  processes, then new processes in ``(pid, proc_start)`` order, each registered
  (``MADV_MERGEABLE``, or at fork when the parent is registered) in that order -- new mms join
  the tail of KSM's list, so this is the order ksmd first visits them
  (docs/kernel-semantics.md §4.3) -- then exits in pid order.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from planner.errors import InputDataError
from planner.trace import schema as S

if TYPE_CHECKING:
    from collections.abc import Sequence

    from planner.engine.driver import Event
    from planner.engine.prepare import ReplayInput
    from planner.trace.io import HostTrace

PAGE_SHIFT = 12
HPAGE_SHIFT = 21
HPAGE_SLOTS = 1 << (HPAGE_SHIFT - PAGE_SHIFT)

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
Bools = npt.NDArray[np.bool_]

StepAction = Literal["update", "spawn", "fork", "register", "exit"]


class ProcKey(NamedTuple):
    """A process of the trace: pid and start time (pids are reused)."""

    pid: int
    proc_start: int


@dataclass(frozen=True)
class FamilyLayout:
    """The region layout shared by a fork family: trace address -> slot."""

    family_id: int
    root: ProcKey
    addrs: U64
    slots: I64
    nslots: int
    thp_blocks: tuple[int, ...]

    def slot_of(self, addrs: U64) -> I64:
        """Slots of trace addresses (every address must belong to the family)."""
        idx = np.searchsorted(self.addrs, addrs)
        return self.slots[idx]


@dataclass(frozen=True)
class ProcInfo:
    """One process of the plan."""

    key: ProcKey
    family: int
    first: int
    last: int
    parent: ProcKey | None
    forked: bool


@dataclass(frozen=True)
class Step:
    """One operation on one holder.

    ``write_slots`` / ``write_hashes`` / ``write_zero`` are the pages to write (content hash,
    or zeros where ``write_zero``); ``dontneed_slots`` the pages to drop; ``register`` asks for
    ``MADV_MERGEABLE`` after the writes.
    """

    action: StepAction
    key: ProcKey
    parent: ProcKey | None = None
    write_slots: I64 = field(default_factory=lambda: np.empty(0, np.int64))
    write_hashes: U64 = field(default_factory=lambda: np.empty(0, np.uint64))
    write_zero: Bools = field(default_factory=lambda: np.empty(0, np.bool_))
    dontneed_slots: I64 = field(default_factory=lambda: np.empty(0, np.int64))
    register: bool = False

    def write_contents(self) -> list[int | None]:
        """The written contents as holder arguments (``None`` for a zero page)."""
        return [
            None if z else int(h)
            for h, z in zip(self.write_hashes.tolist(), self.write_zero.tolist(), strict=True)
        ]


@dataclass(frozen=True)
class SnapshotPlan:
    """The steps that bring the holders to one snapshot, in execution order."""

    index: int
    snapshot_id: int
    time_s: float
    steps: tuple[Step, ...]
    pages: int
    processes: int


@dataclass(frozen=True)
class MaterializationPlan:
    """Everything needed to materialise a trace as holder processes."""

    host: str
    families: tuple[FamilyLayout, ...]
    processes: dict[ProcKey, ProcInfo]
    snapshots: tuple[SnapshotPlan, ...]
    registered_at_fork: frozenset[tuple[int, ProcKey]]

    @property
    def max_pages(self) -> int:
        """The largest number of present pages in one snapshot."""
        return max((s.pages for s in self.snapshots), default=0)

    @property
    def max_processes(self) -> int:
        """The largest number of live processes in one snapshot."""
        return max((s.processes for s in self.snapshots), default=0)

    def family_of(self, key: ProcKey) -> FamilyLayout:
        """The layout of a process's family."""
        return self.families[self.processes[key].family]

    def registration_order(self, index: int) -> list[ProcKey]:
        """Processes in the order they join KSM's list at snapshot ``index``."""
        out = []
        for s in self.snapshots[index].steps:
            if s.register or (s.action == "fork" and (index, s.key) in self.registered_at_fork):
                out.append(s.key)
        return out


# ------------------------------------------------------------------------------ reading


@dataclass
class _Rows:
    """The present pages of one process in one snapshot, sorted by address."""

    addr: U64
    hash: U64
    frame: U64
    zero: Bools
    thp: Bools
    ksm: Bools


def _empty_rows() -> _Rows:
    return _Rows(
        np.empty(0, np.uint64),
        np.empty(0, np.uint64),
        np.empty(0, np.uint64),
        np.empty(0, np.bool_),
        np.empty(0, np.bool_),
        np.empty(0, np.bool_),
    )


def _np(table: Any, name: str, dtype: Any) -> Any:
    col = table.column(name)
    if col.null_count:
        col = col.fill_null(0)
    return col.to_numpy().astype(dtype, copy=False)


class _ProcRow(NamedTuple):
    proc_start: int
    ppid: int | None
    state: str
    reg_time_s: float | None


def _read(
    ht: HostTrace,
) -> tuple[list[int], list[float], list[dict[int, _Rows]], list[dict[int, _ProcRow]]]:
    sids = [int(s) for s in ht.snapshot_ids.tolist()]
    times = [float(t) for t in ht.times_s.tolist()]
    zero_hash = ht.meta().get("zero_hash")
    pages: list[dict[int, _Rows]] = []
    for sid in sids:
        t = ht.pages_of(sid)
        n = t.num_rows
        by_pid: dict[int, _Rows] = {}
        if n:
            pid = _np(t, "pid", np.int64)
            addr = _np(t, "page_addr", np.uint64)
            flags = _np(t, "flags", np.uint16)
            h_col = t.column("content_hash")
            f_col = t.column("frame_id")
            present = ~(np.asarray(h_col.is_null()) | np.asarray(f_col.is_null()))
            present &= (flags & np.uint16(S.PageFlag.SWAPPED)) == 0
            hashes = _np(t, "content_hash", np.uint64)
            frames = _np(t, "frame_id", np.uint64)
            order = np.lexsort((addr, pid))
            pid, addr, flags, hashes, frames, present = (
                pid[order],
                addr[order],
                flags[order],
                hashes[order],
                frames[order],
                present[order],
            )
            pid, addr, flags, hashes, frames = (
                pid[present],
                addr[present],
                flags[present],
                hashes[present],
                frames[present],
            )
            if pid.size:
                starts = np.flatnonzero(np.r_[True, pid[1:] != pid[:-1]])
                ends = np.r_[starts[1:], pid.size]
                for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True):
                    f, h = flags[lo:hi], hashes[lo:hi]
                    zero = (f & np.uint16(S.PageFlag.ZERO)) != 0
                    if zero_hash is not None:  # as the replay does: the zero hash is zero content
                        zero |= h == np.uint64(zero_hash)
                    by_pid[int(pid[lo])] = _Rows(
                        addr[lo:hi],
                        h,
                        frames[lo:hi],
                        zero,
                        (f & np.uint16(S.PageFlag.THP)) != 0,
                        (f & np.uint16(S.PageFlag.KSM)) != 0,
                    )
        pages.append(by_pid)
    procs: list[dict[int, _ProcRow]] = [{} for _ in sids]
    index = {sid: i for i, sid in enumerate(sids)}
    p = ht.processes
    if p.num_rows:
        names = ("snapshot_id", "pid", "proc_start", "ppid", "state", "reg_time_s")
        cols = {c: p.column(c).to_pylist() for c in names}
        for row_sid, pid_, start, ppid, pstate, reg in zip(*(cols[c] for c in names), strict=True):
            if row_sid in index and pid_ is not None:
                procs[index[row_sid]][int(pid_)] = _ProcRow(
                    int(start or 0),
                    None if ppid is None else int(ppid),
                    str(pstate),
                    None if reg is None else float(reg),
                )
    return sids, times, pages, procs


# ------------------------------------------------------------------------------ layout


def _layout(
    family_id: int, root: ProcKey, addr_sets: Sequence[U64], thp_addr_sets: Sequence[U64]
) -> FamilyLayout:
    addrs = np.unique(np.concatenate(list(addr_sets))) if addr_sets else np.empty(0, np.uint64)
    thp_set = set(
        (np.unique(np.concatenate(list(thp_addr_sets))) >> np.uint64(HPAGE_SHIFT)).tolist()
        if thp_addr_sets
        else []
    )
    slots = np.empty(addrs.size, np.int64)
    blocks: list[int] = []
    nxt = 0
    cur_block = -1
    block_base = 0
    for i, a in enumerate(addrs.tolist()):
        b = a >> HPAGE_SHIFT
        if b in thp_set:
            if b != cur_block:
                block_base = -(-nxt // HPAGE_SLOTS) * HPAGE_SLOTS
                cur_block = b
                blocks.append(block_base // HPAGE_SLOTS)
                nxt = block_base + HPAGE_SLOTS
            slots[i] = block_base + ((a >> PAGE_SHIFT) & (HPAGE_SLOTS - 1))
        else:
            slots[i] = nxt
            nxt += 1
    return FamilyLayout(family_id, root, addrs, slots, nxt, tuple(blocks))


# ------------------------------------------------------------------------------ the model


class _Phys:
    """Physical pages of the model: a label (trace frame id) and a content per page."""

    def __init__(self) -> None:
        self.n = 0
        self.label = np.empty(1024, np.uint64)
        self.hash = np.empty(1024, np.uint64)
        self.zero = np.empty(1024, np.bool_)

    def new(self, labels: U64, hashes: U64, zero: Bools) -> I64:
        n0, n1 = self.n, self.n + labels.size
        if n1 > self.label.size:
            cap = max(n1, 2 * self.label.size)
            self.label = np.resize(self.label, cap)
            self.hash = np.resize(self.hash, cap)
            self.zero = np.resize(self.zero, cap)
        self.label[n0:n1], self.hash[n0:n1], self.zero[n0:n1] = labels, hashes, zero
        self.n = n1
        return np.arange(n0, n1, dtype=np.int64)


@dataclass
class _State:
    """What one holder maps: sorted slots and the physical page at each."""

    slots: I64
    phys: I64

    def copy(self) -> _State:
        return _State(self.slots.copy(), self.phys.copy())


def _diff(state: _State, slots: I64, rows: _Rows, phys: _Phys) -> tuple[Bools, I64, _State]:
    """Rows that must be written, slots that must be dropped, and the state after that."""
    label, chash, czero = phys.label, phys.hash, phys.zero
    idx = np.searchsorted(state.slots, slots)
    idx_c = np.minimum(idx, max(state.slots.size - 1, 0))
    have = (
        (idx < state.slots.size) & (state.slots[idx_c] == slots)
        if state.slots.size
        else np.zeros(slots.size, bool)
    )
    keep = np.zeros(slots.size, np.bool_)
    if have.any():
        q = state.phys[idx_c[have]]
        same = (label[q] == rows.frame[have]) & (czero[q] == rows.zero[have])
        same &= rows.zero[have] | (chash[q] == rows.hash[have])
        keep[have] = same
    write = ~keep
    dropped = state.slots[~np.isin(state.slots, slots)]
    new_phys = np.empty(slots.size, np.int64)
    if keep.any():
        new_phys[keep] = state.phys[idx_c[keep]]
    if write.any():
        new_phys[write] = phys.new(rows.frame[write], rows.hash[write], rows.zero[write])
    return write, dropped, _State(slots, new_phys)


def _make_step(
    action: StepAction, key: ProcKey, slots: I64, rows: _Rows, write: Bools, dropped: I64, **kw: Any
) -> Step:
    return Step(
        action=action,
        key=key,
        write_slots=slots[write],
        write_hashes=rows.hash[write],
        write_zero=rows.zero[write],
        dontneed_slots=dropped,
        **kw,
    )


def _check_partition(
    index: int, sid: int, parts: list[tuple[ProcKey, U64, U64, I64, Bools]]
) -> None:
    """Every frame of the trace must be exactly one physical page of the model."""
    if not parts:
        return
    pids = np.concatenate([np.full(p[1].size, p[0].pid, np.int64) for p in parts])
    addrs = np.concatenate([p[1] for p in parts])
    frames = np.concatenate([p[2] for p in parts])
    phys = np.concatenate([p[3] for p in parts])
    ksm = np.concatenate([p[4] for p in parts])
    # KSM-flagged rows were merged by the capture host's ksmd; here they are private pages.
    pids, addrs, frames, phys = pids[~ksm], addrs[~ksm], frames[~ksm], phys[~ksm]
    if not frames.size:
        return
    order = np.lexsort((phys, frames))
    f, p = frames[order], phys[order]
    bad = np.flatnonzero((f[1:] == f[:-1]) & (p[1:] != p[:-1]))
    if bad.size:
        i, j = order[bad[0]], order[bad[0] + 1]
        raise InputDataError(
            f"snapshot {sid} (#{index}): frame {int(frames[i])} is mapped by pid {int(pids[i])} at "
            f"{int(addrs[i]):#x} and by pid {int(pids[j])} at {int(addrs[j]):#x}, which private "
            "memory cannot reproduce (only fork shares frames: parent and child, same address)",
            hint="the trace may come from shared memory or a broken capture; drop those processes",
        )
    order = np.lexsort((frames, phys))
    f, p = frames[order], phys[order]
    bad = np.flatnonzero((p[1:] == p[:-1]) & (f[1:] != f[:-1]))
    if bad.size:  # pragma: no cover - excluded by construction (writes create new pages)
        i = order[bad[0]]
        raise InputDataError(
            f"snapshot {sid}: pid {int(pids[i])} would share a page the trace says is private"
        )


# ------------------------------------------------------------------------------ the plan


def plan_materialization(ht: HostTrace) -> MaterializationPlan:
    """Plan the holder processes and the per-snapshot steps that reproduce ``ht``.

    Raises
    ------
    InputDataError
        When frames are shared in a way fork cannot produce, or when a process would have to
        join KSM's list before a new process with a lower pid of the same snapshot.
    """
    sids, times, pages, procs = _read(ht)
    nsnap = len(sids)

    # -- processes and their lifetimes ------------------------------------------------------
    def key_of(k: int, pid: int) -> ProcKey:
        info = procs[k].get(pid)
        return ProcKey(pid, info.proc_start if info else 0)

    present: list[set[ProcKey]] = []
    for k in range(nsnap):
        here = {key_of(k, pid) for pid in pages[k]}
        here |= {ProcKey(pid, r.proc_start) for pid, r in procs[k].items() if r.state == "ok"}
        present.append(here)
    first: dict[ProcKey, int] = {}
    last: dict[ProcKey, int] = {}
    for k in range(nsnap):
        for key in present[k]:
            first.setdefault(key, k)
            last[key] = k
    alive: list[dict[ProcKey, _Rows]] = []
    for k in range(nsnap):  # a process lives from its first to its last snapshot
        rows = {key_of(k, pid): r for pid, r in pages[k].items()}
        alive.append(
            {key: rows.get(key, _empty_rows()) for key in first if first[key] <= k <= last[key]}
        )
    reg_key: dict[ProcKey, tuple[float, int, int]] = {}
    for key, k0 in first.items():
        info = procs[k0].get(key.pid)
        reg = info.reg_time_s if info is not None and info.reg_time_s is not None else math.inf
        reg_key[key] = (reg, key.pid, key.proc_start)

    # -- fork edges ------------------------------------------------------------------------
    parent_of: dict[ProcKey, ProcKey] = {}
    for key in sorted(first):
        k0 = first[key]
        info = procs[k0].get(key.pid)
        ppid = info.ppid if info else None
        if ppid is None or ppid == key.pid:
            continue
        cand = [p for p in alive[k0] if p.pid == ppid and first[p] <= k0 and p != key]
        src = k0
        if not cand and k0 > 0:
            cand = [p for p in alive[k0 - 1] if p.pid == ppid and last[p] == k0 - 1]
            src = k0 - 1
        if not cand:
            continue
        par = cand[0]
        mine, theirs = alive[k0][key], alive[src][par]
        if np.intersect1d(mine.frame[~mine.ksm], theirs.frame[~theirs.ksm]).size:
            parent_of[key] = par

    # -- families and layouts ----------------------------------------------------------------
    def root_of(key: ProcKey) -> ProcKey:
        while key in parent_of:
            key = parent_of[key]
        return key

    members: dict[ProcKey, list[ProcKey]] = {}
    for key in sorted(first):
        members.setdefault(root_of(key), []).append(key)
    families: list[FamilyLayout] = []
    family_of: dict[ProcKey, int] = {}
    for fid, (root, keys) in enumerate(sorted(members.items())):
        addr_sets = [alive[k][m].addr for m in keys for k in range(first[m], last[m] + 1)]
        thp_sets = [
            alive[k][m].addr[alive[k][m].thp] for m in keys for k in range(first[m], last[m] + 1)
        ]
        families.append(_layout(fid, root, addr_sets, thp_sets))
        for m in keys:
            family_of[m] = fid
    infos = {
        key: ProcInfo(
            key, family_of[key], first[key], last[key], parent_of.get(key), key in parent_of
        )
        for key in sorted(first)
    }

    sim = _Simulator(families, family_of, parent_of, reg_key, first)
    plans = [sim.snapshot(k, sids[k], times[k], alive[k]) for k in range(nsnap)]
    return MaterializationPlan(
        ht.host, tuple(families), infos, tuple(plans), frozenset(sim.at_fork)
    )


class _Simulator:
    """Applies the snapshots to a model of the holders and records the steps."""

    def __init__(
        self,
        families: list[FamilyLayout],
        family_of: dict[ProcKey, int],
        parent_of: dict[ProcKey, ProcKey],
        reg_key: dict[ProcKey, tuple[float, int, int]],
        first: dict[ProcKey, int],
    ) -> None:
        self.reg_key = reg_key
        self.first = first
        self.families = families
        self.family_of = family_of
        self.parent_of = parent_of
        self.phys = _Phys()
        self.state: dict[ProcKey, _State] = {}
        self.registered: set[ProcKey] = set()
        self.at_fork: set[tuple[int, ProcKey]] = set()

    def snapshot(
        self, k: int, sid: int, time_s: float, alive: dict[ProcKey, _Rows]
    ) -> SnapshotPlan:
        reg_key_of = self.reg_key.__getitem__
        self.k, self.alive, self.steps = k, alive, []
        self.reg_order: list[ProcKey] = []
        self.slots_of = {
            key: self.families[self.family_of[key]].slot_of(rows.addr)
            for key, rows in alive.items()
        }
        for key in sorted(key for key in alive if key in self.state):
            rows = alive[key]
            write, dropped, self.state[key] = _diff(
                self.state[key], self.slots_of[key], rows, self.phys
            )
            if write.any() or dropped.size:
                self.steps.append(
                    _make_step("update", key, self.slots_of[key], rows, write, dropped)
                )
        for key in sorted((key for key in alive if key not in self.state), key=reg_key_of):
            if key not in self.state:
                self._create(key)
            if key not in self.registered:
                self.registered.add(key)
                self.reg_order.append(key)
                last = self.steps[-1]
                if last.key == key and last.action in ("spawn", "fork"):
                    self.steps[-1] = dataclasses.replace(last, register=True)
                else:
                    self.steps.append(Step(action="register", key=key, register=True))
        order = self.reg_order
        if order != sorted(order, key=reg_key_of):
            i = next(
                i for i in range(1, len(order)) if reg_key_of(order[i]) < reg_key_of(order[i - 1])
            )
            raise InputDataError(
                f"snapshot {sid} (#{k}): pid {order[i - 1].pid} would join KSM before pid "
                f"{order[i].pid} (it is forked from a registered process), but new processes "
                "join in pid order",
                hint="the replay registers a snapshot's new processes in pid order",
            )
        gone = [key for key in self.state if key not in alive]
        for key in sorted(gone, key=lambda key: (self.first[key], key.pid, key.proc_start)):
            self.steps.append(Step(action="exit", key=key))
            del self.state[key]
            self.registered.discard(key)
        parts = [
            (key, alive[key].addr, alive[key].frame, self.state[key].phys, alive[key].ksm)
            for key in sorted(alive)
        ]
        _check_partition(k, sid, parts)
        return SnapshotPlan(
            index=k,
            snapshot_id=sid,
            time_s=time_s,
            steps=tuple(self.steps),
            pages=int(sum(r.addr.size for r in alive.values())),
            processes=len(alive),
        )

    def _create(self, key: ProcKey) -> None:
        par = self.parent_of.get(key)
        if par is not None and par not in self.state:
            self._create(par)  # a parent new in this snapshot with a higher pid
        rows, slots = self.alive[key], self.slots_of[key]
        if par is not None:
            write, dropped, self.state[key] = _diff(self.state[par].copy(), slots, rows, self.phys)
            if par in self.registered:  # ksm_fork(): the child joins KSM's list at fork
                self.registered.add(key)
                self.reg_order.append(key)
                self.at_fork.add((self.k, key))
            self.steps.append(_make_step("fork", key, slots, rows, write, dropped, parent=par))
        else:
            empty = _State(np.empty(0, np.int64), np.empty(0, np.int64))
            write, dropped, self.state[key] = _diff(empty, slots, rows, self.phys)
            self.steps.append(_make_step("spawn", key, slots, rows, write, dropped))


# ------------------------------------------------------------------------------ writes

#: The content of write ``v`` of the replay's write model (a content no trace row has):
#: the page bytes of this hash (:func:`planner.kernel.holder.page_bytes`).
WRITE_CONTENT_BASE = 0xC0FFEE << 40


def write_content_hash(v: int) -> int:
    """The 64-bit hash whose page bytes a holder writes for the write model's content ``v``."""
    return (WRITE_CONTENT_BASE + v) & ((1 << 64) - 1)


def plan_with_writes(
    plan: MaterializationPlan, inp: ReplayInput, events: Sequence[Event]
) -> tuple[MaterializationPlan, list[int]]:
    """``plan`` with the replay's writes between snapshots as extra rounds of steps.

    ``events`` is the replay driver's log (``Driver.event_log``, scan-aligned): every
    snapshot and every batch of writes in the order it was applied, with the full scan it
    came before. Each batch becomes a round of ``update`` steps (ksmd stopped between scans):
    a content change writes the bytes of a content no trace row has
    (:func:`write_content_hash`), of a content of the trace (a toggle's other content, a
    join's), or, restoring, the snapshot's; a same-content write writes
    the bytes the page holds (a copy-on-write of a merged page, in place otherwise). Returns
    the plan and, per entry of its ``snapshots``, the full scan before which it is applied.
    """
    from planner.engine.rows import F_ZERO
    from planner.engine.writes import HELD_BASE, RESTORE, SAME, Writes, held_content

    rounds: list[SnapshotPlan] = []
    schedule: list[int] = []
    cur = -1
    held: dict[tuple[ProcKey, int], tuple[int, bool]] = {}  # written slots: content now
    shift = inp.page_size.bit_length() - 1
    for ev in events:
        if ev.kind == "snapshot":
            cur = ev.snapshot
            held.clear()  # the snapshot's steps leave every slot as the trace says
            rounds.append(plan.snapshots[cur])
            schedule.append(ev.before_scan)
            continue
        w = ev.writes
        assert isinstance(w, Writes)
        assert cur >= 0
        snap = inp.snapshots[cur]
        per_key: dict[ProcKey, list[tuple[int, int, bool]]] = {}
        for row, v in zip(w.rows.tolist(), w.content.tolist(), strict=True):
            mi = inp.mms[int(snap.mm[row])]
            key = ProcKey(mi.pid, mi.proc_start)
            addr = np.array([int(snap.page[row]) << shift], np.uint64)
            slot = int(plan.family_of(key).slot_of(addr)[0])
            base = (int(snap.hash[row]), bool(snap.flags[row] & F_ZERO))
            if v == SAME:
                content = held.get((key, slot), base)
            elif v == RESTORE:
                content = base
                held.pop((key, slot), None)
            elif v <= HELD_BASE:  # a content of the trace (a join's, a toggle's other)
                cid, zero = held_content(v)
                content = (int(inp.content_hash[cid]), zero)
                held[(key, slot)] = content
            else:
                content = (write_content_hash(v), False)
                held[(key, slot)] = content
            per_key.setdefault(key, []).append((slot, *content))
        steps = []
        for key in sorted(per_key):
            rows = sorted(per_key[key])
            steps.append(
                Step(
                    action="update",
                    key=key,
                    write_slots=np.array([r[0] for r in rows], np.int64),
                    write_hashes=np.array([r[1] for r in rows], np.uint64),
                    write_zero=np.array([r[2] for r in rows], np.bool_),
                )
            )
        base_plan = plan.snapshots[cur]
        rounds.append(dataclasses.replace(base_plan, steps=tuple(steps)))
        schedule.append(ev.before_scan)
    return dataclasses.replace(plan, snapshots=tuple(rounds)), schedule
