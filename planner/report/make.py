"""``ksm-planner report`` as one library call: run the what-if, build the review, write it.

:func:`make_report` is what the CLI calls. It checks the output location first (so a long
run never ends in "output exists"), runs :func:`planner.whatif.run_whatif`, summarises the
trace, gathers everything the review needs (:func:`review_inputs`), builds the document
(:func:`planner.report.review.build_review`) and writes it atomically
(:func:`planner.report.render.write_report`).

:func:`review_inputs` is the adapter from a :class:`~planner.whatif.WhatIfResult` to the
review's own view (:class:`~planner.report.inputs.ReviewInputs`); the review never looks
at what-if internals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from planner._deps import require
from planner._progress import NULL_PROGRESS, Progress
from planner.errors import OutputExistsError, UsageProblem
from planner.provenance import tool_version
from planner.report.inputs import (
    Capacity,
    Interval,
    Observed,
    ProcessOutcome,
    ReviewInputs,
    ScenarioOutcome,
    Timeline,
    TraceFacts,
    knobs_text,
    varying_knobs,
)

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence
    from concurrent.futures import Executor

    from planner.engine.cost import CostProfile
    from planner.engine.options import ReplayOptions
    from planner.policy.model import PolicySet
    from planner.report.doc import Document
    from planner.report.render import ReportFiles
    from planner.trace.io import HostTrace, Trace
    from planner.trace.recording import ObservedTimeline
    from planner.whatif import CapacityInputs, ExtrapolationSpec, KnobGrid, WhatIfResult
    from planner.whatif.result import ScenarioResult
    from planner.whatif.tasks import ReplayOutcome


@dataclass(frozen=True)
class ReportResult:
    """What :func:`make_report` wrote and decided."""

    files: ReportFiles
    document: Document
    recommended: str | None
    scenarios: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the ``report --json`` document)."""
        return {
            "files": self.files.to_dict(),
            "recommended": self.recommended,
            "scenarios": self.scenarios,
            "sections": [s.id for s in self.document.sections],
            "tables": [t.name for t in self.document.tables()],
            "figures": [f.name for f in self.document.figures()],
            "provenance": {
                k: v for k, v in self.document.provenance.items() if k not in ("footer",)
            },
        }


def check_output(out: str | os.PathLike[str], *, overwrite: bool, pdf: bool) -> None:
    """Fail now, not after the replays, when ``out`` cannot be written.

    Raises
    ------
    OutputExistsError
        ``out`` exists (and ``overwrite`` is false) or its parent directory does not.
    MissingExtraError
        The ``report`` extra (or ``pdf`` for ``pdf=True``) is not installed.
    """
    target = Path(out)
    if target.exists() and not overwrite:
        raise OutputExistsError(
            f"{target} already exists", hint="choose another --out or pass --force"
        )
    if not target.parent.exists():
        raise OutputExistsError(f"directory {target.parent} does not exist", hint="create it first")
    if target.exists() and not target.is_dir():
        raise OutputExistsError(f"{target} is not a directory", hint="choose another --out")
    require("jinja2", extra="report", purpose="review documents")
    require("matplotlib", extra="report", purpose="review plots")
    if pdf:
        require("weasyprint", extra="pdf", purpose="PDF reviews")


