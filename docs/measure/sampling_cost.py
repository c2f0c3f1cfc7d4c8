"""What ``capture --sample-ms`` costs: the capture's CPU and the traced workers' slow-down.

Used for docs/capture.md §9.4. Starts ``--workers`` Python processes (fork of one parent)
that each hold ``--mib`` MiB of private pages and keep rewriting a few of them (a "hot set":
``--hot`` pages get new content on every loop, the rest stay as they are), counting loops.
The run has three phases of ``--seconds`` each: the workers alone, the workers under a
capture of ``--snapshots`` snapshots sampled every ``--sample-ms``, and the workers alone
again. It prints JSON: loops per second of all workers in each phase, the slow-down of the
sampled phase against the mean of the two others, and the capture's own figures (CPU
seconds, sampling CPU share, passes, coverage per interval).

Run from the repository root, as root:
``sudo .venv/bin/python docs/measure/sampling_cost.py --workers 8 --mib 40 --sample-ms 100``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

WORKER = """
import os, random, signal, struct, sys, time
PS = 4096
buf = bytearray(MIB << 20)
n = len(buf) // PS
for i in range(n):                      # every page touched, distinct content
    buf[i * PS:i * PS + 8] = struct.pack("<Q", i * 7919 + os.getpid())
hot = random.Random(os.getpid()).sample(range(n), min(HOT, n))
loops = 0
def report(*_):
    os.write(OUT, struct.pack("<Qd", loops, time.monotonic()))
signal.signal(signal.SIGUSR1, report)
os.write(OUT, b"r")
k = 0
while True:
    k += 1
    for i in hot:
        buf[i * PS:i * PS + 8] = struct.pack("<Q", k)
    x = 0
    for j in range(2000):               # some work besides the writes
        x += j * j
    loops += 1
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--mib", type=int, default=40)
    ap.add_argument("--hot", type=int, default=200, help="pages each worker rewrites per loop")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--snapshots", type=int, default=3)
    ap.add_argument("--sample-ms", type=float, default=100.0)
    ap.add_argument("--cpu-budget", type=float, default=0.25)
    args = ap.parse_args()

    from planner.capture.session import CaptureOptions, capture

    r, w = os.pipe()
    code = WORKER.replace("MIB", str(args.mib)).replace("HOT", str(args.hot))
    code = code.replace("OUT", str(w))
    pids = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                exec(compile(code, "worker", "exec"), {})
            finally:
                os._exit(0)
        pids.append(pid)
    for _ in pids:
        assert os.read(r, 1) == b"r"

    def loops() -> tuple[int, float]:
        for pid in pids:
            os.kill(pid, signal.SIGUSR1)
        total, t = 0, 0.0
        for _ in pids:
            data = b""
            while len(data) < 16:
                data += os.read(r, 16 - len(data))
            n, t1 = __import__("struct").unpack("<Qd", data)
            total, t = total + n, max(t, t1)
        return total, t

    out: dict[str, object] = {"workers": args.workers, "mib_each": args.mib, "hot": args.hot}
    try:
        time.sleep(1.0)
        phases = {}
        for phase in ("before", "sampled", "after"):
            n0, t0 = loops()
            if phase == "sampled":
                with tempfile.TemporaryDirectory() as tmp:
                    interval = args.seconds / args.snapshots
                    res = capture(
                        CaptureOptions(
                            out=Path(tmp) / "t",
                            pids=tuple(pids),
                            snapshots=args.snapshots,
                            interval_s=interval,
                            sample_ms=args.sample_ms,
                            cpu_budget=args.cpu_budget or None,
                            key_file=Path(tmp) / "k.key",
                        )
                    )
                    from planner.trace.io import open_trace

                    snaps = open_trace(res.out).load_host().snapshots.to_pylist()
                out["capture"] = {
                    "pages": res.pages,
                    "cpu_s": res.cpu_s,
                    "wall_s": res.wall_s,
                    "snapshot_durations_s": list(res.snapshot_durations_s),
                    "sampling_passes": res.sampling_passes,
                    "sampling_cpu_s": res.sampling_cpu_s,
                    "sampling_wall_s": res.sampling_wall_s,
                    "sampling_cpu_share_of_one_cpu": res.sampling_cpu_s / res.sampling_wall_s,
                    "soft_dirty": res.soft_dirty,
                    "coverage": [s["sample_coverage"] for s in snaps],
                    "checks_per_page": [s["sample_checks_per_page"] for s in snaps],
                    "passes": [s["samples"] for s in snaps],
                }
            else:
                time.sleep(args.seconds)
            n1, t1 = loops()
            phases[phase] = (n1 - n0) / (t1 - t0)
        out["loops_per_s"] = phases
        base = (phases["before"] + phases["after"]) / 2
        out["slowdown"] = 1 - phases["sampled"] / base
        out["load_average"] = os.getloadavg()
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        for pid in pids:
            os.waitpid(pid, 0)
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
