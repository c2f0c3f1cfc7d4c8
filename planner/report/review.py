"""The capacity-planning review: thirteen sections written from computed numbers.

:func:`build_review` turns :class:`~planner.report.inputs.ReviewInputs` into a
:class:`~planner.report.doc.Document`. Every number it states is a field of the what-if's
results (:class:`~planner.whatif.HostScenario` per scenario on the reviewed host,
:class:`~planner.whatif.WhatIfResult` for fits, knob effects and the canary comparison) or
of the trace facts; the review computes none, and it words a judgement ("the knob buys
speed with CPU, not memory") only when those numbers say so. A reader finds every number
again in the data files (``data/*.csv``, ``data/review.json``). The sections follow what a
capacity review contains (decision, scope, current state, method, results, time, cost,
attribution, risks, deployment, sensitivity, validation, appendix).

The recommendation rule and the first screen are :mod:`planner.report.decision`; the
deployment steps :mod:`planner.report.deployment`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from planner.jsonable import to_jsonable
from planner.report import charts as C
from planner.report import common as W
from planner.report import fmt as F
from planner.report.decision import Choice, decision_section, recommend
from planner.report.deployment import deployment_section
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
from planner.whatif.uncertainty import CANARY_FIT, published_runs

if TYPE_CHECKING:
    from collections.abc import Sequence

    from planner.engine.timing import HostLoad
    from planner.report.inputs import ReviewInputs, ReviewScenario
    from planner.trace.summary import GroupPotential
    from planner.whatif import KnobEffect, SavingRange
    from planner.whatif.capacity import CapacityEstimate
    from planner.whatif.extrapolate import ExtrapolationFit
    from planner.whatif.observed import ObservedComparison

#: The kernel documentation's rule: a process with more rmap_items per merging page loses memory.
NET_LOSS_RATIO = 64
#: A knob or policy set that moves the saving by no more than this "does not change" it.
NEAR_BEST = 0.02


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


_NOT_MODELLED_REST = (
    "**Merges the kernel refuses** for pinned pages (O_DIRECT, RDMA, io_uring buffers), locked "
    "pages or pages held in per-CPU LRU caches are counted as merged.",
    "**NUMA** (`merge_across_nodes`), swap, memory pressure and reclaim are not modelled.",
    "**Latency.** The page faults and 4 KiB copies of copy-on-write breaks and the lost "
    "transparent huge pages are not priced; [Risks](#risks) gives their rate from the trace.",
    "**Other KSM users** on the host (VMs, other containers) are not in the trace.",
    "**Page identity** is a keyed 64-bit hash: two different pages with equal hashes would be "
    "counted as duplicates (about n²/2⁶⁵ chance among n distinct pages: negligible).",
    "**The unstable tree** is keyed by content hash: an unstable entry whose page changed since "
    "insertion is dropped, where the kernel may still find it by its new content.",
)


def _host_load(inputs: ReviewInputs) -> HostLoad | None:
    """The CPU load the replays gave ksmd on the reviewed host (what-if's record of it)."""
    loads = inputs.whatif.replay_options.host_load or {}
    for sc in inputs.scenarios:
        if sc.host.host in loads:
            return loads[sc.host.host]
    return next(iter(loads.values()), None)


def _growth_text(inputs: ReviewInputs) -> str:
    """What growth after the trace the reviewed replays assumed (docs/engine.md, "Growth
    after the trace"), one clause per distinct assumption."""
    notes = sorted(
        {
            o.growth_summary.removeprefix("growth after the trace: ")
            for sc in inputs.scenarios
            for o in sc.host.replays
            if o.growth_summary is not None
        }
    )
    return "; ".join(notes) if notes else "not recorded"


def _joins_bullet(inputs: ReviewInputs) -> tuple[str, ...]:
    """What the model leaves out of the pages that take a shared content after the trace
    (docs/engine.md, "Joins: measured and stated; continued where a canary saw them"):
    nothing where the trace shows none."""
    seen = {
        (o.joins_per_s, o.joins_held_rows, o.joins_turnover_per_min, o.joins_canary_rows or 0)
        for sc in inputs.scenarios
        for o in sc.host.replays
        if o.joins_per_s and o.joins_held_rows is not None
    }
    if not seen:
        return ()
    # one trace: one (several: the fastest)
    per_s, held, turnover, canary_rows = max(seen, key=lambda v: v[0])
    share = (
        f"{F.pct(turnover)} of the {F.integer(held)} shared pages in a minute"
        if turnover is not None
        else "with no shared page at the last snapshot"
    )
    seen_text = (
        f"Between its snapshots the trace shows {F.fixed(per_s, 1)} pages a second taking a "
        f"content other pages hold ({share}). "
    )
    if canary_rows:
        return (
            "**Pages that take a shared content after the trace** are continued as the canary "
            f"saw them: {F.integer(canary_rows)} pages that the trace shows holding a content "
            "of their own, and that the canary saw the kernel merge, take the content most "
            f"pages of their process hold. {seen_text}Pages that join contents the trace does "
            "not hold are left out (on Node.js the replay's `pages_sharing` was 39 % below "
            'the kernel\'s with its canary; docs/live-validation.md, "Canary-driven joins").',
        )
    return (
        "**Pages that take a shared content after the trace** are not continued. "
        f"{seen_text}After the last snapshot the replay changes pages only to "
        "contents never seen before, so it leaves out the merges such pages go on to make: "
        "on Node.js, where a minute of them was 2.4-3.0 times the shared pages, the replay's "
        "`pages_sharing` was 24-57 % below the kernel's (docs/live-validation.md); a canary "
        "of the traced run continues those it sees.",
    )


#: The share of the pages written in the last sampled interval whose rates are the sampler's
#: floor from which the method section says so (:func:`_floor_text`).
FLOOR_SHARE_SHOWN = 0.01


def _floor_text(inputs: ReviewInputs) -> str:
    """The writes whose rates are the sampler's floor (docs/live-validation.md, "Soft-dirty:
    rows written at every pass"), from the replays' last sampled interval: nothing where
    they are fewer than :data:`FLOOR_SHARE_SHOWN` of the pages written there (the Django
    samples: 0 and 1 of ~37,000)."""
    seen = {
        (o.writes_floored_rows, o.writes_written_rows)
        for sc in inputs.scenarios
        for o in sc.host.replays
        if o.writes_floored_rows
        and o.writes_written_rows
        and o.writes_floored_rows >= FLOOR_SHARE_SHOWN * o.writes_written_rows
    }
    if not seen:
        return ""
    floored, written = max(seen)  # one trace: one (several hosts: the most)
    return (
        f" In the last sampled interval, {F.integer(floored)} of the {F.integer(written)} "
        "pages written changed or were written at every look of the sampler: their rates "
        "are floors (one write per sampling period), as it could not see faster."
    )


def _timing_text(inputs: ReviewInputs) -> str:
    """When the replayed writes happen within their periods: where each process's sampling
    passes counted writes (docs/live-validation.md, "Writes in step"), or at independent
    times where the trace has no passes."""
    timed = {o.writes_timed_by_passes for sc in inputs.scenarios for o in sc.host.replays}
    timed.discard(None)
    if not timed:
        return ""
    if timed == {False}:
        return " Pages write at independent times: the trace has no sampling passes to time them."
    canary = (
        "; the canary's at independent times."
        if inputs.whatif.replay_options.writes_canary
        else "."
    )
    if timed == {True}:
        return (
            " The sampled writes of each page fall where its process's sampling passes "
            "counted writes, so processes that wrote together write together" + canary
        )
    return (
        " Where the trace has sampling passes, the sampled writes of each page fall where "
        "its process's passes counted writes, elsewhere at independent times" + canary
    )


def _not_modelled(inputs: ReviewInputs) -> tuple[str, ...]:
    """What the model leaves out, as this review's replays ran (writes, load)."""
    sampled = inputs.whatif.replay_options.writes and inputs.trace.sampled
    if sampled:
        writes = (
            "**Writes between snapshots** are replayed at the rates the capture sampled "
            "(docs/kernel-semantics.md §6.5): content changes and, where the kernel tracks "
            "soft-dirty, writes of unchanged bytes. A content sampler misses writes that leave "
            "the bytes unchanged and changes faster than its period"
            + (
                "; the canary's rates of such writes are replayed too, drawn per content from "
                "each process role's rates on pages fork() no longer shares "
                "(docs/live-validation.md)."
                if inputs.whatif.replay_options.writes_canary
                else "; [Validation](#validation) compares with a canary, which sees them."
            )
            + _timing_text(inputs)
            + _floor_text(inputs),
            "**The future looks like the trace.** After the last snapshot the replay continues "
            "each page's writes at its rate over the sampled intervals, and the memory's "
            f"growth as the snapshots show it ({_growth_text(inputs)}). Traffic shifts, "
            "deploys, worker respawns and a shrinking heap after the trace are not in it (a "
            "canary's unmapped pages excepted).",
        )
    else:
        writes = (
            "**Between snapshots nothing changes.** The trace shows each page's content only at "
            "snapshot times; writes in between are not seen, and a page written and restored in "
            "between looks unchanged. After the last snapshot its state is held for the settle "
            "scans.",
            "**The future looks like the trace.** The steady state is the last snapshot held "
            f"still, but for the memory's growth as the snapshots show it ({_growth_text(inputs)}"
            "). Traffic shifts, deploys, worker respawns and a shrinking heap after the trace "
            "are not in it.",
        )
    load = _host_load(inputs)
    measured = _profile_measured_on(inputs)
    if load is not None and load.runnable_per_cpu > 0:
        cpu = (
            f"**ksmd's CPU** comes from a per-path cost profile measured on {measured}, "
            "scaled for a busy host: ksmd runs at nice 5 and gets its scheduler share against "
            f"{F.fixed(load.runnable_per_cpu, 1)} other runnable tasks per CPU ({load.source}; "
            "docs/busy-host.md), one mean load for the whole replay. What ksmd's CPU takes "
            "from the service is not modelled."
        )
    else:
        cpu = (
            f"**ksmd's CPU** comes from a per-path cost profile measured on {measured} (±30 % "
            "between runs there) on an idle host; ksmd runs at nice 5 and gets less CPU on a "
            "busy host (`--host-load` models one, docs/busy-host.md). What ksmd's CPU takes from "
            "the service is not modelled."
        )
    return (*writes, *_joins_bullet(inputs), *_NOT_MODELLED_REST[:2], cpu, *_NOT_MODELLED_REST[2:])


def _profile_measured_on(inputs: ReviewInputs) -> str:
    """The cost profile and the CPU it was measured on (or fitted on, to a canary) where it
    says (docs/busy-host.md §7)."""
    cpu = inputs.options.cost_profile_cpu or "a host it does not name"
    return f"{cpu} (`{inputs.options.cost_profile}`)"


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
                "**Security domains as they can be deployed**: mainline KSM has no per-domain "
                "merge boundary, so a scenario that denies merging across domains places each "
                "domain on hosts of its own (one replay, one ksmd and one capacity per domain); "
                "one that allows it replays all domains together and reports the saving that "
                "crossed them. KSM for one domain only on a shared host is the policy set "
                "`NAME@DOMAIN`.",
                "**The whole host.** A worker needs more than its anonymous pages: its own "
                "file-backed pages, shared memory, page tables and kernel objects; the host needs "
                "the file pages every worker maps once. Each of these is measured from the "
                "trace when it records it, given on the command line, or assumed from "
                "docs/capacity.md (the first table of [Decision](#decision) says which). "
                "Workers per host are the smaller of the memory bound and, when the CPU a worker "
                "needs is known, the CPU bound; ksmd's CPU comes out of the host's.",
                "**The model's measured error.** The replay's saving is multiplied by the ratio "
                "of what the real KSM merged to what the replay predicted: measured on a canary "
                "when one is given, else the live-validation runs the project publishes "
                "(docs/live-validation.md).",
            )
        ),
        Heading("What is not modelled"),
        Bullets(_not_modelled(inputs)),
    ]
    fit = W.fit_of(inputs, choice.scenario)
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
            "measured (what KSM really merges under the knobs) and by the model's measured "
            "error, and KSM's metadata is subtracted. Intervals are "
            f"{F.pct(fit.confidence, 0)} percentile intervals over {spec.n_resamples} draws "
            "that combine four sources: which workers were traced (bootstrap resamples of the "
            "replicas), the model's measured error, the assumed inputs across their ranges and "
            "the spread of the saving over the traced snapshots (docs/capacity.md). "
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
                "projected_time_to_90_s": h.projected_time_to_90_s,
                "steady_cpu_percent": h.ksmd_cpu_percent,
                "ksmd_host_share": s.ksmd_host_share,
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
    projected = any(r["projected_time_to_90_s"] is not None for r in rows)
    per_host = any(s.host_cpus is not None for s in inputs.scenarios)
    cols = [
        Column("scenario", "scenario", "text"),
        Column("net_saved_bytes", "saved, net", "mib", "MiB"),
        Column("net_saved_fraction", "of anon", "pct", "%"),
        Column("time_to_90_s", "to 90 %", "s"),
        Column("projected_time_to_90_s", "to 90 %, planned host", "s", hidden=not projected),
        Column("steady_cpu_percent", "ksmd CPU", "percent", "% core", hidden=per_host),
        Column("ksmd_host_share", "ksmd CPU", "pct", "% host", hidden=not per_host),
        Column("pages_per_full_scan", "pages / full scan", "int", hidden=True),
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
            "Each row is one scenario at steady state on the traced host. *Saved, net* is the "
            "memory KSM frees minus its own metadata, as replayed; *of anon* is that as a share "
            "of the anonymous memory; *to 90 %* is the time from switching KSM on until 90 % of "
            "the saving is there (on the traced host, and on the planned host where there is "
            "one); *ksmd CPU* is the scanner's CPU at steady state (a share of the planned "
            "host's CPUs where there is one); *capacity gain* is workers per host with KSM over "
            "without, with its interval; *Pareto* marks scenarios that no other scenario beats "
            "on both saving and CPU. The recommended scenario is highlighted."
        ),
        _scenarios_table(inputs, hl),
    ]
    s = choice.shown
    if choice.scenario is not None and not choice.scenario.pareto:
        blocks.append(_not_on_front(inputs, choice, choice.scenario))
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
    s = choice.shown
    if s is not None and s.host.capacity is not None:
        blocks.append(_capacity_text(s, s.host.capacity))
        why_cpu = _cpu_text(s.host.capacity)
        if why_cpu:
            blocks.append(Para(why_cpu))
    rows = [_capacity_row(sc, c) for sc, c in caps]
    blocks.append(
        table(
            "capacity",
            "Workers per host without and with KSM, and what limits them.",
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
                Column("memory_limit_with", "memory allows", "int", hidden=True),
                Column("cpu_limit_with", "CPU allows", "int", hidden=True),
                Column("ksm_net_saved_bytes", "KSM frees", "gib", "GiB"),
                Column("ksmd_cores", "ksmd", "float2", "cores"),
                Column("saving_factor", "model error", "float3", hidden=True),
            ],
            rows,
            highlight=[i for i, (sc, _) in enumerate(caps) if s is not None and sc.name == s.name],
        )
    )
    return blocks


