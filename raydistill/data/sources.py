"""Readers that turn a user's `--data` argument into an `ImageSource`.

A source is cheap to index (ids and labels only, no image decoded) and gives a Ray Dataset of raw encoded images on
demand. Formats live in the `SOURCES` registry: parquet shards, ImageFolder trees, webdataset tars, and the built-in
scikit-learn digits. Paths are local or any URI pyarrow.fs understands (s3://, gs://, file://).

Splits are found the same way for every format: `train/` and `val/` (or `validation/`, `test/`) folders under the
root, or, for shard formats, file names starting with `train` or `val`/`validation`/`test`. A validation set beats a
test set when both are present.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import io
import json
import os
import posixpath
import re
import tarfile
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
from PIL import Image

from raydistill.data.classes import check_class_names
from raydistill.data.transforms import MAX_IMAGE_BYTES
from raydistill.digests import listing_digest
from raydistill.errors import UserError
from raydistill.registry import Registry

SPLITS = ("train", "val")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
WEBDATASET_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
ROW_SCHEMA = pa.schema([("id", pa.string()), ("label", pa.int32()), ("image", pa.binary())])

# Rows per chunk of iter_index: large enough that per-chunk overhead vanishes, small enough to stream ImageNet.
INDEX_CHUNK_ROWS = 65_536
# Files (or shard rows) per Ray block when reading images: one read task handles this many.
READ_BLOCK_ROWS = 256
DIGITS_VAL_FRACTION = 0.2
# Data without class names numbers its classes 0 .. largest label; a label past this is garbage, not a class (and
# would make a list of that many names).
MAX_UNNAMED_CLASSES = 100_000

# Folder names and file-name prefixes that mark a split; "validation" counts as "val".
_SPLIT_ALIASES = {"train": "train", "val": "val", "validation": "val", "test": "test"}
# Which marked sets serve each split, best first.
_SPLIT_CHOICES = {"train": ("train",), "val": ("val", "test")}
_SPLIT_PREFIX = re.compile(r"^(train|validation|val|test)(?![a-z])", re.IGNORECASE)
# webdataset's own rule: the key is the member path up to the first dot of its file name, the rest is the extension.
_WEBDATASET_MEMBER = re.compile(r"^((?:.*/)?[^./]+)\.([^/]*)$")
_COMPRESSED_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar.zst", ".tar.zstd")
_COMPRESSION_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}


class ImageSource(abc.ABC):
    """One split of a labelled image set.

    Attributes:
        uri: Where the data lives (an absolute local path, a URI, or "digits").
        split: "train" or "val".
        class_names: Class names; the index is the label.
    """

    uri: str
    split: str
    class_names: list[str]

    @abc.abstractmethod
    def iter_index(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Streams the index without decoding images.

        Yields:
            Chunks `(ids, labels)`: an object array of str and an int32 array of the same length.
        """

    @abc.abstractmethod
    def dataset(self, keep_ids: frozenset[str] | None = None) -> ray.data.Dataset:
        """Gives the images as a lazy Ray Dataset.

        Args:
            keep_ids: Only these ids are kept when given.

        Returns:
            Rows `{"id": str, "label": int32, "image": bytes}` with the image still encoded (PNG, JPEG, ...).
        """

    @abc.abstractmethod
    def content_digest(self) -> str:
        """A digest of the data's content that changes when a file is rewritten in place under the same name (for
        files: their relative paths, sizes and modification times, from one listing); a constant for built-in data.
        """

    def index(self) -> tuple[np.ndarray, np.ndarray]:
        """Reads the whole index into memory: `(ids, labels)` as `iter_index` yields them, concatenated."""
        chunks = list(self.iter_index())
        if not chunks:
            return np.empty(0, dtype=object), np.empty(0, dtype=np.int32)
        return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r}, split={self.split!r})"


