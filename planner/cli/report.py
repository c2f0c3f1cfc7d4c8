"""``ksm-planner report``: the capacity-planning review of a trace (HTML, Markdown, data, PDF)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Any

import typer

from planner.cli._app import app
from planner.cli._output import ForceFlag, JsonFlag, claim, emit_json, note, progress, warn
from planner.engine.options import MAX_DURATION_S
from planner.jsonable import to_jsonable

_KNOB_LISTS = (
    ("pages_to_scan", "--pages-to-scan"),
    ("sleep_ms", "--sleep-ms"),
    ("smart_scan", "--smart-scan"),
    ("advisor", "--advisor"),
    ("max_page_sharing", "--max-page-sharing"),
    ("use_zero_pages", "--use-zero-pages"),
)


def _list_option(flag: str, what: str) -> Any:
    return typer.Option(flag, help=f"{what}; a comma-separated list, one scenario per value.")


@app.command("report")
def report_cmd(
    trace: Annotated[Path, typer.Argument(help="The trace directory to review.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Directory to write the review into (created).")
    ],
    policies: Annotated[
        Path | None,
        typer.Option("--policies", help="Policy file (TOML) whose sets are compared."),
    ] = None,
    sets: Annotated[
        list[str] | None,
        typer.Option(
            "--set", metavar="NAME", help="Compare only this set of --policies (repeatable)."
        ),
    ] = None,
    presets: Annotated[
        list[str] | None,
        typer.Option(
            "--preset",
            metavar="NAME",
            help="Compare this built-in preset (repeatable; default without --policies: "
            "off, prctl-all, workers-prctl, madvise-heap).",
        ),
    ] = None,
    grid: Annotated[
        Path | None, typer.Option("--grid", help="Knob grid file (TOML); lists below override it.")
    ] = None,
    pages_to_scan: Annotated[str | None, _list_option("--pages-to-scan", "pages_to_scan")] = None,
    sleep_ms: Annotated[str | None, _list_option("--sleep-ms", "sleep_millisecs")] = None,
    smart_scan: Annotated[str | None, _list_option("--smart-scan", "smart_scan on/off")] = None,
    advisor: Annotated[str | None, _list_option("--advisor", "advisor_mode none/scan-time")] = None,
    max_page_sharing: Annotated[
        str | None, _list_option("--max-page-sharing", "max_page_sharing")
    ] = None,
    use_zero_pages: Annotated[
        str | None, _list_option("--use-zero-pages", "use_zero_pages on/off")
    ] = None,
    knob: Annotated[
        list[str] | None,
        typer.Option(
            "--knob",
            metavar="NAME=V1,V2",
            help="Any other knob as NAME=V1,V2 (repeatable), e.g. advisor_max_cpu=40,70.",
        ),
    ] = None,
    cross_domain: Annotated[
        str | None,
        typer.Option("--cross-domain", help="allow, deny or allow,deny (default: each set's own)."),
    ] = None,
    host_mem: Annotated[
        str | None,
        typer.Option("--host-mem", help="Host memory for the capacity gain, e.g. 64GiB."),
    ] = None,
    headroom: Annotated[
        str, typer.Option("--headroom", help="Memory kept free: a size or a percentage.")
    ] = "10%",
    worker_file: Annotated[
        str | None,
        typer.Option(
            "--worker-file",
            help="Per worker: file-backed pages only it maps (default: measured from the "
            "trace, else assumed; docs/capacity.md).",
        ),
    ] = None,
    worker_shmem: Annotated[
        str | None, typer.Option("--worker-shmem", help="Per worker: shared memory.")
    ] = None,
    worker_page_tables: Annotated[
        str | None, typer.Option("--worker-page-tables", help="Per worker: page tables.")
    ] = None,
    worker_other: Annotated[
        str | None,
        typer.Option(
            "--worker-other",
            help="Per worker: kernel objects and any other memory outside the trace, e.g. 1MiB.",
        ),
    ] = None,
    base_other: Annotated[
        str | None,
        typer.Option(
            "--base-other",
            help="Once per host: file pages every worker maps and the base processes' overhead.",
        ),
    ] = None,
    host_cpus: Annotated[
        float | None,
        typer.Option(
            "--host-cpus", help="Host cores (default: assumed, 4 GiB of --host-mem each)."
        ),
    ] = None,
    cpu_per_worker: Annotated[
        float | None,
        typer.Option(
            "--cpu-per-worker",
            help="Cores one worker needs at its planned load (default: measured, else no CPU "
            "bound).",
        ),
    ] = None,
    replicas: Annotated[
        int | None,
        typer.Option("--replicas", help="Project the saving to N replicas per host."),
    ] = None,
    group: Annotated[
        str,
        typer.Option(
            "--group",
            help="The replicas: siblings, all, comm:RE, cmdline:RE, label:K=V, rule:NAME, "
            "pid:LIST.",
        ),
    ] = "siblings",
    observed: Annotated[
        Path | None,
        typer.Option("--observed", help="A recording of 'ksm-planner observe' to compare with."),
    ] = None,
    host: Annotated[
        str | None, typer.Option("--host", help="The host of a multi-host trace.")
    ] = None,
    cost_profile: Annotated[
        Path | None, typer.Option("--cost-profile", help="ksmd cost profile (from calibrate).")
    ] = None,
    settle_scans: Annotated[
        int | None,
        typer.Option("--settle-scans", help="Full scans replayed after the last snapshot."),
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option(
            "--duration",
            help=f"Replay this many seconds instead (at most {MAX_DURATION_S:.0f}, 7 days).",
            min=0.001,
            max=MAX_DURATION_S,
        ),
    ] = None,
    bootstrap: Annotated[
        int, typer.Option("--bootstrap", help="Bootstrap resamples of the fit.", min=10)
    ] = 200,
    confidence: Annotated[
        float, typer.Option("--confidence", help="Confidence level of the intervals.")
    ] = 0.90,
    max_ksmd_cpu: Annotated[
        str,
        typer.Option(
            "--max-ksmd-cpu",
            help="Gate: ksmd CPU a recommendation may use, a share of the host's CPUs.",
        ),
    ] = "2%",
    max_time_to_90: Annotated[
        str,
        typer.Option(
            "--max-time-to-90",
            help="Gate: time to 90 % of the saving on the planned host (s, min, h).",
        ),
    ] = "10min",
    near_best: Annotated[
        str,
        typer.Option(
            "--near-best",
            help="Savings within this share of the best count as equal; the cheapest wins.",
        ),
    ] = "2%",
    title: Annotated[str | None, typer.Option("--title", help="Title of the review.")] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Local processes for the replays.")
    ] = None,
    scheduler: Annotated[
        str | None, typer.Option("--scheduler", help="Run the replays on a Dask cluster.")
    ] = None,
    cluster_timeout: Annotated[
        float,
        typer.Option("--cluster-timeout", help="Seconds to wait for the Dask scheduler.", min=0.1),
    ] = 30.0,
    pdf: Annotated[
        bool, typer.Option("--pdf", help="Also write review.pdf (extra 'pdf').")
    ] = False,
    force: ForceFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Write the capacity-planning review of TRACE: should KSM be enabled, how, what it buys.

    Compares policy sets across ksmd knob settings (like 'whatif'), then writes OUT/ with
    review.html (one self-contained page: plots inlined, nothing loaded from the network),
    review.md (its Markdown twin), plots/*.svg, data/*.csv and data/review.json (every number
    behind every table and plot) and, with --pdf, review.pdf. The output is deterministic:
    the same inputs give the same bytes. Nothing is written if anything fails.

    Example: ksm-planner report traces/django-preload --pages-to-scan 100,1000,4000
    --host-mem 16GiB --out review
    """
    from contextlib import ExitStack

    from planner.cli._inputs import check_hosts
    from planner.cli._inputs import presets as _presets
    from planner.engine.cost import CostProfile
    from planner.policy import load_policies
    from planner.report.inputs import ReviewGates, parse_duration, parse_share
    from planner.report.make import check_output, make_report
    from planner.whatif import ExtrapolationSpec
    from planner.whatif.capacity import capacity_from_options
    from planner.whatif.grid import grid_from_options
    from planner.whatif.run import options_from

    inputs = (trace, policies, grid, cost_profile, observed)
    with claim(out, kind="review", inputs=inputs, force=force):
        check_output(out, overwrite=force, pdf=pdf)
        check_hosts(trace, [host] if host is not None else [])
        policy_sets = _policy_sets(policies, sets, presets, load_policies, _presets)
        given = {
            "pages_to_scan": pages_to_scan,
            "sleep_ms": sleep_ms,
            "smart_scan": smart_scan,
            "advisor": advisor,
            "max_page_sharing": max_page_sharing,
            "use_zero_pages": use_zero_pages,
        }
        knob_grid = grid_from_options(grid, given, knob or (), cross_domain)
        sizes = {
            "worker_file": worker_file,
            "worker_shmem": worker_shmem,
            "worker_page_tables": worker_page_tables,
            "worker_other": worker_other,
            "base_other": base_other,
        }
        capacity = capacity_from_options(
            host_mem, headroom=headroom, host_cpus=host_cpus, cpu_per_worker=cpu_per_worker, **sizes
        )
        gates = ReviewGates(
            max_ksmd_host_share=parse_share(max_ksmd_cpu, option="--max-ksmd-cpu"),
            max_time_to_90_s=parse_duration(max_time_to_90, option="--max-time-to-90"),
            near_best=parse_share(near_best, option="--near-best"),
        )
        extrapolation = None
        if capacity is not None or replicas is not None:
            extrapolation = ExtrapolationSpec(
                group=group, replicas=replicas, n_resamples=bootstrap, confidence=confidence
            )
        profile = CostProfile.load(cost_profile) if cost_profile else None
        command = _command(
            trace,
            policies=policies,
            sets=sets,
            presets=presets,
            grid=grid,
            lists=[(flag, given[k]) for k, flag in _KNOB_LISTS],
            extra=[
                *(("--knob", k) for k in knob or ()),
                ("--cross-domain", cross_domain),
                ("--host-mem", host_mem),
                ("--headroom", headroom if host_mem else None),
                *((f"--{k.replace('_', '-')}", v if host_mem else None) for k, v in sizes.items()),
                ("--host-cpus", host_cpus),
                ("--cpu-per-worker", cpu_per_worker),
                ("--replicas", replicas),
                ("--group", group if group != "siblings" else None),
                ("--observed", observed),
                ("--host", host),
                ("--cost-profile", cost_profile),
                ("--settle-scans", settle_scans),
                ("--duration", duration),
                ("--bootstrap", bootstrap if bootstrap != 200 else None),
                ("--confidence", confidence if confidence != 0.90 else None),
                ("--max-ksmd-cpu", max_ksmd_cpu if max_ksmd_cpu != "2%" else None),
                ("--max-time-to-90", max_time_to_90 if max_time_to_90 != "10min" else None),
                ("--near-best", near_best if near_best != "2%" else None),
                ("--title", title),
            ],
            pdf=pdf,
        )
        with ExitStack() as stack:
            executor = None
            if scheduler is not None:
                from planner.whatif import dask_executor

                executor = stack.enter_context(dask_executor(scheduler, timeout_s=cluster_timeout))
            bar = stack.enter_context(progress())
            result = make_report(
                trace,
                out=out,
                policy_sets=policy_sets,
                grid=knob_grid,
                replay_options=options_from(settle_scans=settle_scans, duration_s=duration),
                cost_profile=profile,
                capacity=capacity,
                extrapolation=extrapolation,
                observed=observed,
                host=host,
                executor=executor,
                max_workers=workers,
                gates=gates,
                command=command,
                title=title,
                pdf=pdf,
                overwrite=force,
                progress=bar,
            )
        for w in result.warnings:
            warn(w)
        if as_json:
            emit_json({"command": "report", **to_jsonable(result)})
            return
        files = result.files
        note(f"wrote {files.html}")
        note(f"      {files.markdown}, {len(files.plots)} plots, {len(files.data)} data files")
        if files.pdf:
            note(f"      {files.pdf}")
        note(
            "recommendation: "
            + (result.recommended or "none (no scenario meets the conditions; see the review)")
        )


