"""DsCo's numerical core: Latin-hypercube starts, quantile pivots, and noise optimisation that lowers the sort loss
while keeping the noise's norm where a standard normal's is."""

import numpy as np
import torch

from raydistill.priors import load_prior
from raydistill.quantize import QUANTIZERS
from raydistill.synthesize.dsco import (
    dsco_sample, feature_extractor, feature_spread, latin_hypercube_normal, optimise_noise, quantile_pivots,
    sort_loss,
)


def test_latin_hypercube_puts_one_draw_in_each_stratum_of_every_coordinate():
    n = 8
    draws = latin_hypercube_normal(n, (3, 4, 4), torch.Generator().manual_seed(0))
    assert draws.shape == (n, 3, 4, 4)
    strata = torch.floor(torch.special.ndtr(draws.double().flatten(1)) * n)
    assert all(sorted(column.tolist()) == list(range(n)) for column in strata.T)


def test_pivots_are_the_per_bin_means_of_the_sorted_real_features():
    features = torch.randn(10, 5, generator=torch.Generator().manual_seed(1))
    ordered = np.sort(features.numpy(), axis=0)
    expected = np.stack([ordered[0:3].mean(0), ordered[3:6].mean(0), ordered[6:10].mean(0)])  # bins of 10 into 3
    np.testing.assert_allclose(quantile_pivots(features, 3).numpy(), expected, rtol=1e-6)
    assert torch.equal(quantile_pivots(features, 10), features.sort(dim=0).values)


def test_the_dsco_quantizer_draws_seeded_latin_hypercube_starts_with_uniform_weights():
    x = np.random.default_rng(0).normal(size=(30, 16)).astype(np.float32)
    starts = QUANTIZERS.get("dsco")(x, 5, seed=3)
    assert starts.points.shape == (5, 16) and np.allclose(starts.weights, 0.2) and starts.counts.sum() == 30
    np.testing.assert_array_equal(starts.points, QUANTIZERS.get("dsco")(x, 5, seed=3).points)
    strata = np.floor(torch.special.ndtr(torch.from_numpy(starts.points).double()).numpy() * 5)
    assert all(sorted(column) == list(range(5)) for column in strata.T)


def test_the_extractor_is_fixed_by_its_seed():
    x = torch.randn(2, 4, 8, 8)
    assert torch.equal(feature_extractor(4, seed=3)(x), feature_extractor(4, seed=3)(x))
    assert not torch.equal(feature_extractor(4, seed=3)(x), feature_extractor(4, seed=4)(x))


def test_optimised_noise_lowers_the_sort_loss_and_keeps_its_norm_near_sqrt_d():
    """Real states are mean + 0.8 z with z standard normal; the starting noises are six near-copies of one draw, so
    they cover the quantiles badly. Optimising spreads them out, and their norms stay near sqrt(d)."""
    generator = torch.Generator().manual_seed(0)
    extractor = feature_extractor(4, seed=0)
    mean = torch.randn(1, 4, 8, 8, generator=generator)

    def state(z):
        return mean + 0.8 * z

    features = extractor(state(torch.randn(256, 4, 8, 8, generator=generator)))
    pivots, spread = quantile_pivots(features, 6), feature_spread(features)
    start = torch.randn(1, 4, 8, 8, generator=generator) + 0.1 * torch.randn(6, 4, 8, 8, generator=generator)
    optimised = optimise_noise(start, state, extractor, pivots, spread, iterations=100, lr=0.1, momentum=0.9,
                               norm_weight=1.0)
    with torch.no_grad():
        before, after = (sort_loss(extractor(state(z)), pivots, spread) for z in (start, optimised))
    assert after < 0.5 * before
    norms = optimised.flatten(1).norm(dim=1) / np.sqrt(4 * 8 * 8)
    assert torch.all((norms - 1).abs() < 0.1), norms


def test_dsco_sample_on_dit_tiny_is_seeded_and_optimisation_helps():
    prior = load_prior("dit-tiny")
    real = torch.randn(20, *prior.latent_shape, generator=torch.Generator().manual_seed(2))
    start = latin_hypercube_normal(3, prior.latent_shape, torch.Generator().manual_seed(0))
    kwargs = {"steps": 4, "guidance": 1.0, "iterations": 15}
    latents, losses = dsco_sample(prior, 5, start, real, seed=0, **kwargs)
    assert latents.shape == (3, *prior.latent_shape) and torch.isfinite(latents).all()
    assert losses["sort_loss_after"] < losses["sort_loss_before"]
    again, _ = dsco_sample(prior, 5, start, real, seed=0, **kwargs)
    assert torch.equal(latents, again)
    other, _ = dsco_sample(prior, 5, start, real, seed=1, **kwargs)
    assert not torch.equal(latents, other)


def test_dsco_runs_inside_inference_mode_too():
    """The synthesize actor decodes under inference mode; the noise optimisation must still get gradients."""
    prior = load_prior("dit-tiny")
    with torch.inference_mode():
        real, start = torch.randn(8, *prior.latent_shape), torch.randn(2, *prior.latent_shape)
        latents, losses = dsco_sample(prior, 0, start, real, steps=2, guidance=1.0, seed=0, iterations=3)
    assert latents.shape[0] == 2 and losses["sort_loss_after"] >= 0
