"""The Ray driver: a process of the daemon's that runs its trials on a Ray cluster.

Ray is imported here only, never in the daemon: a Ray driver whose cluster goes away (its
head restarted, its raylet gone) may be ended by Ray itself, and that must cost a trial,
not the daemon. The daemon talks to this process over the same pipe protocol as to a local
worker (``adapters/cluster/worker.py``) and starts a new one, which connects afresh, after
it ended. Each trial runs in a :class:`~adapters.cluster.ray_actor.TrialActor` placed with
the resources the policy and the trial's device ask for; the actor is kept for the next
trial (``reuse_workers``). A non-detached actor shares its owner's fate: when this process
ends, even by ``kill -9`` of the daemon (this process then notices its parent is gone and
exits), Ray ends its actor, so no actor is orphaned.

A trial whose node is lost is run again on another node, up to ``max_retries`` times; each
lost attempt is reported with the node and the cause, and the daemon audits it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import time
import traceback
from dataclasses import replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from adapters.cluster.base import TrialJob
from adapters.cluster.worker import FIRST_JOB_WAIT_S, StopPoll, next_job, serve_jobs

#: How often the driver relays the actor's progress and looks for a stop (seconds).
POLL_S = 0.25
#: How long an actor that vanished waits for Ray to call its node dead (Ray's health checks
#: take some 15-30 s to give up on a node), and one whose process exited with an exit code.
NODE_LOSS_WAIT_S = 45.0
CRASH_WAIT_S = 2.0
#: What a lost attempt says when the cluster itself went away (the daemon notices the gap).
CLUSTER_GONE = "the Ray cluster went away"
#: How often a trial waiting for a node checks that some live node could still host it.
FEASIBLE_CHECK_S = 10.0
#: How long a driver waits for a cluster head that went away before it ends itself (Ray
#: then ends the process; the trial fails and the next one connects afresh).
GCS_LOST_S = 20
#: Ray's errors that mean the actor (or its node, or the connection) is gone.
_GONE = (
    "ActorDiedError",
    "RayActorError",
    "ActorUnavailableError",
    "NodeDiedError",
    "ObjectLostError",
    "OwnerDiedError",
    "GetTimeoutError",
    "RaySystemError",
)


class TrialFailed(Exception):
    """The trial itself failed (its workload raised, its process crashed, nowhere to run)."""


class NodeLost(Exception):
    """The node (or the cluster) running the trial went away: the trial may run elsewhere."""


def driver_main(conn: Connection, idle_s: float, spec: dict[str, Any]) -> None:
    """Entry point: connect, then run jobs until told to exit, idle or orphaned."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    # a driver whose cluster's head is gone ends itself after this long (Ray's default: 60 s)
    os.environ.setdefault("RAY_gcs_rpc_server_reconnect_timeout_s", str(GCS_LOST_S))
    try:
        host = RayTrialHost(spec)
    except Exception as exc:  # no cluster there: the first trial fails, saying why
        job = next_job(conn, parent, FIRST_JOB_WAIT_S)
        if job is not None:
            with contextlib.suppress(OSError):
                conn.send(("error", f"cannot reach the Ray cluster at {spec['address']}: {exc}"))
        conn.close()
        return

    def run(job: TrialJob) -> bool:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the daemon stops us by the pipe
        try:
            return host.run(job, conn, parent)
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    try:
        serve_jobs(conn, parent, idle_s, run)
    finally:
        host.close()
        conn.close()