def _capacity_row(sc: ReviewScenario, c: CapacityEstimate) -> dict[str, Any]:
    lo, hi = c.gain_interval or (None, None)
    return {
        "scenario": sc.name,
        "workers_without": c.workers_without,
        "workers_with": c.workers_with,
        "workers_with_low": c.workers_with_interval[0],
        "workers_with_high": c.workers_with_interval[1],
        "capacity_gain": c.gain,
        "capacity_gain_lo": lo,
        "capacity_gain_hi": hi,
        "limited_by": c.limit_with,
        "memory_limit_with": c.memory_limit_with,
        "cpu_limit_with": c.cpu_limit_with,
        "ksm_net_saved_bytes": c.ksm_net_saved_bytes,
        "ksmd_cores": c.ksmd_cores,
        "saving_factor": c.saving_factor,
    }


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
    factor = (
        f" (the replay's saving × {F.fixed(c.saving_factor, 2)}, the model's measured error)"
        if c.saving_factor != 1.0
        else ""
    )
    return Para(
        f"On a host with {F.gib(c.host_mem_bytes)} of memory, keeping "
        f"{F.gib(c.headroom_bytes)} free, {F.gib(c.budget_bytes)} is left for the service. "
        f"Without KSM each worker needs {F.mib(c.worker_bytes)} "
        f"({F.mib(c.per_worker_anon_bytes)} of anonymous memory from the trace and "
        f"{F.size(c.worker_extra_bytes)} outside it: its own file-backed pages, page tables and "
        f"kernel objects) next to {F.mib(c.base_bytes + c.base_extra_bytes)} that does not grow "
        f"with the workers ({F.mib(c.base_bytes)} anonymous, {F.mib(c.base_extra_bytes)} of "
        f"file pages mapped once and the base's overhead), so "
        f"**{F.integer(c.workers_without)} workers** fit (limited by "
        f"{c.limit_without}). With KSM under `{s.name}`, "
        f"{F.integer(n1)} workers would need {F.gib(c.without_ksm_at_workers_with_bytes)} "
        f"without KSM, and KSM frees {F.gib(c.ksm_net_saved_bytes)} of it ({F.pct(share)})"
        f"{factor}, so **{F.integer(n1)} workers** fit ({F.integer(c.workers_with_interval[0])}–"
        f"{F.integer(c.workers_with_interval[1])} in the "
        f"{F.pct(c.confidence, 0)} interval; limited by {c.limit_with}): "
        f"**{W.more_workers(c.gain)} per host**. " + why
    )


