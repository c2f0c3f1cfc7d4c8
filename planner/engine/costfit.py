"""A cost profile fitted to what the real ksmd did on the traced workload (docs/busy-host.md §4).

A recording of ``ksm-planner observe`` made while the real ksmd worked on the traced
processes (any observation with ksmd on, a canary in particular) states ksmd's CPU time
(``ksmd_runtime_ns``), the pages it handed to ``cmp_and_merge_page`` (``pages_scanned``) and
its full scans over a stretch of constant knobs (:func:`ksmd_window`). Two figures follow
from those counters alone: the real CPU per scanned page, and the real batch period, hence
ksmd's real share of a CPU while it worked. :func:`fit_cost` brings a base profile to both:

* ``sched_contention`` is solved so that the busy-host model (docs/busy-host.md §1) gives
  ksmd that share under the load the fit assumes (:func:`solve_contention`);
* the trace is replayed with the recording's knobs, for as long as the recording, under that
  load and (for a canary) with the canary's write rates, and every CPU cost of the base is
  scaled by the real over the modelled CPU per scanned page (twice: the path mix moves a
  little with the batch period).

Both figures are ksmd's, not the knobs': the share is what the scheduler gives ksmd on that
host, and the cost per page is the workload's path mix on cold caches. So a profile fitted at
one knob setting serves the others: ``replay``/``whatif --observed`` use it to predict any
setting from a canary at one (:func:`planner.replay.replay_trace`), and ``ksm-planner
calibrate --trace --observed`` writes it (:func:`planner.kernel.calibrate.calibrate_workload`).
But batches that end inside the tick they began in bound the share only loosely
(:class:`ShortBatches`): a fit to them is a guess at longer batches, and the replays that
ask for longer ones say so (:func:`short_batch_warning`).

This module is the engine layer's: it replays prepared inputs and reads a recording's
counters (a DataFrame), never the kernel.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Final, TypeVar

import numpy as np

from planner.engine.cost import CostProfile
from planner.engine.timing import (
    KSMD_NICE,
    NICE_0_WEIGHT,
    NS_PER_S,
    HostLoad,
    nice_weight,
    sleep_ns,
    tick_ns,
)
from planner.errors import InputDataError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from planner.engine.api import DerivedInput
    from planner.engine.knobs import KsmKnobs
    from planner.engine.options import ReplayOptions
    from planner.engine.prepare import ReplayInput
    from planner.engine.writes import CanaryRates

#: What a fitted profile says about its method (``source``).
FIT_METHOD: Final = (
    "the real ksmd's CPU (ksmd_runtime_ns) per page handed to cmp_and_merge_page "
    "(pages_scanned) over a recording of the traced workload, against a replay of the trace "
    "with the same knobs and load; every CPU cost of the base profile scaled by their ratio; "
    "sched_contention solved from the real batch period (docs/busy-host.md §4)"
)

_T = TypeVar("_T")

#: Knobs a recording's ksmd window must hold constant (the first three are required).
_WINDOW_KNOBS: Final = ("pages_to_scan", "sleep_millisecs", "smart_scan")
_OTHER_KNOBS: Final = ("max_page_sharing", "use_zero_pages", "merge_across_nodes")


#: A recorded batch under this many ticks of CPU says little about ksmd's share of a CPU
#: (:class:`ShortBatches`): half a tick, the part :meth:`KsmdWindow.period_share` guesses.
SHORT_BATCH_TICKS: Final = 0.5


@dataclass(frozen=True)
class KsmdWindow:
    """What a recording says the real ksmd did while it ran with constant knobs."""

    start_s: float
    wall_s: float
    cpu_s: float
    pages_scanned: int
    pages_skipped: int
    full_scans: int
    pages_to_scan: int
    sleep_ms: int
    smart_scan: bool
    max_page_sharing: int | None = None
    use_zero_pages: bool | None = None
    batch_count: float | None = None
    """The batches counted sample by sample (:func:`count_batches`), when known."""
    wait_s: float | None = None
    """ksmd's time runnable but waiting for a CPU over the window (``ksmd_wait_ns``, the
    second field of its ``schedstat``); ``None`` where the recording lacks it."""

    @property
    def batches(self) -> float:
        """Batches run (:func:`count_batches`; over the whole window when the samples are
        not known)."""
        if self.batch_count is not None:
            return self.batch_count
        return count_batches([self.pages_scanned], [self.full_scans], self.pages_to_scan)

    @property
    def ns_per_page(self) -> float:
        """ksmd CPU per scanned page, ns."""
        return self.cpu_s * NS_PER_S / self.pages_scanned

    @property
    def batch_cpu_ns(self) -> float:
        """ksmd's CPU per batch, ns."""
        return self.cpu_s * NS_PER_S / self.batches

    def crossed_ns(self, hz: int, wake_latency_ns: int) -> float:
        """The mean batch period less the slept jiffies and the wake-up latency: the whole
        ticks a batch crossed, on average (:func:`planner.engine.timing.next_batch_ns`)."""
        slept = sleep_ns(self.sleep_ms, hz)
        return max(0.0, self.wall_s * NS_PER_S / self.batches - slept - wake_latency_ns)

    @property
    def sched_share(self) -> float | None:
        """ksmd's share of a CPU by the scheduler's own account: its CPU over its CPU and its
        time runnable but waiting (``None`` where the wait was not recorded)."""
        if self.wait_s is None or self.cpu_s + self.wait_s <= 0:
            return None
        return self.cpu_s / (self.cpu_s + self.wait_s)

    def short(self, hz: int, wake_latency_ns: int) -> bool:
        """Whether the batches took under half a tick of CPU (:data:`SHORT_BATCH_TICKS`) and
        crossed less than a tick on average, so that their period bounds ksmd's share only
        loosely (:class:`ShortBatches`)."""
        tick = tick_ns(hz)
        return (
            sleep_ns(self.sleep_ms, hz) > 0
            and self.batch_cpu_ns < SHORT_BATCH_TICKS * tick
            and self.crossed_ns(hz, wake_latency_ns) < tick
        )

    def share_range(self, hz: int, wake_latency_ns: int) -> tuple[float, float]:
        """The lowest and highest share the batch period allows (:meth:`period_share` takes
        the middle): a batch that crossed ``k`` whole ticks beyond its sleep took at least
        ``k`` ticks and its CPU, and less than ``k + 1`` ticks. Where a batch's CPU is well
        under a tick the range is wide: the period then says little about how the host
        stretches a batch (:meth:`short`)."""
        if sleep_ns(self.sleep_ms, hz) <= 0:
            share = self.period_share(hz, wake_latency_ns)
            return share, share
        crossed_ns = self.crossed_ns(hz, wake_latency_ns)
        cpu = self.batch_cpu_ns
        low = min(1.0, cpu / (crossed_ns + tick_ns(hz)))
        return low, (min(1.0, cpu / crossed_ns) if crossed_ns > cpu else 1.0)

    def share(self, hz: int, wake_latency_ns: int) -> float:
        """ksmd's real share of a CPU while it worked, as the model's batch period takes it
        (:func:`planner.engine.timing.next_batch_ns`).

        From the batch period (:meth:`period_share`), except where the batches are short
        (:meth:`short`) and the recording has ksmd's wait for a CPU: the period then allows
        a wide range, and the scheduler's account (:attr:`sched_share`), brought within that
        range, picks the share. Measured on the Django sample (docs/busy-host.md §4, "The
        scheduler's account"): a 100-page canary's middle of the range, 0.18 alone and 0.12
        beside busy loops, made ksmd's full scans at 1000 and 4000 pages 30-55 % too few; the
        scheduler's 0.61 and 0.43 (that one brought to the range's 0.28) predict them within
        8 % and its CPU within 8 %. Where the batches are long the period's share is kept:
        it reproduces the period the model computes, and the scheduler's, 10-20 % higher
        there (it leaves out what delays ksmd other than waiting for a CPU), predicted the
        other setting's full scans a few points worse."""
        period = self.period_share(hz, wake_latency_ns)
        sched = self.sched_share
        if sched is None or not self.short(hz, wake_latency_ns):
            return period
        low, high = self.share_range(hz, wake_latency_ns)
        return min(high, max(low, sched))

    def period_share(self, hz: int, wake_latency_ns: int) -> float:
        """ksmd's share of a CPU from the batch period: a batch's CPU over the wall time the
        batch took; 1 where the period leaves no time beyond the sleep.

        The period is the slept jiffies, the wake-up latency and the whole ticks the batch
        crossed (:func:`planner.engine.timing.next_batch_ns`): what it has beyond the first
        two, ``k`` ticks, says the batch took from ``k`` to ``k + 1`` ticks, and the middle,
        half a tick more, is taken (batches whose lengths spread over a tick or more cross,
        on average, half a tick fewer than their mean length).
        Without a timed sleep (``sleep_millisecs`` 0) the period is the batch itself."""
        slept = sleep_ns(self.sleep_ms, hz)
        busy_ns = self.wall_s * NS_PER_S / self.batches - slept - wake_latency_ns
        if slept > 0:
            busy_ns = max(0.0, busy_ns) + tick_ns(hz) / 2
        return min(1.0, self.batch_cpu_ns / busy_ns) if busy_ns > 0 else 1.0


