"""evaluate: top-1/top-5 of every trained student on the validation split, in one pass over it.

The validation images stream through the CPU decode tasks into an actor pool that holds all students and returns
correct counts per batch; the driver only adds the counts up.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
from ray.data import ActorPoolStrategy

from raydistill.data import decode_dataset
from raydistill.errors import UserError
from raydistill.imaging import to_tensor
from raydistill.metrics import count
from raydistill.rundir import RunDir
from raydistill.stages.cluster import BATCHES_PER_CALL, cpus_per_actor, gpus_per_actor
from raydistill.stages.context import Context, StageOutput
from raydistill.stages.encode import model_device
from raydistill.stages.train import load_student, student_folder, student_runs


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> int:
    """How many labels are among the k highest logits."""
    k = min(k, logits.shape[1])
    return int((logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1).sum())


class Evaluator:
    """Ray Data actor: every student on each validation batch; returns one row of correct counts."""

    def __init__(self, run_uri: str, folders: list[str], num_cpus: float):
        self.device, _ = model_device(num_cpus)
        rundir = RunDir(run_uri)
        self.run = rundir.name
        self.students = [load_student(rundir, folder, self.device) for folder in folders]

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        images = to_tensor(batch["image"]).to(self.device)
        labels = torch.from_numpy(batch["label"].astype(np.int64)).to(self.device)
        row = {"images": [len(labels)]}
        count("raydistill_images_evaluated", len(labels), "evaluate", self.run)
        with torch.inference_mode():
            for i, student in enumerate(self.students):
                logits = student(images).float()
                row[f"top1_{i}"] = [topk_correct(logits, labels, 1)]
                row[f"top5_{i}"] = [topk_correct(logits, labels, 5)]
        return pa.table(row)


def summarise(scores: np.ndarray) -> dict:
    """Top-1 and top-5 (%) of one architecture's repeats: their mean, sample std (0 for one) and each run's."""
    spread = scores.std(0, ddof=1) if len(scores) > 1 else np.zeros(2)
    return {"top1": round(float(scores[:, 0].mean()), 2), "top5": round(float(scores[:, 1].mean()), 2),
            "top1_std": round(float(spread[0]), 2), "top5_std": round(float(spread[1]), 2),
            "top1_runs": [round(float(v), 2) for v in scores[:, 0]]}


def run(ctx: Context) -> StageOutput:
    cfg = ctx.config
    keys = [(variant, student, repeat) for variant in ctx.evaluated_variants for student, repeat in student_runs(ctx)]
    folders = [variant.folder(student_folder(student, repeat)) for variant, student, repeat in keys]
    gpus = gpus_per_actor(cfg.evaluate.gpus_per_actor)
    cpus = 1.0 if gpus else cpus_per_actor(cfg.evaluate.actors)
    images = decode_dataset(ctx.val_source.dataset(), cfg.data.image_size, "evaluate", ctx.rundir.name,
                            block_rows=BATCHES_PER_CALL * cfg.evaluate.batch_size, crop_ratio=cfg.evaluate.crop_ratio)
    counts = images.map_batches(
        Evaluator,
        fn_constructor_kwargs={"run_uri": ctx.rundir.uri, "folders": folders, "num_cpus": cpus},
        compute=ActorPoolStrategy(size=cfg.evaluate.actors),
        batch_size=cfg.evaluate.batch_size,
        batch_format="numpy",
        num_gpus=gpus,
        num_cpus=cpus,
    ).to_pandas().sum()
    images = int(counts.get("images", 0))
    if not images:
        raise UserError(f"no usable image in the validation data {ctx.val_source.uri} ({ctx.val_source.split} split): "
                        "it is empty or none of its images decodes; pass --val-data with JPEG, PNG, WebP or BMP images")
    runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for i, (variant, student, _) in enumerate(keys):
        runs.setdefault((variant.key, student), []).append(
            (100.0 * counts[f"top1_{i}"] / images, 100.0 * counts[f"top5_{i}"] / images))
    results: dict[str, dict] = {}
    for (variant, student), scores in runs.items():
        results.setdefault(variant, {})[student] = summarise(np.array(scores))
    ctx.rundir.reset("evaluation")
    ctx.rundir.write_json({"images": images, "crop_ratio": cfg.evaluate.crop_ratio, "results": results}, "evaluation",
                          "results.json")
    return StageOutput(rows=images, extra={"results": results})
