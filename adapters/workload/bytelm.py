"""The built-in workload: a small causal transformer language model over raw bytes.

Bytes (vocabulary 256) need no tokenizer, so any UTF-8 corpus can be retrained on
without preparation, and bits per byte is directly comparable between artefacts with
different hyperparameters.  The model is deliberately plain PyTorch so the controller can
train it on a CPU in tests and on a GPU in production with the same code.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import math
import os
import queue
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .protocol import Completion, EvalResult, TrainProgress, TrainRequest, TrainResult

__all__ = ["ARTEFACT_FORMAT", "ByteLMConfig", "ByteLMGenerator", "ByteLMWorkload"]

#: Tag stored in every artefact so foreign or stale files are rejected, not misread.
ARTEFACT_FORMAT = "aifactory.bytelm/1"

VOCAB_SIZE = 256
_LN2 = math.log(2.0)
_MIN_LR_RATIO = 0.1  # decay ends at 10% of the peak learning rate
_PROGRESS_INTERVAL_S = 0.5
_MAX_CHUNK_GROUPS = 64
_EVAL_BATCH = 64
_FILE_SEPARATOR = b"\n\n"

_CHECK_BYTES = 32_768  # held-out bytes scored by the early-stop check (cheap, fixed)

_INT_PARAMS = (
    "d_model",
    "n_layers",
    "n_heads",
    "context",
    "batch_size",
    "warmup_steps",
    "check_every_tokens",
)
_PRECISIONS = ("fp32", "bf16", "tf32")  # tf32: fp32 storage, TF32 matmuls on a GPU
_SCHEDULES = ("cosine", "linear")


@dataclass(frozen=True)
class ByteLMConfig:
    """Resolved hyperparameters; every field may be overridden via ``TrainRequest.params``."""

    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    context: int = 128
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    grad_accum: int = 1
    precision: str = "fp32"
    dropout: float = 0.0
    schedule: str = "cosine"
    # optional early stop: every `check_every_tokens`, score a slice of the held-out text and
    # stop ("target") once it reaches `target_bpb`; 0 turns it off
    target_bpb: float = 0.0
    check_every_tokens: int = 0

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ByteLMConfig:
        """Validate user params up front so a bad trial fails before any compute is spent."""
        known = set(cls.__dataclass_fields__)
        for key in params:
            if key not in known:
                raise ValueError(
                    f"unknown bytelm param {key!r} (known: {', '.join(sorted(known))})"
                )
        values: dict[str, Any] = {}
        for key, value in params.items():
            if key in (*_INT_PARAMS, "grad_accum"):
                values[key] = _as_int(key, value)
            elif key in ("lr", "weight_decay", "dropout", "target_bpb"):
                values[key] = _as_float(key, value)
            else:
                values[key] = str(value)
        cfg = cls(**values)
        cfg._check()
        return cfg

    def _check(self) -> None:
        """Reject values that would crash (or silently misbehave) deep inside training."""
        if self.target_bpb < 0 or self.check_every_tokens < 0:
            raise ValueError("target_bpb and check_every_tokens must not be negative")
        if self.target_bpb > 0 and self.check_every_tokens < 1:
            raise ValueError("target_bpb needs check_every_tokens >= 1")
        for key in ("d_model", "n_layers", "n_heads", "context", "batch_size", "grad_accum"):
            if getattr(self, key) < 1:
                raise ValueError(f"bytelm param {key!r} must be >= 1, got {getattr(self, key)}")
        if self.warmup_steps < 0:
            raise ValueError(f"bytelm param 'warmup_steps' must be >= 0, got {self.warmup_steps}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"bytelm param 'd_model' ({self.d_model}) must be divisible by "
                f"'n_heads' ({self.n_heads})"
            )
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"bytelm param 'lr' must be a positive finite number, got {self.lr}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ValueError(f"bytelm param 'weight_decay' must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"bytelm param 'dropout' must be in [0, 1), got {self.dropout}")
        if self.precision not in _PRECISIONS:
            raise ValueError(f"bytelm param 'precision' must be one of {_PRECISIONS}")
        if self.schedule not in _SCHEDULES:
            raise ValueError(f"bytelm param 'schedule' must be one of {_SCHEDULES}")

    @property
    def tokens_per_step(self) -> int:
        """Input bytes consumed by one optimiser step."""
        return self.batch_size * self.context * self.grad_accum


def _as_int(key: str, value: Any) -> int:
    """Accept ints (and integral floats from search spaces), but never bools or strings."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"bytelm param {key!r} must be an integer, got {value!r}")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"bytelm param {key!r} must be an integer, got {value!r}")
    return int(value)


