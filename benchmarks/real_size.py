"""A real-size dry run: random DiT-XL/2-256 and Stable Diffusion 1.5, in their hub layouts, through `raydistill run`
on a small ImageNet-style folder of mixed-size JPEGs.

python -m benchmarks.real_size [--cases NAME ...] [--images-per-class 3] [--steps 10] [--student convnet3]
                               [--models runs/real-size/models] [--out runs/real-size] [--smallest]

Nothing is downloaded: the models have the released architectures (the configs below) with random weights, saved
with `save_pretrained` where `--prior dit:DIR` and `--prior sd:DIR` read them, and are built once per `--models`
folder (a folder counts as built when its BUILT.json, written last, is there). The data are seeded gradients with
shapes, two ImageNet classes in wnid folders (train/ and val/). Each case runs `raydistill run` in a subprocess with a
`--steps`-step DDIM grid over the 1000-step schedule and one epoch of training, and records the latent shape, the
labels the prior is given for the classes, the encode stage's seconds per image, the synthesize stage's seconds per
prototype (both include the stage's start-up: actor start and model load), the run's wall seconds and the peak RSS
of the driver and of its Ray workers. Where CUDA is present it also records images/s and the share of the GPU's bf16
peak that the DiT passes imply (`benchmarks.invert_throughput`'s FLOP count and peak table). Prints a table, appends one JSON line per case to
OUT/results.jsonl and prints, last, one JSON line with all of them.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from benchmarks.encode_load import RAYDISTILL, ROOT, rss_mb
from benchmarks.invert_throughput import BF16_PEAK_TFLOPS, DIT_XL_GFLOPS
from raydistill.config import load_config
from raydistill.pipeline import STAGES
from raydistill.priors.diffusion import DIT_SCHEDULE, perturb_zero_parameters, tiny_clip
from raydistill.rundir import RunDir
from raydistill.stages.synthesize import img2img_timestep
from raydistill.synthesize.ddim import timestep_grid

# facebook/DiT-XL-2-256's transformer/config.json (DiT-XL/2: 1152 wide, 28 layers; 8 output channels, since it
# also predicts the variance).
DIT_XL_2 = {"num_attention_heads": 16, "attention_head_dim": 72, "num_layers": 28, "patch_size": 2, "in_channels": 4,
            "out_channels": 8, "sample_size": 32, "num_embeds_ada_norm": 1000, "norm_type": "ada_norm_zero"}
# stabilityai/sd-vae-ft-ema (DiT's VAE) and SD 1.5's vae/ share this shape; only sample_size differs.
SD_VAE = {"block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
          "up_block_types": ("UpDecoderBlock2D",) * 4, "layers_per_block": 2, "latent_channels": 4,
          "scaling_factor": 0.18215}
# stable-diffusion-v1-5's unet/config.json.
SD_UNET = {"sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
           "block_out_channels": (320, 640, 1280, 1280), "cross_attention_dim": 768, "attention_head_dim": 8,
           "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
           "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3}
# CLIP ViT-L/14's text tower, SD 1.5's text_encoder/.
CLIP_L_TEXT = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
               "num_attention_heads": 12, "max_position_embeddings": 77, "projection_dim": 768,
               "hidden_act": "quick_gelu"}
SD_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
BUILT = "BUILT.json"

WNIDS = ("n01440764", "n02102040")  # tench and English springer: ImageNet-1K classes 0 and 217
# Mixed sizes as ImageNet has them; 300x200 is under 256 px (and under 224) on its short side, so it is upsampled.
SIZES = ((500, 375), (375, 500), (300, 200), (640, 480))
VAL_PER_CLASS = 2
# Each class's two gradient end colours (RGB): water tones for the tench, greens and browns for the springer.
PALETTES = np.array([[[40, 90, 140], [120, 170, 190]], [[70, 110, 40], [160, 130, 90]]], dtype=float)

IPC = 2
# Every case's flags, one per line: a case's own flags come after these, so they may override them.
COMMON = (
    "--set=data.image_size=224",
    "--set=train.epochs=1",
    "--set=train.batch_size=4",
    "--set=evaluate.baseline=false",
)
# Each case's own flags, one per line; {dit} and {sd} are the built model folders.
CASES = {
    "ddoq-latent": (  # decoded by img2img through DiT, the default with a diffusion prior
        "--method=ddoq",
        "--prior=dit:{dit}",
    ),
    "ddoq-noise": (
        "--method=ddoq",
        "--space=noise",
        "--prior=dit:{dit}",
    ),
    "kmeans-img2img": (
        "--method=kmeans",
        "--prior=sd:{sd}",
        "--decode=ddim",
    ),
    "d3hr": (
        "--method=d3hr",
        "--prior=dit:{dit}",
        "--set=quantize.candidates=1000",
    ),
    "dsco": (
        "--method=dsco",
        "--prior=dit:{dit}",
        "--set=synthesize.noise_iterations=2",
    ),
}
SMALLEST = "ddoq-latent"  # no inversion: the VAE encodes, and DiT img2img decodes the prototypes
SAMPLE_SECONDS = 0.5


def build_dit(folder: Path, layers: int = DIT_XL_2["num_layers"]) -> None:
    """A random DiT-XL/2-256 in the facebook/DiT-XL-2-256 layout: transformer/, vae/, scheduler/. Fewer `layers`
    than its 28 keep every shape but the depth, for a quick check of everything but the model's cost."""
    from diffusers import AutoencoderKL, DDIMScheduler, DiTTransformer2DModel

    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(**{**DIT_XL_2, "num_layers": layers})
    # diffusers zero-initialises DiT's adaLN modulation and output layers: left so, it predicts exactly zero noise.
    perturb_zero_parameters(transformer)
    transformer.save_pretrained(folder / "transformer")
    AutoencoderKL(**SD_VAE, sample_size=256).save_pretrained(folder / "vae")
    DDIMScheduler(**DIT_SCHEDULE, prediction_type="epsilon", clip_sample=False).save_pretrained(folder / "scheduler")


