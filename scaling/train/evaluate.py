"""Evaluation: linear evaluation of a frozen encoder, kNN top-1, classifier top-k.

Linear evaluation never changes the encoder: it runs in eval mode under no_grad (BN
running statistics untouched) and only the probe's parameters are optimised
(`scaling.train.probe`: the official code's probe). The default `augmented` protocol
forwards freshly cropped and flipped views of a batch at every probe step, as the
official code; `features` fits the same probe on features extracted once.

Nothing here holds all of a split's features on the accelerator: they are written to a
store on the host (`scaling.train.features`: memory-mapped in the run directory, at the
training precision) and read back in chunks, or copied to the device when they fit the
evaluation's device budget; the result is the same either way. The probe is fitted on
the labelled training images the run trained on (STL-10's 100,000 unlabelled images are
neither forwarded nor stored), scored on the test split and on the held-out validation
share (`val_top1`, for choosing among recipes). A killed evaluation resumes: finished
stores and the probe's checkpoint are kept until the result is written.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from scaling.rundir import RESULT, read_json, write_json
from scaling.sweep.methods import (
    MONITOR_TEST,
    MONITOR_TRAIN,
    Evaluation,
    Protocol,
    get_method,
)
from scaling.sweep.spec import RunSpec
from scaling.train import distributed as dist
from scaling.train.augment import CropFlipAugment, SimCLRAugment
from scaling.train.data import label_rows, listed_note, shard_range, subset
from scaling.train.features import DeviceBudget, FeatureReader, FeatureStore, knn_top1
from scaling.train.finetune import finetune
from scaling.train.probe import Features, Probe, fit_probe, topk_counts

Transform = Callable[[Tensor], Tensor]
#: the device budget for features when the caller names none: on CUDA this share of the
#: memory free when evaluation starts, elsewhere (host memory) CPU_BUDGET_BYTES
CUDA_BUDGET_SHARE = 0.5
CPU_BUDGET_BYTES = 2 << 30


@dataclass
class EvalPlace:
    """Where evaluation works: its folder (feature stores, the probe's checkpoint), the
    device, images per forward, the device budget for features, the stored precision and
    a token naming the trained network (stores of another network are not reused)."""

    folder: Path
    device: torch.device
    batch: int
    budget: DeviceBudget
    dtype: torch.dtype = torch.float32
    token: str = ""

    def store(self, name: str, n: int, dim: int) -> FeatureStore:
        return FeatureStore(self.folder, name, n, dim, self.dtype, self.token)


def default_budget(device: torch.device) -> int:
    """Bytes of features evaluation may keep on `device` (CUDA_BUDGET_SHARE of free memory)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        return int(CUDA_BUDGET_SHARE * torch.cuda.mem_get_info(device)[0])
    return CPU_BUDGET_BYTES


def evaluate_run(
    spec: RunSpec,
    net: nn.Module,
    train: Any,
    test: Any,
    aug: SimCLRAugment,
    *,
    val: Any = None,
    run_dir: Path | None = None,
    batch: int = 512,
    budget_bytes: int | None = None,
    precision: str = "fp32",
    token: str = "",
) -> list[dict[str, Any]]:
    """Every evaluation of the run (`RunSpec.evaluations`: protocol x label fraction),
    each by the evaluation its method names (EVALUATIONS): top1 and top5, val_top1 on the
    held-out `val` images (when given), and what else that evaluation measures, with its
    `eval_id`, `protocol` and `label_fraction`.

    `train`, `val` and `test` are in-memory or image-folder data sets (anything with
    `batch(indices)`, `labels` and `len`): images are read `batch` at a time. Every rank
    of a multi-rank run calls it: each extracts its share of the features. Each
    evaluation works in `run_dir/evals/<eval_id>/` (stores, the probe's or fine-tune's
    checkpoint) and leaves its result.json there: one done before for this network
    (`token`) is read back, never made again, so adding an evaluation to a finished run
    makes only that one (a temporary folder without a run directory).
    """
    device = next(net.parameters()).device
    budget = DeviceBudget(default_budget(device) if budget_bytes is None else budget_bytes)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    evaluation = EVALUATIONS[get_method(spec.method).evaluation]
    results = []
    with contextlib.ExitStack() as stack:
        if run_dir is None:
            if dist.world_size() > 1:
                raise ValueError("a multi-rank evaluation needs a run directory its ranks share")
            base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="eval-")))
        else:
            base = Path(run_dir) / EVAL_FOLDER
        for item in spec.evaluations():
            folder = base / item["eval_id"]
            done = read_json(folder / RESULT)
            if done is not None and done.get("token") == token:
                results.append({k: v for k, v in done.items() if k != "token"})
                continue
            place = EvalPlace(folder, device, batch, budget, dtype, token)
            scores = evaluation(spec, net, train, val, test, aug, place, item)
            out = {k: item[k] for k in ("eval_id", "protocol", "label_fraction")} | scores
            if dist.is_main():
                write_json(folder / RESULT, {**out, "token": token})
            dist.barrier()
            results.append(out)
    return results


