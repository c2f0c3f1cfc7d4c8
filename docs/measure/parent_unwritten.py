"""``ksm-planner`` with the canary's write rates taken off the traced parent processes.

An experiment, not a model: the canary calibration (``planner.engine.writes.with_canary``)
gives every row of a process role its role's rates, and on the Django sample the role is the
``comm`` (``python``) of the gunicorn master and its eight workers alike. The master serves no
request (no CPU over the capture) and its pages see no same-content unmerge in the canaries
(24 in 150 s against 1,500-4,300 per worker, ``canary.parquet``). This runs the command line
with the rates of every process that is the parent of another traced process set to zero, so
that ``docs/measure/knob_pairs.py --planner ".venv/bin/python docs/measure/parent_unwritten.py"``
scores the difference (docs/live-validation.md, "Django canaries at two knob settings").
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import numpy as np

import planner.engine.writes as writes
from planner.cli import main

_with_canary = writes.with_canary


def with_canary(inp: Any, rates: Any) -> Any:
    """:func:`planner.engine.writes.with_canary`, then no rate on the parents' rows."""
    out = _with_canary(inp, rates)
    ppids = {m.ppid for m in out.mms}
    parent = np.array([m.pid in ppids for m in out.mms], bool)
    print(
        f"parent_unwritten: no canary rates for pids {[m.pid for m in out.mms if m.pid in ppids]}",
        file=sys.stderr,
    )
    ws = []
    for k, iw in enumerate(out.writes):
        if iw is None or iw.same_rate_per_s is None:
            ws.append(iw)
            continue
        rate = iw.same_rate_per_s.copy()
        rate[parent[out.snapshots[k].mm]] = 0.0
        ws.append(dataclasses.replace(iw, same_rate_per_s=rate))
    return dataclasses.replace(out, writes=ws)


if __name__ == "__main__":
    writes.with_canary = with_canary  # read at call time by planner.engine.api
    main()
