"""The interchange format has one definition (``schema.INTERCHANGE_COLUMNS``): what export
writes, ingest reads, with a reading type that holds every value of the written one."""

from __future__ import annotations

import pyarrow as pa
import pytest

from planner.trace import export, ingest
from planner.trace import schema as S


def test_export_and_ingest_take_their_columns_from_the_schema() -> None:
    assert export.EXPORT_SCHEMA.names == [c.name for c in S.INTERCHANGE_COLUMNS]
    assert list(ingest.INTERCHANGE_TYPES) == export.EXPORT_SCHEMA.names
    assert ingest.EXTENSION_COLUMNS == S.EXTENSION_COLUMNS
    assert S.INTERCHANGE_HEADER == (
        "time_s", "pid", "ppid", "comm", "vma_start", "vma_kind", "page_addr", "content_hash",
        "frame",
    )  # fmt: skip
    assert set(S.INTERCHANGE_REQUIRED) <= set(S.INTERCHANGE_HEADER)
    assert (*S.INTERCHANGE_HEADER, "is_zero", "host") == S.INTERCHANGE_MINIMAL


@pytest.mark.parametrize("col", S.INTERCHANGE_COLUMNS, ids=lambda c: c.name)
def test_what_is_written_is_read_without_loss(col: S.InterchangeColumn) -> None:
    t = col.written
    if pa.types.is_integer(t):
        signed = pa.types.is_signed_integer(t)
        lo = -(2 ** (t.bit_width - 1)) if signed else 0
        hi = 2 ** (t.bit_width - (1 if signed else 0)) - 1
        values = pa.array([0, 1] if col.name == "is_zero" else [lo, hi], t)
    elif pa.types.is_floating(t):
        values = pa.array([0.0, 1e9], t)
    else:
        values = pa.array(["", "x y"], t)
    read = values.cast(col.read)
    back = (
        read.cast(col.written) if not pa.types.is_dictionary(col.read) else read.dictionary_decode()
    )
    assert back.cast(t).to_pylist() == values.to_pylist()
