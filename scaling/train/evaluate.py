"""Evaluation: linear evaluation of a frozen encoder, kNN top-1, classifier top-k.

Linear evaluation never changes the encoder: it runs in eval mode under no_grad (BN
running statistics untouched) and only the linear layer's parameters are optimised.
The default `features` protocol extracts features once and fits the classifier on
them; `augmented` is the paper's protocol (crop + flip every epoch).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scaling.sweep.methods import MONITOR_TEST, MONITOR_TRAIN, Evaluation, get_method
from scaling.sweep.spec import RunSpec
from scaling.train import distributed as dist
from scaling.train.augment import CropFlipAugment, SimCLRAugment
from scaling.train.data import shard_range

Transform = Callable[[Tensor], Tensor]


@torch.no_grad()
def extract_features(
    encoder: nn.Module, images: Tensor, transform: Transform, batch_size: int = 512
) -> Tensor:
    """Features of uint8 `images` (on the encoder's device) in eval mode."""
    was_training = encoder.training
    encoder.eval()
    try:
        chunks = [
            encoder(transform(images[i : i + batch_size])).float()
            for i in range(0, len(images), batch_size)
        ]
    finally:
        encoder.train(was_training)
    return torch.cat(chunks)


def topk_accuracy(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Fraction of rows whose label is among the k highest logits (k capped at classes)."""
    out = {}
    for k in ks:
        k_eff = min(k, logits.shape[1])
        hits = (logits.topk(k_eff, dim=1).indices == labels[:, None]).any(dim=1)
        out[k] = hits.float().mean().item()
    return out


def linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    num_classes: int,
    config: Mapping[str, Any],
    seed: int,
    augment_features: Callable[[Tensor, torch.Generator], Tensor] | None = None,
) -> dict[int, float]:
    """Fit a linear classifier (SGD, Nesterov momentum, cosine LR) and return test top-k.

    With `augment_features`, train_x holds images (uint8) and each epoch computes
    features of freshly augmented views (the paper's protocol); otherwise train_x holds
    features computed once. Features are standardised with the training mean and std
    (a BN without affine parameters in front of the linear layer).
    """
    device = train_x.device
    gen = torch.Generator(device=device).manual_seed(seed)
    feature_dim = test_x.shape[1]
    head = nn.Linear(feature_dim, num_classes).to(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        nn.init.normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)
    batch = min(int(config["batch_size"]), len(train_y))
    lr = float(config["lr"]) * batch / 256  # linear scaling rule, as in the paper's B.6
    opt = torch.optim.SGD(
        head.parameters(),
        lr=lr,
        momentum=0.9,
        nesterov=True,
        weight_decay=float(config["weight_decay"]),
    )
    epochs = int(config["epochs"])
    steps_per_epoch = max(1, len(train_y) // batch)
    total = epochs * steps_per_epoch
    mean = std = None
    step = 0
    for _ in range(epochs):
        feats = train_x if augment_features is None else augment_features(train_x, gen)
        if mean is None:  # the training features' statistics (augmented: the first epoch's)
            mean, std = feats.mean(0), feats.std(0) + 1e-6
        order = torch.randperm(len(train_y), generator=gen, device=device)
        for i in range(steps_per_epoch):
            idx = order[i * batch : (i + 1) * batch]
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(head((feats[idx] - mean) / std), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    with torch.no_grad():
        return topk_accuracy(head((test_x - mean) / std), test_y)


@torch.no_grad()
def knn_top1(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    num_classes: int,
    k: int,
    temperature: float,
) -> float:
    """Weighted kNN on cosine similarity (Wu et al. 2018): votes exp(sim / temperature)."""
    train_n = F.normalize(train_x, dim=1)
    test_n = F.normalize(test_x, dim=1)
    k = min(k, len(train_y))
    correct = 0
    for i in range(0, len(test_y), 1024):
        sim = test_n[i : i + 1024] @ train_n.T
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(len(top_idx), num_classes, device=train_x.device)
        votes.scatter_add_(1, train_y[top_idx], weights)
        correct += (votes.argmax(1) == test_y[i : i + 1024]).sum().item()
    return correct / len(test_y)


class _Subset:
    """The first `n` images of a data set in a fixed order (anything with `batch`)."""

    def __init__(self, data: Any, n: int, seed: int = 0) -> None:
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
        self.data, self.indices = data, order[: min(n, len(data))].sort().values
        self.num_classes = data.num_classes

    def __len__(self) -> int:
        return len(self.indices)

    def batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        return self.data.batch(self.indices[idx.cpu()])


def knn_monitor(
    encoder: nn.Module, train: Any, test: Any, aug: SimCLRAugment, config: Mapping[str, Any]
) -> float:
    """kNN top-1 of the encoder on fixed subsets (the online monitor). Draws nothing from
    any generator and runs the encoder in eval mode, so training is unchanged by it.
    Every rank calls it (the features are sharded); every rank gets the same answer."""
    device = next(encoder.parameters()).device
    tr, te = _Subset(train, MONITOR_TRAIN), _Subset(test, MONITOR_TEST, seed=1)
    train_f, train_y = data_features(encoder, tr, aug.eval_transform, device)
    test_f, test_y = data_features(encoder, te, aug.eval_transform, device)
    labelled = train_y >= 0
    return knn_top1(
        train_f[labelled],
        train_y[labelled],
        test_f,
        test_y,
        train.num_classes,
        int(config["knn_k"]),
        float(config["knn_temperature"]),
    )


def evaluate_run(
    spec: RunSpec, net: nn.Module, train: Any, test: Any, aug: SimCLRAugment
) -> dict[str, Any]:
    """The evaluation the run's method names (EVALUATIONS): top1 and top5, and what else
    that evaluation measures.

    `train` and `test` are in-memory or image-folder data sets (anything with
    `batch(indices)` and `len`): images are read in chunks, so a folder larger than
    memory works too. Every rank of a multi-rank run calls it: each extracts the features
    of its share of the images, all ranks gather them and fit the same probe.
    """
    evaluation = EVALUATIONS[get_method(spec.method).evaluation]
    return evaluation(spec, net, train, test, aug)


def _own_head(
    spec: RunSpec, net: nn.Module, train: Any, test: Any, aug: SimCLRAugment
) -> dict[str, Any]:
    """Top-1/top-5 of the trained classifier on the test split."""
    device = next(net.parameters()).device
    logits, labels = data_features(net, test, aug.eval_transform, device)
    acc = topk_accuracy(logits, labels)
    return {"top1": acc[1], "top5": acc[5]}


def _frozen_encoder(
    spec: RunSpec, net: nn.Module, train: Any, test: Any, aug: SimCLRAugment
) -> dict[str, Any]:
    """Linear evaluation (top-1/top-5, EvalConfig.protocol), kNN top-1 and a validation
    top-1 for recipe selection, of the frozen encoder (`net.encoder`)."""
    device = next(net.parameters()).device
    cfg = spec.config["eval"]
    encoder = net.encoder
    train_f, train_y = data_features(encoder, train, aug.eval_transform, device)
    test_f, test_y = data_features(encoder, test, aug.eval_transform, device)
    labelled = train_y >= 0  # unlabeled images (STL-10's) have label -1
    train_f, train_y = train_f[labelled], train_y[labelled]
    knn = knn_top1(
        train_f,
        train_y,
        test_f,
        test_y,
        train.num_classes,
        int(cfg["knn_k"]),
        float(cfg["knn_temperature"]),
    )
    augment = None
    if cfg["protocol"] == "augmented":
        crop_flip = CropFlipAugment(spec.dataset["image_size"], style=aug.style)

        def augment(_: Tensor, g: torch.Generator) -> Tensor:
            views = _augmented_views(train, crop_flip, g, device)
            feats, _labels = data_features(encoder, train, None, device, views=views)
            return feats[labelled]

    acc = linear_probe(train_f, train_y, test_f, test_y, train.num_classes, cfg, spec.seed, augment)
    # For choosing among recipes without looking at the test set: the same (fast,
    # feature) probe fitted on the training split less a held-out tenth, scored there.
    result = {"top1": acc[1], "top5": acc[5], "knn_top1": knn}
    if len(train_y) >= 2:
        fit, val = validation_split(len(train_y))
        val_acc = linear_probe(
            train_f[fit],
            train_y[fit],
            train_f[val],
            train_y[val],
            train.num_classes,
            cfg,
            spec.seed,
        )
        result["val_top1"] = val_acc[1]
    return result


#: how a trained network is scored, for each evaluation a method names
EVALUATIONS: dict[
    Evaluation, Callable[[RunSpec, nn.Module, Any, Any, SimCLRAugment], dict[str, Any]]
] = {
    Evaluation.FROZEN_ENCODER: _frozen_encoder,
    Evaluation.OWN_HEAD: _own_head,
}


def _augmented_views(
    data: Any, aug: SimCLRAugment, g: torch.Generator, device: torch.device
) -> Callable[[Tensor], Tensor]:
    """Crop + flip views of the images at given indices, with parameters drawn for the
    whole set at once (so every rank, whatever its share, draws the same). An image
    folder's crops come from the original images, as in training."""
    folder = getattr(data, "decodes_on_cpu", False)
    size = None if folder else data.image_size
    params = aug.sample_params(len(data), size, size, g)

    def views(idx: Tensor) -> Tensor:
        p = params.rows(idx.to(params.flip.device))
        if folder:
            images = data.crops(idx, [p.crop_draws], aug)[0]
        else:
            images, _ = data.batch(idx)
        return aug.apply(images.to(device), p)

    return views


VALIDATION_FRACTION = 0.1
VALIDATION_SEED = 0  # the same held-out images for every run, seed and recipe


def validation_split(n: int, fraction: float = VALIDATION_FRACTION) -> tuple[Tensor, Tensor]:
    """(fit, val) indices into the labelled training images: a fixed random tenth held
    out (at least one image each side). The test split is never involved."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(VALIDATION_SEED))
    held = min(n - 1, max(1, round(fraction * n)))
    return order[held:].sort().values, order[:held].sort().values


def data_features(
    model: nn.Module,
    data: Any,
    transform: Transform | None,
    device: torch.device,
    batch_size: int = 512,
    views: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Outputs of `model` (eval mode, no grad) on every image of `data`, in order, and labels.

    The input of images `idx` is `transform(data.batch(idx) images)`, or `views(idx)`.
    Sharded: each rank runs its contiguous share of the images (`data.shard_range`) and
    all ranks gather the whole (one process: the whole set).
    """
    n = len(data)
    start, stop = shard_range(n, dist.rank(), dist.world_size())

    def inputs(idx: Tensor) -> tuple[Tensor, Tensor]:
        if views is not None:
            return views(idx), _labels(data, idx)
        images, y = data.batch(idx)
        return transform(images.to(device)), y  # type: ignore[misc]

    was_training = model.training
    model.eval()
    outputs, labels = [], []
    try:
        with torch.no_grad():
            # A rank without images (fewer images than ranks) runs one for the shape.
            chunks = [
                torch.arange(a, min(stop, a + batch_size)) for a in range(start, stop, batch_size)
            ] or [torch.arange(1)]
            for idx in chunks:
                x, y = inputs(idx)
                rows = len(idx) if start < stop else 0
                outputs.append(model(x).float()[:rows])
                labels.append(y.to(device)[:rows])
    finally:
        model.train(was_training)
    return dist.all_gather_rows(torch.cat(outputs), n), dist.all_gather_rows(torch.cat(labels), n)


def _labels(data: Any, idx: Tensor) -> Tensor:
    if isinstance(data, _Subset):
        return _labels(data.data, data.indices[idx])
    return data.labels[idx.to(data.labels.device)]
