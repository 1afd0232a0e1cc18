"""Diffusion priors: a VAE plus a class-conditional denoiser and the noise schedule it was trained with.

`dit:DIR_OR_HUB_ID` loads the `facebook/DiT-XL-2-256` layout (transformer/, vae/, scheduler/); any diffusers denoiser
called as `model(x, t, class_labels=y).sample` works the same way. `sd:DIR_OR_HUB_ID` loads a Stable Diffusion 1.x
layout and conditions on class names as prompts. `dit-tiny` and `sd-tiny` are small random ones for tests.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from raydistill.config import PREDICTION_TYPES
from raydistill.data.classes import IMAGENET_CLASSES, display_name, imagenet_class_names
from raydistill.errors import UserError
from raydistill.priors.autoencoders import (
    TINY_RESOLUTION, DiffusersVAEPrior, load_vae, tiny_autoencoder, vae_downsample,
)
from raydistill.priors.base import PRIORS, Prior, denoises, load_prior
from raydistill.weights import from_pretrained, load_config, split_revision

# A prior trained by `raydistill prior train` names its autoencoder here instead of holding a vae/ folder.
AUTOENCODER_FILE = "autoencoder.json"
# ... and records what it was trained on, its classes among them.
TRAINING_INFO_FILE = "training.json"
# DiT's training schedule, as diffusers scheduler arguments.
DIT_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"}
# Classifier-free guidance scales: D3HR's and DsCo's for DiT, D4M's img2img for Stable Diffusion.
DIT_GUIDANCE = 4.0
SD_GUIDANCE = 8.0
_SD_HINT = ("pass sd:DIR with a local directory laid out as stable-diffusion-v1-5 (vae/, unet/, text_encoder/, "
            "tokenizer/, scheduler/), or sd:HUB_ID")
_DIT_HINT = ("pass dit:DIR with a local directory laid out as facebook/DiT-XL-2-256 (transformer/, vae/, scheduler/), "
             "or dit:HUB_ID")


class DiffusionPrior(Prior):
    """An autoencoder prior with a class-conditional noise-prediction model on its latents.

    Attributes:
        autoencoder: the prior that maps images to latents and back (a diffusers VAE, or any other prior).
        latent_scale: factor applied to the autoencoder's latents before the denoiser sees them (1 for a diffusers
            VAE, whose config already scales them; 1 / RMS for priors trained here on another autoencoder).
        denoiser: predicts the noise in a latent at a timestep, given class labels.
        alphas_cumprod: (T,) float64 cumulative products of 1 - beta of the training schedule (kept in float64 and
            off the module's dtype, since DDIM steps need it exact even when the model runs in bf16).
        num_classes: labels the denoiser knows, 0 .. num_classes - 1.
        null_class: the label that means "no class" for classifier-free guidance, or None where the model has none.
        default_guidance: guidance scale used where the config leaves it unset.
        prediction_type: what the denoiser outputs (a PREDICTION_TYPES name, from its scheduler config);
            `predict_noise` turns any of them into a noise estimate.
        class_names: what each of the denoiser's labels is (ImageNet-1K wnids for a released DiT, the training
            classes of a prior trained here), or None where nothing says.
        label_map: (K,) the denoiser's label for each dataset label, once `use_class_names` was given one; empty
            means labels are the denoiser's own.
    """

    def __init__(self, autoencoder: Prior, denoiser: nn.Module, alphas_cumprod: np.ndarray, name: str,
                 default_guidance: float = DIT_GUIDANCE, latent_scale: float = 1.0,
                 prediction_type: str = "epsilon", class_names: list[str] | None = None):
        super().__init__(name, autoencoder.resolution, autoencoder.downsample, autoencoder.latent_shape[0])
        if prediction_type not in PREDICTION_TYPES:
            raise UserError(f"prior {name!r}: its scheduler's prediction_type {prediction_type!r} is not one of "
                            f"{', '.join(PREDICTION_TYPES)}: fix scheduler/scheduler_config.json")
        self.prediction_type = prediction_type
        self.autoencoder = autoencoder
        self.latent_scale = latent_scale
        self.denoiser = denoiser.eval().requires_grad_(False)
        self.alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
        self.num_classes, self.null_class = class_slots(denoiser)
        if class_names is not None and len(class_names) != self.num_classes:
            raise UserError(f"prior {name!r} names {len(class_names)} classes but its denoiser has {self.num_classes} "
                            f"labels: fix its class list")
        self.class_names = class_names
        self.register_buffer("label_map", torch.empty(0, dtype=torch.long), persistent=False)
        self.default_guidance = default_guidance
        side = getattr(denoiser.config, "sample_size", None)
        if side is not None and side != self.latent_shape[1]:
            raise UserError(
                f"prior {name!r}: its denoiser works on {side}x{side} latents, which the VAE gives at "
                f"{side * self.downsample} px, not {self.resolution}: pass --set prior.resolution="
                f"{side * self.downsample}"
            )

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.autoencoder._encode(images) * self.latent_scale

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.autoencoder._decode(latents / self.latent_scale)

    @property
    def train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    @property
    def supports_guidance(self) -> bool:
        return self.null_class is not None

    def use_class_names(self, class_names: list[str], prompt: str, negative_prompt: str,
                        prior_labels: list[int] | None = None) -> None:
        """Tells the prior the dataset's classes: a label-conditioned model is given `prior_labels[label]` for a
        dataset label (`raydistill.data.classes.prior_labels` resolves them); without them, labels are its own."""
        if prior_labels is not None:
            self.label_map = torch.tensor(prior_labels, dtype=torch.long, device=self.device)

    @property
    def known_labels(self) -> int:
        """How many labels `predict_noise` takes: the dataset's classes once mapped, else the denoiser's."""
        return len(self.label_map) if len(self.label_map) else self.num_classes

    def conditions(self, labels: torch.Tensor, unconditional: bool) -> dict[str, torch.Tensor]:
        """The denoiser's conditioning keyword arguments for a batch of labels, or for "no class"."""
        if unconditional:
            return {"class_labels": torch.full_like(labels, self.null_class)}
        return {"class_labels": self.label_map[labels] if len(self.label_map) else labels}

    def predict_noise(self, latents: torch.Tensor, timestep: int, labels: torch.Tensor,
                      guidance: float) -> torch.Tensor:
        """The denoiser's noise estimate, with classifier-free guidance when `guidance` is not 1.

        Args:
            latents: (N, *latent_shape) noisy latents, any dtype (the model runs in the prior's dtype).
            timestep: training-schedule timestep of the noise level, 0 .. train_timesteps - 1.
            labels: (N,) class labels in 0 .. num_classes - 1.
            guidance: eps_uncond + guidance * (eps_cond - eps_uncond); 1 is plain conditional prediction.

        Returns:
            (N, *latent_shape) float32 noise estimate on the prior's device.

        Raises:
            UserError: If a label is outside the prior's classes, or guidance is asked of a model with no null class.
        """
        labels = labels.to(self.device, torch.long)
        check_labels(self, labels)
        x = latents.to(self.device, self.dtype)
        conditions = self.conditions(labels, unconditional=False)
        if guidance != 1.0:
            if not self.supports_guidance:
                raise UserError(f"prior {self.name!r} has no null class for classifier-free guidance: "
                                f"set the guidance to 1 (e.g. --set encode.guidance=1 --set synthesize.guidance=1)")
            x = torch.cat([x, x])
            no_class = self.conditions(labels, unconditional=True)
            conditions = {key: torch.cat([value, no_class[key]]) for key, value in conditions.items()}
        timesteps = torch.full((len(x),), timestep, device=self.device, dtype=torch.long)
        # Models that also learn the variance (DiT-XL/2) return 2C channels; the first C are the prediction.
        output = self.denoiser(x, timesteps, **conditions).sample[:, : self.latent_shape[0]].float()
        if guidance != 1.0:  # guidance is linear in the output, so it can be applied before the conversion
            conditional, unconditional = output.chunk(2)
            output = unconditional + guidance * (conditional - unconditional)
        return noise_from_output(output, latents.to(self.device, torch.float32), float(self.alphas_cumprod[timestep]),
                                 self.prediction_type)


