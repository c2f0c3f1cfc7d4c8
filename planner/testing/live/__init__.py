"""Live validation: hold the planner to the real ksmd on real workloads (docs/live-validation.md).

* :func:`run_live` (:mod:`~planner.testing.live.protocol`) runs a workload under KSM with
  ksmd off, captures it, switches ksmd on and records what it does, under the KSM lease;
* :func:`compare_run` (:mod:`~planner.testing.live.compare`) replays the run's capture with
  the same knobs and scores the prediction (:class:`LiveComparison`, JSON-ready);
* :func:`~planner.testing.live.pages.page_truth` joins the model's KSM pages with a canary
  run's, page by page (which pages the model merges and the kernel did not);
* :mod:`~planner.testing.live.workloads` holds the workloads (PostgreSQL, Node, churn, Django)
  and :mod:`~planner.testing.live.host` the process trees and the host-load monitor.
"""

from planner.testing.live.compare import CompareOptions, LiveComparison, Metric, compare_run
from planner.testing.live.protocol import LiveConfig, LiveRun, run_live
from planner.testing.live.workloads import MAIN_WORKLOADS, WORKLOADS, make_params

__all__ = [
    "MAIN_WORKLOADS",
    "WORKLOADS",
    "CompareOptions",
    "LiveComparison",
    "LiveConfig",
    "LiveRun",
    "Metric",
    "compare_run",
    "make_params",
    "run_live",
]
