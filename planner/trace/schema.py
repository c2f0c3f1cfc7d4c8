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
* 1 -- this module: four normalised tables per host, keyed hashes with a key id, opaque
  frame ids instead of PFNs, zstd, dictionary/delta encodings (~9-12 bytes per page).

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
SCHEMA_VERSION: Final = 1
MANIFEST_NAME: Final = "ksm-trace.json"
HOST_DIR_PREFIX: Final = "host="
METADATA_KEY: Final = b"ksm_trace.schema_version"

PAGE_SIZE_BYTES: Final = 4096

TABLES: Final = ("snapshots", "processes", "mappings", "pages")


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
    ]
)

SCHEMAS: Final = {
    "snapshots": SNAPSHOTS_SCHEMA,
    "processes": PROCESSES_SCHEMA,
    "mappings": MAPPINGS_SCHEMA,
    "pages": PAGES_SCHEMA,
}

#: Sort order of each table within a host (the order the engine scans in).
SORT_KEYS: Final = {
    "snapshots": ("snapshot_id",),
    "processes": ("snapshot_id", "pid", "proc_start"),
    "mappings": ("snapshot_id", "pid", "start"),
    "pages": ("snapshot_id", "pid", "page_addr"),
}

#: Parquet writer settings per table. ``content_hash`` keeps dictionary encoding because
#: duplicated pages (what KSM merges) repeat hashes; addresses and frame ids are delta-coded.
PARQUET_OPTIONS: Final = {
    "pages": {
        "compression": "zstd",
        "compression_level": 3,
        "use_dictionary": ["snapshot_id", "pid", "vma_start", "flags", "content_hash"],
        "column_encoding": {"page_addr": "DELTA_BINARY_PACKED", "frame_id": "DELTA_BINARY_PACKED"},
        "dictionary_pagesize_limit": 64 << 20,
        "write_statistics": ["snapshot_id", "pid"],
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
        that a trace survives ``ingest(export(trace))``. Other tools may ignore those.
    """

    name: str
    written: pa.DataType
    read: pa.DataType
    role: Literal["required", "header", "optional", "extension"]


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
)
#: Columns an interchange file must have.
INTERCHANGE_REQUIRED: Final = tuple(c.name for c in INTERCHANGE_COLUMNS if c.role == "required")
#: The documented header: ``time_s,pid,ppid,comm,vma_start,vma_kind,page_addr,content_hash,frame``.
INTERCHANGE_HEADER: Final = tuple(
    c.name for c in INTERCHANGE_COLUMNS if c.role in ("required", "header")
)
#: What ``export --minimal`` writes: the header, ``is_zero`` and ``host``.
INTERCHANGE_MINIMAL: Final = tuple(c.name for c in INTERCHANGE_COLUMNS if c.role != "extension")
#: Extension columns (process identity and attributes, page flags, mapping attributes).
EXTENSION_COLUMNS: Final = tuple(c.name for c in INTERCHANGE_COLUMNS if c.role == "extension")
#: Every column the interchange reader knows, with the type it is read as (others are
#: ignored, and reported).
INTERCHANGE_READ_TYPES: Final[dict[str, pa.DataType]] = {
    c.name: c.read for c in INTERCHANGE_COLUMNS
}
#: The schema of an export (every column; an export writes a subset, in this order).
EXPORT_SCHEMA: Final = pa.schema([pa.field(c.name, c.written) for c in INTERCHANGE_COLUMNS])

#: Plain (unkeyed) xxh3_64 of 4096 zero bytes: the default zero-page hash of ingested traces.
PLAIN_XXH3_ZERO_PAGE_HASH: Final = 10653106456947493306
