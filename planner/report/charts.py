"""Plots of a review as deterministic SVG strings (matplotlib, no pyplot, no dates).

Every chart function takes plain numbers and returns an SVG document as a string. The
output is byte-for-byte reproducible: every number drawn is first rounded to the review's
precision (:data:`planner.report.fmt.SIGNIFICANT_DIGITS` significant digits, the precision of
the data files), so floating-point noise below it moves no coordinate; the ids matplotlib
derives from hashes of the drawn paths are renumbered in document order (:func:`clean_svg`),
so a coordinate moving cannot rename them; the date and creator metadata are dropped; text
stays text (``svg.fonttype = "none"``, so the page's fonts draw it and it can be searched);
and every ``id`` is prefixed with the chart's name so that several plots can be inlined in
one HTML page without clashing.

Colours are the Okabe–Ito palette, which stays distinguishable for colour-blind readers
and in grey-scale print.
"""

from __future__ import annotations

import io
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from planner._deps import require
from planner.report.fmt import stable_float

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Okabe–Ito colours, in the order series use them.
PALETTE = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#000000",  # black
    "#999999",  # grey
)
GOOD = "#009E73"
BAD = "#D55E00"
NEUTRAL = "#999999"
ACCENT = "#0072B2"
HASH_SALT = "ksm-planner"
WIDTH_IN = 7.2  # fits the 46rem text column at 100 % zoom, and A4 portrait in print

_RC: dict[str, Any] = {
    "svg.hashsalt": HASH_SALT,
    "svg.fonttype": "none",
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Liberation Sans", "Arial", "Helvetica"],
    "font.size": 9.0,
    "axes.titlesize": 9.5,
    "axes.titleweight": "bold",
    "axes.labelsize": 9.0,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#dddddd",
    "grid.linewidth": 0.6,
    "legend.frameon": False,
    "legend.fontsize": 8.0,
    "xtick.labelsize": 8.0,
    "ytick.labelsize": 8.0,
    "path.simplify": False,  # simplification depends on the renderer's state; keep all points
    "lines.linewidth": 1.6,
    "figure.dpi": 72.0,
}


@contextmanager
def _figure(height_in: float, *, width_in: float = WIDTH_IN) -> Iterator[Figure]:
    """A matplotlib Figure (not registered with pyplot) under the report's style."""
    mpl = require("matplotlib", extra="report", purpose="review plots")
    from matplotlib.figure import Figure

    with mpl.rc_context(_RC):
        fig = Figure(figsize=(width_in, height_in), layout="constrained")
        yield fig


def _to_svg(fig: Figure, name: str, title: str) -> str:
    buf = io.StringIO()
    fig.savefig(
        buf, format="svg", metadata={"Date": None, "Creator": None, "Type": None, "Format": None}
    )
    return clean_svg(buf.getvalue(), prefix=name, title=title)


_ID = re.compile(r'\bid="([^"]+)"')
#: Ids matplotlib makes from a salted hash of what they name (markers ``m…``, clip paths ``p…``).
_HASHED_ID = re.compile(r"([mp])[0-9a-f]{10}")
_REF = re.compile(r'(href="#|url\(#)([^")]+)')


