"""Score recorded live runs as if their capture had not had soft-dirty (no kernel needed).

Used for docs/live-validation.md, "Soft-dirty on a real kernel": the runs there were captured
with soft-dirty, and the question is what their same-content write counts are worth. This
scores each run twice with :func:`planner.testing.live.compare.compare_run` (the scoring of
``tools/live_validate.py --compare-only``): as recorded, and with the same-content writes
taken as a capture without soft-dirty has them -- the frame changes beyond the content
changes (a copy-on-write of a fork-shared page), as ``planner.engine.prepare._write_counts``
counts them where the trace says writes were not tracked. The content changes, the
snapshots and everything else are the recording's.

It swaps ``_write_counts`` for one that drops the soft-dirty counts (a measurement, not a
model option: a real capture either had soft-dirty or did not). Run from the repository
root::

    .venv/bin/python docs/measure/without_soft_dirty.py traces/softdirty/churn-rewrite-1
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
from typing import Any

from planner.testing.live.compare import CompareOptions, compare_run

FIGURES = ("pages_sharing_steady", "cow_ksm_per_s", "pages_scanned_per_full_scan")


def score(run_dir: str) -> dict[str, Any]:
    """Per figure: the kernel's, and the model's error with and without the counts."""
    prepare = importlib.import_module("planner.engine.prepare")
    recorded = prepare._write_counts
    out: dict[str, Any] = {"run": run_dir}
    for label, counts in (("with", recorded), ("without", _without(recorded))):
        prepare._write_counts = counts
        try:
            metrics = compare_run(run_dir, CompareOptions(alignment="time")).metrics
        finally:
            prepare._write_counts = recorded
        for name in FIGURES:
            m = metrics[name]
            out.setdefault(name, {"kernel": m.kernel})[label] = {"model": m.model, "error": m.error}
    return out


def _without(recorded: Any) -> Any:
    def counts(pc: Any) -> Any:
        return recorded(dataclasses.replace(pc, same_content_writes=None))

    return counts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("runs", nargs="+", help="run directories of tools/live_validate.py")
    for run in p.parse_args().runs:
        sys.stdout.write(json.dumps(score(run)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
