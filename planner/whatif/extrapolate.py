"""Fleet extrapolation: from the k replicas of a process group in a trace to N per host.

The method, on the last snapshot of a host (steady state):

1. **Group.** The replicas are the processes of one group (by default the largest set of
   siblings: same parent, same comm -- the workers of a pre-fork server); every other
   process is the *base* (the master, sidecars), present whatever N is.
2. **Subsample.** For ``orders`` random orders of the k replicas and every n = 0..k, take
   the base plus the first n replicas and count, over the pages of those processes,
   ``F(n)`` = distinct physical frames (memory without KSM; fork-shared frames count once)
   and ``U(n)`` = frames left after an *ideal* KSM merged every duplicate the policy makes
   mergeable (:func:`policy_ideal_saved_frames`: frames all of whose mappings are VM_MERGEABLE
   collapse to one frame per content -- per content *and security domain* when merging
   across domains is denied; other frames stay). ``F(n) - U(n)`` is the ideal saving of a
   host with n replicas. Whether a frame is mergeable is decided on the whole snapshot.
3. **Fit** (scipy ``curve_fit``) on the mean curve over the orders: ``F(n) = a + b n``
   (each replica brings its own frames) and the growth of distinct content
   ``U(n) = a + b n + c (1 - (1 - p)^n)``: content unique to each replica grows linearly,
   a pool of ``c`` contents each held by a replica with probability ``p`` saturates
   (:class:`GrowthFit`; Heaps' law ``a + b n^beta`` and plain linear growth are options).
   On the Django sample traces the saturating model predicted the exact ideal at k = 8 from
   n <= 4 within 3 %, Heaps' law overshot by 3-16 %: it lets the growth of content fade
   away, so every replica beyond the trace looks almost free.
   When merging across security domains is denied, the frames merging within domains
   keeps in addition (a content shared by several domains keeps one frame per domain) are
   the difference of the two curves, fitted with the same form and every parameter >= 0
   (:func:`fit_extra`), so that denying never saves more than allowing.
4. **Project** ``ideal_saved(N) = F(N) - U(N)`` and multiply by the replay's *realization
   ratio* (what KSM really merged under the scenario's knobs, at steady state, over the
   ideal of the same processes; done by :mod:`planner.whatif.run`).
5. **Interval** by bootstrap (:func:`scipy.stats.bootstrap`, percentile method): resample
   the contents (each content with all its frames) and the orders with replacement, refit,
   project; the interval is the percentile range of the projections.

A hold-out check refits on n <= k/2 and compares the prediction at k with the exact value,
which says how far the model can be trusted to extrapolate. The bootstrap interval covers
sampling error in the contents and orders only, not the error of the model itself: read it
together with the hold-out error, and distrust projections far beyond k.

Zero-content pages count as one content (KSM without ``use_zero_pages``); the difference
with ``use_zero_pages`` is at most one frame per domain.
"""

from __future__ import annotations

import math
import re
import threading
import warnings
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt

from planner.errors import UsageProblem
from planner.jsonable import detail

if TYPE_CHECKING:
    from planner.engine.prepare import ReplayInput, SnapshotRows

Model = Literal["saturating", "heaps", "linear"]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

#: At most this many replicas are subsampled (bit masks of 64 bits; larger groups are sampled).
MAX_REPLICAS = 62
#: Tolerances of the non-linear fits (scipy ``least_squares``: ``ftol``, ``xtol``, ``gtol``).
#: Far tighter than scipy's 1e-8, so that the fit stops at the optimum itself rather than
#: wherever the optimizer's path (which the CPU's BLAS kernels bend) first came close to it.
FIT_TOLERANCE = 1e-13
#: Held while a fit silences scipy's warnings. ``warnings.catch_warnings`` swaps the process's
#: global filter list and puts back the one it saw on entry, so two fits in threads (a
#: threaded Dask worker, a caller's pool) interleaving would leave "ignore" filters installed
#: for the whole process, or drop a caller's filters. The fits are milliseconds long.
_QUIET_FIT = threading.Lock()


def _line(x: F64, y: F64) -> tuple[float, float]:
    """Least-squares line ``y = a + b x`` as ``(b, a)``, like ``np.polyfit(x, y, 1)``.

    Closed form, summed in a fixed order with correctly rounded sums (:func:`math.fsum`), so
    the result is the same on every CPU (``np.polyfit`` goes through LAPACK, whose kernels
    differ between CPUs in the last bits).
    """
    xs = [float(v) for v in x]
    ys = [float(v) for v in y]
    n = len(xs)
    if n == 0:
        return 0.0, 0.0
    mx = math.fsum(xs) / n
    my = math.fsum(ys) / n
    sxx = math.fsum((u - mx) * (u - mx) for u in xs)
    if sxx == 0:
        return 0.0, my
    sxy = math.fsum((u - mx) * (v - my) for u, v in zip(xs, ys, strict=True))
    b = sxy / sxx
    return b, my - b * mx


#: Exponents up to which :func:`_power` of one base loops in Python (same products).
_FEW_EXPONENTS = 64


def _power(base: Any, n: Any) -> F64:
    """``base ** n`` element-wise; exact-order products when every ``n`` is a whole number >= 0.

    Numbers of replicas are whole numbers: then the power is taken by repeated squaring, each
    step one correctly rounded multiplication, so the result is the same on every CPU
    (``np.power`` dispatches to SIMD code, AVX-512 or not, that differs in the last bit).
    Other exponents fall back to ``np.power``.
    """
    b = np.asarray(base, dtype=float)
    x = np.asarray(n, dtype=float)
    if b.ndim == 0 and x.size <= _FEW_EXPONENTS:
        # one base and a few exponents (a curve fit evaluates its model so tens of thousands
        # of times): the same products taken on Python floats, without numpy's per-call cost
        xs = x.ravel().tolist()
        if all(0 <= v < 2**31 and v == math.floor(v) for v in xs):
            bf = float(b)
            return np.array([_pow_int(bf, int(v)) for v in xs], np.float64).reshape(x.shape)
    if x.size == 0 or not (np.all(x >= 0) and np.all(x == np.floor(x)) and x.max() < 2**31):
        return np.asarray(np.power(b, x), dtype=np.float64)
    e = x.astype(np.int64)
    out = np.ones(np.broadcast(b, e).shape, dtype=np.float64)
    sq = np.broadcast_to(b, out.shape).astype(np.float64)
    e = np.broadcast_to(e, out.shape).copy()
    while np.any(e > 0):
        odd = (e & 1) == 1
        out = np.where(odd, out * sq, out)
        e >>= 1
        sq = sq * sq
    return out


