"""ksmd on a busy host: its CPU share from CFS weights, batches stretched into wall time.

See docs/busy-host.md.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.engine import CostProfile, KsmKnobs, ReplayOptions, replay
from planner.engine.cost import BUSY_ANCHOR_INSERTS
from planner.engine.timing import (
    KSMD_NICE,
    SCHED_PRIO_TO_WEIGHT,
    SHARE_ONE_PPM,
    HostLoad,
    cpu_of_wall_ns,
    ksmd_cpu_share,
    nice_weight,
    recorded_load,
    share_to_ppm,
    sleep_ns,
    stretch_ns,
)
from planner.errors import InputDataError
from planner.testing.synth import SynthSpec, synthetic_input
from planner.trace.views import intervals

SPEC = SynthSpec(pages=6_000, processes=6, family_size=3, snapshots=2, interval_s=2.0, seed=3)
KNOBS = KsmKnobs(pages_to_scan=400, sleep_ms=20, hz=250)
#: the profile of these tests: pure CFS share, no per-page slowdown (the time model alone)
PURE = replace(CostProfile.default(), sched_contention=1.0, busy_page_factor=1.0)


# ---------------------------------------------------------------------- CFS weights and share


def test_weights_are_the_kernels_table() -> None:
    assert len(SCHED_PRIO_TO_WEIGHT) == 40
    assert nice_weight(0) == 1024
    assert nice_weight(KSMD_NICE) == 335
    assert nice_weight(-20) == 88761
    assert nice_weight(19) == 15
    # each nice level weighs about 1.25x the next one (the kernel's "10 % per level")
    ratios = np.array(SCHED_PRIO_TO_WEIGHT[:-1]) / np.array(SCHED_PRIO_TO_WEIGHT[1:])
    assert np.all((ratios > 1.19) & (ratios < 1.31))
    with pytest.raises(ValueError, match="nice"):
        nice_weight(20)


def test_share_from_cfs_weights() -> None:
    assert ksmd_cpu_share(0.0) == 1.0  # idle host: a whole CPU
    assert ksmd_cpu_share(1.0) == pytest.approx(335 / (335 + 1024))
    assert ksmd_cpu_share(6.0) == pytest.approx(335 / (335 + 6 * 1024))
    # contention: the share of the other tasks ksmd really meets
    assert ksmd_cpu_share(6.0, contention=0.5) == pytest.approx(ksmd_cpu_share(3.0))
    assert ksmd_cpu_share(6.0, contention=0.0) == 1.0
    # a nice-0 thread would get more
    assert ksmd_cpu_share(1.0, nice=0) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        ksmd_cpu_share(-1.0)


@given(st.floats(0, 50), st.floats(0, 50))
def test_share_falls_with_load(a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    assert 0 < ksmd_cpu_share(hi) <= ksmd_cpu_share(lo) <= 1


@given(st.integers(0, 10**12), st.integers(1, SHARE_ONE_PPM))
def test_stretch_and_back(cpu_ns: int, ppm: int) -> None:
    wall = stretch_ns(cpu_ns, ppm)
    assert wall >= cpu_ns
    assert wall * ppm >= cpu_ns * SHARE_ONE_PPM  # rounded up: never shorter than cpu/share
    back = cpu_of_wall_ns(wall, ppm)
    assert cpu_ns <= back <= cpu_ns + 1


def test_share_ppm_bounds() -> None:
    assert share_to_ppm(1.0) == SHARE_ONE_PPM
    assert share_to_ppm(1e-12) == 1  # never zero: a batch always ends
    assert share_to_ppm(0.25) == 250_000


def test_host_load_checks_and_sources() -> None:
    with pytest.raises(ValueError):
        HostLoad(-0.5, "given")
    with pytest.raises(ValueError):
        HostLoad(float("inf"), "given")
    assert HostLoad.idle().source == "assumed"
    assert HostLoad.idle().runnable_per_cpu == 0
    g = HostLoad.given(2.5)
    assert g.source == "given"
    assert g.to_dict()["runnable_per_cpu"] == 2.5


# ---------------------------------------------------------------------- the recorded load


def _tables(rows: list[dict[str, object]]) -> tuple[pa.Table, pa.Table]:
    snaps = pa.Table.from_pylist(rows)
    procs = pa.Table.from_pylist(
        [
            {"snapshot_id": r["snapshot_id"], "pid": 1, "proc_start": 1, "state": "ok",
             "cpu_user_s": 1.0 * i, "cpu_system_s": 0.0}
            for i, r in enumerate(rows)
        ]
    )  # fmt: skip
    return snaps, procs


def test_recorded_load_is_the_time_weighted_mean_less_the_sampler() -> None:
    snaps, procs = _tables(
        [
            {"snapshot_id": 0, "time_s": 0.0, "interval_s": 1.0, "interval_runnable_mean": 3.0,
             "cpus_online": 2, "interval_cpu_busy_share": 1.0},
            {"snapshot_id": 1, "time_s": 1.0, "interval_s": 3.0, "interval_runnable_mean": 9.0,
             "cpus_online": 2, "interval_cpu_busy_share": 0.5},
            {"snapshot_id": 2, "time_s": 4.0, "interval_s": None, "interval_runnable_mean": None,
             "cpus_online": 2, "interval_cpu_busy_share": None},
        ]
    )  # fmt: skip
    load = recorded_load(intervals(snaps, procs))
    assert load is not None
    assert load.source == "measured"
    # (3-1)/2 = 1 for 1 s, (9-1)/2 = 4 for 3 s
    assert load.runnable_per_cpu == pytest.approx((1 * 1 + 4 * 3) / 4)
    assert load.busy_share == pytest.approx((1.0 * 1 + 0.5 * 3) / 4)
    # below one runnable task (only the sampler): an idle host, never negative
    snaps, procs = _tables(
        [{"snapshot_id": 0, "time_s": 0.0, "interval_s": 2.0, "interval_runnable_mean": 0.4,
          "cpus_online": 4, "interval_cpu_busy_share": 0.1}]
    )  # fmt: skip
    idle = recorded_load(intervals(snaps, procs))
    assert idle is not None
    assert idle.runnable_per_cpu == 0.0


def test_a_version_1_trace_records_no_load() -> None:
    snaps, procs = _tables([{"snapshot_id": 0, "time_s": 0.0}, {"snapshot_id": 1, "time_s": 2.0}])
    assert recorded_load(intervals(snaps, procs)) is None


# ---------------------------------------------------------------------- cost profile terms


def test_load_factor_and_profiles() -> None:
    p = replace(CostProfile.default(), busy_page_factor=3.0)
    assert p.load_factor(0.0) == 1.0
    assert p.load_factor(0.5) == pytest.approx(2.0)
    assert p.load_factor(1.0) == p.load_factor(8.0) == pytest.approx(3.0)
    loaded = p.under_load(5.0)
    assert loaded.merge_ns == 3 * p.merge_ns
    assert loaded.scan_start_ns == 3 * p.scan_start_ns
    assert loaded.batch_overhead_ns == p.batch_overhead_ns  # measured on cold batches
    assert loaded.wake_latency_ns == p.wake_latency_ns  # a wall time, not CPU
    assert loaded.skip_ns == p.skip_ns  # a skip reads no page: measured as cheap under load
    wall = p.stretched(250_000)
    assert wall.first_visit_ns == 4 * p.first_visit_ns
    assert wall.wake_latency_ns == p.wake_latency_ns
    assert p.under_load(0.0) is p
    assert p.stretched(SHARE_ONE_PPM) == p


#: The idle unstable-tree insert of ``ksm-planner calibrate`` on an AMD EPYC (family 25,
#: model 17; docs/busy-host.md §5): 372 ns a level and no base, 1.7 times the shipped
#: profile's insert into 20,000 items.
AMD_IDLE = replace(CostProfile.default(), unstable_base_ns=0, unstable_per_level_ns=372)


def test_an_idle_calibration_anchors_the_busy_factor_to_the_references_insert() -> None:
    """A busy host's insert costs what the reference's live runs measured: where this
    host's idle insert costs more, the factor is smaller, and never below 1."""
    ref = CostProfile.default()
    assert ref.busy_factor_anchored_to(ref) == ref.busy_page_factor
    own = AMD_IDLE.scan_insert_ns(BUSY_ANCHOR_INSERTS)
    assert own / ref.scan_insert_ns(BUSY_ANCHOR_INSERTS) == pytest.approx(1.71, abs=0.01)
    factor = AMD_IDLE.busy_factor_anchored_to(ref)
    assert factor == pytest.approx(1.46, abs=0.005)  # the nine AMD runs' best: 1.4-1.5
    busy = replace(AMD_IDLE, busy_page_factor=factor).under_load(5.0)
    assert busy.scan_insert_ns(BUSY_ANCHOR_INSERTS) == pytest.approx(
        ref.under_load(5.0).scan_insert_ns(BUSY_ANCHOR_INSERTS), rel=0.01
    )
    slow = replace(ref, unstable_per_level_ns=10 * ref.unstable_per_level_ns)
    assert slow.busy_factor_anchored_to(ref) == 1.0  # a busy host never makes a page cheaper
    fast = replace(ref, unstable_base_ns=0, unstable_per_level_ns=ref.unstable_per_level_ns)
    assert fast.scan_insert_ns(BUSY_ANCHOR_INSERTS) < ref.scan_insert_ns(BUSY_ANCHOR_INSERTS)
    assert fast.busy_factor_anchored_to(ref) == ref.busy_page_factor  # never above it
    free = replace(ref, unstable_base_ns=0, unstable_per_level_ns=0)
    assert free.busy_factor_anchored_to(ref) == ref.busy_page_factor  # nothing to anchor to


