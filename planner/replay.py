"""Replay a trace directory under a policy file: what ``ksm-planner replay`` runs.

This sits above the engine and the policies (it opens the trace, applies a policy file and
calls :func:`planner.engine.replay`), so that neither of them needs the other's loader: the
engine replays prepared inputs, the policies resolve processes, and this module joins them.
"""

from __future__ import annotations

import shlex
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from planner._heap import retained_heap
from planner._progress import NULL_PROGRESS, Progress
from planner.engine import KsmKnobs, ReplayOptions, prepare_trace, replay
from planner.engine.cost import cost_cpu_warning, profile_choice, profile_for_trace
from planner.engine.knobs import knob_flags
from planner.engine.preload import compiled_code_loading, modules_for
from planner.engine.registration import PRCTL_AT_DEFAULT
from planner.errors import UsageProblem

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from planner.engine.api import DerivedInput, EngineName
    from planner.engine.prepare import ReplayInput
    from planner.engine.registration import PrctlAt, Resolver
    from planner.engine.result import ReplayResult
    from planner.trace.io import Trace


def replay_trace(
    path: str | Path,
    *,
    host: str | None = None,
    knobs: KsmKnobs | Mapping[str, Any] | None = None,
    options: ReplayOptions | None = None,
    policy_path: str | Path | None = None,
    policy_set: str | None = None,
    preset: str | None = None,
    engine: EngineName = "vectorized",
    progress: Progress = NULL_PROGRESS,
    prctl_at: PrctlAt = PRCTL_AT_DEFAULT,
    observed: str | Path | None = None,
) -> ReplayResult:
    """Open a trace directory, apply a policy file (or prctl everywhere), and replay one host.

    Parameters
    ----------
    knobs
        The knobs, or a mapping of the knobs that differ from the kernel's defaults; ``hz``
        is the trace's unless given (250 when the trace records none).
    policy_path, policy_set
        A policy file and the set of it to apply.
    preset
        A built-in policy set instead (``planner.policy.PRESETS``).
    prctl_at
        When prctl processes registered: before exec (the default: a launcher, systemd
        ``MemoryKSM=``) or inside the running process (``planner.engine.registration``).
    observed
        A canary recording (``observe --ksm-pages``) of the traced processes: its
        same-content writes calibrate the write model (``planner.engine.writes``), and
        where it states ksmd's CPU time and full scans, the cost profile is fitted to
        them (:func:`planner.engine.costfit.fit_to_recording`), so that a canary at one
        knob setting predicts ksmd's pace at the others.

    The result's provenance names the trace path and hash, the policy set and the knobs.
    The compiled code of the replay is loaded from numba's cache in a thread meanwhile
    (:mod:`planner.engine.preload`).
    """
    from planner.trace.io import open_trace

    # a trace that cannot be opened is one line at once, not after the loading thread
    tr = open_trace(path)
    with compiled_code_loading(modules_for(engine)):
        return _replay_trace(
            path,
            tr,
            host=host,
            knobs=knobs,
            options=options,
            policy_path=policy_path,
            policy_set=policy_set,
            preset=preset,
            engine=engine,
            progress=progress,
            prctl_at=prctl_at,
            observed=observed,
        )