def _pow_int(base: float, n: int) -> float:
    """``base ** n`` for a whole ``n >= 0`` by repeated squaring (as :func:`_power`)."""
    out, sq, e = 1.0, float(base), int(n)
    while e > 0:
        if e & 1:
            out = out * sq
        e >>= 1
        sq = sq * sq
    return out


@dataclass(frozen=True)
class ExtrapolationSpec:
    """How to extrapolate a host's saving to more replicas.

    Parameters
    ----------
    group
        Which processes are the replicas: ``siblings`` (default: the largest set of
        processes with the same parent and comm), ``all``, ``comm:REGEX`` (whole comm),
        ``cmdline:REGEX`` (searched), ``label:KEY=VALUE``, ``rule:NAME`` (the policy rule
        that registered them) or ``pid:1,2,3``.
    replicas
        N, the replicas per host to project the saving to (``None``: only the capacity
        computation uses the fit).
    orders
        Random orders of the replicas averaged per curve.
    n_resamples
        Bootstrap resamples.
    confidence
        Confidence level of the intervals.
    model
        How distinct content grows (:func:`fit_growth`): ``saturating`` (default: unique
        content per replica plus a shared pool that saturates), ``heaps`` (``a + b n^beta``)
        or ``linear``.
    seed
        Seed of the orders and of the bootstrap (results are deterministic).
    """

    group: str = "siblings"
    replicas: int | None = None
    orders: int = 24
    n_resamples: int = 200
    confidence: float = 0.90
    model: Model = "saturating"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.replicas is not None and self.replicas < 1:
            raise UsageProblem(
                f"replicas must be at least 1, got {self.replicas}", hint="give N >= 1"
            )
        if self.orders < 1:
            raise UsageProblem("orders must be at least 1")
        if self.n_resamples < 10:
            raise UsageProblem(
                f"n_resamples {self.n_resamples} is too few for an interval",
                hint="use 10 or more (default 200)",
            )
        if not 0.5 <= self.confidence < 1:
            raise UsageProblem(f"confidence {self.confidence} must be in [0.5, 1)", hint="e.g. 0.9")
        if self.model not in ("saturating", "heaps", "linear"):
            raise UsageProblem(
                f"unknown model {self.model!r}", hint="use saturating, heaps or linear"
            )
        parse_group(self.group)


_GROUP_KINDS = ("siblings", "all", "comm", "cmdline", "label", "rule", "pid")


def parse_group(text: str) -> tuple[str, str]:
    """Split a group selector into ``(kind, argument)``; validate it.

    Examples
    --------
    >>> parse_group("comm:gunicorn.*")
    ('comm', 'gunicorn.*')
    """
    kind, _, arg = text.partition(":")
    kind = kind.strip()
    if kind not in _GROUP_KINDS:
        raise UsageProblem(
            f"unknown group selector {text!r}",
            hint="use siblings, all, comm:REGEX, cmdline:REGEX, label:KEY=VALUE, rule:NAME "
            "or pid:1,2",
        )
    if kind in ("siblings", "all"):
        if arg:
            raise UsageProblem(f"group selector {kind} takes no argument")
        return kind, ""
    if not arg:
        raise UsageProblem(f"group selector {kind}: needs an argument ({kind}:...)")
    if kind in ("comm", "cmdline"):
        try:
            re.compile(arg)
        except re.error as exc:
            raise UsageProblem(
                f"group selector {text!r}: invalid regular expression: {exc}"
            ) from None
    if kind == "label" and "=" not in arg:
        raise UsageProblem(f"group selector {text!r}: use label:KEY=VALUE")
    if kind == "pid":
        try:
            [int(p) for p in arg.split(",")]
        except ValueError:
            raise UsageProblem(f"group selector {text!r}: pids must be integers") from None
    return kind, arg


def select_group(inp: ReplayInput, selector: str) -> tuple[list[int], list[int]]:
    """The replica mms and the base mms among the processes of the last snapshot.

    Raises
    ------
    UsageProblem
        The selector selects no process of this host.
    """
    kind, arg = parse_group(selector)
    present = inp.deltas[-1].layout.present.tolist() if inp.deltas else []
    mms = [inp.mms[m] for m in present]
    group: list[int]
    if kind == "siblings":
        families: dict[tuple[int, str | None], list[int]] = {}
        for m in mms:
            if m.parent_mm is not None:
                families.setdefault((m.parent_mm, m.comm), []).append(m.mm)
        best = max(families.values(), key=len, default=[])
        group = best if len(best) >= 2 else [m.mm for m in mms]
    elif kind == "all":
        group = [m.mm for m in mms]
    elif kind == "comm":
        rx = re.compile(arg)
        group = [m.mm for m in mms if m.comm is not None and rx.fullmatch(m.comm)]
    elif kind == "cmdline":
        rx = re.compile(arg)
        group = [m.mm for m in mms if m.info.cmdline is not None and rx.search(m.info.cmdline)]
    elif kind == "label":
        key, _, value = arg.partition("=")
        group = [m.mm for m in mms if m.info.labels.get(key) == value]
    elif kind == "rule":
        group = [m.mm for m in mms if m.registration.rule == arg]
    else:
        pids = {int(p) for p in arg.split(",")}
        group = [m.mm for m in mms if m.pid in pids]
    if not group:
        raise UsageProblem(
            f"extrapolation group {selector!r} selects no process of host {inp.host}",
            hint="pick another --group (siblings, comm:REGEX, label:KEY=VALUE, rule:NAME, pid:...)",
        )
    base = [m for m in present if m not in set(group)]
    return sorted(group), base