def count_batches(scanned: Any, full_scans: Any, pages_to_scan: int) -> float:
    """The batches ksmd ran, from the ``pages_scanned`` and ``full_scans`` increments of
    successive samples. A batch never spans two full scans, so a scan of ``P`` handled
    pages takes ``floor(P / pages_to_scan) + 1`` of them (docs/kernel-semantics.md §4.2):
    a sample interval holding ``F >= 1`` scan ends counts that for ``P`` its pages per scan
    end, an interval without one its pages over ``pages_to_scan``. Counting interval by
    interval follows scans whose size changes (smart scan skips more pages as they age)."""
    dp = np.asarray(scanned, dtype=np.float64)
    df = np.asarray(full_scans, dtype=np.float64)
    ends = df > 0
    per_scan = np.divide(dp, df, out=np.zeros_like(dp), where=ends)
    with_ends = df * (np.floor(per_scan / pages_to_scan) + 1)
    return float(np.where(ends, with_ends, dp / pages_to_scan).sum())


def _knob(row: Any, name: str) -> int | None:
    v = row.get(name)
    return None if v is None or v != v else int(v)  # v != v: NaN


def ksmd_window(counters: Any) -> KsmdWindow:
    """The :class:`KsmdWindow` of an ``observe`` recording's counters (a DataFrame indexed
    by ``t_s``): from the first sample with ``run`` 1 to the last one with the same knobs.

    Raises
    ------
    InputDataError
        ksmd never ran, the recording has no ksmd CPU, or scanned no page.
    """
    need = ("run", "ksmd_runtime_ns", "pages_scanned", "pages_skipped", "full_scans")
    missing = [c for c in need if c not in counters.columns]
    if missing:
        raise InputDataError(
            f"the recording has no {', '.join(missing)}",
            hint="record with 'ksm-planner observe' (as root, so that ksmd's CPU is readable)",
        )
    on = counters[counters["run"] == 1]
    if len(on) >= 2:
        first = on.iloc[0]
        keys = [
            k for k in (*_WINDOW_KNOBS, *_OTHER_KNOBS) if k in on.columns and not on[k].isna().any()
        ]
        same = (on[keys] == first[keys]).all(axis=1).to_numpy()
        stop = int(np.argmin(same)) if not same.all() else len(on)
        on = on.iloc[:stop]
    if len(on) < 2 or on["ksmd_runtime_ns"].isna().any():
        raise InputDataError(
            "the recording has fewer than two samples of a running ksmd with its CPU time",
            hint="record at least a few seconds with ksmd on (run=1), as root",
        )
    a, b = on.iloc[0], on.iloc[-1]
    scanned = int(b["pages_scanned"] - a["pages_scanned"])
    if scanned <= 0:
        raise InputDataError(
            "ksmd scanned no page during the recording",
            hint="record while ksmd runs on the traced workload",
        )
    return KsmdWindow(
        start_s=float(on.index[0]),
        wall_s=float(on.index[-1] - on.index[0]),
        cpu_s=float(b["ksmd_runtime_ns"] - a["ksmd_runtime_ns"]) / NS_PER_S,
        pages_scanned=scanned,
        pages_skipped=int(b["pages_skipped"] - a["pages_skipped"]),
        full_scans=int(b["full_scans"] - a["full_scans"]),
        pages_to_scan=int(a["pages_to_scan"]),
        sleep_ms=int(a["sleep_millisecs"]),
        smart_scan=bool(a["smart_scan"]),
        max_page_sharing=_knob(a, "max_page_sharing"),
        use_zero_pages=None if (v := _knob(a, "use_zero_pages")) is None else bool(v),
        wait_s=_wait_s(on),
        batch_count=count_batches(
            np.diff(on["pages_scanned"].to_numpy(np.float64)),
            np.diff(on["full_scans"].to_numpy(np.float64)),
            int(a["pages_to_scan"]),
        ),
    )


def _wait_s(on: Any) -> float | None:
    """ksmd's wait for a CPU over the samples ``on`` (s), where all of them recorded it."""
    if "ksmd_wait_ns" not in on.columns or on["ksmd_wait_ns"].isna().any():
        return None
    return float(on["ksmd_wait_ns"].iloc[-1] - on["ksmd_wait_ns"].iloc[0]) / NS_PER_S


def solve_contention(share: float, runnable_per_cpu: float, fallback: float) -> float:
    """The ``sched_contention`` under which ksmd's modelled share is ``share`` at this load
    (``fallback`` where the load or the share cannot tell: an idle host, a whole CPU)."""
    if runnable_per_cpu <= 0 or not 0 < share < 1:
        return fallback if share < 1 else 0.0
    w = nice_weight(KSMD_NICE)
    return min(100.0, (w / share - w) / (NICE_0_WEIGHT * runnable_per_cpu))


