"""Output written once for all commands: JSON on stdout, people-facing text on stderr."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

JSON_SCHEMA_VERSION = 1

stderr = Console(stderr=True, highlight=False, soft_wrap=True)

JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print one machine-readable JSON document on stdout.")
]
ForceFlag = Annotated[
    bool, typer.Option("--force", help="Replace the output if it already exists.")
]


def _clean(obj: Any) -> Any:
    """Make ``obj`` JSON-safe: NaN/inf become null, numpy scalars become Python numbers."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    item = getattr(obj, "item", None)
    if callable(item):
        return _clean(item())
    return obj


def emit_json(doc: dict[str, Any]) -> None:
    """Print ``doc`` as the one JSON document of this command (with ``schema_version``)."""
    out = {"schema_version": JSON_SCHEMA_VERSION, **doc}
    sys.stdout.write(json.dumps(_clean(out), indent=1, sort_keys=False) + "\n")
    sys.stdout.flush()


class RichProgress:
    """The library's :class:`planner._progress.Progress`, drawn with rich on stderr."""

    def __init__(self, progress: Progress) -> None:
        self._p = progress
        self._task: Any = None

    def start(self, task: str, total: float | None) -> None:
        if self._task is not None:
            self._p.remove_task(self._task)
        self._task = self._p.add_task(task, total=total)

    def advance(self, amount: float) -> None:
        if self._task is not None:
            self._p.advance(self._task, amount)

    def finish(self) -> None:
        if self._task is not None:
            self._p.remove_task(self._task)
            self._task = None


@contextmanager
def progress() -> Iterator[RichProgress]:
    """A progress bar on stderr (drawn only when stderr is a terminal)."""
    p = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr,
        transient=True,
        disable=not stderr.is_terminal,
    )
    with p:
        yield RichProgress(p)


def note(message: str) -> None:
    """A line for people, on stderr."""
    stderr.print(message)


def warn(message: str) -> None:
    """A warning for people, on stderr."""
    stderr.print(f"ksm-planner: warning: {message}")
