"""Damage traces on purpose, for the tests of the verifying readers.

Two kinds of damage: what a disk or a careless copy does (bytes flipped, files cut short:
the manifest's hashes no longer match) and what a forger does (change a table and write
a manifest whose hashes match again: :func:`rehash_manifest`). The first must be refused
by the hash check, the second by the consistency check (:mod:`planner.trace.check`) or,
where the change is consistent, is indistinguishable from a real trace.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq

from planner.trace import schema as S

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import pyarrow as pa


def manifest(trace: Path) -> dict[str, Any]:
    """The parsed manifest of ``trace`` (no checks)."""
    doc: dict[str, Any] = json.loads((trace / S.MANIFEST_NAME).read_text())
    return doc


def write_manifest(trace: Path, doc: Any) -> None:
    """Replace the manifest of ``trace`` with ``doc`` (any JSON value)."""
    (trace / S.MANIFEST_NAME).write_text(json.dumps(doc, indent=1))


def rehash_manifest(trace: Path) -> None:
    """Make the manifest agree with the files again, as a forger would.

    Every listed file that exists gets its current size and SHA-256; ``trace_hash`` is
    recomputed the way the writer computes it.
    """
    doc = manifest(trace)
    files = doc["files"]
    for rel in files:
        p = trace / rel
        if p.is_file():
            data = p.read_bytes()
            files[rel] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel}\t{files[rel]['sha256']}\n".encode())
    doc["trace_hash"] = "sha256:" + h.hexdigest()
    write_manifest(trace, doc)


def table_path(trace: Path, host: str, name: str) -> Path:
    """Path of one table file of ``trace``."""
    return trace / f"{S.HOST_DIR_PREFIX}{host}" / f"{name}.parquet"


def read_raw(trace: Path, host: str, name: str) -> pa.Table:
    """One table as stored (no verification, no checks)."""
    return pq.read_table(table_path(trace, host, name))


def rewrite_table(
    trace: Path, host: str, name: str, change: Callable[[pa.Table], pa.Table]
) -> None:
    """Replace one table with ``change(table)`` and rehash the manifest (a forged trace)."""
    path = table_path(trace, host, name)
    table = pq.read_table(path)
    pq.write_table(change(table), path)
    rehash_manifest(trace)


def flip_bytes(path: Path, offset: int, count: int = 16) -> None:
    """Invert ``count`` bytes of ``path`` from ``offset`` (the size stays the same)."""
    data = bytearray(path.read_bytes())
    for i in range(offset, min(offset + count, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def as_schema_v1(trace: Path, host: str) -> None:
    """Rewrite a trace as schema version 1 (its four tables with their version-1 columns):
    what a reader sees of a trace written before version 2."""
    for name in ("snapshots", "processes", "mappings", "pages"):
        columns = list(S.V1_COLUMNS[name])

        def keep(table: pa.Table, columns: list[str] = columns) -> pa.Table:
            return table.select(columns)

        rewrite_table(trace, host, name, keep)
    doc = manifest(trace)
    for name in ("cgroups", "samples"):
        table_path(trace, host, name).unlink(missing_ok=True)
        doc["files"].pop(f"host={host}/{name}.parquet", None)
    doc["schema_version"] = 1
    write_manifest(trace, doc)
    rehash_manifest(trace)


__all__ = [
    "as_schema_v1",
    "flip_bytes",
    "manifest",
    "read_raw",
    "rehash_manifest",
    "rewrite_table",
    "table_path",
    "write_manifest",
]
