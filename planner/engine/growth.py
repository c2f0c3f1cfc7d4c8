"""The growth model: memory that keeps appearing after the last snapshot.

A capture taken while a workload is still growing (a V8 or JVM heap expanding after its
warm-up, caches filling) holds the set of pages still at the last snapshot; the real ksmd
then scans, and merges, pages the capture never saw. This module continues the growth the
snapshots show, from the trace alone, as synthetic snapshots appended to the replay input
(the layer that prepares the replay: the engines consume snapshot deltas as they are, and
the write model's continuation, :mod:`planner.engine.writes`, goes on over them).

**The curve.** Over the last three snapshots, the eligible rows of the processes present at
all three (the *growing set*) are summed: sizes ``N0, N1, N2`` at ``t0, t1, t2``. A
saturating curve ``N(t) = N_inf - A exp(-t / tau)`` is exact on three points; it exists when
the growth rate falls (``(N2 - N1) / (t2 - t1) < (N1 - N0) / (t1 - t0)``, both positive).
What is left to grow after ``t2`` is ``R = A exp(-t2 / tau)`` (with intervals of equal
length ``L`` and ``r = exp(-L / tau)``: ``R = (N2 - N1) r / (1 - r)``). No growth is
continued, and the note says why, when:

* the trace has fewer than three snapshots, or the growing set did not grow (``none``);
* the rate does not fall (``not saturating``: a linear or accelerating trend has no
  stated end, and the trace cannot say where it stops);
* ``tau`` exceeds :data:`MAX_TAU_SPANS` times the span the fit covers (``not credible``:
  the curve is then a straight line the fit only bends by noise).

``R`` is capped at :data:`MAX_GROWTH_FRACTION` of the growing set's size (a process may at
most double after the capture); the growth is continued over ``3 tau`` (95 % of ``R``), in
steps of ``max(MIN_STEP_S, tau / 8)`` (at most :data:`MAX_STEPS`), each step one synthetic
snapshot holding the growth reached at its time.

**Who grows.** Each process of the growing set takes a share of each step in proportion to
its own net growth over the fit's two intervals (processes that shrank or held still take
none).

**What the new memory holds.** Each process's *template rows* are its eligible rows that
appeared in the last interval (else over both; a process without any takes no growth). A
step's new rows of a process are drawn from its templates: the templates are ordered by a
seeded draw per *content* and step, so the rows of one content are taken together (the
duplication within a process is kept) and the same contents come first in every process
(the duplication across processes is kept). A drawn template keeps its content where the
trace shows that such new pages repeat existing contents -- a content some row of the
snapshot before already held, or the zero page -- and otherwise takes a content new to
this step (one per template content and step: the rows of one step that share a content
still share it, nothing is shared with earlier steps). A new row is written like its
template (its continuation counts and toggling). Its page is a fresh one (a new frame id,
never fork-shared), at an address above the process's last one.

The growth is deterministic for a seed, and off with ``ReplayOptions(growth=False)``
(``--no-growth``). :class:`GrowthNote` is what the result's provenance states.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from planner.engine.rows import PAGE_MASK, ContentCatalog, MmLayout, RowColumns, build_delta
from planner.engine.writes import IntervalWrites, _phases

if TYPE_CHECKING:
    from planner.engine.prepare import ReplayInput
    from planner.engine.rows import SnapshotRows

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
B = npt.NDArray[np.bool_]

#: A fitted time constant longer than this many times the fitted span is not credible.
MAX_TAU_SPANS: Final = 30.0
#: The growth continued is at most this fraction of the growing processes' size.
MAX_GROWTH_FRACTION: Final = 1.0
#: Shortest step between synthetic snapshots, s.
MIN_STEP_S: Final = 0.5
#: Most synthetic snapshots.
MAX_STEPS: Final = 64
#: The growth is continued over this many time constants (1 - e^-3: 95 % of it).
HORIZON_TAUS: Final = 3.0
#: Growth smaller than this (pages, over the fit) is none.
MIN_PAGES: Final = 16


@dataclass(frozen=True)
class GrowthFit:
    """The saturating curve fitted on three sizes (see the module notes)."""

    status: str
    """``continued``, ``none``, ``not saturating``, ``not credible``."""
    reason: str
    tau_s: float | None = None
    remaining_pages: float = 0.0
    """``R``: what the curve still grows after the last point (before the cap)."""
    rate_pages_per_s: float = 0.0
    """The curve's growth rate at the last point."""


