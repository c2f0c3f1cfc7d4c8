"""``observe``: sampling a fake KSM tree into Parquet and reading it back, Ctrl-C, refusals,
the CLI, and (marker ``kernel``) a real holder process merging while it is observed."""

from __future__ import annotations

import json
import os
import signal
import stat
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from planner.capture.procfs import parse_kb_fields
from planner.errors import (
    InputDataError,
    OutputExistsError,
    OutputRefusedError,
    TargetNotFoundError,
    UsageProblem,
)
from planner.kernel.holder import Holder
from planner.kernel.observe import observe
from planner.kernel.sysfs import COUNTERS, KsmLease, KsmSysfs
from planner.trace.recording import (
    FORMAT,
    KSM_FILE,
    META_FILE,
    PROCESSES_FILE,
    VERSION,
    read_observed,
)

CliRunner = Any

USER = (
    "ksm_rmap_items 12\nksm_zero_pages 1\nksm_merging_pages 3\nksm_process_profit 100\n"
    "ksm_merge_any: yes\nksm_mergeable: yes\n"
)
IDLE = (
    "ksm_rmap_items 0\nksm_zero_pages 0\nksm_merging_pages 0\nksm_process_profit 0\n"
    "ksm_merge_any: no\nksm_mergeable: no\n"
)


@pytest.fixture
def host(tmp_path: Path, make_sysfs: Any, make_proc: Any) -> tuple[KsmSysfs, str]:
    """A fake KSM tree (run=1, some counters) and a fake /proc with ksmd and three processes."""
    sysfs = make_sysfs(tmp_path / "ksm", run=1, pages_sharing=5, general_profit=-640)
    proc = make_proc(tmp_path / "proc", {100: USER, 200: IDLE, 300: None})
    (proc / "100" / "smaps_rollup").write_text("Rss: 800 kB\nKSM: 12 kB\n")
    ksmd = proc / "42"
    ksmd.mkdir()
    (ksmd / "comm").write_text("ksmd\n")
    (ksmd / "cmdline").write_bytes(b"")
    (ksmd / "schedstat").write_text("5000000 1250000 10\n")
    (proc / "vmstat").write_text("nr_free_pages 10\ncow_ksm 7\nksm_swpin_copy 0\n")
    return sysfs, str(proc)


def tree_state(sysfs: KsmSysfs) -> dict[str, tuple[str, float]]:
    return {p.name: (p.read_text(), p.stat().st_mtime) for p in sysfs.path.iterdir()}


def test_samples_every_counter_knob_and_process(tmp_path: Path, host: tuple[KsmSysfs, str]) -> None:
    sysfs, proc = host
    before = tree_state(sysfs)
    out = tmp_path / "rec"
    res = observe(
        out,
        interval_s=0.02,
        duration_s=0.1,
        pids=[100, 200],
        smaps=True,
        sysfs=sysfs,
        proc_root=proc,
    )
    assert res.samples == 6  # t = 0, 0.02, ..., 0.1
    assert res.interrupted is False
    assert res.processes == [100, 200]
    assert tree_state(sysfs) == before  # read-only
    tl = read_observed(out)
    c = tl.counters
    assert list(c["sample"]) == list(range(6))
    assert c.index.is_monotonic_increasing
    assert c.index[-1] == pytest.approx(0.1, abs=0.05)
    for name in (*COUNTERS, "run", "pages_to_scan", "sleep_millisecs", "advisor_mode"):
        assert name in c.columns, name
    assert set(c["pages_sharing"]) == {5}
    assert set(c["general_profit"]) == {-640}
    assert set(c["advisor_mode"]) == {"none"}
    assert set(c["ksmd_runtime_ns"]) == {5_000_000}
    assert set(c["ksmd_wait_ns"]) == {1_250_000}  # schedstat's second field: run_delay
    assert set(c["cow_ksm"]) == {7}
    assert str(c["time"].dt.tz) == "UTC"
    p = tl.process(100)
    assert len(p) == 6
    assert set(p["ksm_merging_pages"]) == {3}
    assert bool(p["ksm_merge_any"].all())
    assert set(p["smaps_ksm_kb"]) == {12}
    assert set(tl.process(200)["smaps_ksm_kb"].isna()) == {True}  # no smaps_rollup file
    assert list(tl.per_process("ksm_rmap_items").columns) == [100, 200]
    assert tl.ksmd_cpu_fraction().iloc[1:].eq(0).all()
    meta = json.loads((out / META_FILE).read_text())
    assert meta["format"] == FORMAT
    assert meta["version"] == VERSION
    assert meta["samples"] == 6
    assert meta["options"]["pids"] == [100, 200]
    assert meta["provenance"]["command"] == "observe"
    assert meta["provenance"]["tool_version"].startswith("ksm-planner")
    assert meta["knobs_at_start"]["run"] == 1
    assert meta["ksmd_pid"] == 42


