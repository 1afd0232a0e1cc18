"""DsCo (Dataset Concentration): a class's samples steered, step by step, to spread over the real class's quantiles.

Sampling runs a stochastic DDIM chain (eta = 1 is DDPM-like) from pure noise. At each reverse step t -> s the next
state of the k samples of one class is x_s(z) = sqrt(a_s) x0 + sqrt(1 - a_s - sigma^2) eps + sigma z, where x0 and eps
come from one (guided) model call and z is the injected noise. Before the step, z of all k samples is optimised jointly
(SGD with momentum) on the objective of DsCo's released code (generate/generate.py):

- norm: sum_i |(|z_i| - sqrt(d))| + (|z_i| - sqrt(d))^2, which holds each z where a standard normal's norm
  concentrates;
- sort, weighted sort_weight * k: a fixed random conv net (`feature_extractor`, reseeded for each class) maps x_s(z)
  to 2048 features; each feature is standardised by the real class's mean and std, sorted over the k samples and
  compared with the class's quantile pivots: the real latents noised to the current level t (REAL_DRAWS
  Latin-hypercube draws each, fresh at every step), standardised, sorted per feature and averaged within k equal
  bins. The gaps count as L1 + L2, summed.

The chains start from a Latin-hypercube normal draw (drawn by the `dsco` quantizer), so the k starting noises already
cover each dimension's range. Plain functions on tensors; the synthesize stage runs `dsco_sample` once per class in
its actor pool.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from raydistill.synthesize.ddim import resolve_guidance, timestep_grid


def latin_hypercube_normal(n: int, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """n standard-normal draws of `shape` whose every coordinate has exactly one draw in each of n equal-probability
    strata (a Latin hypercube mapped through the normal quantile function)."""
    d = int(np.prod(shape))
    strata = torch.argsort(torch.rand(n, d, generator=generator), dim=0).double()
    uniform = (strata + torch.rand(n, d, generator=generator, dtype=torch.float64)) / n
    return torch.special.ndtri(uniform.clamp(1e-12, 1 - 1e-12)).float().view(n, *shape)


# DsCo's extractor: a 3x3 conv to 16 groups of 16 channels, then three grouped 4x4 stride-2 convs doubling the
# width, LeakyReLU between, global average: 2048 features.
EXTRACTOR_GROUPS = 16
EXTRACTOR_WIDTHS = (16, 32, 64, 128)
# Noised copies of each real latent behind the pivots, and the sort term's weight, as in DsCo's release.
REAL_DRAWS = 5
SORT_WEIGHT = 5e-4


def feature_extractor(in_channels: int, seed: int) -> nn.Module:
    """DsCo's fixed random conv net on latents, initialised from `seed` (DsCo reseeds it for each class)."""
    widths = [EXTRACTOR_GROUPS * w for w in EXTRACTOR_WIDTHS]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1)]
        for wide, wider in zip(widths, widths[1:]):
            layers += [nn.LeakyReLU(), nn.Conv2d(wide, wider, 4, stride=2, padding=1, groups=EXTRACTOR_GROUPS)]
        net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return net.eval().requires_grad_(False)


