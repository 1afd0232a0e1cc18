"""Reading image data sets: shard formats to Ray Datasets of encoded images, and the decode/resize transform."""

from raydistill.data.sources import (
    SOURCES,
    DigitsSource,
    ImageFolderSource,
    ImageSource,
    Location,
    ParquetSource,
    WebDatasetSource,
    open_source,
)
from raydistill.data.transforms import decode_batch, decode_dataset, decode_image

__all__ = [
    "SOURCES",
    "DigitsSource",
    "ImageFolderSource",
    "ImageSource",
    "Location",
    "ParquetSource",
    "WebDatasetSource",
    "decode_batch",
    "decode_dataset",
    "decode_image",
    "open_source",
]
