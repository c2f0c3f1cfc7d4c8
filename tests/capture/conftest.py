"""A fake /proc tree for capture tests: regular files stand in for the kernel's.

``pagemap`` and ``mem`` are sparse files (addresses are kept small so they stay tiny);
``kpageflags``/``kpagecount`` hold one little-endian u64 per PFN.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from planner.capture.keys import CaptureKey
from planner.capture.procfs import (
    PM_EXCLUSIVE_BIT,
    PM_FILE_BIT,
    PM_PRESENT_BIT,
    PM_SOFT_DIRTY_BIT,
    PM_SWAP_BIT,
    ProcFS,
)

PAGE = 4096
BTIME_S = 1_700_000_000


def page_of(byte: int) -> bytes:
    """A page filled with one byte value (``0`` gives the zero page)."""
    return bytes([byte]) * PAGE


def unique_page(seed: int) -> bytes:
    """A page whose content differs for every seed."""
    return seed.to_bytes(8, "little") * (PAGE // 8)


@dataclass
class FakePage:
    content: bytes | None
    pfn: int
    present: bool = True
    swapped: bool = False
    file: bool = False
    exclusive: bool = False
    soft_dirty: bool = False

    def entry(self) -> int:
        e = 0
        if self.present:
            e |= 1 << PM_PRESENT_BIT | self.pfn
        if self.swapped:
            e |= 1 << PM_SWAP_BIT | self.pfn  # swap type/offset: must never be taken for a PFN
        if self.file:
            e |= 1 << PM_FILE_BIT
        if self.exclusive:
            e |= 1 << PM_EXCLUSIVE_BIT
        if self.soft_dirty:
            e |= 1 << PM_SOFT_DIRTY_BIT
        return e


@dataclass
class FakeMapping:
    start: int
    npages: int
    perms: str
    path: str
    offset: int
    inode: int
    smaps: dict[str, str]


@dataclass
class FakeProcess:
    root: Path
    pid: int
    comm: str = "fake"
    ppid: int = 1
    starttime: int = 5000
    state: str = "S"
    flags: int = 0
    uid: int = 1000
    cgroup: str = "/system.slice/web.service"
    cmdline: bytes = b"python\0-m\0app\0"
    personality: int = 0
    ksm_stat: str | None = (
        "ksm_rmap_items 3\nksm_zero_pages 0\nksm_merging_pages 2\nksm_process_profit 100\n"
        "ksm_merge_any: no\nksm_mergeable: yes\n"
    )
    rss_anon_kb: int = 0
    utime: int = 0
    stime: int = 0
    threads: int = 1
    rollup: str | None = None
    """The text of smaps_rollup (none written when ``None``)."""
    status_extra: str = ""
    mappings: list[FakeMapping] = field(default_factory=list)
    pages: dict[int, FakePage] = field(default_factory=dict)
    write_smaps: bool = True
    tgid: int | None = None

    @property
    def dir(self) -> Path:
        return self.root / str(self.pid)

    def map(
        self,
        start: int,
        npages: int,
        perms: str = "rw-p",
        path: str = "",
        *,
        offset: int = 0,
        inode: int | None = None,
        smaps: dict[str, str] | None = None,
    ) -> FakeMapping:
        m = FakeMapping(
            start=start,
            npages=npages,
            perms=perms,
            path=path,
            offset=offset,
            inode=inode if inode is not None else (1234 if path.startswith("/") else 0),
            smaps=dict(smaps or {}),
        )
        self.mappings.append(m)
        return m

    def page(self, addr: int, content: bytes | None, pfn: int, **kw: bool) -> None:
        assert addr % PAGE == 0
        self.pages[addr] = FakePage(content=content, pfn=pfn, **kw)

    def write(self) -> FakeProcess:
        d = self.dir
        d.mkdir(parents=True, exist_ok=True)
        (d / "root").mkdir(exist_ok=True)
        (d / "stat").write_text(
            f"{self.pid} ({self.comm}) {self.state} {self.ppid} 1 1 0 -1 {self.flags} "
            + f"0 0 0 0 {self.utime} {self.stime} 0 0 20 0 {self.threads} 0"
            + f" {self.starttime} 1000000 100 "
            + " ".join(["0"] * 20)
            + "\n"
        )
        if self.rollup is not None:
            (d / "smaps_rollup").write_text(self.rollup)
        (d / "status").write_text(
            f"Name:\t{self.comm}\nTgid:\t{self.tgid or self.pid}\nPid:\t{self.pid}\n"
            f"PPid:\t{self.ppid}\n"
            f"Uid:\t{self.uid}\t{self.uid}\t{self.uid}\t{self.uid}\n"
            f"RssAnon:\t{self.rss_anon_kb} kB\n" + self.status_extra
        )
        (d / "cgroup").write_text(f"4:memory:/v1mem\n0::{self.cgroup}\n")
        (d / "cmdline").write_bytes(self.cmdline)
        (d / "clear_refs").write_bytes(b"")  # write-only in a real /proc
        (d / "personality").write_text(f"{self.personality:08x}\n")
        if self.ksm_stat is not None:
            (d / "ksm_stat").write_text(self.ksm_stat)
        lines, smaps = [], []
        for m in sorted(self.mappings, key=lambda m: m.start):
            end = m.start + m.npages * PAGE
            line = f"{m.start:08x}-{end:08x} {m.perms} {m.offset:08x} 00:00 {m.inode}"
            line = f"{line:<73}{m.path}" if m.path else line + " "
            lines.append(line)
            fields = {
                "Size": f"{m.npages * 4} kB",
                "Rss": "0 kB",
                "Anonymous": f"{m.npages * 4} kB",
                "KSM": "0 kB",
                "AnonHugePages": "0 kB",
                "Swap": "0 kB",
                "THPeligible": "0",
                "VmFlags": "rd wr mr mw me ac",
            } | m.smaps
            smaps.append(
                line
                + "\n"
                + "".join(f"{k}:{' ' * max(1, 15 - len(k))}{v}\n" for k, v in fields.items())
            )
        (d / "maps").write_text("".join(x + "\n" for x in lines))
        if self.write_smaps:
            (d / "smaps").write_text("".join(smaps))
        with open(d / "pagemap", "wb") as pm, open(d / "mem", "wb") as mem:
            for addr, pg in sorted(self.pages.items()):
                pm.seek(addr // PAGE * 8)
                pm.write(struct.pack("<Q", pg.entry()))
                if pg.present and pg.content is not None:
                    mem.seek(addr)
                    mem.write(pg.content)
            last = max((m.start + m.npages * PAGE for m in self.mappings), default=0)
            pm.truncate(last // PAGE * 8)
            mem.truncate(max(last, mem.tell()))
        return self


def write_elf(path: Path, segments: list[tuple[int, int, int, int, int, int]]) -> Path:
    """Write a minimal little-endian ELF64 file with program headers.

    ``segments`` are ``(p_type, p_flags, p_offset, p_vaddr, p_filesz, p_memsz)``.
    """
    header = struct.pack(
        "<16sHHIQQQIHHHHHH",
        b"\x7fELF" + bytes([2, 1, 1]) + bytes(9),
        3,
        62,
        1,
        0,
        64,
        0,
        0,
        64,
        56,
        len(segments),
        0,
        0,
        0,
    )
    phdrs = b"".join(
        struct.pack("<IIQQQQQQ", t, f, off, va, va, fs, ms, PAGE)
        for t, f, off, va, fs, ms in segments
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + phdrs)
    return path


class FakeProc:
    """Build a fake procfs tree under ``root``.

    The helpers are attributes too, so tests reach everything through the fixture.
    """

    PAGE = PAGE
    BTIME_S = BTIME_S
    page_of = staticmethod(page_of)
    unique_page = staticmethod(unique_page)
    write_elf = staticmethod(write_elf)

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "stat").write_text(f"cpu  1 2 3 4\nbtime {BTIME_S}\nprocesses 99\n")
        (root / "meminfo").write_text(
            "MemTotal:       16000000 kB\nMemFree:         8000000 kB\n"
            "MemAvailable:   12000000 kB\nCached:          3000000 kB\n"
            "AnonPages:       2000000 kB\nShmem:             10000 kB\n"
            "Slab:             500000 kB\nPageTables:        20000 kB\n"
            "HugePages_Total:       0\n"
        )
        (root / "loadavg").write_text("1.50 1.20 0.90 3/250 4242\n")
        self.sys_root = root.parent / "sys"
        ksm = self.sys_root / "kernel" / "mm" / "ksm"
        ksm.mkdir(parents=True, exist_ok=True)
        (ksm / "run").write_text("0\n")
        (ksm / "pages_to_scan").write_text("100\n")
        cpu = self.sys_root / "devices" / "system" / "cpu"
        cpu.mkdir(parents=True, exist_ok=True)
        (cpu / "online").write_text("0-3\n")
        self._kflags: dict[int, int] = {}
        self._kcount: dict[int, int] = {}
        self.processes: dict[int, FakeProcess] = {}
        self.write_kpage()

    def cgroup_v2(
        self, path: str, *, current: int, limit: int | None = None, stat: str = ""
    ) -> None:
        """A cgroup v2 hierarchy at ``<sys>/fs/cgroup`` with the memory controller."""
        root = self.sys_root / "fs" / "cgroup"
        root.mkdir(parents=True, exist_ok=True)
        (root / "cgroup.controllers").write_text("cpu io memory pids\n")
        d = root / path.strip("/")
        d.mkdir(parents=True, exist_ok=True)
        (d / "memory.current").write_text(f"{current}\n")
        (d / "memory.max").write_text(f"{limit if limit is not None else 'max'}\n")
        (d / "memory.stat").write_text(stat)

    def process(self, pid: int, **kw: object) -> FakeProcess:
        p = FakeProcess(root=self.root, pid=pid, **kw)  # type: ignore[arg-type]
        self.processes[pid] = p
        return p

    def kpage(self, pfn: int, *, flags: int = 0, count: int = 1) -> None:
        self._kflags[pfn] = flags
        self._kcount[pfn] = count

    def write_kpage(self) -> None:
        for name, table in (("kpageflags", self._kflags), ("kpagecount", self._kcount)):
            with open(self.root / name, "wb") as f:
                for pfn, value in table.items():
                    f.seek(pfn * 8)
                    f.write(struct.pack("<Q", value))
                f.truncate(max(table, default=0) * 8 + 8 if table else 0)

    def write(self) -> FakeProc:
        for p in self.processes.values():
            p.write()
        self.write_kpage()
        return self

    def procfs(self) -> ProcFS:
        return ProcFS(self.root, sys_root=self.sys_root)


@pytest.fixture
def fake_proc(tmp_path: Path) -> FakeProc:
    return FakeProc(tmp_path / "proc")


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "capture.key"
    path.parent.mkdir(mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, bytes(range(32)))
    os.close(fd)
    return path


@pytest.fixture
def capture_key() -> CaptureKey:
    return CaptureKey.from_bytes(bytes(range(32)))
