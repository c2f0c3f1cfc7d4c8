"""run_whatif end to end on small synthetic traces: scenarios, domains, fleets, executors."""

from __future__ import annotations

import dataclasses
import json
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from planner.engine import CostProfile, KsmKnobs, replay
from planner.errors import KnobError, PolicyError, UsageProblem
from planner.jsonable import to_jsonable
from planner.policy import parse_policies, preset
from planner.testing.builder import World, joining_world
from planner.trace.io import open_trace
from planner.whatif import (
    CapacityInputs,
    ExtrapolationSpec,
    InlineExecutor,
    KnobGrid,
    local_executor,
    run_whatif,
)
from planner.whatif.tasks import TaskFailure, run_batch, run_cow
from planner.whatif.uncertainty import PUBLISHED
from planner.whatif.writes import COW_COLUMNS, cow_breaks

INLINE = InlineExecutor()
GRID = KnobGrid.from_mapping({"pages_to_scan": [100, 1000], "sleep_ms": 20})
TENANTS = """
[sets.tenants]
default = "prctl"
default_domain = "{label:tenant}"
"""


class CountingExecutor(InlineExecutor):
    """Inline, counting the batches of replays and fits it was given (``submitted``), the
    replays and fits in them (``tasks``) and the other tasks, by function name (``others``)."""

    def __init__(self) -> None:
        self.submitted = 0
        self.tasks = 0
        self.others: list[str] = []

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        if fn is run_batch:
            self.submitted += 1
            self.tasks += len(args[0])
        else:
            self.others.append(fn.__name__)
        return super().submit(fn, *args, **kwargs)


def test_presets_across_a_grid(family_trace: Path) -> None:
    sets = [preset("off"), preset("prctl-all"), preset("workers-prctl")]
    res = run_whatif(family_trace, policy_sets=sets, grid=GRID, executor=INLINE)
    assert [s.id for s in res.scenarios] == ["s01", "s02", "s03", "s04", "s05", "s06"]
    assert [(s.policy_set, s.knobs["pages_to_scan"]) for s in res.scenarios] == [
        ("off", 100),
        ("off", 1000),
        ("prctl-all", 100),
        ("prctl-all", 1000),
        ("workers-prctl", 100),
        ("workers-prctl", 1000),
    ]
    off, prctl = res.scenarios[0], res.scenarios[3]
    assert off.saved_bytes == 0
    assert off.ksmd_cores == 0
    assert off.realization_ratio is None
    # the same replay through the engine directly
    ht = open_trace(family_trace).load_host()
    direct = replay(
        ht, knobs=KsmKnobs(pages_to_scan=1000, sleep_ms=20), resolver=preset("prctl-all").resolver()
    )
    assert prctl.saved_bytes == direct.final_truth.saved_bytes
    assert prctl.net_saved_bytes == direct.final_truth.net_saved_bytes
    assert prctl.anon_bytes == direct.final_truth.frames_without_ksm * 4096
    assert prctl.net_saved_percent == pytest.approx(100 * prctl.net_saved_bytes / prctl.anon_bytes)
    assert prctl.time_to_90_s == direct.cost.time_to_saving_s["90"]
    assert prctl.realization_ratio == pytest.approx(1.0)  # every duplicate merged by the end
    assert prctl.ksmd_cpu_percent > 0
    assert prctl.pages_scanned_per_full_scan is not None
    assert prctl.pages_scanned_per_full_scan > 0
    assert prctl.cross_domain_saved_bytes == 0
    # Pareto: off (0 CPU) is on it; of the two prctl-all runs the one that is dominated is not
    flags = {s.id: s.pareto for s in res.scenarios}
    assert flags["s01"]
    front = res.pareto_front()
    for s in res.scenarios:
        if s not in front:
            assert any(
                o.net_saved_bytes >= s.net_saved_bytes and o.ksmd_cores <= s.ksmd_cores
                for o in front
            )
    # outputs
    df = res.to_frame()
    assert list(df["scenario"]) == [s.id for s in res.scenarios]
    for col in (
        "net_saved_mib",
        "net_saved_percent",
        "time_to_90_s",
        "ksmd_cpu_percent",
        "pages_scanned_per_full_scan",
        "cross_domain_saved_mib",
        "pareto",
        "knob_pages_to_scan",
    ):
        assert col in df.columns
    csv = res.to_csv()
    assert csv.splitlines()[0].startswith("scenario,policy_set,cross_domain,knob_pages_to_scan")
    doc = to_jsonable(res)
    json.dumps(doc, allow_nan=False)
    assert doc["provenance"]["trace_hash"] == open_trace(family_trace).trace_hash
    assert doc["provenance"]["tool_version"].startswith("ksm-planner ")
    assert doc["provenance"]["policy_set"] == "off,prctl-all,workers-prctl"
    assert doc["pareto_ids"] == [s.id for s in front]
    assert [m["policy_set"] for m in doc["matches"]] == ["off", "prctl-all", "workers-prctl"]
    # timelines for plots
    tl = res.timelines("s04")
    assert {"grid", "scans", "processes"} == set(tl)
    assert tl["scans"]["full_scans"].tolist() == sorted(tl["scans"]["full_scans"].tolist())
    assert tl["grid"]["saved_frames"].iloc[-1] == direct.final_truth.saved_frames
    assert set(tl["processes"]["pid"]) == {100, 101, 102, 103, 104}
    full = to_jsonable(res, include={"timelines"})
    assert "timeline" in full["scenarios"][3]["hosts"][0]["replays"][0]
    assert "timeline" not in doc["scenarios"][3]["hosts"][0]["replays"][0]


