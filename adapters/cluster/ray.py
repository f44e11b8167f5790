"""Ray cluster: trials on the nodes of a Ray cluster (``cluster.kind: ray``).

The daemon never imports Ray: each running trial has a driver process of its own
(``adapters/cluster/ray_driver.py``), reused between trials like a local worker, which runs
the trial in a Ray actor with the resources the policy asks for. A driver lost with its
cluster (a head restarted) costs that trial; the next trial starts a new driver, which
connects again. With ``address`` unset the cluster starts a head on this machine for
itself (``adapters/cluster/ray_nodes.py``) and stops it on close.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from adapters.cluster.base import TrialJob, TrialOutcome
from adapters.cluster.local import ProcessCluster
from adapters.cluster.ray_driver import CLUSTER_GONE, driver_main
from adapters.workload.protocol import TrainProgress

if TYPE_CHECKING:
    from adapters.cluster.ray_nodes import RayNode
    from policies.model import ClusterPolicy, RayClusterPolicy

#: The head this process started (``address`` unset), shared by its lines' clusters.
_HEAD: RayNode | None = None
_HEAD_USERS = 0
_HEAD_LOCK = threading.Lock()


class RayCluster(ProcessCluster):
    """Trials on Ray; ``status`` lists the cluster's nodes as last seen and where trials run."""

    def __init__(self, spec: RayClusterPolicy) -> None:
        super().__init__(
            reuse_workers=spec.reuse_workers,
            worker_idle_s=spec.worker_idle_s,
            max_trials_per_worker=spec.max_trials_per_worker,
        )
        self.spec = spec
        self._uses_head = False
        self._nodes: list[dict[str, Any]] = []
        self._unreachable_since: float | None = None
        self._events: list[dict[str, Any]] = []

    @classmethod
    def from_spec(cls, spec: RayClusterPolicy) -> RayCluster:
        return cls(spec)

    @property
    def address(self) -> str:
        """Where the cluster is: the policy's address, or the head this daemon started."""
        if self.spec.address:
            return self.spec.address
        return self._own_head().address

    @property
    def description(self) -> str:
        where = self.spec.address or "a head started on this machine"
        need = f"{self.spec.num_cpus:g} CPU"
        if self.spec.num_gpus:
            need += f", {self.spec.num_gpus:g} GPU"
        if self.spec.resources:
            need += ", " + ", ".join(f"{k}={v:g}" for k, v in self.spec.resources.items())
        return (
            f"Ray cluster at {where}; each trial an actor with {need}; "
            f"{self.spec.max_retries} retry(ies) on a lost node"
        )

    def _own_head(self) -> RayNode:
        """The head this process started for its lines (one for all of them)."""
        from adapters.cluster.ray_nodes import start_head

        global _HEAD, _HEAD_USERS
        with _HEAD_LOCK:
            if _HEAD is None or _HEAD.launcher.poll() is not None:
                _HEAD = start_head(num_cpus=os.cpu_count() or 1)
            if not self._uses_head:
                self._uses_head, _HEAD_USERS = True, _HEAD_USERS + 1
            return _HEAD

    def _target(self) -> tuple[Callable[..., None], tuple[Any, ...]]:
        spec = {
            "address": self.address,
            "num_cpus": self.spec.num_cpus,
            "num_gpus": self.spec.num_gpus,
            "resources": dict(self.spec.resources),
            "max_retries": self.spec.max_retries,
            "namespace": "aifactory",
            "runtime_env": dict(self.spec.runtime_env),
        }
        return driver_main, (spec,)

    def _where_before_placed(self) -> str:
        return "waiting for a Ray node"

    def _placed(self, key: str, msg: tuple[Any, ...]) -> None:
        super()._placed(key, msg)
        if len(msg) > 3 and msg[3]:
            with self._lock:
                self._nodes = list(msg[3])

    def configure(self, spec: ClusterPolicy) -> bool:
        """Apply an edited ``ray`` section: drivers made under other settings are retired
        (their actors end with them). False for a section of another kind."""
        if spec.kind != "ray":
            return False
        if spec != self.spec:
            super().close()
        if spec.address != self.spec.address:
            self._stop_head()
        self.spec = spec
        self.reuse_workers = spec.reuse_workers
        self.worker_idle_s = spec.worker_idle_s
        self.max_trials_per_worker = spec.max_trials_per_worker
        return True

    def close(self) -> None:
        super().close()
        self._stop_head()

    def _stop_head(self) -> None:
        """This cluster no longer uses the shared head; the last one out stops it."""
        global _HEAD, _HEAD_USERS
        with _HEAD_LOCK:
            if not self._uses_head:
                return
            self._uses_head, _HEAD_USERS = False, _HEAD_USERS - 1
            head = _HEAD if _HEAD_USERS == 0 else None
            if head is not None:
                _HEAD = None
        if head is not None:
            head.stop()

    def run(
        self,
        job: TrialJob,
        on_progress: Callable[[TrainProgress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TrialOutcome:
        outcome = super().run(job, on_progress, should_stop)
        self._follow_connection(outcome)
        return outcome

    def _follow_connection(self, outcome: TrialOutcome) -> None:
        """Notice the cluster going away (a driver that could not connect, or died with its
        head) and coming back (a trial placed again): the gap becomes an event."""
        lost = outcome.status == "failed" and (
            "cannot reach the Ray cluster" in outcome.error
            or "died without a result" in outcome.error
            or any(CLUSTER_GONE in why for why in outcome.lost)
        )
        now = time.time()
        with self._lock:
            if lost and self._unreachable_since is None:
                self._unreachable_since = now
            elif outcome.node.startswith("ray:") and self._unreachable_since is not None:
                since, self._unreachable_since = self._unreachable_since, None
                self._events.append(
                    {
                        "event": "reconnected",
                        "address": self.address,
                        "unreachable_since": datetime.fromtimestamp(since, UTC).isoformat(),
                        "back_at": datetime.fromtimestamp(now, UTC).isoformat(),
                        "gap_s": round(now - since, 1),
                    }
                )

    def take_events(self) -> list[dict[str, Any]]:
        """What happened to the cluster since the last call (for the audit log)."""
        with self._lock:
            out, self._events = self._events, []
        return out

    def _checkin(self, w: Any, reusable: bool) -> None:
        """A driver is kept warm only while no trial waits for a node: its actor holds the
        resources that trial may be waiting for."""
        with self._lock:
            waiting = self._where_before_placed() in self._running.values()
        super()._checkin(w, reusable and not waiting)

    def status(self) -> dict[str, Any]:
        base = super().status()
        with self._lock:
            nodes = list(self._nodes)
        return {"kind": "ray", "address": self.spec.address or "(own head)", "nodes": nodes, **base}
