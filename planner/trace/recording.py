"""The format of a KSM recording (``ksm-planner observe``), and its reader.

A recording is what a host's KSM really did, sampled over time by
:func:`planner.kernel.observe.observe`; ``whatif --observed`` and ``report --observed``
compare a prediction with one. The format is declared here, below every layer that reads or
writes it, so that what-if and the review read recordings without importing the recorder
(the layers are checked by ``tests/test_layers.py``).

Format (``ksm-planner-observe`` version 2)
-------------------------------------------
A directory (owner-only, like captured data) with three files, and two more in canary mode
(``observe --ksm-pages``, version 2; version 1 recordings have none and are read alike):

``observe.json``
    ``format`` ("ksm-planner-observe"), ``version`` (1), ``provenance`` (tool version, host,
    kernel, command, options), ``host`` (``planner.provenance.HostInfo``),
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
    (ksmd's CPU time since boot, null where unreadable), ``ksmd_wait_ns`` (its time runnable
    but waiting for a CPU since boot, the second field of ``schedstat``; null where unreadable,
    absent from recordings made before 2026-12-05), ``cow_ksm`` and ``ksm_swpin_copy``
    (``/proc/vmstat``, null where absent). Counters keep the kernel's values: ``pages_scanned``
    is cumulative since boot and ``full_scans`` restarts at 0 after ``run=2``.
``processes.parquet``
    One row per sample and process: ``sample``, ``t_s``, ``pid`` (int32), ``comm`` (string),
    ``ksm_rmap_items``, ``ksm_zero_pages``, ``ksm_merging_pages``, ``ksm_process_profit``
    (int64, from ``ksm_stat``), ``ksm_merge_any``, ``ksm_mergeable`` (bool), ``smaps_ksm_kb``
    (int64, ``KSM:`` of ``smaps_rollup``; null unless ``smaps``). With ``pids`` the watched
    processes have a row while they live (a reused pid is not followed); with ``all``, every
    process that uses KSM at that sample (mergeable, MERGE_ANY, or any non-zero count).
``canary.parquet`` (canary mode)
    One row per sample and sampled process (:mod:`planner.kernel.canary`): ``sample``, ``t_s``,
    ``pid`` (int32), ``present_pages`` (present anonymous pages of its private mappings),
    ``ksm_pages`` (of those, KSM pages: ``/proc/kpageflags`` bit 21), and the page events of
    the sample by kind: ``merged``, ``unmerged_same_content``, ``unmerged_changed``,
    ``unmerged``, ``unmapped`` (int64); then ``cpu_s`` (float64: the process's user and
    system CPU seconds since it started, from ``/proc/<pid>/stat``; absent from older
    recordings), which tells busy processes from idle ones of one ``comm``.
``page_events.parquet`` (canary mode)
    One row per page whose KSM state changed since the previous sample: ``sample``, ``t_s``,
    ``pid``, ``page_addr`` (uint64), ``vma_kind`` (the mapping kinds of docs/capture.md §2),
    ``vma_start`` (uint64, the start of the page's mapping; absent from older recordings: with
    it, a page's offset in its mapping keys its class across runs), ``event``: ``merged`` (a
    KSM page now, not at the previous sample; the first sample lists every KSM page),
    ``unmerged_same_content`` (no longer a KSM page, its content unchanged: a
    write that left the bytes as they were broke the merge), ``unmerged_changed`` (its content
    changed), ``unmerged`` (its content could not be compared), ``unmapped`` (no longer
    present). Each page's KSM state at every sample follows from its events.

The canary's totals are in ``observe.json`` (``canary``: events by kind); ``cow_ksm`` of
``ksm.parquet`` counts every copy-on-write break of a KSM page on the host, for comparison.

:func:`read_observed` returns an :class:`ObservedTimeline` (pandas DataFrames).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pyarrow as pa
import pyarrow.parquet as pq

from planner.errors import InputDataError

if TYPE_CHECKING:
    import os
    from collections.abc import Collection, Sequence

    import pandas as pd

FORMAT: Final = "ksm-planner-observe"
VERSION: Final = 2
META_FILE: Final = "observe.json"
KSM_FILE: Final = "ksm.parquet"
PROCESSES_FILE: Final = "processes.parquet"
CANARY_FILE: Final = "canary.parquet"
EVENTS_FILE: Final = "page_events.parquet"
#: Page events of canary mode (``page_events.event``; ``canary.parquet`` has a column each).
CANARY_EVENTS: Final = (
    "merged",
    "unmerged_same_content",
    "unmerged_changed",
    "unmerged",
    "unmapped",
)
#: ``ksm_stat`` fields stored per process (kernel names).
STAT_FIELDS: Final = (
    "ksm_rmap_items",
    "ksm_zero_pages",
    "ksm_merging_pages",
    "ksm_process_profit",
)
FLAG_FIELDS: Final = ("ksm_merge_any", "ksm_mergeable")
VMSTAT_FIELDS: Final = ("cow_ksm", "ksm_swpin_copy")
#: ksmd's ``schedstat``: its CPU time and its time runnable but waiting for a CPU (ns).
KSMD_FIELDS: Final = ("ksmd_runtime_ns", "ksmd_wait_ns")

_PROCESS_FIELDS: list[pa.Field[Any]] = [
    pa.field("sample", pa.int32()),
    pa.field("t_s", pa.float64()),
    pa.field("pid", pa.int32()),
    pa.field("comm", pa.string()),
    *[pa.field(f, pa.int64()) for f in STAT_FIELDS],
    *[pa.field(f, pa.bool_()) for f in FLAG_FIELDS],
    pa.field("smaps_ksm_kb", pa.int64()),
]
#: The schema of ``processes.parquet``.
PROCESS_SCHEMA: Final = pa.schema(_PROCESS_FIELDS)
#: The schema of ``canary.parquet``.
CANARY_SCHEMA: Final = pa.schema(
    [  # type: ignore[arg-type]  # pyarrow-stubs join a list of fields to list[object]
        pa.field("sample", pa.int32()),
        pa.field("t_s", pa.float64()),
        pa.field("pid", pa.int32()),
        pa.field("present_pages", pa.int64()),
        pa.field("ksm_pages", pa.int64()),
        *[pa.field(e, pa.int64()) for e in CANARY_EVENTS],
        pa.field("cpu_s", pa.float64()),
    ]
)
#: Columns of ``canary.parquet`` and ``page_events.parquet`` that older recordings lack.
CANARY_OPTIONAL: Final = ("cpu_s", "vma_start")
#: The schema of ``page_events.parquet``.
EVENTS_SCHEMA: Final = pa.schema(
    [  # type: ignore[arg-type]  # pyarrow-stubs join a list of fields to list[object]
        pa.field("sample", pa.int32()),
        pa.field("t_s", pa.float64()),
        pa.field("pid", pa.int32()),
        pa.field("page_addr", pa.uint64()),
        pa.field("vma_kind", pa.dictionary(pa.int32(), pa.string())),
        pa.field("event", pa.dictionary(pa.int32(), pa.string())),
        pa.field("vma_start", pa.uint64()),
    ]
)


def ksm_schema(columns: Sequence[str], word_columns: Collection[str]) -> pa.Schema:
    """The schema of ``ksm.parquet`` for the sampled sysfs ``columns`` (words as strings)."""
    fields: list[pa.Field[Any]] = [
        pa.field("sample", pa.int32()),
        pa.field("t_s", pa.float64()),
        pa.field("time", pa.timestamp("us", tz="UTC")),
    ]
    fields += [pa.field(c, pa.string() if c in word_columns else pa.int64()) for c in columns]
    fields += [pa.field(f, pa.int64()) for f in (*KSMD_FIELDS, *VMSTAT_FIELDS)]
    return pa.schema(fields)


@dataclass(frozen=True)
class ObservedTimeline:
    """A recording of ``ksm-planner observe``, as pandas DataFrames.

    Attributes
    ----------
    meta
        The contents of ``observe.json`` (provenance, options, host, times).
    counters
        One row per sample, indexed by ``t_s``: ``sample``, ``time``, every sysfs counter and
        knob (kernel names), ``ksmd_runtime_ns``, ``ksmd_wait_ns`` (recordings since
        2026-12-05), ``cow_ksm``, ``ksm_swpin_copy``.
    processes
        One row per sample and process (long format; columns as in ``processes.parquet``).
    """

    meta: dict[str, Any]
    counters: pd.DataFrame
    processes: pd.DataFrame
    canary: pd.DataFrame | None = None
    """Canary mode: one row per sample and process (``canary.parquet``), else ``None``."""
    page_events: pd.DataFrame | None = None
    """Canary mode: one row per page KSM-state change (``page_events.parquet``), else ``None``."""

    @property
    def host_cpu(self) -> str | None:
        """The CPU the recording ran on (its host facts' ``cpu``,
        :func:`planner.provenance.cpu_identity`); None where it does not say."""
        cpu = (self.meta.get("host") or {}).get("cpu")
        return cpu if isinstance(cpu, str) else None

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

    def counter_rate(self, column: str, *, since_s: float | None = None) -> float | None:
        """Increase per second of a cumulative counter of ``counters`` (``cow_ksm``,
        ``ksmd_runtime_ns``, ``full_scans``...) from the first sample at or after ``since_s``
        (default: the first sample) to the last.

        ``None`` when the recording lacks the column, has fewer than two samples in the
        window or no value at either end of it.
        """
        if column not in self.counters.columns:
            return None
        t = self.counters.index.to_numpy(dtype="float64")
        first = 0 if since_s is None else int((t < since_s).sum())
        if t.size - first < 2:
            return None
        v = self.counters[column].astype("float64").to_numpy()
        span = float(t[-1] - t[first])
        if span <= 0 or v[first] != v[first] or v[-1] != v[-1]:  # NaN: unreadable
            return None
        return float(v[-1] - v[first]) / span

    def unmerges_per_s(self, *, since_s: float | None = None) -> dict[str, float]:
        """Canary mode: merges lost per second over the recording (from the first sample at
        or after ``since_s``), by kind, next to the host's ``cow_ksm`` per second (every
        copy-on-write break of a KSM page)."""
        if self.canary is None:
            raise InputDataError(
                "the recording has no per-page KSM states",
                hint="record with 'ksm-planner observe --ksm-pages'",
            )
        t = self.counters.index.to_numpy(dtype="float64")
        start = float(t[0]) if since_s is None or not len(t) else max(float(t[0]), since_s)
        first = t[t >= start]
        span = float(t[-1] - first[0]) if first.size > 1 else 0.0
        # events of a sample happened since the previous one: those of the first sample of
        # the window are before it
        rows = self.canary[self.canary["t_s"] > first[0]] if first.size else self.canary[:0]
        out = {e: float(rows[e].sum()) / span if span else float("nan") for e in
               CANARY_EVENTS if e != "merged"}  # fmt: skip
        cow = self.counter_rate("cow_ksm", since_s=since_s)
        out["cow_ksm"] = float("nan") if cow is None else cow
        return out

    def ksmd_cpu_fraction(self) -> pd.Series:
        """ksmd's share of one CPU between consecutive samples (NaN where unreadable)."""
        runtime = self.counters["ksmd_runtime_ns"].astype("float64")
        t = self.counters.index.to_series()
        return (runtime.diff() / 1e9) / t.diff()


