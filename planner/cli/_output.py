"""Output written once for all commands: JSON on stdout, people-facing text on stderr.

Every string shown on a terminal passes through :func:`safe_text`: control characters
(C0 and C1, ESC, DEL) and the Unicode controls that reorder or break lines (bidirectional
overrides and isolates, line and paragraph separators) are replaced by visible escapes such
as ``\\x1b``, so that a process name, a file header or a host name cannot move the cursor,
recolour, retitle or hyperlink the user's terminal. The console :data:`stderr` does this for
every string it renders (tables, notes, warnings) and treats no string as rich markup.
JSON on stdout is safe by construction (``json.dumps`` escapes control characters).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

JSON_SCHEMA_VERSION = 1


def _escapes(newlines: bool) -> dict[int, str]:
    table: dict[int, str] = {}
    for cp in [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]:
        table[cp] = f"\\x{cp:02x}"
    for cp in [0x200E, 0x200F, 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]:
        table[cp] = f"\\u{cp:04x}"
    if newlines:
        del table[ord("\n")]
    return table


_ESCAPES_ONE_LINE = _escapes(newlines=False)
_ESCAPES_LINES = _escapes(newlines=True)


def safe_text(text: str, *, newlines: bool = False) -> str:
    """``text`` with every terminal control character replaced by a visible escape.

    Newlines are kept only with ``newlines=True`` (multi-line output such as a table or a
    CSV document); an error line never spans two lines.

    Examples
    --------
    >>> safe_text("web\\x1b]0;pwned\\x07")
    'web\\\\x1b]0;pwned\\\\x07'
    """
    return text.translate(_ESCAPES_LINES if newlines else _ESCAPES_ONE_LINE)


class SafeConsole(Console):
    """A rich console that escapes control characters in every string it renders.

    Strings are never read as rich markup (``[link=...]`` in a process name stays text);
    styled text is built with :class:`rich.text.Text` by the few callers that want it.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("markup", False)
        kwargs.setdefault("highlight", False)
        kwargs.setdefault("emoji", False)
        super().__init__(**kwargs)

    def render_str(self, text: str, **kwargs: Any) -> Text:
        """Render ``text`` (control characters escaped; newlines kept)."""
        return super().render_str(safe_text(text, newlines=True), **kwargs)


def styled(text: str, style: str) -> Text:
    """``text`` (escaped like every other string) in a rich ``style`` such as ``bold red``."""
    return Text(safe_text(text, newlines=True), style=style)


stderr = SafeConsole(stderr=True, soft_wrap=True)


def wide_console(width: int) -> SafeConsole:
    """A stderr console at least ``width`` columns wide (for a log or a pipe)."""
    return SafeConsole(stderr=True, width=max(stderr.width, width))


def emit_text(text: str) -> None:
    """Print a text document (CSV) on stdout; escaped only when stdout is a terminal."""
    if sys.stdout.isatty():
        text = safe_text(text, newlines=True)
    sys.stdout.write(text)
    sys.stdout.flush()


JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print one machine-readable JSON document on stdout.")
]
ForceFlag = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Replace the output if it is an earlier output of the same kind written by "
        "ksm-planner (never an input, an unmarked path or the current directory).",
    ),
]


def claim(
    out: Path | None,
    *,
    kind: str,
    inputs: Iterable[Path | None] = (),
    force: bool = False,
    directory: bool = True,
) -> contextlib.AbstractContextManager[Any]:
    """Claim ``--out`` for the whole command (see :func:`planner._fs.claim_output`).

    Checks at once, before any work, that ``out`` may be written (not an input, not ``.``,
    not an unmarked or foreign path under ``--force``) and locks it so that a concurrent
    run to the same path fails instead of replacing this one's output. ``None``: no output.
    """
    if out is None:
        return contextlib.nullcontext()
    from planner._fs import claim_output

    return claim_output(
        out,
        kind=kind,
        inputs=[p for p in inputs if p is not None],
        overwrite=force,
        directory=directory,
    )


def _key(k: Any) -> str:
    """A dict key as JSON writes it: strings as they are, ``true``/``false``/``null``, the
    ``repr`` of an int or a finite float, anything else (a NaN, a path, a numpy scalar)
    ``str()``'d. The same whether :func:`_clean` converts it or the C encoder does."""
    if isinstance(k, str):
        return k
    if isinstance(k, bool):
        return "true" if k else "false"
    if k is None:
        return "null"
    if isinstance(k, int):
        return int.__repr__(k)
    if isinstance(k, float) and math.isfinite(k):
        return float.__repr__(k)
    return str(k)


