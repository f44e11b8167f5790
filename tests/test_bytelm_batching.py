"""Continuous batching and scoring in ``ByteLMGenerator``.

Models are tiny and randomly initialised (d_model 32, one layer, context 32): batching is a
property of the serving loop, not of a trained model.  Weights are drawn wider than the
training init so the next-byte distributions are sharp and greedy text actually varies.
Batch composition is made deterministic by gating the model's forward, not by sleeping.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from adapters.workload import ByteLMGenerator, ByteLMWorkload, Completion
from adapters.workload.bytelm import ARTEFACT_FORMAT, _ByteTransformer, _next_logits

CONTEXT = 32
PROMPTS = ["", "a", "hello there", "x" * 50, "é", "def main():\n    return"]
WAIT_S = 20.0


def _tiny_model(seed: int = 0) -> _ByteTransformer:
    model = _ByteTransformer(d_model=32, n_layers=1, n_heads=2, context=CONTEXT)
    rng = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3, generator=rng)
    return model.eval()


@pytest.fixture
def model() -> _ByteTransformer:
    return _tiny_model()


@pytest.fixture
def gen(model: _ByteTransformer) -> Iterator[ByteLMGenerator]:
    g = ByteLMGenerator(model, "tiny")
    yield g
    g.close()


def _wait_for(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


class _GatedForward:
    """Wraps the model's forward: records batch sizes, holds step ``hold_at`` until released.

    Holding one step while the test queues more requests makes them all join the next step.
    ``fail_at`` makes that step raise instead.
    """

    def __init__(
        self, model: _ByteTransformer, hold_at: int | None = 0, fail_at: int | None = None
    ) -> None:
        self.inner = model.forward
        self.hold_at = hold_at
        self.fail_at = fail_at
        self.release = threading.Event()
        self.sizes: list[int] = []

    def __call__(self, idx: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        step = len(self.sizes)
        self.sizes.append(idx.shape[0])
        if step == self.hold_at:
            assert self.release.wait(WAIT_S), "the test never released the held step"
        if step == self.fail_at:
            raise ValueError("boom in forward")
        return self.inner(idx, *args, **kwargs)


def _run_together(
    gen: ByteLMGenerator, gate: _GatedForward, calls: list[Callable[[], Any]]
) -> list[Any]:
    """Run each call in its own thread so that all of them are batched from step 2 on.

    The first call starts alone and is held in its first forward until the others wait in
    the queue; they then join it at the next step.  Results (or exceptions) come back in order.
    """
    out: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            out[i] = calls[i]()
        except Exception as exc:
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    threads[0].start()
    _wait_for(lambda: len(gate.sizes) == 1, "the first step")
    for t in threads[1:]:
        t.start()
    _wait_for(lambda: gen.in_flight == len(calls), "all requests to be queued")
    gate.release.set()
    for t in threads:
        t.join(WAIT_S)
        assert not t.is_alive()
    return out


def test_padded_batch_logits_match_each_window_alone(model: _ByteTransformer) -> None:
    windows = [list(p.encode()[-CONTEXT:]) or [10] for p in PROMPTS]
    with torch.inference_mode():
        batched = _next_logits(model, windows)
        for row, window in enumerate(windows):
            alone = model(torch.tensor([window]), at=torch.tensor([len(window) - 1]))[0, -1]
            # Not bitwise: the batched matmuls may round differently (seen: ~1e-7).
            torch.testing.assert_close(batched[row], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layers", [1, 2])
def test_last_block_at_one_position_equals_the_full_forward(layers: int) -> None:
    """Sampling runs the last block for one position per row; the logits must be those
    of the full forward at that position (real positions never see the padding after)."""
    net = _ByteTransformer(d_model=32, n_layers=layers, n_heads=2, context=CONTEXT).eval()
    net.init_weights(torch.Generator().manual_seed(layers))
    idx = torch.randint(0, 256, (5, CONTEXT), generator=torch.Generator().manual_seed(0))
    at = torch.tensor([CONTEXT - 1, 3, 17, 0, 25])
    with torch.inference_mode():
        fast = net(idx, at=at)[:, 0]
        last = net(idx, at=torch.full((5,), CONTEXT - 1))[:, 0]
        net.train()  # training mode takes the full path (dropout is 0, so same numbers)
        full = net(idx)
    rows = torch.arange(5)
    torch.testing.assert_close(fast, full[rows, at], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last, full[:, -1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("temperature", "seeds"), [(0.0, None), (0.9, range(len(PROMPTS)))])
def test_batched_answers_equal_answers_alone(
    model: _ByteTransformer, temperature: float, seeds: range | None
) -> None:
    seed_of = list(seeds) if seeds is not None else [None] * len(PROMPTS)
    alone = ByteLMGenerator(model, "alone", max_batch=1)
    expected = [
        alone.generate(p, 40, temperature=temperature, seed=s)
        for p, s in zip(PROMPTS, seed_of, strict=True)
    ]
    assert len({c.text for c in expected}) > 1  # the model does not say the same everywhere

    batched = ByteLMGenerator(model, "batched")
    gate = _GatedForward(model)
    model.forward = gate  # type: ignore[method-assign]
    try:
        got = _run_together(
            batched,
            gate,
            [
                lambda p=p, s=s: batched.generate(p, 40, temperature=temperature, seed=s)
                for p, s in zip(PROMPTS, seed_of, strict=True)
            ],
        )
    finally:
        del model.forward
        batched.close()
    assert max(gate.sizes) == len(PROMPTS)  # really served in one batch
    assert got == expected


def test_many_threads_all_complete_with_their_counts(gen: ByteLMGenerator) -> None:
    results: dict[int, Completion] = {}

    def work(i: int) -> None:
        results[i] = gen.generate(PROMPTS[i % len(PROMPTS)], 5 + i, seed=i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(24)]  # > max_batch
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert sorted(results) == list(range(24))
    for i, c in results.items():
        assert c.completion_tokens == 5 + i
        assert c.prompt_tokens == len(PROMPTS[i % len(PROMPTS)].encode())
        assert c.finish_reason == "length"
    assert gen.in_flight == 0


def test_stream_pieces_and_zero_tokens(gen: ByteLMGenerator) -> None:
    *pieces, final = list(gen.stream("é", 12, seed=4))
    assert isinstance(final, Completion) and all(isinstance(p, str) and p for p in pieces)
    assert "".join(pieces) == final.text and final.completion_tokens == 12
    assert gen.generate("abc", 0) == Completion("", 3, 0, "length")
    with pytest.raises(ValueError, match="max_tokens"):
        gen.generate("abc", -1)


def test_closing_a_stream_leaves_the_batch(model: _ByteTransformer, gen: ByteLMGenerator) -> None:
    gate = _GatedForward(model, hold_at=None)
    model.forward = gate  # type: ignore[method-assign]
    stream = gen.stream("hello", 100_000, temperature=0.0)
    next(stream)
    assert gen.in_flight == 1
    stream.close()  # what the server does when the client disconnects
    _wait_for(lambda: gen.in_flight == 0, "the request to leave")
    steps = len(gate.sizes)
    time.sleep(0.05)
    assert len(gate.sizes) == steps < 1000  # nothing keeps computing for it
    assert gen.generate("hi", 3).completion_tokens == 3  # still serving


def test_failed_step_fails_only_its_requests(model: _ByteTransformer, gen: ByteLMGenerator) -> None:
    gate = _GatedForward(model, hold_at=0, fail_at=1)
    model.forward = gate  # type: ignore[method-assign]
    got = _run_together(gen, gate, [lambda: gen.generate("a", 10), lambda: gen.generate("b", 10)])
    assert gate.sizes[1] == 2
    for exc in got:
        assert isinstance(exc, RuntimeError)
        assert "ValueError: boom in forward" in str(exc)
        assert isinstance(exc.__cause__, ValueError)
    assert gen.generate("c", 10).completion_tokens == 10  # the batcher kept going
    assert gen.in_flight == 0


def test_bad_row_fails_alone(model: _ByteTransformer, gen: ByteLMGenerator) -> None:
    """A NaN temperature breaks sampling for that row only; the forward it shared was fine."""
    gate = _GatedForward(model)
    model.forward = gate  # type: ignore[method-assign]
    good, bad = _run_together(
        gen,
        gate,
        [
            lambda: gen.generate("b", 50, seed=1),
            lambda: gen.generate("a", 50, temperature=float("nan")),
        ],
    )
    assert gate.sizes[1] == 2  # the two really shared a forward
    assert isinstance(bad, RuntimeError)
    assert good.completion_tokens == 50


def test_max_batch_one_generates_in_the_callers_thread(model: _ByteTransformer) -> None:
    gen = ByteLMGenerator(model, "solo", max_batch=1)
    results: dict[int, Completion] = {}

    def work(i: int) -> None:
        results[i] = gen.generate(PROMPTS[i], 20, seed=i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert "bytelm-batcher:solo" not in {t.name for t in threading.enumerate()}
    assert [results[i] for i in range(len(PROMPTS))] == [
        gen.generate(p, 20, seed=i) for i, p in enumerate(PROMPTS)
    ]
    assert gen.in_flight == 0
    gen.close()
    gen.close()
    with pytest.raises(RuntimeError, match="closed"):
        gen.generate("a", 1)
    with pytest.raises(ValueError, match="max_batch"):
        ByteLMGenerator(model, "bad", max_batch=0)


def test_close_stops_the_thread_and_is_idempotent(model: _ByteTransformer) -> None:
    gen = ByteLMGenerator(model, "closing")
    gen.generate("a", 2)
    thread = gen._batcher._thread  # type: ignore[union-attr]
    assert thread is not None and thread.daemon and thread.is_alive()
    gen.close()
    gen.close()
    assert not thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        gen.generate("a", 2)


def test_dropping_the_generator_stops_its_thread(model: _ByteTransformer) -> None:
    gen = ByteLMGenerator(model, "dropped")
    gen.generate("a", 2)
    thread = gen._batcher._thread  # type: ignore[union-attr]
    assert thread is not None
    del gen
    gc.collect()
    thread.join(WAIT_S)
    assert not thread.is_alive()


def test_score_matches_evaluate(model: _ByteTransformer, tmp_path: Path) -> None:
    artefact = tmp_path / "tiny.pt"
    config = {"d_model": 32, "n_layers": 1, "n_heads": 2, "context": CONTEXT, "dropout": 0.0}
    torch.save(
        {"format": ARTEFACT_FORMAT, "config": config, "state_dict": model.state_dict()}, artefact
    )
    gen = ByteLMWorkload().load(str(artefact))
    try:
        # Short, exactly one window, and several windows plus a tail; multi-byte characters.
        for text in ["ok", "é" * 16 + "x", "The quick brown fox, naïvely. " * 7]:
            assert len(text.encode()) >= 2
            sample = tmp_path / "sample.txt"
            sample.write_text(text, encoding="utf-8")
            expected = ByteLMWorkload().evaluate(str(artefact), [str(sample)]).bpb
            assert gen.score(text) == pytest.approx(expected, rel=1e-6)

        # By hand for one window: mean next-byte cross-entropy in bits.
        data = torch.tensor(list(b"hello world"))
        with torch.inference_mode():
            logits = model(data[None, :-1])[0]
        nats = torch.nn.functional.cross_entropy(logits, data[1:])
        assert gen.score("hello world") == pytest.approx(float(nats) / 0.6931471805599453)

        assert gen.score("") is None
        assert gen.score("a") is None
        assert gen.score("é") is not None  # two bytes
    finally:
        gen.close()
