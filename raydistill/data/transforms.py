"""Decode encoded images into fixed-size RGB arrays: short side resized to `size`, then a centre crop.

`decode_image` is the plain function; `decode_batch` maps it over a Ray numpy batch and drops what cannot be used,
recording each dropped id and its reason in a `SkipLedger`; `decode_dataset` runs that as CPU tasks on a Ray Dataset
of `{id, label, image: bytes}` rows.
"""

from __future__ import annotations

import io
import logging

import numpy as np
import ray
from PIL import Image

from raydistill.metrics import count

logger = logging.getLogger(__name__)

# Images with a shorter side are dropped as "too_small": upscaling a few pixels to the working size invents the image.
MIN_SIDE = 8
# Files (or tar members) above this many bytes are not read: sources hand them on as a null image, skipped as
# "too_large", so a hostile or mislabelled huge file cannot fill a read task's memory.
MAX_IMAGE_BYTES = 64 * 2**20
# Images whose header claims more pixels (after JPEG's draft scaling) are skipped as "too_large" before decoding:
# 16.7 Mpx is 50 MiB of RGB, and the header is all a decompression bomb needs to be caught by.
MAX_PIXELS = 4096 * 4096
# The formats the readers list (IMAGE_EXTENSIONS); Pillow's other plugins are never handed untrusted bytes.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")
SKIP_REASONS = ("corrupt", "truncated", "too_small", "too_large")


