"""The diffusion methods on CIFAR-10 with a prior trained here: d3hr, ddoq on DiT noise and dsco (with and without
doping) next to ddoq on latents and the random real subset, all at one IPC.

python -m benchmarks.diffusion_cifar10 --prior runs/bench-prior/PRIOR_DIR [--quick] [--ipc 10] [--epochs 100]
    [--dope 10] [--noise-iterations 20] [--candidates 10000]

Every row is a `raydistill run` with `--prior dit:PRIOR` on the same 500 images per class, the ResNet-56 teacher's
soft labels and the `convnet3` student, in one run directory: the encode (latents plus their DDIM inversion, which
every row keeps so that they share it) happens once, and each row redoes quantize onwards. DsCo's noise optimisation
runs `--noise-iterations` SGD steps per sampling step (the paper: 200) and d3hr scores `--candidates` groups per
class (the paper: 10^6, about 5 minutes per class on one CPU thread here), since the CPU cannot afford the papers'
counts; DsCo's seconds per class are read from the synthesize stage. Finished rows go to results.jsonl in the run
directory, so an interrupted benchmark resumes. Prints a table and, last, one JSON line: `top1` (row -> top-1),
`dsco_seconds_per_class`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from benchmarks.quality_cifar10 import ROOT, cifar_run
STUDENT = "convnet3"


def rows(dope: int, noise_iterations: int, candidates: int) -> dict[str, list[str]]:
    """Row name -> the flags that make it."""
    dsco = ["--method", "dsco", "--set", f"synthesize.noise_iterations={noise_iterations}"]
    return {
        "random": ["--method", "random"],
        "ddoq (latents)": ["--method", "ddoq"],
        "ddoq (DiT noise)": ["--method", "ddoq", "--space", "noise"],
        "d3hr": ["--method", "d3hr", "--set", f"quantize.candidates={candidates}"],
        "dsco": dsco,
        f"dsco + dope {dope}/class": [*dsco, "--dope", str(dope), "--set", "dope.per_class=true"],
    }


def run_one(out: Path, prior: str, flags: list[str], ipc: int, epochs: int, per_class: int) -> dict:
    command = [
        *cifar_run(f"dit:{prior}"),
        "--student", STUDENT, "--ipc", str(ipc), "--max-per-class", str(per_class), "--out", str(out),
        "--set", "encode.invert=true", "--set", "evaluate.baseline=false", "--set", f"train.epochs={epochs}",
        # A checkpoint per epoch would cost more than the epoch on 100 images.
        "--set", "train.checkpoint_every=20", *flags,
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    report = json.loads((out / "report" / "report.json").read_text())
    result = {"top1": report["students"][STUDENT]["top1"],
              "synthesize_seconds": report["stages"]["synthesize"]["seconds"]}
    if "doped" in report:
        result["top1_doped"] = report["doped"][STUDENT]["top1"]
        result["added_images"] = report["doping"]["added_images"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prior", required=True, help="a directory written by `raydistill prior train`")
    parser.add_argument("--quick", action="store_true", help="50 images per class, IPC 2, 5 epochs")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--per-class", type=int, default=500, help="training images per class")
    parser.add_argument("--dope", type=int, default=10, help="real images added per class in the doped row")
    parser.add_argument("--noise-iterations", type=int, default=20)
    parser.add_argument("--candidates", type=int, default=10_000, help="d3hr's candidate groups per class")
    parser.add_argument("--out", default=str(ROOT / "runs/bench-diffusion"))
    args = parser.parse_args()
    if args.quick:
        args.per_class, args.ipc, args.epochs, args.dope, args.noise_iterations, args.candidates = 50, 2, 5, 2, 2, 1000
        args.out += "-quick"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "results.jsonl"
    setting = {"prior": str(Path(args.prior).resolve()), "ipc": args.ipc, "epochs": args.epochs,
               "per_class": args.per_class}
    done = {r["row"]: r for r in map(json.loads, log.read_text().splitlines()) if r["setting"] == setting} \
        if log.exists() else {}
    classes = 10
    for name, flags in rows(args.dope, args.noise_iterations, args.candidates).items():
        if name not in done:
            done[name] = {"row": name, "setting": setting, "flags": flags,
                          **run_one(out / "run", args.prior, flags, args.ipc, args.epochs, args.per_class)}
            with open(log, "a") as handle:
                handle.write(json.dumps(done[name]) + "\n")
        row = done[name]
        doped = f" (doped: {row['top1_doped']:.2f})" if "top1_doped" in row else ""
        print(f"{name:24s} top-1 {row['top1']:6.2f}{doped}  synthesize {row['synthesize_seconds']:.0f} s", flush=True)
    top1 = {name: row["top1"] for name, row in done.items()}
    top1.update({f"{name} (doped)": row["top1_doped"] for name, row in done.items() if "top1_doped" in row})
    dsco = done["dsco"]["synthesize_seconds"] / classes
    print(json.dumps({"top1": top1, "dsco_seconds_per_class": round(dsco, 1),
                      "noise_iterations": args.noise_iterations, **setting}))


if __name__ == "__main__":
    main()
