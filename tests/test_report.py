"""The report's wording and its HTML page, from report dicts built here (no run), and the page in headless Chromium."""

import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from raydistill.html_report import GalleryClass, Tile, render
from raydistill.imaging import png_bytes
from raydistill.stages.report import (GRID_CLASSES, markdown, quantization_section, ranking_section, set_names,
                                      summary_lines)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _scores(top1: float, runs: int = 1) -> dict:
    return {"top1": top1, "top5": top1 + 30, "top1_std": 0.4 if runs > 1 else 0.0, "top5_std": 0.3 if runs > 1 else 0.0,
            "top1_runs": [top1] * runs}


def _report(method: str = "ddoq", space: str = "latent", voronoi: bool = True, runs: int = 1) -> dict:
    names = ["tench", "English springer", "<b>cassette player</b>"]
    return {
        "method": method, "ipc": 2, "prior": "dit:facebook/DiT-XL-2-256@abc", "dataset": "imagenette",
        "num_classes": 3, "train_images": 300, "skipped_images": 0, "skipped_by_reason": {}, "prior_resolution": 256,
        "upsampled_images": 0,
        "classes": [{"label": i, "name": f"n0{i}", "display_name": name} for i, name in enumerate(names)],
        "students": {"resnet18": _scores(41.5, runs)}, "baseline": {"resnet18": _scores(38.25, runs)},
        "gain_over_baseline": {"resnet18": 3.25},
        "quantization": {"w2_weighted": 1.5, "w2_uniform": 2.0, "w2_reduction": 0.25, "weight_max_over_min": 3.0,
                         "space": space, "voronoi_weights": voronoi,
                         "weight_transform": "power:0.5" if voronoi else "none",
                         "per_class": [{"label": i, "w2_weighted": 1.5 + i / 10, "w2_uniform": 2.0 + i / 10}
                                       for i in range(3)]},
        "stages": {"encode": {"seconds": 12.0, "rows": 300}, "train": {"seconds": 30.5, "rows": 2}},
        "config": {"quantize": {"method": method, "ipc": 2}},
    }


def _gallery(report: dict) -> list[GalleryClass]:
    rng = np.random.default_rng(0)

    def tile(weight=None):
        return Tile(png_bytes(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)), weight)

    return [GalleryClass(c["display_name"], [tile(0.7), tile(0.3)], [tile(), tile()]) for c in report["classes"]]


def _page(report: dict) -> str:
    return render(report, _gallery(report), set_names(report), summary_lines(report), quantization_section(report),
                  ranking_section(report), chart_classes=GRID_CLASSES)


def test_ddoq_quantization_section_compares_voronoi_and_uniform_weights():
    title, notes = quantization_section(_report())
    assert title == "Quantization (latent space, mean over classes)"
    assert "W2 with the Voronoi (DDOQ) weights: 1.5000" in notes
    assert any("mean reduction: 25.0 % (DDOQ reports" in n for n in notes)
    assert any("tempered by power:0.5" in n for n in notes)


def test_d3hr_quantization_section_says_noise_and_claims_no_voronoi_weights():
    report = _report("d3hr", "noise", voronoi=False)
    title, notes = quantization_section(report)
    assert title == "Quantization (noise space: DDIM-inverted latents, mean over classes)"
    text = markdown(report) + _page(report)
    assert "Voronoi (DDOQ)" not in text and "mean reduction" not in text and "Voronoi weights</text>" not in text
    assert "W2 of the prototypes with the uniform weights d3hr trains with: 2.0000" in notes


def test_the_page_is_self_contained_and_labels_classes_and_weights():
    page = _page(_report(runs=3))
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert len(sources) == 12 and all(s.startswith(("data:image/jpeg;base64,", "data:image/png;base64,"))
                                      for s in sources)
    assert "<script" not in page
    assert "&lt;b&gt;cassette player&lt;/b&gt;" in page and "<b>cassette" not in page  # names are text, not markup
    assert page.count("<h3>") == 3 and "English springer" in page
    assert "0.700" in page and "width:100%" in page and "width:43%" in page  # weights, bars relative to the largest
    assert "random real subset" in page and "41.50 ± 0.40" in page and "+3.25" in page
    # Images over 64 px become 64 px JPEGs (even these noise images), so 20 classes x 10 x 2 stay a few MB.
    assert all(s.startswith("data:image/jpeg") and len(s) < 8_000 for s in sources)
    small = Tile(png_bytes(np.zeros((32, 32, 3), np.uint8)))
    assert 'src="data:image/png' in render(_report(), [GalleryClass("tench", [small], [])], [], [],
                                           ("t", []), [], GRID_CLASSES)  # small images stay lossless


def _chromium(html_path, png_path) -> list[str]:
    """Renders the page headless and returns the console messages Chromium logged for it."""
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1000,1400",
         f"--screenshot={png_path}", "--enable-logging=stderr", "--v=0", html_path.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return [line for line in done.stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
def test_the_page_renders_in_chromium_without_console_errors(tmp_path):
    broken = tmp_path / "broken.html"
    broken.write_text("<!doctype html><p>x</p><script>undefinedFunction()</script>")
    assert any("undefinedFunction" in line for line in _chromium(broken, tmp_path / "broken.png"))  # the check sees

    page = tmp_path / "index.html"
    page.write_text(_page(_report()))
    shot = tmp_path / "shot.png"
    assert _chromium(page, shot) == []
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.std() > 20 and (pixels < 200).mean() > 0.05, "the screenshot is (nearly) blank"
