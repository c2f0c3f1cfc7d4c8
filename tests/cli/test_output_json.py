"""``--json``'s writer (``planner.cli._output._dumps``): the document ``json.dumps`` writes,
long lists an item per line."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from planner.cli._output import _ITEM_PER_LINE, _dumps

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
