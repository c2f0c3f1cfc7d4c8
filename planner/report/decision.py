"""The first screen of a review: the recommendation (or why there is none), the numbers that
matter with their intervals, what was measured and what assumed, and the gates.

**The recommendation rule.** Among the scenarios that use KSM, save something net of KSM's
metadata and merge nothing across security domains, keep those that meet the gates of
:class:`~planner.report.inputs.ReviewGates` -- ksmd's steady-state CPU as a share of the
planned host's CPUs at most ``max_ksmd_host_share`` and 90 % of the saving on the planned
host within ``max_time_to_90_s`` -- take those whose net saving is within ``near_best`` of
the best, and of those the one with the least ksmd CPU (then the fastest, then the first by
name). When none qualifies, the review still shows every figure of the best candidate (of
the scenarios a gate blocks whose net saving is within ``near_best`` of the best of them, the
one that needs the least relaxation) and says which gate to relax, by how much, and which
input to measure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from planner.report import common as W
from planner.report import fmt as F
from planner.report.doc import (
    Block,
    Bullets,
    Callout,
    Column,
    KeyFigure,
    KeyFigures,
    Para,
    Section,
    Table,
    table,
)
from planner.report.inputs import knobs_text
from planner.whatif.gridpoints import kernel_default

if TYPE_CHECKING:
    from planner.report.inputs import ReviewInputs, ReviewScenario
    from planner.whatif.capacity import CapacityEstimate


@dataclass(frozen=True)
class Exclusion:
    """Why a scenario cannot be recommended, and what would admit it."""

    scenario: str
    gate: str  # "baseline", "saving", "domains", "ksmd CPU", "time to 90 %"
    why: str
    relax: str | None = None  # the option value that would admit it
    #: How far the figure is past its gate (value / limit; inf: no relaxation admits it)
    overshoot: float = math.inf


@dataclass(frozen=True)
class Choice:
    """The recommended scenario (or, with none, the best candidate) and why."""

    scenario: ReviewScenario | None
    reason: str
    considered: int
    exclusions: tuple[Exclusion, ...]
    candidate: ReviewScenario | None = None  # the best candidate when nothing qualifies

    @property
    def excluded(self) -> tuple[tuple[str, str], ...]:
        """``(scenario, why)`` of every scenario left out."""
        return tuple((e.scenario, e.why) for e in self.exclusions)

    @property
    def shown(self) -> ReviewScenario | None:
        """The scenario whose figures the first screen shows: the recommended one, else the
        best candidate."""
        return self.scenario or self.candidate


def _ceil_share(share: float) -> str:
    """A share rounded up to 0.1 % for an option: ``3.2%``."""
    return f"{math.ceil(share * 1000 - 1e-9) / 10:g}%"


def _ceil_minutes(seconds: float) -> str:
    return f"{max(1, math.ceil(seconds / 60 - 1e-9))}min"


def _exclusion(s: ReviewScenario, inputs: ReviewInputs) -> Exclusion | None:
    """Why a scenario cannot be recommended (None: it can)."""
    h, g = s.host, inputs.gates
    if not s.enabled:
        return Exclusion(s.name, "baseline", "KSM off (baseline)")
    if h.net_saved_bytes <= 0:
        return Exclusion(s.name, "saving", "saves nothing net of metadata")
    if h.cross_domain_saved_bytes:
        return Exclusion(
            s.name,
            "domains",
            "merges pages across security domains",
            'cross_domain = "deny" (domains on separate hosts) or NAME@DOMAIN (KSM for one '
            "domain only)",
        )
    share = s.ksmd_host_share
    if share > g.max_ksmd_host_share:
        return Exclusion(
            s.name,
            "ksmd CPU",
            f"ksmd CPU above the budget: {W.share_of_host(s)} ({F.percent(h.ksmd_cpu_percent)} "
            f"of one core; {W.cpus_text(s)}; budget {F.pct(g.max_ksmd_host_share)})",
            f"--max-ksmd-cpu {_ceil_share(share)}",
            share / g.max_ksmd_host_share,
        )
    took = h.decisive_time_to_90_s
    if (took if took is not None else math.inf) > g.max_time_to_90_s:
        where = " on the planned host" if h.host_scale is not None else ""
        return Exclusion(
            s.name,
            "time to 90 %",
            "too slow: 90 % of its saving takes "
            + (f"about {F.seconds(took)}" if took is not None else "forever")
            + f"{where} (limit {F.seconds(g.max_time_to_90_s)})",
            f"--max-time-to-90 {_ceil_minutes(took)}" if took is not None else None,
            took / g.max_time_to_90_s if took is not None else math.inf,
        )
    return None


def recommend(inputs: ReviewInputs) -> Choice:
    """Apply the recommendation rule (module docstring) to the scenarios."""
    exclusions: list[Exclusion] = []
    pool: list[ReviewScenario] = []
    for s in inputs.scenarios:
        why = _exclusion(s, inputs)
        if why is None:
            pool.append(s)
        else:
            exclusions.append(why)
    if inputs.recommended:
        chosen = inputs.scenario(inputs.recommended)
        return Choice(chosen, "named by the caller", len(pool), tuple(exclusions))
    if not pool:
        return Choice(
            None,
            "no scenario meets the gates",
            0,
            tuple(exclusions),
            _candidate(inputs, exclusions),
        )
    best = max(s.host.net_saved_bytes for s in pool)
    near = [s for s in pool if s.host.net_saved_bytes >= (1.0 - inputs.gates.near_best) * best]
    near.sort(
        key=lambda s: (s.host.ksmd_cpu_percent, s.host.decisive_time_to_90_s or math.inf, s.name)
    )
    return Choice(
        near[0],
        "one with the largest net saving"
        if len(near) == 1
        else f"one with the least ksmd CPU among the {len(near)} whose net saving is within "
        f"{F.pct(inputs.gates.near_best, 0)} of the best",
        len(pool),
        tuple(exclusions),
    )


def _candidate(inputs: ReviewInputs, exclusions: list[Exclusion]) -> ReviewScenario | None:
    """The best candidate when nothing qualifies: among the scenarios a gate blocks whose net
    saving is within the near-best margin of the best of them, the one that needs the least
    relaxation (then the largest saving)."""
    over = {e.scenario: e.overshoot for e in exclusions if e.gate in ("ksmd CPU", "time to 90 %")}
    blocked = [s for s in inputs.scenarios if s.name in over]
    if not blocked:
        return None
    best = max(s.host.net_saved_bytes for s in blocked)
    near = [s for s in blocked if s.host.net_saved_bytes >= (1.0 - inputs.gates.near_best) * best]
    return min(near, key=lambda s: (over[s.name], -s.host.net_saved_bytes, s.name))


# ----------------------------------------------------------------------------- the callout


def _headline(s: ReviewScenario) -> str:
    """The capacity sentence of the callout (empty without a planned host)."""
    h, cap = s.host, s.host.capacity
    proj = h.projected.net_saved_fraction if h.projected is not None else None
    if cap is None and proj is not None:
        return (
            f" Projected to {F.integer(h.projected_workers)} workers per host it frees "
            f"**{F.pct(proj.value)} of the anonymous memory** "
            f"({F.interval(proj.low, proj.high, F.pct)}, {F.pct(proj.confidence, 0)} interval)."
        )
    if cap is None:
        return ""
    dom = cap.dominant_source
    why = (
        f"; the widest uncertainty is {W.SOURCE_WORDS[dom]}"
        if dom is not None and dom in W.SOURCE_WORDS
        else ""
    )
    limit = ""
    if cap.limit_with == "cpu" and cap.limit_without == "cpu":
        lost = cap.workers_without - cap.workers_with
        limit = (
            f" The host is CPU-bound: its {F.fixed(cap.host_cpus, 1)} CPUs run "
            f"{F.integer(cap.cpu_limit_without or cap.workers_without)} workers, while its "
            f"memory holds {F.integer(cap.memory_limit_without)} without KSM, so KSM frees "
            "memory the CPUs cannot use"
            + (
                f" and ksmd's CPU costs {F.integer(lost)} worker{'s' if lost != 1 else ''}"
                if lost > 0
                else ""
            )
            + ": for capacity, enable it only on hosts with less memory per CPU (where memory "
            "limits the workers), or for the memory itself (page cache, other services)."
        )
    return (
        f" On a host with {F.gib(cap.host_mem_bytes, 0)} of memory this means "
        f"**{W.more_workers(cap.gain)} per host** "
        f"({F.integer(cap.workers_without)} → {F.integer(cap.workers_with)}; "
        f"{W.interval_text(cap)}, {F.pct(cap.confidence, 0)} interval{why}).{limit}"
    )


def _saving_sentence(inputs: ReviewInputs, s: ReviewScenario) -> str:
    h = s.host
    me = inputs.whatif.model_error
    text = (
        f"On the traced host the replay frees **{F.mib(h.net_saved_bytes)} net of KSM's own "
        f"metadata, {F.pct(h.net_saved_fraction)} of the anonymous memory**"
    )
    if h.saving_factor != 1.0:
        where = (
            "on the canary"
            if me is not None and me.source == "canary"
            else "on the project's published live runs"
        )
        text += (
            f"; {where} the real KSM merged {F.fixed(h.saving_factor, 2)} times what the replay "
            f"predicted ([Validation](#validation)), so expect about "
            f"{F.mib(h.expected_net_saved_bytes)}"
        )
    return text + "."


def _speed_sentence(s: ReviewScenario) -> str:
    h = s.host
    where = (
        f"about {W.t(h.projected_time_to_90_s)} on the planned host"
        if h.projected_time_to_90_s is not None
        else W.t(h.time_to_90_s)
    )
    return (
        f" 90 % of the saving arrives after {where}; ksmd takes {W.share_of_host(s)} "
        f"({F.percent(h.ksmd_cpu_percent)} of one core)."
    )


def _callout(inputs: ReviewInputs, choice: Choice) -> Callout:
    s = choice.shown
    assert s is not None
    body = _saving_sentence(inputs, s) + _headline(s) + _speed_sentence(s)
    if choice.scenario is not None:
        cap = s.host.capacity
        enable = (
            f"Enable KSM with policy **{s.policy_set}** ({s.description}) and "
            f"`{knobs_text(s.knob_values)}`. "
        )
        if cap is not None and cap.gain is not None and cap.gain <= 0:
            # KSM frees memory, but buys no workers on this host: say so before the how
            enable = (
                "Do not enable KSM to add workers to this host: it buys none (below). To free "
                f"memory for other uses, enable it with policy **{s.policy_set}** "
                f"({s.description}) and `{knobs_text(s.knob_values)}`. "
            )
        return Callout("decision", enable + body, "Recommendation")
    blocks = [e for e in choice.exclusions if e.scenario == s.name]
    return Callout(
        "warning",
        "No scenario meets the gates, so this review recommends nothing yet. The best "
        f"candidate is `{s.name}` ({s.description}); "
        + "; ".join(
            f"it is blocked by the {e.gate} gate: {e.why}"
            + (f" — relax with `{e.relax}`" if e.relax else "")
            for e in blocks
        )
        + ". Every figure below is that candidate's. "
        + body,
        "No recommendation",
    )


# ----------------------------------------------------------------------------- key figures


def _key_figures(inputs: ReviewInputs, s: ReviewScenario) -> tuple[KeyFigure, ...]:
    h, cap = s.host, s.host.capacity
    figs = []
    if cap is not None:
        dom = cap.dominant_source
        figs.append(
            KeyFigure(
                "more workers per host (capacity gain)",
                W.signed_pct(cap.gain),
                f"{F.integer(cap.workers_without)} → {F.integer(cap.workers_with)} workers; "
                f"{F.pct(cap.confidence, 0)} interval {W.interval_text(cap)}"
                + (f"; widest uncertainty: {W.SOURCE_WORDS[dom]}" if dom else ""),
            )
        )
    figs.append(
        KeyFigure(
            "memory freed on the traced host, net of KSM metadata",
            F.mib(h.net_saved_bytes),
            f"{F.pct(h.net_saved_fraction)} of {F.mib(h.anon_bytes)}, as replayed"
            + (
                f"; about {F.mib(h.expected_net_saved_bytes)} with the model's measured error"
                if h.saving_factor != 1.0
                else ""
            ),
        )
    )
    figs.append(_time_figure(s))
    figs.append(
        KeyFigure(
            "ksmd CPU at steady state, "
            + ("of the host" if s.host_cpus is not None else "of one core"),
            F.pct(s.ksmd_host_share),
            f"{F.percent(h.ksmd_cpu_percent)} of one core; {W.cpus_text(s)}",
        )
    )
    if cap is not None:
        figs.append(_unmerge_figure(cap))
    figs.append(_writes_figure(inputs, s))
    return tuple(figs)


def _time_figure(s: ReviewScenario) -> KeyFigure:
    h = s.host
    scans = h.full_scans_to_90
    if h.projected_time_to_90_s is not None:
        return KeyFigure(
            "time to 90 % of the saving, on the planned host",
            W.t(h.projected_time_to_90_s),
            f"{scans if scans is not None else '?'} full scans of about "
            f"{F.seconds(h.projected_first_full_scan_s)} each there; "
            f"{W.t(h.time_to_90_s)} on the traced host",
        )
    return KeyFigure(
        "time to 90 % of the saving",
        W.t(h.time_to_90_s),
        f"{scans if scans is not None else '?'} full scans of about "
        f"{F.seconds(h.first_full_scan_s)} each",
    )


def _unmerge_figure(cap: CapacityEstimate) -> KeyFigure:
    short = cap.drain_workers
    return KeyFigure(
        "memory needed at once to switch KSM off, on the planned host",
        F.gib(cap.ksm_saved_bytes),
        f"at {F.integer(cap.workers_with)} workers; {F.gib(cap.free_at_workers_with_bytes)} free "
        + (f"there: **drain {F.integer(short)} workers first**" if short else "there: it fits"),
    )


def _modelled_cow(rate: float | None, canary: bool) -> str:
    """What the replay's own writes broke (the sampled rates, continued after the trace)."""
    if rate is None:
        return ""
    which = "the sampled writes and the canary's" if canary else "the sampled writes"
    return f"; the replay of {which} breaks {W.rate(rate)}/s on the traced host"


