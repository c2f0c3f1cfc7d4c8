"""Capacity arithmetic by hand-computed cases, and against the Meta/Instagram figures.

The Instagram snapshot (Roesch, "mm: process/cgroup ksm support" v9, cover letter on
linux-mm, April 2023): a 64 GB host, pages_to_scan 4000 / sleep 20 ms, pages_shared 129,547,
pages_sharing 5,119,146, pages_unshared 1,760,924, pages_volatile 10,761,341,
general_profit 20,158,298,048 B.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from planner.errors import UsageProblem
from planner.whatif.capacity import (
    CapacityInputs,
    HostCapacityModel,
    combine_hosts,
    estimate_capacity,
    max_fit,
    memory_bound_gain,
    parse_headroom,
    parse_size,
)
from planner.whatif.extrapolate import GrowthFit
from planner.whatif.footprint import CapacityPlan, plan_capacity

PAGE = 4096
GIB = 1 << 30
MIB = 1 << 20

# Instagram, 64 GB host
HOST_BYTES = 64 * GIB
PAGES_SHARED = 129_547
PAGES_SHARING = 5_119_146
PAGES_UNSHARED = 1_760_924
PAGES_VOLATILE = 10_761_341
GENERAL_PROFIT = 20_158_298_048
RMAP_ITEMS = PAGES_SHARED + PAGES_SHARING + PAGES_UNSHARED + PAGES_VOLATILE


def linear_model(
    *,
    worker_frames: float,
    saved_per_worker: float,
    base_frames: float = 0,
    ratio: float = 1.0,
    meta_per_page: float = 0.0,
    ksmd_cores: float = 0.0,
) -> HostCapacityModel:
    """Identical workers, each bringing ``worker_frames`` frames of which an ideal KSM frees
    ``saved_per_worker``; every worker page is mergeable."""
    growth = GrowthFit(
        frames_a=base_frames,
        frames_b=worker_frames,
        distinct_a=base_frames,
        distinct_b=worker_frames - saved_per_worker,
        eligible_a=0.0,
        eligible_b=worker_frames,
    )
    return HostCapacityModel(PAGE, growth, ratio, meta_per_page, ksmd_cores)


def bare(**kwargs: float) -> CapacityPlan:
    """A capacity plan from inputs, with no memory outside the trace (every size given as 0)."""
    sizes = {
        "worker_file_bytes": 0,
        "worker_shmem_bytes": 0,
        "worker_page_tables_bytes": 0,
        "worker_other_bytes": 0,
        "base_other_bytes": 0,
    }
    return plan_capacity(CapacityInputs(**{**sizes, **kwargs}))  # type: ignore[arg-type]


def test_instagram_counter_identities() -> None:
    saved_bytes = PAGES_SHARING * PAGE
    assert saved_bytes / GIB == pytest.approx(19.53, abs=0.01)  # "≈19.5 GiB saved"
    assert saved_bytes / HOST_BYTES == pytest.approx(0.305, abs=0.001)  # "≈30% of RAM"
    profit = saved_bytes - RMAP_ITEMS * 64  # general_profit = sharing * 4 KiB - rmap_items * 64 B
    assert profit == 19_830_680_704
    assert abs(profit - GENERAL_PROFIT) / GENERAL_PROFIT < 0.02  # the 1.6 % non-atomic read gap
    ratio = PAGES_SHARING / PAGES_SHARED
    assert ratio == pytest.approx(39.5, abs=0.1)


def test_instagram_memory_bound_capacity() -> None:
    # 128 workers of 512 MiB fill the 64 GiB host; KSM frees the Instagram share of each
    worker_frames = 512 * MIB // PAGE
    s = PAGES_SHARING * PAGE / HOST_BYTES
    model = linear_model(worker_frames=worker_frames, saved_per_worker=s * worker_frames)
    inputs = bare(host_mem_bytes=HOST_BYTES)
    # at 128 workers the model saves exactly the reported pages_sharing
    assert model.ksm_net_saved_bytes(128) / PAGE == pytest.approx(PAGES_SHARING)
    est = estimate_capacity(model, inputs)
    assert est.workers_without == 128
    assert est.workers_with == math.floor(128 / (1 - s)) == 184
    assert est.limit_with == "memory"
    assert est.gain == pytest.approx(56 / 128)
    assert memory_bound_gain(s) == pytest.approx(0.4391, abs=1e-4)  # "30 % saved -> up to +43 %"
    assert est.gain <= memory_bound_gain(s)
    assert memory_bound_gain(s) - est.gain < 1 / 128  # only the floor separates them


def test_instagram_capacity_net_of_metadata() -> None:
    worker_frames = 512 * MIB // PAGE
    s = PAGES_SHARING * PAGE / HOST_BYTES
    # KSM's metadata: rmap_items * 64 B over the host's 128 * 131072 pages
    meta_per_page = RMAP_ITEMS * 64 / (128 * worker_frames)
    model = linear_model(
        worker_frames=worker_frames, saved_per_worker=s * worker_frames, meta_per_page=meta_per_page
    )
    assert model.ksm_net_saved_bytes(128) == pytest.approx(19_830_680_704)  # = the profit identity
    est = estimate_capacity(model, bare(host_mem_bytes=HOST_BYTES))
    net_s = 19_830_680_704 / HOST_BYTES
    assert est.workers_with == math.floor(128 / (1 - net_s)) == 179
    assert est.gain == pytest.approx(51 / 128)


def test_instagram_cpu_limits_the_gain() -> None:
    # 32 CPUs; ksmd ≈ 4-8 % of the host (the advisor's "25 % = 1-2 %" reply) ≈ 2 cores
    worker_frames = 512 * MIB // PAGE
    s = PAGES_SHARING * PAGE / HOST_BYTES
    model = linear_model(
        worker_frames=worker_frames, saved_per_worker=s * worker_frames, ksmd_cores=2.0
    )
    inputs = bare(host_mem_bytes=HOST_BYTES, host_cpus=32, cpu_per_worker=0.2)
    est = estimate_capacity(model, inputs)
    assert est.workers_without == 128  # memory-bound: 32 / 0.2 = 160 would fit
    assert est.workers_with == 150  # (32 - 2) / 0.2: CPU-bound before memory (184)
    assert est.limit_with == "cpu"
    assert est.gain == pytest.approx(22 / 128)  # ≈ +17 %: the order of Meta's "around 20 %"
    assert (est.memory_limit_with, est.cpu_limit_with, est.cpu_limit_without) == (184, 150, 160)
    assert est.ksmd_host_share == pytest.approx(2 / 32)


def test_headroom_base_and_other_memory() -> None:
    # base 1 GiB, workers of 100 MiB anon + 28 MiB other, KSM frees 40 MiB each at ratio 0.5
    model = linear_model(
        worker_frames=100 * MIB / PAGE,
        saved_per_worker=40 * MIB / PAGE,
        base_frames=GIB / PAGE,
        ratio=0.5,
    )
    inputs = bare(
        host_mem_bytes=16 * GIB,
        headroom_bytes=GIB,
        headroom_fraction=0.0625,
        worker_other_bytes=28 * MIB,
    )
    budget = 16 * GIB - GIB - GIB  # 14 GiB
    assert inputs.budget_bytes == budget
    assert inputs.footprint.kernel_bytes.source == "given"
    # without: (14 GiB - 1 GiB) / 128 MiB = 104; with: 13 GiB / (128 - 20) MiB = 123.26
    est = estimate_capacity(model, inputs)
    assert est.workers_without == 104
    assert est.workers_with == 123
    assert est.per_worker_anon_bytes == pytest.approx(100 * MIB)
    assert est.base_bytes == pytest.approx(GIB)
    assert est.ksm_net_saved_bytes == pytest.approx(123 * 20 * MIB)


def test_base_too_big_and_no_ksm() -> None:
    model = linear_model(worker_frames=10, saved_per_worker=5, base_frames=10 * GIB / PAGE)
    est = estimate_capacity(model, bare(host_mem_bytes=8 * GIB))
    assert est.workers_without == 0
    assert est.workers_with == 0
    assert est.gain is None
    off = linear_model(worker_frames=256, saved_per_worker=100, ratio=0.0)
    est = estimate_capacity(off, bare(host_mem_bytes=GIB))
    assert est.workers_with == est.workers_without == 1024
    assert est.gain == 0.0


def test_intervals_come_from_the_replicates() -> None:
    model = linear_model(worker_frames=256, saved_per_worker=64)
    reps = [GrowthFit(0, 256, 0, 256 - s, eligible_b=256) for s in (32, 48, 64, 80, 96)]
    est = estimate_capacity(model, bare(host_mem_bytes=GIB), replicates=reps, confidence=0.8)
    assert est.workers_without == 1024
    assert est.workers_with == 1365  # 1024 * 256 / 192
    lo, hi = est.workers_with_interval
    assert 1170 <= lo < 1365 < hi <= 1638  # between 1024*256/224 and 1024*256/160
    assert est.gain_interval is not None
    assert est.gain_interval[0] < est.gain < est.gain_interval[1]  # type: ignore[operator]
    fleet = combine_hosts([est, est])
    assert fleet.workers_with == 2 * 1365
    assert fleet.hosts == 2
    assert fleet.gain == pytest.approx(est.gain)


def test_max_fit() -> None:
    assert max_fit(lambda n: 10.0 * n, 95, upper=1000) == 9
    assert max_fit(lambda n: 10.0 * n, 100, upper=1000) == 10
    assert max_fit(lambda n: 0.0, 1, upper=77) == 77
    assert max_fit(lambda n: 5.0 + n, 4, upper=10) == 0
    for hint in (-5, 0, 3, 9, 10, 11, 500, 2000):
        assert max_fit(lambda n: 10.0 * n, 95, upper=1000, hint=hint) == 9
        assert max_fit(lambda n: 0.0, 1, upper=77, hint=hint) == 77
        assert max_fit(lambda n: 5.0 + n, 4, upper=10, hint=hint) == 0


@given(
    base=st.integers(0, 10_000),
    slope=st.integers(0, 1_000),
    bend=st.integers(0, 50),
    budget=st.integers(0, 200_000),
    upper=st.integers(1, 5_000),
    hint=st.integers(-10, 6_000),
)
def test_max_fit_from_a_hint_finds_what_it_finds_without(
    base: int, slope: int, bend: int, budget: int, upper: int, hint: int
) -> None:
    """Started from any guess, the search ends where the search from 0 ends, for every
    non-decreasing memory curve (steps of a worker, with plateaus: ``bend``)."""
    calls: list[int] = []

    def memory(n: int) -> float:
        calls.append(n)
        return float(base + slope * (n - n % (bend + 1)))

    want = max_fit(memory, budget, upper=upper)
    calls.clear()
    assert max_fit(memory, budget, upper=upper, hint=hint) == want
    assert all(0 <= n <= upper for n in calls)
    if hint == want:
        assert len(calls) <= 3  # the guess, its neighbour, and nothing more


def test_sizes() -> None:
    assert parse_size("64GiB") == 64 * GIB
    assert parse_size("64G") == 64 * GIB
    assert parse_size("64GB") == 64_000_000_000
    assert parse_size("512 MiB") == 512 * MIB
    assert parse_size("4096") == 4096
    assert parse_headroom("12.5%") == (0, 0.125)
    assert parse_headroom("2GiB") == (2 * GIB, 0.0)
    for bad in ("lots", "64 XB", "-1G"):
        with pytest.raises(UsageProblem, match="is not a size"):
            parse_size(bad)
    with pytest.raises(UsageProblem):
        parse_headroom("120%")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"host_mem_bytes": 0}, "host memory must be positive"),
        ({"host_mem_bytes": GIB, "headroom_bytes": GIB}, "leaves no memory"),
        ({"host_mem_bytes": GIB, "host_cpus": 0}, "host CPUs must be positive"),
        (
            {"host_mem_bytes": GIB, "host_cpus": 8, "cpu_per_worker": 0},
            "CPU per worker must be positive",
        ),
        ({"host_mem_bytes": GIB, "worker_other_bytes": -1}, "worker-other cannot be negative"),
        ({"host_mem_bytes": GIB, "worker_file_bytes": -1}, "worker-file cannot be negative"),
    ],
)
def test_bad_inputs(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(UsageProblem, match=message):
        CapacityInputs(**kwargs)  # type: ignore[arg-type]


def test_model_error_scales_the_saving_not_the_metadata() -> None:
    from planner.whatif.uncertainty import ModelError

    # 1 GiB, workers of 256 frames of which an ideal KSM frees 128; 64 B of metadata per page
    model = linear_model(worker_frames=256, saved_per_worker=128, meta_per_page=64)
    half = ModelError("canary", "test", (0.5,), 0.0)
    est = estimate_capacity(model, bare(host_mem_bytes=GIB), model_error=half)
    assert est.saving_factor == 0.5
    assert est.ksm_saved_bytes == pytest.approx(0.5 * 128 * PAGE * est.workers_with)
    net = est.ksm_saved_bytes - 64 * 256 * est.workers_with
    assert est.ksm_net_saved_bytes == pytest.approx(net)
    # per worker: 1 MiB without KSM, 1 MiB - 256 KiB + 16 KiB with it
    assert est.workers_without == 1024
    assert est.workers_with == math.floor(GIB / (MIB - 256 * 1024 + 16 * 1024))
    model_only = est.interval("model")
    assert model_only is not None
    assert model_only.width == 0.0  # one ratio, no noise: no spread
    assert est.dominant_source is None


def test_unmerge_at_the_planned_size_and_the_workers_to_drain() -> None:
    # workers of 1 MiB, KSM frees half: 2x the workers fit, and switching KSM off at that
    # size needs the half back -- only the workers that fit without KSM can stay
    model = linear_model(worker_frames=256, saved_per_worker=128)
    est = estimate_capacity(model, bare(host_mem_bytes=GIB))
    assert est.workers_without == 1024
    assert est.workers_with == 2048
    assert est.ksm_saved_bytes == pytest.approx(GIB)
    assert est.free_at_workers_with_bytes == pytest.approx(0.0)
    assert est.unmerge_shortfall_bytes == pytest.approx(GIB)
    assert est.unmerge_fits_workers == 1024
    assert est.drain_workers == 1024
    roomy = estimate_capacity(model, bare(host_mem_bytes=GIB, headroom_fraction=0.5))
    # half the host kept free: 1024 workers with KSM need 512 MiB, the unmerge 512 MiB more
    assert roomy.workers_with == 1024
    assert roomy.drain_workers == 0


def test_a_cpu_bound_host_gains_nothing_and_ksmd_costs_workers() -> None:
    # memory would allow 1024 -> 2048 workers; 8 CPUs at 0.05 cores allow 160, 159 with ksmd
    model = linear_model(worker_frames=256, saved_per_worker=128, ksmd_cores=0.04)
    est = estimate_capacity(model, bare(host_mem_bytes=GIB, host_cpus=8, cpu_per_worker=0.05))
    assert (est.memory_limit_without, est.memory_limit_with) == (1024, 2048)
    assert (est.cpu_limit_without, est.cpu_limit_with) == (160, 159)
    assert (est.limit_without, est.limit_with) == ("cpu", "cpu")
    assert est.gain == pytest.approx(159 / 160 - 1)
    assert est.ksmd_host_share == pytest.approx(0.005)


def test_combined_interval_covers_every_source() -> None:
    from planner.whatif.uncertainty import ModelError, TimeSpread

    model = linear_model(worker_frames=256, saved_per_worker=64)
    reps = [GrowthFit(0, 256, 0, 256 - s, eligible_b=256) for s in (48, 56, 64, 72, 80)]
    plan = plan_capacity(CapacityInputs(host_mem_bytes=GIB))  # the footprint assumed
    est = estimate_capacity(
        model,
        plan,
        replicates=reps,
        model_error=ModelError("published", "test", (0.6, 0.8, 1.0), 0.04),
        time=TimeSpread((10.0, 20.0), (0.98, 1.0)),
    )
    sources = {i.source: i for i in est.intervals}
    assert set(sources) == {"sampling", "model", "configuration", "time", "combined"}
    assert all(i.width > 0 for i in sources.values())
    assert est.dominant_source == "model"  # ratios 0.6-1.0 move the saving the most
    assert est.gain_interval == (sources["combined"].gain_low, sources["combined"].gain_high)
    lo, hi = est.gain_interval  # type: ignore[misc]
    assert lo < est.gain < hi  # type: ignore[operator]
    # all four together are at least about as uncertain as the widest alone
    assert sources["combined"].width >= 0.8 * max(i.width for i in sources.values())
    # the same inputs, the same intervals (seeded)
    again = estimate_capacity(
        model,
        plan,
        replicates=reps,
        model_error=ModelError("published", "test", (0.6, 0.8, 1.0), 0.04),
        time=TimeSpread((10.0, 20.0), (0.98, 1.0)),
    )
    assert again.intervals == est.intervals
