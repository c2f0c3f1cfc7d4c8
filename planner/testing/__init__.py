"""Test support shipped with the package: synthetic trace builders and hypothesis strategies."""

from planner.testing.builder import World, content_hash

__all__ = ["World", "content_hash"]
