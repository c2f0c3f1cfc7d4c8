"""SIGINT, SIGTERM and SIGHUP stop a long command cleanly, in a real process.

Each test starts a real ``ksm-planner`` process doing long work (a what-if over a big knob
grid on the Django sample, on a local process pool or a Dask cluster; an ingest of the
sample's interchange file), sends the signal while temporary outputs exist and workers run,
and checks: the exit code (128 + the signal), one line on stderr, no temporary file or lock
left next to ``--out``, and no child process left running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "traces" / "django-preload"
BIG_GRID = ["--pages-to-scan", "100,200,300,400,500,600", "--sleep-ms", "20,50,100"]
EXPECTED = {
    signal.SIGINT: (130, "interrupted by SIGINT"),
    signal.SIGTERM: (143, "interrupted by SIGTERM"),
    signal.SIGHUP: (129, "interrupted by SIGHUP"),
}


def _start(*args: object, cwd: Path) -> subprocess.Popen[str]:
    def child_setup() -> None:  # a background test run may have SIGINT ignored: undo that
        for sig in EXPECTED:
            signal.signal(sig, signal.SIG_DFL)

    return subprocess.Popen(
        [sys.executable, "-m", "planner", *map(str, args)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=child_setup,
    )


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        with contextlib.suppress(OSError):
            out |= {int(x) for x in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()}
    return out


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _wait(condition: Any, what: str, timeout_s: float = 120.0) -> None:
    t0 = time.monotonic()
    while not condition():
        assert time.monotonic() - t0 < timeout_s, f"timed out waiting for {what}"
        time.sleep(0.05)


def _hidden(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def _stop(proc: subprocess.Popen[str], sig: signal.Signals) -> tuple[int, str, float]:
    t0 = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err, time.monotonic() - t0


def _check(code: int, err: str, sig: signal.Signals) -> None:
    want_code, want_text = EXPECTED[sig]
    lines = err.strip().splitlines()
    assert code == want_code, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"ksm-planner: error: {want_text}"), err


@pytest.mark.parametrize("sig", list(EXPECTED), ids=lambda s: s.name)
def test_a_signal_stops_a_whatif_and_its_pool(tmp_path: Path, sig: signal.Signals) -> None:
    out = tmp_path / "w"
    proc = _start("whatif", SAMPLE, *BIG_GRID, "--workers", "2", "--out", out, cwd=tmp_path)
    try:
        _wait(lambda: len(_children(proc.pid)) >= 2, "two pool workers")
        workers = _children(proc.pid)
        time.sleep(1.0)  # the workers are replaying
        assert _hidden(tmp_path) == [".w.lock"]
        code, err, took_s = _stop(proc, sig)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _check(code, err, sig)
    assert took_s < 30, f"the pool was waited for ({took_s:.1f} s) instead of terminated"
    assert [p for p in workers if _running(p)] == []
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def sample_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample as an interchange CSV (exported once for the module's ingest tests)."""
    csv = tmp_path_factory.mktemp("export") / "in.csv"
    subprocess.run(
        [sys.executable, "-m", "planner", "export", str(SAMPLE), "--out", str(csv)],
        check=True,
        capture_output=True,
    )
    return csv


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_during_ingest_removes_the_partial_trace_and_spill(
    tmp_path: Path, sig: signal.Signals, sample_csv: Path
) -> None:
    csv = tmp_path / "in.csv"
    os.link(sample_csv, csv)
    proc = _start("ingest", csv, "--out", "t", cwd=tmp_path)
    try:
        _wait(
            lambda: (
                {".t.lock", ".t.tmp"} <= {n.split("-")[0] for n in _hidden(tmp_path)}
                and any(n.startswith(".t.spill-") for n in _hidden(tmp_path))
            ),
            "the partial trace, its spill directory and its lock",
        )
        time.sleep(0.3)
        code, err, _ = _stop(proc, sig)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _check(code, err, sig)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


@pytest.fixture
def cluster() -> Iterator[Any]:
    distributed = pytest.importorskip("distributed", reason="the 'dist' extra is not installed")
    # A worker process: the command's replay keeps running in the worker after the client is
    # gone, and closing an in-process (thread) worker waited 30 s for it; a process is ended.
    with distributed.LocalCluster(
        processes=True,
        protocol="tcp://",
        host="127.0.0.1",
        n_workers=1,
        threads_per_worker=1,
        dashboard_address=":0",
    ) as c:
        yield c


def test_sigterm_closes_the_dask_client(tmp_path: Path, cluster: Any) -> None:
    scheduler = cluster.scheduler
    before = set(scheduler.clients)
    proc = _start(
        "whatif",
        SAMPLE,
        *BIG_GRID,
        "--scheduler",
        cluster.scheduler_address,
        "--out",
        "w",
        cwd=tmp_path,
    )
    try:
        _wait(lambda: len(set(scheduler.clients) - before) >= 1, "the command's Dask client")
        _wait(lambda: len(scheduler.tasks) > 0, "tasks on the cluster")
        code, err, _ = _stop(proc, signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _check(code, err, signal.SIGTERM)
    _wait(lambda: set(scheduler.clients) <= before, "the client to be closed", timeout_s=30)
    _wait(lambda: not scheduler.tasks, "the cluster to drop the command's tasks", timeout_s=60)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.kernel
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_during_validate_kernel_restores_ksm(tmp_path: Path, sig: signal.Signals) -> None:
    from planner.kernel.sysfs import KsmSysfs
    from planner.testing.builder import World

    sysfs = KsmSysfs()
    if not sysfs.available() or os.geteuid() != 0:
        pytest.skip("needs root and /sys/kernel/mm/ksm")
    w = World("h")
    w.spawn(100, comm="m")
    w.map(100, 0x10000, list(range(1, 2001)))
    for pid in (101, 102, 103):
        w.fork(100, pid)
        w.write_range(pid, 0x10000, [pid * 10000 + i for i in range(50)])
    w.snapshot(0.0)
    w.snapshot(5.0)
    w.write_trace(tmp_path / "t")
    before = sysfs.knobs()
    proc = _start(
        "validate", "t", "--kernel", "--pages-to-scan", "100", "--sleep-ms", "200", cwd=tmp_path
    )
    seen: set[int] = set()
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 60 and proc.poll() is None:
            kids = _children(proc.pid)
            seen |= kids | {g for k in kids for g in _children(k)}
            if sysfs.read("run") == 1 and len(seen) >= 4:
                break  # ksmd runs on the holders of the trace's four processes
            time.sleep(0.05)
        if proc.poll() is not None:
            _, err = proc.communicate()
            if proc.returncode == 3:
                pytest.skip(f"KSM cannot be leased here: {err.strip()}")
            pytest.fail(f"validate ended early ({proc.returncode}): {err}")
        code, err, _ = _stop(proc, sig)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _check(code, err, sig)
    assert [p for p in seen if _running(p)] == []
    assert sysfs.knobs() == before, "the knobs were not restored"
