"""The supervised-vs-SimCLR gap: measured per architecture, and fitted across them.

`gap_table`: for each architecture (dataset, image size, stem, depth, width, depth
multiplier), supervised top-1 (mean and spread over seeds) against each SimCLR recipe
(batch, epochs and any other axis that varies) and against the best of them. Runs that
did not finish are counted in the `*_missing` columns and named in `note`; a side with
no finished run leaves the gap empty: nothing is dropped silently.

Numbers in the gap table are percentage points; `std` is the sample standard deviation
over seeds (NaN with one seed) and `gap_se` the standard error of the difference of the
two means, sqrt(s_sup^2 / n_sup + s^2 / n) (NaN unless both sides have two seeds).
`gap_lo`/`gap_hi` bound the gap at LEVEL with Welch's t (unequal variances,
Welch-Satterthwaite degrees of freedom): the two methods' runs of one seed share the data
but not an initialisation (different networks), so the runs are not paired. With one
seed on either side there is no interval (NaN), and the note says so.

The best recipe of an architecture, SimCLR's and the supervised baseline's alike, is
chosen on `val_top1`: the top-1 on a fixed held-out tenth of the labelled training images
that no method trained on (`DatasetConfig.validation`; SimCLR's linear probe and the
supervised classifier are both scored there), `selected_by` / `sup_selected_by`
"validation"; its TEST top-1 is what the gap uses. Without validation scores (a sweep with
`validation: 0`, older runs) it falls back to the test top-1 and says so ("test":
optimistic); with a single recipe nothing is selected ("only recipe"). `protocol` and
`sup_protocol` say how each top-1 was measured (`results.protocol_label`).

A gap is a finding only against a baseline that converged (scaling.train.convergence,
the results' `converged` column): where a finished supervised run of the architecture
has not, the gap and its interval are left empty and `judgement` says why ("cannot
judge: the supervised baseline has not converged (train top-1 0.35, loss still
falling)"); the note repeats it wherever the table is shown.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd

from scaling.report.intervals import welch_satterthwaite
from scaling.report.results import (
    ARCH_COLUMNS,
    arch_label,
    protocol_label,
    recipe_columns,
    recipe_label,
)
from scaling.sweep.methods import reference_method

REFERENCE = reference_method()  # the baseline every gap is measured against
LEVEL = 0.9  # the gap intervals' confidence, as the fits' bootstrap intervals
ONE_SEED = "one seed: no interval"
DOMAIN_COLUMNS = ("dataset", "image_size", "stem")
GAP_COLUMNS = (
    *ARCH_COLUMNS,
    "encoder_params",
    "method",
    "kind",
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
    "gap_se",
    "gap_lo",
    "gap_hi",
    "gap_dof",
    "selected_by",
    "sup_selected_by",
    "judgement",
    "note",
)
CANNOT_JUDGE = "cannot judge"


def frame(table: Any) -> pd.DataFrame:
    """A results Table (or DataFrame) as a DataFrame."""
    return table if isinstance(table, pd.DataFrame) else table.to_pandas()


def by_values(df: pd.DataFrame, cols: list[str]) -> Iterator[tuple[dict[str, Any], pd.DataFrame]]:
    if not cols:
        if len(df):
            yield {}, df
        return
    for key, sub in df.groupby(cols, dropna=False, sort=True):
        values = key if isinstance(key, tuple) else (key,)
        yield {c: _py(v) for c, v in zip(cols, values, strict=True)}, sub


def _py(value: Any) -> Any:
    """numpy scalars -> Python (JSON, labels); NaN -> None."""
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and math.isnan(value) else value


def select(
    df: pd.DataFrame, domain: Mapping[str, Any], method: str, recipe: Mapping[str, Any]
) -> pd.DataFrame:
    """The rows of one method in one domain with the given recipe values (None: null)."""
    mask = df["method"] == method
    for key, value in {**domain, **recipe}.items():
        mask &= df[key].isna() if value is None else (df[key] == value)
    return df[mask]


def _cells(
    df: pd.DataFrame, cols: list[str]
) -> dict[tuple[Any, ...], dict[tuple[Any, ...], dict[str, Any]]]:
    """arch tuple -> recipe tuple -> cell: mean/std/n of finished runs' top-1 (points)
    and a count and description of the runs that did not finish. One pass over rows."""
    keys = [df[k].tolist() for k in ARCH_COLUMNS]
    recipe = [df[k].tolist() for k in cols]
    state, top1 = df["state"].tolist(), df["top1"].tolist()
    none = [None] * len(df)
    val = df["val_top1"].tolist() if "val_top1" in df else none
    kind = df["error_kind"].tolist() if "error_kind" in df else none
    converged = df["converged"].tolist() if "converged" in df else none
    why = df["convergence"].tolist() if "convergence" in df else none
    eval_cols = ["method", *(c for c in df.columns if c.startswith("eval_"))]
    protocols = [protocol_label(r) for r in df[eval_cols].to_dict("records")]
    acc: dict[tuple[Any, ...], dict[tuple[Any, ...], Any]] = {}
    for i in range(len(df)):
        arch = tuple(_py(k[i]) for k in keys)
        cell = acc.setdefault(arch, {}).setdefault(
            tuple(_py(r[i]) for r in recipe), ([], Counter(), [], [], protocols[i])
        )
        if state[i] == "finished" and _py(top1[i]) is not None:
            cell[0].append(100.0 * float(top1[i]))
            v = _py(val[i])
            cell[2].append(math.nan if v is None else 100.0 * float(v))
            if _py(converged[i]) is False:  # None: no verdict (MLflow-only runs of old)
                cell[3].append(str(_py(why[i]) or "not converged"))
        else:
            cell[1][(str(state[i]), _py(kind[i]))] += 1
    return {a: {r: _summary(*c) for r, c in cells.items()} for a, cells in acc.items()}


def _summary(
    values: list[float],
    others: Counter[tuple[str, Any]],
    val: list[float] | None = None,
    unconverged: list[str] | None = None,
    protocol: str = "",
) -> dict[str, Any]:
    per_state: dict[str, tuple[int, set[str]]] = {}
    for (state, kind), count in others.items():
        n, kinds = per_state.get(state, (0, set()))
        per_state[state] = (n + count, kinds | ({str(kind)} if kind else set()))
    parts = [
        f"{n} {state}" + (f" ({', '.join(sorted(kinds))})" if kinds else "")
        for state, (n, kinds) in sorted(per_state.items())
    ]
    arr = np.asarray(values)
    return {
        "top1": float(arr.mean()) if len(arr) else math.nan,
        "std": float(arr.std(ddof=1)) if len(arr) > 1 else math.nan,
        "n": len(arr),
        "missing": sum(others.values()),
        "missing_text": ", ".join(parts),
        "val": float(np.mean(val)) if val and not np.isnan(val).any() else math.nan,
        "unconverged": len(unconverged or ()),
        "unconverged_text": _unconverged_text(unconverged or [], len(arr)),
        "protocol": protocol,
    }


def _unconverged_text(whys: list[str], finished: int) -> str:
    """ "train top-1 0.35, loss still falling", or "2 of 3 runs: ..." (the first's why)."""
    if not whys:
        return ""
    return whys[0] if len(whys) == finished else f"{len(whys)} of {finished} runs: {whys[0]}"


def _arch_order(arch: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple((v is None, v if v is not None else 0) for v in arch)


def gap_table(table: Any) -> pd.DataFrame:
    """Rows per (architecture, method, recipe) plus one `kind == "best"` row per
    (architecture, method); columns GAP_COLUMNS."""
    df = frame(table)
    methods = sorted(str(m) for m in df["method"].unique())
    recipes = {m: recipe_columns(df[df["method"] == m]) for m in methods}
    cells = {m: _cells(df[df["method"] == m], recipes[m]) for m in methods}
    params = {
        tuple(_py(v) for v in k): p
        for k, p in df.groupby(list(ARCH_COLUMNS), dropna=False)["encoder_params"].first().items()
    }
    rows: list[dict[str, Any]] = []
    for arch in sorted({a for m in methods for a in cells[m]}, key=_arch_order):
        p = _py(params.get(arch))
        base = {
            **dict(zip(ARCH_COLUMNS, arch, strict=True)),
            "encoder_params": None if p is None else int(p),
        }
        ref_cells = cells.get(REFERENCE, {}).get(arch, {})
        ref = _best(ref_cells, recipes.get(REFERENCE, []), finished_only=False)
        ref_by = _selected_by(ref, ref_cells)
        others = [m for m in methods if m != REFERENCE and arch in cells[m]]
        if not others:
            rows.append(
                _row(base, "-", "best", None, ref, note="no SimCLR runs for this architecture")
                | {"sup_selected_by": ref_by}
            )
        for method in others:
            mine = [
                (recipe_label(dict(zip(recipes[method], r, strict=True))), c)
                for r, c in sorted(cells[method][arch].items(), key=lambda rc: _arch_order(rc[0]))
            ]
            rows.extend(
                _row(base, method, "recipe", lc, ref) | {"sup_selected_by": ref_by} for lc in mine
            )
            best = _best(cells[method][arch], recipes[method], finished_only=True)
            if best is not None:
                by = _selected_by(best, cells[method][arch])
                row = _row(base, method, "best", (f"best: {best[0]}", best[1]), ref)
                notes = [row["note"]]
                if by == "test":
                    notes.append(SELECTED_ON_TEST)
                if ref_by == "test":
                    notes.append(f"{REFERENCE} {SELECTED_ON_TEST}")
                row["note"] = "; ".join(filter(None, notes))
                rows.append({**row, "selected_by": by, "sup_selected_by": ref_by})
            else:
                note = f"no finished {method} run ({', '.join(c['missing_text'] for _, c in mine)})"
                rows.append(
                    _row(base, method, "best", None, ref, note=note) | {"sup_selected_by": ref_by}
                )
    return pd.DataFrame(rows, columns=list(GAP_COLUMNS))


SELECTED_ON_TEST = "recipe chosen on the test set (no validation scores): optimistic"


def _selected_by(
    best: tuple[str, dict[str, Any]] | None, cells: Mapping[tuple[Any, ...], dict[str, Any]]
) -> str:
    """How the best recipe was chosen: "validation", "test" (no validation scores:
    optimistic), "only recipe" (nothing to choose) or "" (no finished run)."""
    if best is None or not best[1]["n"]:
        return ""
    if len(cells) == 1:
        return "only recipe"
    return "test" if math.isnan(best[1]["val"]) else "validation"


def _best(
    cells: Mapping[tuple[Any, ...], dict[str, Any]], cols: list[str], finished_only: bool
) -> tuple[str, dict[str, Any]] | None:
    """The recipe with the highest mean validation top-1 (test top-1 only when some
    finished recipe has no validation score, which `_selected_by` then says); ties on
    validation go to the first recipe in order, never to the test set. With
    finished_only False, a cell without finished runs when no other exists."""
    labelled = [(recipe_label(dict(zip(cols, r, strict=True))), c) for r, c in cells.items()]
    finished = [lc for lc in labelled if lc[1]["n"]]
    if finished:
        by_val = all(not math.isnan(c["val"]) for _, c in finished)
        return max(finished, key=lambda lc: lc[1]["val"] if by_val else lc[1]["top1"])
    return None if finished_only or not labelled else labelled[0]


def _row(
    base: Mapping[str, Any],
    method: str,
    kind: str,
    cell: tuple[str, dict[str, Any]] | None,
    ref: tuple[str, dict[str, Any]] | None,
    note: str = "",
) -> dict[str, Any]:
    nan = math.nan
    empty = {
        "top1": nan,
        "std": nan,
        "n": 0,
        "missing": 0,
        "missing_text": "",
        "unconverged": 0,
        "protocol": "",
    }
    label, c = cell if cell else ("-", empty)
    r_label, r = ref if ref else ("-", empty)
    notes = [note] if note else []
    judgement = ""
    if r["n"] and r["unconverged"]:
        judgement = (
            f"{CANNOT_JUDGE}: the {REFERENCE} baseline has not converged ({r['unconverged_text']})"
        )
        notes.insert(0, judgement)
    if cell and c["n"] and c["unconverged"]:
        notes.append(f"{method} not converged ({c['unconverged_text']})")
    if ref is None:
        notes.append("no supervised runs for this architecture")
    elif not r["n"]:
        notes.append(f"no finished supervised run ({r['missing_text']})")
    elif r["missing"]:
        notes.append(f"supervised: {r['missing_text']}")
    if cell and c["missing"]:
        notes.append(f"{method}: {c['missing_text']}")
    se, lo, hi, dof = welch(r, c)
    gap = r["top1"] - c["top1"]
    if judgement:  # never a finding: the numbers are about the baseline's schedule
        gap = se = lo = hi = dof = nan
    elif (r["n"] == 1 or c["n"] == 1) and r["n"] and c["n"]:
        notes.append(ONE_SEED)
    return {
        **base,
        "method": method,
        "kind": kind,
        "recipe": label,
        "protocol": c["protocol"],
        "top1": c["top1"],
        "std": c["std"],
        "n": c["n"],
        "missing": c["missing"],
        "sup_recipe": r_label,
        "sup_protocol": r["protocol"],
        "sup_top1": r["top1"],
        "sup_std": r["std"],
        "sup_n": r["n"],
        "sup_missing": r["missing"],
        "gap": gap,
        "gap_se": se,
        "gap_lo": lo,
        "gap_hi": hi,
        "gap_dof": dof,
        "selected_by": "",
        "sup_selected_by": "",
        "judgement": judgement,
        "note": "; ".join(notes),
    }


def welch(a: Mapping[str, Any], b: Mapping[str, Any], level: float = LEVEL) -> tuple[float, ...]:
    """(se, lo, hi, dof) of mean(a) - mean(b) by Welch's t; NaN unless both have two runs."""
    if a["n"] < 2 or b["n"] < 2:
        return math.nan, math.nan, math.nan, math.nan
    parts = [(a["std"] ** 2 / a["n"], a["n"] - 1), (b["std"] ** 2 / b["n"], b["n"] - 1)]
    return welch_satterthwaite(a["top1"] - b["top1"], parts, level)


#: unfinished runs, most in need of attention first
MISSING_ORDER = ("failed", "running", "resumable", "pending")


def missing_runs(table: Any) -> pd.DataFrame:
    """Every run that has not finished, with why (state, error kind and message)."""
    df = frame(table)
    cols = [
        "run_id",
        "method",
        "state",
        "error_kind",
        "error_message",
        *ARCH_COLUMNS,
        "batch_size",
        "epochs",
        "seed",
        "epochs_done",
    ]
    out = df[df["state"] != "finished"].reindex(columns=cols)
    order = {state: i for i, state in enumerate(MISSING_ORDER)}
    return out.sort_values(
        ["state", "method", "run_id"], key=lambda s: s.map(order) if s.name == "state" else s
    )


def display_table(gap_df: pd.DataFrame) -> pd.DataFrame:
    """The best recipe of each method per architecture against the reference, as display
    strings (what `scaling report` prints and the notebooks show): architecture,
    parameters, the reference's and the method's top-1 (mean ± std over seeds, runs) and
    how each was measured, the gap and its interval, notes. One row per `kind == "best"`
    row, same index."""
    best = gap_df[gap_df["kind"] == "best"]
    rows = [
        {
            "architecture": " ".join(
                (r.dataset, arch_label(r.depth, r.width, r.depth_multiplier), r.stem)
            ),
            "params": "-" if _nan(r.encoder_params) else f"{r.encoder_params / 1e6:.2f}M",
            REFERENCE: _pm(r.sup_top1, r.sup_std),
            f"{REFERENCE} n": str(r.sup_n),
            f"{REFERENCE} scored by": r.sup_protocol or "-",
            "best recipe": f"{r.method}: {r.recipe.removeprefix('best: ')}",
            "top-1": _pm(r.top1, r.std),
            "scored by": r.protocol or "-",
            "n": str(r.n),
            "gap": CANNOT_JUDGE if unjudged(r) else "-" if _nan(r.gap) else f"{r.gap:.2f}",
            f"{LEVEL:.0%} interval": "-" if _nan(r.gap_lo) else f"{r.gap_lo:.2f} to {r.gap_hi:.2f}",
            "note": r.note,
        }
        for r in best.itertuples(index=False)
    ]
    return pd.DataFrame(rows, index=best.index)


def unjudged(row: Any) -> bool:
    """Whether a gap table row (a namedtuple or Series) says its gap cannot be judged
    (its `judgement`; a gaps.csv read back gives NaN for the empty ones)."""
    text = getattr(row, "judgement", "")
    return isinstance(text, str) and text.startswith(CANNOT_JUDGE)


def _nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _pm(mean: float, spread: float) -> str:
    """ "91.00 ± 1.41", "91.00" without a spread, "-" without a value."""
    if _nan(mean):
        return "-"
    return f"{mean:.2f}" + ("" if _nan(spread) else f" ± {spread:.2f}")
