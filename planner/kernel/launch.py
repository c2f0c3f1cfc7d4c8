"""Run a command with KSM enabled for it and every process it forks.

:func:`launch` starts the command the way a job scheduler or systemd's ``MemoryKSM=yes``
does: the child calls ``prctl(PR_SET_MEMORY_MERGE, 1)`` after ``fork`` and before ``execve``.
The flag (``MMF_VM_MERGE_ANY``) makes every compatible VMA of the process mergeable, now and
when it is created later; it is kept across ``execve`` (Linux 6.7+, fixed for good in 6.18)
and inherited by ``fork`` (docs/kernel-semantics.md §2.2-§2.4). ksm-planner itself stays
out of KSM: only the child sets the flag.

Nothing under ``/sys/kernel/mm/ksm`` is written. Whether ksmd actually merges depends on the
host's ``run`` knob, which is only read (a note says when ksmd is not running).

The parent waits for the command and returns its exit status (``128 + N`` when signal ``N``
killed it, as shells report). While it waits, SIGINT is ignored (the terminal sends it to the
command, which is in the same process group) and SIGTERM / SIGHUP are forwarded to it.

:func:`merge_state` reads another process's KSM state from ``/proc/<pid>/ksm_stat``
(``ksm_merge_any`` is what ``PR_GET_MEMORY_MERGE`` would answer inside that process).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from planner.capture.procfs import ProcessGone, ProcFS, parse_ksm_stat
from planner.errors import (
    CapturePermissionError,
    EnvironmentProblem,
    KernelUnsupportedError,
    TargetNotFoundError,
    UsageProblem,
)
from planner.kernel.sysfs import PROC_ROOT, KsmSysfs

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

PR_SET_MEMORY_MERGE: Final = 67
PR_GET_MEMORY_MERGE: Final = 68
_FORWARDED: Final = (signal.SIGTERM, signal.SIGHUP)


def _libc() -> ctypes.CDLL:
    lib = ctypes.CDLL(None, use_errno=True)
    lib.prctl.argtypes = [
        ctypes.c_int,
        ctypes.c_ulong,
        ctypes.c_ulong,
        ctypes.c_ulong,
        ctypes.c_ulong,
    ]
    lib.prctl.restype = ctypes.c_int
    return lib


def get_memory_merge() -> bool:
    """``prctl(PR_GET_MEMORY_MERGE)`` of the calling process.

    Raises
    ------
    KernelUnsupportedError
        The kernel does not know the call (before 6.4, or built without KSM).
    """
    lib = _libc()
    rc = lib.prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 0)
    if rc < 0:
        raise _prctl_error(ctypes.get_errno(), "PR_GET_MEMORY_MERGE")
    return bool(rc)


def _prctl_error(err: int, what: str) -> EnvironmentProblem:
    if err == errno.EINVAL:
        return KernelUnsupportedError(
            f"this kernel does not support prctl({what})",
            hint="use Linux 6.4 or later built with CONFIG_KSM=y (6.7+ keeps it across exec)",
        )
    if err in (errno.EPERM, errno.EACCES):
        return EnvironmentProblem(
            f"prctl({what}) was refused ({os.strerror(err)})",
            hint="a seccomp filter or security module forbids it; allow prctl in the "
            "container or service profile",
        )
    return EnvironmentProblem(
        f"prctl({what}) failed ({os.strerror(err)})", hint="check dmesg and memory limits"
    )


@dataclass(frozen=True)
class LaunchResult:
    """How the launched command ended."""

    argv: tuple[str, ...]
    pid: int
    returncode: int
    """The command's exit status; ``-N`` when signal ``N`` killed it (as in subprocess)."""
    merge_any_after_exec: bool | None
    """``ksm_merge_any`` of the command right after exec (``None``: it had already exited)."""

    @property
    def exit_code(self) -> int:
        """The exit status to pass on: the command's, or ``128 + N`` for signal ``N``."""
        return 128 - self.returncode if self.returncode < 0 else self.returncode

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "argv": list(self.argv),
            "pid": self.pid,
            "returncode": self.returncode,
            "exit_code": self.exit_code,
            "merge_any_after_exec": self.merge_any_after_exec,
        }


def _resolve(argv: Sequence[str], env: Mapping[str, str] | None) -> str:
    if not argv or not argv[0]:
        raise UsageProblem(
            "no command to launch", hint="give the command after --, e.g. launch -- python app.py"
        )
    prog = argv[0]
    path = (env or os.environ).get("PATH", os.defpath)
    found = prog if "/" in prog else shutil.which(prog, path=path)
    if found is None or not os.path.exists(found):
        raise UsageProblem(f"command {prog!r} not found", hint="check the name and PATH")
    if os.path.isdir(found) or not os.access(found, os.X_OK):
        raise UsageProblem(f"{found} is not an executable file", hint="check the path and its mode")
    return found


def _ksmd_note(sysfs: KsmSysfs) -> str | None:
    try:
        if not sysfs.available():
            return None
        run = sysfs.read_int("run")
    except (OSError, ValueError):
        return None
    if run & 1:
        return None
    return (
        f"ksmd is not running ({sysfs.root}/run = {run}): the command's memory is registered "
        "with KSM but nothing is merged until KSM is started (echo 1 > .../run)"
    )


