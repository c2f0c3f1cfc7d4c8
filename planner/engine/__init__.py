"""The replay engine: a kernel-faithful model of ksmd, in two implementations.

* :mod:`planner.engine.reference` -- plain Python, one page at a time: the oracle;
* :mod:`planner.engine.fast` -- the same algorithm compiled (numba) over compact arrays,
  the default (``engine="vectorized"``, the name kept for compatibility).

Both run under one driver loop (:mod:`planner.engine.driver`) on a prepared input whose
snapshots are deltas (:mod:`planner.engine.prepare`, :mod:`planner.engine.rows`).
Use :func:`replay`; docs/engine.md explains the design.
"""

from planner.engine.api import DerivedInput, derive_input, replay
from planner.engine.cost import CostProfile
from planner.engine.knobs import KsmKnobs
from planner.engine.options import ReplayOptions
from planner.engine.prepare import ReplayInput, prepare, prepare_trace
from planner.engine.registration import ProcessInfo, Registration
from planner.engine.result import ReplayResult, ScanRecord, Truth

__all__ = [
    "CostProfile",
    "DerivedInput",
    "KsmKnobs",
    "ProcessInfo",
    "Registration",
    "ReplayInput",
    "ReplayOptions",
    "ReplayResult",
    "ScanRecord",
    "Truth",
    "derive_input",
    "prepare",
    "prepare_trace",
    "replay",
]