def _cpu_text(c: CapacityEstimate) -> str:
    """Why CPU does or does not limit the host, in the numbers' own words."""
    plan = c.plan
    if plan is None:
        return ""
    if plan.cpu_per_worker is None:
        return (
            "**CPU is not part of this count**: the CPU a worker needs is not known (not in the "
            "trace, not given), so workers per host are limited by memory only. Give "
            "`--cpu-per-worker` (cores a worker uses at its planned load): on a CPU-bound host "
            "KSM buys no workers."
        )
    cpw = plan.cpu_per_worker
    text = (
        f"The host's {F.fixed(c.host_cpus, 1)} CPUs ({plan.host_cpus.source}) at "
        f"{F.fixed(cpw.value, 3)} cores per worker ({cpw.source}) allow "
        f"{F.integer(c.cpu_limit_without)} workers without KSM and "
        f"{F.integer(c.cpu_limit_with)} with it (ksmd takes {F.fixed(c.ksmd_cores, 2)} cores); "
        f"memory allows {F.integer(c.memory_limit_without)} and {F.integer(c.memory_limit_with)}."
    )
    if c.limit_with == "cpu" and c.limit_without == "cpu":
        text += (
            " **The host is CPU-bound with and without KSM: KSM frees memory that no worker "
            "can use, and ksmd's CPU costs workers** — "
            f"{W.signed_pct(c.gain)}. Plan KSM for a memory-bound host, or fewer CPUs per "
            "unit of memory."
        )
    elif c.limit_with == "cpu":
        text += (
            " With KSM the CPUs, not the memory, set the limit: the gain stops where the "
            "CPUs run out."
        )
    return text


# ----------------------------------------------------------------------------- 6. time


def _time(inputs: ReviewInputs, choice: Choice) -> Section:
    scen = [s for s in inputs.scenarios if s.enabled]
    blocks: list[Block] = []
    if scen:
        blocks.append(_time_figure(inputs, scen))
    blocks.append(_time_table(scen, choice))
    if choice.shown is not None:
        blocks.append(_time_text(inputs, choice.shown))
    return Section(
        "time",
        "Time to benefit",
        tuple(blocks),
        lead="How long after switching KSM on the memory is actually freed.",
    )


def _share_of_final(values: Sequence[int], final: int) -> list[float]:
    return [100.0 * v / final if final else 0.0 for v in values]


def _time_series(s: ReviewScenario, color: str, projected: bool) -> C.Series:
    """One scenario's saving over time: % of its steady saving, against planned-host minutes
    (or traced-host seconds)."""
    h = s.host
    g, sc = h.timeline.grid, h.timeline.scans
    final = h.saved_bytes // h.page_size
    scale = (h.host_scale or 1.0) / 60.0 if projected else 1.0
    return C.Series(
        s.policy_set,
        [t * scale for t in g.t_s],
        _share_of_final(g.saved_frames, final),
        color,
        [t * scale for t in sc.t_s],
        _share_of_final(sc.saved_frames, final),
    )


