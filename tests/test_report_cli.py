"""`scaling report` on a tiny REAL sweep: the folder, the terminal, MLflow, the notebooks,
and report.html as a browser renders it.

One session fixture trains the sweep (synthetic data, 16 px, depth 10 at widths 0.125
and 0.25, SimCLR at two batch sizes x two epoch counts and supervised; one SimCLR run is
left untrained, as in a sweep still in progress) with `scaling.run.tracked.run_tracked` into a
temporary workdir mirrored to a SQLite MLflow store, and one more runs the command once.

The browser check: a copy of report.html with a probe script injected into <head> (the
report itself has no scripts, by design) is opened in headless Chromium with
--dump-dom. On `load` the probe writes every <img>'s `complete`, `naturalWidth` and
`naturalHeight`, and every resource error event it caught, into the DOM, which
--dump-dom prints; each image must have decoded at the size of its PNG. Chromium's
console messages go to stderr (`--enable-logging=stderr`, lines with `:CONSOLE`); a
page without scripts must have none. A screenshot of the unmodified page must not be
blank. Without Chromium these tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from scaling.cli.errors import guarded
from scaling.cli.report import report
from scaling.report import html as report_lib
from scaling.report import results
from scaling.report.publish import KIND_TAG, SWEEP_TAG
from scaling.run import tracking
from scaling.sweep.spec import Sweep, load_sweep
from tests.conftest import REPO, write

SWEEP = """\
name: tiny-report
description: Tiny real sweep for the report command's tests.
dataset: {name: synthetic, image_size: 16, size: 128}
seeds: [0]
model: {depth: 10, width: [0.125, 0.25], stem: cifar}
methods:
  simclr:
    batch_size: [32, 64]
    epochs: [1, 2]
    lr_rule: sqrt
    warmup_epochs: 0
    projection_dim: 16
    eval: {epochs: 5}
  supervised:
    batch_size: 32
    epochs: 2
    warmup_epochs: 0
