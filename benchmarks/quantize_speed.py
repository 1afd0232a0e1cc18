"""Per-class k-means at ImageNet shapes: raydistill's ddoq (faiss) against sklearn's MiniBatchKMeans, as D4M uses it.

python -m benchmarks.quantize_speed [--quick] [--classes 8] [--points 1300] [--ipc 10 100] [--data synthetic cifar10]

Two kinds of class, both quantizers on the same classes in the same run:
- synthetic: 1,300 points x 4,096 dims, like one ImageNet class of 4x32x32 latents (40 Gaussian clusters of random
  sizes and spreads), generated from the class's seed;
- cifar10: real images, the first 1,300 of each CIFAR-10 class in ../shared as 3,072 pixel values in [0, 1]; real
  data is far less clustered, and Lloyd needs many more passes on it.
Classes run as Ray tasks, one CPU each (faiss and sklearn then use one thread each): ddoq with its defaults and
sklearn's MiniBatchKMeans with its defaults (batch 1024, n_init "auto", 100 iterations), as D4M calls it. Reports
seconds per class (single-threaded), the distortion each reaches (mean squared distance to the nearest centroid)
and the projected wall time for all 1,000 ImageNet classes on 32 CPUs. Goal: speedup >= 5 with distortion_ratio
(ours / sklearn) <= 1.0 in every row. Prints a table and, last, one JSON line whose `speedup` and
`distortion_ratio` are the worst rows'.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import ray
from PIL import Image

IMAGENET_CLASSES, PROJECTION_CPUS = 1_000, 32
CIFAR10 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


def class_points(seed: int, points: int, dims: int = 4_096, clusters: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (clusters, dims)).astype(np.float32)
    sizes = rng.dirichlet(np.ones(clusters))
    members = rng.choice(clusters, points, p=sizes)
    spreads = rng.uniform(0.3, 1.0, clusters).astype(np.float32)
    noise = rng.normal(0, 1, (points, dims)).astype(np.float32)
    return centres[members] + spreads[members, None] * noise


def cifar10_classes(classes: int, points: int) -> list[np.ndarray]:
    """The first `points` training images of each of the first `classes` CIFAR-10 classes, flattened pixels."""
    rows: dict[int, list[np.ndarray]] = {label: [] for label in range(classes)}
    for shard in sorted(CIFAR10.glob("train-*.parquet")):
        table = pq.read_table(shard, columns=["image", "label"]).to_pydict()
        for image, label in zip(table["image"], table["label"]):
            if label in rows and len(rows[label]) < points:
                data = image["bytes"] if isinstance(image, dict) else image
                rows[label].append(np.asarray(Image.open(io.BytesIO(data)), dtype=np.float32).ravel() / 255)
        if all(len(found) == points for found in rows.values()):
            break
    return [np.stack(rows[label]) for label in range(classes)]


def distortion(x: np.ndarray, centroids: np.ndarray) -> float:
    from raydistill.quantize.metrics import nearest

    _, distances = nearest(x, centroids)
    return float(np.mean(distances))


@ray.remote(num_cpus=1)
def quantize_class(x: np.ndarray, seed: int, ipc: int, which: str) -> tuple[float, float]:
    """(seconds, distortion) of one quantizer on one class."""
    from sklearn.cluster import MiniBatchKMeans

    from raydistill.quantize import QUANTIZERS  # imported before the clock starts, like the quantize task's

    started = time.perf_counter()
    if which == "ddoq":
        centroids = QUANTIZERS.get("ddoq")(x, ipc, seed=seed).points
    else:
        centroids = MiniBatchKMeans(n_clusters=ipc, random_state=seed).fit(x).cluster_centers_
    return time.perf_counter() - started, distortion(x, centroids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 synthetic classes of 1,300 x 4,096 at IPC 10")
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--points", type=int, default=1_300)
    parser.add_argument("--ipc", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--data", nargs="+", choices=["synthetic", "cifar10"], default=["synthetic", "cifar10"])
    args = parser.parse_args()
    if args.quick:
        args.classes, args.ipc, args.data = 2, [10], ["synthetic"]
    ray.init(address="local", object_store_memory=600 * 2**20, include_dashboard=False, log_to_driver=False)
    datasets = {}
    if "synthetic" in args.data:
        datasets["synthetic"] = [ray.put(class_points(seed, args.points)) for seed in range(args.classes)]
    if "cifar10" in args.data:
        datasets["cifar10"] = [ray.put(x) for x in cifar10_classes(min(args.classes, 10), args.points)]
    rows = []
    for data, classes in datasets.items():
        for ipc in args.ipc:
            row = {"data": data, "ipc": ipc}
            for which in ("ddoq", "sklearn"):
                results = ray.get([quantize_class.remote(x, seed, ipc, which) for seed, x in enumerate(classes)])
                row[f"{which}_seconds_per_class"] = round(float(np.mean([s for s, _ in results])), 3)
                row[f"{which}_distortion"] = round(float(np.mean([d for _, d in results])), 3)
            row["speedup"] = round(row["sklearn_seconds_per_class"] / row["ddoq_seconds_per_class"], 2)
            row["distortion_ratio"] = round(row["ddoq_distortion"] / row["sklearn_distortion"], 4)
            row["imagenet_hours_on_32_cpus"] = round(
                row["ddoq_seconds_per_class"] * IMAGENET_CLASSES / PROJECTION_CPUS / 3600, 3)
            rows.append(row)
    print(f"{'data':>9} {'IPC':>4} {'ddoq s/class':>13} {'sklearn s/class':>16} {'speedup':>8} "
          f"{'distortion ratio':>17} {'ImageNet h (32 CPUs)':>21}")
    for row in rows:
        print(f"{row['data']:>9} {row['ipc']:4d} {row['ddoq_seconds_per_class']:13.3f} "
              f"{row['sklearn_seconds_per_class']:16.3f} {row['speedup']:8.2f} {row['distortion_ratio']:17.4f} "
              f"{row['imagenet_hours_on_32_cpus']:21.3f}")
    print(json.dumps({"classes": args.classes, "points": args.points, "rows": rows,
                      "speedup": min(row["speedup"] for row in rows),
                      "distortion_ratio": max(row["distortion_ratio"] for row in rows)}))


if __name__ == "__main__":
    main()
