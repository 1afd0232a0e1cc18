"""Priors: every registry entry on tiny inputs, the real TAEF2 weights, diffusers save/load, and bad input."""

import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raydistill.errors import UserError
from raydistill.priors import Prior, list_priors, load_prior

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TAEF2_DIR = SHARED / "weights" / "taef2"
CIFAR_TEST = SHARED / "data" / "cifar10" / "test-00000-of-00002.parquet"
VAE_SCALING = 0.5


def _cifar_images(rows: range) -> torch.Tensor:
    """CIFAR-10 test images at ``rows`` as float RGB in [0, 1], (n, 3, 32, 32)."""
    import pyarrow.parquet as pq
    from PIL import Image

    data = pq.read_table(CIFAR_TEST, columns=["image"]).take(list(rows)).column("image").to_pylist()
    arrays = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in data]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="module")
def saved_vae(tmp_path_factory):
    """A small random AutoencoderKL saved as a plain model dir and inside a pipeline-style ``vae/`` subfolder."""
    from diffusers import AutoencoderKL

    torch.manual_seed(1)
    model = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        scaling_factor=VAE_SCALING,
    ).eval()
    root = tmp_path_factory.mktemp("vae")
    model.save_pretrained(root / "plain")
    model.save_pretrained(root / "pipeline" / "vae")
    return model, root


def _spec(name: str, saved_vae, saved_dit, saved_sd) -> str:
    if name == "taef2":
        if not TAEF2_DIR.is_dir():
            pytest.skip("../shared/weights/taef2 is absent")
        return f"taef2:{TAEF2_DIR}"
    if name == "vae":
        return f"vae:{saved_vae[1] / 'plain'}"
    if name == "dit":
        return f"dit:{saved_dit}"
    if name == "sd":
        return f"sd:{saved_sd}"
    return name


@pytest.mark.parametrize("name", list_priors())
def test_every_prior_round_trips_shapes(name, saved_vae, saved_dit, saved_sd):
    spec = _spec(name, saved_vae, saved_dit, saved_sd)
    prior = load_prior(spec, resolution=32)
    assert isinstance(prior, Prior) and prior.name == spec and prior.resolution == 32
    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        latents = prior.encode(images)
        again = load_prior(spec, resolution=32).encode(images)
        decoded = prior.decode(latents)
    assert latents.shape == (2, *prior.latent_shape) and latents.dtype == torch.float32
    assert torch.isfinite(latents).all()
    assert torch.equal(latents, again)  # same weights and no sampling: a reload encodes identically
    assert decoded.shape == (2, 3, 32, 32) and decoded.dtype == torch.float32
    assert torch.isfinite(decoded).all() and decoded.min() >= 0 and decoded.max() <= 1


@pytest.mark.parametrize(
    ("spec", "resolution", "latent_shape"),
    [("pixel", 32, (3, 32, 32)), ("tiny", 32, (4, 16, 16)), ("taef2", 64, (32, 8, 8)), ("dit-tiny", 32, (4, 16, 16))],
)
def test_default_resolutions(spec, resolution, latent_shape):
    if spec == "taef2":
        if not TAEF2_DIR.is_dir():
            pytest.skip("../shared/weights/taef2 is absent")
        spec = f"taef2:{TAEF2_DIR}"
    prior = load_prior(spec)
    assert (prior.resolution, prior.latent_shape) == (resolution, latent_shape)
    channels, side, _ = latent_shape
    assert load_prior(spec, resolution=resolution * 2).latent_shape == (channels, 2 * side, 2 * side)


def test_pixel_is_identity_and_decode_clamps():
    prior = load_prior("pixel", resolution=8)
    images = torch.rand(3, 3, 8, 8)
    assert torch.equal(prior.encode(images), images)
    assert torch.equal(prior.decode(images * 3 - 1), (images * 3 - 1).clamp(0, 1))


def test_tiny_latents_are_about_unit_variance_and_rng_untouched():
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    prior = load_prior("tiny")
    assert torch.equal(torch.rand(4), expected)  # the factory seeds a forked RNG, not the caller's
    with torch.no_grad():
        std = prior.encode(torch.rand(16, 3, 32, 32)).std().item()
    assert 0.5 < std < 2


def test_encode_decode_cast_to_the_prior_dtype_and_return_float32():
    prior = load_prior("tiny")
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        reference = prior.encode(images)
        prior.to(torch.bfloat16)
        latents = prior.encode(images.double())
        decoded = prior.decode(latents)
    assert prior.dtype == torch.bfloat16
    assert latents.dtype == torch.float32 and decoded.dtype == torch.float32
    assert torch.allclose(latents, reference, atol=0.1)


def test_encode_rejects_images_of_another_size():
    with pytest.raises(ValueError, match=r"resize the images"):
        load_prior("pixel", resolution=16).encode(torch.rand(1, 3, 32, 32))


