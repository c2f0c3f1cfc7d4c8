"""Stop ksmd at the end of a chosen full scan, from a process of its own.

Catching the end of a full scan is a race: after its last batch ksmd sleeps
``sleep_millisecs`` (one jiffy at least) before it starts the next scan, and whoever wants
the counters of exactly that scan must see ``full_scans`` move and write ``run=0`` within
that sleep. Polling from the caller's process loses the race whenever the caller is off the
CPU for longer: another of its threads holding the GIL, a garbage collection of a large heap,
or the scheduler on a busy host. CI saw ksmd finish scan 9 while the caller waited for the
end of scan 6 (100 ms sleeps).

So the poll runs in a small child (``python -m planner.kernel.scanstop PARENT_PID ROOT``)
that imports only the standard library, holds no lock of the caller, asks for
``SCHED_FIFO`` priority 1 when it may (root), and sleeps ``poll_s`` between reads. One line
in, one line out on its standard input and output:

=========================================  ============================================
``S <target> <timeout_s> <poll_s>``        write ``run=1``, poll ``full_scans`` until it
                                           reaches ``target``, write ``run=0`` (which
                                           waits for a batch in progress) and answer
                                           ``ok <seen> <after> <gap_ns>``: ``full_scans``
                                           when seen at the target and after the stop,
                                           and the time from the last read below the
                                           target to the end of the stop; or, with no
                                           target by ``timeout_s``, stop and answer
                                           ``timeout <full_scans>``
``X``                                      exit
=========================================  ============================================

Errors are answered ``err <text>``. The child dies with its parent (``PR_SET_PDEATHSIG``)
and when its standard input reaches end-of-file; ksmd's knobs are restored by the parent's
:class:`~planner.kernel.sysfs.KsmLease` (or, if the parent was killed, by the next lease).
The caller side is :class:`ScanStopper`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

PR_SET_PDEATHSIG: Final = 1
#: Priority asked for the poll (the lowest real-time one: above every normal task, ksmd too).
FIFO_PRIORITY: Final = 1

# ============================================================================== the child


def _read_int(path: str) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return int(os.read(fd, 64))
    finally:
        os.close(fd)


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _scan(root: str, target: int, timeout_s: float, poll_s: float) -> str:
    full_scans, run = f"{root}/full_scans", f"{root}/run"
    deadline = time.monotonic() + timeout_s
    _write(run, "1")
    last_below = time.monotonic_ns()
    while True:
        seen = _read_int(full_scans)
        if seen >= target:
            break
        if time.monotonic() > deadline:
            _write(run, "0")
            return f"timeout {_read_int(full_scans)}"
        last_below = time.monotonic_ns()
        time.sleep(poll_s)
    _write(run, "0")  # returns when a batch in progress, if any, has ended
    gap_ns = time.monotonic_ns() - last_below
    return f"ok {seen} {_read_int(full_scans)} {gap_ns}"


def _serve(root: str) -> None:
    for line in sys.stdin:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "X":
            return
        try:
            if parts[0] != "S" or len(parts) != 4:
                raise ValueError(f"unknown command {line.strip()!r}")
            reply = _scan(root, int(parts[1]), float(parts[2]), float(parts[3]))
        except (OSError, ValueError) as exc:
            reply = "err " + " ".join(str(exc).split())
        sys.stdout.write(reply + "\n")
        sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the child: ``python -m planner.kernel.scanstop PARENT_PID ROOT``."""
    args = list(sys.argv[1:] if argv is None else argv)
    parent, root = int(args[0]), args[1]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller handles ^C and ends us
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # the caller died before the prctl
        os._exit(1)
    fifo = "fifo"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(FIFO_PRIORITY))
    except OSError:  # not root (or a container without CAP_SYS_NICE): a normal task
        fifo = "other"
    sys.stdout.write(f"ready {fifo}\n")
    sys.stdout.flush()
    _serve(root)


# ============================================================================== the caller


class ScanStopError(RuntimeError):
    """The child answered an error, died, or did not answer in time."""


@dataclass(frozen=True, slots=True)
class ScanStop:
    """What one :meth:`ScanStopper.run_to` saw.

    ``full_scans_seen`` is ``full_scans`` when the child first saw it at or past the target,
    ``full_scans_after`` after ksmd was stopped (different when a scan completed during the
    stop), ``gap_s`` the time from the child's last read below the target to the end of the
    stop, ``timed_out`` whether the target was not reached in time.
    """

    full_scans_seen: int
    full_scans_after: int
    gap_s: float
    timed_out: bool = False


class ScanStopper:
    """A child process that starts ksmd and stops it at the end of a chosen full scan.

    Use it as a context manager while a :class:`~planner.kernel.sysfs.KsmLease` is held: it
    writes ``run`` only.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = str(root)
        self.policy = ""
        self._popen: subprocess.Popen[str] | None = None

    def __enter__(self) -> ScanStopper:
        from planner.kernel.holder import child_env  # the caller side only

        self._popen = subprocess.Popen(
            [sys.executable, "-m", "planner.kernel.scanstop", str(os.getpid()), self.root],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env=child_env(),
            cwd="/",
        )
        try:
            ready = self._readline(60.0).split()
            if not ready or ready[0] != "ready":
                raise ScanStopError(f"unexpected greeting {' '.join(ready)!r}")
            self.policy = ready[1] if len(ready) > 1 else ""
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """End the child (it stops ksmd only when asked; the lease restores ``run``)."""
        p, self._popen = self._popen, None
        if p is None:
            return
        with contextlib.suppress(OSError, ValueError):
            assert p.stdin is not None
            p.stdin.write("X\n")
            p.stdin.close()
        try:
            p.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        for f in (p.stdout, p.stderr):
            if f is not None:
                f.close()

    def run_to(self, target: int, *, timeout_s: float, poll_s: float = 0.001) -> ScanStop:
        """Start ksmd, stop it once ``full_scans`` reaches ``target`` (or at ``timeout_s``)."""
        p = self._popen
        if p is None or p.stdin is None:
            raise ScanStopError("the scan stopper is not running")
        try:
            p.stdin.write(f"S {int(target)} {float(timeout_s)!r} {float(poll_s)!r}\n")
            p.stdin.flush()
        except OSError as exc:
            raise ScanStopError(f"the scan stopper is gone ({exc})") from exc
        # The child stops ksmd at its own deadline; a batch in progress may take a while more.
        words = self._readline(timeout_s + 60.0).split()
        if words and words[0] == "ok" and len(words) == 4:
            return ScanStop(int(words[1]), int(words[2]), int(words[3]) / 1e9)
        if words and words[0] == "timeout" and len(words) == 2:
            return ScanStop(int(words[1]), int(words[1]), 0.0, timed_out=True)
        raise ScanStopError(" ".join(words[1:]) if words[:1] == ["err"] else f"bad reply {words}")

    def _readline(self, timeout_s: float) -> str:
        p = self._popen
        assert p is not None
        assert p.stdout is not None
        ready, _, _ = select.select([p.stdout], [], [], timeout_s)
        line = p.stdout.readline() if ready else ""
        if not line:
            err = ""
            if p.poll() is not None and p.stderr is not None:
                err = " ".join(p.stderr.read().split())[-300:]
            state = "died" if p.poll() is not None else f"did not answer in {timeout_s:.0f} s"
            raise ScanStopError(f"the scan stopper {state}" + (f": {err}" if err else ""))
        return line


if __name__ == "__main__":
    main()
