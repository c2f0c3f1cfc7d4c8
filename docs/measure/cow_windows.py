"""Copy-on-write and merged pages, window by window: a canary's kernel against the replay.

Replays a trace as ``whatif --observed CANARY`` does (the canary calibrates the cost profile
and the write rates) at the canary's knobs, or at the knobs given, for ``--duration``
seconds, and prints per window of ``--bin-s`` seconds since ksmd started: the kernel's
``cow_ksm`` breaks a second and the replay's (its cumulative breaks on the time grid,
``GridSeries.cow_breaks``), and ``pages_sharing`` of each at the window's end. With
``--no-canary`` the trace's own writes alone are replayed (the canary still gives the
kernel's columns). Used by docs/live-validation.md, "Copy-on-write weighed on the second
half: tried and left".

Run from the repository root::

    .venv/bin/python docs/measure/cow_windows.py traces/django-nopreload \\
        reports/canary/django-nopreload --set smart_scan=0
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from planner.engine import ReplayOptions
from planner.policy import preset
from planner.trace.recording import read_observed
from planner.whatif import InlineExecutor, KnobGrid, run_whatif


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("trace")
    p.add_argument("canary")
    p.add_argument("--duration", type=float, default=72.0, help="seconds replayed")
    p.add_argument("--bin-s", type=float, default=5.0)
    p.add_argument("--no-canary", action="store_true", help="replay without the canary")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KNOB=VALUE",
        help="a knob of the replay (default: pages_to_scan and sleep_ms of the canary)",
    )
    args = p.parse_args()
    obs = read_observed(args.canary)
    knobs = obs.provenance.get("knobs", {}) if isinstance(obs.provenance, dict) else {}
    grid: dict[str, int | bool] = {
        "pages_to_scan": int(knobs.get("pages_to_scan", 100)),
        "sleep_ms": int(knobs.get("sleep_millisecs", 20)),
    }
    for item in args.set:
        name, _, text = item.partition("=")
        grid[name] = bool(int(text)) if name == "smart_scan" else int(text)
    res = run_whatif(
        args.trace,
        policy_sets=[preset("prctl-all")],
        grid=KnobGrid.from_mapping(grid),
        replay_options=ReplayOptions(duration_s=args.duration),
        observed=None if args.no_canary else args.canary,
        executor=InlineExecutor(),
    )
    g = res.scenarios[0].hosts[0].timeline.grid
    gt, gc, gp = np.array(g.t_s), np.array(g.cow_breaks), np.array(g.pages_sharing)
    c = obs.counters
    on = c[c["run"] == 1]
    t = on.index.to_numpy(np.float64) - on.index[0]

    def step(values: np.ndarray, x: float) -> float:
        return float(values[max(int(np.searchsorted(gt, x, side="right")) - 1, 0)])

    print(f"knobs {grid}; windows of {args.bin_s:g} s since ksmd started")
    print("| window s | kernel cow_ksm /s | model /s | kernel pages_sharing | model |")
    print("|---|---|---|---|---|")
    lo, end = 0.0, min(float(t[-1]), float(gt[-1]))
    while lo < end - 1.0:  # (the last window may be shorter)
        hi = min(lo + args.bin_s, end)
        kc = (np.interp(hi, t, on["cow_ksm"]) - np.interp(lo, t, on["cow_ksm"])) / (hi - lo)
        mc = (step(gc, hi) - step(gc, lo)) / (hi - lo)
        ks = np.interp(hi, t, on["pages_sharing"])
        print(f"| {lo:.0f}-{hi:.0f} | {kc:.1f} | {mc:.1f} | {ks:.0f} | {step(gp, hi):.0f} |")
        lo = hi
    return 0


if __name__ == "__main__":
    sys.exit(main())