def test_profiles_without_busy_terms_still_load(tmp_path: Path) -> None:
    d = CostProfile.default().to_dict()
    del d["sched_contention"], d["busy_page_factor"]
    f = tmp_path / "old.json"
    f.write_text(json.dumps(d))
    old = CostProfile.load(f)
    assert old.sched_contention == 1.0
    assert old.busy_page_factor == 1.0


@pytest.mark.parametrize(
    ("field", "value"),
    [("sched_contention", -0.1), ("busy_page_factor", 0.5), ("busy_page_factor", "2"),
     ("sched_contention", True), ("busy_page_factor", 1e9)],
)  # fmt: skip
def test_bad_busy_terms_are_refused(field: str, value: object) -> None:
    d = CostProfile.default().to_dict() | {field: value}
    with pytest.raises(InputDataError, match=field):
        CostProfile.from_dict(d)


# ---------------------------------------------------------------------- the driver


@pytest.fixture(scope="module")
def inp():  # type: ignore[no-untyped-def]
    return synthetic_input(SPEC)


def _run(inp, load: HostLoad | None, engine: str = "vectorized", **kw):  # type: ignore[no-untyped-def]
    opts = ReplayOptions(cost=PURE, host_load=load, settle_scans=4, grid_s=0.5, **kw)
    return replay(inp, knobs=KNOBS, options=opts, engine=engine)  # type: ignore[arg-type]


