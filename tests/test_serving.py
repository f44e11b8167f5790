"""Tests for the embedded OpenAI-compatible server, over real loopback HTTP.

A tiny deterministic fake generator stands in for the real model so these tests check the
serving contract (status codes, payload shapes, streaming, swap safety, port lifecycle) quickly.
Most tests serve one line (:data:`LINE`); the last ones serve several side by side.
Streaming is tested both with the plain generator (the server chunks the finished text) and with
one offering the optional ``stream`` method.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from adapters.serving import Completion, LineEndpoint, ServedModel, ServingError, ServingServer


class FakeGenerator:
    """Answers ``<tag>:<reversed prompt>`` truncated to ``max_tokens`` characters."""

    def __init__(self, tag: str, delay_s: float = 0.002, fail: bool = False) -> None:
        self.name = tag
        self.tag = tag
        self.delay_s = delay_s
        self.fail = fail
        self.calls: list[tuple[str, int, float, int | None]] = []
        self._lock = threading.Lock()

    def generate(
        self, prompt: str, max_tokens: int, temperature: float = 1.0, seed: int | None = None
    ) -> Completion:
        with self._lock:
            self.calls.append((prompt, max_tokens, temperature, seed))
        time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("boom")
        body = prompt[::-1][:max_tokens]
        finish = "length" if len(prompt) > max_tokens else "stop"
        return Completion(
            text=f"{self.tag}:{body}",
            prompt_tokens=len(prompt),
            completion_tokens=len(body),
            finish_reason=finish,
        )


class StreamingFakeGenerator(FakeGenerator):
    """Same answers as :class:`FakeGenerator`, also offered piece by piece through ``stream``.

    With ``report_totals`` the stream ends with the :class:`Completion` (exact usage); without,
    the server has to count the streamed bytes itself. ``fail_after`` raises after that many
    pieces; ``closed`` is set when the stream is torn down (finished, failed or abandoned).
    """

    def __init__(
        self,
        tag: str,
        piece_delay_s: float = 0.0,
        report_totals: bool = True,
        fail_after: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(tag, **kwargs)
        self.piece_delay_s = piece_delay_s
        self.report_totals = report_totals
        self.fail_after = fail_after
        self.closed = threading.Event()

    def stream(
        self, prompt: str, max_tokens: int, temperature: float = 1.0, seed: int | None = None
    ) -> Iterator[str | Completion]:
        try:
            result = self.generate(prompt, max_tokens, temperature, seed)
            for i in range(0, len(result.text), 3):
                if self.fail_after is not None and i // 3 >= self.fail_after:
                    raise RuntimeError("mid-stream boom")
                time.sleep(self.piece_delay_s)
                yield result.text[i : i + 3]
            if self.report_totals:
                yield result
        finally:
            self.closed.set()


LINE = "aifactory-default"


def _model(
    tag: str, version: int, streaming: bool = False, line: str = LINE, **kwargs: Any
) -> ServedModel:
    cls = StreamingFakeGenerator if streaming else FakeGenerator
    return ServedModel(f"{line}:v{version}", version, cls(tag, **kwargs), line=line)


@pytest.fixture
def client(server: ServingServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10.0) as c:
        yield c


def _complete(client: httpx.Client, **body: Any) -> httpx.Response:
    payload: dict[str, Any] = {"model": "aifactory-default", "prompt": "hello"}
    payload.update(body)
    return client.post("/v1/completions", json=payload)


def _chat(client: httpx.Client, **body: Any) -> httpx.Response:
    payload: dict[str, Any] = {
        "model": "aifactory-default",
        "messages": [{"role": "user", "content": "hello"}],
    }
    payload.update(body)
    return client.post("/v1/chat/completions", json=payload)


def _sse_events(client: httpx.Client, path: str, body: dict[str, Any]) -> list[Any]:
    """POST a streaming request and return the decoded ``data:`` payloads, in order."""
    events: list[Any] = []
    with client.stream("POST", path, json=body) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if not line:
                continue
            assert line.startswith("data: "), line
            data = line.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def _openai(server: ServingServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


def _assert_openai_error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["message"] and err["type"] and err["code"]
    return err


def test_start_resolves_port_and_is_idempotent(server: ServingServer) -> None:
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}"
    server.start()  # second start is a no-op
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok", "lines": {}}


def test_503_and_empty_models_before_anything_is_served(
    server: ServingServer, client: httpx.Client
) -> None:
    err = _assert_openai_error(_complete(client), 404)  # no such line yet
    assert err["code"] == "model_not_found" and "nothing yet" in err["message"]
    server.line(LINE)  # known, nothing loaded: "come back later", not "wrong name"
    err = _assert_openai_error(_complete(client), 503)
    assert "no model" in err["message"].lower()
    assert client.get("/v1/models").json() == {"object": "list", "data": []}
    assert client.get("/healthz").json() == {"status": "ok", "lines": {LINE: {"model": None}}}


def test_models_and_healthz_follow_swaps(server: ServingServer, client: httpx.Client) -> None:
    first = _model("A", 3)
    assert server.line(LINE).swap(first) is None
    assert server.line(LINE).current is first
    listing = client.get("/v1/models").json()
    assert listing["object"] == "list"
    alias, pinned = listing["data"]  # the line's name first, then its served version
    assert (alias["id"], alias["line"], alias["version"]) == (LINE, LINE, 3)
    assert "challenger" not in alias
    assert (pinned["id"], pinned["line"], pinned["version"]) == ("aifactory-default:v3", LINE, 3)
    for entry in (alias, pinned):
        assert entry["object"] == "model"
        assert entry["owned_by"] == "aifactory"
        assert isinstance(entry["created"], int)
    health = client.get("/healthz").json()
    assert health == {"status": "ok", "lines": {LINE: {"model": "aifactory-default:v3"}}}

    assert server.line(LINE).swap(None) is first
    assert client.get("/healthz").json() == {"status": "ok", "lines": {LINE: {"model": None}}}
    assert client.get("/v1/models").json()["data"] == []


def test_completion_shape_usage_and_metrics(server: ServingServer, client: httpx.Client) -> None:
    served = _model("A", 1)
    server.line(LINE).swap(served)
    resp = _complete(client, prompt="abc", max_tokens=5, temperature=0.5, seed=7)
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert data["id"].startswith("cmpl-")
    assert data["object"] == "text_completion"
    assert data["model"] == "aifactory-default:v1"
    assert isinstance(data["created"], int)
    assert data["choices"] == [
        {"text": "A:cba", "index": 0, "logprobs": None, "finish_reason": "stop"}
    ]
    assert data["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    assert served.generator.calls[-1] == ("abc", 5, 0.5, 7)  # type: ignore[attr-defined]

    # Full model id and a one-element list prompt are accepted too.
    resp = _complete(client, model="aifactory-default:v1", prompt=["hello world"])
    assert resp.status_code == 200, resp.text
    # Default max_tokens 16 is capped at the server's limit of 8.
    assert served.generator.calls[-1][1] == 8  # type: ignore[attr-defined]
    assert resp.json()["choices"][0]["finish_reason"] == "length"

    stats = server.metrics()[(LINE, 1)]
    assert stats["requests"] == 2
    assert stats["failures"] == 0
    assert stats["prompt_tokens"] == 3 + 11
    assert stats["completion_tokens"] == 3 + 8
    assert stats["latency_s_sum"] > 0


def test_unknown_model_is_404(server: ServingServer, client: httpx.Client) -> None:
    server.line(LINE).swap(_model("A", 1))
    err = _assert_openai_error(_complete(client, model="gpt-4"), 404)
    assert err["code"] == "model_not_found"
    _assert_openai_error(_complete(client, model="aifactory-default:v2"), 404)


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "hi"},  # model missing
        {"model": "aifactory-default"},  # prompt missing
        {"model": "aifactory-default", "prompt": 42},
        {"model": "aifactory-default", "prompt": ["a", "b"]},
        {"model": "aifactory-default", "prompt": "hi", "max_tokens": 0},
        {"model": "aifactory-default", "prompt": "hi", "temperature": -1},
        {"model": "aifactory-default", "prompt": "hi", "n": 2},
        {"model": "aifactory-default", "prompt": "hi", "stream": "yes please"},
    ],
)
def test_bad_bodies_are_400(
    server: ServingServer, client: httpx.Client, body: dict[str, Any]
) -> None:
    server.line(LINE).swap(_model("A", 1))
    err = _assert_openai_error(client.post("/v1/completions", json=body), 400)
    assert err["type"] == "invalid_request_error"


def test_stream_request_errors_are_plain_json(server: ServingServer, client: httpx.Client) -> None:
    # Checks that run before the first byte answer like non-streamed requests do.
    _assert_openai_error(_complete(client, stream=True), 404)
    server.line(LINE)
    _assert_openai_error(_complete(client, stream=True), 503)
    _assert_openai_error(_chat(client, stream=True), 503)
    server.line(LINE).swap(_model("A", 1))
    _assert_openai_error(_complete(client, stream=True, model="gpt-4"), 404)
    _assert_openai_error(_chat(client, stream=True, messages=[]), 400)


def test_malformed_json_is_400(server: ServingServer, client: httpx.Client) -> None:
    server.line(LINE).swap(_model("A", 1))
    resp = client.post(
        "/v1/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    _assert_openai_error(resp, 400)


def test_generator_failure_is_500_and_counted(server: ServingServer, client: httpx.Client) -> None:
    server.line(LINE).swap(_model("A", 4, fail=True))
    err = _assert_openai_error(_complete(client), 500)
    assert err["type"] == "server_error"
    assert server.metrics()[(LINE, 4)]["failures"] == 1


@pytest.mark.parametrize("seed", [2**64, 2**63, -(2**63) - 1, 10**30, 1.5])
def test_a_seed_torch_cannot_take_is_400_and_no_failure(
    server: ServingServer, client: httpx.Client, seed: Any
) -> None:
    """A seed out of 64 bits would make torch raise mid-generation: a 500 counted against
    the model, so any client could fail a canary. It is refused before any model runs."""
    served = _model("A", 1)
    server.line(LINE).swap(served)
    for resp in (_complete(client, seed=seed), _chat(client, seed=seed)):
        err = _assert_openai_error(resp, 400)
        assert err["type"] == "invalid_request_error" and "seed" in err["message"]
    assert served.generator.calls == []  # type: ignore[attr-defined]
    assert server.metrics() == {}
    assert server.line(LINE).take_window().failures == {}
    for edge in (2**63 - 1, -(2**63), 0):
        assert _complete(client, seed=edge).status_code == 200
    assert served.generator.calls[-1][3] == 0  # type: ignore[attr-defined]


def test_a_prompt_longer_than_the_context_says_so_in_a_header(
    server: ServingServer, client: httpx.Client
) -> None:
    """A sliding-window model reads the last ``context`` bytes of a prompt: a longer prompt
    is answered, with a header saying how much of it the model read; usage counts it all."""
    served = _model("A", 1, streaming=True)
    served.generator.context = 4  # type: ignore[attr-defined]
    server.line(LINE).swap(served)
    header = "X-Aifactory-Prompt-Window"
    short = _complete(client, prompt="abcd")
    assert short.status_code == 200 and header not in short.headers
    long = _complete(client, prompt="abcdéf")
    assert long.headers[header] == "4 of 7 bytes"
    assert long.json()["usage"]["prompt_tokens"] == 6  # the fake counts characters
    chat = _chat(client)  # "user: hello\nassistant: "
    assert chat.headers[header] == "4 of 23 bytes"
    body = {"model": LINE, "prompt": "abcdef", "stream": True}
    with client.stream("POST", "/v1/completions", json=body) as resp:
        assert resp.headers[header] == "4 of 6 bytes"
        resp.read()
    served.generator.context = True  # type: ignore[attr-defined]  # not a size: no header
    assert header not in _complete(client, prompt="abcdef").headers


def test_official_openai_client(server: ServingServer) -> None:
    server.line(LINE).swap(_model("A", 2))
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    try:
        models = client.models.list()
        assert [m.id for m in models.data] == ["aifactory-default", "aifactory-default:v2"]
        result = client.completions.create(model="aifactory-default", prompt="hey", max_tokens=4)
        assert result.choices[0].text == "A:yeh"
        assert result.model == "aifactory-default:v2"
        assert result.usage is not None and result.usage.total_tokens == 6
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="other", prompt="hey")
        with pytest.raises(openai.BadRequestError):
            client.completions.create(model="aifactory-default", prompt="hey", n=3)
    finally:
        client.close()


def test_chat_completion_with_openai_client(server: ServingServer) -> None:
    served = _model("A", 2)
    server.line(LINE).swap(served)
    client = _openai(server)
    try:
        result = client.chat.completions.create(
            model="aifactory-default",
            messages=[
                {"role": "system", "content": "be"},
                {"role": "user", "content": "hi"},
            ],
            max_tokens=6,
            temperature=0.3,
            seed=11,
        )
    finally:
        client.close()
    prompt = "system: be\nuser: hi\nassistant: "
    assert served.generator.calls[-1] == (prompt, 6, 0.3, 11)  # type: ignore[attr-defined]
    assert result.object == "chat.completion"
    assert result.id.startswith("chatcmpl-")
    assert result.model == "aifactory-default:v2"
    [choice] = result.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == "A:" + prompt[::-1][:6]
    assert choice.finish_reason == "length"
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (len(prompt), 6)
    assert result.usage.total_tokens == len(prompt) + 6
    stats = server.metrics()[(LINE, 2)]
    assert (stats["requests"], stats["streamed_requests"], stats["failures"]) == (1, 0, 0)


def test_chat_prompt_template_and_token_limits(server: ServingServer, client: httpx.Client) -> None:
    served = _model("A", 1)
    server.line(LINE).swap(served)
    calls = served.generator.calls  # type: ignore[attr-defined]
    messages = [
        {"role": "developer", "content": "dev"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None},
        {"role": "user", "content": "c", "name": "bob"},
    ]
    resp = _chat(client, messages=messages)
    assert resp.status_code == 200, resp.text
    # Default reply budget for chat is the server's whole limit (8 in these tests).
    assert calls[-1][:2] == ("system: dev\nuser: a\nb\nassistant: \nuser: c\nassistant: ", 8)
    _chat(client, max_tokens=3)
    assert calls[-1][1] == 3
    _chat(client, max_tokens=3, max_completion_tokens=5)  # the newer name wins
    assert calls[-1][1] == 5
    _chat(client, max_completion_tokens=100)  # capped
    assert calls[-1][1] == 8


def test_chat_errors(server: ServingServer, client: httpx.Client) -> None:
    server.line(LINE)
    err = _assert_openai_error(_chat(client), 503)
    assert err["code"] == "model_not_loaded"
    server.line(LINE).swap(_model("A", 1))
    err = _assert_openai_error(_chat(client, model="gpt-4o"), 404)
    assert err["code"] == "model_not_found"
    _assert_openai_error(_chat(client, model="aifactory-default:v9"), 404)
    assert _chat(client, model="aifactory-default:v1").status_code == 200

    client_ = _openai(server)
    try:
        with pytest.raises(openai.NotFoundError):
            client_.chat.completions.create(
                model="nope", messages=[{"role": "user", "content": "x"}]
            )
        with pytest.raises(openai.BadRequestError):
            client_.chat.completions.create(model="aifactory-default", messages=[])
    finally:
        client_.close()


_BAD_CHAT_BODIES: list[tuple[dict[str, Any], str]] = [
    ({"messages": []}, "messages"),
    ({"messages": "hello"}, "messages"),
    ({"messages": [{"content": "hi"}]}, "role"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "role"),
    ({"messages": [{"role": "user", "content": 42}]}, "content"),
    ({"messages": [{"role": "user"}]}, "content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "text"),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "text"),
    ({"model": None}, "model"),
    ({"n": 2}, "n=1"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"temperature": 3}, "temperature"),
]


def test_chat_bad_bodies_are_400(server: ServingServer, client: httpx.Client) -> None:
    # One server for all cases: each server stop costs uvicorn ~0.2 s.
    server.line(LINE).swap(_model("A", 1))
    for body, hint in _BAD_CHAT_BODIES:
        err = _assert_openai_error(_chat(client, **body), 400)
        assert err["type"] == "invalid_request_error", body
        assert hint in err["message"], (body, err["message"])
    assert server.metrics() == {}  # rejected requests never reach the generator


@pytest.mark.parametrize("streaming", [False, True], ids=["chunked-text", "native-stream"])
def test_streaming_with_openai_client_matches_non_streamed(streaming: bool) -> None:
    srv = ServingServer(port=0, max_tokens_limit=64)  # long answers, so several pieces
    srv.start()
    srv.line(LINE).swap(_model("A", 1, streaming=streaming))
    oai = _openai(srv)
    prompt = "the quick brown fox jumps over the lazy dog"
    messages = [{"role": "user", "content": prompt}]
    try:
        plain = oai.completions.create(model="aifactory-default", prompt=prompt, max_tokens=40)
        chunks = list(
            oai.completions.create(
                model="aifactory-default",
                prompt=prompt,
                max_tokens=40,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        text_chunks = [c for c in chunks if c.choices]
        assert len(text_chunks) > 2
        assert all(c.object == "text_completion" for c in chunks)
        assert "".join(c.choices[0].text for c in text_chunks) == plain.choices[0].text
        assert text_chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason
        assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage

        chat = oai.chat.completions.create(model="aifactory-default", messages=messages)
        stream = oai.chat.completions.create(
            model="aifactory-default",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
        )
        chat_chunks = list(stream)
        deltas = [c.choices[0].delta for c in chat_chunks if c.choices]
        assert deltas[0].role == "assistant"
        assert "".join(d.content or "" for d in deltas) == chat.choices[0].message.content
        finishes = [c.choices[0].finish_reason for c in chat_chunks if c.choices]
        assert finishes[-1] == chat.choices[0].finish_reason
        assert set(finishes[:-1]) == {None}
        assert chat_chunks[-1].usage == chat.usage
        assert all(c.model == "aifactory-default:v1" for c in chat_chunks)

        # Without include_usage no usage chunk is sent.
        bare = list(
            oai.chat.completions.create(model="aifactory-default", messages=messages, stream=True)
        )
        assert all(c.usage is None and c.choices for c in bare)
    finally:
        oai.close()
        srv.stop()
    stats = srv.metrics()[(LINE, 1)]
    assert (stats["requests"], stats["streamed_requests"], stats["failures"]) == (5, 3, 0)
    chat_prompt = f"user: {prompt}\nassistant: "  # the fake answers with all of it reversed
    assert stats["completion_tokens"] == 2 * 40 + 3 * len(chat_prompt)


def test_stream_wire_format(server: ServingServer, client: httpx.Client) -> None:
    server.line(LINE).swap(_model("A", 1))
    body = {"model": "aifactory-default", "prompt": "abc", "stream": True}
    events = _sse_events(client, "/v1/completions", body)
    assert events[-1] == "[DONE]"
    first, last = events[0], events[-2]
    assert first["object"] == "text_completion" and first["id"].startswith("cmpl-")
    assert first["choices"][0]["text"] == "A:cba"
    assert last["choices"][0] == {"text": "", "index": 0, "logprobs": None, "finish_reason": "stop"}
    assert "usage" not in first
    assert len({e["id"] for e in events[:-1]}) == 1

    body = {
        "model": "aifactory-default",
        "messages": [{"role": "user", "content": "x"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = _sse_events(client, "/v1/chat/completions", body)
    assert events[-1] == "[DONE]"
    role, *pieces, finish, usage = events[:-1]
    assert role["object"] == "chat.completion.chunk" and role["id"].startswith("chatcmpl-")
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert role["usage"] is None
    # Prompt "user: x\nassistant: " (19 bytes); chat's default budget is the limit, 8.
    assert "".join(p["choices"][0]["delta"]["content"] for p in pieces) == "A: :tnatsi"
    assert finish["choices"][0]["delta"] == {}
    assert finish["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 19, "completion_tokens": 8, "total_tokens": 27}


def test_native_stream_without_totals_counts_bytes(
    server: ServingServer, client: httpx.Client
) -> None:
    server.line(LINE).swap(_model("A", 1, streaming=True, report_totals=False))
    body = {
        "model": "aifactory-default",
        "prompt": "héllo wörld",
        "max_tokens": 4,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = _sse_events(client, "/v1/completions", body)
    text = "".join(e["choices"][0]["text"] for e in events[:-2])
    assert text == "A:dlrö"  # the fake's "A:" tag comes on top of max_tokens
    assert events[-3]["choices"][0]["finish_reason"] == "length"  # 7 bytes >= max_tokens
    usage = {"prompt_tokens": 13, "completion_tokens": 7, "total_tokens": 20}  # UTF-8 bytes
    assert events[-2]["usage"] == usage
    assert server.metrics()[(LINE, 1)]["prompt_tokens"] == 13


def test_stream_failures_are_reported_and_counted(server: ServingServer) -> None:
    oai = _openai(server)
    try:
        # Failing before the first piece: an ordinary 500.
        server.line(LINE).swap(_model("A", 1, fail=True))
        with pytest.raises(openai.InternalServerError):
            list(oai.completions.create(model="aifactory-default", prompt="hi", stream=True))
        # Failing mid-stream: an SSE error event, which the client raises.
        server.line(LINE).swap(_model("B", 2, streaming=True, fail_after=1))
        stream = oai.chat.completions.create(
            model="aifactory-default", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        with pytest.raises(openai.APIError, match="Generation failed"):
            list(stream)
    finally:
        oai.close()
    # the server finishes its side of a stream (count, close) just after the client has
    # read the last event: give it a moment rather than race it
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and not (
        server.metrics().get((LINE, 2), {}).get("failures") == 1
        and server.line(LINE).current is not None
        and server.line(LINE).current.generator.closed.is_set()  # type: ignore[attr-defined]
    ):
        time.sleep(0.02)
    metrics = server.metrics()
    for version in (1, 2):
        assert metrics[(LINE, version)]["requests"] == 1
        assert metrics[(LINE, version)]["failures"] == 1
        assert metrics[(LINE, version)]["streamed_requests"] == 1
    assert server.line(LINE).current is not None
    assert server.line(LINE).current.generator.closed.is_set()  # type: ignore[attr-defined]


def test_abandoned_stream_is_counted_and_stopped() -> None:
    served = _model("A", 1, streaming=True, piece_delay_s=0.05)
    srv = ServingServer(port=0, max_tokens_limit=400)
    srv.start()
    srv.line(LINE).swap(served)
    body = {"model": "aifactory-default", "prompt": "x" * 300, "max_tokens": 300, "stream": True}
    try:
        with (
            httpx.Client(base_url=srv.url, timeout=10.0) as c,
            c.stream("POST", "/v1/completions", json=body) as resp,
        ):
            assert next(resp.iter_lines()).startswith("data: ")
        deadline = time.monotonic() + 5.0
        while (LINE, 1) not in srv.metrics() and time.monotonic() < deadline:
            gc.collect()
            time.sleep(0.05)
        stats = srv.metrics()[(LINE, 1)]
        assert stats["requests"] == 1 and stats["failures"] == 0
        assert 0 < stats["completion_tokens"] < 300  # counted what was really generated
        assert served.generator.closed.wait(2.0)  # type: ignore[attr-defined]
    finally:
        srv.stop()


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydantic noise from LiteLLM's own models
def test_litellm_against_the_server(server: ServingServer) -> None:
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # no network fetch at import
    litellm = pytest.importorskip("litellm")
    server.line(LINE).swap(_model("A", 3))
    api = {"api_base": server.url + "/v1", "api_key": "x"}
    messages = [{"role": "user", "content": "hey"}]

    chat = litellm.completion(model="openai/aifactory-default:v3", messages=messages, **api)
    prompt = "user: hey\nassistant: "
    assert chat.choices[0].message.content == "A:" + prompt[::-1][:8]
    assert chat.usage.prompt_tokens == len(prompt)
    assert chat.usage.completion_tokens == 8
    assert chat.usage.total_tokens == len(prompt) + 8

    stream = litellm.completion(
        model="openai/aifactory-default:v3", messages=messages, stream=True, **api
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == chat.choices[0].message.content

    text = litellm.text_completion(
        model="text-completion-openai/aifactory-default:v3", prompt="hello", **api
    )
    assert text.choices[0].text == "A:olleh"
    assert text.usage.prompt_tokens == 5 and text.usage.completion_tokens == 5
    assert server.metrics()[(LINE, 3)]["requests"] == 3


def test_swap_during_streaming_load_never_fails(server: ServingServer) -> None:
    models = [_model("A", 1, delay_s=0.003), _model("B", 2, streaming=True, piece_delay_s=0.001)]
    server.line(LINE).swap(models[0])
    per_thread, threads = 8, 6
    expected = {"aifactory-default:v1": "A:", "aifactory-default:v2": "B:"}

    def worker(idx: int) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        with httpx.Client(base_url=server.url, timeout=10.0) as c:
            for j in range(per_thread):
                chat = (idx + j) % 2 == 0
                body: dict[str, Any] = {"model": "aifactory-default", "stream": True}
                if chat:
                    body["messages"] = [{"role": "user", "content": f"p{idx}-{j}"}]
                else:
                    body["prompt"] = f"p{idx}-{j}"
                path = "/v1/chat/completions" if chat else "/v1/completions"
                events = _sse_events(c, path, body)
                assert events[-1] == "[DONE]"
                chunks = events[:-1]
                assert len({e["model"] for e in chunks}) == 1  # one model for the whole stream
                key = "delta" if chat else "text"
                parts = [e["choices"][0][key] for e in chunks if e["choices"]]
                text = "".join(p.get("content", "") if chat else p for p in parts)
                out.append((chunks[0]["model"], text))
        return out

    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(worker, i) for i in range(threads)]
        swaps = 0
        while swaps < 20 or not all(f.done() for f in futures):
            server.line(LINE).swap(models[(swaps + 1) % 2])
            swaps += 1
            time.sleep(0.005)
        results = [r for f in futures for r in f.result()]  # re-raises any worker failure

    assert len(results) == per_thread * threads
    for model_id, text in results:
        assert text.startswith(expected[model_id]), (model_id, text)
    assert {model_id for model_id, _ in results} == set(expected)
    metrics = server.metrics()
    assert sum(m["requests"] for m in metrics.values()) == len(results)
    assert sum(m["streamed_requests"] for m in metrics.values()) == len(results)
    assert sum(m["failures"] for m in metrics.values()) == 0


def test_swap_under_load_never_fails_a_request(server: ServingServer) -> None:
    models = [_model("A", 1, delay_s=0.005), _model("B", 2, delay_s=0.005)]
    server.line(LINE).swap(models[0])
    per_thread, threads = 25, 8

    def worker(idx: int) -> list[tuple[int, str, str]]:
        out: list[tuple[int, str, str]] = []
        with httpx.Client(base_url=server.url, timeout=10.0) as c:
            for j in range(per_thread):
                resp = _complete(c, prompt=f"p{idx}-{j}", max_tokens=8)
                body = resp.json()
                text = body["choices"][0]["text"] if resp.status_code == 200 else ""
                out.append((resp.status_code, body.get("model", ""), text))
        return out

    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(worker, i) for i in range(threads)]
        swaps = 0
        while swaps < 20 or not all(f.done() for f in futures):
            server.line(LINE).swap(models[(swaps + 1) % 2])
            swaps += 1
            time.sleep(0.01)
        results = [r for f in futures for r in f.result()]

    assert len(results) == per_thread * threads
    assert all(status == 200 for status, _, _ in results), results
    expected = {"aifactory-default:v1": "A:", "aifactory-default:v2": "B:"}
    for _, model_id, text in results:
        # The answer and the reported model agree: each request stayed on one model.
        assert text.startswith(expected[model_id])
    assert {model_id for _, model_id, _ in results} == set(expected)  # swaps really interleaved
    metrics = server.metrics()
    assert sum(m["requests"] for m in metrics.values()) == len(results)
    assert sum(m["failures"] for m in metrics.values()) == 0


def test_stop_frees_port_and_taken_port_raises() -> None:
    first = ServingServer(port=0)
    first.start()
    port = first.port
    with httpx.Client(base_url=first.url) as c:  # leave a keep-alive connection behind
        assert c.get("/healthz").status_code == 200
        with pytest.raises(ServingError, match="in use"):
            ServingServer(port=port).start()
        assert first.stop() is None  # clean
        assert first.stop() is None  # idempotent
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz")

    second = ServingServer(port=port)
    second.start()
    try:
        assert second.port == port
        assert httpx.get(second.url + "/healthz").status_code == 200
    finally:
        second.stop()


def test_foreign_listener_on_port_raises() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]
        with pytest.raises(ServingError, match=f"127.0.0.1:{port}"):
            ServingServer(port=port).start()


# production lines ------------------------------------------------------------------------


def _ask(client: httpx.Client, model: str, **body: Any) -> tuple[int, str, str]:
    """(status, answering model id, text) of one completion naming ``model``."""
    resp = _complete(client, model=model, **body)
    if resp.status_code != 200:
        return resp.status_code, "", ""
    data = resp.json()
    return 200, data["model"], data["choices"][0]["text"]


def test_line_handles_and_names(server: ServingServer) -> None:
    a = server.line("a")
    assert isinstance(a, LineEndpoint) and a.name == "a"
    assert server.line("a") is a  # same handle on later calls
    server.line("b")
    assert server.lines() == ["a", "b"]
    for bad in ("", "a:v1", "has space", "x" * 65):
        with pytest.raises(ValueError):
            server.line(bad)
    gen = FakeGenerator("A")
    assert ServedModel("a:v1", 1, gen).line == "a"  # the line follows from the id
    assert _model("A", 7, line="a").model_id == "a:v7"
    for model_id, version, line in [
        ("a:v2", 1, ""),
        ("a:v1", 1, "b"),
        ("a b:v1", 1, ""),
        ("v1", 1, ""),
    ]:
        with pytest.raises(ValueError):
            ServedModel(model_id, version, gen, line=line)
    with pytest.raises(ValueError, match="belongs to line 'b'"):
        a.swap(_model("B", 1, line="b"))
    with pytest.raises(ValueError, match="belongs to line 'b'"):
        a.route(_model("A", 1, line="a"), _model("B", 2, line="b"), 10.0)
    assert a.current is None and a.challenger is None


def test_two_lines_at_v1_are_served_side_by_side(
    server: ServingServer, client: httpx.Client
) -> None:
    a, b = _model("A", 1, line="a"), _model("B", 1, line="b")
    server.line("a").swap(a)
    server.line("b").swap(b)
    assert _ask(client, "a", prompt="xyz") == (200, "a:v1", "A:zyx")
    assert _ask(client, "b", prompt="xyz") == (200, "b:v1", "B:zyx")
    assert _ask(client, "a:v1", prompt="xyz") == (200, "a:v1", "A:zyx")
    assert _ask(client, "b:v1", prompt="xyz") == (200, "b:v1", "B:zyx")
    chat = _chat(client, model="b").json()
    assert chat["model"] == "b:v1" and chat["choices"][0]["message"]["content"].startswith("B:")
    calls_a, calls_b = a.generator.calls, b.generator.calls  # type: ignore[attr-defined]
    assert (len(calls_a), len(calls_b)) == (2, 3)
    metrics = server.metrics()
    assert set(metrics) == {("a", 1), ("b", 1)}
    assert (metrics[("a", 1)]["requests"], metrics[("b", 1)]["requests"]) == (2, 3)
    assert server.line("a").take_window().requests == {1: 2}
    assert server.line("b").take_window().requests == {1: 3}


def test_swap_and_canary_on_one_line_leave_the_other_untouched(
    server: ServingServer, client: httpx.Client
) -> None:
    line_a, line_b = server.line("a"), server.line("b")
    b1 = _model("B", 1, line="b")
    line_a.swap(_model("A", 1, line="a"))
    line_b.swap(b1)
    line_a.route(_model("A", 1, line="a"), _model("A2", 2, line="a"), 50.0, sample_rate=1.0)
    assert line_b.current is b1 and line_b.challenger is None
    line_a.take_window(), line_b.take_window()
    answers_a = [_ask(client, "a", prompt=f"prompt {i}") for i in range(40)]
    answers_b = [_ask(client, "b", prompt=f"prompt {i}") for i in range(10)]
    assert {m for _, m, _ in answers_a} == {"a:v1", "a:v2"}
    assert {m for _, m, _ in answers_b} == {"b:v1"}
    window_a, window_b = line_a.take_window(), line_b.take_window()
    assert sum(window_a.requests.values()) == 40 and set(window_a.requests) == {1, 2}
    assert window_b.requests == {1: 10} and window_b.prompts == []  # b samples nothing
    assert len(window_a.prompts) == 40

    stop = threading.Event()
    models_a = [_model("A", 1, line="a"), _model("A3", 3, line="a")]

    def swapping() -> None:
        i = 0
        while not stop.is_set():
            line_a.swap(models_a[i % 2])
            i += 1

    swapper = threading.Thread(target=swapping)
    swapper.start()
    try:
        during = [_ask(client, "b") for _ in range(20)]
    finally:
        stop.set()
        swapper.join()
    assert {(status, m, t[:2]) for status, m, t in during} == {(200, "b:v1", "B:")}
    assert line_b.current is b1 and line_b.challenger is None and line_a.challenger is None
    assert line_b.take_window().requests == {1: 20}


def test_pinned_versions_per_line(server: ServingServer, client: httpx.Client) -> None:
    line_a = server.line("a")
    a1, a2 = _model("A", 1, line="a"), _model("A2", 2, line="a")
    line_a.route(a1, a2, 0.0)
    server.line("b").swap(_model("B", 1, line="b"))
    assert line_a.challenger is not None and line_a.challenger[1] == 0.0
    assert {_ask(client, "a")[1] for _ in range(10)} == {"a:v1"}  # 0 %: only when pinned
    assert _ask(client, "a:v2", prompt="pq") == (200, "a:v2", "A2:qp")
    assert _ask(client, "b:v1")[:2] == (200, "b:v1")
    for missing in ("b:v2", "a:v3", "a:2", "a:", "a:v1:x"):
        err = _assert_openai_error(_complete(client, model=missing), 404)
        assert err["code"] == "model_not_found", missing
        assert "'a', 'a:v1', 'a:v2', 'b', 'b:v1'" in err["message"]
    line_a.route(a1, a2, 50.0)
    for user in ("alice", "bob", "carol"):  # a stable draw per user within a line
        assert len({_ask(client, "a", user=user)[1] for _ in range(6)}) == 1


def test_unknown_line_is_404_json(server: ServingServer, client: httpx.Client) -> None:
    server.line("a").swap(_model("A", 1, line="a"))
    for model in ("c", "", "c:v1", "A"):
        err = _assert_openai_error(_complete(client, model=model), 404)
        assert err["type"] == "invalid_request_error" and err["code"] == "model_not_found"
        assert "this server serves 'a', 'a:v1'" in err["message"]
    _assert_openai_error(_chat(client, model="c", stream=True), 404)
    huge = _assert_openai_error(_complete(client, model="z" * 100_000), 404)
    assert len(huge["message"]) < 1000  # the client's name is not echoed whole
    assert server.lines() == ["a"]  # asking never creates a line


def test_remove_line(server: ServingServer, client: httpx.Client) -> None:
    slow = _model("A", 1, line="a", delay_s=0.5)
    handle = server.line("a")
    handle.swap(slow)
    server.line("b").swap(_model("B", 1, line="b"))
    calls = slow.generator.calls  # type: ignore[attr-defined]

    def ask_a() -> tuple[int, str, str]:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            return _ask(c, "a")

    with ThreadPoolExecutor(max_workers=1) as pool:
        in_flight = pool.submit(ask_a)
        deadline = time.monotonic() + 5
        while not calls and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.remove_line("a") is True
        assert in_flight.result()[:2] == (200, "a:v1")  # finished on what it started with
    assert server.remove_line("a") is False
    assert server.lines() == ["b"]
    for model in ("a", "a:v1"):
        _assert_openai_error(_complete(client, model=model), 404)
    assert _ask(client, "b")[:2] == (200, "b:v1")
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["b", "b:v1"]
    assert set(client.get("/healthz").json()["lines"]) == {"b"}
    assert server.metrics()[("a", 1)]["requests"] == 1  # counters outlive the line
    assert handle.current is None  # the old handle is detached
    with pytest.raises(ServingError, match="removed"):
        handle.swap(slow)
    fresh = server.line("a")
    assert fresh is not handle and fresh.current is None
    _assert_openai_error(_complete(client, model="a"), 503)


def _serve_three(server: ServingServer) -> None:
    """Lines a (v1), b (v4 with canary v5 at 20 %) and c (v1)."""
    server.line("a").swap(_model("A", 1, line="a"))
    server.line("b").route(_model("B", 4, line="b"), _model("B5", 5, line="b"), 20.0)
    server.line("c").swap(_model("C", 1, line="c"))
    server.line("d")  # known, nothing loaded: not listed


def test_models_and_healthz_per_line(server: ServingServer, client: httpx.Client) -> None:
    _serve_three(server)
    data = client.get("/v1/models").json()["data"]
    assert [m["id"] for m in data] == ["a", "a:v1", "b", "b:v4", "b:v5", "c", "c:v1"]
    aliases = {m["id"]: m for m in data if ":" not in m["id"]}
    assert set(aliases) == {"a", "b", "c"}
    assert aliases["b"]["version"] == 4 and aliases["b"]["challenger"] == "b:v5"
    assert "challenger" not in aliases["a"] and aliases["c"]["version"] == 1
    oai = _openai(server)
    try:  # every listed id is usable as ``model``
        for entry in oai.models.list().data:
            answer = oai.completions.create(model=entry.id, prompt="hi", max_tokens=2)
            assert answer.model.split(":")[0] == entry.id.split(":")[0]
            if ":" in entry.id:
                assert answer.model == entry.id
    finally:
        oai.close()
    assert client.get("/healthz").json() == {
        "status": "ok",
        "lines": {
            "a": {"model": "a:v1"},
            "b": {"model": "b:v4", "canary": {"model": "b:v5", "weight_pct": 20.0}},
            "c": {"model": "c:v1"},
            "d": {"model": None},
        },
    }


def test_prometheus_metrics_per_line(server: ServingServer, client: httpx.Client) -> None:
    _serve_three(server)
    for model in ("a", "a", "b:v4", "b:v5", "c:v1"):
        assert _ask(client, model)[0] == 200
    text = client.get("/metrics").text
    assert 'aifactory_requests_total{line="a",version="v1"} 2.0' in text
    assert 'aifactory_requests_total{line="c",version="v1"} 1.0' in text
    assert 'aifactory_requests_total{line="b",version="v5"} 1.0' in text
    assert 'aifactory_request_failures_total{line="b",version="v4"} 0.0' in text
    assert 'aifactory_tokens_total{kind="prompt",line="a",version="v1"} 10.0' in text
    assert 'aifactory_request_latency_seconds_count{line="c",version="v1"} 1.0' in text
    assert 'aifactory_traffic_share{line="a",role="champion",version="v1"} 1.0' in text
    assert 'aifactory_traffic_share{line="b",role="champion",version="v4"} 0.8' in text
    assert 'aifactory_traffic_share{line="b",role="challenger",version="v5"} 0.2' in text
    assert 'line="d"' not in text


def test_max_tokens_limit_per_line(server: ServingServer, client: httpx.Client) -> None:
    a, b = _model("A", 1, line="a"), _model("B", 1, line="b")
    server.line("a").swap(a)
    server.line("b").swap(b)
    calls_a, calls_b = a.generator.calls, b.generator.calls  # type: ignore[attr-defined]
    server.line("a").max_tokens_limit = 3
    assert server.line("a").max_tokens_limit == 3 and server.line("b").max_tokens_limit == 8
    _complete(client, model="a", max_tokens=100)
    _complete(client, model="b", max_tokens=100)
    assert (calls_a[-1][1], calls_b[-1][1]) == (3, 8)
    server.max_tokens_limit = 5  # lines without their own follow the server
    server.line("a").max_tokens_limit = None
    _chat(client, model="a")
    _chat(client, model="b")
    assert (calls_a[-1][1], calls_b[-1][1]) == (5, 5)
    with pytest.raises(ValueError):
        server.line("a").max_tokens_limit = 0


class _BrokenSocket:
    def close(self) -> None:
        raise OSError(9, "Bad file descriptor")


class _StuckThread:
    def join(self, timeout: float | None = None) -> None:
        return None

    def is_alive(self) -> bool:
        return True


def test_stop_never_raises_and_reports_why() -> None:
    srv = ServingServer(port=0)
    srv.start()
    real_sock, real_thread = srv.http._sock, srv.http._thread
    assert real_sock is not None and real_thread is not None
    srv.http._sock, srv.http._thread = _BrokenSocket(), _StuckThread()  # type: ignore[assignment]
    try:
        problem = srv.stop(timeout_s=0.1)
        assert problem is not None
        assert "did not stop" in problem and "Bad file descriptor" in problem
        assert srv.stop() is None  # nothing left to stop
    finally:
        real_thread.join(10)  # the real uvicorn thread was told to exit
        real_sock.close()
    assert not real_thread.is_alive()

    srv.start()  # a failed stop leaves a server that starts again
    real_server, real_thread, real_sock = srv.http._server, srv.http._thread, srv.http._sock
    assert real_server is not None and real_thread is not None and real_sock is not None
    srv.http._server = object()  # type: ignore[assignment]  # shutdown itself blows up
    srv.http._sock = _BrokenSocket()  # type: ignore[assignment]
    try:
        problem = srv.stop(timeout_s=0.1)
        assert problem is not None and "shutdown failed: AttributeError" in problem
    finally:
        real_server.should_exit = True
        real_thread.join(10)
        real_sock.close()
    assert not real_thread.is_alive()
