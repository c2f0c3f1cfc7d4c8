"""The write model: the writes a trace saw between snapshots, replayed at their rates.

A snapshot shows a page's content at one instant; ksmd sees it continuously. A trace of
format v2 records, per page of each snapshot, what the sampler saw over the interval after
it (docs/capture.md §9): how many times the content changed, and the writes that left it
unchanged (soft-dirty, or a copy-on-write of a fork-shared page). This module turns those
counts into write events that the driver (:mod:`planner.engine.driver`) hands to both
engines between batches (docs/kernel-semantics.md §6.5 states what a write does to KSM).

**Per row and interval** (:class:`IntervalWrites`, built by :mod:`planner.engine.prepare`):

* ``content`` content changes and ``same`` same-content writes, counted over the interval;
* ``toggle``: whether the row's content at the next snapshot is the one it had at this one
  although it changed in between. Such a page alternates between two contents (the
  snapshot's and one other, which the trace does not show: a per-row content no other page
  has); the checksum gate lets it through whenever two visits find the same one of the two.
  Any other changing page *drifts*: every change is a content never seen before (a
  counter, a timestamp), and its last change is the next snapshot's own.

**When.** The ``n`` events of one kind of a row in an interval ``[t_k, t_k+1)`` of length
``L`` are evenly spaced, ``L / n`` apart, with a phase drawn per row, kind and interval
from the replay's seed: ``t_k + (phase + j) * L / n``. Even spacing keeps the recorded
count exact (a Poisson process would add a variance the trace does not have) and matches
the periodic writers that dominate such pages (timers, counters, allocator cycles). The
seeded draw is carried through the row's process's write profile, the sampler's passes
weighted by the writes each counted on that process (:mod:`planner.engine.write_timing`):
rows of a process that wrote in bursts write in its bursts, rows of one that wrote
evenly at independent times, as with the draw alone (a trace without passes). A drifting
row's last change is left to the next snapshot (which shows it); a toggling row's last
write restores the snapshot's content, so the next snapshot finds the row as the trace
says.

**After the last snapshot** the measured behaviour goes on: the last snapshot's rows write
at their rate over every sampled interval that holds them (the capture samples one more
interval after the last snapshot; :func:`continue_trend`), repeated for as long as the
replay runs, so the steady state keeps writing instead of freezing memory.

**Over grown memory.** The growth model (:mod:`planner.engine.growth`) appends synthetic
snapshots after the last one; each carries the continuation's counts for its rows (a row
the growth added takes its template row's) with ``origin_ns`` set, so a row's events keep
the times they had from the last traced snapshot on, and a toggling row keeps its other
content, whatever snapshot it is in.

**What an engine gets** (:class:`Writes`): per row written since the last batch, the
content it has now -- unchanged (:data:`SAME`: only same-content writes), the snapshot's
(:data:`RESTORE`), a content id (>= 0) no snapshot row has, or (:func:`held_code`) a
content of the trace's catalog that other rows of the snapshot hold (a canary saw the page
*join* others: :func:`with_canary`). Several writes to one row between two batches act as
one: the first breaks a merge, the last sets the content (merges happen only inside
batches), so nothing is lost by handing them over together.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from planner._jit import compiled_on_first_call
from planner.engine.rows import MM_SHIFT, ContentCatalog, isin, moved_up
from planner.engine.write_timing import CONTENT_KIND, SAME_KIND, PassTiming

if TYPE_CHECKING:
    from planner.engine.prepare import ReplayInput
    from planner.engine.rows import SnapshotDelta, SnapshotRows
    from planner.trace.recording import ObservedTimeline

I64 = npt.NDArray[np.int64]
I8 = npt.NDArray[np.int8]
U16 = npt.NDArray[np.uint16]
U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]

#: :attr:`Writes.content`: only same-content writes; the snapshot's content
SAME: Final = -2
RESTORE: Final = -1
#: :attr:`Writes.content` ``<= HELD_BASE``: a content of the catalog that other rows of the
#: snapshot hold, and whether it is the zero-filled one (:func:`held_code`,
#: :func:`held_content`)
HELD_BASE: Final = -3
#: The key of :func:`with_canary`'s input's ``meta`` that says how many rows take the
#: breaks the canary did not see, at what same-content write rate each, how many of them
#: the sampler saw change content (``changing``) and whether they keep it
#: (``hold_content``).
UNSEEN_META: Final = "canary_unseen"
#: The key of :func:`with_canary`'s input's ``meta`` that says how many rows of the last
#: traced snapshot join a content other rows hold (:class:`Joins`).
JOINS_META: Final = "canary_joins"

# event kinds
_K_SAME, _K_FRESH, _K_RESTORE, _K_OTHER, _K_GONE = 0, 1, 2, 3, 4
# stream schemes: same-content writes, drifting content, toggling content, leaving for good
# (unmapped; by a write of a new content), joining a content other rows hold (once)
_S_SAME, _S_DRIFT, _S_TOGGLE, _S_LEAVE, _S_LEAVE_COW, _S_JOIN = 0, 1, 2, 3, 4, 5
#: events generated at once (the continuation is generated window by window)
_WINDOW_EVENTS = 1 << 20
_NEVER = (1 << 63) - 1


@dataclass(frozen=True)
class CanaryOwn:
    """A snapshot the growth model appended, calibrated by a canary (:func:`with_canary`):
    where its rows' rates and times of leaving are not the last traced snapshot's. Its
    other rows are that snapshot's, in order, and take its values."""

    grown: I64
    """The rows that the last traced snapshot lacks (sorted)."""
    at: I64
    """The rows whose values are their own (sorted; ``grown`` among them)."""
    rate: F64
    """Their same-content writes per second."""
    leave: I64 | None
    """When each leaves (-1: never); None where no row of either snapshot leaves."""
    leave_cow: B | None = None
    """With ``leave``: whether each leaves by a write (see :attr:`IntervalWrites.leave_cow`)."""

    @property
    def nbytes(self) -> int:
        extra = 0 if self.leave is None else self.leave.nbytes
        extra += 0 if self.leave_cow is None else self.leave_cow.nbytes
        return int(self.grown.nbytes + self.at.nbytes + self.rate.nbytes + extra)


@dataclass(frozen=True)
class OtherContents:
    """Toggling rows of a snapshot whose other content the trace knows (a content of the
    catalog: the one the row held at an earlier snapshot, or the first other content the
    sampler found, :func:`planner.engine.prepare.two_contents`). Copies of a page that
    alternate between the same two contents can merge in either. Sparse."""

    rows: I64
    """Row indexes, ascending."""
    content: I64
    """The catalog content id each alternates with."""
    zero: B | None = None
    """Per row: that content is the zero-filled one (None: none is)."""

    @property
    def nbytes(self) -> int:
        extra = 0 if self.zero is None else self.zero.nbytes
        return int(self.rows.nbytes + self.content.nbytes + extra)


@dataclass(frozen=True)
class Joins:
    """Rows of a snapshot in the continuation that take, once, a content other rows of
    the snapshot hold (pages a canary saw the kernel merge where the trace shows a content
    of their own: :func:`with_canary`). Sparse: a few rows of many."""

    rows: I64
    """Row indexes, ascending."""
    at_ns: I64
    """When each takes the content (a write at that time)."""
    content: I64
    """The catalog content id each takes (held by at least two rows of the snapshot)."""
    zero: B | None = None
    """Per row: that content is the zero-filled one (None: none is)."""

    @property
    def nbytes(self) -> int:
        extra = 0 if self.zero is None else self.zero.nbytes
        return int(self.rows.nbytes + self.at_ns.nbytes + self.content.nbytes + extra)


@dataclass(frozen=True)
class Episodes:
    """Rows of a snapshot in the continuation that lose their shared content for a while and
    then hold it again (a canary saw the page's merge broken with a new content, and the page
    merged again later: :func:`with_canary`): at ``off_ns`` a write of a content of its own
    (a copy-on-write break where the row is merged), at ``on_ns`` a write of the content it
    held before, its snapshot's or, for a row that joins, the one it joined. A row may have
    several. Sparse."""

    rows: I64
    """Row indexes, ascending (a row's episodes in order of time)."""
    off_ns: I64
    on_ns: I64
    """``> off_ns``."""
    recorded_until_ns: int | None = None
    """When the canary's recording ended (the replay's clock); None: not known. Until then
    a row of :attr:`quiet_rows` changes content as the canary saw it: its content changes
    counted by the sampler start after it (:func:`_after_recording`)."""
    quiet_rows: I64 | None = None
    """The rows with episodes whose content other rows of the snapshot hold (ascending):
    copies of one page in several processes, whose merges are the group's. None: every row
    with episodes."""

    @property
    def nbytes(self) -> int:
        quiet = 0 if self.quiet_rows is None else self.quiet_rows.nbytes
        return int(self.rows.nbytes + self.off_ns.nbytes + self.on_ns.nbytes + quiet)


@dataclass(frozen=True)
class IntervalWrites:
    """What was written to each row of one snapshot over the interval after it."""

    content: U16
    """Content changes the sampler counted (a lower bound: two between checks count once)."""
    same: U16
    """Writes that left the content unchanged."""
    toggle: B
    """The content at the next snapshot is this snapshot's again (see the module notes)."""
    length_ns: int | None
    """The sampled interval's length; the last snapshot's: the whole sampled span, over
    which its counts are (the continuation's period, :func:`continue_trend`)."""
    same_rate_per_s: F64 | None = None
    """Same-content writes per second a canary recording saw (:func:`with_canary`), for
    rows whose ``same`` the trace could not count."""
    leave_ns: I64 | None = None
    """The last snapshot only: when the row's page leaves for good (a canary saw it unmapped:
    ``MADV_DONTNEED``, ``munmap``, or its merge broken by a new content), else -1
    (:func:`with_canary`)."""
    leave_cow: B | None = None
    """With ``leave_ns``, per row: its page leaves by a write that changed its content
    (``unmerged_changed``): a copy-on-write break of a merged page, as ``cow_ksm`` counts
    one; else by an unmapping, which breaks no merge by copy. None: no row leaves by a write."""
    origin_ns: int | None = None
    """The continuation after the trace goes on over this interval: its counts are over
    ``length_ns`` like the last snapshot's, its events are timed from this origin (the last
    traced snapshot's time) and unbounded, and the interval ends at the next snapshot --
    one the growth model appended (:mod:`planner.engine.growth`) -- or never."""

    grown_at: I64 | None = None
    """A snapshot the growth model appended (:mod:`planner.engine.growth`): its rows, in
    order, that the last traced snapshot does not have. ``content``, ``same`` and
    ``toggle`` are then the last traced snapshot's own arrays, shared by every appended
    snapshot (each row of this snapshot not in ``grown_at`` is one of that snapshot's, in
    order): :meth:`per_row` gives this snapshot's. Copies for each step cost 5 bytes per
    row and step: 2 GB for the 24 steps of a 16 M-page host."""
    grown_src: I64 | None = None
    """With ``grown_at``: the row of the last traced snapshot whose counts each of those
    rows takes (its template)."""
    joins: Joins | None = None
    """The continuation only: rows that join a content other rows hold, and when
    (:func:`with_canary`). None: none."""
    episodes: Episodes | None = None
    """The continuation only: rows that lose their shared content for a while and hold it
    again (:func:`with_canary`). None: none."""
    canary_own: CanaryOwn | None = None
    """A snapshot the growth model appended, calibrated by a canary: ``same_rate_per_s``
    and ``leave_ns`` are then the last traced snapshot's own arrays, shared by every
    appended snapshot, and this holds where this snapshot's differ:
    :meth:`canary_per_row` gives this snapshot's."""
    floored_rows: int = 0
    """Rows the sampler saw change, or written, at every look in the interval, whose counts
    were raised to one per sampling period (:func:`effective_changes`,
    :func:`effective_same_writes`): their rates are floors, not measurements."""
    timing: PassTiming | None = None
    """When each process wrote over the interval, pass by pass (the trace's ``samples``
    table): the rows' phases follow it (:mod:`planner.engine.write_timing`). None: uniform
    phases (no passes recorded, or none counted a write)."""
    others: OtherContents | None = None
    """Toggling rows whose other content the trace knows (an appended snapshot: the last
    traced snapshot's, found by key). None: none; every toggling row then alternates with
    a content of its own."""

    def per_row(self) -> tuple[U16, U16, B]:
        """``content``, ``same`` and ``toggle`` per row of this snapshot (computed for an
        appended snapshot: see ``grown_at``)."""
        if self.grown_at is None or self.grown_src is None:
            return self.content, self.same, self.toggle
        at, src = self.grown_at, self.grown_src
        n = self.content.size + at.size
        kept = np.ones(n, bool)
        kept[at] = False

        def rows(values: npt.NDArray[Any]) -> npt.NDArray[Any]:
            out = np.empty(n, values.dtype)
            out[kept] = values
            out[at] = values[src]
            return out

        return rows(self.content), rows(self.same), rows(self.toggle)

    def canary_per_row(self) -> tuple[F64 | None, I64 | None, B | None]:
        """``same_rate_per_s``, ``leave_ns`` and ``leave_cow`` per row of this snapshot
        (computed for an appended snapshot: see ``canary_own``)."""
        own = self.canary_own
        if own is None or self.same_rate_per_s is None:
            return self.same_rate_per_s, self.leave_ns, self.leave_cow
        base = self.same_rate_per_s
        n = base.size + own.grown.size
        kept = np.ones(n, bool)
        kept[own.grown] = False
        rate = np.empty(n, np.float64)
        rate[kept] = base
        rate[own.at] = own.rate
        if self.leave_ns is None and own.leave is None:
            return rate, None, None
        leave = np.full(n, -1, np.int64)
        if self.leave_ns is not None:
            leave[kept] = self.leave_ns
        if own.leave is not None:
            leave[own.at] = own.leave
        if self.leave_cow is None and own.leave_cow is None:
            return rate, leave, None
        cow = np.zeros(n, bool)
        if self.leave_cow is not None:
            cow[kept] = self.leave_cow
        if own.leave_cow is not None:
            cow[own.at] = own.leave_cow
        return rate, leave, cow

    @property
    def nbytes(self) -> int:
        """Memory held (an appended snapshot's: its own arrays, not the shared ones)."""
        if self.canary_own is not None:
            extra = self.canary_own.nbytes
        else:
            extra = 0 if self.same_rate_per_s is None else self.same_rate_per_s.nbytes
            extra += 0 if self.leave_ns is None else self.leave_ns.nbytes
            extra += 0 if self.leave_cow is None else self.leave_cow.nbytes
        extra += 0 if self.joins is None else self.joins.nbytes
        extra += 0 if self.episodes is None else self.episodes.nbytes
        extra += 0 if self.others is None or self.grown_at is not None else self.others.nbytes
        if self.grown_at is not None and self.grown_src is not None:
            return int(self.grown_at.nbytes + self.grown_src.nbytes + extra)
        extra += 0 if self.timing is None else self.timing.nbytes
        return int(self.content.nbytes + self.same.nbytes + self.toggle.nbytes + extra)

    @property
    def rows_written(self) -> int:
        """Rows with at least one write."""
        content, same, _ = self.per_row()
        w = (content > 0) | (same > 0)
        rate, leave, _ = self.canary_per_row()
        if rate is not None:
            w |= rate > 0
        if leave is not None:
            w |= leave >= 0
        if self.joins is not None:
            w[self.joins.rows] = True
        if self.episodes is not None:
            w[self.episodes.rows] = True
        return int(np.count_nonzero(w))


