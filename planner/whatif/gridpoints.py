"""The kernel's default knobs, always among the scenarios a review compares.

A grid that varies a knob but leaves out the kernel's default value of it (``--pages-to-scan
1000,4000`` leaves out 100) would let a review say nothing about what happens when KSM is
switched on without tuning. :func:`with_kernel_defaults` adds the default value (the knob
table's, :data:`planner.engine.knobs.KNOBS`: the kernel's) to every axis of the grid that
lacks it, in order; :func:`with_values` adds any other values (a canary's knobs), so that
the scenario a canary ran is among those compared with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from planner.engine.knobs import spec

if TYPE_CHECKING:
    from collections.abc import Mapping

    from planner.whatif.grid import KnobGrid


def kernel_default(name: str) -> object:
    """The kernel's default value of knob ``name`` (from the knob table)."""
    return spec(name).default


def with_kernel_defaults(grid: KnobGrid | None) -> KnobGrid | None:
    """``grid`` with the kernel's default value added to every axis that lacks it.

    Examples
    --------
    >>> from planner.whatif.grid import KnobGrid
    >>> g = KnobGrid.from_mapping({"pages_to_scan": [1000, 4000]})
    >>> with_kernel_defaults(g).axes
    (('pages_to_scan', (100, 1000, 4000)),)
    """
    if grid is None or not grid.axes:
        return grid
    return with_values(grid, {name: kernel_default(name) for name, _ in grid.axes})


def with_values(grid: KnobGrid | None, values: Mapping[str, object]) -> KnobGrid | None:
    """``grid`` with each of ``values`` (knob name -> value) among its scenarios.

    A value is added to its knob's axis when the axis lacks it; a knob without an axis (the
    kernel's default in every scenario) gets an axis of the default and the value when they
    differ. ``hz`` is left alone (the trace's). How a review makes sure a canary's knobs are
    among the scenarios it compares the canary with.

    Examples
    --------
    >>> from planner.whatif.grid import KnobGrid
    >>> g = KnobGrid.from_mapping({"pages_to_scan": [4000]})
    >>> with_values(g, {"pages_to_scan": 1000, "sleep_ms": 20, "smart_scan": False}).axes
    (('pages_to_scan', (1000, 4000)), ('smart_scan', (True, False)))
    """
    from planner.whatif.grid import KnobGrid

    base = grid if grid is not None else KnobGrid()
    axes = dict(base.axes)
    added = []
    for name, value in values.items():
        if name == "hz":
            continue
        current = axes.get(name, (kernel_default(name),))
        if value in current:
            continue
        both = (*current, value)
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in both)
        added.append((name, tuple(sorted(both)) if numeric else both))
    return base.with_axes(added) if added else grid


__all__ = ["kernel_default", "with_kernel_defaults", "with_values"]
