"""Kernel rules the replay and the lease rely on that no conformance scenario shows.

Each test checks one statement of docs/kernel-semantics.md on the running kernel: the
sizes of KSM's objects (§3, read from ``/sys/kernel/slab``, no lease needed), and (marker
``kernel``) the sysfs rules of §6.3 and §8: ``max_page_sharing`` is refused while pages are
shared, ``run=2`` resets ``full_scans`` but not ``pages_scanned``, and switching the
scan-time advisor resets ``pages_to_scan``; and (§2.4) a ``madvise`` registration does
not survive ``execve``.
"""

from __future__ import annotations

import errno
import subprocess
import sys
import time
from pathlib import Path

import pytest

from planner.capture.procfs import parse_ksm_stat
from planner.engine.result import RMAP_ITEM_BYTES, STABLE_NODE_BYTES
from planner.errors import KnobError
from planner.kernel.holder import Holder
from planner.kernel.sysfs import KsmLease

SLAB = Path("/sys/kernel/slab")
FAST = {"pages_to_scan": 1_000_000, "sleep_millisecs": 50, "smart_scan": 0}


def _object_size(cache: str) -> int:
    path = SLAB / cache / "object_size"
    if not path.exists():
        pytest.skip(f"{path} is not readable here (SLUB sysfs missing or KSM not built)")
    return int(path.read_text())


@pytest.mark.parametrize(
    ("cache", "model_bytes"),
    [("ksm_rmap_item", RMAP_ITEM_BYTES), ("ksm_stable_node", STABLE_NODE_BYTES)],
)
def test_the_metadata_sizes_are_the_kernels(cache: str, model_bytes: int) -> None:
    """general_profit charges sizeof(struct ksm_rmap_item); the truth also stable nodes."""
    assert _object_size(cache) == model_bytes


def _refusal(exc: KnobError) -> int | None:
    cause = exc.__cause__
    return cause.errno if isinstance(cause, OSError) else None


def _wait_for(lease: KsmLease, name: str, minimum: int, timeout_s: float = 30.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = lease.sysfs.read_int(name)
        if value >= minimum:
            return value
        time.sleep(0.01)
    raise AssertionError(f"{name} did not reach {minimum} within {timeout_s} s")


@pytest.mark.kernel
def test_max_page_sharing_is_refused_while_shared_and_run2_resets_full_scans_only(
    ksm_lease: KsmLease,
) -> None:
    ksm_lease.reset(FAST)
    h = Holder.spawn()
    try:
        h.map_region(8)
        h.write(list(range(8)), [0x51] * 8)
        h.register()
        ksm_lease.start()
        _wait_for(ksm_lease, "pages_shared", 1)
        ksm_lease.stop()
        scanned = ksm_lease.sysfs.read_int("pages_scanned")
        assert ksm_lease.sysfs.read_int("full_scans") >= 2
        with pytest.raises(KnobError) as busy:
            ksm_lease.write("max_page_sharing", 10)
        assert _refusal(busy.value) == errno.EBUSY
        ksm_lease.reset(FAST)  # run=2 unmerges everything, then run=0
        assert ksm_lease.sysfs.read_int("pages_shared") == 0
        assert ksm_lease.sysfs.read_int("full_scans") == 0
        assert ksm_lease.sysfs.read_int("pages_scanned") >= scanned  # never reset
        ksm_lease.write("max_page_sharing", 10)
        assert ksm_lease.sysfs.read_int("max_page_sharing") == 10
    finally:
        h.kill()


@pytest.mark.kernel
def test_switching_the_advisor_resets_pages_to_scan(ksm_lease: KsmLease) -> None:
    ksm_lease.reset({"pages_to_scan": 1234, "advisor_min_pages_to_scan": 321})
    ksm_lease.write("advisor_mode", "scan-time")
    assert ksm_lease.sysfs.read_int("pages_to_scan") == 321  # the starting value
    with pytest.raises(KnobError) as refused:
        ksm_lease.write("pages_to_scan", 777)
    assert _refusal(refused.value) == errno.EINVAL
    ksm_lease.write("advisor_mode", "none")
    assert ksm_lease.sysfs.read_int("pages_to_scan") == 100  # not 1234: the custom value is lost


EXEC_AFTER_MADVISE = """
import mmap, os, sys
m = mmap.mmap(-1, 4 * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
m[0:1] = b"x"
m.madvise(mmap.MADV_MERGEABLE)
sys.stdout.write(open("/proc/self/ksm_stat").read() + "--\\n")
sys.stdout.flush()
os.execv("/bin/cat", ["cat", "/proc/self/ksm_stat"])
"""


@pytest.mark.kernel
def test_madvise_registration_is_lost_at_exec(ksm_lease: KsmLease) -> None:
    """A madvise()d process is mergeable until it execs; the new image is not (§2.4)."""
    out = subprocess.run(
        [sys.executable, "-c", EXEC_AFTER_MADVISE], capture_output=True, text=True, check=True
    ).stdout
    before, after = (parse_ksm_stat(part) for part in out.split("--\n"))
    assert before["ksm_mergeable"] == 1
    assert before["ksm_merge_any"] == 0
    assert after["ksm_mergeable"] == 0
    assert after["ksm_merge_any"] == 0
