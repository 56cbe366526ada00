"""Linear evaluation: the official probe (a reference written from the official code's
update rule), features that never all sit on the device (a run over its device budget
equals the in-memory one, its peak measured by the profiler), an evaluation killed
half-way that resumes, and features extracted on two gloo ranks, each its share, that
equal one process's."""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from scaling.models.resnet import build_network
from scaling.sweep.spec import RunSpec
from scaling.train import distributed
from scaling.train.augment import SimCLRAugment
from scaling.train.data import stream_batches
from scaling.train.evaluate import data_features, evaluate_run
from scaling.train.features import CHUNK_ROWS
from scaling.train.probe import fit_probe, topk_accuracy
from scaling.train.readers import load_dataset
from tests.test_data import write_photos
from tests.test_distributed import WORLD, spawn_ranks

CONFIG = {"batch_size": 64, "lr": 1.0, "weight_decay": 1e-3, "epochs": 3}


def _data() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(400) % 2
    x = torch.randn(400, 4, generator=g) * 0.3
    x[:, 0] += torch.where(y == 1, 2.0, -2.0)
    test_x = torch.randn(100, 4, generator=g) * 0.3
    test_x[:, 0] += 2.0  # every test image is of class 1: its mean is not the training mean
    test_x[:, 1] = 0.0  # and one feature is constant on the test set (std 0)
    return x, y, test_x, torch.ones(100, dtype=torch.long)


def _official_probe(x: torch.Tensor, y: torch.Tensor, config: dict, seed: int) -> torch.Tensor:
    """The official linear evaluation written from its source: `linear_layer` zero-
    initialised (`zero_init_logits_layer`), `tf.train.MomentumOptimizer(lr, 0.9,
    use_nesterov=True)` whose update is accum = m accum + g; var -= lr (g + m accum), the
    L2 loss `weight_decay * tf.nn.l2_loss(w)` (gradient weight_decay x w, bias included:
    `add_weight_decay` skips only batch norm), `learning_rate_scaling=linear` (lr x B/256),
    no warmup, `tf.train.cosine_decay` over `N x E // B + 1` steps (model_util.py)."""
    n, batch = len(y), config["batch_size"]
    total = n * config["epochs"] // batch + 1
    lr = config["lr"] * batch / 256
    w = torch.zeros(2, x.shape[1], dtype=torch.float64)
    b = torch.zeros(2, dtype=torch.float64)
    acc_w, acc_b = torch.zeros_like(w), torch.zeros_like(b)
    for step, idx in zip(range(total), stream_batches(n, batch, seed, range(total)), strict=True):
        xb, yb = x[idx].double(), y[idx]
        p = torch.softmax(xb @ w.T + b, dim=1)
        p[torch.arange(len(yb)), yb] -= 1
        g_w = p.T @ xb / len(yb) + config["weight_decay"] * w
        g_b = p.sum(0) / len(yb) + config["weight_decay"] * b
        rate = lr * 0.5 * (1 + math.cos(math.pi * step / total))
        for var, acc, g in ((w, acc_w, g_w), (b, acc_b, g_b)):
            acc.mul_(0.9).add_(g)
            var.sub_(rate * (g + 0.9 * acc))
    return torch.cat([w, b[:, None]], dim=1)


def test_the_probe_is_the_official_codes() -> None:
    x, y, _, _ = _data()
    probe = fit_probe(lambda idx, step: x[idx], y, 4, 2, CONFIG, 5, torch.device("cpu"))
    ours = torch.cat([probe.linear.weight, probe.linear.bias[:, None]], dim=1).double()
    torch.testing.assert_close(ours, _official_probe(x, y, CONFIG, 5), rtol=1e-4, atol=1e-6)


def test_features_are_standardised_only_when_asked_with_training_statistics() -> None:
    # The test set's statistics must not shape training: scaled by the test set's std
    # (0 in one feature) the training features would blow up.
    x, y, test_x, test_y = _data()
    moments = (x.mean(0), x.std(0))
    on = fit_probe(lambda i, s: x[i], y, 4, 2, CONFIG, 0, torch.device("cpu"), moments=moments)
    off = fit_probe(lambda i, s: x[i], y, 4, 2, CONFIG, 0, torch.device("cpu"))
    assert torch.allclose(on.mean, x.mean(0)) and torch.equal(off.mean, torch.zeros(4))
    with torch.no_grad():
        assert topk_accuracy(on(test_x), test_y)[1] > 0.98
        assert topk_accuracy(off(test_x), test_y)[1] > 0.98
        assert not torch.allclose(on(x), off(x))


# -- a device budget smaller than the features ----------------------------------------------

SMALL, TEST_IMAGES = 8, 1000
IMAGES = 2 * CHUNK_ROWS  # whole chunks: the transient buffers of a chunk are the same


def _budget_spec(protocol: str = "features", epochs: int = 2, images: int = IMAGES) -> RunSpec:
    return RunSpec.from_dict(
        {
            "method": "simclr",
            "dataset": {"name": "synthetic", "image_size": SMALL, "size": images},
            "model": {"depth": 10, "width": 0.25},
            "seed": 0,
            "config": {
                "batch_size": 64,
                "projection_dim": 16,
                "eval": {"protocol": protocol, "epochs": epochs, "batch_size": 256},
            },
        }
    )


