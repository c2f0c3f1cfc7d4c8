"""Which mappings a prctl(PR_SET_MEMORY_MERGE) marks mergeable: before exec, or inside.

Run: ``python3 docs/measure/prctl_exec_stack.py`` (no root needed, KSM untouched). Prints,
for a Python interpreter that set the prctl before exec and for one that set it while
running, whether ``[stack]``, ``[heap]`` and the anonymous mappings carry ``mg``
(VM_MERGEABLE) in ``/proc/self/smaps``, and the stack's resident size
(docs/kernel-semantics.md §2.6).
"""

from __future__ import annotations

import ctypes
import os
import sys

PR_SET_MEMORY_MERGE = 67


def mappings() -> dict[str, list[tuple[bool, str]]]:
    """Mapping name -> (mergeable, Rss) of each mapping of that name."""
    out: dict[str, list[tuple[bool, str]]] = {}
    name, rss = "", ""
    with open("/proc/self/smaps") as f:
        for line in f:
            p = line.split()
            if "-" in p[0] and len(p) >= 5:
                name = p[5] if len(p) > 5 else "[anon]"
            elif p[0] == "Rss:":
                rss = p[1] + " kB"
            elif p[0] == "VmFlags:":
                out.setdefault(name, []).append(("mg" in p[1:], rss))
    return out


def report(label: str) -> None:
    m = mappings()
    anon = m.get("[anon]", [])
    stack = m.get("[stack]", [])
    heap = [x[0] for x in m.get("[heap]", [])]
    print(
        f"{label}: [stack] mergeable {[x[0] for x in stack]} (Rss {[x[1] for x in stack]}), "
        f"[heap] {heap}, anonymous {sum(x[0] for x in anon)}/{len(anon)}"
    )


def main() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    step = sys.argv[1] if len(sys.argv) > 1 else "start"
    if step == "start":
        if libc.prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0) != 0:
            sys.exit(f"prctl(PR_SET_MEMORY_MERGE) failed: errno {ctypes.get_errno()}")
        pid = os.fork()
        if pid == 0:
            os.execv(sys.executable, [sys.executable, __file__, "after-exec"])
        os.waitpid(pid, 0)
        report("prctl inside the running process")
    else:
        report("prctl before exec")


if __name__ == "__main__":
    main()
