"""procfs parsers and the ProcFS reader on a fake tree."""

from __future__ import annotations

import errno
import os
import shutil
from typing import TYPE_CHECKING

import pytest

from planner.capture.procfs import (
    MAX_FILE_OFFSET,
    PM_PFN_MASK,
    ProcessGone,
    parse_kv,
    parse_maps,
    parse_stat,
)

if TYPE_CHECKING:
    from conftest import FakeProc

SMAPS = """\
00400000-00401000 r-xp 00000000 08:01 42                                 /usr/bin/my prog (deleted)
Size:                  4 kB
Anonymous:             0 kB
KSM:                   0 kB
AnonHugePages:         0 kB
THPeligible:           0
VmFlags: rd ex mr mw me
7f0000000000-7f0000200000 rw-p 00000000 00:00 0
Size:               2048 kB
Anonymous:          1024 kB
KSM:                  16 kB
AnonHugePages:      1024 kB
THPeligible:           1
VmFlags: rd wr mr mw me ac mg
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
Size:                  4 kB
VmFlags: ex
"""


def test_parse_smaps_headers_and_fields() -> None:
    entries = parse_maps(SMAPS)
    assert [e.path for e in entries] == ["/usr/bin/my prog (deleted)", "", "[vsyscall]"]
    text, anon, vsys = entries
    assert (text.start, text.end, text.perms, text.offset, text.inode) == (
        0x400000,
        0x401000,
        "r-xp",
        0,
        42,
    )
    assert anon.smaps_kb("Anonymous") == 1024
    assert anon.smaps_kb("KSM") == 16
    assert anon.vm_flags is not None
    assert "mg" in anon.vm_flags
    assert text.vm_flags is not None
    assert "mg" not in text.vm_flags
    assert (
        vsys.start == 0xFFFFFFFFFF600000
    )  # >= 2**63: parsed as a Python int, never used as an offset
    assert vsys.pages == 1


def test_parse_maps_without_smaps_fields() -> None:
    (e,) = parse_maps("00010000-00012000 rw-p 00000000 00:00 0 \n")
    assert e.smaps is None
    assert e.vm_flags is None
    assert e.smaps_kb("Anonymous") is None
    assert e.pages == 2


def test_parse_stat_comm_with_spaces_and_parens() -> None:
    fields = " ".join(["0"] * 12)
    st = parse_stat(77, f"77 (a b) (c)) R 12 1 1 0 -1 2097152 {fields} 4242 0 0\n")
    assert (st.comm, st.state, st.ppid, st.starttime_ticks) == ("a b) (c)", "R", 12, 4242)
    assert st.is_kernel_thread
    assert not st.is_dead


def test_parse_kv_both_separators() -> None:
    assert parse_kv("RssAnon:\t  12 kB\nksm_rmap_items 3\n") == {
        "RssAnon": "12 kB",
        "ksm_rmap_items": "3",
    }


def test_procfs_reads_fake_process(fake_proc: FakeProc) -> None:
    p = fake_proc.process(
        10, comm="web worker", ppid=9, uid=33, personality=0x0040000, starttime=777
    )
    p.map(0x10000, 2)
    p.page(0x10000, fake_proc.page_of(1), pfn=500)
    fake_proc.write()
    fs = fake_proc.procfs()
    assert fs.list_pids() == [10]
    st = fs.stat(10)
    assert (st.comm, st.ppid, st.starttime_ticks) == ("web worker", 9, 777)
    assert fs.status(10)["Uid"].split()[0] == "33"
    assert fs.cgroups(10) == {"memory": "/v1mem", "": "/system.slice/web.service"}
    assert fs.cmdline(10) == b"python\0-m\0app"
    assert fs.personality(10) == 0x0040000
    assert fs.ksm_stat(10) == {
        "ksm_rmap_items": 3,
        "ksm_zero_pages": 0,
        "ksm_merging_pages": 2,
        "ksm_process_profit": 100,
        "ksm_merge_any": False,
        "ksm_mergeable": True,
    }
    (m,) = fs.mappings(10)
    assert m.smaps is not None
    assert m.start == 0x10000
    fd = fs.open_pagemap(10)
    try:
        entries = fs.read_pagemap(fd, 0x10000 // 4096, 2)
    finally:
        os.close(fd)
    assert (entries & PM_PFN_MASK).tolist() == [500, 0]
    assert fs.ksm_sysfs() == {"pages_to_scan": "100", "run": "0"}
    assert fs.boot_time_s() == fake_proc.BTIME_S
    assert fs.self_pid() is None


def test_ksm_stat_missing_is_empty(fake_proc: FakeProc) -> None:
    fake_proc.process(11, ksm_stat=None).write()
    assert fake_proc.procfs().ksm_stat(11) == {}


def test_maps_fallback_when_smaps_missing(fake_proc: FakeProc) -> None:
    p = fake_proc.process(12, write_smaps=False)
    p.map(0x10000, 1)
    p.write()
    (m,) = fake_proc.procfs().mappings(12)
    assert m.smaps is None


def test_vanished_process_raises_process_gone(fake_proc: FakeProc) -> None:
    fake_proc.process(13).write()
    fs = fake_proc.procfs()
    shutil.rmtree(fake_proc.root / "13")
    with pytest.raises(ProcessGone):
        fs.stat(13)
    with pytest.raises(ProcessGone):
        fs.open_mem(13)
    assert list(fs.iter_stats()) == []


def test_pread_into_refuses_offsets_beyond_off_t(fake_proc: FakeProc) -> None:
    """[vsyscall] sits at >= 2**63: the read must fail cleanly (EINVAL), not overflow."""
    fake_proc.process(14).write()
    fs = fake_proc.procfs()
    fd = fs.open_mem(14)
    try:
        buf = memoryview(bytearray(4096))
        with pytest.raises(OSError) as info:
            fs.pread_into(fd, buf, 0xFFFFFFFFFF600000)
        assert info.value.errno == errno.EINVAL
        with pytest.raises(OSError):
            fs.pread_into(fd, buf, MAX_FILE_OFFSET - 100)
    finally:
        os.close(fd)
