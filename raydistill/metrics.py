"""Metrics for the Ray dashboard: counters and gauges every stage reports, tagged by stage and run.

Ray exports them in Prometheus format from each worker (names gain a `ray_` prefix there). Outside a Ray worker
they do nothing, so the numerical cores stay callable in plain tests.
"""

from __future__ import annotations

from functools import lru_cache

from ray.util.metrics import Counter, Gauge

TAG_KEYS = ("stage", "run")

COUNTERS = {
    "raydistill_images_decoded": "Images decoded and resized",
    "raydistill_images_skipped": "Images that could not be decoded (counted and skipped)",
    "raydistill_images_encoded": "Images encoded to latents by the prior",
    "raydistill_images_inverted": "Latents DDIM-inverted to noise",
    "raydistill_classes_quantized": "Classes whose prototypes are written",
    "raydistill_prototypes_synthesized": "Distilled images written",
    "raydistill_images_trained": "Distilled images trained on, over all epochs and workers (kept after training ends)",
    "raydistill_images_evaluated": "Validation images scored (per pass over all students)",
    "raydistill_images_scored": "Real training images scored for doping by their clarity",
}
GAUGES = {
    "raydistill_train_epoch": "Epochs finished by the student being trained",
    "raydistill_train_loss": "Weighted training loss of the last epoch",
    "raydistill_train_images_per_second": "Training throughput of the last epoch, all workers",
    "raydistill_prior_train_step": "Optimiser steps done by `prior train`",
    "raydistill_prior_train_loss": "Denoising loss of `prior train` since its last checkpoint",
}


@lru_cache(maxsize=None)
def _metric(name: str) -> Counter | Gauge:
    if name in COUNTERS:
        return Counter(name, description=COUNTERS[name], tag_keys=TAG_KEYS)
    return Gauge(name, description=GAUGES[name], tag_keys=TAG_KEYS)


def count(name: str, value: float, stage: str, run: str) -> None:
    """Adds to a counter (ignores zero: Ray counters take only positive increments)."""
    if value > 0:
        _metric(name).inc(value, tags={"stage": stage, "run": run})


def record(name: str, value: float, stage: str, run: str) -> None:
    """Sets a gauge."""
    _metric(name).set(value, tags={"stage": stage, "run": run})
