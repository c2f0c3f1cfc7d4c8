"""The capacity-planning review: twelve sections written from computed numbers.

:func:`build_review` turns :class:`~planner.report.inputs.ReviewInputs` into a
:class:`~planner.report.doc.Document`. Every sentence that states a number takes it from
the inputs; nothing is computed here that a reader could not find again in the data files
(``data/*.csv``, ``data/review.json``). The sections follow what a capacity review
contains (decision, scope, current state, method, results, time, cost, attribution,
risks, sensitivity, validation, appendix).

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
    table,
)
from planner.report.inputs import knobs_text, varying_knobs

if TYPE_CHECKING:
    from collections.abc import Sequence

    from planner.report.inputs import ReviewInputs, ScenarioOutcome

#: Scenarios whose net saving is within this share of the best count as equally good.
NEAR_BEST = 0.02
#: A recommended scenario must reach 90 % of its saving within this time (seconds).
MAX_TIME_TO_90_S = 600.0
#: The kernel documentation's rule: a process with more rmap_items per merging page loses memory.
NET_LOSS_RATIO = 64


@dataclass(frozen=True)
class Choice:
    """The recommended scenario and why."""

    scenario: ScenarioOutcome | None
    reason: str
    considered: int
    excluded: tuple[tuple[str, str], ...]  # (scenario, why it was left out)


def recommend(inputs: ReviewInputs) -> Choice:
    """Apply the recommendation rule (module docstring) to the scenarios."""
    excluded: list[tuple[str, str]] = []
    pool: list[ScenarioOutcome] = []
    for s in inputs.scenarios:
        if not s.enabled:
            excluded.append((s.name, "KSM off (baseline)"))
        elif s.net_saved_bytes <= 0:
            excluded.append((s.name, "saves nothing net of metadata"))
        elif s.cross_domain_saved_bytes:
            excluded.append((s.name, "merges pages across security domains"))
        elif s.steady_cpu_percent > inputs.cpu_budget_percent:
            excluded.append(
                (
                    s.name,
                    f"ksmd CPU above the budget: {F.percent(s.steady_cpu_percent)} of a core "
                    f"(budget {F.percent(inputs.cpu_budget_percent)})",
                )
            )
        elif (s.decisive_time_to_90_s or math.inf) > MAX_TIME_TO_90_S:
            where = " on the projected host" if s.host_scale is not None else ""
            took = s.decisive_time_to_90_s
            excluded.append(
                (
                    s.name,
                    "too slow: 90 % of its saving takes "
                    + (f"about {F.seconds(took)}" if took is not None else "forever")
                    + f"{where} (limit {F.seconds(MAX_TIME_TO_90_S)})",
                )
            )
        else:
            pool.append(s)
    if inputs.recommended:
        chosen = inputs.scenario(inputs.recommended)
        return Choice(chosen, "named by the caller", len(pool), tuple(excluded))
    if not pool:
        return Choice(None, "no scenario meets the conditions", 0, tuple(excluded))
    best = max(s.net_saved_bytes for s in pool)
    near = [s for s in pool if s.net_saved_bytes >= (1.0 - NEAR_BEST) * best]
    near.sort(key=lambda s: (s.steady_cpu_percent, s.decisive_time_to_90_s or math.inf, s.name))
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


def _colors(scenarios: Sequence[ScenarioOutcome]) -> dict[str, str]:
    """One colour per policy set, in order of appearance."""
    out: dict[str, str] = {}
    for s in scenarios:
        if s.enabled and s.policy_set not in out:
            out[s.policy_set] = C.PALETTE[len(out) % len(C.PALETTE)]
    for s in scenarios:
        out.setdefault(s.policy_set, C.NEUTRAL)
    return out


def _knob_label(s: ScenarioOutcome, varying: Sequence[str]) -> str:
    keys = [k for k in varying if k in s.knobs] or ["pages_to_scan", "sleep_ms"]
    return knobs_text(s.knobs, keys)


def _t(v: float | None) -> str:
    return F.seconds(v) if v is not None else "never"


def _rate(per_s: float) -> str:
    """A rate with as many decimals as it needs: ``117``, ``2.4``, ``0.15``."""
    if not math.isfinite(per_s):
        return F.NA
    return F.fixed(per_s, 0 if per_s >= 10 else 1 if per_s >= 1 else 2)


def _spread(groups: Any) -> float:
    """Largest relative range of the net saving within any group of scenarios."""
    worst = 0.0
    for group in groups:
        vals = [s.net_saved_bytes for s in group]
        if vals and max(vals) > 0:
            worst = max(worst, (max(vals) - min(vals)) / max(vals))
    return worst


def _trace_name(inputs: ReviewInputs) -> str:
    return inputs.trace.name


# ----------------------------------------------------------------------------- sections


def _decision(inputs: ReviewInputs, choice: Choice) -> Section:
    s = choice.scenario
    st = inputs.state.snapshot
    blocks: list[Block] = []
    if s is None:
        blocks.append(
            Callout(
                "warning",
                "No scenario qualifies for a recommendation: "
                + "; ".join(f"`{n}`: {why}" for n, why in choice.excluded[:6])
                + ". Do not enable KSM on the strength of this trace.",
                "No recommendation",
            )
        )
        return Section("decision", "Decision and summary", tuple(blocks))
    cap = s.capacity
    gain_text = ""
    iv = s.saving_interval
    if cap is None and iv is not None:
        gain_text = (
            f" Projected to {F.integer(s.extra.get('target_workers'))} workers per host it "
            f"frees **{F.pct(iv.value)} of the anonymous memory** "
            f"({F.interval(iv.lo, iv.hi, F.pct)}, {F.pct(iv.level, 0)} interval)."
        )
    if cap is not None:
        gain_text = (
            f" On a host with {F.gib(cap.host_mem_bytes, 0)} of memory this means "
            f"**{F.pct(cap.gain.value, 1)} more workers per host** "
            f"({F.integer(cap.workers_without)} → {F.integer(cap.workers_with)} workers; "
            f"{F.interval(cap.gain.lo, cap.gain.hi, F.pct)}, {F.pct(cap.gain.level, 0)} interval)."
        )
    blocks.append(
        Callout(
            "decision",
            f"Enable KSM with policy **{s.policy_set}** ({s.policy_description}) and "
            f"`{knobs_text(s.knobs)}`. "
            f"On the traced host it frees **{F.mib(s.net_saved_bytes)} net of KSM's own "
            f"metadata, {F.pct(s.net_saved_fraction)} of the anonymous memory**, reaches 90 % "
            f"of that after **{_t(s.time_to_s.get('90'))}**"
            + (
                f" (about {_t(s.projected_time_to_90_s)} on the projected host)"
                if s.projected_time_to_90_s is not None
                else ""
            )
            + ", and costs ksmd "
            f"**{F.percent(s.steady_cpu_percent)} of one CPU core** at steady state." + gain_text,
            "Recommendation",
        )
    )
    figs = []
    if cap is not None:
        figs.append(
            KeyFigure(
                "more workers per host (capacity gain)",
                F.pct(cap.gain.value),
                f"{F.pct(cap.gain.level, 0)} interval "
                f"{F.interval(cap.gain.lo, cap.gain.hi, F.pct)}",
            )
        )
    detail = f"{F.pct(s.net_saved_fraction)} of {F.mib(s.anon_bytes)} anonymous memory"
    if s.saving_interval is not None:
        iv = s.saving_interval
        detail += f"; projected {F.interval(iv.lo, iv.hi, F.pct)}"
    figs += [
        KeyFigure("memory freed, net of KSM metadata", F.mib(s.net_saved_bytes), detail),
        KeyFigure(
            "time to 90 % of the saving",
            _t(s.time_to_s.get("90")),
            f"{s.scans_to_90 if s.scans_to_90 is not None else '?'} full scans of "
            f"{F.seconds(s.full_scan_s)}"
            + (
                f"; ≈ {_t(s.projected_time_to_90_s)} on the projected host"
                if s.projected_time_to_90_s is not None
                else ""
            ),
        ),
        KeyFigure(
            "ksmd CPU at steady state",
            F.percent(s.steady_cpu_percent),
            f"of one core; {F.percent(s.cpu_percent)} averaged from the start",
        ),
        KeyFigure(
            "saving that crossed security domains",
            F.mib(s.cross_domain_saved_bytes or 0),
            f"{len(s.domains)} domains, merging across them "
            + ("allowed" if s.domain_mode == "allow" else "denied"),
        )
        if len(s.domains) > 1
        else KeyFigure(
            "merged pages rewritten (copy-on-write)",
            f"{_rate(inputs.cow.breaks_per_s)} /s",
            f"{F.mib(inputs.cow.bytes_per_s, 2)}/s of new copies, from the trace",
        ),
    ]
    blocks.append(KeyFigures(tuple(figs)))
    best = max(inputs.scenarios, key=lambda x: (x.net_saved_bytes, -x.steady_cpu_percent))
    used = [x for x in inputs.scenarios if x.enabled]
    where = " on the projected host" if any(x.host_scale for x in used) else ""
    text = (
        f"The review compared {len(inputs.scenarios)} scenarios (policy sets × ksmd knob "
        f"settings) by replaying the trace `{_trace_name(inputs)}` "
        f"({inputs.trace.processes} processes, {F.mib(st.pages * inputs.state.page_size)} of "
        f"anonymous memory, {inputs.trace.snapshots} snapshots over "
        f"{F.seconds(inputs.trace.time_span_s)}) through a model of the kernel's KSM scanner. "
        f"Of the {len(used)} that use KSM, {choice.considered} merge nothing across security "
        f"domains, keep ksmd under {F.percent(inputs.cpu_budget_percent)} of one core and reach "
        f"90 % of their saving within {F.seconds(MAX_TIME_TO_90_S)}{where}; the recommendation "
        f"is, of those, the {choice.reason}."
    )
    blocks.append(Para(text))
    why = dict(choice.excluded)
    if best.name != s.name:
        blocks.append(
            Para(
                f"The largest net saving of all, {F.mib(best.net_saved_bytes)} (`{best.name}`), "
                f"is only {F.mib(best.net_saved_bytes - s.net_saved_bytes)} more"
                + (
                    " (it is left out, see below)."
                    if best.name in why
                    else f" and costs {F.percent(best.steady_cpu_percent)} of a core."
                )
            )
        )
    left_out = [(n, w) for n, w in choice.excluded if w != "KSM off (baseline)"]
    if left_out:
        blocks.append(Para("The scenarios left out, and why:"))
        blocks.append(
            Bullets(
                tuple(f"`{n}`: {w}" for n, w in left_out),
            )
        )
    ideal = st.ideal_saved_frames * inputs.state.page_size
    blocks.append(
        Para(
            f"For scale: if every duplicate page merged at once, KSM could free at most "
            f"{F.mib(ideal)} ({F.pct(st.ideal_saved_fraction)} of physical frames) at the last "
            f"snapshot; the recommended scenario realises {F.pct(s.realization)} of the "
            f"ideal for the pages it makes mergeable. Forking already shares "
            f"{F.mib(st.fork_shared_pages * inputs.state.page_size)} without KSM."
        )
    )
    blocks.append(
        Bullets(
            (
                "The figures are for the traced processes over the traced window; [Method]"
                "(#method) lists what the replay does not model.",
                f"Copy-on-write breaks: about {_rate(inputs.cow.breaks_per_s)} merged pages "
                f"per second would be written and copied again ([Risks](#risks)).",
                "Switching KSM off again (unmerge) needs the whole saving back at once: "
                f"{F.mib(s.saved_bytes)} on the traced host.",
                *_canary_bullet(inputs),
            )
        )
    )
    return Section(
        "decision",
        "Decision and summary",
        tuple(blocks),
        lead="What to do, and the number that matters.",
    )


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
    rows.append({"item": "review made by", "value": str(inputs.options.get("tool_version", ""))})
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
    policies = sorted({(s.policy_set, s.policy_description) for s in inputs.scenarios})
    knob_sets = [dict(s.knobs) for s in inputs.scenarios]
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


def _state(inputs: ReviewInputs, choice: Choice) -> Section:
    cs = inputs.state
    st = cs.snapshot
    ps = cs.page_size
    anon = st.pages * ps
    frames = st.frames * ps
    fork = st.fork_shared_pages * ps
    ideal = st.ideal_saved_frames * ps
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
                    f"{F.pct(st.ideal_saved_fraction)} of physical",
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

    def stacks(groups: Sequence[Any]) -> list[C.Stack]:
        return [
            C.Stack("already shared by fork", [g.fork_shared_pages * ps for g in groups], C.ACCENT),
            C.Stack(
                "duplicate: KSM could free", [g.ideal_saved_frames * ps for g in groups], C.GOOD
            ),
            C.Stack(
                "unique content (stays)",
                [(g.pages - g.fork_shared_pages - g.ideal_saved_frames) * ps for g in groups],
                C.NEUTRAL,
            ),
        ]

    cols = [
        Column("group", "group", "text"),
        Column("pages_bytes", "mapped", "mib", "MiB"),
        Column("fork_shared_bytes", "shared by fork", "mib", "MiB"),
        Column("ideal_saved_bytes", "KSM could free", "mib", "MiB"),
        Column("unique_bytes", "unique", "mib", "MiB"),
        Column("zero_pages", "zero pages", "int"),
        Column("ideal_fraction", "could free", "pct", "% of mapped"),
    ]

    def rows(groups: Sequence[Any]) -> list[dict[str, Any]]:
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
    opts = inputs.options
    s0 = inputs.scenarios[0] if inputs.scenarios else None
    settle = opts.get("settle_scans", "?")
    cost = (s0.knobs.get("cost_profile") if s0 else None) or opts.get("cost_profile", "default")
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
                "scans that started after the last snapshot, and averaged from the start.",
                "**Time to benefit** is measured from the first snapshot, i.e. from the moment "
                "KSM is switched on for processes already running.",
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
        spec = (inputs.extrapolation or {}).get("spec") or {}
        ps = int(fit["page_size"])
        fr = fit["fit"]
        per_worker = fr["frames_b"] * ps
        unique = fr["distinct_b"] * ps
        err = fit.get("holdout_relative_error")
        blocks.append(Heading("From the traced workers to a full host"))
        blocks.append(
            Para(
                f"The trace holds {fit['k']} replicas (group `{fit['group']}`: pids "
                f"{', '.join(map(str, fit['group_pids']))}); the other processes "
                f"({', '.join(map(str, fit['base_pids'])) or 'none'}) are the base that does not "
                "grow with the number of workers. For every subset of 1 to "
                f"{fit['k']} replicas ({spec.get('orders', '?')} random orders) the ideal saving "
                "is measured exactly from the trace, and a curve is fitted to it "
                f"({spec.get('model', '?')} model, scipy): each replica adds "
                f"{F.mib(per_worker)} of anonymous memory, of which {F.mib(unique)} is content "
                "no other replica has"
                + (
                    f" plus a share of a common pool of {F.mib(fr['distinct_c'] * ps)}"
                    if fr.get("distinct_c")
                    else ""
                )
                + ". The projected ideal saving is multiplied by the realisation the replay "
                "measured (what KSM really merges under the knobs) and KSM's metadata is "
                f"subtracted. Intervals are {F.pct(fit['confidence'], 0)} percentile bootstrap "
                f"intervals over {spec.get('n_resamples', '?')} resamples of the replicas: "
                "they cover which workers happened to be traced, not changes of the workload. "
                + (
                    f"Check: fitted on up to {fit['holdout_fit_upto']} replicas, the curve "
                    f"predicts the exact saving of all {fit['k']} within {F.pct(abs(err))}."
                    if err is not None
                    else ""
                )
            )
        )
    for note in inputs.notes:
        blocks.append(Callout("note", note))
    return Section(
        "method",
        "Method, assumptions and what is not modelled",
        tuple(blocks),
        lead="How the numbers were computed, and where they can be wrong.",
    )


def _scenario_rows(inputs: ReviewInputs) -> list[dict[str, Any]]:
    out = []
    for s in inputs.scenarios:
        cap = s.capacity
        out.append(
            {
                "scenario": s.name,
                "policy_set": s.policy_set,
                "knobs": knobs_text(s.knobs),
                "net_saved_bytes": s.net_saved_bytes,
                "net_saved_fraction": s.net_saved_fraction,
                "time_to_90_s": s.time_to_s.get("90"),
                "steady_cpu_percent": s.steady_cpu_percent,
                "pages_per_full_scan": s.pages_per_full_scan,
                "cross_domain_saved_bytes": s.cross_domain_saved_bytes,
                "capacity_gain": cap.gain.value if cap else None,
                "capacity_gain_lo": cap.gain.lo if cap else None,
                "capacity_gain_hi": cap.gain.hi if cap else None,
                "pareto": s.pareto if s.enabled else None,
            }
        )
    return out


def _results(inputs: ReviewInputs, choice: Choice) -> Section:
    chosen = choice.scenario.name if choice.scenario else None
    rows = _scenario_rows(inputs)
    has_cap = any(r["capacity_gain"] is not None for r in rows)
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
    if has_cap:
        nb = "\u00a0"  # no-break space: the cell never wraps
        for r in rows:
            gain, lo, hi = r["capacity_gain"], r["capacity_gain_lo"], r["capacity_gain_hi"]
            r["capacity_gain_text"] = (
                f"{F.fixed(100 * gain, 1)}{nb}({F.fixed(100 * lo, 1)}{nb}to{nb}"
                f"{F.fixed(100 * hi, 1)})"
                if gain is not None and r["pareto"] is not None
                else None
            )
        cols += [
            Column("capacity_gain_text", "capacity gain (interval)", "text", "%"),
            Column("capacity_gain", "capacity gain", "pct", "%", hidden=True),
            Column("capacity_gain_lo", "low", "pct", "%", hidden=True),
            Column("capacity_gain_hi", "high", "pct", "%", hidden=True),
        ]
    cols.append(Column("pareto", "Pareto", "bool"))
    hl = [i for i, r in enumerate(rows) if r["scenario"] == chosen]
    blocks: list[Block] = [
        Para(
            "Each row is one scenario at steady state. *Saved, net* is the memory KSM frees minus "
            "its own metadata; *of anon* is that as a share of the anonymous memory; *to 90 %* is "
            "the time from switching KSM on until 90 % of the saving is there; *ksmd CPU* is the "
            "scanner's CPU at steady state; *Pareto* marks scenarios that no other scenario beats "
            "on both saving and CPU. The recommended scenario is highlighted."
        ),
        table(
            "scenarios",
            "Scenarios compared.",
            cols,
            [{k: r[k] for k in (c.key for c in cols)} for r in rows],
            highlight=hl,
        ),
    ]
    if choice.scenario is not None and not choice.scenario.pareto:
        why = dict(choice.excluded)
        better = [
            x.name
            for x in inputs.scenarios
            if x.enabled
            and x.net_saved_bytes >= choice.scenario.net_saved_bytes
            and x.steady_cpu_percent <= choice.scenario.steady_cpu_percent
            and x.name != choice.scenario.name
        ]
        blocks.append(
            Para(
                "The recommended scenario is not on the Pareto front of saving against CPU: "
                + "; ".join(
                    f"`{n}` saves at least as much for less CPU but is left out ({why[n]})"
                    if n in why
                    else f"`{n}` saves at least as much for less CPU"
                    for n in better
                )
                + ". Time to benefit is the third criterion."
            )
        )
    if choice.scenario is not None:
        s = choice.scenario
        steps = _waterfall_steps(s, inputs)
        wf_rows = [{"step": st.label, "kind": st.kind, "bytes": st.value} for st in steps]
        blocks.append(
            Figure(
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
        )
        wall = []
        for x in inputs.scenarios:
            st_x = _waterfall_steps(x, inputs)
            wall.append({"scenario": x.name, **{_step_key(st.label): st.value for st in st_x}})
        keys = [k for k in wall[0] if k != "scenario"] if wall else []
        same = {k for k in keys if len({r[k] for r in wall}) == 1}
        first = _waterfall_steps(inputs.scenarios[0], inputs) if inputs.scenarios else []
        blocks.append(
            table(
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
                        f"{st.label} {F.mib(st.value)}"
                        for st in first
                        if _step_key(st.label) in same
                    )
                    + "."
                    if same
                    else ""
                ),
            )
        )
    blocks += _capacity_blocks(inputs, choice, hl)
    return Section(
        "results",
        "Results per scenario",
        tuple(blocks),
        lead="What each policy and knob setting saves, how fast, and at what CPU cost.",
    )


def _fit_of(inputs: ReviewInputs, s: ScenarioOutcome | None) -> dict[str, Any] | None:
    """The extrapolation fit of a scenario's policy set (or the first fit that saves)."""
    fits = list((inputs.extrapolation or {}).get("fits") or [])
    if not fits:
        return None
    if s is not None:
        mode = s.domain_mode or "allow"
        for f in fits:
            if f["policy_set"] == s.policy_set and f["cross_domain"] in (mode, "allow"):
                return dict(f)
    return next((dict(f) for f in fits if any(f["observed_ideal_saved_frames"])), None)