def _as_float(key: str, value: Any) -> float:
    """Accept any real number, but never bools or strings."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"bytelm param {key!r} must be a number, got {value!r}")
    return float(value)


# --------------------------------------------------------------------------- model


class _Block(nn.Module):
    """Pre-LayerNorm transformer block: causal self-attention then a GELU MLP."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.fc_out = nn.Linear(4 * d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        qkv = self.qkv(self.ln1(x)).view(b, t, 3, self.n_heads, c // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, t, c)))
        return x + self.drop(self.fc_out(F.gelu(self.fc(self.ln2(x)))))

    def forward_at(self, x: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """The block's output at one position per row, ``(b, 1, c)``: what sampling needs
        from the last block. Keys and values still cover every position, but the query,
        projection and MLP (most of the block's work) run for that position only."""
        b, t, c = x.shape
        h, d = self.n_heads, c // self.n_heads
        rows = torch.arange(b, device=x.device)
        xn = self.ln1(x)
        w_q, w_kv = self.qkv.weight.split((c, 2 * c), dim=0)
        b_q, b_kv = self.qkv.bias.split((c, 2 * c))
        q = F.linear(xn[rows, at], w_q, b_q).view(b, h, 1, d)
        kv = F.linear(xn, w_kv, b_kv).view(b, t, 2, h, d)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        visible = torch.arange(t, device=x.device)[None, :] <= at[:, None]  # causal, per row
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=visible[:, None, None, :])
        out = x[rows, at] + self.proj(y.reshape(b, c))
        out = out + self.fc_out(F.gelu(self.fc(self.ln2(out))))
        return out[:, None]


