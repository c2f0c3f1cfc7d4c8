"""The capacity-planning review: twelve sections written from computed numbers.

:func:`build_review` turns :class:`~planner.report.inputs.ReviewInputs` into a
:class:`~planner.report.doc.Document`. Every number it states is a field of the what-if's
results (:class:`~planner.whatif.HostScenario` per scenario on the reviewed host,
:class:`~planner.whatif.WhatIfResult` for fits, knob effects and the canary comparison) or
of the trace facts; the review computes none, and it words a judgement ("the knob buys
speed with CPU, not memory") only when those numbers say so. A reader finds every number
again in the data files (``data/*.csv``, ``data/review.json``). The sections follow what a
capacity review contains (decision, scope, current state, method, results, time, cost,
attribution, risks, sensitivity, validation, appendix).

The recommendation rule (section 1) is fixed and stated in the document: among the
scenarios that use KSM, merge nothing across security domains, stay within the ksmd CPU
budget and reach 90 % of their saving within the time limit, take those whose net saving
is within 2 % of the best, and of those the one with the least ksmd CPU (then the fastest,
then the first by name).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from planner.jsonable import to_jsonable
from planner.report import charts as C
from planner.report import fmt as F
from planner.report.doc import (
    Block,
    Bullets,
    Callout,
    Code,
    Column,
    Document,
    Figure,
    Heading,
    KeyFigure,
    KeyFigures,
    Para,
    Section,
    Table,
    table,
)
from planner.report.inputs import knobs_text, varying_knobs

if TYPE_CHECKING:
    from collections.abc import Sequence

    from planner.report.inputs import ReviewInputs, ReviewScenario
    from planner.trace.summary import GroupPotential
    from planner.whatif import KnobEffect, SavingRange
    from planner.whatif.capacity import CapacityEstimate
    from planner.whatif.extrapolate import ExtrapolationFit
    from planner.whatif.observed import ObservedComparison

#: Scenarios whose net saving is within this share of the best count as equally good; a
#: knob or policy set that moves the saving by no more than this "does not change" it.
NEAR_BEST = 0.02
#: A recommended scenario must reach 90 % of its saving within this time (seconds).
MAX_TIME_TO_90_S = 600.0
#: The kernel documentation's rule: a process with more rmap_items per merging page loses memory.
NET_LOSS_RATIO = 64


@dataclass(frozen=True)
class Choice:
    """The recommended scenario and why."""

    scenario: ReviewScenario | None
    reason: str
    considered: int
    excluded: tuple[tuple[str, str], ...]  # (scenario, why it was left out)


def _exclusion(s: ReviewScenario, inputs: ReviewInputs) -> str | None:
    """Why a scenario cannot be recommended (None: it can)."""
    h = s.host
    if not s.enabled:
        return "KSM off (baseline)"
    if h.net_saved_bytes <= 0:
        return "saves nothing net of metadata"
    if h.cross_domain_saved_bytes:
        return "merges pages across security domains"
    if h.ksmd_cpu_percent > inputs.cpu_budget_percent:
        return (
            f"ksmd CPU above the budget: {F.percent(h.ksmd_cpu_percent)} of a core "
            f"(budget {F.percent(inputs.cpu_budget_percent)})"
        )
    took = h.decisive_time_to_90_s
    if (took or math.inf) > MAX_TIME_TO_90_S:
        where = " on the projected host" if h.host_scale is not None else ""
        return (
            "too slow: 90 % of its saving takes "
            + (f"about {F.seconds(took)}" if took is not None else "forever")
            + f"{where} (limit {F.seconds(MAX_TIME_TO_90_S)})"
        )
    return None


def recommend(inputs: ReviewInputs) -> Choice:
    """Apply the recommendation rule (module docstring) to the scenarios."""
    excluded: list[tuple[str, str]] = []
    pool: list[ReviewScenario] = []
    for s in inputs.scenarios:
        why = _exclusion(s, inputs)
        if why is None:
            pool.append(s)
        else:
            excluded.append((s.name, why))
    if inputs.recommended:
        chosen = inputs.scenario(inputs.recommended)
        return Choice(chosen, "named by the caller", len(pool), tuple(excluded))
    if not pool:
        return Choice(None, "no scenario meets the conditions", 0, tuple(excluded))
    best = max(s.host.net_saved_bytes for s in pool)
    near = [s for s in pool if s.host.net_saved_bytes >= (1.0 - NEAR_BEST) * best]
    near.sort(
        key=lambda s: (
            s.host.ksmd_cpu_percent,
            s.host.decisive_time_to_90_s or math.inf,
            s.name,
        )
    )
    return Choice(
        near[0],
        "one with the largest net saving"
        if len(near) == 1
        else f"one with the least ksmd CPU among the {len(near)} whose net saving is within "
        f"{F.pct(NEAR_BEST, 0)} of the best",
        len(pool),
        tuple(excluded),
    )


# ----------------------------------------------------------------------------- helpers


def _colors(scenarios: Sequence[ReviewScenario]) -> dict[str, str]:
    """One colour per policy set, in order of appearance."""
    out: dict[str, str] = {}
    for s in scenarios:
        if s.enabled and s.policy_set not in out:
            out[s.policy_set] = C.PALETTE[len(out) % len(C.PALETTE)]
    for s in scenarios:
        out.setdefault(s.policy_set, C.NEUTRAL)
    return out


def _vary(inputs: ReviewInputs) -> list[str]:
    """The knobs that differ between the scenarios, in display order."""
    return varying_knobs([s.knob_values for s in inputs.scenarios])


def _knob_label(s: ReviewScenario, varying: Sequence[str]) -> str:
    values = s.knob_values
    keys = [k for k in varying if k in values] or ["pages_to_scan", "sleep_ms"]
    return knobs_text(values, keys)


def _t(v: float | None) -> str:
    return F.seconds(v) if v is not None else "never"


def _rate(per_s: float) -> str:
    """A rate with as many decimals as it needs: ``117``, ``2.4``, ``0.15``."""
    if not math.isfinite(per_s):
        return F.NA
    return F.fixed(per_s, 0 if per_s >= 10 else 1 if per_s >= 1 else 2)


def _interval_text(cap: CapacityEstimate) -> str:
    """``58.8 % – 62.4 %`` of a capacity gain (``n/a`` without an interval)."""
    lo, hi = cap.gain_interval or (None, None)
    return F.interval(lo, hi, F.pct)


def _fit_of(inputs: ReviewInputs, s: ReviewScenario | None) -> ExtrapolationFit | None:
    """The growth fit behind a scenario (or, without one, the first fit under which
    anything merges)."""
    if s is not None and s.host.fit is not None:
        return s.host.fit
    return next((f for f in inputs.whatif.fits if any(f.observed.ideal_saved)), None)


# ----------------------------------------------------------------------------- 1. decision


def _decision(inputs: ReviewInputs, choice: Choice) -> Section:
    s = choice.scenario
    if s is None:
        return Section(
            "decision",
            "Decision and summary",
            (
                Callout(
                    "warning",
                    "No scenario qualifies for a recommendation: "
                    + "; ".join(f"`{n}`: {why}" for n, why in choice.excluded[:6])
                    + ". Do not enable KSM on the strength of this trace.",
                    "No recommendation",
                ),
            ),
        )
    blocks: list[Block] = [
        _decision_callout(s),
        KeyFigures(_key_figures(inputs, s)),
        *_decision_context(inputs, choice, s),
        *_decision_scale(inputs, s),
    ]
    return Section(
        "decision",
        "Decision and summary",
        tuple(blocks),
        lead="What to do, and the number that matters.",
    )


def _decision_callout(s: ReviewScenario) -> Callout:
    h = s.host
    cap = h.capacity
    gain_text = ""
    proj = h.projected.net_saved_fraction if h.projected is not None else None
    if cap is None and proj is not None:
        gain_text = (
            f" Projected to {F.integer(h.projected_workers)} workers per host it "
            f"frees **{F.pct(proj.value)} of the anonymous memory** "
            f"({F.interval(proj.low, proj.high, F.pct)}, {F.pct(proj.confidence, 0)} interval)."
        )
    if cap is not None:
        gain_text = (
            f" On a host with {F.gib(cap.host_mem_bytes, 0)} of memory this means "
            f"**{F.pct(cap.gain, 1)} more workers per host** "
            f"({F.integer(cap.workers_without)} → {F.integer(cap.workers_with)} workers; "
            f"{_interval_text(cap)}, {F.pct(cap.confidence, 0)} interval)."
        )
    return Callout(
        "decision",
        f"Enable KSM with policy **{s.policy_set}** ({s.description}) and "
        f"`{knobs_text(s.knob_values)}`. "
        f"On the traced host it frees **{F.mib(h.net_saved_bytes)} net of KSM's own "
        f"metadata, {F.pct(h.net_saved_fraction)} of the anonymous memory**, reaches 90 % "
        f"of that after **{_t(h.time_to_90_s)}**"
        + (
            f" (about {_t(h.projected_time_to_90_s)} on the projected host)"
            if h.projected_time_to_90_s is not None
            else ""
        )
        + ", and costs ksmd "
        f"**{F.percent(h.ksmd_cpu_percent)} of one CPU core** at steady state." + gain_text,
        "Recommendation",
    )


def _key_figures(inputs: ReviewInputs, s: ReviewScenario) -> tuple[KeyFigure, ...]:
    h = s.host
    cap = h.capacity
    figs = []
    if cap is not None:
        figs.append(
            KeyFigure(
                "more workers per host (capacity gain)",
                F.pct(cap.gain),
                f"{F.pct(cap.confidence, 0)} interval {_interval_text(cap)}",
            )
        )
    detail = f"{F.pct(h.net_saved_fraction)} of {F.mib(h.anon_bytes)} anonymous memory"
    if h.projected is not None:
        iv = h.projected.net_saved_fraction
        detail += f"; projected {F.interval(iv.low, iv.high, F.pct)}"
    cow = inputs.cow
    figs += [
        KeyFigure("memory freed, net of KSM metadata", F.mib(h.net_saved_bytes), detail),
        KeyFigure(
            "time to 90 % of the saving",
            _t(h.time_to_90_s),
            f"{h.full_scans_to_90 if h.full_scans_to_90 is not None else '?'} full scans of "
            f"{F.seconds(h.full_scan_s)}"
            + (
                f"; ≈ {_t(h.projected_time_to_90_s)} on the projected host"
                if h.projected_time_to_90_s is not None
                else ""
            ),
        ),
        KeyFigure(
            "ksmd CPU at steady state",
            F.percent(h.ksmd_cpu_percent),
            f"of one core; {F.percent(h.ksmd_cpu_percent_from_start)} averaged from the start",
        ),
        KeyFigure(
            "saving that crossed security domains",
            F.mib(h.cross_domain_saved_bytes),
            f"{len(h.domains)} domains, merging across them "
            + ("allowed" if s.domain_mode == "allow" else "denied"),
        )
        if len(h.domains) > 1
        else KeyFigure(
            "merged pages rewritten (copy-on-write)",
            f"{_rate(cow.breaks_per_s)} /s",
            f"{F.mib(cow.bytes_per_s, 2)}/s of new copies, from the trace",
        ),
    ]
    return tuple(figs)


def _decision_context(inputs: ReviewInputs, choice: Choice, s: ReviewScenario) -> list[Block]:
    """What was compared, the best scenario when it is not the chosen one, what was left out."""
    st = inputs.state.snapshot
    used = [x for x in inputs.scenarios if x.enabled]
    where = " on the projected host" if any(x.host.host_scale for x in used) else ""
    blocks: list[Block] = [
        Para(
            f"The review compared {len(inputs.scenarios)} scenarios (policy sets × ksmd knob "
            f"settings) by replaying the trace `{inputs.trace.name}` "
            f"({inputs.trace.processes} processes, {F.mib(st.pages * inputs.state.page_size)} "
            f"of anonymous memory, {inputs.trace.snapshots} snapshots over "
            f"{F.seconds(inputs.trace.time_span_s)}) through a model of the kernel's KSM "
            f"scanner. Of the {len(used)} that use KSM, {choice.considered} merge nothing "
            f"across security domains, keep ksmd under {F.percent(inputs.cpu_budget_percent)} "
            f"of one core and reach 90 % of their saving within "
            f"{F.seconds(MAX_TIME_TO_90_S)}{where}; the recommendation is, of those, the "
            f"{choice.reason}."
        )
    ]
    best = max(inputs.scenarios, key=lambda x: (x.host.net_saved_bytes, -x.host.ksmd_cpu_percent))
    why = dict(choice.excluded)
    if best.name != s.name:
        blocks.append(
            Para(
                f"The largest net saving of all, {F.mib(best.host.net_saved_bytes)} "
                f"(`{best.name}`), is only "
                f"{F.mib(best.host.net_saved_bytes - s.host.net_saved_bytes)} more"
                + (
                    " (it is left out, see below)."
                    if best.name in why
                    else f" and costs {F.percent(best.host.ksmd_cpu_percent)} of a core."
                )
            )
        )
    left_out = [(n, w) for n, w in choice.excluded if w != "KSM off (baseline)"]
    if left_out:
        blocks.append(Para("The scenarios left out, and why:"))
        blocks.append(Bullets(tuple(f"`{n}`: {w}" for n, w in left_out)))
    return blocks


def _decision_scale(inputs: ReviewInputs, s: ReviewScenario) -> list[Block]:
    """The static ideal for scale, and the risks in one line each."""
    st = inputs.state
    return [
        Para(
            f"For scale: if every duplicate page merged at once, KSM could free at most "
            f"{F.mib(st.static_ideal_saved_bytes)} ({F.pct(st.static_ideal_saved_fraction)} of "
            f"physical frames) at the last snapshot; the recommended scenario realises "
            f"{F.pct(s.host.realization_ratio)} of the ideal for the pages it makes mergeable. "
            f"Forking already shares "
            f"{F.mib(st.snapshot.fork_shared_pages * st.page_size)} without KSM."
        ),
        Bullets(
            (
                "The figures are for the traced processes over the traced window; [Method]"
                "(#method) lists what the replay does not model.",
                f"Copy-on-write breaks: about {_rate(inputs.cow.breaks_per_s)} merged pages "
                f"per second would be written and copied again ([Risks](#risks)).",
                "Switching KSM off again (unmerge) needs the whole saving back at once: "
                f"{F.mib(s.host.saved_bytes)} on the traced host"
                + (
                    f", {F.gib(s.host.capacity.ksm_saved_bytes)} with "
                    f"{F.integer(s.host.capacity.workers_with)} workers on the projected host."
                    if s.host.capacity is not None
                    else "."
                ),
                *_canary_bullet(inputs),
            )
        ),
    ]


def _canary_bullet(inputs: ReviewInputs) -> tuple[str, ...]:
    obs = inputs.whatif.observed
    gap = obs.mean_relative_gap if obs is not None else None
    if obs is None or gap is None:
        return (
            "The prediction has not been compared with a real host yet "
            "([Validation](#validation)).",
        )
    return (
        f"On a canary ({obs.source}, `{_observed_name(inputs, obs)}`), the predicted number of "
        f"merged pages was {F.pct(abs(gap))} {'above' if gap > 0 else 'below'} what the real "
        "KSM merged"
        + ("; plan with the lower figure" if gap > 0 else "")
        + " ([Validation](#validation)).",
    )


def _observed_name(inputs: ReviewInputs, obs: ObservedComparison) -> str:
    try:
        return inputs.scenario_by_id(obs.scenario_id).name
    except KeyError:
        return obs.scenario_id


def _scope(inputs: ReviewInputs, choice: Choice) -> Section:
    tr = inputs.trace
    cap = tr.capture
    labels = cap.get("labels") or {}
    rows: list[dict[str, Any]] = [
        {"item": "trace", "value": f"`{tr.name}` ({tr.source or 'unknown source'})"},
        {"item": "trace hash", "value": f"`{tr.trace_hash}`"},
        {"item": "made by", "value": tr.created_by or "unknown"},
        {"item": "hosts", "value": ", ".join(tr.hosts)},
        {"item": "kernel", "value": tr.kernel_release or "unknown"},
        {
            "item": "page size, HZ, THP",
            "value": f"{tr.page_size} B, {tr.hz or '?'} Hz, THP {tr.thp_mode or '?'}",
        },
        {"item": "processes", "value": f"{tr.processes}"},
        {
            "item": "snapshots",
            "value": f"{tr.snapshots} over {F.seconds(tr.time_span_s)} "
            f"(at {', '.join(F.fixed(t, 1) for t in tr.snapshot_times_s)} s)",
        },
        {"item": "pages recorded", "value": F.integer(tr.pages)},
        {
            "item": "content hash",
            "value": f"{tr.hash_algo or '?'} (key id `{tr.hash_key_id or '?'}`)",
        },
    ]
    if cap:
        opts = [
            f"{k}={v}"
            for k, v in sorted(cap.items())
            if k not in ("labels", "pids") and v not in (None, False)
        ]
        rows.append({"item": "capture options", "value": ", ".join(opts)})
    if labels:
        rows.append(
            {"item": "labels", "value": ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))}
        )
    if tr.ksm_at_capture:
        run = tr.ksm_at_capture.get("run")
        rows.append(
            {
                "item": "KSM on the host at capture",
                "value": f"run={run}, pages_sharing={tr.ksm_at_capture.get('pages_sharing', '?')}",
            }
        )
    rows.append({"item": "review made by", "value": inputs.options.tool_version})
    facts = table(
        "scope",
        "What was traced and where it came from.",
        [Column("item", "item", "text"), Column("value", "value", "text")],
        rows,
    )
    procs = table(
        "processes",
        "The traced processes. Roles are derived from the parent links in the trace.",
        [
            Column("pid", "pid", "text"),
            Column("ppid", "parent", "text"),
            Column("comm", "command", "text"),
            Column("role", "role", "text"),
            Column("cgroup", "cgroup", "text"),
            Column("first_s", "first seen", "float1", "s"),
            Column("last_s", "last seen", "float1", "s"),
        ],
        [
            {
                "pid": str(r.pid),
                "ppid": "" if r.ppid is None else str(r.ppid),
                "comm": r.comm,
                "role": r.role,
                "cgroup": r.cgroup or "",
                "first_s": r.first_time_s,
                "last_s": r.last_time_s,
            }
            for r in inputs.state.roles
        ],
    )
    policies = sorted({(s.policy_set, s.description) for s in inputs.scenarios})
    knob_sets = [s.knob_values for s in inputs.scenarios]
    vary = varying_knobs(knob_sets)
    blocks: list[Block] = [
        Para(
            f"This review is about one trace, `{tr.name}`: {tr.processes} processes on host "
            f"{', '.join(tr.hosts)} (Linux {tr.kernel_release or '?'}), recorded in "
            f"{tr.snapshots} snapshots of every anonymous page's content hash over "
            f"{F.seconds(tr.time_span_s)}. Page contents never leave the host: the trace holds "
            "keyed 64-bit hashes and opaque frame ids only."
        ),
        facts,
        procs,
        Para(
            f"Compared: {len(policies)} policy set(s) — "
            + "; ".join(f"**{n}** ({d})" for n, d in policies)
            + f" — under {len({knobs_text(k, vary) for k in knob_sets}) or 1} ksmd knob "
            f"setting(s)"
            + (f" varying {', '.join(f'`{k}`' for k in vary)}" if vary else "")
            + ". Every combination is one scenario."
        ),
    ]
    return Section(
        "scope",
        "Scope and provenance",
        tuple(blocks),
        lead="Which hosts, processes and time window the numbers come from.",
    )


_STATE_COLUMNS = [
    Column("group", "group", "text"),
    Column("pages_bytes", "mapped", "mib", "MiB"),
    Column("fork_shared_bytes", "shared by fork", "mib", "MiB"),
    Column("ideal_saved_bytes", "KSM could free", "mib", "MiB"),
    Column("unique_bytes", "unique", "mib", "MiB"),
    Column("zero_pages", "zero pages", "int"),
    Column("ideal_fraction", "could free", "pct", "% of mapped"),
]


def _state_stacks(groups: Sequence[GroupPotential], ps: int) -> list[C.Stack]:
    """Fork-shared, duplicate (the static ideal) and unique memory of each group."""
    return [
        C.Stack("already shared by fork", [g.fork_shared_pages * ps for g in groups], C.ACCENT),
        C.Stack("duplicate: KSM could free", [g.ideal_saved_frames * ps for g in groups], C.GOOD),
        C.Stack(
            "unique content (stays)",
            [(g.pages - g.fork_shared_pages - g.ideal_saved_frames) * ps for g in groups],
            C.NEUTRAL,
        ),
    ]


def _state_rows(groups: Sequence[GroupPotential], ps: int) -> list[dict[str, Any]]:
    return [
        {
            "group": g.group,
            "pages_bytes": g.pages * ps,
            "fork_shared_bytes": g.fork_shared_pages * ps,
            "ideal_saved_bytes": g.ideal_saved_frames * ps,
            "unique_bytes": (g.pages - g.fork_shared_pages - g.ideal_saved_frames) * ps,
            "zero_pages": g.zero_pages,
            "ideal_fraction": g.ideal_saved_frames / g.pages if g.pages else 0.0,
        }
        for g in groups
    ]


def _state(inputs: ReviewInputs, choice: Choice) -> Section:
    cs = inputs.state
    st = cs.snapshot
    ps = cs.page_size
    anon = st.pages * ps
    frames = st.frames * ps
    fork = st.fork_shared_pages * ps
    ideal = cs.static_ideal_saved_bytes
    blocks: list[Block] = [
        KeyFigures(
            (
                KeyFigure(
                    "anonymous memory (sum of all mappings)",
                    F.mib(anon),
                    f"{F.integer(st.pages)} pages of {ps} B",
                ),
                KeyFigure(
                    "already shared by fork",
                    F.mib(fork),
                    f"{F.pct(fork / anon if anon else 0)} of it",
                ),
                KeyFigure(
                    "physical memory it occupies", F.mib(frames), f"{F.integer(st.frames)} frames"
                ),
                KeyFigure(
                    "duplicate content KSM could free (ideal)",
                    F.mib(ideal),
                    f"{F.pct(cs.static_ideal_saved_fraction)} of physical",
                ),
            )
        ),
        Para(
            f"At the last snapshot ({F.seconds(st.time_s)} into the trace) the processes map "
            f"{F.mib(anon)} of anonymous memory. Forked children still share "
            f"{F.mib(fork)} of it with their parent page for page (copy-on-write), so it "
            f"occupies {F.mib(frames)} of physical memory. Among those frames, "
            f"{F.integer(st.distinct_hashes)} distinct contents remain: an ideal merger that "
            "kept one frame per content (and freed "
            f"the {F.integer(st.zero_frames)} all-zero frames) would free {F.mib(ideal)}. "
            f"Counting mappings instead of frames would claim {F.mib(st.naive_saved_pages * ps)} — "
            f"that overstates KSM by the memory fork already shares."
        ),
    ]

    cols = _STATE_COLUMNS

    def stacks(groups: Sequence[GroupPotential]) -> list[C.Stack]:
        return _state_stacks(groups, ps)

    def rows(groups: Sequence[GroupPotential]) -> list[dict[str, Any]]:
        return _state_rows(groups, ps)

    roles = list(cs.by_role)
    blocks.append(
        Figure(
            "state-by-role",
            "Anonymous memory by process group",
            C.stacked_bars(
                "state-by-role",
                "Anonymous memory by process group",
                [g.group for g in roles],
                stacks(roles),
            ),
            "Anonymous memory by process group at the last snapshot: what fork already shares, "
            "what duplicate content KSM could free, and what is unique. A page shared or "
            "duplicated across groups is counted in the group scanned later (higher pid).",
            (table("state-by-role", "Anonymous memory by process group", cols, rows(roles)),),
        )
    )
    kinds = list(st.by_kind)
    blocks.append(
        Figure(
            "state-by-kind",
            "Anonymous memory by mapping kind",
            C.stacked_bars(
                "state-by-kind",
                "Anonymous memory by mapping kind",
                [g.group for g in kinds],
                stacks(kinds),
            ),
            "The same memory by kind of mapping: `anon` are private anonymous mappings (Python's "
            "arenas, large allocations), `heap` is the brk heap, `file_data`/`file_relro`/`bss` "
            "are copied-on-write pages of program files, `stack` the thread stacks.",
            (table("state-by-kind", "Anonymous memory by mapping kind", cols, rows(kinds)),),
        )
    )
    procs = list(cs.by_process)
    role_of = {str(r.pid): r.short for r in cs.roles}
    blocks.append(
        table(
            "state-by-process",
            "Anonymous memory per process at the last snapshot.",
            [Column("group", "pid", "text"), Column("role", "role", "text"), *cols[1:]],
            [{**r, "role": role_of.get(r["group"], "")} for r in rows(procs)],
        )
    )
    return Section(
        "state",
        "Current state",
        tuple(blocks),
        lead="How much anonymous memory the processes use today and how much of it repeats.",
    )


_NOT_MODELLED = (
    "**Between snapshots nothing changes.** The trace shows each page's content only at "
    "snapshot times; writes in between are not seen, and a page written and restored in between "
    "looks unchanged. After the last snapshot its state is held for the settle scans.",
    "**The future looks like the trace.** The steady state is the last snapshot held still. "
    "Traffic shifts, deploys, worker respawns and memory growth after the trace are not in it.",
    "**Merges the kernel refuses** for pinned pages (O_DIRECT, RDMA, io_uring buffers), locked "
    "pages or pages held in per-CPU LRU caches are counted as merged.",
    "**NUMA** (`merge_across_nodes`), swap, memory pressure and reclaim are not modelled.",
    "**ksmd's CPU** comes from a per-path cost profile measured on a reference VM (±30 % between "
    "runs there); ksmd runs at nice 5 and gets less CPU on a busy host, so scans can take longer "
    "than modelled. CPU contention with the service is not modelled.",
    "**Latency.** The page faults and 4 KiB copies of copy-on-write breaks and the lost "
    "transparent huge pages are not priced; [Risks](#risks) gives their rate from the trace.",
    "**Other KSM users** on the host (VMs, other containers) are not in the trace.",
    "**Page identity** is a keyed 64-bit hash: two different pages with equal hashes would be "
    "counted as duplicates (about n²/2⁶⁵ chance among n distinct pages: negligible).",
    "**The unstable tree** is keyed by content hash: an unstable entry whose page changed since "
    "insertion is dropped, where the kernel may still find it by its new content.",
)


def _method(inputs: ReviewInputs, choice: Choice) -> Section:
    settle = inputs.options.settle_scans
    cost = inputs.options.cost_profile
    blocks: list[Block] = [
        Para(
            "For each scenario, ksm-planner replays the trace through a model of the kernel's "
            "KSM scanner (ksmd, Linux 6.x): processes register as the policy says (prctl for "
            "a whole process and its later children, madvise for some mappings, or off); ksmd "
            "visits `pages_to_scan` pages per batch and sleeps `sleep_millisecs` between "
            "batches; a page merges only after its content stayed the same for a full scan (the "
            "checksum gate), through the unstable and stable trees; smart scan skips pages that "
            "keep failing; the scan-time advisor adjusts `pages_to_scan`. The model follows the "
            "kernel's rules page by page and is checked against the real kernel scan by scan "
            "(`ksm-planner validate --kernel`)."
        ),
        Bullets(
            (
                "**Snapshots become the replay's timeline.** Snapshot k is the memory from its "
                "capture time until the next snapshot's; the replay then holds the last snapshot "
                f"for {settle} more full scans. The end of the replay is the **steady state** "
                "every table reports.",
                "**Memory is counted in physical frames**: a page fork already shares counts once "
                "without KSM and is never a KSM saving. *Net* savings subtract KSM's own memory: "
                "64 bytes per scanned page (rmap_item) and per KSM page (stable node).",
                "**Anonymous memory** is the physical memory of the recorded pages without KSM; "
                "percentages of it are the share KSM frees.",
                f"**ksmd CPU** is priced per page visit by code path (cost profile `{cost}`), "
                "plus per batch and per full scan, as % of one core: at steady state over the full "
                "scans that started after the last snapshot (CPU time over wall time, the sleeps "
                "between batches and between scans included, as `top` shows ksmd), and averaged "
                "from the start. A full scan at steady state lasts that wall time per scan.",
                "**Time to benefit** is measured from the first snapshot, i.e. from the moment "
                "KSM is switched on for processes already running, to 50, 90 and 99 % of the "
                "memory KSM frees at steady state (before its metadata).",
                "**Security domains**: when a scenario denies merging across domains, each "
                "domain is replayed as if alone on a host; otherwise pages may merge across them "
                "and the saving that did is reported.",
            )
        ),
        Heading("What is not modelled"),
        Bullets(_NOT_MODELLED),
    ]
    fit = _fit_of(inputs, choice.scenario)
    if fit is not None:
        blocks += _extrapolation_method(inputs, fit)
    for note in inputs.whatif.warnings:
        blocks.append(Callout("note", note))
    return Section(
        "method",
        "Method, assumptions and what is not modelled",
        tuple(blocks),
        lead="How the numbers were computed, and where they can be wrong.",
    )


def _extrapolation_method(inputs: ReviewInputs, fit: ExtrapolationFit) -> list[Block]:
    """How the traced replicas are projected to a full host."""
    spec = fit.spec
    ps = fit.page_size
    g = fit.point
    err = fit.holdout.relative_error if fit.holdout is not None else None
    return [
        Heading("From the traced workers to a full host"),
        Para(
            f"The trace holds {fit.k} replicas (group `{fit.group}`: pids "
            f"{', '.join(map(str, fit.group_pids))}); the other processes "
            f"({', '.join(map(str, fit.base_pids)) or 'none'}) are the base that does not "
            "grow with the number of workers. For every subset of 1 to "
            f"{fit.k} replicas ({spec.orders} random orders) the ideal saving "
            "is measured exactly from the trace, and a curve is fitted to it "
            f"({spec.model} model, scipy): each replica adds "
            f"{F.mib(g.frames_b * ps)} of anonymous memory, of which {F.mib(g.distinct_b * ps)} "
            "is content no other replica has"
            + (
                f" plus a share of a common pool of {F.mib(g.distinct_c * ps)}"
                if g.distinct_c
                else ""
            )
            + ". The projected ideal saving is multiplied by the realisation the replay "
            "measured (what KSM really merges under the knobs) and KSM's metadata is "
            f"subtracted. Intervals are {F.pct(fit.confidence, 0)} percentile bootstrap "
            f"intervals over {spec.n_resamples} resamples of the replicas: "
            "they cover which workers happened to be traced, not changes of the workload. "
            + (
                f"Check: fitted on up to {fit.holdout.fit_upto} replicas, the curve "
                f"predicts the exact saving of all {fit.k} within {F.pct(abs(err))}."
                if err is not None and fit.holdout is not None
                else ""
            )
        ),
    ]


# ----------------------------------------------------------------------------- 5. results


def _scenario_rows(inputs: ReviewInputs) -> list[dict[str, Any]]:
    out = []
    for s in inputs.scenarios:
        h = s.host
        cap = h.capacity
        lo, hi = (cap.gain_interval or (None, None)) if cap is not None else (None, None)
        out.append(
            {
                "scenario": s.name,
                "policy_set": s.policy_set,
                "knobs": knobs_text(s.knob_values),
                "net_saved_bytes": h.net_saved_bytes,
                "net_saved_fraction": h.net_saved_fraction,
                "time_to_90_s": h.time_to_90_s,
                "steady_cpu_percent": h.ksmd_cpu_percent,
                "pages_per_full_scan": h.pages_scanned_per_full_scan or 0.0,
                "cross_domain_saved_bytes": h.cross_domain_saved_bytes
                if len(h.domains) > 1
                else None,
                "capacity_gain": cap.gain if cap else None,
                "capacity_gain_lo": lo,
                "capacity_gain_hi": hi,
                "pareto": s.pareto if s.enabled else None,
            }
        )
    return out


def _scenarios_table(inputs: ReviewInputs, hl: Sequence[int]) -> Table:
    rows = _scenario_rows(inputs)
    cols = [
        Column("scenario", "scenario", "text"),
        Column("net_saved_bytes", "saved, net", "mib", "MiB"),
        Column("net_saved_fraction", "of anon", "pct", "%"),
        Column("time_to_90_s", "to 90 %", "s"),
        Column("steady_cpu_percent", "ksmd CPU", "percent", "% core"),
        Column("pages_per_full_scan", "pages / full scan", "int"),
    ]
    if any(r["cross_domain_saved_bytes"] is not None for r in rows):
        cols.append(Column("cross_domain_saved_bytes", "across domains", "mib", "MiB"))
    if any(r["capacity_gain"] is not None for r in rows):
        nb = "\u00a0"  # no-break space: the cell never wraps
        for r in rows:
            gain, lo, hi = r["capacity_gain"], r["capacity_gain_lo"], r["capacity_gain_hi"]
            r["capacity_gain_text"] = (
                f"{F.fixed(100 * gain, 1)}{nb}({F.fixed(100 * lo, 1)}{nb}to{nb}"
                f"{F.fixed(100 * hi, 1)})"
                if gain is not None
                and lo is not None
                and hi is not None
                and r["pareto"] is not None
                else None
            )
        cols += [
            Column("capacity_gain_text", "capacity gain (interval)", "text", "%"),
            Column("capacity_gain", "capacity gain", "pct", "%", hidden=True),
            Column("capacity_gain_lo", "low", "pct", "%", hidden=True),
            Column("capacity_gain_hi", "high", "pct", "%", hidden=True),
        ]
    cols.append(Column("pareto", "Pareto", "bool"))
    return table(
        "scenarios",
        "Scenarios compared.",
        cols,
        [{k: r[k] for k in (c.key for c in cols)} for r in rows],
        highlight=hl,
    )


def _highlight(inputs: ReviewInputs, choice: Choice) -> list[int]:
    chosen = choice.scenario.name if choice.scenario else None
    return [i for i, s in enumerate(inputs.scenarios) if s.name == chosen]


def _results(inputs: ReviewInputs, choice: Choice) -> Section:
    hl = _highlight(inputs, choice)
    blocks: list[Block] = [
        Para(
            "Each row is one scenario at steady state. *Saved, net* is the memory KSM frees minus "
            "its own metadata; *of anon* is that as a share of the anonymous memory; *to 90 %* is "
            "the time from switching KSM on until 90 % of the saving is there; *ksmd CPU* is the "
            "scanner's CPU at steady state; *Pareto* marks scenarios that no other scenario beats "
            "on both saving and CPU. The recommended scenario is highlighted."
        ),
        _scenarios_table(inputs, hl),
    ]
    s = choice.scenario
    if s is not None and not s.pareto:
        blocks.append(_not_on_front(inputs, choice, s))
    if s is not None:
        blocks += _waterfall_blocks(inputs, s, hl)
    blocks += _capacity_blocks(inputs, choice)
    return Section(
        "results",
        "Results per scenario",
        tuple(blocks),
        lead="What each policy and knob setting saves, how fast, and at what CPU cost.",
    )


def _not_on_front(inputs: ReviewInputs, choice: Choice, s: ReviewScenario) -> Para:
    why = dict(choice.excluded)
    better = [
        x.name
        for x in inputs.scenarios
        if x.enabled
        and x.host.net_saved_bytes >= s.host.net_saved_bytes
        and x.host.ksmd_cpu_percent <= s.host.ksmd_cpu_percent
        and x.name != s.name
    ]
    return Para(
        "The recommended scenario is not on the Pareto front of saving against CPU: "
        + "; ".join(
            f"`{n}` saves at least as much for less CPU but is left out ({why[n]})"
            if n in why
            else f"`{n}` saves at least as much for less CPU"
            for n in better
        )
        + ". Time to benefit is the third criterion."
    )


def _step_key(label: str) -> str:
    return label.replace(" ", "_").replace("-", "_").replace(",", "") + "_bytes"


def _waterfall_steps(s: ReviewScenario, inputs: ReviewInputs) -> list[C.Step]:
    h = s.host
    raw = inputs.state.snapshot.pages * h.page_size
    return [
        C.Step("raw anonymous", raw, "total"),
        C.Step("fork-shared", raw - h.anon_bytes, "down"),
        C.Step("physical", h.anon_bytes, "total"),
        C.Step("zero pages", h.zero_saved_bytes, "down"),
        C.Step("content merged", h.content_saved_bytes, "down"),
        C.Step("KSM metadata", h.metadata_bytes, "up"),
        C.Step("with KSM", h.with_ksm_bytes, "total"),
    ]


def _waterfall_blocks(inputs: ReviewInputs, s: ReviewScenario, hl: Sequence[int]) -> list[Block]:
    steps = _waterfall_steps(s, inputs)
    wf_rows = [{"step": st.label, "kind": st.kind, "bytes": st.value} for st in steps]
    figure = Figure(
        "waterfall",
        "From raw anonymous memory to the memory left with KSM",
        C.waterfall("waterfall", f"Where the memory goes: {s.name}", steps),
        "From the sum of all anonymous mappings to what remains with KSM under "
        f"`{s.name}`, at steady state. Fork sharing exists without KSM; zero pages and "
        "other duplicate "
        "content are what KSM merges; its metadata is paid back.",
        (
            table(
                "waterfall",
                "Waterfall of the recommended scenario.",
                [
                    Column("step", "step", "text"),
                    Column("kind", "kind", "text"),
                    Column("bytes", "memory", "mib", "MiB"),
                ],
                wf_rows,
            ),
        ),
    )
    wall = [
        {
            "scenario": x.name,
            **{_step_key(st.label): st.value for st in _waterfall_steps(x, inputs)},
        }
        for x in inputs.scenarios
    ]
    keys = [k for k in wall[0] if k != "scenario"] if wall else []
    same = {k for k in keys if len({r[k] for r in wall}) == 1}
    first = _waterfall_steps(inputs.scenarios[0], inputs) if inputs.scenarios else []
    every = table(
        "waterfall-all",
        "The waterfall of every scenario (memory in MiB).",
        [Column("scenario", "scenario", "text")]
        + [
            Column(k, k.replace("_bytes", "").replace("_", " "), "mib", hidden=k in same)
            for k in keys
        ],
        wall,
        highlight=hl,
        note=(
            "The same in every scenario (not repeated above): "
            + ", ".join(
                f"{st.label} {F.mib(st.value)}" for st in first if _step_key(st.label) in same
            )
            + "."
            if same
            else ""
        ),
    )
    return [figure, every]


def _capacity_blocks(inputs: ReviewInputs, choice: Choice) -> list[Block]:
    caps = [(s, s.host.capacity) for s in inputs.scenarios if s.host.capacity is not None]
    if not caps:
        return []
    blocks: list[Block] = [Heading("Capacity per host")]
    s = choice.scenario
    if s is not None and s.host.capacity is not None:
        blocks.append(_capacity_text(s, s.host.capacity))
    rows = []
    for sc, c in caps:
        lo, hi = c.gain_interval or (None, None)
        rows.append(
            {
                "scenario": sc.name,
                "workers_without": c.workers_without,
                "workers_with": c.workers_with,
                "workers_with_low": c.workers_with_interval[0],
                "workers_with_high": c.workers_with_interval[1],
                "capacity_gain": c.gain,
                "capacity_gain_lo": lo,
                "capacity_gain_hi": hi,
                "limited_by": c.limit_with,
                "ksm_net_saved_bytes": c.ksm_net_saved_bytes,
                "ksmd_cores": c.ksmd_cores,
            }
        )
    blocks.append(
        table(
            "capacity",
            "Workers per host without and with KSM.",
            [
                Column("scenario", "scenario", "text"),
                Column("workers_without", "without KSM", "int"),
                Column("workers_with", "with KSM", "int"),
                Column("workers_with_low", "low", "int"),
                Column("workers_with_high", "high", "int"),
                Column("capacity_gain", "gain", "pct", "%"),
                Column("capacity_gain_lo", "gain low", "pct", "%", hidden=True),
                Column("capacity_gain_hi", "gain high", "pct", "%", hidden=True),
                Column("limited_by", "limit", "text"),
                Column("ksm_net_saved_bytes", "KSM frees", "gib", "GiB"),
                Column("ksmd_cores", "ksmd", "float2", "cores"),
            ],
            rows,
            highlight=[i for i, (sc, _) in enumerate(caps) if s is not None and sc.name == s.name],
        )
    )
    return blocks


def _capacity_text(s: ReviewScenario, c: CapacityEstimate) -> Para:
    n1 = c.workers_with
    share = c.ksm_saved_fraction_at_workers_with
    traced = s.host.net_saved_fraction
    if share > traced:
        why = (
            "The saving share at this size is larger than on the traced host "
            f"({F.pct(traced)}): every added worker duplicates content the others already "
            "hold, while the base does not grow."
        )
    else:
        why = (
            "The saving share at this size is not larger than on the traced host "
            f"({F.pct(traced)}): added workers bring little content the others already hold."
        )
    return Para(
        f"On a host with {F.gib(c.host_mem_bytes)} of memory, keeping "
        f"{F.gib(c.headroom_bytes)} free, {F.gib(c.budget_bytes)} is left for the service. "
        f"Without KSM each worker needs {F.mib(c.worker_bytes)}"
        + (
            f" ({F.mib(c.per_worker_anon_bytes)} of anonymous memory from the "
            f"trace and {F.mib(c.worker_other_bytes)} outside it)"
            if c.worker_other_bytes
            else " of anonymous memory"
        )
        + f" next to {F.mib(c.base_bytes)} of processes that do not scale, so "
        f"**{F.integer(c.workers_without)} workers** fit (limited by "
        f"{c.limit_without}). With KSM under `{s.name}`, "
        f"{F.integer(n1)} workers would need {F.gib(c.without_ksm_at_workers_with_bytes)} "
        f"without KSM, and KSM frees {F.gib(c.ksm_net_saved_bytes)} of it ({F.pct(share)}), so "
        f"**{F.integer(n1)} workers** fit ({F.integer(c.workers_with_interval[0])}–"
        f"{F.integer(c.workers_with_interval[1])} in the "
        f"{F.pct(c.confidence, 0)} interval; limited by {c.limit_with}): "
        f"**{F.pct(c.gain)} more workers per host**. " + why
    )


# ----------------------------------------------------------------------------- 6. time


def _time(inputs: ReviewInputs, choice: Choice) -> Section:
    scen = [s for s in inputs.scenarios if s.enabled]
    blocks: list[Block] = []
    if scen:
        blocks.append(_time_figure(inputs, scen))
    blocks.append(_time_table(scen, choice))
    if choice.scenario is not None:
        blocks.append(_time_text(inputs, choice.scenario))
    return Section(
        "time",
        "Time to benefit",
        tuple(blocks),
        lead="How long after switching KSM on the memory is actually freed.",
    )


def _time_figure(inputs: ReviewInputs, scen: Sequence[ReviewScenario]) -> Figure:
    colors = _colors(inputs.scenarios)
    vary = _vary(inputs)
    by_knobs: dict[str, list[ReviewScenario]] = defaultdict(list)
    for s in scen:
        by_knobs[_knob_label(s, vary)].append(s)
    panels = []
    data_rows: list[dict[str, Any]] = []
    scan_rows: list[dict[str, Any]] = []
    for label, group in by_knobs.items():
        series = []
        for s in group:
            g, sc = s.host.timeline.grid, s.host.timeline.scans
            series.append(
                C.Series(
                    s.policy_set,
                    list(g.t_s),
                    list(g.net_saved_bytes),
                    colors[s.policy_set],
                    sc.t_s,
                    sc.net_saved_bytes,
                )
            )
            data_rows += [
                {"scenario": s.name, "t_s": x, "net_saved_bytes": y}
                for x, y in zip(g.t_s, g.net_saved_bytes, strict=True)
            ]
            scan_rows += [
                {
                    "scenario": s.name,
                    "full_scans": n,
                    "t_s": t,
                    "scan_time_s": d,
                    "net_saved_bytes": v,
                    "pages_sharing": ps,
                }
                for n, t, d, v, ps in zip(
                    sc.full_scans,
                    sc.t_s,
                    sc.scan_time_s,
                    sc.net_saved_bytes,
                    sc.pages_sharing,
                    strict=True,
                )
            ]
        panels.append(C.Panel(label, series, inputs.trace.snapshot_times_s))
    return Figure(
        "time-to-benefit",
        "Saved memory over time",
        C.time_panels("time-to-benefit", "Saved memory over time (net of metadata)", panels),
        "Memory freed net of KSM metadata, from the moment KSM is switched on, one panel "
        "per knob setting and one line per policy set. Dots mark the end of each full "
        "scan; "
        "dotted vertical lines are the trace's snapshots. The saving can only grow at the "
        "end of a scan: a page merges after its content stayed the same for a full scan.",
        (
            table(
                "time-to-benefit",
                "Saved memory on the time grid",
                [
                    Column("scenario", "scenario", "text"),
                    Column("t_s", "time", "float1", "s"),
                    Column("net_saved_bytes", "saved, net", "mib", "MiB"),
                ],
                data_rows,
            ),
            table(
                "full-scans",
                "Every full scan of every scenario",
                [
                    Column("scenario", "scenario", "text"),
                    Column("full_scans", "full scan", "int"),
                    Column("t_s", "ends at", "float2", "s"),
                    Column("scan_time_s", "duration", "float2", "s"),
                    Column("net_saved_bytes", "saved, net", "mib", "MiB"),
                    Column("pages_sharing", "pages_sharing", "int"),
                ],
                scan_rows,
            ),
        ),
    )


def _time_table(scen: Sequence[ReviewScenario], choice: Choice) -> Table:
    rows = [
        {
            "scenario": s.name,
            "time_to_50_s": s.host.time_to_50_s,
            "time_to_90_s": s.host.time_to_90_s,
            "time_to_99_s": s.host.time_to_99_s,
            "scans_to_90": s.host.full_scans_to_90,
            "full_scan_s": s.host.full_scan_s,
            "projected_full_scan_s": s.host.projected_full_scan_s,
            "projected_time_to_90_s": s.host.projected_time_to_90_s,
        }
        for s in scen
    ]
    projected = any(r["projected_time_to_90_s"] is not None for r in rows)
    return table(
        "time-to-saving",
        "Time to 50, 90 and 99 % of the steady-state saving"
        + (", on the traced host and (≈) on the projected host." if projected else "."),
        [
            Column("scenario", "scenario", "text"),
            Column("time_to_50_s", "50 %", "s"),
            Column("time_to_90_s", "90 %", "s"),
            Column("time_to_99_s", "99 %", "s"),
            Column("scans_to_90", "full scans to 90 %", "int"),
            Column("full_scan_s", "full scan", "s"),
            Column("projected_full_scan_s", "≈ full scan, projected", "s", hidden=not projected),
            Column("projected_time_to_90_s", "≈ 90 %, projected", "s", hidden=not projected),
        ],
        rows,
        highlight=[
            i for i, s in enumerate(scen) if choice.scenario and s.name == choice.scenario.name
        ],
    )


def _time_text(inputs: ReviewInputs, s: ReviewScenario) -> Para:
    h = s.host
    text = (
        f"Under the recommendation a full scan of the {F.integer(inputs.state.snapshot.pages)} "
        f"traced pages takes {F.seconds(h.full_scan_s)} at steady state, and 90 % of the saving "
        f"arrives after {_t(h.time_to_90_s)}. A full scan takes time in proportion to the "
        "pages it visits"
    )
    if h.host_scale is not None:
        text += (
            f": on the projected host ({F.integer(h.projected_workers)} workers, "
            f"{F.fixed(h.host_scale, 1)} times the mergeable pages) expect about "
            f"{F.seconds(h.projected_full_scan_s)} per full scan and 90 % of the saving "
            f"after about {_t(h.projected_time_to_90_s)} (the replay's times scaled by the "
            "pages to scan; an estimate)."
        )
    else:
        text += (
            ": on a host with ten times the anonymous memory under the same knobs, expect "
            f"about {F.seconds(10 * h.full_scan_s if h.full_scan_s is not None else None)} "
            "per full scan and a time to benefit about ten times longer."
        )
    text += (
        " Every worker that is restarted starts from scratch: its pages merge only after "
        "two full scans."
    )
    return Para(text)


# ----------------------------------------------------------------------------- 7. cost


def _cost(inputs: ReviewInputs, choice: Choice) -> Section:
    scen = [s for s in inputs.scenarios if s.enabled]
    blocks: list[Block] = []
    if scen:
        blocks += _cost_figures(inputs, choice, scen)
    if choice.scenario is not None:
        h = choice.scenario.host
        blocks.append(
            Para(
                "The recommended scenario keeps ksmd at "
                f"{F.percent(h.ksmd_cpu_percent)} of one core once settled "
                f"({F.percent(h.ksmd_cpu_percent_from_start)} averaged over the whole replay, "
                f"start-up included). It scans {F.integer(h.pages_scanned_per_full_scan)} pages "
                f"per full scan and smart scan skips another "
                f"{F.integer(h.pages_skipped_per_full_scan)}: {F.fixed(h.ksmd_cores, 2)} cores "
                "in all. For scale, Meta reported that cutting ksmd's CPU by a quarter saved "
                "1–2 % of a 32-CPU Instagram host, so ksmd used roughly 1.3–2.6 cores there "
                "(64 GB hosts merging about 5 million pages)."
            )
        )
    return Section(
        "cost",
        "Cost",
        tuple(blocks),
        lead="What ksmd costs in CPU for each scenario, and which scenarios are worth it.",
    )


def _cost_figures(
    inputs: ReviewInputs, choice: Choice, scen: Sequence[ReviewScenario]
) -> list[Block]:
    colors = _colors(inputs.scenarios)
    chosen = choice.scenario.name if choice.scenario else None
    points = [
        C.Point(
            s.name,
            s.host.ksmd_cpu_percent,
            float(s.host.net_saved_bytes),
            colors[s.policy_set],
            s.pareto,
            s.name == chosen,
        )
        for s in scen
    ]
    legend = [(p, c) for p, c in colors.items() if any(s.policy_set == p for s in scen)]
    rows = [
        {
            "scenario": s.name,
            "steady_cpu_percent": s.host.ksmd_cpu_percent,
            "cpu_percent": s.host.ksmd_cpu_percent_from_start,
            "cpu_s": s.host.ksmd_cpu_s,
            "net_saved_bytes": s.host.net_saved_bytes,
            "pages_per_full_scan": s.host.pages_scanned_per_full_scan or 0.0,
            "pages_skipped_per_full_scan": s.host.pages_skipped_per_full_scan or 0.0,
            "full_scan_s": s.host.full_scan_s,
            "pareto": s.pareto,
        }
        for s in scen
    ]
    cost = Figure(
        "cost-pareto",
        "Saving against ksmd CPU",
        C.pareto(
            "cost-pareto", "Net saving against ksmd CPU at steady state", points, legend=legend
        ),
        "Each dot is a scenario, coloured by policy set. Ringed dots are on the Pareto "
        "front (no other scenario saves more for less CPU); the large ring is the "
        "recommendation.",
        (
            table(
                "cost",
                "ksmd cost per scenario",
                [
                    Column("scenario", "scenario", "text"),
                    Column("steady_cpu_percent", "CPU at steady state", "percent", "% core"),
                    Column("cpu_percent", "CPU from the start", "percent", "% core"),
                    Column("cpu_s", "CPU in the replay", "float2", "s"),
                    Column("net_saved_bytes", "saved, net", "mib", "MiB"),
                    Column("pages_per_full_scan", "pages / full scan", "int"),
                    Column("pages_skipped_per_full_scan", "skipped / full scan", "int"),
                    Column("full_scan_s", "full scan", "s"),
                    Column("pareto", "Pareto", "bool"),
                ],
                rows,
            ),
        ),
    )
    pages = Figure(
        "pages-per-scan",
        "Pages scanned per full scan",
        C.bars(
            "pages-per-scan",
            "Pages scanned per full scan at steady state",
            [s.name for s in scen],
            [s.host.pages_scanned_per_full_scan or 0.0 for s in scen],
            colors=[colors[s.policy_set] for s in scen],
            xlabel="pages",
        ),
        "Pages ksmd compares per full scan once the saving has settled (`pages_scanned` "
        "per full scan). Smart scan skips pages that keep failing to merge, so this is "
        "below the number of registered pages.",
        (),
    )
    return [cost, pages]


# ----------------------------------------------------------------------------- 8. attribution


def _attribution(inputs: ReviewInputs, choice: Choice) -> Section:
    s = choice.scenario
    if s is None:
        return Section("attribution", "Attribution", (Para("No scenario was recommended."),))
    rows = _attribution_rows(inputs, s)
    losers = [r for r in rows if r["net_loss"]]
    blocks: list[Block] = [
        Para(
            f"Per process under `{s.name}`, with the kernel's own accounting "
            "(`/proc/<pid>/ksm_stat`): *profit* is the memory its merged pages free minus 64 bytes "
            "per page ksmd tracks for it. A process with more than "
            f"{NET_LOSS_RATIO} tracked pages (rmap_items) per merging page loses memory through "
            "KSM and should not be registered. "
            + (
                f"**{len(losers)} process(es) lose memory**: "
                + ", ".join(f"pid {r['pid']} ({F.size(r['profit_bytes'])})" for r in losers)
                + "."
                if losers
                else "No registered process loses memory."
            )
        ),
        _attribution_figure(s, rows),
        _attribution_groups(rows),
    ]
    return Section(
        "attribution",
        "Attribution",
        tuple(blocks),
        lead="Which processes and cgroups benefit, and which would lose memory.",
    )


def _attribution_rows(inputs: ReviewInputs, s: ReviewScenario) -> list[dict[str, Any]]:
    """One row per process: its role in the trace and its ``ksm_stat`` under ``s``."""
    roles = {r.pid: r for r in inputs.state.roles}
    rows: list[dict[str, Any]] = []
    for p in s.host.processes:
        role = roles.get(p.pid)
        ratio = p.items_per_merging_page
        rows.append(
            {
                "pid": str(p.pid),
                "role": role.short if role else "",
                "group": role.role if role else "",
                "cgroup": (role.cgroup if role else None) or "",
                "registration": p.mode + (f" ({p.rule})" if p.rule else ""),
                "domain": p.domain or "",
                "rmap_items": p.ksm_rmap_items,
                "merging_pages": p.ksm_merging_pages,
                "items_per_merging_page": ratio if math.isfinite(ratio) else None,
                "profit_bytes": p.ksm_process_profit,
                "net_loss": p.ksm_process_profit < 0,
            }
        )
    return rows


def _attribution_figure(s: ReviewScenario, rows: list[dict[str, Any]]) -> Figure:
    shown = [r for r in rows if r["registration"] != "off" or r["rmap_items"]]
    return Figure(
        "attribution",
        "KSM profit per process",
        C.bars(
            "attribution",
            f"KSM profit per process ({s.name})",
            [f"{r['pid']} {r['role']}" for r in shown],
            [r["profit_bytes"] / F.MIB for r in shown],
            colors=[C.BAD if r["net_loss"] else C.GOOD for r in shown],
            xlabel="profit (MiB)",
            value_fmt="{:,.1f}",
        ),
        "Memory each process gains from KSM at steady state (its `ksm_process_profit`). Red "
        "bars lose memory. The profits add up to more than the host saves: the kernel counts "
        "every page a process maps from a KSM page, including the one copy that is kept "
        "(the sum exceeds `general_profit` by `pages_shared` pages).",
        (
            table(
                "attribution",
                "Per-process KSM accounting at steady state.",
                [
                    Column("pid", "pid", "text"),
                    Column("role", "role", "text"),
                    Column("group", "process group", "text"),
                    Column("cgroup", "cgroup", "text"),
                    Column("registration", "registered", "text"),
                    Column("domain", "domain", "text"),
                    Column("rmap_items", "rmap_items", "int"),
                    Column("merging_pages", "merging pages", "int"),
                    Column("items_per_merging_page", "items / merging", "ratio"),
                    Column("profit_bytes", "profit", "mib", "MiB"),
                    Column("net_loss", "net loss", "bool"),
                ],
                rows,
            ),
        ),
    )


def _attribution_groups(rows: list[dict[str, Any]]) -> Table:
    """The processes' counters added up per cgroup and per process group."""
    agg: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        for kind, key in (("cgroup", r["cgroup"] or "(none)"), ("process group", r["group"])):
            a = agg.setdefault(
                (kind, key),
                {
                    "by": kind,
                    "group": key,
                    "processes": 0,
                    "merging_pages": 0,
                    "rmap_items": 0,
                    "profit_bytes": 0,
                },
            )
            a["processes"] += 1
            a["merging_pages"] += r["merging_pages"]
            a["rmap_items"] += r["rmap_items"]
            a["profit_bytes"] += r["profit_bytes"]
    return table(
        "attribution-groups",
        "KSM profit by cgroup and by process group.",
        [
            Column("by", "by", "text"),
            Column("group", "group", "text"),
            Column("processes", "processes", "int"),
            Column("rmap_items", "rmap_items", "int"),
            Column("merging_pages", "merging pages", "int"),
            Column("profit_bytes", "profit", "mib", "MiB"),
        ],
        sorted(agg.values(), key=lambda a: (a["by"], a["group"])),
    )


