"""A label fraction fixed by a file of training image names (issue 23, item 1's "or a file
of training image names per fraction", the official ImageNet 1%/10% lists' format)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from scaling.cli.app import app
from scaling.errors import SpecError
from scaling.report.results import evaluation_rows
from scaling.rundir import RESULT, read_json
from scaling.sweep.spec import RunSpec, load_sweep
from scaling.train.data import label_rows, subset, validation_rows
from scaling.train.readers import load_dataset
from scaling.train.trainer import run
from tests.conftest import write

CLASSES, PER_CLASS = ("n01", "n02", "n03"), 8

SWEEP = """
name: listed
dataset: {{name: imagefolder, root: {root}, image_size: 16}}
seeds: [0, 1]
model: {{depth: 10, width: 0.125, stem: cifar}}
label_fraction: [1.0, {{fraction: 0.25, file: {file}}}]
methods:
  simclr: {{epochs: 1, batch_size: 16, projection_dim: 8, eval: {{epochs: 1}}}}
  supervised: {{epochs: 2, batch_size: 16}}
"""


def _folder(root: Path) -> list[str]:
    """root/train/<class>/<class>_<k>.png (ImageNet-style names, unique in the folder) and
    root/val/...; the training file names, in the folder's order."""
    rng = np.random.default_rng(0)
    names = []
    for split in ("train", "val"):
        for c in CLASSES:
            (root / split / c).mkdir(parents=True)
            for k in range(PER_CLASS if split == "train" else 2):
                pixels = rng.integers(0, 256, (20, 18, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{c}_{k}.png")
                names += [f"{c}_{k}.png"] if split == "train" else []
    return names


def _held(root: Path) -> list[str]:
    """The held-out validation share's file names (the default tenth, fixed)."""
    labelled = load_dataset("imagefolder", root=root, image_size=16)
    _, held = validation_rows(labelled.labels, 0.1)
    return [labelled.paths[i].name for i in held.tolist()]


def _sweep(tmp_path: Path, names: list[str], where: str = "lists/quarter.txt") -> Path:
    write(tmp_path / where, "".join(f"{n}\n" for n in names))
    text = SWEEP.format(root=tmp_path / "data", file=where)
    return write(tmp_path / "sweep.yaml", text)


def test_listed_names_resolve_to_their_rows_for_both_methods_and_every_seed(
    tmp_path: Path,
) -> None:
    names = _folder(tmp_path / "data")
    held = set(_held(tmp_path / "data"))
    # class-balanced as the official lists: two of each class, one as <class>/<file>
    listed = [n for n in names if n not in held][::4]
    listed[0] = f"{listed[0][:3]}/{listed[0]}"
    sweep = load_sweep(_sweep(tmp_path, listed))
    sup = [r for r in sweep.runs_of("supervised") if r.label_list is not None]
    assert len(sup) == 2 and sweep.axes["label_fraction"] == (1.0, 0.25)
    evals = [e for r in sweep.runs_of("simclr") for e in r.evaluations() if "label_list" in e]
    assert len(evals) == 2 and len(sweep.runs_of("simclr")) == 2  # one pretraining per seed
    lists = [r.label_list for r in sup] + [e["label_list"] for e in evals]
    assert all(x == lists[0] for x in lists) and lists[0]["images"] == len(listed)
    labelled = load_dataset("imagefolder", root=tmp_path / "data", image_size=16)
    kept, held_rows = validation_rows(labelled.labels, 0.1)
    train, val = subset(labelled, kept), subset(labelled, held_rows)
    picked = {seed: label_rows(train, val, 0.25, seed, lists[0]) for seed in (0, 1, 7)}
    rows, dropped = picked[0]
    assert not dropped and all(torch_equal(rows, picked[s][0]) for s in (1, 7))
    got = [labelled.paths[i] for i in kept[rows].tolist()]
    assert sorted(p.name for p in got) == sorted(n.split("/")[-1] for n in listed)
    assert all(p.parent.name == p.name[:3] for p in got)  # the class is the folder's
    assert all(labelled.labels[i] == CLASSES.index(labelled.paths[i].parent.name) for i in kept)
    # the plan shows the subset's size
    out = CliRunner().invoke(app, ["plan", str(tmp_path / "sweep.yaml")])
    assert out.exit_code == 0, out.output
    assert f"0.25 ({len(listed)} listed)" in out.output


def torch_equal(a, b) -> bool:  # noqa: ANN001
    return a.tolist() == b.tolist()


def test_the_identity_follows_the_lists_content_not_its_path(tmp_path: Path) -> None:
    names = _folder(tmp_path / "data")
    first = load_sweep(_sweep(tmp_path, names[:6]))
    moved = tmp_path / "elsewhere" / "renamed.txt"
    moved.parent.mkdir()
    shutil.move(tmp_path / "lists" / "quarter.txt", moved)
    again = load_sweep(
        write(tmp_path / "sweep.yaml", SWEEP.format(root=tmp_path / "data", file=moved))
    )
    edited = load_sweep(_sweep(tmp_path, names[:5]))
    plain = load_sweep(
        write(
            tmp_path / "plain.yaml",
            SWEEP.format(root=tmp_path / "data", file="x").replace(
                "label_fraction: [1.0, {fraction: 0.25, file: x}]", "label_fraction: [1.0, 0.25]"
            ),
        )
    )

    def ids(sweep):  # noqa: ANN001, ANN202
        return [(r.run_id, [e["eval_id"] for e in r.evaluations()]) for r in sweep.runs]

    assert ids(first) == ids(again)  # moved: nothing changes
    assert [r.label_list["path"] for r in again.runs if r.label_list] == [str(moved)] * 2
    changed = [a != b for a, b in zip(ids(first), ids(edited), strict=True)]
    # edited: new supervised runs at that fraction, new SimCLR evaluations of the same
    # pretrainings; every run on every label keeps its id
    for r, e, change in zip(first.runs, edited.runs, changed, strict=True):
        assert (r.run_id != e.run_id) == (r.label_list is not None)
        if r.method == "simclr":
            assert r.run_id == e.run_id and change
    assert sum(changed) == 4  # 2 supervised runs on the list + 2 SimCLR pretrainings' evaluations
    drawn = {r.run_id for r in plain.runs}
    assert {r.run_id for r in first.runs if r.label_list is None} <= drawn
    assert not {r.run_id for r in first.runs if r.label_list is not None} & drawn
    for r in first.runs:  # spec.json round trip keeps the ids
        back = RunSpec.from_dict(json.loads(json.dumps(r.to_dict())))
        assert back.run_id == r.run_id and back.evaluations() == r.evaluations()


@pytest.mark.parametrize("bad", ["missing", "not an imagefolder", "twice"])
def test_bad_lists_are_one_line_exit_2(tmp_path: Path, bad: str) -> None:
    names = _folder(tmp_path / "data")
    path = _sweep(tmp_path, [*names[:3], "n09_404.JPEG", "n01_1.png"])
    if bad == "not an imagefolder":
        write(path, path.read_text().replace("name: imagefolder", "name: digits"))
    if bad == "twice":
        write(path, path.read_text().replace("[1.0, {", "[0.25, {"))
    result = CliRunner().invoke(app, ["plan", str(path)])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: {path}: label_fraction.")
    expect = {"missing": "'n09_404.JPEG'", "not an imagefolder": "digits", "twice": "twice"}
    assert expect[bad] in line


def test_a_missing_name_found_when_the_run_starts_is_one_line_exit_2(tmp_path: Path) -> None:
    names = _folder(tmp_path / "data")
    path = _sweep(tmp_path, [*names[:3], "n09_404.JPEG"])
    (spec,) = [r for r in load_sweep(path).runs if r.label_list and r.seed == 0]
    spec_file = write(tmp_path / "spec.json", json.dumps(spec.to_dict()))
    result = CliRunner().invoke(
        app, ["train", str(spec_file), "--run-dir", str(tmp_path / "run"), "--threads", "1"]
    )
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert f"{path}: label_fraction.1.file:" in line and "'n09_404.JPEG'" in line
    # an edited list is refused too: its content is the run's identity
    write(tmp_path / "lists" / "quarter.txt", "n01_0.png\n")
    with pytest.raises(SpecError, match="changed since the run was planned"):
        run(spec, tmp_path / "run2", threads=1)


def test_a_supervised_run_on_a_list_trains_on_exactly_those_images(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    names = _folder(tmp_path / "data")
    held = _held(tmp_path / "data")
    own = [n for n in names if n.endswith(("_2.png", "_5.png")) and n not in held]
    listed = [*own, held[0]]
    path = _sweep(tmp_path, listed)
    # every training image neither listed, held out nor a class's first (the folder
    # check opens those) is corrupt: decoding any of them would fail the run
    firsts = {f"{c}_0.png" for c in CLASSES}
    corrupt = [
        image
        for c in CLASSES
        for image in (tmp_path / "data" / "train" / c).iterdir()
        if image.name not in {*listed, *held, *firsts}
    ]
    assert len(corrupt) >= 10
    for image in corrupt:
        image.write_bytes(b"not a png")
    (spec,) = [r for r in load_sweep(path).runs_of("supervised") if r.label_list and r.seed == 1]
    result = run(spec, tmp_path / "run", threads=1)
    assert result["listed_images"] == len(own) and result["listed_dropped"] == 1
    assert result["listed_dropped_first"] == held[0]
    assert read_json(tmp_path / "run" / RESULT)["listed_images"] == len(own)
    log = capfd.readouterr().out
    assert f"labels: {len(own)} images named by" in log and f"(the first: {held[0]})" in log


def test_a_simclr_evaluation_on_a_list_fits_on_those_images(tmp_path: Path) -> None:
    names = _folder(tmp_path / "data")
    held = _held(tmp_path / "data")
    own = [n for n in names if n.endswith("_3.png") and n not in held]
    path = _sweep(tmp_path, [*own, held[-1]])
    (spec,) = [r for r in load_sweep(path).runs_of("simclr") if r.seed == 0]
    result = run(spec, tmp_path / "run", threads=1)
    on_list = [e for e in result["evaluations"] if e["label_fraction"] == 0.25]
    (every,) = [e for e in result["evaluations"] if e["label_fraction"] == 1.0]
    (listed,) = on_list
    assert listed["fit_images"] == listed["listed_images"] == len(own)
    assert listed["listed_dropped"] == 1 and listed["listed_dropped_first"] == held[-1]
    assert every["fit_images"] == len(names) - len(held) and "listed_images" not in every
    rows = evaluation_rows(spec, spec.flat(), result)
    assert not any(k.startswith("eval_label_list") for r in rows for k in r)