class _ByteTransformer(nn.Module):
    """Token + learned position embeddings, a stack of blocks, and a tied output head."""

    def __init__(
        self, d_model: int, n_layers: int, n_heads: int, context: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.context = context
        self.tok_emb = nn.Embedding(VOCAB_SIZE, d_model)
        self.pos_emb = nn.Embedding(context, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(d_model, n_heads, dropout) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)

    def init_weights(self, generator: torch.Generator) -> None:
        """GPT-style init from an explicit generator so a seed fully determines the start."""
        residual_std = 0.02 / math.sqrt(2 * max(1, len(self.blocks)))
        for name, p in self.named_parameters():
            if p.dim() < 2:
                if name.endswith("weight"):  # LayerNorm gains
                    nn.init.ones_(p)
                else:
                    nn.init.zeros_(p)
            else:
                std = residual_std if name.endswith(("proj.weight", "fc_out.weight")) else 0.02
                nn.init.normal_(p, mean=0.0, std=std, generator=generator)

    def forward(self, idx: torch.Tensor, at: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for every position, or only one per row (cheaper for sampling).

        ``at`` (one index per row) keeps that row's position, which is what a right-padded
        batch of unequal windows needs; the result then has shape ``(batch, 1, vocab)``.
        """
        t = idx.shape[1]
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        if at is None or self.training:
            for block in self.blocks:
                x = block(x)
            x = self.ln_f(x)
            if at is not None:
                x = x[torch.arange(x.shape[0], device=x.device), at][:, None]
            return F.linear(x, self.tok_emb.weight)
        for block in self.blocks[:-1]:
            x = block(x)
        x = self.ln_f(self.blocks[-1].forward_at(x, at))  # type: ignore[operator]
        return F.linear(x, self.tok_emb.weight)


def _arch(cfg: ByteLMConfig) -> dict[str, Any]:
    """The subset of the config needed to rebuild the network from an artefact."""
    return {
        "d_model": cfg.d_model,
        "n_layers": cfg.n_layers,
        "n_heads": cfg.n_heads,
        "context": cfg.context,
        "dropout": cfg.dropout,
    }


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _num_threads(n: int) -> Iterator[None]:
    """Pin intra-op threads for one call and restore them, so callers share CPUs fairly."""
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def _matmul_precision(tf32: bool) -> Iterator[None]:
    """TF32 matmuls for one run (Ampere and later; no effect on a CPU), then as before."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def _resolve_device(spec: str) -> torch.device:
    """Map the request's device string to a torch device, failing clearly if unusable."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} requested but CUDA is not available")
        try:
            device = torch.device(spec)
        except RuntimeError as exc:
            raise ValueError(f"invalid device {spec!r}") from exc
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r} does not exist")
        return device
    raise ValueError(f"invalid device {spec!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")


def _read_corpus(files: list[str]) -> bytes:
    """All bytes of the files, separated like paragraphs so documents do not run together."""
    parts = []
    for path in files:
        with open(path, "rb") as fh:
            parts.append(fh.read())
    return _FILE_SEPARATOR.join(parts)


def _read_sample(files: list[str], max_bytes: int) -> bytes:
    """Up to ``max_bytes`` taken evenly across files, so one big file cannot dominate a score.

    Each file contributes its leading bytes; a file shorter than its share passes the unused
    share on to the larger files.
    """
    if not files:
        raise ValueError("no evaluation files given")
    if max_bytes < 2:
        raise ValueError(f"max_bytes must be >= 2, got {max_bytes}")
    sizes = [os.path.getsize(p) for p in files]
    budget = max(len(files), max_bytes - len(_FILE_SEPARATOR) * (len(files) - 1))
    quotas = [0] * len(files)
    remaining = budget
    order = sorted(range(len(files)), key=lambda i: sizes[i])
    for rank, i in enumerate(order):
        share = remaining // (len(files) - rank)
        quotas[i] = min(sizes[i], share)
        remaining -= quotas[i]
    parts = []
    for path, quota in zip(files, quotas, strict=True):
        if quota > 0:
            with open(path, "rb") as fh:
                parts.append(fh.read(quota))
    return _FILE_SEPARATOR.join(parts)[:max_bytes]


def _to_tensor(data: bytes) -> torch.Tensor:
    """Bytes as a uint8 tensor (copied, so torch never aliases an immutable buffer)."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _lr_at(step: int, cfg: ByteLMConfig, planned_steps: int) -> float:
    """Linear warmup, then cosine or linear decay to 10% of peak by the planned last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, planned_steps - cfg.warmup_steps)
    frac = min(1.0, (step - cfg.warmup_steps) / span)
    scale = 0.5 * (1.0 + math.cos(math.pi * frac)) if cfg.schedule == "cosine" else 1.0 - frac
    return cfg.lr * (_MIN_LR_RATIO + (1.0 - _MIN_LR_RATIO) * scale)


@torch.inference_mode()
def _score(
    model: _ByteTransformer, data: torch.Tensor, device: torch.device, batch: int = _EVAL_BATCH
) -> EvalResult:
    """Bits per byte over non-overlapping context-sized chunks, plus per-group values.

    Each chunk of ``context`` target bytes is predicted from the bytes before it in the same
    window, so every byte after the first is scored exactly once.  Always fp32, so the score
    does not depend on the training precision.
    """
    n = data.numel()
    if n < 2:
        raise ValueError("evaluation text must contain at least 2 bytes")
    ctx = model.context
    was_training = model.training
    model.eval()
    n_full = (n - 1) // ctx
    chunk_nats: list[float] = []
    chunk_len: list[int] = []
    try:
        if n_full:
            windows = data[: n_full * ctx + 1].unfold(0, ctx + 1, ctx)
            for start in range(0, n_full, batch):
                w = windows[start : start + batch].to(device).long()
                logits = model(w[:, :-1]).float()
                nats = F.cross_entropy(
                    logits.reshape(-1, VOCAB_SIZE), w[:, 1:].reshape(-1), reduction="none"
                )
                chunk_nats.extend(nats.view(w.shape[0], ctx).double().sum(1).tolist())
                chunk_len.extend([ctx] * w.shape[0])
        tail = data[n_full * ctx :]
        if tail.numel() >= 2:
            w = tail.to(device).long()[None]
            logits = model(w[:, :-1]).float()
            nats = F.cross_entropy(logits[0], w[0, 1:], reduction="sum")
            chunk_nats.append(float(nats))
            chunk_len.append(w.shape[1] - 1)
    finally:
        model.train(was_training)

    total_tokens = sum(chunk_len)
    bpb = sum(chunk_nats) / total_tokens / _LN2
    n_groups = min(_MAX_CHUNK_GROUPS, len(chunk_nats))
    groups: list[float] = []
    for g in range(n_groups):
        lo = g * len(chunk_nats) // n_groups
        hi = (g + 1) * len(chunk_nats) // n_groups
        groups.append(sum(chunk_nats[lo:hi]) / sum(chunk_len[lo:hi]) / _LN2)
    return EvalResult(bpb=bpb, tokens=total_tokens, chunk_bpb=tuple(groups))


def _save_atomic(obj: dict[str, Any], out_path: str) -> None:
    """Write via a temp file in the same directory and rename, so readers never see half."""
    target = Path(out_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _load_artefact(path: str) -> tuple[_ByteTransformer, dict[str, Any]]:
    """Rebuild a CPU model from an artefact, rejecting anything that is not ours."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"{path}: not a readable {ARTEFACT_FORMAT} artefact ({exc})") from exc
    if not isinstance(obj, dict) or obj.get("format") != ARTEFACT_FORMAT:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path}: expected format {ARTEFACT_FORMAT!r}, found {found!r}")
    config = obj.get("config")
    if not isinstance(config, dict):
        raise ValueError(f"{path}: artefact has no config")
    try:
        model = _ByteTransformer(**{k: config[k] for k in _arch(ByteLMConfig())})
        model.load_state_dict(obj["state_dict"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise ValueError(f"{path}: artefact does not match the bytelm model ({exc})") from exc
    model.eval()
    return model, config


# --------------------------------------------------------------------------- batched generation


class _Failed:
    """Marks a request that failed in the batcher; the reader re-raises it in its own thread."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_Item = str | Completion | _Failed


class _Request:
    """One generation in flight: its byte window, its own sampler, and its reader's outbox.

    The state is only touched by whoever advances the request (the batcher thread, or the
    caller's thread when not batching), so it needs no lock; ``cancelled`` is a plain flag the
    reader sets and the batcher checks between steps.
    """

    def __init__(
        self,
        prompt_bytes: bytes,
        max_tokens: int,
        temperature: float,
        seed: int | None,
        context: int,
        pieces: bool = True,
    ) -> None:
        self.prompt_tokens = len(prompt_bytes)
        self.remaining = max_tokens
        self.temperature = temperature
        self.context = context
        self.rng = torch.Generator()
        if seed is None:
            self.rng.seed()
        else:
            self.rng.manual_seed(seed)
        # An empty prompt starts from a paragraph break, the same boundary seen in training.
        self.window: list[int] = list(prompt_bytes[-context:]) or [_FILE_SEPARATOR[0]]
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.generated = 0
        self.text: list[str] = []
        self.outbox: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        # Without pieces only the Completion is delivered: a blocking caller is woken once,
        # not once per byte, which leaves the batcher more of the GIL.
        self.pieces = pieces
        self.cancelled = False

    def sample(self, logits: torch.Tensor) -> int:
        """Next byte from this request's logits row, with its own RNG (argmax when greedy)."""
        if self.temperature <= 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / self.temperature, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.rng))

    def advance(self, nxt: int) -> list[str | Completion]:
        """Append one byte; return the whole characters it completed (and the end, if any)."""
        self.generated += 1
        self.remaining -= 1
        self.window.append(nxt)
        if len(self.window) > self.context:
            del self.window[0]
        items: list[str | Completion] = []
        piece = self.decoder.decode(bytes([nxt]))
        if piece:
            self.text.append(piece)
            items.append(piece)
        if self.remaining <= 0:
            items.extend(self.finish())
        return items

    def finish(self) -> list[str | Completion]:
        """Flush a dangling partial character and build the final Completion."""
        items: list[str | Completion] = []
        tail = self.decoder.decode(b"", final=True)
        if tail:
            self.text.append(tail)
            items.append(tail)
        items.append(
            Completion(
                text="".join(self.text),
                prompt_tokens=self.prompt_tokens,
                completion_tokens=self.generated,
                finish_reason="length",
            )
        )
        return items


def _next_logits(model: _ByteTransformer, windows: list[list[int]]) -> torch.Tensor:
    """Float logits ``(len(windows), vocab)`` for the byte after each window, in one forward.

    Windows are right-padded to the longest: under the causal mask no real position sees the
    padding after it and every window starts at position 0, as it would alone, so each row's
    logits are read at its own last real index.
    """
    lengths = [len(w) for w in windows]
    width = max(lengths)
    idx = torch.tensor([w + [0] * (width - len(w)) for w in windows], dtype=torch.long)
    at = torch.tensor(lengths, dtype=torch.long) - 1
    return model(idx, at=at)[:, 0].float()


def _step(model: _ByteTransformer, batch: list[_Request]) -> list[list[str | Completion] | None]:
    """One forward over the batch and one byte per request; ``None`` where sampling failed.

    A failing forward raises (it concerns the whole batch); a failing sample is recorded on
    that request only, so one bad row cannot take the others down.
    """
    with torch.inference_mode():
        logits = _next_logits(model, [r.window for r in batch])
        results: list[list[str | Completion] | None] = []
        for row, req in enumerate(batch):
            try:
                results.append(req.advance(req.sample(logits[row])))
            except Exception as exc:
                req.outbox.put(_Failed(exc))
                results.append(None)
    return results


class _Batcher:
    """The thread that owns the forward passes of one model (continuous batching).

    Each step runs one forward over every active request (up to ``max_batch``) and gives each
    one byte; requests join from the queue and leave (finished, cancelled or failed) between
    steps, so a long request never holds a short one back.  There is no KV cache, so a step
    recomputes every window: the batch shares the per-forward Python and dispatch overhead
    and the GIL is no longer fought over by one forward per request, but the matrix products
    still grow with the batch, so on a CPU the gain is modest (see ``bench/RESULTS.md``).
    Kept apart from :class:`ByteLMGenerator` so the thread does not keep the generator alive:
    dropping the generator stops the thread.
    """

    def __init__(self, model: _ByteTransformer, max_batch: int, name: str) -> None:
        self._model = model
        self._max_batch = max_batch
        self._name = name
        self._cond = threading.Condition()
        self._pending: collections.deque[_Request] = collections.deque()
        self._active = 0
        self._closed = False
        self._thread: threading.Thread | None = None

    @property
    def in_flight(self) -> int:
        """Requests in the running batch or waiting to join it."""
        with self._cond:
            return self._active + len(self._pending)

    def submit(self, req: _Request) -> None:
        """Queue a request for the next step, starting the thread on first use."""
        with self._cond:
            if self._closed:
                raise RuntimeError("generator is closed")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"bytelm-batcher:{self._name}", daemon=True
                )
                self._thread.start()
            self._pending.append(req)
            self._cond.notify()

    def cancel(self, req: _Request) -> None:
        """Withdraw a request: dropped from the queue now, or from the batch before next step."""
        req.cancelled = True
        with self._cond, contextlib.suppress(ValueError):
            self._pending.remove(req)

    def receive(self, req: _Request) -> _Item:
        """Block until the batcher has the request's next item (or the batcher is gone)."""
        while True:
            try:
                return req.outbox.get(timeout=1.0)
            except queue.Empty:
                thread = self._thread
                if thread is None or not thread.is_alive():
                    return _Failed(RuntimeError("the batcher thread is not running"))

    def close(self, wait: bool = True) -> None:
        """Stop the thread; requests still queued or running fail with 'generator closed'."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10.0)

    def _admit(self, active: list[_Request]) -> list[_Request] | None:
        """Drop cancelled requests and fill the batch from the queue; wait while idle.

        Returns ``None`` once closed.
        """
        with self._cond:
            active = [r for r in active if not r.cancelled]
            while not active and not self._pending and not self._closed:
                self._active = 0
                self._cond.wait()
            if self._closed:
                return None
            while self._pending and len(active) < self._max_batch:
                active.append(self._pending.popleft())
            self._active = len(active)
            return active

    def _run(self) -> None:
        """Serve steps until closed; a failed step fails its requests, not the thread."""
        active: list[_Request] = []
        try:
            while True:
                admitted = self._admit(active)
                if admitted is None:
                    break
                active = admitted
                try:
                    results = _step(self._model, active)
                except Exception as exc:
                    for req in active:
                        req.outbox.put(_Failed(exc))
                    active = []
                    continue
                survivors: list[_Request] = []
                for req, items in zip(active, results, strict=True):
                    if items is None:
                        continue
                    for item in items:
                        if req.pieces or isinstance(item, Completion):
                            req.outbox.put(item)
                    if req.remaining > 0:
                        survivors.append(req)
                active = survivors
        finally:
            with self._cond:
                self._closed = True
                stranded = active + list(self._pending)
                self._pending.clear()
                self._active = 0
            for req in stranded:
                req.outbox.put(_Failed(RuntimeError("generator closed")))


# --------------------------------------------------------------------------- public API


class ByteLMGenerator:
    """Serves completions from a loaded artefact; safe to call from many threads at once.

    Concurrent requests are batched: one background thread runs one forward per step over
    all of them (up to ``max_batch``), instead of every caller running its own batch-1
    forwards and competing for the cores.  ``max_batch=1`` turns this off and generates in
    the caller's thread, exactly as before batching existed.  Every request keeps its own
    RNG, so a seeded or greedy answer does not depend on what it was batched with.
    """

    def __init__(self, model: _ByteTransformer, name: str, *, max_batch: int = 16) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.name = name
        self.max_batch = max_batch
        self._model = model.eval()
        self._context = model.context
        self._lock = threading.Lock()
        self._inline = 0  # requests generating in callers' threads (max_batch == 1)
        self._closed = False
        self._batcher: _Batcher | None = None
        if max_batch > 1:
            self._batcher = _Batcher(self._model, max_batch, name)
            # Stops the thread when the generator is dropped (e.g. after a model swap).
            self._finalizer = weakref.finalize(self, self._batcher.close, False)

    @property
    def context(self) -> int:
        """Bytes of a prompt the model reads (its last ones): serving says so when a prompt
        is longer."""
        return self._context

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet finished, failed or cancelled."""
        if self._batcher is not None:
            return self._batcher.in_flight
        with self._lock:
            return self._inline

    def close(self) -> None:
        """Stop the batching thread (idempotent); later requests raise ``RuntimeError``."""
        self._closed = True
        if self._batcher is not None:
            self._finalizer.detach()
            self._batcher.close()

    def generate(
        self, prompt: str, max_tokens: int, temperature: float = 1.0, seed: int | None = None
    ) -> Completion:
        """Sample ``max_tokens`` bytes after the prompt (greedy when ``temperature <= 0``)."""
        for item in self._items(prompt, max_tokens, temperature, seed, pieces=False):
            if isinstance(item, Completion):
                return item
        raise RuntimeError("stream ended without its completion")  # pragma: no cover

    def stream(
        self, prompt: str, max_tokens: int, temperature: float = 1.0, seed: int | None = None
    ) -> Iterator[str | Completion]:
        """Yield text as it is sampled (whole UTF-8 characters only), then the Completion.

        The serving layer sends each piece to a streaming client as soon as it exists; closing
        the iterator early (client gone) withdraws the request before the next step.
        """
        return self._items(prompt, max_tokens, temperature, seed, pieces=True)

    def _items(
        self, prompt: str, max_tokens: int, temperature: float, seed: int | None, pieces: bool
    ) -> Iterator[str | Completion]:
        """The request's output; checks run on first ``next``, as a generator's do."""
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        if self._closed:
            raise RuntimeError("generator is closed")
        prompt_bytes = prompt.encode("utf-8")
        req = _Request(prompt_bytes, max_tokens, temperature, seed, self._context, pieces)
        if max_tokens == 0:
            yield from req.finish()
        elif self._batcher is None:
            yield from self._stream_inline(req)
        else:
            yield from self._stream_batched(self._batcher, req)

    def _stream_inline(self, req: _Request) -> Iterator[str | Completion]:
        """Generate in the caller's thread with batch-1 forwards (batching off)."""
        with self._lock:
            self._inline += 1
        try:
            while req.remaining > 0:
                results = _step(self._model, [req])
                if results[0] is None:
                    failure = req.outbox.get()
                    assert isinstance(failure, _Failed)
                    raise failure.exc
                yield from results[0]
        finally:
            with self._lock:
                self._inline -= 1

    @staticmethod
    def _stream_batched(batcher: _Batcher, req: _Request) -> Iterator[str | Completion]:
        """Hand the request to the batcher and relay what it produces, in this thread."""
        batcher.submit(req)
        try:
            while True:
                item = batcher.receive(req)
                if isinstance(item, _Failed):
                    exc = item.exc
                    raise RuntimeError(
                        f"batched generation failed: {type(exc).__name__}: {exc}"
                    ) from exc
                yield item
                if isinstance(item, Completion):
                    return
        finally:
            batcher.cancel(req)  # a no-op once finished; otherwise leaves the batch

    def score(self, text: str) -> float | None:
        """Bits per byte of the model on ``text`` (UTF-8), ``None`` below 2 bytes.

        Scored like held-out text in training (fp32, non-overlapping context windows), so two
        versions can be compared on the same live prompts during a canary rollout.  Runs in
        the caller's thread; the model is only read.
        """
        data = text.encode("utf-8")
        if len(data) < 2:
            return None
        return _score(self._model, _to_tensor(data), torch.device("cpu")).bpb


def _optimizer(
    model: _ByteTransformer, cfg: ByteLMConfig, device: torch.device
) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not on norms and biases)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.95),
        fused=device.type == "cuda" or None,
    )


