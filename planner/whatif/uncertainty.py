"""Intervals that mean what they say: every known source of uncertainty of a capacity figure.

A capacity gain depends on four things the planner does not know exactly; each becomes a
distribution of draws, and the interval of a figure is the spread of the figure over the
draws (the method is docs/capacity.md, "Intervals"):

* **sampling** -- which workers happened to be traced: the bootstrap replicates of the
  growth fit (:mod:`planner.whatif.extrapolate`);
* **model** -- how far the model's saving is from what the real KSM merges: the ratio of
  the observed to the predicted ``pages_sharing`` of a canary when one is given
  (:class:`~planner.whatif.observed.ObservedComparison`, every sample of the second half of
  the recording), otherwise the errors the project measured on live workloads and publishes
  in docs/live-validation.md (:data:`PUBLISHED`: the runs of the traced workload when its
  ``workload`` label names one, else every run of every workload);
* **configuration** -- the inputs that were assumed rather than measured or given (the
  memory a worker needs outside the trace, the host's CPUs:
  :class:`~planner.whatif.footprint.CapacityPlan`), each drawn across its documented range;
* **time** -- the traced window: the ideal saving at each snapshot relative to the last one
  (which the replay holds as its steady state).

The point estimate takes every source at its centre: the model's saving times the median
measured ratio (a canary's, or the published runs'), the inputs at their values, the last
snapshot. The combined interval draws all four together; one interval per source (the
others at their centre) says which dominates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Final, Literal

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from planner.whatif.extrapolate import GrowthFit
    from planner.whatif.footprint import CapacityPlan
    from planner.whatif.observed import ObservedComparison

Source = Literal["sampling", "model", "configuration", "time"]

#: Fewest draws per source (more when the fit has more bootstrap replicates): enough for a
#: stable 90 % percentile interval of a few workers' width.
MIN_DRAWS = 200
SOURCES: tuple[Source, ...] = ("sampling", "model", "configuration", "time")


class _CostErrorRanges:
    """The ranges of a set of runs' errors of ksmd's cost (both fields are the dataclass's
    that uses this)."""

    ksmd_cpu_errors: tuple[float, ...]
    full_scan_errors: tuple[float, ...]

    @property
    def ksmd_cpu_error_range(self) -> tuple[float, float]:
        """The smallest and largest error of the model's ksmd CPU seconds."""
        return min(self.ksmd_cpu_errors), max(self.ksmd_cpu_errors)

    @property
    def full_scan_error_range(self) -> tuple[float, float]:
        """The smallest and largest error of the model's number of full scans."""
        return min(self.full_scan_errors), max(self.full_scan_errors)


@dataclass(frozen=True)
class PublishedRuns(_CostErrorRanges):
    """The live-validation figures of one workload (docs/live-validation.md, "The published
    errors").

    Errors are the model's against the kernel's, ``(model - kernel) / kernel``, one per run.
    """

    pages_sharing_errors: tuple[float, ...]  # steady pages_sharing
    ksmd_cpu_errors: tuple[float, ...]  # ksmd CPU seconds over the first minute
    full_scan_errors: tuple[float, ...]  # full scans completed in the first minute
    truth_spread: float  # the kernel's own run-to-run spread of pages_sharing, (max-min)/mean


# (the JVM's runs, in the document's order: one tuple per metric)
_JVM_SHARING = (0.131, 0.151, 0.087, 0.053, 0.207, 0.052, 0.384, 0.036, 0.044, 0.107, -0.088,
                0.447, 0.195)  # fmt: skip
_JVM_CPU = (-0.19, -0.21, -0.19, -0.13, -0.16, -0.18, -0.16, -0.17, -0.13, -0.19, -0.23, -0.14,
            -0.27)  # fmt: skip
_JVM_SCANS = (0.0, -0.09, -0.23, 0.0, -0.05, -0.23, -0.18, 0.10, 0.18, -0.24, 0.16, -0.38,
              -0.45)  # fmt: skip