def test_the_recording_is_owner_only(tmp_path: Path, host: tuple[KsmSysfs, str]) -> None:
    sysfs, proc = host
    out = tmp_path / "rec"
    observe(out, interval_s=0.02, duration_s=0.02, sysfs=sysfs, proc_root=proc)
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for f in (META_FILE, KSM_FILE, PROCESSES_FILE):
        assert stat.S_IMODE((out / f).stat().st_mode) == 0o600, f


def test_all_keeps_only_processes_that_use_ksm(tmp_path: Path, host: tuple[KsmSysfs, str]) -> None:
    sysfs, proc = host
    res = observe(
        tmp_path / "rec",
        interval_s=0.02,
        duration_s=0.04,
        all_processes=True,
        sysfs=sysfs,
        proc_root=proc,
    )
    assert res.processes == [100]
    tl = read_observed(tmp_path / "rec")
    assert tl.pids == [100]
    assert set(tl.processes["comm"]) == {"proc100"}


def test_counter_changes_are_recorded(tmp_path: Path, host: tuple[KsmSysfs, str]) -> None:
    sysfs, proc = host
    done = threading.Event()

    def merge() -> None:  # a fake ksmd: pages_sharing grows while observe samples
        for k in range(1, 30):
            if done.is_set():
                return
            for name, value in (("pages_sharing", k * 10), ("full_scans", k)):
                tmp = tmp_path / f"{name}.new"  # renamed: a read never sees a half-written file
                tmp.write_text(f"{value}\n")
                os.replace(tmp, sysfs.path / name)
            time.sleep(0.01)

    t = threading.Thread(target=merge)
    t.start()
    try:
        res = observe(
            tmp_path / "rec", interval_s=0.03, duration_s=0.24, sysfs=sysfs, proc_root=proc
        )
    finally:
        done.set()
        t.join()
    c = read_observed(tmp_path / "rec").counters
    assert c["pages_sharing"].is_monotonic_increasing
    assert c["pages_sharing"].iloc[-1] > c["pages_sharing"].iloc[0]
    assert res.last["full_scans"] > res.first["full_scans"]


def test_sigint_ends_sampling_and_still_writes(tmp_path: Path, host: tuple[KsmSysfs, str]) -> None:
    sysfs, proc = host
    # (SIG_IGN when the tests run as a background job of a shell without job control)
    before = signal.getsignal(signal.SIGINT)
    timer = threading.Timer(0.25, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        res = observe(tmp_path / "rec", interval_s=0.05, sysfs=sysfs, proc_root=proc)
    finally:
        timer.cancel()
    assert res.interrupted is True
    assert 3 <= res.samples <= 10
    tl = read_observed(tmp_path / "rec")
    assert len(tl.counters) == res.samples
    assert tl.meta["interrupted"] is True
    assert signal.getsignal(signal.SIGINT) is before  # handler restored


def test_a_stop_event_ends_sampling(tmp_path: Path, host: tuple[KsmSysfs, str]) -> None:
    sysfs, proc = host
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    res = observe(tmp_path / "rec", interval_s=0.02, stop=stop, sysfs=sysfs, proc_root=proc)
    assert res.interrupted is True
    assert res.samples >= 3


def test_a_watched_process_that_exits_has_no_more_rows(
    tmp_path: Path, host: tuple[KsmSysfs, str]
) -> None:
    sysfs, proc = host
    stat_file = Path(proc, "100", "stat")
    fields = ["S"] + ["0"] * 18 + ["777"]  # field 22 (start time) = 777
    stat_file.write_text("100 (proc100) " + " ".join(fields) + "\n")

    def reuse() -> None:  # the pid now names another process (another start time)
        time.sleep(0.12)
        stat_file.write_text("100 (other) " + " ".join([*fields[:-1], "999"]) + "\n")

    t = threading.Thread(target=reuse)
    t.start()
    observe(
        tmp_path / "rec", interval_s=0.04, duration_s=0.32, pids=[100], sysfs=sysfs, proc_root=proc
    )
    t.join()
    tl = read_observed(tmp_path / "rec")
    assert 1 <= len(tl.process(100)) < len(tl.counters)


# ------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("kw", "err", "needle"),
    [
        ({"interval_s": 0.0}, UsageProblem, "interval"),
        ({"duration_s": -1.0}, UsageProblem, "duration"),
        ({"pids": [100], "all_processes": True}, UsageProblem, "exclude each other"),
        ({"pids": [0]}, UsageProblem, "invalid pid"),
        ({"pids": [555]}, TargetNotFoundError, "no process 555"),
    ],
)
def test_bad_options_write_nothing(
    tmp_path: Path,
    host: tuple[KsmSysfs, str],
    kw: dict[str, Any],
    err: type[Exception],
    needle: str,
) -> None:
    sysfs, proc = host
    opts: dict[str, Any] = {"interval_s": 0.02, "duration_s": 0.02, **kw}
    with pytest.raises(err, match=needle):
        observe(tmp_path / "rec", sysfs=sysfs, proc_root=proc, **opts)
    assert not (tmp_path / "rec").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".rec")]


