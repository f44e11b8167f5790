"""Ray nodes on this machine, started and stopped by their process ids.

Where it sits: a tool of the *act* side's Ray adapter (``cluster.address`` unset: the
daemon starts a head for itself), and of the tests, the benchmarks and ``.ci/run``, which
build a loopback cluster of a head and further nodes. Each node is one ``ray start --block``
kept as the parent of the node's processes, so stopping a node stops exactly what it
started and nothing of anybody else's; killing one node's raylet is how a lost node is
played.

    python -m adapters.cluster.ray_nodes up --port 6390 --nodes 2 --pids FILE   # prints the address
    python -m adapters.cluster.ray_nodes down --pids FILE
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

#: How long one ``ray start`` may take to come up (seconds; about 3-6 s on 2 cores).
START_TIMEOUT_S = 90.0
#: The object store of a loopback node (tests, benchmarks): trials move megabytes.
LOOPBACK_STORE_BYTES = 256 * 1024 * 1024


class RayNodeError(RuntimeError):
    """A Ray node would not start (the message holds the end of its log)."""


def ray_executable() -> str:
    """The ``ray`` command of the interpreter running us (the project's environment)."""
    beside = Path(sys.executable).with_name("ray")
    found = str(beside) if beside.exists() else shutil.which("ray")
    if found is None:
        raise RayNodeError("the `ray` command is not installed (pip install ray)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RayNode:
    """One ``ray start --block`` and the processes under it."""

    launcher: subprocess.Popen[bytes]
    address: str  # the head's address (host:port), for this node and the ones that join it
    log: Path
    resources: dict[str, float] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.launcher.pid

    def processes(self) -> list[psutil.Process]:
        with contextlib.suppress(psutil.Error):
            return psutil.Process(self.pid).children(recursive=True)
        return []

    def raylet_pid(self) -> int | None:
        for p in self.processes():
            with contextlib.suppress(psutil.Error):
                if p.name() == "raylet":
                    return p.pid
        return None

    def kill_raylet(self) -> int | None:
        """Lose the node as a crash would: its raylet killed with SIGKILL."""
        pid = self.raylet_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pid

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop this node's processes and its launcher, by their ids; idempotent."""
        stop_pids([self.pid, *(p.pid for p in self.processes())], timeout_s)
        with contextlib.suppress(Exception):
            self.launcher.wait(1)


def stop_pids(
    pids: list[int], timeout_s: float = 15.0, born: dict[int, float] | None = None
) -> None:
    """SIGTERM the given processes (and what runs under them), then SIGKILL what is left.
    With ``born`` (pid -> creation time), a pid now held by another process is left alone."""
    procs: list[psutil.Process] = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            if born is not None and abs(p.create_time() - born.get(pid, -1.0)) > 0.01:
                continue  # not the process we started: its id was reused
            procs += [p, *p.children(recursive=True)]
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)


def _env() -> dict[str, str]:
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}


def _start(args: list[str], address: str, resources: dict[str, float], tag: str) -> RayNode:
    fd, name = tempfile.mkstemp(prefix=f"aifactory-ray-{tag}-", suffix=".log")
    os.close(fd)
    log = Path(name)
    with open(log, "wb") as out:
        launcher = subprocess.Popen(
            [ray_executable(), "start", "--block", "--disable-usage-stats", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_env(),
            start_new_session=True,  # a terminal's Ctrl-C is for the daemon, not the node
        )
    node = RayNode(launcher, address, log, resources)
    deadline = time.monotonic() + START_TIMEOUT_S
    while "Ray runtime started" not in log.read_text(errors="replace"):
        if launcher.poll() is not None or time.monotonic() > deadline:
            node.stop()
            tail = log.read_text(errors="replace")[-2000:]
            raise RayNodeError(f"`ray start {' '.join(args)}` did not come up:\n{tail}")
        time.sleep(0.1)
    return node


def start_head(
    port: int | None = None,
    num_cpus: float | None = None,
    resources: dict[str, float] | None = None,
    store_bytes: int | None = None,
    temp_dir: str | None = None,
) -> RayNode:
    """A head node on loopback (no dashboard: nothing here reads it); ``store_bytes`` caps
    its object store (Ray's default is 30% of the machine's memory per node); ``temp_dir``
    keeps its session files apart from other clusters on the machine (a short path: Ray's
    socket names must fit 107 characters)."""
    port = port or free_port()
    args = ["--head", "--port", str(port), "--node-ip-address", "127.0.0.1"]
    args += ["--include-dashboard=false"] + (["--temp-dir", temp_dir] if temp_dir else [])
    args += _shape(num_cpus, resources, store_bytes)
    return _start(args, f"127.0.0.1:{port}", resources or {}, "head")


def add_node(
    address: str,
    num_cpus: float | None = None,
    resources: dict[str, float] | None = None,
    store_bytes: int | None = None,
) -> RayNode:
    """A further node joining the head at ``address``."""
    args = ["--address", address, "--node-ip-address", "127.0.0.1"]
    args += _shape(num_cpus, resources, store_bytes)
    return _start(args, address, resources or {}, "node")


def _shape(
    num_cpus: float | None, resources: dict[str, float] | None, store_bytes: int | None
) -> list[str]:
    out = [] if num_cpus is None else ["--num-cpus", str(int(num_cpus))]
    out += ["--object-store-memory", str(store_bytes)] if store_bytes else []
    return out + (["--resources", json.dumps(resources)] if resources else [])


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m adapters.cluster.ray_nodes")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start a loopback cluster: a head and --nodes - 1 more")
    up.add_argument("--port", type=int, default=0)
    up.add_argument("--nodes", type=int, default=2)
    up.add_argument("--num-cpus", type=int, default=1, help="per node")
    up.add_argument("--pids", required=True, help="file to write the launchers' ids to")
    down = sub.add_parser("down", help="stop the nodes whose ids are in --pids")
    down.add_argument("--pids", required=True)
    args = ap.parse_args(argv)
    if args.cmd == "down":
        path = Path(args.pids)
        if path.exists():
            born = {int(p): float(t) for p, t in json.loads(path.read_text() or "{}").items()}
            stop_pids(list(born), born=born)
            path.unlink()
        return 0
    head = start_head(args.port or None, args.num_cpus, {"head_node": 1}, LOOPBACK_STORE_BYTES)
    nodes = [head]
    try:
        for i in range(1, args.nodes):
            nodes.append(
                add_node(head.address, args.num_cpus, {f"node_{i}": 1}, LOOPBACK_STORE_BYTES)
            )
    finally:  # each launcher's id with its creation time: a reused id is never stopped
        born = {n.pid: psutil.Process(n.pid).create_time() for n in nodes}
        Path(args.pids).write_text(json.dumps(born))
    print(head.address)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
