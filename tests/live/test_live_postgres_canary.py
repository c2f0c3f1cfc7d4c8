"""PostgreSQL with a canary on the real ksmd: issue 10's ±3 % with its own canary and with
another run's (docs/live-validation.md, "PostgreSQL with a canary: the writes where they
fall").

Two runs of the ``postgres`` workload (read-only pgbench), each captured with
``--sample-ms 100`` and observed in canary mode at 1000 pages / 20 ms. Each is replayed with
its own canary's write rates and scored against its own kernel; then each run's capture is
calibrated by the *other* run's canary (other pids, other addresses: the rates reach the
rows by page class, busy or idle role, mapping kind and page number in the mapping) and
scored against its own kernel. With its own canary the model's KSM pages are also joined
with the kernel's page by page: the unseen breaks must land on the pages the kernel keeps
apart, not on those it keeps merged. Last, each run's canary and a cost profile calibrated
on it (``calibrate --trace --observed``) predict the other run's ksmd CPU, full scans and
copy-on-write breaks (issue 10's ±20 %).

Not in the default run (``live`` and ``slow``): ``pytest -m live
tests/live/test_live_postgres_canary.py``; about 4-8 minutes plus any wait for the KSM lock.
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
from planner.testing.live.pages import page_truth
from planner.testing.live.protocol import LiveConfig, LiveRun, run_live

pytestmark = [pytest.mark.kernel, pytest.mark.live, pytest.mark.slow, pytest.mark.timeout(2400)]

LOCK_WAIT_S = 900.0
TARGET = 0.03  # issue 10: PostgreSQL within ±3 % of the kernel's steady pages_sharing
CALIBRATED = CompareOptions(alignment="time", calibrate_writes=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], LiveRun]:
    """``runs(name)``: run A or B of the postgres workload (run once, cached). Each run
    holds the KSM lease, which restores every knob, and fails if it leaves a process behind."""
    sysfs = KsmSysfs()
    if not sysfs.available():
        pytest.skip("no /sys/kernel/mm/ksm: this kernel has no KSM")
    if os.geteuid() != 0:
        pytest.skip("live runs write /sys/kernel/mm/ksm and read other processes: need root")
    done: dict[str, LiveRun | str] = {}

    def get(name: str) -> LiveRun:
        if name not in done:
            out = tmp_path_factory.mktemp(f"postgres-{name}") / "run"
            cfg = LiveConfig(lock_wait_s=LOCK_WAIT_S, sample_ms=100.0, canary=True)
            try:
                done[name] = run_live("postgres", out, config=cfg)
            except (KsmBusyError, KernelUnsupportedError) as exc:
                done[name] = f"KSM cannot be leased here: {exc.one_line()}"
        got = done[name]
        if isinstance(got, str):
            pytest.skip(got)
        return got

    return get


def _with_canary_of(run: LiveRun, canary_of: LiveRun, where: Path) -> Path:
    """A run directory with ``run``'s knobs, kernel record and capture, and
    ``canary_of``'s canary recording."""
    where.mkdir(parents=True)
    shutil.copy(Path(run.run_dir) / "run.json", where / "run.json")
    (where / "trace").symlink_to(run.trace_dir, target_is_directory=True)
    (where / "observe").symlink_to(canary_of.observe_dir, target_is_directory=True)
    return where


def _assert_within(cmp: LiveComparison, what: str) -> None:
    m = cmp.metrics["pages_sharing_steady"]
    assert m.error is not None
    assert abs(m.error) <= TARGET, (
        f"{what}: {m.describe()}; host: {cmp.host_load.get('observe', {}).get('text')}"
    )


@pytest.mark.parametrize("name", ["A", "B"])
def test_postgres_with_its_own_canary_is_within_three_percent(
    name: str, runs: Callable[[str], LiveRun]
) -> None:
    _assert_within(compare_run(runs(name), CALIBRATED), f"postgres run {name}, own canary")


@pytest.mark.parametrize(("capture", "canary"), [("A", "B"), ("B", "A")])
def test_another_runs_canary_calibrates_postgres_within_three_percent(
    capture: str, canary: str, runs: Callable[[str], LiveRun], tmp_path: Path
) -> None:
    crossed = _with_canary_of(runs(capture), runs(canary), tmp_path / "crossed")
    _assert_within(
        compare_run(crossed, CALIBRATED), f"postgres run {capture} with run {canary}'s canary"
    )


def test_the_canarys_writes_fall_on_the_pages_the_kernel_keeps_apart(
    runs: Callable[[str], LiveRun],
) -> None:
    """Joined page by page with its own canary: the pages merged by one side only are a few
    per cent of the kernel's KSM pages (the pro-rata spreading of the unseen breaks left
    392 merged in the model only and broke 139 the kernel kept merged, of 3,703)."""
    truth = page_truth(runs("A"), CALIBRATED)
    wrong = truth.counts["model_only"] + truth.counts["kernel_only"]
    assert wrong <= 0.05 * truth.kernel_ksm_pages, truth.summary()


#: issue 10's bounds on ksmd's cost (CPU seconds and full scans over the first minute) and
#: on the copy-on-write breaks per second, relative to the kernel's
COST_TARGET = 0.20


@pytest.mark.parametrize(("capture", "other"), [("A", "B"), ("B", "A")])
def test_another_runs_canary_and_cost_profile_predict_ksmds_cost_and_the_breaks(
    capture: str, other: str, runs: Callable[[str], LiveRun], tmp_path: Path
) -> None:
    """One run's canary calibrates the writes and ``calibrate --trace --observed`` ksmd's
    cost on it (docs/busy-host.md §4); both predict *another* run of the workload:
    ``pages_sharing`` within ±3 %, ksmd's CPU seconds and full scans over the first minute
    within ±20 %, copy-on-write breaks per second within 20 % of ``cow_ksm``
    (docs/live-validation.md, "PostgreSQL's backends were new processes at every snapshot":
    with the shipped profile ksmd's CPU came out +53 and +56 %, this VM's pages costing that
    day half of what the profile's busy-host factor says)."""
    from planner.kernel.calibrate import calibrate_workload

    source = runs(other)
    profile = tmp_path / "profile.json"
    calibrate_workload(source.trace_dir, source.observe_dir, out=profile)
    crossed = _with_canary_of(runs(capture), source, tmp_path / "crossed")
    opts = CompareOptions(alignment="time", calibrate_writes=True, cost_profile=str(profile))
    cmp = compare_run(crossed, opts)
    what = f"postgres run {capture} with run {other}'s canary and cost profile"
    _assert_within(cmp, what)
    host = cmp.host_load.get("observe", {}).get("text")
    for name in ("ksmd_cpu_s_first_window", "full_scans_first_window", "cow_ksm_per_s"):
        m = cmp.metrics[name]
        assert m.error is not None, f"{what}: {m.describe()}"
        assert abs(m.error) <= COST_TARGET, f"{what}: {m.describe()}; host: {host}"
