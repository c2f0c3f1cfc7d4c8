"""The command layer keeps its promises: no data loss, no leftovers, one line per failure.

Each case of issue 8 on outputs, option bounds and terminal safety, run through the real
command line (in-process through the ``cli`` fixture, or as separate processes where two
runs must race).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from planner._fs import lock_path_of, marked_kind
from planner.testing.builder import World
from planner.trace.io import open_trace
from tests.procs import run

Cli = Callable[[Sequence[object]], tuple[int, str, str]]
ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "traces" / "django-preload"

#: A process name and a cgroup an attacker controls (captured from a hostile host).
EVIL_COMM = "\x1b]0;pwned\x07\x1b[31mred"
EVIL_CGROUP = "/evil/<script>alert(1)</script>/[x](javascript:alert(1))"


def _world() -> World:
    w = World("web")
    w.spawn(100, comm=EVIL_COMM, cgroup=EVIL_CGROUP)
    w.map(100, 0x10000, [1, 2, 3, 4, 5, 6])
    for pid in (101, 102):
        w.fork(100, pid)
        w.write_range(pid, 0x10000 + 4 * 4096, [pid * 10, pid * 10 + 1])
    w.snapshot(0.0)
    w.snapshot(5.0)
    return w


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("traces") / "t"
    _world().write_trace(out)
    return out


def _digest(root: Path) -> dict[str, str]:
    """Every file below ``root`` (or ``root`` itself) and the SHA-256 of its bytes."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("ksm-planner: error: "), err
    return lines[0]