# --------------------------------------------------------------------------- the ideal


@dataclass(frozen=True)
class _Frames:
    """One row per distinct frame of a snapshot (the processes given)."""

    frame: npt.NDArray[np.uint64]
    key: I64  # content key code: (domain, hash), or the hash alone with ``by_hash``
    dom: I64  # domain code of the frame (0 without domains)
    freeable: npt.NDArray[np.bool_]  # every mapping of the frame is VM_MERGEABLE
    anchor: npt.NDArray[np.bool_]  # not freeable, but some mapping is: it can be the KSM page
    zero: npt.NDArray[np.bool_]
    mask: npt.NDArray[np.uint64]  # replicas mapping the frame (bit i = replica i)
    base: npt.NDArray[np.bool_]  # a base process maps the frame


def _pair_codes(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
    """A code per position: the rank of its ``(a, b)`` among the distinct pairs (the inverse
    of ``np.unique`` of the stacked pairs, without its structured copies: 16 M pairs take
    ~0.4 GB here, 2.4 GB there)."""
    order = np.lexsort((b, a))
    a_s, b_s = a[order], b[order]
    new = np.ones(order.size, bool)
    new[1:] = (a_s[1:] != a_s[:-1]) | (b_s[1:] != b_s[:-1])
    del a_s, b_s
    codes = np.empty(order.size, np.int64)
    codes[order] = np.cumsum(new) - 1
    return codes


def _frames(
    rows: SnapshotRows,
    *,
    domain_of_mm: npt.NDArray[np.int64] | None,
    bit_of_mm: npt.NDArray[np.int64] | None = None,
    keep: npt.NDArray[np.bool_] | None = None,
    by_hash: bool = False,
    sparse_keys: bool = False,
) -> _Frames:
    """The frames of ``rows`` (of the ``keep`` rows), each with its content key: the rank of
    its content (of its (domain, content) pair) among the frames', or, with ``sparse_keys``
    where the rows have their content ids (rebuilt from deltas), the content id itself (or
    a code of the (domain, id) pair), which spares a sort of every frame's hash: a caller
    that only counts per key takes it (:func:`policy_ideal_saved_frames`); the growth fit,
    which draws keys, needs them dense."""
    if keep is None:  # every row: no selection copied
        order = np.argsort(rows.frame, kind="stable")
        fs = rows.frame[order]
        idx = order
    else:
        sel = np.flatnonzero(keep)
        order = np.argsort(rows.frame[sel], kind="stable")
        fs = rows.frame[sel][order]
        idx = sel[order]
        del sel
    if fs.size == 0:
        e64 = np.empty(0, np.int64)
        eb = np.empty(0, bool)
        return _Frames(np.empty(0, np.uint64), e64, e64, eb, eb, eb, np.empty(0, np.uint64), eb)
    start = np.ones(fs.size, bool)
    start[1:] = fs[1:] != fs[:-1]
    first = np.flatnonzero(start)
    del start
    frames = fs[first]
    del fs  # (large hosts: every array of all rows is dropped as soon as it is used)
    elig = rows.eligible[idx].astype(np.int8)
    freeable = np.minimum.reduceat(elig, first).astype(bool)
    anchor = np.maximum.reduceat(elig, first).astype(bool) & ~freeable
    del elig
    head = idx[first]
    if bit_of_mm is None:
        del idx, order
    content = rows.content if sparse_keys else None
    h: npt.NDArray[Any] = rows.hash[head] if content is None else content[head]
    dom = domain_of_mm[rows.mm[head]] if domain_of_mm is not None else np.zeros(head.size, np.int64)
    if by_hash or domain_of_mm is None:  # one domain: the content alone is the key
        key = np.unique(h, return_inverse=True)[1] if content is None else h.astype(np.int64)
    else:
        key = _pair_codes(dom, h)
    del h
    if bit_of_mm is not None:
        bits = bit_of_mm[rows.mm[idx]]
        member = np.where(
            bits >= 0,
            np.left_shift(np.uint64(1), np.maximum(bits, 0).astype(np.uint64)),
            np.uint64(0),
        )
        mask = np.bitwise_or.reduceat(member.astype(np.uint64), first)
        base = np.maximum.reduceat((bits < 0).astype(np.int8), first).astype(bool)
    else:
        mask = np.zeros(first.size, np.uint64)
        base = np.ones(first.size, bool)
    return _Frames(
        frames,
        key.reshape(-1).astype(np.int64, copy=False),
        dom.astype(np.int64, copy=False),
        freeable,
        anchor,
        rows.zero[head],
        mask,
        base,
    )


def policy_ideal_saved_frames(
    rows: SnapshotRows,
    *,
    domain_of_mm: npt.NDArray[np.int64] | None = None,
    use_zero_pages: bool = False,
) -> int:
    """The *policy ideal*: frames an ideal KSM frees in one snapshot under the policy behind
    ``rows.eligible`` (every duplicate it makes mergeable merged at once).

    It is the denominator of the realization ratio (what the replay freed over this) and
    what the growth fit projects; it differs from the *static ideal* of the whole snapshot
    (:func:`planner.trace.summary.snapshot_potential`, every page merged whatever the
    policy) in its mergeable pages only and in how it counts a frame with mappings that are
    not mergeable.

    Per content (per content and domain when ``domain_of_mm`` gives each mm a domain
    code): a frame with a mapping that is not VM_MERGEABLE stays; the frames all of whose
    mappings are mergeable collapse into one KSM page -- which can be one of the frames
    that stay when such a frame also has a mergeable mapping (a fork-shared page whose
    other mapper is not registered: KSM write-protects it and makes it the KSM page), so
    then they all go. With ``use_zero_pages``, mergeable zero-content frames all go (they
    map the kernel's zero page).

    Examples
    --------
    See ``tests/whatif/test_extrapolate.py`` for hand-computed cases.
    """
    fr = _frames(rows, domain_of_mm=domain_of_mm, sparse_keys=True)
    if fr.key.size == 0:
        return 0
    n_keys = int(fr.key.max()) + 1
    stay = np.count_nonzero(~fr.freeable)
    needs_page = np.zeros(n_keys, bool)  # a content with a freeable frame and no anchor
    needs_page[fr.key[fr.freeable]] = True
    needs_page[fr.key[fr.anchor]] = False
    if use_zero_pages:
        needs_page[fr.key[fr.zero]] = False
    kept = stay + int(np.count_nonzero(needs_page))
    return int(fr.key.size - kept)


def zero_saved_frames(rows: SnapshotRows, *, use_zero_pages: bool, saved_frames: int) -> int:
    """How many of a replay's ``saved_frames`` merged zero-content pages (an estimate).

    The distinct zero-content frames among the pages the policy makes mergeable at the last
    snapshot, less the one KSM page they merge into without ``use_zero_pages`` (with it they
    map the kernel's zero page and all go), at most the frames saved.
    """
    zero = int(np.unique(rows.frame[rows.eligible & rows.zero]).size)
    freed = zero if use_zero_pages else max(0, zero - 1)
    return min(freed, max(0, saved_frames))


# --------------------------------------------------------------------------- growth


@dataclass(frozen=True)
class GrowthFit:
    """Fitted memory of a host with n replicas, in frames (pages for ``eligible``).

    * ``frames(n) = frames_a + frames_b * n`` -- frames without KSM;
    * ``distinct(n) = distinct_a + distinct_b * n ** distinct_beta
      + distinct_c * (1 - (1 - distinct_p) ** n)`` -- frames after an ideal KSM: the base's,
      content unique to each replica (``distinct_b`` per replica, ``beta = 1``), and a pool of
      ``distinct_c`` contents each held by a replica with probability ``distinct_p`` (so the
      pool saturates). Heaps' law is ``c = 0, beta < 1``; linear growth ``c = 0, beta = 1``;
    * ``eligible_pages(n) = eligible_a + eligible_b * n`` -- mapped mergeable pages: KSM's
      metadata (one rmap_item per scanned page) grows with them;
    * ``kept_by_domains(n) = extra_a + extra_b * n + extra_c * (1 - (1 - extra_p) ** n)`` --
      when merging across security domains is denied, the frames kept in addition (a content
      shared by several domains keeps one frame per domain); it is part of ``distinct``. It is
      fitted on the difference of the two curves, never negative, so denying never saves more
      than allowing.
    """

    frames_a: float
    frames_b: float
    distinct_a: float
    distinct_b: float
    distinct_beta: float = 1.0
    distinct_c: float = 0.0
    distinct_p: float = 1.0
    eligible_a: float = 0.0
    eligible_b: float = 0.0
    extra_a: float = 0.0
    extra_b: float = 0.0
    extra_c: float = 0.0
    extra_p: float = 1.0

    def frames(self, n: Any) -> Any:
        """Frames without KSM at ``n`` replicas (scalar or array)."""
        return self.frames_a + self.frames_b * np.asarray(n, dtype=float)

    def distinct(self, n: Any) -> Any:
        """Frames after an ideal KSM at ``n`` replicas."""
        x = np.asarray(n, dtype=float)
        pool = (
            self.distinct_c * (1.0 - _power(1.0 - self.distinct_p, x)) if self.distinct_c else 0.0
        )
        unique = self.distinct_b * (
            x if self.distinct_beta == 1.0 else np.power(x, self.distinct_beta)
        )
        return self.distinct_a + unique + pool + self.kept_by_domains(x)

    def kept_by_domains(self, n: Any) -> Any:
        """Frames kept because merging stays within security domains (0 when it may cross)."""
        x = np.asarray(n, dtype=float)
        pool = self.extra_c * (1.0 - _power(1.0 - self.extra_p, x)) if self.extra_c else 0.0
        return self.extra_a + self.extra_b * x + pool

    def ideal_saved(self, n: Any) -> Any:
        """Ideal saved frames at ``n`` replicas (never negative)."""
        return np.maximum(self.frames(n) - self.distinct(n), 0.0)

    def eligible_pages(self, n: Any) -> Any:
        """Mapped mergeable pages at ``n`` replicas."""
        return self.eligible_a + self.eligible_b * np.asarray(n, dtype=float)

    # scalar forms for a whole number of replicas: the same arithmetic in the same order as
    # the array forms above (powers by repeated squaring), without numpy's per-call cost --
    # the capacity search evaluates them hundreds of thousands of times

    def frames_at(self, n: int) -> float:
        """:meth:`frames` at one whole number of replicas."""
        return self.frames_a + self.frames_b * float(n)

    def distinct_at(self, n: int) -> float:
        """:meth:`distinct` at one whole number of replicas."""
        x = float(n)
        pool = (
            self.distinct_c * (1.0 - _pow_int(1.0 - self.distinct_p, n)) if self.distinct_c else 0.0
        )
        unique = self.distinct_b * (
            x if self.distinct_beta == 1.0 else math.pow(x, self.distinct_beta)
        )
        extra = self.extra_c * (1.0 - _pow_int(1.0 - self.extra_p, n)) if self.extra_c else 0.0
        return self.distinct_a + unique + pool + (self.extra_a + self.extra_b * x + extra)

    def ideal_saved_at(self, n: int) -> float:
        """:meth:`ideal_saved` at one whole number of replicas."""
        return max(self.frames_at(n) - self.distinct_at(n), 0.0)

    def eligible_at(self, n: int) -> float:
        """:meth:`eligible_pages` at one whole number of replicas."""
        return self.eligible_a + self.eligible_b * float(n)

    def with_eligible(self, a: float, b: float) -> GrowthFit:
        """A copy with the eligible-pages line set."""
        return replace(self, eligible_a=a, eligible_b=b)

    def with_extra(self, extra: tuple[float, float, float, float]) -> GrowthFit:
        """A copy with the within-domain extra frames ``(a, b, c, p)`` (see :func:`fit_extra`)."""
        a, b, c, p = extra
        return replace(self, extra_a=a, extra_b=b, extra_c=c, extra_p=p)

    def to_array(self) -> F64:
        """The parameters as an array (for the bootstrap)."""
        return np.array([getattr(self, f.name) for f in fields(self)], dtype=float)

    @classmethod
    def from_array(cls, a: Any) -> GrowthFit:
        """Inverse of :meth:`to_array`."""
        return cls(*(float(x) for x in np.asarray(a, dtype=float).tolist()))


def fit_growth(
    n: Any,
    frames: Any,
    distinct: Any,
    *,
    model: Model = "saturating",
    start: GrowthFit | None = None,
) -> GrowthFit:
    """Fit ``frames`` linearly and the growth of ``distinct`` on points ``n`` (scipy).

    ``model`` is ``saturating`` (unique content per replica plus a saturating shared pool),
    ``heaps`` (``a + b n^beta``) or ``linear``. A non-linear fit that does not beat the
    linear one, or does not converge, falls back to the linear fit. ``start`` (a previous
    fit of similar data, e.g. the point fit for bootstrap refits) seeds the optimizer.

    Examples
    --------
    >>> fit = fit_growth([0, 1, 2, 3], [10, 20, 30, 40], [10, 15, 20, 25], model="linear")
    >>> round(float(fit.ideal_saved(10)), 6)
    50.0
    """
    x = np.asarray(n, dtype=float)
    fy = np.asarray(frames, dtype=float)
    uy = np.asarray(distinct, dtype=float)
    fb, fa = _line(x, fy)
    ub, ua = _line(x, uy)
    lin = GrowthFit(float(fa), float(fb), float(ua), float(ub))
    if model == "linear" or x.size < 4 or np.ptp(uy) == 0:
        return lin
    if np.array_equal(fy, uy):
        # nothing merges at any n: the ideal saving is 0, not the gap between the frames line
        # and a curve fitted to the same points (a spurious saving that grows with n, and
        # near n = k noise that differs between CPUs)
        return lin
    from scipy.optimize import OptimizeWarning, curve_fit

    scale = float(max(np.max(np.abs(uy)), 1.0))
    y = uy / scale
    span = float(x.max()) if x.max() > 0 else 1.0
    slope = max((y[-1] - y[0]) / span, 1e-9)
    # a pool that has not visibly saturated within the data cannot be told from unique
    # content: it must be held by at least 1 in span replicas
    p_min = min(1.0, 1.0 / span)
    try:
        with _QUIET_FIT, warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            if model == "heaps":

                def heaps(v: F64, a: float, b: float, beta: float) -> F64:
                    return a + b * np.power(v, beta)

                popt, _ = curve_fit(
                    heaps,
                    x,
                    y,
                    p0=[max(y[0], 0.0), slope, 0.95]
                    if start is None or start.distinct_c
                    else [start.distinct_a / scale, start.distinct_b / scale, start.distinct_beta],
                    bounds=([0.0, 0.0, 0.05], [np.inf, np.inf, 1.0]),
                    maxfev=5000,
                    ftol=FIT_TOLERANCE,
                    xtol=FIT_TOLERANCE,
                    gtol=FIT_TOLERANCE,
                )
                a, b, beta = (float(v) for v in popt)
                fit = GrowthFit(float(fa), float(fb), a * scale, b * scale, beta)
            else:

                def saturating(v: F64, a: float, b: float, c: float, p: float) -> F64:
                    return a + b * v + c * (1.0 - _power(1.0 - p, v))

                popt, _ = curve_fit(
                    saturating,
                    x,
                    y,
                    p0=[max(y[0], 0.0), 0.8 * slope, 0.2 * slope, max(0.5, p_min)]
                    if start is None or start.distinct_beta != 1.0
                    else [
                        start.distinct_a / scale,
                        start.distinct_b / scale,
                        max(start.distinct_c / scale, 1e-6),
                        min(max(start.distinct_p, p_min), 1.0),
                    ],
                    bounds=([0.0, 0.0, 0.0, p_min], [np.inf, np.inf, np.inf, 1.0]),
                    maxfev=5000,
                    ftol=FIT_TOLERANCE,
                    xtol=FIT_TOLERANCE,
                    gtol=FIT_TOLERANCE,
                )
                a, b, c, p = (float(v) for v in popt)
                fit = GrowthFit(float(fa), float(fb), a * scale, b * scale, 1.0, c * scale, p)
    except (RuntimeError, ValueError):
        return lin
    res_fit = float(np.sum((fit.distinct(x) - uy) ** 2))
    res_lin = float(np.sum((lin.distinct(x) - uy) ** 2))
    return fit if res_fit <= res_lin else lin


@dataclass(frozen=True)
class GrowthCurves:
    """The mean observed curves: frames and ideal distinct frames with n replicas."""

    __json_properties__: ClassVar[tuple[str, ...]] = ("ideal_saved",)

    n: tuple[int, ...]
    frames: tuple[float, ...]
    distinct: tuple[float, ...]

    @property
    def ideal_saved(self) -> tuple[float, ...]:
        """Ideal saved frames at each n."""
        return tuple(f - u for f, u in zip(self.frames, self.distinct, strict=True))


@dataclass(frozen=True)
class HoldoutCheck:
    """How well a fit on few replicas predicts the exact ideal saving at k."""

    __json_properties__: ClassVar[tuple[str, ...]] = ("relative_error",)

    fit_upto: int  # the fit used n = 0..fit_upto
    k: int
    predicted_saved_frames: float
    observed_saved_frames: float

    @property
    def relative_error(self) -> float | None:
        """(predicted - observed) / observed; ``None`` when nothing is saved."""
        if self.observed_saved_frames <= 0:
            return None
        return (
            self.predicted_saved_frames - self.observed_saved_frames
        ) / self.observed_saved_frames


@dataclass(frozen=True)
class FittedCurve:
    """A fit drawn against the number of replicas: what a review plots and tabulates.

    For n = 1 .. ``top`` (every n up to twice the traced replicas, then 40 steps spaced
    evenly on a log scale): the fitted frames without KSM, the policy ideal saving with its
    bootstrap band (``low``/``high``, NaN without replicates), and each as a share of the
    frames. ``observed_n``/``observed_fraction``: the exact policy ideal measured in the
    trace at n = 1 .. k, as a share of the fitted frames at n.
    """

    n: tuple[int, ...]
    frames: tuple[float, ...]
    ideal_saved_frames: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    ideal_saved_fraction: tuple[float, ...]
    low_fraction: tuple[float, ...]
    high_fraction: tuple[float, ...]
    observed_n: tuple[int, ...]
    observed_fraction: tuple[float, ...]


@dataclass(frozen=True)
class ExtrapolationFit:
    """The fitted growth of one host under one policy set, with bootstrap replicates.

    ``curve`` is set by the what-if run, which knows how far the scenarios project
    (:func:`fitted_curve`).
    """

    __json_properties__: ClassVar[tuple[str, ...]] = ("k",)

    host: str
    policy_set: str
    cross_domain: str
    domain: str | None  # the fit of one domain's replicas alone (a host of that domain)
    group: str
    group_pids: tuple[int, ...]
    base_pids: tuple[int, ...]
    page_size: int
    observed: GrowthCurves
    point: GrowthFit
    replicates: tuple[GrowthFit, ...] = field(metadata=detail("replicates"))
    confidence: float
    holdout: HoldoutCheck | None
    ideal_saved_frames_at_k: int
    spec: ExtrapolationSpec
    notes: tuple[str, ...] = field(default=())
    curve: FittedCurve | None = None

    @property
    def k(self) -> int:
        """Replicas in the trace."""
        return len(self.group_pids)

    def interval(self, values: Any) -> tuple[float, float]:
        """The percentile interval of bootstrap ``values`` at :attr:`confidence`."""
        v = np.asarray(values, dtype=float)
        alpha = (1.0 - self.confidence) / 2.0
        lo, hi = np.percentile(v, [100 * alpha, 100 * (1 - alpha)])
        return float(lo), float(hi)

    def ideal_saved_frames(self, n: int) -> tuple[float, float, float]:
        """Ideal saved frames at ``n`` replicas: ``(point, low, high)``."""
        point = float(self.point.ideal_saved(n))
        lo, hi = self.interval([r.ideal_saved(n) for r in self.replicates])
        return point, lo, hi


def fitted_curve(fit: ExtrapolationFit, top: int) -> FittedCurve:
    """The curve of ``fit`` for n = 1 .. ``top`` replicas (at least ``2 k`` and 4)."""
    top = max(top, 2 * fit.k, 4)
    ns = sorted(
        {
            *range(1, min(top, 2 * fit.k) + 1),
            *np.unique(np.geomspace(1, top, 40).round().astype(int)).tolist(),
            top,
        }
    )
    frames, point, lo, hi = [], [], [], []
    for n in ns:
        frames.append(float(fit.point.frames(n)))
        point.append(float(fit.point.ideal_saved(n)))
        a, b = (
            fit.interval([r.ideal_saved(n) for r in fit.replicates])
            if fit.replicates
            else (math.nan, math.nan)
        )
        lo.append(a)
        hi.append(b)

    def share(values: list[float]) -> tuple[float, ...]:
        return tuple(v / f if f else math.nan for v, f in zip(values, frames, strict=True))

    obs = [(n, v) for n, v in zip(fit.observed.n, fit.observed.ideal_saved, strict=True) if n > 0]
    obs_frames = [fit.point.frames_a + fit.point.frames_b * n for n, _ in obs]
    return FittedCurve(
        n=tuple(int(n) for n in ns),
        frames=tuple(frames),
        ideal_saved_frames=tuple(point),
        low=tuple(lo),
        high=tuple(hi),
        ideal_saved_fraction=share(point),
        low_fraction=share(lo),
        high_fraction=share(hi),
        observed_n=tuple(int(n) for n, _ in obs),
        observed_fraction=tuple(
            v / f if f else math.nan for (_, v), f in zip(obs, obs_frames, strict=True)
        ),
    )


class _Growth:
    """Per-content contributions to F and U for a fixed family of replica subsets.

    A content is one hash with all its frames (the bootstrap's unit). With ``by_domain``, a
    third block gives U when merging stays within domains: the content's frames of each
    domain are merged separately.
    """

    def __init__(
        self, fr: _Frames, k: int, orders: npt.NDArray[np.int64], *, by_domain: bool = False
    ) -> None:
        self.k = k
        self.R = orders.shape[0]
        self.by_domain = by_domain
        # subset masks: order r, first j replicas (j = 0..k)
        bits = np.left_shift(np.uint64(1), orders.astype(np.uint64))  # (R, k)
        cum = np.zeros((self.R, k + 1), np.uint64)
        for j in range(k):
            cum[:, j + 1] = cum[:, j] | bits[:, j]
        subsets = cum.reshape(-1)  # Q = R * (k + 1)
        # frame classes (mask, base, freeable, anchor)
        cls_keys = np.stack(
            [
                fr.mask,
                fr.base.astype(np.uint64),
                fr.freeable.astype(np.uint64),
                fr.anchor.astype(np.uint64),
            ]
        )
        classes, cls_of = np.unique(cls_keys, axis=1, return_inverse=True)
        cls_of = cls_of.reshape(-1)
        self._present = (classes[1][:, None] == 1) | (
            (classes[0][:, None] & subsets[None, :]) != 0
        )  # (T, Q)
        self._free = classes[2] == 1
        self._anchor = classes[3] == 1
        # content signatures: the multiset of (frame class, domain rank) of each content key
        order = np.lexsort((cls_of, fr.dom, fr.key))
        keys = fr.key[order]
        cl = cls_of[order]
        dm = fr.dom[order]
        start = np.ones(keys.size, bool)
        start[1:] = keys[1:] != keys[:-1]
        first = np.flatnonzero(start)
        sizes = np.diff(np.append(first, keys.size))
        sig = np.empty(first.size, np.int64)
        single = sizes == 1
        T = classes.shape[1]
        sig[single] = cl[first[single]]
        multi_sig: dict[tuple[tuple[int, int], ...], int] = {}
        for i in np.flatnonzero(~single).tolist():
            lo, hi = first[i], first[i] + sizes[i]
            ranks = {d: r for r, d in enumerate(dict.fromkeys(dm[lo:hi].tolist()))}
            members = tuple(
                (c, ranks[d]) for c, d in zip(cl[lo:hi].tolist(), dm[lo:hi].tolist(), strict=True)
            )
            sig[i] = multi_sig.setdefault(members, T + len(multi_sig))
        Q = self.Q = subsets.size
        blocks = 3 if by_domain else 2
        contrib = np.zeros((T + len(multi_sig), blocks * Q), np.int32)
        for b in range(blocks):  # a single frame counts the same in F and in every U
            contrib[:T, b * Q : (b + 1) * Q] = self._present
        for members, sid in multi_sig.items():
            m = np.asarray([c for c, _ in members])
            contrib[sid, :Q] = self._present[m].sum(axis=0)
            contrib[sid, Q : 2 * Q] = self._kept(m)
            if by_domain:
                d = np.asarray([r for _, r in members])
                contrib[sid, 2 * Q :] = sum(self._kept(m[d == r]) for r in np.unique(d))
        used, sig = np.unique(sig, return_inverse=True)
        self.contrib = contrib[used].astype(np.float64)
        self.sig = sig.reshape(-1).astype(np.int64)
        self.n_sig = used.size

    def _kept(self, m: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Frames of one content (frame classes ``m``) left by an ideal KSM, per subset."""
        p = self._present[m]
        fm = self._free[m]
        am = self._anchor[m]
        page = p[fm].any(axis=0) if fm.any() else np.zeros(self.Q, bool)
        if am.any():
            page &= ~p[am].any(axis=0)
        return np.asarray(p[~fm].sum(axis=0) + page, dtype=np.int64)

    def curves(self, key_weights: F64, order_rows: I64) -> tuple[F64, F64, F64 | None]:
        """Mean F(n), U(n) (and U within domains) over the orders ``order_rows``."""
        tot = key_weights @ self.contrib

        def block(b: int) -> F64:
            part = tot[b * self.Q : (b + 1) * self.Q].reshape(self.R, self.k + 1)
            return np.asarray(part[order_rows].mean(axis=0), dtype=np.float64)

        return block(0), block(1), block(2) if self.by_domain else None

    def weights(self, keys: I64) -> F64:
        """Signature weights of a (re)sample of content indices."""
        return np.bincount(self.sig[keys], minlength=self.n_sig).astype(np.float64)


def fit_extra(
    n: Any, extra: Any, *, start: GrowthFit | None = None
) -> tuple[float, float, float, float]:
    """Fit the frames that merging within domains only keeps in addition (never negative).

    ``extra(n) = a + b n + c (1 - (1 - p)^n)`` with every parameter >= 0: contents shared
    across domains are kept once per domain; they grow with the replicas and saturate.
    Returns ``(a, b, c, p)``.
    """
    x = np.asarray(n, dtype=float)
    y = np.asarray(extra, dtype=float)
    if not np.any(y > 0):
        return 0.0, 0.0, 0.0, 1.0
    b, a = _line(x, y)
    lin = (max(float(a), 0.0), max(float(b), 0.0), 0.0, 1.0)
    if x.size < 4:
        return lin
    from scipy.optimize import OptimizeWarning, curve_fit

    scale = float(max(np.max(np.abs(y)), 1.0))
    span = float(x.max()) if x.max() > 0 else 1.0
    p_min = min(1.0, 1.0 / span)

    def model(v: F64, a_: float, b_: float, c_: float, p_: float) -> F64:
        return a_ + b_ * v + c_ * (1.0 - _power(1.0 - p_, v))

    if start is not None and start.extra_c > 0:
        p0 = [
            start.extra_a / scale,
            start.extra_b / scale,
            start.extra_c / scale,
            min(max(start.extra_p, p_min), 1.0),
        ]
    else:
        p0 = [
            max(y[0] / scale, 0.0),
            0.5 * max((y[-1] - y[0]) / scale / span, 0.0),
            0.5 * y[-1] / scale,
            max(0.5, p_min),
        ]
    try:
        with _QUIET_FIT, warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            popt, _ = curve_fit(
                model,
                x,
                y / scale,
                p0=p0,
                bounds=([0, 0, 0, p_min], [np.inf, np.inf, np.inf, 1.0]),
                maxfev=5000,
                ftol=FIT_TOLERANCE,
                xtol=FIT_TOLERANCE,
                gtol=FIT_TOLERANCE,
            )
    except (RuntimeError, ValueError):
        return lin
    fa, fb, fc, fp = (float(v) for v in popt)
    fit = (fa * scale, fb * scale, fc * scale, fp)
    res = float(np.sum((model(x, *fit) - y) ** 2))
    res_lin = float(np.sum((model(x, *lin) - y) ** 2))
    return fit if res <= res_lin else lin


def extrapolate(
    inp: ReplayInput,
    *,
    spec: ExtrapolationSpec,
    policy_set: str = "",
    cross_domain: str = "allow",
    domain_of_mm: npt.NDArray[np.int64] | None = None,
    only_domain: str | None = None,
) -> ExtrapolationFit:
    """Fit how a host's memory and ideal saving grow with the replicas of a group.

    Parameters
    ----------
    inp
        The prepared host under the policy set, every domain registered (its last
        snapshot is the steady state).
    spec
        Group, orders, bootstrap and model settings.
    policy_set, cross_domain
        Recorded in the result.
    domain_of_mm
        A domain code per mm when contents may only merge within a domain (``deny``).
    only_domain
        ``inp`` was prepared with this domain alone registered: the replicas are the
        group's registered members (a host of that domain only); the group's other members
        are left out of the host, not counted in its base.

    Raises
    ------
    UsageProblem
        The group selects no process.
    """
    from scipy.stats import bootstrap

    from planner.engine.rows import SnapshotSequence

    # rebuilt for this fit only: cached with the input, it stayed in the worker's memory
    # through the replays that followed
    rows = SnapshotSequence(inp.deltas, inp.content_hash)[-1]
    group, base = select_group(inp, spec.group)
    notes: list[str] = []
    rng = np.random.default_rng(spec.seed)
    keep_mm = np.ones(len(inp.mms), bool)
    if only_domain is not None:
        others = [m for m in group if inp.mms[m].registration.mode == "off"]
        group = [m for m in group if inp.mms[m].registration.mode != "off"]
        keep_mm[others] = False
        base = [m for m in base if m not in set(others)]
        if not group:
            raise UsageProblem(
                f"extrapolation group {spec.group!r} has no replica in domain {only_domain!r} "
                f"on host {inp.host}",
                hint="pick a --group whose replicas each domain holds",
            )
        notes.append(f"replicas of domain {only_domain} only ({len(group)})")
    if len(group) > MAX_REPLICAS:
        notes.append(f"{len(group)} replicas: a random {MAX_REPLICAS} of them were used")
        dropped = set(rng.choice(group, size=len(group) - MAX_REPLICAS, replace=False).tolist())
        group = [m for m in group if m not in dropped]
        keep_mm[list(dropped)] = False
    k = len(group)
    bit_of_mm = np.full(len(inp.mms), -1, np.int64)
    bit_of_mm[group] = np.arange(k)
    keep = keep_mm[rows.mm]
    by_domain = domain_of_mm is not None
    fr = _frames(rows, domain_of_mm=domain_of_mm, bit_of_mm=bit_of_mm, keep=keep, by_hash=True)
    orders = np.stack([rng.permutation(k) for _ in range(spec.orders)]).astype(np.int64)
    g = _Growth(fr, k, orders, by_domain=by_domain)
    n = np.arange(k + 1)
    n_keys = int(fr.key.max()) + 1 if fr.key.size else 0
    all_keys = np.arange(n_keys, dtype=np.int64)
    all_orders = np.arange(spec.orders, dtype=np.int64)

    # eligible (scanned) pages: base + n * mean per replica
    elig_rows = rows.eligible & keep
    per_mm = np.bincount(rows.mm[elig_rows], minlength=len(inp.mms))
    e_a = float(per_mm[base].sum()) if base else 0.0
    e_b = float(per_mm[group].mean()) if group else 0.0

    def fit(f: F64, u: F64, ud: F64 | None, start: GrowthFit | None) -> GrowthFit:
        x = n[: f.size]
        out = fit_growth(x, f, u, model=spec.model, start=start).with_eligible(e_a, e_b)
        if ud is not None:  # merging within domains only: the frames kept in addition
            out = out.with_extra(fit_extra(x, ud - u, start=start))
        return out

    F, U, Ud = g.curves(g.weights(all_keys), all_orders)
    point = fit(F, U, Ud, None)
    U_kept = Ud if Ud is not None else U

    def statistic(keys: Any, order_rows: Any) -> F64:
        f, u, ud = g.curves(g.weights(np.asarray(keys, np.int64)), np.asarray(order_rows, np.int64))
        return fit(f, u, ud, point).to_array()

    replicates: tuple[GrowthFit, ...]
    if n_keys >= 2:
        res = bootstrap(
            (all_keys, all_orders),
            statistic,
            n_resamples=spec.n_resamples,
            confidence_level=spec.confidence,
            method="percentile",
            vectorized=False,
            paired=False,
            rng=np.random.default_rng(spec.seed + 1),
        )
        dist = np.asarray(res.bootstrap_distribution, dtype=float)  # (parameters, n_resamples)
        replicates = tuple(GrowthFit.from_array(dist[:, i]) for i in range(dist.shape[1]))
    else:
        replicates = (point,)
        notes.append("too few contents for a bootstrap: the interval is the point")

    holdout = None
    if k >= 4:
        h = max(2, k // 2)
        hf = fit(F[: h + 1], U[: h + 1], Ud[: h + 1] if Ud is not None else None, None)
        holdout = HoldoutCheck(
            fit_upto=h,
            k=k,
            predicted_saved_frames=float(hf.ideal_saved(k)),
            observed_saved_frames=float(F[k] - U_kept[k]),
        )
    pid_of = [m.pid for m in inp.mms]
    return ExtrapolationFit(
        host=inp.host,
        policy_set=policy_set,
        cross_domain=cross_domain,
        domain=only_domain,
        group=spec.group,
        group_pids=tuple(pid_of[m] for m in group),
        base_pids=tuple(pid_of[m] for m in base),
        page_size=inp.page_size,
        observed=GrowthCurves(
            tuple(int(v) for v in n), tuple(float(v) for v in F), tuple(float(v) for v in U_kept)
        ),
        point=point,
        replicates=replicates,
        confidence=spec.confidence,
        holdout=holdout,
        ideal_saved_frames_at_k=round(F[k] - U_kept[k]),
        spec=spec,
        notes=tuple(notes),
    )


__all__ = [
    "MAX_REPLICAS",
    "ExtrapolationFit",
    "ExtrapolationSpec",
    "FittedCurve",
    "GrowthCurves",
    "GrowthFit",
    "HoldoutCheck",
    "extrapolate",
    "fit_growth",
    "fitted_curve",
    "parse_group",
    "policy_ideal_saved_frames",
    "select_group",
    "zero_saved_frames",
]
