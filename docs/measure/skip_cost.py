"""What a smart-scan skip costs ksmd beside other work, against a scanned page (root).

Used for docs/busy-host.md §3. One holder owns ``PAGES`` unique private anonymous pages that
never change. For each load level (``N`` hogs beside ksmd: ``spin`` loops in Python,
``stream`` adds 1.0 to a 64 MiB array and evicts caches), at 1000 pages / 20 ms:

1. smart scan **off**: every visit is an unstable-tree insert (``cmp_and_merge_page``:
   stable-tree search, checksum of the page, unstable-tree walk). A window of ``WINDOW_S``
   gives ``u``, ksmd's CPU per scanned page (batch overhead included);
2. smart scan **on**, after ``SETTLE_S`` seconds (the pages age and most visits become
   skips: ``should_skip_rmap_item`` in mm/ksm.c, no page content read): a window gives the
   CPU, ``pages_scanned`` and ``pages_skipped``; the pages scanned cost ``u`` each as in 1,
   and what is left, over ``pages_skipped``, is the cost of a skip.

Also printed: ``procs_running`` (``/proc/stat``, every 20 ms) and the ratio of each cost to
the shipped profile's idle one (``unstable`` and ``skip``). The KSM lease restores every knob;
hogs and holder are killed at the end. Run from the repository root:
``sudo .venv/bin/python docs/measure/skip_cost.py [--window 6]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from planner._progress import NULL_PROGRESS
from planner.engine.cost import CostProfile
from planner.kernel.calibrate import _holder, _Reading, _Session, _unique, ksmd_pid
from planner.kernel.sysfs import KsmLease

PAGES = 20_000
SETTLE_S = 10.0
SPIN = "while True: pass"
STREAM = "import numpy as np\na = np.ones(1 << 23)\nwhile True: a += 1.0"
LEVELS = (("none", 0), ("spin", 2), ("stream", 2), ("spin", 4))


def procs_running() -> int:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("procs_running"):
                return int(line.split()[1])
    raise RuntimeError("no procs_running in /proc/stat")


def window(s: _Session, seconds: float) -> tuple[_Reading, _Reading]:
    a = s.read()
    time.sleep(seconds)
    return a, s.read()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--window", type=float, default=6.0, help="seconds per window")
    args = ap.parse_args()
    cpus = os.cpu_count() or 1
    prof = CostProfile.default()
    unstable_idle = prof.scan_insert_ns(PAGES)
    with (
        KsmLease({"pages_to_scan": 1000, "sleep_millisecs": 20, "smart_scan": 0}) as lease,
        lease.scan_stopper() as stopper,
    ):
        s = _Session(lease, stopper, ksmd_pid(), NULL_PROGRESS)
        with _holder(PAGES, _unique(np.random.default_rng(1), PAGES)):
            lease.start()
            time.sleep(3)  # first visits, then steady unstable inserts
            for kind, n in LEVELS:
                code = SPIN if kind == "spin" else STREAM
                hogs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]
                samples: list[int] = []
                stop = threading.Event()

                def sample(out: list[int] = samples, done: threading.Event = stop) -> None:
                    while not done.is_set():
                        out.append(procs_running())
                        time.sleep(0.02)

                th = threading.Thread(target=sample)
                try:
                    lease.write("smart_scan", 0)
                    time.sleep(1.5)
                    th.start()
                    off = window(s, args.window)
                    lease.write("smart_scan", 1)
                    time.sleep(SETTLE_S)
                    on = window(s, args.window)
                    stop.set()
                    th.join()
                finally:
                    stop.set()
                    for h in hogs:
                        h.kill()
                    for h in hogs:
                        h.wait()
                u = (off[1].cpu_ns - off[0].cpu_ns) / max(1, off[1].scanned - off[0].scanned)
                cpu_on = on[1].cpu_ns - on[0].cpu_ns
                scanned_on = on[1].scanned - on[0].scanned
                skipped_on = on[1].skipped - on[0].skipped
                skip = (cpu_on - u * scanned_on) / max(1, skipped_on)
                x = max(0.0, float(np.mean(samples)) - 1.0) / cpus
                r = {
                    "hogs": f"{kind} {n}",
                    "runnable_mean": round(float(np.mean(samples)), 2),
                    "other_per_cpu": round(x, 2),
                    "loadavg": Path("/proc/loadavg").read_text().split()[0],
                    "scanned_ns_per_page": round(u),
                    "scanned_vs_idle_profile": round(u / (unstable_idle + 150), 2),
                    "on_scanned": scanned_on,
                    "on_skipped": skipped_on,
                    "on_full_scans": on[1].full_scans - on[0].full_scans,
                    "skip_ns": round(skip),
                    "skip_vs_idle_profile": round(skip / prof.skip_ns, 2),
                    "skip_vs_scanned": round(skip / u, 3),
                }
                print(json.dumps(r), flush=True)
            lease.stop()


if __name__ == "__main__":
    main()
