from __future__ import annotations

import math

import pytest
import torch

from scaling.plan.layout import Layout, derive
from scaling.plan.schedule import lr_for_batch, warmup_cosine


@pytest.mark.parametrize(
    ("rule", "batch", "expected"),
    [
        ("linear", 256, 0.3),
        ("linear", 4096, 4.8),  # SimCLR: 0.3 x 4096 / 256
        ("sqrt", 4096, 4.8),  # 0.075 x 64: the two rules meet at 4096
        ("sqrt", 256, 1.2),
        ("sqrt", 64, 0.6),
        (0.5, 1024, 0.5),
    ],
)
def test_lr_rules(rule: str | float, batch: int, expected: float) -> None:
    assert lr_for_batch(rule, batch) == pytest.approx(expected)


def test_unknown_rule_is_rejected() -> None:
    with pytest.raises(ValueError, match="allowed"):
        lr_for_batch("cubic", 256)


def test_warmup_then_cosine_to_zero() -> None:
    base, total, warm = 1.0, 100, 10
    lrs = [warmup_cosine(s, total, warm, base) for s in range(total)]
    assert lrs[0] == 0.0 and lrs[9] == pytest.approx(0.9)  # from LR 0, as the official code
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11], strict=True))
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert warmup_cosine(total, total, warm, base) == pytest.approx(0.0)


def official_schedule(step: int, n: int, epochs: int, batch: int, warmup_epochs: float, lr: float):
    """google-research/simclr model_util.py, `get_train_steps` and
    `learning_rate_schedule`, transcribed line by line (tf.train.cosine_decay with alpha 0:
    0.5 * (1 + cos(pi * min(step, decay_steps) / decay_steps)) * lr)."""
    total_steps = n * epochs // batch + 1
    warmup_steps = int(round(warmup_epochs * n // batch))
    learning_rate = step / int(warmup_steps) * lr if warmup_steps else lr
    if step < warmup_steps:
        return learning_rate, total_steps, warmup_steps
    decay_steps = total_steps - warmup_steps
    cosine = 0.5 * (1 + math.cos(math.pi * min(step - warmup_steps, decay_steps) / decay_steps))
    return lr * cosine, total_steps, warmup_steps


@pytest.mark.parametrize(
    ("n", "epochs", "batch", "warmup"),
    [
        (50_000, 100, 4096, 10.0),
        (1293, 20, 128, 2.0),
        (1_281_167, 90, 4096, 0.0),
        (100, 3, 100, 1.0),
    ],
)
def test_steps_and_schedule_are_the_official_codes(
    n: int, epochs: int, batch: int, warmup: float
) -> None:
    config = {"batch_size": batch, "epochs": epochs, "warmup_epochs": warmup, "lr_rule": "linear"}
    d = derive(config, Layout.single(batch), n_train=n, method="simclr")
    _, total, warm = official_schedule(0, n, epochs, batch, warmup, d.lr)
    assert (d.total_steps, d.warmup_steps) == (total, warm)
    for step in {0, 1, warm - 1, warm, warm + 1, total // 2, total - 1}:
        if 0 <= step < total:
            expected = official_schedule(step, n, epochs, batch, warmup, d.lr)[0]
            got = warmup_cosine(step, d.total_steps, d.warmup_steps, d.lr)
            assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_epochs_cut_the_official_step_count_from_one_stream() -> None:
    from scaling.plan.layout import epoch_steps, total_steps
    from scaling.train.data import stream_batches

    n, batch, epochs = 10, 4, 3  # 3 x 10 // 4 + 1 = 8 steps, 32 images: 2 past the 3 epochs
    ranges = [epoch_steps(n, batch, epochs, e) for e in range(epochs)]
    assert [list(r) for r in ranges] == [[0, 1, 2], [3, 4], [5, 6, 7]]
    assert total_steps(n, epochs, batch) == 8
    seen = torch.cat(list(stream_batches(n, batch, seed=0, steps=range(8))))
    for e in range(3):  # every image once per epoch, in a fresh order
        assert sorted(seen[e * n : (e + 1) * n].tolist()) == list(range(n))
    assert seen[:n].tolist() != seen[n : 2 * n].tolist()
    resumed = torch.cat(list(stream_batches(n, batch, seed=0, steps=range(5, 8))))
    assert resumed.tolist() == seen[20:].tolist()  # a step's images depend on (seed, step)


def test_derive_uses_the_effective_batch() -> None:
    config = {"batch_size": 512, "epochs": 10, "warmup_epochs": 1, "lr_rule": "linear"}
    d = derive(
        config, Layout(micro_batch=64, accum_steps=4, gpus=2), n_train=50_000, method="simclr"
    )
    assert d.lr == pytest.approx(0.6)  # 0.3 x 512/256, not the micro-batch's 64
    assert d.total_steps == 50_000 * 10 // 512 + 1 and d.warmup_steps == 97
    assert d.per_rank_batch == 256
    with pytest.raises(ValueError):
        derive(
            config, Layout(micro_batch=64, accum_steps=3, gpus=2), n_train=50_000, method="simclr"
        )


@pytest.mark.parametrize(
    ("method", "epochs", "expected"),
    [
        ("simclr", 10, 1.0),
        ("simclr", 100, 10.0),
        ("simclr", 1000, 10.0),
        ("supervised", 10, 1.0),
        ("supervised", 90, 5.0),
    ],
)
def test_default_warmup_is_the_papers_or_a_tenth_of_the_run(
    method: str, epochs: int, expected: float
) -> None:
    # SimCLR's 10 epochs (the official warmup_epochs) for a 10-epoch run would keep the LR
    # rising for the whole run: the default is 10 epochs or 10% of the run, whichever is shorter.
    config = {"batch_size": 100, "epochs": epochs, "warmup_epochs": None, "lr_rule": "linear"}
    d = derive(config, Layout.single(100), n_train=1000, method=method)
    assert d.warmup_steps == round(expected * 10) and d.warmup_epochs == expected
    lrs = [warmup_cosine(s, d.total_steps, d.warmup_steps, d.lr) for s in range(d.total_steps)]
    assert max(lrs) == pytest.approx(d.lr) and lrs[-1] < 0.05 * d.lr  # it peaks, then decays


def test_sweep_default_warmup_is_null() -> None:
    from scaling.sweep.methods import METHODS

    for info in METHODS.values():
        assert info.config().warmup_epochs is None
