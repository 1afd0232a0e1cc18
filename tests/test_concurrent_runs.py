"""Issue 20: a local run's Ray workers are told their cluster, so Ray's own actors (Train's placement-group cleaner)
never find another run's Ray, or a `ray start` head, by auto-discovery; and no actor or worker asks for more CPUs
than one node has."""

import os

import pytest
import ray
from ray._private.services import canonicalize_bootstrap_address_or_die

from raydistill.stages import cluster


@ray.remote(num_cpus=0)
def addresses() -> tuple[str | None, str]:
    return os.environ.get("RAY_ADDRESS"), canonicalize_bootstrap_address_or_die(None)


def test_workers_resolve_their_own_cluster(ray_local):
    own = ray.get_runtime_context().gcs_address
    assert ray.get(addresses.remote()) == (own, own)


@pytest.mark.parametrize("nodes, actor_cpus, worker_cpus", [
    ([16, 16, 16, 16], 16.0, 16),  # the cluster's 64 CPUs would be a request no node can grant
    ([0, 1, 1], 1.0, 1),  # a head that runs no tasks and two 1-CPU workers: training waited forever on CPU 2
    ([0], 1.0, 1),  # workers still scaling from zero
    ([2], 1.0, 2),  # one machine: one CPU left for the read tasks
])
def test_cpu_requests_fit_on_one_node(monkeypatch, nodes, actor_cpus, worker_cpus):
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": float(n)}} for n in nodes])
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": float(sum(nodes))} if sum(nodes) else {})
    assert cluster.cpus_per_actor(1) == actor_cpus
    assert cluster.cpus_per_train_worker(1) == worker_cpus
