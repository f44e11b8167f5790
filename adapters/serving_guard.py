"""Guards in front of the OpenAI-compatible endpoint: API keys, a body limit, a prompt limit.

Part of the "act" side (``adapters.serving``), kept apart so the server's request handling
stays about models. What a guard refuses never reaches a model and is never counted as served;
every refusal is an OpenAI-style JSON error, so the official clients raise it as usual.

* API keys (like vLLM's ``--api-key``): with keys set, every ``/v1/*`` request must send
  ``Authorization: Bearer KEY`` with one of them, else 401 (``invalid_api_key``). The keys are
  compared in constant time, each of them every time, so neither the timing nor the answer
  tells which key, or how much of one, matched; the key sent is never echoed. ``/healthz``
  and ``/metrics`` stay open, for probes and Prometheus.
* Body limit (:class:`RequestGuard`): a declared ``Content-Length`` over the limit is answered
  413 (``request_too_large``) at once, without reading the body; a body of unknown length
  (chunked) is read up to the limit and answered 413 as soon as it passes it, so a client can
  never make the server buffer more than the limit. A body within it is handed to the app
  whole (it is small), which is why the app never starts answering a request the guard then
  refuses. A malformed ``Content-Length`` is a 400. A body not all in within
  ``body_timeout_s`` of the request's head (a declared length never sent, a trickle) is
  answered 408 (``request_timeout``): a client cannot hold a connection open by never
  finishing its body.
* Prompt limit (:func:`check_prompt`): a prompt (a chat's messages as the server renders them)
  over the limit in UTF-8 bytes is a 400 (``prompt_too_long``) before anything is generated.
  It bounds what one request can make the server render, hold and count. Within it, a prompt
  longer than a byte model's context is answered: the model reads its last context bytes (a
  sliding window), and the answer says so in a header (``adapters.serving``).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

__all__ = [
    "GuardRefusal",
    "RequestGuard",
    "check_api_key",
    "check_prompt",
    "normalize_api_keys",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Paths that need a key when keys are set; /healthz and /metrics stay open (like vLLM).
_KEYED_PREFIX = "/v1"
_BEARER = b"bearer "


class GuardRefusal(Exception):
    """A request a guard will not pass on: the HTTP status and OpenAI's error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        param: str | None = None,
        err_type: str = "invalid_request_error",
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.err_type = err_type
        self.headers = tuple(headers)

    def body(self) -> dict[str, Any]:
        """The error envelope the official OpenAI clients parse."""
        return {
            "error": {
                "message": self.message,
                "type": self.err_type,
                "param": self.param,
                "code": self.code,
            }
        }


def normalize_api_keys(keys: Sequence[str]) -> tuple[bytes, ...]:
    """The keys as the bytes a header carries. A blank key, or one with surrounding spaces,
    is refused: it would let in any request with an empty token, or match none at all."""
    if isinstance(keys, str):  # a lone string would be read as one key per character
        raise TypeError("api_keys must be a sequence of keys, not one string")
    out: list[bytes] = []
    for key in keys:
        if not key or key != key.strip():
            raise ValueError("an API key must be non-empty, without surrounding whitespace")
        out.append(key.encode("utf-8"))
    return tuple(out)


def check_api_key(authorization: bytes | None, keys: Sequence[bytes]) -> GuardRefusal | None:
    """None when ``authorization`` (the raw header) carries one of ``keys`` as a Bearer token,
    or when no keys are set; else the 401 to answer. Every key is compared, in constant time,
    whatever matched before."""
    if not keys:
        return None
    value = (authorization or b"").strip()
    token = value[len(_BEARER) :].strip() if value[: len(_BEARER)].lower() == _BEARER else b""
    if not token:  # no header, an empty one, or another scheme (Basic ...)
        return _unauthorized(
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token, key)
    if matched:
        return None
    return _unauthorized(
        "Incorrect API key provided. Send one of the keys this server was started with "
        "(Authorization: Bearer YOUR_KEY)."
    )


