"""`scaling report`: one folder with everything a sweep says, and one HTML page for it.

`build_report(sweep, table, out_dir)` writes

- results.parquet: the results table (schema: scaling.report.results),
- gaps.csv: the gap table (scaling.report.gaps.gap_table),
- fits.json: every power-law fit and gap curve with intervals and plain statements,
- figures/*.png and *.svg (scaling.report.figures),
- report.html: self-contained (figures inline as base64 PNG, no scripts, no external
  files needed): the answer first, then figures, tables, fits, what is missing or
  failed, and the sweep spec.

The CLI prints `gaps.display_table(gaps.gap_table(table))` and logs the folder to a
sweep-level MLflow run; both live with the CLI and tracking, not here.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import logging
import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from scaling.report import checks, figures, gaps, headline, labels, lawfigures, results
from scaling.report.gaps import REFERENCE
from scaling.report.laws import FitSet, fit_sweep
from scaling.rundir import atomic_write_bytes
from scaling.sweep.spec import Sweep

log = logging.getLogger(__name__)
FILES = ("results.parquet", "gaps.csv", "fits.json", "report.html")
MAX_LISTED = 500  # missing/failed runs listed in the HTML (all of them are in the parquet)
CAPTIONS = {
    "fig7": "Top-1 vs encoder parameters (the paper's Fig. 7): means over seeds with +-1 std; "
    "curves are the fitted laws (each in the form its back-test chose) with their 90% bands.",
    "gap": "Supervised minus SimCLR top-1 in points. Shaded: the range of models trained; "
    "dashed: the fitted gap extrapolated beyond it.",
    "fig9": "SimCLR linear evaluation vs training epochs, one line per batch size "
    "(the paper's Fig. 9).",
    "heatmap": "SimCLR top-1 over batch size x epochs.",
    "compute": "Top-1 vs training compute; curves fitted to the compute frontier.",
    **lawfigures.CAPTIONS,
    "labels": "Improvement over supervised training on the same labels (points, > 0 where "
    "SimCLR wins) vs encoder parameters, one line per label fraction, with 90% Welch "
    "intervals (SimCLRv2's Fig. 1).",
}


def build_report(
    sweep: Sweep | None,
    table: Any,
    out_dir: str | Path,
    *,
    n_boot: int = 1000,
    level: float = 0.9,
    seed: int = 0,
    threshold: float = 1.0,
    story: Mapping[str, Any] | None = None,
) -> Path:
    """Write the report folder for `table` (scaling.report.results.collect); returns
    report.html. `story`: an adaptive submit's state (scaling.report.adaptive)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clock = _Clock()
    results.write(table, out / "results.parquet")
    every = gaps.frame(table)
    gap_all = gaps.gap_table(every)  # per label fraction
    atomic_write_bytes(out / "gaps.csv", gap_all.to_csv(index=False).encode())
    # The full-label study (laws, headline, figures) reads the rows with every label.
    df, gap_df = gaps.every_label(every), gap_all[gap_all["label_fraction"] == 1.0]
    clock.lap("table")
    options = {"n_boot": n_boot, "level": level, "seed": seed, "threshold": threshold}
    fits = fit_sweep(df, **options)
    said = headline.answers(gap_df, fits, threshold)
    efficiency = labels.answers(gap_all)  # measured first: the advantage per fraction
    per_fraction = labels.fraction_fits(every, **options)
    validity = checks.validity_warnings(df, gap_df)
    clock.lap("fits")
    omitted: dict[str, str] = {}
    figs = {
        **figures.make_all(df, gap_df, fits, out / "figures", omitted),
        **lawfigures.make_all(df, fits, out / "figures"),
    }
    efficiency_figure = labels.figure(every, gap_all, out / "figures")
    if efficiency_figure:
        figs["labels"] = efficiency_figure
    clock.lap("figures")
    summary = {
        **fits.to_dict(),
        "answers": [a.to_dict() for a in said],
        "label_efficiency": efficiency,
        "label_fraction_fits": {f"{f:g}": fs.to_dict() for f, fs in per_fraction.items()},
        "validity": validity,
        "figures_omitted": omitted,
    }
    atomic_write_bytes(
        out / "fits.json", (json.dumps(_jsonable(summary), indent=1) + "\n").encode()
    )
    meta = getattr(getattr(table, "schema", None), "metadata", None) or {}
    orphans = json.loads(meta.get(b"scaling.orphans", b"[]"))
    page = render_html(
        sweep,
        df,
        gap_df,
        gaps.missing_runs(every),
        fits,
        figs,
        out,
        orphans,
        said,
        validity,
        omitted,
        labels.section(gap_all, efficiency),
        story,
    )
    atomic_write_bytes(out / "report.html", page.encode())
    clock.lap("html")
    log.info("report %s: %s", out, clock)
    return out / "report.html"


