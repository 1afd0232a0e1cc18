"""The Prior interface (an image autoencoder at a fixed resolution), its registry and the loader by spec string."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from raydistill.errors import UserError
from raydistill.registry import Registry
from raydistill.weights import trusting_pickles

# A factory takes the part of the spec after the first colon (or None) and the requested resolution (or None for its
# default) and returns a float32 Prior on the CPU.
PriorFactory = Callable[[str | None, int | None], "Prior"]

PRIORS: Registry[PriorFactory] = Registry("prior")


class Prior(nn.Module):
    """An autoencoder between RGB images in [0, 1] and latents, at one square resolution.

    Subclasses implement ``_encode`` and ``_decode`` on tensors already on the module's device and dtype. The public
    ``encode``/``decode`` do the casting, so a caller can move the prior with ``.to(device, dtype)`` and keep feeding
    float32 tensors from anywhere; they always return float32.

    Attributes:
        name: The spec the prior was loaded from (set by ``load_prior``).
        resolution: Side of the square images the encoder takes and the decoder returns.
        downsample: Ratio of image side to latent side.
        latent_shape: ``(C, h, w)`` of one latent at ``resolution``.
    """

    def __init__(self, name: str, resolution: int, downsample: int, latent_channels: int):
        super().__init__()
        if resolution % downsample:
            lower = max(downsample, resolution - resolution % downsample)
            raise UserError(
                f"resolution {resolution} does not suit prior {name!r}, which downsamples by {downsample}: "
                f"pass a multiple of {downsample} (e.g. {lower} or {lower + downsample})"
            )
        self.name = name
        self.resolution = resolution
        self.downsample = downsample
        side = resolution // downsample
        self.latent_shape: tuple[int, int, int] = (latent_channels, side, side)
        # Tracks the device and dtype the caller moved the prior to, also for priors without parameters.
        self.register_buffer("_anchor", torch.empty(0), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    @property
    def dtype(self) -> torch.dtype:
        return self._anchor.dtype

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Encodes images into latents.

        Args:
            images: Float RGB in [0, 1], shape ``(N, 3, resolution, resolution)``, any device and dtype.

        Returns:
            Float32 latents of shape ``(N, *latent_shape)`` on the prior's device.

        Raises:
            ValueError: If ``images`` has the wrong shape.
        """
        expected = (3, self.resolution, self.resolution)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            shape = ", ".join(map(str, expected))
            raise ValueError(f"prior {self.name!r} encodes images of shape (N, {shape}); got {tuple(images.shape)}: "
                             f"resize the images to the prior's resolution first")
        return self._encode(images.to(self.device, self.dtype)).float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decodes latents into images.

        Args:
            latents: Shape ``(N, *latent_shape)``, any device and dtype.

        Returns:
            Float32 RGB in [0, 1] (clamped), shape ``(N, 3, resolution, resolution)``, on the prior's device.

        Raises:
            ValueError: If ``latents`` has the wrong shape.
        """
        if latents.ndim != 4 or tuple(latents.shape[1:]) != self.latent_shape:
            shape = ", ".join(map(str, self.latent_shape))
            raise ValueError(f"prior {self.name!r} decodes latents of shape (N, {shape}); got {tuple(latents.shape)}")
        return self._decode(latents.to(self.device, self.dtype)).float().clamp(0, 1)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def denoises(kind: str, guidance: float) -> Callable[[PriorFactory], PriorFactory]:
    """Marks a prior factory whose prior has a denoiser conditioned on "labels" or "prompts", with its default
    classifier-free guidance scale, so a config is resolved from the spec alone, before any weights load."""

    def mark(factory: PriorFactory) -> PriorFactory:
        factory.denoiser_kind, factory.default_guidance = kind, guidance
        return factory

    return mark


def prior_traits(spec: str) -> tuple[str, float | None]:
    """(kind, default guidance) of the prior a spec names: ("autoencoder", None) without a denoiser.

    Raises:
        UserError: If the name is unknown.
    """
    factory = PRIORS.get(spec.partition(":")[0])
    return getattr(factory, "denoiser_kind", "autoencoder"), getattr(factory, "default_guidance", None)


def load_prior(spec: str, resolution: int | None = None, trust_pickles: bool = False) -> Prior:
    """Builds a prior from a spec string, in float32 on the CPU.

    Args:
        spec: ``"NAME"`` or ``"NAME:ARG"``, split at the first colon; ARG is what the prior loads from (a local
            directory, or a hub id where the prior supports one). See ``list_priors()`` for the names.
        resolution: Image side the prior works at; None uses the prior's default.
        trust_pickles: also read pickled weights (.bin, .pt); by default only safetensors.

    Returns:
        The prior, with ``name`` set to ``spec``.

    Raises:
        UserError: If the name is unknown, the resolution does not suit the prior, or its weights cannot be loaded.
    """
    name, sep, arg = spec.partition(":")
    if resolution is not None and (isinstance(resolution, bool) or not isinstance(resolution, int) or resolution <= 0):
        raise UserError(f"prior resolution must be a positive integer; got {resolution!r}")
    with trusting_pickles(trust_pickles):
        prior = PRIORS.get(name)(arg if sep else None, resolution)
    prior.name = spec
    return prior


def list_priors() -> list[str]:
    """Returns the registered prior names."""
    return PRIORS.names()
