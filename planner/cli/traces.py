"""``ksm-planner ingest``, ``export`` and ``info``: traces in and out, and what they hold."""

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
    note,
    progress,
    stderr,
    warn,
)

if TYPE_CHECKING:
    from planner.trace.summary import GroupPotential, SnapshotPotential, TraceSummary


def _pct(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


@app.command("ingest")
def ingest_cmd(
    src: Annotated[
        Path, typer.Argument(help="Interchange CSV/Parquet file, or a schema-v0 Parquet file.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Trace directory to write.")],
    host: Annotated[
        str | None,
        typer.Option(
            "--host", help="Host name for inputs without a host column (default: the file stem)."
        ),
    ] = None,
    zero_hash: Annotated[
        str | None,
        typer.Option(
            "--zero-hash",
            help="Hash of an all-zero page, for rows without is_zero "
            "(default 10653106456947493306, plain xxh3_64 of 4096 zero bytes).",
        ),
    ] = None,
    force: ForceFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Convert an interchange CSV/Parquet file (or a schema-v0 capture) into a trace.

    One row per present page per snapshot, with the header
    time_s,pid,ppid,comm,vma_start,vma_kind,page_addr,content_hash,frame (ppid, comm,
    vma_start, vma_kind and frame optional; is_zero and host columns optional). Rows must be
    in time order. Bad input is rejected with the file, row and column (exit code 4) and
    nothing is written.

    Example: ksm-planner ingest fleet.csv --out fleet.trace
    """
    from planner.errors import UsageProblem
    from planner.trace.ingest import ingest

    zh: int | None = None
    if zero_hash is not None:
        try:
            zh = int(zero_hash, 0)
        except ValueError:
            raise UsageProblem(
                f"--zero-hash {zero_hash!r} is not an integer",
                hint="give a decimal or 0x hex uint64",
            ) from None
    with claim(out, kind="trace", inputs=(src,), force=force), progress() as bar:
        result = ingest(src, out, host=host, zero_hash=zh, overwrite=force, progress=bar)
    for w in result.warnings:
        warn(w)
    if as_json:
        emit_json({"command": "ingest", **result.to_dict()})
        return
    d = result.to_dict()
    note(
        f"ingested {result.rows:,} rows of {result.source} ({result.source_format}) in "
        f"{result.elapsed_s:.2f} s ({result.rows_per_s:,.0f} rows/s)"
        + (f", {result.spilled_runs} sorted runs spilled" if result.spilled_runs else "")
    )
    for h in result.hosts:
        note(
            f"  host {h.host}: {h.snapshots} snapshot(s), {h.processes} process(es), "
            f"{h.pages:,} pages"
            + (f", {h.zero_pfn_pages:,} zero-PFN pages counted" if h.zero_pfn_pages else "")
        )
    note(f"wrote {result.out} ({d['provenance']['trace_hash']})")


@app.command("export")
def export_cmd(
    trace: Annotated[Path, typer.Argument(help="Trace directory.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output file: *.csv, *.csv.gz or *.parquet.")
    ],
    minimal: Annotated[
        bool,
        typer.Option(
            "--minimal",
            help="Only the interchange columns plus is_zero and host (no extension columns).",
        ),
    ] = False,
    force: ForceFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Write a trace in the interchange format (CSV or Parquet, by the file suffix).

    The output ingests back into the same pages, frames and hashes. Frame ids are written
    as they are (opaque). The file is owner-only and appears only when complete.

    Example: ksm-planner export fleet.trace --out fleet.parquet
    """
    from planner.trace.export import export_trace

    with (
        claim(out, kind="export", inputs=(trace,), force=force, directory=False),
        progress() as bar,
    ):
        result = export_trace(trace, out, overwrite=force, minimal=minimal, progress=bar)
    if as_json:
        emit_json({"command": "export", **result.to_dict()})
        return
    note(
        f"exported {result.rows:,} pages of {len(result.hosts)} host(s), {result.snapshots} "
        f"snapshot(s) to {result.out} ({result.format}, {len(result.columns)} columns) "
        f"in {result.elapsed_s:.2f} s"
    )
    if result.empty_snapshots:
        warn(
            f"{result.empty_snapshots} snapshot(s) without pages cannot be represented "
            "and were left out"
        )


def _table(title: str, columns: list[str]) -> Any:
    from rich import box
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1))
    for i, name in enumerate(columns):
        table.add_column(
            name, justify="left" if i == 0 else "right", no_wrap=i > 0, overflow="fold"
        )
    return table


