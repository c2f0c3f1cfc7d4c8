"""numba decorators for the fast engine, typed for mypy (numba's own are untyped); each caches
its compiled code where it can (:func:`planner._jit.njit_cached`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from planner._jit import njit_cached

F = TypeVar("F", bound=Callable[..., Any])

# The kernel never allocates, so it runs without numba's reference counting (NRT): with
# it, every call that passes the state tuple updates the count of each of its ~40 arrays,
# which costs some 40 times the work of a page visit.
_KERNEL: dict[str, Any] = {"nogil": True, "_nrt": False}


def jit(fn: F) -> F:
    """A compiled function that may allocate arrays (reference counted)."""
    return njit_cached(fn, nogil=True)


def kernel(fn: F) -> F:
    """A compiled kernel step: no allocation, no reference counting, cached."""
    return njit_cached(fn, **_KERNEL)


def hot(fn: F) -> F:
    """A kernel step inlined into its callers (numba passes the state tuple to a real call
    as some 250 scalar arguments)."""
    return njit_cached(fn, inline="always", **_KERNEL)


__all__ = ["hot", "jit", "kernel"]
