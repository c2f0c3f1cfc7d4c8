"""How a process takes part in KSM: the engine's view of a policy.

The engine asks a *resolver* once per process (in order of appearance, parents before
children) how the process is registered: ``off``, ``prctl`` (every compatible mapping, now
and later, inherited by children: ``PR_SET_MEMORY_MERGE``) or ``madvise`` restricted to
mapping kinds or address ranges (``MADV_MERGEABLE``). Policy files and policy sets
(:mod:`planner.policy`) compile to such a resolver.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

Mode = Literal["off", "prctl", "madvise"]

#: When a ``prctl`` process set ``PR_SET_MEMORY_MERGE`` (docs/kernel-semantics.md §2.6):
#: ``"exec"`` -- before ``exec``, by whatever started it (systemd ``MemoryKSM=``, a
#: launcher): the ``[stack]`` that ``exec`` creates is never marked mergeable, every later
#: mapping is; ``"running"`` -- inside the running process: every compatible mapping it has.
PrctlAt = Literal["exec", "running"]
PRCTL_AT_DEFAULT: Final[PrctlAt] = "exec"
#: The mapping kind ``exec`` creates before the mm takes ``MMF_VM_MERGE_ANY`` into account.
EXEC_STACK_KIND: Final = "stack"


def prctl_at_note(prctl_at: PrctlAt) -> str:
    """What a result says about the timing of prctl registration."""
    if prctl_at == "exec":
        return "prctl before exec (systemd MemoryKSM=, a launcher): [stack] not mergeable"
    return "prctl inside the running process: every compatible mapping mergeable"


@dataclass(frozen=True)
class Registration:
    """The KSM registration of one process (mm)."""

    mode: Mode = "prctl"
    kinds: frozenset[str] = frozenset()  # madvise: mapping kinds made mergeable
    ranges: tuple[tuple[int, int], ...] = ()  # madvise: [start, end) address ranges made mergeable
    domain: str | None = None  # security domain, for what-if scenarios
    rule: str | None = None  # which policy rule decided (for reports)

    def mergeable(self, kind: str, start: int, end: int, prctl_at: PrctlAt = "running") -> bool:
        """Whether a mapping ``[start, end)`` of ``kind`` is VM_MERGEABLE here.

        With ``prctl_at="exec"`` a prctl process's exec-time stack is not (see
        :data:`PrctlAt`)."""
        if self.mode == "prctl":
            return not (prctl_at == "exec" and kind == EXEC_STACK_KIND)
        if self.mode == "off":
            return False
        if kind in self.kinds:
            return True
        return any(start < r_end and r_start < end for r_start, r_end in self.ranges)


@dataclass(frozen=True)
class ProcessInfo:
    """What a resolver may look at to decide a process's registration."""

    mm: int  # the engine's id of this process instance (mm)
    pid: int
    proc_start: int
    ppid: int | None
    comm: str | None
    cmdline: str | None
    cgroup: str | None
    uid: int | None
    labels: Mapping[str, str] = field(default_factory=dict)
    parent_mm: int | None = None
    ancestors: tuple[int, ...] = ()  # mm ids of parent, grandparent, ... present in the trace
    first_time_s: float = 0.0


#: ``resolver(process, parent_registration) -> Registration``. The parent's registration
#: is given so that prctl inheritance over fork can be honoured.
Resolver = Callable[[ProcessInfo, "Registration | None"], Registration]

PRCTL = Registration(mode="prctl", rule="default: every process prctl(PR_SET_MEMORY_MERGE)")


def prctl_everything(info: ProcessInfo, parent: Registration | None) -> Registration:
    """The default policy: every process in the trace is KSM-enabled with prctl."""
    del info, parent
    return PRCTL
