"""Functions compiled by numba on their first call, not when their module is imported.

Importing numba costs about 0.1-0.2 s and loading or compiling a function more; the command
line imports the modules that hold compiled helpers only to read their option tables (or not
at all, for ``--help``). :func:`compiled_on_first_call` defers both to the first call, from
Python. A function decorated this way cannot be called from other compiled code: use numba's
own decorators for those (as the fast engine's kernel does).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

F = TypeVar("F", bound=Callable[..., Any])


def compiled_on_first_call(**options: Any) -> Callable[[F], F]:
    """``numba.njit(**options)`` applied to the function when it is first called."""

    def decorate(fn: F) -> F:
        compiled: list[Callable[..., Any]] = []

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            if not compiled:
                import numba

                compiled.append(numba.njit(**options)(fn))
            return compiled[0](*args, **kwargs)

        return cast("F", call)

    return decorate


__all__ = ["compiled_on_first_call"]
