"""The capture's duty cycle: a token bucket over its own CPU time."""

from __future__ import annotations

import os
import time

import pytest

from planner.capture.pace import BURST_PERIOD_NS, DEFAULT_BURST_SHARE, Pacer


class _Clocks:
    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.wall += seconds


def _pacer(clocks: _Clocks, budget: float | None, window_s: float = 4.0) -> Pacer:
    return Pacer(
        "normal",
        cpu_budget=budget,
        window_s=window_s,
        clock=lambda: clocks.wall,
        cpu_clock=lambda: clocks.cpu,
        sleep=clocks.sleep,
    )


def test_work_within_the_budget_keeps_the_schedule() -> None:
    c = _Clocks()
    with _pacer(c, 0.25) as p:
        for i in range(1, 5):  # 0.1 CPU s every 2 s: 5 % of a CPU
            c.cpu += 0.1
            c.wall += 0.1
            assert p.pay(until=2.0 * i) == 0.0
        assert c.slept == pytest.approx([1.9, 1.9, 1.9, 1.9])
        assert p.throttled_s == 0.0


def test_a_burst_beyond_the_budget_delays_the_next_piece_of_work() -> None:
    c = _Clocks()
    with _pacer(c, 0.25, window_s=4.0) as p:  # 1 CPU s saved up at most
        c.cpu += 3.0  # a 3 s snapshot at full speed
        c.wall += 3.0
        # earned 0.75 on top of the saved 1.0 (capped at 1.0): owes 2 CPU s, i.e. 8 s of wall
        extra = p.pay(until=2.0)
        assert extra == pytest.approx(8.0)
        assert c.slept[-1] == pytest.approx(8.0)
        assert p.tokens_s() == pytest.approx(0.0)
        assert p.throttled_s == pytest.approx(8.0)


def test_no_budget_never_waits_for_cpu() -> None:
    c = _Clocks()
    with _pacer(c, None) as p:
        c.cpu += 100.0
        assert p.pay(until=1.0) == 0.0
        assert p.tokens_s() == float("inf")
        assert p.wait_s() == 0.0


def _dl_runtime_ms() -> float | None:
    """This thread's remaining SCHED_DEADLINE runtime (``None`` when it has none)."""
    with open("/proc/thread-self/sched") as f:
        for line in f:
            if line.startswith("dl.runtime"):
                return int(line.split(":")[1]) / 1e6
    return None


@pytest.mark.skipif(os.geteuid() != 0, reason="a deadline reservation needs CAP_SYS_NICE")
def test_a_fresh_burst_starts_with_the_whole_reservation() -> None:
    """The kernel keeps a thread's leftover runtime when it takes a reservation again before
    its last deadline: a snapshot's burst (``fresh``) waits out one period after the burst
    before it, and so starts with its whole 50 ms."""
    with Pacer("low") as pacer:
        with pacer.burst():
            if pacer.burst_policy != "deadline":
                pytest.skip("the kernel refused the reservation (another capture holds it)")
            spin_until = time.thread_time() + 0.03
            while time.thread_time() < spin_until:  # spend 30 ms of the 50
                pass
        with pacer.burst(fresh=True):
            # from when the first burst ended, as the pacer saw it: a clock read here after
            # the burst may come late (the thread, back at nice +10, waits for a CPU)
            assert pacer._deadline_ended is not None
            waited_s = time.monotonic() - pacer._deadline_ended
            runtime_ms = _dl_runtime_ms()
            policy = pacer.burst_policy
    assert waited_s >= BURST_PERIOD_NS / 1e9 - 0.005
    if policy != "deadline":
        pytest.skip("the kernel refused the second reservation (another capture holds it)")
    assert runtime_ms is not None
    assert runtime_ms > 0.9 * DEFAULT_BURST_SHARE * BURST_PERIOD_NS / 1e6, runtime_ms
