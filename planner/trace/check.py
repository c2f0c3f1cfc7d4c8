"""The one consistency check of a trace's tables, shared by every reader.

Content hashes (:mod:`planner.trace.io`) prove that the files are the ones the manifest
names; they do not prove that the manifest's author wrote consistent tables (a trace put
together by hand, pages swapped in from another trace with a rewritten manifest, a bug in
another tool). Every reader -- ``replay``, ``whatif``, ``report`` (through
:meth:`~planner.trace.io.Trace.load_host`), ``info`` and ``export`` (through the streaming
readers) -- runs the checks below before it uses a table, so they all accept and reject
the same traces. Each check costs one vectorised pass; the pages checks run batch by batch,
so a streaming reader keeps its bounded memory.

What is checked (and why the engines need it):

* ``snapshots``: ids unique and increasing (the file order), times finite and never going
  backwards, one page size (a power of two, 4 KiB to 64 KiB), the host column naming the
  host partition it is in, no null in a required column;
* ``processes``: every row belongs to a snapshot, pids are positive (pid 0 is the kernel's
  idle task, never a user process), ppids are not negative, states are ``ok``, ``gone`` or
  ``error``, one live (``ok``) row per pid and snapshot, and a process (pid and start time,
  same program) does not disappear and come back;
* ``mappings``: every row belongs to a snapshot; ``start < end``;
* ``pages``: sorted by ``(snapshot_id, pid, page_addr)`` with no page twice in a snapshot,
  every page in a known snapshot and of a live process of that snapshot, addresses aligned
  to the page size and not below their mapping's start, a content hash unless the page was
  swapped or unreadable, a frame unless it was swapped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from planner.errors import TraceFormatError
from planner.trace import schema as S

if TYPE_CHECKING:
    from collections.abc import Mapping

    import pyarrow as pa

_HINT = "the trace is inconsistent; re-create it with 'ksm-planner capture' or 'ingest'"
_NO_HASH_FLAGS = np.uint16(S.PageFlag.SWAPPED | S.PageFlag.READ_ERROR)
_NO_FRAME_FLAGS = np.uint16(S.PageFlag.SWAPPED)
_STATES = ("ok", "gone", "error")
MIN_PAGE_SIZE = 4096
MAX_PAGE_SIZE = 65536

Arr = np.ndarray[Any, Any]


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to about ``limit`` characters for a one-line message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _fail(where: str, what: str) -> TraceFormatError:
    return TraceFormatError(f"{where}: {what}", hint=_HINT)


#: Arrow's fixed-width number types and their numpy dtypes (read by :func:`as_numpy`).
_NUMPY_DTYPES = {
    "bool": np.bool_,
    "int8": np.int8,
    "int16": np.int16,
    "int32": np.int32,
    "int64": np.int64,
    "uint8": np.uint8,
    "uint16": np.uint16,
    "uint32": np.uint32,
    "uint64": np.uint64,
    "float": np.float32,
    "double": np.float64,
}


def _bits(buf: Any, offset: int, n: int) -> Arr:
    """``n`` bits of an Arrow bitmap from bit ``offset``, as booleans."""
    raw = np.frombuffer(buf, np.uint8)
    return np.unpackbits(raw, count=offset + n, bitorder="little")[offset:].view(np.bool_)


def _chunk_values(a: Any, dtype: np.dtype[Any], fill: Any) -> Arr:
    n = len(a)
    native = _NUMPY_DTYPES.get(str(a.type))
    if native is None:  # not a fixed-width number: pyarrow's own conversion
        return np.asarray(a.to_numpy(zero_copy_only=False), dtype=dtype)
    if n == 0 or a.null_count == n:
        return np.full(n, fill, dtype)
    validity, data = a.buffers()[:2]
    if native is np.bool_:
        values = _bits(data, a.offset, n)
    else:
        values = np.frombuffer(data, native, count=n, offset=a.offset * np.dtype(native).itemsize)
    out = values.astype(dtype, copy=False)
    if a.null_count:
        out = np.where(_bits(validity, a.offset, n), out, np.asarray(fill, dtype))
    return out


def as_numpy(col: Any, dtype: Any, *, null: Any = None) -> Arr:
    """A column of numbers (an Arrow ``Array`` or ``ChunkedArray``) as one numpy array.

    Nulls become ``null`` (default: NaN for a float ``dtype``, else 0). A chunk without
    nulls whose type is ``dtype`` is a read-only view of Arrow's buffer (no copy). Read
    straight from the buffers: pyarrow's ``to_numpy`` goes through its pandas conversion
    and imports pandas on its first call (0.2 s, more than reading the table; ``info``
    reads every column this way).
    """
    want = np.dtype(dtype)
    fill = (np.nan if want.kind == "f" else 0) if null is None else null
    chunks = col.chunks if hasattr(col, "chunks") else [col]
    parts = [_chunk_values(c, want, fill) for c in chunks]
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if parts else np.empty(0, want)


def _np(col: Any, dtype: Any) -> Arr:
    return as_numpy(col, dtype)


def _first(mask: Arr) -> int | None:
    idx = np.flatnonzero(mask)
    return int(idx[0]) if len(idx) else None


def check_required(where: str, table: pa.Table | pa.RecordBatch, name: str) -> None:
    """No null in a column the schema declares non-nullable."""
    schema = S.SCHEMAS[name]
    for f in schema:
        if not f.nullable and f.name in table.column_names:
            col = table.column(f.name)
            if col.null_count:
                i = _first(_np(col.is_null(), bool))
                raise _fail(where, f"row {i}: column {f.name} is empty but may not be")


@dataclass(frozen=True)
class HostIndex:
    """What the pages check needs to know about the small tables of one host."""

    host: str
    snapshot_ids: Arr  # int64, strictly increasing
    page_size: int
    #: sorted ``snapshot_id << 32 | pid`` of every live (``ok``) process row
    live_keys: Arr = field(default_factory=lambda: np.empty(0, np.int64))


def check_snapshots(where: str, host: str, snaps: pa.Table) -> tuple[Arr, int]:
    """Check ``snapshots``; return its snapshot ids and the page size."""
    check_required(where, snaps, "snapshots")
    sid = _np(snaps.column("snapshot_id"), np.int64)
    i = _first(sid[1:] <= sid[:-1])
    if i is not None:
        raise _fail(
            where,
            f"row {i + 1}: snapshot ids are not unique and increasing "
            f"({int(sid[i + 1])} after {int(sid[i])})",
        )
    t = _np(snaps.column("time_s"), np.float64)
    i = _first(~np.isfinite(t))
    if i is not None:
        raise _fail(where, f"row {i}: time_s {float(t[i])!r} is not a finite number of seconds")
    i = _first(t[1:] < t[:-1])
    if i is not None:
        raise _fail(where, f"row {i + 1}: snapshot times go backwards ({t[i + 1]} after {t[i]})")
    hosts = snaps.column("host").to_pylist()
    bad = next((h for h in hosts if h != host), None)
    if bad is not None:
        raise _fail(where, f"a snapshot of host {short(bad)} is stored under host {host!r}")
    sizes = _np(snaps.column("page_size"), np.int64)
    page_size = int(sizes[0]) if len(sizes) else S.PAGE_SIZE_BYTES
    if len(sizes) and np.any(sizes != page_size):
        raise _fail(where, "the snapshots disagree on the page size")
    if not (MIN_PAGE_SIZE <= page_size <= MAX_PAGE_SIZE and page_size & (page_size - 1) == 0):
        raise _fail(where, f"page size {page_size} is not a power of two from 4 KiB to 64 KiB")
    return sid, page_size


class MappingStarts:
    """The start addresses of the mappings of each (snapshot, pid) of a ``mappings`` table,
    looked up when asked: the table is sorted at the first lookup (most traces have no
    renamed process, and every read of a trace checks its processes), then a binary search
    per lookup."""

    def __init__(self, maps: pa.Table) -> None:
        self._maps: pa.Table | None = maps
        self._key = np.empty(0, np.int64)
        self._start = np.empty(0, np.uint64)

    def of(self, snapshot_id: int, pid: int) -> Arr:
        """The starts of the mappings ``pid`` had in ``snapshot_id`` (none: empty)."""
        if self._maps is not None:
            maps, self._maps = self._maps, None
            key = _np(maps.column("snapshot_id"), np.int64) << 32
            key |= _np(maps.column("pid"), np.int64)
            order = np.argsort(key, kind="stable")
            self._key = key[order]
            self._start = _np(maps.column("start"), np.uint64)[order]
        k = (int(snapshot_id) << 32) | int(pid)
        a, b = np.searchsorted(self._key, [k, k + 1])
        return self._start[a:b]


#: Share of a process's mappings that stay where they were for a changed name or command
#: line not to be an exec (:func:`runs_a_new_program`).
KEPT_MAPPINGS_MIN = 0.5


def runs_a_new_program(
    renamed: bool, starts_before: Arr, starts_now: Arr, aslr_disabled: bool | None
) -> bool:
    """Whether a process instance (pid, start time) that changed its ``comm`` or its command
    line (``renamed``) between two snapshots exec'd a new program.

    An exec replaces the whole address space, and with address-space randomisation every
    mapping of the new program lies elsewhere; a process that renames itself keeps every
    mapping. PostgreSQL's backends, and gunicorn's, uWSGI's and Celery's workers through
    ``setproctitle``, rewrite their command line (some their ``comm`` too) as they work:
    taken for execs, each snapshot of such a process was a new process to the replay, with
    no CPU time between snapshots and so no role (docs/engine.md, "A renamed process is
    not a new program"). So a rename is an exec only when fewer than
    :data:`KEPT_MAPPINGS_MIN` of the mappings of the snapshot before are still at their
    addresses; where the trace cannot tell (no mappings recorded in either snapshot, or
    randomisation off for the process), it is one, as it always was.
    """
    if not renamed:
        return False
    if aslr_disabled or not starts_before.size or not starts_now.size:
        return True
    kept = np.isin(starts_before, starts_now).sum()
    return bool(kept < KEPT_MAPPINGS_MIN * starts_before.size)


def check_processes(where: str, sids: Arr, procs: pa.Table, maps: pa.Table | None = None) -> Arr:
    """Check ``processes`` (``maps``: the host's mappings, which tell a renamed process from
    an exec); return the sorted keys ``snapshot_id << 32 | pid`` of live rows."""
    check_required(where, procs, "processes")
    n = procs.num_rows
    psid = _np(procs.column("snapshot_id"), np.int64)
    pos = np.searchsorted(sids, psid)
    known = pos < len(sids)
    known[known] = sids[pos[known]] == psid[known]
    i = _first(~known)
    if i is not None:
        raise _fail(where, f"row {i}: snapshot {int(psid[i])} is not in the snapshots table")
    pid = _np(procs.column("pid"), np.int64)
    i = _first(pid <= 0)
    if i is not None:
        raise _fail(where, f"row {i}: pid {int(pid[i])} is not a user process (pids start at 1)")
    ppid_col = procs.column("ppid")
    if ppid_col.null_count < n:
        ppid = _np(ppid_col, np.float64)  # nulls become NaN, which is not < 0
        i = _first(ppid < 0)
        if i is not None:
            raise _fail(where, f"row {i}: negative ppid {int(ppid[i])}")
    states = procs.column("state").to_pylist()
    bad = next((j for j, s in enumerate(states) if s not in _STATES), None)
    if bad is not None:
        raise _fail(
            where, f"row {bad}: unknown process state {short(states[bad])} (ok, gone, error)"
        )
    ok = np.array([s == "ok" for s in states], dtype=bool)
    live_rows = np.flatnonzero(ok)
    order = live_rows[np.lexsort((pid[live_rows], psid[live_rows]))]
    dup = _first((psid[order][1:] == psid[order][:-1]) & (pid[order][1:] == pid[order][:-1]))
    if dup is not None:
        r = int(order[dup + 1])
        raise _fail(where, f"row {r}: pid {int(pid[r])} is live twice in snapshot {int(psid[r])}")
    _check_comebacks(where, sids, procs, maps, psid, pid, live_rows)
    return np.sort((psid[live_rows] << 32) | pid[live_rows])


def program_generations(
    procs: pa.Table | dict[str, list[Any]], rows: list[int], maps: MappingStarts | None
) -> list[int]:
    """Per row of ``rows`` (live ``processes`` rows, in snapshot order): the generation of
    its process instance (pid, start time), one more at each exec
    (:func:`runs_a_new_program`). The replay (``planner.engine.prepare``) and the check
    number programs by this one rule."""
    if isinstance(procs, dict):
        cols = procs
    else:
        names = ["pid", "proc_start", "comm", "cmdline_hash", "snapshot_id", "aslr_disabled"]
        cols = procs.select([c for c in names if c in procs.column_names]).to_pydict()
    aslr = cols.get("aslr_disabled") or [None] * len(cols["pid"])
    gen: dict[tuple[int, int], tuple[int, Any, Any, int]] = {}
    out: list[int] = []
    for r in rows:
        key = (int(cols["pid"][r]), int(cols["proc_start"][r]))
        comm, ch, sid = cols["comm"][r], cols["cmdline_hash"][r], int(cols["snapshot_id"][r])
        g, pcomm, pch, psid = gen.get(key, (0, comm, ch, sid))
        renamed = (comm is not None and pcomm is not None and comm != pcomm) or (
            ch is not None and pch is not None and ch != pch
        )
        if renamed:
            none = np.empty(0, np.uint64)
            before = maps.of(psid, key[0]) if maps is not None else none
            now = maps.of(sid, key[0]) if maps is not None else none
            g += runs_a_new_program(True, before, now, aslr[r])
        gen[key] = (g, comm, ch, sid)
        out.append(g)
    return out


def _check_comebacks(
    where: str,
    sids: Arr,
    procs: pa.Table,
    maps: pa.Table | None,
    psid: Arr,
    pid: Arr,
    live_rows: Arr,
) -> None:
    """A process instance (pid, start time, program) is live in consecutive snapshots only.

    The same rule as the replay's (``planner.engine.prepare``): a new program (an exec,
    :func:`runs_a_new_program`) is a new instance.
    """
    start = _np(procs.column("proc_start"), np.uint64)
    index = {int(s): k for k, s in enumerate(sids.tolist())}
    rows = sorted(live_rows.tolist(), key=lambda r: (index[int(psid[r])], int(pid[r])))
    gens = program_generations(procs, rows, None if maps is None else MappingStarts(maps))
    last: dict[tuple[int, int, int], int] = {}
    for r, g in zip(rows, gens, strict=True):
        key = (int(pid[r]), int(start[r]))
        k = index[int(psid[r])]
        prev = last.get((*key, g))
        if prev is not None and k > prev + 1:
            raise _fail(
                where,
                f"row {r}: process {key[0]} (start {key[1]}) disappears at snapshot "
                f"{int(sids[prev + 1])} and comes back with the same start time",
            )
        last[(*key, g)] = k


def check_mappings(where: str, sids: Arr, maps: pa.Table) -> None:
    """Check ``mappings``."""
    check_required(where, maps, "mappings")
    msid = _np(maps.column("snapshot_id"), np.int64)
    pos = np.searchsorted(sids, msid)
    known = pos < len(sids)
    known[known] = sids[pos[known]] == msid[known]
    i = _first(~known)
    if i is not None:
        raise _fail(where, f"row {i}: snapshot {int(msid[i])} is not in the snapshots table")
    start = _np(maps.column("start"), np.uint64)
    end = _np(maps.column("end"), np.uint64)
    i = _first(start >= end)
    if i is not None:
        raise _fail(where, f"row {i}: mapping 0x{int(start[i]):x}-0x{int(end[i]):x} is empty")
    i = _first(_np(maps.column("pid"), np.int64) <= 0)
    if i is not None:
        raise _fail(where, f"row {i}: pid is not a user process (pids start at 1)")


def _known_snapshots(where: str, sids: Arr, table: pa.Table) -> None:
    tsid = _np(table.column("snapshot_id"), np.int64)
    pos = np.searchsorted(sids, tsid)
    known = pos < len(sids)
    known[known] = sids[pos[known]] == tsid[known]
    i = _first(~known)
    if i is not None:
        raise _fail(where, f"row {i}: snapshot {int(tsid[i])} is not in the snapshots table")


def _non_negative(where: str, table: pa.Table, columns: tuple[str, ...]) -> None:
    for name in columns:
        col = table.column(name)
        if col.null_count == len(col):
            continue
        values = _np(col, np.float64)  # nulls become NaN, which is not < 0
        i = _first(values < 0)
        if i is not None:
            raise _fail(where, f"row {i}: {name} {float(values[i]):g} is negative")


def check_cgroups(where: str, sids: Arr, cgroups: pa.Table) -> None:
    """Check ``cgroups`` (schema v2): known snapshots, versions 1 or 2, sizes not negative."""
    check_required(where, cgroups, "cgroups")
    _known_snapshots(where, sids, cgroups)
    versions = _np(cgroups.column("cgroup_version"), np.int64)
    i = _first((versions != 1) & (versions != 2))
    if i is not None:
        raise _fail(where, f"row {i}: cgroup version {int(versions[i])} is neither 1 nor 2")
    _non_negative(
        where,
        cgroups,
        tuple(n for n in S.CGROUPS_SCHEMA.names if n.endswith("_bytes")),
    )


#: Counters of the samples table, each at most the pages the sample looked at.
_SAMPLE_COUNTS = (
    "pages_tracked",
    "pages_present",
    "pages_new",
    "pages_hashed",
    "pages_changed",
    "frames_changed",
    "pages_absent",
    "pages_written",
    "same_content_writes",
)


def check_samples(where: str, sids: Arr, samples: pa.Table) -> None:
    """Check ``samples`` (schema v2): known snapshots, user pids, times in order, counts."""
    check_required(where, samples, "samples")
    _known_snapshots(where, sids, samples)
    pid = _np(samples.column("pid"), np.int64)
    i = _first(pid <= 0)
    if i is not None:
        raise _fail(where, f"row {i}: pid {int(pid[i])} is not a user process (pids start at 1)")
    t0 = _np(samples.column("t0_s"), np.float64)
    t1 = _np(samples.column("t1_s"), np.float64)
    i = _first(~np.isfinite(t0) | ~np.isfinite(t1) | (t1 < t0))
    if i is not None:
        raise _fail(where, f"row {i}: sample times {t0[i]!r}..{t1[i]!r} are not in order")
    _non_negative(where, samples, _SAMPLE_COUNTS)
    hashed = _np(samples.column("pages_hashed"), np.float64)
    changed = _np(samples.column("pages_changed"), np.float64)
    i = _first(changed > hashed)
    if i is not None:
        raise _fail(where, f"row {i}: {int(changed[i])} pages changed of {int(hashed[i])} hashed")
    states = samples.column("state").to_pylist()
    bad = next((j for j, s_ in enumerate(states) if s_ not in ("ok", "gone")), None)
    if bad is not None:
        raise _fail(where, f"row {bad}: unknown sample state {short(states[bad])} (ok, gone)")


def check_small_tables(
    host: str, tables: Mapping[str, pa.Table], where: Mapping[str, str]
) -> HostIndex:
    """Check every table of one host but ``pages`` (those of its schema version)."""
    sids, page_size = check_snapshots(where["snapshots"], host, tables["snapshots"])
    check_mappings(where["mappings"], sids, tables["mappings"])  # (read by the next check)
    live = check_processes(where["processes"], sids, tables["processes"], tables["mappings"])
    if "cgroups" in tables:
        check_cgroups(where["cgroups"], sids, tables["cgroups"])
    if "samples" in tables:
        check_samples(where["samples"], sids, tables["samples"])
    return HostIndex(host=host, snapshot_ids=sids, page_size=page_size, live_keys=live)


#: Columns the pages check reads (all of them).
PAGES_CHECK_COLUMNS = tuple(S.PAGES_SCHEMA.names)
#: Per-page change counts (schema v2), each at most the page's ``samples`` (content changes
#: at most its content checks).
_PAGE_COUNTS = S.PAGE_CHANGE_COUNTS[1:]
#: ``samples``, the change counts and ``other_hash``: a batch may leave them all out when
#: they are all null (schema v1 files, and later files whose footer proves it:
#: ``Trace.iter_pages``).
PAGE_CHANGE_COLUMNS = S.PAGE_CHANGE_COLUMNS


class PagesCheck:
    """Checks ``pages`` batch by batch, in file order (state carries across batches)."""

    def __init__(self, index: HostIndex, where: str) -> None:
        self.index = index
        self.where = where
        self.rows = 0
        self._prev: tuple[int, int, int] | None = None  # (snapshot, pid, page_addr)

    def feed(self, pages: pa.Table) -> None:
        """Check the next rows (a table with every column of the pages schema, or all but
        :data:`PAGE_CHANGE_COLUMNS` when those are all null).

        The table is checked one record batch at a time: the columns of a batch are read
        in place (no copy), and the state carries from one batch to the next.
        """
        for batch in pages.to_batches():
            self._feed(batch)

    def _feed(self, pages: pa.RecordBatch) -> None:
        n = pages.num_rows
        if n == 0:
            return
        where, row0 = self.where, self.rows
        check_required(where, pages, "pages")
        # native dtypes, no copies beyond joining chunks: this runs on every page read
        sid = as_numpy(pages.column("snapshot_id"), np.int32)
        pid = as_numpy(pages.column("pid"), np.int32)
        addr = as_numpy(pages.column("page_addr"), np.uint64)
        i = None
        eq = sid[1:] == sid[:-1]
        same_pid = eq & (pid[1:] == pid[:-1])
        if self._prev is not None and (int(sid[0]), int(pid[0]), int(addr[0])) <= self._prev:
            i, prev = 0, self._prev
        else:
            bad = sid[1:] < sid[:-1]
            bad |= eq & (pid[1:] < pid[:-1])
            bad |= same_pid & (addr[1:] <= addr[:-1])
            if bad.any():
                j = int(np.argmax(bad))
                i, prev = j + 1, (int(sid[j]), int(pid[j]), int(addr[j]))
        if i is not None:
            if prev[:2] == (int(sid[i]), int(pid[i])) and prev[2] == int(addr[i]):
                what = (
                    f"page 0x{int(addr[i]):x} of pid {int(pid[i])} appears twice "
                    f"in snapshot {int(sid[i])}"
                )
            else:
                what = "pages are not sorted by (snapshot_id, pid, page_addr)"
            raise _fail(where, f"row {row0 + i}: {what}")
        ps = np.uint64(self.index.page_size - 1)
        if (addr & ps).any():
            i = int(np.argmax((addr & ps) != 0))
            raise _fail(
                where,
                f"row {row0 + i}: page address 0x{int(addr[i]):x} is not aligned to the "
                f"page size ({self.index.page_size})",
            )
        vma = as_numpy(pages.column("vma_start"), np.uint64)
        if (vma > addr).any():
            i = int(np.argmax(vma > addr))
            raise _fail(
                where,
                f"row {row0 + i}: page 0x{int(addr[i]):x} lies below its mapping's start "
                f"0x{int(vma[i]):x}",
            )
        flags = as_numpy(pages.column("flags"), np.uint16)
        for column, allowed, what in (
            (
                "content_hash",
                _NO_HASH_FLAGS,
                "has no content hash but was neither swapped nor unreadable",
            ),
            ("frame_id", _NO_FRAME_FLAGS, "has no frame but was not swapped"),
        ):
            col = pages.column(column)
            if col.null_count:
                missing = _np(col.is_null(), bool) & ((flags & allowed) == 0)
                i = _first(missing)
                if i is not None:
                    raise _fail(where, f"row {row0 + i}: page 0x{int(addr[i]):x} {what}")
        self._check_counts(pages, addr, row0)
        # every page in a known snapshot, of a live process of that snapshot: one lookup of
        # (snapshot, pid) per run of pages of one process
        heads = np.concatenate([[0], np.flatnonzero(~same_pid) + 1]) if n > 1 else np.zeros(1, int)
        keys = (sid[heads].astype(np.int64) << 32) | pid[heads].astype(np.int64)
        live = self.index.live_keys
        pos = np.minimum(np.searchsorted(live, keys), max(len(live) - 1, 0))
        found = live[pos] == keys if len(live) else np.zeros(len(keys), bool)
        if not found.all():
            j = int(np.argmin(found))
            r, s_, p_ = int(heads[j]), int(sid[heads[j]]), int(pid[heads[j]])
            sids = self.index.snapshot_ids
            k = int(np.searchsorted(sids, s_))
            if k >= len(sids) or int(sids[k]) != s_:
                raise _fail(where, f"row {row0 + r}: snapshot {s_} is not in the snapshots table")
            raise _fail(
                where,
                f"row {row0 + r}: pages of pid {p_} in snapshot {s_}, but no live process "
                "row for it (pages of another trace?)",
            )
        self._prev = (int(sid[-1]), int(pid[-1]), int(addr[-1]))
        self.rows += n

    def _check_counts(self, pages: pa.RecordBatch, addr: Arr, row0: int) -> None:
        """The change counts of a sampled page: none without ``samples``, none above it."""
        if "samples" not in pages.column_names:
            return
        seen = pages.column("samples")
        if seen.null_count == len(seen):
            for name in (*_PAGE_COUNTS, "other_hash"):
                if name not in pages.column_names:
                    continue
                col = pages.column(name)
                j = _first(~_np(col.is_null(), bool))
                if j is not None:
                    raise _fail(
                        self.where,
                        f"row {row0 + j}: page 0x{int(addr[j]):x} has {name} but no samples",
                    )
            return
        n_seen = as_numpy(seen, np.int64, null=0)
        checks = pages.column("content_checks")
        n_checks = as_numpy(checks, np.int64, null=0)
        for name in _PAGE_COUNTS:
            col = pages.column(name)
            if col.null_count == len(col):
                continue
            values = as_numpy(col, np.int64, null=0)
            bound, of = (
                (n_checks, "content checks")
                if name == "content_changes"
                else (
                    n_seen,
                    "samples",
                )
            )
            i = _first(values > bound)
            if i is not None:
                raise _fail(
                    self.where,
                    f"row {row0 + i}: page 0x{int(addr[i]):x} has {name} {int(values[i])} "
                    f"but only {int(bound[i])} {of}",
                )
        other = pages.column("other_hash") if "other_hash" in pages.column_names else None
        if other is not None and other.null_count < len(other):  # (found by a change)
            changes = as_numpy(pages.column("content_changes"), np.int64, null=0)
            i = _first(~_np(other.is_null(), bool) & (changes == 0))
            if i is not None:
                raise _fail(
                    self.where,
                    f"row {row0 + i}: page 0x{int(addr[i]):x} has an other_hash but no "
                    "content change",
                )


__all__ = [
    "PAGES_CHECK_COLUMNS",
    "PAGE_CHANGE_COLUMNS",
    "HostIndex",
    "PagesCheck",
    "as_numpy",
    "check_cgroups",
    "check_mappings",
    "check_processes",
    "check_samples",
    "check_small_tables",
    "check_snapshots",
]
