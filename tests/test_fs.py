"""Outputs (planner._fs): claimed, marked, renamed atomically; --force never destroys inputs."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from planner import _fs
from planner._fs import (
    OUTPUT_MARKER,
    OUTPUT_XATTR,
    atomic_dir,
    atomic_file,
    check_output,
    claim_output,
    lock_path_of,
    marked_kind,
)
from planner._signals import signals_deferred
from planner.errors import (
    OutputBusyError,
    OutputExistsError,
    OutputNotWritableError,
    OutputRefusedError,
    UsageProblem,
)


def _write_dir(path: Path, kind: str = "review", text: str = "new", **kw: object) -> None:
    with atomic_dir(path, kind=kind, private=False, **kw) as tmp:  # type: ignore[arg-type]
        (tmp / "f.txt").write_text(text)


def _write_file(path: Path, kind: str = "export", text: str = "new", **kw: object) -> None:
    with atomic_file(path, kind=kind, private=False, **kw) as tmp:  # type: ignore[arg-type]
        tmp.write_text(text)


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


# ------------------------------------------------------------------------------ marks


def test_a_directory_output_is_marked_with_its_kind(tmp_path: Path) -> None:
    out = tmp_path / "r"
    _write_dir(out, kind="review")
    assert json.loads((out / OUTPUT_MARKER).read_text()) == {
        "kind": "review",
        "written_by": "ksm-planner",
    }
    assert marked_kind(out) == "review"
    assert (out / "f.txt").read_text() == "new"
    assert _leftovers(tmp_path) == []  # no temporary directory, no lock file


def test_a_file_output_is_marked_with_an_xattr(tmp_path: Path) -> None:
    out = tmp_path / "x.csv"
    _write_file(out, kind="export")
    assert os.getxattr(out, OUTPUT_XATTR) == b"export"
    assert marked_kind(out) == "export"
    assert marked_kind(tmp_path / "missing") is None
    (tmp_path / "plain").write_text("x")
    assert marked_kind(tmp_path / "plain") is None


def test_only_a_small_regular_mark_file_counts(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / OUTPUT_MARKER)  # reading it would block forever
    assert marked_kind(fifo) is None
    forged = tmp_path / "forged"
    forged.mkdir()
    (forged / OUTPUT_MARKER).write_text('{"kind": "review"}')  # not ours
    assert marked_kind(forged) is None


def test_an_output_written_without_a_kind_is_generic(tmp_path: Path) -> None:
    with atomic_dir(tmp_path / "g") as tmp:
        (tmp / "f").write_text("x")
    assert marked_kind(tmp_path / "g") == _fs.GENERIC_KIND


# ------------------------------------------------------------------------------ --force


def test_force_replaces_an_earlier_output_of_the_same_kind(tmp_path: Path) -> None:
    out = tmp_path / "r"
    _write_dir(out, text="old")
    (out / "extra").write_text("added by hand")
    _write_dir(out, text="new", overwrite=True)
    assert (out / "f.txt").read_text() == "new"
    assert not (out / "extra").exists()
    assert _leftovers(tmp_path) == []


def test_without_force_an_existing_output_is_kept(tmp_path: Path) -> None:
    out = tmp_path / "r"
    _write_dir(out, text="old")
    with pytest.raises(OutputExistsError, match="already exists"):
        _write_dir(out, text="new")
    assert (out / "f.txt").read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_force_refuses_an_unmarked_directory(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputRefusedError, match=f"no {OUTPUT_MARKER}"):
        _write_dir(out, overwrite=True)
    assert (out / "thesis.tex").read_text() == "years of work"
    assert _leftovers(tmp_path) == []


def test_force_refuses_an_output_of_another_kind(tmp_path: Path) -> None:
    trace = tmp_path / "t"
    _write_dir(trace, kind="trace", text="captured once, never again")
    with pytest.raises(OutputRefusedError, match=r"earlier review output, and .* is a trace"):
        _write_dir(trace, kind="review", overwrite=True)
    assert (trace / "f.txt").read_text() == "captured once, never again"


def test_force_refuses_an_unmarked_file_and_a_type_change(tmp_path: Path) -> None:
    f = tmp_path / "notes.csv"
    f.write_text("mine")
    with pytest.raises(OutputRefusedError, match=OUTPUT_XATTR):
        _write_file(f, overwrite=True)
    assert f.read_text() == "mine"
    d = tmp_path / "d"
    _write_dir(d, kind="export")
    with pytest.raises(OutputRefusedError, match="not a file"):
        _write_file(d, overwrite=True)
    _write_file(tmp_path / "e.csv", text="old")
    _write_file(tmp_path / "e.csv", text="new", overwrite=True)
    assert (tmp_path / "e.csv").read_text() == "new"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("name", [".", "..", "/", "", "sub/..", "./"])
def test_paths_that_name_no_new_entry_are_refused(tmp_path: Path, name: str) -> None:
    (tmp_path / "sub").mkdir()
    with _cwd(tmp_path), pytest.raises(OutputRefusedError, match="does not name a new"):
        _write_dir(Path(name), overwrite=True)
    assert _leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]


def test_the_current_directory_and_its_parents_are_refused(tmp_path: Path) -> None:
    _write_dir(tmp_path / "a", kind="review")  # even a marked output...
    work = tmp_path / "a" / "b"
    work.mkdir()
    with _cwd(work):
        with pytest.raises(OutputRefusedError, match="is the current directory"):
            check_output(work, kind="review", overwrite=True)
        with pytest.raises(OutputRefusedError, match="parent of the current directory"):
            check_output(tmp_path / "a", kind="review", overwrite=True)


def test_paths_related_to_an_input_are_refused(tmp_path: Path) -> None:
    d = tmp_path / "D"
    d.mkdir()
    src = d / "x.csv"
    src.write_text("input")
    trace = tmp_path / "T"
    _write_dir(trace, kind="trace")
    cases = [
        (trace, trace, "is the input"),
        (d, src, "contains the input"),
        (trace / "review", trace, "is inside the input"),
        (tmp_path / "link", trace, "is the input"),  # a symlink to the input
    ]
    (tmp_path / "link").symlink_to(trace)
    for out, inp, how in cases:
        with pytest.raises(OutputRefusedError, match=how):
            check_output(out, kind="trace", inputs=[inp], overwrite=True)
    assert src.read_text() == "input"
    assert (trace / "f.txt").exists()


def test_symbolic_links_are_never_written_through(tmp_path: Path) -> None:
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputRefusedError, match="symbolic link"):
        _write_dir(tmp_path / "dangling")
    _write_dir(tmp_path / "real")
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    with pytest.raises(OutputRefusedError, match="symbolic link"):
        _write_dir(tmp_path / "alias", overwrite=True)
    assert not (tmp_path / "nowhere").exists()
    assert (tmp_path / "alias").is_symlink()


def test_a_missing_or_odd_parent_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(OutputExistsError, match="does not exist"):
        check_output(tmp_path / "no" / "x")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageProblem, match="is not a directory"):
        check_output(tmp_path / "file" / "x")
    with pytest.raises(OutputRefusedError, match="cannot write /proc/ksm-planner-x"):
        _write_dir(Path("/proc/ksm-planner-x"))
    with pytest.raises(OutputRefusedError, match="too long"):
        _write_dir(tmp_path / ("n" * 250))


@pytest.mark.skipif(os.geteuid() != 0, reason="switches to an unprivileged uid (needs root)")
def test_an_unwritable_directory_is_an_environment_error(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    os.chmod(tmp_path, 0o755)
    os.seteuid(65534)
    try:
        with pytest.raises(OutputNotWritableError, match="Permission denied"):
            _write_dir(ro / "x")
    finally:
        os.seteuid(0)
    assert list(ro.iterdir()) == []


def test_a_failure_leaves_nothing_and_keeps_the_earlier_output(tmp_path: Path) -> None:
    out = tmp_path / "r"
    _write_dir(out, text="old")
    with pytest.raises(RuntimeError, match="boom"), atomic_dir(out, kind="review", overwrite=True):
        raise RuntimeError("boom")
    assert (out / "f.txt").read_text() == "old"
    with pytest.raises(RuntimeError, match="boom"), atomic_file(tmp_path / "f", kind="x"):
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_without_renameat2_the_fallbacks_keep_the_promises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_fs, "_renameat2", None)
    out = tmp_path / "r"
    _write_dir(out, text="old")
    _write_dir(out, text="new", overwrite=True)
    assert (out / "f.txt").read_text() == "new"
    _write_file(tmp_path / "f", text="a")
    with pytest.raises(OutputExistsError):
        _write_file(tmp_path / "f", text="b")
    assert (tmp_path / "f").read_text() == "a"
    assert _leftovers(tmp_path) == []


def test_an_output_that_appears_meanwhile_is_not_replaced(tmp_path: Path) -> None:
    out = tmp_path / "r"

    def race(tmp: Path) -> None:
        (tmp / "f.txt").write_text("mine")
        out.mkdir()  # another program (not taking our lock) created it
        (out / "theirs").write_text("keep")

    with pytest.raises(OutputExistsError), atomic_dir(out, kind="review") as tmp:
        race(tmp)
    assert (out / "theirs").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


# ------------------------------------------------------------------------------ claims

_HOLDER = textwrap.dedent(
    """
    import sys
    from planner._fs import claim_output
    with claim_output(sys.argv[1], kind="review"):
        print("claimed", flush=True)
        sys.stdin.read()
    """
)


def test_a_second_writer_fails_at_once_while_the_first_holds_the_claim(tmp_path: Path) -> None:
    out = tmp_path / "r"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "claimed"
        assert lock_path_of(out).exists()
        busy = f"another ksm-planner run \\(pid {holder.pid}\\)"
        with pytest.raises(OutputBusyError, match=busy):
            _write_dir(out)
        with pytest.raises(OutputBusyError):
            _write_dir(out, overwrite=True)
        assert not out.exists()
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        assert holder.wait(timeout=30) == 0
    assert not lock_path_of(out).exists()  # the claim removed its lock file
    _write_dir(out)  # and the path is free again
    assert _leftovers(tmp_path) == []


def test_a_lock_file_left_by_a_killed_run_does_not_block(tmp_path: Path) -> None:
    out = tmp_path / "r"
    lock_path_of(out).write_text("12345\n")  # nobody holds a lock on it
    _write_dir(out)
    assert _leftovers(tmp_path) == []


def test_claims_nest_within_one_process(tmp_path: Path) -> None:
    out = tmp_path / "r"
    with claim_output(out, kind="review", inputs=[tmp_path / "T"]):
        _write_dir(out, kind=None)  # type: ignore[arg-type]  # the library's own write
        with pytest.raises(OutputRefusedError, match="is the input"):
            check_output(out, inputs=[out])
    assert marked_kind(out) == "review"  # the kind of the claim
    assert _leftovers(tmp_path) == []


def test_signals_are_held_back_during_the_final_rename() -> None:
    import signal
    import threading

    seen: list[int] = []
    old = signal.signal(signal.SIGHUP, lambda s, f: seen.append(s))
    other = threading.Thread(target=threading.Event().wait, args=(2,), daemon=True)
    other.start()  # the kernel may hand the signal to this thread: still held back
    try:
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGHUP)
            for _ in range(1000):  # the handler would run at any of these bytecodes
                pass
            assert seen == []
        assert seen == [signal.SIGHUP]
    finally:
        signal.signal(signal.SIGHUP, old)


def test_os_errors_map_to_exit_classes(tmp_path: Path) -> None:
    target = tmp_path / "x"
    assert isinstance(
        _fs._os_error(OSError(errno.EROFS, "Read-only file system"), target),
        OutputNotWritableError,
    )
    assert isinstance(_fs._os_error(OSError(errno.ENOENT, "No such file"), target), UsageProblem)
