"""Rendering: one self-contained HTML page, its Markdown twin, data files; atomic, deterministic."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from planner.errors import OutputExistsError, OutputRefusedError
from planner.report import render
from planner.report.render import inline_html, md_table, write_report
from planner.report.review import build_review


@pytest.fixture(scope="module")
def doc(small_inputs: Any) -> Any:
    return build_review(small_inputs)


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_written_files(doc: Any, tmp_path: Path) -> None:
    files = write_report(doc, tmp_path / "r")
    names = set(_tree(tmp_path / "r"))
    assert {"review.html", "review.md", "data/review.json"} <= names
    assert {f"plots/{f.name}.svg" for f in doc.figures()} <= names
    assert {f"data/{t.name}.csv" for t in doc.tables()} <= names
    assert files.pdf is None
    assert "review.pdf" not in names
    assert len(files.plots) == len(doc.figures()) >= 5


def test_html_is_self_contained(doc: Any, tmp_path: Path) -> None:
    html = write_report(doc, tmp_path / "r").html.read_text()
    assert "Content-Security-Policy" in html
    assert "default-src 'none'" in html
    assert "<script" not in html.lower()
    assert not re.search(r'(?:src|href)\s*=\s*["\']?(?:https?:)?//', html, re.I)
    assert not re.search(r"url\(\s*['\"]?(?:https?:)?//", html, re.I)
    assert "@import" not in html
    assert html.count('<svg class="chart"') == len(doc.figures())
    assert html.count('<section id="') == 13
    # the CSS is inlined verbatim (not HTML-escaped)
    assert 'font-family: Arial, "Liberation Sans"' in html


def test_markdown_twin(doc: Any, tmp_path: Path) -> None:
    out = write_report(doc, tmp_path / "r")
    md = out.markdown.read_text()
    assert md.count("\n## ") == 13
    for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (out.out / target).is_file()
    # every table row has as many cells as its header
    for block in re.findall(r"((?:^\|.*\|\n)+)", md, re.M):
        lines = block.strip().split("\n")
        widths = {len(re.split(r"(?<!\\)\|", line)) for line in lines}
        assert len(widths) == 1, lines[:3]
    assert "\n\n\n" not in md


def test_data_json_is_strict_and_sorted(doc: Any, tmp_path: Path) -> None:
    text = (write_report(doc, tmp_path / "r").out / "data/review.json").read_text()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert text == json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    assert set(data["tables"]) == {t.name for t in doc.tables()}


def test_same_document_same_bytes(doc: Any, tmp_path: Path) -> None:
    write_report(doc, tmp_path / "a")
    write_report(doc, tmp_path / "b")
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")


def test_existing_output_is_kept_unless_forced(doc: Any, tmp_path: Path) -> None:
    out = tmp_path / "r"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(OutputExistsError):
        write_report(doc, out)
    with pytest.raises(OutputRefusedError):  # not an earlier review: never replaced
        write_report(doc, out, overwrite=True)
    assert (out / "mine.txt").read_text() == "keep"
    (out / "mine.txt").unlink()
    out.rmdir()
    write_report(doc, out)
    (out / "mine.txt").write_text("added later")
    write_report(doc, out, overwrite=True)  # an earlier review: replaced
    assert not (out / "mine.txt").exists()
    assert (out / "review.html").exists()


def test_failure_leaves_nothing(doc: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(html: str, target: Path) -> None:
        target.write_bytes(b"%PDF half")
        raise RuntimeError("printer on fire")

    monkeypatch.setattr(render, "render_pdf", boom)
    with pytest.raises(RuntimeError, match="printer on fire"):
        write_report(doc, tmp_path / "r", pdf=True)
    assert list(tmp_path.iterdir()) == []


def test_pdf(doc: Any, tmp_path: Path) -> None:
    pytest.importorskip("weasyprint", reason="the pdf extra is not installed")
    out = write_report(doc, tmp_path / "r", pdf=True)
    assert out.pdf is not None
    data = out.pdf.read_bytes()
    assert data.startswith(b"%PDF")
    assert len(data) > 20_000


def test_inline_markup_escapes_html() -> None:
    assert str(inline_html("<b>x</b> **y** *z* `<i>`")) == (
        "&lt;b&gt;x&lt;/b&gt; <strong>y</strong> <em>z</em> <code>&lt;i&gt;</code>"
    )
    assert str(inline_html("[a](javascript:x)")) == "[a](javascript:x)"  # only #anchors link


def test_md_table_escapes_pipes(doc: Any) -> None:
    t = doc.tables()[0]
    text = md_table(t, "Table 1.")
    assert text.startswith("**Table 1.** ")
