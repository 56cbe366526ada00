"""Label efficiency (issue 23): label fractions as a grid axis, class-balanced subsets,
evaluations owned by a pretraining run (a frozen probe, or the encoder fine-tuned with the
paper's B.5 recipe), resumable on their own, and never a second pretraining."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from scaling.cli.app import app
from scaling.errors import SpecError
from scaling.models.resnet import build_network
from scaling.plan.schedule import warmup_cosine
from scaling.run.state import missing_evaluations
from scaling.rundir import METRICS, RESULT, read_json, read_jsonl
from scaling.sweep.spec import RunSpec, load_sweep
from scaling.train import distributed
from scaling.train.augment import SimCLRAugment
from scaling.train.data import labelled_subset, validation_rows
from scaling.train.evaluate import EVAL_FOLDER, evaluate_run
from scaling.train.finetune import STATE
from scaling.train.readers import load_dataset
from scaling.train.trainer import run
from tests.conftest import write
from tests.test_distributed import WORLD, spawn_ranks

SWEEP = """
name: labels
dataset: {name: digits, image_size: 8}
seeds: [0, 1]
model: {depth: 10, width: [0.125, 0.25]}
label_fraction: [0.01, 0.1, 1.0]
methods:
  simclr:
    epochs: 2
    eval: {protocol: [features, finetune]}
  supervised:
    epochs: 2
