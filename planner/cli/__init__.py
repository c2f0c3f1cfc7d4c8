"""The ``ksm-planner`` command line: thin commands over the library.

Each command parses its arguments, calls the library once, and renders the result
(``--json`` on stdout; tables, notes and progress on stderr). Errors are mapped to exit
codes in :mod:`planner.cli._app`.
"""

from __future__ import annotations

from planner.cli import (  # noqa: F401  (importing registers the commands)
    capture,
    live,
    replay,
    report,
    traces,
    validate,
    whatif,
)
from planner.cli._app import app, main

__all__ = ["app", "main"]
