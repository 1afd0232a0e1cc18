"""Joining or starting Ray, and sizing work from what the cluster has."""

from __future__ import annotations

import logging
import os
import socket
import sys

import ray
import ray.data
from ray.util.debug import log_once

from raydistill.config import RayConfig
from raydistill.stages.progress import terminal

log = logging.getLogger(__name__)


def connect(config: RayConfig) -> None:
    """Joins the cluster at `config.address` or $RAY_ADDRESS (set by `ray job submit`), else starts a local Ray.

    A job never passes a runtime_env here: the one given to `ray job submit` applies unchanged.
    """
    if ray.is_initialized():
        return
    quiet_ray_console()
    if config.address or os.environ.get("RAY_ADDRESS"):
        started = ray.init(address=config.address, log_to_driver=True)
    else:
        # Train V2's controller takes one report per poll (2 s by default); with a checkpoint every epoch on a small
        # distilled set that poll, not training, would set the pace. Only a Ray started here inherits this.
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
        started = start_local_ray(config)
    ray.data.DataContext.get_current().enable_progress_bars = terminal()
    resources = ray.cluster_resources()
    log.info("Ray: %g CPUs, %g GPUs%s", resources.get("CPU", 0), resources.get("GPU", 0),
             f"; dashboard http://{started.dashboard_url}" if started.dashboard_url else "")


def quiet_ray_console() -> None:
    """Unless -v, Ray's and Ray Data's INFO lines (a Ray started, each dataset's execution plan, sink and finish
    lines) leave the console; they stay in Ray Data's log file and in RUN/logs/ (`runlog.run_log`).

    Four warnings are not for the user. Ray's notice that a local Ray has token authentication on: raydistill
    started that Ray and holds its token. Three of Ray Data's: its high-memory advice names `memory=` arguments of
    calls raydistill makes, measuring a process's whole RSS (torch's libraries included) against a decode task's
    share, so that detector is off; the notice that progress bars are off (stderr is no terminal), and, unless -v,
    the warning that the cluster has no free CPU when a dataset starts, are spent up front. That one reads the free
    CPUs at one instant: none right after a stage's tasks end (Ray reports freed resources a moment later), and none
    on an autoscaling cluster whose head has no CPUs; both go on.
    """
    verbose = logging.getLogger().isEnabledFor(logging.INFO)
    for name in ("ray", "ray.data"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.INFO if verbose else logging.WARNING)
                if verbose:
                    handler.removeFilter(_not_for_the_user)
                else:
                    handler.addFilter(_not_for_the_user)
    context = ray.data.DataContext.get_current()
    context.issue_detectors_config.detectors = [
        detector for detector in context.issue_detectors_config.detectors
        if detector.__name__ != "HighMemoryIssueDetector"]
    # Ray Data warns once per process, keyed by these names.
    if not terminal():
        log_once("ray_data_progress_manager_disabled")
    if not verbose:
        log_once("cpu_warning")


def _not_for_the_user(record: logging.LogRecord) -> bool:
    return record.name != "ray._private.authentication.authentication_token_setup"


def train_log_level() -> str:
    """Ray Train's log level: its INFO lines (a report and a checkpoint line per epoch, 840 in the demo) reach the
    console only under `-v`. Give it to `LoggingConfig` and to `apply_train_log_level` on the workers."""
    return "INFO" if logging.getLogger().isEnabledFor(logging.INFO) else "WARNING"


def apply_train_log_level(level: str) -> None:
    """On a Ray Train worker: Ray Train 2.60 logs each report at INFO through a logger named after its file, which
    the run's `LoggingConfig` does not reach, so that logger gets `level` here."""
    reporting = sys.modules.get("ray.train.v2._internal.execution.context")
    if reporting is not None:
        logging.getLogger(reporting.__file__).setLevel(level)


def free_port() -> int:
    """A TCP port no process listens on now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def start_local_ray(config: RayConfig) -> "ray._private.worker.RayContext":
    """A new Ray of our own, even where `ray start` or another run left one on this machine.

    Ray's own actors (Train's placement-group cleaner) find their cluster by auto-discovery, which fails, or picks
    another run's cluster, when this machine has more than one. So the GCS port is chosen here and every worker is
    told the address.
    """
    gcs_port = free_port()
    address = f"{ray.util.get_node_ip_address()}:{gcs_port}"
    os.environ["RAY_GCS_SERVER_PORT"] = str(gcs_port)  # read once, by the head node that ray.init starts
    try:
        return ray.init(
            address="local",
            num_cpus=config.num_cpus,
            object_store_memory=config.object_store_mb * 2**20,
            log_to_driver=True,
            runtime_env={"env_vars": {"RAY_ADDRESS": address}},
        )
    finally:
        del os.environ["RAY_GCS_SERVER_PORT"]


# Model batches per actor call: enough to amortise a call, few enough to keep every actor busy to the end.
BATCHES_PER_CALL = 4


def cluster_gpus() -> float:
    return float(ray.cluster_resources().get("GPU", 0))


def cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 1))


def gpus_per_actor(configured: float | None) -> float:
    """The configured GPUs per model actor, or 1 when the cluster has GPUs and 0 when it has none."""
    if configured is not None:
        return configured
    return 1.0 if cluster_gpus() > 0 else 0.0


def largest_node_cpus() -> float:
    """CPUs of the biggest live node (1 while no node with CPUs has joined): one actor or worker cannot ask for more,
    however many the cluster has in all; a request for more would wait forever."""
    return max((node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node["Alive"]), default=0.0) or 1.0


def cpus_per_actor(actors: int) -> float:
    """CPUs for each of `actors` CPU model actors, leaving one CPU for the read and decode tasks: a pool that
    took every CPU would wait forever for input no task can read. Shares may be fractional (two actors on a
    3-CPU machine get one each; on a 2-CPU machine, half each), and never exceed one node."""
    return min(max(1.0, cluster_cpus() - 1) / max(actors, 1), largest_node_cpus())


def cpus_per_train_worker(workers: int, spare: int = 0) -> int:
    """Whole CPUs for each of `workers` Ray Train workers: the cluster's CPUs less `spare`, split evenly, at least 1
    and at most one node's."""
    return max(1, min((int(cluster_cpus()) - spare) // workers, int(largest_node_cpus())))
