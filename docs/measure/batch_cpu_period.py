"""Does a batch's CPU time add to ksmd's batch period, or hide inside the tick? (root, real KSM)

Used for docs/kernel-semantics.md §4.4. One holder process owns ``PAGES`` unique private
anonymous pages (``MADV_MERGEABLE``); smart scan is off, so after the first two scans every
visit is an unstable-tree insert and a batch's CPU grows with ``pages_to_scan``. For each
``pages_to_scan`` ksmd runs at ``sleep_millisecs`` 20 for a window of ``WINDOW_S`` seconds;
from ``pages_scanned``, ``full_scans`` and ksmd's ``schedstat`` (CPU and time waiting for a
CPU) the script prints the batch period, a batch's CPU, and two rules: the additive one
(slept jiffies + the cost profile's wake-up latency + the batch's CPU), which the engines
followed until 2026-12-04, and the tick rule they follow since
(:func:`planner.engine.timing.next_batch_ns`: the CPU of a batch hides inside the tick it
ends in).

Run from the repository root: ``sudo .venv/bin/python docs/measure/batch_cpu_period.py``
(about a minute on an idle host). It takes the project's KSM lease (every knob restored on
exit) and leaves no process behind.
"""

from __future__ import annotations

import json
import sys
import time

from planner.engine.cost import CostProfile
from planner.engine.timing import next_batch_ns, sleep_ns, tick_ns
from planner.kernel.calibrate import ksmd_pid, ksmd_schedstat_ns
from planner.kernel.holder import Holder
from planner.kernel.sysfs import KsmLease
from planner.provenance import kernel_hz

PAGES = 60_000
SLEEP_MS = 20
PAGES_TO_SCAN: tuple[int, ...] = (100, 250, 500, 1000, 1500, 2000, 3000, 4000)
WINDOW_S = 5.0
SETTLE_S = 1.0


def _read(name: str) -> int:
    with open("/sys/kernel/mm/ksm/" + name) as f:
        return int(f.read())


def main() -> int:
    hz = kernel_hz() or 250
    tick = tick_ns(hz)
    sleep = sleep_ns(SLEEP_MS, hz) + CostProfile.default().wake_latency_ns
    ksmd = ksmd_pid()
    rows = []
    holder = Holder.spawn()
    try:
        holder.map_region(PAGES)
        holder.write(list(range(PAGES)), [0x1000 + i for i in range(PAGES)])
        knobs: dict[str, int | str] = {
            "pages_to_scan": 4000,
            "sleep_millisecs": SLEEP_MS,
            "smart_scan": 0,
        }
        with KsmLease(knobs) as lease:
            holder.register()
            lease.start()
            while _read("full_scans") < 3:  # first visits, the checksum gate, then inserts
                time.sleep(0.1)
            for pts in PAGES_TO_SCAN:
                lease.write("pages_to_scan", pts)
                time.sleep(SETTLE_S)
                cpu0, wait0 = ksmd_schedstat_ns(ksmd)
                s0, f0, t0 = _read("pages_scanned"), _read("full_scans"), time.monotonic_ns()
                time.sleep(WINDOW_S)
                cpu1, wait1 = ksmd_schedstat_ns(ksmd)
                s1, f1, t1 = _read("pages_scanned"), _read("full_scans"), time.monotonic_ns()
                batches = (s1 - s0) / pts + (f1 - f0)
                period_ms = (t1 - t0) / batches / 1e6
                cpu_ms = (cpu1 - cpu0) / batches / 1e6
                wait_ms = (wait1 - wait0) / batches / 1e6
                rule_ms = next_batch_ns(0, round(cpu_ms * 1e6), sleep, tick) / 1e6
                row = {
                    "pages_to_scan": pts,
                    "batches": round(batches),
                    "period_ms": round(period_ms, 2),
                    "cpu_per_batch_ms": round(cpu_ms, 3),
                    "wait_per_batch_ms": round(wait_ms, 3),
                    "additive_rule_ms": round(sleep / 1e6 + cpu_ms + wait_ms, 2),
                    "tick_rule_ms": round(rule_ms + wait_ms, 2),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
            lease.stop()
    finally:
        holder.kill()
    print(json.dumps({"hz": hz, "pages": PAGES, "sleep_millisecs": SLEEP_MS, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
