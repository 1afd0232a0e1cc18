"""Faults lose nothing: a driver killed during quantize resumes with the same result as an uninterrupted run."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from conftest import kill_process_tree
RAYDISTILL = str(Path(sys.executable).parent / "raydistill")
# A quantizer slow enough (about a second per class: d3hr's group search on pixel latents) that the kill lands
# while classes are still being quantized.
ARGS = ["--ipc", "3", "--max-per-class", "40", "--method", "d3hr", "--space", "latent", "--set",
        "quantize.candidates=30000", "--set", "evaluate.baseline=false", "--set", "train.epochs=1"]


def table(path: Path, sort: list[str]) -> list[dict]:
    return pq.read_table(path).sort_by([(key, "ascending") for key in sort]).to_pylist()


def test_driver_killed_during_quantize_resumes_to_the_same_result(tmp_path):
    interrupted = tmp_path / "interrupted"
    command = [RAYDISTILL, "run", "--out", str(interrupted), *ARGS]
    log = tmp_path / "interrupted.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.time() + 600  # generous: CI machines may be busy
    while not list(interrupted.glob("prototypes/_class-*.json")):
        assert process.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    kill_process_tree(process.pid)
    process.wait()
    finished = len(list(interrupted.glob("prototypes/_class-*.json")))
    assert not (interrupted / "prototypes" / "_SUCCESS.json").exists() and 1 <= finished < 10
    encode_seconds = json.loads((interrupted / "latents" / "_SUCCESS.json").read_text())["seconds"]

    rerun = subprocess.run([RAYDISTILL, "-v", *command[1:]], capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "encode: done before" in rerun.stderr
    assert json.loads((interrupted / "latents" / "_SUCCESS.json").read_text())["seconds"] == encode_seconds
    kept = int(rerun.stderr.split("quantize prototypes: ")[1].split(" of ")[0])
    assert kept >= finished

    # The same stages from scratch in the same run: nothing kept this time.
    resumed = {"prototypes": table(interrupted / "prototypes", ["label", "index"]),
               "distilled": table(interrupted / "distilled", ["id"])}
    (interrupted / "prototypes" / "_STARTED.json").unlink()
    for stage in ("quantize", "synthesize"):
        subprocess.run([RAYDISTILL, stage, "--out", str(interrupted), *ARGS], check=True, capture_output=True,
                       timeout=900)
    assert table(interrupted / "prototypes", ["label", "index"]) == resumed["prototypes"]
    assert table(interrupted / "distilled", ["id"]) == resumed["distilled"]
