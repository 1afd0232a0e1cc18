"""Students on distilled CIFAR-10: ddoq vs kmeans (D4M) vs random, over seeds, IPCs, weight transforms and
k-means algorithms.

python -m benchmarks.quality_cifar10 [--quick] [--epochs N] [--ipc 10 50] [--seeds 0 1 2] [--algorithms lloyd minibatch]
    [--students convnet3 cifar-resnet20]

Every run shares one run directory, so the 5,000-image encode happens once and each (method, seed, transform, epochs)
redoes quantize onwards. Finished runs are appended to results.jsonl there, so an interrupted benchmark resumes where it
stopped, and runs at different `--epochs` are kept side by side; each row records its wall seconds and the commit it
measured (delete the rows of older code to rerun them). A row that lacks some of `--students` trains only those, and
the log's newer row holds them all; `--students convnet3` (half the training time, for IPC 50) reuses two-student
rows. Prints a table (mean and spread over seeds) and, last, one JSON line: `top1` (set -> IPC -> student -> mean
top-1 over seeds) and `w2_reduction`, the mean per-class reduction of the Wasserstein-2 distance between a class's
latents and its prototypes when DDOQ's Voronoi weights replace uniform ones, per k-means algorithm (the DDOQ paper:
13.5-17.1 % in its Table 3, "around 20 %" in its text).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
STUDENTS = ("convnet3", "cifar-resnet20")


def grid(ipcs: list[int], seeds: list[int], transforms: list[str], algorithms: list[str]) -> list[dict]:
    """Per IPC and seed: the random subset, and for each k-means algorithm kmeans, ddoq with its raw masses and ddoq
    with each tempering."""
    runs = []
    for ipc in ipcs:
        for seed in seeds:
            runs.append({"ipc": ipc, "seed": seed, "method": "random", "transform": "none", "algorithm": "lloyd"})
            for algorithm in algorithms:
                for method, transform in [("ddoq", "none"), ("kmeans", "none")] + [("ddoq", t) for t in transforms]:
                    runs.append({"ipc": ipc, "seed": seed, "method": method, "transform": transform,
                                 "algorithm": algorithm})
    return runs


def key(run: dict, epochs: int) -> str:
    algorithm = run.get("algorithm", "lloyd")
    return (f"{run['method']}|{run['transform']}|ipc{run['ipc']}|seed{run['seed']}|{epochs}ep"
            + ("" if algorithm == "lloyd" else f"|{algorithm}"))


def cifar_run(prior: str) -> list[str]:
    """The start of a `raydistill run` on CIFAR-10 with the ResNet-56 teacher, validated on the first test shard."""
    return [
        str(Path(sys.executable).parent / "raydistill"), "run",
        "--data", str(SHARED / "data/cifar10"),
        "--val-data", str(SHARED / "data/cifar10/test-00000-of-00002.parquet"),
        "--prior", prior,
        "--teacher", f"cifar-resnet56:{SHARED / 'weights/cifar10-resnet/resnet56.safetensors'}",
    ]


def code_version() -> str:
    """The commit the run measured ("-dirty" with uncommitted changes), so rows from different code are told apart."""
    describe = ["git", "describe", "--always", "--dirty"]
    return subprocess.run(describe, cwd=ROOT, capture_output=True, text=True).stdout.strip() or "unknown"


def run_one(out: Path, run: dict, epochs: int, students: list[str]) -> dict:
    command = [
        *cifar_run(f"taef2:{SHARED / 'weights/taef2'}"),
        *[arg for student in students for arg in ("--student", student)],
        "--ipc", str(run["ipc"]), "--max-per-class", "500", "--method", run["method"], "--seed", str(run["seed"]),
        "--out", str(out), "--set", "evaluate.baseline=false", "--set", f"train.epochs={epochs}",
        "--set", f"train.weight_transform={run['transform']}", "--set", f"quantize.algorithm={run['algorithm']}",
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = round(time.perf_counter() - started)
    report = json.loads((out / "report" / "report.json").read_text())
    return {**run, "epochs": epochs, "seconds": seconds, "code": code_version(),
            "top1": {s: report["students"][s]["top1"] for s in students},
            "w2_reduction": report["quantization"]["w2_reduction"]}


def set_name(row: dict) -> str:
    name = row["method"] if row["transform"] == "none" else f"ddoq {row['transform']}"
    return name if row.get("algorithm", "lloyd") == "lloyd" else f"{name} ({row['algorithm']})"


def summarise(results: list[dict]) -> dict:
    """set -> IPC -> student -> {mean, std, n} over seeds."""
    table: dict[str, dict] = {}
    for row in results:
        for student, top1 in row["top1"].items():
            table.setdefault(set_name(row), {}).setdefault(str(row["ipc"]), {}).setdefault(student, []).append(top1)
    return {name: {ipc: {student: {"mean": round(statistics.mean(v), 2), "std": round(statistics.pstdev(v), 2),
                                   "n": len(v)} for student, v in students.items()}
                   for ipc, students in ipcs.items()} for name, ipcs in table.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="IPC 10, one seed, 20 epochs, no transforms")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--ipc", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--transforms", nargs="*", default=["power:0.5", "mix:0.5"])
    parser.add_argument("--algorithms", nargs="+", default=["lloyd"], help="quantize.algorithm values")
    parser.add_argument("--students", nargs="+", default=list(STUDENTS))
    parser.add_argument("--out", default=str(ROOT / "runs/bench-students"))
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.ipc, args.seeds, args.transforms = 20, [10], [0], []
        args.out += "-quick"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "results.jsonl"
    done = {key(r, r["epochs"]): r for r in map(json.loads, log.read_text().splitlines())} if log.exists() else {}
    results = []
    for run in grid(args.ipc, args.seeds, args.transforms, args.algorithms):
        run_key = key(run, args.epochs)
        result = done.get(run_key)
        known = result["top1"] if result else {}
        missing = [student for student in args.students if student not in known]
        if missing:  # the set is seeded, so the students it lacks train on the same images as the ones it holds
            result = run_one(out, run, args.epochs, missing)
            result["top1"] = {**known, **result["top1"]}
            with open(log, "a") as handle:
                handle.write(json.dumps(result) + "\n")
        results.append({**result, "top1": {s: result["top1"][s] for s in args.students}})
        print(f"{run_key}: " + ", ".join(f"{s} {v:.2f}" for s, v in result["top1"].items()), flush=True)
    summary = summarise(results)
    print(f"\n{'set':16s} {'IPC':>4s} {'student':16s} top-1 mean ± std over seeds")
    for name, ipcs in sorted(summary.items()):
        for ipc, students in ipcs.items():
            for student, stats in students.items():
                print(f"{name:16s} {ipc:>4s} {student:16s} {stats['mean']:6.2f} ± {stats['std']:.2f} (n={stats['n']})")
    w2 = {algorithm: round(statistics.mean(r["w2_reduction"] for r in results
                                           if r["method"] == "ddoq" and r.get("algorithm", "lloyd") == algorithm), 4)
          for algorithm in args.algorithms}
    top1 = {name: {ipc: {student: stats["mean"] for student, stats in students.items()}
                   for ipc, students in ipcs.items()} for name, ipcs in summary.items()}
    print(json.dumps({"top1": top1, "w2_reduction": w2, "epochs": args.epochs, "detail": summary}))

if __name__ == "__main__":
    main()
