"""Growth held to a canary: the memory the traced processes gained while ksmd ran, as a
canary of the same run saw it.

The growth model (:mod:`planner.engine.growth`) continues what three snapshots show. A
canary recorded over the traced run (``observe --ksm-pages`` from the moment ksmd starts,
right after the capture: :func:`planner.engine.writes.records_traced_run`) measured it
instead: each followed process's present anonymous pages at each sample
(:class:`planner.engine.writes.CanarySizes`), and every page it saw merged, among them
pages at addresses the capture never saw. On the JVM canary runs of docs/live-validation.md
("Growth held to the canary") each worker gained 10-13 thousand pages in the first 10 s, and
the kernel merged 4.6-6.5 thousand pages at new addresses; the growth model, fitted on three
snapshots 2 s apart, merged 0.6-5.6 thousand. Where such a canary is given, the growth after
the trace is the canary's:

* **How much, when.** At each sample a process has grown to its present pages less its
  rows at the last snapshot (the canary counts the pages a capture reads: on every recorded
  run the processes that did not grow had the same count in both, to a page; where the
  canary's first sample counts fewer, the growth is counted from that sample). The replay's
  clock and the canary's both start with ksmd (ksmd starts at the first snapshot in a
  replay aligned by time), so a sample at ``t`` is the replay's ``t`` too; the growth the
  samples up to the last snapshot's time show is added just after it. Rows are never
  removed (the write model and the canary's calibration index every appended snapshot by
  the last traced snapshot's rows): a process that gives pages back keeps the most rows
  it reached, and as many of its traced rows as it holds rows above its present pages go
  out of ksmd's reach (see "Pages given back" below). After the recording each process
  keeps its size.
* **Which pages.** The canary's pages of the process at addresses the last snapshot does not
  hold that it saw merged at some sample are added in order of their first merge, each in
  the last step at least :data:`~planner.engine.writes.REJOIN_LEAD_SCANS` of the canary's
  full scans before the sample that saw it merged (and before that sample): a new page
  merges at its first or second visit, so the model merges it when the kernel did. The
  rest of its growth is pages the canary never saw merged, as many at each step as the
  size leaves room for then and later (:func:`_others`); a process is given more pages
  than its size says only where its pages seen merged require it (new addresses that
  replaced others). Until 2026-12-07 the pages seen merged came as early as the sizes
  allowed, and merged there: on a Node canary run the model had 1,391 of them merged at
  5 s and 3,384 at 15 s where the kernel had 320 and 883 merged pages at new addresses,
  and ``pages_sharing`` was +16.6 % (+6.9 % now; docs/live-validation.md, "Pages at new
  addresses merge when the canary saw them merge").
* **What they hold.** A page the canary saw merged takes the write counts, flags and
  eligibility of a row of its process that holds a content no other row holds and was
  written neither with new contents nor the same ones, and a content of its own: the canary's
  joins (:func:`planner.engine.writes.with_canary`) then give it the content its process holds
  most from the time it appears, and its own write rate and time of leaving, as for a
  traced page the canary saw merge. The other pages are drawn from the process's rows of a
  content of their own, written as they are, each with a new content: the canary never saw
  them merged.

**Pages given back.** A process can shrink while ksmd runs: on a Node canary run of
2026-12-07 two of the four workers fell from 12-13 thousand present pages to about 5
thousand within a second (a full garbage collection), 16 and 24 s into the minute, and grew
back to 8 thousand by its end. The kernel's ksmd only visits present pages (an address
without a page gets no rmap_item, and the item of a page unmapped is freed at the next
pass), so its full scans grew shorter; with every row kept the model scanned half as many
pages again as the kernel and made 211 full scans where it made 270. At each step a
process holds more rows than present pages, as many of its traced rows as the difference
lose their eligibility (a delta that changes their flags alone,
:func:`planner.engine.rows.with_flag_changes`; their contents and physical pages stay, so
the write model's rows and the canary's records are unchanged): first the pages the canary
saw unmapped for good, from the time it saw them go (they have left already,
:func:`planner.engine.writes.with_canary`), then pages of a content of their own that the
canary never saw merged, in a seeded order (taking one out changes no merge the model can
make). As the process grows again they come back in the reverse order, before any new row
is added. Both engines then free such a row's rmap_item at their next pass over it, as the
kernel does.

The grown rows take page numbers above the process's last row and above every page the
canary recorded of it (an appended snapshot adds rows after its mm's rows:
:func:`planner.engine.rows.appended_delta`). The canary's records of the pages placed so are
renamed to their rows' keys, and :func:`canary_growth` returns the canary so renamed for
:func:`planner.engine.writes.with_canary`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt

from planner.engine.growth import (
    MAX_STEPS,
    GrowthNote,
    append_rows,
    draw_rows,
    fresh_contents,
    noted,
)
from planner.engine.rows import F_ELIGIBLE, PAGE_MASK, RowColumns, isin
from planner.engine.writes import _held_twice

if TYPE_CHECKING:
    from planner.engine.prepare import ReplayInput
    from planner.engine.rows import SnapshotRows
    from planner.engine.writes import CanaryRates, CanarySizes

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
B = npt.NDArray[np.bool_]

#: The growth the samples up to the last snapshot's time show is added this long after it.
AFTER_LAST_NS: Final = 1_000_000
#: Draws of the pages the canary never saw merged take salts this far from the others'.
_OTHER_SALT: Final = 1 << 20


@dataclass(frozen=True)
class _Process:
    """One process's growth: its rows' cumulative count at each step, the pages it saw
    merged (in order of their first merge), its templates."""

    mm: int
    pid: int
    cum_seen: I64
    """Per step: how many of its pages seen merged it holds (cumulative)."""
    cum_other: I64
    """Per step: how many pages never seen merged it holds (cumulative)."""
    seen: U64
    seen_tmpl: I64
    other_tmpl: I64
    next_page: int
    short: I64
    """Per step: how many of its traced rows are out of ksmd's reach (the process holds
    fewer pages than its rows)."""
    leavers: I64
    """Its traced rows the canary saw unmapped, in order of leaving (rows of the last
    snapshot), with ``leave_ns``: each is taken out of reach first, from its time on."""
    leave_ns: I64
    spare: I64
    """Its other traced rows that may be taken out of reach, in a seeded order: eligible,
    a content of their own, never seen merged (taking one out changes no merge)."""

    def hidden(self, k: int, t_ns: int) -> I64:
        """Its ``k`` rows of the last snapshot out of ksmd's reach at ``t_ns``."""
        if k <= 0:
            return np.empty(0, np.int64)
        gone = self.leavers[self.leave_ns <= t_ns]
        return np.concatenate([gone, self.spare])[:k]


