"""KsmSysfs and KsmLease: on a fake sysfs tree, and (marker ``kernel``) on the real one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from planner.capture.procfs import ProcFS
from planner.errors import KernelUnsupportedError, KnobError, KsmBusyError
from planner.kernel.holder import Holder
from planner.kernel.sysfs import (
    COUNTERS,
    KERNEL_DEFAULTS,
    KsmLease,
    KsmSysfs,
    ksm_users,
    parse_knob,
)

MakeSysfs = Callable[..., KsmSysfs]
MakeProc = Callable[[Path, dict[int, str | None]], Path]

STAT_USER = (
    "ksm_rmap_items 12\nksm_zero_pages 0\nksm_merging_pages 3\nksm_process_profit 100\n"
    "ksm_merge_any: no\nksm_mergeable: yes\n"
)
STAT_IDLE = (
    "ksm_rmap_items 0\nksm_zero_pages 0\nksm_merging_pages 0\nksm_process_profit 0\n"
    "ksm_merge_any: no\nksm_mergeable: no\n"
)


def fake_lease(sysfs: KsmSysfs, tmp_path: Path, **kw: object) -> KsmLease:
    return KsmLease(
        kw.pop("knobs", None),  # type: ignore[arg-type]
        sysfs=sysfs,
        lock_path=tmp_path / "lock",
        require_root=False,
        check_users=False,
        **kw,  # type: ignore[arg-type]
    )


# ------------------------------------------------------------------------------ parsing


def test_parse_knob_reads_ints_and_the_selected_word() -> None:
    assert parse_knob("advisor_mode", "none [scan-time]\n") == "scan-time"
    assert parse_knob("general_profit", "-19200\n") == -19200
    assert parse_knob("x", "weird") == "weird"


def test_ksm_stat_is_read_through_the_injectable_procfs(
    tmp_path: Path, make_proc: MakeProc
) -> None:
    procfs = ProcFS(make_proc(tmp_path / "proc", {10: STAT_USER, 11: None}))
    assert procfs.ksm_stat(10) == {
        "ksm_rmap_items": 12,
        "ksm_zero_pages": 0,
        "ksm_merging_pages": 3,
        "ksm_process_profit": 100,
        "ksm_merge_any": False,
        "ksm_mergeable": True,
    }
    assert procfs.ksm_stat(11) == {}  # no ksm_stat (a kernel thread, an old kernel)
    assert procfs.comm(10) == "proc10"


def test_sysfs_reads_counters_and_only_owner_writable_files_as_knobs(fake_sysfs: KsmSysfs) -> None:
    assert fake_sysfs.available()
    assert set(fake_sysfs.counters()) == set(COUNTERS)
    knobs = fake_sysfs.knobs()
    assert "pages_shared" not in knobs
    assert knobs["advisor_mode"] == "none"
    assert knobs["run"] == 0
    assert knobs["pages_to_scan"] == 100


def test_ksm_users_names_processes_with_ksm_state(tmp_path: Path, make_proc: MakeProc) -> None:
    proc = make_proc(tmp_path / "proc", {101: STAT_USER, 102: STAT_IDLE, 103: None})
    users = ksm_users(str(proc))
    assert list(users) == [101]
    assert "ksm_mergeable" in users[101]
    assert "ksm_rmap_items" in users[101]
    assert ksm_users(str(proc), exclude={101}) == {}


# ------------------------------------------------------------------------------ fake tree lease


def test_lease_applies_defaults_and_knobs_then_restores_everything(
    tmp_path: Path, make_sysfs: MakeSysfs
) -> None:
    sysfs = make_sysfs(
        tmp_path / "ksm",
        run=1,
        pages_to_scan=777,
        sleep_millisecs=33,
        smart_scan=0,
        max_page_sharing=99,
    )
    before = sysfs.knobs()
    with fake_lease(sysfs, tmp_path, knobs={"pages_to_scan": 5000, "use_zero_pages": 1}) as lease:
        now = sysfs.knobs()
        assert now["run"] == 0
        assert now["pages_to_scan"] == 5000
        assert now["use_zero_pages"] == 1
        assert now["sleep_millisecs"] == KERNEL_DEFAULTS["sleep_millisecs"]
        assert now["max_page_sharing"] == 256
        assert now["smart_scan"] == 1
        lease.start()
        assert sysfs.read("run") == 1
    assert sysfs.knobs() == before


def test_lease_restores_after_an_exception(tmp_path: Path, fake_sysfs: KsmSysfs) -> None:
    before = fake_sysfs.knobs()
    seen = []

    def body() -> None:
        with fake_lease(fake_sysfs, tmp_path, knobs={"sleep_millisecs": 300}):
            seen.append(fake_sysfs.read("sleep_millisecs"))
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        body()
    assert seen == [300]
    assert fake_sysfs.knobs() == before


def test_second_lease_is_refused_while_the_lock_is_held(
    tmp_path: Path, fake_sysfs: KsmSysfs
) -> None:
    with fake_lease(fake_sysfs, tmp_path):
        with pytest.raises(KsmBusyError) as err:
            fake_lease(fake_sysfs, tmp_path).__enter__()
        assert f"pid {os.getpid()}" in err.value.message
    with fake_lease(fake_sysfs, tmp_path):  # released afterwards
        pass


def test_lease_refuses_without_ksm(tmp_path: Path) -> None:
    lease = fake_lease(KsmSysfs(str(tmp_path / "nothing")), tmp_path)
    with pytest.raises(KernelUnsupportedError, match="no KSM"):
        lease.__enter__()
    assert not (tmp_path / "lock").exists()


def test_lease_refuses_when_not_root(
    tmp_path: Path, fake_sysfs: KsmSysfs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    lease = KsmLease(sysfs=fake_sysfs, lock_path=tmp_path / "lock", check_users=False)
    with pytest.raises(KernelUnsupportedError) as err:
        lease.__enter__()
    assert "root" in err.value.one_line()


def test_lease_refuses_when_another_process_uses_ksm(
    tmp_path: Path, fake_sysfs: KsmSysfs, make_proc: MakeProc
) -> None:
    proc = make_proc(tmp_path / "proc", {4242: STAT_USER, 4343: STAT_IDLE})
    before = fake_sysfs.knobs()
    lease = KsmLease(
        {"pages_to_scan": 1},
        sysfs=fake_sysfs,
        lock_path=tmp_path / "lock",
        proc_root=str(proc),
        require_root=False,
    )
    with pytest.raises(KsmBusyError) as err:
        lease.__enter__()
    assert "4242 (proc4242" in err.value.message
    assert "4343" not in err.value.message
    assert fake_sysfs.knobs() == before  # nothing written
    with pytest.raises(KsmBusyError):
        lease.preflight()


@pytest.mark.parametrize(
    ("knobs", "match"),
    [
        ({"no_such_knob": 1}, "unknown KSM knob"),
        ({"run": 1}, "not a knob"),
        ({"advisor_mode": "fast"}, "unknown advisor_mode"),
        ({"advisor_mode": "scan-time", "pages_to_scan": 10}, "advisor is on"),
    ],
)
def test_bad_knobs_are_refused_and_nothing_stays_changed(
    tmp_path: Path, fake_sysfs: KsmSysfs, knobs: dict[str, int | str], match: str
) -> None:
    before = fake_sysfs.knobs()
    with pytest.raises(KnobError, match=match):
        fake_lease(fake_sysfs, tmp_path, knobs=knobs).__enter__()
    assert fake_sysfs.knobs() == before
    with fake_lease(fake_sysfs, tmp_path):  # the lock was released
        pass


def test_a_knob_the_kernel_lacks_may_be_asked_at_its_default_only(
    tmp_path: Path, fake_sysfs: KsmSysfs
) -> None:
    """merge_across_nodes exists only with NUMA: its default is how a one-node kernel works."""
    (fake_sysfs.path / "merge_across_nodes").unlink()
    with fake_lease(fake_sysfs, tmp_path, knobs={"merge_across_nodes": 1}) as lease:
        assert "merge_across_nodes" not in lease.applied
    with pytest.raises(KnobError, match="unknown KSM knob"):
        fake_lease(fake_sysfs, tmp_path, knobs={"merge_across_nodes": 0}).__enter__()


def test_sigterm_during_a_lease_still_restores_every_knob(
    tmp_path: Path, fake_sysfs: KsmSysfs
) -> None:
    before = fake_sysfs.knobs()
    code = (
        "import sys, time\n"
        "from planner.kernel.sysfs import KsmLease, KsmSysfs\n"
        "lease = KsmLease({'pages_to_scan': 5}, sysfs=KsmSysfs(sys.argv[1]),\n"
        "                 lock_path=sys.argv[2], require_root=False, check_users=False)\n"
        "with lease:\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(60)\n"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code, fake_sysfs.root, str(tmp_path / "lock")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready"
        assert fake_sysfs.read("pages_to_scan") == 5
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
    finally:
        p.kill()
        p.wait()
    assert p.returncode != 0
    assert fake_sysfs.knobs() == before


def test_a_lease_killed_with_sigkill_is_recovered_by_the_next_one(
    tmp_path: Path, make_sysfs: MakeSysfs
) -> None:
    sysfs = make_sysfs(tmp_path / "ksm", sleep_millisecs=45, smart_scan=0)
    host = sysfs.knobs()
    code = (
        "import os, sys\n"
        "from planner.kernel.sysfs import KsmLease, KsmSysfs\n"
        "lease = KsmLease({'pages_to_scan': 5}, sysfs=KsmSysfs(sys.argv[1]),\n"
        "                 lock_path=sys.argv[2], require_root=False, check_users=False)\n"
        "lease.__enter__()\n"
        "os.kill(os.getpid(), 9)\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, sysfs.root, str(tmp_path / "lock")], check=False
    )
    assert p.returncode == -signal.SIGKILL
    assert sysfs.read("pages_to_scan") == 5  # nothing was restored ...
    lease = fake_lease(sysfs, tmp_path, knobs={"pages_to_scan": 7})
    with lease:
        assert lease.recovered is not None
        assert lease.recovered["sleep_millisecs"] == "45"
        assert sysfs.read("pages_to_scan") == 7
    assert sysfs.knobs() == host  # ... until the next lease recovered the host's knobs
    with fake_lease(sysfs, tmp_path) as again:
        assert again.recovered is None


def test_knobs_cannot_be_written_outside_the_lease(tmp_path: Path, fake_sysfs: KsmSysfs) -> None:
    lease = fake_lease(fake_sysfs, tmp_path)
    with pytest.raises(RuntimeError):
        lease.write("pages_to_scan", 1)
    with lease:
        lease.write("pages_to_scan", 1)
    with pytest.raises(RuntimeError):
        lease.write("pages_to_scan", 1)


# ------------------------------------------------------------------------------ the real KSM


@pytest.mark.kernel
def test_real_lease_restores_a_host_with_odd_knobs_and_the_advisor_on(
    ksm_lease: KsmLease, tmp_path: Path
) -> None:
    """The outer lease sets odd values (advisor on); an inner lease must put them all back."""
    odd = {
        "sleep_millisecs": 37,
        "max_page_sharing": 17,
        "smart_scan": 0,
        "use_zero_pages": 1,
        "stable_node_chains_prune_millisecs": 1500,
        "advisor_max_cpu": 55,
        "advisor_min_pages_to_scan": 321,
        "advisor_mode": "scan-time",
    }
    ksm_lease.reset(odd)
    sysfs = ksm_lease.sysfs
    odd_state = sysfs.knobs()
    assert odd_state["advisor_mode"] == "scan-time"
    assert odd_state["pages_to_scan"] == 321  # switching the advisor on set its start value
    inner = KsmLease(
        {"pages_to_scan": 2000, "sleep_millisecs": 250}, lock_path=tmp_path / "inner.lock"
    )
    with inner:
        now = sysfs.knobs()
        assert now["advisor_mode"] == "none"
        assert now["pages_to_scan"] == 2000
        assert now["sleep_millisecs"] == 250
        assert now["max_page_sharing"] == 256
        assert now["smart_scan"] == 1
        assert now["advisor_max_cpu"] == 70
    assert sysfs.knobs() == odd_state


@pytest.mark.kernel
def test_real_lease_is_refused_while_a_process_uses_ksm(
    ksm_lease: KsmLease, tmp_path: Path
) -> None:
    h = Holder.spawn()
    try:
        h.map_region(4)
        h.write([0, 1], [7, 7])
        h.register()  # ksmd is stopped (run=0) inside the outer lease
        with pytest.raises(KsmBusyError) as err:
            KsmLease(lock_path=tmp_path / "inner.lock").__enter__()
        assert str(h.pid) in err.value.message
    finally:
        h.kill()


@pytest.mark.kernel
def test_the_knob_tables_defaults_are_this_kernels(ksm_lease: KsmLease) -> None:
    """The knob table's defaults are what the kernel boots with.

    ``ksm_lease.saved`` holds the host's knobs as they were before the lease wrote anything.
    A test host runs KSM at its boot values; a host whose KSM was tuned on purpose fails here
    with the knobs that differ, which is the point: the table must say the kernel's defaults.
    """
    host = {n: parse_knob(n, v) for n, v in ksm_lease.saved.items() if n in KERNEL_DEFAULTS}
    differ = {n: (host[n], KERNEL_DEFAULTS[n]) for n in host if host[n] != KERNEL_DEFAULTS[n]}
    assert not differ, f"this kernel's value vs the knob table's default: {differ}"
    extra = set(ksm_lease.sysfs.writable_names()) - set(KERNEL_DEFAULTS) - {"run"}
    assert not extra, f"knobs of this kernel that the table lacks: {sorted(extra)}"
    # an older kernel, or one without NUMA, lacks some of the table's knobs: those are skipped
