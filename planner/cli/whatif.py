"""``ksm-planner whatif TRACE``: compare policy sets across a knob grid, with capacity gain."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from planner.cli._app import app
from planner.cli._args import WhatifArgs, takes
from planner.cli._output import (
    ForceFlag,
    JsonFlag,
    claim,
    emit_result,
    note,
    progress,
    stderr,
    wide_console,
)
from planner.jsonable import to_jsonable

if TYPE_CHECKING:
    from planner.whatif.result import ScenarioResult, WhatIfResult

_MIB = 1 << 20


@app.command("whatif")
@takes(WhatifArgs)
def whatif_cmd(
    args: WhatifArgs,
    observed_scenario: Annotated[
        str | None,
        typer.Option(
            "--observed-scenario", help="Scenario id to compare it with (default: same knobs)."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Also write whatif.json (with timelines) and scenarios.csv to DIR."
        ),
    ] = None,
    force: ForceFlag = False,
    as_csv: Annotated[
        bool, typer.Option("--csv", help="Print the comparison table as CSV on stdout.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Replay TRACE under every policy set x knob combination and compare them.

    Each combination is a scenario; scenarios run in parallel on the local cores (or on a
    Dask cluster with --scheduler). The table gives, per scenario, the steady-state saving
    net of KSM metadata (MiB and % of anonymous memory), the time to 90 % of it, ksmd's CPU
    (% of one core), pages scanned per full scan, the saving that came from merging across
    security domains, the realization ratio (replayed / ideal saving) and, with --host-mem,
    the capacity gain with its interval. * marks the Pareto front of saving against CPU.

    TRACE may also be a fleet: a directory of traces, or a trace with several hosts. Every
    host is then replayed under every scenario (all at once, locally or on --scheduler) and
    the tables give each scenario over the fleet (totals, quantiles across hosts, the fleet's
    capacity gain) and every host; --json prints {"fleet": ...}, --out writes fleet.json,
    fleet_scenarios.csv and fleet_hosts.csv.

    Example: ksm-planner whatif traces/django-preload --pages-to-scan 100,1000,4000
    --sleep-ms 20,200 --host-mem 64GiB --headroom 10% --worker-other 40MiB
    """
    from planner.errors import UsageProblem

    if as_json and as_csv:
        raise UsageProblem("--json and --csv both print on stdout", hint="choose one")
    from planner.whatif.fleet import is_fleet

    if is_fleet(args.trace, args.hosts):  # several hosts: per host and for the fleet
        from planner.cli.fleet import fleet_whatif

        fleet_whatif(args, out=out, force=force, as_csv=as_csv, as_json=as_json)
        return
    from planner.cli._inputs import check_hosts
    from planner.engine.cost import CostProfile
    from planner.engine.timing import HostLoad
    from planner.whatif.run import options_from, run_whatif

    check_hosts(args.trace, args.hosts or ())
    sets = args.policy_sets()
    kgrid = args.knob_grid()
    capacity = args.capacity()
    extrapolation = args.extrapolation(capacity)
    profile = CostProfile.load(args.cost_profile) if args.cost_profile is not None else None
    options = options_from(
        settle_scans=args.settle_scans,
        duration_s=args.duration_s,
        writes=args.writes,
        growth=args.growth,
        host_load=None if args.host_load is None else HostLoad.given(args.host_load),
    )

    def run(executor: Any) -> WhatIfResult:
        with progress() as bar:
            return run_whatif(
                args.trace,
                policy_sets=sets,
                grid=kgrid,
                replay_options=options,
                cost_profile=profile,
                capacity=capacity,
                extrapolation=extrapolation,
                observed=args.observed,
                observed_scenario=observed_scenario,
                hosts=args.hosts,
                executor=executor,
                max_workers=args.workers,
                progress=bar,
            )

    with claim(out, kind="whatif", inputs=args.inputs, force=force):
        if args.scheduler is not None:
            from planner.whatif.executors import dask_executor

            with dask_executor(args.scheduler, timeout_s=args.cluster_timeout) as ex:
                result = run(ex)
        else:
            result = run(None)
        if out is not None:
            _write(result, out, force=force)
    emit_result("whatif", result, _render, as_json=as_json, as_csv=as_csv)


