"""One local Ray for the whole test run, with explicit small resources (NeMo Curator / Ray's own conftest style)."""

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def invoke(*args: str):
    """Runs a `raydistill` command in this process, on the tests' Ray (no Ray start per command)."""
    from click.testing import CliRunner

    from raydistill.cli import cli

    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="session")
def ray_local():
    import ray

    from raydistill.config import RayConfig
    from raydistill.stages.cluster import connect

    connect(RayConfig(num_cpus=2, object_store_mb=500))  # the local Ray a run starts, so its workers see the same
    yield
    ray.shutdown()


@pytest.fixture
def live_process():
    """The pid of a process that lives through the test: a lock holder other than the test's own process."""
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process.pid
    process.kill()
    process.wait()


def plant_lock(folder: Path, **holder) -> None:
    import json

    from raydistill.rundir import LOCK

    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK).write_text(json.dumps({"started_at": "2026-12-02T00:00:00+0000", **holder}))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is absent (it is only on the developers' and CI machines)")
    return SHARED


@pytest.fixture(scope="session")
def saved_dit(tmp_path_factory) -> Path:
    """dit-tiny's parts saved in the facebook/DiT-XL-2-256 layout (transformer/, vae/, scheduler/)."""
    from diffusers import DDIMScheduler

    from raydistill.priors import load_prior

    prior = load_prior("dit-tiny")
    root = tmp_path_factory.mktemp("dit")
    prior.denoiser.save_pretrained(root / "transformer")
    prior.autoencoder.vae.save_pretrained(root / "vae")
    DDIMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, clip_sample=False).save_pretrained(
        root / "scheduler")
    return root


@pytest.fixture(scope="session")
def saved_sd(tmp_path_factory) -> Path:
    """sd-tiny's parts saved in the Stable Diffusion 1.5 layout (vae/, unet/, text_encoder/, tokenizer/, scheduler/)."""
    from diffusers import DDIMScheduler

    from raydistill.priors import load_prior

    prior = load_prior("sd-tiny")
    root = tmp_path_factory.mktemp("sd")
    prior.denoiser.save_pretrained(root / "unet")
    prior.autoencoder.vae.save_pretrained(root / "vae")
    prior.text_encoder.save_pretrained(root / "text_encoder")
    prior.tokenizer.save_pretrained(root / "tokenizer")
    DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False).save_pretrained(
        root / "scheduler")
    return root


def wait_for_registered_checkpoint(out: Path, run_pattern: str, process, accept=lambda metrics: True,
                                   timeout: float = 600) -> dict:
    """Waits until Ray Train has recorded a checkpoint, whose reported metrics `accept`, in the snapshot of a run
    under `out` (a glob), and returns those metrics. The snapshot is what a rerun resumes from: a checkpoint
    folder appears before it is registered, and a kill in between leaves nothing to resume."""
    import json
    import time

    deadline = time.time() + timeout  # generous: CI machines may be busy
    while True:
        for snapshot in out.glob(f"{run_pattern}/checkpoint_manager_snapshot.json"):
            try:
                latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result")
            except (OSError, ValueError):
                continue  # caught mid-write
            if latest and accept(latest["metrics"]):
                return latest["metrics"]
        assert process.poll() is None and time.time() < deadline, f"no checkpoint registered under {out}"
        time.sleep(0.1)


def table(path: Path, sort: list[str]) -> list[dict]:
    """A parquet folder's rows in the order of the `sort` columns: outputs compared regardless of block order."""
    import pyarrow.parquet as pq

    return pq.read_table(path).sort_by([(key, "ascending") for key in sort]).to_pylist()


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (a local Ray's head processes and workers descend from the driver)."""
    import os

    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # the process ended while we looked
            children.setdefault(parent, []).append(int(entry))
    tree, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        tree.append(current)
        frontier += children.get(current, [])
    return tree


def actor_processes(title: str, under: int) -> list[int]:
    """Pids of the Ray worker processes descending from process `under` whose title (`ray::<actor class>...`)
    contains `title`: only the test's own run, never another Ray on the machine."""
    pids = []
    for pid in process_tree(under):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue  # the process ended while we looked
        if command.startswith("ray::") and title in command:
            pids.append(pid)
    return pids


def kill_process_tree(pid: int) -> None:
    """SIGKILLs a process, its process group and every descendant, like a crashed machine would: Ray's head
    processes start in sessions of their own, and left alive they would hold ports that a later Ray needs."""
    import os
    import signal

    tree = process_tree(pid)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for member in tree:
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass
