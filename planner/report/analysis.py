"""Numbers a review needs that no other module computes: process roles, the current
state by role and by process, and the copy-on-write break rate of mergeable pages.

Everything here reads a trace and returns plain dataclasses; nothing renders.

* **Roles.** A trace records pids and parents, not what a process is for. A process whose
  children are in the trace is a *parent* (e.g. the gunicorn master); processes forked
  from the same parent form one *family* (e.g. its workers); the rest stand alone. Roles
  group processes in the current-state tables without any configuration.
* **Current state.** :func:`planner.trace.summary.snapshot_potential` of the last snapshot,
  grouped by role and by process (the same attribution rules as ``ksm-planner info``).
* **Copy-on-write breaks.** Between two consecutive snapshots, a page that KSM would hold
  merged (its content sits on at least two distinct frames, or is all zero) and whose
  content changed at the same address by the next snapshot has been written: had it been
  merged, that write would have broken copy-on-write (a page fault, a 4 KiB copy and a
  fresh frame). The rate is counted per second of trace time. Several writes to one page
  between two snapshots count once, so this is a lower bound on writes; pages KSM had not
  merged yet count as if merged, so it is an upper bound on breaks of merged pages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from planner.trace import schema as S
from planner.trace.summary import GroupPotential, SnapshotPotential, snapshot_potential

if TYPE_CHECKING:
    from planner.trace.io import HostTrace

Arr = np.ndarray[Any, Any]

_PAGE_SHIFT = 12
_KEY_PID_SHIFT = np.uint64(36)


@dataclass(frozen=True)
class ProcessRole:
    """One process of the trace and the role it was given."""

    pid: int
    ppid: int | None
    comm: str
    role: str
    cgroup: str | None
    first_time_s: float
    last_time_s: float

    @property
    def short(self) -> str:
        """The role in two words: ``parent``, ``child of 11954`` or ``standalone``."""
        if self.role.endswith("(parent)"):
            return "parent"
        if self.ppid is not None and f"children of {self.ppid}" in self.role:
            return f"child of {self.ppid}"
        return "standalone"


def process_roles(ht: HostTrace) -> list[ProcessRole]:
    """Give every process of a host trace a role: parent, family member or standalone.

    Examples
    --------
    >>> from planner.testing.builder import World
    >>> w = World()
    >>> w.spawn(10, comm="gunicorn"); w.map(10, 0x1000, [1])
    >>> w.fork(10, 11); w.fork(10, 12); w.snapshot(0.0)
    >>> [(r.pid, r.role) for r in process_roles(w.host_trace())]
    [(10, 'gunicorn 10 (parent)'), (11, 'gunicorn children of 10'), (12, 'gunicorn children of 10')]
    """
    procs = ht.processes
    pp: int | None
    cols = procs.column_names
    pid: list[Any] = procs.column("pid").to_pylist()
    ppid: list[Any] = procs.column("ppid").to_pylist() if "ppid" in cols else [None] * len(pid)
    comm = procs.column("comm").to_pylist() if "comm" in cols else [None] * len(pid)
    cgroup = procs.column("cgroup").to_pylist() if "cgroup" in cols else [None] * len(pid)
    sid = procs.column("snapshot_id").to_pylist()
    times = dict(zip(ht.snapshot_ids.tolist(), ht.times_s.tolist(), strict=True))
    info: dict[int, dict[str, Any]] = {}
    for p, parent, c, cg, s in zip(pid, ppid, comm, cgroup, sid, strict=True):
        t = float(times.get(s, 0.0))
        d = info.setdefault(
            int(p), {"ppid": parent, "comm": c or "?", "cgroup": cg, "t0": t, "t1": t}
        )
        d["t0"], d["t1"] = min(d["t0"], t), max(d["t1"], t)
    parents = {int(d["ppid"]) for d in info.values() if d["ppid"] is not None} & set(info)
    out: list[ProcessRole] = []
    for p in sorted(info):
        d = info[p]
        pp = None if d["ppid"] is None else int(d["ppid"])
        if pp is not None and pp in info:
            role = f"{d['comm']} children of {pp}"
        elif p in parents:
            role = f"{d['comm']} {p} (parent)"
        else:
            role = f"{d['comm']} (standalone)"
        out.append(
            ProcessRole(
                pid=p,
                ppid=pp,
                comm=str(d["comm"]),
                role=role,
                cgroup=d["cgroup"],
                first_time_s=float(d["t0"]),
                last_time_s=float(d["t1"]),
            )
        )
    return out


@dataclass(frozen=True)
class CurrentState:
    """The last snapshot's memory: totals, and breakdowns by kind, role and process."""

    snapshot: SnapshotPotential
    by_role: tuple[GroupPotential, ...]
    by_process: tuple[GroupPotential, ...]
    roles: tuple[ProcessRole, ...]
    page_size: int

    @property
    def static_ideal_saved_bytes(self) -> int:
        """The *static ideal*: what KSM could free if every duplicate page of every traced
        process merged at once, whatever the policy (frames, not mappings; every zero-content
        frame freed) -- ``ksm-planner info``'s upper bound. A scenario's own ideal is its
        ``policy_ideal_saved_bytes`` (only the pages its policy makes mergeable), and what
        it really frees its ``saved_bytes``."""
        return self.snapshot.ideal_saved_frames * self.page_size

    @property
    def static_ideal_saved_fraction(self) -> float:
        """The static ideal as a share of the physical frames of the last snapshot."""
        return self.snapshot.ideal_saved_fraction


