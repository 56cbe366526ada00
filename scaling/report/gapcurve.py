"""The gap between two fitted laws: where it closes, and how far that is from the data.

`gap_curve(reference, contrastive)` takes the supervised and the SimCLR laws of error
against the same x (parameters, FLOPs) and gives the fitted gap in points on a log grid
over the data and, where both laws passed their back-tests, REACH x past the largest
model trained (no further: coverage is measured to there, scaling.report.calibration),
with its band, the x from which it stays under a threshold, and a plain sentence that
labels anything beyond the data as an extrapolation. Where a law failed its back-test
the curve stops at the data and the sentence says why; where an interval is unreliable
it is not drawn; an asymptote whose floor is 0 in every replicate is "not measurable".

`gap_band(reference, contrastive, x)`: the gap and its band at x, over the pooled
replicates of the forms each law kept (the coverage harness measures this one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from scaling.report.fit import FEW_DISTINCT_X, NOT_MEASURABLE, REACH, LawFit, percentile_band
from scaling.report.forms import FormName
from scaling.report.numbers import human

__all__ = ["GapCurve", "gap_band", "gap_curve", "gap_draws", "human"]


@dataclass(frozen=True)
class GapCurve:
    """The fitted gap in points, 100 x (err_contrastive - err_reference) (supervised
    top-1 minus SimCLR top-1), on a log grid of x to `reach` x past the data, with its
    band and the x from which it stays under `threshold`."""

    label: str
    threshold: float
    level: float
    x: np.ndarray = field(repr=False)
    gap: np.ndarray = field(repr=False)
    lo: np.ndarray = field(repr=False)
    hi: np.ndarray = field(repr=False)
    data_min: float
    data_max: float
    reach: float  # the curve ends at reach x data_max (1: at the data)
    closes_at: float  # inf: not within the curve; <= data_min: closed everywhere
    closes_interval: tuple[float, float]
    asymptote: float  # 100 x (E_contrastive - E_reference); NaN: not measurable
    asymptote_interval: tuple[float, float]
    withheld: str  # why the curve stops at the data ("" when it reaches further)
    statement: str

    def to_dict(self) -> dict[str, Any]:
        fin = lambda v: v if math.isfinite(v) else None  # noqa: E731 - JSON has no inf
        return {
            "label": self.label,
            "threshold_points": self.threshold,
            "level": self.level,
            "data_range": [self.data_min, self.data_max],
            "reach": self.reach,
            "closes_at": fin(self.closes_at),
            "closes_interval": [fin(v) for v in self.closes_interval],
            "asymptotic_gap_points": fin(self.asymptote),
            "asymptotic_gap_interval": [fin(v) for v in self.asymptote_interval],
            "extrapolation_withheld": self.withheld or None,
            "statement": self.statement,
        }


def _closing(x: np.ndarray, gaps: np.ndarray, threshold: float) -> np.ndarray:
    """Per row: the x from which the gap stays under threshold (log-interpolated);
    x[0] when it is under everywhere, inf when it is still above at the grid's end."""
    above = gaps >= threshold
    m = gaps.shape[1]
    last = m - 1 - np.argmax(above[:, ::-1], axis=1)
    out = np.full(len(gaps), np.inf)
    out[~above.any(axis=1)] = x[0]
    inside = above.any(axis=1) & (last < m - 1)
    rows, i = np.flatnonzero(inside), last[inside]
    g0, g1 = gaps[rows, i], gaps[rows, i + 1]
    frac = np.clip((g0 - threshold) / np.where(g0 > g1, g0 - g1, 1.0), 0.0, 1.0)
    out[rows] = np.exp(np.log(x[i]) + frac * (np.log(x[i + 1]) - np.log(x[i])))
    return out


def gap_draws(reference: LawFit, contrastive: LawFit, x: Any) -> np.ndarray:
    """Replicates of the gap in points at x, (B, m): the two laws' pooled replicates are
    independent, so pairing them by index (shuffled, so that pooled forms mix) draws
    the difference. Empty without an interval."""
    if not (reference.has_interval and contrastive.has_interval):
        return np.empty((0, 0))
    dr, dc = reference.draws(x), contrastive.draws(x)
    rng = np.random.default_rng(0)
    dr, dc = dr[rng.permutation(len(dr))], dc[rng.permutation(len(dc))]
    n = min(len(dr), len(dc))
    return 100 * (dc[:n] - dr[:n])


