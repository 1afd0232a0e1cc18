"""train: one Ray Train TorchTrainer per (distilled set, student); writes students/<name>/ (model, metrics).

Checkpoints go to `train_state/<fingerprint>/<set>-<student>` (`train.checkpoint_every` epochs and
`train.checkpoint_seconds` apart); a rerun with the same config reuses that run name, so Ray Train V2 resumes from
the last checkpoint, and a worker that dies is replaced (FailureConfig) and continues from it.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time

import pyarrow.parquet as pq
import ray.train
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from safetensors.torch import load, save

from raydistill import config as run_config
from raydistill.checkpoints import check_checkpoints, load_state, remove_unregistered_checkpoints, save_state
from raydistill.metrics import count, record
from raydistill.rundir import RunDir
from raydistill.stages.cluster import apply_train_log_level, cluster_gpus, cpus_per_train_worker, train_log_level
from raydistill.stages.context import Context, DistilledVariant, StageOutput
from raydistill.stages.progress import epoch_bar, terminal
from raydistill.train.loop import (DistilledSet, StudentTrainer, TrainSettings, checkpoint_due, memory_format,
                                   rank_zero_decides)
from raydistill.train.losses import transform_weights
from raydistill.train.models import create_student, load_teacher

log = logging.getLogger("raydistill")


def train_worker(config: dict) -> None:
    """Runs on every Ray Train worker: load the distilled set, resume if a checkpoint exists, train, report."""
    apply_train_log_level(config["log_level"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, config["cpus_per_worker"]))
    device = ray.train.torch.get_device()
    rundir = RunDir(config["run_uri"])
    table = pq.read_table(config["files"], filesystem=rundir.fs)
    data = DistilledSet.from_table(table)
    data.weights = transform_weights(data.weights, data.labels, config["weight_transform"])
    torch.manual_seed(config["settings"].seed)
    layout = memory_format(device)
    model = create_student(config["student"], config["num_classes"], data.images.shape[1])
    model = ray.train.torch.prepare_model(model.to(memory_format=layout))  # the layout before DDP builds its buckets
    teacher = None
    if config["teacher"]:
        teacher = load_teacher(config["teacher"], config["num_classes"], config["imagenet_classes"],
                               config["trust_pickles"]).to(device, memory_format=layout)
    trainer = StudentTrainer(model, data, config["settings"], teacher=teacher, device=device, rank=rank, world=world,
                             compile_models=config["compile"])
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            trainer.load_state_dict(load_state(folder))
    epochs = config["settings"].epochs
    start_epoch, losses, last_checkpoint = trainer.epoch, [], time.monotonic()
    while trainer.epoch < epochs:
        started = time.perf_counter()
        metrics = trainer.train_epoch()
        losses.append(round(metrics["loss"], 5))
        if rank == 0:
            tags = {"stage": "train", "run": rundir.name}
            # Gauges leave the metrics endpoint with the worker that set them; the counter stays after training.
            count("raydistill_images_trained", trainer.images_per_epoch, **tags)
            record("raydistill_train_epoch", trainer.epoch, **tags)
            record("raydistill_train_loss", metrics["loss"], **tags)
            record("raydistill_train_images_per_second",
                   trainer.images_per_epoch / (time.perf_counter() - started), **tags)
            if config["progress"] is not None:
                config["progress"].update.remote(trainer.epoch, metrics["loss"])
        # Metrics go out with checkpoints only (each report waits for a controller poll); the epochs in between
        # travel along in `losses`.
        due = checkpoint_due(trainer.epoch, epochs, config["checkpoint_every"],
                             time.monotonic() - last_checkpoint >= config["checkpoint_seconds"])
        if not rank_zero_decides(due, device):
            continue
        last_checkpoint = time.monotonic()
        with tempfile.TemporaryDirectory() as folder:
            if rank == 0:
                save_state(trainer.state_dict(), folder)
            checkpoint = Checkpoint.from_directory(folder) if rank == 0 else None
            ray.train.report({**metrics, "losses": losses, "start_epoch": start_epoch}, checkpoint=checkpoint)
        losses = []


def student_runs(ctx: Context) -> list[tuple[str, int]]:
    """(architecture, repeat) of every student trained on each set: `train.repeats` of each architecture."""
    return [(student, repeat) for student in ctx.config.train.students for repeat in range(ctx.config.train.repeats)]


def student_folder(student: str, repeat: int) -> str:
    """students/<name>/ of the first repeat (the one doping scores with), students/<name>-repeat<r>/ of the others."""
    return f"students/{student}" if repeat == 0 else f"students/{student}-repeat{repeat}"


def train_settings(cfg: run_config.RunConfig, student: str, repeat: int) -> TrainSettings:
    """The loop's settings for one student of a run, seeded by the run's seed plus `repeat`."""
    return TrainSettings(
        epochs=cfg.train.epochs, batch_size=cfg.train.batch_size,
        lr=(cfg.train.student_lr or {}).get(student, cfg.train.lr), lr_schedule=cfg.train.lr_schedule,
        weight_decay=cfg.train.weight_decay, temperature=cfg.train.temperature,
        min_crop_scale=cfg.train.min_crop_scale, seed=cfg.seed + repeat, mix=cfg.train.mix,
        mix_alpha=cfg.train.mix_alpha,
    )


def train_student(ctx: Context, variant: DistilledVariant, student: str, fingerprint: str, repeat: int = 0,
                  weight_transform: str | None = None, progress: "ray.actor.ActorHandle | None" = None) -> dict:
    """Trains one student on a variant's distilled/ and writes its `student_folder`, seeded by the run's seed plus
    `repeat`; `weight_transform` replaces train.weight_transform (the dope stage's weights are final); rank 0 tells
    `progress` (an EpochProgress) each epoch."""
    cfg = ctx.config
    workers = cfg.train.workers
    use_gpu = cfg.train.use_gpu if cfg.train.use_gpu is not None else cluster_gpus() > 0
    cpus_per_worker = 1 if use_gpu else cpus_per_train_worker(workers)
    settings = train_settings(cfg, student, repeat)
    out = variant.folder(student_folder(student, repeat))
    run_name = f"{variant.key}-{out.rsplit('/', 1)[-1]}"
    files = ctx.rundir.files(variant.distilled, suffix=".parquet")
    storage = ctx.rundir.path("train_state", fingerprint)
    check_checkpoints(ctx.rundir.fs, f"{storage}/{run_name}")
    log_level = train_log_level()  # the driver's, for Ray Train's controller and, through the config, its workers
    distilled_rows = sum(pq.read_metadata(f, filesystem=ctx.rundir.fs).num_rows for f in files)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            "run_uri": ctx.rundir.uri, "files": files,
            "student": student, "teacher": None if variant.hard_labels else cfg.train.teacher,
            "num_classes": len(ctx.class_names),
            "imagenet_classes": ctx.imagenet_classes, "settings": settings,
            "weight_transform": weight_transform or cfg.train.weight_transform,
            "checkpoint_every": cfg.train.checkpoint_every, "checkpoint_seconds": cfg.train.checkpoint_seconds,
            "cpus_per_worker": cpus_per_worker,
            "compile": cfg.train.compile, "trust_pickles": cfg.trust_pickles, "log_level": log_level,
            "progress": progress,
        },
        scaling_config=ScalingConfig(
            num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus_per_worker},
        ),
        run_config=RunConfig(
            name=run_name,
            logging_config=LoggingConfig(log_level=log_level),
            storage_path=storage,
            storage_filesystem=ctx.rundir.fs,
            failure_config=FailureConfig(max_failures=3),
            checkpoint_config=CheckpointConfig(num_to_keep=2),  # one per epoch would otherwise pile up
        ),
    )
    start = time.perf_counter()
    result = trainer.fit()
    remove_unregistered_checkpoints(ctx.rundir.fs, f"{storage}/{run_name}", result)
    with result.checkpoint.as_directory() as folder:
        state = load_state(folder)
    ctx.rundir.write_bytes(save({k: v.contiguous() for k, v in state["model"].items()}), out, "model.safetensors")
    metrics = {
        "student": student, "repeat": repeat, "epochs": state["epoch"], "final_loss": result.metrics["loss"],
        "resumed_from_epoch": result.metrics["start_epoch"],
        "seconds": round(time.perf_counter() - start, 2), "images": distilled_rows,
        "num_classes": len(ctx.class_names), "image_size": cfg.data.image_size,
    }
    ctx.rundir.write_json(metrics, out, "metrics.json")
    return metrics


def load_student(rundir: RunDir, folder: str, device: torch.device) -> torch.nn.Module:
    """A trained student from students/<name>/, in eval mode."""
    metrics = json.loads(rundir.read_bytes(folder, "metrics.json"))
    model = create_student(metrics["student"], metrics["num_classes"], metrics["image_size"])
    model.load_state_dict(load(rundir.read_bytes(folder, "model.safetensors")))
    return model.to(device).eval()


def train_students(ctx: Context, variant: DistilledVariant, stage: str, fingerprint: str,
                   weight_transform: str | None = None) -> dict[str, dict]:
    """Every student of one set (`student_runs`), each announced on the console as it starts and ends."""
    trained = {}
    runs = student_runs(ctx)
    for student, repeat in runs:
        folder = variant.folder(student_folder(student, repeat))
        log.info("%s: %s (%d of %d), %d epochs", stage, folder, len(trained) + 1, len(runs), ctx.config.train.epochs)
        with epoch_bar(ctx.config.train.epochs, f"{stage} {folder}", terminal()) as progress:
            trained[folder] = metrics = train_student(ctx, variant, student, fingerprint, repeat, weight_transform,
                                                      progress)
        log.info("%s: %s: loss %.4f at epoch %d, %.1f s", stage, folder, metrics["final_loss"], metrics["epochs"],
                 metrics["seconds"])
    return trained


def run(ctx: Context, fingerprint: str) -> StageOutput:
    trained = {}
    for variant in ctx.variants:
        ctx.rundir.reset(variant.folder("students"))
        trained.update(train_students(ctx, variant, "train", fingerprint))
    return StageOutput(rows=len(trained), extra={"students": trained})
