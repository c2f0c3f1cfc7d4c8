"""``ksm-planner capture`` on the command line: exit codes, one-line errors, JSON output."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from planner.cli import main
from tests.procs import run

if TYPE_CHECKING:
    from conftest import FakeProc


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def _one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ksm-planner: error: ")
    assert "Traceback" not in err
    return lines[0]


def _fake_worker(fake_proc: FakeProc, pfn: int) -> None:
    p = fake_proc.process(500, comm="worker", rss_anon_kb=8)
    p.map(0x10000, 2)
    p.page(0x10000, fake_proc.unique_page(1), pfn=pfn)
    p.page(0x11000, fake_proc.unique_page(2), pfn=pfn + 1 if pfn else 0)
    fake_proc.write()


def test_missing_pid_exits_4(
    fake_proc: FakeProc, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_proc.write()
    code, out, err = _cli(
        [
            "capture",
            "--pid",
            "4242",
            "--out",
            str(tmp_path / "t"),
            "--proc-root",
            str(fake_proc.root),
        ],
        capsys,
    )
    assert code == 4
    assert out == ""
    assert "no process with pid 4242" in _one_error_line(err)
    assert not (tmp_path / "t").exists()


def test_hidden_pfns_exit_3(
    fake_proc: FakeProc, tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_worker(fake_proc, pfn=0)  # what pagemap shows without CAP_SYS_ADMIN
    args = ["capture", "-p", "500", "-o", str(tmp_path / "t"), "--key-file", str(key_file)]
    code, out, err = _cli([*args, "--proc-root", str(fake_proc.root)], capsys)
    assert code == 3
    assert out == ""
    assert "CAP_SYS_ADMIN" in _one_error_line(err)
    assert not (tmp_path / "t").exists()


def test_json_result_and_existing_output(
    fake_proc: FakeProc, tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_worker(fake_proc, pfn=300)
    out_dir = tmp_path / "t"
    args = [
        "capture",
        "-p",
        "500",
        "-o",
        str(out_dir),
        "--key-file",
        str(key_file),
        "--priority",
        "normal",
    ]
    args += [
        "--proc-root",
        str(fake_proc.root),
        "--label",
        "service=web",
        "-n",
        "2",
        "--interval",
        "0",
    ]
    code, out, err = _cli([*args, "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["schema_version"] == 1
    assert doc["command"] == "capture"
    assert (doc["pages"], doc["snapshots"], doc["processes"]) == (4, 2, 1)
    assert doc["trace_hash"].startswith("sha256:")
    assert doc["out"] == str(out_dir)

    code, out, err = _cli(args, capsys)  # exists, no --force
    assert code == 2
    assert "already exists" in _one_error_line(err)

    code, out, err = _cli([*args, "--force"], capsys)
    assert code == 0
    assert out == ""
    assert "captured 2 snapshot(s) of 1 process(es)" in err


@pytest.mark.parametrize(
    ("extra", "text"),
    [
        (["--label", "oops"], "KEY=VALUE"),
        (["--snapshots", "0"], "--snapshots"),
        (["--priority", "urgent"], "urgent"),
    ],
)
def test_usage_errors_exit_2(
    fake_proc: FakeProc,
    tmp_path: Path,
    extra: list[str],
    text: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake_proc.write()
    args = [
        "capture",
        "-p",
        "1",
        "-o",
        str(tmp_path / "t"),
        "--proc-root",
        str(fake_proc.root),
        *extra,
    ]
    code, _out, err = _cli(args, capsys)
    assert code == 2
    assert text in _one_error_line(err)


def test_no_target_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _cli(["capture", "-o", str(tmp_path / "t")], capsys)
    assert code == 2
    assert "--pid, --cgroup or --comm" in _one_error_line(err)


def test_real_cli_missing_pid(tmp_path: Path) -> None:
    """The installed entry point, on the real /proc: a pid that cannot exist."""
    proc = run(
        [
            sys.executable,
            "-m",
            "planner",
            "capture",
            "--pid",
            "2147483647",
            "--out",
            str(tmp_path / "t"),
        ],
        timeout_s=60,
    )
    assert proc.returncode == 4
    assert proc.stdout == ""
    assert proc.stderr.strip() == (
        "ksm-planner: error: no process with pid 2147483647 (check the pid with 'ps -p')"
    )


def test_sampling_options(
    fake_proc: FakeProc, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_worker(fake_proc, pfn=600)
    base = ["capture", "--pid", "500", "--proc-root", str(fake_proc.root), "--priority", "normal"]
    key = ["--key-file", str(tmp_path / "k.key")]
    out = tmp_path / "t"
    code, _, err = _cli(
        [*base, *key, "--out", str(out), "--snapshots", "2", "--interval", "0.2",
         "--sample-ms", "50", "--no-soft-dirty"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "sampled" in err
    assert "soft-dirty tracking is off (--no-soft-dirty)" in err
    code, _, err = _cli([*base, *key, "--out", str(tmp_path / "u"), "--sample-ms", "5"], capsys)
    assert code == 2
    assert "--sample-ms" in _one_error_line(err)
    code, _, err = _cli(
        [*base, *key, "--out", str(tmp_path / "v"), "--interval", "1", "--sample-ms", "2000"],
        capsys,
    )
    assert code == 2
    assert "longer than --interval" in _one_error_line(err)
    assert not (tmp_path / "v").exists()
