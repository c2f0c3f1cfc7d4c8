"""When in its period a row writes: each process's writes as the sampler's passes saw them.

The write model (:mod:`planner.engine.writes`) spaces a row's ``n`` writes of an interval
of length ``L`` evenly, ``L / n`` apart, from a phase in ``[0, 1)``. Drawn uniformly per
row, the phase makes the rows of a host write at independent times. Real writers are not
independent: a worker rewrites its buffers in one burst, a timer fires in every process of
a pool at once. Which matters to KSM: when every copy of a shared content is written
together, the KSM page loses all its mappers at once and is freed, and each copy merges
again only through the unstable tree; written at scattered times, each copy merges again
at once with the KSM page the others keep. In the soft-dirty guest run ``churn-rewrite-1``
(4 workers rewriting 500 pages each in the same 10 ms every 500 ms), uniform phases broke
33.6 merges per full scan where the kernel broke 75.3 (docs/live-validation.md, "Writes in
step").

A sampled trace says when each process wrote: its ``samples`` table has, per pass and
process, when the pass looked (``t0_s``, ``t1_s``) and how many of the process's pages it
found written with the content unchanged (``same_content_writes``, soft-dirty) or changed
(``pages_changed``). So each process has a *write profile* per interval: the windows
between its passes, each weighted by the writes counted at its end. A row's phase is then
the seeded uniform draw carried through that profile over the row's first period
``[0, L / n)``: where the process wrote in bursts, its rows' first writes fall in the burst
windows; where it wrote evenly, the phases stay about uniform. Within a window the time is
uniform. A process whose profile has no write in the row's first period (or no pass at
all: a version-1 trace, a trace sampled by another tool) keeps the uniform phase.

Same-content writes use the windows ending at each pass's look (the pagemap read that
found the soft-dirty bit), content changes those ending at the pass's end (when it had
hashed the pages it checked). A content change found by a check of a page not checked at
the pass before (a sampler short of CPU checks cold pages in rotation) happened somewhere
since its previous check, which can be several windows back: its window is then placed
later than the write. That biases the phase late, never outside the interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

#: Write kinds, as :func:`planner.engine.writes._phases` numbers its streams.
SAME_KIND: Final = 1
CONTENT_KIND: Final = 2


@dataclass(frozen=True)
class PassTiming:
    """Each process's write profile over one interval (see the module notes).

    One entry per pass and process, sorted by mm then time; times in ns from the
    interval's start (its snapshot's time). An mm's windows are contiguous: each starts
    where the one before ended (the first at 0)."""

    mm: I64
    same_end_ns: I64
    """When the pass read the process's pagemap (a same-content write is seen there)."""
    content_end_ns: I64
    """When the pass ended for the process (a content change is seen there)."""
    same: F64
    """Same-content writes the pass counted on the process's pages (0 without soft-dirty)."""
    content: F64
    """Content changes the pass counted."""

    @property
    def nbytes(self) -> int:
        """Memory held."""
        return sum(
            a.nbytes
            for a in (self.mm, self.same_end_ns, self.content_end_ns, self.same, self.content)
        )

    def phases(self, u: F64, mm: I64, period_ns: F64, kind: int) -> F64:
        """The phase of each row (``mm``, writes every ``period_ns``), from its uniform
        draw ``u``: the draw carried through its process's profile over ``[0, period)``,
        or ``u`` itself where that holds no write of ``kind``."""
        ends = self.same_end_ns if kind == SAME_KIND else self.content_end_ns
        weights = self.same if kind == SAME_KIND else self.content
        return profile_phases(u, mm, period_ns, self.mm, ends, weights)


def profile_phases(
    u: F64, mm: I64, period_ns: F64, win_mm: I64, win_end_ns: I64, win_weight: F64
) -> F64:
    """:meth:`PassTiming.phases` on explicit windows (sorted by mm then end; each mm's
    windows contiguous from 0). Vectorized: one search per row in the cumulative weights
    of all windows."""
    out = np.array(u, dtype=np.float64, copy=True)
    if win_mm.size == 0 or u.size == 0:
        return out
    end = win_end_ns.astype(np.float64)
    first = np.ones(win_mm.size, bool)
    first[1:] = win_mm[1:] != win_mm[:-1]
    start = np.where(first, 0.0, np.concatenate(([0.0], end[:-1])))
    width = np.maximum(end - start, 0.0)
    w = np.maximum(win_weight.astype(np.float64), 0.0)
    w = np.where(width > 0, w, 0.0)
    cum = np.cumsum(w)  # over all windows; an mm's range is contiguous in it
    before = cum - w  # cumulative weight before each window
    # each row's mm: the range of its windows (rows of an mm without windows keep u)
    lo = np.searchsorted(win_mm, mm, side="left")
    hi = np.searchsorted(win_mm, mm, side="right")
    has = hi > lo
    period = np.asarray(period_ns, dtype=np.float64)
    # the weight up to the end of the row's first period: the window holding it, in part
    rows = np.flatnonzero(has)
    lo_r, hi_r = lo[rows], hi[rows]
    p = period[rows]
    jr = _search_within(end, p, lo_r, hi_r)  # first window of the mm ending at/after p
    inside = jr < hi_r  # else the period outlasts the profile: all of it
    jr_c = np.minimum(jr, hi_r - 1)
    base = before[lo_r]
    frac = np.where(
        inside & (width[jr_c] > 0),
        np.clip((p - start[jr_c]) / np.where(width[jr_c] > 0, width[jr_c], 1.0), 0.0, 1.0),
        1.0,
    )
    total = np.where(inside, before[jr_c] - base + w[jr_c] * frac, cum[hi_r - 1] - base)
    ok = total > 0
    rows, lo_r, hi_r, p, base, total = rows[ok], lo_r[ok], hi_r[ok], p[ok], base[ok], total[ok]
    target = base + u[rows] * total
    # the window where the cumulative weight reaches the target: the last window with a
    # weight that starts at or before it (the first of the mm's when the draw is 0)
    weighted = np.flatnonzero(w > 0)
    k = weighted[np.maximum(np.searchsorted(before[weighted], target, side="right") - 1, 0)]
    k = np.clip(k, lo_r, hi_r - 1)
    into = np.where(w[k] > 0, (target - before[k]) / np.where(w[k] > 0, w[k], 1.0), 0.0)
    t = start[k] + np.clip(into, 0.0, 1.0) * width[k]
    phase = t / np.where(p > 0, p, 1.0)
    out[rows] = np.clip(phase, 0.0, np.nextafter(1.0, 0.0))
    return out


def _search_within(end: F64, value: F64, lo: I64, hi: I64) -> I64:
    """Per query, the first index in ``[lo, hi)`` whose ``end`` is >= ``value`` (``hi`` if
    none): a binary search per row, all rows at once (each range is sorted)."""
    a = lo.copy()
    b = hi.copy()
    while True:
        active = a < b
        if not active.any():
            return a
        mid = (a + b) // 2
        go_right = active & (end[np.minimum(mid, end.size - 1)] < value)
        a = np.where(go_right, mid + 1, a)
        b = np.where(active & ~go_right, mid, b)


__all__ = ["CONTENT_KIND", "SAME_KIND", "PassTiming", "profile_phases"]
