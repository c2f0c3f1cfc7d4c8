"""Replay tasks: steady-state figures, planner errors carried back from workers."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import pytest

from planner.errors import KnobError, PlannerError, PolicyError
from planner.policy import preset
from planner.trace.io import open_trace
from planner.whatif.tasks import ReplaySpec, TaskFailure, clear_caches, run_replay


def spec(trace: Path, **knobs: object) -> ReplaySpec:
    from planner.engine import KsmKnobs

    tr = open_trace(trace)
    items = tuple(sorted(KsmKnobs(**knobs).to_dict().items()))  # type: ignore[arg-type]
    return ReplaySpec(
        str(trace),
        tr.trace_hash,
        tr.hosts[0],
        preset("prctl-all").model_dump_json(),
        None,
        items,
        (("settle_scans", 6),),
        None,
    )


def test_steady_state_counts_the_sleep_between_scans(family_trace: Path) -> None:
    # every full scan is one batch: ksmd works, then sleeps 100 ms before the next scan
    out = run_replay(spec(family_trace, pages_to_scan=100_000, sleep_ms=100))
    assert not isinstance(out, TaskFailure)
    scans = out.timeline.scans
    steady = out.steady
    assert steady is not None
    n = steady.full_scans
    assert n >= 6
    cpu = sum(scans.cpu_s[-n:])
    wall = scans.t_s[-1] - scans.t_s[-n - 1]
    assert steady.wall_s == pytest.approx(wall)
    assert steady.cpu_percent == pytest.approx(100 * cpu / wall)
    assert steady.cpu_percent < 10  # mostly asleep; scan_time_s alone would say ~100 %
    assert 100 * cpu / sum(scans.scan_time_s[-n:]) > 90
    # one definition: a full scan lasts the same wall time, the sleep before the next included
    assert steady.full_scan_s == pytest.approx(wall / n)
    assert steady.full_scan_s > 0.1 > max(scans.scan_time_s[-n:])
    # pages handled per full scan at steady state (smart scan skips excluded)
    assert steady.pages_scanned_per_full_scan == pytest.approx(
        (scans.pages_scanned[-1] - scans.pages_scanned[-n - 1]) / n
    )
    assert out.policy_ideal_saved_frames == out.final_truth.saved_frames
    assert out.final_counters.rmap_items == out.final_truth.rmap_items


def test_zero_pages_are_counted_in_the_worker() -> None:
    from planner.testing.builder import World

    w = World("zeros")
    w.spawn(1, comm="app")
    w.map(1, 0x10000, [0, 0, 0, 7, 7, 8])  # three zero pages, a duplicate, a unique page
    w.snapshot(0.0)
    w.snapshot(5.0)
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "zeros"
        w.write_trace(trace)
        plain = run_replay(spec(trace, pages_to_scan=100))
        zeros = run_replay(spec(trace, pages_to_scan=100, use_zero_pages=True))
    assert not isinstance(plain, TaskFailure)
    assert not isinstance(zeros, TaskFailure)
    # without use_zero_pages the three zero pages merge into one KSM page: 2 frames freed of
    # the 3 saved (the duplicate 7 is the third); with it they all map the zero page
    assert (plain.final_truth.saved_frames, plain.zero_saved_frames) == (3, 2)
    assert (zeros.final_truth.saved_frames, zeros.zero_saved_frames) == (4, 3)


def test_planner_errors_come_back_as_failures(family_trace: Path, tmp_path: Path) -> None:
    clear_caches()
    bad = spec(family_trace)
    gone = ReplaySpec(
        str(tmp_path / "nope"),
        bad.trace_hash,
        bad.host,
        bad.policy_json,
        None,
        bad.knobs,
        bad.options,
        None,
    )
    out = run_replay(gone)
    assert isinstance(out, TaskFailure)
    assert out.kind == "TraceFormatError"
    with pytest.raises(PlannerError, match="does not exist") as info:
        out.reraise()
    assert type(info.value).__name__ == "TraceFormatError"
    with pytest.raises(PolicyError, match="bad rule") as info2:
        TaskFailure("PolicyError", "bad rule", "fix it").reraise()
    assert info2.value.hint == "fix it"
    with pytest.raises(KnobError):
        TaskFailure("KnobError", "x", None).reraise()
    with pytest.raises(PlannerError):
        TaskFailure("NotAnError", "x", None).reraise()


def test_a_batch_derives_its_input_once_and_drops_it_at_its_end(
    family_trace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import planner.engine.api as engine
    from planner.whatif import tasks

    made: list[object] = []
    real = engine.derive_input

    def counting(*args: object, **kwargs: object) -> object:
        made.append(args[0])
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(engine, "derive_input", counting)
    clear_caches()
    specs = (spec(family_trace, pages_to_scan=100), spec(family_trace, pages_to_scan=1000))
    batch = tasks.run_batch(specs)
    assert len(made) == 1  # one host, one policy set: derived once for both knob settings
    assert not tasks._DERIVED  # and not kept past the batch
    # the same outcomes as replays that derive their own input
    clear_caches()
    alone = [run_replay(s) for s in specs]
    for got, want in zip(batch, alone, strict=True):
        assert not isinstance(got, TaskFailure)
        assert not isinstance(want, TaskFailure)
        assert got.final_truth == want.final_truth
        assert got.final_counters == want.final_counters
        assert got.cost == want.cost
    assert len(made) == 2  # outside a batch too, the next replay of the same input reuses it
    clear_caches()
    assert not tasks._DERIVED


def test_a_replay_task_retains_freed_arrays_within_its_bound(
    family_trace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A what-if replay runs inside the heap that keeps freed arrays for reuse when its input
    is within the bound (planner._heap), and without it above."""
    from planner import _heap as heap
    from planner.engine.driver import Driver

    seen: list[int] = []
    real = Driver.run

    def recording(self: Driver, *args: object, **kwargs: object) -> object:
        seen.append(heap._retaining)
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Driver, "run", recording)
    for bound in (heap.RETAIN_MAX_ROWS, 0):
        monkeypatch.setattr(heap, "RETAIN_MAX_ROWS", bound)
        clear_caches()
        assert not isinstance(run_replay(spec(family_trace, pages_to_scan=100)), TaskFailure)
    clear_caches()
    assert seen == [1, 0]
    assert heap._retaining == 0