def make_report(
    trace: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str],
    policy_sets: Sequence[PolicySet] | None = None,
    grid: KnobGrid | None = None,
    replay_options: ReplayOptions | None = None,
    cost_profile: CostProfile | None = None,
    capacity: CapacityInputs | None = None,
    extrapolation: ExtrapolationSpec | None = None,
    observed: str | os.PathLike[str] | None = None,
    host: str | None = None,
    executor: Executor | None = None,
    max_workers: int | None = None,
    cpu_budget_percent: float = 10.0,
    command: str | None = None,
    title: str | None = None,
    pdf: bool = False,
    overwrite: bool = False,
    progress: Progress = NULL_PROGRESS,
) -> ReportResult:
    """Compare scenarios on a trace and write the capacity review of the result.

    Parameters
    ----------
    trace
        The trace directory.
    out
        The review's directory (created atomically; see :mod:`planner.report.render`).
    policy_sets, grid, replay_options, cost_profile, capacity, extrapolation, executor, max_workers
        Passed to :func:`planner.whatif.run_whatif` (defaults: the presets, the kernel's
        knobs, the shipped cost profile, no capacity, a local process pool).
    observed
        A recording of ``ksm-planner observe`` to compare the prediction with.
    host
        The host of a multi-host trace to review (default: the only host).
    cpu_budget_percent
        ksmd CPU (% of one core) a recommended scenario may use.
    command
        The command line that reproduces the review (recorded in it).
    title
        The document title (default: ``KSM capacity review: <trace name>``).
    pdf, overwrite
        Also print ``review.pdf``; replace ``out`` if it exists.

    Raises
    ------
    OutputExistsError, MissingExtraError, UsageProblem, PolicyError, KnobError, TraceFormatError
        Checked before anything long runs where possible.
    """
    from planner.report.render import write_report
    from planner.report.review import build_review
    from planner.trace.io import open_trace
    from planner.whatif import run_whatif

    check_output(out, overwrite=overwrite, pdf=pdf)
    if not cpu_budget_percent > 0:
        raise UsageProblem(
            f"the ksmd CPU budget must be positive, got {cpu_budget_percent}",
            hint="give a percentage of one core, e.g. 10",
        )
    tr = open_trace(trace)
    host = _one_host(tr, host)
    obs = None
    if observed is not None:
        from planner.trace.recording import read_observed

        obs = read_observed(observed)
    result = run_whatif(
        tr,
        policy_sets=policy_sets,
        grid=grid,
        replay_options=replay_options,
        cost_profile=cost_profile,
        capacity=capacity,
        extrapolation=extrapolation,
        observed=obs,
        hosts=[host],
        executor=executor,
        max_workers=max_workers,
        progress=progress,
    )
    trace_text = str(trace)
    inputs = review_inputs(
        result,
        trace=tr,
        trace_text=trace_text,
        command=command or f"ksm-planner report {trace_text} --out DIR",
        cpu_budget_percent=cpu_budget_percent,
        observed=obs,
    )
    doc = build_review(inputs, title=title)
    files = write_report(doc, out, pdf=pdf, overwrite=overwrite)
    return ReportResult(
        files=files,
        document=doc,
        recommended=doc.provenance.get("recommended"),
        scenarios=len(inputs.scenarios),
    )


def _one_host(tr: Trace, host: str | None) -> str:
    if host is not None:
        if host not in tr.hosts:
            raise UsageProblem(
                f"{tr.path} has no host {host!r}", hint=f"hosts are: {', '.join(tr.hosts)}"
            )
        return host
    if len(tr.hosts) != 1:
        raise UsageProblem(
            f"{tr.path} holds {len(tr.hosts)} hosts ({', '.join(tr.hosts)}); a review is about one",
            hint="name it with --host",
        )
    return tr.hosts[0]


# ----------------------------------------------------------------------------- adapter


def review_inputs(
    result: WhatIfResult,
    *,
    trace: Trace,
    trace_text: str,
    command: str,
    cpu_budget_percent: float = 10.0,
    observed: ObservedTimeline | None = None,
) -> ReviewInputs:
    """The review's view of a what-if result on one host of ``trace``."""
    from planner.report.analysis import cow_breaks, current_state
    from planner.trace.summary import summarize_trace

    host = result.hosts[0]
    ht = trace.load_host(host)
    summary = summarize_trace(trace.path)
    zero = _zero_frames(ht, result)
    descriptions = {p.name: p.description or p.name for p in result.policy_sets}
    crosses = {s.cross_domain for s in result.scenarios}
    vary = varying_knobs([s.knobs_full for s in result.scenarios])
    scenarios = []
    for s in result.scenarios:
        name = s.policy_set
        if len(crosses) > 1:
            name += f" · {s.cross_domain} cross-domain"
        kt = knobs_text(s.knobs_full, vary)
        name = f"{name} · {kt}" if kt else name
        scenarios.append(
            _scenario(s, name, descriptions.get(s.policy_set, s.policy_set), zero, result)
        )
    opts: dict[str, Any] = {
        "tool_version": tool_version(),
        **{k: v for k, v in result.replay_options.items() if v is not None},
        "cost_profile": result.provenance.get("extra", {}).get("cost_profile", "default"),
        "cpu_budget_percent": cpu_budget_percent,
        "policy_sets": ", ".join(p.name for p in result.policy_sets),
        "grid": " ".join(f"{k}={','.join(map(str, v))}" for k, v in result.grid.axes)
        or "kernel defaults",
    }
    if result.capacity_inputs is not None:
        ci = result.capacity_inputs
        opts.update(
            host_mem_bytes=ci.host_mem_bytes,
            headroom_bytes=ci.headroom_bytes,
            headroom_fraction=ci.headroom_fraction,
            worker_other_bytes=ci.worker_other_bytes,
            host_cpus=ci.host_cpus,
            cpu_per_worker=ci.cpu_per_worker,
        )
    return ReviewInputs(
        trace=_facts(trace, ht, summary, trace_text),
        summary=summary,
        state=current_state(ht),
        cow=cow_breaks(ht),
        scenarios=tuple(scenarios),
        command=command,
        baseline=next((s.name for s in scenarios if not s.enabled), None),
        cpu_budget_percent=cpu_budget_percent,
        observed=_observed(result, scenarios, observed),
        options={k: opts[k] for k in sorted(opts) if opts[k] is not None},
        extrapolation=_extrapolation(result),
        notes=tuple(result.warnings),
    )