#: docs/live-validation.md, "The published errors": the planner as it is, PostgreSQL,
#: churn and Django run three times each, Node five times and the JVM services thirteen (some
#: recorded with a canary, scored without it) as a user would run it (sampled captures, no
#: canary, the shipped cost profile). ``tests/whatif/test_uncertainty.py``
#: checks these against the document's table; ``tools/live_validate.py --table`` prints a
#: new table from new runs.
_R = PublishedRuns
PUBLISHED: Mapping[str, PublishedRuns] = {
    "postgres": _R((0.102, 0.095, 0.096), (0.45, 0.34, 0.24), (-0.23, -0.27, -0.06), 0.003),
    "node": _R(
        (-0.197, -0.238, -0.083, -0.232, -0.284),
        (0.14, 0.21, -0.04, -0.08, -0.14),
        (-0.05, -0.06, -0.17, 0.01, 0.06),
        0.474,
    ),
    "churn": _R((0.368, 0.362, 0.368), (-0.07, -0.2, -0.19), (-0.12, -0.12, -0.12), 0.004),
    "django": _R((0.198, 0.214, 0.236), (-0.0, -0.15, -0.01), (-0.15, -0.08, -0.09), 0.017),
    "jvm": _R(_JVM_SHARING, _JVM_CPU, _JVM_SCANS, 0.127),
}

#: docs/live-validation.md, "Writes in step": steady ``pages_sharing``
#: errors of the live runs kept in ``traces/softdirty/``, captured where the kernel tracks
#: soft-dirty (a Debian 6.12 guest; section "Soft-dirty on a real kernel"), so that the
#: writes that leave a page's bytes unchanged -- the main cause of :data:`PUBLISHED`'s
#: errors -- are in the trace. A trace whose capture tracked writes with soft-dirty is held
#: to these runs, not to :data:`PUBLISHED`'s. ``tests/whatif/test_uncertainty.py`` checks
#: them against the document's table.
PUBLISHED_SOFT_DIRTY: Mapping[str, tuple[float, ...]] = {
    "churn-rewrite": (0.004, 0.032, 0.052),
    "postgres": (0.002, 0.006, -0.001, 0.004),
    "django": (0.056, 0.010, 0.026),
}


@dataclass(frozen=True)
class CanaryFitRuns(_CostErrorRanges):
    """What ksmd's cost fitted to a canary predicts on *another* run of the workload
    (docs/busy-host.md, "A canary's fitted cost on another run"): the fit that
    ``replay``/``whatif --observed`` make (:func:`planner.engine.costfit.fit_canary`), made
    on one run's canary and scored on another run's real ksmd, at the same knobs and across
    a knob change. Errors are ``(model - kernel) / kernel``, one per crossing."""

    ksmd_cpu_errors: tuple[float, ...]  # ksmd CPU seconds over the first minute
    full_scan_errors: tuple[float, ...]  # full scans completed in the first minute
    workloads: tuple[str, ...]  # as a review names them


#: docs/busy-host.md, "A canary's fitted cost on another run": PostgreSQL's two crossings
#: and churn's four (two on stored runs, two on fresh ones, each across a knob change), in
#: the document's order. A review whose cost was fitted to a canary quotes these instead of
#: :data:`PUBLISHED`'s, which are the shipped profile's. ``tests/whatif/test_uncertainty.py``
#: checks them against the document's tables.
CANARY_FIT = CanaryFitRuns(
    ksmd_cpu_errors=(0.012, 0.034, 0.045, 0.060, 0.195, -0.129),
    full_scan_errors=(-0.003, 0.055, 0.0, 0.047, 0.0, 0.071),
    workloads=("PostgreSQL", "churn"),
)


def published_workload(labels: Mapping[str, str], among: Iterable[str] = PUBLISHED) -> str | None:
    """The published workload (of ``among``) a trace's ``workload`` label names
    (``django-gunicorn``: ``django``; the longest name that fits: ``churn-rewrite-b`` is
    ``churn-rewrite`` where both it and ``churn`` are published), or ``None``."""
    label = (labels.get("workload") or "").lower()
    names = sorted(among, key=len, reverse=True)
    return next((w for w in names if label == w or label.startswith(f"{w}-")), None)


def published_runs(labels: Mapping[str, str]) -> tuple[str, PublishedRuns] | None:
    """The published live-validation runs of a trace's workload, if its label names one."""
    name = published_workload(labels)
    return (name, PUBLISHED[name]) if name is not None else None