def test_an_existing_output_needs_overwrite(tmp_path: Path, host: tuple[KsmSysfs, str]) -> None:
    sysfs, proc = host
    out = tmp_path / "rec"
    out.mkdir()
    with pytest.raises(OutputExistsError):
        observe(out, interval_s=0.02, duration_s=0.02, sysfs=sysfs, proc_root=proc)
    with pytest.raises(OutputRefusedError):  # an empty directory is no earlier recording
        observe(out, interval_s=0.02, duration_s=0.02, sysfs=sysfs, proc_root=proc, overwrite=True)
    out.rmdir()
    observe(out, interval_s=0.02, duration_s=0.04, sysfs=sysfs, proc_root=proc)
    observe(out, interval_s=0.02, duration_s=0.02, sysfs=sysfs, proc_root=proc, overwrite=True)
    assert read_observed(out).meta["samples"] == 2


def test_no_ksm_is_an_environment_error(tmp_path: Path) -> None:
    from planner.errors import KernelUnsupportedError

    with pytest.raises(KernelUnsupportedError, match="no KSM"):
        observe(tmp_path / "rec", duration_s=0.1, sysfs=KsmSysfs(str(tmp_path / "none")))
    assert not (tmp_path / "rec").exists()


def test_reader_refuses_what_is_not_a_recording(tmp_path: Path, host: tuple[KsmSysfs, str]) -> None:
    with pytest.raises(InputDataError, match="not a directory"):
        read_observed(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputDataError, match=r"no observe\.json"):
        read_observed(tmp_path / "empty")
    sysfs, proc = host
    out = tmp_path / "rec"
    observe(out, interval_s=0.02, duration_s=0.02, sysfs=sysfs, proc_root=proc)
    meta = json.loads((out / META_FILE).read_text())
    (out / META_FILE).write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(InputDataError, match="version 99"):
        read_observed(out)
    (out / META_FILE).write_text(json.dumps({**meta, "format": "something-else"}))
    with pytest.raises(InputDataError, match="not a ksm-planner-observe"):
        read_observed(out)
    (out / META_FILE).write_text(json.dumps(meta))
    (out / KSM_FILE).write_bytes(b"not parquet")
    with pytest.raises(InputDataError, match="Parquet"):
        read_observed(out)
    tl_bad_column = tmp_path / "rec2"
    observe(tl_bad_column, interval_s=0.02, duration_s=0.02, sysfs=sysfs, proc_root=proc)
    with pytest.raises(InputDataError, match="no per-process column"):
        read_observed(tl_bad_column).per_process("bogus")


def test_parse_smaps() -> None:
    assert parse_kb_fields("Rss: 1 kB\nKSM:  40 kB\n").get("KSM") == 40
    assert parse_kb_fields("Rss: 1 kB\n").get("KSM") is None


