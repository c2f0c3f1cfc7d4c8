"""ksmd CPU cost model: nanoseconds per page by code path, per batch and per scan.

``cpu = sum(path costs) + levels * unstable_per_level + batches * batch_overhead + scans *
scan_start`` (docs/kernel-semantics.md §10.2). A visit that walks the unstable tree -- an
insert (path ``unstable``), or a search that finds its partner (a pair merge, counted under
``merge``, or ``no_merge``) -- walks the tree ksmd built *in the current full scan* (the
kernel empties it when a scan ends): with ``m`` items inserted so far in the scan it walks
:func:`tree_levels` ``(m) = ceil(log2(m + 1))`` levels, so the ``k``-th insert of a scan
walks ``ceil(log2 k)`` (:func:`insert_levels` sums a run of them in closed form). Both
engines count the levels visit by visit, with the same insert counter, so they compute the
same integer costs. The default profile ships with the package; ``ksm-planner calibrate``
measures one for a given host.

**On a busy host** (docs/busy-host.md) two more terms apply, both from the load the trace
recorded or the one given: every per-page cost (but the smart-scan skip) and the scan start
are multiplied by ``1 + (busy_page_factor - 1) * min(1, x)`` where ``x`` is the other
runnable tasks per CPU (other tasks evict ksmd's caches between its batches, so each batch
starts cold; a skip reads no page content, and the batch overhead was measured on cold
batches: both keep their costs), and the
CPU of a batch stretches into wall time by ``1 / share`` (:func:`planner.engine.timing.
ksmd_cpu_share`, with ``sched_contention``). :meth:`CostProfile.under_load` and
:meth:`CostProfile.stretched` give the two profiles the driver uses.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

from planner.errors import InputDataError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path


def other_cpu(a: str | None, b: str | None) -> bool:
    """Whether two :func:`planner.provenance.cpu_identity` texts name CPUs of different
    generations (family and model); False where either does not say."""
    from planner.provenance import cpu_generation

    ga, gb = cpu_generation(a), cpu_generation(b)
    return ga is not None and gb is not None and ga != gb


def same_cpu(a: str | None, b: str | None) -> bool:
    """Whether two :func:`planner.provenance.cpu_identity` texts name CPUs of the same
    generation (family and model); False where either does not say."""
    from planner.provenance import cpu_generation

    ga = cpu_generation(a)
    return ga is not None and ga == cpu_generation(b)


def canary_cpu_warning(canary_cpu: str | None, traced_cpu: str | None) -> str | None:
    """A warning when the canary whose ksmd fits the cost profile ran on another CPU
    generation than the traced host (both known): the fitted profile is the canary host's.
    ``None`` otherwise."""
    if not other_cpu(canary_cpu, traced_cpu):
        return None
    return (
        f"the canary was recorded on {canary_cpu}, the trace was captured on {traced_cpu}: "
        "the cost profile fitted to the canary's ksmd is that host's, so ksmd's CPU and the "
        "scan times are the canary host's, not the traced host's"
    )


def cost_cpu_warning(
    profile: CostProfile, traced_cpu: str | None, cost_fit: Mapping[str, Any] | None = None
) -> str | None:
    """Whether ksmd's cost is another CPU's than the traced host's (docs/busy-host.md §5):
    the canary's where ``cost_fit`` says the profile was fitted to one (its ``canary_cpu``),
    else the profile's own. ``None`` when they match or either is unknown."""
    if cost_fit is not None and cost_fit.get("fitted"):
        canary_cpu = cost_fit.get("canary_cpu")
        return canary_cpu_warning(canary_cpu if isinstance(canary_cpu, str) else None, traced_cpu)
    return profile.other_cpu_warning(traced_cpu)


def profile_for_trace(given: CostProfile | None, traced_cpu: str | None) -> CostProfile:
    """The cost profile a replay of a trace captured on ``traced_cpu`` uses: ``given`` where
    one is (the default one too), else the shipped profile measured on the traced CPU's
    generation (:meth:`CostProfile.for_cpu`; docs/busy-host.md §7)."""
    return given if given is not None else CostProfile.for_cpu(traced_cpu)


def profile_choice(
    profile: CostProfile, given: CostProfile | None, traced_cpu: str | None
) -> dict[str, Any]:
    """What a replay's provenance says of its cost profile (``profile``, chosen by
    :func:`profile_for_trace` from ``given``): its name, the CPU it was measured on, and
    why it was used (``given``, ``traced CPU``: shipped for the trace's CPU generation, or
    ``default``: the trace's CPU has no shipped profile or is not recorded)."""
    if given is not None:
        why = "given"
    elif same_cpu(traced_cpu, profile.cpu):
        why = "traced CPU"
    else:
        why = "default"
    return {"name": profile.name, "cpu": profile.cpu, "why": why, "traced_cpu": traced_cpu}


