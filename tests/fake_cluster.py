"""A fake multi-node autoscaling Ray cluster on this machine: Ray's `fake_multinode` provider behind a `ray start`
head, for tests.

Ray's own `ray.cluster_utils.AutoscalingCluster` cannot be used: its start and shutdown run `ray stop --force`, which
kills every Ray on the machine (the suite's own included), and this wheel lacks the example config it reads. This one
owns its processes: its own temp dir, ports and GCS address, and `stop` kills only the processes whose command line
names them (the head's daemons and the worker nodes the autoscaler started).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import ray

from conftest import process_tree
from raydistill.stages.cluster import free_port

MIB = 2**20


def autoscaling_config(gcs_address: str, worker_types: dict[str, dict]) -> dict:
    """A head that runs no tasks (as cluster/aws.yaml's) and worker types that scale from zero, idle ones going after
    a minute: as in aws.yaml (10 minutes), longer than the gaps between one run's stages. With 6 s, the GPU worker
    left while training ran and a CI run's evaluation waited forever for the one that replaced it."""
    node_types = {"ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0}}
    for name, resources in worker_types.items():
        node_types[name] = {"resources": resources, "node_config": {}, "min_workers": 0, "max_workers": 1}
    return {
        "cluster_name": "fake-multinode",
        "max_workers": len(worker_types),
        "idle_timeout_minutes": 1,
        "upscaling_speed": 1.0,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs_address},
        "head_node_type": "ray.head.default",
        "available_node_types": node_types,
        "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


@dataclass
class FakeCluster:
    """Token authentication on, as on a real cluster: `env` holds the token for Ray's CLI, `get` sends it."""

    temp_dir: str
    gcs_address: str
    dashboard_url: str
    env: dict[str, str]

    @classmethod
    def start(cls, worker_types: dict[str, dict]) -> FakeCluster:
        # Ray's socket paths must stay under 108 bytes: a short folder of our own, not pytest's tmp_path.
        temp_dir = tempfile.mkdtemp(prefix="rdfake-", dir="/tmp")
        ip = ray.util.get_node_ip_address()
        gcs_port, dashboard_port = free_port(), free_port()
        gcs_address = f"{ip}:{gcs_port}"
        config = Path(temp_dir) / "autoscaling.json"
        config.write_text(json.dumps(autoscaling_config(gcs_address, worker_types)))
        env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
               "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
               "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        env.pop("RAY_ADDRESS", None)
        cluster = cls(temp_dir, gcs_address, f"http://127.0.0.1:{dashboard_port}", env)
        try:
            subprocess.run(
                [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={gcs_port}",
                 f"--dashboard-port={dashboard_port}", "--dashboard-host=127.0.0.1", "--include-dashboard=true",
                 f"--ray-client-server-port={free_port()}", "--dashboard-agent-listen-port=0",
                 f"--temp-dir={temp_dir}", f"--autoscaling-config={config}", "--num-cpus=0", "--num-gpus=0",
                 f"--object-store-memory={200 * MIB}", "--disable-usage-stats"],
                env=env, check=True, capture_output=True, text=True, timeout=180, start_new_session=True)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def get(self, url: str) -> bytes:
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read()

    def state(self, kind: str, **filters: str) -> list[dict]:
        """Ray's state API (`/api/v0/nodes`, `/api/v0/actors`) over HTTP, with the token."""
        query = "".join(f"&filter_keys={key}&filter_predicates=%3D&filter_values={value}"
                        for key, value in filters.items())
        answer = json.loads(self.get(f"{self.dashboard_url}/api/v0/{kind}?detail=1&limit=10000{query}"))
        return answer["data"]["result"]["result"]

    def alive_nodes(self) -> list[dict]:
        return [node for node in self.state("nodes") if node["state"] == "ALIVE"]

    def autoscaler_log(self, characters: int = 3000) -> str:
        """The end of the autoscaler's log: which nodes it launched and terminated, and the demand it saw."""
        log = Path(self.temp_dir) / "session_latest" / "logs" / "monitor.log"
        return log.read_text(errors="replace")[-characters:] if log.is_file() else "(no autoscaler log)"

    def metrics_endpoints(self) -> list[str]:
        """Every live node's Prometheus endpoint, from the file Ray writes for Prometheus's service discovery."""
        groups = json.loads((Path(self.temp_dir) / "prom_metrics_service_discovery.json").read_text())
        return [f"http://{target}/metrics" for group in groups for target in group["targets"]]

    def wait_for(self, predicate, what: str, timeout: float = 300):
        deadline = time.time() + timeout
        while True:
            try:
                value = predicate()
            except Exception:  # the dashboard answers 500 for its first seconds
                value = None
            if value:
                return value
            assert time.time() < deadline, f"the fake cluster never got there: {what}"
            time.sleep(1)

    def stop(self) -> None:
        """SIGKILLs every process whose command line names this cluster's temp dir or GCS address, with its
        descendants: never `ray stop`, which would take every Ray on the machine."""
        owned = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    command = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
                except OSError:
                    continue
                if self.temp_dir in command or self.gcs_address in command:
                    owned += process_tree(int(entry))
        for pid in set(owned) - {os.getpid()}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)
