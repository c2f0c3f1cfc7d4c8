"""Figures of the shipped sample traces quoted in docs/capture.md §3 (no root needed).

For ``traces/django-nopreload`` and ``traces/django-preload`` it prints, from the trace files
only: the static potential of the last snapshot as ``ksm-planner info`` computes it
(:mod:`planner.trace.summary`), pages of the master and of each worker, and the stability
between consecutive snapshots: the share of ``(pid, page address)`` rows present in both
whose content hash is unchanged, and the ideal saving counting those unchanged rows only
(against all rows, both as a share of the later snapshot's frames).

Run from the repository root: ``.venv/bin/python docs/measure/sample_traces.py``.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np

from planner.trace.io import open_trace
from planner.trace.summary import summarize_trace

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ("django-nopreload", "django-preload")


def ideal_freed(frames: np.ndarray, hashes: np.ndarray, zero: np.ndarray) -> int:
    """Distinct non-zero frames - distinct non-zero hashes + zero frames."""
    _, first = np.unique(frames, return_index=True)
    f_hash, f_zero = hashes[first], zero[first]
    return int(f_hash[~f_zero].size - np.unique(f_hash[~f_zero]).size) + int(f_zero.sum())


def main() -> int:
    for name in SAMPLES:
        trace = open_trace(ROOT / "traces" / name)
        host = trace.load_host(trace.hosts[0])
        summary = summarize_trace(ROOT / "traces" / name).to_dict()
        last = summary["snapshots"][-1]
        ids = host.snapshot_ids.tolist()
        page_tables = [host.pages_of(int(s)) for s in ids]
        last_pages = page_tables[-1]
        _pids, counts = np.unique(last_pages.column("pid").to_numpy(), return_counts=True)
        stability = []
        for a, b in itertools.pairwise(page_tables):
            ka = a.select(["pid", "page_addr", "content_hash"]).to_pandas()
            kb = b.select(["pid", "page_addr", "content_hash", "frame_id", "flags"]).to_pandas()
            both = kb.merge(ka, on=["pid", "page_addr"], suffixes=("", "_prev"))
            same = both[both["content_hash"] == both["content_hash_prev"]]
            zero_bit = 1  # PageFlag.ZERO
            stability.append(
                {
                    "unchanged_share_of_common_rows": round(len(same) / len(both), 4),
                    # frames an ideal KSM frees counting unchanged rows only, and all rows,
                    # both as a share of all frames of the later snapshot
                    "ideal_saved_unchanged_only": round(
                        ideal_freed(
                            same["frame_id"].to_numpy(),
                            same["content_hash"].to_numpy(),
                            (same["flags"].to_numpy() & zero_bit) != 0,
                        )
                        / kb["frame_id"].nunique(),
                        4,
                    ),
                    "ideal_saved_all_rows": round(
                        ideal_freed(
                            kb["frame_id"].to_numpy(),
                            kb["content_hash"].to_numpy(),
                            (kb["flags"].to_numpy() & zero_bit) != 0,
                        )
                        / kb["frame_id"].nunique(),
                        4,
                    ),
                }
            )
        racy = int(np.count_nonzero(last_pages.column("flags").to_numpy() & 8))
        print(
            json.dumps(
                {
                    "trace": name,
                    "last_snapshot": {
                        k: last[k]
                        for k in (
                            "pages",
                            "frames",
                            "distinct_hashes",
                            "zero_pages",
                            "zero_frames",
                            "naive_saved_fraction",
                            "ideal_saved_fraction",
                            "fork_shared_pages",
                            "within_process_saved_pages",
                            "cross_process_saved_pages",
                            "zero_pfn_pages",
                        )
                    },
                    "ideal_saved_fraction_range": [
                        min(s["ideal_saved_fraction"] for s in summary["snapshots"]),
                        max(s["ideal_saved_fraction"] for s in summary["snapshots"]),
                    ],
                    "pages_per_process_sorted": sorted(counts.tolist()),
                    "racy_rows_last_snapshot": racy,
                    "stability": stability,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
