"""`scaling status`: one row per run from the run directories, with what a reader must
know of each (its convergence verdict, a run directory that cannot be read)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scaling.cli.app import app
from scaling.rundir import METRICS, RESULT, SPEC, write_json
from scaling.sweep.spec import load_sweep
from tests.conftest import write

CURVES = Path(__file__).resolve().parent / "golden" / "curves"
SWEEP = """\
name: st
dataset: {name: digits, image_size: 8}
model: {depth: 10, width: [0.25, 0.5]}
methods: {supervised: {batch_size: 64, epochs: 10}}
"""


@pytest.fixture
def study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "sweep.yaml", SWEEP)
    write(tmp_path / "local.yaml", "backend: local\ndevice: cpu\nworkdir: runs\n")
    return tmp_path


def finished(run_dir: Path, spec: dict, curve: str, *, record_verdict: bool) -> None:
    """A finished run directory whose metrics are a real curve (tests/golden/curves)."""
    from scaling.train.convergence import judge

    lines = (CURVES / curve).read_text()
    write_json(run_dir / SPEC, spec)
    (run_dir / METRICS).write_text(lines)
    result = {"run_id": spec["run_id"], "method": "supervised", "top1": 0.9, "epochs": 10}
    if record_verdict:
        records = [json.loads(line) for line in lines.splitlines()]
        result["convergence"] = judge(records, True, 10).to_dict()
    write_json(run_dir / RESULT, result)


def test_status_flags_a_run_that_has_not_converged_with_why(study: Path) -> None:
    a, b = (r.to_dict() for r in load_sweep(study / "sweep.yaml").runs)
    unconverged = "supervised-not_converged-digits_10_epochs_r10_0.5x_32px.jsonl"
    finished(study / "runs" / "st" / a["run_id"], a, unconverged, record_verdict=True)
    converged = "supervised-converged-quickstart_w0.5_s0.jsonl"
    finished(study / "runs" / "st" / b["run_id"], b, converged, record_verdict=False)
    result = CliRunner().invoke(app, ["status", "sweep.yaml", "--cluster", "local.yaml"])
    out = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert "not converged (1):" in out
    assert (
        f"{a['run_id']} (supervised, width {a['model']['width']}, 10 epochs): train top-1 0.36"
        in out
    )
    assert "training accuracy still rising" in out and b["run_id"] + " (" not in out


@pytest.mark.slow
def test_a_cut_metrics_file_is_flagged_in_status_and_put_back_by_submit(study: Path) -> None:
    """A finished run's metrics.jsonl cut to its first epoch and half a line: status says
    which epochs are missing (not "epoch 1/2" silently), and a plain submit puts them
    back from the checkpoint, which keeps every epoch's line."""
    write(
        study / "sweep.yaml",
        SWEEP.replace("width: [0.25, 0.5]", "width: 0.25").replace("epochs: 10", "epochs: 2"),
    )
    args = ["sweep.yaml", "--cluster", "local.yaml"]
    first = CliRunner().invoke(app, ["submit", *args])
    assert first.exit_code == 0 and "1 finished" in first.output, first.output
    (spec,) = load_sweep(study / "sweep.yaml").runs
    metrics = study / "runs" / "st" / spec.run_id / METRICS
    whole = metrics.read_text()
    lines = whole.splitlines(keepends=True)
    metrics.write_text(lines[0] + lines[1][: len(lines[1]) // 2])  # cut mid-line
    status = CliRunner().invoke(app, ["status", *args])
    out = " ".join(status.output.split())
    assert "lacks 1 of its 2 epochs (epoch 2)" in out and "scaling submit" in out, out
    again = CliRunner().invoke(app, ["submit", *args])
    assert again.exit_code == 0 and "1 epochs from its checkpoint" in again.output
    assert metrics.read_text() == whole