"""
PNG = b"\x89PNG\r\n\x1a\n"
#: the gap figure is not drawn: a 2-epoch supervised baseline has not converged, so no gap
#: can be judged (the report says so where the figure would be)
FIGURES = ("fig7_params", "fig9_epochs", "heatmap_batch_epochs", "compute")


@dataclass(frozen=True)
class Trained:
    root: Path
    sweep_path: Path
    profile: Path
    sweep: Sweep
    workdir: Path
    uri: str
    pending: str  # the run left untrained

    @property
    def sweep_dir(self) -> Path:
        return self.workdir / self.sweep.name


def cli() -> typer.Typer:
    """The command mounted on a local app, as scaling/cli/app.py mounts it."""
    app = typer.Typer(pretty_exceptions_enable=False)

    @app.callback()
    def _root() -> None:
        """scaling (test app)"""

    app.command("report")(guarded(report))
    return app


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli(), ["report", *args])


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    from scaling.run.tracked import run_tracked

    root = tmp_path_factory.mktemp("report cli")  # a space in every path: quoting bugs
    sweep_path = write(root / "tiny.yaml", SWEEP)
    workdir, uri = root / "runs", tracking.sqlite_uri(root / "mlflow.db")
    profile = write(
        root / "cluster.yaml",
        f"workdir: {json.dumps(str(workdir))}\ntracking: {{uri: {json.dumps(uri)}}}\n",
    )
    sweep = load_sweep(sweep_path)
    pending = next(
        s
        for s in sweep.runs
        if s.method == "simclr"
        and s.config["batch_size"] == 64
        and s.config["epochs"] == 2
        and s.model["width"] == 0.25
    )
    for spec in sweep.runs:
        if spec is not pending:
            run_dir = workdir / sweep.name / spec.run_id
            run_tracked(spec, run_dir, None, (uri, tracking.experiment_name(sweep)), threads=1)
    return Trained(root, sweep_path, profile, sweep, workdir, uri, pending.run_id)


@pytest.fixture(scope="session")
def reported(trained: Trained) -> Result:
    """`scaling report` once, into the default folder <workdir>/<sweep>/report."""
    result = invoke(str(trained.sweep_path), "--cluster", str(trained.profile))
    assert result.exit_code == 0, result.output
    return result


def report_runs(uri: str, sweep: Sweep) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(tracking.experiment_name(sweep))
    return client.search_runs([experiment.experiment_id], f"tags.`{KIND_TAG}` = 'report'")


# ----------------------------------------------------------------------------- the command


def test_report_writes_the_folder_from_the_real_runs(trained: Trained, reported: Result) -> None:
    out = trained.sweep_dir / "report"
    for name in report_lib.FILES:
        assert (out / name).stat().st_size > 0, name
    for stem in FIGURES:
        assert (out / "figures" / f"{stem}.png").read_bytes().startswith(PNG), stem
        assert b"<svg" in (out / "figures" / f"{stem}.svg").read_bytes()[:500], stem
    df = results.load(trained.sweep_dir).to_pandas()  # the notebooks' entry point
    assert len(df) == len(trained.sweep.runs) == 10
    assert df.set_index("run_id")["state"].to_dict() == {
        s.run_id: "pending" if s.run_id == trained.pending else "finished"
        for s in trained.sweep.runs
    }
    finished = df[df["state"] == "finished"]
    assert finished["top1"].between(0, 1).all() and finished["train_flops"].gt(0).all()
    assert finished["mlflow_run_id"].notna().all()  # collect() matched every run in MLflow
    page = (out / "report.html").read_text()
    assert len(re.findall(r'<img[^>]*src="data:image/png;base64,', page)) == len(FIGURES)
    assert "Missing or failed runs (1)" in page and trained.pending in page
    # two epochs: the baseline's curve is still falling, so its gaps are not findings
    assert "cannot judge: the supervised baseline has not converged" in page
    assert "The gap vs parameters is not drawn" in page


def test_report_prints_the_gap_table_and_where_the_files_are(
    trained: Trained, reported: Result
) -> None:
    text = reported.stdout
    assert "supervised vs SimCLR top-1" in text
    for arch in ("synthetic R10 0.125x cifar", "synthetic R10 0.25x cifar"):
        assert arch in text, text
    assert "simclr: batch" in text and "cannot judge" in text  # the baseline: 2 epochs
    assert "Cannot judge: the supervised baseline has not converged" in text
    out = (trained.sweep_dir / "report").resolve()
    assert (out / "report.html").as_uri() in text and str(out) in text
    assert "MLflow: sweep-level run" in text


def test_one_sweep_level_mlflow_run_holds_the_report_and_is_reused(
    trained: Trained, reported: Result, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    (first,) = report_runs(trained.uri, trained.sweep)
    run_id = first.info.run_id
    assert first.info.status == "FINISHED" and first.data.tags[SWEEP_TAG] == trained.sweep.name
    assert first.data.metrics == {
        "runs_finished": 9.0,
        "runs_failed": 0.0,
        "runs_running": 0.0,
        "runs_resumable": 0.0,
        "runs_pending": 1.0,
    }
    assert "report.html" in first.data.tags["mlflow.note.content"]
    client = MlflowClient(trained.uri)
    names = {a.path for a in client.list_artifacts(run_id, "report")}
    assert {f"report/{n}" for n in report_lib.FILES} <= names
    pngs = {a.path for a in client.list_artifacts(run_id, "report/figures")}
    assert {f"report/figures/{s}.png" for s in FIGURES} <= pngs
    assert "gaps.json" in {a.path for a in client.list_artifacts(run_id)}  # mlflow.log_table
    # The report run is not a training run: collect/find_runs never see it.
    found = tracking.find_runs(trained.uri, tracking.experiment_name(trained.sweep))
    assert set(found) == {s.run_id for s in trained.sweep.runs} - {trained.pending}
    # Every training run links to its sweep's report run; seeds share one group tag.
    assert all(r["tags"]["scaling.report_run"] == run_id for r in found.values())
    by_seed = {}
    for spec in trained.sweep.runs:
        if spec.run_id in found:
            by_seed.setdefault(spec.group_id(), set()).add(
                found[spec.run_id]["tags"]["scaling.group"]
            )
    assert all(tags == {group} for group, tags in by_seed.items())

    out = tmp_path / "elsewhere 'x'"
    again = invoke(str(trained.sweep_path), "-c", str(trained.profile), "--out", str(out))
    assert again.exit_code == 0, again.output
    assert (out / "report.html").is_file() and run_id in again.stdout
    assert [r.info.run_id for r in report_runs(trained.uri, trained.sweep)] == [run_id]
    local = client.download_artifacts(run_id, "report/report.html", str(tmp_path))
    assert Path(local).read_bytes() == (out / "report.html").read_bytes()  # the latest report


def test_a_store_that_cannot_be_written_warns_and_the_report_is_complete(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    profile = write(
        tmp_path / "down.yaml",
        f"workdir: {json.dumps(str(trained.workdir))}\ntracking: {{uri: 'http://127.0.0.1:9'}}\n",
    )
    out = tmp_path / "report"
    result = invoke(str(trained.sweep_path), "--cluster", str(profile), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "warning: the report was not logged to MLflow at http://127.0.0.1:9" in result.stderr
    assert "MLflow: sweep-level run" not in result.stdout
    df = results.load(out).to_pandas()  # from the run directories alone
    assert (df["state"] == "finished").sum() == 9 and (out / "report.html").is_file()


def test_a_bad_sweep_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.yaml", SWEEP.replace("depth: 10", "depth: 11"))
    result = invoke(str(bad), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and "model.depth" in result.stderr
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- notebooks


@pytest.mark.slow
@pytest.mark.parametrize("name", ["scaling_curves", "gap_analysis"])
def test_notebook_runs_top_to_bottom_on_the_real_results(
    name: str, trained: Trained, reported: Result, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("SCALING_RESULTS", str(trained.sweep_dir))
    monkeypatch.setenv("SCALING_N_BOOT", "100")
    book = nbformat.read(REPO / "analysis" / f"{name}.ipynb", as_version=4)
    assert not any(c.get("outputs") for c in book.cells if c.cell_type == "code")  # stored clean
    # Raises CellExecutionError (with the cell and traceback) if any cell fails.
    NotebookClient(
        book,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(REPO / "analysis")}},
    ).execute()
    outputs = [o for c in book.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"{trained.sweep.name}: 10 runs, 9 finished, read from {trained.sweep_dir}" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    notes = "".join(o["data"].get("text/markdown", "") for o in outputs if "data" in o)
    # every figure is drawn, or its place says why (as the report does): the fixture's
    # 2-epoch supervised baseline has not converged, so no gap figure can be drawn
    if name == "gap_analysis":
        assert len(images) >= 2, notes  # the batch x epochs heatmap, the gap against epochs
        assert "The gap vs parameters is not drawn: " in notes
        assert "No gap to draw: no architecture has a gap that can be judged" in notes
    else:
        assert len(images) >= 4, notes
    for image in images:
        assert base64.b64decode(image["data"]["image/png"]).startswith(PNG)


# ----------------------------------------------------------------------------- browser

PROBE = """<script>
var probeErrors = [];
window.addEventListener("error", function (e) {
  probeErrors.push(String(e.message || (e.target && (e.target.currentSrc || e.target.src)) || e.type).slice(0, 200));
}, true);
window.addEventListener("load", function () {
  var images = Array.prototype.map.call(document.images, function (i) {
    return {alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight};
  });
  var out = document.createElement("pre");
  out.id = "scaling-probe";
  out.textContent = JSON.stringify({images: images, errors: probeErrors});
  document.body.appendChild(out);
});
</script>"""


@pytest.fixture(scope="session")
def browser() -> str:
    """Chromium's path; asked for before the sweep fixtures so that a skip trains nothing."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail(
                "chromium is missing: .ci/run must install it (apt-get install -y chromium)"
            )
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return exe


