from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from scaling.report import gaps, laws, results
from scaling.report import html as report
from scaling.report.results import to_table

PNG = b"\x89PNG\r\n\x1a\n"


def synthetic(widths: list[float], seeds: int = 2) -> Any:
    """SimCLR (2 batches x 2 epoch counts) and supervised, laws with 1% noise; one OOM
    (with HTML in its message, to check escaping) and one pending run."""
    rng, rows = np.random.default_rng(0), []
    for w in widths:
        n = int(1e6 * w * w)
        for s in range(seeds):
            settings = [("supervised", 1024, 90, 0.05 + 3.0 * n**-0.25)]
            settings += [
                ("simclr", b, e, 0.06 + 40.0 * n**-0.35 * (100 / e) ** 0.2 * (256 / b) ** 0.05)
                for b in (256, 1024)
                for e in (100, 400)
            ]
            for method, batch, epochs, err in settings:
                rows.append(
                    {
                        "run_id": f"r{len(rows):04d}",
                        "sweep": "synthetic",
                        "method": method,
                        "dataset": "cifar10",
                        "image_size": 32,
                        "stem": "cifar",
                        "depth": 18,
                        "width": w,
                        "depth_multiplier": 1.0,
                        "seed": s,
                        "batch_size": batch,
                        "epochs": epochs,
                        "encoder_params": n,
                        "state": "finished",
                        "top1": 1 - err * float(np.exp(rng.normal(0, 0.01))),
                        "train_flops": n * 100.0 * 50_000 * epochs,
                    }
                )
    rows[1].update(
        state="failed", top1=None, error_kind="oom", error_message="<script>alert(1)</script> OOM"
    )
    rows[2].update(state="pending", top1=None)
    return to_table(
        rows, {"scaling.sweep": "synthetic", "scaling.orphans": json.dumps(["deadbeef0000"])}
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    table = synthetic([0.25, 0.5, 1.0, 2.0, 4.0])
    out = tmp_path_factory.mktemp("report") / "out dir"
    return table, report.build_report(None, table, out, n_boot=100)


def test_report_writes_every_file(built) -> None:
    table, html_path = built
    out = html_path.parent
    for name in report.FILES:
        assert (out / name).stat().st_size > 0, name
    for stem in ("fig7_params", "fig9_epochs", "gap_params", "heatmap_batch_epochs", "compute"):
        assert (out / "figures" / f"{stem}.png").read_bytes().startswith(PNG)
        assert b"<svg" in (out / "figures" / f"{stem}.svg").read_bytes()[:500]
    assert results.load(out).equals(table)
    csv = pd.read_csv(out / "gaps.csv")
    assert len(csv) == len(gaps.gap_table(table)) and list(csv.columns) == list(gaps.GAP_COLUMNS)


def test_html_is_self_contained_with_inline_images(built) -> None:
    _, html_path = built
    page = html_path.read_text()
    sources = re.findall(r'<img[^>]*src="([^"]*)"', page)
    assert len(sources) == 5
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG)
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; OOM" in page
    assert not re.search(r'(src|href)="(https?:)?//', page)
    for text in (
        "Does the gap close?",
        "Measured (best SimCLR recipe per size",
        "Gap table",
        "Fits",
        "Missing or failed runs (2)",
        "1 failed, 1 pending",
        "deadbeef0000",
    ):
        assert text in page, text


