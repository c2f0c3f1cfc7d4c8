"""The planner against the real ksmd on live workloads: the targets of issue 10.

Each workload is run once per session (``run_live``: under the KSM lease, ksmd off, warm-up
30 s, capture 3 snapshots 2 s apart, ``run=1`` at 1000 pages / 20 ms, 60 s observed), then
its capture is replayed with the same knobs (``compare_run``, time alignment: what a user
does) and every test asserts one target with the measured error in its message. The targets
today's planner misses are xfails carrying the baseline errors measured on the reference
machine (docs/live-validation.md; the CPU and full-scan ones re-measured with the busy-host
model of docs/busy-host.md, runs of 2026-12-02, the idle model's errors in brackets): strict
ones flip to XPASS -- and fail, asking for the mark to be removed -- when the model improves.

Not in the default run (``live`` and ``slow``): ``pytest -m live tests/live``. Runtime per
workload 1.6-2.1 minutes (PostgreSQL, Node, churn) and 2.5-4.2 minutes (Django), plus the
wait for the KSM lock when another kernel test holds it (up to ``LOCK_WAIT_S``); 8.6 minutes
in all on the reference machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from planner.errors import KernelUnsupportedError, KsmBusyError
from planner.kernel.sysfs import KsmSysfs, default_lock_path, ksm_users
from planner.testing.live.compare import CompareOptions, LiveComparison, compare_run
from planner.testing.live.protocol import LiveConfig, run_live
from planner.testing.live.workloads import MAIN_WORKLOADS

pytestmark = [pytest.mark.kernel, pytest.mark.live, pytest.mark.slow, pytest.mark.timeout(2400)]

LOCK_WAIT_S = 900.0
ISSUE = "issue 10"

_WRITES = "issue 10: the capture sees no change between snapshots and the replay models no writes"
_CPU = (
    "issue 10 item 4: ksmd's share and per-page cost are modelled (docs/busy-host.md), but the "
    "load a few seconds of capture record is not the next minute's on this shared host, and "
    "a single busy-host cost factor fits workloads within 1.9-4.0x only on average"
)
_SCAN_LEN = "Node's heaps grow after the capture: the kernel visits 12-20 % more pages per scan"
_NO_COW = "issue 10: the replay reports no copy-on-write breaks"

#: (workload, metric) -> (baseline errors of the reference machine, strict). Strict where
#: every baseline run missed the target by at least 1.5 times; not strict where the
#: kernel's own run-to-run noise straddles the target (an XPASS there is not a fix).
KNOWN: dict[tuple[str, str], tuple[str, bool]] = {
    ("postgres", "pages_sharing_steady"): (
        f"+15.0%, +14.7%, +14.9% (target ±3%) — {_WRITES}",
        True,
    ),
    ("postgres", "ksmd_cpu_s_first_window"): (
        f"+20.0%, +26.4%, +20.3%, +10.6%, +22.3% (idle model: -34%, -25%, -33%) — {_CPU}",
        False,
    ),
    ("postgres", "full_scans_first_window"): (
        f"-7.7%, +2.5%, -2.7%, -21.6%, -11.8% (idle model: +44%, +74%, +61%) — {_CPU}",
        False,
    ),
    ("node", "pages_sharing_steady"): (
        "-42.3%, -45.6%, -38.3% (target ±5%; the V8 heaps grow by 14-23% after the capture) — "
        + _WRITES,
        True,
    ),
    ("node", "scan_reaching_90"): (f"kernel scan 62, 70, 50 vs model 6, 4, 6 — {_WRITES}", True),
    ("node", "ksmd_cpu_s_first_window"): (
        f"-17.5%, +6.1%, +36.3%, +30.6%, +8.6% (idle model: -52%, -50%, -33%) — {_CPU}",
        False,
    ),
    ("node", "full_scans_first_window"): (
        f"+20.9%, +37.8%, +63.5%, +26.7%, +11.6% (idle model: +116%, +89%, +132%) — "
        f"{_SCAN_LEN}; {_CPU}",
        False,
    ),
    ("churn", "pages_sharing_steady"): (f"+70.3%, +71.5%, +72.3% (target ±10%) — {_WRITES}", True),
    ("churn", "scan_reaching_90"): (f"kernel scan 2, 2, 2 vs model 3, 4, 3 — {_WRITES}", True),
    ("churn", "full_scans_first_window"): (
        f"-32.5%, -14.8%, -21.2% (idle model: -23%, +15%, -6%) — {_CPU}",
        False,
    ),
    ("churn", "cow_ksm_per_s"): (f"kernel 1,372, 1,371, 1,438 /s, model none — {_NO_COW}", True),
    ("django", "pages_sharing_steady"): (f"+28.3%, +28.5%, +24.5% (target ±5%) — {_WRITES}", True),
    ("django", "scan_reaching_90"): (
        "kernel scan 2, 2, 2, 2 vs model 2, 2, 2, 3 (the last: a fresh run with the busy-host "
        "clock, time alignment: the later snapshots, applied at their capture times, fall in "
        f"scans 1-2 of a slower ksmd) — {_WRITES}",
        False,
    ),
    ("django", "full_scans_first_window"): (
        f"+13.0%, -23.1%, -8.3% (idle model: +100%, +77%, +92%) — {_CPU}",
        False,
    ),
    ("django", "cow_ksm_per_s"): (f"kernel 1,029, 1,045, 977 /s, model none — {_NO_COW}", True),
}


def _cases(metric: str, workloads: tuple[str, ...] = MAIN_WORKLOADS) -> list[Any]:
    out: list[Any] = []
    for w in workloads:
        known = KNOWN.get((w, metric))
        if known is None:
            out.append(w)
        else:
            why, strict = known
            out.append(pytest.param(w, marks=pytest.mark.xfail(strict=strict, reason=why)))
    return out


def _knobs_at_rest(sysfs: KsmSysfs) -> dict[str, int | str]:
    """The knobs while no run holds the KSM lock (another engineer's run sets its own knobs
    while it holds it: read outside the lock, they would fail this module falsely)."""
    fd = os.open(default_lock_path(), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.skip(f"the KSM lock stayed busy for {LOCK_WAIT_S:.0f} s")
                time.sleep(1.0)
        try:
            return sysfs.knobs()
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], LiveComparison]]:
    """``live(name)``: the comparison of one run of workload ``name`` (run once, cached)."""
    sysfs = KsmSysfs()
    if not sysfs.available():
        pytest.skip("no /sys/kernel/mm/ksm: this kernel has no KSM")
    if os.geteuid() != 0:
        pytest.skip("live runs write /sys/kernel/mm/ksm and read other processes: need root")
    before = _knobs_at_rest(sysfs)
    done: dict[str, LiveComparison | str] = {}

    def get(name: str) -> LiveComparison:
        if name not in done:
            out = tmp_path_factory.mktemp(f"live-{name}") / "run"
            try:
                run = run_live(name, out, config=LiveConfig(lock_wait_s=LOCK_WAIT_S))
            except (KsmBusyError, KernelUnsupportedError) as exc:
                done[name] = f"KSM cannot be leased here: {exc.one_line()}"
            else:
                done[name] = compare_run(run, CompareOptions(alignment="time"))
                assert not ksm_users(), "a KSM user is left after the run"
                assert _knobs_at_rest(sysfs) == before, "the run did not restore every knob"
        got = done[name]
        if isinstance(got, str):
            pytest.skip(got)
        return got

    yield get
    assert _knobs_at_rest(sysfs) == before, "the knobs were not restored"


def _check(cmp: LiveComparison, name: str) -> None:
    m = cmp.metrics[name]
    context = (
        f"{cmp.workload}: {m.describe()}; window {cmp.window.start_s:.1f}-{cmp.window.end_s:.1f}"
        f" s ({'steady' if cmp.window.steady else 'not steady'}); host: "
        f"{cmp.host_load.get('observe', {}).get('text')}; run {Path(cmp.run_dir).name}"
    )
    assert m.within, context


@pytest.mark.parametrize("workload", _cases("pages_sharing_steady"))
def test_steady_pages_sharing(workload: str, live: Callable[[str], LiveComparison]) -> None:
    """Within ±3 % (PostgreSQL), ±5 % (Node, Django), ±10 % (churn) of the kernel's."""
    _check(live(workload), "pages_sharing_steady")


