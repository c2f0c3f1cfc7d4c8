"""A modelled ksmd as an ``observe`` recording: the "real" ksmd of the cost-fit tests.

The model itself, run with other costs and another share of the CPU than the profile under
test, stands in for the real ksmd: a fit must then recover the costs it was given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from planner.engine.knobs import KsmKnobs
    from planner.engine.result import ReplayResult

#: ksmd's CPU time before the recording starts (the counter never starts at 0 on a host).
RUNTIME_AT_START_NS = 10**9


def ksmd_counters(res: ReplayResult, knobs: KsmKnobs) -> pd.DataFrame:
    """The counters an ``observe`` recording of ``res``'s ksmd holds: one row per full scan
    (``full_scans``, ``pages_scanned``, ``pages_skipped``, ``ksmd_runtime_ns`` and the
    knobs), indexed by ``t_s``, ksmd on from the start."""
    import pandas as pd

    rows = [{"t_s": 0.0, "full_scans": 0, "pages_scanned": 0, "pages_skipped": 0, "cpu_s": 0.0}]
    cpu_s = 0.0
    for s in res.scans:
        cpu_s += s.cpu_s
        c = s.counters
        rows.append(
            {"t_s": s.t_s, "full_scans": s.full_scans, "pages_scanned": c["pages_scanned"],
             "pages_skipped": c["pages_skipped"], "cpu_s": cpu_s}
        )  # fmt: skip
    df = pd.DataFrame(rows).set_index("t_s")
    df["ksmd_runtime_ns"] = (df.pop("cpu_s") * 1e9).round().astype("int64") + RUNTIME_AT_START_NS
    return df.assign(
        run=1, pages_to_scan=knobs.pages_to_scan, sleep_millisecs=knobs.sleep_ms, smart_scan=1
    )