def _time_rows(s: ReviewScenario) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The grid and the full scans of one scenario, as the data files hold them."""
    h = s.host
    g, sc = h.timeline.grid, h.timeline.scans
    ps = h.page_size
    grid = [
        {"scenario": s.name, "t_s": x, "saved_bytes": f * ps, "net_saved_bytes": y}
        for x, f, y in zip(g.t_s, g.saved_frames, g.net_saved_bytes, strict=True)
    ]
    scans = [
        {
            "scenario": s.name,
            "full_scans": n,
            "t_s": t,
            "scan_time_s": d,
            "cpu_s": c,
            "saved_bytes": f * ps,
            "net_saved_bytes": v,
            "pages_sharing": p,
        }
        for n, t, d, c, f, v, p in zip(
            sc.full_scans,
            sc.t_s,
            sc.scan_time_s,
            sc.cpu_s,
            sc.saved_frames,
            sc.net_saved_bytes,
            sc.pages_sharing,
            strict=True,
        )
    ]
    return grid, scans


def _time_figure(inputs: ReviewInputs, scen: Sequence[ReviewScenario]) -> Figure:
    colors = W.colors(inputs.scenarios)
    vary = W.vary(inputs)
    projected = all(s.host.host_scale is not None for s in scen)
    by_knobs: dict[str, list[ReviewScenario]] = defaultdict(list)
    for s in scen:
        by_knobs[W.knob_label(s, vary)].append(s)
    panels = []
    data_rows: list[dict[str, Any]] = []
    scan_rows: list[dict[str, Any]] = []
    for label, group in by_knobs.items():
        series = [_time_series(s, colors[s.policy_set], projected) for s in group]
        for s in group:
            grid, scans = _time_rows(s)
            data_rows += grid
            scan_rows += scans
        snaps = () if projected else inputs.trace.snapshot_times_s
        panels.append(C.Panel(label, series, snaps))
    where = (
        "minutes on the planned host (the replay's times scaled with the pages to scan there; "
        "a log scale, the same in every panel, so that minutes and hours both read)"
        if projected
        else "seconds since KSM was switched on (the same scale in every panel; dotted lines "
        "are the trace's snapshots)"
    )
    return Figure(
        "time-to-benefit",
        "The saving over time",
        C.time_panels(
            "time-to-benefit",
            "Share of the steady-state saving reached over time",
            panels,
            ylabel="% of the steady saving",
            y_in_bytes=False,
            xlabel="minutes on the planned host (log scale)"
            if projected
            else "seconds since KSM was on",
            logx=projected,
        ),
        "The share of its steady-state saving each scenario has reached, against "
        f"{where}; one panel per knob setting, one line per policy set. Dots mark the end of "
        "each full scan: the saving grows only at the end of a scan, since a page merges "
        "after its content stayed the same for a full scan.",
        (
            table(
                "time-to-benefit",
                "Saved memory on the time grid (traced host)",
                [
                    Column("scenario", "scenario", "text"),
                    Column("t_s", "time", "float1", "s"),
                    Column("saved_bytes", "saved", "mib", "MiB"),
                    Column("net_saved_bytes", "saved, net", "mib", "MiB"),
                ],
                data_rows,
            ),
            table(
                "full-scans",
                "Every full scan of every scenario (traced host)",
                [
                    Column("scenario", "scenario", "text"),
                    Column("full_scans", "full scan", "int"),
                    Column("t_s", "ends at", "float2", "s"),
                    Column("scan_time_s", "duration", "float2", "s"),
                    Column("cpu_s", "ksmd CPU", "float3", "s"),
                    Column("saved_bytes", "saved", "mib", "MiB"),
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
            "first_full_scan_s": s.host.first_full_scan_s,
            "full_scan_s": s.host.full_scan_s,
            "projected_first_full_scan_s": s.host.projected_first_full_scan_s,
            "projected_time_to_90_s": s.host.projected_time_to_90_s,
            "host_scale": s.host.host_scale,
        }
        for s in scen
    ]
    projected = any(r["projected_time_to_90_s"] is not None for r in rows)
    shown = choice.shown
    return table(
        "time-to-saving",
        "Time to 50, 90 and 99 % of the steady-state saving on the traced host, the full scans "
        "it takes" + (", and the first scans and 90 % on the planned host." if projected else "."),
        [
            Column("scenario", "scenario", "text"),
            Column("time_to_50_s", "50 %", "s"),
            Column("time_to_90_s", "90 %", "s"),
            Column("time_to_99_s", "99 %", "s"),
            Column("scans_to_90", "scans to 90 %", "int"),
            Column("first_full_scan_s", "first scans", "s"),
            Column("full_scan_s", "steady scan", "s"),
            Column(
                "projected_first_full_scan_s", "planned: a first scan", "s", hidden=not projected
            ),
            Column("projected_time_to_90_s", "planned: 90 %", "s", hidden=not projected),
            Column("host_scale", "planned / traced pages", "float1", hidden=True),
        ],
        rows,
        highlight=[i for i, s in enumerate(scen) if shown and s.name == shown.name],
    )


def _time_text(inputs: ReviewInputs, s: ReviewScenario) -> Para:
    h = s.host
    scans = h.full_scans_to_90
    text = (
        f"Under `{s.name}` the first full scans visit every registered page and take about "
        f"{F.seconds(h.first_full_scan_s)} each on the traced host; 90 % of the saving is there "
        f"after {scans if scans is not None else '?'} of them, {W.t(h.time_to_90_s)} after KSM "
        f"is switched on. Once merged, smart scan skips pages that keep failing and a full "
        f"scan of the {F.integer(inputs.state.snapshot.pages)} traced pages takes "
        f"{F.seconds(h.full_scan_s)}. A full scan takes time in proportion to the pages it "
        "visits"
    )
    if h.host_scale is not None:
        text += (
            f": on the planned host ({F.integer(h.projected_workers)} workers, "
            f"{F.fixed(h.host_scale, 1)} times the mergeable pages) the first scans take about "
            f"{F.seconds(h.projected_first_full_scan_s)} each and 90 % of the saving arrives "
            f"after about {W.t(h.projected_time_to_90_s)} (the replay's times scaled with the "
            f"pages to scan; an estimate). The trace covers {F.seconds(inputs.trace.time_span_s)}"
            + (
                ", less than one full scan there: beyond it the replay "
                + (
                    "continues the sampled writes at their measured rates."
                    if inputs.whatif.replay_options.writes and inputs.trace.sampled
                    else "holds the last snapshot still."
                )
                if (h.projected_first_full_scan_s or 0.0) > inputs.trace.time_span_s
                else "."
            )
        )
    else:
        text += ": a host with more memory under the same knobs takes proportionally longer."
    published = published_runs(dict(inputs.trace.capture.get("labels") or {}))
    if _cost_fitted(inputs):
        text += f" {_scans_text(_CANARY_FIT_HEAD, *CANARY_FIT.full_scan_error_range)}"
    elif published is not None:
        name, runs = published
        head = f"On the published live runs of the {name} workload"
        where = " (docs/live-validation.md)"
        text += f" {_scans_text(head, *runs.full_scan_error_range, source=where)}"
    text += (
        " Every worker that is restarted (`max_requests`, a deploy) starts from scratch: its "
        "pages merge only after two full scans, and until then the host needs its memory "
        "without KSM ([Risks](#risks))."
    )
    return Para(text)


#: Where the cost was fitted to a canary: the evidence of :data:`CANARY_FIT`.
_CANARY_FIT_HEAD = (
    "With ksmd's cost fitted to a canary, as here, on other live runs of "
    f"{' and '.join(CANARY_FIT.workloads)} "
    "(a canary's fitted cost used on another run, across a knob change too; "
    "docs/busy-host.md)"
)


def _cost_fitted(inputs: ReviewInputs) -> bool:
    """Whether the what-if fitted ksmd's cost to a canary (``replay``/``whatif
    --observed``; docs/busy-host.md §4)."""
    fit = inputs.whatif.provenance.get("cost_fit")
    return isinstance(fit, dict) and bool(fit.get("fitted"))


def _whole_pct(fraction: float) -> float:
    """``fraction`` as the text gives it, to a whole percent (-0.3 % is 0 %: neither fewer
    nor more, neither below nor above)."""
    return round(fraction, 2) + 0.0


def _scans_text(runs: str, lo: float, hi: float, source: str = "") -> str:
    """What live runs (``runs``: which) say of the model's full scans, ``lo``/``hi`` the
    smallest and largest error ``(model - kernel) / kernel`` of the number of full scans in
    the first minute (``source``: where they are told): the times above stretch by as much
    where the model counted more."""
    lo, hi = _whole_pct(lo), _whole_pct(hi)
    head = f"{runs} the model counted"
    tail = f"than the real ksmd completed in the first minute{source}"
    if lo >= 0:
        return (
            f"{head} {F.pct(lo, 0)} to {F.pct(hi, 0)} more full scans {tail}: expect these "
            "times to be up to that much longer."
        )
    if hi <= 0:
        return (
            f"{head} {F.pct(-hi, 0)} to {F.pct(-lo, 0)} fewer full scans {tail}: the real "
            "scans were up to that much quicker."
        )
    return (
        f"{head} from {F.pct(-lo, 0)} fewer to {F.pct(hi, 0)} more full scans {tail}: these "
        "times may be that much shorter or longer."
    )


def _cpu_span(lo: float, hi: float) -> str:
    """The range of the model's ksmd CPU errors ``lo``..``hi`` against the real one."""
    lo, hi = _whole_pct(lo), _whole_pct(hi)
    if hi <= 0:
        return f"{F.pct(-hi, 0)} to {F.pct(-lo, 0)} below the real one"
    if lo >= 0:
        return f"{F.pct(lo, 0)} to {F.pct(hi, 0)} above the real one"
    return f"between {F.pct(-lo, 0)} below and {F.pct(hi, 0)} above the real one"


def _published_cpu_text(name: str, lo: float, hi: float) -> str:
    """What the published live runs say of the model's ksmd CPU (errors as for
    :func:`_scans_text`)."""
    head = f"On the published live runs of the {name} workload the model's ksmd CPU was"
    return (
        f"{head} {_cpu_span(lo, hi)}: what a page costs ksmd depends on the host's CPU and its "
        "load, so for this host calibrate the cost profile on a canary of the workload "
        "(`ksm-planner calibrate --trace --observed`; docs/busy-host.md, docs/live-validation.md)."
    )