def test_identical_replays_run_once(family_trace: Path) -> None:
    grid = KnobGrid.from_mapping({"pages_to_scan": [100, 1000], "advisor": ["none", "scan-time"]})
    ex = CountingExecutor()
    res = run_whatif(family_trace, policy_sets=[preset("prctl-all")], grid=grid, executor=ex)
    # the advisor sets pages_to_scan itself: two of the four scenarios are one replay
    assert ex.submitted == 3
    assert ex.others == ["run_cow"]  # the host's copy-on-write estimate: a task too
    adv = [s for s in res.scenarios if s.knobs["advisor"] == "scan-time"]
    assert adv[0].same_replay_as is None
    assert adv[1].same_replay_as == adv[0].id
    assert adv[1].net_saved_bytes == adv[0].net_saved_bytes
    assert adv[0].knobs_full.pages_to_scan == 500  # advisor_min_pages_to_scan


def test_security_domains_allow_and_deny(tenant_trace: Path) -> None:
    sets = parse_policies(TENANTS)
    grid = GRID.with_cross_domain(("allow", "deny"))
    res = run_whatif(tenant_trace, policy_sets=sets, grid=grid, executor=INLINE)
    assert [(s.cross_domain, s.knobs["pages_to_scan"]) for s in res.scenarios] == [
        ("allow", 100),
        ("allow", 1000),
        ("deny", 100),
        ("deny", 1000),
    ]
    allow, deny = res.scenarios[1], res.scenarios[3]
    host_a, host_d = allow.hosts[0], deny.hosts[0]
    assert host_a.domains == ("a", "b")
    # deny: each domain alone, "as if on separate hosts"
    assert [r.only_domain for r in host_d.replays] == ["a", "b"]
    assert deny.cross_domain_saved_bytes == 0
    assert deny.domain_pairs == ()
    # allow: the counterfactual is exactly the deny replays
    assert [r.only_domain for r in host_a.counterfactual] == ["a", "b"]
    assert allow.cross_domain_saved_bytes == allow.saved_bytes - deny.saved_bytes
    assert allow.cross_domain_saved_bytes > 0
    assert allow.domain_pairs[0].domains == ("a", "b")
    assert allow.domain_pairs[0].ksm_pages == allow.cross_domain_ksm_pages > 0
    # ksmd CPU of separate hosts adds up; the ideal of each domain alone is smaller
    assert deny.ksmd_cores == pytest.approx(
        sum(r.steady.cpu_percent for r in host_d.replays if r.steady) / 100
    )
    assert deny.policy_ideal_saved_bytes < allow.policy_ideal_saved_bytes
    # the set's own default is deny
    only_default = run_whatif(tenant_trace, policy_sets=sets, grid=GRID, executor=INLINE)
    assert {s.cross_domain for s in only_default.scenarios} == {"deny"}


