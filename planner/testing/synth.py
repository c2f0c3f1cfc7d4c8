"""Large synthetic host traces with realistic content popularity and churn (for benchmarks).

The shape follows what the Django captures of docs/capture.md §3.2 showed for forked
interpreter fleets, scaled up:

* processes come in *families* (a master and its forked workers running the same code);
  a worker keeps some of its master's frames from the fork (fork-shared, already one frame);
* most duplication is *cross-process within a family*: a page of the family's common
  state (interpreter heap, imported modules) exists, at the same address, in many members;
* a little *cross-family* duplication (same code, different start-up state);
* a few very popular contents -- the zero page and fill patterns -- with Zipf popularity,
  which are the only contents with hundreds of copies (KSM chains);
* the rest is unique; between snapshots pages are rewritten (unique pages churn more than
  shared ones), some are unmapped and new ones mapped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from planner.trace import schema as S
from planner.trace.flat import FlatConverter, InMemoryHost

if TYPE_CHECKING:
    from planner.trace.io import HostTrace


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
    seed: int = 0


def _hashes(ids: np.ndarray) -> np.ndarray:
    """content ids -> 64-bit hashes (SplitMix64, as planner.testing.builder; 0 is the zero page)."""
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
    proc = np.repeat(np.arange(spec.processes, dtype=np.int64), per)
    slot = np.tile(np.arange(per, dtype=np.int64), spec.processes)
    family = proc // spec.family_size
    master_proc = family * spec.family_size
    is_worker = proc != master_proc
    pid = proc + 1000
    # content ids: [1, patterns] patterns; then cross-family ids; then family ids; then unique
    cross_base = spec.patterns + 1
    fam_base = cross_base + per
    uniq_next = fam_base + (spec.processes // spec.family_size + 1) * per

    def fresh(count: int) -> np.ndarray:
        nonlocal uniq_next
        out = np.arange(uniq_next, uniq_next + count)
        uniq_next += count
        return out

    u = rng.random(n)
    content = fresh(n)
    zero = u < spec.zero_share
    pat = (~zero) & (u < spec.zero_share + spec.pattern_share)
    cross = (~zero & ~pat) & (u < spec.zero_share + spec.pattern_share + spec.cross_family)
    fam = (slot % 100) < int(100 * spec.family_common)
    fam &= ~(zero | pat | cross) & (rng.random(n) < spec.member_has_common)
    content[zero] = 0
    content[pat] = 1 + (rng.zipf(spec.zipf_a, int(pat.sum())) - 1) % spec.patterns
    content[cross] = cross_base + slot[cross]
    content[fam] = fam_base + family[fam] * per + slot[fam]
    frame = np.arange(1, n + 1, dtype=np.uint64)
    master_row = master_proc * per + slot
    shared = is_worker & (rng.random(n) < spec.fork_shared)
    content[shared] = content[master_row[shared]]
    frame[shared] = frame[master_row[shared]]
    next_frame = n + 1
    addr = np.uint64(0x7F0000000000) + slot.astype(np.uint64) * np.uint64(4096)
    conv = FlatConverter(
        host,
        snapshot_meta={
            "hash_algo": "synthetic-splitmix64",
            "zero_hash": S.PLAIN_XXH3_ZERO_PAGE_HASH,
            "hz": 250,
            "kernel_release": "synthetic",
        },
    )
    sink = InMemoryHost(host)
    present = np.ones(n, bool)
    for k in range(spec.snapshots):
        if k:
            unique_now = content >= fam_base + (spec.processes // spec.family_size + 1) * per
            p_change = np.where(unique_now, spec.churn * 1.5, spec.churn * 0.3)
            change = present & (rng.random(n) < p_change)
            m = int(change.sum())
            content[change] = fresh(m)
            cow = change & shared  # a write to a fork-shared page gets a private frame
            frame[cow] = np.arange(next_frame, next_frame + int(cow.sum()), dtype=np.uint64)
            next_frame += int(cow.sum())
            shared &= ~change
            flip = rng.random(n) < 0.005
            present ^= flip
            back = flip & present
            content[back] = fresh(int(back.sum()))
            frame[back] = np.arange(next_frame, next_frame + int(back.sum()), dtype=np.uint64)
            next_frame += int(back.sum())
        sel = present
        rows = pa.table(
            {
                "pid": pa.array(pid[sel].astype(np.int32)),
                "ppid": pa.array(np.where(is_worker, master_proc + 1000, 1)[sel].astype(np.int32)),
                "comm": pa.array(np.where(is_worker, "worker", "master")[sel]),
                "proc_start": pa.array(pid[sel].astype(np.uint64)),
                "vma_start": pa.array(np.full(int(sel.sum()), 0x7F0000000000, np.uint64)),
                "vma_kind": pa.array(np.full(int(sel.sum()), "anon")),
                "page_addr": pa.array(addr[sel]),
                "content_hash": pa.array(_hashes(content[sel])),
                "frame": pa.array(frame[sel]),
                "is_zero": pa.array(content[sel] == 0),
            }
        )
        snap, procs, maps, pages = conv.convert(k, k * spec.interval_s, rows)
        sink.add_snapshot(snap, processes=procs, mappings=maps, pages=pages)
    return sink.build()
