"""Stable number formatting for review documents.

Every number a review shows goes through these functions, so that the same value always
prints the same way and units are never left implicit.

**Precision.** Every non-integer number a review writes is first rounded to
:data:`SIGNIFICANT_DIGITS` significant digits by :func:`stable_float`: the raw values of the
data files (:mod:`planner.report.doc`), the values its plots draw (:mod:`planner.report.charts`)
and, before their display rounding, the figures of its text (the formatters below). Integers
(counts of pages, bytes) are written exactly. The fits and bootstrap intervals behind a review
carry floating-point noise that differs between CPUs (BLAS kernels, SIMD code) in the 7th
significant digit and beyond; 6 digits keep that noise out of the written bytes except when
a value falls within the noise of a rounding boundary, and are still far finer than the model's
own error (percent). ``reports/rebuild.py --check`` compares numbers with a tolerance for that
last case. Memory is given in binary units (MiB = 2**20 bytes, GiB =
2**30 bytes), the way ``/proc`` and the kernel documentation count it.

Examples
--------
>>> mib(117_792_768)
'112.3 MiB'
>>> pct(0.3468)
'34.7 %'
>>> interval(0.121, 0.188, pct)
'12.1 % – 18.8 %'
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from collections.abc import Callable

#: Significant digits kept of every non-integer number a review writes (see the module doc).
SIGNIFICANT_DIGITS = 6

MIB = 1 << 20
GIB = 1 << 30
DASH = "–"  # en dash for ranges
NA = "n/a"

#: The display formats a table column can use (see :func:`format_value`).
Fmt = Literal[
    "text",
    "int",
    "float0",
    "float1",
    "float2",
    "float3",
    "mib",
    "gib",
    "bytes",
    "pct",
    "pct_points",
    "percent",
    "s",
    "ratio",
    "bool",
    "sci",
]


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _stable(x: Any) -> Any:
    """A finite float rounded by :func:`stable_float`; integers unchanged."""
    return stable_float(float(x)) if isinstance(x, float) else x


def integer(n: Any) -> str:
    """An integer with thin thousands separators: ``1,234,567``."""
    if not _finite(n):
        return NA
    return f"{round(_stable(n)):,}"


def fixed(x: Any, digits: int = 1) -> str:
    """A float with a fixed number of decimals (``-0.0`` prints as ``0.0``)."""
    if not _finite(x):
        return NA
    text = f"{stable_float(float(x)):,.{digits}f}"
    return text[1:] if text.startswith("-") and _all_zero(text) else text


def _all_zero(text: str) -> bool:
    return all(c in "-0.," for c in text)


def mib(n_bytes: Any, digits: int = 1) -> str:
    """Bytes as MiB: ``'112.3 MiB'``."""
    return NA if not _finite(n_bytes) else f"{fixed(n_bytes / MIB, digits)} MiB"


def gib(n_bytes: Any, digits: int = 2) -> str:
    """Bytes as GiB: ``'19.53 GiB'``."""
    return NA if not _finite(n_bytes) else f"{fixed(n_bytes / GIB, digits)} GiB"


def size(n_bytes: Any) -> str:
    """Bytes in the unit that reads best: B, KiB, MiB or GiB."""
    if not _finite(n_bytes):
        return NA
    n_bytes = _stable(n_bytes)
    a = abs(n_bytes)
    if a >= GIB:
        return gib(n_bytes)
    if a >= MIB:
        return mib(n_bytes)
    if a >= 1024:
        return f"{fixed(n_bytes / 1024, 1)} KiB"
    return f"{integer(n_bytes)} B"


def pct(fraction: Any, digits: int = 1) -> str:
    """A fraction (0..1) as a percentage: ``'34.7 %'``."""
    return NA if not _finite(fraction) else f"{fixed(100.0 * fraction, digits)} %"


def percent(value: Any, digits: int = 1) -> str:
    """A value already in percent: ``'4.6 %'``."""
    return NA if not _finite(value) else f"{fixed(value, digits)} %"


def seconds(s: Any) -> str:
    """A duration: ``'0.84 s'``, ``'51 s'``, ``'6.2 min'``, ``'1.5 h'``."""
    if not _finite(s):
        return NA
    s = _stable(s)
    if s < 10:
        return f"{fixed(s, 2)} s"
    if s < 120:
        return f"{fixed(s, 0)} s"
    if s < 7200:
        return f"{fixed(s / 60, 1)} min"
    return f"{fixed(s / 3600, 1)} h"


def interval(lo: Any, hi: Any, fn: Callable[[Any], str] = str) -> str:
    """A range ``'lo – hi'`` with each end formatted by ``fn``."""
    if not (_finite(lo) and _finite(hi)):
        return NA
    return f"{fn(lo)} {DASH} {fn(hi)}"


def format_value(value: Any, fmt: Fmt) -> str:
    """Format ``value`` for display in a table cell (``None`` prints as an en dash)."""
    if value is None:
        return DASH
    if fmt == "text":
        return str(value)
    if fmt == "bool":
        return "yes" if value else "no"
    if isinstance(value, str):
        return value
    if fmt == "int":
        return integer(value)
    if fmt.startswith("float"):
        return fixed(value, int(fmt[5:]))
    if fmt == "mib":
        return fixed(value / MIB, 1) if _finite(value) else NA
    if fmt == "gib":
        return fixed(value / GIB, 2) if _finite(value) else NA
    if fmt == "bytes":
        return size(value)
    if fmt == "pct":
        return fixed(100.0 * value, 1) if _finite(value) else NA
    if fmt in ("percent", "pct_points"):
        return fixed(value, 1) if _finite(value) else NA
    if fmt == "s":
        return seconds(value)
    if fmt == "ratio":
        return fixed(value, 2) if _finite(value) else NA
    if fmt == "sci":
        return f"{stable_float(float(value)):.3g}" if _finite(value) else NA
    raise ValueError(f"unknown format {fmt!r}")


def stable_float(x: float, significant: int = SIGNIFICANT_DIGITS) -> float:
    """``x`` rounded to ``significant`` significant digits (NaN, infinities and 0 unchanged).

    Examples
    --------
    >>> stable_float(860.778647123), stable_float(0.1 + 0.2), stable_float(2962369350.0)
    (860.779, 0.3, 2962370000.0)
    """
    if not math.isfinite(x) or x == 0:
        return x
    return float(f"{x:.{significant}g}")


__all__ = [
    "DASH",
    "GIB",
    "MIB",
    "NA",
    "SIGNIFICANT_DIGITS",
    "Fmt",
    "fixed",
    "format_value",
    "gib",
    "integer",
    "interval",
    "mib",
    "pct",
    "percent",
    "seconds",
    "size",
    "stable_float",
]