def test_fleet_of_hosts(fleet_trace: Path) -> None:
    cap = CapacityInputs(host_mem_bytes=64 << 20, worker_other_bytes=1 << 20)
    res = run_whatif(
        fleet_trace,
        policy_sets=[preset("prctl-all")],
        grid=KnobGrid.from_mapping({"pages_to_scan": 1000}),
        capacity=cap,
        extrapolation=ExtrapolationSpec(replicas=10, n_resamples=20),
        executor=INLINE,
    )
    (scen,) = res.scenarios
    assert [h.host for h in scen.hosts] == ["web-1", "web-2"]
    assert scen.saved_bytes == sum(h.saved_bytes for h in scen.hosts)
    assert scen.anon_bytes == sum(h.anon_bytes for h in scen.hosts)
    assert scen.ksmd_cores == pytest.approx(sum(h.ksmd_cpu_percent for h in scen.hosts) / 100)
    assert scen.ksmd_cpu_percent == pytest.approx(scen.ksmd_cores * 100 / 2)
    single = run_whatif(
        fleet_trace,
        policy_sets=[preset("prctl-all")],
        hosts=["web-2"],
        grid=KnobGrid.from_mapping({"pages_to_scan": 1000}),
        executor=INLINE,
    )
    assert single.scenarios[0].saved_bytes == scen.hosts[1].saved_bytes
    assert scen.capacity is not None
    assert scen.capacity.hosts == 2
    assert scen.capacity.workers_with == sum(
        h.capacity.workers_with for h in scen.hosts if h.capacity
    )
    assert scen.capacity.gain is not None
    assert scen.capacity.gain > 0
    assert scen.projected is not None
    assert scen.projected.hosts == 2
    assert scen.projected.net_saved_bytes.value == pytest.approx(
        sum(h.projected.net_saved_bytes.value for h in scen.hosts if h.projected)
    )
    lo, hi = scen.projected.net_saved_bytes.low, scen.projected.net_saved_bytes.high
    assert lo <= scen.projected.net_saved_bytes.value <= hi
    assert {f.host for f in res.fits} == {"web-1", "web-2"}
    assert res.fit("prctl-all", "allow", "web-2") is not None
    assert res.fit("prctl-all", "allow", "web-2").k == 6  # type: ignore[union-attr]


def test_capacity_and_projection_follow_the_replay(family_trace: Path) -> None:
    cap = CapacityInputs(host_mem_bytes=32 << 20)
    res = run_whatif(
        family_trace,
        policy_sets=[preset("off"), preset("prctl-all")],
        grid=KnobGrid.from_mapping({"pages_to_scan": 1000}),
        capacity=cap,
        extrapolation=ExtrapolationSpec(replicas=4, n_resamples=20),
        executor=INLINE,
    )
    off, on = res.scenarios
    assert off.capacity is not None
    assert on.capacity is not None
    assert off.capacity.gain == 0
    assert off.capacity.workers_without == on.capacity.workers_without
    assert on.capacity.workers_with > on.capacity.workers_without
    # at N = k the projection is the replay's own saving (the fit goes through the data)
    assert on.projected is not None
    assert on.projected.net_saved_bytes.value == pytest.approx(on.net_saved_bytes, rel=0.02)


def test_process_pool_gives_the_same_answer(family_trace: Path) -> None:
    sets = [preset("prctl-all"), preset("workers-prctl")]
    inline = run_whatif(family_trace, policy_sets=sets, grid=GRID, executor=INLINE)
    pool = local_executor(2)
    try:
        pooled = run_whatif(family_trace, policy_sets=sets, grid=GRID, executor=pool)
    finally:
        pool.shutdown()
    pd.testing.assert_frame_equal(inline.to_frame(), pooled.to_frame())


def test_bad_input_fails_before_any_task(family_trace: Path) -> None:
    ex = CountingExecutor()
    bad = parse_policies(
        '[sets.x]\n[[sets.x.rules]]\nmatch = { comm = "java" }\naction = "prctl"\n'
    )
    with pytest.raises(PolicyError, match="rule 'rule 1' \\(comm=java\\) matches no process"):
        run_whatif(family_trace, policy_sets=bad, executor=ex)
    with pytest.raises(PolicyError, match="two policy sets are named 'off'"):
        run_whatif(family_trace, policy_sets=[preset("off"), preset("off")], executor=ex)
    with pytest.raises(UsageProblem, match="has no host 'db'"):
        run_whatif(family_trace, hosts=["db"], executor=ex)
    with pytest.raises(UsageProblem, match="selects no process"):
        run_whatif(family_trace, extrapolation=ExtrapolationSpec(group="comm:java"), executor=ex)
    with pytest.raises(KnobError, match="pages_to_scan must be at least 1"):
        run_whatif(family_trace, grid=KnobGrid(axes=(("pages_to_scan", (0,)),)), executor=ex)
    assert ex.submitted == 0