def effective_changes(
    changes: U16, checks: U16, interval_s: float | None, sample_ms: float | None
) -> U16:
    """Content changes per row, corrected for what the sampler could not see.

    ``content_changes`` counts the checks that found a change, so it is a lower bound, and a
    page found changed at *every* check (changes >= checks > 0) changes at least as often as
    it was checked -- how much more often, the checks cannot say. Such a page is taken to
    change once per sampling period over the interval (the fastest the sampler could have
    seen): on a busy host the sampler makes few passes, and a page it caught changing at each
    of them must not look slower than ksmd's revisits because of that.
    """
    out = changes.astype(np.int64)
    if interval_s and sample_ms:
        periods = max(1, int(interval_s * 1000.0 / sample_ms))
        sat = (changes > 0) & (changes >= checks)
        out[sat] = np.maximum(out[sat], periods)
    return np.minimum(out, np.iinfo(np.uint16).max).astype(np.uint16)


def effective_same_writes(
    same: U16,
    changes: U16,
    samples: U16,
    interval_s: float | None,
    sample_ms: float | None,
) -> U16:
    """Same-content writes per row (soft-dirty's count), corrected as
    :func:`effective_changes` corrects content changes.

    A pass sees at most one write of a page: whether its soft-dirty bit was set since the
    pass before. A row found written at *every* pass that looked at it (its same-content
    writes and content changes together at least its ``samples``) writes at least as often
    as the passes came, and how much more often they cannot say; such a row is taken to
    write once per sampling period over the interval, as a row changed at every check is,
    its same-content writes taking their share of that (the rest are content changes). On a
    busy host the sampler makes few passes: PostgreSQL's backends, written at each of 13
    passes 1.25 s apart, would otherwise be replayed as writing once in 1.25 s
    (docs/live-validation.md, "Soft-dirty: rows written at every pass")."""
    out = same.astype(np.int64)
    if interval_s and sample_ms:
        periods = max(1, int(interval_s * 1000.0 / sample_ms))
        written = out + changes.astype(np.int64)
        sat = (out > 0) & (samples > 0) & (written >= samples)
        share = np.rint(periods * out[sat] / written[sat]).astype(np.int64)
        out[sat] = np.maximum(out[sat], share)
    return np.minimum(out, np.iinfo(np.uint16).max).astype(np.uint16)


def fill_unchecked(
    keys: list[U64 | None],
    content: list[U16 | None],
    checked: list[B | None],
    lengths_s: list[float | None],
    reach: int = 4,
) -> None:
    """Rows the sampler never checked in an interval (a rotating slice did not reach them)
    take the change rate their page showed in the nearest interval where it was checked
    (up to ``reach`` intervals away), scaled to this interval's length; in place."""
    n = len(keys)
    for k in range(n):
        ck, kk, lk = content[k], keys[k], lengths_s[k]
        ok = checked[k]
        if ck is None or kk is None or ok is None or not lk:
            continue
        todo = np.flatnonzero(~ok)
        for d in range(1, reach + 1):
            for j in (k - d, k + d):
                if not todo.size or not 0 <= j < n:
                    continue
                cj, kj, okj, lj = content[j], keys[j], checked[j], lengths_s[j]
                if cj is None or kj is None or okj is None or not lj or not kj.size:
                    continue
                pos = np.minimum(np.searchsorted(kj, kk[todo]), kj.size - 1)
                hit = (kj[pos] == kk[todo]) & okj[pos]
                rate = cj[pos[hit]].astype(np.float64) / lj
                ck[todo[hit]] = np.minimum(np.rint(rate * lk), 65535).astype(np.uint16)
                ok[todo[hit]] = True
                todo = todo[~hit]


def continue_trend(
    keys: list[U64 | None],
    content: list[U16 | None],
    differs: list[B | None],
    lengths_s: list[float | None],
    same_last: U16 | None = None,
) -> tuple[U16, U16 | None, float] | None:
    """Content changes the snapshots prove (in place), and the continuation's counts.

    * A row whose content at the next snapshot differs changed at least once in the interval
      (a starved sampler may have counted none).
    * The last interval's counts set the writes after the trace (module notes). One interval
      is a short look at a page that changes every few seconds: a page toggling every 3 s
      shows one change in two intervals of 2 s out of three, none in the third. The last
      snapshot's rows therefore change at the rate of every interval that holds them (their
      changes over the time those intervals span, the last one included).

    Returns the last snapshot's content changes and same-content writes (``same_last``, at
    the last interval's rate) counted over the whole sampled span, and that span in seconds
    (the continuation's period: a count per short interval cannot say one change in 6 s), or
    None when there is nothing to continue.
    """
    n = len(keys)
    for k in range(n - 1):
        ck, dk = content[k], differs[k]
        if ck is not None and dk is not None:
            np.maximum(ck, dk.astype(np.uint16), out=ck)
    if not n:
        return None
    last, kl, ll = content[-1], keys[-1], lengths_s[-1]
    if last is None or kl is None or not ll or not kl.size:
        return None
    total = last.astype(np.float64)
    span = np.full(kl.size, ll, np.float64)
    whole = ll
    for k in range(n - 1):
        ck, kk, lk = content[k], keys[k], lengths_s[k]
        if ck is None or kk is None or not lk or not kk.size:
            continue
        whole += lk
        pos = np.minimum(np.searchsorted(kk, kl), kk.size - 1)
        hit = kk[pos] == kl
        total[hit] += ck[pos[hit]]
        span[hit] += lk
    cap = np.iinfo(np.uint16).max
    out = np.minimum(np.rint(total / span * whole), cap).astype(np.uint16)
    same = None
    if same_last is not None:
        same = np.minimum(np.rint(same_last.astype(np.float64) * (whole / ll)), cap)
        same = same.astype(np.uint16)
    return out, same, whole


def changed_between(
    prev_keys: U64, prev_hash: npt.NDArray[Any], keys: U64, hashes: npt.NDArray[Any]
) -> B:
    """Per row of the earlier snapshot: present at the later one with other content
    (contents told apart by their hashes or their content ids)."""
    if keys.size == 0 or prev_keys.size == 0:
        return np.zeros(prev_keys.size, bool)
    pos = np.minimum(np.searchsorted(keys, prev_keys), keys.size - 1)
    return np.asarray((keys[pos] == prev_keys) & (hashes[pos] != prev_hash), dtype=bool)


def classify_toggles(
    prev_keys: U64, prev_hash: npt.NDArray[Any], keys: U64, hashes: npt.NDArray[Any]
) -> npt.NDArray[np.bool_]:
    """Per row of the earlier snapshot: its content at the later one is the same (or the row
    is gone: nothing to leave to the next snapshot; contents told apart by their hashes or
    their content ids)."""
    if keys.size == 0:
        return np.ones(prev_keys.size, bool)
    pos = np.minimum(np.searchsorted(keys, prev_keys), keys.size - 1)
    found = keys[pos] == prev_keys
    return np.asarray(~found | (hashes[pos] == prev_hash), dtype=bool)


def carry_toggles(prev_keys: U64, prev_toggle: B, keys: U64) -> B:
    """The last snapshot's rows: toggling where the same page toggled the interval before."""
    out = np.zeros(keys.size, bool)
    if prev_keys.size == 0 or keys.size == 0:
        return out
    pos = np.minimum(np.searchsorted(prev_keys, keys), prev_keys.size - 1)
    hit = prev_keys[pos] == keys
    out[hit] = prev_toggle[pos[hit]]
    return out


@dataclass(frozen=True)
class Writes:
    """Rows written since the last batch and the content each has now (module notes)."""

    rows: I64
    """Row indexes of the current snapshot, ascending, each once."""
    content: I64
    """:data:`SAME`, :data:`RESTORE`, a content id >= 0 that no snapshot row has, or a
    :func:`held_code`."""
    gone: B | None = None
    """Rows whose page leaves (unmapped: a fresh content, never written again); the merge
    this breaks is no copy-on-write (``cow_ksm`` does not count it). None: none."""
    keep: B | None = None
    """Rows whose content is set without a write: the page is neither copied nor its merge
    broken (the restore and reapply of a joined row around a synthetic snapshot,
    :meth:`TraceWrites.take_rest`). None: none."""

    def __len__(self) -> int:
        return int(self.rows.size)

    def parts(self) -> list[tuple[Writes, bool]]:
        """The writes as batches applied one after the other at the same time, each with
        whether the merges it breaks are copy-on-write breaks: the pages that leave apart.
        (Each row is in one part; merges happen only inside scan batches, so applying
        the parts one after the other is applying them together.)"""
        g = self.gone
        if g is None or not g.any():
            return [(self, True)]
        kg = None if self.keep is None else self.keep[g]
        out = [(Writes(self.rows[g], self.content[g], keep=kg), False)]
        if not g.all():
            kn = None if self.keep is None else self.keep[~g]
            out.append((Writes(self.rows[~g], self.content[~g], keep=kn), True))
        return out


def written_contents(inp: ReplayInput) -> I64:
    """The catalog contents the write model may give a row although the snapshot shows
    other rows holding them only by chance: toggles' other contents
    (:attr:`IntervalWrites.others`), sorted, each once. (A join's content is held by at
    least two rows of its snapshot.)"""
    parts = [w.others.content for w in inp.writes if w is not None and w.others is not None]
    if not parts:
        return np.empty(0, np.int64)
    return np.unique(np.concatenate(parts)).astype(np.int64)


def held_code(content_id: npt.ArrayLike, zero: npt.ArrayLike = False) -> I64:
    """:attr:`Writes.content` of a write that gives a row catalog content ``content_id``,
    one that other rows of the snapshot hold, zero-filled where ``zero`` (a page that
    ``use_zero_pages`` merges with the zero page): ``HELD_BASE - 2 id - zero``."""
    ids = np.asarray(content_id, np.int64)
    return np.asarray(HELD_BASE - 2 * ids - np.asarray(zero, np.int64), np.int64)


def held_content(code: int) -> tuple[int, bool]:
    """The catalog content id of a :func:`held_code`, and whether it is zero-filled."""
    v = HELD_BASE - int(code)
    return v // 2, bool(v % 2)


def _phases(seed: int, k: int, keys: U64, stream: int) -> F64:
    """A phase in [0, 1) per row, from the seed, the interval, the row's key and the kind."""
    with np.errstate(over="ignore"):
        mix = (seed * 0x9E3779B97F4A7C15 + k * 0xBF58476D1CE4E5B9 + stream) % (1 << 64)
        z = keys ^ np.uint64(mix)
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return np.asarray((z >> np.uint64(11)).astype(np.float64) / float(1 << 53))


#: The period of a stream of one event (:func:`_once`): a power of two, so that the
#: event's time is exact, and long, so that it weighs nothing in the rate that sizes the
#: windows of events (a period of the event's offset, 1 ns for an event at the interval's
#: start, made windows of 1 ms: 600,000 of them in a minute of a JVM canary's joins)
_ONCE_PERIOD_NS: Final = float(1 << 50)


def _once(offset_ns: I64) -> tuple[F64, F64]:
    """Period and phase of streams of one event each, ``offset_ns`` (>= 0, < 2^50) after
    the interval's origin: ``floor(phase * period)`` is the offset exactly."""
    period = np.full(offset_ns.size, _ONCE_PERIOD_NS)
    return period, offset_ns.astype(np.float64) / _ONCE_PERIOD_NS


@dataclass
class _Streams:
    """Periodic event streams of one interval: row, period, phase, count, scheme."""

    row: I64
    period_ns: F64
    phase: F64
    count: I64  # events (-1: unbounded, the continuation)
    scheme: npt.NDArray[np.int8]
    t0_ns: int
    end_ns: int  # events before this time (NEVER: the continuation)
    #: rows that leave (ascending) and when: no event of theirs follows the leaving
    gone_rows: I64 = dataclasses.field(default_factory=lambda: np.empty(0, np.int64))
    gone_ns: I64 = dataclasses.field(default_factory=lambda: np.empty(0, np.int64))
    #: per stream: no event after this time (its row leaves), else _NEVER (made on first use)
    _gone_after: I64 | None = None

    def events(self, w0: int, w1: int) -> tuple[I64, I64, I64]:
        """Events with time in [w0, w1): (time, row, kind), sorted by time then row (events
        of one row at one time in the order of their streams). Compiled
        (:func:`_window_events`): the numpy version's lexsort of every event of an interval
        and its dozen passes over them were a quarter of a replay's time."""
        if self.row.size == 0 or w1 <= w0:
            e = np.empty(0, np.int64)
            return e, e, e
        if self._gone_after is None:
            after = np.full(self.row.size, _NEVER, np.int64)
            if self.gone_rows.size:
                rows = self.row
                pos = np.minimum(np.searchsorted(self.gone_rows, rows), self.gone_rows.size - 1)
                leaving = (self.scheme == _S_LEAVE) | (self.scheme == _S_LEAVE_COW)
                hit = (self.gone_rows[pos] == rows) & ~leaving
                after[hit] = self.gone_ns[pos[hit]]
            self._gone_after = after
        t, rows, kind = _window_events(
            self.t0_ns,
            w0,
            w1,
            self.period_ns,
            self.phase,
            self.count,
            self.scheme,
            self.row,
            self._gone_after,
        )
        return t, rows, kind

    @property
    def events_per_ns(self) -> float:
        """Events per ns over all streams."""
        return float(np.sum(1.0 / self.period_ns)) if self.row.size else 0.0


