"""The real-size dry run's smallest case: a random DiT-XL/2-256 with an sd-vae-ft-ema-shaped VAE in the hub layout,
through `raydistill run` on wnid folders of mixed-size JPEGs at 256 px. One of DiT-XL's 28 blocks: every shape and
layout the checks below depend on stays, at half the time; `make bench` runs the full depth."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_smallest_real_size_case_runs_at_the_real_resolution_and_labels(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.real_size", "--smallest", "--steps", "2", "--images-per-class", "2",
         "--dit-layers", "1", "--models", str(tmp_path / "models"), "--out", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (case,) = json.loads(result.stdout.strip().splitlines()[-1])["results"]
    assert case["exit_code"] == 0, case.get("error")
    assert case["latent_shape"] == [4, 32, 32]  # DiT-XL/2-256's VAE at 256 px, not the students' 224
    assert case["prior_labels"] == [0, 217]  # tench and English springer as ImageNet-1K labels, not 0 and 1
    assert case["upsampled_images"] == 1  # the 300x200 image is under 256 px on its short side