def _Obs(knobs: dict[str, Any], t_s: list[float], sharing: list[int]) -> Any:
    """A recording of the counters only (format version 1)."""
    from planner.trace.recording import ObservedTimeline

    counters = pd.DataFrame({"t_s": t_s, "pages_sharing": sharing}).set_index("t_s")
    return ObservedTimeline(
        meta={"knobs_at_start": knobs}, counters=counters, processes=pd.DataFrame()
    )


def test_observed_is_compared_with_the_matching_scenario(family_trace: Path) -> None:
    knobs = {
        "pages_to_scan": 1000,
        "sleep_millisecs": 20,
        "smart_scan": 1,
        "advisor_mode": "none",
        "max_page_sharing": 256,
        "use_zero_pages": 0,
    }
    obs = _Obs(knobs, [0.0, 5.0, 30.0], [0, 50, 170])
    res = run_whatif(
        family_trace,
        policy_sets=[preset("off"), preset("prctl-all")],
        grid=GRID,
        observed=obs,
        executor=INLINE,
    )  # type: ignore[arg-type]
    cmp = res.observed
    assert cmp is not None
    assert cmp.scenario_id == "s04"  # prctl-all at pages_to_scan 1000 (off saves nothing)
    assert cmp.knobs_match
    assert cmp.t_s == (0.0, 5.0, 30.0)
    final = res.scenario("s04").hosts[0].replays[0].final_counters.pages_sharing
    assert cmp.predicted.pages_sharing[-1] == final
    assert cmp.observed.pages_sharing == (0.0, 50.0, 170.0)
    assert cmp.final_relative_error == pytest.approx((final - 170) / 170)
    other = _Obs({**knobs, "pages_to_scan": 77}, [0.0], [0])
    res2 = run_whatif(
        family_trace, policy_sets=[preset("prctl-all")], grid=GRID, observed=other, executor=INLINE
    )  # type: ignore[arg-type]
    assert res2.observed is not None
    assert not res2.observed.knobs_match
    assert res2.observed.knob_differences["pages_to_scan"][0] == 77
    assert any("no scenario has the recording's knobs" in w for w in res2.warnings)
    # a canary of other knobs measures a difference of knobs, not the model's error
    assert res.model_error is not None
    assert res.model_error.source == "canary"
    assert res2.model_error is not None
    assert res2.model_error.source == "published"
    # a canary that merged about what the replay predicted is not warned about; one that
    # merged three times as much is (the model does not explain the workload)
    for factor, warned in ((1.0, False), (3.0, True)):
        obs3 = _Obs(knobs, [0.0, 5.0, 30.0], [0, 50, round(factor * final)])
        res3 = run_whatif(
            family_trace, policy_sets=[preset("prctl-all")], grid=GRID, observed=obs3,
            executor=INLINE,
        )  # type: ignore[arg-type]  # fmt: skip
        assert res3.model_error is not None
        assert res3.model_error.point == pytest.approx(factor, rel=0.01)
        assert any("the canary merged" in w for w in res3.warnings) == warned, res3.warnings


