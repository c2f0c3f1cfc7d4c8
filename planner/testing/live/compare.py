"""Score the planner against a live run: replay its capture, compare with the real ksmd.

:func:`compare_run` reads a run directory written by
:func:`~planner.testing.live.protocol.run_live`, replays the capture with the run's knobs
(:func:`planner.engine.replay`, every process registered by prctl, as the workload was) and
compares, over the same times:

``pages_sharing_steady``
    The mean of ``pages_sharing`` over the kernel's steady window (see
    :func:`find_steady_window`), model against kernel, both averaged over that same window
    as step functions of time. Relative error; the issue's target depends on the workload
    (:data:`SHARING_TARGETS`).
``scan_reaching_90``
    The first full scan at whose end ``pages_sharing`` reaches 90 % of its own steady mean
    (the kernel's for the kernel, the model's for the model). Difference in scans; target 0.
``ksmd_cpu_s_first_window`` / ``full_scans_first_window``
    ksmd's CPU seconds (``/proc/<ksmd>/stat`` utime+stime) and completed full scans over the
    first ``first_window_s`` seconds after ``run=1`` (the first minute). Relative; ±20 %.
``pages_scanned_per_full_scan`` / ``pages_skipped_per_full_scan``
    Over the full scans each side completed in the first window: the last factor of
    full scans = CPU / (ns per scanned page x pages scanned per full scan). Informative.
``pages_scanned_per_same_full_scans``
    Pages scanned per full scan over the same first full scans on both sides: under smart
    scan, unlike the factor above, it does not move with the number of scans. Informative.
``cow_ksm_per_s``
    Copy-on-write breaks of KSM pages per second over the observation (``cow_ksm`` of
    ``/proc/vmstat``) against the model's (``None`` while the replay does not model writes).
``rmap_items_total_steady`` / ``rmap_items_worst_process``
    ``ksm_rmap_items`` summed over the processes, and the worst per-process error, over the
    steady window (informative: no target).

Two alignments of the replay's clock with the kernel's: ``time`` (the default, what a user
does: ksmd starts at the first snapshot and each snapshot takes effect at its capture time)
and ``last`` (every snapshot is applied before the first full scan, i.e. ksmd starts on the
memory as the last snapshot saw it, as the real ksmd did).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

import numpy as np

from planner.engine.timing import HostLoad
from planner.errors import InputDataError, UsageProblem
from planner.testing.live.protocol import LiveRun

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence
    from pathlib import Path

    from planner.engine.api import EngineName
    from planner.engine.knobs import KsmKnobs
    from planner.engine.options import ReplayOptions
    from planner.engine.prepare import ReplayInput
    from planner.engine.result import ReplayResult
    from planner.engine.writes import CanaryRates
    from planner.trace.recording import ObservedTimeline

Alignment = Literal["time", "last"]
HostLoadChoice = Literal["recorded", "observed", "idle"] | float
ALIGNMENTS: Final = ("time", "last")

#: The issue's targets for steady pages_sharing (relative error), by workload.
SHARING_TARGETS: Final[dict[str, float]] = {"postgres": 0.03, "node": 0.05, "django": 0.05}
CHURN_SHARING_TARGET: Final = 0.10
CPU_TARGET: Final = 0.20
SCANS_TARGET: Final = 0.20
COW_TARGET: Final = 0.20


def sharing_target(workload: str) -> float:
    """The issue's relative target for steady ``pages_sharing`` of ``workload``."""
    if workload.startswith("churn"):
        return CHURN_SHARING_TARGET
    return SHARING_TARGETS.get(workload, 0.05)


@dataclass(frozen=True)
class CompareOptions:
    """How a run is replayed and scored."""

    alignment: Alignment = "time"
    engine: EngineName = "vectorized"
    steady_tolerance: float = 0.02
    """pages_sharing must stay within this fraction of its mean over the steady window."""
    steady_min_scans: int = 3
    first_window_s: float = 60.0
    min_window_s: float = 10.0
    """The compared window lasts at least this long (ending at the end of the observation),
    so that a short steady stretch of a workload that oscillates by design is averaged over
    several periods; ``SteadyWindow.steady`` still says whether the final stretch met the
    tolerance."""
    reach_fraction: float = 0.9
    grid_s: float = 0.5
    cost_profile: str | None = None
    """A cost profile file (``ksm-planner calibrate``); the shipped default when None."""
    writes: bool = True
    """Replay the writes the capture sampled between snapshots (``replay --no-writes``
    when False: the snapshots alone, as before the write model)."""
    growth: bool = True
    """Continue the growth the last snapshots show after the capture (``replay
    --no-growth`` when False: the set of pages frozen at the last snapshot)."""
    calibrate_writes: bool = False
    """Calibrate the write model with the run's own canary recording (``observe
    --ksm-pages``), as ``replay --observed`` does."""
    canary_cost: bool = True
    """With ``calibrate_writes`` and no ``cost_profile``: replay with ksmd's cost fitted to
    the canary, as ``replay --observed`` does (its choice among the canary's variants was
    made under that cost). False: the shipped profile of the traced CPU, so that only the
    canary's writes differ from a replay without it; ksmd then keeps the shipped profile's
    pace, and the breaks it makes are not the ones the fit weighed (a PostgreSQL run of
    2026-12-07: 216 a second scored against 255 in the fit, ``cow_ksm`` 284;
    docs/live-validation.md, "A canary's replay scored as replay --observed makes it")."""
    host_load: HostLoadChoice = "recorded"
    """The CPU load the replay gives ksmd (docs/busy-host.md): ``recorded`` (the trace's,
    else the load the harness measured during the capture: the same ``/proc/stat``
    figures a version-2 trace records), ``observed`` (the load the harness measured while
    the real ksmd ran: what the model gives when the load is known, apart from forecasting
    it), ``idle`` (a whole CPU, as before the busy-host model), or a number of other
    runnable tasks per CPU."""

    def __post_init__(self) -> None:
        if self.alignment not in ALIGNMENTS:
            raise UsageProblem(f"unknown alignment {self.alignment!r}", hint="use time or last")
        if not 0 < self.steady_tolerance < 1:
            raise UsageProblem("steady_tolerance must be in (0, 1)")
        if self.steady_min_scans < 1:
            raise UsageProblem("steady_min_scans must be at least 1")
        if not 0 < self.reach_fraction <= 1:
            raise UsageProblem("reach_fraction must be in (0, 1]")
        if self.min_window_s < 0:
            raise UsageProblem("min_window_s cannot be negative")
        if self.first_window_s <= 0 or self.grid_s <= 0:
            raise UsageProblem("first_window_s and grid_s must be positive")
        if isinstance(self.host_load, str):
            if self.host_load not in ("recorded", "observed", "idle"):
                raise UsageProblem(
                    f"unknown host load {self.host_load!r}",
                    hint="use recorded, observed, idle or a number of runnable tasks per CPU",
                )
        elif not (0 <= self.host_load < math.inf):
            raise UsageProblem("host_load must be a finite number >= 0")


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Metric:
    """One compared figure."""

    name: str
    unit: str
    kernel: float | None
    model: float | None
    error: float | None
    """``(model - kernel) / kernel`` (``relative``) or ``model - kernel`` (``difference``)."""
    error_kind: Literal["relative", "difference"]
    target: float | None
    """Allowed ``|error|`` (None: informative only)."""
    within: bool | None
    """``|error| <= target`` (None when there is no target or no value)."""
    note: str = ""

    def describe(self) -> str:
        """``name: model X vs kernel Y (+E%, target ±T%)`` for messages."""

        def num(v: float | None) -> str:
            if v is None:
                return "n/a"
            return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.3g}"

        if self.error is None:
            err = "no error: " + (self.note or "a value is missing")
        elif self.error_kind == "relative":
            err = f"{100 * self.error:+.1f}%"
        else:
            err = f"{self.error:+g} {self.unit}"
        tgt = ""
        if self.target is not None:
            tgt = (
                f", target ±{100 * self.target:g}%"
                if self.error_kind == "relative"
                else f", target ±{self.target:g} {self.unit}"
            )
        return f"{self.name}: model {num(self.model)} vs kernel {num(self.kernel)} ({err}{tgt})"


