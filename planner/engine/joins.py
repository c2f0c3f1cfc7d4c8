"""Joins: pages that take, between two snapshots, a content other pages already hold.

A trace's snapshots show shared memory turning over. Between two snapshots some pages go
from a content no other page holds to one that others hold (a *join*: a heap page freed by
a garbage collector and left holding one value repeated, a buffer reset to a common
pattern), and some go the other way (a *leave*). Where the two balance, the snapshots show
a steady number of shared pages, while the pages that make it up change.

The replay continues what the trace shows after its last snapshot (the write model,
:mod:`planner.engine.writes`; the growth, :mod:`planner.engine.growth`), but not joins
(except those a canary saw: :func:`planner.engine.writes.with_canary`):
after the last snapshot each row writes at the rate of its own sampled interval, every
change to a content never seen before, and a row the sampler saw still stays still. So the
leaves go on and the joins stop. Where joins are fast against the shared memory, the
replay's steady saving is therefore low: on the Node.js runs of docs/live-validation.md
(section "Node with its canary: what the kernel merges that the replay cannot") the trace
showed 467-548 joins per 2 s interval against 4,800-6,500 shared rows, and the replay's
`pages_sharing` was 24-57 % below the kernel's.

Continuing joins needs how long a joined page keeps its content, which three snapshots
measure once (:attr:`JoinNote.survived`), and which differed between two Node runs (52 %
and 99 % over 2 s). Until a trace can tell it better, this module measures the joins and
the replay states them (the result's provenance, ``joins``), with a warning where a
minute of them reaches :data:`WARN_TURNOVER_PER_MIN` of the shared rows. On the recorded
runs that is 2.4-3.0 times the shared rows for Node, and 0.04-0.17 times for PostgreSQL,
churn and the Django runs, whose errors the joins do not decide (the same-content writes a
capture without soft-dirty misses make them high instead). Counts are
over every row (eligible or not, as the growth counts them): a content flux of the
workload, whatever the policy.

**Definitions**, for the interval from snapshot ``a`` to snapshot ``b`` (both traced):
a *changed* row is at the same address in both, with other content at ``b`` (a row whose
frame or flags alone changed is not); a content is *held* by a row at a snapshot when
another row of that snapshot has the same content; a join is a changed row whose content
is held at ``b`` and whose content at ``a`` was not held at ``a``; a leave the reverse.
A join lands *in its process* when another row of the same process holds the content at
``b``. The last :data:`INTERVALS` intervals of the trace are measured.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from planner.engine.prepare import ReplayInput
    from planner.engine.rows import SnapshotDelta

I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]

#: The trace's last intervals measured.
INTERVALS: Final = 2
#: A warning when the joins of a minute (at the measured rate) reach this share of the
#: rows whose content is held at the last snapshot (module notes) ...
WARN_TURNOVER_PER_MIN: Final = 0.5
#: ... and are at least this many pages.
WARN_MIN_PAGES_PER_MIN: Final = 100


@dataclass(frozen=True)
class JoinInterval:
    """The joins and leaves of one interval between traced snapshots."""

    from_s: float
    """Its start: the earlier snapshot's time from the first snapshot."""
    length_s: float
    changed: int
    """Rows at the same address at both ends whose content changed."""
    joins: int
    """Changed rows that went from a content no other row held to one another row holds."""
    leaves: int
    """Changed rows that went the other way."""
    joins_in_process: int
    """Joins whose content another row of the same process holds."""


