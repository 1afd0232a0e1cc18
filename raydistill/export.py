"""`raydistill export`: a run's distilled/ as an ImageFolder tree for tools that read one."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow.parquet as pq

from raydistill.errors import UserError
from raydistill.rundir import RunDir


def export_image_folder(run_uri: str, dest: str | Path) -> int:
    """Writes `dest/<class name>/<id>.png` for every distilled image and `dest/weights.csv` (path, label, class name
    as a person reads it, weight). Folders keep the data's class names (ImageNet wnids stay wnids, so tools that
    sort them get ImageNet's label order).

    Returns:
        The number of images written.

    Raises:
        UserError: the run has no finished synthesize stage.
    """
    rundir = RunDir(run_uri)
    if rundir.marker("distilled") is None:
        raise UserError(f"{run_uri} has no finished distilled/ set; run `raydistill run --out {run_uri}` first")
    classes = rundir.read_json("class_names.json") or []
    dest = Path(dest)
    rows = []
    for path in rundir.files("distilled", suffix=".parquet"):
        for record in pq.read_table(path, filesystem=rundir.fs).to_pylist():
            label = record["label"]
            known = classes[label] if label < len(classes) else {"name": str(label), "display_name": str(label)}
            target = dest / known["name"] / f"{record['id']}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(record["image"])
            rows.append((str(target.relative_to(dest)), label, known["display_name"], record["weight"]))
    with open(dest / "weights.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "class_name", "weight"])
        writer.writerows(sorted(rows))
    return len(rows)
