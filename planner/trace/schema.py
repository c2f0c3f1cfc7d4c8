"""The ksm-planner trace format: a versioned, host-partitioned Parquet dataset.

Layout of a trace directory (documented for users in ``traces/README.md``)::

    TRACE/
      ksm-trace.json                 manifest: format, schema_version, hosts, file sizes and
                                     SHA-256, the trace hash, who wrote it
      host=<name>/snapshots.parquet  one row per snapshot of that host
      host=<name>/processes.parquet  one row per snapshot x process
      host=<name>/mappings.parquet   one row per snapshot x process x mapping
      host=<name>/pages.parquet      one row per recorded page per snapshot (the big table)

Schema version history (bump ``SCHEMA_VERSION`` and add a line for every change; readers
keep loading older versions, see ``planner.trace.io``):

* 0 -- the capture prototype of docs/capture.md §7: one flat Parquet file per capture,
  one row per page with denormalised snapshot/process/mapping columns and raw PFNs. Read
  (and upgraded) by ``ksm-planner ingest``; never written.
* 1 -- four normalised tables per host, keyed hashes with a key id, opaque frame ids
  instead of PFNs, zstd, dictionary/delta encodings (~9-12 bytes per page).
* 2 -- this module: what the host and the processes looked like beyond their pages, and
  what changed between snapshots. ``snapshots`` gains the capture's own CPU time, the host's
  memory (``/proc/meminfo``), CPUs, ``USER_HZ``, cumulative CPU counters and runnable tasks,
  and the host's load over the interval after the snapshot; ``processes`` gains the
  ``smaps_rollup`` footprint (PSS split anon/file/shmem), page tables, CPU time, threads and
  memory cgroup; ``pages`` gains per-page change counts over the interval after the snapshot
  (content, frame, presence, same-content writes where soft-dirty is known); two new tables:
  ``cgroups`` (memory accounting of the traced processes' cgroups) and ``samples`` (one row
  per sample and process between snapshots: timing, coverage, cost). Version 1 traces are
  read as version 2 with these columns null and the new tables empty
  (:data:`V1_COLUMNS`).
* 3 -- ``pages`` gains ``other_hash``: the keyed hash of the first content other than the
  snapshot's that the sampler found at the page over the interval (null: it saw none).
  With it a page that alternates between two contents (and copies of it that alternate
  between the same two) can be told from one whose every change is new, even where the
  snapshots are too far apart to show it come back (docs/capture.md §9). Version 2 traces
  are read as version 3 with ``other_hash`` null (:data:`V2_COLUMNS`).

Pages hold no page contents: ``content_hash`` is a keyed 64-bit hash (``hash_algo`` and
``hash_key_id`` in ``snapshots``), and ``frame_id`` is an opaque number that is equal for
two rows of one snapshot exactly when the same physical page was mapped at capture. A
frame id keeps its value across snapshots of one capture while the frame stays mapped.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, Literal

import pyarrow as pa

FORMAT_NAME: Final = "ksm-planner-trace"
SCHEMA_VERSION: Final = 3
MANIFEST_NAME: Final = "ksm-trace.json"
HOST_DIR_PREFIX: Final = "host="
METADATA_KEY: Final = b"ksm_trace.schema_version"

PAGE_SIZE_BYTES: Final = 4096

TABLES: Final = ("snapshots", "processes", "mappings", "pages", "cgroups", "samples")
#: The tables of each schema version (a version-1 trace has no cgroups or samples table).
TABLES_BY_VERSION: Final = {1: TABLES[:4], 2: TABLES, 3: TABLES}


class PageFlag(enum.IntFlag):
    """Bits of the ``pages.flags`` column (uint16)."""

    ZERO = 1 << 0
    """The page's content is all zero bytes (a real frame, not the shared zero page)."""
    THP = 1 << 1
    """The page is a 4 KiB part of a transparent huge page (KPF_THP)."""
    KSM = 1 << 2
    """The page was already a KSM page at capture (KPF_KSM)."""
    RACY = 1 << 3
    """The page changed while it was read (PTE changed, or content differed on re-read)."""
    SWAPPED = 1 << 4
    """The page was swapped out; it has no content hash and no frame."""
    READ_ERROR = 1 << 5
    """The page could not be read; it has no content hash."""
    EXCLUSIVE = 1 << 6
    """pagemap bit 56: the page is mapped exclusively by this process."""
    SOFT_DIRTY = 1 << 7
    """pagemap bit 55."""
    SHARED_MAPCOUNT = 1 << 8
    """kpagecount > 1: the frame is mapped more than once (fork sharing, maybe not traced)."""


