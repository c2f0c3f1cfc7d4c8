"""Random small worlds for engine property tests: churn, forks, exits, zero pages, THP."""

from __future__ import annotations

import random
from dataclasses import dataclass

from planner.testing.builder import PAGE, World


@dataclass(frozen=True)
class WorldSpec:
    """How busy a random world is."""

    processes: int = 3
    pages: int = 24
    contents: int = 6
    snapshots: int = 4
    zero_share: float = 0.15
    churn: float = 0.25
    fork_prob: float = 0.4
    exit_prob: float = 0.15
    thp: bool = False
    span_s: float = 3.0


def random_world(seed: int, spec: WorldSpec = WorldSpec()) -> World:
    """A reproducible random world (``seed`` picks everything)."""
    rnd = random.Random(seed)
    w = World(host=f"random-{seed}")
    next_pid = 100

    def content() -> int:
        return 0 if rnd.random() < spec.zero_share else rnd.randint(1, spec.contents)

    def new_proc(parent: int | None = None) -> int:
        nonlocal next_pid
        pid = next_pid
        next_pid += 1
        if parent is None:
            w.spawn(pid, comm=f"p{pid % 3}")
            npages = rnd.randint(1, spec.pages)
            base = 0x10000 + rnd.randint(0, 4) * 0x100000
            w.map(
                pid, base, [content() for _ in range(npages)], thp=spec.thp and rnd.random() < 0.5
            )
            if rnd.random() < 0.5:
                w.map(
                    pid,
                    base + 0x400000,
                    [content() for _ in range(rnd.randint(1, spec.pages // 2 + 1))],
                    kind=rnd.choice(["heap", "anon", "stack"]),
                )
        else:
            w.fork(parent, pid)
        return pid

    for _ in range(spec.processes):
        new_proc()
    times = sorted(rnd.uniform(0, spec.span_s) for _ in range(spec.snapshots - 1))
    w.snapshot(0.0)
    prev = 0.0
    for t in times:
        t = max(t, prev + 1e-3)
        prev = t
        pids = sorted(w.procs)
        for pid in pids:
            proc = w.procs[pid]
            for addr in sorted(proc.pages):
                if rnd.random() < spec.churn:
                    w.write(pid, addr, content())
            if proc.pages and rnd.random() < 0.15:
                a = rnd.choice(sorted(proc.pages))
                w.unmap(pid, a, 1)
            if rnd.random() < 0.2:
                top = max(proc.pages, default=0x800000)
                w.map(
                    pid,
                    top + PAGE * rnd.randint(1, 3),
                    [content() for _ in range(rnd.randint(1, 4))],
                )
        if pids and rnd.random() < spec.fork_prob:
            new_proc(parent=rnd.choice(pids))
        if len(w.procs) > 1 and rnd.random() < spec.exit_prob:
            w.exit(rnd.choice(sorted(w.procs)))
        if rnd.random() < 0.2:
            new_proc()
        w.snapshot(t)
    return w
