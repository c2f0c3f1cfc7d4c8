"""``ksm-planner replay TRACE``: what ksmd would do on the traced host, over time."""

from __future__ import annotations

import contextlib
import gc
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from planner.cli._app import app
from planner.cli._args import (
    CanaryOption,
    CostProfileOption,
    GrowthFlag,
    HostLoadOption,
    PrctlAtChoice,
    PrctlAtOption,
    ReplayArgs,
    WritesFlag,
    takes,
)
from planner.cli._output import (
    ForceFlag,
    JsonFlag,
    claim,
    emit_json,
    note,
    progress,
    safe_text,
    stderr,
    styled,
    warn,
)
from planner.engine.options import MAX_DURATION_S, MAX_GRID_POINTS, MIN_GRID_S

if TYPE_CHECKING:
    from collections.abc import Iterator

    from planner.engine.result import ReplayResult

MIB = 1 << 20


@app.command("replay")
@takes(ReplayArgs)
def replay_cmd(
    args: ReplayArgs,
    policy: Annotated[
        Path | None,
        typer.Option("--policy", help="Policy file (TOML) restricting which processes use KSM."),
    ] = None,
    policy_set: Annotated[
        str | None,
        typer.Option("--policy-set", help="Policy set of --policy to use (if it holds several)."),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option("--preset", metavar="NAME", help="A built-in policy set instead of --policy."),
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option(
            "--duration",
            help="Seconds to replay; past the last snapshot it is held. "
            "Default: until 24 full scans after the last snapshot. "
            f"At most {MAX_DURATION_S:.0f} (7 days).",
            min=0.001,
            max=MAX_DURATION_S,
        ),
    ] = None,
    settle_scans: Annotated[
        int,
        typer.Option(
            "--settle-scans",
            help="Full scans after the last snapshot (without --duration).",
            min=0,
        ),
    ] = 24,
    grid_s: Annotated[
        float | None,
        typer.Option(
            "--grid",
            help=f"Time-grid step of the timeline, s (at least {MIN_GRID_S}, one jiffy at "
            f"HZ=1000; at most {MAX_GRID_POINTS:,} points per replay). "
            "Default: 1 s, or 1/600 of a longer trace.",
            min=MIN_GRID_S,
        ),
    ] = None,
    cost_profile: CostProfileOption = None,
    host_load: HostLoadOption = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Write the timelines as Parquet (+ result.json) to this directory."
        ),
    ] = None,
    writes: WritesFlag = True,
    growth: GrowthFlag = True,
    prctl_at: PrctlAtOption = PrctlAtChoice.exec,
    observed: CanaryOption = None,
    force: ForceFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Replay TRACE through a model of ksmd and report what KSM would save, how fast, at what cost.

    Counters are those of /sys/kernel/mm/ksm and /proc/<pid>/ksm_stat, after every full scan
    and on a time grid; the truth behind them counts physical frames (fork-shared frames are
    not savings) and bytes saved net of KSM's metadata; the cost comes from a per-path model
    of ksmd's CPU. Defaults are the kernel's; every process is KSM-enabled (prctl) unless
    --policy says otherwise.

    Example: ksm-planner replay traces/django-preload --pages-to-scan 1000 --json
    """
    from planner.cli._inputs import check_hosts, presets
    from planner.engine import CostProfile, ReplayOptions
    from planner.engine.timing import HostLoad
    from planner.replay import replay_trace

    check_hosts(args.trace, [args.host] if args.host is not None else [])
    args.knobs()  # an impossible knob is a usage error before the trace is read
    if preset is not None:
        presets([preset])  # a name that is no preset is a usage error
    options = ReplayOptions(
        duration_s=duration,
        settle_scans=settle_scans,
        grid_s=grid_s,
        cost=CostProfile.load(cost_profile) if cost_profile else None,  # None: the trace's CPU's
        writes=writes,
        growth=growth,
        host_load=None if host_load is None else HostLoad.given(host_load),
    )
    with _no_collector():  # until the output is written
        inputs = (args.trace, policy, cost_profile, observed)
        with claim(out, kind="replay", inputs=inputs, force=force):
            with progress() as bar:
                result = replay_trace(
                    args.trace,
                    host=args.host,
                    knobs=args.knob_values,  # hz: the trace's unless --hz
                    options=options,
                    policy_path=policy,
                    policy_set=policy_set,
                    preset=preset,
                    engine=args.engine.value,
                    progress=bar,
                    prctl_at=prctl_at.value,
                    observed=observed,
                )
            joins = result.provenance.get("joins")
            for w in (
                *result.provenance.get("policy_warnings", []),
                *result.provenance.get("cost_warnings", []),
                *([joins["warning"]] if isinstance(joins, dict) and joins.get("warning") else []),
            ):
                warn(w)
            if out is not None:
                result.write_parquet(out, overwrite=force)
        if as_json:
            emit_json(result.to_json())
        else:
            _render(result)
            if out is not None:
                note(f"timelines written to {out}")


@contextlib.contextmanager
def _no_collector() -> Iterator[None]:
    """The cyclic garbage collector paused while one replay runs (from the process's start
    when run by ``ksm-planner replay``: ``planner.cli.COLLECTOR_PAUSED``): its passes walk every
    object of the compiled code numba loads and free nothing (the replay's data are numpy
    arrays, freed by reference counting); they cost 0.2-0.4 s of the 4 M-page benchmark
    (docs/engine.md, "Speed and memory"). On the way out the objects allocated meanwhile
    join the oldest generation (``freeze`` then ``unfreeze``), so that the next young
    collection does not walk them all at once (another 0.27 s)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.unfreeze()
        if was:
            gc.enable()


