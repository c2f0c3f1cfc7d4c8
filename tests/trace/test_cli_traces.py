"""``ksm-planner ingest / export / info`` on the command line: JSON shape, stderr tables, codes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from planner.testing.builder import World
from planner.trace import schema as S
from tests.procs import run

SNAPSHOT_KEYS = {
    "time_s",
    "pages",
    "frames",
    "distinct_hashes",
    "zero_pages",
    "naive_saved_pages",
    "ideal_saved_frames",
}


def _trace(tmp_path: Path) -> Path:
    w = World(host="web-1")
    w.spawn(100, comm="master")
    w.map(100, 0x10000, [1, 1, 2, 0], kind="heap")
    w.snapshot(0.0)
    w.fork(100, 101, comm="worker")
    w.write(101, 0x11000, 7)
    w.snapshot(10.0)
    out = tmp_path / "t"
    w.write_trace(out)
    return out


def test_info_json_shape(cli: Any, tmp_path: Path) -> None:
    trace = _trace(tmp_path)
    code, out, err = cli(["info", trace, "--json"])
    assert code == 0, err
    doc = json.loads(out)
    assert doc["schema_version"] == S.SCHEMA_VERSION  # the trace's
    assert doc["command"] == "info"
    assert doc["processes"] == 2
    assert len(doc["snapshots"]) == 2
    for snap in doc["snapshots"]:
        assert set(snap) >= SNAPSHOT_KEYS
    # t=10: 8 pages on 5 frames, hashes {1, 2, 7, 0}; naive 8-4; ideal (4-3) + 1 zero frame
    last = doc["snapshots"][1]
    assert [last[k] for k in ("time_s", "pages", "frames", "distinct_hashes", "zero_pages")] == [
        10.0,
        8,
        5,
        4,
        2,
    ]
    assert (last["naive_saved_pages"], last["ideal_saved_frames"]) == (4, 2)
    assert {g["group"] for g in last["by_comm"]} == {"master", "worker"}
    manifest = json.loads((trace / S.MANIFEST_NAME).read_text())
    assert doc["provenance"]["trace_hash"] == manifest["trace_hash"]
    assert doc["provenance"]["tool_version"].startswith("ksm-planner ")
    assert doc["bytes_per_page"]["pages_file"] > 0
    assert doc["hosts"][0]["host"] == "web-1"


def test_info_leaves_its_objects_out_of_the_exit_collections(
    cli: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """After ``info``, the interpreter's exit freezes the objects (``gc.freeze`` by
    ``atexit``) instead of walking numba's loaded code in its last collections: registered
    once however many times the command runs in the process, never run before the exit
    (planner.cli._no_collection_at_exit, with ``info`` among the COLLECTOR_PAUSED commands)."""
    import atexit
    import gc

    registered: list[Any] = []  # gc.freeze as atexit holds it; any other: passed on
    register, unregister = atexit.register, atexit.unregister

    def on_exit(f: Any) -> Any:
        return registered.append(f) if f is gc.freeze else register(f)

    def not_on_exit(f: Any) -> None:
        return registered.remove(f) if f in registered else unregister(f)

    monkeypatch.setattr(atexit, "register", on_exit)
    monkeypatch.setattr(atexit, "unregister", not_on_exit)
    trace = _trace(tmp_path)
    for _ in range(2):
        code, _out, err = cli(["info", trace, "--json"])
        assert code == 0, err
    assert registered == [gc.freeze]
    assert gc.get_freeze_count() == 0


def test_info_tables_go_to_stderr(cli: Any, tmp_path: Path) -> None:
    code, out, err = cli(["info", _trace(tmp_path)])
    assert code == 0
    assert out == ""
    assert "static dedup potential" in err
    assert "by mapping kind" in err
    assert "50.0%" in err  # naive share at t=10: 4 of 8 pages


def test_info_on_a_file_is_bad_input(cli: Any, tmp_path: Path) -> None:
    f = tmp_path / "pages.csv"
    f.write_text("time_s,pid,page_addr,content_hash\n0,1,4096,1\n")
    code, out, err = cli(["info", f])
    assert code == 4
    assert out == ""
    assert "ksm-planner ingest" in err
    assert len(err.splitlines()) == 1


def test_export_then_ingest_json(cli: Any, tmp_path: Path) -> None:
    trace = _trace(tmp_path)
    code, out, err = cli(["export", trace, "--out", tmp_path / "x.csv", "--json"])
    assert code == 0, err
    exported = json.loads(out)
    assert exported["rows"] == 12
    assert exported["provenance"]["trace_hash"].startswith("sha256:")
    code, out, err = cli(["ingest", tmp_path / "x.csv", "--out", tmp_path / "back", "--json"])
    assert code == 0, err
    doc = json.loads(out)
    assert doc["rows"] == 12
    assert doc["hosts"] == [
        {"host": "web-1", "snapshots": 2, "pages": 12, "processes": 2, "zero_pfn_pages": 0}
    ]
    assert doc["source_format"] == "interchange-csv"


def test_export_bad_suffix_is_usage_error(cli: Any, tmp_path: Path) -> None:
    code, _, err = cli(["export", _trace(tmp_path), "--out", tmp_path / "x.txt"])
    assert code == 2
    assert "x.txt" in err
    assert not (tmp_path / "x.txt").exists()


def test_ingest_zero_hash_option(cli: Any, tmp_path: Path) -> None:
    src = tmp_path / "z.csv"
    src.write_text("time_s,pid,page_addr,content_hash\n0,1,4096,255\n0,1,8192,3\n")
    code, out, err = cli(["ingest", src, "--out", tmp_path / "t", "--zero-hash", "0xff", "--json"])
    assert code == 0, err
    code, out, _ = cli(["info", tmp_path / "t", "--json"])
    assert json.loads(out)["snapshots"][0]["zero_pages"] == 1
    code, _, err = cli(["ingest", src, "--out", tmp_path / "u", "--zero-hash", "zero"])
    assert code == 2
    assert "--zero-hash" in err


def test_ingest_human_output_and_warnings(cli: Any, tmp_path: Path) -> None:
    src = tmp_path / "w.csv"
    src.write_text("time_s,pid,page_addr,content_hash,vma_kind,x\n0,1,4096,1,strange,q\n")
    code, out, err = cli(["ingest", src, "--out", tmp_path / "t"])
    assert code == 0
    assert out == ""
    assert "ingested 1 rows" in err
    assert "strange" in err
    assert "ignored unknown columns: x" in err


def test_help_lists_the_commands() -> None:
    res = run([sys.executable, "-m", "planner", "--help"], timeout_s=120)
    for name in ("ingest", "export", "info"):
        assert name in res.stdout
