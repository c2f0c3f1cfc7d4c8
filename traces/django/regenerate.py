"""Regenerate the Django sample traces (``traces/django-nopreload``, ``traces/django-preload``).

One command, run as root from the repository root after ``pip install -e '.[sample]'``::

    .venv/bin/python traces/django/regenerate.py [--setup a|b|all] [--out-root traces] [--force]

For each setup it:

1. builds a fresh SQLite database in a private temporary directory (``manage.py migrate``,
   then ``manage.py seed_sample --seed 42``: the same rows every time);
2. starts gunicorn on ``127.0.0.1:<free port>`` with 8 sync workers, without (setup ``a``,
   ``nopreload``) or with ``--preload`` (setup ``b``, ``preload``), and waits until all
   workers exist and ``/api/stats/`` answers;
3. warms the site up with 3,000 requests from 4 closed-loop threads (``loadgen.py``);
4. drives open-loop traffic at 30 req/s and, 5 s in, runs ``ksm-planner capture --pid
   <master> --children --snapshots 5 --interval 10`` into ``<out-root>/django-<setup>``;
5. stops the traffic, then gunicorn (SIGTERM to the master, SIGKILL to its process group
   after 40 s), checks that no process it started is left, and deletes the database.

A summary (pids, load figures, capture time) is printed as JSON on stdout. The hash key
lives outside the repository (``--key-file``, default ``~/.config/ksm-planner/sample.key``,
created by the capture command if missing); only its id goes into the trace.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402  (the load driver next to this file)

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

SITE_DIR = HERE / "site"
GUNICORN_CONF = HERE / "gunicorn.conf.py"
DEFAULT_KEY_FILE = Path("~/.config/ksm-planner/sample.key")
STOP_GRACE_S = 40.0
CAPTURE_SLACK_S = 600.0


@dataclass(frozen=True)
class Setup:
    """One sample setup: how gunicorn is started and where its trace goes."""

    name: str
    alias: str
    preload: bool
    what: str


SETUPS = (
    Setup(
        "nopreload", "a", preload=False, what="1 master, 8 sync workers, each imports Django itself"
    ),
    Setup(
        "preload",
        "b",
        preload=True,
        what="1 master imports the app (--preload), then forks 8 workers",
    ),
)


class RegenerateError(RuntimeError):
    """A step failed; the message says which."""


class _Terminated(BaseException):
    """SIGTERM/SIGHUP to this script: unwind through every ``finally`` (stop what we started)."""


def _on_signal(signum: int, _frame: object) -> None:
    raise _Terminated(signal.Signals(signum).name)


def log(msg: str) -> None:
    """Progress on stderr."""
    sys.stderr.write(f"[regenerate {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the comm (index 0 is the state), or None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat`` (start time in ticks): with the pid, a process identity."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def children_of(pid: int) -> dict[int, int]:
    """Live children of ``pid``: {child pid: its start time}."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields and int(fields[1]) == pid and fields[0] != "Z":
            found[int(entry.name)] = int(fields[19])
    return found


