"""Embedded OpenAI-compatible HTTP server for the current champion model.

This is the "act" side of the controller loop: the deployer agent promotes a validated model by
calling :meth:`ServingServer.swap`, and clients keep talking to the same URL. The server runs
FastAPI on uvicorn in a background daemon thread so the daemon owns its lifecycle
programmatically (no separate process, no signal handlers).

Swaps are safe for requests in flight because every request reads the served-model reference
exactly once, at its start, and uses that object until it answers; ``swap`` only rebinds the
reference. Generation is CPU-bound, so it always runs in a worker thread, never on the event loop.
Generators may therefore be called from several threads at once.

Only the subset of the OpenAI API the factory needs is implemented: ``GET /v1/models``,
non-streaming ``POST /v1/completions`` with ``n == 1``, plus ``GET /healthz``. Unknown request
fields (``stop``, ``user``, ...) are accepted and ignored, as many OpenAI-compatible servers do.
"""

from __future__ import annotations

import errno
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from adapters.workload.protocol import Completion, TextGenerator

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["Completion", "ServedModel", "ServingError", "ServingServer", "TextGenerator"]

_STARTUP_TIMEOUT_S = 10.0
_OWNER = "aifactory"


class ServingError(RuntimeError):
    """Raised when the server cannot start or stop; the message says why in operator terms."""


@dataclass(frozen=True)
class ServedModel:
    """One deployable model: the id clients see, the registry version, and the generator."""

    model_id: str
    version: int
    generator: TextGenerator


@dataclass
class _VersionStats:
    """Running counters for one served version; the accountant turns these into costs."""

    requests: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s_sum: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "requests": float(self.requests),
            "failures": float(self.failures),
            "prompt_tokens": float(self.prompt_tokens),
            "completion_tokens": float(self.completion_tokens),
            "latency_s_sum": self.latency_s_sum,
        }


@dataclass(frozen=True)
class _Slot:
    """What is served right now, plus when it went live (reported as ``created``)."""

    model: ServedModel
    created: int = field(default_factory=lambda: int(time.time()))


