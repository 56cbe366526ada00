"""Bad input: one line naming the file, the key and what is allowed; exit 2; no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from scaling.cli.app import app
from tests.conftest import REPO, write

GOOD = """\
name: t
dataset: {name: digits, image_size: 16}
seeds: [0]
model: {depth: 10, width: [0.25, 0.5], stem: cifar}
methods:
  simclr: {batch_size: [32, 64], epochs: 2}
  supervised: {batch_size: 64, epochs: 2}
"""

# (what, sweep text or a transformation of GOOD, extra CLI args, expected fragments)
CASES = [
    ("unknown top-level key", GOOD + "colour: red\n", [], ["colour", "valid keys", "methods"]),
    (
        "unknown method key",
        GOOD.replace("epochs: 2}\n  sup", "epochs: 2, temprature: 0.1}\n  sup"),
        [],
        ["methods.simclr.temprature", "valid keys", "temperature"],
    ),
    (
        "unknown model key",
        GOOD.replace("stem: cifar", "stem: cifar, blocks: 3"),
        [],
        ["model.blocks", "depth_multiplier"],
    ),
    (
        "unknown nested eval key",
        GOOD.replace("epochs: 2}\n  sup", "epochs: 2, eval: {epoch: 3}}\n  sup"),
        [],
        ["methods.simclr.eval.epoch", "protocol"],
    ),
    (
        "wrong type",
        GOOD.replace("batch_size: 64", "batch_size: big"),
        [],
        ["methods.supervised.batch_size", "integer", "big"],
    ),
    (
        "negative batch",
        GOOD.replace("batch_size: 64", "batch_size: -64"),
        [],
        ["methods.supervised.batch_size", "greater than 0"],
    ),
    (
        "zero batch in an axis",
        GOOD.replace("[32, 64]", "[32, 0]"),
        [],
        ["methods.simclr.batch_size", "greater than 0", "got 0"],
    ),
    (
        "width <= 0",
        GOOD.replace("[0.25, 0.5]", "[0.25, -1]"),
        [],
        ["model.width", "greater than 0"],
    ),
    (
        "unknown augmentation style",
        GOOD.replace("epochs: 2}\n  sup", "epochs: 2, augment: tf}\n  sup"),
        [],
        ["methods.simclr.augment", "'official' or 'torchvision'", "tf"],
    ),
    (
        "colour strength TensorFlow refuses",
        GOOD.replace("epochs: 2}\n  sup", "epochs: 2, color_strength: 1.5}\n  sup"),
        [],
        ["methods.simclr.color_strength", "at most 1.25 with augment: official", "1.5"],
    ),
    (
        "unsupported depth",
        GOOD.replace("depth: 10", "depth: 42"),
        [],
        ["model.depth", "10, 18, 34, 50, 101, 152", "42"],
    ),
    (
        "bad stem",
        GOOD.replace("stem: cifar", "stem: tiny"),
        [],
        ["model.stem", "'cifar' or 'imagenet'"],
    ),
    (
        "bad lr rule",
        GOOD.replace("epochs: 2}\n  sup", "epochs: 2, lr_rule: cubic}\n  sup"),
        [],
        ["methods.simclr.lr_rule", "cubic"],
    ),
    (
        "bad dataset",
        GOOD.replace("name: digits", "name: mnist"),
        [],
        ["dataset.name", "digits", "cifar10", "mnist"],
    ),
    (
        "unknown method",
        GOOD.replace("supervised:", "byol:"),
        [],
        ["methods.byol", "simclr, supervised"],
    ),
    ("no methods", GOOD.split("methods:")[0] + "methods: {}\n", [], ["methods", "empty grid"]),
    ("empty axis", GOOD.replace("[0.25, 0.5]", "[]"), [], ["model.width", "empty list"]),
    ("missing required name", GOOD.replace("name: t\n", ""), [], ["name", "required"]),
    ("bad YAML syntax", GOOD.replace("seeds: [0]", "seeds: [0"), [], ["invalid YAML", "line"]),
    ("not a mapping", "- 1\n- 2\n", [], ["expected a mapping"]),
    (
        "bad --set",
        GOOD,
        ["--set", "methods.simclr.epochs=0"],
        ["methods.simclr.epochs", "greater than 0"],
    ),
    ("bad --format", GOOD, ["--format", "xml"], ["--format", "table, json, csv"]),
]


@pytest.mark.parametrize(("what", "text", "args", "fragments"), CASES, ids=[c[0] for c in CASES])
def test_malformed_sweep(
    tmp_path: Path, what: str, text: str, args: list[str], fragments: list[str]
) -> None:
    path = write(tmp_path / "sweep.yaml", text)
    result = CliRunner().invoke(app, ["plan", str(path), *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    line = lines[0]
    assert line.startswith("error: ") and "Traceback" not in result.output
    if what not in ("bad --format",):
        assert str(path) in line
    for fragment in fragments:
        assert fragment in line, (fragment, line)


PROFILE_CASES = [
    ("unknown profile key", "backend: local\ngpus: 2\n", ["gpus", "gpus_per_run"]),
    ("bad backend", "backend: kubernetes\n", ["backend", "'local', 'slurm' or 'ray'"]),
    ("bad slurm key", "backend: slurm\nslurm: {partion: gpu}\n", ["slurm.partion", "partition"]),
    (
        "utilization > 1",
        "accelerator: {utilization: 1.5}\n",
        ["accelerator.utilization", "less than or equal to 1"],
    ),
    (
        "batch not divisible by gpus",
        "gpus_per_run: 3\ngpus_per_node: 4\naccelerator: {memory_gb: 80, peak_tflops: 100}\n",
        ["methods.simclr.batch_size", "gpus_per_run=3"],
    ),
]


@pytest.mark.parametrize(
    ("what", "text", "fragments"), PROFILE_CASES, ids=[c[0] for c in PROFILE_CASES]
)
def test_malformed_profile(tmp_path: Path, what: str, text: str, fragments: list[str]) -> None:
    sweep = write(tmp_path / "sweep.yaml", GOOD)
    profile = write(tmp_path / "profile.yaml", text)
    result = CliRunner().invoke(app, ["plan", str(sweep), "--cluster", str(profile)])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert "\n" not in line and line.startswith("error: ")
    assert str(profile) in line or str(sweep) in line
    for fragment in fragments:
        assert fragment in line, (fragment, line)


def test_missing_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["plan", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {tmp_path / 'nope.yaml'}: file not found"


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    path = write(tmp_path / "sweep.yaml", GOOD.replace("depth: 10", "depth: 42"))
    env = {"SCALING_DEBUG": "1", "PATH": "/usr/bin:/bin"}
    quiet = subprocess.run(
        [sys.executable, "-m", "scaling.cli.app", "plan", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    loud = subprocess.run(
        [sys.executable, "-m", "scaling.cli.app", "plan", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
    )
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    assert loud.returncode != 0 and "Traceback" in loud.stderr and "SpecError" in loud.stderr


def test_a_bad_image_folder_stops_the_plan_in_one_line(tmp_path: Path) -> None:
    from tests.test_data import write_photos

    write_photos(tmp_path / "data", per_class=1, classes=2)
    (tmp_path / "data" / "val" / "class1").rename(tmp_path / "data" / "val" / "other")
    text = GOOD.replace("name: digits", f"name: imagefolder, root: {tmp_path / 'data'}")
    path = write(tmp_path / "sweep.yaml", text)
    result = CliRunner().invoke(app, ["plan", str(path)])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert "\n" not in line and str(path) in line and "dataset.root" in line
    assert f"{tmp_path / 'data' / 'val'} has classes that" in line and "other" in line
    missing = write(tmp_path / "later.yaml", text.replace(str(tmp_path / "data"), "/not/mounted"))
    assert CliRunner().invoke(app, ["plan", str(missing)]).exit_code == 0  # cannot be seen yet


# ----------------------------------------------------------------------------- fuzz corpus

#: Bad sweeps and profiles, one file each, whose first line says what the error must name
#: (`# expect: fragment | fragment`). Every one must stop `scaling plan` with one line
#: naming the file, exit code 2 and no traceback, before anything is costed or queued.
FUZZ = Path(__file__).resolve().parent / "fuzz"
FUZZ_GOOD_SWEEP = """\
name: fuzz
dataset: {name: digits, image_size: 8}
model: {depth: 10, width: 0.25}
methods: {supervised: {batch_size: 64, epochs: 2}}
"""


def _expected(path: Path) -> list[str]:
    first = path.read_bytes().split(b"\n", 1)[0].decode()
    assert first.startswith("# expect: "), path
    return [f.strip() for f in first.removeprefix("# expect: ").split("|")]


@pytest.mark.parametrize(
    "path", sorted((FUZZ / "sweeps").glob("*.yaml")), ids=lambda p: f"sweep-{p.stem}"
)
def test_fuzz_corpus_of_bad_sweeps(path: Path) -> None:
    result = CliRunner().invoke(app, ["plan", str(path)])
    _one_line_naming(result, path, _expected(path))


@pytest.mark.parametrize(
    "path", sorted((FUZZ / "profiles").glob("*.yaml")), ids=lambda p: f"profile-{p.stem}"
)
def test_fuzz_corpus_of_bad_profiles(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # relative workdirs land here, never in the repository
    sweep = write(tmp_path / "sweep.yaml", FUZZ_GOOD_SWEEP)
    result = CliRunner().invoke(app, ["plan", str(sweep), "--cluster", str(path)])
    _one_line_naming(result, path, _expected(path))


def _one_line_naming(result: Any, path: Path, fragments: list[str]) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output and str(path) in lines[0], result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
