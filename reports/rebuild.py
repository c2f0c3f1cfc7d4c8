"""Rebuild the example reviews in ``reports/`` from the sample traces in ``traces/``.

Run from the repository root::

    .venv/bin/python reports/rebuild.py            # rewrite reports/<name>/ for every example
    .venv/bin/python reports/rebuild.py --check    # rebuild into a temporary directory and
                                                   # compare with reports/ (see below)

Each example is one ``ksm-planner report`` command (listed in :data:`EXAMPLES` and in
``reports/README.md``). ``--check`` fails (exit 1, every differing file listed with its first
difference) when the code, the traces or the dependencies changed what a review says; rebuild
and commit the examples then.

How files are compared (``reports/README.md`` gives the reasons):

* text files (``.html``, ``.md``, ``.svg``, ``.csv``, ``.json``): every numeric token within
  a relative tolerance of :data:`RTOL`, everything else (words, markup, punctuation,
  identifiers, the order of it all) exactly;
* ``review.pdf``: on what does not depend on the installed fonts or the CPU -- its metadata,
  its outline (the headings, in order) and the text it draws (every character that is not
  part of a number, as a multiset, and every number, within :data:`RTOL`), never its bytes,
  pages or glyph positions;
* any other file: byte for byte.
"""

from __future__ import annotations

import argparse
import math
import re
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "reports"

#: name -> arguments of ``ksm-planner report`` (``--out`` is added).
EXAMPLES: dict[str, list[str]] = {
    "django-preload": [
        "traces/django-preload",
        "--pages-to-scan", "100,1000,4000",
        "--host-mem", "16GiB",
        "--observed", "reports/canary/django-preload",
        "--pdf",
    ],
    "django-nopreload": [
        "traces/django-nopreload",
        "--pages-to-scan", "100,1000,4000",
        "--host-mem", "16GiB",
        "--observed", "reports/canary/django-nopreload",
    ],
}  # fmt: skip

#: Relative tolerance of a numeric token (``reports/README.md`` says why this value): 5 units
#: of the last of the 6 significant digits the review writes (``fmt.SIGNIFICANT_DIGITS``),
#: about 6x the largest difference measured between CPUs, finer than any figure displayed.
RTOL = 5e-5
#: Compared with a tolerance; every other file is compared byte for byte.
TEXT_SUFFIXES = frozenset({".html", ".md", ".svg", ".csv", ".json"})

#: A number standing on its own: not part of a word, an identifier, a hash or a version
#: (``sha256``, ``m81d8f``, ``0.1.0`` and ``58rem`` are text).
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w])(?!\.\w)")
#: In the text a PDF draws, where letters and digits may touch (``python11954``): any run.
PDF_NUMBER = re.compile(r"\d+(?:\.\d+)?")
#: A hyphen WeasyPrint drew where it broke a word across lines (``hyphens: auto``, the review's
#: table headers): U+2010, its default ``hyphenate-character``, at the end of a line. Where
#: words break depends on the fonts' metrics, so the word is joined again before comparing
#: (the review never writes U+2010 itself).
PDF_HYPHENATION = re.compile("\u2010[^\\S\n]*\n\\s*")


def close(a: float, b: float, rtol: float = RTOL) -> bool:
    """Whether two numbers agree within the relative tolerance ``rtol``.

    Examples
    --------
    >>> close(860.778647, 860.778569), close(1.00000, 1.00001), close(860.778647, 860.9)
    (True, True, False)
    """
    if a == b:
        return True
    if not (math.isfinite(a) and math.isfinite(b)):
        return False
    return abs(a - b) <= rtol * max(abs(a), abs(b))


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _show(s: str, width: int = 40) -> str:
    return s if len(s) <= width else s[: width - 3] + "..."