#: Mapping kinds (``mappings.kind`` and interchange ``vma_kind``), see docs/capture.md §2.
VMA_KINDS: Final = (
    "heap",  # [heap]
    "stack",  # [stack]
    "anon",  # private anonymous mapping
    "anon_named",  # [anon:<name>] (prctl PR_SET_VMA_ANON_NAME)
    "bss",  # anonymous tail glued to an ELF's writable PT_LOAD segment
    "file_data",  # private rw file mapping (only its COW-copied pages are anonymous)
    "file_relro",  # private r-- file mapping (RELRO after relocation)
    "file_text",  # private r-x file mapping
    "other",  # anything else (ingested traces with unknown kinds)
)

SNAPSHOTS_SCHEMA: Final = pa.schema(
    [  # type: ignore[arg-type]  # pyarrow-stubs join a list of fields to list[object]
        pa.field("snapshot_id", pa.int32(), nullable=False),
        pa.field("time_s", pa.float64(), nullable=False),  # seconds since the first snapshot
        pa.field("wall_time_ns", pa.int64()),  # Unix time of the snapshot start, ns
        pa.field("duration_s", pa.float64()),  # how long the snapshot took to capture
        pa.field("host", pa.string(), nullable=False),
        pa.field("kernel_release", pa.string()),
        pa.field("page_size", pa.int32(), nullable=False),
        pa.field("hz", pa.int32()),  # CONFIG_HZ if known
        pa.field("thp_mode", pa.string()),
        pa.field("hash_algo", pa.string(), nullable=False),  # e.g. "xxh3_64-keyed"
        pa.field("hash_key_id", pa.string()),  # fingerprint of the key, never the key
        pa.field("zero_hash", pa.uint64()),  # hash of an all-zero page under that key
        pa.field("tool_version", pa.string(), nullable=False),
        pa.field("capture_options", pa.string()),  # JSON
        pa.field("ksm_sysfs", pa.string()),  # JSON: /sys/kernel/mm/ksm read at capture
        # --- version 2: the capture itself
        pa.field("capture_cpu_s", pa.float64()),  # the capture's CPU seconds for this snapshot
        # --- version 2: the host at the snapshot (read-only, docs/capture.md §8)
        pa.field("mem_total_kb", pa.int64()),  # /proc/meminfo MemTotal
        pa.field("mem_free_kb", pa.int64()),
        pa.field("mem_available_kb", pa.int64()),
        pa.field("buffers_kb", pa.int64()),
        pa.field("cached_kb", pa.int64()),
        pa.field("anon_pages_kb", pa.int64()),
        pa.field("shmem_kb", pa.int64()),
        pa.field("slab_kb", pa.int64()),
        pa.field("kernel_stack_kb", pa.int64()),
        pa.field("page_tables_kb", pa.int64()),
        pa.field("swap_total_kb", pa.int64()),
        pa.field("swap_free_kb", pa.int64()),
        pa.field("meminfo", pa.string()),  # JSON: every /proc/meminfo field, kB
        pa.field("cpus_online", pa.int32()),
        pa.field("user_hz", pa.int32()),  # USER_HZ: the unit of /proc/stat and <pid>/stat
        pa.field("cpu_busy_ticks", pa.int64()),  # /proc/stat cpu: all but idle and iowait
        pa.field("cpu_total_ticks", pa.int64()),  # /proc/stat cpu: user..steal
        pa.field("procs_running", pa.int32()),  # /proc/loadavg, at the snapshot
        pa.field("loadavg_1m", pa.float64()),
        # --- version 2: the interval after the snapshot (to the next one, or the tail)
        pa.field("interval_s", pa.float64()),
        pa.field("interval_cpu_busy_share", pa.float64()),  # of all CPUs
        pa.field("interval_runnable_mean", pa.float64()),  # procs_running, sampled
        pa.field("interval_load_samples", pa.int32()),
        pa.field("interval_capture_cpu_s", pa.float64()),  # the capture's own, sampling included
        pa.field("sample_ms", pa.float64()),  # the sampling period asked (null: no sampling)
        pa.field("samples", pa.int32()),  # sampling passes in the interval
        pa.field("soft_dirty", pa.bool_()),  # writes tracked with soft-dirty in the interval
        pa.field("sample_coverage", pa.float64()),  # share of tracked pages checked at least once
        pa.field("sample_checks_per_page", pa.float64()),  # content checks per tracked page
        pa.field("sample_cpu_s", pa.float64()),  # the sampling's own CPU over the interval
    ]
)

