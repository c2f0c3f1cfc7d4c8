"""What ``ksm-planner replay`` spends besides replaying: freed arrays reused without page
faults inside ``retained_heap``, normal pages where huge ones are cold, a start-up without
pandas, an exit without the interpreter's last collection (docs/engine.md, "Speed and
memory")."""

from __future__ import annotations

import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from planner import _heap as heap
from planner._heap import release_memory, retained_heap
from tests.procs import run

ROOT = Path(__file__).resolve().parents[2]
glibc = pytest.mark.skipif(heap._LIBC is None, reason="needs glibc's malloc_trim and mallopt")


def _faults_of_fresh_array(n_bytes: int) -> int:
    """Minor faults of this thread while an array is allocated, filled and freed twice over
    (the second time after a release_memory)."""
    a = np.empty(n_bytes, np.uint8)
    a.fill(1)
    del a
    release_memory()
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    b = np.empty(n_bytes, np.uint8)
    b.fill(2)
    del b
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before


@glibc
def test_freed_arrays_are_reused_inside() -> None:
    n_bytes = 16 << 20  # below the mmap threshold kept inside
    with retained_heap():
        inside = _faults_of_fresh_array(n_bytes)
    outside = _faults_of_fresh_array(n_bytes)
    # outside, the trim gave the 16 MiB back: it is faulted in again (4 KiB or 2 MiB pages)
    assert outside >= n_bytes // (2 << 20), outside
    assert inside < outside, (inside, outside)
    assert inside < 64, inside


@glibc
def test_nested_and_released_once() -> None:
    with retained_heap():
        with retained_heap():
            assert heap._retaining == 2
        assert heap._retaining == 1
    assert heap._retaining == 0


@glibc
def test_a_worker_retains_for_inputs_up_to_its_bound() -> None:
    """What-if workers retain freed arrays for inputs up to RETAIN_MAX_ROWS rows only (a
    16 M-page host in a 4 GiB Dask worker had no room for them)."""
    from planner._heap import RETAIN_MAX_ROWS, retained_heap_below

    with retained_heap_below(RETAIN_MAX_ROWS):
        assert heap._retaining == 1
    with retained_heap_below(RETAIN_MAX_ROWS + 1):
        assert heap._retaining == 0
    assert heap._retaining == 0


def _huge() -> bool:
    from numpy._core.multiarray import _get_madvise_hugepage  # type: ignore[attr-defined]

    return bool(_get_madvise_hugepage())


def test_normal_pages_nest_and_restore_numpys_switch() -> None:
    """numpy's huge-page ``madvise`` is off inside (nested blocks included) and as it was
    after the outermost block, whatever it was."""
    from numpy._core.multiarray import _set_madvise_hugepage  # type: ignore[attr-defined]

    before = _huge()
    try:
        for setting in (True, False):
            _set_madvise_hugepage(setting)
            with heap.normal_pages():
                assert not _huge()
                with heap.normal_pages():
                    assert not _huge()
                assert not _huge()
            assert _huge() is setting
    finally:
        _set_madvise_hugepage(before)


def _balloon(root: Path, features: str) -> Path:
    dev = root / "bus" / "virtio" / "drivers" / "virtio_balloon" / "virtio0"
    dev.mkdir(parents=True)
    (dev / "features").write_text(features + "\n")
    return root


@pytest.mark.parametrize(
    ("features", "cold"),
    [
        # this project's VMs: stats, deflate on OOM and free page reporting (bit 5)
        ("0110010100000000000000000000000010000000", True),
        ("0110000100000000000000000000000010000000", False),  # a balloon that does not report
        ("01100", False),  # too short to say
    ],
)
def test_huge_pages_are_cold_where_free_pages_go_back_to_the_host(
    tmp_path: Path, features: str, cold: bool
) -> None:
    """A virtio balloon that reports free pages (feature bit 5) makes a fresh huge page
    cold; no balloon, or one without the feature, does not (fake sysfs)."""
    heap.huge_pages_are_cold.cache_clear()
    try:
        assert heap.huge_pages_are_cold(_balloon(tmp_path, features)) is cold
        assert heap.huge_pages_are_cold(tmp_path / "no-sysfs") is False
    finally:
        heap.huge_pages_are_cold.cache_clear()


@pytest.mark.parametrize("cold", [True, False])
def test_the_engines_state_takes_normal_pages_where_huge_ones_are_cold(
    monkeypatch: pytest.MonkeyPatch, cold: bool
) -> None:
    """Where huge pages are cold the fast engine applies a snapshot (allocating its state)
    with numpy's huge pages off; elsewhere as numpy does by default."""
    from planner.engine import KsmKnobs, prepare
    from planner.engine.fast import engine
    from planner.engine.fast.apply import apply_delta as apply
    from planner.testing.builder import World

    w = World()
    w.spawn(1)
    w.map(1, 0x10000, [1, 1, 2])
    w.snapshot(0.0)
    fe = engine.FastEngine(prepare(w.host_trace()), KsmKnobs())
    seen: list[bool] = []

    def recorded(*args: object) -> None:
        seen.append(_huge())
        apply(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(heap, "huge_pages_are_cold", lambda: cold)
    monkeypatch.setattr(engine, "apply_delta", recorded)
    before = _huge()
    with heap.state_pages():
        assert _huge() is (before and not cold)
    fe.apply_snapshot(0, 0)
    assert seen == [before and not cold]
    assert _huge() is before


#: One ``ksm-planner replay --json`` of the sample in a fresh interpreter, for both tests
#: below (one replay of the sample costs 10-25 s on 2 cores: it is run once). The first
#: ``atexit`` handler registered runs last (last in, first out): after the command's own,
#: it reports how many objects were frozen for the exit.
REPLAY_CHILD = """
import atexit, gc, os, sys
atexit.register(lambda: os.write(1, b"\\nfrozen %d" % gc.get_freeze_count()))
from planner.cli import main
try:
    main(["replay", {path!r}, "--json"])
except SystemExit as exc:
    assert not exc.code, exc.code
assert "pandas" not in sys.modules, "replay imported pandas"
assert gc.get_freeze_count() == 0, "frozen before the exit"
"""


@pytest.fixture(scope="module")
def replay_child() -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent(REPLAY_CHILD.format(path=str(ROOT / "traces" / "django-preload")))
    return run([sys.executable, "-c", code], cwd=ROOT, timeout_s=300)


def test_replay_does_not_import_pandas(replay_child: subprocess.CompletedProcess[str]) -> None:
    """``ksm-planner replay`` reads, prepares and replays a trace without importing pandas
    (0.3-0.4 s of its start-up): no column goes through pyarrow's pandas path."""
    assert replay_child.returncode == 0, replay_child.stderr[-2000:]
    assert '"full_scans"' in replay_child.stdout


def test_exit_skips_the_last_collection(replay_child: subprocess.CompletedProcess[str]) -> None:
    """At exit the objects the replay left are frozen: the interpreter's last collection
    would walk them all (numba's compiled code) and free nothing the exit does not."""
    assert replay_child.returncode == 0, replay_child.stderr[-2000:]
    frozen = int(replay_child.stdout.rsplit("frozen ", 1)[1])
    assert frozen > 10_000, frozen
