"""The replay engine: a kernel-faithful model of ksmd, in two implementations.

* :mod:`planner.engine.reference` -- plain Python, one page at a time: the oracle;
* :mod:`planner.engine.vectorized` -- numpy, whole scans at a time, grouped by content.

Use :func:`replay`.
"""

from planner.engine.api import replay
from planner.engine.cost import CostProfile
from planner.engine.knobs import KsmKnobs
from planner.engine.options import ReplayOptions
from planner.engine.prepare import ReplayInput, prepare
from planner.engine.registration import ProcessInfo, Registration
from planner.engine.result import ReplayResult, ScanRecord, Truth

__all__ = [
    "CostProfile",
    "KsmKnobs",
    "ProcessInfo",
    "Registration",
    "ReplayInput",
    "ReplayOptions",
    "ReplayResult",
    "ScanRecord",
    "Truth",
    "prepare",
    "replay",
]
