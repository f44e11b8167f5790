"""Real (un-mocked) tests of the workload protocol and the built-in byte-level LM.

Models are tiny (d_model=32, one layer, context 32) so the whole module trains several
models in a few seconds on two CPU cores.
"""

from __future__ import annotations

import inspect
import itertools
import json
import math
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from adapters.workload import (
    ByteLMGenerator,
    ByteLMWorkload,
    EvalResult,
    TextGenerator,
    TrainProgress,
    TrainRequest,
    TrainResult,
    Workload,
    load_workload,
)

TINY: dict[str, Any] = {
    "d_model": 32,
    "n_layers": 1,
    "n_heads": 2,
    "context": 32,
    "batch_size": 8,
    "warmup_steps": 5,
}
STEP_TOKENS = 8 * 32
MAX_TOKENS = 60_000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """Python source from the stdlib: plentiful, varied, and always present."""
    root = tmp_path_factory.mktemp("corpus")
    json_dir = Path(inspect.getsourcefile(json) or "").parent
    train_sources = sorted(json_dir.glob("*.py"))
    email_dir = json_dir.parent / "email"
    train_sources += sorted(email_dir.glob("_*.py"))
    train = root / "train.txt"
    train.write_bytes(b"".join(p.read_bytes() for p in train_sources))
    valid_a = root / "valid_a.txt"
    valid_a.write_bytes((email_dir / "message.py").read_bytes())
    valid_b = root / "valid_b.txt"
    valid_b.write_bytes(Path(inspect.getsourcefile(textwrap) or "").read_bytes())
    return {"train": [str(train)], "valid": [str(valid_a), str(valid_b)]}


def _request(corpus: dict[str, list[str]], out: Path, **overrides: Any) -> TrainRequest:
    fields: dict[str, Any] = {
        "params": dict(TINY),
        "train_files": corpus["train"],
        "valid_files": corpus["valid"],
        "max_tokens": MAX_TOKENS,
        "out_path": str(out),
        "seed": 0,
        "threads": 2,
        "device": "cpu",
    }
    fields.update(overrides)
    return TrainRequest(**fields)


