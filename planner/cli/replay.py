"""``ksm-planner replay TRACE``: what ksmd would do on the traced host, over time."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from planner.cli._app import app
from planner.cli._knobs import (
    Advisor,
    AdvisorChoice,
    Engine,
    EngineChoice,
    Hz,
    MaxPageSharing,
    PagesToScan,
    SleepMs,
    SmartScan,
    UseZeroPages,
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
    from planner.engine.result import ReplayResult

MIB = 1 << 20


@app.command("replay")
def replay_cmd(
    trace: Annotated[Path, typer.Argument(help="Trace directory (from capture or ingest).")],
    host: Annotated[str | None, typer.Option("--host", help="Host of a multi-host trace.")] = None,
    pages_to_scan: PagesToScan = 100,
    sleep_ms: SleepMs = 20,
    hz: Hz = None,
    max_page_sharing: MaxPageSharing = 256,
    use_zero_pages: UseZeroPages = False,
    smart_scan: SmartScan = True,
    advisor: Advisor = AdvisorChoice.none,
    advisor_max_cpu: Annotated[
        int, typer.Option("--advisor-max-cpu", help="advisor_max_cpu, %.")
    ] = 70,
    advisor_min_pages: Annotated[
        int, typer.Option("--advisor-min-pages-to-scan", help="advisor_min_pages_to_scan.")
    ] = 500,
    advisor_max_pages: Annotated[
        int, typer.Option("--advisor-max-pages-to-scan", help="advisor_max_pages_to_scan.")
    ] = 30000,
    advisor_target_s: Annotated[
        int, typer.Option("--advisor-target-scan-time", help="advisor_target_scan_time, s.")
    ] = 200,
    prune_ms: Annotated[
        int, typer.Option("--chains-prune-ms", help="stable_node_chains_prune_millisecs.")
    ] = 2000,
    policy: Annotated[
        Path | None,
        typer.Option("--policy", help="Policy file (TOML) restricting which processes use KSM."),
    ] = None,
    policy_set: Annotated[
        str | None,
        typer.Option("--policy-set", help="Policy set of --policy to use (if it holds several)."),
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
            "--settle-scans", help="Full scans after the last snapshot (without --duration)."
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
    cost_profile: Annotated[
        Path | None,
        typer.Option("--cost-profile", help="ksmd cost profile (from 'ksm-planner calibrate')."),
    ] = None,
    engine: Engine = EngineChoice.vectorized,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Write the timelines as Parquet (+ result.json) to this directory."
        ),
    ] = None,
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
    from planner.cli._inputs import check_hosts
    from planner.engine import CostProfile, KsmKnobs, ReplayOptions
    from planner.engine.api import replay_trace

    check_hosts(trace, [host] if host is not None else [])

    knobs = KsmKnobs(
        pages_to_scan=pages_to_scan,
        sleep_ms=sleep_ms,
        hz=hz if hz is not None else _trace_hz(trace, host),
        max_page_sharing=max_page_sharing,
        use_zero_pages=use_zero_pages,
        smart_scan=smart_scan,
        advisor=advisor.value,
        advisor_max_cpu=advisor_max_cpu,
        advisor_min_pages_to_scan=advisor_min_pages,
        advisor_max_pages_to_scan=advisor_max_pages,
        advisor_target_scan_time_s=advisor_target_s,
        stable_node_chains_prune_ms=prune_ms,
    )
    options = ReplayOptions(
        duration_s=duration,
        settle_scans=settle_scans,
        grid_s=grid_s,
        cost=CostProfile.load(cost_profile) if cost_profile else CostProfile.default(),
    )
    with claim(out, kind="replay", inputs=(trace, policy, cost_profile), force=force):
        with progress() as bar:
            result = replay_trace(
                trace,
                host=host,
                knobs=knobs,
                options=options,
                policy_path=policy,
                policy_set=policy_set,
                engine=engine.value,
                progress=bar,
            )
        for w in result.provenance.get("policy_warnings", []):
            warn(w)
        if out is not None:
            result.write_parquet(out, overwrite=force)
    if as_json:
        emit_json(result.to_json())
    else:
        _render(result)
        if out is not None:
            note(f"timelines written to {out}")


def _trace_hz(trace: Path, host: str | None) -> int:
    """HZ recorded in the trace (250 when unknown), without loading the pages."""
    from planner.trace.io import open_trace

    tr = open_trace(trace)
    h = host or (tr.hosts[0] if tr.hosts else None)
    if h is None or h not in tr.hosts:
        return 250  # the replay itself names an unknown host
    snaps = tr.read_table(h, "snapshots", ["hz"]).column("hz").to_pylist()
    hz = next((v for v in snaps if v), None)
    return hz if hz in (100, 250, 300, 1000) else 250


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
    note(
        f"knobs: pages_to_scan {k['pages_to_scan']}, sleep {k['sleep_ms']} ms, HZ {k['hz']}, "
        "max_page_sharing "
        f"{k['max_page_sharing']}, use_zero_pages {int(k['use_zero_pages'])}, "
        f"smart_scan {int(k['smart_scan'])}, "
        f"advisor {k['advisor']}"
    )
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
