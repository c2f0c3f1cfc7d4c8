"""Fixtures of the kernel tests: a fake sysfs tree, and a lease on the real KSM.

The ``ksm_lease`` fixture is the only way the kernel tests touch ``/sys/kernel/mm/ksm``: it
skips (with the reason) where KSM is missing, not writable, or in use by another process;
it takes the project lock, and after the test it checks that no holder process is left
and that every knob is back to what it was.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from planner.errors import KernelUnsupportedError, KsmBusyError
from planner.kernel.sysfs import (
    COUNTERS,
    KERNEL_DEFAULTS,
    KsmLease,
    KsmSysfs,
    default_lock_path,
    parse_knob,
)


def holder_pids() -> list[int]:
    """Live holder processes of this test process (``python -m planner.kernel.holder`` and
    their forks): those whose controller is this process or a descendant of it, or is gone.
    Another pytest worker's holders (``pytest -n``) are not ours."""
    me = os.getpid()
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes().split(b"\0")
            state = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"planner.kernel.holder" not in cmdline or state == "Z":
            continue
        at = cmdline.index(b"planner.kernel.holder")
        try:
            controller = int(cmdline[at + 1])
        except (IndexError, ValueError):
            controller = 0
        if controller <= 0 or _descends(controller, me):
            out.append(int(entry.name))
    return out


def _descends(pid: int, ancestor: int) -> bool:
    """Whether ``pid`` is ``ancestor`` or its descendant, or is gone (a leftover)."""
    seen = 0
    while pid > 1 and seen < 64:
        if pid == ancestor:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return seen == 0  # the controller itself is gone: its holders are leftovers
        seen += 1
    return False


#: How long a kernel test waits for KSM held by another run (the project lock, or a process
#: using KSM: other engineers' suites and live runs on a shared host) before it skips.
LOCK_WAIT_S = float(os.environ.get("KSM_PLANNER_TEST_LOCK_WAIT_S", "600"))


def _wait_while_busy(attempt: Callable[[], None]) -> None:
    """Call ``attempt`` until it does not raise :class:`KsmBusyError`, at most
    :data:`LOCK_WAIT_S`; skip with the reason where KSM is missing or stays busy."""
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            attempt()
            return
        except KernelUnsupportedError as exc:
            pytest.skip(f"KSM cannot be leased here: {exc.one_line()}")
        except KsmBusyError as exc:
            if time.monotonic() >= deadline:
                pytest.skip(f"KSM stayed busy for {LOCK_WAIT_S:.0f} s: {exc.one_line()}")
        time.sleep(2.0)


@pytest.fixture
def ksm_lease() -> Iterator[KsmLease]:
    """A lease on the real KSM (kernel defaults applied), or a skip saying why not."""
    sysfs = KsmSysfs()
    if not sysfs.available():
        pytest.skip("no /sys/kernel/mm/ksm: this kernel has no KSM")
    if os.geteuid() != 0:
        pytest.skip("writing /sys/kernel/mm/ksm needs root")
    lease = KsmLease()
    _wait_while_busy(lease.__enter__)
    # the host's knobs as the lease found them (read before the lock, they may have been
    # another run's)
    before = {n: parse_knob(n, v) for n, v in lease.saved.items()}
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

    def free() -> None:  # nobody uses KSM and nobody holds the lock (the command takes it)
        KsmLease().preflight()
        fd = os.open(default_lock_path(), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise KsmBusyError("another run holds the KSM lock") from None
        finally:
            os.close(fd)

    _wait_while_busy(free)
    before = sysfs.knobs()
    yield sysfs
    assert not holder_pids(), "holder processes left behind"
    assert sysfs.knobs() == before, "the command did not restore every knob"
