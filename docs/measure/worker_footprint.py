"""A Django/gunicorn worker's whole memory footprint and CPU, measured on the live sample.

The capacity model (docs/capacity.md) charges each worker its anonymous memory (from the
trace) plus what the trace does not hold: its share of file-backed pages (interpreter,
shared libraries, ``.so`` and mapped files), shared memory, page tables and kernel stacks.
When a trace carries no such figures (schema v1), the model uses defaults; this script is
where those defaults come from. It starts the same workload as
``traces/django/regenerate.py`` (setup ``b``: gunicorn ``--preload``, 8 sync workers, 3,000
warm-up requests, then open-loop traffic at 30 req/s), lets it run, and reads, for the
master and every worker:

* ``/proc/PID/smaps_rollup``: ``Rss``, ``Pss``, ``Pss_Anon``, ``Pss_File``, ``Pss_Shmem``
  (what the kernel knows about the process's share of every page it maps);
* ``/proc/PID/status``: ``VmPTE`` (page tables), ``Threads`` (each has a 16 KiB kernel stack
  on x86_64), ``RssAnon``/``RssFile``/``RssShmem``;
* ``/proc/PID/smaps``: the file-backed pages each worker maps privately (``Private_Clean`` +
  ``Private_Dirty`` of file mappings, less their anonymous copy-on-write pages), to show how
  much of ``Pss_File`` is the worker's own and how much its share of pages every worker maps;
* ``/proc/PID/stat``: CPU time (utime + stime) over a window of steady traffic;
* the process's kernel objects, estimated: its kernel stack, ``task_struct``, ``mm_struct``,
  signal and file tables, one ``vm_area_struct`` and two ``anon_vma_chain`` per mapping
  (``/proc/PID/maps``) and one ``filp`` per open file (``/proc/PID/fd``), at the object
  sizes of ``/proc/slabinfo`` (the slab caches cannot be attributed to a process directly).

Run as root from the repository root, after ``pip install -e '.[sample]'``::

    .venv/bin/python docs/measure/worker_footprint.py [--workers 8] [--window 30]

It prints one JSON document on stdout. Nothing is left running (gunicorn is stopped by pid,
its workers checked gone), and the database lives in a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "traces" / "django"))

import loadgen  # noqa: E402  (the load driver of the sample workload)
import regenerate  # noqa: E402  (its database and gunicorn helpers)

KIB = 1024
THREAD_STACK_BYTES = 16 * KIB  # THREAD_SIZE on x86_64


def _kib_fields(path: Path, names: tuple[str, ...]) -> dict[str, int]:
    """``Name: N kB`` lines of a /proc file, in bytes."""
    out: dict[str, int] = {}
    for line in path.read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in names:
            parts = rest.split()
            out[key] = int(parts[0]) * (KIB if len(parts) > 1 and parts[1] == "kB" else 1)
    return out


def private_file_bytes(pid: int) -> int:
    """File-backed pages only this process maps (smaps: private pages of file mappings that
    are not anonymous copy-on-write copies)."""
    total = 0
    file_mapping = False
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and not head[0].endswith(":"):
            if file_mapping:
                total += max(
                    0,
                    fields.get("Private_Clean", 0)
                    + fields.get("Private_Dirty", 0)
                    - fields.get("Anonymous", 0),
                )
            file_mapping = len(head) >= 6 and head[5].startswith("/")
            fields = {}
        elif len(head) >= 2 and head[0].endswith(":") and head[1].isdigit():
            fields[head[0][:-1]] = int(head[1]) * KIB
    if file_mapping:
        total += max(
            0,
            fields.get("Private_Clean", 0)
            + fields.get("Private_Dirty", 0)
            - fields.get("Anonymous", 0),
        )
    return total


#: Slab caches of the per-process kernel objects, and how many of each a process holds
#: (``maps``: per mapping, ``fds``: per open file, a number: per process).
KERNEL_OBJECTS = (
    ("task_struct", 1),
    ("mm_struct", 1),
    ("signal_cache", 1),
    ("sighand_cache", 1),
    ("files_cache", 1),
    ("pid", 1),
    ("vm_area_struct", "maps"),
    ("anon_vma_chain", "maps"),
    ("anon_vma_chain", "maps"),
    ("anon_vma", "maps"),
    ("filp", "fds"),
)


def slab_sizes() -> dict[str, int]:
    """Object size of every slab cache (``/proc/slabinfo``, root only)."""
    out = {}
    for line in Path("/proc/slabinfo").read_text().splitlines()[2:]:
        parts = line.split()
        out[parts[0]] = int(parts[3])
    return out


def kernel_object_bytes(pid: int, sizes: dict[str, int]) -> int:
    """The estimated slab memory of a process's kernel objects (see the module docstring)."""
    counts = {
        "maps": len(Path(f"/proc/{pid}/maps").read_text().splitlines()),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }
    return sum(
        sizes.get(cache, 0) * (counts[n] if isinstance(n, str) else n)
        for cache, n in KERNEL_OBJECTS
    )


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks."""
    fields = regenerate._stat_fields(pid)
    return int(fields[11]) + int(fields[12]) if fields else 0


def footprint(pid: int, sizes: dict[str, int]) -> dict[str, int]:
    """Every per-process figure this script reports, in bytes."""
    roll = _kib_fields(
        Path(f"/proc/{pid}/smaps_rollup"), ("Rss", "Pss", "Pss_Anon", "Pss_File", "Pss_Shmem")
    )
    status = _kib_fields(
        Path(f"/proc/{pid}/status"), ("VmPTE", "Threads", "RssAnon", "RssFile", "RssShmem")
    )
    return {
        **roll,
        "VmPTE": status.get("VmPTE", 0),
        "RssAnon": status.get("RssAnon", 0),
        "RssFile": status.get("RssFile", 0),
        "RssShmem": status.get("RssShmem", 0),
        "threads": status.get("Threads", 0),
        "kernel_stack": status.get("Threads", 0) * THREAD_STACK_BYTES,
        "private_file": private_file_bytes(pid),
        "mappings": len(Path(f"/proc/{pid}/maps").read_text().splitlines()),
        "kernel_objects": kernel_object_bytes(pid, sizes),
    }


def _summary(rows: list[dict[str, int]]) -> dict[str, dict[str, float]]:
    keys = rows[0].keys() if rows else ()
    return {
        k: {
            "mean": statistics.fmean(r[k] for r in rows),
            "min": min(r[k] for r in rows),
            "max": max(r[k] for r in rows),
        }
        for k in keys
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3000)
    p.add_argument("--rate", type=float, default=30.0)
    p.add_argument("--window", type=float, default=30.0, help="seconds of traffic for the CPU")
    args = p.parse_args(argv)
    hz = os.sysconf("SC_CLK_TCK")
    with tempfile.TemporaryDirectory(prefix="ksm-footprint-") as tmp:
        work = Path(tmp)
        db = work / "site.sqlite3"
        regenerate.seed_database(db, seed=42)
        with regenerate.gunicorn(
            db=db, workers=args.workers, preload=True, log_path=work / "gunicorn.log"
        ) as server:
            workers = sorted(server.wait_ready())
            driver = loadgen.Driver(server.url)
            catalog = loadgen.Catalog.fetch(driver.base_url)
            loadgen.warm_up(driver, loadgen.plan_requests(catalog, args.warmup, seed=42), threads=4)
            plan = loadgen.plan_requests(catalog, int(args.rate * (args.window + 60)), seed=43)
            loop = loadgen.OpenLoop(driver, plan, rate_per_s=args.rate).start()
            try:
                time.sleep(5.0)
                t0 = time.monotonic()
                ticks0 = {w: cpu_ticks(w) for w in workers}
                time.sleep(args.window)
                ticks1 = {w: cpu_ticks(w) for w in workers}
                wall = time.monotonic() - t0
                sizes = slab_sizes()
                rows = [footprint(w, sizes) for w in workers]
                master = footprint(server.pid, sizes)
            finally:
                load = loop.stop().summary()
            if sorted(server.worker_pids()) != workers:
                regenerate.log("warning: the worker set changed during the measurement")
    cpu = [(ticks1[w] - ticks0[w]) / hz / wall for w in workers]
    doc: dict[str, Any] = {
        "workload": "django-gunicorn --preload, sample site of traces/django",
        "workers": len(workers),
        "window_s": round(wall, 1),
        "load": load,
        "master": master,
        "per_worker": _summary(rows),
        "workers_sum": {k: sum(r[k] for r in rows) for k in rows[0]},
        "cpu_cores_per_worker": {
            "mean": statistics.fmean(cpu),
            "min": min(cpu),
            "max": max(cpu),
            "at_rate_req_per_s": args.rate,
        },
        "kernel": os.uname().release,
    }
    json.dump(doc, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
