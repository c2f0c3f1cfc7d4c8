"""Traces: the on-disk format every other layer reads, and the ways into and out of it.

A *trace* is what a capture saw: for each host, snapshots of processes, their mappings and,
per present anonymous page, a keyed content hash, an opaque frame id and flags -- never page
contents, never raw PFNs. It is a directory of host-partitioned Parquet tables with a manifest
(format version 1, described for users in ``traces/README.md``).

Modules and their main entry points:

* :mod:`~planner.trace.schema` -- the format itself: the four tables' Arrow schemas, their sort
  keys and Parquet settings, :class:`~planner.trace.schema.PageFlag`, the mapping kinds
  (:data:`~planner.trace.schema.VMA_KINDS`), the interchange columns and the schema-version
  history;
* :mod:`~planner.trace.io` -- :func:`~planner.trace.io.open_trace` checks a trace's manifest
  and files cheaply and returns a :class:`~planner.trace.io.Trace`, whose
  :meth:`~planner.trace.io.Trace.verify` checks every file's hash,
  :meth:`~planner.trace.io.Trace.load_host` gives a :class:`~planner.trace.io.HostTrace` and
  :meth:`~planner.trace.io.Trace.iter_snapshot_pages` streams one snapshot at a time;
  :class:`~planner.trace.io.TraceWriter` writes a trace atomically into a private directory;
* :mod:`~planner.trace.flat` -- :class:`~planner.trace.flat.FlatConverter`, the one path from
  flat page rows (one per page per snapshot) to the four tables;
* :mod:`~planner.trace.ingest` -- :func:`~planner.trace.ingest.ingest` (``ksm-planner
  ingest``): interchange CSV/Parquet and the capture prototype's schema version 0 become a
  trace, streamed and sorted out of core;
* :mod:`~planner.trace.export` -- :func:`~planner.trace.export.export_trace` (``ksm-planner
  export``): a trace back to the interchange format;
* :mod:`~planner.trace.summary` -- :func:`~planner.trace.summary.summarize_trace`
  (``ksm-planner info``): what a trace holds and its static dedup potential.

Where it sits: the layers are cli → report → whatif → kernel → engine → capture / policy →
trace. This package is the bottom one: it imports no other layer (only the shared helpers
``planner.errors``, ``planner.provenance``, ``planner._fs`` and ``planner._progress``), and
everything above reads traces only through it. :mod:`planner.capture` and ``ingest`` write
traces; the engine (:func:`planner.engine.prepare`), the policies (process and mapping kinds),
the kernel harness (:mod:`planner.kernel.materialize` rebuilds a trace as real processes) and
the what-if read them. What a capture must and must not record is explained in
docs/capture.md.
"""
