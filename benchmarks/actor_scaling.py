"""How the encode stage scales from one encoder actor to two.

python -m benchmarks.actor_scaling [--quick] [--images 1000] [--out runs/bench-encode]

The encode stage of `encode_throughput` (taef2 at 64 px on CIFAR-10 JPEGs, steady-state rate from a run on IMAGES
and one on 2 x IMAGES) with one encoder actor and with two; the stage sizes each actor's CPU share and torch threads
from the cluster (every CPU but one, split between the actors). scaling_efficiency = (rate with 2 / rate with 1) / 2.
Goal: >= 0.85. On a machine with few cores the actors share them with the decode tasks, which caps the speedup;
the table says how many CPUs each actor had. Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.encode_throughput import ROOT, start_ray, stage_rate


def main() -> None:
    from raydistill.stages.cluster import cluster_cpus, cpus_per_actor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="500 images")
    parser.add_argument("--images", type=int, default=1_000)
    parser.add_argument("--out", default=str(ROOT / "runs/bench-encode"))
    args = parser.parse_args()
    if args.quick:
        args.images, args.out = 500, args.out + "-quick"
    start_ray()
    prior = f"taef2:{ROOT.parent / 'shared/weights/taef2'}"
    rates = {actors: stage_rate(Path(args.out), prior, args.images, actors) for actors in (1, 2)}
    efficiency = rates[2] / rates[1] / 2
    print(f"{'actors':>6} {'CPUs each':>9} {'img/s':>8}   (cluster: {cluster_cpus():g} CPUs)")
    for actors, rate in rates.items():
        print(f"{actors:6d} {cpus_per_actor(actors):9.2f} {rate:8.1f}")
    print(json.dumps({"images": args.images, "cluster_cpus": cluster_cpus(),
                      "images_per_s": {str(k): round(v, 1) for k, v in rates.items()},
                      "scaling_efficiency": round(efficiency, 3)}))


if __name__ == "__main__":
    main()