@compiled_on_first_call(cache=True, nogil=True)
def _window_events(
    t0: int,
    w0: int,
    w1: int,
    period_ns: F64,
    phase: F64,
    count: I64,
    scheme: npt.NDArray[np.int8],
    row: I64,
    gone_after: I64,
) -> tuple[I64, I64, I64]:  # pragma: no cover - compiled
    """The events of :meth:`_Streams.events`: stream ``i``'s ``j``-th at
    ``t0 + floor((phase + j) * period)``, for ``j < count`` (``count`` < 0: unbounded),
    within [w0, w1) and not after ``gone_after``; sorted by (time, row), ties in stream
    order (the order of ``np.lexsort((rows, t))`` over events made stream by stream).

    The sort is a counting sort into about one bucket per 4 events by time, then each
    bucket by (time, row): insertion sort, or for a crowded bucket (many events at one
    time: pages that leave together) two stable merge sorts."""
    n_streams = row.size
    lo = np.empty(n_streams, np.int64)
    hi = np.empty(n_streams, np.int64)
    total = 0
    for i in range(n_streams):
        p = period_ns[i]
        a = np.ceil((w0 - t0) / p - phase[i])
        lo[i] = np.int64(max(a, 0.0))
        h = np.int64(np.ceil((w1 - t0) / p - phase[i]))
        if count[i] >= 0 and count[i] < h:
            h = count[i]
        hi[i] = h
        if h > lo[i]:
            total += h - lo[i]
    t = np.empty(total, np.int64)
    rows = np.empty(total, np.int64)
    kind = np.empty(total, np.int64)
    m = 0
    for i in range(n_streams):
        p = period_ns[i]
        sch = scheme[i]
        for j in range(lo[i], hi[i]):
            tt = t0 + np.int64(np.floor((phase[i] + j) * p))
            if tt < w0 or tt >= w1 or tt > gone_after[i]:
                continue
            if sch == _S_DRIFT:
                k = _K_FRESH
            elif sch == _S_LEAVE:
                k = _K_GONE
            elif sch == _S_LEAVE_COW:  # a write of a new content: like a drift's
                k = _K_FRESH
            elif sch == _S_JOIN:  # a content other rows hold (the row's ``other``)
                k = _K_OTHER
            elif sch == _S_TOGGLE:  # every other change, and the last, restores
                last = count[i] >= 0 and j == count[i] - 1
                k = _K_RESTORE if (j % 2 == 1 or last) else _K_OTHER
            else:
                k = _K_SAME
            t[m] = tt
            rows[m] = row[i]
            kind[m] = k
            m += 1
    t, rows, kind = t[:m], rows[:m], kind[:m]
    if m < 2:
        return t, rows, kind
    # counting sort by bucket of time (rounding is monotonic: bucket order is time order)
    n_buckets = max(1, m // 4)
    span = float(w1 - w0)
    start = np.zeros(n_buckets + 1, np.int64)
    bucket = np.empty(m, np.int64)
    for e in range(m):
        at = min(max(int((t[e] - w0) / span * n_buckets), 0), n_buckets - 1)
        bucket[e] = at
        start[at + 1] += 1
    for b in range(n_buckets):
        start[b + 1] += start[b]
    fill = start[:-1].copy()
    ot = np.empty(m, np.int64)
    orow = np.empty(m, np.int64)
    okind = np.empty(m, np.int64)
    for e in range(m):
        d = fill[bucket[e]]
        fill[bucket[e]] = d + 1
        ot[d] = t[e]
        orow[d] = rows[e]
        okind[d] = kind[e]
    for b in range(n_buckets):
        s0 = start[b]
        s1 = start[b + 1]
        if s1 - s0 < 2:
            continue
        if s1 - s0 <= 64:
            for x in range(s0 + 1, s1):
                vt = ot[x]
                vr = orow[x]
                vk = okind[x]
                y = x - 1
                while y >= s0 and (ot[y] > vt or (ot[y] == vt and orow[y] > vr)):
                    ot[y + 1] = ot[y]
                    orow[y + 1] = orow[y]
                    okind[y + 1] = okind[y]
                    y -= 1
                ot[y + 1] = vt
                orow[y + 1] = vr
                okind[y + 1] = vk
        else:  # by row, then by time: both stable
            bt = ot[s0:s1].copy()
            br = orow[s0:s1].copy()
            bk = okind[s0:s1].copy()
            o1 = np.argsort(br, kind="mergesort")
            o2 = o1[np.argsort(bt[o1], kind="mergesort")]
            for x in range(s1 - s0):
                ot[s0 + x] = bt[o2[x]]
                orow[s0 + x] = br[o2[x]]
                okind[s0 + x] = bk[o2[x]]
    return ot, orow, okind


class TraceWrites:
    """The write model of a replay input (a :class:`planner.engine.driver.WriteSource`)."""

    def __init__(self, inp: ReplayInput, seed: int = 0) -> None:
        self.inp = inp
        self.seed = seed
        self.times = inp.times_ns
        self.k = -1
        self.streams: _Streams | None = None
        self.next_volatile = 0  # content ids handed out so far
        self.other: I64 = np.empty(0, np.int64)  # per row: a toggling row's other content
        self._t: I64 = np.empty(0, np.int64)
        self._rows: I64 = np.empty(0, np.int64)
        self._kind: I64 = np.empty(0, np.int64)
        self._pos = 0
        self._gen_to = 0  # events before this time were generated
        #: the continuation's toggling rows (keys, ascending) and their other content
        self._other_keys: U64 = np.empty(0, np.uint64)
        self._other_ids: I64 = np.empty(0, np.int64)
        #: the continuation's rows holding a content no snapshot has (keys, ascending) and
        #: that content: restored before a synthetic snapshot, set again after it
        #: (:meth:`_vol_arrays`). Within an interval they are kept per row of its snapshot
        #: (``_vol_rows``: the content id, -1 for none), merged into the keyed arrays when
        #: the interval ends: a batch's writes cost one scatter (sorting keyed arrays at
        #: every batch, and later a log of them, was most of a replay's time at a small
        #: pages_to_scan)
        self._vol_keys: U64 = np.empty(0, np.uint64)
        self._vol_ids: I64 = np.empty(0, np.int64)
        self._vol_rows: I64 | None = None
        self._reapply: Writes | None = None
        self._reapply_ns = 0
        self._cur_keys: U64 = np.empty(0, np.uint64)
        self._cont = False
        self.events = 0  # events handed out
        #: scratch of :func:`_coalesce_rows`, per row: -1 (grown as rows need)
        self._last_kind: I8 = np.full(0, -1, np.int8)  # a byte a row: stays in the cache
        #: the snapshots appended snapshots write as (:meth:`_keys` keeps their keys)
        self._origins = {
            self.times.index(w.origin_ns)
            for w in inp.writes
            if w is not None and w.origin_ns is not None and w.origin_ns in self.times
        }
        self._held_keys: tuple[int, U64] | None = None

    # ------------------------------------------------------------------ intervals

    def _build(self, k: int) -> _Streams | None:
        iw = self.inp.writes[k] if k < len(self.inp.writes) else None
        t0 = self.times[k]
        final = k + 1 >= len(self.times)
        if iw is None:
            return None
        last = final or iw.origin_ns is not None  # the continuation after the trace
        if last:
            span = float(iw.length_ns or 0)
            end = _NEVER if final else self.times[k + 1]
            t0 = t0 if iw.origin_ns is None else iw.origin_ns
        else:
            end = self.times[k + 1]
            span = float(end - t0)
            if span <= 0:
                return None
        keys = self._keys(k)
        # the continuation's phases are the last traced snapshot's, whatever snapshot follows
        kp = k if iw.origin_ns is None else self.times.index(iw.origin_ns)
        # (an appended snapshot's rows write as the last traced snapshot's did)
        origin = iw if iw.origin_ns is None else self.inp.writes[kp]
        timing = None if origin is None else origin.timing

        def phases(rows: I64, period_ns: F64, kind: int) -> F64:
            u = _phases(self.seed, kp, keys[rows], kind)
            if timing is None:
                return u
            mm = (keys[rows] >> MM_SHIFT).astype(np.int64)
            return timing.phases(u, mm, period_ns, kind)

        content, same, toggle = iw.per_row()
        c = content.astype(np.int64)
        s = same.astype(np.int64)
        del content, same
        parts: list[tuple[I64, F64, F64, I64, npt.NDArray[np.int8]]] = []
        rs = np.flatnonzero(s > 0) if span > 0 else np.empty(0, np.int64)
        if rs.size:
            parts.append(
                (rs, span / s[rs], phases(rs, span / s[rs], SAME_KIND),
                 np.full(rs.size, -1, np.int64) if last else s[rs],
                 np.full(rs.size, _S_SAME, np.int8))
            )  # fmt: skip
        rc = np.flatnonzero(c > 0) if span > 0 else np.empty(0, np.int64)
        eps = iw.episodes if last else None
        if rc.size:
            tog = toggle[rc]
            count = np.where(tog, c[rc], c[rc] - 1)  # a drifting row's last change: the snapshot
            period = span / c[rc]
            phase = phases(rc, period, CONTENT_KIND)
            if eps is not None and eps.rows.size and eps.recorded_until_ns is not None:
                phase = _after_recording(rc, period, phase, eps, t0)
            parts.append(
                (rc, period, phase,
                 np.full(rc.size, -1, np.int64) if last else count,
                 np.where(tog, _S_TOGGLE, _S_DRIFT).astype(np.int8))
            )  # fmt: skip
            self.other = np.full(c.size, -1, np.int64)
            rt = rc[tog]
            known = np.zeros(rt.size, bool)
            src = None if origin is None else origin.others
            if src is not None and rt.size:  # a content of the catalog the trace showed
                okeys = (keys if origin is iw else self._keys(kp))[src.rows]
                pos = np.minimum(np.searchsorted(okeys, keys[rt]), okeys.size - 1)
                known = okeys[pos] == keys[rt]
                at = pos[known]
                zero = False if src.zero is None else src.zero[at]
                self.other[rt[known]] = held_code(src.content[at], zero)
            if last and self._other_keys.size and rt.size:  # the same row, a later snapshot
                ok = self._other_keys
                pos = np.minimum(np.searchsorted(ok, keys[rt]), ok.size - 1)
                hit = ~known & (self._other_keys[pos] == keys[rt])
                self.other[rt[hit]] = self._other_ids[pos[hit]]
                known |= hit
            n_new = int(np.count_nonzero(~known))
            self.other[rt[~known]] = self.next_volatile + np.arange(n_new)
            self.next_volatile += n_new
            if last:
                self._other_keys, self._other_ids = keys[rt], self.other[rt]
        rate, leave_ns, leave_cow = iw.canary_per_row()
        if rate is not None:  # a canary's rates, where the trace counted no such write
            rr = np.flatnonzero((rate > 0) & (s == 0))
            if rr.size:
                parts.append(
                    (rr, 1e9 / rate[rr], _phases(self.seed, kp, keys[rr], 3),
                     np.full(rr.size, -1, np.int64), np.full(rr.size, _S_SAME, np.int8))
                )  # fmt: skip
        joins = iw.joins if last else None
        if joins is not None and joins.rows.size:  # once each, at its time (none before t0)
            jr = joins.rows
            if self.other.size != c.size:
                self.other = np.full(c.size, -1, np.int64)
            self.other[jr] = held_code(joins.content, False if joins.zero is None else joins.zero)
            p, ph = _once(np.maximum(joins.at_ns, t0) - t0)
            once = np.ones(jr.size, np.int64)
            parts.append((jr, p, ph, once, np.full(jr.size, _S_JOIN, np.int8)))
        if eps is not None and eps.rows.size:
            parts.extend(self._episode_streams(eps, joins, t0, end))
        gone_rows = gone_ns = np.empty(0, np.int64)
        if leave_ns is not None and last:  # a row leaves once, at its time
            gone_rows = np.flatnonzero(leave_ns >= 0)
            gone_ns = np.maximum(leave_ns[gone_rows], t0)
            if gone_rows.size:
                p, ph = _once(gone_ns - t0)
                by = np.full(gone_rows.size, _S_LEAVE, np.int8)
                if leave_cow is not None:
                    by[leave_cow[gone_rows]] = _S_LEAVE_COW
                parts.append((gone_rows, p, ph, np.ones(gone_rows.size, np.int64), by))
        if not parts:
            return None
        return _Streams(
            row=np.concatenate([p[0] for p in parts]),
            period_ns=np.concatenate([p[1] for p in parts]),
            phase=np.concatenate([p[2] for p in parts]),
            count=np.concatenate([p[3] for p in parts]),
            scheme=np.concatenate([p[4] for p in parts]),
            t0_ns=t0,
            end_ns=end,
            gone_rows=gone_rows,
            gone_ns=gone_ns,
        )

    @staticmethod
    def _episode_streams(
        eps: Episodes, joins: Joins | None, t0: int, end: int
    ) -> list[tuple[I64, F64, F64, I64, npt.NDArray[np.int8]]]:
        """The one-event streams of the episodes of an interval from ``t0`` to ``end``:
        a content of its own at each episode's start (at ``t0`` for one under way, after
        any join the interval hands out again at ``t0``: streams of one time run in order),
        and its content back at the end, a join's (:data:`_S_JOIN`, the row's ``other``)
        or the snapshot's (:data:`_S_TOGGLE` of one change: a restore)."""
        live = (eps.on_ns > t0) & (eps.off_ns < end)
        rows = eps.rows[live]
        if not rows.size:
            return []
        once = np.ones(rows.size, np.int64)
        p_off, ph_off = _once(np.maximum(eps.off_ns[live], t0) - t0)
        p_on, ph_on = _once(eps.on_ns[live] - t0)
        joined = (
            np.zeros(rows.size, bool)
            if joins is None or not joins.rows.size
            else isin(rows, joins.rows, of_sorted=True)
        )
        back = np.where(joined, _S_JOIN, _S_TOGGLE).astype(np.int8)
        return [
            (rows, p_off, ph_off, once, np.full(rows.size, _S_DRIFT, np.int8)),
            (rows, p_on, ph_on, once.copy(), back),
        ]

    def _keys(self, k: int) -> U64:
        """Snapshot ``k``'s row keys, rebuilt from its pages alone (no full snapshot).

        The keys of a snapshot that appended snapshots write as (the last traced one, their
        ``origin_ns``) are kept once asked for: each appended snapshot asks for them beside
        its own, and the input rebuilds pages forward from the last snapshot it rebuilt
        only, so asking for both anew rebuilt the origin from the first delta and then the
        appended snapshot from the origin at every step (a review's replays applied
        ~1,800 deltas' pages each, most of their write model's time)."""
        held = self._held_keys
        if held is not None and held[0] == k:
            return held[1]
        keys = self.inp.snapshots.keys(k)
        if k in self._origins:
            self._held_keys = (k, keys)
        return keys

    def start_interval(self, k: int, now_ns: int) -> None:
        """Snapshot ``k`` was applied (at ``now_ns``): the writes of the interval after it
        follow (those whose time has passed are due at once)."""
        del now_ns
        self._vol_arrays()  # the interval that ends, while its rows are known
        self._vol_rows = None
        self.k = k
        self.other = np.empty(0, np.int64)
        self.streams = self._build(k)
        iw = self.inp.writes[k] if k < len(self.inp.writes) else None
        self._cont = iw is not None and (iw.origin_ns is not None or k + 1 >= len(self.times))
        self._cur_keys = self._keys(k) if self._cont else np.empty(0, np.uint64)
        self._reapply = None
        if self._cont:
            self._vol_rows = np.full(self._cur_keys.size, -1, np.int64)
            vol_keys, vol_ids = self._vol_keys, self._vol_ids
            if vol_keys.size and self._cur_keys.size:  # the contents the previous one restored
                ck = self._cur_keys
                pos = np.minimum(np.searchsorted(ck, vol_keys), ck.size - 1)
                hit = self._cur_keys[pos] == vol_keys
                if hit.any():  # (a joined row's content set again without a write)
                    ids = vol_ids[hit]
                    joined = ids <= HELD_BASE
                    self._reapply = Writes(
                        pos[hit].astype(np.int64), ids, keep=joined if joined.any() else None
                    )
                    self._reapply_ns = self.times[k]
                    self._vol_rows[pos[hit]] = vol_ids[hit]
        e = np.empty(0, np.int64)
        self._t, self._rows, self._kind, self._pos = e, e, e, 0
        self._gen_to = self.times[k]

    def _generate(self) -> bool:
        """The next window of events; False when the interval has no more."""
        st = self.streams
        if st is None or self._gen_to >= st.end_ns:
            return False
        rate = st.events_per_ns
        width = int(_WINDOW_EVENTS / rate) if rate > 0 else _NEVER
        w1 = min(st.end_ns, self._gen_to + max(width, 1_000_000))
        t, rows, kind = st.events(self._gen_to, w1)
        self._gen_to = w1
        if rows.size:  # the coalescing's scratch covers every row of the window
            top = int(rows.max())
            if top >= self._last_kind.size:
                self._last_kind = np.full(max(top + 1, 2 * self._last_kind.size), -1, np.int8)
        self._t, self._rows, self._kind, self._pos = t, rows, kind, 0
        return True

    # ------------------------------------------------------------------ WriteSource

    def next_time_ns(self) -> int | None:
        """Time of the next write not yet handed out, or None."""
        if self._reapply is not None:
            return self._reapply_ns
        while self._pos >= self._t.size:
            if not self._generate():
                return None
        return int(self._t[self._pos])

    def take_until(self, t_ns: int) -> Writes | None:
        """The writes at or before ``t_ns`` of the current interval, as one batch."""
        rows: list[I64] = []
        kinds: list[I64] = []
        first = self._reapply if self._reapply is not None and self._reapply_ns <= t_ns else None
        if first is not None:
            self._reapply = None
        while True:
            nxt = self.next_time_ns()
            if nxt is None or nxt > t_ns:
                break
            b = int(np.searchsorted(self._t, t_ns, side="right"))
            rows.append(self._rows[self._pos : b])
            kinds.append(self._kind[self._pos : b])
            self._pos = b
            if b < self._t.size:  # the window goes on past t_ns: nothing more is due
                break
        out = None
        if len(rows) == 1:  # the usual batch: a slice of one window
            out = self._coalesce(rows[0], kinds[0])
        elif rows:
            out = self._coalesce(np.concatenate(rows), np.concatenate(kinds))
        if first is None:
            return out
        return first if out is None else _merge(first, out)

    def take_rest(self) -> Writes | None:
        """Every write left in the current interval (the next snapshot is applied now).

        In the continuation before a synthetic snapshot, the rows holding a content no
        snapshot has are restored last (a snapshot finds every row as it says) and given
        the same content again once it is applied (:meth:`start_interval`): nothing a
        visit can see changes. A row that joined a content other rows hold is restored and
        set again without a write (:attr:`Writes.keep`): its merge survives the snapshot."""
        st = self.streams
        if st is None or st.end_ns == _NEVER:
            return None
        out = self.take_until(st.end_ns - 1)
        vol_keys, vol_ids = self._vol_arrays()
        if not self._cont or not vol_keys.size:
            return out
        pos = np.minimum(np.searchsorted(self._cur_keys, vol_keys), self._cur_keys.size - 1)
        hit = self._cur_keys[pos] == vol_keys
        held = np.zeros(self._cur_keys.size, bool)  # the rows, each once, in order: no sort
        held[pos[hit]] = True
        rows = np.flatnonzero(held).astype(np.int64, copy=False)
        keep = None
        joined = hit & (vol_ids <= HELD_BASE)
        if joined.any():  # a joined row's merge survives the snapshot (restored in place)
            kept = np.zeros(self._cur_keys.size, bool)
            kept[pos[joined]] = True
            keep = kept[rows]
        restore = Writes(rows, np.full(rows.size, RESTORE, np.int64), keep=keep)
        return restore if out is None else _merge(out, restore)

    def _vol_arrays(self) -> tuple[U64, I64]:
        """The rows holding a content no snapshot has: their keys (ascending) and contents,
        the current interval's writes merged in (a row's last write decides: a content id
        it holds now, or none)."""
        vr = self._vol_rows
        if vr is not None and self._cur_keys.size:
            ck = self._cur_keys
            vk, vi = self._vol_keys, self._vol_ids
            if vk.size:  # the keys of this interval's rows are decided by its rows
                pos = np.minimum(np.searchsorted(ck, vk), ck.size - 1)
                keep = ck[pos] != vk
                vk, vi = vk[keep], vi[keep]
            held = vr != RESTORE
            vk = np.concatenate([vk, ck[held]])
            vi = np.concatenate([vi, vr[held]])
            order = np.argsort(vk, kind="stable")
            self._vol_keys, self._vol_ids = vk[order], vi[order]
        return self._vol_keys, self._vol_ids

    def _coalesce(self, rows: I64, kinds: I64) -> Writes:
        """One entry per row: its content after the last content write (module notes); in
        the continuation, the rows that now hold a content no snapshot has, or none, are
        noted per row (:meth:`_vol_arrays`).

        Compiled (:func:`_coalesce_rows`): a batch holds a few hundred to a few thousand
        events, and the numpy version's dozen calls and sort per batch were a third of a
        replay's time at a small ``pages_to_scan``."""
        self.events += int(rows.size)
        vol = self._vol_rows  # set in the continuation only (start_interval)
        uniq, content, gone, nv, any_gone = _coalesce_rows(
            rows,
            kinds,
            self._last_kind,
            self.other,
            self.next_volatile,
            _NO_ROWS if vol is None else vol,
            vol is not None,
        )
        self.next_volatile = int(nv)
        if any_gone:
            return Writes(rows=uniq, content=content, gone=gone)
        return Writes(rows=uniq, content=content)


#: An empty per-row array (no rows tracked)
_NO_ROWS: Final[I64] = np.empty(0, np.int64)


@compiled_on_first_call(cache=True, nogil=True)
def _coalesce_rows(
    rows: I64,
    kinds: I64,
    last_kind: I8,
    other: I64,
    next_volatile: int,
    vol_rows: I64,
    track: bool,
) -> tuple[I64, I64, B, int, bool]:  # pragma: no cover - compiled
    """The batch's rows (ascending), the content each holds after its last content write
    (:data:`SAME` where it had none), whether that write was its leaving, the next volatile
    id, and whether any row left. Fresh contents (a drift, a leaving) are numbered in
    ascending row order. ``last_kind`` is scratch, -1 everywhere on entry and on return.
    With ``track``, ``vol_rows`` takes each written row's content (a volatile id or a
    :func:`held_code`; -1: restored)."""
    m = rows.size
    uniq = np.empty(m, np.int64)
    u = 0
    for i in range(m):
        r = rows[i]
        k = kinds[i]
        if last_kind[r] == -1:
            uniq[u] = r
            u += 1
            last_kind[r] = -2  # seen, no content write yet
        if k != _K_SAME:
            last_kind[r] = k
    uniq = uniq[:u]
    if u > 1:  # ascending: an LSD radix sort, 8 bits a pass, of rows below last_kind.size
        # (numba's np.sort took 15 us for the ~1,250 rows of a typical batch and 89 us for
        # 2,600: most of this function's time; the radix sort 5 and 15 us)
        buf = np.empty(u, np.int64)
        count = np.empty(257, np.int64)
        shift = 0
        while shift == 0 or ((last_kind.size - 1) >> shift) > 0:
            count[:] = 0
            for i in range(u):
                count[((uniq[i] >> shift) & 255) + 1] += 1
            for d in range(256):
                count[d + 1] += count[d]
            for i in range(u):
                d = (uniq[i] >> shift) & 255
                buf[count[d]] = uniq[i]
                count[d] += 1
            uniq, buf = buf, uniq
            shift += 8
    content = np.full(u, SAME, np.int64)
    gone = np.zeros(u, np.bool_)
    nv = next_volatile
    any_gone = False
    for j in range(u):
        r = uniq[j]
        k = last_kind[r]
        last_kind[r] = -1
        if k in (_K_FRESH, _K_GONE):
            content[j] = nv
            nv += 1
            if k == _K_GONE:
                gone[j] = True
                any_gone = True
        elif k == _K_OTHER:
            content[j] = other[r]
        elif k == _K_RESTORE:
            content[j] = RESTORE
        if track and content[j] != SAME:
            vol_rows[r] = content[j] if content[j] != RESTORE else -1
    return uniq, content, gone, nv, any_gone


def _merge(a: Writes, b: Writes) -> Writes:
    """``a`` then ``b`` as one batch: a row in both takes ``b``'s content, or ``a``'s where
    ``b`` wrote the same bytes (:data:`SAME`); it leaves if either says so, and keeps its
    page only if both say so."""
    rows = np.concatenate([a.rows, b.rows])
    content = np.concatenate([a.content, b.content])
    ga = a.gone if a.gone is not None else np.zeros(a.rows.size, bool)
    gb = b.gone if b.gone is not None else np.zeros(b.rows.size, bool)
    gone = np.concatenate([ga, gb])
    ka = a.keep if a.keep is not None else np.zeros(a.rows.size, bool)
    kb = b.keep if b.keep is not None else np.zeros(b.rows.size, bool)
    keep = np.concatenate([ka, kb])
    order = np.lexsort((np.arange(rows.size), rows))
    rows, content, gone, keep = rows[order], content[order], gone[order], keep[order]
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    last = np.r_[rows[1:] != rows[:-1], True]
    # a SAME after a content write leaves that content (the last content write decides)
    twice = np.flatnonzero(~last)  # the first of a row's two entries (a's)
    second = twice + 1
    content[second] = np.where(content[second] == SAME, content[twice], content[second])
    left = np.maximum.reduceat(gone, starts)
    kept = np.minimum.reduceat(keep, starts)
    return Writes(
        rows[last], content[last], left if left.any() else None, kept if kept.any() else None
    )


#: A process is *busy* when it used at least this share of the CPU time of the busiest
#: process of its ``comm`` over the capture (and at least :data:`BUSY_MIN_CPUS`); the others
#: are *idle* (:func:`process_roles`).
BUSY_OF_TOP: Final = 0.1
BUSY_MIN_CPUS: Final = 0.002


def process_roles(
    comm_by_pid: dict[int, str], cpus_by_pid: dict[int, float | None] | None = None
) -> dict[int, str]:
    """Per pid: its role -- its ``comm``, split into ``"comm busy"`` and ``"comm idle"``
    where CPU times were recorded (see :data:`BUSY_OF_TOP`).

    One command runs processes that behave apart: PostgreSQL's backends serve queries and
    rewrite their memory all the time, its server processes (checkpointer, walwriter, ...)
    mostly sleep. Their CPU share tells them apart on a capture and on a canary alike, at
    any host load (the threshold is relative to the busiest process of the command).
    """
    cpus = cpus_by_pid or {}
    top: dict[str, float] = {}
    for pid, comm in comm_by_pid.items():
        cpu = cpus.get(pid)
        if cpu is not None:
            top[comm] = max(top.get(comm, 0.0), cpu)
    out: dict[int, str] = {}
    for pid, comm in comm_by_pid.items():
        cpu = cpus.get(pid)
        if cpu is None or comm not in top:
            out[pid] = comm
        else:
            busy = cpu >= max(BUSY_MIN_CPUS, BUSY_OF_TOP * top[comm])
            out[pid] = f"{comm} {'busy' if busy else 'idle'}"
    return out


def role_comm(role: str) -> str:
    """The ``comm`` of a role of :func:`process_roles`."""
    for tail in (" busy", " idle"):
        if role.endswith(tail):
            return role[: -len(tail)]
    return role


@dataclass(frozen=True)
class CanarySizes:
    """Each followed process's present anonymous pages at each of a canary's samples
    (``canary.parquet``'s ``present_pages``): how its memory grew and shrank while ksmd ran
    (:mod:`planner.engine.canary_growth`)."""

    t_s: F64
    """The samples' times (seconds since the first, the canary's clock), sorted."""
    pid: I64
    """The processes, sorted."""
    present: I64
    """``[sample, process]``: its present pages, -1 where the sample has no row of it."""

    def of(self, pid: int) -> I64 | None:
        """The present pages of ``pid`` at each sample, or None if the canary did not
        follow it."""
        i = int(np.searchsorted(self.pid, pid))
        if i >= self.pid.size or int(self.pid[i]) != pid:
            return None
        return self.present[:, i]


def canary_sizes(obs: ObservedTimeline) -> CanarySizes | None:
    """The present pages per sample and process of a canary recording (None without one)."""
    c = obs.canary
    if c is None or not len(c) or "present_pages" not in c.columns:
        return None
    t = c["t_s"].to_numpy(np.float64)
    pid = c["pid"].to_numpy(np.int64)
    ut, ti = np.unique(t, return_inverse=True)
    up, pi = np.unique(pid, return_inverse=True)
    present = np.full((ut.size, up.size), -1, np.int64)
    present[ti, pi] = c["present_pages"].fillna(-1).to_numpy(np.int64)
    return CanarySizes(ut, up, present)


@dataclass(frozen=True)
class CanaryRates:
    """Same-content write rates of the pages a canary recording followed, and the breaks it
    could not see.

    A canary (``observe --ksm-pages``, :mod:`planner.trace.recording`) sees a write that
    leaves the bytes unchanged only while the page is merged: the merge breaks
    (``unmerged_same_content``). A page's rate is its such events over the seconds it was
    merged. A page broken and merged again between two samples shows nothing, while the
    host's ``cow_ksm`` counts it: those **unseen breaks** (``unseen_breaks_per_s``) are not
    spread over the pages the canary saw, but put on the pages likely to take them
    (:func:`with_canary`). Rates are the workload's, not ksmd's: a canary at one knob setting
    serves the others.
    """

    key: U64
    """``(pid << 36) | page number``, sorted."""
    rate_per_s: F64
    by_comm: dict[str, float]
    """Per process role (:func:`process_roles`): its mean rate."""
    events: int
    merged_s: float
    unseen_breaks_per_s: float = 0.0
    """``cow_ksm`` breaks per second that no event of the canary accounts for (see
    :func:`_unseen_breaks_per_s`)."""
    events_per_page: F64 | None = None
    """Per page (as ``key``): its same-content unmerges."""
    merged_s_per_page: F64 | None = None
    """Per page: the seconds it was merged."""
    left_s: F64 | None = None
    """Per page: when the canary last saw it leave its merge for good, else NaN: unmapped,
    or broken with its content changed (``unmerged_changed``), and never merged again
    before the recording ended."""
    left_cow: B | None = None
    """Per page with ``left_s``: it left by a write of a new content (``unmerged_changed``,
    a copy-on-write break ``cow_ksm`` counts), not by an unmapping."""
    rates_by_comm: dict[str, F64] = dataclasses.field(default_factory=dict)
    """Per process role: the rates of its pages the canary saw merged, sorted (the role's
    distribution of write rates, :func:`with_canary`)."""
    role_of_pid: dict[int, str] = dataclasses.field(default_factory=dict)
    """The role of every process the canary followed."""
    roles_recorded: bool = False
    """The roles tell busy from idle processes (the recording has their CPU times)."""
    samples: int = 0
    """The canary's samples (one a second by default)."""
    sample_s: float = 1.0
    """The time between two of the canary's samples (the median)."""
    missed_scale: float = 1.0
    """The host's ``cow_ksm`` breaks (less those the canary saw with the content changed)
    per same-content unmerge the canary saw: the factor that spreads the unseen breaks pro
    rata over the pages written, where no page can be told to take them."""
    page_kind: npt.NDArray[np.object_] | None = None
    """Per page: its mapping's kind."""
    page_offset: I64 | None = None
    """Per page: its page number within its mapping (-1: the mapping's start not recorded)."""
    page_classes: bool = True
    """Whether a trace of another run takes its rates and its candidates for the unseen
    breaks by page class (:func:`with_canary`), where both record mapping starts; False:
    as a recording without them (its role's draws, the unseen breaks pro rata). Chosen
    against the recording's copy-on-write (:func:`planner.engine.costfit.fit_canary`)."""
    missed_spread: bool = True
    """Whether the unseen breaks are spread pro rata (:attr:`missed_scale`) where no row can
    be told to take them; False: the rates as the canary measured them, the model's own
    merges and breaks between the canary's samples standing for the unseen ones. Chosen
    against the recording's copy-on-write (:func:`planner.engine.costfit.fit_canary`)."""
    unseen_write_per_s: float | None = None
    """The same-content write rate of each row that takes a share of the unseen breaks
    (:func:`with_canary`); None: :func:`_unseen_rate_per_s`'s, fast enough that a sample
    would rarely find the row merged. Set by :func:`planner.engine.costfit.fit_canary` where
    that rate breaks more merges than the recording
    (:func:`planner.engine.costfit.weigh_unseen_breaks`)."""
    joined_s: F64 | None = None
    """Per page: when the canary first saw it merged (NaN: never)."""
    unseen_hold_content: bool = False
    """Whether the rows that take a share of the unseen breaks keep their content between
    writes (the content changes the sampler counted on them dropped: each write leaves the
    bytes as they were). Set by :func:`planner.engine.costfit.fit_canary` where
    their content changes keep the fitting replays from breaking as many merges as the
    recording (:func:`planner.engine.costfit.weigh_held_content`)."""
    episode_key: U64 | None = None
    """Per episode (a page's merge broken with a new content, or its page unmapped, and the
    page merged again later): the page's key, ascending (a page's episodes in order)."""
    episode_off_s: F64 | None = None
    """Per episode: when the canary saw the merge go (its clock)."""
    episode_on_s: F64 | None = None
    """Per episode: when the canary saw the page merged again."""
    full_scan_s: float | None = None
    """The seconds per full scan of the ksmd the canary watched (None: no full scan)."""
    end_s: float | None = None
    """When the recording ended (its last sample of the host's counters, its clock); None:
    not known (a recording built by hand)."""
    sizes: CanarySizes | None = None
    """Each followed process's present pages at each sample (None: not recorded); the
    growth after the trace is held to them where the canary recorded the traced run
    (:func:`planner.engine.canary_growth.canary_growth`)."""
    renamed_keys: tuple[U64, U64] | None = None
    """The keys the canary recorded of pages placed at keys of the model's own, and those
    keys, pair by pair (:meth:`renamed`); None: none was renamed. For diagnostics: the
    live page-truth join (:mod:`planner.testing.live.pages`)."""
    unseen_cyclers: int | None = None
    """The traced run's own canary: how many of the rows that could take the unseen breaks
    (:func:`_unseen_candidates`) do, each written fast enough that a sample would rarely
    find it merged; the others leave at the last traced snapshot (:func:`with_canary`).
    None: every candidate takes a share. Set by :func:`planner.engine.costfit.fit_canary`
    where that breaks far more merges than the recording
    (:func:`planner.engine.costfit.weigh_unseen_rows`)."""

    @functools.cached_property
    def page_kind_codes(self) -> tuple[I64, tuple[str, ...]]:
        """Per page: the index of its mapping's kind (as text) among ``kinds``, and
        ``kinds`` (computed once per instance: the page classes ask for them at every
        snapshot, :func:`_class_rates`)."""
        if self.page_kind is None or not self.page_kind.size:
            return np.empty(0, np.int64), ()
        kinds, codes = np.unique(self.page_kind.astype(str), return_inverse=True)
        return codes.reshape(-1).astype(np.int64), tuple(str(k) for k in kinds.tolist())

    @property
    def lead_s(self) -> float:
        """How long before the sample that saw a page merged the page is taken to hold its
        shared content: :data:`REJOIN_LEAD_SCANS` of the canary's full scans (0 without
        one). The episodes' rejoins, the changing rows' joins and the canary growth's pages
        seen merged all take it."""
        return REJOIN_LEAD_SCANS * self.full_scan_s if self.full_scan_s else 0.0

    def renamed(self, old: U64, new: U64) -> CanaryRates:
        """These rates with the pages of keys ``old`` (each one of :attr:`key`) known by
        keys ``new`` instead (none of them a key already), every per-page array sorted
        again (the growth held to a canary places pages it saw at addresses of their own:
        :mod:`planner.engine.canary_growth`)."""
        pos = np.searchsorted(self.key, old)
        if old.size and not np.array_equal(self.key[np.minimum(pos, self.key.size - 1)], old):
            raise ValueError("renamed pages the canary did not record")
        key = self.key.copy()
        key[pos] = new
        order = np.argsort(key, kind="stable")
        if np.any(key[order][1:] == key[order][:-1]):
            raise ValueError("a page renamed to a key the canary holds")
        per_page = {
            f.name: getattr(self, f.name)[order]
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), np.ndarray)
            and getattr(self, f.name).shape == self.key.shape
            and f.name != "key"
            and not f.name.startswith("episode_")
        }
        done = self.renamed_keys
        pairs = (old.copy(), new.copy()) if done is None else (
            np.concatenate([done[0], old]), np.concatenate([done[1], new])
        )  # fmt: skip
        out = dataclasses.replace(self, key=key[order], renamed_keys=pairs, **per_page)
        if self.episode_key is None or not self.episode_key.size or self.episode_off_s is None:
            return out
        by_old = np.argsort(old)
        old_sorted, new_by_old = old[by_old], new[by_old]
        at = np.minimum(np.searchsorted(old_sorted, self.episode_key), old.size - 1)
        hit = old_sorted[at] == self.episode_key
        ek = self.episode_key.copy()
        ek[hit] = new_by_old[at[hit]]
        eo = np.lexsort((self.episode_off_s, ek))
        assert self.episode_on_s is not None
        return dataclasses.replace(
            out,
            episode_key=ek[eo],
            episode_off_s=self.episode_off_s[eo],
            episode_on_s=self.episode_on_s[eo],
        )

    def with_roles(self, role_of_pid: dict[int, str]) -> CanaryRates:
        """These rates with the processes' roles taken from ``role_of_pid`` (a trace of
        the same run knows the CPU times of a canary that did not record them)."""
        roles = {**self.role_of_pid, **role_of_pid}
        by_comm, dists = _role_tables(
            self.key, self.rate_per_s, self._events(), self._merged(), roles
        )
        return dataclasses.replace(
            self, by_comm=by_comm, rates_by_comm=dists, role_of_pid=roles, roles_recorded=True
        )

    def _events(self) -> F64:
        if self.events_per_page is not None:
            return self.events_per_page
        return np.nan_to_num(self.rate_per_s) * self._merged()

    def _merged(self) -> F64:
        if self.merged_s_per_page is not None:
            return self.merged_s_per_page
        return np.where(np.isnan(self.rate_per_s), 0.0, 1.0)


