"""Diffusion priors and DDIM: inversion/sampling round trips, guidance, the dit:DIR loader, D3HR group sampling."""

import numpy as np
import pytest
import torch

from raydistill.errors import UserError
from raydistill.priors import load_prior
from raydistill.priors.diffusion import require_denoiser
from raydistill.quantize import QUANTIZERS
from raydistill.quantize import d3hr as d3hr_module
from raydistill.quantize.d3hr import RunningMoments, group_scores, sample_group
from raydistill.synthesize.ddim import invert_latents, sample_latents, timestep_grid


@pytest.fixture(scope="module")
def dit_tiny():
    return load_prior("dit-tiny")


def latents_and_labels(prior, n=4):
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, *prior.latent_shape, generator=generator), torch.arange(n)


def test_tiny_dit_is_not_the_trivial_zero_predictor(dit_tiny):
    x, labels = latents_and_labels(dit_tiny)
    noise = dit_tiny.predict_noise(x, 300, labels, guidance=1.0)
    other_labels = dit_tiny.predict_noise(x, 300, labels + 5, guidance=1.0)
    guided = dit_tiny.predict_noise(x, 300, labels, guidance=4.0)
    assert noise.shape == x.shape and noise.dtype == torch.float32
    assert noise.std() > 0.1  # a zero output layer would make every round trip below exact
    assert (noise - other_labels).abs().mean() > 0.01  # class-conditional
    assert (noise - guided).abs().mean() > 0.01


def test_inversion_then_sampling_reconstructs_and_improves_with_steps(dit_tiny):
    x, labels = latents_and_labels(dit_tiny)
    errors = {}
    for steps in (5, 25, 100):
        noise = invert_latents(dit_tiny, x, labels, t_end=600, steps=steps, guidance=1.0)
        back = sample_latents(dit_tiny, noise, labels, t_start=600, steps=steps, guidance=1.0)
        errors[steps] = float((back - x).pow(2).mean().sqrt())
        assert float((noise - x).pow(2).mean().sqrt()) > 0.5  # the inversion moved far from the latents
    assert errors[5] > errors[25] > errors[100]
    assert errors[100] < 0.1 and errors[5] > 4 * errors[100]


def test_inversion_is_deterministic_and_guided_inversion_round_trips(dit_tiny):
    x, labels = latents_and_labels(dit_tiny)
    a = invert_latents(dit_tiny, x, labels, t_end=400, steps=100, guidance=None)
    b = invert_latents(dit_tiny, x, labels, t_end=400, steps=100, guidance=None)
    assert torch.equal(a, b)
    back = sample_latents(dit_tiny, a, labels, t_start=400, steps=100, guidance=None)
    assert float((back - x).pow(2).mean().sqrt()) < 0.2


def test_img2img_noise_is_seeded_per_row(dit_tiny):
    x, labels = latents_and_labels(dit_tiny)
    both = sample_latents(dit_tiny, x, labels, t_start=300, steps=10, guidance=1.0, row_seeds=[7, 8, 9, 10])
    alone = sample_latents(dit_tiny, x[2:3], labels[2:3], t_start=300, steps=10, guidance=1.0, row_seeds=[9])
    torch.testing.assert_close(both[2:3], alone, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(both[0], x[0], atol=0.05)


def test_timestep_grid():
    assert timestep_grid(1000, 50, 600) == list(range(0, 620, 20))
    assert timestep_grid(1000, 50, 610) == [*range(0, 620, 20), 610]
    assert timestep_grid(1000, 1000, 0) == [0]
    for last in (-1, 1000):
        with pytest.raises(UserError, match=f"t = {last} is outside the prior's schedule 0..999"):
            timestep_grid(1000, 50, last)
    with pytest.raises(UserError, match="DDIM steps must be between 1 and"):
        timestep_grid(1000, 0, 600)


def test_dit_loads_the_hub_layout_from_a_directory(saved_dit, dit_tiny):
    prior = load_prior(f"dit:{saved_dit}")
    assert prior.resolution == 32 and prior.latent_shape == (4, 16, 16) and prior.num_classes == 1000
    np.testing.assert_allclose(prior.alphas_cumprod, dit_tiny.alphas_cumprod, rtol=1e-6)
    x, labels = latents_and_labels(prior)
    torch.testing.assert_close(prior.predict_noise(x, 500, labels, 4.0), dit_tiny.predict_noise(x, 500, labels, 4.0))


def test_dit_bad_directories_say_what_is_missing(tmp_path, saved_dit):
    with pytest.raises(UserError, match="does not exist"):
        load_prior(f"dit:{tmp_path / 'nothing'}")
    (tmp_path / "half" / "transformer").mkdir(parents=True)
    (tmp_path / "half" / "transformer" / "config.json").write_text("{}")
    with pytest.raises(UserError, match="lacks vae/config.json, scheduler/scheduler_config.json"):
        load_prior(f"dit:{tmp_path / 'half'}")
    with pytest.raises(UserError, match="prior 'dit' needs a model"):
        load_prior("dit")
    with pytest.raises(UserError, match=r"prior.resolution=32"):
        load_prior(f"dit:{saved_dit}", resolution=64)


def test_autoencoder_only_prior_cannot_invert_and_labels_must_be_known(dit_tiny):
    with pytest.raises(UserError, match="needs a diffusion prior, but 'tiny' is an autoencoder only"):
        require_denoiser(load_prior("tiny"), "DDIM inversion")
    x, _ = latents_and_labels(dit_tiny, n=2)
    with pytest.raises(UserError, match="label 1000 is outside prior 'dit-tiny'"):
        dit_tiny.predict_noise(x, 10, torch.tensor([3, 1000]), 1.0)


def test_model_without_null_class_refuses_guidance():
    from diffusers import UNet2DModel

    from raydistill.priors.autoencoders import DiffusersVAEPrior, tiny_autoencoder
    from raydistill.priors.diffusion import DiffusionPrior, linear_schedule

    unet = UNet2DModel(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 32),
                       down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
                       layers_per_block=1, num_class_embeds=10, norm_num_groups=8)
    prior = DiffusionPrior(DiffusersVAEPrior(tiny_autoencoder(), "tiny", 32), unet, linear_schedule(), "unet")
    x = torch.randn(2, 4, 16, 16)
    assert prior.predict_noise(x, 100, torch.tensor([0, 9]), 1.0).shape == x.shape
    with pytest.raises(UserError, match="no null class"):
        prior.predict_noise(x, 100, torch.tensor([0, 9]), 4.0)