@dataclass(frozen=True)
class CostFit:
    """A base profile brought to a recording of the real ksmd (:func:`fit_cost`)."""

    profile: CostProfile
    """The base with ``sched_contention`` solved and every CPU cost scaled (not renamed)."""
    base: str
    real: KsmdWindow
    load: HostLoad
    """The load the fit assumed while the recording ran."""
    real_share: float
    model_ns_per_page: float
    """The base profile's CPU per scanned page on the replay, before scaling."""
    cost_scale: float
    canary_writes: bool
    """Whether the fitting replays carried the recording's write rates."""
    model_cow_per_s: float | None = None
    """Copy-on-write breaks per second of the last fitting replay over its whole span (the
    recording's knobs and length), where it modelled writes; not in :meth:`to_dict`."""
    model_pages_sharing: int | None = None
    """``pages_sharing`` at the end of the last fitting replay; not in :meth:`to_dict`."""
    short_batches: ShortBatches | None = None
    """Where the recorded batches took under half a tick of CPU: how little their period
    tells of ksmd's share (:func:`short_batch_warning`)."""

    def to_dict(self) -> dict[str, Any]:
        """What the fit was derived from (JSON-ready; the profile itself is not repeated)."""
        out = {
            "base_profile": self.base,
            "real": {**asdict(self.real), "ns_per_page": self.real.ns_per_page},
            "host_load": self.load.to_dict(),
            "real_share": self.real_share,
            "sched_contention": self.profile.sched_contention,
            "model_ns_per_page_before": self.model_ns_per_page,
            "cost_scale": self.cost_scale,
            "canary_writes": self.canary_writes,
        }
        if self.short_batches is not None:
            out["short_batches"] = asdict(self.short_batches)
        return out


@dataclass(frozen=True)
class ShortBatches:
    """A recording whose ksmd batches took under half a tick of CPU each and crossed less
    than a tick on average (docs/busy-host.md §4, "A canary of short batches"): such a
    batch mostly ends inside the tick it began in, so the batch period bounds ksmd's share
    only loosely (from ``share_low`` to ``share_high``), and :meth:`KsmdWindow.share` takes
    the middle. (Short batches that the host stretched across ticks bound it within a
    factor of two.)"""

    batch_cpu_ns: float
    tick_ns: int
    share_low: float
    share_high: float
    sched_share: float | None = None
    """The scheduler's account of ksmd's share (:attr:`KsmdWindow.sched_share`), where the
    recording has it: the share is then that, within the range, not the middle."""

    @classmethod
    def of(cls, real: KsmdWindow, hz: int, wake_latency_ns: int) -> ShortBatches | None:
        """The recording's, where its batches are short (None otherwise)."""
        if not real.short(hz, wake_latency_ns):
            return None
        low, high = real.share_range(hz, wake_latency_ns)
        return cls(real.batch_cpu_ns, tick_ns(hz), low, high, real.sched_share)


def fit_cost(
    source: ReplayInput | DerivedInput,
    real: KsmdWindow,
    load: HostLoad,
    *,
    base: CostProfile | None = None,
    canary: CanaryRates | None = None,
    writes: bool = True,
    write_seed: int = 0,
) -> CostFit:
    """Fit ``base`` (the shipped profile by default) to the real ksmd of ``real``.

    ``load`` is the load the recording ran under as the replay states it (the trace's
    recorded load unless a better one is known). ``canary``: the recording's write rates,
    carried by the fitting replays so that their path mix (pages whose checksum changed,
    merges broken and redone) is the one the recording saw. ``source`` may be the input
    derived for the replays (:func:`planner.engine.derive_input`): the fit's two replays
    and the replay it fits then grow the trace and apply the canary once.

    Raises
    ------
    InputDataError
        The replay of the trace scanned no page (nothing registered).
    """
    from planner.engine.api import base_input, replay
    from planner.engine.options import ReplayOptions

    inp = base_input(source)
    base = base or CostProfile.default()
    hz = inp.hz or 250
    share = real.share(hz, base.wake_latency_ns)
    contention = solve_contention(share, load.runnable_per_cpu, base.sched_contention)
    knobs = _window_knobs(real, hz)
    probe = replace(base, sched_contention=contention)
    scale = 1.0
    model_ns: list[float] = []
    for _ in range(2):  # the path mix moves a little with the batch period
        opts = ReplayOptions(
            duration_s=max(real.wall_s, 1.0),
            cost=probe.scaled(scale),
            host_load=load,
            writes=writes,
            write_seed=write_seed,
        )
        res = replay(source, knobs=knobs, options=opts, canary=canary)
        scanned = res.final_counters["pages_scanned"]
        if scanned <= 0:
            raise InputDataError(
                "the replay of the trace scanned no page", hint="is any process registered?"
            )
        model_ns.append(res.cost.cpu_s * NS_PER_S / scanned)
        scale *= real.ns_per_page / model_ns[-1]
    return CostFit(
        profile=probe.scaled(scale),
        base=base.name,
        real=real,
        load=load,
        real_share=share,
        model_ns_per_page=model_ns[0],
        cost_scale=scale,
        canary_writes=canary is not None and writes,
        model_cow_per_s=(
            res.cow_breaks / res.duration_s
            if res.cow_breaks_per_s is not None and res.duration_s > 0
            else None
        ),
        model_pages_sharing=int(res.final_counters["pages_sharing"]),
        short_batches=ShortBatches.of(real, hz, base.wake_latency_ns),
    )


def _window_knobs(real: KsmdWindow, hz: int) -> KsmKnobs:
    """The knobs the real ksmd ran with over ``real``."""
    from planner.engine.knobs import KsmKnobs

    more: dict[str, Any] = {}
    if real.max_page_sharing is not None:
        more["max_page_sharing"] = real.max_page_sharing
    if real.use_zero_pages is not None:
        more["use_zero_pages"] = real.use_zero_pages
    return KsmKnobs.for_hz(hz).with_(
        pages_to_scan=real.pages_to_scan, sleep_ms=real.sleep_ms, smart_scan=real.smart_scan, **more
    )


def fitted_profile(fit: CostFit, *, name: str, provenance: dict[str, Any]) -> CostProfile:
    """The fitted profile under its own name, with its method and provenance."""
    return replace(
        fit.profile,
        name=name,
        description=(
            f"{fit.base} scaled x{fit.cost_scale:.2f} to the real ksmd's CPU per scanned page "
            f"on the traced workload, sched_contention {fit.profile.sched_contention:.2f} "
            "from its batch period"
        ),
        source=FIT_METHOD,
        provenance=provenance,
    )


def fit_to_recording(
    source: ReplayInput | DerivedInput,
    counters: Any,
    options: ReplayOptions,
    *,
    canary: CanaryRates | None = None,
) -> tuple[ReplayOptions, dict[str, Any]]:
    """``options`` with its cost profile fitted to the real ksmd of a recording's counters.

    What ``replay``/``whatif --observed`` do with a recording that states ksmd's CPU and full
    scans (a canary does): the base is ``options.effective_cost``; the load the recording ran
    under is taken to be the one the trace recorded (else ``options.host_load``, else an idle host),
    while the replay itself keeps ``options.host_load`` (a load given to plan for another
    host applies to the fitted ksmd). A profile that is already fitted, or a recording
    without ksmd's CPU time, leaves ``options`` as they are. Returns the options and what
    the result's provenance says about the fit (``cost_fit``). ``source``: as
    :func:`fit_cost`'s.
    """
    fitted, note, _ = _fit_recording(source, counters, options, canary)
    return fitted, note


