"""One way to turn results into JSON: dataclasses and a few rules, no hand-written ``to_dict``.

:func:`to_jsonable` turns a result object into plain JSON values (``dict``, ``list``,
``str``, ``int``, ``float``, ``bool``, ``None``). The rules, in order:

* ``None``, ``bool``, ``str`` and ``int`` stay as they are; a ``float`` too, except NaN and
  the infinities, which JSON cannot hold: they become ``null``. ``float_format`` (e.g.
  :func:`planner.report.fmt.stable_float`) rounds every finite float, when a document must be
  the same on every CPU;
* numpy scalars and arrays become Python numbers and lists; ``Path`` becomes ``str``; an
  ``Enum`` its value; a mapping a ``dict`` with ``str`` keys; a list, tuple or set a list
  (sets sorted);
* an object that still has a ``to_dict()`` method (a type not converted yet) is written by it;
* a pydantic model by ``model_dump(mode="json")``;
* a dataclass by its fields, in order. A field declared with ``metadata=skip()`` is never
  written (bootstrap replicates, back references); one declared with ``metadata=detail("x")``
  is written only when ``"x"`` is in ``include`` (timelines, replicates: large and rarely
  wanted). The properties a class names in ``__json_properties__`` are written after the
  fields (derived figures such as a percentage, computed once by the class);
* anything else is a programming error: ``TypeError``.

So a result type declares its JSON shape where it declares its fields, and a new field is
written without touching any serializer.

Examples
--------
>>> from dataclasses import dataclass, field
>>> @dataclass
... class Saving:
...     __json_properties__ = ("saved_mib",)
...     saved_bytes: int
...     ratio: float
...     replicates: tuple[float, ...] = field(default=(), metadata=detail("replicates"))
...     @property
...     def saved_mib(self) -> float:
...         return self.saved_bytes / 2**20
>>> to_jsonable(Saving(3 << 20, float("nan"), (1.0, 2.0)))
{'saved_bytes': 3145728, 'ratio': None, 'saved_mib': 3.0}
>>> to_jsonable(Saving(1 << 20, 0.5, (1.0,)), include={"replicates"})
{'saved_bytes': 1048576, 'ratio': 0.5, 'replicates': [1.0], 'saved_mib': 1.0}
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable, Collection, Mapping
from pathlib import PurePath
from typing import Any

#: ``metadata`` key of a field that is never written (``False``).
JSON_KEY = "json"
#: ``metadata`` key of a field written only when its group is asked for.
GROUP_KEY = "json_group"


def skip() -> dict[str, Any]:
    """Field metadata: never write this field (back references, bulky internals)."""
    return {JSON_KEY: False}


def detail(group: str) -> dict[str, Any]:
    """Field metadata: write this field only when ``group`` is in ``include``."""
    return {GROUP_KEY: group}


def to_jsonable(
    obj: Any,
    *,
    include: Collection[str] = (),
    float_format: Callable[[float], float] | None = None,
) -> Any:
    """``obj`` as plain JSON values (see the module docstring for the rules).

    Parameters
    ----------
    obj
        A result: dataclasses, mappings, sequences, numbers, strings.
    include
        Groups of optional fields to write (``detail("timelines")`` fields need
        ``"timelines"``).
    float_format
        Applied to every finite float (e.g. rounding to a fixed number of digits).

    Raises
    ------
    TypeError
        An object none of the rules covers.
    """
    return _Writer(frozenset(include), float_format).write(obj)


class _Writer:
    def __init__(self, include: frozenset[str], float_format: Callable[[float], float] | None):
        self.include = include
        self.float_format = float_format

    def write(self, obj: Any) -> Any:
        if obj is None or isinstance(obj, bool | str):
            return obj
        if isinstance(obj, int) and not isinstance(obj, enum.Enum):
            return int(obj)
        if isinstance(obj, float):
            return self._float(obj)
        if type(obj).__module__ == "numpy":
            return self.write(obj.tolist() if hasattr(obj, "shape") and obj.shape else obj.item())
        if isinstance(obj, enum.Enum):
            return self.write(obj.value)
        if isinstance(obj, PurePath):
            return str(obj)
        if isinstance(obj, Mapping):
            return {str(k): self.write(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [self.write(v) for v in obj]
        if isinstance(obj, set | frozenset):
            return [self.write(v) for v in sorted(obj)]
        legacy = getattr(obj, "to_dict", None)
        if callable(legacy):
            return self.write(legacy())
        dump = getattr(obj, "model_dump", None)
        if callable(dump):
            return self.write(dump(mode="json"))
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return self._dataclass(obj)
        raise TypeError(f"cannot write a {type(obj).__name__} as JSON")

    def _float(self, x: float) -> float | None:
        if not math.isfinite(x):
            return None
        return self.float_format(x) if self.float_format is not None else float(x)

    def _dataclass(self, obj: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            if f.metadata.get(JSON_KEY, True) is False:
                continue
            group = f.metadata.get(GROUP_KEY)
            if group is not None and group not in self.include:
                continue
            out[f.name] = self.write(getattr(obj, f.name))
        for name in getattr(type(obj), "__json_properties__", ()):
            out[name] = self.write(getattr(obj, name))
        return out


__all__ = ["detail", "skip", "to_jsonable"]
