"""Linear evaluation: the probe sees only training data until it predicts; features
extracted on two gloo ranks, each its share, equal one process's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from scaling.models.resnet import build_network
from scaling.sweep.spec import RunSpec
from scaling.train import distributed
from scaling.train.augment import SimCLRAugment
from scaling.train.evaluate import data_features, evaluate_run, linear_probe
from scaling.train.readers import load_dataset
from tests.test_data import write_photos
from tests.test_distributed import WORLD, spawn_ranks

CONFIG = {"batch_size": 64, "lr": 1.0, "weight_decay": 0.0, "epochs": 30}


def _data() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(400) % 2
    x = torch.randn(400, 4, generator=g) * 0.3
    x[:, 0] += torch.where(y == 1, 2.0, -2.0)
    test_x = torch.randn(100, 4, generator=g) * 0.3
    test_x[:, 0] += 2.0  # every test image is of class 1: its mean is not the training mean
    test_x[:, 1] = 0.0  # and one feature is constant on the test set (std 0)
    return x, y, test_x, torch.ones(100, dtype=torch.long)


@pytest.mark.parametrize("augmented", [False, True])
def test_features_are_standardised_with_training_statistics(augmented: bool) -> None:
    # The test set's statistics must not shape training: scaled by the test set's std
    # (0 in one feature) the training features would blow up and the probe diverge.
    x, y, test_x, test_y = _data()
    augment = (lambda images, gen: images) if augmented else None
    top = linear_probe(x, y, test_x, test_y, 2, CONFIG, seed=0, augment_features=augment)
    assert top[1] > 0.98


# -- sharded across ranks ------------------------------------------------------------------

SIZE = 32


def _spec(root: Path) -> RunSpec:
    return RunSpec.from_dict(
        {
            "method": "simclr",
            "dataset": {"name": "imagefolder", "image_size": SIZE, "root": str(root)},
            "model": {"depth": 10, "width": 0.25, "stem": "cifar"},
            "seed": 0,
            "config": {
                "batch_size": 8,
                "projection_dim": 16,
                "eval": {"epochs": 2, "protocol": "augmented", "batch_size": 8},
            },
        }
    )


def _evaluate(root: Path) -> dict:
    """Features of an odd-sized in-memory set, and evaluate_run on an image folder."""
    torch.manual_seed(0)
    net = build_network("simclr", depth=10, width=0.25, stem="cifar", projection_dim=16)
    aug = SimCLRAugment(SIZE)
    synthetic = load_dataset("synthetic", image_size=SIZE, num_images=37)
    feats, labels = data_features(
        net.encoder, synthetic, aug.eval_transform, torch.device("cpu"), batch_size=8
    )
    train = load_dataset("imagefolder", root=root, image_size=SIZE, max_cache_bytes=0)
    test = load_dataset("imagefolder", root=root, image_size=SIZE, split="test")
    result = evaluate_run(_spec(root), net, train, test, aug)
    return {"feats": feats, "labels": labels, "result": result, "decoded": train.decoded}


def _worker(rank: int, port: int, root: str, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    distributed.init_distributed("cpu")
    torch.save(_evaluate(Path(root)), Path(out) / f"rank{rank}.pt")
    distributed.cleanup()


def test_sharded_evaluation_equals_one_process(tmp_path: Path) -> None:
    write_photos(tmp_path / "photos", per_class=5, classes=2)  # 10 images: 5 per rank
    ranks = spawn_ranks(_worker, tmp_path, str(tmp_path / "photos"))
    one = _evaluate(tmp_path / "photos")
    assert one["feats"].shape[0] == 37 and torch.equal(one["labels"], ranks[0]["labels"])
    for res in ranks:
        torch.testing.assert_close(res["feats"], one["feats"], atol=1e-5, rtol=1e-5)
        assert res["result"].keys() == one["result"].keys()
        for key, value in one["result"].items():
            assert res["result"][key] == pytest.approx(value, abs=0.1 + 1e-9), key  # 1 of 10
    # Each rank decoded its half of the evaluations of the training images: the feature
    # pass and the augmented protocol's 2 epochs (one process: all 10, three times).
    assert one["decoded"] == 30 and [r["decoded"] for r in ranks] == [15, 15]
