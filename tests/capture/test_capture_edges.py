"""Capture edge cases: targets that die while read, nothing captured, the key file, races."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from planner._fs import lock_path_of
from planner.capture.keys import load_key, prepare_key
from planner.capture.session import PF_EXITING, CaptureOptions, capture
from planner.cli import main
from planner.errors import EnvironmentProblem, PlannerError
from planner.trace.io import open_trace

if TYPE_CHECKING:
    from conftest import FakeProc


def _opts(fake_proc: FakeProc, out: Path, key: Path, **kw: Any) -> CaptureOptions:
    kw.setdefault("interval_s", 0.0)
    kw.setdefault("priority", "normal")
    return CaptureOptions(
        out=out, key_file=key, proc_root=fake_proc.root, sys_root=fake_proc.sys_root, **kw
    )


def _worker(fake_proc: FakeProc, pid: int, **kw: Any) -> Any:
    p = fake_proc.process(pid, comm="worker", **kw)
    p.map(0x10000, 2)
    p.page(0x10000, fake_proc.unique_page(pid), pfn=pid * 10)
    p.page(0x11000, fake_proc.unique_page(pid + 1), pfn=pid * 10 + 1)
    return p


def _killed_mid_read(fake_proc: FakeProc, pid: int) -> Any:
    """What /proc shows of a process killed while it is read: exiting, its memory gone."""
    return fake_proc.process(pid, comm="victim", flags=PF_EXITING)  # no mapping left


def test_a_target_killed_while_read_is_recorded_gone(fake_proc: FakeProc, tmp_path: Path) -> None:
    _worker(fake_proc, 500)
    _killed_mid_read(fake_proc, 501)
    fake_proc.write()
    result = capture(_opts(fake_proc, tmp_path / "t", tmp_path / "k", pids=(500, 501)))
    rows = {r["pid"]: r for r in open_trace(tmp_path / "t").load_host().processes.to_pylist()}
    assert rows[500]["state"] == "ok"
    assert (rows[501]["state"], rows[501]["error"]) == ("gone", "exited while it was read")
    assert rows[501]["pages"] is None  # not "ok with 0 pages"
    assert result.gone == (501,)
    assert result.processes == 1


def test_a_target_whose_every_read_failed_while_exiting_is_gone(
    fake_proc: FakeProc, tmp_path: Path
) -> None:
    _worker(fake_proc, 500)
    victim = _worker(fake_proc, 502, flags=PF_EXITING)
    fake_proc.write()
    os.truncate(victim.dir / "mem", 0)  # every page read fails: the memory is gone
    result = capture(_opts(fake_proc, tmp_path / "t", tmp_path / "k", pids=(500, 502)))
    assert result.gone == (502,)


def test_an_empty_process_that_is_alive_stays_ok(fake_proc: FakeProc, tmp_path: Path) -> None:
    _worker(fake_proc, 500)
    fake_proc.process(503, comm="idle").map(0x20000, 4)  # mapped, nothing present
    fake_proc.write()
    result = capture(_opts(fake_proc, tmp_path / "t", tmp_path / "k", pids=(500, 503)))
    assert result.gone == ()
    assert result.processes == 2


def test_nothing_captured_is_exit_4_and_writes_nothing(
    fake_proc: FakeProc, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _killed_mid_read(fake_proc, 501)
    fake_proc.write()
    key = tmp_path / "cfg" / "ksm-planner" / "capture.key"
    out = tmp_path / "t"
    fake = ["--proc-root", str(fake_proc.root), "--priority", "normal"]
    with pytest.raises(SystemExit) as info:
        main(["capture", "-p", "501", "-o", str(out), "--key-file", str(key), *fake])
    err = capsys.readouterr().err
    assert info.value.code == 4
    assert err.strip() == (
        "ksm-planner: error: nothing was captured: every target process exited before it "
        "could be read (501) (check that the processes run for the whole capture)"
    )
    assert not out.exists()
    assert not key.exists()
    assert not (tmp_path / "cfg").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["proc", "sys"]


def test_a_failed_capture_creates_no_key_file(fake_proc: FakeProc, tmp_path: Path) -> None:
    _worker(fake_proc, 500).page(0x10000, fake_proc.unique_page(1), pfn=0)
    p = fake_proc.processes[500]
    p.page(0x11000, fake_proc.unique_page(2), pfn=0)  # PFNs hidden: no privilege
    fake_proc.write()
    key = tmp_path / "keys" / "capture.key"
    with pytest.raises(PlannerError, match="CAP_SYS_ADMIN"):
        capture(_opts(fake_proc, tmp_path / "t", key, pids=(500,)))
    assert not key.exists()
    assert not key.parent.exists()


def test_a_successful_capture_creates_the_key_file(fake_proc: FakeProc, tmp_path: Path) -> None:
    _worker(fake_proc, 500)
    fake_proc.write()
    key = tmp_path / "keys" / "capture.key"
    result = capture(_opts(fake_proc, tmp_path / "t", key, pids=(500,)))
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert load_key(key, create=False).key_id == result.hash_key_id
    again = capture(_opts(fake_proc, tmp_path / "t2", key, pids=(500,)))
    assert again.hash_key_id == result.hash_key_id


def test_a_failure_after_the_key_was_written_removes_it(
    fake_proc: FakeProc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _worker(fake_proc, 500)
    fake_proc.write()
    key = tmp_path / "keys" / "capture.key"

    def disk_full(*a: object, **k: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("planner.trace.io._write_manifest", disk_full)
    with pytest.raises(OSError, match="No space"):
        capture(_opts(fake_proc, tmp_path / "t", key, pids=(500,)))
    assert not key.exists()
    assert not (tmp_path / "t").exists()


def test_a_key_created_meanwhile_by_another_capture(tmp_path: Path) -> None:
    key = tmp_path / "capture.key"
    mine, theirs = prepare_key(key), prepare_key(key)
    theirs.persist()
    with pytest.raises(EnvironmentProblem, match="another capture created the key file"):
        mine.persist()
    assert load_key(key, create=False).key_id == theirs.key.key_id
    mine.discard()  # never removes another capture's key
    assert key.exists()


def test_the_key_file_is_an_input_of_capture(
    fake_proc: FakeProc, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _worker(fake_proc, 500)
    fake_proc.write()
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "capture.key").write_bytes(bytes(range(32)))
    os.chmod(keys / "capture.key", 0o600)
    key = ["--key-file", str(keys / "capture.key")]
    with pytest.raises(SystemExit) as info:
        main(
            [
                "capture",
                "-p",
                "500",
                "-o",
                str(keys),
                "--force",
                *key,
                "--proc-root",
                str(fake_proc.root),
            ]
        )
    assert info.value.code == 2
    assert "contains the input" in capsys.readouterr().err
    assert (keys / "capture.key").read_bytes() == bytes(range(32))


def test_two_captures_to_one_out(fake_proc: FakeProc, tmp_path: Path) -> None:
    _worker(fake_proc, 500)
    fake_proc.write()
    key = tmp_path / "capture.key"
    key.write_bytes(bytes(range(32)))
    os.chmod(key, 0o600)
    out = tmp_path / "t"

    def run(*extra: str) -> subprocess.Popen[str]:
        fake = ["--key-file", str(key), "--proc-root", str(fake_proc.root), "--priority", "normal"]
        argv = ["-m", "planner", "capture", "-p", "500", "-o", str(out), *fake, "--json"]
        return subprocess.Popen(
            [sys.executable, *argv, *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    first = run("-n", "2", "--interval", "3")
    try:
        t0 = time.monotonic()
        while not lock_path_of(out).exists():
            assert time.monotonic() - t0 < 60
            time.sleep(0.02)
        second = run("--force")
        _, err2 = second.communicate(timeout=60)
    finally:
        out1, err1 = first.communicate(timeout=60)
    assert second.returncode == 2
    assert f"being written by another ksm-planner run (pid {first.pid})" in err2
    assert len(err2.strip().splitlines()) == 1
    assert first.returncode == 0, err1
    assert open_trace(out).trace_hash == json.loads(out1)["trace_hash"]
    assert json.loads(out1)["snapshots"] == 2
    assert not lock_path_of(out).exists()