def fit_growth(times_s: list[float], sizes: list[float]) -> GrowthFit:
    """The curve ``N(t) = N_inf - A exp(-t / tau)`` through three (time, size) points."""
    if len(times_s) != 3 or len(sizes) != 3:
        return GrowthFit("none", "fewer than three snapshots")
    l1, l2 = times_s[1] - times_s[0], times_s[2] - times_s[1]
    d1, d2 = sizes[1] - sizes[0], sizes[2] - sizes[1]
    if l1 <= 0 or l2 <= 0:
        return GrowthFit("none", "snapshots at the same time")
    if d1 + d2 < MIN_PAGES or d2 <= 0 or d1 <= 0:
        return GrowthFit("none", f"no steady growth in the trace ({d1:+.0f}, {d2:+.0f} pages)")
    g1, g2 = d1 / l1, d2 / l2
    if g2 >= g1:
        return GrowthFit(
            "not saturating",
            f"the growth does not slow ({g1:.0f} then {g2:.0f} pages/s): no end to continue to",
        )

    def ratio(tau: float) -> float:  # d2 / d1 of the curve, decreasing from l2/l1 to 0
        return math.exp(-l1 / tau) * -math.expm1(-l2 / tau) / -math.expm1(-l1 / tau)

    target = d2 / d1
    lo, hi = 1e-3 * min(l1, l2), 1e6 * (l1 + l2)
    if ratio(hi) <= target:
        return GrowthFit("not credible", "the growth slows too little to fit a curve")
    for _ in range(200):  # bisection on log tau: ratio() increases with tau
        mid = math.sqrt(lo * hi)
        if ratio(mid) < target:
            lo = mid
        else:
            hi = mid
    tau = math.sqrt(lo * hi)
    span = l1 + l2
    if tau > MAX_TAU_SPANS * span:
        return GrowthFit(
            "not credible",
            f"time constant {tau:.0f} s is more than {MAX_TAU_SPANS:g} times the {span:.1f} s "
            "the snapshots span",
            tau_s=tau,
        )
    e2 = math.exp(-l2 / tau)
    remaining = d2 * e2 / -math.expm1(-l2 / tau)
    return GrowthFit(
        "continued",
        "a saturating fit of the last three snapshots' sizes",
        tau_s=tau,
        remaining_pages=remaining,
        rate_pages_per_s=remaining / tau,
    )


