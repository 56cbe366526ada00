"""The report stage: finished runs turned into answers.

Holds the results table (`results`), the supervised-vs-contrastive gap table and the
fits across sizes (`laws`), the intervals they share (`intervals`), saturating power-law fits with
bootstrap intervals (`fit`), the gap curve between two fits (`gapcurve`), the measured
answer (`headline`), what limits the numbers (`checks`), figures (`figures`) and which
of them the data can fill (`coverage`), the
self-contained HTML report (`html`) and its upload to MLflow (`publish`). Imports every
stage before it; only `scaling.cli` imports it.
"""

from __future__ import annotations

from scaling._exports import lazy

_EXPORTS = {
    "build_report": "scaling.report.html",
    "collect": "scaling.report.results",
    "gap_table": "scaling.report.gaps",
    "fit_power_law": "scaling.report.fit",
    "fit_sweep": "scaling.report.laws",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy(__name__, _EXPORTS)