def _role_tables(
    key: U64, rate: F64, n_arr: F64, m_arr: F64, role_of_pid: dict[int, str]
) -> tuple[dict[str, float], dict[str, F64]]:
    """Per role: the mean rate and the sorted rates of its pages seen merged."""
    page_role = np.array([role_of_pid.get(int(k >> 36), "") for k in key.tolist()], dtype=object)
    by_comm: dict[str, float] = {}
    rates_by_comm: dict[str, F64] = {}
    for c in sorted(set(page_role.tolist())):
        sel = page_role == c
        ms = float(m_arr[sel].sum())
        if ms > 0:
            by_comm[c] = float(n_arr[sel].sum()) / ms
        # every page seen merged counts once, the briefly merged ones too: they are the
        # often-written pages (leaving them out would thin the distribution's upper end)
        known = sel & (m_arr > 0)
        if known.any():
            rates_by_comm[c] = np.sort(rate[known])
    return by_comm, rates_by_comm


def _canary_cpus(obs: ObservedTimeline) -> dict[int, float | None]:
    """Per pid the canary followed: CPUs it used over the recording (``cpu_s``), if recorded."""
    c = obs.canary
    if c is None or "cpu_s" not in c.columns or not len(c):
        return {}
    out: dict[int, float | None] = {}
    for pid, g in c.sort_values("t_s", kind="stable").groupby("pid"):
        cpu = g["cpu_s"].astype("float64").dropna()
        span_s = float(g["t_s"].iloc[-1] - g["t_s"].iloc[0])
        if len(cpu) >= 2 and span_s > 0:
            out[int(str(pid))] = max(0.0, float(cpu.iloc[-1] - cpu.iloc[0])) / span_s
    return out


