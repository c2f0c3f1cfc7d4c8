"""``ksm-planner whatif TRACE``: compare policy sets across a knob grid, with capacity gain."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from planner.cli._app import app
from planner.cli._output import (
    ForceFlag,
    JsonFlag,
    claim,
    emit_json,
    emit_text,
    note,
    progress,
    stderr,
    warn,
    wide_console,
)
from planner.engine.options import MAX_DURATION_S
from planner.jsonable import to_jsonable

if TYPE_CHECKING:
    from planner.whatif.result import ScenarioResult, WhatIfResult

_MIB = 1 << 20

_KNOB_OPTIONS = (
    ("pages_to_scan", "pages_to_scan"),
    ("sleep_ms", "sleep_ms"),
    ("smart_scan", "smart_scan"),
    ("advisor", "advisor"),
    ("max_page_sharing", "max_page_sharing"),
    ("use_zero_pages", "use_zero_pages"),
)


def _knob_option(flag: str, what: str) -> Any:
    return typer.Option(flag, help=f"Comma-separated values of {what} (one scenario per value).")


@app.command("whatif")
def whatif_cmd(
    trace: Annotated[
        Path, typer.Argument(help="Trace directory (one host or many: one task per host).")
    ],
    policies: Annotated[
        Path | None,
        typer.Option("--policies", help="TOML file of policy sets to compare (docs/policies.md)."),
    ] = None,
    set_names: Annotated[
        list[str] | None, typer.Option("--set", help="Only this set of --policies (repeatable).")
    ] = None,
    presets: Annotated[
        list[str] | None,
        typer.Option(
            "--preset",
            help="Built-in policy set to compare (repeatable; 'all' for every preset). "
            "Default without --policies: off, prctl-all, workers-prctl, madvise-heap.",
        ),
    ] = None,
    pages_to_scan: Annotated[str | None, _knob_option("--pages-to-scan", "pages_to_scan")] = None,
    sleep_ms: Annotated[str | None, _knob_option("--sleep-ms", "sleep_millisecs")] = None,
    smart_scan: Annotated[str | None, _knob_option("--smart-scan", "smart_scan (on,off)")] = None,
    advisor: Annotated[
        str | None, _knob_option("--advisor", "advisor_mode (none,scan-time)")
    ] = None,
    max_page_sharing: Annotated[
        str | None, _knob_option("--max-page-sharing", "max_page_sharing")
    ] = None,
    use_zero_pages: Annotated[
        str | None, _knob_option("--use-zero-pages", "use_zero_pages (on,off)")
    ] = None,
    knob: Annotated[
        list[str] | None,
        typer.Option(
            "--knob", help="Any other knob as NAME=V1,V2 (repeatable), e.g. advisor_max_cpu=40,70."
        ),
    ] = None,
    grid: Annotated[
        Path | None,
        typer.Option("--grid", help="TOML file of knob lists (knob options override it)."),
    ] = None,
    cross_domain: Annotated[
        str | None,
        typer.Option(
            "--cross-domain",
            help="Merging across security domains: allow, deny or allow,deny "
            "(default: each set's own).",
        ),
    ] = None,
    hosts: Annotated[
        list[str] | None, typer.Option("--host", help="Only this host (repeatable).")
    ] = None,
    settle_scans: Annotated[
        int | None,
        typer.Option(
            "--settle-scans", help="Full scans replayed after the last snapshot (24).", min=0
        ),
    ] = None,
    duration_s: Annotated[
        float | None,
        typer.Option(
            "--duration",
            help=f"Replay this many seconds instead (at most {MAX_DURATION_S:.0f}, 7 days).",
            min=0.001,
            max=MAX_DURATION_S,
        ),
    ] = None,
    cost_profile: Annotated[
        Path | None,
        typer.Option("--cost-profile", help="ksmd cost profile (from 'ksm-planner calibrate')."),
    ] = None,
    host_mem: Annotated[
        str | None,
        typer.Option("--host-mem", help="Memory of a host, e.g. 64GiB: computes capacity."),
    ] = None,
    headroom: Annotated[
        str,
        typer.Option(
            "--headroom", help="Memory kept free: a size (4GiB) or a share of --host-mem (10%)."
        ),
    ] = "0",
    worker_file: Annotated[
        str | None,
        typer.Option(
            "--worker-file",
            help="Per worker: file-backed pages only it maps, e.g. 1MiB "
            "(default: measured from the trace, else assumed; docs/capacity.md).",
        ),
    ] = None,
    worker_shmem: Annotated[
        str | None,
        typer.Option("--worker-shmem", help="Per worker: shared memory (default: as above)."),
    ] = None,
    worker_page_tables: Annotated[
        str | None,
        typer.Option("--worker-page-tables", help="Per worker: page tables (default: as above)."),
    ] = None,
    worker_other: Annotated[
        str | None,
        typer.Option(
            "--worker-other",
            help="Per worker: kernel objects and any other memory the trace does not hold, "
            "e.g. 30MiB (default: as above).",
        ),
    ] = None,
    base_other: Annotated[
        str | None,
        typer.Option(
            "--base-other",
            help="Once per host: file pages every worker maps and the base processes' "
            "overhead (default: as above).",
        ),
    ] = None,
    host_cpus: Annotated[
        float | None,
        typer.Option(
            "--host-cpus", help="Cores of a host (default: assumed, 4 GiB of --host-mem per CPU)."
        ),
    ] = None,
    cpu_per_worker: Annotated[
        float | None,
        typer.Option(
            "--cpu-per-worker",
            help="Cores a worker needs at its planned load (default: measured from the trace, "
            "else unknown: no CPU bound).",
        ),
    ] = None,
    replicas: Annotated[
        int | None,
        typer.Option("--replicas", help="Project the saving to N replicas per host.", min=1),
    ] = None,
    group: Annotated[
        str,
        typer.Option(
            "--group",
            help="The replicas: siblings, all, comm:REGEX, cmdline:REGEX, label:KEY=VALUE, "
            "rule:NAME, pid:1,2.",
        ),
    ] = "siblings",
    bootstrap: Annotated[
        int, typer.Option("--bootstrap", help="Bootstrap resamples of the fit.", min=10)
    ] = 200,
    confidence: Annotated[
        float, typer.Option("--confidence", help="Confidence level of the intervals.")
    ] = 0.9,
    observed: Annotated[
        Path | None,
        typer.Option("--observed", help="Recording of 'ksm-planner observe' to compare with."),
    ] = None,
    observed_scenario: Annotated[
        str | None,
        typer.Option(
            "--observed-scenario", help="Scenario id to compare it with (default: same knobs)."
        ),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option("--scheduler", help="Run on the Dask cluster at ADDRESS (extra 'dist')."),
    ] = None,
    cluster_timeout: Annotated[
        float,
        typer.Option("--cluster-timeout", help="Seconds to wait for the Dask scheduler.", min=0.1),
    ] = 10.0,
    workers: Annotated[
        int | None,
        typer.Option("--workers", help="Local worker processes (default: the cores).", min=1),
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

    Example: ksm-planner whatif traces/django-preload --pages-to-scan 100,1000,4000
    --sleep-ms 20,200 --host-mem 64GiB --headroom 10% --worker-other 40MiB
    """
    from planner.errors import UsageProblem

    if as_json and as_csv:
        raise UsageProblem("--json and --csv both print on stdout", hint="choose one")
    from planner.cli._inputs import check_hosts
    from planner.cli._inputs import presets as _presets
    from planner.engine.cost import CostProfile
    from planner.policy import load_policies, select_sets
    from planner.whatif.capacity import capacity_from_options
    from planner.whatif.extrapolate import ExtrapolationSpec
    from planner.whatif.grid import grid_from_options
    from planner.whatif.run import options_from, run_whatif

    # ---- policy sets ---------------------------------------------------------------------
    check_hosts(trace, hosts or ())
    sets = _presets(presets or (), allow_all=True)
    if policies is not None:
        sets += select_sets(load_policies(policies), set_names, source=str(policies))
    elif set_names:
        raise UsageProblem("--set selects sets of a --policies file", hint="give --policies FILE")
    # ---- knobs -----------------------------------------------------------------------------
    kgrid = grid_from_options(
        grid,
        {
            "pages_to_scan": pages_to_scan,
            "sleep_ms": sleep_ms,
            "smart_scan": smart_scan,
            "advisor": advisor,
            "max_page_sharing": max_page_sharing,
            "use_zero_pages": use_zero_pages,
        },
        knob or (),
        cross_domain,
    )
    # ---- capacity and extrapolation --------------------------------------------------------
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
    if capacity is None and (
        host_cpus is not None
        or cpu_per_worker is not None
        or headroom != "0"
        or any(v is not None for v in sizes.values())
    ):
        raise UsageProblem("capacity options need --host-mem", hint="give --host-mem, e.g. 64GiB")
    extrapolation = None
    if capacity is not None or replicas is not None or group != "siblings":
        extrapolation = ExtrapolationSpec(
            group=group, replicas=replicas, n_resamples=bootstrap, confidence=confidence
        )
    profile = CostProfile.load(cost_profile) if cost_profile is not None else None
    options = options_from(settle_scans=settle_scans, duration_s=duration_s)

    def run(executor: Any) -> WhatIfResult:
        with progress() as bar:
            return run_whatif(
                trace,
                policy_sets=sets or None,
                grid=kgrid,
                replay_options=options,
                cost_profile=profile,
                capacity=capacity,
                extrapolation=extrapolation,
                observed=observed,
                observed_scenario=observed_scenario,
                hosts=hosts,
                executor=executor,
                max_workers=workers,
                progress=bar,
            )

    inputs = (trace, policies, grid, cost_profile, observed)
    with claim(out, kind="whatif", inputs=inputs, force=force):
        if scheduler is not None:
            from planner.whatif.executors import dask_executor

            with dask_executor(scheduler, timeout_s=cluster_timeout) as ex:
                result = run(ex)
        else:
            result = run(None)
        if out is not None:
            _write(result, out, force=force)
    if as_json:
        emit_json({"whatif": to_jsonable(result)})
    elif as_csv:
        emit_text(result.to_csv())
    else:
        _render(result)
    for w in result.warnings:
        warn(w)


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
