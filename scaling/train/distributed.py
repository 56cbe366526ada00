"""Small typed helpers for multi-process training: who am I, gather with gradient, averaging.

Every helper falls back to the single-process answer (rank 0, world size 1, identity
gather, no-op averaging) when `torch.distributed` is not initialised, so the same
training code runs on a laptop, under torchrun and under Slurm.

Launch modes that `detect_env` recognises, in this order:

1. torchrun / torch.distributed.run (also `python -m torch.distributed.launch --use-env`):
   RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT are set by the launcher.
   Checked first because torchrun inside a Slurm allocation also sees SLURM_* variables.
2. Slurm, one task per GPU (`srun --ntasks-per-node=G`, what submitit does):
   SLURM_PROCID is the rank, SLURM_NTASKS the world size, SLURM_LOCALID the local rank.
   The master is the first host of SLURM_JOB_NODELIST (expanded by
   `scontrol show hostnames` when available, else parsed here), the port is derived from
   SLURM_JOB_ID so every task of a job agrees without talking. MASTER_ADDR/MASTER_PORT,
   when set, win.
3. Anything else: a single process.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

DEFAULT_MASTER_ADDR = "127.0.0.1"
DEFAULT_MASTER_PORT = 29500
# Ports derived from a Slurm job id land in [SLURM_PORT_BASE, SLURM_PORT_BASE + SLURM_PORT_SPAN):
# above the well-known range and below the usual ephemeral range (32768+) on Linux.
SLURM_PORT_BASE = 12000
SLURM_PORT_SPAN = 20000
# Gradients are averaged in flat buckets of at most this many bytes: one collective per
# bucket instead of one per parameter, without doubling peak memory for big models.
BUCKET_BYTES = 25 * 1024 * 1024
#: Collectives wait this long for the slowest rank (the profile's dist_timeout_min).
DEFAULT_TIMEOUT = timedelta(minutes=60)


def is_initialized() -> bool:
    """True when a process group exists (distributed may also be compiled out)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank; 0 when not distributed."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes in the default group; 1 when not distributed."""
    return dist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    """Rank within this node (selects the GPU); 0 when not distributed."""
    if not is_initialized():
        return 0
    for name in ("LOCAL_RANK", "SLURM_LOCALID"):
        if name in os.environ:
            return int(os.environ[name])
    return 0


def is_main() -> bool:
    """Rank-zero guard for tracking, checkpoints and result files."""
    return rank() == 0


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather whose backward returns, to each rank, the SUM over ranks of the
    gradient that flowed into its slice.

    Why the sum: rank r's loss uses every rank's embeddings as negatives, so the
    gradient of the global objective with respect to rank s's embeddings has a term
    from every rank's loss. A plain `torch.distributed.all_gather` returns tensors
    with no graph: the other ranks' terms are silently dropped and the averaged
    gradient is wrong (a known bug class in contrastive-learning code).
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.rank = dist.get_rank()
        ctx.size = tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.size
        return grad[start : start + ctx.size]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's `tensor` along dim 0, in rank order, keeping gradients.

    All ranks must pass tensors of the same shape. Identity when not distributed.
    """
    if world_size() == 1:
        return tensor
    return _AllGatherWithGrad.apply(tensor)


def _buckets(tensors: Sequence[torch.Tensor], limit: int) -> list[list[torch.Tensor]]:
    """Group tensors of one dtype and device into buckets of at most `limit` bytes."""
    groups: dict[tuple[torch.dtype, torch.device], list[list[torch.Tensor]]] = {}
    sizes: dict[tuple[torch.dtype, torch.device], int] = {}
    for t in tensors:
        key = (t.dtype, t.device)
        nbytes = t.numel() * t.element_size()
        if key not in groups or sizes[key] + nbytes > limit:
            groups.setdefault(key, []).append([])
            sizes[key] = 0
        groups[key][-1].append(t)
        sizes[key] += nbytes
    return [b for bs in groups.values() for b in bs if b]


def all_reduce_mean_(tensors: Iterable[torch.Tensor], bucket_bytes: int = BUCKET_BYTES) -> None:
    """Replace each tensor, in place, by its mean over ranks. No-op when not distributed.

    Every rank must pass the same list (same shapes, same order).
    """
    tensors = list(tensors)
    n = world_size()
    if n == 1 or not tensors:
        return
    for bucket in _buckets(tensors, bucket_bytes):
        flat = _flatten_dense_tensors(bucket)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(n)
        for t, avg in zip(bucket, _unflatten_dense_tensors(flat, bucket), strict=True):
            t.copy_(avg)


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Average `p.grad` over ranks (what DDP does), for parameters that have one.

    Used instead of DistributedDataParallel because gradient caching calls backward
    once per micro-batch; averaging once after the last one is cheaper and exact.
    Parameters whose grad is None are skipped: with the same model on every rank that
    set is the same everywhere.
    """
    all_reduce_mean_([p.grad for p in params if p.grad is not None])


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job, as read from the launcher's environment."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = DEFAULT_MASTER_ADDR
    master_port: int = DEFAULT_MASTER_PORT
    launcher: str = "single"  # "torchrun", "slurm" or "single"


