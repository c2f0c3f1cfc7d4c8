"""Churn with a canary on the real ksmd: issue 10's churn target, and a canary at one knob
setting predicting another (docs/live-validation.md, "Churn decomposed, and the canary
calibration by content").

Two runs of the ``churn`` workload, each captured with ``--sample-ms 100`` and observed in
canary mode: A at 1000 pages / 20 ms, B at 300 pages / 20 ms. Each is replayed with its own
canary and scored against its own kernel; then A's capture and canary predict B's knobs
(scored against B's kernel) and the other way round: a run directory made of one run's
``run.json`` (knobs, kernel samples) and the other's ``trace/`` and ``observe/``. The same
crossing, with ksmd's cost fitted on the capturing run's canary, predicts ksmd's CPU, its
full scans and the copy-on-write breaks at the other knobs.

Not in the default run (``live`` and ``slow``): ``pytest -m live tests/live``; about 5
minutes plus any wait for the KSM lock.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from planner.errors import KernelUnsupportedError, KsmBusyError
from planner.kernel.sysfs import KsmSysfs
from planner.testing.live.compare import CompareOptions, LiveComparison, compare_run
from planner.testing.live.protocol import LiveConfig, LiveRun, run_live

pytestmark = [pytest.mark.kernel, pytest.mark.live, pytest.mark.slow, pytest.mark.timeout(2400)]

LOCK_WAIT_S = 900.0
KNOBS = {"A": 1000, "B": 300}  # pages_to_scan; sleep 20 ms both
TARGET = 0.10  # issue 10: churn within ±10 %, and a canary across knob settings within 10 %
CALIBRATED = CompareOptions(alignment="time", calibrate_writes=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], LiveRun]:
    """``runs(name)``: run A or B of the churn workload (run once, cached). Each run holds
    the KSM lease, which restores every knob, and fails if it leaves a process behind; the
    knobs are not compared here: another engineer's run may hold KSM before or after."""
    sysfs = KsmSysfs()
    if not sysfs.available():
        pytest.skip("no /sys/kernel/mm/ksm: this kernel has no KSM")
    if os.geteuid() != 0:
        pytest.skip("live runs write /sys/kernel/mm/ksm and read other processes: need root")
    done: dict[str, LiveRun | str] = {}

    def get(name: str) -> LiveRun:
        if name not in done:
            out = tmp_path_factory.mktemp(f"churn-{name}") / "run"
            cfg = LiveConfig(
                lock_wait_s=LOCK_WAIT_S, sample_ms=100.0, canary=True, pages_to_scan=KNOBS[name]
            )
            try:
                done[name] = run_live("churn", out, config=cfg)
            except (KsmBusyError, KernelUnsupportedError) as exc:
                done[name] = f"KSM cannot be leased here: {exc.one_line()}"
        got = done[name]
        if isinstance(got, str):
            pytest.skip(got)
        return got

    return get


def _crossed(knobs_of: LiveRun, capture_of: LiveRun, where: Path) -> Path:
    """A run directory with ``knobs_of``'s knobs and kernel record, ``capture_of``'s capture
    and canary."""
    where.mkdir(parents=True)
    shutil.copy(Path(knobs_of.run_dir) / "run.json", where / "run.json")
    (where / "trace").symlink_to(capture_of.trace_dir, target_is_directory=True)
    (where / "observe").symlink_to(capture_of.observe_dir, target_is_directory=True)
    return where


def _assert_within(cmp: LiveComparison, what: str) -> None:
    m = cmp.metrics["pages_sharing_steady"]
    assert m.error is not None
    assert abs(m.error) <= TARGET, (
        f"{what}: {m.describe()}; host: {cmp.host_load.get('observe', {}).get('text')}"
    )


@pytest.mark.parametrize("name", sorted(KNOBS))
def test_churn_with_its_canary_is_within_ten_percent(
    name: str, runs: Callable[[str], LiveRun]
) -> None:
    run = runs(name)
    _assert_within(compare_run(run, CALIBRATED), f"churn at {KNOBS[name]} pages / 20 ms")


#: issue 10: with a canary, copy-on-write breaks per second within 20 % of ``cow_ksm``
COW_TARGET = 0.20


