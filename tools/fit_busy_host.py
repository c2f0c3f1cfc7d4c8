"""Fit the cost profile's busy-host terms on recorded live runs (docs/busy-host.md §2-3).

For every candidate ``busy_page_factor`` (and ``sched_contention``), each run recorded by
``tools/live_validate.py`` is scored again (:func:`planner.testing.live.compare.compare_run`,
as ``--compare-only`` does) with the base profile carrying those two terms, and the
candidates are ranked by the root mean square of the log errors of ksmd's CPU seconds and
full scans over the first minute (both metrics, every run). No kernel and no root needed::

    .venv/bin/python tools/fit_busy_host.py RUN_DIR... --factor 2.5,3,3.5 --contention 0.3

The JSON document on stdout holds every candidate's score (both metrics, and the CPU
alone), every run's two errors, and the best candidate. Exit status: 0 done, 2 bad options
or an unreadable run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from planner.engine.cost import CostProfile, profile_for_trace
from planner.errors import PlannerError, UsageProblem
from planner.testing.live.compare import Alignment, CompareOptions, compare_run
from planner.testing.live.protocol import LiveRun
from planner.trace.io import open_trace

if TYPE_CHECKING:
    from collections.abc import Iterable

    from planner.engine.api import EngineName

METRICS = ("ksmd_cpu_s_first_window", "full_scans_first_window")


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _rms(values: list[float]) -> float:
    return math.sqrt(sum(v * v for v in values) / len(values)) if values else math.nan


def base_profile(runs: Iterable[LiveRun]) -> CostProfile:
    """The profile a replay of every run's trace would use without ``--cost-profile``: the
    one shipped for the CPU their captures ran on (:func:`profile_for_trace`). Runs whose
    traces would take different profiles have no common base."""
    chosen: dict[str, CostProfile] = {}
    for run in runs:
        prof = profile_for_trace(None, open_trace(run.trace_dir).host_cpu)
        chosen.setdefault(prof.name, prof)
    if len(chosen) != 1:
        raise UsageProblem(
            f"the runs' traces take different shipped cost profiles ({', '.join(sorted(chosen))})",
            hint="fit runs of one CPU at a time, or give the base with --cost-profile",
        )
    return next(iter(chosen.values()))


def score(
    runs: dict[str, LiveRun],
    profile: CostProfile,
    *,
    alignment: str = "time",
    engine: str = "vectorized",
    calibrate_writes: bool = False,
) -> dict[str, Any]:
    """Every run's CPU and full-scan errors under ``profile``, and the two RMS log errors."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "profile.json"
        path.write_text(json.dumps(profile.to_dict()))
        per_run: dict[str, Any] = {}
        logs: list[float] = []
        cpu_logs: list[float] = []
        for name, run in runs.items():
            opts = CompareOptions(
                alignment=cast("Alignment", alignment),
                engine=cast("EngineName", engine),
                cost_profile=str(path),
                calibrate_writes=calibrate_writes,
            )
            metrics = compare_run(run, opts).to_dict()["metrics"]
            out: dict[str, Any] = {}
            for m in METRICS:
                k, v = metrics[m]["kernel"], metrics[m]["model"]
                out[m] = {"kernel": k, "model": v, "error": metrics[m]["error"]}
                if k and v:
                    lg = math.log(v / k)
                    logs.append(lg)
                    if m == METRICS[0]:
                        cpu_logs.append(lg)
            per_run[name] = out
    return {"rms_log": _rms(logs), "rms_log_cpu": _rms(cpu_logs), "runs": per_run}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    ap.add_argument("--factor", type=_floats, required=True, help="busy_page_factor values")
    ap.add_argument("--contention", type=_floats, default=None,
                    help="sched_contention values (default: the base profile's)")  # fmt: skip
    ap.add_argument(
        "--cost-profile",
        help="base profile (default: the one shipped for the runs' CPU, as replay chooses it)",
    )
    ap.add_argument("--alignment", default="time", choices=("time", "last"))
    ap.add_argument("--engine", default="vectorized", choices=("vectorized", "reference"))
    ap.add_argument(
        "--calibrate-writes",
        action="store_true",
        help="replay each run with its own canary's write rates (runs recorded with a "
        "canary: --canary), so that merges the model keeps and the kernel lost to writes "
        "no snapshot shows do not count against the cost",
    )
    args = ap.parse_args(argv)
    try:
        runs = {str(d): LiveRun.read(d) for d in args.runs}
        base = (
            CostProfile.load(args.cost_profile)
            if args.cost_profile
            else base_profile(runs.values())
        )
    except PlannerError as exc:
        sys.stderr.write(f"fit_busy_host: error: {exc.one_line()}\n")
        return 2
    contentions = args.contention or [base.sched_contention]
    candidates: list[dict[str, Any]] = []
    for c in contentions:
        for f in args.factor:
            t = time.monotonic()
            prof = replace(base, busy_page_factor=f, sched_contention=c)
            try:
                res = score(
                    runs,
                    prof,
                    alignment=args.alignment,
                    engine=args.engine,
                    calibrate_writes=args.calibrate_writes,
                )
            except PlannerError as exc:
                sys.stderr.write(f"fit_busy_host: error: {exc.one_line()}\n")
                return 2
            candidates.append({"busy_page_factor": f, "sched_contention": c, **res})
            sys.stderr.write(
                f"[fit] factor {f:g} contention {c:g}: rms log {res['rms_log']:.4f} "
                f"(cpu {res['rms_log_cpu']:.4f}), {time.monotonic() - t:.0f} s\n"
            )
    best = min(candidates, key=lambda d: d["rms_log"])
    doc = {
        "format": "ksm-planner-busy-host-fit",
        "base": base.name,
        "runs": [str(d) for d in args.runs],
        "metrics": METRICS,
        "alignment": args.alignment,
        "calibrate_writes": args.calibrate_writes,
        "candidates": candidates,
        "best": {k: best[k] for k in ("busy_page_factor", "sched_contention", "rms_log")},
    }
    sys.stdout.write(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