def clean_svg(svg: str, *, prefix: str, title: str = "") -> str:
    """Make a matplotlib SVG fit for inlining: no prolog or metadata, unique ids, responsive.

    Parameters
    ----------
    svg
        The SVG document as matplotlib wrote it.
    prefix
        Prepended to every ``id`` (and every reference to one): the chart's name.
    title
        An accessible name (``<title>`` and ``aria-label``).
    """
    svg = re.sub(r"^<\?xml[^>]*\?>\s*", "", svg)
    svg = re.sub(r"^<!DOCTYPE[^>]*>\s*", "", svg, flags=re.S)
    svg = re.sub(r"\s*<metadata>.*?</metadata>", "", svg, flags=re.S)
    names: dict[str, str] = {}
    hashed = 0
    for old in _ID.findall(svg):
        kind = _HASHED_ID.fullmatch(old)
        if kind:  # named by a hash of its path: renamed by its rank, which noise cannot move
            hashed += 1
            names[old] = f"{prefix}-{kind.group(1)}{hashed}"
        else:
            names[old] = f"{prefix}-{old}"
    svg = _ID.sub(lambda m: f'id="{names[m.group(1)]}"', svg)
    svg = _REF.sub(lambda m: m.group(1) + names.get(m.group(2), f"{prefix}-{m.group(2)}"), svg)
    # responsive: keep the viewBox, let CSS size it
    m = re.search(r"<svg [^>]*>", svg)
    if m:
        head = m.group(0)
        new = re.sub(r'\s(width|height)="[^"]*"', "", head)
        esc = _attr(title)
        new = new.replace(
            "<svg ",
            f'<svg class="chart" role="img" aria-label="{esc}" data-chart="{_attr(prefix)}" ',
            1,
        )
        svg = svg.replace(head, new + (f"\n <title>{_text(title)}</title>" if title else ""), 1)
    return svg.strip() + "\n"


def _attr(s: str) -> str:
    return s.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")


