"""Capture live processes into a trace: ``ksm-planner capture`` (read-only).

Modules: :mod:`~planner.capture.procfs` (``/proc`` readers with an injectable root),
:mod:`~planner.capture.vma` (mapping kinds, ELF bss check), :mod:`~planner.capture.keys`
(key file and key id), :mod:`~planner.capture.hashing` (keyed xxh3 page hashes) and
:mod:`~planner.capture.xxh3` (the same hash compiled for many pages at once),
:mod:`~planner.capture.memread` (runs of pages read from ``/proc/<pid>/mem`` by a compiled
loop), :mod:`~planner.capture.kpage` (kpageflags/kpagecount), :mod:`~planner.capture.frames`
(opaque frame ids), :mod:`~planner.capture.snapshot` (one process),
:mod:`~planner.capture.facts` (the process's whole footprint, the host's memory and load,
cgroups), :mod:`~planner.capture.churn` (sampling between snapshots),
:mod:`~planner.capture.softdirty` (soft-dirty write tracking),
:mod:`~planner.capture.pace` (priority and duty cycle) and :mod:`~planner.capture.session`
(targets, snapshots, the trace).
"""

from __future__ import annotations

from planner.capture.session import CaptureOptions, CaptureResult, capture

__all__ = ["CaptureOptions", "CaptureResult", "capture"]