def test_a_busy_host_stretches_batches_not_sleeps_and_keeps_the_cpu(inp) -> None:  # type: ignore[no-untyped-def]
    # every snapshot visible from the first scan: the same work whatever the clock says
    idle = _run(inp, None, snapshot_scans=(1, 1))
    busy = _run(inp, HostLoad.given(3.0), snapshot_scans=(1, 1))
    share = 335 / (335 + 3 * 1024)
    # the same work: the same scans, visits and CPU (up to the rounding of the stretch: each
    # cost unit -- a visit, an unstable-tree level walked, a batch -- rounds up to a whole ns
    # of wall time, at most 0.1 ns of CPU each at the share of 0.098 here)
    assert busy.cost.full_scans == idle.cost.full_scans
    assert busy.cost.path_visits == idle.cost.path_visits
    assert busy.cost.cpu_s == pytest.approx(idle.cost.cpu_s, abs=3e-5)
    assert busy.final_counters == idle.final_counters
    # wall time: each batch's CPU takes cpu/share, the sleeps do not change; the next batch
    # starts a sleep after the tick in which one ends (timing.next_batch_ns), so each period
    # is the sleep and the batch's wall time less under a tick
    sleep_s = (sleep_ns(20, 250) + PURE.wake_latency_ns) / 1e9
    tick_s = 1 / 250

    def within_ticks(scan_time_s: float, batches: int, wall_s: float) -> None:
        additive = (batches - 1) * sleep_s + wall_s  # from the first start to the last end
        assert additive - (batches - 1) * tick_s - 1e-9 < scan_time_s <= additive + 1e-6

    longer = 0
    for b_scan, i_scan in zip(busy.scans[2:], idle.scans[2:], strict=True):
        # a scan runs from its first batch's start to its last batch's end
        within_ticks(i_scan.scan_time_s, i_scan.batches, i_scan.cpu_s)
        within_ticks(b_scan.scan_time_s, b_scan.batches, i_scan.cpu_s / share)
        longer += b_scan.scan_time_s > i_scan.scan_time_s
    assert longer == len(busy.scans[2:])  # ten times the wall time: ticks crossed
    slept = busy.cost.batches * sleep_s
    assert slept - busy.cost.batches * tick_s < busy.duration_s
    assert busy.duration_s <= 1.02 * (slept + busy.cost.cpu_s / share)
    rec = busy.provenance["host_load"]
    assert rec["source"] == "given"
    assert rec["ksmd_cpu_share"] == pytest.approx(share, abs=1e-6)
    assert idle.provenance["host_load"]["source"] == "assumed"
    assert idle.provenance["host_load"]["ksmd_cpu_share"] == 1.0