def _knob_factor_words(factor: float | None) -> str:
    """How the canary's rate was carried to the scenario's knobs (empty: it was not)."""
    if factor is None:
        return ""
    return f", times {F.fixed(factor, 2)} for this scenario's knobs (the replay's ratio),"


def _writes_figure(inputs: ReviewInputs, s: ReviewScenario) -> KeyFigure:
    h = s.host
    cow = inputs.cow
    rates = inputs.whatif.observed.rates if inputs.whatif.observed is not None else None
    measured = rates.observed_cow_per_s if rates is not None else None
    canary_planned = h.projected_canary_cow_per_s
    planned = h.projected_cow_breaks_per_s
    calibrated = inputs.whatif.replay_options.writes_canary is not None
    if canary_planned is not None and measured is not None:
        return KeyFigure(
            "copy-on-write breaks per second, on the planned host",
            W.rate(canary_planned),
            f"the canary's rate per merged page ({W.rate(measured)}/s at "
            f"{F.integer(rates.observed_pages_sharing if rates else None)} pages)"
            + _knob_factor_words(h.canary_cow_knob_factor)
            + f" times the pages merged there; the trace alone sees {W.rate(planned)}/s"
            + _modelled_cow(h.modelled_cow_breaks_per_s, calibrated),
        )
    value = f"{W.rate(planned if planned is not None else cow.breaks_per_s)} /s"
    detail = (
        f"writes to merged pages on the planned host; {W.rate(cow.breaks_per_s)}/s in the trace "
        "(a lower bound: several writes between two snapshots count once)"
        if planned is not None
        else "writes to merged pages, counted in the trace (a lower bound)"
    ) + _modelled_cow(h.modelled_cow_breaks_per_s, calibrated)
    if measured is not None:
        detail += f"; the canary measured {W.rate(measured)}/s (`cow_ksm`)"
    return KeyFigure("copy-on-write breaks", value, detail)