@pytest.fixture(scope="module")
def trained(
    corpus: dict[str, list[str]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[TrainResult, list[TrainProgress]]:
    """One budget-limited run shared by the read-only tests."""
    out = tmp_path_factory.mktemp("run") / "nested" / "tiny.pt"
    events: list[TrainProgress] = []
    result = ByteLMWorkload().train(_request(corpus, out), progress=events.append)
    return result, events


def test_train_respects_budget_and_saves(trained: tuple[TrainResult, list[TrainProgress]]) -> None:
    result, events = trained
    assert result.stopped_reason == "budget"
    assert result.tokens <= MAX_TOKENS
    assert result.steps == MAX_TOKENS // STEP_TOKENS
    assert result.tokens == result.steps * STEP_TOKENS
    assert result.device == "cpu"
    assert result.precision == "fp32"
    assert result.n_params > 0
    assert math.isfinite(result.valid_bpb) and result.valid_bpb < 8.0
    assert math.isfinite(result.final_train_loss)
    artefact = Path(result.artefact_path)
    assert artefact.is_file()
    # The atomic write leaves no temp file behind.
    assert [p.name for p in artefact.parent.iterdir()] == [artefact.name]
    # Progress arrives at least once, and the last report is the final state.
    assert events and events[-1].tokens == result.tokens and events[-1].step == result.steps
    assert all(e.tokens_per_s >= 0 for e in events)


def test_heartbeats_never_repeat_a_token_count(
    corpus: dict[str, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each heartbeat is a new point of the loss curve (Optuna refuses a repeated step):
    with a heartbeat after every step, the closing one must not repeat the last."""
    monkeypatch.setattr("adapters.workload.bytelm._PROGRESS_INTERVAL_S", 0.0)
    events: list[TrainProgress] = []
    request = _request(corpus, tmp_path / "hb.pt", max_tokens=3 * STEP_TOKENS)
    result = ByteLMWorkload().train(request, progress=events.append)
    counts = [e.tokens for e in events]
    assert counts and counts[-1] == result.tokens
    assert all(b > a for a, b in itertools.pairwise(counts)), counts


def test_training_lowers_bpb(
    corpus: dict[str, list[str]],
    trained: tuple[TrainResult, list[TrainProgress]],
    tmp_path: Path,
) -> None:
    one_step = ByteLMWorkload().train(_request(corpus, tmp_path / "one.pt", max_tokens=STEP_TOKENS))
    assert one_step.steps == 1
    assert one_step.valid_bpb > 7.0  # barely better than uniform (8 bits)
    assert trained[0].valid_bpb < one_step.valid_bpb - 1.5


def test_evaluate_matches_train_score(
    corpus: dict[str, list[str]], trained: tuple[TrainResult, list[TrainProgress]]
) -> None:
    result = trained[0]
    ev = ByteLMWorkload().evaluate(result.artefact_path, corpus["valid"])
    assert isinstance(ev, EvalResult)
    assert ev.bpb == pytest.approx(result.valid_bpb, abs=1e-4)
    assert ev.tokens > 0
    assert 1 < len(ev.chunk_bpb) <= 64
    assert min(ev.chunk_bpb) <= ev.bpb <= max(ev.chunk_bpb)


def test_evaluate_takes_bytes_evenly(
    corpus: dict[str, list[str]], trained: tuple[TrainResult, list[TrainProgress]]
) -> None:
    ev = ByteLMWorkload().evaluate(trained[0].artefact_path, corpus["valid"], max_bytes=1000)
    # 998 bytes split evenly over both files, joined by a 2-byte separator: 1000 bytes,
    # of which every byte after the first is predicted.
    assert ev.tokens == 999
    assert len(ev.chunk_bpb) == math.ceil(999 / 32)


def test_evaluate_rejects_foreign_files(
    corpus: dict[str, list[str]], tmp_path: Path, trained: tuple[TrainResult, list[TrainProgress]]
) -> None:
    wrong = tmp_path / "wrong.pt"
    torch.save({"format": "something/else", "state_dict": {}}, wrong)
    with pytest.raises(ValueError, match="format"):
        ByteLMWorkload().evaluate(str(wrong), corpus["valid"])
    text = tmp_path / "text.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError):
        ByteLMWorkload().evaluate(str(text), corpus["valid"])
    with pytest.raises(ValueError):
        ByteLMWorkload().load(str(wrong))


def test_should_stop_stops(corpus: dict[str, list[str]], tmp_path: Path) -> None:
    calls = 0

    def stop() -> bool:
        nonlocal calls
        calls += 1
        return calls > 3

    out = tmp_path / "stopped.pt"
    result = ByteLMWorkload().train(_request(corpus, out), should_stop=stop)
    assert result.stopped_reason == "stopped"
    assert result.steps == 3
    assert result.tokens == 3 * STEP_TOKENS
    assert out.is_file() and result.artefact_path == str(out)


def test_max_seconds_stops(corpus: dict[str, list[str]], tmp_path: Path) -> None:
    result = ByteLMWorkload().train(
        _request(corpus, tmp_path / "timed.pt", max_tokens=10**9, max_seconds=0.3)
    )
    assert result.stopped_reason == "time"
    assert 0 < result.tokens < 10**9
    assert Path(result.artefact_path).is_file()


def test_divergence_reports_nan_and_saves_nothing(
    corpus: dict[str, list[str]], tmp_path: Path
) -> None:
    out = tmp_path / "diverged.pt"
    params = {**TINY, "lr": 1e4, "warmup_steps": 0}
    result = ByteLMWorkload().train(_request(corpus, out, params=params))
    assert result.stopped_reason == "nan"
    assert math.isnan(result.valid_bpb)
    assert result.artefact_path == ""
    assert result.tokens <= MAX_TOKENS
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_same_seed_same_model(corpus: dict[str, list[str]], tmp_path: Path) -> None:
    runs = [
        ByteLMWorkload().train(_request(corpus, tmp_path / f"r{i}.pt", max_tokens=20 * 256))
        for i in range(2)
    ]
    assert runs[0].valid_bpb == runs[1].valid_bpb
    assert runs[0].final_train_loss == runs[1].final_train_loss


def test_bf16_precision(corpus: dict[str, list[str]], tmp_path: Path) -> None:
    params = {**TINY, "precision": "bf16"}
    result = ByteLMWorkload().train(
        _request(corpus, tmp_path / "bf16.pt", params=params, max_tokens=10 * STEP_TOKENS)
    )
    assert result.precision == "bf16"
    assert result.stopped_reason == "budget"
    assert math.isfinite(result.valid_bpb)


def test_generate(trained: tuple[TrainResult, list[TrainProgress]]) -> None:
    gen = ByteLMWorkload().load(trained[0].artefact_path)
    assert isinstance(gen, ByteLMGenerator) and isinstance(gen, TextGenerator)
    assert gen.name == "tiny"
    first = gen.generate("def ", 40, temperature=0.8, seed=7)
    assert first.completion_tokens == 40
    assert first.prompt_tokens == 4
    assert first.finish_reason == "length"
    assert isinstance(first.text, str) and first.text
    assert gen.generate("def ", 40, temperature=0.8, seed=7) == first
    greedy = gen.generate("import ", 20, temperature=0.0)
    assert greedy == gen.generate("import ", 20, temperature=0.0)
    assert gen.generate("é", 3, seed=1).prompt_tokens == 2  # counted in UTF-8 bytes
    assert gen.generate("", 5, seed=1).completion_tokens == 5
    # A prompt longer than the context is windowed, not rejected; serving reads the window
    # from ``context`` to say so in a header
    assert gen.generate("x" * 500, 3, seed=1).completion_tokens == 3
    assert gen.context == 32


def test_generate_concurrently(trained: tuple[TrainResult, list[TrainProgress]]) -> None:
    gen = ByteLMWorkload().load(trained[0].artefact_path)
    expected = [gen.generate("class ", 30, seed=s) for s in range(4)]
    got: dict[int, Any] = {}

    def work(s: int) -> None:
        got[s] = gen.generate("class ", 30, seed=s)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[s] for s in range(4)] == expected


def test_unknown_param_is_named(corpus: dict[str, list[str]], tmp_path: Path) -> None:
    request = _request(corpus, tmp_path / "x.pt", params={**TINY, "bogus_knob": 1})
    with pytest.raises(ValueError, match="bogus_knob"):
        ByteLMWorkload().train(request)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"d_model": 30, "n_heads": 4}, "divisible"),
        ({"precision": "fp8"}, "precision"),
        ({"batch_size": 0}, "batch_size"),
        ({"context": "128"}, "context"),
    ],
)
def test_bad_param_values(
    corpus: dict[str, list[str]], tmp_path: Path, params: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        ByteLMWorkload().train(_request(corpus, tmp_path / "x.pt", params=params))


def test_short_training_text(corpus: dict[str, list[str]], tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("too short")
    with pytest.raises(ValueError, match="context"):
        ByteLMWorkload().train(_request(corpus, tmp_path / "x.pt", train_files=[str(short)]))


def test_budget_below_one_step(corpus: dict[str, list[str]], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        ByteLMWorkload().train(_request(corpus, tmp_path / "x.pt", max_tokens=STEP_TOKENS - 1))


def test_load_workload_builtin() -> None:
    workload = load_workload("bytelm")
    assert isinstance(workload, ByteLMWorkload)
    assert isinstance(workload, Workload)
    assert workload.name == "bytelm"


def test_load_workload_custom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_custom_workload.py").write_text(
        textwrap.dedent(
            """
            class Custom:
                name = "custom"
                def train(self, request, progress=None, should_stop=None): ...
                def evaluate(self, artefact_path, files, max_bytes=200_000, threads=2): ...
                def load(self, artefact_path, threads=1): ...

            class NotAWorkload:
                name = "broken"
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    workload = load_workload("my_custom_workload:Custom")
    assert workload.name == "custom"
    with pytest.raises(ValueError, match="missing"):
        load_workload("my_custom_workload:NotAWorkload")
    with pytest.raises(ValueError, match="no 'Nope'"):
        load_workload("my_custom_workload:Nope")


@pytest.mark.parametrize("spec", ["some.module:Thing", "no_colon_here", "json:dumps", ":x", ""])
def test_load_workload_errors(spec: str) -> None:
    with pytest.raises(ValueError, match="workload spec"):
        load_workload(spec)


def test_stops_when_target_reached(corpus: dict[str, list[str]], tmp_path: Path) -> None:
    params = dict(TINY, target_bpb=7.0, check_every_tokens=2_000)
    res = ByteLMWorkload().train(
        _request(corpus, tmp_path / "t.pt", params=params, max_tokens=10 * MAX_TOKENS)
    )
    assert res.stopped_reason == "target" and res.tokens < 10 * MAX_TOKENS
    assert Path(res.artefact_path).exists()
    never = dict(TINY, target_bpb=0.01, check_every_tokens=5_000)
    res = ByteLMWorkload().train(_request(corpus, tmp_path / "n.pt", params=never))
    assert res.stopped_reason == "budget"
    with pytest.raises(ValueError, match="check_every_tokens"):
        ByteLMWorkload().train(
            _request(corpus, tmp_path / "x.pt", params=dict(TINY, target_bpb=3.0))
        )


def test_stream_yields_pieces_then_the_same_completion(
    corpus: dict[str, list[str]], tmp_path: Path
) -> None:
    res = ByteLMWorkload().train(_request(corpus, tmp_path / "s.pt"))
    gen = ByteLMWorkload().load(res.artefact_path)
    items = list(gen.stream("def ", 24, temperature=0.8, seed=3))
    *pieces, final = items
    assert all(isinstance(p, str) and p for p in pieces)
    assert final == gen.generate("def ", 24, temperature=0.8, seed=3)
    assert "".join(pieces) == final.text and final.completion_tokens == 24
