"""Per-class k-means at ImageNet shapes: raydistill's ddoq (faiss) against sklearn's MiniBatchKMeans, as D4M uses it.

python -m benchmarks.quantize_speed [--quick] [--classes 8] [--points 1300] [--dims 4096] [--ipc 10 100]

Each class is synthetic clustered data (1,300 points x 4,096 dims, like one ImageNet class of 4x32x32 latents: 40
Gaussian clusters of random sizes and spreads), generated inside the task from its seed. Classes run as Ray tasks,
one CPU each (faiss and sklearn then use one thread each), both quantizers in the same run on the same classes:
ddoq with its defaults (50 Lloyd iterations, every point) and sklearn's MiniBatchKMeans with its defaults (batch 1024,
n_init "auto", 100 iterations), as D4M calls it. Reports seconds per class (CPU seconds: single-threaded), the
distortion each reaches (mean squared distance to the nearest centroid) and the projected wall time for all 1,000
ImageNet classes on 32 CPUs. Goal: speedup >= 5 with distortion_ratio (ours / sklearn) <= 1.0. Prints a table and,
last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import ray

IMAGENET_CLASSES, PROJECTION_CPUS = 1_000, 32


def class_points(seed: int, points: int, dims: int, clusters: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (clusters, dims)).astype(np.float32)
    sizes = rng.dirichlet(np.ones(clusters))
    members = rng.choice(clusters, points, p=sizes)
    spreads = rng.uniform(0.3, 1.0, clusters).astype(np.float32)
    noise = rng.normal(0, 1, (points, dims)).astype(np.float32)
    return centres[members] + spreads[members, None] * noise


def distortion(x: np.ndarray, centroids: np.ndarray) -> float:
    from raydistill.quantize.metrics import nearest

    _, distances = nearest(x, centroids)
    return float(np.mean(distances))


@ray.remote(num_cpus=1)
def quantize_class(seed: int, points: int, dims: int, ipc: int, which: str) -> tuple[float, float]:
    """(seconds, distortion) of one quantizer on one synthetic class."""
    from sklearn.cluster import MiniBatchKMeans

    from raydistill.quantize import QUANTIZERS  # imported before the clock starts, like the quantize task's

    x = class_points(seed, points, dims)
    started = time.perf_counter()
    if which == "ddoq":
        centroids = QUANTIZERS.get("ddoq")(x, ipc, seed=seed).points
    else:
        centroids = MiniBatchKMeans(n_clusters=ipc, random_state=seed).fit(x).cluster_centers_
    return time.perf_counter() - started, distortion(x, centroids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 classes of 1,300 x 1,024 at IPC 10")
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--points", type=int, default=1_300)
    parser.add_argument("--dims", type=int, default=4_096)
    parser.add_argument("--ipc", type=int, nargs="+", default=[10, 100])
    args = parser.parse_args()
    if args.quick:
        args.classes, args.dims, args.ipc = 2, 1_024, [10]
    ray.init(address="local", object_store_memory=200 * 2**20, include_dashboard=False, log_to_driver=False)
    rows = []
    for ipc in args.ipc:
        row = {"ipc": ipc}
        for which in ("ddoq", "sklearn"):
            results = ray.get([quantize_class.remote(seed, args.points, args.dims, ipc, which)
                               for seed in range(args.classes)])
            row[f"{which}_seconds_per_class"] = round(float(np.mean([s for s, _ in results])), 3)
            row[f"{which}_distortion"] = round(float(np.mean([d for _, d in results])), 2)
        row["speedup"] = round(row["sklearn_seconds_per_class"] / row["ddoq_seconds_per_class"], 2)
        row["distortion_ratio"] = round(row["ddoq_distortion"] / row["sklearn_distortion"], 4)
        row["imagenet_hours_on_32_cpus"] = round(
            row["ddoq_seconds_per_class"] * IMAGENET_CLASSES / PROJECTION_CPUS / 3600, 3)
        rows.append(row)
    print(f"{'IPC':>4} {'ddoq s/class':>13} {'sklearn s/class':>16} {'speedup':>8} {'distortion ratio':>17} "
          f"{'ImageNet h (32 CPUs)':>21}")
    for row in rows:
        print(f"{row['ipc']:4d} {row['ddoq_seconds_per_class']:13.3f} {row['sklearn_seconds_per_class']:16.3f} "
              f"{row['speedup']:8.2f} {row['distortion_ratio']:17.4f} {row['imagenet_hours_on_32_cpus']:21.3f}")
    first = rows[0]
    print(json.dumps({"classes": args.classes, "points": args.points, "dims": args.dims, "by_ipc": rows,
                      "seconds_per_class": first["ddoq_seconds_per_class"],
                      "sklearn_seconds_per_class": first["sklearn_seconds_per_class"],
                      "speedup": first["speedup"], "distortion_ratio": first["distortion_ratio"]}))


if __name__ == "__main__":
    main()