def test_parquet_schema_is_documented_types(tmp_path: Path, host: tuple[KsmSysfs, str]) -> None:
    sysfs, proc = host
    observe(
        tmp_path / "rec", interval_s=0.02, duration_s=0.02, pids=[100], sysfs=sysfs, proc_root=proc
    )
    ksm = pq.read_schema(tmp_path / "rec" / KSM_FILE)
    assert str(ksm.field("sample").type) == "int32"
    assert str(ksm.field("time").type) == "timestamp[us, tz=UTC]"
    assert str(ksm.field("pages_sharing").type) == "int64"
    assert str(ksm.field("advisor_mode").type) == "string"
    procs = pq.read_schema(tmp_path / "rec" / PROCESSES_FILE)
    assert str(procs.field("pid").type) == "int32"
    assert str(procs.field("ksm_merge_any").type) == "bool"


# ------------------------------------------------------------------------------ CLI (read-only)


def test_cli_observes_this_host_read_only(cli: CliRunner, tmp_path: Path) -> None:
    if not KsmSysfs().available():
        pytest.skip("no /sys/kernel/mm/ksm on this kernel")
    out = tmp_path / "rec"
    code, stdout, err = cli(
        [
            "observe",
            "--out",
            out,
            "--interval",
            "0.05",
            "--duration",
            "0.1",
            "--pid",
            os.getpid(),
            "--json",
        ]
    )
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["samples"] == 3
    assert doc["processes"] == [os.getpid()]
    assert "pages_sharing" in doc["last"]
    code, _, err = cli(
        ["observe", "--out", tmp_path / "rec3", "--duration", "0.05", "--interval", "0.05"]
    )
    assert code == 0, err
    assert "2 samples" in err


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["--pid", "1", "--all"], 2, "exclude each other"),
        (["--pid", "999999999"], 4, "no process"),
        (["--duration", "0"], 2, "duration"),
        (["--interval", "0.001"], 2, "--interval"),
    ],
)
def test_cli_refusals(
    cli: CliRunner, tmp_path: Path, args: list[str], code: int, needle: str
) -> None:
    got, out, err = cli(["observe", "--out", tmp_path / "rec", "--duration", "0.1", *args])
    assert got == code, err
    assert needle in err
    assert out == ""
    assert not (tmp_path / "rec").exists()


# ------------------------------------------------------------------------------ real kernel


@pytest.mark.kernel
def test_observe_a_holder_while_ksmd_merges(tmp_path: Path, ksm_lease: KsmLease) -> None:
    """observe records a holder's pages merging: ksmd is started after the first sample and
    observe stopped two samples after the merge is complete, on conditions, not on a
    timetable (a loaded host delays every sample by an unknown amount)."""
    n, interval_s = 2000, 0.1
    ksm_lease.reset({"pages_to_scan": 100_000, "sleep_millisecs": 50, "smart_scan": 0})
    sysfs = ksm_lease.sysfs
    stop = threading.Event()
    samples = _SampleCount()
    problems: list[str] = []

    def drive() -> None:
        try:
            samples.wait_for(1)  # the first sample sees ksmd stopped
            ksm_lease.start()
            deadline = time.monotonic() + 60
            while sysfs.read_int("pages_shared") + sysfs.read_int("pages_sharing") < n:
                if time.monotonic() > deadline:
                    problems.append("ksmd did not merge the holder's pages in 60 s")
                    return
                time.sleep(0.02)
            samples.wait_for(samples.n + 2)  # at least one sample after the merge
        finally:
            stop.set()

    h = Holder.spawn()
    try:
        h.map_region(n)
        h.write(list(range(n)), [0xABCDEF] * n)
        h.register()
        driver = threading.Thread(target=drive)
        driver.start()
        try:
            res = observe(
                tmp_path / "rec",
                interval_s=interval_s,
                pids=[h.pid],
                stop=stop,
                progress=samples,
            )
        finally:
            stop.set()
            driver.join()
            ksm_lease.stop()
        pid = h.pid
    finally:
        h.kill()
    assert not problems, problems
    assert res.samples >= 3
    tl = read_observed(tmp_path / "rec")
    c = tl.counters
    assert len(c) == res.samples
    t_s = c.index.to_numpy() if c.index.name == "t_s" else c["t_s"].to_numpy()
    # one sample per tick of the grid at most (a slow sample skips ticks): each sample starts
    # in a later tick than the one before (1 us for the floats' rounding)
    assert (np.diff(np.floor((t_s + 1e-6) / interval_s)) >= 1).all(), t_s
    assert c["run"].iloc[0] == 0
    assert c["run"].iloc[-1] == 1
    assert c["pages_sharing"].iloc[0] == 0
    assert c["pages_sharing"].is_monotonic_increasing
    last = c.iloc[-1]
    assert last["pages_shared"] + last["pages_sharing"] == n  # 2000 identical pages, 8 KSM pages
    assert last["full_scans"] >= 2
    assert last["ksmd_runtime_ns"] > c["ksmd_runtime_ns"].iloc[0]
    merging = tl.process(pid)["ksm_merging_pages"]
    assert merging.iloc[0] == 0
    assert merging.iloc[-1] == n
    assert tl.per_process("ksm_rmap_items")[pid].iloc[-1] == n


