"""ksmd's CPU share and cost per page beside CPU hogs (root). Used for docs/busy-host.md §2-3.

One holder owns ``PAGES`` unique private anonymous pages; smart scan is off, so after a
warm-up every visit is an unstable-tree insert (one code path, one cost). ksmd runs at
1000 pages / 20 ms while ``N`` hog processes run beside it: ``spin`` hogs loop in Python
(CPU only), ``stream`` hogs add 1.0 to a 64 MiB array (they also evict caches). For each
level a window of ``WINDOW_S`` seconds measures ksmd's CPU (``/proc/<ksmd>/schedstat``),
the pages it scanned and the mean of ``procs_running`` (``/proc/stat``, read every 20 ms),
and derives:

* the batch period (window / batches) and the CPU of one batch;
* ksmd's share of a CPU while it works, as the canary fit reads it
  (:meth:`planner.engine.costfit.KsmdWindow.share`: from the batch period, whose slept
  jiffies a batch's CPU hides in, or from ksmd's wait for a CPU where batches are short);
* the share CFS weights predict for ``x = (procs_running - 1) / CPUs`` other tasks per CPU
  (``335 / (335 + 1024 x)``) and the ``sched_contention`` that would make them agree.

The KSM lease restores every knob; hogs and holder are killed at the end. Run from the
repository root: ``sudo .venv/bin/python docs/measure/busy_share.py [--window 8]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np

from planner._progress import NULL_PROGRESS
from planner.engine.costfit import KsmdWindow, solve_contention
from planner.engine.timing import ksmd_cpu_share
from planner.kernel.calibrate import _holder, _Session, _unique, ksmd_pid
from planner.kernel.sysfs import KsmLease
from planner.provenance import kernel_hz

PAGES = 20_000
SPIN = "while True: pass"
STREAM = "import numpy as np\na = np.ones(1 << 23)\nwhile True: a += 1.0"
LEVELS = (("idle", 0), ("spin", 2), ("spin", 4), ("spin", 8), ("stream", 2), ("stream", 4))


def procs_running() -> int:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("procs_running"):
                return int(line.split()[1])
    raise RuntimeError("no procs_running in /proc/stat")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--window", type=float, default=8.0, help="seconds per load level")
    args = ap.parse_args()
    cpus = os.cpu_count() or 1
    hz = kernel_hz() or 250  # the tick the share reads (250 on this project's VMs)
    results = []
    with (
        KsmLease({"pages_to_scan": 1000, "sleep_millisecs": 20, "smart_scan": 0}) as lease,
        lease.scan_stopper() as stopper,
    ):
        s = _Session(lease, stopper, ksmd_pid(), NULL_PROGRESS)
        with _holder(PAGES, _unique(np.random.default_rng(1), PAGES)):
            lease.start()
            time.sleep(3)  # first visits, then steady unstable inserts
            lease.stop()
            for kind, n in LEVELS:
                code = SPIN if kind == "spin" else STREAM
                hogs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]
                samples: list[int] = []
                stop = threading.Event()

                def sample(out: list[int] = samples, done: threading.Event = stop) -> None:
                    while not done.is_set():
                        out.append(procs_running())
                        time.sleep(0.02)

                try:
                    time.sleep(1.0)
                    th = threading.Thread(target=sample)
                    th.start()
                    w = s.window(f"{kind}{n}", args.window, settle_s=0.5)
                    stop.set()
                    th.join()
                finally:
                    for h in hogs:
                        h.kill()
                    for h in hogs:
                        h.wait()
                batches = w.batches
                period_ms = w.wall_ns / batches / 1e6
                cpu_ms = w.cpu_ns / batches / 1e6
                # the share as the canary fit reads it (the batch period of
                # docs/kernel-semantics.md §4.4; the scheduler's account for short batches)
                window = KsmdWindow(
                    start_s=0.0, wall_s=w.wall_ns / 1e9, cpu_s=w.cpu_ns / 1e9,
                    pages_scanned=w.scanned, pages_skipped=0, full_scans=w.full_scans,
                    pages_to_scan=1000, sleep_ms=20, smart_scan=False, batch_count=batches,
                    wait_s=None if w.wait_ns is None else w.wait_ns / 1e9,
                )  # fmt: skip
                share = window.share(hz, 0)
                x = max(0.0, float(np.mean(samples)) - 1.0) / cpus
                r = {
                    "hogs": f"{kind} {n}",
                    "runnable_mean": round(float(np.mean(samples)), 2),
                    "other_per_cpu": round(x, 2),
                    "period_ms": round(period_ms, 1),
                    "cpu_per_batch_ms": round(cpu_ms, 2),
                    "ns_per_page": round(w.cpu_ns / w.scanned),
                    "share": round(share, 3),
                    "sched_share": None
                    if window.sched_share is None
                    else round(window.sched_share, 3),
                    "cfs_share": round(ksmd_cpu_share(x), 3),
                    "contention": round(solve_contention(share, x, 1.0), 2),
                }
                print(json.dumps(r), flush=True)
                results.append(r)


if __name__ == "__main__":
    main()
