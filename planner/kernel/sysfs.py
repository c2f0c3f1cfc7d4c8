"""Reading ``/sys/kernel/mm/ksm`` and leasing it for a run.

:class:`KsmSysfs` only reads. Writing any KSM knob goes through a :class:`KsmLease`: it takes
the host-wide ksm-planner lock, refuses when another process already uses KSM, saves every
writable knob, resets KSM (``run=2`` then ``run=0``), applies the requested knobs in an order
the kernel accepts, and on exit -- always, also on exceptions and interrupts -- resets KSM
again and writes every saved knob back. Nothing else in ``planner`` writes sysfs.

The saved knobs are also journaled in the lock file until they are restored: a run killed
with SIGKILL (or by the OOM killer) cannot restore anything, so the next lease finds the
journal and puts the host's knobs back before it saves them.

Notes
-----
Kernel rules the write order follows (docs/kernel-semantics.md §6.3, §8):

* ``max_page_sharing`` and ``merge_across_nodes`` can only change while ``pages_shared`` is
  0 (EBUSY otherwise), so they are written after ``run=2``.
* Switching ``advisor_mode`` resets ``pages_to_scan`` (to ``advisor_min_pages_to_scan`` for
  ``scan-time``, to 100 for ``none``), and writing ``pages_to_scan`` while the advisor is on
  fails with EINVAL. So the mode is switched to ``none`` first, the numeric knobs are
  written, and ``scan-time`` is switched on last.
* ``run=2`` resets ``full_scans`` to 0 but never ``pages_scanned`` / ``pages_skipped``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import signal
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from planner._signals import signals_deferred
from planner.capture.procfs import ProcFS
from planner.engine.knobs import KNOBS, spec
from planner.errors import EnvironmentProblem, KernelUnsupportedError, KnobError, KsmBusyError
from planner.kernel.scanstop import ScanStop, ScanStopError, ScanStopper

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from types import FrameType, TracebackType

KSM_SYSFS_ROOT: Final = "/sys/kernel/mm/ksm"
PROC_ROOT: Final = "/proc"
LOCK_NAME: Final = "ksm-planner.lock"
LOCK_DIRS: Final = ("/run/lock", "/tmp")

#: Read-only counters of ``/sys/kernel/mm/ksm`` (kernel names), see docs/kernel-semantics.md §9.1.
COUNTERS: Final = (
    "full_scans",
    "pages_scanned",
    "pages_skipped",
    "pages_shared",
    "pages_sharing",
    "pages_unshared",
    "pages_volatile",
    "ksm_zero_pages",
    "general_profit",
    "stable_node_chains",
    "stable_node_dups",
)

#: Kernel defaults of every knob the kernel has (6.18), from the knob table
#: (:data:`planner.engine.knobs.KNOBS`). A lease applies these, overridden by the requested
#: knobs, so that a run never depends on what the host had configured.
KERNEL_DEFAULTS: Final[Mapping[str, int | str]] = {
    s.sysfs: s.to_sysfs(s.default) for s in KNOBS if s.sysfs is not None
}

#: Knobs that need ``pages_shared == 0`` to change (written right after ``run=2``).
_NEED_EMPTY: Final = tuple(s.sysfs for s in KNOBS if s.sysfs is not None and s.needs_empty)
_ADVISOR_MODES: Final = tuple(str(c) for c in spec("advisor").choices or ())
_SELECTED = re.compile(r"\[([^\]]+)\]")


def parse_knob(name: str, text: str) -> int | str:
    """Parse the text of one sysfs file: an integer, or the selected word of ``[a] b``.

    Examples
    --------
    >>> parse_knob("advisor_mode", "[none] scan-time")
    'none'
    >>> parse_knob("pages_to_scan", "100")
    100
    """
    text = text.strip()
    m = _SELECTED.search(text)
    if m:
        return m.group(1)
    try:
        return int(text)
    except ValueError:
        return text


@dataclass(frozen=True)
class KsmSysfs:
    """Read-only view of ``/sys/kernel/mm/ksm`` (``root`` is a fake tree in tests)."""

    root: str = KSM_SYSFS_ROOT

    @property
    def path(self) -> Path:
        """The sysfs directory."""
        return Path(self.root)

    def available(self) -> bool:
        """Whether the kernel exposes KSM here (``run`` exists)."""
        return (self.path / "run").is_file()

    def names(self) -> list[str]:
        """Every file of the directory, sorted."""
        return sorted(p.name for p in self.path.iterdir() if p.is_file())

    def writable_names(self) -> list[str]:
        """The files the owner may write (the knobs), sorted."""
        return [n for n in self.names() if (self.path / n).stat().st_mode & stat.S_IWUSR]

    def read_text(self, name: str) -> str:
        """The raw text of one file, stripped."""
        return (self.path / name).read_text().strip()

    def read(self, name: str) -> int | str:
        """One file, parsed (:func:`parse_knob`)."""
        return parse_knob(name, self.read_text(name))

    def read_int(self, name: str) -> int:
        """One integer file."""
        return int(self.read_text(name))

    def counters(self) -> dict[str, int]:
        """Every counter of :data:`COUNTERS` the kernel has (older kernels lack some)."""
        out: dict[str, int] = {}
        for name in COUNTERS:
            with contextlib.suppress(FileNotFoundError):
                out[name] = self.read_int(name)
        return out

    def knobs(self) -> dict[str, int | str]:
        """Every writable knob, parsed."""
        return {n: self.read(n) for n in self.writable_names()}

    def snapshot(self) -> dict[str, int | str]:
        """Every file, parsed (counters and knobs), for provenance."""
        return {n: self.read(n) for n in self.names()}


# ------------------------------------------------------------------------- KSM users


def ksm_users(proc_root: str = PROC_ROOT, *, exclude: set[int] | None = None) -> dict[int, str]:
    """Processes that use KSM now: ``pid -> reason``.

    A process uses KSM when its ``ksm_stat`` says ``ksm_mergeable: yes`` or
    ``ksm_merge_any: yes``, or it has rmap items, merging pages or KSM zero pages.
    """
    procfs = ProcFS(proc_root)
    exclude = exclude or set()
    users: dict[int, str] = {}
    for pid in procfs.list_pids():
        if pid in exclude:
            continue
        stat_ = procfs.ksm_stat(pid)  # empty: gone, a kernel thread, or no ksm_stat
        reasons = [k for k in ("ksm_mergeable", "ksm_merge_any") if stat_.get(k) is True] + [
            k
            for k in ("ksm_rmap_items", "ksm_merging_pages", "ksm_zero_pages")
            if stat_.get(k, 0) > 0
        ]
        if reasons:
            users[pid] = ", ".join(reasons)
    return users


# ------------------------------------------------------------------------- the lease


def default_lock_path() -> Path:
    """``/run/lock/ksm-planner.lock`` (or under ``/tmp`` where ``/run/lock`` is missing)."""
    for d in LOCK_DIRS:
        if os.path.isdir(d) and os.access(d, os.W_OK):
            return Path(d, LOCK_NAME)
    return Path(LOCK_DIRS[-1], LOCK_NAME)


class _Interrupted(KeyboardInterrupt):
    """SIGTERM/SIGHUP during a lease, turned into an exception so that knobs are restored."""


class LeasedScanStopper:
    """:class:`~planner.kernel.scanstop.ScanStopper` under a lease, its failures mapped to
    :class:`~planner.errors.EnvironmentProblem`."""

    def __init__(self, stopper: ScanStopper) -> None:
        self._stopper = stopper

    def run_to(self, target: int, *, timeout_s: float, poll_s: float = 0.001) -> ScanStop:
        """Start ksmd and stop it once ``full_scans`` reaches ``target`` (or at ``timeout_s``)."""
        try:
            return self._stopper.run_to(target, timeout_s=timeout_s, poll_s=poll_s)
        except ScanStopError as exc:
            raise EnvironmentProblem(
                f"could not start and stop ksmd around full scan {target}: {exc}",
                hint="check that the Python running ksm-planner can start a child process",
            ) from exc


class KsmLease:
    """Exclusive, self-restoring use of ``/sys/kernel/mm/ksm``.

    Entering takes the lock, refuses when another process uses KSM, recovers the knobs of a
    run that died holding the lease, saves every writable knob, resets KSM and applies the
    knobs. Leaving (always) resets KSM and restores every saved knob.

    Parameters
    ----------
    knobs
        Knobs to apply (sysfs names). Knobs not named get their kernel default
        (:data:`KERNEL_DEFAULTS`), so that a run does not depend on the host's settings.
    sysfs
        The sysfs view (a fake tree in tests).
    lock_path
        The lock file (default :func:`default_lock_path`).
    proc_root
        Where to look for other KSM users.
    check_users
        Refuse when another process uses KSM (default). Only tests on fake trees turn it off.
    require_root
        Refuse unless running as root (default).

    Examples
    --------
    >>> with KsmLease({"pages_to_scan": 1000, "sleep_millisecs": 100}) as lease:  # doctest: +SKIP
    ...     lease.start()
    """

    def __init__(
        self,
        knobs: Mapping[str, int | str] | None = None,
        *,
        sysfs: KsmSysfs | None = None,
        lock_path: str | os.PathLike[str] | None = None,
        proc_root: str = PROC_ROOT,
        check_users: bool = True,
        require_root: bool = True,
    ) -> None:
        self.sysfs = sysfs or KsmSysfs()
        self.knobs = dict(knobs or {})
        self.lock_path = Path(lock_path) if lock_path is not None else default_lock_path()
        self.proc_root = proc_root
        self.check_users = check_users
        self.require_root = require_root
        self.saved: dict[str, str] = {}
        self.recovered: dict[str, str] | None = None
        """Knobs restored on entry from a run that died holding the lease (SIGKILL, OOM)."""
        self.applied: dict[str, int | str] = {}
        self._lock_fd: int | None = None
        self._active = False
        self._old_handlers: dict[int, object] = {}

    # -- entering ---------------------------------------------------------------------------

    def __enter__(self) -> KsmLease:
        if self._active:
            raise RuntimeError("a KsmLease cannot be entered twice")
        self._check_environment()
        self._acquire_lock()
        try:
            if self.check_users:
                self._check_users()
            journal = self._read_journal()
            if journal is not None:  # a run died without restoring: put the host's knobs back
                self._restore(journal)
                self.recovered = journal
            self.saved = {n: self.sysfs.read_text(n) for n in self.sysfs.writable_names()}
            self._write_journal()
            self._active = True
            self._install_signal_handlers()
            self.reset(self.knobs)
        except BaseException:
            try:
                if self._active:
                    self._restore(self.saved)
                    self._clear_journal()
            finally:
                self._active = False
                self._uninstall_signal_handlers()
                self._release_lock()
            raise
        return self

    def _check_environment(self) -> None:
        if not self.sysfs.available():
            raise KernelUnsupportedError(
                f"{self.sysfs.root} does not exist: this kernel has no KSM",
                hint="use a kernel built with CONFIG_KSM=y",
            )
        if self.require_root and os.geteuid() != 0:
            raise KernelUnsupportedError(
                f"writing {self.sysfs.root} needs root", hint="run as root (for example with sudo)"
            )
        if not os.access(self.sysfs.path / "run", os.W_OK):
            raise KernelUnsupportedError(
                f"{self.sysfs.root}/run is not writable (read-only sysfs?)",
                hint="run on a host, or a container with a writable /sys/kernel/mm/ksm",
            )

    def _acquire_lock(self) -> None:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            try:
                holder = os.pread(fd, 64, 0).decode(errors="replace").split("\n")[0] or "?"
            finally:
                os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise KsmBusyError(
                    f"another ksm-planner run (pid {holder}) holds the KSM lock {self.lock_path}",
                    hint="wait for it to finish; KSM is global to the host",
                ) from None
            raise
        self._lock_fd = fd

    def _read_journal(self) -> dict[str, str] | None:
        """The knobs saved by a run that died holding the lease (SIGKILL, OOM), if any."""
        assert self._lock_fd is not None
        text = os.pread(self._lock_fd, 1 << 16, 0).decode(errors="replace")
        _pid, _, rest = text.partition("\n")
        try:
            doc = json.loads(rest) if rest.strip() else None
        except ValueError:
            return None
        saved = doc.get("saved") if isinstance(doc, dict) else None
        if not isinstance(saved, dict):
            return None
        return {str(k): str(v) for k, v in saved.items()}

    def _write_journal(self) -> None:
        """Record our pid and the saved knobs in the lock file until they are restored."""
        assert self._lock_fd is not None
        data = f"{os.getpid()}\n{json.dumps({'saved': self.saved}, sort_keys=True)}\n".encode()
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, data, 0)
        os.fsync(self._lock_fd)

    def _clear_journal(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._lock_fd, 0)

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def _check_users(self) -> None:
        users = ksm_users(self.proc_root, exclude={os.getpid()})
        if users:
            shown = ", ".join(
                f"{pid} ({ProcFS(self.proc_root).comm(pid) or '?'}: {why})"
                for pid, why in sorted(users.items())[:5]
            )
            more = f" and {len(users) - 5} more" if len(users) > 5 else ""
            raise KsmBusyError(
                f"KSM is in use by other processes: {shown}{more}",
                hint="stop them first; a run would unmerge their pages and pollute the counters",
            )

    def preflight(self) -> None:
        """Check now what entering would check (KSM, root, other users), without the lock.

        For commands that do long work before they take the lease.
        """
        self._check_environment()
        if self.check_users:
            self._check_users()

    # -- writing ----------------------------------------------------------------------------

    def write(self, name: str, value: int | str) -> None:
        """Write one knob (only while the lease is held)."""
        if not self._active:
            raise RuntimeError("KSM knobs can only be written while the lease is held")
        self._write(name, value)

    def _write(self, name: str, value: int | str) -> None:
        path = self.sysfs.path / name
        try:
            with open(path, "w") as f:
                f.write(str(value))
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EBUSY, errno.ERANGE):
                raise KnobError(
                    f"the kernel refused {name}={value} ({os.strerror(exc.errno or 0)})",
                    hint="check the value against Documentation/admin-guide/mm/ksm.rst",
                ) from exc
            if exc.errno == errno.ENOENT:
                raise KnobError(
                    f"this kernel has no KSM knob {name!r}", hint="drop that option"
                ) from exc
            raise

    def start(self) -> None:
        """``run=1``: let ksmd scan."""
        self.write("run", 1)

    def stop(self) -> None:
        """``run=0``: stop ksmd (it finishes the batch in progress first)."""
        self.write("run", 0)

    @contextlib.contextmanager
    def scan_stopper(self) -> Iterator[LeasedScanStopper]:
        """A process that runs ksmd to the end of a chosen full scan and stops it there.

        Catching a scan's end from this process fails whenever it is off the CPU for longer
        than ksmd's sleep (see :mod:`planner.kernel.scanstop`); use this instead of
        :meth:`start` and a poll when exactly one scan's counters matter.
        """
        if not self._active:
            raise RuntimeError("ksmd can only be driven while the lease is held")
        try:
            stopper = ScanStopper(self.sysfs.path).__enter__()
        except (OSError, ScanStopError) as exc:
            raise EnvironmentProblem(
                f"could not start the process that stops ksmd between full scans: {exc}",
                hint="check that the Python running ksm-planner can start a child process",
            ) from exc
        try:
            yield LeasedScanStopper(stopper)
        finally:
            stopper.close()

    def reset(self, knobs: Mapping[str, int | str] | None = None) -> dict[str, int | str]:
        """Unmerge everything (``run=2``), stop (``run=0``), apply defaults + ``knobs``.

        Returns the knob values read back after applying.
        """
        if not self._active:
            raise RuntimeError("KSM can only be reset while the lease is held")
        target = self._target(knobs or {})
        self._write("run", 2)
        self._write("run", 0)
        self._apply(target)
        self.applied = {n: self.sysfs.read(n) for n in target}
        return dict(self.applied)

    def _target(self, knobs: Mapping[str, int | str]) -> dict[str, int | str]:
        writable = set(self.sysfs.writable_names())
        # A knob this kernel lacks (merge_across_nodes without NUMA, smart_scan before 6.7)
        # behaves as its default there: asking for the default is fine, anything else is not.
        knobs = {
            k: v
            for k, v in knobs.items()
            if k in writable or str(v) != str(KERNEL_DEFAULTS.get(k, f"{v}?"))
        }
        unknown = sorted(set(knobs) - writable - {"run"})
        if unknown:
            raise KnobError(
                f"unknown KSM knob(s): {', '.join(unknown)}",
                hint=f"known: {', '.join(sorted(writable))}",
            )
        if "run" in knobs:
            raise KnobError("'run' is not a knob of a lease", hint="use start()/stop()")
        mode = knobs.get("advisor_mode", "none")
        if mode not in _ADVISOR_MODES:
            raise KnobError(
                f"unknown advisor_mode {mode!r}", hint=f"use one of {', '.join(_ADVISOR_MODES)}"
            )
        if mode != "none" and "pages_to_scan" in knobs:
            raise KnobError(
                "pages_to_scan cannot be written while the scan-time advisor is on",
                hint="set advisor_min_pages_to_scan, the advisor's starting value, instead",
            )
        target = {k: v for k, v in KERNEL_DEFAULTS.items() if k in writable}
        target.update(knobs)
        if mode != "none":
            target.pop("pages_to_scan", None)
        return target

    def _apply(self, target: Mapping[str, int | str]) -> None:
        """Write ``target`` in an order the kernel accepts (KSM must be empty: after run=2)."""
        current = {n: self.sysfs.read(n) for n in target if n != "advisor_mode"}
        if "advisor_mode" in target and self.sysfs.read("advisor_mode") != "none":
            self._write("advisor_mode", "none")  # also resets pages_to_scan to 100
            current["pages_to_scan"] = self.sysfs.read("pages_to_scan")
        order = [n for n in _NEED_EMPTY if n in target] + sorted(
            n for n in target if n not in _NEED_EMPTY and n != "advisor_mode"
        )
        for name in order:
            if str(current.get(name)) != str(target[name]):
                self._write(name, target[name])
        if target.get("advisor_mode", "none") != "none":
            self._write("advisor_mode", target["advisor_mode"])

    # -- leaving ----------------------------------------------------------------------------

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            with signals_deferred():
                self._restore(self.saved)
                self._clear_journal()  # kept when restoring failed: the next lease retries
        finally:
            self._active = False
            self._uninstall_signal_handlers()
            self._release_lock()

    def _restore(self, saved_text: Mapping[str, str]) -> None:
        """run=2, run=0, then every saved knob (advisor mode last but one, run last)."""
        problems: list[str] = []

        def attempt(name: str, value: str) -> None:
            try:
                self._write(name, value)
            except (OSError, KnobError) as err:
                problems.append(f"{name}={value}: {err}")

        attempt("run", "2")
        attempt("run", "0")
        writable = set(self.sysfs.writable_names())
        saved = {n: str(parse_knob(n, v)) for n, v in saved_text.items() if n in writable}
        saved_mode = saved.pop("advisor_mode", None)
        saved_run = saved.pop("run", "0")
        if saved_mode is not None and self.sysfs.read("advisor_mode") != "none":
            attempt("advisor_mode", "none")
        for name in [n for n in _NEED_EMPTY if n in saved] + sorted(
            n for n in saved if n not in _NEED_EMPTY
        ):
            if str(self.sysfs.read(name)) != saved[name]:
                attempt(name, saved[name])
        if saved_mode is not None and saved_mode != "none":
            attempt("advisor_mode", saved_mode)
        if saved_run != "0":
            attempt("run", saved_run)
        if problems:
            raise KernelUnsupportedError(
                "could not restore every KSM knob: " + "; ".join(problems),
                hint=f"check {self.sysfs.root} by hand",
            )

    # -- signals ----------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) is signal.SIG_DFL:
                self._old_handlers[sig] = signal.signal(sig, _raise_interrupted)

    def _uninstall_signal_handlers(self) -> None:
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
        self._old_handlers.clear()


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    del frame
    raise _Interrupted(f"signal {signum}")
