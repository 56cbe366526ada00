from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scaling.errors import SpecError
from scaling.sweep.spec import RunSpec, load_sweep, run_id_of
from tests.conftest import REPO, write

BASE = """
name: t
dataset: {name: digits, image_size: 16}
seeds: [0, 1]
model: {depth: [10, 18], width: [0.25, 0.5, 1.0], stem: cifar}
methods:
  simclr:
    batch_size: [64, 128, 256]
    epochs: [5, 10]
    temperature: [0.1, 0.5]
  supervised:
    batch_size: 128
    epochs: 10
"""


def test_expansion_is_method_aware(tmp_path: Path) -> None:
    sweep = load_sweep(write(tmp_path / "s.yaml", BASE))
    simclr, supervised = sweep.runs_of("simclr"), sweep.runs_of("supervised")
    # model axes (2 depths x 3 widths) x 2 seeds x simclr's own axes (3 x 2 x 2)
    assert len(simclr) == 2 * 3 * 2 * (3 * 2 * 2)
    # supervised is not multiplied by SimCLR's batch sizes, epochs or temperatures
    assert len(supervised) == 2 * 3 * 2
    assert all("temperature" not in r.config for r in supervised)
    assert sweep.axes["methods.simclr.temperature"] == (0.1, 0.5)
    assert sweep.axes["model.width"] == (0.25, 0.5, 1.0)


def test_nested_eval_field_is_an_axis(tmp_path: Path) -> None:
    text = BASE.replace("temperature: [0.1, 0.5]", "eval: {epochs: [10, 50]}")
    sweep = load_sweep(write(tmp_path / "s.yaml", text))
    assert sweep.axes["methods.simclr.eval.epochs"] == (10, 50)
    assert {r.config["eval"]["epochs"] for r in sweep.runs_of("simclr")} == {10, 50}


def test_run_ids_are_unique_and_stable_across_processes(tmp_path: Path) -> None:
    path = write(tmp_path / "s.yaml", BASE)
    ids = [r.run_id for r in load_sweep(path).runs]
    assert len(set(ids)) == len(ids)
    code = (
        "import json,sys; from scaling.sweep.spec import load_sweep; "
        "print(json.dumps([r.run_id for r in load_sweep(sys.argv[1]).runs]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    assert json.loads(out.stdout) == ids


def test_run_id_ignores_key_order_sweep_name_and_data_location() -> None:
    a = RunSpec(
        "supervised",
        {"name": "digits", "image_size": 16, "root": None},
        {"depth": 10, "width": 0.5},
        0,
        {"epochs": 3, "batch_size": 8},
        sweep="a",
    )
    b = RunSpec(
        "supervised",
        {"root": "/data", "image_size": 16, "name": "digits"},
        {"width": 0.5, "depth": 10},
        0,
        {"batch_size": 8, "epochs": 3},
        sweep="b",
    )
    assert a.run_id == b.run_id
    c = RunSpec("supervised", a.dataset, a.model, 0, {"epochs": 4, "batch_size": 8})
    d = RunSpec("supervised", a.dataset, a.model, 1, a.config)
    assert len({a.run_id, c.run_id, d.run_id}) == 3


def test_width_given_as_int_has_the_same_id_as_float(tmp_path: Path) -> None:
    one = load_sweep(write(tmp_path / "a.yaml", BASE.replace("[0.25, 0.5, 1.0]", "1")))
    other = load_sweep(write(tmp_path / "b.yaml", BASE.replace("[0.25, 0.5, 1.0]", "1.0")))
    assert [r.run_id for r in one.runs] == [r.run_id for r in other.runs]


def test_round_trip_through_json(tmp_path: Path) -> None:
    for run in load_sweep(write(tmp_path / "s.yaml", BASE)).runs[:5]:
        again = RunSpec.from_dict(json.loads(json.dumps(run.to_dict())))
        assert again == run and again.run_id == run.run_id


def test_from_dict_rejects_a_tampered_run_id(tmp_path: Path) -> None:
    data = load_sweep(write(tmp_path / "s.yaml", BASE)).runs[0].to_dict()
    data["config"]["epochs"] = 999
    with pytest.raises(SpecError, match="does not match"):
        RunSpec.from_dict(data)


def test_overrides_are_validated(tmp_path: Path) -> None:
    path = write(tmp_path / "s.yaml", BASE)
    sweep = load_sweep(path, ["methods.simclr.epochs=[1, 2, 3]", "seeds=[7]"])
    assert sweep.axes["methods.simclr.epochs"] == (1, 2, 3)
    assert {r.seed for r in sweep.runs} == {7}
    with pytest.raises(SpecError, match="methods.simclr.epochs"):
        load_sweep(path, ["methods.simclr.epochs=-1"])


@pytest.mark.parametrize(
    "name", ["quickstart", "digits_width_epochs", "cifar10_batch_epochs", "imagenet_depth_width"]
)
def test_shipped_sweeps_load(name: str) -> None:
    sweep = load_sweep(REPO / "sweeps" / f"{name}.yaml")
    assert sweep.runs and sweep.description


def test_quickstart_is_a_real_study() -> None:
    sweep = load_sweep(REPO / "sweeps" / "quickstart.yaml")
    assert {r.method for r in sweep.runs} == {"simclr", "supervised"}
    # the width trend with intervals: five sizes (a fit and its back-test), three seeds each
    assert len({r.model["width"] for r in sweep.runs}) >= 5
    assert len({r.seed for r in sweep.runs}) >= 3


def test_the_widths_by_epochs_sweep_gives_each_method_a_joint_law() -> None:
    """Both methods over five widths (a back-test) x three lengths, three seeds."""
    sweep = load_sweep(REPO / "sweeps" / "digits_width_epochs.yaml")
    for method in ("simclr", "supervised"):
        runs = [r for r in sweep.runs if r.method == method]
        assert len({r.model["width"] for r in runs}) >= 5
        assert len({r.config["epochs"] for r in runs}) >= 3
    assert len({r.seed for r in sweep.runs}) == 3 and len(sweep.runs) == 90


def test_an_image_folder_root_is_part_of_the_run_identity(tmp_path: Path) -> None:
    """For an image folder the root is the data: two roots are two runs. For a published
    data set it is only where the files are: a root axis there is an error, not a drop."""
    path = write(
        tmp_path / "f.yaml",
        "name: f\ndataset: {name: imagefolder, image_size: 32, "
        "root: [/data/a, /data/b], size: 100}\nmodel: {depth: 18}\n"
        "methods:\n  supervised: {batch_size: 32}\n",
    )
    runs = load_sweep(path).runs
    assert len(runs) == 2 and runs[0].run_id != runs[1].run_id
    same = write(
        tmp_path / "c.yaml",
        "name: c\ndataset: {name: cifar10, image_size: 32, "
        "root: [/data/a, /data/b]}\nmodel: {depth: 18}\nmethods:\n  supervised: {}\n",
    )
    with pytest.raises(SpecError, match="two runs share run_id .* differ only in dataset"):
        load_sweep(same)


def test_a_sweep_file_that_is_not_utf8_or_a_yaml_bomb_is_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from scaling.cli.app import app

    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    bomb = write(
        tmp_path / "bomb.yaml",
        "a: &a [x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n"
            for p, c in zip("abcdefghijklmn", "bcdefghijklmno", strict=True)
        )
        + "name: bomb\n",
    )
    for path, says in ((latin, "not UTF-8 text"), (bomb, "more than 100 YAML aliases")):
        result = CliRunner().invoke(app, ["plan", str(path)])
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
        assert says in result.output