def _hidden(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


@contextmanager
def _cwd(path: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


# ------------------------------------------------------------------ --force and inputs


def test_report_onto_its_own_trace_is_refused(cli: Cli, trace: Path) -> None:
    before = _digest(trace)
    code, _, err = cli(["report", trace, "--out", trace, "--force", "--preset", "off"])
    assert code == 2
    assert "is the input" in _one_line(err)
    assert _digest(trace) == before


@pytest.mark.parametrize(
    ("command", "how"),
    [
        (["replay", "{T}", "--out", "{T}", "--force"], "is the input"),
        (["whatif", "{T}", "--out", "{T}/sub"], "is inside the input"),
        (["export", "{T}", "--out", "{T}/x.csv", "--force"], "is inside the input"),
        (["whatif", "{T}", "--out", "{P}", "--force", "--policies", "{P}/p.toml"], "contains"),
    ],
)
def test_outputs_never_overlap_inputs(
    cli: Cli, trace: Path, tmp_path: Path, command: list[str], how: str
) -> None:
    policies = tmp_path / "pol"
    policies.mkdir()
    (policies / "p.toml").write_text('[sets.a]\ndefault = "prctl"\n')
    before = {**_digest(trace), **_digest(policies)}
    args = [a.replace("{T}", str(trace)).replace("{P}", str(policies)) for a in command]
    code, _, err = cli(args)
    assert code == 2
    assert how in _one_line(err)
    assert {**_digest(trace), **_digest(policies)} == before
    assert _hidden(trace.parent) == []


def test_ingest_into_the_directory_of_its_input_is_refused(
    cli: Cli, trace: Path, tmp_path: Path
) -> None:
    d = tmp_path / "D"
    d.mkdir()
    code, _, err = cli(["export", trace, "--out", d / "x.csv"])
    assert code == 0, err
    before = _digest(d)
    for out, how in ((d, "contains the input"), (d / "x.csv", "is the input")):
        code, _, err = cli(["ingest", d / "x.csv", "--out", out, "--force"])
        assert code == 2
        assert how in _one_line(err)
    assert _digest(d) == before
    assert _hidden(tmp_path) == []


def test_force_replaces_only_an_earlier_output_of_the_same_command(
    cli: Cli, trace: Path, tmp_path: Path
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("not ksm-planner's")
    code, _, err = cli(["replay", trace, "--out", mine, "--force"])
    assert code == 2
    assert "not one" in _one_line(err)
    assert (mine / "notes.txt").read_text() == "not ksm-planner's"

    res = tmp_path / "res"
    assert cli(["replay", trace, "--out", res])[0] == 0
    assert marked_kind(res) == "replay"
    code, _, err = cli(["whatif", trace, "--preset", "off", "--out", res, "--force"])
    assert code == 2
    assert "is a replay" in _one_line(err)
    code, _, err = cli(["replay", trace, "--out", res, "--force", "--pages-to-scan", "10"])
    assert code == 0, err
    assert json.loads((res / "result.json").read_text())["knobs"]["pages_to_scan"] == 10

    csv = tmp_path / "x.csv"
    csv.write_text("pid\n1\n")
    code, _, err = cli(["export", trace, "--out", csv, "--force"])
    assert code == 2
    assert csv.read_text() == "pid\n1\n"
    assert _hidden(tmp_path) == []


@pytest.mark.parametrize("out", [".", "..", "/", "sub/.."])
def test_dot_paths_are_refused_and_leave_nothing(
    cli: Cli, trace: Path, tmp_path: Path, out: str
) -> None:
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    with _cwd(work):
        code, _, err = cli(["replay", trace, "--out", out, "--force"])
    assert code == 2
    assert "does not name a new file or directory" in _one_line(err)
    assert _hidden(work) == []
    assert _hidden(tmp_path) == []  # no '..old-*' next to the current directory


def test_odd_out_paths_are_one_line_each(cli: Cli, trace: Path, tmp_path: Path) -> None:
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    cases = [
        (Path("/proc/ksm-planner-test"), 2, "cannot write /proc/ksm-planner-test"),
        (tmp_path / "dangling", 2, "is a symbolic link"),
        (tmp_path / "missing" / "r", 2, "does not exist"),
        (tmp_path / "file" / "r", 2, "is not a directory"),
    ]
    for out, expected, text in cases:
        code, _, err = cli(["replay", trace, "--out", out])
        assert (code, text in _one_line(err)) == (expected, True), err
    assert not (tmp_path / "nowhere").exists()
    assert _hidden(tmp_path) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="switches to an unprivileged uid (needs root)")
def test_an_unwritable_directory_is_exit_3(cli: Cli, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    os.chmod(tmp_path, 0o755)
    os.seteuid(65534)
    try:
        code, _, err = cli(["calibrate", "--quick", "--out", ro / "p.json"])
    finally:
        os.seteuid(0)
    assert code == 3
    assert "Permission denied" in _one_line(err)
    assert list(ro.iterdir()) == []


# ------------------------------------------------------------------ two runs, one --out


@pytest.fixture(scope="module")
def big_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Django sample as an interchange file: its ingest takes a few seconds."""
    out = tmp_path_factory.mktemp("csv") / "django.csv"
    run(
        [sys.executable, "-m", "planner", "export", str(SAMPLE), "--out", str(out)],
        timeout_s=300,
        check=True,
    )
    return out


def _ksm(*args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "planner", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_claim(out: Path, pid: int, timeout_s: float = 60.0) -> None:
    """Wait until run ``pid`` holds the claim of ``out``: its lock file names it. The file
    alone is not enough: it is created before it is locked, and a run stopped in between
    holds nothing (a second run then took the claim, 1 of ~20 full runs on 2 busy CPUs)."""
    path = lock_path_of(out)
    t0 = time.monotonic()
    while True:
        try:
            if path.read_text().strip() == str(pid):
                return
        except FileNotFoundError:
            pass
        assert time.monotonic() - t0 < timeout_s, f"{path} never named pid {pid}"
        time.sleep(0.02)


@pytest.mark.parametrize("force", [False, True])
def test_a_second_ingest_to_the_same_out_fails_and_the_first_wins(
    big_csv: Path, tmp_path: Path, force: bool
) -> None:
    out = tmp_path / "t"
    first = _ksm("ingest", big_csv, "--out", out, "--json")
    try:
        _wait_for_claim(out, first.pid)
        # the first run holds its claim; stopped there, it cannot finish before the second
        # one starts (whatever the speed of the machine)
        os.kill(first.pid, signal.SIGSTOP)
        try:
            second = _ksm("ingest", big_csv, "--out", out, *(["--force"] if force else []))
            _, err2 = second.communicate(timeout=120)
        finally:
            os.kill(first.pid, signal.SIGCONT)
    finally:
        out1, err1 = first.communicate(timeout=300)
    assert second.returncode == 2
    line = _one_line(err2)
    assert f"being written by another ksm-planner run (pid {first.pid})" in line
    assert first.returncode == 0, err1
    assert open_trace(out).trace_hash == json.loads(out1)["provenance"]["trace_hash"]
    assert _hidden(tmp_path) == []


# ------------------------------------------------------------------ bounds and usage


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (["replay", "{T}", "--duration", "inf"], 2, "--duration"),
        (["replay", "{T}", "--duration", "nan"], 2, "--duration"),
        (["replay", "{T}", "--grid", "1e-6"], 2, "--grid"),
        (["replay", "{T}", "--grid", "inf"], 2, "grid step"),
        (["replay", "{T}", "--duration", "86400", "--grid", "0.01"], 2, "100,000 points"),
        (["whatif", "{T}", "--duration", "inf"], 2, "--duration"),
        (["report", "{T}", "--duration", "1e300", "--out", "{O}"], 2, "--duration"),
        (["capture", "--pid", "1", "--interval", "inf", "--out", "{O}"], 2, "--interval"),
        (["observe", "--out", "{O}", "--duration", "inf"], 2, "--duration"),
        (["observe", "--out", "{O}", "--interval", "1e9"], 2, "--interval"),
        (["whatif", "{T}", "--preset", "nosuch"], 2, "--preset 'nosuch' is not a preset"),
        (["report", "{T}", "--preset", "nosuch", "--out", "{O}"], 2, "is not a preset"),
        (["replay", "{T}", "--host", "nosuch"], 2, "has no host 'nosuch'"),
        (["whatif", "{T}", "--host", "nosuch"], 2, "has no host 'nosuch'"),
        (["report", "{T}", "--host", "nosuch", "--out", "{O}"], 2, "has no host 'nosuch'"),
        (["validate", "{T}", "--kernel", "--host", "nosuch"], 2, "has no host 'nosuch'"),
    ],
)
def test_option_values_out_of_bounds_are_one_line(
    cli: Cli, trace: Path, tmp_path: Path, args: list[str], code: int, text: str
) -> None:
    argv = [a.replace("{T}", str(trace)).replace("{O}", str(tmp_path / "o")) for a in args]
    got, _, err = cli(argv)
    assert got == code, err
    assert text in _one_line(err)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["whatif", "report"])
def test_a_knob_grid_is_bounded_before_it_is_built(
    cli: Cli, trace: Path, tmp_path: Path, command: str
) -> None:
    many = ",".join(str(v) for v in range(1, 201))
    out = ["--out", tmp_path / "r"] if command == "report" else []
    code, _, err = cli([command, trace, "--pages-to-scan", many, "--sleep-ms", many, *out])
    assert code == 2
    assert "the knob grid has 40,000 combinations" in _one_line(err)
    assert list(tmp_path.iterdir()) == []


def test_a_grid_too_fine_for_the_replay_stops_early(cli: Cli, trace: Path) -> None:
    # 0.001 s over the replay's own (automatic) duration: refused once it passes the bound,
    # long before memory runs out.
    argv = ["replay", trace, "--grid", "0.001", "--sleep-ms", "2000", "--settle-scans", "100"]
    code, _, err = cli(argv)
    assert code == 2
    assert "100,000 points" in _one_line(err)


@pytest.fixture
def hostless_trace(trace: Path, tmp_path: Path) -> Path:
    import shutil

    t = tmp_path / "hostless"
    shutil.copytree(trace, t)
    manifest = json.loads((t / "ksm-trace.json").read_text())
    manifest["hosts"] = []
    (t / "ksm-trace.json").write_text(json.dumps(manifest))
    return t


@pytest.mark.parametrize("command", ["replay", "whatif", "report", "validate"])
def test_a_trace_without_hosts_is_bad_input_for_every_command(
    cli: Cli, hostless_trace: Path, tmp_path: Path, command: str
) -> None:
    extra = {"report": ["--out", tmp_path / "r"], "validate": ["--kernel"]}.get(command, [])
    code, _, err = cli([command, hostless_trace, *extra])
    assert code == 4
    assert "host" in _one_line(err)


def test_memory_and_disk_exhaustion_are_one_line(
    cli: Cli, trace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    def no_memory(*a: object, **k: object) -> None:
        raise MemoryError

    monkeypatch.setattr("planner.trace.summary.summarize_trace", no_memory)
    code, _, err = cli(["info", trace])
    assert code == 3
    assert "ran out of memory" in _one_line(err)

    def disk_full(*a: object, **k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/data/x")

    monkeypatch.setattr("planner.trace.summary.summarize_trace", disk_full)
    code, _, err = cli(["info", trace])
    assert code == 3
    assert "No space left on device: /data/x" in _one_line(err)


# ------------------------------------------------------------------ terminal and Markdown


def _no_controls(text: str) -> None:
    bad = [c for c in text if (ord(c) < 32 and c != "\n") or 0x7F <= ord(c) < 0xA0]
    assert not bad, repr(text[:400])


def test_process_names_cannot_drive_the_terminal(cli: Cli, trace: Path) -> None:
    code, _, err = cli(["info", trace])
    assert code == 0, err
    _no_controls(err)
    assert "\\x1b]0;pwned\\x07" in err
    code, _, err = cli(["whatif", trace, "--preset", "prctl-all", "--workers", "1"])
    assert code == 0, err
    _no_controls(err)


def test_option_values_and_headers_cannot_drive_the_terminal(
    cli: Cli, trace: Path, tmp_path: Path
) -> None:
    code, _, err = cli(["replay", trace, "--host", "\x1b[2J\x1b]8;;http://x\x07web"])
    assert code == 2
    _no_controls(err)
    assert "\\x1b[2J" in _one_line(err)
    bad = tmp_path / "bad.csv"
    bad.write_text("time_s,pid,\x1b[31mcomm\x9b,page_addr,content_hash\n0,1,x,4096,1\n")
    code, _, err = cli(["ingest", bad, "--out", tmp_path / "t"])
    _no_controls(err)
    assert err.strip()


def test_rich_markup_in_data_is_shown_as_text(cli: Cli, tmp_path: Path) -> None:
    w = World("web")
    w.spawn(1, comm="[red]w[/]")
    w.map(1, 0x10000, [1, 2])
    w.snapshot(0.0)
    t = tmp_path / "t"
    w.write_trace(t)
    code, _, err = cli(["info", t])
    assert code == 0, err
    assert "[red]w[/]" in err


def test_csv_on_a_terminal_is_escaped(monkeypatch: pytest.MonkeyPatch) -> None:
    from planner.cli import _output

    class Tty:
        def __init__(self) -> None:
            self.text = ""

        def isatty(self) -> bool:
            return True

        def write(self, s: str) -> None:
            self.text += s

        def flush(self) -> None:
            pass

    tty = Tty()
    monkeypatch.setattr(sys, "stdout", tty)
    _output.emit_text("id,name\ns01,\x1b[31mred\n")
    assert tty.text == "id,name\ns01,\\x1b[31mred\n"


def test_library_warnings_are_escaped_lines(
    cli: Cli, trace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import warnings

    def noisy(*a: object, **k: object) -> None:
        warnings.warn("Glyph 27 (\x1b) missing from font(s)", UserWarning, stacklevel=1)
        raise MemoryError

    monkeypatch.setattr("planner.trace.summary.summarize_trace", noisy)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        code, _, err = cli(["info", trace])
    _no_controls(err)
    assert err.splitlines()[0] == (
        "ksm-planner: warning: UserWarning: Glyph 27 (\\x1b) missing from font(s)"
    )
    assert code == 3


def test_the_markdown_review_escapes_names(cli: Cli, tmp_path: Path) -> None:
    w = World("web")
    w.spawn(100, comm="<script>alert(1)</script>", cgroup=EVIL_CGROUP)
    w.map(100, 0x10000, [1, 2, 3, 4])
    for pid in (101, 102):
        w.fork(100, pid)
    w.snapshot(0.0)
    trace = tmp_path / "t"
    w.write_trace(trace)
    out = tmp_path / "review"
    args = ["report", trace, "--preset", "prctl-all", "--settle-scans", "4", "--workers", "1"]
    code, _, err = cli([*args, "--title", "<img src=x onerror=alert(1)>", "--out", out])
    assert code == 0, err
    _no_controls(err)
    import re

    text = (out / "review.md").read_text()
    # code blocks and spans show their content as text in every renderer: the rest is prose
    md = re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", text, flags=re.S))
    html = (out / "review.html").read_text()
    assert "# &lt;img src=x onerror=alert(1)&gt;" in md
    assert "<script>" not in md
    assert "<img" not in md
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in md
    assert re.search(r"(?<!\\)\]\(javascript:", md) is None  # no link, only text
    assert "\\[x\\](javascript:alert(1))" in md
    assert "<script>" not in html