def _policy_sets(
    policies: Path | None,
    sets: list[str] | None,
    presets: list[str] | None,
    load_policies: Any,
    preset: Any,
) -> list[Any] | None:
    """The policy sets to compare (None: the what-if default presets)."""
    from planner.errors import PolicyError, UsageProblem

    chosen: list[Any] = []
    if policies is not None:
        loaded = load_policies(policies)
        if sets:
            names = {p.name: p for p in loaded}
            missing = [s for s in sets if s not in names]
            if missing:
                raise PolicyError(
                    f"{policies} has no set {missing[0]!r}",
                    hint=f"sets are: {', '.join(names)}",
                )
            loaded = [names[s] for s in sets]
        chosen += loaded
    elif sets:
        raise UsageProblem("--set needs --policies", hint="give the policy file with --policies")
    chosen += preset(presets or ())
    return chosen or None


def _command(
    trace: Path,
    *,
    policies: Path | None,
    sets: list[str] | None,
    presets: list[str] | None,
    grid: Path | None,
    lists: list[tuple[str, str | None]],
    extra: list[tuple[str, Any]],
    pdf: bool,
) -> str:
    """The canonical command line of this review (``--out`` left as DIR: it is not an input)."""
    parts = ["ksm-planner", "report", str(trace)]
    if policies is not None:
        parts += ["--policies", str(policies)]
    for s in sets or ():
        parts += ["--set", s]
    for p in presets or ():
        parts += ["--preset", p]
    if grid is not None:
        parts += ["--grid", str(grid)]
    for flag, value in [*lists, *extra]:
        if value is not None:
            parts += [flag, str(value)]
    if pdf:
        parts.append("--pdf")
    return " ".join(shlex.quote(p) for p in parts) + " --out DIR"
