"""An ASGI app served by uvicorn on a thread of the daemon, on a socket bound first.

Binding the socket ourselves makes "port taken" a synchronous, catchable error naming the
address, and gives the real port when 0 was asked for (tests, several daemons on a host).
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from typing import Any

import uvicorn

_STARTUP_TIMEOUT_S = 10.0


class HttpThreadError(RuntimeError):
    """The server could not bind or start; the message names the address and why."""


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``, or an error an operator can act on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # a restarted daemon rebinds while old connections sit in TIME_WAIT; an active listener
    # on the port still makes bind fail on Linux
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(512)
    except OSError as exc:
        sock.close()
        why = "port already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or exc
        raise HttpThreadError(f"cannot listen on {host}:{port}: {why}") from exc
    return sock


def loopback_url(host: str, port: int) -> str:
    """The URL a local client uses; wildcard binds are reached through loopback."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


class HttpThread:
    """Start and stop one uvicorn server on a daemon thread; ``stop`` never raises."""

    def __init__(self, app: Any, host: str, port: int, name: str) -> None:
        self.app, self.host, self.name = app, host, name
        self._requested_port = port
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    @property
    def url(self) -> str:
        return loopback_url(self.host, self.port)

    def start(self) -> None:
        sock = bind_socket(self.host, self._requested_port)
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off")
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run,
            kwargs={"sockets": [sock]},
            name=f"{self.name}:{self.port}",
            daemon=True,
        )
        thread.start()
        deadline = time.monotonic() + _STARTUP_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                thread.join(timeout=1.0)
                sock.close()
                raise HttpThreadError(f"{self.name} failed to start on {self.host}:{self.port}")
            time.sleep(0.01)
        self._server, self._thread, self._sock = server, thread, sock

    def stop(self, timeout_s: float = 5.0) -> str | None:
        """Let requests in flight finish for up to ``timeout_s``; None when it stopped
        cleanly, else what went wrong in an operator's words."""
        server, thread, sock = self._server, self._thread, self._sock
        self._server = self._thread = self._sock = None
        if server is None or thread is None:
            return None
        try:
            server.config.timeout_graceful_shutdown = max(1, int(timeout_s))
            server.should_exit = True
            thread.join(timeout=timeout_s + 1.0)
            if thread.is_alive():
                server.force_exit = True
                thread.join(timeout=2.0)
            if sock is not None:
                sock.close()
        except Exception as exc:
            return f"{self.name} stopped uncleanly: {type(exc).__name__}: {exc}"
        if thread.is_alive():
            return f"{self.name} did not stop within {timeout_s:.1f}s"
        return None