# ----------------------------------------------------------------------------- 9. risks


def _risks(inputs: ReviewInputs, choice: Choice) -> Section:
    return Section(
        "risks",
        "Risks",
        (
            Heading("Merging across security domains"),
            *_domain_blocks(inputs),
            Heading("Copy-on-write breaks"),
            *_cow_blocks(inputs),
            Heading("Unmerging at once"),
            *_unmerge_blocks(inputs),
        ),
        lead="What can go wrong: security, latency, and the memory needed to turn KSM off.",
    )


def _domain_blocks(inputs: ReviewInputs) -> list[Block]:
    rows = []
    for s in inputs.scenarios:
        if not s.enabled:
            continue
        doms = s.host.domains
        rows.append(
            {
                "scenario": s.name,
                "domains": ", ".join(doms) if doms and doms != ("(none)",) else "(one, undeclared)",
                "mode": s.domain_mode or "n/a",
                "cross_domain_saved_bytes": s.host.cross_domain_saved_bytes
                if len(doms) > 1
                else None,
                "merged_together": "; ".join(" + ".join(p.domains) for p in s.host.domain_pairs)
                or "none",
            }
        )
    declared = any(len(s.host.domains) > 1 for s in inputs.scenarios)
    blocks: list[Block] = [
        Para(
            "KSM makes two processes share a physical page when their contents are equal. Between "
            "processes that do not trust each other this is a side channel (timing of "
            "copy-on-write, Rowhammer on the shared page); hosting providers usually forbid it. "
            + (
                "The policy sets declare security domains; the table shows how much saving "
                "crossed them and which domains were merged together."
                if declared
                else "No policy set declares security domains, so every registered process is "
                "treated as one domain: fine for the workers of one service, not for tenants. "
                "Declare domains in a policy file to see what merging across them is worth."
            )
        )
    ]
    if declared:
        blocks.append(
            table(
                "domains",
                "Saving across security domains per scenario.",
                [
                    Column("scenario", "scenario", "text"),
                    Column("domains", "domains", "text"),
                    Column("mode", "cross-domain", "text"),
                    Column("cross_domain_saved_bytes", "saved across", "mib", "MiB"),
                    Column("merged_together", "merged together", "text"),
                ],
                rows,
            )
        )
    return blocks


