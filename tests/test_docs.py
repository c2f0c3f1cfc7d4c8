"""Every document the project cites is in the repository, and every cited section exists.

The text files of ``planner/``, ``tests/``, ``traces/``, ``reports/``, ``docs/`` and the README
are scanned for

* paths under ``docs/`` ending in ``.md``, optionally with ``#anchor``: the file must exist, and
  the anchor must be the slug of one of its headings;
* section marks (``§4.2``, ranges such as ``§1.3-§1.4`` or ``§6.1-6.2``): each belongs to the
  nearest ``docs/`` document cited before it in the same file -- in a file under ``docs/``, to
  that file itself unless a document is cited earlier on the same line -- and must be the
  number of one of that document's headings (``## 4.`` / ``### 4.2``). A mark with no document
  to belong to is an error too;
* names of Markdown files anywhere in the text: each must exist in the repository (from the
  root, next to the citing file, or somewhere by its name), which catches documents that only
  exist outside the repository;
* paths into the machine's shared research folder, which the project must never depend on.

This file is the checker and holds deliberately broken examples, so it does not scan itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("planner", "tests", "traces", "reports", "docs", "README.md")
SKIP_DIRS = frozenset(
    {".venv", "__pycache__", ".git", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
)
MAX_BYTES = 4 << 20
SELF = Path(__file__).resolve()

DOC_PATH = re.compile(r"docs/[A-Za-z0-9_./-]*[A-Za-z0-9_-]\.md(?:#[A-Za-z0-9_-]+)?")
SECTION = re.compile(r"§\s?(\d+(?:\.\d+)*)(?:\s?[-–]\s?§?\s?(\d+(?:\.\d+)*))?")
MD_NAME = re.compile(r"[A-Za-z0-9_./-]*[A-Za-z0-9_-]\.md\b")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)
NUMBERED = re.compile(r"^(\d+(?:\.\d+)*)\.?(?:\s|$)")
FORBIDDEN = ("/work/shared",)


@dataclass(frozen=True)
class Doc:
    """The citable parts of one Markdown document."""

    sections: frozenset[str]
    anchors: frozenset[str]


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens.

    >>> slug("4.4 Timing: jiffies and the timer wheel")
    '44-timing-jiffies-and-the-timer-wheel'
    """
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def parse_doc(text: str) -> Doc:
    """Numbered sections and heading anchors of a Markdown text."""
    sections, anchors = set(), set()
    for m in HEADING.finditer(text):
        title = m.group(2)
        anchors.add(slug(title))
        num = NUMBERED.match(title)
        if num:
            sections.add(num.group(1))
    return Doc(frozenset(sections), frozenset(anchors))


def _md_names() -> frozenset[str]:
    return frozenset(p.name for p in _files() if p.suffix == ".md")


def _files() -> list[Path]:
    out: list[Path] = []
    for top in SCANNED:
        base = ROOT / top
        if base.is_file():
            out.append(base)
            continue
        for p in sorted(base.rglob("*")):
            if p.is_file() and not SKIP_DIRS.intersection(p.relative_to(ROOT).parts):
                out.append(p)
    return out


def _text(path: Path) -> str | None:
    if path.resolve() == SELF or path.stat().st_size > MAX_BYTES:
        return None
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


