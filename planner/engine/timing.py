"""ksmd's clock: jiffies, the timer wheel, the batch period, and the scan-time advisor.

All model time is integer nanoseconds so that both engines compute identical timelines.
See docs/kernel-semantics.md §4.4 (batch period) and §8 (advisor).
"""

from __future__ import annotations

from dataclasses import dataclass

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
