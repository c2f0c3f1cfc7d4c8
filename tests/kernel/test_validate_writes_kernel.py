"""``validate --kernel`` on traces with writes between snapshots: exact, and cow_ksm too.

Marker ``kernel``. The generated churn traces of ``test_validate_kernel`` get sampling
counts (content changes that drift or toggle, same-content writes); the replay's write
model places them, and the holders write the same pages between the same full scans. The
kernel's counters after every full scan and its ``cow_ksm`` must equal the replay's.
"""

from __future__ import annotations

import pytest

from planner.engine import KsmKnobs
from planner.kernel.sysfs import KsmLease
from planner.kernel.validate import validate_on_kernel
from planner.testing.strategies import ChurnSpec, with_write_counts
from tests.kernel.test_validate_kernel import churn_trace

KNOBS = {
    "smart-off": KsmKnobs(pages_to_scan=1_000_000, sleep_ms=100, hz=250, smart_scan=False),
    "smart-on+zero-pages": KsmKnobs(
        pages_to_scan=1_000_000, sleep_ms=100, hz=250, smart_scan=True, use_zero_pages=True
    ),
    "multi-batch": KsmKnobs(pages_to_scan=64, sleep_ms=20, hz=250, smart_scan=True),
}
CHURN = ChurnSpec(written_share=0.3, max_content_changes=4, max_same_writes=3, last_interval_s=1.0)


@pytest.mark.kernel
@pytest.mark.parametrize("name", list(KNOBS))
def test_replay_with_writes_and_kernel_agree_exactly(name: str, ksm_lease: KsmLease) -> None:
    seed = sorted(KNOBS).index(name) + 41
    ht = with_write_counts(churn_trace(seed=seed, snapshots=3), seed, CHURN)
    v = validate_on_kernel(ht, knobs=KNOBS[name], lease=ksm_lease, scans=10)
    detail = [s for s in v.scans if not s.agree][:3]
    assert v.agree, f"{v.summary()}; notes: {v.notes}; first differences: {detail}"
    assert v.cow_breaks is not None
    kernel_cow, replay_cow = v.cow_breaks
    assert kernel_cow == replay_cow
    assert replay_cow > 0  # writes hit merged pages: the comparison is not vacuous
    last = v.scans[-1].kernel
    assert last is not None
    assert last["pages_sharing"] > 0
