"""Batched training augmentation on uint8 image tensors: RandomResizedCrop + horizontal flip."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF


def augment(images: torch.Tensor, size: int, min_scale: float, generator: torch.Generator) -> torch.Tensor:
    """Random resized crop (area scale [min_scale, 1], ratio 3/4-4/3) and a coin-flip mirror per image.

    Args:
        images: (N, 3, H, W) float in [0, 1].
        size: output side.
        min_scale: lowest crop area as a fraction of the image.
        generator: the seeded source of randomness (torch's global RNG is left alone).

    Returns:
        (N, 3, size, size) float in [0, 1].
    """
    out = torch.empty(images.shape[0], 3, size, size, dtype=images.dtype, device=images.device)
    height, width = images.shape[-2:]
    area = height * width
    for i, image in enumerate(images):
        # torchvision's get_params draws from the global RNG; draw the crop from ours instead.
        for _ in range(10):
            target = area * (min_scale + (1 - min_scale) * torch.rand(1, generator=generator).item())
            log_ratio = torch.empty(1).uniform_(-0.2877, 0.2877, generator=generator).exp().item()
            w = int(round((target * log_ratio) ** 0.5))
            h = int(round((target / log_ratio) ** 0.5))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
                left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
                break
        else:
            top, left, h, w = 0, 0, height, width
        crop = TF.resized_crop(image, top, left, h, w, [size, size], antialias=True)
        if torch.rand(1, generator=generator).item() < 0.5:
            crop = crop.flip(-1)
        out[i] = crop
    return out




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
