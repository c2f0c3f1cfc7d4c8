"""``launch``: exit codes, refusals, ``--check``, and (marker ``kernel``) a command that sees
PR_GET_MEMORY_MERGE = 1 and ``ksm_merge_any: yes``, in itself and in a forked child."""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

import planner.kernel.launch as L
from planner.errors import (
    EnvironmentProblem,
    KernelUnsupportedError,
    TargetNotFoundError,
    UsageProblem,
)
from planner.kernel.launch import LaunchResult, launch, merge_state
from planner.kernel.sysfs import KsmLease, KsmSysfs

CliRunner = Any

#: A child that reports what it sees to the file argv[1], then exits with argv[2].
PROBE = r"""
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
def state():
    stat = dict(l.replace(":", " ").split()[:2] for l in open("/proc/self/ksm_stat") if l.strip())
    return {"get": libc.prctl(68, 0, 0, 0, 0), "merge_any": stat.get("ksm_merge_any"),
            "mergeable": stat.get("ksm_mergeable")}
me = state()
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.write(w, json.dumps(state()).encode()); os._exit(0)
os.close(w); os.waitpid(pid, 0)
child = json.loads(os.read(r, 4096))
with open(sys.argv[1], "w") as f:
    json.dump({"self": me, "child": child}, f)
sys.exit(int(sys.argv[2]))
"""


@pytest.fixture
def no_merge(monkeypatch: pytest.MonkeyPatch) -> None:
    """The child's prctl is replaced by a no-op: these tests never register with KSM."""
    monkeypatch.setattr(L, "_enable_merge_any", lambda lib: 0)


def test_exit_code_is_the_commands(no_merge: None) -> None:
    res = launch([sys.executable, "-c", "import sys; sys.exit(7)"])
    assert res.returncode == 7
    assert res.exit_code == 7
    assert res.argv[0] == sys.executable


