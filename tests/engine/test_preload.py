"""Loading the replay's compiled code from numba's cache ahead of its first call, and the
cache's location when numba finds none (planner._jit, planner.engine.preload)."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from planner.engine.preload import FAST_ENGINE_MODULES, PREPARE_MODULES, modules_for
from tests.procs import run

ROOT = Path(__file__).resolve().parents[2]

#: compiles one small function of planner._idtable into the cache (NUMBA_CACHE_DIR)
COMPILE_ONE = """
import numpy as np
from planner._idtable import SLOT, _insert_values
_insert_values(np.zeros(16, SLOT), np.arange(3, dtype=np.uint64), np.uint64(2**64 - 1))
"""

#: loads what the cache holds, then reports what numba loaded and compiled
LOAD = """
import json
import numpy as np
from planner._jit import _dispatchers, load_cached
loaded = load_cached(["planner._idtable"])
ds = {d.py_func.__name__: d for d in _dispatchers("planner._idtable")}
before = {n: len(d.overloads) for n, d in ds.items()}
from planner._idtable import SLOT, _insert_values
_insert_values(np.zeros(16, SLOT), np.arange(3, dtype=np.uint64), np.uint64(2**64 - 1))
d = ds["_insert_values"]
print(json.dumps(dict(
    loaded=loaded, before=before, hits=sum(d.stats.cache_hits.values()),
    misses=sum(d.stats.cache_misses.values()), after=len(d.overloads),
)))
"""


def _child(code: str, cache: Path) -> str:
    out = run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        check=True,
        env={**os.environ, "NUMBA_CACHE_DIR": str(cache)},
        timeout_s=600,
    )
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


def test_modules_for_each_engine() -> None:
    assert modules_for("reference") == PREPARE_MODULES
    assert modules_for("vectorized") == PREPARE_MODULES + FAST_ENGINE_MODULES


def test_an_empty_cache_loads_and_compiles_nothing(tmp_path: Path) -> None:
    res = json.loads(_child(LOAD.replace("_insert_values(np", "0 and _insert_values(np"), tmp_path))
    assert res["loaded"] == 0
    assert set(res["before"].values()) == {0}, res  # nothing compiled ahead of a call
    assert res["misses"] == 0


def test_what_the_cache_holds_is_loaded_before_the_first_call(tmp_path: Path) -> None:
    _child(COMPILE_ONE, tmp_path)
    res = json.loads(_child(LOAD, tmp_path))
    assert res["loaded"] == 1, res
    assert res["before"]["_insert_values"] == 1  # loaded by load_cached
    assert sum(res["before"].values()) == 1  # the others are not in the cache: not compiled
    assert (res["hits"], res["misses"], res["after"]) == (1, 0, 1)  # the call compiled nothing


#: loads compiled code, then reports which SciPy modules that imported, and uses SciPy's
#: linear algebra afterwards, from Python and from a compiled function
NO_BLAS_PROBE = """
import json, sys
import numpy as np
from planner._jit import load_cached, njit_cached
loaded = load_cached(["planner._idtable"])
from planner._idtable import IdTable
ids = IdTable().ids_of(np.array([5, 7, 5], np.uint64)).tolist()
scipy_linalg = "scipy.linalg" in sys.modules
import numba.np.arraymath as am
import scipy.linalg

def dot(a, b):
    return np.dot(a, b)

a = np.arange(4.0).reshape(2, 2)
print(json.dumps(dict(
    ids=ids, scipy_linalg=scipy_linalg, have_blas=am._HAVE_BLAS,
    det=float(scipy.linalg.det(a)), dot=njit_cached(dot)(a, a).tolist(),
)))
"""


def test_loading_compiled_code_skips_numbas_blas_probe(tmp_path: Path) -> None:
    """numba's target context probes for a BLAS by importing SciPy's linear algebra
    (0.25-0.4 s); :func:`planner._jit.import_numba` has the probe fail instead, in its
    own thread only: the compiled code runs, and SciPy's linear algebra still imports
    and serves numba's ``np.dot`` afterwards."""
    _child(COMPILE_ONE, tmp_path)
    res = json.loads(_child(NO_BLAS_PROBE, tmp_path))
    assert res["ids"] == [0, 1, 0]
    assert res["scipy_linalg"] is False, res  # nothing of it imported by numba's start-up
    assert res["have_blas"] is False  # the probe's answer: np.correlate's flavour only
    assert res["det"] == pytest.approx(-2.0)
    assert res["dot"] == [[2.0, 3.0], [6.0, 11.0]]


#: a function in a file of its own, cached with numba's locators made to find no place
NO_PLACE = """
import json, sys, tempfile
import numba.core.caching as caching
caching.CacheImpl._locator_classes = [caching.UserProvidedCacheLocator]  # only CACHE_DIR
tempfile.tempdir = sys.argv[1]
from planner._jit import njit_cached

def twice(x):
    return 2 * x

f = njit_cached(twice)
print(json.dumps(dict(value=f(21), enabled=getattr(f._cache, "_enabled", False),
                      path=getattr(f._cache, "_cache_path", None))))
"""


