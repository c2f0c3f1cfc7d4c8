"""Which pages the real ksmd merges again and again, from its trace events (root).

Used for docs/live-validation.md, "The breaks of rows that never stay merged". Runs a
command (a live workload under the protocol, e.g. ``tools/live_validate.py --workload
postgres --canary ...``) while the kernel's ``ksm:ksm_merge_with_ksm_page``,
``ksm:ksm_remove_rmap_item`` and ``ksm:ksm_start_scan`` events are recorded, then says per
``rmap_item`` (one scanned page: the events carry no address) how often it merged: over the
span of the full scans, merges per second, re-merges per second (every merge of an item but
its first: in a steady state each follows a copy-on-write break, as ``cow_ksm`` counts
them), the items merged at least ``--hot`` times and their share of the re-merges, how many
full scans lie between two merges of such an item, and whether their merges were into a KSM
page that existed (``ksm pfn``: a stable-tree merge) or the first of a pair (an unstable
merge making a new KSM page).

``ksm_remove_rmap_item`` fires when an item leaves the stable tree (ksmd found its page no
longer the KSM page: a break, or the page gone); its count is printed beside the merges. A
slab may hand a freed item's address to a new one; over a minute of a workload whose pages
stay mapped that is rare.

tracefs is mounted at ``/sys/kernel/tracing`` for the run if it is not mounted yet (and
unmounted afterwards); pointers are printed unhashed during the run (``options/hash-ptr``),
and the events, the option and the buffer size are put back at the end.

Run from the repository root::

    sudo .venv/bin/python docs/measure/merge_trace.py --out /var/tmp/merges.txt -- \\
        .venv/bin/python tools/live_validate.py --workload postgres --sample-ms 100 --canary \\
        --calibrate-writes --alignment time --out /var/tmp/pglive

or summarize a recording again: ``docs/measure/merge_trace.py --summarize FILE``.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import sys
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tracing import tracefs

if TYPE_CHECKING:
    from collections.abc import Iterable

EVENTS = ("ksm_merge_with_ksm_page", "ksm_remove_rmap_item", "ksm_start_scan")
LINE = re.compile(r"(\d+\.\d+): (ksm_\w+): (.*)")
MERGE = re.compile(r"(ksm )?pfn (\d+) rmap_item (\w+) mm (\w+) error (-?\d+)")
ITEM = re.compile(r"rmap_item (\w+)")


def record(cmd: list[str], out: Path, buffer_kb: int) -> int:
    """Run ``cmd`` with the events on, their text copied to ``out``; the command's status."""
    with tracefs() as tr:
        options = tr / "options" / "hash-ptr"
        saved = {"hash-ptr": options.read_text(), "buffer": (tr / "buffer_size_kb").read_text()}
        try:
            options.write_text("0")
            (tr / "buffer_size_kb").write_text(str(buffer_kb))
            (tr / "trace").write_text("")
            for e in EVENTS:
                (tr / "events" / "ksm" / e / "enable").write_text("1")
            with out.open("w") as sink:
                reader = subprocess.Popen(["cat", str(tr / "trace_pipe")], stdout=sink)
                try:
                    status = subprocess.run(cmd, check=False).returncode
                finally:
                    for e in EVENTS:
                        (tr / "events" / "ksm" / e / "enable").write_text("0")
                    reader.terminate()
                    reader.wait(timeout=10)
        finally:
            options.write_text(saved["hash-ptr"].strip())
            (tr / "buffer_size_kb").write_text(saved["buffer"].split()[0])
    return status


def summarize(lines: Iterable[str], hot: int = 5) -> dict[str, Any]:
    """The figures of the module notes from the events' text."""
    merges: dict[str, list[float]] = collections.defaultdict(list)
    kinds: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    removed: set[str] = set()
    removes = failed = 0
    scans: list[float] = []
    for line in lines:
        m = LINE.search(line)
        if m is None:
            continue
        t, event, rest = float(m.group(1)), m.group(2), m.group(3)
        if event == "ksm_start_scan":
            scans.append(t)
        elif event == "ksm_merge_with_ksm_page":
            mm = MERGE.search(rest)
            if mm is None:
                continue
            if int(mm.group(5)) != 0:
                failed += 1
                continue
            merges[mm.group(3)].append(t)
            kinds[mm.group(3)]["stable" if mm.group(1) else "unstable"] += 1
        elif event == "ksm_remove_rmap_item":
            it = ITEM.search(rest)
            if it is not None:
                removed.add(it.group(1))
                removes += 1
    if len(scans) < 3:
        return {"error": "fewer than three full scans recorded"}
    span_s = scans[-1] - scans[1]  # from the end of the first full scan
    period_s = span_s / (len(scans) - 2)
    inside = {k: [t for t in v if scans[1] <= t <= scans[-1]] for k, v in merges.items()}
    total = sum(len(v) for v in inside.values())
    again = sum(max(len(v) - 1, 0) for v in inside.values())
    hot_items = {k: v for k, v in inside.items() if len(v) >= hot}
    gaps = sorted((b - a) / period_s for v in hot_items.values() for a, b in pairwise(v))
    hot_kinds: collections.Counter[str] = collections.Counter()
    for k in hot_items:
        hot_kinds.update(kinds[k])

    def pct(q: float) -> float | None:
        return round(gaps[int(q * (len(gaps) - 1))], 1) if gaps else None

    return {
        "full_scans": len(scans) - 2,
        "span_s": round(span_s, 1),
        "full_scan_s": round(period_s, 3),
        "items_merged": sum(1 for v in inside.values() if v),
        "merges_per_s": round(total / span_s, 1),
        "re_merges_per_s": round(again / span_s, 1),
        "failed_merges": failed,
        f"items_merged_{hot}_times_or_more": len(hot_items),
        "their_re_merges_per_s": round(sum(len(v) - 1 for v in hot_items.values()) / span_s, 1),
        "their_merges": dict(hot_kinds),
        "full_scans_between_their_merges_p10_p50_p90": [pct(0.1), pct(0.5), pct(0.9)],
        "left_stable_tree": removes,
        "items_that_left_it": len(removed),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, help="where the events' text goes (recording)")
    ap.add_argument("--summarize", type=Path, help="summarize a recording; run nothing")
    ap.add_argument("--hot", type=int, default=5, help="merges that make an item hot")
    ap.add_argument("--buffer-kb", type=int, default=65536, help="trace buffer per CPU")
    ap.add_argument("cmd", nargs="*", help="the command to run while recording (after --)")
    args = ap.parse_args()
    if args.summarize is not None:
        with args.summarize.open() as f:
            print(json.dumps(summarize(f, args.hot), indent=1))
        return 0
    if args.out is None or not args.cmd:
        ap.error("give --out FILE and a command after --, or --summarize FILE")
    status = record(args.cmd, args.out, args.buffer_kb)
    with args.out.open() as f:
        print(json.dumps(summarize(f, args.hot), indent=1))
    return status


if __name__ == "__main__":
    sys.exit(main())
