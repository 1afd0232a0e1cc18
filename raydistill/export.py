"""`raydistill export`: a run's distilled/ as an ImageFolder tree for tools that read one."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq

from raydistill.data.classes import check_class_names, check_file_stem
from raydistill.errors import UserError
from raydistill.rundir import RunDir

WEIGHTS_FILE = "weights.csv"


def export_image_folder(run_uri: str, dest: str | Path) -> int:
    """Writes `dest/<class name>/<id>.png` for every distilled image and `dest/weights.csv` (path, label, class name
    as a person reads it, weight). Folders keep the data's class names (ImageNet wnids stay wnids, so tools that
    sort them get ImageNet's label order).

    Class names and ids come from the run folder, which anyone with access may have edited: each must be one safe
    path component. The tree is built beside `dest` and moved into place whole, so a killed export leaves the
    earlier one intact, never a mix.

    Returns:
        The number of images written.

    Raises:
        UserError: the run has no finished synthesize stage, a class name, id or label is unsafe, or `dest` holds
            something other than an earlier export.
    """
    rundir = RunDir(run_uri)
    if rundir.marker("distilled") is None:
        raise UserError(f"{run_uri} has no finished distilled/ set; run `raydistill run --out {run_uri}` first")
    classes = rundir.read_json("class_names.json") or []
    check_class_names([record["name"] for record in classes], f"{run_uri}/class_names.json")
    dest = Path(dest).expanduser().absolute()
    check_destination(dest)
    building = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    rows = []
    try:
        for path in rundir.files("distilled", suffix=".parquet"):
            for record in pq.read_table(path, filesystem=rundir.fs).to_pylist():
                label = record["label"]
                if not 0 <= label < len(classes):
                    raise UserError(f"{path} has label {label}, but class_names.json names {len(classes)} classes: "
                                    f"the run folder was changed; rerun `raydistill run --out {run_uri}`")
                check_file_stem(str(record["id"]), path)
                relative = f"{classes[label]['name']}/{record['id']}.png"
                (building / classes[label]["name"]).mkdir(parents=True, exist_ok=True)
                (building / relative).write_bytes(record["image"])
                rows.append((relative, label, classes[label]["display_name"], record["weight"]))
        with open(building / WEIGHTS_FILE, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "label", "class_name", "weight"])
            writer.writerows(sorted(rows))
        replace_folder(building, dest)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return len(rows)


def check_destination(dest: Path) -> None:
    """`dest` may be new, empty or an earlier export (it holds weights.csv); anything else is the user's."""
    if not dest.exists():
        return
    if not dest.is_dir() or (any(dest.iterdir()) and not (dest / WEIGHTS_FILE).is_file()):
        raise UserError(f"--dest {dest} exists and is not an earlier export (no {WEIGHTS_FILE}): pass a new or empty "
                        f"folder")


def replace_folder(new: Path, dest: Path) -> None:
    """Moves `new` to `dest`, the earlier `dest` aside first and removed last."""
    old = dest.parent / f".{dest.name}.old-{os.getpid()}"
    if dest.exists():
        dest.rename(old)
    new.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
