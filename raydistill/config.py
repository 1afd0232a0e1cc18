"""Typed run configuration: one frozen section per stage, YAML in, `--set section.key=value` overrides.

Everything a user can get wrong is checked in `validate` before Ray starts, so a bad config fails in a second.
Fields marked `resource` (actor counts, batch sizes of inference) do not change results and are left out of
the stage fingerprints, so resizing a rerun does not redo finished work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from raydistill.errors import UserError

# What a denoiser outputs, in diffusers' scheduler terms: the noise, the velocity sqrt(a) eps - sqrt(1 - a) x0, or the
# clean latent.
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
# ImageNet's evaluation crop, Resize(256) + CenterCrop(224); students up to SMALL_IMAGE_SIZE px (CIFAR, Tiny-ImageNet)
# are evaluated on the whole image.
IMAGENET_CROP_RATIO = 0.875
SMALL_IMAGE_SIZE = 64


def resource(default: Any) -> Any:
    """A field that sizes the work without changing its result (kept out of fingerprints)."""
    return field(default=default, metadata={"resource": True})


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from.

    Attributes:
        train: "digits" (built in), or a path / pyarrow.fs URI of parquet shards, webdataset tars or an ImageFolder.
        val: validation data; None takes the `val`/`test` split beside `train`.
        format: "auto" or a reader name (parquet, webdataset, imagefolder, digits).
        image_size: side of the square images the students see (short side resized, centre crop).
        max_per_class: keep at most this many training images per class (a seeded, order-independent choice).
        subset_seed: the seed of that choice, apart from the run's seed, so runs with different seeds can share
            one encoded subset.
    """

    train: str = "digits"
    val: str | None = None
    format: str = "auto"
    image_size: int = 32
    max_per_class: int | None = None
    subset_seed: int = 0


@dataclass(frozen=True)
class PriorConfig:
    """The generative prior whose latent space the methods work in.

    Attributes:
        spec: registry name, optionally with an argument: "pixel", "tiny", "taef2:DIR", "vae:DIR_OR_HUB_ID",
            "dit:DIR_OR_HUB_ID", "sd:DIR_OR_HUB_ID", "dit-tiny", "sd-tiny".
        resolution: pixel size the encoder takes; None uses the prior's own default.
        prompt: text-conditioned priors (sd) see each class as this prompt, `{name}` being the class name.
        negative_prompt: their unconditional prompt for classifier-free guidance; None: D4M's.
        class_map: the label a label-conditioned prior (dit) gives each dataset class, by class name; None maps the
            classes by name to the prior's own (ImageNet-1K wnids or names for a released DiT, the training classes
            of a prior trained by `raydistill prior train`).
    """

    spec: str = "pixel"
    resolution: int | None = None
    prompt: str = "{name}"
    negative_prompt: str | None = None
    class_map: dict[str, int] | None = None


@dataclass(frozen=True)
class EncodeConfig:
    """Encoder actor pool, and the DDIM inversion that runs in it right after the VAE.

    Attributes:
        invert: also DDIM-invert each latent to noise level `t_end` (the latents/ `noise` column); None inverts
            when the quantizer works on noise (`quantize.space`).
        t_end: training-schedule timestep the latents are inverted to (D3HR: 600 of 1000).
        steps: steps of the DDIM grid over the whole schedule; inversion takes the grid's steps up to `t_end`.
        guidance: classifier-free guidance scale of the inversion, with the prior's null class; None uses the
            prior's default (4.0 for DiT).
        gpus_per_actor: None means 1 when the cluster has GPUs, else 0.
    """

    invert: bool | None = None
    t_end: int = 600
    steps: int = 50
    guidance: float | None = None
    batch_size: int = resource(64)
    actors: int = resource(1)
    gpus_per_actor: float | None = resource(None)