def _steps(sizes: CanarySizes, t0_ns: int, t_last_ns: int) -> tuple[I64, I64]:
    """The steps' times (ns) and, per step, the last sample it holds."""
    at = np.maximum(t0_ns + np.rint(sizes.t_s * 1e9).astype(np.int64), t_last_ns + AFTER_LAST_NS)
    times, first = np.unique(at, return_index=True)
    last_sample = np.r_[first[1:] - 1, at.size - 1].astype(np.int64)
    return times.astype(np.int64), last_sample


def _base(present: I64, rows: int) -> int | None:
    """The count a process's growth is measured from: its rows at the last snapshot, or its
    first sample's present pages where that is fewer (None: no sample has a row of it)."""
    seen = present >= 0
    return min(rows, int(present[np.argmax(seen)])) if seen.any() else None


def _grown(present: I64, rows: int, last_sample: I64) -> I64:
    """A process's growth at each step: its present pages less :func:`_base`, never below
    the most it reached."""
    base = _base(present, rows)
    if base is None:
        return np.zeros(last_sample.size, np.int64)
    g = np.where(present >= 0, present - base, 0)
    return np.asarray(np.maximum.accumulate(np.maximum(g, 0))[last_sample], np.int64)


def _short(present: I64, rows: int, last_sample: I64, added: I64) -> I64:
    """Per step: how many of a process's rows exceed its present pages (it holds ``rows``
    at the last snapshot and ``added`` more at each step; :func:`_base`, as
    :func:`_grown`): the pages it gave back, which stay rows but are out of
    ksmd's reach. A sample without a row of it takes the count of the last one with one
    (none before its first: zero)."""
    base = _base(present, rows)
    if base is None:
        return np.zeros(last_sample.size, np.int64)
    known = np.maximum.accumulate(np.where(present >= 0, np.arange(present.size), -1))
    p = np.where(known >= 0, present[np.maximum(known, 0)], -1)[last_sample]
    want = rows + p - base
    return np.where(p >= 0, np.maximum(rows + added - want, 0), 0).astype(np.int64)