def _relabelled(processes: pa.Table, names: dict[int, str]) -> pa.Table:
    """``processes`` with ``comm`` replaced by a group name per pid."""
    pids: list[Any] = processes.column("pid").to_pylist()
    comm = pa.array([names.get(int(p), "(unknown)") for p in pids], type=pa.string())
    i = processes.column_names.index("comm")
    return processes.set_column(i, "comm", comm)


def current_state(ht: HostTrace, *, snapshot_id: int | None = None) -> CurrentState:
    """Static potential of one snapshot (the last by default), by kind, role and process."""
    ids = ht.snapshot_ids.tolist()
    if not ids:
        raise ValueError("the trace has no snapshots")
    sid = ids[-1] if snapshot_id is None else snapshot_id
    t = float(ht.times_s[ids.index(sid)])
    pages = ht.pages_of(sid)
    procs = _rows_of(ht.processes, sid)
    maps = _rows_of(ht.mappings, sid)
    roles = process_roles(ht)
    base = snapshot_potential(pages, procs, maps, host=ht.host, snapshot_id=sid, time_s=t)
    by_role = snapshot_potential(
        pages, _relabelled(procs, {r.pid: r.role for r in roles}), maps, host=ht.host
    ).by_comm
    by_pid = snapshot_potential(
        pages, _relabelled(procs, {r.pid: str(r.pid) for r in roles}), maps, host=ht.host
    ).by_comm
    by_pid = tuple(sorted(by_pid, key=lambda g: int(g.group) if g.group.isdigit() else -1))
    page_size = int(ht.meta().get("page_size") or S.PAGE_SIZE_BYTES)
    return CurrentState(base, by_role, by_pid, tuple(roles), page_size)


def _rows_of(table: pa.Table, snapshot_id: int) -> pa.Table:
    sid = np.asarray(table.column("snapshot_id").to_numpy())
    return table.filter(pa.array(sid == snapshot_id))


# ----------------------------------------------------------------------------- COW


@dataclass(frozen=True)
class CowInterval:
    """Copy-on-write breaks between two consecutive snapshots."""

    t0_s: float
    t1_s: float
    mergeable_pages: int  # pages KSM would hold merged at t0
    rewritten_pages: int  # of those, pages whose content changed at the same address by t1

    @property
    def breaks_per_s(self) -> float:
        """Rewritten mergeable pages per second."""
        dt = self.t1_s - self.t0_s
        return self.rewritten_pages / dt if dt > 0 else float("nan")

    @property
    def rewritten_fraction(self) -> float:
        """Share of the mergeable pages rewritten in the interval."""
        return self.rewritten_pages / self.mergeable_pages if self.mergeable_pages else 0.0


