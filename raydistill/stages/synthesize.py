"""synthesize: turn prototypes into images; writes distilled/ (id, label, image PNG, weight, prototype).

`decoder` runs the prior's decoder on each prototype in an actor pool; `ddim` first samples each prototype back to
t = 0 with the prior's denoiser, in the same pool (noise prototypes from the encode stage's `t_end`, latent ones
after noising them to `strength`). `dsco` runs DsCo's optimised sampling chain from the `dsco` quantizer's starting
noises, one class per actor call (its quantile pivots come from that class's latents). `nearest` streams the real
images whose latents are nearest to the prototypes (found by the quantize tasks) through the CPU decode tasks: a
weighted k-medoid coreset with no generative decoder. distilled/weight is the prototype's weight; the train stage
applies `train.weight_transform`, so tempering the weights never redoes synthesis.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from ray.data import ActorPoolStrategy

from raydistill.data import decode_dataset
from raydistill.errors import UserError
from raydistill.imaging import png_bytes, to_uint8
from raydistill.metrics import count
from raydistill.rundir import RunDir
from raydistill.stages.cluster import cpus_per_actor, gpus_per_actor
from raydistill.stages.context import Context, DistilledVariant, StageOutput
from raydistill.stages.encode import actor_prior, class_conditioning, written_class_counts
from raydistill.stages.quantize import prototypes_per_class, read_class_latents
from raydistill.synthesize.ddim import sample_latents
from raydistill.synthesize.dsco import dsco_sample

log = logging.getLogger("raydistill")

DECODERS = ("nearest", "decoder", "ddim", "dsco")


def distilled_table(ids, labels, images: np.ndarray, weights, prototypes, run: str) -> pa.Table:
    count("raydistill_prototypes_synthesized", len(ids), "synthesize", run)
    return pa.table({
        "id": pa.array([str(i) for i in ids]),
        "label": pa.array(np.asarray(labels, dtype=np.int32)),
        "image": pa.array([png_bytes(image) for image in images], type=pa.binary()),
        "weight": pa.array(np.asarray(weights, dtype=np.float64)),
        "prototype": pa.array(np.asarray(prototypes, dtype=np.int32)),
    })


class Decoder:
    """Ray Data actor: the prior's decoder on flattened prototype latents, resized to the output size.

    `sampling` ({"t_start", "steps", "guidance", "seed", "from_latents"}) DDIM-samples the prototypes back to t = 0
    first; with `from_latents` they are clean latents, noised to `t_start` with noise seeded by (seed, label, index).
    """

    def __init__(self, prior_spec: str, resolution: int, latent_shape: list[int], image_size: int, num_cpus: float,
                 run: str, sampling: dict | None = None, classes: dict | None = None, trust_pickles: bool = False):
        self.prior = actor_prior(prior_spec, resolution, num_cpus, classes, trust_pickles)
        self.device = self.prior.device
        self.run = run
        self.latent_shape, self.image_size = tuple(latent_shape), image_size
        self.sampling = sampling

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        points = np.stack(batch["point"]).astype(np.float32).reshape(-1, *self.latent_shape)
        with torch.inference_mode():
            latents = torch.from_numpy(points).to(self.device)
            if self.sampling is not None:
                latents = self.sample(latents, batch["label"], batch["index"])
            images = self.prior.decode(latents)
        ids = [f"{label}-{index}" for label, index in zip(batch["label"], batch["index"])]
        return distilled_table(ids, batch["label"], to_uint8(images, self.image_size), batch["weight"], batch["index"],
                               self.run)

    def sample(self, points: torch.Tensor, labels: np.ndarray, indices: np.ndarray) -> torch.Tensor:
        plan = self.sampling
        seeds = None
        if plan["from_latents"]:
            seeds = [(plan["seed"] * 1_000_003 + int(label)) * 100_003 + int(index)
                     for label, index in zip(labels, indices)]
        return sample_latents(self.prior, points, torch.from_numpy(labels.astype(np.int64)), plan["t_start"],
                              plan["steps"], plan["guidance"], row_seeds=seeds)


class DscoDecoder(Decoder):
    """Ray Data actor for DsCo: gets all starting noises of one class (a `map_groups` group), runs the optimised
    chain against that class's latents, and decodes."""

    def __init__(self, run_uri: str, dsco: dict, **decoder_args):
        super().__init__(**decoder_args)
        self.rundir = RunDir(run_uri)
        self.dsco = dsco

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        order = np.argsort(batch["index"])
        batch = {name: np.asarray(values)[order] for name, values in batch.items()}
        label = int(batch["label"][0])
        start = torch.from_numpy(np.stack(batch["point"]).astype(np.float32).reshape(-1, *self.latent_shape))
        _, real = read_class_latents(self.rundir, label)
        real = torch.from_numpy(real).view(-1, *self.latent_shape)
        started = time.perf_counter()
        latents, losses = dsco_sample(self.prior, label, start, real, **self.dsco)
        log.info("dsco class %d: %d samples in %.1f s, sort loss %.4f -> %.4f", label, len(start),
                 time.perf_counter() - started, losses["sort_loss_before"], losses["sort_loss_after"])
        with torch.inference_mode():
            images = self.prior.decode(latents)
        ids = [f"{label}-{index}" for index in batch["index"]]
        return distilled_table(ids, batch["label"], to_uint8(images, self.image_size), batch["weight"], batch["index"],
                               self.run)


