"""Train and evaluate one run: `scaling train RUN_SPEC.json --run-dir DIR`.

Reads top to bottom: set-up, data, model, optimizer and schedule, restore, the loop
(one JSON line per epoch, a checkpoint every epoch and on SIGTERM/SIGUSR1), then
evaluation and result.json, written last. Restarting a killed run resumes from its
newest valid checkpoint and ends with the same result, bit for bit on CPU.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from scaling.errors import RunFailed
from scaling.models.resnet import build_network
from scaling.plan import throughput
from scaling.plan.layout import Layout, derive
from scaling.plan.schedule import warmup_cosine
from scaling.rundir import (
    FAILURE,
    METRICS,
    RESULT,
    SPEC,
    append_jsonl,
    git_version,
    read_json,
    read_metrics,
    truncate_metrics,
    write_json,
)
from scaling.sweep.methods import BNGrouping, Labels, get_method
from scaling.sweep.spec import RunSpec
from scaling.train import checkpoint
from scaling.train import distributed as dist
from scaling.train.augment import AUGMENTATIONS
from scaling.train.convergence import judge
from scaling.train.data import labelled_training
from scaling.train.evaluate import clean, evaluate_run, knn_monitor, primary
from scaling.train.metrics import check_finite, epoch_record, fold, format_epoch, new_sums
from scaling.train.optim import build_optimizer
from scaling.train.readers import DATASETS, run_splits
from scaling.train.run_cost import cost_figures, measured_throughput
from scaling.train.signals import StopFlag, agree
from scaling.train.steps import STEPS
from scaling.train.views import train_views

EpochHook = Callable[[dict[str, Any]], None]
SUBMITTER_KEYS = ("forced_at", "checkpoint_every_s")  # spec.json keys the trainer keeps
CHECKPOINT_EVERY_S = (
    600.0  # a mid-epoch checkpoint at least this often (profile: checkpoint_every_min)
)


class Preempted(Exception):
    """SIGTERM/SIGUSR1 arrived; a checkpoint was written and the run can resume."""


def run(
    spec: RunSpec,
    run_dir: str | Path,
    layout: Layout | None = None,
    *,
    device: str = "auto",
    threads: int | None = None,
    compile: bool = False,
    on_epoch: EpochHook | None = None,
    checkpoint_every_s: float | None = None,
) -> dict[str, Any]:
    """Train and evaluate `spec` in `run_dir`; returns the result (also in result.json).

    A run that fails for good leaves failure.json (kind: diverged, oom, error) beside
    its checkpoints; one stopped by a signal raises Preempted and stays resumable.
    Besides the checkpoint at every epoch's end, one is written mid-epoch whenever
    `checkpoint_every_s` passed since the last (0: never; None: spec.json's
    `checkpoint_every_s`, which submission writes from the profile, else
    CHECKPOINT_EVERY_S), so a SIGKILL loses minutes, not an epoch.
    """
    run_dir = Path(run_dir)
    try:
        result = _train(
            spec,
            run_dir,
            layout,
            device=device,
            threads=threads,
            compile=compile,
            on_epoch=on_epoch,
            checkpoint_every_s=checkpoint_every_s,
        )
    except Preempted:
        raise
    except RunFailed as exc:
        _record_failure(run_dir, exc.kind, str(exc), exc.step)
        raise
    except torch.OutOfMemoryError as exc:
        _record_failure(run_dir, "oom", str(exc).splitlines()[0], None)
        raise RunFailed(f"out of memory: {str(exc).splitlines()[0]}", kind="oom") from exc
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            _record_failure(run_dir, "error", f"{type(exc).__name__}: {exc}", None)
            raise
        # The device, not the run: a plain resubmit retries it from its checkpoint once
        # there is room (RunFailed.RETRIED_KINDS).
        message = f"no space left on the device ({exc}); free some and submit again"
        _record_failure(run_dir, "disk", message, None)
        raise RunFailed(message, kind="disk") from exc
    except Exception as exc:
        _record_failure(run_dir, "error", f"{type(exc).__name__}: {exc}", None)
        raise
    (run_dir / FAILURE).unlink(missing_ok=True)
    return result


def _record_failure(run_dir: Path, kind: str, message: str, step: int | None) -> None:
    """failure.json, when it can be written (on a full disk it may not: the run then
    reads as resumable, which a plain resubmit also retries)."""
    import traceback

    if dist.rank() == 0:
        record = {
            "kind": kind,
            "message": message,
            "step": step,
            "traceback": traceback.format_exc(),
            "time": time.time(),
        }
        with contextlib.suppress(OSError):
            write_json(run_dir / FAILURE, record)


def _train(
    spec: RunSpec,
    run_dir: str | Path,
    layout: Layout | None = None,
    *,
    device: str = "auto",
    threads: int | None = None,
    compile: bool = False,
    on_epoch: EpochHook | None = None,
    checkpoint_every_s: float | None = None,
) -> dict[str, Any]:
    run_dir = Path(run_dir)
    started = time.time()
    # ------------------------------------------------------------------ set-up
    dev = torch.device(_resolve_device(device))
    # From the cluster profile (`sweep.cluster.train_env`), for every backend alike.
    timeout = timedelta(minutes=float(os.environ.get("SCALING_DIST_TIMEOUT_MIN", 60)))
    workers = int(os.environ.get("SCALING_DATA_WORKERS", 0)) or dist.cpus_per_rank()
    env = dist.init_distributed(dev.type, timeout)
    if dev.type == "cuda":
        dev = torch.device("cuda", env.local_rank)
    if threads:
        torch.set_num_threads(threads)
    main = env.rank == 0
    config = spec.config
    method = get_method(spec.method)
    layout = layout or Layout.single(int(config["batch_size"]))
    if layout.gpus != env.world_size:
        raise RunFailed(
            f"layout expects {layout.gpus} ranks, the launcher started {env.world_size}"
        )
    # Batch norm normalises over one micro-batch (x ranks with SyncBN on CUDA), with both
    # views together when that is the whole batch, else one view per forward and the
    # second view shuffled: part of the result, so part of the run's identity.
    layout = layout.for_device(dev.type).with_grouping(spec.method)
    if spec.with_bn_batch(layout.bn_batch, layout.bn_grouping).run_id != spec.run_id:
        raise RunFailed(
            f"run {spec.run_id} was planned with batch norm over "
            f"{spec.bn_batch or config['batch_size']} images per view "
            f"({spec.bn_grouping or 'the whole batch'}); this layout gives {layout.bn_batch} "
            f"({layout.bn_grouping}, micro-batch {layout.micro_batch}): plan it again for this "
            "cluster"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    existing = read_json(run_dir / SPEC) or {}
    if checkpoint_every_s is None:
        checkpoint_every_s = float(existing.get("checkpoint_every_s", CHECKPOINT_EVERY_S))
    if main:
        # started_at: when the run first started training; a resumed run keeps it, so its
        # span (MLflow's start and duration) covers every attempt.
        # What the submitter wrote beside the spec (forced_at, checkpoint_every_s) is kept.
        first = existing.get("started_at") or started
        kept = {k: existing[k] for k in SUBMITTER_KEYS if k in existing}
        write_json(
            run_dir / SPEC,
            {
                **spec.to_dict(),
                "layout": layout.to_dict(),
                **kept,
                "code": git_version(),
                "started_at": first,
            },
        )

    # ------------------------------------------------------------------ data
    train, val, test = run_splits(spec, dev, workers)
    listed: dict[str, Any] = {}  # a list of image names: how many, how many dropped
    if method.labels is Labels.TRAINING:  # on its label fraction (or list), as many steps
        train, config, listed = labelled_training(train, val, spec, config, main)
    size = spec.dataset["image_size"]
    test_crop = DATASETS[spec.dataset["name"]].test_crop  # STL-10 (folders crop when decoding)
    aug = AUGMENTATIONS[method.augmentation](size, config, test_crop)

    # ------------------------------------------------------------------ model
    torch.manual_seed(spec.seed)  # the same initial weights on every rank
    net = build_network(
        spec.method,
        depth=spec.model["depth"],
        width=spec.model["width"],
        stem=spec.model["stem"],
        depth_multiplier=spec.model["depth_multiplier"],
        projection_dim=int(config.get("projection_dim", 128)),
        num_classes=train.num_classes,
    ).to(dev)
    if env.world_size > 1 and dev.type == "cuda":
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)  # global BN (paper B.1)
    if dev.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    step_net = torch.compile(net) if compile else net

    # ------------------------------------------------------------------ optimizer, schedule
    derived = derive(config, layout, len(train), spec.method)
    opt = build_optimizer(
        config["optimizer"],
        net,
        derived.lr,
        float(config["weight_decay"]),
        float(config["momentum"]),
    )
    if main:
        cached = method.cached_accumulation and layout.accum_steps > 1
        print(
            f"run {spec.run_id} ({spec.method}, depth {spec.model['depth']}, "
            f"width {spec.model['width']}, stem {spec.model['stem']}): lr {derived.lr:.4g} "
            f"({config['lr_rule']} rule on the effective batch {derived.effective_batch}), "
            f"{derived.total_steps} steps ({derived.steps_per_epoch:.4g}/epoch x "
            f"{config['epochs']} epochs), warmup {derived.warmup_steps} steps "
            f"({derived.warmup_epochs:g} epochs) from 0; layout micro-batch "
            f"{layout.micro_batch} x {layout.accum_steps} accumulation x {layout.gpus} ranks "
            f"({'cached, full-batch negatives' if cached else 'plain'}); batch norm over "
            f"{layout.bn_batch} images per view, {layout.bn_grouping}; {len(train)} training "
            f"images, {len(val)} held out; device {dev}, {layout.resolved_precision(dev.type)}, "
            f"threads {torch.get_num_threads()}",
            flush=True,
        )

    step = STEPS[method.objective]  # one optimizer step's forward and backward

    # ------------------------------------------------------------------ restore
    gen = torch.Generator(device=dev)
    start_epoch, start_step, global_step, sums = 0, 0, 0, new_sums()
    state = checkpoint.restore(run_dir)  # on the CPU; load_state_dict moves it
    before = 0.0  # wall time of earlier attempts (from the checkpoint)

    def spent() -> float:
        return before + time.time() - started

    if state is not None and state.get("run_id") not in (None, "", spec.run_id):
        raise RunFailed(
            f"{run_dir}: its checkpoints belong to run {state['run_id']}, not "
            f"{spec.run_id}; give this run its own directory"
        )
    if state is not None:
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, start_step, global_step = (
            state["epoch"],
            state["step_in_epoch"],
            state["global_step"],
        )
        sums = state["sums"]
        before = float(state.get("elapsed_s", 0.0))
        checkpoint.restore_rng(state)
        if main:
            print(
                f"resumed from step {global_step} (epoch {start_epoch}, step {start_step})",
                flush=True,
            )
    history: list[dict[str, Any]] = []  # the metrics lines so far, kept in checkpoints
    if main:
        truncate_metrics(run_dir / METRICS, start_epoch)
        # Lines a kill mid-write or a full disk cut from metrics.jsonl come back from
        # the checkpoint, which holds every epoch's line up to it.
        done = [r for r in (state or {}).get("history") or [] if r.get("epoch", 0) <= start_epoch]
        restored = checkpoint.repair_metrics(run_dir, done)
        if restored:
            print(f"repaired metrics.jsonl: {restored} epochs from the checkpoint", flush=True)
        history = list(read_metrics(run_dir / METRICS))

    # ------------------------------------------------------------------ train
    stop = StopFlag()
    # bf16 autocast (CUDA, or the CPU when asked): the loss itself runs in fp32 (steps.py).
    precision = layout.resolved_precision(dev.type)
    autocast = (
        torch.autocast(dev.type, dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )
    per_rank = derived.per_rank_batch
    rows = slice(env.rank * per_rank, (env.rank + 1) * per_rank)
    net.train()
    saved_at = time.monotonic()  # the last checkpoint (time-based ones follow it)
    with stop.installed():
        for epoch in range(start_epoch, int(config["epochs"])):
            gen.manual_seed(_epoch_seed(spec.seed, epoch))
            if state is not None and epoch == start_epoch and start_step > 0:
                gen.set_state(state["aug_rng"].cpu())
            else:
                sums = new_sums()
            losses: list[torch.Tensor] = []
            accs: list[torch.Tensor] = []
            t0 = time.perf_counter()
            # A run stopped after the last step of an epoch resumes with no step left in
            # it: the epoch's record then comes from the restored sums alone.
            lr = sums["lr"]
            stream = train_views(
                train,
                aug,
                gen,
                batch_size=derived.effective_batch,
                seed=spec.seed,
                epoch=epoch,
                rows=rows,
                views=method.views,
                start_step=start_step if epoch == start_epoch else 0,
                device=dev,
                epochs=int(config["epochs"]),
                shuffle=layout.bn_grouping == BNGrouping.SECOND_VIEW_SHUFFLED,
            )
            for step_in_epoch, batch in enumerate(
                stream, start=start_step if epoch == start_epoch else 0
            ):
                lr = warmup_cosine(
                    global_step, derived.total_steps, derived.warmup_steps, derived.lr
                )
                for group in opt.param_groups:
                    group["lr"] = lr
                opt.zero_grad(set_to_none=True)
                loss, top1 = step(step_net, batch, layout, config, autocast)
                if env.world_size > 1:
                    dist.average_gradients(net.parameters())
                opt.step()
                global_step += 1
                losses.append(loss)  # kept as tensors: no CPU-GPU sync per step
                accs.append(top1)
                due = bool(checkpoint_every_s) and time.monotonic() - saved_at >= checkpoint_every_s
                stopping, saving = agree([stop.requested, due], global_step, dev)
                if stopping or saving:
                    check_finite(losses, global_step)
                    # The epoch so far, folded into a copy: this process goes on with its
                    # own sums, so a checkpoint never changes the run's numbers.
                    so_far = dict(sums)
                    fold(so_far, losses, accs, time.perf_counter() - t0, lr)
                    checkpoint.save_state(
                        run_dir,
                        net,
                        opt,
                        _at_state(gen, batch.rng_state),
                        epoch,
                        step_in_epoch + 1,
                        global_step,
                        so_far,
                        main,
                        elapsed_s=spent(),
                        run_id=spec.run_id,
                        history=history,
                    )
                    saved_at = time.monotonic()
                    if stopping:
                        raise Preempted(
                            f"stopped by signal at step {global_step}; checkpoint written"
                        )
            check_finite(losses, global_step)
            fold(sums, losses, accs, time.perf_counter() - t0, lr, across_ranks=True)
            record = epoch_record(epoch, global_step, sums, derived.effective_batch, dev)
            every = method.monitor_every(config)
            if every and (epoch + 1) % every == 0:  # the online kNN monitor, every rank
                record["monitor/knn_top1"] = knn_monitor(
                    net.encoder, train, test, aug, config["eval"]
                )
            start_step = 0
            state = None
            if main:
                append_jsonl(run_dir / METRICS, record)
                history.append(record)
                print(format_epoch(record), flush=True)
                if on_epoch is not None:
                    on_epoch(record)
            checkpoint.save_state(
                run_dir,
                net,
                opt,
                gen,
                epoch + 1,
                0,
                global_step,
                new_sums(),
                main,
                elapsed_s=spent(),
                run_id=spec.run_id,
                history=history,
            )
            saved_at = time.monotonic()
        # A stop that came after the last step's check (the final epoch's record, the kNN
        # monitor, the checkpoint) is honoured before evaluation, which cannot checkpoint:
        # the run resumes at its end and evaluates then.
        if agree([stop.requested], 0, dev)[0]:
            raise Preempted(f"stopped by signal after step {global_step}; checkpoint written")

    # ------------------------------------------------------------------ evaluate
    # Images one training forward held graphs for (cached accumulation: one view's chunk).
    live_views = 1 if method.cached_accumulation and layout.accum_steps > 1 else method.views
    opt.zero_grad(set_to_none=True)  # evaluation needs neither gradients nor momenta
    opt.state.clear()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    evaluations = evaluate_run(  # every rank: sharded features; each resumable (run_dir/evals)
        spec,
        net,
        train,
        test,
        aug,
        val=val,
        run_dir=run_dir,
        batch=layout.micro_batch * live_views,  # a forward the training step fitted
        precision=precision,
        token=f"{spec.run_id}:{global_step}:{_started(run_dir)}",
    )
    result = {**primary(evaluations), "evaluations": evaluations, **listed}
    if main:
        # Judged from the whole curve (earlier attempts' epochs included): the one verdict
        # status, MLflow and the report read (scaling.train.convergence).
        verdict = judge(
            list(read_metrics(run_dir / METRICS)), method.accuracy_plateaus, train.num_classes
        )
        speed = measured_throughput(
            spec, layout, precision, dev, run_dir, global_step * derived.effective_batch
        )
        result.update(
            run_id=spec.run_id,
            method=spec.method,
            epochs=int(config["epochs"]),
            steps=global_step,
            images_seen=global_step * derived.effective_batch,
            **cost_figures(spec, layout, global_step * derived.effective_batch),
            wall_time_s=spent(),  # every attempt's, not only this one's
            derived=derived.to_dict(),
            layout={**layout.to_dict(), "precision": precision},
            throughput=speed.to_dict(),
            convergence=verdict.to_dict(),
        )
        write_json(run_dir / RESULT, result)  # last: its presence means the run finished
        clean(run_dir)  # the evaluations' stores and checkpoints: done with
        throughput.record(speed)  # for the plans of later runs on this device
        print(
            f"result {spec.run_id}: top-1 {result['top1']:.4f}; {verdict.label} "
            f"({verdict.describe()})",
            flush=True,
        )
    if env.world_size > 1:
        torch.distributed.barrier()
    return result


# ---------------------------------------------------------------------- helpers


def _started(run_dir: Path) -> Any:
    """When the run first started (spec.json): with the step, it names the trained network."""
    return (read_json(run_dir / SPEC) or {}).get("started_at")


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _at_state(gen: torch.Generator, state: torch.Tensor) -> torch.Generator:
    """A generator like `gen` at `state` (the stream may already have drawn the next step)."""
    snapshot = torch.Generator(device=gen.device)
    snapshot.set_state(state)
    return snapshot


def _epoch_seed(seed: int, epoch: int) -> int:
    """The augmentation stream of an epoch depends on (seed, epoch) alone."""
    return (seed * 1_000_003 + epoch * 7919 + 17) % (2**63)
