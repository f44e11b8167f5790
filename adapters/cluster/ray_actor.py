"""The Ray actor a trial runs in, on whichever node Ray placed it.

It runs in a Ray worker process: the data files arrive through Ray's object store (kept in
a node-local cache by content hash, so a node fetches each file once), the trial runs
through :func:`~adapters.cluster.execute.execute_trial` with the node's own energy meter
(NVML there, or that node's host estimate), and the artefact goes back as bytes with its
SHA-256, which the daemon's side checks on arrival. The actor is threaded, so the driver
can poll its progress and ask it to stop while it trains.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from adapters.cluster.base import TrialJob
from adapters.cluster.execute import Meters, execute_trial, free_gpu_cache
from adapters.workload.protocol import TrainProgress

#: Node-local scratch space (the data cache and the trials' artefacts before they are sent),
#: the user's own: files in it are trusted by name.
SCRATCH = Path(tempfile.gettempdir()) / f"aifactory-ray-{os.getuid()}"


class TrialActor:
    """One trial at a time; kept between trials (its torch import and CUDA context) when the
    policy reuses workers. Methods other than :meth:`train` answer while a trial runs."""

    def __init__(self) -> None:
        self._meters: Meters = {}
        self._fresh = True
        self._lock = threading.Lock()
        self._progress: list[TrainProgress] = []
        self._stop: str | None = None

    def where(self) -> dict[str, Any]:
        """The node this actor runs on, as Ray names it."""
        import ray

        ctx = ray.get_runtime_context()
        return {
            "node_id": ctx.get_node_id(),
            "ip": ray.util.get_node_ip_address(),
            "pid": os.getpid(),
        }

    def missing(self, hashes: list[str]) -> list[str]:
        """Which data files (by SHA-256) this node has not cached yet."""
        return [h for h in hashes if not (SCRATCH / "data" / h).exists()]

    def store(self, blobs: dict[str, bytes]) -> None:
        """Cache data files on this node, each checked against its hash."""
        folder = SCRATCH / "data"
        folder.mkdir(parents=True, exist_ok=True)
        SCRATCH.chmod(0o700)
        for sha, data in blobs.items():
            if hashlib.sha256(data).hexdigest() != sha:
                raise ValueError(f"data file {sha[:12]} arrived damaged")
            tmp = folder / f".{sha}.{uuid.uuid4().hex}"
            tmp.write_bytes(data)
            tmp.replace(folder / sha)

    def train(self, job: TrialJob, files: dict[str, str]) -> dict[str, Any]:
        """Run ``job`` with its files (daemon path -> hash) read from this node's cache."""
        with self._lock:
            self._progress, self._stop = [], None
        out = SCRATCH / "trials" / f"{uuid.uuid4().hex}.pt"
        out.parent.mkdir(parents=True, exist_ok=True)
        local = replace(
            job.request,
            train_files=[str(SCRATCH / "data" / files[p]) for p in job.request.train_files],
            valid_files=[str(SCRATCH / "data" / files[p]) for p in job.request.valid_files],
            out_path=str(out),
        )
        job = replace(job, request=local, gpu_indices=_own_gpus())
        try:
            run = execute_trial(job, self._meters, self._fresh, self._report, self._poll)
            self._fresh = False
            artefact = out.read_bytes() if run.result.artefact_path else b""
        finally:
            out.unlink(missing_ok=True)
            free_gpu_cache()
        return {
            "result": run.result,
            "reading": run.reading,
            "note": run.note,
            "stop_reason": run.stop_reason,
            "startup": run.startup,
            "artefact": artefact,
            "sha256": hashlib.sha256(artefact).hexdigest() if artefact else "",
        }

    def progress(self) -> list[TrainProgress]:
        """Progress reported since the last call."""
        with self._lock:
            out, self._progress = self._progress, []
        return out

    def stop(self, reason: str) -> None:
        self._stop = reason

    def _report(self, p: TrainProgress) -> None:
        with self._lock:
            self._progress.append(p)

    def _poll(self) -> str | None:
        return self._stop


def _own_gpus() -> tuple[int, ...] | None:
    """The GPUs Ray gave this actor (their NVML indices), which its meter reads."""
    import ray

    try:
        return tuple(int(i) for i in ray.get_gpu_ids()) or None
    except (ValueError, TypeError):  # ids that are not indices: read the visible devices
        return None