#: Knobs always shown after a replay (the rest when they differ from the kernel's defaults).
_SHOWN_KNOBS = 6


def _knobs_text(knobs: dict[str, Any]) -> str:
    """``pages_to_scan 1000, sleep_ms 20 ms, ...``: the knob table's display order."""
    from planner.engine.knobs import DISPLAY_ORDER, spec

    parts = []
    for rank, name in enumerate(DISPLAY_ORDER):
        s = spec(name)
        if name in knobs and (rank < _SHOWN_KNOBS or name == "hz" or knobs[name] != s.default):
            unit = f" {s.unit}" if s.unit and s.unit != "%" else s.unit
            parts.append(f"{name} {s.show(knobs[name])}{unit}")
    return ", ".join(parts)


def _render(r: ReplayResult) -> None:
    from rich import box
    from rich.table import Table

    from planner.engine.result import GLOBAL_COUNTERS

    k = r.knobs
    p = r.provenance
    header = styled("replay", "bold")
    header.append(
        safe_text(
            f" of {p.get('trace_path')} (host {p.get('host')}, "
            f"trace {str(p.get('trace_hash'))[:19]}) "
            f"with the {r.engine} engine, policy: {p.get('policy_set')}"
        )
    )
    note(header)
    note("knobs: " + _knobs_text(k))
    if p.get("prctl_at"):
        note(f"registration: {p['prctl_at']}")
    w = p.get("writes") or {}
    if w:
        rate = r.cow_breaks_per_s
        tail = "" if rate is None else f"; {rate:,.1f} merges broken per second in the steady state"
        note(safe_text(f"writes between snapshots: {w.get('model')}{tail}"))
        floor = w.get("last_interval_floor") or {}
        if floor.get("floored_rows"):
            note(
                f"writes: {floor['floored_rows']:,} of the {floor['written_rows']:,} rows "
                "written in the last sampled interval changed or were written at every look of the "
                "sampler; their rates are floors (one write per sampling period), as the "
                "sampler could not see faster"
            )
    g = p.get("growth") or {}
    if g.get("summary"):
        note(safe_text(str(g["summary"])))
    t = r.final_truth
    c = r.final_counters
    pct = 100.0 * t.saved_frames / t.frames_without_ksm if t.frames_without_ksm else 0.0
    note(f"replayed {r.duration_s:.1f} s, {c['full_scans']} full scans")
    tab = Table(box=box.SIMPLE_HEAD, title="memory at the end", title_justify="left")
    tab.add_column("")
    tab.add_column("value", justify="right")
    rows = [
        ("frames without KSM", f"{t.frames_without_ksm * t.page_size / MIB:,.1f} MiB"),
        ("frames with KSM", f"{t.frames_with_ksm * t.page_size / MIB:,.1f} MiB"),
        ("saved (fork-shared frames excluded)", f"{t.saved_bytes / MIB:,.1f} MiB ({pct:.1f} %)"),
        ("KSM metadata (rmap_items, stable nodes)", f"{t.metadata_bytes / MIB:,.2f} MiB"),
        ("net saved", f"{t.net_saved_bytes / MIB:,.1f} MiB"),
    ]
    for a, b in rows:
        tab.add_row(a, b)
    stderr.print(tab)
    ctab = Table(
        box=box.SIMPLE_HEAD,
        title="KSM counters at the end (/sys/kernel/mm/ksm)",
        title_justify="left",
    )
    ctab.add_column("counter")
    ctab.add_column("value", justify="right")
    for n in GLOBAL_COUNTERS:
        ctab.add_row(n, f"{c[n]:,}")
    stderr.print(ctab)
    cost = r.cost
    ttf = cost.time_to_saving_s

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:,.1f} s"

    note(
        f"ksmd CPU {cost.cpu_percent:.2f} % of one core ({cost.cpu_s:.2f} s); mean full scan "
        f"{fmt(cost.mean_scan_time_s)}; time to 50/90/99 % of the final saving: {fmt(ttf['50'])} / "
        f"{fmt(ttf['90'])} / {fmt(ttf['99'])}"
    )
    choice = p.get("cost_profile")
    if isinstance(choice, dict):
        from planner.engine.cost import profile_choice_text

        note(profile_choice_text(choice))
    load = p.get("host_load")
    if isinstance(load, dict):
        note(
            f"host load: {load['runnable_per_cpu']:.2f} other runnable tasks per CPU "
            f"({load['source']}: {load['detail']}); ksmd's CPU share "
            f"{100 * load['ksmd_cpu_share']:.1f} %, per-page cost x{load['cost_factor']:.2f}"
        )
    fit = p.get("cost_fit")
    if isinstance(fit, dict):
        short = fit.get("short_batches")
        told = (
            " from its wait for a CPU (short batches)"
            if isinstance(short, dict) and short.get("sched_share") is not None
            else ""
        )
        note(
            f"ksmd fitted to the recording: share {100 * fit['real_share']:.1f} %{told} "
            f"(sched_contention {fit['sched_contention']:.2f}), costs x{fit['cost_scale']:.2f} "
            f"of {fit['base_profile']}"
            if fit.get("fitted")
            else f"ksmd not fitted to the recording: {fit.get('why')}"
        )
    procs = sorted(r.final_processes.items(), key=lambda kv: -kv[1]["ksm_process_profit"])
    if procs:
        pt = Table(
            box=box.SIMPLE_HEAD, title="processes (ksm_stat), by profit", title_justify="left"
        )
        for col in (
            "pid",
            "rmap_items",
            "merging_pages",
            "zero_pages",
            "profit MiB",
            "rmap/merging",
        ):
            pt.add_column(col, justify="right")
        for pid, s in procs[:12]:
            merging = s["ksm_merging_pages"]
            pt.add_row(
                pid,
                f"{s['ksm_rmap_items']:,}",
                f"{merging:,}",
                f"{s['ksm_zero_pages']:,}",
                f"{s['ksm_process_profit'] / MIB:,.2f}",
                f"{s['ksm_rmap_items'] / merging:.1f}" if merging else "-",
            )
        stderr.print(pt)
        if len(procs) > 12:
            note(f"... and {len(procs) - 12} more processes (see --json)")