def quantile_pivots(features: torch.Tensor, k: int) -> torch.Tensor:
    """(k, D): each feature's values over the N real samples, sorted and averaged within k equal bins (bin i holds
    sorted rows floor(i N / k) .. floor((i + 1) N / k) - 1)."""
    ordered = features.sort(dim=0).values
    edges = [i * len(ordered) // k for i in range(k + 1)]
    return torch.stack([ordered[edges[i]:edges[i + 1]].mean(0) for i in range(k)])


def standardiser(features: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Per-feature (f - mean) / std with the real features' mean and population std: every feature counts alike
    in the sort term, whatever the random net's scale."""
    mean, std = features.mean(0), features.std(0, unbiased=False).clamp_min(1e-12)
    return lambda f: (f - mean) / std


def sort_loss(features: torch.Tensor, pivots: torch.Tensor) -> torch.Tensor:
    """Summed L1 + L2 gap between the k samples' per-feature sorted (standardised) values and the pivots."""
    gap = features.sort(dim=0).values - pivots
    return gap.abs().sum() + gap.pow(2).sum()


def norm_loss(noise: torch.Tensor) -> torch.Tensor:
    """Summed over samples, |(|z| - sqrt(d))| + (|z| - sqrt(d))^2."""
    flat = noise.flatten(1)
    gap = flat.norm(dim=1) - np.sqrt(flat.shape[1])
    return (gap.abs() + gap.pow(2)).sum()


def optimise_noise(noise: torch.Tensor, features: Callable[[torch.Tensor], torch.Tensor], pivots: torch.Tensor,
                   iterations: int, lr: float, momentum: float, sort_weight: float) -> torch.Tensor:
    """The injected noise after `iterations` SGD steps on norm + sort_weight * k * sort, for the whole class at once.

    Args:
        noise: (k, *latent_shape) starting noise.
        features: z -> the standardised features of x_s(z), the next state the noise would give.
        pivots: (k, D) the real class's standardised quantile pivots.
    """
    z = noise.detach().clone().requires_grad_(True)
    optimizer = torch.optim.SGD([z], lr=lr, momentum=momentum)
    for _ in range(iterations):
        loss = norm_loss(z) + sort_weight * len(z) * sort_loss(features(z), pivots)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return z.detach()


def noised_copies(latents: torch.Tensor, alpha: float, generator: torch.Generator) -> torch.Tensor:
    """REAL_DRAWS copies of each latent noised to level alpha, the draws of each coordinate a Latin hypercube."""
    noise = latin_hypercube_normal(REAL_DRAWS, tuple(latents.shape), generator).to(latents.device)
    return (np.sqrt(alpha) * latents + np.sqrt(1 - alpha) * noise).flatten(0, 1)


def class_features(extractor: nn.Module, latents: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([extractor(latents[i:i + batch_size]) for i in range(0, len(latents), batch_size)])


@torch.inference_mode(False)  # the actor decodes under inference mode; the noise optimisation needs autograd
def dsco_sample(prior, label: int, start: torch.Tensor, real_latents: torch.Tensor, steps: int,
                guidance: float | None, seed: int, iterations: int = 200, lr: float = 0.1, momentum: float = 0.9,
                sort_weight: float = SORT_WEIGHT, eta: float = 1.0) -> tuple[torch.Tensor, dict]:
    """Clean latents of class `label`, sampled from pure noise with the injected noise optimised at every step.

    Args:
        prior: a DiffusionPrior.
        start: (k, *latent_shape) the chains' noise at the last timestep (DsCo: a Latin-hypercube normal draw,
            `latin_hypercube_normal`); k is the IPC.
        real_latents: (N, *latent_shape) the class's encoded latents (the pivots' source), at the prior's scale.
        steps: grid steps over the whole schedule (DsCo: 50).
        guidance: None for the prior's default (DsCo: 4).
        seed: the injected noise, the real latents' noising and (plus `label`) the feature extractor; with `label`
            and `start`, fixes the result.
        iterations, lr, momentum: SGD on the injected noise at each step (DsCo: 200, 0.1, 0.9).
        sort_weight: the sort term's weight per sample next to the norm term (DsCo: 5e-4).
        eta: stochasticity of the DDIM chain (1: DDPM-like; 0 would inject nothing to optimise).

    Returns:
        (k, *latent_shape) float32 latents, and {"sort_loss_before", "sort_loss_after"}: the sort term averaged over
        the steps, with the injected noise as drawn and as optimised.
    """
    device = prior.device
    generator = torch.Generator().manual_seed(seed * 1_000_003 + label)
    extractor = feature_extractor(prior.latent_shape[0], seed + label).to(device)
    real = real_latents.float().to(device).clone()  # a normal tensor, even if made under inference mode
    k = len(start)
    labels = torch.full((k,), label, dtype=torch.long)
    scale = resolve_guidance(prior, guidance)
    alphas = prior.alphas_cumprod
    grid = timestep_grid(prior.train_timesteps, steps, prior.train_timesteps - 1)
    x = start.float().to(device).clone()
    before, after = [], []
    for i in reversed(range(len(grid))):
        a_t = float(alphas[grid[i]])
        a_s = float(alphas[grid[i - 1]]) if i else 1.0
        with torch.no_grad():
            eps = prior.predict_noise(x, grid[i], labels, scale)
        clean = (x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
        sigma = eta * np.sqrt((1 - a_s) / (1 - a_t) * (1 - a_t / a_s))
        mean = np.sqrt(a_s) * clean + np.sqrt(max(1 - a_s - sigma**2, 0.0)) * eps
        z = torch.randn(x.shape, generator=generator).to(device)
        if sigma > 0:
            # DsCo's pivots sit at the current level t, one step noisier than the states they steer.
            reference = class_features(extractor, noised_copies(real, a_t, generator))
            standardise = standardiser(reference)
            pivots = quantile_pivots(standardise(reference), k)

            def features(noise, mean=mean, sigma=sigma, standardise=standardise):
                return standardise(extractor(mean + sigma * noise))

            with torch.no_grad():
                before.append(float(sort_loss(features(z), pivots)))
            with torch.enable_grad():
                z = optimise_noise(z, features, pivots, iterations, lr, momentum, sort_weight)
            with torch.no_grad():
                after.append(float(sort_loss(features(z), pivots)))
        x = mean + sigma * z
    return x, {"sort_loss_before": float(np.mean(before)) if before else 0.0,
               "sort_loss_after": float(np.mean(after)) if after else 0.0}
