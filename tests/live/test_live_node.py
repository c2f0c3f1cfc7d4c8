"""The Node.js cluster on the real ksmd: what the planner's error is under issue 10's protocol
(docs/live-validation.md, "Node under issue 10's protocol, and after a longer warm-up").

One run of the ``node`` workload (4 workers under an open loop of 1,000 requests/s), warmed
up for 30 s, captured with ``--sample-ms 100`` (3 snapshots 2 s apart) and observed for 60 s
at 1000 pages / 20 ms. Issue 10's target for Node is ±5 % of the kernel's steady
``pages_sharing``; it is not met. The V8 heaps keep growing after the capture, and how much
and with what contents the trace does not show: the four runs under the issue's protocol on
2026-12-03 were −5.9 to −28.7 %, this test's first run +21.7 % (the five of 2026-12-02:
−19.5 to −40.9 %), and their ``ksm_rmap_items`` (the memory scanned) −21.0 to +34.9 %. This
test asserts the bounds those ten runs support, so that a change that makes Node worse is
seen, and prints the measured errors either way. It can fail without any change: the
workers give back most of their memory at once on reaching about 60,000 pages, which
under this protocol came just after the minute in every run recorded; a run whose workers
get there sooner is scored after the drop (two runs captured over 20 s were: +610 and
+666 %).

The run records a canary too (every page's KSM state), and with its writes the model's
copy-on-write breaks per merged page must be within 20 % of the host's ``cow_ksm`` per
merged page: the rows that take the breaks the canary did not see once broke four times as
many (docs/live-validation.md, "A Node canary's unseen breaks"). Its ``pages_sharing``
with the canary's writes is held to the issue's ±5 % by a non-strict xfail: since the growth
after the trace is the canary's (2026-12-07) it met it on three runs of four (+0.1, +1.1,
+4.8 %) and missed it on one (+6.7 %).

Not in the default run (``live`` and ``slow``): ``pytest -m live tests/live/test_live_node.py``;
about 3 minutes plus any wait for the KSM lock.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from planner.errors import KernelUnsupportedError, KsmBusyError
from planner.kernel.sysfs import KsmSysfs
from planner.testing.live.compare import CompareOptions, LiveComparison, compare_run
from planner.testing.live.protocol import LiveConfig, LiveRun, run_live

pytestmark = [pytest.mark.kernel, pytest.mark.live, pytest.mark.slow, pytest.mark.timeout(1800)]

LOCK_WAIT_S = 900.0
ISSUE_TARGET = 0.05  # issue 10: Node within ±5 % of the kernel's steady pages_sharing
#: What the recorded runs support (docs/live-validation.md): |error| of pages_sharing ...
PAGES_SHARING_BOUND = 0.45
#: Issue 10: copy-on-write breaks within 20 % of the host's (here per merged page).
COW_TARGET = 0.20
#: ... and of ksm_rmap_items summed over the processes (the memory scanned: its size).
RMAP_ITEMS_BOUND = 0.40
#: Why Node with its canary misses issue 10's ±5 %: pages_sharing's error with the canary's
#: writes, and without them, in the runs recorded (docs/live-validation.md, "A Node canary's
#: unseen breaks", "The live suite on the AMD EPYC again").
CANARY_SHARING_MISS = (
    "issue 10: with its canary's writes Node's pages_sharing falls below its error without "
    "them (-22.3 against -10.5 %, -49.9 against -40.7 %, -50.5 against -25.1 % on "
    "2026-12-05; -56.9 against -24.3 % on 2026-12-06): the pages the canary saw leave for good "
    "were taken away while the heap's growth that replaced them was not in the trace. With the "
    "growth held to the canary and the merges it saw lost and got back (2026-12-07) four runs "
    "scored +0.1, +1.1, +6.7 and +4.8 % (the first -31.9 % before): met on three, missed on one. "
    "With the pages seen merged at new addresses placed when they merged (2026-12-07, a new "
    "VM) three runs scored +6.9, +1.0 and +0.3 % (+16.6 and +11.6 % before)"
)


@pytest.fixture(scope="module")
def node_run(tmp_path_factory: pytest.TempPathFactory) -> LiveRun:
    """One run of the node workload under the issue's protocol. The run holds the KSM
    lease, which restores every knob, and fails if it leaves a process behind."""
    if not KsmSysfs().available():
        pytest.skip("no /sys/kernel/mm/ksm: this kernel has no KSM")
    if os.geteuid() != 0:
        pytest.skip("live runs write /sys/kernel/mm/ksm and read other processes: need root")
    out: Path = tmp_path_factory.mktemp("node") / "run"
    cfg = LiveConfig(lock_wait_s=LOCK_WAIT_S, sample_ms=100.0, warmup_s=30.0, canary=True)
    try:
        return run_live("node", out, config=cfg)
    except (KsmBusyError, KernelUnsupportedError) as exc:
        pytest.skip(f"KSM cannot be leased here: {exc.one_line()}")


@pytest.fixture(scope="module")
def without_canary(node_run: LiveRun) -> LiveComparison:
    """The run scored as a user without a canary would (scored once)."""
    return compare_run(node_run, CompareOptions(alignment="time"))


def test_node_under_the_issues_protocol_stays_within_the_recorded_error(
    without_canary: LiveComparison,
) -> None:
    cmp = without_canary
    ps = cmp.metrics["pages_sharing_steady"]
    rmap = cmp.metrics["rmap_items_total_steady"]
    assert ps.error is not None
    assert rmap.error is not None
    measured = (
        f"node, 30 s warm-up: {ps.describe()} (issue 10: ±{ISSUE_TARGET:.0%}, "
        f"{'met' if abs(ps.error) <= ISSUE_TARGET else 'not met'}); {rmap.describe()}; "
        f"host: {cmp.host_load.get('observe', {}).get('text')}; "
        f"{(cmp.model.get('growth') or {}).get('summary')}; "
        f"{(cmp.model.get('joins') or {}).get('summary')}"
    )
    print(measured)
    assert abs(ps.error) <= PAGES_SHARING_BOUND, measured
    assert abs(rmap.error) <= RMAP_ITEMS_BOUND, measured


def test_node_the_replay_warns_of_the_joins_it_does_not_continue(
    without_canary: LiveComparison,
) -> None:
    """Node's pages keep taking contents other pages of their worker hold, much faster than
    the replay can leave out unsaid (2026-12-06: 236 and 261 a second, 3.0 and 2.4 times
    the shared rows in a minute; the warning's threshold is 0.5): the replay does not
    continue them, and its result says so (docs/live-validation.md, "Node with its canary:
    what the kernel merges that the replay cannot")."""
    joins = without_canary.model.get("joins") or {}
    measured = (
        f"node: {joins.get('summary')}; a minute of joins / shared rows: "
        f"{joins.get('turnover_per_min')}"
    )
    print(measured)
    assert joins.get("warning"), measured


@pytest.fixture(scope="module")
def with_canary(node_run: LiveRun) -> LiveComparison:
    """The run scored with its canary's writes (a minute and more: scored once)."""
    return compare_run(node_run, CompareOptions(alignment="time", calibrate_writes=True))


def test_node_with_its_canary_breaks_as_many_merges_per_merged_page_as_the_host(
    with_canary: LiveComparison,
) -> None:
    """With the canary's writes, copy-on-write breaks per merged page (``cow_ksm`` per second
    over steady ``pages_sharing``) within issue 10's 20 %. The canary calibrates how often a
    merged page is written, not how many pages merge: where the model merges a third too
    few (Node's joins, which no canary names), it breaks a third too few. Until 2026-12-07
    the breaks per second were asserted and met (295 a second against the host's 282, 271
    against 274, 348 against 348, 301 against 299), but only because pages the growth model
    adds, which no canary followed, took the breaks the canary did not see: 0.122 breaks per
    merged page against the host's 0.072 on the run of 2026-12-04. Grown pages now take the
    standing of the page each was drawn from, and the same run breaks 200 against 299 a
    second, 0.071 per merged page (docs/live-validation.md, "Pages a canary never saw
    merged"). Since the growth held to the canary (2026-12-07) this fails: −28.9 %, then
    −25.6, −29.6 and −34.4 % with the pages at new addresses placed when they merged.
    Traced rows the trace saw change never joined, where the kernel merged them for seconds
    between changes; since they join (2026-12-07) the same runs give −10.1 and −8.7 %, and
    the live test −17.1 % (docs/live-validation.md, "Changing rows the canary saw
    merged")."""
    cow = with_canary.metrics["cow_ksm_per_s"]
    ps = with_canary.metrics["pages_sharing_steady"]
    for m in (cow, ps):
        assert m.model, m.describe()
        assert m.kernel, m.describe()
    model, kernel = cow.model / ps.model, cow.kernel / ps.kernel
    error = model / kernel - 1.0
    measured = (
        f"node with its canary: breaks per merged page {model:.4f} vs {kernel:.4f} "
        f"({100 * error:+.1f} %); {cow.describe()}; {ps.describe()}"
    )
    print(measured)
    assert abs(error) <= COW_TARGET, measured


@pytest.mark.xfail(strict=False, reason=CANARY_SHARING_MISS)
def test_node_with_its_canary_is_within_the_issues_target(
    with_canary: LiveComparison, without_canary: LiveComparison
) -> None:
    """Issue 10's ±5 % for Node, with a canary. Until 2026-12-06 this test bounded how far
    below its error without the canary the canary's writes could take ``pages_sharing``
    (15, then 30 points); the runs went past each bound in turn (25.4, then 32.6 points)
    with copy-on-write within 20 %, so the bound measured the open gap rather than a
    regression: the target is asserted instead, and the measured errors are the reason."""
    ps = with_canary.metrics["pages_sharing_steady"]
    measured = (
        f"node with its canary: {ps.describe()}; without it: "
        f"{without_canary.metrics['pages_sharing_steady'].describe()}"
    )
    print(measured)
    assert ps.error is not None
    assert abs(ps.error) <= ISSUE_TARGET, measured