def read_observed(path: str | os.PathLike[str]) -> ObservedTimeline:
    """Read a recording written by ``ksm-planner observe``.

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
    keys = [("ksm", KSM_FILE), ("processes", PROCESSES_FILE)]
    if "canary" in files:  # canary mode (version 2)
        keys += [("canary", CANARY_FILE), ("page_events", EVENTS_FILE)]
    for key, default in keys:
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
    counters, processes = tables[:2]
    canary, events = (tables[2], tables[3]) if len(tables) == 4 else (None, None)
    missing = [c for c in ("sample", "t_s") if c not in counters.columns]
    if missing:
        raise InputDataError(
            f"{root / KSM_FILE} lacks columns {missing}", hint="the recording is damaged"
        )
    if canary is not None:
        missing = [
            c for c in CANARY_SCHEMA.names if c not in canary.columns and c not in CANARY_OPTIONAL
        ]
        if missing:
            raise InputDataError(
                f"{root / CANARY_FILE} lacks columns {missing}", hint="the recording is damaged"
            )
    return ObservedTimeline(
        meta=meta,
        counters=counters.set_index("t_s"),
        processes=processes,
        canary=canary,
        page_events=events,
    )


__all__ = [
    "CANARY_EVENTS",
    "CANARY_FILE",
    "CANARY_OPTIONAL",
    "CANARY_SCHEMA",
    "EVENTS_FILE",
    "EVENTS_SCHEMA",
    "FORMAT",
    "PROCESS_SCHEMA",
    "VERSION",
    "ObservedTimeline",
    "ksm_schema",
    "read_observed",
]
