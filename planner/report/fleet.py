"""The fleet review: what KSM buys over many hosts, per host and for the whole fleet.

:func:`make_fleet_report` is what ``ksm-planner report`` calls when its input is a fleet (a
directory of traces, or a trace with several hosts): it runs
:func:`planner.whatif.fleet.run_fleet` and writes the document :func:`build_fleet_review`
makes of the :class:`~planner.whatif.fleet.FleetResult`, with the renderer of every review
(:mod:`planner.report.render`: ``review.html``, ``review.md``, ``plots/``, ``data/*.csv`` and
``data/review.json``, optionally ``review.pdf``).

The review renders; it computes nothing. Every number is a field or property of the fleet
result (totals, quantiles across hosts, fleet capacity, the best scenario within the ksmd
CPU budget: :meth:`~planner.whatif.fleet.FleetResult.best`).

Sections: the fleet at a glance (key figures of the best scenario), every scenario over the
fleet (totals and the spread across hosts), the hosts under the best scenario (table and
plot), the spread of every scenario across hosts (plot; per scenario and host in
``data/fleet_host_results.csv``), and the members and method.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from planner._progress import NULL_PROGRESS, Progress
from planner.errors import UsageProblem
from planner.jsonable import to_jsonable
from planner.provenance import tool_version
from planner.report.charts import bars
from planner.report.doc import (
    Bullets,
    Callout,
    Code,
    Column,
    Document,
    Figure,
    KeyFigure,
    KeyFigures,
    Para,
    Section,
    table,
)
from planner.report.fmt import interval, mib, pct, percent

if TYPE_CHECKING:
    from collections.abc import Sequence
    from concurrent.futures import Executor

    from planner.report.make import ReportResult
    from planner.whatif.fleet import FleetResult, FleetScenario

#: Hosts drawn one bar each in the plot of the best scenario (more: only in the table/data).
MAX_HOST_BARS = 60


def _where(result: FleetResult, trace_path: str) -> str:
    """A member's trace, relative to the fleet's path (``.``: the fleet is that trace)."""
    rel = os.path.relpath(trace_path, result.path)
    return "." if rel == "." else rel


def _gain_text(s: FleetScenario) -> str:
    c = s.capacity
    if c is None or c.gain is None:
        return "n/a"
    gi = c.gain_interval
    return f"{100 * c.gain:+.1f} %" + (
        f" [{100 * gi[0]:+.1f}, {100 * gi[1]:+.1f}]" if gi is not None else ""
    )


def _summary(result: FleetResult, best: FleetScenario | None, budget: float) -> Section:
    n = len(result.members)
    if best is None:
        blocks: tuple[Any, ...] = (
            Callout(
                "decision",
                f"No scenario frees memory over the fleet with ksmd within {budget:g} % of "
                f"one core on every host. See [the scenarios](#fleet-scenarios).",
                title="No scenario fits",
            ),
        )
        return Section("fleet-summary", "The fleet at a glance", blocks)
    d = best.net_saved_fraction_across_hosts
    items = [
        KeyFigure(
            "net saving, fleet",
            mib(best.net_saved_bytes),
            f"{pct(best.net_saved_fraction)} of {mib(best.anon_bytes)} anonymous",
        ),
        KeyFigure(
            "net saving per host",
            f"{pct(d.p50)} median",
            f"p10–p90 {interval(d.p10, d.p90, pct)}; min {pct(d.min)}",
        ),
        KeyFigure(
            "ksmd",
            f"{best.ksmd_cores:.3f} cores",
            f"busiest host {percent(best.ksmd_cpu_percent_across_hosts.max, 2)} of a core",
        ),
    ]
    if best.capacity is not None:
        items.append(
            KeyFigure(
                "capacity gain, fleet",
                _gain_text(best),
                f"{best.extra_workers:+,} workers ≈ {best.extra_host_equivalents or 0:.2f} hosts",
            )
        )
    text = (
        f"Over **{n} hosts**, the scenario freeing the most memory with ksmd within "
        f"{budget:g} % of one core on every host is **{best.label}** (`{best.id}`)."
    )
    if best.hosts_freed_equivalent is not None:
        text += (
            f" Today's workers would fit on {n - best.hosts_freed_equivalent:.2f} hosts of the "
            f"fleet's mean density with KSM ({best.hosts_freed_equivalent:.2f} hosts freed)."
        )
    return Section(
        "fleet-summary",
        "The fleet at a glance",
        (KeyFigures(tuple(items)), Para(text)),
        lead="What KSM frees over the whole fleet, and how evenly across hosts.",
    )


def _scenario_columns(result: FleetResult) -> list[Column]:
    knobs = sorted({k for s in result.scenarios for k in s.knobs})
    cols = [
        Column("scenario", "id", "text"),
        Column("policy_set", "policy set", "text"),
        Column("cross_domain", "domains", "text"),
        *[Column(f"knob_{k}", k.replace("_", " "), "text") for k in knobs],
        Column("net_saved_bytes", "net saving", "mib", "MiB"),
        Column("net_saved_fraction", "of anon", "pct", "%"),
        Column("host_p10", "host p10", "pct", "%"),
        Column("host_p50", "host p50", "pct", "%"),
        Column("host_p90", "host p90", "pct", "%"),
        Column("ksmd_cores", "ksmd", "float3", "cores"),
        Column("host_cpu_max", "busiest ksmd", "float2", "% core"),
    ]
    if any(s.capacity is not None for s in result.scenarios):
        cols += [
            Column("workers_without", "workers without", "int"),
            Column("workers_with", "with KSM", "int"),
            Column("gain", "gain", "pct", "%"),
            Column("gain_low", "gain low", "pct", "%", hidden=True),
            Column("gain_high", "gain high", "pct", "%", hidden=True),
            Column("extra_hosts", "≈ hosts", "float2"),
        ]
    return cols


def _scenario_row(s: FleetScenario) -> dict[str, Any]:
    d, c = s.net_saved_fraction_across_hosts, s.capacity
    gi = c.gain_interval if c is not None else None
    return {
        "scenario": s.id,
        "policy_set": s.policy_set,
        "cross_domain": s.cross_domain,
        **{f"knob_{k}": str(v) for k, v in s.knobs.items()},
        "net_saved_bytes": s.net_saved_bytes,
        "net_saved_fraction": s.net_saved_fraction,
        "host_p10": d.p10,
        "host_p50": d.p50,
        "host_p90": d.p90,
        "ksmd_cores": s.ksmd_cores,
        "host_cpu_max": s.ksmd_cpu_percent_across_hosts.max,
        "workers_without": c.workers_without if c else None,
        "workers_with": c.workers_with if c else None,
        "gain": c.gain if c else None,
        "gain_low": gi[0] if gi else None,
        "gain_high": gi[1] if gi else None,
        "extra_hosts": s.extra_host_equivalents,
    }


def _scenarios(result: FleetResult, best: FleetScenario | None) -> Section:
    cols = _scenario_columns(result)
    rows = []
    for s in result.scenarios:
        row = _scenario_row(s)
        rows.append({c.key: row.get(c.key) for c in cols})
    highlight = [i for i, s in enumerate(result.scenarios) if best is not None and s is best]
    t = table(
        "fleet_scenarios",
        "Every scenario over the fleet: totals and the spread of the net saving across hosts.",
        cols,
        rows,
        note="net saving: summed over the hosts, net of KSM's metadata; host p10/p50/p90: "
        "quantiles across hosts of each host's net saving as a share of its anonymous memory; "
        "ksmd: cores summed over the hosts; busiest ksmd: the host with the most; gain: the "
        "fleet's workers with KSM over without, bootstrap interval in data/; ≈ hosts: the "
        "extra workers in hosts of today's mean density.",
        highlight=highlight,
    )
    spread = Figure(
        "fleet_spread",
        "Net saving across hosts, per scenario",
        bars(
            "fleet_spread",
            "Net saving per host: median, p10–p90 (% of anonymous memory)",
            [f"{s.id} {s.policy_set}" for s in result.scenarios],
            [100 * s.net_saved_fraction_across_hosts.p50 for s in result.scenarios],
            errors=[
                (
                    100 * s.net_saved_fraction_across_hosts.p10,
                    100 * s.net_saved_fraction_across_hosts.p90,
                )
                for s in result.scenarios
            ],
            xlabel="net saving, % of the host's anonymous memory",
            value_fmt="{:.1f}",
        ),
        "The bar is the median host, the whisker spans p10 to p90 across hosts.",
        data=(_host_results(result),),
        alt="Horizontal bars, one per scenario: the median host's net saving with its p10–p90.",
    )
    return Section(
        "fleet-scenarios",
        "Every scenario over the fleet",
        (t, spread),
        lead="Which policy and knobs free the most over the fleet, and how evenly.",
    )


def _host_results(result: FleetResult) -> Any:
    cols = [
        Column("scenario", "scenario", "text"),
        Column("host", "host", "text"),
        Column("anon_bytes", "anonymous", "mib", "MiB"),
        Column("net_saved_bytes", "net saving", "mib", "MiB"),
        Column("net_saved_fraction", "of anon", "pct", "%"),
        Column("ksmd_cpu_percent", "ksmd", "float2", "% core"),
        Column("workers_without", "workers without", "int"),
        Column("workers_with", "with KSM", "int"),
        Column("capacity_gain", "gain", "pct", "%"),
    ]
    rows = [
        {
            "scenario": s.id,
            "host": h.label,
            "anon_bytes": h.anon_bytes,
            "net_saved_bytes": h.net_saved_bytes,
            "net_saved_fraction": h.net_saved_fraction,
            "ksmd_cpu_percent": h.ksmd_cpu_percent,
            "workers_without": h.workers_without,
            "workers_with": h.workers_with,
            "capacity_gain": h.capacity_gain,
        }
        for s in result.scenarios
        for h in s.hosts
    ]
    return table("fleet_host_results", "Every scenario on every host.", cols, rows)


def _hosts(result: FleetResult, s: FleetScenario) -> Section:
    cap = s.capacity is not None
    cols = [
        Column("host", "host", "text"),
        Column("trace", "trace", "text"),
        Column("registered", "registered processes", "int"),
        Column("anon_bytes", "anonymous", "mib", "MiB"),
        Column("net_saved_bytes", "net saving", "mib", "MiB"),
        Column("net_saved_fraction", "of anon", "pct", "%"),
        Column("ksmd_cpu_percent", "ksmd", "float2", "% core"),
        Column("time_to_90_s", "time to 90 %", "s"),
    ]
    if cap:
        cols += [
            Column("workers_without", "workers without", "int"),
            Column("workers_with", "with KSM", "int"),
            Column("gain", "gain", "pct", "%"),
            Column("gain_low", "gain low", "pct", "%", hidden=True),
            Column("gain_high", "gain high", "pct", "%", hidden=True),
            Column("limit", "limit", "text"),
        ]
    rows = []
    for h in s.hosts:
        gi = h.capacity_gain_interval
        row = {
            "host": h.label,
            "trace": _where(result, h.trace_path),
            "registered": h.registered_processes,
            "anon_bytes": h.anon_bytes,
            "net_saved_bytes": h.net_saved_bytes,
            "net_saved_fraction": h.net_saved_fraction,
            "ksmd_cpu_percent": h.ksmd_cpu_percent,
            "time_to_90_s": h.time_to_90_s,
            "workers_without": h.workers_without,
            "workers_with": h.workers_with,
            "gain": h.capacity_gain,
            "gain_low": gi[0] if gi else None,
            "gain_high": gi[1] if gi else None,
            "limit": h.capacity_limit,
        }
        rows.append({c.key: row[c.key] for c in cols})
    blocks: list[Any] = [
        table(
            "fleet_hosts",
            f"Every host under {s.label} ({s.id}).",
            cols,
            rows,
            note="net saving net of KSM's metadata, at steady state after the last snapshot; "
            "ksmd: % of one core at steady state; time to 90 %: of the host's saving, from "
            "its first snapshot.",
        )
    ]
    if len(s.hosts) <= MAX_HOST_BARS:
        blocks.append(
            Figure(
                "fleet_hosts_saving",
                f"Net saving per host under {s.id}",
                bars(
                    "fleet_hosts_saving",
                    f"Net saving per host under {s.id} (% of its anonymous memory)",
                    [h.label for h in s.hosts],
                    [100 * h.net_saved_fraction for h in s.hosts],
                    xlabel="net saving, % of the host's anonymous memory",
                    threshold=100 * s.net_saved_fraction,
                    threshold_label="fleet",
                    value_fmt="{:.1f}",
                ),
                "One bar per host; the dashed line is the fleet as a whole.",
                alt="Horizontal bars, one per host, of the net saving as a share of its memory.",
            )
        )
    return Section(
        "fleet-hosts",
        f"The hosts under {s.id}",
        tuple(blocks),
        lead="Which hosts gain and which do not, under the scenario of the summary.",
    )


def _method(result: FleetResult, command: str) -> Section:
    members = [
        {
            "host": m.label,
            "trace": _where(result, m.trace_path),
            "trace_host": m.host,
            "trace_hash": next(
                (str(r.trace_hash) for r in result.runs if str(r.trace_path) == m.trace_path), ""
            ),
        }
        for m in result.members
    ]
    return Section(
        "fleet-method",
        "Members and method",
        (
            table(
                "fleet_members",
                "The hosts of the fleet and the traces they come from.",
                [
                    Column("host", "host", "text"),
                    Column("trace", "trace", "text"),
                    Column("trace_host", "host in the trace", "text"),
                    Column("trace_hash", "trace hash", "text"),
                ],
                members,
            ),
            Bullets(
                (
                    "Every host is replayed under every scenario on its own (the same policy "
                    "sets and knob grid on every host); each host's figures are those of a "
                    "what-if of that host alone.",
                    "Fleet totals add the hosts up: memory, ksmd cores, and workers without and "
                    "with KSM (bootstrap replicate by replicate for the interval of the gain).",
                    "Quantiles across hosts interpolate linearly between hosts (with 8 hosts, "
                    "p10 lies between the lowest and the second lowest).",
                    "≈ hosts: the extra workers divided by today's mean workers per host; hosts "
                    "freed: the hosts today's workers no longer need at the mean density with "
                    "KSM (hosts × gain / (1 + gain)).",
                )
            ),
            Para("Rebuild this review with:"),
            Code(command),
        ),
        lead="Where every host comes from and how the fleet figures add up.",
    )


def build_fleet_review(
    result: FleetResult,
    *,
    name: str,
    command: str,
    cpu_budget_percent: float = 10.0,
    title: str | None = None,
) -> Document:
    """The fleet review of ``result`` as a document (deterministic for equal results)."""
    best = result.best(cpu_budget_percent)
    shown = best or result.best() or result.scenarios[0]
    sections = (
        _summary(result, best, cpu_budget_percent),
        _scenarios(result, best),
        _hosts(result, shown),
        _method(result, command),
    )
    version = tool_version()
    hashes = sorted({str(r.trace_hash) for r in result.runs})
    provenance = {
        "tool_version": version,
        "fleet": name,
        "hosts": [m.label for m in result.members],
        "trace_hashes": hashes,
        "command": command,
        "recommended": best.label if best is not None else None,
        "footer": f"Made by {version or 'ksm-planner'} from {len(hashes)} trace"
        f"{'s' if len(hashes) != 1 else ''} of {len(result.members)} hosts. "
        f"Rebuild: `{command}`",
    }
    fleet = to_jsonable(result)
    fleet.pop("provenance", None)  # the run's machine and executor: not part of the review
    fleet.pop("elapsed_s", None)
    fleet["path"] = name
    for m in fleet.get("members", []):
        m["trace_path"] = _where(result, m["trace_path"])
    for s in fleet.get("scenarios", []):
        for h in s.get("hosts", []):
            h["trace_path"] = _where(result, h["trace_path"])
    data = {
        "fleet": fleet,
        "best": {"scenario": best.id if best else None, "cpu_budget_percent": cpu_budget_percent},
        "warnings": list(result.warnings),
    }
    n = len(result.members)
    return Document(
        title=title or f"KSM fleet capacity review: {name}",
        subtitle=(
            f"What does kernel samepage merging (KSM) buy over {n} hosts, host by host and for "
            f"the fleet? A replay of every host under {len(result.scenarios)} scenarios."
        ),
        sections=sections,
        provenance=provenance,
        data=data,
    )


def make_fleet_report(
    path: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str],
    hosts: Sequence[str] | None = None,
    executor: Executor | None = None,
    max_workers: int | None = None,
    cpu_budget_percent: float = 10.0,
    command: str | None = None,
    title: str | None = None,
    pdf: bool = False,
    overwrite: bool = False,
    progress: Progress = NULL_PROGRESS,
    **whatif: Any,
) -> ReportResult:
    """Run the what-if on every host of a fleet and write the fleet review into ``out``.

    ``whatif`` holds the arguments of :func:`planner.whatif.run_whatif` (policy sets, grid,
    replay options, cost profile, capacity, extrapolation).

    Raises
    ------
    OutputExistsError, MissingExtraError, UsageProblem, PolicyError, KnobError, TraceFormatError
        Checked before anything long runs where possible.
    """
    from planner.report.make import ReportResult, check_output
    from planner.report.render import write_report
    from planner.whatif.fleet import run_fleet

    check_output(out, overwrite=overwrite, pdf=pdf)
    if not cpu_budget_percent > 0:
        raise UsageProblem(
            f"the ksmd CPU budget must be positive, got {cpu_budget_percent}",
            hint="give a percentage of one core, e.g. 10",
        )
    result = run_fleet(
        path,
        hosts=hosts,
        executor=executor,
        max_workers=max_workers,
        progress=progress,
        **whatif,
    )
    name = Path(path).name or str(path)
    doc = build_fleet_review(
        result,
        name=name,
        command=command or f"ksm-planner report {path} --out DIR",
        cpu_budget_percent=cpu_budget_percent,
        title=title,
    )
    files = write_report(doc, out, pdf=pdf, overwrite=overwrite)
    return ReportResult.of(files, doc, len(result.scenarios))


__all__ = ["MAX_HOST_BARS", "build_fleet_review", "make_fleet_report"]
