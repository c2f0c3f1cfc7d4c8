"""The kernel's default knobs, always among the scenarios a review compares.

A grid that varies a knob but leaves out the kernel's default value of it (``--pages-to-scan
1000,4000`` leaves out 100) would let a review say nothing about what happens when KSM is
switched on without tuning. :func:`with_kernel_defaults` adds the default value (the knob
table's, :data:`planner.engine.knobs.KNOBS`: the kernel's) to every axis of the grid that
lacks it, in order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from planner.engine.knobs import spec

if TYPE_CHECKING:
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
    added = []
    for name, values in grid.axes:
        if name == "hz":
            continue
        default = kernel_default(name)
        if default not in values:
            both = (*values, default)
            numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in both)
            added.append((name, tuple(sorted(both)) if numeric else both))
    return grid.with_axes(added) if added else grid


__all__ = ["kernel_default", "with_kernel_defaults"]
