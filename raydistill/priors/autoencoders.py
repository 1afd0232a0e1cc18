"""The autoencoder priors: pixel (identity), taef2 (tiny pretrained AE), vae (any diffusers VAE), tiny (for tests)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from raydistill.errors import UserError
from raydistill.priors import taef2
from raydistill.priors.base import PRIORS, Prior
from raydistill.weights import from_pretrained, load_config

# Default resolutions: the trained models' working sizes; CIFAR size for the pixel and test priors.
PIXEL_RESOLUTION = 32
TAEF2_RESOLUTION = 64
VAE_RESOLUTION = 256
TINY_RESOLUTION = 32

# Scales the tiny random VAE's latents to about unit variance on uniform-noise images (measured on the seed-0 model),
# playing the role a trained VAE's config.scaling_factor plays.
TINY_SCALING_FACTOR = 4.0

_SUPPORTED_VAES = ("AutoencoderKL", "AutoencoderTiny")
_VAE_HINT = "pass vae:DIR with a local directory holding a diffusers AutoencoderKL (config.json + weights)"


def _no_argument(name: str, arg: str | None) -> None:
    if arg is not None:
        raise UserError(f"prior {name!r} takes no argument; got {name}:{arg}: pass just {name!r}")


class PixelPrior(Prior):
    """The identity: a latent is the image itself. The baseline that distils in pixel space."""

    def __init__(self, resolution: int):
        super().__init__("pixel", resolution, downsample=1, latent_channels=3)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents


class TAEF2Prior(Prior):
    """TAEF2 (see ``taef2.py``) with its released weights; images in [0, 1], no latent scaling."""

    def __init__(self, directory: Path, resolution: int):
        super().__init__("taef2", resolution, downsample=taef2.DOWNSAMPLE, latent_channels=taef2.LATENT_CHANNELS)
        if not directory.is_dir():
            raise UserError(f"taef2 weights directory {directory} does not exist: pass taef2:DIR where DIR holds "
                            f"encoder.safetensors and decoder.safetensors")
        self.encoder = taef2.build_encoder()
        self.decoder = taef2.build_decoder()
        _load_taef2_half(self.encoder, directory / "encoder.safetensors", "encoder")
        _load_taef2_half(self.decoder, directory / "decoder.safetensors", "decoder")
        self.eval().requires_grad_(False)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(latents)


def _load_taef2_half(module: nn.Module, file: Path, half: str) -> None:
    """Loads one of the two TAEF2 safetensors files into ``module`` strictly, with errors that name the file."""
    expected = f"the TAEF2 {half} weights ({file.name} of the taef2 release, keys as built in priors/taef2.py)"
    if not file.is_file():
        raise UserError(f"{file} not found: expected {expected}; pass taef2:DIR where DIR holds encoder.safetensors "
                        f"and decoder.safetensors")
    try:
        state = load_file(str(file))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{file} is not a valid safetensors file ({e}); expected {expected}") from e
    wanted = set(module.state_dict())
    missing, unexpected = sorted(wanted - set(state)), sorted(set(state) - wanted)
    if missing or unexpected:
        raise UserError(f"{file} does not hold {expected}: missing keys {missing[:5]}, unexpected keys "
                        f"{unexpected[:5]} ({len(missing)} and {len(unexpected)} in all)")
    try:
        module.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as e:
        raise UserError(f"{file} has tensors of the wrong shape for {expected}: {e}") from e


class DiffusersVAEPrior(Prior):
    """A diffusers ``AutoencoderKL`` or ``AutoencoderTiny``: images mapped to [-1, 1], latents scaled by the config.

    Encoding takes the mode of the latent distribution so that the same image always gives the same latent.
    """

    def __init__(self, vae: nn.Module, name: str, resolution: int):
        from diffusers import AutoencoderTiny

        config = vae.config
        self.is_tiny = isinstance(vae, AutoencoderTiny)
        super().__init__(name, resolution, downsample=vae_downsample(vae), latent_channels=config.latent_channels)
        self.vae = vae.eval().requires_grad_(False)
        self.scaling_factor = float(config.get("scaling_factor") or 1.0)
        # SD3/FLUX-style VAEs centre their latents before scaling; older configs have no shift.
        self.shift_factor = float(config.get("shift_factor") or 0.0)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        out = self.vae.encode(images * 2 - 1)
        latents = out.latents if self.is_tiny else out.latent_dist.mode()
        return (latents - self.shift_factor) * self.scaling_factor

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        images = self.vae.decode(latents / self.scaling_factor + self.shift_factor).sample
        return (images + 1) / 2


def vae_downsample(vae: nn.Module) -> int:
    """Image side / latent side of a diffusers VAE: each encoder block but the first halves the resolution."""
    blocks = vae.config.get("encoder_block_out_channels") or vae.config.block_out_channels
    return 2 ** (len(blocks) - 1)


def _vae_source(arg: str) -> list[tuple[str, str | None]]:
    """Returns the (path or hub id, subfolder) pairs to try for ``vae:ARG``, failing fast on a missing local path."""
    path = Path(arg).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return [(str(path), None)]
        if (path / "vae" / "config.json").is_file():
            return [(str(path), "vae")]
        raise UserError(f"VAE directory {path} has no config.json nor vae/config.json: {_VAE_HINT}")
    # A hub id is "name" or "owner/name"; anything else is a local path that is not there.
    if path.exists() or arg.startswith(("/", ".", "~")) or arg.count("/") > 1:
        raise UserError(f"VAE directory {path} does not exist: {_VAE_HINT}")
    return [(arg, None), (arg, "vae")]


def load_vae(arg: str) -> nn.Module:
    """A diffusers AutoencoderKL or AutoencoderTiny from a local directory (or its vae/ subfolder) or a hub id."""
    from diffusers import AutoencoderKL, AutoencoderTiny

    errors = []
    for source, subfolder in _vae_source(arg):
        try:
            config = load_config(AutoencoderKL, source, subfolder)
        except (OSError, ValueError) as e:  # diffusers reports a missing or unreadable config as either
            errors.append(e)
            continue
        class_name = config.get("_class_name", "AutoencoderKL")
        if class_name not in _SUPPORTED_VAES:
            supported = ", ".join(_SUPPORTED_VAES)
            raise UserError(f"VAE {arg!r} is a {class_name}; supported classes: {supported}: {_VAE_HINT}")
        cls = AutoencoderTiny if class_name == "AutoencoderTiny" else AutoencoderKL
        try:
            return from_pretrained(cls, source, subfolder).float()
        except UserError:
            raise
        except Exception as e:  # diffusers raises many types for bad weights; all mean the same to the user
            raise UserError(f"could not load the {class_name} weights from {arg!r} ({e}): {_VAE_HINT}") from e
    raise UserError(f"could not load a VAE config from {arg!r} ({errors[0]}): {_VAE_HINT}") from errors[0]


def tiny_autoencoder() -> nn.Module:
    """Returns the small random ``AutoencoderKL`` behind the ``tiny`` prior (seeded, so always the same weights)."""
    from diffusers import AutoencoderKL

    # Fork the RNG so that building the prior does not reseed the caller's generator.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(32, 64),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=32,
            sample_size=TINY_RESOLUTION,
            scaling_factor=TINY_SCALING_FACTOR,
        )


@PRIORS.register("pixel")
def pixel(arg: str | None, resolution: int | None) -> Prior:
    """Identity prior: distil directly in pixel space."""
    _no_argument("pixel", arg)
    return PixelPrior(PIXEL_RESOLUTION if resolution is None else resolution)


@PRIORS.register("taef2")
def taef2_prior(arg: str | None, resolution: int | None) -> Prior:
    """TAEF2 tiny autoencoder from a local directory with encoder.safetensors and decoder.safetensors."""
    if not arg:
        raise UserError("prior 'taef2' needs its weights directory: pass taef2:DIR where DIR holds "
                        "encoder.safetensors and decoder.safetensors")
    return TAEF2Prior(Path(arg).expanduser(), TAEF2_RESOLUTION if resolution is None else resolution)


@PRIORS.register("vae")
def vae(arg: str | None, resolution: int | None) -> Prior:
    """A diffusers AutoencoderKL/AutoencoderTiny from a local directory (or its vae/ subfolder) or a hub id."""
    if not arg:
        raise UserError(f"prior 'vae' needs a model: {_VAE_HINT}, or vae:HUB_ID")
    return DiffusersVAEPrior(load_vae(arg), "vae", VAE_RESOLUTION if resolution is None else resolution)


@PRIORS.register("tiny")
def tiny(arg: str | None, resolution: int | None) -> Prior:
    """Small random AutoencoderKL (4 latent channels, 2x down) for fast tests."""
    _no_argument("tiny", arg)
    return DiffusersVAEPrior(tiny_autoencoder(), "tiny", TINY_RESOLUTION if resolution is None else resolution)
