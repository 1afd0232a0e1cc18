"""Encode stage (Ray Data decode tasks + encoder actor pool) against a plain single-process PyTorch loop.

python -m benchmarks.encode_throughput [--quick] [--images 1000] [--sd-images 200] [--out runs/bench-encode]

The same CIFAR-10 JPEGs (IMAGES of ../shared/data/cifar10's train shards, a tenth from each class, copied into a
folder of their own) go through the encode stage on a local Ray (one encoder actor, as sized by the stage: every CPU
but one) and through a loop that decodes each batch and calls the same `Encoder` class in this process, with the
same batch size and torch threads. Two models: `taef2` at 64 px, and a randomly initialised VAE of Stable
Diffusion's size (the SD 1.x AutoencoderKL config) at 64 px, on SD_IMAGES instead of IMAGES since it is far slower.
The stage's steady-state rate is measured without its fixed start-up cost (Ray Data planning, actor start, model
load): it runs on IMAGES and on 2 x IMAGES, and the rate is IMAGES / (the difference in seconds). Goal: ratio
(stage / loop) >= 0.9. Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "data" / "cifar10"
RESOLUTION = 64
SHARD = "train-00000-of-00001.parquet"


def image_folder(out: Path, images: int) -> Path:
    """`images` CIFAR-10 training rows, the first images / 10 of each class (the shards are sorted by class), as one
    parquet shard with the class names."""
    folder = out / f"cifar10-{images}"
    if not (folder / SHARD).exists():
        folder.mkdir(parents=True, exist_ok=True)
        everything = pa.concat_tables(pq.read_table(shard) for shard in sorted(CIFAR.glob("train-*.parquet")))
        labels = everything.column("label").to_numpy()
        rows = np.concatenate([np.flatnonzero(labels == label)[: images // 10] for label in range(10)])
        pq.write_table(everything.take(np.sort(rows)), folder / SHARD)
        (folder / "dataset.json").write_text((CIFAR / "dataset.json").read_text())
    return folder


def sd_size_vae(out: Path) -> str:
    """A random AutoencoderKL with SD 1.x's configuration, saved once; returns its prior spec."""
    folder = out / "sd-size-vae"
    if not (folder / "config.json").exists():
        import torch
        from diffusers import AutoencoderKL

        torch.manual_seed(0)
        AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                      up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
                      scaling_factor=0.18215).save_pretrained(folder)
    return f"vae:{folder}"


def stage_seconds(data: Path, prior: str, out: Path, actors: int) -> float:
    """Seconds the encode stage took (from its marker), on the Ray this process started."""
    from raydistill import pipeline
    from raydistill.config import load_config

    config = load_config(None, [{"data": {"train": str(data), "image_size": RESOLUTION},
                                 "prior": {"spec": prior, "resolution": RESOLUTION},
                                 "encode": {"actors": actors}, "out": str(out),
                                 "quantize": {"ipc": 1}}])  # only encode runs; any class size will do
    return float(pipeline.run(config, only="encode")["seconds"])


def stage_rate(out: Path, prior: str, images: int, actors: int) -> float:
    """Steady-state images/s of the encode stage: the extra images over the extra seconds of a run twice as big."""
    name = prior.split(":")[0] + f"-{actors}-actors"
    small = stage_seconds(image_folder(out, images), prior, out / f"run-{name}-{images}", actors)
    large = stage_seconds(image_folder(out, 2 * images), prior, out / f"run-{name}-{2 * images}", actors)
    return images / max(large - small, 1e-9)


def loop_rate(out: Path, prior: str, images: int, batch_size: int, threads: float) -> float:
    """Images/s of decode-then-encode in one process, batch after batch, with the encode actor's class."""
    from raydistill.data.transforms import decode_batch
    from raydistill.stages.encode import Encoder

    encoder = Encoder(prior, RESOLUTION, threads, run="loop")
    table = pq.read_table(image_folder(out, 2 * images) / SHARD)
    batches = [{name: np.asarray(table.column(name).slice(start, batch_size).to_pylist(), dtype=object)
                if name != "label" else table.column(name).slice(start, batch_size).to_numpy()
                for name in ("id", "label", "image")} for start in range(0, table.num_rows, batch_size)]
    encoder(decode_batch(batches[0], RESOLUTION))  # warm-up, like the actor's first batch
    started = time.perf_counter()
    for batch in batches:
        encoder(decode_batch(batch, RESOLUTION))
    return table.num_rows / (time.perf_counter() - started)


def priors(out: Path, quick: bool, images: int, sd_images: int) -> dict[str, tuple[str, int]]:
    """Model name -> (prior spec, images of the smaller run)."""
    found = {"taef2 64 px": (f"taef2:{ROOT.parent / 'shared/weights/taef2'}", images)}
    if not quick:
        found["SD-size VAE 64 px"] = (sd_size_vae(out), sd_images)
    return found


def start_ray() -> None:
    import ray

    ray.init(address="local", object_store_memory=500 * 2**20, include_dashboard=False, log_to_driver=False)


def main() -> None:
    from raydistill.config import EncodeConfig
    from raydistill.stages.cluster import cpus_per_actor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="500 images, taef2 only")
    parser.add_argument("--images", type=int, default=1_000)
    parser.add_argument("--sd-images", type=int, default=200, help="images for the SD-size VAE")
    parser.add_argument("--out", default=str(ROOT / "runs/bench-encode"))
    args = parser.parse_args()
    if args.quick:
        args.images, args.out = 500, args.out + "-quick"
    out = Path(args.out)
    start_ray()
    threads = cpus_per_actor(1)
    rows = []
    for name, (prior, images) in priors(out, args.quick, args.images, args.sd_images).items():
        ray_rate = stage_rate(out, prior, images, actors=1)
        plain = loop_rate(out, prior, images, EncodeConfig().batch_size, threads)
        rows.append({"model": name, "images": images, "ray_images_per_s": round(ray_rate, 1),
                     "loop_images_per_s": round(plain, 1), "ratio": round(ray_rate / plain, 3)})
    print(f"{'model':>20} {'images':>7} {'stage img/s':>12} {'loop img/s':>11} {'ratio':>6}   "
          f"({threads:g} encoder thread(s))")
    for row in rows:
        print(f"{row['model']:>20} {row['images']:7d} {row['ray_images_per_s']:12.1f} "
              f"{row['loop_images_per_s']:11.1f} {row['ratio']:6.3f}")
    print(json.dumps({"threads": threads, "by_model": rows, **{
        key: rows[0][key] for key in ("ray_images_per_s", "loop_images_per_s", "ratio")}}))


if __name__ == "__main__":
    main()