def _cow_blocks(inputs: ReviewInputs) -> list[Block]:
    cow = inputs.cow
    return [
        Para(
            "A write to a merged page makes the kernel copy it first (a page fault and a 4 KiB "
            "copy) and takes back one frame. Between consecutive snapshots, "
            f"{_rate(cow.breaks_per_s)} pages per second that KSM would hold merged were "
            f"rewritten ({F.pct(cow.rewritten_fraction_per_min)} of them per minute), i.e. "
            f"{F.mib(cow.bytes_per_s, 2)}/s of new copies. This is counted from the trace, "
            "before any policy: it is a lower bound on writes (several writes between snapshots "
            "count once) and an upper bound on breaks of pages KSM had actually merged."
        ),
        table(
            "cow-breaks",
            "Rewrites of mergeable pages between consecutive snapshots.",
            [
                Column("t0_s", "from", "float1", "s"),
                Column("t1_s", "to", "float1", "s"),
                Column("mergeable_pages", "mergeable pages", "int"),
                Column("rewritten_pages", "rewritten", "int"),
                Column("breaks_per_s", "per second", "float1"),
                Column("rewritten_fraction", "share rewritten", "pct", "%"),
            ],
            [
                {
                    "t0_s": i.t0_s,
                    "t1_s": i.t1_s,
                    "mergeable_pages": i.mergeable_pages,
                    "rewritten_pages": i.rewritten_pages,
                    "breaks_per_s": i.breaks_per_s,
                    "rewritten_fraction": i.rewritten_fraction,
                }
                for i in cow.intervals
            ],
        ),
    ]