def _fit_recording(
    source: ReplayInput | DerivedInput,
    counters: Any,
    options: ReplayOptions,
    canary: CanaryRates | None,
) -> tuple[ReplayOptions, dict[str, Any], CostFit | None]:
    """:func:`fit_to_recording`, and the fit itself (None where nothing was fitted)."""
    from planner.engine.api import base_input

    base = options.effective_cost
    if is_fitted(base):
        return options, {"fitted": False, "why": f"the profile {base.name} is fitted"}, None
    try:
        real = ksmd_window(counters)
    except InputDataError as exc:
        return options, {"fitted": False, "why": f"the recording cannot tell: {exc.message}"}, None
    recorded = base_input(source).meta.get("host_load")
    load = recorded if isinstance(recorded, HostLoad) else options.host_load or HostLoad.idle()
    fit = fit_cost(
        source,
        real,
        load,
        base=base,
        canary=canary,
        writes=options.writes,
        write_seed=options.write_seed,
    )
    profile = replace(
        fit.profile,
        name=f"{fit.base}+recording",
        description=f"{fit.base} fitted to the recorded ksmd (scaled x{fit.cost_scale:.2f}, "
        f"sched_contention {fit.profile.sched_contention:.2f})",
        source=FIT_METHOD,
    )
    return (
        replace(options, cost=profile),
        {"fitted": True, "profile": profile.name, **fit.to_dict()},
        fit,
    )


#: The fitting replays may break merges up to this factor of the recording's ``cow_ksm``
#: (issue 10's ±20 %) before a canary's page classes are weighed against none
#: (:func:`fit_canary`).
COW_BAND: Final = 1.2


def recorded_cow_per_s(counters: Any, real: KsmdWindow) -> float | None:
    """The recording's copy-on-write breaks of KSM pages per second (``cow_ksm``) over
    ksmd's window ``real`` (the span of the fitting replays), or None where not recorded."""
    if "cow_ksm" not in counters.columns or real.wall_s <= 0:
        return None
    cow = counters["cow_ksm"].astype("float64")
    inside = cow[(cow.index >= real.start_s) & (cow.index <= real.start_s + real.wall_s)]
    inside = inside.dropna()
    if len(inside) < 2 or inside.index[-1] <= inside.index[0]:
        return None
    return float(inside.iloc[-1] - inside.iloc[0]) / float(inside.index[-1] - inside.index[0])


def weigh_page_classes(
    recorded: float | None,
    with_classes: float | None,
    without: Callable[[], tuple[_T, float | None]],
) -> tuple[_T | None, dict[str, Any]]:
    """The rule by which a canary's page classes are kept or set aside, given the recorded
    copy-on-write breaks per second and those of the fitting replays with the classes:
    where these are above :data:`COW_BAND` times the recording's, ``without()`` fits
    without them (a payload, and its breaks per second), and the one nearer the recording
    by ratio is kept. Returns the payload where the classes are set aside (else None) and
    what the provenance says (``page_classes``)."""
    note: dict[str, Any] = {
        "recorded_cow_per_s": recorded,
        "with_classes_cow_per_s": with_classes,
        "without_classes_cow_per_s": None,
        "used": True,
    }
    if (
        recorded is None
        or recorded <= 0
        or with_classes is None
        or with_classes <= COW_BAND * recorded
    ):
        return None, note
    return _weighed(note, "without_classes_cow_per_s", "used", with_classes, recorded, without)


def _weighed(
    note: dict[str, Any],
    alt_key: str,
    flag: str,
    current: float,
    recorded: float,
    without: Callable[[], tuple[_T, float | None]],
    *,
    within_band: bool = False,
) -> tuple[_T | None, dict[str, Any]]:
    """The variant ``without()`` gives (a payload, and its breaks per second, noted under
    ``alt_key``) where its breaks are nearer ``recorded`` than ``current`` by ratio, or, with
    ``within_band``, within :data:`COW_BAND` of it either way; ``flag`` then noted False;
    else None, the note as it was."""
    payload, alt = without()
    note[alt_key] = alt
    if not (_nearer(alt, current, recorded) or (within_band and _within_band(alt, recorded))):
        return None, note
    note[flag] = False
    return payload, note


def _within_band(alt: float | None, recorded: float) -> bool:
    """Whether breaks per second ``alt`` are within :data:`COW_BAND` of ``recorded``, either
    way (issue 10's 20 % on copy-on-write)."""
    return alt is not None and recorded > 0 and 1 / COW_BAND <= alt / recorded <= COW_BAND


def _nearer(alt: float | None, current: float, recorded: float) -> bool:
    """Whether breaks per second ``alt`` are nearer ``recorded`` than ``current`` by ratio."""
    from math import log

    if alt is None or recorded <= 0:
        return False
    return abs(log(max(alt, 1e-9) / recorded)) < abs(log(max(current, 1e-9) / recorded))


def weigh_missed_spread(
    recorded: float | None,
    spread: float | None,
    without: Callable[[], tuple[_T, float | None]],
    scale: float,
) -> tuple[_T | None, dict[str, Any]]:
    """The rule by which the breaks a canary did not see are spread pro rata over the rows
    written (every rate times ``scale``, :attr:`~planner.engine.writes.CanaryRates.missed_scale`)
    or not at all, where no row can be told to take them: given the recorded copy-on-write
    breaks per second and those of the fitting replays with the spreading, ``without()``
    fits without it (a payload, and its breaks per second) and the one nearer the recording
    by ratio is kept; but the rates as measured are kept wherever their breaks lie within
    :data:`COW_BAND` of the recording's, either way, as page classes are kept within it
    (:func:`weigh_page_classes`): the spreading is an assumption, used only where the
    measured rates fall short. Returns the payload where the spreading is dropped (else
    None) and what the provenance says (``missed_breaks``).

    Spreading multiplies every page's rate, the slowly written pages' too, which then break
    at every knob setting where ksmd leaves them merged longer; the model on its own merges
    and breaks a page written faster than the canary samples between two samples, as the
    kernel does. On the Django sample on an AMD EPYC (docs/live-validation.md, "The breaks
    a canary does not see"), a 1000-page canary broke 1,552 merges a second with it and 1,258
    without where the host broke 1,378, and predicted `pages_sharing` at 100 pages −9.8 %
    with it, −2.5 % without; the Intel canary in `reports/canary/` (869 with, 721 without,
    980 recorded) keeps it. Canaries nearly as near with as without (1,549 and 1,233 breaks
    a second where the host broke 1,392; 1,305 and 1,091 for 1,253) predicted 100 pages
    −10.4 and −6.3 % with the spreading, −2.5 and −1.5 % without (docs/live-validation.md,
    "Within the band, the rates as measured")."""
    note: dict[str, Any] = {
        "recorded_cow_per_s": recorded,
        "spread_cow_per_s": spread,
        "unspread_cow_per_s": None,
        "scale": scale,
        "spread": True,
    }
    if recorded is None or recorded <= 0 or spread is None:
        return None, note
    return _weighed(
        note, "unspread_cow_per_s", "spread", spread, recorded, without, within_band=True
    )


