"""Page by page: which pages the model merges and the real kernel does not.

A live comparison (:func:`planner.testing.live.compare.compare_run`) says by how much the
predicted ``pages_sharing`` is off; a run recorded in canary mode (``run_live`` with
``LiveConfig(canary=True)``: ``observe --ksm-pages``) also says which pages the kernel had
merged. :func:`page_truth` joins the two on the run's own pages (the canary follows the same
processes as the capture: same pids, same addresses):

* the **model's** state per page: the capture replayed as the comparison replays it, by the
  reference model (:class:`planner.engine.reference.ReferenceEngine`, the oracle the fast
  engine is held to), and at the end of the observation each row of the last snapshot is
  or is not mapped to a KSM page (:meth:`~planner.engine.reference.ReferenceEngine.ksm_rows`);
* the **kernel's** state per page at the canary's last sample: its last ``merged`` or
  ``unmerged*`` event (``/proc/kpageflags`` KPF_KSM of the page's frame);

or both sides at a time of the minute (``page_truth(..., at_s=S)``, ``tools/live_validate.py
--page-truth-at S``), with the rows a canary growth placed for pages it saw merged joined
through the canary's renaming (``grown_seen``). It describes each class of pages (merged by
both, by the model only, by the kernel only) by what a capture can see of them: the
mapping kind, whether ``fork()`` still shares the frame, whether the three snapshots show
the same content, the content changes and checks the sampler made, how many rows hold the
same content, and what the canary saw happen to them (merges, merges lost with the content
unchanged or changed). docs/live-validation.md (the section "PostgreSQL and Node captured
with sampling, page by page") has what it found.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from planner.engine.rows import PAGE_MASK
from planner.errors import InputDataError
from planner.testing.live.compare import CompareOptions, _kernel_series, replay_setup
from planner.testing.live.protocol import LiveRun

if TYPE_CHECKING:
    import os

    import pandas as pd

    from planner.engine.writes import CanaryRates

#: The classes of :func:`classify`.
CLASSES: Final = ("both", "model_only", "kernel_only", "neither")


def classify(model_ksm: npt.ArrayLike, kernel_ksm: npt.ArrayLike) -> npt.NDArray[np.str_]:
    """Per page: ``both``, ``model_only``, ``kernel_only`` or ``neither``."""
    m = np.asarray(model_ksm, bool)
    k = np.asarray(kernel_ksm, bool)
    out = np.full(m.shape, "neither", dtype="<U11")
    out[m & k] = "both"
    out[m & ~k] = "model_only"
    out[~m & k] = "kernel_only"
    return out


def kernel_page_states(events: pd.DataFrame, page_shift: int = 12) -> pd.DataFrame:
    """Per page the canary followed (index ``(pid, page)``): ``ksm``, its state after the
    last event; ``merges``, ``unmerged_same``, ``unmerged_changed``, the events of each
    kind; ``vma_kind`` (``events`` is ``page_events.parquet``: pid, page_addr, t_s, event,
    vma_kind)."""
    import pandas as pd

    ev = events.sort_values("t_s", kind="stable")
    pages = (ev["page_addr"].to_numpy(np.uint64) >> np.uint64(page_shift)).astype(np.int64)
    df = pd.DataFrame(
        {
            "pid": ev["pid"].to_numpy(np.int64),
            "page": pages,
            "event": ev["event"].astype(str).to_numpy(),
            "vma_kind": ev["vma_kind"].astype(str).to_numpy(),
        }
    )
    g = df.groupby(["pid", "page"], sort=True)
    out = pd.DataFrame(
        {
            "ksm": g["event"].last() == "merged",
            "merges": g["event"].agg(lambda e: int((e == "merged").sum())),
            "unmerged_same": g["event"].agg(lambda e: int((e == "unmerged_same_content").sum())),
            "unmerged_changed": g["event"].agg(lambda e: int((e == "unmerged_changed").sum())),
            "vma_kind": g["vma_kind"].last(),
        }
    )
    return out


@dataclass
class PageTruth:
    """The model's KSM pages against the kernel's, page by page (JSON-ready: ``to_dict``)."""

    run_dir: str
    duration_s: float
    calibrated: bool
    """The replay used the canary's write rates (``CompareOptions.calibrate_writes``)."""
    counts: dict[str, int]
    """Pages of the last snapshot per class (:data:`CLASSES`)."""
    model_ksm_pages: int
    kernel_ksm_pages: int
    kernel_pages_not_in_trace: int
    """KSM pages of the canary's last sample that the last snapshot has no row for."""
    processes: list[dict[str, Any]]
    """Per process: pid, comm, rows, the model's KSM pages, the kernel's, and per class."""
    classes: dict[str, dict[str, Any]]
    """Per class but ``neither``: what a capture and the canary saw of its pages."""
    model_grown_pages: int = 0
    """Pages the growth model added after the last snapshot (:mod:`planner.engine.growth`;
    left out of the join: their addresses are the model's own)."""
    model_grown_ksm_pages: int = 0
    """Of those, pages mapped to a KSM page at the end (to set against
    ``kernel_pages_not_in_trace``)."""
    at_s: float | None = None
    """The time (the canary's clock, from ksmd's start) both sides are taken at; None: the
    end of the observation."""
    grown_seen: dict[str, int] | None = None
    """The grown rows placed for pages the canary saw merged at new addresses
    (:mod:`planner.engine.canary_growth`), joined with the kernel through the canary's
    renaming: ``rows``, ``model_ksm``, ``kernel_ksm``, ``both``; None: no such row."""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    def summary(self) -> str:
        """A few lines for people."""
        c = self.counts
        at = "" if self.at_s is None else f" at {self.at_s:g} s"
        lines = [
            f"per-page truth{at} ({'canary-calibrated' if self.calibrated else 'trace'} writes): "
            f"model {self.model_ksm_pages:,} KSM pages, kernel {self.kernel_ksm_pages:,}; "
            f"both {c['both']:,}, model only {c['model_only']:,}, kernel only "
            f"{c['kernel_only']:,}"
        ]
        if self.model_grown_pages or self.kernel_pages_not_in_trace:
            lines.append(
                f"  memory not in the capture: kernel {self.kernel_pages_not_in_trace:,} KSM "
                f"pages; model {self.model_grown_ksm_pages:,} KSM pages of the "
                f"{self.model_grown_pages:,} it grew after the last snapshot"
            )
        g = self.grown_seen
        if g:
            lines.append(
                f"  grown rows the canary saw merged: {g['rows']:,}; KSM pages: model "
                f"{g['model_ksm']:,}, kernel {g['kernel_ksm']:,}, both {g['both']:,}"
            )
        for name in ("model_only", "kernel_only"):
            d = self.classes.get(name)
            if d and d["pages"]:
                lines.append(
                    f"  {name}: kinds {d['mapping_kind']}, fork-shared {d['fork_shared']}, "
                    f"same content in every snapshot {d['unchanged_in_snapshots']}, "
                    f"sampler saw a change {d['sampler_saw_change']} "
                    f"(checks/page {d['sampler_checks_per_page']}), never a KSM page in the "
                    f"canary {d['canary_never_ksm']}, canary merges lost same/changed "
                    f"{d['canary_unmerged_same']}/{d['canary_unmerged_changed']}"
                )
        return "\n".join(lines)


