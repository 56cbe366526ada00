"""Distributed helpers: launcher detection, and 2 gloo processes on CPU against one process.

The two-process checks run once (one spawn, module fixture); every rank saves what it
computed and the tests compare with the single-process result on the concatenated
batch, computed here in the parent without torch.distributed.
"""

from __future__ import annotations

import os
import socket
import stat
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from scaling.train import distributed
from scaling.train.accumulate import cached_backward, plain_backward
from scaling.train.distributed import (
    DistEnv,
    all_gather_with_grad,
    all_reduce_mean_,
    average_gradients,
    detect_env,
    first_slurm_host,
    init_distributed,
)
from scaling.train.losses import nt_xent, positive_top1
from scaling.train.optim import build_optimizer

WORLD = 2
N_PER_RANK = 4
TAU = 0.5
loss_fn = partial(nt_xent, temperature=TAU)
LAUNCH_KEYS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_LOCALID",
    "SLURM_JOB_NODELIST",
    "SLURM_NODELIST",
    "SLURM_JOB_ID",
)


# ---------------------------------------------------------------- shared set-up


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch: two views of WORLD * N_PER_RANK inputs."""
    g = torch.Generator().manual_seed(0)
    n = WORLD * N_PER_RANK
    x1 = torch.randn(n, 6, generator=g, dtype=torch.float64)
    return x1, x1 + 0.3 * torch.randn(n, 6, generator=g, dtype=torch.float64)


def _model() -> nn.Module:
    """BN-free (per-rank batch statistics would differ from the full batch's), with biases."""
    torch.manual_seed(7)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4)).double()


def _grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters()]


def _train_two_steps(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor, micro: int) -> None:
    """Step 1 plain accumulation, step 2 gradient caching, LARS with decay and exclusion."""
    opt = build_optimizer("lars", model, lr=0.5, weight_decay=1e-2)
    for step in range(2):
        opt.zero_grad()
        if step == 0:
            plain_backward(model, x1, x2, loss_fn)
        else:
            cached_backward(model, x1, x2, micro, loss_fn)
        average_gradients(model.parameters())
        opt.step()


def _buggy_gather(t: torch.Tensor) -> torch.Tensor:
    """The known bug: plain all_gather (no graph) with the local slice put back.

    The forward is right, but the backward only sees this rank's own loss terms, so the
    averaged gradient misses every other rank's use of these embeddings as negatives.
    """
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.detach().contiguous())
    parts[dist.get_rank()] = t
    return torch.cat(parts)


def _syncbn_check(sl: slice) -> dict:
    """Does nn.SyncBatchNorm run on CPU under gloo in this torch? Match full-batch BN?"""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(WORLD * N_PER_RANK, 3, generator=g)
    bn = nn.SyncBatchNorm(3).train()
    try:
        y = bn(x[sl])
    except Exception as e:  # noqa: BLE001 - recorded and asserted on in the parent
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    return {"ok": True, "y": y.detach(), "running_mean": bn.running_mean.clone()}


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    env = init_distributed("cpu")
    res: dict = {"env": env, "rank": distributed.rank(), "world": distributed.world_size()}
    res["is_main"], res["local_rank"] = distributed.is_main(), distributed.local_rank()
    x1, x2 = _batch()
    sl = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)

    res["gathered"] = all_gather_with_grad(torch.full((2, 1), float(rank)))
    model = _model()
    loss = loss_fn(model(x1[sl]), model(x2[sl]))
    loss.backward()
    average_gradients(model.parameters())
    res["loss"], res["grads"] = loss.detach(), _grads(model)
    res["top1"] = positive_top1(model(x1[sl]), model(x2[sl]))

    good_gather = distributed.all_gather_with_grad
    distributed.all_gather_with_grad = _buggy_gather
    try:
        model = _model()
        bad_loss = loss_fn(model(x1[sl]), model(x2[sl]))
        bad_loss.backward()
        average_gradients(model.parameters())
        res["bad_loss"], res["bad_grads"] = bad_loss.detach(), _grads(model)
    finally:
        distributed.all_gather_with_grad = good_gather

    model = _model()
    res["cached_loss"] = cached_backward(model, x1[sl], x2[sl], 2, loss_fn)
    average_gradients(model.parameters())
    res["cached_grads"] = _grads(model)

    model = _model()
    _train_two_steps(model, x1[sl], x2[sl], micro=1)
    res["trained"] = [p.detach().clone() for p in model.parameters()]

    mixed = [torch.full((3,), rank + 1.0, dtype=torch.float64), torch.full((2, 2), 10.0 * rank)]
    all_reduce_mean_(mixed, bucket_bytes=16)  # one tensor per bucket, two dtypes
    res["mixed"] = mixed
    res["syncbn"] = _syncbn_check(sl)
    torch.save(res, Path(out_dir) / f"rank{rank}.pt")
    distributed.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_ranks(worker: Callable[..., None], out: Path, *args: object) -> list[dict]:
    """Run worker(rank, port, *args, out) on WORLD processes; what each saved as rank{r}.pt.

    fork on Linux: the children inherit the imported torch (about 1 s instead of 6 s
    with spawn on 2 cores); each child sets 1 intra-op thread before any torch op, so
    the parent's OpenMP pool is never used after the fork.
    """
    method = "fork" if sys.platform == "linux" else "spawn"
    args = (_free_port(), *args, str(out))
    ctx = mp.start_processes(worker, args=args, nprocs=WORLD, join=False, start_method=method)
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("gloo workers did not finish in 120 s")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return spawn_ranks(_worker, tmp_path_factory.mktemp("gloo"))


