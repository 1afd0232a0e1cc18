"""report/index.html: one self-contained page (inline CSS, images as data URIs, charts as SVG, no script) from the
report's dict and a gallery of each shown class's distilled and random real images. No Ray in here."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from html import escape

from PIL import Image

from raydistill.imaging import png_decode

THUMBNAIL = 64  # px: larger images are shrunk to this (as JPEG), smaller ones kept as PNG and shown unsmoothed

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #1b1b1b; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.gain-up { color: #17633a; } .gain-down { color: #a3261b; }
.class { margin: 1em 0; } .class h3 { margin: 0.2em 0; }
.sets { display: flex; gap: 2em; flex-wrap: wrap; }
.set h4 { margin: 0.2em 0; font-weight: normal; color: #555; }
.tiles { display: flex; gap: 4px; flex-wrap: wrap; }
figure { margin: 0; width: 64px; font-size: 11px; text-align: center; }
figure img { width: 64px; height: 64px; image-rendering: pixelated; display: block; }
.bar { height: 4px; background: #2f6db5; margin-top: 2px; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 12px; }
svg text { font: 11px system-ui, sans-serif; }
"""


@dataclass(frozen=True)
class Tile:
    """One image of the gallery: PNG bytes and its training weight (None for the random subset's)."""

    png: bytes
    weight: float | None = None


@dataclass(frozen=True)
class GalleryClass:
    name: str
    distilled: list[Tile]
    random: list[Tile]


