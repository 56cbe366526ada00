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