PROCESSES_SCHEMA: Final = pa.schema(
    [  # type: ignore[arg-type]  # pyarrow-stubs join a list of fields to list[object]
        pa.field("snapshot_id", pa.int32(), nullable=False),
        pa.field("pid", pa.int32(), nullable=False),
        # Process start time in clock ticks since boot (/proc/<pid>/stat field 22); with pid it
        # identifies a process across snapshots even when pids are reused. Ingested traces
        # without start times get a per-pid incarnation number instead.
        pa.field("proc_start", pa.uint64(), nullable=False),
        pa.field("start_time_s", pa.float64()),  # process start relative to trace time 0
        pa.field("ppid", pa.int32()),
        pa.field("comm", pa.string()),
        pa.field("cmdline", pa.string()),  # only when capture was asked to keep it
        pa.field("cmdline_hash", pa.uint64()),  # keyed hash of the NUL-joined argv
        pa.field("exe", pa.string()),
        pa.field("cgroup", pa.string()),  # cgroup v2 path
        pa.field("uid", pa.int32()),
        pa.field("aslr_disabled", pa.bool_()),  # personality ADDR_NO_RANDOMIZE
        pa.field("labels", pa.string()),  # JSON object of user labels (service, setup, domain)
        pa.field("reg_time_s", pa.float64()),  # when the process enabled KSM, if known
        pa.field("state", pa.string(), nullable=False),  # "ok" | "gone" | "error"
        pa.field("error", pa.string()),
        pa.field("rss_anon_kb", pa.int64()),
        pa.field("pages", pa.int64()),  # rows recorded for this process in this snapshot
        pa.field("racy_pages", pa.int64()),
        pa.field("zero_pfn_pages", pa.int64()),  # PTEs mapping the shared zero page (not recorded)
        pa.field("ksm_merge_any", pa.bool_()),
        pa.field("ksm_mergeable", pa.bool_()),
        pa.field("ksm_rmap_items", pa.int64()),
        pa.field("ksm_merging_pages", pa.int64()),
        pa.field("ksm_zero_pages", pa.int64()),
        pa.field("ksm_process_profit", pa.int64()),
        pa.field("capture_t0_s", pa.float64()),  # relative to trace time 0
        pa.field("capture_t1_s", pa.float64()),
        # --- version 2: the whole footprint and CPU of the process (docs/capture.md §8)
        pa.field("rss_kb", pa.int64()),  # smaps_rollup Rss
        pa.field("pss_kb", pa.int64()),
        pa.field("pss_anon_kb", pa.int64()),
        pa.field("pss_file_kb", pa.int64()),
        pa.field("pss_shmem_kb", pa.int64()),
        pa.field("pss_dirty_kb", pa.int64()),
        pa.field("swap_kb", pa.int64()),
        pa.field("swap_pss_kb", pa.int64()),
        pa.field("rss_file_kb", pa.int64()),  # status RssFile
        pa.field("rss_shmem_kb", pa.int64()),
        pa.field("vm_pte_kb", pa.int64()),  # status VmPTE: page tables
        pa.field("cpu_user_s", pa.float64()),  # <pid>/stat utime / USER_HZ, since start
        pa.field("cpu_system_s", pa.float64()),  # stime
        pa.field("num_threads", pa.int32()),
        pa.field("memory_cgroup", pa.string()),  # the cgroup its memory is charged to
    ]
)

MAPPINGS_SCHEMA: Final = pa.schema(
    [  # type: ignore[arg-type]  # pyarrow-stubs join a list of fields to list[object]
        pa.field("snapshot_id", pa.int32(), nullable=False),
        pa.field("pid", pa.int32(), nullable=False),
        pa.field("start", pa.uint64(), nullable=False),
        pa.field("end", pa.uint64(), nullable=False),
        pa.field("perms", pa.string()),
        pa.field("kind", pa.string(), nullable=False),  # one of VMA_KINDS
        pa.field("path", pa.string()),
        pa.field("offset", pa.uint64()),
        pa.field("mergeable", pa.bool_()),  # VM_MERGEABLE at capture (smaps VmFlags "mg")
        pa.field("thp_eligible", pa.bool_()),
        pa.field("anon_huge_kb", pa.int64()),
        pa.field("ksm_kb", pa.int64()),  # smaps "KSM:" at capture
        pa.field("present_pages", pa.int64()),
    ]
)

