"""Live-host commands: ``calibrate`` (ksmd's cost here), ``launch`` (run with KSM), ``observe``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from planner.cli._app import app
from planner.cli._args import HostLoadOption
from planner.cli._output import (
    ForceFlag,
    JsonFlag,
    claim,
    emit_json,
    note,
    progress,
    stderr,
    warn,
)

#: Longest observation (``observe --duration``), s: 31 days, a month of a canary's life
#: (weekly cycles included); a longer one is better split into recordings.
MAX_OBSERVE_S = 31 * 86_400.0
#: Longest gap between observation samples, s: one hour (KSM's counters move in minutes).
MAX_SAMPLE_INTERVAL_S = 3_600.0

if TYPE_CHECKING:
    from planner.kernel.calibrate import Calibration
    from planner.kernel.observe import ObserveResult


def _parse_sizes(values: list[str] | None) -> list[int] | None:
    from planner.errors import UsageProblem

    if not values:
        return None
    out: list[int] = []
    for v in values:
        for part in v.replace(",", " ").split():
            try:
                out.append(int(part))
            except ValueError:
                raise UsageProblem(
                    f"--sizes takes page counts, got {part!r}", hint="e.g. --sizes 1000,10000"
                ) from None
    return out


@app.command("calibrate")
def calibrate_cmd(
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write the cost profile (JSON) here."),
    ] = None,
    sizes: Annotated[
        list[str] | None,
        typer.Option(
            "--sizes",
            help="Pages per scenario, comma-separated or repeated (at least two; default "
            "1000,10000,100000,300000, or 1000,4000,16000 with --quick).",
        ),
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Small sizes and short windows (under a minute).")
    ] = False,
    hz: Annotated[
        int | None,
        typer.Option("--hz", help="The kernel's CONFIG_HZ (default: read from its config).", min=1),
    ] = None,
    trace: Annotated[
        Path | None,
        typer.Option(
            "--trace",
            help="Calibrate on a traced workload instead (with --observed; no KSM lease).",
        ),
    ] = None,
    observed: Annotated[
        Path | None,
        typer.Option(
            "--observed",
            help="A recording of 'ksm-planner observe' of the real ksmd on the --trace workload.",
        ),
    ] = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Host of --trace (if it holds several).")
    ] = None,
    base_profile: Annotated[
        Path | None,
        typer.Option(
            "--cost-profile",
            help="Profile to scale with --trace (default: the one shipped for the trace's CPU).",
        ),
    ] = None,
    host_load: HostLoadOption = None,
    force: ForceFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Measure ksmd's CPU cost per page and code path on this host (real KSM, root).

    With --trace and --observed, measure it on a workload instead: the real ksmd's CPU per
    scanned page and batch period in the recording, against a replay of the trace under
    the load it recorded (or --host-load: the load during the recording); the profile is
    the base one scaled to match (docs/busy-host.md §4).

    Holder processes with chosen page contents are scanned by the real ksmd, one full scan
    per wake-up, and ksmd's CPU time is read from /proc/<ksmd>/schedstat. The profile
    (same fields as the default one, plus provenance) is what 'replay' and 'whatif' take
    with --cost-profile FILE. Takes the KSM lock, refuses when another process uses KSM,
    restores every knob and leaves no process behind.

    Example: sudo ksm-planner calibrate --out host-a.json
    """
    from planner.kernel.calibrate import calibrate

    if trace is not None or observed is not None:
        _calibrate_workload(trace, observed, host, base_profile, host_load, out, force, as_json)
        return
    if base_profile is not None or host_load is not None or host is not None:
        from planner.errors import UsageProblem

        raise UsageProblem(
            "--cost-profile, --host-load and --host calibrate on a workload",
            hint="give --trace and --observed too",
        )
    with (
        claim(out, kind="cost-profile", force=force, directory=False),
        progress() as bar,
    ):
        result = calibrate(
            sizes=_parse_sizes(sizes),
            quick=quick,
            out=out,
            overwrite=force,
            hz=hz,
            progress=bar,
        )
    if as_json:
        emit_json(result.to_dict())
    else:
        _render_calibration(result)