@dataclass(frozen=True)
class QuantizeConfig:
    """Per-class quantization.

    Attributes:
        method: quantizer name (ddoq, kmeans, d3hr, dsco, random).
        ipc: prototypes (images) per class.
        space: what is quantized: "latent" (the VAE latents) or "noise" (their DDIM inversion, as in D3HR and
            DDOQ-DiT); None: the method's own (`resolve`).
        iterations: k-means iterations at most (lloyd; faiss stops earlier once the cells no longer change).
        restarts: k-means runs per class; the one with the lowest distortion is kept (lloyd).
        projected_dims: where the quantized vectors have more dimensions than this, lloyd seeds and runs in a
            random sketch of them in this many, then lifts the best run's cells to full-space means and finishes
            with 2 full Lloyd passes: 2-4x faster at ImageNet shapes, within 1-3 % of the full space's distortion
            (benchmarks/quantize_speed.py). 0 clusters in the full space throughout.
        algorithm: how ddoq and kmeans find the centroids: "lloyd" (full passes from k-means++ seeds) or
            "minibatch" (D4M's one partial_fit pass of MiniBatchKMeans, the clustering DDOQ reports its weights on).
        minibatch_factor: minibatch's chunk is this many times `ipc` points.
        prototype_norm: "centroid" keeps each ddoq/kmeans centroid as it is; "class_mean" scales it to the mean norm
            of the class's points, for noise-space centroids, which are far shorter than any real noise (the
            weights and nearest images stay those of the centroids).
        candidates: d3hr's number of candidate groups per class (the paper's m).
        score_weights: d3hr's weights of the mean, std and skew terms of a group's score.
        allow_fewer: a class with fewer usable images than `ipc` gets one prototype per image instead of failing
            the run (its images are then all kept, as a random subset would keep them).
        classes_per_task: classes handled by one Ray task (larger amortises task start-up on many small classes).
        gpus_per_task: GPUs each task asks for; d3hr's group search runs on the GPU it gets (a fraction lets tasks
            share one), the other quantizers stay on the CPU. 0 keeps every task on one CPU.
    """

    method: str = "ddoq"
    ipc: int = 10
    space: str | None = None
    iterations: int = 50
    restarts: int = 3
    projected_dims: int = 128
    algorithm: str = "lloyd"
    minibatch_factor: int = 10
    prototype_norm: str = "centroid"
    candidates: int = 1_000_000
    score_weights: tuple[float, ...] = (1.0, 1.0, 0.5)
    allow_fewer: bool = False
    classes_per_task: int = resource(1)
    gpus_per_task: float = resource(0.0)


@dataclass(frozen=True)
class SynthesizeConfig:
    """How prototypes become images.

    Attributes:
        decode: "nearest" uses the real image whose latent is nearest to each prototype (a weighted k-medoid
            coreset); "decoder" runs the prior's decoder on the prototype itself; "ddim" samples the prototype back
            to t = 0 with the prior's denoiser and then decodes it (from noise prototypes directly, from latent
            prototypes after noising them to `strength`, i.e. img2img); "dsco" runs DsCo's optimised sampling chain
            from the `dsco` quantizer's starting noises, one class at a time. None: the method's and prior's own
            (`resolve`).
        steps: steps of the DDIM sampling grid over the whole schedule.
        guidance: classifier-free guidance scale of the sampling; None uses the prior's default.
        strength: img2img noise level of latent prototypes, as a fraction of the schedule (D4M: 0.7).
        noise_iterations, noise_lr, noise_momentum: DsCo's SGD on the injected noise at each step (paper: 200,
            0.1, 0.9).
        sort_weight: weight of DsCo's sort term, per sample, next to its norm term (its release: 5e-4).
        eta: stochasticity of DsCo's sampling chain (1: DDPM-like; its injected noise is what is optimised).
    """

    decode: str | None = None
    steps: int = 50
    guidance: float | None = None
    strength: float = 0.7
    noise_iterations: int = 200
    noise_lr: float = 0.1
    noise_momentum: float = 0.9
    sort_weight: float = 5e-4
    eta: float = 1.0
    batch_size: int = resource(32)
    actors: int = resource(1)
    gpus_per_actor: float | None = resource(None)