class _SampleCount:
    """A :class:`planner._progress.Progress` that counts observe's samples for a test thread
    to wait on (``observe`` advances it by one per sample)."""

    def __init__(self) -> None:
        self.n = 0
        self._cond = threading.Condition()

    def start(self, task: str, total: float | None) -> None:
        del task, total

    def advance(self, amount: float) -> None:
        with self._cond:
            self.n += int(amount)
            self._cond.notify_all()

    def finish(self) -> None:
        with self._cond:
            self.n += 10**6  # observe stopped: release any waiter
            self._cond.notify_all()

    def wait_for(self, n: int, timeout_s: float = 30.0) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.n >= n, timeout=timeout_s)


def test_canary_counts_merges_lost_to_writes(tmp_path: Path, ksm_lease: KsmLease) -> None:
    """Merged pages rewritten with the same bytes are told from pages given new bytes, and
    both from what cow_ksm counts (observe --ksm-pages on a real holder process)."""
    n, same, changed = 600, list(range(0, 50)), list(range(100, 130))
    ksm_lease.reset({"pages_to_scan": 100_000, "sleep_millisecs": 20, "smart_scan": 0})
    h = Holder.spawn()
    try:
        h.map_region(n)
        contents = [0xA0 + i % 3 for i in range(n)]  # three contents, 200 pages each
        h.write(list(range(n)), contents)
        h.register()
        ksm_lease.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            stat = parse_kb_fields((Path("/proc") / str(h.pid) / "ksm_stat").read_text())
            if stat.get("ksm_merging_pages") == n:
                break
            time.sleep(0.05)
        ksm_lease.stop()  # nothing merges again while the canary watches
        stop = threading.Event()
        samples = _SampleCount()

        def rewrite() -> None:
            # after the first sample (a busy host may take longer than any fixed sleep to
            # get there), then three more samples to see the writes
            samples.wait_for(1)
            h.write(same, [contents[s] for s in same])  # the same bytes: a COW break each
            h.write(changed, [0xB000 + s for s in changed])  # new bytes
            samples.wait_for(samples.n + 3)
            stop.set()

        writer = threading.Thread(target=rewrite)
        writer.start()
        try:
            res = observe(
                tmp_path / "rec",
                interval_s=0.1,
                pids=[h.pid],
                ksm_pages=True,
                stop=stop,
                progress=samples,
            )
        finally:
            writer.join()
    finally:
        h.kill()
    tl = read_observed(tmp_path / "rec")
    assert tl.canary is not None
    assert tl.page_events is not None
    assert tl.canary["ksm_pages"].iloc[0] == n
    assert tl.canary["ksm_pages"].iloc[-1] == n - len(same) - len(changed)
    totals = tl.canary[["unmerged_same_content", "unmerged_changed", "unmerged", "unmapped"]].sum()
    assert totals.to_dict() == {
        "unmerged_same_content": len(same),
        "unmerged_changed": len(changed),
        "unmerged": 0,
        "unmapped": 0,
    }
    assert res.canary is not None
    assert res.canary["merged"] == n  # the first sample lists every KSM page
    cow = tl.counters["cow_ksm"]
    assert cow.iloc[-1] - cow.iloc[0] >= len(same) + len(changed)  # the host's, at least ours
    rates = tl.unmerges_per_s()
    assert rates["unmerged_same_content"] > 0
    # the host's breaks include ours (equal counts over one span: compared to rounding)
    ours = rates["unmerged_same_content"] + rates["unmerged_changed"]
    assert rates["cow_ksm"] >= ours * (1 - 1e-12)
