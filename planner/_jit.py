"""Functions compiled by numba on their first call, not when their module is imported, and
the loading of compiled code from numba's cache ahead of its first call.

Importing numba costs about 0.1-0.2 s and loading or compiling a function more; the command
line imports the modules that hold compiled helpers only to read their option tables (or not
at all, for ``--help``). :func:`compiled_on_first_call` defers both to the first call, from
Python. A function decorated this way cannot be called from other compiled code: use numba's
own decorators for those (as the fast engine's kernel does).

:func:`load_cached` loads, for the numba functions of some modules, every compiled version
numba's cache holds that fits this machine and this source, without compiling anything: a
thread can do it while the main thread reads its input (docs/engine.md, "Start-up").

:func:`njit_cached` is ``numba.njit(cache=True)`` that also works from a read-only install
run by a user without a writable home (a service account, a read-only container): numba
keeps its cache next to the source, else in the user's cache directory, and refuses to
decorate when it can use neither; the cache then goes to a private directory of the user
under the temporary directory, or, failing that, the function is compiled on every run.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.abc
import importlib.machinery
import os
import stat
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    import types

F = TypeVar("F", bound=Callable[..., Any])

#: The compiled-on-first-call functions, by module name: their ``dispatcher`` makers.
_LAZY: dict[str, list[Callable[[], Any]]] = {}

_NUMBA_LOCK = threading.Lock()


class _SkipBlasProbe(importlib.abc.MetaPathFinder):
    """Fails the import of ``scipy.linalg`` in one thread (see :func:`import_numba`)."""

    def __init__(self) -> None:
        self.thread = threading.get_ident()

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == "scipy.linalg" and threading.get_ident() == self.thread:
            raise ImportError("scipy.linalg: not imported for numba's BLAS probe")
        return None


def import_numba() -> Any:
    """``import numba``, and numba's array-math module without SciPy's linear algebra.

    numba builds its target context at the first compiled function it loads or compiles;
    that imports ``numba.np.arraymath``, which probes for a BLAS by importing
    ``scipy.linalg.cython_blas``: 0.25-0.4 s of SciPy imports (``scipy.linalg``,
    ``scipy._lib``, its array-API layer) in every process that runs compiled code, most
    of which never use SciPy. The probe's answer (``arraymath._HAVE_BLAS``) only chooses
    how ``np.correlate``/``np.convolve`` are compiled, which no function of the package
    calls; numba's ``np.dot`` and ``np.linalg`` check for SciPy themselves when a function
    using them is compiled. So the module is imported here with ``scipy.linalg`` failing
    to import in this thread only, while it imports (docs/engine.md, "Start-up"); where
    SciPy's linear algebra is already imported, or numba's array math, nothing is skipped.
    """
    import numba

    if "numba.np.arraymath" not in sys.modules and "scipy.linalg" not in sys.modules:
        with _NUMBA_LOCK:
            if "numba.np.arraymath" not in sys.modules:
                probe = _SkipBlasProbe()
                sys.meta_path.insert(0, probe)
                try:
                    import_packages_first("numba.np.arraymath")
                finally:
                    sys.meta_path.remove(probe)
    return numba


def private_cache_dir() -> str | None:
    """``<tmp>/ksm-planner-numba-<uid>``, created mode 0700 if need be; None if it cannot
    be made or is not this user's alone (numba's cache files are pickles: a directory
    another user can write to could run their code in this process)."""
    path = os.path.join(tempfile.gettempdir(), f"ksm-planner-numba-{os.getuid()}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None
    return path if os.access(path, os.W_OK | os.X_OK) else None


def njit_cached(fn: F, **options: Any) -> F:
    """``numba.njit(cache=True, **options)(fn)``, with the cache wherever one can be kept
    (see the module's docstring); without one (compiled on every run) as a last resort."""
    numba = import_numba()

    try:
        return cast("F", numba.njit(cache=True, **options)(fn))
    except RuntimeError:  # "cannot cache function ...: no locator available for file ..."
        pass
    config: Any = numba.config
    where = None if config.CACHE_DIR else private_cache_dir()
    if where is not None:
        config.CACHE_DIR = where  # read by numba for each function it caches
        try:
            return cast("F", numba.njit(cache=True, **options)(fn))
        except RuntimeError:
            pass
    return cast("F", numba.njit(cache=False, **options)(fn))


def compiled_on_first_call(**options: Any) -> Callable[[F], F]:
    """``numba.njit(**options)`` applied to the function when it is first called (or when
    :func:`load_cached` loads it; both from any thread).

    ``intrinsics=("prefetch", ...)``: names of :data:`INTRINSICS` the function calls; each
    becomes a global of its module (where a placeholder stands until then) just before
    the function is compiled, so that the module need not import numba."""

    def decorate(fn: F) -> F:
        compiled: list[Any] = []
        lock = threading.Lock()

        def dispatcher() -> Any:
            if not compiled:
                with lock:
                    if not compiled:
                        compiled.append(_njit(fn, options))
            return compiled[0]

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            return (compiled[0] if compiled else dispatcher())(*args, **kwargs)

        _LAZY.setdefault(fn.__module__, []).append(dispatcher)
        return cast("F", call)

    return decorate


def _njit(fn: Callable[..., Any], options: dict[str, Any]) -> Any:
    names = options.get("intrinsics", ())
    if names:
        fn_globals = cast("dict[str, Any]", getattr(fn, "__globals__"))  # noqa: B009
        for name in names:
            fn_globals[name] = INTRINSICS[name]()
        options = {k: v for k, v in options.items() if k != "intrinsics"}
    if options.get("cache"):
        return njit_cached(fn, **{k: v for k, v in options.items() if k != "cache"})
    numba = import_numba()

    return numba.njit(**options)(fn)


_PREFETCH: list[Any] = []
_PREFETCH_LOCK = threading.Lock()


def _prefetch() -> Any:
    """``prefetch(array, index)`` for compiled code: asks the CPU to bring the cache line
    of ``array[index]`` into every cache level (LLVM's ``llvm.prefetch``, read, high
    locality), without waiting and without a fault for any index. A loop that probes a
    table far larger than the caches at addresses it can compute ahead (the content-hash
    table, one random probe per page) prefetches a probe several rows ahead, so that the
    misses of consecutive rows overlap instead of coming one after the other."""
    with _PREFETCH_LOCK:
        if _PREFETCH:
            return _PREFETCH[0]
        import_numba()
        from llvmlite import ir
        from numba.core import cgutils as cg
        from numba.core import types
        from numba.extending import intrinsic

        cgutils: Any = cg  # (untyped)

        @intrinsic
        def prefetch(typingctx: Any, array: Any, index: Any) -> Any:
            if not isinstance(array, types.Array) or not isinstance(index, types.Integer):
                return None

            def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
                array_type = signature.args[0]
                ary = context.make_array(array_type)(context, builder, args[0])
                i = context.cast(builder, args[1], signature.args[1], types.intp)
                ptr = cgutils.get_item_pointer(context, builder, array_type, ary, [i])
                byte_ptr = ir.IntType(8).as_pointer()
                i32 = ir.IntType(32)
                opaque = getattr(byte_ptr, "is_opaque", False)  # LLVM's pointer type names
                name = "llvm.prefetch.p0" if opaque else "llvm.prefetch.p0i8"
                fnty = ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32])
                fn = cgutils.get_or_insert_function(builder.module, fnty, name)
                # read (0), keep in every cache level (3), data (1)
                builder.call(fn, [builder.bitcast(ptr, byte_ptr), i32(0), i32(3), i32(1)])
                return context.get_dummy_value()

            return types.void(array, index), codegen

        _PREFETCH.append(prefetch)
        return prefetch