@dataclass(frozen=True)
class TrainConfig:
    """Student training on the distilled set (Ray Train).

    Attributes:
        students: student architectures (registry names or any timm model name).
        teacher: soft-label teacher spec ("cifar-resnet56:FILE", "TIMM_NAME[:FILE]"); None trains on hard labels.
        temperature: softmax temperature of the teacher's soft labels.
        min_crop_scale: lower bound of RandomResizedCrop's area scale.
        mix: batch mixing: "cutmix" (the RDED/D3HR protocol), "mixup" or "none"; a mixed sample's weight and
            hard-label loss combine the two images' by the same lambda.
        mix_alpha: lambda ~ Beta(mix_alpha, mix_alpha).
        weight_transform: how prototype weights are tempered for training: "none", "uniform", "power:a", "mix:b";
            None: tempered for ddoq (DDOQ_WEIGHT_TRANSFORM), as they are for the others.
        lr: AdamW's peak learning rate; `student_lr` overrides it per student architecture.
        student_lr: the peak learning rate of each student named here (RDED: mobilenetv2_100 2.5e-3,
            efficientnet_b0 2e-3, Swin 1e-4).
        lr_schedule: "cosine" (to zero) or "half_cosine" (RDED and D3HR: to half the peak).
        weight_decay: AdamW's, on weights only: norm layers and biases are not decayed.
        repeats: students trained per set and architecture, seeded seed, seed + 1, ...; the report gives their mean
            and std (DDOQ averages 5).
        workers: Ray Train workers per student.
        checkpoint_every: epochs between checkpoints (the last epoch is always checkpointed).
        checkpoint_seconds: and at least this many seconds of training between them, so a small set's short epochs
            do not each pay for a checkpoint; a crash loses at most about this much training. 0: every
            `checkpoint_every`-th epoch.
        compile: torch.compile the student and the teacher: it pays back its compile time (13 s for ConvNet-3 on
            a 2-core CPU, then 1.78x the images/s) over a long run; off by default. On CUDA the models and batches
            are channels_last either way.
    """

    students: tuple[str, ...] = ("convnet3",)
    teacher: str | None = None
    epochs: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    student_lr: dict[str, float] | None = None
    lr_schedule: str = "cosine"
    weight_decay: float = 0.01
    temperature: float = 20.0
    min_crop_scale: float = 0.08
    mix: str = "cutmix"
    mix_alpha: float = 1.0
    weight_transform: str | None = None
    repeats: int = 1
    workers: int = resource(1)
    use_gpu: bool | None = resource(None)
    checkpoint_every: int = resource(1)
    checkpoint_seconds: float = resource(60.0)
    compile: bool = resource(False)


@dataclass(frozen=True)
class EvaluateConfig:
    """Evaluation on the validation split.

    Attributes:
        baseline: also train and evaluate a random real subset of the same size with the same protocol.
        full_data: also train hard-label students on every real training image (and, where the students learn
            from a teacher, on the distilled set), so the report gives DD-Ranking's HLR, IOR and LRS. Each worker
            holds the whole training set at `data.image_size`: CIFAR- or ImageNette-sized data, not ImageNet-1K.
        crop_ratio: validation images are resized so their short side is `data.image_size / crop_ratio`, then
            centre-cropped to `data.image_size` (ImageNet's Resize(256) + CenterCrop(224) is 0.875); None: by the
            students' size (`resolve`).
        gpus_per_actor: None means 1 when the cluster has GPUs when the stage starts, else 0; set it on a cluster
            whose GPU workers autoscale from zero (as `encode`, `synthesize` and `train.use_gpu`).
    """

    baseline: bool = True
    full_data: bool = False
    crop_ratio: float | None = None
    batch_size: int = resource(256)
    actors: int = resource(1)
    gpus_per_actor: float | None = resource(None)


