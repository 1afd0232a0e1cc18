"""End to end with latent and diffusion priors on the built-in digits: the decoder path, d3hr and DDOQ-DiT on
inverted noise, D4M's img2img and DsCo."""

import json

import numpy as np
import pyarrow.parquet as pq

from conftest import invoke
from raydistill.imaging import png_decode


def test_decoder_path_with_a_latent_prior(ray_local, tmp_path):
    """kmeans (D4M) centroids decoded by a real autoencoder's decoder (the later stages do not depend on it)."""
    out = tmp_path / "decoded"
    args = ["--ipc", "3", "--method", "kmeans", "--prior", "tiny", "--decode", "decoder", "--out", str(out),
            "--set", "quantize.iterations=5"]
    for stage in ("encode", "quantize", "synthesize"):
        invoke(stage, *args)
    encode = json.loads((out / "latents" / "_SUCCESS.json").read_text())
    assert encode["latent_shape"] == [4, 16, 16]  # the tiny AutoencoderKL at 32 px
    table = pq.read_table(out / "distilled")
    assert table.num_rows == 30
    np.testing.assert_allclose(table.column("weight").to_numpy(), 1 / 3)
    images = [png_decode(data) for data in table.column("image").to_pylist()]
    assert all(image.shape == (32, 32, 3) for image in images)
    assert len({image.tobytes() for image in images}) == 30  # decoded centroids, not copies of one image


def test_d3hr_and_ddoq_on_inverted_noise_with_a_diffusion_prior(ray_local, tmp_path):
    """d3hr on dit-tiny end to end with explicit --val-data and no baseline, then DDOQ-DiT's quantize and
    synthesize on the same inverted latents."""
    out = tmp_path / "diffusion"
    common = ["--ipc", "3", "--prior", "dit-tiny", "--max-per-class", "20", "--out", str(out), "--val-data", "digits",
              "--set", "evaluate.baseline=false", "--set", "train.epochs=2", "--set", "quantize.candidates=2000",
              "--set", "encode.steps=10", "--set", "synthesize.steps=10"]
    invoke("run", "--method", "d3hr", *common)
    encode = json.loads((out / "latents" / "_SUCCESS.json").read_text())
    assert encode["inversion"] == {"t_end": 600, "steps": 10, "guidance": 4.0} and encode["rows"] == 200
    latents = pq.read_table(out / "latents", columns=["latent", "noise"])
    assert latents.column("noise").type.list_size == 4 * 16 * 16
    d3hr = pq.read_table(out / "prototypes")
    assert set(d3hr.column("space").to_pylist()) == {"noise"} and d3hr.num_rows == 30
    np.testing.assert_allclose(d3hr.column("weight").to_numpy(), 1 / 3)
    distilled = pq.read_table(out / "distilled")
    images = [png_decode(data) for data in distilled.column("image").to_pylist()]
    assert len(images) == 30 and len({image.tobytes() for image in images}) == 30
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["method"] == "d3hr" and "baseline" not in report and not (out / "baseline").exists()
    assert report["stages"]["evaluate"]["rows"] == 359  # the digits' held-out split, as --val-data names it
    assert report["quantization"]["space"] == "noise" and not report["quantization"]["voronoi_weights"]
    summary = (out / "report" / "report.md").read_text()
    assert "## Quantization (noise space: DDIM-inverted latents" in summary and "Voronoi (DDOQ)" not in summary

    for stage in ("quantize", "synthesize"):  # on the same latents; the later stages do not depend on the method
        invoke(stage, "--method", "ddoq", "--space", "noise", *common)
    ddoq = pq.read_table(out / "prototypes")
    assert set(ddoq.column("method").to_pylist()) == {"ddoq"} and set(ddoq.column("space").to_pylist()) == {"noise"}
    weights = pq.read_table(out / "distilled").column("weight").to_numpy()
    assert len(weights) == 30 and weights.std() > 0  # the Voronoi masses in noise space are kept


def test_d4m_img2img_with_a_text_conditioned_prior(ray_local, tmp_path):
    """kmeans centroids in latent space decoded by img2img through sd-tiny, prompts from the class names."""
    out = tmp_path / "d4m"
    args = ["--method", "kmeans", "--prior", "sd-tiny", "--decode", "ddim", "--ipc", "2", "--max-per-class", "10",
            "--out", str(out), "--set", "synthesize.steps=10", "--set", "prior.prompt=a photo of the digit {name}"]
    for stage in ("encode", "quantize", "synthesize"):  # the later stages do not depend on the method
        invoke(stage, *args)
    assert json.loads((out / "latents" / "_SUCCESS.json").read_text())["inversion"] is None
    prototypes = pq.read_table(out / "prototypes")
    assert set(prototypes.column("space").to_pylist()) == {"latent"}
    distilled = pq.read_table(out / "distilled")
    images = [png_decode(data) for data in distilled.column("image").to_pylist()]
    assert len(images) == 20 and all(image.shape == (32, 32, 3) for image in images)
    assert len({image.tobytes() for image in images}) == 20


def test_dsco_through_synthesize_on_a_diffusion_prior(ray_local, tmp_path):
    """DsCo's starting noises from quantize, then its optimised chain, one class per synthesize actor call (the
    stages after synthesize do not depend on the method)."""
    out = tmp_path / "dsco"
    args = ["--method", "dsco", "--prior", "dit-tiny", "--ipc", "2", "--max-per-class", "10", "--out", str(out),
            "--set", "synthesize.steps=4", "--set", "synthesize.noise_iterations=5"]
    for stage in ("encode", "quantize", "synthesize"):
        invoke(stage, *args)
    assert json.loads((out / "latents" / "_SUCCESS.json").read_text())["inversion"] is None  # pure noise, no inversion
    prototypes = pq.read_table(out / "prototypes")
    assert set(prototypes.column("method").to_pylist()) == {"dsco"} and prototypes.num_rows == 20
    distilled = pq.read_table(out / "distilled").sort_by([("label", "ascending"), ("prototype", "ascending")])
    assert distilled.column("id").to_pylist()[:2] == ["0-0", "0-1"]
    np.testing.assert_allclose(distilled.column("weight").to_numpy(), 0.5)
    images = [png_decode(data) for data in distilled.column("image").to_pylist()]
    assert len({image.tobytes() for image in images}) == 20
