"""Knob grids: lists of ksmd knob values whose every combination is a scenario.

A grid comes from the command line (``--pages-to-scan 100,1000,4000 --sleep-ms 20,200
--smart-scan on,off --advisor none,scan-time``, ``--knob NAME=V1,V2``) or from a TOML file
(``--grid FILE``) whose top-level keys are knob names (kernel spellings such as
``sleep_millisecs`` and ``advisor_mode`` are accepted) and, optionally, ``cross_domain``::

    pages_to_scan = [100, 1000, 4000]
    sleep_ms = [20, 200]
    smart_scan = [true, false]
    advisor = ["none", "scan-time"]
    max_page_sharing = 256          # a single value is a one-value axis
    cross_domain = ["allow", "deny"]

Every combination is checked with :class:`planner.engine.KsmKnobs` before anything runs:
an unknown knob or an impossible value (``pages_to_scan 0``, a negative sleep) is a
:class:`~planner.errors.KnobError` (exit code 2).
"""

from __future__ import annotations

import difflib
import itertools
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from planner._input import read_input_text
from planner.engine.knobs import (
    DISPLAY_ORDER,
    KNOB_ALIASES,
    KNOB_NAMES,
    KsmKnobs,
    spec,
    valid_hz,
)
from planner.errors import KnobError

if TYPE_CHECKING:
    import os
    from collections.abc import Mapping, Sequence

CrossDomain = Literal["allow", "deny"]

#: Most knob combinations one grid may hold. Each is at least one replay per policy set
#: (about a second each on the sample traces), so 10,000 is hours of work on a few cores:
#: the largest sweep worth running as one command. Checked before any point is built.
MAX_KNOB_POINTS: Final = 10_000


def knob_name(name: str) -> str:
    """The canonical knob name of ``name`` (the kernel's spelling and dashes accepted).

    Raises
    ------
    KnobError
        ``name`` is not a knob; the hint suggests the closest one.
    """
    key = name.strip().replace("-", "_")
    key = KNOB_ALIASES.get(key, key)
    if key not in KNOB_NAMES:
        close = difflib.get_close_matches(key, [*KNOB_NAMES, *KNOB_ALIASES], n=1)
        hint = f"did you mean {close[0]}?" if close else f"knobs are: {', '.join(KNOB_NAMES)}"
        raise KnobError(f"unknown knob {name!r}", hint=hint)
    return key


def knob_value(name: str, value: Any) -> Any:
    """Convert one value of knob ``name`` (text or TOML value) to its Python type.

    Examples
    --------
    >>> knob_value("smart_scan", "off"), knob_value("pages_to_scan", "4000")
    (False, 4000)
    """
    return spec(name).parse(value)


def parse_knob_list(name: str, text: str) -> tuple[Any, ...]:
    """Parse a comma-separated CLI list of values of knob ``name``.

    Examples
    --------
    >>> parse_knob_list("sleep_ms", "20,200")
    (20, 200)
    """
    key = knob_name(name)
    parts = [p for p in (s.strip() for s in text.split(",")) if p]
    if not parts:
        raise KnobError(
            f"no value given for {key}", hint="give a comma-separated list, e.g. 100,1000"
        )
    return tuple(dict.fromkeys(knob_value(key, p) for p in parts))


