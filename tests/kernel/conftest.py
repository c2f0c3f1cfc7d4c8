"""Fixtures of the kernel tests: a fake sysfs tree, and a lease on the real KSM.

The ``ksm_lease`` fixture is the only way the kernel tests touch ``/sys/kernel/mm/ksm``: it
skips (with the reason) where KSM is missing, not writable, or in use by another process;
it takes the project lock, and after the test it checks that no holder process is left
and that every knob is back to what it was.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from planner.errors import KernelUnsupportedError, KsmBusyError
from planner.kernel.sysfs import COUNTERS, KERNEL_DEFAULTS, KsmLease, KsmSysfs


def holder_pids() -> list[int]:
    """Live holder processes (``python -m planner.kernel.holder`` and their forks)."""
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes()
            state = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"planner.kernel.holder" in cmdline and state != "Z":
            out.append(int(entry.name))
    return out


@pytest.fixture
def ksm_lease() -> Iterator[KsmLease]:
    """A lease on the real KSM (kernel defaults applied), or a skip saying why not."""
    sysfs = KsmSysfs()
    if not sysfs.available():
        pytest.skip("no /sys/kernel/mm/ksm: this kernel has no KSM")
    if os.geteuid() != 0:
        pytest.skip("writing /sys/kernel/mm/ksm needs root")
    before = sysfs.knobs()
    lease = KsmLease()
    try:
        lease.__enter__()
    except (KernelUnsupportedError, KsmBusyError) as exc:
        pytest.skip(f"KSM cannot be leased here: {exc.one_line()}")
    try:
        yield lease
        left = holder_pids()
        assert not left, f"holder processes left behind: {left}"
    finally:
        lease.__exit__(None, None, None)
    assert sysfs.knobs() == before, "the lease did not restore every knob"


def write_fake_sysfs(root: Path, **values: int | str) -> KsmSysfs:
    """A fake ``/sys/kernel/mm/ksm``: knobs (0644) at kernel defaults, counters (0444) at 0."""
    root.mkdir(parents=True, exist_ok=True)
    knobs: dict[str, int | str] = {"run": 0, **KERNEL_DEFAULTS, **values}
    for name, val in knobs.items():
        text = "[none] scan-time" if name == "advisor_mode" and val == "none" else str(val)
        if name == "advisor_mode" and val == "scan-time":
            text = "none [scan-time]"
        (root / name).write_text(text + "\n")
        (root / name).chmod(0o644)
    for name in COUNTERS:
        (root / name).write_text(f"{values.get(name, 0)}\n")
        (root / name).chmod(0o444)
    return KsmSysfs(str(root))


@pytest.fixture
def fake_sysfs(tmp_path: Path) -> KsmSysfs:
    """A fake sysfs tree with kernel defaults (see :func:`write_fake_sysfs`)."""
    return write_fake_sysfs(tmp_path / "ksm")


@pytest.fixture
def make_sysfs() -> Callable[..., KsmSysfs]:
    """:func:`write_fake_sysfs` (conftest is not importable from test modules)."""
    return write_fake_sysfs


@pytest.fixture
def make_proc() -> Callable[[Path, dict[int, str | None]], Path]:
    """:func:`write_fake_proc`."""
    return write_fake_proc


def write_fake_proc(root: Path, stats: dict[int, str | None]) -> Path:
    """A fake ``/proc`` whose ``<pid>/ksm_stat`` files hold ``stats`` (``None``: no file)."""
    for pid, text in stats.items():
        d = root / str(pid)
        d.mkdir(parents=True)
        (d / "comm").write_text(f"proc{pid}\n")
        if text is not None:
            (d / "ksm_stat").write_text(text)
    return root


@pytest.fixture
def ksm_free() -> Iterator[KsmSysfs]:
    """Real KSM that a command may lease itself (skips like ``ksm_lease``; checks after)."""
    sysfs = KsmSysfs()
    try:
        KsmLease().preflight()
    except (KernelUnsupportedError, KsmBusyError) as exc:
        pytest.skip(f"KSM cannot be leased here: {exc.one_line()}")
    before = sysfs.knobs()
    yield sysfs
    assert not holder_pids(), "holder processes left behind"
    assert sysfs.knobs() == before, "the command did not restore every knob"
