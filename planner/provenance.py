"""Where a trace, a result or a report came from.

Every trace, replay result and report carries a :class:`Provenance`: the tool version, the
trace hash, the knobs, the policy set, the host and the kernel. The host facts are gathered
read-only (``uname``, ``/proc``, ``/sys/kernel/mm``), never by writing anything.
"""

from __future__ import annotations

import gzip
import os
import platform
import re
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from planner._version import __version__

TOOL_NAME = "ksm-planner"


def tool_version() -> str:
    """``ksm-planner <version>``, as recorded in outputs."""
    return f"{TOOL_NAME} {__version__}"


def kernel_hz(
    *, release: str | None = None, roots: tuple[str, ...] = ("/proc/config.gz", "/boot")
) -> int | None:
    """Return the kernel's ``CONFIG_HZ`` if a kernel config can be read, else ``None``.

    KSM's batch period is counted in jiffies (see docs/kernel-semantics.md §4.4), so
    the replay needs HZ. It is read from ``/proc/config.gz`` or ``/boot/config-<release>``.
    """
    release = release or platform.release()
    candidates: list[Path] = []
    for root in roots:
        p = Path(root)
        candidates.append(p / f"config-{release}" if p.is_dir() else p)
    rx = re.compile(rb"^CONFIG_HZ=(\d+)$", re.M)
    for path in candidates:
        try:
            data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        except (OSError, EOFError):
            continue
        m = rx.search(data)
        if m:
            return int(m.group(1))
    return None


def thp_mode(sys_root: str = "/sys") -> str | None:
    """The active THP mode (``always``, ``madvise`` or ``never``), read from sysfs."""
    try:
        text = Path(sys_root, "kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return None
    m = re.search(r"\[(\w+)\]", text)
    return m.group(1) if m else None


def cpu_identity(proc_root: str | os.PathLike[str] = "/proc") -> str | None:
    """The host's CPU as ``/proc/cpuinfo`` names it: its model name and, where the file
    gives them (x86), ``(family F, model M)``, which tell CPU generations apart where a
    virtual machine's model name does not (``Intel(R) Xeon(R) Processor @ 2.80GHz``).
    ``None`` where the file cannot be read or names no CPU. What a page costs ksmd depends
    on it (docs/busy-host.md): a capture and a calibrated cost profile record it."""
    try:
        text = Path(proc_root, "cpuinfo").read_text(errors="replace")
    except OSError:
        return None
    facts: dict[str, str] = {}  # the first processor's, then the machine's (ARM: "Model")
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            facts.setdefault(key.strip(), value.strip())
    name = next((facts[k] for k in ("model name", "Model", "cpu model") if facts.get(k)), None)
    family, model = facts.get("cpu family"), facts.get("model")
    generation = (
        f"family {family}, model {model}"
        if family and model and family.isdigit() and model.isdigit()
        else None
    )
    if name and generation:
        return f"{name} ({generation})"
    return name or (f"({generation})" if generation else None)


def cpu_generation(identity: str | None) -> tuple[int, int] | None:
    """``(family, model)`` of a :func:`cpu_identity` text, ``None`` where it has none."""
    m = re.search(r"\(family (\d+), model (\d+)\)", identity or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


@dataclass(frozen=True)
class HostInfo:
    """Read-only facts about the host a trace was captured on (or a command ran on)."""

    host: str
    kernel_release: str
    machine: str
    page_size: int
    hz: int | None
    thp_mode: str | None
    cpus: int | None
    cpu: str | None = None
    """The CPU, with its generation where /proc/cpuinfo gives it (:func:`cpu_identity`)."""

    @classmethod
    def collect(cls) -> HostInfo:
        """Gather the facts of the machine this runs on."""
        return cls(
            host=socket.gethostname(),
            kernel_release=platform.release(),
            machine=platform.machine(),
            page_size=os.sysconf("SC_PAGE_SIZE"),
            hz=kernel_hz(),
            thp_mode=thp_mode(),
            cpus=os.cpu_count(),
            cpu=cpu_identity(),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class Provenance:
    """What an output was computed from. Recorded in every result and report."""

    tool_version: str = field(default_factory=tool_version)
    trace_path: str | None = None
    trace_hash: str | None = None
    hosts: tuple[str, ...] = ()
    kernel_release: str | None = None
    knobs: dict[str, Any] | None = None
    policy_set: str | None = None
    command: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        d = asdict(self)
        d["hosts"] = list(self.hosts)
        return d
