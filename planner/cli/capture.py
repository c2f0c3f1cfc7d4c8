"""``ksm-planner capture``: snapshot live processes into a trace (read-only)."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from planner.capture.churn import MIN_SAMPLE_MS
from planner.capture.pace import DEFAULT_CPU_BUDGET
from planner.capture.session import MAX_CPUS, MAX_INTERVAL_S, MAX_THREADS
from planner.capture.snapshot import DEFAULT_THREADS

if TYPE_CHECKING:
    from planner.capture.session import CaptureResult
from planner.cli._app import app
from planner.cli._output import ForceFlag, JsonFlag, claim, emit_json, note, progress


class PriorityChoice(enum.StrEnum):
    """CPU priority of the capture process."""

    idle = "idle"
    low = "low"
    normal = "normal"


@app.command("capture")
def capture_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Trace directory to write.")],
    pid: Annotated[
        list[int] | None, typer.Option("--pid", "-p", help="A process to capture (repeatable).")
    ] = None,
    children: Annotated[
        bool,
        typer.Option(
            "--children", help="Also capture descendants (looked up again at every snapshot)."
        ),
    ] = False,
    cgroup: Annotated[
        str | None,
        typer.Option(
            "--cgroup", help="Capture every process in this cgroup (path as in /proc/PID/cgroup)."
        ),
    ] = None,
    comm: Annotated[
        str | None, typer.Option("--comm", help="Capture processes whose name matches this regex.")
    ] = None,
    snapshots: Annotated[int, typer.Option("--snapshots", "-n", help="Number of snapshots.")] = 1,
    interval: Annotated[
        float,
        typer.Option(
            "--interval",
            help="Seconds between snapshot starts (at most 86400: snapshots a day apart "
            "or more are separate captures).",
            min=0.0,
            max=MAX_INTERVAL_S,
        ),
    ] = 10.0,
    key_file: Annotated[
        Path | None,
        typer.Option(
            "--key-file",
            help="Secret hash key (created with mode 0600 if missing; "
            "default ~/.config/ksm-planner/capture.key). Only its id goes into the trace.",
        ),
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option("--label", help="KEY=VALUE stored with every process (repeatable)."),
    ] = None,
    keep_cmdline: Annotated[
        bool,
        typer.Option(
            "--keep-cmdline", help="Store command lines in clear (default: a keyed hash only)."
        ),
    ] = False,
    no_kpageflags: Annotated[
        bool,
        typer.Option(
            "--no-kpageflags",
            help="Do not read /proc/kpageflags and kpagecount (no KSM/THP/map-count flags).",
        ),
    ] = False,
    priority: Annotated[
        PriorityChoice,
        typer.Option(
            "--priority",
            help="CPU priority: low (nice +10 between snapshots, each snapshot one burst at the "
            "starting priority), idle (SCHED_IDLE throughout) or normal.",
        ),
    ] = PriorityChoice.low,
    cpu_budget: Annotated[
        float,
        typer.Option(
            "--cpu-budget",
            help="CPUs the capture may use on average (0.25 = a quarter of one CPU); when "
            "spent, the next snapshot starts late (its real start is recorded). 0 = no bound.",
            min=0.0,
            max=MAX_CPUS,
        ),
    ] = DEFAULT_CPU_BUDGET,
    threads: Annotated[
        int,
        typer.Option(
            "--threads", help="Threads reading and hashing pages at once.", min=1, max=MAX_THREADS
        ),
    ] = DEFAULT_THREADS,
    sample_ms: Annotated[
        float | None,
        typer.Option(
            "--sample-ms",
            help="Between snapshots (and for one more --interval after the last), look at "
            "the pages every MS milliseconds and record per page how often its content, frame "
            "or presence changed (the trace's churn counts).",
            min=MIN_SAMPLE_MS,
        ),
    ] = None,
    no_soft_dirty: Annotated[
        bool,
        typer.Option(
            "--no-soft-dirty",
            help="While sampling, do not clear and read soft-dirty bits (on kernels that have "
            "them they also show writes that leave a page unchanged, at the cost of one "
            "write fault per written page and sample in the traced processes).",
        ),
    ] = False,
    proc_root: Annotated[
        Path, typer.Option("--proc-root", help="procfs to read (e.g. /host/proc in a container).")
    ] = Path("/proc"),
    force: ForceFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Snapshot the anonymous pages of live processes into a trace (read-only).

    Reads /proc/PID/pagemap first and then only present pages from /proc/PID/mem, hashing
    each 4 KiB page with a keyed xxh3_64. Needs root (CAP_SYS_PTRACE and CAP_SYS_ADMIN).

    Example: ksm-planner capture --pid 1234 --children -n 5 --interval 10 --out web.trace
    """
    from planner.capture.keys import default_key_path
    from planner.capture.session import CaptureOptions, capture, parse_labels

    options = CaptureOptions(
        out=out,
        pids=tuple(pid or ()),
        children=children,
        cgroup=cgroup,
        comm=comm,
        snapshots=snapshots,
        interval_s=interval,
        overwrite=force,
        key_file=key_file,
        labels=parse_labels(label or ()),
        keep_cmdline=keep_cmdline,
        kpageflags=not no_kpageflags,
        priority=priority.value,
        cpu_budget=cpu_budget or None,
        threads=threads,
        sample_ms=sample_ms,
        soft_dirty=False if no_soft_dirty else None,
        proc_root=proc_root,
    )
    inputs = (key_file or default_key_path(),)
    with claim(out, kind="trace", inputs=inputs, force=force), progress() as bar:
        result = capture(options, progress=bar)
    if as_json:
        emit_json({"command": "capture", **result.to_dict()})
        return
    _render(result)


def _render(result: CaptureResult) -> None:
    """The capture's summary lines on stderr."""
    note(
        f"captured {result.snapshots} snapshot(s) of {result.processes} process(es) "
        f"on {result.host}: {result.pages:,} pages in {result.capture_s:.2f} s "
        f"({result.pages_per_s:,.0f} pages/s; longest snapshot "
        f"{max(result.snapshot_durations_s, default=0.0):.2f} s; "
        f"{result.cpu_s:.2f} CPU s in {result.wall_s:.1f} s)"
    )
    if result.sampling_passes:
        share = result.sampling_cpu_s / result.sampling_wall_s if result.sampling_wall_s else 0.0
        note(
            f"sampled {result.sampling_passes} times between snapshots: "
            f"{result.sampling_cpu_s:.2f} CPU s in {result.sampling_wall_s:.1f} s "
            f"({share:.1%} of one CPU)"
            + ("; writes tracked with soft-dirty" if result.soft_dirty else "")
        )
    if result.soft_dirty_note:
        note(result.soft_dirty_note)
    if result.throttled_s > 0:
        note(f"waited {result.throttled_s:.1f} s beyond the schedule to stay within --cpu-budget")
    if result.gone:
        note(f"exited during the capture: {', '.join(map(str, result.gone))}")
    note(
        f"wrote {result.out} ({result.trace_bytes:,} bytes, "
        f"{result.bytes_per_page:.1f} bytes/page), key id {result.hash_key_id}"
    )
