"""Sample the real KSM over time (read-only) into Parquet, and read such a recording back.

:func:`observe` records what a host's KSM really did -- a canary host running a workload --
so that a prediction (``replay``, ``whatif``) can be compared with it. It only **reads**:
``/sys/kernel/mm/ksm`` (every counter and knob), ``/proc/<pid>/ksm_stat`` of the chosen
processes, optionally ``/proc/<pid>/smaps_rollup`` (``KSM:``), ksmd's CPU time
(``/proc/<ksmd>/schedstat``) and ``cow_ksm`` / ``ksm_swpin_copy`` from ``/proc/vmstat``. It
needs no lease and never writes sysfs.

Sampling runs every ``interval_s`` (on a fixed grid from the first sample; ticks missed by a
slow sample are skipped) for ``duration_s``, or until SIGINT / SIGTERM (Ctrl-C): then the
samples collected so far are written and the recording is marked ``interrupted``. The output
directory appears atomically when sampling ends; nothing is left at ``out`` on failure.

Format (``ksm-planner-observe`` version 1)
-------------------------------------------
A directory (owner-only, like captured data) with three files:

``observe.json``
    ``format`` ("ksm-planner-observe"), ``version`` (1), ``provenance`` (tool version, host,
    kernel, command, options), ``host`` (:class:`~planner.provenance.HostInfo`),
    ``started_utc`` / ``ended_utc`` (ISO 8601), ``samples``, ``interrupted``, ``ksmd_pid``,
    ``options`` (``interval_s``, ``duration_s``, ``pids``, ``all``, ``smaps``), ``knobs_at_start``
    (every writable knob of ``/sys/kernel/mm/ksm``), ``ksm_columns`` (sysfs files sampled),
    ``files``.
``ksm.parquet``
    One row per sample: ``sample`` (int32, from 0), ``t_s`` (float64, seconds since the first
    sample, monotonic clock), ``time`` (timestamp[us, UTC]), then one column per file of
    ``/sys/kernel/mm/ksm`` under its kernel name (int64; ``advisor_mode`` and other word
    knobs as strings): counters (``pages_shared``, ``pages_sharing``, ``pages_unshared``,
    ``pages_volatile``, ``pages_scanned``, ``pages_skipped``, ``full_scans``,
    ``general_profit``, ``ksm_zero_pages``, ``stable_node_chains``, ``stable_node_dups``) and
    knobs (``run``, ``pages_to_scan``, ``sleep_millisecs``, ...); then ``ksmd_runtime_ns``
    (ksmd's CPU time since boot, null where unreadable), ``cow_ksm`` and ``ksm_swpin_copy``
    (``/proc/vmstat``, null where absent). Counters keep the kernel's values: ``pages_scanned``
    is cumulative since boot and ``full_scans`` restarts at 0 after ``run=2``.
``processes.parquet``
    One row per sample and process: ``sample``, ``t_s``, ``pid`` (int32), ``comm`` (string),
    ``ksm_rmap_items``, ``ksm_zero_pages``, ``ksm_merging_pages``, ``ksm_process_profit``
    (int64, from ``ksm_stat``), ``ksm_merge_any``, ``ksm_mergeable`` (bool), ``smaps_ksm_kb``
    (int64, ``KSM:`` of ``smaps_rollup``; null unless ``smaps``). With ``pids`` the watched
    processes have a row while they live (a reused pid is not followed); with ``all``, every
    process that uses KSM at that sample (mergeable, MERGE_ANY, or any non-zero count).

:func:`read_observed` returns an :class:`ObservedTimeline` (pandas DataFrames).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pyarrow as pa
import pyarrow.parquet as pq

from planner._fs import atomic_dir
from planner._progress import NULL_PROGRESS, Progress
from planner.errors import (
    CapturePermissionError,
    InputDataError,
    KernelUnsupportedError,
    TargetNotFoundError,
    UsageProblem,
)
from planner.kernel.sysfs import COUNTERS, PROC_ROOT, KsmSysfs, parse_ksm_stat
from planner.provenance import HostInfo, Provenance
from planner.trace.schema import PARQUET_OPTIONS

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    import pandas as pd

FORMAT: Final = "ksm-planner-observe"
VERSION: Final = 1
META_FILE: Final = "observe.json"
KSM_FILE: Final = "ksm.parquet"
PROCESSES_FILE: Final = "processes.parquet"
#: ``ksm_stat`` fields stored per process (kernel names).
STAT_FIELDS: Final = (
    "ksm_rmap_items",
    "ksm_zero_pages",
    "ksm_merging_pages",
    "ksm_process_profit",
)
FLAG_FIELDS: Final = ("ksm_merge_any", "ksm_mergeable")
VMSTAT_FIELDS: Final = ("cow_ksm", "ksm_swpin_copy")
MIN_INTERVAL_S: Final = 0.01
#: Samples buffered before a Parquet row group is written.
FLUSH_SAMPLES: Final = 600
_PARQUET: Final[dict[str, Any]] = dict(PARQUET_OPTIONS["default"])

_PROCESS_FIELDS: list[pa.Field[Any]] = [
    pa.field("sample", pa.int32()),
    pa.field("t_s", pa.float64()),
    pa.field("pid", pa.int32()),
    pa.field("comm", pa.string()),
    *[pa.field(f, pa.int64()) for f in STAT_FIELDS],
    *[pa.field(f, pa.bool_()) for f in FLAG_FIELDS],
    pa.field("smaps_ksm_kb", pa.int64()),
]
PROCESS_SCHEMA: Final = pa.schema(_PROCESS_FIELDS)


# ----------------------------------------------------------------------------- reading /proc


def _ksmd(proc_root: str) -> int | None:
    from planner.kernel.calibrate import ksmd_pid

    try:
        return ksmd_pid(proc_root)
    except KernelUnsupportedError:
        return None


def _ksmd_runtime(pid: int | None, proc_root: str) -> int | None:
    if pid is None:
        return None
    try:
        return int(Path(proc_root, str(pid), "schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def read_vmstat(proc_root: str = PROC_ROOT) -> dict[str, int | None]:
    """``cow_ksm`` and ``ksm_swpin_copy`` from ``/proc/vmstat`` (``None`` where absent)."""
    out: dict[str, int | None] = dict.fromkeys(VMSTAT_FIELDS)
    with contextlib.suppress(OSError):
        for line in Path(proc_root, "vmstat").read_text().splitlines():
            name, _, val = line.partition(" ")
            if name in out:
                with contextlib.suppress(ValueError):
                    out[name] = int(val)
    return out


def parse_smaps_ksm_kb(text: str) -> int | None:
    """The ``KSM:`` line of ``smaps_rollup`` in kB (``None`` on kernels without it).

    Examples
    --------
    >>> parse_smaps_ksm_kb("Rss:  100 kB\\nKSM:   40 kB\\n")
    40
    """
    for line in text.splitlines():
        if line.startswith("KSM:"):
            return int(line.split()[1])
    return None


def _start_ticks(proc_root: str, pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat``: the start time, to notice a reused pid."""
    try:
        return int(Path(proc_root, str(pid), "stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _process_row(proc_root: str, pid: int, *, smaps: bool) -> dict[str, Any] | None:
    base = Path(proc_root, str(pid))
    try:
        stat = parse_ksm_stat((base / "ksm_stat").read_text())
    except OSError:
        return None
    if not stat:  # a zombie: its mm is gone
        return None
    try:
        comm = (base / "comm").read_text().strip()
    except OSError:
        comm = "?"
    row: dict[str, Any] = {"pid": pid, "comm": comm}
    for f in STAT_FIELDS:
        row[f] = stat.get(f)
    for f in FLAG_FIELDS:
        row[f] = bool(stat[f]) if f in stat else None
    row["smaps_ksm_kb"] = None
    if smaps:
        with contextlib.suppress(OSError, ValueError, IndexError):
            row["smaps_ksm_kb"] = parse_smaps_ksm_kb((base / "smaps_rollup").read_text())
    return row


def _uses_ksm(row: dict[str, Any]) -> bool:
    return bool(
        row.get("ksm_merge_any") or row.get("ksm_mergeable") or any(row.get(f) for f in STAT_FIELDS)
    )


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
    """Global counters (and ``ksmd_runtime_ns``) of the first and the last sample."""

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

    def ksm_schema(self) -> pa.Schema:
        fields: list[pa.Field[Any]] = [
            pa.field("sample", pa.int32()),
            pa.field("t_s", pa.float64()),
            pa.field("time", pa.timestamp("us", tz="UTC")),
        ]
        fields += [
            pa.field(c, pa.string() if c in self.word_columns else pa.int64())
            for c in self.ksm_columns
        ]
        fields += [pa.field(f, pa.int64()) for f in ("ksmd_runtime_ns", *VMSTAT_FIELDS)]
        return pa.schema(fields)

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

    def close(self) -> None:
        self.flush()
        for w in (self.ksm_writer, self.proc_writer):
            if w is not None:
                w.close()


def _check_options(
    interval_s: float, duration_s: float | None, pids: Sequence[int], all_processes: bool
) -> None:
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
    _check_options(interval_s, duration_s, pids, all_processes)
    ksm = sysfs or KsmSysfs()
    if not ksm.available():
        raise KernelUnsupportedError(
            f"{ksm.root} does not exist: this kernel has no KSM",
            hint="use a kernel built with CONFIG_KSM=y",
        )
    watched: dict[int, int | None] = {}
    for pid in dict.fromkeys(pids):
        if not Path(proc_root, str(pid)).is_dir():
            raise TargetNotFoundError(f"no process {pid}", hint="check it with ps -p PID")
        try:
            Path(proc_root, str(pid), "ksm_stat").read_text()
        except PermissionError as exc:
            raise CapturePermissionError(
                f"not allowed to read {proc_root}/{pid}/ksm_stat ({exc.strerror})",
                hint="run as root or as the process's owner",
            ) from exc
        except FileNotFoundError as exc:
            raise KernelUnsupportedError(
                f"{proc_root}/{pid}/ksm_stat does not exist",
                hint="use Linux 6.1 or later built with CONFIG_KSM=y",
            ) from exc
        watched[pid] = _start_ticks(proc_root, pid)
    host = HostInfo.collect()
    ksmd = _ksmd(proc_root)
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
    }
    ev = stop or threading.Event()
    last_tick = int(duration_s / interval_s + 1e-9) if duration_s is not None else None
    with atomic_dir(out, overwrite=overwrite) as tmp, _stop_on_signals(ev):
        rec = _Recorder(tmp, columns, words)
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
                row = _sample_ksm(ksm, columns, words, ksmd, proc_root)
                row.update(sample=n, t_s=t_s, time=dt.datetime.now(dt.UTC))
                rec.ksm_rows.append(row)
                for prow in _sample_processes(proc_root, watched, all_processes, smaps):
                    prow.update(sample=n, t_s=t_s)
                    rec.proc_rows.append(prow)
                    seen.add(prow["pid"])
                last = {c: row.get(c) for c in (*COUNTERS, "ksmd_runtime_ns") if c in row}
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
            "started_utc": started.isoformat(),
            "ended_utc": ended.isoformat(),
            "duration_s": elapsed,
            "samples": n,
            "interrupted": interrupted,
            "ksmd_pid": ksmd,
            "options": options,
            "knobs_at_start": knobs_at_start,
            "ksm_columns": columns,
            "files": {"ksm": KSM_FILE, "processes": PROCESSES_FILE},
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
    )