@dataclasses.dataclass(frozen=True)
class Location:
    """What `open_source` found at a path, handed to the format's factory.

    Attributes:
        uri: The data path as a readable string, for messages and `ImageSource.uri`.
        fs: The filesystem holding it.
        root: The folder the user named (a single file's own folder).
        split_dirs: Split folders under the root, by split ("train", "val", "test"); empty if the root has none.
        split_dir: The split folder the wanted split reads from, or None when the root is not split into folders.
        files: Every non-hidden file under `split_dir` (else under the root), or the single file named.
        single_file: Whether the user named one file rather than a folder.
    """

    uri: str
    fs: pafs.FileSystem
    root: str
    split_dirs: dict[str, str] = dataclasses.field(default_factory=dict)
    split_dir: str | None = None
    files: tuple[str, ...] = ()
    single_file: bool = False

    @property
    def base(self) -> str:
        """The folder whose files belong to the split: the split folder if there is one, else the root."""
        return self.split_dir or self.root

    def show(self, path: str) -> str:
        """`path` as the user would write it: their uri plus the part below the root."""
        if self.single_file:
            return self.uri
        below = _relative(path, self.root)
        return f"{self.uri}/{below}" if below else self.uri


SOURCES: Registry[Callable[[Location | None, str], ImageSource]] = Registry("data format")


def open_source(spec: str, split: str = "train", fmt: str = "auto") -> ImageSource:
    """Opens the data a user named with `--data` (or `--val-data`).

    Args:
        spec: "digits" (the built-in scikit-learn set), or a local path or pyarrow.fs URI (s3://, gs://, file://)
            of a folder or single file.
        split: "train" or "val".
        fmt: "auto" to detect the format from the files, or one of `SOURCES.names()`.

    Returns:
        The source for that split.

    Raises:
        UserError: The path is missing or empty, holds no files of a known format, `fmt` or `split` is unknown, or
            the split is not there (for "val": pass --val-data).
    """
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if fmt != "auto":
        SOURCES.get(fmt)  # fail on a bad name before touching storage
    if spec == "digits" or fmt == "digits":
        if spec != "digits" or fmt not in ("auto", "digits"):
            raise UserError(
                f"format {fmt!r} with data {spec!r}: 'digits' is a built-in data set with no path; "
                "pass --data digits with the format on auto, or a path with another format"
            )
        return SOURCES.get("digits")(None, split)
    location = _locate(spec, split)
    if fmt == "auto":
        fmt = _detect_format(location)
    return SOURCES.get(fmt)(location, split)


# ---------------------------------------------------------------------------------------------------------------------
# Finding the files


def _locate(spec: str, split: str) -> Location:
    fs, path, uri = _filesystem(spec)
    try:
        info = fs.get_file_info(path)
    except OSError as e:
        raise UserError(f"cannot read data path {uri!r}: {e}; check the path and your storage credentials") from e
    if info.type == pafs.FileType.NotFound:
        raise UserError(
            f"data path {uri!r} does not exist: pass an existing folder, file or URI (s3://, gs://), or 'digits'"
        )
    if info.type == pafs.FileType.File:
        location = Location(uri, fs, posixpath.dirname(path), files=(path,), single_file=True)
        if split != "train":
            raise _missing_split(location, split)
        return location

    split_dirs: dict[str, str] = {}
    for entry in sorted(fs.get_file_info(pafs.FileSelector(path)), key=lambda e: e.base_name):
        tag = _SPLIT_ALIASES.get(entry.base_name.lower())
        if entry.type == pafs.FileType.Directory and tag is not None:
            split_dirs.setdefault(tag, entry.path)
    split_dir = None
    if split_dirs:
        split_dir = next((split_dirs[tag] for tag in _SPLIT_CHOICES[split] if tag in split_dirs), None)
        if split_dir is None:
            raise _missing_split(Location(uri, fs, path, split_dirs), split)
    location = Location(uri, fs, path, split_dirs, split_dir)
    files = _list_files(fs, location.base)
    if not files:
        raise UserError(
            f"data folder {location.show(location.base)!r} is empty: put image data in it or pass another path"
        )
    return dataclasses.replace(location, files=tuple(files))


def _filesystem(spec: str) -> tuple[pafs.FileSystem, str, str]:
    """Returns (filesystem, path on it, uri for messages)."""
    if "://" in spec:
        try:
            fs, path = pafs.FileSystem.from_uri(spec)
        except (pa.ArrowException, OSError) as e:
            raise UserError(
                f"cannot open data URI {spec!r}: {e}; pass a local path or a URI pyarrow.fs knows "
                "(s3://, gs://, file://)"
            ) from e
        return fs, path.rstrip("/") or "/", spec.rstrip("/")
    path = os.path.abspath(os.path.expanduser(spec))
    return pafs.LocalFileSystem(), path, path