# ----------------------------------------------------------------------------- tables


def inputs_table(inputs: ReviewInputs, s: ReviewScenario) -> Table:
    """What was measured, given and assumed behind the shown scenario's figures."""
    h, cap = s.host, s.host.capacity
    rows: list[dict[str, Any]] = [
        {
            "input": "anonymous memory and its duplicates",
            "value": f"{F.mib(h.anon_bytes)} in {inputs.trace.processes} processes",
            "source": "measured",
            "basis": f"trace `{inputs.trace.name}`: {inputs.trace.snapshots} snapshots over "
            f"{F.seconds(inputs.trace.time_span_s)}",
        },
        {
            "input": "what KSM merges of it",
            "value": f"{F.pct(h.realization_ratio)} of the ideal",
            "source": "modelled",
            "basis": "the replay of the trace under the scenario's knobs",
        },
    ]
    loads = inputs.whatif.replay_options.host_load or {}
    load = loads.get(h.host)
    if load is not None:
        rows.append(
            {
                "input": "CPU load beside ksmd",
                "value": f"{F.fixed(load.runnable_per_cpu, 1)} runnable tasks per CPU",
                "source": load.source,
                "basis": load.detail or "docs/busy-host.md",
            }
        )
    me = inputs.whatif.model_error
    if me is not None:
        rows.append(
            {
                "input": "the model's error (observed / predicted)",
                "value": f"× {F.fixed(me.point, 2)} ({F.fixed(me.low, 2)}–{F.fixed(me.high, 2)})",
                "source": "measured" if me.source == "canary" else "published",
                "basis": me.basis,
            }
        )
    if cap is not None:
        rows.append(
            {
                "input": "anonymous memory per added worker",
                "value": F.mib(cap.per_worker_anon_bytes),
                "source": "measured",
                "basis": "trace: growth fit over the traced workers",
            }
        )
        rows += _plan_rows(cap)
    return table(
        "inputs",
        "What the figures rest on: measured, given, modelled or assumed.",
        [
            Column("input", "input", "text"),
            Column("value", "value", "text"),
            Column("source", "source", "text"),
            Column("basis", "from", "text"),
        ],
        rows,
    )