def test_running_moments_equal_two_pass_values():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(1003, 5)) + np.arange(5) * 100
    moments = RunningMoments(5)
    for start, stop in ((0, 1), (1, 400), (400, 400), (400, 1003)):
        moments.update(x[start:stop])
    np.testing.assert_allclose(moments.mean, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(moments.variance, x.var(axis=0), rtol=1e-10)
    assert moments.count == 1003


def test_group_scores_match_the_definition():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(3, 6, 4))
    sigma = np.array([1.0, 2.0, 0.5, 3.0])
    x = sigma * z  # mu = 0
    mean, std = x.mean(axis=1), x.std(axis=1, ddof=1)
    skew = ((x - mean[:, None]) ** 3).mean(axis=1) / x.std(axis=1) ** 3
    expected = (np.linalg.norm(mean, axis=1) + 2 * np.linalg.norm(std - sigma, axis=1)
                + 0.5 * np.linalg.norm(skew, axis=1))
    got = group_scores(torch.from_numpy(z).float(), torch.from_numpy(sigma).float(), (1.0, 2.0, 0.5))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)


def test_group_sampling_keeps_the_best_candidate(monkeypatch):
    mu, sigma = np.linspace(-1, 1, 16), np.linspace(0.5, 2, 16)
    k, candidates = 5, 3000
    # Small batches, so the best is tracked across batches and in the same random stream as one draw below.
    monkeypatch.setattr(d3hr_module, "CPU_DRAWS_PER_BATCH", 7 * k * 16)
    points, score = sample_group(mu, sigma, k, candidates, (1.0, 1.0, 0.5), seed=3)
    z = torch.randn(candidates, k, 16, generator=torch.Generator().manual_seed(3))
    scores = group_scores(z, torch.from_numpy(sigma).float(), (1.0, 1.0, 0.5))
    assert score == pytest.approx(float(scores.min()), rel=1e-6)
    np.testing.assert_allclose(points, mu + sigma * z[int(scores.argmin())].numpy(), rtol=1e-5, atol=1e-6)
    assert score < 0.8 * float(scores.mean())


def test_d3hr_matches_the_class_moments_and_is_seeded():
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(500, 6)) * [1, 2, 3, 1, 2, 3] + 5).astype(np.float32)
    a = QUANTIZERS.get("d3hr")(x, 10, seed=1, candidates=20_000)
    b = QUANTIZERS.get("d3hr")(x, 10, seed=1, candidates=20_000)
    np.testing.assert_array_equal(a.points, b.points)
    np.testing.assert_allclose(a.weights, 0.1)
    # Scored against the class's own moments, the kept group beats 99 % of plain random groups.
    mu, sigma = x.mean(axis=0), x.std(axis=0)
    z = torch.from_numpy((a.points - mu) / sigma)[None]
    kept = float(group_scores(z, torch.from_numpy(sigma), (1.0, 1.0, 0.5)))
    random_groups = group_scores(torch.randn(1000, 10, 6, generator=torch.Generator().manual_seed(0)),
                                 torch.from_numpy(sigma), (1.0, 1.0, 0.5))
    assert kept < float(torch.quantile(random_groups, 0.01))
    with pytest.raises(UserError, match="d3hr needs at least 2 images per class"):
        QUANTIZERS.get("d3hr")(x, 1, seed=1, candidates=10)



def test_sd_loads_its_layout_and_conditions_on_class_names(saved_sd):
    tiny = load_prior("sd-tiny")
    prior = load_prior(f"sd:{saved_sd}")
    assert prior.resolution == 32 and prior.num_classes == 0 and prior.supports_guidance
    for p in (tiny, prior):
        p.use_class_names(["tench", "golden retriever"], "a photo of a {name}", "blurry")
    assert prior.num_classes == 2 and prior.class_embeddings.shape[0] == 2
    x, labels = latents_and_labels(prior, n=2)
    noise = prior.predict_noise(x, 500, labels, 8.0)
    torch.testing.assert_close(noise, tiny.predict_noise(x, 500, labels, 8.0))
    assert (noise - prior.predict_noise(x, 500, labels, 1.0)).abs().mean() > 0.01  # the negative prompt matters
    with pytest.raises(UserError, match="label 2 is outside prior"):
        prior.predict_noise(x, 500, torch.tensor([0, 2]), 1.0)
    with pytest.raises(UserError, match="stable-diffusion-v1-5"):
        load_prior(f"sd:{saved_sd / 'unet'}")
