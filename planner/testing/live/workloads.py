"""Live workloads with known behaviour, each started under KSM with its load outside it.

Every workload follows one life cycle, driven by :func:`planner.testing.live.protocol.run_live`:

1. :meth:`Workload.prepare` (before the KSM lease): build what the run needs in a private
   work directory -- a PostgreSQL cluster with pgbench tables, the compiled churn program, a
   seeded Django database.
2. :meth:`Workload.start` (inside the lease, ksmd off): start the server as one process tree
   through ``ksm-planner launch`` (``prctl(PR_SET_MEMORY_MERGE, 1)`` before exec, kept by
   exec and inherited by fork) and wait until it serves.
3. :meth:`Workload.start_load`: start the load generator OUTSIDE KSM (its own process tree,
   or threads of the harness, which never registers with KSM).
4. :meth:`Workload.capture_pids`: the roots to capture (with their descendants).
5. :meth:`Workload.events` / :meth:`Workload.fire`: actions at fixed times after ksmd starts
   (the churn heap grows and shrinks).
6. :meth:`Workload.stop`: stop the load, then the server, by pid, and check that nothing is
   left (SIGKILL to the process group as a last resort).

:data:`WORKLOADS` maps each name to its class; :func:`make_workload` builds one with
parameters. What each workload is expected to do under KSM is in its ``expected`` text and
in docs/live-validation.md.
"""

from __future__ import annotations

import abc
import importlib
import importlib.util
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final