def metric(
    name: str,
    unit: str,
    kernel: float | None,
    model: float | None,
    *,
    kind: Literal["relative", "difference"] = "relative",
    target: float | None = None,
    note: str = "",
) -> Metric:
    """Build a :class:`Metric`, computing the error and whether it is within target."""
    err: float | None = None
    if kernel is not None and model is not None:
        if kind == "difference":
            err = model - kernel
        elif kernel != 0:
            err = (model - kernel) / kernel
        elif model == 0:
            err = 0.0
    within = None if target is None or err is None else abs(err) <= target + 1e-12
    if target is not None and err is None:
        within = False
    return Metric(name, unit, kernel, model, err, kind, target, within, note)


@dataclass(frozen=True)
class SteadyWindow:
    """The kernel's steady window: ``pages_sharing`` within ``tolerance`` of its mean."""

    start_s: float
    end_s: float
    full_scans: int
    """Full-scan boundaries (scan ends) inside the window."""
    steady: bool
    """False: no window of ``min_scans`` scans was steady; the last third is used instead."""
    spread: float | None
    """Largest ``|value - mean| / mean`` over the window's boundary samples."""
    tolerance: float


@dataclass(frozen=True)
class ProcessRow:
    """``ksm_stat`` of one process over the steady window, kernel and model."""

    pid: int
    comm: str
    kernel_rmap_items: float | None
    model_rmap_items: float | None
    rmap_error: float | None
    kernel_merging_pages: float | None
    model_merging_pages: float | None


