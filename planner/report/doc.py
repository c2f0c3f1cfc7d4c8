"""The review document as data: sections made of blocks (text, tables, figures).

The content of a review is built once, in Python, as a :class:`Document`; the HTML page,
its Markdown twin and the data files are three renderings of that one object
(:mod:`planner.report.render`), so they cannot drift apart. Text blocks carry a tiny
inline markup that both renderings understand: ``**bold**``, ```code``` and
``[text](#section-id)``.

Tables keep raw values (bytes, fractions, seconds) next to their display format: the page
shows ``112.3`` under a ``MiB`` header while ``data/<table>.csv`` holds ``117792768`` under
``net_saved_bytes``. Column keys carry their unit, the way the rest of ksm-planner names
quantities.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from planner.jsonable import to_jsonable
from planner.report.fmt import Fmt, format_value, stable_float

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

CalloutKind = Literal["note", "warning", "decision"]


@dataclass(frozen=True)
class Column:
    """One column of a table: raw key, display label, unit and display format."""

    key: str
    label: str
    fmt: Fmt = "int"
    unit: str = ""
    #: In the data files only, not shown in the page (e.g. interval ends shown in another cell).
    hidden: bool = False

    @property
    def numeric(self) -> bool:
        """Whether cells are numbers (right-aligned)."""
        return self.fmt not in ("text", "bool")

    @property
    def raw_unit(self) -> str:
        """The unit of the raw values in data files (bytes for memory, fractions for %)."""
        if self.fmt in ("mib", "gib", "bytes"):
            return "bytes"
        if self.fmt == "pct":
            return "fraction"
        if self.fmt == "s":
            return "s"
        return self.unit

    @property
    def header(self) -> str:
        """The label with its unit, as shown: ``'saving (MiB)'``."""
        return f"{self.label} ({self.unit})" if self.unit else self.label


@dataclass(frozen=True)
class Table:
    """A table of a review, and the data file behind it (``data/<name>.csv``)."""

    name: str
    title: str
    columns: tuple[Column, ...]
    rows: tuple[Mapping[str, Any], ...]
    note: str = ""
    #: Row indexes to emphasise (the recommended scenario, a net-loss process).
    highlight: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        keys = [c.key for c in self.columns]
        if len(set(keys)) != len(keys):
            raise ValueError(f"table {self.name}: duplicate column keys")
        for i, row in enumerate(self.rows):
            missing = [k for k in keys if k not in row]
            if missing:
                raise ValueError(f"table {self.name}: row {i} lacks {missing}")

    @property
    def shown(self) -> tuple[Column, ...]:
        """The columns shown in the page (not hidden)."""
        return tuple(c for c in self.columns if not c.hidden)

    def cells(self) -> list[list[str]]:
        """Display strings of the shown columns, row by row."""
        return [[format_value(row[c.key], c.fmt) for c in self.shown] for row in self.rows]

    def records(self) -> list[dict[str, Any]]:
        """Raw values, JSON-ready (floats rounded by ``fmt.stable_float``, NaN -> None)."""
        return [{c.key: _clean(row[c.key]) for c in self.columns} for row in self.rows]

    def to_csv(self) -> str:
        """The raw values as CSV (``\\n`` line ends, header = column keys)."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow([c.key for c in self.columns])
        for rec in self.records():
            w.writerow(["" if v is None else _csv_cell(v) for v in rec.values()])
        return buf.getvalue()


def _clean(v: Any) -> Any:
    """``v`` as JSON, every float rounded to the review's precision (``fmt.stable_float``)."""
    return to_jsonable(v, float_format=stable_float)


def _csv_cell(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


@dataclass(frozen=True)
class Figure:
    """An inline SVG plot, its caption, and the tables of the numbers it draws."""

    name: str
    title: str
    svg: str
    caption: str
    data: tuple[Table, ...] = ()
    alt: str = ""


@dataclass(frozen=True)
class Para:
    """A paragraph (inline markup allowed)."""

    text: str


@dataclass(frozen=True)
class Bullets:
    """A bulleted (or numbered) list of short items (inline markup allowed)."""

    items: tuple[str, ...]
    ordered: bool = False


@dataclass(frozen=True)
class KeyFigure:
    """One headline number: what it is, its value, and a short qualifier (an interval)."""

    label: str
    value: str
    detail: str = ""


@dataclass(frozen=True)
class KeyFigures:
    """A row of headline numbers."""

    items: tuple[KeyFigure, ...]


@dataclass(frozen=True)
class Callout:
    """A boxed paragraph: the decision, a note or a warning."""

    kind: CalloutKind
    text: str
    title: str = ""


@dataclass(frozen=True)
class Code:
    """Literal text: commands to run, configuration."""

    text: str
    language: str = "sh"


@dataclass(frozen=True)
class Heading:
    """A sub-heading inside a section."""

    text: str


Block = Para | Bullets | KeyFigures | Callout | Code | Heading | Table | Figure


@dataclass(frozen=True)
class Section:
    """A numbered section of the review."""

    id: str
    title: str
    blocks: tuple[Block, ...]
    lead: str = ""  # one sentence in plain words: what this section answers

    @property
    def tables(self) -> list[Table]:
        """Every table of the section, those behind figures included."""
        out: list[Table] = []
        for b in self.blocks:
            if isinstance(b, Table):
                out.append(b)
            elif isinstance(b, Figure):
                out.extend(b.data)
        return out

    @property
    def figures(self) -> list[Figure]:
        """Every figure of the section."""
        return [b for b in self.blocks if isinstance(b, Figure)]


@dataclass(frozen=True)
class Document:
    """A whole review: title, sections, provenance and everything its numbers came from."""

    title: str
    subtitle: str
    sections: tuple[Section, ...]
    provenance: Mapping[str, Any]
    #: Extra JSON-ready results written to ``data/review.json`` next to the tables.
    data: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [t.name for t in self.tables()]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate table names {dupes}")
        figs = [f.name for f in self.figures()]
        if len(set(figs)) != len(figs):
            raise ValueError("duplicate figure names")

    def tables(self) -> list[Table]:
        """Every table, in document order."""
        return [t for s in self.sections for t in s.tables]

    def figures(self) -> list[Figure]:
        """Every figure, in document order."""
        return [f for s in self.sections for f in s.figures]

    def to_json(self) -> dict[str, Any]:
        """The numbers of the document, JSON-ready (``data/review.json``)."""
        return {
            "title": self.title,
            "provenance": _clean(dict(self.provenance)),
            "sections": [{"id": s.id, "title": s.title} for s in self.sections],
            "tables": {
                t.name: {
                    "title": t.title,
                    "columns": [
                        {"key": c.key, "label": c.label, "unit": c.raw_unit} for c in t.columns
                    ],
                    "rows": t.records(),
                }
                for t in self.tables()
            },
            "figures": {
                f.name: {"title": f.title, "data": [t.name for t in f.data]} for f in self.figures()
            },
            "results": _clean(dict(self.data)),
        }


def table(
    name: str,
    title: str,
    columns: Sequence[Column],
    rows: Iterable[Mapping[str, Any]],
    *,
    note: str = "",
    highlight: Iterable[int] = (),
) -> Table:
    """Build a :class:`Table` from any iterables."""
    return Table(name, title, tuple(columns), tuple(rows), note, tuple(highlight))


__all__ = [
    "Block",
    "Bullets",
    "Callout",
    "Code",
    "Column",
    "Document",
    "Figure",
    "Heading",
    "KeyFigure",
    "KeyFigures",
    "Para",
    "Section",
    "Table",
    "table",
]
