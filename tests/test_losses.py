"""Weighted loss, weight transforms and the per-worker batch split."""

import numpy as np
import pytest
import torch

from raydistill.errors import UserError
from raydistill.train.loop import batches_for_epoch
from raydistill.train.losses import per_sample_loss, transform_weights, weighted_mean


def test_weighted_mean_is_normalised_weighted_sum():
    losses = torch.tensor([1.0, 2.0, 4.0])
    weights = torch.tensor([0.5, 0.25, 0.25])
    assert weighted_mean(losses, weights).item() == pytest.approx((0.5 + 0.5 + 1.0) / 1.0)
    assert weighted_mean(losses, torch.ones(3)).item() == pytest.approx(7 / 3)


def test_soft_loss_is_zero_when_student_matches_teacher():
    logits = torch.randn(4, 10)
    assert per_sample_loss(logits, torch.zeros(4, dtype=torch.long), logits, 20.0).abs().max() < 1e-6
    assert (per_sample_loss(logits, torch.zeros(4, dtype=torch.long), -logits, 4.0) > 0).all()


def test_weight_transforms():
    weights = np.array([0.7, 0.2, 0.1, 0.5, 0.5])
    labels = np.array([0, 0, 0, 1, 1])
    for spec in ("none", "uniform", "power:0.5", "mix:0.3"):
        out = transform_weights(weights, labels, spec)
        assert out[labels == 0].sum() == pytest.approx(1) and out[labels == 1].sum() == pytest.approx(1)
    np.testing.assert_allclose(transform_weights(weights, labels, "mix:1")[:3], [0.7, 0.2, 0.1])
    np.testing.assert_allclose(transform_weights(weights, labels, "mix:0")[:3], [1 / 3] * 3)
    np.testing.assert_allclose(transform_weights(weights, labels, "power:0"), transform_weights(weights, labels, "uniform"))
    tempered = transform_weights(weights, labels, "power:0.5")[:3]
    assert tempered.max() / tempered.min() < 0.7 / 0.1


@pytest.mark.parametrize("spec", ["mix:2", "power:-1", "cube", "power", "mix:x"])
def test_bad_weight_transform(spec):
    with pytest.raises(UserError, match="weight_transform"):
        transform_weights(np.ones(2), np.zeros(2), spec)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_batches_cover_every_image_once_per_epoch_and_split_evenly(world):
    n, batch = 23, 8
    per_rank = [batches_for_epoch(n, batch, epoch=5, seed=1, rank=r, world=world) for r in range(world)]
    steps = {len(b) for b in per_rank}
    assert steps == {3}  # ceil(23 / 8), the same on every worker
    seen = np.concatenate([np.concatenate(b) for b in per_rank])
    assert set(seen.tolist()) == set(range(n)) and len(seen) == 24  # one wrap-around pad
    one = batches_for_epoch(n, batch, 5, 1, 0, 1)
    for step in range(3):  # the workers' shares of a step are exactly the single worker's batch
        np.testing.assert_array_equal(np.sort(np.concatenate([b[step] for b in per_rank])), np.sort(one[step]))