@dataclass
class LiveComparison:
    """The prediction against the real ksmd for one run (JSON-ready with :meth:`to_dict`)."""

    workload: str
    run_dir: str
    alignment: str
    engine: str
    knobs: dict[str, Any]
    window: SteadyWindow
    metrics: dict[str, Metric]
    processes: list[ProcessRow]
    kernel: dict[str, Any]
    model: dict[str, Any]
    capture: dict[str, Any]
    host_load: dict[str, Any]
    replay_s: float
    notes: list[str] = field(default_factory=list)

    def failures(self) -> list[str]:
        """The metrics with a target that are not within it, described."""
        return [m.describe() for m in self.metrics.values() if m.within is False]

    def summary(self) -> str:
        """Several lines for people."""
        lines = [
            f"{self.workload} ({self.alignment} alignment): window {self.window.start_s:.1f}-"
            f"{self.window.end_s:.1f} s, {self.window.full_scans} full scans, "
            + ("steady" if self.window.steady else "NOT steady")
        ]
        lines += ["  " + m.describe() for m in self.metrics.values()]
        split = self.full_scans_split()
        if split is not None:
            lines.append(f"  {split}")
        obs = self.host_load.get("observe", {})
        if obs:
            lines.append(f"  host during the observation: {obs.get('text')}")
        for note in ("growth", "joins"):
            summary = (self.model.get(note) or {}).get("summary")
            if summary:
                lines.append(f"  model: {summary}")
        return "\n".join(lines)

    def full_scans_split(self) -> str | None:
        """The full scans' error as its three factors, for people: full scans = CPU / (ns
        per scanned page x pages scanned per full scan). None where one is missing."""
        names = (
            ("full_scans_first_window", "full scans"),
            ("ksmd_cpu_s_first_window", "CPU"),
            ("ksmd_ns_per_scanned_page", "ns per page"),
            ("pages_scanned_per_full_scan", "pages per full scan"),
        )
        errors = [self.metrics[n].error if n in self.metrics else None for n, _ in names]
        if any(e is None for e in errors):
            return None
        full, cpu, ns, pages = (f"{100 * e:+.1f} %" for e in errors if e is not None)
        return (
            f"full scans {full} = CPU {cpu} / ns per page {ns} / pages per full scan {pages} "
            "(errors of the factors of CPU / (ns per page x pages per full scan))"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (non-finite floats become None)."""
        d: dict[str, Any] = _finite(asdict(self))
        return d


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------- tables

#: The columns of the tables of docs/live-validation.md (``--table``).
TABLE_HEAD = (
    "| workload | run | kernel `pages_sharing` | model | error | scan to 90 % (kernel/model) "
    "| ksmd CPU s (kernel/model) | full scans in 60 s (kernel/model) "
    "| ksmd ns per scanned page (kernel/model) | `cow_ksm`/s (kernel/model) | host |\n"
    + "|---" * 11
    + "|"
)


def _signed(fraction: float | None, digits: int = 0) -> str:
    if fraction is None:
        return "n/a"
    text = f"{100 * fraction:+.{digits}f} %"
    return text.replace("-", "\N{MINUS SIGN}")


def _pair(m: dict[str, Any], fmt: str, error: bool = False) -> str:
    def one(v: Any) -> str:
        return "n/a" if v is None else format(v, fmt)

    text = f"{one(m['kernel'])} / {one(m['model'])}"
    return f"{text} ({_signed(m['error'])})" if error else text


def report_table(report: dict[str, Any], alignment: str = "time") -> str:
    """The runs of a ``tools/live_validate.py`` report (its ``runs``, each with its
    ``comparisons`` by alignment: :meth:`LiveComparison.to_dict`) as a table in the form of
    docs/live-validation.md's: errors ``(model - kernel) / kernel``, the host as busy share /
    mean runnable tasks / CPU seconds of processes not the run's, over the observation."""
    rows = [TABLE_HEAD]
    for r in report["runs"]:
        cmp = r.get("comparisons", {}).get(alignment)
        if cmp is None:
            continue
        m = cmp["metrics"]
        ps = m["pages_sharing_steady"]
        err = f"**{_signed(ps['error'], 1)}**"
        if not cmp["window"]["steady"]:
            err += " (not steady)"
        obs = cmp["host_load"].get("observe", {})
        host = (
            f"{100 * (obs.get('busy_fraction') or 0):.0f} % / "
            f"{obs.get('procs_running_mean') or 0:.1f} / {obs.get('other_cpu_s') or 0:.0f}"
        )
        cells = [
            r.get("workload", cmp["workload"]),
            str(r.get("run", "")),
            *_pair(ps, ",.0f").split(" / "),
            err,
            _pair(m["scan_reaching_90"], ".0f"),
            _pair(m["ksmd_cpu_s_first_window"], ".2f", error=True),
            _pair(m["full_scans_first_window"], ".0f", error=True),
            _pair(m["ksmd_ns_per_scanned_page"], ",.0f"),
            _pair(m["cow_ksm_per_s"], ",.0f"),
            host,
        ]
        rows.append("| " + " | ".join(cells) + " |")
    text = "\n".join(rows) + "\n"
    noise = _noise_line(report.get("summary") or {})
    return f"{text}\n{noise}\n" if noise else text


#: How docs/live-validation.md names the workloads in prose.
_PROSE_NAMES = {"postgres": "PostgreSQL", "node": "Node", "django": "Django"}


def _noise_line(summary: dict[str, Any]) -> str:
    """The kernel's own run-to-run spread per workload (``summary[w]["kernel_noise"]`` of a
    report: (max - min) / mean), as the sentence under the document's tables."""
    parts = []
    for figure, what in (
        ("pages_sharing_steady", "steady `pages_sharing`"),
        ("ksmd_cpu_s_first_window", "ksmd CPU seconds"),
        ("full_scans_end", "full scans by the end of the observation"),
    ):
        by = [
            f"{100 * spread:.1f} % {_PROSE_NAMES.get(w, w)}"
            for w, v in summary.items()
            if (spread := (v.get("kernel_noise", {}).get(figure) or {}).get("spread")) is not None
        ]
        if by:
            parts.append(f"{what} {', '.join(by)}")
    if not parts:
        return ""
    return (
        "**The truth's own noise** (kernel figures over the runs, (max − min) / mean): "
        + "; ".join(parts)
        + "."
    )


# ----------------------------------------------------------------------------- series tools


def step_mean(t: Sequence[float], v: Sequence[float], start: float, end: float) -> float | None:
    """Time-weighted mean over ``[start, end]`` of a step function (``v[i]`` from ``t[i]``).

    Before the first sample the function is undefined: the window is cut to start there.

    Examples
    --------
    >>> step_mean([0, 1, 3], [10, 20, 30], 0, 4)
    22.5
    >>> step_mean([0, 1, 3], [10, 20, 30], 2, 2)
    20.0
    """
    ta = np.asarray(t, dtype=float)
    va = np.asarray(v, dtype=float)
    if ta.size == 0:
        return None
    order = np.argsort(ta, kind="stable")
    ta, va = ta[order], va[order]
    start = max(start, float(ta[0]))
    if end < start:
        return None
    if end == start:
        i = int(np.searchsorted(ta, start, side="right")) - 1
        return float(va[i])
    edges = np.concatenate(([start], ta[(ta > start) & (ta < end)], [end]))
    idx = np.searchsorted(ta, edges[:-1], side="right") - 1
    widths = np.diff(edges)
    return float(np.sum(va[idx] * widths) / np.sum(widths))


def find_steady_window(
    t: Sequence[float],
    full_scans: Sequence[int],
    values: Sequence[float],
    *,
    end_s: float,
    tolerance: float = 0.02,
    min_scans: int = 3,
    min_window_s: float = 0.0,
) -> SteadyWindow:
    """The longest final window of boundary samples over which ``values`` stay steady.

    ``t``/``full_scans``/``values`` are the samples taken at full-scan boundaries. The window
    starts at a boundary, ends at ``end_s``, covers at least ``min_scans`` full scans, and
    every boundary value in it is within ``tolerance`` of the window's mean. Without such a
    window, the last third of ``[0, end_s]`` is returned with ``steady=False``. A steady
    window shorter than ``min_window_s`` is widened to it (``spread`` is then the widened
    window's).

    Examples
    --------
    >>> w = find_steady_window([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [0, 50, 99, 100, 101], end_s=6)
    >>> (w.start_s, w.full_scans, w.steady)
    (3, 3, True)
    """
    ta = list(t)
    fs = list(full_scans)
    va = [float(x) for x in values]

    def spread(i0: int) -> float:
        seg = va[i0:]
        mean = sum(seg) / len(seg)
        if mean == 0:
            return 0.0 if all(x == 0 for x in seg) else math.inf
        return max(abs(x - mean) for x in seg) / abs(mean)

    n = len(ta)
    start = None
    for i0 in range(n - 1, -1, -1):
        if fs[-1] - fs[i0] >= min_scans - 1 and n - i0 >= min_scans:
            start = i0
            break
    if start is None or spread(start) > tolerance:
        s = spread(start) if start is not None else None
        return SteadyWindow(
            start_s=round(end_s * 2 / 3, 3),
            end_s=end_s,
            full_scans=sum(1 for x in ta if x >= end_s * 2 / 3),
            steady=False,
            spread=s,
            tolerance=tolerance,
        )
    while start > 0 and spread(start - 1) <= tolerance:
        start -= 1
    if ta[start] > end_s - min_window_s:  # too short: widen to min_window_s
        start = next((i for i in range(n) if ta[i] >= end_s - min_window_s), start)
    return SteadyWindow(
        start_s=min(ta[start], max(0.0, end_s - min_window_s)),
        end_s=end_s,
        full_scans=n - start,
        steady=True,
        spread=round(spread(start), 5),
        tolerance=tolerance,
    )


def first_reaching(
    t: Sequence[float], scans: Sequence[int], values: Sequence[float], level: float | None
) -> tuple[int | None, float | None]:
    """The first ``(full scan, time)`` whose value is at least ``level`` (None if never)."""
    if level is None or level <= 0:
        return None, None
    for ti, si, vi in zip(t, scans, values, strict=True):
        if vi >= level:
            return int(si), float(ti)
    return None, None


# ----------------------------------------------------------------------------- the comparison


@dataclass(frozen=True)
class _KernelSeries:
    t: list[float]
    kind: list[str]
    rows: list[dict[str, Any]]

    def col(self, name: str) -> list[float]:
        return [float(r[name]) if r.get(name) is not None else math.nan for r in self.rows]

    def boundaries(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["kind"] == "boundary"]

    @property
    def end_s(self) -> float:
        return float(self.t[-1])


def _kernel_series(run: LiveRun) -> _KernelSeries:
    rows = sorted(run.kernel_samples, key=lambda r: r["t_s"])
    if not rows or rows[0]["kind"] != "start":
        raise InputDataError(f"{run.run_dir}: the kernel samples have no start row")
    return _KernelSeries([float(r["t_s"]) for r in rows], [r["kind"] for r in rows], rows)


@dataclass(frozen=True)
class ReplaySetup:
    """What :func:`compare_run` replays: the prepared capture, the run's knobs, the options
    (duration, load, cost profile) and the canary's rates when the writes are calibrated."""

    inp: ReplayInput
    knobs: KsmKnobs
    options: ReplayOptions
    canary: CanaryRates | None


def replay_setup(run: LiveRun, opts: CompareOptions, duration_s: float) -> ReplaySetup:
    """The replay of ``run``'s capture as :func:`compare_run` makes it (also used by
    :func:`planner.testing.live.pages.page_truth`, which needs the engine's own state)."""
    from planner.engine import CostProfile, KsmKnobs, ReplayOptions, prepare
    from planner.engine.cost import profile_for_trace
    from planner.engine.knobs import valid_hz
    from planner.trace.io import open_trace

    tr = open_trace(run.trace_dir)
    ht = tr.load_host()
    inp = prepare(ht)
    hz = ht.meta().get("hz")
    cfg = run.config
    knobs = KsmKnobs(
        pages_to_scan=int(cfg["pages_to_scan"]),
        sleep_ms=int(cfg["sleep_millisecs"]),
        smart_scan=bool(cfg["smart_scan"]),
        hz=valid_hz(hz),
    )
    # as replay does: the shipped profile of the traced CPU unless one is given
    cost = profile_for_trace(
        CostProfile.load(opts.cost_profile) if opts.cost_profile else None, tr.host_cpu
    )
    options = ReplayOptions(
        duration_s=duration_s,
        grid_s=opts.grid_s,
        cost=cost,
        host_load=_load(run, opts, inp),
        writes=opts.writes,
        growth=opts.growth,
    )
    if opts.alignment == "last":
        options = replace(options, snapshot_scans=(1,) * len(inp.snapshots))
    canary = None
    if opts.calibrate_writes:
        from planner.engine.costfit import fit_canary
        from planner.engine.writes import canary_rates
        from planner.trace.recording import read_observed

        obs = with_mapping_starts(read_observed(run.observe_dir), run.observe_dir)
        # the canary's rates as replay --observed chooses them, and its fitted cost where
        # the comparison was given no profile of its own (CompareOptions.canary_cost)
        fitted = fit_canary(inp, obs.counters, options, canary_rates(obs, inp.page_size))
        canary = fitted.canary
        if opts.canary_cost and opts.cost_profile is None:
            options = fitted.options
    return ReplaySetup(inp, knobs, options, canary)


def _with_cpu(obs: ObservedTimeline, ht: Any) -> ObservedTimeline:
    """The canary's rows with ``cpu_s`` where the recording has none: each process's CPU
    share over the capture of the same run (the trace's CPU times), times ``t_s``."""
    if obs.canary is None or "cpu_s" in obs.canary.columns:
        return obs
    p = ht.processes.select(["pid", "snapshot_id", "cpu_user_s", "cpu_system_s"]).to_pylist()
    times = dict(
        zip(
            ht.snapshots.column("snapshot_id").to_pylist(),
            ht.snapshots.column("time_s").to_pylist(),
            strict=True,
        )
    )
    seen: dict[int, list[tuple[float, float]]] = {}
    for r in p:
        if r["cpu_user_s"] is None or r["cpu_system_s"] is None:
            continue
        t = times.get(r["snapshot_id"])
        if t is not None:
            seen.setdefault(int(r["pid"]), []).append((t, r["cpu_user_s"] + r["cpu_system_s"]))
    share: dict[int, float] = {}
    for pid, pts in seen.items():
        pts.sort()
        if len(pts) >= 2 and pts[-1][0] > pts[0][0]:
            share[pid] = max(0.0, pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])
    cpu = obs.canary["pid"].map(lambda pid: share.get(int(pid), np.nan)) * obs.canary["t_s"]
    return replace(obs, canary=obs.canary.assign(cpu_s=cpu))


