"""Processes we start and the host's load while they run (``/proc`` readers, read-only).

:class:`ProcessTree` starts one command in its own session -- under KSM through
``ksm-planner launch`` (``prctl(PR_SET_MEMORY_MERGE, 1)`` before exec, inherited by fork) or
outside it -- remembers every process of that session it ever sees (pid and start time, so
that a reused pid is never signalled), and stops it by pid: a chosen signal to the
workload's root, then SIGKILL to whatever of the session is left, then a check that nothing
is left.

:class:`HostLoadMonitor` samples ``/proc/stat`` and ``/proc/loadavg`` every second in a
thread; :meth:`HostLoadMonitor.summary` gives the host's load over a time window: the busy
share of all CPUs, runnable tasks, the load average, and how much of the busy time was
ours (workload, load generator, ksmd, the harness) and how much came from elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from planner.errors import EnvironmentProblem

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

PROC: Final = Path("/proc")
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")


class WorkloadError(EnvironmentProblem):
    """A live workload or its load generator failed to start, died, or left processes."""


# ----------------------------------------------------------------------------- /proc readers


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the comm (index 0 is the state), or None."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat`` (start time in ticks): with the pid, an identity."""
    f = _stat_fields(pid)
    return int(f[19]) if f else None


def process_cpu_s(pid: int) -> float | None:
    """utime + stime of ``pid`` in seconds (``/proc/<pid>/stat`` fields 14-15)."""
    f = _stat_fields(pid)
    return (int(f[11]) + int(f[12])) / CLK_TCK if f else None


