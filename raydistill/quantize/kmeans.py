"""DDOQ and D4M: k-means prototypes of a class, weighted by their Voronoi masses (DDOQ) or uniformly (D4M).

DDOQ (Dataset Distillation as Pushforward Optimal Quantization), Sec. 3: the optimal K-quantizer of the class's
empirical measure mu_N is the k-means codebook {c_k}, and the optimal weights on it are the Voronoi masses
w_k = mu_N(V_k) (Proposition 1). D4M uses the same centroids and discards the masses.

Two algorithms find the codebook: "lloyd" (full Lloyd passes from k-means++ seeds: the lowest distortion) and
"minibatch" (D4M's released clustering, which DDOQ's weights were measured on: one pass of scikit-learn's
MiniBatchKMeans.partial_fit over the class in shuffled chunks of `minibatch_factor` x K points).
"""

from __future__ import annotations

import faiss
import numpy as np
import scipy.sparse
from sklearn.cluster import MiniBatchKMeans

from raydistill.quantize.base import QUANTIZERS, Quantization
from raydistill.quantize.metrics import cells_and_nearest, nearest


# Lloyd passes in the full space that finish a clustering found in a sketch of the class (`sign_sketch`).
LIFTED_PASSES = 2


def kmeans_plusplus(x: np.ndarray, k: int, rng: np.random.Generator) -> list[int]:
    """Rows of x chosen as greedy k-means++ seeds (Arthur and Vassilvitskii 2007, with 2 + ln k candidates per seed
    as scikit-learn draws them): each next seed is the candidate, drawn with probability proportional to the squared
    distance to the nearest seed so far, that lowers the summed squared distance most.

    By hand rather than sklearn's `kmeans_plusplus`: the same algorithm in float32 matrix products, 2.4x faster on
    classes of 1,300 x 4,096 at k = 100 at equal distortion (benchmarks/quantize_speed.py).
    """
    n, trials = len(x), 2 + int(np.log(k))
    squared_norms = np.einsum("ij,ij->i", x, x)
    first = int(rng.integers(n))
    chosen = [first]
    closest = np.maximum(squared_norms - 2 * (x @ x[first]) + squared_norms[first], 0)
    for _ in range(1, k):
        cumulative = np.cumsum(closest, dtype=np.float64)
        candidates = np.minimum(np.searchsorted(cumulative, rng.random(trials) * cumulative[-1]), n - 1)
        distances = squared_norms[None] - 2 * (x[candidates] @ x.T) + squared_norms[candidates, None]
        distances = np.minimum(closest[None], np.maximum(distances, 0))
        best = int(distances.sum(axis=1).argmin())
        closest = distances[best]
        chosen.append(int(candidates[best]))
    return chosen


def _lloyd(x: np.ndarray, init: np.ndarray, iterations: int, seed: int) -> tuple[np.ndarray, float]:
    """faiss's Lloyd from `init` (it stops early once the cells no longer change): the centroids and the summed
    squared distance of the last assignment."""
    kmeans = faiss.Kmeans(
        x.shape[1],
        len(init),
        niter=iterations,
        seed=seed,
        min_points_per_centroid=1,  # small classes are legitimate here; faiss would warn below 39 per centroid
        max_points_per_centroid=len(x),
        verbose=False,
    )
    kmeans.train(x, init_centroids=np.ascontiguousarray(init, dtype=np.float32))
    return kmeans.centroids, float(kmeans.obj[-1])


def cell_means(x: np.ndarray, cells: np.ndarray, k: int, empty: np.ndarray) -> np.ndarray:
    """The mean of x over each of k cells (one sparse product); an empty cell takes its row of `empty`."""
    one_hot = scipy.sparse.csr_matrix((np.ones(len(x), np.float32), (cells, np.arange(len(x)))), shape=(k, len(x)))
    counts = np.bincount(cells, minlength=k)
    means = np.asarray(one_hot @ x) / np.maximum(counts, 1)[:, None]
    means[counts == 0] = empty[counts == 0]
    return means.astype(np.float32)


def sign_sketch(x: np.ndarray, dims: int, rng: np.random.Generator) -> np.ndarray:
    """A count sketch of x's rows in `dims` dimensions: coordinate i, its sign flipped at random, adds to bucket
    i mod dims, so each bucket draws on the whole vector (every row of every latent channel) and squared distances
    stay unbiased. Two passes over x: 8x cheaper than a dense Gaussian projection at 4,096 -> 128 (2.3 against
    17.9 ms per 1,300-point class) at equal distortion after Lloyd."""
    signed = x * rng.choice(np.float32([-1, 1]), x.shape[1])
    if x.shape[1] % dims:
        signed = np.pad(signed, ((0, 0), (0, -x.shape[1] % dims)))
    return signed.reshape(len(x), -1, dims).sum(axis=1)


