"""The `raydistill` command: parses flags into a RunConfig and calls the pipeline; nothing else."""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

import click

from raydistill.config import PREDICTION_TYPES, PriorTrainSettings, load_config, parse_override
from raydistill.errors import UserError

# How a UserError ends a traceback that Ray keeps as text.
USER_ERROR_LINE = re.compile(rf"^{re.escape(UserError.__module__)}\.UserError: (.+)$", re.MULTILINE)
# Flag name -> config key; flags left unset do not override the config file.
FLAG_KEYS = {
    "recipe": "recipe",
    "data": "data.train",
    "val_data": "data.val",
    "prior": "prior.spec",
    "method": "quantize.method",
    "ipc": "quantize.ipc",
    "teacher": "train.teacher",
    "student": "train.students",
    "max_per_class": "data.max_per_class",
    "decode": "synthesize.decode",
    "space": "quantize.space",
    "out": "out",
    "seed": "seed",
    "address": "ray.address",
    "dope": "dope.count",
    "trust_pickles": "trust_pickles",
}


def run_options(command):
    """The flags every pipeline command takes."""
    options = [
        click.option("--config", "config_file", type=click.Path(), help="YAML run config."),
        click.option("--recipe", help="A paper's setting as the base of the config (raydistill/recipes/: "
                                      "d3hr-imagenet, ddoq-dit-imagenet, ...)."),
        click.option("--data", help='Training images: "digits", or a path/URI of parquet, webdataset or ImageFolder.'),
        click.option("--val-data", help="Validation images (default: the val/test split beside --data)."),
        click.option("--prior", help='Prior: "pixel", "tiny", "taef2:DIR", "vae:DIR_OR_HUB_ID", "dit:DIR_OR_HUB_ID", '
                                     '"dit-tiny".'),
        click.option("--method", help="Quantizer: ddoq, kmeans (D4M), d3hr or random."),
        click.option("--space", help="Quantize the VAE latents (latent) or their DDIM inversion (noise)."),
        click.option("--ipc", type=int, help="Images per class."),
        click.option("--teacher", help='Soft-label teacher, e.g. "cifar-resnet56:FILE" or a timm name.'),
        click.option("--student", multiple=True, help="Student architecture (repeatable)."),
        click.option("--max-per-class", type=int, help="Use at most this many training images per class."),
        click.option("--decode", help="How prototypes become images: nearest, decoder or ddim."),
        click.option("--out", help="Run directory (local path, s3://, gs://)."),
        click.option("--seed", type=int, help="Seed for every random choice."),
        click.option("--dope", type=int, help="DsCo doping: add this many of the real images the student finds least "
                                              "clear, and train on the result too (dope.* for more)."),
        click.option("--set", "overrides", multiple=True, help="Override any config key: section.key=value."),
        click.option("--address", help="Ray cluster address (default: $RAY_ADDRESS, else start a local Ray)."),
        click.option("--trust-pickles", is_flag=True, default=None,
                     help="Also load pickled weights (.bin, .pt, .pth): only from writers you trust, since loading "
                          "a pickle runs any code it holds."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def build_config(config_file: str | None, overrides: tuple[str, ...], **flags: Any):
    updates = []
    for flag, key in FLAG_KEYS.items():
        value = flags.get(flag)
        if value is None or value == ():
            continue
        nested: Any = list(value) if isinstance(value, tuple) else value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        updates.append(nested)
    updates += [parse_override(text) for text in overrides]
    return load_config(config_file, updates)


def _run(only: str | None, **kwargs: Any) -> None:
    from raydistill import pipeline

    result = pipeline.run(build_config(**kwargs), only=only)
    if only is None:
        click.echo(pipeline_summary(result))
    else:
        click.echo(json.dumps({k: v for k, v in result.items() if k != "versions"}, indent=2))


def pipeline_summary(report: dict) -> str:
    lines = [f"{report['method']} IPC {report['ipc']} on {report['dataset']} (prior {report['prior']})"]
    for student, scores in report["students"].items():
        line = f"  {student}: top-1 {scores['top1']:.2f}"
        if "baseline" in report:
            line += f"  (random real subset {report['baseline'][student]['top1']:.2f})"
        lines.append(line)
    q = report["quantization"]
    lines.append(f"  W2 weighted {q['w2_weighted']:.4f} vs uniform {q['w2_uniform']:.4f} "
                 f"({100 * q['w2_reduction']:.1f} % lower)")
    return "\n".join(lines)


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log each stage's progress.")
def cli(verbose: bool) -> None:
    """Distil a labelled image set into a few weighted images per class, on Ray."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("raydistill").setLevel(logging.INFO)


@cli.command()
@run_options
def run(**kwargs: Any) -> None:
    """Run every stage (skipping those already done with the same config) and print the results."""
    _run(None, **kwargs)


def _stage_command(name: str) -> None:
    def command(**kwargs: Any) -> None:
        _run(name, **kwargs)

    command.__doc__ = f"Run only the {name} stage (the stages before it must be done)."
    cli.command(name=name)(run_options(command))


for _stage in ("encode", "quantize", "synthesize", "train", "dope", "reference", "evaluate", "report"):
    _stage_command(_stage)


@cli.command()
@click.option("--out", "run_dir", required=True, help="The run directory whose distilled/ to export.")
@click.option("--dest", required=True, type=click.Path(), help="Folder to write the ImageFolder tree into.")
def export(run_dir: str, dest: str) -> None:
    """Write distilled/ as an ImageFolder (<class>/<id>.png) plus weights.csv, for other tools."""
    from raydistill.export import export_image_folder

    written = export_image_folder(run_dir, dest)
    click.echo(f"wrote {written} images to {dest}")


@cli.command()
@click.argument("run_dir")
def verify(run_dir: str) -> None:
    """Check every finished stage's files in RUN_DIR against the sizes and checksums in its _SUCCESS.json."""
    from raydistill.pipeline import verify as verify_run

    results = verify_run(run_dir)
    for stage, problems in results.items():
        click.echo(f"{stage}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
        for problem in problems:
            click.echo(f"  {problem}")
    if any(results.values()):
        raise click.exceptions.Exit(1)


@cli.command()
@click.argument("folder", default="runs")
def runs(folder: str) -> None:
    """List the runs in FOLDER (default: runs) and its subfolders: method, IPC, each stage's state, top-1."""
    from raydistill.pipeline import STAGE_NAMES, list_runs

    found = list_runs(folder)
    if not found:
        click.echo(f"no raydistill run in {folder}")
        return
    rows = [["run", "method", "ipc", *STAGE_NAMES, "top-1 distilled / random"]]
    for run in found:
        baseline = run["top1"].get("baseline", {})
        top1 = ", ".join(f"{student} {score:.2f} / " + (f"{baseline[student]:.2f}" if student in baseline else "-")
                         for student, score in run["top1"].get("students", {}).items())
        rows.append([run["run"] + (" (running)" if run["running"] else ""), run["method"], str(run["ipc"]),
                     *(run["stages"][stage] for stage in STAGE_NAMES), top1 or "-"])
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


@cli.group()
def prior() -> None:
    """Train a class-conditional DiT prior on a run's latents, or measure one."""


PRIOR_TRAIN = PriorTrainSettings()


@prior.command("train")
@click.option("--latents", required=True, help="RUN_DIR/latents of a run whose encode finished.")
@click.option("--out", required=True, help="Prior directory to write (loads as --prior dit:OUT); reruns resume.")
@click.option("--init", help="Fine-tune this DiT (a dit: directory or hub id) instead of training from scratch; "
                             "lower --lr to about 1e-4 for it.")
@click.option("--preset", default=PRIOR_TRAIN.preset, show_default=True,
              help="Model size: tiny, cifar-cpu, dit-s, dit-b, dit-xl.")
@click.option("--steps", type=int, default=PRIOR_TRAIN.steps, show_default=True, help="Optimiser steps per worker.")
@click.option("--batch-size", type=int, default=PRIOR_TRAIN.batch_size, show_default=True,
              help="Latents per step per worker.")
@click.option("--lr", type=float, default=PRIOR_TRAIN.lr, show_default=True)
@click.option("--warmup-steps", type=int, default=PRIOR_TRAIN.warmup_steps, show_default=True,
              help="Steps over which the learning rate rises linearly from 0.")
@click.option("--snr-gamma", type=float, default=PRIOR_TRAIN.snr_gamma, show_default=True,
              help="Min-SNR loss weighting (min(SNR, gamma) on the clean-latent error); 0 for the plain loss.")
@click.option("--prediction-type", type=click.Choice(PREDICTION_TYPES),
              help="What the model outputs [default: v_prediction from scratch, the --init prior's own otherwise].")
@click.option("--ema-decay", type=float, default=PRIOR_TRAIN.ema_decay, show_default=True)
@click.option("--label-dropout", type=float, default=PRIOR_TRAIN.label_dropout, show_default=True,
              help="Share of labels replaced by the null class, for classifier-free guidance.")
@click.option("--holdout", type=float, default=PRIOR_TRAIN.holdout, show_default=True,
              help="Share of images kept out of training for `prior eval`.")
@click.option("--checkpoint-every", type=int, default=PRIOR_TRAIN.checkpoint_every, show_default=True)
@click.option("--workers", type=int, default=1, show_default=True, help="Ray Train workers.")
@click.option("--seed", type=int, default=PRIOR_TRAIN.seed, show_default=True)
@click.option("--address", help="Ray cluster address (default: $RAY_ADDRESS, else start a local Ray).")
def prior_train(latents: str, out: str, workers: int, address: str | None, **settings: Any) -> None:
    """Train (or fine-tune) a class-conditional latent DiT with Ray Train; write a dit:DIR prior."""
    from raydistill.stages.prior_train import train_prior

    prior_settings = PriorTrainSettings(**settings)
    prior_settings.check(workers)
    info = train_prior(latents, out, prior_settings, workers=workers, address=address)
    click.echo(f"trained {info['steps']} steps (resumed from {info['resumed_from_step']}), "
               f"loss {info['final_loss']:.4f}, {info['seconds']:.0f} s; load it with --prior dit:{out}")


@prior.command("eval")
@click.argument("directory")
@click.option("--teacher", required=True, help='Classifier of the classes, e.g. "cifar-resnet56:FILE".')
@click.option("--samples-per-class", type=int, default=20, show_default=True)
@click.option("--steps", type=int, default=50, show_default=True, help="DDIM steps over the schedule.")
@click.option("--guidance", type=float, default=4.0, show_default=True)
@click.option("--image-size", type=int, default=32, show_default=True, help="Side the teacher sees.")
@click.option("--seed", type=int, default=0, show_default=True)
def prior_eval(directory: str, teacher: str, samples_per_class: int, steps: int, guidance: float, image_size: int,
               seed: int) -> None:
    """Teacher top-1 on class-conditional samples of a trained prior, and its denoising loss on held-out latents."""
    from raydistill.priors.evaluation import evaluate_prior

    result = evaluate_prior(directory, teacher, samples_per_class, steps, guidance, image_size, seed)
    click.echo(json.dumps(result, indent=2))


def main() -> None:
    """Entry point: user errors print one line and exit 2, without a traceback."""
    try:
        code = cli(standalone_mode=False)  # a command's Exit(code) comes back here as its return value
        if isinstance(code, int) and code:
            sys.exit(code)
    except click.exceptions.Abort:
        sys.exit(1)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except Exception as e:  # noqa: BLE001 - only to unwrap user errors raised inside Ray workers
        cause = user_error_cause(e)
        if cause is None:
            raise
        click.echo(f"error: {cause}", err=True)
        sys.exit(2)


def user_error_cause(error: BaseException) -> UserError | None:
    """The innermost UserError behind an exception, also when Ray wrapped it (RayTaskError keeps a `cause`; an
    actor that died in its constructor keeps only the traceback's text, whose last UserError line is taken)."""
    found, seen, outer = None, set(), error
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, UserError):
            found = error
        # Ray Train keeps each worker's exception by rank.
        failures = list(getattr(error, "worker_failures", {}).values())
        error = getattr(error, "cause", None) or error.__cause__ or (failures[0] if failures else None)
    if found is None:
        lines = USER_ERROR_LINE.findall(str(outer))
        found = UserError(lines[-1]) if lines else None
    return found
