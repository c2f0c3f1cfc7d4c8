"""PostgreSQL page by page: which pages the model merges and the real kernel does not.

One live run (``run_live``: PostgreSQL under read-only pgbench, captured with
``--sample-ms 100``, observed in canary mode at 1000 pages / 20 ms) joined with the model
(:func:`planner.testing.live.pages.page_truth`). The measured figures are in
docs/live-validation.md (the section "PostgreSQL and Node captured with sampling, page by
page"): the kernel's KSM pages are all merged by the model too (0 of 3,703 and 2 of 3,684
missed), and the model merges 9-12 % more pages, every one in a busy backend, pages that look
the same as those that merge to every observation a capture makes (the issue's ±3 % is
missed: an expected failure).

Not in the default run (``live`` and ``slow``): ``pytest -m live tests/live/test_live_pages.py``,
about 3-4 minutes plus any wait for the KSM lock.
"""

from __future__ import annotations

import os

import pytest

from planner.errors import KernelUnsupportedError, KsmBusyError
from planner.kernel.sysfs import KsmSysfs
from planner.testing.live.compare import CompareOptions
from planner.testing.live.pages import PageTruth, page_truth
from planner.testing.live.protocol import LiveConfig, run_live

pytestmark = [pytest.mark.kernel, pytest.mark.live, pytest.mark.slow, pytest.mark.timeout(1800)]

LOCK_WAIT_S = 900.0


@pytest.fixture(scope="module")
def truth(tmp_path_factory: pytest.TempPathFactory) -> PageTruth:
    sysfs = KsmSysfs()
    if not sysfs.available():
        pytest.skip("no /sys/kernel/mm/ksm: this kernel has no KSM")
    if os.geteuid() != 0:
        pytest.skip("live runs write /sys/kernel/mm/ksm and read other processes: need root")
    out = tmp_path_factory.mktemp("live-pages") / "run"
    cfg = LiveConfig(sample_ms=100.0, canary=True, lock_wait_s=LOCK_WAIT_S)
    try:
        # run_live stops every process it started (a run that leaves one fails) and its lease
        # restores every knob; the host-wide knobs are not compared here: another run may hold
        # the lease before and after this one, with its own knobs
        run = run_live("postgres", out, config=cfg)
    except (KsmBusyError, KernelUnsupportedError) as exc:
        pytest.skip(f"KSM cannot be leased here: {exc.one_line()}")
    return page_truth(run, CompareOptions(alignment="time"))


def test_the_kernels_ksm_pages_are_merged_by_the_model_too(truth: PageTruth) -> None:
    missed = truth.counts["kernel_only"] / max(truth.kernel_ksm_pages, 1)
    assert missed <= 0.01, (
        f"the model leaves {truth.counts['kernel_only']} of the kernel's "
        f"{truth.kernel_ksm_pages} KSM pages unmerged ({100 * missed:.1f} %, allowed 1 %)\n"
        + truth.summary()
    )


def test_the_idle_server_processes_are_exact(truth: PageTruth) -> None:
    """The auxiliary processes (the fewest rows) merge as predicted, page for page."""
    procs = sorted(truth.processes, key=lambda p: p["rows"])[:6]
    wrong = [p for p in procs if p["model_only"] + p["kernel_only"] > 2]
    assert not wrong, f"idle server processes off by more than 2 pages: {wrong}"


@pytest.mark.xfail(
    strict=True,
    reason="issue 10: busy backends' pages that every capture observation shows at rest and "
    "equal stay unmerged in the kernel (+443 = 12.0 %, +337 = 9.1 % measured; "
    "docs/live-validation.md)",
)
def test_the_model_merges_no_more_than_the_issues_3_percent(truth: PageTruth) -> None:
    extra = truth.counts["model_only"] / max(truth.kernel_ksm_pages, 1)
    assert extra <= 0.03, (
        f"the model merges {truth.counts['model_only']} pages the kernel did not "
        f"(+{100 * extra:.1f} % of the kernel's {truth.kernel_ksm_pages}, target ±3 %)\n"
        + truth.summary()
    )
