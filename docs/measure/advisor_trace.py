"""Check the scan-time advisor model against the kernel's ``ksm_advisor`` trace events (root).

Used for docs/kernel-semantics.md §8. One holder owns ``PAGES`` unique private anonymous
pages; ksmd runs at ``sleep_millisecs`` = 20 with ``advisor_mode`` = scan-time for ``SCANS``
full scans, and the ``ksm:ksm_advisor`` trace event records, at the end of each scan, the scan
time (s), the new ``pages_to_scan`` and the CPU percentage the kernel computed. For every
event, :func:`planner.engine.timing.advisor_step` is given the previous ``pages_to_scan`` and
the event's scan time and CPU percentage and must produce the event's ``pages_to_scan``.
The first step's CPU percentage is also compared with ksmd's whole runtime since boot
(``/proc/<ksmd>/schedstat``) divided by the scan time: the kernel's context starts at 0.

tracefs is mounted at ``/sys/kernel/tracing`` for the run if it is not mounted yet (and
unmounted afterwards); the event is switched off again at the end.

Run from the repository root: ``sudo .venv/bin/python docs/measure/advisor_trace.py``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tracing import tracefs

from planner.engine.timing import AdvisorState, advisor_step
from planner.kernel.calibrate import ksmd_pid, ksmd_runtime_ns
from planner.kernel.holder import Holder
from planner.kernel.sysfs import KsmLease, KsmSysfs

PAGES = 30000
SCANS = 6
EVENT = re.compile(r"ksm_advisor: ksm scan time (\d+) pages_to_scan (\d+) cpu percent (\d+)")


def main() -> int:
    sysfs = KsmSysfs()
    pid = ksmd_pid()
    holder = Holder.spawn()
    events: list[tuple[int, int, int]] = []
    try:
        holder.map_region(PAGES)
        holder.write(list(range(PAGES)), [0x9000_0000 + i for i in range(PAGES)])
        with (
            tracefs() as tr,
            KsmLease({"sleep_millisecs": 20, "advisor_mode": "scan-time"}) as lease,
        ):
            enable = tr / "events/ksm/ksm_advisor/enable"
            (tr / "trace").write_text("")
            enable.write_text("1")
            try:
                start_pages = sysfs.read_int("pages_to_scan")
                runtime0_ns = ksmd_runtime_ns(pid)
                holder.register()
                lease.start()
                runtime_after_first_ns = None
                while sysfs.read_int("full_scans") < SCANS:
                    time.sleep(0.01)
                    if runtime_after_first_ns is None and sysfs.read_int("full_scans") >= 1:
                        runtime_after_first_ns = ksmd_runtime_ns(pid)
                lease.stop()
            finally:
                enable.write_text("0")
            text = (tr / "trace").read_text()
            (tr / "trace").write_text("")
        events = [tuple(map(int, m.groups())) for m in EVENT.finditer(text)]  # type: ignore[misc]
    finally:
        holder.kill()

    if not events:
        print("no ksm_advisor event recognised; trace was:\n" + text[-2000:])
        return 1
    ctx = AdvisorState()
    pages = start_pages
    cpu_ns = 0
    rows = []
    for scan_time, kernel_pages, cpu_pct in events:
        cpu_ns = ctx.cpu_time_ns + cpu_pct * scan_time * 10 * 1_000_000 + 500_000
        ctx.start_scan_ns = 0
        model_pages, st, pct = advisor_step(
            ctx,
            pages_to_scan=pages,
            now_ns=scan_time * 1_000_000_000 + 1,
            ksmd_cpu_ns=cpu_ns,
            target_scan_time_s=200,
            max_cpu=70,
            max_pages=30000,
        )
        rows.append(
            {
                "pages_to_scan_before": pages,
                "scan_time_s": scan_time,
                "cpu_percent": cpu_pct,
                "kernel_pages_to_scan": kernel_pages,
                "model_pages_to_scan": model_pages,
                "match": model_pages == kernel_pages and (st, pct) == (scan_time, cpu_pct),
            }
        )
        pages = kernel_pages
    first = events[0] if events else None
    boot_pct = (
        (runtime_after_first_ns // 1_000_000) * 100 // (first[0] * 1000)
        if first is not None and runtime_after_first_ns is not None
        else None
    )
    out = {
        "pages": PAGES,
        "ksmd_runtime_before_s": round(runtime0_ns / 1e9, 3),
        "first_cpu_percent_from_total_runtime": boot_pct,
        "first_cpu_percent_event": first[2] if first else None,
        "steps": rows,
        "all_match": bool(rows) and all(r["match"] for r in rows),
        "uptime_s": float(Path("/proc/uptime").read_text().split()[0]),
        "pid": os.getpid(),
    }
    print(json.dumps(out, indent=1))
    return 0 if out["all_match"] else 1


if __name__ == "__main__":
    sys.exit(main())
