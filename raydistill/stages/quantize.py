"""quantize: one Ray task per group of classes runs the quantizer on each class's latents; writes prototypes/.

Tasks get paths, not arrays: each reads its classes' `latents/label=c/` partitions and writes one
`class-c.parquet` per class, then `_class-c.json` with its statistics and the parquet's size and checksum. A run
interrupted mid-stage keeps the classes it finished: the rerun (same fingerprint, in `_STARTED.json`) checks each
kept file against its record and quantizes only the rest. Each class has its own seed, so the result is the same.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from raydistill.errors import UserError
from raydistill.metrics import count
from raydistill.quantize import QUANTIZERS, wasserstein2
from raydistill.rundir import RunDir
from raydistill.stages.context import Context, DistilledVariant, StageOutput
from raydistill.stages.encode import fixed_size_list, written_class_counts
from raydistill.stages.progress import progress_bar, terminal

log = logging.getLogger("raydistill")


def read_class_latents(rundir: RunDir, label: int, column: str = "latent") -> tuple[np.ndarray, np.ndarray]:
    """(ids, points (N, D) float32) of one class from latents/ (`column` "latent" or "noise"), in id order so
    reruns see the same rows."""
    table = pq.read_table(rundir.path("latents", f"label={label}"), filesystem=rundir.fs, columns=["id", column])
    table = table.sort_by("id")
    column = table.column(column).combine_chunks()
    latents = column.flatten().to_numpy().reshape(len(table), -1)
    return np.asarray(table.column("id").to_pylist(), dtype=object), latents


def quantizer_options(method: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The settings the method's quantizer takes, picked by its keyword parameters."""
    parameters = inspect.signature(QUANTIZERS.get(method)).parameters
    return {name: value for name, value in settings.items() if name in parameters and name not in ("x", "k", "seed")}


def quantize_class(rundir: RunDir, folder: str, label: int, method: str, ipc: int, seed: int, space: str,
                   options: dict[str, Any]) -> dict:
    """Quantizes one class's latents or noise, writes its prototypes and returns its statistics (no Ray)."""
    ids, x = read_class_latents(rundir, label, "noise" if space == "noise" else "latent")
    ipc = min(ipc, len(x))
    result = QUANTIZERS.get(method)(x, ipc, seed=seed * 1_000_003 + label, **quantizer_options(method, options))
    table = pa.table({
        "label": pa.array(np.full(ipc, label, dtype=np.int32)),
        "index": pa.array(np.arange(ipc, dtype=np.int32)),
        "point": fixed_size_list(result.points),
        "weight": pa.array(result.weights),
        "count": pa.array(result.counts),
        "method": pa.array([method] * ipc),
        "space": pa.array([space] * ipc),
        "nearest_id": pa.array(ids[result.nearest].astype(str)),
    })
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    data = sink.getvalue().to_pybytes()
    rundir.write_bytes(data, folder, class_file(label))
    uniform = np.full(ipc, 1.0 / ipc)
    voronoi = result.counts / result.counts.sum()
    stats = {
        "label": label,
        "images": len(x),
        "prototypes": ipc,
        "w2_weighted": wasserstein2(x, result.points, voronoi),
        "w2_uniform": wasserstein2(x, result.points, uniform),
        "weight_min": float(result.weights.min()),
        "weight_max": float(result.weights.max()),
        "empty_cells": int((result.counts == 0).sum()),
    }
    record = {"size": len(data), "blake2b": hashlib.blake2b(data, digest_size=16).hexdigest()}
    rundir.write_json({"stats": stats, "file": record}, folder, f"_{class_file(label)}.json")
    return stats


def class_file(label: int) -> str:
    return f"class-{label:05d}.parquet"


def finished_classes(rundir: RunDir, folder: str, fingerprint: str) -> dict[int, dict]:
    """Statistics of the classes an interrupted run of this same stage finished, whose files are intact; the
    folder is emptied (and claimed for `fingerprint`) when it holds another config's work."""
    started = rundir.read_json(folder, "_STARTED.json")
    if started is None or started.get("fingerprint") != fingerprint:
        rundir.reset(folder)
        rundir.write_json({"fingerprint": fingerprint}, folder, "_STARTED.json")
        return {}
    done = {}
    for path in rundir.files(folder, suffix=".parquet"):
        name = path.rsplit("/", 1)[1]
        saved = rundir.read_json(folder, f"_{name}.json")
        if saved and not rundir.check({f"{folder}/{name}": saved["file"]}):
            done[saved["stats"]["label"]] = saved["stats"]
    return done


