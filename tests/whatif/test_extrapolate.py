"""The ideal saving, replica groups, growth fits and the bootstrap, on hand-built worlds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.engine import KsmKnobs, prepare, replay
from planner.errors import UsageProblem
from planner.policy import parse_policies, preset
from planner.testing.builder import World
from planner.trace.io import HostTrace
from planner.whatif.extrapolate import (
    ExtrapolationSpec,
    GrowthFit,
    extrapolate,
    fit_extra,
    fit_growth,
    parse_group,
    policy_ideal_saved_frames,
    select_group,
)
from planner.whatif.tasks import domain_codes

FAST = KsmKnobs(pages_to_scan=1000, sleep_ms=10)


def ideal(ht: HostTrace, policy: str = "prctl-all", **kw: object) -> int:
    inp = prepare(ht, resolver=preset(policy).resolver())
    return policy_ideal_saved_frames(inp.snapshots[-1], **kw)  # type: ignore[arg-type]


def test_ideal_counts_frames_not_mappings() -> None:
    w = World()
    w.spawn(1)
    w.map(1, 0x10000, [1, 1, 2, 3])
    w.spawn(2)
    w.map(2, 0x10000, [1, 2, 4])
    w.snapshot(0.0)
    w.fork(2, 3)  # maps 2's frames: already shared, never a saving
    w.snapshot(10.0)
    ht = w.host_trace()
    # content 1: 3 frames -> 1; content 2: 2 frames -> 1; the fork adds no frame
    assert ideal(ht) == 3
    assert ideal(ht, "off") == 0
    assert replay(ht, knobs=FAST).final_truth.saved_frames == 3


def test_ideal_respects_madvise_kinds() -> None:
    w = World()
    for pid in (1, 2):
        w.spawn(pid)
        w.map(pid, 0x10000, [7, 8], kind="heap")
        w.map(pid, 0x50000, [9], kind="stack")
    w.snapshot(0.0)
    ht = w.host_trace()
    assert ideal(ht, "madvise-heap") == 2
    assert ideal(ht, "madvise-anon") == 3


def test_zero_pages() -> None:
    w = World()
    w.spawn(1)
    w.map(1, 0x10000, [0, 0, 0, 5])
    w.snapshot(0.0)
    ht = w.host_trace()
    assert ideal(ht) == 2  # three zero frames -> one KSM page
    assert ideal(ht, use_zero_pages=True) == 3  # all map the kernel zero page


def test_a_fork_shared_frame_of_an_unregistered_parent_can_be_the_ksm_page() -> None:
    w = World()
    w.spawn(1, comm="master")
    w.map(1, 0x10000, [5, 6, 7])
    w.snapshot(0.0)
    w.fork(1, 2, comm="worker")
    w.map(2, 0x40000, [5, 6])  # the worker's own copies of 5 and 6
    w.snapshot(10.0)
    (policy,) = parse_policies(
        '[sets.w]\n[[sets.w.rules]]\nmatch = {comm = "worker"}\naction = "prctl"\n'
    )
    inp = prepare(w.host_trace(), resolver=policy.resolver(enforce_cross_domain=False))
    # the master's frames stay, but the worker's copies can merge into them
    assert policy_ideal_saved_frames(inp.snapshots[-1]) == 2
    # the replay is an order of scans: it realizes at most the ideal
    assert replay(inp, knobs=FAST).final_truth.saved_frames <= 2


def test_domains_split_contents() -> None:
    w = World()
    w.spawn(11, labels={"tenant": "a"})
    w.map(11, 0x10000, [1, 2])
    w.spawn(12, labels={"tenant": "b"})
    w.map(12, 0x10000, [1, 2])
    w.spawn(13, labels={"tenant": "b"})
    w.map(13, 0x10000, [1, 9])
    w.snapshot(0.0)
    (policy,) = parse_policies('[sets.t]\ndefault = "prctl"\ndefault_domain = "{label:tenant}"\n')
    inp = prepare(w.host_trace(), resolver=policy.resolver(enforce_cross_domain=False))
    codes, names = domain_codes(inp)
    assert names == ["a", "b"]
    assert policy_ideal_saved_frames(inp.snapshots[-1]) == 3  # 1 x3 -> 1, 2 x2 -> 1
    assert policy_ideal_saved_frames(inp.snapshots[-1], domain_of_mm=codes) == 1  # only b's two 1s


def family(k: int, *, shared: int, unique: int, base: int = 3, copies: bool = False) -> HostTrace:
    """A master with ``base`` private pages and ``k`` workers, each with ``shared`` pages of
    content common to all workers (own frames) and ``unique`` pages of its own content (and,
    with ``copies``, its own copies of the master's pages)."""
    w = World()
    w.spawn(100, comm="master")
    w.map(100, 0x10000, [10_000 + i for i in range(base)])
    w.snapshot(0.0)
    for i in range(k):
        pid = 101 + i
        w.fork(100, pid, comm="worker")
        w.map(pid, 0x100000, [20_000 + j for j in range(shared)])
        w.map(pid, 0x900000, [1_000_000 * (i + 1) + j for j in range(unique)])
        if copies:
            w.map(pid, 0x700000, [10_000 + j for j in range(base)])
    w.snapshot(10.0)
    return w.host_trace()


def test_groups() -> None:
    inp = prepare(family(4, shared=2, unique=1), resolver=preset("workers-prctl").resolver())
    pid = {m.mm: m.pid for m in inp.mms}
    group, base = select_group(inp, "siblings")
    assert [pid[m] for m in group] == [101, 102, 103, 104]
    assert [pid[m] for m in base] == [100]
    assert [pid[m] for m in select_group(inp, "comm:master")[0]] == [100]
    assert [pid[m] for m in select_group(inp, "pid:101,103")[0]] == [101, 103]
    assert len(select_group(inp, "rule:workers")[0]) == 4
    assert len(select_group(inp, "all")[0]) == 5
    with pytest.raises(UsageProblem, match="selects no process of host synthetic"):
        select_group(inp, "comm:java")
    for bad in ("workers", "comm:(", "label:x", "pid:a", "siblings:x", "rule:"):
        with pytest.raises(UsageProblem):
            parse_group(bad)


def test_fit_recovers_a_saturating_curve_and_a_linear_one() -> None:
    n = np.arange(9)
    frames = 100 + 50 * n
    distinct = 100 + 20 * n + 30 * (1 - (1 - 0.6) ** n)
    fit = fit_growth(n, frames, distinct)
    assert fit.frames_a == pytest.approx(100)
    assert fit.frames_b == pytest.approx(50)
    assert fit.distinct_b == pytest.approx(20, rel=1e-4)
    assert fit.distinct_c == pytest.approx(30, rel=1e-3)
    assert fit.distinct_p == pytest.approx(0.6, rel=1e-3)
    assert float(fit.ideal_saved(100)) == pytest.approx(100 * 30 - 30, rel=1e-4)
    lin = fit_growth(n, frames, 100 + 20 * n)
    assert lin.distinct_c == pytest.approx(0, abs=1e-6)
    assert float(lin.ideal_saved(100)) == pytest.approx(30 * 100)
    heaps = fit_growth(n, frames, 100 + 40 * n**0.7, model="heaps")
    assert heaps.distinct_beta == pytest.approx(0.7, rel=1e-3)
    assert GrowthFit.from_array(fit.to_array()) == fit


def test_extrapolation_is_exact_on_replicas_that_share_a_fixed_set() -> None:
    # each worker: 6 pages shared by every worker, 4 of its own; the master: 3 of its own
    ht = family(6, shared=6, unique=4)
    inp = prepare(ht, resolver=preset("prctl-all").resolver())
    spec = ExtrapolationSpec(replicas=50, n_resamples=50, orders=8)
    fit = extrapolate(inp, spec=spec, policy_set="prctl-all")
    # the last snapshot was rebuilt for the fit alone, not left cached with the input (a
    # worker keeps the input for its later replays)
    assert inp.snapshots._cache is None
    assert fit.k == 6
    assert fit.observed.n == (0, 1, 2, 3, 4, 5, 6)
    # F(n) = 3 + 10 n, U(n) = 3 + 6 [n >= 1] + 4 n: saving(n) = 6 (n - 1) for n >= 1
    assert fit.observed.frames == tuple(3.0 + 10 * n for n in range(7))
    assert fit.observed.ideal_saved == (0.0, 0.0, 6.0, 12.0, 18.0, 24.0, 30.0)
    assert fit.ideal_saved_frames_at_k == 30 == policy_ideal_saved_frames(inp.snapshots[-1])
    point, low, high = fit.ideal_saved_frames(50)
    assert point == pytest.approx(6 * 49, rel=1e-3)
    assert low <= point <= high
    assert fit.holdout is not None
    assert fit.holdout.fit_upto == 3
    assert fit.holdout.relative_error == pytest.approx(0.0, abs=1e-3)
    # scanned pages count mappings: each worker also maps the master's 3 pages
    assert fit.point.eligible_pages(6) == pytest.approx(3 + 6 * 13)
    again = extrapolate(inp, spec=spec, policy_set="prctl-all")
    assert again.replicates == fit.replicates  # seeded: deterministic


def test_workers_merge_into_the_frames_they_share_with_an_unregistered_master() -> None:
    inp = prepare(
        family(4, shared=2, unique=1, copies=True), resolver=preset("workers-prctl").resolver()
    )
    fit = extrapolate(inp, spec=ExtrapolationSpec(n_resamples=20))
    # each worker's copies of the 3 master pages merge into the master's (fork-shared) frames;
    # the 2 shared pages merge from the second worker on
    assert fit.observed.ideal_saved == (0.0, 3.0, 8.0, 13.0, 18.0)
    assert fit.ideal_saved_frames_at_k == policy_ideal_saved_frames(inp.snapshots[-1]) == 18


def test_bootstrap_interval_widens_with_uneven_replicas() -> None:
    w = World()
    w.spawn(1, comm="m")
    w.map(1, 0x1000, [1])
    w.snapshot(0.0)
    rng = np.random.default_rng(3)
    for i in range(8):
        pid = 10 + i
        w.fork(1, pid, comm="w")
        # a pool of 40 contents, each worker holds a random half of it, plus 5 unique pages
        held = sorted(rng.choice(40, size=20, replace=False).tolist())
        w.map(pid, 0x100000, [500 + c for c in held] + [10_000 * (i + 1) + j for j in range(5)])
    w.snapshot(10.0)
    inp = prepare(w.host_trace(), resolver=preset("prctl-all").resolver())
    fit = extrapolate(inp, spec=ExtrapolationSpec(n_resamples=100, confidence=0.9))
    point, low, high = fit.ideal_saved_frames(32)
    assert low < point < high
    # the pool saturates: each new worker then saves its 20 pooled pages
    assert fit.point.distinct_c == pytest.approx(40, rel=0.25)
    assert float(fit.point.ideal_saved(33) - fit.point.ideal_saved(32)) == pytest.approx(
        20, rel=0.1
    )


def test_spec_validation() -> None:
    with pytest.raises(UsageProblem, match="replicas must be at least 1"):
        ExtrapolationSpec(replicas=0)
    with pytest.raises(UsageProblem, match="too few"):
        ExtrapolationSpec(n_resamples=3)
    with pytest.raises(UsageProblem, match="confidence"):
        ExtrapolationSpec(confidence=1.0)
    with pytest.raises(UsageProblem, match="unknown model"):
        ExtrapolationSpec(model="cubic")  # type: ignore[arg-type]
    with pytest.raises(UsageProblem, match="unknown group selector"):
        ExtrapolationSpec(group="workers")


def test_denying_cross_domain_merges_never_projects_more_saving() -> None:
    w = World()
    w.spawn(100, comm="m", labels={"tenant": "a"})
    w.map(100, 0x1000, [1, 2])
    w.snapshot(0.0)
    for i in range(8):
        pid = 101 + i
        w.fork(100, pid, comm="w")
        w.procs[pid].labels = {"tenant": "a" if i % 2 else "b"}
        w.map(
            pid, 0x100000, [500 + j for j in range(30)] + [10_000 * (i + 1) + j for j in range(10)]
        )
    w.snapshot(10.0)
    (policy,) = parse_policies('[sets.t]\ndefault = "prctl"\ndefault_domain = "{label:tenant}"\n')
    inp = prepare(w.host_trace(), resolver=policy.resolver(enforce_cross_domain=False))
    codes, names = domain_codes(inp)
    assert names == ["a", "b"]
    spec = ExtrapolationSpec(n_resamples=30)
    allow = extrapolate(inp, spec=spec)
    deny = extrapolate(inp, spec=spec, domain_of_mm=codes, cross_domain="deny")
    assert deny.ideal_saved_frames_at_k == policy_ideal_saved_frames(
        inp.snapshots[-1], domain_of_mm=codes
    )
    assert (
        deny.ideal_saved_frames_at_k == allow.ideal_saved_frames_at_k - 30
    )  # the pool, once per domain
    n = np.arange(0, 200)
    assert np.all(deny.point.ideal_saved(n) <= allow.point.ideal_saved(n) + 1e-9)
    for r in deny.replicates:
        assert float(r.kept_by_domains(50)) >= 0
    # two domains keep the shared pool twice: the difference saturates at the pool
    assert 28 <= float(deny.point.kept_by_domains(1000)) <= 40
    assert allow.point.kept_by_domains(10) == 0


def test_fit_arithmetic_is_fixed_order() -> None:
    """The pieces of a fit that could differ between CPUs are computed in a fixed order."""
    from planner.whatif.extrapolate import _line, _power

    x = np.arange(9, dtype=float)
    y = 8515.03 + 9415.2 * x + 700.5 * (1 - 0.98**x)
    b, a = _line(x, y)
    pb, pa = np.polyfit(x, y, 1)
    assert b == pytest.approx(pb, rel=1e-12)
    assert a == pytest.approx(pa, rel=1e-12)
    assert _line(np.zeros(3), np.array([1.0, 2.0, 3.0])) == (0.0, 2.0)
    n = np.array([0, 1, 2, 3, 8, 61, 1000], dtype=float)
    exact = [0.981**k for k in range(1001)]  # one multiplication after another
    assert _power(0.981, n) == pytest.approx([exact[int(k)] for k in n], rel=1e-13)
    assert _power(0.981, n).tolist() == _power(0.981, n.tolist()).tolist()
    assert _power(0.5, np.array([0.5]))[0] == pytest.approx(0.5**0.5)  # not whole: np.power


@given(
    st.floats(0.0, 1.0),
    st.lists(st.integers(0, 2**31 - 1), min_size=0, max_size=80),
)
@settings(max_examples=200, deadline=None)
def test_power_of_one_base_takes_the_products_of_many(base: float, n: list[int]) -> None:
    """One base and a few exponents (the Python loop) give the bits of the array path."""
    from planner.whatif.extrapolate import _power

    x = np.array(n, dtype=float).reshape(-1, 1) if n else np.zeros(0)
    one = _power(base, x)
    many = _power(np.full(x.shape, base), x)  # one base per element: numpy's loop
    assert one.shape == many.shape
    assert one.tobytes() == many.tobytes()


def test_nothing_mergeable_projects_exactly_no_saving() -> None:
    n = np.arange(9)
    frames = 1000.0 + 300.0 * n + 40.0 * np.sqrt(n)  # not a line: a curve fits it better
    fit = fit_growth(n, frames, frames)
    assert [float(fit.ideal_saved(k)) for k in (1, 8, 100)] == [0.0, 0.0, 0.0]


def test_fits_in_threads_leave_the_process_warning_filters_as_they_were() -> None:
    """Concurrent fits (threaded Dask workers) must not leave scipy's warnings silenced.

    ``warnings.catch_warnings`` restores the filter list it saw on entry; interleaved in
    threads, that left "ignore RuntimeWarning" installed for the whole process (seen in 3 of
    3 runs of this test before the fits took a lock). Ten rounds per thread: without the lock
    they changed the filters in 10 of 10 runs (2026-12-03, load 6; so did 3 rounds), at a
    tenth of the 100 rounds' time.
    """
    import threading
    import warnings

    n = np.arange(1, 9, dtype=float)
    frames = 100.0 * n
    distinct = 50.0 + 40.0 * n + 300.0 * (1.0 - 0.7**n)
    fit_growth(n, frames, distinct)  # scipy's first import adds filters of its own
    before = list(warnings.filters)

    def work() -> None:
        for _ in range(10):
            fit_growth(n, frames, distinct)
            fit_extra(n, distinct - 40.0 * n)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert list(warnings.filters) == before


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.booleans())
def test_the_policy_ideal_by_content_ids_is_the_ideal_by_hashes(seed: int, domains: bool) -> None:
    """Rows rebuilt from deltas carry their content ids, and the policy ideal keys each
    frame by its id instead of sorting every frame's hash: the same count, per snapshot,
    with and without domains (rows without ids take the hashes, as before)."""
    import dataclasses

    from planner.testing.random_world import WorldSpec, random_world

    ht = random_world(seed, WorldSpec(processes=5, pages=30, contents=5)).host_trace()
    inp = prepare(ht)
    codes = np.arange(len(inp.mms), dtype=np.int64) % 2 if domains else None
    for rows in inp.snapshots:
        assert rows.content is not None
        assert np.array_equal(inp.content_hash[rows.content], rows.hash)
        plain = dataclasses.replace(rows, content=None)
        for zero in (False, True):
            assert policy_ideal_saved_frames(
                rows, domain_of_mm=codes, use_zero_pages=zero
            ) == policy_ideal_saved_frames(plain, domain_of_mm=codes, use_zero_pages=zero)
