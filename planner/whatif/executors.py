"""Where what-if tasks run: any :class:`concurrent.futures.Executor`.

* :func:`local_executor` -- a process pool sized to the cores (the default);
* :class:`InlineExecutor` -- runs each task at once in the calling thread (one core,
  debugging, tests);
* :func:`dask_executor` -- a Dask cluster: ``distributed.Client(address).get_executor()``
  (optional extra ``dist``). A scheduler that does not answer within the timeout, or has
  no worker, is a :class:`~planner.errors.ClusterError` (exit code 3).

Tasks are small specs (paths, names, knobs); every worker reads the trace itself, so the
trace must be at the same path on the workers (a shared filesystem on a real cluster).

Stopping: the local pool's workers ignore SIGINT (the parent handles Ctrl-C for the whole
process group), die on SIGTERM and SIGHUP, and get SIGTERM when the parent dies
(``PR_SET_PDEATHSIG``). When the pool is shut down with unfinished work
(``shutdown(cancel_futures=True)`` after an error or a signal), running workers are
terminated and joined instead of being waited for, so nothing keeps running or holding the
parent's output pipes after it has exited.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import threading
import weakref
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from planner._deps import require
from planner.errors import ClusterError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

P = ParamSpec("P")
T = TypeVar("T")

#: Seconds to wait for a Dask scheduler (and a first worker) before giving up.
DEFAULT_CLUSTER_TIMEOUT_S = 10.0
#: Seconds a terminated worker gets to exit before it is killed.
WORKER_EXIT_TIMEOUT_S = 5.0
_PR_SET_PDEATHSIG = 1


class InlineExecutor(Executor):
    """An executor that runs every task immediately, in the caller's thread."""

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Run ``fn(*args, **kwargs)`` now; return a finished future."""
        fut: Future[T] = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except Exception as exc:  # a signal or exit propagates now, not at .result()
            fut.set_exception(exc)
        return fut


def default_workers() -> int:
    """Cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _worker_init(parent_pid: int | None) -> None:
    """Signals of a local pool worker: see the module docstring.

    ``parent_pid``: the process the worker was forked from (``None`` under ``forkserver``,
    whose workers are children of the fork server), checked once the death signal is set.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)  # the parent died before the line above: follow it


class LocalPool(ProcessPoolExecutor):
    """A process pool whose shutdown with unfinished work terminates the workers."""

    def __init__(self, max_workers: int, mp_context: Any) -> None:
        forked_here = mp_context.get_start_method() != "forkserver"
        super().__init__(
            max_workers=max_workers,
            mp_context=mp_context,
            initializer=_worker_init,
            initargs=(os.getpid() if forked_here else None,),
        )
        self._submitted: weakref.WeakSet[Future[Any]] = weakref.WeakSet()
        self._submitted_lock = threading.Lock()

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Submit ``fn(*args, **kwargs)`` to a worker."""
        fut = super().submit(fn, *args, **kwargs)
        with self._submitted_lock:
            self._submitted.add(fut)
        return fut

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Shut down; with ``cancel_futures`` and work still running, terminate the workers."""
        with self._submitted_lock:
            unfinished = any(not f.done() for f in self._submitted)
        if not (cancel_futures and unfinished):
            super().shutdown(wait=wait, cancel_futures=cancel_futures)
            return
        processes = list((getattr(self, "_processes", None) or {}).values())
        manager = getattr(self, "_executor_manager_thread", None)
        super().shutdown(wait=False, cancel_futures=True)
        for p in processes:
            with contextlib.suppress(Exception):
                p.terminate()
        for p in processes:
            with contextlib.suppress(Exception):
                p.join(WORKER_EXIT_TIMEOUT_S)
                if p.is_alive():
                    p.kill()
                    p.join()
        if wait:
            super().shutdown(wait=True)
        # The pool's manager thread closes its wake-up pipe as it ends. Python 3.11's exit
        # hook (concurrent.futures.process._python_exit) writes to that pipe without the
        # pool's lock: if the thread closes it meanwhile, the exit prints an OSError
        # traceback (EBADF) after the command's own message (seen once in the signal tests).
        # With the workers gone the thread ends at once; waiting for it here closes the
        # pipe before the exit hook can look at it.
        if manager is not None:
            with contextlib.suppress(Exception):
                manager.join(WORKER_EXIT_TIMEOUT_S)


def local_executor(max_workers: int | None = None, *, start_method: str = "fork") -> Executor:
    """A process pool with ``max_workers`` processes (default: the cores), or inline for 1.

    ``start_method`` ``fork`` (the default) starts workers fast and works from scripts and
    notebooks without a ``if __name__ == "__main__"`` guard (Arrow re-creates its thread
    pools in a forked child); ``forkserver`` and ``spawn`` start clean interpreters but need
    that guard in the main script.
    """
    n = max_workers or default_workers()
    if n <= 1:
        return InlineExecutor()
    ctx = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        ctx.set_forkserver_preload(["planner.whatif.tasks"])
    return LocalPool(max_workers=n, mp_context=ctx)


@contextlib.contextmanager
def dask_executor(
    address: str, *, timeout_s: float = DEFAULT_CLUSTER_TIMEOUT_S
) -> Iterator[Executor]:
    """An executor on the Dask cluster at ``address`` (``tcp://host:8786``), closed on exit.

    Raises
    ------
    MissingExtraError
        ``distributed`` is not installed (``pip install 'ksm-planner[dist]'``).
    ClusterError
        The scheduler does not answer, or has no worker, within ``timeout_s``.
    """
    distributed = require(
        "distributed", extra="dist", purpose="running what-if scenarios on a Dask cluster"
    )
    try:
        client = distributed.Client(address, timeout=f"{timeout_s}s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ClusterError(
            f"the Dask scheduler at {address} did not answer within {timeout_s:g} s "
            f"({_short(exc)})",
            hint="check the address and that the scheduler runs, "
            "or drop --scheduler to run locally",
        ) from None
    try:
        try:
            client.wait_for_workers(1, timeout=timeout_s)
        except (OSError, TimeoutError) as exc:
            raise ClusterError(
                f"the Dask scheduler at {address} has no worker ({_short(exc)})",
                hint="start workers with 'dask worker ADDRESS'",
            ) from None
        yield client.get_executor()
    finally:
        with contextlib.suppress(Exception):
            client.close()


def is_remote(executor: Executor) -> bool:
    """Whether ``executor`` runs tasks on a Dask cluster."""
    return type(executor).__module__.split(".")[0] == "distributed"


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def describe(executor: Executor) -> dict[str, Any]:
    """What ran the tasks, for provenance."""
    kind = type(executor).__name__
    info: dict[str, Any] = {"executor": kind}
    workers = getattr(executor, "_max_workers", None)
    if workers:
        info["workers"] = workers
    return info


__all__ = [
    "DEFAULT_CLUSTER_TIMEOUT_S",
    "InlineExecutor",
    "LocalPool",
    "dask_executor",
    "default_workers",
    "describe",
    "is_remote",
    "local_executor",
]