"""


# -- subsets ---------------------------------------------------------------------------------


def test_subsets_are_class_balanced_reproducible_nested_and_inside_the_training_share() -> None:
    labelled = load_dataset("digits", image_size=8, split="train")
    kept, held = validation_rows(labelled.labels, 0.1)
    labels = labelled.labels[kept]
    counts = torch.bincount(labels)
    previous = torch.zeros(0, dtype=torch.long)
    for fraction in (0.01, 0.1, 0.5):
        rows = labelled_subset(labels, fraction, seed=3)
        per_class = torch.bincount(labels[rows], minlength=len(counts))
        expected = torch.tensor([max(1, round(fraction * int(n))) for n in counts])
        assert torch.equal(per_class, expected)  # each class keeps its share
        assert torch.equal(rows, labelled_subset(labels.clone(), fraction, seed=3))
        assert not torch.equal(rows, labelled_subset(labels, fraction, seed=4))
        assert set(previous.tolist()) <= set(rows.tolist())  # 1% inside 10% inside 50%
        previous = rows
        # rows of the training share: never a held-out (validation) image; the test
        # split is another split altogether
        assert not set(kept[rows].tolist()) & set(held.tolist())
    assert torch.equal(labelled_subset(labels, 1.0, seed=3), torch.arange(len(labels)))
    unlabelled = torch.cat([labels, torch.full((50,), -1)])  # STL-10's unlabelled rows
    assert (unlabelled[labelled_subset(unlabelled, 0.1, seed=3)] >= 0).all()


# -- identity --------------------------------------------------------------------------------


def test_a_fraction_is_a_supervised_run_and_an_evaluation_of_one_pretraining(
    tmp_path: Path,
) -> None:
    sweep = load_sweep(write(tmp_path / "s.yaml", SWEEP))
    assert sweep.axes["label_fraction"] == (0.01, 0.1, 1.0)
    supervised, simclr = sweep.runs_of("supervised"), sweep.runs_of("simclr")
    assert len(supervised) == 2 * 2 * 3 and len({r.run_id for r in supervised}) == 12
    assert len(simclr) == 2 * 2  # one pretraining per (width, seed): never per fraction
    evaluations = simclr[0].evaluations()
    assert [(e["protocol"], e["label_fraction"]) for e in evaluations] == [
        (p, f) for p in ("features", "finetune") for f in (0.01, 0.1, 1.0)
    ]
    assert len({e["eval_id"] for e in evaluations}) == 6
    # Every label: the run a sweep without fractions has (its run_id unchanged).
    plain = load_sweep(write(tmp_path / "p.yaml", SWEEP.replace("[0.01, 0.1, 1.0]", "1.0")))
    assert {r.run_id for r in plain.runs_of("supervised")} == {
        r.run_id for r in supervised if r.label_fraction == 1.0
    }
    # Adding a fraction or a protocol later never makes another pretraining.
    more = load_sweep(
        write(
            tmp_path / "m.yaml",
            SWEEP.replace("[0.01, 0.1, 1.0]", "[0.01, 0.05, 0.1, 1.0]").replace(
                "[features, finetune]", "[features, finetune, augmented]"
            ),
        )
    )
    assert [r.run_id for r in more.runs_of("simclr")] == [r.run_id for r in simclr]
    assert {r.run_id for r in supervised} < {r.run_id for r in more.runs_of("supervised")}
    assert len(more.runs_of("simclr")[0].evaluations()) == 12
    for spec in (*supervised, *simclr):  # spec.json round trip
        again = RunSpec.from_dict(spec.to_dict())
        assert again.run_id == spec.run_id and again.evaluations() == spec.evaluations()
    finished = {"evaluations": evaluations[:5]}
    assert missing_evaluations(simclr[0], finished) == [evaluations[5]["eval_id"]]


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("[0.01, 0.1, 1.0]", "[0.0, 0.5]", "label_fraction.0"),
        ("[0.01, 0.1, 1.0]", "1.5", "label_fraction"),
        ("[0.01, 0.1, 1.0]", "[]", "label_fraction"),
        ("[features, finetune]", "tuning", "methods.simclr.eval.protocol"),
    ],
)
def test_bad_label_input_is_one_line_naming_the_key(
    tmp_path: Path, old: str, new: str, key: str
) -> None:
    path = write(tmp_path / "bad.yaml", SWEEP.replace(old, new))
    with pytest.raises(SpecError) as err:
        load_sweep(path)
    assert err.value.key == key
    result = CliRunner().invoke(app, ["plan", str(path)])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and key in result.output


# -- fine-tuning -----------------------------------------------------------------------------

SIZE = 8
TUNE = {"epochs": 4, "batch_size": 32, "lr": 0.4, "from_projection": True}


def _spec(evals: list[dict], seed: int = 0) -> RunSpec:
    return RunSpec.from_dict(
        {
            "method": "simclr",
            "dataset": {"name": "synthetic", "image_size": SIZE, "size": 256},
            "model": {"depth": 10, "width": 0.25},
            "seed": seed,
            "config": {"batch_size": 64, "projection_dim": 16},
            "evals": evals,
        }
    )


def _parts() -> tuple:
    torch.manual_seed(0)
    net = build_network("simclr", depth=10, width=0.25, stem="cifar", projection_dim=16)
    train = load_dataset("synthetic", image_size=SIZE, num_images=256)
    val = load_dataset("synthetic", image_size=SIZE, num_images=64, seed=1)
    test = load_dataset("synthetic", image_size=SIZE, split="test", num_images=128)
    return net, train, val, test


def _evaluate(spec: RunSpec, folder: Path) -> list[dict]:
    net, train, val, test = _parts()
    return evaluate_run(spec, net, train, test, SimCLRAugment(SIZE), val=val, run_dir=folder)


def test_finetuning_moves_the_encoder_with_the_recipe_while_probes_do_not(tmp_path: Path) -> None:
    spec = _spec(
        [
            {"protocol": "features", "epochs": 3, "label_fraction": 0.5},
            {"protocol": "finetune", "finetune": TUNE, "label_fraction": 0.5},
        ]
    )
    net, train, val, test = _parts()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    probe, tuned = evaluate_run(
        spec, net, train, test, SimCLRAugment(SIZE), val=val, run_dir=tmp_path
    )
    # The pretrained network is untouched by either protocol (BN statistics included).
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    n = len(labelled_subset(train.labels, 0.5, 0))  # half of each class
    assert probe["fit_images"] == tuned["fit_images"] == n and 120 < n < 136
    assert {"top1", "top5", "val_top1", "knn_top1"} <= set(probe)
    assert {"top1", "top5", "val_top1"} <= set(tuned) and tuned["protocol"] == "finetune"
    state = torch.load(tmp_path / EVAL_FOLDER / tuned["eval_id"] / STATE, weights_only=True)
    weights = state["model"]
    moved = [k for k, v in before.items() if k.startswith("encoder.") and v.is_floating_point()]
    assert all(not torch.equal(weights[k], before[k]) for k in moved if k.endswith("weight"))
    # SimCLRv2: from the projection's first layer, which moves too
    assert not torch.equal(weights["first.0.weight"], before["head.fc1.weight"])
    # The recipe reached the optimizer: Nesterov 0.9, no weight decay, lr x B/256 on the
    # cosine schedule without warmup, B = 32 (capped at the subset only above 128).
    (group,) = state["optimizer"]["param_groups"]
    total = n * 4 // 32 + 1
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.9, True, 0.0)
    assert group["lr"] == warmup_cosine(total - 1, total, 0, 0.4 * 32 / 256)
    assert state["step"] == total


def _tune_child(folder: str) -> None:
    torch.set_num_threads(1)
    _evaluate(_spec([{"protocol": "finetune", "finetune": {**TUNE, "epochs": 30}}]), Path(folder))


@pytest.mark.slow
def test_a_finetune_killed_half_way_resumes_bit_identically(tmp_path: Path) -> None:
    """SIGKILL after a fine-tuning checkpoint: the next evaluation resumes from it and
    ends with the weights of a fine-tune that was never interrupted, to the bit."""
    spec = _spec([{"protocol": "finetune", "finetune": {**TUNE, "epochs": 30}}])
    inside = Path(EVAL_FOLDER) / spec.evaluations()[0]["eval_id"] / STATE
    state = tmp_path / "killed" / inside
    child = multiprocessing.get_context("spawn").Process(
        target=_tune_child, args=(str(tmp_path / "killed"),)
    )
    child.start()
    deadline = time.monotonic() + 300
    while not state.exists() and child.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert child.is_alive(), "the fine-tune ended before it could be killed"
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    step = torch.load(state, weights_only=True)["step"]
    total = 256 * 30 // 32 + 1
    assert 0 < step < total
    torch.set_num_threads(1)
    resumed = _evaluate(spec, tmp_path / "killed")
    whole = _evaluate(spec, tmp_path / "whole")
    assert resumed == whole
    a = torch.load(state, weights_only=True)
    b = torch.load(tmp_path / "whole" / inside, weights_only=True)
    assert a["step"] == b["step"] == total
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())


def _rank_worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    distributed.init_distributed("cpu")
    spec = _spec([{"protocol": "finetune", "finetune": TUNE, "label_fraction": 0.25}])
    results = _evaluate(spec, Path(out) / "ranks")
    rows = labelled_subset(_parts()[1].labels, 0.25, spec.seed)
    torch.save({"results": results, "rows": rows}, Path(out) / f"rank{rank}.pt")
    distributed.cleanup()


def test_two_gloo_ranks_finetune_as_one_process(tmp_path: Path) -> None:
    ranks = spawn_ranks(_rank_worker, tmp_path)
    spec = _spec([{"protocol": "finetune", "finetune": TUNE, "label_fraction": 0.25}])
    one = _evaluate(spec, tmp_path / "one")
    rows = labelled_subset(_parts()[1].labels, 0.25, spec.seed)
    for res in ranks:
        assert torch.equal(res["rows"], rows)  # the same subset on every rank
        assert res["results"] == one
    folder = spec.evaluations()[0]["eval_id"]
    a = torch.load(tmp_path / "ranks" / EVAL_FOLDER / folder / STATE, weights_only=True)
    b = torch.load(tmp_path / "one" / EVAL_FOLDER / folder / STATE, weights_only=True)
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())


# -- the trainer -----------------------------------------------------------------------------


def _tiny(method: str, **fields: object) -> RunSpec:
    config: dict = {"batch_size": 32, "epochs": 2, "lr_rule": "sqrt", "warmup_epochs": 1.0}
    if method == "simclr":
        config.update(projection_dim=16, eval={"protocol": "features", "epochs": 3})
    return RunSpec.from_dict(
        {
            "method": method,
            "dataset": {"name": "synthetic", "image_size": 16, "size": 192},
            "model": {"depth": 10, "width": 0.25, "stem": "cifar"},
            "seed": 3,
            "config": config,
            **fields,
        }
    )


def test_supervised_trains_on_its_fraction_and_added_evaluations_never_retrain(
    tmp_path: Path,
) -> None:
    sup = run(_tiny("supervised", label_fraction=0.1), tmp_path / "sup", threads=1)
    (only,) = sup["evaluations"]
    assert only["label_fraction"] == 0.1 and only["protocol"] == "own_head"
    labelled = load_dataset("synthetic", image_size=16, num_images=192)
    kept, _ = validation_rows(labelled.labels, 0.1)  # the held-out tenth: never trained on
    n_full = len(kept)
    n_sub = len(labelled_subset(labelled.labels[kept], 0.1, 3))
    assert n_sub < 32 and n_sub < n_full // 5
    # repeated to fill a batch of 32, and as many steps as on every label: epochs x
    # n_full / (2 n_sub) epochs of the repeated subset, each with a step
    repeats = math.ceil(32 / n_sub)
    assert sup["epochs"] == math.ceil(2 * n_full / (repeats * n_sub))
    assert sup["steps"] == repeats * n_sub * sup["epochs"] // 32 + 1 >= n_full * 2 // 32 + 1
    losses = [r["loss"] for r in read_jsonl(tmp_path / "sup" / METRICS)]
    assert len(losses) == sup["epochs"] and all(loss > 0 for loss in losses)
    simclr = _tiny("simclr")
    first = run(simclr, tmp_path / "simclr", threads=1)
    metrics = (tmp_path / "simclr" / METRICS).read_text()
    added = {"protocol": "features", "epochs": 3, "label_fraction": 0.1}
    evals = [*[_plain(e) for e in simclr.evaluations()], added]
    more = RunSpec.from_dict({**simclr.to_dict(), "evals": evals})
    assert more.run_id == simclr.run_id
    assert missing_evaluations(more, read_json(tmp_path / "simclr" / RESULT)) == [
        more.evaluations()[1]["eval_id"]
    ]
    done = tmp_path / "simclr" / EVAL_FOLDER / first["eval_id"] / RESULT
    stamp = done.stat().st_mtime_ns
    again = run(more, tmp_path / "simclr", threads=1)
    assert (tmp_path / "simclr" / METRICS).read_text() == metrics  # not trained again
    assert done.stat().st_mtime_ns == stamp  # the first evaluation not made again
    assert [e["label_fraction"] for e in again["evaluations"]] == [1.0, 0.1]
    assert again["top1"] == first["top1"] and not missing_evaluations(more, again)
    assert again["evaluations"][1]["fit_images"] < first["evaluations"][0]["fit_images"]


def _plain(evaluation: dict) -> dict:
    return {k: v for k, v in evaluation.items() if k != "eval_id"}


# -- the report --------------------------------------------------------------------------------


def _row(i: int, method: str, width: float, seed: int, fraction: float, top1: float) -> dict:
    return {
        "run_id": f"{method}-{width}-{seed}-{fraction}",
        "sweep": "t",
        "method": method,
        "dataset": "digits",
        "image_size": 8,
        "stem": "cifar",
        "depth": 10,
        "width": width,
        "depth_multiplier": 1.0,
        "seed": seed,
        "batch_size": 128,
        "epochs": 20,
        "encoder_params": int(1e5 * width * width),
        "train_flops": 1e12 * width,
        "state": "finished",
        "top1": top1,
        "val_top1": top1,
        "label_fraction": fraction,
        "eval_protocol": "finetune" if method == "simclr" else "own_head",
    }


def _sweep_rows(change: float, noise: float, rng: np.random.Generator) -> list[dict]:
    """Supervised 0.9 with every label, 0.5 at 1%; SimCLR 0.85 with every label, and at
    1% 0.55 at width 0.25 rising by `change` points at width 1 (the truth), 3 seeds."""
    rows = []
    for width, share in ((0.25, 0.0), (0.5, 0.5), (1.0, 1.0)):
        for seed in range(3):
            for fraction, sup, sim in ((1.0, 0.9, 0.85), (0.01, 0.5, 0.55 + share * change / 100)):
                draw = rng.normal(0, noise / 100, 2)
                rows.append(_row(0, "supervised", width, seed, fraction, sup + draw[0]))
                rows.append(_row(0, "simclr", width, seed, fraction, sim + draw[1]))
    return rows


def test_per_fraction_gaps_and_the_trend_on_synthetic_runs() -> None:
    from scaling.report import gaps, labels
    from scaling.report.results import to_table

    rows = _sweep_rows(change=8.0, noise=0.0, rng=np.random.default_rng(0))
    rows = [{**r, "top1": r["top1"] + 0.001 * r["seed"]} for r in rows]  # a spread
    gap = gaps.gap_table(to_table(rows))
    best = gap[gap["kind"] == "best"].set_index(["label_fraction", "width"])
    assert best.loc[(1.0, 0.25), "gap"] == pytest.approx(5.0)  # 90 - 85 with every label
    assert best.loc[(0.01, 0.25), "gap"] == pytest.approx(-5.0)  # SimCLR wins at 1%
    assert best.loc[(0.01, 1.0), "gap"] == pytest.approx(-13.0)
    (trend,) = labels.trends(gap)
    assert (trend.fraction, trend.change, trend.verdict) == (
        0.01,
        pytest.approx(8.0),
        "grows with size",
    )
    assert "At 1% of the labels, measured" in labels.answers(gap)[0]


@pytest.mark.slow
def test_the_report_answers_the_label_question_with_its_figure(tmp_path: Path) -> None:
    from scaling.report import gaps, labels
    from scaling.report.html import build_report
    from scaling.report.results import to_table

    rows = _sweep_rows(change=8.0, noise=0.0, rng=np.random.default_rng(0))
    rows = [{**r, "top1": r["top1"] + 0.001 * r["seed"]} for r in rows]
    gap = gaps.gap_table(to_table(rows))
    page = build_report(None, to_table(rows), tmp_path, n_boot=20)
    html = page.read_text()
    assert "Label efficiency" in html and "grows with size" in html
    assert (tmp_path / "figures" / "label_efficiency.png").exists()
    summary = json.loads((tmp_path / "fits.json").read_text())
    assert summary["label_efficiency"] == labels.answers(gap)
    assert set(summary["label_fraction_fits"]) == {"0.01"}
    assert not labels.reproduces_paper(gaps.frame(to_table(rows)))  # no overlay on digits


@pytest.mark.slow
def test_the_trend_verdict_holds_its_level_by_simulation() -> None:
    """No true change: 'grows' or 'shrinks' in about 10% of sweeps (a 90% interval); a
    true change of 6 points with 1.5 points of noise per run: 'grows' in most."""
    from scaling.report import gaps, labels
    from scaling.report.results import to_table

    rng = np.random.default_rng(1)

    def verdicts(change: float, n: int) -> list[str]:
        out = []
        for _ in range(n):
            gap = gaps.gap_table(to_table(_sweep_rows(change, 1.5, rng)))
            out.append(labels.trends(gap)[0].verdict)
        return out

    null = verdicts(0.0, 100)
    wrong = sum(v in ("grows with size", "shrinks with size") for v in null) / len(null)
    assert wrong < 0.2  # nominal 0.10; 100 draws: binomial sd 0.03
    assert sum(v == "grows with size" for v in verdicts(6.0, 30)) >= 22
