"""Cluster adapters: where trials run (local processes today; Ray behind the same seam)."""

from adapters.cluster.base import Cluster, TrialJob, TrialOutcome
from adapters.cluster.local import LocalProcessCluster

__all__ = ["Cluster", "LocalProcessCluster", "TrialJob", "TrialOutcome"]