def thumbnail_uri(png: bytes) -> str:
    image = Image.fromarray(png_decode(png))
    if max(image.size) <= THUMBNAIL:
        return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    image.thumbnail((THUMBNAIL, THUMBNAIL), Image.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _tiles(tiles: list[Tile]) -> str:
    largest = max((t.weight for t in tiles if t.weight is not None), default=0.0) or 1.0
    cells = []
    for tile in tiles:
        caption = ""
        if tile.weight is not None:
            caption = (f'<div class="bar" style="width:{100 * tile.weight / largest:.0f}%"></div>'
                       f"{tile.weight:.3f}")
        cells.append(f'<figure><img alt="" src="{thumbnail_uri(tile.png)}">{caption}</figure>')
    return '<div class="tiles">' + "".join(cells) + "</div>"


def gallery_html(gallery: list[GalleryClass]) -> str:
    parts = []
    for entry in gallery:
        sets = [f'<div class="set"><h4>distilled (weight under each)</h4>{_tiles(entry.distilled)}</div>']
        if entry.random:
            sets.append(f'<div class="set"><h4>random real subset</h4>{_tiles(entry.random)}</div>')
        parts.append(f'<section class="class"><h3>{escape(entry.name)}</h3><div class="sets">{"".join(sets)}'
                     "</div></section>")
    return "".join(parts)


def score_cell(scores: dict) -> str:
    """top-1 / top-5, each as mean ± std where several students were trained."""
    if len(scores["top1_runs"]) == 1:
        return f"{scores['top1']:.2f} / {scores['top5']:.2f}"
    return (f"{scores['top1']:.2f} ± {scores['top1_std']:.2f} / {scores['top5']:.2f} ± {scores['top5_std']:.2f} "
            f"({len(scores['top1_runs'])} runs)")


def results_html(report: dict, set_names: list[tuple[str, str]]) -> str:
    students = list(report["students"])
    rows = ["<tr><th>set</th>" + "".join(f"<th>{escape(s)} top-1 / top-5 (%)</th>" for s in students) + "</tr>"]
    for key, label in set_names:
        if report.get(key):
            rows.append(f"<tr><td>{escape(label)}</td>"
                        + "".join(f"<td>{escape(score_cell(report[key][s]))}</td>" for s in students) + "</tr>")
    if "gain_over_baseline" in report:
        cells = "".join(f'<td class="{"gain-up" if g >= 0 else "gain-down"}">{g:+.2f}</td>'
                        for g in report["gain_over_baseline"].values())
        rows.append(f"<tr><td>top-1 gain over the random real subset</td>{cells}</tr>")
    return "<table>" + "".join(rows) + "</table>"


def w2_chart(per_class: list[dict], names: list[str], weighted: bool) -> str:
    """Horizontal bars of each class's W2: uniform weights, and (where the method has them) Voronoi weights."""
    series = [("w2_uniform", "#9aa5b1", "uniform weights")]
    if weighted:
        series.append(("w2_weighted", "#2f6db5", "Voronoi weights"))
    label_width, bar_width, bar, gap = 160, 420, 9, 6
    row = bar * len(series) + gap
    largest = max(s[key] for s in per_class for key, _, _ in series) or 1.0
    height = 24 + row * len(per_class)
    parts = [f'<svg role="img" width="{label_width + bar_width + 80}" height="{height}">']
    for i, (_, colour, text) in enumerate(series):
        x = label_width + 150 * i
        parts.append(f'<rect x="{x}" y="4" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{x + 14}" y="13">{text}</text>')
    for i, stats in enumerate(per_class):
        y = 24 + i * row
        parts.append(f'<text x="{label_width - 6}" y="{y + bar * len(series) - 2}" text-anchor="end">'
                     f'{escape(names[stats["label"]])}</text>')
        for j, (key, colour, _) in enumerate(series):
            width = bar_width * stats[key] / largest
            parts.append(f'<rect x="{label_width}" y="{y + j * bar}" width="{width:.1f}" height="{bar - 1}" '
                         f'fill="{colour}"><title>{stats[key]:.4f}</title></rect>'
                         f'<text x="{label_width + width + 4:.1f}" y="{y + j * bar + bar - 1}">{stats[key]:.3f}</text>')
    return "".join(parts) + "</svg>"


def render(report: dict, gallery: list[GalleryClass], set_names: list[tuple[str, str]], summary: list[str],
           quantization: tuple[str, list[str]], ranking: list[str], chart_classes: int) -> str:
    """The whole page. `set_names` pairs the report's result keys with their row labels, `summary` is the lines under
    the title, `quantization` the section's title and notes and `ranking` DD-Ranking's lines (none where the run
    trained no full-data students), as the Markdown report words them."""
    names = [c["display_name"] for c in report["classes"]]
    title, notes = quantization
    per_class = report["quantization"]["per_class"][:chart_classes]
    shown = len(gallery)
    stages = "".join(f"<tr><td>{escape(name)}</td><td>{s['seconds']:.1f}</td><td>{s['rows']}</td></tr>"
                     for name, s in report["stages"].items())
    body = [
        f"<h1>raydistill: {escape(report['method'])} at IPC {report['ipc']}</h1>",
        "".join(f"<p>{escape(line)}</p>" for line in summary),
        "<h2>Students (top-1 / top-5 on the validation split)</h2>",
        results_html(report, set_names),
        ("<h3>DD-Ranking: hard label recovery (HLR), improvement over random (IOR), label-robust score (LRS)</h3>"
         "<ul>" + "".join(f"<li>{escape(line)}</li>" for line in ranking) + "</ul>") if ranking else "",
        f"<h2>Distilled images: {shown} of {len(names)} classes</h2>",
        gallery_html(gallery),
        f"<h2>{escape(title)}</h2>",
        "<ul>" + "".join(f"<li>{escape(note)}</li>" for note in notes) + "</ul>",
        f"<p>W2 per class ({len(per_class)} of {len(names)} classes):</p>",
        w2_chart(per_class, names, report["quantization"]["voronoi_weights"]),
        "<h2>Stages</h2>",
        f"<table><tr><th>stage</th><th>seconds</th><th>rows</th></tr>{stages}</table>",
        "<h2>Configuration (resolved)</h2>",
        f"<pre>{escape(json.dumps(report['config'], indent=2))}</pre>",
    ]
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>raydistill report: '
            f"{escape(report['method'])} at IPC {report['ipc']}</title><style>{STYLE}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")
