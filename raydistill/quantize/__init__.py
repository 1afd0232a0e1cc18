"""Per-class quantizers (one module each) and their metrics. Importing this package fills QUANTIZERS."""

from raydistill.quantize import d3hr, dsco, kmeans, random_subset  # noqa: F401  (registers the quantizers)
from raydistill.quantize.base import QUANTIZERS, Quantization, list_quantizers
from raydistill.quantize.metrics import nearest, voronoi_counts, wasserstein2

__all__ = ["QUANTIZERS", "Quantization", "list_quantizers", "nearest", "voronoi_counts", "wasserstein2"]