@dataclass(frozen=True)
class GrowthNote:
    """What growth the replay assumed (the result's provenance, ``growth``)."""

    status: str
    """``continued``, ``off``, ``none``, ``not saturating``, ``not credible``, ``scan-aligned``."""
    reason: str
    sizes_pages: list[int] = field(default_factory=list)
    """The growing set's eligible rows at the three snapshots fitted."""
    tau_s: float | None = None
    rate_pages_per_s: float = 0.0
    """Growth rate at the last snapshot."""
    horizon_s: float = 0.0
    total_pages: int = 0
    """Pages added over the horizon."""
    capped: bool = False
    steps: int = 0
    """Synthetic snapshots added (steps that add no page add none)."""
    pages_by_pid: dict[str, int] = field(default_factory=dict)
    repeat_fraction: float | None = None
    """Share of the template rows that keep an existing content (zero page included)."""
    template_rows: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The note as JSON-able values."""
        d = dataclasses.asdict(self)
        for k in ("tau_s", "rate_pages_per_s", "horizon_s", "repeat_fraction"):
            if isinstance(d[k], float):
                d[k] = round(d[k], 3)
        return d

    def summary(self) -> str:
        """One line for the review and the command line."""
        if self.status != "continued":
            return f"growth after the trace: {self.status} ({self.reason})"
        return (
            f"growth after the trace: {self.total_pages:,} pages over {self.horizon_s:.0f} s "
            f"({self.rate_pages_per_s:.0f} pages/s at the last snapshot, tau {self.tau_s:.1f} s"
            + (", capped" if self.capped else "")
            + ")"
        )


def _salt(seed: int, step: int, rep: int) -> int:
    return (seed * 1_000_003 + step * 131 + rep) & ((1 << 62) - 1)


def _fresh(hashes: U64, salt: int) -> U64:
    """A content new to one step per template content (same input, same output)."""
    z = _phases(salt, 7, hashes, 5)  # a uniform draw per hash: 53 bits
    out = (z * float(1 << 53)).astype(np.uint64) << np.uint64(11)
    return out | (hashes & np.uint64(0x7FF))


def _templates(prev: SnapshotRows, last: SnapshotRows, first: SnapshotRows, mm: int) -> I64:
    """Rows of ``mm`` in ``last`` that appeared in the last interval (else since ``first``)."""
    lo, hi = last.rows_of(mm)
    rows = np.arange(lo, hi, dtype=np.int64)
    rows = rows[last.eligible[lo:hi]]
    keys = last.keys()[rows]
    for base in (prev, first):
        new = ~np.isin(keys, base.keys())
        if new.any():
            return rows[new]
    return np.empty(0, np.int64)


def continue_growth(inp: ReplayInput, *, seed: int = 0) -> tuple[ReplayInput, GrowthNote]:
    """``inp`` with the growth the trace shows continued after its last snapshot (module
    notes), and what was assumed."""
    n = inp.n_snapshots
    if n < 3:
        return inp, GrowthNote("none", "fewer than three snapshots")
    snaps = inp.snapshots
    first, prev, last = snaps[n - 3], snaps[n - 2], snaps[n - 1]
    ts = [t / 1e9 for t in inp.times_ns[n - 3 :]]
    grow = [
        int(m)
        for m in last.layout.present.tolist()
        if first.rows_of(int(m))[1] > first.rows_of(int(m))[0]
        and prev.rows_of(int(m))[1] > prev.rows_of(int(m))[0]
    ]

    def size(s: SnapshotRows, m: int) -> int:
        lo, hi = s.rows_of(m)
        return int(np.count_nonzero(s.eligible[lo:hi]))

    per = np.array([[size(s, m) for s in (first, prev, last)] for m in grow], np.int64)
    per = per.reshape(len(grow), 3)
    sizes = per.sum(axis=0).tolist() if grow else [0, 0, 0]
    fit = fit_growth(ts, [float(x) for x in sizes])
    if fit.status != "continued" or fit.tau_s is None:
        return inp, GrowthNote(fit.status, fit.reason, sizes_pages=sizes, tau_s=fit.tau_s)
    tau = fit.tau_s
    cap = MAX_GROWTH_FRACTION * sizes[2]
    remaining = min(fit.remaining_pages, cap)
    share = np.maximum(per[:, 2] - per[:, 0], 0).astype(np.float64)
    tmpl = [_templates(prev, last, first, m) for m in grow]
    share[[t.size == 0 for t in tmpl]] = 0.0
    if share.sum() <= 0:
        return inp, GrowthNote("none", "no process has rows that appeared", sizes_pages=sizes)
    share /= share.sum()
    step_s = max(MIN_STEP_S, tau / 8)
    n_steps = min(MAX_STEPS, math.ceil(HORIZON_TAUS * tau / step_s))
    step_s = HORIZON_TAUS * tau / n_steps
    reached = remaining * -np.expm1(-np.arange(n_steps + 1) * step_s / tau)
    cum = np.rint(np.outer(reached, share)).astype(np.int64)  # [step, process]
    add = np.diff(cum, axis=0)
    if add.sum() <= 0:
        return inp, GrowthNote("none", "the growth rounds to no page", sizes_pages=sizes)
    # contents: which templates repeat an existing content
    held_before = np.unique(prev.hash)
    all_t = np.concatenate(tmpl)
    pos = np.minimum(np.searchsorted(held_before, last.hash[all_t]), held_before.size - 1)
    keeps = (held_before[pos] == last.hash[all_t]) | last.zero[all_t]
    zero_or_held = np.zeros(last.n, bool)
    zero_or_held[all_t[keeps]] = True
    out, note_pids = _append_steps(inp, last, grow, tmpl, add, step_s, zero_or_held, seed)
    if not note_pids:  # pragma: no cover - see _append_steps
        return inp, GrowthNote("none", "no frame ids left for new pages", sizes_pages=sizes)
    total = int(add.sum())
    note = GrowthNote(
        "continued",
        fit.reason,
        sizes_pages=sizes,
        tau_s=tau,
        rate_pages_per_s=remaining / tau,
        horizon_s=n_steps * step_s,
        total_pages=total,
        capped=fit.remaining_pages > cap,
        steps=out.n_snapshots - n,
        pages_by_pid=note_pids,
        repeat_fraction=float(keeps.mean()) if keeps.size else None,
        template_rows=int(all_t.size),
    )
    out = dataclasses.replace(out, meta={**out.meta, "growth": note.to_dict(), "traced": n})
    return out, note


def _draw_rows(
    hashes: U64, tmpl: I64, count: int, seed: int, step: int
) -> tuple[I64, npt.NDArray[np.int64]]:
    """``count`` template rows for one step (content by content, see the module notes) and
    the pass each is from (more than the templates: several passes)."""
    picked, passes = [], []
    rep = 0
    while count > 0:
        u = _phases(_salt(seed, step, rep), 3, hashes[tmpl], 6)
        order = np.lexsort((tmpl, u))
        take = tmpl[order[:count]]
        picked.append(take)
        passes.append(np.full(take.size, rep, np.int64))
        count -= take.size
        rep += 1
    return np.concatenate(picked), np.concatenate(passes)


def _append_steps(
    inp: ReplayInput,
    last: SnapshotRows,
    grow: list[int],
    tmpl: list[I64],
    add: I64,
    step_s: float,
    keep_content: B,
    seed: int,
) -> tuple[ReplayInput, dict[str, int]]:
    """The synthetic snapshots, one per step, appended to ``inp``."""
    catalog = ContentCatalog()
    ids = catalog.ids_of(inp.content_hash)
    if not np.array_equal(ids, np.arange(ids.size)):  # pragma: no cover - defensive
        raise AssertionError("content ids could not be rebuilt")
    parent_of = np.array(
        [mi.parent_mm if mi.parent_mm is not None else -1 for mi in inp.mms] + [-1], np.int64
    )
    cur = RowColumns(
        key=last.keys(),
        page=last.page,
        hash=last.hash,
        frame=last.frame,
        flags=last.flags,
        mm=last.mm,
    )
    w_last = inp.writes[-1] if inp.writes else None
    t_last = inp.times_ns[-1]
    wk: IntervalWrites | None = None
    if w_last is not None:
        wk = dataclasses.replace(w_last, origin_ns=t_last)
    cur_src = np.arange(last.n, dtype=np.int64)  # per row of cur: its traced source row
    next_page = {m: int(last.page[last.rows_of(m)[1] - 1]) + 1 for m in grow}
    # new pages take frame ids above every frame of the last snapshot (prepared traces
    # number frames densely; an id space too full for that leaves the growth out)
    frame_next = int(last.frame.max()) + 1 if last.n else 1
    if frame_next + int(add.sum()) >= 1 << 63:  # pragma: no cover - ids are dense
        return inp, {}
    deltas = list(inp.deltas)
    writes = list(inp.writes)
    if writes:
        writes[-1] = wk
    pids: dict[str, int] = {}
    for j in range(add.shape[0]):
        parts_key, parts_page, parts_hash, parts_flags, parts_mm, parts_src = [], [], [], [], [], []
        for i, m in enumerate(grow):
            c = int(add[j, i])
            if c <= 0:
                continue
            rows, reps = _draw_rows(last.hash, tmpl[i], c, seed, j)
            h = last.hash[rows].copy()
            fresh = ~keep_content[rows]
            for rep in np.unique(reps[fresh]).tolist():
                sel = fresh & (reps == rep)
                h[sel] = _fresh(h[sel], _salt(seed, j, rep))
            page = next_page[m] + np.arange(c, dtype=np.uint64)
            next_page[m] += c
            if next_page[m] > int(PAGE_MASK):  # pragma: no cover - a 47-bit address space
                raise AssertionError("growth ran out of page numbers")
            parts_key.append((np.uint64(m) << np.uint64(36)) | page)
            parts_page.append(page)
            parts_hash.append(h)
            parts_flags.append(last.flags[rows])
            parts_mm.append(np.full(c, m, np.int32))
            parts_src.append(rows)
            pid = str(inp.mms[m].pid)
            pids[pid] = pids.get(pid, 0) + c
        if not parts_key:
            continue
        nk = np.concatenate(parts_key)
        frames = np.uint64(frame_next) + np.arange(nk.size, dtype=np.uint64)
        frame_next += nk.size
        key = np.concatenate([cur.key, nk])
        order = np.argsort(key, kind="stable")
        src = np.concatenate([cur_src, *parts_src])[order]
        nxt = RowColumns(
            key=key[order],
            page=np.concatenate([cur.page, *parts_page])[order],
            hash=np.concatenate([cur.hash, *parts_hash])[order],
            frame=np.concatenate([cur.frame, frames])[order],
            flags=np.concatenate([cur.flags, *parts_flags])[order],
            mm=np.concatenate([cur.mm, *parts_mm])[order],
        )
        present = last.layout.present
        counts = np.bincount(np.searchsorted(present, nxt.mm), minlength=present.size)
        hi = np.cumsum(counts).astype(np.int64)
        layout = MmLayout(present=present, lo=hi - counts, hi=hi, mergeable=last.layout.mergeable)
        t_ns = t_last + round((j + 1) * step_s * 1e9)
        deltas.append(
            build_delta(
                cur,
                nxt,
                index=len(deltas),
                time_ns=t_ns,
                layout=layout,
                parent_of=parent_of,
                catalog=catalog,
            )
        )
        if wk is not None:
            writes.append(
                IntervalWrites(
                    content=wk.content[src],
                    same=wk.same[src],
                    toggle=wk.toggle[src],
                    length_ns=wk.length_ns,
                    origin_ns=t_last,
                )
            )
        cur, cur_src = nxt, src
    out = dataclasses.replace(
        inp, deltas=deltas, writes=writes, content_hash=catalog.hashes(), _seq=None
    )
    return out, pids


__all__ = [
    "HORIZON_TAUS",
    "MAX_GROWTH_FRACTION",
    "MAX_STEPS",
    "MAX_TAU_SPANS",
    "MIN_STEP_S",
    "GrowthFit",
    "GrowthNote",
    "continue_growth",
    "fit_growth",
]
