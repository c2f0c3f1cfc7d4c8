"""``ksm-planner validate TRACE --kernel``: exit codes, JSON, the stderr table.

Only the last test runs the real kernel (marker ``kernel``); the others replace the library
call or stop before anything is written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from planner.kernel.run import KernelRun, ScanRecord
from planner.kernel.sysfs import KsmSysfs
from planner.kernel.validate import KernelValidation, ScanComparison, _compare
from planner.provenance import Provenance
from planner.testing import World

CliRunner = Callable[[Sequence[object]], tuple[int, str, str]]


def small_trace(tmp_path: Path) -> Path:
    w = World()
    w.spawn(100)
    w.map(100, 0x10000, [1] * 20 + [0] * 5 + list(range(50, 60)))
    w.snapshot(0.0)
    w.fork(100, 101)
    w.write_range(101, 0x10000, [2] * 5)
    w.snapshot(0.3)
    out = tmp_path / "small.trace"
    w.write_trace(out)
    return out


def fabricated(*, sharing_replay: int) -> KernelValidation:
    counters = {
        "full_scans": 1,
        "pages_shared": 1,
        "pages_sharing": 9,
        "pages_unshared": 0,
        "pages_volatile": 0,
        "pages_scanned": 10,
        "pages_skipped": 0,
        "general_profit": 36224,
    }
    proc = {
        "ksm_rmap_items": 10,
        "ksm_merging_pages": 10,
        "ksm_zero_pages": 0,
        "ksm_process_profit": 40320,
    }
    krun = KernelRun([ScanRecord(1, 0.1, counters, {100: proc})], [], [1], 1, {}, Provenance())
    rec = ScanRecord(1, 0.1, {**counters, "pages_sharing": sharing_replay}, {100: proc})
    return KernelValidation(
        scans=_compare(krun, [rec], 1),
        snapshot_scans=[1],
        knobs={},
        sysfs_knobs={},
        engine="vectorized",
        kernel=krun,
        provenance=Provenance(),
    )


def test_validate_needs_kernel(cli: CliRunner, tmp_path: Path) -> None:
    code, out, err = cli(["validate", small_trace(tmp_path)])
    assert code == 2
    assert out == ""
    assert "needs --kernel" in err
    assert "Traceback" not in err


def test_not_root_is_an_environment_error_before_any_replay(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not KsmSysfs().available():
        pytest.skip("no KSM: the 'no KSM' refusal comes first")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    import planner.engine

    monkeypatch.setattr(planner.engine, "replay", _must_not_run)
    code, out, err = cli(["validate", small_trace(tmp_path), "--kernel"])
    assert code == 3
    assert out == ""
    assert "run as root" in err
    assert err.count("\n") == 1


def _must_not_run(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the replay ran before the environment was checked")


def test_a_bad_trace_is_exit_4(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import planner.kernel.validate as V

    monkeypatch.setattr(V.KsmLease, "preflight", lambda self: None)
    (tmp_path / "notatrace").mkdir()
    code, _, err = cli(["validate", tmp_path / "notatrace", "--kernel"])
    assert code == 4
    assert "not a ksm-planner trace" in err


def test_mismatch_is_exit_1_with_the_json_document(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import planner.kernel.validate as V

    monkeypatch.setattr(V, "validate_on_kernel", lambda *a, **k: fabricated(sharing_replay=8))
    code, out, err = cli(["validate", small_trace(tmp_path), "--kernel", "--json"])
    assert code == 1
    doc = json.loads(out)
    assert doc["agree"] is False
    assert doc["mismatched_scans"] == [1]
    assert doc["scans"][0]["diff"] == {"pages_sharing": -1}
    assert "pages_sharing kernel 9 replay 8" in err
    assert err.strip().count("\n") == 0


def test_agreement_renders_a_side_by_side_table(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import planner.kernel.validate as V

    monkeypatch.setattr(V, "validate_on_kernel", lambda *a, **k: fabricated(sharing_replay=9))
    code, out, err = cli(["validate", small_trace(tmp_path), "--kernel"])
    assert code == 0, err
    assert out == ""
    assert "kern" in err
    assert "repl" in err
    assert "agree on all 1 full scans" in err


def test_mismatch_table_names_the_differing_process(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import planner.kernel.validate as V

    v = fabricated(sharing_replay=9)
    s = v.scans[0]
    bad = ScanComparison(
        s.full_scans,
        s.kernel,
        s.replay,
        {},
        s.kernel_t_s,
        s.replay_t_s,
        processes={
            "100": {"kernel": {"ksm_merging_pages": 10}, "replay": {"ksm_merging_pages": 9}}
        },
    )
    monkeypatch.setattr(
        V,
        "validate_on_kernel",
        lambda *a, **k: V.KernelValidation(
            [bad], v.snapshot_scans, v.knobs, v.sysfs_knobs, v.engine, v.kernel, v.provenance
        ),
    )
    code, _, err = cli(["validate", small_trace(tmp_path), "--kernel"])
    assert code == 1
    assert "pid 100: ksm_merging_pages 10≠9" in err
    assert "pid 100 ksm_merging_pages kernel 10 replay 9" in err


@pytest.mark.kernel
def test_validate_on_the_real_kernel(cli: CliRunner, tmp_path: Path, ksm_free: KsmSysfs) -> None:
    trace = small_trace(tmp_path)
    code, out, err = cli(
        [
            "validate",
            trace,
            "--kernel",
            "--json",
            "--pages-to-scan",
            "100000",
            "--sleep-ms",
            "100",
            "--no-smart-scan",
            "--use-zero-pages",
        ]
    )
    if code == 3 and "lock" in err:
        pytest.skip("another run took the KSM lock meanwhile")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["agree"] is True
    assert doc["sysfs_knobs"]["use_zero_pages"] == 1
    assert doc["scans_compared"] >= 5
    last = doc["scans"][-1]["kernel"]
    assert last["ksm_zero_pages"] == 10  # 5 zero pages in the parent, and in the forked child
    assert doc["provenance"]["trace_hash"].startswith("sha256:")