def test_executor_is_any_concurrent_futures_executor(family_trace: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as ex:
        assert isinstance(ex, Executor)
        threaded = run_whatif(
            family_trace, policy_sets=[preset("prctl-all")], grid=GRID, executor=ex
        )
    inline = run_whatif(family_trace, policy_sets=[preset("prctl-all")], grid=GRID, executor=INLINE)
    pd.testing.assert_frame_equal(threaded.to_frame(), inline.to_frame())


def test_denied_domains_are_placed_on_separate_hosts(tenant_trace: Path) -> None:
    # mainline KSM cannot keep domains apart on one host: deny = each domain on its own hosts,
    # with its own ksmd, its own growth fit and its own capacity
    sets = parse_policies(TENANTS)
    res = run_whatif(
        tenant_trace,
        policy_sets=sets,
        grid=KnobGrid.from_mapping({"pages_to_scan": 1000, "cross_domain": ["allow", "deny"]}),
        capacity=CapacityInputs(host_mem_bytes=32 << 20),
        extrapolation=ExtrapolationSpec(n_resamples=20),
        executor=INLINE,
    )
    allow, deny = res.scenarios
    h = deny.hosts[0]
    assert h.placement == "separate hosts"
    assert allow.hosts[0].placement == "one host"
    assert [d.domain for d in h.domain_results] == ["a", "b"]
    # one ksmd per host: a host's ksmd is the busiest domain's, the fleet's the sum
    assert h.ksmd_cpu_percent == pytest.approx(max(d.ksmd_cpu_percent for d in h.domain_results))
    assert h.ksmd_cores == pytest.approx(sum(d.ksmd_cpu_percent for d in h.domain_results) / 100)
    # a fit of each domain's replicas alone, and a capacity of a host of each domain
    domain_fits = [f for f in res.fits if f.domain is not None]
    assert sorted((f.domain, f.k) for f in domain_fits) == [("a", 2), ("b", 2)]
    assert all(d.capacity is not None for d in h.domain_results)
    assert h.capacity is not None
    assert h.capacity.hosts == 2
    assert h.capacity.workers_with == sum(
        d.capacity.workers_with for d in h.domain_results if d.capacity
    )
    # the placement is ready when its slowest domain is
    assert h.projected_time_to_90_s == pytest.approx(
        max(d.projected_time_to_90_s or 0.0 for d in h.domain_results)
    )
    assert deny.capacity is not None
    assert allow.capacity is not None
    assert allow.capacity.hosts == 1


def test_the_published_model_error_without_a_canary(family_trace: Path) -> None:
    res = run_whatif(
        family_trace,
        policy_sets=[preset("off"), preset("prctl-all")],
        grid=KnobGrid.from_mapping({"pages_to_scan": 1000}),
        capacity=CapacityInputs(host_mem_bytes=32 << 20),
        extrapolation=ExtrapolationSpec(n_resamples=20),
        executor=INLINE,
    )
    me = res.model_error
    assert me is not None
    assert me.source == "published"  # no canary; no workload label: every published run
    assert len(me.ratios) == sum(len(r.pages_sharing_errors) for r in PUBLISHED.values())
    assert len(me.ratios) == 27  # PostgreSQL, churn, Django: 3 runs each; Node 5; JVM 13
    off, on = res.scenarios
    assert on.hosts[0].saving_factor == pytest.approx(me.point)
    assert off.hosts[0].saving_factor == 1.0  # KSM off: nothing to correct
    assert on.capacity is not None
    assert on.capacity.saving_factor == pytest.approx(me.point)
    assert on.capacity.dominant_source in ("sampling", "model", "configuration", "time")
    assert on.hosts[0].writes is not None
    assert on.hosts[0].policy_ideal_by_snapshot_bytes[-1] == on.hosts[0].policy_ideal_saved_bytes


def test_copy_on_write_estimates_are_tasks(fleet_trace: Path) -> None:
    """Each host's copy-on-write estimate runs as a task on the executor (its pages are
    read in a worker, not in the client): the one ``cow_breaks`` gives, per host; a trace
    that changed since the client opened it is a ``TraceFormatError`` raised in the client."""
    ex = CountingExecutor()
    res = run_whatif(
        fleet_trace,
        policy_sets=[preset("prctl-all")],
        grid=KnobGrid.from_mapping({"pages_to_scan": 1000}),
        executor=ex,
    )
    assert ex.others == ["run_cow", "run_cow"]
    tr = open_trace(fleet_trace)
    for h in res.scenarios[0].hosts:
        want = cow_breaks(
            tr.load_host(h.host, pages=False), tr.iter_snapshot_pages(h.host, COW_COLUMNS)
        )
        assert h.writes == want
    failed = run_cow(str(fleet_trace), "sha256:" + "0" * 64, "web-1")
    assert isinstance(failed, TaskFailure)
    assert failed.kind == "TraceFormatError"
    assert "changed while the what-if ran" in failed.message


class _Recorder:
    """A :class:`planner._progress.Progress` that records what it is told."""

    def __init__(self) -> None:
        self.totals: list[float | None] = []
        self.done = 0.0

    def start(self, task: str, total: float | None) -> None:
        self.totals.append(total)

    def advance(self, amount: float) -> None:
        self.done += amount

    def finish(self) -> None:
        pass


def test_the_progress_counts_every_task_the_estimates_included(fleet_trace: Path) -> None:
    """One step per replay or fit and per host's copy-on-write estimate (about 9 s of a
    16 M-page host's work), all of them done by the end."""
    ex = CountingExecutor()
    bar = _Recorder()
    run_whatif(
        fleet_trace,
        policy_sets=[preset("prctl-all")],
        grid=KnobGrid.from_mapping({"pages_to_scan": [1000, 2000]}),
        executor=ex,
        progress=bar,
    )
    replays_and_fits = ex.tasks
    assert replays_and_fits >= 4  # two knob settings x two hosts, at least
    assert len(ex.others) == 2
    assert bar.totals == [replays_and_fits + 2]
    assert bar.done == replays_and_fits + 2


@pytest.mark.parametrize(
    ("host_cpu", "warned"),
    [
        ("Intel(R) Xeon(R) Processor @ 2.80GHz (family 6, model 106)", True),
        ("Intel Xeon (family 6, model 207)", False),  # the shipped profile's own CPU
        (None, False),  # a capture that could not read /proc/cpuinfo, or an older one
    ],
)
def test_a_trace_of_another_cpu_than_the_cost_profiles_is_warned_of(
    tmp_path: Path, host_cpu: str | None, warned: bool
) -> None:
    w = World("web-1")
    w.spawn(100, comm="gunicorn")
    w.map(100, 0x10000, [1000 + i for i in range(20)], kind="heap")
    w.snapshot(0.0)
    w.fork(100, 101)
    w.map(101, 0x200000, [5000 + j for j in range(20)], kind="anon")
    w.snapshot(10.0)
    out = tmp_path / "t"
    w.write_trace(out, extra={"capture": {"host_cpu": host_cpu}})
    res = run_whatif(out, policy_sets=[preset("prctl-all")], grid=GRID, executor=INLINE)
    about = [w for w in res.warnings if "cost profile" in w]
    assert len(about) == int(warned), res.warnings
    if warned:
        assert str(host_cpu) in about[0]
        assert "family 6, model 207" in about[0]


def test_a_calibrated_cost_profile_with_its_provenance_runs(family_trace: Path) -> None:
    # a profile of 'ksm-planner calibrate' carries its provenance (dicts): it used to make
    # whatif's task keys unhashable (TypeError)
    prof = dataclasses.replace(
        CostProfile.default(),
        name="calibrated-x",
        batch_overhead_ns=900_000,
        provenance={"cpu_model": "Xeon (family 6, model 207)", "measurements": {"runs": [1]}},
    )
    res = run_whatif(
        family_trace, policy_sets=[preset("prctl-all")], grid=GRID, executor=INLINE,
        cost_profile=prof,
    )  # fmt: skip
    base = run_whatif(family_trace, policy_sets=[preset("prctl-all")], grid=GRID, executor=INLINE)
    assert res.replay_options.cost_profile == "calibrated-x"
    assert [s.ksmd_cpu_percent for s in res.scenarios] != [
        s.ksmd_cpu_percent for s in base.scenarios
    ]


def test_soft_dirty_tracking_is_read_from_the_snapshots(tmp_path: Path) -> None:
    """Only a trace whose sampled intervals all tracked writes with soft-dirty takes the
    soft-dirty errors (planner.whatif.uncertainty.PUBLISHED_SOFT_DIRTY): not a content-only
    capture, nor a version-1 trace, which has no sampling at all."""
    import shutil

    from planner.testing.tamper import as_schema_v1
    from planner.whatif.run import _tracked_with_soft_dirty

    root = Path(__file__).resolve().parents[2] / "traces"
    soft = open_trace(root / "softdirty" / "postgres-1" / "trace")
    assert _tracked_with_soft_dirty(soft, soft.hosts)
    content_only = open_trace(root / "django-preload")
    assert not _tracked_with_soft_dirty(content_only, content_only.hosts)
    v1 = tmp_path / "v1"
    shutil.copytree(root / "django-preload", v1)
    for p in v1.rglob("*"):
        p.chmod(0o700 if p.is_dir() else 0o600)
    as_schema_v1(v1, content_only.hosts[0])
    old = open_trace(v1)
    assert old.schema_version == 1
    assert not _tracked_with_soft_dirty(old, old.hosts)


def test_the_joins_a_trace_shows_are_warned_of_once_per_host(
    tmp_path: Path, family_trace: Path
) -> None:
    out = tmp_path / "t"
    joining_world("web-1").write_trace(out)
    res = run_whatif(out, policy_sets=[preset("prctl-all")], grid=GRID, executor=INLINE)
    about = [w for w in res.warnings if "continues none of these joins" in w]
    assert len(about) == 1, res.warnings
    assert about[0].startswith("host web-1: between its snapshots")
    assert "60 pages a second" in about[0]
    assert "248 shared pages" in about[0]
    # the family trace's workers hold still: nothing to warn of
    res = run_whatif(family_trace, policy_sets=[preset("prctl-all")], grid=GRID, executor=INLINE)
    assert not [w for w in res.warnings if "joins" in w], res.warnings
