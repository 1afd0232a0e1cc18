"""DsCo's numerical core: Latin-hypercube starts, quantile pivots, and noise optimisation that lowers the sort loss
while keeping the noise's norm where a standard normal's is."""

import numpy as np
import pytest
import torch

from raydistill.priors import load_prior
from raydistill.quantize import QUANTIZERS
from raydistill.synthesize.dsco import (
    SORT_WEIGHT, dsco_sample, feature_extractor, latin_hypercube_normal, norm_loss, optimise_noise, quantile_pivots,
    sort_loss, standardiser,
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


def test_the_extractor_is_dscos_grouped_net_fixed_by_its_seed():
    x = torch.randn(2, 4, 16, 16)
    net = feature_extractor(4, seed=3)
    assert net(x).shape == (2, 2048)
    grouped = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == 16]
    assert [(m.in_channels, m.out_channels, m.kernel_size, m.stride) for m in grouped] == [
        (256, 512, (4, 4), (2, 2)), (512, 1024, (4, 4), (2, 2)), (1024, 2048, (4, 4), (2, 2))]
    assert torch.equal(net(x), feature_extractor(4, seed=3)(x))
    assert not torch.equal(net(x), feature_extractor(4, seed=4)(x))


def test_sort_and_norm_terms_are_dscos_sums():
    generator = torch.Generator().manual_seed(0)
    features, pivots = torch.randn(3, 5, generator=generator), torch.randn(3, 5, generator=generator)
    gap = np.sort(features.numpy(), axis=0) - pivots.numpy()
    assert float(sort_loss(features, pivots)) == pytest.approx(np.abs(gap).sum() + (gap**2).sum(), rel=1e-5)
    z = torch.randn(4, 4, 8, 8, generator=generator)
    norms = np.linalg.norm(z.flatten(1).numpy(), axis=1) - 16.0  # sqrt(4 * 8 * 8)
    assert float(norm_loss(z)) == pytest.approx(np.abs(norms).sum() + (norms**2).sum(), rel=1e-5)
    real = torch.randn(50, 5, generator=generator) * 3 + 7
    standardised = standardiser(real)(real)
    torch.testing.assert_close(standardised.mean(0), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(standardised.std(0, unbiased=False), torch.ones(5), atol=1e-5, rtol=0)


def optimise_against_real_states(iterations):
    """Real states are mean + 0.8 z with z standard normal on 4x16x16 latents (sqrt(d) = 32); the starting noises
    are ten near-copies of one draw, so they cover the quantiles badly."""
    generator = torch.Generator().manual_seed(0)
    extractor = feature_extractor(4, seed=0)
    mean = torch.randn(1, 4, 16, 16, generator=generator)
    reference = extractor(mean + 0.8 * torch.randn(100, 4, 16, 16, generator=generator))
    standardise = standardiser(reference)
    pivots = quantile_pivots(standardise(reference), 10)

    def features(z):
        return standardise(extractor(mean + 0.8 * z))

    start = torch.randn(1, 4, 16, 16, generator=generator) + 0.1 * torch.randn(10, 4, 16, 16, generator=generator)
    optimised = optimise_noise(start, features, pivots, iterations=iterations, lr=0.1, momentum=0.9,
                               sort_weight=SORT_WEIGHT)
    with torch.no_grad():
        return optimised, sort_loss(features(start), pivots), sort_loss(features(optimised), pivots)


def test_200_iterations_lower_the_sort_loss_and_hold_the_norm_at_sqrt_d():
    """DsCo's objective keeps |z| within a few percent of sqrt(d) over its 200 iterations (the objective it
    replaced let |z| drift from 64 to about 91 on 4x32x32 latents)."""
    optimised, before, after = optimise_against_real_states(200)
    assert after < 0.7 * before
    norms = optimised.flatten(1).norm(dim=1)
    assert torch.all((norms / 32 - 1).abs() < 0.03), norms


def test_dsco_sample_on_dit_tiny_is_seeded_and_optimisation_helps():
    prior = load_prior("dit-tiny")
    real = torch.randn(20, *prior.latent_shape, generator=torch.Generator().manual_seed(2))
    start = latin_hypercube_normal(3, prior.latent_shape, torch.Generator().manual_seed(0))
    kwargs = {"steps": 4, "guidance": 1.0, "iterations": 8}
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
