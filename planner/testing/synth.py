"""Large synthetic hosts with realistic content popularity and churn (for benchmarks).

The shape follows what the Django captures of docs/capture.md §3.2 showed for forked
interpreter fleets, scaled up:

* processes come in *families* (a master and its forked workers running the same code);
  a worker keeps some of its master's frames from the fork (fork-shared, already one frame);
* most duplication is *cross-process within a family*: a page of the family's common
  state (interpreter heap, imported modules) exists, at the same address, in many members;
* a little *cross-family* duplication (same code, different start-up state);
* a few very popular contents -- the zero page, fill patterns (Zipf) and, optionally,
  freshly allocated buffers -- with more copies than ``max_page_sharing``: KSM *chains*;
* the rest is unique; between snapshots pages are rewritten (unique pages churn more than
  shared ones), some are unmapped and new ones mapped.

Two outputs from one generator: :func:`synthetic_host` builds a trace (a
:class:`~planner.trace.io.HostTrace` in memory); :func:`synthetic_input` builds the
engine's prepared input directly, one snapshot at a time, so that a day of hourly
snapshots of a 16 M-page host fits in memory (the trace would not).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from planner.trace import schema as S
from planner.trace.flat import FlatConverter, InMemoryHost

if TYPE_CHECKING:
    import os
    from collections.abc import Iterator

    from planner.engine.prepare import ReplayInput
    from planner.trace.io import HostTrace, HostWriter


@dataclass(frozen=True)
class SynthSpec:
    """Shape of a synthetic host."""

    pages: int = 1_000_000
    processes: int = 100
    family_size: int = 10  # a master and its forked workers
    snapshots: int = 4
    interval_s: float = 10.0
    zero_share: float = 0.008
    pattern_share: float = 0.01  # pages filled with one of a few patterns (Zipf)
    patterns: int = 50
    zipf_a: float = 1.5
    family_common: float = 0.35  # share of a process's pages that are family-common state
    member_has_common: float = 0.7  # chance a member still holds an unchanged copy of it
    cross_family: float = 0.03  # share of pages equal in every family (same code, same data)
    fork_shared: float = 0.08  # share of a worker's pages still on its master's frames
    churn: float = 0.08  # pages rewritten per snapshot (unique pages 1.5x, shared 0.3x)
    remap: float = 0.005  # pages unmapped or mapped again per snapshot
    buffer_share: float = 0.0  # freshly allocated buffers: a few contents, anywhere
    buffers: int = 4
    #: pages each process fills inside its mapping at the first step, as a share of its
    #: first snapshot's pages; half as many at each later step (a heap that saturates)
    growth: float = 0.0
    seed: int = 0

    @classmethod
    def with_chains(cls, pages: int, **changes: float) -> SynthSpec:
        """A host whose popular contents form many KSM chains: 2 % zero pages (no
        use_zero_pages), 2 % fill patterns, 3 % freshly allocated buffers; one process per
        50,000 pages."""
        base = cls(
            pages=pages,
            processes=max(10, pages // 50_000),
            zero_share=0.02,
            pattern_share=0.02,
            buffer_share=0.03,
        )
        return replace(base, **changes)  # type: ignore[arg-type]


def _hashes(ids: np.ndarray) -> np.ndarray:
    """content ids -> 64-bit hashes (SplitMix64, as planner.testing.builder; 0 is the zero page)."""
    z = ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return np.where(ids == 0, np.uint64(S.PLAIN_XXH3_ZERO_PAGE_HASH), z)


@dataclass
class _Snapshot:
    """The pages present at one snapshot, in (process, slot) order."""

    proc: np.ndarray
    slot: np.ndarray
    content: np.ndarray
    frame: np.ndarray


class _World:
    """The generator: page contents and frames per (process, slot), evolving per snapshot."""

    def __init__(self, spec: SynthSpec) -> None:
        self.spec = spec
        rng = self.rng = np.random.default_rng(spec.seed)
        self.first = spec.pages // spec.processes
        # slots a process will ever fill: its first snapshot's, then the growth's
        self.per = per = self.first + self._grown(spec.snapshots - 1)
        n = per * spec.processes
        self.proc = np.repeat(np.arange(spec.processes, dtype=np.int64), per)
        self.slot = np.tile(np.arange(per, dtype=np.int64), spec.processes)
        family = self.proc // spec.family_size
        self.master_proc = family * spec.family_size
        self.is_worker = self.proc != self.master_proc
        # content ids: [1, patterns] patterns, then buffers, cross-family, family, unique
        buf_base = spec.patterns + 1
        cross_base = buf_base + spec.buffers
        fam_base = cross_base + per
        self.unique_base = self.uniq_next = (
            fam_base + (spec.processes // spec.family_size + 1) * per
        )
        u = rng.random(n)
        content = self.fresh(n)
        zero = u < spec.zero_share
        cut = spec.zero_share + spec.pattern_share
        pat = (~zero) & (u < cut)
        cross = (~zero & ~pat) & (u < cut + spec.cross_family)
        fam = (self.slot % 100) < int(100 * spec.family_common)
        fam &= ~(zero | pat | cross) & (rng.random(n) < spec.member_has_common)
        content[zero] = 0
        content[pat] = 1 + (rng.zipf(spec.zipf_a, int(pat.sum())) - 1) % spec.patterns
        content[cross] = cross_base + self.slot[cross]
        content[fam] = fam_base + family[fam] * per + self.slot[fam]
        if spec.buffer_share > 0:
            buf = (~zero & ~pat) & (rng.random(n) < spec.buffer_share)
            content[buf] = buf_base + rng.integers(0, spec.buffers, int(buf.sum()))
        frame = np.arange(1, n + 1, dtype=np.uint64)
        master_row = self.master_proc * per + self.slot
        self.shared = self.is_worker & (rng.random(n) < spec.fork_shared)
        content[self.shared] = content[master_row[self.shared]]
        frame[self.shared] = frame[master_row[self.shared]]
        self.content, self.frame = content, frame
        self.next_frame = n + 1
        self.filled = self.slot < self.first  # slots the process has filled so far
        self.present = self.filled.copy()
        self.step = 0

    def _grown(self, step: int) -> int:
        """Slots a process fills after ``step`` steps beyond its first snapshot's."""
        return int(self.first * self.spec.growth * 2 * (1 - 0.5**step))

    def fresh(self, count: int) -> np.ndarray:
        out = np.arange(self.uniq_next, self.uniq_next + count)
        self.uniq_next += count
        return out

    def _step(self) -> None:
        """Writes, copy-on-write, unmaps and new mappings between two snapshots."""
        spec, rng = self.spec, self.rng
        n = self.content.size
        unique_now = self.content >= self.unique_base
        p_change = np.where(unique_now, spec.churn * 1.5, spec.churn * 0.3)
        change = self.present & (rng.random(n) < p_change)
        self.content[change] = self.fresh(int(change.sum()))
        cow = change & self.shared  # a write to a fork-shared page gets a private frame
        self.frame[cow] = np.arange(
            self.next_frame, self.next_frame + int(cow.sum()), dtype=np.uint64
        )
        self.next_frame += int(cow.sum())
        self.shared &= ~change
        flip = (rng.random(n) < spec.remap) & self.filled
        self.present ^= flip
        back = flip & self.present
        self.content[back] = self.fresh(int(back.sum()))
        self.frame[back] = np.arange(
            self.next_frame, self.next_frame + int(back.sum()), dtype=np.uint64
        )
        self.next_frame += int(back.sum())
        self.step += 1
        grown = self.filled != (self.slot < self.first + self._grown(self.step))
        self.filled |= grown
        self.present |= grown  # new pages: their contents drawn at the start, frames unused

    def snapshots(self) -> Iterator[_Snapshot]:
        for k in range(self.spec.snapshots):
            if k:
                self._step()
            sel = self.present
            yield _Snapshot(self.proc[sel], self.slot[sel], self.content[sel], self.frame[sel])