#: Functions for compiled code that numba builds from LLVM directly, by the name a
#: compiled-on-first-call function's ``intrinsics`` option gives.
INTRINSICS: dict[str, Callable[[], Any]] = {"prefetch": _prefetch}


def import_packages_first(name: str) -> types.ModuleType:
    """``importlib.import_module(name)``, each package that holds the module imported first.

    ``import_module("a.b.c")`` takes the import lock of ``a.b.c`` and only then imports
    ``a.b`` when that is not imported yet. A package whose ``__init__`` imports the module
    (``planner.engine.fast`` imports its kernel) then takes the two locks in the opposite
    order in a thread that imports the package: with both at once, Python finds a deadlock
    and one of the two imports fails (``_DeadlockError``; a replay failed so in CI,
    2026-12-06). Imported from the outside in, the locks are taken in one order by every
    thread; a thread that meets a package another is importing waits for it holding no
    lock of its own.
    """
    parts = name.split(".")
    for depth in range(1, len(parts)):
        importlib.import_module(".".join(parts[:depth]))
    return importlib.import_module(name)


def _dispatchers(module_name: str) -> list[Any]:
    """The numba functions defined in a module: its own dispatchers and its lazy ones."""
    import_numba()
    from numba.core.registry import CPUDispatcher

    module = import_packages_first(module_name)
    found = [
        v
        for v in vars(module).values()
        if isinstance(v, CPUDispatcher) and v.py_func.__module__ == module_name
    ]
    return found + [make() for make in _LAZY.get(module_name, [])]


