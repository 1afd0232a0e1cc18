"""Deterministic DDIM (eta = 0) between clean latents and a noise level, in both directions.

The states form a chain: the clean latent (alpha = 1), then the latent noised to each timestep of the grid. Moving
across one link uses the noise the model predicts at the link's upper timestep, in both directions, so inversion
followed by sampling on the same grid returns the input up to the model's change across each link, an error that
falls as the grid gets finer.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from raydistill.errors import UserError

# (noisy latents, timestep) -> predicted noise, float32, same shape.
NoisePredictor = Callable[[torch.Tensor, int], torch.Tensor]


def timestep_grid(train_timesteps: int, steps: int, last: int) -> list[int]:
    """Timesteps of a `steps`-step DDIM grid ("leading" spacing) from 0 up to and including `last`.

    Args:
        train_timesteps: length of the model's training schedule (1000 for DiT and SD).
        steps: number of steps the grid would have over the whole schedule (50 in D3HR and DsCo).
        last: the noise level to stop at; added to the grid if it is not on it.

    Raises:
        UserError: If `last` is outside the schedule or `steps` is not in 1 .. train_timesteps.
    """
    if not 1 <= steps <= train_timesteps:
        raise UserError(f"DDIM steps must be between 1 and the schedule's {train_timesteps} timesteps; got {steps}")
    if not 0 <= last < train_timesteps:
        raise UserError(f"noise level t = {last} is outside the prior's schedule 0..{train_timesteps - 1}: "
                        f"pick a timestep in that range (D3HR uses 600 of 1000)")
    return list(range(0, last, train_timesteps // steps)) + [last]


def ddim_move(x: torch.Tensor, noise: torch.Tensor, alpha_from: float, alpha_to: float) -> torch.Tensor:
    """One DDIM step between noise levels: predict the clean latent, then re-noise it with the same noise."""
    clean = (x - np.sqrt(1.0 - alpha_from) * noise) / np.sqrt(alpha_from)
    return np.sqrt(alpha_to) * clean + np.sqrt(1.0 - alpha_to) * noise


def ddim_invert(latents: torch.Tensor, predict: NoisePredictor, alphas_cumprod: np.ndarray,
                grid: list[int]) -> torch.Tensor:
    """Clean latents -> the deterministic noise at the grid's last timestep (float32)."""
    x, alpha = latents.float(), 1.0
    for t in grid:
        x = ddim_move(x, predict(x, t), alpha, float(alphas_cumprod[t]))
        alpha = float(alphas_cumprod[t])
    return x


def ddim_sample(noisy: torch.Tensor, predict: NoisePredictor, alphas_cumprod: np.ndarray,
                grid: list[int]) -> torch.Tensor:
    """Latents at the grid's last timestep -> clean latents (float32)."""
    x = noisy.float()
    for i in reversed(range(len(grid))):
        alpha_to = float(alphas_cumprod[grid[i - 1]]) if i else 1.0
        x = ddim_move(x, predict(x, grid[i]), float(alphas_cumprod[grid[i]]), alpha_to)
    return x


def add_noise(latents: torch.Tensor, noise: torch.Tensor, alpha: float) -> torch.Tensor:
    """The forward process q(x_t | x_0) with the given standard-normal noise (img2img's starting point)."""
    return np.sqrt(alpha) * latents.float() + np.sqrt(1.0 - alpha) * noise


def resolve_guidance(prior, guidance: float | None) -> float:
    """The configured guidance scale, or the prior's default where the config leaves it unset."""
    return prior.default_guidance if guidance is None else guidance


def invert_latents(prior, latents: torch.Tensor, labels: torch.Tensor, t_end: int, steps: int,
                   guidance: float | None) -> torch.Tensor:
    """DDIM inversion of a batch of one prior's latents to noise level `t_end`, conditioned on their labels.

    Args:
        prior: a DiffusionPrior.
        latents: (N, *latent_shape) clean latents.
        labels: (N,) class labels.
        t_end: timestep to invert to; steps: grid steps over the whole schedule; guidance: None for the prior's.
    """
    scale = resolve_guidance(prior, guidance)
    grid = timestep_grid(prior.train_timesteps, steps, t_end)
    return ddim_invert(latents, lambda x, t: prior.predict_noise(x, t, labels, scale), prior.alphas_cumprod, grid)


def sample_latents(prior, points: torch.Tensor, labels: torch.Tensor, t_start: int, steps: int,
                   guidance: float | None, row_seeds: list[int] | None = None) -> torch.Tensor:
    """DDIM sampling of a batch from noise level `t_start` back to clean latents.

    Args:
        prior: a DiffusionPrior.
        points: (N, *latent_shape) noisy latents at `t_start`, or clean latents when `row_seeds` is given: those are
            first noised to `t_start` with standard-normal noise seeded per row (img2img), so a row's result does not
            depend on the batch it came in.
        labels: (N,) class labels.
    """
    scale = resolve_guidance(prior, guidance)
    grid = timestep_grid(prior.train_timesteps, steps, t_start)
    x = points.float()
    if row_seeds is not None:
        noise = torch.stack([torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(s)) for s in row_seeds])
        x = add_noise(x, noise.to(x.device), float(prior.alphas_cumprod[t_start]))
    return ddim_sample(x, lambda y, t: prior.predict_noise(y, t, labels, scale), prior.alphas_cumprod, grid)
