"""encode: stream the training images through CPU decode tasks into an encoder actor pool; write latents/.

latents/ is partitioned by label (`label=3/...parquet`) so each per-class quantize task reads only its class.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from ray.data import ActorPoolStrategy

from raydistill.data import decode_dataset
from raydistill.imaging import to_tensor
from raydistill.metrics import count
from raydistill.priors import load_prior
from raydistill.stages.cluster import cpus_per_actor, gpus_per_actor
from raydistill.stages.context import Context, StageOutput


def model_device(num_cpus: float) -> tuple[torch.device, torch.dtype]:
    """GPU in bf16 when this actor has one, else CPU in float32 with `num_cpus` threads."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    torch.set_num_threads(max(1, int(num_cpus)))
    return torch.device("cpu"), torch.float32


def fixed_size_list(rows: np.ndarray) -> pa.FixedSizeListArray:
    """(N, D) float32 -> one list<float32>[D] value per row (the latents/ and prototypes/ point format)."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), rows.shape[1])


class Encoder:
    """Ray Data actor: loads the prior once, then maps decoded image batches to flattened latents."""

    def __init__(self, prior_spec: str, resolution: int, num_cpus: float, run: str):
        self.device, self.dtype = model_device(num_cpus)
        self.run = run
        self.prior = load_prior(prior_spec, resolution).to(self.device, self.dtype).eval()
        self.resolution = resolution

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        images = to_tensor(batch["image"], self.resolution).to(self.device)
        with torch.inference_mode():
            latents = self.prior.encode(images).float().cpu().numpy()
        count("raydistill_images_encoded", len(latents), "encode", self.run)
        return pa.table({
            "id": pa.array(batch["id"].astype(str)),
            "label": pa.array(batch["label"].astype(np.int32)),
            "latent": fixed_size_list(latents.reshape(len(latents), -1)),
        })


def written_class_counts(ctx: Context, folder: str) -> dict[int, int]:
    """Rows per label in a label-partitioned folder, from the parquet footers alone."""
    counts: dict[int, int] = {}
    for path in ctx.rundir.files(folder, suffix=".parquet"):
        label = int(path.split("label=")[1].split("/")[0])
        with ctx.rundir.fs.open_input_file(path) as handle:
            counts[label] = counts.get(label, 0) + pq.ParquetFile(handle).metadata.num_rows
    return counts


def run(ctx: Context) -> StageOutput:
    cfg = ctx.config
    images = decode_dataset(ctx.train_source.dataset(ctx.keep_ids), cfg.data.image_size, "encode", ctx.rundir.name)
    gpus = gpus_per_actor(cfg.encode.gpus_per_actor)
    cpus = 1.0 if gpus else cpus_per_actor(cfg.encode.actors)
    latents = images.map_batches(
        Encoder,
        fn_constructor_kwargs={
            "prior_spec": cfg.prior.spec, "resolution": ctx.resolution, "num_cpus": cpus, "run": ctx.rundir.name,
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
    expected = sum(ctx.class_counts.values())
    written = sum(counts.values())
    return StageOutput(
        rows=written,
        extra={
            "latent_shape": list(ctx.latent_shape),
            "skipped_images": expected - written,
            "class_counts": {str(k): v for k, v in sorted(counts.items())},
        },
    )
