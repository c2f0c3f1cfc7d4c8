"""Whole capture sessions on a fake /proc tree: targets, snapshots, the written trace."""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.compute as pc
import pytest
import xxhash

from planner.capture.keys import HASH_ALGO, load_key
from planner.capture.pace import SCHED_DEADLINE, Pacer
from planner.capture.procfs import KPF_KSM, KPF_THP, KPF_ZERO_PAGE
from planner.capture.session import CaptureOptions, capture, parse_labels
from planner.errors import (
    KernelUnsupportedError,
    OutputExistsError,
    OutputRefusedError,
    PlannerError,
    TargetNotFoundError,
    UsageProblem,
)
from planner.trace.io import HostTrace, open_trace
from planner.trace.schema import PageFlag as F

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import FakeProc

PAGE = 4096
CLK_TCK = os.sysconf("SC_CLK_TCK")


class RecordingProgress:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def start(self, task: str, total: float | None) -> None:
        self.events.append(("start", (task, total)))

    def advance(self, amount: float) -> None:
        self.events.append(("advance", amount))

    def finish(self) -> None:
        self.events.append(("finish", None))


def _run(
    fake_proc: FakeProc,
    out: Path,
    key_file: Path,
    *,
    between: Callable[[int], None] | None = None,
    **kw: Any,
) -> tuple[Any, HostTrace]:
    calls = {"n": 0}

    def sleep(seconds: float) -> None:
        calls["n"] += 1
        if between is not None:
            between(calls["n"])

    kw.setdefault("interval_s", 0.0)
    kw.setdefault("priority", "normal")
    opts = CaptureOptions(
        out=out, key_file=key_file, proc_root=fake_proc.root, sys_root=fake_proc.sys_root, **kw
    )
    result = capture(opts, sleep=sleep)
    return result, open_trace(out).load_host()


def _fork_family(fake_proc: FakeProc) -> None:
    """Parent 30 and its child 20 share frames 9000 (fork COW) and differ on one page."""
    parent = fake_proc.process(30, comm="master", starttime=400, rss_anon_kb=20)
    child = fake_proc.process(20, comm="worker", ppid=30, starttime=450, rss_anon_kb=16)
    # smaps of the parent's region admits KSM and huge pages (its frames' flags are read)
    parent.map(0x10000, 8, smaps={"KSM": "4 kB", "THPeligible": "1"})
    child.map(0x10000, 8)
    for proc in (parent, child):
        proc.map(0x40000, 2, "rw-p", "[heap]")
    same = fake_proc.page_of(5)
    parent.page(0x10000, same, pfn=9000)
    child.page(0x10000, same, pfn=9000)  # fork-shared frame
    parent.page(0x11000, same, pfn=9001)  # same content, its own frame
    parent.page(0x12000, fake_proc.unique_page(1), pfn=9002)
    child.page(0x12000, fake_proc.unique_page(2), pfn=9102)  # written after fork
    parent.page(0x13000, fake_proc.unique_page(3), pfn=9003)  # KSM page
    parent.page(0x14000, fake_proc.unique_page(4), pfn=9004)  # part of a THP
    parent.page(0x15000, bytes(PAGE), pfn=9005)  # the huge zero page: not recorded
    child.page(0x16000, None, pfn=0, present=False, swapped=True)
    child.page(0x40000, fake_proc.page_of(0), pfn=9200)  # zero content, real frame
    fake_proc.kpage(9000, count=2)
    fake_proc.kpage(9003, flags=1 << KPF_KSM, count=1)
    fake_proc.kpage(9004, flags=1 << KPF_THP, count=1)
    fake_proc.kpage(9005, flags=1 << KPF_ZERO_PAGE, count=0)
    fake_proc.write()


