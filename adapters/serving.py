"""Embedded OpenAI-compatible HTTP server for the champions of the factory's production lines.

This is the "act" side of the controller loop. The server serves any number of production
lines ("lines"), each with its own champion, optional canary challenger and versions; the
controller drives one line through its handle, :meth:`ServingServer.line` (a
:class:`LineEndpoint`): the deployer promotes a validated model with
:meth:`LineEndpoint.swap`, and clients keep talking to the same URL and name. The server runs
FastAPI on uvicorn in a background daemon thread so the daemon owns its lifecycle
programmatically (no separate process, no signal handlers).

Addressing. ``model: "<line>"`` reaches that line's champion (or its canary, below);
``model: "<line>:vN"`` pins version N of that line while it is served. Line names follow the
policy names (``[A-Za-z0-9_.-]{1,64}``, so never a ``:``), which is why two lines' v1 never
collide. An unknown line or version answers 404 listing what is served; a line that is known
(its handle exists) but has nothing loaded yet answers 503; :meth:`ServingServer.remove_line`
stops serving a drained line (404 from then on).

``GET /v1/models`` lists, per line with a champion, one entry whose ``id`` is the line name
(what clients normally send) with the champion's ``version`` and, during a canary, the
``challenger``'s pinned id; then one entry per served version with its pinned id
``<line>:vN``. This mirrors how OpenAI lists an alias beside its dated snapshots: every listed
``id`` is a valid ``model`` value, and a client that picks the first entry of a line gets the
moving alias, not a version that a later swap retires.

Swaps are safe for requests in flight because every request reads its line's routing exactly
once, at its start, and uses that object until it answers (for a stream: until its last
chunk); ``swap`` only rebinds that line's reference and never touches another line.
Generation is CPU-bound, so it always runs in a worker thread, never on the event loop.
Generators may therefore be called from several threads at once.

Only the subset of the OpenAI API the factory needs is implemented: ``GET /v1/models``,
``POST /v1/completions`` and ``POST /v1/chat/completions`` (both with ``n == 1``, streaming or
not), ``POST /v1/feedback`` (a rating of an answer by its id: ``adapters.serving_feedback``;
ids are signed and name the version that answered: ``adapters.completion_ids``), plus
``GET /healthz`` (each line's model and canary) and ``GET /metrics`` (Prometheus, every
series labelled by ``line`` and ``version``). Unknown request fields (``stop``, ...) are
accepted and ignored, as many OpenAI-compatible servers do; ``user`` keeps one user on one
model during a canary.

Guards (``adapters.serving_guard``): optional API keys on ``/v1/*`` (401), a request body limit
(413) and a prompt limit in UTF-8 bytes (400 ``prompt_too_long``, never a silent cut). A
refused request reaches no model and is not counted.

Canary. :meth:`LineEndpoint.route` serves a challenger beside the line's champion: a request
that names the line without a version goes to the challenger with the canary's probability (a
stable draw per ``user`` and line when given). The line keeps a window of live figures per
version and a sample of answered prompts; :meth:`LineEndpoint.take_window` hands them to that
line's canary and starts a new window. Cumulative counters (:meth:`ServingServer.metrics`) are
kept per (line, version) for the ledger and survive swaps and line removal.

Chat prompts. The served models are plain byte-level LMs with no chat template, so a chat
request is flattened into one text prompt, one line per message, ending with the cue for the
reply::

    system: You are terse.
    user: Hi
    assistant:<space>

Each line is ``"<role>: <text>\n"`` (role ``developer`` is written as ``system``); a message whose
content is a list of parts contributes its text parts joined with ``"\n"``. Only ``text`` parts
are accepted. The reply is whatever the model generates after ``"assistant: "``, unmodified.

Streaming (``"stream": true``) answers with Server-Sent Events in the OpenAI format:
``data: {json}\n\n`` chunks, a last chunk carrying ``finish_reason``, an optional usage chunk
(``stream_options.include_usage``, with ``choices: []``), then ``data: [DONE]\n\n``. The
:class:`TextGenerator` protocol only returns a finished :class:`Completion`, so a generator may
additionally offer ``stream(prompt, max_tokens, temperature, seed)`` returning an iterator of
``str`` pieces, optionally followed by one final :class:`Completion` that supplies the token
counts and ``finish_reason`` (its ``text`` is ignored). Without that final item the server counts
UTF-8 bytes of the prompt and of the streamed text and reports ``finish_reason="length"`` when the
byte count reached ``max_tokens``, else ``"stop"``. A generator without ``stream`` is run to
completion first and its text is then sent in pieces of ``STREAM_PIECE_CHARS``
(``adapters.serving_stream``) characters, so the client sees the same SSE protocol but no
earlier first token. Either way, errors before the first piece are ordinary JSON error
responses; an error after streaming began is sent as a final ``data: {"error": {...}}``
event (which the official clients raise).

A generator may also say how many bytes of a prompt it reads (an ``int`` attribute
``context``: a sliding-window model reads the last ``context`` bytes). A longer prompt is
still answered, with the header ``X-Aifactory-Prompt-Window: <context> of <n> bytes``, so the
cut is visible; ``usage.prompt_tokens`` still counts every byte sent.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from adapters.completion_ids import CompletionIds
from adapters.http_thread import HttpThread, HttpThreadError
from adapters.serving_feedback import FeedbackDesk, FeedbackRefused, FeedbackRequest
from adapters.serving_guard import GuardRefusal, RequestGuard, check_prompt
from adapters.serving_stream import start_stream
from adapters.serving_wire import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    Job,
    answer_body,
    check_n,
    describe_validation,
    error_response,
    generation_failed,
    prompt_window,
    render_chat,
    single_prompt,
)
from adapters.traffic_capture import CaptureSpec, TrafficCapture
from adapters.workload.protocol import Completion, TextGenerator

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

__all__ = [
    "Completion",
    "LineEndpoint",
    "LiveWindow",
    "ServedModel",
    "ServingError",
    "ServingServer",
    "TextGenerator",
]

_log = logging.getLogger(__name__)

_OWNER = "aifactory"
#: Piece size, in characters, when a finished text is streamed by a generator without ``stream``.
# says a prompt was longer than the model reads ("32 of 500 bytes"): see prompt_window
_WINDOW_MAX_LATENCIES = 50_000
_WINDOW_MAX_PROMPTS = 512
_SAMPLED_PROMPT_CHARS = 2048
_LIVE_SAMPLE = 256  # served prompts kept per version for live monitoring
#: A line is named like its policy (``policies.model``), so ``<line>:vN`` parses unambiguously.
_LINE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
#: Longest requested model name echoed back in a 404 (the name comes from the client).
_ECHO_CHARS = 200


class ServingError(HttpThreadError):
    """Raised when the server cannot start or stop; the message says why in operator terms."""


def _check_line_name(name: str) -> str:
    if not isinstance(name, str) or not _LINE_NAME.fullmatch(name):
        raise ValueError(f"line name must match {_LINE_NAME.pattern}, got {name!r}")
    return name


@dataclass(frozen=True)
class ServedModel:
    """One deployable model: the id clients pin (``<line>:v<N>``), the registry version, the
    generator, and its production line (taken from ``model_id`` when not given).

    The id and the line are checked against each other, so a model can never be served under
    one line while answering as another."""

    model_id: str
    version: int
    generator: TextGenerator
    line: str = ""

    def __post_init__(self) -> None:
        line = self.line or self.model_id.rpartition(":")[0]
        _check_line_name(line)
        if self.model_id != f"{line}:v{self.version}":
            raise ValueError(
                f"model_id must be '{line}:v{self.version}' for line {line!r}, "
                f"got {self.model_id!r}"
            )
        object.__setattr__(self, "line", line)  # frozen: set once, here


@dataclass
class _VersionStats:
    """Running counters for one served version; the accountant turns these into costs."""

    requests: int = 0
    failures: int = 0
    streamed_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s_sum: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "requests": float(self.requests),
            "failures": float(self.failures),
            "streamed_requests": float(self.streamed_requests),
            "prompt_tokens": float(self.prompt_tokens),
            "completion_tokens": float(self.completion_tokens),
            "latency_s_sum": self.latency_s_sum,
        }


@dataclass(frozen=True)
class _Routing:
    """What is served right now: the champion, optionally a challenger taking ``weight``
    (0..1) of the requests that name the model without a version, and the share of
    prompts kept for online scoring. Replaced whole, never mutated, so a request that read
    it once sees one consistent split."""

    model: ServedModel
    challenger: ServedModel | None = None
    weight: float = 0.0
    sample_rate: float = 0.0
    created: int = field(default_factory=lambda: int(time.time()))

    def served(self) -> list[ServedModel]:
        return [self.model] + ([self.challenger] if self.challenger is not None else [])


class _Reservoir:
    """A uniform sample of a stream of prompts in bounded memory (reservoir sampling)."""

    def __init__(self, rng: random.Random, size: int = 0) -> None:
        self.size = size or _LIVE_SAMPLE
        self.kept: list[str] = []
        self.seen = 0
        self._rng = rng

    def offer(self, prompt: str) -> None:
        self.seen += 1
        if len(self.kept) < self.size:
            self.kept.append(prompt)
            return
        slot = self._rng.randrange(self.seen)
        if slot < self.size:
            self.kept[slot] = prompt


@dataclass
class LiveWindow:
    """One line's per-version live figures since its previous :meth:`LineEndpoint.take_window`,
    and the prompts sampled for scoring by both models (the canary's online loss)."""

    requests: dict[int, int] = field(default_factory=dict)
    failures: dict[int, int] = field(default_factory=dict)
    latencies_ms: dict[int, list[float]] = field(default_factory=dict)
    prompts: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def add(self, version: int, failed: bool, latency_s: float) -> None:
        self.requests[version] = self.requests.get(version, 0) + 1
        self.failures[version] = self.failures.get(version, 0) + int(failed)
        lat = self.latencies_ms.setdefault(version, [])
        if len(lat) < _WINDOW_MAX_LATENCIES:
            lat.append(1000.0 * latency_s)


class LineEndpoint:
    """One production line's place on the server: its routing, live window and token limit.

    Got from :meth:`ServingServer.line`; it is what the controller drives for that line and
    satisfies ``controller.context.LiveTraffic``. Nothing here reaches another line. After
    :meth:`ServingServer.remove_line` the handle is detached: it serves nothing, and
    ``swap``/``route`` raise instead of silently loading a model no request can reach.
    """

    def __init__(self, name: str, server: ServingServer) -> None:
        self._name = _check_line_name(name)
        self._server = server
        self._routing: _Routing | None = None
        self._window = LiveWindow()
        self._max_tokens_limit: int | None = None
        self.capture: CaptureSpec | None = None  # set from the line's policy; None: keep nothing
        self._live: dict[int, _Reservoir] = {}  # served prompts per version (live monitoring)
        self._live_figures: dict[int, dict[str, float]] = {}
        self._detached = False
        self._rng = random.Random()
        self._swap_lock = threading.Lock()
        self._window_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LineEndpoint({self._name!r}, current={self.current!r})"

    @property
    def name(self) -> str:
        return self._name

    # ------------------------------------------------------------------ model management

    def swap(self, model: ServedModel | None) -> ServedModel | None:
        """Atomically replace the line's champion (``None`` stops serving the line's models;
        the name then answers 503) and drop any challenger; return the previous champion.

        Requests already running keep the model they captured at their start.
        """
        if model is not None:
            self._check_model(model)
        with self._swap_lock:
            if model is not None:
                self._check_attached()
            previous = self._routing
            self._routing = _Routing(model) if model is not None else None
        self._prune_live()
        return previous.model if previous is not None else None

    def route(
        self,
        champion: ServedModel,
        challenger: ServedModel | None,
        weight_pct: float,
        sample_rate: float = 0.0,
    ) -> None:
        """Split the line's traffic: ``weight_pct`` % of the requests that name the line
        without a version go to the challenger (canary). Atomic like :meth:`swap`; pinned
        requests (``model: <line>:vN``) reach either version while both are served."""
        if not 0.0 <= weight_pct <= 100.0:
            raise ValueError(f"weight_pct must be within 0..100, got {weight_pct}")
        for model in (champion, challenger):
            if model is not None:
                self._check_model(model)
        routing = _Routing(
            champion,
            challenger,
            weight_pct / 100.0 if challenger is not None else 0.0,
            sample_rate if challenger is not None else 0.0,
        )
        with self._swap_lock:
            self._check_attached()
            self._routing = routing
        self._prune_live()

    def _prune_live(self) -> None:
        """Live samples of versions no longer served are dropped (a follower's too)."""
        routing = self._routing
        served = {m.version for m in routing.served()} if routing is not None else set()
        with self._window_lock:
            self._live = {v: s for v, s in self._live.items() if v in served}

    @property
    def current(self) -> ServedModel | None:
        """The champion: what requests get when no challenger takes them."""
        routing = self._routing
        return routing.model if routing is not None else None

    @property
    def challenger(self) -> tuple[ServedModel, float] | None:
        """The canary and its share of the line's traffic in % (None without a rollout)."""
        routing = self._routing
        if routing is None or routing.challenger is None:
            return None
        return routing.challenger, 100.0 * routing.weight

    @property
    def max_tokens_limit(self) -> int:
        """Cap on one answer's tokens for this line: its own if set, else the server's."""
        own = self._max_tokens_limit
        return own if own is not None else self._server.max_tokens_limit

    @max_tokens_limit.setter
    def max_tokens_limit(self, value: int | None) -> None:
        """``None`` makes the line follow the server's limit again."""
        if value is not None and value < 1:
            raise ValueError("max_tokens_limit must be >= 1")
        self._max_tokens_limit = value

    # ------------------------------------------------------------------ live window

    def take_prompts(self) -> list[str]:
        """Hand over the prompts sampled so far (the window's counts stay): lets the canary
        score them as they come instead of in one burst at the end of a step."""
        with self._window_lock:
            prompts, self._window.prompts = self._window.prompts, []
        return prompts

    def take_window(self) -> LiveWindow:
        """Return this line's live figures gathered since the last call; start a new window."""
        with self._window_lock:
            window, self._window = self._window, LiveWindow()
        return window

    def _note(self, job: Job, answered: bool, latency_s: float) -> None:
        """Count one finished request in the window; maybe keep its prompt for scoring;
        offer it to the version's live sample."""
        sample = (
            answered
            and job.sample_rate > 0
            and len(job.prompt) >= 8
            and self._rng.random() < job.sample_rate
        )
        with self._window_lock:
            self._window.add(job.served.version, not answered, latency_s)
            if sample and len(self._window.prompts) < _WINDOW_MAX_PROMPTS:
                self._window.prompts.append(job.prompt[-_SAMPLED_PROMPT_CHARS:])
            if answered and job.store and len(job.prompt) >= 8:  # never one asked not to be kept
                live = self._live.setdefault(job.served.version, _Reservoir(self._rng))
                live.offer(job.prompt[-_SAMPLED_PROMPT_CHARS:])

    # ------------------------------------------------------------------ live monitoring

    def live_count(self, version: int) -> int:
        """Prompts the version answered since its live sample was last taken."""
        with self._window_lock:
            live = self._live.get(version)
            return live.seen if live is not None else 0

    def take_live_sample(self, version: int) -> list[str]:
        """A uniform sample (at most :data:`_LIVE_SAMPLE`) of the prompts the version
        answered since the last call; the next sample starts empty."""
        with self._window_lock:
            live = self._live.pop(version, None)
        return live.kept if live is not None else []

    def keep_live_only(self, version: int) -> None:
        """Drop the samples (and figures) of every other version: retired ones go."""
        with self._window_lock:
            self._live = {v: s for v, s in self._live.items() if v == version}
            self._live_figures = {v: f for v, f in self._live_figures.items() if v == version}

    def publish_live(self, version: int, figures: dict[str, float]) -> None:
        """What the live watch found for the version: exported on `/metrics`."""
        with self._window_lock:
            self._live_figures[version] = dict(figures)

    def live_figures(self) -> dict[int, dict[str, float]]:
        with self._window_lock:
            return {v: dict(f) for v, f in self._live_figures.items()}

    # ------------------------------------------------------------------ request side

    def _choose(self, routing: _Routing, model: str, user: str | None) -> ServedModel | None:
        """The model a request gets from a captured routing: the pinned version, or for the
        bare line name the champion or, by the canary's weight, the challenger."""
        if model != self._name:
            return next((m for m in routing.served() if m.model_id == model), None)
        if routing.challenger is not None and routing.weight > 0:
            draw = _user_draw(self._name, user) if user else self._rng.random()
            if draw < routing.weight:
                return routing.challenger
        return routing.model

    def _check_model(self, model: ServedModel) -> None:
        if model.line != self._name:
            raise ValueError(f"{model.model_id} belongs to line '{model.line}', not '{self._name}'")

    def _check_attached(self) -> None:
        if self._detached:
            raise ServingError(
                f"line '{self._name}' was removed from serving; "
                f"ask the server for line('{self._name}') again"
            )

    def _detach(self) -> None:
        with self._swap_lock:
            self._detached = True
            self._routing = None


class ServingServer:
    """Serves the production lines over HTTP; each line's models are swapped, canaried and
    counted through its :class:`LineEndpoint`, without downtime and without touching others."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8000,
        max_tokens_limit: int = 512,
        feedback: FeedbackDesk | None = None,
        capture: TrafficCapture | None = None,
        *,
        api_keys: Sequence[str] = (),
        max_body_bytes: int = 1_048_576,
        max_prompt_bytes: int = 65_536,
        body_timeout_s: float = 15.0,
    ) -> None:
        """``api_keys``, ``max_body_bytes``, ``body_timeout_s`` and ``max_prompt_bytes`` are
        the guards of ``adapters.serving_guard`` (no keys: open, as before)."""
        if max_prompt_bytes < 1:
            raise ValueError("max_prompt_bytes must be >= 1")
        self.max_tokens_limit = max_tokens_limit
        self._lines: dict[str, LineEndpoint] = {}
        self._lines_lock = threading.Lock()
        self._stats: dict[tuple[str, int], _VersionStats] = {}
        self._stats_lock = threading.Lock()
        # this daemon's place among members sharing a store (its role and term); None alone
        self.member: dict[str, Any] | None = None
        # signs completion ids and takes ratings of answers (kept only with a sink)
        self.feedback = feedback if feedback is not None else FeedbackDesk(CompletionIds())
        # keeps served prompts as training data for lines whose policy asks (`capture`)
        self.capture = capture
        self._answers = _Answers(self)
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_ServingCollector(self))
        self.max_prompt_bytes = max_prompt_bytes  # UTF-8 bytes; longer prompts get 400
        # the guard wraps the whole app: what it refuses reaches no route and no counter
        self._app = RequestGuard(
            self._build_app(),
            api_keys=api_keys,
            max_body_bytes=max_body_bytes,
            body_timeout_s=body_timeout_s,
        )
        self.http = HttpThread(self._app, host, port, "serving", backlog=2048, error=ServingError)

    @property
    def max_tokens_limit(self) -> int:
        """Default cap on one answer's tokens, for every line without a limit of its own."""
        return self._max_tokens_limit

    @max_tokens_limit.setter
    def max_tokens_limit(self, value: int) -> None:
        if value < 1:
            raise ValueError("max_tokens_limit must be >= 1")
        self._max_tokens_limit = value

    # ------------------------------------------------------------------ lines

    def line(self, name: str) -> LineEndpoint:
        """The handle of line ``name``, created (serving nothing yet: 503) on first use; the
        same object on later calls until :meth:`remove_line`."""
        _check_line_name(name)
        with self._lines_lock:
            endpoint = self._lines.get(name)
            if endpoint is None:
                endpoint = self._lines[name] = LineEndpoint(name, self)
        return endpoint

    def remove_line(self, name: str) -> bool:
        """Stop serving a drained line: requests naming it get 404 from now on, while those in
        flight finish on what they captured; its counters stay in :meth:`metrics`. Returns
        whether the line was there."""
        with self._lines_lock:
            endpoint = self._lines.pop(name, None)
        if endpoint is None:
            return False
        endpoint._detach()
        return True

    def lines(self) -> list[str]:
        """Names of the lines the server knows (served or waiting for a first model), sorted."""
        with self._lines_lock:
            return sorted(self._lines)

    def _endpoints(self) -> list[LineEndpoint]:
        with self._lines_lock:
            return [self._lines[name] for name in sorted(self._lines)]

    # ------------------------------------------------------------------ counters

    def metrics(self) -> dict[tuple[str, int], dict[str, float]]:
        """Snapshot of the cumulative counters per (line, version), kept across swaps and line
        removal so retired versions stay visible and booked totals never go backwards."""
        with self._stats_lock:
            return {key: stats.as_dict() for key, stats in self._stats.items()}

    def _record(
        self, job: Job, completion: Completion | None, latency_s: float, streamed: bool = False
    ) -> None:
        job.endpoint._note(job, completion is not None, latency_s)
        spec, capture = job.endpoint.capture, self.capture
        if completion is not None and job.store and spec is not None and capture is not None:
            try:  # keeping a prompt never fails the answer it came with
                capture.offer(
                    spec,
                    job.served.line,
                    job.served.version,
                    job.completion_id,
                    job.prompt,
                    job.asked_store,
                )
            except Exception as exc:
                _log.warning("capture failed: %s: %s", type(exc).__name__, exc)
        with self._stats_lock:
            stats = self._stats.setdefault((job.served.line, job.served.version), _VersionStats())
            stats.requests += 1
            stats.streamed_requests += int(streamed)
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
        return self.http.port

    @property
    def url(self) -> str:
        """Base URL a local client should use; wildcard binds are reached via loopback."""
        return self.http.url

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Bind, start uvicorn on a thread, return once it accepts connections; a taken
        port is a :class:`ServingError` naming the address."""
        self.http.start()

    def stop(self, timeout_s: float = 5.0) -> str | None:
        """Let in-flight requests finish for up to ``timeout_s`` and free the port. Never
        raises; returns None when serving stopped cleanly, else what went wrong (logged)."""
        problem = self.http.stop(timeout_s)
        if problem:
            _log.warning("%s", problem)
        return problem

    # ------------------------------------------------------------------ HTTP app

    def _build_app(self) -> FastAPI:
        app = FastAPI(title="aifactory serving", docs_url=None, redoc_url=None, openapi_url=None)

        @app.exception_handler(ApiError)
        async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
            return error_response(exc.status, exc.message, exc.err_type, exc.code)

        @app.exception_handler(GuardRefusal)
        async def _guard_refusal(_: Request, exc: GuardRefusal) -> JSONResponse:
            return JSONResponse(status_code=exc.status, content=exc.body())

        @app.exception_handler(RequestValidationError)
        async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
            message = describe_validation(exc.errors())
            return error_response(400, message, "invalid_request_error", "invalid_request")

        @app.exception_handler(StarletteHTTPException)
        async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
            code = "not_found" if exc.status_code == 404 else "invalid_request"
            resp = error_response(exc.status_code, str(exc.detail), "invalid_request_error", code)
            resp.headers.update(exc.headers or {})  # e.g. Allow on 405
            return resp

        @app.get("/healthz")
        def healthz() -> dict[str, Any]:
            body = {"status": "ok", "lines": {ep.name: _health(ep) for ep in self._endpoints()}}
            if self.member is not None:
                body["member"] = self.member
            return body

        @app.get("/metrics")
        def prometheus() -> Response:
            return Response(generate_latest(self._registry), media_type=CONTENT_TYPE_LATEST)

        @app.get("/v1/models")
        def list_models() -> dict[str, Any]:
            return {"object": "list", "data": self._answers.listing()}

        # Plain ``def`` endpoints: FastAPI runs them in its thread pool, so generation never
        # blocks the event loop; a streamed body is a sync iterator, also run in that pool.
        @app.post("/v1/completions", response_model=None)
        def completions(
            body: CompletionRequest, response: Response
        ) -> dict[str, Any] | StreamingResponse:
            return self._answers.complete(body, response)

        @app.post("/v1/chat/completions", response_model=None)
        def chat_completions(
            body: ChatRequest, response: Response
        ) -> dict[str, Any] | StreamingResponse:
            return self._answers.chat(body, response)

        @app.post("/v1/feedback")
        def feedback(body: FeedbackRequest) -> dict[str, Any]:
            try:
                return self.feedback.receive(body)
            except FeedbackRefused as exc:
                err_type = "server_error" if exc.status >= 500 else "invalid_request_error"
                raise ApiError(exc.status, exc.message, err_type, exc.code) from exc

        return app


class _Answers:
    """How the server answers the OpenAI routes: bind a request to its line and the model
    captured at its start, generate, count (the server's counters) and build the answer."""

    def __init__(self, server: ServingServer) -> None:
        self.server = server

    def listing(self) -> list[dict[str, Any]]:
        """The ``/v1/models`` entries (see the module docstring): per line with a champion,
        the line name, then the pinned id of every served version."""
        data: list[dict[str, Any]] = []
        for endpoint in self.server._endpoints():
            routing = endpoint._routing  # read once: one consistent split per line
            if routing is None:
                continue
            base = {"object": "model", "created": routing.created, "owned_by": _OWNER}
            alias = {"id": endpoint.name, **base, "line": endpoint.name}
            alias["version"] = routing.model.version
            if routing.challenger is not None:
                alias["challenger"] = routing.challenger.model_id
            data.append(alias)
            data.extend(
                {"id": m.model_id, **base, "line": endpoint.name, "version": m.version}
                for m in routing.served()
            )
        return data

    def _job(
        self,
        model: str,
        prompt: str,
        max_tokens: int | None,
        temperature: float,
        seed: int | None,
        user: str | None = None,
        *,
        kind: str = "cmpl",
        store: bool | None = None,
    ) -> Job:
        """Bind a validated request to its line and a model captured once: 404 for an unknown
        line or version, 503 for a known line with nothing loaded. ``max_tokens=None`` means
        the line's whole limit."""
        endpoint = self.server._lines.get(model.partition(":")[0])
        if endpoint is None:
            raise self._not_found(model)
        routing = endpoint._routing  # read exactly once
        if routing is None:
            raise ApiError(
                503,
                f"No model is being served yet on line '{endpoint.name}'",
                "server_error",
                "model_not_loaded",
            )
        served = endpoint._choose(routing, model, user)
        if served is None:
            raise self._not_found(model)
        limit = endpoint.max_tokens_limit
        return Job(
            endpoint,
            served,
            prompt,
            min(max_tokens, limit) if max_tokens is not None else limit,
            temperature,
            seed,
            routing.sample_rate,
            self.server.feedback.ids.issue(kind, served.model_id, routed=model == endpoint.name),
            store is not False,
            store,
        )

    def _not_found(self, model: str) -> ApiError:
        """The OpenAI-style 404, naming every ``model`` value that would have worked."""
        names = ", ".join(f"'{entry['id']}'" for entry in self.listing()) or "nothing yet"
        shown = model if len(model) <= _ECHO_CHARS else model[:_ECHO_CHARS] + "..."
        return ApiError(
            404,
            f"The model '{shown}' does not exist; this server serves {names}",
            "invalid_request_error",
            "model_not_found",
        )

    def complete(
        self, body: CompletionRequest, response: Response
    ) -> dict[str, Any] | StreamingResponse:
        """Answer one completion request on the model captured at its start; ``response``
        carries the headers of an answer that is not streamed."""
        check_n(body.n)
        prompt = single_prompt(body.prompt)
        check_prompt(prompt, self.server.max_prompt_bytes, "prompt")  # never cut, never counted
        # _job reads the line's routing exactly once: this is what makes swap() safe mid-request
        job = self._job(
            body.model,
            prompt,
            body.max_tokens,
            body.temperature,
            body.seed,
            body.user,
            store=body.store,
        )
        if body.stream:
            return start_stream(job, False, body.stream_options, self.server._record)
        result = self._generate(job)
        response.headers.update(prompt_window(job))
        return answer_body(job, result, chat=False)

    def chat(self, body: ChatRequest, response: Response) -> dict[str, Any] | StreamingResponse:
        """Answer one chat request on the model captured at its start; ``response`` carries
        the headers of an answer that is not streamed."""
        check_n(body.n)
        prompt = render_chat(body.messages)
        check_prompt(prompt, self.server.max_prompt_bytes, "messages")
        limit = body.max_completion_tokens or body.max_tokens  # None: the line's whole limit
        job = self._job(
            body.model,
            prompt,
            limit,
            body.temperature,
            body.seed,
            body.user,
            kind="chatcmpl",
            store=body.store,
        )
        if body.stream:
            return start_stream(job, True, body.stream_options, self.server._record)
        result = self._generate(job)
        response.headers.update(prompt_window(job))
        return answer_body(job, result, chat=True)

    def _generate(self, job: Job) -> Completion:
        """Run the whole generation and count it; failures become a counted 500."""
        started = time.perf_counter()
        try:
            result = job.served.generator.generate(
                job.prompt, job.max_tokens, temperature=job.temperature, seed=job.seed
            )
        except Exception as exc:
            self.server._record(job, None, time.perf_counter() - started)
            raise generation_failed(exc) from exc
        self.server._record(job, result, time.perf_counter() - started)
        return result


class _ServingCollector(Collector):
    """Per-(line, version) request and token counters, and each line's canary split, for
    Prometheus (`GET /metrics`): read from the server's own counters at scrape time."""

    def __init__(self, server: ServingServer) -> None:
        self._server = server

    def collect(self) -> Iterator[Any]:
        labels = ["line", "version"]
        requests = CounterMetricFamily(
            "aifactory_requests", "Generation requests answered or failed", labels=labels
        )
        failures = CounterMetricFamily(
            "aifactory_request_failures", "Generation requests that failed", labels=labels
        )
        tokens = CounterMetricFamily(
            "aifactory_tokens", "Tokens served (prompt and completion)", labels=[*labels, "kind"]
        )
        latency = SummaryMetricFamily(
            "aifactory_request_latency_seconds", "Time to answer a request", labels=labels
        )
        for (line, version), m in sorted(self._server.metrics().items()):
            key = [line, f"v{version}"]  # stable across swaps, so a series never changes name
            requests.add_metric(key, m["requests"])
            failures.add_metric(key, m["failures"])
            tokens.add_metric([*key, "prompt"], m["prompt_tokens"])
            tokens.add_metric([*key, "completion"], m["completion_tokens"])
            latency.add_metric(key, count_value=m["requests"], sum_value=m["latency_s_sum"])
        yield from (requests, failures, tokens, latency, self._shares(), *self._live())
        capture = self._server.capture
        if capture is not None:
            kept = CounterMetricFamily(
                "aifactory_capture_kept", "Served prompts kept as training data (new texts)"
            )
            kept.add_metric([], capture.kept)
            dropped = CounterMetricFamily(
                "aifactory_capture_dropped",
                "Prompts to keep that were lost (queue full, store down)",
            )
            dropped.add_metric([], capture.dropped)
            yield from (kept, dropped)
        stats = self._server.metrics()
        yield from self._server.feedback.families(
            lambda line, version: (
                stats.get((line, version), {}).get("requests", 0.0)
                - stats.get((line, version), {}).get("failures", 0.0)
            )
        )
        member = self._server.member
        if member is not None:
            leader = GaugeMetricFamily(
                "aifactory_member_leader",
                "1 while this daemon leads the members sharing its store, else 0",
                labels=["member", "role"],
            )
            leader.add_metric(
                [str(member["member"]), str(member["role"])], float(member["role"] == "leader")
            )
            epoch = GaugeMetricFamily(
                "aifactory_member_epoch",
                "The term this daemon leads or last led",
                labels=["member"],
            )
            epoch.add_metric([str(member["member"])], float(member["epoch"]))  # type: ignore[arg-type]
            yield from (leader, epoch)

    def _live(self) -> list[GaugeMetricFamily]:
        """What the live watch last found per line and version (see `controller.live_watch`)."""
        labels = ["line", "version"]
        families = {
            "prompts": GaugeMetricFamily(
                "aifactory_live_prompts", "Served prompts the last live check judged", labels=labels
            ),
            "js_divergence": GaugeMetricFamily(
                "aifactory_live_js_divergence",
                "Byte-distribution JS divergence of served prompts from the training data",
                labels=labels,
            ),
            "bpb": GaugeMetricFamily(
                "aifactory_live_bpb", "Bits/byte of the version on served prompts", labels=labels
            ),
            "loss_increase_pct": GaugeMetricFamily(
                "aifactory_live_loss_increase_pct",
                "Live bits/byte over the version's evaluation figure, %",
                labels=labels,
            ),
        }
        for endpoint in self._server._endpoints():
            for version, figures in sorted(endpoint.live_figures().items()):
                for name, family in families.items():
                    value = figures.get(name)
                    if value is not None:
                        family.add_metric([endpoint.name, f"v{version}"], value)
        return list(families.values())

    def _shares(self) -> GaugeMetricFamily:
        share = GaugeMetricFamily(
            "aifactory_traffic_share",
            "Share of a line's unpinned requests routed to a version",
            labels=["line", "version", "role"],
        )
        for endpoint in self._server._endpoints():
            routing = endpoint._routing  # read once: both shares from the same split
            if routing is None:
                continue
            weight = routing.weight if routing.challenger is not None else 0.0
            share.add_metric([endpoint.name, f"v{routing.model.version}", "champion"], 1 - weight)
            if routing.challenger is not None:
                role = [endpoint.name, f"v{routing.challenger.version}", "challenger"]
                share.add_metric(role, weight)
        return share


def _health(endpoint: LineEndpoint) -> dict[str, Any]:
    """One line in ``/healthz``: its champion's id (None while loading) and any canary."""
    routing = endpoint._routing  # read once
    body: dict[str, Any] = {"model": routing.model.model_id if routing is not None else None}
    if routing is not None and routing.challenger is not None:
        body["canary"] = {
            "model": routing.challenger.model_id,
            "weight_pct": round(100.0 * routing.weight, 3),
        }
    return body


def _user_draw(line: str, user: str) -> float:
    """A stable number in [0, 1) per user and line, so one user's requests stay on one model
    of a line, and the same users are not the canary's share on every line at once."""
    digest = hashlib.blake2b(f"{line}\0{user}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64
