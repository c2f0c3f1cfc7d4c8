"""The kernel experiments E1-E11 and THP as replayable conformance scenarios.

Each :class:`Scenario` is a small :class:`~planner.testing.World`-built trace, the full scan at
whose start each snapshot becomes visible, the knobs, and the counter values measured on
Linux 6.18 at checkpoints: after full scan ``k``, or right after a snapshot was applied
(ksmd stopped, before the next scan). The expected values were measured by the experiment
suite the project started from (result files ``experiments_all.json`` and ``thp.json``, 286/286
and 10/10 predictions matched there); they are constants here, never read at run time, and
the kernel tests measure them again (docs/kernel-semantics.md §12). Each checkpoint names its
source row.

The scenarios check two things at once: that the harness (:func:`run_on_kernel`) reproduces
the experiments on the real kernel, and -- with :meth:`Scenario.check` on the replay
engine's records -- that the replay matches the kernel.

What a trace cannot express is left out, with a note on the scenario: sysfs errors (E10's
EBUSY), ``exec`` and ``prctl`` (E9a's exec, all of E9b), read-only faulted pages (E4a: they
map the shared zero page, so a trace has no rows for them and ksmd never sees them), and
``MADV_UNMERGEABLE`` (E10: replaced by unmapping the same pages, which gives the same
counters; see the scenario).

Notes
-----
Knobs use the replay's names (``pages_to_scan``, ``sleep_ms``, ``max_page_sharing``,
``use_zero_pages``, ``smart_scan``); :func:`planner.kernel.run.sysfs_knobs` translates them.
``pages_to_scan`` is large so that one ksmd wake-up is one full scan, as in the experiments
(docs/kernel-semantics.md §12).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from planner.testing.builder import World
from planner.trace.io import conform

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from planner.kernel.run import KernelRun
    from planner.kernel.sysfs import KsmLease
    from planner.trace.io import HostTrace

PAGE = 4096
#: One wake-up = one full scan (as in the experiments); 100 ms leaves time to stop ksmd.
FAST: Mapping[str, int] = {"pages_to_scan": 1_000_000, "sleep_ms": 100}
#: Per-process values only the kernel reports (smaps_rollup, ksm_stat's yes/no lines).
KERNEL_ONLY_FIELDS = frozenset({"smaps_ksm_kb", "anon_huge_kb", "ksm_mergeable", "ksm_merge_any"})


class ScanLike(Protocol):
    """What a per-scan record offers (kernel :class:`~planner.kernel.run.ScanRecord` or replay)."""

    @property
    def full_scans(self) -> int:
        """The 1-based index of the full scan."""

    @property
    def counters(self) -> dict[str, int]:
        """Global counters after the scan."""

    @property
    def processes(self) -> dict[int, dict[str, int]]:
        """Per-process counters after the scan, by pid."""


@dataclass(frozen=True)
class Expect:
    """Expected values at one checkpoint: after full scan ``scan``, or right after ``snapshot``.

    ``counters`` are absolute (``pages_scanned``/``pages_skipped`` since the start of the
    run); ``deltas`` are changes since the previous record (previous scan, or the snapshot
    record just before); ``processes`` are per-pid ``ksm_stat`` (and smaps_rollup) values;
    ``process_sums`` are sums over all processes; ``vmstat_deltas`` changes of ``/proc/vmstat``
    since the previous record.
    """

    source: str
    scan: int | None = None
    snapshot: int | None = None
    counters: Mapping[str, int] = field(default_factory=dict)
    deltas: Mapping[str, int] = field(default_factory=dict)
    processes: Mapping[int, Mapping[str, int]] = field(default_factory=dict)
    process_sums: Mapping[str, int] = field(default_factory=dict)
    vmstat_deltas: Mapping[str, int] = field(default_factory=dict)

    @property
    def where(self) -> str:
        """``scan 3`` or ``after snapshot 1``."""
        return f"scan {self.scan}" if self.scan is not None else f"after snapshot {self.snapshot}"


@dataclass(frozen=True)
class CheckResult:
    """One compared value."""

    scenario: str
    where: str
    key: str
    expected: int
    measured: int | None
    source: str

    @property
    def ok(self) -> bool:
        """Whether the measured value equals the expected one."""
        return self.measured == self.expected

    def __str__(self) -> str:
        mark = "ok" if self.ok else "MISMATCH"
        return (
            f"{self.scenario} {self.where} {self.key}: expected {self.expected}, "
            f"got {self.measured} [{mark}] ({self.source})"
        )


@dataclass(frozen=True)
class Scenario:
    """One experiment as a trace, a scan schedule, knobs and expected values."""

    name: str
    title: str
    build: Callable[[], HostTrace]
    snapshot_scans: tuple[int, ...]
    scans: int
    knobs: Mapping[str, Any]
    expects: tuple[Expect, ...]
    knob_changes: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)
    first_merge_scan: int | None = None
    left_out: str = ""

    def host_trace(self) -> HostTrace:
        """Build the scenario's trace."""
        return self.build()

    @property
    def needs_knob_changes(self) -> bool:
        """Whether knobs change during the run (the replay takes one set of knobs)."""
        return bool(self.knob_changes)

    def check(
        self,
        scans: Sequence[ScanLike],
        snapshots: Sequence[Any] | None = None,
        *,
        kernel_only: bool = True,
    ) -> list[CheckResult]:
        """Compare records with the expected values.

        ``snapshots`` are the after-snapshot records of a kernel run; without them (a replay)
        the after-snapshot checkpoints are not checked. ``kernel_only=False`` leaves out
        what only the kernel reports (:data:`KERNEL_ONLY_FIELDS`, ``/proc/vmstat``).
        """
        by_scan = {r.full_scans: r for r in scans}
        by_snap = {r.index: r for r in snapshots} if snapshots is not None else None
        timeline: list[tuple[str, int, Any]] = []
        for b in range(1, self.scans + 2):
            if by_snap is not None:
                timeline += [
                    ("snapshot", r.index, r) for r in snapshots or () if r.before_scan == b
                ]
            if b in by_scan:
                timeline.append(("scan", b, by_scan[b]))
        position = {(kind, i): n for n, (kind, i, _r) in enumerate(timeline)}
        out: list[CheckResult] = []
        for e in self.expects:
            if e.snapshot is not None and by_snap is None:
                continue
            kind, idx = ("scan", e.scan) if e.scan is not None else ("snapshot", e.snapshot)
            assert idx is not None
            n = position.get((kind, idx))
            rec = timeline[n][2] if n is not None else None
            prev = timeline[n - 1][2] if n is not None and n > 0 else None
            out += _check_one(self.name, e, rec, prev, kernel_only=kernel_only)
        if self.first_merge_scan is not None:
            first = next(
                (
                    r.full_scans
                    for r in sorted(scans, key=lambda r: r.full_scans)
                    if r.counters.get("pages_sharing", 0) > 0
                ),
                None,
            )
            out.append(
                CheckResult(
                    self.name,
                    "run",
                    "first scan with pages_sharing > 0",
                    self.first_merge_scan,
                    first,
                    "experiments_all.json E11 merge",
                )
            )
        return out