def _group_table(title: str, groups: tuple[GroupPotential, ...], limit: int) -> Any:
    table = _table(title, ["group", "pages", "zero", "frames", "hashes", "naive", "ideal", "fork"])
    for g in groups[:limit]:
        table.add_row(
            g.group,
            f"{g.pages:,}",
            f"{g.zero_pages:,}",
            f"{g.frames:,}",
            f"{g.distinct_hashes:,}",
            f"{g.naive_saved_pages:,}",
            f"{g.ideal_saved_frames:,}",
            f"{g.fork_shared_pages:,}",
        )
    if len(groups) > limit:
        table.caption = f"{len(groups) - limit} more group(s) in --json"
    return table


def _render_info(summary: TraceSummary, limit: int) -> None:
    overview = _table(f"trace {summary.path}", ["", ""])
    overview.show_header = False
    overview.columns[1].justify = "left"
    overview.columns[1].no_wrap = False
    overview.columns[1].overflow = "fold"
    overview.add_row("trace hash", summary.trace_hash)
    overview.add_row("source", f"{summary.source} ({summary.created_by})")
    overview.add_row("hosts", ", ".join(h.host for h in summary.hosts))
    if summary.host_cpu is not None:
        overview.add_row("host CPU", summary.host_cpu)
    overview.add_row("snapshots", str(len(summary.snapshots)))
    overview.add_row("processes", f"{summary.processes:,}")
    overview.add_row("pages", f"{summary.pages:,}")
    overview.add_row(
        "bytes per page",
        f"{summary.bytes_per_page:.2f} (pages.parquet), "
        f"{summary.total_bytes_per_page:.2f} (whole trace)",
    )
    stderr.print(overview)

    multi = len(summary.hosts) > 1
    first = ["host", "time_s"] if multi else ["time_s"]
    sizes = _table("snapshots", [*first, "procs", "pages", "frames", "hashes", "zero", "zero fr."])
    pot = _table(
        "static dedup potential",
        [*first, "naive", "% pages", "ideal", "% frames", "fork", "within", "cross"],
    )
    for s in summary.snapshots:
        lead = [s.host, f"{s.time_s:g}"] if multi else [f"{s.time_s:g}"]
        sizes.add_row(
            *lead,
            f"{s.processes:,}",
            f"{s.pages:,}",
            f"{s.frames:,}",
            f"{s.distinct_hashes:,}",
            f"{s.zero_pages:,}",
            f"{s.zero_frames:,}",
        )
        pot.add_row(
            *lead,
            f"{s.naive_saved_pages:,}",
            _pct(s.naive_saved_pages, s.pages),
            f"{s.ideal_saved_frames:,}",
            _pct(s.ideal_saved_frames, s.frames),
            f"{s.fork_shared_pages:,}",
            f"{s.within_process_saved_pages:,}",
            f"{s.cross_process_saved_pages:,}",
        )
    pot.caption = (
        "naive = pages - distinct hashes; ideal = frames KSM could free (fork-shared "
        "frames are not savings, zero-content frames are); fork = pages on an already "
        "shared frame; within/cross = naive saving inside one process / across processes"
    )
    stderr.print(sizes)
    stderr.print(pot)
    last: dict[str, SnapshotPotential] = {}
    for s in summary.snapshots:
        last[s.host] = s
    for host, s in last.items():
        where = f"host {host}, last snapshot (time_s={s.time_s:g})"
        stderr.print(_group_table(f"by mapping kind: {where}", s.by_kind, limit))
        stderr.print(_group_table(f"by process group (comm): {where}", s.by_comm, limit))
        if s.by_label:
            stderr.print(_group_table(f"by label set: {where}", s.by_label, limit))


@app.command("info")
def info_cmd(
    trace: Annotated[Path, typer.Argument(help="Trace directory.")],
    limit: Annotated[
        int, typer.Option("--limit", min=1, help="Rows per breakdown table (all rows in --json).")
    ] = 15,
    as_json: JsonFlag = False,
) -> None:
    """Hosts, snapshots, processes, pages, bytes per page, and the static dedup potential.

    Per snapshot: naive saving (pages - distinct hashes), the frame-aware ideal saving
    (fork-shared frames are not savings; zero-content frames are), zero pages, within-
    versus cross-process duplicates, and breakdowns by mapping kind, comm and labels.

    Example: ksm-planner info fleet.trace --json
    """
    from planner.trace.summary import summarize_trace  # (its imports: collector paused)

    with progress() as bar:
        summary = summarize_trace(trace, progress=bar)
    if as_json:
        emit_json({"command": "info", **summary.to_dict()})
        return
    _render_info(summary, limit)
