"""Quantizer properties on every registry entry: weights, counts, DDOQ's Proposition 1, seeds, shapes."""

import numpy as np
import pytest

from raydistill.errors import UserError
from raydistill.quantize import QUANTIZERS, list_quantizers, nearest, voronoi_counts, wasserstein2
from raydistill.quantize.kmeans import cell_means, kmeans_plusplus


def blobs(n=300, d=8, seed=0):
    """Three unequal Gaussian blobs, so Voronoi masses differ strongly."""
    rng = np.random.default_rng(seed)
    sizes = [int(n * 0.7), int(n * 0.2), n - int(n * 0.7) - int(n * 0.2)]
    centres = rng.normal(scale=6.0, size=(3, d))
    return np.concatenate([c + rng.normal(size=(s, d)) for c, s in zip(centres, sizes)]).astype(np.float32)


@pytest.mark.parametrize("method", list_quantizers())
def test_weights_counts_and_shapes(method):
    x = blobs()
    result = QUANTIZERS.get(method)(x, 10, seed=1)
    assert result.points.shape == (10, 8) and result.points.dtype == np.float32
    assert result.weights.sum() == pytest.approx(1.0)
    assert (result.weights >= 0).all()
    assert result.counts.sum() == len(x)
    np.testing.assert_array_equal(result.counts, voronoi_counts(x, result.points))
    assert len(set(result.nearest.tolist())) <= 10 and result.nearest.max() < len(x)
    assert np.isfinite(result.points).all()


@pytest.mark.parametrize("method", list_quantizers())
def test_same_seed_same_prototypes_other_seed_differs(method):
    x = blobs()
    a = QUANTIZERS.get(method)(x, 10, seed=3)
    b = QUANTIZERS.get(method)(x, 10, seed=3)
    c = QUANTIZERS.get(method)(x, 10, seed=4)
    np.testing.assert_array_equal(a.points, b.points)
    np.testing.assert_array_equal(a.weights, b.weights)
    assert not np.array_equal(a.points, c.points)


def test_ddoq_weights_are_voronoi_masses_and_kmeans_uniform():
    x = blobs()
    ddoq = QUANTIZERS.get("ddoq")(x, 10, seed=0)
    kmeans = QUANTIZERS.get("kmeans")(x, 10, seed=0)
    np.testing.assert_array_equal(ddoq.points, kmeans.points)
    np.testing.assert_allclose(ddoq.weights, ddoq.counts / len(x))
    np.testing.assert_allclose(kmeans.weights, np.full(10, 0.1))
    assert ddoq.weights.max() / ddoq.weights.min() > 2  # unequal blobs give unequal masses


def test_random_subset_is_real_points():
    x = blobs()
    result = QUANTIZERS.get("random")(x, 7, seed=0)
    np.testing.assert_array_equal(result.points, x[result.nearest])
    assert len(set(result.nearest.tolist())) == 7


@pytest.mark.parametrize("method", list_quantizers())
@pytest.mark.parametrize("seed", range(3))
def test_voronoi_weights_never_worse_than_uniform(method, seed):
    """DDOQ Proposition 1: on fixed points, the Voronoi masses minimise W2 over all weights."""
    x = blobs(n=200, seed=seed)
    result = QUANTIZERS.get(method)(x, 10, seed=seed)
    voronoi = result.counts / result.counts.sum()
    weighted = wasserstein2(x, result.points, voronoi)
    uniform = wasserstein2(x, result.points, np.full(10, 0.1))
    assert weighted <= uniform + 1e-9
    # With Voronoi weights the transport plan is the nearest-point assignment.
    _, nearest_sq = nearest(x, result.points)
    assert weighted == pytest.approx(np.sqrt(nearest_sq.mean()), rel=1e-4)


def test_ddoq_reduces_w2_on_unequal_clusters():
    x = blobs(n=400)
    result = QUANTIZERS.get("ddoq")(x, 10, seed=0)
    weighted = wasserstein2(x, result.points, result.weights)
    uniform = wasserstein2(x, result.points, np.full(10, 0.1))
    assert weighted < 0.95 * uniform


def test_ipc_equal_to_class_size_keeps_every_point():
    x = blobs(n=12)
    result = QUANTIZERS.get("ddoq")(x, 12, seed=0)
    np.testing.assert_array_equal(np.sort(result.counts), np.ones(12))


def test_unknown_quantizer_lists_valid_ones():
    with pytest.raises(UserError, match="unknown quantizer 'kmedoids'.*ddoq, dsco, kmeans, random"):
        QUANTIZERS.get("kmedoids")


