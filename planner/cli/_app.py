"""The typer application, and the one place where errors become exit codes."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
from collections.abc import Iterator
from typing import NoReturn

import typer

from planner import errors as E
from planner._signals import STOP_SIGNALS, handlers_swapped
from planner._version import __version__

EPILOG = (
    "Exit codes: 0 success; 1 the analysis answered 'no' (validation mismatch); 2 usage "
    "error (bad option or value; an --out that exists, is an input, is being written by "
    "another run, or is not an earlier output of the tool); 3 the environment lacks "
    "something (permission, a writable directory, memory, KSM, an optional extra, a "
    "cluster); 4 bad input data (trace, interchange file, policy file, a process that is "
    "missing or exited before anything was captured); 130 interrupted (SIGINT, Ctrl-C); "
    "143 terminated (SIGTERM); 129 hung up (SIGHUP). On an error or a signal, temporary "
    "files are removed and nothing is left at --out."
)

app = typer.Typer(
    name="ksm-planner",
    help="Trace-replay capacity planner for Linux KSM (kernel samepage merging).",
    epilog=EPILOG,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
)

#: The mapping of the exception hierarchy (planner.errors) to exit codes.
EXIT_CODES: dict[type[E.PlannerError], int] = {
    E.ValidationMismatch: 1,
    E.UsageProblem: 2,
    E.EnvironmentProblem: 3,
    E.InputDataError: 4,
    E.PlannerError: 4,
}
EXIT_INTERRUPTED = 130
#: Signals that stop a command cleanly; the exit code is 128 + the signal number.
HANDLED_SIGNALS = STOP_SIGNALS
#: errno values of an OSError that are the environment's doing (exit code 3), not a bug.
_ENVIRONMENT_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.EIO,
        errno.EMFILE,
        errno.ENFILE,
        errno.ENOMEM,
    }
)
EXIT_ENVIRONMENT = 3


def exit_code_of(err: E.PlannerError) -> int:
    """The exit code of ``err`` (the most specific class in :data:`EXIT_CODES` wins)."""
    for cls in type(err).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return 4


def fail(message: str, code: int) -> NoReturn:
    """Print one line on stderr (control characters escaped) and exit with ``code``."""
    from planner.cli._output import safe_text

    line = " ".join(message.splitlines())  # one line; other controls become visible escapes
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"ksm-planner: error: {safe_text(line)}\n")
        sys.stderr.flush()
    raise SystemExit(code)


@contextlib.contextmanager
def signals_handled(received: list[int]) -> Iterator[None]:
    """Turn SIGINT, SIGTERM and SIGHUP into :class:`planner.errors.Interrupted` for the block.

    The exception unwinds the command: ``finally`` blocks and context managers remove
    temporary outputs, terminate worker pools and close cluster clients. The signal is
    appended to ``received``: an exception raised at an awkward moment (inside an import)
    can turn into another one on its way out, and the caller still knows it was a signal.
    A second signal while the clean-up runs is ignored, so it is not cut short. A signal
    that was ignored when the program started (``nohup``, a background job) stays
    ignored. The previous handlers are restored at the end.
    """

    def handler(signum: int, _frame: object) -> None:
        if received:
            return
        received.append(signum)
        raise E.Interrupted(signum)

    with handlers_swapped(handler):
        yield


@contextlib.contextmanager
def warnings_as_notes() -> Iterator[None]:
    """Show Python warnings of libraries as one escaped ``ksm-planner: warning:`` line each."""
    import warnings

    from planner.cli._output import warn

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: object = None,
        line: str | None = None,
    ) -> None:
        warn(f"{category.__name__}: {message}")

    old = warnings.showwarning
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = old


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:  # pragma: no cover
        return f"signal {signum}"


def version_callback(value: bool) -> None:
    if value:
        sys.stdout.write(f"ksm-planner {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=version_callback,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    """Trace-replay capacity planner for Linux KSM (kernel samepage merging)."""


def _cli_exception_types() -> tuple[type[BaseException], ...]:
    """Exceptions of the CLI toolkit (typer >= 0.29 vendors click; older typer uses click)."""
    types: list[type[BaseException]] = (
        [typer.TyperException] if hasattr(typer, "TyperException") else []
    )
    try:
        import click

        types.append(click.ClickException)
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


_CLI_ERRORS = _cli_exception_types()


def _usage_line(err: BaseException) -> str:
    fmt = getattr(err, "format_message", None)
    message = fmt() if callable(fmt) else str(err)
    ctx = getattr(err, "ctx", None)
    path = getattr(ctx, "command_path", "") or "ksm-planner"
    return f"{message} (see '{path} --help')"


def one_blas_thread() -> None:
    """numpy's OpenBLAS starts a thread per core when numpy is imported, which spins about
    0.1 s of CPU waiting for work (perf: ``blas_thread_server``, 2.5 % of ``info``'s samples,
    1.7 % of a 4 M-page replay's); no command uses threaded BLAS (the what-if's fits solve
    systems of a few unknowns), so, unless the environment says otherwise, there is one BLAS
    thread: the caller's. Effective only before numpy is first imported: the entry point
    calls it before it imports a command's module."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``ksm-planner``: run a command, map errors to one line and an exit code."""
    one_blas_thread()
    from planner.cli._output import signals_received as received
    from planner.trace.io import use_system_allocator

    use_system_allocator()  # before any table is read (see its docstring)
    command = typer.main.get_command(app)
    received.clear()
    try:
        with signals_handled(received), warnings_as_notes():
            rv = command.main(args=argv, prog_name="ksm-planner", standalone_mode=False)
    except BaseException as err:
        if received:  # whatever the signal's exception became on its way out
            fail(
                f"interrupted by {_signal_name(received[0])}; temporary files were removed",
                128 + received[0],
            )
        _exit_for(err)
    code = rv if isinstance(rv, int) else 0
    raise SystemExit(code)


def _exit_for(err: BaseException) -> NoReturn:
    """Map an exception that ended a command to its line on stderr and its exit code."""
    try:
        raise err
    except E.Interrupted as exc:
        fail(f"interrupted by {_signal_name(exc.signum)}", exc.exit_code)
    except E.PlannerError as exc:
        fail(exc.one_line(), exit_code_of(exc))
    except (KeyboardInterrupt, typer.Abort):
        fail("interrupted", EXIT_INTERRUPTED)
    except MemoryError:
        fail("ran out of memory (the process reached its memory limit)", EXIT_ENVIRONMENT)
    except typer.Exit as exc:
        raise SystemExit(getattr(exc, "exit_code", 0)) from None
    except BrokenPipeError:
        # stdout was closed early (``ksm-planner ... --json | head``): end quietly.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        raise SystemExit(0) from None
    except _CLI_ERRORS as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            ctx = getattr(exc, "ctx", None)
            sys.stdout.write((ctx.get_help() if ctx is not None else "") + "\n")
            raise SystemExit(2) from None
        fail(_usage_line(exc), int(getattr(exc, "exit_code", 2) or 2))
    except OSError as exc:
        if exc.errno not in _ENVIRONMENT_ERRNOS:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        fail(f"{exc.strerror or exc}{where}", EXIT_ENVIRONMENT)