def _check_one(
    name: str, e: Expect, rec: Any, prev: Any, *, kernel_only: bool
) -> list[CheckResult]:
    out: list[CheckResult] = []

    def add(key: str, expected: int, measured: int | None) -> None:
        out.append(CheckResult(name, e.where, key, expected, measured, e.source))

    counters = rec.counters if rec is not None else {}
    for k, v in e.counters.items():
        add(k, v, counters.get(k))
    prev_counters = prev.counters if prev is not None else {}
    for k, v in e.deltas.items():
        add(f"Δ{k}", v, counters[k] - prev_counters.get(k, 0) if k in counters else None)
    procs = rec.processes if rec is not None else {}
    for pid, fields in e.processes.items():
        for k, v in fields.items():
            if kernel_only or k not in KERNEL_ONLY_FIELDS:
                add(f"pid {pid} {k}", v, procs.get(pid, {}).get(k))
    for k, v in e.process_sums.items():
        add(f"Σ {k}", v, sum(p.get(k, 0) for p in procs.values()) if rec is not None else None)
    vm = getattr(rec, "vmstat", {}) if rec is not None else {}
    prev_vm = getattr(prev, "vmstat", {}) if prev is not None else {}
    for k, v in e.vmstat_deltas.items() if kernel_only else ():
        add(f"Δ{k}", v, vm[k] - prev_vm.get(k, 0) if k in vm else None)
    return out


