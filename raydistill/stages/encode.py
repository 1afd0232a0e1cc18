"""encode: stream the training images through CPU decode tasks into an encoder actor pool; write latents/.

With inversion on, the same actor DDIM-inverts each batch of latents right after the VAE, so they never leave the
device in between, and writes both the latent and its noise. latents/ is partitioned by label (`label=3/...parquet`)
so each per-class quantize task reads only its class.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from ray.data import ActorPoolStrategy

from raydistill.data import decode_dataset
from raydistill.data.classes import display_name
from raydistill.data.transforms import SkipLedger
from raydistill.imaging import to_tensor
from raydistill.metrics import count
from raydistill.priors import Prior, load_prior
from raydistill.priors.diffusion import DiffusionPrior
from raydistill.stages.cluster import BATCHES_PER_CALL, cpus_per_actor, gpus_per_actor
from raydistill.stages.context import Context, StageOutput
from raydistill.synthesize.ddim import invert_latents

log = logging.getLogger("raydistill")


def model_device(num_cpus: float) -> tuple[torch.device, torch.dtype]:
    """GPU in bf16 when this actor has one, else CPU in float32 with `num_cpus` threads."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    torch.set_num_threads(max(1, int(num_cpus)))
    return torch.device("cpu"), torch.float32


def actor_prior(prior_spec: str, resolution: int, num_cpus: float, classes: dict | None = None,
                trust_pickles: bool = False) -> Prior:
    """The prior on this actor's device and dtype, told the dataset's classes (`classes`: the keyword arguments
    of `DiffusionPrior.use_class_names`) where it is a diffusion prior."""
    device, dtype = model_device(num_cpus)
    prior = load_prior(prior_spec, resolution, trust_pickles).to(device, dtype).eval()
    if isinstance(prior, DiffusionPrior) and classes is not None:
        prior.use_class_names(**classes)
    return prior


def class_conditioning(ctx: Context) -> dict:
    """`actor_prior`'s `classes` for this run."""
    cfg = ctx.config.prior
    return {"class_names": ctx.class_names, "prompt": cfg.prompt, "negative_prompt": cfg.negative_prompt,
            "prior_labels": ctx.prior_labels}


def fixed_size_list(rows: np.ndarray) -> pa.FixedSizeListArray:
    """(N, D) float32 -> one list<float32>[D] value per row (the latents/ and prototypes/ point format)."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), rows.shape[1])


def flat(x: torch.Tensor) -> pa.FixedSizeListArray:
    return fixed_size_list(x.float().cpu().numpy().reshape(len(x), -1))


class Encoder:
    """Ray Data actor: loads the prior once, then maps batches of images decoded at its resolution to flattened
    latents.

    `inversion` ({"t_end", "steps", "guidance"} of `invert_latents`) also writes each latent's DDIM inversion.
    """

    def __init__(self, prior_spec: str, resolution: int, num_cpus: float, run: str, inversion: dict | None = None,
                 classes: dict | None = None, trust_pickles: bool = False):
        self.prior = actor_prior(prior_spec, resolution, num_cpus, classes, trust_pickles)
        self.device = self.prior.device
        self.run = run
        self.inversion = inversion

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        images = to_tensor(batch["image"]).to(self.device)
        labels = batch["label"].astype(np.int32)
        columns = {"id": pa.array(batch["id"].astype(str)), "label": pa.array(labels)}
        with torch.inference_mode():
            latents = self.prior.encode(images)
            columns["latent"] = flat(latents)
            count("raydistill_images_encoded", len(latents), "encode", self.run)
            if self.inversion is not None:
                noise = invert_latents(self.prior, latents, torch.from_numpy(labels), **self.inversion)
                columns["noise"] = flat(noise)
                count("raydistill_images_inverted", len(noise), "encode", self.run)
        return pa.table(columns)


def inversion_settings(ctx: Context) -> dict | None:
    """The Encoder's `inversion` argument for this run, or None when it does not invert."""
    cfg = ctx.config.encode
    return {"t_end": cfg.t_end, "steps": cfg.steps, "guidance": cfg.guidance} if cfg.invert else None


def written_class_counts(ctx: Context, folder: str) -> dict[int, int]:
    """Rows per label in a label-partitioned folder, from the parquet footers alone."""
    counts: dict[int, int] = {}
    for path in ctx.rundir.files(folder, suffix=".parquet"):
        label = int(path.split("label=")[1].split("/")[0])
        with ctx.rundir.fs.open_input_file(path) as handle:
            counts[label] = counts.get(label, 0) + pq.ParquetFile(handle).metadata.num_rows
    return counts


def class_records(class_names: list[str], labels: list[int] | None, imagenet: list[int] | None) -> list[dict]:
    """class_names.json: each class's name in the data, the name a person reads, the label the prior is given and
    its ImageNet-1K index (null where they do not apply)."""
    return [{"label": i, "name": name, "display_name": display_name(name),
             "prior_label": None if labels is None else labels[i],
             "imagenet_index": None if imagenet is None else imagenet[i]} for i, name in enumerate(class_names)]


def run(ctx: Context) -> StageOutput:
    cfg = ctx.config
    # Written with the latents, whose labels it names: a run that skips encoding keeps the names they were made with.
    ctx.rundir.write_json(class_records(ctx.class_names, ctx.prior_labels, ctx.imagenet_classes), "class_names.json")
    ledger = SkipLedger.remote()
    # The prior sees each original at its own resolution, whatever size the students train at.
    images = decode_dataset(ctx.train_source.dataset(ctx.keep_ids), ctx.resolution, "encode", ctx.rundir.name,
                            ledger=ledger, block_rows=BATCHES_PER_CALL * cfg.encode.batch_size)
    gpus = gpus_per_actor(cfg.encode.gpus_per_actor)
    cpus = 1.0 if gpus else cpus_per_actor(cfg.encode.actors)
    latents = images.map_batches(
        Encoder,
        fn_constructor_kwargs={
            "prior_spec": cfg.prior.spec, "resolution": ctx.resolution, "num_cpus": cpus, "run": ctx.rundir.name,
            "inversion": inversion_settings(ctx), "classes": class_conditioning(ctx),
            "trust_pickles": cfg.trust_pickles,
        },
        compute=ActorPoolStrategy(size=cfg.encode.actors),
        batch_size=cfg.encode.batch_size,
        batch_format="numpy",
        num_gpus=gpus,
        num_cpus=cpus,
    )
    folder = ctx.rundir.reset("latents")
    latents.write_parquet(folder, filesystem=ctx.rundir.fs, partition_cols=["label"])
    counts = written_class_counts(ctx, "latents")
    written = sum(counts.values())
    skipped = ray.get(ledger.summary.remote())
    if skipped["upsampled_images"]:
        log.warning("encode: %d images were smaller than the prior's %d px and were upsampled (e.g. %s)",
                    skipped["upsampled_images"], ctx.resolution, ", ".join(skipped["upsampled_examples"][:3]))
    missing = sum(ctx.class_counts.values()) - written - skipped["skipped_images"]
    if missing:
        raise RuntimeError(f"encode wrote {written} latents and skipped {skipped['skipped_images']} images of "
                           f"{sum(ctx.class_counts.values())}: {missing} unaccounted for")
    return StageOutput(
        rows=written,
        extra={
            "latent_shape": list(ctx.latent_shape),
            "inversion": inversion_settings(ctx),
            **skipped,
            "class_counts": {str(k): v for k, v in sorted(counts.items())},
        },
    )