def _unmerge_blocks(inputs: ReviewInputs) -> list[Block]:
    scen = [s for s in inputs.scenarios if s.enabled]
    projected = any(s.host.capacity is not None for s in scen)
    return [
        Para(
            "Switching KSM off (`echo 2 > /sys/kernel/mm/ksm/run`, or a process leaving it) "
            "gives every merged page its own copy again, immediately. The host must have that "
            "memory free, or the unmerge runs into the OOM killer. Plan the headroom for it."
        ),
        table(
            "unmerge",
            "Memory an unmerge needs at once, per scenario (steady state), on the traced host"
            + (" and on the projected host." if projected else "."),
            [
                Column("scenario", "scenario", "text"),
                Column("saved_bytes", "needed at once", "mib", "MiB"),
                Column("saved_fraction", "of anon", "pct", "%"),
                Column("workers_with", "workers, projected", "int", hidden=not projected),
                Column(
                    "projected_saved_bytes", "needed, projected", "gib", "GiB", hidden=not projected
                ),
            ],
            [
                {
                    "scenario": s.name,
                    "saved_bytes": s.host.saved_bytes,
                    "saved_fraction": s.host.saved_fraction,
                    "workers_with": c.workers_with if c else None,
                    "projected_saved_bytes": c.ksm_saved_bytes if c else None,
                }
                for s in scen
                for c in (s.host.capacity,)
            ],
        ),
    ]


