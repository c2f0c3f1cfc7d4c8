r"""Record what the real KSM does with a Django sample workload: the canary of its example.

The example reviews of ``traces/django-preload`` and ``traces/django-nopreload`` compare the
policies with prctl for every process at ``pages_to_scan=1000, sleep_millisecs=20`` (smart
scan on) among them. This script runs that on this host and records the kernel's counters
with ``ksm-planner observe``, so that each review's validation section compares the
prediction with a real run. Run as root from the repository root (``pip install -e
'.[sample]'`` for Django and gunicorn)::

    .venv/bin/python reports/canary/record.py --setup preload \
        --out reports/canary/django-preload --force
    .venv/bin/python reports/canary/record.py --setup nopreload \
        --out reports/canary/django-nopreload --force

``--pages-to-scan`` and ``--sleep-ms`` record the same workload at other knobs (the canaries of
docs/live-validation.md's cross-knob sections; never into ``reports/canary/``).

Timeline (the same workload as ``traces/django/regenerate.py``, setup ``b`` with ``--setup
preload``, ``a`` with ``--setup nopreload``):

1. a fresh SQLite database (``seed_sample --seed 42``) in a private temporary directory;
2. the KSM lease is taken (``planner.kernel.sysfs.KsmLease``: the project's lock, refused
   when another process uses KSM; every knob saved, KSM unmerged and stopped, the knobs of
   the scenario applied, the kernel's defaults for the others);
3. ``ksm-planner launch -- python -m gunicorn [--preload] --workers 8 ...``: prctl on the
   master before exec, inherited by the 8 workers it forks;
4. warm-up: 3,000 requests from 4 closed-loop threads, then open-loop traffic at 30 req/s;
5. ``ksm-planner observe --all --ksm-pages --interval 1 --duration DURATION`` starts and, half
   a second after it, ``run=1``: time zero of the recording is (within half a second) the moment KSM
   starts, as time zero of the replay is;
6. when the recording ends: traffic stopped, gunicorn stopped (no process left), and leaving
   the lease unmerges everything and restores every knob.

The recording holds ``/sys/kernel/mm/ksm`` counters, ``/proc/<pid>/ksm_stat`` of the workers and
(canary mode, ``--ksm-pages``) which of their pages are KSM pages at every sample and every merge
lost, with whether the content changed (compared under a key thrown away after the run): never
memory contents, never a hash.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "traces" / "django"))

import loadgen  # noqa: E402  (the load driver of the sample workload)
import regenerate  # noqa: E402  (its database and gunicorn helpers)

KNOBS = {"pages_to_scan": 1000, "sleep_millisecs": 20, "smart_scan": 1}


class LaunchedGunicorn(regenerate.Gunicorn):
    """``regenerate.Gunicorn``, started under ``ksm-planner launch`` (prctl on)."""

    def __init__(self, *, db: Path, workers: int, preload: bool, log_path: Path) -> None:
        self.port = regenerate.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        gunicorn = [
            sys.executable, "-m", "gunicorn",
            "--config", str(regenerate.GUNICORN_CONF),
            "--chdir", str(regenerate.SITE_DIR),
            "--bind", f"127.0.0.1:{self.port}",
            "--workers", str(workers),
        ] + (["--preload"] if preload else [])  # fmt: skip
        self.cmd = [sys.executable, "-m", "planner", "launch", "--", *gunicorn]
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            self.cmd,
            env=regenerate._site_env(db),
            cwd=regenerate.SITE_DIR,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.proc.pid  # ksm-planner launch (it forwards SIGTERM to gunicorn)
        self.seen: dict[int, int] = {}

    def master(self) -> int | None:
        """The gunicorn master: the child of ``ksm-planner launch``."""
        kids = regenerate.children_of(self.pid)
        return min(kids) if kids else None

    def worker_pids(self) -> dict[int, int]:
        """Current workers {pid: start time} (children of the master)."""
        master = self.master()
        kids = regenerate.children_of(master) if master is not None else {}
        self.seen.update(kids)
        return kids


def main(argv: list[str] | None = None) -> int:
    """Run the canary and write the recording to ``--out``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--setup",
        choices=("preload", "nopreload"),
        default="preload",
        help="gunicorn with --preload (setup b) or without it (setup a)",
    )
    p.add_argument("--duration", type=float, default=70.0)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3000)
    p.add_argument("--rate", type=float, default=30.0)
    p.add_argument("--pages-to-scan", type=int, default=KNOBS["pages_to_scan"])
    p.add_argument("--sleep-ms", type=int, default=KNOBS["sleep_millisecs"])
    p.add_argument("--force", action="store_true")
    args = p.parse_args(argv)
    knobs = {**KNOBS, "pages_to_scan": args.pages_to_scan, "sleep_millisecs": args.sleep_ms}

    from planner.kernel.sysfs import KsmLease

    with tempfile.TemporaryDirectory(prefix="ksm-canary-") as tmp:
        work = Path(tmp)
        db = work / "site.sqlite3"
        regenerate.seed_database(db, seed=42)
        with KsmLease(knobs) as lease:
            server = LaunchedGunicorn(
                db=db,
                workers=args.workers,
                preload=args.setup == "preload",
                log_path=work / "gunicorn.log",
            )
            try:
                workers = server.wait_ready()
                regenerate.log(f"gunicorn {server.master()} (prctl), workers {sorted(workers)}")
                driver = loadgen.Driver(server.url)
                catalog = loadgen.Catalog.fetch(driver.base_url)
                warm = loadgen.warm_up(
                    driver, loadgen.plan_requests(catalog, args.warmup, seed=42), threads=4
                )
                regenerate.log(f"warm-up: {json.dumps(warm.summary())}")
                plan = loadgen.plan_requests(
                    catalog, int(args.rate * (args.duration + 60)), seed=43
                )
                loop = loadgen.OpenLoop(driver, plan, rate_per_s=args.rate).start()
                try:
                    cmd = [
                        sys.executable, "-m", "planner", "observe", "--out", str(args.out),
                        "--all", "--ksm-pages", "--interval", "1",
                        "--duration", str(args.duration),
                    ] + (["--force"] if args.force else [])  # fmt: skip
                    observer = subprocess.Popen(cmd, cwd=ROOT)
                    time.sleep(0.5)
                    lease.start()
                    regenerate.log("run=1")
                    rc = observer.wait(timeout=args.duration + 120)
                finally:
                    regenerate.log(f"open loop: {json.dumps(loop.stop().summary())}")
                if rc != 0:
                    regenerate.log(f"ksm-planner observe exited with {rc}")
                    return rc
                regenerate.log(f"knobs during the run: {json.dumps(lease.applied)}")
            finally:
                server.stop()
    return 0


if __name__ == "__main__":
    from planner.cli._app import exit_code_of
    from planner.errors import PlannerError

    try:
        sys.exit(main())
    except PlannerError as err:  # e.g. the KSM lock held by another run: one line, its code
        print(f"record.py: error: {err.one_line()}", file=sys.stderr)
        sys.exit(exit_code_of(err))