#: Fits :func:`weigh_unseen_breaks` may run to find the rate of the unseen breaks' rows,
#: and how near the recording's breaks it stops.
UNSEEN_REFITS: Final = 6
UNSEEN_TOLERANCE: Final = 0.05


def unseen_rows(source: DerivedInput) -> Mapping[str, Any] | None:
    """How many rows of ``source`` take the breaks its canary did not see, and at what write
    rate each (:data:`~planner.engine.writes.UNSEEN_META`); None without a canary."""
    from planner.engine.writes import UNSEEN_META

    meta: Mapping[str, Any] | None = source.written.meta.get(UNSEEN_META)
    return meta


def _next_unseen_rate(points: list[tuple[float, float]], share: float) -> float:
    """The next rate to try for the unseen breaks' rows, given (rate, breaks beyond those
    without them) tried so far and the breaks wanted (more breaks at a higher rate). Where
    rates either side are known: log-log interpolation between the nearest two, kept inside
    the inner four fifths of the bracket in log rate (so that it shrinks), the geometric
    mean where the lower one broke nothing beyond. Else a log-log step from the last two,
    by at most a factor of 30."""
    from math import exp, log

    below = [p for p in points if p[1] < share]
    above = [p for p in points if p[1] > share]
    if below and above:
        (ra, sa), (rb, sb) = max(below), min(above)
        la, lb = log(max(ra, 1e-12)), log(rb)
        if sa <= 0 or ra <= 0:
            return exp((la + lb) / 2)
        u = la + (log(share) - log(sa)) * (lb - la) / (log(sb) - log(sa))
        return exp(min(max(u, la + 0.1 * (lb - la)), lb - 0.1 * (lb - la)))
    (ra, sa), (rb, sb) = points[-2], points[-1]
    step = 30.0 if sb < share else 1 / 30.0
    if sa > 0 and sb > 0 and ra > 0 and ra != rb and sa != sb:
        slope = (log(sb) - log(sa)) / (log(rb) - log(ra))
        if slope > 0:
            factor = exp((log(share) - log(sb)) / slope)
            step = min(max(factor, 1 / 30.0), 30.0)
    return rb * step


def weigh_unseen_breaks(
    recorded: float | None,
    current: float | None,
    unseen: Mapping[str, Any] | None,
    scan_period_s: float,
    refit: Callable[[float], tuple[_T, float | None]],
) -> tuple[_T | None, dict[str, Any]]:
    """The rule by which the rows taking the breaks a canary did not see (``unseen``:
    :data:`~planner.engine.writes.UNSEEN_META`, their count and same-content write rate)
    are written more slowly where the fitting replays break more than :data:`COW_BAND`
    times the recording's ``cow_ksm`` (``current`` and ``recorded``, per second).

    Each such row is written fast enough that a sample of the canary would rarely find it
    merged, on the assumption that its merges then come no faster than the breaks asked of
    it. Where ksmd passes often, they do: a row written at ``r`` a second is merged again
    about a full scan (``scan_period_s``, the canary's) after each break, so it breaks
    ``1 / (scan_period_s + 1 / r)`` times a second, up to one a full scan. On a Node canary
    (docs/live-validation.md, "A Node canary's unseen breaks") 692 rows written 2.9 times a
    second broke 1,172 merges a second where the host broke 282, and `pages_sharing` fell
    to −45.6 % of the kernel's (−19.1 % without them).

    ``refit(rate)`` fits again with every such row written at ``rate`` (a payload, and its
    breaks per second): first at 0, the breaks without them; then at the rate whose share
    of the breaks makes up the recording's, first by that saturation, then by secants (at
    most :data:`UNSEEN_REFITS` fits, until within :data:`UNSEEN_TOLERANCE`). The variant
    nearest the recording by ratio is kept. Returns the payload where one replaces the current (else
    None) and what the provenance says (``unseen_breaks``)."""
    note: dict[str, Any] = {
        "recorded_cow_per_s": recorded,
        "cow_per_s": current,
        "candidates": None if unseen is None else unseen.get("candidates"),
        "write_per_s": None if unseen is None else unseen.get("write_per_s"),
        "used_write_per_s": None if unseen is None else unseen.get("write_per_s"),
    }
    n = int((unseen or {}).get("candidates") or 0)
    r0 = float((unseen or {}).get("write_per_s") or 0.0)
    if (
        recorded is None
        or recorded <= 0
        or current is None
        or current <= COW_BAND * recorded
        or n <= 0
        or r0 <= 0
        or scan_period_s <= 0
    ):
        return None, note
    from math import log

    base_payload, base = refit(0.0)
    note.update(scan_period_s=scan_period_s, without_cow_per_s=base, tried=[])
    variants: list[tuple[float, _T | None, float]] = [(r0, None, current)]
    if base is not None:
        variants.append((0.0, base_payload, base))
        share0, share = current - base, recorded - base
        if share0 > 0 and share > 0:
            # the first guess by the saturation share0 = n / (D + 1 / r0), then secants of
            # log(breaks) on log(rate) (the model's rows saturate sooner or later than that)
            wait_s = share0 / share * (scan_period_s + 1.0 / r0) - scan_period_s
            rate = 1.0 / wait_s if wait_s > 0 else r0 * share / share0
            points = [(r0, share0)]
            variants += _secants(rate, points, (base, share, recorded), refit, note["tried"])
    used = min(variants, key=lambda v: abs(log(max(v[2], 1e-9) / recorded)))
    note.update(used_write_per_s=used[0], cow_per_s_used=used[2])
    return used[1], note