# ----------------------------------------------------------------------------- 7. cost


def _cost(inputs: ReviewInputs, choice: Choice) -> Section:
    scen = [s for s in inputs.scenarios if s.enabled]
    blocks: list[Block] = []
    if scen:
        blocks += _cost_figures(inputs, choice, scen)
    if choice.shown is not None:
        blocks.append(Para(_cost_text(inputs, choice.shown)))
    return Section(
        "cost",
        "Cost",
        tuple(blocks),
        lead="What ksmd costs in CPU for each scenario, and which scenarios are worth it.",
    )


def _cost_text(inputs: ReviewInputs, s: ReviewScenario) -> str:
    h = s.host
    text = (
        f"`{s.name}` keeps ksmd at {F.percent(h.ksmd_cpu_percent)} of one core once settled "
        f"({F.percent(h.ksmd_cpu_percent_from_start)} averaged over the whole replay, "
        f"start-up included): {W.share_of_host(s)} ({W.cpus_text(s)}). ksmd's CPU is set by its "
        "knobs (pages per batch, sleep between batches), not by the amount of memory, so it "
        f"is the same on the planned host. It scans {F.integer(h.pages_scanned_per_full_scan)} "
        f"pages per full scan and smart scan skips another "
        f"{F.integer(h.pages_skipped_per_full_scan)}."
    )
    obs = inputs.whatif.observed
    r = obs.rates if obs is not None else None
    if r is not None and r.observed_ksmd_cpu_percent is not None:
        text += (
            f" On the canary ({obs.source if obs is not None else ''}) the real ksmd used "
            f"{F.percent(r.observed_ksmd_cpu_percent)} of one core where the model predicts "
            f"{F.percent(r.predicted_ksmd_cpu_percent)}."
        )
    published = published_runs(dict(inputs.trace.capture.get("labels") or {}))
    if _cost_fitted(inputs):
        lo, hi = CANARY_FIT.ksmd_cpu_error_range
        text += f" {_CANARY_FIT_HEAD} the model's ksmd CPU was {_cpu_span(lo, hi)}."
    elif published is not None:
        name, runs = published
        text += f" {_published_cpu_text(name, *runs.ksmd_cpu_error_range)}"
    return text + (
        " For scale, Meta reported that cutting ksmd's CPU by a quarter saved 1–2 % of a "
        "32-CPU Instagram host, so ksmd used roughly 1.3–2.6 cores there (4–8 % of the host; "
        "64 GB hosts merging about 5 million pages)."
    )


def _cost_figures(
    inputs: ReviewInputs, choice: Choice, scen: Sequence[ReviewScenario]
) -> list[Block]:
    colors = W.colors(inputs.scenarios)
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
    vary = W.vary(inputs)
    labels = [W.knob_label(s, vary).replace("pages_to_scan=", "") for s in scen]
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
            "cost-pareto",
            "Net saving against ksmd CPU at steady state",
            points,
            legend=legend,
            annotate=labels,
        ),
        "Each dot is a scenario, coloured by policy set and labelled with the knobs that vary "
        "(a bare number is `pages_to_scan`); both axes start at 0. Ringed dots are on the "
        "Pareto front (no other scenario saves more for less CPU); the large ring is the "
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
    s = choice.shown
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
            *_cow_blocks(inputs, choice),
            Heading("Switching KSM off, and restarts"),
            *_unmerge_blocks(inputs, choice),
        ),
        lead="What can go wrong, at the planned size: security, latency, and the memory needed "
        "to turn KSM off or to restart the workers.",
    )


def _domain_rows(inputs: ReviewInputs) -> list[dict[str, Any]]:
    rows = []
    for s in inputs.scenarios:
        if not s.enabled:
            continue
        doms = s.host.domains
        rows.append(
            {
                "scenario": s.name,
                "domains": ", ".join(doms) if doms and doms != ("(none)",) else "(one, undeclared)",
                "placement": s.host.placement if len(doms) > 1 else "one host",
                "cross_domain_saved_bytes": s.host.cross_domain_saved_bytes
                if len(doms) > 1
                else None,
                "merged_together": "; ".join(" + ".join(p.domains) for p in s.host.domain_pairs)
                or "none",
            }
        )
    return rows


def _domain_blocks(inputs: ReviewInputs) -> list[Block]:
    declared = any(len(s.host.domains) > 1 for s in inputs.scenarios)
    blocks: list[Block] = [
        Para(
            "KSM makes two processes share a physical page when their contents are equal. Between "
            "processes that do not trust each other this is a side channel (timing of "
            "copy-on-write, Rowhammer on the shared page); hosting providers usually forbid it. "
            "Mainline KSM has no per-domain merge boundary: whatever is registered on one host "
            "may merge with everything else registered there. Domains are kept apart in only "
            "two ways: **KSM for one domain only** on a shared host (policy set `NAME@DOMAIN`, "
            "or `only_domain` in the policy file), or **each domain on hosts of its own**. "
            + (
                "The policy sets declare security domains: a scenario that denies merging "
                "across them is the second placement (one ksmd and one capacity per domain's "
                "host); one that allows it merges across them on one host, and the table "
                "shows how much saving crossed them."
                if declared
                else "No policy set declares security domains, so every registered process "
                "is treated as one domain: fine for the workers of one service, not for "
                "tenants. Declare domains in a policy file to see what merging across them "
                "is worth."
            )
        )
    ]
    if declared:
        blocks.append(
            table(
                "domains",
                "Security domains per scenario, and how they are placed.",
                [
                    Column("scenario", "scenario", "text"),
                    Column("domains", "domains", "text"),
                    Column("placement", "placement", "text"),
                    Column("cross_domain_saved_bytes", "saved across", "mib", "MiB"),
                    Column("merged_together", "merged together", "text"),
                ],
                _domain_rows(inputs),
            )
        )
        blocks += _domain_alone_blocks(inputs)
    return blocks


def _domain_alone_blocks(inputs: ReviewInputs) -> list[Block]:
    """Each domain of a separate-hosts scenario: its own host, or KSM for it alone."""
    rows = [
        {
            "scenario": s.name,
            "domain": d.domain,
            "net_saved_bytes": d.net_saved_bytes,
            "ksmd_cpu_percent": d.ksmd_cpu_percent,
            "time_to_90_s": d.time_to_90_s,
            "projected_time_to_90_s": d.projected_time_to_90_s,
            "capacity_gain": d.capacity.gain if d.capacity is not None else None,
        }
        for s in inputs.scenarios
        for d in s.host.domain_results
    ]
    if not rows:
        return []
    return [
        table(
            "domains-alone",
            "Each domain replayed alone: KSM for that domain only on the traced host, or that "
            "domain on hosts of its own (its capacity gain there).",
            [
                Column("scenario", "scenario", "text"),
                Column("domain", "domain", "text"),
                Column("net_saved_bytes", "saved, net", "mib", "MiB"),
                Column("ksmd_cpu_percent", "ksmd", "percent", "% core"),
                Column("time_to_90_s", "to 90 %", "s"),
                Column("projected_time_to_90_s", "planned: 90 %", "s"),
                Column("capacity_gain", "gain, own hosts", "pct", "%"),
            ],
            rows,
        )
    ]