class _CompletionRequest(BaseModel):
    """Request body of ``POST /v1/completions``; bounds follow the OpenAI API."""

    model: str
    prompt: str | list[str]
    max_tokens: int = Field(default=16, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    seed: int | None = None
    n: int = 1
    stream: bool = False


class _ApiError(Exception):
    """Internal signal carrying an OpenAI-style error out of an endpoint."""

    def __init__(self, status: int, message: str, err_type: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.err_type = err_type
        self.code = code


def _error_response(status: int, message: str, err_type: str, code: str) -> JSONResponse:
    """Build the error envelope the official OpenAI clients know how to parse."""
    body = {"error": {"message": message, "type": err_type, "param": None, "code": code}}
    return JSONResponse(status_code=status, content=body)


def _describe_validation(errors: Sequence[Any]) -> str:
    """Turn pydantic's error list into one readable line for the client."""
    parts: list[str] = []
    for err in errors:
        if err.get("type") == "json_invalid":
            parts.append("body is not valid JSON")
            continue
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        msg = str(err.get("msg", "invalid value"))
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "Invalid request: " + ("; ".join(parts) if parts else "malformed body")


class ServingServer:
    """Serves at most one model over HTTP and lets the deployer swap it without downtime."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 8000, max_tokens_limit: int = 512
    ) -> None:
        if max_tokens_limit < 1:
            raise ValueError("max_tokens_limit must be >= 1")
        self._host = host
        self._requested_port = port
        self._bound_port: int | None = None
        self._max_tokens_limit = max_tokens_limit
        self._slot: _Slot | None = None
        self._swap_lock = threading.Lock()
        self._stats: dict[int, _VersionStats] = {}
        self._stats_lock = threading.Lock()
        self._lifecycle_lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._app = self._build_app()

    # ------------------------------------------------------------------ model management

    def swap(self, model: ServedModel | None) -> ServedModel | None:
        """Atomically replace the served model (``None`` stops serving); return the previous one.

        Requests already running keep the model they captured at their start.
        """
        new_slot = _Slot(model) if model is not None else None
        with self._swap_lock:
            previous = self._slot
            self._slot = new_slot
        return previous.model if previous is not None else None

    @property
    def current(self) -> ServedModel | None:
        """The model new requests will be answered by."""
        slot = self._slot
        return slot.model if slot is not None else None

    def metrics(self) -> dict[int, dict[str, float]]:
        """Snapshot of per-version counters, kept across swaps so retired versions stay visible."""
        with self._stats_lock:
            return {version: stats.as_dict() for version, stats in self._stats.items()}

    def _record(self, version: int, completion: Completion | None, latency_s: float) -> None:
        with self._stats_lock:
            stats = self._stats.setdefault(version, _VersionStats())
            stats.requests += 1
            stats.latency_s_sum += latency_s
            if completion is None:
                stats.failures += 1
            else:
                stats.prompt_tokens += completion.prompt_tokens
                stats.completion_tokens += completion.completion_tokens

    # ------------------------------------------------------------------ addressing

    @property
    def port(self) -> int:
        """The real listening port once started (resolves port 0), else the configured one."""
        return self._bound_port if self._bound_port is not None else self._requested_port

    @property
    def url(self) -> str:
        """Base URL a local client should use; wildcard binds are reached via loopback."""
        host = self._host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Bind, start uvicorn in a daemon thread, and return once it accepts connections.

        Binding the socket ourselves makes "port taken" a synchronous, catchable error and
        gives us the real port when 0 was requested.
        """
        with self._lifecycle_lock:
            if self._thread is not None and self._thread.is_alive():
                return
            if self._sock is not None:  # the previous serving thread died on its own
                self._sock.close()
                self._server = self._thread = self._sock = None
            sock = self._bind()
            bound_port = int(sock.getsockname()[1])
            config = uvicorn.Config(
                self._app,
                log_level="warning",
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=5,
            )
            server = uvicorn.Server(config)
            thread = threading.Thread(
                target=server.run,
                kwargs={"sockets": [sock]},
                name=f"aifactory-serving:{bound_port}",
                daemon=True,
            )
            thread.start()
            deadline = time.monotonic() + _STARTUP_TIMEOUT_S
            while not server.started:
                if not thread.is_alive() or time.monotonic() > deadline:
                    server.should_exit = True
                    thread.join(timeout=1.0)
                    sock.close()
                    raise ServingError(
                        f"serving thread failed to start on {self._host}:{bound_port}"
                    )
                time.sleep(0.01)
            self._sock, self._server, self._thread = sock, server, thread
            self._bound_port = bound_port

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, let in-flight requests finish for up to ``timeout_s``, free the port."""
        with self._lifecycle_lock:
            server, thread, sock = self._server, self._thread, self._sock
            if server is None or thread is None:
                return
            server.config.timeout_graceful_shutdown = max(1, int(timeout_s))
            server.should_exit = True
            thread.join(timeout=timeout_s + 1.0)
            if thread.is_alive():
                server.force_exit = True
                thread.join(timeout=2.0)
            if sock is not None:
                sock.close()
            self._server = self._thread = self._sock = None
            if thread.is_alive():
                raise ServingError(f"serving thread did not stop within {timeout_s:.1f}s")

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        # Lets a restarted server rebind while old connections sit in TIME_WAIT; an active
        # listener on the port still makes bind fail on Linux.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host, self._requested_port))
            sock.listen(2048)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise ServingError(
                    f"cannot serve on {self._host}:{self._requested_port}: port already in use"
                ) from exc
            raise ServingError(
                f"cannot serve on {self._host}:{self._requested_port}: {exc.strerror or exc}"
            ) from exc
        return sock

    # ------------------------------------------------------------------ HTTP app

    def _build_app(self) -> FastAPI:
        app = FastAPI(title="aifactory serving", docs_url=None, redoc_url=None, openapi_url=None)

        @app.exception_handler(_ApiError)
        async def _api_error(_: Request, exc: _ApiError) -> JSONResponse:
            return _error_response(exc.status, exc.message, exc.err_type, exc.code)

        @app.exception_handler(RequestValidationError)
        async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
            message = _describe_validation(exc.errors())
            return _error_response(400, message, "invalid_request_error", "invalid_request")

        @app.exception_handler(StarletteHTTPException)
        async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
            code = "not_found" if exc.status_code == 404 else "invalid_request"
            resp = _error_response(exc.status_code, str(exc.detail), "invalid_request_error", code)
            resp.headers.update(exc.headers or {})  # e.g. Allow on 405
            return resp

        @app.get("/healthz")
        def healthz() -> dict[str, Any]:
            served = self.current
            return {"status": "ok", "model": served.model_id if served is not None else None}

        @app.get("/v1/models")
        def list_models() -> dict[str, Any]:
            slot = self._slot
            data = []
            if slot is not None:
                data.append(
                    {
                        "id": slot.model.model_id,
                        "object": "model",
                        "created": slot.created,
                        "owned_by": _OWNER,
                    }
                )
            return {"object": "list", "data": data}

        @app.post("/v1/completions")
        def completions(body: _CompletionRequest) -> dict[str, Any]:
            # Plain ``def``: FastAPI runs it in its thread pool, so generation never blocks
            # the event loop.
            return self._complete(body)

        return app

    def _complete(self, body: _CompletionRequest) -> dict[str, Any]:
        """Answer one completion request on the model captured at its start."""
        slot = self._slot  # read exactly once: this is what makes swap() safe mid-request
        prompt = self._validate(body)
        if slot is None:
            raise _ApiError(503, "No model is being served yet", "server_error", "model_not_loaded")
        served = slot.model
        if body.model not in (served.model_id, served.model_id.split(":", 1)[0]):
            raise _ApiError(
                404,
                f"The model '{body.model}' does not exist; this server serves '{served.model_id}'",
                "invalid_request_error",
                "model_not_found",
            )
        max_tokens = min(body.max_tokens, self._max_tokens_limit)
        started = time.perf_counter()
        try:
            result = served.generator.generate(
                prompt, max_tokens, temperature=body.temperature, seed=body.seed
            )
        except Exception as exc:
            self._record(served.version, None, time.perf_counter() - started)
            raise _ApiError(
                500, f"Generation failed: {type(exc).__name__}", "server_error", "generation_failed"
            ) from exc
        self._record(served.version, result, time.perf_counter() - started)
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": served.model_id,
            "choices": [
                {
                    "text": result.text,
                    "index": 0,
                    "logprobs": None,
                    "finish_reason": result.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
                "total_tokens": result.prompt_tokens + result.completion_tokens,
            },
        }

    @staticmethod
    def _validate(body: _CompletionRequest) -> str:
        """Reject what pydantic cannot express; return the single prompt string."""
        if body.stream:
            raise _ApiError(
                400,
                "Streaming is not supported by this server yet; send stream=false",
                "invalid_request_error",
                "unsupported_parameter",
            )
        if body.n != 1:
            raise _ApiError(
                400,
                f"Only n=1 is supported (got n={body.n})",
                "invalid_request_error",
                "unsupported_parameter",
            )
        if isinstance(body.prompt, list):
            if len(body.prompt) != 1:
                raise _ApiError(
                    400,
                    f"prompt must be a string or a list of exactly one string "
                    f"(got {len(body.prompt)} items)",
                    "invalid_request_error",
                    "invalid_request",
                )
            return body.prompt[0]
        return body.prompt
