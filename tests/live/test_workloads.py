"""Workload parameters, and the programs they run (outside KSM: no kernel needed)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from planner.errors import UsageProblem
from planner.testing.live.host import ProcessTree, wait_for_file
from planner.testing.live.workloads import (
    CHURN_VARIANTS,
    MAIN_WORKLOADS,
    WORKLOADS,
    ChurnParams,
    ChurnWorkload,
    JvmWorkload,
    asset,
    make_params,
    make_workload,
)

#: Set by ``.ci/run``, which installs the tools below where they are missing: in CI a missing
#: tool fails the test that needs it instead of skipping it (tests/report/test_browser.py).
CI_ENV = "KSM_PLANNER_CI"
#: Debian's package of each tool the workloads' programs need.
PACKAGES = {
    "node": "nodejs",
    "gcc": "gcc",
    "java": "openjdk-17-jdk-headless",
    "javac": "openjdk-17-jdk-headless",
}


def _require(*tools: str) -> None:
    """Skip the calling test where one of ``tools`` is missing; fail it in CI."""
    missing = [t for t in tools if shutil.which(t) is None]
    if not missing:
        return
    why = (
        f"{', '.join(missing)} not installed (Debian: apt-get install -y "
        + " ".join(sorted({PACKAGES[t] for t in missing}))
        + ")"
    )
    if os.environ.get(CI_ENV, "") not in ("", "0"):
        pytest.fail(f"{why}, and {CI_ENV}=1 requires this test", pytrace=False)
    pytest.skip(why)


def test_every_workload_documents_what_it_does(tmp_path: Path) -> None:
    for name in WORKLOADS:
        d = make_workload(name, tmp_path).describe()
        assert d["name"] == name
        assert len(d["description"]) > 40
        assert len(d["expected"]) > 40
        assert isinstance(d["params"], dict)
    assert set(MAIN_WORKLOADS) <= set(WORKLOADS)


def test_params_overrides_and_refusals() -> None:
    p = make_params("postgres", clients=8)
    assert p.to_dict()["clients"] == 8
    with pytest.raises(UsageProblem, match="unknown parameter"):
        make_params("node", backends=3)
    with pytest.raises(UsageProblem, match="unknown workload"):
        make_params("mysql")
    with pytest.raises(UsageProblem, match="needs"):
        make_workload("node", Path("/tmp"), make_params("postgres"))


def test_churn_variants_isolate_one_behaviour() -> None:
    full = make_params("churn")
    assert isinstance(full, ChurnParams)
    assert full.fast_periods_ms == (50, 200, 1000)
    for name in CHURN_VARIANTS:
        p = make_params(name)
        assert isinstance(p, ChurnParams)
        assert p.stable > 0
    osc = make_params("churn-osc")
    assert isinstance(osc, ChurnParams)
    assert (osc.rewrite, osc.heap_max, osc.fast_pages) == (0, 0, ())
    assert osc.osc > 0


@pytest.mark.parametrize("script", ["node_cluster.js", "node_load.js"])
def test_node_scripts_parse(script: str) -> None:
    _require("node")
    subprocess.run(["node", "--check", str(asset(script))], check=True)


def _rss_anon_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError("no RssAnon")


def test_churn_program_heap_grows_and_shrinks_on_signals(tmp_path: Path) -> None:
    _require("gcc")
    params = make_params(
        "churn", workers=2, stable=50, unique=10, fast_pages=(5,), fast_periods_ms=(50,),
        osc=5, rewrite=5, heap=100, heap_max=1100, heap_shrink=50,
    )  # fmt: skip
    wl = make_workload("churn", tmp_path, params)
    assert isinstance(wl, ChurnWorkload)
    wl.prepare()  # gcc
    ready = tmp_path / "churn.ready"
    tree = ProcessTree(
        "churn",
        [str(wl.binary), *params.argv(), "--ready-file", str(ready)],  # type: ignore[attr-defined]
        under_ksm=False,  # the program itself: KSM plays no part here
        log_path=tmp_path / "churn.log",
    )
    try:
        workers = [int(p) for p in wait_for_file(ready, timeout_s=30, alive=tree).split()[1:]]
        assert len(workers) == 2
        before = _rss_anon_kb(workers[0])
        for p in workers:
            os.kill(p, signal.SIGUSR1)
        time.sleep(0.5)
        grown = _rss_anon_kb(workers[0])
        assert grown - before >= 0.9 * 1000 * 4  # 1000 more heap pages
        for p in workers:
            os.kill(p, signal.SIGUSR2)
        time.sleep(0.5)
        assert grown - _rss_anon_kb(workers[0]) >= 0.9 * 1050 * 4  # down to 50 pages
        killed = tree.stop(signal.SIGTERM, grace_s=10)
    finally:
        if tree.leftovers():
            tree.stop(signal.SIGKILL, grace_s=1)
    assert killed == []  # SIGTERM stopped the parent and its workers by themselves
    assert tree.proc.returncode == 0


def test_churn_program_refuses_impossible_options(tmp_path: Path) -> None:
    _require("gcc")
    wl = make_workload("churn", tmp_path)
    wl.prepare()
    out = subprocess.run(
        [str(wl.binary), "--heap", "10", "--heap-max", "5"],  # type: ignore[attr-defined]
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert out.returncode == 2
    assert "impossible options" in out.stderr


def test_jvm_service_serves_on_every_port_and_stops_with_its_primary(tmp_path: Path) -> None:
    """The JVM workload's programs outside KSM: the primary starts one worker JVM per port,
    Node's client spreads its requests over the ports, and SIGTERM to the primary stops
    every JVM."""
    _require("java", "javac", "node")
    import json
    import urllib.request

    wl = make_workload("jvm", tmp_path, make_params("jvm", workers=2, items=500, heap_mb=64))
    assert isinstance(wl, JvmWorkload)
    wl.prepare()  # javac
    ready = tmp_path / "jvm.ready"
    server = ProcessTree(
        "jvm", wl.server_argv(ready), under_ksm=False, log_path=tmp_path / "jvm.log"
    )
    load = None
    try:
        ports = [int(p) for p in wait_for_file(ready, timeout_s=120, alive=server).split(",")]
        assert ports == wl.ports
        assert len(set(ports)) == 2
        for port in ports:  # each worker answers on its own port, from the same catalogue
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/item?id=7", timeout=30) as r:
                item = json.loads(r.read())
            assert item["id"] == 7
            assert item["name"].endswith("-7")
        assert len(server.refresh()) == 3  # the primary and its two workers
        load = ProcessTree("load", wl.load_argv(), under_ksm=False, log_path=tmp_path / "l.log")
        time.sleep(2.0)
        assert load.stop(signal.SIGTERM, grace_s=10) == []
        summary = wl.load_summary()
        assert summary["requests"] > 0, summary
        assert summary["errors"] == 0, summary
        killed = server.stop(signal.SIGTERM, grace_s=30)
    finally:
        for tree in (load, server):
            if tree is not None and tree.leftovers():
                tree.stop(signal.SIGKILL, grace_s=1)
    assert killed == []  # the primary's shutdown hook stopped its workers
    assert server.leftovers() == []
