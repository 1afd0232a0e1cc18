"""D3HR group sampling speed: seconds per class at ImageNet shapes, as one quantize task runs it.

python -m benchmarks.group_sampling [--quick] [--candidates M] [--ipc 10 50] [--dim 4096] [--threads 1]
                                    [--draws-per-batch N]

A synthetic class of 1,300 points (ImageNet's class size) in `--dim` dimensions goes through the `d3hr` quantizer:
the streaming moments, M candidate groups scored in batches, the Voronoi counts. The work per candidate is fixed, so
seconds grow linearly with M; the projection to the paper's M = 10^6 is printed beside each measurement. Goal (paper,
one A6000 GPU): 2.6 s per class at IPC 10. `--draws-per-batch` overrides the quantizer's block size on this device,
to compare block sizes side by side. Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from raydistill.quantize import QUANTIZERS, d3hr

PAPER_CANDIDATES = 1_000_000
PAPER_SECONDS_IPC10 = 2.6
IMAGENET_CLASSES = 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10^4 candidates, 1,024 dimensions")
    parser.add_argument("--candidates", type=int, default=PAPER_CANDIDATES)
    parser.add_argument("--ipc", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--dim", type=int, default=4096, help="latent size (DiT at 256 px: 4x32x32 = 4096)")
    parser.add_argument("--points", type=int, default=1300)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a quantize task has 1 CPU)")
    parser.add_argument("--draws-per-batch", type=int, help="standard-normal draws scored at once")
    args = parser.parse_args()
    if args.quick:
        args.candidates, args.dim = 10_000, 1024
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else f"cpu ({args.threads} thread{'s' * (args.threads > 1)})"
    block_setting = "GPU_DRAWS_PER_BATCH" if device == "cuda" else "CPU_DRAWS_PER_BATCH"
    if args.draws_per_batch:
        setattr(d3hr, block_setting, args.draws_per_batch)
    draws_per_batch = getattr(d3hr, block_setting)
    x = np.random.default_rng(0).normal(size=(args.points, args.dim)).astype(np.float32)
    rows = {}
    print(f"d3hr on {args.points} x {args.dim} points, {args.candidates:,} candidates, {device}, "
          f"{draws_per_batch:,} draws per batch")
    print(f"{'ipc':>5} {'seconds/class':>14} {'at 10^6 (projected)':>20} {'1000 classes on 32 CPUs (h)':>28}")
    for ipc in args.ipc:
        start = time.perf_counter()
        QUANTIZERS.get("d3hr")(x, ipc, seed=0, candidates=args.candidates)
        seconds = time.perf_counter() - start
        at_paper = seconds * PAPER_CANDIDATES / args.candidates
        imagenet_hours = at_paper * IMAGENET_CLASSES / 32 / 3600
        rows[ipc] = {"seconds_per_class": round(seconds, 2), "seconds_per_class_at_1e6": round(at_paper, 1),
                     "imagenet_hours_on_32_cpus": round(imagenet_hours, 2)}
        print(f"{ipc:5d} {seconds:14.2f} {at_paper:20.1f} {imagenet_hours:28.2f}")
    ratio = rows.get(10, {}).get("seconds_per_class_at_1e6")
    if ratio is not None:
        print(f"IPC 10 at 10^6 candidates: {ratio / PAPER_SECONDS_IPC10:.0f}x the paper's {PAPER_SECONDS_IPC10} s "
              f"on an A6000")
    print(json.dumps({"device": device, "candidates": args.candidates, "dim": args.dim,
                      "draws_per_batch": draws_per_batch, "ipc": rows}))


if __name__ == "__main__":
    main()
