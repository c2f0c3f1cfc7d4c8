"""Numbers a review needs that no other module computes: process roles and the current
state by role and by process.

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
from planner.whatif.writes import CowEstimate, CowInterval, cow_breaks

if TYPE_CHECKING:
    from planner.trace.io import HostTrace


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


__all__ = [
    "CowEstimate",
    "CowInterval",
    "CurrentState",
    "ProcessRole",
    "cow_breaks",
    "current_state",
    "process_roles",
]