def _batch_sampler(
    train_data: torch.Tensor, cfg: ByteLMConfig, device: torch.device, rng: torch.Generator
) -> Callable[[], torch.Tensor]:
    """Random windows of ``context + 1`` bytes (input and next-byte targets) per call."""
    offsets = torch.arange(cfg.context + 1)
    high = train_data.numel() - cfg.context  # exclusive upper bound of window starts

    def batch() -> torch.Tensor:
        ix = torch.randint(0, high, (cfg.batch_size,), generator=rng)
        return train_data[ix[:, None] + offsets].to(device).long()

    return batch


def _stop_reason(
    tokens: int,
    cfg: ByteLMConfig,
    request: TrainRequest,
    should_stop: Callable[[], bool] | None,
    start: float,
) -> str | None:
    """Why the loop ends before the next step (budget, a stop asked for, time), or None."""
    if tokens + cfg.tokens_per_step > request.max_tokens:
        return "budget"
    if should_stop is not None and should_stop():
        return "stopped"
    if request.max_seconds is not None and time.perf_counter() - start >= request.max_seconds:
        return "time"
    return None


def _one_step(
    model: _ByteTransformer,
    optimizer: torch.optim.Optimizer,
    cfg: ByteLMConfig,
    batch: Callable[[], torch.Tensor],
    device: torch.device,
) -> tuple[float | None, int]:
    """One optimiser step over ``grad_accum`` micro-batches: (mean loss, or None when the
    loss or the gradient stopped being finite; tokens consumed, a diverged one's too)."""
    step_loss, used = 0.0, 0
    for _ in range(cfg.grad_accum):
        window = batch()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
            logits = model(window[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, VOCAB_SIZE), window[:, 1:].reshape(-1))
        used += cfg.batch_size * cfg.context
        value = loss.item()
        if not math.isfinite(value):
            return None, used
        (loss / cfg.grad_accum).backward()
        step_loss += value / cfg.grad_accum
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    if not math.isfinite(float(grad_norm)):
        return None, used
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return step_loss, used