def _plan_rows(cap: CapacityEstimate) -> list[dict[str, Any]]:
    plan = cap.plan
    rows: list[dict[str, Any]] = [
        {
            "input": "host memory, kept free",
            "value": f"{F.gib(cap.host_mem_bytes, 0)}, {F.gib(cap.headroom_bytes)}",
            "source": "given",
            "basis": "--host-mem, --headroom",
        }
    ]
    if plan is None:
        return rows
    for name, p in plan.inputs():
        if name == "host CPUs":
            value = F.fixed(p.value, 1)
        elif name == "CPU per worker":
            value = f"{F.fixed(p.value, 3)} cores"  # a worker often needs a few % of one
        else:
            value = F.size(p.value)
        rows.append({"input": name, "value": value, "source": p.source, "basis": p.basis})
    if plan.cpu_per_worker is None:
        rows.append(
            {
                "input": "CPU per worker",
                "value": "unknown",
                "source": "not measured",
                "basis": "no CPU bound: give --cpu-per-worker (cores a worker uses at its "
                "planned load) or capture a trace that records CPU time",
            }
        )
    return rows


def uncertainty_table(cap: CapacityEstimate) -> Table:
    """The capacity gain's interval per source of uncertainty, and combined."""
    rows = [
        {
            "source": W.SOURCE_WORDS.get(i.source, i.source),
            "gain_lo": i.gain_low,
            "gain_hi": i.gain_high,
            "workers_lo": i.workers_low,
            "workers_hi": i.workers_high,
            "basis": i.basis,
        }
        for i in cap.intervals
    ]
    return table(
        "uncertainty",
        f"The capacity gain's {F.pct(cap.confidence, 0)} interval when each source of "
        "uncertainty varies alone, and all together.",
        [
            Column("source", "source", "text"),
            Column("gain_lo", "gain low", "pct", "%"),
            Column("gain_hi", "gain high", "pct", "%"),
            Column("workers_lo", "workers low", "int", hidden=True),
            Column("workers_hi", "workers high", "int", hidden=True),
            Column("basis", "what it covers", "text"),
        ],
        rows,
        highlight=[len(rows) - 1] if rows else [],
    )