#: A page the canary saw merged again is taken to hold its shared content again this many
#: of the canary's full scans before the sample that saw it (:func:`_canary_episodes`).
REJOIN_LEAD_SCANS: Final = 1.5

#: A page's last canary event that takes it out of KSM for good when no merge follows it:
#: unmapped, or its merge broken with the content changed (the new content was never merged
#: again: held by no other page, or changing too often for the checksum gate).
_GONE_EVENTS = ("unmapped", "unmerged_changed")


def canary_rates(obs: ObservedTimeline, page_size: int = 4096) -> CanaryRates:
    """The per-page same-content write rates of a canary recording."""
    from planner.errors import InputDataError

    ev = obs.page_events
    if ev is None:
        raise InputDataError(
            "the recording has no per-page KSM states",
            hint="record with 'ksm-planner observe --ksm-pages'",
        )
    t_end = float(obs.counters.index.max()) if len(obs.counters) else 0.0
    shift = page_size.bit_length() - 1
    ev = ev.sort_values(["pid", "page_addr", "t_s"], kind="stable")
    pids = ev["pid"].to_numpy(np.int64)
    addrs = ev["page_addr"].to_numpy(np.uint64)
    pages = addrs >> np.uint64(shift)
    times = ev["t_s"].to_numpy(np.float64)
    kinds = ev["event"].astype(str).to_numpy()
    vkind = (
        ev["vma_kind"].astype(str).to_numpy()
        if "vma_kind" in ev.columns
        else np.full(len(ev), "", dtype=object)
    )
    offset = np.full(len(ev), -1, np.int64)
    if "vma_start" in ev.columns:
        start = ev["vma_start"]
        ok = start.notna().to_numpy(bool).copy()
        st = start.fillna(0).to_numpy(np.uint64)
        ok &= st <= addrs
        offset[ok] = ((addrs[ok] - st[ok]) >> np.uint64(shift)).astype(np.int64)
    keys = (pids.astype(np.uint64) << np.uint64(36)) | pages
    out_key: list[int] = []
    out_n: list[int] = []
    out_m: list[float] = []
    out_left: list[float] = []
    out_cow: list[bool] = []
    out_first: list[int] = []
    out_join: list[float] = []
    ep_key: list[int] = []
    ep_off: list[float] = []
    ep_on: list[float] = []
    i, n_rows = 0, keys.size
    while i < n_rows:
        j = i
        merged, since, n, m = False, 0.0, 0, 0.0
        joined = np.nan
        gone_at = np.nan  # the merge went with a new content (or the page): an episode's start
        while j < n_rows and keys[j] == keys[i]:
            if kinds[j] == "merged":
                if not merged:
                    merged, since = True, times[j]
                if np.isnan(joined):
                    joined = float(times[j])
                if not np.isnan(gone_at):
                    ep_key.append(int(keys[i]))
                    ep_off.append(gone_at)
                    ep_on.append(float(times[j]))
                gone_at = np.nan
            else:
                if kinds[j] in _GONE_EVENTS:
                    gone_at = float(times[j])
                if merged:
                    m += times[j] - since
                    merged = False
                    n += kinds[j] == "unmerged_same_content"
            j += 1
        if merged:
            m += t_end - since
        out_key.append(int(keys[i]))
        out_n.append(n)
        out_m.append(m)
        # gone for good: unmapped, or its content changed, and never merged again
        out_left.append(float(times[j - 1]) if kinds[j - 1] in _GONE_EVENTS else np.nan)
        out_cow.append(kinds[j - 1] == "unmerged_changed")
        out_first.append(i)
        out_join.append(joined)
        i = j
    key = np.array(out_key, np.uint64)
    n_arr = np.array(out_n, np.float64)
    m_arr = np.array(out_m, np.float64)
    first = np.array(out_first, np.int64)
    rate = np.divide(n_arr, m_arr, out=np.full(key.size, np.nan), where=m_arr > 0)
    comm_of = dict(
        zip(obs.processes["pid"].astype(int), obs.processes["comm"].astype(str), strict=False)
    )
    cpus = _canary_cpus(obs)
    roles = process_roles(comm_of, cpus)
    by_comm, rates_by_comm = _role_tables(key, rate, n_arr, m_arr, roles)
    return CanaryRates(
        key=key,
        rate_per_s=rate,
        by_comm=by_comm,
        events=int(n_arr.sum()),
        merged_s=float(m_arr.sum()),
        unseen_breaks_per_s=_unseen_breaks_per_s(obs),
        missed_scale=_missed_breaks_scale(obs),
        samples=int(obs.canary["sample"].nunique()) if obs.canary is not None else 0,
        sample_s=_sample_s(obs),
        events_per_page=n_arr,
        merged_s_per_page=m_arr,
        left_s=np.array(out_left, np.float64),
        left_cow=np.array(out_cow, bool),
        joined_s=np.array(out_join, np.float64),
        episode_key=np.array(ep_key, np.uint64),
        episode_off_s=np.array(ep_off, np.float64),
        episode_on_s=np.array(ep_on, np.float64),
        full_scan_s=_full_scan_s(obs),
        end_s=t_end if len(obs.counters) else None,
        rates_by_comm=rates_by_comm,
        role_of_pid=roles,
        roles_recorded=bool(cpus),
        page_kind=np.asarray(vkind[first] if first.size else vkind[:0], dtype=object),
        page_offset=offset[first] if first.size else offset[:0],
        sizes=canary_sizes(obs),
    )


def _full_scan_s(obs: ObservedTimeline) -> float | None:
    """Seconds per full scan of the ksmd a recording watched: its span over the full scans
    it counted (None where it counted none)."""
    if "full_scans" not in obs.counters.columns:
        return None
    scans = obs.counters["full_scans"].astype("float64").dropna()
    if len(scans) < 2:
        return None
    n = float(scans.iloc[-1] - scans.iloc[0])
    span_s = float(scans.index[-1] - scans.index[0])
    return span_s / n if n > 0 and span_s > 0 else None


