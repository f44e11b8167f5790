"""Tests for the embedded OpenAI-compatible server, over real loopback HTTP.

A tiny deterministic fake generator stands in for the real model so these tests check the
serving contract (status codes, payload shapes, swap safety, port lifecycle) quickly.
"""

from __future__ import annotations

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


def _model(tag: str, version: int, **kwargs: Any) -> ServedModel:
    return ServedModel(f"aifactory-default:v{version}", version, FakeGenerator(tag, **kwargs))


@pytest.fixture
def server() -> Iterator[ServingServer]:
    srv = ServingServer(port=0, max_tokens_limit=8)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def client(server: ServingServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10.0) as c:
        yield c


def _complete(client: httpx.Client, **body: Any) -> httpx.Response:
    payload: dict[str, Any] = {"model": "aifactory-default", "prompt": "hello"}
    payload.update(body)
    return client.post("/v1/completions", json=payload)


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
        {"model": "aifactory-default", "prompt": "hi", "stream": True},
    ],
)
def test_bad_bodies_are_400(
    server: ServingServer, client: httpx.Client, body: dict[str, Any]
) -> None:
    server.swap(_model("A", 1))
    err = _assert_openai_error(client.post("/v1/completions", json=body), 400)
    assert err["type"] == "invalid_request_error"


def test_stream_rejection_says_why(server: ServingServer, client: httpx.Client) -> None:
    server.swap(_model("A", 1))
    err = _assert_openai_error(_complete(client, stream=True), 400)
    assert "stream" in err["message"].lower()


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