def _trace_rows(run: LiveRun, page_shift: int) -> pd.DataFrame:
    """Per (pid, page) of the last snapshot: mapping kind, whether the content is the same
    in every snapshot that has the page, and the sampler's changes and checks summed."""
    import pandas as pd

    from planner.trace.io import open_trace

    ht = open_trace(run.trace_dir).load_host()
    sids = [int(s) for s in ht.snapshot_ids]
    frames: list[pd.DataFrame | pd.Series[Any]] = []
    for i, sid in enumerate(sids):
        pg = ht.pages_of(sid)
        d = pd.DataFrame(
            {
                "pid": pg.column("pid").to_numpy().astype(np.int64),
                "page": (
                    pg.column("page_addr").to_numpy().astype(np.uint64) >> np.uint64(page_shift)
                ).astype(np.int64),
                f"h{i}": pg.column("content_hash").to_pandas(),
            }
        )
        if i == len(sids) - 1:
            d["vma_start"] = pg.column("vma_start").to_numpy().astype(np.int64)
        try:
            pc = ht.page_changes(sid)
        except (KeyError, ValueError):
            pc = None
        if pc is not None and pc.sampled.any():
            d[f"chg{i}"] = pc.content_changes.astype(np.int64)
            d[f"chk{i}"] = pc.content_checks.astype(np.int64)
        frames.append(d.drop_duplicates(["pid", "page"]).set_index(["pid", "page"]))
    last = frames[-1]
    assert isinstance(last, pd.DataFrame)
    rows = last.join(frames[:-1], how="left") if len(frames) > 1 else last
    hs = rows[[f"h{i}" for i in range(len(sids))]]
    rows["unchanged"] = hs.nunique(axis=1, dropna=True) <= 1
    rows["changes"] = rows.filter(regex=r"^chg\d+$").fillna(0).sum(axis=1)
    rows["checks"] = rows.filter(regex=r"^chk\d+$").fillna(0).sum(axis=1)
    mp = ht.mappings.to_pandas()
    mp = mp[mp["snapshot_id"] == sids[-1]][["pid", "start", "kind"]]
    kinds = mp.set_index(["pid", "start"])["kind"].astype(str)
    key = list(zip(rows.index.get_level_values("pid"), rows["vma_start"], strict=True))
    rows["mapping_kind"] = [kinds.get(k, "?") for k in key]
    return rows[["mapping_kind", "unchanged", "changes", "checks"]]


