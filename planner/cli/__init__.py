"""The ``ksm-planner`` command line: thin commands over the library.

Each command parses its arguments, calls the library once, and renders the result
(``--json`` on stdout; tables, notes and progress on stderr). Errors are mapped to exit
codes in :mod:`planner.cli._app`.

A command registers itself when its module is imported. :func:`main` imports only the
module of the command the arguments name (``replay`` does not pay for the capture's or the
report's imports); without a known command name (the command list, ``--help``, a typo) it
imports them all. ``planner.cli.app`` is the application with every command.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import sys
from typing import TYPE_CHECKING, Any

from planner.cli import _app

if TYPE_CHECKING:
    from collections.abc import Sequence

#: The module (under ``planner.cli``) of each command.
COMMAND_MODULES: dict[str, str] = {
    "capture": "capture",
    "calibrate": "live",
    "launch": "live",
    "observe": "live",
    "replay": "replay",
    "report": "report",
    "ingest": "traces",
    "export": "traces",
    "info": "traces",
    "validate": "validate",
    "whatif": "whatif",
}

#: Commands run with Python's cyclic garbage collector paused from the start, imports and
#: option parsing included: their data are numpy arrays, freed by reference counting, and
#: the collector's passes over what the libraries create while they load (typer's pydantic
#: adapters, numba, pyarrow) free nothing: 0.1-0.2 s of CPU of a replay's start-up
#: (``replay`` keeps it paused while it replays: planner/cli/replay.py; ``info`` loads numba's
#: code, ~0.15 s of repeated full collections). At exit the objects left are frozen, so that
#: the interpreter's last collections skip them (:func:`_no_collection_at_exit`).
COLLECTOR_PAUSED = frozenset({"replay", "info"})


def _no_collection_at_exit() -> None:
    """Leave the objects that exist at exit out of the collections Python runs when it exits
    (``gc.freeze``, run by ``atexit`` before them): after ``replay`` or ``info`` they are
    mostly the ~140 k objects of numba's loaded code, freed with the process anyway, and
    walking them took 0.3-1.0 s of the command's wall time (docs/engine.md, "Speed and
    memory"). Registered once however often a command runs in the process (the tests); it
    runs only at the exit, so such a process keeps collecting as usual until then."""
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)


def load_commands(names: Sequence[str] | None = None) -> None:
    """Register the commands ``names`` (every command when None) by importing their modules."""
    wanted = COMMAND_MODULES.values() if names is None else [COMMAND_MODULES[n] for n in names]
    for module in dict.fromkeys(wanted):
        importlib.import_module(f"planner.cli.{module}")


def command_named(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names, if it is one (the root takes only flags before it)."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMAND_MODULES else None
    return None


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``ksm-planner``: register the command named, then run it
    (:func:`planner.cli._app.main`)."""
    _app.one_blas_thread()  # before a command's module imports numpy
    name = command_named(sys.argv[1:] if argv is None else argv)
    was = gc.isenabled()
    if name in COLLECTOR_PAUSED:
        gc.disable()
        _no_collection_at_exit()
    try:
        load_commands(None if name is None else [name])
        _app.main(argv)
    finally:
        if was:
            gc.enable()


def __getattr__(name: str) -> Any:
    if name == "app":  # the application with every command (tests, documentation)
        load_commands()
        return _app.app
    raise AttributeError(f"module 'planner.cli' has no attribute {name!r}")


__all__ = [
    "COLLECTOR_PAUSED",
    "COMMAND_MODULES",
    "app",
    "command_named",
    "load_commands",
    "main",
]
