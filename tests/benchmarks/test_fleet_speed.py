"""Fleets: 8 hosts locally and on a Dask LocalCluster, and the memory of a worker replaying a
big host (ratios and figures of one run, no timed assertion).

Run with ``.venv/bin/pytest tests/benchmarks/test_fleet_speed.py -m benchmark -s``; the
figures are printed and stored in ``benchmark.extra_info``. Hosts are synthetic
(:func:`planner.testing.fleet.write_synthetic_fleet`: :mod:`planner.testing.synth` hosts with
content that forms KSM chains, a different seed, family-common share and churn per host).

* ``test_fleet_local_and_on_a_local_cluster``: a fleet of 8 hosts
  (``KSM_BENCH_FLEET_PAGES`` pages each, default 500,000) under 2 policy sets x 2 knob
  points with capacity: on one core (inline), on the local process pool, and on a Dask
  ``LocalCluster`` of as many single-threaded worker processes; the three give the same
  figures; reported: each time (local pool and cluster alternated, best of
  ``KSM_BENCH_FLEET_ROUNDS``, default 2), local pool / inline and LocalCluster / local pool.
* ``test_worker_memory_on_a_big_host``: one host of ``KSM_BENCH_FLEET_BIG_PAGES`` pages
  (default 16 M) at its first snapshot, growing as real hosts do (its processes fill 5 %
  more, then 2.5 %: the growth model continues it after the trace, 24 steps), replayed by
  a fleet what-if on a ``LocalCluster`` of one worker process
  limited to 4 GiB (Dask stops a worker that passes 95 % of its limit); reported: the
  worker's peak RSS, in bytes and per tracked page, and the client's.
  ``KSM_BENCH_FLEET_DIR`` keeps the generated traces between runs (a 16 M-page trace takes
  minutes to generate).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from planner.engine.options import ReplayOptions
from planner.jsonable import to_jsonable
from planner.policy import preset
from planner.testing.synth import SynthSpec
from planner.whatif import (
    CapacityInputs,
    ExtrapolationSpec,
    InlineExecutor,
    KnobGrid,
    dask_executor,
)
from planner.whatif.executors import default_workers
from planner.whatif.fleet import FleetResult, run_fleet

pytestmark = pytest.mark.benchmark
distributed = pytest.importorskip("distributed", reason="the 'dist' extra is not installed")

GIB = 1 << 30


def _pages(var: str, default: int) -> int:
    raw = os.environ.get(var, "")
    if not raw:
        return default
    return int(float(raw[:-1]) * 1_000_000) if raw.endswith("M") else int(raw)


def _report(capsys: pytest.CaptureFixture[str], title: str, figures: dict[str, Any]) -> None:
    with capsys.disabled():
        print(f"\n[{title}]")
        for k, v in figures.items():
            print(f"  {k:>44}: {v:,.3f}" if isinstance(v, float) else f"  {k:>44}: {v:,}")


def _fleet_dir(
    tmp_path_factory: pytest.TempPathFactory, name: str, spec: SynthSpec, n: int
) -> Path:
    keep = os.environ.get("KSM_BENCH_FLEET_DIR")
    root = Path(keep) / name if keep else tmp_path_factory.mktemp("fleets") / name
    if not (root / f"host-{n - 1:02d}").exists():  # in a child: this process's peak RSS
        code = (  # stays its own
            "import sys, json; from planner.testing.fleet import write_synthetic_fleet; "
            "from planner.testing.synth import SynthSpec; "
            "write_synthetic_fleet(sys.argv[1], SynthSpec(**json.loads(sys.argv[2])), "
            "int(sys.argv[3]))"
        )
        subprocess.run(
            [sys.executable, "-c", code, str(root), json.dumps(asdict(spec)), str(n)], check=True
        )
    return root


def _figures(r: FleetResult) -> Any:
    doc = to_jsonable(r, include={"replicates"})
    doc.pop("provenance")
    doc.pop("elapsed_s")
    return doc


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def test_fleet_local_and_on_a_local_cluster(
    benchmark: Any, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    pages = _pages("KSM_BENCH_FLEET_PAGES", 500_000)
    spec = SynthSpec.with_chains(pages, snapshots=3, interval_s=10.0)
    root = _fleet_dir(tmp_path_factory, f"fleet8-{pages}", spec, 8)
    run = {
        "policy_sets": [preset("prctl-all"), preset("workers-prctl")],
        "grid": KnobGrid.from_mapping({"pages_to_scan": [10_000, 100_000]}),
        "capacity": CapacityInputs(host_mem_bytes=64 * GIB, headroom_fraction=0.1),
        "extrapolation": ExtrapolationSpec(),
    }
    workers = default_workers()
    rounds = int(os.environ.get("KSM_BENCH_FLEET_ROUNDS", "2"))
    run_fleet(root, hosts=["host-00"], executor=InlineExecutor(), **run)  # compiled code loaded
    inline, inline_s = _timed(run_fleet, root, executor=InlineExecutor(), **run)
    local_times, remote_times = [], []
    with distributed.LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        with dask_executor(cluster.scheduler_address) as ex:  # workers up: not timed
            run_fleet(root, hosts=["host-00"], executor=ex, **run)  # workers load the kernel
            for _ in range(rounds):  # alternated: a shared machine's load hits both alike
                local, t = _timed(run_fleet, root, max_workers=workers, **run)
                local_times.append(t)
                remote, t = _timed(run_fleet, root, executor=ex, **run)
                remote_times.append(t)
        benchmark.pedantic(lambda: None, rounds=1)
    local_s, remote_s = min(local_times), min(remote_times)
    assert _figures(local) == _figures(inline)
    assert _figures(remote) == _figures(local)
    best = local.best()
    assert best is not None
    assert best.capacity is not None
    figures = {
        "hosts": len(local.members),
        "pages per host (first snapshot)": pages,
        "scenarios": len(local.scenarios),
        "replay and fit tasks": int(local.provenance["extra"]["tasks"]),
        "cores (workers)": workers,
        "inline (one core) s": inline_s,
        "local process pool s": local_s,
        "LocalCluster s": remote_s,
        "rounds (best of, local and cluster alternated)": rounds,
        "local pool / inline": local_s / inline_s,
        "LocalCluster / local pool": remote_s / local_s,
        "fleet net saving, best scenario MiB": best.net_saved_bytes / (1 << 20),
        "host net saving p10 %": 100 * best.net_saved_fraction_across_hosts.p10,
        "host net saving p90 %": 100 * best.net_saved_fraction_across_hosts.p90,
        "fleet capacity gain %": 100 * (best.capacity.gain or 0.0),
    }
    benchmark.extra_info.update(figures)
    _report(capsys, "fleet of 8 hosts: inline, local pool, Dask LocalCluster", figures)


def _rss_peak_bytes() -> int:
    """This process's peak RSS since its last ``exec`` (``VmHWM``, kept per address space).

    Not ``ru_maxrss``: Linux carries the parent's high-water mark across ``fork`` and
    ``exec``, so a Dask worker spawned by a client that had peaked at 2.1 GB reported
    2.1 GB before it had done anything (2026-12-05)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def test_worker_memory_on_a_big_host(
    benchmark: Any, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    pages = _pages("KSM_BENCH_FLEET_BIG_PAGES", 16_000_000)
    spec = SynthSpec.with_chains(pages, snapshots=3, interval_s=10.0, growth=0.05)
    root = _fleet_dir(tmp_path_factory, f"big-{pages}-growing", spec, 1)
    run = {
        "policy_sets": [preset("prctl-all")],
        "grid": KnobGrid.from_mapping({"pages_to_scan": [100_000]}),
        "replay_options": ReplayOptions(),
    }
    with distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=True,
        memory_limit="4GiB",
        dashboard_address=":0",
    ) as cluster:
        with (
            dask_executor(cluster.scheduler_address) as ex,
            distributed.Client(cluster, set_as_default=False) as client,
        ):
            base = max(client.run(_rss_peak_bytes).values())
            res, wall_s = _timed(run_fleet, root, executor=ex, **run)
            peak = max(client.run(_rss_peak_bytes).values())
        benchmark.pedantic(lambda: None, rounds=1)
    host = res.scenarios[0].hosts[0]
    figures = {
        "tracked pages (first snapshot)": pages,
        "anonymous MiB": host.anon_bytes / (1 << 20),
        "net saving %": 100 * host.net_saved_fraction,
        "wall s (read, prepare, replay)": wall_s,
        "worker peak RSS before MB": base / 1e6,
        "worker peak RSS MB": peak / 1e6,
        "worker peak RSS bytes per page": peak / pages,
        "worker limit MB": 4 * GIB / 1e6,
        "client peak RSS MB": _rss_peak_bytes() / 1e6,
    }
    benchmark.extra_info.update(figures)
    _report(capsys, f"a {pages:,}-page host on a 4 GiB Dask worker", figures)
    assert peak < 4 * GIB, f"the worker peaked at {peak / GIB:.2f} GiB"
