"""Faults lose nothing: a killed driver, training worker or encoder actor leaves the same results as an uninterrupted
run, and the number of actors does not change them."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import actor_processes, invoke, kill_process_tree, table, wait_for_registered_checkpoint

RAYDISTILL = str(Path(sys.executable).parent / "raydistill")
# A quantizer slow enough (d3hr's group search over 30,000 candidates per class) that the kill lands while classes
# are still being quantized.
ARGS = ["--ipc", "3", "--max-per-class", "40", "--method", "d3hr", "--space", "latent", "--set",
        "quantize.candidates=30000", "--set", "evaluate.baseline=false"]


def run_stages(stages: tuple[str, ...], *args: str) -> None:
    for stage in stages:
        invoke(stage, *args)


@pytest.mark.slow
def test_killed_driver_and_killed_train_worker_resume_to_the_same_result(ray_local, tmp_path):
    """One run killed three times: the driver during quantize (the rerun keeps the finished classes), a training
    worker after a checkpoint (Ray Train replaces it and continues from that checkpoint), the driver during training
    (the rerun resumes from the last checkpoint, the epochs continuing). Its prototypes and images then equal those of
    the same stages run from scratch."""
    out = tmp_path / "interrupted"
    command = [RAYDISTILL, "-v", "run", "--out", str(out), *ARGS, "--set", "train.epochs=40",
               "--set", "train.checkpoint_seconds=0"]
    log = tmp_path / "run.log"

    def start():
        with open(log, "a") as stderr:
            return subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=stderr)

    process = start()
    deadline = time.time() + 600  # generous: CI machines may be busy
    while not list(out.glob("prototypes/_class-*.json")):
        assert process.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    kill_process_tree(process.pid)
    process.wait()
    finished = len(list(out.glob("prototypes/_class-*.json")))
    assert not (out / "prototypes" / "_SUCCESS.json").exists() and 1 <= finished < 10
    encode_seconds = json.loads((out / "latents" / "_SUCCESS.json").read_text())["seconds"]

    process = start()
    training = "train_state/*/method-convnet3"
    first = wait_for_registered_checkpoint(out, training, process)
    kept = int(log.read_text().split("quantize prototypes: ")[1].split(" of ")[0])
    assert kept >= finished
    assert json.loads((out / "latents" / "_SUCCESS.json").read_text())["seconds"] == encode_seconds
    workers = actor_processes("RayTrainWorker", under=process.pid)
    assert len(workers) == 1
    kill_process_tree(workers[0])
    resumed = wait_for_registered_checkpoint(out, training, process, accept=lambda m: m["start_epoch"] > 0)
    assert resumed["start_epoch"] >= first["epoch"], log.read_text()[-3000:]
    kill_process_tree(process.pid)
    process.wait()
    assert not (out / "students" / "_SUCCESS.json").exists()

    subprocess.run(command, check=True, capture_output=True, timeout=600)
    metrics = json.loads((out / "students" / "convnet3" / "metrics.json").read_text())
    assert metrics["epochs"] == 40
    assert resumed["epoch"] <= metrics["resumed_from_epoch"] < 40
    checkpoints = [p for p in out.glob(f"{training}/checkpoint_*") if p.is_dir()]
    assert len(checkpoints) == 2  # only the last two are kept

    # The same stages from scratch in the same run: nothing kept this time.
    resumed_tables = {"prototypes": table(out / "prototypes", ["label", "index"]),
                      "distilled": table(out / "distilled", ["id"])}
    (out / "prototypes" / "_STARTED.json").unlink()
    run_stages(("quantize", "synthesize"), "--out", str(out), *ARGS)
    assert table(out / "prototypes", ["label", "index"]) == resumed_tables["prototypes"]
    assert table(out / "distilled", ["id"]) == resumed_tables["distilled"]


def test_an_encoder_actor_killed_mid_stage_changes_nothing_and_actor_counts_change_nothing(ray_local, tmp_path):
    """Two encoder actors, one killed mid-stage: Ray replaces it, and every image is encoded exactly once. The
    latents, prototypes and images then equal, byte for byte, those of one actor of each kind, to which blocks
    arrive in order."""
    # DDIM inversion in the actor and small batches make the stage last long enough to kill an actor in it.
    common = ["--prior", "dit-tiny", "--method", "ddoq", "--space", "noise", "--decode", "ddim", "--ipc", "2",
              "--max-per-class", "12", "--set", "encode.batch_size=4", "--set", "synthesize.steps=5"]
    killed, single = tmp_path / "two-actors-one-killed", tmp_path / "one-actor"
    two_actors = ["--out", str(killed), "--set", "encode.actors=2", "--set", "synthesize.actors=2"]
    log = tmp_path / "encode.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen([RAYDISTILL, "encode", *common, *two_actors], stdout=subprocess.DEVNULL,
                                   stderr=stderr)
    deadline = time.time() + 600  # generous: CI machines may be busy
    while not list(killed.glob("latents/label=*/*.parquet")):
        assert process.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    victims = actor_processes("Encoder", under=process.pid)
    assert victims, "no encoder actor to kill"
    kill_process_tree(victims[0])
    assert process.wait(timeout=600) == 0, log.read_text()[-3000:]
    ids = pq.read_table(killed / "latents", columns=["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 120  # 12 per class of the ten digits
    marker = json.loads((killed / "latents" / "_SUCCESS.json").read_text())
    assert marker["rows"] == 120 and marker["skipped_images"] == 0

    run_stages(("quantize", "synthesize"), *common, *two_actors)
    run_stages(("encode", "quantize", "synthesize"), *common, "--out", str(single))
    for folder, keys in (("latents", ["id"]), ("prototypes", ["label", "index"]), ("distilled", ["id"])):
        assert table(killed / folder, keys) == table(single / folder, keys), folder
