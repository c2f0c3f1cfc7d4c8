"""Capacity-planning reviews: ``ksm-planner report``.

A review answers, for one trace: should KSM be enabled for these processes, how, and what
does it buy? It renders the numbers of a what-if run (:mod:`planner.whatif`, the only
producer of numbers) and of the trace, in thirteen sections (decision,
scope, current state, method, results, time to benefit, cost, attribution, risks,
deployment, sensitivity, validation, appendix), as one self-contained HTML page with inline
SVG plots, a Markdown twin, the data behind every table and plot (CSV and JSON) and, optionally, a
PDF. The same inputs always give the same bytes.

Modules, from computing to rendering:

* :mod:`~planner.report.analysis` -- facts of the trace itself (process roles, current
  state by role and process, the static ideal);
* :mod:`~planner.report.inputs` -- the review's view of its inputs
  (:class:`~planner.report.inputs.ReviewInputs`, one
  :class:`~planner.report.inputs.ReviewScenario` per scenario: a name and the what-if's
  typed figures on the reviewed host);
* :mod:`~planner.report.make` -- :func:`~planner.report.make.make_report` (what the CLI
  calls: run the what-if, build, write) and the mapping from a what-if result;
* :mod:`~planner.report.review` -- the sections;
* :mod:`~planner.report.decision` -- the first screen, the gates and the recommendation rule;
* :mod:`~planner.report.deployment` -- how to turn the recommendation on, what to watch;
* :mod:`~planner.report.common` -- wording shared by the sections;
* :mod:`~planner.report.fleet` -- the review of a fleet (many hosts: per host, the spread
  across hosts, fleet totals and capacity; ``make_fleet_report``);
* :mod:`~planner.report.doc` -- the document model (sections of paragraphs, tables, figures);
* :mod:`~planner.report.charts` -- deterministic matplotlib SVG;
* :mod:`~planner.report.render` -- HTML (Jinja2 templates and CSS shipped as package
  data), Markdown, data files and PDF (WeasyPrint), written atomically;
* :mod:`~planner.report.fmt` -- stable number formatting.

Example
-------
>>> from planner.report.make import make_report  # doctest: +SKIP
>>> make_report("traces/django-preload", out="review")  # doctest: +SKIP
"""
