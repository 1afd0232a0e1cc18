"""Training a class-conditional latent DiT: presets, the denoising loss, EMA, the written directory, and the
quality check of a trained prior. Plain functions on tensors; `stages/prior_train.py` runs them on Ray Train.

The written directory is what `--prior dit:DIR` loads: transformer/ (the EMA weights), scheduler/ (the training
schedule) and either vae/ (a diffusers VAE) or autoencoder.json, which names the run's autoencoder prior and the
scale that brought its latents to unit variance for training.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from raydistill.errors import UserError
from raydistill.priors.diffusion import AUTOENCODER_FILE, DIT_SCHEDULE, TRAINING_INFO_FILE

# Model sizes, as DiTTransformer2DModel arguments. `cifar-cpu` is sized to learn CIFAR-10's 32x8x8 taef2 latents on
# two CPU cores in about an hour; `tiny` is for tests; the others are the DiT paper's S, B and XL (patch 2).
DIT_PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 16, "patch_size": 2},
    "cifar-cpu": {"num_layers": 6, "num_attention_heads": 4, "attention_head_dim": 32, "patch_size": 2},
    "dit-s": {"num_layers": 12, "num_attention_heads": 6, "attention_head_dim": 64, "patch_size": 2},
    "dit-b": {"num_layers": 12, "num_attention_heads": 12, "attention_head_dim": 64, "patch_size": 2},
    "dit-xl": {"num_layers": 28, "num_attention_heads": 16, "attention_head_dim": 72, "patch_size": 2},
}


def build_dit(preset: str, latent_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """A fresh DiT of a named size for latents of `latent_shape`, conditioned on `num_classes` labels (+ null)."""
    from diffusers import DiTTransformer2DModel

    if preset not in DIT_PRESETS:
        raise UserError(f"unknown DiT preset {preset!r}; valid presets: {', '.join(DIT_PRESETS)}")
    channels, side, _ = latent_shape
    if side % DIT_PRESETS[preset]["patch_size"]:
        raise UserError(f"preset {preset!r} cuts latents into {DIT_PRESETS[preset]['patch_size']}-pixel patches, "
                        f"which {side}x{side} latents do not divide into")
    return DiTTransformer2DModel(in_channels=channels, out_channels=channels, sample_size=side,
                                 num_embeds_ada_norm=num_classes, **DIT_PRESETS[preset])


def disable_builtin_label_dropout(model: nn.Module) -> None:
    """diffusers' DiT drops labels inside every block's embedding, independently per block; training here drops a
    label once per sample (to the null class) instead, so all blocks see the same condition, as in the DiT paper."""
    for module in model.modules():
        if hasattr(module, "dropout_prob") and hasattr(module, "embedding_table"):
            module.dropout_prob = 0.0


def denoising_loss(model: nn.Module, latents: torch.Tensor, labels: torch.Tensor, alphas_cumprod: torch.Tensor,
                   null_class: int, label_dropout: float, generator: torch.Generator | None = None,
                   snr_gamma: float = 0.0, prediction_type: str = "epsilon") -> torch.Tensor:
    """The DDPM objective: MSE between the model's output on a latent noised at a uniform timestep and its target
    (the noise, the velocity sqrt(a) eps - sqrt(1 - a) x0, or the clean latent, by `prediction_type`).

    Args:
        model: a diffusers class-conditional denoiser.
        latents: (N, C, h, w) clean latents at training scale.
        labels: (N,) class labels.
        alphas_cumprod: (T,) float32 tensor on the latents' device.
        null_class: the label that stands for "no class".
        label_dropout: probability of replacing a label by the null class (classifier-free guidance training).
        generator: for the timesteps, noise and dropout (None: the global RNG).
        snr_gamma: above 0, Min-SNR weighting: each sample's error is weighted so that, in terms of the clean-latent
            error, the weight is min(SNR, gamma) (divided by SNR for the noise target, by SNR + 1 for velocity); 0:
            unweighted.
        prediction_type: a PREDICTION_TYPES name.
    """
    n, device = len(latents), latents.device
    timesteps = torch.randint(0, len(alphas_cumprod), (n,), device=device, generator=generator)
    noise = torch.randn(latents.shape, device=device, generator=generator)
    alpha = alphas_cumprod[timesteps].view(n, 1, 1, 1)
    noisy = alpha.sqrt() * latents + (1 - alpha).sqrt() * noise
    dropped = torch.rand(n, device=device, generator=generator) < label_dropout
    labels = torch.where(dropped, torch.full_like(labels, null_class), labels)
    prediction = model(noisy, timesteps, class_labels=labels).sample[:, : latents.shape[1]]
    targets = {"epsilon": noise, "v_prediction": alpha.sqrt() * noise - (1 - alpha).sqrt() * latents,
               "sample": latents}
    errors = (prediction.float() - targets[prediction_type]).pow(2).flatten(1).mean(1)
    if snr_gamma > 0:
        snr = alpha.flatten() / (1 - alpha.flatten())
        target_scale = {"epsilon": snr, "v_prediction": snr + 1, "sample": torch.ones_like(snr)}[prediction_type]
        errors = errors * snr.clamp(max=snr_gamma) / target_scale
    return errors.mean()


def warmup_factor(step: int, warmup_steps: int) -> float:
    """The share of the learning rate used at `step` (0-based): rising linearly to 1 over `warmup_steps`."""
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0


def ema_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).eval().requires_grad_(False)


def ema_decay_at(step: int, decay: float) -> float:
    """The EMA decay after `step` updates, warmed up as (1 + step) / (10 + step) so early weights fade fast."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter."""
    for averaged, current in zip(ema.parameters(), model.parameters()):
        averaged.lerp_(current.detach().to(averaged.dtype), 1 - decay)


def is_held_out(image_id: str, fraction: float) -> bool:
    """A fixed, order-free split: an id is held out when its hash falls in the first `fraction` of the range."""
    digest = hashlib.blake2b(str(image_id).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def write_prior_directory(out: Path, ema: nn.Module, autoencoder_spec: str, resolution: int, latent_scale: float,
                          prediction_type: str, info: dict) -> None:
    """Writes transformer/, scheduler/ and autoencoder.json so that `dit:OUT` loads the trained prior, and
    training.json last: a folder without it is a write that did not finish, and `dit:OUT` refuses it."""
    from diffusers import DDIMScheduler

    out.mkdir(parents=True, exist_ok=True)
    (out / TRAINING_INFO_FILE).unlink(missing_ok=True)
    ema.save_pretrained(out / "transformer", safe_serialization=True)
    DDIMScheduler(**DIT_SCHEDULE, clip_sample=False, set_alpha_to_one=True,
                  prediction_type=prediction_type).save_pretrained(out / "scheduler")
    pointer = {"prior": autoencoder_spec, "resolution": resolution, "latent_scale": latent_scale}
    (out / AUTOENCODER_FILE).write_text(json.dumps(pointer, indent=2) + "\n")
    (out / TRAINING_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")