PAGES_SCHEMA: Final = pa.schema(
    [
        pa.field("snapshot_id", pa.int32(), nullable=False),
        pa.field("pid", pa.int32(), nullable=False),
        pa.field("vma_start", pa.uint64(), nullable=False),
        pa.field("page_addr", pa.uint64(), nullable=False),
        pa.field("content_hash", pa.uint64()),  # null when SWAPPED or READ_ERROR
        pa.field("frame_id", pa.uint64()),  # null when SWAPPED
        pa.field("flags", pa.uint16(), nullable=False),
        # --- version 2: what happened to the page in the interval after the snapshot
        # (null: the page was not sampled; docs/capture.md §9)
        pa.field("samples", pa.uint16()),  # sampling passes that looked at the page
        pa.field("content_checks", pa.uint16()),  # ... that read and hashed its content
        pa.field("content_changes", pa.uint16()),  # ... that found its content changed
        pa.field("frame_changes", pa.uint16()),  # ... that found another frame mapped
        pa.field("absent_samples", pa.uint16()),  # ... that found it not present
        pa.field("same_content_writes", pa.uint16()),  # written, content unchanged (soft-dirty)
        # --- version 3: the first other content the sampler found (keyed, as content_hash)
        pa.field("other_hash", pa.uint64()),
    ]
)

CGROUPS_SCHEMA: Final = pa.schema(
    [  # type: ignore[arg-type]  # pyarrow-stubs join a list of fields to list[object]
        pa.field("snapshot_id", pa.int32(), nullable=False),
        pa.field("cgroup", pa.string(), nullable=False),  # as in processes.memory_cgroup
        pa.field("cgroup_version", pa.int8(), nullable=False),  # 2, or 1 (v1 memory controller)
        pa.field("memory_current_bytes", pa.int64()),  # v2 memory.current, v1 usage_in_bytes
        pa.field("memory_max_bytes", pa.int64()),  # the limit; null: none
        pa.field("memory_swap_current_bytes", pa.int64()),
        pa.field("anon_bytes", pa.int64()),  # memory.stat anon (v1 total_rss)
        pa.field("file_bytes", pa.int64()),  # file (v1 total_cache)
        pa.field("shmem_bytes", pa.int64()),
        pa.field("kernel_bytes", pa.int64()),  # v2 only
        pa.field("slab_bytes", pa.int64()),  # v2 only
        pa.field("pagetables_bytes", pa.int64()),  # v2 only
        pa.field("memory_stat", pa.string()),  # JSON: every memory.stat field
    ]
)

SAMPLES_SCHEMA: Final = pa.schema(
    [  # type: ignore[arg-type]  # pyarrow-stubs join a list of fields to list[object]
        pa.field("snapshot_id", pa.int32(), nullable=False),  # the interval after this one
        pa.field("sample", pa.int32(), nullable=False),  # pass number within the interval
        pa.field("pid", pa.int32(), nullable=False),
        pa.field("proc_start", pa.uint64(), nullable=False),
        pa.field("t0_s", pa.float64(), nullable=False),  # trace time the pass began here
        pa.field("t1_s", pa.float64(), nullable=False),
        pa.field("pages_tracked", pa.int64()),  # pages of the snapshot still followed
        pa.field("pages_present", pa.int64()),  # present anonymous pages now (pagemap)
        pa.field("pages_new", pa.int64()),  # present now but not in the snapshot
        pa.field("pages_hashed", pa.int64()),  # pages whose content this pass read
        pa.field("pages_changed", pa.int64()),  # ... that had changed since last seen
        pa.field("frames_changed", pa.int64()),  # pages mapped to another frame
        pa.field("pages_absent", pa.int64()),  # tracked pages not present
        pa.field("pages_written", pa.int64()),  # soft-dirty set (null: not tracked)
        pa.field("same_content_writes", pa.int64()),  # written, content unchanged
        pa.field("state", pa.string(), nullable=False),  # "ok" or "gone"
    ]
)

SCHEMAS: Final = {
    "snapshots": SNAPSHOTS_SCHEMA,
    "processes": PROCESSES_SCHEMA,
    "mappings": MAPPINGS_SCHEMA,
    "pages": PAGES_SCHEMA,
    "cgroups": CGROUPS_SCHEMA,
    "samples": SAMPLES_SCHEMA,
}

