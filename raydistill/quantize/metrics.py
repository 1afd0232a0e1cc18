"""Voronoi cells and Wasserstein-2 distances between a class's points and its weighted prototypes."""

from __future__ import annotations

import faiss
import numpy as np
import ot


def nearest(queries: np.ndarray, base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index into `base` of each query's nearest neighbour (L2) and the squared distance to it."""
    index = faiss.IndexFlatL2(base.shape[1])
    index.add(np.ascontiguousarray(base, dtype=np.float32))
    distances, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), 1)
    return rows[:, 0].astype(np.int64), distances[:, 0].astype(np.float64)


def voronoi_counts(x: np.ndarray, points: np.ndarray) -> np.ndarray:
    """How many of x fall in each point's Voronoi cell."""
    cells, _ = nearest(x, points)
    return np.bincount(cells, minlength=len(points)).astype(np.int64)


def cells_and_nearest(x: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How many of x fall in each point's Voronoi cell, and the row of x nearest each point: both from one n x k
    matrix product, 2-4x faster than the two faiss searches at k = 10-100 on 1,300 x 4,096 (faiss skips BLAS for
    fewer than 20 queries)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    points = np.ascontiguousarray(points, dtype=np.float32)
    distances = np.einsum("ij,ij->i", points, points)[None] - 2 * (x @ points.T)  # |x|^2 does not change a cell
    counts = np.bincount(distances.argmin(axis=1), minlength=len(points)).astype(np.int64)
    distances += np.einsum("ij,ij->i", x, x)[:, None]
    return counts, distances.argmin(axis=0).astype(np.int64)


def wasserstein2(x: np.ndarray, points: np.ndarray, weights: np.ndarray) -> float:
    """W2 between the empirical measure of x (uniform) and sum_k weights_k delta_{points_k}.

    Solved exactly as a transport problem (POT's network simplex) on squared Euclidean costs, in float64.
    With Voronoi weights this equals sqrt(mean squared distance to the nearest point): DDOQ's Proposition 1
    says no other weights on the same points do better.
    """
    x64 = x.astype(np.float64)
    p64 = points.astype(np.float64)
    costs = ot.dist(x64, p64, metric="sqeuclidean")
    source = np.full(len(x64), 1.0 / len(x64))
    target = weights.astype(np.float64) / weights.sum()
    return float(np.sqrt(max(ot.emd2(source, target, costs, numItermax=10_000_000), 0.0)))