def test_minibatch_is_d4ms_one_partial_fit_pass():
    """kmeans with algorithm=minibatch gives D4M's centres: MiniBatchKMeans.partial_fit over chunks of 10 x K."""
    from sklearn.cluster import MiniBatchKMeans

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(230, 16)) + np.repeat(rng.normal(scale=4, size=(5, 16)), 46, axis=0)).astype(np.float32)
    result = QUANTIZERS.get("kmeans")(x, 5, seed=7, algorithm="minibatch")
    d4m = MiniBatchKMeans(n_clusters=5, random_state=7, batch_size=50, n_init="auto")
    order = np.random.default_rng(7).permutation(230)
    for start in range(0, 230, 50):
        d4m.partial_fit(x[order[start:start + 50]])
    np.testing.assert_allclose(result.points, d4m.cluster_centers_, rtol=1e-6)
    np.testing.assert_allclose(result.weights, 0.2)
    ddoq = QUANTIZERS.get("ddoq")(x, 5, seed=7, algorithm="minibatch")
    np.testing.assert_array_equal(ddoq.points, result.points)
    np.testing.assert_allclose(ddoq.weights, ddoq.counts / 230)


def test_class_mean_norm_rescales_noise_centroids_and_keeps_their_cells():
    """Centroids of Gaussian noise are far shorter than the noise; class_mean gives them its mean norm."""
    x = np.random.default_rng(0).normal(size=(400, 256)).astype(np.float32)
    plain = QUANTIZERS.get("ddoq")(x, 4, seed=0)
    scaled = QUANTIZERS.get("ddoq")(x, 4, seed=0, prototype_norm="class_mean")
    mean_norm = np.linalg.norm(x, axis=1).mean()
    assert np.linalg.norm(plain.points, axis=1).max() < 0.5 * mean_norm
    np.testing.assert_allclose(np.linalg.norm(scaled.points, axis=1), mean_norm, rtol=1e-5)
    cosine = (plain.points * scaled.points).sum(1) / np.linalg.norm(plain.points, axis=1) / mean_norm
    np.testing.assert_allclose(cosine, 1, rtol=1e-5)
    np.testing.assert_array_equal(scaled.weights, plain.weights)
    np.testing.assert_array_equal(scaled.nearest, plain.nearest)


def test_kmeans_plusplus_seeds_one_point_in_each_separated_cluster():
    """D^2 sampling puts the next seed in a cluster no seed covers yet; uniform draws would put two seeds in one of
    six clusters in most classes (6!/6^6 = 1.5 % of draws avoid it)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 100, (6, 64)).astype(np.float32)
    members = rng.integers(0, 6, 600)
    x = centres[members] + rng.normal(0, 1, (600, 64)).astype(np.float32)
    for seed in range(5):
        rows = kmeans_plusplus(x, 6, np.random.default_rng(seed))
        assert sorted(members[rows]) == list(range(6))
    assert kmeans_plusplus(x, 6, np.random.default_rng(3)) == kmeans_plusplus(x, 6, np.random.default_rng(3))


def test_cell_means_average_each_cell_and_fill_an_empty_one():
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    cells = np.array([0, 0, 2, 2, 2, 0])
    empty = np.full((3, 2), -1, np.float32)
    np.testing.assert_allclose(cell_means(x, cells, 3, empty), [x[[0, 1, 5]].mean(0), [-1, -1], x[2:5].mean(0)])


def test_lloyd_in_a_sketch_stays_within_a_few_percent_of_full_space_lloyd():
    """The sketched clustering (128 of 1,024 dimensions, lifted, two full passes) against Lloyd in the full space
    from the same kind of seeds, on clustered data with more clusters than k = 40 (the hard case for local optima)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (60, 1024)).astype(np.float32)
    members = rng.integers(0, 60, 1200)
    x = centres[members] + rng.uniform(0.3, 1.0, (60, 1))[members].astype(np.float32) * rng.normal(
        0, 1, (1200, 1024)).astype(np.float32)
    ratios = []
    for seed in range(3):  # 32 sketch dimensions instead of 128: 1.041 on average; 8: 1.066
        sketched = QUANTIZERS.get("ddoq")(x, 40, seed=seed)
        full = QUANTIZERS.get("ddoq")(x, 40, seed=seed, projected_dims=0)
        ratios.append(nearest(x, sketched.points)[1].mean() / nearest(x, full.points)[1].mean())
    assert np.mean(ratios) < 1.035, ratios
