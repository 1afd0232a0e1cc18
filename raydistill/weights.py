"""Loading weights someone else wrote: safetensors only unless the user trusts pickles, and hub ids pinned to a
revision (their content digests are in `raydistill.digests`).

A pickled checkpoint (.bin, .pt, .pth, .ckpt) runs any code its writer put in it when it is loaded, and weights are
often fetched from shared buckets or the hub; `--trust-pickles` is the user's explicit word that they trust the
writer. A hub id is resolved to one commit before Ray starts, so every actor loads the same revision.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from pathlib import Path

from raydistill.errors import UserError

TRUST_PICKLES_HINT = ("convert them to .safetensors, or pass --trust-pickles if you trust whoever wrote them "
                      "(loading a pickle runs any code it holds)")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Set while a prior is built for a run that trusts pickles; read where weights are loaded, deep in the factories.
_trusting_pickles: ContextVar[bool] = ContextVar("trusting_pickles", default=False)


@contextlib.contextmanager
def trusting_pickles(trust: bool):
    """Within the block, `pickles_trusted()` is `trust`."""
    token = _trusting_pickles.set(trust)
    try:
        yield
    finally:
        _trusting_pickles.reset(token)


def pickles_trusted() -> bool:
    return _trusting_pickles.get()


def split_revision(source: str) -> tuple[str, str | None]:
    """("owner/name", "REV") from "owner/name@REV"; a local path or an unpinned id comes back with None."""
    if Path(source).expanduser().exists() or "@" not in source:
        return source, None
    source, _, revision = source.rpartition("@")
    return source, revision


def from_pretrained(cls, source: str, subfolder: str | None = None):
    """`cls.from_pretrained` (diffusers or transformers) from a local directory or "HUB_ID[@REVISION]", reading
    safetensors only unless pickles are trusted."""
    source, revision = split_revision(source)
    trusted = pickles_trusted()
    if not trusted:
        folder = Path(source).expanduser() / (subfolder or "")
        if folder.is_dir() and not any(folder.glob("*.safetensors")) and any(
                path.suffix in PICKLE_SUFFIXES for path in folder.iterdir()):
            raise UserError(f"{folder} holds only pickled weights: {TRUST_PICKLES_HINT}")
    # None: safetensors where present, else the pickle.
    return cls.from_pretrained(source, subfolder=subfolder, revision=revision,
                               use_safetensors=None if trusted else True)


def load_config(cls, source: str, subfolder: str | None = None) -> dict:
    """`cls.load_config` for a local directory or "HUB_ID[@REVISION]"."""
    source, revision = split_revision(source)
    return cls.load_config(source, subfolder=subfolder, revision=revision)


def is_hub_id(source: str) -> bool:
    """A hub id is "name" or "owner/name" (optionally "@REVISION") that is not a local path."""
    source, _ = split_revision(source)
    return not (Path(source).expanduser().exists() or source.startswith(("/", ".", "~")) or source.count("/") > 1)


def pin_revision(hub_id: str) -> str:
    """"owner/name@COMMIT" for "owner/name": the hub's current commit, else the one the local cache holds.

    Raises:
        UserError: the hub cannot be reached and nothing is cached.
    """
    if split_revision(hub_id)[1] is not None:
        return hub_id
    from huggingface_hub import HfApi, constants

    try:
        return f"{hub_id}@{HfApi().model_info(hub_id).sha}"
    except Exception:  # offline, unknown id or gated: fall back to what is cached here
        cached = Path(constants.HF_HUB_CACHE) / f"models--{hub_id.replace('/', '--')}" / "refs" / "main"
        if cached.is_file():
            return f"{hub_id}@{cached.read_text().strip()}"
    raise UserError(f"cannot resolve the revision of hub model {hub_id!r} (the hub is unreachable and it is not in "
                    f"the local cache): pass a local directory, or {hub_id}@COMMIT")
