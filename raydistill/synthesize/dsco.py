"""DsCo (Dataset Concentration): a class's samples steered, step by step, to spread over the real class's quantiles.

Sampling runs a stochastic DDIM chain (eta = 1 is DDPM-like) from pure noise. At each reverse step t -> s the next
state of the k samples of one class is x_s(z) = sqrt(a_s) x0 + sqrt(1 - a_s - sigma^2) eps + sigma z, where x0 and eps
come from one (guided) model call and z is the injected noise. Before the step, z of all k samples is optimised jointly
(SGD with momentum) on two terms:

- norm: mean_i (|z_i| / sqrt(d) - 1)^2, which keeps each z where a standard normal's norm concentrates;
- sort: a fixed, seeded, randomly initialised conv net maps x_s(z) to features; sorted per feature over the k samples,
  they should equal the class's quantile pivots at s: the real latents of the class, noised to s with seeded noise,
  mapped by the same net, sorted per feature and averaged within k equal bins. The gaps are measured in units of
  the real features' spread, so the two terms keep their balance whatever the net's scale.

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


def feature_extractor(in_channels: int, seed: int, width: int = 64) -> nn.Module:
    """The fixed random conv net whose features are matched: two conv + ReLU layers, then a global average."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2, ceil_mode=True),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
    return net.eval().requires_grad_(False)


def quantile_pivots(features: torch.Tensor, k: int) -> torch.Tensor:
    """(k, D): each feature's values over the N real samples, sorted and averaged within k equal bins (bin i holds
    sorted rows floor(i N / k) .. floor((i + 1) N / k) - 1)."""
    ordered = features.sort(dim=0).values
    edges = [i * len(ordered) // k for i in range(k + 1)]
    return torch.stack([ordered[edges[i]:edges[i + 1]].mean(0) for i in range(k)])


def feature_spread(features: torch.Tensor) -> torch.Tensor:
    """The real features' std, averaged over features: the unit the sort term's gaps are measured in, so that its
    scale does not hang on the random net's (one number, so dead features stay harmless)."""
    return features.std(0).mean().clamp_min(1e-12)


def sort_loss(features: torch.Tensor, pivots: torch.Tensor, spread: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Mean squared gap between the k samples' per-feature sorted values and the pivots, in units of `spread`."""
    return ((features.sort(dim=0).values - pivots) / spread).pow(2).mean()


def norm_loss(noise: torch.Tensor) -> torch.Tensor:
    """Mean over samples of (|z| / sqrt(d) - 1)^2."""
    flat = noise.flatten(1)
    return (flat.norm(dim=1) / np.sqrt(flat.shape[1]) - 1).pow(2).mean()


def optimise_noise(noise: torch.Tensor, state: Callable[[torch.Tensor], torch.Tensor], extractor: nn.Module,
                   pivots: torch.Tensor, spread: torch.Tensor, iterations: int, lr: float, momentum: float,
                   norm_weight: float) -> torch.Tensor:
    """The injected noise after `iterations` SGD steps on norm_weight * norm + sort, for the whole class at once.

    Args:
        noise: (k, *latent_shape) starting noise.
        state: z -> x_s(z), the next state the noise would give.
    """
    z = noise.detach().clone().requires_grad_(True)
    optimizer = torch.optim.SGD([z], lr=lr, momentum=momentum)
    for _ in range(iterations):
        loss = norm_weight * norm_loss(z) + sort_loss(extractor(state(z)), pivots, spread)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return z.detach()


def noised(latents: torch.Tensor, alpha: float, generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(latents.shape, generator=generator).to(latents.device)
    return np.sqrt(alpha) * latents + np.sqrt(1 - alpha) * noise


def class_features(extractor: nn.Module, latents: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([extractor(latents[i:i + batch_size]) for i in range(0, len(latents), batch_size)])


@torch.inference_mode(False)  # the actor decodes under inference mode; the noise optimisation needs autograd
def dsco_sample(prior, label: int, start: torch.Tensor, real_latents: torch.Tensor, steps: int,
                guidance: float | None, seed: int, iterations: int = 200, lr: float = 0.1, momentum: float = 0.9,
                norm_weight: float = 1.0, eta: float = 1.0, extractor_seed: int = 0) -> tuple[torch.Tensor, dict]:
    """Clean latents of class `label`, sampled from pure noise with the injected noise optimised at every step.

    Args:
        prior: a DiffusionPrior.
        start: (k, *latent_shape) the chains' noise at the last timestep (DsCo: a Latin-hypercube normal draw,
            `latin_hypercube_normal`); k is the IPC.
        real_latents: (N, *latent_shape) the class's encoded latents (the pivots' source), at the prior's scale.
        steps: grid steps over the whole schedule (DsCo: 50).
        guidance: None for the prior's default (DsCo: 4).
        seed: the injected noise and the real latents' noising; with `label` and `start`, fixes the result.
        iterations, lr, momentum: SGD on the injected noise at each step (DsCo: 200, 0.1, 0.9).
        norm_weight: weight of the norm term next to the sort term.
        eta: stochasticity of the DDIM chain (1: DDPM-like; 0 would inject nothing to optimise).
        extractor_seed: initialisation of the random feature extractor.

    Returns:
        (k, *latent_shape) float32 latents, and {"sort_loss_before", "sort_loss_after"}: the sort term averaged over
        the steps, with the injected noise as drawn and as optimised.
    """
    device = prior.device
    generator = torch.Generator().manual_seed(seed * 1_000_003 + label)
    extractor = feature_extractor(prior.latent_shape[0], extractor_seed).to(device)
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
            reference = class_features(extractor, noised(real, a_s, generator))
            pivots, spread = quantile_pivots(reference, k), feature_spread(reference)

            def state(noise, mean=mean, sigma=sigma):
                return mean + sigma * noise

            with torch.no_grad():
                before.append(float(sort_loss(extractor(state(z)), pivots, spread)))
            with torch.enable_grad():
                z = optimise_noise(z, state, extractor, pivots, spread, iterations, lr, momentum, norm_weight)
            with torch.no_grad():
                after.append(float(sort_loss(extractor(state(z)), pivots, spread)))
        x = mean + sigma * z
    return x, {"sort_loss_before": float(np.mean(before)) if before else 0.0,
               "sort_loss_after": float(np.mean(after)) if after else 0.0}
