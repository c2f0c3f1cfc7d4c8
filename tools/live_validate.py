"""Hold the planner to the real ksmd on live workloads: run, replay, compare, report as JSON.

Run as root from the repository root (KSM is host-global: the run takes the project's KSM
lease and refuses while another process uses KSM)::

    .venv/bin/python tools/live_validate.py --workload all --runs 2 --out live-runs/baseline

Each run starts the workload under KSM with ksmd off and its load outside KSM, warms up,
captures it (3 snapshots 2 s apart), switches ksmd on at 1000 pages / 20 ms, records what
the real ksmd does for 60 s, stops everything and restores KSM; then the capture is replayed
with the same knobs and the prediction is scored (docs/live-validation.md). The JSON
document on stdout (and in ``OUT/report.json``) holds every comparison, the host's load
during each run, the runtimes, and per workload the errors of every run and the
run-to-run spread of the kernel's own figures.

``--record-only`` records without scoring (a run recorded in a slow guest is scored on
the host). Recorded runs can be scored again without the kernel (e.g. after a model change)::

    .venv/bin/python tools/live_validate.py --compare-only live-runs/baseline/*/

A run recorded with ``--canary`` can be joined page by page with the model
(``--page-truth``: which pages the model merges and the kernel did not, and what the capture
saw of them; :mod:`planner.testing.live.pages`).

Exit status: 0 done, 1 a run failed (the others are still reported), 2 bad options.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any, cast

from planner.errors import PlannerError, UsageProblem
from planner.provenance import HostInfo, tool_version
from planner.testing.live.compare import (
    ALIGNMENTS,
    Alignment,
    CompareOptions,
    HostLoadChoice,
    compare_run,
    report_table,
)
from planner.testing.live.pages import page_truth
from planner.testing.live.protocol import LiveConfig, LiveRun, run_live
from planner.testing.live.workloads import MAIN_WORKLOADS, WORKLOADS, make_params

#: Kernel figures whose run-to-run spread is reported (the noise of the truth itself).
NOISE_FIGURES = (
    "pages_sharing_steady",
    "ksmd_cpu_s_first_window",
    "full_scans_end",
)


def log(msg: str) -> None:
    """Progress on stderr."""
    sys.stderr.write(f"[live {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--workload",
        action="append",
        default=[],
        help=f"one of {', '.join(WORKLOADS)}, or 'all' ({', '.join(MAIN_WORKLOADS)}); repeatable",
    )
    ap.add_argument("--runs", type=int, default=1, help="fresh runs per workload (default 1)")
    ap.add_argument(
        "--out",
        type=Path,
        help="directory of the runs (default /var/tmp/ksm-planner-live/<UTC time>)",
    )
    ap.add_argument("--compare-only", nargs="+", type=Path, metavar="RUN_DIR", default=[],
                    help="score recorded run directories again (no kernel needed)")  # fmt: skip
    ap.add_argument(
        "--record-only",
        action="store_true",
        help="record the runs without scoring them (score them later, elsewhere, with "
        "--compare-only: e.g. runs recorded in a slow guest, docs/measure/softdirty_guest.py)",
    )
    ap.add_argument(
        "--table",
        type=Path,
        metavar="REPORT",
        help="print the runs of a report.json as the rows of docs/live-validation.md's tables",
    )
    ap.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="WORKLOAD.NAME=VALUE",
        help="override a workload parameter, e.g. postgres.clients=8 (JSON value)",
    )
    g = ap.add_argument_group("protocol")
    d = LiveConfig()
    g.add_argument("--pages-to-scan", type=int, default=d.pages_to_scan)
    g.add_argument("--sleep-ms", type=int, default=d.sleep_millisecs)
    g.add_argument("--warmup", type=float, default=d.warmup_s, help="seconds, ksmd off")
    g.add_argument("--snapshots", type=int, default=d.snapshots)
    g.add_argument("--interval", type=float, default=d.interval_s, help="seconds between snapshots")
    g.add_argument(
        "--sample-ms",
        type=float,
        default=d.sample_ms,
        help="capture --sample-ms: what changes between snapshots (default: no sampling)",
    )
    g.add_argument(
        "--canary",
        action="store_true",
        help="observe with --ksm-pages (every page's KSM state, for --calibrate-writes)",
    )
    g.add_argument(
        "--capture-priority", default=d.capture_priority, choices=("idle", "low", "normal")
    )
    g.add_argument(
        "--capture-cpu-budget",
        type=float,
        default=d.capture_cpu_budget,
        help="CPUs the capture may use on average (capture --cpu-budget; 0: unbounded)",
    )
    g.add_argument("--observe", type=float, default=d.observe_s, help="seconds with ksmd on")
    g.add_argument(
        "--lock-wait", type=float, default=900.0, help="seconds to wait for the KSM lock"
    )
    c = ap.add_argument_group("comparison")
    c.add_argument(
        "--alignment",
        default=",".join(ALIGNMENTS),
        help="replay clock alignments to score: time, last or both (default)",
    )
    c.add_argument("--engine", default="vectorized", choices=("vectorized", "reference"))
    c.add_argument("--cost-profile", help="a cost profile of 'ksm-planner calibrate'")
    c.add_argument(
        "--host-load",
        default="recorded",
        help="CPU load the replay gives ksmd: recorded (the trace's, else the run's capture "
        "window; default), observed (the observation window's), idle, or other runnable "
        "tasks per CPU",
    )
    c.add_argument("--first-window", type=float, default=60.0, help="seconds for CPU/full scans")
    c.add_argument(
        "--calibrate-writes",
        action="store_true",
        help="calibrate the write model with the run's canary recording (needs --canary)",
    )
    c.add_argument(
        "--shipped-cost",
        action="store_true",
        help="with --calibrate-writes: keep the shipped cost profile instead of the one "
        "fitted to the canary (the canary's writes alone)",
    )
    c.add_argument(
        "--no-writes",
        action="store_true",
        help="replay the snapshots alone, without the writes sampled between them",
    )
    c.add_argument(
        "--no-growth",
        action="store_true",
        help="hold the pages at the last snapshot, without the growth continued after it",
    )
    c.add_argument(
        "--page-truth",
        action="store_true",
        help="join the model's KSM pages with the canary's page by page (needs --canary; "
        "replays once more with the reference model: about a minute per 16,000 pages)",
    )
    c.add_argument(
        "--page-truth-at",
        action="append",
        type=float,
        default=[],
        metavar="S",
        help="the same join at S seconds after ksmd's start, both sides taken then "
        "(repeatable: the middle of the minute, where the end agrees)",
    )
    return ap.parse_args(argv)


def _params(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in args.param:
        key, sep, raw = item.partition("=")
        wl, dot, name = key.partition(".")
        if not sep or not dot:
            raise UsageProblem(f"--param {item!r} is not WORKLOAD.NAME=VALUE")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        if isinstance(value, list):
            value = tuple(value)
        out.setdefault(wl, {})[name] = value
    return out


def _host_load(text: str) -> HostLoadChoice:
    if text in ("recorded", "observed", "idle"):
        return cast("HostLoadChoice", text)
    try:
        return float(text)
    except ValueError:
        raise UsageProblem(
            f"--host-load {text!r}",
            hint="use recorded, observed, idle or a number of tasks per CPU",
        ) from None


def _compare_all(run: LiveRun | Path, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for al in [a.strip() for a in args.alignment.split(",") if a.strip()]:
        opts = CompareOptions(
            alignment=cast("Alignment", al),  # CompareOptions refuses unknown names
            engine=args.engine,
            cost_profile=args.cost_profile,
            first_window_s=args.first_window,
            calibrate_writes=args.calibrate_writes,
            canary_cost=not args.shipped_cost,
            writes=not args.no_writes,
            growth=not args.no_growth,
            host_load=_host_load(args.host_load),
        )
        cmp = compare_run(run, opts)
        log(cmp.summary())
        out[al] = cmp.to_dict()
        if args.page_truth and "page_truth" not in out:
            try:
                truth = page_truth(run, opts)
            except PlannerError as exc:  # e.g. a run without a canary recording
                log(f"no per-page truth: {exc.one_line()}")
                out["page_truth"] = {"error": exc.one_line()}
            else:
                log(truth.summary())
                out["page_truth"] = truth.to_dict()
        for at_s in args.page_truth_at if "page_truth_at" not in out else []:
            at = out.setdefault("page_truth_at", {})
            try:
                truth = page_truth(run, opts, at_s=at_s)
            except PlannerError as exc:
                log(f"no per-page truth at {at_s:g} s: {exc.one_line()}")
                at[f"{at_s:g}"] = {"error": exc.one_line()}
            else:
                log(truth.summary())
                at[f"{at_s:g}"] = truth.to_dict()
    return out


def _spread(values: list[float | None]) -> dict[str, Any]:
    vals = [float(v) for v in values if v is not None]
    if len(vals) < 2:
        return {"values": vals, "spread": None}
    mean = sum(vals) / len(vals)
    return {
        "values": vals,
        "mean": mean,
        "spread": (max(vals) - min(vals)) / mean if mean else None,
        "max_dev_from_mean": max(abs(v - mean) for v in vals) / mean if mean else None,
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per workload: each metric's error in every run, and the kernel's run-to-run spread."""
    out: dict[str, Any] = {}
    for r in runs:
        if "comparisons" not in r:
            continue
        wl = out.setdefault(r["workload"], {"runs": 0, "errors": {}, "kernel": {}, "host": []})
        wl["runs"] += 1
        obs = r.get("host_load", {}).get("observe", {})
        wl["host"].append(
            {
                k: obs.get(k)
                for k in ("busy_fraction", "procs_running_mean", "loadavg_1m_end", "other_cpu_s")
            }
        )
        for al, cmp in r["comparisons"].items():
            errs = wl["errors"].setdefault(al, {})
            for name, m in cmp["metrics"].items():
                errs.setdefault(name, []).append(
                    {
                        "kernel": m["kernel"],
                        "model": m["model"],
                        "error": m["error"],
                        "within": m["within"],
                    }
                )
        first = next(iter(r["comparisons"].values()))
        for fig in NOISE_FIGURES:
            wl["kernel"].setdefault(fig, []).append(first["kernel"].get(fig))
        wl["kernel"].setdefault("scan_reaching_90", []).append(
            first["metrics"]["scan_reaching_90"]["kernel"]
        )
    for wl in out.values():
        wl["kernel_noise"] = {k: _spread(v) for k, v in wl.pop("kernel").items()}
    return out


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        if args.table is not None:
            try:
                report = json.loads(args.table.read_text())
            except (OSError, ValueError) as exc:
                raise UsageProblem(
                    f"cannot read the report {args.table}: {exc}",
                    hint="give the report.json a run of this tool wrote",
                ) from exc
            sys.stdout.write(report_table(report, args.alignment.split(",")[0].strip()))
            return 0
        params = _params(args)
        names: list[str] = []
        for w in args.workload or ([] if args.compare_only else ["all"]):
            names += list(MAIN_WORKLOADS) if w == "all" else [w]
        for n in names:
            if n not in WORKLOADS:
                raise UsageProblem(f"unknown workload {n!r}", hint=f"use {', '.join(WORKLOADS)}")
        unknown = set(params) - set(names)
        if unknown:
            raise UsageProblem(f"--param for workloads not run: {sorted(unknown)}")
        if args.runs < 1:
            raise UsageProblem("--runs must be at least 1")
        if args.record_only and args.compare_only:
            raise UsageProblem("--record-only records new runs; --compare-only scores old ones",
                               hint="give one of them")  # fmt: skip
        bad = [a for a in args.alignment.split(",") if a.strip() not in ALIGNMENTS]
        if bad:
            raise UsageProblem(f"unknown --alignment {bad}", hint="use time, last or time,last")
        cfg = LiveConfig(
            pages_to_scan=args.pages_to_scan,
            sleep_millisecs=args.sleep_ms,
            warmup_s=args.warmup,
            snapshots=args.snapshots,
            interval_s=args.interval,
            sample_ms=args.sample_ms,
            canary=args.canary,
            capture_priority=args.capture_priority,
            capture_cpu_budget=args.capture_cpu_budget or None,
            observe_s=args.observe,
            lock_wait_s=args.lock_wait,
        )
        wparams = {n: make_params(n, **params.get(n, {})) for n in names}
    except PlannerError as exc:
        sys.stderr.write(f"live_validate: error: {exc.one_line()}\n")
        return 2
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out_root = args.out or Path("/var/tmp/ksm-planner-live") / stamp
    runs: list[dict[str, Any]] = []
    failed = False
    try:
        for d in args.compare_only:
            t = time.monotonic()
            entry: dict[str, Any] = {"run_dir": str(d)}
            try:
                run = LiveRun.read(d)
                entry.update(workload=run.workload["name"], host_load=run.host_load,
                             runtime_s=run.phases_s)  # fmt: skip
                entry["comparisons"] = _compare_all(run, args)
                for part in ("page_truth", "page_truth_at"):
                    if part in entry["comparisons"]:
                        entry[part] = entry["comparisons"].pop(part)
            except PlannerError as exc:
                failed = True
                entry["error"] = exc.one_line()
                log(f"{d}: {exc.one_line()}")
            entry["compare_s"] = round(time.monotonic() - t, 2)
            runs.append(entry)
        for i in range(args.runs):
            for name in names:
                run_dir = out_root / f"{name}-{i + 1}"
                entry = {"workload": name, "run": i + 1, "run_dir": str(run_dir)}
                t = time.monotonic()
                try:
                    run = run_live(name, run_dir, config=cfg, params=wparams[name], say=log)
                    entry.update(host_load=run.host_load, runtime_s=run.phases_s,
                                 load=run.load, events=run.events)  # fmt: skip
                    if not args.record_only:
                        t_cmp = time.monotonic()
                        entry["comparisons"] = _compare_all(run, args)
                        for part in ("page_truth", "page_truth_at"):
                            if part in entry["comparisons"]:
                                entry[part] = entry["comparisons"].pop(part)
                        entry["compare_s"] = round(time.monotonic() - t_cmp, 2)
                except PlannerError as exc:
                    failed = True
                    entry["error"] = exc.one_line()
                    log(f"{name} run {i + 1} failed: {exc.one_line()}")
                entry["wall_s"] = round(time.monotonic() - t, 1)
                runs.append(entry)
    except KeyboardInterrupt:
        log("interrupted; everything started was stopped and KSM restored")
        return 130
    report = {
        "format": "ksm-planner-live-report",
        "tool_version": tool_version(),
        "host": HostInfo.collect().to_dict(),
        "created_utc": dt.datetime.now(dt.UTC).isoformat(),
        "config": cfg.to_dict(),
        "runs": runs,
        "summary": summarize(runs),
    }
    text = json.dumps(report, indent=1) + "\n"
    if not args.compare_only or names:
        out_root.mkdir(parents=True, exist_ok=True)
        (out_root / "report.json").write_text(text)
    sys.stdout.write(text)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
