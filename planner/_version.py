"""Version of ksm-planner (single source, read by hatchling and recorded in every output)."""

__version__ = "0.1.0"
