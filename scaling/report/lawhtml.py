"""The report's sections on its scaling laws: the fits and their forms, the back-tests,
the joint law over size and training length, and the gap at equal compute.

Each section says what its numbers rest on: which form was chosen and why (held-out
error), what the law predicted for the size it did not see and whether its interval
covered the measurement, why an extrapolation or an interval is withheld, and that the
joint law's frontier is fitted, not measured. `scaling.report.html` places them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from scaling.report.backtest import BACKTEST_LEVEL, level_text
from scaling.report.calibration import Design
from scaling.report.fit import MIN_DOF, REACH
from scaling.report.html import _e, html_table
from scaling.report.laws import FitSet
from scaling.report.numbers import human
from scaling.report.results import recipe_label

COVERAGE = (
    "Intervals are percentiles of a parametric bootstrap: each replicate is a data set "
    "simulated from the fitted law at the same runs (every seed its own noise, the noise "
    "level drawn from its own uncertainty) and refitted. On data drawn from known laws over "
    "designs like this one ({example}, 4-8 sizes, 1-5 seeds, 0.5-3 points of noise), a "
    "nominal 90% covered the truth at the largest size and at {reach:g}x it in about 85-95% "
    "of data sets (BENCHMARKS.md, 'Interval coverage'); with fewer than {dof} residual "
    "degrees of freedom the noise level is too poorly known for a calibrated interval, and "
    "none is drawn."
)


def sections(fits: FitSet) -> str:
    return "\n".join(
        [fits_section(fits), backtest_section(fits), joint_section(fits), frontier_section(fits)]
    )


def _value(key: str, v: float) -> str:
    """A parameter as shown: an error floor at its bound (1e-8) is 0."""
    return "0" if key == "E" and v <= 1.0001e-8 else f"{v:.4g}"


def _param(point: Mapping[str, float], intervals: Mapping[str, Any], key: str) -> str:
    if key not in point:
        return "-"
    if key == "E" and key in intervals and intervals[key] is None:
        return f"{_value(key, point[key])} (not measurable)"
    if intervals.get(key) is None:
        return _value(key, point[key])
    lo, hi = intervals[key]
    # A no-break space inside the brackets: a narrow cell wraps before the interval only.
    return f"{_value(key, point[key])} [{_value(key, lo)},\u00a0{_value(key, hi)}]"


def _backtest_word(d: Mapping[str, Any]) -> str:
    tests = d.get("backtests") or {}
    mine = tests.get(d.get("form", ""))
    if not mine:
        return "none"
    return "passed" if mine["passed"] else "FAILED"


def fits_section(fits: FitSet) -> str:
    rows = []
    for f in [*fits.params, *fits.compute]:
        d = f.fit.to_dict()
        p, iv = d.get("params", {}), d.get("intervals", {})
        notes = [d["message"]] if d["message"] else []
        if d.get("extrapolation_withheld"):
            notes.append("extrapolation withheld: " + d["extrapolation_withheld"])
        rows.append(
            {
                "fit": d["label"],
                "x": d["x"],
                "role": f.role,
                "form": d.get("form", "-"),
                "runs": d["n_runs"],
                "sizes": d["n_distinct_x"],
                **{k: _param(p, iv, k) for k in ("E", "A", "alpha")},
                "back-test": _backtest_word(d) if f.fit.ok else "-",
                "notes": "; ".join(notes + d["notes"]),
            }
        )
    level = f"{fits.params[0].fit.level:.0%}" if fits.params else "90%"
    cols = ["fit", "x", "role", "form", "runs", "sizes", "E", "A", "alpha", "back-test", "notes"]
    frame = pd.DataFrame(rows, columns=cols)
    choices = "".join(
        f"<li>{_e(f.fit.label)}: {_e(f.fit.choice)}</li>"
        for f in [*fits.params, *fits.compute]
        if f.fit.ok and f.role
    )
    statements = "".join(
        f"<li>{_e(recipe_label(g.recipe))}: {_e(g.statement)}</li>" for g in fits.gaps
    )
    example = Design(5, 3, 1.0, True)
    return (
        '<h2 id="fits">Fits</h2>'
        "<p>err = 1 - top-1, fitted in three forms (saturating E + A "
        "x<sup>-alpha</sup>, pure A x<sup>-alpha</sup>, and a broken power law where there "
        "are 7 or more sizes) with a Huber loss on log residuals; the curve is the form whose "
        "back-test (fitted without the largest size, predicting it) erred least among those "
        "that passed, and the band pools the replicates of every form that passed. "
        f"Brackets: {level} intervals of the chosen form. "
        + _e(COVERAGE.format(example=example, reach=REACH, dof=MIN_DOF))
        + " A fit needs at least 4 distinct model sizes; a back-test needs 5.</p>"
        + html_table(frame, frame.columns, ("fit", "x", "role", "form", "back-test", "notes"))
        + (f"<h3>Choice of form</h3><ul>{choices}</ul>" if choices else "")
        + (f"<h3>Gap curves</h3><ul>{statements}</ul>" if statements else "")
    )


def backtest_section(fits: FitSet) -> str:
    rows = []
    for f in [*fits.params, *fits.compute]:
        for name, t in f.fit.backtests.items():
            for i, x in enumerate(t.held):
                rows.append(
                    {
                        "law": f.fit.label,
                        "form": str(name) + (" (chosen)" if name == f.fit.form else ""),
                        "held out": f"{human(float(x))} {f.fit.x_name}",
                        "runs": int(t.runs[i]),
                        "predicted": f"{100 * t.predicted[i]:.2f}",
                        "interval": f"{100 * t.lo[i]:.2f} to {100 * t.hi[i]:.2f}",
                        "measured": f"{100 * t.measured[i]:.2f}",
                        "covered": "yes" if t.covered[i] else "NO",
                    }
                )
    for j in fits.joint:
        t = j.law.backtest
        if t is None:
            continue
        for i, where in enumerate(t.where):
            rows.append(
                {
                    "law": f"{j.law.label}, joint",
                    "form": "joint",
                    "held out": where,
                    "runs": int(t.runs[i]),
                    "predicted": f"{100 * t.predicted[i]:.2f}",
                    "interval": f"{100 * t.lo[i]:.2f} to {100 * t.hi[i]:.2f}",
                    "measured": f"{100 * t.measured[i]:.2f}",
                    "covered": "yes" if t.covered[i] else "NO",
                }
            )
    if not rows:
        return (
            '<h2 id="back-tests">Back-tests</h2>'
            "<p>None: a back-test fits a law without the largest size and "
            "predicts it, which needs 5 or more sizes (a joint law: 3 sizes).</p>"
        )
    withheld = [
        f"<li>{_e(f.fit.label)}: {_e(f.fit.withheld)}</li>"
        for f in [*fits.params, *fits.compute]
        if f.fit.withheld
    ] + [f"<li>{_e(j.law.label)}: {_e(j.law.withheld)}</li>" for j in fits.joint if j.law.withheld]
    frame = pd.DataFrame(rows)
    return (
        '<h2 id="back-tests">Back-tests</h2>'
        "<p>Each law refitted without its largest size (the largest two "
        "from 7 sizes; a joint law without its largest size at every training length), "
        "predicting the held-out mean error over seeds (percent). Interval: the "
        f"{level_text(BACKTEST_LEVEL)} prediction interval of that mean (the fit's band plus "
        "the seeds' noise), the held-out points sharing that level equally, so that a "
        f"correct law fails at most {level_text(1 - BACKTEST_LEVEL)} of the time. A law "
        "whose interval misses a measurement failed: its extrapolation is withheld. The "
        "form chosen is the one that erred least among those that passed; the bands pool "
        "every form that passed.</p>"
        + html_table(frame, frame.columns, ("law", "form", "held out", "covered"))
        + (f"<p>Withheld:</p><ul>{''.join(withheld)}</ul>" if withheld else "")
    )


def joint_section(fits: FitSet) -> str:
    if not fits.joint:
        return ""
    rows = []
    for j in fits.joint:
        d = j.law.to_dict()
        p, iv = d.get("params", {}), d.get("intervals", {})
        bt = d.get("backtest")
        rows.append(
            {
                "law": d["label"],
                "runs": d["n_runs"],
                "cells": d["n_cells"],
                **{k: _param(p, iv, k) for k in ("E", "A", "alpha", "B", "beta")},
                "noise (pt)": "-" if "noise_points" not in d else f"{d['noise_points']:.2f}",
                "back-test": "-" if not bt else ("passed" if bt["passed"] else "FAILED"),
                "notes": "; ".join(([d["message"]] if d["message"] else []) + d["notes"]),
            }
        )
    frame = pd.DataFrame(rows)
    return (
        '<h2 id="joint-law">Joint law over size and training length (fitted)</h2>'
        "<p>Per method, err = E + "
        "A N<sup>-alpha</sup> + B D<sup>-beta</sup> (Hoffmann et al. 2022), N the encoder's "
        "parameters and D the images seen in training, fitted to the recipe with the most "
        "(N, D) cells; brackets: 90% parametric-bootstrap intervals.</p>"
        + html_table(frame, frame.columns, ("law", "back-test", "notes"))
    )


def frontier_section(fits: FitSet) -> str:
    if not fits.frontiers:
        return ""
    parts = [
        '<h2 id="frontier">Compute-optimal frontier and the gap at equal compute (fitted)</h2>'
    ]
    for sf in fits.frontiers:
        f = sf.frontier
        parts.append(f'<p class="answer">{_e(f.statement)}</p>')
        if not f.optima:
            continue
        gaps = {row["budget"]: row for row in f.equal_compute}
        rows = []
        for o in f.optima:
            g = gaps.get(o["budget"], {})
            rows.append(
                {
                    "budget (FLOPs)": human(o["budget"]),
                    "method": o["method"],
                    "N*": "-" if "N" not in o else human(o["N"]) + _iv(o.get("N_interval"), human),
                    "D* (images)": "-" if "D" not in o else human(o["D"]),
                    "epochs": "-" if "epochs" not in o else f"{o['epochs']:.3g}",
                    "error (%)": "-"
                    if "err" not in o
                    else f"{100 * o['err']:.2f}" + _iv(o.get("err_interval"), _pct),
                    "gap at equal compute": _gap(g),
                    "note": _note(o, g),
                }
            )
        parts.append(html_table(pd.DataFrame(rows), list(rows[0]), ("method", "note")))
    return "\n".join(parts)


def _pct(v: float) -> str:
    return f"{100 * v:.2f}"


def _iv(interval: Any, fmt: Any) -> str:
    if not interval:
        return ""
    return f" [{fmt(interval[0])},\u00a0{fmt(interval[1])}]"


def _gap(row: Mapping[str, Any]) -> str:
    if not row or row.get("gap") is None:
        return "-"
    text = f"{row['gap']:.2f}"
    if row.get("lo") is not None:
        text += f" [{row['lo']:.2f},\u00a0{row['hi']:.2f}]"
    return text


def _note(o: Mapping[str, Any], g: Mapping[str, Any]) -> str:
    notes = []
    if o.get("out_of_range"):
        notes.append("outside the sizes and lengths the law rests on")
    if o.get("edge"):
        notes.append("optimum on the edge of the searched range")
    if g.get("extrapolated"):
        notes.append("budget beyond the largest run: extrapolated")
    return "; ".join(notes)