class SkippedImage(ValueError):
    """An image that cannot be used, with the reason it is skipped (one of SKIP_REASONS)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@ray.remote(num_cpus=0)
class SkipLedger:
    """Collects the ids of skipped images by reason, and of upsampled ones, once each (a retried decode task reports
    the same ids again)."""

    def __init__(self):
        self.reasons: dict[str, str] = {}
        self.upsampled: set[str] = set()

    def add(self, skipped: dict[str, str], upsampled: list[str] = ()) -> None:
        self.reasons.update(skipped)
        self.upsampled.update(upsampled)

    def summary(self, examples: int = 5) -> dict:
        by_reason: dict[str, list[str]] = {}
        for image_id, reason in sorted(self.reasons.items()):
            by_reason.setdefault(reason, []).append(image_id)
        return {"skipped_images": len(self.reasons),
                "skipped_by_reason": {reason: len(ids) for reason, ids in sorted(by_reason.items())},
                "skipped_examples": {reason: ids[:examples] for reason, ids in sorted(by_reason.items())},
                "upsampled_images": len(self.upsampled),
                "upsampled_examples": sorted(self.upsampled)[:examples]}


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB of any Pillow mode: 16- and 32-bit greyscale scaled to 8 bits, transparency composited onto white."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        values = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode != "I" or values.max() > 255 else 255.0
        img = Image.fromarray(np.clip(values / peak * 255 + 0.5, 0, 255).astype(np.uint8))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB")


def decode_image(data: bytes | None, size: int, crop_ratio: float = 1.0) -> np.ndarray:
    """Decodes one encoded image to an RGB `size` x `size` array.

    The short side is resized to `size / crop_ratio` (bicubic, antialiased when shrinking) and the centre
    `size` x `size` square is cut out, so nothing is stretched: torchvision's Resize + CenterCrop. An image already
    `size` x `size` keeps its exact pixels when `crop_ratio` is 1.

    Args:
        data: Encoded image bytes (JPEG, PNG, BMP or WebP), or None for an image a source left unread as over
            MAX_IMAGE_BYTES.
        size: Side of the output square, in pixels.
        crop_ratio: Share of the resized short side the crop keeps (ImageNet evaluation: 0.875).

    Returns:
        A uint8 array of shape (size, size, 3).

    Greyscale, palette, CMYK, 16-bit and transparent images are converted to 8-bit RGB (transparency onto white).

    Raises:
        SkippedImage: If the bytes are not a readable image of an accepted format ("corrupt"), end early
            ("truncated"), the image's short side is below MIN_SIDE ("too_small"), or it was not read, is over
            MAX_IMAGE_BYTES, or has more than MAX_PIXELS pixels ("too_large").
    """
    return _decode(data, size, crop_ratio)[0]


def _decode(data: bytes | None, size: int, crop_ratio: float) -> tuple[np.ndarray, bool]:
    """`decode_image`, and whether the image had to be upsampled (its short side was below `size / crop_ratio`)."""
    if data is None or len(data) > MAX_IMAGE_BYTES:
        raise SkippedImage("too_large", f"image file is over {MAX_IMAGE_BYTES} bytes")
    short_side = round(size / crop_ratio)
    # Pillow's decoders signal bad data with many types (OSError, SyntaxError, EOFError, struct.error, ...).
    try:
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as img:
            if min(img.size) < MIN_SIDE:
                raise SkippedImage("too_small", f"image is {img.size[0]}x{img.size[1]}, below {MIN_SIDE} px a side")
            upsampled = min(img.size) < short_side
            # JPEG can decode at 1/2, 1/4 or 1/8 scale straight from the DCT, far faster for large photos; draft
            # keeps both sides >= the request, so the short side still reaches `short_side` before the resize.
            img.draft("RGB", (short_side, short_side))
            if img.size[0] * img.size[1] > MAX_PIXELS:
                raise SkippedImage("too_large", f"image is {img.size[0]}x{img.size[1]}, over {MAX_PIXELS} pixels")
            img.load()
            rgb = _to_rgb(img)
    except SkippedImage:
        raise
    except Image.DecompressionBombError as e:
        raise SkippedImage("too_large", f"image too large: {e}") from e
    except Image.UnidentifiedImageError as e:
        raise SkippedImage("corrupt", f"cannot decode image: not a {', '.join(ACCEPTED_FORMATS)} image") from e
    except Exception as e:
        reason = "truncated" if "truncated" in str(e).lower() or isinstance(e, EOFError) else "corrupt"
        raise SkippedImage(reason, f"cannot decode image: {type(e).__name__}: {e}") from e

    # torchvision's Resize + CenterCrop, as the peers' loaders run them (its rounding: the long side truncated, the
    # crop's offset rounded), in Pillow alone: importing torch would add about 250 MiB to every decode task.
    width, height = rgb.size
    scale = short_side / min(width, height)
    new_size = (short_side, int(height * scale)) if width <= height else (int(width * scale), short_side)
    if new_size != rgb.size:
        rgb = rgb.resize(new_size, Image.Resampling.BICUBIC)  # Pillow antialiases when it shrinks
    left, top = round((new_size[0] - size) / 2), round((new_size[1] - size) / 2)
    rgb = rgb.crop((left, top, left + size, top + size))
    return np.asarray(rgb, dtype=np.uint8), upsampled


def decode_batch(batch: dict[str, np.ndarray], size: int, stage: str = "", run: str = "",
                 ledger: "ray.actor.ActorHandle | None" = None, crop_ratio: float = 1.0) -> dict[str, np.ndarray]:
    """Decodes a Ray numpy batch of encoded images; unusable images are logged with their id and dropped.

    Args:
        batch: Columns `id` (str), `label` (int) and `image` (encoded bytes objects, None for an image a source left
            unread as over MAX_IMAGE_BYTES).
        size: Side of the output images, in pixels.
        stage, run: tags of the decoded/skipped counters on the Ray dashboard.
        ledger: a SkipLedger that is told each dropped id and why, and each upsampled id (waited for, so none is
            lost when the task ends).
        crop_ratio: as in `decode_image`.

    Returns:
        Columns `id`, `label` (int32) and `image` (uint8, shape (N, size, size, 3)) for the images that decoded.
    """
    images, skipped, upsampled = [], {}, []
    keep = np.zeros(len(batch["id"]), dtype=bool)
    for i, (image_id, data) in enumerate(zip(batch["id"], batch["image"])):
        try:
            image, was_upsampled = _decode(data, size, crop_ratio)
        except SkippedImage as e:
            # One bad file must not fail a job over millions: it is counted, by reason, and left out.
            logger.warning("dropping image %s (%s): %s", image_id, e.reason, e)
            skipped[str(image_id)] = e.reason
            continue
        images.append(image)
        if was_upsampled:
            upsampled.append(str(image_id))
        keep[i] = True
    if (skipped or upsampled) and ledger is not None:
        ray.get(ledger.add.remote(skipped, upsampled))
    count("raydistill_images_decoded", int(keep.sum()), stage, run)
    count("raydistill_images_skipped", int((~keep).sum()), stage, run)
    return {
        "id": batch["id"][keep],
        "label": np.asarray(batch["label"])[keep].astype(np.int32),
        "image": np.stack(images) if images else np.zeros((0, size, size, 3), dtype=np.uint8),
    }


DECODE_TASK_MEMORY = 256 * 2**20
DECODE_BATCH_ROWS = 256


def decode_batch_rows(size: int) -> int:
    """Images per decode call: 256, fewer where a batch of them (and the decoder's copy) would outgrow the task's
    memory (prior-sized images: 85 at 512 px)."""
    return max(1, min(DECODE_BATCH_ROWS, DECODE_TASK_MEMORY // (3 * size * size * 3)))


def decode_dataset(ds: ray.data.Dataset, size: int, stage: str = "", run: str = "",
                   ledger: "ray.actor.ActorHandle | None" = None, block_rows: int | None = None,
                   crop_ratio: float = 1.0) -> ray.data.Dataset:
    """Decodes and resizes every image of a Ray Dataset in CPU tasks.

    Args:
        ds: Rows `{id, label, image}` with encoded image bytes, as `ImageSource.dataset()` gives.
        size: Side of the output images, in pixels.
        stage, run: tags of the decoded/skipped counters on the Ray dashboard.
        ledger: a SkipLedger to record the dropped and upsampled images in.
        block_rows: cut the decoded images into blocks of at most this many rows. A block is one call of the actor
            pool that follows, so blocks of a few model batches spread the work evenly over the actors to the end
            (small images otherwise make blocks of thousands of rows, and the last ones run on one actor alone).
        crop_ratio: as in `decode_image` (the evaluation crop).

    Returns:
        A lazy Dataset of rows `{id: str, label: int32, image: uint8 (size, size, 3)}` without the undecodable images.
    """
    decoded = ds.map_batches(
        decode_batch,
        fn_kwargs={"size": size, "stage": stage, "run": run, "ledger": ledger, "crop_ratio": crop_ratio},
        batch_format="numpy",
        batch_size=decode_batch_rows(size),
        num_cpus=1,
        # Room for a batch of decoded images and the decoder's buffers. Asking for it also keeps Ray Data from fusing
        # the decoding into a following model actor pool that asks for the same CPUs (it fuses operators whose
        # remote arguments are equal), which would decode serially inside the actor, not in tasks beside it.
        memory=DECODE_TASK_MEMORY,
    )
    return decoded.repartition(target_num_rows_per_block=block_rows) if block_rows else decoded
