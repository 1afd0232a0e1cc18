"""A DiT prior trained on CIFAR-10's taef2 latents on this machine: teacher top-1 on its samples as training goes on.

python -m benchmarks.prior_cifar10 [--quick] [--milestones 1000 4000] [--lr 1e-3 --warmup-steps 500
    --snr-gamma 5 --prediction-type v_prediction] [--per-class N] [--out runs/bench-prior]

Encodes all 50,000 CIFAR-10 training images (or `--per-class` of each class) with taef2 at 64 px (32x8x8 latents)
once, then trains the `cifar-cpu` preset with `raydistill prior train` (the recipe: its defaults, or the flags given),
stopping at each milestone (a rerun with more steps resumes from the last checkpoint) to run `raydistill prior eval`
with the ResNet-56 teacher. Goal: teacher top-1 >= 50 % on the samples (chance 10 %) within about an hour of
training. Each recipe (and `--per-class`) trains in OUT/prior-<recipe>; finished milestones are kept in
OUT/results.jsonl, so an interrupted benchmark resumes and recipes can be compared. Prints a table and, last, one JSON
line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from raydistill.config import PriorTrainSettings

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
RAYDISTILL = str(Path(sys.executable).parent / "raydistill")
TEACHER = f"cifar-resnet56:{SHARED / 'weights/cifar10-resnet/resnet56.safetensors'}"


def last_json(text: str) -> dict:
    return json.loads(text[text.index("{"):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="500 images per class, milestones 100 and 200")
    parser.add_argument("--milestones", type=int, nargs="+", default=[1000, 4000])
    for flag in ("lr", "warmup_steps", "snr_gamma"):
        default = getattr(PriorTrainSettings(), flag)
        parser.add_argument(f"--{flag.replace('_', '-')}", type=type(default), default=default)
    parser.add_argument("--prediction-type", default="v_prediction")
    parser.add_argument("--samples-per-class", type=int, default=50)
    parser.add_argument("--per-class", type=int, help="train on this many images per class (all 5,000 by default)")
    parser.add_argument("--out", default=str(ROOT / "runs/bench-prior"))
    args = parser.parse_args()
    if args.quick and args.per_class:
        parser.error("--quick trains on 500 images per class; leave out --per-class")
    subset = ["--max-per-class", str(args.per_class)] if args.per_class else []
    if args.quick:
        args.milestones, args.samples_per_class, args.out = [100, 200], 10, args.out + "-quick"
        subset = ["--max-per-class", "500"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    recipe = {"lr": args.lr, "warmup_steps": args.warmup_steps, "snr_gamma": args.snr_gamma,
              "prediction_type": args.prediction_type}
    if args.per_class:
        recipe["per_class"] = args.per_class
    per_class = f"-{args.per_class}-per-class" if args.per_class else ""
    encoded = out / f"encoded{per_class}"
    prior = out / (f"prior-lr{args.lr:g}-warmup{args.warmup_steps}-snr{args.snr_gamma:g}-{args.prediction_type}"
                   + per_class)
    if not (encoded / "latents" / "_SUCCESS.json").exists():  # `raydistill encode` always redoes the stage
        subprocess.run([RAYDISTILL, "encode", "--data", str(SHARED / "data/cifar10"), "--prior",
                        f"taef2:{SHARED / 'weights/taef2'}", "--out", str(encoded), *subset], check=True,
                       stdout=subprocess.DEVNULL)
    log = out / "results.jsonl"
    recorded = map(json.loads, log.read_text().splitlines()) if log.exists() else []
    done = {r["steps"]: r for r in recorded if r["recipe"] == recipe}
    rows = []
    for steps in args.milestones:
        if steps not in done:
            trained = subprocess.run([RAYDISTILL, "prior", "train", "--latents", str(encoded / "latents"), "--out",
                                      str(prior), "--steps", str(steps), "--lr", str(args.lr), "--warmup-steps",
                                      str(args.warmup_steps), "--snr-gamma", str(args.snr_gamma),
                                      "--prediction-type", args.prediction_type],
                                     check=True, capture_output=True, text=True)
            info = json.loads((prior / "training.json").read_text())
            evaluated = subprocess.run([RAYDISTILL, "prior", "eval", str(prior), "--teacher", TEACHER,
                                        "--samples-per-class", str(args.samples_per_class)],
                                       check=True, capture_output=True, text=True)
            result = last_json(evaluated.stdout)
            done[steps] = {"recipe": recipe, "steps": steps, "train_seconds_this_leg": info["seconds"],
                           "steps_per_second": round(info["steps_per_second"], 3), "final_loss": info["final_loss"],
                           "teacher_top1": result["teacher_top1"], "heldout_loss": result["heldout_loss"],
                           "per_class_top1": result["per_class_top1"], "printed": trained.stdout.strip()[-200:]}
            with open(log, "a") as handle:
                handle.write(json.dumps(done[steps]) + "\n")
        rows.append(done[steps])
    print(f"{'steps':>7} {'train min (cumulative)':>23} {'held-out loss':>14} {'teacher top-1':>14}")
    minutes = 0.0
    for row in rows:
        minutes += row["train_seconds_this_leg"] / 60
        row["train_minutes_cumulative"] = round(minutes, 1)
        print(f"{row['steps']:7d} {minutes:23.1f} {row['heldout_loss']:14.4f} {row['teacher_top1']:14.2f}")
    keys = ("steps", "train_minutes_cumulative", "heldout_loss", "teacher_top1")
    print(json.dumps({"recipe": recipe, "milestones": [{k: r[k] for k in keys} for r in rows]}))


if __name__ == "__main__":
    main()