def noise_from_output(output: torch.Tensor, noisy: torch.Tensor, alpha: float, prediction_type: str) -> torch.Tensor:
    """The noise estimate implied by a denoiser's `output` for the latent `noisy` = sqrt(a) x0 + sqrt(1 - a) eps."""
    if prediction_type == "v_prediction":
        return alpha**0.5 * output + (1 - alpha) ** 0.5 * noisy
    if prediction_type == "sample":
        return (noisy - alpha**0.5 * output) / (1 - alpha) ** 0.5
    return output


class TextDiffusionPrior(DiffusionPrior):
    """A text-conditioned latent diffusion model (Stable Diffusion 1.x layout) used class-conditionally.

    Each class is the prompt `prompt.format(name=class_name)`; the unconditional branch of guidance is the negative
    prompt. The prompt embeddings are computed once by `use_class_names` and move with the module.
    """

    def __init__(self, autoencoder: Prior, denoiser: nn.Module, text_encoder: nn.Module, tokenizer,
                 alphas_cumprod: np.ndarray, name: str, prediction_type: str = "epsilon"):
        super().__init__(autoencoder, denoiser, alphas_cumprod, name, default_guidance=SD_GUIDANCE,
                         prediction_type=prediction_type)
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.register_buffer("class_embeddings", torch.empty(0), persistent=False)
        self.register_buffer("null_embedding", torch.empty(0), persistent=False)

    @property
    def supports_guidance(self) -> bool:
        return True

    def use_class_names(self, class_names: list[str], prompt: str, negative_prompt: str,
                        prior_labels: list[int] | None = None) -> None:
        """Embeds each class's prompt; a wnid is written as its ImageNet name ("a photo of a tench")."""
        self.class_embeddings = self.embed([prompt.format(name=display_name(name)) for name in class_names])
        self.null_embedding = self.embed([negative_prompt])
        self.num_classes = len(class_names)

    def embed(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt").input_ids.to(self.device)
        with torch.inference_mode():
            return self.text_encoder(tokens)[0].to(self.dtype)

    def conditions(self, labels: torch.Tensor, unconditional: bool) -> dict[str, torch.Tensor]:
        if unconditional:
            return {"encoder_hidden_states": self.null_embedding.expand(len(labels), -1, -1)}
        return {"encoder_hidden_states": self.class_embeddings[labels]}


def check_labels(prior: DiffusionPrior, labels: torch.Tensor) -> None:
    """Labels must be classes the prior was told of, or its denoiser was trained on."""
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= prior.known_labels):
        raise UserError(f"label {int(labels.max())} is outside prior {prior.name!r}'s classes "
                        f"0..{prior.known_labels - 1}: use a prior trained on this dataset's classes")


