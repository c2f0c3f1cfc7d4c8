"""Fixtures of the live-validation tests.

``synthetic_run`` builds a complete run directory without a kernel: a synthetic trace, a
recording written by the real ``observe`` on a fake sysfs/procfs, and kernel samples taken
from the replay itself (a "kernel" that behaves exactly as the model predicts), optionally
scaled, so that :func:`compare_run` can be checked against known errors.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from planner.engine import KsmKnobs, ReplayOptions, prepare, replay
from planner.kernel.observe import observe
from planner.kernel.sysfs import COUNTERS, KERNEL_DEFAULTS, KsmSysfs
from planner.testing.builder import World
from planner.testing.live.protocol import RUN_FILE, LiveConfig, LiveRun
from planner.trace.io import open_trace

PIDS = (100, 101, 102)
CFG = LiveConfig(pages_to_scan=50, sleep_millisecs=20, observe_s=6.0)


def _fake_sysfs(root: Path) -> KsmSysfs:
    root.mkdir(parents=True)
    for name, val in {"run": 0, **KERNEL_DEFAULTS}.items():
        (root / name).write_text(
            ("[none] scan-time" if name == "advisor_mode" else str(val)) + "\n"
        )
        (root / name).chmod(0o644)
    for name in COUNTERS:
        (root / name).write_text("0\n")
        (root / name).chmod(0o444)
    return KsmSysfs(str(root))


def _fake_proc(root: Path, rmap: dict[int, int]) -> Path:
    for pid, items in rmap.items():
        d = root / str(pid)
        d.mkdir(parents=True)
        (d / "comm").write_text("worker\n")
        (d / "stat").write_text(f"{pid} (worker) S 1 1 1 0 -1 0 " + "0 " * 12 + "77 0\n")
        (d / "ksm_stat").write_text(
            f"ksm_rmap_items {items}\nksm_zero_pages 0\nksm_merging_pages 10\n"
            f"ksm_process_profit 0\nksm_merge_any: yes\nksm_mergeable: yes\n"
        )
    return root


def build_world() -> World:
    """Three processes: 120 pages each, 100 of them identical across processes."""
    w = World(hz=250)
    for pid in PIDS:
        w.spawn(pid, comm="worker")
        w.map(pid, 0x10000, list(range(1, 101)) + [1000 * pid + i for i in range(20)])
    w.snapshot(0.0)
    w.snapshot(2.0)
    return w


@pytest.fixture
def synthetic_run(tmp_path: Path) -> Callable[..., LiveRun]:
    """Make a run directory whose "kernel" is the model, scaled by ``sharing_scale`` etc."""

    def make(
        *,
        sharing_scale: float = 1.0,
        cpu_scale: float = 1.0,
        rmap_scale: float = 1.0,
        drop_scans: int = 0,
        scanned_scale: float = 1.0,
        slower: float = 1.0,
    ) -> LiveRun:
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        build_world().write_trace(run_dir / "trace")
        ht = open_trace(run_dir / "trace").load_host()
        res = replay(
            prepare(ht),
            knobs=KsmKnobs(pages_to_scan=CFG.pages_to_scan, sleep_ms=CFG.sleep_millisecs),
            options=ReplayOptions(duration_s=CFG.observe_s, grid_s=0.5),
        )
        samples: list[dict[str, Any]] = [
            {"t_s": 0.0, "kind": "start", "full_scans": 0, "pages_sharing": 0, "pages_shared": 0,
             "pages_unshared": 0, "pages_volatile": 0, "general_profit": 0,
             "ksmd_cpu_s": 10.0, "ksmd_runtime_ns": 10 * 10**9, "cow_ksm": 5,
             "pages_scanned": 1000, "pages_skipped": 70}
        ]  # fmt: skip
        cpu = 10.0
        # slower: each of the model's scans ends that many times later (those past the end
        # of the observation never do)
        for s in res.scans[drop_scans:]:
            if s.t_s * slower > res.duration_s:
                break
            cpu += s.cpu_s * cpu_scale
            c = s.counters
            samples.append(
                {"t_s": s.t_s * slower, "kind": "boundary", "full_scans": s.full_scans - drop_scans,
                 "pages_sharing": c["pages_sharing"] * sharing_scale,
                 "pages_shared": c["pages_shared"], "pages_unshared": c["pages_unshared"],
                 "pages_volatile": c["pages_volatile"], "general_profit": c["general_profit"],
                 "ksmd_cpu_s": cpu, "ksmd_runtime_ns": int(cpu * 1e9), "cow_ksm": 5,
                 "pages_scanned": 1000 + c["pages_scanned"] * scanned_scale,
                 "pages_skipped": 70 + c["pages_skipped"] * scanned_scale}
            )  # fmt: skip
        end = dict(samples[-1], kind="end", t_s=res.duration_s)
        end["ksmd_cpu_s"] = 10.0 + res.cost.cpu_s * cpu_scale
        samples.append(end)
        # the recording: observe on a fake sysfs/procfs, t0 right after its samples
        last = res.scans[-1].processes
        rmap = {int(p): round(v["ksm_rmap_items"] * rmap_scale) for p, v in last.items()}
        sysfs = _fake_sysfs(tmp_path / "sys")
        proc = _fake_proc(tmp_path / "proc", rmap)
        observe(
            run_dir / "observe",
            interval_s=0.01,
            duration_s=0.03,
            all_processes=True,
            sysfs=sysfs,
            proc_root=str(proc),
            stop=threading.Event(),
        )
        time.sleep(0.01)
        # the whole recording lies inside the steady window: put t0 well before it
        t0 = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=res.duration_s - 0.5)
        run = LiveRun(
            run_dir=str(run_dir),
            workload={"name": "postgres", "description": "synthetic", "expected": "", "params": {}},
            config=CFG.to_dict(),
            host={},
            tool_version="test",
            started_utc=t0.isoformat(),
            t0_utc=t0.isoformat(),
            knobs_applied=CFG.knobs(),
            ksmd_pid=None,
            phases_s={},
            capture={"pages": ht.pages.num_rows, "snapshots": 2},
            capture_to_t0_s=0.1,
            kernel_samples=samples,
            events=[],
            processes_at_t0={str(p): "worker" for p in PIDS},
            load={},
            host_load={},
            stopped={},
        )
        (run_dir / RUN_FILE).write_text(json.dumps(run.to_dict()))
        return run

    return make
