"""Checks of option values against the command's inputs, shared by the commands.

Each names the problem in one line with the exit code of its class: a ``--preset``, ``--set``
or ``--host`` that does not exist is a usage error (2, a name the user typed matches nothing);
a trace that holds no host, or a policy file that is invalid, is bad input data (4, the input
is wrong), whichever command reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from planner.errors import TraceFormatError, UsageProblem


def presets(names: Sequence[str]) -> list[Any]:
    """The built-in policy sets ``names`` (``all``: every preset), in the order given.

    Raises
    ------
    UsageProblem
        A name is not a preset (exit code 2).
    """
    from planner.policy import PRESETS

    out: list[Any] = []
    for name in names:
        if name == "all":
            out += list(PRESETS.values())
        elif name in PRESETS:
            out.append(PRESETS[name])
        else:
            choices = ", ".join([*PRESETS, "all"])
            raise UsageProblem(f"--preset {name!r} is not a preset", hint=f"presets are: {choices}")
    return out


def policy_sets(
    policies: Path | None, set_names: Sequence[str], preset_names: Sequence[str]
) -> list[Any]:
    """The policy sets a command compares: the presets, then the chosen sets of ``policies``.

    Raises
    ------
    UsageProblem
        An unknown ``--preset`` or ``--set``, or ``--set`` without ``--policies`` (exit code
        2: a name the user typed that matches nothing).
    PolicyError
        The policy file is invalid (exit code 4).
    """
    from planner.policy import load_policies, select_sets

    chosen = presets(preset_names)
    if policies is None:
        if set_names:
            raise UsageProblem(
                "--set needs --policies (it chooses sets of a policy file)",
                hint="give --policies FILE",
            )
        return chosen
    from planner.policy import PolicySet

    loaded = load_policies(policies)
    names = [p.name for p in loaded]
    # NAME@DOMAIN is the set NAME with KSM for its domain DOMAIN only
    missing = [n for n in set_names if PolicySet.split_name(n)[0] not in names]
    if missing:
        raise UsageProblem(
            f"--set {missing[0]!r}: {policies} has no such policy set",
            hint=f"sets are: {', '.join(names)}",
        )
    return chosen + select_sets(loaded, list(set_names) or None, source=str(policies))


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