def run_scenario(
    scenario: Scenario, *, lease: KsmLease | None = None
) -> tuple[KernelRun, list[CheckResult]]:
    """Run ``scenario`` on the real kernel and compare with the expected values."""
    from planner.kernel.run import run_on_kernel, sysfs_knobs

    run = run_on_kernel(
        scenario.host_trace(),
        knobs=sysfs_knobs(scenario.knobs),
        snapshot_scans=scenario.snapshot_scans,
        scans=scenario.scans,
        knob_changes={b: sysfs_knobs(ch) for b, ch in scenario.knob_changes.items()},
        detail=True,
        lease=lease,
    )
    return run, scenario.check(run.scans, run.snapshots)


# ------------------------------------------------------------------------------ helpers


def _unique(n: int, base: int) -> list[int]:
    return list(range(base, base + n))


def _keep_alive(ht: HostTrace, *, snapshot_id: int, pid: int) -> HostTrace:
    """Add a ``processes`` row: ``pid`` lives on at ``snapshot_id`` without any page."""
    p = ht.processes
    prev = p.filter(pc.equal(p.column("pid"), pa.scalar(pid, pa.int32()))).to_pylist()[-1]
    row = {**prev, "snapshot_id": snapshot_id, "pages": 0}
    extra = conform(pa.Table.from_pylist([row], schema=p.schema), "processes")
    merged = pa.concat_tables([p, extra]).sort_by(
        [("snapshot_id", "ascending"), ("pid", "ascending")]
    )
    return dataclasses.replace(ht, processes=merged)


def _counters(**kw: int) -> dict[str, int]:
    return dict(kw)


# ------------------------------------------------------------------------------ E1-E11, THP


def _e1() -> HostTrace:
    w = World()
    w.spawn(100)
    w.map(100, 0x10000, [1] * 200 + _unique(100, 1000))
    w.snapshot(0.0)
    return w.host_trace()


E1 = Scenario(
    name="E1",
    title="200 identical + 100 unique pages in one process, smart scan off",
    build=_e1,
    snapshot_scans=(1,),
    scans=3,
    knobs={**FAST, "smart_scan": False},
    expects=(
        Expect(
            "experiments_all.json E1 scan1",
            scan=1,
            counters=_counters(
                full_scans=1,
                pages_volatile=300,
                pages_shared=0,
                pages_sharing=0,
                pages_unshared=0,
                general_profit=-19200,
            ),
            deltas={"pages_scanned": 300},
        ),
        Expect(
            "experiments_all.json E1 scan2",
            scan=2,
            counters=_counters(
                pages_shared=1,
                pages_sharing=199,
                pages_unshared=100,
                pages_volatile=0,
                general_profit=795904,
            ),
            deltas={"pages_scanned": 300},
        ),
        Expect(
            "experiments_all.json E1 scan3 + ksm_stat",
            scan=3,
            counters=_counters(
                pages_shared=1, pages_sharing=199, pages_unshared=100, pages_volatile=0
            ),
            deltas={"pages_scanned": 300},
            processes={
                100: {
                    "ksm_rmap_items": 300,
                    "ksm_merging_pages": 200,
                    "ksm_process_profit": 800000,
                    "smaps_ksm_kb": 800,
                }
            },
        ),
    ),
)


def _e2() -> HostTrace:
    w = World()
    for pid in (100, 101):
        w.spawn(pid)
        w.map(pid, 0x10000, _unique(100, 7000))
    w.snapshot(0.0)
    return w.host_trace()


E2 = Scenario(
    name="E2",
    title="two processes, 100 pages each, pairwise identical across the processes",
    build=_e2,
    snapshot_scans=(1,),
    scans=2,
    knobs={**FAST, "smart_scan": False},
    expects=(
        Expect(
            "experiments_all.json E2 scan1",
            scan=1,
            counters=_counters(pages_volatile=200, pages_sharing=0),
        ),
        Expect(
            "experiments_all.json E2 scan2 + ksm_stat",
            scan=2,
            counters=_counters(
                pages_shared=100,
                pages_sharing=100,
                pages_unshared=0,
                pages_volatile=0,
                general_profit=396800,
            ),
            processes={100: {"ksm_merging_pages": 100}, 101: {"ksm_merging_pages": 100}},
            process_sums={"ksm_process_profit": 806400},
        ),
    ),
)


