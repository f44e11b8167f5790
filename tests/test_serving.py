"""Tests for the embedded OpenAI-compatible server, over real loopback HTTP.

A tiny deterministic fake generator stands in for the real model so these tests check the
serving contract (status codes, payload shapes, streaming, swap safety, port lifecycle) quickly.
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

from adapters.serving import Completion, ServedModel, ServingError, ServingServer


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


def _model(tag: str, version: int, streaming: bool = False, **kwargs: Any) -> ServedModel:
    cls = StreamingFakeGenerator if streaming else FakeGenerator
    return ServedModel(f"aifactory-default:v{version}", version, cls(tag, **kwargs))


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
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok", "model": None}


def test_503_and_empty_models_before_anything_is_served(client: httpx.Client) -> None:
    err = _assert_openai_error(_complete(client), 503)
    assert "no model" in err["message"].lower()
    assert client.get("/v1/models").json() == {"object": "list", "data": []}


def test_models_and_healthz_follow_swaps(server: ServingServer, client: httpx.Client) -> None:
    first = _model("A", 3)
    assert server.swap(first) is None
    assert server.current is first
    listing = client.get("/v1/models").json()
    assert listing["object"] == "list"
    [entry] = listing["data"]
    assert entry["id"] == "aifactory-default:v3"
    assert entry["object"] == "model"
    assert entry["owned_by"] == "aifactory"
    assert isinstance(entry["created"], int)
    assert client.get("/healthz").json() == {"status": "ok", "model": "aifactory-default:v3"}

    assert server.swap(None) is first
    assert client.get("/healthz").json() == {"status": "ok", "model": None}
    assert client.get("/v1/models").json()["data"] == []


def test_completion_shape_usage_and_metrics(server: ServingServer, client: httpx.Client) -> None:
    served = _model("A", 1)
    server.swap(served)
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

    stats = server.metrics()[1]
    assert stats["requests"] == 2
    assert stats["failures"] == 0
    assert stats["prompt_tokens"] == 3 + 11
    assert stats["completion_tokens"] == 3 + 8
    assert stats["latency_s_sum"] > 0


def test_unknown_model_is_404(server: ServingServer, client: httpx.Client) -> None:
    server.swap(_model("A", 1))
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
    server.swap(_model("A", 1))
    err = _assert_openai_error(client.post("/v1/completions", json=body), 400)
    assert err["type"] == "invalid_request_error"


def test_stream_request_errors_are_plain_json(server: ServingServer, client: httpx.Client) -> None:
    # Checks that run before the first byte answer like non-streamed requests do.
    _assert_openai_error(_complete(client, stream=True), 503)
    _assert_openai_error(_chat(client, stream=True), 503)
    server.swap(_model("A", 1))
    _assert_openai_error(_complete(client, stream=True, model="gpt-4"), 404)
    _assert_openai_error(_chat(client, stream=True, messages=[]), 400)


def test_malformed_json_is_400(server: ServingServer, client: httpx.Client) -> None:
    server.swap(_model("A", 1))
    resp = client.post(
        "/v1/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    _assert_openai_error(resp, 400)


def test_generator_failure_is_500_and_counted(server: ServingServer, client: httpx.Client) -> None:
    server.swap(_model("A", 4, fail=True))
    err = _assert_openai_error(_complete(client), 500)
    assert err["type"] == "server_error"
    assert server.metrics()[4]["failures"] == 1


def test_official_openai_client(server: ServingServer) -> None:
    server.swap(_model("A", 2))
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    try:
        models = client.models.list()
        assert [m.id for m in models.data] == ["aifactory-default:v2"]
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
    server.swap(served)
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
    stats = server.metrics()[2]
    assert (stats["requests"], stats["streamed_requests"], stats["failures"]) == (1, 0, 0)


def test_chat_prompt_template_and_token_limits(server: ServingServer, client: httpx.Client) -> None:
    served = _model("A", 1)
    server.swap(served)
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
    err = _assert_openai_error(_chat(client), 503)
    assert err["code"] == "model_not_loaded"
    server.swap(_model("A", 1))
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
    server.swap(_model("A", 1))
    for body, hint in _BAD_CHAT_BODIES:
        err = _assert_openai_error(_chat(client, **body), 400)
        assert err["type"] == "invalid_request_error", body
        assert hint in err["message"], (body, err["message"])
    assert server.metrics() == {}  # rejected requests never reach the generator


@pytest.mark.parametrize("streaming", [False, True], ids=["chunked-text", "native-stream"])
def test_streaming_with_openai_client_matches_non_streamed(streaming: bool) -> None:
    srv = ServingServer(port=0, max_tokens_limit=64)  # long answers, so several pieces
    srv.start()
    srv.swap(_model("A", 1, streaming=streaming))
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
    stats = srv.metrics()[1]
    assert (stats["requests"], stats["streamed_requests"], stats["failures"]) == (5, 3, 0)
    chat_prompt = f"user: {prompt}\nassistant: "  # the fake answers with all of it reversed
    assert stats["completion_tokens"] == 2 * 40 + 3 * len(chat_prompt)


def test_stream_wire_format(server: ServingServer, client: httpx.Client) -> None:
    server.swap(_model("A", 1))
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
    server.swap(_model("A", 1, streaming=True, report_totals=False))
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
    assert server.metrics()[1]["prompt_tokens"] == 13


def test_stream_failures_are_reported_and_counted(server: ServingServer) -> None:
    oai = _openai(server)
    try:
        # Failing before the first piece: an ordinary 500.
        server.swap(_model("A", 1, fail=True))
        with pytest.raises(openai.InternalServerError):
            list(oai.completions.create(model="aifactory-default", prompt="hi", stream=True))
        # Failing mid-stream: an SSE error event, which the client raises.
        server.swap(_model("B", 2, streaming=True, fail_after=1))
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
        server.metrics().get(2, {}).get("failures") == 1
        and server.current is not None
        and server.current.generator.closed.is_set()  # type: ignore[attr-defined]
    ):
        time.sleep(0.02)
    metrics = server.metrics()
    for version in (1, 2):
        assert metrics[version]["requests"] == 1
        assert metrics[version]["failures"] == 1
        assert metrics[version]["streamed_requests"] == 1
    assert server.current is not None
    assert server.current.generator.closed.is_set()  # type: ignore[attr-defined]


def test_abandoned_stream_is_counted_and_stopped() -> None:
    served = _model("A", 1, streaming=True, piece_delay_s=0.05)
    srv = ServingServer(port=0, max_tokens_limit=400)
    srv.start()
    srv.swap(served)
    body = {"model": "aifactory-default", "prompt": "x" * 300, "max_tokens": 300, "stream": True}
    try:
        with (
            httpx.Client(base_url=srv.url, timeout=10.0) as c,
            c.stream("POST", "/v1/completions", json=body) as resp,
        ):
            assert next(resp.iter_lines()).startswith("data: ")
        deadline = time.monotonic() + 5.0
        while 1 not in srv.metrics() and time.monotonic() < deadline:
            gc.collect()
            time.sleep(0.05)
        stats = srv.metrics()[1]
        assert stats["requests"] == 1 and stats["failures"] == 0
        assert 0 < stats["completion_tokens"] < 300  # counted what was really generated
        assert served.generator.closed.wait(2.0)  # type: ignore[attr-defined]
    finally:
        srv.stop()


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydantic noise from LiteLLM's own models
def test_litellm_against_the_server(server: ServingServer) -> None:
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # no network fetch at import
    litellm = pytest.importorskip("litellm")
    server.swap(_model("A", 3))
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
    assert server.metrics()[3]["requests"] == 3


def test_swap_during_streaming_load_never_fails(server: ServingServer) -> None:
    models = [_model("A", 1, delay_s=0.003), _model("B", 2, streaming=True, piece_delay_s=0.001)]
    server.swap(models[0])
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
            server.swap(models[(swaps + 1) % 2])
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
    server.swap(models[0])
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
            server.swap(models[(swaps + 1) % 2])
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
        first.stop()
        first.stop()  # idempotent
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