@pytest.mark.parametrize("name", sorted(KNOBS))
def test_churn_with_its_canary_breaks_merges_as_the_kernel(
    name: str, runs: Callable[[str], LiveRun]
) -> None:
    """Copy-on-write breaks per second with the run's own canary, against ``cow_ksm``:
    churn's toggling region breaks a merge at every change of a merged copy, which the
    model sees only where the trace tells it alternates between two contents
    (``pages.other_hash``; docs/live-validation.md, "Pages that alternate between two
    contents": B's was -24.5 to -29.5 % before, -9.8 to -18.8 % on three runs since).
    The capture's closing pass matters here: without it one run scored -21.4 %."""
    cmp = compare_run(runs(name), CALIBRATED)
    m = cmp.metrics["cow_ksm_per_s"]
    assert m.error is not None
    assert abs(m.error) <= COW_TARGET, f"churn at {KNOBS[name]} pages / 20 ms: {m.describe()}"


@pytest.mark.parametrize(("capture", "knobs"), [("A", "B"), ("B", "A")])
def test_a_canary_at_one_knob_setting_predicts_another(
    capture: str, knobs: str, runs: Callable[[str], LiveRun], tmp_path: Path
) -> None:
    src, dst = runs(capture), runs(knobs)
    crossed = _crossed(dst, src, tmp_path / "crossed")
    what = (
        f"capture and canary at {KNOBS[capture]} pages / 20 ms predicting "
        f"{KNOBS[knobs]} pages / 20 ms"
    )
    _assert_within(compare_run(crossed, CALIBRATED), what)


#: issue 10's bounds on ksmd's cost (CPU seconds and full scans over the first minute)
COST_TARGET = 0.20
#: copy-on-write breaks per second across knob settings: issue 10 asks for 20 % with a
#: canary at the same knobs; across them the recorded errors were -32.1..+46.6 %
#: (docs/busy-host.md, "A canary's fitted cost on another run"), held to this bound
COW_ACROSS_KNOBS_BOUND = 0.75


@pytest.mark.parametrize(("capture", "knobs"), [("A", "B"), ("B", "A")])
def test_a_canary_at_one_knob_setting_predicts_ksmds_cost_at_another(
    capture: str, knobs: str, runs: Callable[[str], LiveRun], tmp_path: Path
) -> None:
    """One run's capture and canary, with ksmd's cost fitted on that canary
    (``calibrate --trace --observed``, docs/busy-host.md §4), predict the other run's knobs:
    ksmd's CPU seconds and full scans over the first minute within ±20 % of the kernel's
    (docs/busy-host.md, "A canary's fitted cost on another run", where the shipped profile
    gave ksmd's CPU +17 to +21 %). The copy-on-write breaks a canary saw at one knob
    setting do not carry to another as well (the pages merged when the writes come differ
    with the knobs): they are held to the recorded error only."""
    from planner.kernel.calibrate import calibrate_workload

    src, dst = runs(capture), runs(knobs)
    profile = tmp_path / "profile.json"
    calibrate_workload(src.trace_dir, src.observe_dir, out=profile)
    crossed = _crossed(dst, src, tmp_path / "crossed")
    opts = CompareOptions(alignment="time", calibrate_writes=True, cost_profile=str(profile))
    cmp = compare_run(crossed, opts)
    m = {
        n: cmp.metrics[n]
        for n in ("ksmd_cpu_s_first_window", "full_scans_first_window", "cow_ksm_per_s")
    }
    measured = (
        f"churn capture, canary and cost fit at {KNOBS[capture]} pages / 20 ms predicting "
        f"{KNOBS[knobs]} pages / 20 ms: {'; '.join(v.describe() for v in m.values())}; "
        f"host: {cmp.host_load.get('observe', {}).get('text')}"
    )
    print(measured)
    errors = {n: v.error for n, v in m.items()}
    assert None not in errors.values(), measured
    assert abs(errors["ksmd_cpu_s_first_window"] or 0.0) <= COST_TARGET, measured
    assert abs(errors["full_scans_first_window"] or 0.0) <= COST_TARGET, measured
    assert abs(errors["cow_ksm_per_s"] or 0.0) <= COW_ACROSS_KNOBS_BOUND, measured