def weigh_unseen_rows(
    recorded: float | None,
    current: float | None,
    unseen: Mapping[str, Any] | None,
    refit: Callable[[int], tuple[_T, float | None]],
) -> tuple[_T | None, dict[str, Any]]:
    """The rule for the traced run's own canary where the fitting replays break more than
    :data:`COW_BAND` times the recording's ``cow_ksm`` (``current`` and ``recorded``, per
    second): **fewer rows take the breaks the canary did not see**, and the others leave
    (:attr:`planner.engine.writes.CanaryRates.unseen_cyclers`).

    The candidates (``unseen``: :data:`~planner.engine.writes.UNSEEN_META`) are pages the
    canary followed itself and never once found merged, though other pages held their
    content. Writing each more slowly until the breaks match (:func:`weigh_unseen_breaks`,
    the rule for another run's canary, whose rows are known only by class) leaves them
    merged most of the time, which this canary saw them never be: on the JVM canaries of
    2026-12-07, 10,035 such rows written once every 2 minutes were merged in the model at
    the end where the kernel had merged none of them (`pages_sharing` +31.6 %). Only a few
    of them are needed to break what ``cow_ksm`` counts beyond the canary's own events, each
    written fast enough to be rarely found merged; the rest could have been merged at every
    full scan and never were: their content did not stay (zero-filled pages a heap
    allocates into after the capture), and they leave, with a content of their own, at the
    last traced snapshot.

    ``refit(n)`` fits again with ``n`` rows taking the unseen breaks (a payload, and its
    breaks per second): first with none, then at the count whose share of the breaks makes
    up the recording's, pro rata, then by secants (breaks grow about linearly with the count:
    each such row breaks about once a visit), at most :data:`UNSEEN_REFITS` fits, until
    within :data:`UNSEEN_TOLERANCE`. The variant nearest the recording by ratio is kept.
    Returns the payload where one replaces the current (else None) and what the provenance
    says (``unseen_breaks``)."""
    n = int((unseen or {}).get("candidates") or 0)
    note: dict[str, Any] = {
        "recorded_cow_per_s": recorded,
        "cow_per_s": current,
        "candidates": n,
        "write_per_s": None if unseen is None else unseen.get("write_per_s"),
        "rows_used": n,
    }
    if recorded is None or recorded <= 0 or current is None or n <= 1:
        return None, note
    if current <= COW_BAND * recorded:
        return None, note
    from math import log

    base_payload, base = refit(0)
    note.update(without_cow_per_s=base, tried=[])
    variants: list[tuple[int, _T | None, float]] = [(n, None, current)]
    if base is not None:
        variants.append((0, base_payload, base))
        share0, share = current - base, recorded - base
        if share0 > 0 and share > 0:
            points = [(float(n), share0)]
            tried = {0, n}

            def count(want: float) -> float | None:  # whole rows, each count once
                rows = min(max(round(want), 1), n - 1)
                if rows in tried:
                    return None
                tried.add(rows)
                return float(rows)

            found = _secants(
                n * share / share0,
                points,
                (base, share, recorded),
                lambda rows: refit(int(rows)),
                note["tried"],
                key="rows",
                level=count,
            )
            variants += [(int(x), payload, cow) for x, payload, cow in found]
    used = min(variants, key=lambda v: abs(log(max(v[2], 1e-9) / recorded)))
    note.update(rows_used=used[0], cow_per_s_used=used[2])
    return used[1], note


def _secants(
    guess: float,
    points: list[tuple[float, float]],
    goal: tuple[float, float, float],
    refit: Callable[[float], tuple[_T, float | None]],
    tried: list[dict[str, Any]],
    *,
    key: str = "write_per_s",
    level: Callable[[float], float | None] = lambda x: x,
) -> list[tuple[float, _T, float]]:
    """Fits from ``guess`` on (:func:`_next_unseen_rate` from ``points``, the (level, breaks
    beyond ``base``) known), at most :data:`UNSEEN_REFITS`, until one breaks within
    :data:`UNSEEN_TOLERANCE` of ``recorded`` (``goal``: ``base``, the breaks wanted beyond it,
    ``recorded``). ``level`` turns a guess into the level tried (None: stop). Returns the
    (level, payload, breaks) of each fit; ``tried`` takes what each fit broke."""
    base, share, recorded = goal
    out: list[tuple[float, _T, float]] = []
    for _ in range(UNSEEN_REFITS):
        x = level(guess)
        if x is None:
            break
        payload, cow = refit(x)
        tried.append({key: x, "cow_per_s": cow})
        if cow is None:
            break
        out.append((x, payload, cow))
        if abs(cow / recorded - 1.0) <= UNSEEN_TOLERANCE:
            break
        points.append((x, cow - base))
        guess = _next_unseen_rate(points, share)
    return out


def weigh_unseen(
    inp: ReplayInput,
    canary: CanaryRates,
    breaks: tuple[float | None, float | None],
    unseen: Mapping[str, Any],
    scan_period_s: float,
    refit: Callable[[CanaryRates], tuple[_T, float | None]],
) -> tuple[_T | None, dict[str, Any]]:
    """The rule for the rows taking the breaks ``canary`` did not see, where the fitting
    replays break far more merges than the recording (``breaks``: recorded and current, per
    second): fewer of them for a canary of the traced run (:func:`weigh_unseen_rows`), each
    written more slowly for another run's (:func:`weigh_unseen_breaks`). ``refit(rates)``
    fits with ``canary`` changed so (a payload, and its breaks per second)."""
    from planner.engine.writes import records_traced_run

    recorded, current = breaks
    if records_traced_run(inp, canary):
        return weigh_unseen_rows(
            recorded, current, unseen, lambda rows: refit(replace(canary, unseen_cyclers=rows))
        )
    return weigh_unseen_breaks(
        recorded,
        current,
        unseen,
        scan_period_s,
        lambda rate: refit(replace(canary, unseen_write_per_s=rate)),
    )


#: How far the merged pages of the fitting replays may move when the rows taking the unseen
#: breaks keep their content (:func:`weigh_held_content`), as a share of ``pages_sharing``.
HOLD_SHARING_BAND: Final = 0.01


def weigh_held_content(
    recorded: float | None,
    current: tuple[float | None, int | None],
    unseen: Mapping[str, Any] | None,
    refit: Callable[[], tuple[_T, float | None, int | None]],
) -> tuple[_T | None, dict[str, Any]]:
    """The rule by which the rows taking the breaks a canary did not see (``unseen``:
    :data:`~planner.engine.writes.UNSEEN_META`) keep their content between writes, where the
    fitting replays break fewer than the recording's ``cow_ksm`` over :data:`COW_BAND`
    (``current``: their breaks per second and final ``pages_sharing``; ``recorded``: per
    second) and the sampler saw some of those rows change content.

    Smart scan ages a page that is not merged at a visit, and after a few visits processes it
    once in nine passes (docs/kernel-semantics.md §7). A row broken at every write is never
    merged at a visit, so it merges again -- and breaks again -- at most once in nine
    passes, and only where its content at that visit passes the checksum gate. On
    PostgreSQL (docs/live-validation.md, "The breaks of rows that never stay merged") the
    kernel's tracepoints show about 500 pages merged again every 8-10 passes, each group of
    one content all at once: their content held at ksmd's visits, while the sampler counted
    content changes on a third of the rows taking the unseen breaks. With those
    changes the fitting replays broke 173 merges a second where the host broke 298; without
    them 249.

    ``refit()`` fits with those rows holding their content (a payload, its breaks per second
    and final ``pages_sharing``). It is kept where its breaks are nearer the recording's by
    ratio and its ``pages_sharing`` within :data:`HOLD_SHARING_BAND` of ``current``'s: the
    canary never saw these rows merged, so a variant in which they stay merged longer
    contradicts it: a first trial outside the code, which held the rows in every fitting
    replay and so let :func:`weigh_unseen_breaks` slow them to 0.036 writes a second,
    raised a churning workload's merged pages by 18 %. This rule runs after that one and
    never slows the rows it holds. Returns the payload where it is kept (else None) and
    what the provenance says (``held_content``)."""
    cow, sharing = current
    changing = int((unseen or {}).get("changing") or 0)
    note: dict[str, Any] = {
        "recorded_cow_per_s": recorded,
        "cow_per_s": cow,
        "pages_sharing": sharing,
        "changing": changing,
        "held_cow_per_s": None,
        "held_pages_sharing": None,
        "held": False,
    }
    if (
        recorded is None
        or recorded <= 0
        or cow is None
        or sharing is None
        or cow * COW_BAND >= recorded
        or changing <= 0
    ):
        return None, note
    payload, alt_cow, alt_sharing = refit()
    note.update(held_cow_per_s=alt_cow, held_pages_sharing=alt_sharing)
    if alt_sharing is None or abs(alt_sharing - sharing) > HOLD_SHARING_BAND * max(sharing, 1):
        return None, note
    if not _nearer(alt_cow, cow, recorded):
        return None, note
    note["held"] = True
    return payload, note


