"""Issue 20: a local run's Ray workers are told their cluster, so Ray's own actors (Train's placement-group cleaner)
never find another run's Ray, or a `ray start` head, by auto-discovery."""

import os

import ray
from ray._private.services import canonicalize_bootstrap_address_or_die


@ray.remote(num_cpus=0)
def addresses() -> tuple[str | None, str]:
    return os.environ.get("RAY_ADDRESS"), canonicalize_bootstrap_address_or_die(None)


def test_workers_resolve_their_own_cluster(ray_local):
    own = ray.get_runtime_context().gcs_address
    assert ray.get(addresses.remote()) == (own, own)
