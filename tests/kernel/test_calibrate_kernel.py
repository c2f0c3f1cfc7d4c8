"""The workload calibration against the real ksmd (marker ``kernel``; root, KSM lease).

Run A: two holder processes with shared and unique pages are captured, then the real ksmd
scans them for ``WINDOW_S`` seconds while ``observe`` records it; ``calibrate_workload``
turns trace A and recording A into a profile. Run B: the same workload beside CPU hogs (a
busier host, which trace B records), captured and observed again. The profile calibrated on
A must predict B's ksmd CPU seconds and full scans per second within ``TOLERANCE``: the
load model (docs/busy-host.md §1-2) and the calibrated costs (§4), out of sample. About a
minute.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from planner.capture import CaptureOptions, capture
from planner.engine import CostProfile, KsmKnobs, ReplayOptions, prepare, replay
from planner.engine.costfit import KsmdWindow, ksmd_window
from planner.engine.registration import Registration
from planner.engine.timing import HostLoad, recorded_load
from planner.kernel.calibrate import calibrate_workload
from planner.kernel.holder import PAGE_BYTES, Holder
from planner.kernel.observe import observe
from planner.kernel.sysfs import KsmLease
from planner.trace.io import open_trace
from planner.trace.recording import read_observed

pytestmark = [pytest.mark.kernel, pytest.mark.quiet, pytest.mark.timeout(600)]

SHARED, UNIQUE = 1500, 1500  # pages per holder
PTS, SLEEP_MS = 300, 20
WINDOW_S = 12.0
HOGS_B = 3
#: ksmd CPU and full scans per second, run B predicted from run A. The issue's target is
#: ±20 %; the real ksmd's own run-to-run spread on this shared host is 13-30 %
#: (docs/live-validation.md), hence the margin.
TOLERANCE = 0.25
SPIN = "while True: pass"


@dataclass
class Run:
    trace: Path
    recording: Path
    regions: dict[int, tuple[int, int]]  # pid -> [start, end) of its mergeable region
    runnable_per_cpu: float  # measured while ksmd ran
    real: KsmdWindow

    def resolver(self):  # type: ignore[no-untyped-def]
        def resolve(info, parent):  # type: ignore[no-untyped-def]
            r = self.regions.get(info.pid)
            if r is None:
                return Registration(mode="off")
            return Registration(mode="madvise", ranges=(r,), rule="holder region")

        return resolve


def _procs_running() -> int:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("procs_running"):
                return int(line.split()[1])
    raise RuntimeError("no procs_running")


@contextmanager
def _hogs(n: int) -> Iterator[None]:
    procs = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(n)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def _run(lease: KsmLease, out: Path, hogs: int) -> Run:
    out.mkdir(parents=True)
    lease.reset({"pages_to_scan": PTS, "sleep_millisecs": SLEEP_MS, "smart_scan": 1})
    holders: list[Holder] = []
    rng = np.random.default_rng(11)
    shared = [int(v) for v in rng.integers(1, 2**62, SHARED)]
    try:
        regions = {}
        for _ in range(2):
            h = Holder.spawn()
            holders.append(h)
            addr = h.map_region(SHARED + UNIQUE)
            h.write(list(range(SHARED + UNIQUE)), [*shared, *rng.integers(1, 2**62, UNIQUE)])
            h.register()
            regions[h.pid] = (addr, addr + (SHARED + UNIQUE) * PAGE_BYTES)
        with _hogs(hogs):
            time.sleep(1.0)
            capture(
                CaptureOptions(
                    out=out / "trace",
                    pids=tuple(regions),
                    snapshots=2,
                    interval_s=1.0,
                    key_file=out / "capture.key",
                    priority="normal",
                )
            )
            stop = threading.Event()
            errors: list[BaseException] = []

            def record() -> None:
                try:
                    observe(out / "observe", interval_s=0.5, pids=tuple(regions), stop=stop)
                except BaseException as exc:
                    errors.append(exc)

            samples: list[int] = []
            rec = threading.Thread(target=record)
            rec.start()
            time.sleep(0.6)
            lease.start()
            t_end = time.monotonic() + WINDOW_S
            while time.monotonic() < t_end:
                samples.append(_procs_running())
                time.sleep(0.05)
            lease.stop()
            time.sleep(0.6)
            stop.set()
            rec.join(timeout=30)
            assert not errors, errors
    finally:
        for h in holders:
            h.kill()
        lease.reset({"pages_to_scan": PTS, "sleep_millisecs": SLEEP_MS})
    x = max(0.0, float(np.mean(samples)) - 1.0) / (os.cpu_count() or 1)
    real = ksmd_window(read_observed(out / "observe").counters)
    return Run(out / "trace", out / "observe", regions, x, real)


def _predict(run: Run, profile: CostProfile) -> tuple[float, float, HostLoad | None]:
    """The model's ksmd CPU and full scans per second over the run's window."""
    ht = open_trace(run.trace).load_host()
    inp = prepare(ht, resolver=run.resolver())
    knobs = KsmKnobs(pages_to_scan=PTS, sleep_ms=SLEEP_MS, smart_scan=True, hz=ht.hz or 250)
    res = replay(
        inp,
        knobs=knobs,
        options=ReplayOptions(duration_s=run.real.wall_s, cost=profile),
        snapshot_scans=(1,) * inp.n_snapshots,  # ksmd started after the capture
    )
    return (
        res.cost.cpu_s / res.duration_s,
        res.cost.full_scans / res.duration_s,
        recorded_load(ht.intervals()),
    )


# ksmd's CPU on the second run depends on everything else the host runs meanwhile: on a
# host shared with other work it missed by +74 % once; kept out of the default run (slow).
# On an AMD EPYC (family 25, model 17) it fails, idle: +45 to +87 % ksmd CPU in four runs
# (2026-12-05): the fit on the idle run A cannot measure the busy factor, and beside spinning
# loops a page costs ksmd there little more than idle (docs/busy-host.md §5); replay and
# whatif now warn of such a plan (busier_load_warning)
@pytest.mark.slow
def test_a_profile_calibrated_on_one_run_predicts_a_busier_one(
    ksm_lease: KsmLease, tmp_path: Path
) -> None:
    a = _run(ksm_lease, tmp_path / "a", hogs=0)
    b = _run(ksm_lease, tmp_path / "b", hogs=HOGS_B)
    assert a.real.full_scans >= 5, a.real
    assert b.real.full_scans >= 3, b.real
    cal = calibrate_workload(
        a.trace, a.recording, host_load=HostLoad.given(a.runnable_per_cpu), resolver=a.resolver()
    )
    cpu_b, scans_b, load_b = _predict(b, cal.profile)
    cpu_d, scans_d, _ = _predict(b, CostProfile.default())
    real_cpu = b.real.cpu_s / b.real.wall_s
    real_scans = b.real.full_scans / b.real.wall_s
    err_cpu, err_scans = cpu_b / real_cpu - 1, scans_b / real_scans - 1
    msg = (
        f"run B (x {b.runnable_per_cpu:.2f} measured while ksmd ran; the trace recorded "
        f"{load_b.runnable_per_cpu if load_b else float('nan'):.2f}): ksmd CPU {real_cpu:.4f} "
        f"s/s real, {cpu_b:.4f} calibrated ({100 * err_cpu:+.1f} %), {cpu_d:.4f} shipped; full "
        f"scans {real_scans:.3f}/s real, {scans_b:.3f} calibrated ({100 * err_scans:+.1f} %), "
        f"{scans_d:.3f} shipped. Calibration on A (x {a.runnable_per_cpu:.2f}): scale "
        f"{cal.cost_scale:.2f}, contention {cal.profile.sched_contention:.2f}, real share "
        f"{cal.real_share:.3f}, {cal.real.ns_per_page:.0f} ns/page"
    )
    print(msg)
    assert load_b is not None, "a version-2 capture records the host's load"
    assert abs(err_cpu) <= TOLERANCE, msg
    assert abs(err_scans) <= TOLERANCE, msg
