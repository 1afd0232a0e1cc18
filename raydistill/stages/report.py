"""report: report/report.json, report.md, index.html (self-contained) and grid.png from the earlier stages' output."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from raydistill.config import to_dict
from raydistill.html_report import GalleryClass, Tile, render, score_cell
from raydistill.imaging import png_decode
from raydistill.ranking import label_robust_scores
from raydistill.rundir import RunDir
from raydistill.stages.context import Context, StageOutput

GRID_CLASSES = 20
GRID_IMAGES = 10
GRID_CELL = 48
GRID_LABEL = 120  # px of class name left of each grid row
DDOQ_W2_REDUCTION = "DDOQ reports 16-20 % on ImageNet latents"


def class_images(rundir: RunDir, folder: str, labels: list[int]) -> dict[int, list[dict]]:
    """The first GRID_IMAGES images (by prototype) of each of these classes, read without loading the others."""
    files = rundir.files(folder, suffix=".parquet")
    if not files:
        return {}
    dataset = pads.dataset(files, filesystem=rundir.fs, format="parquet")
    wanted = pc.field("label").isin(labels) & (pc.field("prototype") < GRID_IMAGES)
    rows = dataset.to_table(columns=["label", "prototype", "image", "weight"], filter=wanted).to_pylist()
    by_class: dict[int, list[dict]] = {}
    for row in sorted(rows, key=lambda r: (r["label"], r["prototype"])):
        by_class.setdefault(row["label"], []).append(row)
    return by_class


def grid_png(distilled: dict[int, list[dict]], names: list[str]) -> bytes:
    """The gallery's distilled images, one row per class named on its left, upscaled to be visible."""
    labels = sorted(distilled)
    canvas = Image.new("RGB", (GRID_LABEL + GRID_IMAGES * GRID_CELL, len(labels) * GRID_CELL), "white")
    draw = ImageDraw.Draw(canvas)
    for y, label in enumerate(labels):
        draw.text((4, y * GRID_CELL + GRID_CELL // 2 - 6), names[label][:20], fill="black")
        for x, row in enumerate(distilled[label]):
            tile = Image.fromarray(png_decode(row["image"])).resize((GRID_CELL, GRID_CELL), Image.NEAREST)
            canvas.paste(tile, (GRID_LABEL + x * GRID_CELL, y * GRID_CELL))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def uses_voronoi_weights(rundir: RunDir) -> bool:
    """Whether the method's prototypes carry their Voronoi masses as weights (DDOQ) rather than uniform ones."""
    table = pq.read_table(rundir.files("prototypes", suffix=".parquet"), filesystem=rundir.fs,
                          columns=["label", "weight", "count"])
    labels, weights, counts = (table.column(c).to_numpy() for c in ("label", "weight", "count"))
    for label in np.unique(labels):
        mine = labels == label
        if not np.allclose(weights[mine], counts[mine] / max(counts[mine].sum(), 1)):
            return False
    return True


def set_names(report: dict) -> list[tuple[str, str]]:
    """The report's result keys in table order, with the row label each set gets."""
    doped = report.get("doping", {}).get("added_images")
    return [("students", "distilled"), ("baseline", "random real (baseline)"),
            ("doped", f"distilled + {doped} least clear real (doped)"),
            ("hard_labels", "distilled, hard labels (DD-Ranking)"),
            ("full_data", "every real training image, hard labels (DD-Ranking)")]


def ranking_section(report: dict) -> list[str]:
    """DD-Ranking's numbers per student, where the run trained its full-data students (`evaluate.full_data`)."""
    lines = []
    for student, scores in report.get("label_robustness", {}).items():
        parts = [f"HLR {scores['hlr']['mean']:.2f} ± {scores['hlr']['std']:.2f}"]
        if "lrs" in scores:
            parts += [f"IOR {scores['ior']['mean']:+.2f} ± {scores['ior']['std']:.2f}",
                      f"LRS {scores['lrs']['mean']:.2f} ± {scores['lrs']['std']:.2f} %"]
        runs = len(scores["hlr"]["runs"])
        lines.append(f"{student}: " + ", ".join(parts) + f" ({runs} run{'s' if runs > 1 else ''})")
    return lines


def label_robustness(results: dict) -> dict:
    """HLR, IOR and LRS per student from the evaluate stage's results (`raydistill.ranking`). Without a teacher the
    method's students learnt hard labels, so they are the distilled set's hard-label students."""
    hard, random = results.get("hard", results["method"]), results.get("baseline", {})
    return {student: label_robust_scores(results["full"][student]["top1_runs"], hard[student]["top1_runs"],
                                         scores["top1_runs"], random[student]["top1_runs"] if random else None)
            for student, scores in results["method"].items()}


def summary_lines(report: dict) -> list[str]:
    skipped = ""
    if report["skipped_images"]:
        skipped = (f" ({report['skipped_images']} skipped: "
                   + ", ".join(f"{n} {reason}" for reason, n in report["skipped_by_reason"].items()) + ")")
    upsampled = ""
    if report["upsampled_images"]:
        upsampled = (f"; {report['upsampled_images']} smaller than the prior's {report['prior_resolution']} px "
                     "were upsampled")
    classes = (", ".join(c["display_name"] for c in report["classes"][:GRID_CLASSES])
               + (", ..." if len(report["classes"]) > GRID_CLASSES else ""))
    return [f"dataset {report['dataset']}, prior {report['prior']}, {report['num_classes']} classes, "
            f"{report['train_images']} training images{skipped}{upsampled}", f"classes: {classes}"]


def quantization_section(report: dict) -> tuple[str, list[str]]:
    """The quantization section's title and lines, worded for what this method quantizes and trains with."""
    q = report["quantization"]
    space = "noise space: DDIM-inverted latents" if q["space"] == "noise" else "latent space"
    title = f"Quantization ({space}, mean over classes)"
    if not q["voronoi_weights"]:
        return title, [f"W2 of the prototypes with the uniform weights {report['method']} trains with: "
                       f"{q['w2_uniform']:.4f}",
                       f"{report['method']} weighs every prototype alike: it has no Voronoi weights to compare"]
    transform = q["weight_transform"]
    trained = {"none": "as they are", "uniform": "replaced by uniform ones"}.get(transform, f"tempered by {transform}")
    reduction = f"mean reduction: {100 * q['w2_reduction']:.1f} %"
    if q["space"] == "latent":
        reduction += f" ({DDOQ_W2_REDUCTION})"
    return title, [f"W2 with the Voronoi (DDOQ) weights: {q['w2_weighted']:.4f}",
                   f"W2 with uniform weights on the same points: {q['w2_uniform']:.4f}",
                   reduction,
                   f"largest weight ratio within a class: {q['weight_max_over_min']:.1f}",
                   f"the students train with these weights {trained} (train.weight_transform {transform})"]


def markdown(report: dict) -> str:
    lines = [f"# raydistill report: {report['method']} at IPC {report['ipc']}", ""]
    for line in summary_lines(report):
        lines += [line, ""]
    students = list(report["students"])
    lines += ["| set | " + " | ".join(f"{s} top-1 / top-5" for s in students) + " |",
              "|---|" + "---|" * len(students)]
    for key, label in set_names(report):
        if report.get(key):
            lines.append(f"| {label} | " + " | ".join(score_cell(report[key][s]) for s in students) + " |")
    if "gain_over_baseline" in report:
        gains = ", ".join(f"{s} {g:+.2f}" for s, g in report["gain_over_baseline"].items())
        lines += ["", f"Gain over the random real subset of the same size (top-1 points): {gains}"]
    ranking = ranking_section(report)
    if ranking:
        lines += ["", "## DD-Ranking: hard label recovery, improvement over random, label-robust score", ""]
        lines += [f"- {line}" for line in ranking]
    title, notes = quantization_section(report)
    lines += ["", f"## {title}", ""] + [f"- {note}" for note in notes]
    lines += ["", "The page report/index.html shows the images, with their class names and weights.", "",
              "## Stages", "", "| stage | seconds | rows |", "|---|---|---|"]
    lines += [f"| {name} | {s['seconds']:.1f} | {s['rows']} |" for name, s in report["stages"].items()]
    return "\n".join(lines) + "\n"


def gallery(ctx: Context, names: list[str]) -> tuple[list[GalleryClass], dict[int, list[dict]]]:
    """The first classes' distilled images with their weights, beside the random baseline's where it ran."""
    labels = list(range(min(GRID_CLASSES, len(names))))
    distilled = class_images(ctx.rundir, "distilled", labels)
    random = {}
    if any(variant.prefix == "baseline" for variant in ctx.variants):
        random = class_images(ctx.rundir, "baseline/distilled", labels)
    entries = [GalleryClass(names[label], [Tile(r["image"], r["weight"]) for r in distilled.get(label, [])],
                            [Tile(r["image"]) for r in random.get(label, [])]) for label in labels]
    return entries, distilled


def run(ctx: Context) -> StageOutput:
    cfg = ctx.config
    rundir = ctx.rundir
    evaluation = rundir.read_json("evaluation", "results.json")
    results = evaluation["results"]
    quantize = rundir.marker("prototypes")
    stages = {}
    for stage, folder in (("encode", "latents"), ("quantize", "prototypes"), ("synthesize", "distilled"),
                          ("train", "students"), ("dope", "doped"), ("reference", "reference"),
                          ("evaluate", "evaluation")):
        if (stage == "dope" and ctx.doped is None) or (stage == "reference" and not ctx.references):
            continue
        marker = rundir.marker(folder)
        stages[stage] = {"seconds": marker["seconds"], "rows": marker["rows"]}
    encode = rundir.marker("latents")
    report = {
        "method": cfg.quantize.method,
        "ipc": cfg.quantize.ipc,
        "prior": cfg.prior.spec,
        "dataset": cfg.data.train,
        "num_classes": len(ctx.class_names),
        "train_images": encode["rows"],
        "skipped_images": encode["skipped_images"],
        "skipped_by_reason": encode["skipped_by_reason"],
        "prior_resolution": ctx.resolution,
        "upsampled_images": encode["upsampled_images"],
        "classes": rundir.read_json("class_names.json"),
        "eval_crop_ratio": evaluation["crop_ratio"],
        "students": results["method"],
        "quantization": {**quantize["method"], "space": cfg.quantize.space,
                         "voronoi_weights": uses_voronoi_weights(rundir),
                         "weight_transform": cfg.train.weight_transform,
                         "per_class": rundir.read_json("prototypes", "_class_stats.json")},
        "stages": stages,
        "config": to_dict(cfg),
    }
    if "doped" in results:
        report["doped"] = results["doped"]
        report["doping"] = {key: rundir.marker("doped")[key]
                            for key in ("added_images", "scored_images", "scored_by", "added_per_class")}
    if "baseline" in results:
        report["baseline"] = results["baseline"]
        report["gain_over_baseline"] = {
            s: round(results["method"][s]["top1"] - results["baseline"][s]["top1"], 2) for s in results["method"]
        }
    if "full" in results:
        report["full_data"] = results["full"]
        if "hard" in results:
            report["hard_labels"] = results["hard"]
        report["label_robustness"] = label_robustness(results)
    names = [c["display_name"] for c in report["classes"]]
    entries, distilled = gallery(ctx, names)
    page = render(report, entries, set_names(report), summary_lines(report), quantization_section(report),
                  ranking_section(report), chart_classes=GRID_CLASSES)
    rundir.reset("report")
    rundir.write_json(report, "report", "report.json")
    rundir.write_bytes(markdown(report).encode(), "report", "report.md")
    rundir.write_bytes(page.encode(), "report", "index.html")
    rundir.write_bytes(grid_png(distilled, names), "report", "grid.png")
    return StageOutput(rows=1, extra={"top1": {s: v["top1"] for s, v in results["method"].items()}})