def _list_files(fs: pafs.FileSystem, folder: str) -> list[str]:
    """Every regular file under `folder`, sorted, leaving out hidden files and folders (.git, .ipynb_checkpoints)."""
    infos = fs.get_file_info(pafs.FileSelector(folder, recursive=True))
    return sorted(
        info.path
        for info in infos
        if info.type == pafs.FileType.File
        and not any(part.startswith(".") for part in _relative(info.path, folder).split("/"))
    )


def _relative(path: str, folder: str) -> str:
    return path[len(folder) :].lstrip("/")


def _extension(path: str) -> str:
    return posixpath.splitext(path)[1].lower()


def _is_compressed_tar(path: str) -> bool:
    return path.lower().endswith(_COMPRESSED_TAR_SUFFIXES)


def _detect_format(location: Location) -> str:
    extensions = {_extension(f) for f in location.files}
    if ".parquet" in extensions:
        return "parquet"
    if ".tar" in extensions:
        return "webdataset"
    if any(_extension(f) in IMAGE_EXTENSIONS and "/" in _relative(f, location.base) for f in location.files):
        return "imagefolder"
    if any(_is_compressed_tar(f) for f in location.files):
        return "webdataset"  # which refuses them, saying to decompress them
    found = ", ".join(sorted(e or "(none)" for e in extensions)[:10])
    raise UserError(
        f"no data of a known format in {location.show(location.base)!r} (file extensions "
        f"found: {found}); expected *.parquet shards, *.tar webdataset shards, or one folder per class of images "
        f"({', '.join(IMAGE_EXTENSIONS)})"
    )


def _missing_split(location: Location, split: str) -> UserError:
    if split == "val":
        return UserError(
            f"no val split in {location.uri!r}: expected a val/, validation/ or test/ folder, or files named val*, "
            "validation* or test*; pass --val-data PATH to name the validation set"
        )
    return UserError(
        f"no train split in {location.uri!r}: expected a train/ folder or files named train* (or files with no "
        "split prefix at all); pass --data PATH to name the training set, or use this data with --val-data"
    )


def _split_by_prefix(location: Location, files: list[str], split: str) -> list[str]:
    """The shard files of `split`: all of a split folder, else those whose names start with the split's prefix."""
    if location.split_dir is not None or location.single_file:
        return files
    tags = [_split_tag(posixpath.basename(f)) for f in files]
    if not any(tags):
        if split == "train":
            return files
        raise _missing_split(location, split)
    for wanted in _SPLIT_CHOICES[split]:
        chosen = [f for f, tag in zip(files, tags) if tag == wanted]
        if chosen:
            return chosen
    raise _missing_split(location, split)


def _split_tag(name: str) -> str | None:
    match = _SPLIT_PREFIX.match(name)
    return _SPLIT_ALIASES[match.group(1).lower()] if match else None


def _read_class_names(location: Location) -> list[str] | None:
    """Class names from a dataset.json ({"classes": [...]}) in the split folder or the root, if there is one."""
    for folder in dict.fromkeys([location.base, location.root]):
        path = f"{folder}/dataset.json"
        if location.fs.get_file_info(path).type != pafs.FileType.File:
            continue
        try:
            with location.fs.open_input_stream(path) as f:
                meta = json.loads(f.read())
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {location.show(path)}: {e}; fix or remove it") from e
        classes = meta.get("classes") if isinstance(meta, dict) else None
        if classes is None:
            return None
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise UserError(
                f"'classes' in {location.show(path)} must be a list of class-name strings "
                "(index = label); fix or remove it"
            )
        check_class_names(classes, location.show(path))
        return classes
    return None


def _numbered_classes(source: ImageSource) -> list[str]:
    """["0", "1", ..., str(max label)] for sources without class names, from one pass over the index (whose labels
    are below MAX_UNNAMED_CLASSES)."""
    top = max((int(labels.max()) for _, labels in source.iter_index() if len(labels)), default=-1)
    return [str(i) for i in range(top + 1)]


