"""The gap between two fitted power laws: where it closes, and how far that is from the data.

`gap_curve(reference, contrastive)` takes the supervised and the SimCLR fits of error
against the same x (parameters, FLOPs) and gives the fitted gap in points on a log grid
reaching EXTRAPOLATE x past the largest model trained, with its bootstrap band, the x
from which it stays under a threshold, and a plain sentence that labels anything beyond
the data as an extrapolation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from scaling.report.fit import FEW_DISTINCT_X, PowerLawFit

#: The gap curve is drawn (and its closing point sought) up to this many times the
#: largest model trained; anything beyond the data is labelled an extrapolation.
EXTRAPOLATE = 1000.0


@dataclass(frozen=True)
class GapCurve:
    """The fitted gap in points, 100 x (err_contrastive - err_reference) (supervised
    top-1 minus SimCLR top-1), on a log grid of x reaching EXTRAPOLATE x past the data,
    with its bootstrap band and the x from which it stays under `threshold`."""

    label: str
    threshold: float
    level: float
    x: np.ndarray = field(repr=False)
    gap: np.ndarray = field(repr=False)
    lo: np.ndarray = field(repr=False)
    hi: np.ndarray = field(repr=False)
    data_min: float
    data_max: float
    closes_at: float  # inf: not within EXTRAPOLATE x data_max; <= data_min: closed everywhere
    closes_interval: tuple[float, float]
    asymptote: float  # 100 x (E_contrastive - E_reference)
    asymptote_interval: tuple[float, float]
    statement: str

    def to_dict(self) -> dict[str, Any]:
        fin = lambda v: v if math.isfinite(v) else None  # noqa: E731 - JSON has no inf
        return {
            "label": self.label,
            "threshold_points": self.threshold,
            "level": self.level,
            "data_range": [self.data_min, self.data_max],
            "closes_at": fin(self.closes_at),
            "closes_interval": [fin(v) for v in self.closes_interval],
            "asymptotic_gap_points": self.asymptote,
            "asymptotic_gap_interval": [fin(v) for v in self.asymptote_interval],
            "statement": self.statement,
        }


NO_CROSSING = "no crossing within the fitted range"


def human(n: float) -> str:
    """1234567 -> '1.23M' (parameters, FLOPs)."""
    if not math.isfinite(n):
        return "inf"
    for unit, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


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


def gap_curve(
    reference: PowerLawFit,
    contrastive: PowerLawFit,
    *,
    threshold: float = 1.0,
    label: str = "",
    points: int = 400,
) -> GapCurve | None:
    """The gap from two fits vs the same x, or None when either fit has no curve."""
    if not (reference.ok and contrastive.ok):
        return None
    lo_x = min(reference.x_min, contrastive.x_min)
    hi_x = max(reference.x_max, contrastive.x_max)
    x = np.geomspace(lo_x, hi_x * EXTRAPOLATE, points)
    gap = 100 * (contrastive.predict(x) - reference.predict(x))
    rb = reference.boot if reference.boot is not None else np.empty((0, 3))
    cb = contrastive.boot if contrastive.boot is not None else np.empty((0, 3))
    r = min(len(rb), len(cb))
    q = ((1 - reference.level) / 2, (1 + reference.level) / 2)
    nan2 = (math.nan, math.nan)
    if r:
        boot_gap = 100 * (contrastive.predict(x, cb[:r]) - reference.predict(x, rb[:r]))
        band = np.quantile(boot_gap, q[0], axis=0), np.quantile(boot_gap, q[1], axis=0)
        close = _closing(x, boot_gap, threshold)
        close_iv = (
            float(np.quantile(close, q[0], method="lower")),
            float(np.quantile(close, q[1], method="higher")),
        )
        asym = 100 * (np.exp(cb[:r, 0]) - np.exp(rb[:r, 0]))
        asym_iv = (float(np.quantile(asym, q[0])), float(np.quantile(asym, q[1])))
    else:
        band, close_iv, asym_iv = (np.full_like(x, np.nan),) * 2, nan2, nan2
    closes = float(_closing(x, gap[None], threshold)[0])
    asym_pt = 100 * (contrastive.params()["E"] - reference.params()["E"])
    curve = GapCurve(
        label,
        threshold,
        reference.level,
        x,
        gap,
        band[0],
        band[1],
        lo_x,
        hi_x,
        closes,
        close_iv,
        asym_pt,
        asym_iv,
        "",
    )
    return replace(curve, statement=_statement(curve, reference, contrastive))


def _statement(c: GapCurve, reference: PowerLawFit, contrastive: PowerLawFit) -> str:
    """A plain sentence on where the FITTED gap closes, labelled as the fit's (and as an
    extrapolation beyond the data); intervals only where the bootstrap had replicates."""
    t, lvl = f"{c.threshold:g} point", f"{reference.level:.0%}"
    lo, hi = c.closes_interval
    if math.isnan(lo):
        iv = " (no interval: one run at some model size)"
    else:
        iv = f" ({lvl} interval {human(lo)} to " + (
            f"{human(hi)})" if math.isfinite(hi) else f"beyond {human(c.x[-1])}: {NO_CROSSING})"
        )
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
    else:
        a_lo, a_hi = c.asymptote_interval
        asym = "" if math.isnan(a_lo) else f" ({lvl} interval {a_lo:.2f} to {a_hi:.2f})"
        if math.isnan(lo):
            where = ""
        elif not math.isfinite(lo):  # no bootstrap replicate crosses either
            where = f" ({lvl} interval of where it closes: {NO_CROSSING})"
        else:
            end = f"{human(hi)}" if math.isfinite(hi) else NO_CROSSING
            where = f" ({lvl} interval of where it closes: {human(lo)} parameters to {end})"
        text = (
            f"Extrapolated, the fitted gap stays above {t}: {NO_CROSSING} (up to "
            f"{EXTRAPOLATE:g}x the largest model trained, {human(c.data_max)}){where}, beyond "
            f"the data, not a measurement; fitted asymptotic gap {c.asymptote:.2f} points{asym}."
        )
    few = [f.label for f in (reference, contrastive) if f.n_x < FEW_DISTINCT_X]
    if few:
        text += f" Caution: {' and '.join(few)} rest(s) on fewer than {FEW_DISTINCT_X} model sizes."
    return text
