"""Options of a replay that are not ksmd knobs: duration, grid, snapshot alignment, cost."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Literal

from planner.engine.cost import CostProfile
from planner.errors import KnobError

Alignment = Literal["time", "scan"]


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
    cost: CostProfile = field(default_factory=CostProfile.default)

    def __post_init__(self) -> None:
        if self.duration_s is not None and not self.duration_s > 0:
            raise KnobError(
                f"duration must be positive, got {self.duration_s}", hint="give seconds > 0"
            )
        if self.grid_s is not None and not self.grid_s > 0:
            raise KnobError(
                f"grid step must be positive, got {self.grid_s}", hint="give seconds > 0"
            )
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

    @property
    def aligned_to_scans(self) -> bool:
        """Whether snapshots take effect only at full-scan starts."""
        return self.snapshot_alignment == "scan" or self.snapshot_scans is not None
