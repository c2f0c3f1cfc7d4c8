"""The fast engine: the reference model's semantics in a compiled per-page kernel.

See :mod:`planner.engine.fast.engine` and docs/engine.md ("The fast engine").
"""

from planner.engine.fast.engine import FastEngine

__all__ = ["FastEngine"]
