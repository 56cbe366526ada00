"""The report's law sections on a sweep over widths x epochs: the back-test, the choice
of form, the joint law, the compute-optimal frontier and the gap at equal compute beside
the gap at equal size, labelled as fitted; and those sections as headless Chromium
renders them (their region of a screenshot is not blank, their figures decode)."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scaling.report import html as report
from scaling.report.results import to_table
from tests.test_report_cli import browse, browser, png_size  # noqa: F401 - a fixture

pytestmark = pytest.mark.slow  # a report with every figure: 10-20 s
SECTIONS = ("fits", "back-tests", "joint-law", "frontier")
WIDTHS = (0.03125, 0.0625, 0.125, 0.25, 0.5)
IMAGES_PER_EPOCH = 1408


def widths_by_epochs(seeds: int = 3, noise: float = 0.005) -> Any:
    """A digits-like sweep: both methods over 5 widths x 3 training lengths, joint laws
    with a floor, SimCLR's FLOPs per image 2.1x supervised's."""
    rng, rows = np.random.default_rng(0), []
    settings = (
        ("supervised", (15, 30, 60), 1.0, 0.015, 2.0, 6.0),
        ("simclr", (5, 10, 20), 2.1, 0.03, 3.0, 5.0),
    )
    for w in WIDTHS:
        n = int(4.9e6 * w * w)
        for s in range(seeds):
            for method, epochs, per_image, e, a, b in settings:
                for ep in epochs:
                    d = IMAGES_PER_EPOCH * ep
                    err = e + a * n**-0.35 + b * d**-0.45 + rng.normal(0, noise)
                    rows.append(
                        {
                            "run_id": f"r{len(rows):04d}",
                            "sweep": "widths-epochs",
                            "method": method,
                            "dataset": "digits",
                            "image_size": 8,
                            "stem": "cifar",
                            "depth": 10,
                            "width": w,
                            "depth_multiplier": 1.0,
                            "seed": s,
                            "batch_size": 128,
                            "epochs": ep,
                            "encoder_params": n,
                            "state": "finished",
                            "top1": 1 - err,
                            "val_top1": 1 - err,
                            "images_seen": d,
                            "train_flops": per_image * 6 * n * d,
                        }
                    )
    return to_table(rows, {"scaling.sweep": "widths-epochs"})


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("laws report")
    return report.build_report(None, widths_by_epochs(), out, n_boot=200)


def test_the_report_states_the_back_test_the_joint_law_and_both_gaps(built: Path) -> None:
    page = built.read_text()
    for anchor in SECTIONS:
        assert f'id="{anchor}"' in page, anchor
    for text in (
        "Choice of form",
        "held-out error",
        "prediction interval",
        "Joint law over size and training length (fitted)",
        "Fitted (joint laws, not measured)",
        "gap at equal compute",
        "at equal size",
        "compute-optimal",
    ):
        assert text in page, text
    visible = re.sub(r"<[^>]+>|data:image/png;base64,[^\"]+", " ", page)
    assert not re.search(r"\b(nan|inf)\b", visible, re.IGNORECASE)
    fits = json.loads((built.parent / "fits.json").read_text())
    assert {j["method"] for j in fits["joint"]} == {"simclr", "supervised"}
    assert all(j["backtest"]["passed"] for j in fits["joint"])
    (frontier,) = fits["equal_compute"]
    assert frontier["fitted"] and len(frontier["gap_at_equal_compute"]) == 3
    assert frontier["gap_at_equal_size"]["lo"] < frontier["gap_at_equal_size"]["gap"]
    (answer,) = fits["answers"]
    assert "equal compute" in answer["compute"] and "not measured" in answer["compute"]
    for stem in ("joint_law", "frontier"):
        assert (built.parent / "figures" / f"{stem}.png").stat().st_size > 10_000


PROBE = """<script>
window.addEventListener("load", function () {
  var out = {};
  %s.forEach(function (id) {
    var el = document.getElementById(id);
    out[id] = el ? el.getBoundingClientRect().top + window.scrollY : -1;
  });
  out.height = document.documentElement.scrollHeight;
  out.images = Array.prototype.map.call(document.images, function (i) {
    return {alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight};
  });
  var pre = document.createElement("pre");
  pre.id = "scaling-probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def test_chromium_renders_the_law_sections(browser: str, built: Path, tmp_path: Path) -> None:  # noqa: F811
    from PIL import Image

    page = built.read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("<head>", "<head>" + PROBE % json.dumps(SECTIONS), 1))
    done = browse(browser, probed, tmp_path / "profile-1", "--dump-dom", "--window-size=1280,2000")
    match = re.search(r'<pre id="scaling-probe">(.*?)</pre>', done.stdout, re.S)
    assert match, done.stderr[-2000:]
    probe = json.loads(html.unescape(match.group(1)))
    tops = [probe[s] for s in SECTIONS]
    assert all(t > 0 for t in tops) and tops == sorted(tops), probe
    expected = [
        png_size(base64.b64decode(src))
        for src in re.findall(r'<img[^>]*src="data:image/png;base64,([^"]+)"', page)
    ]
    assert [(i["width"], i["height"]) for i in probe["images"]] == expected
    assert {"joint_law", "frontier"} <= {i["alt"] for i in probe["images"]}
    # the page as it renders, from the fits section to the end
    height = int(probe["height"]) + 10
    shot = tmp_path / "report.png"
    browse(
        browser,
        built,
        tmp_path / "profile-2",
        "--hide-scrollbars",
        f"--window-size=1280,{height}",
        f"--screenshot={shot}",
    )
    image = Image.open(shot).convert("RGB")
    bounds = [*tops, probe["height"]]
    for name, top, bottom in zip(SECTIONS, bounds, bounds[1:], strict=False):
        region = image.crop((0, int(top), image.width, min(int(bottom), image.height)))
        colours = region.getcolors(maxcolors=1 << 20) or []
        dark = sum(n for n, c in colours if max(c) < 128)
        assert len(colours) > 20 and dark > 500, (name, len(colours), dark)
