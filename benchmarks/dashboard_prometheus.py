"""The Grafana dashboard (cluster/grafana/raydistill-dashboard.json) against a real Prometheus.

Starts Debian's `prometheus` scraping this machine's Ray (the targets Ray writes to its session's service-discovery
file, every second), runs one small distillation that exercises the counters and gauges the dashboard plots (a
diffusion prior with DDIM inversion, an undecodable image, doping), then asks Prometheus's HTTP API for each panel's
PromQL over the run's time span. Then `raydistill prior train` trains a few steps of a tiny DiT on the run's latents
against the same Ray, as a second driver (started in this process after a run, it waited for its worker group), so
the panels' prior-training queries have data too. Every query of every panel must return data. Prints a table, then
one JSON line.

    python -m benchmarks.dashboard_prometheus [--out runs/bench-dashboard]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

DASHBOARD = Path(__file__).resolve().parents[1] / "cluster" / "grafana" / "raydistill-dashboard.json"


def panel_queries(dashboard: dict) -> list[tuple[str, list[str]]]:
    return [(panel["title"], [target["expr"] for target in panel.get("targets", [])])
            for panel in dashboard["panels"] if panel.get("targets")]


def write_digits_folders(root: Path, train_per_class: int, val_per_class: int) -> tuple[Path, Path]:
    """ImageFolders of scikit-learn's digits as 32 px PNGs (train and val), plus one undecodable train image."""
    digits = load_digits()
    for split, first, count in (("train", 0, train_per_class), ("val", train_per_class, val_per_class)):
        for label in range(10):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in np.flatnonzero(digits.target == label)[first:first + count]:
                pixels = (digits.images[i] * 255 / 16).astype(np.uint8)
                Image.fromarray(pixels).resize((32, 32)).convert("RGB").save(folder / f"{i}.png")
    (root / "train" / "0" / "broken.png").write_bytes(b"\x89PNG not really")
    return root / "train", root / "val"


def start_prometheus(binary: str, targets_file: str, folder: Path, port: int) -> subprocess.Popen:
    config = folder / "prometheus.yml"
    config.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "ray", "file_sd_configs": [{"files": [targets_file],
                                                                     "refresh_interval": "1s"}]}],
    }))
    log = open(folder / "prometheus.log", "w")
    return subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={folder / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)


def query_range(url: str, expr: str, start: float, end: float) -> list:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": "1s"})
    with urllib.request.urlopen(f"{url}/api/v1/query_range?{params}", timeout=30) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, "prometheus exited; see its log"
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("prometheus did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/bench-dashboard")
    parser.add_argument("--quick", action="store_true", help="accepted for make bench; this benchmark is short")
    args = parser.parse_args()
    binary = shutil.which("prometheus")
    if binary is None:
        raise SystemExit("prometheus is not installed (Debian: apt-get install prometheus)")
    # Ray's metrics agent exports every 10 s by default; a 2-s training worker's gauges would never be seen.
    os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")

    import ray
    from click.testing import CliRunner

    from raydistill.cli import cli
    from raydistill.config import RayConfig
    from raydistill.stages.cluster import connect, free_port

    def raydistill(*command: str) -> None:
        result = CliRunner().invoke(cli, list(command), catch_exceptions=False)
        assert result.exit_code == 0, result.output

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    train, val = write_digits_folders(out / "data", train_per_class=12, val_per_class=5)
    connect(RayConfig())
    session = ray._private.worker._global_node.get_session_dir_path()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as scratch:
        prometheus = start_prometheus(binary, f"{session}/prom_metrics_service_discovery.json", Path(scratch), port)
        try:
            wait_ready(url, prometheus)
            start = time.time()
            raydistill("run", "--data", str(train), "--val-data", str(val), "--out", str(out / "run"),
                       "--prior", "dit-tiny", "--space", "noise", "--ipc", "2", "--dope", "5",
                       "--set", "encode.steps=5", "--set", "synthesize.steps=5", "--set", "train.epochs=20",
                       "--set", "evaluate.baseline=false")
            address = ray.get_runtime_context().gcs_address
            subprocess.run([str(Path(sys.executable).with_name("raydistill")), "prior", "train", "--latents",
                            str(out / "run" / "latents"), "--out", str(out / "prior"), "--preset", "tiny",
                            "--steps", "30", "--batch-size", "16", "--warmup-steps", "5", "--checkpoint-every", "10",
                            "--address", address], check=True, timeout=900)
            time.sleep(5)  # the last export, and a scrape after it
            end = time.time()
            rows = []
            for title, queries in panel_queries(json.loads(DASHBOARD.read_text())):
                found = [len(query_range(url, expr.replace("$run", "run|prior").replace("$__range", "1h"),
                                         start, end)) for expr in queries]
                rows.append({"panel": title, "series_per_query": found, "has_data": all(found)})
        finally:
            prometheus.terminate()
            prometheus.wait()
    for row in rows:
        state = "data" if row["has_data"] else "EMPTY"
        print(f"{row['panel']:<38} {state:<6} series per query {row['series_per_query']}")
    empty = [row["panel"] for row in rows if not row["has_data"]]
    print(json.dumps({"benchmark": "dashboard_prometheus", "panels": len(rows), "with_data": len(rows) - len(empty),
                      "empty_panels": empty, "empty_queries": sum(q == 0 for r in rows for q in r["series_per_query"]),
                      "prometheus": subprocess.run([binary, "--version"], capture_output=True, text=True)
                      .stdout.splitlines()[0]}))
    if empty:
        raise SystemExit(f"panels with a query without data: {empty}")


if __name__ == "__main__":
    main()
