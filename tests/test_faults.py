"""Faults lose nothing: a killed driver or encoder actor leaves the same results as an uninterrupted run, and the
number of actors does not change them."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from conftest import actor_processes, invoke, kill_process_tree

RAYDISTILL = str(Path(sys.executable).parent / "raydistill")
# A quantizer slow enough (about a second per class: d3hr's group search on pixel latents) that the kill lands
# while classes are still being quantized.
ARGS = ["--ipc", "3", "--max-per-class", "40", "--method", "d3hr", "--space", "latent", "--set",
        "quantize.candidates=30000", "--set", "evaluate.baseline=false"]


def table(path: Path, sort: list[str]) -> list[dict]:
    return pq.read_table(path).sort_by([(key, "ascending") for key in sort]).to_pylist()


def run_stages(stages: tuple[str, ...], *args: str) -> None:
    for stage in stages:
        invoke(stage, *args)


def test_driver_killed_during_quantize_resumes_to_the_same_result(ray_local, tmp_path):
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

    # The stage command resumes as `run` would (a whole rerun would add training and evaluation to this test).
    rerun = subprocess.run([RAYDISTILL, "-v", "quantize", *command[2:]], capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert json.loads((interrupted / "latents" / "_SUCCESS.json").read_text())["seconds"] == encode_seconds
    kept = int(rerun.stderr.split("quantize prototypes: ")[1].split(" of ")[0])
    assert kept >= finished
    invoke("synthesize", "--out", str(interrupted), *ARGS)

    # The same stages from scratch in the same run: nothing kept this time.
    resumed = {"prototypes": table(interrupted / "prototypes", ["label", "index"]),
               "distilled": table(interrupted / "distilled", ["id"])}
    (interrupted / "prototypes" / "_STARTED.json").unlink()
    run_stages(("quantize", "synthesize"), "--out", str(interrupted), *ARGS)
    assert table(interrupted / "prototypes", ["label", "index"]) == resumed["prototypes"]
    assert table(interrupted / "distilled", ["id"]) == resumed["distilled"]


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
