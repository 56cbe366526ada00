"""Intervals of differences of means, one definition for the gap table and the headline.

`welch_satterthwaite` is the interval of a difference whose standard error combines
independent parts, each with its own variance and degrees of freedom: Welch's t with
the Welch-Satterthwaite degrees of freedom, dof = (sum v_i)^2 / sum (v_i^2 / dof_i).
The gap of one architecture (two methods' means over seeds) and the change of the gap
between two architectures (two independent gaps) are both this interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy.stats import t as student_t


def welch_satterthwaite(
    diff: float, parts: Sequence[tuple[float, float]], level: float
) -> tuple[float, float, float, float]:
    """(se, lo, hi, dof) of `diff` at confidence `level`; `parts` are (variance of the
    part's estimate, its degrees of freedom). A zero standard error gives the point
    itself (infinite degrees of freedom)."""
    total = sum(v for v, _ in parts)
    if total == 0:
        return 0.0, diff, diff, math.inf
    dof = total**2 / sum(v**2 / d for v, d in parts if v)
    half = float(student_t.ppf((1 + level) / 2, dof)) * math.sqrt(total)
    return math.sqrt(total), diff - half, diff + half, dof
