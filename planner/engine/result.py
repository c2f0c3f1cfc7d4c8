"""What a replay produces: kernel-equivalent counters over time, the truth behind them, cost.

The counters have the kernel's exact definitions (docs/kernel-semantics.md §9):
``general_profit = (pages_sharing + ksm_zero_pages) * page_size - rmap_items * 64`` and per
process ``ksm_process_profit = (ksm_merging_pages + ksm_zero_pages) * page_size -
ksm_rmap_items * 64``. The *truth* counts physical frames: frames used without KSM (distinct
trace frames, so fork-shared frames count once) and with KSM (distinct physical pages in the
replayed world), and the bytes saved net of KSM metadata (64 B per rmap_item and per stable
node, chain heads included).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from planner.engine.cost import PATHS

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    import numpy.typing as npt

    from planner.engine.prepare import ReplayInput

NS_PER_S = 1_000_000_000
RMAP_ITEM_BYTES = 64
STABLE_NODE_BYTES = 64

GLOBAL_COUNTERS = (
    "pages_shared",
    "pages_sharing",
    "pages_unshared",
    "pages_volatile",
    "pages_scanned",
    "pages_skipped",
    "full_scans",
    "stable_node_chains",
    "stable_node_dups",
    "ksm_zero_pages",
    "general_profit",
)
PROCESS_COUNTERS = ("ksm_rmap_items", "ksm_merging_pages", "ksm_zero_pages", "ksm_process_profit")


def global_counters(
    *,
    shared: int,
    sharing: int,
    unshared: int,
    rmap_items: int,
    scanned: int,
    skipped: int,
    full_scans: int,
    chains: int,
    dups: int,
    zero_pages: int,
    page_size: int,
) -> dict[str, int]:
    """The ``/sys/kernel/mm/ksm`` counters from the engine's raw state."""
    return {
        "pages_shared": shared,
        "pages_sharing": sharing,
        "pages_unshared": unshared,
        "pages_volatile": max(0, rmap_items - shared - sharing - unshared),
        "pages_scanned": scanned,
        "pages_skipped": skipped,
        "full_scans": full_scans,
        "stable_node_chains": chains,
        "stable_node_dups": dups,
        "ksm_zero_pages": zero_pages,
        "general_profit": (sharing + zero_pages) * page_size - rmap_items * RMAP_ITEM_BYTES,
        "rmap_items": rmap_items,
    }


def process_counters(*, rmap_items: int, merging: int, zero: int, page_size: int) -> dict[str, int]:
    """``/proc/<pid>/ksm_stat`` fields of one process."""
    return {
        "ksm_rmap_items": rmap_items,
        "ksm_merging_pages": merging,
        "ksm_zero_pages": zero,
        "ksm_process_profit": (merging + zero) * page_size - rmap_items * RMAP_ITEM_BYTES,
    }


#: Columns of a *state row*: the counters and the truth after one batch, as both engines
#: report them to the driver (``planner.engine.driver``), which turns rows into grid points
#: and scan records.
(
    R_SHARED,
    R_SHARING,
    R_UNSHARED,
    R_RMAP,
    R_SCANNED,
    R_SKIPPED,
    R_FULL_SCANS,
    R_CHAINS,
    R_DUPS,
    R_ZERO,
    R_FRAMES_WITHOUT,
    R_FRAMES_WITH,
    R_KSM_PAGES,
    R_STABLE_NODES,
) = range(14)
N_ROW = 14


def counters_from_row(row: Sequence[int] | npt.NDArray[np.int64], page_size: int) -> dict[str, int]:
    """The global counters of a state row."""
    return global_counters(
        shared=int(row[R_SHARED]),
        sharing=int(row[R_SHARING]),
        unshared=int(row[R_UNSHARED]),
        rmap_items=int(row[R_RMAP]),
        scanned=int(row[R_SCANNED]),
        skipped=int(row[R_SKIPPED]),
        full_scans=int(row[R_FULL_SCANS]),
        chains=int(row[R_CHAINS]),
        dups=int(row[R_DUPS]),
        zero_pages=int(row[R_ZERO]),
        page_size=page_size,
    )


