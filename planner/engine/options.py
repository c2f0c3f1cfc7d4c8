"""Options of a replay that are not ksmd knobs: duration, grid, snapshot alignment, cost."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Final, Literal

from planner.engine.cost import CostProfile
from planner.engine.timing import NS_PER_S, HostLoad
from planner.errors import KnobError

Alignment = Literal["time", "scan"]

#: Longest replay (``--duration``), s: a week. Past its last snapshot a trace is held, so a
#: longer horizon only repeats the steady state; and the replay runs batch by batch.
MAX_DURATION_S: Final = 7 * 86_400.0
#: Finest timeline grid (``--grid``), s: one jiffy at HZ=1000. ksmd cannot wake more often,
#: so a finer grid only repeats the same counters.
MIN_GRID_S: Final = 0.001
#: Most timeline points one replay keeps. A point holds the global counters and the truth
#: (about 1.1 KB measured, ~110 MB at this bound, plus the same again in ``--json`` and the
#: Parquet timelines). With ``duration_s`` the automatic grid is coarsened to stay below it;
#: an explicit grid that would exceed it is refused, up front when the duration is known,
#: else as soon as the replay passes it.
MAX_GRID_POINTS: Final = 100_000


def grid_overflow(points: int) -> KnobError:
    """The error of a timeline grid with more than :data:`MAX_GRID_POINTS` points."""
    return KnobError(
        f"the timeline grid would hold more than {MAX_GRID_POINTS:,} points ({points:,} or more)",
        hint="give a coarser --grid (seconds) or a shorter --duration",
    )


@dataclass(frozen=True)
class ReplayOptions:
    """How long to replay and how to sample it.

    ``snapshot_alignment="time"`` (the default) makes every batch see the latest snapshot at
    or before its start time. ``"scan"`` applies a snapshot only when a full scan starts
    (the first scan starting at or after its time), which is what ``validate --kernel`` can
    reproduce on a real kernel; ``snapshot_scans`` gives, instead of times, the full scan
    (1-based) from which each snapshot is visible.
    """

    duration_s: float | None = None  # None: until settle_scans full scans after the last snapshot
    settle_scans: int = 24
    max_scans: int = 1_000_000
    grid_s: float | None = None  # None: auto (1 s, or span/600 for long traces)
    snapshot_alignment: Alignment = "time"
    snapshot_scans: tuple[int, ...] | None = None
    #: ksmd's cost profile; ``None``: the one shipped for the traced CPU where a trace is
    #: replayed (:func:`planner.engine.cost.profile_for_trace`, docs/busy-host.md §7), the
    #: default profile for an input that names no CPU (:attr:`effective_cost`)
    cost: CostProfile | None = None
    #: replay the writes a v2 trace recorded between snapshots (planner.engine.writes);
    #: False replays the snapshots alone, as for a version-1 trace
    writes: bool = True
    #: the seed of the writes' phases (the same seed, the same replay)
    write_seed: int = 0
    #: continue the growth the last snapshots show after the trace (planner.engine.growth;
    #: with time alignment only); False holds the set of pages at the last snapshot
    growth: bool = True
    #: The CPU load ksmd competes with; ``None``: the load the trace recorded, else an idle
    #: host (docs/busy-host.md).
    host_load: HostLoad | None = None

    @property
    def effective_cost(self) -> CostProfile:
        """The cost profile the engines price ksmd with: :attr:`cost`, or the default one."""
        return self.cost if self.cost is not None else CostProfile.default()

    def __post_init__(self) -> None:
        if self.duration_s is not None and not self.duration_s > 0:
            raise KnobError(
                f"duration must be positive, got {self.duration_s}", hint="give seconds > 0"
            )
        if self.duration_s is not None and not self.duration_s <= MAX_DURATION_S:
            raise KnobError(
                f"duration {self.duration_s} s is longer than {MAX_DURATION_S:,.0f} s (7 days)",
                hint="past the last snapshot the replay only holds the steady state; "
                "give a shorter --duration",
            )
        if self.grid_s is not None and not self.grid_s > 0:
            raise KnobError(
                f"grid step must be positive, got {self.grid_s}", hint="give seconds > 0"
            )
        if self.grid_s is not None and not (MIN_GRID_S <= self.grid_s < math.inf):
            raise KnobError(
                f"grid step {self.grid_s} s is outside [{MIN_GRID_S}, inf)",
                hint=f"give a finite step of at least {MIN_GRID_S} s (one jiffy at HZ=1000)",
            )
        if self.duration_s is not None and self.grid_s is not None:
            points = int(self.duration_s / self.grid_s) + 1
            if points > MAX_GRID_POINTS:
                raise grid_overflow(points)
        if self.settle_scans < 0:
            raise KnobError("settle_scans cannot be negative", hint="use 0 or more")
        if self.max_scans < 1:
            raise KnobError("max_scans must be at least 1", hint="use 1 or more")
        if self.snapshot_alignment not in ("time", "scan"):
            raise KnobError(
                f"unknown snapshot alignment {self.snapshot_alignment!r}", hint="use time or scan"
            )
        if self.snapshot_scans is not None:
            s = self.snapshot_scans
            if (
                not s
                or s[0] > 1
                or any(x < 1 for x in s)
                or any(b < a for a, b in itertools.pairwise(s))
            ):
                raise KnobError(
                    "snapshot_scans must give, for every snapshot, the full scan "
                    "(>= 1, non-decreasing) "
                    "from which it is visible; the first snapshot is visible from scan 1"
                )

    def grid_step_ns(self, span_ns: int) -> int:
        """The timeline grid step, ns: ``grid_s``, else 1 s (or span/600 for traces longer
        than 600 s), coarsened so that ``duration_s`` holds at most :data:`MAX_GRID_POINTS`.
        """
        if self.grid_s:
            return int(self.grid_s * NS_PER_S)
        step = 1.0 if span_ns <= 600 * NS_PER_S else span_ns / 600 / NS_PER_S
        if self.duration_s is not None:
            step = max(step, self.duration_s / (MAX_GRID_POINTS - 1))
        return int(step * NS_PER_S)

    @property
    def aligned_to_scans(self) -> bool:
        """Whether snapshots take effect only at full-scan starts."""
        return self.snapshot_alignment == "scan" or self.snapshot_scans is not None