def _describe(sel: pd.DataFrame) -> dict[str, Any]:
    def counts(col: str) -> dict[str, int]:
        vc = sel[col].value_counts()
        return {str(k): int(v) for k, v in vc.items()}

    n = len(sel)
    return {
        "pages": n,
        "mapping_kind": counts("mapping_kind"),
        "fork_shared": int(sel["fork_shared"].sum()),
        "unchanged_in_snapshots": int(sel["unchanged"].sum()),
        "sampler_saw_change": int((sel["changes"] > 0).sum()),
        "sampler_checks_per_page": round(float(sel["checks"].mean()), 2) if n else None,
        "duplicates_median": float(sel["dups"].median()) if n else None,
        "canary_never_ksm": int((sel["merges"] == 0).sum()),
        "canary_merges": int(sel["merges"].sum()),
        "canary_unmerged_same": int(sel["unmerged_same"].sum()),
        "canary_unmerged_changed": int(sel["unmerged_changed"].sum()),
    }


def page_truth(
    run_dir: str | os.PathLike[str] | LiveRun,
    options: CompareOptions | None = None,
    *,
    at_s: float | None = None,
) -> PageTruth:
    """Join the model's per-page KSM state with the kernel's for a canary run (module notes).

    The replay is the comparison's (``options``: alignment, load, cost profile, canary
    calibration), run by the reference model for as long as the observation lasted, or
    until ``at_s`` (seconds from ksmd's start, both clocks): the model's rows are then the
    snapshot it holds at that time, and the kernel's states are its events up to then. The
    rows a canary's growth placed for pages it saw merged at new addresses are joined with
    the kernel through the canary's renaming (``grown_seen``; docs/live-validation.md,
    "Pages at new addresses merge when the canary saw them merge").

    Raises
    ------
    InputDataError
        The run was not recorded in canary mode, or its directory is incomplete.
    """
    import pandas as pd

    from planner.engine.api import derive_input
    from planner.engine.driver import NO_WRITES, Driver
    from planner.engine.reference import ReferenceEngine
    from planner.engine.writes import write_model
    from planner.trace.recording import read_observed

    opts = options or CompareOptions()
    run = run_dir if isinstance(run_dir, LiveRun) else LiveRun.read(run_dir)
    obs = read_observed(run.observe_dir)
    if obs.page_events is None:
        raise InputDataError(
            f"{run.run_dir}: the run has no per-page KSM states",
            hint="record it with tools/live_validate.py --canary (observe --ksm-pages)",
        )
    end_s = _kernel_series(run).end_s
    if at_s is not None and not 0 < at_s <= end_s:
        raise InputDataError(
            f"{run.run_dir}: no per-page truth at {at_s:g} s",
            hint=f"give a time after ksmd's start, at most the observation's {end_s:.1f} s",
        )
    duration_s = end_s if at_s is None else float(at_s)
    s = replay_setup(run, opts, duration_s)
    traced = s.inp.snapshots[s.inp.n_snapshots - 1].keys()
    derived = derive_input(s.inp, s.options, s.canary)  # as the comparison's replay has it
    core = ReferenceEngine(derived.grown, s.knobs)
    inp = derived.written
    model = write_model(inp, enabled=s.options.writes, seed=s.options.write_seed)
    Driver(core, inp, s.knobs, s.options, writes=NO_WRITES if model is None else model).run()

    shift = inp.page_size.bit_length() - 1
    snap = core.snap if core.snap is not None else inp.snapshots[inp.n_snapshots - 1]
    pids = np.array([m.pid for m in inp.mms], np.int64)
    comms = [m.comm or "" for m in inp.mms]
    mm = snap.mm.astype(np.int64)
    _, inv, cnt = np.unique(snap.frame, return_inverse=True, return_counts=True)
    _, hinv, hcnt = np.unique(snap.hash, return_inverse=True, return_counts=True)
    model_ksm = core.ksm_rows()
    grown = ~np.isin(snap.keys(), traced)  # rows the growth model added: not joined
    n_grown, grown_ksm = int(grown.sum()), int(np.count_nonzero(model_ksm[grown]))
    events = obs.page_events
    if at_s is not None:
        events = events[events["t_s"].to_numpy() <= at_s]
    kern = kernel_page_states(events, shift)
    seen = _grown_seen(pids[mm], snap.page, grown, model_ksm, derived.applied, kern)
    keep = ~grown
    mm, model_ksm = mm[keep], model_ksm[keep]
    inv, hinv = inv.reshape(-1)[keep], hinv.reshape(-1)[keep]
    df = pd.DataFrame(
        {
            "pid": pids[mm],
            "page": snap.page[keep].astype(np.int64),
            "comm": [comms[m] for m in mm.tolist()],
            "model_ksm": model_ksm,
            "fork_shared": cnt[inv] > 1,
            "dups": hcnt[hinv],
        }
    ).set_index(["pid", "page"])
    df = df.join(kern, how="left").join(_trace_rows(run, shift), how="left")
    df["ksm"] = df["ksm"].astype("boolean").fillna(False).astype(bool)
    for col in ("merges", "unmerged_same", "unmerged_changed"):
        df[col] = df[col].fillna(0).astype(np.int64)
    df["mapping_kind"] = df["mapping_kind"].fillna("?")
    df["unchanged"] = df["unchanged"].astype("boolean").fillna(True).astype(bool)
    df[["changes", "checks"]] = df[["changes", "checks"]].fillna(0)
    df["cls"] = classify(df["model_ksm"].to_numpy(), df["ksm"].to_numpy())
    counts = {c: int((df["cls"] == c).sum()) for c in CLASSES}
    in_trace = kern.index.isin(df.index)
    procs = []
    for pid, g in df.groupby(level="pid", sort=True):
        procs.append(
            {
                "pid": int(str(pid)),
                "comm": str(g["comm"].iloc[0]),
                "rows": len(g),
                "model_ksm": int(g["model_ksm"].sum()),
                "kernel_ksm": int(g["ksm"].sum()),
                **{c: int((g["cls"] == c).sum()) for c in ("model_only", "kernel_only")},
            }
        )
    return PageTruth(
        run_dir=run.run_dir,
        duration_s=round(end_s, 3),
        calibrated=s.canary is not None,
        counts=counts,
        model_ksm_pages=int(df["model_ksm"].sum()),
        kernel_ksm_pages=int(df["ksm"].sum()),
        kernel_pages_not_in_trace=int((kern["ksm"].to_numpy() & ~in_trace).sum()),
        model_grown_pages=n_grown,
        model_grown_ksm_pages=grown_ksm,
        at_s=at_s,
        grown_seen=seen,
        processes=procs,
        classes={c: _describe(df[df["cls"] == c]) for c in CLASSES if c != "neither"},
        notes=[
            "model: the reference model's rows mapped to a KSM page at the end of the "
            "replay; kernel: KPF_KSM at the canary's last sample (1 s apart)"
            + ("" if at_s is None else f", both at {at_s:g} s")
        ],
    )


