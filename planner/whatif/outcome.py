"""What one replay measured, typed: the units a what-if worker sends back.

A worker (:mod:`planner.whatif.tasks`) replays one host under one policy set (or one of its
security domains alone) and reduces the engine's :class:`~planner.engine.ReplayResult` to a
:class:`ReplayOutcome`: small enough to ship across processes, complete enough that nothing
downstream (the scenario aggregates, the review) has to look at the replay again.

**Steady state** has one definition in ksm-planner, :class:`SteadyState`: the full scans
that *started* after the last snapshot took effect (the replay then holds the last snapshot
still for ``settle_scans`` full scans, so the saving has settled), over the wall time from
the end of the scan before them to the end of the last one. That wall time includes the
sleep between two full scans as well as the sleeps between batches, because ksmd sleeps
there too: ksmd's CPU at steady state is its CPU time over that wall time (what ``top``
would show for ksmd on the host), and a full scan at steady state takes that wall time
divided by the number of scans (the time between two passes over the same page). Memory
figures "at steady state" are those at the end of the replay.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

from planner.jsonable import detail, skip

if TYPE_CHECKING:
    from collections.abc import Mapping

    from planner.engine.result import CostSummary, ReplayResult, Truth


@dataclass(frozen=True)
class KsmCounters:
    """``/sys/kernel/mm/ksm`` at one instant (kernel names), plus the rmap_items behind them.

    Counters of several replays (one ksmd per security domain "as if on separate hosts") add
    up with ``+``.
    """

    pages_shared: int = 0
    pages_sharing: int = 0
    pages_unshared: int = 0
    pages_volatile: int = 0
    pages_scanned: int = 0
    pages_skipped: int = 0
    full_scans: int = 0
    stable_node_chains: int = 0
    stable_node_dups: int = 0
    ksm_zero_pages: int = 0
    general_profit: int = 0
    rmap_items: int = 0

    @classmethod
    def of(cls, counters: Mapping[str, int], *, rmap_items: int | None = None) -> KsmCounters:
        """The counters of an engine mapping (unknown names ignored)."""
        names = {f.name for f in fields(cls)}
        values = {k: int(v) for k, v in counters.items() if k in names}
        if rmap_items is not None:
            values["rmap_items"] = int(rmap_items)
        return cls(**values)

    def __add__(self, other: KsmCounters) -> KsmCounters:
        return KsmCounters(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )


@dataclass(frozen=True)
class SteadyState:
    """ksmd at steady state in one replay (the definition is in the module docstring)."""

    __json_properties__: ClassVar[tuple[str, ...]] = (
        "cpu_percent",
        "full_scan_s",
        "pages_scanned_per_full_scan",
        "pages_skipped_per_full_scan",
    )

    full_scans: int  # full scans in the window (>= 1)
    wall_s: float  # from the end of the scan before the window to the end of the last scan
    cpu_s: float  # ksmd CPU spent in the window
    pages_scanned: int  # increase of pages_scanned over the window
    pages_skipped: int  # increase of pages_skipped (smart scan) over the window

    @property
    def cpu_percent(self) -> float:
        """ksmd CPU as % of one core: CPU time over wall time, every sleep included."""
        return 100.0 * self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def full_scan_s(self) -> float:
        """Wall time of one full scan, the sleep before the next one included."""
        return self.wall_s / self.full_scans

    @property
    def pages_scanned_per_full_scan(self) -> float:
        """Pages ksmd compares per full scan (``pages_scanned`` per scan)."""
        return self.pages_scanned / self.full_scans

    @property
    def pages_skipped_per_full_scan(self) -> float:
        """Pages smart scan skips per full scan (``pages_skipped`` per scan)."""
        return self.pages_skipped / self.full_scans

    @classmethod
    def of_replay(cls, res: ReplayResult) -> SteadyState | None:
        """The steady state of a replay (``None`` when no full scan completed)."""
        scans = res.scans
        if not scans:
            return None
        applied = [t for t in res.snapshot_applied_s if t is not None]
        last = applied[-1] if applied else 0.0
        first = next(
            (i for i, s in enumerate(scans) if s.t_s - s.scan_time_s >= last - 1e-9),
            len(scans) - 1,
        )
        window = scans[first:]
        # the sleep between two scans belongs to neither scan's scan_time_s: measure the wall
        # time from the end of the scan before the window (or the window's first start)
        start = scans[first - 1].t_s if first > 0 else scans[first].t_s - scans[first].scan_time_s
        before = scans[first - 1].counters if first > 0 else {}
        after = scans[-1].counters
        return cls(
            full_scans=len(window),
            wall_s=scans[-1].t_s - start,
            cpu_s=sum(s.cpu_s for s in window),
            pages_scanned=int(after.get("pages_scanned", 0) - before.get("pages_scanned", 0)),
            pages_skipped=int(after.get("pages_skipped", 0) - before.get("pages_skipped", 0)),
        )


@dataclass(frozen=True)
class ProcessOutcome:
    """One process present at the last snapshot, at the end of a replay.

    Its registration (how the policy set enabled KSM for it) and its ``/proc/PID/ksm_stat``
    counters (kernel names).
    """

    __json_properties__: ClassVar[tuple[str, ...]] = ("registered",)

    pid: int
    ppid: int | None
    comm: str | None
    cgroup: str | None
    labels: Mapping[str, str]
    mode: str  # "prctl", "madvise" or "off"
    domain: str | None
    rule: str | None
    ksm_rmap_items: int = 0
    ksm_merging_pages: int = 0
    ksm_zero_pages: int = 0
    ksm_process_profit: int = 0

    @property
    def registered(self) -> bool:
        """Whether KSM is enabled for the process."""
        return self.mode != "off"

    @property
    def items_per_merging_page(self) -> float:
        """``ksm_rmap_items / ksm_merging_pages`` (inf when nothing merged but items exist)."""
        if self.ksm_merging_pages:
            return self.ksm_rmap_items / self.ksm_merging_pages
        return float("inf") if self.ksm_rmap_items else float("nan")


@dataclass(frozen=True)
class DomainPair:
    """Security domains whose pages share KSM pages at the end of a replay."""

    domains: tuple[str, ...]
    ksm_pages: int  # KSM pages mapped from several of these domains
    mappings: int  # rmap items on those KSM pages


@dataclass(frozen=True)
class GridSeries:
    """A replay on its regular time grid (``t_s`` from the first snapshot)."""

    t_s: tuple[float, ...] = ()
    saved_frames: tuple[int, ...] = ()
    net_saved_bytes: tuple[int, ...] = ()
    frames_without_ksm: tuple[int, ...] = ()
    pages_sharing: tuple[int, ...] = ()
    pages_shared: tuple[int, ...] = ()
    general_profit: tuple[int, ...] = ()
    #: Merges broken by the replay's writes since its start (cumulative, as ``cow_ksm``)
    cow_breaks: tuple[int, ...] = ()


@dataclass(frozen=True)
class ScanSeries:
    """A replay at the end of every full scan.

    ``full_scans``, ``scan_time_s`` (the scan's own wall time: from its first batch to the
    end of its last, without the sleep before the next scan), ``cpu_s`` and ``pages_to_scan``
    are the scan's own; the other columns are levels at its end (cumulative counters for
    ``pages_scanned``/``pages_skipped``).
    """

    full_scans: tuple[int, ...] = ()
    t_s: tuple[float, ...] = ()
    scan_time_s: tuple[float, ...] = ()
    cpu_s: tuple[float, ...] = ()
    pages_to_scan: tuple[int, ...] = ()
    pages_scanned: tuple[int, ...] = ()
    pages_skipped: tuple[int, ...] = ()
    pages_sharing: tuple[int, ...] = ()
    saved_frames: tuple[int, ...] = ()
    net_saved_bytes: tuple[int, ...] = ()


@dataclass(frozen=True)
class ProcessSeries:
    """Per full scan and process: the ``ksm_stat`` counters (long format)."""

    full_scans: tuple[int, ...] = ()
    t_s: tuple[float, ...] = ()
    pid: tuple[int, ...] = ()
    ksm_rmap_items: tuple[int, ...] = ()
    ksm_merging_pages: tuple[int, ...] = ()
    ksm_process_profit: tuple[int, ...] = ()


@dataclass(frozen=True)
class Timeline:
    """The saving over time: the regular grid and the end of every full scan."""

    grid: GridSeries = field(default_factory=GridSeries)
    scans: ScanSeries = field(default_factory=ScanSeries)

    @classmethod
    def of_replay(cls, res: ReplayResult) -> Timeline:
        """The timeline of one engine replay."""
        g, s = res.grid, res.scans
        return cls(
            grid=GridSeries(
                t_s=tuple(x.t_s for x in g),
                saved_frames=tuple(x.truth.saved_frames for x in g),
                net_saved_bytes=tuple(x.truth.net_saved_bytes for x in g),
                frames_without_ksm=tuple(x.truth.frames_without_ksm for x in g),
                pages_sharing=tuple(int(x.counters.get("pages_sharing", 0)) for x in g),
                pages_shared=tuple(int(x.counters.get("pages_shared", 0)) for x in g),
                general_profit=tuple(int(x.counters.get("general_profit", 0)) for x in g),
                cow_breaks=tuple(x.cow_breaks for x in g),
            ),
            scans=ScanSeries(
                full_scans=tuple(x.full_scans for x in s),
                t_s=tuple(x.t_s for x in s),
                scan_time_s=tuple(x.scan_time_s for x in s),
                cpu_s=tuple(x.cpu_s for x in s),
                pages_to_scan=tuple(x.pages_to_scan for x in s),
                pages_scanned=tuple(int(x.counters.get("pages_scanned", 0)) for x in s),
                pages_skipped=tuple(int(x.counters.get("pages_skipped", 0)) for x in s),
                pages_sharing=tuple(int(x.counters.get("pages_sharing", 0)) for x in s),
                saved_frames=tuple(x.truth.saved_frames for x in s),
                net_saved_bytes=tuple(x.truth.net_saved_bytes for x in s),
            ),
        )

    def saving_points(self) -> list[tuple[float, float]]:
        """``(t_s, saved frames)`` of the grid and the scan ends together, in time order."""
        pts = [
            *zip(self.grid.t_s, self.grid.saved_frames, strict=True),
            *zip(self.scans.t_s, self.scans.saved_frames, strict=True),
        ]
        return sorted((float(t), float(v)) for t, v in pts)


def process_series(res: ReplayResult) -> ProcessSeries:
    """The per-process ``ksm_stat`` counters of a replay at every full scan."""
    rows = [(s, int(pid), st) for s in res.scans for pid, st in s.processes.items()]
    return ProcessSeries(
        full_scans=tuple(s.full_scans for s, _, _ in rows),
        t_s=tuple(s.t_s for s, _, _ in rows),
        pid=tuple(pid for _, pid, _ in rows),
        ksm_rmap_items=tuple(int(st.get("ksm_rmap_items", 0)) for _, _, st in rows),
        ksm_merging_pages=tuple(int(st.get("ksm_merging_pages", 0)) for _, _, st in rows),
        ksm_process_profit=tuple(int(st.get("ksm_process_profit", 0)) for _, _, st in rows),
    )


@dataclass(frozen=True)
class ReplayOutcome:
    """What one replay measured, reduced to what the what-if needs.

    Memory at steady state is ``final_truth`` (the end of the replay); ksmd at steady state is
    ``steady``. The kinds of saving are kept apart by name: ``final_truth.saved_frames`` is
    what the replay freed; ``policy_ideal_saved_frames`` what an ideal KSM would free under
    the same policy (:func:`planner.whatif.extrapolate.policy_ideal_saved_frames`), its
    denominator for the realization ratio.
    """

    spec_key: tuple[Any, ...] = field(metadata=skip())
    host: str
    only_domain: str | None  # the one domain replayed alone (None: every domain together)
    page_size: int
    duration_s: float
    final_truth: Truth
    final_counters: KsmCounters
    cost: CostSummary  # ksmd over the whole replay
    steady: SteadyState | None  # None: no full scan completed (nothing registered)
    policy_ideal_saved_frames: int
    #: Frames of zero-content pages among ``final_truth.saved_frames`` (an estimate: the
    #: eligible zero frames of the last snapshot, less the one KSM page they merge into
    #: without ``use_zero_pages``, at most the frames saved)
    zero_saved_frames: int
    eligible_pages: int  # VM_MERGEABLE pages mapped at the last snapshot
    registered_processes: int
    #: The policy ideal at every snapshot (frames; the last is ``policy_ideal_saved_frames``)
    #: and the snapshots' times from the first one: how the saving moved over the trace
    policy_ideal_by_snapshot: tuple[int, ...]
    snapshot_times_s: tuple[float, ...]
    last_snapshot_s: float | None
    domain_pairs: tuple[DomainPair, ...]
    cross_domain_ksm_pages: int
    processes: tuple[ProcessOutcome, ...]
    timeline: Timeline = field(metadata=detail("timelines"))
    process_timeline: ProcessSeries = field(metadata=detail("timelines"))
    elapsed_s: float = 0.0
    #: Merges broken by the replayed writes per second after the last snapshot (the model's
    #: ``cow_ksm``; None: no writes replayed or nothing after the last snapshot)
    cow_breaks_per_s: float | None = None
    #: What growth after the trace the replay assumed: the one line of its provenance's
    #: ``growth`` (:class:`planner.engine.growth.GrowthNote`); None: not recorded
    growth_summary: str | None = None
    #: The joins the trace shows, which the replay continues only as a canary saw them (its
    #: provenance's
    #: ``joins``, :class:`planner.engine.joins.JoinNote`): pages a second that take a
    #: content other pages hold, and the rows holding a content another row holds at the
    #: last snapshot; None: not measured
    joins_per_s: float | None = None
    joins_held_rows: int | None = None
    #: A minute of those joins as a share of those rows (``turnover_per_min``); None
    #: without such rows
    joins_turnover_per_min: float | None = None
    #: Their warning (``provenance["joins"]["warning"]``); None: none
    joins_warning: str | None = None
    #: Rows of the last traced snapshot that the replay had join a content other rows hold,
    #: as a canary saw the kernel merge them (``provenance["joins"]["canary_rows"]``); 0:
    #: none (no canary, or it saw none); None: not measured
    joins_canary_rows: int | None = None
    #: Of the rows written in the last sampled interval (the one the steady state continues),
    #: those the sampler saw change or written at every look, whose rates are floors (one
    #: write per sampling period: the provenance's ``writes.rows_floored_per_interval``);
    #: None: no writes replayed
    writes_floored_rows: int | None = None
    writes_written_rows: int | None = None
    #: Whether the last sampled interval's write phases followed each process's sampling
    #: passes (the provenance's ``writes.phases_timed_by_passes``); None: no writes replayed
    writes_timed_by_passes: bool | None = None


__all__ = [
    "DomainPair",
    "GridSeries",
    "KsmCounters",
    "ProcessOutcome",
    "ProcessSeries",
    "ReplayOutcome",
    "ScanSeries",
    "SteadyState",
    "Timeline",
    "process_series",
]
