"""Whole-host inputs: given over measured over assumed, each with its source."""

from __future__ import annotations

import pytest

from planner.whatif.capacity import CapacityInputs, capacity_from_options
from planner.whatif.footprint import (
    DEFAULTS,
    GIB_PER_CPU,
    ProcessFacts,
    WholeHostFacts,
    plan_capacity,
    whole_host_facts,
)

GIB = 1 << 30
MIB = 1 << 20


def test_nothing_given_nothing_measured_is_assumed() -> None:
    plan = plan_capacity(CapacityInputs(host_mem_bytes=16 * GIB))
    fp = plan.footprint
    for _, p in fp.parts():
        assert p.source == "assumed"
        assert "docs/capacity.md" in p.basis
    assert fp.file_bytes.value == DEFAULTS["worker_file_bytes"].value
    assert fp.extra_bytes == pytest.approx(
        sum(DEFAULTS[k].value for k in DEFAULTS if k.startswith("worker_"))
    )
    assert fp.base_extra_bytes.source == "assumed"
    assert plan.host_cpus.source == "assumed"
    assert plan.host_cpus.value == 16 / GIB_PER_CPU  # 4 CPUs for 16 GiB
    assert (plan.host_cpus.low, plan.host_cpus.high) == (2.0, 8.0)
    assert plan.cpu_per_worker is None  # never assumed: no CPU bound
    assert plan.cpu_limit(0.5) is None
    assert "host CPUs" in plan.assumed
    assert plan.measured == ()


def test_given_options_override_and_carry_no_range() -> None:
    inputs = capacity_from_options(
        "64GiB",
        headroom="10%",
        worker_file="1MiB",
        worker_other="2MiB",
        host_cpus=32,
        cpu_per_worker=0.25,
    )
    assert inputs is not None
    plan = plan_capacity(inputs)
    fp = plan.footprint
    assert (fp.file_bytes.value, fp.file_bytes.source, fp.file_bytes.basis) == (
        MIB,
        "given",
        "--worker-file",
    )
    assert not fp.file_bytes.uncertain
    assert fp.kernel_bytes.value == 2 * MIB
    assert fp.page_tables_bytes.source == "assumed"  # not given
    assert plan.host_cpus.source == "given"
    assert plan.cpu_per_worker is not None
    assert plan.cpu_per_worker.source == "given"
    assert plan.cpu_limit(2.0) == 120  # (32 - 2) / 0.25
    assert plan.budget_bytes == pytest.approx(64 * GIB * 0.9)


def _facts() -> WholeHostFacts:
    # a master (1) and three workers; every file page is mapped by all four processes, and
    # worker 2 has 100 KiB of file pages of its own: Pss_File = private + shared / 4
    shared = 8 * MIB
    procs = [ProcessFacts(1, 0, shared // 4, 0, shared, 100_000, 0.0, 10.0)]
    for pid, own in ((2, 102_400), (3, 0), (4, 0)):
        procs.append(
            ProcessFacts(pid, 0, own + shared // 4, 4096, shared + own, 200_000, 1.0 + pid, 10.0)
        )
    return WholeHostFacts("h", tuple(procs), 16 * GIB, 8, None, None)


def test_measured_facts_beat_defaults_and_lose_to_options() -> None:
    facts = _facts()
    plan = plan_capacity(CapacityInputs(host_mem_bytes=GIB), facts=facts, group_pids=(2, 3, 4))
    fp = plan.footprint
    # the private part of each worker: (m Pss - Rss) / (m - 1) with m = 4 processes
    assert fp.file_bytes.source == "measured"
    assert fp.file_bytes.value == pytest.approx(102_400 / 3)
    assert (fp.file_bytes.low, fp.file_bytes.high) == pytest.approx((0.0, 102_400))
    assert fp.shmem_bytes.value == 4096
    assert fp.page_tables_bytes.value == 200_000
    assert fp.kernel_bytes.source == "assumed"  # no trace records it
    assert fp.base_extra_bytes.value == 8 * MIB + 102_400 + 100_000
    assert plan.cpu_per_worker is not None
    assert plan.cpu_per_worker.source == "measured"
    assert plan.cpu_per_worker.value == pytest.approx((0.3 + 0.4 + 0.5) / 3)
    assert set(plan.measured) >= {"worker file-backed (private)", "CPU per worker"}
    given = plan_capacity(
        CapacityInputs(host_mem_bytes=GIB, worker_file_bytes=0, cpu_per_worker=1.0),
        facts=facts,
        group_pids=(2, 3, 4),
    )
    assert given.footprint.file_bytes.source == "given"
    assert given.cpu_per_worker is not None
    assert given.cpu_per_worker.value == 1.0


def test_v1_traces_record_no_whole_host_facts(tmp_path: object) -> None:
    from pathlib import Path

    from planner.testing.builder import World
    from planner.trace.io import open_trace

    w = World()
    w.spawn(1)
    w.map(1, 0x1000, [1])
    w.snapshot(0.0)
    out = Path(str(tmp_path)) / "t"
    w.write_trace(out)
    tr = open_trace(out)
    assert whole_host_facts(tr, tr.hosts[0]) is None
