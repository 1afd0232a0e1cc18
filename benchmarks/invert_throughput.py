"""Encode + DDIM inversion throughput of one encoder actor, and DDIM sampling + decode of one synthesize actor.

python -m benchmarks.invert_throughput [--quick] [--batches N] [--batch-size B] [--threads T]

Calls the actors' classes in this process (no Ray: this is the per-actor rate that the pool multiplies) on random
images, after one warm-up batch: VAE encode alone, encode + inversion (D3HR's defaults: 50-step grid to t = 600,
guidance 4), and sampling back + decode. On CPU it runs `dit-tiny`; where CUDA is present it runs a random DiT-XL/2
at 256 px with an SD-size VAE in bf16 and reports the fraction of the GPU's dense bf16 peak that the DiT forward
passes imply (118.6 GFLOPs per image per pass, DiT paper Table 4). Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from raydistill.stages.encode import Encoder
from raydistill.stages.synthesize import Decoder

DIT_XL_GFLOPS = 118.6
# Dense bf16 tensor-core peaks (no sparsity), by device name.
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
T_END, STEPS, GUIDANCE = 600, 50, 4.0
DDIM_PASSES = len(range(0, T_END, 1000 // STEPS)) + 1  # model calls per image: the grid up to t_end


def dit_xl_prior():
    """A random DiT-XL/2-256 and an SD-size AutoencoderKL, registered as prior "dit-xl-random" (GPU runs only)."""
    from diffusers import AutoencoderKL

    from raydistill.priors.base import PRIORS
    from raydistill.priors.autoencoders import DiffusersVAEPrior
    from raydistill.priors.diffusion import DiffusionPrior, linear_schedule, perturb_zero_parameters

    def build(arg, resolution):
        from diffusers import DiTTransformer2DModel

        torch.manual_seed(0)
        dit = DiTTransformer2DModel(num_attention_heads=16, attention_head_dim=72, num_layers=28, in_channels=4,
                                    out_channels=8, sample_size=32, patch_size=2, num_embeds_ada_norm=1000)
        perturb_zero_parameters(dit)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
                            scaling_factor=0.18215)
        return DiffusionPrior(DiffusersVAEPrior(vae, "vae", 256), dit, linear_schedule(), "dit-xl-random")

    if "dit-xl-random" not in PRIORS.names():
        PRIORS.register("dit-xl-random")(build)
    return "dit-xl-random", 256


def rate(call, batch: dict, batches: int) -> float:
    """Images per second of `call` over `batches` calls after one warm-up call."""
    call(batch)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(batches):
        call(batch)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return batches * len(batch["label"]) / (time.perf_counter() - start)


def measure(batch_size: int, batches: int, threads: int) -> dict:
    """Images/s of encode, encode + invert and sample + decode on this machine's device, and the DiT's achieved
    TFLOP/s (and share of the bf16 peak) where it is a GPU."""
    gpu = torch.cuda.is_available()
    spec, resolution = dit_xl_prior() if gpu else ("dit-tiny", 32)
    device = torch.cuda.get_device_name() if gpu else f"cpu ({threads} thread{'s' * (threads > 1)})"
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(batch_size, resolution, resolution, 3), dtype=np.uint8)
    labels = rng.integers(0, 1000, size=batch_size)
    batch = {"image": images, "label": labels, "id": np.arange(batch_size)}
    inversion = {"t_end": T_END, "steps": STEPS, "guidance": GUIDANCE}
    common = {"prior_spec": spec, "resolution": resolution, "num_cpus": threads, "run": "bench"}
    encode_only = rate(Encoder(**common), batch, batches)
    encode_invert = rate(Encoder(**common, inversion=inversion), batch, batches)
    latent_side = resolution // 8 if gpu else resolution // 2
    points = rng.normal(size=(batch_size, 4 * latent_side * latent_side)).astype(np.float32)
    prototypes = {"point": list(points), "label": labels, "index": np.arange(batch_size),
                  "weight": np.full(batch_size, 1.0)}
    sampling = {"t_start": T_END, "steps": STEPS, "guidance": GUIDANCE, "seed": 0, "from_latents": False}
    decoder = Decoder(**common, latent_shape=[4, latent_side, latent_side], image_size=resolution, sampling=sampling)
    sample_decode = rate(decoder, prototypes, batches)
    result = {"device": device, "prior": spec, "batch_size": batch_size, "encode_images_per_s": encode_only,
              "encode_invert_images_per_s": encode_invert, "sample_decode_images_per_s": sample_decode,
              "model_passes_per_image": 2 * DDIM_PASSES}
    if gpu:
        peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in device), None)
        result["invert_tflops"] = encode_invert * 2 * DDIM_PASSES * DIT_XL_GFLOPS / 1e3
        result["fraction_of_bf16_peak"] = result["invert_tflops"] / peak if peak else None
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 timed batches of 16")
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of the actor (cpus_per_actor)")
    args = parser.parse_args()
    if args.quick:
        args.batches, args.batch_size = 2, 16
    result = measure(args.batch_size, args.batches, args.threads)
    print(f"{result['prior']} on {result['device']}, batch {args.batch_size}, {DDIM_PASSES} DDIM steps with guidance "
          f"(2 passes each)")
    for key in ("encode_images_per_s", "encode_invert_images_per_s", "sample_decode_images_per_s"):
        print(f"{key:32s} {result[key]:10.2f}")
    if "invert_tflops" in result:
        print(f"inversion runs the DiT at {result['invert_tflops']:.0f} TFLOP/s"
              + (f", {result['fraction_of_bf16_peak']:.0%} of the bf16 peak" if result["fraction_of_bf16_peak"]
                 else ""))
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}))

if __name__ == "__main__":
    main()
