"""D3HR group sampling: the IPC draws from the class's diagonal Gaussian whose statistics match it best.

D3HR (Taming Diffusion for Dataset Distillation with High Representativeness), Sec. 3: DDIM inversion makes each
class roughly a diagonal Gaussian N(mu, sigma^2). Draw m candidate groups of K points from it, score each by

    score = a |mean - mu|_2 + b |std - sigma|_2 + c |skew|_2

(paper: a, b, c = 1, 1, 0.5) and keep the lowest. Here mean, std and skew are per feature across the K points of the
group: std with Bessel's correction, skew the moment coefficient mean((x - mean)^3) / std_pop^3 (Fisher's g1, zero for
a symmetric group). Writing a candidate as mu + sigma * z with z standard normal, mean - mu = sigma * mean(z),
std - sigma = sigma * (std(z) - 1) and skew(x) = skew(z), so candidates are scored from z alone, in batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from raydistill.errors import UserError
from raydistill.quantize.base import QUANTIZERS, Quantization
from raydistill.quantize.metrics import cells_and_nearest

# Standard-normal draws scored at once. A GPU wants large launches (64 MiB of float32); on a CPU, 1 MiB blocks that
# stay in cache with their temporaries ran about twice as fast (benchmarks/group_sampling.py --draws-per-batch).
GPU_DRAWS_PER_BATCH = 2**24
CPU_DRAWS_PER_BATCH = 2**18
# Rows folded into the running moments at once.
ROWS_PER_UPDATE = 4096


@dataclass
class RunningMoments:
    """Per-feature mean and variance accumulated over row batches (Chan et al.'s pairwise update, float64)."""

    dim: int
    count: int = 0
    mean: np.ndarray = field(init=False)
    squares: np.ndarray = field(init=False)  # sum of squared deviations from the mean

    def __post_init__(self):
        self.mean = np.zeros(self.dim)
        self.squares = np.zeros(self.dim)

    def update(self, rows: np.ndarray) -> None:
        rows = rows.astype(np.float64)
        n = len(rows)
        if n == 0:
            return
        batch_mean = rows.mean(axis=0)
        batch_squares = ((rows - batch_mean) ** 2).sum(axis=0)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.squares = self.squares + batch_squares + delta**2 * (self.count * n / total)
        self.count = total

    @property
    def variance(self) -> np.ndarray:
        """Population variance (the maximum-likelihood Gaussian fit)."""
        return self.squares / max(self.count, 1)


def group_scores(z: torch.Tensor, sigma: torch.Tensor, score_weights: tuple[float, float, float]) -> torch.Tensor:
    """Scores of candidate groups mu + sigma * z.

    Args:
        z: (B, K, D) standard-normal draws, K >= 2.
        sigma: (D,) the class's standard deviations.
        score_weights: weights of the mean, std and skew terms.

    Returns:
        (B,) scores; lower is more representative.
    """
    k = z.shape[1]
    mean = z.mean(dim=1, keepdim=True)
    centred = z - mean
    power = centred * centred
    second = power.mean(dim=1)
    third = power.mul_(centred).mean(dim=1)  # in place: the batch is the largest allocation here
    std = second.mul(k / (k - 1)).sqrt_()
    skew = third.div_(second.clamp_min_(1e-12).pow_(1.5))
    a, b, c = score_weights
    return (a * (sigma * mean[:, 0]).norm(dim=1) + b * std.sub_(1).mul_(sigma).norm(dim=1)
            + c * skew.norm(dim=1))


def sample_group(mu: np.ndarray, sigma: np.ndarray, k: int, candidates: int,
                 score_weights: tuple[float, float, float], seed: int) -> tuple[np.ndarray, float]:
    """The best of `candidates` seeded groups of k draws from N(mu, sigma^2): (points (k, D) float32, its score).

    Runs on the GPU where the task has one (a different random stream from the CPU's, so other groups).
    """
    if k < 2:
        raise UserError(f"d3hr needs at least 2 images per class to match a spread; got --ipc {k}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    generator = torch.Generator(device).manual_seed(seed)
    sigma_t = torch.from_numpy(sigma.astype(np.float32)).to(device)
    draws_per_batch = GPU_DRAWS_PER_BATCH if device.type == "cuda" else CPU_DRAWS_PER_BATCH
    per_batch = max(1, draws_per_batch // (k * len(mu)))
    best_score, best_z = float("inf"), None
    for start in range(0, candidates, per_batch):
        z = torch.randn(min(per_batch, candidates - start), k, len(mu), generator=generator, device=device)
        scores = group_scores(z, sigma_t, score_weights)
        i = int(scores.argmin())
        if float(scores[i]) < best_score:
            best_score, best_z = float(scores[i]), z[i].clone()
    points = mu.astype(np.float32) + sigma.astype(np.float32) * best_z.cpu().numpy()
    return np.ascontiguousarray(points, dtype=np.float32), best_score


@QUANTIZERS.register("d3hr")
def d3hr(x: np.ndarray, k: int, seed: int = 0, candidates: int = 1_000_000,
         score_weights: tuple[float, float, float] = (1.0, 1.0, 0.5)) -> Quantization:
    """The best of `candidates` groups of k draws from the class's diagonal Gaussian, uniform weights (D3HR)."""
    moments = RunningMoments(x.shape[1])
    for start in range(0, len(x), ROWS_PER_UPDATE):
        moments.update(x[start:start + ROWS_PER_UPDATE])
    points, _ = sample_group(moments.mean, np.sqrt(moments.variance), k, candidates, tuple(score_weights), seed)
    counts, nearest_rows = cells_and_nearest(x, points)
    return Quantization(points=points, weights=np.full(k, 1.0 / k), counts=counts, nearest=nearest_rows)