#: The columns each table had in schema version 1. A version-1 file must have exactly
#: these; readers add the later columns as nulls.
V1_COLUMNS: Final = {
    "snapshots": tuple(SNAPSHOTS_SCHEMA.names[: SNAPSHOTS_SCHEMA.get_field_index("ksm_sysfs") + 1]),
    "processes": tuple(
        PROCESSES_SCHEMA.names[: PROCESSES_SCHEMA.get_field_index("capture_t1_s") + 1]
    ),
    "mappings": tuple(MAPPINGS_SCHEMA.names),
    "pages": tuple(PAGES_SCHEMA.names[: PAGES_SCHEMA.get_field_index("flags") + 1]),
}


#: The columns of the tables that schema version 3 changed, as version 2 wrote them.
V2_COLUMNS: Final = {"pages": tuple(n for n in PAGES_SCHEMA.names if n != "other_hash")}


def file_columns(name: str, version: int) -> tuple[str, ...]:
    """The columns a file of table ``name`` has in schema ``version``."""
    if version == 1:
        return V1_COLUMNS[name]
    if version == 2 and name in V2_COLUMNS:
        return V2_COLUMNS[name]
    return tuple(SCHEMAS[name].names)


#: Sort order of each table within a host (the order the engine scans in).
SORT_KEYS: Final = {
    "snapshots": ("snapshot_id",),
    "processes": ("snapshot_id", "pid", "proc_start"),
    "mappings": ("snapshot_id", "pid", "start"),
    "pages": ("snapshot_id", "pid", "page_addr"),
    "cgroups": ("snapshot_id", "cgroup"),
    "samples": ("snapshot_id", "sample", "pid", "proc_start"),
}

#: The pages table's per-page sampling counts (schema v2): ``samples`` first, then the
#: changes seen, each at most ``samples``; all null in a trace captured without sampling.
PAGE_CHANGE_COUNTS: Final = (
    "samples",
    "content_checks",
    "content_changes",
    "frame_changes",
    "absent_samples",
    "same_content_writes",
)
#: Every column of ``pages`` about the interval after the snapshot: the counts and the
#: other content the sampler saw (schema v3); all null in a trace captured without sampling.
PAGE_CHANGE_COLUMNS: Final = (*PAGE_CHANGE_COUNTS, "other_hash")

#: Parquet writer settings per table. ``content_hash`` keeps dictionary encoding because
#: duplicated pages (what KSM merges) repeat hashes; addresses and frame ids are delta-coded.
PARQUET_OPTIONS: Final = {
    "pages": {
        "compression": "zstd",
        "compression_level": 3,
        "use_dictionary": [
            "snapshot_id",
            "pid",
            "vma_start",
            "flags",
            "content_hash",
            *PAGE_CHANGE_COLUMNS,
        ],
        "column_encoding": {"page_addr": "DELTA_BINARY_PACKED", "frame_id": "DELTA_BINARY_PACKED"},
        "dictionary_pagesize_limit": 64 << 20,
        # the change counts' null counts let a reader that does not need them skip them
        # when they are all null (planner.trace.io, Trace.iter_pages)
        "write_statistics": [
            "snapshot_id",
            "pid",
            *PAGE_CHANGE_COLUMNS,
        ],
    },
    "default": {"compression": "zstd", "compression_level": 3, "use_dictionary": True},
}

# ----------------------------------------------------------------------------- interchange

_TEXT: Final = pa.dictionary(pa.int32(), pa.string())  # text read dictionary-encoded


@dataclass(frozen=True)
class InterchangeColumn:
    """One column of the interchange format (``ksm-planner ingest`` / ``export``).

    Attributes
    ----------
    name
        The column name.
    written
        The type ``export`` writes.
    read
        The type ``ingest`` reads it as: integers wider than written (64-bit), so that a value
        out of range is reported rather than wrapped; text dictionary-encoded; ``is_zero`` as
        a boolean (``0``/``1``).
    role
        ``required``; ``header``: the documented header's optional columns; ``optional``:
        columns after the header; ``extension``: what ``export`` adds (unless ``minimal``) so
        that a trace survives ``ingest(export(trace))``. Other tools may ignore those;
        ``counts``: the per-page change counts of a sampled trace (schema v2), written by
        ``export`` (unless ``minimal``) when the trace has them; ``other``: the first other
        content the sampler found (schema v3), likewise.
    """

    name: str
    written: pa.DataType
    read: pa.DataType
    role: Literal["required", "header", "optional", "extension", "counts", "other"]