@dataclass(frozen=True)
class DopeConfig:
    """DsCo's doping: the real training images that the method's student finds least clear are added to its
    distilled set, and the students are trained again on the result (the `doped` set, evaluated beside the others).

    Attributes:
        count: real images to add (0: no doping), over all classes, or per class with `per_class`.
        per_class: take the `count` lowest-clarity images of each class instead of the lowest over all classes.
        share: the share of a class's training weight its added images take (uniform among them); None: each added
            image weighs as much as an average image of its class.
        label: the label y in the clarity p(y) - max_{c != y} p(c): "true" (the dataset's) or "teacher" (the
            prediction of train.teacher); None: the teacher's where there is one, as DsCo's release scores.
        student: the trained student that scores the images (default: the first of train.students).
    """

    count: int = 0
    per_class: bool = False
    share: float | None = None
    label: str | None = None
    student: str | None = None
    batch_size: int = resource(256)
    actors: int = resource(1)
    gpus_per_actor: float | None = resource(None)


@dataclass(frozen=True)
class RayConfig:
    """Ray connection. `address` None starts a local Ray sized by `num_cpus` and `object_store_mb`."""

    address: str | None = resource(None)
    num_cpus: int | None = resource(None)
    object_store_mb: int = resource(1024)


@dataclass(frozen=True)
class RunConfig:
    """A whole run: the output directory, the seed and one section per stage.

    Attributes:
        recipe: a paper's setting (`list_recipes()`): its keys are the base that the config file and overrides
            change.
        trust_pickles: also load weights stored as pickles (.bin, .pt, .pth), which run any code they hold; by
            default only safetensors are read (raydistill/weights.py).
    """

    recipe: str | None = None
    trust_pickles: bool = False
    out: str = "runs/default"
    seed: int = 0
    data: DataConfig = DataConfig()
    prior: PriorConfig = PriorConfig()
    encode: EncodeConfig = EncodeConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    synthesize: SynthesizeConfig = SynthesizeConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    dope: DopeConfig = DopeConfig()
    ray: RayConfig = RayConfig()


# The kinds of prior `resolve` tells apart: no denoiser, a denoiser conditioned on labels, or on prompts.
PRIOR_KINDS = ("autoencoder", "labels", "prompts")
# D4M's unconditional branch for Stable Diffusion's img2img (its released code's negative prompt).
D4M_NEGATIVE_PROMPT = "cartoon, anime, painting"
# DDOQ tempers its Voronoi masses before training (its Appendix H); power 0.5 was the best tempering measured on
# CIFAR-10 (benchmarks/RESULTS.md, issue 5: 3 seeds at IPC 10 and 50).
DDOQ_WEIGHT_TRANSFORM = "power:0.5"