class RayTrialHost:
    """The driver's side of the actors: connect, place, ship data, follow, retry."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import ray

        self.ray, self.spec = ray, spec
        ray.init(
            address=spec["address"],
            namespace=spec.get("namespace", "aifactory"),
            log_to_driver=False,
            logging_level=logging.WARNING,
            runtime_env=spec.get("runtime_env") or None,
        )
        from adapters.cluster.ray_actor import TrialActor

        self._remote = ray.remote(TrialActor)
        self._poll: StopPoll | None = None
        self._known: set[str] = set()  # the cluster's live node ids when the trial was placed
        self._hashes: dict[tuple[str, int, int], str] = {}
        self._actor: Any = None
        self._options: dict[str, Any] | None = None
        self._where: dict[str, Any] = {}

    def close(self) -> None:
        self._drop_actor()
        with contextlib.suppress(Exception):
            self.ray.shutdown()

    # one trial, with its retries ------------------------------------------------------

    def run(self, job: TrialJob, conn: Connection, parent: int) -> bool:
        """Run ``job``; every path sends exactly one final message. False: exit afterwards."""
        poll = StopPoll(conn, parent)
        self._poll = poll
        lost: list[str] = []
        for _ in range(int(self.spec.get("max_retries", 0)) + 1):
            try:
                return self._attempt(job, conn, poll, lost)
            except NodeLost as exc:
                lost.append(str(exc))
                self._drop_actor()
                if poll.stopped() is not None:  # asked to stop: no other node
                    break
            except TrialFailed as exc:
                self._drop_actor()  # a failed trial may leave its actor in a bad state
                conn.send(("error", str(exc), lost))
                return False
            except Exception as exc:  # anything unforeseen fails this trial, not the daemon
                self._drop_actor()
                text = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
                conn.send(("error", text, lost))
                return False
        conn.send(("error", f"trial lost {len(lost)} node(s): {'; '.join(lost)}", lost))
        return False

    def _attempt(self, job: TrialJob, conn: Connection, poll: StopPoll, lost: list[str]) -> bool:
        actor = self._actor_for(job)
        node = self._place(actor, job, conn, poll)
        try:
            files = self._ship(actor, job)
            ref = actor.train.remote(self._shaped(job), files)
            stop_reason = self._follow(actor, ref, job, conn, poll)
            out = self.ray.get(ref)
        except Exception as exc:
            raise self._classify(exc, node) from exc
        result = self._receive(out, job)
        where = {"node": node, "lost": lost, "node_id": self._where.get("node_id", "")}
        reading, startup = out["reading"], out["startup"]
        stop = out["stop_reason"] or stop_reason
        conn.send(("done", result, reading, out["note"], stop, startup, where))
        return not poll.exit and stop != "parent died"

    # placement ------------------------------------------------------------------------

    def _options_for(self, job: TrialJob) -> dict[str, Any]:
        gpus = self.spec.get("num_gpus")
        if gpus is None:
            gpus = 1 if job.request.device.startswith("cuda") else 0
        return {
            "num_cpus": float(self.spec.get("num_cpus", 1.0)),
            "num_gpus": float(gpus),
            "resources": dict(self.spec.get("resources") or {}),
            "max_concurrency": 4,  # progress and stop are answered while it trains
            "max_restarts": 0,  # a lost actor is the driver's to run again, not Ray's
        }

    def _actor_for(self, job: TrialJob) -> Any:
        """The kept actor when it was made with the same resources, else a new one."""
        options = self._options_for(job)
        if self._actor is not None and options == self._options:
            return self._actor
        self._drop_actor()
        self._check_feasible(options)
        self._actor, self._options = self._remote.options(**options).remote(), options
        return self._actor

    def _check_feasible(self, options: dict[str, Any]) -> None:
        """Fail at once when no node of the cluster could ever host the trial (Ray would
        keep it pending for ever)."""
        wanted = {"CPU": options["num_cpus"], "GPU": options["num_gpus"], **options["resources"]}
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        for n in nodes:
            have = n.get("Resources", {})
            if all(have.get(k, 0.0) >= v for k, v in wanted.items() if v > 0):
                return
        asked = ", ".join(f"{k}={v:g}" for k, v in wanted.items() if v > 0)
        raise TrialFailed(f"no node of the Ray cluster has {asked} ({len(nodes)} node(s) alive)")

    def _place(self, actor: Any, job: TrialJob, conn: Connection, poll: StopPoll) -> str:
        """Wait until the actor runs somewhere (polling for a stop); say where."""
        ref = actor.where.remote()
        checked = time.monotonic()
        while True:
            ready, _ = self.ray.wait([ref], timeout=POLL_S)
            if ready:
                break
            if poll.stopped() is not None:  # the daemon reads it as an interruption
                raise TrialFailed("stopped while waiting for a node")
            if self._options and time.monotonic() - checked > FEASIBLE_CHECK_S:
                checked = time.monotonic()  # nodes come and go
                self._check_feasible(self._options)
        try:
            self._where = self.ray.get(ref)
        except Exception as exc:
            if getattr(exc, "actor_init_failed", False) or "RuntimeEnv" in type(exc).__name__:
                raise TrialFailed(f"the trial's actor could not start: {exc}") from exc
            raise NodeLost(f"the actor could not start: {type(exc).__name__}: {exc}") from exc
        node = f"ray:{self._where['node_id'][:12]}@{self._where['ip']}"
        nodes = self._nodes()
        self._known = {n["id"] for n in nodes if n["alive"]}
        conn.send(
            ("placed", job.key, node, [{k: v for k, v in n.items() if k != "id"} for n in nodes])
        )
        return node

    def _nodes(self) -> list[dict[str, Any]]:
        out = []
        with contextlib.suppress(Exception):
            for n in self.ray.nodes():
                out.append(
                    {
                        "id": n["NodeID"],
                        "node": f"ray:{n['NodeID'][:12]}@{n.get('NodeManagerAddress', '')}",
                        "alive": bool(n.get("Alive")),
                        "resources": {
                            k: v
                            for k, v in n.get("Resources", {}).items()
                            if not k.startswith("node:")
                        },
                    }
                )
        return out

    # data in, artefact out ------------------------------------------------------------

    def _ship(self, actor: Any, job: TrialJob) -> dict[str, str]:
        """Send the node the data files it lacks, through the object store; returns each
        file's hash (the name it has in the node's cache)."""
        paths = list(dict.fromkeys([*job.request.train_files, *job.request.valid_files]))
        hashes = {p: self._hash(p) for p in paths}
        missing = set(self.ray.get(actor.missing.remote(list(set(hashes.values())))))
        if missing:
            blobs = {h: Path(p).read_bytes() for p, h in hashes.items() if h in missing}
            self.ray.get(actor.store.remote(blobs))
        return hashes

    def _hash(self, path: str) -> str:
        """A file's SHA-256, read once while it is unchanged (a trial reuses the cycle's
        files; they are not read again for every trial)."""
        st = os.stat(path)
        stamp = (path, st.st_mtime_ns, st.st_size)
        if stamp not in self._hashes:
            self._hashes[stamp] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        return self._hashes[stamp]

    def _shaped(self, job: TrialJob) -> TrialJob:
        """The trial uses as many threads as CPUs it reserved, and a GPU only when it
        reserved one (Ray shows the actor its own GPUs: "cuda" is the first of them)."""
        cpus = int(self.spec.get("num_cpus", 1.0))
        device = "cuda" if self._options_for(job)["num_gpus"] > 0 else "cpu"
        request = replace(job.request, threads=max(1, cpus), device=device)
        return replace(job, request=request)

    def _receive(self, out: dict[str, Any], job: TrialJob) -> Any:
        """Write the artefact where the daemon keeps its trials, after checking its hash."""
        artefact: bytes = out["artefact"]
        result = out["result"]
        if not artefact:
            return replace(result, artefact_path="")
        if hashlib.sha256(artefact).hexdigest() != out["sha256"]:
            raise TrialFailed("the trial's artefact arrived damaged (SHA-256 mismatch)")
        target = Path(job.request.out_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
        tmp.write_bytes(artefact)
        tmp.replace(target)
        return replace(result, artefact_path=str(target))

    # following a running trial --------------------------------------------------------

    def _follow(
        self, actor: Any, ref: Any, job: TrialJob, conn: Connection, poll: StopPoll
    ) -> str | None:
        """Relay progress until the trial ends; asks the actor to stop when told to."""
        stop: str | None = None
        while True:
            ready, _ = self.ray.wait([ref], timeout=POLL_S)
            for p in self.ray.get(actor.progress.remote(), timeout=60):
                conn.send(("progress", job.key, p))
            if ready:
                return stop
            if stop is None:
                stop = poll.stopped()
                if stop is not None:
                    actor.stop.remote(stop)

    def _classify(self, exc: Exception, node: str) -> Exception:
        """A lost node (run it elsewhere) or the trial's own failure (do not)."""
        if isinstance(exc, TrialFailed | NodeLost):
            return exc
        name = type(exc).__name__
        if name == "RayTaskError" or "TaskError" in name:  # the workload raised
            cause = getattr(exc, "cause", None) or exc
            return TrialFailed(f"{type(cause).__name__}: {cause}")
        if name in _GONE or "Died" in name:
            # the actor's process exited by itself (the trial crashed) unless its node is
            # gone; Ray marks a dead node after its health checks fail, so wait for that
            crashed = "exit code" in str(exc) or "exits with" in str(exc)
            gone = self._node_lost(NODE_LOSS_WAIT_S if not crashed else CRASH_WAIT_S)
            if gone == "cluster":
                return NodeLost(f"{CLUSTER_GONE} mid-trial on {node} ({name})")
            if gone == "node":
                return NodeLost(f"{node} lost mid-trial ({name})")
            return TrialFailed(f"the trial's actor on {node} died ({name}): {exc}")
        return TrialFailed(f"{name}: {exc}")

    def _node_lost(self, wait_s: float) -> str | None:
        """Is the trial's node gone ("node"), or the whole cluster ("cluster": unreachable,
        or none of the nodes seen at placement alive: its head restarted), as Ray sees it
        within ``wait_s``? None: the node is alive."""
        node_id = self._where.get("node_id", "")
        deadline = time.monotonic() + wait_s
        while True:
            if self._poll is not None and self._poll.stopped() is not None:
                return None  # stopping: not worth waiting for Ray's verdict
            try:
                alive = {n["NodeID"] for n in self.ray.nodes() if n.get("Alive")}
            except Exception:
                return "cluster"
            if self._known and not alive & self._known:
                return "cluster"
            if node_id not in alive:
                return "node"
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.5)

    def _drop_actor(self) -> None:
        actor, self._actor, self._options = self._actor, None, None
        if actor is not None:
            with contextlib.suppress(Exception):
                self.ray.kill(actor)