#: The interchange format: one row per present eligible page per snapshot, columns in the
#: order ``export`` writes them. Its one definition; the lists below are derived from it.
INTERCHANGE_COLUMNS: Final = (
    InterchangeColumn("time_s", pa.float64(), pa.float64(), "required"),
    InterchangeColumn("pid", pa.int32(), pa.int64(), "required"),
    InterchangeColumn("ppid", pa.int32(), pa.int64(), "header"),
    InterchangeColumn("comm", pa.string(), _TEXT, "header"),
    InterchangeColumn("vma_start", pa.uint64(), pa.uint64(), "header"),
    InterchangeColumn("vma_kind", pa.string(), _TEXT, "header"),
    InterchangeColumn("page_addr", pa.uint64(), pa.uint64(), "required"),
    InterchangeColumn("content_hash", pa.uint64(), pa.uint64(), "required"),
    InterchangeColumn("frame", pa.uint64(), pa.uint64(), "header"),
    InterchangeColumn("is_zero", pa.uint8(), pa.bool_(), "optional"),
    InterchangeColumn("host", pa.string(), _TEXT, "optional"),
    InterchangeColumn("proc_start", pa.uint64(), pa.uint64(), "extension"),
    InterchangeColumn("flags", pa.uint16(), pa.int64(), "extension"),
    InterchangeColumn("vma_end", pa.uint64(), pa.uint64(), "extension"),
    InterchangeColumn("uid", pa.int32(), pa.int64(), "extension"),
    InterchangeColumn("cgroup", pa.string(), _TEXT, "extension"),
    InterchangeColumn("labels", pa.string(), _TEXT, "extension"),
    InterchangeColumn("perms", pa.string(), _TEXT, "extension"),
    InterchangeColumn("vma_path", pa.string(), _TEXT, "extension"),
    InterchangeColumn("samples", pa.uint16(), pa.int64(), "counts"),
    InterchangeColumn("content_checks", pa.uint16(), pa.int64(), "counts"),
    InterchangeColumn("content_changes", pa.uint16(), pa.int64(), "counts"),
    InterchangeColumn("frame_changes", pa.uint16(), pa.int64(), "counts"),
    InterchangeColumn("absent_samples", pa.uint16(), pa.int64(), "counts"),
    InterchangeColumn("same_content_writes", pa.uint16(), pa.int64(), "counts"),
    InterchangeColumn("other_hash", pa.uint64(), pa.uint64(), "other"),
)
#: Columns an interchange file must have.
INTERCHANGE_REQUIRED: Final = tuple(c.name for c in INTERCHANGE_COLUMNS if c.role == "required")
#: The documented header: ``time_s,pid,ppid,comm,vma_start,vma_kind,page_addr,content_hash,frame``.
INTERCHANGE_HEADER: Final = tuple(
    c.name for c in INTERCHANGE_COLUMNS if c.role in ("required", "header")
)
#: What ``export --minimal`` writes: the header, ``is_zero`` and ``host``.
INTERCHANGE_MINIMAL: Final = tuple(
    c.name for c in INTERCHANGE_COLUMNS if c.role not in ("extension", "counts", "other")
)
#: Extension columns (process identity and attributes, page flags, mapping attributes).
EXTENSION_COLUMNS: Final = tuple(c.name for c in INTERCHANGE_COLUMNS if c.role == "extension")
#: Optional per-page change counts (schema v2): the ``pages`` columns of the same names, for
#: the interval after the row's snapshot (traces/README.md).
INTERCHANGE_COUNTS: Final = tuple(c.name for c in INTERCHANGE_COLUMNS if c.role == "counts")
#: Every optional column about the interval after the row's snapshot: the counts and the
#: first other content (schema v3, keyed as ``content_hash``; needs ``content_changes``).
INTERCHANGE_CHANGES: Final = tuple(
    c.name for c in INTERCHANGE_COLUMNS if c.role in ("counts", "other")
)
#: Every column the interchange reader knows, with the type it is read as (others are
#: ignored, and reported).
INTERCHANGE_READ_TYPES: Final[dict[str, pa.DataType]] = {
    c.name: c.read for c in INTERCHANGE_COLUMNS
}
#: The schema of an export (every column; an export writes a subset, in this order).
EXPORT_SCHEMA: Final = pa.schema([pa.field(c.name, c.written) for c in INTERCHANGE_COLUMNS])

#: Plain (unkeyed) xxh3_64 of 4096 zero bytes: the default zero-page hash of ingested traces.
PLAIN_XXH3_ZERO_PAGE_HASH: Final = 10653106456947493306
