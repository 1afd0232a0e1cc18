"""GPU rates at ImageNet scale: DiT-XL/2-256-sized models in bf16, and the GPU-hours they imply for ImageNet-1K.

python -m benchmarks.gpu [--quick] [--batch-size 64] [--batches 5]

Runs only where a CUDA GPU is present (elsewhere it says so and prints {"ran": false}). Measures one encode actor and
one synthesize actor as `invert_throughput` does, with a random DiT-XL/2-256 and an SD-size VAE at 256 px: encode,
encode + DDIM inversion (50-step grid to t = 600, guidance 4) and sample + decode images/s, the DiT's achieved
TFLOP/s and its share of the GPU's bf16 peak. Then projects GPU-hours for ImageNet-1K (1,281,167 training images)
at IPC 10 and 100 next to DDOQ's reported single-A6000 costs (ANCHORS.md: encoding + clustering 8 h; synthesis 2 h
at IPC 10, about 24 h at IPC 100). Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json

import torch

from benchmarks.invert_throughput import measure

IMAGENET_TRAIN_IMAGES, IMAGENET_CLASSES = 1_281_167, 1_000
DDOQ_A6000_HOURS = {"encode": 8.0, "synthesize_ipc10": 2.0, "synthesize_ipc100": 24.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 timed batches of 16")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=5)
    args = parser.parse_args()
    if args.quick:
        args.batches, args.batch_size = 2, 16
    if not torch.cuda.is_available():
        print("No CUDA GPU on this machine: the gpu benchmark has not run.")
        print(json.dumps({"ran": False}))
        return
    result = measure(args.batch_size, args.batches, threads=1)
    hours = {
        "encode_invert": IMAGENET_TRAIN_IMAGES / result["encode_invert_images_per_s"] / 3600,
        "synthesize_ipc10": IMAGENET_CLASSES * 10 / result["sample_decode_images_per_s"] / 3600,
        "synthesize_ipc100": IMAGENET_CLASSES * 100 / result["sample_decode_images_per_s"] / 3600,
    }
    print(f"{result['device']}: DiT-XL/2-256 + SD-size VAE, bf16, batch {args.batch_size}")
    for key in ("encode_images_per_s", "encode_invert_images_per_s", "sample_decode_images_per_s"):
        print(f"{key:32s} {result[key]:10.1f}")
    if result.get("fraction_of_bf16_peak"):
        print(f"{'fraction of bf16 peak (invert)':32s} {result['fraction_of_bf16_peak']:10.1%}")
    print(f"\n{'ImageNet-1K GPU-hours':24s} {'raydistill (1 GPU)':>19s} {'DDOQ, one A6000':>16s}")
    for ours, theirs in (("encode_invert", "encode"), ("synthesize_ipc10", "synthesize_ipc10"),
                         ("synthesize_ipc100", "synthesize_ipc100")):
        print(f"{ours:24s} {hours[ours]:19.2f} {DDOQ_A6000_HOURS[theirs]:16.1f}")
    print(json.dumps({"ran": True, **{k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()},
                      "imagenet_gpu_hours": {k: round(v, 2) for k, v in hours.items()},
                      "ddoq_a6000_hours": DDOQ_A6000_HOURS}))


if __name__ == "__main__":
    main()