def _cow_text(inputs: ReviewInputs, s: ReviewScenario | None) -> str:
    cow = inputs.cow
    text = (
        "A write to a merged page makes the kernel copy it first (a page fault and a 4 KiB "
        "copy) and takes back one frame. Between consecutive snapshots, "
        f"{W.rate(cow.breaks_per_s)} pages per second that KSM would hold merged were rewritten "
        f"({F.mib(cow.bytes_per_s, 2)}/s of new copies). They are not a churn through all of "
        f"them: over the {F.seconds(cow.span_s)} of the trace only "
        f"{F.integer(cow.distinct_rewritten_pages)} distinct pages were ever rewritten "
        f"({F.pct(cow.rewritten_share)} of the {F.integer(cow.mergeable_pages)} mergeable pages), "
        f"and {F.integer(cow.hot_pages)} of them in every interval: a hot set rewritten again "
        "and again, which smart scan learns to skip. This is counted from the trace, before "
        "any policy: a lower bound on writes (several writes between snapshots count once)."
    )
    h = s.host if s is not None else None
    if h is not None and h.projected_cow_breaks_per_s is not None:
        text += (
            " Scaled with the mergeable pages to the planned host "
            f"({F.integer(h.projected_workers)} workers): about "
            f"{W.rate(h.projected_cow_breaks_per_s)} breaks per second."
        )
    obs = inputs.whatif.observed
    r = obs.rates if obs is not None else None
    if r is not None and r.observed_cow_per_s is not None:
        per_page = r.cow_per_merged_page_per_s
        text += (
            f" **The canary measured {W.rate(r.observed_cow_per_s)} per second** (`cow_ksm` in "
            f"`/proc/vmstat`, {F.fixed(r.observed_cow_per_s / r.predicted_cow_per_s, 1)} times "
            "the trace's count"
            if r.predicted_cow_per_s
            else f" **The canary measured {W.rate(r.observed_cow_per_s)} per second** (`cow_ksm`"
        )
        text += (
            f"; {F.fixed(per_page, 3)} per merged page per second): writes between snapshots "
            "that the trace cannot see. Plan the page-fault rate with the canary's figure"
            if per_page is not None
            else ")"
        )
        planned = h.projected_canary_cow_per_s if h is not None else None
        factor = h.canary_cow_knob_factor if h is not None else None
        text += (
            f": about {W.rate(planned)} breaks per second at the planned size, each a page "
            "fault and a 4 KiB copy in the service's path"
            if planned is not None
            else "."
        )
        if planned is not None:
            text += (
                "."
                if factor is None
                else f" (the canary's rate per merged page times {F.fixed(factor, 2)}: what "
                "the replay, calibrated on the canary, breaks per merged page under this "
                "scenario's knobs against the canary's; a slower scan re-merges a written "
                "page later, so fewer merges are there to break)."
            )
    return text


def _cow_blocks(inputs: ReviewInputs, choice: Choice) -> list[Block]:
    cow = inputs.cow
    return [
        Para(_cow_text(inputs, choice.shown)),
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


def _unmerge_text(s: ReviewScenario | None) -> str:
    text = (
        "Switching KSM off (`echo 2 > /sys/kernel/mm/ksm/run`, or a process leaving it) gives "
        "every merged page its own copy again, immediately: the host must have that memory "
        "free, or the unmerge runs into the OOM killer. A restart or a deploy does the same "
        "slowly: new workers start unmerged and need their memory without KSM until ksmd has "
        "scanned them twice."
    )
    cap = s.host.capacity if s is not None else None
    if cap is None or s is None:
        return text
    text += (
        f" Under `{s.name}` at {F.integer(cap.workers_with)} workers on the planned host, an "
        f"unmerge needs {F.gib(cap.ksm_saved_bytes)} at once and "
        f"{F.gib(cap.free_at_workers_with_bytes)} is free (the headroom included). "
    )
    if cap.drain_workers:
        text += (
            f"**KSM could not be switched off without first draining "
            f"{F.integer(cap.drain_workers)} workers** (down to "
            f"{F.integer(cap.unmerge_fits_workers)}): keep a runbook for it, restart workers in "
            "small batches, and never switch ksmd off with `run=2` on a full host."
        )
    else:
        text += "It fits: KSM can be switched off without draining workers."
    return text


def _unmerge_blocks(inputs: ReviewInputs, choice: Choice) -> list[Block]:
    scen = [s for s in inputs.scenarios if s.enabled]
    projected = any(s.host.capacity is not None for s in scen)
    return [
        Para(_unmerge_text(choice.shown)),
        table(
            "unmerge",
            "Memory an unmerge needs at once, per scenario (steady state), on the traced host"
            + (" and on the planned host, against the memory free there." if projected else "."),
            [
                Column("scenario", "scenario", "text"),
                Column("saved_bytes", "needed at once", "mib", "MiB"),
                Column("saved_fraction", "of anon", "pct", "%"),
                Column("workers_with", "workers, planned", "int", hidden=not projected),
                Column(
                    "projected_saved_bytes", "needed, planned", "gib", "GiB", hidden=not projected
                ),
                Column("free_bytes", "free, planned", "gib", "GiB", hidden=not projected),
                Column("drain_workers", "drain first", "int", hidden=not projected),
            ],
            [
                {
                    "scenario": s.name,
                    "saved_bytes": s.host.saved_bytes,
                    "saved_fraction": s.host.saved_fraction,
                    "workers_with": c.workers_with if c else None,
                    "projected_saved_bytes": c.ksm_saved_bytes if c else None,
                    "free_bytes": c.free_at_workers_with_bytes if c else None,
                    "drain_workers": c.drain_workers if c else None,
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
    fit = W.fit_of(inputs, choice.shown)
    if fit is not None and fit.curve is not None:
        shown = choice.shown
        blocks.append(_growth_figure(fit, shown.host.projected_workers if shown else None))
    effects = {e.knob: e for e in inputs.whatif.knob_effects}
    numeric = [k for k in W.vary(inputs) if k in effects]
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
    rows = [_interval_row(s) for s in ivs]
    no_saving = all(r["saving_fraction"] is None for r in rows)
    no_gain = all(r["capacity_gain"] is None for r in rows)
    return table(
        "intervals",
        "Intervals of the projected saving and capacity gain, and the source of uncertainty "
        "that dominates each.",
        [
            Column("scenario", "scenario", "text"),
            Column("saving_fraction", "saving", "pct", "%", hidden=no_saving),
            Column("saving_fraction_lo", "low", "pct", "%", hidden=no_saving),
            Column("saving_fraction_hi", "high", "pct", "%", hidden=no_saving),
            Column("capacity_gain", "capacity gain", "pct", "%", hidden=no_gain),
            Column("capacity_gain_lo", "low", "pct", "%", hidden=no_gain),
            Column("capacity_gain_hi", "high", "pct", "%", hidden=no_gain),
            Column("sampling_lo", "sampling low", "pct", "%", hidden=True),
            Column("sampling_hi", "sampling high", "pct", "%", hidden=True),
            Column("model_lo", "model low", "pct", "%", hidden=True),
            Column("model_hi", "model high", "pct", "%", hidden=True),
            Column("configuration_lo", "configuration low", "pct", "%", hidden=True),
            Column("configuration_hi", "configuration high", "pct", "%", hidden=True),
            Column("time_lo", "time low", "pct", "%", hidden=True),
            Column("time_hi", "time high", "pct", "%", hidden=True),
            Column("dominant", "widest source", "text", hidden=no_gain),
        ],
        rows,
        note=(
            "The capacity-gain intervals combine four sources: which workers happened to be "
            "traced (bootstrap of the replicas), the model's measured error against the real "
            "KSM (a canary's, else the published live runs), the inputs that were assumed "
            "(across their documented ranges) and the spread of the saving over the traced "
            "snapshots; `data/intervals.csv` holds each source's interval. The projected saving "
            "(`--replicas`) is the model's, with the bootstrap interval only."
        ),
    )


def _interval_row(s: ReviewScenario) -> dict[str, Any]:
    cap = s.host.capacity
    lo, hi = (cap.gain_interval or (None, None)) if cap is not None else (None, None)
    iv = s.host.projected.net_saved_fraction if s.host.projected is not None else None
    row: dict[str, Any] = {
        "scenario": s.name,
        "capacity_gain": cap.gain if cap else None,
        "capacity_gain_lo": lo,
        "capacity_gain_hi": hi,
        "saving_fraction": iv.value if iv else None,
        "saving_fraction_lo": iv.low if iv else None,
        "saving_fraction_hi": iv.high if iv else None,
        "dominant": W.SOURCE_WORDS.get(cap.dominant_source or "", "none")
        if cap is not None
        else None,
    }
    for source in ("sampling", "model", "configuration", "time"):
        part = cap.interval(source) if cap is not None else None
        row[f"{source}_lo"] = part.gain_low if part is not None else None
        row[f"{source}_hi"] = part.gain_high if part is not None else None
    return row


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
    colors = W.colors(inputs.scenarios)
    others = [k for k in W.vary(inputs) if k != knob]
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


def _growth_figure(fit: ExtrapolationFit, planned: int | None) -> Figure:
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
            marks=[(float(fit.k), f"traced: {fit.k}")]
            + ([(float(planned), f"planned: {planned}")] if planned else []),
            shade_after=float(fit.k),
        ),
        f"The share of anonymous memory an ideal KSM frees with n workers under "
        f"`{fit.policy_set}`: measured in the trace for 1 to {fit.k} workers (dashed), "
        f"fitted and projected beyond (solid, with its {F.pct(fit.confidence, 0)} bootstrap "
        f"band). The grey area right of the line at {fit.k} is extrapolation"
        + (
            f", {F.fixed(planned / fit.k, 0)} times beyond the data at the planned {planned} "
            "workers"
            if planned and fit.k
            else ""
        )
        + ". KSM realises a share of this ideal; the capacity numbers use that share.",
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
                "host and record what ksmd really does with `ksm-planner observe` (the steps are "
                "in [Deployment](#deployment)), then rebuild the review with `--observed DIR`; "
                "or replay the trace on this kernel scan by scan with "
                "`ksm-planner validate TRACE --kernel`."
            )
        ]
    blocks += _model_error_blocks(inputs)
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
        f"The scenario `{W.observed_name(inputs, obs)}` was compared with what KSM really did on "
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
    name = W.observed_name(inputs, obs)
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
            "requests), whose duplicate content is not exactly the trace's. And "
            + _writes_gap_words(inputs)
            + " To tell the two apart, capture a trace on the canary itself and review that."
        ),
    ]
    blocks += [Callout("note", note) for note in obs.notes]
    return blocks