def _e3() -> HostTrace:
    w = World()
    w.spawn(100)
    w.map(100, 0x10000, [100] * 100)
    w.snapshot(0.0)
    for k in range(1, 5):  # the common content changes before scans 2..5
        w.write_range(100, 0x10000, [100 + k] * 100)
        w.snapshot(float(k))
    return w.host_trace()


def _e3_rewritten() -> tuple[Expect, ...]:
    return tuple(
        Expect(
            f"experiments_all.json E3 scan{k}(rewritten)",
            scan=k,
            counters=_counters(pages_volatile=100, pages_sharing=0, pages_unshared=0),
            deltas={"pages_scanned": 100},
        )
        for k in range(1, 5)
    )


def _e3_stable() -> tuple[Expect, ...]:
    return (
        Expect(
            "experiments_all.json E3 scan5(stable 1st)",
            scan=5,
            counters=_counters(pages_volatile=100, pages_sharing=0),
        ),
        Expect(
            "experiments_all.json E3 scan6(stable 2nd)",
            scan=6,
            counters=_counters(pages_shared=1, pages_sharing=99, pages_volatile=0),
        ),
    )


E3 = Scenario(
    name="E3",
    title="100 identical pages whose common content changes before every scan",
    build=_e3,
    snapshot_scans=(1, 2, 3, 4, 5),
    scans=6,
    knobs={**FAST, "smart_scan": False},
    expects=(*_e3_rewritten(), *_e3_stable()),
)


def _e4a() -> HostTrace:
    w = World()
    w.spawn(100)
    w.map(100, 0x10000, [0] * 100)
    w.snapshot(0.0)
    return w.host_trace()


E4A = Scenario(
    name="E4a",
    title="100 written zero-filled pages, use_zero_pages=0",
    build=_e4a,
    snapshot_scans=(1,),
    scans=2,
    knobs={**FAST, "smart_scan": False, "use_zero_pages": False},
    expects=(
        Expect(
            "experiments_all.json E4a scan1",
            scan=1,
            counters=_counters(pages_volatile=100),
            deltas={"pages_scanned": 100},
        ),
        Expect(
            "experiments_all.json E4a scan2",
            scan=2,
            counters=_counters(
                pages_shared=1, pages_sharing=99, ksm_zero_pages=0, pages_volatile=0
            ),
            deltas={"pages_scanned": 100},
        ),
    ),
    left_out="the experiment's 100 read-only touched pages: they map the shared zero page, "
    "have no trace rows and are invisible to ksmd (pages_scanned +100 per scan shows it)",
)


def _e4b() -> HostTrace:
    w = World()
    w.spawn(100)
    w.map(100, 0x10000, [0] * 100 + [3] * 50)
    w.snapshot(0.0)
    w.write_range(100, 0x10000, _unique(30, 3100))  # COW 30 KSM zero pages
    w.snapshot(1.0)
    return w.host_trace()


E4B = Scenario(
    name="E4b",
    title="100 zero + 50 identical pages, use_zero_pages=1; then 30 zero pages written",
    build=_e4b,
    snapshot_scans=(1, 4),
    scans=3,
    knobs={**FAST, "smart_scan": False, "use_zero_pages": True},
    expects=(
        Expect(
            "experiments_all.json E4b scan1",
            scan=1,
            counters=_counters(pages_volatile=150, ksm_zero_pages=0),
        ),
        Expect(
            "experiments_all.json E4b scan2",
            scan=2,
            counters=_counters(
                ksm_zero_pages=100,
                pages_shared=1,
                pages_sharing=49,
                pages_volatile=100,
                general_profit=600704,
            ),
            deltas={"pages_scanned": 150},
        ),
        Expect(
            "experiments_all.json E4b scan3 + ksm_stat",
            scan=3,
            counters=_counters(ksm_zero_pages=100, pages_volatile=0, general_profit=607104),
            deltas={"pages_scanned": 50},
            processes={
                100: {"ksm_zero_pages": 100, "ksm_rmap_items": 50, "ksm_process_profit": 611200}
            },
        ),
        Expect(
            "experiments_all.json E4b after 30 writes (ksmd stopped)",
            snapshot=1,
            counters=_counters(ksm_zero_pages=70),
            processes={100: {"ksm_zero_pages": 70}},
        ),
    ),
)