def truth_from_row(row: Sequence[int] | npt.NDArray[np.int64], page_size: int) -> Truth:
    """The truth of a state row."""
    return Truth(
        frames_without_ksm=int(row[R_FRAMES_WITHOUT]),
        frames_with_ksm=int(row[R_FRAMES_WITH]),
        ksm_pages=int(row[R_KSM_PAGES]),
        zero_mapped_pages=int(row[R_ZERO]),
        rmap_items=int(row[R_RMAP]),
        stable_nodes=int(row[R_STABLE_NODES]),
        page_size=page_size,
    )


@dataclass(frozen=True)
class Truth:
    """Physical memory in the replayed world at one instant."""

    frames_without_ksm: int
    frames_with_ksm: int
    ksm_pages: int  # KSM pages (stable nodes' pages) currently mapped
    zero_mapped_pages: int  # PTEs mapped to the kernel zero page by KSM
    rmap_items: int
    stable_nodes: int  # plain nodes + dups + chain heads
    page_size: int

    @property
    def saved_frames(self) -> int:
        """Frames KSM freed (fork-shared frames never count)."""
        return self.frames_without_ksm - self.frames_with_ksm

    @property
    def metadata_bytes(self) -> int:
        """KSM's own memory: rmap_items and stable nodes."""
        return (self.rmap_items * RMAP_ITEM_BYTES) + (self.stable_nodes * STABLE_NODE_BYTES)

    @property
    def saved_bytes(self) -> int:
        """Bytes freed, before metadata."""
        return self.saved_frames * self.page_size

    @property
    def net_saved_bytes(self) -> int:
        """Bytes freed net of KSM metadata."""
        return self.saved_bytes - self.metadata_bytes

    def to_dict(self) -> dict[str, int]:
        """JSON-ready dict including the derived fields."""
        d = {f: getattr(self, f) for f in _TRUTH_FIELDS}  # (asdict copies deeply: slow)
        d.update(
            saved_frames=self.saved_frames,
            metadata_bytes=self.metadata_bytes,
            saved_bytes=self.saved_bytes,
            net_saved_bytes=self.net_saved_bytes,
        )
        return d


#: The stored fields of :class:`Truth`, in order (its ``to_dict`` runs once per record).
_TRUTH_FIELDS = tuple(f.name for f in fields(Truth))


@dataclass
class ScanRecord:
    """State right after one full scan completed."""

    full_scans: int
    t_s: float
    scan_time_s: float  # wall time of this full scan, sleeps included
    cpu_s: float  # ksmd CPU spent in this full scan
    pages_to_scan: int  # the value used during this scan (the advisor may change it after)
    batches: int
    counters: dict[str, int]
    processes: dict[str, dict[str, int]]
    truth: Truth

    def to_dict(self) -> dict[str, Any]:
        """JSON: ``{"full_scans", "t_s", <every global counter>, "processes": {...}, ...}``."""
        return {
            "full_scans": self.full_scans,
            "t_s": self.t_s,
            **{k: v for k, v in self.counters.items() if k != "full_scans"},
            "scan_time_s": self.scan_time_s,
            "cpu_s": self.cpu_s,
            "pages_to_scan": self.pages_to_scan,
            "batches": self.batches,
            "processes": self.processes,
            "truth": self.truth.to_dict(),
        }


@dataclass
class GridRecord:
    """State at one time on the regular grid."""

    t_s: float
    counters: dict[str, int]
    truth: Truth
    cow_breaks: int = 0
    """Merges broken by writes since the start (the write model; 0 without writes)."""


@dataclass
class CostSummary:
    """ksmd CPU and time, from the cost model."""

    cpu_s: float
    duration_s: float
    batches: int
    full_scans: int
    path_visits: dict[str, int]
    path_cpu_s: dict[str, float]
    mean_scan_time_s: float | None
    last_scan_time_s: float | None
    time_to_saving_s: dict[str, float | None]  # "50", "90", "99" -> seconds from the start

    @property
    def cpu_percent(self) -> float:
        """ksmd CPU as a percentage of one core over the replay."""
        return 100.0 * self.cpu_s / self.duration_s if self.duration_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        d["cpu_percent"] = self.cpu_percent
        return d


