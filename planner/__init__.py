"""ksm-planner: a trace-replay capacity planner for Linux KSM.

The library never imports the CLI. Public entry points are re-exported here as they
stabilise; see the subpackages ``planner.trace``, ``planner.capture``, ``planner.engine``,
``planner.policy``, ``planner.whatif``, ``planner.kernel`` and ``planner.report``.
"""

from __future__ import annotations

from planner._version import __version__

__all__ = ["__version__"]
