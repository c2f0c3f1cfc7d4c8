"""The canary of ``observe --ksm-pages`` (planner/kernel/canary.py) on a fake /proc.

It lives here for the fake /proc of tests/capture/conftest.py; the real-kernel test is
tests/kernel/test_observe.py::test_canary_counts_merges_lost_to_writes.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from planner.capture.procfs import KPF_KSM
from planner.kernel.canary import Canary

if TYPE_CHECKING:
    from conftest import FakeProc

PAGE = 4096
BASE = 0x10000
KSM = 1 << KPF_KSM


def test_pages_merged_unmerged_and_unmapped(fake_proc: FakeProc) -> None:
    p = fake_proc.process(90, comm="worker", utime=250, stime=50)
    p.map(BASE, 6)
    same = fake_proc.page_of(7)
    for i in range(3):  # three pages merged into KSM frame 900, one into 901
        p.page(BASE + i * PAGE, same, pfn=900)
    p.page(BASE + 3 * PAGE, fake_proc.page_of(8), pfn=901)
    p.page(BASE + 4 * PAGE, fake_proc.unique_page(4), pfn=904)  # not merged
    fake_proc.kpage(900, flags=KSM, count=3)
    fake_proc.kpage(901, flags=KSM, count=1)
    fake_proc.kpage(904, count=1)
    fake_proc.write()
    with Canary(fake_proc.procfs()) as canary:
        rows, events = canary.sample([90], 0, 0.0)
        assert rows == [
            {
                "sample": 0,
                "t_s": 0.0,
                "pid": 90,
                "present_pages": 5,
                "ksm_pages": 4,
                "merged": 4,
                "unmerged_same_content": 0,
                "unmerged_changed": 0,
                "unmerged": 0,
                "unmapped": 0,
                "cpu_s": 300 / os.sysconf("SC_CLK_TCK"),  # utime + stime, in seconds
            }
        ]
        assert {(e["page_addr"] - BASE) // PAGE for e in events} == {0, 1, 2, 3}
        assert {e["vma_kind"] for e in events} == {"anon"}
        assert {e["vma_start"] for e in events} == {BASE}  # the mapping's start: the class

        # page 0 written with the same bytes (a private copy), page 1 with new bytes, page 3
        # unmapped, page 4 merged meanwhile
        p.page(BASE, same, pfn=950)
        p.page(BASE + PAGE, fake_proc.unique_page(99), pfn=951)
        del p.pages[BASE + 3 * PAGE]
        fake_proc.kpage(950, count=1)
        fake_proc.kpage(951, count=1)
        fake_proc.kpage(904, flags=KSM, count=1)
        fake_proc.write()
        rows, events = canary.sample([90], 1, 1.0)
        by_page = {(e["page_addr"] - BASE) // PAGE: e["event"] for e in events}
        assert by_page == {
            0: "unmerged_same_content",
            1: "unmerged_changed",
            3: "unmapped",
            4: "merged",
        }
        assert {e["vma_start"] for e in events} == {BASE}
        (row,) = rows
        assert (row["ksm_pages"], row["present_pages"]) == (2, 4)  # pages 2 and 4
        assert (row["merged"], row["unmerged_same_content"], row["unmerged_changed"]) == (1, 1, 1)
        assert row["unmapped"] == 1

        # nothing changes: no events; an exited process simply has no row
        rows, events = canary.sample([90, 91], 2, 2.0)
        assert [r["pid"] for r in rows] == [90]
        assert events == []
        assert canary.totals == {
            "merged": 5,
            "unmerged_same_content": 1,
            "unmerged_changed": 1,
            "unmerged": 0,
            "unmapped": 1,
        }
