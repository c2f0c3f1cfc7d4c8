"""Live validation: hold the planner to the real ksmd on real workloads.

See docs/live-validation.md. :func:`~planner.testing.live.protocol.run_live` runs a workload
under KSM and measures what the real ksmd does; :func:`~planner.testing.live.compare.compare_run`
replays the run's capture with the same knobs and scores the prediction.
"""