def gap_band(
    reference: LawFit, contrastive: LawFit, x: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gap, lo, hi) in points at x; lo/hi NaN without an interval."""
    x = np.atleast_1d(np.asarray(x, float))
    gap = 100 * (contrastive.predict(x) - reference.predict(x))
    draws = gap_draws(reference, contrastive, x)
    if not draws.size:
        nan = np.full(len(x), math.nan)
        return gap, nan, nan
    lo, hi = percentile_band(draws, reference.level)
    return gap, lo, hi


def gap_reach(reference: LawFit, contrastive: LawFit) -> tuple[float, str]:
    """How far past the largest size trained the gap may be read (REACH x, or 1: at the
    data, where either law failed its back-test), and why it stops at the data ("" when
    it reaches further)."""
    withheld = "; ".join(f"{f.label}: {f.withheld}" for f in (reference, contrastive) if f.withheld)
    return (1.0 if withheld else REACH), withheld


def gap_curve(
    reference: LawFit,
    contrastive: LawFit,
    *,
    threshold: float = 1.0,
    label: str = "",
    points: int = 400,
) -> GapCurve | None:
    """The gap from two laws vs the same x, or None when either has no curve."""
    if not (reference.ok and contrastive.ok):
        return None
    lo_x = min(reference.x_min, contrastive.x_min)
    hi_x = max(reference.x_max, contrastive.x_max)
    reach, withheld = gap_reach(reference, contrastive)
    x = np.geomspace(lo_x, hi_x * reach, points)
    gap, lo, hi = gap_band(reference, contrastive, x)
    q = ((1 - reference.level) / 2, (1 + reference.level) / 2)
    nan2 = (math.nan, math.nan)
    draws = gap_draws(reference, contrastive, x)
    if draws.size:
        close = _closing(x, draws, threshold)
        close_iv = (
            float(np.quantile(close, q[0], method="lower")),
            float(np.quantile(close, q[1], method="higher")),
        )
    else:
        close_iv = nan2
    closes = float(_closing(x, gap[None], threshold)[0])
    asym, asym_iv = _asymptote(reference, contrastive)
    curve = GapCurve(
        label,
        threshold,
        reference.level,
        x,
        gap,
        lo,
        hi,
        lo_x,
        hi_x,
        reach,
        closes,
        close_iv,
        asym,
        asym_iv,
        withheld,
        "",
    )
    return replace(curve, statement=_statement(curve, reference, contrastive))


def _asymptote(reference: LawFit, contrastive: LawFit) -> tuple[float, tuple[float, float]]:
    """100 x (E_c - E_r) and its interval; NaN where either floor is not measurable
    (a form without one, or E at 0 in every replicate)."""
    nan = (math.nan, (math.nan, math.nan))
    fits = (reference, contrastive)
    if any(f.form is not FormName.SATURATING or len(f.members) > 1 for f in fits):
        return nan
    point = 100 * (contrastive.params()["E"] - reference.params()["E"])
    ivs = [f.intervals() for f in fits]
    if not all(ivs):
        return point, (math.nan, math.nan)
    if any(iv.get("E") is None for iv in ivs):
        return nan
    r = reference.chosen.boot[np.isfinite(reference.chosen.boot).all(axis=1)]
    c = contrastive.chosen.boot[np.isfinite(contrastive.chosen.boot).all(axis=1)]
    n = min(len(r), len(c))
    diff = 100 * (np.exp(c[:n, 0]) - np.exp(r[:n, 0]))
    q = ((1 - reference.level) / 2, (1 + reference.level) / 2)
    return point, (float(np.quantile(diff, q[0])), float(np.quantile(diff, q[1])))


def _statement(c: GapCurve, reference: LawFit, contrastive: LawFit) -> str:
    """A plain sentence on where the FITTED gap closes, labelled as the fit's (and as an
    extrapolation beyond the data); intervals only where they are reliable."""
    t, lvl = f"{c.threshold:g} point", f"{reference.level:.0%}"
    lo, hi = c.closes_interval
    unreliable = [f.label for f in (reference, contrastive) if not f.has_interval]
    if math.isnan(lo):
        iv = " (no interval: " + (
            f"{' and '.join(unreliable)} ha(s) none)" if unreliable else "none)"
        )
    else:
        iv = f" ({lvl} interval {human(lo)} to " + (
            f"{human(hi)})"
            if math.isfinite(hi)
            else f"beyond {human(c.x[-1])}, where the fit is not trusted)"
        )
    end = f"{c.reach:g}x the largest model trained ({human(c.data_max)})"
    if c.closes_at <= c.data_min:
        text = f"The fitted gap is under {t} across the whole range of models trained{iv}."
    elif c.closes_at <= c.data_max:
        text = (
            f"The fitted gap falls under {t} at about {human(c.closes_at)} parameters{iv}, "
            "within the range of models trained."
        )
    elif math.isfinite(c.closes_at):
        text = (
            f"Extrapolated, the fitted gap would fall under {t} at about {human(c.closes_at)} "
            f"parameters{iv}: {c.closes_at / c.data_max:.3g}x the largest model trained "
            f"({human(c.data_max)}), beyond the data, not a measurement."
        )
    elif c.withheld:
        text = (
            f"The fitted gap stays above {t} across the models trained; where it closes is "
            f"not extrapolated: {c.withheld}."
        )
    else:
        text = (
            f"Extrapolated, the fitted gap stays above {t} up to {end} (the furthest the fit's "
            "coverage was checked by simulation), beyond the data, not a measurement; "
            + _asymptote_text(c, lvl)
        )
    few = [f.label for f in (reference, contrastive) if f.n_x < FEW_DISTINCT_X]
    if few:
        text += f" Caution: {' and '.join(few)} rest(s) on fewer than {FEW_DISTINCT_X} model sizes."
    return text


def _asymptote_text(c: GapCurve, lvl: str) -> str:
    if math.isnan(c.asymptote):
        return f"{NOT_MEASURABLE} (the error floor of at least one law is 0 or not fitted)."
    a_lo, a_hi = c.asymptote_interval
    iv = "" if math.isnan(a_lo) else f" ({lvl} interval {a_lo:.2f} to {a_hi:.2f})"
    return f"fitted asymptotic gap {c.asymptote:.2f} points{iv}."