_ADDR0 = 0x7F0000000000


def _emit(spec: SynthSpec, host: str, sink: InMemoryHost | HostWriter) -> None:
    world = _World(spec)
    conv = FlatConverter(
        host,
        snapshot_meta={
            "hash_algo": "synthetic-splitmix64",
            "zero_hash": S.PLAIN_XXH3_ZERO_PAGE_HASH,
            "hz": 250,
            "kernel_release": "synthetic",
        },
    )
    for k, snap in enumerate(world.snapshots()):
        pid = snap.proc + 1000
        worker = snap.proc != snap.proc // spec.family_size * spec.family_size
        master_pid = snap.proc // spec.family_size * spec.family_size + 1000
        addr = np.uint64(_ADDR0) + snap.slot.astype(np.uint64) * np.uint64(4096)
        rows = pa.table(
            {
                "pid": pa.array(pid.astype(np.int32)),
                "ppid": pa.array(np.where(worker, master_pid, 1).astype(np.int32)),
                "comm": pa.array(np.where(worker, "worker", "master")),
                "proc_start": pa.array(pid.astype(np.uint64)),
                "vma_start": pa.array(np.full(pid.size, _ADDR0, np.uint64)),
                "vma_kind": pa.array(np.full(pid.size, "anon")),
                "page_addr": pa.array(addr),
                "content_hash": pa.array(_hashes(snap.content)),
                "frame": pa.array(snap.frame),
                "is_zero": pa.array(snap.content == 0),
            }
        )
        s, procs, maps, pages = conv.convert(k, k * spec.interval_s, rows)
        sink.add_snapshot(s, processes=procs, mappings=maps, pages=pages)