# ----------------------------------------------------------------------------- context


def _context(inputs: ReviewInputs, choice: Choice) -> list[Block]:
    """What was compared and the gates, the kernel's defaults, what was left out and why."""
    st = inputs.state.snapshot
    g = inputs.gates
    used = [x for x in inputs.scenarios if x.enabled]
    blocks: list[Block] = [
        Para(
            f"The review compared {len(inputs.scenarios)} scenarios (policy sets × ksmd knob "
            f"settings) by replaying the trace `{inputs.trace.name}` "
            f"({inputs.trace.processes} processes, {F.mib(st.pages * inputs.state.page_size)} "
            f"of anonymous memory, {inputs.trace.snapshots} snapshots over "
            f"{F.seconds(inputs.trace.time_span_s)}) through a model of the kernel's KSM "
            f"scanner. The gates: ksmd at most {F.pct(g.max_ksmd_host_share)} of the host's "
            f"CPUs (`--max-ksmd-cpu`), 90 % of the saving within "
            f"{F.seconds(g.max_time_to_90_s)} on the planned host (`--max-time-to-90`), no "
            f"merging across security domains. Of the {len(used)} scenarios that use KSM, "
            f"{choice.considered} pass; "
            + (
                f"the recommendation is, of those, the {choice.reason} (`--near-best` "
                f"{F.pct(g.near_best)})."
                if choice.scenario is not None
                else "none is recommended."
            )
        )
    ]
    kd = kernel_defaults_text(inputs, choice)
    if kd:
        blocks.append(Para(kd))
    left_out = [e for e in choice.exclusions if e.gate != "baseline"]
    if left_out:
        blocks.append(Para("The scenarios left out, and what would admit them:"))
        blocks.append(
            Bullets(
                tuple(
                    f"`{e.scenario}`: {e.why}" + (f" (relax: `{e.relax}`)" if e.relax else "")
                    for e in left_out
                )
            )
        )
    return blocks