def _facts(trace: Trace, ht: HostTrace, summary: Any, trace_text: str) -> TraceFacts:
    facts = TraceFacts.of(trace, ht, summary, name=Path(trace_text).name or trace_text)
    from dataclasses import replace

    return replace(facts, path=trace_text)


def _zero_frames(ht: HostTrace, result: WhatIfResult) -> dict[str, int]:
    """Eligible zero-content frames at the last snapshot, per policy set."""
    from planner.engine.prepare import prepare
    from planner.report.analysis import eligible_potential

    out: dict[str, int] = {}
    for p in result.policy_sets:
        out[p.name] = eligible_potential(prepare(ht, resolver=p.resolver())).zero_frames
    return out


def _step_sum(series: Sequence[tuple[Sequence[float], Sequence[float]]], at: Any) -> Any:
    total = np.zeros(len(at))
    for t, v in series:
        if not len(t):
            continue
        ta, va = np.asarray(t, dtype=float), np.asarray(v, dtype=float)
        idx = np.searchsorted(ta, at, side="right") - 1
        total += np.where(idx >= 0, va[np.clip(idx, 0, va.size - 1)], 0.0)
    return total


def _timeline(replays: Sequence[ReplayOutcome]) -> Timeline:
    """One timeline from one replay, or the sum of a scenario's per-domain replays."""
    if len(replays) == 1:
        g, sc = replays[0].timeline.grid, replays[0].timeline.scans
        return Timeline(
            grid_t_s=tuple(float(x) for x in g.get("t_s", [])),
            grid_net_saved_bytes=tuple(float(x) for x in g.get("net_saved_bytes", [])),
            scan_t_s=tuple(float(x) for x in sc.get("t_s", [])),
            scan_full_scans=tuple(int(x) for x in sc.get("full_scans", [])),
            scan_time_s=tuple(float(x) for x in sc.get("scan_time_s", [])),
            scan_net_saved_bytes=tuple(float(x) for x in sc.get("net_saved_bytes", [])),
            scan_pages_sharing=tuple(int(x) for x in sc.get("pages_sharing", [])),
        )
    grid_t = sorted({float(t) for r in replays for t in r.timeline.grid.get("t_s", [])})
    at = np.asarray(grid_t)
    net = _step_sum(
        [
            (r.timeline.grid.get("t_s", []), r.timeline.grid.get("net_saved_bytes", []))
            for r in replays
        ],
        at,
    )
    events = sorted(
        (float(t), int(n), float(d))
        for r in replays
        for t, n, d in zip(
            r.timeline.scans.get("t_s", []),
            r.timeline.scans.get("full_scans", []),
            r.timeline.scans.get("scan_time_s", []),
            strict=True,
        )
    )
    st = np.asarray([e[0] for e in events])
    scan_net = _step_sum(
        [
            (r.timeline.scans.get("t_s", []), r.timeline.scans.get("net_saved_bytes", []))
            for r in replays
        ],
        st,
    )
    scan_sharing = _step_sum(
        [
            (r.timeline.scans.get("t_s", []), r.timeline.scans.get("pages_sharing", []))
            for r in replays
        ],
        st,
    )
    return Timeline(
        grid_t_s=tuple(grid_t),
        grid_net_saved_bytes=tuple(float(x) for x in net),
        scan_t_s=tuple(e[0] for e in events),
        scan_full_scans=tuple(e[1] for e in events),
        scan_time_s=tuple(e[2] for e in events),
        scan_net_saved_bytes=tuple(float(x) for x in scan_net),
        scan_pages_sharing=tuple(int(x) for x in scan_sharing),
    )


def _time_to(tl: Timeline, fraction: int, final: float) -> float | None:
    pts = sorted(
        [
            *zip(tl.grid_t_s, tl.grid_net_saved_bytes, strict=True),
            *zip(tl.scan_t_s, tl.scan_net_saved_bytes, strict=True),
        ]
    )
    if final <= 0:
        return None
    target = final * fraction / 100.0
    return next((t for t, v in pts if v >= target), None)


