"""Batched training augmentation on image tensors: RandomResizedCrop + horizontal flip, CutMix and Mixup, each a few
tensor ops on the whole batch, on the device the batch is on."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F

# RandomResizedCrop's aspect ratios, 3/4 to 4/3, drawn uniformly in log space; and its number of tries.
LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))
CROP_TRIES = 10


def crop_boxes(n: int, height: int, width: int, min_scale: float, generator: torch.Generator) -> torch.Tensor:
    """torchvision's RandomResizedCrop parameters for `n` images at once, from `generator` (torch's global RNG is left
    alone): per image, the first of 10 draws (area scale in [min_scale, 1], ratio in [3/4, 4/3]) whose box fits, else
    the whole image (torchvision's fallback for an image whose own ratio is within [3/4, 4/3]).

    Returns:
        (n, 4) float64 boxes (left, top, right, bottom) in pixel edges: the box covers pixels left..right-1.
    """
    scale = min_scale + (1 - min_scale) * torch.rand(n, CROP_TRIES, generator=generator, dtype=torch.float64)
    ratio = torch.empty(n, CROP_TRIES, dtype=torch.float64).uniform_(*LOG_RATIO, generator=generator).exp()
    target = height * width * scale
    w, h = torch.round(torch.sqrt(target * ratio)), torch.round(torch.sqrt(target / ratio))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # the first try that fits (0 when none does)
    found = fits.any(dim=1)
    w = torch.where(found, w.gather(1, first).squeeze(1), float(width))
    h = torch.where(found, h.gather(1, first).squeeze(1), float(height))
    top = torch.floor(torch.rand(n, generator=generator, dtype=torch.float64) * (height - h + 1))
    left = torch.floor(torch.rand(n, generator=generator, dtype=torch.float64) * (width - w + 1))
    return torch.stack([left, top, left + w, top + h], dim=1)


def augment(images: torch.Tensor, size: int, min_scale: float, generator: torch.Generator) -> torch.Tensor:
    """Random resized crop (`crop_boxes`) resampled to `size` and a coin-flip mirror per image, for the whole batch:
    one affine sampling grid per image and one `grid_sample`.

    Sampling is bilinear at the same pixel centres as torchvision's resize (align_corners=False), which is what its
    antialiased resize does when enlarging: the students train at their set's own size, so a crop is never larger
    than the output. (Points within half a pixel of a crop's edge read the pixel beyond it where the image has one;
    torchvision repeats the edge pixel.)

    Args:
        images: (N, 3, H, W) float in [0, 1].
        size: output side.
        min_scale: lowest crop area as a fraction of the image.
        generator: the seeded source of randomness, on the CPU.

    Returns:
        (N, 3, size, size) float in [0, 1].
    """
    n, channels, height, width = images.shape
    left, top, right, bottom = crop_boxes(n, height, width, min_scale, generator).unbind(dim=1)
    mirror = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0).double()
    # Output coordinate u in [-1, 1] (pixel edges) to input coordinate: u * (crop / side) + (crop centre, normalised).
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 2] = mirror * (right - left) / width, (left + right) / width - 1
    theta[:, 1, 1], theta[:, 1, 2] = (bottom - top) / height, (top + bottom) / height - 1
    grid = F.affine_grid(theta.to(images.device, images.dtype), [n, channels, size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


MIXES = ("cutmix", "mixup", "none")


def mix_batch(images: torch.Tensor, mode: str, alpha: float,
              rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """CutMix or Mixup of a batch with a permutation of itself.

    CutMix (Yun et al. 2019): paste a box of area about (1 - lambda) from the partner image; lambda is then the
    share of the image left after the box was clipped to the image. Mixup (Zhang et al. 2018): lambda * own image
    + (1 - lambda) * partner.

    Args:
        images: (N, 3, H, W) float.
        mode: one of MIXES.
        alpha: lambda ~ Beta(alpha, alpha).
        rng: the seeded source of randomness.

    Returns:
        The mixed images, each image's partner index, and lambda (the share of each image's own content).
    """
    n, _, height, width = images.shape
    if mode == "none" or n < 2:
        return images, torch.arange(n, device=images.device), 1.0
    lam = float(rng.beta(alpha, alpha))
    partner = torch.from_numpy(rng.permutation(n)).to(images.device)
    if mode == "mixup":
        return lam * images + (1 - lam) * images[partner], partner, lam
    cut_h, cut_w = int(height * (1 - lam) ** 0.5), int(width * (1 - lam) ** 0.5)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    mixed = images.clone()
    mixed[:, :, top:bottom, left:right] = images[partner][:, :, top:bottom, left:right]
    return mixed, partner, 1.0 - (bottom - top) * (right - left) / (height * width)