def resolve(config: RunConfig, prior_kind: str, default_guidance: float | None = None) -> RunConfig:
    """The config with every setting left None filled in from the others, once, for the stages to read as is.

    - quantize.space: "noise" for d3hr (it samples inverted noise), "latent" for the others.
    - encode.invert: whether the quantizer works on noise.
    - synthesize.decode: "dsco" for dsco; "ddim" for noise prototypes and, with a diffusion prior, for latent ones
      (img2img, as DDOQ and D4M decode their centroids); "nearest" for latent prototypes of an autoencoder.
    - encode.guidance, synthesize.guidance: the prior's own (4 for DiT, 8 for Stable Diffusion).
    - prior.negative_prompt: D4M's for a prompt-conditioned prior, "" otherwise.
    - train.weight_transform: DDOQ_WEIGHT_TRANSFORM for ddoq, "none" (the weights as they are) for the others.
    - evaluate.crop_ratio: ImageNet's 0.875 for students over SMALL_IMAGE_SIZE px, else 1 (the whole image).
    - dope.label: "teacher" where train.teacher is set, else "true".

    Args:
        config: the config as the user gave it.
        prior_kind: one of PRIOR_KINDS.
        default_guidance: the prior's guidance scale, where it has a denoiser.
    """
    q, encode, synth = config.quantize, config.encode, config.synthesize
    space = q.space or ("noise" if q.method == "d3hr" else "latent")
    if synth.decode is not None:
        decode = synth.decode
    elif q.method == "dsco":
        decode = "dsco"
    else:
        decode = "ddim" if space == "noise" or prior_kind != "autoencoder" else "nearest"
    negative = config.prior.negative_prompt
    if negative is None:
        negative = D4M_NEGATIVE_PROMPT if prior_kind == "prompts" else ""
    transform = config.train.weight_transform
    if transform is None:
        transform = DDOQ_WEIGHT_TRANSFORM if q.method == "ddoq" else "none"
    crop = config.evaluate.crop_ratio
    if crop is None:
        crop = IMAGENET_CROP_RATIO if config.data.image_size > SMALL_IMAGE_SIZE else 1.0
    return dataclasses.replace(
        config,
        prior=dataclasses.replace(config.prior, negative_prompt=negative),
        quantize=dataclasses.replace(q, space=space),
        encode=dataclasses.replace(encode, invert=space == "noise" if encode.invert is None else encode.invert,
                                   guidance=default_guidance if encode.guidance is None else encode.guidance),
        synthesize=dataclasses.replace(synth, decode=decode,
                                       guidance=default_guidance if synth.guidance is None else synth.guidance),
        train=dataclasses.replace(config.train, weight_transform=transform),
        evaluate=dataclasses.replace(config.evaluate, crop_ratio=crop),
        dope=dataclasses.replace(config.dope,
                                 label=config.dope.label or ("teacher" if config.train.teacher else "true")),
    )


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Converts a YAML value to the field's declared type, or raises a UserError naming the key."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        (inner,) = [a for a in options if a is not type(None)]
        return _coerce(value, inner, where)
    if origin is dict:
        key_type, value_type = typing.get_args(annotation)
        if not isinstance(value, dict):
            raise UserError(f"config key {where!r} expects a mapping, got {value!r}")
        return {_coerce(k, key_type, where): _coerce(v, value_type, where) for k, v in value.items()}
    if origin is tuple:
        (inner, _) = typing.get_args(annotation)
        items = value if isinstance(value, (list, tuple)) else [value]
        return tuple(_coerce(v, inner, where) for v in items)
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise UserError(f"config key {where!r} expects {getattr(annotation, '__name__', annotation)}, got {value!r}")


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise UserError(f"unknown config key {path!r}; valid keys{' in ' + where if where else ''}: {', '.join(names)}")
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, dict):
                raise UserError(f"config key {path!r} is a section; give it a mapping of its keys")
            kwargs[key] = _build(annotation, value, path)
        else:
            kwargs[key] = _coerce(value, annotation, path)
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain YAML-friendly data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> dict[str, Any]:
    """Turns "section.key=value" into a nested dict; the value is parsed as YAML ("10", "null", "[a, b]")."""
    if "=" not in text:
        raise UserError(f"--set {text!r} must look like section.key=value, e.g. --set train.epochs=50")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    nested: dict[str, Any] = value
    for part in reversed(key.strip().split(".")):
        nested = {part: nested}
    return nested


RECIPES = Path(__file__).parent / "recipes"


def list_recipes() -> list[str]:
    """The papers' settings that `recipe` (and `--recipe`) name."""
    return sorted(path.stem for path in RECIPES.glob("*.yaml"))


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{what} {str(path)!r} is not valid YAML: {e}") from e
    if not isinstance(loaded, dict):
        raise UserError(f"{what} {str(path)!r} must hold a mapping of sections (data:, quantize:, ...)")
    return loaded


def load_config(path: str | Path | None = None, overrides: list[dict[str, Any]] = ()) -> RunConfig:
    """Builds a RunConfig from an optional YAML file and nested override dicts, applied in order, on top of the
    recipe either of them names.

    Raises:
        UserError: the file is missing or not a mapping, the recipe is unknown, a key does not exist, or a value
            has the wrong type.
    """
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file {str(path)!r} does not exist; pass --config with a YAML file")
        values = _read_yaml(path, "config file")
    for override in overrides:
        values = _merge(values, override)
    recipe = values.get("recipe")
    if recipe is not None:
        if recipe not in list_recipes():
            raise UserError(f"unknown recipe {recipe!r}; the recipes are {', '.join(list_recipes())}")
        values = _merge(_read_yaml(RECIPES / f"{recipe}.yaml", "recipe"), values)
    return _build(RunConfig, values, "")


