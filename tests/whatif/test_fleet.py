"""Fleets: members of a directory of traces or of a multi-host trace, the fleet figures, and
the same figures on a Dask LocalCluster, locally, and whatever order the tasks finish in."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from planner.errors import TraceFormatError, UsageProblem
from planner.jsonable import to_jsonable
from planner.policy import preset
from planner.testing.fleet import family_world, write_family_fleet
from planner.trace.io import TraceWriter
from planner.whatif import (
    CapacityInputs,
    ExtrapolationSpec,
    InlineExecutor,
    KnobGrid,
    dask_executor,
    run_whatif,
)
from planner.whatif.fleet import (
    Distribution,
    FleetResult,
    fleet_members,
    is_fleet,
    run_fleet,
)

GRID = KnobGrid.from_mapping({"pages_to_scan": [100, 1000]})
SETS = [preset("prctl-all"), preset("workers-prctl")]
CAPACITY = CapacityInputs(host_mem_bytes=1 << 30, headroom_fraction=0.1)
#: A cheap growth fit (the default 200 resamples take seconds per host).
FIT = ExtrapolationSpec(orders=4, n_resamples=20)
RUN: dict[str, Any] = {
    "policy_sets": SETS,
    "grid": GRID,
    "capacity": CAPACITY,
    "extrapolation": FIT,
}


@pytest.fixture(scope="module")
def fleet8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of 8 one-host traces (2 to 7 workers each)."""
    root = tmp_path_factory.mktemp("fleet") / "fleet8"
    write_family_fleet(root, 8)
    return root


@pytest.fixture(scope="module")
def local8(fleet8: Path) -> FleetResult:
    """The fleet of 8 on the local process pool (the default executor)."""
    return run_fleet(fleet8, **RUN, max_workers=2)


def _figures(r: FleetResult) -> Any:
    """Every figure of a fleet result (bootstrap replicates included), not how it ran."""
    doc = to_jsonable(r, include={"replicates"})
    doc.pop("provenance")
    doc.pop("elapsed_s")
    return doc


def _multi_host_trace(out: Path, hosts: list[tuple[str, int, int]]) -> Path:
    with TraceWriter(out, source="synthetic") as tw:
        for name, workers, seed in hosts:
            w = family_world(name, workers=workers, seed=seed)
            w._emit(tw.host(name))
    return out


# ----------------------------------------------------------------------------- members


def test_a_directory_of_traces_is_a_fleet_in_name_order(fleet8: Path) -> None:
    members = fleet_members(fleet8)
    assert [m.label for m in members] == [f"web-{i:02d}" for i in range(8)]
    assert [Path(m.trace_path).name for m in members] == [f"host-{i:02d}" for i in range(8)]
    assert is_fleet(fleet8)
    assert not is_fleet(fleet8 / "host-00")  # one trace of one host
    picked = fleet_members(fleet8, ["web-03", "web-01"])
    assert [m.label for m in picked] == ["web-03", "web-01"]


def test_hosts_of_the_same_name_in_two_traces_are_labelled_by_trace(tmp_path: Path) -> None:
    (tmp_path / "f").mkdir()
    for t in ("dc1", "dc2"):
        family_world("web", workers=2, seed=1).write_trace(tmp_path / "f" / t)
    members = fleet_members(tmp_path / "f")
    assert [m.label for m in members] == ["dc1/web", "dc2/web"]
    with pytest.raises(UsageProblem, match="2 hosts named 'web'"):
        fleet_members(tmp_path / "f", ["web"])
    assert fleet_members(tmp_path / "f", ["dc2/web"])[0].trace_path.endswith("dc2")


def test_a_trace_with_several_hosts_is_a_fleet(tmp_path: Path) -> None:
    trace = _multi_host_trace(tmp_path / "two", [("a", 2, 0), ("b", 3, 1)])
    assert is_fleet(trace)
    assert not is_fleet(trace, ["a"])  # one --host: that host's own what-if
    assert is_fleet(trace, ["a", "b"])
    assert [m.label for m in fleet_members(trace)] == ["a", "b"]