def _sample_s(obs: ObservedTimeline) -> float:
    """The median time between two of the canary's samples (1 s where it cannot tell)."""
    if obs.canary is None or "t_s" not in obs.canary.columns:
        return 1.0
    times = np.unique(obs.canary["t_s"].to_numpy(np.float64))
    if times.size < 2:
        return 1.0
    return float(np.median(np.diff(times)))


def _unseen_breaks_per_s(obs: ObservedTimeline) -> float:
    """The host's copy-on-write breaks of KSM pages per second that the canary did not see.

    ``cow_ksm`` counts every break; the canary, sampling once a second, sees only a merge
    that lasted until a sample and was gone at the next one. The breaks it saw (with the
    content unchanged or changed) are taken off; the rest were merges made and broken
    between two samples.
    """
    if obs.canary is None or "cow_ksm" not in obs.counters.columns:
        return 0.0
    cow = obs.counters["cow_ksm"].astype("float64").dropna()
    if len(cow) < 2:
        return 0.0
    span_s = float(cow.index[-1] - cow.index[0])
    seen = sum(
        float(obs.canary[c].sum())
        for c in ("unmerged_same_content", "unmerged_changed", "unmerged")
        if c in obs.canary.columns
    )
    breaks = float(cow.iloc[-1] - cow.iloc[0]) - seen
    return max(0.0, breaks / span_s) if span_s > 0 else 0.0


def _missed_breaks_scale(obs: ObservedTimeline) -> float:
    """How many merges the host lost per same-content unmerge the canary saw (never below
    1): ``cow_ksm`` less the canary's breaks with the content changed (those are the trace's
    content changes), over its same-content unmerges."""
    if obs.canary is None or "cow_ksm" not in obs.counters.columns:
        return 1.0
    cow = obs.counters["cow_ksm"].astype("float64").dropna()
    same = float(obs.canary["unmerged_same_content"].sum())
    changed = float(obs.canary["unmerged_changed"].sum())
    if len(cow) < 2 or same <= 0:
        return 1.0
    return max(1.0, (float(cow.iloc[-1] - cow.iloc[0]) - changed) / same)


def _content_draw(hashes: U64) -> F64:
    """A uniform draw in [0, 1) per content (rows holding the same bytes draw alike)."""
    return _phases(0, 0, hashes, 4)


@dataclass(frozen=True)
class _RowRoles:
    """Per row of one snapshot: its role's index in ``roles``, and its page's class."""

    code: I64
    roles: list[str]
    kind: I64 | None  # index of the mapping's kind in ``kinds`` (None: no mappings traced)
    offset: I64 | None  # page number within the mapping (-1: in none)
    kinds: tuple[str, ...] = ()


def _row_classes(
    inp: ReplayInput, k: int, snap: SnapshotRows, pids: I64
) -> tuple[I64, I64, tuple[str, ...]] | None:
    """Per row of snapshot ``k`` (``snap``): the index of its mapping's kind (among the
    kinds returned; a row of no mapping has the kind ``""``) and its page number within
    that mapping (-1: in none)."""
    maps = inp.meta.get("mappings")
    if not isinstance(maps, dict):
        return None
    sel = np.flatnonzero(maps["snapshot"] == k)
    kind = np.zeros(snap.n, np.int64)
    offset = np.full(snap.n, -1, np.int64)
    if not sel.size or not snap.n:
        return kind, offset, ("",)
    mp, ms = maps["pid"][sel], maps["start"][sel]
    order = np.lexsort((ms, mp))
    mp, ms = mp[order], ms[order]
    me, mk = maps["end"][sel][order], maps["kind"][sel][order]
    # the kinds as text, "" (a row of no mapping) first: one code per mapping
    kinds: dict[str, int] = {"": 0}
    mk_code = _ids_of([str(x) for x in mk.tolist()], kinds)
    addr = snap.page << np.uint64(inp.page_size.bit_length() - 1)
    # the last mapping of the row's pid that starts at or before its address
    combo = (mp.astype(np.uint64) << np.uint64(48)) | (ms >> np.uint64(12))
    want = (pids.astype(np.uint64) << np.uint64(48)) | (addr >> np.uint64(12))
    pos = np.searchsorted(combo, want, side="right") - 1
    ok = pos >= 0
    p = np.maximum(pos, 0)
    ok &= (mp[p] == pids) & (ms[p] <= addr) & (addr < me[p])
    kind[ok] = mk_code[p[ok]]
    offset[ok] = ((addr[ok] - ms[p[ok]]) >> np.uint64(inp.page_size.bit_length() - 1)).astype(
        np.int64
    )
    return kind, offset, tuple(kinds)


#: A page class whose pages the canary saw merged stayed merged for at most this many of its
#: sampling periods on average is taken as never seen merged (:func:`_class_rates`).
BRIEF_MERGE_SAMPLES: Final = 1.5


def _class_rates(rates: CanaryRates, rr: _RowRoles) -> tuple[F64, npt.NDArray[np.bool_]] | None:
    """Per row: the rate pooled over the canary's pages of its class (role, mapping kind,
    page number in the mapping), and whether the canary saw pages of that class stay merged;
    None where the canary or the trace lacks the classes.

    A class whose pages the canary saw merged were merged for no more than
    :data:`BRIEF_MERGE_SAMPLES` sampling periods each on average counts as never seen
    merged, as a page of the traced run that no sample found merged does: a class pools the
    pages of every process (16 PostgreSQL backends), so a sample catches one of its brief
    merges many times as often as it catches a given page's. On PostgreSQL such classes
    hold the pages the kernel merges and breaks again every few passes
    (docs/live-validation.md, "The breaks of rows that never stay merged"): as classes seen
    merged, at their pooled rate, another run's canary gave the unseen breaks to 236 rows
    where its own run's gave them to 461, and the model broke 26 % fewer merges than the
    host."""
    if (
        rr.kind is None
        or rr.offset is None
        or rates.page_kind is None
        or rates.page_offset is None
        or not (rates.page_offset >= 0).any()
    ):
        return None
    m_arr, n_arr = rates._merged(), rates._events()
    n = rr.code.size
    rate = np.zeros(n, np.float64)
    seen = np.zeros(n, bool)
    sel = np.flatnonzero((rates.page_offset >= 0) & (m_arr > 0))
    if not sel.size or not n:
        return rate, seen
    # a canary without CPU times has roles by comm only: match the trace's on the comm
    roles = rr.roles if rates.roles_recorded else [role_comm(r) for r in rr.roles]
    # one class per (role, mapping kind as text, page number), over the canary's pages and
    # the rows (a row of no mapping has page number -1, which no canary page has)
    role_ids: dict[str, int] = {}
    pids, at = np.unique(rates.key[sel] >> np.uint64(36), return_inverse=True)
    page_role = _ids_of([rates.role_of_pid.get(int(p), "") for p in pids.tolist()], role_ids)
    row_role = _ids_of(roles, role_ids)
    kind_ids: dict[str, int] = {}
    page_kinds, kind_names = rates.page_kind_codes
    page_kind = _ids_of(list(kind_names), kind_ids)
    row_kind = _ids_of(list(rr.kinds), kind_ids)
    cls = _class_ids(
        np.concatenate([page_role[at.reshape(-1)], row_role[rr.code]]),
        np.concatenate([page_kind[page_kinds[sel]], row_kind[rr.kind]]),
        np.concatenate([rates.page_offset[sel], rr.offset]).astype(np.int64),
    )
    k, m = int(cls.max()) + 1, sel.size
    # sums in the canary's page order, as one page after the other adds them
    ev = np.bincount(cls[:m], n_arr[sel], k)
    ms = np.bincount(cls[:m], m_arr[sel], k)
    pages = np.bincount(cls[:m], minlength=k)
    lasting = ms > BRIEF_MERGE_SAMPLES * rates.sample_s * pages
    row_cls = cls[m:]
    seen = lasting[row_cls]
    rate[seen] = ev[row_cls[seen]] / ms[row_cls[seen]]
    return rate, seen


def _ids_of(texts: list[str], ids: dict[str, int]) -> I64:
    """Per text: its index in ``ids``, where a text not in it yet is added."""
    return np.array([ids.setdefault(t, len(ids)) for t in texts], np.int64)


def _class_ids(role: I64, kind: I64, offset: I64) -> I64:
    """Dense ids of the (role, kind, offset) triples: one integer per triple where they fit
    63 bits (offset >= -1), else the rows of the three columns."""
    n_kinds = int(kind.max()) + 1 if kind.size else 1
    span = int(offset.max()) + 2 if offset.size else 1
    n_roles = int(role.max()) + 1 if role.size else 1
    inverse: I64
    if n_roles * n_kinds * span < 2**62:
        packed = (role * n_kinds + kind) * span + (offset + 1)
        inverse = np.unique(packed, return_inverse=True)[1]
    else:
        triple = np.stack([role, kind, offset], axis=1)
        inverse = np.unique(triple, axis=0, return_inverse=True)[1]
    return inverse.reshape(-1).astype(np.int64, copy=False)


