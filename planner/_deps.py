"""Optional dependencies: import them where they are used, fail with the extra to install."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from planner.errors import MissingExtraError

if TYPE_CHECKING:
    from types import ModuleType


def require(module: str, *, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming the extra to install.

    Examples
    --------
    >>> np = require("numpy", extra="core", purpose="arrays")
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        raise MissingExtraError(
            f"{top} is needed for {purpose} but is not installed",
            hint=f"pip install 'ksm-planner[{extra}]'",
        ) from exc
