"""The growth model: memory that keeps appearing after the last snapshot.

A capture taken while a workload is still growing (a V8 or JVM heap expanding after its
warm-up, caches filling) holds the set of pages still at the last snapshot; the real ksmd
then scans, and merges, pages the capture never saw. This module continues the growth the
snapshots show, from the trace alone, as synthetic snapshots appended to the replay input
(the layer that prepares the replay: the engines consume snapshot deltas as they are, and
the write model's continuation, :mod:`planner.engine.writes`, goes on over them).

**Two kinds of new memory.** Over the last three snapshots, the processes present at all
three are the *growing set*; ``N0, N1, N2`` at ``t0, t1, t2`` are their rows (eligible or
not: memory grows whatever the KSM policy, so every policy of a what-if replays the same
pages, and a new row is as eligible as its template). Each
interval's growth is split by where it lies (the input's ``meta["mapping_starts"]``, each
snapshot's mapping starts, recorded by :func:`planner.engine.prepare.prepare`):

* *new mappings*: rows that appeared in the interval inside a mapping whose start the
  snapshot before did not have (a heap chunk, a new arena);
* *inside*: the rest of the net growth (pages filled, or given back, inside the mappings
  the snapshot before had).

The two differ in kind. On the Node traces (docs/live-validation.md) the pages filled
inside existing mappings come fast at the capture and slow down, with mostly unique
contents; new mappings come at a pace with no trend two intervals can show (2-5 mappings
per interval), mostly holding contents held before. Each kind gets its own continuation and
its own templates; an input without mappings (built without a trace) has only ``inside``.

**Inside: the saturating curve.** A curve ``N(t) = N_inf - A exp(-t / tau)`` through the
three cumulative sizes of this kind is exact on three points; it exists when the growth
rate falls (``(N2 - N1) / (t2 - t1) < (N1 - N0) / (t1 - t0)``, both positive). What is left
to grow after ``t2`` is ``R = A exp(-t2 / tau)`` (with intervals of equal length ``L`` and
``r = exp(-L / tau)``: ``R = (N2 - N1) r / (1 - r)``), continued over ``3 tau`` (95 % of
``R``). When the rate rises instead (``not saturating``) the trend has no end the trace can
show; its mean rate is continued for as long again as the snapshots watched it (their
span: :data:`CONTINUE_ACCELERATING`, chosen on the recorded Node runs, where it beat
continuing nothing in both runs whose growth accelerated). Nothing is continued, and the
note says why, when the kind did not grow (``none``) or ``tau`` exceeds
:data:`MAX_TAU_SPANS` times the fitted span (``not credible``: a straight line the fit
only bends by noise).

**New mappings: a steady component.** Its mean rate over the two intervals is continued,
per process, for as long again as the process had run at the last snapshot (its start
time in the trace, ``meta["mm_start_s"]``; the snapshots' span when the trace has none),
at most :data:`STEADY_MAX_S`: a process that has kept mapping memory at this pace is taken
to go on for as long again as it has lived, and no longer -- the longest a trend seen over
the process's life so far can be carried by the trace.

**Cap and steps.** Both kinds together add at most :data:`MAX_GROWTH_FRACTION` of the
growing set's size (a process may at most double after the capture; ``inside`` first). The
growth is appended in steps of ``max(MIN_STEP_S, horizon / MAX_STEPS, tau / 8)`` (at most
:data:`MAX_STEPS`) over the longest horizon, each step one synthetic snapshot holding the
growth each kind reached at its time.

**Who grows.** Each process of the growing set takes a share of a kind in proportion to its
own net growth of that kind over the two intervals (processes that shrank or held still
take none).

**What the new memory holds.** Each process's *template rows* of a kind are its rows of
that kind that appeared in the last interval (else over both; a process without any takes
none of that kind). A step's new rows of a process and kind are drawn from those
templates: the templates are ordered by a seeded draw per *content* and step, so the rows
of one content are taken together (the
duplication within a process is kept) and the same contents come first in every process
(the duplication across processes is kept). A drawn template keeps its content where the
trace shows that such new pages repeat existing contents -- a content some row already
held in the snapshot before the template appeared, or the zero page -- and otherwise
takes a content new to this step (one per template content and step: the rows of one step
that share a content still share it, nothing is shared with earlier steps). A new row is
written like its template (its continuation counts and toggling). Its page is a fresh one
(a new frame id, never fork-shared), at an address above the process's last one.

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

from planner.engine.rows import (
    MM_SHIFT,
    PAGE_MASK,
    RowColumns,
    appended_delta,
    apply_delta,
    isin,
    moved_up,
    row_keys,
    with_flag_changes,
)
from planner.engine.writes import IntervalWrites, _content_ids, _phases

if TYPE_CHECKING:
    from collections.abc import Iterator

    from planner.engine.prepare import ReplayInput
    from planner.engine.rows import MmLayout, SnapshotDelta, SnapshotRows

I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
U8 = npt.NDArray[np.uint8]
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
#: A steady component (pages of new mappings) goes on at its mean rate for this many
#: times as long as each process had run at the last snapshot ...
STEADY_AGE_FACTOR: Final = 1.0
#: ... and at most this long, s.
STEADY_MAX_S: Final = 600.0
#: Pages filled inside existing mappings that grow faster and faster: continued at their
#: mean rate for the snapshots' span (decided on the recorded Node runs, docs/live-validation.md).
CONTINUE_ACCELERATING: Final = True
#: The two kinds of new memory.
INSIDE: Final = "inside"
NEW_MAPPINGS: Final = "new mappings"


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
class KindNote:
    """What growth the replay assumed for one kind of new memory (module notes)."""

    kind: str
    """``inside``: pages filled inside mappings the snapshot before had; ``new mappings``:
    pages of mappings created in the interval."""
    status: str
    """``continued``, ``none``, ``not saturating``, ``not credible``."""
    rule: str
    """``saturating fit``, ``mean rate`` (a steady component), or empty (nothing continued)."""
    reason: str
    interval_pages: list[int] = field(default_factory=list)
    """Net growth of this kind in each fitted interval."""
    tau_s: float | None = None
    rate_pages_per_s: float = 0.0
    """Rate at the last snapshot (a steady component: its mean rate)."""
    horizon_s: float = 0.0
    total_pages: int = 0
    capped: bool = False
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
        """A few words for the summary line."""
        if self.status != "continued":
            return f"{self.kind}: {self.status}"
        how = f"{self.rate_pages_per_s:.0f} pages/s" + (
            f" at the last snapshot, tau {self.tau_s:.1f} s" if self.tau_s is not None else ""
        )
        return (
            f"{self.kind}: {self.total_pages:,} pages over {self.horizon_s:.0f} s ({self.rule}, "
            f"{how}" + (", capped" if self.capped else "") + ")"
        )


@dataclass(frozen=True)
class GrowthNote:
    """What growth the replay assumed (the result's provenance, ``growth``)."""

    status: str
    """``continued``, ``canary`` (held to a canary of the traced run:
    :mod:`planner.engine.canary_growth`), ``off``, ``none``, ``not saturating``, ``not
    credible``, ``scan-aligned``."""
    reason: str
    sizes_pages: list[int] = field(default_factory=list)
    """The growing set's rows at the three snapshots fitted."""
    tau_s: float | None = None
    """The saturating fit's time constant (pages inside existing mappings)."""
    rate_pages_per_s: float = 0.0
    """Growth rate at the last snapshot, every kind."""
    horizon_s: float = 0.0
    total_pages: int = 0
    """Pages added over the horizon, every kind."""
    capped: bool = False
    steps: int = 0
    """Synthetic snapshots added (steps that add no page add none)."""
    pages_by_pid: dict[str, int] = field(default_factory=dict)
    repeat_fraction: float | None = None
    """Share of the template rows that keep an existing content (zero page included)."""
    template_rows: int = 0
    kinds: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per kind of new memory (:class:`KindNote`), what was assumed."""
    seen_merged_pages: int = 0
    """Status ``canary`` (:mod:`planner.engine.canary_growth`): the pages added where the
    canary saw a page merged at an address the trace does not hold."""
    out_of_reach_pages: int = 0
    """Status ``canary``: the most traced pages out of ksmd's reach at once (the canary's
    processes held fewer pages than their rows: they gave pages back)."""

    def to_dict(self) -> dict[str, Any]:
        """The note as JSON-able values."""
        d = dataclasses.asdict(self)
        for k in ("tau_s", "rate_pages_per_s", "horizon_s", "repeat_fraction"):
            if isinstance(d[k], float):
                d[k] = round(d[k], 3)
        return d

    def summary(self) -> str:
        """One line for the review and the command line."""
        parts = [KindNote(**k).summary() for k in self.kinds.values()]
        if self.status == "canary":
            gave_back = (
                f"; at most {self.out_of_reach_pages:,} traced pages given back (out of "
                "ksmd's reach)"
                if self.out_of_reach_pages
                else ""
            )
            return (
                f"growth after the trace: {self.total_pages:,} pages over "
                f"{self.horizon_s:.0f} s, {self.reason}; {self.seen_merged_pages:,} of them "
                f"where it saw pages merged{gave_back}"
            )
        if self.status != "continued":
            return f"growth after the trace: {self.status} ({self.reason})"
        return (
            f"growth after the trace: {self.total_pages:,} pages over {self.horizon_s:.0f} s ("
            + "; ".join(parts)
            + ")"
        )


def _salt(seed: int, step: int, rep: int) -> int:
    return (seed * 1_000_003 + step * 131 + rep) & ((1 << 62) - 1)


def _fresh(hashes: U64, salt: int) -> U64:
    """A content new to one step per template content (same input, same output)."""
    z = _phases(salt, 7, hashes, 5)  # a uniform draw per hash: 53 bits
    out = (z * float(1 << 53)).astype(np.uint64) << np.uint64(11)
    return out | (hashes & np.uint64(0x7FF))


def _in_new_mapping(starts: list[U64] | None, k_from: int, k_to: int, keys: U64) -> B:
    """Per row key of snapshot ``k_to``: it lies in a mapping no process had at ``k_from``
    (a mapping start of ``k_to`` that ``k_from`` lacks). All false when the input does not
    carry the mappings (an input built without a trace)."""
    if starts is None or max(k_from, k_to) >= len(starts):
        return np.zeros(keys.size, bool)
    s_to, s_from = starts[k_to], starts[k_from]
    if s_to.size == 0:
        return np.zeros(keys.size, bool)
    pos = np.searchsorted(s_to, keys, side="right") - 1
    start = s_to[np.maximum(pos, 0)]
    same_mm = (start >> MM_SHIFT) == (keys >> MM_SHIFT)
    return np.asarray((pos >= 0) & same_mm & ~isin(start, s_from, of_sorted=True))


def _appeared(
    inp: ReplayInput, starts: list[U64] | None, last: SnapshotRows, first_keys: U64, grow: list[int]
) -> tuple[B, B, B, B, I64]:
    """Per row of the last snapshot: it appeared in the last interval, in either; it lies
    in a mapping new in the last interval, in either; and per process of ``grow``, its
    rows in new mappings that appeared in each interval. The two kinds, interval by
    interval: rows in mappings new in the interval, and the rest of the net growth (pages
    filled, or given back, inside the mappings there before). (Rows that appeared: a
    mapping split or merged again has a new start, not new pages; a row appeared in an
    interval is one its delta added.)"""
    n = inp.n_snapshots
    d_prev, d_last = inp.deltas[n - 2], inp.deltas[n - 1]
    lk = last.keys()
    appeared_last = _rows_mask(d_last.n_rows, d_last.added)
    appeared_both = ~isin(lk, first_keys, of_sorted=True)
    prev_mm = d_prev.layout.present[np.searchsorted(d_prev.layout.hi, d_prev.added, "right")]
    nm_prev = _in_new_mapping(starts, n - 3, n - 2, row_keys(prev_mm, d_prev.added_page))
    nm_last = _rows_mask(
        last.n, d_last.added[_in_new_mapping(starts, n - 2, n - 1, lk[d_last.added])]
    )
    both = np.flatnonzero(appeared_both)
    nm_both = _rows_mask(last.n, both[_in_new_mapping(starts, n - 3, n - 1, lk[both])])
    new_prev = np.bincount(prev_mm[nm_prev], minlength=max(grow) + 1)[grow]
    new_p = np.stack([new_prev, _per_mm(last, nm_last, grow)], axis=1).astype(np.int64)
    return appeared_last, appeared_both, nm_last, nm_both, new_p


def _rows_mask(n: int, rows: npt.NDArray[np.integer[Any]]) -> B:
    """``n`` booleans, true at ``rows``."""
    out = np.zeros(n, bool)
    out[rows] = True
    return out


def _held(values: I32, column: I32, n_contents: int) -> B:
    """Per content id of ``values`` (few): whether ``column`` (a snapshot's content ids,
    millions of rows) holds it: a flag per content (``n_contents`` of them), set from the
    column (the hashes were searched for before, chunk by chunk)."""
    held = np.zeros(n_contents, bool)
    held[column] = True
    return np.asarray(held[values], bool)


def _found_in(u: U64, column: U64) -> Iterator[tuple[I64, I64]]:
    """The rows of ``column`` (millions, any order) whose value is one of ``u`` (sorted,
    distinct, few), chunk by chunk: (rows, where their value is in ``u``). The column is
    neither sorted nor copied; a flag per value of the low ``_FILTER_BITS`` bits (set for
    those of ``u``: a table that stays in the cache) rules out most rows before the binary
    search of the rest (searching every row was ~0.3 s per 4 M rows)."""
    if not u.size:
        return
    mask = np.uint64((1 << _FILTER_BITS) - 1)
    maybe = np.zeros(1 << _FILTER_BITS, bool)
    maybe[(u & mask).astype(np.int64)] = True
    for lo in range(0, column.size, _CHUNK_ROWS):
        part = column[lo : lo + _CHUNK_ROWS]
        rows = np.flatnonzero(maybe[(part & mask).astype(np.int64)])
        cand = part[rows]
        pos = np.minimum(np.searchsorted(u, cand), u.size - 1)
        hit = u[pos] == cand
        yield lo + rows[hit], pos[hit]


#: rows of a snapshot's column searched at once by :func:`_found_in`
_CHUNK_ROWS: Final = 1 << 20
#: low bits of a value that :func:`_found_in`'s filter keeps a flag for (2 MiB of bools)
_FILTER_BITS: Final = 21


def _last_three(
    deltas: list[SnapshotDelta], content_hash: U64
) -> tuple[U64, I32, I32, SnapshotRows]:
    """The keys and content ids of the third snapshot from the end, the content ids of the
    second, and the last in full: one pass of rebuilds from the first delta, each snapshot
    dropped as the next is built but for what is returned of it (content ids, 4 B a row,
    not hashes: 8 B a row of two snapshots less at the growth model's peak)."""
    n = len(deltas)
    rows: SnapshotRows | None = None
    first_keys = np.empty(0, np.uint64)
    first_content = prev_content = np.empty(0, np.int32)
    for j, d in enumerate(deltas):
        rows = apply_delta(rows, d, content_hash)
        assert rows.content is not None  # (rebuilt from deltas: every row has its id)
        if j == n - 3:
            first_keys, first_content = rows.keys(), rows.content
        elif j == n - 2:
            prev_content = rows.content
    assert rows is not None
    return first_keys, first_content, prev_content, rows


def _per_mm(rows: SnapshotRows, sel: B, grow: list[int]) -> I64:
    """Rows selected by ``sel`` per mm of ``grow``."""
    counts = np.bincount(rows.mm[sel].astype(np.int64), minlength=max(grow) + 1)
    return np.asarray(counts[grow], np.int64)


def _first_rows(rows: SnapshotRows, mm: int, masks: list[B]) -> I64:
    """Rows of ``mm`` under the first of ``masks`` that selects any (else none)."""
    lo, hi = rows.rows_of(mm)
    for m in masks:
        r = lo + np.flatnonzero(m[lo:hi])
        if r.size:
            return r.astype(np.int64)
    return np.empty(0, np.int64)


@dataclass
class _Kind:
    """One kind's continuation: per process of the growing set, the pages reached by time
    ``t`` after the last snapshot (``reached``), and its templates."""

    note: KindNote
    tmpl: list[I64]
    share: npt.NDArray[np.float64]  # pages per process at the end of its horizon
    rate: npt.NDArray[np.float64]  # steady: pages/s per process (else zeros)
    horizon: npt.NDArray[np.float64]  # steady: s per process
    tau_s: float | None = None  # saturating: the fit's time constant

    def reached(self, t: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """[time, process] pages reached by the times ``t`` after the last snapshot."""
        if self.tau_s is not None:  # share: R per process; 95 % of it by the horizon
            frac = -np.expm1(-np.minimum(t, HORIZON_TAUS * self.tau_s) / self.tau_s)
            return np.asarray(np.outer(frac, self.share))
        return np.asarray(np.minimum(t[:, None], self.horizon[None, :]) * self.rate[None, :])

    @property
    def end_s(self) -> float:
        if self.tau_s is not None:
            return HORIZON_TAUS * self.tau_s
        return float(self.horizon[self.rate > 0].max()) if (self.rate > 0).any() else 0.0


def _none(kind: str, status: str, reason: str, intervals: list[int], n: int) -> _Kind:
    z = np.zeros(n)
    return _Kind(KindNote(kind, status, "", reason, intervals), [], z, z, z)


def continue_growth(inp: ReplayInput, *, seed: int = 0) -> tuple[ReplayInput, GrowthNote]:
    """``inp`` with the growth the trace shows continued after its last snapshot (module
    notes), and what was assumed."""
    n = inp.n_snapshots
    if n < 3:
        return inp, GrowthNote("none", "fewer than three snapshots")
    ts = [t / 1e9 for t in inp.times_ns[n - 3 :]]
    grow, per = _growing([d.layout for d in inp.deltas[n - 3 :]])
    if not grow:
        return inp, GrowthNote(
            "none", "no process in the last three snapshots", sizes_pages=[0] * 3
        )
    sizes = per.sum(axis=0).tolist()
    starts: list[U64] | None = inp.meta.get("mapping_starts")
    cap = MAX_GROWTH_FRACTION * sizes[2]
    if _no_new_mappings(starts, n) and fit_growth(ts, [float(x) for x in sizes]).status not in (
        "continued",
        "not saturating",
    ):
        # without new mappings every row is "inside", and a fit that continues nothing needs
        # no templates: the three snapshots are not rebuilt (3 full copies of a 16M-page host)
        none = [np.zeros(0, np.int64)] * len(grow)
        d_in = [int(x) for x in np.diff(sizes)]
        inside, fit = _inside_kind(ts, sizes, np.diff(per, axis=1), d_in, none, cap)
        nothing = np.zeros((len(grow), 2), np.int64)
        has_maps = starts is not None
        new_maps = _new_mapping_kind(inp, grow, ts, nothing, [0, 0], none, cap, has_maps)
        return inp, _no_growth(inside, new_maps, fit, sizes)
    # the last snapshot in full, the two before only as far as they are compared with it
    # (rebuilt for this call only: nothing kept on ``inp``)
    first_keys, first_content, prev_content, last = _last_three(inp.deltas, inp.content_hash)
    appeared_last, appeared_both, nm_last, nm_both, new_p = _appeared(
        inp, starts, last, first_keys, grow
    )
    del first_keys
    in_p = np.diff(per, axis=1) - new_p

    # pages inside existing mappings: the saturating curve
    d_in = [int(x) for x in in_p.sum(axis=0)]
    tmpl_in = [
        _first_rows(last, m, [appeared_last & ~nm_last, appeared_both & ~nm_both]) for m in grow
    ]
    inside, fit = _inside_kind(ts, sizes, in_p, d_in, tmpl_in, cap)

    # pages of new mappings: a steady component, continued at its mean rate
    d_new = [int(x) for x in new_p.sum(axis=0)]
    tmpl_new = [_first_rows(last, m, [nm_last, nm_both]) for m in grow]
    room = max(cap - float(inside.share.sum()), 0.0)
    new_maps = _new_mapping_kind(inp, grow, ts, new_p, d_new, tmpl_new, room, starts is not None)
    kinds = [k for k in (inside, new_maps) if k.share.sum() > 0]
    notes = {INSIDE: inside.note, NEW_MAPPINGS: new_maps.note}
    if not kinds:
        return inp, _no_growth(inside, new_maps, fit, sizes)
    horizon_s = max(k.end_s for k in kinds)
    step_s = max(MIN_STEP_S, horizon_s / MAX_STEPS)
    if inside.tau_s is not None:
        step_s = max(step_s, inside.tau_s / 8)
    n_steps = min(MAX_STEPS, math.ceil(horizon_s / step_s))
    step_s = horizon_s / n_steps
    t = np.arange(n_steps + 1, dtype=np.float64) * step_s
    units: list[tuple[int, int, int]] = []  # (kind, process index, mm)
    cols = []
    for ki, k in enumerate(kinds):
        cum = np.rint(k.reached(t)).astype(np.int64)
        for i, m in enumerate(grow):
            if cum[-1, i] > 0:
                units.append((ki, i, m))
                cols.append(cum[:, i])
    if not cols:
        return inp, GrowthNote(
            "none",
            "the growth rounds to no page",
            sizes_pages=sizes,
            kinds={k: v.to_dict() for k, v in notes.items()},
        )
    add: I64 = np.diff(np.stack(cols, axis=1), axis=0).astype(np.int64)
    # contents: which templates repeat an existing content
    # (a content held in the snapshot before the template appeared: a template that
    # appeared in the interval before the last is judged against the first snapshot, not
    # against its own content in the one after)
    all_t = np.unique(np.concatenate([kinds[ki].tmpl[i] for ki, i, _ in units]))
    assert last.content is not None
    c = last.content[all_t]
    earlier = ~appeared_last[all_t]
    keeps = last.zero[all_t].copy()
    n_contents = inp.content_hash.size
    keeps[~earlier] |= _held(c[~earlier], prev_content, n_contents)
    keeps[earlier] |= _held(c[earlier], first_content, n_contents)
    del first_content, prev_content
    zero_or_held = np.zeros(last.n, bool)
    zero_or_held[all_t[keeps]] = True
    out, appended = _append_steps(
        inp,
        last,
        [m for _, _, m in units],
        [kinds[ki].tmpl[i] for ki, i, _ in units],
        add,
        step_s,
        zero_or_held,
        seed,
    )
    if not appended:  # pragma: no cover - see _append_steps
        return inp, GrowthNote("none", "no frame ids left for new pages", sizes_pages=sizes)
    by_pid: dict[str, int] = {}
    for k in kinds:
        pids: dict[str, int] = {}
        rows: list[I64] = []
        for u, (ki, i, m) in enumerate(units):
            if kinds[ki] is not k:
                continue
            pid = str(inp.mms[m].pid)
            pids[pid] = pids.get(pid, 0) + int(add[:, u].sum())
            by_pid[pid] = by_pid.get(pid, 0) + int(add[:, u].sum())
            rows.append(k.tmpl[i])
        tr = np.concatenate(rows)
        notes[k.note.kind] = dataclasses.replace(
            k.note,
            total_pages=sum(pids.values()),
            pages_by_pid=pids,
            repeat_fraction=float(zero_or_held[tr].mean()) if tr.size else None,
            template_rows=int(tr.size),
        )
    total = int(add.sum())
    note = GrowthNote(
        "continued",
        "; ".join(f"{v.kind}: {v.reason}" for v in notes.values()),
        sizes_pages=sizes,
        tau_s=inside.tau_s,
        rate_pages_per_s=inside.note.rate_pages_per_s + new_maps.note.rate_pages_per_s,
        horizon_s=n_steps * step_s,
        total_pages=total,
        capped=any(v.capped for v in notes.values()),
        steps=out.n_snapshots - n,
        pages_by_pid=by_pid,
        repeat_fraction=float(keeps.mean()) if keeps.size else None,
        template_rows=int(all_t.size),
        kinds={k: v.to_dict() for k, v in notes.items()},
    )
    return noted(out, note, n), note


def noted(inp: ReplayInput, note: GrowthNote, traced: int) -> ReplayInput:
    """``inp``, grown, with what was assumed and how many of its snapshots the trace has in
    its ``meta`` (``growth``, ``traced``)."""
    return dataclasses.replace(inp, meta={**inp.meta, "growth": note.to_dict(), "traced": traced})


def _growing(lays: list[MmLayout]) -> tuple[list[int], I64]:
    """The mms present at all three snapshots of ``lays``, and their rows at each (from the
    deltas' layouts alone: no snapshot is rebuilt)."""
    grow = [
        int(m)
        for m in lays[2].present.tolist()
        if all(lay.rows_of(int(m))[1] > lay.rows_of(int(m))[0] for lay in lays[:2])
    ]
    per = np.array(
        [[lay.rows_of(m)[1] - lay.rows_of(m)[0] for lay in lays] for m in grow], np.int64
    ).reshape(len(grow), 3)
    return grow, per


def _no_new_mappings(starts: list[U64] | None, n: int) -> bool:
    """No mapping start of the last two snapshots is missing from the one(s) before: no row
    can lie in a new mapping (:func:`_in_new_mapping`). True without mappings."""
    if starts is None:
        return True
    return all(
        k_to >= len(starts) or bool(isin(starts[k_to], starts[k_from], of_sorted=True).all())
        for k_from, k_to in ((n - 3, n - 2), (n - 2, n - 1), (n - 3, n - 1))
    )


def _no_growth(inside: _Kind, new_maps: _Kind, fit: GrowthFit, sizes: list[int]) -> GrowthNote:
    """The note of a trace whose growth continues in neither kind."""
    lead = inside.note if inside.note.status != "none" else new_maps.note
    return GrowthNote(
        lead.status,
        f"inside mappings: {inside.note.reason}; new mappings: {new_maps.note.reason}",
        sizes_pages=sizes,
        tau_s=fit.tau_s,
        kinds={INSIDE: inside.note.to_dict(), NEW_MAPPINGS: new_maps.note.to_dict()},
    )


def _inside_kind(
    ts: list[float], sizes: list[int], in_p: I64, d_in: list[int], tmpl_in: list[I64], cap: float
) -> tuple[_Kind, GrowthFit]:
    """The continuation of the pages filled inside existing mappings (module notes)."""
    span = ts[2] - ts[0]
    n_grow = len(tmpl_in)
    fit = fit_growth(ts, [float(sizes[0]), sizes[0] + d_in[0], sizes[0] + d_in[0] + d_in[1]])
    share_in = np.maximum(in_p.sum(axis=1), 0).astype(np.float64)
    share_in[[t.size == 0 for t in tmpl_in]] = 0.0
    inside: _Kind
    if fit.status == "continued" and fit.tau_s is not None and share_in.sum() > 0:
        r_in = min(fit.remaining_pages, cap)
        inside = _Kind(
            KindNote(
                INSIDE,
                "continued",
                "saturating fit",
                "the growth inside the mappings slows: a saturating fit of its three sizes",
                d_in,
                tau_s=fit.tau_s,
                rate_pages_per_s=r_in / fit.tau_s,
                horizon_s=HORIZON_TAUS * fit.tau_s,
                capped=fit.remaining_pages > cap,
            ),
            tmpl_in,
            r_in * share_in / share_in.sum(),
            np.zeros(n_grow),
            np.zeros(n_grow),
            tau_s=fit.tau_s,
        )
    elif fit.status == "continued":
        inside = _none(INSIDE, "none", "no process has rows that appeared", d_in, n_grow)
    elif fit.status == "not saturating" and CONTINUE_ACCELERATING and share_in.sum() > 0:
        rate = share_in / span
        inside = _Kind(
            KindNote(
                INSIDE,
                "continued",
                "mean rate",
                f"{fit.reason}; its mean rate continued for as long again as the snapshots "
                f"watched it ({span:.1f} s)",
                d_in,
                rate_pages_per_s=float(rate.sum()),
                horizon_s=span,
            ),
            tmpl_in,
            share_in,
            rate,
            np.full(n_grow, span),
        )
    else:
        inside = _none(INSIDE, fit.status, fit.reason, d_in, n_grow)

    return inside, fit


def _new_mapping_kind(
    inp: ReplayInput,
    grow: list[int],
    ts: list[float],
    new_p: I64,
    d_new: list[int],
    tmpl_new: list[I64],
    room: float,
    has_maps: bool,
) -> _Kind:
    """The continuation of the pages of new mappings (module notes)."""
    l1, l2 = ts[1] - ts[0], ts[2] - ts[1]
    span = l1 + l2
    made = new_p.sum(axis=1).astype(np.float64)
    made[[t.size == 0 for t in tmpl_new]] = 0.0
    new_maps: _Kind
    if not has_maps:
        new_maps = _none(NEW_MAPPINGS, "none", "the input holds no mappings", d_new, len(grow))
    elif sum(d_new) < MIN_PAGES or made.sum() <= 0:
        new_maps = _none(
            NEW_MAPPINGS,
            "none",
            f"no steady growth in new mappings ({d_new[0]:+d}, {d_new[1]:+d} pages)",
            d_new,
            len(grow),
        )
    else:
        rate = made / span
        age = _ages(inp, grow, ts[2], span)
        horizon = np.minimum(age * STEADY_AGE_FACTOR, STEADY_MAX_S)
        share = rate * horizon
        capped = float(share.sum()) > room
        if capped:
            scale = room / float(share.sum())
            rate, share = rate * scale, share * scale
        h = horizon[made > 0]
        new_maps = _Kind(
            KindNote(
                NEW_MAPPINGS,
                "continued",
                "mean rate",
                f"mappings created at a pace two intervals cannot show a trend in "
                f"({d_new[0] / l1:.0f} then {d_new[1] / l2:.0f} pages/s): the mean rate, "
                f"for as long again as each process had run ({h.min():.0f}-{h.max():.0f} s)",
                d_new,
                rate_pages_per_s=float(rate.sum()),
                horizon_s=float(h.max()),
                capped=capped,
            ),
            tmpl_new,
            share,
            rate,
            horizon,
        )
    return new_maps


def _ages(
    inp: ReplayInput, grow: list[int], t_last_s: float, span_s: float
) -> npt.NDArray[np.float64]:
    """Per process of ``grow``: how long it had run at the last snapshot, where the trace
    states its start; else (or if shorter) the span the snapshots watched it."""
    started: dict[int, float] = inp.meta.get("mm_start_s") or {}
    age = [t_last_s - started[m] if m in started else span_s for m in grow]
    return np.maximum(np.array(age, np.float64), span_s)


def fresh_contents(hashes: U64, reps: I64, fresh: B, seed: int, step: int) -> U64:
    """``hashes`` of a step's drawn rows (``reps``: the pass of the draw each is from) with
    those of ``fresh`` rows replaced by contents new to the step and pass: one per template
    content (:func:`_fresh`), so drawn rows that share a content still share it."""
    out = hashes.copy()
    for rep in np.unique(reps[fresh]).tolist():
        sel = fresh & (reps == rep)
        out[sel] = _fresh(out[sel], _salt(seed, step, rep))
    return out


def draw_rows(
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


class _GrowthIds:
    """Content ids of the growth's rows, as a :class:`ContentCatalog` of the whole trace
    would give them after ``known`` (the input's ``content_hash``: the hash of each id): a
    hash the trace holds keeps its id, a new one gets the next id in order of first
    appearance. Only the hashes the growth will ask for (``wanted``) are kept; ``known``
    is searched once for them (:func:`_found_in`; a catalog of the
    trace's contents cost ~1 GB at 16 M pages, more than the rest of the growth)."""

    def __init__(self, known: U64, wanted: U64) -> None:
        u = np.unique(wanted)
        gid = np.full(u.size, -1, np.int64)
        for rows, at in _found_in(u, known):
            gid[at] = rows
        self._u, self._gid, self._next = u, gid, int(known.size)
        self._new: list[U64] = []

    def ids_of(self, values: U64) -> npt.NDArray[np.int32]:
        """Ids of ``values`` (each one of ``wanted``)."""
        i = np.searchsorted(self._u, values)
        miss = self._gid[i] < 0
        if miss.any():
            slots, first = np.unique(i[miss], return_index=True)
            slots = slots[np.argsort(first, kind="stable")]  # in order of first appearance
            self._gid[slots] = self._next + np.arange(slots.size)
            self._next += int(slots.size)
            self._new.append(self._u[slots])
        return self._gid[i].astype(np.int32)

    def hashes(self, known: U64) -> U64:
        """The hash of every id: ``known``'s, then the new ones'."""
        return np.concatenate([known, *self._new])


def _moved_up(at: I64, src: I64, pos: I64, pos_src: I64) -> tuple[I64, I64]:
    """Rows ``at`` of a snapshot (sorted) where ``pos`` rows are inserted (their positions
    after, with ``pos_src``): where the rows of ``at`` are then (:func:`moved_up`), and the
    ``pos`` rows, all sorted, each with its ``src``/``pos_src``."""
    order = np.argsort(pos, kind="stable")
    p = pos[order]
    rows = np.concatenate([moved_up(at, p), p])
    srcs = np.concatenate([src, pos_src[order]])
    by_row = np.argsort(rows, kind="stable")
    return rows[by_row], srcs[by_row]


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
    t_last = inp.times_ns[-1]
    next_page = {m: int(last.page[last.rows_of(m)[1] - 1]) + 1 for m in grow}
    # new pages take frame ids above every frame of the last snapshot (prepared traces
    # number frames densely; an id space too full for that leaves the growth out)
    frame_next = int(last.frame.max()) + 1 if last.n else 1
    if frame_next + int(add.sum()) >= 1 << 63:  # pragma: no cover - ids are dense
        return inp, {}
    pids: dict[str, int] = {}
    steps: list[tuple[int, RowColumns, I64]] = []  # (time, its new rows, their sources)
    for j in range(add.shape[0]):
        parts_key, parts_hash, parts_flags, parts_src = [], [], [], []
        for i, m in enumerate(grow):
            c = int(add[j, i])
            if c <= 0:
                continue
            rows, reps = draw_rows(last.hash, tmpl[i], c, seed, j)
            h = fresh_contents(last.hash[rows], reps, ~keep_content[rows], seed, j)
            page = next_page[m] + np.arange(c, dtype=np.uint64)
            next_page[m] += c
            if next_page[m] > int(PAGE_MASK):  # pragma: no cover - a 47-bit address space
                raise AssertionError("growth ran out of page numbers")
            parts_key.append((np.uint64(m) << np.uint64(36)) | page)
            parts_hash.append(h)
            parts_flags.append(last.flags[rows])
            parts_src.append(rows)
            pid = str(inp.mms[m].pid)
            pids[pid] = pids.get(pid, 0) + c
        if parts_key:
            new = RowColumns(
                key=np.concatenate(parts_key),
                hash=np.concatenate(parts_hash),
                frame=np.empty(0, np.uint64),  # numbered by appended_delta
                flags=np.concatenate(parts_flags),
            )
            t_ns = t_last + round((j + 1) * step_s * 1e9)
            steps.append((t_ns, new, np.concatenate(parts_src)))
    if not steps:  # pragma: no cover - continue_growth appends only a growth of some page
        return inp, {}
    return append_rows(inp, last, steps), pids


def append_rows(
    inp: ReplayInput,
    last: SnapshotRows,
    steps: list[tuple[int, RowColumns, I64]],
    flips: list[tuple[I64, U8]] | None = None,
) -> ReplayInput:
    """``inp`` (whose last snapshot is ``last``) with one snapshot appended per step of
    ``steps``: its time (ns, increasing, after the last snapshot's), the rows it adds (each
    above every row of its mm, in page order within an mm; their frames are numbered here,
    one fresh page each, above every frame before) and, per row, the row of ``last`` whose
    write counts it takes (:attr:`IntervalWrites.grown_at`). Shared by the growth model and
    the growth held to a canary (:mod:`planner.engine.canary_growth`).

    ``flips``, one per step: rows of ``last`` (sorted positions) whose flags become the
    ones given at that step, content and physical page kept
    (:func:`planner.engine.rows.with_flag_changes`): a canary's process that shrank has
    pages out of ksmd's reach."""
    w_last = inp.writes[-1] if inp.writes else None
    t_last = inp.times_ns[-1]
    wk: IntervalWrites | None = None
    if w_last is not None:
        wk = dataclasses.replace(w_last, origin_ns=t_last)
    frame_next = int(last.frame.max()) + 1 if last.n else 1
    ids = _GrowthIds(inp.content_hash, np.concatenate([new.hash for _, new, _ in steps]))
    deltas = list(inp.deltas)
    writes = list(inp.writes)
    if writes:
        writes[-1] = wk
    # the rows of the current step's snapshot that ``last`` lacks (positions, sorted) and
    # the row of ``last`` whose write counts each takes (see IntervalWrites.grown_at)
    grown_at, grown_src = np.empty(0, np.int64), np.empty(0, np.int64)
    gid_last: I32 | None = None
    layout, n_frames = last.layout, last.n_frames
    for j, (t_ns, new, src_new) in enumerate(steps):
        delta, pos = appended_delta(
            layout, n_frames, new, frame_next, index=len(deltas), time_ns=t_ns, ids_of=ids.ids_of
        )
        before = grown_at
        grown_at, grown_src = _moved_up(grown_at, grown_src, pos, src_new)
        if flips is not None and flips[j][0].size:
            rows, flags = flips[j]  # rows of ``last``: moved up by the rows it lacks
            if gid_last is None:
                gid_last = _content_ids(inp, last).astype(np.int32)
            delta = with_flag_changes(
                delta,
                moved_up(rows, grown_at),
                moved_up(rows, before),
                last.frame[rows],
                flags,
                gid_last[rows],
            )
        deltas.append(delta)
        frame_next += new.key.size
        layout, n_frames = delta.layout, delta.n_frames
        if wk is not None:
            writes.append(
                IntervalWrites(
                    content=wk.content,
                    same=wk.same,
                    toggle=wk.toggle,
                    length_ns=wk.length_ns,
                    origin_ns=t_last,
                    grown_at=grown_at,
                    grown_src=grown_src,
                )
            )
    return dataclasses.replace(
        inp, deltas=deltas, writes=writes, content_hash=ids.hashes(inp.content_hash), _seq=None
    )


__all__ = [
    "HORIZON_TAUS",
    "MAX_GROWTH_FRACTION",
    "MAX_STEPS",
    "MAX_TAU_SPANS",
    "MIN_STEP_S",
    "GrowthFit",
    "GrowthNote",
    "append_rows",
    "continue_growth",
    "draw_rows",
    "fit_growth",
    "fresh_contents",
    "noted",
]
