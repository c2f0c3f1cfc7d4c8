"""Large synthetic host traces with realistic content popularity and churn (for benchmarks).

The page mix follows the measurements in docs/ecosystem.md §0 and the Django captures of
docs/capture-notes.md: some zero pages, a pool of popular contents with Zipf popularity
(duplicated across processes), the rest unique; processes come in fork families whose
children share a part of the parent's frames; between snapshots a fraction of the pages
is rewritten (unique pages churn more than popular ones), some pages are unmapped and new
ones mapped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from planner.trace import schema as S
from planner.trace.flat import FlatConverter, InMemoryHost
from planner.trace.io import HostTrace


@dataclass(frozen=True)
class SynthSpec:
    """Shape of a synthetic host."""

    pages: int = 1_000_000
    processes: int = 100
    family_size: int = 9  # a master and its forked workers
    snapshots: int = 4
    interval_s: float = 10.0
    zero_share: float = 0.01
    popular_share: float = 0.40
    popular_pool: float = 0.02  # distinct popular contents, as a share of pages
    zipf_a: float = 1.3
    fork_shared: float = 0.10  # share of a worker's pages still on the master's frames
    churn: float = 0.10  # pages rewritten per snapshot
    seed: int = 0


def _hashes(ids: np.ndarray) -> np.ndarray:
    """content ids -> 64-bit hashes (SplitMix64, vectorized; 0 is the zero page)."""
    z = ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return np.where(ids == 0, np.uint64(S.PLAIN_XXH3_ZERO_PAGE_HASH), z)


def synthetic_host(spec: SynthSpec = SynthSpec(), *, host: str = "synthetic") -> HostTrace:
    """Build an in-memory :class:`HostTrace` following ``spec``."""
    rng = np.random.default_rng(spec.seed)
    per = spec.pages // spec.processes
    n = per * spec.processes
    pool = max(1, int(spec.popular_pool * n))
    next_unique = pool + 1

    def draw(count: int) -> np.ndarray:
        nonlocal next_unique
        u = rng.random(count)
        ids = np.empty(count, np.int64)
        zero = u < spec.zero_share
        pop = (~zero) & (u < spec.zero_share + spec.popular_share)
        ids[zero] = 0
        ranks = rng.zipf(spec.zipf_a, int(pop.sum()))
        ids[pop] = 1 + (ranks - 1) % pool
        uniq = ~(zero | pop)
        k = int(uniq.sum())
        ids[uniq] = np.arange(next_unique, next_unique + k)
        next_unique += k
        return ids

    pid = np.repeat(np.arange(spec.processes, dtype=np.int64) + 1000, per)
    family = (pid - 1000) // spec.family_size
    master = 1000 + family * spec.family_size
    is_worker = pid != master
    addr = (np.tile(np.arange(per, dtype=np.uint64), spec.processes) * np.uint64(4096)) + np.uint64(0x7F0000000000)
    content = draw(n)
    frame = np.arange(n, dtype=np.uint64) + np.uint64(1)
    # workers keep some of their master's frames (and content) from the fork
    shared = is_worker & (rng.random(n) < spec.fork_shared)
    master_row = (master - 1000) * per + np.tile(np.arange(per), spec.processes)
    content[shared] = content[master_row[shared]]
    frame[shared] = frame[master_row[shared]]
    next_frame = n + 1
    conv = FlatConverter(host, snapshot_meta={"hash_algo": "synthetic-splitmix64",
                                              "zero_hash": S.PLAIN_XXH3_ZERO_PAGE_HASH, "hz": 250,
                                              "kernel_release": "synthetic"})
    sink = InMemoryHost(host)
    present = np.ones(n, bool)
    for k in range(spec.snapshots):
        if k:
            # churn: unique pages change more often than popular ones
            p_change = np.where(content > pool, spec.churn * 1.5, spec.churn * 0.3)
            change = present & (rng.random(n) < p_change)
            content[change] = draw(int(change.sum()))
            cow = change & (frame <= n) & shared  # written fork-shared pages get a private frame
            frame[cow] = np.arange(next_frame, next_frame + int(cow.sum()), dtype=np.uint64)
            next_frame += int(cow.sum())
            shared &= ~change
            flip = rng.random(n) < 0.01
            present ^= flip
            back = flip & present
            content[back] = draw(int(back.sum()))
            frame[back] = np.arange(next_frame, next_frame + int(back.sum()), dtype=np.uint64)
            next_frame += int(back.sum())
        sel = present
        rows = pa.table({
            "pid": pa.array(pid[sel].astype(np.int32)),
            "ppid": pa.array(np.where(is_worker, master, 1)[sel].astype(np.int32)),
            "comm": pa.array(np.where(is_worker, "worker", "master")[sel]),
            "proc_start": pa.array(pid[sel].astype(np.uint64)),
            "vma_start": pa.array(np.full(int(sel.sum()), 0x7F0000000000, np.uint64)),
            "vma_kind": pa.array(np.full(int(sel.sum()), "anon")),
            "page_addr": pa.array(addr[sel]),
            "content_hash": pa.array(_hashes(content[sel])),
            "frame": pa.array(frame[sel]),
            "is_zero": pa.array(content[sel] == 0),
        })
        snap, procs, maps, pages = conv.convert(k, k * spec.interval_s, rows)
        sink.add_snapshot(snap, processes=procs, mappings=maps, pages=pages)
    return sink.build()
