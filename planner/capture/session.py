"""A capture session: choose target processes, take snapshots, write the trace.

:func:`capture` is the library call behind ``ksm-planner capture``. It

1. loads (or creates) the capture key and checks privileges up front: PFNs must be visible
   (CAP_SYS_ADMIN), ``/proc/kpageflags`` readable (root) unless disabled;
2. resolves the targets (``pids``, their descendants with ``children``, a cgroup, a comm
   regex) and fails with :class:`~planner.errors.TargetNotFoundError` if one does not exist;
3. paces itself (:mod:`planner.capture.pace`): nice +10 by default between snapshots, each
   snapshot one burst at the starting priority, and its CPU time bounded by ``cpu_budget``
   (restored at the end);
4. takes ``snapshots`` snapshots ``interval_s`` apart (start to start; later when the budget
   is spent). Descendants, cgroup members and comm matches are looked up again at each
   snapshot; a process that exits is recorded as ``gone`` in the snapshot where it vanished
   and dropped afterwards;
5. per snapshot, looks the frames up in kpageflags/kpagecount once (KSM, THP, zero page,
   map count), renumbers PFNs into session-stable frame ids and writes the four tables
   through :class:`~planner.trace.io.TraceWriter` (atomic, owner-only).

A snapshot's ``time_s`` and ``duration_s`` span the reading of its processes and the frame
lookups: the moment the memory was looked at. Building and writing its tables comes after.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from planner._progress import NULL_PROGRESS, Progress
from planner.capture.churn import MIN_SAMPLE_MS, IntervalResult, Sampler
from planner.capture.facts import CgroupHierarchy, LoadMonitor, host_facts, read_cgroups
from planner.capture.frames import FrameIds
from planner.capture.hashing import PageHasher
from planner.capture.keys import HASH_ALGO, prepare_key
from planner.capture.kpage import KPageReader
from planner.capture.pace import (
    DEFAULT_BURST_SHARE,
    DEFAULT_CPU_BUDGET,
    MIN_CPU_BUDGET,
    PRIORITIES,
    Pacer,
    Priority,
)
from planner.capture.procfs import (
    KPF_KSM,
    KPF_THP,
    KPF_ZERO_PAGE,
    PAGE_SIZE_BYTES,
    ProcessGone,
    ProcFS,
    ProcStat,
    probe_own_pfns,
)
from planner.capture.snapshot import (
    DEFAULT_THREADS,
    PFN_HIDDEN_HINT,
    ProcessCapture,
    ProcessReader,
    Timings,
)
from planner.capture.softdirty import probe_soft_dirty
from planner.errors import (
    CapturePermissionError,
    KernelUnsupportedError,
    TargetNotFoundError,
    UsageProblem,
)
from planner.provenance import HostInfo, cpu_identity, tool_version
from planner.trace.io import TraceWriter
from planner.trace.schema import (
    CGROUPS_SCHEMA,
    MAPPINGS_SCHEMA,
    PROCESSES_SCHEMA,
    SAMPLES_SCHEMA,
    PageFlag,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from planner.trace.io import HostWriter

#: ``PF_EXITING`` of ``/proc/<pid>/stat`` field 9: the task is exiting (its memory is going).
PF_EXITING: Final = 0x00000004
#: Longest wait between snapshot starts, s: a day. Snapshots further apart are separate
#: captures; the replay between them would only hold the first for that long.
MAX_INTERVAL_S: Final = 86_400.0
MAX_CPUS: Final = 1024.0
#: Longest step of a wait between snapshots: the host's runnable tasks are read after each.
LOAD_SAMPLE_S: Final = 0.1
MAX_THREADS: Final = 64
_U64 = np.uint64


@dataclass(frozen=True)
class CaptureOptions:
    """What to capture and how (the options of ``ksm-planner capture``)."""

    out: Path
    pids: tuple[int, ...] = ()
    children: bool = False
    cgroup: str | None = None
    comm: str | None = None
    snapshots: int = 1
    interval_s: float = 10.0
    overwrite: bool = False
    key_file: Path | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    keep_cmdline: bool = False
    kpageflags: bool = True
    priority: Priority = "low"
    cpu_budget: float | None = DEFAULT_CPU_BUDGET
    """CPUs the capture may use on average (``None``: unbounded)."""
    threads: int = DEFAULT_THREADS
    """Threads reading and hashing pages at once."""
    burst_share: float | None = DEFAULT_BURST_SHARE
    """CPU share each thread reserves during a snapshot (SCHED_DEADLINE; ``None``: none)."""
    sample_ms: float | None = None
    """Sample the pages of each snapshot every ``sample_ms`` until the next (and for one more
    interval after the last): :mod:`planner.capture.churn`. ``None``: no sampling."""
    soft_dirty: bool | None = None
    """Track writes with soft-dirty while sampling: ``None`` where the kernel has it (probed),
    ``False`` never (``--no-soft-dirty``), ``True`` required (an error where it does not work;
    trusted without a probe on a procfs other than this system's)."""
    proc_root: Path = Path("/proc")
    sys_root: Path = Path("/sys")

    def validate(self) -> None:
        """Raise :class:`UsageProblem` for impossible option values."""
        if not (self.pids or self.cgroup or self.comm):
            raise UsageProblem("no capture target given", hint="pass --pid, --cgroup or --comm")
        if self.snapshots < 1:
            raise UsageProblem(f"--snapshots must be at least 1 (got {self.snapshots})")
        if not 0 <= self.interval_s <= MAX_INTERVAL_S:
            raise UsageProblem(
                f"--interval must be between 0 and {MAX_INTERVAL_S:.0f} seconds "
                f"(got {self.interval_s})",
                hint="snapshots a day apart or more are separate captures",
            )
        if self.priority not in PRIORITIES:
            raise UsageProblem(
                f"unknown --priority {self.priority!r}", hint=f"use one of {', '.join(PRIORITIES)}"
            )
        if self.cpu_budget is not None and not MIN_CPU_BUDGET <= self.cpu_budget <= MAX_CPUS:
            raise UsageProblem(
                f"--cpu-budget must be between {MIN_CPU_BUDGET} and {MAX_CPUS} CPUs "
                f"(got {self.cpu_budget})",
                hint="e.g. 0.25 for a quarter of one CPU",
            )
        if self.burst_share is not None and not 0.01 <= self.burst_share <= 0.9:
            raise UsageProblem(f"burst_share must be 0.01 to 0.9 of a CPU (got {self.burst_share})")
        if self.sample_ms is not None:
            if not MIN_SAMPLE_MS <= self.sample_ms <= MAX_INTERVAL_S * 1000:
                raise UsageProblem(
                    f"--sample-ms must be at least {MIN_SAMPLE_MS:.0f} ms (got {self.sample_ms})",
                    hint="e.g. --sample-ms 100",
                )
            if self.sample_ms > self.interval_s * 1000:
                raise UsageProblem(
                    f"--sample-ms {self.sample_ms:g} is longer than --interval "
                    f"{self.interval_s:g} s: no sample would fit between two snapshots",
                    hint="sample more often than the snapshots are taken",
                )
        elif self.soft_dirty:
            raise UsageProblem(
                "soft-dirty tracking needs sampling", hint="give --sample-ms as well"
            )
        if not 1 <= self.threads <= MAX_THREADS:
            raise UsageProblem(
                f"--threads must be between 1 and {MAX_THREADS} (got {self.threads})"
            )
        bad = [p for p in self.pids if p <= 0]
        if bad:
            raise UsageProblem(f"invalid pid {bad[0]}", hint="pids are positive integers")
        if self.comm is not None:
            try:
                re.compile(self.comm)
            except re.error as exc:
                raise UsageProblem(
                    f"--comm {self.comm!r} is not a valid regular expression: {exc}"
                ) from None

    def to_json_dict(self) -> dict[str, Any]:
        """The options as recorded in ``snapshots.capture_options`` (no key, no key path)."""
        return {
            "pids": list(self.pids),
            "children": self.children,
            "cgroup": self.cgroup,
            "comm": self.comm,
            "snapshots": self.snapshots,
            "interval_s": self.interval_s,
            "labels": dict(self.labels),
            "keep_cmdline": self.keep_cmdline,
            "kpageflags": self.kpageflags,
            "priority": self.priority,
            "cpu_budget": self.cpu_budget,
            "threads": self.threads,
            "burst_share": self.burst_share,
            "sample_ms": self.sample_ms,
            "soft_dirty": self.soft_dirty,
            "proc_root": str(self.proc_root),
        }


def parse_labels(items: Sequence[str]) -> dict[str, str]:
    """Parse ``KEY=VALUE`` strings (``--label``) into a dict.

    Examples
    --------
    >>> parse_labels(["service=web", "setup=b"])
    {'service': 'web', 'setup': 'b'}
    """
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageProblem(f"label {item!r} is not KEY=VALUE", hint="e.g. --label service=web")
        out[key.strip()] = value
    return out


@dataclass(frozen=True)
class CaptureResult:
    """Summary of a finished capture (what the CLI prints)."""

    out: Path
    trace_hash: str
    host: str
    hash_key_id: str
    snapshots: int
    processes: int
    """Distinct processes captured at least once."""
    gone: tuple[int, ...]
    """Pids that exited during the session."""
    pages: int
    """Page rows written (all snapshots)."""
    capture_s: float
    """Time spent taking snapshots (excluding the waits between them)."""
    pages_per_s: float
    trace_bytes: int
    pages_file_bytes: int
    bytes_per_page: float
    """Trace bytes on disk per page row (all files)."""
    timings: dict[str, float]
    kpage_reads: int
    snapshot_durations_s: tuple[float, ...] = ()
    """How long each snapshot took (reading its processes and their frames)."""
    cpu_s: float = 0.0
    """The capture's own CPU seconds (all its threads), start to end."""
    wall_s: float = 0.0
    """Wall seconds from the first snapshot's start to the trace written."""
    throttled_s: float = 0.0
    """Seconds waited beyond the schedule because the CPU budget was spent."""
    burst_nice: int | None = None
    """The nice value snapshots ran at."""
    burst_policy: str | None = None
    """``deadline`` (a SCHED_DEADLINE reservation) or ``nice``: how snapshots were scheduled."""
    mem_reads: int = 0
    """``pread`` calls of ``/proc/<pid>/mem``."""
    sampling_passes: int = 0
    """Sampling passes over all intervals (``--sample-ms``)."""
    sampling_cpu_s: float = 0.0
    """The sampling's own CPU seconds."""
    sampling_wall_s: float = 0.0
    """Wall seconds spent sampling (the intervals)."""
    soft_dirty: bool = False
    """Writes were tracked with soft-dirty."""
    soft_dirty_note: str | None = None
    """One line on soft-dirty support when sampling was asked (why it is not used)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        d = asdict(self)
        d["out"] = str(self.out)
        d["gone"] = list(self.gone)
        d["snapshot_durations_s"] = list(self.snapshot_durations_s)
        return d


# ------------------------------------------------------------------------------ targets


class Targets:
    """Resolves which processes to capture at each snapshot."""

    def __init__(self, procfs: ProcFS, options: CaptureOptions) -> None:
        self._fs = procfs
        self._opts = options
        self._comm = re.compile(options.comm) if options.comm is not None else None
        self._cgroup = _cgroup_candidates(options.cgroup) if options.cgroup is not None else None
        me = procfs.self_pid()
        self._exclude = {me} if me is not None else set()
        self._roots: dict[int, int] = {}
        self._matched_any_cgroup = False
        self._matched_any_comm = False
        self.tracked: dict[int, int] = {}
        """pid -> proc_start of the processes captured so far and still followed."""

    def resolve_initial(self) -> dict[int, int]:
        """The first snapshot's targets; :class:`TargetNotFoundError` if one is missing."""
        for pid in self._opts.pids:
            try:
                st = self._fs.stat(pid)
            except ProcessGone:
                raise TargetNotFoundError(
                    f"no process with pid {pid}", hint="check the pid with 'ps -p'"
                ) from None
            if st.is_dead:
                raise TargetNotFoundError(
                    f"process {pid} has exited (zombie)", hint="check the pid with 'ps -p'"
                )
            if st.is_kernel_thread:
                raise TargetNotFoundError(
                    f"pid {pid} ({st.comm}) is a kernel thread without user memory",
                    hint="give a user process",
                )
            tgid = self._fs.status(pid).get("Tgid", str(pid))
            if tgid.isdigit() and int(tgid) != pid:
                raise TargetNotFoundError(
                    f"{pid} is a thread of process {tgid}, not a process", hint=f"use --pid {tgid}"
                )
            self._roots[pid] = st.starttime_ticks
        targets = self.resolve()
        if self._cgroup is not None and not self._matched_any_cgroup:
            raise TargetNotFoundError(
                f"no process is in cgroup {self._opts.cgroup}",
                hint="check the path in /proc/<pid>/cgroup",
            )
        if self._comm is not None and not self._matched_any_comm:
            raise TargetNotFoundError(
                f"no process name matches --comm {self._opts.comm!r}",
                hint="check the names with 'ps -e -o comm'",
            )
        return targets

    def resolve(self) -> dict[int, int]:
        """pid -> proc_start of this snapshot's targets (tracked ones included even if gone)."""
        need_scan = self._opts.children or self._cgroup is not None or self._comm is not None
        stats: dict[int, ProcStat] = {}
        if need_scan:
            stats = {
                s.pid: s
                for s in self._fs.iter_stats()
                if not s.is_kernel_thread and s.pid not in self._exclude
            }
        seeds: dict[int, int] = dict(self._roots)
        self._matched_any_cgroup = self._matched_any_comm = False
        for pid, st in stats.items():
            if st.is_dead:
                continue
            if self._comm is not None and self._comm.search(st.comm):
                seeds[pid] = st.starttime_ticks
                self._matched_any_comm = True
            if self._cgroup is not None and self._in_cgroup(pid):
                seeds[pid] = st.starttime_ticks
                self._matched_any_cgroup = True
        if self._opts.children:
            kids: dict[int, list[int]] = {}
            for st in stats.values():
                kids.setdefault(st.ppid, []).append(st.pid)
            alive = {
                p: s
                for p, s in {**self.tracked, **seeds}.items()
                if p in stats and stats[p].starttime_ticks == s
            }
            todo = list(alive)
            while todo:
                for child in kids.get(todo.pop(), ()):
                    if child not in seeds and not stats[child].is_dead:
                        seeds[child] = stats[child].starttime_ticks
                        todo.append(child)
        out = {**seeds, **self.tracked}
        return dict(sorted(out.items()))

    def _in_cgroup(self, pid: int) -> bool:
        assert self._cgroup is not None
        try:
            paths = self._fs.cgroups(pid)
        except (ProcessGone, CapturePermissionError, OSError):
            return False
        return any(_under(path, c) for path in paths.values() for c in self._cgroup)

    def forget(self, pid: int) -> None:
        """Stop following ``pid`` (it exited)."""
        self.tracked.pop(pid, None)
        self._roots.pop(pid, None)


def _cgroup_candidates(path: str) -> tuple[str, ...]:
    p = "/" + path.strip("/")
    for mount in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        if p == mount or p.startswith(mount + "/"):
            rest = p[len(mount) :] or "/"
            # /sys/fs/cgroup/<controller>/... on cgroup v1 hosts: also try without the controller
            parts = rest.strip("/").split("/", 1)
            return (
                (rest, "/" + parts[1]) if len(parts) == 2 and mount == "/sys/fs/cgroup" else (rest,)
            )
    return (p,)


def _under(path: str, root: str) -> bool:
    return root == "/" or path == root or path.startswith(root.rstrip("/") + "/")


# ------------------------------------------------------------------------------ capture


def capture(
    options: CaptureOptions,
    *,
    progress: Progress = NULL_PROGRESS,
    zero_pfn: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
    procfs: ProcFS | None = None,
) -> CaptureResult:
    """Capture live processes into a trace directory (``ksm-planner capture``).

    Parameters
    ----------
    options
        Targets, snapshots and output.
    progress
        Receives one task per snapshot, advanced by recorded pages.
    zero_pfn
        PFN of the shared zero page. Found by a self-probe on the live system; give it for a
        fake procfs (else zero-page PTEs are only recognised through kpageflags).
    sleep
        Called to wait between snapshots (tests replace it).
    procfs
        Read through this instead of ``ProcFS(options.proc_root)`` (tests pass a spy).

    Raises
    ------
    UsageProblem
        Impossible options, or the output exists without ``overwrite``.
    TargetNotFoundError
        A target does not exist at the start, or every target exited before anything
        was read (then nothing is written: no trace, no new key file).
    CapturePermissionError
        ptrace access, PFN visibility (CAP_SYS_ADMIN) or kpageflags (root) is missing.
    """
    options.validate()
    if procfs is None:
        procfs = ProcFS(options.proc_root, sys_root=options.sys_root)
    if not procfs.root.is_dir():
        raise UsageProblem(
            f"procfs root {procfs.root} is not a directory", hint="give the procfs mount point"
        )
    targets = Targets(procfs, options)
    first_targets = targets.resolve_initial()
    key = prepare_key(options.key_file)  # a new key is written only if the capture succeeds
    hasher = PageHasher(key.key)
    if procfs.is_live:
        written_pfn, probed_zero = probe_own_pfns(procfs)
        if written_pfn == 0:
            raise CapturePermissionError(
                "/proc/self/pagemap reports PFN 0 for a written page "
                "(PFNs are hidden without CAP_SYS_ADMIN)",
                hint=PFN_HIDDEN_HINT,
            )
        zero_pfn = probed_zero if zero_pfn is None and probed_zero else zero_pfn
    host = HostInfo.collect()
    opts_json = options.to_json_dict()
    session = _Session(options, procfs, hasher, host, zero_pfn, opts_json)
    pacer = Pacer(
        priority=options.priority,
        cpu_budget=options.cpu_budget,
        window_s=max(options.interval_s, 2.0),
        burst_share=options.burst_share,
        sleep=sleep,
    )
    session.reader.pacer = pacer
    session.reader.cgroup_hierarchy = session.hierarchy
    sampler, soft_note = _sampler(options, session, pacer, zero_pfn)
    key_written = False
    cpu0 = time.process_time()
    try:
        with contextlib.ExitStack() as stack:
            stack.callback(session.reader.close)
            kpage = stack.enter_context(KPageReader(procfs)) if options.kpageflags else None
            stack.enter_context(pacer)
            finish_in_a_burst = stack.enter_context(pacer.later_burst())
            writer = stack.enter_context(
                TraceWriter(
                    options.out,
                    source="capture",
                    overwrite=options.overwrite,
                    extra={
                        "capture": {
                            **opts_json,
                            "hash_algo": HASH_ALGO,
                            "hash_key_id": hasher.key_id,
                            # what a page costs ksmd depends on the CPU (docs/busy-host.md)
                            "host_cpu": cpu_identity(options.proc_root),
                        }
                    },
                )
            )
            hw = writer.host(host.host)
            with pacer.burst():  # at nice +10 a busy host could starve even this
                warm_up()
                session.reader.start_threads()  # not while the first snapshot is timed
            pacer.reset()
            if sampler is not None:  # one burst for the whole sampled capture (see burst())
                stack.enter_context(pacer.burst(fresh=True))
            t_start = pacer.clock()
            session.take_all(first_targets, targets, kpage, hw, pacer, sampler, progress)
            if not session.seen:
                gone = ", ".join(map(str, dict.fromkeys(session.gone)))
                raise TargetNotFoundError(
                    f"nothing was captured: every target process exited before it could be "
                    f"read ({gone})",
                    hint="check that the processes run for the whole capture",
                )
            t_write = time.perf_counter()
            key.persist()
            key_written = True
            finish_in_a_burst()  # the trace's files are written as the writer exits
    except BaseException:
        if key_written:
            key.discard()
        raise
    session.timings.write_s += time.perf_counter() - t_write
    return _result(session, writer, hw, kpage, pacer, sampler, soft_note, cpu0, t_start)


def _result(
    session: _Session,
    writer: TraceWriter,
    hw: HostWriter,
    kpage: KPageReader | None,
    pacer: Pacer,
    sampler: Sampler | None,
    soft_note: str | None,
    cpu0: float,
    t_start: float,
) -> CaptureResult:
    """What the command reports about a finished capture."""
    manifest = writer.manifest or {}
    files = manifest.get("files", {})
    trace_bytes = sum(int(f["bytes"]) for f in files.values())
    pages_bytes = sum(int(f["bytes"]) for rel, f in files.items() if rel.endswith("/pages.parquet"))
    total_pages = hw.pages_written
    return CaptureResult(
        out=session.options.out,
        trace_hash=str(manifest.get("trace_hash", "")),
        host=session.host.host,
        hash_key_id=session.hasher.key_id,
        snapshots=session.options.snapshots,
        processes=len(session.seen),
        gone=tuple(session.gone),
        pages=total_pages,
        capture_s=session.capture_s,
        pages_per_s=total_pages / session.capture_s if session.capture_s > 0 else 0.0,
        trace_bytes=trace_bytes,
        pages_file_bytes=pages_bytes,
        bytes_per_page=trace_bytes / total_pages if total_pages else 0.0,
        timings=session.timings.to_dict(),
        kpage_reads=kpage.stats.reads if kpage is not None else 0,
        snapshot_durations_s=tuple(session.durations_s),
        cpu_s=time.process_time() - cpu0,
        wall_s=pacer.clock() - t_start,
        throttled_s=pacer.throttled_s,
        burst_nice=pacer.burst_nice,
        burst_policy=pacer.burst_policy,
        mem_reads=session.reader.mem_reads,
        sampling_passes=sampler.total_passes if sampler is not None else 0,
        sampling_cpu_s=sampler.total_cpu_s if sampler is not None else 0.0,
        sampling_wall_s=sampler.total_wall_s if sampler is not None else 0.0,
        soft_dirty=bool(sampler is not None and sampler.soft_dirty),
        soft_dirty_note=soft_note,
    )


def _sampler(
    options: CaptureOptions, session: _Session, pacer: Pacer, zero_pfn: int | None
) -> tuple[Sampler | None, str | None]:
    """The sampler of ``--sample-ms`` (or ``None``) and the line on soft-dirty support."""
    if options.sample_ms is None:
        return None, None
    soft = False
    note: str | None = "soft-dirty tracking is off (--no-soft-dirty): content sampling only"
    if options.soft_dirty is not False:
        if options.soft_dirty and not session.procfs.is_live:
            soft, note = True, None  # a fake procfs in tests: trusted
        else:
            support = probe_soft_dirty(session.procfs)
            soft, note = support.available, (None if support.available else support.reason)
            if options.soft_dirty and not soft:
                raise KernelUnsupportedError(
                    support.reason, hint="sample without it: leave out the soft-dirty option"
                )
    sampler = Sampler(
        session.reader,
        pacer,
        sample_ms=options.sample_ms,
        soft_dirty=soft,
        zero_pfn=zero_pfn,
        t0=0.0,
    )
    return sampler, note


def warm_up() -> None:
    """Load what the first snapshot would otherwise load while it is timed.

    The compiled page hash and read loop (numba; compiled once per installation, then loaded
    from its cache in about half a second), and pyarrow's first array (which imports
    pandas, another half second): a first snapshot that paid for them would last a second
    longer than the memory it looks at.
    """
    import pyarrow as pa_

    from planner.capture import memread, xxh3

    xxh3.warm_up()
    memread.warm_up()
    pa_.array(np.zeros(1, np.uint64))


class _Session:
    """State kept across the snapshots of one capture."""

    def __init__(
        self,
        options: CaptureOptions,
        procfs: ProcFS,
        hasher: PageHasher,
        host: HostInfo,
        zero_pfn: int | None,
        opts_json: dict[str, Any],
    ) -> None:
        self.options = options
        self.procfs = procfs
        self.hasher = hasher
        self.host = host
        self.timings = Timings()
        self.reader = ProcessReader(
            procfs,
            hasher,
            zero_pfn=zero_pfn,
            keep_cmdline=options.keep_cmdline,
            threads=options.threads,
            timings=self.timings,
        )
        self.frames = FrameIds()
        self.hierarchy = CgroupHierarchy.find(procfs)
        self.monitor = LoadMonitor(procfs)
        self.labels = json.dumps(dict(options.labels), sort_keys=True) if options.labels else None
        self.opts_json = json.dumps(opts_json, sort_keys=True)
        self.boot_wall_s = procfs.boot_time_s()
        self.clk_tck = procfs.clock_ticks_per_s()
        self.t0_wall_s: float | None = None
        self.t0_perf = 0.0
        self.capture_s = 0.0
        self.durations_s: list[float] = []
        self.seen: set[tuple[int, int]] = set()
        self.gone: list[int] = []
        self.last_info: dict[tuple[int, int], dict[str, Any]] = {}

    def snapshot(
        self,
        snapshot_id: int,
        targets_now: Mapping[int, int],
        targets: Targets,
        kpage: KPageReader | None,
        progress: Progress,
    ) -> _Taken:
        """Read every target and look its frames up: the snapshot itself (timed)."""
        wall_ns = time.time_ns()
        t_snap = time.perf_counter()
        cpu0 = time.process_time()
        if self.t0_wall_s is None:
            self.t0_wall_s, self.t0_perf = wall_ns / 1e9, t_snap
        host = host_facts(self.procfs)
        progress.start(
            f"snapshot {snapshot_id + 1}/{self.options.snapshots}",
            self._estimate_pages(targets_now),
        )
        caps: list[ProcessCapture] = []
        for pid, start in targets_now.items():
            pc = self._vanished(self.reader.capture(pid, proc_start=start, progress=progress))
            caps.append(pc)
            if pc.state == "gone":
                targets.forget(pid)
                self.gone.append(pid)
            else:
                targets.tracked[pid] = pc.proc_start
                self.seen.add((pid, pc.proc_start))
                self.last_info[(pid, pc.proc_start)] = pc.info
        ksm_sysfs = json.dumps(self.procfs.ksm_sysfs(), sort_keys=True)
        pages = self._frame_flags(caps, kpage)
        cgroups = read_cgroups(
            self.procfs,
            self.hierarchy,
            {
                c.info["memory_cgroup"]
                for c in caps
                if c.state == "ok" and c.info.get("memory_cgroup")
            },
        )
        duration = time.perf_counter() - t_snap
        self.capture_s += duration
        self.durations_s.append(duration)
        progress.finish()
        return _Taken(
            snapshot_id=snapshot_id,
            caps=caps,
            pages=pages,
            time_s=t_snap - self.t0_perf,
            wall_time_ns=wall_ns,
            duration_s=duration,
            ksm_sysfs=ksm_sysfs,
            host=host,
            cgroups=cgroups,
            cpu_s=time.process_time() - cpu0,
            cpu_end=time.process_time(),
        )

    def take_all(
        self,
        first_targets: Mapping[int, int],
        targets: Targets,
        kpage: KPageReader | None,
        hw: HostWriter,
        pacer: Pacer,
        sampler: Sampler | None,
        progress: Progress,
    ) -> None:
        """Every snapshot, the interval after each (paused or sampled), and their tables.

        A snapshot's tables are written when its interval has ended: the next snapshot's
        burst writes them, and the last snapshot's after its own interval (sampled captures)
        or at once.
        """
        options = self.options
        t_start = 0.0  # the schedule's origin: set as the first snapshot starts
        pending: _Taken | None = None
        for i in range(options.snapshots):
            if i:
                until = t_start + i * options.interval_s
                if sampler is not None:
                    sampler.run(until, self.monitor)
                else:
                    self.pause(pacer, until=until)
                current = targets.resolve()
            else:
                current = dict(first_targets)
            # the tables too: at nice +10 they could delay the next one
            with pacer.burst(fresh=True):
                if i == 0:
                    # the schedule starts when the first snapshot does: after the burst's
                    # wait for fresh reservations (up to a period after the warm-up's), which
                    # otherwise came off the first interval (0.2 s of 0.3 s asked)
                    t_start = pacer.clock()
                taken = self.snapshot(i, current, targets, kpage, progress)
                if pending is not None:  # its interval ended as this snapshot began
                    self.write(
                        pending,
                        hw,
                        interval_end_s=taken.time_s,
                        sampled=sampler.finish() if sampler is not None else None,
                    )
                pending = taken
            self.monitor.start()
            if sampler is not None:
                self.follow(sampler, taken)
        if pending is None:
            return
        end_s: float | None = None
        sampled = None
        if sampler is not None:  # the last snapshot's interval: one more of them
            sampler.run(pacer.clock() + options.interval_s, self.monitor, closing=True)
            end_s = time.perf_counter() - self.t0_perf
            sampled = sampler.finish()
        with pacer.burst():
            self.write(pending, hw, interval_end_s=end_s, sampled=sampled)

    def follow(self, sampler: Sampler, taken: _Taken) -> None:
        """Start sampling the pages of ``taken`` (those with a hash) until the next snapshot."""
        pg = taken.pages
        no_hash = (pg.flags & np.uint16(PageFlag.SWAPPED | PageFlag.READ_ERROR)) != 0
        sampler.t0 = self.t0_perf
        sampler.begin(
            taken.snapshot_id,
            pg.ok,
            pg.row_proc,
            pg.addr,
            pg.content_hash,
            pg.pfn,
            ~no_hash,
        )

    def pause(self, pacer: Pacer, *, until: float) -> None:
        """Wait until ``until`` (and as long as the CPU budget asks), watching the host's load.

        The wait is cut into steps of at most :data:`LOAD_SAMPLE_S`; after each one the
        runnable tasks are read (:class:`~planner.capture.facts.LoadMonitor`).
        """
        remaining = until - pacer.clock()
        steps = max(1, math.ceil(remaining / LOAD_SAMPLE_S))
        start = pacer.clock()
        for k in range(1, steps + 1):
            pacer.pay(until=start + k * remaining / steps)
            self.monitor.sample()

    def write(
        self,
        taken: _Taken,
        hw: HostWriter,
        *,
        interval_end_s: float | None,
        sampled: IntervalResult | None = None,
    ) -> None:
        """Build the tables of a snapshot and hand them to the trace writer (not timed).

        ``interval_end_s`` is when the interval after it ended (the next snapshot's start;
        ``None`` for the last snapshot without sampling): the host's load over it goes into
        its row, and ``sampled`` what the sampler found over it.
        """
        processes, mappings, pages = self._tables(taken)
        interval: dict[str, Any] = {}
        if interval_end_s is not None:
            interval = {
                "interval_s": interval_end_s - taken.time_s,
                "interval_capture_cpu_s": time.process_time() - taken.cpu_end,
                **self.monitor.finish(),
            }
        samples = None
        if sampled is not None:
            interval.update(sampled.snapshot_columns)
            for name, (values, valid) in sampled.page_columns.items():
                pages = pages.append_column(name, pa.array(values, mask=~valid))
            samples = pa.Table.from_pylist(sampled.sample_rows, schema=SAMPLES_SCHEMA)
        snap = {
            "snapshot_id": taken.snapshot_id,
            "time_s": taken.time_s,
            "wall_time_ns": taken.wall_time_ns,
            "duration_s": taken.duration_s,
            "kernel_release": self.host.kernel_release,
            "page_size": PAGE_SIZE_BYTES,
            "hz": self.host.hz,
            "thp_mode": self.host.thp_mode,
            "hash_algo": HASH_ALGO,
            "hash_key_id": self.hasher.key_id,
            "zero_hash": self.hasher.zero_hash,
            "tool_version": tool_version(),
            "capture_options": self.opts_json,
            "ksm_sysfs": taken.ksm_sysfs,
            "capture_cpu_s": taken.cpu_s,
            **taken.host,
            **interval,
        }
        t = time.perf_counter()
        cgroups = pa.Table.from_pylist(
            [{"snapshot_id": taken.snapshot_id, **row} for row in taken.cgroups],
            schema=CGROUPS_SCHEMA,
        )
        hw.add_snapshot(
            snap,
            processes=processes,
            mappings=mappings,
            pages=pages,
            cgroups=cgroups,
            samples=samples,
        )
        self.timings.write_s += time.perf_counter() - t

    def _vanished(self, pc: ProcessCapture) -> ProcessCapture:
        """``pc``, or a ``gone`` record if it was read empty because it was exiting.

        A process killed while it is read can still look alive (not yet a zombie) while its
        memory is already torn down: its maps come back empty or every page read fails.
        Such a read is not a snapshot of the process; it is recorded as gone.
        """
        if pc.state != "ok":
            return pc
        read_error = np.uint16(PageFlag.READ_ERROR)
        if pc.pages and not bool(np.all((pc.flags & read_error) != 0)):
            return pc  # something was read
        try:
            st = self.procfs.stat(pc.pid)
            gone = (
                st.is_dead
                or bool(st.flags & PF_EXITING)
                or st.starttime_ticks != pc.proc_start
                or (not pc.mappings and not self.procfs.mappings(pc.pid))
            )
        except (ProcessGone, CapturePermissionError, OSError):
            gone = True
        if not gone:
            return pc
        return ProcessCapture(
            pid=pc.pid,
            proc_start=pc.proc_start,
            state="gone",
            info=pc.info,
            error="exited while it was read",
            t0=pc.t0,
            t1=pc.t1 or time.perf_counter(),
        )

    def _estimate_pages(self, targets_now: Mapping[int, int]) -> float | None:
        total = 0
        for pid in targets_now:
            try:
                value = self.procfs.status(pid).get("RssAnon", "").split()
            except (ProcessGone, CapturePermissionError, OSError):
                continue
            if value and value[0].isdigit():
                total += int(value[0]) * 1024 // PAGE_SIZE_BYTES
        return float(total) if total else None

    # ---------------------------------------------------------------- tables of a snapshot

    def _frame_flags(self, caps: list[ProcessCapture], kpage: KPageReader | None) -> _Pages:
        """Every page row of the snapshot, with the flags and map counts of its frame."""
        ok = [c for c in caps if c.state == "ok"]
        counts = np.array([c.pages for c in ok], dtype=np.int64)
        row_proc = np.repeat(np.arange(len(ok)), counts)
        addr, vma_start, chash, pfn, flags = _concat(ok)
        needed = np.concatenate([c.kflags_needed for c in ok]) if ok else np.zeros(0, bool)
        has_frame = (flags & np.uint16(PageFlag.SWAPPED)) == 0
        zero_pfn_extra = np.zeros(len(ok), dtype=np.int64)
        if kpage is not None and len(addr):
            t = time.perf_counter()
            kflags, kcount = _frame_lookup(kpage, pfn, flags, has_frame, needed)
            flags = (
                flags
                | _bitflag(kflags, KPF_KSM, PageFlag.KSM)
                | _bitflag(kflags, KPF_THP, PageFlag.THP)
            )
            flags |= np.where(kcount > 1, np.uint16(PageFlag.SHARED_MAPCOUNT), np.uint16(0))
            zero_page = has_frame & (((kflags >> _U64(KPF_ZERO_PAGE)) & _U64(1)) == 1)
            if zero_page.any():  # PTEs of the (huge) zero page: counted, not recorded
                zero_pfn_extra = np.bincount(row_proc[zero_page], minlength=len(ok)).astype(
                    np.int64
                )
                keep = ~zero_page
                addr, vma_start, chash, pfn, flags = (
                    a[keep] for a in (addr, vma_start, chash, pfn, flags)
                )
                row_proc, has_frame = row_proc[keep], has_frame[keep]
                counts = np.bincount(row_proc, minlength=len(ok)).astype(np.int64)
            self.timings.kpage_s += time.perf_counter() - t
        return _Pages(
            ok=ok,
            counts=counts,
            row_proc=row_proc,
            addr=addr,
            vma_start=vma_start,
            content_hash=chash,
            pfn=pfn,
            flags=flags,
            has_frame=has_frame,
            zero_pfn_extra=zero_pfn_extra,
        )

    def _tables(self, taken: _Taken) -> tuple[pa.Table, pa.Table, pa.Table]:
        t = time.perf_counter()
        snapshot_id, caps, pg = taken.snapshot_id, taken.caps, taken.pages
        ok, row_proc, flags, has_frame = pg.ok, pg.row_proc, pg.flags, pg.has_frame
        frame_id = np.zeros(len(pg.addr), np.uint64)
        frame_id[has_frame] = self.frames.assign(pg.pfn[has_frame])
        no_hash = (flags & np.uint16(PageFlag.SWAPPED | PageFlag.READ_ERROR)) != 0
        racy = np.bincount(row_proc[(flags & np.uint16(PageFlag.RACY)) != 0], minlength=len(ok))
        pids = np.array([c.pid for c in ok], dtype=np.int32)
        pages = pa.table(
            {
                "snapshot_id": pa.array(np.full(len(pg.addr), snapshot_id, np.int32)),
                "pid": pa.array(pids[row_proc] if len(ok) else np.zeros(0, np.int32)),
                "vma_start": pa.array(pg.vma_start),
                "page_addr": pa.array(pg.addr),
                "content_hash": pa.array(pg.content_hash, mask=no_hash),
                "frame_id": pa.array(frame_id, mask=~has_frame),
                "flags": pa.array(flags),
            }
        )
        proc_rows: list[dict[str, Any]] = []
        map_rows: list[dict[str, Any]] = []
        ok_index = {id(c): i for i, c in enumerate(ok)}
        assert self.t0_wall_s is not None
        for c in caps:
            # a process that exited while it was read may have only its ppid and comm:
            # the rest as its last snapshot saw it
            info = {**self.last_info.get((c.pid, c.proc_start), {}), **c.info}
            row: dict[str, Any] = {
                "snapshot_id": snapshot_id,
                "pid": c.pid,
                "proc_start": c.proc_start,
                "start_time_s": self.boot_wall_s + c.proc_start / self.clk_tck - self.t0_wall_s,
                **info,
                "labels": self.labels,
                "state": c.state,
                "error": c.error,
                "capture_t0_s": c.t0 - self.t0_perf,
                "capture_t1_s": c.t1 - self.t0_perf,
            }
            if c.state == "ok":
                i = ok_index[id(c)]
                row.update(
                    pages=int(pg.counts[i]),
                    racy_pages=int(racy[i]),
                    zero_pfn_pages=c.zero_pfn_pages + int(pg.zero_pfn_extra[i]),
                )
                if pg.zero_pfn_extra[i]:
                    _recount_present(
                        c.mappings, pg.vma_start[row_proc == i], has_frame[row_proc == i]
                    )
                map_rows.extend({"snapshot_id": snapshot_id, "pid": c.pid, **m} for m in c.mappings)
            proc_rows.append(row)
        processes = pa.Table.from_pylist(proc_rows, schema=PROCESSES_SCHEMA)
        mappings = pa.Table.from_pylist(map_rows, schema=MAPPINGS_SCHEMA)
        self.timings.tables_s += time.perf_counter() - t
        return processes, mappings, pages


@dataclass
class _Pages:
    """The page rows of one snapshot, all processes together (raw PFNs still present)."""

    ok: list[ProcessCapture]
    counts: npt.NDArray[np.int64]
    row_proc: npt.NDArray[np.intp]
    addr: npt.NDArray[np.uint64]
    vma_start: npt.NDArray[np.uint64]
    content_hash: npt.NDArray[np.uint64]
    pfn: npt.NDArray[np.uint64]
    flags: npt.NDArray[np.uint16]
    has_frame: npt.NDArray[np.bool_]
    zero_pfn_extra: npt.NDArray[np.int64]


@dataclass
class _Taken:
    """A snapshot as read, before its tables are built."""

    snapshot_id: int
    caps: list[ProcessCapture]
    pages: _Pages
    time_s: float
    wall_time_ns: int
    duration_s: float
    ksm_sysfs: str
    host: dict[str, Any]
    cgroups: list[dict[str, Any]]
    cpu_s: float
    """The capture's CPU seconds for this snapshot."""
    cpu_end: float
    """``time.process_time()`` when the snapshot ended (the interval's CPU starts there)."""


def _concat(ok: list[ProcessCapture]) -> tuple[npt.NDArray[Any], ...]:
    if not ok:
        e64 = np.empty(0, np.uint64)
        return e64, e64, e64, e64, np.empty(0, np.uint16)
    return (
        np.concatenate([c.addr for c in ok]),
        np.concatenate([c.vma_start for c in ok]),
        np.concatenate([c.content_hash for c in ok]),
        np.concatenate([c.pfn for c in ok]),
        np.concatenate([c.flags for c in ok]),
    )


def _frame_lookup(
    kpage: KPageReader,
    pfn: npt.NDArray[np.uint64],
    flags: npt.NDArray[np.uint16],
    has_frame: npt.NDArray[np.bool_],
    needed: npt.NDArray[np.bool_],
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """``kpageflags`` and ``kpagecount`` of every row's frame (0 where none was read).

    Only frames that can differ are looked up (docs/capture.md §4.12): the map count of
    frames pagemap does not call exclusive, the flags of frames in mappings whose smaps
    allows KSM or huge pages. Only those rows' frames are sorted; every row whose frame is
    among them gets the result (a frame that is exclusive in one row and not in another,
    read at different moments, gets it in both).
    """
    kflags = np.zeros(len(pfn), np.uint64)
    kcount = np.zeros(len(pfn), np.uint64)
    shared_row = has_frame & ((flags & np.uint16(PageFlag.EXCLUSIVE)) == 0)
    special_row = has_frame & needed
    ask = shared_row | special_row
    if not ask.any():
        return kflags, kcount
    uniq, inverse = np.unique(pfn[ask], return_inverse=True)
    inverse = inverse.reshape(-1)
    shared = np.zeros(len(uniq), bool)  # mapped more than once by someone
    shared[inverse[shared_row[ask]]] = True
    special = np.zeros(len(uniq), bool)  # maybe KSM, THP or the huge zero page
    special[inverse[special_row[ask]]] = True
    kflags_u, kcount_u = kpage.lookup(uniq, count=shared, flags=special)
    rows = np.flatnonzero(has_frame)
    at = np.searchsorted(uniq, pfn[rows]).clip(max=len(uniq) - 1)
    hit = uniq[at] == pfn[rows]
    kflags[rows[hit]] = kflags_u[at[hit]]
    kcount[rows[hit]] = kcount_u[at[hit]]
    return kflags, kcount


def _bitflag(kflags: npt.NDArray[np.uint64], bit: int, flag: PageFlag) -> npt.NDArray[np.uint16]:
    return np.where(((kflags >> _U64(bit)) & _U64(1)) == 1, np.uint16(flag), np.uint16(0))


def _recount_present(
    mappings: list[dict[str, Any]],
    vma_start: npt.NDArray[np.uint64],
    present: npt.NDArray[np.bool_],
) -> None:
    starts, n = np.unique(vma_start[present], return_counts=True)
    per = dict(zip(starts.tolist(), n.tolist(), strict=True))
    for m in mappings:
        m["present_pages"] = per.get(m["start"], 0)