@dataclass(frozen=True)
class ModelError:
    """How far the model's saving is from what the real KSM merges, as the evidence says.

    ``ratios`` are observed / predicted ``pages_sharing``: per sample of a canary, or per
    published live-validation run. ``noise`` is the relative run-to-run spread of the real
    kernel's own figure, added to the draws (one canary is one run).
    """

    __json_properties__: ClassVar[tuple[str, ...]] = ("point", "low", "high")

    source: Literal["canary", "published"]
    basis: str
    ratios: tuple[float, ...]
    noise: float

    @property
    def point(self) -> float:
        """The median ratio: the factor the point estimate applies to the model's saving."""
        return float(np.median(self.ratios)) if self.ratios else 1.0

    @property
    def low(self) -> float:
        """The smallest ratio, less half the kernel's own spread."""
        return min(self.ratios, default=1.0) * (1.0 - self.noise / 2.0)

    @property
    def high(self) -> float:
        """The largest ratio, plus half the kernel's own spread."""
        return max(self.ratios, default=1.0) * (1.0 + self.noise / 2.0)

    def draws(self, rng: np.random.Generator, n: int) -> list[float]:
        """``n`` ratios: resampled from the evidence, each moved by the kernel's own noise."""
        if not self.ratios:
            return [1.0] * n
        picks = rng.choice(np.asarray(self.ratios, dtype=float), size=n, replace=True)
        wobble = rng.uniform(-self.noise / 2.0, self.noise / 2.0, size=n)
        return [float(v) for v in picks * (1.0 + wobble)]


#: Observed over predicted ``pages_sharing`` (a canary's median, :func:`canary_error`)
#: outside which the canary says the model does not explain how the workload merges. With
#: their canaries' writes the PostgreSQL, churn and Django runs of docs/live-validation.md
#: came within 0.98-1.02; the Node.js and JVM runs at 2.1-2.3 before a canary's joins were
#: continued, at 1.35 (Node) and 0.80-1.02 (JVM) once the pages a canary never saw merged
#: left, at 0.82-0.87 (Node) and 0.78-0.86 (JVM) once the growth was the canary's and the
#: merges it saw lost and got back were replayed (docs/live-validation.md, "Growth held to the
#: canary": the model merged more than the kernel in the middle of the minute), and at
#: 0.94-0.98 (Node) and 0.89 (JVM) since the pages it saw merged at new addresses come when
#: they merged ("Pages at new addresses merge when the canary saw them merge"); a kernel's
#: own run-to-run spread is at most 47 % (Node, :data:`PUBLISHED`), half of it either way.
CANARY_RATIO_BAND: Final = (0.8, 1.25)


def canary_warning(error: ModelError) -> str | None:
    """A warning where a canary's measured error is outside :data:`CANARY_RATIO_BAND`
    (None otherwise, and for the published runs' error)."""
    low, high = CANARY_RATIO_BAND
    if error.source != "canary" or low <= error.point <= high:
        return None
    return (
        f"the canary merged {error.point:.2f} times what the replay of its knobs predicted "
        "(observed / predicted pages_sharing, the median over the second half of the "
        "recording): the model does not explain how this workload merges, and every figure "
        "here is the replay scaled by that ratio, at the other knob settings too. On the "
        "runs of docs/live-validation.md Node.js canaries gave 0.94-0.98 and JVM canaries "
        "0.89: on the JVM the model still merges more than the kernel in the middle of the "
        "minute (traced pages the canary saw merged late are merged sooner)"
    )


def published_error(labels: Mapping[str, str], *, soft_dirty: bool = False) -> ModelError:
    """The model error the project publishes for a trace's workload (or for all of them).

    ``soft_dirty``: the trace's capture tracked writes with soft-dirty, so it is held to the
    runs captured that way (:data:`PUBLISHED_SOFT_DIRTY`: its workload's, else all of them),
    with the kernel's own spread of its workload (else the widest published one).
    """
    if soft_dirty:
        return _soft_dirty_error(labels)
    name = published_workload(labels)
    runs = [PUBLISHED[name]] if name is not None else list(PUBLISHED.values())
    ratios = tuple(1.0 / (1.0 + e) for r in runs for e in r.pages_sharing_errors)
    noise = max(r.truth_spread for r in runs)
    what = (
        f"the {len(ratios)} published live-validation runs of the {name} workload"
        if name is not None
        else f"the {len(ratios)} published live-validation runs of {len(runs)} workloads "
        "(no canary, and the trace's workload label names none of them)"
    )
    return ModelError("published", f"docs/live-validation.md: {what}", ratios, noise)