def first_slurm_host(nodelist: str) -> str:
    """First host of a Slurm node list such as 'gpu[003-005,9],cpu1' -> 'gpu003'.

    Only the fallback when `scontrol` is missing; keeps zero padding of ranges.
    """
    match = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
    if match is None:
        raise ValueError(f"cannot parse SLURM_JOB_NODELIST {nodelist!r}")
    prefix, _, ranges = match.groups()
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def _slurm_master(nodelist: str) -> str:
    """Expand the node list with scontrol (handles every syntax), else parse it here."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return first_slurm_host(nodelist)


def detect_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Read rank, world size and rendezvous address from the launcher (module docstring).

    `environ` defaults to `os.environ`; tests pass a dict.
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", "0")),
            master_addr=env.get("MASTER_ADDR", DEFAULT_MASTER_ADDR),
            master_port=int(env.get("MASTER_PORT", str(DEFAULT_MASTER_PORT))),
            launcher="torchrun",
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        addr = env.get("MASTER_ADDR") or (
            _slurm_master(nodelist) if nodelist else DEFAULT_MASTER_ADDR
        )
        job_id = int(env.get("SLURM_JOB_ID", "0"))
        port = int(env.get("MASTER_PORT", SLURM_PORT_BASE + job_id % SLURM_PORT_SPAN))
        return DistEnv(
            rank=int(env["SLURM_PROCID"]),
            world_size=int(env["SLURM_NTASKS"]),
            local_rank=int(env.get("SLURM_LOCALID", "0")),
            master_addr=addr,
            master_port=port,
            launcher="slurm",
        )
    return DistEnv()


def init_distributed(device: str, timeout: timedelta = DEFAULT_TIMEOUT) -> DistEnv:
    """Join the process group the launcher describes; no-op for a single process.

    NCCL on CUDA devices (and selects this process's GPU by local rank), gloo on CPU.
    `timeout` bounds every collective's wait (ours, not the backend's default).
    Safe to call twice: an existing group is kept.
    """
    env = detect_env()
    if env.world_size <= 1 or is_initialized():
        return env
    on_cuda = device.startswith("cuda")
    if on_cuda:
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group(
        backend="nccl" if on_cuda else "gloo",
        init_method=f"tcp://{env.master_addr}:{env.master_port}",
        rank=env.rank,
        world_size=env.world_size,
        timeout=timeout,
    )
    return env


def cpus_per_rank() -> int:
    """The CPUs this process may use, shared with the other ranks on its machine (Slurm
    pins each task to its cpus_per_task already; torchrun's ranks share the machine)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, (cpus or 1) // max(1, local))


def all_gather_rows(tensor: torch.Tensor, n: int) -> torch.Tensor:
    """Every rank's `tensor` (its contiguous share of n rows, `data.shard_range`) in rank
    order, the first n rows: the whole. Shares are padded to one size for the gather."""
    if world_size() == 1:
        return tensor
    per = -(-n // world_size())
    padded = tensor.new_zeros((per, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return torch.cat(parts)[:n]


def all_reduce_sum_(tensor: torch.Tensor) -> None:
    """Replace `tensor`, in place, by its sum over ranks. No-op when not distributed."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if world_size() > 1:
        dist.barrier()


def cleanup() -> None:
    """Leave the process group, if any (lets the next run in this process start clean)."""
    if is_initialized():
        dist.destroy_process_group()
