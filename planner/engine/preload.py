"""The replay's compiled code, loaded from numba's cache in a thread while the input is read.

A replay's first compiled call used to pay numba's start-up on the main thread: importing
numba, building its typing and target contexts (which imports much of numba and SciPy's
BLAS bindings) and loading each function from the cache -- about half a second of the 4 M-page
command line before any page is replayed. Reading and verifying the trace meanwhile is
mostly hashing, Parquet decoding and numpy work, which release the GIL: a thread started
before the trace is opened does numba's part on the other core (docs/engine.md, "Start-up").

Nothing is compiled in the thread: a function whose cached version is missing or stale is
compiled on its first call, on the main thread, as without the thread.
"""

from __future__ import annotations

from planner._jit import compiled_code_loading

#: The modules whose numba functions every replay calls (preparing the input, then the
#: fast engine); the reference engine needs only the first.
PREPARE_MODULES = ("planner._idtable", "planner.engine.rows")
FAST_ENGINE_MODULES = (
    "planner.engine.fast.kernel",
    "planner.engine.fast.apply",
    "planner.engine.fast.observe",
    "planner.engine.fast.steady",
)


def modules_for(engine: str) -> tuple[str, ...]:
    """The modules whose compiled code a replay with ``engine`` calls."""
    return PREPARE_MODULES + (FAST_ENGINE_MODULES if engine == "vectorized" else ())


__all__ = ["FAST_ENGINE_MODULES", "PREPARE_MODULES", "compiled_code_loading", "modules_for"]
