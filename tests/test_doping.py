"""Doping's core: clarity as defined, exactly the N lowest-clarity images (globally or per class) and never one twice,
and weights that still sum to 1 in every class."""

import numpy as np
import pytest
import torch

from raydistill.synthesize.doping import clarity, doped_weights, lowest_clarity


def test_clarity_is_own_probability_minus_the_best_other():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 1.0, 1.0]])
    labels = torch.tensor([0, 2, 1])
    p = logits.softmax(1)
    expected = torch.tensor([p[0, 0] - p[0, 1], p[1, 2] - p[1, 1], 0.0])
    torch.testing.assert_close(clarity(logits, labels), expected)


@pytest.mark.parametrize("per_class", [False, True])
def test_lowest_clarity_matches_a_direct_sort_and_never_repeats(per_class):
    rng = np.random.default_rng(0)
    ids = np.array([f"img{i:04d}" for i in rng.permutation(300)])
    labels = rng.integers(0, 5, 300)
    scores = np.round(rng.uniform(-1, 1, 300), 2)  # rounded: ties happen and go to the smaller id
    chosen = lowest_clarity(ids, labels, scores, 7, per_class)
    assert len(set(chosen.tolist())) == len(chosen)
    rows = sorted(range(300), key=lambda i: (scores[i], ids[i]))
    if per_class:
        expected = [i for label in range(5) for i in [r for r in rows if labels[r] == label][:7]]
    else:
        expected = rows[:7]
    assert sorted(chosen.tolist()) == sorted(expected)
    shuffled = rng.permutation(300)  # the same images chosen whatever the rows' order
    again = lowest_clarity(ids[shuffled], labels[shuffled], scores[shuffled], 7, per_class)
    assert sorted(ids[shuffled][again]) == sorted(ids[chosen])


def test_doped_weights_sum_to_one_per_class():
    labels = np.array([0, 0, 1, 1, 2])
    weights = np.array([0.75, 0.25, 0.5, 0.5, 1.0])
    added = np.array([0, 1, 1, 3])
    kept, extra = doped_weights(labels, weights, added, share=0.2)
    np.testing.assert_allclose(kept, [0.6, 0.2, 0.4, 0.4, 1.0])  # class 2 got nothing: unchanged
    np.testing.assert_allclose(extra, [0.2, 0.1, 0.1, 1.0])  # class 3 had no distilled images: all its weight
    kept, extra = doped_weights(labels, weights, added, share=None)
    np.testing.assert_allclose(kept[:2], [0.75 * 2 / 3, 0.25 * 2 / 3])  # one added to two: a third to the added
    np.testing.assert_allclose(extra[0], 1 / 3)
    for label in range(4):
        assert kept[labels == label].sum() + extra[added == label].sum() == pytest.approx(1.0)