def _calibrate_workload(
    trace: Path | None,
    observed: Path | None,
    host: str | None,
    base_profile: Path | None,
    host_load: float | None,
    out: Path | None,
    force: bool,
    as_json: bool,
) -> None:
    from planner.engine.cost import CostProfile
    from planner.engine.timing import HostLoad
    from planner.errors import UsageProblem
    from planner.kernel.calibrate import calibrate_workload

    if trace is None or observed is None:
        raise UsageProblem(
            "calibrating on a workload needs both --trace and --observed",
            hint="record the real ksmd on the traced processes with 'ksm-planner observe'",
        )
    inputs = (trace, observed, base_profile)
    with claim(out, kind="cost-profile", inputs=inputs, force=force, directory=False):
        result = calibrate_workload(
            trace,
            observed,
            host=host,
            base=CostProfile.load(base_profile) if base_profile else None,
            host_load=None if host_load is None else HostLoad.given(host_load),
            out=out,
            overwrite=force,
        )
    if as_json:
        emit_json(result.to_dict())
        return
    r = result.real
    note(
        f"real ksmd over {r.wall_s:.1f} s of the recording: {r.cpu_s:.2f} CPU s, "
        f"{r.pages_scanned:,} pages scanned ({r.ns_per_page:,.0f} ns each), {r.full_scans} full "
        f"scans, {100 * result.real_share:.1f} % of a CPU while it worked"
    )
    note(
        f"model ({result.base}): {result.model_ns_per_page:,.0f} ns per scanned page under "
        f"{result.load.runnable_per_cpu:.2f} other runnable tasks per CPU ({result.load.source})"
    )
    note(
        f"profile {result.profile.name}: every CPU cost x{result.cost_scale:.2f}, "
        f"sched_contention {result.profile.sched_contention:.2f}"
    )
    if result.written:
        note(f"wrote {result.written} (use it with --cost-profile)")
    else:
        note("not saved: pass --out FILE to keep the profile")


def _render_calibration(result: Calibration) -> None:
    from rich import box
    from rich.table import Table

    prov = result.profile.provenance or {}
    note(
        f"ksmd cost profile of {prov.get('host')} ({prov.get('kernel')}, "
        f"{prov.get('cpu_model')}, HZ {prov.get('hz')}), measured in {prov.get('duration_s')} s"
    )
    shipped = result.shipped
    table = Table(
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        title=f"against '{shipped.name}', "
        + (
            f"the profile shipped for this CPU ({shipped.cpu})"
            if result.shipped_is_this_cpus
            else f"the default profile ({shipped.cpu}; none is shipped for this CPU)"
        )
        + ", which replays of its traces use without --cost-profile",
        title_justify="left",
    )
    table.add_column("cost")
    table.add_column("calibrated ns", justify="right")
    table.add_column("shipped ns", justify="right")
    table.add_column("ratio", justify="right")
    for row in result.comparison():
        ratio = row["ratio"]
        table.add_row(
            row["field"],
            f"{row['calibrated']:,}",
            f"{row['shipped']:,}",
            "-" if ratio is None else f"{ratio:.2f}",
        )
    stderr.print(table)
    anchor = result.fit.get("busy_anchor")
    if isinstance(anchor, dict):
        note(
            f"busy host: sched_contention {result.profile.sched_contention:g} (shipped), "
            f"busy_page_factor {anchor['busy_page_factor']:g}: the shipped "
            f"{anchor['reference_busy_page_factor']:g} anchored to this host's unstable-tree "
            f"insert ({anchor['insert_ns']:,.0f} ns against {anchor['reference_insert_ns']:,.0f} "
            f"at {anchor['inserts']:,} inserts; docs/busy-host.md §5). Both are measured on a "
            "workload by 'ksm-planner calibrate --trace T --observed CANARY'"
        )
    if result.written:
        note(f"wrote {result.written} (use it with --cost-profile)")
    else:
        note("not saved: pass --out FILE to keep the profile")