def profile_choice_text(choice: Mapping[str, Any]) -> str:
    """One line on the cost profile a replay used (:func:`profile_choice`)."""
    name, cpu, traced = choice.get("name"), choice.get("cpu"), choice.get("traced_cpu")
    measured = f"measured on {cpu}" if cpu else "measured on a host it does not name"
    why = choice.get("why")
    if why == "given":
        return f"cost profile '{name}' as given ({measured})"
    if why == "traced CPU":
        return f"cost profile '{name}', shipped for the trace's CPU ({measured})"
    return f"cost profile '{name}', the shipped default ({measured}; " + (
        f"none shipped for the trace's {traced})" if traced else "the trace names no CPU)"
    )


#: Code paths of one page visit, in the order of the per-path counters.
PATHS = (
    "ksm_page",  # already merged, item on its node: cheap path
    "fork_join",  # a KSM page whose item is not on its node yet (fork child): linked, no checksum
    "skip",  # smart-scan skip (not a cmp_and_merge_page call)
    "first_visit",  # new rmap_item: allocation + checksum
    "volatile",  # checksum changed since the last visit
    "unstable",  # unchanged, no match: stable + unstable tree walk, inserted
    "merge",  # merged: joined a KSM page or paired with an unstable page
    "zero_merge",  # mapped to the kernel zero page (use_zero_pages)
    # unchanged, not merged and not inserted (same physical page, THP pair, all dups full)
    "no_merge",
)


#: The CPU costs of a profile (what load scales and a CPU share stretches).
_CPU_FIELDS = (
    "ksm_page_ns",
    "fork_join_ns",
    "skip_ns",
    "first_visit_ns",
    "volatile_ns",
    "unstable_base_ns",
    "unstable_per_level_ns",
    "merge_ns",
    "zero_merge_ns",
    "batch_overhead_ns",
    "scan_start_ns",
)


#: The profiles shipped with the package (``planner/engine/profiles``), the default (the
#: reference machine's) first; each was measured on the CPU its provenance names
#: (docs/busy-host.md §7).
SHIPPED_PROFILES: Final = ("default.json", "amd-epyc-25-17.json", "amd-epyc-23-49.json")


#: The unstable-tree inserts of one full scan (into an emptied tree) whose mean cost anchors
#: a calibrated profile's busy-host factor to the reference's
#: (:meth:`CostProfile.busy_factor_anchored_to`): the 20,000 unique pages of the busy-host
#: measurements (docs/busy-host.md §2-3), 13.3 levels a walk.
BUSY_ANCHOR_INSERTS: Final = 20_000


