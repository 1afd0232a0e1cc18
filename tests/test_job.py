"""A real Ray job: `ray start --head` with token auth, `ray job submit -- raydistill run`, the head's metrics."""

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import kill_process_tree

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def head_node(tmp_path):
    """A head node of its own; stopped by killing its `ray start --block` process tree, which leaves any other Ray
    alone (`ray stop` would also end the test session's Ray) and takes no graceful half minute."""
    ports = {name: free_port() for name in ("gcs", "dashboard", "agent", "metrics")}
    # A temp dir of its own: `ray start` records its address in <temp dir>/ray_current_cluster, and a record left in
    # /tmp/ray after the kill would send Ray Train's placement-group cleaner in every later Ray on this machine to
    # this dead address (12 s more per training run). Short, as Ray's socket paths must fit in 107 characters.
    temp_dir = tempfile.mkdtemp(prefix="rd-head-")
    # Token auth on, with a token of the test's own (not whatever ~/.ray/auth_token holds), for head and client.
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={ports['gcs']}", "--num-cpus=2",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={ports['dashboard']}",
         f"--dashboard-agent-listen-port={ports['agent']}", f"--metrics-export-port={ports['metrics']}",
         "--object-store-memory=400000000", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{ports['dashboard']}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/version", timeout=2)
                break
            except urllib.error.HTTPError:  # any answer means it is up (token auth answers 401 without a token)
                break
            except OSError:
                assert head.poll() is None and time.time() < deadline, "the head node did not come up"
                time.sleep(1)
        yield url, ports["metrics"], env
    finally:
        kill_process_tree(head.pid)
        head.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_runs_the_pipeline_and_exports_metrics(head_node, tmp_path):
    url, metrics_port, env = head_node
    out = tmp_path / "job-run"
    command = [str(BIN / "ray"), "job", "submit", "--address", url, "--",
               "raydistill", "run", "--ipc", "2", "--out", str(out),
               "--set", "train.epochs=2", "--set", "evaluate.baseline=false"]
    # The job agent takes a few seconds after the dashboard to accept jobs; on a loaded machine the client's first
    # version check can also time out before the dashboard answers.
    for _ in range(10):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        printed = result.stdout + result.stderr
        if "No available agent" not in printed and "Failed to connect to Ray at address" not in printed:
            break
        time.sleep(3)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout + result.stderr
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["dataset"] == "digits" and report["students"]["convnet3"]["top1"] > 0
    expected = {"raydistill_images_encoded_total", "raydistill_images_decoded_total",
                "raydistill_classes_quantized_total", "raydistill_prototypes_synthesized_total",
                "raydistill_images_trained_total"}
    deadline, found = time.time() + 60, {}
    while time.time() < deadline and not expected <= found.keys():  # workers export every few seconds
        found = {}
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        for name, run, value in re.findall(r'^ray_(raydistill_\w+)\{[^}]*run="([^"]*)"[^}]*\} ([0-9.e+]+)$', text, re.M):
            if run == "job-run" and float(value) > 0:
                found[name] = found.get(name, 0) + float(value)
        time.sleep(2)
    assert expected <= found.keys(), f"missing from the head's metrics: {sorted(expected - found.keys())}"
    assert found["raydistill_images_encoded_total"] == report["train_images"]
