"""dope: DsCo's doping. The method's trained student scores every real training image by its clarity, the least
clear are added to the distilled set with their own weights (doped/distilled/), and the students are trained on
that set (doped/students/) for the evaluate stage.

Scoring streams the shards through the CPU decode tasks into an actor pool that returns (id, label, clarity) rows;
the driver keeps only those small rows, and the chosen images go from the shards to doped/distilled/ through Ray
Data without passing through it.
"""

from __future__ import annotations

import hashlib
import urllib.parse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from ray.data import ActorPoolStrategy

from raydistill.data import decode_dataset
from raydistill.imaging import to_tensor
from raydistill.metrics import count
from raydistill.rundir import RunDir
from raydistill.stages.cluster import BATCHES_PER_CALL, cpus_per_actor, gpus_per_actor
from raydistill.stages.context import Context, StageOutput
from raydistill.stages.encode import model_device
from raydistill.stages.synthesize import distilled_table, read_prototypes
from raydistill.stages.train import load_student, student_folder, train_students
from raydistill.synthesize.doping import clarity, doped_weights, lowest_clarity
from raydistill.train.losses import transform_weights
from raydistill.train.models import load_teacher

# Added real images have no prototype; their ids say where they came from.
REAL_PROTOTYPE = -1
REAL_PREFIX = "real:"
# Longer source ids are hashed: the id is a file name at export, at most 255 bytes with ".png".
MAX_REAL_STEM = 200


class ClarityScorer:
    """Ray Data actor: the student's clarity of each real image for its label (the true one, or the teacher's)."""

    def __init__(self, run_uri: str, student_folder: str, teacher: str | None, num_classes: int, num_cpus: float,
                 imagenet_classes: list[int] | None = None, trust_pickles: bool = False):
        self.device, _ = model_device(num_cpus)
        rundir = RunDir(run_uri)
        self.run = rundir.name
        self.student = load_student(rundir, student_folder, self.device)
        self.teacher = None
        if teacher:
            self.teacher = load_teacher(teacher, num_classes, imagenet_classes, trust_pickles).to(self.device).eval()

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        images = to_tensor(batch["image"]).to(self.device)
        labels = torch.from_numpy(batch["label"].astype(np.int64)).to(self.device)
        with torch.inference_mode():
            if self.teacher is not None:
                labels = self.teacher(images).argmax(1)
            scores = clarity(self.student(images), labels)
        count("raydistill_images_scored", len(labels), "dope", self.run)
        return pa.table({"id": pa.array([str(i) for i in batch["id"]]),
                         "label": pa.array(batch["label"].astype(np.int32)),
                         "clarity": pa.array(scores.cpu().numpy().astype(np.float64))})


def score_real_images(ctx: Context, student_folder: str) -> pa.Table:
    """(id, label, clarity) of every training image, from one streaming pass over the shards."""
    cfg = ctx.config
    gpus = gpus_per_actor(cfg.dope.gpus_per_actor)
    cpus = 1.0 if gpus else cpus_per_actor(cfg.dope.actors)
    images = decode_dataset(ctx.train_source.dataset(ctx.keep_ids), cfg.data.image_size, "dope", ctx.rundir.name,
                            block_rows=BATCHES_PER_CALL * cfg.dope.batch_size)
    teacher = cfg.train.teacher if cfg.dope.label == "teacher" else None
    scores = images.map_batches(
        ClarityScorer,
        fn_constructor_kwargs={"run_uri": ctx.rundir.uri, "student_folder": student_folder, "teacher": teacher,
                               "num_classes": len(ctx.class_names), "num_cpus": cpus,
                               "imagenet_classes": ctx.imagenet_classes, "trust_pickles": cfg.trust_pickles},
        compute=ActorPoolStrategy(size=cfg.dope.actors),
        batch_size=cfg.dope.batch_size,
        batch_format="numpy",
        num_gpus=gpus,
        num_cpus=cpus,
    )
    return pa.concat_tables(ray.get(list(scores.to_arrow_refs())))