def _e5() -> HostTrace:
    w = World()
    w.spawn(100)
    w.map(100, 0x10000, [11] * 25 + [12] * 21)
    w.snapshot(0.0)
    w.write_range(100, 0x10000, _unique(20, 1300))  # frees the two full dups of content 11
    w.snapshot(1.0)
    return w.host_trace()


_E5_SCAN3 = _counters(
    pages_shared=5, pages_sharing=40, pages_unshared=1, stable_node_chains=2, stable_node_dups=5
)
E5 = Scenario(
    name="E5",
    title="max_page_sharing=10: 25 x A + 21 x B, then pages 0-19 of A rewritten",
    build=_e5,
    snapshot_scans=(1, 4),
    scans=5,
    knobs={**FAST, "smart_scan": False, "max_page_sharing": 10},
    expects=(
        Expect(
            "experiments_all.json E5 scan2", scan=2, counters={**_E5_SCAN3, "pages_volatile": 0}
        ),
        Expect("experiments_all.json E5 scan3", scan=3, counters=_E5_SCAN3),
        Expect(
            "experiments_all.json E5 after writes (ksmd stopped)",
            snapshot=1,
            counters=_counters(pages_shared=5, pages_sharing=40, stable_node_dups=5),
        ),
        Expect(
            "experiments_all.json E5 scan4",
            scan=4,
            counters=_counters(
                pages_shared=3,
                pages_sharing=22,
                pages_unshared=1,
                pages_volatile=20,
                stable_node_chains=1,
                stable_node_dups=2,
            ),
        ),
        Expect(
            "experiments_all.json E5 scan5",
            scan=5,
            counters=_counters(
                pages_shared=3,
                pages_sharing=22,
                pages_unshared=21,
                pages_volatile=0,
                stable_node_chains=1,
                stable_node_dups=2,
            ),
        ),
    ),
)


def _e5b() -> HostTrace:
    w = World()
    w.spawn(100)
    w.map(100, 0x10000, [21] * 1000 + [22] * 769)
    w.snapshot(0.0)
    return w.host_trace()


E5B = Scenario(
    name="E5b",
    title="1000 x A + 769 x B with the default max_page_sharing=256",
    build=_e5b,
    snapshot_scans=(1,),
    scans=2,
    knobs={**FAST, "smart_scan": False},
    expects=(
        Expect(
            "experiments_all.json E5b scan2",
            scan=2,
            counters=_counters(
                pages_shared=7,
                pages_sharing=1761,
                pages_unshared=1,
                stable_node_chains=2,
                stable_node_dups=7,
                pages_volatile=0,
            ),
        ),
    ),
)

#: Scans (1-based) in which smart scan skipped all 100 pages in E6 (measured, 26 scans).
E6_SKIPPED_SCANS = (5, 7, 8, 10, 11, 12, 13, 15, 16, 17, 18, 19, 20, 21, 22, 24, 25, 26)


def _e6() -> HostTrace:
    w = World()
    w.spawn(100)
    w.map(100, 0x10000, _unique(100, 4100))
    w.snapshot(0.0)
    return w.host_trace()


def _e6_expects() -> tuple[Expect, ...]:
    out = []
    for b in range(1, 27):
        skipped = b in E6_SKIPPED_SCANS
        counters = (
            {}
            if b == 1
            else _counters(
                pages_unshared=0 if skipped else 100, pages_volatile=100 if skipped else 0
            )
        )
        out.append(
            Expect(
                f"experiments_all.json E6 scan{b}{'(skip)' if skipped else ''}",
                scan=b,
                counters=counters,
                deltas={
                    "pages_skipped": 100 if skipped else 0,
                    "pages_scanned": 0 if skipped else 100,
                },
            )
        )
    return tuple(out)


E6 = Scenario(
    name="E6",
    title="100 unique never-changing pages: 26 scans with smart scan",
    build=_e6,
    snapshot_scans=(1,),
    scans=26,
    knobs={**FAST, "smart_scan": True},
    expects=_e6_expects(),
)