def test_capture_writes_the_four_tables(
    fake_proc: FakeProc, tmp_path: Path, key_file: Path
) -> None:
    _fork_family(fake_proc)
    out = tmp_path / "trace"
    result, ht = _run(fake_proc, out, key_file, pids=(30, 20), snapshots=2, labels={"setup": "b"})
    key = load_key(key_file)

    # --- pages: sorted by (pid, page_addr), keyed hashes, opaque frames, flags
    pages = ht.pages.to_pylist()
    first = [r for r in pages if r["snapshot_id"] == 0]
    assert [(r["pid"], r["page_addr"]) for r in first] == sorted(
        (r["pid"], r["page_addr"]) for r in first
    )
    assert [(r["pid"], r["page_addr"]) for r in first] == [
        (20, 0x10000), (20, 0x12000), (20, 0x16000), (20, 0x40000),
        (30, 0x10000), (30, 0x11000), (30, 0x12000), (30, 0x13000), (30, 0x14000),
    ]  # fmt: skip
    by = {(r["pid"], r["page_addr"]): r for r in first}
    h = lambda content: xxhash.xxh3_64_intdigest(content, seed=key.seed)  # noqa: E731
    assert (
        by[30, 0x10000]["content_hash"]
        == by[30, 0x11000]["content_hash"]
        == h(fake_proc.page_of(5))
    )
    assert by[20, 0x10000]["frame_id"] == by[30, 0x10000]["frame_id"]  # same physical page
    assert by[30, 0x11000]["frame_id"] != by[30, 0x10000]["frame_id"]  # same content, other frame
    assert by[20, 0x12000]["content_hash"] != by[30, 0x12000]["content_hash"]
    assert by[20, 0x12000]["frame_id"] != by[30, 0x12000]["frame_id"]
    frame_ids = [r["frame_id"] for r in first if r["frame_id"] is not None]
    assert sorted(set(frame_ids)) == list(range(len(set(frame_ids))))  # renumbered, never PFNs
    assert by[20, 0x10000]["flags"] & F.SHARED_MAPCOUNT
    assert by[30, 0x11000]["flags"] == 0
    assert by[30, 0x13000]["flags"] == F.KSM
    assert by[30, 0x14000]["flags"] == F.THP
    assert by[20, 0x16000]["content_hash"] is None
    assert by[20, 0x16000]["frame_id"] is None
    assert by[20, 0x16000]["flags"] == F.SWAPPED
    assert by[20, 0x40000]["flags"] == F.ZERO
    assert by[20, 0x40000]["content_hash"] == h(bytes(PAGE))
    assert by[20, 0x40000]["vma_start"] == 0x40000
    # frame ids are stable across snapshots of the session
    second = {(r["pid"], r["page_addr"]): r["frame_id"] for r in pages if r["snapshot_id"] == 1}
    assert second == {k: r["frame_id"] for k, r in by.items()}

    # --- snapshots
    snaps = ht.snapshots.to_pylist()
    assert [s["snapshot_id"] for s in snaps] == [0, 1]
    assert snaps[0]["time_s"] == 0.0
    assert snaps[1]["time_s"] >= 0.0
    s0 = snaps[0]
    assert s0["hash_algo"] == HASH_ALGO
    assert s0["hash_key_id"] == key.key_id
    assert s0["zero_hash"] == h(bytes(PAGE))
    assert s0["page_size"] == PAGE
    assert json.loads(s0["capture_options"])["pids"] == [30, 20]
    assert json.loads(s0["ksm_sysfs"]) == {"pages_to_scan": "100", "run": "0"}
    assert s0["duration_s"] > 0
    assert s0["wall_time_ns"] > 0

    # --- processes
    procs = {(r["snapshot_id"], r["pid"]): r for r in ht.processes.to_pylist()}
    master = procs[0, 30]
    assert (master["state"], master["comm"], master["proc_start"], master["pages"]) == (
        "ok",
        "master",
        400,
        5,
    )
    assert master["zero_pfn_pages"] == 1
    assert master["racy_pages"] == 0
    assert json.loads(master["labels"]) == {"setup": "b"}
    t0_wall = s0["wall_time_ns"] / 1e9
    assert master["start_time_s"] == pytest.approx(fake_proc.BTIME_S + 400 / CLK_TCK - t0_wall)
    assert procs[0, 20]["ppid"] == 30
    assert procs[0, 20]["pages"] == 4
    assert 0 <= master["capture_t0_s"] <= master["capture_t1_s"]

    # --- mappings
    maps = ht.mappings.to_pylist()
    assert {(m["pid"], m["kind"], m["present_pages"]) for m in maps if m["snapshot_id"] == 0} == {
        (20, "anon", 2), (20, "heap", 1), (30, "anon", 5), (30, "heap", 0),
    }  # fmt: skip

    # --- result and files
    assert result.pages == len(pages) == 18
    assert result.processes == 2
    assert result.gone == ()
    assert result.hash_key_id == key.key_id
    assert result.bytes_per_page > 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for f in out.rglob("*"):
        assert stat.S_IMODE(f.stat().st_mode) == (0o700 if f.is_dir() else 0o600), f
    assert key_file.read_bytes().hex() not in (out / "ksm-trace.json").read_text()