def _close(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.allclose(x, y, rtol=1e-10, atol=1e-12) for x, y in zip(a, b, strict=True))


def _single_process_grads() -> tuple[torch.Tensor, list[torch.Tensor]]:
    x1, x2 = _batch()
    model = _model()
    loss = loss_fn(model(x1), model(x2))
    loss.backward()
    return loss.detach(), _grads(model)


# ---------------------------------------------------------------- two processes


def test_ranks_see_launcher_and_gather_in_rank_order(ranks: list[dict]) -> None:
    for r, res in enumerate(ranks):
        assert res["env"] == DistEnv(r, WORLD, r, "127.0.0.1", res["env"].master_port, "torchrun")
        assert (res["rank"], res["world"], res["local_rank"]) == (r, WORLD, r)
        assert res["is_main"] == (r == 0)
        assert res["gathered"].flatten().tolist() == [0.0, 0.0, 1.0, 1.0]


def test_nt_xent_loss_and_averaged_grads_equal_single_process(ranks: list[dict]) -> None:
    ref_loss, ref_grads = _single_process_grads()
    # Each rank's loss is the mean over its own anchors; their mean is the global loss.
    assert not torch.allclose(ranks[0]["loss"], ranks[1]["loss"])
    assert torch.allclose((ranks[0]["loss"] + ranks[1]["loss"]) / 2, ref_loss, rtol=1e-12)
    for res in ranks:
        assert _close(res["grads"], ref_grads)


def test_plain_all_gather_would_fail_the_gradient_comparison(ranks: list[dict]) -> None:
    # The comparison above catches the bug class: with a gather that drops other ranks'
    # gradients the loss is still right, but the averaged gradient is not.
    ref_loss, ref_grads = _single_process_grads()
    assert torch.allclose((ranks[0]["bad_loss"] + ranks[1]["bad_loss"]) / 2, ref_loss, rtol=1e-12)
    assert not _close(ranks[0]["bad_grads"], ref_grads)


def test_cached_backward_two_ranks_equals_full_batch(ranks: list[dict]) -> None:
    ref_loss, ref_grads = _single_process_grads()
    assert torch.allclose((ranks[0]["cached_loss"] + ranks[1]["cached_loss"]) / 2, ref_loss)
    for res in ranks:
        assert _close(res["cached_grads"], ref_grads)


def test_lars_training_steps_equal_single_process(ranks: list[dict]) -> None:
    x1, x2 = _batch()
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    _train_two_steps(model, x1, x2, micro=N_PER_RANK)
    expected = [p.detach() for p in model.parameters()]
    assert not _close(expected, before)
    for res in ranks:
        assert _close(res["trained"], expected)


def test_positive_top1_uses_global_candidates(ranks: list[dict]) -> None:
    x1, x2 = _batch()
    model = _model()
    with torch.no_grad():
        z1, z2 = model(x1), model(x2)
    # Per-rank accuracies over the same 2N candidates average to the global one.
    assert torch.allclose((ranks[0]["top1"] + ranks[1]["top1"]) / 2, positive_top1(z1, z2))