# ----------------------------------------------------------------------------- 10. sensitivity


def _sensitivity(inputs: ReviewInputs, choice: Choice) -> Section:
    scen = [s for s in inputs.scenarios if s.enabled]
    blocks: list[Block] = [_intervals_block(scen)]
    fit = _fit_of(inputs, choice.scenario)
    if fit is not None and fit.curve is not None:
        blocks.append(_growth_figure(fit))
    effects = {e.knob: e for e in inputs.whatif.knob_effects}
    numeric = [k for k in _vary(inputs) if k in effects]
    for knob in numeric[:2]:
        figure = _knob_figure(inputs, effects[knob])
        if figure is None:
            break
        blocks.append(figure)
    rng = inputs.whatif.saving_range
    if scen and rng is not None:
        blocks.append(_saving_range_para(inputs, rng))
    return Section(
        "sensitivity",
        "Sensitivity",
        tuple(blocks),
        lead="How certain the result is, and how it moves with the knobs.",
    )


def _intervals_block(scen: Sequence[ReviewScenario]) -> Block:
    ivs = [s for s in scen if s.host.capacity is not None or s.host.projected is not None]
    if not ivs:
        return Para(
            "No interval was computed: this review is about the traced host alone. Give the "
            "host's memory (`--host-mem`) and a replica count to project the saving to a full "
            "host with bootstrap intervals."
        )
    rows = []
    for s in ivs:
        cap = s.host.capacity
        lo, hi = (cap.gain_interval or (None, None)) if cap is not None else (None, None)
        iv = s.host.projected.net_saved_fraction if s.host.projected is not None else None
        rows.append(
            {
                "scenario": s.name,
                "capacity_gain": cap.gain if cap else None,
                "capacity_gain_lo": lo,
                "capacity_gain_hi": hi,
                "saving_fraction": iv.value if iv else None,
                "saving_fraction_lo": iv.low if iv else None,
                "saving_fraction_hi": iv.high if iv else None,
            }
        )
    no_saving = all(r["saving_fraction"] is None for r in rows)
    no_gain = all(r["capacity_gain"] is None for r in rows)
    return table(
        "intervals",
        "Intervals of the projected saving and capacity gain.",
        [
            Column("scenario", "scenario", "text"),
            Column("saving_fraction", "saving", "pct", "%", hidden=no_saving),
            Column("saving_fraction_lo", "low", "pct", "%", hidden=no_saving),
            Column("saving_fraction_hi", "high", "pct", "%", hidden=no_saving),
            Column("capacity_gain", "capacity gain", "pct", "%", hidden=no_gain),
            Column("capacity_gain_lo", "low", "pct", "%", hidden=no_gain),
            Column("capacity_gain_hi", "high", "pct", "%", hidden=no_gain),
        ],
        rows,
        note=(
            "The intervals are bootstrap intervals over the traced replicas: how much "
            "the result depends on which workers happened to be in the trace. They do "
            "not cover the model's own error (see [Validation](#validation))."
        ),
    )