def _checked_labels(values: np.ndarray, where: str, class_names: list[str] | None) -> np.ndarray:
    """`values` as int32, once each is a class index: below the number of `class_names`, or, for data without class
    names (None), below MAX_UNNAMED_CLASSES."""
    if not len(values):
        return values.astype(np.int32)
    lowest, highest = int(values.min()), int(values.max())
    if lowest < 0:
        raise UserError(f"{where} has label {lowest}; labels must be class indices 0, 1, ...: fix the label")
    if class_names is not None and highest >= len(class_names):
        raise UserError(f"{where} has label {highest}, but the dataset.json beside it names {len(class_names)} "
                        f"classes (labels 0..{len(class_names) - 1}): fix the label or add the class there")
    if class_names is None and highest >= MAX_UNNAMED_CLASSES:
        raise UserError(f"{where} has label {highest}, but data without class names may number at most "
                        f"{MAX_UNNAMED_CLASSES} classes: fix the label, or name the classes in a dataset.json "
                        '({"classes": [...]}) beside the data')
    return values.astype(np.int32)


def _rows(ids: pa.Array, labels: pa.Array, images: pa.Array, keep_ids: frozenset[str] | None) -> pa.Table:
    """A table in the row contract {id, label, image}, filtered to `keep_ids` when given."""
    table = pa.Table.from_arrays(
        [ids.cast(pa.string()), labels.cast(pa.int32()), images.cast(pa.binary())], schema=ROW_SCHEMA
    )
    if keep_ids is None:
        return table
    return table.filter(pa.array([i in keep_ids for i in table.column("id").to_pylist()], pa.bool_()))


# ---------------------------------------------------------------------------------------------------------------------
# parquet