def build_sd(folder: Path) -> None:
    """A random Stable Diffusion 1.5 in its layout: unet/, vae/, text_encoder/, tokenizer/, scheduler/."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    UNet2DConditionModel(**SD_UNET).save_pretrained(folder / "unet")
    AutoencoderKL(**SD_VAE, sample_size=512).save_pretrained(folder / "vae")
    # CLIP's BPE merges are not available offline: tiny_clip's byte-level vocabulary without merges stands in (its
    # ids stay far below the embedding's 49408 rows); only the tokenizer's files are kept.
    with tempfile.TemporaryDirectory() as scratch:
        tiny_clip(Path(scratch))
        tokenizer = CLIPTokenizer(f"{scratch}/vocab.json", f"{scratch}/merges.txt", model_max_length=77)
        tokenizer.save_pretrained(folder / "tokenizer")
    # The tokenizer's own special ids, so the encoder's pooled output finds the end-of-text token.
    config = CLIPTextConfig(**CLIP_L_TEXT, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    CLIPTextModel(config).save_pretrained(folder / "text_encoder")
    PNDMScheduler(**SD_SCHEDULE, skip_prk_steps=True, steps_offset=1).save_pretrained(folder / "scheduler")


def ensure_model(folder: Path, build: Callable[[Path], None]) -> dict:
    """Builds the model folder unless its BUILT.json is there; returns its path and build seconds."""
    marker = folder / BUILT
    cached = marker.is_file()
    if not cached:
        shutil.rmtree(folder, ignore_errors=True)  # what an interrupted build left
        start = time.perf_counter()
        build(folder)
        marker.write_text(json.dumps({"seconds": round(time.perf_counter() - start, 1)}))
    seconds = json.loads(marker.read_text())["seconds"]
    print(f"{folder.name}: built in {seconds:.0f} s{' (earlier; cached)' if cached else ''}", flush=True)
    return {"path": str(folder), "build_seconds": seconds, "cached": cached}


def synthetic_photo(rng: np.random.Generator, size: tuple[int, int], label: int) -> Image.Image:
    """A smooth gradient in the class's colours with soft shapes (ellipses for class 0, rectangles for 1) and a
    little sensor-like noise, so that JPEG compresses it as it does a photo."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width] / max(size)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * x + np.sin(angle) * y
    ramp = (ramp - ramp.min()) / np.ptp(ramp)
    start, end = PALETTES[label] + rng.normal(0, 15, (2, 3))
    image = Image.fromarray(np.clip(start + ramp[..., None] * (end - start), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    shape = draw.ellipse if label == 0 else draw.rectangle
    for _ in range(rng.integers(3, 7)):
        left, top = rng.uniform(0, width), rng.uniform(0, height)
        box = (left, top, left + rng.uniform(0.1, 0.4) * width, top + rng.uniform(0.1, 0.4) * height)
        shape(box, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(3)), dtype=float) + rng.normal(0, 3, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_dataset(root: Path, per_class: int) -> Path:
    """train/<wnid>/ (`per_class` images) and val/<wnid>/ (VAL_PER_CLASS) of seeded JPEGs; the sizes rotate through
    SIZES, shifted by the class so that two classes of three cover all four."""
    for split, count in (("train", per_class), ("val", VAL_PER_CLASS)):
        for label, wnid in enumerate(WNIDS):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                rng = np.random.default_rng([label, i, split == "val"])
                image = synthetic_photo(rng, SIZES[(i + label) % len(SIZES)], label)
                image.save(folder / f"{wnid}_{i:05d}.jpg", quality=90)
    return root


def command(case: str, data: Path, run: Path, models: dict[str, str], steps: int, student: str) -> list[str]:
    """The `raydistill run` command line of a case."""
    return [RAYDISTILL, "-v", "run", f"--data={data}", f"--out={run}", f"--ipc={IPC}", f"--student={student}",
            f"--set=encode.steps={steps}", f"--set=synthesize.steps={steps}", *COMMON,
            *(flag.format(**models) for flag in CASES[case])]


def descendants(pid: int) -> list[int]:
    """The pids below `pid` in the process tree (a local Ray's raylet and workers descend from its driver)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # it ended while we looked
            children.setdefault(parent, []).append(int(entry.name))
    found, frontier = [], list(children.get(pid, []))
    while frontier:
        found.append(frontier.pop())
        frontier += children.get(found[-1], [])
    return found


class PeakMemory(threading.Thread):
    """Samples the RSS of a process and of its descendant Ray workers (titled `ray::...`) every SAMPLE_SECONDS,
    keeping each process's largest; only descendants, so another Ray on the machine is never counted. Reads /proc
    (psutil is no dependency of the project)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.driver = pid
        self.peaks: dict[int, tuple[float, str]] = {}  # pid -> (largest RSS in MiB, the title it had then)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(SAMPLE_SECONDS):
            self.sample()

    def sample(self) -> None:
        for pid in [self.driver, *descendants(self.driver)]:
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                rss = rss_mb(pid)
            except (OSError, StopIteration):
                continue  # it ended while we looked (a zombie has no VmRSS)
            if (pid == self.driver or title.startswith("ray::")) and rss > self.peaks.get(pid, (0.0, ""))[0]:
                self.peaks[pid] = (rss, "driver" if pid == self.driver else title.split()[0])

    def summary(self) -> dict:
        """The driver's peak RSS and the largest Ray worker's, in MiB, with that worker's title."""
        driver = self.peaks.get(self.driver, (0.0, ""))[0]
        rss, title = max((peak for pid, peak in self.peaks.items() if pid != self.driver), default=(0.0, ""))
        return {"driver_peak_mib": round(driver), "worker_peak_mib": round(rss), "worker_peak_title": title}


def stage_markers(run: Path) -> dict[str, dict]:
    """Each finished stage's `_SUCCESS.json`, by stage name."""
    rundir = RunDir(str(run))
    return {stage.name: marker for stage in STAGES if (marker := rundir.marker(stage.folder)) is not None}


def dit_passes(run: Path, train_timesteps: int = 1000) -> dict[str, int]:
    """DiT forward passes per image of the encode (inversion) and synthesize (DDIM sampling) stages, from the run's
    resolved config: one per grid timestep, two with guidance; 0 where the stage runs no denoiser, none for another
    prior."""
    config = load_config(run / "config.json")
    if not config.prior.spec.startswith("dit:"):
        return {}
    grid_ends = {"encode": config.encode.t_end if config.encode.invert else None}
    decode = config.synthesize.decode
    if decode == "dsco":
        grid_ends["synthesize"] = train_timesteps - 1
    elif decode == "ddim":
        grid_ends["synthesize"] = (img2img_timestep(config.synthesize.strength, train_timesteps)
                                   if config.quantize.space == "latent" else config.encode.t_end)
    passes = {}
    for stage, section in (("encode", config.encode), ("synthesize", config.synthesize)):
        end = grid_ends.get(stage)
        passes[stage] = 0 if end is None else (
            len(timestep_grid(train_timesteps, section.steps, end)) * (1 if section.guidance == 1 else 2))
    return passes


def gpu_rates(markers: dict[str, dict], run: Path, full_depth: bool) -> dict:
    """Images/s of encode and synthesize and, on a full-depth DiT-XL prior, the share of the GPU's dense bf16 peak
    that their DiT passes imply (a lower bound: the stage seconds include start-up and the VAE)."""
    device = torch.cuda.get_device_name()
    peak = next((tflops for name, tflops in BF16_PEAK_TFLOPS.items() if name in device), None)
    rates = {"device": device}
    passes = dit_passes(run)
    for stage in ("encode", "synthesize"):
        if stage not in markers:
            continue
        images_per_s = markers[stage]["rows"] / markers[stage]["seconds"]
        rates[f"{stage}_images_per_s"] = round(images_per_s, 2)
        if passes.get(stage) and peak and full_depth:
            rates[f"{stage}_bf16_peak_share"] = round(images_per_s * passes[stage] * DIT_XL_GFLOPS / 1e3 / peak, 4)
    return rates


def error_line(log: Path) -> str:
    """The failed command's one-line message: raydistill's last `error: ...` line, else the log's last line."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    return (errors or lines or ["(no output)"])[-1]


def run_case(case: str, data: Path, out: Path, models: dict[str, str], steps: int, student: str,
             full_depth: bool) -> dict:
    """Runs one case from scratch and gathers its numbers."""
    run, log = out / case, out / f"{case}.log"
    shutil.rmtree(run, ignore_errors=True)  # a rerun would skip the finished stages and time nothing
    argv = command(case, data, run, models, steps, student)
    # The priors are local folders; offline, a hub lookup would only stall.
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    with log.open("w") as printed:  # a file, not a pipe: a full pipe would stall the command
        process = subprocess.Popen(argv, stdout=printed, stderr=subprocess.STDOUT, env=env)
        monitor = PeakMemory(process.pid)
        monitor.start()
        exit_code = process.wait()
        monitor.stop.set()
        monitor.join()
    result = {"case": case, "exit_code": exit_code, "run_seconds": round(time.perf_counter() - start, 1),
              "command": shlex.join(argv), "log": str(log), **monitor.summary()}
    markers = stage_markers(run)
    result["stage_seconds"] = {name: marker["seconds"] for name, marker in markers.items()}
    if "encode" in markers:
        result["latent_shape"] = markers["encode"]["latent_shape"]
        result["upsampled_images"] = markers["encode"].get("upsampled_images")
        result["encode_s_per_image"] = round(markers["encode"]["seconds"] / markers["encode"]["rows"], 2)
    classes = RunDir(str(run)).read_json("class_names.json")
    if classes:
        result["prior_labels"] = [record["prior_label"] for record in classes]
    if "synthesize" in markers:
        result["synthesize_s_per_image"] = round(markers["synthesize"]["seconds"] / markers["synthesize"]["rows"], 2)
    if exit_code:
        result["error"] = error_line(log)
    if torch.cuda.is_available() and markers:
        result.update(gpu_rates(markers, run, full_depth))
    return result


def git_state() -> dict:
    """The commit measured, and whether tracked files differed from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def print_table(results: list[dict]) -> None:
    gpu = any("device" in result for result in results)
    header = "| case | exit | latent shape | encode s/img | synth s/img | run s | driver MiB | worker MiB (title) |"
    if gpu:
        header += " encode img/s | synth img/s | bf16 peak share (encode / synth) |"
    print("\n" + header + "\n" + "|---" * header.count(" |") + "|")
    for r in results:
        shape = "x".join(map(str, r["latent_shape"])) if "latent_shape" in r else "-"
        line = (f"| {r['case']} | {r['exit_code']} | {shape} | {r.get('encode_s_per_image', '-')} | "
                f"{r.get('synthesize_s_per_image', '-')} | {r['run_seconds']:.0f} | {r['driver_peak_mib']} | "
                f"{r['worker_peak_mib']} ({r['worker_peak_title']}) |")
        if gpu:
            line += (f" {r.get('encode_images_per_s', '-')} | {r.get('synthesize_images_per_s', '-')} | "
                     f"{r.get('encode_bf16_peak_share', '-')} / {r.get('synthesize_bf16_peak_share', '-')} |")
        print(line)
    for r in results:
        if "error" in r:
            print(f"{r['case']}: {r['error']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--images-per-class", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="DDIM grid steps over the 1000-step schedule")
    parser.add_argument("--student", default="convnet3", help="a raydistill student or timm model name")
    parser.add_argument("--models", type=Path, default=Path("runs/real-size/models"))
    parser.add_argument("--out", type=Path, default=Path("runs/real-size"))
    parser.add_argument("--dit-layers", type=int, default=DIT_XL_2["num_layers"],
                        help="DiT-XL/2's depth; fewer check every shape at a fraction of the cost (no bf16 share)")
    parser.add_argument("--smallest", action="store_true", help=f"run only {SMALLEST}, the cheapest case")
    args = parser.parse_args()
    if args.images_per_class < IPC:
        parser.error(f"--images-per-class must be at least the IPC, {IPC}")
    out, cases = args.out.resolve(), [SMALLEST] if args.smallest else args.cases
    out.mkdir(parents=True, exist_ok=True)
    needed = {name for case in cases for flag in CASES[case] for name in ("dit", "sd") if f"{{{name}}}" in flag}
    full_depth = args.dit_layers == DIT_XL_2["num_layers"]
    dit_folder = "dit-xl-2-256" if full_depth else f"dit-xl-2-256-{args.dit_layers}-layers"
    builders = {"dit": (dit_folder, functools.partial(build_dit, layers=args.dit_layers)),
                "sd": ("sd-v1-5", build_sd)}
    builds = {name: ensure_model(args.models.resolve() / builders[name][0], builders[name][1]) for name in needed}
    models = {name: build["path"] for name, build in builds.items()}
    data = make_dataset(out / f"data-{args.images_per_class}-per-class", args.images_per_class)
    results = []
    for case in cases:
        state = git_state()  # per case: the code may change between cases while a long run goes on
        result = {**run_case(case, data, out, models, args.steps, args.student, full_depth), **state,
                  "dit_layers": args.dit_layers, "steps": args.steps, "images_per_class": args.images_per_class,
                  "student": args.student}
        print(f"{case}: exit {result['exit_code']} after {result['run_seconds']:.0f} s", flush=True)
        with (out / "results.jsonl").open("a") as lines:
            lines.write(json.dumps(result) + "\n")
        results.append(result)
    commits = sorted({f"{r['commit']}{' (dirty)' if r['dirty'] else ''}" for r in results})
    print(f"\nraydistill {', '.join(commits)}, {args.steps} DDIM steps, {args.images_per_class} images per class, "
          f"student {args.student}")
    print_table(results)
    print(json.dumps({"builds": builds, "results": results}))


if __name__ == "__main__":
    main()