def test_yaml_1_2_floats_and_merge_keys_read_as_written(tmp_path: Path) -> None:
    """`1e-4` is a float (YAML 1.1 makes it a string, which strict types then refuse);
    overriding a merged block's key is not a duplicated key."""
    text = BASE.replace("epochs: 10\n", "epochs: 10\n    weight_decay: 1e-4\n", 1)
    text = text.replace(
        "batch_size: 128\n    epochs: 10",
        "<<: {batch_size: 64}\n    batch_size: 128\n    epochs: 10",
    )
    (sup,) = {
        r.config["weight_decay"]
        for r in load_sweep(write(tmp_path / "s.yaml", text)).runs_of("supervised")
    }
    plain = BASE.replace("epochs: 10\n", "epochs: 10\n    weight_decay: 1.0e-4\n", 1)
    assert sup == 1.0e-4
    assert {r.run_id for r in load_sweep(write(tmp_path / "p.yaml", plain)).runs} == {
        r.run_id for r in load_sweep(tmp_path / "s.yaml").runs
    }


def test_a_run_spec_out_of_bounds_is_refused_where_it_is_read() -> None:
    spec = load_sweep(REPO / "sweeps" / "quickstart.yaml").runs[0].to_dict()
    spec.pop("run_id")
    with pytest.raises(SpecError, match="seed"):
        RunSpec.from_dict({**spec, "seed": 2**70})
    with pytest.raises(SpecError, match="image_size"):
        RunSpec.from_dict({**spec, "dataset": {**spec["dataset"], "image_size": 4}})