@dataclass
class ReplayResult:
    """Everything a replay computed, with its provenance."""

    engine: str
    knobs: dict[str, Any]
    provenance: dict[str, Any]
    page_size: int
    duration_s: float
    scans: list[ScanRecord]
    grid: list[GridRecord]
    final_counters: dict[str, int]
    final_processes: dict[str, dict[str, int]]
    final_truth: Truth
    cost: CostSummary
    snapshot_first_scan: list[int | None]
    snapshot_applied_s: list[float | None] = field(default_factory=list)
    #: At the end: which mms have items on which KSM page, one ``(node, mm, items)`` row per
    #: pair (see :attr:`final_node_members`), kept as an array: a large host has millions.
    node_member_table: npt.NDArray[np.int64] = field(
        default_factory=lambda: np.zeros((0, 3), np.int64)
    )
    cow_breaks: int = 0
    """Merges broken by writes over the replay (writes to KSM pages: what the kernel counts
    as ``cow_ksm``; a write to a KSM-placed zero page copies too, uncounted); 0 without a
    write model."""
    cow_breaks_per_s: float | None = None
    """Merges broken per second in the steady state: after the last snapshot, where the
    measured writes go on (else over the whole replay); None without a write model."""

    @property
    def final_node_members(self) -> list[tuple[int, int, int]]:
        """At the end: which mms have items on which KSM page, as ``(node, mm, items)``
        triples (node ids are engine-internal; use them only to group). mm ids are those of
        :class:`planner.engine.prepare.ReplayInput` (``inp.mms[mm].pid``, its domain)."""
        return [(int(a), int(b), int(c)) for a, b, c in self.node_member_table.tolist()]

    def to_json(self) -> dict[str, Any]:
        """The ``replay --json`` document."""
        return {
            "engine": self.engine,
            "knobs": self.knobs,
            "provenance": self.provenance,
            "duration_s": self.duration_s,
            "scans": [s.to_dict() for s in self.scans],
            "grid": [
                {"t_s": g.t_s, **g.counters, "cow_breaks": g.cow_breaks, "truth": g.truth.to_dict()}
                for g in self.grid
            ],
            "final": {
                **self.final_counters,
                "processes": self.final_processes,
            },
            "truth": self.final_truth.to_dict(),
            "cost": self.cost.to_dict(),
            "snapshot_first_scan": self.snapshot_first_scan,
            "snapshot_applied_s": self.snapshot_applied_s,
            "cow_breaks": self.cow_breaks,
            "cow_breaks_per_s": self.cow_breaks_per_s,
        }

    def timelines(self) -> dict[str, Any]:
        """The timelines as pandas DataFrames: ``scans``, ``grid``, ``processes`` (per scan)."""
        import pandas as pd

        scans = pd.DataFrame(
            [
                {
                    "full_scans": s.full_scans,
                    "t_s": s.t_s,
                    "scan_time_s": s.scan_time_s,
                    "cpu_s": s.cpu_s,
                    "pages_to_scan": s.pages_to_scan,
                    "batches": s.batches,
                    **{k: v for k, v in s.counters.items() if k != "full_scans"},
                    **s.truth.to_dict(),
                }
                for s in self.scans
            ]
        )
        grid = pd.DataFrame(
            [
                {"t_s": g.t_s, **g.counters, "cow_breaks": g.cow_breaks, **g.truth.to_dict()}
                for g in self.grid
            ]
        )
        procs = pd.DataFrame(
            [
                {"full_scans": s.full_scans, "t_s": s.t_s, "pid": pid, **stats}
                for s in self.scans
                for pid, stats in s.processes.items()
            ]
        )
        return {"scans": scans, "grid": grid, "processes": procs}

    def write_parquet(self, out: str | Path, *, overwrite: bool = False) -> None:
        """Write the timelines as Parquet files (atomically) plus ``result.json``."""
        import json

        from planner._fs import atomic_dir

        with atomic_dir(out, overwrite=overwrite, private=False) as tmp:
            for name, df in self.timelines().items():
                df.to_parquet(tmp / f"{name}.parquet", index=False)
            (tmp / "result.json").write_text(
                json.dumps(_json_safe(self.to_json()), indent=1) + "\n"
            )


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def assemble_result(
    *,
    engine: str,
    knobs: dict[str, Any],
    inp: ReplayInput,
    page_size: int,
    end_ns: int,
    scans: list[ScanRecord],
    grid: list[GridRecord],
    batches: int,
    cpu_ns: int,
    full_scans: int,
    path_visits: dict[str, int],
    path_cpu_ns: dict[str, int],
    final_counters: dict[str, int],
    final_processes: dict[str, dict[str, int]],
    final_truth: Truth,
    snapshot_first_scan: list[int | None],
    snapshot_applied_ns: list[int | None],
    final_node_members: list[tuple[int, int, int]] | npt.NDArray[np.int64],
    cow_breaks: int = 0,
    cow_since_last_snapshot: tuple[int, float] | None = None,
    writes_modelled: bool = False,
) -> ReplayResult:
    """The :class:`ReplayResult` of a finished replay (both engines end here).

    ``cpu_ns`` is ksmd's CPU over the replay, ``end_ns`` when it ended; the time to 50/90/99 %
    of the final saving is read from the scan records and the time grid together.
    """
    from planner.provenance import tool_version

    duration_s = end_ns / NS_PER_S
    points = sorted(
        [(g.t_s, float(g.truth.saved_frames)) for g in grid]
        + [(r.t_s, float(r.truth.saved_frames)) for r in scans]
    )
    scan_times = [s.scan_time_s for s in scans]
    cost = CostSummary(
        cpu_s=cpu_ns / NS_PER_S,
        duration_s=duration_s,
        batches=batches,
        full_scans=full_scans,
        path_visits={p: int(path_visits[p]) for p in PATHS},
        path_cpu_s={p: int(path_cpu_ns[p]) / NS_PER_S for p in PATHS},
        mean_scan_time_s=sum(scan_times) / len(scan_times) if scan_times else None,
        last_scan_time_s=scan_times[-1] if scan_times else None,
        time_to_saving_s=time_to_fraction(points, float(final_truth.saved_frames)),
    )
    return ReplayResult(
        engine=engine,
        knobs=knobs,
        provenance={
            "tool_version": tool_version(),
            "trace_hash": inp.trace_hash,
            "host": inp.host,
            "kernel_release": inp.meta.get("kernel_release"),
            "trace_tool_version": inp.meta.get("tool_version"),
        },
        page_size=page_size,
        duration_s=duration_s,
        scans=scans,
        grid=grid,
        final_counters=final_counters,
        final_processes=final_processes,
        final_truth=final_truth,
        cost=cost,
        snapshot_first_scan=snapshot_first_scan,
        snapshot_applied_s=[None if v is None else v / NS_PER_S for v in snapshot_applied_ns],
        node_member_table=np.asarray(final_node_members, np.int64).reshape(-1, 3),
        cow_breaks=cow_breaks,
        cow_breaks_per_s=_cow_rate(cow_breaks, duration_s, cow_since_last_snapshot)
        if writes_modelled
        else None,
    )


def _cow_rate(total: int, duration_s: float, steady: tuple[int, float] | None) -> float | None:
    """Breaks per second after the last snapshot, else over the whole replay."""
    if steady is not None and steady[1] > 0:
        return steady[0] / steady[1]
    return total / duration_s if duration_s > 0 else None


def time_to_fraction(
    points: list[tuple[float, float]], final: float, fractions: tuple[int, ...] = (50, 90, 99)
) -> dict[str, float | None]:
    """First time at which ``value >= fraction% of final`` in a chronological series."""
    out: dict[str, float | None] = {}
    for f in fractions:
        target = final * f / 100.0
        hit = next((t for t, v in points if final > 0 and v >= target), None)
        out[str(f)] = hit
    return out


__all__ = [
    "GLOBAL_COUNTERS",
    "PATHS",
    "PROCESS_COUNTERS",
    "CostSummary",
    "GridRecord",
    "ReplayResult",
    "ScanRecord",
    "Truth",
    "assemble_result",
]