def _due(times_ns: I64, t0_ns: int, seen_s: npt.NDArray[np.float64], lead_s: float) -> I64:
    """Per step: how many of the pages seen merged (at ``seen_s``, sorted) it holds. Each
    comes in the last step at or before ``lead_s`` ahead of the sample that saw it merged
    (and before that sample; the first step for one seen before any)."""
    first_merge_ns = t0_ns + np.rint(seen_s * 1e9).astype(np.int64)
    latest = np.maximum(np.searchsorted(times_ns, first_merge_ns, side="left") - 1, 0)
    lead_ns = first_merge_ns - round(lead_s * 1e9)
    at = np.clip(np.searchsorted(times_ns, lead_ns, side="right") - 1, 0, latest)
    return np.cumsum(np.bincount(at, minlength=times_ns.size)).astype(np.int64)


def _others(cum: I64, due: I64) -> I64:
    """Per step: how many pages never seen merged a process holds, given its size ``cum``
    and its pages seen merged ``due`` at each step: as many as its size leaves room for at
    this step and every later one (a page once added stays), all of them by the end."""
    room = cum - due
    return np.asarray(np.minimum.accumulate(room[::-1])[::-1], np.int64)


def _pools(inp: ReplayInput, last: SnapshotRows) -> tuple[B, B, B]:
    """Rows that may stand for a page seen merged (a content of their own, eligible, not
    written over the last interval), for one never seen merged (a content of their own),
    and that may go out of ksmd's reach (a content of their own, eligible)."""
    own = ~_held_twice(last.content if last.content is not None else last.hash)
    still = np.ones(last.n, bool)
    w = inp.writes[-1] if inp.writes else None
    if w is not None:
        content, same, _ = w.per_row()  # (a row without changes does not toggle)
        still = (content == 0) & (same == 0)
    return own & still & last.eligible, own, own & last.eligible


def _processes(
    inp: ReplayInput,
    last: SnapshotRows,
    rates: CanaryRates,
    times_ns: I64,
    last_sample: I64,
    seed: int,
) -> list[_Process]:
    """Each traced process the canary followed, with its growth."""
    sizes = rates.sizes
    assert sizes is not None
    t0 = inp.times_ns[0]
    cpid = (rates.key >> np.uint64(36)).astype(np.int64)
    cpage = rates.key & np.uint64(PAGE_MASK)
    joined = rates.joined_s
    seen_pool, other_pool, spare_pool = _pools(inp, last)
    lead_s = rates.lead_s
    by_pid: dict[int, list[int]] = {}
    for m in last.mm_present.tolist():
        by_pid.setdefault(int(inp.mms[m].pid), []).append(int(m))
    out: list[_Process] = []
    for pid, mms in sorted(by_pid.items()):
        present = sizes.of(pid)
        if present is None:
            continue
        spans = [last.rows_of(m) for m in mms]
        rows = sum(hi - lo for lo, hi in spans)
        lo, hi = max(spans, key=lambda s: s[1] - s[0])  # the growth goes to its largest mm
        mm = mms[spans.index((lo, hi))]
        at = np.flatnonzero(cpid == pid)
        held_pages = np.concatenate([last.page[a:b] for a, b in spans])
        seen = np.zeros(0, np.uint64)
        seen_s = np.zeros(0, np.float64)
        if joined is not None and at.size:
            new = ~np.isnan(joined[at]) & ~isin(cpage[at], held_pages)
            order = np.lexsort((cpage[at][new], joined[at][new]))
            seen, seen_s = cpage[at][new][order], joined[at][new][order]
        seen_tmpl = lo + np.flatnonzero(seen_pool[lo:hi])
        if not seen_tmpl.size:  # no row can stand for a page seen merged: none is placed
            seen, seen_s = seen[:0], seen_s[:0]
        due = _due(times_ns, t0, seen_s, lead_s)
        cum = np.maximum.accumulate(np.maximum(_grown(present, rows, last_sample), due))
        others = _others(cum, due)
        short = _short(present, rows, last_sample, due + others)
        if not cum.size or (cum[-1] <= 0 and not short.any()):
            continue
        top = max(int(last.page[hi - 1]), int(cpage[at].max()) if at.size else 0)
        other_tmpl = lo + np.flatnonzero(other_pool[lo:hi])
        if not other_tmpl.size:
            other_tmpl = np.arange(lo, hi, dtype=np.int64)
        own_rows = np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in spans])
        leavers, leave_ns, spare = _reach(rates, pid, own_rows, last, spare_pool, t0, seed)
        out.append(
            _Process(
                mm,
                pid,
                due,
                others,
                seen,
                seen_tmpl,
                other_tmpl,
                top + 1,
                short,
                leavers,
                leave_ns,
                spare,
            )
        )
    return out