def _is_kernel_default(s: ReviewScenario) -> bool:
    values = s.knob_values
    return all(
        values[k] == kernel_default(k)
        for k in ("pages_to_scan", "sleep_ms", "smart_scan", "advisor", "max_page_sharing")
    )


def kernel_defaults_text(inputs: ReviewInputs, choice: Choice) -> str:
    """The kernel's default knobs under the shown policy set, always stated."""
    shown = choice.shown
    policy = shown.policy_set if shown is not None else None
    match = [s for s in inputs.scenarios if _is_kernel_default(s) and s.enabled]
    s = next((x for x in match if x.policy_set == policy), match[0] if match else None)
    if s is None:
        return (
            "The kernel's default knobs (`pages_to_scan=100, sleep_millisecs=20`) are not "
            "among the scenarios."
        )
    h = s.host
    cap = h.capacity
    status = next((e for e in choice.exclusions if e.scenario == s.name), None)
    verdict = (
        "this is the recommendation"
        if choice.scenario is not None and choice.scenario.name == s.name
        else f"it is left out, {status.why}"
        + (f" (relax: `{status.relax}`)" if status.relax else "")
        if status is not None
        else "it passes the gates but another scenario is preferred"
    )
    return (
        f"At the kernel's default knobs (`pages_to_scan=100, sleep_millisecs=20`), `{s.name}` "
        f"frees {F.mib(h.net_saved_bytes)} on the traced host"
        + (f", {W.more_workers(cap.gain)} per host" if cap is not None else "")
        + f", reaches 90 % after {W.t(h.decisive_time_to_90_s)}"
        + (" on the planned host" if h.host_scale is not None else "")
        + f" with ksmd at {W.share_of_host(s)}: {verdict}."
    )


