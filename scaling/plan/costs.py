"""What a run costs before it runs: parameters, FLOPs, activation memory, layout.

Everything here comes from the real network built on the META device: shapes and the
autograd graph without weights or compute, so a ResNet-152 4x costs milliseconds
and no memory to measure. FLOPs are `torch.utils.flop_counter.FlopCounterMode`'s count
(2 x multiply-accumulates of convolutions and matmuls); activation memory is what
autograd saves for the backward pass, caught with `saved_tensors_hooks`.

The planner imports this module lazily (it imports torch).
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils.flop_counter import FlopCounterMode

from scaling.errors import SpecError
from scaling.sweep.methods import get_method

#: bytes per value of weights, gradients and optimizer slots (fp32 master weights).
BYTES_PER_VALUE = 4
#: saved activations relative to fp32 training: under bf16 autocast the convolutions,
#: batch norms and ReLUs save bf16 tensors (the weights stay fp32).
ACTIVATION_SCALE = {"fp32": 1.0, "bf16": 0.5}
#: Fixed device memory the allocator never sees or that does not grow with the model:
#: the CUDA context (~0.5 GiB on recent GPUs), cuBLAS/cuDNN handles and workspaces,
#: the uint8 image batch and its augmented copies. 1 GiB is a round upper figure.
DEFAULT_MARGIN_BYTES = 1 << 30
#: Proportional slack on weights + gradients + optimizer + saved activations: the
#: caching allocator's block rounding and fragmentation, and the transient gradients of
#: activations alive during backward (about the size of the largest layer's output,
#: two or three at a time), which saved-tensor counting does not include.
DEFAULT_MARGIN_FRACTION = 0.25


@dataclass(frozen=True)
class ArchCost:
    """Costs of one architecture, independent of batch, devices and run length."""

    encoder_params: int
    total_params: int
    #: one forward of the whole network for one image, FLOPs (2 x MACs) as
    #: torch's FlopCounterMode counts them
    flops_per_image: int
    #: per sample, fp32 training forward: bytes autograd saves for backward (the input
    #: image included, parameters and buffers excluded; ACTIVATION_SCALE for bf16)
    activation_bytes: int
    #: width of the encoder's pooled features (what linear evaluation stores per image)
    feature_dim: int = 0


def _storage_keys(tensors: Iterable[torch.Tensor]) -> set[StorageWeakRef]:
    return {StorageWeakRef(t.untyped_storage()) for t in tensors}


def saved_activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd saves for backward during `model(x)`, counting each storage once.

    One tensor is often saved twice (an in-place ReLU saves its output, which the next
    convolution saves as its input; a linear layer saves a transposed view of its
    weight), so we count distinct storages at their full size. Saved parameters and
    buffers are weights, already counted with the optimizer state: excluded. Works on
    any device, the meta device included.
    """
    state = _storage_keys(list(model.parameters()) + list(model.buffers()))
    saved: dict[StorageWeakRef, int] = {}
    keep_alive: list[torch.Tensor] = []  # so no storage address is reused mid-trace

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = StorageWeakRef(storage)
        if key not in state:
            saved[key] = storage.nbytes()
            keep_alive.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(saved.values())


