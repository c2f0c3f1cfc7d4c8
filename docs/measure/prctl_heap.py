"""How much of a bare Python interpreter ksmd sees once it runs under prctl(PR_SET_MEMORY_MERGE).

Used for docs/kernel-semantics.md §13. Under the project's KSM lease (knobs restored on exit),
a fresh interpreter calls ``prctl(PR_SET_MEMORY_MERGE, 1)`` and then only waits; ksmd scans
everything in one batch per wake-up (``pages_to_scan`` 10^6, ``sleep_millisecs`` 100, smart
scan off) and the script prints the interpreter's ``/proc/<pid>/ksm_stat`` and ``RssAnon``
after 3 full scans: every present anonymous page of the interpreter has an rmap_item, and
some of them merge with each other.

Run from the repository root: ``sudo .venv/bin/python docs/measure/prctl_heap.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from planner.kernel.sysfs import KsmLease, parse_ksm_stat

CHILD = textwrap.dedent(
    """
    import ctypes, sys
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(67, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_MEMORY_MERGE, 1)")
    print("ready", flush=True)
    sys.stdin.read()
    """
)
SCANS = 3


def main() -> int:
    knobs: dict[str, int | str] = {
        "pages_to_scan": 1_000_000,
        "sleep_millisecs": 100,
        "smart_scan": 0,
    }
    with KsmLease(knobs) as lease:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
            lease.start()
            while lease.sysfs.read_int("full_scans") < SCANS:
                time.sleep(0.01)
            lease.stop()
            stat = parse_ksm_stat(Path(f"/proc/{child.pid}/ksm_stat").read_text())
            rss_anon_kb = next(
                int(line.split()[1])
                for line in Path(f"/proc/{child.pid}/status").read_text().splitlines()
                if line.startswith("RssAnon:")
            )
        finally:
            child.kill()
            child.wait()
            for f in (child.stdin, child.stdout):
                if f is not None:
                    f.close()
    print(json.dumps({"scans": SCANS, "rss_anon_pages": rss_anon_kb // 4, **stat}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
