"""Conversions between uint8 image arrays, float tensors and PNG bytes, shared by the stages."""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def to_tensor(images: np.ndarray, size: int | None = None) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, size, size) in [0, 1], resized (bicubic, antialiased) when size differs."""
    # The float copy is made in numpy: Ray Data hands over read-only arrays, which torch warns about sharing.
    tensor = torch.from_numpy(np.asarray(images, dtype=np.float32)).permute(0, 3, 1, 2) / 255.0
    if size is not None and tensor.shape[-1] != size:
        tensor = F.interpolate(tensor, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return tensor.clamp(0, 1)


def to_uint8(images: torch.Tensor, size: int | None = None) -> np.ndarray:
    """float (N, 3, H, W) in [0, 1] -> uint8 (N, size, size, 3), downsampled with area averaging when smaller."""
    images = images.float()
    if size is not None and images.shape[-1] != size:
        mode = "area" if size < images.shape[-1] else "bicubic"
        images = F.interpolate(images, size=(size, size), mode=mode)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 (H, W, 3) -> PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def png_decode(data: bytes) -> np.ndarray:
    """PNG (or any PIL-readable) bytes -> uint8 (H, W, 3)."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
