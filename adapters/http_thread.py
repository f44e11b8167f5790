"""An ASGI app served by uvicorn on a thread of the daemon, on a socket bound first.

Binding the socket ourselves makes "port taken" a synchronous, catchable error naming the
address, and gives the real port when 0 was asked for (tests, several daemons on a host).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import threading
import time
from typing import Any

import uvicorn

_STARTUP_TIMEOUT_S = 10.0
# connections and requests at once before uvicorn sheds more with a 503: a flood of idle
# connections then costs a refusal each, not the daemon's file descriptors and memory
_LIMIT_CONCURRENCY = 1024


class HttpThreadError(RuntimeError):
    """The server could not bind or start; the message names the address and why."""


def bind_socket(
    host: str, port: int, backlog: int = 512, error: type[Exception] = HttpThreadError
) -> socket.socket:
    """A listening TCP socket on ``host:port``, or ``error`` naming the address and why."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # a restarted daemon rebinds while old connections sit in TIME_WAIT; an active listener
    # on the port still makes bind fail on Linux
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # answers are small and written in pieces: without this, Nagle's algorithm and the
    # client's delayed ACK add ~40 ms to every response (Linux copies it to accepted sockets)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        why = "port already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or exc
        raise error(f"cannot listen on {host}:{port}: {why}") from exc
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
    """``localhost`` or a loopback address, nothing else: a name such as
    ``127.evil.example`` can resolve anywhere."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class HttpThread:
    """Start and stop one uvicorn server on a daemon thread. ``stop`` never raises: the
    daemon calls it on its shutdown path, whose later steps must still run. A server whose
    stop failed starts again.

    ``X-Forwarded-For`` and its kin are ignored: nothing here sits behind a proxy, so the
    client is the peer of the socket, and a header cannot forge who the audit log names.
    """

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        name: str,
        backlog: int = 512,
        error: type[Exception] = HttpThreadError,
        limit_concurrency: int = _LIMIT_CONCURRENCY,
    ) -> None:
        self.app, self.host, self.name = app, host, name
        self._requested_port, self._bound_port = port, None
        self._backlog, self._error = backlog, error
        self._limit_concurrency = limit_concurrency
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    @property
    def port(self) -> int:
        """The real listening port once started (resolves 0), else the one asked for."""
        return self._bound_port if self._bound_port is not None else self._requested_port

    @property
    def url(self) -> str:
        return loopback_url(self.host, self.port)

    def start(self) -> None:
        """Bind, run uvicorn on a thread, and return once it accepts connections."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            if self._sock is not None:  # the previous thread died on its own
                self._sock.close()
                self._server = self._thread = self._sock = None
            sock = bind_socket(self.host, self._requested_port, self._backlog, self._error)
            port = int(sock.getsockname()[1])
            server = uvicorn.Server(self._config())
            thread = threading.Thread(
                target=server.run,
                kwargs={"sockets": [sock]},
                name=f"{self.name}:{port}",
                daemon=True,
            )
            thread.start()
            deadline = time.monotonic() + _STARTUP_TIMEOUT_S
            while not server.started:
                if not thread.is_alive() or time.monotonic() > deadline:
                    server.should_exit = True
                    thread.join(timeout=1.0)
                    sock.close()
                    raise self._error(f"{self.name} failed to start on {self.host}:{port}")
                time.sleep(0.01)
            self._sock, self._server, self._thread, self._bound_port = sock, server, thread, port

    def _config(self) -> uvicorn.Config:
        """Quiet, no lifespan, no proxy headers, and a bound on connections at once."""
        return uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
            proxy_headers=False,
            limit_concurrency=self._limit_concurrency,
        )

    def stop(self, timeout_s: float = 5.0) -> str | None:
        """Stop accepting, let requests in flight finish for up to ``timeout_s``, free the
        port. None when it stopped cleanly, else what went wrong in an operator's words."""
        with self._lock:
            server, thread, sock = self._server, self._thread, self._sock
            self._server = self._thread = self._sock = None
            if server is None or thread is None:
                return None
            problems = [p for p in [_shut_down(server, thread, timeout_s)] if p]
            try:
                if sock is not None:
                    sock.close()
            except Exception as exc:
                problems.append(f"closing the socket failed: {type(exc).__name__}: {exc}")
            try:
                if thread.is_alive():
                    problems.append(f"the thread did not stop within {timeout_s:.1f}s")
            except Exception as exc:
                problems.append(f"cannot tell whether it stopped: {exc}")
        if not problems:
            return None
        return f"{self.name} on {self.host}:{self.port} stopped uncleanly: " + "; ".join(problems)


def _shut_down(server: uvicorn.Server, thread: threading.Thread, timeout_s: float) -> str:
    """Ask uvicorn to exit, then force it; returns what failed ("" when nothing did)."""
    try:
        server.config.timeout_graceful_shutdown = max(1, int(timeout_s))
        server.should_exit = True
        thread.join(timeout=timeout_s + 1.0)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=2.0)
    except Exception as exc:
        return f"shutdown failed: {type(exc).__name__}: {exc}"
    return ""
