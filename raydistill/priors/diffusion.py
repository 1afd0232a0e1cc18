"""Diffusion priors: a VAE plus a class-conditional denoiser and the noise schedule it was trained with.

`dit:DIR_OR_HUB_ID` loads the `facebook/DiT-XL-2-256` layout (transformer/, vae/, scheduler/); any diffusers denoiser
called as `model(x, t, class_labels=y).sample` works the same way. `dit-tiny` is a small random one for tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from raydistill.errors import UserError
from raydistill.priors.autoencoders import (
    TINY_RESOLUTION, DiffusersVAEPrior, load_vae, tiny_autoencoder, vae_downsample,
)
from raydistill.priors.base import PRIORS, Prior

# D3HR's and DsCo's classifier-free guidance scale for DiT.
DIT_GUIDANCE = 4.0
_DIT_HINT = ("pass dit:DIR with a local directory laid out as facebook/DiT-XL-2-256 (transformer/, vae/, scheduler/), "
             "or dit:HUB_ID")


class DiffusionPrior(DiffusersVAEPrior):
    """A diffusers VAE with a class-conditional noise-prediction model on its (scaled) latents.

    Attributes:
        denoiser: predicts the noise in a latent at a timestep, given class labels.
        alphas_cumprod: (T,) float64 cumulative products of 1 - beta of the training schedule (kept in float64 and
            off the module's dtype, since DDIM steps need it exact even when the model runs in bf16).
        num_classes: labels the denoiser knows, 0 .. num_classes - 1.
        null_class: the label that means "no class" for classifier-free guidance, or None where the model has none.
        default_guidance: guidance scale used where the config leaves it unset.
    """

    def __init__(self, vae: nn.Module, denoiser: nn.Module, alphas_cumprod: np.ndarray, name: str, resolution: int,
                 default_guidance: float = DIT_GUIDANCE):
        super().__init__(vae, name, resolution)
        self.denoiser = denoiser.eval().requires_grad_(False)
        self.alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
        self.num_classes, self.null_class = class_slots(denoiser)
        self.default_guidance = default_guidance
        side = getattr(denoiser.config, "sample_size", None)
        if side is not None and side != self.latent_shape[1]:
            raise UserError(
                f"prior {name!r}: its denoiser works on {side}x{side} latents, which the VAE gives at "
                f"{side * self.downsample} px, not {resolution}: pass --set prior.resolution={side * self.downsample}"
            )

    @property
    def train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def predict_noise(self, latents: torch.Tensor, timestep: int, labels: torch.Tensor,
                      guidance: float) -> torch.Tensor:
        """The denoiser's noise estimate, with classifier-free guidance when `guidance` is not 1.

        Args:
            latents: (N, *latent_shape) noisy latents, any dtype (the model runs in the prior's dtype).
            timestep: training-schedule timestep of the noise level, 0 .. train_timesteps - 1.
            labels: (N,) class labels in 0 .. num_classes - 1.
            guidance: eps_uncond + guidance * (eps_cond - eps_uncond); 1 is plain conditional prediction.

        Returns:
            (N, *latent_shape) float32 noise estimate on the prior's device.

        Raises:
            UserError: If a label is outside the prior's classes, or guidance is asked of a model with no null class.
        """
        labels = labels.to(self.device, torch.long)
        check_labels(self, labels)
        x = latents.to(self.device, self.dtype)
        if guidance != 1.0:
            if self.null_class is None:
                raise UserError(f"prior {self.name!r} has no null class for classifier-free guidance: "
                                f"set the guidance to 1 (e.g. --set encode.guidance=1 --set synthesize.guidance=1)")
            x = torch.cat([x, x])
            labels = torch.cat([labels, torch.full_like(labels, self.null_class)])
        timesteps = torch.full((len(x),), timestep, device=self.device, dtype=torch.long)
        # Models that also learn the variance (DiT-XL/2) return 2C channels; the first C are the noise.
        noise = self.denoiser(x, timesteps, class_labels=labels).sample[:, : self.latent_shape[0]].float()
        if guidance == 1.0:
            return noise
        conditional, unconditional = noise.chunk(2)
        return unconditional + guidance * (conditional - unconditional)


def check_labels(prior: DiffusionPrior, labels: torch.Tensor) -> None:
    """Labels must be classes the prior's denoiser was trained on."""
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= prior.num_classes):
        raise UserError(f"label {int(labels.max())} is outside prior {prior.name!r}'s classes "
                        f"0..{prior.num_classes - 1}: use a prior trained on this dataset's classes")


def require_denoiser(prior: Prior, purpose: str) -> DiffusionPrior:
    """Returns the prior if it can invert and sample, else raises a UserError naming what needs it."""
    if not isinstance(prior, DiffusionPrior):
        raise UserError(f"{purpose} needs a diffusion prior, but {prior.name!r} is an autoencoder only: pass "
                        f"--prior dit:DIR (or dit-tiny to try it), or cluster latents with --space latent")
    return prior


def class_slots(denoiser: nn.Module) -> tuple[int, int | None]:
    """(number of classes, null class) of a class-conditional diffusers model, from its config."""
    config = denoiser.config
    if config.get("num_embeds_ada_norm"):
        # DiT's label embedding always has one extra row, the null class used for guidance.
        return int(config.num_embeds_ada_norm), int(config.num_embeds_ada_norm)
    if config.get("num_class_embeds"):
        return int(config.num_class_embeds), None
    raise UserError(f"the denoiser {type(denoiser).__name__} is not class-conditional (its config has neither "
                    f"num_embeds_ada_norm nor num_class_embeds): {_DIT_HINT}")


def alphas_cumprod_of(scheduler_source: str, subfolder: str | None) -> np.ndarray:
    """The training noise schedule from a diffusers scheduler config (any scheduler class; betas are shared)."""
    from diffusers import DDIMScheduler

    config = DDIMScheduler.load_config(scheduler_source, subfolder=subfolder)
    return DDIMScheduler.from_config(config).alphas_cumprod.double().numpy()


def _dit_source(arg: str) -> tuple[str, bool]:
    """(path or hub id, is local) for `dit:ARG`, failing fast on a local directory without the layout."""
    path = Path(arg).expanduser()
    if path.is_dir():
        missing = [f"{sub}/config.json" for sub in ("transformer", "vae") if not (path / sub / "config.json").is_file()]
        if not (path / "scheduler" / "scheduler_config.json").is_file():
            missing.append("scheduler/scheduler_config.json")
        if missing:
            raise UserError(f"DiT directory {path} lacks {', '.join(missing)}: {_DIT_HINT}")
        return str(path), True
    if path.exists() or arg.startswith(("/", ".", "~")) or arg.count("/") > 1:
        raise UserError(f"DiT directory {path} does not exist: {_DIT_HINT}")
    return arg, False


def _load_denoiser(source: str) -> nn.Module:
    import diffusers

    try:
        config = diffusers.DiTTransformer2DModel.load_config(source, subfolder="transformer")
    except (OSError, ValueError) as e:
        raise UserError(f"could not read the denoiser config of {source!r} ({e}): {_DIT_HINT}") from e
    class_name = config.get("_class_name", "DiTTransformer2DModel")
    cls = getattr(diffusers, class_name, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise UserError(f"{source!r}: transformer/ holds a {class_name}, which diffusers does not have: {_DIT_HINT}")
    try:
        return cls.from_pretrained(source, subfolder="transformer").float()
    except Exception as e:  # diffusers raises many types for bad weights; all mean the same to the user
        raise UserError(f"could not load the {class_name} weights from {source!r} ({e}): {_DIT_HINT}") from e


@PRIORS.register("dit")
def dit(arg: str | None, resolution: int | None) -> Prior:
    """Class-conditional latent DiT (or any diffusers class-conditional denoiser) with its VAE and scheduler."""
    if not arg:
        raise UserError(f"prior 'dit' needs a model: {_DIT_HINT}")
    source, local = _dit_source(arg)
    denoiser = _load_denoiser(source)
    vae = load_vae(str(Path(source) / "vae") if local else source)
    try:
        alphas = alphas_cumprod_of(source, "scheduler")
    except (OSError, ValueError) as e:
        raise UserError(f"could not read the scheduler config of {source!r} ({e}): {_DIT_HINT}") from e
    default_resolution = denoiser.config.sample_size * vae_downsample(vae)
    return DiffusionPrior(vae, denoiser, alphas, "dit", default_resolution if resolution is None else resolution)


def tiny_dit(num_classes: int = 1000, latent_side: int = TINY_RESOLUTION // 2) -> nn.Module:
    """A 2-layer DiT on the tiny VAE's 4-channel latents, seeded, with its zero-initialised layers perturbed.

    diffusers zero-initialises DiT's adaLN modulation and output layers, so a fresh model predicts exactly zero
    noise and makes DDIM inversion trivially exact; small random values there give it a real, label-dependent output.
    """
    from diffusers import DiTTransformer2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = DiTTransformer2DModel(
            num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2,
            sample_size=latent_side, patch_size=2, num_embeds_ada_norm=num_classes,
        )
        with torch.no_grad():
            for parameter in model.parameters():
                if not parameter.any():
                    parameter.normal_(0.0, 0.02)
    return model


def linear_schedule(train_timesteps: int = 1000) -> np.ndarray:
    """DiT's training schedule: betas linear from 1e-4 to 0.02."""
    betas = np.linspace(1e-4, 0.02, train_timesteps, dtype=np.float64)
    return np.cumprod(1.0 - betas)


@PRIORS.register("dit-tiny")
def dit_tiny(arg: str | None, resolution: int | None) -> Prior:
    """The tiny VAE with a small random DiT over 1000 classes and DiT's linear schedule, for tests."""
    if arg is not None:
        raise UserError(f"prior 'dit-tiny' takes no argument; got dit-tiny:{arg}: pass just 'dit-tiny'")
    resolution = TINY_RESOLUTION if resolution is None else resolution
    return DiffusionPrior(tiny_autoencoder(), tiny_dit(latent_side=resolution // 2), linear_schedule(), "dit-tiny",
                          resolution)