class ParquetSource(ImageSource):
    """Parquet shards with an `image` column (bytes, or a struct with `bytes` as HF datasets write) and `label`.

    An optional `id` column names the rows, each once; without it a row is "<file path below the split root, without
    .parquet>-<row index in the file>", so equal file names in two folders give different ids.
    """

    def __init__(self, location: Location, split: str, files: list[str]):
        self.uri = location.uri
        self.split = split
        self.files = files
        self._location = location
        with location.fs.open_input_file(files[0]) as f:
            self._has_id = self._check_schema(self._parquet_file(f, files[0]).schema_arrow, files[0])
        self._class_names = _read_class_names(location)

    def _parquet_file(self, handle, path: str) -> pq.ParquetFile:
        try:
            return pq.ParquetFile(handle)
        except (pa.ArrowInvalid, OSError) as e:
            raise UserError(f"{self._location.show(path)} is not a readable parquet file ({e}): replace or remove "
                            f"it, or point --data at the folder of parquet shards") from e

    @functools.cached_property
    def class_names(self) -> list[str]:
        return self._class_names if self._class_names is not None else _numbered_classes(self)

    def _check_schema(self, schema: pa.Schema, path: str) -> bool:
        """Rejects a shard without the needed columns; returns whether it has an `id` column."""
        where = self._location.show(path)
        if "image" not in schema.names or "label" not in schema.names:
            raise UserError(
                f"parquet file {where} has columns {schema.names}; expected 'image' and 'label' (and optionally 'id')"
            )
        image_type = schema.field("image").type
        if not (
            pa.types.is_binary(image_type)
            or pa.types.is_large_binary(image_type)
            or (pa.types.is_struct(image_type) and image_type.get_field_index("bytes") >= 0)
        ):
            raise UserError(
                f"column 'image' of {where} has type {image_type}; expected encoded image bytes "
                "(binary, or a struct with a 'bytes' field)"
            )
        if not pa.types.is_integer(schema.field("label").type):
            raise UserError(
                f"column 'label' of {where} has type {schema.field('label').type}; expected integer class indices "
                "(put the class names in a dataset.json beside the shards)"
            )
        return "id" in schema.names

    def content_digest(self) -> str:
        return listing_digest(self._location.fs, self._location.base, self.files)

    def iter_index(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        columns = ["id", "label"] if self._has_id else ["label"]
        ids_per_file: list[pa.ChunkedArray] = []
        for path in self.files:
            where = self._location.show(path)
            start = 0
            file_ids = []
            with self._location.fs.open_input_file(path) as f:
                parquet = self._parquet_file(f, path)
                if self._check_schema(parquet.schema_arrow, path) != self._has_id:
                    raise UserError(
                        f"parquet file {where} and {self._location.show(self.files[0])} differ in having an 'id' "
                        "column: give all shards the same columns"
                    )
                for batch in parquet.iter_batches(batch_size=INDEX_CHUNK_ROWS, columns=columns):
                    for name in columns:
                        if batch.column(name).null_count:
                            raise UserError(f"{where} has rows with no {name}; fill or drop them")
                    labels = _checked_labels(batch.column("label").to_numpy(), where, self._class_names)
                    if self._has_id:
                        file_ids.append(batch.column("id").cast(pa.string()))
                        ids = file_ids[-1].to_numpy(zero_copy_only=False).astype(object)
                    else:
                        ids = _row_ids(_relative(path, self._location.base), start, len(labels))
                    start += len(labels)
                    yield ids, labels
            ids_per_file.append(pa.chunked_array(file_ids, pa.string()))
        if self._has_id:
            self._check_unique(ids_per_file)

    def _check_unique(self, ids_per_file: list[pa.ChunkedArray]) -> None:
        """Rejects an id given to two rows: they would be taken for one image (keep_ids, the skip ledger)."""
        counts = pc.value_counts(pa.chunked_array([c for ids in ids_per_file for c in ids.chunks], pa.string()))
        repeated = counts.filter(pc.greater(counts.field("counts"), 1))
        if not len(repeated):
            return
        image_id = repeated[0]["values"].as_py()
        files = [self._location.show(path) for path, ids in zip(self.files, ids_per_file)
                 if pc.any(pc.equal(ids, image_id)).as_py()]
        raise UserError(f"id {image_id!r} is on more than one row of {' and '.join(files[:3])} ({len(repeated)} ids "
                        "repeat): give every row its own id, or drop the 'id' column to number the rows")

    def dataset(self, keep_ids: frozenset[str] | None = None) -> ray.data.Dataset:
        fs = self._location.fs
        if self._has_id:
            # select_columns is pushed down into the read: only these columns leave storage.
            ds = ray.data.read_parquet(self.files, filesystem=fs, file_extensions=None)
            ds = ds.select_columns(["id", "label", "image"])
            return ds.map_batches(_parquet_rows, batch_format="pyarrow", fn_kwargs={"keep_ids": keep_ids})
        # Row-index ids need each file read in order by one task, which read_parquet does not promise.
        ds = ray.data.from_items([{"path": p} for p in self.files], override_num_blocks=len(self.files))
        return ds.map_batches(
            _read_parquet_files,
            batch_size=1,
            batch_format="pyarrow",
            fn_kwargs={"filesystem": fs, "base": self._location.base, "keep_ids": keep_ids},
        )


def _row_ids(relative_path: str, start: int, count: int) -> np.ndarray:
    stem = posixpath.splitext(relative_path)[0]
    return np.array([f"{stem}-{i}" for i in range(start, start + count)], dtype=object)


def _image_bytes(column: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """The encoded images; a missing one becomes empty bytes (skipped as corrupt), as a null image means too large."""
    images = pc.struct_field(column, "bytes") if pa.types.is_struct(column.type) else column
    return pc.fill_null(images, pa.scalar(b"", images.type))


def _parquet_rows(table: pa.Table, keep_ids: frozenset[str] | None) -> pa.Table:
    return _rows(table.column("id"), table.column("label"), _image_bytes(table.column("image")), keep_ids)


def _read_parquet_files(
    batch: pa.Table, filesystem: pafs.FileSystem, base: str, keep_ids: frozenset[str] | None
) -> Iterator[pa.Table]:
    for path in batch.column("path").to_pylist():
        start = 0
        with filesystem.open_input_file(path) as f:
            for part in pq.ParquetFile(f).iter_batches(batch_size=READ_BLOCK_ROWS, columns=["label", "image"]):
                ids = pa.array(_row_ids(_relative(path, base), start, part.num_rows), pa.string())
                start += part.num_rows
                yield _rows(ids, part.column("label"), _image_bytes(part.column("image")), keep_ids)


@SOURCES.register("parquet")
def _open_parquet(location: Location, split: str) -> ParquetSource:
    files = [f for f in location.files if _extension(f) == ".parquet"]
    if not files:
        raise UserError(f"no *.parquet files in {location.show(location.base)!r}")
    return ParquetSource(location, split, _split_by_prefix(location, files, split))


# ---------------------------------------------------------------------------------------------------------------------
# ImageFolder


class ImageFolderSource(ImageSource):
    """`<split root>/<class>/<image>` trees; the class index follows the sorted class folders of the train split.

    The id of an image is its path relative to the split root.
    """

    def __init__(self, location: Location, split: str, class_names: list[str], paths: list[str], labels: list[int]):
        self.uri = location.uri
        self.split = split
        self.class_names = class_names
        self._fs = location.fs
        self._base = location.base
        self._paths = np.array(paths, dtype=object)
        self._ids = np.array([_relative(p, location.base) for p in paths], dtype=object)
        self._labels = np.array(labels, dtype=np.int32)

    def content_digest(self) -> str:
        return listing_digest(self._fs, self._base, self._paths)

    def iter_index(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(self._ids), INDEX_CHUNK_ROWS):
            stop = start + INDEX_CHUNK_ROWS
            yield self._ids[start:stop], self._labels[start:stop]

    def dataset(self, keep_ids: frozenset[str] | None = None) -> ray.data.Dataset:
        keep = slice(None) if keep_ids is None else np.array([i in keep_ids for i in self._ids], dtype=bool)
        table = pa.table(
            {
                "path": pa.array(self._paths[keep], pa.string()),
                "id": pa.array(self._ids[keep], pa.string()),
                "label": pa.array(self._labels[keep], pa.int32()),
            }
        )
        # One block per READ_BLOCK_ROWS files so the reads spread over many tasks.
        blocks = [table.slice(i, READ_BLOCK_ROWS) for i in range(0, table.num_rows, READ_BLOCK_ROWS)] or [table]
        return ray.data.from_arrow(blocks).map_batches(
            _read_image_files, batch_format="pyarrow", fn_kwargs={"filesystem": self._fs}
        )


def _read_image_files(batch: pa.Table, filesystem: pafs.FileSystem) -> pa.Table:
    """The files' bytes; a file over MAX_IMAGE_BYTES is left unread as a null image (skipped as too large)."""
    images = []
    for path in batch.column("path").to_pylist():
        with filesystem.open_input_file(path) as f:
            images.append(f.read() if f.size() <= MAX_IMAGE_BYTES else None)
    return _rows(batch.column("id"), batch.column("label"), pa.array(images, pa.binary()), None)


def _class_folders(location: Location, folder: str) -> list[str]:
    infos = location.fs.get_file_info(pafs.FileSelector(folder))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory and not i.base_name.startswith("."))


@SOURCES.register("imagefolder")
def _open_imagefolder(location: Location, split: str) -> ImageFolderSource:
    if location.single_file:
        raise UserError(f"{location.uri!r} is a file; the imagefolder format needs a folder with one folder per class")
    if location.split_dir is None and split != "train":
        raise _missing_split(location, split)
    base = location.base
    where = location.show(base)

    folders = _class_folders(location, base)
    images: dict[str, list[str]] = {name: [] for name in folders}
    for path in location.files:
        parts = _relative(path, base).split("/")
        if len(parts) > 1 and parts[0] in images and _extension(path) in IMAGE_EXTENSIONS:
            images[parts[0]].append(path)
    if not folders:
        raise UserError(f"no class folders in {where!r}: put the images in one folder per class, <class>/<image>")
    for name in folders:
        if not images[name]:
            raise UserError(
                f"class {name!r} has no images: remove the folder or add images ({', '.join(IMAGE_EXTENSIONS)}) "
                f"to {where}/{name}"
            )

    train_dir = location.split_dirs.get("train")
    names_dir = base if split == "train" or train_dir is None else train_dir
    class_names = _class_folders(location, names_dir) if names_dir != base else folders
    check_class_names(class_names, location.show(names_dir))
    label_of = {name: i for i, name in enumerate(class_names)}
    unknown = [name for name in folders if name not in label_of]
    if unknown:
        raise UserError(
            f"{split} class folders {unknown[:5]} in {where} are not classes of the train split "
            f"{location.show(train_dir)} ({len(class_names)} classes); "
            "rename them to train class names or remove them"
        )
    paths = [p for name in folders for p in images[name]]
    labels = [label_of[name] for name in folders for _ in images[name]]
    return ImageFolderSource(location, split, class_names, paths, labels)


# ---------------------------------------------------------------------------------------------------------------------
# webdataset


class WebDatasetSource(ImageSource):
    """Plain `*.tar` shards of samples `<key>.<ext>`: one image member (jpg, jpeg, png, webp) and a `cls` text label.

    The id of a sample is "<shard path below the split root>/<key>": keys restart in every shard.
    """

    def __init__(self, location: Location, split: str, shards: list[str]):
        self.uri = location.uri
        self.split = split
        self.shards = shards
        self._location = location
        self._class_names = _read_class_names(location)

    @functools.cached_property
    def class_names(self) -> list[str]:
        return self._class_names if self._class_names is not None else _numbered_classes(self)

    def content_digest(self) -> str:
        return listing_digest(self._location.fs, self._location.base, self.shards)

    def iter_index(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for shard in self.shards:
            where = self._location.show(shard)
            prefix = _relative(shard, self._location.base)
            ids, labels, seen = [], [], set()
            try:
                for key, members in _tar_samples(self._location.fs, shard, read=("cls",)):
                    if "cls" not in members:
                        raise UserError(
                            f"sample {key!r} in {where} has no .cls member: every sample needs a text integer "
                            "class label <key>.cls"
                        )
                    if not any(ext in members for ext in WEBDATASET_IMAGE_EXTENSIONS):
                        raise UserError(
                            f"sample {key!r} in {where} has no image member "
                            f"({', '.join('.' + e for e in WEBDATASET_IMAGE_EXTENSIONS)})"
                        )
                    if key in seen:
                        raise UserError(f"sample {key!r} comes twice in {where}: write each sample's members once, "
                                        "next to each other, under keys of their own")
                    seen.add(key)
                    ids.append(f"{prefix}/{key}")
                    labels.append(_parse_label(members["cls"], key, where))
            except tarfile.TarError as e:
                compression = _compression(self._location.fs, shard)
                if compression:
                    raise UserError(f"tar shard {where} is {compression}-compressed: decompress it to a plain .tar "
                                    "(samples are streamed from plain tars only)") from e
                raise UserError(f"cannot read tar shard {where}: {e}; replace or remove the shard") from e
            yield np.array(ids, dtype=object), _checked_labels(np.array(labels, dtype=object), where,
                                                               self._class_names)

    def dataset(self, keep_ids: frozenset[str] | None = None) -> ray.data.Dataset:
        ds = ray.data.from_items([{"path": p} for p in self.shards], override_num_blocks=len(self.shards))
        return ds.map_batches(
            _read_tar_shards,
            batch_size=1,
            batch_format="pyarrow",
            fn_kwargs={"filesystem": self._location.fs, "base": self._location.base, "keep_ids": keep_ids},
        )


def _tar_samples(
    fs: pafs.FileSystem, path: str, read: tuple[str, ...]
) -> Iterator[tuple[str, dict[str, bytes | None]]]:
    """Streams the samples of one plain tar as (key, {extension: content}); only extensions in `read` have their
    content read, and only up to MAX_IMAGE_BYTES: the rest map to None (present, not read)."""
    key, members = None, {}
    with fs.open_input_stream(path) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        for info in tar:
            match = _WEBDATASET_MEMBER.match(info.name) if info.isfile() else None
            if match is None:
                continue
            member_key, ext = match.group(1), match.group(2).lower()
            if member_key != key:
                if key is not None:
                    yield key, members
                key, members = member_key, {}
            wanted = ext in read and info.size <= MAX_IMAGE_BYTES
            members[ext] = tar.extractfile(info).read() if wanted else None
    if key is not None:
        yield key, members


def _compression(fs: pafs.FileSystem, path: str) -> str | None:
    """The compression whose magic bytes start the file, if any."""
    with fs.open_input_stream(path) as stream:
        head = stream.read(8)
    return next((name for magic, name in _COMPRESSION_MAGIC.items() if head.startswith(magic)), None)


def _parse_label(data: bytes | None, key: str, where: str) -> int:
    if data is None:
        raise UserError(f"sample {key!r} in {where}: .cls is over {MAX_IMAGE_BYTES} bytes, not a class label")
    try:
        return int(data.decode("utf-8").strip())
    except (UnicodeDecodeError, ValueError) as e:
        raise UserError(f"sample {key!r} in {where}: .cls holds {data[:20]!r}, not an integer class label") from e


def _read_tar_shards(
    batch: pa.Table, filesystem: pafs.FileSystem, base: str, keep_ids: frozenset[str] | None
) -> Iterator[pa.Table]:
    for path in batch.column("path").to_pylist():
        prefix = _relative(path, base)
        ids, labels, images = [], [], []
        for key, members in _tar_samples(filesystem, path, read=("cls", *WEBDATASET_IMAGE_EXTENSIONS)):
            image_id = f"{prefix}/{key}"
            extension = next((e for e in WEBDATASET_IMAGE_EXTENSIONS if e in members), None)
            # Incomplete samples are left out of the index too (iter_index rejects them with a message).
            if extension is None or members.get("cls") is None or (keep_ids is not None and image_id not in keep_ids):
                continue
            ids.append(image_id)
            labels.append(int(members["cls"].decode("utf-8").strip()))
            images.append(members[extension])  # None when over MAX_IMAGE_BYTES: decoding skips it as too large
            if len(ids) == READ_BLOCK_ROWS:
                yield _rows(pa.array(ids), pa.array(labels), pa.array(images, pa.binary()), None)
                ids, labels, images = [], [], []
        if ids:
            yield _rows(pa.array(ids), pa.array(labels), pa.array(images, pa.binary()), None)


@SOURCES.register("webdataset")
def _open_webdataset(location: Location, split: str) -> WebDatasetSource:
    compressed = [f for f in location.files if _is_compressed_tar(f)]
    if compressed:
        raise UserError(f"{location.show(compressed[0])} is a compressed tar ({len(compressed)} in all): decompress "
                        "the shards to plain .tar files (samples are streamed from plain tars only)")
    shards = [f for f in location.files if _extension(f) == ".tar"]
    if not shards:
        raise UserError(f"no *.tar shards in {location.show(location.base)!r}")
    return WebDatasetSource(location, split, _split_by_prefix(location, shards, split))


# ---------------------------------------------------------------------------------------------------------------------
# digits (built in)


class DigitsSource(ImageSource):
    """scikit-learn's 8x8 handwritten digits (1797 images, no download) as RGB PNGs.

    A fixed stratified split holds out 20 % of each class as "val". Ids are "digits-<index in the original array>".
    """

    def __init__(self, split: str):
        self.uri = "digits"
        self.split = split
        self.class_names = [str(i) for i in range(10)]
        self._indices = _digits_split()[split]

    def content_digest(self) -> str:
        return "digits"  # built in: it changes only with scikit-learn's copy

    def iter_index(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        labels = _load_digits().target[self._indices].astype(np.int32)
        yield _digit_ids(self._indices), labels

    def dataset(self, keep_ids: frozenset[str] | None = None) -> ray.data.Dataset:
        indices = self._indices
        if keep_ids is not None:
            indices = indices[np.array([i in keep_ids for i in _digit_ids(indices)], dtype=bool)]
        digits = _load_digits()
        # 0..16 grey levels to the full 0..255 range.
        grey = np.round(digits.images[indices] * (255 / 16)).astype(np.uint8)
        table = pa.table(
            {
                "id": pa.array(_digit_ids(indices), pa.string()),
                "label": pa.array(digits.target[indices], pa.int32()),
                "image": pa.array([_png(g) for g in grey], pa.binary()),
            },
            schema=ROW_SCHEMA,
        )
        return ray.data.from_arrow(table)


@functools.lru_cache(maxsize=1)
def _load_digits():
    from sklearn.datasets import load_digits  # scikit-learn is slow to import; only digits needs it

    return load_digits()


@functools.lru_cache(maxsize=1)
def _digits_split() -> dict[str, np.ndarray]:
    target = _load_digits().target
    rng = np.random.default_rng(0)
    train, val = [], []
    for label in range(10):
        members = rng.permutation(np.flatnonzero(target == label))
        n_val = round(DIGITS_VAL_FRACTION * len(members))
        val.append(members[:n_val])
        train.append(members[n_val:])
    return {"train": np.sort(np.concatenate(train)), "val": np.sort(np.concatenate(val))}


def _digit_ids(indices: np.ndarray) -> np.ndarray:
    return np.array([f"digits-{i:05d}" for i in indices], dtype=object)


def _png(grey: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(grey).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


@SOURCES.register("digits")
def _open_digits(location: Location | None, split: str) -> DigitsSource:
    return DigitsSource(split)
