"""Ingest of interchange CSV/Parquet and schema-v0 Parquet into trace format v1."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from planner.trace import schema as S
from planner.trace.ingest import ingest
from planner.trace.io import HostTrace, open_trace

HEADER = "time_s,pid,ppid,comm,vma_start,vma_kind,page_addr,content_hash,frame"
ZERO = S.PLAIN_XXH3_ZERO_PAGE_HASH


def csv_text(rows: list[str], header: str = HEADER) -> str:
    return "\n".join([header, *rows]) + "\n"


def load(path: Path, host: str | None = None) -> HostTrace:
    return open_trace(path).load_host(host)


def rows_of(table: pa.Table, *cols: str) -> list[tuple[Any, ...]]:
    return list(zip(*(table.column(c).to_pylist() for c in cols), strict=True))


# A fork-like fleet: pid 100 and its child 101 share frames 1 and 2; 101 has its own copy
# of content 12 (frame 3); 102 is another process. Rows deliberately out of (pid, addr) order.
FLEET = [
    "0,101,100,worker,4096,heap,8192,12,3",
    "0,100,1,master,4096,heap,4096,11,1",
    f"0,100,1,master,4096,heap,8192,{ZERO},2",
    "0,101,100,worker,4096,heap,4096,11,1",
    "0,102,1,other,65536,weird_kind,65536,11,9",
    f"10,100,1,master,4096,heap,4096,{ZERO},1",
    "10,102,1,other,65536,anon,65536,11,9",
]


def test_csv_fleet_tables(tmp_path: Path) -> None:
    src = tmp_path / "fleet.csv"
    src.write_text(csv_text(FLEET))
    result = ingest(src, tmp_path / "t")
    assert result.rows == 7
    assert result.source_format == "interchange-csv"
    assert [h.host for h in result.hosts] == ["fleet"]  # default host: the file stem
    assert any("weird_kind" in w for w in result.warnings)

    ht = load(tmp_path / "t")
    assert ht.times_s.tolist() == [0.0, 10.0]
    pages = ht.pages
    assert rows_of(pages, "snapshot_id", "pid", "page_addr", "content_hash", "frame_id") == [
        (0, 100, 4096, 11, 1),
        (0, 100, 8192, ZERO, 2),
        (0, 101, 4096, 11, 1),
        (0, 101, 8192, 12, 3),
        (0, 102, 65536, 11, 9),
        (1, 100, 4096, ZERO, 1),
        (1, 102, 65536, 11, 9),
    ]
    # zero pages come from the default zero hash (no is_zero column)
    zero = [bool(f & S.PageFlag.ZERO) for f in pages.column("flags").to_pylist()]
    assert zero == [False, True, False, False, False, True, False]
    procs = ht.processes
    assert rows_of(procs, "snapshot_id", "pid", "ppid", "comm", "pages") == [
        (0, 100, 1, "master", 2),
        (0, 101, 100, "worker", 2),
        (0, 102, 1, "other", 1),
        (1, 100, 1, "master", 1),
        (1, 102, 1, "other", 1),
    ]
    maps = ht.mappings
    assert rows_of(maps, "snapshot_id", "pid", "start", "end", "kind", "present_pages") == [
        (0, 100, 4096, 12288, "heap", 2),
        (0, 101, 4096, 12288, "heap", 2),
        (0, 102, 65536, 69632, "other", 1),  # unknown kinds become "other"
        (1, 100, 4096, 8192, "heap", 1),
        (1, 102, 65536, 69632, "anon", 1),
    ]
    snap = ht.snapshots.to_pylist()[0]
    assert snap["hash_algo"] == "interchange"
    assert snap["zero_hash"] == ZERO
    assert json.loads(snap["capture_options"])["ingested_from"] == "fleet.csv"


def test_parquet_and_gzip_csv_give_the_same_trace(tmp_path: Path) -> None:
    src = tmp_path / "fleet.csv"
    src.write_text(csv_text(FLEET))
    ingest(src, tmp_path / "from-csv", host="h")
    table = pacsv.read_csv(
        src, convert_options=pacsv.ConvertOptions(column_types={"content_hash": pa.uint64()})
    )
    pq.write_table(table, tmp_path / "fleet.parquet")
    ingest(tmp_path / "fleet.parquet", tmp_path / "from-pq", host="h")
    (tmp_path / "fleet.csv.gz").write_bytes(gzip.compress(src.read_bytes()))
    ingest(tmp_path / "fleet.csv.gz", tmp_path / "from-gz", host="h")
    a = load(tmp_path / "from-csv")
    for other in ("from-pq", "from-gz"):
        b = load(tmp_path / other)
        for name in ("pages", "processes", "mappings"):
            assert getattr(a, name).equals(getattr(b, name)), (other, name)


def test_without_frames_and_mappings(tmp_path: Path) -> None:
    """No frame: every page its own frame, stable over time; no vma_start: contiguous runs."""
    src = tmp_path / "min.csv"
    rows = [
        "0,7,4096,1",
        "0,7,8192,1",
        "0,7,20480,2",
        "0,8,4096,1",
        "5,7,4096,1",
    ]
    src.write_text(csv_text(rows, header="time_s,pid,page_addr,content_hash"))
    ingest(src, tmp_path / "t")
    ht = load(tmp_path / "t")
    frames = ht.pages.column("frame_id").to_pylist()
    assert len(set(frames[:4])) == 4  # distinct pages, distinct frames
    assert frames[4] == frames[0]  # same process and page later: same frame
    assert rows_of(ht.mappings, "snapshot_id", "pid", "start", "end", "kind") == [
        (0, 7, 4096, 12288, "other"),
        (0, 7, 20480, 24576, "other"),
        (0, 8, 4096, 8192, "other"),
        (1, 7, 4096, 8192, "other"),
    ]


def test_is_zero_column_and_zero_hash_override(tmp_path: Path) -> None:
    src = tmp_path / "z.csv"
    src.write_text(
        csv_text(
            ["0,1,4096,5,1", f"0,1,8192,{ZERO},0", "0,1,12288,5,"],
            header="time_s,pid,page_addr,content_hash,is_zero",
        )
    )
    ingest(src, tmp_path / "a")
    zero = [
        bool(f & S.PageFlag.ZERO) for f in load(tmp_path / "a").pages.column("flags").to_pylist()
    ]
    assert zero == [True, False, False]  # is_zero wins; an empty is_zero falls back to the hash

    ingest(src, tmp_path / "b", zero_hash=5)
    zero = [
        bool(f & S.PageFlag.ZERO) for f in load(tmp_path / "b").pages.column("flags").to_pylist()
    ]
    assert zero == [True, False, True]
    assert load(tmp_path / "b").snapshots.column("zero_hash").to_pylist() == [5]


def test_host_column_splits_hosts(tmp_path: Path) -> None:
    header = HEADER + ",host"
    rows = [
        "0,1,0,a,4096,anon,4096,11,1,web-1",
        "0,1,0,a,4096,anon,4096,11,1,web-2",
        "5,1,0,a,4096,anon,4096,12,1,web-1",
        "7,2,0,b,4096,anon,4096,11,4,web-2",
    ]
    src = tmp_path / "hosts.csv"
    src.write_text(csv_text(rows, header))
    result = ingest(src, tmp_path / "t")
    assert sorted(h.host for h in result.hosts) == ["web-1", "web-2"]
    trace = open_trace(tmp_path / "t")
    assert trace.hosts == ("web-1", "web-2")
    assert trace.load_host("web-1").times_s.tolist() == [0.0, 5.0]
    w2 = trace.load_host("web-2")
    assert w2.times_s.tolist() == [0.0, 7.0]
    assert rows_of(w2.pages, "snapshot_id", "pid", "content_hash") == [(0, 1, 11), (1, 2, 11)]


def test_host_option(tmp_path: Path) -> None:
    src = tmp_path / "x.csv"
    src.write_text(csv_text(FLEET))
    result = ingest(src, tmp_path / "t", host="db-7")
    assert open_trace(tmp_path / "t").hosts == ("db-7",)
    assert result.hosts[0].processes == 3


def test_pid_reuse_is_a_new_process(tmp_path: Path) -> None:
    rows = ["0,5,4096,1,1", "10,6,4096,1,2", "20,5,4096,1,3"]  # pid 5 gone at t=10, back at t=20
    src = tmp_path / "reuse.csv"
    src.write_text(csv_text(rows, header="time_s,pid,page_addr,content_hash,frame"))
    result = ingest(src, tmp_path / "t")
    starts = load(tmp_path / "t").processes.column("proc_start").to_pylist()
    assert starts[0] != starts[2]
    assert result.hosts[0].processes == 3


def test_unknown_columns_are_ignored_and_reported(tmp_path: Path) -> None:
    src = tmp_path / "extra.csv"
    src.write_text(csv_text(["0,1,4096,1,x"], header="time_s,pid,page_addr,content_hash,note"))
    result = ingest(src, tmp_path / "t")
    assert result.ignored_columns == ("note",)
    assert any("note" in w for w in result.warnings)


def _shuffled_fleet(tmp_path: Path, n: int = 3000) -> Path:
    rng = np.random.default_rng(7)
    parts = []
    for t in (0.0, 10.0, 20.0):
        pid = rng.integers(100, 110, n).astype(np.int32)
        page = rng.choice(np.arange(1, 10 * n, dtype=np.uint64), n, replace=False) * np.uint64(4096)
        parts.append(
            pa.table(
                {
                    "time_s": np.full(n, t),
                    "pid": pid,
                    "page_addr": page,
                    "content_hash": (chash := rng.integers(0, 50, n).astype(np.uint64)),
                    # a frame holds one content: 40 frames per hash, shared at random
                    "frame": chash * np.uint64(40) + rng.integers(0, 40, n).astype(np.uint64),
                    "comm": pa.array(np.where(pid % 2 == 0, "even", "odd")),
                }
            )
        )
    src = tmp_path / "shuffled.csv"
    pacsv.write_csv(pa.concat_tables(parts), src)
    return src


def test_spilled_sort_equals_in_memory_sort(tmp_path: Path) -> None:
    src = _shuffled_fleet(tmp_path)
    mem = ingest(src, tmp_path / "mem")
    spill = ingest(src, tmp_path / "spill", sort_buffer_rows=500, chunk_rows=333)
    assert mem.spilled_runs == 0
    assert spill.spilled_runs > 3
    a, b = load(tmp_path / "mem"), load(tmp_path / "spill")
    for name in ("pages", "processes", "mappings", "snapshots"):
        assert (
            getattr(a, name)
            .drop_columns(["tool_version"] if name == "snapshots" else [])
            .equals(getattr(b, name).drop_columns(["tool_version"] if name == "snapshots" else []))
        ), name
    pages = a.pages
    key = np.lexsort(
        (
            pages.column("page_addr").to_numpy(),
            pages.column("pid").to_numpy(),
            pages.column("snapshot_id").to_numpy(),
        )
    )
    assert (key == np.arange(len(key))).all()  # written sorted by (snapshot, pid, page)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mem", "shuffled.csv", "spill"]


class _Recorder:
    def __init__(self) -> None:
        self.started: list[tuple[str, float | None]] = []
        self.advanced = 0.0
        self.finished = 0

    def start(self, task: str, total: float | None) -> None:
        self.started.append((task, total))

    def advance(self, amount: float) -> None:
        self.advanced += amount

    def finish(self) -> None:
        self.finished += 1


def test_progress_reports_rows(tmp_path: Path) -> None:
    src = tmp_path / "fleet.csv"
    src.write_text(csv_text(FLEET))
    rec = _Recorder()
    ingest(src, tmp_path / "t", progress=rec)
    assert rec.advanced == len(FLEET)
    assert rec.finished == 1
    pq.write_table(
        pacsv.read_csv(
            src, convert_options=pacsv.ConvertOptions(column_types={"content_hash": pa.uint64()})
        ),
        tmp_path / "fleet.parquet",
    )
    rec = _Recorder()
    ingest(tmp_path / "fleet.parquet", tmp_path / "t2", progress=rec)
    assert rec.started[0][1] == len(FLEET)  # Parquet knows its row count up front


# ----------------------------------------------------------------------------- schema v0


KPF_KSM, KPF_THP, KPF_ZERO_PAGE = 1 << 21, 1 << 22, 1 << 24
V0_LEGEND = [
    "present",
    "swapped",
    "file_page",
    "exclusive",
    "zero_content",
    "zero_pfn",
    "ksm",
    "thp",
    "racy",
]


def _v0_table() -> pa.Table:
    """A small capture in the prototype's flat layout: 2 snapshots, 2 processes, raw PFNs."""
    t0 = 1_754_000_000.25
    rows = [
        # snapshot 0: master 200 and worker 201 share PFN 0x5a000 (fork COW) ...
        dict(
            snapshot_id=0,
            snapshot_ts=t0,
            pid=200,
            ppid=1,
            page_addr=0x10000,
            content_hash=11,
            pfn=0x5A000,
            kpageflags=0,
            kpagecount=2,
            flags=1 << 0,
            is_zero=False,
        ),
        dict(
            snapshot_id=0,
            snapshot_ts=t0,
            pid=200,
            ppid=1,
            page_addr=0x11000,
            content_hash=ZERO,
            pfn=0x5A001,
            kpageflags=0,
            kpagecount=1,
            flags=(1 << 0) | (1 << 4),
            is_zero=True,
        ),
        # ... a shared-zero-page mapping: not recorded, counted
        dict(
            snapshot_id=0,
            snapshot_ts=t0,
            pid=200,
            ppid=1,
            page_addr=0x12000,
            content_hash=ZERO,
            pfn=0x99,
            kpageflags=KPF_ZERO_PAGE,
            kpagecount=50,
            flags=1 << 5,
            is_zero=True,
        ),
        dict(
            snapshot_id=0,
            snapshot_ts=t0,
            pid=201,
            ppid=200,
            page_addr=0x10000,
            content_hash=11,
            pfn=0x5A000,
            kpageflags=KPF_THP,
            kpagecount=2,
            flags=(1 << 0) | (1 << 8),
            is_zero=False,
        ),
        # snapshot 1 (10 s later): the worker's page is a KSM page now
        dict(
            snapshot_id=1,
            snapshot_ts=t0 + 10,
            pid=200,
            ppid=1,
            page_addr=0x10000,
            content_hash=11,
            pfn=0x5A000,
            kpageflags=0,
            kpagecount=2,
            flags=1 << 0,
            is_zero=False,
        ),
        dict(
            snapshot_id=1,
            snapshot_ts=t0 + 10,
            pid=201,
            ppid=200,
            page_addr=0x10000,
            content_hash=11,
            pfn=0x7F000,
            kpageflags=KPF_KSM,
            kpagecount=1,
            flags=1 << 0,
            is_zero=False,
        ),
    ]
    n = len(rows)
    cols: dict[str, Any] = {k: [r[k] for r in rows] for k in rows[0]}
    return pa.table(
        {
            "snapshot_id": pa.array(cols["snapshot_id"], pa.int32()),
            "snapshot_ts": pa.array(cols["snapshot_ts"], pa.float64()),
            "proc_ts": pa.array([r["snapshot_ts"] + 0.5 for r in rows], pa.float64()),
            "host": pa.array(["proto-vm"] * n),
            "setup": pa.array(["b"] * n),
            "pid": pa.array(cols["pid"], pa.int32()),
            "ppid": pa.array(cols["ppid"], pa.int32()),
            "proc_start": pa.array([5000 + p for p in cols["pid"]], pa.uint64()),
            "comm": pa.array(["gunicorn"] * n),
            "cgroup": pa.array(["/system.slice/web.service"] * n),
            "vma_start": pa.array([0x10000] * n, pa.uint64()),
            "vma_end": pa.array([0x20000] * n, pa.uint64()),
            "vma_kind": pa.array(["heap"] * n),
            "perms": pa.array(["rw-p"] * n),
            "vma_path": pa.array(["[heap]"] * n),
            "page_addr": pa.array(cols["page_addr"], pa.uint64()),
            "content_hash": pa.array(cols["content_hash"], pa.uint64()),
            "is_zero": pa.array(cols["is_zero"], pa.bool_()),
            "pfn": pa.array(cols["pfn"], pa.uint64()),
            "kpageflags": pa.array(cols["kpageflags"], pa.uint64()),
            "kpagecount": pa.array(cols["kpagecount"], pa.int32()),
            "flags": pa.array(cols["flags"], pa.uint16()),
        }
    ).replace_schema_metadata({b"capture.flags_legend": json.dumps(V0_LEGEND).encode()})