def _capacity_blocks(inputs: ReviewInputs, choice: Choice, hl: Sequence[int]) -> list[Block]:
    caps = [(s, s.capacity) for s in inputs.scenarios if s.capacity is not None]
    if not caps:
        return []
    blocks: list[Block] = [Heading("Capacity per host")]
    s = choice.scenario
    if s is not None and s.capacity is not None:
        c = s.capacity
        x = c.extra
        budget = c.host_mem_bytes - c.headroom_bytes
        n1 = c.workers_with
        mem1 = float(x.get("base_bytes", 0.0)) + n1 * c.worker_bytes_without
        saved = float(x.get("ksm_net_saved_bytes", 0.0))
        blocks.append(
            Para(
                f"On a host with {F.gib(c.host_mem_bytes)} of memory, keeping "
                f"{F.gib(c.headroom_bytes)} free, {F.gib(budget)} is left for the service. "
                f"Without KSM each worker needs {F.mib(c.worker_bytes_without)}"
                + (
                    f" ({F.mib(x.get('per_worker_anon_bytes'))} of anonymous memory from the "
                    f"trace and {F.mib(x.get('worker_other_bytes'))} outside it)"
                    if x.get("worker_other_bytes")
                    else " of anonymous memory"
                )
                + f" next to {F.mib(x.get('base_bytes'))} of processes that do not scale, so "
                f"**{F.integer(c.workers_without)} workers** fit (limited by "
                f"{x.get('limit_without', 'memory')}). With KSM under `{s.name}`, "
                f"{F.integer(n1)} workers would need {F.gib(mem1)} without KSM, and KSM frees "
                f"{F.gib(saved)} of it ({F.pct(saved / mem1 if mem1 else 0.0)}), so "
                f"**{F.integer(n1)} workers** fit ({F.integer(x.get('workers_with_low'))}–"
                f"{F.integer(x.get('workers_with_high'))} in the "
                f"{F.pct(c.gain.level, 0)} interval; limited by {c.limited_by}): "
                f"**{F.pct(c.gain.value)} more workers per host**. The saving share at this "
                "size is larger than on the traced host: every added worker duplicates content "
                "the others already hold, while the base does not grow."
            )
        )
    rows = []
    for sc, c in caps:
        rows.append(
            {
                "scenario": sc.name,
                "workers_without": c.workers_without,
                "workers_with": c.workers_with,
                "workers_with_low": c.extra.get("workers_with_low"),
                "workers_with_high": c.extra.get("workers_with_high"),
                "capacity_gain": c.gain.value,
                "capacity_gain_lo": c.gain.lo,
                "capacity_gain_hi": c.gain.hi,
                "limited_by": c.limited_by,
                "ksm_net_saved_bytes": c.extra.get("ksm_net_saved_bytes"),
                "ksmd_cores": c.extra.get("ksmd_cores"),
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


def _step_key(label: str) -> str:
    return label.replace(" ", "_").replace("-", "_").replace(",", "") + "_bytes"


def _waterfall_steps(s: ScenarioOutcome, inputs: ReviewInputs) -> list[C.Step]:
    ps = s.page_size
    raw = inputs.state.snapshot.pages * ps
    phys = s.anon_bytes
    zero = s.zero_saved_bytes
    content = s.saved_bytes - zero
    return [
        C.Step("raw anonymous", raw, "total"),
        C.Step("fork-shared", raw - phys, "down"),
        C.Step("physical", phys, "total"),
        C.Step("zero pages", zero, "down"),
        C.Step("content merged", content, "down"),
        C.Step("KSM metadata", s.metadata_bytes, "up"),
        C.Step("with KSM", phys - s.net_saved_bytes, "total"),
    ]


def _time(inputs: ReviewInputs, choice: Choice) -> Section:
    scen = [s for s in inputs.scenarios if s.enabled]
    colors = _colors(inputs.scenarios)
    vary = varying_knobs([dict(s.knobs) for s in inputs.scenarios])
    by_knobs: dict[str, list[ScenarioOutcome]] = defaultdict(list)
    for s in scen:
        by_knobs[_knob_label(s, vary)].append(s)
    panels = []
    data_rows: list[dict[str, Any]] = []
    scan_rows: list[dict[str, Any]] = []
    for label, group in by_knobs.items():
        series = []
        for s in group:
            tl = s.timeline
            xs, ys = list(tl.grid_t_s), list(tl.grid_net_saved_bytes)
            series.append(
                C.Series(
                    s.policy_set, xs, ys, colors[s.policy_set], tl.scan_t_s, tl.scan_net_saved_bytes
                )
            )
            data_rows += [
                {"scenario": s.name, "t_s": x, "net_saved_bytes": y}
                for x, y in zip(xs, ys, strict=True)
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
                    tl.scan_full_scans,
                    tl.scan_t_s,
                    tl.scan_time_s,
                    tl.scan_net_saved_bytes,
                    tl.scan_pages_sharing,
                    strict=True,
                )
            ]
        panels.append(C.Panel(label, series, inputs.trace.snapshot_times_s))
    blocks: list[Block] = []
    if panels:
        blocks.append(
            Figure(
                "time-to-benefit",
                "Saved memory over time",
                C.time_panels(
                    "time-to-benefit", "Saved memory over time (net of metadata)", panels
                ),
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
        )
    rows = [
        {
            "scenario": s.name,
            "time_to_50_s": s.time_to_s.get("50"),
            "time_to_90_s": s.time_to_s.get("90"),
            "time_to_99_s": s.time_to_s.get("99"),
            "scans_to_90": s.scans_to_90,
            "full_scan_s": s.full_scan_s,
            "projected_full_scan_s": s.full_scan_s * s.host_scale if s.host_scale else None,
            "projected_time_to_90_s": s.projected_time_to_90_s,
        }
        for s in scen
    ]
    projected = any(r["projected_time_to_90_s"] is not None for r in rows)
    blocks.append(
        table(
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
                Column(
                    "projected_full_scan_s", "≈ full scan, projected", "s", hidden=not projected
                ),
                Column("projected_time_to_90_s", "≈ 90 %, projected", "s", hidden=not projected),
            ],
            rows,
            highlight=[
                i for i, s in enumerate(scen) if choice.scenario and s.name == choice.scenario.name
            ],
        )
    )
    if choice.scenario is not None:
        s = choice.scenario
        pages = inputs.state.snapshot.pages
        text = (
            f"Under the recommendation a full scan of the {F.integer(pages)} traced pages "
            f"takes {F.seconds(s.full_scan_s)} at steady state, and 90 % of the saving arrives "
            f"after {_t(s.time_to_s.get('90'))}. A full scan takes time in proportion to the "
            "pages it visits"
        )
        if s.host_scale is not None:
            target = s.extra.get("target_workers")
            text += (
                f": on the projected host ({F.integer(target)} workers, "
                f"{F.fixed(s.host_scale, 1)} times the mergeable pages) expect about "
                f"{F.seconds(s.full_scan_s * s.host_scale)} per full scan and 90 % of the saving "
                f"after about {_t(s.projected_time_to_90_s)} (the replay's times scaled by the "
                "pages to scan; an estimate)."
            )
        else:
            text += (
                ": on a host with ten times the anonymous memory under the same knobs, expect "
                f"about {F.seconds(10 * s.full_scan_s)} per full scan and a time to benefit "
                "about ten times longer."
            )
        text += (
            " Every worker that is restarted starts from scratch: its pages merge only after "
            "two full scans."
        )
        blocks.append(Para(text))
    return Section(
        "time",
        "Time to benefit",
        tuple(blocks),
        lead="How long after switching KSM on the memory is actually freed.",
    )


def _cost(inputs: ReviewInputs, choice: Choice) -> Section:
    scen = [s for s in inputs.scenarios if s.enabled]
    colors = _colors(inputs.scenarios)
    chosen = choice.scenario.name if choice.scenario else None
    points = [
        C.Point(
            s.name,
            s.steady_cpu_percent,
            float(s.net_saved_bytes),
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
            "steady_cpu_percent": s.steady_cpu_percent,
            "cpu_percent": s.cpu_percent,
            "cpu_s": s.cpu_s,
            "net_saved_bytes": s.net_saved_bytes,
            "pages_per_full_scan": s.pages_per_full_scan,
            "pages_skipped_per_full_scan": s.pages_skipped_per_full_scan,
            "full_scan_s": s.full_scan_s,
            "pareto": s.pareto,
        }
        for s in scen
    ]
    blocks: list[Block] = []
    if scen:
        blocks.append(
            Figure(
                "cost-pareto",
                "Saving against ksmd CPU",
                C.pareto(
                    "cost-pareto",
                    "Net saving against ksmd CPU at steady state",
                    points,
                    legend=legend,
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
                            Column(
                                "steady_cpu_percent", "CPU at steady state", "percent", "% core"
                            ),
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
        )
        blocks.append(
            Figure(
                "pages-per-scan",
                "Pages scanned per full scan",
                C.bars(
                    "pages-per-scan",
                    "Pages scanned per full scan at steady state",
                    [s.name for s in scen],
                    [s.pages_per_full_scan for s in scen],
                    colors=[colors[s.policy_set] for s in scen],
                    xlabel="pages",
                ),
                "Pages ksmd compares per full scan once the saving has settled (`pages_scanned` "
                "per full scan). Smart scan skips pages that keep failing to merge, so this is "
                "below the number of registered pages.",
                (),
            )
        )
    if choice.scenario is not None:
        s = choice.scenario
        blocks.append(
            Para(
                "The recommended scenario keeps ksmd at "
                f"{F.percent(s.steady_cpu_percent)} of one core once settled "
                f"({F.percent(s.cpu_percent)} averaged over the whole replay, start-up included). "
                f"It scans {F.integer(s.pages_per_full_scan)} pages per full scan and "
                f"smart scan skips another {F.integer(s.pages_skipped_per_full_scan)}: "
                f"{F.fixed(s.steady_cpu_percent / 100, 2)} cores in all. For scale, Meta reported "
                "that cutting ksmd's CPU by a quarter saved 1–2 % of a 32-CPU Instagram host, so "
                "ksmd used roughly 1.3–2.6 cores there (64 GB hosts merging about 5 million "
                "pages)."
            )
        )
    return Section(
        "cost",
        "Cost",
        tuple(blocks),
        lead="What ksmd costs in CPU for each scenario, and which scenarios are worth it.",
    )


def _attribution(inputs: ReviewInputs, choice: Choice) -> Section:
    s = choice.scenario
    blocks: list[Block] = []
    if s is None:
        return Section("attribution", "Attribution", (Para("No scenario was recommended."),))
    roles = {r.pid: r for r in inputs.state.roles}
    rows: list[dict[str, Any]] = []
    for p in s.processes:
        role = roles.get(p.pid)
        ratio = p.items_per_merging_page
        rows.append(
            {
                "pid": str(p.pid),
                "role": role.short if role else "",
                "group": role.role if role else "",
                "cgroup": (role.cgroup if role else None) or "",
                "registration": p.registration + (f" ({p.rule})" if p.rule else ""),
                "domain": p.domain or "",
                "rmap_items": p.rmap_items,
                "merging_pages": p.merging_pages,
                "items_per_merging_page": ratio if math.isfinite(ratio) else None,
                "profit_bytes": p.profit_bytes,
                "net_loss": p.profit_bytes < 0,
            }
        )
    losers = [r for r in rows if r["net_loss"]]
    blocks.append(
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
        )
    )
    shown = [r for r in rows if r["registration"] != "off" or r["rmap_items"]]
    blocks.append(
        Figure(
            "attribution",
            "KSM profit per process",
            C.bars(
                "attribution",
                f"KSM profit per process ({s.name})",
                [f"{r['pid']} {r['role']}" for r in shown],
                [r["profit_bytes"] / (1 << 20) for r in shown],
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
    )
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
    blocks.append(
        table(
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
    )
    return Section(
        "attribution",
        "Attribution",
        tuple(blocks),
        lead="Which processes and cgroups benefit, and which would lose memory.",
    )


def _risks(inputs: ReviewInputs, choice: Choice) -> Section:
    cow = inputs.cow
    blocks: list[Block] = [Heading("Merging across security domains")]
    rows = []
    for s in inputs.scenarios:
        if not s.enabled:
            continue
        rows.append(
            {
                "scenario": s.name,
                "domains": ", ".join(s.domains)
                if s.domains and s.domains != ("(none)",)
                else "(one, undeclared)",
                "mode": s.domain_mode or "n/a",
                "cross_domain_saved_bytes": s.cross_domain_saved_bytes,
                "merged_together": "; ".join(f"{a} + {b}" for a, b in s.domains_merged) or "none",
            }
        )
    declared = any(len(s.domains) > 1 for s in inputs.scenarios)
    blocks.append(
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
    )
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
    blocks.append(Heading("Copy-on-write breaks"))
    blocks.append(
        Para(
            "A write to a merged page makes the kernel copy it first (a page fault and a 4 KiB "
            "copy) and takes back one frame. Between consecutive snapshots, "
            f"{_rate(cow.breaks_per_s)} pages per second that KSM would hold merged were "
            f"rewritten ({F.pct(cow.rewritten_fraction_per_min)} of them per minute), i.e. "
            f"{F.mib(cow.bytes_per_s, 2)}/s of new copies. This is counted from the trace, "
            "before any policy: it is a lower bound on writes (several writes between snapshots "
            "count once) and an upper bound on breaks of pages KSM had actually merged."
        )
    )
    blocks.append(
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
        )
    )
    blocks.append(Heading("Unmerging at once"))
    scen = [s for s in inputs.scenarios if s.enabled]
    blocks.append(
        Para(
            "Switching KSM off (`echo 2 > /sys/kernel/mm/ksm/run`, or a process leaving it) "
            "gives every merged page its own copy again, immediately. The host must have that "
            "memory free, or the unmerge runs into the OOM killer. Plan the headroom for it."
        )
    )
    blocks.append(
        table(
            "unmerge",
            "Memory an unmerge needs at once, per scenario (steady state).",
            [
                Column("scenario", "scenario", "text"),
                Column("saved_bytes", "needed at once", "mib", "MiB"),
                Column("saved_fraction", "of anon", "pct", "%"),
            ],
            [
                {
                    "scenario": s.name,
                    "saved_bytes": s.saved_bytes,
                    "saved_fraction": s.saved_bytes / s.anon_bytes if s.anon_bytes else 0.0,
                }
                for s in scen
            ],
        )
    )
    return Section(
        "risks",
        "Risks",
        tuple(blocks),
        lead="What can go wrong: security, latency, and the memory needed to turn KSM off.",
    )


def _sensitivity(inputs: ReviewInputs, choice: Choice) -> Section:
    blocks: list[Block] = []
    scen = [s for s in inputs.scenarios if s.enabled]
    colors = _colors(inputs.scenarios)
    ivs = [s for s in scen if s.capacity is not None or s.saving_interval is not None]
    if ivs:
        rows = []
        for s in ivs:
            row: dict[str, Any] = {"scenario": s.name}
            cap = s.capacity
            row["capacity_gain"] = cap.gain.value if cap else None
            row["capacity_gain_lo"] = cap.gain.lo if cap else None
            row["capacity_gain_hi"] = cap.gain.hi if cap else None
            iv = s.saving_interval
            row["saving_fraction"] = iv.value if iv else None
            row["saving_fraction_lo"] = iv.lo if iv else None
            row["saving_fraction_hi"] = iv.hi if iv else None
            rows.append(row)
        no_saving = all(r["saving_fraction"] is None for r in rows)
        no_gain = all(r["capacity_gain"] is None for r in rows)
        blocks.append(
            table(
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
        )
    else:
        blocks.append(
            Para(
                "No interval was computed: this review is about the traced host alone. Give the "
                "host's memory (`--host-mem`) and a replica count to project the saving to a full "
                "host with bootstrap intervals."
            )
        )
    fit = _fit_of(inputs, choice.scenario)
    if fit is not None and fit.get("curve"):
        blocks.append(_growth_figure(fit, choice))
    vary = varying_knobs([dict(s.knobs) for s in inputs.scenarios])
    numeric = [
        k
        for k in vary
        if all(
            isinstance(s.knobs.get(k), int | float) and not isinstance(s.knobs.get(k), bool)
            for s in scen
        )
    ]
    for knob in numeric[:2]:
        others = [k for k in vary if k != knob]
        groups: dict[tuple[str, str], list[ScenarioOutcome]] = defaultdict(list)
        for s in scen:
            groups[(s.policy_set, knobs_text(s.knobs, others))].append(s)
        series_save, series_t90 = [], []
        data = []
        for (policy, rest), group in sorted(groups.items()):
            group.sort(key=lambda s: float(s.knobs[knob]))
            label = policy + (f" ({rest})" if rest else "")
            xs = [float(s.knobs[knob]) for s in group]
            dashed = (bool(rest) and rest != knobs_text(group[0].knobs, others)) or False
            series_save.append(
                C.Series(
                    label,
                    xs,
                    [float(s.net_saved_bytes) for s in group],
                    colors[policy],
                    dashed=dashed,
                )
            )
            series_t90.append(
                C.Series(
                    label, xs, [s.time_to_s.get("90") or math.nan for s in group], colors[policy]
                )
            )
            data += [
                {
                    "scenario": s.name,
                    knob: s.knobs[knob],
                    "net_saved_bytes": s.net_saved_bytes,
                    "time_to_90_s": s.time_to_s.get("90"),
                    "steady_cpu_percent": s.steady_cpu_percent,
                }
                for s in group
            ]
        if len(series_save) > 8:
            break
        logx = max(float(s.knobs[knob]) for s in scen) >= 10 * max(
            1.0, min(float(s.knobs[knob]) for s in scen)
        )
        blocks.append(
            Figure(
                f"sensitivity-{knob}",
                f"How the result moves with {knob}",
                C.lines(
                    f"sensitivity-{knob}",
                    f"Time to 90 % of the saving against {knob}",
                    series_t90,
                    xlabel=knob,
                    ylabel="time to 90 % (s)",
                    logx=logx,
                ),
                f"Time to 90 % of the saving as `{knob}` changes, other knobs held. For the "
                f"same policy set, the steady-state saving moves by at most "
                f"{F.pct(_spread(groups.values()))} across the values of `{knob}`: "
                "the knob buys speed with CPU, not memory.",
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
        )
    if scen:
        lo = min(scen, key=lambda s: s.net_saved_bytes)
        hi = max(scen, key=lambda s: s.net_saved_bytes)
        blocks.append(
            Para(
                f"Across the {len(scen)} scenarios that use KSM the net saving ranges from "
                f"{F.mib(lo.net_saved_bytes)} (`{lo.name}`) to {F.mib(hi.net_saved_bytes)} "
                f"(`{hi.name}`); the policy set decides the saving, the knobs decide how fast it "
                "comes and what it costs."
            )
        )
    return Section(
        "sensitivity",
        "Sensitivity",
        tuple(blocks),
        lead="How certain the result is, and how it moves with the knobs.",
    )


def _growth_figure(fit: dict[str, Any], choice: Choice) -> Figure:
    curve = fit["curve"]
    ps = int(fit["page_size"])
    ns = [float(n) for n in curve["n"]]
    share = [
        v / f if f else math.nan
        for v, f in zip(curve["ideal_saved_frames"], curve["frames"], strict=True)
    ]
    lo = [v / f if f else math.nan for v, f in zip(curve["low"], curve["frames"], strict=True)]
    hi = [v / f if f else math.nan for v, f in zip(curve["high"], curve["frames"], strict=True)]
    fr = fit["fit"]
    obs_n = [float(n) for n in fit["n"] if n > 0]
    obs_share = []
    for n, v in zip(fit["n"], fit["observed_ideal_saved_frames"], strict=True):
        if n > 0:
            frames = fr["frames_a"] + fr["frames_b"] * n
            obs_share.append(v / frames if frames else math.nan)
    series = [
        C.Series("fitted", ns, [100 * v for v in share], C.ACCENT),
        C.Series("measured in the trace", obs_n, [100 * v for v in obs_share], C.BAD, dashed=True),
    ]
    rows = [
        {
            "replicas": int(n),
            "frames_bytes": f * ps,
            "ideal_saved_bytes": v * ps,
            "ideal_saved_low_bytes": a * ps,
            "ideal_saved_high_bytes": b * ps,
            "ideal_saved_fraction": sh,
        }
        for n, f, v, a, b, sh in zip(
            curve["n"],
            curve["frames"],
            curve["ideal_saved_frames"],
            curve["low"],
            curve["high"],
            share,
            strict=True,
        )
    ]
    logx = max(ns) > 50
    return Figure(
        "replica-growth",
        "How the ideal saving grows with the number of workers",
        C.lines(
            "replica-growth",
            f"Ideal saving against workers per host ({fit['policy_set']})",
            series,
            xlabel="workers (replicas) on the host",
            ylabel="ideal saving (% of anonymous memory)",
            logx=logx,
            bands=[(ns, [100 * v for v in lo], [100 * v for v in hi], C.ACCENT)],
        ),
        f"The share of anonymous memory an ideal KSM frees with n workers under "
        f"`{fit['policy_set']}`: measured in the trace for 1 to {fit['k']} workers (dashed), "
        f"fitted and projected beyond (solid, with its {F.pct(fit['confidence'], 0)} bootstrap "
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


def _validation(inputs: ReviewInputs, choice: Choice) -> Section:
    blocks: list[Block] = []
    obs = inputs.observed
    if obs is not None and "pages_sharing" in obs.observed:
        t = list(obs.t_s)
        series = [
            C.Series(
                "predicted", t, [float(v) for v in obs.predicted.get("pages_sharing", ())], C.ACCENT
            ),
            C.Series(
                "observed",
                t,
                [math.nan if v is None else float(v) for v in obs.observed["pages_sharing"]],
                C.BAD,
                dashed=True,
            ),
        ]
        err = obs.final_relative_error
        blocks.append(
            Para(
                f"The scenario `{obs.scenario}` was compared with what KSM really did on "
                f"{obs.source} (`ksm-planner observe`, {len(obs.t_s)} samples over "
                f"{F.seconds(obs.t_s[-1] - obs.t_s[0] if obs.t_s else 0.0)}). "
                + _observed_facts(obs)
                + " At the last sample the prediction of `pages_sharing` is "
                + (
                    f"{F.pct(abs(err))} {'above' if err > 0 else 'below'} the observed value."
                    if err is not None and math.isfinite(err)
                    else "not comparable (no value)."
                )
                + (
                    " The knobs differ: "
                    + ", ".join(
                        f"`{k}` observed {a}, predicted {b}"
                        for k, (a, b) in obs.knob_differences.items()
                    )
                    + "."
                    if obs.knob_differences
                    else " The knobs match."
                )
            )
        )
        rows = []
        for i, ts in enumerate(obs.t_s):
            row: dict[str, Any] = {"t_s": ts}
            for c in sorted(set(obs.observed) | set(obs.predicted)):
                o = obs.observed.get(c, ())
                p = obs.predicted.get(c, ())
                row[f"observed_{c}"] = o[i] if i < len(o) else None
                row[f"predicted_{c}"] = p[i] if i < len(p) else None
            rows.append(row)
        keys = [k for k in rows[0] if k != "t_s"] if rows else []
        blocks.append(
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
                f"The replay of `{obs.scenario}` (solid) against the counter observed on "
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
            )
        )
        blocks.append(
            Para(
                "Two things separate a prediction from a canary. The canary runs its own instance "
                "of the workload (other processes, address-space layout and hash seeds, other "
                "requests), whose duplicate content is not exactly the trace's. And the replay "
                "sees writes only where the trace changes (at its snapshots) and holds the last "
                "snapshot still, while the real processes keep writing merged pages (the "
                "copy-on-write breaks of [Risks](#risks)), which lowers the observed level. To "
                "tell the two apart, capture a trace on the canary itself and review that."
            )
        )
        for note in obs.notes:
            blocks.append(Callout("note", note))
    elif inputs.validation:
        v = inputs.validation
        blocks.append(Para(str(v.get("summary", "A kernel validation was given."))))
    else:
        blocks.append(
            Para(
                "No observed timeline or kernel validation was given, so this review has not "
                "been compared with a real host. To do so, run the recommended policy on a canary "
                "host and record what ksmd really does with `ksm-planner observe`, then rebuild "
                "the review with `--observed DIR`; or replay the trace on this kernel scan by scan "
                "with `ksm-planner validate TRACE --kernel`."
            )
        )
    checks = _consistency_checks(inputs)
    blocks.append(Heading("Internal checks"))
    blocks.append(
        Para(
            "These identities must hold for every scenario; a failure means the numbers above "
            "cannot be trusted. "
            + ("**All passed.**" if all(c["passed"] for c in checks) else "**Some failed.**")
        )
    )
    blocks.append(
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
        )
    )
    return Section(
        "validation",
        "Validation",
        tuple(blocks),
        lead="Whether the prediction was compared with a real host, and internal checks.",
    )


def _canary_bullet(inputs: ReviewInputs) -> tuple[str, ...]:
    obs = inputs.observed
    gap = _observed_gap(obs) if obs is not None else None
    if obs is None or gap is None:
        return (
            "The prediction has not been compared with a real host yet "
            "([Validation](#validation)).",
        )
    return (
        f"On a canary ({obs.source}, `{obs.scenario}`), the predicted number of merged pages "
        f"was {F.pct(abs(gap))} {'above' if gap > 0 else 'below'} what the real KSM merged"
        + ("; plan with the lower figure" if gap > 0 else "")
        + " ([Validation](#validation)).",
    )


def _observed_gap(obs: Any) -> float | None:
    """Mean (predicted - observed) / observed of ``pages_sharing`` over the second half."""
    t = list(obs.t_s)
    o = [math.nan if v is None else float(v) for v in obs.observed.get("pages_sharing", ())]
    p = [float(v) for v in obs.predicted.get("pages_sharing", ())]
    if not t or len(o) != len(t) or len(p) != len(t):
        return None
    half = [
        (pi - oi) / oi
        for ti, oi, pi in zip(t, o, p, strict=True)
        if ti >= t[-1] / 2 and oi > 0 and math.isfinite(oi)
    ]
    return sum(half) / len(half) if half else None


def _observed_facts(obs: Any) -> str:
    """First merge and mean gap of ``pages_sharing``, predicted against observed, in words."""
    t = list(obs.t_s)
    o = [math.nan if v is None else float(v) for v in obs.observed.get("pages_sharing", ())]
    p = [float(v) for v in obs.predicted.get("pages_sharing", ())]
    if not t or len(o) != len(t) or len(p) != len(t):
        return ""

    def first(values: list[float]) -> float | None:
        return next((ti for ti, v in zip(t, values, strict=True) if v > 0), None)

    fo, fp = first(o), first(p)
    gap = _observed_gap(obs)
    text = ""
    if fo is not None and fp is not None:
        text += (
            f"Merging starts after {F.seconds(fo)} on the host and {F.seconds(fp)} in the replay. "
        )
    if gap is not None:
        text += (
            f"Over the second half of the recording the predicted `pages_sharing` is on average "
            f"{F.pct(abs(gap))} {'above' if gap > 0 else 'below'} the observed one."
        )
    return text


def _consistency_checks(inputs: ReviewInputs) -> list[dict[str, Any]]:
    scen = inputs.scenarios
    ps = scen[0].page_size if scen else 4096

    def count(pred: Any) -> dict[str, Any]:
        failed = sum(1 for s in scen if not pred(s))
        return {"scenarios": len(scen), "failed": failed, "passed": failed == 0}

    def fc(s: ScenarioOutcome, key: str) -> int:
        return int(s.final_counters.get(key, 0))

    checks = [
        (
            "general_profit = (pages_sharing + ksm_zero_pages) × page size − rmap_items × 64 B",
            lambda s: (
                fc(s, "general_profit")
                == (fc(s, "pages_sharing") + fc(s, "ksm_zero_pages")) * ps
                - fc(s, "rmap_items") * 64
            ),
        ),
        (
            "pages_volatile = rmap_items − shared − sharing − unshared (never negative)",
            lambda s: (
                fc(s, "pages_volatile")
                == fc(s, "rmap_items")
                - fc(s, "pages_shared")
                - fc(s, "pages_sharing")
                - fc(s, "pages_unshared")
                and fc(s, "pages_volatile") >= 0
            ),
        ),
        (
            "per-process profits add up to general_profit + pages_shared × page size",
            lambda s: (
                sum(p.profit_bytes for p in s.processes)
                == fc(s, "general_profit") + fc(s, "pages_shared") * ps
            ),
        ),
        (
            "memory freed ≤ static ideal of the same pages (realisation ≤ 100 %)",
            lambda s: s.saved_bytes <= s.ideal_saved_bytes,
        ),
        ("KSM off frees nothing", lambda s: s.enabled or s.saved_bytes == 0),
        (
            "anonymous memory without KSM is the same in every scenario",
            lambda s: s.anon_bytes == scen[0].anon_bytes,
        ),
    ]
    return [{"check": name, **count(pred)} for name, pred in checks]


def _appendix(inputs: ReviewInputs, choice: Choice) -> Section:
    all_keys = sorted({k for s in inputs.scenarios for k in s.knobs})
    vary = [k for k in all_keys if len({repr(s.knobs.get(k)) for s in inputs.scenarios}) > 1]
    common = (
        {k: inputs.scenarios[0].knobs.get(k) for k in all_keys if k not in vary}
        if inputs.scenarios
        else {}
    )
    knob_rows = [
        {"scenario": s.name, "policy_set": s.policy_set, **{k: str(s.knobs.get(k)) for k in vary}}
        for s in inputs.scenarios
    ]
    blocks: list[Block] = [
        Para("Rebuild this review (same inputs, same bytes):"),
        Code(inputs.command),
        Para("Look at the trace and at single scenarios:"),
        Code(
            f"ksm-planner info {inputs.trace.path}\n"
            + (
                f"ksm-planner replay {inputs.trace.path} --pages-to-scan "
                f"{choice.scenario.knobs.get('pages_to_scan')} --sleep-ms "
                f"{choice.scenario.knobs.get('sleep_ms')}"
                if choice.scenario
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
            [{"option": k, "value": str(v)} for k, v in sorted(inputs.options.items())],
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
    provenance = {
        "tool_version": inputs.options.get("tool_version", ""),
        "trace_path": tr.path,
        "trace_hash": tr.trace_hash,
        "hosts": list(tr.hosts),
        "kernel_release": tr.kernel_release,
        "command": inputs.command,
        "recommended": choice.scenario.name if choice.scenario else None,
        "footer": f"Made by {inputs.options.get('tool_version', 'ksm-planner')} from trace "
        f"`{tr.trace_hash}`. Rebuild: `{inputs.command}`",
    }
    data = {
        "recommendation": {
            "scenario": choice.scenario.name if choice.scenario else None,
            "reason": choice.reason,
            "excluded": [{"scenario": n, "why": w} for n, w in choice.excluded],
            "rule": {
                "near_best": NEAR_BEST,
                "max_time_to_90_s": MAX_TIME_TO_90_S,
                "cpu_budget_percent": inputs.cpu_budget_percent,
            },
        },
        "options": dict(inputs.options),
        "extrapolation": dict(inputs.extrapolation or {}),
        "warnings": list(inputs.notes),
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


__all__ = ["MAX_TIME_TO_90_S", "NEAR_BEST", "Choice", "build_review", "recommend"]
