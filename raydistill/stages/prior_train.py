"""prior train: a class-conditional latent DiT trained on a run's latents/ with Ray Train; writes a `dit:DIR` prior.

Each worker reads its shard of the latents through Ray Data and runs the same number of steps. Checkpoints (model,
EMA, optimiser, step) go to OUT/train_state every `checkpoint_every` steps; rerunning the same command resumes from
the last one, and a worker that dies is replaced and continues from it (FailureConfig).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
import ray.train
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from raydistill.checkpoints import check_checkpoints, load_state, remove_unregistered_checkpoints, save_state
from raydistill.config import PriorTrainSettings, RayConfig, fingerprint
from raydistill.errors import UserError
from raydistill.metrics import record
from raydistill.priors.diffusion import linear_schedule
from raydistill.priors.training import (
    build_dit, denoising_loss, disable_builtin_label_dropout, ema_copy, ema_decay_at, ema_update, is_held_out,
    warmup_factor, write_prior_directory,
)
from raydistill.stages.cluster import (apply_train_log_level, cluster_gpus, connect, cpus_per_train_worker,
                                       train_log_level)

log = logging.getLogger("raydistill")


def read_latent_run(latents: str) -> dict:
    """What the run that wrote `latents` says about them: the prior spec, resolution, latent shape, classes."""
    folder = Path(latents).expanduser().resolve()
    marker, run = folder / "_SUCCESS.json", folder.parent
    if not marker.is_file():
        raise UserError(f"{folder} is not a finished encode stage (no _SUCCESS.json): pass --latents RUN_DIR/latents "
                        f"of a run whose encode finished (`raydistill encode --out RUN_DIR ...`)")
    config = json.loads((run / "config.json").read_text())
    return {
        "folder": str(folder),
        "prior": config["prior"]["spec"],
        "resolution": config["prior"]["resolution"],
        "latent_shape": tuple(json.loads(marker.read_text())["latent_shape"]),
        "fingerprint": json.loads(marker.read_text())["fingerprint"],
        "class_names": [record["name"] for record in json.loads((run / "class_names.json").read_text())],
    }


def latent_scale(folder: str, rows: int = 20_000) -> float:
    """1 / RMS of the latents (from the first `rows`), so the DiT trains on unit-variance latents."""
    squares, count = 0.0, 0
    for file in sorted(Path(folder).rglob("*.parquet")):
        column = pq.read_table(file, columns=["latent"]).column("latent").combine_chunks()
        values = column.flatten().to_numpy().astype(np.float64)
        squares, count = squares + float((values**2).sum()), count + len(values)
        if count >= rows * column.type.list_size:
            break
    return float(1.0 / np.sqrt(squares / max(count, 1)))


def training_rows(batch: dict[str, np.ndarray], holdout: float) -> dict[str, np.ndarray]:
    """Drops held-out rows and turns the latents into one (N, D) float32 array; labels come from the partition
    folders (`label=3/`) as strings."""
    keep = np.array([not is_held_out(i, holdout) for i in batch["id"]], dtype=bool)
    latents = np.stack(batch["latent"][keep]) if keep.any() else np.zeros((0, 0), np.float32)
    return {"latent": latents.astype(np.float32), "label": batch["label"][keep].astype(np.int64)}


def training_dataset(folder: str, holdout: float) -> ray.data.Dataset:
    """The latents not held out, as (latent (N, D) float32, label) batches."""
    ds = ray.data.read_parquet(folder, file_extensions=["parquet"]).select_columns(["id", "latent", "label"])
    return ds.map_batches(training_rows, fn_kwargs={"holdout": holdout}, batch_format="numpy")


def prior_train_worker(config: dict) -> None:
    apply_train_log_level(config["log_level"])
    settings: PriorTrainSettings = config["settings"]
    context = ray.train.get_context()
    rank = context.get_world_rank()
    torch.set_num_threads(config["threads_per_worker"])
    device = ray.train.torch.get_device()
    torch.manual_seed(settings.seed)
    model = config["build"]()
    disable_builtin_label_dropout(model)
    ema = ema_copy(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    step, losses = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            state = load_state(folder)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
    start_step = step
    ema.to(device)
    model = ray.train.torch.prepare_model(model)
    plain = model.module if hasattr(model, "module") else model
    alphas = torch.tensor(config["alphas"], dtype=torch.float32, device=device)
    generator = torch.Generator(device).manual_seed(settings.seed * 1_000_003 + rank * 7919 + step)
    shard = ray.train.get_dataset_shard("train")
    scale, shape = config["latent_scale"], config["latent_shape"]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    started = time.perf_counter()
    while step < settings.steps:
        for batch in shard.iter_torch_batches(batch_size=settings.batch_size, drop_last=True,
                                              local_shuffle_buffer_size=4 * settings.batch_size, device=device):
            latents = batch["latent"].view(-1, *shape) * scale
            with autocast:
                loss = denoising_loss(model, latents, batch["label"], alphas, config["null_class"],
                                      settings.label_dropout, generator, settings.snr_gamma,
                                      config["prediction_type"])
            for group in optimizer.param_groups:  # from the step alone, so a resumed run continues the ramp
                group["lr"] = settings.lr * warmup_factor(step, settings.warmup_steps)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            ema_update(ema, plain, ema_decay_at(step, settings.ema_decay))
            step += 1
            losses.append(float(loss.detach()))
            if step % settings.checkpoint_every == 0 or step == settings.steps:
                seconds = time.perf_counter() - started
                metrics = {"step": step, "loss": float(np.mean(losses)), "start_step": start_step,
                           "steps_per_second": (step - start_step) / seconds}
                if rank == 0:
                    record("raydistill_prior_train_step", step, stage="prior-train", run=config["name"])
                    record("raydistill_prior_train_loss", metrics["loss"], stage="prior-train", run=config["name"])
                with tempfile.TemporaryDirectory() as folder:
                    if rank == 0:
                        save_state({"model": plain.state_dict(), "ema": ema.state_dict(),
                                    "optimizer": optimizer.state_dict(), "step": step}, folder)
                    ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder) if rank == 0 else None)
                losses = []
            if step >= settings.steps:
                break


def training_state_name(run: dict, settings: PriorTrainSettings, workers: int) -> str:
    """The Ray Train run name of a training: it changes with the latents and with every setting but the step
    counts, so a rerun with more --steps resumes and one with other latents, lr, seed or preset starts afresh."""
    kept = {key: value for key, value in asdict(settings).items() if key not in ("steps", "checkpoint_every")}
    return f"prior-{fingerprint(run['fingerprint'], kept, workers)}"


def discard_other_states(storage: Path, name: str) -> None:
    """Removes the checkpoints of trainings with other settings: OUT holds one prior, and resuming them would mix
    two trainings."""
    for folder in storage.glob("*") if storage.is_dir() else ():
        if folder.name != name:
            log.warning("prior train: %s holds checkpoints of other latents or settings; training from the start",
                        storage)
            shutil.rmtree(folder)


def denoiser_builder(settings: PriorTrainSettings, latent_shape: tuple[int, int, int], num_classes: int,
                     latents_folder: str) -> tuple[Callable[[], torch.nn.Module], int, str, float]:
    """A function that builds the denoiser to train (a fresh preset, or a trainable copy of `settings.init`'s),
    its null class, what it is trained to predict and the scale of the latents it sees: measured on the latents for a
    fresh model, the init's own for a fine-tune (the scale it learned on). Checks the preset, or loads the init
    prior, before Ray starts."""
    if settings.init is None:
        build_dit(settings.preset, latent_shape, num_classes)
        return (lambda: build_dit(settings.preset, latent_shape, num_classes), num_classes,
                settings.prediction_type or "v_prediction", latent_scale(latents_folder))
    from raydistill.priors import load_prior

    base = load_prior(settings.init if settings.init.startswith("dit:") else f"dit:{settings.init}")
    # Fewer classes than the base knows is fine (their labels take its first slots, as D3HR fine-tunes DiT).
    if base.num_classes < num_classes or base.latent_shape != tuple(latent_shape):
        raise UserError(f"--init {settings.init} denoises {base.num_classes} classes of {base.latent_shape} latents, "
                        f"but the latents hold {num_classes} classes of {tuple(latent_shape)}: fine-tune a prior "
                        f"built for the same autoencoder and at least as many classes, or train from scratch with "
                        f"--preset")
    return (lambda: ema_copy(base.denoiser).train().requires_grad_(True), base.null_class,
            settings.prediction_type or base.prediction_type, base.latent_scale)


def train_prior(latents: str, out: str, settings: PriorTrainSettings, workers: int = 1,
                use_gpu: bool | None = None, address: str | None = None) -> dict:
    """Trains a DiT on the latents of a finished encode stage and writes a `dit:OUT` prior directory. Checks the
    latents and the model before it joins Ray (`address`, as `connect` takes it).

    Returns:
        training.json's content: steps, final loss, seconds, the step it resumed from, the settings.
    """
    run = read_latent_run(latents)
    num_classes = len(run["class_names"])
    shape = run["latent_shape"]
    build, null_class, prediction_type, scale = denoiser_builder(settings, shape, num_classes, run["folder"])
    connect(RayConfig(address=address))
    use_gpu = cluster_gpus() > 0 if use_gpu is None else use_gpu
    # One CPU stays free for Ray Data's read tasks; the workers' torch threads still use every core, since reading
    # is light next to training.
    cpus_per_worker = 1 if use_gpu else cpus_per_train_worker(workers, spare=1)
    threads_per_worker = 1 if use_gpu else cpus_per_train_worker(workers)
    out_path = Path(out).expanduser().resolve()
    name = training_state_name(run, settings, workers)
    discard_other_states(out_path / "train_state", name)
    check_checkpoints(pafs.LocalFileSystem(), str(out_path / "train_state" / name))
    log_level = train_log_level()
    trainer = TorchTrainer(
        prior_train_worker,
        train_loop_config={"settings": settings, "build": build, "alphas": linear_schedule().astype(np.float32),
                           "null_class": null_class, "prediction_type": prediction_type, "latent_scale": scale,
                           "latent_shape": shape, "threads_per_worker": threads_per_worker, "name": out_path.name,
                           "log_level": log_level},
        datasets={"train": training_dataset(run["folder"], settings.holdout)},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(name=name, storage_path=str(out_path / "train_state"),
                             logging_config=LoggingConfig(log_level=log_level),
                             failure_config=FailureConfig(max_failures=3),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    started = time.perf_counter()
    result = trainer.fit()
    remove_unregistered_checkpoints(pafs.LocalFileSystem(), str(out_path / "train_state" / name), result)
    with result.checkpoint.as_directory() as folder:
        state = load_state(folder)
    ema = build()
    ema.load_state_dict(state["ema"])
    info = {"steps": state["step"], "final_loss": result.metrics["loss"],
            "resumed_from_step": result.metrics["start_step"], "seconds": round(time.perf_counter() - started, 1),
            "steps_per_second": result.metrics["steps_per_second"], "latents": run["folder"],
            "num_classes": num_classes, "class_names": run["class_names"], "settings": asdict(settings),
            "prediction_type": prediction_type, "workers": workers}
    write_prior_directory(out_path, ema, run["prior"], run["resolution"], scale, prediction_type, info)
    return info