def _soft_dirty_error(labels: Mapping[str, str]) -> ModelError:
    name = published_workload(labels, PUBLISHED_SOFT_DIRTY)
    errors = PUBLISHED_SOFT_DIRTY[name] if name is not None else [
        e for runs in PUBLISHED_SOFT_DIRTY.values() for e in runs
    ]  # fmt: skip
    ratios = tuple(1.0 / (1.0 + e) for e in errors)
    # the kernel's own spread of the workload where its soft-dirty runs are known, else the
    # widest of any workload: other workloads' runs say less about this one
    truth = published_workload(labels) if name is not None else None
    noise = (
        PUBLISHED[truth].truth_spread
        if truth is not None
        else max(r.truth_spread for r in PUBLISHED.values())
    )
    which = f"the {name} workload" if name is not None else (
        f"{len(PUBLISHED_SOFT_DIRTY)} workloads (the trace's workload label names none of them)"
    )  # fmt: skip
    what = (
        f"the {len(ratios)} live-validation run{'s' if len(ratios) != 1 else ''} of {which} "
        "captured with soft-dirty, as this trace was (section 'Soft-dirty: rows written at every "
        "pass')"
    )
    return ModelError("published", f"docs/live-validation.md: {what}", ratios, noise)


def canary_error(obs: ObservedComparison, labels: Mapping[str, str]) -> ModelError | None:
    """The model error a canary measured: observed / predicted ``pages_sharing`` at every
    sample of the second half of the recording where both are positive.

    ``None`` when there is no such sample, or when no scenario ran the canary's knobs (the
    comparison is then with other knobs: a difference of knobs, not the model's error; the
    published runs stand in, and a warning says so).
    """
    if not obs.knobs_match:
        return None
    end = obs.t_s[-1] if obs.t_s else 0.0
    ratios = tuple(
        float(o) / float(p)
        for t, o, p in zip(
            obs.t_s, obs.observed.pages_sharing, obs.predicted.pages_sharing, strict=True
        )
        if t >= end / 2 and o is not None and p is not None and o > 0 and p > 0
    )
    if not ratios:
        return None
    name = published_workload(labels)
    noise = PUBLISHED[name].truth_spread if name is not None else published_error(labels).noise
    return ModelError(
        "canary",
        f"the canary on {obs.source} (scenario {obs.scenario_id}): observed / predicted "
        f"pages_sharing at {len(ratios)} samples of the second half of the recording",
        ratios,
        noise,
    )


@dataclass(frozen=True)
class TimeSpread:
    """The ideal saving at each snapshot relative to the last one (the replay's steady state)."""

    __json_properties__: ClassVar[tuple[str, ...]] = ("low", "high")

    times_s: tuple[float, ...]
    ratios: tuple[float, ...]

    @property
    def low(self) -> float:
        """The smallest ratio (1 with one snapshot)."""
        return min(self.ratios, default=1.0)

    @property
    def high(self) -> float:
        """The largest ratio."""
        return max(self.ratios, default=1.0)

    @classmethod
    def of(cls, times_s: Sequence[float], ideal_frames: Sequence[float]) -> TimeSpread:
        """From the policy ideal at each snapshot (the last one is the reference)."""
        last = float(ideal_frames[-1]) if ideal_frames else 0.0
        if last <= 0:
            return cls(tuple(times_s), tuple(1.0 for _ in ideal_frames))
        # the first snapshot is taken right after the processes are found; from the second on
        rest = list(zip(times_s, ideal_frames, strict=True))[1:] or list(
            zip(times_s, ideal_frames, strict=True)
        )
        return cls(tuple(t for t, _ in rest), tuple(float(v) / last for _, v in rest))


@dataclass(frozen=True)
class Draw:
    """One draw of every uncertain input of the capacity arithmetic."""

    growth: GrowthFit | None  # None: the point fit
    saving_factor: float  # model error x traced time, on KSM's saving before its metadata
    worker_extra_bytes: float
    host_extra_bytes: float
    host_cpus: float


@dataclass(frozen=True)
class SourceInterval:
    """The interval of the capacity gain when only ``source`` varies (or all: ``combined``)."""

    source: str  # one of SOURCES, or "combined"
    gain_low: float | None
    gain_high: float | None
    workers_low: float
    workers_high: float
    basis: str

    @property
    def width(self) -> float:
        """The gain interval's width (0 without one)."""
        if self.gain_low is None or self.gain_high is None:
            return 0.0
        return self.gain_high - self.gain_low


