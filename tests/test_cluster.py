"""Issue 20: a run submitted as a Ray job to an autoscaling cluster whose head runs no tasks and whose CPU and GPU
worker types start from zero. The autoscaler launches workers for the run's demand, every stage runs on them, the
outputs equal those of a one-node run made at the same time on the same machine (two Rays, each run finding its own),
and the workers go once idle."""

import threading
import time

import pyarrow.parquet as pq
import pytest

from conftest import invoke
from fake_cluster import MIB, FakeCluster

RUN = ["--ipc", "2", "--max-per-class", "10", "--prior", "tiny", "--decode", "decoder",
       "--set", "train.epochs=2", "--set", "evaluate.baseline=false"]
# As jobs/ ask: GPU actors explicitly (the cluster has no GPU until a GPU worker starts). The fake GPU worker has no
# CUDA, so the actors run on its CPU as they would on any machine without one; training stays on CPU workers.
GPU_ACTORS = ["--set", "encode.gpus_per_actor=1", "--set", "synthesize.gpus_per_actor=1",
              "--set", "evaluate.gpus_per_actor=1", "--set", "train.use_gpu=false"]
WORKER_TYPES = {"cpu_worker": {"CPU": 1, "object_store_memory": 200 * MIB},
                "gpu_worker": {"CPU": 1, "GPU": 1, "object_store_memory": 200 * MIB}}


def table(path, keys):
    return pq.read_table(path).sort_by([(key, "ascending") for key in keys]).to_pylist()


@pytest.fixture
def cluster():
    cluster = FakeCluster.start(WORKER_TYPES)
    yield cluster
    cluster.stop()


@pytest.mark.slow
def test_a_job_on_an_autoscaling_cluster_runs_on_workers_started_for_it(cluster, ray_local, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient
    from ray.util.state import list_actors

    head = cluster.wait_for(cluster.alive_nodes, "the head is up")
    assert len(head) == 1 and not head[0]["resources_total"].get("CPU")
    out = tmp_path / "on-cluster"
    client = cluster.wait_for(lambda: JobSubmissionClient(cluster.dashboard_url), "the job API answers")
    entrypoint = " ".join(["raydistill", "run", "--out", str(out), *RUN, *GPU_ACTORS])
    submission = cluster.wait_for(lambda: client.submit_job(entrypoint=entrypoint), "the job is submitted")

    nodes_seen: dict[str, dict] = {}
    finished = threading.Event()

    def watch_nodes():
        while not finished.is_set():
            try:
                nodes_seen.update({node["node_id"]: node for node in cluster.alive_nodes()})
            except Exception:
                pass  # the state API can miss a beat while nodes join
            time.sleep(1)

    watcher = threading.Thread(target=watch_nodes, daemon=True)
    watcher.start()
    one_node = tmp_path / "one-node"
    invoke("run", "--out", str(one_node), *RUN)  # on the tests' local Ray, while the job runs
    deadline = time.time() + 600
    while (status := client.get_job_status(submission)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED,
                                                                 JobStatus.STOPPED}:
        assert time.time() < deadline, client.get_job_logs(submission)[-3000:]
        time.sleep(1)
    finished.set()
    watcher.join()
    assert status == JobStatus.SUCCEEDED, client.get_job_logs(submission)[-3000:]

    workers = {node_id: node for node_id, node in nodes_seen.items() if not node["is_head_node"]}
    gpu_workers = {node_id for node_id, node in workers.items() if node["resources_total"].get("GPU")}
    assert gpu_workers and len(workers) > len(gpu_workers), "the autoscaler did not launch both worker types"
    job_id = client.get_job_info(submission).job_id
    actors = list_actors(address=cluster.dashboard_url, filters=[("job_id", "=", job_id)], detail=True, limit=1000)
    # The stages' actors; Ray's bookkeeping actors (Train's controller, Data's stats) live on the head by design.
    placed = {(actor.class_name, actor.node_id) for actor in actors
              if "MapBatches" in actor.class_name or actor.class_name == "RayTrainWorker"}
    assert any("Encoder" in name for name, _ in placed) and any("RayTrainWorker" in name for name, _ in placed)
    assert all(node_id in workers for _, node_id in placed), f"a stage ran on the head: {placed}"
    assert all(node_id in gpu_workers for name, node_id in placed if "Encoder" in name)

    cluster.wait_for(lambda: len(cluster.alive_nodes()) == 1, "the idle workers are terminated", timeout=180)
    for folder, keys in (("latents", ["id"]), ("prototypes", ["label", "index"]), ("distilled", ["id"])):
        assert table(out / folder, keys) == table(one_node / folder, keys), folder