def test_a_signal_death_is_128_plus_n(no_merge: None) -> None:
    res = launch([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"])
    assert res.returncode == -signal.SIGTERM
    assert res.exit_code == 128 + signal.SIGTERM
    assert LaunchResult(("x",), 1, -9, None).to_dict()["exit_code"] == 137


def test_commands_are_found_in_path(no_merge: None, tmp_path: Path) -> None:
    script = tmp_path / "job"
    script.write_text("#!/bin/sh\nexit 3\n")
    script.chmod(0o755)
    assert launch(["job"], env={"PATH": str(tmp_path)}).exit_code == 3
    with pytest.raises(UsageProblem, match="not found"):
        launch(["surely-not-a-command-xyz"])
    with pytest.raises(UsageProblem, match="no command"):
        launch([])
    script.chmod(0o644)
    with pytest.raises(UsageProblem, match="not an executable"):
        launch([str(script)])


@pytest.mark.parametrize(
    ("err", "cls", "needle"),
    [
        (errno.EPERM, EnvironmentProblem, "refused"),
        (errno.EINVAL, KernelUnsupportedError, "does not support"),
    ],
)
def test_a_failing_prctl_in_the_child_is_reported_and_nothing_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, err: int, cls: type[Exception], needle: str
) -> None:
    monkeypatch.setattr(L, "_enable_merge_any", lambda lib: err)
    marker = tmp_path / "ran"
    with pytest.raises(cls, match=needle) as info:
        launch([sys.executable, "-c", f"open({str(marker)!r}, 'w')"])
    assert marker.exists() is False
    if err == errno.EPERM:
        assert not isinstance(info.value, KernelUnsupportedError)


def test_a_kernel_without_the_prctl_is_refused_before_forking(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def unsupported() -> bool:
        raise L._prctl_error(errno.EINVAL, "PR_GET_MEMORY_MERGE")

    monkeypatch.setattr(L, "get_memory_merge", unsupported)
    marker = tmp_path / "ran"
    with pytest.raises(KernelUnsupportedError, match="PR_GET_MEMORY_MERGE") as info:
        launch([sys.executable, "-c", f"open({str(marker)!r}, 'w')"])
    assert "6.4" in (info.value.hint or "")
    assert not marker.exists()


def test_a_stopped_ksmd_is_noted(no_merge: None, make_sysfs: Any, tmp_path: Path) -> None:
    notes: list[str] = []
    stopped = make_sysfs(tmp_path / "off", run=0)
    launch(["true"], notify=notes.append, sysfs=stopped)
    assert len([n for n in notes if "not running" in n]) == 1
    notes.clear()
    launch(["true"], notify=notes.append, sysfs=make_sysfs(tmp_path / "on", run=1))
    assert not [n for n in notes if "not running" in n]


def test_losing_the_flag_at_exec_is_noted(no_merge: None) -> None:
    # with the prctl faked away, the command runs without MERGE_ANY: that is what an old
    # kernel that drops the flag at exec looks like from outside
    notes: list[str] = []
    res = launch([sys.executable, "-c", "import time; time.sleep(0.2)"], notify=notes.append)
    assert res.merge_any_after_exec is False
    assert any("lost KSM at exec" in n for n in notes)


def test_merge_state_reads_ksm_stat(make_proc: Any, tmp_path: Path) -> None:
    proc = make_proc(
        tmp_path / "proc",
        {
            10: "ksm_rmap_items 5\nksm_merging_pages 2\nksm_merge_any: yes\nksm_mergeable: yes\n",
            11: "ksm_rmap_items 0\n",
            12: None,
        },
    )
    s = merge_state(10, proc_root=str(proc))
    assert (s.merge_any, s.mergeable, s.comm) == (True, True, "proc10")
    assert s.to_dict()["ksm_stat"]["ksm_merging_pages"] == 2
    with pytest.raises(KernelUnsupportedError, match="no ksm_merge_any"):
        merge_state(11, proc_root=str(proc))
    with pytest.raises(KernelUnsupportedError, match="does not exist"):
        merge_state(12, proc_root=str(proc))
    with pytest.raises(TargetNotFoundError):
        merge_state(13, proc_root=str(proc))


# ------------------------------------------------------------------------------ CLI


def test_cli_check_json_of_this_process(cli: CliRunner) -> None:
    code, out, err = cli(["launch", "--check", os.getpid(), "--json"])
    assert code == 0, err
    doc = json.loads(out)
    assert doc["pid"] == os.getpid()
    assert doc["merge_any"] is False  # ksm-planner itself never sets the flag
    code, out, err = cli(["launch", "--check", os.getpid()])
    assert code == 0
    assert f"pid {os.getpid()}" in err
    assert "merge_any no" in err


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["launch"], 2, "no command"),
        (["launch", "--json", "--", "true"], 2, "--json only goes with --check"),
        (["launch", "--check", "1", "--", "true"], 2, "takes no command"),
        (["launch", "--", "surely-not-a-command-xyz"], 2, "not found"),
        (["launch", "--check", "999999999"], 4, "no process"),
    ],
)
def test_cli_refusals(cli: CliRunner, args: list[str], code: int, needle: str) -> None:
    got, out, err = cli(args)
    assert got == code
    assert needle in err
    assert out == ""
    assert "Traceback" not in err


def test_cli_passes_options_after_the_command_to_it(cli: CliRunner, no_merge: None) -> None:
    code, _, err = cli(
        ["launch", sys.executable, "-c", "import sys; sys.exit(int(sys.argv[1]))", "9"]
    )
    assert code == 9, err


# ------------------------------------------------------------------------------ real kernel


@pytest.mark.kernel
def test_the_command_and_its_children_have_merge_any(
    cli: CliRunner, tmp_path: Path, ksm_lease: KsmLease
) -> None:
    # ksmd is stopped by the lease: the command registers with KSM but nothing is merged
    report = tmp_path / "probe.json"
    code, _, err = cli(["launch", "--", sys.executable, "-c", PROBE, report, "7"])
    assert code == 7, err
    seen = json.loads(report.read_text())
    assert seen["self"] == {"get": 1, "merge_any": "yes", "mergeable": "yes"}
    assert seen["child"] == {"get": 1, "merge_any": "yes", "mergeable": "yes"}  # inherited by fork
    assert "not running" in err
    assert merge_state(os.getpid()).merge_any is False  # only the child set the flag
    assert KsmSysfs().read_int("run") == 0  # launch wrote nothing


@pytest.mark.kernel
def test_launch_reports_merge_any_after_exec(tmp_path: Path, ksm_lease: KsmLease) -> None:
    res = launch([sys.executable, "-c", "import time; time.sleep(0.3)"])
    assert res.merge_any_after_exec is True
    assert res.exit_code == 0
