"""The signals a command treats as "stop": one list, and one way to swap their handlers.

SIGINT (^C), SIGTERM (``kill``, a service manager) and SIGHUP (the terminal closed) all
end a command the same way (the CLI turns them into :class:`planner.errors.Interrupted`).
A few steps must not be cut in half by one (the final rename of an output, restoring the
KSM knobs): :func:`signals_deferred` holds them back until the step is done.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

#: The signals that stop a command, in the order their exit codes are documented.
STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def handlers_swapped(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """Handle :data:`STOP_SIGNALS` with ``handler`` for the block; restore the old ones after.

    Only the main thread can set handlers, so elsewhere this does nothing. A signal that was
    ignored when the program started (``nohup``, a background job) stays ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old: dict[signal.Signals, Any] = {}
    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            old[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold :data:`STOP_SIGNALS` back for the block (they are raised again right after it).

    The Python-level handlers are swapped for one that only notes the signal. A thread mask
    (``pthread_sigmask``) would not do: the kernel gives a process-directed signal to any
    thread that does not block it, and pyarrow, numba and the executors start threads.
    """
    pending: list[int] = []

    def note(signum: int, _frame: object) -> None:
        pending.append(signum)

    try:
        with handlers_swapped(note):
            yield
    finally:
        for signum in dict.fromkeys(pending):
            signal.raise_signal(signum)


__all__ = ["STOP_SIGNALS", "handlers_swapped", "signals_deferred"]
