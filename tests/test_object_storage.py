"""Issue 20: a whole run on S3 (moto's server on this machine, reached as any S3 endpoint is, through the usual AWS
variables): parquet data read from a bucket, the run folder written to one, a second run on the same folder refused
while the first holds it, a kill and a rerun that resumes from the bucket, `raydistill verify` on the bucket, and no
credential anywhere in what the run wrote."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from conftest import kill_process_tree
from test_errors import write_shards

RAYDISTILL = str(Path(sys.executable).parent / "raydistill")
ACCESS_KEY, SECRET_KEY = "raydistill-test-key", "raydistill-test-secret-6f1c"


@pytest.fixture
def s3(tmp_path):
    """A bucket on a local S3 server, and the environment that points AWS clients (and so pyarrow) at it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": ACCESS_KEY,
           "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    env.pop("RAY_ADDRESS", None)
    fs = pafs.S3FileSystem(access_key=ACCESS_KEY, secret_key=SECRET_KEY, endpoint_override=f"{host}:{port}",
                           scheme="http", region="us-east-1", allow_bucket_creation=True)
    fs.create_dir("bucket")
    yield fs, env
    server.stop()


def exists(fs, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


@pytest.mark.slow
def test_a_run_on_s3_resumes_from_the_bucket_and_verifies(s3, tmp_path):
    fs, env = s3
    data = write_shards(tmp_path / "data", {0: 6, 1: 6, 2: 6}, ["cat", "dog", "eel"])
    pafs.copy_files(str(data), "bucket/data", destination_filesystem=fs)
    command = [RAYDISTILL, "run", "--data", "s3://bucket/data", "--out", "s3://bucket/run", "--ipc", "2",
               "--set", "train.epochs=40", "--set", "evaluate.baseline=false"]
    log = tmp_path / "run.log"
    with open(log, "w") as stderr:
        first = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.time() + 600
    while not exists(fs, "bucket/run/latents/_SUCCESS.json"):
        assert first.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 2 and f"in use by a run of pid {first.pid}" in second.stderr, second.stderr[-2000:]
    kill_process_tree(first.pid)
    first.wait()
    encoded = json.loads(fs.open_input_file("bucket/run/latents/_SUCCESS.json").readall())

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Execution plan" not in rerun.stderr  # Ray Data's INFO lines: in RUN/logs/ only, checked below
    assert json.loads(fs.open_input_file("bucket/run/latents/_SUCCESS.json").readall()) == encoded  # not redone
    report = json.loads(fs.open_input_file("bucket/run/report/report.json").readall())
    assert report["num_classes"] == 3 and report["students"]["convnet3"]["top1"] >= 0

    verify = subprocess.run([RAYDISTILL, "verify", "s3://bucket/run"], env=env, capture_output=True, text=True,
                            timeout=300)
    assert verify.returncode == 0, verify.stderr[-2000:]
    written = [info.path for info in fs.get_file_info(pafs.FileSelector("bucket/run", recursive=True))
               if info.type == pafs.FileType.File]
    assert any(path.endswith("config.json") for path in written)
    logs = [fs.open_input_file(path).readall().decode() for path in written if path.startswith("bucket/run/logs/")]
    assert any("Execution plan" in log and "report: running" in log for log in logs)  # the rerun's
    for path in written:
        content = fs.open_input_file(path).readall()
        assert SECRET_KEY.encode() not in content and ACCESS_KEY.encode() not in content, path