def _grown_seen(
    pid: npt.NDArray[np.int64],
    page: npt.NDArray[np.uint64],
    grown: npt.NDArray[np.bool_],
    model_ksm: npt.NDArray[np.bool_],
    canary: CanaryRates | None,
    kern: pd.DataFrame,
) -> dict[str, int] | None:
    """The grown rows placed for pages the canary saw merged, each joined with the kernel's
    state of the page it stands for (:attr:`CanaryRates.renamed_keys`); None: none."""
    import pandas as pd

    pairs = None if canary is None else canary.renamed_keys
    if pairs is None or not pairs[0].size or not grown.any():
        return None
    rows = np.flatnonzero(grown)
    key = (pid[rows].astype(np.uint64) << np.uint64(36)) | page[rows].astype(np.uint64)
    order = np.argsort(pairs[1])
    new, old = pairs[1][order], pairs[0][order]
    at = np.minimum(np.searchsorted(new, key), new.size - 1)
    hit = new[at] == key
    rows, old = rows[hit], old[at[hit]]
    ksm = kern["ksm"]
    kernel = np.zeros(rows.size, bool)
    if len(ksm):
        idx = pd.MultiIndex.from_arrays(
            [(old >> np.uint64(36)).astype(np.int64), (old & PAGE_MASK).astype(np.int64)]
        )
        kernel = ksm.reindex(idx).fillna(False).to_numpy(bool)
    model = model_ksm[rows]
    return {
        "rows": int(rows.size),
        "model_ksm": int(model.sum()),
        "kernel_ksm": int(kernel.sum()),
        "both": int((model & kernel).sum()),
    }


__all__ = ["CLASSES", "PageTruth", "classify", "kernel_page_states", "page_truth"]
