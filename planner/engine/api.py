"""The replay entry point: a host trace (or prepared input) + knobs -> :class:`ReplayResult`.

Replaying a trace *directory* under a policy file is :func:`planner.replay.replay_trace`,
a layer above the engine and the policies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from planner._progress import NULL_PROGRESS, Progress
from planner.engine.knobs import KsmKnobs
from planner.engine.options import ReplayOptions
from planner.engine.prepare import ReplayInput, prepare
from planner.errors import KnobError

if TYPE_CHECKING:
    from planner.engine.registration import Resolver
    from planner.engine.result import ReplayResult
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
    """
    inp = source if isinstance(source, ReplayInput) else prepare(source, resolver=resolver)
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
    from planner.engine.driver import Driver

    if engine == "reference":
        from planner.engine.reference import ReferenceEngine

        return Driver(ReferenceEngine(inp, knobs), inp, knobs, opts, progress=progress).run()
    if engine == "vectorized":
        from planner.engine.fast import FastEngine

        return Driver(FastEngine(inp, knobs), inp, knobs, opts, progress=progress).run()
    raise KnobError(f"unknown engine {engine!r}", hint="use vectorized or reference")