def _write(result: WhatIfResult, out: Path, *, force: bool) -> None:
    import json

    from planner._fs import atomic_dir

    with atomic_dir(out, overwrite=force, private=False) as tmp:
        (tmp / "whatif.json").write_text(
            json.dumps(to_jsonable(result, include={"timelines"}), indent=1) + "\n"
        )
        (tmp / "scenarios.csv").write_text(result.to_csv())


def _fmt(v: float | None, spec: str, missing: str = "-") -> str:
    return missing if v is None else format(v, spec)


def _knob_text(v: Any) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    return str(v)


def _note(text: str) -> None:
    """A note (its text is never read as rich markup: brackets are shown as they are)."""
    note(text)


def _render(result: WhatIfResult) -> None:
    from rich import box
    from rich.table import Table

    scen = result.scenarios
    varied = [k for k, vals in result.grid.axes if len(vals) > 1] or [
        k for k, _ in result.grid.axes
    ]
    crosses = {s.cross_domain for s in scen}
    any_domains = any(len(h.domains) > 1 for s in scen for h in s.hosts)
    show_cross = len(crosses) > 1 or any_domains
    hosts = len(result.hosts)
    names = ", ".join(result.hosts)
    _note(
        f"what-if on {result.trace_path} ({hosts} host{'s' if hosts > 1 else ''}: {names}), "
        f"{len(scen)} scenarios, steady state after the last snapshot"
        + (", fleet-wide" if hosts > 1 else "")
    )
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    t.add_column("id", no_wrap=True)
    t.add_column("policy set", no_wrap=True)
    if show_cross:
        t.add_column("domains", no_wrap=True)
    for k in varied:
        t.add_column(k.replace("_", " "), justify="right", no_wrap=True)
    t.add_column("saved MiB", justify="right", no_wrap=True)
    t.add_column("% anon", justify="right", no_wrap=True)
    t.add_column("t90 s", justify="right", no_wrap=True)
    t.add_column("ksmd %cpu", justify="right", no_wrap=True)
    t.add_column("pages/scan", justify="right", no_wrap=True)
    if any_domains:
        t.add_column("x-domain MiB", justify="right", no_wrap=True)
    t.add_column("realized", justify="right", no_wrap=True)
    has_cap = any(s.capacity is not None for s in scen)
    has_proj = any(s.projected is not None for s in scen)
    if has_cap:
        t.add_column("workers", justify="right", no_wrap=True)
        t.add_column("capacity gain [interval]", justify="right", no_wrap=True)
    if has_proj:
        n = next(s.projected.replicas for s in scen if s.projected is not None)
        t.add_column(f"saved MiB at {n}/host [interval]", justify="right", no_wrap=True)
    t.add_column("", no_wrap=True)
    for s in scen:
        row = [s.id, s.policy_set]
        if show_cross:
            row.append(s.cross_domain)
        row += [_knob_text(s.knobs.get(k, getattr(s.knobs_full, k, None))) for k in varied]
        row += [
            f"{s.net_saved_bytes / _MIB:,.1f}",
            f"{s.net_saved_percent:.1f}",
            _fmt(s.time_to_90_s, ",.1f"),
            f"{s.ksmd_cpu_percent:.2f}",
            _fmt(s.pages_scanned_per_full_scan, ",.0f"),
        ]
        if any_domains:
            row.append(f"{s.cross_domain_saved_bytes / _MIB:,.1f}")
        row.append(_fmt(s.realization_ratio, ".3f"))
        if has_cap:
            row += _capacity_cells(s)
        if has_proj:
            proj = s.projected
            row.append(
                "-"
                if proj is None
                else f"{proj.net_saved_bytes.value / _MIB:,.0f} "
                f"[{proj.net_saved_bytes.low / _MIB:,.0f}, {proj.net_saved_bytes.high / _MIB:,.0f}]"
            )
        marks = ["*"] if s.pareto else []
        if s.same_replay_as:
            marks.append("=" + s.same_replay_as)
        row.append(" ".join(marks))
        t.add_row(*row)
    if stderr.is_terminal:
        stderr.print(t)
    else:  # a log or a pipe: do not squeeze the table into 80 columns
        wide_console(240).print(t)
    _note(
        "saved: steady-state saving net of KSM metadata; % anon: of the anonymous memory "
        "without KSM; t90: time to 90 % of it; realized: replayed / ideal saving of the pages; "
        "* = Pareto front (more saving, less ksmd CPU); =sNN: same replay as sNN."
    )
    for s in scen:
        for pair in s.domain_pairs:
            _note(
                f"{s.id}: domains {' + '.join(pair.domains)} share "
                f"{pair.ksm_pages:,} KSM pages "
                f"({s.cross_domain_saved_bytes / _MIB:,.1f} MiB saved by merging across them)"
            )
    _render_fits(result)
    if result.capacity_inputs is not None:
        _render_capacity(result)
    if result.observed is not None:
        o = result.observed
        err = o.final_relative_error
        seen = o.observed.pages_sharing
        pred = o.predicted.pages_sharing
        _note(
            f"observed vs {o.scenario_id} ({'same knobs' if o.knobs_match else 'knobs differ'}): "
            f"pages_sharing at the last sample observed "
            f"{_fmt(seen[-1] if seen else None, ',.0f')}, "
            f"predicted {_fmt(pred[-1] if pred else None, ',.0f')}"
            + (f" ({100 * err:+.1f} %)" if err is not None else "")
        )
    tasks = result.provenance["extra"].get("tasks")
    _note(f"{len(scen)} scenarios in {result.elapsed_s:.1f} s ({tasks} replay and fit tasks)")