def require_denoiser(prior: Prior, purpose: str) -> DiffusionPrior:
    """Returns the prior if it can invert and sample, else raises a UserError naming what needs it."""
    if not isinstance(prior, DiffusionPrior):
        raise UserError(f"{purpose} needs a diffusion prior, but {prior.name!r} is an autoencoder only: pass "
                        f"--prior dit:DIR (or dit-tiny to try it), or cluster latents with --space latent")
    return prior


def class_slots(denoiser: nn.Module) -> tuple[int, int | None]:
    """(number of classes, null class) of a class-conditional diffusers model, from its config; text-conditioned
    models know no classes until `use_class_names`."""
    config = denoiser.config
    if config.get("cross_attention_dim") and not config.get("num_class_embeds"):
        return 0, None
    if config.get("num_embeds_ada_norm"):
        # DiT's label embedding always has one extra row, the null class used for guidance.
        return int(config.num_embeds_ada_norm), int(config.num_embeds_ada_norm)
    if config.get("num_class_embeds"):
        return int(config.num_class_embeds), None
    raise UserError(f"the denoiser {type(denoiser).__name__} is not class-conditional (its config has neither "
                    f"num_embeds_ada_norm nor num_class_embeds): {_DIT_HINT}")


def schedule_of(scheduler_source: str, subfolder: str | None) -> tuple[np.ndarray, str]:
    """The training noise schedule (alphas_cumprod) and prediction type from a diffusers scheduler config (any
    scheduler class; betas are shared)."""
    from diffusers import DDIMScheduler

    config = load_config(DDIMScheduler, scheduler_source, subfolder)
    alphas = DDIMScheduler.from_config(config).alphas_cumprod.double().numpy()
    return alphas, config.get("prediction_type", "epsilon")


def _pipeline_source(arg: str, model_folder: str, hint: str) -> tuple[str, bool]:
    """(path or hub id, is local) of a diffusers pipeline layout, failing fast on a local directory without it."""
    path = Path(arg).expanduser()
    if path.is_dir():
        missing = [f"{sub}/config.json" for sub in (model_folder, "vae") if not (path / sub / "config.json").is_file()
                   and not (sub == "vae" and (path / AUTOENCODER_FILE).is_file())]
        if not (path / "scheduler" / "scheduler_config.json").is_file():
            missing.append("scheduler/scheduler_config.json")
        if missing:
            raise UserError(f"directory {path} lacks {', '.join(missing)}: {hint}")
        return str(path), True
    if path.exists() or arg.startswith(("/", ".", "~")) or arg.count("/") > 1:
        raise UserError(f"directory {path} does not exist: {hint}")
    return arg, False


