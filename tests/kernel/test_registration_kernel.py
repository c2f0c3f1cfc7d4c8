"""prctl(PR_SET_MEMORY_MERGE) before exec vs inside the process, on this kernel.

The replay's default for prctl policies (docs/kernel-semantics.md §2.6) rests on this: the
``[stack]`` that exec creates never gets VM_MERGEABLE (``mg`` in smaps ``VmFlags``), every
other area does; a prctl made inside the running process marks the stack too. Neither
touches /sys/kernel/mm/ksm (no lease needed).
"""

from __future__ import annotations

import ast
import os
import sys
import textwrap

import pytest

from tests.procs import run

PR_SET_MEMORY_MERGE = 67

_PROBE = textwrap.dedent(
    """
    import ctypes, os, sys
    def flags():
        out, name = {}, ""
        for line in open("/proc/self/smaps"):
            p = line.split()
            if "-" in p[0] and len(p) >= 5:
                name = p[5] if len(p) > 5 else "[anon]"
            elif p[0] == "VmFlags:":
                out.setdefault(name, []).append("mg" in p[1:])
        return out
    libc = ctypes.CDLL(None, use_errno=True)
    if sys.argv[1] == "exec":
        if libc.prctl(67, 1, 0, 0, 0):
            sys.exit(3)
        os.execv(sys.executable, [sys.executable, "-c", sys.argv[2], "after", sys.argv[2]])
    if sys.argv[1] == "inside" and libc.prctl(67, 1, 0, 0, 0):
        sys.exit(3)
    f = flags()
    print(repr((f.get("[stack]"), f.get("[heap]", []), f.get("[anon]", []))))
    """
)


def _probe(mode: str) -> tuple[list[bool], list[bool], list[bool]]:
    out = run([sys.executable, "-c", _PROBE, mode, _PROBE], timeout_s=60)
    if out.returncode == 3:
        pytest.skip("prctl(PR_SET_MEMORY_MERGE) is refused here (a kernel before 6.4?)")
    assert out.returncode == 0, out.stderr
    stack, heap, anon = ast.literal_eval(out.stdout)
    return stack, heap, anon


@pytest.fixture(autouse=True)
def _prctl_exists() -> None:
    if not os.path.exists("/sys/kernel/mm/ksm"):
        pytest.skip("no /sys/kernel/mm/ksm: this kernel has no KSM")


def test_prctl_before_exec_leaves_the_exec_stack_unmergeable() -> None:
    stack, heap, anon = _probe("exec")
    assert stack == [False], "the [stack] exec created is VM_MERGEABLE after all"
    assert heap, "no [heap] seen"
    assert all(heap), f"[heap] should be mergeable: {heap}"
    assert anon, "no anonymous area seen"
    assert all(anon), f"every anonymous area should be mergeable: {anon}"


def test_prctl_inside_the_process_marks_its_stack() -> None:
    stack, heap, anon = _probe("inside")
    assert stack == [True]
    assert all(heap)
    assert all(anon)
