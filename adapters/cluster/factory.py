"""Build the cluster a policy's ``cluster`` section asks for, and apply an edited one.

Where it sits in the loop: wiring on the *act* side. Each ``cluster.kind`` names one adapter
class; a new adapter (Ray) is its own module plus one line in :data:`ADAPTERS`. Adapters are
imported on first use, so a heavy client library loads only where a policy asks for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from adapters.cluster.base import Cluster

if TYPE_CHECKING:
    from policies.model import ClusterPolicy

__all__ = ["ADAPTERS", "ConfigurableCluster", "make_cluster", "reconfigure"]

#: ``cluster.kind`` -> ``"module:Class"``; the class has ``from_spec(spec)``.
ADAPTERS: dict[str, str] = {
    "local": "adapters.cluster.local:LocalProcessCluster",
    "ray": "adapters.cluster.ray:RayCluster",
}


@runtime_checkable
class ConfigurableCluster(Cluster, Protocol):
    """A cluster that can take an edited policy section in place, between trials."""

    def configure(self, spec: ClusterPolicy) -> bool:
        """Apply ``spec``; False (and nothing changed) when it is of a kind this cluster is not."""
        ...


def make_cluster(spec: ClusterPolicy) -> Cluster:
    """A new cluster of ``spec.kind`` configured by ``spec``."""
    target = ADAPTERS.get(spec.kind)
    if target is None:  # the policy model only admits known kinds: a missing line here
        raise ValueError(f"no cluster adapter for kind {spec.kind!r} (known: {sorted(ADAPTERS)})")
    module, _, name = target.partition(":")
    adapter = getattr(importlib.import_module(module), name)
    cluster: Cluster = adapter.from_spec(spec)
    return cluster


def reconfigure(cluster: Cluster, spec: ClusterPolicy) -> Cluster:
    """The cluster to use under an edited policy: ``cluster`` itself, configured in place
    when it accepts ``spec``; otherwise it is closed (its idle workers freed) and a new one
    of ``spec.kind`` is built. Call it between trials, from the thread that runs them."""
    if isinstance(cluster, ConfigurableCluster) and cluster.configure(spec):
        return cluster
    cluster.close()
    return make_cluster(spec)
