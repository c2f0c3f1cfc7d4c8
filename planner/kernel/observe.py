"""Sample the real KSM over time (read-only) into a recording (Parquet).

:func:`observe` records what a host's KSM really did -- a canary host running a workload --
so that a prediction (``replay``, ``whatif``) can be compared with it. It only **reads**:
``/sys/kernel/mm/ksm`` (every counter and knob), ``/proc/<pid>/ksm_stat`` of the chosen
processes, optionally ``/proc/<pid>/smaps_rollup`` (``KSM:``), ksmd's CPU time
(``/proc/<ksmd>/schedstat``) and ``cow_ksm`` / ``ksm_swpin_copy`` from ``/proc/vmstat``, and
in canary mode (``ksm_pages``, :mod:`planner.kernel.canary`) the pagemap, ``/proc/kpageflags``
and the contents of pages of the sampled processes that lost their merge. It needs no lease
and never writes sysfs.

Sampling runs every ``interval_s`` (on a fixed grid from the first sample; ticks missed by a
slow sample are skipped) for ``duration_s``, or until SIGINT / SIGTERM (Ctrl-C): then the
samples collected so far are written and the recording is marked ``interrupted``. The output
directory appears atomically when sampling ends; nothing is left at ``out`` on failure.

The recording's format (``ksm-planner-observe`` version 1) and its reader,
:func:`~planner.trace.recording.read_observed`, are in :mod:`planner.trace.recording`: what-if
and the review read recordings without importing this recorder.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import pyarrow as pa
import pyarrow.parquet as pq

from planner._fs import atomic_dir
from planner._progress import NULL_PROGRESS, Progress
from planner.capture.procfs import ProcessGone, ProcFS
from planner.errors import (
    CapturePermissionError,
    KernelUnsupportedError,
    TargetNotFoundError,
    UsageProblem,
)
from planner.kernel.canary import Canary
from planner.kernel.sysfs import COUNTERS, PROC_ROOT, KsmSysfs
from planner.provenance import HostInfo, Provenance
from planner.trace.recording import (
    CANARY_FILE,
    CANARY_SCHEMA,
    EVENTS_FILE,
    EVENTS_SCHEMA,
    FLAG_FIELDS,
    FORMAT,
    KSM_FILE,
    KSMD_FIELDS,
    META_FILE,
    PROCESS_SCHEMA,
    PROCESSES_FILE,
    STAT_FIELDS,
    VERSION,
    VMSTAT_FIELDS,
    ksm_schema,
)
from planner.trace.schema import PARQUET_OPTIONS

if TYPE_CHECKING:
    import os
    from collections.abc import Iterator, Sequence
    from pathlib import Path


MIN_INTERVAL_S: Final = 0.01
#: Samples buffered before a Parquet row group is written.
FLUSH_SAMPLES: Final = 600
_PARQUET: Final[dict[str, Any]] = dict(PARQUET_OPTIONS["default"])


# ----------------------------------------------------------------------------- reading /proc


def _ksmd(procfs: ProcFS) -> int | None:
    from planner.kernel.calibrate import ksmd_pid

    try:
        return ksmd_pid(str(procfs.root))
    except KernelUnsupportedError:
        return None


def _ksmd_schedstat(pid: int | None, procfs: ProcFS) -> tuple[int | None, int | None]:
    """ksmd's CPU time and its time waiting for a CPU (ns), ``None`` where unreadable."""
    if pid is None:
        return None, None
    try:
        return procfs.schedstat(pid)
    except (ProcessGone, CapturePermissionError, OSError, ValueError, IndexError):
        return None, None


def read_vmstat(procfs: ProcFS) -> dict[str, int | None]:
    """``cow_ksm`` and ``ksm_swpin_copy`` from ``/proc/vmstat`` (``None`` where absent)."""
    vm = procfs.vmstat()
    return {f: vm.get(f) for f in VMSTAT_FIELDS}