def _way_forward(inputs: ReviewInputs, choice: Choice) -> list[Block]:
    """What to measure next: the inputs that would most narrow the figures."""
    s = choice.shown
    cap = s.host.capacity if s is not None else None
    items: list[str] = []
    if inputs.whatif.observed is None:
        items.append(
            "Run a canary of this workload and pass its recording with `--observed`: the "
            "model's error is taken from the published live-validation runs until then "
            "(see [Deployment](#deployment))."
        )
    plan = cap.plan if cap is not None else None
    if plan is not None and plan.cpu_per_worker is None:
        items.append(
            "Measure the CPU a worker uses at its planned load and give `--cpu-per-worker`: "
            "without it the host is assumed to be limited by memory only."
        )
    if plan is not None and plan.host_cpus.source == "assumed":
        items.append(
            f"Give the host's CPUs (`--host-cpus`): {F.fixed(plan.host_cpus.value, 0)} are "
            "assumed from its memory, and the ksmd gate is a share of them."
        )
    memory = [n for n in plan.assumed if n not in ("host CPUs",)] if plan is not None else []
    if memory:
        items.append(
            "Capture a trace that records each process's whole footprint (smaps_rollup, page "
            "tables) or give `--worker-file`, `--worker-page-tables`, `--worker-other`, "
            "`--base-other`: " + ", ".join(memory) + " are assumed (docs/capacity.md)."
        )
    if not items:
        return []
    return [Para("To narrow these figures:"), Bullets(tuple(items))]


def decision_section(inputs: ReviewInputs, choice: Choice) -> Section:
    """Section 1: the decision, the numbers that matter, what they rest on."""
    s = choice.shown
    if s is None:
        return Section(
            "decision",
            "Decision and summary",
            (
                Callout(
                    "warning",
                    "No scenario uses KSM with any saving: "
                    + "; ".join(f"`{e.scenario}`: {e.why}" for e in choice.exclusions[:6])
                    + ". Do not enable KSM on the strength of this trace.",
                    "No recommendation",
                ),
            ),
            lead="What to do, and the number that matters.",
        )
    blocks: list[Block] = [_callout(inputs, choice), KeyFigures(_key_figures(inputs, s))]
    blocks += _canary_line(inputs)
    blocks.append(inputs_table(inputs, s))
    if s.host.capacity is not None and s.host.capacity.intervals:
        blocks.append(uncertainty_table(s.host.capacity))
    blocks += _context(inputs, choice)
    blocks += _way_forward(inputs, choice)
    return Section(
        "decision",
        "Decision and summary",
        tuple(blocks),
        lead="What to do, and the number that matters.",
    )


def _canary_line(inputs: ReviewInputs) -> list[Block]:
    obs = inputs.whatif.observed
    gap = obs.mean_relative_gap if obs is not None else None
    if obs is None or gap is None:
        return [
            Para(
                "**Not compared with a real host yet**: no canary recording was given "
                "([Validation](#validation))."
            )
        ]
    r = obs.rates
    text = (
        f"**Prediction against reality.** On a canary ({obs.source}, "
        f"`{W.observed_name(inputs, obs)}`), the replay predicted {F.pct(abs(gap))} "
        f"{'more' if gap > 0 else 'fewer'} merged pages than the real KSM merged over the second "
        "half of the recording"
    )
    if r is not None and r.observed_ksmd_cpu_percent is not None:
        text += (
            f"; the real ksmd used {F.percent(r.observed_ksmd_cpu_percent)} of one core "
            f"(model {F.percent(r.predicted_ksmd_cpu_percent)})"
        )
    if r is not None and r.observed_cow_per_s is not None:
        text += (
            f" and merged pages were written {W.rate(r.observed_cow_per_s)} times per second "
            + (
                f"(`cow_ksm`; the trace sees {W.rate(r.predicted_cow_per_s)})"
                if r.replayed_cow_per_s is None
                else f"(`cow_ksm`; the replay breaks {W.rate(r.replayed_cow_per_s)}, the trace "
                f"alone sees {W.rate(r.predicted_cow_per_s)})"
            )
        )
    return [
        Para(text + ". The capacity figures apply the measured error ([Validation](#validation)).")
    ]


__all__ = [
    "Choice",
    "Exclusion",
    "decision_section",
    "inputs_table",
    "kernel_defaults_text",
    "recommend",
    "uncertainty_table",
]
