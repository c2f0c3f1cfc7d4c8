"""The replay entry point: a trace (or host trace) + knobs + policy -> :class:`ReplayResult`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from planner._progress import NULL_PROGRESS, Progress
from planner.engine.knobs import KsmKnobs
from planner.engine.options import ReplayOptions
from planner.engine.prepare import ReplayInput, prepare
from planner.errors import KnobError

if TYPE_CHECKING:
    from pathlib import Path

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
        knobs = KsmKnobs(hz=inp.hz) if inp.hz in (100, 250, 300, 1000) else KsmKnobs()
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


def replay_trace(
    path: str | Path,
    *,
    host: str | None = None,
    knobs: KsmKnobs | None = None,
    options: ReplayOptions | None = None,
    policy_path: str | Path | None = None,
    policy_set: str | None = None,
    engine: EngineName = "vectorized",
    progress: Progress = NULL_PROGRESS,
) -> ReplayResult:
    """Open a trace directory, apply a policy file (or prctl everywhere), and replay one host.

    This is what ``ksm-planner replay`` runs. The result's provenance names the trace path
    and hash, the policy set and the knobs.
    """
    from planner.trace.io import open_trace

    tr = open_trace(path)
    ht = tr.load_host(host)
    resolver: Resolver | None = None
    set_name = "default (prctl for every process)"
    policy_warnings: list[str] = []
    if policy_path is not None:
        from planner.policy import load_policy
        from planner.policy.resolve import check_matches, match_processes

        ps = load_policy(policy_path, policy_set)
        # a rule that matches no process is a typo (an error), as in what-if
        policy_warnings = check_matches([match_processes(ht, ps)], ps)
        resolver = ps.resolver()
        set_name = ps.name
    if knobs is None:
        hz = ht.meta().get("hz")
        knobs = KsmKnobs(hz=int(hz)) if hz in (100, 250, 300, 1000) else KsmKnobs()
    progress.start("loading trace", None)
    inp = prepare(ht, resolver=resolver)
    progress.finish()
    res = replay(inp, knobs=knobs, options=options, engine=engine, progress=progress)
    res.provenance.update(
        trace_path=str(path),
        trace_hash=tr.trace_hash,
        policy_set=set_name,
        policy_file=None if policy_path is None else str(policy_path),
        hosts=list(tr.hosts),
        policy_warnings=policy_warnings,
    )
    return res