def forward_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of `model(x)` as FlopCounterMode counts them (works on meta tensors)."""
    with FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def _trace(model: nn.Module, batch: int, image_size: int) -> tuple[int, int]:
    """(flops, saved bytes) of one forward of `batch` meta images."""
    x = torch.empty(batch, 3, int(image_size), int(image_size), device="meta")
    with FlopCounterMode(display=False) as counter:
        saved = saved_activation_bytes(model, x)
    return int(counter.get_total_flops()), saved


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@functools.cache
def arch_cost(
    method: str,
    depth: int,
    width: float,
    stem: str,
    depth_multiplier: float,
    image_size: int,
    projection_dim: int,
    num_classes: int,
) -> ArchCost:
    """Parameters, FLOPs per image and activation bytes per sample, from meta traces.

    Traces batches of 1 and 2 images; their difference is the exact per-sample figure,
    free of per-channel constants (batch-norm statistics, which the margin covers).
    The traces run in eval mode: batch norm on (1, C) is refused in training mode,
    and the meta batch-norm kernel runs about twice as fast in eval. Autograd saves
    the same per-sample tensors in both modes (the input of every batch norm); the
    tests check that against training-mode traces and real CPU forwards. Cached: the
    planner asks once per distinct architecture.
    """
    if not isinstance(image_size, numbers.Integral) or image_size < 1:
        raise SpecError(f"image_size must be a positive integer, got {image_size!r}")
    from scaling.models.resnet import build_network  # timm: imported only when a trace is needed

    with torch.device("meta"):
        net = build_network(
            method,
            depth=depth,
            width=width,
            stem=stem,
            depth_multiplier=depth_multiplier,
            projection_dim=projection_dim,
            num_classes=num_classes,
        )
    net.eval()
    flops, one = _trace(net, 1, image_size)
    two = saved_activation_bytes(
        net, torch.empty(2, 3, int(image_size), int(image_size), device="meta")
    )
    return ArchCost(
        encoder_params=_count(net.encoder),
        total_params=_count(net),
        flops_per_image=flops,
        activation_bytes=two - one,
        feature_dim=int(net.encoder.num_features),
    )


def peak_memory_bytes(
    cost: ArchCost,
    micro_batch: int,
    views: int,
    optimizer_slots: int = 1,
    margin_bytes: int = DEFAULT_MARGIN_BYTES,
    margin_fraction: float = DEFAULT_MARGIN_FRACTION,
    precision: str = "fp32",
) -> int:
    """Peak device memory of a training step holding `micro_batch * views` samples' graphs.

    weights + gradients + `optimizer_slots` buffers (LARS and SGD keep one momentum),
    4 bytes each per parameter, plus saved activations at `precision` (bf16 halves
    them), all times (1 + margin_fraction), plus margin_bytes. `views` is how many
    forward graphs per image are alive at once: 2 for SimCLR without caching, 1 with
    gradient caching (a chunk holds one view) and for supervised training.
    """
    state = (2 + optimizer_slots) * BYTES_PER_VALUE * cost.total_params
    activations = micro_batch * views * cost.activation_bytes * ACTIVATION_SCALE[precision]
    return math.ceil((state + activations) * (1.0 + margin_fraction)) + margin_bytes


#: Evaluation keeps features on the device only within this share of what the network's
#: weights and one forward leave free (scaling.train.features: the rest stays on the host).
EVAL_DEVICE_SHARE = 0.5
#: bytes per stored feature value: the training precision's (bf16 features from bf16 runs)
FEATURE_BYTES = {"fp32": 4, "bf16": 2}


def eval_memory_bytes(
    cost: ArchCost, batch: int, feature_rows: int, memory_bytes: int, precision: str = "fp32"
) -> tuple[int, int]:
    """(peak device bytes of evaluation, bytes of its feature store on the host).

    Evaluation holds the weights (gradients and optimizer state are freed), one forward
    without a graph of `batch` images (bounded here by what the training forward saves)
    and, of the `feature_rows` x feature_dim feature store, what fits in EVAL_DEVICE_SHARE
    of the memory left (the rest is streamed from the host, scaling.train.features)."""
    weights = BYTES_PER_VALUE * cost.total_params
    forward = batch * cost.activation_bytes * ACTIVATION_SCALE[precision]
    fixed = math.ceil((weights + forward) * (1.0 + DEFAULT_MARGIN_FRACTION)) + DEFAULT_MARGIN_BYTES
    store = feature_rows * cost.feature_dim * FEATURE_BYTES[precision]
    resident = min(store, max(0, int(EVAL_DEVICE_SHARE * (memory_bytes - fixed))))
    return fixed + resident, store


def max_micro_batch(
    cost: ArchCost, memory_bytes: int, views: int, optimizer_slots: int = 1, precision: str = "fp32"
) -> int:
    """The largest micro-batch whose `peak_memory_bytes` fits in `memory_bytes` (0: none)."""
    if views < 1:
        raise ValueError(f"views must be at least 1, got {views}")
    per_sample = views * cost.activation_bytes * ACTIVATION_SCALE[precision]
    if per_sample <= 0:
        raise ValueError("activation_bytes must be positive")
    usable = (memory_bytes - DEFAULT_MARGIN_BYTES) / (1.0 + DEFAULT_MARGIN_FRACTION)
    state = (2 + optimizer_slots) * BYTES_PER_VALUE * cost.total_params
    guess = max(0, math.floor((usable - state) / per_sample))

    def fits(m: int) -> bool:
        return (
            peak_memory_bytes(cost, m, views, optimizer_slots, precision=precision) <= memory_bytes
        )

    # The closed form can be off by one through float rounding: settle it exactly.
    while guess > 0 and not fits(guess):
        guess -= 1
    while fits(guess + 1):
        guess += 1
    return guess if fits(guess) and guess > 0 else 0


def choose_layout(batch_size: int, gpus: int, max_micro: int) -> tuple[int, int] | None:
    """(micro_batch, accum_steps) with micro * accum * gpus == batch_size, fewest steps.

    The global batch is a spec value and never silently changes, so the micro-batch
    must divide the per-GPU share exactly. None when the batch does not split over the
    GPUs or not even one sample fits (max_micro == 0).
    """
    if batch_size < 1 or gpus < 1 or max_micro < 1 or batch_size % gpus:
        return None
    per_gpu = batch_size // gpus
    for accum in range(max(1, math.ceil(per_gpu / max_micro)), per_gpu + 1):
        if per_gpu % accum == 0:
            return per_gpu // accum, accum
    return None  # unreachable: accum == per_gpu gives micro 1 <= max_micro


def train_flops(
    flops_per_image: int, images: int, epochs: float, views: int, cached: bool
) -> float:
    """Training FLOPs: forward x (3, or 4 with cached accumulation) x images x views x epochs.

    Backward costs about twice the forward (gradients for inputs and for weights);
    gradient caching adds one more forward without a graph, hence 4.
    """
    passes = 4 if cached else 3
    return float(flops_per_image) * passes * images * views * epochs


def eval_flops(
    flops_per_image: int, images: tuple[int, int, int], method: str, eval_config: dict | None
) -> float:
    """Evaluation FLOPs (forwards only) of `method`'s evaluation: its registered
    `eval_passes` over `images`, the (fitted labelled training, held-out validation,
    test) image counts. SimCLR's linear evaluation extracts features of each once, and the
    augmented protocol forwards the fitted images again each of its epochs; supervised
    runs forward the held-out and test images. The online kNN monitor adds its subsets
    every `knn_every` epochs (counted by the planner)."""
    passes = get_method(method).eval_passes(eval_config)
    return float(flops_per_image) * sum(p * n for p, n in zip(passes, images, strict=True))
