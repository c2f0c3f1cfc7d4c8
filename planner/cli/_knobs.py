"""ksmd knob options shared by ``replay``, ``validate`` (and what-if, for single values)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer


class AdvisorChoice(StrEnum):
    """``--advisor`` values (the kernel's advisor_mode)."""

    none = "none"
    scan_time = "scan-time"


class EngineChoice(StrEnum):
    """``--engine`` values."""

    vectorized = "vectorized"
    reference = "reference"


PagesToScan = Annotated[
    int, typer.Option("--pages-to-scan", help="ksmd pages per batch (pages_to_scan).")
]
SleepMs = Annotated[
    int, typer.Option("--sleep-ms", help="ksmd sleep between batches, ms (sleep_millisecs).")
]
Hz = Annotated[int | None, typer.Option("--hz", help="CONFIG_HZ (default: the trace's, else 250).")]
MaxPageSharing = Annotated[
    int, typer.Option("--max-page-sharing", help="Mappers per KSM page (max_page_sharing).")
]
UseZeroPages = Annotated[
    bool,
    typer.Option(
        "--use-zero-pages/--no-use-zero-pages", help="Map zero-filled pages to the zero page."
    ),
]
SmartScan = Annotated[
    bool,
    typer.Option("--smart-scan/--no-smart-scan", help="Skip pages that keep failing to merge."),
]
Advisor = Annotated[
    AdvisorChoice, typer.Option("--advisor", help="The scan-time advisor (advisor_mode).")
]
Engine = Annotated[
    EngineChoice,
    typer.Option("--engine", help="Replay engine: vectorized (fast) or reference (oracle)."),
]


def host_hz(hz: int | None) -> int:
    """A valid CONFIG_HZ, or the kernel default 250."""
    return hz if hz in (100, 250, 300, 1000) else 250