def test_bad_fleet_inputs_are_one_clear_error(tmp_path: Path, fleet8: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(TraceFormatError, match="neither a trace nor a directory of traces"):
        fleet_members(tmp_path / "empty")
    with pytest.raises(TraceFormatError, match="does not exist"):
        fleet_members(tmp_path / "nowhere")
    with pytest.raises(UsageProblem, match="no host 'web-99'") as info:
        fleet_members(fleet8, ["web-99"])
    assert "web-00" in (info.value.hint or "")
    with pytest.raises(UsageProblem, match="recording"):
        run_fleet(fleet8, observed=tmp_path)


# ----------------------------------------------------------------------------- figures


def test_fleet_figures_add_up_the_hosts_own_what_ifs(fleet8: Path, local8: FleetResult) -> None:
    """Each host's figures are those of a what-if of its trace alone; the fleet adds them."""
    alone = [run_whatif(fleet8 / f"host-{i:02d}", **RUN, executor=InlineExecutor()) for i in (0, 5)]
    assert len(local8.scenarios) == 4
    for k, s in enumerate(local8.scenarios):
        for i, r in zip((0, 5), alone, strict=True):
            h, ref = s.hosts[i], r.scenarios[k].hosts[0]
            assert (h.net_saved_bytes, h.anon_bytes) == (ref.net_saved_bytes, ref.anon_bytes)
            assert h.workers_with == ref.capacity.workers_with  # type: ignore[union-attr]
        assert s.net_saved_bytes == sum(h.net_saved_bytes for h in s.hosts)
        assert s.anon_bytes == sum(h.anon_bytes for h in s.hosts)
        assert s.ksmd_cores == pytest.approx(sum(h.ksmd_cpu_percent for h in s.hosts) / 100)
        fractions = [h.net_saved_fraction for h in s.hosts]
        d = s.net_saved_fraction_across_hosts
        assert (d.min, d.max, d.hosts) == (min(fractions), max(fractions), 8)
        assert d.p50 == pytest.approx(float(np.median(fractions)))
        assert d.min <= d.p10 < d.p50 < d.p90 <= d.max  # the hosts differ
        c = s.capacity
        assert c is not None
        assert c.workers_without == sum(h.workers_without or 0 for h in s.hosts)
        assert c.workers_with == sum(h.workers_with or 0 for h in s.hosts)
        assert s.extra_workers == c.workers_with - c.workers_without > 0
        assert s.extra_host_equivalents == pytest.approx(8 * c.gain)  # type: ignore[operator]
        g = c.gain or 0.0
        assert s.hosts_freed_equivalent == pytest.approx(8 * g / (1 + g))
        assert c.gain_interval is not None
        assert c.gain_interval[0] < g < c.gain_interval[1]


def test_a_multi_host_trace_gives_the_fleet_of_its_hosts_as_separate_traces(
    tmp_path: Path,
) -> None:
    spec = [("a", 2, 0), ("b", 4, 1), ("c", 3, 2)]
    one = _multi_host_trace(tmp_path / "one", spec)
    split = tmp_path / "split"
    split.mkdir()
    for name, workers, seed in spec:
        family_world(name, workers=workers, seed=seed).write_trace(split / name)
    kw: dict[str, Any] = {"policy_sets": SETS[:1], "grid": GRID, "executor": InlineExecutor()}
    a, b = run_fleet(one, **kw), run_fleet(split, **kw)
    for x, y in zip(a.scenarios, b.scenarios, strict=True):
        assert to_jsonable(x.hosts) != []
        assert [h.net_saved_bytes for h in x.hosts] == [h.net_saved_bytes for h in y.hosts]
        assert to_jsonable(x.net_saved_fraction_across_hosts) == to_jsonable(
            y.net_saved_fraction_across_hosts
        )
        assert x.ksmd_cores == y.ksmd_cores


def test_distribution_quantiles_interpolate_between_hosts() -> None:
    d = Distribution.of([0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0])
    assert (d.min, d.max, d.mean, d.hosts) == (0.0, 70.0, 35.0, 8)
    assert d.p10 == pytest.approx(7.0)  # 10 % of the way over 7 gaps: 0.7 of the first
    assert d.p50 == pytest.approx(35.0)
    assert d.p90 == pytest.approx(63.0)


def test_best_respects_the_ksmd_budget_of_the_busiest_host(local8: FleetResult) -> None:
    best = local8.best()
    assert best is not None
    assert best.net_saved_bytes == max(s.net_saved_bytes for s in local8.scenarios)
    cpu = sorted({s.ksmd_cpu_percent_across_hosts.max for s in local8.scenarios})
    within = local8.best(cpu[0])
    assert within is not None
    assert within.ksmd_cpu_percent_across_hosts.max == cpu[0]
    assert local8.best(cpu[0] / 2) is None


# ----------------------------------------------------------------------------- executors


class ShuffledExecutor(Executor):
    """Runs the submitted tasks one at a time, each time a random one of those waiting: they
    finish in a random order (``finished``: the submission index of each, as it finished).

    One thread, so that nothing else runs concurrently with a task (the fits' warning filters
    are process-global)."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._cv = threading.Condition()
        self._waiting: list[tuple[int, Future[Any], Callable[[], Any]]] = []
        self._submitted = 0
        self._closed = False
        self.finished: list[int] = []
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        with self._cv:
            self._waiting.append((self._submitted, fut, lambda: fn(*args, **kwargs)))
            self._submitted += 1
            self._cv.notify()
        return fut

    def _loop(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._closed or len(self._waiting) > 0, timeout=0.02)
                if self._closed and not self._waiting:
                    return
                if not self._waiting:
                    continue
                idx, fut, call = self._waiting.pop(self._rng.randrange(len(self._waiting)))
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(call())
            except BaseException as exc:
                fut.set_exception(exc)
            self.finished.append(idx)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        if wait:
            self._thread.join()


def test_the_figures_do_not_depend_on_the_order_tasks_finish_in(
    fleet8: Path, local8: FleetResult
) -> None:
    for seed in (1,):
        ex = ShuffledExecutor(seed)
        try:
            res = run_fleet(fleet8, **RUN, executor=ex)
        finally:
            ex.shutdown()
        assert ex.finished != sorted(ex.finished)  # not in submission order
        assert _figures(res) == _figures(local8)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    distributed = pytest.importorskip("distributed", reason="the 'dist' extra is not installed")
    # worker processes: every task crosses a process boundary, as on a real cluster (and no
    # two fits share a process's warning filters)
    with distributed.LocalCluster(
        processes=True, n_workers=2, threads_per_worker=1, dashboard_address=":0"
    ) as c:
        yield c


def test_a_fleet_of_8_on_a_dask_local_cluster_equals_the_local_run(
    cluster: Any, fleet8: Path, local8: FleetResult
) -> None:
    with dask_executor(cluster.scheduler_address, timeout_s=10) as ex:
        remote = run_fleet(fleet8, **RUN, executor=ex)
    assert remote.provenance["extra"]["executor"] != local8.provenance["extra"]["executor"]
    assert _figures(remote) == _figures(local8)
    assert len(remote.members) == 8
    assert remote.provenance["extra"]["tasks"] == local8.provenance["extra"]["tasks"]


def test_a_damaged_host_fails_the_fleet_with_its_error_and_leaves_no_worker(
    tmp_path: Path,
) -> None:
    import multiprocessing

    root = tmp_path / "fleet"
    write_family_fleet(root, 3)
    pages = next((root / "host-01").glob("host=*/pages.parquet"))
    data = bytearray(pages.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: found when a worker reads it
    pages.chmod(0o600)
    pages.write_bytes(bytes(data))
    before = {p.pid for p in multiprocessing.active_children()}  # (a cluster of another test)
    with pytest.raises(TraceFormatError, match=r"pages\.parquet"):
        run_fleet(root, policy_sets=SETS[:1], grid=GRID, max_workers=2)
    # the pool's workers were told to stop; one may still be exiting when the call returns
    # (seen once on a busy host): it must be gone within seconds, not left running
    deadline = time.monotonic() + 10.0
    left = [p for p in multiprocessing.active_children() if p.pid not in before]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in multiprocessing.active_children() if p.pid not in before]
    assert left == []


def test_each_host_of_a_mixed_fleet_is_priced_by_the_profile_of_its_cpu(tmp_path: Path) -> None:
    # docs/busy-host.md §7: a fleet of traces from two CPUs, each replayed with the profile
    # shipped for its own CPU; the fleet's provenance names it per trace
    (tmp_path / "f").mkdir()
    cpus = {"amd": "AMD EPYC (family 25, model 17)", "xeon": "Intel Xeon (family 6, model 106)"}
    for name, cpu in cpus.items():
        world = family_world(name, workers=2, seed=1)
        world.write_trace(tmp_path / "f" / name, extra={"capture": {"host_cpu": cpu}})
    res = run_fleet(tmp_path / "f", policy_sets=SETS[:1], grid=GRID, executor=InlineExecutor())
    profiles = {Path(t["path"]).name: t["cost_profile"] for t in res.provenance["traces"]}
    assert profiles == {"amd": "amd-epyc-25-17", "xeon": "default"}
    cpu = {r.hosts[0]: r.scenarios[0].hosts[0].ksmd_cpu_s for r in res.runs}
    assert cpu["amd"] != cpu["xeon"]  # the same workload, priced by two profiles
    # the Xeon of another generation has no profile: the default, and the warning says so
    assert any("Intel Xeon (family 6, model 106)" in w for w in res.warnings)
