"""The replay entry point: a host trace (or prepared input) + knobs -> :class:`ReplayResult`.

Replaying a trace *directory* under a policy file is :func:`planner.replay.replay_trace`,
a layer above the engine and the policies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from planner._progress import NULL_PROGRESS, Progress
from planner.engine.knobs import KsmKnobs
from planner.engine.options import ReplayOptions
from planner.engine.prepare import ReplayInput, prepare
from planner.engine.registration import PRCTL_AT_DEFAULT, PrctlAt, prctl_at_note
from planner.errors import KnobError

if TYPE_CHECKING:
    from planner.engine.driver import Core
    from planner.engine.growth import GrowthNote
    from planner.engine.registration import Resolver
    from planner.engine.result import ReplayResult
    from planner.engine.writes import CanaryRates
    from planner.trace.io import HostTrace

EngineName = Literal["vectorized", "reference"]


def replay(
    source: HostTrace | ReplayInput,
    *,
    knobs: KsmKnobs | None = None,
    options: ReplayOptions | None = None,
    resolver: Resolver | None = None,
    engine: EngineName = "vectorized",
    progress: Progress = NULL_PROGRESS,
    snapshot_scans: tuple[int, ...] | list[int] | None = None,
    prctl_at: PrctlAt = PRCTL_AT_DEFAULT,
    canary: CanaryRates | None = None,
) -> ReplayResult:
    """Replay what ksmd would do on a host over time.

    Parameters
    ----------
    source
        A host trace (prepared here under ``resolver``) or an already prepared input.
    knobs
        ksmd knobs; the kernel's defaults when omitted. ``hz`` defaults to the trace's HZ.
    options
        Duration, grid, snapshot alignment and cost profile.
    resolver
        The policy: how each process registers with KSM (default: every process prctl).
    engine
        ``"vectorized"`` (default, fast) or ``"reference"`` (the slow oracle).
    snapshot_scans
        Shortcut for ``options.snapshot_scans``: snapshot k becomes visible at full scan s_k.
    prctl_at
        When prctl processes registered (:data:`planner.engine.registration.PrctlAt`), for
        a host trace prepared here.
    canary
        Same-content write rates from a canary recording
        (:func:`planner.engine.writes.canary_rates`) for the write model.
    """
    if isinstance(source, ReplayInput):
        inp = source
    else:
        inp = prepare(source, resolver=resolver, prctl_at=prctl_at)
    if knobs is None:
        knobs = KsmKnobs.for_hz(inp.hz)
    opts = options or ReplayOptions()
    if snapshot_scans is not None:
        from dataclasses import replace

        opts = replace(opts, snapshot_scans=tuple(snapshot_scans))
    if opts.snapshot_scans is not None and len(opts.snapshot_scans) != inp.n_snapshots:
        raise KnobError(
            f"snapshot_scans has {len(opts.snapshot_scans)} entries "
            f"for {inp.n_snapshots} snapshots",
            hint="give one full-scan number per snapshot",
        )
    from planner.engine.driver import NO_WRITES, Driver
    from planner.engine.writes import write_model

    inp, growth = with_growth(inp, opts)
    core = replay_input_core(inp, knobs, engine)
    if canary is not None and opts.writes:
        from planner.engine.writes import with_canary

        inp = with_canary(inp, canary)
    model = write_model(inp, enabled=opts.writes, seed=opts.write_seed)
    res = Driver(
        core, inp, knobs, opts, progress=progress, writes=NO_WRITES if model is None else model
    ).run()
    res.provenance["writes"] = writes_note(inp, opts, model)
    res.provenance["growth"] = growth.to_dict() | {"summary": growth.summary()}
    if canary is not None:
        res.provenance["writes"]["canary"] = {
            "same_content_unmerges": canary.events,
            "merged_page_s": round(canary.merged_s, 3),
            "pages": int(canary.key.size),
            "rate_per_s_by_comm": canary.by_comm,
        }
    res.provenance["prctl_at"] = prctl_at_note(inp.meta.get("prctl_at", PRCTL_AT_DEFAULT))
    return res


def with_growth(inp: ReplayInput, opts: ReplayOptions) -> tuple[ReplayInput, GrowthNote]:
    """``inp`` with the growth after the trace continued (:mod:`planner.engine.growth`) as
    ``opts`` asks, and what was assumed. Scan-aligned replays (``validate --kernel``, a
    schedule of snapshots by full scan) replay the trace's snapshots alone."""
    from planner.engine.growth import GrowthNote, continue_growth

    if not opts.growth:
        return inp, GrowthNote("off", "--no-growth")
    if opts.aligned_to_scans:
        return inp, GrowthNote("scan-aligned", "snapshots applied by full scan: none added")
    return continue_growth(inp, seed=opts.write_seed)


def replay_input_core(inp: ReplayInput, knobs: KsmKnobs, engine: EngineName) -> Core:
    """The engine core that replays ``inp``."""
    if engine == "reference":
        from planner.engine.reference import ReferenceEngine

        return ReferenceEngine(inp, knobs)
    if engine == "vectorized":
        from planner.engine.fast import FastEngine

        return FastEngine(inp, knobs)
    raise KnobError(f"unknown engine {engine!r}", hint="use vectorized or reference")


def writes_note(inp: ReplayInput, opts: ReplayOptions, model: object) -> dict[str, Any]:
    """What the result's provenance says about the write model."""
    sampled = sum(1 for w in inp.writes if w is not None)
    if model is None:
        why = "off (--no-writes)" if inp.writes and not opts.writes else "none in the trace"
        return {"model": why, "sampled_intervals": sampled}
    rows = [w.rows_written for w in inp.writes if w is not None]
    return {
        "model": "trace counts, evenly spaced with a seeded phase",
        "seed": opts.write_seed,
        "sampled_intervals": sampled,
        "rows_written_per_interval": rows,
        "events": getattr(model, "events", None),
    }
