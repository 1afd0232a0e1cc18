"""reference: DD-Ranking's hard-label students, where `evaluate.full_data`: students trained on every real training
image (reference/full/) and, where the run's students learn from a teacher, on the method's set with hard labels
(reference/hard/). The evaluate stage scores them beside the others; the report turns them into HLR, IOR and LRS.

The real images stream from the shards through the CPU decode tasks into reference/full/distilled/ without passing
through the driver.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from raydistill.data import decode_dataset
from raydistill.stages.context import Context, StageOutput
from raydistill.stages.dope import REAL_PROTOTYPE
from raydistill.stages.synthesize import distilled_table
from raydistill.stages.train import train_students


def full_set_rows(batch: dict[str, np.ndarray], class_weights: dict[int, float], run: str) -> pa.Table:
    weights = [class_weights[int(label)] for label in batch["label"]]
    return distilled_table(batch["id"], batch["label"], batch["image"], weights,
                           np.full(len(weights), REAL_PROTOTYPE), run)


def write_full_set(ctx: Context, folder: str) -> None:
    """Every training image the encode stage read (after `data.max_per_class`), at the students' size, as a
    distilled set whose weights are uniform within each class."""
    cfg = ctx.config
    images = decode_dataset(ctx.train_source.dataset(ctx.keep_ids), cfg.data.image_size, "reference",
                            ctx.rundir.name)
    class_weights = {int(label): 1.0 / count for label, count in ctx.class_counts.items()}
    rows = images.map_batches(full_set_rows, batch_format="numpy",
                              fn_kwargs={"class_weights": class_weights, "run": ctx.rundir.name})
    rows.write_parquet(ctx.rundir.reset(folder), filesystem=ctx.rundir.fs)


def run(ctx: Context, fingerprint: str) -> StageOutput:
    ctx.rundir.reset("reference")
    trained = {}
    for variant in ctx.references:
        if variant.trains_on is None:
            write_full_set(ctx, variant.distilled)
        # The full set's weights are final; the method's set gets the transform its own students train with.
        transform = "none" if variant.trains_on is None else None
        trained.update(train_students(ctx, variant, "reference", fingerprint, weight_transform=transform))
    return StageOutput(rows=len(trained), extra={"students": trained})
