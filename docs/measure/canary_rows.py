"""A replay against a canary recording: the rows of docs/live-validation.md's canary tables.

``replay.json`` is ``ksm-planner replay ... --json``; ``CANARY`` an ``observe`` recording of
the real ksmd (``reports/canary/django-preload``, or another run). Printed: the mean of the
predicted and of the real ``pages_sharing`` over the second half of the recording (the
prediction sampled as a step function at the recording's samples) and their ratio less one;
both at the end; full scans, ksmd CPU seconds and copy-on-write breaks per second
(``cow_ksm``) of each. The review's own figure (``whatif --observed``) is the median of the
per-sample ratios instead of the ratio of the means, so the two differ by a few tenths.

Run from the repository root: ``.venv/bin/python docs/measure/canary_rows.py replay.json
CANARY``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np

from planner.engine.costfit import ksmd_window
from planner.trace.recording import read_observed


def score(d: dict[str, Any], canary: str) -> dict[str, float]:
    """A replay's JSON ``d`` against the recording ``canary``: the figures :func:`main` prints."""
    grid = d["grid"]
    t = np.array([r["t_s"] for r in grid])
    sharing = np.array([r["pages_sharing"] for r in grid])
    c = read_observed(canary).counters
    on = c[c["run"] == 1]
    ot = on.index.to_numpy() - on.index[0]
    real = on["pages_sharing"].to_numpy()
    half = ot >= ot[-1] / 2
    pred = sharing[np.searchsorted(t, ot[half], side="right") - 1]
    cow = on["cow_ksm"].to_numpy()
    real_cow = (cow[-1] - cow[0]) / (ot[-1] - ot[0])
    # copy-on-write over the second half too, as the review's validation scores it
    mid = ot[half][0]
    real_cow_half = (cow[-1] - cow[half][0]) / (ot[-1] - mid)
    model_cow = np.array([r.get("cow_breaks", 0) for r in grid], np.float64)
    i = max(int(np.searchsorted(t, mid, side="right")) - 1, 0)
    model_cow_half = (model_cow[-1] - model_cow[i]) / (t[-1] - t[i]) if t[-1] > t[i] else 0.0
    w = ksmd_window(c)
    return {
        "model_cow_half": float(model_cow_half),
        "kernel_cow_half": float(real_cow_half),
        "model_half": float(pred.mean()),
        "kernel_half": float(real[half].mean()),
        "error": float(pred.mean() / real[half].mean() - 1),
        "model_end": float(sharing[-1]),
        "kernel_end": float(real[-1]),
        "model_full_scans": float(d["final"]["full_scans"]),
        "kernel_full_scans": float(w.full_scans),
        "model_cpu_s": float(d["cost"]["cpu_s"]),
        "kernel_cpu_s": float(w.cpu_s),
        "model_cow_per_s": float(d["cow_breaks_per_s"] or 0.0),
        "kernel_cow_per_s": float(real_cow),
    }


def main() -> None:
    rep, canary = sys.argv[1], sys.argv[2]
    with open(rep) as f:
        r = score(json.load(f), canary)
    print(
        f"pages_sharing, second half: model {r['model_half']:.0f} kernel {r['kernel_half']:.0f} "
        f"({r['error'] * 100:+.1f} %); at the end: model {r['model_end']:.0f} "
        f"kernel {r['kernel_end']:.0f}\n"
        f"full scans: model {r['model_full_scans']:.0f} kernel {r['kernel_full_scans']:.0f}; "
        f"ksmd CPU s: model {r['model_cpu_s']:.2f} kernel {r['kernel_cpu_s']:.2f}; "
        f"copy-on-write /s: model {r['model_cow_per_s']:.0f} kernel {r['kernel_cow_per_s']:.0f} "
        f"({(r['model_cow_per_s'] / r['kernel_cow_per_s'] - 1) * 100:+.0f} %)"
    )


if __name__ == "__main__":
    main()