def _processes(replays: Sequence[ReplayOutcome]) -> tuple[ProcessOutcome, ...]:
    by_pid: dict[int, dict[str, Any]] = {}
    for r in replays:
        for p in r.processes:
            pid = int(p["pid"])
            if pid not in by_pid or (by_pid[pid].get("mode") == "off" and p.get("mode") != "off"):
                by_pid[pid] = p
    return tuple(
        ProcessOutcome(
            pid=pid,
            registration=str(p.get("mode", "off")),
            rule=p.get("rule"),
            domain=p.get("domain"),
            rmap_items=int(p.get("ksm_rmap_items", 0)),
            merging_pages=int(p.get("ksm_merging_pages", 0)),
            zero_pages=int(p.get("ksm_zero_pages", 0)),
            profit_bytes=int(p.get("ksm_process_profit", 0)),
        )
        for pid, p in sorted(by_pid.items())
    )


def _scenario(
    s: ScenarioResult, name: str, description: str, zero: dict[str, int], result: WhatIfResult
) -> ScenarioOutcome:
    h = s.hosts[0]
    replays = h.replays
    ps = h.page_size
    tl = _timeline(replays)
    counters: dict[str, int] = {}
    for r in replays:
        for k, v in r.final_counters.items():
            counters[k] = counters.get(k, 0) + int(v)
    counters["rmap_items"] = sum(int(r.final_truth["rmap_items"]) for r in replays)
    saved_frames = h.saved_bytes // ps
    domains_n = max(1, len(replays))
    use_zero = bool(s.knobs_full.get("use_zero_pages", False))
    z = zero.get(s.policy_set, 0)
    zero_frames = z if use_zero else max(0, z - domains_n)
    cpu_s = float(sum(float(r.cost.get("cpu_s", 0.0)) for r in replays))
    duration = max((r.duration_s for r in replays), default=0.0)
    tails = [r.timeline.scans.get("scan_time_s", []) for r in replays]
    full_scan = [
        float(np.mean(t[-r.steady_scans :]))
        for t, r in zip(tails, replays, strict=True)
        if t and r.steady_scans
    ]
    times = {str(f): _time_to(tl, f, float(h.net_saved_bytes)) for f in (50, 90, 99)}
    times["90"] = s.time_to_90_s
    cap = s.capacity
    capacity = None
    if cap is not None and result.capacity_inputs is not None:
        ci = result.capacity_inputs
        lo, hi = cap.gain_interval if cap.gain_interval else (math.nan, math.nan)
        capacity = Capacity(
            host_mem_bytes=ci.host_mem_bytes,
            headroom_bytes=int(ci.host_mem_bytes - ci.budget_bytes),
            worker_bytes_without=cap.per_worker_anon_bytes + cap.worker_other_bytes,
            worker_bytes_with=math.nan,
            workers_without=cap.workers_without,
            workers_with=cap.workers_with,
            gain=Interval(cap.gain if cap.gain is not None else math.nan, lo, hi, cap.confidence),
            limited_by=cap.limit_with,
            extra={
                "workers_with_low": cap.workers_with_interval[0],
                "workers_with_high": cap.workers_with_interval[1],
                "limit_without": cap.limit_without,
                "base_bytes": cap.base_bytes,
                "per_worker_anon_bytes": cap.per_worker_anon_bytes,
                "worker_other_bytes": cap.worker_other_bytes,
                "ksm_net_saved_bytes": cap.ksm_net_saved_bytes,
                "ksmd_cores": cap.ksmd_cores,
                "realization_ratio": cap.realization_ratio,
            },
        )
    scale = None
    fit = result.fit(
        s.policy_set, "deny" if s.cross_domain == "deny" and len(h.domains) > 1 else "allow", h.host
    )
    n_target = (cap.workers_with if cap is not None else None) or (
        result.extrapolation.replicas if result.extrapolation is not None else None
    )
    if fit is not None and n_target and fit.point.eligible_b > 0 and h.eligible_pages > 0:
        scale = float(fit.point.eligible_pages(n_target)) / float(h.eligible_pages)
    saving_iv = None
    if s.projected is not None:
        e = s.projected.net_saved_percent
        saving_iv = Interval(e.value / 100, e.low / 100, e.high / 100, e.confidence)
    pairs = tuple(
        (p["domains"][0], p["domains"][1]) for p in s.domain_pairs if len(p["domains"]) >= 2
    )
    return ScenarioOutcome(
        name=name,
        policy_set=s.policy_set,
        policy_description=description,
        knobs={k: v for k, v in s.knobs_full.items() if k != "cost_profile"},
        page_size=ps,
        anon_bytes=h.anon_bytes,
        saved_bytes=h.saved_bytes,
        metadata_bytes=h.metadata_bytes,
        ideal_saved_bytes=h.ideal_saved_bytes,
        zero_saved_bytes=min(zero_frames, saved_frames) * ps,
        time_to_s=times,
        cpu_s=cpu_s,
        cpu_percent=100.0 * cpu_s / duration if duration > 0 else 0.0,
        steady_cpu_percent=s.ksmd_cpu_percent,
        pages_per_full_scan=float(s.pages_scanned_per_full_scan or 0.0),
        pages_skipped_per_full_scan=float(s.pages_skipped_per_full_scan or 0.0),
        full_scan_s=float(np.mean(full_scan)) if full_scan else math.nan,
        final_counters=counters,
        timeline=tl,
        processes=_processes(replays),
        cross_domain_saved_bytes=s.cross_domain_saved_bytes if len(h.domains) > 1 else None,
        domains=tuple(h.domains),
        domains_merged=pairs,
        domain_mode=s.cross_domain if len(h.domains) > 1 else None,
        capacity=capacity,
        saving_interval=saving_iv,
        pareto=s.pareto,
        host_scale=scale,
        extra={"whatif_id": s.id, "same_replay_as": s.same_replay_as, "target_workers": n_target},
    )


