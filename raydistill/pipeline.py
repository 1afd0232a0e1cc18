"""Stage order, fingerprints, skip/redo, and the checks that run before Ray starts.

A stage is skipped when its `_SUCCESS.json` holds the fingerprint of its config sections, of the content of the
inputs it reads (data, weights, class order) and of the stages before it; otherwise its folder is cleared and it runs
again, and so does every stage after it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import pyarrow.fs as pafs

from raydistill.config import (
    RunConfig, fingerprint, resolve, to_dict, with_absolute_paths,
)
from raydistill.data import ImageSource, open_source
from raydistill.data.classes import imagenet_indices, prior_labels
from raydistill.data.selection import class_counts, select_per_class
from raydistill.digests import local_digest
from raydistill.errors import UserError
from raydistill.priors import Prior, load_prior, prior_traits
from raydistill.priors.diffusion import AUTOENCODER_FILE, DiffusionPrior, TextDiffusionPrior, require_denoiser
from raydistill.quantize import QUANTIZERS
from raydistill.quantize.kmeans import ALGORITHMS, PROTOTYPE_NORMS
from raydistill.rundir import RunDir, holder_alive
from raydistill.runlog import run_log
from raydistill.stages.context import Context, Inputs, StageOutput
from raydistill.stages.quantize import check_class_sizes
from raydistill.stages.synthesize import DECODERS, img2img_timestep
from raydistill.synthesize.ddim import timestep_grid
from raydistill.train.augment import MIXES
from raydistill.train.loop import LR_SCHEDULES
from raydistill.train.losses import parse_weight_transform
from raydistill.train.models import create_student, load_teacher
from raydistill.weights import is_hub_id, pin_revision

log = logging.getLogger("raydistill")


@dataclass(frozen=True)
class Stage:
    """A pipeline stage: the folder its marker lives in, the config sections its result depends on and the
    `Inputs` fields it reads.

    A `per_variant` stage also writes the same folder under each variant's prefix (baseline/prototypes, ...).
    """

    name: str
    folder: str
    sections: Callable[[RunConfig], tuple]
    per_variant: bool = False
    reads: tuple[str, ...] = ()

    def outputs(self, ctx: Context) -> list[str]:
        if not self.per_variant:
            return [self.folder]
        return [variant.folder(self.folder) for variant in ctx.variants]


STAGES = (
    # Encoding reads the originals at the prior's resolution: the students' size first matters when images are made.
    Stage("encode", "latents", lambda c: (c.data.train, c.data.format, c.data.max_per_class, c.data.subset_seed,
                                          c.prior, (c.encode.t_end, c.encode.steps, c.encode.guidance)
                                          if c.encode.invert else ()), reads=("data", "classes", "prior")),
    # d3hr draws its samples from another random stream on a GPU, so there its GPU count is not a mere resource.
    Stage("quantize", "prototypes", lambda c: (c.seed, c.quantize, c.evaluate.baseline,
                                               c.quantize.method == "d3hr" and c.quantize.gpus_per_task > 0),
          per_variant=True),
    Stage("synthesize", "distilled", lambda c: (c.synthesize, c.data.image_size), per_variant=True),
    Stage("train", "students", lambda c: (c.train,), per_variant=True, reads=("teacher",)),
    Stage("dope", "doped", lambda c: (c.dope,)),
    Stage("reference", "reference", lambda c: (c.evaluate.full_data,)),
    Stage("evaluate", "evaluation", lambda c: (c.data.val, c.evaluate.crop_ratio), reads=("val",)),
    Stage("report", "report", lambda c: ()),
)
STAGE_NAMES = tuple(stage.name for stage in STAGES)


def stage_fingerprints(config: RunConfig, inputs: Inputs) -> dict[str, str]:
    """Each stage's fingerprint chains the one before it, so a changed upstream redoes everything after it.

    `config` is resolved (`resolve`): a default written out and the same value left to its default are one run.
    """
    fingerprints, upstream = {}, ""
    for stage in STAGES:
        upstream = fingerprint(upstream, *stage.sections(config), stage_inputs(stage, inputs))
        fingerprints[stage.name] = upstream
    return fingerprints


def stage_inputs(stage: Stage, inputs: Inputs) -> dict:
    """The `Inputs` a stage reads, as its marker records them."""
    return {name: getattr(inputs, name) for name in stage.reads}


def prior_digest(spec: str) -> str:
    """Content digest of a prior's local weights, with the autoencoder a prior trained here names; its
    checkpoints (train_state/) are left out, since they do not change the prior."""
    arg = spec.partition(":")[2]
    path = Path(arg).expanduser()
    if not arg or not path.exists():
        return ""
    digest = local_digest(path, skip=("train_state",))
    pointer = path / AUTOENCODER_FILE
    if pointer.is_file():
        digest += "+" + prior_digest(json.loads(pointer.read_text())["prior"])
    return digest


def teacher_digest(spec: str | None) -> str:
    """Content digest of a teacher's local weights file; "" for none or timm's own weights."""
    file = (spec or "").partition(":")[2]
    return local_digest(Path(file).expanduser()) if file and not spec.startswith(("hf-hub:", "hf_hub:")) else ""


def pin_prior_revision(config: RunConfig) -> RunConfig:
    """The config with a hub-loaded prior's id pinned to one commit ("dit:owner/name@COMMIT"), so every actor loads
    the same weights and a new upload redoes the run."""
    name, _, arg = config.prior.spec.partition(":")
    if name not in ("dit", "sd", "vae") or not arg or not is_hub_id(arg):
        return config
    return replace(config, prior=replace(config.prior, spec=f"{name}:{pin_revision(arg)}"))


def validate(config: RunConfig) -> RunConfig:
    """Checks names and values that need no data, so a bad config fails before anything is read.

    Returns:
        The config resolved (`config.resolve`) for the prior its spec names.
    """
    if config.quantize.ipc <= 0:
        raise UserError(f"--ipc must be a positive number of images per class, got {config.quantize.ipc}")
    QUANTIZERS.get(config.quantize.method)
    if config.quantize.algorithm not in ALGORITHMS:
        raise UserError(f"quantize.algorithm {config.quantize.algorithm!r} is not valid; use {' or '.join(ALGORITHMS)}")
    if config.quantize.prototype_norm not in PROTOTYPE_NORMS:
        raise UserError(f"quantize.prototype_norm {config.quantize.prototype_norm!r} is not valid; use "
                        f"{' or '.join(PROTOTYPE_NORMS)}")
    for name in ("minibatch_factor", "iterations", "restarts"):
        if getattr(config.quantize, name) < 1:
            raise UserError(f"quantize.{name} must be at least 1, got {getattr(config.quantize, name)}")
    if config.quantize.projected_dims < 0:
        raise UserError("quantize.projected_dims must be 0 (no projection) or more, got "
                        f"{config.quantize.projected_dims}")
    config = resolve(config, *prior_traits(config.prior.spec))
    validate_diffusion(config)
    if config.data.image_size < 8:
        raise UserError(f"data.image_size must be at least 8 pixels, got {config.data.image_size}")
    if config.data.max_per_class is not None and config.data.max_per_class <= 0:
        raise UserError(f"--max-per-class must be positive, got {config.data.max_per_class}")
    if not config.train.students:
        raise UserError("no student to train: pass --student NAME (e.g. convnet3)")
    for student in config.train.students:
        create_student(student, num_classes=2, image_size=config.data.image_size)
    for name, value in (("epochs", config.train.epochs), ("batch_size", config.train.batch_size),
                        ("repeats", config.train.repeats),
                        ("workers", config.train.workers), ("checkpoint_every", config.train.checkpoint_every)):
        if value <= 0:
            raise UserError(f"train.{name} must be positive, got {value}")
    if config.train.checkpoint_seconds < 0:
        raise UserError(f"train.checkpoint_seconds must be 0 or more, got {config.train.checkpoint_seconds}")
    parse_weight_transform(config.train.weight_transform)
    if config.train.lr_schedule not in LR_SCHEDULES:
        raise UserError(f"train.lr_schedule {config.train.lr_schedule!r} is not valid; use one of "
                        f"{', '.join(LR_SCHEDULES)}")
    unknown = sorted(set(config.train.student_lr or {}) - set(config.train.students))
    if unknown:
        raise UserError(f"train.student_lr names students this run does not train: {unknown}; the students are "
                        f"{', '.join(config.train.students)}")
    if config.train.mix not in MIXES:
        raise UserError(f"train.mix {config.train.mix!r} is not valid; use one of {', '.join(MIXES)}")
    if config.train.mix_alpha <= 0:
        raise UserError(f"train.mix_alpha must be positive, got {config.train.mix_alpha}")
    validate_dope(config)
    if not 0 < config.evaluate.crop_ratio <= 1:
        raise UserError(f"evaluate.crop_ratio must be in (0, 1] (ImageNet's is 0.875), got "
                        f"{config.evaluate.crop_ratio}")
    return config


def validate_dope(config: RunConfig) -> None:
    dope = config.dope
    if dope.count < 0:
        raise UserError(f"--dope must be a number of real images to add (0 for none), got {dope.count}")
    if dope.share is not None and not 0 < dope.share < 1:
        raise UserError(f"dope.share must be in (0, 1), or null for the weight of an average image, got {dope.share}")
    if dope.label not in ("true", "teacher"):
        raise UserError(f"dope.label {dope.label!r} is not valid; use true or teacher")
    if dope.label == "teacher" and not config.train.teacher:
        raise UserError("dope.label teacher scores with the teacher's labels, but no teacher is set: pass --teacher, "
                        "or --set dope.label=true")
    if dope.student is not None and dope.student not in config.train.students:
        raise UserError(f"dope.student {dope.student!r} is not trained in this run; pick one of "
                        f"{', '.join(config.train.students)}")


def validate_diffusion(config: RunConfig) -> None:
    """The quantization space, the decoder, the prompt and d3hr's settings of a resolved config, before any data
    is read."""
    try:
        config.prior.prompt.format(name="class")
    except (KeyError, IndexError, ValueError) as e:
        raise UserError(f"prior.prompt {config.prior.prompt!r} is not a valid template ({e!r}): write the class name "
                        f"as {{name}}, e.g. 'a photo of a {{name}}'") from e
    q = config.quantize
    if q.space not in (None, "latent", "noise"):
        raise UserError(f"quantize.space {q.space!r} is not valid; use latent or noise")
    decode = config.synthesize.decode
    if decode not in DECODERS:
        raise UserError(f"synthesize.decode {decode!r} is not valid; use {' or '.join(DECODERS)}")
    if q.space == "noise":
        if not config.encode.invert:
            raise UserError("quantize.space noise needs the inverted latents: drop encode.invert=false")
        if decode == "decoder":
            raise UserError("noise prototypes cannot go straight through the VAE decoder: use --decode ddim "
                            "(sample them back first) or --decode nearest")
    if (q.method == "dsco") != (decode == "dsco"):
        raise UserError("DsCo's sampling starts from the dsco method's noises and nothing else: use --method dsco "
                        "with --decode dsco (its default), or another method with another decoder")
    if decode == "dsco" and q.space != "latent":
        raise UserError("dsco matches the class's latents, not their inversion: drop quantize.space=noise")
    synth = config.synthesize
    if synth.noise_iterations < 0 or synth.noise_lr < 0 or not 0 <= synth.noise_momentum < 1 or synth.sort_weight < 0:
        raise UserError("synthesize.noise_iterations, noise_lr and sort_weight must not be negative and "
                        "synthesize.noise_momentum must be in [0, 1)")
    if not 0 < synth.eta <= 1:
        raise UserError(f"synthesize.eta must be in (0, 1] (0 would inject no noise to optimise), got {synth.eta}")
    if not 0 < config.synthesize.strength <= 1:
        raise UserError(f"synthesize.strength must be in (0, 1], got {config.synthesize.strength}")
    if q.method == "d3hr":
        if q.ipc < 2:
            raise UserError(f"d3hr needs at least 2 images per class to match a spread; got --ipc {q.ipc}")
        if q.candidates < 1:
            raise UserError(f"quantize.candidates must be positive, got {q.candidates}")
        if len(q.score_weights) != 3 or min(q.score_weights) < 0:
            raise UserError(f"quantize.score_weights must be 3 non-negative weights (mean, std, skew), "
                            f"got {list(q.score_weights)}")


def check_prior_for(config: RunConfig, prior: Prior, class_names: list[str]) -> list[int] | None:
    """A run that inverts or samples needs a diffusion prior that knows every class and the configured levels.

    Returns:
        The label a label-conditioned prior is given for each class, where the run conditions one on them.
    """
    conditioned = isinstance(prior, DiffusionPrior) and not isinstance(prior, TextDiffusionPrior)
    if config.prior.class_map is not None and not conditioned:
        raise UserError(f"prior.class_map gives the labels of a label-conditioned prior (dit), but {prior.name!r} "
                        f"{'takes class names as prompts' if isinstance(prior, DiffusionPrior) else 'has no labels'}: "
                        f"drop prior.class_map")
    decode = config.synthesize.decode
    inverting, sampling = config.encode.invert, decode in ("ddim", "dsco")
    if not (inverting or sampling):
        return None
    purpose = "DDIM inversion (quantize.space noise)" if inverting else f"--decode {decode}"
    diffusion = require_denoiser(prior, purpose)
    labels = None
    if conditioned:
        labels = prior_labels(class_names, diffusion.class_names, diffusion.num_classes, prior.name,
                              config.prior.class_map)
    checks = []
    if inverting:
        checks.append(("encode", config.encode.t_end, config.encode.steps, config.encode.guidance))
    if sampling:
        if decode == "dsco":
            t_start = diffusion.train_timesteps - 1
        elif config.quantize.space == "noise":
            t_start = config.encode.t_end
        else:
            t_start = img2img_timestep(config.synthesize.strength, diffusion.train_timesteps)
        checks.append(("synthesize", t_start, config.synthesize.steps, config.synthesize.guidance))
    for section, level, steps, guidance in checks:
        timestep_grid(diffusion.train_timesteps, steps, level)
        if guidance != 1.0 and not diffusion.supports_guidance:
            raise UserError(f"prior {prior.name!r} has no null class for classifier-free guidance: "
                            f"pass --set {section}.guidance=1")
    return labels


def open_validation(config: RunConfig, class_names: list[str]) -> ImageSource | None:
    """`--val-data` (its val split, else the whole of it), or the val/test split beside the training data."""
    if config.data.val is None:
        try:
            return open_source(config.data.train, "val", config.data.format)
        except UserError:
            return None  # the evaluate stage says how to give one
    try:
        source = open_source(config.data.val, "val", config.data.format)
    except UserError:
        source = open_source(config.data.val, "train", config.data.format)
    if source.class_names != class_names:
        raise UserError(
            f"--val-data {config.data.val} has classes {source.class_names[:5]}... but the training data has "
            f"{class_names[:5]}...; give validation data with the same classes"
        )
    return source


def prepare(config: RunConfig) -> Context:
    """Validates and resolves the config, opens the data, counts each class and loads the prior once: all before
    Ray."""
    config = pin_prior_revision(with_absolute_paths(validate(config)))
    rundir = RunDir(config.out)
    rundir.check_writable()
    train_source = open_source(config.data.train, "train", config.data.format)
    val_source = open_validation(config, train_source.class_names)
    if config.data.max_per_class is None:
        keep_ids, counts = None, class_counts(train_source.iter_index())
    else:
        keep_ids, counts = select_per_class(
            train_source.iter_index(), config.data.max_per_class, config.data.subset_seed
        )
    class_names = train_source.class_names
    check_class_sizes(counts, class_names, config.quantize.ipc, config.quantize.allow_fewer)
    teacher_classes = imagenet_indices(class_names)
    if config.train.teacher:
        load_teacher(config.train.teacher, len(class_names), teacher_classes, config.trust_pickles)
    prior = load_prior(config.prior.spec, config.prior.resolution, config.trust_pickles)
    labels = check_prior_for(config, prior, class_names)
    if isinstance(prior, DiffusionPrior):
        prior.use_class_names(class_names, config.prior.prompt, config.prior.negative_prompt, labels)
    inputs = Inputs(
        data=train_source.content_digest(), classes=tuple(class_names), prior=prior_digest(config.prior.spec),
        teacher=teacher_digest(config.train.teacher), val=val_source.content_digest() if val_source else "",
    )
    return Context(
        config=config, rundir=rundir, inputs=inputs, train_source=train_source, val_source=val_source, class_names=class_names,
        class_counts=counts, keep_ids=keep_ids, latent_shape=tuple(prior.latent_shape), resolution=prior.resolution,
        train_timesteps=prior.train_timesteps if isinstance(prior, DiffusionPrior) else None, prior_labels=labels,
        imagenet_classes=teacher_classes,
    )


def run_stage(ctx: Context, stage: Stage, fingerprints: dict[str, str], force: bool = False) -> dict:
    """Runs one stage unless its marker matches; returns the marker."""
    from raydistill.stages import dope, encode, evaluate, quantize, reference, report, synthesize, train

    marker = ctx.rundir.marker(stage.folder)
    if marker and marker["fingerprint"] == fingerprints[stage.name] and not force:
        damaged = ctx.rundir.check(marker.get("files", {}), checksums=False)
        if not damaged:
            log.info("%s: done before (fingerprint %s), skipped", stage.name, marker["fingerprint"])
            return marker
        log.warning("%s: outputs changed since it finished (%s); redoing it", stage.name, "; ".join(damaged[:3]))
    for earlier in STAGES[: STAGES.index(stage)]:
        done = ctx.rundir.marker(earlier.folder)
        if not done or done["fingerprint"] != fingerprints[earlier.name]:
            raise UserError(
                f"stage {stage.name!r} needs stage {earlier.name!r} finished with this config; "
                f"run `raydistill {earlier.name}` first, or `raydistill run` for all stages"
            )
    log.info("%s: running", stage.name)
    start = time.perf_counter()
    runners = {"encode": encode.run, "synthesize": synthesize.run, "evaluate": evaluate.run, "report": report.run}
    if stage.name in ("quantize", "train", "dope", "reference"):  # they resume work recorded under their fingerprint
        resumable = {"quantize": quantize.run, "train": train.run, "dope": dope.run, "reference": reference.run}
        output: StageOutput = resumable[stage.name](ctx, fingerprints[stage.name])
    else:
        output = runners[stage.name](ctx)
    seconds = time.perf_counter() - start
    log.info("%s: %d rows in %.1f s", stage.name, output.rows, seconds)
    files = ctx.rundir.manifest(stage.outputs(ctx))
    return ctx.rundir.write_marker(stage.folder, fingerprints[stage.name], output.rows, seconds, files=files,
                                   inputs=stage_inputs(stage, ctx.inputs), **output.extra)


def verify(run_uri: str) -> dict[str, list[str]]:
    """Checks every finished stage's files against its marker (sizes and checksums).

    Returns:
        Stage name -> problems, for the stages that have a marker; an empty list means intact.

    Raises:
        UserError: the folder holds no finished stage.
    """
    rundir = RunDir(run_uri)
    found = {}
    for stage in STAGES:
        marker = rundir.marker(stage.folder)
        if marker is not None:
            found[stage.name] = (rundir.check(marker["files"]) if "files" in marker
                                 else ["its marker lists no files (written before raydistill recorded them)"])
    if not found:
        raise UserError(f"{run_uri} holds no finished stage; pass the --out folder of a raydistill run")
    return found


def list_runs(folder_uri: str) -> list[dict[str, Any]]:
    """The raydistill runs in `folder_uri` and its direct subfolders (a run is a folder with a config.json): each
    one's method, IPC, whether a live process holds it, each stage's state (done, started: its folder exists without
    a marker, or not started) and the report's top-1 of the method's students and of the random baseline."""
    uri = folder_uri.rstrip("/") if "://" in folder_uri else os.path.abspath(folder_uri)
    fs, root = pafs.FileSystem.from_uri(uri)  # not a RunDir, which would create the folder
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        raise UserError(f"{folder_uri} is not a folder; pass the folder that holds your runs (their --out folders)")
    folders = [(uri, root)] + sorted((f"{uri}/{info.base_name}", info.path)
                                     for info in fs.get_file_info(pafs.FileSelector(root))
                                     if info.type == pafs.FileType.Directory)
    runs = []
    for run_uri, run_root in folders:
        if fs.get_file_info(f"{run_root}/config.json").type != pafs.FileType.File:
            continue
        rundir = RunDir(run_uri)
        config = rundir.read_json("config.json")
        holder = rundir.read_lock()
        report = rundir.read_json("report", "report.json") or {}
        runs.append({
            "run": run_uri, "method": config["quantize"]["method"], "ipc": config["quantize"]["ipc"],
            "running": holder is not None and holder_alive(holder),
            "stages": {stage.name: "done" if rundir.marker(stage.folder) is not None
                       else "started" if rundir.exists(stage.folder) else "-" for stage in STAGES},
            "top1": {variant: {student: scores["top1"] for student, scores in report[variant].items()}
                     for variant in ("students", "baseline") if report.get(variant)},
        })
    return runs


def run(config: RunConfig, only: str | None = None) -> dict:
    """Runs the whole pipeline (or one stage) and returns the report (or that stage's marker).

    Raises:
        UserError: bad config or data, found before Ray starts where possible.
    """
    from raydistill.stages.cluster import connect

    ctx = prepare(config)
    if ctx.val_source is None and only in (None, "evaluate"):
        raise UserError("no validation data: pass --val-data, or put a val/ or test split beside the training data")
    with ctx.rundir.lock(), run_log(ctx.rundir, only or "run"):
        ctx.rundir.write_json(to_dict(ctx.config), "config.json")
        connect(config.ray)
        fingerprints = stage_fingerprints(ctx.config, ctx.inputs)
        if only is not None:
            return run_stage(ctx, next(s for s in STAGES if s.name == only), fingerprints, force=True)
        for stage in STAGES:
            run_stage(ctx, stage, fingerprints)
        return ctx.rundir.read_json("report", "report.json")
