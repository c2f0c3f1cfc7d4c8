"""A trace is verified before it is trusted, by every command that reads one.

Cases of issue 8 ("a corrupted trace is trusted", "a manifest without trace_hash",
"manifest entries outside the trace directory", "truncated or zstd-corrupt pages",
"Parquet list/struct/binary columns", "replay --host nosuch", "info/export accept traces
that replay rejects"): each gives one line on stderr and the documented exit code (4 for
bad input data, 2 for an unknown --host), no traceback, nothing at ``--out``.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from planner.errors import TraceFormatError
from planner.testing.builder import World
from planner.testing.tamper import (
    as_schema_v1,
    flip_bytes,
    manifest,
    read_raw,
    rehash_manifest,
    rewrite_table,
    table_path,
    write_manifest,
)
from planner.trace import io as trace_io
from planner.trace import schema as S
from planner.trace.io import open_trace

SAMPLE = Path(__file__).resolve().parents[2] / "traces" / "django-preload"
HOST = "web-1"


def build(out: Path, *, base_pid: int = 100) -> Path:
    """A small trace: a master, a forked worker, three snapshots."""
    w = World(host=HOST)
    w.spawn(base_pid, comm="master")
    w.map(base_pid, 0x10000, [1, 1, 2, 0, 3, 4], kind="heap")
    w.snapshot(0.0)
    w.fork(base_pid, base_pid + 1, comm="worker")
    w.write(base_pid + 1, 0x11000, 7)
    w.snapshot(10.0)
    w.write(base_pid + 1, 0x12000, 8)
    w.snapshot(20.0)
    w.write_trace(out)
    return out


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    return build(tmp_path / "t")


def commands(trace: Path, out: Path) -> dict[str, list[Any]]:
    """Every command that reads a trace, each writing (if it writes) to ``out``."""
    return {
        "replay": ["replay", trace, "--json"],
        "info": ["info", trace, "--json"],
        "export": ["export", trace, "--out", out / "x.csv"],
        "whatif": ["whatif", trace, "--out", out / "w", "--json"],
        "report": ["report", trace, "--out", out / "r"],
    }


def one_line(cli: Any, args: list[Any], code: int = 4, *, out: Path | None = None) -> str:
    """Run ``args``; assert ``code``, exactly one error line, no traceback, nothing at out."""
    before = set(out.iterdir()) if out is not None else set()
    got, stdout, err = cli(args)
    assert got == code, err
    assert stdout == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ksm-planner: error: ")
    assert "Traceback" not in err
    if out is not None:
        assert set(out.iterdir()) == before  # nothing written, no temporary left
    return lines[0]


def all_refuse(cli: Any, trace: Path, tmp_path: Path, *needles: str) -> set[str]:
    """Every command refuses ``trace`` with one line containing ``needles``; the lines."""
    out = tmp_path / "outputs"
    out.mkdir(exist_ok=True)
    lines = set()
    for name, args in commands(trace, out).items():
        line = one_line(cli, args, out=out)
        for n in needles:
            assert n in line, (name, line)
        lines.add(line)
    return lines


# ----------------------------------------------------------------------------- the manifest


def test_a_clean_trace_is_read_by_every_reader(cli: Any, trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "outputs"
    out.mkdir()
    for name, args in commands(trace, out).items():
        code, _, err = cli(args)
        assert code == 0, (name, err)


def test_trace_hash_edited_to_zeros_is_refused(cli: Any, trace: Path, tmp_path: Path) -> None:
    doc = manifest(trace)
    doc["trace_hash"] = "sha256:" + "0" * 64
    write_manifest(trace, doc)
    all_refuse(cli, trace, tmp_path, "trace_hash", "does not match")


def test_manifest_without_trace_hash_is_refused(cli: Any, trace: Path, tmp_path: Path) -> None:
    doc = manifest(trace)
    del doc["trace_hash"]
    write_manifest(trace, doc)
    all_refuse(cli, trace, tmp_path, "no trace_hash")


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda d: d.update(schema_version="1"), "invalid schema_version"),
        (lambda d: d.update(schema_version=True), "invalid schema_version"),
        (lambda d: d.update(hosts="web-1"), "hosts must be a list"),
        (lambda d: d.update(hosts=[]), "host list is empty"),
        (lambda d: d.update(hosts=[HOST, HOST]), "appears twice"),
        (lambda d: d.update(hosts=[HOST, 7]), "hosts must be a list"),
        (lambda d: d.update(files=list(d["files"])), "files must be an object"),
        (lambda d: d.update(trace_hash=12), "trace_hash must be"),
        (lambda d: d.update(source=["x"]), "source must be a string"),
        (lambda d: d.update(capture="x"), "capture must be an object"),
        (
            lambda d: d["files"][f"host={HOST}/pages.parquet"].update(bytes="12"),
            "bytes must be a non-negative integer",
        ),
        (
            lambda d: d["files"][f"host={HOST}/pages.parquet"].update(sha256="xyz"),
            "sha256 must be 64 lowercase hex digits",
        ),
        (lambda d: d["files"].pop(f"host={HOST}/pages.parquet"), "does not list"),
        (lambda d: d.update(format="something-else"), "not a ksm-planner trace manifest"),
    ],
    ids=[
        "version-string",
        "version-bool",
        "hosts-string",
        "hosts-empty",
        "hosts-twice",
        "hosts-not-strings",
        "files-list",
        "trace-hash-int",
        "source-list",
        "capture-string",
        "bytes-string",
        "sha256-not-hex",
        "file-missing",
        "format",
    ],
)
def test_manifest_with_wrong_types_is_refused(
    cli: Any, trace: Path, tmp_path: Path, change: Any, needle: str
) -> None:
    doc = manifest(trace)
    change(doc)
    write_manifest(trace, doc)
    all_refuse(cli, trace, tmp_path, needle)


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[" * 100_000 + "]" * 100_000,
        '{"format": "ksm-planner-trace", "format": "x"}',
        '{"format": "ksm-planner-trace", "schema_version": NaN}',
        "\udcff",
    ],
    ids=["not-json", "nested", "duplicate-key", "nan", "not-utf8"],
)
def test_unparseable_manifest_is_refused(cli: Any, trace: Path, text: str) -> None:
    (trace / S.MANIFEST_NAME).write_bytes(text.encode("utf-8", "surrogateescape"))
    line = one_line(cli, ["info", trace])
    assert S.MANIFEST_NAME in line


def test_outside_entries_are_never_touched(
    cli: Any, trace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``../../etc/passwd`` in the manifest: refused before any stat or open of it."""
    secret = tmp_path / "secret"
    secret.write_text("do not read")
    touched: list[str] = []
    for name in ("stat", "lstat", "open", "access", "scandir", "listdir"):
        real = getattr(os, name)

        def spy(path: Any, *args: Any, _real: Any = real, **kwargs: Any) -> Any:
            touched.append(os.fsdecode(path) if isinstance(path, str | bytes | Path) else "")
            return _real(path, *args, **kwargs)

        monkeypatch.setattr(os, name, spy)
    for entry in ("../../etc/passwd", "/etc/passwd", "../secret", f"host={HOST}/../../secret"):
        doc = manifest(trace)
        doc["files"][entry] = {"bytes": 11, "sha256": "0" * 64}
        write_manifest(trace, doc)
        touched.clear()
        for args in (["info", trace], ["replay", trace]):
            line = one_line(cli, args)
            assert "not a file of this trace" in line
            assert "11" not in line.split("lists", 1)[1].split(",")[0]  # no size reported
        assert not [p for p in touched if "passwd" in p or "secret" in p], touched
        doc["files"].pop(entry)
        write_manifest(trace, doc)