def _sample_ksm(
    ksm: KsmSysfs, columns: list[str], words: set[str], ksmd: int | None, proc_root: str
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
    row["ksmd_runtime_ns"] = _ksmd_runtime(ksmd, proc_root)
    row.update(read_vmstat(proc_root))
    return row


def _sample_processes(
    proc_root: str, watched: dict[int, int | None], all_processes: bool, smaps: bool
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if all_processes:
        pids = sorted(int(e.name) for e in os.scandir(proc_root) if e.name.isdigit())
        for pid in pids:
            row = _process_row(proc_root, pid, smaps=smaps)
            if row is not None and _uses_ksm(row):
                rows.append(row)
        return rows
    for pid, start in watched.items():
        if start is not None and _start_ticks(proc_root, pid) != start:
            continue  # exited (or the pid now names another process)
        row = _process_row(proc_root, pid, smaps=smaps)
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


# ----------------------------------------------------------------------------- reading back


@dataclass(frozen=True)
class ObservedTimeline:
    """A recording of :func:`observe`, as pandas DataFrames.

    Attributes
    ----------
    meta
        The contents of ``observe.json`` (provenance, options, host, times).
    counters
        One row per sample, indexed by ``t_s``: ``sample``, ``time``, every sysfs counter and
        knob (kernel names), ``ksmd_runtime_ns``, ``cow_ksm``, ``ksm_swpin_copy``.
    processes
        One row per sample and process (long format; columns as in ``processes.parquet``).
    """

    meta: dict[str, Any]
    counters: pd.DataFrame
    processes: pd.DataFrame

    @property
    def provenance(self) -> dict[str, Any]:
        """Where and how the recording was made."""
        return dict(self.meta.get("provenance", {}))

    @property
    def pids(self) -> list[int]:
        """Every pid with at least one row."""
        return sorted(int(p) for p in self.processes["pid"].unique())

    def process(self, pid: int) -> pd.DataFrame:
        """The rows of one process, indexed by ``t_s``."""
        df = self.processes[self.processes["pid"] == pid]
        return df.set_index("t_s").drop(columns=["pid"])

    def per_process(self, column: str = "ksm_merging_pages") -> pd.DataFrame:
        """One column of every process over time: index ``t_s``, one column per pid."""
        if column not in self.processes.columns:
            known = ", ".join(c for c in self.processes.columns if c.startswith(("ksm_", "smaps")))
            raise InputDataError(
                f"the recording has no per-process column {column!r}", hint=f"use one of {known}"
            )
        return self.processes.pivot_table(index="t_s", columns="pid", values=column, aggfunc="last")

    def ksmd_cpu_fraction(self) -> pd.Series:
        """ksmd's share of one CPU between consecutive samples (NaN where unreadable)."""
        runtime = self.counters["ksmd_runtime_ns"].astype("float64")
        t = self.counters.index.to_series()
        return (runtime.diff() / 1e9) / t.diff()


def read_observed(path: str | os.PathLike[str]) -> ObservedTimeline:
    """Read a recording written by :func:`observe` (``ksm-planner observe``).

    Raises
    ------
    InputDataError
        Not a recording, of an unknown format version, or with unreadable files.
    """
    root = Path(path)
    if not root.is_dir():
        raise InputDataError(
            f"{root} is not a directory", hint="give the --out directory of 'ksm-planner observe'"
        )
    from planner._input import member_name, read_input_bytes, read_input_text

    if not (root / META_FILE).exists():
        raise InputDataError(
            f"{root} has no {META_FILE}: not a recording of 'ksm-planner observe'",
            hint="give the --out directory of 'ksm-planner observe'",
        )
    text = read_input_text(root / META_FILE, what="recording manifest")
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InputDataError(f"cannot read {root / META_FILE}: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputDataError(
            f"{root / META_FILE} is not a {FORMAT} file",
            hint="give the --out directory of 'ksm-planner observe'",
        )
    version = meta.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= VERSION:
        raise InputDataError(
            f"{root} is {FORMAT} version {version}; this ksm-planner reads up to {VERSION}",
            hint="upgrade ksm-planner",
        )
    files = meta.get("files", {})
    if not isinstance(files, dict):
        raise InputDataError(f"{root / META_FILE}: files must be an object")
    tables = []
    for key, default in (("ksm", KSM_FILE), ("processes", PROCESSES_FILE)):
        # a plain name inside the recording, a regular file (no link), read through one open
        p = member_name(root, files.get(key, default), what=str(root / META_FILE))
        data = read_input_bytes(p, what="recording file", max_bytes=1 << 36, follow_symlinks=False)
        try:
            tables.append(pq.read_table(pa.BufferReader(data)).to_pandas())
        except (OSError, ValueError, TypeError, pa.ArrowException) as exc:
            raise InputDataError(
                f"cannot read {p}: {' '.join(str(exc).split())[:200]}",
                hint="the recording is damaged",
            ) from None
    counters, processes = tables
    missing = [c for c in ("sample", "t_s") if c not in counters.columns]
    if missing:
        raise InputDataError(
            f"{root / KSM_FILE} lacks columns {missing}", hint="the recording is damaged"
        )
    return ObservedTimeline(meta=meta, counters=counters.set_index("t_s"), processes=processes)
