"""ksmd's clock: jiffies, the timer wheel, the batch period, and the scan-time advisor.

All model time is integer nanoseconds so that both engines compute identical timelines.
ksmd's CPU share on a busy host (a batch's CPU stretched into wall time) is
docs/busy-host.md; the batch period and the advisor are docs/kernel-semantics.md §4.4 and §8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence

NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000

_WHEEL_LEVEL_BITS = 6  # 64 buckets per level
_WHEEL_CLK_SHIFT = 3  # each level is 8x coarser


def msecs_to_jiffies(ms: int, hz: int) -> int:
    """The kernel's msecs_to_jiffies: round up to whole jiffies."""
    return -(-ms * hz // 1000)


def slept_jiffies(requested: int) -> int:
    """Jiffies a ``schedule_timeout(requested)`` really sleeps (timer-wheel rounding, §4.4).

    Below 63 jiffies the sleep is ``requested + 1``; from level L of the wheel on
    (granularity ``8**L``), the expiry is rounded up to the next bucket boundary:
    ``g * (requested // g + 1)``. Checked on this kernel: 248 ms -> 0.252 s,
    252 -> 0.256, 256 -> 0.288, 300 -> 0.320, 500 -> 0.512, 1000 -> 1.024 (HZ=250).
    """
    if requested <= 0:
        return 0
    level = 0
    start = (1 << _WHEEL_LEVEL_BITS) - 1  # 63
    while requested >= start:
        level += 1
        start = ((1 << _WHEEL_LEVEL_BITS) - 1) << (level * _WHEEL_CLK_SHIFT)
    gran = 1 << (level * _WHEEL_CLK_SHIFT)
    return gran * (requested // gran + 1)


def sleep_ns(sleep_ms: int, hz: int) -> int:
    """Nanoseconds ksmd sleeps between batches for ``sleep_millisecs`` at ``hz``."""
    return slept_jiffies(msecs_to_jiffies(sleep_ms, hz)) * NS_PER_S // hz


def tick_ns(hz: int) -> int:
    """One jiffy in nanoseconds."""
    return NS_PER_S // hz


def next_batch_ns(t_ns: int, wall_ns: int, sleep_ns: int, tick_ns: int) -> int:
    """When the batch after one that started at ``t_ns`` and lasted ``wall_ns`` starts
    (docs/kernel-semantics.md §4.4, "A batch's CPU hides inside the tick").

    ksmd wakes on a tick; its timed sleep counts whole jiffies from the jiffy in which the
    batch ended: a batch shorter than a tick adds nothing to the period, a longer one a whole
    tick per tick it crosses. ``sleep_ns`` is the slept jiffies (:func:`sleep_ns`) plus the
    profile's wake-up latency, a delay every period has on top (measured: none on an idle
    host, about 1 ms while a replay ran on the other of two CPUs). ``tick_ns`` 1 gives the
    additive period, ``wall_ns + sleep_ns``: what ksmd does without a timed sleep
    (``sleep_millisecs`` 0, where the next batch follows at once). Both engines compute this
    (the fast one compiled, and in the steady fast-forward vectorized)."""
    return t_ns + sleep_ns + wall_ns // tick_ns * tick_ns


@dataclass
class AdvisorState:
    """The scan-time advisor's context (``advisor_ctx`` in mm/ksm.c)."""

    change: int = 0
    scan_time_s: int = 0
    cpu_time_ns: int = 0
    start_scan_ns: int = 0


def advisor_step(
    ctx: AdvisorState,
    *,
    pages_to_scan: int,
    now_ns: int,
    ksmd_cpu_ns: int,
    target_scan_time_s: int,
    max_cpu: int,
    max_pages: int,
    min_cpu: int = 10,
    ewma_weight: int = 30,
) -> tuple[int, int, int]:
    """One ``scan_time_advisor()`` run at the end of a full scan (integer arithmetic, §8).

    Returns ``(new_pages_to_scan, scan_time_s, cpu_percent)`` and updates ``ctx``.
    """
    scan_time = (now_ns - ctx.start_scan_ns) // NS_PER_MS // 1000
    scan_time = scan_time or 1
    cpu_diff_ms = (ksmd_cpu_ns - ctx.cpu_time_ns) // 1000 // 1000
    cpu_percent = (cpu_diff_ms * 100) // (scan_time * 1000) or 1
    last = ctx.scan_time_s or scan_time
    factor = (target_scan_time_s * 100 // scan_time) or 1
    change = (scan_time * 100 // last) or 1
    change = ((100 - ewma_weight) * ctx.change + ewma_weight * change) // 100
    pages = pages_to_scan * 100 // factor
    pages = pages * change // 100
    per_page_cost = (pages_to_scan // cpu_percent) or 1
    pages = min(pages, per_page_cost * max_cpu)
    pages = max(pages, per_page_cost * min_cpu)
    pages = min(pages, max_pages)
    ctx.change, ctx.scan_time_s, ctx.cpu_time_ns = change, scan_time, ksmd_cpu_ns
    return pages, scan_time, cpu_percent


# ---------------------------------------------------------------------- ksmd on a busy host

#: CFS load weight of each nice level, -20 to 19 (the kernel's ``sched_prio_to_weight``,
#: kernel/sched/core.c; docs/busy-host.md §1): nice 0 weighs 1024 and each level ~1.25x less.
SCHED_PRIO_TO_WEIGHT: tuple[int, ...] = (
    88761, 71755, 56483, 46273, 36291,
    29154, 23254, 18705, 14949, 11916,
    9548, 7620, 6100, 4904, 3906,
    3121, 2501, 1991, 1586, 1277,
    1024, 820, 655, 526, 423,
    335, 272, 215, 172, 137,
    110, 87, 70, 56, 45,
    36, 29, 23, 18, 15,
)  # fmt: skip
#: ksmd is created at nice 5 (``set_user_nice(current, 5)`` in mm/ksm.c).
KSMD_NICE = 5
NICE_0_WEIGHT = 1024
#: The share is carried as an integer in parts per million so that both engines stretch
#: batches by the same integer arithmetic.
SHARE_ONE_PPM = 1_000_000

LoadSource = Literal["measured", "given", "assumed"]


def nice_weight(nice: int) -> int:
    """CFS weight of a task at ``nice`` (-20..19)."""
    if not -20 <= nice <= 19:
        raise ValueError(f"nice {nice} outside -20..19")
    return SCHED_PRIO_TO_WEIGHT[nice + 20]


@dataclass(frozen=True)
class HostLoad:
    """The CPU load ksmd competes with, and where that figure came from.

    ``runnable_per_cpu`` is the mean number of *other* runnable tasks (nice 0) per CPU
    beside ksmd: 0 is an idle host, 1 a host whose every CPU runs one busy task, 6 a host
    like the live runs of docs/live-validation.md. ``source`` says whether the trace
    measured it (``measured``), the user gave it (``given``) or nothing said (``assumed``).
    """

    runnable_per_cpu: float
    source: LoadSource
    detail: str = ""
    busy_share: float | None = None
    """Busy share of all CPUs over the recorded intervals (measured loads only)."""

    def __post_init__(self) -> None:
        if not (self.runnable_per_cpu >= 0 and math.isfinite(self.runnable_per_cpu)):
            raise ValueError(
                f"runnable tasks per CPU must be finite and >= 0, got {self.runnable_per_cpu}"
            )

    @classmethod
    def idle(cls, detail: str = "no load recorded: an idle host assumed") -> HostLoad:
        """No other runnable task: ksmd gets a whole CPU whenever it wants one."""
        return cls(0.0, "assumed", detail)

    @classmethod
    def given(cls, runnable_per_cpu: float) -> HostLoad:
        """A load the user asked for (``--host-load``)."""
        return cls(
            float(runnable_per_cpu),
            "given",
            f"{runnable_per_cpu:g} other runnable tasks per CPU, as given",
        )

    def share_ppm(self, contention: float) -> int:
        """ksmd's CPU share under this load, ppm (see :func:`ksmd_cpu_share`)."""
        return share_to_ppm(ksmd_cpu_share(self.runnable_per_cpu, contention=contention))

    def to_dict(self) -> dict[str, float | str | None]:
        """JSON-ready dict."""
        return {
            "runnable_per_cpu": self.runnable_per_cpu,
            "source": self.source,
            "detail": self.detail,
            "busy_share": self.busy_share,
        }


def ksmd_cpu_share(
    runnable_per_cpu: float, *, contention: float = 1.0, nice: int = KSMD_NICE
) -> float:
    """Share of a CPU ksmd gets while it has work, against ``runnable_per_cpu`` other tasks.

    CFS (EEVDF since 6.6) divides a CPU among its runnable tasks in proportion to their
    weights, so a nice-5 ksmd beside ``x`` nice-0 tasks gets ``335 / (335 + 1024 x)``.
    ``contention`` (the cost profile's ``sched_contention``) is how much of that
    competition ksmd really meets: a task that sleeps between short bursts wakes with its
    lag cleared and is placed on the less loaded CPU, so on the reference machine ksmd met
    0.4 of the runnable tasks the host reported (docs/busy-host.md §2). 1.0 is the pure
    proportional share.
    """
    if contention < 0 or runnable_per_cpu < 0:
        raise ValueError("load and contention must be >= 0")
    w = nice_weight(nice)
    return w / (w + NICE_0_WEIGHT * contention * runnable_per_cpu)


def share_to_ppm(share: float) -> int:
    """A share in (0, 1] as integer parts per million (at least 1)."""
    return max(1, min(SHARE_ONE_PPM, round(share * SHARE_ONE_PPM)))


def stretch_ns(cpu_ns: int, share_ppm: int) -> int:
    """Wall time a burst of ``cpu_ns`` CPU takes at a share of ``share_ppm`` (rounded up)."""
    if share_ppm >= SHARE_ONE_PPM:
        return cpu_ns
    return -(-cpu_ns * SHARE_ONE_PPM // share_ppm)


def cpu_of_wall_ns(wall_ns: int, share_ppm: int) -> int:
    """CPU time inside ``wall_ns`` of stretched work (the inverse of :func:`stretch_ns`)."""
    if share_ppm >= SHARE_ONE_PPM:
        return wall_ns
    return wall_ns * share_ppm // SHARE_ONE_PPM


class _IntervalLike(Protocol):
    @property
    def length_s(self) -> float | None: ...
    @property
    def runnable_mean(self) -> float | None: ...
    @property
    def cpus_online(self) -> int | None: ...
    @property
    def host_cpu_busy_share(self) -> float | None: ...


def recorded_load(intervals: Sequence[_IntervalLike]) -> HostLoad | None:
    """The load a version-2 trace recorded: the time-weighted mean over its intervals.

    ``runnable_mean`` is the mean of ``procs_running`` (``/proc/stat``) over an interval;
    the capture's own sampler is one of them when it reads the file, so one task is taken
    off before dividing by the CPUs. ``None`` when no interval recorded a load (version-1
    traces, or a capture too short to have an interval).
    """
    total_s = weighted = busy = 0.0
    busy_s = 0.0
    for iv in intervals:
        if not iv.length_s or iv.runnable_mean is None or not iv.cpus_online:
            continue
        x = max(0.0, iv.runnable_mean - 1.0) / iv.cpus_online
        total_s += iv.length_s
        weighted += x * iv.length_s
        if iv.host_cpu_busy_share is not None:
            busy += iv.host_cpu_busy_share * iv.length_s
            busy_s += iv.length_s
    if total_s <= 0:
        return None
    x = weighted / total_s
    return HostLoad(
        x,
        "measured",
        f"{x:.2f} other runnable tasks per CPU, recorded by the capture over {total_s:.1f} s",
        busy_share=busy / busy_s if busy_s else None,
    )
