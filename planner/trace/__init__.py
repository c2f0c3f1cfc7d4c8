"""Traces: the on-disk format every other layer reads, and the ways into and out of it.

A *trace* is what a capture saw: for each host, snapshots of processes, their mappings and,
per present anonymous page, a keyed content hash, an opaque frame id and flags -- never page
contents, never raw PFNs; since format version 2 also what changed between snapshots and what
the host and processes looked like beyond their pages. It is a directory of host-partitioned
Parquet tables with a manifest (format version 2, described for users in
``traces/README.md``; version 1 traces are read as version 2).

Modules and their main entry points:

* :mod:`~planner.trace.schema` -- the format itself: the four tables' Arrow schemas, their sort
  keys and Parquet settings, :class:`~planner.trace.schema.PageFlag`, the mapping kinds
  (:data:`~planner.trace.schema.VMA_KINDS`), the interchange columns and the schema-version
  history;
* :mod:`~planner.trace.io` -- :func:`~planner.trace.io.open_trace` checks a trace's manifest
  and files cheaply and returns a :class:`~planner.trace.io.Trace`, whose
  :meth:`~planner.trace.io.Trace.verify` checks every file's hash,
  :meth:`~planner.trace.io.Trace.load_host` gives a :class:`~planner.trace.io.HostTrace` and
  :meth:`~planner.trace.io.Trace.iter_snapshot_pages` streams one snapshot at a time and
  :meth:`~planner.trace.io.Trace.hz` (or :attr:`~planner.trace.io.HostTrace.hz`) is the one
  way to read the CONFIG_HZ a capture recorded;
  :class:`~planner.trace.io.TraceWriter` writes a trace atomically into a private directory;
* :mod:`~planner.trace.flat` -- :class:`~planner.trace.flat.FlatConverter`, the one path from
  flat page rows (one per page per snapshot) to the four tables;
* :mod:`~planner.trace.ingest` -- :func:`~planner.trace.ingest.ingest` (``ksm-planner
  ingest``): interchange CSV/Parquet and the capture prototype's schema version 0 become a
  trace, streamed and sorted out of core;
* :mod:`~planner.trace.export` -- :func:`~planner.trace.export.export_trace` (``ksm-planner
  export``): a trace back to the interchange format;
* :mod:`~planner.trace.summary` -- :func:`~planner.trace.summary.summarize_trace`
  (``ksm-planner info``): what a trace holds and its static dedup potential;
* :mod:`~planner.trace.recording` -- the format of a recording of a real host's KSM
  (``ksm-planner observe``, with the canary's per-page KSM states) and
  :func:`~planner.trace.recording.read_observed`, so that what-if and the review read
  recordings without the recorder;
* :mod:`~planner.trace.views` -- typed views of the version-2 facts that the layers above
  read through :class:`~planner.trace.io.HostTrace` (``page_changes``, ``intervals``,
  ``host_memory``, ``process_footprints``, ``cgroup_memory``).

Where it sits: the layers, checked as import contracts by ``tests/test_layers.py``, are
cli > testing > report > whatif > kernel > replay > policy > engine | capture > trace > the
shared helpers. This package is the bottom layer: it imports no other (only the shared
helpers ``planner.errors``, ``planner.provenance``, ``planner._fs``, ``planner._input`` and
``planner._progress``), and everything above reads traces only through it.
:mod:`planner.capture` and ``ingest`` write traces; the engine (:func:`planner.engine.prepare`),
the policies (process and mapping kinds), the kernel harness (:mod:`planner.kernel.materialize`
rebuilds a trace as real processes) and the what-if read them. What a capture must and must not
record is explained in docs/capture.md.
"""
