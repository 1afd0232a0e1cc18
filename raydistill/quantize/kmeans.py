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
from sklearn.cluster import MiniBatchKMeans

from raydistill.quantize.base import QUANTIZERS, Quantization
from raydistill.quantize.metrics import nearest, voronoi_counts


def kmeans_plusplus(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Greedy k-means++ seeds (Arthur and Vassilvitskii 2007, with 2 + ln k candidates per seed as scikit-learn
    draws them): each next seed is the candidate, drawn with probability proportional to the squared distance to
    the nearest seed so far, that lowers the summed squared distance most.

    By hand rather than sklearn's `kmeans_plusplus`: the same algorithm in float32 matrix products, 2.4x faster on
    classes of 1,300 x 4,096 at k = 100 (0.29 s against 0.69 s with Lloyd after it) at equal distortion
    (benchmarks/quantize_speed.py), and seeding was 90 % of the quantizer's time.
    """
    rng = np.random.default_rng(seed)
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
    return x[chosen]


def _kmeans(x: np.ndarray, k: int, seed: int, iterations: int, restarts: int) -> np.ndarray:
    """1. Lloyd's algorithm (faiss) from k-means++ seeds, best of `restarts` seeded runs; every point counts (no
    subsampling). k-means++ seeding matters: from faiss's own random seeds, Lloyd stops about 13 % above
    MiniBatchKMeans's distortion on clustered data (benchmarks/quantize_speed.py)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    best, best_distortion = None, np.inf
    for run in range(restarts):
        seeds = kmeans_plusplus(x, k, seed + run)
        kmeans = faiss.Kmeans(
            x.shape[1],
            k,
            niter=iterations,
            seed=seed + run,
            min_points_per_centroid=1,  # small classes are legitimate here; faiss would warn below 39 per centroid
            max_points_per_centroid=len(x),
            verbose=False,
        )
        kmeans.train(x, init_centroids=np.ascontiguousarray(seeds, dtype=np.float32))
        if kmeans.obj[-1] < best_distortion:
            best, best_distortion = kmeans.centroids.copy(), kmeans.obj[-1]
    return best


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
              minibatch_factor: int, prototype_norm: str) -> Quantization:
    if algorithm == "minibatch":
        points = _minibatch_kmeans(x, k, seed, minibatch_factor)
    else:
        points = _kmeans(x, k, seed, iterations, restarts)
    # 2. Voronoi masses w_k = |V_k| / N of the final codebook.
    counts = voronoi_counts(x, points)
    weights = counts / counts.sum() if weighted else np.full(k, 1.0 / k)
    # 3. The real point nearest to each centroid, for decoders that snap to real data.
    nearest_rows, _ = nearest(points, x)
    # 4. Optionally the class's norm for each prototype (its cell, weight and nearest point stay the centroid's).
    if prototype_norm == "class_mean":
        points = rescale_to_class_norm(points, x)
    return Quantization(points=points, weights=weights.astype(np.float64), counts=counts, nearest=nearest_rows)


@QUANTIZERS.register("ddoq")
def ddoq(x: np.ndarray, k: int, seed: int = 0, iterations: int = 50, restarts: int = 1, algorithm: str = "lloyd",
         minibatch_factor: int = 10, prototype_norm: str = "centroid") -> Quantization:
    """k-means centroids with their Voronoi masses as weights (DDOQ)."""
    return _quantize(x, k, seed, iterations, restarts, True, algorithm, minibatch_factor, prototype_norm)


@QUANTIZERS.register("kmeans")
def kmeans(x: np.ndarray, k: int, seed: int = 0, iterations: int = 50, restarts: int = 1, algorithm: str = "lloyd",
           minibatch_factor: int = 10, prototype_norm: str = "centroid") -> Quantization:
    """The same centroids with uniform weights (D4M)."""
    return _quantize(x, k, seed, iterations, restarts, False, algorithm, minibatch_factor, prototype_norm)
