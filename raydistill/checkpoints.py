"""Training checkpoints without pickles: tensors in safetensors, everything else in JSON.

Checkpoints live in the run folder or a prior folder, often on shared storage; `torch.load` of a pickle found there
would run whatever code its writer put in it. A state here is a tree of dicts, lists, tuples, numbers, strings and
tensors (a module's, optimiser's or scheduler's `state_dict`): the tensors go to `tensors.safetensors` and the tree,
with each tensor replaced by its key, to `state.json`. Dicts keep their keys' types (an optimiser's state is keyed
by parameter index), so they are stored as lists of [key, value] pairs.
"""

from __future__ import annotations

import json
import os

import pyarrow.fs as pafs
import torch
from safetensors.torch import load_file, save_file

from raydistill.errors import UserError

TREE_FILE = "state.json"
TENSORS_FILE = "tensors.safetensors"


def save_state(state: dict, folder: str) -> None:
    """Writes `state` to `folder` (a local directory) as state.json and tensors.safetensors."""
    tensors: dict[str, torch.Tensor] = {}

    def encode(value):
        if isinstance(value, torch.Tensor):
            key = str(len(tensors))
            tensors[key] = value.detach().cpu().clone()  # a copy: safetensors refuses tensors sharing storage
            return {"tensor": key}
        if isinstance(value, dict):
            if not all(isinstance(k, (int, str)) for k in value):
                raise TypeError("cannot checkpoint a dict with keys other than int and str")
            return {"dict": [[k, encode(v)] for k, v in value.items()]}
        if isinstance(value, (list, tuple)):
            return {"list": [encode(v) for v in value]}
        if value is None or isinstance(value, (bool, int, float, str)):
            return {"value": value}
        raise TypeError(f"cannot checkpoint a {type(value).__name__} without pickling it")

    tree = encode(state)
    save_file(tensors, os.path.join(folder, TENSORS_FILE))
    with open(os.path.join(folder, TREE_FILE), "w") as f:
        json.dump(tree, f)


def load_state(folder: str) -> dict:
    """Reads what `save_state` wrote; a folder without its two files is refused with the fix."""
    tree_file, tensors_file = os.path.join(folder, TREE_FILE), os.path.join(folder, TENSORS_FILE)
    if not (os.path.isfile(tree_file) and os.path.isfile(tensors_file)):
        raise foreign_checkpoint(folder, "the folder")
    tensors = load_file(tensors_file)
    with open(tree_file) as f:
        tree = json.load(f)

    def decode(node):
        (kind, value), = node.items()
        if kind == "tensor":
            return tensors[value]
        if kind == "dict":
            return {key: decode(v) for key, v in value}
        if kind == "list":
            return [decode(v) for v in value]
        return value

    return decode(tree)


def check_checkpoints(fs: pafs.FileSystem, folder: str) -> None:
    """Refuses a Ray Train storage folder holding a checkpoint that `load_state` could not read (a planted or old
    pickle), before Ray Train hands it to the workers, where the error would be retried and then lost in a
    traceback."""
    selector = pafs.FileSelector(folder, allow_not_found=True, recursive=True)
    names: dict[str, set[str]] = {}
    for info in fs.get_file_info(selector):
        parent, _, name = info.path.rpartition("/")
        if parent.rsplit("/", 1)[-1].startswith("checkpoint_"):
            names.setdefault(parent, set()).add(name)
    for checkpoint, files in sorted(names.items()):
        if not {TREE_FILE, TENSORS_FILE} <= files:
            raise foreign_checkpoint(checkpoint, folder)


def remove_unregistered_checkpoints(fs: pafs.FileSystem, folder: str, result) -> None:
    """Deletes the checkpoint folders in a finished Ray Train run's storage `folder` that its `result` does not keep:
    those a worker wrote but a killed driver or worker never registered. Ray Train deletes only the ones it
    registered, so each crash would otherwise leave one or two behind for good."""
    kept = {checkpoint.path.rstrip("/").rsplit("/", 1)[-1] for checkpoint, _ in result.best_checkpoints}
    for info in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
        if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_") \
                and info.base_name not in kept:
            fs.delete_dir(info.path)


def foreign_checkpoint(checkpoint: str, to_delete: str) -> UserError:
    return UserError(f"checkpoint {checkpoint} lacks {TREE_FILE} and {TENSORS_FILE} (written by another tool or an "
                     f"older raydistill, which pickled them): delete {to_delete} to train from the start")