class _Clock:
    """Seconds per stage, logged at INFO (benchmarks/bench_report.py prints them)."""

    def __init__(self) -> None:
        self.last, self.laps = time.perf_counter(), {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name], self.last = now - self.last, now

    def __str__(self) -> str:
        return ", ".join(f"{k} {v:.2f} s" for k, v in self.laps.items())


def _jsonable(value: Any) -> Any:
    """NaN and inf -> null (JSON has neither), numpy scalars -> Python."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and not math.isfinite(value) else value


# ----------------------------------------------------------------------------- html

CSS = """body{font:14px/1.45 system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right;white-space:nowrap}
th{background:#f3f3f3}td.l,th.l{text-align:left}td.w{white-space:normal;text-align:left}td.w div{min-width:18em}td.s{white-space:normal}
.scroll{overflow-x:auto;max-width:100%}figure{margin:1.5em 0}img{max-width:100%}
figcaption{color:#555;font-size:12px}.answer{background:#f6faf6;border-left:4px solid #2a2;padding:.5em 1em}
.warn{background:#fff6f0;border-left:4px solid #d60;padding:.5em 1em}pre{background:#f6f6f6;padding:1em;overflow:auto}"""
#: Free-text columns: wrapped, at least 18em wide; SOFT ones may wrap at their spaces;
#: every other cell stays on one line (a table too wide scrolls sideways).
WRAP = {"note", "notes", "error_message"}
SOFT = {"fit", "E", "A", "alpha"}
#: Grid values shown exactly (a width of 0.125 must not read 0.12).
EXACT = {"width", "depth_multiplier", "base_lr", "weight_decay", "temperature"}


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 2, column: str = "") -> str:
    value = value.item() if hasattr(value, "item") else value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if column in EXACT and isinstance(value, (int, float)):
        return f"{value:g}"
    if column == "encoder_params" and isinstance(value, (int, float)):
        return f"{int(value):,}"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def html_table(frame: pd.DataFrame, columns: Iterable[str], left: Iterable[str] = ()) -> str:
    """A table that keeps numbers on one line and scrolls sideways when it is too wide."""
    cols, left = [c for c in columns if c in frame.columns], set(left)
    css = {
        c: "w" if c in WRAP else " ".join(k for k, on in (("s", c in SOFT), ("l", c in left)) if on)
        for c in cols
    }
    head = "".join(
        f'<th class="{"l" if c in left or c in WRAP else ""}">{_e(c)}</th>' for c in cols
    )
    body = "".join(
        "<tr>"
        + "".join(_cell(css[c], _num(v, column=c)) for c, v in zip(cols, row, strict=True))
        + "</tr>"
        for row in frame[cols].itertuples(index=False)
    )
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def render_html(
    sweep: Sweep | None,
    df: pd.DataFrame,
    gap_df: pd.DataFrame,
    missing: pd.DataFrame,
    fits: FitSet,
    figs: Mapping[str, list[Path]],
    out: Path,
    orphans: list[str] | None = None,
    said: list[headline.Answer] | None = None,
    validity: list[str] | None = None,
    omitted: Mapping[str, str] | None = None,
    efficiency: str = "",
    story: Mapping[str, Any] | None = None,
) -> str:
    name = (
        sweep.name if sweep else str(df["sweep"].iloc[0]) if len(df) and "sweep" in df else "sweep"
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{_e(name)}: scaling report</title><style>{CSS}</style></head><body>"
        f"<h1>{_e(name)}</h1>"
    ]
    if sweep and sweep.description:
        parts.append(f"<p>{_e(sweep.description)}</p>")
    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    parts.append(f"<p>Generated {_e(now)}. {_state_counts(df)}</p>")
    parts.append(_answer(said or []))
    parts.append(efficiency)  # the label-efficiency answer and gaps per fraction
    parts.append(_validity(validity or []))
    parts.append(_figures(figs, out, omitted or {}))
    cols = [
        "dataset",
        "depth",
        "width",
        "stem",
        "depth_multiplier",
        "encoder_params",
        "method",
        "recipe",
        "protocol",
        "top1",
        "std",
        "n",
        "missing",
        "sup_recipe",
        "sup_protocol",
        "sup_top1",
        "sup_std",
        "sup_n",
        "sup_missing",
        "gap",
        "gap_lo",
        "gap_hi",
        "gap_se",
        "selected_by",
        "sup_selected_by",
        "note",
    ]
    common = _common(
        gap_df,
        (
            "dataset",
            "image_size",
            "stem",
            "depth_multiplier",
            "method",
            "sup_recipe",
            "protocol",
            "sup_protocol",
            "sup_selected_by",
            "missing",
            "sup_missing",
        ),
    )
    cols = [c for c in cols if c not in common]
    parts.append(
        "<h2>Gap table</h2><p>Best recipe per architecture (selected_by, sup_selected_by: "
        "validation, a held-out tenth of the labelled training images no method trained on; "
        "test: optimistic; only recipe: none to choose); protocol, sup_protocol: how each "
        "top-1 was measured; "
        "points; std over seeds; gap_lo to gap_hi: 90% Welch interval of the difference of means (none with one seed); gap_se: "
        "its standard error. All recipes below and in gaps.csv."
        + (" Every row: " + _e(_common_text(common)) + "." if common else "")
        + "</p>"
    )
    left = ("dataset", "stem", "method", "recipe", "protocol", "sup_recipe", "sup_protocol", "note")
    # A gap against a baseline that has not converged is no finding: its cell says so
    # (and the note why), never a number.
    shown = gap_df.astype({"gap": object})
    shown.loc[gap_df.apply(gaps.unjudged, axis=1).astype(bool), "gap"] = gaps.CANNOT_JUDGE
    parts.append(html_table(shown[shown["kind"] == "best"], cols, left))
    parts.append(
        "<details><summary>Every recipe</summary>"
        + html_table(shown[shown["kind"] == "recipe"], cols, left)
        + "</details>"
    )
    from scaling.report import lawhtml  # it renders with this module's tables

    parts.append(lawhtml.sections(fits))
    from scaling.report.storyhtml import adaptive_section

    parts.append(adaptive_section(story))
    parts.append(_missing_section(missing, orphans or []))
    parts.append(_spec_section(sweep))
    parts.append("</body></html>")
    return "\n".join(parts)


def _cell(css: str, text: str) -> str:
    if css == "w" and text != "-":
        return f'<td class="w"><div>{_e(text)}</div></td>'
    return f'<td class="{css}">{_e(text)}</td>'


def _common(frame: pd.DataFrame, columns: Iterable[str]) -> dict[str, Any]:
    """Columns with one value in every row: said once above the table, not in each row."""
    return {
        c: frame[c].iloc[0]
        for c in columns
        if c in frame and len(frame) and frame[c].nunique(dropna=False) == 1
    }


def _common_text(common: Mapping[str, Any]) -> str:
    """{"stem": "cifar", "missing": 0, ...} -> "cifar stem, ..., no unfinished run"."""
    words = {
        "dataset": "dataset {}",
        "image_size": "{} px",
        "stem": "{} stem",
        "depth_multiplier": "depth multiplier {}",
        "method": "method {}",
        "sup_recipe": REFERENCE + " {}",
    }
    parts = [words[k].format(_num(v, column=k)) for k, v in common.items() if k in words]
    for key, side in (("missing", "SimCLR"), ("sup_missing", REFERENCE)):
        if key in common:
            n = int(common[key])
            parts.append(
                f"no unfinished {side} run" if n == 0 else f"{n} unfinished {side} run(s) in each"
            )
    return ", ".join(parts)


def _state_counts(df: pd.DataFrame) -> str:
    counts = df.groupby(["method", "state"]).size()
    per = [
        f"{m}: " + ", ".join(f"{n} {s}" for (mm, s), n in counts.items() if mm == m)
        for m in sorted(df["method"].unique())
    ]
    return _e(f"{len(df)} runs. " + "; ".join(per) + ".")


def _answer(said: list[headline.Answer]) -> str:
    if not said:
        return (
            '<div class="warn"><h2>Does the gap close?</h2><p>No answer yet: the sweep needs '
            "finished supervised and SimCLR runs of the same architectures.</p></div>"
        )
    items = "".join(
        f"<li><b>{_e(a.dataset)}, {_e(a.method)}</b>: {_e(a.measured)}"
        f"<br><i>{_e(a.extrapolation)}</i>"
        + (f"<br><i>{_e(a.compute)}</i>" if a.compute else "")
        + "</li>"
        for a in said
    )
    return f'<div class="answer"><h2>Does the gap close?</h2><ul>{items}</ul></div>'


def _validity(warnings: list[str]) -> str:
    if not warnings:
        return ""
    items = "".join(f"<li>{_e(w)}</li>" for w in warnings)
    return f'<div class="warn"><h2>What limits these numbers</h2><ul>{items}</ul></div>'


def _figures(figs: Mapping[str, list[Path]], out: Path, omitted: Mapping[str, str]) -> str:
    parts = ["<h2>Figures</h2>"]
    parts += [f'<p class="omitted">{_e(why)}</p>' for why in omitted.values()]
    for key, paths in figs.items():
        for png in [p for p in paths if p.suffix == ".png"]:
            data = base64.b64encode(png.read_bytes()).decode()
            svg = png.with_suffix(".svg").relative_to(out).as_posix()
            parts.append(
                f'<figure><img alt="{_e(png.stem)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{_e(CAPTIONS.get(key, ''))} (vector: {_e(svg)})</figcaption></figure>"
            )
    return "\n".join(parts)


def _missing_section(missing: pd.DataFrame, orphans: list[str]) -> str:
    if missing.empty and not orphans:
        return "<h2>Missing or failed runs</h2><p>None: every run finished.</p>"
    text = [f"<h2>Missing or failed runs ({len(missing)})</h2>"]
    if len(missing):
        counts = missing.groupby("state").size()
        common = _common(missing, ("dataset", "image_size", "stem", "depth_multiplier"))
        text.append(
            "<p>" + _e(", ".join(f"{n} {s}" for s, n in counts.items())) + ". They are left out of "
            "means and fits, and counted in the gap table's missing columns."
            + (f" Every row: {_e(_common_text(common))}." if common else "")
            + "</p>"
        )
        cols = [c for c in missing.columns if c not in common]
        text.append(
            html_table(
                missing.head(MAX_LISTED),
                cols,
                ("run_id", "method", "state", "error_kind", "error_message", "dataset", "stem"),
            )
        )
        if len(missing) > MAX_LISTED:
            text.append(f"<p>{len(missing) - MAX_LISTED} more in results.parquet.</p>")
    if orphans:
        text.append(
            f"<p>{len(orphans)} run folder(s) belong to no run of the current spec (an older "
            f"version of the sweep?): {_e(', '.join(orphans[:50]))}</p>"
        )
    return "\n".join(text)


def _spec_section(sweep: Sweep | None) -> str:
    if sweep is None:
        return ""
    try:
        text = Path(sweep.path).read_text()
    except OSError:
        text = json.dumps(
            {"name": sweep.name, "axes": {k: list(v) for k, v in sweep.axes.items()}}, indent=1
        )
    axes = ", ".join(f"{k} = {list(v)}" for k, v in sweep.axes.items()) or "none"
    return (
        f"<h2>Sweep spec</h2><p>{_e(sweep.path)}; {len(sweep.runs)} runs; grid axes: {_e(axes)}</p>"
        f"<pre>{_e(text)}</pre>"
    )
