"""Checks of option values against the command's inputs, shared by the commands.

Each names the problem in one line with the exit code of its class: a ``--preset`` or
``--host`` that does not exist is a usage error (2, the option is wrong); a trace that holds
no host is bad input data (4, the trace is wrong), whichever command reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from planner.errors import TraceFormatError, UsageProblem


def presets(names: Sequence[str], *, allow_all: bool = False) -> list[Any]:
    """The built-in policy sets ``names`` (``all``: every preset, when ``allow_all``).

    Raises
    ------
    UsageProblem
        A name is not a preset (exit code 2).
    """
    from planner.policy import PRESETS

    out: list[Any] = []
    for name in names:
        if allow_all and name == "all":
            out += list(PRESETS.values())
        elif name in PRESETS:
            out.append(PRESETS[name])
        else:
            choices = ", ".join([*PRESETS, *(["all"] if allow_all else [])])
            raise UsageProblem(f"--preset {name!r} is not a preset", hint=f"presets are: {choices}")
    return out


def check_hosts(trace: Path, hosts: Sequence[str]) -> None:
    """Fail now if ``trace`` holds no host, or lacks one of ``hosts`` (``--host``).

    Raises
    ------
    TraceFormatError
        The trace's manifest lists no host (exit code 4).
    UsageProblem
        ``--host`` names a host the trace does not hold (exit code 2).
    """
    from planner.trace.io import open_trace

    tr = open_trace(trace)
    if not tr.hosts:
        raise TraceFormatError(
            f"{trace} holds no host (its manifest lists none)",
            hint="the trace is empty or damaged; re-create it",
        )
    for h in hosts:
        if h not in tr.hosts:
            raise UsageProblem(
                f"{trace} has no host {h!r}", hint=f"hosts are: {', '.join(tr.hosts)}"
            )
