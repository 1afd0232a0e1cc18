"""Driver memory against data size: peak RSS of the `raydistill` driver for encode + quantize on 1x, 4x and 16x the
images.

python -m benchmarks.driver_memory [--quick] [--base 5000] [--out runs/bench-driver-memory]

Synthetic 32x32 PNGs (10 classes, as `encode_load` writes them) at each scale, encoded with the pixel prior and
quantized with ddoq at IPC 10; the driver's RSS is sampled twice a second through both commands. Goal: rss_growth
(largest peak / smallest peak) <= 1.3, since the driver streams and never holds the dataset. Prints a table and,
last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.encode_load import RAYDISTILL, ROOT, run_sampling_rss, write_shards

SCALES = (1, 4, 16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="base 1,000 images (1,000 / 4,000 / 16,000)")
    parser.add_argument("--base", type=int, default=5_000, help="images at scale 1")
    parser.add_argument("--out", default=str(ROOT / "runs/bench-driver-memory"))
    args = parser.parse_args()
    if args.quick:
        args.base, args.out = 1_000, args.out + "-quick"
    rows = []
    for scale in SCALES:
        images = args.base * scale
        data, run = Path(args.out) / f"data-{images}", Path(args.out) / f"run-{images}"
        write_shards(data, images)
        peaks, seconds = [], 0.0
        for stage in ("encode", "quantize"):
            taken, samples = run_sampling_rss([RAYDISTILL, stage, "--data", str(data), "--prior", "pixel",
                                               "--ipc", "10", "--out", str(run)])
            peaks.append(max(rss for _, rss in samples))
            seconds += taken
        rows.append({"images": images, "encode_peak_mb": round(peaks[0], 1), "quantize_peak_mb": round(peaks[1], 1),
                     "peak_mb": round(max(peaks), 1), "seconds": round(seconds, 1)})
    print(f"{'images':>8} {'encode peak MiB':>16} {'quantize peak MiB':>18} {'seconds':>8}")
    for row in rows:
        print(f"{row['images']:8d} {row['encode_peak_mb']:16.1f} {row['quantize_peak_mb']:18.1f} {row['seconds']:8.1f}")
    peaks = [row["peak_mb"] for row in rows]
    print(json.dumps({"runs": rows, "rss_growth": round(max(peaks) / min(peaks), 3)}))


if __name__ == "__main__":
    main()
