"""Built-in policy sets for the common cases, usable on any trace.

=================  =======================================================================
preset             what it models
=================  =======================================================================
``off``            KSM off for every process: the baseline.
``prctl-all``      ``prctl(PR_SET_MEMORY_MERGE, 1)`` for every process (systemd
                   ``MemoryKSM=yes`` on the service, or prctl on the first process).
``workers-prctl``  prctl for the forked workers only (processes whose parent is in the
                   trace); the master, or any process whose parent is not traced, is off.
``madvise-heap``   ``madvise(MADV_MERGEABLE)`` on the ``[heap]`` (brk) mapping only.
``madvise-anon``   madvise on all private anonymous memory a runtime could mark: heap,
                   anonymous and named anonymous mappings, stack and bss.
=================  =======================================================================

Presets name no security domain. Their rules may match nothing on a given trace (that is
a warning, not an error).
"""

from __future__ import annotations

from types import MappingProxyType

from planner.errors import PolicyError
from planner.policy.model import Match, PolicySet, Rule

_PRESETS: tuple[PolicySet, ...] = (
    PolicySet(name="off", description="KSM off everywhere (baseline)", default="off", preset=True),
    PolicySet(
        name="prctl-all",
        description="prctl(PR_SET_MEMORY_MERGE) for every process",
        default="prctl",
        preset=True,
    ),
    PolicySet(
        name="workers-prctl",
        description="prctl for forked workers only; masters off",
        rules=(Rule(name="workers", match=Match(root=False), action="prctl"),),
        default="off",
        preset=True,
    ),
    PolicySet(
        name="madvise-heap",
        description="madvise(MADV_MERGEABLE) on [heap] only",
        rules=(Rule(name="heap", action="madvise", kinds=("heap",)),),
        default="off",
        preset=True,
    ),
    PolicySet(
        name="madvise-anon",
        description="madvise on heap, anonymous, stack and bss mappings",
        rules=(
            Rule(
                name="anonymous",
                action="madvise",
                kinds=("heap", "anon", "anon_named", "stack", "bss"),
            ),
        ),
        default="off",
        preset=True,
    ),
)

#: The built-in presets by name.
PRESETS = MappingProxyType({p.name: p for p in _PRESETS})

#: The presets compared by ``ksm-planner whatif`` when no policy is given.
DEFAULT_PRESETS = ("off", "prctl-all", "workers-prctl", "madvise-heap")


def preset(name: str) -> PolicySet:
    """The built-in policy set ``name``.

    Raises
    ------
    PolicyError
        No preset has that name.

    Examples
    --------
    >>> preset("workers-prctl").rules[0].action
    'prctl'
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise PolicyError(
            f"no preset named {name!r}", hint=f"presets are: {', '.join(PRESETS)}"
        ) from None


def preset_names() -> tuple[str, ...]:
    """Names of the built-in presets."""
    return tuple(PRESETS)


__all__ = ["DEFAULT_PRESETS", "PRESETS", "preset", "preset_names"]