def _kmeans(x: np.ndarray, k: int, seed: int, iterations: int, restarts: int, projected_dims: int) -> np.ndarray:
    """1. Lloyd's algorithm (faiss) from greedy k-means++ seeds, the best of `restarts` seeded runs; every point
    counts (no subsampling). Where x has more than `projected_dims` dimensions, the seeding and the runs cluster a
    random sketch of x in that many (random projections keep the k-means cost of every partition within 1 + eps
    from O(log(k / eps) / eps^2) dimensions on: Makarychev, Makarychev and Razenshteyn 2019; sparse sketches like
    this one do too: Cohen et al. 2015), so restarts cost little; the best run's cells are lifted to their means in
    the full space and LIFTED_PASSES full Lloyd passes finish them.

    On classes of 1,300 x 4,096 (synthetic) and 1,300 x 3,072 (CIFAR-10 pixels), 128 dimensions and three restarts
    ran 2-4x faster than one full-space run, at 0.97-1.00 of MiniBatchKMeans's distortion as the full-space run
    (benchmarks/quantize_speed.py; two restarts: 1.009 on the synthetic classes at k = 10). k-means++ seeding
    matters: from faiss's own random seeds, Lloyd stops about 13 % above MiniBatchKMeans's distortion on clustered
    data.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    rng = np.random.default_rng(seed)
    space = sign_sketch(x, projected_dims, rng) if 0 < projected_dims < x.shape[1] else x
    best_objective, best_centroids, best_rows = np.inf, None, None
    for run in range(restarts):
        rows = kmeans_plusplus(space, k, rng)
        centroids, objective = _lloyd(space, space[rows], iterations, seed + run)
        if objective < best_objective:
            best_objective, best_centroids, best_rows = objective, centroids, rows
    if space is x:
        return best_centroids
    cells, _ = nearest(space, best_centroids)
    return _lloyd(x, cell_means(x, cells, k, x[best_rows]), LIFTED_PASSES, seed)[0]


def _minibatch_kmeans(x: np.ndarray, k: int, seed: int, minibatch_factor: int) -> np.ndarray:
    """1'. D4M's codebook: MiniBatchKMeans.partial_fit once over the class, in seeded random order, chunk by chunk
    (its first chunk seeds the centroids by k-means++)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    order = np.random.default_rng(seed).permutation(len(x))
    chunk = max(k, minibatch_factor * k)
    kmeans = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=chunk, n_init="auto")
    for start in range(0, len(x), chunk):
        kmeans.partial_fit(x[order[start:start + chunk]])
    return kmeans.cluster_centers_.astype(np.float32)


ALGORITHMS = ("lloyd", "minibatch")
# What a prototype's norm is set to: left as the centroid's, or the class's mean norm. Centroids of inverted noise are
# averages, far shorter than any noise the sampler was trained to start from (in d dimensions an average of n
# independent noises has about 1/sqrt(n) of their norm), and sample back to smooth "average" images.
PROTOTYPE_NORMS = ("centroid", "class_mean")


def rescale_to_class_norm(points: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Each prototype scaled along its own direction to the mean norm of the class's points."""
    norms = np.linalg.norm(points, axis=1, keepdims=True)
    return (points * (np.linalg.norm(x, axis=1).mean() / np.maximum(norms, 1e-12))).astype(np.float32)


def _quantize(x: np.ndarray, k: int, seed: int, iterations: int, restarts: int, weighted: bool, algorithm: str,
              minibatch_factor: int, prototype_norm: str, projected_dims: int) -> Quantization:
    if algorithm == "minibatch":
        points = _minibatch_kmeans(x, k, seed, minibatch_factor)
    else:
        points = _kmeans(x, k, seed, iterations, restarts, projected_dims)
    # 2. Voronoi masses w_k = |V_k| / N of the final codebook, and 3. the real point nearest to each centroid, for
    # decoders that snap to real data.
    counts, nearest_rows = cells_and_nearest(x, points)
    weights = counts / counts.sum() if weighted else np.full(k, 1.0 / k)
    # 4. Optionally the class's norm for each prototype (its cell, weight and nearest point stay the centroid's).
    if prototype_norm == "class_mean":
        points = rescale_to_class_norm(points, x)
    return Quantization(points=points, weights=weights.astype(np.float64), counts=counts, nearest=nearest_rows)


@QUANTIZERS.register("ddoq")
def ddoq(x: np.ndarray, k: int, seed: int = 0, iterations: int = 50, restarts: int = 3, algorithm: str = "lloyd",
         minibatch_factor: int = 10, prototype_norm: str = "centroid", projected_dims: int = 128) -> Quantization:
    """k-means centroids with their Voronoi masses as weights (DDOQ)."""
    return _quantize(x, k, seed, iterations, restarts, True, algorithm, minibatch_factor, prototype_norm,
                     projected_dims)


@QUANTIZERS.register("kmeans")
def kmeans(x: np.ndarray, k: int, seed: int = 0, iterations: int = 50, restarts: int = 3, algorithm: str = "lloyd",
           minibatch_factor: int = 10, prototype_norm: str = "centroid", projected_dims: int = 128) -> Quantization:
    """The same centroids with uniform weights (D4M)."""
    return _quantize(x, k, seed, iterations, restarts, False, algorithm, minibatch_factor, prototype_norm,
                     projected_dims)