def run_manage(args: Sequence[str], *, db: Path) -> None:
    """Run ``manage.py <args>`` on the database ``db``."""
    env = _site_env(db)
    cmd = [sys.executable, str(SITE_DIR / "manage.py"), *args]
    proc = subprocess.run(cmd, env=env, cwd=SITE_DIR, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RegenerateError(f"manage.py {' '.join(args)} failed:\n{proc.stderr.strip()}")
    if proc.stdout.strip():
        log(proc.stdout.strip().splitlines()[-1])


def _site_env(db: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["KSM_SAMPLE_DB"] = str(db)
    env["DJANGO_SETTINGS_MODULE"] = "ksmsite.settings"
    # Default interpreter behaviour (random str hashes, ASLR on), as in docs/capture.md §3.2.
    env.pop("PYTHONHASHSEED", None)
    return env


def seed_database(db: Path, *, seed: int) -> None:
    """Create and fill the sample database at ``db``."""
    run_manage(["migrate", "--noinput", "-v", "0"], db=db)
    run_manage(["seed_sample", "--seed", str(seed)], db=db)


class Gunicorn:
    """A gunicorn master we started (in its own session) and its workers; always stopped."""

    def __init__(self, *, db: Path, workers: int, preload: bool, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        cmd = [
            sys.executable,
            "-m",
            "gunicorn",
            "--config",
            str(GUNICORN_CONF),
            "--chdir",
            str(SITE_DIR),
            "--bind",
            f"127.0.0.1:{self.port}",
            "--workers",
            str(workers),
        ]
        if preload:
            cmd.append("--preload")
        self.cmd = cmd
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            cmd,
            env=_site_env(db),
            cwd=SITE_DIR,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the SIGKILL fallback hits only it
        )
        self.pid = self.proc.pid
        self.seen: dict[int, int] = {}  # every worker ever seen: pid -> start time

    def log_tail(self, lines: int = 15) -> str:
        """The end of gunicorn's log (for error messages)."""
        self._log.flush()
        try:
            text = Path(self._log.name).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def alive(self) -> bool:
        """True while the master runs."""
        return self.proc.poll() is None

    def worker_pids(self) -> dict[int, int]:
        """Current workers {pid: start time} (also remembered for the final check)."""
        kids = children_of(self.pid)
        self.seen.update(kids)
        return kids

    def wait_ready(self, *, timeout_s: float = 90.0) -> dict[int, int]:
        """Wait for all workers and a 200 from ``/api/stats/``; return the workers."""
        loadgen.wait_ready(self.url, timeout_s=timeout_s, alive=self.alive)
        deadline = time.monotonic() + timeout_s
        while len(kids := self.worker_pids()) < self.workers:
            if not self.alive():
                raise RegenerateError(f"gunicorn exited while starting:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RegenerateError(f"only {len(kids)} of {self.workers} workers started")
            time.sleep(0.25)
        return kids

    def stop(self) -> None:
        """SIGTERM to the master, wait; SIGKILL to its process group as a fallback."""
        self.worker_pids()
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                log(f"gunicorn {self.pid} ignored SIGTERM for {STOP_GRACE_S:.0f} s; SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        # Workers exit with their master; make sure, by pid and start time, that none is left.
        deadline = time.monotonic() + 10
        while left := [p for p, t0 in self.seen.items() if start_time(p) == t0]:
            if time.monotonic() > deadline:
                for p in left:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p, signal.SIGKILL)
                log(f"killed leftover workers {left}")
                break
            time.sleep(0.2)
        self._log.close()


@contextlib.contextmanager
def gunicorn(**kwargs: Any) -> Iterator[Gunicorn]:
    """Start gunicorn; stop it (and check its workers are gone) however the block ends."""
    server = Gunicorn(**kwargs)
    try:
        yield server
    finally:
        server.stop()


def capture_command(args: argparse.Namespace, setup: Setup, master: int, out: Path) -> list[str]:
    """The ``ksm-planner capture`` command line for one setup."""
    cmd = [
        sys.executable,
        "-m",
        "planner",
        "capture",
        "--pid",
        str(master),
        "--children",
        "--snapshots",
        str(args.snapshots),
        "--interval",
        f"{args.interval:g}",
        "--out",
        str(out),
        "--key-file",
        str(args.key_file.expanduser()),
        "--label",
        f"setup={setup.name}",
        "--label",
        "workload=django-gunicorn",
    ]
    if args.sample_ms > 0:
        cmd += ["--sample-ms", f"{args.sample_ms:g}"]
    if args.force:
        cmd.append("--force")
    return cmd + list(args.capture_arg)


def run_capture(cmd: Sequence[str], *, timeout_s: float) -> float:
    """Run the capture command; return its wall time. It is stopped if this script unwinds."""
    log("$ ksm-planner " + " ".join(cmd[3:]))
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    try:
        rc = proc.wait(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if rc != 0:
        raise RegenerateError(f"ksm-planner capture exited with {rc}")
    return time.monotonic() - t0


def run_setup(
    args: argparse.Namespace, setup: Setup, *, seed_db: Path, work: Path
) -> dict[str, Any]:
    """Boot one setup, load it, capture it, stop it. Returns the summary of the run."""
    out = args.out_root / f"django-{setup.name}"
    db = work / f"{setup.name}.sqlite3"
    shutil.copyfile(seed_db, db)
    summary: dict[str, Any] = {"setup": setup.name, "alias": setup.alias, "what": setup.what}
    log(f"setup {setup.alias} ({setup.name}): {setup.what}")
    with gunicorn(
        db=db, workers=args.workers, preload=setup.preload, log_path=work / f"{setup.name}.log"
    ) as server:
        workers = server.wait_ready()
        summary |= {
            "gunicorn": server.cmd[2:],
            "master_pid": server.pid,
            "worker_pids": sorted(workers),
        }
        log(f"gunicorn master {server.pid}, workers {sorted(workers)} on {server.url}")
        driver = loadgen.Driver(server.url)
        catalog = loadgen.Catalog.fetch(driver.base_url)
        plan = loadgen.plan_requests(catalog, args.warmup, seed=args.seed)
        log(f"warm-up: {args.warmup} requests, {args.warmup_threads} threads")
        summary["warmup"] = loadgen.warm_up(driver, plan, threads=args.warmup_threads).summary()
        log(f"warm-up: {json.dumps(summary['warmup'])}")

        budget_s = args.capture_delay + args.snapshots * args.interval + CAPTURE_SLACK_S
        plan = loadgen.plan_requests(catalog, int(args.rate * budget_s), seed=args.seed + 1)
        loop = loadgen.OpenLoop(driver, plan, rate_per_s=args.rate).start()
        try:
            log(f"open loop at {args.rate:g} req/s; capture starts in {args.capture_delay:g} s")
            time.sleep(args.capture_delay)
            if not server.alive():
                raise RegenerateError(f"gunicorn exited during the load:\n{server.log_tail()}")
            cmd = capture_command(args, setup, server.pid, out)
            summary["capture_s"] = round(run_capture(cmd, timeout_s=budget_s), 1)
            summary["capture"] = ["ksm-planner", *cmd[3:]]
        finally:
            summary["open_loop"] = loop.stop().summary()
        log(f"open loop: {json.dumps(summary['open_loop'])}")
        after = server.worker_pids()
        if after != workers:
            log(f"warning: the worker set changed: {sorted(workers)} -> {sorted(after)}")
        summary["workers_stable"] = after == workers
    summary["out"] = str(out)
    return summary


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Regenerate the Django sample traces (see traces/README.md).",
    )
    choices = ["all"] + [s.alias for s in SETUPS] + [s.name for s in SETUPS]
    ap.add_argument("--setup", default="all", choices=choices, help="which setup to capture")
    ap.add_argument("--out-root", type=Path, default=Path("traces"), help="directory of the traces")
    ap.add_argument("--force", action="store_true", help="replace existing trace directories")
    ap.add_argument(
        "--key-file", type=Path, default=DEFAULT_KEY_FILE, help="hash key (kept out of git)"
    )
    ap.add_argument("--workers", type=int, default=8, help="gunicorn sync workers")
    ap.add_argument("--snapshots", type=int, default=5)
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between snapshots")
    ap.add_argument(
        "--sample-ms",
        type=float,
        default=100.0,
        help="sample the pages' changes between snapshots every MS milliseconds (0: off)",
    )
    ap.add_argument("--warmup", type=int, default=3000, help="warm-up requests")
    ap.add_argument("--warmup-threads", type=int, default=4)
    ap.add_argument("--rate", type=float, default=30.0, help="open-loop requests per second")
    ap.add_argument(
        "--capture-delay", type=float, default=5.0, help="open-loop seconds before capture"
    )
    ap.add_argument("--seed", type=int, default=42, help="database and request-mix seed")
    ap.add_argument(
        "--capture-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for ksm-planner capture (repeatable)",
    )
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setups = [s for s in SETUPS if args.setup in ("all", s.alias, s.name)]
    if not args.out_root.is_dir():
        log(
            f"error: {args.out_root} is not a directory (run from the repo root or pass --out-root)"
        )
        return 2
    existing = [str(args.out_root / f"django-{s.name}") for s in setups]
    existing = [p for p in existing if Path(p).exists()]
    if existing and not args.force:
        log(f"error: {', '.join(existing)} already exist(s); pass --force to replace")
        return 2
    check = subprocess.run(
        [sys.executable, "-m", "planner", "capture", "--help"], capture_output=True, check=False
    )
    if check.returncode != 0:
        log("error: 'ksm-planner capture' is not available in this environment")
        return 3

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    work = Path(tempfile.mkdtemp(prefix="ksm-sample-"))  # mode 0700
    runs = []
    try:
        seed_db = work / "seed.sqlite3"
        seed_database(seed_db, seed=args.seed)
        for setup in setups:
            runs.append(run_setup(args, setup, seed_db=seed_db, work=work))
    except (RegenerateError, loadgen.LoadError) as exc:
        log(f"error: {exc}")
        return 1
    except (KeyboardInterrupt, _Terminated):
        log("interrupted; everything started was stopped")
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sys.stdout.write(json.dumps({"seed": args.seed, "runs": runs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