def _render_capacity(result: WhatIfResult) -> None:
    c = result.capacity_inputs
    if c is None:
        return
    gib = 1 << 30
    first = next((s.capacity for s in result.scenarios if s.capacity is not None), None)
    text = f"capacity: host {c.host_mem_bytes / gib:,.1f} GiB, {c.budget_bytes / gib:,.2f} GiB"
    text += " after headroom"
    if first is not None:
        text += (
            f"; a worker = {first.per_worker_anon_bytes / _MIB:,.1f} MiB anonymous (trace) + "
            f"{first.worker_extra_bytes / _MIB:,.2f} MiB outside the trace; base processes "
            f"{first.base_bytes / _MIB:,.1f} MiB + {first.base_extra_bytes / _MIB:,.1f} MiB"
        )
        plan = first.plan
        if plan is not None:
            cpw = plan.cpu_per_worker
            text += f"; CPU: {plan.host_cpus.value:g} cores ({plan.host_cpus.source})" + (
                f", {cpw.value:g} per worker ({cpw.source}), minus ksmd's"
                if cpw is not None
                else ", CPU per worker unknown (no CPU bound)"
            )
            if plan.assumed:
                text += "; assumed: " + ", ".join(plan.assumed)
        me = result.model_error
        if me is not None:
            text += f"; the model's measured error applied: x{me.point:.3f} ({me.source})"
        text += f"; intervals: {100 * first.confidence:g} %, every source of uncertainty combined"
    _note(text)


def _capacity_cells(s: ScenarioResult) -> list[str]:
    c = s.capacity
    if c is None:
        return ["-", "-"]
    lim = " cpu" if c.limit_with == "cpu" else ""
    workers = f"{c.workers_without:,}->{c.workers_with:,}{lim}"
    if c.gain is None:
        return [workers, "-"]
    gi = c.gain_interval
    interval = f" [{100 * gi[0]:+.1f}, {100 * gi[1]:+.1f}]" if gi else ""
    return [workers, f"{100 * c.gain:+.1f} %{interval}"]


def _render_fits(result: WhatIfResult) -> None:
    for f in result.fits:
        if f.ideal_saved_frames_at_k == 0:
            continue  # nothing merges under this set: nothing to extrapolate
        h = f.holdout
        check = ""
        if h is not None and h.relative_error is not None:
            check = (
                f"; hold-out: fit on n<={h.fit_upto} predicts {h.predicted_saved_frames:,.0f} "
                f"frames at k={h.k}, exact {h.observed_saved_frames:,.0f} "
                f"({100 * h.relative_error:+.1f} %)"
            )
        g = f.point
        _note(
            f"extrapolation {f.policy_set} [{f.cross_domain}] on {f.host}: {f.k} replicas "
            f"({f.group}), per replica {g.frames_b:,.0f} frames, {g.distinct_b:,.0f} new distinct"
            + (
                f" + a pool of {g.distinct_c:,.0f} (p={g.distinct_p:.2f})"
                if g.distinct_c >= 0.5
                else ""
            )
            + (
                f"; kept apart by domains: {float(g.kept_by_domains(f.k)):,.0f} frames at k, "
                f"{float(g.kept_by_domains(10 * f.k)):,.0f} at 10k"
                if f.cross_domain == "deny"
                else ""
            )
            + check
        )
