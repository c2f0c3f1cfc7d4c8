"""How hard the capture may work: its priority, and a bound on its duty cycle.

A capture competes for CPU with the processes it traces. Lowering its priority alone is not
enough: at nice +10 on a host saturated by 16 busy loops, three snapshots of 22 small
processes took 59-151 s each although they were asked for every 2 s -- a "snapshot" that
spans minutes is no longer a point in time (docs/capture.md §5.3). So the capture is
polite by **bounding its duty cycle** instead:

* each snapshot runs as one *burst*. Where the kernel allows it (root, ``sched_setattr``),
  every thread of the burst runs under ``SCHED_DEADLINE`` with a reservation of
  ``burst_share`` of a CPU (50 ms of every 100 ms by default): the kernel guarantees the
  snapshot that much CPU however busy the host is, and throttles it beyond -- the snapshot
  stays short, and it never takes more than half a CPU per thread from the traced
  processes. Elsewhere the burst runs at the priority the capture was started with;
* between bursts -- waiting, sampling between snapshots, writing -- the capture sits at
  nice +10 (``low``, the default);
* a token bucket over the capture's own CPU time (all its threads, ``CLOCK_PROCESS_CPUTIME``)
  keeps it at most ``cpu_budget`` CPUs on average: tokens accrue at ``cpu_budget`` CPU
  seconds per wall second up to ``window_s`` seconds' worth, work spends them, and when
  they run out the capture sleeps before its next piece of work (the next snapshot starts
  late -- its real start is recorded -- and the sampler between snapshots shrinks its
  coverage to what the budget pays for).

Linux keeps the nice value and the scheduling policy per thread, so every thread that does
capture work calls :meth:`Pacer.apply` before it works; it adopts the pacer's current
setting. Deadline reservations are made with ``SCHED_FLAG_RESET_ON_FORK`` (a thread started
meanwhile begins as an ordinary thread).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

Priority = Literal["idle", "low", "normal"]
PRIORITIES: Final = ("idle", "low", "normal")
LOW_PRIORITY_NICE_STEP: Final = 10
#: Default duty-cycle bound: a quarter of one CPU, averaged over the window.
DEFAULT_CPU_BUDGET: Final = 0.25
MIN_CPU_BUDGET: Final = 0.01
#: Default share of a CPU each capture thread reserves during a snapshot (SCHED_DEADLINE).
DEFAULT_BURST_SHARE: Final = 0.5
BURST_PERIOD_NS: Final = 100_000_000
SCHED_DEADLINE: Final = 6
SCHED_FLAG_RESET_ON_FORK: Final = 0x01
#: ``sched_setattr`` system call numbers (no libc wrapper before glibc 2.41).
_SCHED_SETATTR: Final = {"x86_64": 314, "aarch64": 274, "ppc64le": 355, "s390x": 345}


def set_deadline(share: float, period_ns: int = BURST_PERIOD_NS) -> int:
    """Give the calling thread a ``SCHED_DEADLINE`` reservation of ``share`` of a CPU.

    Returns 0 on success or the ``errno`` (``ENOSYS`` where the call is unknown, ``EPERM``
    without ``CAP_SYS_NICE``, ``EBUSY`` when admission control refuses the bandwidth).
    """
    number = _SCHED_SETATTR.get(platform.machine())
    if number is None:
        return errno.ENOSYS
    runtime = max(1 << 20, int(period_ns * share))
    attr = struct.pack(
        "<IIQiIQQQ",
        48,
        SCHED_DEADLINE,
        SCHED_FLAG_RESET_ON_FORK,
        0,
        0,
        runtime,
        period_ns,
        period_ns,
    )
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(number, 0, ctypes.create_string_buffer(attr, len(attr)), 0) == 0:
        return 0
    return ctypes.get_errno() or errno.EINVAL


@dataclass
class Pacer:
    """Priority and duty cycle of a capture (use as a context manager around the capture).

    Parameters
    ----------
    priority
        ``low``: nice +10 between bursts, the starting nice value during them; ``idle``:
        ``SCHED_IDLE`` throughout (no burst: on a busy host snapshots stretch); ``normal``:
        the starting priority throughout.
    cpu_budget
        CPUs the capture may use on average (0.25: a quarter of one CPU); ``None``: no bound.
    window_s
        How many seconds of budget can be saved up for one burst.
    """

    priority: Priority = "low"
    cpu_budget: float | None = DEFAULT_CPU_BUDGET
    window_s: float = 10.0
    burst_share: float | None = DEFAULT_BURST_SHARE
    """CPU share each thread reserves during a snapshot (``None``: no reservation)."""
    clock: Callable[[], float] = time.perf_counter
    cpu_clock: Callable[[], float] = time.process_time
    sleep: Callable[[float], None] = time.sleep
    throttled_s: float = 0.0
    """Seconds slept because the budget was spent."""
    burst_nice: int | None = None
    """The nice value bursts actually ran at (``None`` before the first burst): the last
    ``fresh`` burst's (a snapshot's), else the first one's."""
    burst_policy: str | None = None
    """``deadline`` when snapshots ran under a SCHED_DEADLINE reservation, else ``nice`` (the
    last ``fresh`` burst's, else the first one's: a write that follows a snapshot at once may
    be refused a reservation and run at the starting nice value)."""
    _tokens: float = field(default=0.0, init=False, repr=False)
    _last_wall: float = field(default=0.0, init=False, repr=False)
    _last_cpu: float = field(default=0.0, init=False, repr=False)
    _base_nice: int = field(default=0, init=False, repr=False)
    _base_policy: int = field(default=0, init=False, repr=False)
    _nice: int | None = field(default=None, init=False, repr=False)
    _idle: bool = field(default=False, init=False, repr=False)
    _deadline: bool = field(default=False, init=False, repr=False)
    _depth: int = field(default=0, init=False, repr=False)
    _low: int | None = field(default=None, init=False, repr=False)
    _generation: int = field(default=0, init=False, repr=False)
    _deadline_ended: float | None = field(default=None, init=False, repr=False)
    """``time.monotonic()`` when the last burst under a deadline reservation ended."""
    _local: threading.local = field(default_factory=threading.local, init=False, repr=False)

    # ------------------------------------------------------------------ priority

    def __enter__(self) -> Pacer:
        self._base_nice = os.getpriority(os.PRIO_PROCESS, 0)
        self._base_policy = os.sched_getscheduler(0)
        if self.priority == "low":
            self._set(nice=min(19, self._base_nice + LOW_PRIORITY_NICE_STEP), idle=False)
        elif self.priority == "idle":
            self._set(nice=None, idle=True)
        self._last_wall, self._last_cpu = self.clock(), self.cpu_clock()
        self._tokens = self._capacity()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            if os.sched_getscheduler(0) != self._base_policy:
                os.sched_setscheduler(0, self._base_policy, os.sched_param(0))
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, self._base_nice)

    def _set(self, *, nice: int | None, idle: bool, deadline: bool = False) -> None:
        self._nice, self._idle, self._deadline = nice, idle, deadline
        self._generation += 1
        self.apply()

    def apply(self) -> None:
        """Give the calling thread the pacer's current scheduling (nice, idle or deadline)."""
        if getattr(self._local, "generation", -1) == self._generation:
            return
        self._local.generation = self._generation
        if self._deadline and self.burst_share is not None:
            if set_deadline(self.burst_share) == 0:
                self._local.deadline = True
                return
            self._deadline = False  # refused once: the other threads do not try again
        if getattr(self._local, "deadline", False) or self._idle:
            self._local.deadline = False
            with contextlib.suppress(OSError):
                policy = os.SCHED_IDLE if self._idle else os.SCHED_OTHER
                os.sched_setscheduler(0, policy, os.sched_param(0))
        if self._nice is not None:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, 0, self._nice)

    @contextlib.contextmanager
    def burst(self, *, fresh: bool = False) -> Iterator[None]:
        """Run a snapshot as a burst (``low`` only): a deadline reservation, else the
        starting nice value; then return to nice +10.

        Bursts nest (and may end in any order): the scheduling changes when the first one
        begins and is restored when the last one ends. A sampled capture runs as one burst
        from its first snapshot to its last interval's end -- its threads sleep between
        passes without using their reservation -- because a reservation given up is
        returned to the kernel only at its deadline, and taking it again every 100 ms
        would be refused.

        ``fresh``: start only once every reservation of an earlier burst has reached its
        deadline (waiting up to one period, :data:`BURST_PERIOD_NS`), so that each thread
        begins with its whole runtime. The kernel keeps a thread's runtime and deadline
        when it leaves ``SCHED_DEADLINE`` and gives them back if it returns before that
        deadline (a thread started meanwhile inherits them too): a snapshot begun right
        after the warm-up's burst would start with what the warm-up left, and a thread
        throttled while it holds the GIL stops every other reader with it
        (docs/capture.md §5.3).
        """
        if self._depth == 0:
            if fresh:
                self._wait_for_fresh_reservations()
            self._low = self._nice
            if self.priority == "low":
                deadline = self.burst_share is not None
                self._set(nice=self._base_nice, idle=False, deadline=deadline)
                on_deadline = os.sched_getscheduler(0) & ~0x40000000 == SCHED_DEADLINE
                policy = "deadline" if on_deadline else "nice"
            else:
                policy = "nice"
            if fresh or self.burst_policy is None:  # what snapshots ran under, not the writes
                self.burst_policy = policy
                self.burst_nice = os.getpriority(os.PRIO_PROCESS, 0)  # +10 without CAP_SYS_NICE
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0 and self.priority == "low":
                if self.burst_policy == "deadline":
                    self._deadline_ended = time.monotonic()
                self._set(nice=self._low, idle=False)

    def _wait_for_fresh_reservations(self) -> None:
        """Sleep until one period has passed since the last deadline burst ended (real
        time: the kernel's clock, not :attr:`clock`, which tests replace)."""
        if self._deadline_ended is None:
            return
        wait_s = self._deadline_ended + BURST_PERIOD_NS / 1e9 - time.monotonic()
        if wait_s > 0:
            time.sleep(wait_s)

    @contextlib.contextmanager
    def later_burst(self) -> Iterator[Callable[[], None]]:
        """A burst started by calling the yielded function and ended when the block exits.

        For work that happens as a context exits (a trace writer finishing its files):
        enter this before that context and call the function just before leaving.
        """
        stack = contextlib.ExitStack()

        def start() -> None:
            stack.enter_context(self.burst())

        with stack:
            yield start

    # ------------------------------------------------------------------ duty cycle

    def reset(self) -> None:
        """Start the budget afresh (full): one-time work before it (loading the compiled
        kernels) is not charged to the capture's duty cycle."""
        self._last_wall, self._last_cpu = self.clock(), self.cpu_clock()
        self._tokens = self._capacity()

    def _capacity(self) -> float:
        return (self.cpu_budget or 0.0) * max(self.window_s, 1.0)

    def _refill(self) -> None:
        wall, cpu = self.clock(), self.cpu_clock()
        if self.cpu_budget is not None:
            earned = (wall - self._last_wall) * self.cpu_budget
            self._tokens = min(self._capacity(), self._tokens + earned) - (cpu - self._last_cpu)
        self._last_wall, self._last_cpu = wall, cpu

    def tokens_s(self) -> float:
        """CPU seconds the capture may spend now without exceeding its budget."""
        self._refill()
        return self._tokens if self.cpu_budget is not None else float("inf")

    def wait_s(self) -> float:
        """Wall seconds until the budget allows more work (0 when it does now)."""
        tokens = self.tokens_s()
        if self.cpu_budget is None or tokens >= 0:
            return 0.0
        return -tokens / self.cpu_budget

    def pay(self, until: float | None = None) -> float:
        """Sleep until the budget allows work again, and at least until ``until``.

        ``until`` is a value of :attr:`clock`. Returns the seconds slept for the budget
        beyond ``until`` (counted in :attr:`throttled_s`).
        """
        now = self.clock()
        planned = max(0.0, (until or now) - now)
        owed = self.wait_s()
        self.sleep(max(planned, owed))  # also when 0: tests hook the pause between snapshots
        extra = max(0.0, owed - planned)
        self.throttled_s += extra
        return extra


__all__ = [
    "DEFAULT_BURST_SHARE",
    "DEFAULT_CPU_BUDGET",
    "LOW_PRIORITY_NICE_STEP",
    "PRIORITIES",
    "Pacer",
    "Priority",
    "set_deadline",
]
