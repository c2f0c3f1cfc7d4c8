"""The small input files -- policy TOML, grid TOML, cost profiles, observe recordings --
meet the same standard as traces (issue 8): a regular file (a FIFO must not block), UTF-8
text (a BOM is skipped; gzip, UTF-16, Latin-1 and NUL bytes are named), sane nesting, and
a recording's manifest cannot name a file outside the recording. One line, the loader's
documented exit code (4 for bad input data; grid files are knob errors, 2), no traceback.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from planner.engine.cost import CostProfile
from planner.errors import InputDataError, KnobError, PolicyError
from planner.policy import load_policies
from planner.testing.builder import World
from planner.trace.recording import read_observed
from planner.whatif.grid import load_grid

CANARY = Path(__file__).resolve().parents[1] / "reports" / "canary" / "django-preload"
POLICY = '[sets.web]\ndefault = "prctl"\n'
GRID = "pages_to_scan = [100, 1000]\n"


def _trace(tmp_path: Path) -> Path:
    w = World(host="h")
    w.spawn(100, comm="master")
    w.map(100, 0x10000, [1, 1, 2], kind="heap")
    w.snapshot(0.0)
    out = tmp_path / "t"
    w.write_trace(out)
    return out


def _one_line(cli: Any, args: list[Any], code: int, *needles: str) -> str:
    got, _, err = cli(args)
    assert got == code, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# ----------------------------------------------------------------------------- through the CLI


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("option", "code"),
    [("--policy", 4), ("--cost-profile", 4)],
)
def test_fifo_options_of_replay_do_not_block(
    cli: Any, tmp_path: Path, option: str, code: int
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    _one_line(cli, ["replay", _trace(tmp_path), option, fifo], code, "named pipe (FIFO)")


@pytest.mark.timeout(60)
def test_fifo_grid_of_whatif_does_not_block(cli: Any, tmp_path: Path) -> None:
    fifo = tmp_path / "grid.toml"
    os.mkfifo(fifo)
    _one_line(cli, ["whatif", _trace(tmp_path), "--grid", fifo, "--json"], 2, "named pipe")


@pytest.mark.timeout(60)
def test_fifo_recording_file_does_not_block(cli: Any, tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    shutil.copytree(CANARY, rec)
    (rec / "ksm.parquet").unlink()
    os.mkfifo(rec / "ksm.parquet")
    out = tmp_path / "review"
    _one_line(
        cli,
        ["report", _trace(tmp_path), "--observed", rec, "--out", out],
        4,
        "named pipe",
    )
    assert not out.exists()


# ----------------------------------------------------------------------------- policy files


def _policy_error(tmp_path: Path, data: bytes) -> str:
    p = tmp_path / "p.toml"
    p.write_bytes(data)
    with pytest.raises(PolicyError) as info:
        load_policies(p)
    return info.value.one_line()


def test_policy_with_a_bom_is_read(tmp_path: Path) -> None:
    p = tmp_path / "p.toml"
    p.write_bytes(b"\xef\xbb\xbf" + POLICY.encode())
    assert [s.name for s in load_policies(p)] == ["web"]


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (gzip.compress(POLICY.encode()), "gzip-compressed data"),
        (POLICY.encode("utf-16"), "UTF-16"),
        (b'[sets.caf\xe9]\ndefault = "prctl"\n', "line 1: byte 0xe9 is not UTF-8"),
        (POLICY.encode() + b"# \x00\n", "line 3 contains a NUL byte"),
        (b"a = " + b"[" * 50_000 + b"]" * 50_000, "nested too deeply"),
        (b'sets = "web"', "sets"),
    ],
    ids=["gzip", "utf16", "latin1", "nul", "deep", "string-for-table"],
)
def test_bad_policy_files(tmp_path: Path, data: bytes, needle: str) -> None:
    assert needle in _policy_error(tmp_path, data)


def test_policy_path_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="is a directory"):
        load_policies(tmp_path)


def test_huge_policy_file_is_refused_unread(tmp_path: Path) -> None:
    p = tmp_path / "huge.toml"
    with p.open("wb") as f:
        f.truncate(64 << 20)  # sparse: the size alone says it is not a policy file
    with pytest.raises(PolicyError, match="larger than 16 MiB"):
        load_policies(p)


# ----------------------------------------------------------------------------- grid files


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (gzip.compress(GRID.encode()), "gzip-compressed data"),
        (b"pages_to_scan = [1, 2] # \xff\n", "byte 0xff is not UTF-8"),
        (b"a = " + b"[" * 50_000 + b"]" * 50_000, "nested too deeply"),
    ],
    ids=["gzip", "latin1", "deep"],
)
def test_bad_grid_files(tmp_path: Path, data: bytes, needle: str) -> None:
    p = tmp_path / "g.toml"
    p.write_bytes(data)
    with pytest.raises(KnobError) as info:
        load_grid(p)
    assert needle in info.value.one_line()


# ----------------------------------------------------------------------------- cost profiles


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[1, 2]", "not a JSON object"),
        ("[" * 100_000, "cannot read cost profile"),
        ("{", "cannot read cost profile"),
    ],
    ids=["list", "deep", "broken"],
)
def test_bad_cost_profiles(tmp_path: Path, text: str, needle: str) -> None:
    p = tmp_path / "c.json"
    p.write_text(text)
    with pytest.raises(InputDataError, match=needle):
        CostProfile.load(p)


# ----------------------------------------------------------------------------- recordings


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    rec = tmp_path / "rec"
    shutil.copytree(CANARY, rec)
    return rec


def test_the_canary_recording_reads(recording: Path) -> None:
    assert len(read_observed(recording).counters) > 0


def _edit_meta(rec: Path, change: Any) -> None:
    meta = json.loads((rec / "observe.json").read_text())
    change(meta)
    (rec / "observe.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda m: m["files"].update(ksm="../../etc/passwd"), "not a file name inside"),
        (lambda m: m["files"].update(ksm="/etc/passwd"), "not a file name inside"),
        (lambda m: m["files"].update(processes=7), "not a file name inside"),
        (lambda m: m.update(files="ksm.parquet"), "files must be an object"),
        (lambda m: m.update(version=True), "version"),
    ],
    ids=["relative-escape", "absolute", "not-a-string", "files-string", "version-bool"],
)
def test_recording_manifests_cannot_point_outside(
    recording: Path, change: Any, needle: str
) -> None:
    _edit_meta(recording, change)
    with pytest.raises(InputDataError, match=needle):
        read_observed(recording)


def test_recording_file_that_is_a_link_is_refused(recording: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.parquet"
    shutil.move(recording / "ksm.parquet", target)
    (recording / "ksm.parquet").symlink_to(target)
    with pytest.raises(InputDataError, match="symbolic link"):
        read_observed(recording)


def test_recording_file_that_is_not_parquet(recording: Path) -> None:
    (recording / "processes.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(InputDataError, match="cannot read"):
        read_observed(recording)


def test_recording_manifest_in_latin1(recording: Path) -> None:
    meta = (recording / "observe.json").read_bytes()
    (recording / "observe.json").write_bytes(meta.replace(b"{", b'{"x": "caf\xe9",', 1))
    with pytest.raises(InputDataError, match="not UTF-8"):
        read_observed(recording)