def launch(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    notify: Callable[[str], None] | None = None,
    sysfs: KsmSysfs | None = None,
    proc_root: str = PROC_ROOT,
) -> LaunchResult:
    """Run ``argv`` with ``prctl(PR_SET_MEMORY_MERGE, 1)`` set in the child before exec.

    Parameters
    ----------
    argv
        The command and its arguments (looked up in ``PATH``).
    env, cwd
        Environment and working directory of the command (default: ours).
    notify
        Receives notes for people (ksmd not running, flag lost at exec).
    sysfs
        Where the ``run`` knob is read (read only).
    proc_root
        Where the command's ``ksm_stat`` is read right after exec.

    Returns
    -------
    LaunchResult
        The command's pid and exit status.

    Raises
    ------
    UsageProblem
        No command, or it cannot be found or executed.
    KernelUnsupportedError
        The kernel has no ``PR_SET_MEMORY_MERGE`` (EINVAL).
    EnvironmentProblem
        The prctl was refused (EPERM) or failed otherwise.
    """
    say = notify or (lambda _msg: None)
    executable = _resolve(argv, env)
    get_memory_merge()  # EINVAL here: the kernel lacks the prctl (checked before any fork)
    note = _ksmd_note(sysfs or KsmSysfs())
    if note:
        say(note)
    lib = _libc()
    rfd, wfd = os.pipe2(os.O_CLOEXEC)

    def child_setup() -> None:  # runs in the child between fork and exec
        err = _enable_merge_any(lib)
        if err:
            os.write(wfd, str(err).encode())
            raise OSError(err, "prctl(PR_SET_MEMORY_MERGE, 1) failed")

    in_main = threading.current_thread() is threading.main_thread()
    old: dict[int, Any] = {}
    try:
        try:
            proc = subprocess.Popen(
                list(argv),
                executable=executable,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                preexec_fn=child_setup,  # the prctl must run in the child, before exec
                close_fds=True,
            )
        except subprocess.SubprocessError as exc:
            os.close(wfd)
            wfd = -1
            data = os.read(rfd, 32)
            if data:
                raise _prctl_error(int(data), "PR_SET_MEMORY_MERGE, 1") from exc
            raise EnvironmentProblem(
                f"could not start {argv[0]!r}: {exc}", hint="check the command"
            ) from exc
        except PermissionError as exc:
            raise UsageProblem(
                f"{executable} cannot be executed ({exc.strerror})", hint="check its mode"
            ) from exc
        except OSError as exc:
            raise UsageProblem(
                f"{executable} cannot be executed ({exc.strerror})", hint="check the command"
            ) from exc
        if in_main:
            old[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
            for sig in _FORWARDED:
                old[sig] = signal.signal(sig, lambda signum, _f: proc.send_signal(signum))
        merge_any = _merge_any(proc.pid, proc_root)
        if merge_any is False:
            say(
                "the command lost KSM at exec (ksm_merge_any: no): this kernel does not keep "
                "PR_SET_MEMORY_MERGE across execve (needs Linux 6.7+)"
            )
        rc = proc.wait()
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)
        for fd in (rfd, wfd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
    return LaunchResult(tuple(argv), proc.pid, rc, merge_any)


def _enable_merge_any(lib: ctypes.CDLL) -> int:
    """``prctl(PR_SET_MEMORY_MERGE, 1)`` in the calling process: 0, or the errno."""
    if lib.prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0) != 0:
        return ctypes.get_errno() or errno.EINVAL
    return 0


def _merge_any(pid: int, proc_root: str) -> bool | None:
    value = ProcFS(proc_root).ksm_stat(pid).get("ksm_merge_any")
    return None if value is None else bool(value)


@dataclass(frozen=True)
class MergeState:
    """A process's KSM state from ``/proc/<pid>/ksm_stat``."""

    pid: int
    comm: str
    merge_any: bool
    """``MMF_VM_MERGE_ANY``: what ``PR_GET_MEMORY_MERGE`` answers inside the process."""
    mergeable: bool
    """Some VMA of the process is ``VM_MERGEABLE``."""
    stat: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "pid": self.pid,
            "comm": self.comm,
            "merge_any": self.merge_any,
            "mergeable": self.mergeable,
            "ksm_stat": dict(self.stat),
        }


def merge_state(pid: int, *, proc_root: str = PROC_ROOT) -> MergeState:
    """Read ``/proc/<pid>/ksm_stat``.

    Raises
    ------
    TargetNotFoundError
        No such process.
    CapturePermissionError
        Not allowed to read it (another user's process, not root).
    KernelUnsupportedError
        The kernel has no ``ksm_stat`` (before 6.1) or no ``ksm_merge_any`` line (before 6.4).
    """
    procfs = ProcFS(proc_root)
    base = procfs.path(pid, "")
    if pid <= 0 or not base.is_dir():
        raise TargetNotFoundError(f"no process {pid}", hint="check it with ps -p PID")
    try:
        text = procfs.text(pid, "ksm_stat")
    except ProcessGone:
        if not base.is_dir():
            raise TargetNotFoundError(
                f"process {pid} exited", hint="check it with ps -p PID"
            ) from None
        raise KernelUnsupportedError(
            f"{base}/ksm_stat does not exist", hint="use Linux 6.4 or later built with CONFIG_KSM"
        ) from None
    except CapturePermissionError as exc:
        raise CapturePermissionError(
            f"not allowed to read {base}/ksm_stat", hint="run as root or as the process's owner"
        ) from exc
    stat = {k: int(v) for k, v in parse_ksm_stat(text).items()}
    if "ksm_merge_any" not in stat:
        raise KernelUnsupportedError(
            f"{base}/ksm_stat has no ksm_merge_any line",
            hint="use Linux 6.4 or later (PR_SET_MEMORY_MERGE)",
        )
    comm = procfs.comm(pid) or "?"
    return MergeState(
        pid=pid,
        comm=comm,
        merge_any=bool(stat["ksm_merge_any"]),
        mergeable=bool(stat.get("ksm_mergeable", 0)),
        stat=stat,
    )