def test_fits_json_is_strict_json_with_statements(built) -> None:
    _, html_path = built

    def no_constants(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    fits = json.loads((html_path.parent / "fits.json").read_text(), parse_constant=no_constants)
    assert {f["status"] for f in fits["vs_params"]} == {"ok"}
    assert len(fits["vs_params"]) == 5 and len(fits["vs_compute"]) == 2
    head = [g for g in fits["gaps"] if g["headline"]]
    assert len(head) == 1 and "fitted gap" in head[0]["statement"]
    ref = next(f for f in fits["vs_params"] if f["role"] == "reference")
    assert ref["params"]["alpha"] == pytest.approx(0.25, abs=0.05)
    assert ref["intervals"]["alpha"][0] < ref["params"]["alpha"] < ref["intervals"]["alpha"][1]


def test_three_model_sizes_report_says_too_few_and_draws_no_curve(tmp_path: Path) -> None:
    html_path = report.build_report(None, synthetic([0.25, 0.5, 1.0], seeds=1), tmp_path, n_boot=20)
    page = html_path.read_text()
    assert "needs at least 4" in page and "No gap curve" in page
    for stem in ("fig7_params", "gap_params"):  # measured points, no fitted curve
        assert (tmp_path / "figures" / f"{stem}.png").exists()
    fits = json.loads((tmp_path / "fits.json").read_text())
    assert all("params" not in f for f in fits["vs_params"])


def test_paper_points_overlay_only_where_the_data_set_may_be_imagenet(tmp_path: Path) -> None:
    from scaling.report import figures

    table = synthetic([0.25, 0.5, 1.0, 2.0], seeds=1)
    for dataset, expected in (("cifar10", False), ("imagefolder", True)):
        df = gaps.frame(table).assign(dataset=dataset)
        fits = laws.fit_sweep(df, n_boot=10, n_boot_other=10)
        paths = figures.fig7(df, fits, tmp_path / dataset)
        svg = next(p for p in paths if p.suffix == ".svg").read_text()
        assert ("Chen et al. 2020, ImageNet" in svg) is expected
        assert "encoder parameters" in svg


def test_an_unconverged_baseline_is_cannot_judge_in_the_html(tmp_path: Path) -> None:
    df = gaps.frame(synthetic([0.25, 0.5, 1.0, 2.0], seeds=1))
    df["converged"] = True
    df["convergence"] = "train top-1 0.99, converged"
    sup = (df["method"] == "supervised") & (df["width"] == 2.0)
    df.loc[sup, ["converged", "convergence"]] = [False, "train top-1 0.35, loss still falling"]
    page = report.build_report(None, to_table(df.to_dict("records")), tmp_path, n_boot=20)
    text = page.read_text()
    why = "cannot judge: the supervised baseline has not converged (train top-1 0.35, loss still falling)"
    assert why in text and '<td class="">cannot judge</td>' in text
    assert "Not judged: the supervised baseline has not converged at R18 2x" in text
    assert "No fitted curve is stated" in text


#: a number the report must never print: inf, nan, NaN, Infinity as words
NOT_A_NUMBER = re.compile(r"(?<![\w.])-?(inf|nan|NaN|Inf|Infinity)(?![\w])")


def _text_of(page: str) -> str:
    return re.sub(r'src="data:[^"]*"', "", page)  # the inline PNGs are base64, not text


def test_figures_the_data_cannot_fill_are_left_out_with_one_line_why(tmp_path: Path) -> None:
    """The quickstart's shape: one batch size and one epoch count. Fig. 9 and the heatmap
    would be empty panels and one-cell maps: they are not drawn, and the report says why."""
    df = gaps.frame(synthetic([0.25, 0.5, 1.0, 2.0], seeds=2))
    df = df[(df["batch_size"] == 1024) & (df["epochs"].isin([90, 400]))]
    page = report.build_report(None, to_table(df.to_dict("records")), tmp_path, n_boot=20)
    drawn = {p.stem for p in (tmp_path / "figures").glob("*.png")}
    assert drawn == {"fig7_params", "gap_params", "compute"}, drawn
    text = page.read_text()
    assert "SimCLR top-1 vs epochs (Fig. 9) is not drawn: it needs at least 2 epoch counts" in text
    assert "1 epoch count (400)" in text
    assert "SimCLR top-1 over batch x epochs is not drawn" in text
    omitted = json.loads((tmp_path / "fits.json").read_text())["figures_omitted"]
    assert set(omitted) == {"fig9", "heatmap"}


def test_one_model_size_draws_no_curve_figure_and_prints_no_inf_or_nan(tmp_path: Path) -> None:
    df = gaps.frame(synthetic([0.5], seeds=1))
    page = report.build_report(None, to_table(df.to_dict("records")), tmp_path, n_boot=20)
    drawn = {p.stem for p in (tmp_path / "figures").glob("*.png")}
    assert "fig7_params" not in drawn and "gap_params" not in drawn, drawn
    text = _text_of(page.read_text())
    assert "Top-1 vs parameters (Fig. 7) is not drawn" in text
    assert not NOT_A_NUMBER.search(text), NOT_A_NUMBER.search(text)


def test_a_gap_that_never_closes_says_so_in_words_not_inf(tmp_path: Path) -> None:
    """A law whose gap stays far above the threshold: it "stays above" the threshold as far
    as the fit reaches (10x the largest model), in fits.json, the HTML and what `scaling
    report` prints; never inf or nan."""
    from rich.console import Console

    from scaling.cli.report import print_answer, print_gaps

    df = gaps.frame(synthetic([0.25, 0.5, 1.0, 2.0, 4.0], seeds=2))
    simclr = df["method"] == "simclr"
    df.loc[simclr, "top1"] = df.loc[simclr, "top1"] - 0.2  # a 20-point gap at every size
    page = report.build_report(None, to_table(df.to_dict("records")), tmp_path, n_boot=100)
    fits = json.loads((tmp_path / "fits.json").read_text())
    statements = " ".join(g["statement"] for g in fits["gaps"])
    assert "the fitted gap stays above 1 point up to 10x the largest model trained" in statements
    console = Console(record=True, width=200)
    print_gaps(console, gaps.gap_table(df), "s")
    print_answer(console, tmp_path / "fits.json")
    for text in (statements, _text_of(page.read_text()), console.export_text()):
        assert not NOT_A_NUMBER.search(text), NOT_A_NUMBER.search(text)