def _observed(
    result: WhatIfResult, scenarios: Sequence[ScenarioOutcome], obs: ObservedTimeline | None
) -> Observed | None:
    cmp = result.observed
    if cmp is None or obs is None:
        return None
    name = next(
        (s.name for s in scenarios if s.extra.get("whatif_id") == cmp.scenario_id), cmp.scenario_id
    )
    prov = obs.provenance
    source = f"host {prov.get('host', obs.meta.get('host', {}).get('host', '?'))}"
    return Observed(
        source=source,
        scenario=name,
        t_s=tuple(cmp.t_s),
        observed={k: tuple(v) for k, v in cmp.observed.items()},
        predicted={k: tuple(v) for k, v in cmp.predicted.items()},
        knob_differences={k: (str(a), str(b)) for k, (a, b) in cmp.knob_differences.items()},
        final_relative_error=cmp.final_relative_error(),
        notes=tuple(cmp.notes),
    )


def _extrapolation(result: WhatIfResult) -> dict[str, Any] | None:
    if not result.fits:
        return None
    spec = result.extrapolation
    fits = []
    top = max(
        [int(spec.replicas or 0) if spec else 0]
        + [
            int(s.capacity.workers_with)
            for s in result.scenarios
            if s.capacity is not None and s.capacity.workers_with
        ]
    )
    for f in result.fits:
        ho = f.holdout
        fits.append(
            {
                "policy_set": f.policy_set,
                "cross_domain": f.cross_domain,
                "group": f.group,
                "k": f.k,
                "group_pids": list(f.group_pids),
                "base_pids": list(f.base_pids),
                "n": list(f.observed.n),
                "observed_ideal_saved_frames": list(f.observed.ideal_saved),
                "fit": f.point.to_dict(),
                "confidence": f.confidence,
                "holdout_relative_error": ho.relative_error if ho else None,
                "holdout_fit_upto": ho.fit_upto if ho else None,
                "page_size": f.page_size,
                "curve": _curve(f, top),
                "notes": list(f.notes),
            }
        )
    return {
        "spec": spec.to_dict() if spec else None,
        "fits": fits,
    }


def _curve(f: Any, top: int) -> dict[str, list[float]]:
    """Fitted memory and ideal saving with n replicas (bootstrap band), n = 1 .. ``top``."""
    top = max(top, 2 * f.k, 4)
    ns = sorted(
        {
            *range(1, min(top, 2 * f.k) + 1),
            *np.unique(np.geomspace(1, top, 40).round().astype(int)).tolist(),
            top,
        }
    )
    frames, point, lo, hi = [], [], [], []
    for n in ns:
        frames.append(float(f.point.frames(n)))
        point.append(float(f.point.ideal_saved(n)))
        if f.replicates:
            a, b = f.interval([r.ideal_saved(n) for r in f.replicates])
        else:
            a, b = math.nan, math.nan
        lo.append(a)
        hi.append(b)
    return {
        "n": [float(n) for n in ns],
        "frames": frames,
        "ideal_saved_frames": point,
        "low": lo,
        "high": hi,
    }


__all__ = ["ReportResult", "check_output", "make_report", "review_inputs"]
