"""Guards of the OpenAI-compatible endpoint (`adapters.serving_guard`), over real loopback
HTTP: API keys, the request body limit and the prompt limit, each refused with an
OpenAI-style error before any model runs, and never counted as served."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from test_serving import LINE, _model

from adapters.http_thread import HttpThread
from adapters.serving import ServingServer
from adapters.serving_guard import RequestGuard

KEYS = ("sk-first-key", "sk-second-key")


def _serve(**kwargs: Any) -> ServingServer:
    srv = ServingServer(port=0, max_tokens_limit=8, **kwargs)
    srv.line(LINE).swap(_model("A", 1, streaming=True))
    srv.start()
    return srv


@pytest.fixture
def guarded() -> Iterator[ServingServer]:
    """The default limits (1 MiB body, 64 KiB prompt), no keys."""
    srv = _serve()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def keyed() -> Iterator[ServingServer]:
    srv = _serve(api_keys=KEYS)
    try:
        yield srv
    finally:
        srv.stop()


def _error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == code and err["type"] == "invalid_request_error"
    return err


def _calls(srv: ServingServer) -> int:
    current = srv.line(LINE).current
    assert current is not None
    return len(current.generator.calls)  # type: ignore[attr-defined]


# body limit ---------------------------------------------------------------------------


def test_a_10_mb_prompt_is_413_at_once_and_not_counted(guarded: ServingServer) -> None:
    body = json.dumps({"model": LINE, "prompt": "x" * 10_000_000}).encode()
    resp = httpx.post(
        f"{guarded.url}/v1/completions",
        content=body,
        headers={"Content-Type": "application/json"},
        timeout=10.0,
    )
    err = _error(resp, 413, "request_too_large")
    assert "1048576 bytes" in err["message"] and err["param"] is None
    assert guarded.metrics() == {} and _calls(guarded) == 0


def test_a_chunked_body_is_cut_off_at_the_limit() -> None:
    srv = _serve(max_body_bytes=4096)
    try:

        def chunks(total: int) -> Iterator[bytes]:
            payload = json.dumps({"model": LINE, "prompt": "y" * total}).encode()
            for i in range(0, len(payload), 1000):
                yield payload[i : i + 1000]

        with httpx.Client(base_url=srv.url, timeout=10.0) as client:
            big = client.post("/v1/completions", content=chunks(20_000))
            assert big.request.headers.get("transfer-encoding") == "chunked"
            err = _error(big, 413, "request_too_large")
            assert "4096 bytes" in err["message"]
            assert srv.metrics() == {} and _calls(srv) == 0
            # a chunked body within the limit is passed on whole
            small = client.post(
                "/v1/completions",
                content=chunks(3000),
                headers={"Content-Type": "application/json"},
            )
            assert small.request.headers.get("transfer-encoding") == "chunked"
            assert small.status_code == 200, small.text
            assert small.json()["choices"][0]["text"].startswith("A:")
    finally:
        srv.stop()


def test_the_middleware_answers_without_calling_the_app() -> None:
    """A malformed or too large Content-Length never reaches the app (h11 itself already
    refuses a malformed one over HTTP, so the middleware is driven directly here)."""
    reached: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["path"])

    guard = RequestGuard(app, max_body_bytes=100)

    async def run(headers: list[tuple[bytes, bytes]]) -> tuple[int, dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            raise AssertionError("the body must not be read")

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "path": "/v1/completions", "headers": headers}
        await guard(scope, receive, send)
        return sent[0]["status"], json.loads(sent[1]["body"])

    for value in (b"12x", b"-1", b""):
        status, body = asyncio.run(run([(b"content-length", value)]))
        assert status == 400 and body["error"]["code"] == "invalid_request"
    status, _ = asyncio.run(run([(b"content-length", b"5"), (b"content-length", b"6")]))
    assert status == 400
    status, body = asyncio.run(run([(b"content-length", b"101")]))
    assert status == 413 and body["error"]["code"] == "request_too_large"
    assert reached == []
    with pytest.raises(ValueError):
        RequestGuard(app, max_body_bytes=0)


def _half_sent(url: str, declared: int, sent: bytes, path: str = "/v1/completions") -> bytes:
    """What the server answers a request that declares ``declared`` bytes of body and sends
    only ``sent``, read until it closes the connection."""
    host, _, port = url.removeprefix("http://").rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10.0) as sock:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
        )
        sock.sendall(head.encode() + sent)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_a_body_declared_but_never_sent_is_408_within_the_deadline() -> None:
    srv = _serve(body_timeout_s=0.5)
    try:
        started = time.monotonic()
        answer = _half_sent(srv.url, 100, b'{"model": ')
        waited = time.monotonic() - started
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), answer
        assert 0.4 <= waited < 5.0, waited
        err = json.loads(body)["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert err["code"] == "request_timeout" and "0.5 seconds" in err["message"]
        assert srv.metrics() == {} and _calls(srv) == 0
        # the server goes on answering whole requests
        ok = httpx.post(f"{srv.url}/v1/completions", json={"model": LINE, "prompt": "hi"})
        assert ok.status_code == 200, ok.text
    finally:
        srv.stop()
    with pytest.raises(ValueError):
        ServingServer(port=0, body_timeout_s=0)


def test_a_forged_forwarded_for_is_ignored_and_connections_are_bounded() -> None:
    """The client is the socket's peer, whatever X-Forwarded-For says; and uvicorn sheds
    load past a bound on connections at once instead of taking every one."""
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope.get("client"))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    http = HttpThread(app, "127.0.0.1", 0, "test")
    http.start()
    try:
        headers = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
        assert httpx.get(http.url + "/", headers=headers).status_code == 204
        assert seen[0][0] == "127.0.0.1"
        assert http._config().proxy_headers is False
        assert http._config().limit_concurrency == 1024
    finally:
        http.stop()


# prompt limit -------------------------------------------------------------------------


def test_a_prompt_over_the_limit_is_400_and_at_the_limit_is_served(
    guarded: ServingServer,
) -> None:
    limit = guarded.max_prompt_bytes
    assert limit == 65_536
    with httpx.Client(base_url=guarded.url, timeout=10.0) as client:
        # UTF-8 bytes count, not characters: "é" is two
        at = "é" * (limit // 2)
        over = at + "z"
        resp = client.post("/v1/completions", json={"model": LINE, "prompt": over})
        err = _error(resp, 400, "prompt_too_long")
        assert err["param"] == "prompt"
        assert (
            err["message"]
            == f"the prompt is {limit + 1} bytes; this server accepts at most {limit}"
        )
        resp = client.post("/v1/completions", json={"model": LINE, "prompt": [over]})
        _error(resp, 400, "prompt_too_long")
        resp = client.post("/v1/completions", json={"model": LINE, "prompt": over, "stream": True})
        _error(resp, 400, "prompt_too_long")
        assert guarded.metrics() == {} and _calls(guarded) == 0

        resp = client.post("/v1/completions", json={"model": LINE, "prompt": at})
        assert resp.status_code == 200, resp.text
        assert resp.json()["usage"]["prompt_tokens"] == len(at)  # the fake counts characters

        # chat: the messages as rendered ("user: <text>\n" then "assistant: ")
        overhead = len("user: \nassistant: ")
        text = "c" * (limit - overhead)
        resp = client.post(
            "/v1/chat/completions",
            json={"model": LINE, "messages": [{"role": "user", "content": text}]},
        )
        assert resp.status_code == 200, resp.text
        assert _calls(guarded) == 2
        for stream in (False, True):
            resp = client.post(
                "/v1/chat/completions",
                json={
                    "model": LINE,
                    "messages": [{"role": "user", "content": text + "c"}],
                    "stream": stream,
                },
            )
            err = _error(resp, 400, "prompt_too_long")
            assert err["param"] == "messages" and f"{limit + 1} bytes" in err["message"]
    assert _calls(guarded) == 2
    assert guarded.metrics()[(LINE, 1)]["requests"] == 2.0


def test_the_prompt_limit_is_a_setting() -> None:
    srv = _serve(max_prompt_bytes=10)
    try:
        ok = httpx.post(f"{srv.url}/v1/completions", json={"model": LINE, "prompt": "0123456789"})
        assert ok.status_code == 200
        no = httpx.post(f"{srv.url}/v1/completions", json={"model": LINE, "prompt": "0123456789a"})
        assert _error(no, 400, "prompt_too_long")["message"].endswith("at most 10")
    finally:
        srv.stop()
    with pytest.raises(ValueError):
        ServingServer(port=0, max_prompt_bytes=0)


# API keys -----------------------------------------------------------------------------


def test_api_keys_guard_every_v1_route_but_not_health_or_metrics(keyed: ServingServer) -> None:
    completion = {"model": LINE, "prompt": "hello"}
    with httpx.Client(base_url=keyed.url, timeout=10.0) as client:
        for method, path, body in (
            ("GET", "/v1/models", None),
            ("POST", "/v1/completions", completion),
            ("POST", "/v1/chat/completions", {"model": LINE, "messages": []}),
            ("POST", "/v1/feedback", {"id": "x", "rating": 1.0}),
            ("GET", "/v1/nothing-here", None),
        ):
            missing = client.request(method, path, json=body)
            err = _error(missing, 401, "invalid_api_key")
            assert "didn't provide an API key" in err["message"]
            assert missing.headers["www-authenticate"] == "Bearer"
            for given in ("sk-wrong", "sk-first-ke", KEYS[0] + "x"):
                auth = {"Authorization": f"Bearer {given}"}
                wrong = client.request(method, path, json=body, headers=auth)
                err = _error(wrong, 401, "invalid_api_key")
                assert err["message"].startswith("Incorrect API key provided")
                assert err["param"] is None
                assert given not in wrong.text  # the key sent is never echoed
            for auth_value in ("Bearer", f"Basic {KEYS[0]}"):  # no Bearer token: none given
                auth = {"Authorization": auth_value}
                err = _error(
                    client.request(method, path, json=body, headers=auth), 401, "invalid_api_key"
                )
                assert "didn't provide an API key" in err["message"]
        assert keyed.metrics() == {} and _calls(keyed) == 0

        for key in KEYS:
            auth = {"Authorization": f"bearer  {key}"}  # the scheme is case-insensitive
            assert client.get("/v1/models", headers=auth).status_code == 200
            resp = client.post("/v1/completions", json=completion, headers=auth)
            assert resp.status_code == 200, resp.text
        assert keyed.metrics()[(LINE, 1)]["requests"] == 2.0
        assert client.get("/healthz").status_code == 200
        metrics = client.get("/metrics")
        assert metrics.status_code == 200 and "aifactory_requests_total" in metrics.text


def test_openai_client_with_a_key_streams_and_a_wrong_key_raises(keyed: ServingServer) -> None:
    good = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key=KEYS[1], max_retries=0)
    pieces = [
        chunk.choices[0].delta.content or ""
        for chunk in good.chat.completions.create(
            model=LINE, messages=[{"role": "user", "content": "hi"}], stream=True
        )
        if chunk.choices
    ]
    assert "".join(pieces).startswith("A:")
    text = good.completions.create(model=LINE, prompt="hello").choices[0].text
    assert text.startswith("A:")
    assert keyed.metrics()[(LINE, 1)]["streamed_requests"] == 1.0

    bad = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key="sk-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        bad.completions.create(model=LINE, prompt="hello")
    assert caught.value.code == "invalid_api_key" and "sk-nope" not in str(caught.value)
    assert keyed.metrics()[(LINE, 1)]["requests"] == 2.0


def test_blank_keys_are_refused() -> None:
    for keys in ([""], ["ok", " padded "], "one-string"):
        with pytest.raises((ValueError, TypeError)):
            ServingServer(port=0, api_keys=keys)  # type: ignore[arg-type]


def test_api_keys_come_from_the_variable_the_settings_name() -> None:
    from controller.runner import serving_api_keys

    assert serving_api_keys(None, {}) == []
    assert serving_api_keys("KEYS", {"KEYS": " k1 , k2,, "}) == ["k1", "k2"]
    for environ in ({}, {"KEYS": " , "}):  # named but empty: no silent open serving
        with pytest.raises(ValueError, match=r"\$KEYS, which holds no API key"):
            serving_api_keys("KEYS", environ)