def test_v0_parquet_is_upgraded(tmp_path: Path) -> None:
    src = tmp_path / "capture-b.parquet"
    pq.write_table(_v0_table(), src)
    result = ingest(src, tmp_path / "t")
    assert result.source_format == "v0-parquet"
    assert [(h.host, h.snapshots, h.pages, h.zero_pfn_pages) for h in result.hosts] == [
        ("proto-vm", 2, 5, 1)
    ]

    ht = load(tmp_path / "t")
    assert ht.times_s.tolist() == [0.0, 10.0]
    assert ht.snapshots.column("wall_time_ns").to_pylist() == [
        1_754_000_000_250_000_000,
        1_754_000_010_250_000_000,
    ]
    assert ht.snapshots.column("hash_algo").to_pylist() == ["xxh3_64", "xxh3_64"]

    pages = ht.pages
    assert rows_of(pages, "snapshot_id", "pid", "page_addr") == [
        (0, 200, 0x10000),
        (0, 200, 0x11000),
        (0, 201, 0x10000),
        (1, 200, 0x10000),
        (1, 201, 0x10000),
    ]
    frames = pages.column("frame_id").to_pylist()
    # opaque ids with the PFN equality structure: shared PFN -> same id, others distinct
    assert frames[0] == frames[2] == frames[3]
    assert len({frames[0], frames[1], frames[4]}) == 3
    assert not {0x5A000, 0x5A001, 0x7F000, 0x99} & set(frames)  # never the raw PFN
    flags = pages.column("flags").to_pylist()
    assert flags[0] == S.PageFlag.SHARED_MAPCOUNT
    assert flags[1] == S.PageFlag.ZERO
    assert flags[2] == S.PageFlag.SHARED_MAPCOUNT | S.PageFlag.THP | S.PageFlag.RACY
    assert flags[4] == S.PageFlag.KSM

    procs = ht.processes
    assert rows_of(procs, "snapshot_id", "pid", "proc_start", "ppid", "comm", "zero_pfn_pages") == [
        (0, 200, 5200, 1, "gunicorn", 1),
        (0, 201, 5201, 200, "gunicorn", 0),
        (1, 200, 5200, 1, "gunicorn", 0),
        (1, 201, 5201, 200, "gunicorn", 0),
    ]
    assert procs.column("labels").to_pylist()[0] == json.dumps({"setup": "b"})
    assert procs.column("cgroup").to_pylist()[0] == "/system.slice/web.service"
    assert procs.column("capture_t0_s").to_pylist() == [0.5, 0.5, 10.5, 10.5]
    maps = ht.mappings
    assert rows_of(maps, "pid", "start", "end", "kind", "perms", "path")[0] == (
        200,
        0x10000,
        0x20000,
        "heap",
        "rw-p",
        "[heap]",
    )


