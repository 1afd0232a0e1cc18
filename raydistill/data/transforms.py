"""Decode encoded images into fixed-size RGB arrays: short side resized to `size`, then a centre crop.

`decode_image` is the plain function; `decode_batch` maps it over a Ray numpy batch and drops what cannot be decoded;
`decode_dataset` runs that as CPU tasks on a Ray Dataset of `{id, label, image: bytes}` rows.
"""

from __future__ import annotations

import io
import logging

import numpy as np
import ray
from PIL import Image

from raydistill.metrics import count

logger = logging.getLogger(__name__)


def decode_image(data: bytes, size: int) -> np.ndarray:
    """Decodes one encoded image to an RGB `size` x `size` array.

    The short side is resized to `size` (bicubic) and the centre `size` x `size` square is cut out, so nothing is
    stretched. An image already `size` x `size` keeps its exact pixels.

    Args:
        data: Encoded image bytes (JPEG, PNG, BMP, WebP or anything else Pillow reads).
        size: Side of the output square, in pixels.

    Returns:
        A uint8 array of shape (size, size, 3).

    Raises:
        ValueError: If the bytes are not a readable image.
    """
    # Pillow's decoders signal corrupt data with many types (OSError, SyntaxError, EOFError, struct.error,
    # DecompressionBombError, ...); to the caller they all mean the same thing: these bytes are not a usable image.
    try:
        with Image.open(io.BytesIO(data)) as img:
            # JPEG can decode at 1/2, 1/4 or 1/8 scale straight from the DCT, far faster for large photos; draft
            # keeps both sides >= the request, so the short side still reaches `size` before the bicubic resize.
            img.draft("RGB", (size, size))
            rgb = img.convert("RGB")
    except Exception as e:
        raise ValueError(f"cannot decode image: {type(e).__name__}: {e}") from e

    width, height = rgb.size
    if (width, height) != (size, size):
        scale = size / min(width, height)
        new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
        rgb = rgb.resize(new_size, Image.Resampling.BICUBIC)
        left = (new_size[0] - size) // 2
        top = (new_size[1] - size) // 2
        rgb = rgb.crop((left, top, left + size, top + size))
    return np.asarray(rgb, dtype=np.uint8)


def decode_batch(batch: dict[str, np.ndarray], size: int, stage: str = "", run: str = "") -> dict[str, np.ndarray]:
    """Decodes a Ray numpy batch of encoded images; undecodable images are logged with their id and dropped.

    Args:
        batch: Columns `id` (str), `label` (int) and `image` (encoded bytes objects).
        size: Side of the output images, in pixels.
        stage, run: tags of the decoded/skipped counters on the Ray dashboard.

    Returns:
        Columns `id`, `label` (int32) and `image` (uint8, shape (N, size, size, 3)) for the images that decoded.
    """
    images = []
    keep = np.zeros(len(batch["id"]), dtype=bool)
    for i, (image_id, data) in enumerate(zip(batch["id"], batch["image"])):
        try:
            images.append(decode_image(data, size))
        except ValueError as e:
            # One bad file must not fail a job over millions; the caller counts the gap between index and output.
            logger.warning("dropping image %s: %s", image_id, e)
            continue
        keep[i] = True
    count("raydistill_images_decoded", int(keep.sum()), stage, run)
    count("raydistill_images_skipped", int((~keep).sum()), stage, run)
    return {
        "id": batch["id"][keep],
        "label": np.asarray(batch["label"])[keep].astype(np.int32),
        "image": np.stack(images) if images else np.zeros((0, size, size, 3), dtype=np.uint8),
    }


def decode_dataset(ds: ray.data.Dataset, size: int, stage: str = "", run: str = "") -> ray.data.Dataset:
    """Decodes and resizes every image of a Ray Dataset in CPU tasks.

    Args:
        ds: Rows `{id, label, image}` with encoded image bytes, as `ImageSource.dataset()` gives.
        size: Side of the output images, in pixels.
        stage, run: tags of the decoded/skipped counters on the Ray dashboard.

    Returns:
        A lazy Dataset of rows `{id: str, label: int32, image: uint8 (size, size, 3)}` without the undecodable images.
    """
    return ds.map_batches(
        decode_batch,
        fn_kwargs={"size": size, "stage": stage, "run": run},
        batch_format="numpy",
        batch_size=256,
        num_cpus=1,
    )
