"""Re-measure the /proc pitfalls the capture code is built around (root; nothing of KSM used).

Used for docs/capture.md §4. A child process (this interpreter, started fresh) maps a few
regions with ``mmap(2)`` through ctypes and waits; the parent then looks at it through
``/proc/<pid>/pagemap``, ``/proc/<pid>/mem``, ``/proc/kpageflags`` and ``/proc/<pid>/status``
the way a naive capture would, and prints what happened as JSON:

* ``prot_none``: 16 pages ``PROT_NONE``, never touched: present before / after one ``pread``;
* ``untouched``: 256 read-write anonymous pages never touched: present before / after one
  ``pread`` of the whole range, and whether they now map the shared zero page;
* ``naive_full_read``: ``VmRSS`` / ``RssAnon`` / ``RssFile`` of the child before and after
  reading every private readable mapping through ``/proc/<pid>/mem`` (special mappings left
  out), as a capture that skipped pagemap would;
* ``special``: what reading ``[vvar]``, ``[vdso]`` and ``[vsyscall]`` does;
* ``zero_page``: PFNs of pages only read-faulted, and their kpageflags bit 24 (KPF_ZERO_PAGE);
* ``unprivileged``: the PFN of a present page of its own as seen by uid 65534 (nobody),
  and whether nobody may open root's ``/proc/<pid>/mem``;
* ``modes``: file modes of ``/proc/kpageflags`` and ``/proc/kpagecount``.

Run from the repository root: ``sudo .venv/bin/python docs/measure/capture_pitfalls.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

PAGE = 4096
PRESENT = 1 << 63
PFN_MASK = (1 << 55) - 1
KPF_ZERO_PAGE = 24

CHILD = textwrap.dedent(
    """
    import ctypes, sys
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    PRIV_ANON = 0x02 | 0x20
    none = libc.mmap(None, 16 * 4096, 0, PRIV_ANON, -1, 0)
    rw = libc.mmap(None, 256 * 4096, 3, PRIV_ANON, -1, 0)
    zero = libc.mmap(None, 4 * 4096, 3, PRIV_ANON, -1, 0)
    touched = libc.mmap(None, 4 * 4096, 3, PRIV_ANON, -1, 0)
    for i in range(4):
        ctypes.c_char.from_address(zero + i * 4096).value          # read fault only
        ctypes.c_char.from_address(touched + i * 4096).value = b"x"  # write fault
    print(none, rw, zero, touched, flush=True)
    sys.stdin.read()
    """
)

NOBODY = textwrap.dedent(
    """
    import ctypes, os, sys
    buf = ctypes.create_string_buffer(4096)
    buf[0] = b"x"
    addr = ctypes.addressof(buf) // 4096 * 4096
    with open("/proc/self/pagemap", "rb") as f:
        e = int.from_bytes(os.pread(f.fileno(), 8, addr // 4096 * 8), "little")
    try:
        os.close(os.open(f"/proc/{sys.argv[1]}/mem", os.O_RDONLY))
        other = "opened"
    except OSError as exc:
        other = type(exc).__name__
    print(e >> 63, e & ((1 << 55) - 1), other)
    """
)


def pagemap(pid: int, addr: int, pages: int) -> list[int]:
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        raw = os.pread(f.fileno(), 8 * pages, addr // PAGE * 8)
    return [int.from_bytes(raw[i : i + 8], "little") for i in range(0, len(raw), 8)]


def present(pid: int, addr: int, pages: int) -> int:
    return sum(1 for e in pagemap(pid, addr, pages) if e & PRESENT)


def status_kb(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(rest.split()[0])
    return out


def read_mem(pid: int, addr: int, length: int) -> str:
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        return f"read {len(os.pread(fd, length, addr))} bytes"
    except OverflowError as exc:
        return f"OverflowError: {exc}"
    except OSError as exc:
        return f"{type(exc).__name__} errno {exc.errno} ({os.strerror(exc.errno or 0)})"
    finally:
        os.close(fd)


def main() -> int:
    out: dict[str, object] = {}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        none, rw, zero, touched = (int(x) for x in child.stdout.readline().split())
        pid = child.pid

        before = present(pid, none, 16)
        result = read_mem(pid, none, 16 * PAGE)
        out["prot_none"] = {
            "present_before": before,
            "pread": result,
            "present_after": present(pid, none, 16),
        }

        zero_pfns = {e & PFN_MASK for e in pagemap(pid, zero, 4)}
        before = present(pid, rw, 256)
        result = read_mem(pid, rw, 256 * PAGE)
        after = pagemap(pid, rw, 256)
        out["untouched"] = {
            "present_before": before,
            "pread": result,
            "present_after": sum(1 for e in after if e & PRESENT),
            "after_maps_the_zero_page": sorted({e & PFN_MASK for e in after} & zero_pfns) != [],
        }

        with open("/proc/kpageflags", "rb") as f:
            flags = {
                pfn: int.from_bytes(os.pread(f.fileno(), 8, pfn * 8), "little") for pfn in zero_pfns
            }
        touched_pfns = [e & PFN_MASK for e in pagemap(pid, touched, 4)]
        out["zero_page"] = {
            "distinct_pfns_of_4_read_faulted_pages": len(zero_pfns),
            "kpf_zero_page_bit": [bool(v >> KPF_ZERO_PAGE & 1) for v in flags.values()],
            "distinct_pfns_of_4_written_pages": len(set(touched_pfns)),
        }

        maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
        special = {}
        for line in maps:
            fields = line.split()
            name = fields[5] if len(fields) > 5 else ""
            if name in ("[vvar]", "[vvar_vclock]", "[vdso]", "[vsyscall]"):
                lo = int(fields[0].split("-")[0], 16)
                special[name] = {"start": hex(lo), "pread": read_mem(pid, lo, PAGE)}
        out["special"] = special

        before_kb = status_kb(pid)
        read_bytes = 0
        for line in maps:
            fields = line.split()
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            perms, name = fields[1], fields[5] if len(fields) > 5 else ""
            if (
                perms[0] != "r"
                or perms[3] != "p"
                or (name.startswith("[") and name not in ("[heap]", "[stack]"))
            ):
                continue
            fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
            try:
                for off in range(lo, hi, 1 << 20):
                    with contextlib.suppress(OSError):
                        read_bytes += len(os.pread(fd, min(1 << 20, hi - off), off))
            finally:
                os.close(fd)
        after_kb = status_kb(pid)
        out["naive_full_read"] = {
            "read_mib": round(read_bytes / 2**20, 1),
            "before_kb": before_kb,
            "after_kb": after_kb,
            "vmrss_growth_percent": round(
                100 * (after_kb["VmRSS"] - before_kb["VmRSS"]) / before_kb["VmRSS"], 1
            ),
        }
    finally:
        child.kill()
        child.wait()

    nobody = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-c",
            NOBODY,
            str(os.getpid()),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    out["unprivileged"] = {
        "present_bit": int(nobody[0]),
        "pfn_seen": int(nobody[1]),
        "open_root_mem": nobody[2],
    }
    out["modes"] = {
        p: oct(stat.S_IMODE(os.stat(p).st_mode)) for p in ("/proc/kpageflags", "/proc/kpagecount")
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