def absolute_spec(spec: str | None) -> str | None:
    """Makes the local path in "path" or "name:path" absolute, since Ray workers may run in another folder.

    URIs, hub ids and names that are not existing local paths are returned unchanged.
    """
    if spec is None or "://" in spec:
        return spec
    name, colon, path = spec.partition(":")
    if not colon:
        name, path = "", spec
    if not os.path.exists(path):
        return spec
    return f"{name}{colon}{os.path.abspath(path)}"


def with_absolute_paths(config: RunConfig) -> RunConfig:
    """The config with every local data and weights path made absolute."""
    return dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, train=absolute_spec(config.data.train), val=absolute_spec(config.data.val)),
        prior=dataclasses.replace(config.prior, spec=absolute_spec(config.prior.spec)),
        train=dataclasses.replace(config.train, teacher=absolute_spec(config.train.teacher)),
    )


def fingerprint(*parts: Any) -> str:
    """A short stable hash of config sections (resource fields dropped) and upstream fingerprints."""

    def semantic(part: Any) -> Any:
        if dataclasses.is_dataclass(part):
            return {
                f.name: semantic(getattr(part, f.name))
                for f in dataclasses.fields(part)
                if not f.metadata.get("resource")
            }
        return part

    text = json.dumps([semantic(p) for p in parts], sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PriorTrainSettings:
    """`raydistill prior train`'s settings (its flags; the defaults are the `cifar-cpu` recipe).

    Attributes:
        preset: a DIT_PRESETS name (ignored with `init`).
        init: a `dit:` directory or hub id whose transformer is fine-tuned instead of a fresh one (use a lower
            `lr`, such as 1e-4, there).
        steps: optimiser steps per worker.
        batch_size: latents per step per worker.
        lr, weight_decay: AdamW.
        warmup_steps: the learning rate rises linearly from 0 over these first steps.
        snr_gamma: Min-SNR loss weighting (Hang et al. 2023): each timestep's loss is weighted by
            min(SNR, gamma) / SNR, so the nearly noise-free steps, whose noise is unpredictable, stop drowning out
            the noisy ones that shape the image; 0 gives the plain unweighted loss.
        prediction_type: what the model learns to output: "v_prediction" (the velocity sqrt(a) eps - sqrt(1 - a) x0),
            "epsilon" (the noise) or "sample"; None: v_prediction from scratch, the init prior's own with `init`.
            Velocity suits small models: DDIM's clean estimate from a noise prediction divides its error by sqrt(a),
            which is 0.006 at DiT's last timestep, and a briefly trained model's samples diverge.
        ema_decay: decay of the EMA weights that are written.
        label_dropout: share of labels replaced by the null class (classifier-free guidance).
        holdout: share of images (by a hash of the id) kept out of training for `prior eval`'s loss.
        checkpoint_every: steps between checkpoints (the last step is always checkpointed).
        seed: initialisation and noise.
    """

    preset: str = "cifar-cpu"
    init: str | None = None
    steps: int = 20_000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 500
    snr_gamma: float = 5.0
    prediction_type: str | None = None
    ema_decay: float = 0.999
    label_dropout: float = 0.1
    holdout: float = 0.02
    checkpoint_every: int = 1000
    seed: int = 0

    def check(self, workers: int) -> None:
        """Values a user can get wrong, checked before Ray starts."""
        for name in ("steps", "batch_size", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("warmup_steps", "snr_gamma"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must not be negative, got {getattr(self, name)}")
        if workers <= 0:
            raise UserError(f"--workers must be positive, got {workers}")
        if self.prediction_type not in (None, *PREDICTION_TYPES):
            raise UserError(f"--prediction-type must be one of {', '.join(PREDICTION_TYPES)}, got "
                            f"{self.prediction_type!r}")
        for name in ("ema_decay", "label_dropout", "holdout"):
            if not 0 <= getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)}")
