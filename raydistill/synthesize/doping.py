"""DsCo's doping: add to a distilled set the real images that a student trained on it finds least clear.

The clarity of an image with label y under a classifier is p(y) - max_{c != y} p(c) (softmax probabilities): negative
where the student prefers another class, near 1 where it is sure of the right one. The lowest-clarity real images
are the ones the synthetic set teaches worst, so they are the ones worth adding. Plain functions on arrays; the dope
stage scores the shards in an actor pool and calls these.
"""

from __future__ import annotations

import numpy as np
import torch


def clarity(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N,) p(y) - max_{c != y} p(c) of each row of logits (N, C) for its label y."""
    probabilities = logits.float().softmax(dim=1)
    own = probabilities.gather(1, labels.view(-1, 1)).squeeze(1)
    others = probabilities.scatter(1, labels.view(-1, 1), float("-inf")).max(dim=1).values
    return own - others


def lowest_clarity(ids: np.ndarray, labels: np.ndarray, scores: np.ndarray, count: int,
                   per_class: bool) -> np.ndarray:
    """Indices (into ids) of the `count` lowest-clarity images, over all classes or `count` of each class (fewer
    where a class has fewer); ties go to the smaller id, so the choice does not depend on the rows' order."""
    order = np.lexsort((np.asarray(ids, dtype=str), scores))  # by score, then id
    if not per_class:
        return np.sort(order[:count])
    chosen = [order[labels[order] == label][:count] for label in np.unique(labels)]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def doped_weights(distilled_labels: np.ndarray, distilled_weights: np.ndarray, added_labels: np.ndarray,
                  share: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Training weights of a class's distilled images and of the real images added to it, summing to 1 per class.

    In a class that received m added images, those share `share` of its weight uniformly and the distilled images
    keep 1 - share of it in their own proportions; `share` None gives each added image the weight of an average
    image of the class (share = m / (k + m) for k distilled images). Classes that received none are unchanged.

    Returns:
        (new distilled weights, added images' weights).
    """
    distilled_weights = np.asarray(distilled_weights, dtype=np.float64).copy()
    added = np.zeros(len(added_labels), dtype=np.float64)
    for label in np.unique(added_labels):
        into, mine = added_labels == label, distilled_labels == label
        m, k = int(into.sum()), int(mine.sum())
        part = m / (k + m) if share is None else share
        if k:
            distilled_weights[mine] *= (1 - part) / distilled_weights[mine].sum()
        added[into] = (part if k else 1.0) / m
    return distilled_weights, added
