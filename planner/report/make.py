"""``ksm-planner report`` as one library call: run the what-if, build the review, write it.

:func:`make_report` is what the CLI calls. It checks the output location first (so a long
run never ends in "output exists"), runs :func:`planner.whatif.run_whatif`, summarises the
trace, gathers everything the review needs (:func:`review_inputs`), builds the document
(:func:`planner.report.review.build_review`) and writes it atomically
(:func:`planner.report.render.write_report`).

:func:`review_inputs` maps a :class:`~planner.whatif.WhatIfResult` to the review's view
(:class:`~planner.report.inputs.ReviewInputs`): it names the scenarios and records the
options. It computes nothing: every number of the review is a field of the what-if's
results or of the trace facts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from planner._deps import require
from planner._progress import NULL_PROGRESS, Progress
from planner.errors import OutputExistsError, UsageProblem
from planner.jsonable import skip
from planner.provenance import tool_version
from planner.report.inputs import (
    ReviewGates,
    ReviewInputs,
    ReviewOptions,
    ReviewScenario,
    TraceFacts,
    knobs_text,
    varying_knobs,
)
from planner.whatif.gridpoints import with_kernel_defaults, with_values

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence
    from concurrent.futures import Executor

    from planner.engine.cost import CostProfile
    from planner.engine.options import ReplayOptions
    from planner.policy.model import PolicySet
    from planner.report.doc import Document
    from planner.report.render import ReportFiles
    from planner.trace.io import Trace
    from planner.whatif import CapacityInputs, ExtrapolationSpec, KnobGrid, WhatIfResult


@dataclass(frozen=True)
class ReportResult:
    """What :func:`make_report` wrote and decided (as JSON: the ``report --json`` document)."""

    files: ReportFiles
    recommended: str | None
    scenarios: int
    sections: tuple[str, ...]
    tables: tuple[str, ...]
    figures: tuple[str, ...]
    provenance: dict[str, Any]
    warnings: tuple[str, ...] = field(default=(), metadata=skip())
    document: Document | None = field(default=None, metadata=skip())

    @classmethod
    def of(cls, files: ReportFiles, doc: Document, scenarios: int) -> ReportResult:
        """The summary of a written review."""
        return cls(
            files=files,
            recommended=doc.provenance.get("recommended"),
            scenarios=scenarios,
            sections=tuple(s.id for s in doc.sections),
            tables=tuple(t.name for t in doc.tables()),
            figures=tuple(f.name for f in doc.figures()),
            provenance={k: v for k, v in doc.provenance.items() if k != "footer"},
            warnings=tuple(str(w) for w in doc.data.get("warnings", ())),
            document=doc,
        )


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
    gates: ReviewGates | None = None,
    command: str | None = None,
    policy_file: str | os.PathLike[str] | None = None,
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
        A recording of ``ksm-planner observe`` to compare the prediction with; its knobs are
        added to the grid (the canary's scenario is always among those compared).
    host
        The host of a multi-host trace to review (default: the only host).
    gates
        What a recommended scenario must meet (ksmd CPU as a share of the host, time to
        90 %, the near-best margin); default :class:`~planner.report.inputs.ReviewGates`.
        The grid is given the kernel's default value of every knob it varies, so that the
        review always shows the kernel's defaults.
    command
        The command line that reproduces the review (recorded in it).
    policy_file
        The policy file ``policy_sets`` were read from, as the user gave it: the appendix's
        ``ksm-planner replay`` commands name it.
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
    gates = gates or ReviewGates()
    tr = open_trace(trace)
    host = _one_host(tr, host)
    result = run_whatif(
        tr,
        policy_sets=policy_sets,
        grid=_review_grid(grid, observed),
        replay_options=replay_options,
        cost_profile=cost_profile,
        capacity=capacity,
        extrapolation=extrapolation,
        observed=observed,
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
        gates=gates,
        policy_file=None if policy_file is None else str(policy_file),
    )
    doc = build_review(inputs, title=title)
    files = write_report(doc, out, pdf=pdf, overwrite=overwrite)
    return ReportResult.of(files, doc, len(inputs.scenarios))


def _review_grid(grid: KnobGrid | None, observed: str | os.PathLike[str] | None) -> KnobGrid | None:
    """The grid a review replays: ``grid`` with the kernel's default of every knob it varies
    and, with a canary, the canary's knobs (so that the canary is compared with the scenario
    it ran, and the model's error it measures is the error of that scenario)."""
    grid = with_kernel_defaults(grid)
    if observed is None:
        return grid
    from planner.whatif.observed import load_observed, observed_knobs

    return with_values(grid, observed_knobs(load_observed(observed)))


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