def knob_sentence(effect: KnobEffect) -> str:
    """What one knob does to the scenarios, in words that follow from ``effect``."""
    spread = F.pct(effect.saving_spread)
    knob = f"`{effect.knob}`"
    if effect.saving_spread > NEAR_BEST:
        head = (
            f"For the same policy set, the steady-state saving moves by up to {spread} across "
            f"the values of {knob}: the knob changes how much is saved, not only how fast and "
            "at what CPU."
        )
        return head
    head = (
        f"For the same policy set, the steady-state saving moves by at most {spread} across "
        f"the values of {knob}: "
    )
    if effect.trades_cpu_for_speed:
        return head + "the knob buys speed with CPU, not memory."
    return head + (
        "the knob hardly changes the memory saved; a larger value is not always faster "
        "and costlier (see the table)."
    )


def _knob_figure(inputs: ReviewInputs, effect: KnobEffect) -> Figure | None:
    """Time to 90 % against one knob, a line per group of scenarios (None: too many lines)."""
    knob = effect.knob
    colors = _colors(inputs.scenarios)
    others = [k for k in _vary(inputs) if k != knob]
    lines = []
    for g in effect.groups:
        group = [inputs.scenario_by_id(i) for i in g.scenario_ids]
        rest = knobs_text(group[0].knob_values, others)
        lines.append((g.policy_set, rest, group))
    lines.sort(key=lambda x: (x[0], x[1]))
    if len(lines) > 8:
        return None
    series, data = [], []
    for policy, rest, group in lines:
        xs = [float(s.knob_values[knob]) for s in group]
        series.append(
            C.Series(
                policy + (f" ({rest})" if rest else ""),
                xs,
                [s.host.time_to_90_s or math.nan for s in group],
                colors[policy],
            )
        )
        data += [
            {
                "scenario": s.name,
                knob: s.knob_values[knob],
                "net_saved_bytes": s.host.net_saved_bytes,
                "time_to_90_s": s.host.time_to_90_s,
                "steady_cpu_percent": s.host.ksmd_cpu_percent,
            }
            for s in group
        ]
    values = [float(s.knob_values[knob]) for _, _, group in lines for s in group]
    return Figure(
        f"sensitivity-{knob}",
        f"How the result moves with {knob}",
        C.lines(
            f"sensitivity-{knob}",
            f"Time to 90 % of the saving against {knob}",
            series,
            xlabel=knob,
            ylabel="time to 90 % (s)",
            logx=max(values) >= 10 * max(1.0, min(values)),
        ),
        f"Time to 90 % of the saving as `{knob}` changes, other knobs held. "
        + knob_sentence(effect),
        (
            table(
                f"sensitivity-{knob}",
                f"Results against {knob}",
                [
                    Column("scenario", "scenario", "text"),
                    Column(knob, knob, "int"),
                    Column("net_saved_bytes", "saved, net", "mib", "MiB"),
                    Column("time_to_90_s", "to 90 %", "s"),
                    Column("steady_cpu_percent", "ksmd CPU", "percent", "% core"),
                ],
                data,
            ),
        ),
    )