def dsco_settings(ctx: Context) -> dict:
    """DscoDecoder's `dsco` argument: `dsco_sample`'s settings from the config."""
    cfg = ctx.config.synthesize
    return {"steps": cfg.steps, "guidance": cfg.guidance, "seed": ctx.config.seed, "iterations": cfg.noise_iterations,
            "lr": cfg.noise_lr, "momentum": cfg.noise_momentum, "sort_weight": cfg.sort_weight, "eta": cfg.eta}


def sampling_settings(ctx: Context) -> dict:
    """The Decoder's `sampling` argument: start where encode inverted to, or img2img from latent prototypes."""
    cfg = ctx.config
    from_latents = cfg.quantize.space == "latent"
    t_start = img2img_timestep(cfg.synthesize.strength, ctx.train_timesteps) if from_latents else cfg.encode.t_end
    return {"t_start": t_start, "steps": cfg.synthesize.steps, "guidance": cfg.synthesize.guidance, "seed": cfg.seed,
            "from_latents": from_latents}


def img2img_timestep(strength: float, train_timesteps: int) -> int:
    """The timestep latent prototypes are noised to: `strength` of the way through the schedule."""
    return min(train_timesteps - 1, round(strength * train_timesteps))


def attach_prototypes(batch: dict[str, np.ndarray], by_id: dict[str, list[tuple[int, int, float]]],
                      run: str) -> pa.Table:
    """One output row per prototype that snapped to each real image (two prototypes may share one)."""
    ids, labels, images, weights, prototypes = [], [], [], [], []
    for image_id, image in zip(batch["id"], batch["image"]):
        for label, index, weight in by_id[str(image_id)]:
            ids.append(f"{label}-{index}")
            labels.append(label)
            images.append(image)
            weights.append(weight)
            prototypes.append(index)
    return distilled_table(ids, labels, np.asarray(images), weights, prototypes, run)


def read_prototypes(ctx: Context, folder: str, columns: list[str]) -> pa.Table:
    files = ctx.rundir.files(folder, suffix=".parquet")
    return pa.concat_tables([pq.read_table(f, filesystem=ctx.rundir.fs, columns=columns) for f in files])


def run_variant(ctx: Context, variant: DistilledVariant) -> int:
    cfg = ctx.config
    source_folder = variant.folder("prototypes")
    decode = "nearest" if variant.method == "random" else cfg.synthesize.decode
    if decode in ("decoder", "ddim", "dsco"):
        gpus = gpus_per_actor(cfg.synthesize.gpus_per_actor)
        cpus = 1.0 if gpus else cpus_per_actor(cfg.synthesize.actors)
        prototypes = ray.data.read_parquet(
            ctx.rundir.files(source_folder, suffix=".parquet"), filesystem=ctx.rundir.fs,
        ).select_columns(["label", "index", "point", "weight"])
        decoder_args = {
            "prior_spec": cfg.prior.spec, "resolution": ctx.resolution, "latent_shape": list(ctx.latent_shape),
            "image_size": cfg.data.image_size, "num_cpus": cpus, "run": ctx.rundir.name,
            "classes": class_conditioning(ctx), "trust_pickles": ctx.config.trust_pickles,
        }
        pool = {"compute": ActorPoolStrategy(size=cfg.synthesize.actors), "batch_format": "numpy", "num_gpus": gpus,
                "num_cpus": cpus}
        if decode == "dsco":
            images = prototypes.groupby("label").map_groups(
                DscoDecoder,
                fn_constructor_kwargs={"run_uri": ctx.rundir.uri, "dsco": dsco_settings(ctx), **decoder_args},
                **pool,
            )
        else:
            sampling = sampling_settings(ctx) if decode == "ddim" else None
            images = prototypes.map_batches(Decoder, fn_constructor_kwargs={**decoder_args, "sampling": sampling},
                                            batch_size=cfg.synthesize.batch_size, **pool)
    else:
        table = read_prototypes(ctx, source_folder, ["label", "index", "weight", "nearest_id"])
        by_id: dict[str, list[tuple[int, int, float]]] = defaultdict(list)
        for row in table.to_pylist():
            by_id[row["nearest_id"]].append((row["label"], row["index"], row["weight"]))
        real = decode_dataset(ctx.train_source.dataset(frozenset(by_id)), cfg.data.image_size, "synthesize",
                              ctx.rundir.name)
        images = real.map_batches(attach_prototypes, fn_kwargs={"by_id": dict(by_id), "run": ctx.rundir.name},
                                  batch_format="numpy")
    folder = ctx.rundir.reset(variant.folder("distilled"))
    images.write_parquet(folder, filesystem=ctx.rundir.fs)
    rows = sum(pq.read_metadata(f, filesystem=ctx.rundir.fs).num_rows
               for f in ctx.rundir.files(variant.folder("distilled"), suffix=".parquet"))
    expected = sum(prototypes_per_class(written_class_counts(ctx, "latents"), cfg.quantize.ipc).values())
    if rows != expected:
        raise UserError(
            f"synthesize wrote {rows} images for {variant.folder('distilled')}, expected {expected}; "
            "the training images changed since encode ran: rerun with a new --out"
        )
    return rows


def run(ctx: Context) -> StageOutput:
    rows = sum(run_variant(ctx, variant) for variant in ctx.variants)
    return StageOutput(rows=rows)