# ----------------------------------------------------------------------------- mapping


def review_inputs(
    result: WhatIfResult,
    *,
    trace: Trace,
    trace_text: str,
    command: str,
    gates: ReviewGates | None = None,
    host: str | None = None,
    policy_file: str | None = None,
) -> ReviewInputs:
    """The review's view of a what-if result on one host of ``trace`` (the first by default)."""
    from planner.report.analysis import current_state
    from planner.trace.summary import summarize_trace
    from planner.whatif.writes import cow_breaks

    host = host or result.hosts[0]
    ht = trace.load_host(host)
    summary = summarize_trace(trace.path)
    scenarios = _scenarios(result, host)
    writes = next((s.host.writes for s in scenarios if s.host.writes is not None), None)
    gates = gates or ReviewGates()
    return ReviewInputs(
        trace=TraceFacts.of(
            trace, ht, summary, name=Path(trace_text).name or trace_text, path=trace_text
        ),
        summary=summary,
        state=current_state(ht),
        cow=writes if writes is not None else cow_breaks(ht),
        whatif=result,
        scenarios=scenarios,
        command=command,
        options=_options(result, gates),
        gates=gates,
        policy_file=policy_file,
    )


def _scenarios(result: WhatIfResult, host: str) -> tuple[ReviewScenario, ...]:
    """The scenarios, named by policy set, cross-domain rule and the knobs that vary."""
    descriptions = {p.name: p.description or p.name for p in result.policy_sets}
    crosses = {s.cross_domain for s in result.scenarios}
    vary = varying_knobs([asdict(s.knobs_full) for s in result.scenarios])
    out = []
    for s in result.scenarios:
        name = s.policy_set
        if len(crosses) > 1:
            name += f" · {s.cross_domain} cross-domain"
        kt = knobs_text(asdict(s.knobs_full), vary)
        out.append(
            ReviewScenario(
                name=f"{name} · {kt}" if kt else name,
                description=descriptions.get(s.policy_set, s.policy_set),
                result=s,
                host=s.host(host),
            )
        )
    return tuple(out)


def _options(result: WhatIfResult, gates: ReviewGates) -> ReviewOptions:
    ro = result.replay_options
    ci = result.capacity_inputs
    return ReviewOptions(
        tool_version=tool_version(),
        cost_profile=ro.cost_profile,
        cost_profile_cpu=ro.cost_profile_cpu,
        max_ksmd_host_share=gates.max_ksmd_host_share,
        max_time_to_90_s=gates.max_time_to_90_s,
        near_best=gates.near_best,
        policy_sets=", ".join(p.name for p in result.policy_sets),
        grid=" ".join(f"{k}={','.join(map(str, v))}" for k, v in result.grid.axes)
        or "kernel defaults",
        settle_scans=ro.settle_scans,
        max_scans=ro.max_scans,
        snapshot_alignment=ro.snapshot_alignment,
        duration_s=ro.duration_s,
        grid_s=ro.grid_s,
        host_mem_bytes=ci.host_mem_bytes if ci else None,
        headroom_bytes=ci.headroom_bytes if ci else None,
        headroom_fraction=ci.headroom_fraction if ci else None,
        worker_file_bytes=ci.worker_file_bytes if ci else None,
        worker_shmem_bytes=ci.worker_shmem_bytes if ci else None,
        worker_page_tables_bytes=ci.worker_page_tables_bytes if ci else None,
        worker_other_bytes=ci.worker_other_bytes if ci else None,
        base_other_bytes=ci.base_other_bytes if ci else None,
        host_cpus=ci.host_cpus if ci else None,
        cpu_per_worker=ci.cpu_per_worker if ci else None,
    )


__all__ = ["ReportResult", "check_output", "make_report", "review_inputs"]