def compare_text(old: str, new: str, rtol: float = RTOL) -> str | None:
    """The first difference of two text outputs (``None``: they agree).

    The texts are cut into numbers (:data:`NUMBER`) and the text between them. The text must be
    identical; each number must agree within ``rtol`` (:func:`close`).

    Examples
    --------
    >>> compare_text("saved 860.778647 MiB", "saved 860.7786474 MiB") is None
    True
    >>> compare_text("saved 860.778647 MiB", "saved 860.9 MiB")
    'line 1: number 860.778647 -> 860.9 (relative difference 0.00014 > 5e-05)'
    >>> compare_text("saved 1 MiB", "freed 1 MiB")
    "line 1: text 'saved ' -> 'freed '"
    """
    a_nums = list(NUMBER.finditer(old))
    b_nums = list(NUMBER.finditer(new))
    a_text = NUMBER.split(old)
    b_text = NUMBER.split(new)
    for i, (x, y) in enumerate(zip(a_text, b_text, strict=False)):
        if x != y:
            k = next(j for j in range(min(len(x), len(y)) + 1) if x[j : j + 1] != y[j : j + 1])
            while k > 0 and x[k - 1].isalnum():  # from the start of the word
                k -= 1
            pos = (a_nums[i - 1].end() if i else 0) + k
            return f"line {_line_of(old, pos)}: text {_show(x[k:])!r} -> {_show(y[k:])!r}"
        if i < len(a_nums) and i < len(b_nums):
            ma, mb = a_nums[i], b_nums[i]
            va, vb = float(ma.group()), float(mb.group())
            if not close(va, vb, rtol):
                rel = abs(va - vb) / max(abs(va), abs(vb))
                return (
                    f"line {_line_of(old, ma.start())}: number {ma.group()} -> {mb.group()} "
                    f"(relative difference {rel:.2g} > {rtol:g})"
                )
    if len(a_text) != len(b_text):
        return f"{len(a_nums)} numbers -> {len(b_nums)} numbers"
    return None


@dataclass(frozen=True)
class PdfContent:
    """What a PDF says, independently of fonts, page breaks and glyph positions."""

    metadata: tuple[tuple[str, str], ...]
    outline: tuple[tuple[int, str], ...]  # (depth, title) of every bookmark, in order
    characters: Counter[str]  # every non-space character drawn that is not part of a number
    numbers: tuple[float, ...]  # every number drawn, sorted
    pages: int  # reported, not compared (it depends on the fonts)


def pdf_content(path: Path) -> PdfContent:
    """Read the metadata, outline and drawn text of a PDF (pypdf)."""
    from pypdf import PdfReader

    reader = PdfReader(path)
    meta = dict(reader.metadata or {})
    metadata = tuple(sorted((k, str(meta[k])) for k in ("/Title", "/Creator") if k in meta))
    outline: list[tuple[int, str]] = []

    def walk(items: list[object], depth: int) -> None:
        for item in items:
            if isinstance(item, list):
                walk(item, depth + 1)
            else:
                outline.append((depth, str(getattr(item, "title", item))))

    walk(list(reader.outline), 0)
    text = "\n".join(page.extract_text() for page in reader.pages)
    text = PDF_HYPHENATION.sub("", text)  # words broken by hyphenation, joined again
    numbers = tuple(sorted(float(m) for m in PDF_NUMBER.findall(text)))
    rest = PDF_NUMBER.sub(" ", text)
    characters = Counter(c for c in rest if not c.isspace())
    return PdfContent(metadata, tuple(outline), characters, numbers, len(reader.pages))


def compare_pdf(old: Path, new: Path, rtol: float = RTOL) -> str | None:
    """The first difference of two PDFs on what does not depend on fonts or CPU (or ``None``).

    Metadata (title, creator) and outline must be equal; the characters drawn (numbers
    excepted) must be the same multiset; the numbers drawn, sorted, must agree one by one
    within ``rtol``. The order of the text is not compared: page breaks, which move with the
    fonts' metrics, move figures and list markers in a PDF's content streams; the order is
    compared in ``review.html``, from which the PDF is printed.
    """
    a, b = pdf_content(old), pdf_content(new)
    if a.metadata != b.metadata:
        return f"metadata {a.metadata} -> {b.metadata}"
    if a.outline != b.outline:
        diff = next(
            (f"{x!r} -> {y!r}" for x, y in zip(a.outline, b.outline, strict=False) if x != y),
            f"{len(a.outline)} -> {len(b.outline)} entries",
        )
        return f"outline: {diff}"
    if a.characters != b.characters:
        lost = "".join(sorted((a.characters - b.characters).elements()))
        added = "".join(sorted((b.characters - a.characters).elements()))
        return f"text: characters lost {_show(lost)!r}, added {_show(added)!r}"
    if len(a.numbers) != len(b.numbers):
        return f"text: {len(a.numbers)} numbers -> {len(b.numbers)} numbers"
    for x, y in zip(a.numbers, b.numbers, strict=True):
        if not close(x, y, rtol):
            return f"text: number {x:g} -> {y:g} (beyond the relative tolerance {rtol:g})"
    return None