def _save_trained(
    model: _ByteTransformer,
    cfg: ByteLMConfig,
    request: TrainRequest,
    device: torch.device,
    valid_data: torch.Tensor,
    common: dict[str, Any],
) -> TrainResult:
    """Score the held-out bytes and save the artefact with what made it."""
    valid = _score(model, valid_data, device)
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    config = {
        **_arch(cfg),
        "vocab_size": VOCAB_SIZE,
        "params": asdict(cfg),
        "seed": request.seed,
        "tokens": common["tokens"],
        "steps": common["steps"],
        "stopped_reason": common["stopped_reason"],
        "valid_bpb": valid.bpb,
    }
    _save_atomic(
        {"format": ARTEFACT_FORMAT, "config": config, "state_dict": state}, request.out_path
    )
    return TrainResult(valid_bpb=valid.bpb, artefact_path=request.out_path, **common)


class ByteLMWorkload:
    """Byte-level causal transformer LM implementing the ``Workload`` protocol."""

    name = "bytelm"
    #: the placement knobs it applies, with the values it takes (`agents.placement`)
    placement_knobs: ClassVar[dict[str, tuple[Any, ...]]] = {
        "precision": _PRECISIONS,
        "batch_size": (8, 16, 32, 64, 128, 256, 512),
        "grad_accum": (1, 2, 4, 8),
    }

    @staticmethod
    def bytes_per_sample(params: dict[str, Any]) -> int:
        """Training memory of one sample, roughly: per layer and position the activations
        a transformer keeps for backward (about 34 x d_model bytes in fp32 terms, plus the
        attention scores), the way Korthikanti et al. count them."""
        known = ByteLMConfig.__dataclass_fields__
        cfg = ByteLMConfig.from_params({k: v for k, v in params.items() if k in known})
        per_layer = cfg.context * (34 * cfg.d_model + 5 * cfg.n_heads * cfg.context)
        return per_layer * cfg.n_layers * 2

    @staticmethod
    def tokens_per_sample(params: dict[str, Any]) -> int:
        """Bytes (tokens) one sample of a batch consumes: the context."""
        known = ByteLMConfig.__dataclass_fields__
        return ByteLMConfig.from_params({k: v for k, v in params.items() if k in known}).context

    def train(
        self,
        request: TrainRequest,
        progress: Callable[[TrainProgress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TrainResult:
        """Train within ``request.max_tokens`` and save the artefact unless training diverged."""
        cfg = ByteLMConfig.from_params(dict(request.params))
        device = _resolve_device(request.device)
        per_step = cfg.tokens_per_step
        planned_steps = request.max_tokens // per_step
        if planned_steps < 1:
            raise ValueError(
                f"max_tokens={request.max_tokens} is below one optimiser step "
                f"(batch_size*context*grad_accum = {per_step})"
            )
        if request.max_seconds is not None and not request.max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0, got {request.max_seconds}")
        if not request.train_files:
            raise ValueError("no training files given")
        if not request.valid_files:
            raise ValueError("no validation files given")
        train_data = _to_tensor(_read_corpus(request.train_files))
        if train_data.numel() < cfg.context + 1:
            raise ValueError(
                f"training text has {train_data.numel()} bytes; need at least "
                f"context+1 = {cfg.context + 1}"
            )
        valid_data = _to_tensor(_read_sample(request.valid_files, 200_000))
        if valid_data.numel() < 2:
            raise ValueError("validation text must contain at least 2 bytes")

        # Dropout draws from torch's global generator: seed it from the request (and put it
        # back afterwards), so a trial gives the same result in a fresh or a reused process.
        cuda = [device.index or 0] if device.type == "cuda" else []
        tf32 = _matmul_precision(cfg.precision == "tf32")
        with _num_threads(request.threads), torch.random.fork_rng(devices=cuda), tf32:
            torch.manual_seed(request.seed + 2)
            return self._train(
                cfg, request, device, train_data, valid_data, planned_steps, progress, should_stop
            )

    def _train(
        self,
        cfg: ByteLMConfig,
        request: TrainRequest,
        device: torch.device,
        train_data: torch.Tensor,
        valid_data: torch.Tensor,
        planned_steps: int,
        progress: Callable[[TrainProgress], None] | None,
        should_stop: Callable[[], bool] | None,
    ) -> TrainResult:
        """The training loop proper; inputs are already validated."""
        init_rng = torch.Generator().manual_seed(request.seed)
        data_rng = torch.Generator().manual_seed(request.seed + 1)
        model = _ByteTransformer(**_arch(cfg))
        model.init_weights(init_rng)
        model.to(device).train()
        optimizer = _optimizer(model, cfg, device)
        batch = _batch_sampler(train_data, cfg, device, data_rng)

        tokens = steps = 0
        next_check = cfg.check_every_tokens
        check_data = valid_data[:_CHECK_BYTES]
        last_loss = float("nan")
        window_sum, window_n = 0.0, 0
        start = last_report = time.perf_counter()
        reported = -1  # tokens at the last heartbeat: the closing one must not repeat it

        def report(now: float, loss: float) -> None:
            """Emit a heartbeat; the rate covers the whole run so far, warm-up included."""
            nonlocal reported
            if progress is not None and tokens != reported:
                rate = tokens / (now - start) if now > start else 0.0
                progress(TrainProgress(step=steps, tokens=tokens, loss=loss, tokens_per_s=rate))
                reported = tokens

        while not (reason := _stop_reason(tokens, cfg, request, should_stop, start)):
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(steps, cfg, planned_steps)
            step_loss, used = _one_step(model, optimizer, cfg, batch, device)
            tokens += used
            if step_loss is None:
                reason, last_loss = "nan", float("nan")
                break
            steps += 1
            last_loss = step_loss
            window_sum += step_loss
            window_n += 1
            if cfg.target_bpb > 0 and tokens >= next_check:
                next_check += cfg.check_every_tokens
                if _score(model, check_data, device).bpb <= cfg.target_bpb:
                    reason = "target"
                    break
            now = time.perf_counter()
            if now - last_report >= _PROGRESS_INTERVAL_S:
                report(now, window_sum / window_n)
                last_report = now
                window_sum, window_n = 0.0, 0

        seconds = time.perf_counter() - start
        report(start + seconds, last_loss)
        common = {
            "tokens": tokens,
            "seconds": seconds,
            "final_train_loss": last_loss,
            "device": str(device),
            "precision": cfg.precision,
            "n_params": sum(p.numel() for p in model.parameters()),
            "steps": steps,
            "stopped_reason": reason,
        }
        if reason == "nan":
            return TrainResult(valid_bpb=float("nan"), artefact_path="", **common)
        return _save_trained(model, cfg, request, device, valid_data, common)

    def evaluate(
        self, artefact_path: str, files: list[str], max_bytes: int = 200_000, threads: int = 2
    ) -> EvalResult:
        """Score an artefact on CPU, exactly as ``train`` scores its validation files."""
        with _num_threads(threads):
            model, _ = _load_artefact(artefact_path)
            data = _to_tensor(_read_sample(files, max_bytes))
            return _score(model, data, torch.device("cpu"))

    def load(self, artefact_path: str, threads: int = 1, *, max_batch: int = 16) -> ByteLMGenerator:
        """Load for serving; sets torch's intra-op thread count for this process.

        ``max_batch`` caps how many concurrent requests share one forward (1 turns batching
        off).
        """
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
        model, _ = _load_artefact(artefact_path)
        return ByteLMGenerator(model, Path(artefact_path).stem, max_batch=max_batch)