@dataclass(frozen=True)
class JoinNote:
    """The joins a trace shows (module notes), as the result's provenance states them."""

    intervals: tuple[JoinInterval, ...] = ()
    held_rows: int = 0
    """Rows of the last snapshot whose content another row holds."""
    survived: tuple[int, int] | None = None
    """Of the joins of the interval before the last, still at their address: how many
    hold the same content at the last snapshot, and of how many. None: fewer than two
    intervals, or no such join."""
    continued: bool = False
    """Whether the replay continues joins after the last snapshot: only as a canary saw
    them (:func:`planner.engine.writes.with_canary`), never from the trace alone."""
    canary_rows: int = 0
    """Rows of the last traced snapshot that join after it, as a canary saw them merge."""
    reason: str = "fewer than two snapshots"
    """Why nothing was measured, where nothing was."""

    @property
    def joins_per_s(self) -> float:
        """Joins per second over the measured intervals."""
        span = sum(i.length_s for i in self.intervals)
        return sum(i.joins for i in self.intervals) / span if span > 0 else 0.0

    @property
    def turnover_per_min(self) -> float | None:
        """The joins of a minute, as a share of the held rows (None without held rows)."""
        return self.joins_per_s * 60.0 / self.held_rows if self.held_rows else None

    @property
    def warning(self) -> str | None:
        """A warning when the joins are fast against the shared memory (module notes)."""
        turnover = self.turnover_per_min
        per_min = self.joins_per_s * 60.0
        if self.continued or turnover is None or per_min < WARN_MIN_PAGES_PER_MIN:
            return None
        if turnover < WARN_TURNOVER_PER_MIN:
            return None
        return (
            f"between its snapshots the trace shows {self.joins_per_s:,.0f} pages a second "
            f"taking a content that other pages hold ({turnover:.0%} of its "
            f"{self.held_rows:,} shared pages a minute); the replay continues none of these "
            "joins after the last snapshot, so its steady saving leaves out what they go on "
            "to merge (on the Node.js runs of docs/live-validation.md it was 24-57 % below "
            "the kernel's)"
        )

    def summary(self) -> str:
        """One line: the joins a second, the shared rows and the survival measured."""
        if not self.intervals:
            return f"joins: not measured ({self.reason})"
        parts = [
            f"joins: {self.joins_per_s:,.1f} pages/s take a content other pages hold "
            f"({sum(i.joins for i in self.intervals):,} over {len(self.intervals)} "
            f"interval(s); leaves {sum(i.leaves for i in self.intervals):,}); "
            f"{self.held_rows:,} shared rows at the last snapshot"
        ]
        if self.survived is not None:
            parts.append(f"{self.survived[0]:,} of {self.survived[1]:,} joins kept their content")
        parts.append(
            f"continued as the canary saw them ({self.canary_rows:,} rows join)"
            if self.continued
            else "not continued after the trace"
        )
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The note as JSON-able values, with the derived figures."""
        d = dataclasses.asdict(self)
        d["intervals"] = [
            {**i, "from_s": round(i["from_s"], 3), "length_s": round(i["length_s"], 3)}
            for i in d["intervals"]
        ]
        d["survived"] = None if self.survived is None else list(self.survived)
        turnover = self.turnover_per_min
        d["joins_per_s"] = round(self.joins_per_s, 3)
        d["turnover_per_min"] = None if turnover is None else round(turnover, 4)
        d["warning"] = self.warning
        return d


def _apply_gids(old: I32 | None, d: SnapshotDelta) -> I32:
    """The content id of every row of ``d``'s snapshot, from the snapshot before's: the
    one column of :func:`planner.engine.rows.apply_delta` this module reads (4 bytes a
    row, where a full rebuild holds about 30)."""
    gid = np.empty(d.n_rows, np.int32)
    if old is not None and d.n_old:
        so, sn = d.survivors()
        gid[sn] = old[so]
    gid[d.upd] = d.upd_gid
    return gid


def _in_own_mm(d: SnapshotDelta, gid: I32, rows: I64) -> B:
    """Per row of ``rows`` (of ``d``'s snapshot): whether another row of its own mm holds
    its content. Only the rows holding one of their contents are looked at."""
    if not rows.size:
        return np.zeros(0, bool)
    wanted = np.unique(gid[rows])
    flag = np.zeros(int(gid.max()) + 1, bool)
    flag[wanted] = True
    holders = np.flatnonzero(flag[gid])
    lay = d.layout

    def mm_of(r: I64) -> I64:
        return np.asarray(lay.present[np.searchsorted(lay.hi, r, side="right")], np.int64)

    n_mm = int(lay.present.max()) + 1 if lay.present.size else 1
    pair_u, pair_count = np.unique(
        gid[holders].astype(np.int64) * n_mm + mm_of(holders), return_counts=True
    )
    mine = gid[rows].astype(np.int64) * n_mm + mm_of(rows)
    pos = np.minimum(np.searchsorted(pair_u, mine), pair_u.size - 1)
    return np.asarray((pair_u[pos] == mine) & (pair_count[pos] >= 2), bool)


def measure_joins(inp: ReplayInput, *, intervals: int = INTERVALS) -> JoinNote:
    """The joins and leaves of the last ``intervals`` intervals of ``inp``'s snapshots (all
    of them traced: the input as prepared, before the growth appends any), the rows held at
    the last snapshot and how many of the earlier interval's joins kept their content.

    One pass over the deltas rebuilds the content-id column alone (nothing is kept on
    ``inp``); a content is held where two rows of the snapshot or more hold it (a count
    per content id: 0.15-0.19 s for a 4 M-page trace of three snapshots, where counting the
    changed rows' contents alone, densely numbered, took 0.6 s and sorting them 0.9 s:
    the rows holding popular contents are many). The changed rows come from the deltas:
    nothing is aligned by key."""
    n = inp.n_snapshots
    if n < 2 or intervals < 1:
        return JoinNote()
    first = max(0, n - 1 - intervals)
    times = inp.times_ns
    out: list[JoinInterval] = []
    joined_at: I64 | None = None  # positions of the previous interval's joins, after it
    survived: tuple[int, int] | None = None
    gid: I32 | None = None
    count: I64 | None = None  # rows per content id of ``gid``'s snapshot
    for k, d in enumerate(inp.deltas):
        new = _apply_gids(gid, d)
        if k > first and gid is not None and count is not None:
            new_count = np.bincount(new)
            stay = d.upd_old >= 0
            at_old = d.upd_old[stay].astype(np.int64)
            at_new = d.upd[stay].astype(np.int64)
            diff = gid[at_old] != new[at_new]
            at_old, at_new = at_old[diff], at_new[diff]
            if joined_at is not None and joined_at.size:
                gone = np.zeros(gid.size, bool)  # rows removed, or whose content changed
                gone[d.removed.astype(np.int64)] = True
                gone[at_old] = True
                survived = (int(np.count_nonzero(~gone[joined_at])), int(joined_at.size))
            held_before = count[gid[at_old]] >= 2
            held_after = new_count[new[at_new]] >= 2
            join = held_after & ~held_before
            out.append(
                JoinInterval(
                    from_s=(times[k - 1] - times[0]) / 1e9,
                    length_s=(times[k] - times[k - 1]) / 1e9,
                    changed=int(at_old.size),
                    joins=int(np.count_nonzero(join)),
                    leaves=int(np.count_nonzero(held_before & ~held_after)),
                    joins_in_process=int(np.count_nonzero(_in_own_mm(d, new, at_new[join]))),
                )
            )
            joined_at = at_new[join]
            count = new_count
        elif k >= first:
            count = np.bincount(new)
        gid = new
    held_rows = 0 if count is None else int(count[count >= 2].sum())
    return JoinNote(intervals=tuple(out), held_rows=held_rows, survived=survived)


__all__ = [
    "INTERVALS",
    "WARN_MIN_PAGES_PER_MIN",
    "WARN_TURNOVER_PER_MIN",
    "JoinInterval",
    "JoinNote",
    "measure_joins",
]