EVAL_FOLDER = "evals"


def clean(run_dir: Path) -> None:
    """Remove what the run's evaluations kept to resume (feature stores, checkpoints),
    leaving each evaluation's result.json: once the run's result is written."""
    for folder in (Path(run_dir) / EVAL_FOLDER).glob("*"):
        for path in folder.iterdir() if folder.is_dir() else ():
            if path.name != RESULT:
                shutil.rmtree(path) if path.is_dir() else path.unlink()


def primary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The evaluation a run's result.json shows at its top level: the first on every
    label (the config's own `eval`), else the first."""
    return next((r for r in results if r["label_fraction"] == 1.0), results[0])


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode (batch norm on its running statistics), then as it was."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def _scores(
    model: nn.Module, data: Any, transform: Transform, place: EvalPlace
) -> dict[int, float]:
    """Top-1/top-5 of `model`'s logits on every image of `data` (each rank its share)."""
    n = len(data)
    start, stop = shard_range(n, dist.rank(), dist.world_size())
    counts = torch.zeros(2, dtype=torch.float64, device=place.device)
    with frozen(model):
        for a in range(start, stop, place.batch):
            images, labels = data.batch(torch.arange(a, min(stop, a + place.batch)))
            hits = topk_counts(
                model(transform(images.to(place.device))).float(), labels.to(place.device)
            )
            counts += torch.tensor([hits[1], hits[5]], dtype=torch.float64, device=place.device)
    dist.all_reduce_sum_(counts)
    return {1: float(counts[0]) / max(1, n), 5: float(counts[1]) / max(1, n)}


def _own_head(
    spec: RunSpec,
    net: nn.Module,
    train: Any,
    val: Any,
    test: Any,
    aug: SimCLRAugment,
    place: EvalPlace,
    item: Mapping[str, Any],
) -> dict[str, Any]:
    """Top-1/top-5 of the trained classifier on the test split, top-1 on the held-out share
    (it trained on its label fraction: `item` names it)."""
    acc = _scores(net, test, aug.eval_transform, place)
    result = {"top1": acc[1], "top5": acc[5]}
    if val is not None and len(val):
        result["val_top1"] = _scores(net, val, aug.eval_transform, place)[1]
    return result


def _stored(
    name: str, encoder: nn.Module, data: Any, transform: Transform, place: EvalPlace
) -> FeatureReader:
    """The features of every image of `data`, extracted (or found) in the store `name`."""
    store = place.store(name, len(data), int(encoder.num_features))

    def inputs(idx: Tensor) -> Tensor:
        return transform(data.batch(idx)[0].to(place.device))

    with frozen(encoder):
        store.write_share(encoder, inputs, place.batch, place.device)
    return store.reader()


