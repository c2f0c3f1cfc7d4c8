"""The document model: tables keep raw values, data files are exact and stable."""

from __future__ import annotations

import json
import math

import pytest

from planner.report.doc import Column, Document, Figure, Para, Section, Table, table


def _table(name: str = "t") -> Table:
    return table(
        name,
        "A table",
        [
            Column("scenario", "scenario", "text"),
            Column("saved_bytes", "saved", "mib", "MiB"),
            Column("share", "share", "pct", "%"),
        ],
        [
            {"scenario": "a,b", "saved_bytes": 117792768, "share": 1 / 3},
            {"scenario": "c", "saved_bytes": None, "share": math.nan},
        ],
    )


def test_cells_are_formatted_and_records_are_raw() -> None:
    t = _table()
    assert t.cells() == [["a,b", "112.3", "33.3"], ["c", "–", "n/a"]]
    assert t.records() == [
        {"scenario": "a,b", "saved_bytes": 117792768, "share": 0.333333},
        {"scenario": "c", "saved_bytes": None, "share": None},
    ]
    assert t.to_csv() == ('scenario,saved_bytes,share\n"a,b",117792768,0.333333\nc,,\n')


def test_a_row_without_a_column_is_refused() -> None:
    with pytest.raises(ValueError, match="row 0 lacks"):
        table("t", "x", [Column("a", "a")], [{"b": 1}])
    with pytest.raises(ValueError, match="duplicate column"):
        table("t", "x", [Column("a", "a"), Column("a", "b")], [])


def test_units_of_raw_values() -> None:
    assert Column("x_bytes", "x", "mib", "MiB").raw_unit == "bytes"
    assert Column("x", "x", "pct", "%").raw_unit == "fraction"
    assert Column("x_s", "x", "s").raw_unit == "s"
    assert Column("x", "saved", "mib", "MiB").header == "saved (MiB)"


def test_document_json_and_name_clashes() -> None:
    t = _table()
    fig = Figure("f", "F", "<svg/>", "caption", (_table("f-data"),))
    doc = Document("T", "s", (Section("a", "A", (Para("x"), t, fig)),), {"tool_version": "v"})
    data = doc.to_json()
    assert list(data["tables"]) == ["t", "f-data"]
    assert data["tables"]["t"]["columns"][1] == {
        "key": "saved_bytes",
        "label": "saved",
        "unit": "bytes",
    }
    assert data["figures"] == {"f": {"title": "F", "data": ["f-data"]}}
    json.dumps(data, allow_nan=False)  # strict JSON: no NaN
    with pytest.raises(ValueError, match="duplicate table names"):
        Document("T", "s", (Section("a", "A", (t, t)),), {})