def cached_signatures(dispatcher: Any) -> list[Any]:
    """The argument types of every version of ``dispatcher`` in numba's cache that was
    compiled from this source for this machine (numba's own index, read as numba reads it:
    a stale or foreign entry is left out)."""
    cache: Any = getattr(dispatcher, "_cache", None)
    if not getattr(cache, "_enabled", False):
        return []
    index = cache._cache_file._load_index()  # numba has no public reader
    codegen = dispatcher.targetctx.codegen()
    return [key[0] for key in index if key == cache._index_key(key[0], codegen)]


def load_cached(modules: Iterable[str]) -> int:
    """Load every cached version of the numba functions of ``modules`` (imported here if
    need be); returns how many were loaded. Nothing is compiled: a version missing from the
    cache is compiled on its first call, as before. A failure of numba's private cache
    reader (another numba version) loads nothing; the first calls load as usual."""
    loaded = 0
    for name in modules:
        for dispatcher in _dispatchers(name):
            try:
                signatures = cached_signatures(dispatcher)
            except Exception:  # an optimisation only: the first call loads
                continue
            for sig in signatures:
                if tuple(sig) not in dispatcher.overloads:
                    dispatcher.compile(sig)  # found in the cache: loaded, not compiled
                    loaded += 1
    return loaded


@contextlib.contextmanager
def compiled_code_loading(modules: tuple[str, ...]) -> Iterator[list[int]]:
    """Load the cached compiled code of ``modules`` in a thread while the block runs.

    The block's own first calls wait for what the thread is loading (numba's compiler lock)
    or load it themselves; either way each function is loaded once. On the way out the
    thread is waited for, so no thread outlives the block (an error in the block included).
    Yields a list that receives the number of versions loaded, once the thread is done
    (empty if it failed: the block's first calls then load as usual).
    """
    done: list[int] = []

    def load() -> None:
        # an optimisation only: any failure leaves the loading to the first calls
        with contextlib.suppress(Exception):
            done.append(load_cached(modules))

    worker = threading.Thread(target=load, name="ksm-planner-load-compiled", daemon=True)
    worker.start()
    try:
        yield done
    finally:
        worker.join()


__all__ = [
    "cached_signatures",
    "compiled_code_loading",
    "compiled_on_first_call",
    "import_numba",
    "import_packages_first",
    "load_cached",
    "njit_cached",
    "private_cache_dir",
]