@dataclass(frozen=True)
class CowEstimate:
    """Copy-on-write break rate of mergeable pages over a trace."""

    intervals: tuple[CowInterval, ...]
    page_size: int

    @property
    def breaks_per_s(self) -> float:
        """Rewritten mergeable pages per second over the whole trace (NaN with one snapshot)."""
        dt = sum(i.t1_s - i.t0_s for i in self.intervals)
        return sum(i.rewritten_pages for i in self.intervals) / dt if dt > 0 else float("nan")

    @property
    def bytes_per_s(self) -> float:
        """Memory newly needed per second by those breaks (each takes a fresh frame)."""
        return self.breaks_per_s * self.page_size

    @property
    def rewritten_fraction_per_min(self) -> float:
        """Share of mergeable pages rewritten per minute (mean over intervals)."""
        fr = [
            i.rewritten_fraction * 60.0 / (i.t1_s - i.t0_s)
            for i in self.intervals
            if i.t1_s > i.t0_s
        ]
        return float(np.mean(fr)) if fr else float("nan")


def _snapshot_arrays(pages: pa.Table, zero_flag: int) -> tuple[Arr, Arr, Arr, Arr]:
    """Keys ``(pid << 36 | page)``, hashes, frames and a mergeable mask of one snapshot."""
    h_col: Any = pages.column("content_hash")
    ok = ~np.asarray(h_col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    pid = np.asarray(pages.column("pid").to_numpy(), dtype=np.uint64)[ok]
    addr = np.asarray(pages.column("page_addr").to_numpy(), dtype=np.uint64)[ok]
    h = np.asarray(h_col.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.uint64)[ok]
    f_col: Any = pages.column("frame_id")
    f = np.asarray(f_col.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.uint64)[ok]
    flags = np.asarray(pages.column("flags").to_numpy(), dtype=np.uint16)[ok]
    key = (pid << _KEY_PID_SHIFT) | (addr >> np.uint64(_PAGE_SHIFT))
    zero = (flags & np.uint16(zero_flag)) != 0
    # distinct frames per hash: >= 2 means KSM has something to merge
    pairs = np.unique(np.stack([h, f], axis=1), axis=0)
    hashes, n_frames = np.unique(pairs[:, 0], return_counts=True)
    multi = hashes[n_frames >= 2]
    mergeable = np.isin(h, multi) | zero
    order = np.argsort(key, kind="stable")
    return key[order], h[order], f[order], mergeable[order]


def cow_breaks(ht: HostTrace) -> CowEstimate:
    """The copy-on-write break rate of mergeable pages between consecutive snapshots."""
    ids = ht.snapshot_ids.tolist()
    times = ht.times_s.tolist()
    page_size = int(ht.meta().get("page_size") or S.PAGE_SIZE_BYTES)
    out: list[CowInterval] = []
    prev: tuple[Arr, Arr, Arr, Arr] | None = None
    for i, sid in enumerate(ids):
        cur = _snapshot_arrays(ht.pages_of(sid), int(S.PageFlag.ZERO))
        if prev is not None:
            k0, h0, _, m0 = prev
            k1, h1, _, _ = cur
            pos = np.searchsorted(k1, k0)
            pos_c = np.minimum(pos, max(len(k1) - 1, 0))
            present = (pos < len(k1)) & (k1[pos_c] == k0) if len(k1) else np.zeros(len(k0), bool)
            changed = present & (h1[pos_c] != h0)
            out.append(
                CowInterval(
                    t0_s=float(times[i - 1]),
                    t1_s=float(times[i]),
                    mergeable_pages=int(np.count_nonzero(m0)),
                    rewritten_pages=int(np.count_nonzero(changed & m0)),
                )
            )
        prev = cur
    return CowEstimate(tuple(out), page_size)


__all__ = [
    "CowEstimate",
    "CowInterval",
    "CurrentState",
    "ProcessRole",
    "cow_breaks",
    "current_state",
    "process_roles",
]