def test_the_per_page_factor_books_more_cpu(inp) -> None:  # type: ignore[no-untyped-def]
    load = HostLoad.given(2.0)
    opts = ReplayOptions(
        cost=replace(PURE, busy_page_factor=2.5), host_load=load, settle_scans=4, grid_s=0.5
    )
    slow = replay(inp, knobs=KNOBS, options=replace(opts, snapshot_scans=(1, 1)))
    plain = _run(inp, load, snapshot_scans=(1, 1))
    assert slow.cost.full_scans == plain.cost.full_scans
    assert slow.cost.path_visits == plain.cost.path_visits
    # every cost 2.5x but the skips' and the batch overhead's (docs/busy-host.md §3)
    kept = plain.cost.path_cpu_s["skip"] + plain.cost.batches * PURE.batch_overhead_ns / 1e9
    assert 0 < kept < plain.cost.cpu_s
    assert slow.cost.cpu_s == pytest.approx(kept + 2.5 * (plain.cost.cpu_s - kept), rel=1e-3)
    assert slow.provenance["host_load"]["cost_factor"] == 2.5


def test_the_recorded_load_is_the_default_and_a_given_one_overrides_it(inp) -> None:  # type: ignore[no-untyped-def]
    recorded = replace(inp, meta={**inp.meta, "host_load": HostLoad(4.0, "measured", "trace")})
    by_trace = _run(recorded, None)
    assert by_trace.provenance["host_load"]["source"] == "measured"
    assert by_trace.provenance["host_load"]["runnable_per_cpu"] == 4.0
    same = _run(inp, HostLoad(4.0, "given"))
    assert by_trace.duration_s == pytest.approx(same.duration_s)
    given = _run(recorded, HostLoad.given(0.0))
    assert given.provenance["host_load"]["source"] == "given"
    assert given.duration_s < by_trace.duration_s


@settings(max_examples=6)
@given(load=st.floats(0.0, 12.0), pts=st.sampled_from([100, 400, 2000]))
def test_both_engines_share_the_time_model(inp, load: float, pts: int) -> None:  # type: ignore[no-untyped-def]
    knobs = replace(KNOBS, pages_to_scan=pts)
    opts = ReplayOptions(
        cost=CostProfile.default(), host_load=HostLoad.given(load), duration_s=12.0, grid_s=0.5
    )
    a = replay(inp, knobs=knobs, options=opts, engine="reference")
    b = replay(inp, knobs=knobs, options=opts, engine="vectorized")
    assert [s.t_s for s in a.scans] == [s.t_s for s in b.scans]
    assert a.cost.cpu_s == b.cost.cpu_s
    assert a.final_counters == b.final_counters
