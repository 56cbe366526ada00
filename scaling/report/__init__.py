"""The report stage: finished runs turned into answers.

Holds the results table (`results`), the supervised-vs-contrastive gap table (`gaps`) and
the intervals it shares with the headline (`intervals`); the scaling laws: their forms
(`forms`), the batched Huber solver (`solver`), fits with parametric-bootstrap replicates
(`bootstrap`), the law the report states for a set of runs with its form chosen by
back-test (`fit`, `backtest`), the joint law over size and training length (`joint`),
the gap at equal compute beside the gap at equal size (`frontier`), the laws across a
sweep (`laws`), the gap curve between two laws (`gapcurve`), the coverage harness that
measures the intervals on known laws (`calibration`) and the questions API an advisor
builds on (`questions`); the measured answer (`headline`), what limits the numbers
(`checks`), figures (`figures`, `lawfigures`) and which of them the data can fill (`coverage`),
the self-contained HTML report (`html`, `lawhtml`) and its upload to MLflow (`publish`). Imports every stage before it; only
`scaling.cli` imports it.
"""

from __future__ import annotations

from scaling._exports import lazy

_EXPORTS = {
    "answer": "scaling.report.questions",
    "build_report": "scaling.report.html",
    "collect": "scaling.report.results",
    "gap_table": "scaling.report.gaps",
    "fit_joint": "scaling.report.joint",
    "fit_power_law": "scaling.report.fit",
    "fit_sweep": "scaling.report.laws",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy(__name__, _EXPORTS)
