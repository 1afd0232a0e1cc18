"""Load test: the encode stage on 100,000 images with a small object store; the driver's memory stays flat.

python -m benchmarks.encode_load [--quick] [--images 100000] [--object-store-mb 128] [--out runs/bench-load]

Writes N synthetic 32x32 PNGs (10 classes) as parquet shards of 5,000 rows, then runs `raydistill encode` on them
with the pixel prior and a deliberately small object store, sampling the driver process's resident memory (RSS)
twice a second. Goal: the run completes, every image is encoded once, and the driver's peak RSS over the second
half of the run is at most 1.1x its peak over the first half (memory does not grow with the images streamed
through). Reports what the object store spilled (from the raylet's log). Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RAYDISTILL = str(Path(sys.executable).parent / "raydistill")
SHARD_ROWS = 5_000


def write_shards(folder: Path, images: int, side: int = 32, classes: int = 10) -> None:
    """Synthetic labelled PNGs: each class a colour, plus noise, so encoding has real bytes to decode."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (classes, 3))
    for shard, start in enumerate(range(0, images, SHARD_ROWS)):
        path = folder / f"train-{shard:05d}.parquet"
        if path.exists():
            continue
        labels = np.arange(start, min(start + SHARD_ROWS, images)) % classes
        blobs = []
        for label in labels:
            pixels = np.clip(colours[label] + rng.normal(0, 40, (side, side, 3)), 0, 255).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            blobs.append(buffer.getvalue())
        ids = [f"img{i:07d}" for i in range(start, start + len(labels))]
        pq.write_table(pa.table({"id": ids, "image": pa.array(blobs, pa.binary()), "label": labels}), path)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def run_sampling_rss(command: list[str]) -> tuple[float, list[tuple[float, float]]]:
    """Runs `command`, sampling its resident memory twice a second; returns its seconds and (second, MiB) samples.
    Exits with the command's output if it fails."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as printed:  # a file, not a pipe: a full pipe would stall the command
        process = subprocess.Popen(command, stdout=printed, stderr=subprocess.STDOUT, text=True)
        samples = []
        while process.poll() is None:
            try:
                samples.append((time.perf_counter() - started, rss_mb(process.pid)))
            except (OSError, StopIteration):
                pass  # the process is ending
            time.sleep(0.5)
        if process.returncode:
            printed.seek(0)
            sys.exit(f"{' '.join(command[:2])} failed:\n{printed.read()[-3000:]}")
    return time.perf_counter() - started, samples


def spilled_mb(session_logs: Path) -> float:
    """The largest "Spilled N MiB" the raylet logged (it logs running totals), 0 if it never spilled."""
    totals = [float(m) for log in session_logs.glob("raylet*.out")
              for m in re.findall(r"Spilled (\d+(?:\.\d+)?) MiB", log.read_text(errors="replace"))]
    return max(totals, default=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 images")
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--object-store-mb", type=int, default=128)
    parser.add_argument("--out", default=str(ROOT / "runs/bench-load"))
    args = parser.parse_args()
    if args.quick:
        args.images, args.out = 10_000, args.out + "-quick"
    out = Path(args.out)
    data, run = out / f"data-{args.images}", out / "run"
    write_shards(data, args.images)
    sessions_before = set(Path("/tmp/ray").glob("session_2*"))
    seconds, samples = run_sampling_rss([RAYDISTILL, "encode", "--data", str(data), "--prior", "pixel", "--out",
                                         str(run), "--set", f"ray.object_store_mb={args.object_store_mb}"])
    marker = json.loads((run / "latents" / "_SUCCESS.json").read_text())
    ids = pq.read_table(run / "latents", columns=["id"]).column("id")
    sessions = sorted(set(Path("/tmp/ray").glob("session_2*")) - sessions_before)
    spilled = spilled_mb(sessions[-1] / "logs") if sessions else None
    half = seconds / 2
    first = max(rss for t, rss in samples if t <= half)
    second = max(rss for t, rss in samples if t > half)
    result = {
        "images": args.images, "encoded": marker["rows"], "unique_ids": len(set(ids.to_pylist())),
        "seconds": round(seconds, 1), "images_per_s": round(args.images / seconds, 1),
        "object_store_mb": args.object_store_mb, "spilled_mb": spilled,
        "driver_rss_peak_first_half_mb": round(first, 1), "driver_rss_peak_second_half_mb": round(second, 1),
        "rss_growth": round(second / first, 3),
    }
    print(f"{'images':>8} {'encoded':>8} {'seconds':>8} {'img/s':>7} {'RSS 1st half':>13} {'RSS 2nd half':>13} "
          f"{'spilled MiB':>12}")
    print(f"{args.images:8d} {marker['rows']:8d} {seconds:8.1f} {result['images_per_s']:7.1f} {first:13.1f} "
          f"{second:13.1f} {spilled if spilled is not None else 'n/a':>12}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