def parse_cross_domain(values: Sequence[str] | str) -> tuple[CrossDomain, ...]:
    """Parse ``allow``/``deny`` values (a list or comma-separated text)."""
    items = values.split(",") if isinstance(values, str) else list(values)
    out: list[CrossDomain] = []
    for v in items:
        v = str(v).strip()
        if v == "allow":
            out.append("allow")
        elif v == "deny":
            out.append("deny")
        else:
            raise KnobError(
                f"cross_domain: {v!r} is neither allow nor deny",
                hint="use allow, deny or allow,deny",
            )
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class KnobGrid:
    """Axes of ksmd knob values; :meth:`points` is their Cartesian product.

    Parameters
    ----------
    axes
        ``(knob name, values)`` pairs, in order. Knobs not on an axis keep the kernel's
        defaults (:class:`planner.engine.KsmKnobs`); ``hz`` defaults to the trace's.
    cross_domain
        Whether scenarios may merge across security domains (``allow``), may not
        (``deny``), or both; ``None`` uses each policy set's own ``cross_domain``.
    """

    axes: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    cross_domain: tuple[CrossDomain, ...] | None = None
    source: str = field(default="", compare=False)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, source: str = "<grid>") -> KnobGrid:
        """Build from ``{knob: value or list of values}`` (plus ``cross_domain``), validated."""
        axes: list[tuple[str, tuple[Any, ...]]] = []
        cross: tuple[CrossDomain, ...] | None = None
        seen: set[str] = set()
        for raw, value in values.items():
            if raw == "cross_domain":
                cross = parse_cross_domain(value if isinstance(value, list) else [value])
                continue
            try:
                key = knob_name(raw)
            except KnobError as exc:
                raise KnobError(f"{source}: {exc.message}", hint=exc.hint) from None
            if key in seen:
                raise KnobError(f"{source}: knob {key} is given twice")
            seen.add(key)
            items = value if isinstance(value, list) else [value]
            if not items:
                raise KnobError(f"{source}: {key} has no value")
            try:
                conv = tuple(dict.fromkeys(knob_value(key, v) for v in items))
            except KnobError as exc:
                raise KnobError(f"{source}: {exc.message}", hint=exc.hint) from None
            axes.append((key, conv))
        grid = cls(axes=tuple(axes), cross_domain=cross, source=source)
        grid.points()  # validate every combination now
        return grid

    def with_axes(self, overrides: Sequence[tuple[str, tuple[Any, ...]]]) -> KnobGrid:
        """A copy where the given axes replace (or add to) this grid's axes."""
        axes = dict(self.axes)
        for k, v in overrides:
            axes[knob_name(k)] = v
        grid = KnobGrid(
            axes=tuple(axes.items()), cross_domain=self.cross_domain, source=self.source
        )
        grid.points()
        return grid

    def with_cross_domain(self, cross: tuple[CrossDomain, ...] | None) -> KnobGrid:
        """A copy with another ``cross_domain`` axis."""
        return KnobGrid(axes=self.axes, cross_domain=cross, source=self.source)

    @property
    def varied(self) -> tuple[str, ...]:
        """Knobs with more than one value."""
        return tuple(k for k, v in self.axes if len(v) > 1)

    def points(self, *, hz: int | None = None) -> list[dict[str, Any]]:
        """Every combination, as ``{knob: value}`` dicts (only the knobs on an axis).

        Each is checked with :class:`KsmKnobs`.

        Raises
        ------
        KnobError
            A combination is impossible; the message names it.
        """
        size = math.prod(len(v) for _, v in self.axes)
        if size > MAX_KNOB_POINTS:
            shape = " x ".join(f"{len(v)} {k}" for k, v in self.axes if len(v) > 1)
            raise KnobError(
                f"the knob grid has {size:,} combinations ({shape}), more than {MAX_KNOB_POINTS:,}",
                hint="give fewer values per knob",
            )
        names = [k for k, _ in self.axes]
        out: list[dict[str, Any]] = []
        for combo in itertools.product(*(v for _, v in self.axes)):
            point = dict(zip(names, combo, strict=True))
            self.knobs(point, hz=hz)
            out.append(point)
        return out

    @staticmethod
    def knobs(point: Mapping[str, Any], *, hz: int | None = None) -> KsmKnobs:
        """The full :class:`KsmKnobs` of a grid point (``hz`` from the trace unless set)."""
        values = dict(point)
        if "hz" not in values:
            values["hz"] = valid_hz(hz)
        try:
            return KsmKnobs(**values)
        except KnobError as exc:
            where = " ".join(f"{k}={_fmt(v)}" for k, v in point.items())
            raise KnobError(f"{exc.message} (grid point: {where})", hint=exc.hint) from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "axes": {k: list(v) for k, v in self.axes},
            "cross_domain": list(self.cross_domain) if self.cross_domain is not None else None,
            "source": self.source,
        }


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    return str(v)


def load_grid(path: str | os.PathLike[str]) -> KnobGrid:
    """Read a grid TOML file (see the module docstring).

    Raises
    ------
    KnobError
        Missing or invalid file, unknown knob, impossible value.
    """
    p = Path(path)
    text = read_input_text(p, what="grid file", error=KnobError)  # regular, UTF-8, sane size
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise KnobError(f"{p}: not valid TOML: {exc}") from None
    except RecursionError:
        raise KnobError(f"{p}: not a grid file: arrays or tables nested too deeply") from None
    for k, v in doc.items():
        if isinstance(v, dict):
            raise KnobError(
                f"{p}: [{k}] tables are not part of a grid", hint="give knobs as top-level keys"
            )
    return KnobGrid.from_mapping(doc, source=str(p))


def grid_from_options(
    grid_file: str | os.PathLike[str] | None,
    lists: Mapping[str, str | None],
    knob_items: Sequence[str] = (),
    cross_domain: str | None = None,
) -> KnobGrid:
    """The knob grid of a command line: a grid file, then comma-separated lists over it.

    Parameters
    ----------
    grid_file
        A grid TOML file, or ``None`` for the kernel defaults.
    lists
        Knob name -> comma-separated values (``None``: not given), e.g.
        ``{"pages_to_scan": "100,1000"}``.
    knob_items
        ``NAME=V1,V2`` texts for any other knob.
    cross_domain
        ``allow``, ``deny`` or ``allow,deny``.

    Raises
    ------
    KnobError
        An unknown knob or an impossible value.
    UsageProblem
        A ``knob_items`` text without ``=``.
    """
    from planner.errors import UsageProblem

    kgrid = load_grid(grid_file) if grid_file is not None else KnobGrid()
    axes: list[tuple[str, tuple[Any, ...]]] = [
        (name, parse_knob_list(name, text)) for name, text in lists.items() if text is not None
    ]
    for item in knob_items:
        name, sep, text = item.partition("=")
        if not sep:
            raise UsageProblem(
                f"--knob {item!r} is not NAME=V1,V2", hint="e.g. --knob advisor_max_cpu=40,70"
            )
        axes.append((knob_name(name), parse_knob_list(name, text)))
    if axes:
        kgrid = kgrid.with_axes(axes)
    if cross_domain is not None:
        kgrid = kgrid.with_cross_domain(parse_cross_domain(cross_domain))
    return kgrid


def knob_label(point: Mapping[str, Any]) -> str:
    """A compact text of a grid point, e.g. ``pages_to_scan=100 sleep_ms=20 smart_scan=on``."""
    keys = sorted(point, key=lambda k: (DISPLAY_ORDER.index(k) if k in DISPLAY_ORDER else 99, k))
    return " ".join(f"{k}={_fmt(point[k])}" for k in keys) or "kernel defaults"


__all__ = [
    "KNOB_ALIASES",
    "MAX_KNOB_POINTS",
    "CrossDomain",
    "KnobGrid",
    "grid_from_options",
    "knob_label",
    "knob_name",
    "knob_value",
    "load_grid",
    "parse_cross_domain",
    "parse_knob_list",
]
