"""make_cluster and reconfigure: one adapter per ``cluster.kind``, edits applied in place."""

from __future__ import annotations

from pydantic import TypeAdapter

from adapters.cluster import (
    ADAPTERS,
    LocalProcessCluster,
    TrialOutcome,
    make_cluster,
    reconfigure,
)
from policies import parse_policy
from policies.model import ClusterPolicy, LocalClusterPolicy


def test_every_kind_the_policy_admits_has_an_adapter() -> None:
    schema = TypeAdapter(ClusterPolicy).json_schema()
    assert set(schema["discriminator"]["mapping"]) == set(ADAPTERS)


def test_a_policy_builds_its_cluster_without_leaking_kind() -> None:
    policy = parse_policy("name: x\ncluster: {reuse_workers: false, worker_idle_s: 7}\n")
    cluster = make_cluster(policy.cluster)
    assert isinstance(cluster, LocalProcessCluster)
    assert (cluster.reuse_workers, cluster.worker_idle_s) == (False, 7.0)
    assert cluster.max_trials_per_worker == 50


def test_an_edit_of_the_same_kind_is_applied_in_place() -> None:
    cluster = make_cluster(LocalClusterPolicy())
    again = reconfigure(cluster, LocalClusterPolicy(max_trials_per_worker=3))
    assert again is cluster and cluster.max_trials_per_worker == 3  # type: ignore[attr-defined]


class _Fixed:
    """A cluster that cannot take a policy section (no configure): replaced on an edit."""

    description = "fixed"
    closed = False

    def run(self, job: object, on_progress: object = None, should_stop: object = None):
        return TrialOutcome("failed")

    def close(self) -> None:
        self.closed = True


def test_a_cluster_that_cannot_take_the_edit_is_closed_and_replaced() -> None:
    old = _Fixed()
    new = reconfigure(old, LocalClusterPolicy(reuse_workers=False))
    assert old.closed and isinstance(new, LocalProcessCluster) and not new.reuse_workers