def _frozen_encoder(
    spec: RunSpec,
    net: nn.Module,
    train: Any,
    val: Any,
    test: Any,
    aug: SimCLRAugment,
    place: EvalPlace,
    item: Mapping[str, Any],
) -> dict[str, Any]:
    """One evaluation of the pretrained encoder (`net.encoder`) on the class-balanced
    `label_fraction` of the labelled training images (`data.labelled_subset`): a linear
    probe on the frozen encoder (EvalConfig: features or augmented) with kNN top-1, or the
    encoder fine-tuned (`scaling.train.finetune`); top-1 on the held-out share for recipe
    selection."""
    cfg = item
    fraction = float(item["label_fraction"])
    listed = item.get("label_list")
    rows, dropped = label_rows(train, val, fraction, spec.seed, listed)
    note = {} if listed is None else listed_note(listed, len(rows), dropped, dist.is_main())
    fit = train if len(rows) == len(train) else subset(train, rows)
    if cfg["protocol"] == Protocol.FINETUNE:
        return {**_finetuned(spec, net, fit, val, test, aug, place, cfg, fraction), **note}
    encoder = net.encoder
    fit_y = fit.labels.cpu()
    fit_f = _stored("train", encoder, fit, aug.eval_transform, place)
    test_f = _stored("test", encoder, test, aug.eval_transform, place)
    fit_f.to_device(place.device, place.budget)  # when there is room: the probe's reads are local
    knn = knn_top1(
        fit_f,
        fit_y,
        test_f,
        test.labels.cpu(),
        train.num_classes,
        int(cfg["knn_k"]),
        float(cfg["knn_temperature"]),
        place.device,
        place.budget,
    )
    moments = fit_f.moments(place.device) if cfg.get("standardize") else None
    if cfg["protocol"] == Protocol.AUGMENTED:
        scale = (float(cfg["crop_min_scale"]), 1.0)  # the official probe: 0.08
        crop_flip = CropFlipAugment(int(fit.image_size), crop_scale=scale, style=aug.style)
        features = _augmented(encoder, fit, crop_flip, spec.seed, place)
    else:

        def features(idx: Tensor, step: int) -> Tensor:
            return fit_f.rows(idx, place.device)

    probe = fit_probe(
        features,
        fit_y,
        fit_f.dim,
        train.num_classes,
        cfg,
        spec.seed,
        place.device,
        moments=moments,
        state=place.folder / "probe.pt",
        token=place.token,
        save=dist.is_main(),
    )
    acc = _probe_scores(probe, test_f, test.labels.cpu(), place)
    result = {"top1": acc[1], "top5": acc[5], "knn_top1": knn, "fit_images": len(fit), **note}
    if val is not None and len(val):
        val_f = _stored("val", encoder, val, aug.eval_transform, place)
        result["val_top1"] = _probe_scores(probe, val_f, val.labels.cpu(), place)[1]
    return result


def _finetuned(
    spec: RunSpec,
    net: nn.Module,
    fit: Any,
    val: Any,
    test: Any,
    aug: SimCLRAugment,
    place: EvalPlace,
    cfg: Mapping[str, Any],
    fraction: float,
) -> dict[str, Any]:
    """The encoder fine-tuned on `fit` (`scaling.train.finetune`), scored like a trained
    classifier: top-1/top-5 on the test split, top-1 on the held-out share."""
    tuned = finetune(
        net,
        fit,
        cfg,
        fraction,
        spec.seed,
        place.device,
        folder=place.folder,
        token=place.token,
        save=dist.is_main(),
    )
    acc = _scores(tuned, test, aug.eval_transform, place)
    result = {"top1": acc[1], "top5": acc[5], "fit_images": len(fit)}
    if val is not None and len(val):
        result["val_top1"] = _scores(tuned, val, aug.eval_transform, place)[1]
    return result


@torch.no_grad()
def _probe_scores(
    probe: Probe, feats: FeatureReader, labels: Tensor, place: EvalPlace
) -> dict[int, float]:
    hits = {1: 0, 5: 0}
    labels = labels.to(place.device)
    for start, x in feats.chunks(place.device):
        for k, c in topk_counts(probe(x), labels[start : start + len(x)]).items():
            hits[k] += c
    return {k: c / max(1, feats.n) for k, c in hits.items()}


