"""The shipped sample traces (``traces/django-*``), their recipe and their documentation."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from planner.trace import schema as S
from planner.trace.io import HostTrace, open_trace
from tests.procs import run

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT / "traces"
RECIPE = TRACES / "django"
SAMPLES = ("django-nopreload", "django-preload")
MAX_TRACE_BYTES = 20 * 1000 * 1000
WORKERS = 8
SNAPSHOTS = 5

RECIPE_FILES = (
    "regenerate.py",
    "loadgen.py",
    "gunicorn.conf.py",
    "site/manage.py",
    "site/ksmsite/settings.py",
    "site/ksmsite/urls.py",
    "site/ksmsite/wsgi.py",
    "site/ksmsite/management/commands/seed_sample.py",
    "site/ksmsite/templates/base.html",
    "site/blog/models.py",
    "site/blog/views.py",
    "site/blog/migrations/0001_initial.py",
    "site/shop/models.py",
    "site/shop/views.py",
    "site/shop/migrations/0001_initial.py",
)


@pytest.fixture(scope="module", params=SAMPLES)
def sample(request: pytest.FixtureRequest) -> tuple[str, HostTrace]:
    name: str = request.param
    trace = open_trace(TRACES / name)
    # recaptured as version 3: sampled, with the sampler's other contents and a closing pass
    assert trace.schema_version == S.SCHEMA_VERSION
    assert len(trace.hosts) == 1
    return name, trace.load_host()


@pytest.fixture(scope="module")
def loadgen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ksm_sample_loadgen", RECIPE / "loadgen.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def ksm_achievable_share(pages: pa.Table) -> float:
    """Frames KSM could free / physical frames (docs/capture.md §3.1), over one snapshot."""
    read = pages.filter(pc.is_valid(pages.column("content_hash")))
    frames = read.column("frame_id").to_numpy()
    hashes = read.column("content_hash").to_numpy()
    zero = (read.column("flags").to_numpy() & int(S.PageFlag.ZERO)) != 0
    _, first = np.unique(frames, return_index=True)  # one row per physical frame
    f_hash, f_zero = hashes[first], zero[first]
    freed = (f_hash[~f_zero].size - np.unique(f_hash[~f_zero]).size) + int(f_zero.sum())
    return freed / first.size


# ------------------------------------------------------------------ the shipped traces


def test_trace_is_small_and_verifies(sample: tuple[str, HostTrace]) -> None:
    name, _ = sample
    trace = open_trace(TRACES / name)
    trace.verify()
    size = sum(f.stat().st_size for f in (TRACES / name).rglob("*") if f.is_file())
    assert size < MAX_TRACE_BYTES, f"{name} is {size / 1e6:.1f} MB"


def test_snapshots_and_processes(sample: tuple[str, HostTrace]) -> None:
    name, host = sample
    assert host.snapshots.num_rows == SNAPSHOTS
    assert np.all(np.diff(host.times_s) > 5)  # --interval 10
    meta = host.meta()
    assert meta["page_size"] == S.PAGE_SIZE_BYTES
    assert meta["hash_key_id"]
    procs = host.processes.to_pylist()
    setup = name.removeprefix("django-")
    for sid in host.snapshot_ids.tolist():
        rows = [p for p in procs if p["snapshot_id"] == sid]
        assert all(p["state"] == "ok" for p in rows)
        assert all(json.loads(p["labels"])["setup"] == setup for p in rows)
        pids = {p["pid"] for p in rows}
        masters = [p for p in rows if p["ppid"] not in pids]
        assert len(masters) == 1
        workers = [p for p in rows if p["ppid"] == masters[0]["pid"]]
        assert len(workers) == WORKERS
        assert len(rows) == 1 + WORKERS
    # The same worker processes in every snapshot (no restarts during the capture).
    idents = {(p["pid"], p["proc_start"]) for p in procs}
    assert len(idents) == 1 + WORKERS


def test_every_interval_was_sampled_and_other_contents_kept(sample: tuple[str, HostTrace]) -> None:
    """``--sample-ms 100``: every interval, the one after the last snapshot too (the closing
    pass), was sampled; rows that changed carry the first other content the sampler saw."""
    _, host = sample
    snaps = host.snapshots.to_pydict()
    assert all(n and n > 0 for n in snaps["samples"]), snaps["samples"]
    assert all(ms == 100 for ms in snaps["sample_ms"])
    assert snaps["interval_s"][-1] is not None
    assert snaps["interval_s"][-1] > 5
    assert snaps["sample_coverage"][-1] == pytest.approx(1.0)  # the closing pass checks all
    last = host.pages_of(int(host.snapshot_ids[-1]))
    changed = last.column("content_changes").to_numpy(zero_copy_only=False) > 0
    other = last.column("other_hash").is_valid().to_numpy(zero_copy_only=False)
    assert changed.sum() > last.num_rows // 20
    assert other.sum() > last.num_rows // 20
    assert not np.any(other & ~changed)  # another content only where a change was seen


def test_pages_per_process(sample: tuple[str, HostTrace]) -> None:
    _, host = sample
    last = host.pages_of(int(host.snapshot_ids[-1]))
    pids, counts = np.unique(last.column("pid").to_numpy(), return_counts=True)
    assert pids.size == 1 + WORKERS
    worker_counts = np.sort(counts)[1:]  # the master is the smallest process
    # ~40-60 MiB of anonymous memory per worker (docs/capture.md §3.2: about 45 MiB).
    assert np.all((worker_counts > 8_000) & (worker_counts < 20_000)), worker_counts
    assert last.column("content_hash").null_count < last.num_rows // 100


def fork_shared_pages(pages: pa.Table) -> int:
    """Rows whose frame was already counted: pages still shared copy-on-write after fork."""
    return pages.num_rows - len(pc.unique(pages.column("frame_id").drop_null()))


def test_fork_shared_frames_present(sample: tuple[str, HostTrace]) -> None:
    _, host = sample
    last = host.pages_of(int(host.snapshot_ids[-1]))
    # docs/capture.md §3.2: about 30 MiB without and 72 MiB with --preload.
    assert fork_shared_pages(last) > 16 * 256


def test_preload_shows_more_duplication() -> None:
    shares, shared = {}, {}
    for name in SAMPLES:
        host = open_trace(TRACES / name).load_host()
        last = host.pages_of(int(host.snapshot_ids[-1]))
        shares[name] = ksm_achievable_share(last)
        shared[name] = fork_shared_pages(last)
    assert 0.05 < shares["django-nopreload"] < shares["django-preload"] < 0.8, shares
    assert shared["django-nopreload"] < shared["django-preload"], shared


# ------------------------------------------------------------------ recipe and docs


@pytest.mark.parametrize("rel", RECIPE_FILES)
def test_recipe_file_exists(rel: str) -> None:
    assert (RECIPE / rel).is_file()


def test_readme_documents_the_format() -> None:
    text = (TRACES / "README.md").read_text()
    for name in SAMPLES:
        assert name in text
    assert "traces/django/regenerate.py" in text
    for table, schema in S.SCHEMAS.items():
        assert f"`{table}`" in text
        missing = [f.name for f in schema if f"`{f.name}`" not in text]
        assert not missing, f"README lacks {table} columns {missing}"
    missing_flags = [f.name for f in S.PageFlag if f"`{f.name}`" not in text]
    assert not missing_flags
    assert f"schema version {S.SCHEMA_VERSION}" in text.lower()


def test_loadgen_plan_is_seeded(loadgen: ModuleType) -> None:
    catalog = loadgen.Catalog(
        counts={"posts": 2000, "products": 1500, "orders": 3000},
        tags=("python", "linux"),
        authors=("ada-1",),
        categories=("books", "desks"),
    )
    a = loadgen.plan_requests(catalog, 500, seed=42)
    assert a == loadgen.plan_requests(catalog, 500, seed=42)
    assert a != loadgen.plan_requests(catalog, 500, seed=43)
    kinds = {r.kind for r in a}
    assert kinds == {k for k, _ in loadgen.MIX}
    assert all(r.path.startswith("/") for r in a)


@pytest.mark.parametrize(
    "url", ["http://192.0.2.1:8000", "https://127.0.0.1:8000", "ftp://localhost/"]
)
def test_loadgen_refuses_non_loopback(loadgen: ModuleType, url: str) -> None:
    with pytest.raises(loadgen.LoadError):
        loadgen.require_loopback(url)


_SITE_SMOKE = """
from django.test import Client
c = Client(HTTP_HOST="127.0.0.1")
paths = ["/", "/blog/", "/blog/?page=2", "/blog/tag/python/", "/blog/post/3/", "/shop/",
         "/shop/category/books/?sort=-price", "/shop/product/5/", "/shop/search/?q=oak",
         "/shop/cart/", "/api/posts/?page=2", "/api/posts/4/", "/api/products/?category=books",
         "/api/orders/7/", "/api/stats/"]
bad = {p: r.status_code for p in paths if (r := c.get(p)).status_code != 200}
assert c.login(username="admin", password="ksm-sample-admin")
bad |= {p: r.status_code for p in ["/admin/", "/admin/shop/order/", "/admin/blog/post/3/change/"]
        if (r := c.get(p)).status_code != 200}
print(bad or "ok")
"""


def test_site_serves_every_view(tmp_path: Path) -> None:
    pytest.importorskip("django", reason="the 'sample' extra is not installed")
    env = {**os.environ, "KSM_SAMPLE_DB": str(tmp_path / "db.sqlite3")}
    manage = [sys.executable, str(RECIPE / "site" / "manage.py")]
    small = ["--posts", "60", "--comments", "100", "--products", "40"]
    small += ["--customers", "10", "--orders", "20"]
    steps = (
        ["migrate", "--noinput", "-v", "0"],
        ["seed_sample", *small],
        ["shell", "-c", _SITE_SMOKE],
    )
    for args in steps:
        proc = run([*manage, *args], env=env, timeout_s=300)
        assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "ok"
