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
