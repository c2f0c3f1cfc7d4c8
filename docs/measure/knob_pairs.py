"""Canaries at several knob settings, each predicting each: run against knob (issue 10).

Every ``NAME=DIR`` is an ``observe`` recording of the Django sample under KSM
(``reports/canary/record.py``, with ``--pages-to-scan``/``--sleep-ms`` for other settings).
For every ordered pair (calibrating canary C, kernel run K) this replays the trace at K's knobs
for K's duration, calibrated by C::

    ksm-planner replay TRACE --pages-to-scan N --sleep-ms S --duration D --observed C --json

and scores it against K as ``canary_rows.py`` does (``pages_sharing`` over K's second half,
full scans, ksmd CPU, copy-on-write per second). It first prints each canary's own levels: the
mean ``pages_sharing`` over fixed windows of ksmd's time (36-72 s, the second half of a 72 s
run, and 75-150 s), so that canaries of one setting show the run-to-run spread and canaries
of two settings the knob's effect. Replays are kept in ``--out`` (``C__K.json``; an existing
file is scored again, not replayed, unless ``--again``). Run from the repository root::

    .venv/bin/python docs/measure/knob_pairs.py --out /var/tmp/pairs \\
        ship=reports/canary/django-preload k100=/var/tmp/ksm-planner-live/knobs-100-a ...
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from canary_rows import score

from planner.engine.costfit import ksmd_window
from planner.trace.recording import read_observed

WINDOWS_S = ((36.0, 72.0), (75.0, 150.0))


def settings(canary: Path) -> tuple[int, int, float]:
    """(pages_to_scan, sleep_millisecs, duration in whole seconds) of a recording."""
    doc = json.loads((canary / "observe.json").read_text())
    knobs = doc["knobs_at_start"]
    return int(knobs["pages_to_scan"]), int(knobs["sleep_millisecs"]), round(doc["duration_s"])


def levels(canary: Path) -> str:
    """A canary's own figures: mean ``pages_sharing`` per window, full scans, CPU, CoW/s."""
    c = read_observed(str(canary)).counters
    on = c[c["run"] == 1]
    t = on.index.to_numpy() - on.index[0]
    sharing = on["pages_sharing"].to_numpy()
    means = []
    for lo, hi in WINDOWS_S:
        sel = (t >= lo) & (t < hi)
        means.append(f"{sharing[sel].mean():.0f}" if sel.sum() >= 0.8 * (hi - lo) else "-")
    cow = on["cow_ksm"].to_numpy()
    w = ksmd_window(c)
    return (
        " | ".join(means) + f" | {w.full_scans} | {w.cpu_s:.2f} | "
        f"{(cow[-1] - cow[0]) / (t[-1] - t[0]):.0f}"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("canaries", nargs="+", metavar="NAME=DIR")
    p.add_argument("--trace", default="traces/django-preload")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--again", action="store_true", help="replay even where a JSON exists")
    p.add_argument("--only-to", default=None, help="only kernel runs of these names (comma)")
    p.add_argument(
        "--planner",
        default=f"{sys.executable} -m planner",
        help="the command that runs ksm-planner (e.g. a patched model, for an experiment)",
    )
    args = p.parse_args()
    canaries = dict(item.split("=", 1) for item in args.canaries)
    args.out.mkdir(parents=True, exist_ok=True)
    print("| canary | knobs | mean pages_sharing 36-72 s | 75-150 s | full scans | ksmd CPU s "
          "| cow_ksm /s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, d in canaries.items():
        n, s, dur = settings(Path(d))
        print(f"| {name} | {n} pages / {s} ms, {dur:.0f} s | {levels(Path(d))} |")
    print()
    print("| calibrated by → kernel run | knobs | pages_sharing 2nd half, model / kernel | error "
          "| full scans | ksmd CPU s | copy-on-write /s "
          "| copy-on-write /s, 2nd half |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    targets = args.only_to.split(",") if args.only_to else list(canaries)
    for kname in targets:
        n, s, dur = settings(Path(canaries[kname]))
        for cname, cdir in canaries.items():
            js = args.out / f"{cname}__{kname}.json"
            if args.again or not js.exists():
                cmd = [
                    *args.planner.split(), "replay", args.trace,
                    "--pages-to-scan", str(n), "--sleep-ms", str(s), "--duration", str(dur),
                    "--observed", cdir, "--json",
                ]  # fmt: skip
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    print(f"{cname} → {kname}: replay failed: {out.stderr.strip()}")
                    continue
                js.write_text(out.stdout)
            r = score(json.loads(js.read_text()), canaries[kname])
            cow_err = r["model_cow_per_s"] / r["kernel_cow_per_s"] - 1
            half_err = r["model_cow_half"] / r["kernel_cow_half"] - 1
            print(
                f"| {cname} → {kname} | {n} / {s} | {r['model_half']:.0f} / "
                f"{r['kernel_half']:.0f} | **{r['error'] * 100:+.1f} %** | "
                f"{r['model_full_scans']:.0f} ({r['kernel_full_scans']:.0f}) | "
                f"{r['model_cpu_s']:.2f} ({r['kernel_cpu_s']:.2f}) | "
                f"{r['model_cow_per_s']:.0f} ({r['kernel_cow_per_s']:.0f}, "
                f"{cow_err * 100:+.0f} %) | {r['model_cow_half']:.0f} ({r['kernel_cow_half']:.0f}, "
                f"{half_err * 100:+.0f} %) |",
                flush=True,
            )
    errors = []
    for js in sorted(args.out.glob("*__*.json")):
        cname, kname = js.stem.split("__")
        if cname != kname and cname in canaries and kname in targets:
            errors.append(score(json.loads(js.read_text()), canaries[kname])["error"])
    if errors:
        e = np.abs(np.array(errors))
        print(f"\ncross pairs: {len(e)}, |error| max {e.max() * 100:.1f} %, "
              f"mean {e.mean() * 100:.1f} %")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