def _row_rates(
    snap_hash: U64,
    key: U64,
    rr: _RowRoles,
    fork_shared: B,
    rates: CanaryRates,
    same_run: bool,
) -> tuple[F64, npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Per row: its same-content write rate (see :func:`with_canary`), which rows the canary
    followed itself, and which rows hold a content (or, for another run, a page class) the
    canary never saw merged."""
    n = key.size
    rate = np.zeros(n, np.float64)
    unseen = np.ones(n, bool)
    if rates.rates_by_comm:  # the role's distribution, one draw per content
        u = _content_draw(snap_hash)
        for code in np.unique(rr.code).tolist():
            role = rr.roles[code]
            dist = rates.rates_by_comm.get(role)
            if dist is None and not role.endswith(" idle"):
                # an idle process takes an idle role's rates or none: a canary that cannot
                # tell idle from busy processes has mostly the busy ones' writes
                dist = rates.rates_by_comm.get(role_comm(role))
            if dist is None or not dist.size:
                continue
            sel = (rr.code == code) & ~fork_shared
            pick = np.minimum((u[sel] * dist.size).astype(np.int64), dist.size - 1)
            rate[sel] = dist[pick]
    elif rates.by_comm:  # a recording of an older planner: the role's mean
        mean = np.array(
            [
                rates.by_comm.get(c, 0.0)
                if c.endswith(" idle")
                else rates.by_comm.get(c, rates.by_comm.get(role_comm(c), 0.0))
                for c in rr.roles
            ],
            np.float64,
        )
        rate[:] = mean[rr.code] if rr.roles else 0.0
        rate[fork_shared] = 0.0
    hit = np.zeros(n, bool)
    if not same_run:
        by_class = _class_rates(rates, rr) if rates.page_classes else None
        if by_class is not None:  # the page's class, where the canary saw it merged
            class_rate, seen = by_class
            rate[seen & ~fork_shared] = class_rate[seen & ~fork_shared]
            unseen = ~seen
        else:
            unseen[:] = False  # nothing tells which pages: the role's draw alone
        return rate, hit, unseen
    if not rates.key.size or not n:
        return rate, hit, unseen
    pos = np.minimum(np.searchsorted(rates.key, key), rates.key.size - 1)
    hit = (rates.key[pos] == key) & ~np.isnan(rates.rate_per_s[pos])
    if rates.events_per_page is None or rates.merged_s_per_page is None:
        rate[hit] = rates.rate_per_s[pos[hit]]
        return rate, hit, ~hit
    # pooled over the rows that hold the same content: the canary caught some of a group
    # (e.g. one page of each worker's copy), the rest are written alike
    gkey, gid = np.unique(snap_hash, return_inverse=True)
    gid = gid.reshape(-1)
    ev = np.bincount(gid[hit], rates.events_per_page[pos[hit]], gkey.size)
    ms = np.bincount(gid[hit], rates.merged_s_per_page[pos[hit]], gkey.size)
    known = ms > 0
    pooled = known[gid] & ~fork_shared
    rate[pooled] = ev[gid[pooled]] / ms[gid[pooled]]
    rate[hit] = ev[gid[hit]] / ms[gid[hit]]
    return rate, hit, ~hit  # the traced run: the page itself was never a KSM page


def _unseen_candidates(
    snap_hash: U64, rr: _RowRoles, fork_shared: B, unseen: npt.NDArray[np.bool_]
) -> npt.NDArray[np.bool_]:
    """Rows likely to take the breaks the canary did not see: in a busy role (any role where
    the roles do not tell busy from idle), not shared by ``fork()``, holding a content that
    other rows hold too (a merge is possible), and never seen merged by the canary."""
    busy_roles = [r.endswith(" busy") for r in rr.roles]
    busy = np.array(busy_roles if any(busy_roles) else [True] * len(rr.roles), bool)
    if not rr.roles:
        return np.zeros(snap_hash.size, bool)
    return busy[rr.code] & ~fork_shared & _held_twice(snap_hash) & unseen


def _leavers(key: U64, cand: B, cyclers: int) -> B:
    """Of the unseen breaks' candidates ``cand``, all but ``cyclers`` of them (kept by a
    seeded draw per page): the rows that leave (:attr:`CanaryRates.unseen_cyclers`)."""
    out = np.zeros(key.size, bool)
    rows = np.flatnonzero(cand)
    if rows.size <= cyclers:
        return out
    order = np.argsort(_phases(0, 0, key[rows], 5), kind="stable")
    out[rows[order[max(cyclers, 0) :]]] = True
    return out


def _content_ids(inp: ReplayInput, snap: SnapshotRows) -> I64:
    """Each row's catalog content id (kept by a snapshot rebuilt from deltas, else looked
    up by its hash)."""
    if snap.content is not None:
        return snap.content.astype(np.int64)
    order = np.argsort(inp.content_hash, kind="stable")
    pos = np.searchsorted(inp.content_hash, snap.hash, sorter=order)
    return order[np.minimum(pos, order.size - 1)].astype(np.int64)


def _canary_joins(
    inp: ReplayInput,
    snap: SnapshotRows,
    key: U64,
    rates: CanaryRates,
    iw: IntervalWrites,
    at_ns: I64 | int,
) -> Joins | None:
    """The rows of a snapshot in the continuation that join a content other rows hold.

    A row joins where the canary saw its page merged while the snapshot shows it holding a
    content no other row holds, and the interval changed it or did not write it at all. The
    kernel merged it with some page, so its content became one that others hold after the
    capture: on a JVM, memory freed and zeroed by the collector; on Node, heap objects laid
    out alike in every worker (docs/live-validation.md, "Canary-driven joins"). A row the
    interval saw change content goes on changing (its next change is a content of its own,
    which breaks the merge: the canary's merge lost with a new content); until 2026-12-07
    such rows never joined, and on two Node canary runs 4,277 of the 6,249 pages the canary
    saw leave for good with a new content were never merged in the model when they left:
    copy-on-write −20.5 and −29.0 % (docs/live-validation.md, "Changing rows the canary saw
    merged").

    * *Which content:* the one most eligible rows of its process hold, among contents at
      least two rows of the snapshot hold. (The canary records no frame that would tie a
      page to the pages it shares a KSM page with.) A process without such a content has
      no joins.
    * *When:* at ``at_ns``, the earliest time the trace allows: the last traced snapshot,
      which shows the page unique (a row an appended snapshot adds: that snapshot). When
      between that and the canary's first sight of the merge the content changed, nothing
      tells: the kernel merges a changed page at its second processed visit after the
      change, and smart scan spaces the visits of a page that has stayed unique out to
      every ninth full scan, so a later time leaves the model's page aged where the
      kernel's merged. On three JVM canary runs the latest time consistent with the
      canary (two full scans and a sample before it saw the merge) gave -22.7, -5.6 and
      -0.1 %, the earliest -3.7, +5.5 and +17.6 % (docs/live-validation.md, "Canary-driven
      joins"). A changing row goes on changing after it joins, so joined at the earliest
      time it would take its next content of its own long before the kernel merged it: it
      joins :data:`REJOIN_LEAD_SCANS` of the canary's full scans before the sample that saw
      it merged, as an episode's page takes its content back.
    """
    joined_s = rates.joined_s
    if joined_s is None or not snap.n or not rates.key.size:
        return None
    pos = np.minimum(np.searchsorted(rates.key, key), rates.key.size - 1)
    hit = rates.key[pos] == key
    first = np.where(hit, joined_s[pos], np.nan)
    cand = ~np.isnan(first)
    if not cand.any():
        return None
    gid = _content_ids(inp, snap)
    held = _held_twice(gid)
    content, same, _ = iw.per_row()
    elig = snap.eligible
    cand &= ~held & elig & ((same == 0) | (content > 0))  # not a still row rewritten
    pool = held & elig
    if not cand.any() or not pool.any():
        return None
    pair = (snap.mm[pool].astype(np.int64) << 32) | gid[pool]
    u, c = np.unique(pair, return_counts=True)
    um, ug = u >> 32, u & 0xFFFFFFFF
    order = np.lexsort((ug, -c, um))  # per process: the most rows, then the lowest id
    best = order[np.r_[True, um[order][1:] != um[order][:-1]]]
    t_mm, t_gid = um[best], ug[best]
    rows = np.flatnonzero(cand)
    mm = snap.mm[rows].astype(np.int64)
    tp = np.minimum(np.searchsorted(t_mm, mm), t_mm.size - 1)
    ok = t_mm[tp] == mm
    rows, tp = rows[ok], tp[ok]
    if not rows.size:
        return None
    floor = np.asarray(at_ns, np.int64)
    at = floor[rows] if floor.ndim else np.full(rows.size, floor, np.int64)
    moving = content[rows] > 0
    if moving.any():  # a changing row: when the canary saw it merged, less the lead
        late = inp.times_ns[0] + np.rint((first[rows] - rates.lead_s) * 1e9).astype(np.int64)
        at = np.where(moving, np.maximum(at, late), at)
    content = t_gid[tp].astype(np.int64)
    zero = np.isin(content, gid[snap.zero])
    return Joins(rows.astype(np.int64), at, content, zero if zero.any() else None)


def _after_recording(rows: I64, period_ns: F64, phase: F64, eps: Episodes, t0: int) -> F64:
    """``phase`` of the content-change streams of ``rows`` (every ``period_ns`` from ``t0``)
    with those of the rows with episodes whose content other rows hold
    (:attr:`Episodes.quiet_rows`) moved on by whole periods, so that their first change
    comes after the canary's recording. Until then the canary saw every change that broke
    such a page's merge (an episode); the sampled rate, replayed at phases of each row's
    own, would set the copies of one page apart where they change together. (On a churn
    canary run the toggling region's pages, each copy changing every 3 s with the others,
    broke no merge in the model while the canary saw 250 a second go.) A row of a content
    of its own keeps its sampled changes: a joined row's next change breaks its merge, as
    the canary saw on Node ("Changing rows the canary saw merged"). After the recording the
    sampled rate goes on, on the same grid of times."""
    assert eps.recorded_until_ns is not None
    with_eps = isin(rows, eps.rows if eps.quiet_rows is None else eps.quiet_rows, of_sorted=True)
    ahead = np.ceil((eps.recorded_until_ns - t0) / period_ns[with_eps] - phase[with_eps])
    out = phase.copy()
    out[with_eps] += np.maximum(ahead, 0.0)
    return out


def _canary_episodes(
    inp: ReplayInput, key: U64, rates: CanaryRates, hashes: U64 | None = None
) -> Episodes | None:
    """The episodes of a snapshot in the continuation (rows ``key``; ``hashes``: their
    contents, which tell :attr:`Episodes.quiet_rows`): each time the canary
    saw a page's merge go with a new content (or the page unmapped) and the page merged
    again later, its row writes a content of its own when the canary saw the merge go, and
    holds its shared content again :data:`REJOIN_LEAD_SCANS` of the canary's full scans
    before the sample that saw it merged again (ksmd merges a page whose content changed
    at its second visit after the change, one to two full scans later), never before it
    left. The times are the workload's, on the canary's clock, which starts with ksmd as
    the replay's: a canary at one knob setting serves the others."""
    ek, off_s, on_s = rates.episode_key, rates.episode_off_s, rates.episode_on_s
    if ek is None or off_s is None or on_s is None or not ek.size or not key.size:
        return None
    # each row's episodes: its run of the sorted episode keys (a page's in order of time)
    lo = np.searchsorted(ek, key, side="left")
    count = np.searchsorted(ek, key, side="right") - lo
    if not count.any():
        return None
    rows = np.repeat(np.arange(key.size, dtype=np.int64), count)
    at = np.arange(rows.size, dtype=np.int64) + np.repeat(lo - (np.cumsum(count) - count), count)
    t0 = inp.times_ns[0] if inp.n_snapshots else 0
    lead_ns = round(rates.lead_s * 1e9)
    off = t0 + np.rint(off_s[at] * 1e9).astype(np.int64)
    on = np.maximum(t0 + np.rint(on_s[at] * 1e9).astype(np.int64) - lead_ns, off + 1)
    until = None if rates.end_s is None else t0 + round(rates.end_s * 1e9)
    quiet = None if hashes is None else np.unique(rows[_held_twice(hashes)[rows]])
    return Episodes(rows, off, on, until, quiet)


def _held_twice(values: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    """Per element: whether another element has the same value: dense ids from the content
    catalog's hash table, then a count per id (this runs twice per snapshot of every derived
    input, where a sort of the column took 5 ms a call)."""
    if values.size < 2:
        return np.zeros(values.size, bool)
    ids = ContentCatalog().ids_of(np.ascontiguousarray(values).astype(np.uint64, copy=False))
    return np.asarray(np.bincount(ids)[ids] > 1, dtype=bool)


def _unseen_rate_per_s(rates: CanaryRates, n_cand: int) -> float:
    """Same-content writes per second of each page that takes a share of the unseen breaks.

    Each of ``n_cand`` pages breaks ``b = unseen_breaks_per_s / n_cand`` merges a second, and
    the canary found none of them merged at any of its ``n`` samples: a merge lasts about
    half the time between two writes, so the chance that a sample finds the page merged is
    about ``b / (2 r)`` for writes at ``r`` per second. ``r = b n`` makes the expected count
    of samples that find it merged one half. The breaks stay near ``b`` only where ksmd
    pairs the pages again no faster than that; where it passes every fraction of a second
    (a Node canary: 692 such rows broke 1.6 merges a second each, not 0.05),
    :func:`planner.engine.costfit.weigh_unseen_breaks` writes them more slowly
    (:attr:`CanaryRates.unseen_write_per_s`).
    """
    if n_cand <= 0 or rates.unseen_breaks_per_s <= 0:
        return 0.0
    return rates.unseen_breaks_per_s / n_cand * max(rates.samples, 1)


@dataclass(frozen=True)
class _Unseen:
    """How the breaks the canary did not see are spread (:func:`with_canary`)."""

    per_s: float
    """Added to the rate of each candidate row."""
    n_cand: int
    """Candidates of the last traced snapshot."""
    missed_scale: float
    """Without candidates: every rate scaled by this (:attr:`CanaryRates.missed_scale`)."""
    hold_content: bool = False
    """The candidates keep their content (:attr:`CanaryRates.unseen_hold_content`)."""


def _calibrated(
    inp: ReplayInput,
    k: int,
    rate: F64,
    cand: B,
    leave: I64 | None,
    leave_cow: B | None,
    unseen: _Unseen,
    last: IntervalWrites | None = None,
    grown: I64 | None = None,
) -> IntervalWrites:
    """Snapshot ``k``'s interval with its rows' rates (the unseen breaks' share added) and
    times of leaving. With ``last`` (the last traced snapshot's, calibrated) and ``grown``
    (the rows of ``k``, an appended snapshot, that it lacks): ``last``'s arrays shared,
    this snapshot's own values only where they differ (:class:`CanaryOwn`)."""
    if unseen.per_s > 0 and cand.any():
        rate = rate.copy()
        rate[cand] += unseen.per_s
    elif not unseen.n_cand and unseen.missed_scale > 1.0:
        # nothing tells which pages take the unseen breaks (another run's canary without
        # page classes): spread over the pages written, pro rata to their rates
        rate = rate * unseen.missed_scale
    base_rate = None if last is None or grown is None else last.same_rate_per_s
    old = inp.writes[k] if k < len(inp.writes) else None
    if old is None:
        length = None
        if k + 1 < inp.n_snapshots:
            length = inp.times_ns[k + 1] - inp.times_ns[k]
        if base_rate is not None and last is not None and grown is not None and base_rate.size:
            # no counts: the last traced snapshot's zeros, as growth shares counts
            src = np.zeros(grown.size, np.int64)
            old = IntervalWrites(
                last.content, last.same, last.toggle, length, grown_at=grown, grown_src=src
            )
        else:
            zeros = np.zeros(rate.size, np.uint16)
            old = IntervalWrites(zeros, zeros.copy(), np.zeros(rate.size, bool), length)
    if unseen.hold_content and unseen.per_s > 0 and cand.any():
        old = _held(old, cand, last)
    if base_rate is None or last is None or grown is None:
        return dataclasses.replace(old, same_rate_per_s=rate, leave_ns=leave, leave_cow=leave_cow)
    base_leave, base_cow = last.leave_ns, last.leave_cow
    kept = np.ones(rate.size, bool)
    kept[grown] = False
    differ = ~kept
    differ[kept] |= rate[kept] != base_rate  # (a NaN differs: kept as its own, exactly)
    full_leave = None
    if leave is not None or base_leave is not None:
        full_leave = leave if leave is not None else np.full(rate.size, -1, np.int64)
        was = base_leave if base_leave is not None else np.full(base_rate.size, -1, np.int64)
        differ[kept] |= full_leave[kept] != was
    full_cow = None
    if leave_cow is not None or base_cow is not None:
        full_cow = leave_cow if leave_cow is not None else np.zeros(rate.size, bool)
        was_cow = base_cow if base_cow is not None else np.zeros(base_rate.size, bool)
        differ[kept] |= full_cow[kept] != was_cow
    at = np.flatnonzero(differ)
    own = CanaryOwn(
        grown=grown,
        at=at,
        rate=rate[at],
        leave=None if full_leave is None else full_leave[at],
        leave_cow=None if full_cow is None else full_cow[at],
    )
    return dataclasses.replace(
        old, same_rate_per_s=base_rate, leave_ns=base_leave, leave_cow=base_cow, canary_own=own
    )


def _held(iw: IntervalWrites, cand: B, last: IntervalWrites | None) -> IntervalWrites:
    """``iw`` with the content changes of rows ``cand`` dropped (a row without changes
    does not toggle: :attr:`IntervalWrites.toggle` only says where its changes end;
    :attr:`CanaryRates.unseen_hold_content`). An appended snapshot's counts are the last
    traced snapshot's arrays (``grown_at``): it takes that snapshot's, held already
    (``last``), its grown rows those of their templates."""
    if iw.grown_at is not None:
        if last is not None and last.grown_at is None and last.content.size == iw.content.size:
            return dataclasses.replace(iw, content=last.content)
        return iw
    if iw.content.size != cand.size:  # pragma: no cover - a traced interval has every row
        return iw
    content = iw.content.copy()
    content[cand] = 0
    return dataclasses.replace(iw, content=content)


def _changing(old: IntervalWrites | None, cand: B) -> int:
    """Of rows ``cand``, those whose content the sampler saw change over ``old``'s
    interval."""
    if old is None or old.grown_at is not None or old.content.size != cand.size:
        return 0
    return int(np.count_nonzero(cand & (old.content > 0)))


class _Standing:
    """Which rows of the continuation snapshots leave, and which may take the unseen
    breaks, for the traced run's own canary (:func:`with_canary`): at the last traced
    snapshot, the candidates the unseen breaks do not need
    (:attr:`CanaryRates.unseen_cyclers`) leave at its time; in a snapshot the growth model
    appended, those rows leave again and each grown row stands as its template does."""

    def __init__(self, cyclers: int | None, at_ns: int) -> None:
        self.cyclers = cyclers
        self.at_ns = at_ns
        self.keys = np.empty(0, np.uint64)  # the rows that leave (sorted keys)
        self.last_leave = self.last_cand = np.zeros(0, bool)  # the last traced snapshot's

    @property
    def n_leave(self) -> int:
        """Rows of the last traced snapshot that leave."""
        return int(self.keys.size)

    def apply(
        self, last_traced: bool, key: U64, cand: B, leave: I64 | None, iw: IntervalWrites | None
    ) -> tuple[B, I64 | None]:
        """``cand`` and ``leave`` of a continuation snapshot (rows ``key``, its writes
        ``iw``) with these rows' standing."""
        lv = np.zeros(key.size, bool)
        templates = None if last_traced else _templates(iw)
        if last_traced:
            if self.cyclers is not None:
                lv = _leavers(key, cand, self.cyclers)
            self.keys = np.sort(key[lv])
        elif self.keys.size:
            lv = isin(key, self.keys, of_sorted=True)
            if templates is not None:  # a grown row as its template (written alike)
                lv[templates[0]] = self.last_leave[templates[1]]
        if lv.any():
            leave = np.full(key.size, -1, np.int64) if leave is None else leave.copy()
            leave[lv & (leave < 0)] = self.at_ns
            cand = cand & ~lv
        if last_traced:
            self.last_leave, self.last_cand = lv, cand
        elif templates is not None:
            cand = cand.copy()  # a grown row as its template: no canary followed it
            cand[templates[0]] = self.last_cand[templates[1]]
        return cand, leave


def _alternating_keys(iw: IntervalWrites | None, key: U64) -> U64:
    """The keys (sorted) of the rows that alternate between two contents the trace knows
    (:attr:`IntervalWrites.others`) of the snapshot whose writes are ``iw`` and rows
    ``key``. The canary may see such a page's merge go with a new content and never come
    back in its recording (at a slow scan the two contents rarely stay long enough to
    merge again), but it does come back: the alternation writes it, not a leaving."""
    if iw is None or iw.others is None or iw.grown_at is not None:
        return np.empty(0, np.uint64)
    return np.sort(key[iw.others.rows])


def _alternating_stay(
    alt_keys: U64, key: U64, leave: I64 | None, leave_cow: B | None
) -> tuple[I64 | None, B | None]:
    """``leave`` and ``leave_cow`` of rows ``key`` but for the rows of ``alt_keys``
    (:func:`_alternating_keys`) that were to leave by a write: they stay."""
    if not alt_keys.size or leave is None or leave_cow is None:
        return leave, leave_cow
    back = isin(key, alt_keys, of_sorted=True) & leave_cow & (leave >= 0)
    if not back.any():
        return leave, leave_cow
    leave = leave.copy()
    leave[back] = -1
    return leave, leave_cow & ~back


def _templates(iw: IntervalWrites | None) -> tuple[I64, I64] | None:
    """A snapshot the growth model appended: its rows the last traced snapshot lacks, and
    the row of that snapshot each was drawn from (:attr:`IntervalWrites.grown_at`,
    :attr:`IntervalWrites.grown_src`); None for any other."""
    if iw is None or iw.grown_at is None or iw.grown_src is None:
        return None
    return iw.grown_at, iw.grown_src


def _appended_rows(grown: I64, d: SnapshotDelta) -> I64 | None:
    """The rows of delta ``d``'s snapshot that the last traced snapshot lacks, from those
    of the snapshot before (``grown``): rows inserted by ``d`` (an appended snapshot only
    inserts rows) move the others up (:func:`planner.engine.rows.moved_up`). None if
    ``d`` removes rows: not an appended snapshot."""
    if d.removed.size:
        return None
    p = np.sort(d.added.astype(np.int64))
    return np.sort(np.concatenate([moved_up(grown, p), p]))


def records_traced_run(inp: ReplayInput, rates: CanaryRates) -> bool:
    """Whether the canary ``rates`` recorded the run ``inp`` traced: most pids of the smaller
    set are in the other (a canary of the whole host follows more processes than a trace of
    one service). Its rows that could take the unseen breaks can then be told apart page by
    page, and those the breaks do not need leave (:attr:`CanaryRates.unseen_cyclers`)."""
    canary_pids = np.unique((rates.key >> np.uint64(36)).astype(np.int64))
    trace_pids = np.unique(np.array([m.pid for m in inp.mms], np.int64))
    common = int(np.isin(canary_pids, trace_pids).sum())
    return common > 0 and common >= 0.5 * min(canary_pids.size, trace_pids.size)


@dataclass(frozen=True)
class CanaryVariant:
    """How a canary's rates reach a trace, as :func:`planner.engine.costfit.fit_canary`
    chose (:attr:`CanaryRates.page_classes`, :attr:`CanaryRates.missed_spread`,
    :attr:`CanaryRates.unseen_write_per_s`, :attr:`CanaryRates.unseen_hold_content`,
    :attr:`CanaryRates.unseen_cyclers`): what a what-if task needs to apply the canary as
    the fit did."""

    page_classes: bool = True
    missed_spread: bool = True
    unseen_write_per_s: float | None = None
    unseen_hold_content: bool = False
    unseen_cyclers: int | None = None

    @classmethod
    def of(cls, rates: CanaryRates | None) -> CanaryVariant:
        """The variant of ``rates`` (the default where there is no canary)."""
        if rates is None:
            return cls()
        return cls(
            page_classes=rates.page_classes,
            missed_spread=rates.missed_spread,
            unseen_write_per_s=rates.unseen_write_per_s,
            unseen_hold_content=rates.unseen_hold_content,
            unseen_cyclers=rates.unseen_cyclers,
        )

    def apply(self, rates: CanaryRates) -> CanaryRates:
        """``rates`` in this variant."""
        return dataclasses.replace(
            rates,
            page_classes=self.page_classes,
            missed_spread=self.missed_spread,
            unseen_write_per_s=self.unseen_write_per_s,
            unseen_hold_content=self.unseen_hold_content,
            unseen_cyclers=self.unseen_cyclers,
        )


def spreads_missed_breaks(inp: ReplayInput, rates: CanaryRates) -> bool:
    """Whether :func:`with_canary` spreads the unseen breaks of ``rates`` pro rata over
    ``inp``'s rows: a canary of another run whose rows are not placed by page class, whose
    host broke more merges than it saw (:attr:`CanaryRates.missed_scale`), spreading on."""
    return (
        rates.missed_spread
        and rates.missed_scale > 1.0
        and not records_traced_run(inp, rates)
        and not by_page_class(inp, rates)
    )


def by_page_class(inp: ReplayInput, rates: CanaryRates) -> bool:
    """Whether :func:`with_canary` places ``inp``'s rows by page class: the canary recorded
    another run, both record where their pages' mappings start, and the classes are on
    (:attr:`CanaryRates.page_classes`)."""
    return (
        rates.page_classes
        and rates.page_offset is not None
        and bool((rates.page_offset >= 0).any())
        and isinstance(inp.meta.get("mappings"), dict)
        and not records_traced_run(inp, rates)
    )


def with_canary(inp: ReplayInput, rates: CanaryRates, *, traced: int | None = None) -> ReplayInput:
    """``inp`` whose every interval (and the steady state after it) has the canary's
    same-content write rates on its rows, and whose pages the canary saw leave for good leave.
    ``traced``: how many of its snapshots the trace has (the others the growth model
    appended, :mod:`planner.engine.growth`); all of them when None.

    Rows take the rates of their **process role** (:func:`process_roles`: the ``comm``, busy
    or idle by CPU share, from the trace's CPU times and the canary's).

    * A row of a page the canary followed (same pid and address: the canary recorded the
      traced run) takes the rate pooled over its *content group*: the rows of the snapshot
      holding the same bytes, of which the canary followed any. Pages of one content in
      forked workers are one structure written alike; the canary catches a page only while
      it is merged, so it misses many of a group's pages, not the group.
    * A row of another run (other pids and, with ASLR, addresses) takes the rate pooled over
      the canary's pages of its **class**: same role, mapping kind and page number within the
      mapping (a recording with mapping starts). Any other row takes a rate drawn from its
      role's distribution of per-page rates (every page the canary saw merged counts once),
      one draw per content: the role's *mean* rate on every page would spread the writes
      thin (each page then stays merged most of the time, where the real writes fall on a
      few pages that never stay merged). Pages ``fork()`` still shares take none: the
      canary never sees them as KSM pages.
    * **The breaks the canary did not see** (``cow_ksm`` less the canary's own events,
      :attr:`CanaryRates.unseen_breaks_per_s`) go to the pages likely to take them: rows of a
      busy role, not fork-shared, whose content other rows hold too, and which the canary
      never saw merged (the page itself in the traced run; its class in another run). Each
      takes an equal share, written often enough that a sample would rarely find it merged
      (:func:`_unseen_rate_per_s`). Such a page is merged and broken again between two of
      the canary's samples; spreading the breaks over the pages the canary did see merged
      would break the merges the kernel keeps. Only where no row can be told to take them
      (another run's canary without page classes) are they spread so, pro rata to the rates
      (:attr:`CanaryRates.missed_scale`). Where a fit found that fewer rows are needed
      (:attr:`CanaryRates.unseen_cyclers`, the traced run's own canary), only that many take
      them, and the others leave at the last traced snapshot (below): the canary never saw
      them merged, at any full scan. A row the growth model appended takes the standing of
      the row it was drawn from (it leaves, takes a share, or neither): no canary followed
      the model's new pages.
    * A row of a page the canary saw leave KSM for good -- unmapped, or its merge broken
      with the content changed, and never merged again before the recording ended -- leaves
      at that time (the canary's clock starts with ksmd, as the replay's; never before the
      last snapshot, which shows it present): it takes a content no other row has and is
      never written again. (A churning workload rewrites a region at a time the trace cannot
      know: in a churn run of 2026-12-04, 6,358 pages lost their merges to new contents 50 s
      into the minute and were never merged again; the model kept them merged, +15.8 %.)
    """
    pids = np.array([m.pid for m in inp.mms], np.uint64)
    comm_of = {m.pid: m.comm or "" for m in inp.mms}
    cpus: dict[int, float | None] = {}
    for m in inp.mms:  # a pid whose command line changed is one process: its largest share
        if m.cpu_share is not None:
            cpus[m.pid] = max(m.cpu_share, cpus.get(m.pid) or 0.0)
    trace_roles = process_roles(comm_of, cpus)
    same_run = records_traced_run(inp, rates)
    if same_run and not rates.roles_recorded and cpus:
        rates = rates.with_roles(trace_roles)  # the traced run: the trace knows the roles
    roles = sorted(set(trace_roles.values()))
    code_of = {c: i for i, c in enumerate(roles)}
    mm_code = np.array([code_of[trace_roles[m.pid]] for m in inp.mms], np.int64)
    out: list[IntervalWrites | None] = []
    t0 = inp.times_ns[0] if inp.n_snapshots else 0
    # per traced snapshot: its rows' rates, the unseen breaks' candidates and when rows
    # leave (one pass over the snapshots, each rebuilt once from its delta and none kept
    # with the input: by index, the last stayed cached through every replay of it); an
    # appended snapshot's are calibrated at once and kept where they differ from the last
    # traced snapshot's (8 B per row and step otherwise: 3 GB for 24 steps at 16 M pages)
    n_traced = inp.n_snapshots if traced is None else max(1, min(traced, inp.n_snapshots))
    per_snap: list[tuple[F64, B, I64 | None, B | None]] = []
    # (where a fit chose how many rows take the unseen breaks, none spreads them pro rata)
    spread = rates.missed_spread and rates.unseen_cyclers is None
    missed = rates.missed_scale if spread else 1.0
    unseen = _Unseen(0.0, 0, missed)
    grown: I64 | None = np.empty(0, np.int64)  # rows the last traced snapshot lacks
    changing = 0  # candidates whose content the sampler saw change (last traced snapshot)
    n_joins = 0  # rows of the last traced snapshot that join a content others hold
    standing = _Standing(rates.unseen_cyclers, inp.times_ns[n_traced - 1])
    alt_keys = np.empty(0, np.uint64)  # the last traced snapshot's alternating rows (keys)
    for k, snap in enumerate(inp.snapshots):
        key = (pids[snap.mm] << np.uint64(36)) | snap.page
        fork_shared = _held_twice(snap.frame)
        code = mm_code[snap.mm] if snap.n else np.zeros(0, np.int64)
        classes = None if same_run else _row_classes(inp, k, snap, pids[snap.mm].astype(np.int64))
        rr = _RowRoles(code, roles, *((None, None, ()) if classes is None else classes))
        rate, hit, unseen_rows = _row_rates(snap.hash, key, rr, fork_shared, rates, same_run)
        cand = _unseen_candidates(snap.hash, rr, fork_shared, unseen_rows)
        old = inp.writes[k] if k < len(inp.writes) else None
        cont = k + 1 == inp.n_snapshots or (old is not None and old.origin_ns is not None)
        leave = leave_cow = None  # after the trace: the rows the canary saw leave for good
        if cont and rates.left_s is not None and hit.any():
            pos = np.minimum(np.searchsorted(rates.key, key), rates.key.size - 1)
            left = rates.left_s[pos]
            gone = (rates.key[pos] == key) & ~np.isnan(left)
            if gone.any():
                leave = np.full(key.size, -1, np.int64)
                leave[gone] = t0 + np.rint(left[gone] * 1e9).astype(np.int64)
                if rates.left_cow is not None and (gone & rates.left_cow[pos]).any():
                    leave_cow = gone & rates.left_cow[pos]
        if cont:  # a page alternating between two contents it holds does not leave
            alt_keys = _alternating_keys(old, key) if k + 1 == n_traced else alt_keys
            leave, leave_cow = _alternating_stay(alt_keys, key, leave, leave_cow)
        if cont and same_run and k + 1 >= n_traced:
            cand, leave = standing.apply(k + 1 == n_traced, key, cand, leave, old)
        if k < n_traced:
            per_snap.append((rate, cand, leave, leave_cow))
            if k + 1 == n_traced:  # the unseen breaks: an equal share per candidate of it
                n_cand = int(np.count_nonzero(cand))
                per_s = (
                    _unseen_rate_per_s(rates, n_cand)
                    if rates.unseen_write_per_s is None
                    else rates.unseen_write_per_s
                )
                unseen = _Unseen(per_s, n_cand, missed, rates.unseen_hold_content)
                changing = _changing(old, cand)
                out.extend(_calibrated(inp, j, *per_snap[j], unseen) for j in range(n_traced))
                per_snap.clear()
                traced_iw = out[-1]
                if cont and traced_iw is not None:
                    joins = _canary_joins(inp, snap, key, rates, traced_iw, inp.times_ns[k])
                    episodes = _canary_episodes(inp, key, rates, snap.hash)
                    out[-1] = dataclasses.replace(traced_iw, joins=joins, episodes=episodes)
                    n_joins = 0 if joins is None else int(joins.rows.size)
            continue
        last = out[n_traced - 1]
        base = last.same_rate_per_s if last is not None else None
        grown = None if grown is None else _appended_rows(grown, inp.deltas[k])
        if grown is not None and (base is None or base.size + grown.size != snap.n):
            grown = None  # pragma: no cover - an appended snapshot keeps every row
        iw = _calibrated(inp, k, rate, cand, leave, leave_cow, unseen, last, grown)
        floor = np.full(snap.n, inp.times_ns[n_traced - 1], np.int64)
        floor[inp.deltas[k].added] = inp.times_ns[k]  # rows the snapshot brings: not before it
        joins = _canary_joins(inp, snap, key, rates, iw, floor)
        out.append(
            dataclasses.replace(
                iw, joins=joins, episodes=_canary_episodes(inp, key, rates, snap.hash)
            )
        )
    # what the rows taking the unseen breaks are (fit_canary weighs their rate)
    note = {
        "candidates": unseen.n_cand,
        "write_per_s": unseen.per_s,
        "changing": changing,
        "hold_content": unseen.hold_content,
        "leave": standing.n_leave,
    }
    return dataclasses.replace(
        inp, writes=out, meta={**inp.meta, UNSEEN_META: note, JOINS_META: n_joins}
    )


def write_model(inp: ReplayInput, *, enabled: bool = True, seed: int = 0) -> TraceWrites | None:
    """The write model of ``inp``, or None (writes off, or a trace without counts)."""
    if not enabled or not any(w is not None for w in inp.writes):
        return None
    return TraceWrites(inp, seed)


__all__ = [
    "HELD_BASE",
    "JOINS_META",
    "REJOIN_LEAD_SCANS",
    "RESTORE",
    "SAME",
    "UNSEEN_META",
    "CanaryOwn",
    "CanaryRates",
    "CanarySizes",
    "CanaryVariant",
    "Episodes",
    "IntervalWrites",
    "Joins",
    "TraceWrites",
    "Writes",
    "by_page_class",
    "canary_rates",
    "canary_sizes",
    "carry_toggles",
    "changed_between",
    "classify_toggles",
    "continue_trend",
    "effective_changes",
    "fill_unchecked",
    "held_code",
    "held_content",
    "process_roles",
    "records_traced_run",
    "role_comm",
    "spreads_missed_breaks",
    "with_canary",
    "write_model",
]
