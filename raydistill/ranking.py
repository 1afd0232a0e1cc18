"""DD-Ranking's label-robust numbers (Li et al., 2025, "DD-Ranking: Rethinking the Evaluation of Dataset
Distillation"), from top-1 accuracies in percent, one per training repeat. No Ray in here.

- HLR (hard label recovery) = top-1 of hard-label students on the full real set - on the distilled set.
- IOR (improvement over random) = top-1 on the distilled set - on a random real subset of the same size, both
  trained the run's way (soft labels where there is a teacher).
- LRS (label-robust score) = (e^a - e^-1) / (e - e^-1) with a = w IOR - (1 - w) HLR, w = 0.5.

As DD-Ranking's code does, each is computed per repeat (the repeats' seeds pair the sets) and then averaged, with
the population std. Unlike its code, which passes percentages, `a` takes the accuracies as fractions, so LRS lies
in [0, 1] as the paper's normalisation intends; it is given here in percent.
"""

from __future__ import annotations

import numpy as np

LRS_WEIGHT = 0.5


def spread(values: np.ndarray) -> dict:
    """Mean, population std (as DD-Ranking) and each repeat's value, rounded to 2 decimals."""
    return {"mean": round(float(values.mean()), 2), "std": round(float(values.std()), 2),
            "runs": [round(float(v), 2) for v in values]}


def label_robust_scores(full_hard: list[float], distilled_hard: list[float], distilled: list[float] | None = None,
                        random: list[float] | None = None, weight: float = LRS_WEIGHT) -> dict:
    """HLR, and where the random subset was trained IOR and LRS, over paired repeats (top-1 in percent).

    Args:
        full_hard: hard-label students on the full real training set.
        distilled_hard: hard-label students on the distilled set.
        distilled, random: the run's students on the distilled set and on the random real subset.
        weight: w in a = w IOR - (1 - w) HLR.
    """
    hlr = np.asarray(full_hard, dtype=np.float64) - np.asarray(distilled_hard, dtype=np.float64)
    scores = {"hlr": spread(hlr)}
    if distilled is not None and random is not None:
        ior = np.asarray(distilled, dtype=np.float64) - np.asarray(random, dtype=np.float64)
        a = (weight * ior - (1 - weight) * hlr) / 100
        lrs = 100 * (np.exp(a) - np.exp(-1)) / (np.exp(1) - np.exp(-1))
        scores.update(ior=spread(ior), lrs=spread(lrs))
    return scores
