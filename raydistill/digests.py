"""Content digests of files named by path: what changes when a file is rewritten in place under the same name.

Ray-free, so the driver's checks before Ray can use it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import pyarrow.fs as pafs


def listing_digest(fs: pafs.FileSystem, folder: str, paths: Iterable[str]) -> str:
    """sha256 over the sorted (path relative to `folder`, size, mtime in ns) of `paths`, from one listing of `folder`.

    One listing, not a stat per file: on object stores a listing returns a thousand entries per request. A file that
    is gone drops out of the digest, which changes it.

    Args:
        fs: the filesystem holding the files.
        folder: a folder holding every one of `paths`.
        paths: the files to digest, as `fs` names them.

    Returns:
        The hex digest.
    """
    folder = folder.rstrip("/") or "/"
    wanted = {path[len(folder):].lstrip("/") for path in paths}
    # Files only directly in `folder` (shards, a single file) need no walk of the folders below it.
    selector = pafs.FileSelector(folder, recursive=any("/" in name for name in wanted))
    entries = sorted(
        (relative, info.size, info.mtime_ns if info.mtime_ns is not None else -1)
        for info in fs.get_file_info(selector)
        if info.type == pafs.FileType.File and (relative := info.path[len(folder):].lstrip("/")) in wanted
    )
    digest = hashlib.sha256()
    for relative, size, mtime_ns in entries:
        digest.update(f"{relative}\0{size}\0{mtime_ns}\n".encode("utf-8", "surrogatepass"))
    return digest.hexdigest()