def test_v0_without_pfns_warns(tmp_path: Path) -> None:
    table = _v0_table()
    table = table.set_column(
        table.column_names.index("pfn"), "pfn", pa.array([0] * table.num_rows, pa.uint64())
    )
    src = tmp_path / "nopfn.parquet"
    pq.write_table(table, src)
    result = ingest(src, tmp_path / "t")
    assert any("no PFNs" in w for w in result.warnings)
    frames = load(tmp_path / "t").pages.column("frame_id").to_pylist()
    assert frames[0] != frames[2]  # without PFNs, fork sharing cannot be seen


@pytest.mark.parametrize(
    "legend",
    [
        {
            "present": 0,
            "swapped": 1,
            "file_page": 2,
            "exclusive": 3,
            "zero_content": 4,
            "zero_pfn": 5,
            "ksm": 6,
            "thp": 7,
            "racy": 8,
        },
        {str(i): name for i, name in enumerate(V0_LEGEND)},
        {name: 1 << i for i, name in enumerate(V0_LEGEND)},
    ],
    ids=["name-to-bit", "bit-to-name", "name-to-mask"],
)
def test_v0_flag_legend_forms(tmp_path: Path, legend: dict[str, Any]) -> None:
    table = _v0_table().replace_schema_metadata({b"flags": json.dumps(legend).encode()})
    src = tmp_path / "v0.parquet"
    pq.write_table(table, src)
    ingest(src, tmp_path / "t")
    flags = load(tmp_path / "t").pages.column("flags").to_pylist()
    assert flags[2] & S.PageFlag.RACY
    assert not flags[0] & S.PageFlag.RACY


def test_v0_swapped_page_keeps_no_hash_and_no_frame(tmp_path: Path) -> None:
    base = _v0_table()
    row = base.slice(3, 1).to_pylist()[0]  # the worker's page in snapshot 0
    row.update(page_addr=0x13000, content_hash=None, pfn=None, kpageflags=0, kpagecount=0)
    row.update(flags=1 << 1, is_zero=False)  # "swapped" in the legend
    table = pa.concat_tables(
        [base.slice(0, 4), pa.Table.from_pylist([row], schema=base.schema), base.slice(4)]
    )
    src = tmp_path / "swap.parquet"
    pq.write_table(table, src)
    ingest(src, tmp_path / "t")
    pages = load(tmp_path / "t").pages
    swapped = [r for r in pages.to_pylist() if r["page_addr"] == 0x13000]
    assert len(swapped) == 1
    assert swapped[0]["content_hash"] is None
    assert swapped[0]["frame_id"] is None
    assert swapped[0]["flags"] == S.PageFlag.SWAPPED

    from planner.trace.summary import summarize_trace

    first = summarize_trace(tmp_path / "t").snapshots[0]
    assert (first.pages, first.unhashed_pages, first.zero_pfn_pages) == (3, 1, 1)
