"""The run directory: layout, atomic writes and `_SUCCESS.json` stage markers, on any pyarrow filesystem.

A stage writes its data first and its marker last, so a stage without a matching marker is incomplete and is
redone from scratch (its folder is cleared first). Single files go to a temporary name and are moved into place.
"""

from __future__ import annotations

import json
import os
import platform
import time
import uuid
from typing import Any

import pyarrow.fs as pafs

MARKER = "_SUCCESS.json"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("raydistill", "ray", "torch", "faiss-cpu", "pyarrow", "diffusers", "timm"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


class RunDir:
    """A run directory on a local path or any URI pyarrow.fs understands (s3://, gs://).

    Args:
        uri: the directory; a local path is made absolute (Ray workers may run elsewhere in the tree).
    """

    def __init__(self, uri: str):
        if "://" not in uri:
            uri = os.path.abspath(uri)
        self.fs, self.root = pafs.FileSystem.from_uri(uri)
        self.uri = uri.rstrip("/")
        self.fs.create_dir(self.root, recursive=True)

    def path(self, *parts: str) -> str:
        """The filesystem path (for `self.fs` and Ray's `filesystem=`) of a file or folder in the run."""
        return "/".join([self.root.rstrip("/"), *parts])

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def reset(self, *parts: str) -> str:
        """Empties (or creates) a folder and returns its path: a redone stage never mixes old and new files."""
        folder = self.path(*parts)
        self.fs.create_dir(folder, recursive=True)
        self.fs.delete_dir_contents(folder, missing_dir_ok=True)
        return folder

    def files(self, *parts: str, suffix: str = "") -> list[str]:
        """Paths of the files under a folder, recursively, sorted; hidden and temporary files left out."""
        selector = pafs.FileSelector(self.path(*parts), recursive=True, allow_not_found=True)
        return sorted(
            info.path
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File
            and info.path.endswith(suffix)
            and not info.base_name.startswith(("_", "."))
            and ".tmp-" not in info.base_name
        )

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Writes a file atomically: a temporary name first, then a move into place."""
        final = self.path(*parts)
        self.fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
        temporary = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
        with self.fs.open_output_stream(temporary) as stream:
            stream.write(data)
        self.fs.move(temporary, final)

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open_input_stream(self.path(*parts)) as stream:
            return stream.read()

    def write_json(self, value: Any, *parts: str) -> None:
        self.write_bytes(json.dumps(value, indent=2, sort_keys=True).encode(), *parts)

    def read_json(self, *parts: str) -> Any | None:
        if not self.exists(*parts):
            return None
        return json.loads(self.read_bytes(*parts))

    def marker(self, stage_dir: str) -> dict[str, Any] | None:
        """The `_SUCCESS.json` of a stage folder, or None if the stage has not finished."""
        return self.read_json(stage_dir, MARKER)

    def write_marker(self, stage_dir: str, fingerprint: str, rows: int, seconds: float, **extra: Any) -> dict:
        marker = {
            "fingerprint": fingerprint,
            "rows": rows,
            "seconds": round(seconds, 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": _versions(),
            **extra,
        }
        self.write_json(marker, stage_dir, MARKER)
        return marker
