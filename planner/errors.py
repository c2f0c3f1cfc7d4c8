"""The one exception hierarchy of ksm-planner.

Every error the library raises on purpose is a :class:`PlannerError`. Each carries a
one-line ``message`` naming the problem and a ``hint`` naming the fix. The CLI maps the
classes below to exit codes in one place (``planner.cli._app.EXIT_CODES``) and prints
``ksm-planner: error: <message> (<hint>)`` on stderr, never a traceback.
"""

from __future__ import annotations


class PlannerError(Exception):
    """Base class of every deliberate ksm-planner error."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        """The message and its hint on one line, for stderr."""
        text = self.message if not self.hint else f"{self.message} ({self.hint})"
        return " ".join(text.split())


# --- usage: the command was asked something impossible --------------------------------


class UsageProblem(PlannerError):
    """An option value or combination that cannot work (``pages_to_scan 0``, ...)."""


class KnobError(UsageProblem):
    """A ksmd knob is unknown or has an impossible value."""


class OutputExistsError(UsageProblem):
    """The output path already exists and overwriting was not requested."""


class OutputRefusedError(UsageProblem):
    """The output path may not be written: it is an input, ``.``, or not a previous output."""


class OutputBusyError(UsageProblem):
    """Another ksm-planner run is writing the same output path right now."""


# --- bad input data -----------------------------------------------------------------


class InputDataError(PlannerError):
    """Input data that cannot be used: a trace, an interchange file, a policy file."""


class TraceFormatError(InputDataError):
    """A trace or interchange file is malformed, truncated or of an unknown schema version."""


class PolicyError(InputDataError):
    """A policy or grid file is invalid, or a policy matches nothing."""


class TargetNotFoundError(InputDataError):
    """A capture target (pid, cgroup, comm pattern) does not exist or vanished."""


# --- the environment lacks something ------------------------------------------------


class EnvironmentProblem(PlannerError):
    """The machine or installation lacks something the command needs."""


class CapturePermissionError(EnvironmentProblem):
    """Missing privilege to read another process's memory, pagemap PFNs or kpageflags."""


class KernelUnsupportedError(EnvironmentProblem):
    """The kernel lacks KSM or an interface the command needs."""


class KsmBusyError(EnvironmentProblem):
    """Another process is already using KSM on this host, or the KSM lock is held."""


class OutputNotWritableError(EnvironmentProblem):
    """The output's directory cannot be written (permission, read-only filesystem, full disk)."""


class MissingExtraError(EnvironmentProblem):
    """An optional dependency is not installed."""


class ClusterError(EnvironmentProblem):
    """A Dask scheduler did not answer or a remote task failed."""


# --- the analysis ran and the answer is "no" -------------------------------------


class ValidationMismatch(PlannerError):
    """The replay and the real kernel disagree (``validate --kernel``)."""


# --- signals ------------------------------------------------------------------------


class Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP arrived: unwind (removing temporary outputs) and exit.

    Raised by the command line's signal handlers. It derives from :class:`BaseException`
    (like :class:`KeyboardInterrupt`) so that ``except Exception`` never swallows it, and
    ``finally`` blocks and context managers remove what was half-written on the way out.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal number (130, 143, 129)."""
        return 128 + self.signum


__all__ = [
    "CapturePermissionError",
    "ClusterError",
    "EnvironmentProblem",
    "InputDataError",
    "Interrupted",
    "KernelUnsupportedError",
    "KnobError",
    "KsmBusyError",
    "MissingExtraError",
    "OutputBusyError",
    "OutputExistsError",
    "OutputNotWritableError",
    "OutputRefusedError",
    "PlannerError",
    "PolicyError",
    "TargetNotFoundError",
    "TraceFormatError",
    "UsageProblem",
    "ValidationMismatch",
]
