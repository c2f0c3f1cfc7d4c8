"""Rebuild the example reviews in ``reports/`` from the sample traces in ``traces/``.

Run from the repository root::

    .venv/bin/python reports/rebuild.py            # rewrite reports/<name>/ for every example
    .venv/bin/python reports/rebuild.py --check    # rebuild into a temporary directory and
                                                   # compare byte for byte with reports/

Each example is one ``ksm-planner report`` command (listed in :data:`EXAMPLES` and in
``reports/README.md``). The reviews are deterministic, so ``--check`` fails (exit 1, the
differing files listed) exactly when the code, the traces or the dependencies changed what
a review says; rebuild and commit the examples then.
"""

from __future__ import annotations

import argparse
import filecmp
import subprocess
import sys
import tempfile
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
    ],
}  # fmt: skip


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
    """Write the examples ``names`` under ``root`` (one directory each)."""
    for name in names:
        print(f"building {name} ...", file=sys.stderr, flush=True)
        subprocess.run(command(name, root / name), cwd=ROOT, check=True)


def differences(a: Path, b: Path) -> list[str]:
    """Files that differ between two directory trees (missing on either side included)."""
    out: list[str] = []

    def walk(cmp: filecmp.dircmp[str], prefix: str) -> None:
        out.extend(f"{prefix}{n} (only in {a})" for n in cmp.left_only)
        out.extend(f"{prefix}{n} (only in {b})" for n in cmp.right_only)
        for n in cmp.common_files:
            if not filecmp.cmp(Path(cmp.left) / n, Path(cmp.right) / n, shallow=False):
                out.append(f"{prefix}{n}")
        for n, sub in sorted(cmp.subdirs.items()):
            walk(sub, f"{prefix}{n}/")

    walk(filecmp.dircmp(a, b), "")
    return out


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
            f"{n}/{f}"
            for n in names
            for f in (
                differences(REPORTS / n, Path(tmp) / n) if (REPORTS / n).is_dir() else ["(missing)"]
            )
        ]
    for f in bad:
        print(f"differs: reports/{f}", file=sys.stderr)
    if bad:
        print(
            "the example reviews are out of date: run .venv/bin/python reports/rebuild.py",
            file=sys.stderr,
        )
        return 1
    print(f"{len(names)} example review(s) match", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