def test_taef2_real_weights_reconstruct_cifar():
    if not (TAEF2_DIR.is_dir() and CIFAR_TEST.is_file()):
        pytest.skip("../shared is absent")
    prior = load_prior(f"taef2:{TAEF2_DIR}")
    images = _cifar_images(range(0, 5000, 250))  # the shard is sorted by class: 2 images of each
    # As in the weights' NOTES.md: bicubic 32 -> 64, round trip, area-downsample back to 32.
    upsampled = F.interpolate(images, size=64, mode="bicubic", align_corners=False).clamp(0, 1)
    with torch.no_grad():
        decoded = prior.decode(prior.encode(upsampled))
    back = F.interpolate(decoded, size=32, mode="area")
    psnr = 10 * torch.log10(1 / F.mse_loss(back, images)).item()
    assert psnr > 28, f"TAEF2 round trip PSNR {psnr:.1f} dB (NOTES.md measured 32.8)"


@pytest.mark.parametrize("folder", ["plain", "pipeline"])
def test_vae_reproduces_the_saved_model(saved_vae, folder):
    model, root = saved_vae
    prior = load_prior(f"vae:{root / folder}", resolution=32)
    assert prior.latent_shape == (4, 16, 16) and prior.scaling_factor == VAE_SCALING
    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        latents = prior.encode(images)
        expected_latents = model.encode(images * 2 - 1).latent_dist.mode() * VAE_SCALING
        decoded = prior.decode(latents)
        expected_images = ((model.decode(expected_latents / VAE_SCALING).sample + 1) / 2).clamp(0, 1)
    assert torch.equal(latents, expected_latents)
    assert torch.equal(decoded, expected_images)


def test_vae_loads_autoencoder_tiny(tmp_path):
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    AutoencoderTiny(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                    num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1)).save_pretrained(tmp_path)
    prior = load_prior(f"vae:{tmp_path}", resolution=16)
    assert prior.latent_shape == (4, 8, 8)
    with torch.no_grad():
        decoded = prior.decode(prior.encode(torch.rand(1, 3, 16, 16)))
    assert decoded.shape == (1, 3, 16, 16) and torch.isfinite(decoded).all()


def test_unknown_prior_lists_the_valid_names():
    with pytest.raises(UserError, match=r"unknown prior 'nope'; valid priors: dit, dit-tiny, pixel, sd, sd-tiny, taef2, tiny, vae"):
        load_prior("nope:/x")


def test_missing_arguments_say_what_to_pass():
    with pytest.raises(UserError, match=r"taef2:DIR"):
        load_prior("taef2")
    with pytest.raises(UserError, match=r"vae:DIR"):
        load_prior("vae:")
    with pytest.raises(UserError, match=r"takes no argument.*pass just 'pixel'"):
        load_prior("pixel:/some/dir")


def test_missing_directories_name_the_path(tmp_path):
    missing = tmp_path / "missing"
    path = re.escape(str(missing))
    with pytest.raises(UserError, match=rf"{path} does not exist.*encoder.safetensors"):
        load_prior(f"taef2:{missing}")
    with pytest.raises(UserError, match=rf"{path} does not exist.*AutoencoderKL \(config.json \+ weights\)"):
        load_prior(f"vae:{missing}")
    with pytest.raises(UserError, match=rf"{re.escape(str(tmp_path))} has no config.json"):
        load_prior(f"vae:{tmp_path}")


def test_bad_taef2_files_name_the_file(tmp_path):
    from safetensors.torch import save_file

    encoder, decoder = tmp_path / "encoder.safetensors", tmp_path / "decoder.safetensors"
    encoder.write_bytes(b"\x00\x01 not a safetensors file at all \xff" * 8)
    path = re.escape(str(encoder))
    with pytest.raises(UserError, match=rf"{path} is not a valid safetensors file.*TAEF2 encoder"):
        load_prior(f"taef2:{tmp_path}")
    save_file({"conv.weight": torch.zeros(1)}, str(encoder))
    with pytest.raises(UserError, match=rf"{path} does not hold the TAEF2 encoder.*missing keys \['0.bias'"):
        load_prior(f"taef2:{tmp_path}")
    if TAEF2_DIR.is_dir():
        shutil.copy(TAEF2_DIR / "encoder.safetensors", encoder)
        with pytest.raises(UserError, match=rf"{re.escape(str(decoder))} not found"):
            load_prior(f"taef2:{tmp_path}")


def test_corrupt_vae_weights_name_the_path(saved_vae, tmp_path):
    target = tmp_path / "vae"
    shutil.copytree(saved_vae[1] / "plain", target)
    (target / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage" * 100)
    with pytest.raises(UserError, match=rf"could not load the AutoencoderKL weights from '{re.escape(str(target))}'"):
        load_prior(f"vae:{target}", resolution=32)


@pytest.mark.parametrize("resolution", [0, -8, 32.0, "64", True])
def test_resolution_must_be_a_positive_int(resolution):
    with pytest.raises(UserError, match=r"positive integer"):
        load_prior("pixel", resolution=resolution)


def test_resolution_must_divide_by_the_downsampling():
    with pytest.raises(UserError, match=r"resolution 33 does not suit prior 'tiny'.*multiple of 2 \(e.g. 32 or 34\)"):
        load_prior("tiny", resolution=33)
    if TAEF2_DIR.is_dir():
        with pytest.raises(UserError, match=r"downsamples by 8: pass a multiple of 8 \(e.g. 56 or 64\)"):
            load_prior(f"taef2:{TAEF2_DIR}", resolution=60)