E6_OFF = Scenario(
    name="E6-off",
    title="E6, then smart scan switched off for 4 more scans (a knob change: kernel only)",
    build=_e6,
    snapshot_scans=(1,),
    scans=30,
    knobs={**FAST, "smart_scan": True},
    knob_changes={27: {"smart_scan": False}},
    expects=_e6_expects()
    + tuple(
        Expect(
            f"experiments_all.json E6 smart_off scan{v}",
            scan=26 + v,
            counters=_counters(pages_unshared=100),
            deltas={"pages_skipped": 0, "pages_scanned": 100},
        )
        for v in range(1, 5)
    ),
)


def _e7_e8() -> HostTrace:
    w = World()
    w.spawn(100)
    w.map(100, 0x10000, [5] * 100)
    w.snapshot(0.0)
    w.map(100, 0x10000 + 100 * PAGE, [5] * 50)  # 50 new copies of the KSM content
    w.snapshot(1.0)
    w.write_range(100, 0x10000, _unique(50, 5100))  # COW 50 merged pages
    w.snapshot(2.0)
    return w.host_trace()


E7_E8 = Scenario(
    name="E7+E8",
    title="new copies of a KSM page need two visits (E7); COW is counted only when revisited (E8)",
    build=_e7_e8,
    snapshot_scans=(1, 3, 5),
    scans=6,
    knobs={**FAST, "smart_scan": False},
    expects=(
        Expect(
            "experiments_all.json E7 scan2",
            scan=2,
            counters=_counters(pages_shared=1, pages_sharing=99),
        ),
        Expect(
            "experiments_all.json E7 scan3 (new pages, visit 1)",
            scan=3,
            counters=_counters(pages_shared=1, pages_sharing=99, pages_volatile=50),
        ),
        Expect(
            "experiments_all.json E7 scan4 (new pages, visit 2)",
            scan=4,
            counters=_counters(pages_shared=1, pages_sharing=149, pages_volatile=0),
        ),
        Expect(
            "experiments_all.json E8 right after 50 writes",
            snapshot=2,
            counters=_counters(pages_shared=1, pages_sharing=149, pages_volatile=0),
            processes={100: {"ksm_merging_pages": 150, "smaps_ksm_kb": 400}},
            vmstat_deltas={"cow_ksm": 50},
        ),
        Expect(
            "experiments_all.json E8 scan5",
            scan=5,
            counters=_counters(pages_shared=1, pages_sharing=99, pages_volatile=50),
        ),
        Expect(
            "experiments_all.json E8 scan6",
            scan=6,
            counters=_counters(
                pages_shared=1, pages_sharing=99, pages_unshared=50, pages_volatile=0
            ),
            processes={100: {"ksm_merging_pages": 100}},
        ),
    ),
)


def _e9a() -> HostTrace:
    w = World()
    w.spawn(100)
    w.map(100, 0x10000, [61] * 200)
    w.snapshot(0.0)
    w.fork(100, 101)
    w.snapshot(1.0)
    return w.host_trace()


E9A = Scenario(
    name="E9a",
    title="fork of a madvise()d process whose 200 pages are merged into one KSM page",
    build=_e9a,
    snapshot_scans=(1, 3),
    scans=3,
    knobs={**FAST, "smart_scan": False},
    expects=(
        Expect(
            "experiments_all.json E9a merged",
            scan=2,
            counters=_counters(pages_shared=1, pages_sharing=199),
        ),
        Expect(
            "experiments_all.json E9a child before scan",
            snapshot=1,
            processes={101: {"ksm_mergeable": 1, "ksm_merge_any": 0, "ksm_rmap_items": 0}},
        ),
        Expect(
            "experiments_all.json E9a scan after fork",
            scan=3,
            counters=_counters(
                pages_shared=1, pages_sharing=399, stable_node_chains=0, stable_node_dups=0
            ),
            processes={101: {"ksm_merging_pages": 200}},
        ),
    ),
    left_out="exec from the madvise()d process and all of E9b (prctl PR_SET_MEMORY_MERGE): a trace "
    "has neither exec nor prctl, and holders never use prctl",
)


def _e10() -> HostTrace:
    w = World()
    for pid, content in ((100, 101), (101, 102)):
        w.spawn(pid)
        w.map(pid, 0x10000, [content] * 150 + _unique(50, content * 100))
    w.snapshot(0.0)
    w.exit(100)  # A exits
    w.unmap(101, 0x10000, 200)  # B: stands in for MADV_UNMERGEABLE (see left_out)
    w.snapshot(1.0)
    return _keep_alive(w.host_trace(), snapshot_id=1, pid=101)