def _start_ticks(procfs: ProcFS, pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat``: the start time, to notice a reused pid."""
    try:
        return procfs.stat(pid).starttime_ticks
    except (ProcessGone, CapturePermissionError, OSError, ValueError, IndexError):
        return None


def _process_row(procfs: ProcFS, pid: int, *, smaps: bool) -> dict[str, Any] | None:
    stat = procfs.ksm_stat(pid)
    if not stat:  # gone, unreadable, or a zombie (its mm is gone)
        return None
    row: dict[str, Any] = {"pid": pid, "comm": procfs.comm(pid) or "?"}
    for f in STAT_FIELDS:
        row[f] = stat.get(f)
    for f in FLAG_FIELDS:
        row[f] = bool(stat[f]) if f in stat else None
    row["smaps_ksm_kb"] = procfs.smaps_rollup_kb(pid).get("KSM") if smaps else None
    return row


def _uses_ksm(row: dict[str, Any]) -> bool:
    return bool(
        row.get("ksm_merge_any") or row.get("ksm_mergeable") or any(row.get(f) for f in STAT_FIELDS)
    )


def _watch(procfs: ProcFS, pids: Sequence[int]) -> dict[int, int | None]:
    """``pid -> start time`` of the processes to watch, each checked readable now."""
    watched: dict[int, int | None] = {}
    for pid in dict.fromkeys(pids):
        where = f"{procfs.root}/{pid}/ksm_stat"
        if not procfs.path(pid, "").is_dir():
            raise TargetNotFoundError(f"no process {pid}", hint="check it with ps -p PID")
        try:
            procfs.text(pid, "ksm_stat")
        except CapturePermissionError as exc:
            raise CapturePermissionError(
                f"not allowed to read {where}", hint="run as root or as the process's owner"
            ) from exc
        except ProcessGone as exc:
            raise KernelUnsupportedError(
                f"{where} does not exist", hint="use Linux 6.1 or later built with CONFIG_KSM=y"
            ) from exc
        watched[pid] = _start_ticks(procfs, pid)
    return watched


# ----------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class ObserveResult:
    """What :func:`observe` wrote."""

    out: str
    samples: int
    duration_s: float
    interrupted: bool
    processes: list[int]
    """Every pid that has at least one row."""
    first: dict[str, Any]
    last: dict[str, Any]
    """Global counters (and ``ksmd_runtime_ns``, ``ksmd_wait_ns``) of the first and the last
    sample."""
    canary: dict[str, int] | None = None
    """Canary mode: page events over the recording, by kind (``merged``, ...)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "out": self.out,
            "samples": self.samples,
            "duration_s": self.duration_s,
            "interrupted": self.interrupted,
            "processes": list(self.processes),
            "first": dict(self.first),
            "last": dict(self.last),
            "canary": dict(self.canary) if self.canary is not None else None,
        }


@dataclass
class _Recorder:
    """Buffers samples and writes them as Parquet row groups into ``root``."""

    root: Path
    ksm_columns: list[str]
    word_columns: set[str]
    ksm_rows: list[dict[str, Any]] = field(default_factory=list)
    proc_rows: list[dict[str, Any]] = field(default_factory=list)
    ksm_writer: pq.ParquetWriter | None = None
    proc_writer: pq.ParquetWriter | None = None
    canary: bool = False
    canary_rows: list[dict[str, Any]] = field(default_factory=list)
    event_rows: list[dict[str, Any]] = field(default_factory=list)
    canary_writers: tuple[pq.ParquetWriter, pq.ParquetWriter] | None = None

    def ksm_schema(self) -> pa.Schema:
        return ksm_schema(self.ksm_columns, self.word_columns)

    def flush(self) -> None:
        schema = self.ksm_schema()
        if self.ksm_writer is None:
            self.ksm_writer = pq.ParquetWriter(self.root / KSM_FILE, schema, **_PARQUET)
            self.proc_writer = pq.ParquetWriter(
                self.root / PROCESSES_FILE, PROCESS_SCHEMA, **_PARQUET
            )
        assert self.proc_writer is not None
        if self.ksm_rows:
            self.ksm_writer.write_table(pa.Table.from_pylist(self.ksm_rows, schema=schema))
        if self.proc_rows:
            self.proc_writer.write_table(
                pa.Table.from_pylist(self.proc_rows, schema=PROCESS_SCHEMA)
            )
        self.ksm_rows.clear()
        self.proc_rows.clear()
        if self.canary:  # canary mode (planner/kernel/canary.py)
            if self.canary_writers is None:
                self.canary_writers = (
                    pq.ParquetWriter(self.root / CANARY_FILE, CANARY_SCHEMA, **_PARQUET),
                    pq.ParquetWriter(self.root / EVENTS_FILE, EVENTS_SCHEMA, **_PARQUET),
                )
            for writer, rows, schema in (
                (self.canary_writers[0], self.canary_rows, CANARY_SCHEMA),
                (self.canary_writers[1], self.event_rows, EVENTS_SCHEMA),
            ):
                if rows:
                    writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                rows.clear()

    def close(self) -> None:
        self.flush()
        for w in (self.ksm_writer, self.proc_writer, *(self.canary_writers or ())):
            if w is not None:
                w.close()