@app.command(
    "launch",
    context_settings={"allow_interspersed_args": False},
)
def launch_cmd(
    command: Annotated[
        list[str] | None,
        typer.Argument(help="The command and its arguments (put -- before it)."),
    ] = None,
    check: Annotated[
        int | None,
        typer.Option(
            "--check",
            metavar="PID",
            help="Instead of launching, show whether process PID has KSM on "
            "(ksm_merge_any = PR_GET_MEMORY_MERGE, ksm_mergeable, counters).",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Run a command with KSM enabled for it and every process it forks.

    The child calls prctl(PR_SET_MEMORY_MERGE, 1) before exec, as systemd's MemoryKSM=yes
    does: all its private memory becomes mergeable, and the setting is kept across exec
    (Linux 6.7+) and inherited by forks. Nothing under /sys/kernel/mm/ksm is written: ksmd
    merges only while KSM runs (run=1). The exit code is the command's (128+N if signal N
    killed it); exit 2 if it cannot be found, 3 if the kernel lacks the prctl (EINVAL,
    before 6.4) or it is refused (EPERM, e.g. by seccomp).

    Example: ksm-planner launch -- python -m myservice --workers 8
    """
    from planner.errors import UsageProblem

    if check is not None:
        if command:
            raise UsageProblem(
                "--check PID takes no command", hint="use either --check PID or a command"
            )
        from planner.kernel.launch import merge_state

        state = merge_state(check)
        if as_json:
            emit_json(state.to_dict())
        else:
            s = state.stat
            note(
                f"pid {state.pid} ({state.comm}): merge_any {'yes' if state.merge_any else 'no'}, "
                f"mergeable {'yes' if state.mergeable else 'no'}, "
                f"rmap_items {s.get('ksm_rmap_items', 0)}, "
                f"merging_pages {s.get('ksm_merging_pages', 0)}, "
                f"zero_pages {s.get('ksm_zero_pages', 0)}, "
                f"profit {s.get('ksm_process_profit', 0)} B"
            )
        return
    if as_json:
        raise UsageProblem(
            "--json only goes with --check (stdout belongs to the command)",
            hint="drop --json",
        )
    if not command:
        raise UsageProblem(
            "no command to launch", hint="give the command after --, e.g. launch -- python app.py"
        )
    from planner.kernel.launch import launch

    result = launch(command, notify=warn)
    raise typer.Exit(result.exit_code)


@app.command("observe")
def observe_cmd(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Recording directory to create (Parquet).")
    ],
    interval: Annotated[
        float,
        typer.Option(
            "--interval",
            help="Seconds between samples (0.01 to 3600).",
            min=0.01,
            max=MAX_SAMPLE_INTERVAL_S,
        ),
    ] = 1.0,
    duration: Annotated[
        float | None,
        typer.Option(
            "--duration",
            help="Seconds to sample (default: until Ctrl-C; at most 2678400, 31 days).",
            min=0.01,
            max=MAX_OBSERVE_S,
        ),
    ] = None,
    pid: Annotated[
        list[int] | None,
        typer.Option("--pid", help="A process whose ksm_stat is sampled (repeatable)."),
    ] = None,
    all_processes: Annotated[
        bool, typer.Option("--all", help="Sample every process that uses KSM.")
    ] = False,
    smaps: Annotated[
        bool,
        typer.Option("--smaps", help="Also read KSM: of each sampled process's smaps_rollup."),
    ] = False,
    ksm_pages: Annotated[
        bool,
        typer.Option(
            "--ksm-pages",
            help="Canary mode (root): also record which pages of the sampled processes are "
            "KSM pages at every sample, and merges lost with the content unchanged (writes).",
        ),
    ] = False,
    force: ForceFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Record KSM's counters and knobs (and processes' ksm_stat) over time, read-only.

    Samples /sys/kernel/mm/ksm, ksmd's CPU time, cow_ksm and, with --pid or --all,
    /proc/<pid>/ksm_stat every --interval seconds into Parquet files under --out, with
    provenance, so that a prediction can be compared with what a host really did. Ctrl-C
    (or SIGTERM) ends the sampling and still writes what was collected. Read it back with
    planner.trace.recording.read_observed(DIR). No root needed except for other users'
    processes; nothing is written to sysfs.

    Example: ksm-planner observe --out canary.obs --interval 5 --duration 3600 --all
    """
    from planner.kernel.observe import observe

    with claim(out, kind="observation", force=force), progress() as bar:
        result = observe(
            out,
            interval_s=interval,
            duration_s=duration,
            pids=pid or (),
            all_processes=all_processes,
            smaps=smaps,
            ksm_pages=ksm_pages,
            overwrite=force,
            progress=bar,
        )
    if as_json:
        emit_json(result.to_dict())
    else:
        _render_observation(result)


def _render_observation(result: ObserveResult) -> None:
    how = "interrupted" if result.interrupted else "done"
    note(
        f"{how}: {result.samples} samples over {result.duration_s:.1f} s, "
        f"{len(result.processes)} processes, written to {result.out}"
    )
    changes = []
    for name in ("full_scans", "pages_shared", "pages_sharing", "general_profit"):
        a, b = result.first.get(name), result.last.get(name)
        if a is not None and b is not None:
            changes.append(f"{name} {a} -> {b}")
    if changes:
        note(", ".join(changes))
    if result.canary is not None:
        note(
            "KSM pages of the sampled processes: "
            + ", ".join(f"{k} {v}" for k, v in result.canary.items())
        )