def _load_denoiser(source: str, subfolder: str, hint: str) -> nn.Module:
    import diffusers

    try:
        config = load_config(diffusers.DiTTransformer2DModel, source, subfolder)
    except (OSError, ValueError) as e:
        raise UserError(f"could not read the denoiser config of {source!r} ({e}): {hint}") from e
    class_name = config.get("_class_name", "")
    cls = getattr(diffusers, class_name, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise UserError(f"{source!r}: {subfolder}/ holds a {class_name or 'model'} that diffusers does not have: "
                        f"{hint}")
    try:
        return from_pretrained(cls, source, subfolder).float()
    except UserError:
        raise
    except Exception as e:  # diffusers raises many types for bad weights; all mean the same to the user
        raise UserError(f"could not load the {class_name} weights from {source!r} ({e}): {hint}") from e


def _load_schedule(source: str, hint: str) -> tuple[np.ndarray, str]:
    try:
        return schedule_of(source, "scheduler")
    except (OSError, ValueError) as e:
        raise UserError(f"could not read the scheduler config of {source!r} ({e}): {hint}") from e


@PRIORS.register("dit")
@denoises("labels", DIT_GUIDANCE)
def dit(arg: str | None, resolution: int | None) -> Prior:
    """Class-conditional latent DiT (or any diffusers class-conditional denoiser) with its VAE and scheduler."""
    if not arg:
        raise UserError(f"prior 'dit' needs a model: {_DIT_HINT}")
    source, local = _pipeline_source(arg, "transformer", _DIT_HINT)
    if local and (Path(source) / AUTOENCODER_FILE).is_file() and not (Path(source) / TRAINING_INFO_FILE).is_file():
        raise UserError(f"prior folder {source} has no {TRAINING_INFO_FILE}: `raydistill prior train` stopped while "
                        f"writing it; rerun that command to finish it")
    denoiser = _load_denoiser(source, "transformer", _DIT_HINT)
    alphas, prediction_type = _load_schedule(source, _DIT_HINT)
    pointer = Path(source) / AUTOENCODER_FILE
    if local and pointer.is_file():  # trained by `raydistill prior train` on another prior's latents
        settings = json.loads(pointer.read_text())
        autoencoder = load_prior(settings["prior"], settings.get("resolution") if resolution is None else resolution)
        return DiffusionPrior(autoencoder, denoiser, alphas, "dit", latent_scale=settings["latent_scale"],
                              prediction_type=prediction_type, class_names=trained_class_names(Path(source)))
    vae = load_vae(str(Path(source) / "vae") if local else source)
    default_resolution = denoiser.config.sample_size * vae_downsample(vae)
    # A released DiT's 1,000 labels are ImageNet-1K's classes in their standard order.
    released_classes = imagenet_class_names() if class_slots(denoiser)[0] == IMAGENET_CLASSES else None
    return DiffusionPrior(DiffusersVAEPrior(vae, "vae", default_resolution if resolution is None else resolution),
                          denoiser, alphas, "dit", prediction_type=prediction_type, class_names=released_classes)


def trained_class_names(directory: Path) -> list[str] | None:
    """The classes a prior trained by `raydistill prior train` learnt, from its training.json."""
    info_file = directory / TRAINING_INFO_FILE
    if not info_file.is_file():
        return None
    try:
        names = json.loads(info_file.read_text()).get("class_names")
    except (OSError, ValueError, AttributeError) as e:
        raise UserError(f"cannot read {info_file} ({e}): fix it or remove it and pass prior.class_map") from e
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise UserError(f"{info_file} has no list of class-name strings under 'class_names': fix it, or remove it "
                        f"and pass prior.class_map")
    return names


@PRIORS.register("sd")
@denoises("prompts", SD_GUIDANCE)
def sd(arg: str | None, resolution: int | None) -> Prior:
    """Stable Diffusion 1.x layout (vae/, unet/, text_encoder/, tokenizer/, scheduler/), class names as prompts."""
    from transformers import AutoTokenizer, CLIPTextModel

    if not arg:
        raise UserError(f"prior 'sd' needs a model: {_SD_HINT}")
    source, local = _pipeline_source(arg, "unet", _SD_HINT)
    denoiser = _load_denoiser(source, "unet", _SD_HINT)
    vae = load_vae(str(Path(source) / "vae") if local else source)
    try:
        text_encoder = from_pretrained(CLIPTextModel, source, "text_encoder").float()
        repository, revision = split_revision(source)  # a tokenizer is text files, never a pickle
        tokenizer = AutoTokenizer.from_pretrained(repository, subfolder="tokenizer", revision=revision)
    except (OSError, ValueError) as e:
        raise UserError(f"could not load the text encoder or tokenizer of {source!r} ({e}): {_SD_HINT}") from e
    default_resolution = denoiser.config.sample_size * vae_downsample(vae)
    autoencoder = DiffusersVAEPrior(vae, "vae", default_resolution if resolution is None else resolution)
    alphas, prediction_type = _load_schedule(source, _SD_HINT)
    return TextDiffusionPrior(autoencoder, denoiser, text_encoder, tokenizer, alphas, "sd", prediction_type)


def tiny_dit(num_classes: int = 1000, latent_side: int = TINY_RESOLUTION // 2) -> nn.Module:
    """A 2-layer DiT on the tiny VAE's 4-channel latents, seeded, with its zero-initialised layers perturbed.

    diffusers zero-initialises DiT's adaLN modulation and output layers, so a fresh model predicts exactly zero
    noise and makes DDIM inversion trivially exact; small random values there give it a real, label-dependent output.
    """
    from diffusers import DiTTransformer2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = DiTTransformer2DModel(
            num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2,
            sample_size=latent_side, patch_size=2, num_embeds_ada_norm=num_classes,
        )
        perturb_zero_parameters(model)
    return model


@torch.no_grad()
def perturb_zero_parameters(model: nn.Module, std: float = 0.02) -> None:
    """Gives the all-zero parameters of a freshly built model small random values (from the global RNG), so that a
    random DiT is not the trivial zero-noise predictor."""
    for parameter in model.parameters():
        if not parameter.any():
            parameter.normal_(0.0, std)


def linear_schedule(train_timesteps: int = DIT_SCHEDULE["num_train_timesteps"]) -> np.ndarray:
    """alphas_cumprod of DiT's training schedule: betas linear from 1e-4 to 0.02."""
    betas = np.linspace(DIT_SCHEDULE["beta_start"], DIT_SCHEDULE["beta_end"], train_timesteps, dtype=np.float64)
    return np.cumprod(1.0 - betas)


@PRIORS.register("dit-tiny")
@denoises("labels", DIT_GUIDANCE)
def dit_tiny(arg: str | None, resolution: int | None) -> Prior:
    """The tiny VAE with a small random DiT over 1000 classes and DiT's linear schedule, for tests."""
    if arg is not None:
        raise UserError(f"prior 'dit-tiny' takes no argument; got dit-tiny:{arg}: pass just 'dit-tiny'")
    resolution = TINY_RESOLUTION if resolution is None else resolution
    # Its labels mean nothing, so they are named by number: a data set of classes "0", "1", ... maps onto them.
    return DiffusionPrior(DiffusersVAEPrior(tiny_autoencoder(), "tiny", resolution),
                          tiny_dit(latent_side=resolution // 2), linear_schedule(), "dit-tiny",
                          class_names=[str(i) for i in range(IMAGENET_CLASSES)])


def tiny_clip(directory: Path) -> tuple[nn.Module, object]:
    """A small random CLIP text encoder and a byte-level CLIP tokenizer with no merges (written to `directory`)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    # CLIP's byte-to-character table: printable bytes map to themselves, the rest to code points from 256 up.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(tokens)}))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokens), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=16, bos_token_id=len(tokens) - 2, eos_token_id=len(tokens) - 1,
        ))
    return encoder, tokenizer


def tiny_unet(latent_side: int) -> nn.Module:
    """A small random text-conditioned UNet on the tiny VAE's latents (cross-attention width 32)."""
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return UNet2DConditionModel(
            sample_size=latent_side, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
        )


def scaled_linear_schedule(train_timesteps: int = 1000) -> np.ndarray:
    """Stable Diffusion's training schedule: sqrt(beta) linear from sqrt(0.00085) to sqrt(0.012)."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, train_timesteps, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


@PRIORS.register("sd-tiny")
@denoises("prompts", SD_GUIDANCE)
def sd_tiny(arg: str | None, resolution: int | None) -> Prior:
    """The tiny VAE with a small random text-conditioned UNet, CLIP text encoder and SD's schedule, for tests."""
    if arg is not None:
        raise UserError(f"prior 'sd-tiny' takes no argument; got sd-tiny:{arg}: pass just 'sd-tiny'")
    resolution = TINY_RESOLUTION if resolution is None else resolution
    with tempfile.TemporaryDirectory() as folder:
        encoder, tokenizer = tiny_clip(Path(folder))
    return TextDiffusionPrior(DiffusersVAEPrior(tiny_autoencoder(), "tiny", resolution), tiny_unet(resolution // 2),
                              encoder, tokenizer, scaled_linear_schedule(), "sd-tiny")
