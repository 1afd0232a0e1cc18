"""Per-sample losses, DDOQ's weighted mean that is the same for any number of workers, and weight tempering."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from raydistill.errors import UserError

WEIGHT_TRANSFORMS = ("none", "uniform", "power:A", "mix:B")


def parse_weight_transform(spec: str) -> tuple[str, float]:
    """Splits "power:0.5" into ("power", 0.5); raises UserError on anything not in WEIGHT_TRANSFORMS."""
    name, _, arg = spec.partition(":")
    if name in ("none", "uniform") and not arg:
        return name, 0.0
    if name in ("power", "mix") and arg:
        try:
            value = float(arg)
        except ValueError:
            value = -1.0
        if value >= 0 and (name == "power" or value <= 1):
            return name, value
    raise UserError(
        f"train.weight_transform {spec!r} is not valid; use one of {', '.join(WEIGHT_TRANSFORMS)} "
        "(power:A with A >= 0, mix:B with 0 <= B <= 1)"
    )


def transform_weights(weights: np.ndarray, labels: np.ndarray, spec: str) -> np.ndarray:
    """Tempers prototype weights within each class and renormalises them to sum to 1 per class.

    DDOQ's Voronoi masses can differ by two orders of magnitude within a class, so a few prototypes would
    dominate training. `power:a` uses w^a (a=1 keeps them, a=0 is uniform); `mix:b` uses (1-b)/K + b*w
    (b=1 keeps them, b=0 is uniform); `uniform` drops them (D4M); `none` keeps them as they are.
    """
    name, value = parse_weight_transform(spec)
    out = np.asarray(weights, dtype=np.float64).copy()
    for label in np.unique(labels):
        members = labels == label
        w = out[members] / out[members].sum()
        if name == "uniform":
            w = np.full_like(w, 1.0 / len(w))
        elif name == "power":
            w = w**value
        elif name == "mix":
            w = (1.0 - value) / len(w) + value * w
        out[members] = w / w.sum()
    return out


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None,
                    temperature: float) -> torch.Tensor:
    """Cross-entropy on hard labels, or KL(teacher || student) at a temperature (RDED's soft-label loss)."""
    if teacher_logits is None:
        return F.cross_entropy(logits, labels, reduction="none")
    target = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    prediction = F.log_softmax(logits.float() / temperature, dim=1)
    return (target.exp() * (target - prediction)).sum(dim=1)


def weighted_mean(losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_i w_i l_i / sum_i w_i over the global batch (all workers), scaled for DDP's gradient averaging.

    DDP averages gradients over the world size W, so each worker returns W * (its sum of w_i l_i) / (global
    sum of w_i); the averaged gradient is then exactly that of the global weighted mean, for any W.
    """
    total = weights.sum()
    world = 1
    if dist.is_available() and dist.is_initialized():
        total = total.detach().clone()
        dist.all_reduce(total)
        world = dist.get_world_size()
    return (weights * losses).sum() * world / total


def mixed_weighted_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, partner: torch.Tensor,
                        lam: float, teacher_logits: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """The weighted mean loss of a CutMix/Mixup batch, where sample i holds lam of image i and 1 - lam of partner[i].

    Its weight is lam * w_i + (1 - lam) * w_partner[i]; on hard labels its loss is lam * l(y_i) + (1 - lam) *
    l(y_partner[i]); with a teacher, the teacher already saw the mixed image, so its soft label needs no mixing.
    """
    if teacher_logits is None:
        losses = (lam * per_sample_loss(logits, labels, None, temperature)
                  + (1 - lam) * per_sample_loss(logits, labels[partner], None, temperature))
    else:
        losses = per_sample_loss(logits, labels, teacher_logits, temperature)
    return weighted_mean(losses, lam * weights + (1 - lam) * weights[partner])
