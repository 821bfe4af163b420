"""Benchmarks of what MGD costs: step time, assignment updates, solver, memory.

Every figure is a *ratio* of two (or three) workloads measured side by side in one run,
interleaved repetition by repetition, so that a noisy machine slows both sides alike.
The modules are small and independent:

* :mod:`.stats` — interleaved timing and robust summaries (median, quartiles, min/max).
* :mod:`.workloads` — config/model set-up, synthetic batches, the training step.
* :mod:`.step` — MGD training step ÷ (student step + teacher forward), issue 6 item 1.
* :mod:`.update` — assignment update ÷ bare forwards, and solver vs OR-Tools, item 2.
* :mod:`.memory` — peak RSS of MGD vs student + teacher, fresh subprocesses, item 3
  (not imported here: it is also the subprocesses' ``python -m`` entry point).
* :mod:`.tables` — the Markdown tables.

``tools/benchmark.py`` is the command line. The other modules are measurements of their own,
each a ``python -m benchmarks.<name>`` command (sync counts, the step profile, DistPro's
overhead and finite-difference radius, the CPU levers, the jitted focal loss, the teacher
score AUC, the loss trace); :mod:`.tiny_run` holds the tiny-run settings they share with the
tests. The accuracy study is the package ``study``, not here.
"""
from benchmarks.stats import interleaved_times, profile_table, ratio_summary, summarize
from benchmarks.step import measure_step_overhead
from benchmarks.tables import markdown_report
from benchmarks.update import (
    load_assignment_npz,
    measure_solver,
    measure_update_cost,
    save_assignment_npz,
)

__all__ = [
    "interleaved_times",
    "load_assignment_npz",
    "markdown_report",
    "measure_solver",
    "measure_step_overhead",
    "measure_update_cost",
    "profile_table",
    "ratio_summary",
    "save_assignment_npz",
    "summarize",
]
