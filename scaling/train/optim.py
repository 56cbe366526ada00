"""Parameter groups, LARS (as in the official SimCLR code) and the optimizer factory.

Policy apart from mechanism: `param_groups` decides which parameters are excluded from
weight decay and layer adaptation (batch-norm and bias parameters, as in SimCLR);
`LARS` only applies what each group asks for, and never touches `p.grad`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from scaling.errors import SpecError

__all__ = ["LARS", "OPTIMIZERS", "build_optimizer", "param_groups"]

OPTIMIZERS = ("lars", "sgd")

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def param_groups(
    model: nn.Module, weight_decay: float, no_adaptation: nn.Module | None = None
) -> list[dict[str, Any]]:
    """Split trainable parameters into decayed, excluded and (optionally) head groups.

    Excluded (weight_decay 0, `lars_exclude=True`): every parameter of a normalisation
    layer and every parameter with ndim <= 1 (biases, BN scales and shifts), as the
    official SimCLR code excludes 'batch_normalization' and 'bias' variables. The
    weights of `no_adaptation` (the supervised classifier, the official 'head_supervised')
    keep `weight_decay` but get no layer adaptation (`lars_exclude=True`). Everything
    else (conv and linear weights) gets `weight_decay` and layer adaptation.
    Empty groups are dropped; a parameter shared by several modules appears once.
    """
    decay: list[nn.Parameter] = []
    exclude: list[nn.Parameter] = []
    head: list[nn.Parameter] = []
    head_ids = {id(p) for p in no_adaptation.parameters()} if no_adaptation is not None else set()
    seen: set[int] = set()
    for module in model.modules():
        is_norm = isinstance(module, _NORM_TYPES)
        for p in module.parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if is_norm or p.ndim <= 1:
                exclude.append(p)
            else:
                (head if id(p) in head_ids else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lars_exclude": False},
        {"params": exclude, "weight_decay": 0.0, "lars_exclude": True},
        {"params": head, "weight_decay": weight_decay, "lars_exclude": True},
    ]
    return [g for g in groups if g["params"]]


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017) as in google-research/simclr.

    The official `lars_optimizer.py` with classic momentum (the learning rate sits
    inside the momentum buffer), no Nesterov; per parameter tensor w with gradient g:

        g <- g + wd * w
        trust = eta * ||w|| / ||g||  if ||w|| > 0 and ||g|| > 0  else 1
        v <- m * v + lr * trust * g
        w <- w - v

    Groups with `lars_exclude=True` get no trust ratio: v <- m * v + lr * (g + wd * w),
    with their group's own weight decay (0 for BN and bias; the supervised classifier's
    weights keep it, as in the official code). `param_groups` decides both.

    The step runs with foreach kernels per (device, dtype) and never reads a value
    back to the host, so it adds no CPU-GPU synchronisation.
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
    ) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0 or eta <= 0:
            raise ValueError(
                f"invalid LARS settings lr={lr}, momentum={momentum}, "
                f"weight_decay={weight_decay}, eta={eta}"
            )
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=False
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            by_kind: dict[tuple[torch.device, torch.dtype], list[nn.Parameter]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LARS does not support sparse gradients")
                by_kind.setdefault((p.device, p.dtype), []).append(p)
            for params in by_kind.values():
                self._update(params, group)
        return loss

    def _momentum_buffers(self, params: list[nn.Parameter]) -> list[torch.Tensor]:
        """Per-parameter velocity, zero-initialised as in the official code."""
        bufs = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            bufs.append(state["momentum_buffer"])
        return bufs

    def _update(self, params: list[nn.Parameter], group: dict[str, Any]) -> None:
        """The LARS update for tensors of one device and dtype (class docstring)."""
        lr, momentum = group["lr"], group["momentum"]
        excluded = bool(group["lars_exclude"])
        wd = group["weight_decay"]
        grads = [p.grad for p in params]
        if wd != 0.0:
            # New tensors: p.grad itself is left as backward wrote it.
            grads = torch._foreach_add(grads, params, alpha=wd)
        if excluded:
            scaled = torch._foreach_mul(grads, lr)
        else:
            w_norm = torch.stack(torch._foreach_norm(params))
            g_norm = torch.stack(torch._foreach_norm(grads))
            trust = torch.where(
                (w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm, torch.ones_like(w_norm)
            )
            scaled = torch._foreach_mul(grads, list((trust * lr).unbind()))
        bufs = self._momentum_buffers(params)
        torch._foreach_mul_(bufs, momentum)
        torch._foreach_add_(bufs, scaled)
        torch._foreach_sub_(params, bufs)


def build_optimizer(
    name: str, model: nn.Module, lr: float, weight_decay: float, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """The optimizer `name` over `param_groups(model, weight_decay)`.

    "lars": SimCLR's pretraining optimizer (paper B.1: LARS, momentum 0.9).
    "sgd": torch.optim.SGD with momentum over the same groups (BN and bias undecayed),
    the usual choice for supervised baselines at small batch sizes.
    """
    # The supervised classifier (SupervisedNet.fc) is the official code's head_supervised:
    # decayed, but not layer-adapted under LARS.
    groups = param_groups(model, weight_decay, getattr(model, "head_supervised", None))
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise SpecError(
        f"unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}", key="optimizer"
    )
