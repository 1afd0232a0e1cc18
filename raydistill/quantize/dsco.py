"""DsCo's prototypes: the starting noises of its optimised sampling chain, one Latin-hypercube draw per class.

DsCo does not summarise the class's latents: it samples from pure noise and steers the chain towards the class's
feature quantiles (`raydistill.synthesize.dsco`, run by the synthesize stage with `--decode dsco`). Its quantizer
only fixes where each class's k chains start, seeded, so that the quantize stage's resume and the run's
determinism cover DsCo too. The class's latents give the dimension (and each start's nearest real latent, for
reference); the weights are uniform.
"""

from __future__ import annotations

import numpy as np
import torch

from raydistill.quantize.base import QUANTIZERS, Quantization
from raydistill.quantize.metrics import cells_and_nearest
from raydistill.synthesize.dsco import latin_hypercube_normal


@QUANTIZERS.register("dsco")
def dsco_starts(x: np.ndarray, k: int, seed: int = 0) -> Quantization:
    """k standard-normal starting noises of x's dimension, every coordinate covering k equal-probability strata."""
    points = latin_hypercube_normal(k, (x.shape[1],), torch.Generator().manual_seed(seed)).numpy()
    counts, rows = cells_and_nearest(x, points)
    return Quantization(points=points, weights=np.full(k, 1.0 / k), counts=counts, nearest=rows)