def schedstat_ns(pid: int) -> int | None:
    """Nanoseconds on a CPU (first field of ``/proc/<pid>/schedstat``)."""
    try:
        return int((PROC / str(pid) / "schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def session_members(sid: int) -> dict[int, int]:
    """Live (non-zombie) processes of session ``sid``: ``{pid: start ticks}``."""
    out: dict[int, int] = {}
    for entry in os.scandir(PROC):
        if not entry.name.isdigit():
            continue
        f = _stat_fields(int(entry.name))
        if f and int(f[3]) == sid and f[0] not in ("Z", "X"):
            out[int(entry.name)] = int(f[19])
    return out


def tree_members(root: int) -> dict[int, int]:
    """Live processes of session ``root`` and every live descendant of ``root``.

    Both: some servers (PostgreSQL) put each child in a session of its own, and a process
    whose parent died is re-parented away from the tree but stays in the session.
    """
    stats: dict[int, list[str]] = {}
    for entry in os.scandir(PROC):
        if entry.name.isdigit():
            f = _stat_fields(int(entry.name))
            if f and f[0] not in ("Z", "X"):
                stats[int(entry.name)] = f
    kids: dict[int, list[int]] = {}
    for pid, f in stats.items():
        kids.setdefault(int(f[1]), []).append(pid)
    out = {pid: int(f[19]) for pid, f in stats.items() if int(f[3]) == root}
    todo = [root]
    while todo:
        for child in kids.get(todo.pop(), ()):
            if child not in out:
                out[child] = int(stats[child][19])
            todo.append(child)
    if root in stats:
        out[root] = int(stats[root][19])
    return out


def children_of(pid: int) -> dict[int, int]:
    """Live children of ``pid``: ``{pid: start ticks}``."""
    out: dict[int, int] = {}
    for entry in os.scandir(PROC):
        if not entry.name.isdigit():
            continue
        f = _stat_fields(int(entry.name))
        if f and int(f[1]) == pid and f[0] not in ("Z", "X"):
            out[int(entry.name)] = int(f[19])
    return out


def comm_of(pid: int) -> str:
    """``/proc/<pid>/comm`` (``"?"`` when gone)."""
    try:
        return (PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return "?"


@dataclass(frozen=True)
class CpuSample:
    """One reading of ``/proc/stat`` and ``/proc/loadavg``."""

    t_mono: float
    total_ticks: int
    idle_ticks: int  # idle + iowait
    procs_running: int
    loadavg_1m: float
    loadavg_5m: float


def read_cpu_sample() -> CpuSample:
    """Read the host's CPU counters now."""
    total = idle = running = 0
    for line in (PROC / "stat").read_text().splitlines():
        if line.startswith("cpu "):
            vals = [int(v) for v in line.split()[1:]]
            # user nice system idle iowait irq softirq steal guest guest_nice: guest time is
            # already inside user/nice, so it is not added twice.
            total = sum(vals[:8])
            idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
        elif line.startswith("procs_running "):
            running = int(line.split()[1])
    la = (PROC / "loadavg").read_text().split()
    return CpuSample(time.monotonic(), total, idle, running, float(la[0]), float(la[1]))


@dataclass(frozen=True)
class HostLoad:
    """The host's load over a window, and the part of it that was ours."""

    window_s: float
    cpus: int
    busy_fraction: float
    """Busy share of all CPUs (1.0 = every core busy all the time)."""
    busy_cpu_s: float
    procs_running_mean: float
    procs_running_max: int
    loadavg_1m_start: float
    loadavg_1m_end: float
    ours_cpu_s: dict[str, float]
    """CPU seconds of the parts we know (workload, load, ksmd, harness)."""
    other_cpu_s: float
    """Busy CPU seconds not ours: other users of the machine."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    def describe(self) -> str:
        """One line for people."""
        ours = ", ".join(f"{k} {v:.1f}" for k, v in self.ours_cpu_s.items())
        return (
            f"{100 * self.busy_fraction:.0f}% of {self.cpus} CPUs busy over {self.window_s:.0f} s "
            f"(runnable {self.procs_running_mean:.1f} mean / {self.procs_running_max} max, "
            f"loadavg {self.loadavg_1m_start:.2f}->{self.loadavg_1m_end:.2f}; CPU s: {ours}, "
            f"others {self.other_cpu_s:.1f})"
        )


class HostLoadMonitor:
    """Samples ``/proc/stat`` every ``interval_s`` in a daemon thread until :meth:`stop`."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.samples: list[CpuSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="host-load", daemon=True)
        self._lock = threading.Lock()

    def __enter__(self) -> HostLoadMonitor:
        self.samples.append(read_cpu_sample())
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop sampling (idempotent)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            s = read_cpu_sample()
            with self._lock:
                self.samples.append(s)

    def mark(self) -> CpuSample:
        """A sample now (also kept), to delimit a phase."""
        s = read_cpu_sample()
        with self._lock:
            self.samples.append(s)
            self.samples.sort(key=lambda x: x.t_mono)
        return s

    def summary(
        self, start: CpuSample, end: CpuSample, ours_cpu_s: Mapping[str, float]
    ) -> HostLoad:
        """The load between two marks; ``ours_cpu_s`` is the CPU time of our parts there."""
        cpus = os.cpu_count() or 1
        with self._lock:
            inside = [s for s in self.samples if start.t_mono <= s.t_mono <= end.t_mono]
        inside = inside or [start, end]
        dt_ticks = max(1, end.total_ticks - start.total_ticks)
        busy_ticks = dt_ticks - (end.idle_ticks - start.idle_ticks)
        busy_cpu_s = busy_ticks / CLK_TCK
        ours = {k: round(float(v), 3) for k, v in ours_cpu_s.items()}
        return HostLoad(
            window_s=round(end.t_mono - start.t_mono, 3),
            cpus=cpus,
            busy_fraction=round(busy_ticks / dt_ticks, 4),
            busy_cpu_s=round(busy_cpu_s, 3),
            procs_running_mean=round(sum(s.procs_running for s in inside) / len(inside), 2),
            procs_running_max=max(s.procs_running for s in inside),
            loadavg_1m_start=start.loadavg_1m,
            loadavg_1m_end=end.loadavg_1m,
            ours_cpu_s=ours,
            other_cpu_s=round(max(0.0, busy_cpu_s - sum(ours.values())), 3),
        )


def harness_cpu_s() -> float:
    """CPU seconds of this process (every thread) so far."""
    t = os.times()
    return t.user + t.system


# ----------------------------------------------------------------------------- process trees


class ProcessTree:
    """One command started in its own session, and everything it forks; stopped by pid.

    Parameters
    ----------
    name
        For messages (``"postgres"``, ``"pgbench"``).
    argv
        The command.
    under_ksm
        Start it through ``python -m planner launch --`` (prctl before exec): the command and
        every process it forks are registered with KSM. Otherwise it runs outside KSM.
    env, cwd
        Environment and working directory.
    log_path
        Where its stdout and stderr go.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        under_ksm: bool,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        self.name = name
        self.under_ksm = under_ksm
        self.argv = list(argv)
        cmd = [sys.executable, "-m", "planner", "launch", "--", *argv] if under_ksm else list(argv)
        self.log_path = log_path
        self._log = log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                cmd,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own session and process group
            )
        except OSError as exc:
            self._log.close()
            raise WorkloadError(
                f"cannot start {name} ({argv[0]}): {exc.strerror}", hint="check the command"
            ) from exc
        self.pid = self.proc.pid
        self.seen: dict[int, int] = {}
        self.refresh()

    # -- state ------------------------------------------------------------------------------

    def refresh(self) -> dict[int, int]:
        """The live members of the tree now (also remembered)."""
        members = tree_members(self.pid)
        self.seen.update(members)
        return members

    def alive(self) -> bool:
        """Whether the session leader (the launcher or the command) still runs."""
        return self.proc.poll() is None

    def root_pid(self) -> int | None:
        """The workload's root: the launcher's child under KSM, else the command itself."""
        if not self.under_ksm:
            return self.pid if self.alive() else None
        kids = children_of(self.pid)
        return min(kids) if kids else None

    def cpu_s(self) -> float:
        """utime + stime of the live members now."""
        return sum(process_cpu_s(p) or 0.0 for p in self.refresh())

    def log_tail(self, lines: int = 12) -> str:
        """The end of the command's log (for error messages)."""
        self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        """Raise :class:`WorkloadError` when the command has exited."""
        if not self.alive():
            raise WorkloadError(
                f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}",
                hint=f"see {self.log_path}",
            )

    # -- stopping ---------------------------------------------------------------------------

    def signal_root(self, sig: int) -> None:
        """Send ``sig`` to the workload's root (the launcher forwards only SIGTERM/SIGHUP)."""
        root = self.root_pid() if self.under_ksm else self.pid
        target = root if root is not None else self.pid
        with contextlib.suppress(ProcessLookupError):
            if start_ticks(target) is not None:
                os.kill(target, sig)

    def leftovers(self) -> list[int]:
        """Processes of this tree still alive (same pid and start time as when seen)."""
        left = {p for p, t0 in self.seen.items() if start_ticks(p) == t0}
        for p, t0 in tree_members(self.pid).items():
            if self.seen.get(p, t0) == t0:
                left.add(p)
        if self.proc.poll() is None:
            left.add(self.pid)
        return sorted(left)

    def stop(self, sig: int = signal.SIGTERM, *, grace_s: float = 20.0) -> list[int]:
        """Stop the tree: ``sig`` to the root, then SIGKILL to what is left after ``grace_s``.

        Returns the pids that had to be killed. Raises :class:`WorkloadError` if anything is
        still alive after that.
        """
        killed: list[int] = []
        try:
            self.refresh()
            if self.leftovers():
                self.signal_root(sig)
                deadline = time.monotonic() + grace_s
                while self.leftovers() and time.monotonic() < deadline:
                    time.sleep(0.1)
                    self.refresh()
                    self.proc.poll()
            left = self.leftovers()
            if left:
                killed = left
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGKILL)
                for p in left:
                    with contextlib.suppress(ProcessLookupError):
                        if self.seen.get(p) == start_ticks(p) or p == self.pid:
                            os.kill(p, signal.SIGKILL)
                deadline = time.monotonic() + 10.0
                while self.leftovers() and time.monotonic() < deadline:
                    self.proc.poll()
                    time.sleep(0.1)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        finally:
            self._log.close()
        still = self.leftovers()
        if still:
            raise WorkloadError(
                f"{self.name}: processes {still} are still alive after SIGKILL",
                hint="check them with ps and kill them by pid",
            )
        return killed


def wait_for_file(
    path: Path, *, timeout_s: float, alive: ProcessTree | None = None, what: str = "ready"
) -> str:
    """Wait until ``path`` exists; return its text. Fails if ``alive`` exits first."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(FileNotFoundError):
            return path.read_text()
        if alive is not None:
            alive.check_alive()
        if time.monotonic() > deadline:
            raise WorkloadError(
                f"{alive.name if alive else path}: not {what} after {timeout_s:.0f} s"
                + (f":\n{alive.log_tail()}" if alive else ""),
                hint="the host may be overloaded; see the log in the run directory",
            )
        time.sleep(0.1)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