def _augmented(
    encoder: nn.Module, data: Any, crop_flip: SimCLRAugment, seed: int, place: EvalPlace
) -> Features:
    """The augmented protocol's features of a batch: crop + flip drawn for the whole batch
    from (seed, step) on every rank, each rank forwarding its share, gathered. An image
    folder's crops come from the original images, as in training."""
    folder = getattr(data, "decodes_on_cpu", False)
    size = None if folder else data.image_size
    dim = int(encoder.num_features)

    def features(idx: Tensor, step: int) -> Tensor:
        g = torch.Generator(device=place.device).manual_seed(_probe_seed(seed, step))
        params = crop_flip.sample_params(len(idx), size, size, g)
        a, b = shard_range(len(idx), dist.rank(), dist.world_size())
        out = []
        with frozen(encoder), torch.no_grad():
            for lo in range(a, b, place.batch):
                rows = slice(lo, min(b, lo + place.batch))
                p = params.rows(rows)
                if folder:
                    images = data.crops(idx[rows], [p.crop_draws.cpu()], crop_flip)[0]
                else:
                    images = data.batch(idx[rows])[0]
                out.append(encoder(crop_flip.apply(images.to(place.device), p)).float())
        mine = torch.cat(out) if out else torch.zeros(0, dim, device=place.device)
        return dist.all_gather_rows(mine, len(idx))

    return features


def _probe_seed(seed: int, step: int) -> int:
    """The augmented probe's crops at a step depend on (seed, step) alone (resumable)."""
    return (seed * 1_000_003 + step * 7919 + 104_729) % (2**63)


def _sample(data: Any, n: int, seed: int) -> Any:
    """A fixed random `n` of the images of `data`, in their order."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return subset(data, order[: min(n, len(data))].sort().values)


def knn_monitor(
    encoder: nn.Module, train: Any, test: Any, aug: SimCLRAugment, config: Mapping[str, Any]
) -> float:
    """kNN top-1 of the encoder on fixed subsets (the online monitor). Draws nothing from
    any generator and runs the encoder in eval mode, so training is unchanged by it.
    Every rank calls it (the features are sharded); every rank gets the same answer.
    The subsets are small (MONITOR_TRAIN, MONITOR_TEST): their features stay on the device."""
    device = next(encoder.parameters()).device
    tr, te = _sample(train, MONITOR_TRAIN, 0), _sample(test, MONITOR_TEST, 1)
    train_f, train_y = data_features(encoder, tr, aug.eval_transform, device)
    test_f, test_y = data_features(encoder, te, aug.eval_transform, device)
    labelled = train_y >= 0
    return knn_top1(
        FeatureReader.of(train_f[labelled]),
        train_y[labelled],
        FeatureReader.of(test_f),
        test_y,
        train.num_classes,
        int(config["knn_k"]),
        float(config["knn_temperature"]),
        device,
        DeviceBudget(0),
    )


#: how a trained network is scored, for each evaluation a method names
EVALUATIONS: dict[
    Evaluation,
    Callable[
        [RunSpec, nn.Module, Any, Any, Any, SimCLRAugment, EvalPlace, Mapping[str, Any]],
        dict[str, Any],
    ],
] = {
    Evaluation.FROZEN_ENCODER: _frozen_encoder,
    Evaluation.OWN_HEAD: _own_head,
}


def data_features(
    model: nn.Module, data: Any, transform: Transform, device: torch.device, batch_size: int = 512
) -> tuple[Tensor, Tensor]:
    """Outputs of `model` (eval mode, no grad) on every image of `data`, in order, and
    labels, on the device: for small sets only (the online monitor's).

    Sharded: each rank runs its contiguous share of the images (`data.shard_range`) and
    all ranks gather the whole (one process: the whole set).
    """
    n = len(data)
    start, stop = shard_range(n, dist.rank(), dist.world_size())
    outputs, labels = [], []
    with frozen(model), torch.no_grad():
        # A rank without images (fewer images than ranks) runs one for the shape.
        chunks = [
            torch.arange(a, min(stop, a + batch_size)) for a in range(start, stop, batch_size)
        ] or [torch.arange(1)]
        for idx in chunks:
            images, y = data.batch(idx)
            rows = len(idx) if start < stop else 0
            outputs.append(model(transform(images.to(device))).float()[:rows])
            labels.append(y.to(device)[:rows])
    return dist.all_gather_rows(torch.cat(outputs), n), dist.all_gather_rows(torch.cat(labels), n)