def test_all_reduce_mean_over_buckets_and_dtypes(ranks: list[dict]) -> None:
    for res in ranks:
        a, b = res["mixed"]
        assert a.dtype == torch.float64 and torch.equal(
            a, torch.full((3,), 1.5, dtype=torch.float64)
        )
        assert b.dtype == torch.float32 and torch.equal(b, torch.full((2, 2), 5.0))


def test_syncbatchnorm_on_cpu_gloo(ranks: list[dict]) -> None:
    """Records what this torch does: SyncBatchNorm either syncs on CPU and then matches
    full-batch BN, or refuses CPU input (then CPU runs must keep plain BatchNorm)."""
    res = ranks[0]["syncbn"]
    if not res["ok"]:
        assert res["error"].startswith("ValueError") and "GPU" in res["error"]
        return
    g = torch.Generator().manual_seed(1)
    x = torch.randn(WORLD * N_PER_RANK, 3, generator=g)
    bn = nn.BatchNorm1d(3).train()
    assert torch.allclose(res["y"], bn(x)[:N_PER_RANK].detach(), atol=1e-5)


# ---------------------------------------------------------------- one process


def test_single_process_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in LAUNCH_KEYS:
        monkeypatch.delenv(key, raising=False)
    assert not distributed.is_initialized()
    assert (distributed.rank(), distributed.world_size(), distributed.local_rank()) == (0, 1, 0)
    assert distributed.is_main()
    t = torch.randn(3, 2, requires_grad=True)
    assert all_gather_with_grad(t) is t
    p = nn.Parameter(torch.ones(2))
    p.grad = torch.tensor([1.0, 3.0])
    average_gradients([p])
    assert p.grad.tolist() == [1.0, 3.0]
    assert init_distributed("cpu") == DistEnv()
    assert not distributed.is_initialized()


def test_detect_torchrun() -> None:
    env = detect_env(
        {
            "RANK": "5",
            "WORLD_SIZE": "8",
            "LOCAL_RANK": "1",
            "MASTER_ADDR": "node7",
            "MASTER_PORT": "29511",
            "SLURM_PROCID": "0",
            "SLURM_NTASKS": "1",
        }
    )
    assert env == DistEnv(5, 8, 1, "node7", 29511, "torchrun")


def test_detect_single_process() -> None:
    assert detect_env({}) == DistEnv(0, 1, 0, "127.0.0.1", 29500, "single")


@pytest.mark.parametrize(
    ("nodelist", "first"),
    [
        ("gpu17", "gpu17"),
        ("gpu[003-005,9]", "gpu003"),
        ("gpu[7,9-11],cpu1", "gpu7"),
        ("a-b.c,d", "a-b.c"),
    ],
)
def test_first_slurm_host(nodelist: str, first: str) -> None:
    assert first_slurm_host(nodelist) == first


def _slurm(**extra: str) -> dict[str, str]:
    base = {
        "SLURM_PROCID": "3",
        "SLURM_NTASKS": "4",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_NODELIST": "gpu[012-013]",
        "SLURM_JOB_ID": "4242",
    }
    return {**base, **extra}


def test_detect_slurm_without_scontrol(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no scontrol: parse the node list here
    env = detect_env(_slurm())
    assert env == DistEnv(3, 4, 1, "gpu012", 12000 + 4242, "slurm")


def test_detect_slurm_with_scontrol(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "scontrol"
    fake.write_text(
        '#!/bin/sh\n[ "$1 $2 $3" = "show hostnames gpu[012-013]" ] && printf "gpu012\\ngpu013\\n"\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert detect_env(_slurm(SLURM_JOB_NODELIST="weird[1]")).master_addr == "weird1"
    assert detect_env(_slurm()).master_addr == "gpu012"
    override = detect_env(_slurm(MASTER_ADDR="head", MASTER_PORT="1234"))
    assert (override.master_addr, override.master_port) == ("head", 1234)


def test_gather_is_identity_for_one_process() -> None:
    # No collective involved: gradients flow back unchanged.
    t = torch.randn(2, 3, requires_grad=True)
    (all_gather_with_grad(t) * 3).sum().backward()
    assert torch.equal(t.grad, torch.full((2, 3), 3.0))