def with_mapping_starts(obs: ObservedTimeline, observe_dir: Path) -> ObservedTimeline:
    """A canary recording of an older planner (no ``vma_start`` in its page events) with
    each page's mapping start, and each process's CPU share, taken from the capture of the
    same run: the ``trace`` beside its (resolved) observe directory, same pids and addresses.
    Page classes (role, mapping kind, page number in the mapping) then reach another run's
    capture; without that trace the recording is returned as it is."""
    from pathlib import Path

    import pandas as pd

    from planner.trace.io import open_trace

    ev = obs.page_events
    if ev is None or "vma_start" in ev.columns:
        return obs
    trace_dir = Path(observe_dir).resolve().parent / "trace"
    if not trace_dir.is_dir():
        return obs
    ht = open_trace(trace_dir).load_host(pages=False)
    obs = _with_cpu(obs, ht)
    m = ht.mappings
    pid = np.asarray(m.column("pid").to_numpy(), np.int64)
    start = np.asarray(m.column("start").to_numpy(), np.uint64)
    end = np.asarray(m.column("end").to_numpy(), np.uint64)
    order = np.lexsort((start, pid))
    pid, start, end = pid[order], start[order], end[order]
    e_pid = ev["pid"].to_numpy(np.int64)
    e_addr = ev["page_addr"].to_numpy(np.uint64)
    # the last mapping of the page's pid that starts at or before it, and holds it
    combo = (pid.astype(np.uint64) << np.uint64(48)) | (start >> np.uint64(12))
    want = (e_pid.astype(np.uint64) << np.uint64(48)) | (e_addr >> np.uint64(12))
    pos = np.maximum(np.searchsorted(combo, want, side="right") - 1, 0)
    ok = (
        ((pos < pid.size) & (pid[pos] == e_pid) & (start[pos] <= e_addr) & (e_addr < end[pos]))
        if pid.size
        else np.zeros(e_pid.size, bool)
    )
    vma_start = pd.array(
        np.where(ok, start[pos] if pid.size else 0, 0).astype(np.uint64), dtype="UInt64"
    )
    vma_start[~ok] = pd.NA
    return replace(obs, page_events=ev.assign(vma_start=vma_start))


