"""report: report/report.json, report/report.md and report/grid.png from what the earlier stages wrote."""

from __future__ import annotations

import io

import pyarrow.parquet as pq
from PIL import Image

from raydistill.config import to_dict
from raydistill.imaging import png_decode
from raydistill.stages.context import Context, StageOutput

GRID_CLASSES = 20
GRID_IMAGES = 10
GRID_CELL = 48


def grid_png(ctx: Context) -> bytes:
    """The first distilled images of the first classes, one row per class, upscaled to be visible."""
    files = ctx.rundir.files("distilled", suffix=".parquet")
    table = pq.read_table(files, filesystem=ctx.rundir.fs, columns=["label", "prototype", "image"])
    rows = sorted(table.to_pylist(), key=lambda r: (r["label"], r["prototype"]))
    classes = sorted({r["label"] for r in rows})[:GRID_CLASSES]
    canvas = Image.new("RGB", (GRID_IMAGES * GRID_CELL, len(classes) * GRID_CELL), "white")
    for y, label in enumerate(classes):
        for x, row in enumerate([r for r in rows if r["label"] == label][:GRID_IMAGES]):
            tile = Image.fromarray(png_decode(row["image"])).resize((GRID_CELL, GRID_CELL), Image.NEAREST)
            canvas.paste(tile, (x * GRID_CELL, y * GRID_CELL))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def score_cell(scores: dict) -> str:
    """top-1 / top-5, each as mean ± std where several students were trained."""
    if len(scores["top1_runs"]) == 1:
        return f"{scores['top1']:.2f} / {scores['top5']:.2f}"
    return (f"{scores['top1']:.2f} ± {scores['top1_std']:.2f} / {scores['top5']:.2f} ± {scores['top5_std']:.2f} "
            f"({len(scores['top1_runs'])} runs)")


def markdown(report: dict) -> str:
    lines = [
        f"# raydistill report: {report['method']} at IPC {report['ipc']}",
        "",
        f"dataset `{report['dataset']}`, prior `{report['prior']}`, {report['num_classes']} classes, "
        f"{report['train_images']} training images"
        + (f" ({report['skipped_images']} skipped: "
           + ", ".join(f"{n} {reason}" for reason, n in report["skipped_by_reason"].items()) + ")"
           if report["skipped_images"] else "")
        + (f"; {report['upsampled_images']} smaller than the prior's {report['prior_resolution']} px were upsampled"
           if report["upsampled_images"] else ""),
        "",
        "classes: " + ", ".join(c["display_name"] for c in report["classes"][:GRID_CLASSES])
        + (", ..." if len(report["classes"]) > GRID_CLASSES else ""),
        "",
    ]
    students = list(report["students"])
    lines += ["| set | " + " | ".join(f"{s} top-1 / top-5" for s in students) + " |",
              "|---|" + "---|" * len(students)]
    doped = report.get("doping", {}).get("added_images")
    for label, results in (("distilled", report["students"]), ("random real (baseline)", report.get("baseline")),
                           (f"distilled + {doped} least clear real (doped)", report.get("doped"))):
        if results:
            cells = [score_cell(results[s]) for s in students]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if "gain_over_baseline" in report:
        gains = ", ".join(f"{s} {g:+.2f}" for s, g in report["gain_over_baseline"].items())
        lines += ["", f"Gain over the random real subset of the same size (top-1 points): {gains}"]
    q = report["quantization"]
    lines += [
        "",
        "## Quantization (latent space, mean over classes)",
        "",
        f"- W2 with the Voronoi (DDOQ) weights: {q['w2_weighted']:.4f}",
        f"- W2 with uniform weights on the same points: {q['w2_uniform']:.4f}",
        f"- mean reduction: {100 * q['w2_reduction']:.1f} % (DDOQ reports 16-20 % on ImageNet latents)",
        f"- largest weight ratio within a class: {q['weight_max_over_min']:.1f}",
        "",
        "## Stages",
        "",
        "| stage | seconds | rows |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {s['seconds']:.1f} | {s['rows']} |" for name, s in report["stages"].items()]
    return "\n".join(lines) + "\n"


def run(ctx: Context) -> StageOutput:
    cfg = ctx.config
    rundir = ctx.rundir
    evaluation = rundir.read_json("evaluation", "results.json")
    results = evaluation["results"]
    quantize = rundir.marker("prototypes")
    stages = {}
    for stage, folder in (("encode", "latents"), ("quantize", "prototypes"), ("synthesize", "distilled"),
                          ("train", "students"), ("dope", "doped"), ("evaluate", "evaluation")):
        if stage == "dope" and ctx.doped is None:
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
        "quantization": {**quantize["method"], "per_class": rundir.read_json("prototypes", "_class_stats.json")},
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
    rundir.reset("report")
    rundir.write_json(report, "report", "report.json")
    rundir.write_bytes(markdown(report).encode(), "report", "report.md")
    rundir.write_bytes(grid_png(ctx), "report", "grid.png")
    return StageOutput(rows=1, extra={"top1": {s: v["top1"] for s, v in results["method"].items()}})

