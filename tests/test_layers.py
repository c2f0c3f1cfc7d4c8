"""The package's layers are contracts, checked here on every test run.

The contracts are in ``pyproject.toml`` (``[tool.importlinter]``) and checked by import-linter
on the real import graph (every import counts: module-level, inside functions, and under
``TYPE_CHECKING``). From the top:

``cli`` > ``testing`` > ``report`` > ``whatif`` > ``kernel`` > ``replay`` > ``policy`` >
``engine | capture`` (independent of each other) > ``trace`` > the shared helpers
(``errors``, ``provenance``, ``_fs``, ``_input``, ``_progress``, ``_deps``, ``_version``).

Each layer may import only the layers below it, and every module of ``planner`` must be in
one (the contract is exhaustive). Besides: nothing in the library imports ``planner.testing``
(test support), and what-if and the review read recordings of real hosts through
:mod:`planner.trace.recording`, never through the kernel harness.

Also here: no function of ``planner`` (the engine included) is longer than 150 lines, except
the ones listed in :data:`LONG_FUNCTIONS` (none today), which may only leave the list.
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
from pathlib import Path

import grimp
import pytest
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "planner"
MAX_FUNCTION_LINES = 150

#: Functions longer than MAX_FUNCTION_LINES today, each being split by
#: the engineer working on its module. The list may only shrink: a new long function fails.
LONG_FUNCTIONS: frozenset[str] = frozenset()


def test_the_layer_contracts_hold() -> None:
    out = io.StringIO()
    cwd = os.getcwd()
    try:
        os.chdir(ROOT)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = lint_imports(
                config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True
            )
    finally:
        os.chdir(cwd)
    report = out.getvalue()
    assert code == 0, report
    for contract in ("Layers:", "planner.testing is test support", "read recordings"):
        assert contract in report, report
    assert "3 kept, 0 broken" in report, report


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("planner")


def test_the_graph_sees_imports_inside_functions(graph: grimp.ImportGraph) -> None:
    """Most cross-layer imports are deferred into functions: the contracts must see them."""
    assert graph.direct_import_exists(importer="planner.cli.replay", imported="planner.replay")
    assert graph.direct_import_exists(
        importer="planner.kernel.observe", imported="planner.kernel.calibrate"
    )


def test_the_moved_contracts_have_one_home(graph: grimp.ImportGraph) -> None:
    """replay_trace above engine and policy; conformance scenarios in testing; one reader."""
    assert not graph.find_upstream_modules("planner.engine", as_package=True) & {
        "planner.policy",
        "planner.replay",
    }
    kernel = graph.find_children("planner.kernel")
    assert "planner.kernel.conformance" not in kernel
    assert "planner.testing.conformance" in graph.modules
    for m in ("planner.whatif", "planner.report"):
        found = graph.find_upstream_modules(m, as_package=True)
        assert "planner.trace.recording" in found
        assert not any(x.startswith("planner.kernel") for x in found), m


def _functions(tree: ast.AST, prefix: str = "") -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno is not None
            out.append((prefix + node.name, node.end_lineno - node.lineno + 1))
            out += _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            out += _functions(node, f"{prefix}{node.name}.")
    return out


def test_no_function_is_over_150_lines() -> None:
    long = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for name, lines in _functions(ast.parse(path.read_text(), rel)):
            if lines > MAX_FUNCTION_LINES:
                long[f"{rel}::{name}"] = lines
    new = {k: v for k, v in long.items() if k not in LONG_FUNCTIONS}
    assert not new, f"functions over {MAX_FUNCTION_LINES} lines (split them): {new}"
    fixed = sorted(LONG_FUNCTIONS - set(long))
    assert not fixed, (
        f"no longer over {MAX_FUNCTION_LINES} lines: remove from LONG_FUNCTIONS: {fixed}"
    )