def range_sentence(rng: SavingRange) -> str:
    """What decides the saving -- the policy set or the knobs -- as ``rng`` says."""
    within, across = rng.within_sets, rng.across_sets
    if across is None:
        return (
            f"one policy set uses KSM, and its knob settings move its saving by at most "
            f"{F.pct(within)}."
        )
    if within <= NEAR_BEST < across:
        return (
            "the policy set decides the saving (the sets' best differ by up to "
            f"{F.pct(across)}), the knobs decide how fast it comes and what it costs (they "
            f"move it by at most {F.pct(within)})."
        )
    if within > NEAR_BEST:
        return (
            f"the knobs matter for the saving too: within one policy set it moves by up to "
            f"{F.pct(within)} (the sets' best differ by {F.pct(across)})."
        )
    return (
        f"the policy sets save about the same (their best within {F.pct(across)}) and the "
        f"knobs move it by at most {F.pct(within)}: choose on speed, CPU and risk."
    )


def _saving_range_para(inputs: ReviewInputs, rng: SavingRange) -> Para:
    lo = inputs.scenario_by_id(rng.lowest)
    hi = inputs.scenario_by_id(rng.highest)
    return Para(
        f"Across the {rng.scenarios} scenarios that use KSM the net saving ranges from "
        f"{F.mib(lo.host.net_saved_bytes)} (`{lo.name}`) to {F.mib(hi.host.net_saved_bytes)} "
        f"(`{hi.name}`); " + range_sentence(rng)
    )


def _growth_figure(fit: ExtrapolationFit) -> Figure:
    curve = fit.curve
    assert curve is not None
    ps = fit.page_size
    ns = [float(n) for n in curve.n]
    series = [
        C.Series("fitted", ns, [100 * v for v in curve.ideal_saved_fraction], C.ACCENT),
        C.Series(
            "measured in the trace",
            [float(n) for n in curve.observed_n],
            [100 * v for v in curve.observed_fraction],
            C.BAD,
            dashed=True,
        ),
    ]
    rows = [
        {
            "replicas": n,
            "frames_bytes": f * ps,
            "ideal_saved_bytes": v * ps,
            "ideal_saved_low_bytes": a * ps,
            "ideal_saved_high_bytes": b * ps,
            "ideal_saved_fraction": sh,
        }
        for n, f, v, a, b, sh in zip(
            curve.n,
            curve.frames,
            curve.ideal_saved_frames,
            curve.low,
            curve.high,
            curve.ideal_saved_fraction,
            strict=True,
        )
    ]
    band = (
        ns,
        [100 * v for v in curve.low_fraction],
        [100 * v for v in curve.high_fraction],
        C.ACCENT,
    )
    return Figure(
        "replica-growth",
        "How the ideal saving grows with the number of workers",
        C.lines(
            "replica-growth",
            f"Ideal saving against workers per host ({fit.policy_set})",
            series,
            xlabel="workers (replicas) on the host",
            ylabel="ideal saving (% of anonymous memory)",
            logx=max(ns) > 50,
            bands=[band],
        ),
        f"The share of anonymous memory an ideal KSM frees with n workers under "
        f"`{fit.policy_set}`: measured in the trace for 1 to {fit.k} workers (dashed), "
        f"fitted and projected beyond (solid, with its {F.pct(fit.confidence, 0)} bootstrap "
        "band). KSM realises a share of this ideal; the capacity numbers use that share.",
        (
            table(
                "replica-growth",
                "Projected memory and ideal saving per number of workers",
                [
                    Column("replicas", "workers", "int"),
                    Column("frames_bytes", "memory without KSM", "gib", "GiB"),
                    Column("ideal_saved_bytes", "ideal saving", "gib", "GiB"),
                    Column("ideal_saved_low_bytes", "low", "gib", "GiB"),
                    Column("ideal_saved_high_bytes", "high", "gib", "GiB"),
                    Column("ideal_saved_fraction", "share", "pct", "%"),
                ],
                rows,
            ),
        ),
    )


# ----------------------------------------------------------------------------- 11. validation


def _validation(inputs: ReviewInputs, choice: Choice) -> Section:
    obs = inputs.whatif.observed
    blocks: list[Block]
    if obs is not None and any(v is not None for v in obs.observed.pages_sharing):
        blocks = _observed_blocks(inputs, obs)
    else:
        blocks = [
            Para(
                "No observed timeline or kernel validation was given, so this review has not "
                "been compared with a real host. To do so, run the recommended policy on a canary "
                "host and record what ksmd really does with `ksm-planner observe`, then rebuild "
                "the review with `--observed DIR`; or replay the trace on this kernel scan by scan "
                "with `ksm-planner validate TRACE --kernel`."
            )
        ]
    checks = _consistency_checks(inputs)
    blocks += [
        Heading("Internal checks"),
        Para(
            "These identities must hold for every scenario; a failure means the numbers above "
            "cannot be trusted. "
            + ("**All passed.**" if all(c["passed"] for c in checks) else "**Some failed.**")
        ),
        table(
            "checks",
            "Consistency checks of the replay results.",
            [
                Column("check", "check", "text"),
                Column("scenarios", "scenarios", "int"),
                Column("failed", "failed", "int"),
                Column("passed", "passed", "bool"),
            ],
            checks,
        ),
    ]
    return Section(
        "validation",
        "Validation",
        tuple(blocks),
        lead="Whether the prediction was compared with a real host, and internal checks.",
    )