def _writes_gap_words(inputs: ReviewInputs) -> str:
    """What the replay knows of the writes that break merges, against a canary."""
    opts = inputs.whatif.replay_options
    if not (opts.writes and inputs.trace.sampled):
        return (
            "the replay sees writes only where the trace changes (at its snapshots) and holds "
            "the last snapshot still, while the real processes keep writing merged pages (the "
            "copy-on-write breaks of [Risks](#risks)), which lowers the observed level."
        )
    text = (
        "the replay sees the content changes the capture sampled between its snapshots, "
        "continued at their measured rates after the last one; a write that leaves a page's "
        "content as it was is invisible to the sampler on a kernel without soft-dirty "
        "tracking, yet breaks a merge on the real host"
    )
    if opts.writes_canary is not None:
        return (
            text + ": the replay takes those writes from the canary (page by page where its "
            "pages line up with the trace's, else by process role), so what remains is how "
            "far the canary's writes stand for the trace's workload."
        )
    return text + (
        ", which lowers the observed level: a canary recorded in canary mode "
        "(`observe --ksm-pages`) supplies them."
    )


def _model_error_blocks(inputs: ReviewInputs) -> list[Block]:
    """How the model's measured error enters the capacity figures, and the canary's rates."""
    me = inputs.whatif.model_error
    blocks: list[Block] = []
    if me is not None:
        blocks.append(
            Para(
                f"**The model's error, as applied.** The capacity figures multiply the replay's "
                f"saving by {F.fixed(me.point, 3)}, the median ratio of observed to predicted "
                f"merged pages in {me.basis}; the ratios range from {F.fixed(min(me.ratios), 3)} "
                f"to {F.fixed(max(me.ratios), 3)}, widened by the real kernel's own run-to-run "
                f"spread ({F.pct(me.noise)}) for the interval."
                + (
                    " Without a canary the published runs stand in: a canary of this workload "
                    "replaces them."
                    if me.source == "published"
                    else ""
                )
            )
        )
    obs = inputs.whatif.observed
    r = obs.rates if obs is not None else None
    if r is None:
        return blocks
    replayed = r.replayed_cow_per_s
    rows = [
        ("ksmd CPU (% of one core)", r.observed_ksmd_cpu_percent, r.predicted_ksmd_cpu_percent),
        (
            "copy-on-write breaks per second",
            r.observed_cow_per_s,
            r.predicted_cow_per_s if replayed is None else replayed,
        ),
        ("wall time of a full scan (s)", r.observed_full_scan_s, r.predicted_full_scan_s),
    ]
    if replayed is not None:
        rows.append(
            (
                "writes to mergeable pages per second, counted in the trace",
                None,
                r.predicted_cow_per_s,
            )
        )
    # canary mode (observe --ksm-pages): the merges lost on the sampled processes, by cause
    causes = {
        "unmerged_same_content": "written, content unchanged",
        "unmerged_changed": "content changed",
        "unmerged": "content not compared",
        "unmapped": "page unmapped",
    }
    rows += [
        (f"merges lost per second: {causes.get(kind, kind)}", rate, None)
        for kind, rate in (r.observed_unmerges_per_s or {}).items()
    ]
    blocks.append(
        table(
            "canary-rates",
            f"What the canary measured over the second half of its recording "
            f"({F.seconds(r.window_s)}), next to the model"
            + (
                " (the trace's count of writes for copy-on-write)."
                if replayed is None
                else ": the replay of the compared scenario, its copy-on-write with "
                + (
                    "the canary's writes"
                    if inputs.whatif.replay_options.writes_canary is not None
                    else "the sampled writes"
                )
                + " over the same seconds since KSM started, and the trace's own count (a "
                "lower bound)."
            ),
            [
                Column("figure", "figure", "text"),
                Column("observed", "canary", "float2"),
                Column("predicted", "model", "float2"),
            ],
            [{"figure": f, "observed": o, "predicted": m} for f, o, m in rows],
        )
    )
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
    chosen = choice.shown
    blocks: list[Block] = [
        Para("Rebuild this review (same inputs, same bytes):"),
        Code(inputs.command),
        Para("Look at the trace and at single scenarios:"),
        Code(
            "\n".join(
                [f"ksm-planner info {inputs.trace.path}"]
                + (_replay_commands(inputs, chosen) if chosen else [])
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
        *_recompute_blocks(inputs, choice),
    ]
    return Section(
        "appendix",
        "Appendix: reproduce, configuration, raw tables",
        tuple(blocks),
        lead="Exact commands, the configuration of every scenario, and where the raw data is.",
    )


def _replay_commands(inputs: ReviewInputs, s: ReviewScenario) -> list[str]:
    """The ``ksm-planner replay`` commands of scenario ``s`` (:func:`planner.replay.replay_command`:
    its policy and every knob that differs from the kernel's defaults, from the knob table).

    A scenario that keeps several security domains apart was replayed one domain at a time
    (mainline KSM has no per-domain boundary): one command per domain, ``NAME@DOMAIN``.
    """
    from planner.replay import replay_command

    preset = s.policy_set if _is_preset(inputs, s.policy_set) else None
    policy_file = None if preset is not None else inputs.policy_file or "POLICIES.toml"
    host = s.host.host if len(inputs.trace.hosts) > 1 else None
    names = [s.policy_set]
    if preset is None and s.host.placement == "separate hosts" and len(s.host.domains) > 1:
        names = [f"{s.policy_set}@{d}" for d in s.host.domains]
    knobs = s.knob_values
    if knobs.get("hz") == inputs.trace.hz:  # replay runs at the trace's HZ by itself
        knobs = {k: v for k, v in knobs.items() if k != "hz"}
    return [
        replay_command(
            inputs.trace.path,
            knobs=knobs,
            host=host,
            preset=preset,
            policy_path=policy_file,
            policy_set=None if preset is not None else name,
        )
        for name in names
    ]


def _is_preset(inputs: ReviewInputs, name: str) -> bool:
    return any(p.name == name and p.preset for p in inputs.whatif.policy_sets)


def _recompute_blocks(inputs: ReviewInputs, choice: Choice) -> list[Block]:
    """The headline figures and every input of their arithmetic, for an independent check."""
    s = choice.shown
    blocks: list[Block] = [Heading("Recompute the headline")]
    models = [_model_row(x) for x in inputs.scenarios if x.host.capacity is not None]
    blocks.append(
        Para(
            "Every headline figure can be recomputed from the data files alone. Capacity "
            "(`data/capacity-model.csv`): memory without KSM is `page_size × (frames_a + "
            "frames_b n) + base_extra_bytes + n × worker_extra_bytes`; KSM frees "
            "`saving_factor × realization_ratio × page_size × max(0, frames(n) − distinct(n)) − "
            "metadata_bytes_per_page × (eligible_a + eligible_b n)`, with `distinct(n) = "
            "distinct_a + distinct_b n + distinct_c (1 − (1 − distinct_p)^n) + extra_a + extra_b "
            "n + extra_c (1 − (1 − extra_p)^n)`; workers per host are the largest n whose memory "
            "fits `budget_bytes` (and, with `cpu_per_worker`, `n × cpu_per_worker ≤ host_cpus − "
            "ksmd_cores`). Time to 90 %: the first time in `data/time-to-benefit.csv` or "
            "`data/full-scans.csv` at which `saved_bytes` reaches 90 % of its final value, times "
            "the planned over traced mergeable pages. ksmd's CPU: `cpu_s` of the full scans that "
            "started after `last_applied_s` (the last snapshot, or the last step of the growth "
            "continued after it) over their wall time, divided by `host_cpus`. "
            "`tests/report/test_independent_reader.py` does exactly this."
        )
    )
    if s is not None:
        blocks.append(_headline_table(s))
    if models:
        blocks.append(
            table(
                "capacity-model",
                "The capacity arithmetic's inputs, per scenario (every column in the CSV).",
                [
                    Column("scenario", "scenario", "text"),
                    Column("workers_without", "without KSM", "int"),
                    Column("workers_with", "with KSM", "int"),
                    Column("saving_factor", "model error", "float3"),
                    Column("realization_ratio", "realisation", "float3"),
                    *(Column(k, k, "sci", hidden=True) for k in _MODEL_HIDDEN),
                ],
                models,
            )
        )
    return blocks


_MODEL_HIDDEN = (
    "page_size",
    "frames_a",
    "frames_b",
    "distinct_a",
    "distinct_b",
    "distinct_beta",
    "distinct_c",
    "distinct_p",
    "eligible_a",
    "eligible_b",
    "extra_a",
    "extra_b",
    "extra_c",
    "extra_p",
    "metadata_bytes_per_page",
    "worker_extra_bytes",
    "base_extra_bytes",
    "budget_bytes",
    "host_mem_bytes",
    "host_cpus",
    "cpu_per_worker",
    "ksmd_cores",
    "eligible_pages",
    "last_applied_s",
    "capacity_gain",
    "unmerge_bytes",
)


def _model_row(s: ReviewScenario) -> dict[str, Any]:
    h, c = s.host, s.host.capacity
    assert c is not None
    g = h.fit.point if h.fit is not None else None
    cpw = c.plan.cpu_per_worker if c.plan is not None else None
    row: dict[str, Any] = {
        "scenario": s.name,
        "workers_without": c.workers_without,
        "workers_with": c.workers_with,
        "saving_factor": c.saving_factor,
        "realization_ratio": c.realization_ratio,
        "page_size": h.page_size,
        "metadata_bytes_per_page": c.metadata_bytes_per_page,
        "worker_extra_bytes": c.worker_extra_bytes,
        "base_extra_bytes": c.base_extra_bytes,
        "budget_bytes": c.budget_bytes,
        "host_mem_bytes": c.host_mem_bytes,
        "host_cpus": c.host_cpus,
        "cpu_per_worker": cpw.value if cpw is not None else None,
        "ksmd_cores": c.ksmd_cores,
        "eligible_pages": h.eligible_pages,
        "last_applied_s": h.last_applied_s,
        "capacity_gain": c.gain,
        "unmerge_bytes": c.ksm_saved_bytes,
    }
    for k in _MODEL_HIDDEN[1:14]:
        row[k] = getattr(g, k) if g is not None else None
    return row


def _headline_table(s: ReviewScenario) -> Table:
    h, c = s.host, s.host.capacity
    rows: list[dict[str, Any]] = []

    def add(figure: str, value: float | None, shown: str) -> None:
        rows.append({"figure": figure, "value": value, "shown": shown})

    add("scenario", None, s.name)
    if c is not None:
        lo, hi = c.gain_interval or (None, None)
        add("capacity_gain", c.gain, W.signed_pct(c.gain))
        add("capacity_gain_low", lo, F.pct(lo))
        add("capacity_gain_high", hi, F.pct(hi))
        add("workers_without", c.workers_without, F.integer(c.workers_without))
        add("workers_with", c.workers_with, F.integer(c.workers_with))
        add("unmerge_bytes", c.ksm_saved_bytes, F.gib(c.ksm_saved_bytes))
        add(
            "free_at_workers_with_bytes",
            c.free_at_workers_with_bytes,
            F.gib(c.free_at_workers_with_bytes),
        )
        add("drain_workers", c.drain_workers, F.integer(c.drain_workers))
    add("net_saved_bytes", h.net_saved_bytes, F.mib(h.net_saved_bytes))
    add("expected_net_saved_bytes", h.expected_net_saved_bytes, F.mib(h.expected_net_saved_bytes))
    add("time_to_90_s", h.time_to_90_s, W.t(h.time_to_90_s))
    add("projected_time_to_90_s", h.projected_time_to_90_s, W.t(h.projected_time_to_90_s))
    add("ksmd_cpu_percent", h.ksmd_cpu_percent, F.percent(h.ksmd_cpu_percent))
    add("ksmd_host_share", s.ksmd_host_share, F.pct(s.ksmd_host_share))
    return table(
        "headline",
        f"The headline figures of `{s.name}`, as the first screen shows them.",
        [
            Column("figure", "figure", "text"),
            Column("value", "value", "sci", hidden=True),
            Column("shown", "shown", "text"),
        ],
        rows,
    )


# ----------------------------------------------------------------------------- the document


def build_review(inputs: ReviewInputs, *, title: str | None = None) -> Document:
    """Write the review of ``inputs`` as a document (deterministic for equal inputs)."""
    choice = recommend(inputs)
    sections = tuple(
        f(inputs, choice)
        for f in (
            decision_section,
            _scope,
            _state,
            _method,
            _results,
            _time,
            _cost,
            _attribution,
            _risks,
            deployment_section,
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
            "candidate": choice.candidate.name if choice.candidate else None,
            "excluded": [
                {"scenario": e.scenario, "gate": e.gate, "why": e.why, "relax": e.relax}
                for e in choice.exclusions
            ],
            "rule": to_jsonable(inputs.gates),
        },
        "model_error": to_jsonable(w.model_error),
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
    "NEAR_BEST",
    "Choice",
    "build_review",
    "knob_sentence",
    "range_sentence",
    "recommend",
]
