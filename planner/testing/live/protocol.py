"""The live protocol: a workload under the real ksmd, captured right before ksmd starts.

:func:`run_live` measures the truth that :mod:`planner.testing.live.compare` holds the
planner to. Inside the project's KSM lease (:class:`~planner.kernel.sysfs.KsmLease`: the
host-wide lock, refused while any other process uses KSM, every knob saved, ``run=2`` then
``run=0``, the run's knobs applied, everything restored on exit) it

1. starts the workload under KSM with ksmd off, and its load outside KSM;
2. warms up for ``warmup_s`` (ksmd still off);
3. captures the workload with the library call behind ``ksm-planner capture``
   (``snapshots`` snapshots ``interval_s`` apart, the workload's roots and descendants);
4. starts ``observe`` (the project's recorder: counters, ``cow_ksm``, ksmd's CPU time,
   per-process ``ksm_stat`` and smaps ``KSM:`` every ``observe_interval_s``) and a
   full-scan watcher that reads the counters each time ``full_scans`` moves (polled every
   ``boundary_poll_s``) and once a second; then writes ``run=1``: that is t = 0;
5. observes for ``observe_s`` seconds, firing the workload's timed events;
6. stops the load, then the workload, by pid (nothing may be left), and leaves the lease.

The run directory holds ``run.json`` (:class:`LiveRun`), ``trace/`` (the capture; owner-only,
keyed hashes whose key is deleted with the work directory), ``observe/`` (the recording)
and ``logs/``. The host's load (busy CPUs, runnable tasks, load average, how much of it was
ours) is recorded for the warm-up, the capture and the observation.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from planner.capture.pace import DEFAULT_CPU_BUDGET
from planner.errors import KsmBusyError, UsageProblem
from planner.kernel.sysfs import KsmLease, KsmSysfs, ksm_users
from planner.provenance import HostInfo, tool_version
from planner.testing.live.host import (
    HostLoadMonitor,
    WorkloadError,
    comm_of,
    harness_cpu_s,
    process_cpu_s,
    schedstat_ns,
)
from planner.testing.live.workloads import Workload, make_workload

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Iterator

    from planner.testing.live.host import CpuSample
    from planner.testing.live.workloads import WorkloadParams

RUN_FILE: Final = "run.json"
TRACE_DIR: Final = "trace"
OBSERVE_DIR: Final = "observe"
FORMAT: Final = "ksm-planner-live-run"
VERSION: Final = 1
#: Counters read at every full-scan boundary (kernel names).
BOUNDARY_COUNTERS: Final = (
    "full_scans",
    "pages_shared",
    "pages_sharing",
    "pages_unshared",
    "pages_volatile",
    "pages_scanned",
    "pages_skipped",
    "general_profit",
    "ksm_zero_pages",
)

Priority = Literal["idle", "low", "normal"]


@dataclass(frozen=True)
class LiveConfig:
    """How a live run is done (the defaults are the issue's protocol)."""

    pages_to_scan: int = 1000
    sleep_millisecs: int = 20
    smart_scan: bool = True
    warmup_s: float = 30.0
    snapshots: int = 3
    interval_s: float = 2.0
    sample_ms: float | None = None
    """Sample what changes between snapshots every ``sample_ms`` (capture ``--sample-ms``)."""
    canary: bool = False
    """Record every page's KSM state while observing (``observe --ksm-pages``)."""
    capture_priority: Priority = "low"
    capture_cpu_budget: float | None = DEFAULT_CPU_BUDGET
    """CPUs the capture may use on average (capture ``--cpu-budget``, its default; ``None``:
    unbounded). It bounds how often the sampler can check each page."""
    observe_s: float = 60.0
    observe_interval_s: float = 1.0
    boundary_poll_s: float = 0.02
    lock_wait_s: float = 0.0
    """How long to wait for the KSM lock (another run holds it) before giving up."""

    def __post_init__(self) -> None:
        checks = [
            (self.pages_to_scan >= 1, "pages_to_scan must be at least 1"),
            (self.sleep_millisecs >= 0, "sleep_millisecs cannot be negative"),
            (self.warmup_s >= 0, "warmup_s cannot be negative"),
            (self.snapshots >= 1, "snapshots must be at least 1"),
            (self.interval_s >= 0, "interval_s cannot be negative"),
            (self.observe_s > 0, "observe_s must be positive"),
            (self.observe_interval_s >= 0.01, "observe_interval_s must be at least 0.01"),
            (0.001 <= self.boundary_poll_s <= 1, "boundary_poll_s must be 0.001..1"),
            (self.lock_wait_s >= 0, "lock_wait_s cannot be negative"),
            (
                self.capture_cpu_budget is None or self.capture_cpu_budget > 0,
                "capture_cpu_budget must be positive (None: unbounded)",
            ),
            (
                self.capture_priority in ("idle", "low", "normal"),
                "capture_priority: idle|low|normal",
            ),
        ]
        for ok, msg in checks:
            if not ok:
                raise UsageProblem(msg)

    def knobs(self) -> dict[str, int | str]:
        """The sysfs knobs of the run (the others at the kernel's defaults)."""
        return {
            "pages_to_scan": self.pages_to_scan,
            "sleep_millisecs": self.sleep_millisecs,
            "smart_scan": int(self.smart_scan),
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


# ----------------------------------------------------------------------------- ksmd watcher


def ksmd_cpu(pid: int | None) -> tuple[float | None, int | None]:
    """ksmd's CPU time: ``(utime+stime s from /proc/<pid>/stat, ns from schedstat)``."""
    if pid is None:
        return None, None
    return process_cpu_s(pid), schedstat_ns(pid)


def read_cow_ksm() -> int | None:
    """``cow_ksm`` of ``/proc/vmstat`` (None where the kernel lacks it)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/vmstat").read_text().splitlines():
            if line.startswith("cow_ksm "):
                return int(line.split()[1])
    return None


class ScanWatcher:
    """Reads the KSM counters at every full-scan boundary and once a second (a thread).

    Every row: ``t_s`` (seconds since :meth:`start_clock`), ``kind`` (``start``,
    ``boundary``, ``tick`` or ``end``), the counters of :data:`BOUNDARY_COUNTERS`,
    ``ksmd_cpu_s`` (utime+stime of ``/proc/<ksmd>/stat``), ``ksmd_runtime_ns`` (schedstat)
    and ``cow_ksm``. A boundary row is read within ``poll_s`` of ``full_scans`` moving.
    """

    def __init__(self, sysfs: KsmSysfs, ksmd_pid: int | None, *, poll_s: float) -> None:
        self.sysfs = sysfs
        self.ksmd_pid = ksmd_pid
        self.poll_s = poll_s
        self.rows: list[dict[str, Any]] = []
        self.t0: float | None = None
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scan-watcher", daemon=True)

    def read(self, kind: str) -> dict[str, Any]:
        """One row now."""
        t = time.monotonic()
        row: dict[str, Any] = {"t_s": 0.0 if self.t0 is None else t - self.t0, "kind": kind}
        for name in BOUNDARY_COUNTERS:
            try:
                row[name] = self.sysfs.read_int(name)
            except (OSError, ValueError):
                row[name] = None
        row["ksmd_cpu_s"], row["ksmd_runtime_ns"] = ksmd_cpu(self.ksmd_pid)
        row["cow_ksm"] = read_cow_ksm()
        return row

    def start_clock(self) -> dict[str, Any]:
        """Record the ``start`` row (right before ``run=1``) and set t = 0; start the thread."""
        row = self.read("start")
        self.t0 = time.monotonic()
        row["t_s"] = 0.0
        self.rows.append(row)
        self._thread.start()
        return row

    def _run(self) -> None:
        try:
            last = self.rows[-1]["full_scans"]
            next_tick = 1.0
            while not self._stop.wait(self.poll_s):
                assert self.t0 is not None
                try:
                    fs = self.sysfs.read_int("full_scans")
                except (OSError, ValueError):
                    continue
                now = time.monotonic() - self.t0
                if fs != last:
                    self.rows.append(self.read("boundary"))
                    last = fs
                elif now >= next_tick:
                    self.rows.append(self.read("tick"))
                if now >= next_tick:
                    next_tick = float(int(now) + 1)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def stop(self) -> None:
        """Stop the thread and record the ``end`` row."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.t0 is not None:
            self.rows.append(self.read("end"))
        if self.error is not None:
            raise self.error


# ----------------------------------------------------------------------------- the run


@dataclass
class LiveRun:
    """What :func:`run_live` measured (``run.json``; JSON-ready)."""

    run_dir: str
    workload: dict[str, Any]
    config: dict[str, Any]
    host: dict[str, Any]
    tool_version: str
    started_utc: str
    t0_utc: str
    """Wall time of ``run=1`` (t = 0 of the kernel samples)."""
    knobs_applied: dict[str, Any]
    ksmd_pid: int | None
    phases_s: dict[str, float]
    capture: dict[str, Any]
    capture_to_t0_s: float
    """From the end of the capture to ``run=1``."""
    kernel_samples: list[dict[str, Any]]
    events: list[dict[str, Any]]
    processes_at_t0: dict[str, str]
    """pid -> comm of the workload's processes when ksmd started."""
    load: dict[str, Any]
    host_load: dict[str, dict[str, Any]]
    stopped: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def trace_dir(self) -> Path:
        """The capture."""
        return Path(self.run_dir) / TRACE_DIR

    @property
    def observe_dir(self) -> Path:
        """The recording of ``observe``."""
        return Path(self.run_dir) / OBSERVE_DIR

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"format": FORMAT, "version": VERSION, **asdict(self)}

    @classmethod
    def read(cls, run_dir: str | os.PathLike[str]) -> LiveRun:
        """Read ``run.json`` of a run directory."""
        from planner.errors import InputDataError

        path = Path(run_dir) / RUN_FILE
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputDataError(
                f"cannot read {path}: {exc}", hint="give a live run directory"
            ) from exc
        if d.get("format") != FORMAT or d.get("version", 0) > VERSION:
            raise InputDataError(f"{path} is not a {FORMAT} v{VERSION} file")
        d.pop("format")
        d.pop("version")
        d["run_dir"] = str(Path(run_dir))
        return cls(**d)


def acquire_lease(
    knobs: dict[str, int | str], *, wait_s: float, say: Callable[[str], None]
) -> KsmLease:
    """Enter a :class:`KsmLease`, retrying for ``wait_s`` while KSM is busy."""
    deadline = time.monotonic() + wait_s
    while True:
        lease = KsmLease(knobs)
        try:
            lease.__enter__()
        except KsmBusyError as exc:
            if time.monotonic() >= deadline:
                raise
            say(f"waiting for KSM: {exc.one_line()}")
            time.sleep(min(10.0, max(0.5, deadline - time.monotonic())))
            continue
        return lease


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _copy_logs(work: Path, dest: Path) -> None:
    dest.mkdir(exist_ok=True)
    for p in work.glob("*.log"):
        with contextlib.suppress(OSError):
            shutil.copyfile(p, dest / p.name)


def run_live(
    workload: str,
    out_dir: str | os.PathLike[str],
    *,
    config: LiveConfig | None = None,
    params: WorkloadParams | None = None,
    say: Callable[[str], None] | None = None,
) -> LiveRun:
    """Run one workload under the real ksmd (see the module notes); write ``out_dir``.

    Parameters
    ----------
    workload
        A name of :data:`planner.testing.live.workloads.WORKLOADS`.
    out_dir
        The run directory to create (must not exist).
    config
        The protocol's settings (the issue's defaults when omitted).
    params
        The workload's parameters (its defaults when omitted).
    say
        Receives progress lines for people.

    Raises
    ------
    KsmBusyError
        The lease stayed busy for ``config.lock_wait_s``.
    WorkloadError
        The workload failed to start, died, or left processes behind.
    """
    cfg = config or LiveConfig()
    note = say or (lambda _m: None)
    out = Path(out_dir)
    if out.exists():
        raise UsageProblem(f"{out} already exists", hint="give a new run directory")
    make_workload(workload, out, params)  # unknown workload or wrong parameters: fail here
    with contextlib.suppress(KsmBusyError):  # busy now is waited for at the lease
        KsmLease(cfg.knobs()).preflight()  # no KSM, not root: fail before any work
    out.parent.mkdir(parents=True, exist_ok=True)
    out.mkdir(mode=0o700)
    work = Path(tempfile.mkdtemp(prefix="ksm-live-"))
    wl = make_workload(workload, work, params)
    sysfs = KsmSysfs()
    started = _utc_now()
    t_start = time.monotonic()
    phases: dict[str, float] = {}
    host_load: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    try:
        with _terminate_as_interrupt(), HostLoadMonitor() as mon:
            note(f"{workload}: preparing in {work}")
            wl.prepare()
            phases["prepare_s"] = time.monotonic() - t_start
            t_lock = time.monotonic()
            lease = acquire_lease(cfg.knobs(), wait_s=cfg.lock_wait_s, say=note)
            phases["lease_wait_s"] = time.monotonic() - t_lock
            try:
                run = _leased_run(wl, cfg, lease, sysfs, mon, out, work, phases, host_load, note)
            finally:
                lease.__exit__(None, None, None)
            left = wl.leftovers()
            if left:
                raise WorkloadError(f"processes left behind: {left}", hint="kill them by pid")
            others = ksm_users()
            if others:
                notes.append(f"KSM users left after the run: {others}")
    finally:
        _copy_logs(work, out / "logs")
        shutil.rmtree(work, ignore_errors=True)
    phases["total_s"] = time.monotonic() - t_start
    run.update_meta(started, phases, host_load, notes)
    live = run.result(str(out))
    (out / RUN_FILE).write_text(json.dumps(live.to_dict(), indent=1) + "\n")
    return live


@dataclass
class _Partial:
    """What the leased part of a run measured (finished into a :class:`LiveRun`)."""

    workload: Workload
    config: LiveConfig
    knobs_applied: dict[str, Any]
    ksmd_pid: int | None
    t0_wall: dt.datetime
    capture: dict[str, Any]
    capture_to_t0_s: float
    samples: list[dict[str, Any]]
    events: list[dict[str, Any]]
    processes: dict[str, str]
    load: dict[str, Any]
    stopped: dict[str, Any]
    started: dt.datetime | None = None
    phases: dict[str, float] = field(default_factory=dict)
    host_load: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def update_meta(
        self,
        started: dt.datetime,
        phases: dict[str, float],
        host_load: dict[str, dict[str, Any]],
        notes: list[str],
    ) -> None:
        self.started = started
        self.phases = {k: round(v, 2) for k, v in phases.items()}
        self.host_load = host_load
        self.notes = notes

    def result(self, run_dir: str) -> LiveRun:
        assert self.started is not None
        return LiveRun(
            run_dir=run_dir,
            workload=self.workload.describe(),
            config=self.config.to_dict(),
            host=HostInfo.collect().to_dict(),
            tool_version=tool_version(),
            started_utc=self.started.isoformat(),
            t0_utc=self.t0_wall.isoformat(),
            knobs_applied=self.knobs_applied,
            ksmd_pid=self.ksmd_pid,
            phases_s=self.phases,
            capture=self.capture,
            capture_to_t0_s=round(self.capture_to_t0_s, 3),
            kernel_samples=self.samples,
            events=self.events,
            processes_at_t0=self.processes,
            load=self.load,
            host_load=self.host_load,
            stopped=self.stopped,
            notes=self.notes,
        )


class _Cpu:
    """CPU seconds of our parts, read at phase marks."""

    def __init__(self, wl: Workload, ksmd_pid: int | None) -> None:
        self.wl = wl
        self.ksmd_pid = ksmd_pid

    def now(self) -> dict[str, float]:
        d = dict(self.wl.cpu_s())
        d["ksmd"] = (process_cpu_s(self.ksmd_pid) or 0.0) if self.ksmd_pid else 0.0
        d["harness"] = harness_cpu_s()
        return d


def _phase_load(
    mon: HostLoadMonitor,
    a: tuple[CpuSample, dict[str, float]],
    b: tuple[CpuSample, dict[str, float]],
) -> dict[str, Any]:
    ours = {k: max(0.0, b[1].get(k, 0.0) - a[1].get(k, 0.0)) for k in b[1]}
    load = mon.summary(a[0], b[0], ours)
    return {**load.to_dict(), "text": load.describe()}


def _leased_run(
    wl: Workload,
    cfg: LiveConfig,
    lease: KsmLease,
    sysfs: KsmSysfs,
    mon: HostLoadMonitor,
    out: Path,
    work: Path,
    phases: dict[str, float],
    host_load: dict[str, dict[str, Any]],
    note: Callable[[str], None],
) -> _Partial:
    from planner.capture import CaptureOptions, capture
    from planner.kernel.calibrate import ksmd_pid as find_ksmd
    from planner.kernel.observe import observe

    ksmd = find_ksmd()
    cpu = _Cpu(wl, ksmd)
    t = time.monotonic()
    stopped: dict[str, Any] = {}
    try:
        note(f"{wl.describe()['name']}: starting under KSM (ksmd off)")
        wl.start()
        wl.start_load()
        phases["start_s"] = time.monotonic() - t
        warm0 = (mon.mark(), cpu.now())
        note(f"warming up for {cfg.warmup_s:g} s")
        _sleep_checked(wl, cfg.warmup_s)
        cap0 = (mon.mark(), cpu.now())
        host_load["warmup"] = _phase_load(mon, warm0, cap0)
        note(f"warm-up load: {host_load['warmup']['text']}")
        note(f"capturing {cfg.snapshots} snapshots {cfg.interval_s:g} s apart")
        res = capture(
            CaptureOptions(
                out=out / TRACE_DIR,
                pids=wl.capture_pids(),
                children=True,
                snapshots=cfg.snapshots,
                interval_s=cfg.interval_s,
                sample_ms=cfg.sample_ms,
                key_file=work / "capture.key",
                labels={"workload": str(wl.describe()["name"]), "harness": "live"},
                priority=cfg.capture_priority,
                cpu_budget=cfg.capture_cpu_budget,
            )
        )
        cap1 = (mon.mark(), cpu.now())
        t_cap_end = time.monotonic()
        host_load["capture"] = _phase_load(mon, cap0, cap1)
        phases["warmup_s"] = cap0[0].t_mono - warm0[0].t_mono
        phases["capture_s"] = cap1[0].t_mono - cap0[0].t_mono
        note(f"captured {res.pages} page rows in {phases['capture_s']:.1f} s; load: "
             f"{host_load['capture']['text']}")  # fmt: skip
        wl.check()

        # ---- observe, then run=1 (t = 0) ---------------------------------------------------
        stop_obs = threading.Event()
        obs_error: list[BaseException] = []

        def record() -> None:
            try:
                observe(
                    out / OBSERVE_DIR,
                    interval_s=cfg.observe_interval_s,
                    duration_s=cfg.observe_s + 5.0,
                    all_processes=True,
                    smaps=True,
                    ksm_pages=cfg.canary,
                    stop=stop_obs,
                )
            except BaseException as exc:
                obs_error.append(exc)

        obs_thread = threading.Thread(target=record, name="observe", daemon=True)
        watcher = ScanWatcher(sysfs, ksmd, poll_s=cfg.boundary_poll_s)
        obs_thread.start()
        time.sleep(0.3)  # the recording's first sample, before ksmd starts
        processes = {str(p): comm_of(p) for p in sorted(wl.server.refresh())} if wl.server else {}
        obs0 = (mon.mark(), cpu.now())
        watcher.start_clock()
        t0_wall = _utc_now()
        lease.start()  # run=1: t = 0
        t0 = time.monotonic()
        note(f"run=1 ({cfg.pages_to_scan} pages / {cfg.sleep_millisecs} ms); observing for "
             f"{cfg.observe_s:g} s")  # fmt: skip
        events: list[dict[str, Any]] = []
        pending = list(wl.events())
        try:
            while (now := time.monotonic() - t0) < cfg.observe_s:
                while pending and pending[0][0] <= now:
                    at, name = pending.pop(0)
                    wl.fire(name)
                    events.append({"t_s": round(time.monotonic() - t0, 3), "planned_s": at,
                                   "event": name})  # fmt: skip
                wl.check()
                if obs_error:
                    raise obs_error[0]
                time.sleep(min(0.1, max(0.0, cfg.observe_s - now)))
        finally:
            watcher.stop()
            obs1 = (mon.mark(), cpu.now())
            stop_obs.set()
            obs_thread.join(timeout=60)
        if obs_error:
            raise obs_error[0]
        host_load["observe"] = _phase_load(mon, obs0, obs1)
        phases["observe_s"] = obs1[0].t_mono - obs0[0].t_mono
        note(f"observation load: {host_load['observe']['text']}")
    finally:
        t_stop = time.monotonic()
        try:
            stopped = wl.stop()
        finally:
            phases["stop_s"] = time.monotonic() - t_stop
    load_summary = wl.load_summary()  # read after the stop: the generators report then
    return _Partial(
        workload=wl,
        config=cfg,
        knobs_applied={k: v for k, v in lease.applied.items()},
        ksmd_pid=ksmd,
        t0_wall=t0_wall,
        capture=res.to_dict(),
        capture_to_t0_s=t0 - t_cap_end,
        samples=watcher.rows,
        events=events,
        processes=processes,
        load=load_summary,
        stopped=stopped,
    )


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM/SIGHUP raise KeyboardInterrupt for the whole run (main thread only), so that
    every ``finally`` stops what was started -- also before and after the lease, which
    installs such a handler only while it is held."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            old[sig] = signal.signal(sig, interrupt)
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _sleep_checked(wl: Workload, seconds: float) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        wl.check()
        time.sleep(min(1.0, left))


__all__ = [
    "BOUNDARY_COUNTERS",
    "LiveConfig",
    "LiveRun",
    "ScanWatcher",
    "acquire_lease",
    "run_live",
]