def compare_file(old: Path, new: Path, rtol: float = RTOL) -> str | None:
    """How ``new`` differs from ``old`` (``None``: it does not), by the rules of the module."""
    if old.suffix == ".pdf":
        return compare_pdf(old, new, rtol)
    a, b = old.read_bytes(), new.read_bytes()
    if a == b:
        return None
    if old.suffix in TEXT_SUFFIXES:
        try:
            return compare_text(a.decode("utf-8"), b.decode("utf-8"), rtol)
        except UnicodeDecodeError:
            return "not UTF-8 text"
    return "bytes differ"


def differences(old: Path, new: Path, rtol: float = RTOL) -> list[str]:
    """``path: difference`` for every file that differs between two trees (or is on one side)."""
    a = {p.relative_to(old).as_posix() for p in old.rglob("*") if p.is_file()}
    b = {p.relative_to(new).as_posix() for p in new.rglob("*") if p.is_file()}
    out = [f"{n}: only in {old}" for n in sorted(a - b)]
    out += [f"{n}: only in {new}" for n in sorted(b - a)]
    for n in sorted(a & b):
        diff = compare_file(old / n, new / n, rtol)
        if diff is not None:
            out.append(f"{n}: {diff}")
    return out


def command(name: str, out: Path) -> list[str]:
    """The command that writes example ``name`` into ``out``."""
    return [
        sys.executable,
        "-m",
        "planner",
        "report",
        *EXAMPLES[name],
        "--out",
        str(out),
        "--force",
    ]


def build(names: list[str], root: Path) -> None:
    """Write the examples ``names`` under ``root`` (one directory each).

    The examples are built at once, one process each: a review's sweep runs on every CPU but
    its rendering (plots, PDF) on one, so two builds overlap their serial parts (the check on
    2 cores: 206 s one after the other, 184 s at once; docs/testing.md).
    """
    procs = []
    for name in names:
        print(f"building {name} ...", file=sys.stderr, flush=True)
        procs.append((name, subprocess.Popen(command(name, root / name), cwd=ROOT)))
    failed = [(name, p.wait()) for name, p in procs]
    for name, code in failed:
        if code:
            raise subprocess.CalledProcessError(code, command(name, root / name))


def main(argv: list[str] | None = None) -> int:
    """Rebuild (or check) the examples; the exit code is 1 when a check finds differences."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="compare instead of rewriting")
    parser.add_argument("--only", action="append", choices=sorted(EXAMPLES), help="one example")
    args = parser.parse_args(argv)
    names = args.only or list(EXAMPLES)
    if not args.check:
        build(names, REPORTS)
        return 0
    with tempfile.TemporaryDirectory(prefix="ksm-reports-") as tmp:
        build(names, Path(tmp))
        bad = [
            f"{n}/{d}"
            for n in names
            for d in (
                differences(REPORTS / n, Path(tmp) / n) if (REPORTS / n).is_dir() else ["(missing)"]
            )
        ]
    for d in bad:
        print(f"differs: reports/{d}", file=sys.stderr)
    if bad:
        print(
            "the example reviews are out of date: run .venv/bin/python reports/rebuild.py",
            file=sys.stderr,
        )
        return 1
    print(
        f"{len(names)} example review(s) match (numbers within a relative {RTOL:g})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