def real_ids_in_set(ctx: Context) -> set[str]:
    """The real images the method's set already holds (its `nearest` decoder takes real images as they are)."""
    if ctx.config.synthesize.decode != "nearest":
        return set()
    return set(read_prototypes(ctx, "prototypes", ["nearest_id"]).column("nearest_id").to_pylist())


def real_image_id(source_id: str) -> str:
    """The distilled-set id of an added real image: "real:" and the source id percent-quoted, so that ids holding
    "/" (ImageFolder paths, webdataset <shard>/<key>) stay apart and still make one file name at export."""
    quoted = urllib.parse.quote(source_id, safe="", errors="surrogateescape")
    if len(REAL_PREFIX + quoted) > MAX_REAL_STEM:
        quoted = hashlib.sha256(source_id.encode("utf-8", "surrogateescape")).hexdigest()
    return REAL_PREFIX + quoted


def added_rows(batch: dict[str, np.ndarray], weights: dict[str, float], run: str) -> pa.Table:
    ids = [str(i) for i in batch["id"]]
    return distilled_table([real_image_id(i) for i in ids], batch["label"], batch["image"],
                           [weights[i] for i in ids], np.full(len(ids), REAL_PROTOTYPE), run)


def reweighted_rows(table: pa.Table, weights: dict[str, float]) -> pa.Table:
    new = pa.array([weights[i] for i in table.column("id").to_pylist()], type=pa.float64())
    return table.set_column(table.schema.get_field_index("weight"), "weight", new)


def dope(ctx: Context) -> dict:
    """Scores the real images, writes doped/distilled/ and returns what was added."""
    cfg = ctx.config
    student = cfg.dope.student or cfg.train.students[0]
    scores = score_real_images(ctx, student_folder(student, 0))
    ids = scores.column("id").to_numpy(zero_copy_only=False).astype(str)
    labels = scores.column("label").to_numpy()
    values = scores.column("clarity").to_numpy()
    candidates = np.flatnonzero(~np.isin(ids, list(real_ids_in_set(ctx))))
    chosen = candidates[lowest_clarity(ids[candidates], labels[candidates], values[candidates], cfg.dope.count,
                                       cfg.dope.per_class)]

    files = ctx.rundir.files("distilled", suffix=".parquet")
    distilled = pa.concat_tables([pq.read_table(f, filesystem=ctx.rundir.fs, columns=["id", "label", "weight"])
                                  for f in files])
    distilled_labels = distilled.column("label").to_numpy()
    # The train stage's weight transform is applied first, so the doped weights are the final ones.
    tempered = transform_weights(distilled.column("weight").to_numpy(), distilled_labels, cfg.train.weight_transform)
    kept, added = doped_weights(distilled_labels, tempered, labels[chosen], cfg.dope.share)

    folder = ctx.rundir.reset(ctx.doped.folder("distilled"))
    kept_by_id = dict(zip(distilled.column("id").to_pylist(), kept.tolist()))
    method = ray.data.read_parquet(files, filesystem=ctx.rundir.fs).map_batches(
        reweighted_rows, fn_kwargs={"weights": kept_by_id}, batch_format="pyarrow")
    real = decode_dataset(ctx.train_source.dataset(frozenset(ids[chosen])), cfg.data.image_size, "dope",
                          ctx.rundir.name)
    real = real.map_batches(added_rows, batch_format="numpy",
                            fn_kwargs={"weights": dict(zip(ids[chosen].tolist(), added.tolist())),
                                       "run": ctx.rundir.name})
    method.union(real).write_parquet(folder, filesystem=ctx.rundir.fs)
    return {"scored_images": len(ids), "added_images": len(chosen), "scored_by": student,
            "added_per_class": {str(k): int(v) for k, v in zip(*np.unique(labels[chosen], return_counts=True))},
            "added_clarity_max": float(values[chosen].max()) if len(chosen) else None,
            "clarity_mean": float(values.mean())}


def run(ctx: Context, fingerprint: str) -> StageOutput:
    ctx.rundir.reset("doped")
    if ctx.doped is None:
        return StageOutput(rows=0, extra={"added_images": 0})
    added = dope(ctx)
    trained = train_students(ctx, ctx.doped, "dope", fingerprint, weight_transform="none")
    return StageOutput(rows=added["added_images"], extra={**added, "students": trained})
