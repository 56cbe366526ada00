"""The report's account of an adaptive submit (scaling.report.adaptive's state): which
runs were bought in which order, what each step did to the interval, why the loop
stopped, and what the next best run would be."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from typing import Any


def adaptive_section(state: Mapping[str, Any] | None) -> str:
    if not state:
        return ""
    e = html.escape
    rows, spent = [], 0.0
    before = state.get("start")
    rows.append(
        f"<tr><td>0</td><td>(runs finished before the loop)</td><td>-</td><td>0</td>"
        f"<td>{_iv(before)}</td><td>-</td></tr>"
    )
    for i, step in enumerate(state.get("steps", []), start=1):
        spent += float(step["hours"])
        after = step.get("interval")
        labels = "<br>".join(
            f"{e(lab)} ({e(why)})"
            for lab, why in zip(step.get("labels", []), step.get("why", []), strict=False)
        )
        rows.append(
            f"<tr><td>{i}</td><td class='l'>{labels}</td><td>{step['hours']:.3g}</td>"
            f"<td>{spent:.3g}</td><td>{_iv(after)}</td><td>{_change(before, after)}</td></tr>"
        )
        before = after if after else before
    stop = state.get("stop") or "running (or killed: submit --adaptive again resumes it)"
    nxt = state.get("next")
    nxt_text = (
        f"The next best run would be {e(nxt['run'])}: {nxt['hours']:.3g} device-hours, "
        f"{e(nxt['why'])}."
        if nxt
        else "No run would narrow the interval further."
    )
    return (
        "<h2 id='adaptive'>Adaptive submit: what was bought and what it did</h2>"
        f"<p>Question: {e(str(state.get('question', '')))}; asked: an interval narrower than "
        f"{state.get('target', math.nan):g}, within {state.get('budget', math.nan):g} "
        f"device-hours (the plan's cost of each run). Stopped: {e(str(stop))}, "
        f"{float(state.get('spent', 0)):.3g} device-hours spent. {nxt_text}</p>"
        "<table><tr><th>step</th><th>runs bought (why)</th><th>device-h</th><th>spent</th>"
        "<th>interval after (90%)</th><th>width change</th></tr>" + "".join(rows) + "</table>"
    )


def _iv(interval: Any) -> str:
    if not interval:
        return "none yet"
    lo, hi = interval
    return f"{lo:.3g} to {hi:.3g} (width {hi - lo:.3g})"


def _change(before: Any, after: Any) -> str:
    if not before or not after:
        return "-"
    w0, w1 = before[1] - before[0], after[1] - after[0]
    return f"{100 * (w1 - w0) / w0:+.0f}%"
