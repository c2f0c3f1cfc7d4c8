"""``ksm-planner validate TRACE --kernel``: the replay against the real ksmd, scan by scan."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from planner.cli._app import app
from planner.cli._args import ReplayArgs, takes
from planner.cli._output import JsonFlag, emit_json, note, progress, stderr, styled, warn

if TYPE_CHECKING:
    from planner.kernel.validate import KernelValidation


#: Columns of the side-by-side table: (counter, header).
_COLUMNS = (
    ("pages_shared", "shared"),
    ("pages_sharing", "sharing"),
    ("pages_unshared", "unshared"),
    ("pages_volatile", "volatile"),
    ("pages_scanned", "scanned"),
    ("pages_skipped", "skipped"),
    ("stable_node_chains", "chains"),
    ("stable_node_dups", "dups"),
    ("ksm_zero_pages", "zero"),
    ("general_profit", "profit kB"),
)


@app.command("validate")
@takes(ReplayArgs)
def validate_cmd(
    args: ReplayArgs,
    kernel: Annotated[
        bool,
        typer.Option(
            "--kernel",
            help="Run the trace on this host's real KSM (root; takes the KSM lock, restores "
            "every knob, leaves no process behind).",
        ),
    ] = False,
    scans: Annotated[
        int | None,
        typer.Option(
            "--scans",
            help="Full scans to run and compare (default: until 4 scans after the last snapshot).",
            min=1,
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Compare the replay with the real kernel, counter by counter, after every full scan.

    The trace is turned into real processes (private anonymous memory, forks, writes,
    unmaps and exits at the snapshot times); each snapshot is applied while ksmd is stopped
    between the full scans at which the replay applies it. Exit 0 when every counter and
    every process's ksm_stat agree, 1 when they differ, 3 when not root, KSM is missing or
    another process uses KSM.

    Example: sudo ksm-planner validate web.trace --kernel --pages-to-scan 1000 --sleep-ms 100
    """
    from planner.errors import UsageProblem, ValidationMismatch

    if not kernel:
        raise UsageProblem(
            "validate compares the replay with the real kernel and needs --kernel",
            hint="run 'ksm-planner validate TRACE --kernel' as root",
        )
    from planner.cli._inputs import check_hosts
    from planner.kernel.validate import validate_on_kernel
    from planner.provenance import kernel_hz

    check_hosts(args.trace, [args.host] if args.host is not None else [])
    knobs = args.knobs(kernel_hz())  # the replay runs at this kernel's HZ unless --hz
    with progress() as bar:
        result = validate_on_kernel(
            args.trace,
            knobs=knobs,
            host=args.host,
            scans=scans,
            engine=args.engine.value,
            progress=bar,
        )
    if as_json:
        emit_json(result.to_dict())
    else:
        _render(result)
    for n in result.notes:
        warn(n)
    if not result.agree:
        raise ValidationMismatch(
            result.summary(), hint="see the table (or --json) for every difference"
        )
    if not as_json:
        note(result.summary())


def _render(result: KernelValidation) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    note(f"KSM counters after each full scan, kernel and replay ({result.engine}); red: differ")
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)

    def used(name: str) -> bool:
        return any((side or {}).get(name) for s in result.scans for side in (s.kernel, s.replay))

    columns = [(n, h) for n, h in _COLUMNS if used(n)]
    table.add_column("scan", justify="right", no_wrap=True)
    table.add_column("", no_wrap=True)
    for _, header in columns:
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("procs", justify="right", no_wrap=True)
    for s in result.scans:
        for side, values in (("kern", s.kernel), ("repl", s.replay)):
            cells: list[str | Text] = [str(s.full_scans) if side == "kern" else "", side]
            for name, _ in columns:
                k = s.kernel.get(name) if s.kernel else None
                r = s.replay.get(name) if s.replay else None
                v = values.get(name) if values else None
                text = "-" if v is None else str(round(v / 1024) if name == "general_profit" else v)
                cells.append(text if k == r else styled(text, "bold red"))
            procs = "ok" if not s.processes else styled(f"{len(s.processes)}≠", "bold red")
            cells.append(procs if side == "repl" else "")
            table.add_row(*cells, end_section=side == "repl")
    stderr.print(table)
    zero = [h for n, h in _COLUMNS if (n, h) not in columns]
    if zero:
        note(f"zero in every scan on both sides: {', '.join(zero)}")
    for s in result.scans:
        for pid, vals in list(s.processes.items())[:3]:
            diffs = ", ".join(
                f"{f} {vals['kernel'].get(f)}≠{vals['replay'].get(f)}"
                for f in sorted(set(vals["kernel"]) | set(vals["replay"]))
                if vals["kernel"].get(f) != vals["replay"].get(f)
            )
            note(f"scan {s.full_scans} pid {pid}: {diffs or 'present on one side only'}")
