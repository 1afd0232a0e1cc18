"""Images/s of the train stage (Ray Train, one worker) against a plain single-process loop on the same set.

python -m benchmarks.train_throughput [--quick] [--ipc 50] [--epochs 100] [--student convnet3] [--checkpoint-every N]
                                      [--compile]

The distilled set is a digits run's (the built-in default, `--decode nearest`, IPC 50: 500 images at 32 px), made
once by `raydistill run` with one training epoch. Then, side by side in one run: the plain loop (`StudentTrainer` in
this process, the stage's settings, no Ray, no checkpoints), `raydistill train` on that run with `--epochs`, and the
plain loop again; then the augmentation's own images/s at 32 and 224 px. The stage's images/s counts its whole time
(Ray Train's start, its checkpoints every `train.checkpoint_every` epochs, writing the model), from its marker; the
plain loop's, the epochs alone. Goal: ratio (stage / mean plain) >= 0.9 on CPU. Prints a table and, last, one JSON
line. `--compile` adds the plain loop eager and under torch.compile (`train.compile`), each after one untimed epoch
that holds the compilation, whose seconds it reports.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

from raydistill.config import load_config
from raydistill.stages.train import train_settings
from raydistill.train.augment import augment
from raydistill.train.loop import DistilledSet, StudentTrainer
from raydistill.train.losses import transform_weights
from raydistill.train.models import create_student

RAYDISTILL = str(Path(sys.executable).parent / "raydistill")


def raydistill(*args: str) -> None:
    subprocess.run([RAYDISTILL, *args], check=True, stdout=subprocess.DEVNULL)


def plain_loop(run: Path, student: str, epochs: int, compile_models: bool = False, warm_up: bool = False) -> dict:
    """The stage's loop alone: the run's distilled set and settings, `epochs` epochs, this process's threads;
    `warm_up` first runs one more epoch, untimed, and reports its seconds."""
    config = load_config(overrides=[json.loads((run / "config.json").read_text())])
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=epochs))
    data = DistilledSet.from_table(pq.read_table(run / "distilled"))
    data.weights = transform_weights(data.weights, data.labels, config.train.weight_transform)
    settings = train_settings(config, student, repeat=0)
    torch.manual_seed(settings.seed)
    classes = len(json.loads((run / "class_names.json").read_text()))
    trainer = StudentTrainer(create_student(student, classes, data.images.shape[1]), data, settings,
                             compile_models=compile_models)
    start = time.perf_counter()
    if warm_up:
        trainer.train_epoch()
    first_epoch, start = time.perf_counter() - start, time.perf_counter()
    for _ in range(epochs):
        trainer.train_epoch()
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 2), "images_per_epoch": trainer.images_per_epoch,
            "first_epoch_seconds": round(first_epoch, 2)}


def augment_rate(batch: int, side: int, repeats: int = 5) -> float:
    """Images/s of the batched RandomResizedCrop + flip alone, on this process's threads."""
    images, generator = torch.rand(batch, 3, side, side), torch.Generator().manual_seed(0)
    augment(images, side, 0.08, generator)  # the first call allocates
    start = time.perf_counter()
    for _ in range(repeats):
        augment(images, side, 0.08, generator)
    return round(batch * repeats / (time.perf_counter() - start), 1)


def run_options(ipc: int, student: str) -> list[str]:
    """The run's options upstream of training: `raydistill train` needs the same to find its stages done."""
    return ["--ipc", str(ipc), "--decode", "nearest", "--set", "evaluate.baseline=false",
            "--set", f"train.students=[{student}]"]


def stage(run: Path, options: list[str], student: str, epochs: int, checkpoint_every: int | None) -> dict:
    """`raydistill train` on the run, timed by its marker (the stage's own seconds, without the CLI's start)."""
    extra = ["--set", f"train.checkpoint_every={checkpoint_every}"] if checkpoint_every else []
    raydistill("train", "--out", str(run), *options, "--set", f"train.epochs={epochs}", *extra)
    marker = json.loads((run / "students" / "_SUCCESS.json").read_text())
    fit = json.loads((run / "students" / student / "metrics.json").read_text())
    return {"seconds": marker["seconds"], "fit_seconds": fit["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ipc", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--student", default="convnet3")
    parser.add_argument("--checkpoint-every", type=int, help="train.checkpoint_every (default: the config's)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-train-throughput"))
    parser.add_argument("--quick", action="store_true", help="IPC 10, 30 epochs")
    parser.add_argument("--compile", action="store_true", help="also the plain loop eager and under torch.compile")
    args = parser.parse_args()
    if args.quick:
        args.ipc, args.epochs = 10, 30
    run, options = args.out.resolve() / f"digits-ipc{args.ipc}", run_options(args.ipc, args.student)
    if not (run / "distilled" / "_SUCCESS.json").is_file():
        raydistill("run", "--out", str(run), *options, "--set", "train.epochs=1")
    first = plain_loop(run, args.student, args.epochs)
    staged = stage(run, options, args.student, args.epochs, args.checkpoint_every)
    second = plain_loop(run, args.student, args.epochs)
    images = first["images_per_epoch"] * args.epochs
    plain_rate = images / ((first["seconds"] + second["seconds"]) / 2)
    stage_rate = images / staged["seconds"]
    config = json.loads((run / "config.json").read_text())
    result = {
        "student": args.student, "ipc": args.ipc, "epochs": args.epochs, "images": images,
        "checkpoint_every": args.checkpoint_every or config["train"]["checkpoint_every"],
        "plain_seconds": [first["seconds"], second["seconds"]], "stage_seconds": staged["seconds"],
        "fit_seconds": staged["fit_seconds"], "plain_images_per_s": round(plain_rate, 1),
        "stage_images_per_s": round(stage_rate, 1), "ratio": round(stage_rate / plain_rate, 3),
        "torch_threads": torch.get_num_threads(),
        "augment_images_per_s": {"256x32px": augment_rate(256, 32), "64x224px": augment_rate(64, 224)},
    }
    print(f"{'':>8} {'seconds':>10} {'images/s':>10}")
    print(f"{'plain':>8} {(first['seconds'] + second['seconds']) / 2:>10.1f} {plain_rate:>10.1f}")
    print(f"{'stage':>8} {staged['seconds']:>10.1f} {stage_rate:>10.1f}")
    if args.compile:
        for name, compiled in (("eager", False), ("compiled", True)):
            timed = plain_loop(run, args.student, args.epochs, compile_models=compiled, warm_up=True)
            result[f"{name}_images_per_s"] = round(images / timed["seconds"], 1)
            result[f"{name}_first_epoch_seconds"] = timed["first_epoch_seconds"]
            print(f"{name:>8} {timed['seconds']:>10.1f} {result[f'{name}_images_per_s']:>10.1f}"
                  f"   (first epoch {timed['first_epoch_seconds']} s, untimed)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
