"""``--json``'s writer (``planner.cli._output._dumps``): the document ``json.dumps`` writes
of the cleaned document (``_clean``), long lists an item per line."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from planner.cli._output import _ITEM_PER_LINE, _clean, _dumps, _key

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5)
)
_DOCS = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=4), inner, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=150)
@given(doc=_DOCS)
def test_short_lists_are_written_as_json_dumps_indent_1(doc: Any) -> None:
    assert _dumps(doc) == json.dumps(doc, indent=1)


@settings(max_examples=15)
@given(items=st.lists(_DOCS, min_size=_ITEM_PER_LINE + 1, max_size=_ITEM_PER_LINE + 5))
def test_a_long_list_is_an_item_per_line(items: list[Any]) -> None:
    doc = {"grid": items, "final": {"n": 1}}
    text = _dumps(doc)
    assert json.loads(text) == json.loads(json.dumps(doc))
    lines = text.splitlines()
    start = lines.index(' "grid": [')
    for i, item in enumerate(items):
        line = lines[start + 1 + i]
        assert line == "  " + json.dumps(item) + ("," if i + 1 < len(items) else "")


# what ``_clean`` changes: NaN and infinities, numpy scalars, tuples, paths, keys of other types
_RAW_SCALARS = (
    _SCALARS
    | st.floats()
    | st.integers(-(2**40), 2**40).map(np.int64)
    | st.floats(width=32).map(np.float32)
    | st.floats().map(np.float64)
    | st.booleans().map(np.bool_)
    | st.text(max_size=3).map(lambda t: Path("/p", t))
)
_KEYS = (
    st.text(max_size=4)
    | st.integers()
    | st.booleans()
    | st.none()
    | st.floats()
    | st.integers(0, 9).map(np.int64)
)
_RAW = st.recursive(
    _RAW_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(_KEYS, inner, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=200)
@given(doc=_RAW)
@example(doc={"null": None, None: None})  # two keys written alike are one (a CI draw)
@example(doc={"1": 0, 1: 2})
def test_any_document_is_written_as_its_cleaned_form(doc: Any) -> None:
    assert _dumps(doc) == json.dumps(_clean(doc), indent=1)


_RAW_ITEMS = st.recursive(
    _RAW_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=3),
    max_leaves=4,
)


@settings(max_examples=25)
@given(items=st.lists(_RAW_ITEMS, min_size=_ITEM_PER_LINE + 1, max_size=_ITEM_PER_LINE + 2))
@example(items=[{None: 1, "null": 2}, [{"true": 0, True: 1}]] * _ITEM_PER_LINE)
def test_a_long_lists_items_are_cleaned_each(items: list[Any]) -> None:
    """Items go to the C encoder as they are unless it refuses them: the line of each is
    the cleaned item's all the same."""
    text = _dumps({"grid": items})
    lines = text.splitlines()
    for i, item in enumerate(items):
        line = lines[2 + i]
        assert line == "  " + json.dumps(_clean(item)) + ("," if i + 1 < len(items) else "")
    json.loads(text)  # never NaN or Infinity


def test_a_long_list_of_non_finite_numbers_is_nulls() -> None:
    items = [{"t": float("nan"), "n": np.int64(3)}, (math.inf,)] * 40
    assert json.loads(_dumps({"grid": items}))["grid"][:2] == [{"t": None, "n": 3}, [None]]


@given(
    key=st.text(max_size=4)
    | st.integers()
    | st.booleans()
    | st.none()
    | st.floats(allow_nan=False, allow_infinity=False)
)
def test_a_key_is_written_as_json_writes_it(key: Any) -> None:
    assert [_key(key)] == list(json.loads(json.dumps({key: 0})))