def browse(exe: str, page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on a local page, nothing fetched from the network."""
    cmd = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",
        "--enable-logging=stderr",
        "--v=0",
        *args,
        page.as_uri(),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG) and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_every_image_of_report_html_loads_in_chromium(
    browser: str, trained: Trained, reported: Result, tmp_path: Path
) -> None:
    page = (trained.sweep_dir / "report" / "report.html").read_text()
    assert "<script" not in page  # the report has none; the probe goes into a copy
    expected = [
        png_size(base64.b64decode(src))
        for src in re.findall(r'<img[^>]*src="data:image/png;base64,([^"]+)"', page)
    ]
    probed = tmp_path / "probed report.html"
    probed.write_text(page.replace("<head>", "<head>" + PROBE, 1))
    done = browse(browser, probed, tmp_path / "profile", "--dump-dom")
    match = re.search(r'<pre id="scaling-probe">(.*?)</pre>', done.stdout, re.S)
    assert match, f"the probe did not run; stderr: {done.stderr[-2000:]}"
    probe = json.loads(html.unescape(match.group(1)))
    assert probe["errors"] == []
    assert len(probe["images"]) == len(expected) == len(FIGURES)
    for image, (width, height) in zip(probe["images"], expected, strict=True):
        assert image["complete"] and (image["width"], image["height"]) == (width, height), image
    assert [ln for ln in done.stderr.splitlines() if ":CONSOLE" in ln] == []


def test_report_html_renders_a_page_that_is_not_blank(
    browser: str, trained: Trained, reported: Result, tmp_path: Path
) -> None:
    from PIL import Image

    shot = tmp_path / "report.png"
    page = trained.sweep_dir / "report" / "report.html"
    done = browse(
        browser,
        page,
        tmp_path / "profile",
        "--hide-scrollbars",
        "--window-size=1200,2400",
        f"--screenshot={shot}",
    )
    assert [ln for ln in done.stderr.splitlines() if ":CONSOLE" in ln] == []
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 2400)
    colours = image.getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 50  # text, plots and colour maps, not one flat colour
    white = sum(n for n, c in colours if min(c) > 245)
    assert white < 0.97 * image.width * image.height