def _unauthorized(message: str) -> GuardRefusal:
    return GuardRefusal(401, message, "invalid_api_key", headers=[("WWW-Authenticate", "Bearer")])


def check_prompt(prompt: str, max_prompt_bytes: int, param: str) -> None:
    """Raise a 400 ``prompt_too_long`` naming ``param`` when ``prompt`` is over the limit in
    UTF-8 bytes (lone surrogates count as their 3 bytes instead of failing here)."""
    size = len(prompt.encode("utf-8", "surrogatepass"))
    if size > max_prompt_bytes:
        raise GuardRefusal(
            400,
            f"the prompt is {size} bytes; this server accepts at most {max_prompt_bytes}",
            "prompt_too_long",
            param=param,
        )


def _too_large(limit: int) -> GuardRefusal:
    return GuardRefusal(
        413,
        f"the request body is larger than this server accepts ({limit} bytes at most)",
        "request_too_large",
    )


def _timed_out(timeout_s: float) -> GuardRefusal:
    return GuardRefusal(
        408,
        f"the request body did not arrive within {timeout_s:g} seconds",
        "request_timeout",
    )


class RequestGuard:
    """Pure ASGI middleware: the API-key check, then the body limit and its deadline (see
    the module docstring).

    The key is checked first, so a client without one cannot make the server read its body.
    A refused request's connection is closed after the answer (``Connection: close``): what is
    left of its body is not worth reading.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        api_keys: Sequence[str] = (),
        max_body_bytes: int = 1_048_576,
        body_timeout_s: float = 15.0,
    ) -> None:
        if max_body_bytes < 1:
            raise ValueError("max_body_bytes must be >= 1")
        if not body_timeout_s > 0:
            raise ValueError("body_timeout_s must be > 0")
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self._keys = normalize_api_keys(api_keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = list(scope.get("headers") or ())
        path = str(scope.get("path", ""))
        if self._keys and (path == _KEYED_PREFIX or path.startswith(_KEYED_PREFIX + "/")):
            refusal = check_api_key(_header(headers, b"authorization"), self._keys)
            if refusal is not None:
                await _answer(send, refusal)
                return
        declared = [value for name, value in headers if name.lower() == b"content-length"]
        if declared:
            text = {value.strip() for value in declared}
            if len(text) != 1 or not next(iter(text)).isdigit():
                await _answer(
                    send, GuardRefusal(400, "malformed Content-Length header", "invalid_request")
                )
                return
            if int(next(iter(text))) > self.max_body_bytes:
                await _answer(send, _too_large(self.max_body_bytes))
                return
        try:
            first = await asyncio.wait_for(self._read_body(receive), self.body_timeout_s)
        except TimeoutError:
            await _answer(send, _timed_out(self.body_timeout_s))
            return
        if first is None:  # the client left before its body was in: nothing to answer
            return
        if first["type"] == "guard.too_large":
            await _answer(send, _too_large(self.max_body_bytes))
            return
        await self.app(scope, _replay(first, receive), send)

    async def _read_body(self, receive: Receive) -> Message | None:
        """The whole body as one ``http.request`` message, or a ``guard.too_large`` marker
        once more than the limit came in (the rest is left unread); None on a disconnect."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = bytes(message.get("body", b""))
            size += len(chunk)
            if size > self.max_body_bytes:
                return {"type": "guard.too_large"}
            chunks.append(chunk)
            if not message.get("more_body", False):
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}


def _replay(first: Message, receive: Receive) -> Receive:
    """A ``receive`` that gives the buffered body once, then the server's own messages (a
    disconnect while a stream is being sent)."""
    pending: list[Message] = [first]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


async def _answer(send: Send, refusal: GuardRefusal) -> None:
    body = json.dumps(refusal.body()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in refusal.headers),
    ]
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
