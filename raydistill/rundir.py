"""The run directory: layout, atomic writes and `_SUCCESS.json` stage markers, on any pyarrow filesystem.

A stage writes its data first and its marker last, so a stage without a matching marker is incomplete and is
redone from scratch (its folder is cleared first). Single files go to a temporary name and are moved into place.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Any

import pyarrow.fs as pafs

from raydistill.digests import file_digest
from raydistill.errors import UserError

MARKER = "_SUCCESS.json"
# Names the run that holds the folder: host, pid, start and a heartbeat.
LOCK = "_LOCK.json"
LOCK_HEARTBEAT_SECONDS = 30
# A holder on another host whose heartbeat is older than this is taken for dead (its pid cannot be checked from here).
LOCK_STALE_SECONDS = 300


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
        try:
            self.fs, self.root = pafs.FileSystem.from_uri(uri)
            self.fs.create_dir(self.root, recursive=True)
        except (OSError, ValueError) as e:  # pyarrow's errors for bad URIs, credentials and permissions
            raise unwritable(uri, e) from e
        self.uri = uri.rstrip("/")

    @contextmanager
    def lock(self):
        """Holds the folder for this process: a second run on it fails at once naming the holder, instead of its
        stage resets deleting the first run's files. A holder that died (its pid gone on this host, or its heartbeat
        stale on another) is taken over. On object stores, which have no atomic create, two runs starting within
        the same second can both pass; the read-back after writing catches most of those."""
        holder = self.read_lock()
        if holder is not None and holder_alive(holder):
            raise UserError(f"{self.uri} is in use by a run of pid {holder.get('pid')} on {holder.get('host')} "
                            f"(since {holder.get('started_at')}): wait for it to end, or pass another --out")
        mine = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex,
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "heartbeat": time.time()}
        self.write_json(mine, LOCK)
        if (self.read_lock() or {}).get("token") != mine["token"]:
            raise UserError(f"{self.uri} was taken by another run starting at the same time: pass another --out")
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(LOCK_HEARTBEAT_SECONDS):
                self.write_json({**mine, "heartbeat": time.time()}, LOCK)

        heart = threading.Thread(target=beat, name="raydistill-lock", daemon=True)
        heart.start()
        try:
            yield
        finally:
            stop.set()
            heart.join()
            self.fs.delete_file(self.path(LOCK))

    def read_lock(self) -> dict[str, Any] | None:
        try:
            holder = self.read_json(LOCK)
        except ValueError:  # a half-written lock: its writer died mid-write
            return None
        return holder if isinstance(holder, dict) else None

    def check_writable(self) -> None:
        """Writes and removes a probe file, so a read-only folder or bucket fails before any work."""
        probe = self.path(f".write-probe-{uuid.uuid4().hex[:8]}")
        try:
            with self.fs.open_output_stream(probe) as stream:
                stream.write(b"")
            self.fs.delete_file(probe)
        except OSError as e:
            raise unwritable(self.uri, e) from e

    @property
    def name(self) -> str:
        """The run folder's name: the `run` tag of the dashboard metrics."""
        return self.uri.rsplit("/", 1)[-1]

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

    def checksum(self, path: str) -> str:
        return file_digest(self.fs, path)

    def manifest(self, folders: list[str]) -> dict[str, dict[str, Any]]:
        """Every file under the folders (markers and temporary files aside): path in the run -> size, checksum."""
        found = {}
        for folder in folders:
            selector = pafs.FileSelector(self.path(folder), recursive=True, allow_not_found=True)
            for info in self.fs.get_file_info(selector):
                if info.type == pafs.FileType.File and info.base_name != MARKER and ".tmp-" not in info.base_name:
                    relative = info.path[len(self.root.rstrip("/")) + 1:]
                    found[relative] = {"size": info.size, "blake2b": self.checksum(info.path)}
        return dict(sorted(found.items()))

    def check(self, files: dict[str, dict[str, Any]], checksums: bool = True) -> list[str]:
        """What differs from a manifest: missing files, other sizes and (with `checksums`) other contents."""
        problems = []
        for relative, expected in files.items():
            info = self.fs.get_file_info(self.path(relative))
            if info.type == pafs.FileType.NotFound:
                problems.append(f"{relative}: missing")
            elif info.size != expected["size"]:
                problems.append(f"{relative}: {info.size} bytes, expected {expected['size']}")
            elif checksums and self.checksum(info.path) != expected["blake2b"]:
                problems.append(f"{relative}: contents changed (checksum differs)")
        return problems

    def write_marker(self, stage_dir: str, fingerprint: str, rows: int, seconds: float, **extra: Any) -> dict:
        """Writes a stage's `_SUCCESS.json` last, after its data; `extra` may carry its `files` manifest."""
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


def unwritable(uri: str, error: Exception) -> UserError:
    return UserError(f"cannot write the run folder {uri} ({error}): pass an --out you may write to (for s3:// and "
                     f"gs://, check the credentials in the environment)")


def holder_alive(holder: dict[str, Any]) -> bool:
    """Whether the run that wrote a lock still runs: by its pid on this host (this very process counts as gone, as
    only a crashed earlier run in it could have left the lock), by its heartbeat elsewhere."""
    if holder.get("host") != socket.gethostname():
        return time.time() - float(holder.get("heartbeat", 0)) < LOCK_STALE_SECONDS
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
