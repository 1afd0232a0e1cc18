"""What every quantizer returns, and the registry they are filed in.

A quantizer maps one class's points x (N x D) to K prototypes with weights: `quantizer(x, k, seed=..., **options)
-> Quantization`, where the options are keyword parameters named as `quantize.*` config keys (the quantize stage
passes each quantizer the keys it declares).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from raydistill.registry import Registry


@dataclass(frozen=True)
class Quantization:
    """K prototypes of one class.

    Attributes:
        points: (K, D) float32 prototypes.
        weights: (K,) float64 training weights, summing to 1.
        counts: (K,) int64 class points in each prototype's Voronoi cell.
        nearest: (K,) int64 row (into x) of the real point nearest to each prototype.
    """

    points: np.ndarray
    weights: np.ndarray
    counts: np.ndarray
    nearest: np.ndarray


Quantizer = Callable[..., Quantization]
QUANTIZERS: Registry[Quantizer] = Registry("quantizer")


def list_quantizers() -> list[str]:
    return QUANTIZERS.names()
