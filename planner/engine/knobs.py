"""The ksmd knobs a replay runs under, with the kernel's defaults and limits.

Names follow ``/sys/kernel/mm/ksm`` (``sleep_millisecs`` is ``sleep_ms`` here, with its unit).
See docs/kernel-semantics.md §9.3 for the defaults and §4-§8 for what each knob does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from planner.errors import KnobError

Advisor = Literal["none", "scan-time"]

DEFAULT_HZ = 250


@dataclass(frozen=True)
class KsmKnobs:
    """ksmd settings. Defaults are the kernel's (Linux 6.18)."""

    pages_to_scan: int = 100
    sleep_ms: int = 20
    hz: int = DEFAULT_HZ
    max_page_sharing: int = 256
    use_zero_pages: bool = False
    smart_scan: bool = True
    advisor: Advisor = "none"
    advisor_max_cpu: int = 70
    advisor_min_pages_to_scan: int = 500
    advisor_max_pages_to_scan: int = 30000
    advisor_target_scan_time_s: int = 200
    stable_node_chains_prune_ms: int = 2000
    #: ksmd's CPU time before the replay starts, seconds. The advisor's first step divides
    #: ksmd's total runtime since boot by the scan time (a kernel quirk, §8); 0 models a
    #: freshly booted host.
    advisor_initial_cpu_s: float = 0.0

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str, str]] = [
            (
                self.pages_to_scan >= 1,
                "pages_to_scan must be at least 1",
                "use a positive number of pages",
            ),
            (
                self.pages_to_scan <= 0xFFFFFFFF,
                "pages_to_scan must fit 32 bits",
                "use at most 4294967295",
            ),
            (self.sleep_ms >= 0, "sleep_ms cannot be negative", "use 0 or more milliseconds"),
            (self.sleep_ms <= 0xFFFFFFFF, "sleep_ms must fit 32 bits", "use at most 4294967295"),
            (
                self.hz in (100, 250, 300, 1000),
                f"hz {self.hz} is not a kernel CONFIG_HZ",
                "use 100, 250, 300 or 1000",
            ),
            (
                self.max_page_sharing >= 2,
                "max_page_sharing must be at least 2",
                "the kernel refuses values below 2",
            ),
            (
                self.advisor in ("none", "scan-time"),
                f"unknown advisor {self.advisor!r}",
                "use none or scan-time",
            ),
            (
                1 <= self.advisor_max_cpu <= 100,
                "advisor_max_cpu must be 1..100",
                "it is a percentage",
            ),
            (
                self.advisor_min_pages_to_scan >= 1,
                "advisor_min_pages_to_scan must be at least 1",
                "use >= 1",
            ),
            (
                self.advisor_max_pages_to_scan >= self.advisor_min_pages_to_scan,
                "advisor_max_pages_to_scan is below advisor_min_pages_to_scan",
                "raise the maximum",
            ),
            (
                self.advisor_target_scan_time_s >= 1,
                "advisor_target_scan_time_s must be at least 1",
                "use >= 1",
            ),
            (
                self.stable_node_chains_prune_ms >= 0,
                "stable_node_chains_prune_ms cannot be negative",
                "use >= 0",
            ),
            (
                self.advisor_initial_cpu_s >= 0,
                "advisor_initial_cpu_s cannot be negative",
                "use >= 0",
            ),
        ]
        for ok, message, hint in checks:
            if not ok:
                raise KnobError(message, hint=hint)

    @property
    def initial_pages_to_scan(self) -> int:
        """pages_to_scan at the start: switching on the advisor sets it to its minimum (§8)."""
        return self.advisor_min_pages_to_scan if self.advisor == "scan-time" else self.pages_to_scan

    def with_(self, **changes: Any) -> KsmKnobs:
        """A copy with some knobs changed (validated)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every knob."""
        return asdict(self)


KNOB_NAMES = tuple(KsmKnobs.__dataclass_fields__)