@dataclass(frozen=True)
class CanaryFit:
    """A canary applied to a trace and ksmd's cost fitted to it (:func:`fit_canary`)."""

    source: DerivedInput
    """The trace grown and carrying the canary's rates, as the replays run it."""
    options: ReplayOptions
    """The options with the fitted cost profile (as given where nothing was fitted)."""
    canary: CanaryRates | None
    """The canary's rates, page classes on or off as chosen."""
    note: dict[str, Any]
    """What the provenance says (``cost_fit``; ``page_classes`` where they were weighed)."""
    cow_per_s: float | None = None
    """Copy-on-write breaks per second of its fitting replays at the recording's knobs."""
    pages_sharing: int | None = None
    """``pages_sharing`` at the end of those replays (None: not replayed yet)."""


def fit_canary(
    inp: ReplayInput, counters: Any, options: ReplayOptions, canary: CanaryRates | None
) -> CanaryFit:
    """The canary's rates applied to ``inp`` and the cost profile fitted to its recording
    (:func:`fit_to_recording`), with the canary's **page classes** weighed against its own
    copy-on-write where the canary recorded another run.

    A row of another run takes its rate, and its share of the breaks the canary did not see,
    by its page's class: process role, mapping kind and page number in the mapping
    (:func:`planner.engine.writes.with_canary`). That holds where both runs lay out their
    memory alike (a server's shared buffers and private mappings, PostgreSQL's backends);
    an interpreter's heap and arenas hold other objects at a page number in each run, and the
    classes then pick rows at random: on the Django sample with a fresh canary, 5,586 rows
    of classes the canary never saw merged took the unseen breaks, each written 7.9 times a
    second, and the model broke 4,984 merges a second at the canary's own knobs where the
    host broke 1,241 (`pages_sharing` −62 %; docs/live-validation.md, "On an AMD EPYC, and a
    canary of another run whose pages do not line up"). The fitting replays run at the
    canary's knobs for its length: where they break more than :data:`COW_BAND` times the
    recorded ``cow_ksm``, the canary is applied again without classes (rates drawn by role,
    the unseen breaks pro rata), fitted again, and the one whose breaks are nearer the
    recording's (by ratio) is kept. Classes that under-break are kept: raising their rates
    does not raise the breaks (a rewritten page is merged again only when ksmd visits it).

    Where the rows of another run are not placed by class (none recorded, or set aside),
    the breaks the canary did not see are spread pro rata over the rows written; that is
    weighed the same way against the canary's rates as measured
    (:func:`weigh_missed_spread`: the variant nearer the recording's breaks is kept).

    Last, where the replays break far more than the host, fewer of the rows that could take
    the breaks the canary did not see do and the others leave (the traced run's own canary:
    :func:`weigh_unseen_rows`), or they are written more slowly (another run's:
    :func:`weigh_unseen_breaks`); or, where they break too few and the sampler saw some of
    them change, they keep their content between writes (:func:`weigh_held_content`).
    """
    from planner.engine.api import derive_input
    from planner.engine.writes import by_page_class, spreads_missed_breaks

    source = derive_input(inp, options, canary)
    fitted, note, fit = _fit_recording(source, counters, options, canary)
    chosen = CanaryFit(source, fitted, canary, note)
    if canary is None:
        return chosen
    window = fit.real if fit is not None else _window_or_none(counters)
    if window is None:
        return chosen
    recorded = recorded_cow_per_s(counters, window)
    if fit is not None:
        chosen = replace(
            chosen, cow_per_s=fit.model_cow_per_s, pages_sharing=fit.model_pages_sharing
        )

    def measured(c: CanaryFit) -> CanaryFit:
        """``c`` with its breaks and merged pages at the recording's knobs: a profile fitted
        before (e.g. by calibrate --trace --observed) is not fitted again, and one replay
        then says them."""
        if c.pages_sharing is not None or c.canary is None:
            return c
        cow, sharing = _breaks_at(c.source, window, c.options, c.canary)
        return replace(c, cow_per_s=cow, pages_sharing=sharing)

    def refit(alt: CanaryRates) -> tuple[CanaryFit, float | None]:
        """``alt`` applied and fitted as ``canary`` was, and its breaks per second."""
        alt_source = derive_input(inp, options, alt)
        if fit is None:  # nothing fitted: the options stay as given
            alt_fit = measured(CanaryFit(alt_source, fitted, alt, note))
            return alt_fit, alt_fit.cow_per_s
        alt_fitted, alt_note, fitted_alt = _fit_recording(alt_source, counters, options, alt)
        got = CanaryFit(alt_source, alt_fitted, alt, alt_note)
        if fitted_alt is not None:
            got = replace(
                got,
                cow_per_s=fitted_alt.model_cow_per_s,
                pages_sharing=fitted_alt.model_pages_sharing,
            )
        return got, got.cow_per_s

    extra: dict[str, Any] = {}
    if by_page_class(inp, canary):
        chosen = measured(chosen)
        without, extra["page_classes"] = weigh_page_classes(
            recorded, chosen.cow_per_s, lambda: refit(replace(canary, page_classes=False))
        )
        if without is not None:
            chosen = without
    assert chosen.canary is not None
    if spreads_missed_breaks(inp, chosen.canary):
        spread_canary = chosen.canary
        chosen = measured(chosen)
        unspread, extra["missed_breaks"] = weigh_missed_spread(
            recorded,
            chosen.cow_per_s,
            lambda: refit(replace(spread_canary, missed_spread=False)),
            spread_canary.missed_scale,
        )
        if unspread is not None:
            chosen = unspread
    unseen_canary = chosen.canary
    assert unseen_canary is not None
    unseen = unseen_rows(chosen.source)
    if unseen and unseen.get("candidates"):
        chosen = measured(chosen)
        slower, extra["unseen_breaks"] = weigh_unseen(
            inp,
            unseen_canary,
            (recorded, chosen.cow_per_s),
            unseen,
            window.wall_s / window.full_scans if window.full_scans > 0 else 0.0,
            refit,
        )
        if slower is not None:
            chosen = slower
        else:

            def held() -> tuple[CanaryFit, float | None, int | None]:
                got, cow = refit(replace(unseen_canary, unseen_hold_content=True))
                return got, cow, got.pages_sharing

            kept, extra["held_content"] = weigh_held_content(
                recorded, (chosen.cow_per_s, chosen.pages_sharing), unseen, held
            )
            if kept is not None:
                chosen = kept
    return replace(chosen, note={**chosen.note, **extra})


def _window_or_none(counters: Any) -> KsmdWindow | None:
    try:
        return ksmd_window(counters)
    except InputDataError:
        return None