def test_a_replay_task_rebuilds_each_snapshot_once_and_keeps_none(
    family_trace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ideals of every snapshot and of the last come from one pass over the snapshots,
    each rebuilt once from the one before, and no rebuilt snapshot stays with the cached
    input through the replays (the last one did: the 16 M-page worker's peak, docs/fleet.md §4);
    the snapshot times come from the deltas. The figures are those of a snapshot rebuilt
    alone."""
    import planner.engine.rows as rows_mod
    from planner.whatif import tasks
    from planner.whatif.extrapolate import policy_ideal_saved_frames, zero_saved_frames

    built: list[int] = []
    real = rows_mod.apply_delta

    def counting(old: object, delta: rows_mod.SnapshotDelta, content_hash: object) -> object:
        built.append(delta.index)
        return real(old, delta, content_hash)  # type: ignore[arg-type]

    monkeypatch.setattr(rows_mod, "apply_delta", counting)
    clear_caches()
    # (without the growth model, which rebuilds the last snapshots for its own use)
    task = dataclasses.replace(spec(family_trace, pages_to_scan=100), options=(("growth", False),))
    out = run_replay(task)
    assert not isinstance(out, TaskFailure)
    (inp,) = tasks._PREPARED.values()
    n = len(inp.deltas)
    assert n > 1
    assert built == list(range(n))
    assert inp.snapshots._cache is None
    assert out.snapshot_times_s == tuple((t - inp.times_ns[0]) / 1e9 for t in inp.times_ns)
    monkeypatch.setattr(rows_mod, "apply_delta", real)
    want = tuple(policy_ideal_saved_frames(inp.snapshots[k]) for k in range(n))
    assert out.policy_ideal_by_snapshot == want
    last = inp.snapshots[-1]
    eligible = int(last.eligible.sum())
    assert (out.policy_ideal_saved_frames, out.eligible_pages) == (want[-1], eligible)
    zero = zero_saved_frames(last, use_zero_pages=False, saved_frames=eligible)
    assert out.zero_saved_frames == min(zero, max(0, out.final_truth.saved_frames))
    clear_caches()