def _replay(run: LiveRun, opts: CompareOptions, duration_s: float) -> ReplayResult:
    from planner.engine import replay

    s = replay_setup(run, opts, duration_s)
    return replay(s.inp, knobs=s.knobs, options=s.options, engine=opts.engine, canary=s.canary)


def run_phase_load(run: LiveRun, phase: str = "capture") -> HostLoad | None:
    """The load the harness measured during a phase of the run (``run.json``: ``capture``
    or ``observe``), as a trace of version 2 records it: ``procs_running`` less the
    sampler, per CPU. The capture's is what a user's trace holds (``measured``); the
    observation's is the load ksmd really met, known only afterwards (``given``)."""
    cap = run.host_load.get(phase) or {}
    mean, cpus = cap.get("procs_running_mean"), cap.get("cpus")
    if mean is None or not cpus:
        return None
    x = max(0.0, float(mean) - 1.0) / int(cpus)
    return HostLoad(
        x,
        "measured" if phase == "capture" else "given",
        f"{x:.2f} other runnable tasks per CPU, measured by the live harness during the "
        f"{phase} ({cap.get('window_s', 0):.0f} s)",
        busy_share=cap.get("busy_fraction"),
    )


def run_capture_load(run: LiveRun) -> HostLoad | None:
    """:func:`run_phase_load` of the capture."""
    return run_phase_load(run, "capture")


def _load(run: LiveRun, opts: CompareOptions, inp: ReplayInput) -> HostLoad | None:
    """The load the replay assumes (None: the trace's own, see :class:`CompareOptions`)."""
    if opts.host_load == "idle":
        return HostLoad.idle("idle host (the comparison asked for it)")
    if opts.host_load == "observed":
        return run_phase_load(run, "observe") or HostLoad.idle("no load measured")
    if not isinstance(opts.host_load, str):
        return HostLoad.given(opts.host_load)
    if inp.meta.get("host_load") is not None:
        return None
    return run_capture_load(run) or HostLoad.idle("no load recorded by the trace or the run")


def _model_series(res: ReplayResult, name: str) -> tuple[list[float], list[float]]:
    pts = [(g.t_s, float(g.counters[name])) for g in res.grid] + [
        (s.t_s, float(s.counters[name])) for s in res.scans
    ]
    pts.sort(key=lambda p: p[0])
    return [p[0] for p in pts], [p[1] for p in pts]


def _model_cpu_at(res: ReplayResult, w: float) -> float:
    ts = [0.0] + [s.t_s for s in res.scans] + [res.duration_s]
    cum = [0.0]
    for s in res.scans:
        cum.append(cum[-1] + s.cpu_s)
    cum.append(res.cost.cpu_s)
    return float(np.interp(min(w, res.duration_s), ts, cum))


def model_cow_per_s(res: ReplayResult) -> float | None:
    """The model's copy-on-write breaks per second over its whole replay (which runs as long
    as the observation: the span of the kernel's ``cow_ksm`` figure), or None where the
    replay does not model writes (its ``cow_breaks_per_s`` is None).

    Not the result's ``cow_breaks_per_s``: that is the rate after its last snapshot (what
    the planner reports for the steady state); held against the kernel's rate over the
    whole minute, which includes the first scans' merges and their breaks, it compared two
    spans (PostgreSQL with its own canary: 243 against 301 /s, where the model's whole
    minute made 260 /s; docs/live-validation.md, "Copy-on-write over the same span").
    """
    if res.cow_breaks_per_s is None or res.duration_s <= 0:
        return None
    return res.cow_breaks / res.duration_s


def _observed_processes(run: LiveRun) -> Any:
    """The recording's per-process rows with ``t_rel`` (seconds since ``run=1``)."""
    import pandas as pd

    from planner.trace.recording import read_observed

    obs = read_observed(run.observe_dir)
    counters = obs.counters.reset_index()
    t0 = pd.Timestamp(run.t0_utc)
    rel = {
        int(s): (pd.Timestamp(tm) - t0).total_seconds()
        for s, tm in zip(counters["sample"], counters["time"], strict=True)
    }
    procs = obs.processes.copy()
    procs["t_rel"] = procs["sample"].map(rel)
    return procs


# ----------------------------------------------------------------------------- the steps
#
# compare_run is a sequence of steps, each returning a small record: the steady window and
# the counters averaged over it, the scan reaching 90 %, ksmd's cost over the first window,
# copy-on-write, the per-process rows; then the metrics and the kernel/model/capture
# summaries are built from those records.


class _Pair(NamedTuple):
    """One figure, the kernel's and the model's (None: not available)."""

    kernel: float | None
    model: float | None


#: Counters besides ``pages_sharing`` averaged over the steady window, kernel and model (in
#: the order of the kernel/model summaries).
_STEADY_COUNTERS: Final = ("pages_shared", "pages_unshared", "pages_volatile", "general_profit")


@dataclass(frozen=True)
class _Steady:
    """The kernel's steady window and the counters averaged over it."""

    window: SteadyWindow
    boundary_t_s: tuple[float, ...]
    """The kernel's samples at full-scan boundaries: time, full scans, pages_sharing."""
    boundary_full_scans: tuple[int, ...]
    boundary_pages_sharing: tuple[float, ...]
    pages_sharing: _Pair
    counters: dict[str, _Pair]
    """:data:`_STEADY_COUNTERS` by name."""
    note: str | None


def _steady(ks: _KernelSeries, res: ReplayResult, opts: CompareOptions) -> _Steady:
    """The steady window of the kernel's ``pages_sharing``; counters' means over it."""
    b = ks.boundaries()
    bt = tuple(float(r["t_s"]) for r in b)
    bfs = tuple(int(r["full_scans"]) for r in b)
    bps = tuple(float(r["pages_sharing"]) for r in b)
    window = find_steady_window(
        bt,
        bfs,
        bps,
        end_s=ks.end_s,
        tolerance=opts.steady_tolerance,
        min_scans=opts.steady_min_scans,
        min_window_s=opts.min_window_s,
    )
    note = None
    if not window.steady:
        note = (
            f"the kernel's pages_sharing was not steady (±{100 * opts.steady_tolerance:g}% over "
            f"{opts.steady_min_scans} full scans) by the end; the last third is compared"
        )

    def mean(name: str) -> _Pair:
        mt, mv = _model_series(res, name)
        return _Pair(
            step_mean(ks.t, ks.col(name), window.start_s, window.end_s),
            step_mean(mt, mv, window.start_s, window.end_s),
        )

    return _Steady(
        window=window,
        boundary_t_s=bt,
        boundary_full_scans=bfs,
        boundary_pages_sharing=bps,
        pages_sharing=mean("pages_sharing"),
        counters={c: mean(c) for c in _STEADY_COUNTERS},
        note=note,
    )