@pytest.mark.parametrize("path", sorted((REPO / "sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_sweeps_describe_and_state_no_results(path: Path) -> None:
    """A description says what a sweep runs and asks; its results are the report's (a
    description that quoted a measured gap went stale when the code changed)."""
    import re

    text = load_sweep(path).description + " " + path.read_text().split("\nname:")[0]
    stated = re.search(
        r"\b(measured|shrinks from|closes at|points? \(|\d+(\.\d+)? points)\b|\d+(\.\d+)?%",
        text.replace("the paper's", ""),
    )
    own = stated and "paper" not in text[max(0, stated.start() - 60) : stated.start()]
    assert not own, stated


def test_the_augmentation_style_is_part_of_the_run_identity(tmp_path: Path) -> None:
    """`augment` (official by default, for both methods) is in every run's identity: an
    axis over it gives two runs where there was one. A run directory written before the
    field existed (torchvision's semantics, its run_id computed without the field) is not
    taken for an official run."""
    text = BASE.replace("temperature: [0.1, 0.5]", "augment: [official, torchvision]")
    sweep = load_sweep(write(tmp_path / "s.yaml", text))
    assert sweep.axes["methods.simclr.augment"] == ("official", "torchvision")
    assert {r.config["augment"] for r in sweep.runs_of("supervised")} == {"official"}
    pairs: dict[str, set[str]] = {}
    for r in sweep.runs_of("simclr"):
        rest = {**r.to_dict(), "config": {**r.config, "augment": None}, "run_id": None}
        pairs.setdefault(json.dumps(rest, sort_keys=True), set()).add(r.run_id)
    assert {len(ids) for ids in pairs.values()} == {2}
    run = sweep.runs_of("supervised")[0]
    saved = json.loads(json.dumps(run.to_dict()))
    assert saved["config"]["augment"] == "official" and RunSpec.from_dict(saved) == run
    identity = run.identity()
    del identity["config"]["augment"]
    old = {**saved, "run_id": run_id_of(identity)}
    del old["config"]["augment"]
    with pytest.raises(SpecError, match="does not match"):
        RunSpec.from_dict(old)


def test_stem_auto_follows_the_image_size(tmp_path: Path) -> None:
    """The official code's rule (run.py: `cifar_stem=FLAGS.image_size <= 32`): the CIFAR
    stem at 32 px and below, the ImageNet stem above; auto resolves in the run spec, so
    it has the id of the stem it resolves to."""
    path = write(
        tmp_path / "s.yaml",
        "name: s\ndataset: {name: synthetic, image_size: [32, 33, 224]}\n"
        "model: {depth: 10, width: 0.25}\nmethods: {supervised: {epochs: 1}}\n",
    )
    stems = {r.dataset["image_size"]: r.model["stem"] for r in load_sweep(path).runs}
    assert stems == {32: "cifar", 33: "imagenet", 224: "imagenet"}
    explicit = load_sweep(path, ["model.stem=cifar", "dataset.image_size=32"]).runs[0]
    auto = next(r for r in load_sweep(path).runs if r.dataset["image_size"] == 32)
    assert explicit.run_id == auto.run_id


def test_the_linear_evaluation_defaults_follow_the_data_set(tmp_path: Path) -> None:
    """The official probe's batch, epochs and weight decay per data set (README: ImageNet
    4096 / 90 / 1e-6, CIFAR-10 512 / 100 / 0), resolved into the run spec; what a sweep
    sets wins."""
    text = (
        "name: e\ndataset: {{name: {name}, image_size: 32, root: /data, size: 1000}}\n"
        "model: {{depth: 10, width: 0.25}}\nmethods: {{simclr: {{eval: {eval}}}}}\n"
    )
    runs = {}
    for name in ("cifar10", "imagefolder"):
        path = write(tmp_path / f"{name}.yaml", text.format(name=name, eval="{}"))
        runs[name] = load_sweep(path).runs[0].config["eval"]
    official = {"protocol": "augmented", "batch_size": 512, "epochs": 100, "weight_decay": 0.0}
    official |= {"standardize": False, "lr": 0.1}
    assert {k: runs["cifar10"][k] for k in official} == official
    assert (runs["imagefolder"]["batch_size"], runs["imagefolder"]["epochs"]) == (4096, 90)
    assert runs["imagefolder"]["weight_decay"] == 1e-6
    path = write(tmp_path / "own.yaml", text.format(name="cifar10", eval="{epochs: 7}"))
    assert load_sweep(path).runs[0].config["eval"]["epochs"] == 7


def test_the_validation_share_and_the_bn_grouping_are_in_the_identity(tmp_path: Path) -> None:
    path = write(
        tmp_path / "v.yaml",
        "name: v\ndataset: {name: digits, image_size: 8, validation: [0.1, 0.0]}\n"
        "model: {depth: 10, width: 0.25}\nmethods: {simclr: {batch_size: 64}}\n",
    )
    tenth, none = load_sweep(path).runs
    assert tenth.run_id != none.run_id and tenth.identity()["dataset"]["validation"] == 0.1
    assert tenth.identity()["bn_grouping"] == "views_together"  # always named
    shuffled = tenth.with_bn_batch(16, "second_view_shuffled")
    assert shuffled.run_id not in (tenth.run_id, tenth.with_bn_batch(16).run_id)
    assert RunSpec.from_dict(shuffled.to_dict()) == shuffled
    assert tenth.with_bn_batch(64, "views_together") is tenth  # nothing changes
    with pytest.raises(SpecError, match="bn_grouping"):
        RunSpec.from_dict({**tenth.to_dict(), "bn_grouping": "one_view"})
