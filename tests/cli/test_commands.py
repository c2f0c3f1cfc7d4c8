"""The command line registers only the command it runs (planner/cli/__init__.py)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from planner.cli import COMMAND_MODULES, command_named
from tests.conftest import CliRunner
from tests.procs import run

ROOT = Path(__file__).resolve().parents[2]


def test_the_table_names_every_command_and_its_module() -> None:
    from planner.cli import app

    registered = {c.name: c.callback for c in app.registered_commands}
    assert set(registered) == set(COMMAND_MODULES)
    for name, callback in registered.items():
        assert callback is not None
        assert callback.__module__ == f"planner.cli.{COMMAND_MODULES[name]}", name


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["replay", "t", "--json"], "replay"),
        (["--help"], None),
        ([], None),
        (["-h", "info"], "info"),
        (["replya", "t"], None),
        (["whatif", "replay"], "whatif"),
    ],
)
def test_the_command_named(argv: list[str], name: str | None) -> None:
    assert command_named(argv) == name


def test_replay_imports_neither_other_commands_nor_the_capture() -> None:
    code = (
        "import json, sys; from planner.cli import load_commands; load_commands(['replay']); "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(("
        "'planner.cli.', 'planner.capture', 'planner.whatif', 'planner.report', 'pandas', "
        "'scipy')))))"
    )
    out = run([sys.executable, "-c", code], cwd=ROOT, timeout_s=120)
    assert json.loads(out.stdout) == [
        "planner.cli._app",
        "planner.cli._args",
        "planner.cli._output",
        "planner.cli.replay",
    ]


@pytest.mark.parametrize("command", ["replay", "whatif", "info"])
def test_numpy_starts_with_one_blas_thread_whatever_the_command(command: str) -> None:
    """The entry point asks OpenBLAS for one thread before the command's module imports
    numpy (``replay``, ``whatif`` and others import it when they load): otherwise it starts
    a thread per CPU, which spins. The process's threads, as the kernel lists them, once
    the command ran (its own threads gone): the main one alone, but for the background
    thread of the jemalloc that pyarrow loads (named so)."""
    code = (
        "import os, sys; from planner.cli import main\n"
        f"try: main([{command!r}, '--help'])\n"
        "except SystemExit: pass\n"
        "assert 'numpy' in sys.modules\n"
        "names = [open(f'/proc/self/task/{t}/comm').read().strip()\n"
        "         for t in os.listdir('/proc/self/task')]\n"
        "threads = [n for n in names if n != 'jemalloc_bg_thd']\n"
        "print(os.environ.get('OPENBLAS_NUM_THREADS'), len(threads))"
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    out = run([sys.executable, "-c", code], cwd=ROOT, timeout_s=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["1", "1"], out.stdout


def test_a_mistyped_command_is_told_among_all_commands(cli: CliRunner) -> None:
    code, out, err = cli(["replya", "t"])
    assert code == 2
    assert out == ""
    assert "replya" in err
    code, out, _ = cli(["--help"])
    assert code == 0
    for name in COMMAND_MODULES:
        assert name in out


def test_replay_starts_with_the_collector_paused_and_gives_it_back(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import gc

    from planner.errors import InputDataError

    seen: list[bool] = []

    def check_hosts(*_args: object) -> None:  # the command's first step, options parsed
        seen.append(gc.isenabled())
        raise InputDataError("stop here")

    monkeypatch.setattr("planner.cli._inputs.check_hosts", check_hosts)
    assert gc.isenabled()
    code, _, err = cli(["replay", tmp_path])
    assert (code, seen) == (4, [False]), err
    assert gc.isenabled()