def _observed_text(inputs: ReviewInputs, obs: ObservedComparison) -> str:
    """The comparison in words: first merge, mean gap, last sample, knobs."""
    facts = ""
    fo, fp = obs.first_merge_observed_s, obs.first_merge_predicted_s
    if fo is not None and fp is not None:
        facts += (
            f"Merging starts after {F.seconds(fo)} on the host and {F.seconds(fp)} in the replay. "
        )
    gap = obs.mean_relative_gap
    if gap is not None:
        facts += (
            f"Over the second half of the recording the predicted `pages_sharing` is on average "
            f"{F.pct(abs(gap))} {'above' if gap > 0 else 'below'} the observed one."
        )
    err = obs.final_relative_error
    return (
        f"The scenario `{_observed_name(inputs, obs)}` was compared with what KSM really did on "
        f"{obs.source} (`ksm-planner observe`, {len(obs.t_s)} samples over "
        f"{F.seconds(obs.t_s[-1] - obs.t_s[0] if obs.t_s else 0.0)}). "
        + facts
        + " At the last sample the prediction of `pages_sharing` is "
        + (
            f"{F.pct(abs(err))} {'above' if err > 0 else 'below'} the observed value."
            if err is not None and math.isfinite(err)
            else "not comparable (no value)."
        )
        + (
            " The knobs differ: "
            + ", ".join(
                f"`{k}` observed {a}, predicted {b}" for k, (a, b) in obs.knob_differences.items()
            )
            + "."
            if obs.knob_differences
            else " The knobs match."
        )
    )


def _observed_blocks(inputs: ReviewInputs, obs: ObservedComparison) -> list[Block]:
    t = list(obs.t_s)
    nan = math.nan
    series = [
        C.Series(
            "predicted",
            t,
            [nan if v is None else float(v) for v in obs.predicted.pages_sharing],
            C.ACCENT,
        ),
        C.Series(
            "observed",
            t,
            [nan if v is None else float(v) for v in obs.observed.pages_sharing],
            C.BAD,
            dashed=True,
        ),
    ]
    counters = sorted(
        (name, o, p)
        for (name, o), (_, p) in zip(obs.observed.items(), obs.predicted.items(), strict=True)
    )
    rows = []
    for i, ts in enumerate(obs.t_s):
        row: dict[str, Any] = {"t_s": ts}
        for name, o, p in counters:
            row[f"observed_{name}"] = o[i] if i < len(o) else None
            row[f"predicted_{name}"] = p[i] if i < len(p) else None
        rows.append(row)
    keys = [k for k in rows[0] if k != "t_s"] if rows else []
    name = _observed_name(inputs, obs)
    blocks: list[Block] = [
        Para(_observed_text(inputs, obs)),
        Figure(
            "validation",
            "Predicted against observed pages_sharing",
            C.lines(
                "validation",
                "pages_sharing: replay against the observed host",
                series,
                xlabel="time since the recording started (s)",
                ylabel="pages_sharing",
            ),
            f"The replay of `{name}` (solid) against the counter observed on "
            f"{obs.source} (dashed), sampled at the recording's times.",
            (
                table(
                    "validation",
                    "Predicted and observed counters",
                    [Column("t_s", "time", "float1", "s")]
                    + [Column(k, k.replace("_", " "), "int") for k in keys],
                    rows,
                ),
            ),
        ),
        Para(
            "Two things separate a prediction from a canary. The canary runs its own instance "
            "of the workload (other processes, address-space layout and hash seeds, other "
            "requests), whose duplicate content is not exactly the trace's. And the replay "
            "sees writes only where the trace changes (at its snapshots) and holds the last "
            "snapshot still, while the real processes keep writing merged pages (the "
            "copy-on-write breaks of [Risks](#risks)), which lowers the observed level. To "
            "tell the two apart, capture a trace on the canary itself and review that."
        ),
    ]
    blocks += [Callout("note", note) for note in obs.notes]
    return blocks


def _consistency_checks(inputs: ReviewInputs) -> list[dict[str, Any]]:
    scen = inputs.scenarios
    ps = scen[0].host.page_size if scen else 4096
    anon0 = scen[0].host.anon_bytes if scen else 0

    def count(pred: Any) -> dict[str, Any]:
        failed = sum(1 for s in scen if not pred(s.host))
        return {"scenarios": len(scen), "failed": failed, "passed": failed == 0}

    checks = [
        (
            "general_profit = (pages_sharing + ksm_zero_pages) × page size − rmap_items × 64 B",
            lambda h: (
                h.final_counters.general_profit
                == (h.final_counters.pages_sharing + h.final_counters.ksm_zero_pages) * ps
                - h.final_counters.rmap_items * 64
            ),
        ),
        (
            "pages_volatile = rmap_items − shared − sharing − unshared (never negative)",
            lambda h: (
                h.final_counters.pages_volatile
                == h.final_counters.rmap_items
                - h.final_counters.pages_shared
                - h.final_counters.pages_sharing
                - h.final_counters.pages_unshared
                and h.final_counters.pages_volatile >= 0
            ),
        ),
        (
            "per-process profits add up to general_profit + pages_shared × page size",
            lambda h: (
                sum(p.ksm_process_profit for p in h.processes)
                == h.final_counters.general_profit + h.final_counters.pages_shared * ps
            ),
        ),
        (
            "memory freed ≤ policy ideal of the same pages (realisation ≤ 100 %)",
            lambda h: h.saved_bytes <= h.policy_ideal_saved_bytes,
        ),
        ("KSM off frees nothing", lambda h: h.enabled or h.saved_bytes == 0),
        (
            "anonymous memory without KSM is the same in every scenario",
            lambda h: h.anon_bytes == anon0,
        ),
    ]
    return [{"check": name, **count(pred)} for name, pred in checks]


# ----------------------------------------------------------------------------- 12. appendix


def _appendix(inputs: ReviewInputs, choice: Choice) -> Section:
    knob_sets = [s.knob_values for s in inputs.scenarios]
    all_keys = sorted({k for ks in knob_sets for k in ks})
    vary = [k for k in all_keys if len({repr(ks.get(k)) for ks in knob_sets}) > 1]
    common = {k: knob_sets[0].get(k) for k in all_keys if k not in vary} if knob_sets else {}
    knob_rows = [
        {"scenario": s.name, "policy_set": s.policy_set, **{k: str(ks.get(k)) for k in vary}}
        for s, ks in zip(inputs.scenarios, knob_sets, strict=True)
    ]
    chosen = choice.scenario
    blocks: list[Block] = [
        Para("Rebuild this review (same inputs, same bytes):"),
        Code(inputs.command),
        Para("Look at the trace and at single scenarios:"),
        Code(
            f"ksm-planner info {inputs.trace.path}\n"
            + (
                f"ksm-planner replay {inputs.trace.path} --pages-to-scan "
                f"{chosen.knobs.pages_to_scan} --sleep-ms {chosen.knobs.sleep_ms}"
                if chosen
                else ""
            )
        ),
        Para(
            "Knobs common to every scenario: "
            + ", ".join(f"`{k}={v}`" for k, v in common.items())
            + "."
        ),
        table(
            "knobs",
            "The knobs that differ between scenarios.",
            [Column("scenario", "scenario", "text"), Column("policy_set", "policy set", "text")]
            + [Column(k, k, "text") for k in vary],
            knob_rows,
        ),
        table(
            "options",
            "Options of this review.",
            [Column("option", "option", "text"), Column("value", "value", "text")],
            [{"option": k, "value": str(v)} for k, v in inputs.options.items()],
        ),
        Para(
            "Every table and plot of this review is also in `data/` as CSV (raw values: bytes, "
            "fractions, seconds), and `data/review.json` holds them all with the provenance."
        ),
    ]
    return Section(
        "appendix",
        "Appendix: reproduce, configuration, raw tables",
        tuple(blocks),
        lead="Exact commands, the configuration of every scenario, and where the raw data is.",
    )


# ----------------------------------------------------------------------------- the document


def build_review(inputs: ReviewInputs, *, title: str | None = None) -> Document:
    """Write the review of ``inputs`` as a document (deterministic for equal inputs)."""
    choice = recommend(inputs)
    sections = tuple(
        f(inputs, choice)
        for f in (
            _decision,
            _scope,
            _state,
            _method,
            _results,
            _time,
            _cost,
            _attribution,
            _risks,
            _sensitivity,
            _validation,
            _appendix,
        )
    )
    tr = inputs.trace
    version = inputs.options.tool_version
    provenance = {
        "tool_version": version,
        "trace_path": tr.path,
        "trace_hash": tr.trace_hash,
        "hosts": list(tr.hosts),
        "kernel_release": tr.kernel_release,
        "command": inputs.command,
        "recommended": choice.scenario.name if choice.scenario else None,
        "footer": f"Made by {version or 'ksm-planner'} from trace "
        f"`{tr.trace_hash}`. Rebuild: `{inputs.command}`",
    }
    w = inputs.whatif
    data = {
        "recommendation": {
            "scenario": choice.scenario.name if choice.scenario else None,
            "reason": choice.reason,
            "excluded": [{"scenario": n, "why": why} for n, why in choice.excluded],
            "rule": {
                "near_best": NEAR_BEST,
                "max_time_to_90_s": MAX_TIME_TO_90_S,
                "cpu_budget_percent": inputs.cpu_budget_percent,
            },
        },
        "options": dict(inputs.options.items()),
        "extrapolation": {"spec": w.extrapolation, "fits": w.fits} if w.fits else {},
        "comparisons": to_jsonable(
            {"knob_effects": w.knob_effects, "saving_range": w.saving_range}
        ),
        "warnings": list(w.warnings),
    }
    return Document(
        title=title or f"KSM capacity review: {tr.name}",
        subtitle=(
            f"Should we enable kernel samepage merging (KSM) for these processes, how, and what "
            f"does it buy? A replay of trace `{tr.name}` under {len(inputs.scenarios)} scenarios."
        ),
        sections=sections,
        provenance=provenance,
        data=data,
    )


__all__ = [
    "MAX_TIME_TO_90_S",
    "NEAR_BEST",
    "Choice",
    "build_review",
    "knob_sentence",
    "range_sentence",
    "recommend",
]