def _reach(
    rates: CanaryRates,
    pid: int,
    rows: I64,
    last: SnapshotRows,
    spare_pool: B,
    t0_ns: int,
    seed: int,
) -> tuple[I64, I64, I64]:
    """A process's rows (of the last snapshot) that may go out of ksmd's reach as it
    shrinks: those the canary saw unmapped for good, in order of leaving, with the time
    (ns); and the others that may (``spare_pool``, never seen merged), in a seeded order."""
    key = (np.uint64(pid) << np.uint64(36)) | last.page[rows]
    known = np.zeros(rows.size, bool)
    left = np.full(rows.size, np.nan)
    if rates.key.size:
        pos = np.minimum(np.searchsorted(rates.key, key), rates.key.size - 1)
        known = rates.key[pos] == key
        if rates.left_s is not None:
            left = np.where(known, rates.left_s[pos], np.nan)
            if rates.left_cow is not None:  # left by a write: the page is still there
                left[known & rates.left_cow[pos]] = np.nan
    gone = ~np.isnan(left)
    order = np.argsort(left[gone], kind="stable")
    leavers = rows[gone][order]
    leave_ns = t0_ns + np.rint(left[gone][order] * 1e9).astype(np.int64)
    spare = rows[spare_pool[rows] & ~known]
    spare = spare[np.random.default_rng([seed, pid]).permutation(spare.size)]
    return leavers, leave_ns, spare


def _coarse(
    times_ns: I64, cum: list[I64], levels: list[I64] | None = None
) -> tuple[I64, list[I64], list[I64]]:
    """At most :data:`MAX_STEPS` steps that add pages or change one of ``levels`` (how many
    rows are out of reach): a group of steps adds, at its first step's time, the pages of
    its last (a page never comes later than it did), and takes its last step's levels."""
    levels = [] if levels is None else levels
    adds = np.zeros(times_ns.size, bool)
    for c in cum:
        adds |= np.diff(c, prepend=0) > 0
    for v in levels:
        adds |= np.diff(v, prepend=0) != 0
    keep = np.flatnonzero(adds)
    if keep.size > MAX_STEPS:
        groups = np.array_split(keep, MAX_STEPS)
        t = np.array([times_ns[g[0]] for g in groups], np.int64)
        last = [int(g[-1]) for g in groups]
        return t, [c[last] for c in cum], [v[last] for v in levels]
    return times_ns[keep], [c[keep] for c in cum], [v[keep] for v in levels]


