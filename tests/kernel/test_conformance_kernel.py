"""The experiments E1-E11 and THP on the real kernel (marker ``kernel``).

Each scenario runs through the harness (holders, lease, ksmd driver) and must reproduce the
values measured by the experiment suite the project started from (docs/kernel-semantics.md
§12). A failure means the harness, the encoding of the experiment, or the kernel changed.
"""

from __future__ import annotations

import pytest

from planner.kernel.sysfs import KsmLease
from planner.testing.conformance import SCENARIOS, Scenario, run_scenario


@pytest.mark.kernel
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario_reproduces_the_measured_counters(scenario: Scenario, ksm_lease: KsmLease) -> None:
    run, results = run_scenario(scenario, lease=ksm_lease)
    assert results, "a scenario must check something"
    bad = [str(r) for r in results if not r.ok]
    late = [r.full_scans for r in run.scans if r.late]
    assert not bad, (
        f"{len(bad)} of {len(results)} values differ (late scans: {late}):\n" + "\n".join(bad)
    )
    assert len(run.scans) == scenario.scans