def _breaks_at(
    source: DerivedInput, real: KsmdWindow, options: ReplayOptions, canary: CanaryRates
) -> tuple[float | None, int]:
    """Copy-on-write breaks per second of a replay of ``source`` at the knobs the real ksmd
    ran with over ``real``, for as long, under the load the trace recorded (as the fitting
    replays run), with ``options``' cost profile; and its final ``pages_sharing``."""
    from planner.engine.api import base_input, replay

    inp = base_input(source)
    recorded = inp.meta.get("host_load")
    load = recorded if isinstance(recorded, HostLoad) else options.host_load or HostLoad.idle()
    opts = replace(options, duration_s=max(real.wall_s, 1.0), host_load=load)
    res = replay(source, knobs=_window_knobs(real, inp.hz or 250), options=opts, canary=canary)
    sharing = int(res.final_counters["pages_sharing"])
    if res.cow_breaks_per_s is None or res.duration_s <= 0:
        return None, sharing
    return res.cow_breaks / res.duration_s, sharing


def batch_pages(knobs: KsmKnobs) -> int:
    """The most pages ksmd handles in one batch at ``knobs`` (the scan-time advisor's ceiling
    where it sets ``pages_to_scan``)."""
    return knobs.advisor_max_pages_to_scan if knobs.advisor == "scan-time" else knobs.pages_to_scan


def fit_facts(profile: CostProfile | None, cost_fit: Mapping[str, Any] | None) -> Any:
    """What a replay's ksmd was fitted to: ``cost_fit`` (the provenance of
    :func:`fit_to_recording`) where the replay fitted it, else the provenance of a
    ``profile`` written by ``calibrate --trace --observed`` (the same keys); None where
    neither was fitted to a recording."""
    if cost_fit is not None and cost_fit.get("fitted"):
        return cost_fit
    prov = profile.provenance if profile is not None else None
    if isinstance(prov, Mapping) and isinstance(prov.get("real"), Mapping):
        return {**prov, "fitted": True}
    return None


def short_batch_warning(
    cost_fit: Mapping[str, Any] | None, knobs: Iterable[KsmKnobs]
) -> str | None:
    """What a replay at ``knobs`` says where ksmd's cost was fitted (``cost_fit``, as
    :func:`fit_facts` gives it) to a recording of short batches
    (:class:`ShortBatches`) and some of the knobs ask for longer ones: ksmd's share of a
    CPU in a longer batch is then a guess, and with it ksmd's CPU, its full scans and the
    time to benefit. On the Django sample on an AMD EPYC (docs/busy-host.md §4) a 100-page
    canary's fitted share, 0.16, made the full scans at 4000 pages 55 % too few, where
    canaries at 1000 and 4000 pages (shares 0.67 and 0.74) predicted each other within
    10 %; on an Intel Xeon shared with other work the same guess was right. ``None`` where
    nothing is extrapolated."""
    if not cost_fit or not cost_fit.get("fitted"):
        return None
    short, real = cost_fit.get("short_batches"), cost_fit.get("real")
    if not isinstance(short, Mapping) or not isinstance(real, Mapping):
        return None
    if short.get("sched_share") is not None:
        return None  # the scheduler's account chose the share: no guess to warn of
    recorded = int(real["pages_to_scan"])
    longer = sorted({batch_pages(k) for k in knobs if batch_pages(k) > recorded})
    if not longer:
        return None
    cpu_ms = float(short["batch_cpu_ns"]) / 1e6
    asked = ", ".join(f"{p:,}" for p in longer)
    return (
        f"ksmd's share of a CPU was fitted to a recording at pages_to_scan={recorded:,}, whose "
        f"batches took {cpu_ms:.2f} ms of CPU, under half a {float(short['tick_ns']) / 1e6:g} ms "
        f"tick: their period allows a share from {float(short['share_low']):.2f} to "
        f"{float(short['share_high']):.2f} ({float(cost_fit['real_share']):.2f} taken, the "
        f"middle) and cannot tell how the host stretches batches {longer[-1] / recorded:.0f} "
        f"times as long, so ksmd's CPU, its full scans and the time to benefit at "
        f"pages_to_scan {asked} rest on that guess (docs/busy-host.md §4); record the canary "
        "again with this version, which records ksmd's wait for a CPU, or at the largest "
        "pages_to_scan planned"
    )


#: How much more the busy-host factor may multiply a fitted profile's costs at the planned
#: load than at the recording's before a replay says so (:func:`busier_load_warning`).
BUSIER_LOAD_RATIO: Final = 1.25


def busier_load_warning(
    cost_fit: Mapping[str, Any] | None, profile: CostProfile | None, planned: Iterable[float]
) -> str | None:
    """What a replay says where ksmd's cost was fitted (``cost_fit``, as :func:`fit_facts`
    gives it) to a recording on a quieter host than the ``planned`` loads (other runnable
    tasks per CPU): the fit measured the costs at the recording's load, and the profile's
    ``busy_page_factor`` (never measured on the workload there) multiplies them by more than
    :data:`BUSIER_LOAD_RATIO` at the planned one. On an AMD EPYC a canary fitted on an idle
    run put ksmd's CPU 45-87 % above the kernel's beside spinning loops, where a page cost
    little more than idle (docs/busy-host.md §5). ``None`` where nothing is extrapolated."""
    if not cost_fit or not cost_fit.get("fitted"):
        return None
    load = cost_fit.get("host_load")
    if not isinstance(load, Mapping) or load.get("runnable_per_cpu") is None:
        return None
    prof = profile or CostProfile.default()
    recorded = float(load["runnable_per_cpu"])
    busiest = max(planned, default=recorded)
    ratio = prof.load_factor(busiest) / prof.load_factor(recorded)
    if ratio <= BUSIER_LOAD_RATIO:
        return None
    return (
        f"ksmd's costs were fitted to a recording at {recorded:.2f} other runnable tasks per "
        f"CPU and are replayed at up to {busiest:.2f}: there the profile's busy_page_factor "
        f"{prof.busy_page_factor:g}, which the recording could not measure, makes a page "
        f"cost {ratio:.2f} times what the recording showed, so ksmd's CPU, its full scans and "
        "the time to benefit rest on that factor, which differs between CPUs and workloads "
        "(docs/busy-host.md §5); record the canary on a host as busy as the one planned, or "
        "plan at its load (--host-load)"
    )


def is_fitted(profile: CostProfile) -> bool:
    """Whether ``profile`` was already fitted to a workload (not to be fitted again)."""
    return profile.source == FIT_METHOD or profile.source.startswith(
        "ksm-planner calibrate --trace/--observed"
    )


__all__ = [
    "BUSIER_LOAD_RATIO",
    "COW_BAND",
    "FIT_METHOD",
    "SHORT_BATCH_TICKS",
    "CanaryFit",
    "CostFit",
    "KsmdWindow",
    "ShortBatches",
    "batch_pages",
    "busier_load_warning",
    "fit_canary",
    "fit_cost",
    "fit_facts",
    "fit_to_recording",
    "fitted_profile",
    "is_fitted",
    "ksmd_window",
    "recorded_cow_per_s",
    "short_batch_warning",
    "solve_contention",
    "unseen_rows",
    "weigh_missed_spread",
    "weigh_page_classes",
    "weigh_unseen",
    "weigh_unseen_breaks",
    "weigh_unseen_rows",
]