def _replay_trace(
    path: str | Path,
    tr: Trace,
    *,
    host: str | None,
    knobs: KsmKnobs | Mapping[str, Any] | None,
    options: ReplayOptions | None,
    policy_path: str | Path | None,
    policy_set: str | None,
    preset: str | None,
    engine: EngineName,
    progress: Progress,
    prctl_at: PrctlAt,
    observed: str | Path | None,
) -> ReplayResult:
    # the shipped profile of the traced CPU unless one was given (docs/busy-host.md §7)
    given = (options or ReplayOptions()).cost
    profile = profile_for_trace(given, tr.host_cpu)
    options = replace(options or ReplayOptions(), cost=profile)
    # the small tables now; the pages are streamed by prepare_trace, one snapshot at a time
    ht = tr.load_host(host, pages=False)
    resolver: Resolver | None = None
    set_name = "default (prctl for every process)"
    policy_warnings: list[str] = []
    if policy_path is not None and preset is not None:
        raise UsageProblem("--policy and --preset exclude each other", hint="give one of them")
    if policy_path is not None or preset is not None:
        from planner.policy import load_policy
        from planner.policy import preset as builtin
        from planner.policy.resolve import check_matches, match_processes

        if preset is not None:
            ps = builtin(preset)
        else:
            assert policy_path is not None
            ps = load_policy(policy_path, policy_set)
        # a rule that matches no process is a typo (an error), as in what-if
        policy_warnings = check_matches([match_processes(ht, ps)], ps)
        resolver = ps.resolver()
        set_name = ps.name
    if not isinstance(knobs, KsmKnobs):
        knobs = KsmKnobs.for_hz(ht.hz).with_(**dict(knobs or {}))
    progress.start("loading trace", None)
    inp = prepare_trace(tr, resolver=resolver, tables=ht, prctl_at=prctl_at)
    progress.finish()
    # freed arrays kept for reuse from here on, not while preparing: the replay allocates
    # and frees arrays of one size over and over (fewer page faults), prepare uses each
    # once, and blocks kept there raised the command's peak (docs/engine.md)
    with retained_heap():
        res = _replay_prepared(inp, knobs, options, engine, progress, observed)
    res.provenance.update(
        trace_path=str(path),
        trace_hash=tr.trace_hash,
        policy_set=set_name,
        policy_file=None if policy_path is None else str(policy_path),
        preset=preset,
        hosts=list(tr.hosts),
        policy_warnings=policy_warnings,
        observed=None if observed is None else str(observed),
    )
    res.provenance["cost_profile"] = profile_choice(profile, given, tr.host_cpu)
    fit = res.provenance.get("cost_fit")
    other = cost_cpu_warning(profile, tr.host_cpu, fit if isinstance(fit, dict) else None)
    from planner.engine.costfit import busier_load_warning, fit_facts, short_batch_warning

    facts = fit_facts(profile, fit if isinstance(fit, dict) else None)
    short = short_batch_warning(facts, [knobs])
    load = res.provenance.get("host_load")
    planned = [float(load["runnable_per_cpu"])] if isinstance(load, dict) else []
    busier = busier_load_warning(facts, profile, planned)
    res.provenance["cost_warnings"] = [w for w in (other, short, busier) if w]
    return res


def _replay_prepared(
    inp: ReplayInput,
    knobs: KsmKnobs,
    options: ReplayOptions | None,
    engine: EngineName,
    progress: Progress,
    observed: str | Path | None,
) -> ReplayResult:
    """The replay of a prepared input, fitted to the ``observed`` recording if any."""
    canary = None
    cost_fit: dict[str, Any] | None = None
    source: ReplayInput | DerivedInput = inp
    if observed is not None:
        from planner.engine.costfit import fit_canary
        from planner.engine.options import ReplayOptions
        from planner.engine.writes import canary_rates
        from planner.trace.recording import read_observed

        recording = read_observed(observed)
        canary = canary_rates(recording, inp.page_size)
        # the recorded ksmd's CPU and batch period fit the cost profile (docs/busy-host.md §4)
        progress.start("fitting ksmd's cost to the recording", None)
        # the fit's replays and the replay it fits share the input as replays run it
        fitted = fit_canary(inp, recording.counters, options or ReplayOptions(), canary)
        source, options, canary, cost_fit = (
            fitted.source,
            fitted.options,
            fitted.canary,
            fitted.note,
        )
        cost_fit["canary_cpu"] = recording.host_cpu
        progress.finish()
    res = replay(
        source, knobs=knobs, options=options, engine=engine, progress=progress, canary=canary
    )
    if cost_fit is not None:
        res.provenance["cost_fit"] = cost_fit
    return res


def replay_command(
    trace: str | Path,
    *,
    knobs: Mapping[str, Any],
    host: str | None = None,
    policy_path: str | Path | None = None,
    policy_set: str | None = None,
    preset: str | None = None,
) -> str:
    """The ``ksm-planner replay`` command line that replays one scenario.

    Every knob that differs from the kernel's defaults is written (from the knob table), and
    the policy as a preset or as a policy file and its set.

    Examples
    --------
    >>> replay_command("t", knobs={"pages_to_scan": 1000, "sleep_ms": 20}, preset="prctl-all")
    'ksm-planner replay t --preset prctl-all --pages-to-scan 1000'
    """
    parts = ["ksm-planner", "replay", str(trace)]
    if host is not None:
        parts += ["--host", host]
    if preset is not None:
        parts += ["--preset", preset]
    if policy_path is not None:
        parts += ["--policy", str(policy_path)]
        if policy_set is not None:
            parts += ["--policy-set", policy_set]
    parts += knob_flags(knobs)
    return " ".join(shlex.quote(p) for p in parts)


__all__ = ["replay_command", "replay_trace"]
