"""``ksm-planner report``: the capacity-planning review of a trace (HTML, Markdown, data, PDF)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from planner.cli._app import app
from planner.cli._args import MaxKsmdCpu, MaxTimeTo90, NearBest, WhatifArgs, takes
from planner.cli._output import ForceFlag, JsonFlag, claim, emit_review, progress


@app.command("report")
@takes(WhatifArgs)
def report_cmd(
    args: WhatifArgs,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Directory to write the review into (created).")
    ],
    max_ksmd_cpu: MaxKsmdCpu = "2%",
    max_time_to_90: MaxTimeTo90 = "10min",
    near_best: NearBest = "2%",
    title: Annotated[str | None, typer.Option("--title", help="Title of the review.")] = None,
    pdf: Annotated[
        bool, typer.Option("--pdf", help="Also write review.pdf (extra 'pdf').")
    ] = False,
    force: ForceFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Write the capacity-planning review of TRACE: should KSM be enabled, how, what it buys.

    Compares policy sets across ksmd knob settings (the options of 'whatif', with the same
    defaults), then writes OUT/ with review.html (one self-contained page: plots inlined,
    nothing loaded from the network), review.md (its Markdown twin), plots/*.svg, data/*.csv
    and data/review.json (every number behind every table and plot) and, with --pdf,
    review.pdf. The output is deterministic: the same inputs give the same bytes. Nothing is
    written if anything fails. A fleet (a directory of traces, or a trace with several
    hosts) gets the fleet review: every host under every scenario, the fleet's totals, the
    spread across hosts and the capacity gain; --host picks hosts of it (one --host: that
    host's own review).

    Example: ksm-planner report traces/django-preload --pages-to-scan 100,1000,4000
    --host-mem 16GiB --out review
    """
    from contextlib import ExitStack

    from planner.whatif.fleet import is_fleet

    if is_fleet(args.trace, args.hosts):  # several hosts: the fleet review
        from planner.cli.fleet import fleet_report
        from planner.report.inputs import parse_share

        # the fleet review applies the ksmd gate per host, as a share of one core (a fleet
        # review plans no host CPUs; a host's own review divides by its planned CPUs)
        budget = 100 * parse_share(max_ksmd_cpu, option="--max-ksmd-cpu")
        fleet_report(args, out=out, cpu_budget=budget, title=title, pdf=pdf, force=force,
                     as_json=as_json)  # fmt: skip
        return
    from planner.cli._inputs import check_hosts
    from planner.engine.cost import CostProfile
    from planner.engine.timing import HostLoad
    from planner.errors import UsageProblem
    from planner.report.inputs import ReviewGates, parse_duration, parse_share
    from planner.report.make import check_output, make_report
    from planner.whatif.run import options_from

    hosts = args.hosts or []
    if len(hosts) > 1:
        raise UsageProblem(
            "a review covers one host of a trace", hint="give --host once (or use whatif)"
        )
    with claim(out, kind="review", inputs=args.inputs, force=force):
        check_output(out, overwrite=force, pdf=pdf)
        check_hosts(args.trace, hosts)
        policy_sets = args.policy_sets()
        knob_grid = args.knob_grid()
        capacity = args.capacity()
        extrapolation = args.extrapolation(capacity)
        gates = ReviewGates(
            max_ksmd_host_share=parse_share(max_ksmd_cpu, option="--max-ksmd-cpu"),
            max_time_to_90_s=parse_duration(max_time_to_90, option="--max-time-to-90"),
            near_best=parse_share(near_best, option="--near-best"),
        )
        profile = CostProfile.load(args.cost_profile) if args.cost_profile else None
        with ExitStack() as stack:
            executor = None
            if args.scheduler is not None:
                from planner.whatif import dask_executor

                executor = stack.enter_context(
                    dask_executor(args.scheduler, timeout_s=args.cluster_timeout)
                )
            bar = stack.enter_context(progress())
            result = make_report(
                args.trace,
                out=out,
                policy_sets=policy_sets,
                grid=knob_grid,
                replay_options=options_from(
                    settle_scans=args.settle_scans,
                    duration_s=args.duration_s,
                    writes=args.writes,
                    growth=args.growth,
                    host_load=None if args.host_load is None else HostLoad.given(args.host_load),
                ),
                cost_profile=profile,
                capacity=capacity,
                extrapolation=extrapolation,
                observed=args.observed,
                host=hosts[0] if hosts else None,
                executor=executor,
                max_workers=args.workers,
                gates=gates,
                command=f"{args.command} --out DIR",
                policy_file=args.policies,
                title=title,
                pdf=pdf,
                overwrite=force,
                progress=bar,
            )
        emit_review(
            result,
            as_json=as_json,
            recommended="recommendation",
            otherwise="none (no scenario meets the conditions; see the review)",
        )