def test_the_capture_records_the_hosts_cpu(
    fake_proc: FakeProc, tmp_path: Path, key_file: Path
) -> None:
    # what a page costs ksmd depends on the CPU: whatif compares it with the cost profile's
    _fork_family(fake_proc)
    (fake_proc.root / "cpuinfo").write_text(
        "processor\t: 0\ncpu family\t: 6\nmodel\t\t: 106\nmodel name\t: Xeon @ 2.80GHz\n"
    )
    out = tmp_path / "trace"
    _run(fake_proc, out, key_file, pids=(30,), snapshots=1)
    capture_facts = open_trace(out).manifest["capture"]
    assert capture_facts["host_cpu"] == "Xeon @ 2.80GHz (family 6, model 106)"
    (fake_proc.root / "cpuinfo").unlink()
    _run(fake_proc, tmp_path / "t2", key_file, pids=(30,), snapshots=1)
    assert open_trace(tmp_path / "t2").manifest["capture"]["host_cpu"] is None


def test_process_exiting_between_snapshots_is_recorded_gone(
    fake_proc: FakeProc, tmp_path: Path, key_file: Path
) -> None:
    _fork_family(fake_proc)

    def exit_child(n: int) -> None:
        if n == 1:
            shutil.rmtree(fake_proc.root / "20")

    result, ht = _run(
        fake_proc, tmp_path / "t", key_file, pids=(30, 20), snapshots=3, between=exit_child
    )
    states = {(r["snapshot_id"], r["pid"]): r["state"] for r in ht.processes.to_pylist()}
    assert states == {(0, 20): "ok", (0, 30): "ok", (1, 20): "gone", (1, 30): "ok", (2, 30): "ok"}
    gone_row = next(r for r in ht.processes.to_pylist() if r["state"] == "gone")
    assert gone_row["comm"] == "worker"  # known from the earlier snapshot
    assert gone_row["pages"] is None
    assert result.gone == (20,)
    for sid in (1, 2):
        assert set(ht.pages_of(sid).column("pid").to_pylist()) == {30}


def test_children_are_rediscovered_each_snapshot(
    fake_proc: FakeProc, tmp_path: Path, key_file: Path
) -> None:
    for pid, ppid in ((40, 1), (41, 40), (42, 41), (50, 1)):
        p = fake_proc.process(pid, ppid=ppid, starttime=pid)
        p.map(0x10000, 1)
        p.page(0x10000, fake_proc.unique_page(pid), pfn=100 + pid)
    fake_proc.write()

    def fork_new_worker(n: int) -> None:
        if n == 1:
            p = fake_proc.process(43, ppid=40, starttime=4300)
            p.map(0x10000, 1)
            p.page(0x10000, fake_proc.unique_page(43), pfn=143)
            p.write()

    _, ht = _run(
        fake_proc,
        tmp_path / "t",
        key_file,
        pids=(40,),
        children=True,
        snapshots=2,
        between=fork_new_worker,
    )
    pids = {sid: sorted(ht.pages_of(sid).column("pid").to_pylist()) for sid in (0, 1)}
    assert pids == {0: [40, 41, 42], 1: [40, 41, 42, 43]}


def test_comm_and_cgroup_targets(fake_proc: FakeProc, tmp_path: Path, key_file: Path) -> None:
    specs = [
        (60, "gunicorn", "/system.slice/web.service", 0),
        (61, "gunicorn", "/system.slice/other.service", 0),
        (62, "python3", "/system.slice/web.service/sub", 0),
        (63, "gunicornd", "/", 0x00200000),  # a kernel thread: never a target
    ]
    for pid, comm, cg, flags in specs:
        proc = fake_proc.process(pid, comm=comm, cgroup=cg, flags=flags)
        proc.map(0x10000, 1)  # every live user process has memory (a stack at least)
        proc.page(0x10000, fake_proc.unique_page(pid), pfn=pid)
    fake_proc.write()
    _, ht = _run(fake_proc, tmp_path / "a", key_file, comm="^gunicorn")
    assert ht.processes.column("pid").to_pylist() == [60, 61]
    _, ht = _run(fake_proc, tmp_path / "b", key_file, cgroup="/system.slice/web.service")
    assert ht.processes.column("pid").to_pylist() == [60, 62]
    _, ht = _run(
        fake_proc,
        tmp_path / "c",
        key_file,
        cgroup="/sys/fs/cgroup/unified/system.slice/other.service",
    )
    assert ht.processes.column("pid").to_pylist() == [61]
    _, ht = _run(fake_proc, tmp_path / "d", key_file, cgroup="/v1mem")  # v1 memory hierarchy
    assert ht.processes.column("pid").to_pylist() == [60, 61, 62]
    with pytest.raises(TargetNotFoundError, match="cgroup"):
        _run(fake_proc, tmp_path / "e", key_file, cgroup="/system.slice/db.service")
    with pytest.raises(TargetNotFoundError, match="comm"):
        _run(fake_proc, tmp_path / "f", key_file, comm="^nginx$")
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize(
    ("kw", "error", "text"),
    [
        ({"pids": (12345,)}, TargetNotFoundError, "no process with pid 12345"),
        ({"pids": (70,)}, TargetNotFoundError, "kernel thread"),
        ({"pids": (71,)}, TargetNotFoundError, "zombie"),
        ({"pids": (73,)}, TargetNotFoundError, "thread of process 72"),
        ({}, UsageProblem, "no capture target"),
        ({"pids": (72,), "snapshots": 0}, UsageProblem, "--snapshots"),
        ({"pids": (72,), "interval_s": -1.0}, UsageProblem, "--interval"),
        ({"comm": "("}, UsageProblem, "regular expression"),
        ({"pids": (72,), "priority": "urgent"}, UsageProblem, "priority"),
    ],
)
def test_bad_targets_and_options(
    fake_proc: FakeProc,
    tmp_path: Path,
    key_file: Path,
    kw: dict[str, Any],
    error: type[PlannerError],
    text: str,
) -> None:
    fake_proc.process(70, flags=0x00200000)
    fake_proc.process(71, state="Z")
    fake_proc.process(72)
    fake_proc.process(73, tgid=72)
    fake_proc.write()
    with pytest.raises(error, match=text):
        _run(fake_proc, tmp_path / "t", key_file, **kw)
    assert list(tmp_path.glob("t*")) == []
    assert list(tmp_path.glob(".t*")) == []


