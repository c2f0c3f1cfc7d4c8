"""Several replays as one: timelines summed across security domains, time to X % of a saving.

A scenario that denies merging across security domains replays each domain alone ("as if on
separate hosts", one ksmd each); its saving at time t is the sum of the domains' savings at
t. Each replay's series is a step function (a value holds until the next point), so the sum
at a time is the sum of every replay's last value at or before it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from planner.whatif.outcome import GridSeries, ScanSeries, Timeline

if TYPE_CHECKING:
    from collections.abc import Sequence

    from planner.whatif.outcome import ReplayOutcome

#: The fractions of the final saving whose times are reported (``time_to_50_s`` ...).
FRACTIONS = (50, 90, 99)


def step_sum(
    series: Sequence[tuple[Sequence[float], Sequence[float]]], at: Sequence[float]
) -> list[float]:
    """The sum of step functions ``(times, values)`` at the times ``at`` (0 before a start).

    Examples
    --------
    >>> step_sum([([0, 10], [1, 5]), ([5], [100])], [0, 5, 9, 10])
    [1.0, 101.0, 101.0, 105.0]
    """
    when = np.asarray(at, dtype=float)
    total = np.zeros(when.size)
    for t, v in series:
        if not len(t):
            continue
        ta, va = np.asarray(t, dtype=float), np.asarray(v, dtype=float)
        idx = np.searchsorted(ta, when, side="right") - 1
        total += np.where(idx >= 0, va[np.clip(idx, 0, va.size - 1)], 0.0)
    return [float(x) for x in total]


def summed_timeline(replays: Sequence[ReplayOutcome]) -> Timeline:
    """One timeline for several replays: levels summed, scan events interleaved.

    The grid is the union of the replays' grid times; ``frames_without_ksm`` is the first
    replay's (every replay holds the same processes, registered or not). A scan row keeps
    its own replay's ``full_scans``, ``scan_time_s``, ``cpu_s`` and ``pages_to_scan`` and
    carries the summed levels at its end.
    """
    if len(replays) == 1:
        return replays[0].timeline
    if not replays:
        return Timeline()
    grids = [r.timeline.grid for r in replays]
    t = sorted({x for g in grids for x in g.t_s})

    def grid_sum(name: str) -> tuple[int, ...]:
        return tuple(round(v) for v in step_sum([(g.t_s, getattr(g, name)) for g in grids], t))

    first = grids[0]
    grid = GridSeries(
        t_s=tuple(t),
        saved_frames=grid_sum("saved_frames"),
        net_saved_bytes=grid_sum("net_saved_bytes"),
        frames_without_ksm=tuple(
            round(v) for v in step_sum([(first.t_s, first.frames_without_ksm)], t)
        ),
        pages_sharing=grid_sum("pages_sharing"),
        pages_shared=grid_sum("pages_shared"),
        general_profit=grid_sum("general_profit"),
        cow_breaks=grid_sum("cow_breaks"),
    )
    return Timeline(grid=grid, scans=_summed_scans([r.timeline.scans for r in replays]))


def _summed_scans(parts: Sequence[ScanSeries]) -> ScanSeries:
    events = sorted(
        (t, n, d, c, p)
        for s in parts
        for t, n, d, c, p in zip(
            s.t_s, s.full_scans, s.scan_time_s, s.cpu_s, s.pages_to_scan, strict=True
        )
    )
    at = [e[0] for e in events]

    def level(name: str) -> tuple[int, ...]:
        return tuple(round(v) for v in step_sum([(s.t_s, getattr(s, name)) for s in parts], at))

    return ScanSeries(
        full_scans=tuple(e[1] for e in events),
        t_s=tuple(at),
        scan_time_s=tuple(e[2] for e in events),
        cpu_s=tuple(e[3] for e in events),
        pages_to_scan=tuple(e[4] for e in events),
        pages_scanned=level("pages_scanned"),
        pages_skipped=level("pages_skipped"),
        pages_sharing=level("pages_sharing"),
        saved_frames=level("saved_frames"),
        net_saved_bytes=level("net_saved_bytes"),
    )


def time_to_fractions(
    replays: Sequence[ReplayOutcome], fractions: Sequence[int] = FRACTIONS
) -> dict[int, float | None]:
    """First time the summed saved frames of ``replays`` reach each fraction (%) of their end.

    Saved frames (before KSM's metadata) from the grid and the scan ends, as the engine's own
    ``time_to_saving_s``; ``None`` when nothing is saved. One replay gives the engine's
    figures exactly.
    """
    final = float(sum(r.final_truth.saved_frames for r in replays))
    series = [r.timeline.saving_points() for r in replays]
    if len(series) == 1:
        points = series[0]
    else:
        times = sorted({t for s in series for t, _ in s})
        values = step_sum([([p[0] for p in s], [p[1] for p in s]) for s in series], times)
        points = list(zip(times, values, strict=True))
    out: dict[int, float | None] = {}
    for f in fractions:
        target = final * f / 100.0
        out[f] = next((t for t, v in points if final > 0 and v >= target), None)
    return out


def scans_to(timeline: Timeline, t_s: float | None) -> int | None:
    """The ``full_scans`` number of the first full scan ending at or after ``t_s``."""
    if t_s is None:
        return None
    s = timeline.scans
    return next((n for t, n in zip(s.t_s, s.full_scans, strict=True) if t >= t_s - 1e-9), None)


__all__ = ["FRACTIONS", "scans_to", "step_sum", "summed_timeline", "time_to_fractions"]
