"""Content digests of files: listings (paths, sizes, mtimes) for data, byte hashes for weights and run outputs;
what changes when a file is rewritten in place under the same name.

Ray-free, so the driver's checks before Ray can use it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

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


def file_digest(fs: pafs.FileSystem, path: str) -> str:
    """blake2b of a file's bytes, read in 8 MiB chunks so large files never sit in memory."""
    digest = hashlib.blake2b(digest_size=16)
    with fs.open_input_stream(path) as stream:
        while chunk := stream.read(8 * 2**20):
            digest.update(chunk)
    return digest.hexdigest()


def local_digest(path: Path, skip: tuple[str, ...] = ()) -> str:
    """Content digest of a local file, or of every file under a directory (relative paths and their bytes) except
    the top-level entries named in `skip`; "" where the path does not exist."""
    local = pafs.LocalFileSystem()
    if path.is_file():
        return file_digest(local, str(path))
    if not path.is_dir():
        return ""
    digest = hashlib.blake2b(digest_size=16)
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path)
        if relative.parts[0] not in skip:
            digest.update(f"{relative.as_posix()}\0{file_digest(local, str(file))}\0".encode())
    return digest.hexdigest()
