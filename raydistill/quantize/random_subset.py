"""The random real subset baseline: K real points of the class drawn without replacement, uniform weights."""

from __future__ import annotations

import numpy as np

from raydistill.quantize.base import QUANTIZERS, Quantization
from raydistill.quantize.metrics import voronoi_counts


@QUANTIZERS.register("random")
def random_subset(x: np.ndarray, k: int, seed: int = 0) -> Quantization:
    """K distinct real points chosen with a seeded generator."""
    rows = np.sort(np.random.default_rng(seed).choice(len(x), size=k, replace=False)).astype(np.int64)
    return Quantization(
        points=np.ascontiguousarray(x[rows], dtype=np.float32),
        weights=np.full(k, 1.0 / k),
        counts=voronoi_counts(x, x[rows]),
        nearest=rows,
    )