@dataclass(frozen=True)
class _Reaching:
    """The first full scan (and its time) reaching a fraction of the steady pages_sharing."""

    kernel_scan: int | None
    model_scan: int | None
    kernel_s: float | None
    model_s: float | None


def _reaching(steady: _Steady, res: ReplayResult, fraction: float) -> _Reaching:
    """Kernel and model, each against its own steady mean."""
    k_mean, m_mean = steady.pages_sharing
    k_scan, k_t = first_reaching(
        steady.boundary_t_s,
        steady.boundary_full_scans,
        steady.boundary_pages_sharing,
        None if k_mean is None else fraction * k_mean,
    )
    m_scan, m_t = first_reaching(
        [s.t_s for s in res.scans],
        [s.full_scans for s in res.scans],
        [float(s.counters["pages_sharing"]) for s in res.scans],
        None if m_mean is None else fraction * m_mean,
    )
    return _Reaching(kernel_scan=k_scan, model_scan=m_scan, kernel_s=k_t, model_s=m_t)


@dataclass(frozen=True)
class _FirstWindow:
    """ksmd's cost over the first ``window_s`` seconds after ``run=1``."""

    window_s: float
    cpu_s: _Pair
    kernel_cpu_s_schedstat: float | None
    """The kernel's CPU seconds by ``ksmd_runtime_ns`` (schedstat) instead of utime+stime."""
    kernel_full_scans: int
    model_full_scans: int
    pages_scanned: _Pair
    ns_per_scanned_page: _Pair
    scanned_per_full_scan: _Pair
    """Pages scanned per full scan. Smart scan never skips a KSM page: a merge the model
    keeps while the kernel lost it to a write the trace does not show is scanned every
    full scan in the model and skipped in the kernel, so fewer full scans fit the same
    CPU (full scans = CPU / (ns per page x pages per full scan))."""
    skipped_per_full_scan: _Pair
    scanned_per_same_scans: _Pair
    """Pages scanned per full scan over the same first full scans on both sides (as many
    as the side with fewer completed in the window). Smart scan processes a page that keeps
    failing to merge at fewer and fewer of its passes (docs/kernel-semantics.md §7), so a
    side that completed more full scans in the window averages more scans that skip:
    :attr:`scanned_per_full_scan` then differs though every scan agrees (a Django run in an
    emulated guest: -29.9 % over 10 kernel and 35 model scans, +2.5 % over the first 10
    of each)."""
    same_scans: int
    note: str | None


def _first_window(ks: _KernelSeries, res: ReplayResult, first_window_s: float) -> _FirstWindow:
    """CPU, full scans and scanned pages over the first window, kernel and model."""
    end_s = ks.end_s
    w = min(first_window_s, end_s)
    note = None
    if w < first_window_s:
        note = f"the observation lasted {end_s:.1f} s: the first window is cut to it"
    kcpu = ks.col("ksmd_cpu_s")
    k_cpu = float(np.interp(w, ks.t, kcpu) - kcpu[0]) if not math.isnan(kcpu[0]) else None
    k_runtime = ks.col("ksmd_runtime_ns")
    k_cpu_sched = (
        float(np.interp(w, ks.t, k_runtime) - k_runtime[0]) / 1e9
        if not math.isnan(k_runtime[0])
        else None
    )
    # full scans since the start row (run=2 resets the counter before it, so it is 0 there)
    k_full = max(int(r["full_scans"]) for r in ks.rows if r["t_s"] <= w) - int(
        ks.rows[0]["full_scans"]
    )
    m_cpu = _model_cpu_at(res, w)
    m_full = sum(1 for s in res.scans if s.t_s <= w)
    # pages handed to cmp_and_merge_page (pages_scanned never resets: a delta) and the cost
    # of each: what separates "ksmd got less CPU" from "each page cost more"
    kscan = ks.col("pages_scanned")
    k_scanned = float(np.interp(w, ks.t, kscan) - kscan[0]) if not math.isnan(kscan[0]) else None
    m_scanned = float(
        np.interp(
            w,
            [0.0] + [s.t_s for s in res.scans],
            [0.0] + [float(s.counters["pages_scanned"]) for s in res.scans],
        )
    )
    k_ns_page = 1e9 * k_cpu / k_scanned if k_cpu is not None and k_scanned else None
    m_ns_page = 1e9 * m_cpu / m_scanned if m_scanned else None
    scanned_per, skipped_per = _per_full_scan(ks, res, w)
    same_per, same_scans = _per_same_full_scans(ks, res, w)
    return _FirstWindow(
        window_s=w,
        cpu_s=_Pair(k_cpu, m_cpu),
        kernel_cpu_s_schedstat=k_cpu_sched,
        kernel_full_scans=k_full,
        model_full_scans=m_full,
        pages_scanned=_Pair(k_scanned, m_scanned),
        ns_per_scanned_page=_Pair(k_ns_page, m_ns_page),
        scanned_per_full_scan=scanned_per,
        skipped_per_full_scan=skipped_per,
        scanned_per_same_scans=same_per,
        same_scans=same_scans,
        note=note,
    )


def _per_full_scan(ks: _KernelSeries, res: ReplayResult, w: float) -> tuple[_Pair, _Pair]:
    """Pages scanned and skipped per full scan, over the full scans completed by ``w``: the
    counters at the last scan boundary before ``w`` over that boundary's scan count."""

    def kernel(name: str) -> float | None:
        start = ks.rows[0]
        ends = [r for r in ks.rows if r["kind"] == "boundary" and r["t_s"] <= w]
        if not ends or start.get(name) is None or ends[-1].get(name) is None:
            return None
        scans = int(ends[-1]["full_scans"]) - int(start["full_scans"])
        return (float(ends[-1][name]) - float(start[name])) / scans if scans > 0 else None

    def model(name: str) -> float | None:
        done = [s for s in res.scans if s.t_s <= w]
        if not done or name not in done[-1].counters:
            return None
        return float(done[-1].counters[name]) / len(done)

    return (
        _Pair(kernel("pages_scanned"), model("pages_scanned")),
        _Pair(kernel("pages_skipped"), model("pages_skipped")),
    )


