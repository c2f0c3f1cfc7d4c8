"""Write a synthetic fleet: N host traces in one directory, for ``whatif``/``report`` on a fleet.

Run from the repository root::

    .venv/bin/python traces/fleet/make_fleet.py --hosts 8 --pages 500000 --out /tmp/fleet8
    .venv/bin/ksm-planner report /tmp/fleet8 --pages-to-scan 10000,100000 --host-mem 64GiB \\
        --out /tmp/fleet8-review

Every host is a :mod:`planner.testing.synth` host whose contents form KSM chains (zero
pages without ``use_zero_pages``, fill patterns, fresh buffers), with its own seed, share of
family-common state and churn (:func:`planner.testing.fleet.fleet_specs`). The traces are
**synthetic**: their manifests say ``"source": "synthetic"`` and carry a ``synthetic`` entry
with the generator and every parameter of the host. Nothing here was captured from a real
machine; the fleets are for tests, benchmarks and trying the fleet review.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=8, help="host traces to write (default 8)")
    ap.add_argument("--pages", type=int, default=500_000, help="pages per host (default 500,000)")
    ap.add_argument("--snapshots", type=int, default=3, help="snapshots per host (default 3)")
    ap.add_argument("--out", type=Path, required=True, help="directory to create")
    args = ap.parse_args(argv)
    if args.out.exists():
        print(f"make_fleet: {args.out} already exists (choose another --out)", file=sys.stderr)
        return 2
    from planner.testing.fleet import write_synthetic_fleet
    from planner.testing.synth import SynthSpec

    spec = SynthSpec.with_chains(args.pages, snapshots=args.snapshots, interval_s=10.0)
    for path in write_synthetic_fleet(args.out, spec, args.hosts):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
