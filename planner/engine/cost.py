"""ksmd CPU cost model: nanoseconds per page by code path, per batch and per scan.

``cpu = sum(path costs) + batches * batch_overhead + scans * scan_start``
(docs/kernel-semantics.md §10.2). The unstable-tree insert grows with the tree: it costs
``unstable_base + unstable_per_level * ceil(log2(U))`` where ``U`` is the unstable tree size
left by the previous full scan (pages_unshared at its end), so that both engines compute
the same integer costs. The default profile ships with the package; ``ksm-planner
calibrate`` measures one for a given host.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from typing import TYPE_CHECKING, Any

from planner.errors import InputDataError

if TYPE_CHECKING:
    from pathlib import Path

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
    description: str = ""
    source: str = ""
    provenance: dict[str, Any] | None = field(default=None, compare=False)
    """Where a calibrated profile was measured (host, kernel, CPU, date, method); not a cost."""

    @classmethod
    def default(cls) -> CostProfile:
        """The profile shipped with the package (measured on the reference machine)."""
        text = resources.files("planner.engine").joinpath("profiles/default.json").read_text()
        return cls.from_dict(json.loads(text))

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

    def unstable_ns(self, tree_pages: int) -> int:
        """Cost of an unstable-tree insert into a tree of ``tree_pages`` items."""
        levels = math.ceil(math.log2(max(2, tree_pages)))
        return self.unstable_base_ns + self.unstable_per_level_ns * levels

    def path_costs(self, tree_pages: int) -> tuple[int, ...]:
        """Cost per visit of each path of :data:`PATHS`, for a given unstable tree size."""
        return (
            self.ksm_page_ns,
            self.fork_join_ns,
            self.skip_ns,
            self.first_visit_ns,
            self.volatile_ns,
            self.unstable_ns(tree_pages),
            self.merge_ns,
            self.zero_merge_ns,
            self.unstable_ns(tree_pages),
        )
