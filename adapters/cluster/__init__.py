"""Cluster adapters: where trials run (local processes today; Ray behind the same seam).

``make_cluster(policy.cluster)`` builds the adapter a policy's ``cluster.kind`` names and
``reconfigure(cluster, policy.cluster)`` applies an edited one; ``SlottedCluster`` over a
shared ``SlotPool`` caps how many trials run at once across production lines.
"""

from adapters.cluster.base import Cluster, TrialJob, TrialOutcome
from adapters.cluster.factory import ADAPTERS, ConfigurableCluster, make_cluster, reconfigure
from adapters.cluster.local import LocalProcessCluster
from adapters.cluster.slots import SlotPool, SlottedCluster

__all__ = [
    "ADAPTERS",
    "Cluster",
    "ConfigurableCluster",
    "LocalProcessCluster",
    "SlotPool",
    "SlottedCluster",
    "TrialJob",
    "TrialOutcome",
    "make_cluster",
    "reconfigure",
]
