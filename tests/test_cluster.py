"""Issue 20: `ray job submit -- raydistill run` to an autoscaling cluster with token authentication, a head that runs
no tasks, and CPU and GPU worker types that start from zero. The autoscaler launches workers for the run's demand,
every stage runs on them, their metrics reach Prometheus's endpoints, the outputs equal those of a one-node run made
at the same time on the same machine (two Rays, each run finding its own), and the workers go once idle."""

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import invoke, table
from fake_cluster import MIB, FakeCluster

BIN = Path(sys.executable).parent
RUN = ["--ipc", "2", "--max-per-class", "10", "--prior", "tiny", "--decode", "decoder",
       "--set", "train.epochs=2", "--set", "evaluate.baseline=false"]
# As jobs/ ask: GPU actors explicitly (the cluster has no GPU until a GPU worker starts). The fake GPU worker has no
# CUDA, so the actors run on its CPU as they would on any machine without one; training stays on CPU workers.
GPU_ACTORS = ["--set", "encode.gpus_per_actor=1", "--set", "synthesize.gpus_per_actor=1",
              "--set", "evaluate.gpus_per_actor=1", "--set", "train.use_gpu=false"]
WORKER_TYPES = {"cpu_worker": {"CPU": 1, "object_store_memory": 200 * MIB},
                "gpu_worker": {"CPU": 1, "GPU": 1, "object_store_memory": 200 * MIB}}
COUNTERS = {"raydistill_images_encoded_total", "raydistill_images_decoded_total", "raydistill_classes_quantized_total",
            "raydistill_prototypes_synthesized_total", "raydistill_images_trained_total"}
METRIC_LINE = re.compile(r'^ray_(raydistill_\w+)\{[^}]*run="([^"]*)"[^}]*\} ([0-9.e+]+)$', re.M)


@pytest.fixture
def cluster():
    cluster = FakeCluster.start(WORKER_TYPES)
    yield cluster
    cluster.stop()


class Watcher(threading.Thread):
    """Every second, the live nodes and, from each node's Prometheus endpoint, the highest value of each raydistill
    counter of `run` seen there (a worker node's counters leave with it)."""

    def __init__(self, cluster: FakeCluster, run: str):
        super().__init__(daemon=True)
        self.cluster, self.run_name, self.finished = cluster, run, threading.Event()
        self.nodes: dict[str, dict] = {}
        self.counters: dict[tuple[str, str], float] = {}

    def run(self):
        while not self.finished.is_set():
            try:
                self.nodes.update({node["node_id"]: node for node in self.cluster.alive_nodes()})
                for endpoint in self.cluster.metrics_endpoints():
                    totals: dict[str, float] = {}
                    for name, run, value in METRIC_LINE.findall(self.cluster.get(endpoint).decode()):
                        if run == self.run_name:
                            totals[name] = totals.get(name, 0.0) + float(value)
                    for name, total in totals.items():
                        self.counters[endpoint, name] = max(self.counters.get((endpoint, name), 0.0), total)
            except Exception:
                pass  # the state API and the endpoints can miss a beat while nodes join and leave
            time.sleep(1)

    def totals(self) -> dict[str, float]:
        found: dict[str, float] = {}
        for (_, name), value in self.counters.items():
            found[name] = found.get(name, 0.0) + value
        return found


def submit(cluster: FakeCluster, *args: str) -> str:
    """`ray job submit --no-wait` with the cluster's token; the job agent takes a few seconds after the dashboard to
    accept jobs."""
    command = [str(BIN / "ray"), "job", "submit", "--no-wait", "--address", cluster.dashboard_url, "--", *args]
    for _ in range(20):
        result = subprocess.run(command, env=cluster.env, capture_output=True, text=True, timeout=120)
        if result.returncode == 0 and (found := re.search(r"raysubmit_\w+", result.stdout + result.stderr)):
            return found.group(0)
        time.sleep(3)
    raise AssertionError(result.stdout[-2000:] + result.stderr[-2000:])


@pytest.mark.slow
def test_a_job_on_an_autoscaling_cluster_runs_on_workers_started_for_it(cluster, ray_local, tmp_path):
    head = cluster.wait_for(cluster.alive_nodes, "the head is up")
    assert len(head) == 1 and not head[0]["resources_total"].get("CPU")
    out = tmp_path / "on-cluster"
    submission = submit(cluster, "raydistill", "run", "--out", str(out), *RUN, *GPU_ACTORS)
    watcher = Watcher(cluster, out.name)
    watcher.start()
    one_node = tmp_path / "one-node"
    invoke("run", "--out", str(one_node), *RUN)  # on the tests' local Ray, while the job runs

    job_url = f"{cluster.dashboard_url}/api/jobs/{submission}"
    deadline = time.time() + 600
    while (job := json.loads(cluster.get(job_url)))["status"] not in {"SUCCEEDED", "FAILED", "STOPPED"}:
        if time.time() > deadline:
            logs = json.loads(cluster.get(f"{job_url}/logs"))["logs"][-3000:]
            raise AssertionError(f"the job did not finish\n{logs}\n{cluster.autoscaler_log()}")
        time.sleep(1)
    time.sleep(3)  # one more look at the workers' endpoints: they export every few seconds
    watcher.finished.set()
    watcher.join()
    logs = json.loads(cluster.get(f"{job_url}/logs"))["logs"]
    assert job["status"] == "SUCCEEDED", logs[-3000:]
    # The job log reads as the console does: Ray Train's per-epoch lines only under -v.
    assert "raydistill: train:" in logs and "Reporting training result" not in logs and "Execution plan" not in logs

    workers = {node_id: node for node_id, node in watcher.nodes.items() if not node["is_head_node"]}
    gpu_workers = {node_id for node_id, node in workers.items() if node["resources_total"].get("GPU")}
    assert gpu_workers and len(workers) > len(gpu_workers), "the autoscaler did not launch both worker types"
    # The stages' actors; Ray's bookkeeping actors (Train's controller, Data's stats) live on the head by design.
    placed = {(actor["class_name"], actor["node_id"]) for actor in cluster.state("actors", job_id=job["job_id"])
              if "MapBatches" in actor["class_name"] or actor["class_name"] == "RayTrainWorker"}
    assert any("Encoder" in name for name, _ in placed) and any(name == "RayTrainWorker" for name, _ in placed)
    assert all(node_id in workers for _, node_id in placed), f"a stage ran on the head: {placed}"
    assert all(node_id in gpu_workers for name, node_id in placed if "Encoder" in name)

    found = watcher.totals()
    assert COUNTERS <= found.keys(), f"missing from the nodes' metrics: {sorted(COUNTERS - found.keys())}"
    report = json.loads((out / "report" / "report.json").read_text())
    assert found["raydistill_images_encoded_total"] == report["train_images"]

    cluster.wait_for(lambda: len(cluster.alive_nodes()) == 1, "the idle workers are terminated", timeout=180)
    for folder, keys in (("latents", ["id"]), ("prototypes", ["label", "index"]), ("distilled", ["id"])):
        assert table(out / folder, keys) == table(one_node / folder, keys), folder
