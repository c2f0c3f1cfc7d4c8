"""The planner against the real ksmd on live workloads: the targets of issue 10.

Each workload is run once per session (``run_live``: under the KSM lease, ksmd off, warm-up
30 s, capture 3 snapshots 2 s apart sampling every 100 ms, ``run=1`` at 1000 pages / 20 ms,
60 s observed), then its capture is replayed with the same knobs (``compare_run``, time
alignment: what a user does) and every test asserts one target with the measured error in
its message. The targets today's planner misses are xfails carrying the errors measured on
the reference machine (docs/live-validation.md): strict ones flip to XPASS -- and fail,
asking for the mark to be removed -- when the model improves. The churn canary's figures
are asserted by ``test_live_churn_canary.py``.

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
#: The issue's protocol: the capture samples what changes between snapshots every 100 ms.
SAMPLE_MS = 100.0
ISSUE = "issue 10"

_WRITES = (
    "issue 10: on a kernel without soft-dirty the sampler sees only the content changes it "
    "catches between looks (at the capture's default CPU budget, a few checks per page per "
    "interval on a busy host); same-content and transient writes are invisible without a canary"
)
_GROWTH = "the V8 heaps keep growing after the capture and the new memory merges"
_SKIPS = (
    "smart scan never skips a KSM page, so the merges the model keeps and the kernel lost to "
    "writes the capture cannot see are scanned at every full scan in the model only: its "
    "full scans hold more pages (the metric pages_scanned_per_full_scan; 0 % off with the "
    "canary's writes) and fewer of them fit the same CPU (docs/live-validation.md, "
    '"What the full scans\' error is made of")'
)
_CPU = (
    "issue 10 item 4: ksmd's share and per-page cost are modelled (docs/busy-host.md), but the "
    "load a few seconds of capture record is not the next minute's on this shared host"
)

#: (workload, metric) -> (errors measured on the reference machine, strict). Strict where
#: every run missed the target by at least 1.5 times; not strict where the kernel's own
#: run-to-run noise straddles the target (an XPASS there is not a fix). Figures: captures
#: sampled every 100 ms (docs/live-validation.md, runs of 2026-12-02; the last figure is the
#: run of this module at 13:07-13:15 UTC, load 2.9-6.5).
KNOWN: dict[tuple[str, str], tuple[str, bool]] = {
    ("postgres", "pages_sharing_steady"): (
        f"+9.9%, +11.9%, +11.1%, +11.6%, +8.8%, +10.3% (target ±3%) — {_WRITES}",
        True,
    ),
    ("postgres", "full_scans_first_window"): (
        "-12.1%, +3.3%, -14.5%, -2.2%, -15.3%, -35.2% (Xeon); -18.7%, -15.7%, -21.2%, "
        "-22.3% on the AMD EPYC: +7% pages per full scan and +24% to +28% ns per page there "
        f"(with the canary's writes +0% and +33%, +36%: full scans -13%, -6%) — {_SKIPS}",
        False,
    ),
    ("node", "pages_sharing_steady"): (
        "-19.5%, -23.4%, -20.8%, -35.4%, -40.9% (target ±5%; re-scored with the growth "
        f"continued per mapping kind) — {_GROWTH}",
        True,
    ),
    ("node", "scan_reaching_90"): (
        f"kernel scan 70, 49, 68, 60, 41 vs model 41, 36, 42, 10, 14 — {_GROWTH}",
        True,
    ),
    ("node", "ksmd_cpu_s_first_window"): (
        f"+21.0%, +19.9%, +22.6%, +27.1%, +18.7% (the grown pages cost too much) — {_CPU}",
        False,
    ),
    ("node", "full_scans_first_window"): (
        f"-4.9%, +4.3%, +5.6%, +0.0%, +31.0% (over where the growth is underestimated) — {_GROWTH}",
        False,
    ),
    ("churn", "pages_sharing_steady"): (
        f"+37% to +39% (3 runs), +37.8% (target ±10%; with its canary -0.6% to -1.8%) — {_WRITES}",
        True,
    ),
    ("churn", "full_scans_first_window"): (
        "-24.4% (Xeon); -11.6%, -18.2%, -11.6% on the AMD EPYC, +15% pages per full scan "
        f"(with the canary's writes +5%, +0%) — {_SKIPS}",
        False,
    ),
    ("churn", "ksmd_cpu_s_first_window"): (
        "-7%, -20%, -19% (Xeon, family 6 model 106); -27.1% on an AMD EPYC (family 25, "
        "model 17) with the default profile, where churn's pages cost ksmd more than on the "
        "default's machine: -9%, -7%, -16%, -24% with the profile now shipped for that CPU "
        "(docs/busy-host.md §7)",
        False,
    ),
    ("churn", "cow_ksm_per_s"): (
        f"kernel 1,522 /s, model 0.02 /s (with its canary within 20%) — {_WRITES}",
        True,
    ),
    ("django", "pages_sharing_steady"): (
        f"+29.1% (target ±5%; with its canary -2.5% over the second half) — {_WRITES}",
        True,
    ),
    ("django", "ksmd_cpu_s_first_window"): (
        "-0%, -15%, -1% (Xeon); -6.4%, -2.2% (2026-12-05), then -13.8%, -23.4%, -23.0% on "
        "the AMD EPYC (2026-12-06: the kernel's ksmd took 6.74, 7.30 and 7.43 s, the model "
        f"5.6-5.8 s) — {_CPU}",
        False,
    ),
    ("django", "scan_reaching_90"): (
        "kernel scan 2, 2, 2, 2, 2 vs model 2, 2, 2, 3, 2 (time alignment: the later snapshots, "
        "applied at their capture times, can fall in scans 1-2 of a slower ksmd)",
        False,
    ),
    ("django", "full_scans_first_window"): (
        "+13.0%, -23.1%, -8.3%, -26.2% (Xeon); -16.4%, -11.1% on the AMD EPYC, +12% to +15% "
        f"pages per full scan — {_SKIPS}",
        False,
    ),
    ("django", "cow_ksm_per_s"): (
        "kernel 1,293 /s, model 0 /s (with its canary -33% then -17% on the Xeon, -4.1% on the "
        f"AMD EPYC) — {_WRITES}",
        True,
    ),
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
                run = run_live(
                    name, out, config=LiveConfig(lock_wait_s=LOCK_WAIT_S, sample_ms=SAMPLE_MS)
                )
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