@pytest.mark.parametrize("workload", _cases("scan_reaching_90"))
def test_full_scan_reaching_90_percent(
    workload: str, live: Callable[[str], LiveComparison]
) -> None:
    """The full scan at which pages_sharing reaches 90 % of its steady value is the kernel's."""
    _check(live(workload), "scan_reaching_90")


@pytest.mark.parametrize("workload", _cases("ksmd_cpu_s_first_window"))
def test_ksmd_cpu_first_minute(workload: str, live: Callable[[str], LiveComparison]) -> None:
    """ksmd CPU seconds over the first minute within ±20 % of /proc/<ksmd>/stat."""
    _check(live(workload), "ksmd_cpu_s_first_window")


@pytest.mark.parametrize("workload", _cases("full_scans_first_window"))
def test_full_scans_first_minute(workload: str, live: Callable[[str], LiveComparison]) -> None:
    """Full scans completed over the first minute within ±20 % of the kernel's full_scans."""
    _check(live(workload), "full_scans_first_window")


@pytest.mark.parametrize("workload", _cases("cow_ksm_per_s", ("churn", "django")))
def test_cow_breaks_per_second(workload: str, live: Callable[[str], LiveComparison]) -> None:
    """Copy-on-write breaks per second within ±20 % of /proc/vmstat cow_ksm."""
    _check(live(workload), "cow_ksm_per_s")


@pytest.mark.parametrize("workload", MAIN_WORKLOADS)
def test_the_truth_is_measurable(workload: str, live: Callable[[str], LiveComparison]) -> None:
    """The run itself: ksmd scanned and merged, the capture saw the workload, and nothing was
    left behind (checked by the fixture). Whether pages_sharing was steady is in every other
    test's message: on a saturated host ksmd may not settle within the minute."""
    cmp = live(workload)
    k = cmp.kernel
    assert k["full_scans_end"] >= 3, f"{workload}: ksmd completed only {k['full_scans_end']} scans"
    assert (k["pages_sharing_steady"] or 0) > 0, f"{workload}: nothing merged"
    assert cmp.capture["pages"]
    assert cmp.capture["pages"] > 1000