def _per_same_full_scans(ks: _KernelSeries, res: ReplayResult, w: float) -> tuple[_Pair, int]:
    """Pages scanned per full scan over the first ``n`` full scans of each side, ``n`` the
    most that both completed by ``w`` and that a kernel scan boundary was read at (the
    boundaries are polled: two scans can end between two reads)."""
    start = int(ks.rows[0]["full_scans"])
    done = [s for s in res.scans if s.t_s <= w]
    at: dict[int, float] = {}
    for r in ks.rows:  # the first read after each scan's end
        if r["kind"] == "boundary" and r["t_s"] <= w and r.get("pages_scanned") is not None:
            at.setdefault(int(r["full_scans"]) - start, float(r["pages_scanned"]))
    first = ks.rows[0].get("pages_scanned")
    usable = [n for n in at if 0 < n <= len(done)]
    if not usable or first is None:
        return _Pair(None, None), 0
    n = max(usable)
    kernel = (at[n] - float(first)) / n
    return _Pair(kernel, float(done[n - 1].counters["pages_scanned"]) / n), n


@dataclass(frozen=True)
class _CopyOnWrite:
    """Copy-on-write breaks of KSM pages (``cow_ksm``) over the observation."""

    per_s: _Pair
    kernel_total: float | None


def _copy_on_write(ks: _KernelSeries, res: ReplayResult) -> _CopyOnWrite:
    """Both sides over the same span: the observation, from ksmd's start."""
    end_s = ks.end_s
    cow = ks.col("cow_ksm")
    k_cow = (cow[-1] - cow[0]) / end_s if not math.isnan(cow[0]) and end_s > 0 else None
    return _CopyOnWrite(
        per_s=_Pair(k_cow, model_cow_per_s(res)),
        kernel_total=None if math.isnan(cow[0]) else cow[-1] - cow[0],
    )


@dataclass(frozen=True)
class _Processes:
    """``ksm_stat`` per process over the steady window, and what is summed over them."""

    rows: tuple[ProcessRow, ...]
    smaps_ksm_kb_total: float | None
    kernel_only: tuple[int, ...]
    """Processes the kernel saw and the model did not."""
    model_only: tuple[int, ...]
    rmap_items_total: _Pair
    """``ksm_rmap_items`` summed over the processes both saw (None: there are none)."""
    worst: ProcessRow | None
    """The process, of those both saw, with the largest ``ksm_rmap_items`` error."""


def _kernel_processes(run: LiveRun, window: SteadyWindow) -> Any:
    """The recording's per-process means over the steady window (a DataFrame by pid)."""
    procs = _observed_processes(run)
    inside = procs[(procs["t_rel"] >= window.start_s) & (procs["t_rel"] <= window.end_s)]
    if inside.empty:
        last_t = procs["t_rel"][procs["t_rel"] <= window.end_s].max()
        inside = procs[procs["t_rel"] == last_t]
    return inside.groupby("pid").agg(
        rmap=("ksm_rmap_items", "mean"),
        merging=("ksm_merging_pages", "mean"),
        smaps_kb=("smaps_ksm_kb", "mean"),
        comm=("comm", "last"),
    )


def _model_processes(res: ReplayResult, window: SteadyWindow) -> dict[int, dict[str, float]]:
    """The replay's per-process sums over the steady window's scans (``n`` scans)."""
    recs = [s for s in res.scans if window.start_s <= s.t_s <= window.end_s]
    if not recs:
        before = [s for s in res.scans if s.t_s <= window.end_s]
        recs = before[-1:] if before else []
    model: dict[int, dict[str, float]] = {}
    for s in recs:
        for key, st in s.processes.items():
            d = model.setdefault(int(key), {"rmap": 0.0, "merging": 0.0, "n": 0.0})
            d["rmap"] += st["ksm_rmap_items"]
            d["merging"] += st["ksm_merging_pages"]
            d["n"] += 1
    return model


def _per_process(run: LiveRun, res: ReplayResult, window: SteadyWindow) -> _Processes:
    kern = _kernel_processes(run, window)
    model = _model_processes(res, window)
    rows: list[ProcessRow] = []
    kernel_pids = [int(p) for p in kern.index]
    for pid in sorted(set(kernel_pids) | set(model)):
        k = kern.loc[pid] if pid in kernel_pids else None
        m = model.get(pid)
        kr = float(k["rmap"]) if k is not None else None
        mr = m["rmap"] / m["n"] if m else None
        err = (mr - kr) / kr if kr and mr is not None else None
        rows.append(
            ProcessRow(
                pid=pid,
                comm=str(k["comm"]) if k is not None else run.processes_at_t0.get(str(pid), "?"),
                kernel_rmap_items=kr,
                model_rmap_items=mr,
                rmap_error=err,
                kernel_merging_pages=float(k["merging"]) if k is not None else None,
                model_merging_pages=m["merging"] / m["n"] if m else None,
            )
        )
    both = [p for p in rows if p.kernel_rmap_items is not None and p.model_rmap_items is not None]
    return _Processes(
        rows=tuple(rows),
        smaps_ksm_kb_total=float(kern["smaps_kb"].sum()) if not kern.empty else None,
        kernel_only=tuple(r.pid for r in rows if r.model_rmap_items is None),
        model_only=tuple(r.pid for r in rows if r.kernel_rmap_items is None),
        rmap_items_total=_Pair(
            sum(p.kernel_rmap_items or 0.0 for p in both) if both else None,
            sum(p.model_rmap_items or 0.0 for p in both) if both else None,
        ),
        worst=max(both, key=lambda p: abs(p.rmap_error or 0.0)) if both else None,
    )