@pytest.mark.parametrize("squatted", [False, True], ids=["private-dir", "dir-of-another"])
def test_a_cache_where_numba_finds_no_place(tmp_path: Path, squatted: bool) -> None:
    """A read-only install run by a user without a writable home: numba refuses to cache;
    the cache goes to a private directory under the temporary directory, or is given up
    (compiled on every run) when that directory is not this user's alone."""
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(NO_PLACE))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    private = tmp / f"ksm-planner-numba-{os.getuid()}"
    if squatted:
        private.mkdir(mode=0o777)
        private.chmod(0o777)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    out = run(
        [sys.executable, str(script), str(tmp)],
        cwd=ROOT,
        check=True,
        env={**env, "PYTHONPATH": str(ROOT)},
        timeout_s=300,
    )
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["value"] == 42
    if squatted:
        assert res["enabled"] is False
        assert not any(private.iterdir())
    else:
        assert res["enabled"] is True
        assert str(res["path"]).startswith(str(private))
        assert private.stat().st_mode & 0o777 == 0o700
        assert any(private.rglob("*.nbi"))  # the index was written there


#: loads what the cache holds of the id table, probes values (the probe calls the prefetch
#: intrinsic), and reports whether its compiled code came from the cache
PROBE = """
import json
import numpy as np
from planner._jit import _dispatchers, load_cached
loaded = load_cached(["planner._idtable"])
from planner._idtable import IdTable
ids = IdTable(8).ids_of(np.arange(100, dtype=np.uint64) % 37).tolist()
d = {x.py_func.__name__: x for x in _dispatchers("planner._idtable")}["_ids"]
print(json.dumps(dict(
    loaded=loaded, ids=ids, hits=sum(d.stats.cache_hits.values()),
    misses=sum(d.stats.cache_misses.values()),
)))
"""


def test_a_function_that_calls_an_intrinsic_is_cached_and_loaded(tmp_path: Path) -> None:
    """The id table's probe (``intrinsics=("prefetch",)``) compiles in a first process,
    then loads from the cache in the next, ahead of its call, and gives the same ids."""
    first = json.loads(_child(PROBE, tmp_path))
    second = json.loads(_child(PROBE, tmp_path))
    assert first["ids"] == second["ids"] == [i % 37 for i in range(100)]
    assert (first["loaded"], first["misses"]) == (0, 1), first
    assert second["loaded"] >= 1, second
    assert (second["hits"], second["misses"]) == (1, 0), second


def test_prefetch_compiles_to_a_prefetch_and_never_faults() -> None:
    """``prefetch`` is the CPU's prefetch instruction, and a hint only: an index far
    outside the array neither faults nor changes anything."""
    import platform

    import numpy as np

    from planner._jit import INTRINSICS, import_numba

    numba = import_numba()
    prefetch = INTRINSICS["prefetch"]()

    def touch(a: np.ndarray[Any, Any], i: int) -> float:
        prefetch(a, i)
        return float(a[0])

    compiled = numba.njit(touch)
    a = np.ones(4)
    assert compiled(a, 1 << 40) == 1.0
    assert compiled(a, -(1 << 40)) == 1.0
    if platform.machine() in ("x86_64", "AMD64"):
        asm = "".join(compiled.inspect_asm().values())
        assert "prefetcht0" in asm


#: The interleaving of the replay that failed in CI (2026-12-06): the loading thread imports
#: the fast engine's kernel while the main thread imports the fast engine's package, whose
#: ``__init__`` imports that kernel. Python's import machinery is wrapped so that each thread
#: waits at the step where the other must be (each wait bounded, so a different order only
#: ends the run, never hangs it), then the main thread's import is reported.
CROSSED_IMPORTS = """
import importlib._bootstrap as bootstrap
import json, threading, time

PKG = "planner.engine.fast"
MAIN = threading.get_ident()
loader_at_package = threading.Event()
main_holds_package = threading.Event()
original = bootstrap._find_and_load


def find_and_load(name, import_):
    me = threading.get_ident()
    if me != MAIN and name == PKG:
        loader_at_package.set()  # the loader is about to import the package
        main_holds_package.wait(5)
    elif me == MAIN and name == PKG:
        loader_at_package.wait(5)
    elif me == MAIN and name == PKG + ".engine":
        main_holds_package.set()
    elif me == MAIN and name == PKG + ".kernel":
        # until the loader waits for the package's lock, which the main thread holds
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            # the lock the loader waits for (3.11: a lock; 3.12 on: a list of them)
            held = getattr(bootstrap, "_blocking_on", {}).get(loader[0])
            locks = held if isinstance(held, list) else [held]
            if any(getattr(lock, "name", None) == PKG for lock in locks):
                break
            time.sleep(0.001)
    return original(name, import_)


bootstrap._find_and_load = find_and_load
from planner._jit import import_numba
from planner.engine.preload import compiled_code_loading

import_numba()
loader = []
with compiled_code_loading((PKG + ".kernel",)) as done:
    loader.append(next(t.ident for t in threading.enumerate() if t.name.endswith("compiled")))
    try:
        from planner.engine.fast import FastEngine
        error = None
    except Exception as exc:
        error = repr(exc)
print(json.dumps(dict(error=error, loaded=done)))
"""


def test_the_loading_thread_and_the_main_thread_import_the_fast_engine_at_once(
    tmp_path: Path,
) -> None:
    """The loading thread imports each module's packages first, as the main thread does,
    so the two never take the import locks of a package and its module in opposite orders
    (CI, 2026-12-06: ``_DeadlockError ... _ModuleLock('planner.engine.fast.kernel')`` in a
    ``ksm-planner replay``: the thread had locked the kernel, then went to import its
    package, which the main thread was importing, and which imports the kernel)."""
    res = json.loads(_child(CROSSED_IMPORTS, tmp_path))
    assert res["error"] is None, res
    assert res["loaded"] == [0], res  # the thread finished (an empty cache: nothing to load)
