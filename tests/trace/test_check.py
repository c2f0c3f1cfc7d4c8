"""``planner.trace.check.as_numpy``: Arrow columns of numbers as numpy arrays, read from
Arrow's buffers (pyarrow's own ``to_numpy`` imports pandas), and ``info`` without pandas."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from planner.testing.builder import World
from planner.trace.check import as_numpy
from tests.procs import run

TYPES = [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32()]
TYPES += [pa.uint64(), pa.float32(), pa.float64()]


def _reference(col: Any, dtype: Any, null: Any) -> np.ndarray[Any, Any]:
    """What the buffers must give: pyarrow's conversion, nulls replaced."""
    values = col.to_pylist()
    return np.array([null if v is None else v for v in values], dtype=dtype)


@pytest.mark.parametrize("arrow_type", TYPES, ids=str)
@pytest.mark.parametrize("with_nulls", [False, True], ids=["no-nulls", "nulls"])
def test_numbers_sliced_and_chunked(arrow_type: pa.DataType, with_nulls: bool) -> None:
    """Every fixed-width number type, in slices (offsets inside the buffers) and chunks,
    with and without nulls, to the column's own dtype and to another one."""
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 100, 70)
    mask = (rng.random(70) < 0.3) if with_nulls else None
    arr = pa.array(raw, type=arrow_type, mask=mask)
    chunked = pa.chunked_array([arr.slice(3, 20), arr.slice(29, 0), arr.slice(30, 33)])
    for col in (arr, arr.slice(5, 40), chunked):
        native = as_numpy(col, arrow_type.to_pandas_dtype())
        fill = np.nan if pa.types.is_floating(arrow_type) else 0
        np.testing.assert_array_equal(native, _reference(col, native.dtype, fill))
        wide = as_numpy(col, np.float64)  # nulls as NaN for a float dtype
        np.testing.assert_array_equal(wide, _reference(col, np.float64, np.nan))
        np.testing.assert_array_equal(
            as_numpy(col, np.int64, null=-7), _reference(col, np.int64, -7)
        )


def test_booleans_empties_and_other_types() -> None:
    """Bit-packed booleans at any offset, empty and all-null columns, and a type that is
    not a fixed-width number (left to pyarrow)."""
    bits = pa.array([True, False, True, True, False, False, True, False, True, True, False])
    for col in (bits, bits.slice(3, 7), pa.chunked_array([bits.slice(1, 4), bits.slice(9, 2)])):
        assert as_numpy(col, bool).tolist() == col.to_pylist()
    nulls = pa.array([None, 1, None], pa.int32()).is_null()
    assert as_numpy(nulls, bool).tolist() == [True, False, True]
    assert as_numpy(pa.array([], pa.uint64()), np.uint64).shape == (0,)
    assert as_numpy(pa.chunked_array([], pa.uint64()), np.uint64).shape == (0,)
    assert as_numpy(pa.nulls(4, pa.int64()), np.int64).tolist() == [0, 0, 0, 0]
    assert np.isnan(as_numpy(pa.nulls(2, pa.int64()), np.float64)).all()
    stamps = pa.array([0, 5], pa.timestamp("s"))
    assert as_numpy(stamps, "datetime64[s]").astype(np.int64).tolist() == [0, 5]


def test_views_are_not_copies() -> None:
    """A chunk without nulls in its own dtype is read in place."""
    arr = pa.array(np.arange(10, dtype=np.uint64))
    view = as_numpy(arr.slice(2, 5), np.uint64)
    assert view.tolist() == [2, 3, 4, 5, 6]
    assert not view.flags.owndata


INFO_CHILD = """
import sys
from planner.cli import main
try:
    main(["info", {path!r}, "--json"])
except SystemExit as exc:
    assert not exc.code, exc.code
assert "pandas" not in sys.modules, "info imported pandas"
"""


def test_info_does_not_import_pandas(tmp_path: Path) -> None:
    """``ksm-planner info`` reads, checks and counts a trace without importing pandas
    (~0.2 s, more than counting 4 M rows): no column goes through pyarrow's pandas path."""
    w = World()
    w.spawn(1, comm="web")
    w.map(1, 0x10000, [1, 1, 2, 0])
    w.snapshot(0.0)
    w.map(1, 0x90000, [3])
    w.snapshot(5.0)
    w.write_trace(tmp_path / "t")
    code = textwrap.dedent(INFO_CHILD.format(path=str(tmp_path / "t")))
    out = run([sys.executable, "-c", code], timeout_s=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert '"command": "info"' in out.stdout


@pytest.mark.parametrize(
    ("renamed", "before", "now", "aslr_off", "exec_"),
    [
        (False, [1, 2, 3], [7, 8, 9], False, False),  # not renamed: the same program
        (True, [1, 2, 3, 4], [1, 2, 3, 4, 5], False, False),  # renamed in place: setproctitle
        (True, [1, 2, 3, 4], [1, 2, 8, 9], False, False),  # half kept: still a rename
        (True, [1, 2, 3, 4], [1, 7, 8, 9], False, True),  # most moved: an exec
        (True, [1, 2, 3], [1, 2, 3], True, True),  # randomisation off: cannot tell
        (True, [], [1, 2], False, True),  # nothing recorded before: cannot tell
    ],
)
def test_a_rename_is_an_exec_only_when_the_mappings_moved(
    renamed: bool, before: list[int], now: list[int], aslr_off: bool, exec_: bool
) -> None:
    from planner.trace.check import runs_a_new_program

    got = runs_a_new_program(
        renamed, np.array(before, np.uint64), np.array(now, np.uint64), aslr_off
    )
    assert got is exec_