def _metrics(
    workload: str,
    opts: CompareOptions,
    steady: _Steady,
    reach: _Reaching,
    first: _FirstWindow,
    cow: _CopyOnWrite,
    procs: _Processes,
) -> dict[str, Metric]:
    """The compared figures, by the names of the module's docstring."""
    pct = f"{100 * opts.reach_fraction:g}%"
    w = first.window_s
    worst = procs.worst
    return {
        "pages_sharing_steady": metric(
            "pages_sharing steady", "pages", *steady.pages_sharing, target=sharing_target(workload)
        ),
        "scan_reaching_90": metric(
            f"full scan reaching {pct} of steady pages_sharing",
            "scans",
            reach.kernel_scan,
            reach.model_scan,
            kind="difference",
            target=0,
        ),
        "time_reaching_90": metric(
            f"time to {pct} of steady pages_sharing",
            "s",
            reach.kernel_s,
            reach.model_s,
            kind="difference",
        ),
        "ksmd_cpu_s_first_window": metric(
            f"ksmd CPU s in the first {w:g} s", "s", *first.cpu_s, target=CPU_TARGET
        ),
        "full_scans_first_window": metric(
            f"full scans in the first {w:g} s",
            "scans",
            first.kernel_full_scans,
            first.model_full_scans,
            target=SCANS_TARGET,
        ),
        "pages_scanned_first_window": metric(
            f"pages_scanned in the first {w:g} s", "pages", *first.pages_scanned
        ),
        "ksmd_ns_per_scanned_page": metric(
            "ksmd CPU ns per scanned page (first window)", "ns", *first.ns_per_scanned_page
        ),
        "pages_scanned_per_full_scan": metric(
            "pages scanned per full scan (first window)", "pages", *first.scanned_per_full_scan
        ),
        "pages_skipped_per_full_scan": metric(
            "pages skipped per full scan (first window)", "pages", *first.skipped_per_full_scan
        ),
        "pages_scanned_per_same_full_scans": metric(
            f"pages scanned per full scan (the first {first.same_scans} of each)",
            "pages",
            *first.scanned_per_same_scans,
        ),
        "cow_ksm_per_s": metric(
            "copy-on-write breaks of KSM pages per s",
            "1/s",
            *cow.per_s,
            target=COW_TARGET,
            note=""
            if cow.per_s.model is not None
            else "the replay does not model writes (issue 10)",
        ),
        "pages_shared_steady": metric(
            "pages_shared steady", "pages", *steady.counters["pages_shared"]
        ),
        "general_profit_steady": metric(
            "general_profit steady", "bytes", *steady.counters["general_profit"]
        ),
        "rmap_items_total_steady": metric(
            "ksm_rmap_items summed over processes (steady)", "items", *procs.rmap_items_total
        ),
        "rmap_items_worst_process": metric(
            "ksm_rmap_items of the process with the largest error"
            + (f" (pid {worst.pid} {worst.comm})" if worst else ""),
            "items",
            worst.kernel_rmap_items if worst else None,
            worst.model_rmap_items if worst else None,
        ),
    }


def _kernel_summary(
    ks: _KernelSeries, steady: _Steady, first: _FirstWindow, cow: _CopyOnWrite, procs: _Processes
) -> dict[str, Any]:
    """:attr:`LiveComparison.kernel`: what the real ksmd did."""
    last = ks.rows[-1]
    return {
        "end_s": ks.end_s,
        "pages_sharing_steady": steady.pages_sharing.kernel,
        **{f"{c}_steady": steady.counters[c].kernel for c in _STEADY_COUNTERS},
        "pages_sharing_end": last["pages_sharing"],
        "full_scans_end": last["full_scans"],
        "ksmd_cpu_s_first_window": first.cpu_s.kernel,
        "ksmd_cpu_s_first_window_schedstat": first.kernel_cpu_s_schedstat,
        "cow_ksm_per_s": cow.per_s.kernel,
        "cow_ksm_total": cow.kernel_total,
        "smaps_ksm_kb_total": procs.smaps_ksm_kb_total,
        "processes_kernel_only": list(procs.kernel_only),
        "processes_model_only": list(procs.model_only),
    }


def _model_summary(res: ReplayResult, steady: _Steady) -> dict[str, Any]:
    """:attr:`LiveComparison.model`: what the replay predicted."""
    return {
        "duration_s": res.duration_s,
        "pages_sharing_steady": steady.pages_sharing.model,
        **{f"{c}_steady": steady.counters[c].model for c in _STEADY_COUNTERS},
        "pages_sharing_end": res.final_counters.get("pages_sharing"),
        "full_scans_end": res.cost.full_scans,
        "cpu_s": res.cost.cpu_s,
        "mean_scan_time_s": res.cost.mean_scan_time_s,
        "path_visits": res.cost.path_visits,
        "snapshot_first_scan": res.snapshot_first_scan,
        "snapshot_applied_s": res.snapshot_applied_s,
        "cost_profile": res.knobs.get("cost_profile"),
        "host_load": res.provenance.get("host_load"),
        "growth": res.provenance.get("growth"),
        "joins": res.provenance.get("joins"),
        "saved_frames_end": res.final_truth.saved_frames,
    }


def _capture_summary(run: LiveRun) -> dict[str, Any]:
    """:attr:`LiveComparison.capture`: the capture the replay started from."""
    return {
        "pages": run.capture.get("pages"),
        "processes": run.capture.get("processes"),
        "capture_s": run.capture.get("capture_s"),
        "pages_per_s": run.capture.get("pages_per_s"),
        "snapshots": run.capture.get("snapshots"),
        "capture_to_t0_s": run.capture_to_t0_s,
        "interval_s": run.config.get("interval_s"),
    }


def compare_run(
    run_dir: str | os.PathLike[str] | LiveRun, options: CompareOptions | None = None
) -> LiveComparison:
    """Replay a live run's capture and compare it with what the real ksmd did.

    Raises
    ------
    InputDataError
        The run directory is incomplete or unreadable.
    """
    opts = options or CompareOptions()
    run = run_dir if isinstance(run_dir, LiveRun) else LiveRun.read(run_dir)
    ks = _kernel_series(run)
    t_replay = time.perf_counter()
    res = _replay(run, opts, ks.end_s)
    replay_s = time.perf_counter() - t_replay
    workload = str(run.workload["name"])

    steady = _steady(ks, res, opts)
    reach = _reaching(steady, res, opts.reach_fraction)
    first = _first_window(ks, res, opts.first_window_s)
    cow = _copy_on_write(ks, res)
    procs = _per_process(run, res, steady.window)
    notes = [n for n in (steady.note, first.note) if n is not None]
    return LiveComparison(
        workload=workload,
        run_dir=run.run_dir,
        alignment=opts.alignment,
        engine=opts.engine,
        knobs={**run.knobs_applied},
        window=steady.window,
        metrics=_metrics(workload, opts, steady, reach, first, cow, procs),
        processes=list(procs.rows),
        kernel=_kernel_summary(ks, steady, first, cow, procs),
        model=_model_summary(res, steady),
        capture=_capture_summary(run),
        host_load=run.host_load,
        replay_s=round(replay_s, 2),
        notes=notes + list(run.notes),
    )


__all__ = [
    "ALIGNMENTS",
    "CPU_TARGET",
    "SCANS_TARGET",
    "SHARING_TARGETS",
    "CompareOptions",
    "LiveComparison",
    "Metric",
    "ProcessRow",
    "ReplaySetup",
    "SteadyWindow",
    "compare_run",
    "find_steady_window",
    "first_reaching",
    "metric",
    "model_cow_per_s",
    "replay_setup",
    "report_table",
    "sharing_target",
    "step_mean",
]