def canary_growth(
    inp: ReplayInput, rates: CanaryRates, *, seed: int = 0
) -> tuple[ReplayInput, GrowthNote, CanaryRates] | None:
    """``inp`` grown as the canary ``rates`` saw its processes grow (module notes), what was
    assumed, and the canary with the pages so placed renamed to their rows' keys; None where
    the canary recorded no sizes or no traced process grew."""
    sizes = rates.sizes
    n = inp.n_snapshots
    if sizes is None or not sizes.t_s.size or not n:
        return None
    last = inp.snapshots[n - 1]
    if not last.n:
        return None
    t_last = inp.times_ns[-1]
    times_ns, last_sample = _steps(sizes, inp.times_ns[0], t_last)
    procs = _processes(inp, last, rates, times_ns, last_sample, seed)
    if not procs:
        return None
    step_ns, cums, shorts = _coarse(
        times_ns, [c for p in procs for c in (p.cum_seen, p.cum_other)], [p.short for p in procs]
    )
    hidden = np.empty(0, np.int64)  # rows of ``last`` out of ksmd's reach (sorted)
    flips: list[tuple[I64, npt.NDArray[np.uint8]]] = []
    most_hidden = 0
    placed = [0] * len(procs)  # rows added so far, per process
    placed_seen = [0] * len(procs)
    next_page = [p.next_page for p in procs]
    renamed_from: list[U64] = []
    renamed_to: list[U64] = []
    steps: list[tuple[int, RowColumns, I64]] = []
    for j, t_ns in enumerate(step_ns.tolist()):
        now = np.sort(
            np.concatenate([p.hidden(int(shorts[i][j]), t_ns) for i, p in enumerate(procs)])
        )
        flip = np.setxor1d(hidden, now, assume_unique=True)
        out_of_reach = isin(flip, now, of_sorted=True)
        flips.append(
            (
                flip,
                np.where(out_of_reach, last.flags[flip] & ~np.uint8(F_ELIGIBLE), last.flags[flip]),
            )
        )
        hidden, most_hidden = now, max(most_hidden, int(now.size))
        keys, hashes, flags, srcs = [], [], [], []
        for i, p in enumerate(procs):
            k = int(cums[2 * i][j]) - placed_seen[i]
            c = k + int(cums[2 * i + 1][j]) - (placed[i] - placed_seen[i])
            if c <= 0:
                continue
            parts = []
            if k:
                parts.append(draw_rows(last.hash, p.seen_tmpl, k, seed, j))
            if c > k:
                rows, reps = draw_rows(last.hash, p.other_tmpl, c - k, seed, j)
                parts.append((rows, reps + _OTHER_SALT))
            rows = np.concatenate([r for r, _ in parts])
            reps = np.concatenate([r for _, r in parts])
            h = fresh_contents(last.hash[rows], reps, np.ones(rows.size, bool), seed, j)
            page = np.uint64(next_page[i]) + np.arange(c, dtype=np.uint64)
            if int(page[-1]) > int(PAGE_MASK):  # pragma: no cover - a 47-bit address space
                raise AssertionError("growth ran out of page numbers")
            if k:
                pid = np.uint64(p.pid) << np.uint64(36)
                renamed_from.append(pid | p.seen[placed_seen[i] : placed_seen[i] + k])
                renamed_to.append(pid | page[:k])
                placed_seen[i] += k
            next_page[i] += c
            placed[i] += c
            keys.append((np.uint64(p.mm) << np.uint64(36)) | page)
            hashes.append(h)
            flags.append(last.flags[rows])
            srcs.append(rows)
        if keys or flip.size:
            new = RowColumns(
                key=np.concatenate(keys) if keys else np.empty(0, np.uint64),
                hash=np.concatenate(hashes) if keys else np.empty(0, np.uint64),
                frame=np.empty(0, np.uint64),
                flags=np.concatenate(flags) if keys else np.empty(0, np.uint8),
            )
            src = np.concatenate(srcs) if keys else np.empty(0, np.int64)
            steps.append((int(t_ns), new, src.astype(np.int64)))
        else:
            flips.pop()
    if not steps:  # pragma: no cover - _processes keeps only processes that grow or shrink
        return None
    out = append_rows(inp, last, steps, flips)
    renamed = rates
    if renamed_from:
        renamed = rates.renamed(np.concatenate(renamed_from), np.concatenate(renamed_to))
    total = sum(placed)
    seen_placed = sum(placed_seen)
    note = GrowthNote(
        "canary",
        f"held to the canary's present pages ({sizes.t_s.size} samples over "
        f"{float(sizes.t_s[-1] - sizes.t_s[0]):.0f} s)",
        horizon_s=(int(step_ns[-1]) - t_last) / 1e9,
        total_pages=total,
        steps=len(steps),
        pages_by_pid={str(p.pid): placed[i] for i, p in enumerate(procs) if placed[i]},
        seen_merged_pages=seen_placed,
        out_of_reach_pages=most_hidden,
    )
    return noted(out, note, n), note, renamed


__all__ = ["AFTER_LAST_NS", "canary_growth"]
