"""Synthetic fleets: several host traces in one directory (tests, benchmarks, the recipe).

Two generators, both writing one trace directory per host (``<root>/<host>/``) whose
manifest says it is synthetic (``source = "synthetic"`` and a ``synthetic`` entry naming
the generator and its parameters):

* :func:`write_family_fleet` -- small hosts (a master and its forked workers, tens of pages
  each, :class:`~planner.testing.builder.World`), different per host: for tests;
* :func:`write_synthetic_fleet` -- hosts of any size with realistic content popularity
  (:mod:`planner.testing.synth`), written one snapshot at a time: for benchmarks and
  ``traces/fleet/make_fleet.py``.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

from planner.testing.builder import World

if TYPE_CHECKING:
    import os

    from planner.testing.synth import SynthSpec


def family_world(host: str, *, workers: int, seed: int) -> World:
    """A master and ``workers`` forked workers: common content on their own frames (KSM
    merges it), private pages, copy-on-write of a few inherited pages; 3 snapshots."""
    w = World(host)
    w.spawn(100, comm="gunicorn", cgroup="/web.slice")
    w.map(100, 0x10000, [1000 + i for i in range(40)], kind="heap")
    w.snapshot(0.0)
    for i in range(workers):
        pid = 101 + i
        w.fork(100, pid)
        w.map(pid, 0x200000, [5000 + j for j in range(60)], kind="anon")
        w.map(pid, 0x400000, [(seed + 1) * 100_000 + 1000 * i + j for j in range(20)], kind="heap")
        w.write_range(pid, 0x10000, [7000 + 100 * i + j for j in range(5)])
    w.snapshot(10.0)
    for i in range(workers):
        w.write_range(101 + i, 0x400000, [(seed + 2) * 100_000 + 1000 * i + j for j in range(5)])
    w.snapshot(20.0)
    return w


def write_family_fleet(root: str | os.PathLike[str], hosts: int = 8) -> list[Path]:
    """``hosts`` small host traces ``<root>/host-NN/`` (host ``web-NN``, 2 to 7 workers)."""
    from planner.trace.io import TraceWriter

    Path(root).mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(hosts):
        path = Path(root) / f"host-{i:02d}"
        w = family_world(f"web-{i:02d}", workers=2 + i % 6, seed=i)
        extra = {"synthetic": {"generator": "planner.testing.fleet.family_world", "seed": i}}
        with TraceWriter(path, source="synthetic", extra=extra) as tw:
            w._emit(tw.host(w.host))
        out.append(path)
    return out


def fleet_specs(base: SynthSpec, hosts: int) -> list[SynthSpec]:
    """``hosts`` variations of ``base``: another seed each, and a share of family-common
    state and a churn that differ from host to host (so the hosts gain differently)."""
    return [
        replace(
            base,
            seed=base.seed + i,
            family_common=round(base.family_common * (0.6 + 0.8 * i / max(1, hosts - 1)), 4),
            churn=round(base.churn * (1.5 - i / max(1, hosts - 1)), 4),
        )
        for i in range(hosts)
    ]


def write_synthetic_fleet(
    root: str | os.PathLike[str], base: SynthSpec, hosts: int = 8
) -> list[Path]:
    """``hosts`` synthetic host traces ``<root>/host-NN/`` (:func:`fleet_specs` of ``base``)."""
    from planner.testing.synth import _emit
    from planner.trace.io import TraceWriter

    Path(root).mkdir(parents=True, exist_ok=True)
    out = []
    for i, spec in enumerate(fleet_specs(base, hosts)):
        path = Path(root) / f"host-{i:02d}"
        extra = {"synthetic": {"generator": "planner.testing.synth", "spec": asdict(spec)}}
        with TraceWriter(path, source="synthetic", extra=extra) as tw:
            _emit(spec, f"host-{i:02d}", tw.host(f"host-{i:02d}"))
        out.append(path)
    return out


__all__ = ["family_world", "fleet_specs", "write_family_fleet", "write_synthetic_fleet"]