from planner.errors import EnvironmentProblem, MissingExtraError, UsageProblem
from planner.testing.live.host import (
    ProcessTree,
    WorkloadError,
    free_port,
    harness_cpu_s,
    wait_for_file,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

PG_BIN_DIR: Final = Path("/usr/lib/postgresql/15/bin")
READY_TIMEOUT_S: Final = 180.0


def asset(name: str) -> Path:
    """Path of a file shipped in ``planner/testing/live/assets``."""
    return Path(str(resources.files("planner.testing.live").joinpath("assets", name)))


def repo_root() -> Path:
    """The source checkout this package was imported from (for ``traces/django``)."""
    return Path(__file__).resolve().parents[3]


def _node_load_argv(
    node: str, ports: Sequence[int], params: NodeParams | JvmParams, stats: Path
) -> list[str]:
    """``assets/node_load.js``'s command: its requests to ``ports`` on 127.0.0.1 in turn,
    at ``params``' rate (closed loop without one), its counts written to ``stats``."""
    urls = [a for p in ports for a in ("--url", f"http://127.0.0.1:{p}")]
    rate = ["--rate", f"{params.rate_per_s:g}"] if params.rate_per_s else []
    return [
        node, str(asset("node_load.js")), *urls,
        "--concurrency", str(params.concurrency),
        "--search-every", str(params.search_every), "--stats", str(stats), *rate,
    ]  # fmt: skip


def _node_load_summary(stats: Path | None) -> dict[str, Any]:
    """What ``assets/node_load.js`` wrote to its ``--stats`` file, with its rate; {} if none."""
    import json

    try:
        d = json.loads(stats.read_text()) if stats is not None else None
    except (OSError, ValueError):
        return {}
    if not isinstance(d, dict):
        return {}
    rate = d["requests"] / d["elapsed_s"] if d.get("elapsed_s") else None
    return {"tool": "node_load.js", **d, "requests_per_s": rate and round(rate, 1)}


def _which(prog: str, hint: str) -> str:
    found = shutil.which(prog)
    if found is None:
        raise EnvironmentProblem(f"{prog} is not installed (needed by this workload)", hint=hint)
    return found


# ----------------------------------------------------------------------------- base class


@dataclass(frozen=True)
class WorkloadParams:
    """Base of every workload's parameters (a frozen dataclass, JSON-ready)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


class Workload(abc.ABC):
    """One live workload: a server tree under KSM and its load outside it."""

    name: ClassVar[str]
    description: ClassVar[str]
    expected: ClassVar[str]
    """What the real ksmd is expected to do with it (documented behaviour)."""

    def __init__(self, params: WorkloadParams, work: Path, variant: str | None = None) -> None:
        self.params = params
        self.work = work
        self.variant = variant or self.name
        self.trees: list[ProcessTree] = []
        self.server: ProcessTree | None = None
        self.load: ProcessTree | None = None
        self.killed: dict[str, list[int]] = {}

    def describe(self) -> dict[str, Any]:
        """Name, description, expected behaviour and parameters."""
        return {
            "name": self.variant,
            "description": self.description,
            "expected": self.expected,
            "params": self.params.to_dict(),
        }

    def prepare(self) -> None:  # noqa: B027 (optional step)
        """Build what the run needs (before the KSM lease). Default: nothing."""

    @abc.abstractmethod
    def start(self) -> None:
        """Start the server under KSM (ksmd is off) and wait until it serves."""

    def start_load(self) -> None:  # noqa: B027 (optional step)
        """Start the load generator outside KSM. Default: no separate load."""

    @abc.abstractmethod
    def capture_pids(self) -> tuple[int, ...]:
        """Root processes to capture (their descendants are captured too)."""

    def events(self) -> list[tuple[float, str]]:
        """Actions at ``t`` seconds after ksmd starts: ``[(t, name), ...]``."""
        return []

    def fire(self, event: str) -> None:
        """Carry out one action of :meth:`events`."""
        raise UsageProblem(f"{self.name} has no event {event!r}")

    def _server_root(self, gone: str) -> tuple[int, ...]:
        """The server tree's root process (:meth:`capture_pids`); ``gone``: the error when
        it has exited."""
        assert self.server is not None
        root = self.server.root_pid()
        if root is None:
            raise WorkloadError(gone)
        return (root,)

    def check(self) -> None:
        """Raise :class:`WorkloadError` when the server or the load has died."""
        for tree in (self.server, self.load):
            if tree is not None:
                tree.check_alive()

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds used so far: ``workload`` (the tree under KSM), ``load``."""
        out = {"workload": self.server.cpu_s() if self.server else 0.0}
        if self.load is not None:
            out["load"] = self.load.cpu_s()
        return out

    def load_summary(self) -> dict[str, Any]:
        """What the load generator achieved (requests, rate), read when it stopped."""
        return {}

    def _start_tree(
        self, name: str, argv: Sequence[str], *, under_ksm: bool, **kw: Any
    ) -> ProcessTree:
        tree = ProcessTree(
            name, argv, under_ksm=under_ksm, log_path=self.work / f"{name}.log", **kw
        )
        self.trees.append(tree)
        return tree

    def stop_load(self) -> None:
        """Stop the load generator (first: the server must not lose its clients mid-run)."""
        if self.load is not None:
            self.killed[self.load.name] = self.load.stop(signal.SIGTERM, grace_s=10)

    def stop_server(self) -> None:
        """Stop the server tree."""
        if self.server is not None:
            self.killed[self.server.name] = self.server.stop(signal.SIGTERM, grace_s=30)

    def stop(self) -> dict[str, Any]:
        """Stop everything this workload started; check nothing is left; summarize."""
        errors: list[str] = []
        for step in (self.stop_load, self.stop_server):
            try:
                step()
            except WorkloadError as exc:
                errors.append(exc.one_line())
        for tree in self.trees:  # anything else started (setup servers)
            if tree.leftovers():
                try:
                    self.killed[tree.name] = tree.stop(signal.SIGKILL, grace_s=5)
                except WorkloadError as exc:
                    errors.append(exc.one_line())
        if errors:
            raise WorkloadError("; ".join(errors), hint="kill the pids named by hand")
        return {"killed": {k: v for k, v in self.killed.items() if v}}

    def leftovers(self) -> list[int]:
        """Processes of any tree still alive."""
        return sorted(p for t in self.trees for p in t.leftovers())


# ----------------------------------------------------------------------------- PostgreSQL


@dataclass(frozen=True)
class PostgresParams(WorkloadParams):
    """A PostgreSQL 15 server under ``pgbench -S``."""

    clients: int = 16
    """pgbench clients = server backends."""
    threads: int = 2
    scale: int = 1
    rate_tps: int | None = None
    """pgbench ``-R`` (None: as fast as possible, closed loop)."""
    user: str = "postgres"
    bin_dir: str = str(PG_BIN_DIR)


class PostgresWorkload(Workload):
    """PostgreSQL 15 in a private directory; ``pgbench -S -c 16`` (read-only) as the load."""

    name = "postgres"
    description = (
        "PostgreSQL 15 (initdb in a private temporary directory, unix socket only, fsync off) "
        "with one backend per pgbench client, under read-only pgbench -S (closed loop)"
    )
    expected = (
        "The postmaster's auxiliary processes (checkpointer, background writer, WAL writer, "
        "autovacuum and logical-replication launchers) are idle and their duplicated pages "
        "merge and stay merged. Busy backends keep rewriting part of their private memory "
        "(executor state, catalog/plan caches, stacks): those pages change between ksmd's "
        "visits and merge less than a snapshot shows. shared_buffers is MAP_SHARED and never "
        "eligible."
    )
    params: PostgresParams

    def _bin(self, name: str) -> str:
        p = Path(self.params.bin_dir, name)
        if not p.is_file():
            raise EnvironmentProblem(
                f"{p} does not exist", hint="install PostgreSQL 15 (apt-get install postgresql-15)"
            )
        return str(p)

    def _as_user(self) -> list[str]:
        try:
            pw = pwd.getpwnam(self.params.user)
        except KeyError:
            raise EnvironmentProblem(
                f"there is no user {self.params.user!r} to run PostgreSQL",
                hint="create one (useradd --system postgres) or give another user",
            ) from None
        self._uid, self._gid = pw.pw_uid, pw.pw_gid
        setpriv = _which("setpriv", "install util-linux")
        return [setpriv, f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups", "--"]

    def _env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", os.defpath), "LC_ALL": "C", "HOME": str(self.work)}

    def _server_argv(self) -> list[str]:
        return [
            *self._as_user(),
            self._bin("postgres"),
            "-D", str(self.data), "-p", str(self.port), "-k", str(self.sock),
            "-c", "listen_addresses=", "-c", f"max_connections={self.params.clients + 10}",
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
        ]  # fmt: skip

    def _pg_ready(self, tree: ProcessTree) -> None:
        isready = self._bin("pg_isready")
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            rc = subprocess.run(
                [isready, "-q", "-U", "postgres", "-h", str(self.sock), "-p", str(self.port)],
                check=False,
                env=self._env(),
            ).returncode
            if rc == 0:
                return
            tree.check_alive()
            if time.monotonic() > deadline:
                raise WorkloadError(f"postgres not ready after {READY_TIMEOUT_S:.0f} s")
            time.sleep(0.25)

    def prepare(self) -> None:
        self._bin("pgbench")
        self.work.chmod(0o711)  # the server user must reach its directories
        self.data = self.work / "pgdata"
        self.sock = self.work / "pgsock"
        prefix = self._as_user()
        for d in (self.data, self.sock):
            d.mkdir()
            os.chown(d, self._uid, self._gid)
        self.port = free_port()
        with (self.work / "initdb.log").open("wb") as log:
            rc = subprocess.run(
                [*prefix, self._bin("initdb"), "-D", str(self.data), "-U", "postgres",
                 "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions"],
                env=self._env(), stdout=log, stderr=subprocess.STDOUT, check=False,
            ).returncode  # fmt: skip
        if rc != 0:
            raise WorkloadError(f"initdb failed ({rc}); see {self.work / 'initdb.log'}")
        # pgbench tables, with a server outside KSM (stopped again before the lease)
        setup = self._start_tree(
            "postgres-setup", self._server_argv(), under_ksm=False, env=self._env()
        )
        try:
            self._pg_ready(setup)
            with (self.work / "pgbench-init.log").open("wb") as log:
                rc = subprocess.run(
                    [self._bin("pgbench"), "-i", "-q", "-s", str(self.params.scale),
                     "-h", str(self.sock), "-p", str(self.port), "-U", "postgres", "postgres"],
                    env=self._env(), stdout=log, stderr=subprocess.STDOUT, check=False,
                ).returncode  # fmt: skip
            if rc != 0:
                raise WorkloadError(f"pgbench -i failed ({rc}); see {self.work}/pgbench-init.log")
        finally:
            setup.stop(signal.SIGINT, grace_s=30)

    def start(self) -> None:
        self.server = self._start_tree(
            "postgres", self._server_argv(), under_ksm=True, env=self._env()
        )
        self._pg_ready(self.server)

    def start_load(self) -> None:
        argv = [
            self._bin("pgbench"), "-S", "-n", "-c", str(self.params.clients),
            "-j", str(self.params.threads), "-T", "86400", "-P", "5",
            "-h", str(self.sock), "-p", str(self.port), "-U", "postgres",
        ]  # fmt: skip
        if self.params.rate_tps:
            argv += ["-R", str(self.params.rate_tps)]
        self.load = self._start_tree(
            "pgbench", [*argv, "postgres"], under_ksm=False, env=self._env()
        )
        # wait until every client has its backend
        deadline = time.monotonic() + READY_TIMEOUT_S
        while len(self.backends()) < self.params.clients:
            self.check()
            if time.monotonic() > deadline:
                raise WorkloadError(
                    f"only {len(self.backends())} of {self.params.clients} backends started"
                )
            time.sleep(0.2)

    def backends(self) -> list[int]:
        """Server processes other than the postmaster and its auxiliary processes."""
        assert self.server is not None
        root = self.server.root_pid()
        if root is None:
            return []
        out = []
        for pid in self.server.refresh():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "postgres: postgres postgres" in cmd.replace("\0", " "):
                out.append(pid)
        return out

    def capture_pids(self) -> tuple[int, ...]:
        return self._server_root("the postmaster is gone")

    def stop_load(self) -> None:
        if self.load is not None:
            self.killed[self.load.name] = self.load.stop(signal.SIGINT, grace_s=10)

    def stop_server(self) -> None:
        if self.server is not None:  # fast shutdown: SIGINT to the postmaster itself
            self.killed[self.server.name] = self.server.stop(signal.SIGINT, grace_s=30)

    def load_summary(self) -> dict[str, Any]:
        if self.load is None:
            return {}
        try:
            text = self.load.log_path.read_text(errors="replace")
        except OSError:
            return {}
        tps = [float(m) for m in re.findall(r"progress: [\d.]+ s, ([\d.]+) tps", text)]
        return {
            "tool": "pgbench -S",
            "progress_reports": len(tps),
            "tps_mean": round(sum(tps) / len(tps), 1) if tps else None,
            "tps_last": tps[-1] if tps else None,
        }


# ----------------------------------------------------------------------------- Node.js


@dataclass(frozen=True)
class NodeParams(WorkloadParams):
    """A Node.js cluster under closed-loop HTTP load."""

    workers: int = 4
    items: int = 20000
    rate_per_s: float | None = 1000.0
    """Open-loop requests per second; None: closed loop (``concurrency`` always in flight,
    which saturates this 2-core host)."""
    concurrency: int = 8
    search_every: int = 20


class _PrimaryUnderNodeLoad(Workload):
    """A primary process serving through its children (captured from the primary down),
    loaded by ``assets/node_load.js``, whose counts go to ``self.stats``."""

    #: the error when the primary is gone at capture time
    primary_gone: ClassVar[str]

    def capture_pids(self) -> tuple[int, ...]:
        return self._server_root(self.primary_gone)

    def load_summary(self) -> dict[str, Any]:
        return _node_load_summary(getattr(self, "stats", None))


class NodeClusterWorkload(_PrimaryUnderNodeLoad):
    """A Node.js ``cluster`` of N HTTP workers with per-worker state; a Node client as load."""

    name = "node"
    primary_gone = "the node primary is gone"
    description = (
        "Node.js cluster module: a primary and N workers sharing one port; each worker builds "
        "a catalogue from a fixed seed (same objects everywhere) and a per-worker random cache, "
        "then serves /item and /search (allocating) under a closed-loop keep-alive client"
    )
    expected = (
        "Code, builtins and part of every worker's heap are identical and merge. The V8 heap "
        "is rewritten by the garbage collector while serving (scavenges move young objects, "
        "compaction moves old ones) and shrinks after the start-up burst, so the pages that "
        "merge are fewer than a snapshot shows and ksm_rmap_items per worker falls after the "
        "capture."
    )
    params: NodeParams

    def prepare(self) -> None:
        self.node = _which("node", "install Node.js (apt-get install nodejs)")

    def start(self) -> None:
        self.port = free_port()
        ready = self.work / "node.ready"
        self.server = self._start_tree(
            "node-cluster",
            [self.node, str(asset("node_cluster.js")), "--port", str(self.port),
             "--workers", str(self.params.workers), "--items", str(self.params.items),
             "--ready-file", str(ready)],
            under_ksm=True,
        )  # fmt: skip
        wait_for_file(ready, timeout_s=READY_TIMEOUT_S, alive=self.server)

    def start_load(self) -> None:
        self.stats = self.work / "node-load.json"
        argv = _node_load_argv(self.node, [self.port], self.params, self.stats)
        self.load = self._start_tree("node-load", argv, under_ksm=False)


# ----------------------------------------------------------------------------- JVM


@dataclass(frozen=True)
class JvmParams(WorkloadParams):
    """N JVM services (one per port) behind a primary JVM, under open-loop HTTP load."""

    workers: int = 4
    items: int = 20000
    heap_mb: int = 256
    """Each worker's ``-Xmx`` (the default G1 collector)."""
    rate_per_s: float | None = 1000.0
    """Open-loop requests per second over all workers; None: closed loop."""
    concurrency: int = 8
    search_every: int = 20


class JvmWorkload(_PrimaryUnderNodeLoad):
    """JVM services: a primary JVM starts one worker JVM per port; Node's client as load."""

    name = "jvm"
    primary_gone = "the primary JVM is gone"
    description = (
        "JVM services (OpenJDK, assets/JvmService.java): a primary JVM that starts N worker JVMs, "
        "one per port (a JVM does not fork), each building a catalogue from a fixed seed (the "
        "same objects in the same order everywhere) and a per-worker random cache, then serving "
        "/item (which also replaces cache entries) and /search (allocating) under open-loop "
        "keep-alive load spread over the ports"
    )
    expected = (
        "Most of what merges is zero-filled memory (about 13 % of the pages, nearly nine "
        "tenths of the ideal saving in the runs recorded): the catalogue built alike in every "
        "worker is not laid out alike, since G1 copies live objects between regions at every "
        "young collection. Pages turn over between the zero content and contents of their "
        "own faster than snapshots 2 s apart show, and each heap grows after the capture."
    )
    params: JvmParams

    def prepare(self) -> None:
        self.java = _which("java", "install a JDK (apt-get install openjdk-17-jdk-headless)")
        javac = _which("javac", "install a JDK (apt-get install openjdk-17-jdk-headless)")
        self.node = _which("node", "install Node.js (apt-get install nodejs): the load is Node's")
        self.classes = self.work / "classes"
        self.classes.mkdir()
        with (self.work / "javac.log").open("wb") as log:
            rc = subprocess.run(
                [javac, "-d", str(self.classes), str(asset("JvmService.java"))],
                stdout=log, stderr=subprocess.STDOUT, check=False,
            ).returncode  # fmt: skip
        if rc != 0:
            raise WorkloadError(f"javac failed ({rc}); see {self.work / 'javac.log'}")

    def server_argv(self, ready: Path) -> list[str]:
        """The primary JVM's command (after :meth:`prepare`), on new free ports: it starts
        the workers (the JDK's HTTP server with ``TCP_NODELAY``: without it each keep-alive
        answer waited for a delayed ACK, about 200 requests a second in all) and writes
        ``ready`` once they serve."""
        self.ports = [free_port() for _ in range(self.params.workers)]
        worker_options = [f"-Xmx{self.params.heap_mb}m", "-Dsun.net.httpserver.nodelay=true"]
        return [
            self.java, "-Xmx64m", "-cp", str(self.classes), "JvmService", "primary",
            "--ports", ",".join(map(str, self.ports)), "--items", str(self.params.items),
            "--ready-file", str(ready), "--", *worker_options,
        ]  # fmt: skip

    def load_argv(self) -> list[str]:
        """The load's command: Node's client, its requests spread over the workers' ports."""
        self.stats = self.work / "jvm-load.json"
        return _node_load_argv(self.node, self.ports, self.params, self.stats)

    def start(self) -> None:
        ready = self.work / "jvm.ready"
        self.server = self._start_tree("jvm-service", self.server_argv(ready), under_ksm=True)
        wait_for_file(ready, timeout_s=READY_TIMEOUT_S, alive=self.server)

    def start_load(self) -> None:
        self.load = self._start_tree("jvm-load", self.load_argv(), under_ksm=False)


# ----------------------------------------------------------------------------- churn


@dataclass(frozen=True)
class ChurnParams(WorkloadParams):
    """Sizes (pages per worker) and periods of the churn program (assets/churn.c)."""

    workers: int = 8
    stable: int = 4000
    unique: int = 1000
    fast_pages: tuple[int, ...] = (200, 300, 500)
    fast_periods_ms: tuple[int, ...] = (50, 200, 1000)
    osc: int = 1000
    osc_period_ms: int = 3000
    rewrite: int = 1000
    rewrite_period_ms: int = 500
    heap: int = 2000
    heap_max: int = 4000
    heap_shrink: int = 1000
    grow_at_s: float | None = 10.0
    """Seconds after ksmd starts when the heap grows to ``heap_max`` (None: never)."""
    shrink_at_s: float | None = 25.0
    """Seconds after ksmd starts when the heap shrinks to ``heap_shrink`` (None: never)."""

    def argv(self) -> list[str]:
        """The churn program's options."""
        return [
            "--workers", str(self.workers), "--stable", str(self.stable),
            "--unique", str(self.unique), "--osc", str(self.osc),
            "--osc-period-ms", str(self.osc_period_ms), "--rewrite", str(self.rewrite),
            "--rewrite-period-ms", str(self.rewrite_period_ms), "--heap", str(self.heap),
            "--heap-max", str(self.heap_max), "--heap-shrink", str(self.heap_shrink),
            "--fast-pages", ",".join(map(str, self.fast_pages)),
            "--fast-periods", ",".join(map(str, self.fast_periods_ms)),
        ]  # fmt: skip


#: Churn variants that isolate one behaviour each (plus the stable pages that should merge).
CHURN_VARIANTS: Final[dict[str, dict[str, Any]]] = {
    "churn": {},
    "churn-fast": dict(osc=0, rewrite=0, heap=0, heap_max=0, heap_shrink=0,
                       grow_at_s=None, shrink_at_s=None),
    "churn-osc": dict(fast_pages=(), fast_periods_ms=(), rewrite=0, heap=0, heap_max=0,
                      heap_shrink=0, grow_at_s=None, shrink_at_s=None),
    "churn-rewrite": dict(fast_pages=(), fast_periods_ms=(), osc=0, heap=0, heap_max=0,
                          heap_shrink=0, grow_at_s=None, shrink_at_s=None),
    "churn-heap": dict(fast_pages=(), fast_periods_ms=(), osc=0, rewrite=0),
}  # fmt: skip


class ChurnWorkload(Workload):
    """Forked C workers whose pages change, oscillate, are rewritten or come and go."""

    name = "churn"
    description = (
        "a C program (assets/churn.c, compiled with gcc at run time) forks N workers; each "
        "maps private anonymous regions: stable duplicated pages, unique pages, pages whose "
        "content changes every 50/200/1000 ms (identical across workers at any instant), "
        "pages that toggle between two contents every few seconds, pages rewritten with the "
        "same bytes every 500 ms, and a heap that grows and shrinks after ksmd starts"
    )
    expected = (
        "stable: S pages x N workers merge into S KSM pages (S*(N-1) pages_sharing) within "
        "about 2 full scans. unique: never merge. fast: a page whose content changes more "
        "often than ksmd revisits it never passes the checksum gate and never merges (a "
        "1000 ms page can pass when a full scan takes well under a second). osc: each toggle "
        "changes every page; it merges again only after two visits with the new content, and "
        "the next toggle breaks every merged page (one cow_ksm each). rewrite: merges (the "
        "content never changes) and every write to a merged page breaks it (cow_ksm); a "
        "visit that smart scan does not skip re-merges it at once (its checksum is "
        "unchanged), so pages_sharing, which ksmd updates lazily, stays high while cow_ksm "
        "counts up to one break per page and processed visit. heap: grows to heap_max "
        "pages after grow_at_s (more merging) and shrinks to heap_shrink after shrink_at_s "
        "(freed items leave the counters on the next visit)."
    )
    params: ChurnParams

    def prepare(self) -> None:
        gcc = _which("gcc", "install gcc (apt-get install gcc)")
        self.binary = self.work / "churn"
        out = subprocess.run(
            [gcc, "-O2", "-Wall", "-o", str(self.binary), str(asset("churn.c"))],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise WorkloadError(f"gcc failed to build churn.c:\n{out.stderr.strip()}")

    def start(self) -> None:
        ready = self.work / "churn.ready"
        self.server = self._start_tree(
            "churn",
            [str(self.binary), *self.params.argv(), "--ready-file", str(ready)],
            under_ksm=True,
        )
        text = wait_for_file(ready, timeout_s=READY_TIMEOUT_S, alive=self.server)
        self.workers = [int(p) for p in text.split()[1:]]

    def capture_pids(self) -> tuple[int, ...]:
        return self._server_root("the churn parent is gone")

    def events(self) -> list[tuple[float, str]]:
        out = []
        if self.params.grow_at_s is not None:
            out.append((self.params.grow_at_s, "grow"))
        if self.params.shrink_at_s is not None:
            out.append((self.params.shrink_at_s, "shrink"))
        return sorted(out)

    def fire(self, event: str) -> None:
        sig = {"grow": signal.SIGUSR1, "shrink": signal.SIGUSR2}.get(event)
        if sig is None:
            super().fire(event)
            return
        assert self.server is not None
        live = self.server.refresh()
        for pid in self.workers:
            if pid in live:
                os.kill(pid, sig)


# ----------------------------------------------------------------------------- Django


@dataclass(frozen=True)
class DjangoParams(WorkloadParams):
    """The Django sample site of traces/django under gunicorn."""

    workers: int = 8
    preload: bool = True
    rate_per_s: float = 30.0
    warmup_requests: int = 3000
    warmup_threads: int = 4
    seed: int = 42


class DjangoWorkload(Workload):
    """The sample workload of ``traces/django`` (gunicorn, 8 sync workers, --preload)."""

    name = "django"
    description = (
        "the Django sample site of traces/django (SQLite, seeded) under gunicorn with 8 sync "
        "workers and --preload, warmed up with 3,000 requests, then open-loop traffic at 30 "
        "req/s from threads of the harness (outside KSM); as reports/canary/record.py"
    )
    expected = (
        "The master imports the app before forking, so most of the workers' memory starts "
        "fork-shared (never a KSM saving); what merges is what each worker writes itself "
        "(interpreter heaps, caches) and is identical across workers. Reference counting "
        "writes object headers while serving, so part of it keeps changing."
    )
    params: DjangoParams

    def _modules(self) -> tuple[Any, Any]:
        here = repo_root() / "traces" / "django"
        if not (here / "regenerate.py").is_file():
            raise EnvironmentProblem(
                f"{here} is missing: the Django workload needs a source checkout of ksm-planner",
                hint="run from the repository (git clone), not an installed wheel",
            )
        if (
            importlib.util.find_spec("django") is None
            or importlib.util.find_spec("gunicorn") is None
        ):
            raise MissingExtraError(
                "the Django workload needs django and gunicorn",
                hint="pip install -e '.[sample]'",
            )
        if str(here) not in sys.path:
            sys.path.insert(0, str(here))
        return importlib.import_module("regenerate"), importlib.import_module("loadgen")

    def prepare(self) -> None:
        self.regen, self.loadgen = self._modules()
        self.db = self.work / "site.sqlite3"
        self.regen.seed_database(self.db, seed=self.params.seed)

    def start(self) -> None:
        regen = self.regen
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [
            sys.executable, "-m", "gunicorn", "--config", str(regen.GUNICORN_CONF),
            "--chdir", str(regen.SITE_DIR), "--bind", f"127.0.0.1:{self.port}",
            "--workers", str(self.params.workers),
        ] + (["--preload"] if self.params.preload else [])  # fmt: skip
        self.server = self._start_tree(
            "gunicorn", argv, under_ksm=True, env=regen._site_env(self.db), cwd=regen.SITE_DIR
        )
        server = self.server
        self.loadgen.wait_ready(self.url, timeout_s=READY_TIMEOUT_S, alive=server.alive)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while len(self._workers()) < self.params.workers:
            server.check_alive()
            if time.monotonic() > deadline:
                raise WorkloadError(f"only {len(self._workers())} gunicorn workers started")
            time.sleep(0.25)

    def _workers(self) -> list[int]:
        assert self.server is not None
        master = self.server.root_pid()
        if master is None:
            return []
        from planner.testing.live.host import children_of

        return sorted(children_of(master))

    def start_load(self) -> None:
        lg = self.loadgen
        self.driver = lg.Driver(self.url)
        catalog = lg.Catalog.fetch(self.driver.base_url)
        t0 = harness_cpu_s()
        warm = lg.warm_up(
            self.driver,
            lg.plan_requests(catalog, self.params.warmup_requests, seed=self.params.seed),
            threads=self.params.warmup_threads,
        )
        self.warm_summary = warm.summary()
        self.warm_cpu_s = harness_cpu_s() - t0
        plan = lg.plan_requests(
            catalog, int(self.params.rate_per_s * 3600), seed=self.params.seed + 1
        )
        self.loop = lg.OpenLoop(self.driver, plan, rate_per_s=self.params.rate_per_s).start()
        self.loop_summary: dict[str, Any] | None = None

    def capture_pids(self) -> tuple[int, ...]:
        return self._server_root("the gunicorn master is gone")

    def stop_load(self) -> None:
        loop = getattr(self, "loop", None)
        if loop is not None and self.loop_summary is None:
            self.loop_summary = loop.stop().summary()

    def load_summary(self) -> dict[str, Any]:
        return {
            "tool": "traces/django/loadgen.py (threads of the harness)",
            "warmup": getattr(self, "warm_summary", None),
            "open_loop": getattr(self, "loop_summary", None),
        }


# ----------------------------------------------------------------------------- registry

#: Node variants: the default open-loop load, and a closed loop that saturates the host.
NODE_VARIANTS: Final[dict[str, dict[str, Any]]] = {
    "node": {},
    "node-saturated": {"rate_per_s": None},
}
WORKLOADS: Final[dict[str, type[Workload]]] = {
    "postgres": PostgresWorkload,
    **{name: NodeClusterWorkload for name in NODE_VARIANTS},
    **{name: ChurnWorkload for name in CHURN_VARIANTS},
    "django": DjangoWorkload,
    "jvm": JvmWorkload,
}
PARAMS: Final[dict[str, type[WorkloadParams]]] = {
    "postgres": PostgresParams,
    **{name: NodeParams for name in NODE_VARIANTS},
    **{name: ChurnParams for name in CHURN_VARIANTS},
    "django": DjangoParams,
    "jvm": JvmParams,
}
_VARIANTS: Final[dict[str, dict[str, Any]]] = {**NODE_VARIANTS, **CHURN_VARIANTS}
#: The workloads of the issue's table, in order (``all`` runs these).
MAIN_WORKLOADS: Final = ("postgres", "node", "churn", "django")


def make_params(name: str, **overrides: Any) -> WorkloadParams:
    """The default parameters of workload ``name`` with ``overrides``.

    Raises
    ------
    UsageProblem
        Unknown workload or parameter.
    """
    if name not in PARAMS:
        raise UsageProblem(f"unknown workload {name!r}", hint=f"use one of {', '.join(WORKLOADS)}")
    cls = PARAMS[name]
    base = dict(_VARIANTS.get(name, {}))
    base.update(overrides)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(base) - known)
    if unknown:
        raise UsageProblem(
            f"unknown parameter(s) {', '.join(unknown)} of workload {name}",
            hint=f"known: {', '.join(sorted(known))}",
        )
    return cls(**base)


def make_workload(name: str, work: Path, params: WorkloadParams | None = None) -> Workload:
    """Workload ``name`` working in directory ``work`` (default parameters if none given)."""
    p = params if params is not None else make_params(name)
    cls = WORKLOADS.get(name)
    if cls is None:
        raise UsageProblem(f"unknown workload {name!r}", hint=f"use one of {', '.join(WORKLOADS)}")
    if not isinstance(p, PARAMS[name]):
        raise UsageProblem(f"workload {name} needs {PARAMS[name].__name__}, got {type(p).__name__}")
    return cls(p, work, variant=name)


__all__ = [
    "CHURN_VARIANTS",
    "MAIN_WORKLOADS",
    "NODE_VARIANTS",
    "WORKLOADS",
    "ChurnParams",
    "ChurnWorkload",
    "DjangoParams",
    "DjangoWorkload",
    "NodeClusterWorkload",
    "NodeParams",
    "PostgresParams",
    "PostgresWorkload",
    "Workload",
    "WorkloadParams",
    "make_params",
    "make_workload",
]
