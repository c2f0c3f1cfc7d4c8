"""Capture live processes into a trace: ``ksm-planner capture`` (read-only).

Modules: :mod:`~planner.capture.procfs` (``/proc`` readers with an injectable root),
:mod:`~planner.capture.vma` (mapping kinds, ELF bss check), :mod:`~planner.capture.keys`
(key file and key id), :mod:`~planner.capture.hashing` (keyed xxh3 page hashes),
:mod:`~planner.capture.kpage` (kpageflags/kpagecount), :mod:`~planner.capture.frames`
(opaque frame ids), :mod:`~planner.capture.snapshot` (one process) and
:mod:`~planner.capture.session` (targets, snapshots, the trace).
"""

from __future__ import annotations

from planner.capture.session import CaptureOptions, CaptureResult, capture

__all__ = ["CaptureOptions", "CaptureResult", "capture"]
