"""``whatif`` and ``report`` on a fleet: a directory of traces, or a trace with several hosts.

The commands call these when :func:`planner.whatif.fleet.is_fleet` says their input is a
fleet; everything else (options, checks, output rules) is theirs.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from planner.cli._output import (
    claim,
    emit_result,
    emit_review,
    note,
    progress,
    stderr,
    wide_console,
)
from planner.jsonable import to_jsonable

if TYPE_CHECKING:
    from collections.abc import Iterator

    from planner.cli._args import WhatifArgs
    from planner.whatif.fleet import FleetResult, FleetScenario

_MIB = 1 << 20


def _whatif_kwargs(args: WhatifArgs) -> dict[str, Any]:
    """The what-if arguments of the command line (checked before anything runs)."""
    from planner.engine.cost import CostProfile
    from planner.errors import UsageProblem
    from planner.whatif.run import options_from

    if args.observed is not None:
        raise UsageProblem(
            "--observed is a recording of one host; a fleet cannot be compared with it",
            hint="give --host NAME to review that host alone with --observed",
        )
    capacity = args.capacity()
    return {
        "policy_sets": args.policy_sets(),
        "grid": args.knob_grid(),
        "replay_options": options_from(settle_scans=args.settle_scans, duration_s=args.duration_s),
        "cost_profile": CostProfile.load(args.cost_profile) if args.cost_profile else None,
        "capacity": capacity,
        "extrapolation": args.extrapolation(capacity),
    }


def _executor(stack: ExitStack, args: WhatifArgs) -> Any:
    if args.scheduler is None:
        return None
    from planner.whatif.executors import dask_executor

    return stack.enter_context(dask_executor(args.scheduler, timeout_s=args.cluster_timeout))


def fleet_whatif(
    args: WhatifArgs, *, out: Path | None, force: bool, as_csv: bool, as_json: bool
) -> None:
    """``whatif`` on a fleet: the table per scenario and per host, ``--json``, ``--csv``,
    ``--out DIR`` (``fleet.json``, ``fleet_scenarios.csv``, ``fleet_hosts.csv``)."""
    from planner.whatif.fleet import fleet_members, run_fleet

    fleet_members(args.trace, args.hosts)  # bad input fails before anything else
    kwargs = _whatif_kwargs(args)
    with claim(out, kind="whatif", inputs=args.inputs, force=force), ExitStack() as stack:
        ex = _executor(stack, args)
        bar = stack.enter_context(progress())
        result = run_fleet(
            args.trace,
            hosts=args.hosts,
            executor=ex,
            max_workers=args.workers,
            progress=bar,
            **kwargs,
        )
        if out is not None:
            write_fleet(result, out, force=force)
    emit_result("fleet", result, render_fleet, as_json=as_json, as_csv=as_csv)


def write_fleet(result: FleetResult, out: Path, *, force: bool) -> None:
    """``fleet.json`` (every figure, bootstrap replicates included), the two CSV tables."""
    import json

    from planner._fs import atomic_dir

    with atomic_dir(out, overwrite=force, private=False) as tmp:
        doc = to_jsonable(result, include={"replicates"})
        (tmp / "fleet.json").write_text(json.dumps(doc, indent=1) + "\n")
        (tmp / "fleet_scenarios.csv").write_text(result.to_csv())
        (tmp / "fleet_hosts.csv").write_text(result.hosts_csv())


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.1f}"


def _gain(s: FleetScenario) -> str:
    c = s.capacity
    if c is None or c.gain is None:
        return "-"
    gi = c.gain_interval
    return f"{100 * c.gain:+.1f} %" + (f" [{100 * gi[0]:+.1f}, {100 * gi[1]:+.1f}]" if gi else "")


def _scenario_rows(result: FleetResult) -> Iterator[list[str]]:
    for s in result.scenarios:
        d = s.net_saved_fraction_across_hosts
        row = [
            s.id,
            s.label,
            f"{s.net_saved_bytes / _MIB:,.1f}",
            _pct(s.net_saved_fraction),
            f"{_pct(d.p10)} / {_pct(d.p50)} / {_pct(d.p90)}",
            f"{s.ksmd_cores:.3f}",
            f"{s.ksmd_cpu_percent_across_hosts.max:.2f}",
        ]
        if s.capacity is not None:
            c = s.capacity
            row += [f"{c.workers_without:,}->{c.workers_with:,}", _gain(s)]
            row.append(f"{s.extra_host_equivalents:.2f}" if s.extra_host_equivalents else "-")
        yield row


def render_fleet(result: FleetResult) -> None:
    """The fleet's tables on stderr: every scenario, then every host under the best one."""
    from rich import box
    from rich.table import Table

    from planner.whatif.fleet import total_hosts_line

    note(f"fleet what-if on {result.path}: {total_hosts_line(result)}, steady state")
    cap = any(s.capacity is not None for s in result.scenarios)
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for name in ("id", "scenario", "saved MiB", "% anon", "host % p10/p50/p90"):
        t.add_column(name, no_wrap=True, justify="left" if name in ("id", "scenario") else "right")
    t.add_column("ksmd cores", justify="right", no_wrap=True)
    t.add_column("busiest %cpu", justify="right", no_wrap=True)
    if cap:
        t.add_column("workers", justify="right", no_wrap=True)
        t.add_column("gain [interval]", justify="right", no_wrap=True)
        t.add_column("≈ hosts", justify="right", no_wrap=True)
    for row in _scenario_rows(result):
        t.add_row(*row)
    console = stderr if stderr.is_terminal else wide_console(240)
    console.print(t)
    best = result.best()
    if best is not None:
        h = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
        for name in ("host", "anon MiB", "saved MiB", "% anon", "ksmd %cpu"):
            h.add_column(name, no_wrap=True, justify="left" if name == "host" else "right")
        if cap:
            h.add_column("workers", justify="right", no_wrap=True)
            h.add_column("gain", justify="right", no_wrap=True)
        for x in best.hosts:
            cells = [
                x.label,
                f"{x.anon_bytes / _MIB:,.1f}",
                f"{x.net_saved_bytes / _MIB:,.1f}",
                _pct(x.net_saved_fraction),
                f"{x.ksmd_cpu_percent:.2f}",
            ]
            if cap:
                cells.append(f"{x.workers_without or 0:,}->{x.workers_with or 0:,}")
                g = x.capacity_gain
                cells.append("-" if g is None else f"{100 * g:+.1f} %")
            h.add_row(*cells)
        note(f"hosts under {best.id} ({best.label}), the largest fleet saving:")
        console.print(h)
    note(
        "saved: steady-state saving net of KSM metadata, summed over the hosts; host %: "
        "quantiles across hosts of each host's saving; busiest: the host whose ksmd uses most; "
        "≈ hosts: the extra workers in hosts of today's mean density."
    )
    note(
        f"{len(result.scenarios)} scenarios on {len(result.members)} hosts in "
        f"{result.elapsed_s:.1f} s ({result.provenance['extra'].get('tasks')} replay and fit tasks)"
    )