def _budget_parts(images: int = IMAGES) -> tuple:
    torch.manual_seed(0)
    net = build_network("simclr", depth=10, width=0.25, stem="cifar", projection_dim=16)
    train = load_dataset("synthetic", image_size=SMALL, num_images=images)
    val = load_dataset("synthetic", image_size=SMALL, num_images=300, seed=1)
    test = load_dataset("synthetic", image_size=SMALL, split="test", num_images=TEST_IMAGES)
    return net, train, val, test


def _peak_bytes(fn):  # noqa: ANN001, ANN202
    """fn()'s result and the peak of the bytes torch's CPU allocator held while it ran
    (allocations and frees as the profiler records them, in time order)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    events = sorted(
        (e.time_range.start, e.self_cpu_memory_usage)
        for e in prof.profiler.function_events
        if e.self_cpu_memory_usage
    )
    held = peak = 0
    for _, change in events:
        held += change
        peak = max(peak, held)
    return out, peak


@pytest.mark.slow
def test_features_over_the_device_budget_stream_and_give_the_same_result(tmp_path: Path) -> None:
    """A budget (64 kB) below the training features' size: they stay in the memory-mapped
    store in the run directory and reach the device a chunk at a time, so what evaluation
    holds does not grow with the training set (the profiler's peak of the allocator), as
    it does with room for them; the result is the same to the bit either way."""
    peaks, results = {}, {}
    for images in (IMAGES, 2 * IMAGES):
        spec, (net, train, val, test) = _budget_spec(images=images), _budget_parts(images)
        for budget in (1 << 30, 64 << 10):
            folder = tmp_path / f"{images}-{budget}"
            parts = (spec, net, train, test, SimCLRAugment(SMALL))
            results[images, budget], peaks[images, budget] = _peak_bytes(
                lambda p=parts, v=val, f=folder, b=budget: evaluate_run(
                    *p, val=v, run_dir=f, batch=64, budget_bytes=b
                )
            )
        assert results[images, 64 << 10] == results[images, 1 << 30]
        assert {"top1", "top5", "knn_top1", "val_top1"} <= set(results[images, 1 << 30])
        stored = folder / "eval" / "train.part0of1.npy"
        assert stored.stat().st_size >= images * int(net.encoder.num_features) * 4
    extra = IMAGES * int(net.encoder.num_features) * 4  # the larger set's extra features
    assert peaks[2 * IMAGES, 1 << 30] - peaks[IMAGES, 1 << 30] >= extra  # a copy on the device
    assert peaks[2 * IMAGES, 64 << 10] - peaks[IMAGES, 64 << 10] < 0.1 * extra  # none


# -- killed during evaluation -----------------------------------------------------------------


def _evaluate_in(folder: str) -> dict:
    torch.set_num_threads(1)
    net, train, val, test = _budget_parts()
    spec = _budget_spec("augmented", epochs=6)
    return evaluate_run(
        spec, net, train, test, SimCLRAugment(SMALL), val=val, run_dir=Path(folder), batch=64
    )


def _evaluate_child(folder: str) -> None:
    _evaluate_in(folder)


@pytest.mark.slow
def test_an_evaluation_killed_half_way_resumes_where_it_stopped(tmp_path: Path) -> None:
    """SIGKILL after the probe's first checkpoint: the next evaluation reads the stored
    features and the probe's state instead of starting over, and ends with the result
    of an evaluation that was never interrupted."""
    child = multiprocessing.get_context("spawn").Process(
        target=_evaluate_child, args=(str(tmp_path / "killed"),)
    )
    child.start()
    probe = tmp_path / "killed" / "eval" / "probe.pt"
    deadline = time.monotonic() + 300
    while not probe.exists() and child.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert child.is_alive(), "the evaluation ended before it could be killed"
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    stored = {p: p.stat().st_mtime_ns for p in (tmp_path / "killed" / "eval").glob("*.npy")}
    step = torch.load(probe, weights_only=True)["step"]
    assert stored and step > 0
    resumed = _evaluate_in(str(tmp_path / "killed"))
    assert {p: p.stat().st_mtime_ns for p in stored} == stored  # not extracted again
    assert resumed == _evaluate_in(str(tmp_path / "whole"))


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


def _evaluate(root: Path, out: Path) -> dict:
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
    result = evaluate_run(_spec(root), net, train, test, aug, run_dir=out)
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
    torch.save(_evaluate(Path(root), Path(out) / "ranks"), Path(out) / f"rank{rank}.pt")
    distributed.cleanup()


def test_sharded_evaluation_equals_one_process(tmp_path: Path) -> None:
    write_photos(tmp_path / "photos", per_class=5, classes=2)  # 10 images: 5 per rank
    ranks = spawn_ranks(_worker, tmp_path, str(tmp_path / "photos"))
    one = _evaluate(tmp_path / "photos", tmp_path / "one")
    assert one["feats"].shape[0] == 37 and torch.equal(one["labels"], ranks[0]["labels"])
    for res in ranks:
        torch.testing.assert_close(res["feats"], one["feats"], atol=1e-5, rtol=1e-5)
        assert res["result"].keys() == one["result"].keys()
        for key, value in one["result"].items():
            assert res["result"][key] == pytest.approx(value, abs=0.1 + 1e-9), key  # 1 of 10
    # Each rank decoded its half of the evaluations of the training images: the feature
    # pass (10) and the augmented probe's 10 x 2 // 8 + 1 = 3 steps of 8 crops.
    assert one["decoded"] == 34 and [r["decoded"] for r in ranks] == [17, 17]
