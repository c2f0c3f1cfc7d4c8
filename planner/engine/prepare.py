"""From a trace to what ksmd would see: processes (mms), their pages per snapshot, and how
each snapshot's pages relate to the previous snapshot's.

Both engines replay the same :class:`ReplayInput`; everything here is trace logic, with no
KSM state:

* **mms**: one per process instance (pid, start time, exec generation), with its
  registration (from the policy resolver), first/last snapshot and exit snapshot;
* **rows** of each snapshot, sorted by (mm, page): the page number, 64-bit content hash,
  trace frame id, zero-content and THP flags, and whether the mapping is VM_MERGEABLE
  under the policy (``eligible``);
* **transitions**: for each row, whether it is the *same page* as in the previous snapshot
  (same content and frame: it keeps whatever physical page the replay gave it, possibly a
  KSM page), a *new mapping of a frame that an unchanged row maps* (a forked child: it maps
  that same physical page), or a fresh frame (written, copied-on-write or new: rows sharing
  one trace frame share one fresh physical page).
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
from planner.errors import InputDataError
from planner.trace.schema import PageFlag

if TYPE_CHECKING:
    from collections.abc import Sequence

    from planner.trace.io import HostTrace

I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
B = npt.NDArray[np.bool_]

_MM_SHIFT = np.uint64(36)  # row key = (mm << 36) | page number; user pages are < 2**35


@dataclass
class SnapshotRows:
    """The pages of one snapshot as ksmd could see them, sorted by (mm, page)."""

    index: int
    time_ns: int
    mm: I32
    page: U64  # virtual page number (address // page size)
    hash: U64
    frame: U64  # trace frame id (equal within a snapshot <=> same physical page at capture)
    zero: B
    thp: B
    eligible: B  # VM_MERGEABLE under the policy
    mm_present: I32  # mms present in this snapshot (sorted)
    mm_lo: I64  # row range [lo, hi) of each present mm
    mm_hi: I64
    mm_mergeable: B  # per present mm: has at least one VM_MERGEABLE mapping
    # --- relation to the previous snapshot (all -1 for the first snapshot) -------------
    carry_src: I64 = field(default_factory=lambda: np.empty(0, np.int64))
    inherit_src: I64 = field(default_factory=lambda: np.empty(0, np.int64))
    inherit_old: I64 = field(default_factory=lambda: np.empty(0, np.int64))
    fresh_group: I64 = field(default_factory=lambda: np.empty(0, np.int64))
    n_fresh: int = 0
    same_content_src: I64 = field(default_factory=lambda: np.empty(0, np.int64))
    key_src: I64 = field(
        default_factory=lambda: np.empty(0, np.int64)
    )  # previous row, same (mm, page)
    released_old: I64 = field(default_factory=lambda: np.empty(0, np.int64))
    _n_frames: int | None = field(default=None, repr=False)
    _groups: tuple[U64, npt.NDArray[np.int32]] | None = field(default=None, repr=False)

    @property
    def n(self) -> int:
        """Number of rows."""
        return int(self.mm.size)

    @property
    def n_frames(self) -> int:
        """Distinct trace frames (physical pages without KSM), computed once."""
        if self._n_frames is None:
            f = np.sort(self.frame)
            self._n_frames = int(f.size and 1 + np.count_nonzero(f[1:] != f[:-1]))
        return self._n_frames

    def groups(self) -> tuple[U64, npt.NDArray[np.int32]]:
        """Distinct contents (sorted hashes) and each row's content index, computed once."""
        if self._groups is None:
            gkey, gid = np.unique(self.hash, return_inverse=True)
            self._groups = (gkey, gid.reshape(-1).astype(np.int32))
        return self._groups

    def keys(self) -> U64:
        """Row keys ``(mm << 36) | page``, sorted."""
        return (self.mm.astype(np.uint64) << _MM_SHIFT) | self.page

    def rows_of(self, mm: int) -> tuple[int, int]:
        """Row range [lo, hi) of ``mm`` (empty when absent)."""
        i = int(np.searchsorted(self.mm_present, mm))
        if i < self.mm_present.size and self.mm_present[i] == mm:
            return int(self.mm_lo[i]), int(self.mm_hi[i])
        return 0, 0


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
    """Everything the engines replay: mms, snapshot rows and transitions, trace facts."""

    host: str
    page_size: int
    hz: int | None
    trace_hash: str
    mms: list[MmInfo]
    snapshots: list[SnapshotRows]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def times_ns(self) -> list[int]:
        """Snapshot times in ns."""
        return [s.time_ns for s in self.snapshots]

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
    resolver = resolver or prctl_everything
    meta = ht.meta()
    page_size = int(meta.get("page_size") or 4096)
    shift = page_size.bit_length() - 1
    snaps = ht.snapshots.to_pydict()
    sids: list[int] = snaps["snapshot_id"]
    times_s: list[float] = snaps["time_s"]
    if any(b < a for a, b in itertools.pairwise(times_s)):
        raise InputDataError("snapshot times go backwards", hint="re-create or re-ingest the trace")
    sid_index = {sid: i for i, sid in enumerate(sids)}

    # ---- process instances ----------------------------------------------------------
    procs = ht.processes.to_pydict()
    key_mm: dict[tuple[int, int, int], int] = {}
    gen: dict[
        tuple[int, int], tuple[int, Any, Any]
    ] = {}  # (pid, start) -> (generation, comm, cmdline_hash)
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
        mm = key_mm[key]
        row_mm[r] = mm
        present[k].append(mm)
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
    for m in range(n_mm):
        for k in range(first[m], last_seen[m] + 1):
            if m not in present[k]:
                raise InputDataError(
                    f"process {raw[m]['pid']} (start {raw[m]['start']}) disappears at "
                    f"snapshot {sids[k]} and "
                    "comes back with the same start time",
                    hint="a process cannot come back; check the trace's proc_start values",
                )
    if include_mms is not None:
        keep = set(include_mms)
    else:
        keep = set(range(n_mm))

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
        exit_snap = last_seen[m] + 1 if last_seen[m] + 1 < len(sids) else None
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

    # ---- pages ------------------------------------------------------------------------
    pages = ht.pages
    p_sid = pages.column("snapshot_id").to_numpy()
    p_pid = pages.column("pid").to_numpy()
    p_vma = pages.column("vma_start").to_numpy()
    p_addr = pages.column("page_addr").to_numpy()
    p_flags = pages.column("flags").to_numpy()
    hash_col = pages.column("content_hash")
    frame_col = pages.column("frame_id")
    usable = np.ones(pages.num_rows, dtype=bool)
    if hash_col.null_count:
        usable &= ~np.asarray(hash_col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if frame_col.null_count:
        usable &= ~np.asarray(frame_col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    p_hash = np.asarray(hash_col.fill_null(pa.scalar(0, pa.uint64())).to_numpy(), dtype=np.uint64)
    p_frame = np.asarray(frame_col.fill_null(pa.scalar(0, pa.uint64())).to_numpy(), dtype=np.uint64)
    zero_hash = meta.get("zero_hash")
    p_zero = (p_flags & np.uint16(PageFlag.ZERO)) != 0
    if zero_hash is not None:
        p_zero |= p_hash == np.uint64(zero_hash)
    p_thp = (p_flags & np.uint16(PageFlag.THP)) != 0

    maps = ht.mappings
    m_sid = maps.column("snapshot_id").to_numpy()
    m_pid = maps.column("pid").to_numpy()
    m_start = maps.column("start").to_numpy()
    m_end = maps.column("end").to_numpy()
    m_kind = maps.column("kind").to_pylist()

    # process table lookups per snapshot: (pid) -> mm
    proc_sid = np.asarray(procs["snapshot_id"], dtype=np.int64)
    proc_pid = np.asarray(procs["pid"], dtype=np.int64)

    snapshots: list[SnapshotRows] = []
    prev: SnapshotRows | None = None
    for k, sid in enumerate(sids):
        sel = np.flatnonzero((proc_sid == sid) & (row_mm >= 0))
        pid_to_mm = {int(proc_pid[i]): int(row_mm[i]) for i in sel}
        lo, hi = (int(x) for x in np.searchsorted(p_sid, [sid, sid + 1]))
        idx = np.arange(lo, hi)
        idx = idx[usable[lo:hi]]
        pids_here = p_pid[idx]
        upids, inv = np.unique(pids_here, return_inverse=True)
        missing = [int(p) for p in upids if int(p) not in pid_to_mm]
        if missing:
            raise InputDataError(
                f"snapshot {sid}: pages of pid {missing[0]} but no live process row for it",
                hint="the processes table must list every process that has pages",
            )
        mm_of_pid = np.array([pid_to_mm[int(p)] for p in upids], dtype=np.int32)
        r_mm = mm_of_pid[inv] if idx.size else np.empty(0, np.int32)
        r_page = (p_addr[idx] >> np.uint64(shift)).astype(np.uint64)
        by_key = np.lexsort((r_page, r_mm))
        idx, r_mm, r_page = idx[by_key], r_mm[by_key], r_page[by_key]
        # mapping kind -> eligibility, per row via the mapping table of this snapshot
        mlo, mhi = np.searchsorted(m_sid, [sid, sid + 1])
        eligible = np.zeros(idx.size, dtype=bool)
        mm_present = np.array(sorted(present[k]), dtype=np.int32)
        mergeable = np.zeros(mm_present.size, dtype=bool)
        mm_pos = {int(m): i for i, m in enumerate(mm_present)}
        map_key: dict[tuple[int, int], bool] = {}
        for j in range(mlo, mhi):
            mm_j = pid_to_mm.get(int(m_pid[j]))
            if mm_j is None:
                continue
            ok = mms[mm_j].registration.mergeable(str(m_kind[j]), int(m_start[j]), int(m_end[j]))
            map_key[(int(m_pid[j]), int(m_start[j]))] = ok
            if ok:
                mergeable[mm_pos[mm_j]] = True
        if idx.size:
            vmas = p_vma[idx]
            r_pid = p_pid[idx]
            # rows whose (pid, vma_start) has no mapping row fall back to the page's own check
            uniq, uinv = np.unique(
                np.stack([r_pid.astype(np.uint64), vmas.astype(np.uint64)]),
                axis=1,
                return_inverse=True,
            )
            uok = np.zeros(uniq.shape[1], dtype=bool)
            for u in range(uniq.shape[1]):
                pid_u, vs = int(uniq[0, u]), int(uniq[1, u])
                if (pid_u, vs) in map_key:
                    uok[u] = map_key[(pid_u, vs)]
                else:
                    reg = mms[pid_to_mm[pid_u]].registration
                    uok[u] = reg.mergeable("other", vs, vs + page_size)
                    if uok[u]:
                        mergeable[mm_pos[pid_to_mm[pid_u]]] = True
            eligible = uok[uinv.reshape(-1)]
        counts = (
            np.bincount(np.searchsorted(mm_present, r_mm), minlength=mm_present.size)
            if idx.size
            else np.zeros(mm_present.size, np.int64)
        )
        mm_hi = np.cumsum(counts).astype(np.int64)
        mm_lo = mm_hi - counts
        for i, m in enumerate(mm_present.tolist()):
            if mms[m].registration.mode == "prctl":
                mergeable[i] = True
        cur = SnapshotRows(
            index=k,
            time_ns=round(times_s[k] * 1e9),
            mm=r_mm.astype(np.int32),
            page=r_page,
            hash=p_hash[idx],
            frame=p_frame[idx],
            zero=p_zero[idx],
            thp=p_thp[idx],
            eligible=eligible,
            mm_present=mm_present,
            mm_lo=mm_lo,
            mm_hi=mm_hi,
            mm_mergeable=mergeable,
        )
        _link(prev, cur, mms)
        snapshots.append(cur)
        prev = cur

    hz = meta.get("hz")
    return ReplayInput(
        host=ht.host,
        page_size=page_size,
        hz=int(hz) if hz else None,
        trace_hash=ht.trace_hash,
        mms=mms,
        snapshots=snapshots,
        meta={k: v for k, v in meta.items() if k != "zero_hash"},
    )


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _content_key(frame: U64, hash_: U64) -> U64:
    """One uint64 per (frame, hash) pair; matches are verified on both columns."""
    with np.errstate(over="ignore"):
        return frame ^ (hash_ * _GOLDEN)


def _lookup(keys_sorted: U64, src_idx: I64, f_src: U64, h_src: U64, f: U64, h: U64, kq: U64) -> I64:
    """For each query (frame ``f``, hash ``h``, key ``kq``): the first source row with that
    pair, or -1."""
    out = np.full(kq.size, -1, np.int64)
    if keys_sorted.size == 0 or kq.size == 0:
        return out
    pos = np.searchsorted(keys_sorted, kq)
    pc = np.minimum(pos, keys_sorted.size - 1)
    cand = src_idx[pc]
    ok = (keys_sorted[pc] == kq) & (f_src[cand] == f) & (h_src[cand] == h)
    out[ok] = cand[ok]
    return out


def _first_by_key(rows: I64, frame: U64, hash_: U64) -> tuple[U64, I64]:
    """Sorted keys and, for each, the lowest row index among ``rows`` having it."""
    k = _content_key(frame[rows], hash_[rows])
    order = np.lexsort((rows, k))
    ks, rs = k[order], rows[order]
    first = np.ones(ks.size, dtype=bool)
    first[1:] = ks[1:] != ks[:-1]
    return ks[first], rs[first]


def _link(prev: SnapshotRows | None, cur: SnapshotRows, mms: list[MmInfo]) -> None:
    """Fill ``cur``'s transition arrays relative to ``prev``.

    A row keeps its physical page (``carry_src``) when its (mm, page) had the same content
    and frame before. Otherwise it maps the physical page of another row with the same
    trace frame and content -- an unchanged row of this snapshot (``inherit_src``) or a row
    of the previous snapshot (``inherit_old``, e.g. a child whose parent exited after the
    fork) -- preferring the parent process's row at the same page. Otherwise it gets a fresh
    physical page, shared by the rows of one (frame, content) (``fresh_group``).
    """
    n = cur.n
    carry = np.full(n, -1, np.int64)
    same = np.full(n, -1, np.int64)
    key_src = np.full(n, -1, np.int64)
    pk = prev.keys() if prev is not None else np.empty(0, np.uint64)
    ck = cur.keys()
    if prev is not None and prev.n and n:
        pos = np.minimum(np.searchsorted(pk, ck), pk.size - 1)
        hit = pk[pos] == ck
        key_src[hit] = pos[hit]
        same_hash = hit & (prev.hash[pos] == cur.hash)
        same[same_hash] = pos[same_hash]
        keep = same_hash & (prev.frame[pos] == cur.frame)
        carry[keep] = pos[keep]
    released = np.ones(prev.n if prev is not None else 0, dtype=bool)
    released[carry[carry >= 0]] = False
    inherit = np.full(n, -1, np.int64)
    inherit_old = np.full(n, -1, np.int64)
    rest = np.flatnonzero(carry < 0)
    if rest.size:
        rf, rh = cur.frame[rest], cur.hash[rest]
        kq = _content_key(rf, rh)
        carried = np.flatnonzero(carry >= 0)
        if carried.size:
            ks, rs = _first_by_key(carried, cur.frame, cur.hash)
            inherit[rest] = _lookup(ks, rs, cur.frame, cur.hash, rf, rh, kq)
        if prev is not None and prev.n:
            ks, rs = _first_by_key(np.arange(prev.n, dtype=np.int64), prev.frame, prev.hash)
            got = _lookup(ks, rs, prev.frame, prev.hash, rf, rh, kq)
            inherit_old[rest] = np.where(inherit[rest] < 0, got, -1)
        # prefer the parent process's row at the same page when it maps the same frame
        parent_of = np.array(
            [m.parent_mm if m.parent_mm is not None else -1 for m in mms] + [-1], np.int64
        )
        par = parent_of[cur.mm[rest]]
        cand = np.flatnonzero((par >= 0) & ((inherit[rest] >= 0) | (inherit_old[rest] >= 0)))
        if cand.size:
            rows = rest[cand]
            pkey = (par[cand].astype(np.uint64) << _MM_SHIFT) | cur.page[rows]
            q = np.minimum(np.searchsorted(ck, pkey), n - 1)
            ok = (
                (ck[q] == pkey)
                & (carry[q] >= 0)
                & (cur.frame[q] == cur.frame[rows])
                & (cur.hash[q] == cur.hash[rows])
            )
            inherit[rows[ok]] = q[ok]
            inherit_old[rows[ok]] = -1
            if prev is not None and prev.n:
                todo = ~ok
                q2 = np.minimum(np.searchsorted(pk, pkey), pk.size - 1)
                ok2 = (
                    todo
                    & (pk[q2] == pkey)
                    & (prev.frame[q2] == cur.frame[rows])
                    & (prev.hash[q2] == cur.hash[rows])
                )
                inherit_old[rows[ok2]] = q2[ok2]
                inherit[rows[ok2]] = -1
    fresh = np.full(n, -1, np.int64)
    need = np.flatnonzero((carry < 0) & (inherit < 0) & (inherit_old < 0))
    n_fresh = 0
    if need.size:
        _, ginv = np.unique(
            np.stack([cur.frame[need], cur.hash[need]]), axis=1, return_inverse=True
        )
        fresh[need] = ginv.reshape(-1)
        n_fresh = int(ginv.max()) + 1
    cur.carry_src = carry
    cur.inherit_src = inherit
    cur.inherit_old = inherit_old
    cur.fresh_group = fresh
    cur.n_fresh = n_fresh
    cur.same_content_src = same
    cur.key_src = key_src
    cur.released_old = np.flatnonzero(released).astype(np.int64)


__all__ = ["MmInfo", "ReplayInput", "SnapshotRows", "prepare"]
