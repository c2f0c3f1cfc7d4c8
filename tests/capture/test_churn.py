"""Sampling between snapshots on a fake /proc: what each page's counts say, with and without
soft-dirty."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from planner.capture.procfs import ProcFS
from planner.capture.session import CaptureOptions, capture
from planner.errors import UsageProblem
from planner.trace.io import HostTrace, open_trace

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import FakeProc, FakeProcess

PAGE = 4096
BASE = 0x10000


class SoftDirtyProcFS(ProcFS):
    """A fake procfs whose clear_refs clears bit 55 like a kernel with soft-dirty."""

    def __init__(self, fake: FakeProc) -> None:
        super().__init__(fake.root, sys_root=fake.sys_root)
        self.fake = fake
        self.cleared: list[int] = []

    def clear_soft_dirty(self, pid: int) -> None:
        super().clear_soft_dirty(pid)  # the real write of "4" into the fake file
        self.cleared.append(pid)
        proc = self.fake.processes[pid]
        for page in proc.pages.values():
            page.soft_dirty = False
        proc.write()


def _process(fake_proc: FakeProc) -> FakeProcess:
    p = fake_proc.process(80)
    p.map(BASE, 8)
    for i in range(6):
        p.page(BASE + i * PAGE, fake_proc.unique_page(i), pfn=800 + i, exclusive=True)
    fake_proc.write()
    return p


def _sample(
    fake_proc: FakeProc,
    out: Path,
    key_file: Path,
    hook: Callable[[int], None],
    procfs: ProcFS | None = None,
    **kw: Any,
) -> tuple[HostTrace, Any]:
    calls = {"n": 0}

    def sleep(seconds: float) -> None:
        calls["n"] += 1
        hook(calls["n"])

    result = capture(
        CaptureOptions(
            out=out,
            key_file=key_file,
            proc_root=fake_proc.root,
            sys_root=fake_proc.sys_root,
            pids=(80,),
            snapshots=1,
            interval_s=0.5,
            sample_ms=100,
            priority="normal",
            **kw,
        ),
        sleep=sleep,
        procfs=procfs,
    )
    return open_trace(out).load_host(), result


def _counts(ht: HostTrace) -> dict[int, dict[str, Any]]:
    return {
        (r["page_addr"] - BASE) // PAGE: r for r in ht.pages_of(0).to_pylist() if r["pid"] == 80
    }


def test_content_sampling_counts_changes_moves_and_absences(
    fake_proc: FakeProc, tmp_path: Path, key_file: Path
) -> None:
    p = _process(fake_proc)

    def hook(n: int) -> None:  # the n-th pause: before pass n (pass 0 follows the snapshot)
        p.page(BASE, fake_proc.unique_page(100 + n), pfn=800, exclusive=True)  # new content
        if n == 1:
            p.page(BASE + 3 * PAGE, fake_proc.unique_page(3), pfn=903, exclusive=True)  # moved
        if n == 2:
            p.page(BASE + 2 * PAGE, None, pfn=0, present=False)  # unmapped
        p.write()

    ht, result = _sample(fake_proc, tmp_path / "t", key_file, hook, soft_dirty=False)
    snap = ht.snapshots.to_pylist()[0]
    passes = snap["samples"]
    assert passes == 6  # 0.5 s of 100 ms passes after the only snapshot, and the closing one
    assert (snap["sample_ms"], snap["soft_dirty"]) == (100.0, False)
    assert snap["sample_coverage"] == 1.0  # the budget paid for every page at every pass
    assert snap["interval_s"] >= 0.0
    c = _counts(ht)
    assert [c[i]["samples"] for i in range(6)] == [passes] * 6
    assert c[0]["content_checks"] == passes
    assert c[0]["content_changes"] == passes - 1  # changed before every pass but the first
    assert (c[1]["content_changes"], c[1]["frame_changes"], c[1]["absent_samples"]) == (0, 0, 0)
    assert c[2]["absent_samples"] == passes - 2  # gone from pass 2 on
    assert c[2]["content_checks"] == 2
    assert (c[3]["frame_changes"], c[3]["content_changes"]) == (1, 0)  # same bytes, new frame
    assert all(c[i]["same_content_writes"] is None for i in range(6))  # writes not tracked
    rows = ht.samples.to_pylist()
    assert [r["sample"] for r in rows] == list(range(passes))
    assert [r["pages_changed"] for r in rows] == [0] + [1] * (passes - 1)
    assert [r["pages_absent"] for r in rows] == [0, 0] + [1] * (passes - 2)
    assert rows[1]["frames_changed"] == 1
    assert all(r["pages_written"] is None and r["state"] == "ok" for r in rows)
    assert rows[0]["pages_tracked"] == 6
    assert result.sampling_passes == passes
    assert result.soft_dirty is False
    assert "off" in (result.soft_dirty_note or "")


def test_the_first_other_content_is_kept_as_its_keyed_hash(
    fake_proc: FakeProc, tmp_path: Path, key_file: Path
) -> None:
    """``other_hash``: the content a check first found in place of the snapshot's. A page that
    alternates shows its other content although it is back at the snapshot's at the end."""
    p = _process(fake_proc)
    other = fake_proc.unique_page(5)  # page 5's content: its hash is in the trace

    def hook(n: int) -> None:
        p.page(BASE, fake_proc.unique_page(100 + n), pfn=800, exclusive=True)  # drifts
        toggled = other if n % 2 else fake_proc.unique_page(4)
        p.page(BASE + 4 * PAGE, toggled, pfn=804, exclusive=True)  # alternates, ends back
        p.write()

    ht, _ = _sample(fake_proc, tmp_path / "t", key_file, hook, soft_dirty=False)
    c = _counts(ht)
    assert c[4]["content_changes"] == ht.snapshots.to_pylist()[0]["samples"] - 1
    assert c[4]["other_hash"] == c[5]["content_hash"]  # the other content, keyed as pages are
    assert c[0]["other_hash"] not in (None, c[0]["content_hash"])  # the first new one
    assert all(c[i]["other_hash"] is None for i in (1, 2, 3, 5))  # none changed content


