"""How good a trained prior is: the teacher's top-1 on its class-conditional samples, and its denoising loss on the
latents `prior train` held out. Plain functions; `raydistill prior eval` calls `evaluate_prior`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import nn

from raydistill.errors import UserError
from raydistill.imaging import to_tensor, to_uint8
from raydistill.priors.diffusion import TRAINING_INFO_FILE
from raydistill.priors.training import denoising_loss, is_held_out
from raydistill.synthesize.ddim import sample_latents


def sample_images(prior, labels: torch.Tensor, steps: int, guidance: float | None, seed: int,
                  image_size: int, batch_size: int = 64) -> torch.Tensor:
    """Class-conditional samples from pure noise (t = T - 1), decoded and resized like distilled images: float
    (N, 3, image_size, image_size) in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(labels), *prior.latent_shape, generator=generator)
    images = []
    with torch.inference_mode():
        for start in range(0, len(labels), batch_size):
            part = slice(start, start + batch_size)
            latents = sample_latents(prior, noise[part].to(prior.device), labels[part], prior.train_timesteps - 1,
                                     steps, guidance)
            images.append(to_tensor(to_uint8(prior.decode(latents), image_size)))
    return torch.cat(images)


def teacher_accuracy(teacher: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Top-1 of the teacher on class-conditional samples, overall and per class (how recognisable each class is)."""
    with torch.inference_mode():
        predicted = torch.cat([teacher(images[i:i + 256]).argmax(1) for i in range(0, len(images), 256)])
    correct = (predicted == labels).float()
    per_class = {int(c): round(100 * float(correct[labels == c].mean()), 2) for c in labels.unique()}
    return {"teacher_top1": round(100 * float(correct.mean()), 2), "per_class_top1": per_class}


def heldout_loss(prior, latents_folder: str, holdout: float, seed: int, batch_size: int = 256) -> dict:
    """The denoising loss (no label dropout, seeded timesteps and noise) on the latents `prior train` held out."""
    rows, labels = [], []
    for folder in sorted(Path(latents_folder).glob("label=*")):
        table = pq.read_table(folder, columns=["id", "latent"])
        keep = [is_held_out(i, holdout) for i in table.column("id").to_pylist()]
        kept = table.filter(keep)
        if kept.num_rows:
            rows.append(kept.column("latent").combine_chunks().flatten().to_numpy().reshape(kept.num_rows, -1))
            labels += [int(folder.name.split("=", 1)[1])] * kept.num_rows
    if not rows:
        raise UserError(f"no held-out latents in {latents_folder} (holdout share {holdout}): train with a holdout "
                        f"above 0 to measure the loss on unseen latents")
    latents = torch.from_numpy(np.concatenate(rows)).view(-1, *prior.latent_shape) * prior.latent_scale
    labels_t = torch.tensor(labels)
    alphas = torch.tensor(prior.alphas_cumprod, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    with torch.inference_mode():
        for start in range(0, len(latents), batch_size):
            part = slice(start, start + batch_size)
            loss = denoising_loss(prior.denoiser, latents[part], labels_t[part], alphas, prior.null_class or 0,
                                  0.0, generator, prediction_type=prior.prediction_type)
            total += float(loss) * len(latents[part])
    return {"heldout_loss": round(total / len(latents), 5), "heldout_latents": len(latents)}


def evaluate_prior(directory: str, teacher_spec: str, samples_per_class: int, steps: int, guidance: float,
                   image_size: int, seed: int) -> dict:
    """Loads `dit:DIRECTORY` (written by `prior train`) and measures it; returns the figures as a dict."""
    from raydistill.priors import load_prior
    from raydistill.train.models import load_teacher

    if samples_per_class <= 0:
        raise UserError(f"--samples-per-class must be positive, got {samples_per_class}")
    info_file = Path(directory).expanduser() / TRAINING_INFO_FILE
    if not info_file.is_file():
        raise UserError(f"{directory} has no {TRAINING_INFO_FILE}: pass a directory written by `raydistill prior train`")
    info = json.loads(info_file.read_text())
    prior = load_prior(f"dit:{directory}").eval()
    teacher = load_teacher(teacher_spec, info["num_classes"])
    labels = torch.arange(info["num_classes"]).repeat_interleave(samples_per_class)
    images = sample_images(prior, labels, steps, guidance, seed, image_size)
    result = {"directory": str(directory), "steps_trained": info["steps"], "samples_per_class": samples_per_class,
              "ddim_steps": steps, "guidance": guidance, **teacher_accuracy(teacher, images, labels)}
    result.update(heldout_loss(prior, info["latents"], info["settings"]["holdout"], seed))
    return result