def _clean(obj: Any) -> Any:
    """Make ``obj`` JSON-safe: NaN/inf become null, numpy scalars become Python numbers,
    tuples lists, paths strings, keys strings (:func:`_key`)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {_key(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    item = getattr(obj, "item", None)
    if callable(item):
        return _clean(item())
    return obj


def emit_json(doc: dict[str, Any]) -> None:
    """Print ``doc`` as the one JSON document of this command (with ``schema_version``),
    made JSON-safe as :func:`_clean` does."""
    out = {"schema_version": JSON_SCHEMA_VERSION, **doc}
    sys.stdout.write(_dumps(out) + "\n")
    sys.stdout.flush()


#: A list longer than this is written an item per line (see :func:`_dumps`).
_ITEM_PER_LINE = 64


def _dumps(obj: Any, level: int = 0) -> str:
    """``json.dumps(_clean(obj), indent=1)``, but a list of more than
    :data:`_ITEM_PER_LINE` items is written an item per line, each item on its line as
    ``json.dumps`` writes it without indent. The same document; smaller ones byte for
    byte as before. Python's encoder runs in Python once it indents (0.35-0.39 s for the
    9 MB of a 4 M-page replay, whose timeline has 12,296 items), its C encoder without:
    ~0.1 s. Such items are given to the C encoder as they are, which refuses what
    :func:`_clean` would change (NaN and infinities, numpy scalars, paths, keys it cannot
    write): only those are cleaned first. Cleaning every item in Python took longer than
    writing them (0.23-0.32 s for the same replay)."""
    if isinstance(obj, dict) and obj:
        pad = "\n" + " " * (level + 1)
        # keys that write alike (None and "null") are one key, the last value at the first
        # one's place, as in _clean's dict
        keyed = {_key(k): v for k, v in obj.items()}
        items = (json.dumps(k) + ": " + _dumps(v, level + 1) for k, v in keyed.items())
        return "{" + pad + ("," + pad).join(items) + "\n" + " " * level + "}"
    if isinstance(obj, list | tuple) and obj:
        pad = "\n" + " " * (level + 1)
        if len(obj) > _ITEM_PER_LINE:
            lines = (_dumps_line(v) for v in obj)
        else:
            lines = (_dumps(v, level + 1) for v in obj)
        return "[" + pad + ("," + pad).join(lines) + "\n" + " " * level + "]"
    clean = _clean(obj)
    if clean and isinstance(clean, dict | list):  # e.g. an object's ``item()``
        return _dumps(clean, level)
    return json.dumps(clean)


def _dumps_line(obj: Any) -> str:
    """``json.dumps(_clean(obj))``, by the C encoder alone where nothing needs cleaning. The
    encoder writes a key that is not a string (None as ``null``) beside a string key that
    reads the same, where _clean keeps one: such items are cleaned first (the walk that
    finds them costs 0.03 s on a 4 M-page replay's 11,626 timeline items, the encoder
    0.08 s)."""
    if _string_keys(obj):
        try:
            return json.dumps(obj, allow_nan=False)
        except (ValueError, TypeError):
            pass
    return json.dumps(_clean(obj))


def _string_keys(obj: Any) -> bool:
    """Whether every dict key inside ``obj`` is a string."""
    if isinstance(obj, dict):
        return all(
            type(k) is str and (not isinstance(v, dict | list | tuple) or _string_keys(v))
            for k, v in obj.items()
        )
    if isinstance(obj, list | tuple):
        return all(_string_keys(v) for v in obj if isinstance(v, dict | list | tuple))
    return True


def emit_result(
    key: str, result: Any, render: Callable[[Any], None], *, as_json: bool, as_csv: bool
) -> None:
    """A result as ``--json`` (``{key: ...}`` on stdout), ``--csv`` (its ``to_csv()`` on
    stdout) or tables (``render``, on stderr); then its warnings, one line each."""
    from planner.jsonable import to_jsonable

    if as_json:
        emit_json({key: to_jsonable(result)})
    elif as_csv:
        emit_text(result.to_csv())
    else:
        render(result)
    for w in result.warnings:
        warn(w)


def emit_review(result: Any, *, as_json: bool, recommended: str, otherwise: str) -> None:
    """A written review (``report``, host or fleet): its warnings, then ``--json``
    (``{"command": "report", ...}`` on stdout) or the files written and ``recommended``
    (the result's recommendation, or ``otherwise`` when it has none) on stderr."""
    from planner.jsonable import to_jsonable

    for w in result.warnings:
        warn(w)
    if as_json:
        emit_json({"command": "report", **to_jsonable(result)})
        return
    files = result.files
    note(f"wrote {files.html}")
    note(f"      {files.markdown}, {len(files.plots)} plots, {len(files.data)} data files")
    if files.pdf:
        note(f"      {files.pdf}")
    note(f"{recommended}: " + (result.recommended or otherwise))


#: Signals received by the running command (filled by ``planner.cli._app.main``).
signals_received: list[int] = []


def _checkpoint() -> None:
    """Raise the interruption again if a signal arrived and its exception was swallowed.

    A signal's exception is raised wherever the main thread happens to be; inside an import
    a library may catch it (pyarrow does, importing pandas lazily) and carry on. Progress
    reports come from the work loops, never from clean-up code, so they are safe points to
    raise it again.
    """
    if signals_received:
        from planner.errors import Interrupted

        raise Interrupted(signals_received[0])


class RichProgress:
    """The library's :class:`planner._progress.Progress`, drawn with rich on stderr.

    Each report is also a cancellation point (:func:`_checkpoint`).
    """

    def __init__(self, progress: Progress) -> None:
        self._p = progress
        self._task: Any = None

    def start(self, task: str, total: float | None) -> None:
        _checkpoint()
        if self._task is not None:
            self._p.remove_task(self._task)
        self._task = self._p.add_task(safe_text(task), total=total)

    def advance(self, amount: float) -> None:
        _checkpoint()
        if self._task is not None:
            self._p.advance(self._task, amount)

    def finish(self) -> None:
        if self._task is not None:
            self._p.remove_task(self._task)
            self._task = None


@contextmanager
def progress() -> Iterator[RichProgress]:
    """A progress bar on stderr (drawn only when stderr is a terminal)."""
    p = Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr,
        transient=True,
        disable=not stderr.is_terminal,
    )
    with p:
        yield RichProgress(p)


def note(message: str | Text) -> None:
    """A line for people, on stderr (control characters escaped, no markup)."""
    stderr.print(message)


def warn(message: str) -> None:
    """A warning for people, on stderr (control characters escaped, no markup)."""
    stderr.print(f"ksm-planner: warning: {message}")