def synthetic_host(spec: SynthSpec = SynthSpec(), *, host: str = "synthetic") -> HostTrace:
    """Build an in-memory :class:`HostTrace` following ``spec``."""
    sink = InMemoryHost(host)
    _emit(spec, host, sink)
    return sink.build()


def write_synthetic_trace(
    spec: SynthSpec, out: str | os.PathLike[str], *, host: str = "synthetic"
) -> None:
    """Write ``spec``'s host as a trace directory, one snapshot at a time."""
    from planner.trace.io import TraceWriter

    with TraceWriter(out, source="synthetic") as tw:
        _emit(spec, host, tw.host(host))


def synthetic_input(spec: SynthSpec = SynthSpec(), *, host: str = "synthetic") -> ReplayInput:
    """The prepared replay input of ``spec`` (every process prctl), built one snapshot at a
    time: what :func:`planner.engine.prepare` makes of :func:`synthetic_host`'s trace,
    without the trace."""
    from planner.engine.prepare import InputBuilder, MmInfo
    from planner.engine.registration import PRCTL, ProcessInfo
    from planner.engine.rows import F_ELIGIBLE, F_ZERO, MmLayout, RowColumns, row_keys

    mms = []
    for p in range(spec.processes):
        master = p // spec.family_size * spec.family_size
        parent = master if master != p else None
        pid = p + 1000
        ppid = master + 1000 if parent is not None else 1
        info = ProcessInfo(
            mm=p,
            pid=pid,
            proc_start=pid,
            ppid=ppid,
            comm="worker" if parent is not None else "master",
            cmdline=None,
            cgroup=None,
            uid=None,
            parent_mm=parent,
            ancestors=() if parent is None else (parent,),
        )
        mms.append(
            MmInfo(
                mm=p, pid=pid, proc_start=pid, ppid=ppid, comm=info.comm, parent_mm=parent,
                first_snap=0, exit_snap=None, registration=PRCTL,
                reg_order=(float("inf"), pid, pid), info=info,
            )
        )  # fmt: skip
    builder = InputBuilder(
        host=host, page_size=4096, hz=250, trace_hash="synthetic", mms=mms,
        meta={"hash_algo": "synthetic-splitmix64", "kernel_release": "synthetic", "hz": 250},
    )  # fmt: skip
    present = np.arange(spec.processes, dtype=np.int32)
    for k, snap in enumerate(_World(spec).snapshots()):
        mm = snap.proc.astype(np.int32)
        page = (np.uint64(_ADDR0 >> 12) + snap.slot.astype(np.uint64)).astype(np.uint64)
        counts = np.bincount(mm, minlength=spec.processes)
        hi = np.cumsum(counts).astype(np.int64)
        flags = np.where(snap.content == 0, F_ELIGIBLE | F_ZERO, F_ELIGIBLE).astype(np.uint8)
        rows = RowColumns(
            key=row_keys(mm, page), hash=_hashes(snap.content), frame=snap.frame, flags=flags
        )
        layout = MmLayout(
            present=present, lo=hi - counts, hi=hi, mergeable=np.ones(present.size, bool)
        )
        builder.add(round(k * spec.interval_s * 1e9), rows, layout)
    return builder.build()


__all__ = ["SynthSpec", "synthetic_host", "synthetic_input", "write_synthetic_trace"]
