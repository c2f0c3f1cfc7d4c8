"""Measure ksmd's batch period against ``sleep_millisecs`` on this host (root, real KSM).

Used for docs/kernel-semantics.md §4.4. One holder process owns ``PAGES`` unique private
anonymous pages (``MADV_MERGEABLE``); ksmd runs with ``pages_to_scan`` = 10 and smart scan off,
so every batch is ten cheap page visits. The script polls ``pages_scanned`` and ``full_scans``
every 0.2 ms; each change of the pair is one batch, and the period is the median time between
two batches. It prints, per ``sleep_millisecs``, the jiffies requested, the model's sleep
(:func:`planner.engine.timing.sleep_ns`) and the measured period.

Run from the repository root: ``sudo .venv/bin/python docs/measure/batch_period.py``. It takes
the project's KSM lease (every knob restored on exit) and leaves no process behind.
"""

from __future__ import annotations

import itertools
import json
import statistics
import sys
import time

from planner.engine.timing import msecs_to_jiffies, sleep_ns
from planner.kernel.holder import Holder
from planner.kernel.sysfs import KsmLease
from planner.provenance import kernel_hz

PAGES = 2005  # not a multiple of pages_to_scan: the last batch of a scan also visits pages
PAGES_TO_SCAN = 10
SHORT_MS: tuple[int, ...] = (1, 4, 5, 10, 20, 50, 100)
WHEEL_MS: tuple[int, ...] = (248, 252, 256, 300, 500, 1000)
if len(sys.argv) > 1:  # measure only the given sleep_millisecs values
    SHORT_MS, WHEEL_MS = tuple(int(a) for a in sys.argv[1:]), ()
POLL_S = 0.0002
#: Changes closer than this belong to one batch (pages_scanned grows page by page in a batch).
SAME_BATCH_S = 0.001


def _read(path: str) -> int:
    with open(path) as f:
        return int(f.read())


def batch_times(n: int) -> list[float]:
    """Times (monotonic seconds) of the next ``n`` batches."""
    root = "/sys/kernel/mm/ksm/"
    last = (_read(root + "pages_scanned"), _read(root + "full_scans"))
    out: list[float] = []
    while len(out) < n:
        time.sleep(POLL_S)
        now = (_read(root + "pages_scanned"), _read(root + "full_scans"))
        if now != last:
            t = time.monotonic()
            if not out or t - out[-1] > SAME_BATCH_S:
                out.append(t)
            last = now
    return out


def main() -> int:
    hz = kernel_hz() or 250
    rows = []
    holder = Holder.spawn()
    try:
        holder.map_region(PAGES)
        holder.write(list(range(PAGES)), [0x1000 + i for i in range(PAGES)])
        knobs: dict[str, int | str] = {
            "pages_to_scan": PAGES_TO_SCAN,
            "sleep_millisecs": 20,
            "smart_scan": 0,
        }
        with KsmLease(knobs) as lease:
            holder.register()
            lease.start()
            for ms in SHORT_MS + WHEEL_MS:
                lease.write("sleep_millisecs", ms)
                n = 40 if ms <= 100 else 9
                times = batch_times(2)  # the first period after the write is partial
                times = batch_times(n + 1)
                gaps_ms = [(b - a) * 1000 for a, b in itertools.pairwise(times)]
                row = {
                    "sleep_millisecs": ms,
                    "jiffies_requested": msecs_to_jiffies(ms, hz),
                    "model_sleep_ms": sleep_ns(ms, hz) / 1e6,
                    "median_period_ms": round(statistics.median(gaps_ms), 2),
                    "p10_p90_ms": [round(q, 2) for q in statistics.quantiles(gaps_ms, n=10)[::8]],
                    "batches": len(gaps_ms),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
            lease.stop()
    finally:
        holder.kill()
    print(json.dumps({"hz": hz, "pages": PAGES, "pages_to_scan": PAGES_TO_SCAN, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
