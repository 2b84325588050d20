"""What the book's chapters and assignments need beside the library: figures, widgets, exercise checks, runtime.

This subpackage sits on top of the core (:mod:`profit_edu.quant` ... :mod:`profit_edu.packed`): it imports the
core, and nothing in the core imports it (a test checks). Modules:

* :mod:`.runtime` - quick or full mode, Colab or not, the device, the synthetic-data banner;
* :mod:`.plots` - seaborn figures of quantizers, grids, errors and border effects;
* :mod:`.aiwq_plots` - the AIWQ chapter's figures (the ranking PROFIT freezes by, AIWQ against bits, raw vs EMA);
* :mod:`.aiwq_explorer` - the AIWQ explorer: a quantized MobileNet trained a few steps, recorded per step and layer
  (AIWQ, weight flips, BN drift), drawn per frame, and sliders over it;
* :mod:`.widgets` - ipywidgets explorers (live sliders with a kernel, pre-drawn steppers without);
* :mod:`.checks` - automatic checks of the exercises (:func:`~.checks.report` in a notebook);
* :mod:`.results` - numbers read by id from the ledger and the benchmarks' JSON files (never typed in a chapter);
* :mod:`.recipe_plots` - a recipe's phases drawn as a timeline (chapter 7);
* :mod:`.experiments` - the accuracy benchmark's seeds, means, paired differences and intervals, and its AIWQ
  rankings, computed from the ledger's lines (chapters 6 and 7, and ``benchmarks/accuracy/summary.py``).
* :mod:`.grading` - the assignments' grader: runs a student's function on cases with a time limit, reports each
  failed case (expected vs got) and a score, and never crashes;
* :mod:`.assignment_checks` - the checks of the four assignments in ``book/assignments/`` (public and hidden cases).

The repository's top-level ``book/`` folder holds the chapters themselves (notebooks); it is not a Python package,
so ``profit_edu.book`` and ``book/`` do not clash.

>>> from profit_edu.book import runtime
>>> runtime.scale({"PROFIT_EDU_QUICK": "1"})
'quick'
"""

from . import (
    aiwq_explorer,
    aiwq_plots,
    assignment_checks,
    checks,
    experiments,
    grading,
    plots,
    recipe_plots,
    results,
    runtime,
    widgets,
)

__all__ = ["aiwq_explorer", "aiwq_plots", "assignment_checks", "checks", "experiments", "grading", "plots",
           "recipe_plots", "results", "runtime", "widgets"]