@dataclass(frozen=True)
class CostProfile:
    """Per-path ksmd costs in nanoseconds, and the wake-up latency added to each sleep."""

    name: str
    ksm_page_ns: int
    fork_join_ns: int
    skip_ns: int
    first_visit_ns: int
    volatile_ns: int
    unstable_base_ns: int
    unstable_per_level_ns: int
    merge_ns: int
    zero_merge_ns: int
    batch_overhead_ns: int
    scan_start_ns: int
    wake_latency_ns: int
    sched_contention: float = 1.0
    """Share of the host's other runnable tasks ksmd really competes with (1.0: pure CFS
    proportional share; docs/busy-host.md §2)."""
    busy_page_factor: float = 1.0
    """Per-page cost on a saturated host relative to these (idle, warm) costs, on every path
    that reads a page and on the scan start; the skip and the batch overhead keep theirs
    (1.0: none; docs/busy-host.md §3)."""
    description: str = ""
    source: str = ""
    provenance: dict[str, Any] | None = field(default=None, compare=False)
    """Where a calibrated profile was measured (host, kernel, CPU, date, method); not a cost."""

    @classmethod
    def default(cls) -> CostProfile:
        """The profile shipped with the package (measured on the reference machine, whose
        busy-host terms were fitted on its live runs): the one for a CPU no other shipped
        profile was measured on (:meth:`for_cpu`), and the reference a calibration anchors
        its busy-host factor to."""
        return cls._shipped_file(SHIPPED_PROFILES[0])

    @classmethod
    def _shipped_file(cls, name: str) -> CostProfile:
        text = resources.files("planner.engine").joinpath(f"profiles/{name}").read_text()
        return cls.from_dict(json.loads(text))

    @classmethod
    def shipped(cls) -> tuple[CostProfile, ...]:
        """Every profile shipped with the package, the default first (docs/busy-host.md §7)."""
        return tuple(cls._shipped_file(name) for name in SHIPPED_PROFILES)

    @classmethod
    def for_cpu(cls, cpu: str | None) -> CostProfile:
        """The shipped profile measured on ``cpu``'s generation (family and model, as
        :func:`planner.provenance.cpu_identity` writes them), the default where none was or
        ``cpu`` does not say (docs/busy-host.md §7)."""
        if cpu is not None:
            for prof in cls.shipped():
                if same_cpu(cpu, prof.cpu):
                    return prof
        return cls.default()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CostProfile:
        """Build from a dict (unknown keys rejected, every cost required)."""
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise InputDataError(
                f"unknown cost profile fields {sorted(unknown)}", hint=f"expected {sorted(names)}"
            )
        try:
            prof = cls(**d)
        except TypeError as exc:
            raise InputDataError(f"incomplete cost profile: {exc}") from exc
        for f in fields(cls):
            v = getattr(prof, f.name)
            if f.name.endswith("_ns") and (not isinstance(v, int) or v < 0):
                raise InputDataError(
                    f"cost profile field {f.name} must be a non-negative integer (ns), got {v!r}"
                )
        for name, low in (("sched_contention", 0.0), ("busy_page_factor", 1.0)):
            v = getattr(prof, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not low <= v <= 100:
                raise InputDataError(
                    f"cost profile field {name} must be a number in [{low:g}, 100], got {v!r}"
                )
        return prof

    @classmethod
    def load(cls, path: str | Path) -> CostProfile:
        """Read a profile written by ``ksm-planner calibrate`` (JSON)."""
        from planner._input import read_input_text

        text = read_input_text(path, what="cost profile")  # regular, UTF-8, sane size
        try:
            d = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise InputDataError(f"cannot read cost profile {path}: {exc}") from None
        if not isinstance(d, dict):
            raise InputDataError(f"cost profile {path} is not a JSON object")
        return cls.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @property
    def cpu(self) -> str | None:
        """The CPU the profile was measured on (:func:`planner.provenance.cpu_identity`), if
        its provenance says."""
        cpu = (self.provenance or {}).get("cpu_model")
        return cpu if isinstance(cpu, str) and cpu else None

    def other_cpu_warning(self, traced_cpu: str | None) -> str | None:
        """A warning when the trace was captured on another CPU generation than the one
        this profile was measured on (both known): what a page costs ksmd differs between
        them, and on the published live runs the shipped profile made ksmd's CPU
        -20..+45 % of the real one on another CPU than its own (docs/live-validation.md,
        "The published errors"). ``None`` when they match or either is unknown."""
        if not other_cpu(self.cpu, traced_cpu):
            return None
        return (
            f"the cost profile '{self.name}' was measured on {self.cpu}, the trace was "
            f"captured on {traced_cpu}: what a page costs ksmd differs between CPUs, so ksmd's "
            "CPU and the scan times are this profile's, not the traced host's; run "
            "'ksm-planner calibrate' there, or 'ksm-planner calibrate --trace --observed' "
            "on a canary, and pass --cost-profile"
        )

    def items(self) -> tuple[tuple[str, Any], ...]:
        """The profile as sorted ``(field, value)`` pairs, hashable (a task's key), without
        its provenance (not a cost; :meth:`from_dict` of them gives an equal profile)."""
        return tuple(sorted((k, v) for k, v in self.to_dict().items() if k != "provenance"))

    def load_factor(self, runnable_per_cpu: float) -> float:
        """Multiplier of every CPU cost with ``runnable_per_cpu`` other tasks per CPU."""
        return 1.0 + (self.busy_page_factor - 1.0) * min(1.0, max(0.0, runnable_per_cpu))

    def _scaled(self, scale: Callable[[int], int]) -> CostProfile:
        scaled: dict[str, Any] = {n: scale(getattr(self, n)) for n in _CPU_FIELDS}
        return replace(self, **scaled)

    def scaled(self, factor: float) -> CostProfile:
        """Every CPU cost (per page, per batch, per scan start) times ``factor``."""
        if factor == 1.0:
            return self
        return self._scaled(lambda ns: round(ns * factor))

    def under_load(self, runnable_per_cpu: float) -> CostProfile:
        """The CPU costs with ``runnable_per_cpu`` other runnable tasks per CPU (this
        profile itself on an idle host).

        The per-page paths and the scan start are multiplied by :meth:`load_factor`: they
        read page contents and walk trees whose cache lines other tasks evicted between
        ksmd's batches. Two costs keep their idle values (docs/busy-host.md §3): the
        smart-scan skip, which reads no page content and walks no tree (a page-table lookup
        and the next rmap item; measured beside other work it costs what it costs on an
        idle host, or less), and the batch overhead, which the profile measured on batches
        that each start cold (100 pages every 20 ms) and so already holds that penalty."""
        factor = self.load_factor(runnable_per_cpu)
        if factor == 1.0:
            return self
        return replace(
            self.scaled(factor), skip_ns=self.skip_ns, batch_overhead_ns=self.batch_overhead_ns
        )

    def stretched(self, share_ppm: int) -> CostProfile:
        """The same costs as wall time at a CPU share of ``share_ppm`` (ppm): what the
        engines' clocks advance by while ksmd works (``wake_latency_ns`` is already wall)."""
        from planner.engine.timing import stretch_ns

        return self._scaled(lambda ns: stretch_ns(ns, share_ppm))

    def scan_insert_ns(self, inserts: int) -> float:
        """Mean cost of an insert in a full scan of ``inserts`` unstable-tree inserts (every
        visit of the scan an insert: the tree starts empty), what ``calibrate`` measures."""
        return self.unstable_base_ns + self.unstable_per_level_ns * mean_insert_levels(inserts)

    def busy_factor_anchored_to(self, reference: CostProfile) -> float:
        """The ``busy_page_factor`` that gives this profile's unstable-tree insert, on a busy
        host, the cost the ``reference`` profile's gives it there: ``reference``'s factor
        times its insert over this one's, into a tree of :data:`BUSY_ANCHOR_INSERTS`
        items, at least 1 and at most ``reference``'s own factor (docs/busy-host.md §5, "An
        idle calibration on another CPU").

        ``calibrate`` measures the idle costs of its host but cannot measure the busy-host
        penalty there; the reference's factor was fitted to its own idle costs on live
        runs. On an AMD EPYC whose idle insert cost 1.7 times the reference machine's, the
        factor that fitted nine live runs was 1.4-1.5 where the reference's is 2.5, and this
        rule gives 1.46; carrying the reference's factor unchanged made ksmd's CPU 35-43 %
        high there. The rule assumes a busy host's insert costs about the same on both
        machines; beside spinning loops alone that AMD paid little more than idle, so it is
        an anchor for live workloads, not a measurement. A host whose insert is cheaper keeps
        the reference's factor: no measurement supports a larger one."""
        own = self.scan_insert_ns(BUSY_ANCHOR_INSERTS)
        ref = reference.scan_insert_ns(BUSY_ANCHOR_INSERTS)
        if own <= 0 or ref <= 0:
            return reference.busy_page_factor
        anchored = round(reference.busy_page_factor * ref / own, 3)
        return max(1.0, min(reference.busy_page_factor, anchored))

    def path_costs(self) -> tuple[int, ...]:
        """Cost per visit of each path of :data:`PATHS`, without the unstable-tree levels
        (``unstable_per_level_ns`` per level walked, counted by the engines)."""
        return (
            self.ksm_page_ns,
            self.fork_join_ns,
            self.skip_ns,
            self.first_visit_ns,
            self.volatile_ns,
            self.unstable_base_ns,
            self.merge_ns,
            self.zero_merge_ns,
            self.unstable_base_ns,
        )


def tree_levels(items: int) -> int:
    """Levels a walk of the unstable tree visits when the tree holds ``items`` entries:
    ``ceil(log2(items + 1))`` (0 in an empty tree), the depth at which an insert lands in a
    balanced tree; a search that finds its partner is charged the same walk."""
    return int(items).bit_length()


def insert_levels(before: int, inserts: int) -> int:
    """Levels walked by ``inserts`` consecutive inserts into a tree of ``before`` entries:
    ``sum(tree_levels(m) for m in range(before, before + inserts))``, in closed form."""
    return _levels_prefix(before + inserts) - _levels_prefix(before)


def mean_insert_levels(inserts: int) -> float:
    """Mean levels per insert over a full scan of ``inserts`` inserts (from an empty tree):
    a scan of 30,000 inserts walks 13.9 on average, where its last insert walks 15."""
    return insert_levels(0, inserts) / inserts if inserts > 0 else 0.0


def _levels_prefix(n: int) -> int:
    """``sum(ceil(log2 k) for k in 1..n)`` = ``n * c - 2**c + 1`` with ``c = ceil(log2 n)``."""
    if n <= 0:
        return 0
    c = (n - 1).bit_length()
    return n * c - (1 << c) + 1
