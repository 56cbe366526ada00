"""Linear evaluation: the probe sees only training data until it predicts."""

from __future__ import annotations

import pytest
import torch

from scaling.train.evaluate import linear_probe

CONFIG = {"batch_size": 64, "lr": 1.0, "weight_decay": 0.0, "epochs": 30}


def _data() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(400) % 2
    x = torch.randn(400, 4, generator=g) * 0.3
    x[:, 0] += torch.where(y == 1, 2.0, -2.0)
    test_x = torch.randn(100, 4, generator=g) * 0.3
    test_x[:, 0] += 2.0  # every test image is of class 1: its mean is not the training mean
    test_x[:, 1] = 0.0  # and one feature is constant on the test set (std 0)
    return x, y, test_x, torch.ones(100, dtype=torch.long)


@pytest.mark.parametrize("augmented", [False, True])
def test_features_are_standardised_with_training_statistics(augmented: bool) -> None:
    # The test set's statistics must not shape training: scaled by the test set's std
    # (0 in one feature) the training features would blow up and the probe diverge.
    x, y, test_x, test_y = _data()
    augment = (lambda images, gen: images) if augmented else None
    top = linear_probe(x, y, test_x, test_y, 2, CONFIG, seed=0, augment_features=augment)
    assert top[1] > 0.98
