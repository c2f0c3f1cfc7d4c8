"""Progress reporting without a UI toolkit: the library calls a protocol, the CLI draws it."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Receives progress of long work. The CLI implements it with a rich progress bar."""

    def start(self, task: str, total: float | None) -> None:
        """A new task begins; ``total`` is in the task's own unit (pages, scans, rows)."""

    def advance(self, amount: float) -> None:
        """``amount`` more units of the current task are done."""

    def finish(self) -> None:
        """The current task is done."""


class NullProgress:
    """A :class:`Progress` that ignores everything (the library default)."""

    def start(self, task: str, total: float | None) -> None:
        del task, total

    def advance(self, amount: float) -> None:
        del amount

    def finish(self) -> None:
        pass


NULL_PROGRESS = NullProgress()
