from __future__ import annotations

import math

import pytest

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
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10], strict=True))
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert warmup_cosine(total, total, warm, base) == pytest.approx(0.0)


def test_derive_uses_the_effective_batch() -> None:
    config = {"batch_size": 512, "epochs": 10, "warmup_epochs": 1, "lr_rule": "linear"}
    d = derive(
        config, Layout(micro_batch=64, accum_steps=4, gpus=2), n_train=50_000, method="simclr"
    )
    assert d.lr == pytest.approx(0.6)  # 0.3 x 512/256, not the micro-batch's 64
    assert d.steps_per_epoch == 97 and d.total_steps == 970 and d.warmup_steps == 97
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
    assert d.warmup_steps == round(expected * 10)
    lrs = [warmup_cosine(s, d.total_steps, d.warmup_steps, d.lr) for s in range(d.total_steps)]
    assert max(lrs) == pytest.approx(d.lr) and lrs[-1] < 0.05 * d.lr  # it peaks, then decays


def test_sweep_default_warmup_is_null() -> None:
    from scaling.sweep.methods import METHODS

    for info in METHODS.values():
        assert info.config().warmup_epochs is None