# ----------------------------------------------------------------------------- the files


def test_flipped_bytes_are_refused_by_every_reader(cli: Any, trace: Path, tmp_path: Path) -> None:
    pages = table_path(trace, HOST, "pages")
    flip_bytes(pages, pages.stat().st_size // 2)
    all_refuse(cli, trace, tmp_path, "pages.parquet", "does not match the SHA-256")


def test_flipped_bytes_in_the_sample_trace_are_refused(cli: Any, tmp_path: Path) -> None:
    """The issue's case: 16 bytes of pages.parquet flipped, same size, at many offsets."""
    t = tmp_path / "sample"
    shutil.copytree(SAMPLE, t)
    pages = table_path(t, "vm", "pages")
    clean = pages.read_bytes()
    for k in range(1, 28):
        offset = len(clean) * k // 28
        flip_bytes(pages, offset)
        line = one_line(cli, ["replay", t, "--json"])
        assert "does not match the SHA-256" in line
        pages.write_bytes(clean)


@pytest.mark.parametrize("name", ["pages", "snapshots", "processes", "mappings"])
def test_truncated_files_are_refused(cli: Any, trace: Path, tmp_path: Path, name: str) -> None:
    p = table_path(trace, HOST, name)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    all_refuse(cli, trace, tmp_path, f"{name}.parquet", "truncated")


def test_a_file_changed_after_open_is_refused(trace: Path) -> None:
    tr = open_trace(trace)
    flip_bytes(table_path(trace, HOST, "processes"), 100, 4)
    with pytest.raises(TraceFormatError, match="does not match the SHA-256"):
        tr.load_host()


def test_symlink_to_a_good_copy_outside_is_refused(cli: Any, trace: Path, tmp_path: Path) -> None:
    """The link's target is byte-identical (its hash matches): refused for being a link."""
    outside = tmp_path / "outside.parquet"
    p = table_path(trace, HOST, "pages")
    shutil.copy(p, outside)
    p.unlink()
    p.symlink_to(outside)
    all_refuse(cli, trace, tmp_path, "is a symbolic link")


def test_symlinked_host_directory_is_refused(cli: Any, trace: Path, tmp_path: Path) -> None:
    d = trace / f"host={HOST}"
    shutil.copytree(d, tmp_path / "elsewhere")
    shutil.rmtree(d)
    d.symlink_to(tmp_path / "elsewhere")
    all_refuse(cli, trace, tmp_path, "is a symbolic link")


def test_symlinked_manifest_is_refused(cli: Any, trace: Path, tmp_path: Path) -> None:
    m = trace / S.MANIFEST_NAME
    shutil.copy(m, tmp_path / "m.json")
    m.unlink()
    m.symlink_to(tmp_path / "m.json")
    all_refuse(cli, trace, tmp_path, "is a symbolic link")


@pytest.mark.timeout(60)
def test_fifo_in_place_of_a_file_is_refused_without_blocking(
    cli: Any, trace: Path, tmp_path: Path
) -> None:
    p = table_path(trace, HOST, "pages")
    p.unlink()
    os.mkfifo(p)
    all_refuse(cli, trace, tmp_path, "named pipe")


def test_directory_in_place_of_a_file_is_refused(cli: Any, trace: Path, tmp_path: Path) -> None:
    p = table_path(trace, HOST, "mappings")
    p.unlink()
    p.mkdir()
    all_refuse(cli, trace, tmp_path, "is a directory")


def test_device_in_place_of_a_file_is_refused(cli: Any, trace: Path, tmp_path: Path) -> None:
    p = table_path(trace, HOST, "pages")
    p.unlink()
    try:
        os.mknod(p, 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero
    except PermissionError:
        pytest.skip("mknod needs CAP_MKNOD")
    all_refuse(cli, trace, tmp_path, "character device")


def test_trace_path_that_is_a_fifo_is_refused(cli: Any, tmp_path: Path) -> None:
    p = tmp_path / "fifo"
    os.mkfifo(p)
    assert "named pipe" in one_line(cli, ["info", p])


# ----------------------------------------------------------------------------- forged traces
#
# A forger changes a table and rewrites the manifest so that the hashes match again: the
# hash check passes, the consistency check refuses. Every reader runs the same check, so
# replay, info and export (and whatif, report) refuse with the very same line.


def _swap_pages(trace: Path, tmp_path: Path) -> None:
    other = build(tmp_path / "other", base_pid=500)
    shutil.copy(table_path(other, HOST, "pages"), table_path(trace, HOST, "pages"))
    rehash_manifest(trace)


def _column(table: pa.Table, name: str, values: Any) -> pa.Table:
    i = table.column_names.index(name)
    return table.set_column(i, table.schema.field(i), pa.array(values, table.schema.field(i).type))


def _pid0(trace: Path, tmp_path: Path) -> None:
    rewrite_table(
        trace,
        HOST,
        "processes",
        lambda t: _column(t, "pid", [0 if p == 100 else p for p in t.column("pid").to_pylist()]),
    )


def _times_backwards(trace: Path, tmp_path: Path) -> None:
    rewrite_table(trace, HOST, "snapshots", lambda t: _column(t, "time_s", [0.0, 20.0, 10.0]))


def _duplicate_page(trace: Path, tmp_path: Path) -> None:
    def dup(t: pa.Table) -> pa.Table:
        return pa.concat_tables([t.slice(0, 1), t]).combine_chunks()

    rewrite_table(trace, HOST, "pages", dup)


def _unknown_snapshot(trace: Path, tmp_path: Path) -> None:
    def shift(t: pa.Table) -> pa.Table:
        sid = t.column("snapshot_id").to_pylist()
        return _column(t, "snapshot_id", [s if s < 2 else 7 for s in sid])

    rewrite_table(trace, HOST, "pages", shift)


def _comes_back(trace: Path, tmp_path: Path) -> None:
    # the master (pid 100) is live at snapshots 0, 1 and 2: drop its row of snapshot 1
    rewrite_table(
        trace,
        HOST,
        "processes",
        lambda t: t.filter(
            pc.invert(pc.and_(pc.equal(t.column("snapshot_id"), 1), pc.equal(t.column("pid"), 100)))
        ),
    )


def _hash_missing(trace: Path, tmp_path: Path) -> None:
    def drop(t: pa.Table) -> pa.Table:
        h = t.column("content_hash").to_pylist()
        h[0] = None
        return _column(t, "content_hash", h)

    rewrite_table(trace, HOST, "pages", drop)


def _wrong_host(trace: Path, tmp_path: Path) -> None:
    rewrite_table(trace, HOST, "snapshots", lambda t: _column(t, "host", ["db-9"] * t.num_rows))


def _unaligned(trace: Path, tmp_path: Path) -> None:
    def shift(t: pa.Table) -> pa.Table:
        a = t.column("page_addr").to_pylist()
        a[-1] += 8
        return _column(t, "page_addr", a)

    rewrite_table(trace, HOST, "pages", shift)


def _counts(**values: int | None) -> Any:
    def change(t: pa.Table) -> pa.Table:
        for name, value in values.items():
            t = _column(t, name, [value] * t.num_rows)
        return t

    return lambda trace, tmp_path: rewrite_table(trace, HOST, "pages", change)


def _samples_rows(**row: Any) -> Any:
    base = {
        "snapshot_id": 0,
        "sample": 0,
        "pid": 100,
        "proc_start": 0,
        "t0_s": 1.0,
        "t1_s": 1.5,
        "pages_hashed": 4,
        "pages_changed": 1,
        "state": "ok",
    }
    table = pa.Table.from_pylist([{**base, **row}], schema=S.SAMPLES_SCHEMA)
    return lambda trace, tmp_path: rewrite_table(trace, HOST, "samples", lambda t: table)


def _cgroup_rows(**row: Any) -> Any:
    base = {"snapshot_id": 0, "cgroup": "/web", "cgroup_version": 2, "memory_current_bytes": 9}
    table = pa.Table.from_pylist([{**base, **row}], schema=S.CGROUPS_SCHEMA)
    return lambda trace, tmp_path: rewrite_table(trace, HOST, "cgroups", lambda t: table)


FORGED = {
    "count-above-samples": (
        _counts(samples=2, frame_changes=3),
        "has frame_changes 3 but only 2 samples",
    ),
    "changes-above-checks": (
        _counts(samples=9, content_checks=2, content_changes=3),
        "has content_changes 3 but only 2 content checks",
    ),
    "counts-without-samples": (_counts(absent_samples=1), "has absent_samples but no samples"),
    "sample-of-unknown-snapshot": (_samples_rows(snapshot_id=5), "snapshot 5 is not in"),
    "sample-times-reversed": (_samples_rows(t0_s=2.0, t1_s=1.0), "are not in order"),
    "sample-changed-above-hashed": (_samples_rows(pages_changed=5), "5 pages changed of 4"),
    "sample-state": (_samples_rows(state="weird"), "unknown sample state"),
    "cgroup-version-3": (_cgroup_rows(cgroup_version=3), "neither 1 nor 2"),
    "cgroup-negative-bytes": (_cgroup_rows(anon_bytes=-1), "anon_bytes -1 is negative"),
    "pages-of-another-trace": (_swap_pages, "no live process row"),
    "pid-0": (_pid0, "pid 0 is not a user process"),
    "times-backwards": (_times_backwards, "snapshot times go backwards"),
    "page-twice": (_duplicate_page, "appears twice"),
    "unknown-snapshot": (_unknown_snapshot, "not in the snapshots table"),
    "process-comes-back": (_comes_back, "comes back"),
    "hash-missing": (_hash_missing, "has no content hash"),
    "host-mismatch": (_wrong_host, "stored under host"),
    "unaligned-page": (_unaligned, "not aligned"),
}


@pytest.mark.parametrize("case", sorted(FORGED))
def test_forged_traces_are_refused_alike_by_every_reader(
    cli: Any, trace: Path, tmp_path: Path, case: str
) -> None:
    forge, needle = FORGED[case]
    forge(trace, tmp_path)
    lines = all_refuse(cli, trace, tmp_path, needle)
    assert len(lines) == 1, lines  # replay, whatif, report, info and export: the same line


def test_empty_host_list_is_refused_alike(cli: Any, trace: Path, tmp_path: Path) -> None:
    doc = manifest(trace)
    doc["hosts"] = []
    write_manifest(trace, doc)
    assert len(all_refuse(cli, trace, tmp_path, "host list is empty")) == 1


# ----------------------------------------------------------------------------- broken files
#
# Written broken (the hashes match what is there): the decoder's error becomes one line.


def _zstd_corrupt(trace: Path) -> None:
    p = table_path(trace, HOST, "pages")
    data = bytearray(p.read_bytes())
    i = data.find(b"\x28\xb5\x2f\xfd")  # the magic number of the first zstd frame
    assert i > 0
    data[i : i + 4] = b"\x00\x00\x00\x00"
    p.write_bytes(bytes(data))
    rehash_manifest(trace)


def _cut(trace: Path) -> None:
    p = table_path(trace, HOST, "pages")
    p.write_bytes(p.read_bytes()[:-100])
    rehash_manifest(trace)


def _nested(kind: str) -> Any:
    def change(trace: Path) -> None:
        def retype(t: pa.Table) -> pa.Table:
            h = t.column("content_hash").to_pylist()
            values: Any = {
                "list": pa.array([[v] for v in h], pa.list_(pa.uint64())),
                "struct": pa.array([{"h": v} for v in h], pa.struct([("h", pa.uint64())])),
                "binary": pa.array([str(v).encode() for v in h], pa.binary()),
            }[kind]
            i = t.column_names.index("content_hash")
            return t.set_column(i, "content_hash", values)

        rewrite_table(trace, HOST, "pages", retype)

    return change


def _extra_binary_column(trace: Path) -> None:
    rewrite_table(
        trace,
        HOST,
        "processes",
        lambda t: t.append_column("blob", pa.array([b"\x00"] * t.num_rows, pa.binary())),
    )


def _big_field(trace: Path) -> None:
    rewrite_table(
        trace,
        HOST,
        "processes",
        lambda t: _column(t, "state", ["x" * (5 << 20)] * t.num_rows),
    )


BROKEN = {
    "zstd-corrupt": (_zstd_corrupt, "cannot decode"),
    "truncated-footer": (_cut, "cannot decode"),
    "list-column": (_nested("list"), "has type list"),
    "struct-column": (_nested("struct"), "has type struct"),
    "binary-column": (_nested("binary"), "has type binary"),
    "unknown-binary-column": (_extra_binary_column, "unknown column 'blob'"),
    "field-over-4-mib": (_big_field, "unknown process state"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_files_give_one_line(cli: Any, trace: Path, tmp_path: Path, case: str) -> None:
    damage, needle = BROKEN[case]
    damage(trace)
    all_refuse(cli, trace, tmp_path, needle)


# ----------------------------------------------------------------------------- hosts


def test_replay_unknown_host_names_the_hosts(cli: Any, trace: Path) -> None:
    line = one_line(cli, ["replay", trace, "--host", "nosuch"], code=2)
    assert "no host 'nosuch'" in line
    assert f"hosts are: {HOST}" in line


def test_replay_unknown_host_on_the_sample(cli: Any) -> None:
    line = one_line(cli, ["replay", SAMPLE, "--host", "nosuch"], code=2)
    assert "hosts are: vm" in line


# ----------------------------------------------------------------------------- the readers


def test_verified_files_are_remembered_only_while_unchanged(trace: Path) -> None:
    """The in-process memory of hashed files: a change (even with mtime restored) rehashes."""
    p = table_path(trace, HOST, "processes")
    old = p.stat()
    os.utime(p, ns=(old.st_atime_ns - 10_000_000_000, old.st_mtime_ns - 10_000_000_000))
    trace_io.forget_verified()
    tr = open_trace(trace)
    tr.verify()  # ctime is older than 2 s? (it is not: just written) -> nothing remembered
    assert not trace_io._VERIFIED
    # pretend the check ran later than the racy window
    st = p.stat()
    sha = manifest(trace)["files"][f"host={HOST}/processes.parquet"]["sha256"]
    trace_io._remember(st, sha, st.st_ctime_ns + 3_000_000_000)
    assert trace_io._known_good(p.stat(), sha)
    data = bytearray(p.read_bytes())
    data[200] ^= 0xFF
    p.write_bytes(bytes(data))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # the mtime put back
    assert p.stat().st_mtime_ns == st.st_mtime_ns
    assert not trace_io._known_good(p.stat(), sha)  # the ctime moved: not known any more
    with pytest.raises(TraceFormatError, match="does not match the SHA-256"):
        tr.read_table(HOST, "processes")
    trace_io.forget_verified()


def test_streaming_and_whole_readers_agree(trace: Path) -> None:
    tr = open_trace(trace)
    whole = tr.load_host().pages
    streamed = pa.concat_tables(list(tr.iter_pages(HOST, batch_rows=3)))
    assert streamed.equals(whole)
    assert tr.pages_rows(HOST) == whole.num_rows


def test_sample_traces_pass_every_check() -> None:
    for name in ("django-preload", "django-nopreload"):
        tr = open_trace(SAMPLE.parent / name)
        tr.verify()
        ht = tr.load_host()
        assert ht.pages.num_rows > 400_000


def test_raw_reader_helpers_see_the_damage(trace: Path) -> None:
    """(The tamper helpers really write what the tests above rely on.)"""
    _pid0(trace, trace.parent)
    assert 0 in read_raw(trace, HOST, "processes").column("pid").to_pylist()
    assert json.loads((trace / S.MANIFEST_NAME).read_text())["trace_hash"].startswith("sha256:")
    assert pq.read_table(table_path(trace, HOST, "pages")).num_rows > 0


# ----------------------------------------------------------------------------- versions


def _as_v1(trace: Path) -> None:
    as_schema_v1(trace, HOST)


def test_a_version_1_trace_is_read_by_every_reader(cli: Any, trace: Path, tmp_path: Path) -> None:
    _as_v1(trace)
    assert open_trace(trace).schema_version == 1
    out = tmp_path / "outputs"
    out.mkdir()
    for name, args in commands(trace, out).items():
        code, _, err = cli(args)
        assert code == 0, (name, err)
    ht = open_trace(trace).load_host()
    assert ht.pages.column_names == S.PAGES_SCHEMA.names  # new columns added as nulls
    assert ht.pages.column("samples").null_count == ht.pages.num_rows
    assert ht.samples.num_rows == 0


def test_a_version_1_trace_may_not_list_version_2_files(
    cli: Any, trace: Path, tmp_path: Path
) -> None:
    doc = manifest(trace)
    doc["schema_version"] = 1
    write_manifest(trace, doc)
    rehash_manifest(trace)
    all_refuse(cli, trace, tmp_path, "cgroups.parquet", "not a file of this trace")


def test_a_version_1_file_with_version_2_columns_is_refused(
    cli: Any, trace: Path, tmp_path: Path
) -> None:
    _as_v1(trace)
    rewrite_table(
        trace,
        HOST,
        "pages",
        lambda t: t.append_column("samples", pa.nulls(t.num_rows, pa.uint16())),
    )
    all_refuse(cli, trace, tmp_path, "pages.parquet", "unknown column 'samples'")


def test_a_version_2_trace_must_list_its_new_tables(cli: Any, trace: Path, tmp_path: Path) -> None:
    doc = manifest(trace)
    doc["files"].pop(f"host={HOST}/samples.parquet")
    write_manifest(trace, doc)
    rehash_manifest(trace)
    all_refuse(cli, trace, tmp_path, "does not list", "samples.parquet")
