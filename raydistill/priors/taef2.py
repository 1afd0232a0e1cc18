"""TAEF2, the tiny autoencoder of the TAESD family distilled from the FLUX.2 VAE (Ollin Boer Bohan, MIT licence).

The two halves are plain ``nn.Sequential``s so that the state-dict keys are the layer indices of the released
``encoder.safetensors`` and ``decoder.safetensors``. Images are RGB in [0, 1]; latents have 32 channels at 1/8 of the
image size and no scaling factor.
"""

from __future__ import annotations

import torch
from torch import nn

LATENT_CHANNELS = 32
DOWNSAMPLE = 8
WIDTH = 64


def _conv(n_in: int, n_out: int, bias: bool = True, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=bias)


class Clamp(nn.Module):
    """Soft clamp of the latents to about [-3, 3], as the released decoder expects."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    """Residual block of three 3x3 convs; the "GN" variant first adds a GroupNorm'd 1x1 bottleneck (``pool``)."""

    def __init__(self, width: int = WIDTH, group_norm: bool = False):
        super().__init__()
        self.conv = nn.Sequential(
            _conv(width, width), nn.ReLU(), _conv(width, width), nn.ReLU(), _conv(width, width)
        )
        self.skip = nn.Identity()  # the released weights only have equal in/out widths, so no 1x1 skip conv
        self.fuse = nn.ReLU()
        self.pool = None
        if group_norm:
            hidden = width * 4
            self.pool = nn.Sequential(
                nn.Conv2d(width, hidden, 1, bias=False),
                nn.GroupNorm(4, hidden),
                nn.ReLU(),
                nn.Conv2d(hidden, width, 1, bias=False),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


def build_encoder() -> nn.Sequential:
    """Returns the TAEF2 encoder: (N, 3, H, W) in [0, 1] -> (N, 32, H/8, W/8)."""
    return nn.Sequential(
        _conv(3, WIDTH),
        Block(),
        _conv(WIDTH, WIDTH, bias=False, stride=2),
        Block(),
        Block(),
        Block(),
        _conv(WIDTH, WIDTH, bias=False, stride=2),
        Block(),
        Block(),
        Block(),
        _conv(WIDTH, WIDTH, bias=False, stride=2),
        Block(group_norm=True),
        Block(group_norm=True),
        Block(group_norm=True),
        _conv(WIDTH, LATENT_CHANNELS),
    )


def build_decoder() -> nn.Sequential:
    """Returns the TAEF2 decoder: (N, 32, h, w) -> (N, 3, 8h, 8w), roughly in [0, 1] (the caller clamps)."""
    return nn.Sequential(
        Clamp(),
        _conv(LATENT_CHANNELS, WIDTH),
        nn.ReLU(),
        Block(group_norm=True),
        Block(group_norm=True),
        Block(group_norm=True),
        nn.Upsample(scale_factor=2),
        _conv(WIDTH, WIDTH, bias=False),
        Block(),
        Block(),
        Block(),
        nn.Upsample(scale_factor=2),
        _conv(WIDTH, WIDTH, bias=False),
        Block(),
        Block(),
        Block(),
        nn.Upsample(scale_factor=2),
        _conv(WIDTH, WIDTH, bias=False),
        Block(),
        _conv(WIDTH, 3),
    )
