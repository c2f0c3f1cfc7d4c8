"""The replay entry point: a host trace (or prepared input) + knobs -> :class:`ReplayResult`.

Replaying a trace *directory* under a policy file is :func:`planner.replay.replay_trace`,
a layer above the engine and the policies.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
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
    from planner.engine.joins import JoinNote
    from planner.engine.registration import Resolver
    from planner.engine.result import ReplayResult
    from planner.engine.writes import CanaryRates
    from planner.trace.io import HostTrace

EngineName = Literal["vectorized", "reference"]


@dataclass(frozen=True)
class DerivedInput:
    """A prepared input as a replay runs it (:func:`derive_input`): the growth after the
    trace continued and a canary's write rates applied. Neither depends on the knobs, so
    replays of one input at several knob settings (a what-if, a cost fit and the replay it
    fits) derive it once and pass it as :func:`replay`'s ``source``."""

    base: ReplayInput
    grown: ReplayInput  # the engine's snapshots
    written: ReplayInput  # ``grown`` with the canary's rates: the write model's input
    growth: GrowthNote
    canary: CanaryRates | None
    #: the options it was derived for (:func:`derivation`): a replay with others derives again
    made_for: tuple[bool, bool, int, bool]
    #: the joins the trace shows, which the replay does not continue (:mod:`planner.engine.joins`)
    joins: JoinNote
    #: ``canary`` as the write model took it: its pages a canary growth placed renamed to
    #: their rows' keys (:func:`with_growth`); None without a canary or writes
    applied: CanaryRates | None = None


def derivation(opts: ReplayOptions) -> tuple[bool, bool, int, bool]:
    """What a derived input depends on in the options (growth, alignment to scans, the
    write seed, writes on): replays whose options agree on it can share one."""
    return (opts.growth, opts.aligned_to_scans, opts.write_seed, opts.writes)


def derive_input(
    inp: ReplayInput, options: ReplayOptions | None = None, canary: CanaryRates | None = None
) -> DerivedInput:
    """``inp`` grown after the trace (:func:`with_growth`) and, when the options replay
    writes, with the canary's same-content write rates
    (:func:`planner.engine.writes.with_canary`)."""
    from planner.engine.joins import JoinNote, measure_joins
    from planner.engine.writes import JOINS_META

    opts = options or ReplayOptions()
    applied = canary if canary is not None and opts.writes else None
    grown, growth, applied = with_growth(inp, opts, applied)
    written = grown
    if applied is not None:
        from planner.engine.writes import with_canary

        written = with_canary(grown, applied, traced=inp.n_snapshots)
    joins = (
        JoinNote(reason="snapshots applied by full scan: nothing after the last")
        if opts.aligned_to_scans
        else measure_joins(inp)
    )
    canary_rows = int(written.meta.get(JOINS_META, 0))
    if canary_rows and joins.intervals:
        joins = dataclasses.replace(joins, continued=True, canary_rows=canary_rows)
    return DerivedInput(inp, grown, written, growth, canary, derivation(opts), joins, applied)


def base_input(source: ReplayInput | DerivedInput) -> ReplayInput:
    """The prepared input of ``source``."""
    return source.base if isinstance(source, DerivedInput) else source


def replay(
    source: HostTrace | ReplayInput | DerivedInput,
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
        A host trace (prepared here under ``resolver``), an already prepared input, or one
        derived for replays (:func:`derive_input`: reused when derived with the same
        growth, alignment, writes and seed as ``options`` and, if ``canary`` is given, with
        that canary; derived again otherwise).
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
    derived: DerivedInput | None = None
    if isinstance(source, DerivedInput):
        derived = source
        inp = source.base
    elif isinstance(source, ReplayInput):
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

    if (
        derived is None
        or derived.made_for != derivation(opts)
        or (canary is not None and canary is not derived.canary)
    ):
        if canary is None and derived is not None:
            canary = derived.canary
        derived = derive_input(inp, opts, canary)
    canary = derived.canary
    core = replay_input_core(derived.grown, knobs, engine)
    model = write_model(derived.written, enabled=opts.writes, seed=opts.write_seed)
    res = Driver(
        core,
        derived.written,
        knobs,
        opts,
        progress=progress,
        writes=NO_WRITES if model is None else model,
    ).run()
    res.provenance["writes"] = writes_note(derived.written, opts, model)
    growth = derived.growth
    res.provenance["growth"] = growth.to_dict() | {"summary": growth.summary()}
    res.provenance["joins"] = derived.joins.to_dict() | {"summary": derived.joins.summary()}
    if canary is not None:
        res.provenance["writes"]["canary"] = {
            "same_content_unmerges": canary.events,
            "merged_page_s": round(canary.merged_s, 3),
            "pages": int(canary.key.size),
            "rate_per_s_by_comm": canary.by_comm,
        }
    res.provenance["prctl_at"] = prctl_at_note(inp.meta.get("prctl_at", PRCTL_AT_DEFAULT))
    return res


def with_growth(
    inp: ReplayInput, opts: ReplayOptions, canary: CanaryRates | None = None
) -> tuple[ReplayInput, GrowthNote, CanaryRates | None]:
    """``inp`` with the growth after the trace continued (:mod:`planner.engine.growth`) as
    ``opts`` asks, what was assumed, and ``canary`` as the write model takes it. Where
    ``canary`` recorded the traced run with its processes' sizes, the growth is the one it
    saw (:mod:`planner.engine.canary_growth`), and the canary comes back with the pages
    placed so renamed. Scan-aligned replays (``validate --kernel``, a schedule of snapshots
    by full scan) replay the trace's snapshots alone."""
    from planner.engine.growth import GrowthNote, continue_growth

    if not opts.growth:
        return inp, GrowthNote("off", "--no-growth"), canary
    if opts.aligned_to_scans:
        return inp, GrowthNote("scan-aligned", "snapshots applied by full scan: none added"), canary
    if canary is not None and canary.sizes is not None:
        from planner.engine.canary_growth import canary_growth
        from planner.engine.writes import records_traced_run

        held = (
            canary_growth(inp, canary, seed=opts.write_seed)
            if records_traced_run(inp, canary)
            else None
        )
        if held is not None:
            return held
    grown, note = continue_growth(inp, seed=opts.write_seed)
    return grown, note, canary


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
    traced = [w for w in inp.writes if w is not None and w.grown_at is None]
    return {
        "model": "trace counts, evenly spaced from a seeded phase timed by the passes",
        "seed": opts.write_seed,
        "sampled_intervals": sampled,
        # per traced interval: whether the phases followed the processes' passes (the
        # samples table: planner.engine.write_timing), else uniform
        "phases_timed_by_passes": [w.timing is not None for w in traced],
        "rows_written_per_interval": rows,
        # rows seen changing or written at every look: counts raised to one per sampling
        # period (planner.engine.writes.effective_changes, effective_same_writes)
        "rows_floored_per_interval": [w.floored_rows for w in traced],
        # the last traced interval's (the one the steady state continues): what replay's
        # stderr and the review's method section quote
        "last_interval_floor": (
            {"floored_rows": traced[-1].floored_rows, "written_rows": traced[-1].rows_written}
            if traced
            else None
        ),
        "events": getattr(model, "events", None),
    }
