"""Capture real processes with known page contents (marker ``capture``; needs root).

A Python child maps 16 private anonymous pages with known contents, forks, and its child
writes one page. The captured trace must show exactly those pages with the right keyed
hashes, zero flags, shared and private frames, and must not fault in anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import xxhash

from planner.capture.keys import load_key
from planner.capture.session import CaptureOptions, capture
from planner.trace.io import HostTrace, open_trace
from planner.trace.schema import PageFlag as F

PAGE = 4096

pytestmark = [
    pytest.mark.capture,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="capture needs root (CAP_SYS_PTRACE, CAP_SYS_ADMIN, kpageflags)"
    ),
    pytest.mark.skipif(
        not os.path.exists("/proc/kpageflags"), reason="kernel without /proc/kpageflags"
    ),
]

CHILD = textwrap.dedent(
    """
    import ctypes, json, mmap, os, sys
    PS = 4096
    m = mmap.mmap(-1, 16 * PS, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    for i in range(4):                       # 4 identical pages
        m[i * PS:(i + 1) * PS] = b"\\xab" * PS
    for i in (4, 5):                         # real frames holding zeros
        m[i * PS] = 1
        m[i * PS] = 0
    for i in range(6, 10):                   # unique pages
        m[i * PS:(i + 1) * PS] = bytes([i]) * PS
    _ = m[10 * PS]                           # read only: the shared zero page
    r, w = os.pipe()                         # pages 11-15 are never touched
    pid = os.fork()
    if pid == 0:
        m[7 * PS:(7 + 1) * PS] = b"\\xcd" * PS   # copy-on-write after fork
        os.write(w, b"x")
        sys.stdin.read()
        os._exit(0)
    os.read(r, 1)
    print(json.dumps({"addr": addr, "child": pid}), flush=True)
    sys.stdin.read()
    os.waitpid(pid, 0)
    """
)


@contextlib.contextmanager
def forked_family() -> Iterator[tuple[int, int, int]]:
    """Yield ``(parent_pid, child_pid, region_addr)``; kill and reap both afterwards."""
    parent = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    child = None
    try:
        assert parent.stdout is not None
        info = json.loads(parent.stdout.readline())
        child = int(info["child"])
        yield parent.pid, child, int(info["addr"])
    finally:
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        parent.kill()
        parent.wait(timeout=30)
        if parent.stdin is not None:
            parent.stdin.close()
        if parent.stdout is not None:
            parent.stdout.close()


def _pages(ht: HostTrace, sid: int, pid: int, addr: int) -> dict[int, dict[str, Any]]:
    rows = ht.pages_of(sid).to_pylist()
    return {
        (r["page_addr"] - addr) // PAGE: r
        for r in rows
        if r["pid"] == pid and addr <= r["page_addr"] < addr + 16 * PAGE
    }


def _present(pid: int, addr: int, npages: int) -> list[bool]:
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek(addr // PAGE * 8)
        data = f.read(npages * 8)
    return [bool(e >> 63) for e in struct.unpack(f"<{npages}Q", data)]


def test_forked_family_hashes_flags_and_frames(tmp_path: Path) -> None:
    key_file = tmp_path / "k.key"
    with forked_family() as (parent, child, addr):
        before = _present(child, addr, 16)
        result = capture(
            CaptureOptions(
                out=tmp_path / "t",
                pids=(parent,),
                children=True,
                snapshots=2,
                interval_s=0.2,
                key_file=key_file,
            )
        )
        after = _present(child, addr, 16)
    key = load_key(key_file)
    h = lambda content: xxhash.xxh3_64_intdigest(content, seed=key.seed)  # noqa: E731
    ht = open_trace(result.out).load_host()
    assert result.processes == 2
    assert result.gone == ()

    # capturing faulted nothing in: the untouched pages are still absent
    assert before == after
    assert after[11:] == [False] * 5

    for sid in (0, 1):
        p, c = _pages(ht, sid, parent, addr), _pages(ht, sid, child, addr)
        assert sorted(p) == sorted(c) == list(range(10))  # page 10 is the zero page: not a row
        for i in range(4):
            assert p[i]["content_hash"] == h(b"\xab" * PAGE)
        assert len({p[i]["frame_id"] for i in range(4)}) == 4  # equal content, distinct frames
        for i in (4, 5):
            assert p[i]["flags"] & F.ZERO
            assert p[i]["content_hash"] == h(bytes(PAGE))
        for i in range(6, 10):
            assert p[i]["content_hash"] == h(bytes([i]) * PAGE)
        assert c[7]["content_hash"] == h(b"\xcd" * PAGE)
        for i in set(range(10)) - {7}:
            assert c[i]["frame_id"] == p[i]["frame_id"]  # fork-shared frame
            assert c[i]["content_hash"] == p[i]["content_hash"]
            assert p[i]["flags"] & F.SHARED_MAPCOUNT
            assert not p[i]["flags"] & F.EXCLUSIVE
        assert c[7]["frame_id"] != p[7]["frame_id"]
        for r in (p[7], c[7]):
            assert r["flags"] & F.EXCLUSIVE
            assert not r["flags"] & (F.SHARED_MAPCOUNT | F.RACY | F.KSM | F.THP | F.ZERO)
    # frame ids are kept across the snapshots of the session
    assert {i: r["frame_id"] for i, r in _pages(ht, 0, child, addr).items()} == {
        i: r["frame_id"] for i, r in _pages(ht, 1, child, addr).items()
    }

    procs = {(r["snapshot_id"], r["pid"]): r for r in ht.processes.to_pylist()}
    for sid in (0, 1):
        assert procs[sid, child]["ppid"] == parent
        assert procs[sid, child]["state"] == procs[sid, parent]["state"] == "ok"
        assert procs[sid, child]["zero_pfn_pages"] >= 1
        # the recorded present pages are exactly the kernel's RssAnon
        assert procs[sid, child]["pages"] * 4 == procs[sid, child]["rss_anon_kb"]
    maps = ht.mappings.to_pylist()
    region = [m for m in maps if m["pid"] == child and m["start"] <= addr < m["end"]]
    assert [m["kind"] for m in region] == ["anon", "anon"]  # one per snapshot
    kinds = {m["kind"] for m in maps}
    assert {"heap", "stack", "anon", "bss", "file_data", "file_relro"} <= kinds
    snap = ht.snapshots.to_pylist()[0]
    assert snap["hash_key_id"] == key.key_id
    assert snap["zero_hash"] == h(bytes(PAGE))


def test_process_exiting_during_a_session_is_gone(tmp_path: Path) -> None:
    sleepers = [
        subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
        )
        for _ in range(2)
    ]

    class KillSecond:
        def start(self, task: str, total: float | None) -> None:
            if task.startswith("snapshot 2/"):
                sleepers[1].kill()
                sleepers[1].wait(timeout=30)

        def advance(self, amount: float) -> None:
            pass

        def finish(self) -> None:
            pass

    try:
        opts = CaptureOptions(
            out=tmp_path / "t",
            pids=tuple(s.pid for s in sleepers),
            snapshots=3,
            interval_s=0.0,
            key_file=tmp_path / "k.key",
            kpageflags=False,
        )
        result = capture(opts, progress=KillSecond())
    finally:
        for s in sleepers:
            s.kill()
            s.wait(timeout=30)
            assert s.stdin is not None
            s.stdin.close()
    ht = open_trace(result.out).load_host()
    states = {(r["snapshot_id"], r["pid"]): r["state"] for r in ht.processes.to_pylist()}
    a, b = (s.pid for s in sleepers)
    assert states == {(0, a): "ok", (0, b): "ok", (1, a): "ok", (1, b): "gone", (2, a): "ok"}
    assert result.gone == (b,)


def test_live_process_and_host_facts(tmp_path: Path) -> None:
    """A real process's footprint and CPU, the host's memory and load, its memory cgroup."""
    busy = "import sys, time\nx = bytearray(8 << 20)\nt = time.process_time()\n"
    busy += "while time.process_time() - t < 0.2:\n    pass\nprint('ready', flush=True)\n"
    busy += "sys.stdin.read()\n"
    proc = subprocess.Popen(
        [sys.executable, "-c", busy], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        result = capture(
            CaptureOptions(
                out=tmp_path / "t",
                pids=(proc.pid,),
                snapshots=2,
                interval_s=0.3,
                key_file=tmp_path / "k.key",
            )
        )
    finally:
        proc.kill()
        proc.wait(timeout=30)
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                f.close()
    ht = open_trace(result.out).load_host()
    row = ht.processes.to_pylist()[0]
    assert row["pss_anon_kb"] >= 8 * 1024  # the 8 MiB bytearray
    assert row["rss_kb"] >= row["pss_kb"] > 0
    assert row["pss_file_kb"] > 0  # the interpreter's text
    assert row["vm_pte_kb"] > 0
    # /proc/PID/stat gives user and system time in whole ticks, each rounded down on its own,
    # so the 0.2 s the child spun can read up to two ticks short (CI, 2026-12-06: 0.02 + 0.18,
    # which is 0.19999999999999998 in floating point)
    tick_s = 1 / os.sysconf("SC_CLK_TCK")
    assert row["cpu_user_s"] + row["cpu_system_s"] > 0.2 - 2 * tick_s - 1e-9
    assert row["num_threads"] == 1
    s0, s1 = ht.snapshots.to_pylist()
    assert s0["mem_total_kb"] > s0["mem_available_kb"] > 0
    assert s0["cpus_online"] == os.cpu_count()
    assert s0["user_hz"] == os.sysconf("SC_CLK_TCK")
    assert s1["cpu_total_ticks"] > s0["cpu_total_ticks"]
    assert 0.0 <= s0["interval_cpu_busy_share"] <= 1.0
    assert s0["interval_runnable_mean"] >= 1.0  # the capture itself runs when it samples
    # start to start, never shorter than asked (the wait after the warm-up's burst came off
    # it: 0.2 s); later by what a loaded host makes it
    assert 0.3 - 0.005 <= s0["interval_s"] <= 0.55
    if row["memory_cgroup"] not in (None, "/"):
        cg = ht.cgroups.to_pylist()
        assert cg
        assert cg[0]["cgroup"] == row["memory_cgroup"]
        assert cg[0]["memory_current_bytes"] > 0


CHURNY = textwrap.dedent(
    """
    import ctypes, json, mmap, sys, time
    PS = 4096
    m = mmap.mmap(-1, 96 * PS, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    for i in range(96):
        m[i * PS:(i + 1) * PS] = i.to_bytes(4, "little") * (PS // 4)
    print(json.dumps({"addr": addr}), flush=True)
    k = 0
    while True:          # pages 0-31: new content every 20 ms; 32-63 same bytes rewritten
        k += 1
        for i in range(32):
            m[i * PS:i * PS + 8] = k.to_bytes(8, "little")
        for i in range(32, 64):
            m[i * PS:i * PS + 8] = m[i * PS:i * PS + 8]
        time.sleep(0.02)
    """
)


def test_sampling_sees_content_changes_between_snapshots(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHURNY], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        addr = json.loads(proc.stdout.readline())["addr"]
        result = capture(
            CaptureOptions(
                out=tmp_path / "t",
                pids=(proc.pid,),
                snapshots=2,
                interval_s=0.6,
                sample_ms=100,
                cpu_budget=None,  # check every page at every pass
                key_file=tmp_path / "k.key",
            )
        )
    finally:
        proc.kill()
        proc.wait(timeout=30)
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                f.close()
    ht = open_trace(result.out).load_host()
    assert result.sampling_passes >= 6
    for sid in (0, 1):  # the last snapshot is followed by one more interval
        rows = {
            (r["page_addr"] - addr) // PAGE: r
            for r in ht.pages_of(sid).to_pylist()
            if addr <= r["page_addr"] < addr + 96 * PAGE
        }
        passes = ht.snapshots.to_pylist()[sid]["samples"]
        assert passes >= 3
        fast = [rows[i] for i in range(32)]
        assert all(r["content_checks"] == r["samples"] == passes for r in fast)
        assert sum(r["content_changes"] for r in fast) >= 32 * (passes - 1) * 0.9
        same = [rows[i] for i in range(32, 96)]  # rewritten with the same bytes, or never
        assert all(r["content_changes"] == 0 and r["frame_changes"] == 0 for r in same)
        if not result.soft_dirty:
            assert all(r["same_content_writes"] is None for r in same)
    assert result.sampling_cpu_s > 0


def test_soft_dirty_probe_on_this_kernel() -> None:
    from planner.capture.procfs import ProcFS
    from planner.capture.softdirty import probe_soft_dirty

    support = probe_soft_dirty(ProcFS())
    if not support.available:  # the reference VM: CONFIG_MEM_SOFT_DIRTY is not set
        assert "CONFIG_MEM_SOFT_DIRTY" in support.reason
        assert "\n" not in support.reason


def test_compiled_and_numpy_windows_agree_on_a_live_process(tmp_path: Path) -> None:
    """The same live process read window by window in compiled code and with numpy (two
    threads, small windows and pieces): the same rows, hashes, flags and frames. The process
    is read with numpy before and after the compiled read; the comparison is made once those
    two agree (a process just started may still touch memory on its way to ``read()``)."""
    import time

    import numpy as np

    from planner.capture.hashing import PageHasher
    from planner.capture.procfs import ProcFS, probe_own_pfns
    from planner.capture.snapshot import ProcessCapture, ProcessReader

    fs = ProcFS(Path("/proc"))
    zero_pfn = probe_own_pfns(fs)[1]
    hasher = PageHasher(load_key(tmp_path / "k.key"))
    racy = np.uint16(F.RACY)
    names = ("addr", "vma_start", "content_hash", "pfn", "kflags_needed")

    def read(pid: int, compiled: bool | None) -> ProcessCapture:
        reader = ProcessReader(
            fs,
            hasher,
            zero_pfn=zero_pfn,
            window_pages=512,
            read_piece_pages=7,
            compiled_windows=compiled,
        )
        try:
            assert reader._compiled_windows() is (compiled is None)
            return reader.capture(pid)
        finally:
            reader.close()

    def same(a: ProcessCapture, b: ProcessCapture) -> bool:
        return all(np.array_equal(getattr(a, n), getattr(b, n)) for n in names) and (
            np.array_equal(a.flags & ~racy, b.flags & ~racy)
        )

    with forked_family() as (parent, _child, _addr):
        for _attempt in range(5):
            time.sleep(0.2)
            before, fast, after = read(parent, False), read(parent, None), read(parent, False)
            if same(before, after):
                break
        else:
            pytest.fail("the process kept changing between two reads a moment apart")
    assert fast.state == before.state == "ok"
    assert fast.pages > 100
    for name in names:
        assert np.array_equal(getattr(fast, name), getattr(before, name)), name
    assert np.array_equal(fast.flags & ~racy, before.flags & ~racy)
