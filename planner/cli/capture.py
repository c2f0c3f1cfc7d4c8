"""Commands of this group are registered on planner.cli._app.app."""

from __future__ import annotations

from planner.cli._app import app  # noqa: F401
