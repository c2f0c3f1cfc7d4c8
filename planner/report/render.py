"""Render a review :class:`~planner.report.doc.Document`: HTML page, Markdown twin, data, PDF.

Output directory layout (written atomically: all of it or nothing)::

    OUT/review.html        one self-contained page: CSS and SVG plots inlined, no scripts,
                           a Content-Security-Policy that forbids every external load
    OUT/review.md          the Markdown twin (plots linked from plots/)
    OUT/plots/<name>.svg   every plot as a standalone SVG file
    OUT/data/<table>.csv   the raw numbers of every table and every plot
    OUT/data/review.json   all tables, provenance and the results behind the text
    OUT/review.pdf         with ``pdf=True`` (WeasyPrint, extra ``pdf``)

Rendering is deterministic: no timestamps, JSON with sorted keys and rounded floats, SVG
with a fixed hash salt. The same document always gives the same bytes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from planner._deps import require
from planner._fs import atomic_dir
from planner.report.charts import standalone_svg
from planner.report.doc import Document, Table

if TYPE_CHECKING:
    import os

    import jinja2

HTML_NAME = "review.html"
MARKDOWN_NAME = "review.md"
PDF_NAME = "review.pdf"
JSON_NAME = "review.json"
PLOTS_DIR = "plots"
DATA_DIR = "data"
#: Tables behind a figure longer than this are only in ``data/`` (not inlined in the page).
MAX_INLINE_ROWS = 80

_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_EM = re.compile(r"(?<![\w*])\*(?![\s*])([^*]+?)(?<!\s)\*(?![\w*])")
_LINK = re.compile(r"\[([^\]]+)\]\((#[A-Za-z0-9_-]+)\)")


def inline_html(text: str) -> str:
    """Escape ``text`` for HTML and turn ``**b**``, ``*i*``, ```c``` and ``[t](#id)`` into markup.

    Examples
    --------
    >>> str(inline_html("**2 <3** *so* `a*b` [see](#cost) 2 * 3 * 4"))
    '<strong>2 &lt;3</strong> <em>so</em> <code>a*b</code> <a href="#cost">see</a> 2 * 3 * 4'
    """
    from markupsafe import Markup, escape

    parts = _CODE.split(str(text))
    out: list[str] = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append(f"<code>{escape(part)}</code>")
            continue
        s = str(escape(part))
        s = _BOLD.sub(r"<strong>\1</strong>", s)
        s = _EM.sub(r"<em>\1</em>", s)
        s = _LINK.sub(r'<a href="\2">\1</a>', s)
        out.append(s)
    return Markup("".join(out))


_MD_LINK = re.compile(r"(!?)\[([^\]\n]*)\]\((?!#)")


def md_text(text: str) -> str:
    """Text for the Markdown review: data in it cannot become HTML, a link or an image.

    Outside code spans, ``&``, ``<`` and ``>`` become entities (a process named
    ``<script>`` stays text in every Markdown renderer) and ``[t](url)`` / ``![t](url)``
    lose their brackets unless the URL is a ``#section`` link of the document itself.
    The document's own inline markup (``**bold**``, ``*em*``, ```code```, ``[t](#id)``)
    is kept.

    Examples
    --------
    >>> md_text("<script>x</script> `a<b` [see](#cost) [x](javascript:y)")
    '&lt;script&gt;x&lt;/script&gt; `a<b` [see](#cost) \\\\[x\\\\](javascript:y)'
    """
    parts = _CODE.split(str(text))
    out: list[str] = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append(f"`{part}`")
            continue
        s = part.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        out.append(_MD_LINK.sub(lambda m: f"{m[1]}\\[{m[2]}\\](", s))
    return "".join(out)


def md_cell(text: str) -> str:
    """Text made safe for a Markdown table cell (see :func:`md_text`)."""
    return md_text(str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " "))


def md_table(t: Table, label: str) -> str:
    """A GitHub-flavoured Markdown table, with its caption, note and data file."""
    head = "| " + " | ".join(md_cell(c.header) for c in t.shown) + " |"
    rule = "|" + "|".join("---:" if c.numeric else "---" for c in t.shown) + "|"
    rows = []
    for i, cells in enumerate(t.cells()):
        shown = [f"**{md_cell(c)}**" if i in t.highlight and c else md_cell(c) for c in cells]
        rows.append("| " + " | ".join(shown) + " |")
    parts = [f"**{label}** {md_text(t.title)}", "", head, rule, *rows]
    if t.note:
        parts += ["", md_text(t.note)]
    parts += ["", f"Data: `{DATA_DIR}/{t.name}.csv`"]
    return "\n".join(parts)


def _env() -> jinja2.Environment:
    require("jinja2", extra="report", purpose="review documents")
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("planner.report", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "html.j2")),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["inline"] = inline_html
    env.filters["md_cell"] = md_cell
    env.filters["md_text"] = md_text
    env.filters["md_table"] = md_table
    return env


def _numbers(doc: Document) -> dict[str, int]:
    """Table and figure numbers, in document order (tables behind figures are not numbered)."""
    out: dict[str, int] = {}
    n_tab = n_fig = 0
    for s in doc.sections:
        for b in s.blocks:
            if isinstance(b, Table):
                n_tab += 1
                out[b.name] = n_tab
            elif b.__class__.__name__ == "Figure":
                n_fig += 1
                out[b.name] = n_fig  # type: ignore[union-attr]
    return out


def _context(doc: Document) -> dict[str, Any]:
    prov = doc.provenance
    meta = [f"{prov.get('tool_version', '')}"]
    if prov.get("trace_hash"):
        meta.append(f"trace `{prov['trace_hash']}`")
    return {
        "doc": doc,
        "numbers": _numbers(doc),
        "meta_line": " · ".join(m for m in meta if m),
        "footer": str(prov.get("footer", "")),
        "plots_dir": PLOTS_DIR,
        "max_inline_rows": MAX_INLINE_ROWS,
    }


def render_html(doc: Document) -> str:
    """The review as one self-contained HTML page."""
    css = resources.files("planner.report").joinpath("templates/report.css").read_text()
    html = _env().get_template("review.html.j2").render(css=css.strip(), **_context(doc))
    return _tidy(html)


def render_markdown(doc: Document) -> str:
    """The review as GitHub-flavoured Markdown (plots linked as ``plots/<name>.svg``)."""
    text = _env().get_template("review.md.j2").render(**_context(doc))
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def _tidy(html: str) -> str:
    html = re.sub(r"[ \t]+\n", "\n", html)
    return re.sub(r"\n{2,}", "\n", html).strip() + "\n"


def render_pdf(html: str, target: Path) -> None:
    """Print the HTML page to PDF with WeasyPrint (every URL fetch is refused)."""
    weasyprint = require("weasyprint", extra="pdf", purpose="PDF reviews")

    def no_fetch(url: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        raise ValueError(f"review documents load nothing external ({url})")

    weasyprint.HTML(string=html, url_fetcher=no_fetch).write_pdf(str(target))


def data_json(doc: Document) -> str:
    """``data/review.json``: sorted keys, rounded floats, one trailing newline."""
    return json.dumps(doc.to_json(), indent=1, sort_keys=True, ensure_ascii=False) + "\n"


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`write_report` wrote."""

    out: Path
    html: Path
    markdown: Path
    pdf: Path | None
    plots: tuple[Path, ...]
    data: tuple[Path, ...]


def write_report(
    doc: Document,
    out: str | os.PathLike[str],
    *,
    pdf: bool = False,
    overwrite: bool = False,
) -> ReportFiles:
    """Write a review's HTML, Markdown, plots and data into the directory ``out``, atomically.

    Parameters
    ----------
    doc
        The review.
    out
        The directory to create (its parent must exist).
    pdf
        Also print ``review.pdf`` (needs the ``pdf`` extra).
    overwrite
        Replace ``out`` if it exists.

    Raises
    ------
    OutputExistsError
        ``out`` exists and ``overwrite`` is false, or its parent does not exist.
    MissingExtraError
        jinja2/matplotlib (extra ``report``) or WeasyPrint (extra ``pdf``) is missing.
    """
    target = Path(out)
    html = render_html(doc)
    markdown = render_markdown(doc)
    if pdf:
        require("weasyprint", extra="pdf", purpose="PDF reviews")
    plots: list[str] = []
    data: list[str] = []
    with atomic_dir(target, overwrite=overwrite, private=False) as tmp:
        (tmp / HTML_NAME).write_text(html, encoding="utf-8")
        (tmp / MARKDOWN_NAME).write_text(markdown, encoding="utf-8")
        (tmp / PLOTS_DIR).mkdir()
        for fig in doc.figures():
            name = f"{PLOTS_DIR}/{fig.name}.svg"
            (tmp / name).write_text(standalone_svg(fig.svg), encoding="utf-8")
            plots.append(name)
        (tmp / DATA_DIR).mkdir()
        for t in doc.tables():
            name = f"{DATA_DIR}/{t.name}.csv"
            (tmp / name).write_text(t.to_csv(), encoding="utf-8")
            data.append(name)
        (tmp / DATA_DIR / JSON_NAME).write_text(data_json(doc), encoding="utf-8")
        data.append(f"{DATA_DIR}/{JSON_NAME}")
        if pdf:
            render_pdf(html, tmp / PDF_NAME)
    return ReportFiles(
        out=target,
        html=target / HTML_NAME,
        markdown=target / MARKDOWN_NAME,
        pdf=target / PDF_NAME if pdf else None,
        plots=tuple(target / p for p in plots),
        data=tuple(target / d for d in data),
    )


__all__ = [
    "ReportFiles",
    "data_json",
    "inline_html",
    "md_table",
    "render_html",
    "render_markdown",
    "render_pdf",
    "write_report",
]