def test_the_last_interval_ends_with_a_pass_over_every_page(
    fake_proc: FakeProc, tmp_path: Path, key_file: Path
) -> None:
    """No snapshot closes the interval after the last one: it ends with a pass that checks
    every page, so a change made after the last regular pass (here in the pause before the
    closing pass: the five regular passes follow pauses 1-4) is seen."""
    p = _process(fake_proc)

    def hook(n: int) -> None:
        if n >= 5:
            p.page(BASE + 4 * PAGE, fake_proc.unique_page(5), pfn=804, exclusive=True)
            p.write()

    ht, _ = _sample(fake_proc, tmp_path / "t", key_file, hook, soft_dirty=False)
    c = _counts(ht)
    assert c[4]["content_changes"] == 1
    assert c[4]["other_hash"] == c[5]["content_hash"]
    rows = ht.samples.to_pylist()
    assert [r["pages_hashed"] for r in rows][-1] == 6  # every page, once more


def test_soft_dirty_counts_same_content_writes(
    fake_proc: FakeProc, tmp_path: Path, key_file: Path
) -> None:
    p = _process(fake_proc)
    fs = SoftDirtyProcFS(fake_proc)

    def hook(n: int) -> None:
        same = p.pages[BASE + 4 * PAGE]  # rewritten with the same bytes
        p.page(BASE + 4 * PAGE, same.content, pfn=804, exclusive=True, soft_dirty=True)
        p.page(BASE + 5 * PAGE, fake_proc.unique_page(500 + n), pfn=805, soft_dirty=True)
        p.write()

    ht, result = _sample(fake_proc, tmp_path / "t", key_file, hook, procfs=fs, soft_dirty=True)
    snap = ht.snapshots.to_pylist()[0]
    passes = snap["samples"]
    assert snap["soft_dirty"] is True
    assert result.soft_dirty is True
    assert result.soft_dirty_note is None
    c = _counts(ht)
    # with soft-dirty only written pages are read: the others are never checked
    assert [c[i]["content_checks"] for i in range(4)] == [0, 0, 0, 0]
    assert [c[i]["same_content_writes"] for i in range(4)] == [0, 0, 0, 0]
    assert (c[4]["content_checks"], c[4]["content_changes"]) == (passes - 1, 0)
    assert c[4]["same_content_writes"] == passes - 1  # every write left the content as it was
    assert (c[5]["content_changes"], c[5]["same_content_writes"]) == (passes - 1, 0)
    rows = ht.samples.to_pylist()
    assert [r["pages_written"] for r in rows] == [0] + [2] * (passes - 1)
    assert [r["same_content_writes"] for r in rows] == [0] + [1] * (passes - 1)
    # cleared when sampling began and after every pass
    assert fs.cleared == [80] * (passes + 1)


def test_a_process_exiting_while_sampled_is_gone_from_then_on(
    fake_proc: FakeProc, tmp_path: Path, key_file: Path
) -> None:
    p = _process(fake_proc)

    def hook(n: int) -> None:
        if n == 2:
            for name in ("pagemap", "mem"):  # an exited process: nothing left to read
                (p.dir / name).write_bytes(b"")

    ht, _ = _sample(fake_proc, tmp_path / "t", key_file, hook, soft_dirty=False)
    rows = ht.samples.to_pylist()
    assert [r["state"] for r in rows] == ["ok", "ok", "gone"]
    c = _counts(ht)
    assert c[1]["samples"] == 2  # counted until it went


def test_sampling_options_are_checked(fake_proc: FakeProc, tmp_path: Path) -> None:
    base = {"out": tmp_path / "t", "pids": (1,)}
    with pytest.raises(UsageProblem, match="at least 10"):
        CaptureOptions(**base, sample_ms=5, interval_s=1).validate()
    with pytest.raises(UsageProblem, match="longer than --interval"):
        CaptureOptions(**base, sample_ms=2000, interval_s=1).validate()
    with pytest.raises(UsageProblem, match="needs sampling"):
        CaptureOptions(**base, soft_dirty=True).validate()