E10 = Scenario(
    name="E10",
    title="counters after exit (A) and unmerge (B) change only when ksmd gets there",
    build=_e10,
    snapshot_scans=(1, 3),
    scans=3,
    knobs={**FAST, "smart_scan": False},
    expects=(
        Expect(
            "experiments_all.json E10 merged",
            scan=2,
            counters=_counters(pages_shared=2, pages_sharing=298, pages_unshared=100),
        ),
        Expect(
            "experiments_all.json E10 after exit(A)+UNMERGEABLE(B), ksmd stopped",
            snapshot=1,
            counters=_counters(
                pages_shared=2, pages_sharing=298, pages_unshared=100, pages_volatile=0
            ),
            processes={101: {"smaps_ksm_kb": 0, "ksm_merging_pages": 150}},
        ),
        Expect(
            "experiments_all.json E10 next scan + B after scan",
            scan=3,
            counters=_counters(
                pages_shared=0,
                pages_sharing=0,
                pages_unshared=0,
                pages_volatile=0,
                general_profit=0,
            ),
            deltas={"pages_scanned": 0},
            processes={101: {"ksm_rmap_items": 0}},
        ),
    ),
    left_out="writing max_page_sharing while pages are shared (EBUSY: sysfs, not a trace); B's "
    "MADV_UNMERGEABLE is replaced by unmapping B's pages while B lives on: both drop B's pages "
    "from the next pass and give the same counters, but B stays ksm_mergeable, so that value "
    "is not checked",
)


def _e11() -> HostTrace:
    w = World()
    w.spawn(100)
    w.map(100, 0x10000, _unique(100, 11100))
    w.snapshot(0.0)
    w.write_range(100, 0x10000, [112] * 100)  # all identical after scan 14
    w.snapshot(1.0)
    return w.host_trace()


E11 = Scenario(
    name="E11",
    title="old unique pages that become duplicates: smart scan delays the merge",
    build=_e11,
    snapshot_scans=(1, 15),
    scans=34,
    knobs={**FAST, "smart_scan": True},
    expects=(
        Expect(
            "experiments_all.json E11 end",
            scan=34,
            counters=_counters(pages_shared=1, pages_sharing=99),
        ),
    ),
    first_merge_scan=32,
)


def _thp() -> HostTrace:
    w = World()
    w.spawn(100)
    w.map(100, 0x40000000, [71] * 1024, thp=True)  # two 2 MiB aligned THPs
    w.snapshot(0.0)
    return w.host_trace()


THP = Scenario(
    name="THP",
    title="two THPs of 1024 identical sub-pages: the same-THP pair merges one scan later",
    build=_thp,
    snapshot_scans=(1,),
    scans=3,
    knobs={**FAST, "smart_scan": False},
    expects=(
        Expect("thp.json thp_before", snapshot=0, processes={100: {"anon_huge_kb": 4096}}),
        Expect(
            "thp.json scan1 + thp_after_scan1",
            scan=1,
            counters=_counters(pages_volatile=1024),
            deltas={"pages_scanned": 1024},
            processes={100: {"anon_huge_kb": 4096}},
        ),
        Expect(
            "thp.json scan2 + thp_after_scan2",
            scan=2,
            counters=_counters(
                pages_shared=4,
                pages_sharing=1019,
                pages_volatile=1,
                stable_node_chains=1,
                stable_node_dups=4,
            ),
            processes={100: {"anon_huge_kb": 0}},
        ),
        Expect(
            "thp.json scan3",
            scan=3,
            counters=_counters(pages_shared=4, pages_sharing=1020, pages_volatile=0),
        ),
    ),
)

#: Every scenario, in the order of docs/kernel-semantics.md §12.
SCENARIOS: tuple[Scenario, ...] = (
    E1,
    E2,
    E3,
    E4A,
    E4B,
    E5,
    E5B,
    E6,
    E6_OFF,
    E7_E8,
    E9A,
    E10,
    E11,
    THP,
)


def scenario(name: str) -> Scenario:
    """The scenario called ``name`` (``E1`` ... ``THP``)."""
    for s in SCENARIOS:
        if s.name == name:
            return s
    raise KeyError(name)