class Checker:
    """Finds broken citations in texts of the repository rooted at ``root``."""

    def __init__(self, root: Path, md_names: frozenset[str]) -> None:
        self.root = root
        self.md_names = md_names
        self._docs: dict[str, Doc | None] = {}
        self.citations = 0

    def doc(self, rel: str) -> Doc | None:
        if rel not in self._docs:
            path = self.root / rel
            self._docs[rel] = parse_doc(path.read_text()) if path.is_file() else None
        return self._docs[rel]

    def check(self, rel: str, text: str) -> list[str]:
        """Problems in ``text``, the content of the file ``rel`` (relative to the root)."""
        problems: list[str] = []
        own_doc = rel if rel.startswith("docs/") and rel.endswith(".md") else None
        current: str | None = None  # the document the next section mark belongs to
        for lineno, line in enumerate(text.splitlines(), 1):
            where = f"{rel}:{lineno}"
            for bad in FORBIDDEN:
                if bad in line:
                    problems.append(f"{where}: names {bad!r}, outside the repository")
            events: list[tuple[int, str, re.Match[str]]] = [
                (m.start(), "path", m) for m in DOC_PATH.finditer(line)
            ] + [(m.start(), "section", m) for m in SECTION.finditer(line)]
            line_doc: str | None = None
            for _pos, kind, m in sorted(events, key=lambda e: e[0]):
                if kind == "path":
                    self.citations += 1
                    target, _, anchor = m.group(0).partition("#")
                    doc = self.doc(target)
                    if doc is None:
                        problems.append(f"{where}: {target} does not exist")
                    elif anchor and anchor not in doc.anchors:
                        problems.append(f"{where}: {target} has no heading with anchor #{anchor}")
                    current = line_doc = target
                    continue
                self.citations += 1
                owner = line_doc or own_doc or current
                if owner is None:
                    problems.append(
                        f"{where}: {m.group(0)!r} names a section of no document "
                        "(cite it as docs/<name>.md §N.M)"
                    )
                    continue
                doc = self.doc(owner)
                if doc is None:
                    continue  # the missing document was reported where it was cited
                for number in filter(None, m.groups()):
                    if number not in doc.sections:
                        problems.append(f"{where}: {owner} has no section {number}")
            for m in MD_NAME.finditer(line):
                name = m.group(0).lstrip("./")
                if not name or name.startswith("docs/"):
                    continue  # checked above
                found = (
                    (self.root / name).exists()
                    or (self.root / rel).parent.joinpath(m.group(0)).exists()
                    or Path(name).name in self.md_names
                )
                if not found:
                    problems.append(f"{where}: {m.group(0)} is not a file of the repository")
        return problems


def test_every_cited_document_and_section_exists() -> None:
    checker = Checker(ROOT, _md_names())
    problems: list[str] = []
    for path in _files():
        text = _text(path)
        if text is not None:
            problems += checker.check(path.relative_to(ROOT).as_posix(), text)
    assert not problems, f"{len(problems)} broken citation(s):\n" + "\n".join(problems)
    # not vacuous: the engines, the capture and the kernel harness cite the documents
    assert checker.citations > 80, checker.citations


def test_the_cited_documents_have_numbered_sections() -> None:
    for name in ("kernel-semantics.md", "capture.md"):
        doc = parse_doc((ROOT / "docs" / name).read_text())
        assert {"1", "2", "4", "4.2"} <= doc.sections, name


_DOCS = {
    "docs/a.md": "# A\n\n## 1. One\n\n### 1.2 One two\n\n## 3. Three: colons, too\n",
}


@pytest.fixture
def toy(tmp_path: Path) -> Checker:
    for rel, text in _DOCS.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    (tmp_path / "README.md").write_text("x\n")
    return Checker(tmp_path, frozenset({"a.md", "README.md"}))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("see docs/a.md §1.2 and §3", []),
        ("see docs/a.md §1-§3, docs/a.md §1.2-1.2", []),
        ("see docs/a.md#3-three-colons-too", []),
        ("docs/a.md\nlater: §1.2", []),  # a mark belongs to the last document cited before it
        ("see README.md and ./README.md", []),
        ("see docs/b.md §1", ["docs/b.md does not exist"]),
        ("see docs/a.md §2", ["docs/a.md has no section 2"]),
        ("see docs/a.md §1.2-§1.3", ["docs/a.md has no section 1.3"]),
        ("see docs/a.md#four", ["docs/a.md has no heading with anchor #four"]),
        ("see §1.2", ["names a section of no document"]),
        (
            "see capture-notes.md §3.1",
            ["names a section of no document", "capture-notes.md is not a file of the repository"],
        ),
        ("read /work/shared/docs/x", ["outside the repository"]),
    ],
)
def test_the_checker_catches_broken_citations(toy: Checker, text: str, expected: list[str]) -> None:
    problems = toy.check("planner/x.py", text)
    assert len(problems) == len(expected), problems
    for want, got in zip(expected, problems, strict=True):
        assert want in got, got


def test_a_mark_in_a_document_belongs_to_that_document(toy: Checker) -> None:
    assert toy.check("docs/a.md", "as §3 says") == []
    assert toy.check("docs/a.md", "as §4 says") == ["docs/a.md:1: docs/a.md has no section 4"]
    assert toy.check("docs/other.md", "docs/a.md §3; see §9") != []