def _text(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def standalone_svg(inline: str) -> str:
    """An inlined chart as a standalone ``.svg`` file (XML prolog, explicit size)."""
    m = re.search(r'viewBox="0 0 ([\d.]+) ([\d.]+)"', inline)
    size = f' width="{m.group(1)}pt" height="{m.group(2)}pt"' if m else ""
    body = inline.replace("<svg ", f"<svg{size} ", 1)
    return '<?xml version="1.0" encoding="utf-8" standalone="no"?>\n' + body


def _r(value: int | float) -> float:
    """A number to draw: a float rounded to the review's precision, an integer as it is."""
    return stable_float(value) if isinstance(value, float) else value


def _rs(values: Sequence[float]) -> list[float]:
    """Numbers to draw, rounded to the review's precision."""
    return [_r(v) for v in values]


def _mib(values: Sequence[float]) -> list[float]:
    return [v / (1 << 20) for v in _rs(values)]


def _finite(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


# ----------------------------------------------------------------------------- charts


@dataclass(frozen=True)
class Stack:
    """One coloured part of stacked bars."""

    label: str
    values: Sequence[float]  # bytes, one per bar
    color: str


def stacked_bars(
    name: str,
    title: str,
    categories: Sequence[str],
    stacks: Sequence[Stack],
    *,
    xlabel: str = "MiB",
) -> str:
    """Horizontal stacked bars (memory in bytes, drawn in MiB), first category on top."""
    n = len(categories)
    with _figure(1.2 + 0.28 * max(n, 2)) as fig:
        ax = fig.add_subplot()
        ys = list(range(n))[::-1]
        left = [0.0] * n
        for st in stacks:
            vals = _mib(st.values)
            ax.barh(
                ys,
                vals,
                left=left,
                color=st.color,
                label=st.label,
                height=0.7,
                edgecolor="white",
                linewidth=0.5,
            )
            left = [a + b for a, b in zip(left, vals, strict=True)]
        ax.set_yticks(ys, list(categories))
        ax.set_xlabel(xlabel)
        ax.grid(axis="y", visible=False)
        ax.set_title(title, loc="left")
        fig.legend(loc="outside lower center", ncols=min(len(stacks), 3))
        return _to_svg(fig, name, title)


@dataclass(frozen=True)
class Step:
    """One step of a waterfall: a start/end total or a signed change (bytes)."""

    label: str
    value: float
    kind: str  # "total" (a bar from 0), "down" (a saving), "up" (a cost)


def waterfall(name: str, title: str, steps: Sequence[Step]) -> str:
    """A waterfall from raw anonymous memory down to the memory left after KSM (in MiB)."""
    with _figure(3.2) as fig:
        ax = fig.add_subplot()
        level = 0.0
        xs = range(len(steps))
        for x, st in zip(xs, steps, strict=False):
            v = _r(st.value) / (1 << 20)
            if st.kind == "total":
                bottom, height, color, level = 0.0, v, NEUTRAL, v
                text = f"{v:,.1f}"
            elif st.kind == "down":
                bottom, height, color = level - v, v, GOOD
                level -= v
                text = f"−{v:,.1f}"
            else:
                bottom, height, color = level, v, BAD
                level += v
                text = f"+{v:,.1f}"
            ax.bar([x], [height], bottom=[bottom], color=color, width=0.62)
            ax.annotate(
                text,
                (x, bottom + height),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=7.5,
            )
        for x in range(len(steps) - 1):
            top = sum_levels(steps, x)
            ax.plot([x + 0.31, x + 0.69], [top, top], color="#666666", linewidth=0.6)
        ax.set_xticks(list(xs), [s.label for s in steps])
        ax.set_ylabel("MiB")
        ax.grid(axis="x", visible=False)
        ax.set_title(title, loc="left")
        ax.margins(y=0.12)
        return _to_svg(fig, name, title)


def sum_levels(steps: Sequence[Step], upto: int) -> float:
    """The running level (MiB) after step ``upto`` of a waterfall."""
    level = 0.0
    for st in steps[: upto + 1]:
        v = _r(st.value) / (1 << 20)
        level = v if st.kind == "total" else level - v if st.kind == "down" else level + v
    return level


@dataclass(frozen=True)
class Series:
    """A line: x values, y values (bytes or plain numbers), and optional markers."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    color: str
    marks_x: Sequence[float] = ()  # times of full-scan ends: drawn as dots on the line
    marks_y: Sequence[float] = ()
    dashed: bool = False


@dataclass(frozen=True)
class Panel:
    """One small-multiple panel of a time chart."""

    title: str
    series: Sequence[Series]
    vlines: Sequence[float] = ()  # snapshot times
    extra: dict[str, Any] = field(default_factory=dict)


def time_panels(
    name: str,
    title: str,
    panels: Sequence[Panel],
    *,
    ylabel: str = "saved, net (MiB)",
    y_in_bytes: bool = True,
    ncols: int = 2,
    xlabel: str = "time since the first snapshot (s)",
    logx: bool = False,
) -> str:
    """Small multiples of lines over time, with dots at full-scan ends and snapshot lines.

    Every panel has the same x and y scales, so panels compare at a glance; ``logx`` draws
    time on a log scale (from the first positive time), so that seconds and hours both read.
    """
    n = max(1, len(panels))
    cols = min(ncols, n)
    rows = math.ceil(n / cols)
    with _figure(0.55 + 2.0 * rows) as fig:
        axes = fig.subplots(rows, cols, squeeze=False, sharey=True, sharex=True)
        scale = (1 << 20) if y_in_bytes else 1
        for i, panel in enumerate(panels):
            ax: Axes = axes[i // cols][i % cols]
            for t in _rs(panel.vlines):
                ax.axvline(t, color="#bbbbbb", linewidth=0.7, linestyle=":", zorder=0)
            for s in panel.series:
                ax.plot(
                    _rs(s.x),
                    [v / scale for v in _rs(s.y)],
                    color=s.color,
                    label=s.label,
                    linestyle="--" if s.dashed else "-",
                    linewidth=1.4,
                )
                if s.marks_x:
                    ax.plot(
                        _rs(s.marks_x),
                        [v / scale for v in _rs(s.marks_y)],
                        linestyle="none",
                        marker="o",
                        markersize=2.2,
                        color=s.color,
                    )
            ax.set_title(panel.title, loc="left", fontsize=8.5)
            if logx:
                from matplotlib.ticker import FuncFormatter

                ax.set_xscale("log")
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
                first = min(
                    (x for p in panels for sr in p.series for x in _rs(sr.x) if x > 0),
                    default=1.0,
                )
                ax.set_xlim(left=first)
            else:
                ax.set_xlim(left=0)
            ax.tick_params(labelbottom=True)
            if i // cols == rows - 1 or i + cols >= n:
                ax.set_xlabel(xlabel)
            if i % cols == 0:
                ax.set_ylabel(ylabel)
            ax.tick_params(labelleft=True)
        for j in range(len(panels), rows * cols):
            axes[j // cols][j % cols].set_visible(False)
        handles, labels = axes[0][0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)))
        fig.suptitle(title, x=0.01, ha="left", fontsize=9.5, fontweight="bold")
        return _to_svg(fig, name, title)


@dataclass(frozen=True)
class Point:
    """A scenario in a scatter plot."""

    label: str
    x: float
    y: float
    color: str
    on_front: bool = False
    chosen: bool = False


def pareto(
    name: str,
    title: str,
    points: Sequence[Point],
    *,
    xlabel: str = "ksmd CPU (% of one core)",
    ylabel: str = "saved, net (MiB)",
    y_in_bytes: bool = True,
    legend: Sequence[tuple[str, str]] = (),
    annotate: Sequence[str] | None = None,
) -> str:
    """Saving against cost, the Pareto front joined by a line, the chosen point ringed.

    Both axes start at 0 (a saving is read against nothing saved); ``annotate`` labels the
    points (one short text per point).
    """
    scale = (1 << 20) if y_in_bytes else 1
    with _figure(3.6) as fig:
        ax = fig.add_subplot()
        front = sorted((p for p in points if p.on_front), key=lambda p: (p.x, p.y))
        if front:
            ax.step(
                [_r(p.x) for p in front],
                [_r(p.y) / scale for p in front],
                where="post",
                color="#444444",
                linewidth=0.9,
                zorder=1,
                label="Pareto front",
            )
        for p in points:
            ax.scatter(
                [_r(p.x)],
                [_r(p.y) / scale],
                s=26 if p.on_front else 16,
                color=p.color,
                edgecolors="black" if p.on_front else "none",
                linewidths=0.5,
                zorder=3,
            )
            if p.chosen:
                ax.scatter(
                    [_r(p.x)],
                    [_r(p.y) / scale],
                    s=140,
                    facecolors="none",
                    edgecolors="black",
                    linewidths=1.1,
                    zorder=4,
                    label="recommended",
                )
        for i, (p, text) in enumerate(zip(points, annotate or (), strict=False)):
            ax.annotate(
                text,
                (_r(p.x), _r(p.y) / scale),
                xytext=(4, 3 if i % 2 == 0 else -9),
                textcoords="offset points",
                fontsize=6.5,
                color="#333333",
            )
        for label, color in legend:
            ax.scatter([], [], color=color, s=16, label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.margins(x=0.12, y=0.08)
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.set_title(title, loc="left")
        ax.legend(loc="lower right", fontsize=7.5)
        return _to_svg(fig, name, title)


def bars(
    name: str,
    title: str,
    labels: Sequence[str],
    values: Sequence[float],
    *,
    colors: Sequence[str] | None = None,
    xlabel: str = "",
    threshold: float | None = None,
    threshold_label: str = "",
    value_fmt: str = "{:,.0f}",
    errors: Sequence[tuple[float, float]] | None = None,
) -> str:
    """Horizontal bars, one per label (first on top), with an optional threshold line."""
    n = len(labels)
    values = _rs(values)
    if errors is not None:
        errors = [(_r(lo), _r(hi)) for lo, hi in errors]
    if threshold is not None:
        threshold = _r(threshold)
    with _figure(0.9 + 0.26 * max(n, 2)) as fig:
        ax = fig.add_subplot()
        ys = list(range(n))[::-1]
        cols = list(colors) if colors else [ACCENT] * n
        xerr = None
        if errors is not None:
            xerr = [
                [max(0.0, v - lo) for v, (lo, _) in zip(values, errors, strict=True)],
                [max(0.0, hi - v) for v, (_, hi) in zip(values, errors, strict=True)],
            ]
        ax.barh(
            ys,
            list(values),
            color=cols,
            height=0.66,
            xerr=xerr,
            error_kw={"elinewidth": 0.8, "capsize": 2.5, "ecolor": "#333333"},
        )
        finite = _finite(list(values))
        span = (max(finite) - min(0.0, *finite)) if finite else 1.0
        for y, v in zip(ys, values, strict=True):
            if math.isfinite(v):
                ax.annotate(
                    value_fmt.format(v),
                    (max(v, 0.0), y),
                    xytext=(3, 0),
                    textcoords="offset points",
                    va="center",
                    fontsize=7.5,
                )
        if threshold is not None:
            ax.axvline(threshold, color=BAD, linewidth=1.0, linestyle="--", label=threshold_label)
            ax.legend(loc="lower right")
        ax.set_yticks(ys, list(labels))
        ax.set_xlabel(xlabel)
        ax.grid(axis="y", visible=False)
        ax.set_xlim(right=(max([*finite, threshold or 0.0]) + 0.12 * span) if finite else None)
        ax.set_title(title, loc="left")
        return _to_svg(fig, name, title)


def lines(
    name: str,
    title: str,
    series: Sequence[Series],
    *,
    xlabel: str,
    ylabel: str,
    y_in_bytes: bool = False,
    logx: bool = False,
    bands: Sequence[tuple[Sequence[float], Sequence[float], Sequence[float], str]] = (),
    marks: Sequence[tuple[float, str]] = (),
    shade_after: float | None = None,
) -> str:
    """Lines with markers (a sweep over one knob), optional shaded intervals.

    ``marks`` are labelled vertical lines (``(x, text)``); ``shade_after`` greys the part of
    the plot beyond an x (where the data ends and a projection begins).
    """
    scale = (1 << 20) if y_in_bytes else 1
    with _figure(3.0) as fig:
        ax = fig.add_subplot()
        if shade_after is not None:
            ax.axvspan(
                _r(shade_after),
                max(_r(x) for s in series for x in s.x),
                color="#f0f0f0",
                zorder=0,
                linewidth=0,
            )
        right = max((_r(x) for sr in series for x in sr.x), default=0.0)
        for mark_x, text in marks:
            ax.axvline(_r(mark_x), color="#555555", linewidth=0.8, linestyle=":", zorder=1)
            at_end = _r(mark_x) >= right
            ax.annotate(
                text,
                (_r(mark_x), 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(-3 if at_end else 3, -10),
                textcoords="offset points",
                ha="right" if at_end else "left",
                fontsize=7,
                color="#333333",
            )
        for x, lo, hi, color in bands:
            ax.fill_between(
                _rs(x),
                [v / scale for v in _rs(lo)],
                [v / scale for v in _rs(hi)],
                color=color,
                alpha=0.18,
                linewidth=0,
            )
        for s in series:
            ax.plot(
                _rs(s.x),
                [v / scale for v in _rs(s.y)],
                marker="o",
                markersize=3.5,
                color=s.color,
                label=s.label,
                linestyle="--" if s.dashed else "-",
            )
        if logx:
            from matplotlib.ticker import FuncFormatter

            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}"))
            xs = sorted({_r(x) for s in series for x in s.x})
            if 1 < len(xs) <= 6:
                ax.set_xticks(xs)
                ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _pos: ""))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title, loc="left")
        if series:
            ax.legend(loc="best")
        return _to_svg(fig, name, title)


__all__ = [
    "PALETTE",
    "Panel",
    "Point",
    "Series",
    "Stack",
    "Step",
    "bars",
    "clean_svg",
    "lines",
    "pareto",
    "stacked_bars",
    "standalone_svg",
    "time_panels",
    "waterfall",
]