def draw_sets(
    *,
    replicates: Sequence[GrowthFit],
    model: ModelError | None,
    time: TimeSpread | None,
    plan: CapacityPlan,
    seed: int = 0,
) -> tuple[Draw, dict[str, list[Draw]]]:
    """The point draw, and the draws of each source alone and of all together."""
    n = max(len(replicates), MIN_DRAWS)
    rng = np.random.default_rng(seed + 7)
    fp = plan.footprint
    point_factor = model.point if model is not None else 1.0
    point = Draw(
        None, point_factor, fp.extra_bytes, fp.base_extra_bytes.value, plan.host_cpus.value
    )
    growth = [replicates[i % len(replicates)] for i in range(n)] if replicates else [None] * n
    factors = model.draws(rng, n) if model is not None else [1.0] * n
    times = [float(v) for v in rng.uniform(time.low, time.high, size=n)] if time else [1.0] * n
    configs = [_config_draw(plan, rng) for _ in range(n)]

    def make(i: int, *, g: bool, m: bool, c: bool, t: bool) -> Draw:
        w, h, cpus = (
            configs[i] if c else (point.worker_extra_bytes, point.host_extra_bytes, point.host_cpus)
        )
        return Draw(
            growth[i] if g else None,
            (factors[i] if m else point_factor) * (times[i] if t else 1.0),
            w,
            h,
            cpus,
        )

    sets = {
        "sampling": [make(i, g=True, m=False, c=False, t=False) for i in range(n)],
        "model": [make(i, g=False, m=True, c=False, t=False) for i in range(n)],
        "configuration": [make(i, g=False, m=False, c=True, t=False) for i in range(n)],
        "time": [make(i, g=False, m=False, c=False, t=True) for i in range(n)],
        "combined": [make(i, g=True, m=True, c=True, t=True) for i in range(n)],
    }
    return point, sets


def _config_draw(plan: CapacityPlan, rng: np.random.Generator) -> tuple[float, float, float]:
    """Every uncertain input drawn independently across its range, its value the median."""
    fp = plan.footprint
    worker = sum(p.quantile(float(rng.uniform())) for _, p in fp.parts())
    host = fp.base_extra_bytes.quantile(float(rng.uniform()))
    cpus = plan.host_cpus.quantile(float(rng.uniform()))
    return worker, host, cpus


def basis(
    source: str,
    *,
    model: ModelError | None,
    time: TimeSpread | None,
    plan: CapacityPlan,
    replicates: int,
) -> str:
    """What a source's interval covers, in words."""
    if source == "sampling":
        return f"which workers were traced: {replicates} bootstrap resamples of the growth fit"
    if source == "model":
        if model is None:
            return "not known"
        return (
            f"the model's measured error: {model.basis} (observed / predicted "
            f"{model.low:.2f}–{model.high:.2f}, median {model.point:.2f})"
        )
    if source == "configuration":
        names = [n for n, p in plan.inputs() if p.uncertain]
        return (
            "the inputs not given: " + ", ".join(names) + " across their ranges"
            if names
            else "every input was given: none"
        )
    if source == "time":
        if time is None or not time.ratios:
            return "one snapshot: not known"
        return (
            f"the traced window: the ideal saving at each snapshot is "
            f"{time.low:.3f}–{time.high:.3f} of the last one"
        )
    return "every source together"


def percentile_interval(values: Sequence[float], confidence: float) -> tuple[float, float]:
    """The central ``confidence`` percentile interval of ``values``."""
    alpha = (1.0 - confidence) / 2.0
    arr = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    if arr.size == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(arr, [100 * alpha, 100 * (1 - alpha)])
    return float(lo), float(hi)


def dominant(intervals: Sequence[SourceInterval]) -> str | None:
    """The source whose interval is widest (``None`` when every one is a point)."""
    parts = [i for i in intervals if i.source in SOURCES]
    order: list[str] = list(SOURCES)
    best = max(parts, key=lambda i: (i.width, -order.index(i.source)), default=None)
    return best.source if best is not None and best.width > 0 else None


__all__ = [
    "CANARY_FIT",
    "CANARY_RATIO_BAND",
    "PUBLISHED",
    "PUBLISHED_SOFT_DIRTY",
    "SOURCES",
    "CanaryFitRuns",
    "Draw",
    "ModelError",
    "PublishedRuns",
    "SourceInterval",
    "TimeSpread",
    "basis",
    "canary_error",
    "canary_warning",
    "dominant",
    "draw_sets",
    "percentile_interval",
    "published_error",
    "published_runs",
    "published_workload",
]
