"""tracefs for the measurement scripts that read the kernel's ``ksm:*`` trace events
(``advisor_trace.py``, ``merge_trace.py``): mounted at ``/sys/kernel/tracing`` for the run
where it is not mounted yet, and unmounted afterwards."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

TRACING = Path("/sys/kernel/tracing")


@contextlib.contextmanager
def tracefs() -> Iterator[Path]:
    """The tracefs root, mounted for the block if it was not."""
    mounted_here = False
    if not (TRACING / "events").exists():
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACING)], check=True)
        mounted_here = True
    try:
        yield TRACING
    finally:
        if mounted_here:
            subprocess.run(["umount", str(TRACING)], check=False)