def fleet_report(
    args: WhatifArgs,
    *,
    out: Path,
    cpu_budget: float,
    title: str | None,
    pdf: bool,
    force: bool,
    as_json: bool,
) -> None:
    """``report`` on a fleet: the fleet review in ``out``, what was written on stderr (or
    ``--json``: as one document on stdout)."""
    from planner.report.fleet import make_fleet_report
    from planner.report.make import check_output
    from planner.whatif.fleet import fleet_members

    with claim(out, kind="review", inputs=args.inputs, force=force):
        check_output(out, overwrite=force, pdf=pdf)
        fleet_members(args.trace, args.hosts)
        kwargs = _whatif_kwargs(args)
        with ExitStack() as stack:
            ex = _executor(stack, args)
            bar = stack.enter_context(progress())
            result = make_fleet_report(
                args.trace,
                out=out,
                hosts=args.hosts,
                executor=ex,
                max_workers=args.workers,
                cpu_budget_percent=cpu_budget,
                command=f"{args.command} --out DIR",
                title=title,
                pdf=pdf,
                overwrite=force,
                progress=bar,
                **kwargs,
            )
    emit_review(
        result,
        as_json=as_json,
        recommended="largest fleet saving within the ksmd CPU budget",
        otherwise="none (no scenario frees memory within it; see the review)",
    )