@ray.remote(num_cpus=1)
def _quantize_classes(run_uri: str, folder: str, labels: list[int], **kwargs) -> list[dict]:
    import faiss

    faiss.omp_set_num_threads(1)  # one CPU per task; many tasks run side by side
    rundir = RunDir(run_uri)
    stats = []
    for label in labels:
        stats.append(quantize_class(rundir, folder, label, **kwargs))
        count("raydistill_classes_quantized", 1, "quantize", rundir.name)
    return stats


def check_class_sizes(counts: dict[int, int], class_names: list[str], ipc: int, allow_fewer: bool = False) -> None:
    """Every class must have an image, and at least IPC unless `allow_fewer`; otherwise a clear error."""
    for label, name in enumerate(class_names):
        have = counts.get(label, 0)
        if have == 0:
            raise UserError(f"class {name!r} (label {label}) has no usable images; add images or remove the class")
        if have < ipc and not allow_fewer:
            raise UserError(
                f"class {name!r} (label {label}) has {have} usable images but --ipc is {ipc}; "
                f"lower --ipc to at most {have}, add images (or raise --max-per-class), or pass "
                f"--set quantize.allow_fewer=true to give such classes one prototype per image"
            )


def prototypes_per_class(counts: dict[int, int], ipc: int) -> dict[int, int]:
    """IPC for each class, or all its images where it has fewer (with `quantize.allow_fewer`)."""
    return {label: min(ipc, have) for label, have in counts.items()}


def run_variant(ctx: Context, variant: DistilledVariant, labels: list[int], fingerprint: str) -> tuple[int, list[dict]]:
    cfg = ctx.config
    folder = variant.folder("prototypes")
    done = finished_classes(ctx.rundir, folder, fingerprint)
    if done:
        log.info("quantize %s: %d of %d classes finished before, kept", folder, len(done), len(labels))
    labels = [label for label in labels if label not in done]
    groups = [labels[i:i + cfg.quantize.classes_per_task] for i in range(0, len(labels), cfg.quantize.classes_per_task)]
    refs = [
        _quantize_classes.options(num_gpus=cfg.quantize.gpus_per_task).remote(
            ctx.rundir.uri, folder, group, method=variant.method, ipc=cfg.quantize.ipc, seed=cfg.seed,
            space=cfg.quantize.space, options=dataclasses.asdict(cfg.quantize),
        )
        for group in groups
    ]
    new: list[dict] = []
    with progress_bar(len(labels), f"quantize {folder}", "class", terminal()) as bar:
        while refs:
            ready, refs = ray.wait(refs, num_returns=1)
            chunk = ray.get(ready[0])
            new += chunk
            bar.update(len(chunk))
    stats = sorted([*done.values(), *new], key=lambda s: s["label"])
    ctx.rundir.write_json(stats, folder, "_class_stats.json")
    return sum(s["prototypes"] for s in stats), stats


def summarise(stats: list[dict]) -> dict:
    weighted = np.array([s["w2_weighted"] for s in stats])
    uniform = np.array([s["w2_uniform"] for s in stats])
    return {
        "w2_weighted": float(weighted.mean()),
        "w2_uniform": float(uniform.mean()),
        "w2_reduction": float(np.mean(1 - weighted / np.maximum(uniform, 1e-12))),
        "weight_max_over_min": float(np.max([s["weight_max"] / max(s["weight_min"], 1e-12) for s in stats])),
        "empty_cells": int(sum(s["empty_cells"] for s in stats)),
    }


def run(ctx: Context, fingerprint: str) -> StageOutput:
    counts = written_class_counts(ctx, "latents")  # after undecodable images were skipped
    check_class_sizes(counts, ctx.class_names, ctx.config.quantize.ipc, ctx.config.quantize.allow_fewer)
    rows, extra = 0, {}
    for variant in ctx.variants:
        written, stats = run_variant(ctx, variant, sorted(counts), fingerprint)
        rows += written
        extra[variant.key] = summarise(stats)
    return StageOutput(rows=rows, extra=extra)