def _check_options(
    interval_s: float,
    duration_s: float | None,
    pids: Sequence[int],
    all_processes: bool,
    ksm_pages: bool = False,
) -> None:
    if ksm_pages and not (pids or all_processes):
        raise UsageProblem(
            "--ksm-pages needs the processes to look at", hint="give --pid or --all as well"
        )
    if not interval_s >= MIN_INTERVAL_S:
        raise UsageProblem(
            f"the sampling interval must be at least {MIN_INTERVAL_S} s, got {interval_s}",
            hint="give --interval in seconds, e.g. 1",
        )
    if duration_s is not None and not duration_s > 0:
        raise UsageProblem(
            f"the duration must be positive, got {duration_s}",
            hint="give --duration in seconds, or leave it out to sample until Ctrl-C",
        )
    if pids and all_processes:
        raise UsageProblem(
            "--pid and --all exclude each other", hint="watch chosen pids, or every KSM user"
        )
    bad = [p for p in pids if p <= 0]
    if bad:
        raise UsageProblem(f"invalid pid(s) {bad}", hint="give positive process ids")


def observe(
    out: str | os.PathLike[str],
    *,
    interval_s: float = 1.0,
    duration_s: float | None = None,
    pids: Sequence[int] = (),
    all_processes: bool = False,
    smaps: bool = False,
    ksm_pages: bool = False,
    overwrite: bool = False,
    sysfs: KsmSysfs | None = None,
    proc_root: str = PROC_ROOT,
    progress: Progress = NULL_PROGRESS,
    stop: threading.Event | None = None,
) -> ObserveResult:
    """Sample KSM every ``interval_s`` into a recording directory ``out`` (read-only).

    Parameters
    ----------
    out
        The recording directory to create (atomically; see the module notes for its format).
    interval_s
        Seconds between samples (at least 0.01).
    duration_s
        How long to sample; ``None``: until SIGINT/SIGTERM or ``stop``.
    pids
        Processes whose ``ksm_stat`` is sampled (each must exist at the start).
    all_processes
        Sample every process that uses KSM (exclusive with ``pids``).
    smaps
        Also read ``KSM:`` of each sampled process's ``smaps_rollup`` (slower).
    ksm_pages
        Canary mode (:mod:`planner.kernel.canary`, needs root): also record which pages of
        the sampled processes are KSM pages at every sample, and which lost their merge with
        their content unchanged.
    overwrite
        Replace ``out`` if it exists.
    sysfs, proc_root
        Where KSM and processes are read (fake trees in tests).
    progress
        One unit per sample (total known when ``duration_s`` is given).
    stop
        Ends the sampling when set (as SIGINT does); the samples so far are written.

    Raises
    ------
    UsageProblem
        Bad interval/duration, ``pids`` with ``all_processes``, or ``out`` exists.
    KernelUnsupportedError
        No ``/sys/kernel/mm/ksm``.
    TargetNotFoundError
        A pid in ``pids`` does not exist.
    CapturePermissionError
        Not allowed to read a watched process's ``ksm_stat``.
    """
    _check_options(interval_s, duration_s, pids, all_processes, ksm_pages)
    ksm = sysfs or KsmSysfs()
    if not ksm.available():
        raise KernelUnsupportedError(
            f"{ksm.root} does not exist: this kernel has no KSM",
            hint="use a kernel built with CONFIG_KSM=y",
        )
    procfs = ProcFS(proc_root)
    watched = _watch(procfs, pids)
    host = HostInfo.collect()
    ksmd = _ksmd(procfs)
    first_snapshot = ksm.snapshot()
    knobs_at_start = ksm.knobs()
    columns = list(first_snapshot)
    words = {c for c, v in first_snapshot.items() if not isinstance(v, int)}
    options = {
        "interval_s": interval_s,
        "duration_s": duration_s,
        "pids": list(watched),
        "all": all_processes,
        "smaps": smaps,
        "ksm_pages": ksm_pages,
    }
    ev = stop or threading.Event()
    last_tick = int(duration_s / interval_s + 1e-9) if duration_s is not None else None
    with (
        atomic_dir(out, overwrite=overwrite) as tmp,
        _stop_on_signals(ev),
        Canary(procfs) if ksm_pages else contextlib.nullcontext() as canary,
    ):
        rec = _Recorder(tmp, columns, words, canary=canary is not None)
        started = dt.datetime.now(dt.UTC)
        t0 = time.monotonic()
        seen: set[int] = set()
        first: dict[str, Any] = {}
        last: dict[str, Any] = {}
        n = tick = 0
        progress.start("observing KSM", None if last_tick is None else last_tick + 1)
        try:
            while True:
                t_s = time.monotonic() - t0
                row = _sample_ksm(ksm, columns, words, ksmd, procfs)
                row.update(sample=n, t_s=t_s, time=dt.datetime.now(dt.UTC))
                rec.ksm_rows.append(row)
                prows = _sample_processes(procfs, watched, all_processes, smaps)
                for prow in prows:
                    prow.update(sample=n, t_s=t_s)
                    rec.proc_rows.append(prow)
                    seen.add(prow["pid"])
                if canary is not None:  # the per-page KSM state of the same processes
                    crows, events = canary.sample([r["pid"] for r in prows], n, t_s)
                    rec.canary_rows += crows
                    rec.event_rows += events
                last = {c: row.get(c) for c in (*COUNTERS, *KSMD_FIELDS) if c in row}
                if n == 0:
                    first = dict(last)
                n += 1
                progress.advance(1)
                if n % FLUSH_SAMPLES == 0:
                    rec.flush()
                # the next tick of the grid still ahead (a slow sample skips ticks)
                tick = max(tick + 1, int((time.monotonic() - t0) / interval_s) + 1)
                if last_tick is not None and tick > last_tick:
                    break
                if ev.wait(max(0.0, tick * interval_s - (time.monotonic() - t0))):
                    break
        finally:
            progress.finish()
            rec.close()
        ended = dt.datetime.now(dt.UTC)
        elapsed = time.monotonic() - t0
        interrupted = ev.is_set()
        meta = {
            **_header(host, knobs_at_start, options),
            "started_utc": started.isoformat(),
            "ended_utc": ended.isoformat(),
            "duration_s": elapsed,
            "samples": n,
            "interrupted": interrupted,
            "ksmd_pid": ksmd,
            "knobs_at_start": knobs_at_start,
            "ksm_columns": columns,
            **_files(canary),
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    return ObserveResult(
        out=str(out),
        samples=n,
        duration_s=elapsed,
        interrupted=interrupted,
        processes=sorted(seen),
        first=first,
        last=last,
        canary=dict(canary.totals) if canary is not None else None,
    )


def _files(canary: Canary | None) -> dict[str, Any]:
    """The ``files`` of ``observe.json`` (and the canary's totals in canary mode)."""
    files = {"ksm": KSM_FILE, "processes": PROCESSES_FILE}
    if canary is None:
        return {"files": files}
    return {
        "files": {**files, "canary": CANARY_FILE, "page_events": EVENTS_FILE},
        "canary": dict(canary.totals),
    }


def _header(
    host: HostInfo, knobs_at_start: dict[str, int | str], options: dict[str, Any]
) -> dict[str, Any]:
    """The first keys of ``observe.json``: format, version, provenance, host, options."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "provenance": Provenance(
            hosts=(host.host,),
            kernel_release=host.kernel_release,
            knobs=dict(knobs_at_start),
            command="observe",
            extra={"options": options},
        ).to_dict(),
        "host": host.to_dict(),
        "options": options,
    }


def _sample_ksm(
    ksm: KsmSysfs, columns: list[str], words: set[str], ksmd: int | None, procfs: ProcFS
) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for name in columns:
        try:
            value: int | str | None = ksm.read(name)
        except OSError:
            value = None
        if name in words:
            row[name] = None if value is None else str(value)
        else:
            row[name] = value if isinstance(value, int) else None
    row["ksmd_runtime_ns"], row["ksmd_wait_ns"] = _ksmd_schedstat(ksmd, procfs)
    row.update(read_vmstat(procfs))
    return row


def _sample_processes(
    procfs: ProcFS, watched: dict[int, int | None], all_processes: bool, smaps: bool
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if all_processes:
        for pid in procfs.list_pids():
            row = _process_row(procfs, pid, smaps=smaps)
            if row is not None and _uses_ksm(row):
                rows.append(row)
        return rows
    for pid, start in watched.items():
        if start is not None and _start_ticks(procfs, pid) != start:
            continue  # exited (or the pid now names another process)
        row = _process_row(procfs, pid, smaps=smaps)
        if row is not None:
            rows.append(row)
    return rows


@contextlib.contextmanager
def _stop_on_signals(ev: threading.Event) -> Iterator[None]:
    """While sampling, SIGINT and SIGTERM set ``ev`` (the recording is then written)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {
        sig: signal.signal(sig, lambda _s, _f: ev.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