def test_parse_labels() -> None:
    assert parse_labels(["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    with pytest.raises(UsageProblem, match="KEY=VALUE"):
        parse_labels(["novalue"])


def test_existing_output_needs_overwrite(
    fake_proc: FakeProc, tmp_path: Path, key_file: Path
) -> None:
    p = fake_proc.process(80)
    p.map(0x10000, 1)
    p.page(0x10000, fake_proc.page_of(1), pfn=5)
    p.write()
    out = tmp_path / "t"
    out.mkdir()
    (out / "old").write_text("x")
    with pytest.raises(OutputExistsError):
        _run(fake_proc, out, key_file, pids=(80,))
    with pytest.raises(OutputRefusedError, match="not one"):  # not written by ksm-planner
        _run(fake_proc, out, key_file, pids=(80,), overwrite=True)
    assert (out / "old").exists()
    shutil.rmtree(out)
    _run(fake_proc, out, key_file, pids=(80,))
    (out / "old").write_text("x")
    _run(fake_proc, out, key_file, pids=(80,), overwrite=True)  # an earlier trace: replaced
    assert not (out / "old").exists()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["keys", "proc", "sys", "t"]


def test_failure_mid_capture_leaves_nothing(
    fake_proc: FakeProc, tmp_path: Path, key_file: Path
) -> None:
    p = fake_proc.process(81)
    p.map(0x10000, 1)
    p.page(0x10000, fake_proc.page_of(1), pfn=5)
    fake_proc.write()

    def hide_pfns(n: int) -> None:  # snapshot 2 sees PFNs as 0 (privileges dropped)
        p.page(0x10000, fake_proc.page_of(1), pfn=0)
        p.write()

    with pytest.raises(PlannerError, match="CAP_SYS_ADMIN"):
        _run(fake_proc, tmp_path / "t", key_file, pids=(81,), snapshots=2, between=hide_pfns)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["keys", "proc", "sys"]


def test_kpageflags_optional(fake_proc: FakeProc, tmp_path: Path, key_file: Path) -> None:
    _fork_family(fake_proc)
    os.unlink(fake_proc.root / "kpageflags")
    with pytest.raises(KernelUnsupportedError, match="kpageflags does not exist") as info:
        _run(fake_proc, tmp_path / "a", key_file, pids=(30,))
    assert "--no-kpageflags" in info.value.one_line()
    _, ht = _run(fake_proc, tmp_path / "b", key_file, pids=(30,), kpageflags=False)
    flags = ht.pages.column("flags")
    assert pc.sum(pc.bit_wise_and(flags, F.KSM | F.THP | F.SHARED_MAPCOUNT)).as_py() == 0
    assert ht.pages.num_rows == 6  # the huge-zero-page PTE is only known through kpageflags


def test_progress_reports_pages(fake_proc: FakeProc, tmp_path: Path, key_file: Path) -> None:
    _fork_family(fake_proc)
    progress = RecordingProgress()
    opts = CaptureOptions(
        out=tmp_path / "t", pids=(30, 20), snapshots=2, interval_s=0, priority="normal",
        key_file=key_file, proc_root=fake_proc.root, sys_root=fake_proc.sys_root,
    )  # fmt: skip
    capture(opts, progress=progress, sleep=lambda s: None)
    starts = [e[1] for e in progress.events if e[0] == "start"]
    assert starts == [("snapshot 1/2", 9.0), ("snapshot 2/2", 9.0)]  # RssAnon 20 + 16 kB
    assert sum(e[1] for e in progress.events if e[0] == "advance") == 20  # 10 rows a snapshot
    assert [e[0] for e in progress.events].count("finish") == 2


def test_cpu_priority_is_restored() -> None:
    before = os.getpriority(os.PRIO_PROCESS, 0)
    with Pacer("low") as pacer:
        assert os.getpriority(os.PRIO_PROCESS, 0) == min(19, before + 10)
        with pacer.burst():  # a snapshot: a deadline reservation (root), else the start's nice
            policy = os.sched_getscheduler(0) & ~0x40000000  # without SCHED_RESET_ON_FORK
            if os.geteuid() == 0:
                assert policy == SCHED_DEADLINE
                assert pacer.burst_policy == "deadline"
                seen: list[int] = []
                worker = threading.Thread(target=lambda: seen.append(os.sched_getscheduler(0)))
                worker.start()  # a thread started meanwhile is an ordinary one
                worker.join()
                assert seen == [os.SCHED_OTHER]
            else:
                assert pacer.burst_policy == "nice"
        assert os.sched_getscheduler(0) == os.SCHED_OTHER
        assert os.getpriority(os.PRIO_PROCESS, 0) == min(19, before + 10)
    with Pacer("low", burst_share=None) as pacer, pacer.burst():
        assert os.sched_getscheduler(0) == os.SCHED_OTHER
        if os.geteuid() == 0:
            assert os.getpriority(os.PRIO_PROCESS, 0) == before
    with Pacer("idle"):
        assert os.sched_getscheduler(0) == os.SCHED_IDLE
    with Pacer("normal"):
        assert os.getpriority(os.PRIO_PROCESS, 0) == before
    if os.geteuid() == 0:
        assert os.getpriority(os.PRIO_PROCESS, 0) == before
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


def test_frames_are_small_sequential_ids(
    fake_proc: FakeProc, tmp_path: Path, key_file: Path
) -> None:
    p = fake_proc.process(90)
    p.map(0x10000, 64)
    rng = np.random.default_rng(5)
    pfns = rng.choice(np.arange(10**5, 10**6), 64, replace=False)
    for i, pfn in enumerate(pfns.tolist()):
        p.page(0x10000 + i * PAGE, fake_proc.unique_page(i), pfn=pfn)
    fake_proc.write()
    _, ht = _run(fake_proc, tmp_path / "t", key_file, pids=(90,))
    assert ht.pages.column("frame_id").to_pylist() == list(range(64))


def test_frame_flags_are_read_only_where_smaps_allows_them(
    fake_proc: FakeProc, tmp_path: Path, key_file: Path
) -> None:
    """kpageflags is read for mappings whose smaps shows KSM or huge pages (or THP
    eligibility), and kpagecount only for frames pagemap does not call exclusive."""
    p = fake_proc.process(95)
    p.map(0x10000, 2, smaps={"KSM": "4 kB"})  # may hold KSM pages: looked up
    p.map(0x20000, 2)  # KSM 0, AnonHugePages 0, not THP-eligible: not looked up
    p.page(0x10000, fake_proc.unique_page(1), pfn=500, exclusive=True)
    p.page(0x11000, fake_proc.unique_page(2), pfn=501)
    p.page(0x20000, fake_proc.unique_page(3), pfn=502, exclusive=True)
    p.page(0x21000, fake_proc.unique_page(4), pfn=503)
    for pfn in (500, 501, 502, 503):  # every frame claims to be KSM and mapped 3 times
        fake_proc.kpage(pfn, flags=1 << KPF_KSM, count=3)
    fake_proc.write()
    _, ht = _run(fake_proc, tmp_path / "t", key_file, pids=(95,))
    flags = dict(
        zip(
            ht.pages.column("page_addr").to_pylist(),
            ht.pages.column("flags").to_pylist(),
            strict=True,
        )
    )
    ksm = {a for a, f in flags.items() if f & F.KSM}
    shared = {a for a, f in flags.items() if f & F.SHARED_MAPCOUNT}
    assert ksm == {0x10000, 0x11000}
    # exclusive frames are mapped once whatever kpagecount says; the others are looked up
    assert shared == {0x11000, 0x21000}
