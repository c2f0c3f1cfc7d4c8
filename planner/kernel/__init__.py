"""The real kernel: drive, observe and measure the host's KSM, and hold the replay to it.

Everything in the project that touches ``/sys/kernel/mm/ksm`` or runs processes for ksmd to
scan is here. Writing KSM knobs is host-global, so it happens only inside a
:class:`~planner.kernel.sysfs.KsmLease`: it takes a host-wide lock, refuses while another
process uses KSM, saves every knob, and restores them on exit, on exceptions and on signals
(a run killed with SIGKILL is repaired by the next lease from a journal in the lock file).
The rules of KSM this package relies on -- and how each was checked -- are in
docs/kernel-semantics.md.

Modules and their main entry points:

* :mod:`~planner.kernel.sysfs` -- :class:`~planner.kernel.sysfs.KsmSysfs` (read-only view of
  the counters and knobs), :class:`~planner.kernel.sysfs.KsmLease`, the kernel defaults;
* :mod:`~planner.kernel.scanstop` -- :class:`~planner.kernel.scanstop.ScanStopper`: a child
  process that starts ksmd and stops it at the end of a chosen full scan (the caller may be
  off the CPU meanwhile), used through :meth:`~planner.kernel.sysfs.KsmLease.scan_stopper`;
* :mod:`~planner.kernel.holder` -- :class:`~planner.kernel.holder.Holder`: a child process that
  owns private anonymous pages of chosen contents and obeys write / unmap / register / fork /
  exit commands over a socket (its program imports only the standard library);
* :mod:`~planner.kernel.materialize` --
  :func:`~planner.kernel.materialize.plan_materialization` turns a trace into holder commands
  (forks where frames are shared, registrations in the order ksmd will first visit them);
* :mod:`~planner.kernel.run` -- :func:`~planner.kernel.run.run_on_kernel` plays such a plan
  against the real ksmd, one snapshot at a time at chosen full scans, and records every
  counter and every holder's ``ksm_stat`` after every full scan;
* :mod:`~planner.kernel.validate` -- :func:`~planner.kernel.validate.validate_on_kernel`
  (``ksm-planner validate --kernel``): replay and kernel run side by side, compared scan by
  scan (the experiments E1-E11 and THP, as scenarios with their measured values, are test
  data: :mod:`planner.testing.conformance`, which drives :func:`run_on_kernel`);
* :mod:`~planner.kernel.calibrate` -- :func:`~planner.kernel.calibrate.calibrate`
  (``ksm-planner calibrate``): ksmd's CPU cost per code path on this host, as a
  :class:`~planner.engine.cost.CostProfile`;
* :mod:`~planner.kernel.observe` -- :func:`~planner.kernel.observe.observe` (``ksm-planner
  observe``, read-only): a recording of what a live host's KSM did (its format and reader,
  :func:`~planner.trace.recording.read_observed`, are in :mod:`planner.trace.recording`);
* :mod:`~planner.kernel.launch` -- :func:`~planner.kernel.launch.launch` (``ksm-planner
  launch``): run a command with ``prctl(PR_SET_MEMORY_MERGE)`` set for it and its children,
  and :func:`~planner.kernel.launch.merge_state` to read a process's KSM state.

Where it sits: the layers, checked as import contracts by ``tests/test_layers.py``, are
cli > testing > report > whatif > kernel > replay > policy > engine | capture > trace > the
shared helpers. This package sits above the engine -- it replays traces to compare them with
the kernel, takes its knob table (:mod:`planner.engine.knobs`: sysfs names, kernel defaults)
and produces cost profiles the engine consumes -- reads traces through :mod:`planner.trace`
and ``/proc`` through :class:`planner.capture.procfs.ProcFS` (injectable: tests run on a
fake ``/proc``). Nothing below imports it, and neither what-if nor the review does: they
read recordings through :mod:`planner.trace.recording`. The CLI commands ``validate``,
``calibrate``, ``observe`` and ``launch`` call it once each.
"""
