"""The built-in workload: a small causal transformer language model over raw bytes.

Bytes (vocabulary 256) need no tokenizer, so any UTF-8 corpus can be retrained on
without preparation, and bits per byte is directly comparable between artefacts with
different hyperparameters.  The model is deliberately plain PyTorch so the controller can
train it on a CPU in tests and on a GPU in production with the same code.
"""

from __future__ import annotations

import codecs
import contextlib
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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
_PRECISIONS = ("fp32", "bf16")
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

    def forward(self, idx: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Logits for every position, or only the last one (cheaper for sampling)."""
        t = idx.shape[1]
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        if last_only:
            x = x[:, -1:]
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


# --------------------------------------------------------------------------- public API


class ByteLMGenerator:
    """Serves completions from a loaded artefact; safe to call from many threads at once.

    The model is only read after construction and every call uses its own RNG and
    inference-mode context, so concurrent requests cannot interfere.
    """

    def __init__(self, model: _ByteTransformer, name: str) -> None:
        self.name = name
        self._model = model.eval()
        self._context = model.context

    def generate(
        self, prompt: str, max_tokens: int, temperature: float = 1.0, seed: int | None = None
    ) -> Completion:
        """Sample ``max_tokens`` bytes after the prompt (greedy when ``temperature <= 0``)."""
        for item in self.stream(prompt, max_tokens, temperature=temperature, seed=seed):
            if isinstance(item, Completion):
                return item
        raise RuntimeError("stream ended without its completion")  # pragma: no cover

    def stream(
        self, prompt: str, max_tokens: int, temperature: float = 1.0, seed: int | None = None
    ) -> Iterator[str | Completion]:
        """Yield text as it is sampled (whole UTF-8 characters only), then the Completion.

        The serving layer sends each piece to a streaming client as soon as it exists.
        """
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        prompt_bytes = prompt.encode("utf-8")
        rng = torch.Generator()
        if seed is None:
            rng.seed()
        else:
            rng.manual_seed(seed)
        # An empty prompt starts from a paragraph break, the same boundary seen in training.
        history = list(prompt_bytes[-self._context :]) or [_FILE_SEPARATOR[0]]
        window = torch.tensor([history], dtype=torch.long)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        out = bytearray()
        text: list[str] = []
        with torch.inference_mode():
            for _ in range(max_tokens):
                logits = self._model(window, last_only=True)[0, -1].float()
                if temperature <= 0:
                    nxt = int(torch.argmax(logits))
                else:
                    probs = torch.softmax(logits / temperature, dim=-1)
                    nxt = int(torch.multinomial(probs, 1, generator=rng))
                out.append(nxt)
                piece = decoder.decode(bytes([nxt]))
                if piece:
                    text.append(piece)
                    yield piece
                step = torch.tensor([[nxt]], dtype=torch.long)
                window = torch.cat((window, step), dim=1)[:, -self._context :]
        tail = decoder.decode(b"", final=True)
        if tail:
            text.append(tail)
            yield tail
        yield Completion(
            text="".join(text),
            prompt_tokens=len(prompt_bytes),
            completion_tokens=len(out),
            finish_reason="length",
        )


class ByteLMWorkload:
    """Byte-level causal transformer LM implementing the ``Workload`` protocol."""

    name = "bytelm"

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

        with _num_threads(request.threads):
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
        n_params = sum(p.numel() for p in model.parameters())

        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": cfg.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=cfg.lr,
            betas=(0.9, 0.95),
            fused=device.type == "cuda" or None,
        )
        use_bf16 = cfg.precision == "bf16"
        offsets = torch.arange(cfg.context + 1)
        micro_tokens = cfg.batch_size * cfg.context
        high = train_data.numel() - cfg.context  # exclusive upper bound of window starts

        tokens = steps = 0
        next_check = cfg.check_every_tokens
        check_data = valid_data[:_CHECK_BYTES]
        last_loss = float("nan")
        window_sum, window_n = 0.0, 0
        reason = "budget"
        start = last_report = time.perf_counter()

        def report(now: float, loss: float) -> None:
            """Emit a heartbeat; the rate covers the whole run so far, warm-up included."""
            if progress is not None:
                rate = tokens / (now - start) if now > start else 0.0
                progress(TrainProgress(step=steps, tokens=tokens, loss=loss, tokens_per_s=rate))

        while True:
            if tokens + cfg.tokens_per_step > request.max_tokens:
                reason = "budget"
                break
            if should_stop is not None and should_stop():
                reason = "stopped"
                break
            if (
                request.max_seconds is not None
                and time.perf_counter() - start >= request.max_seconds
            ):
                reason = "time"
                break
            lr = _lr_at(steps, cfg, planned_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_loss = 0.0
            diverged = False
            for _ in range(cfg.grad_accum):
                ix = torch.randint(0, high, (cfg.batch_size,), generator=data_rng)
                window = train_data[ix[:, None] + offsets].to(device).long()
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    logits = model(window[:, :-1])
                loss = F.cross_entropy(
                    logits.float().reshape(-1, VOCAB_SIZE), window[:, 1:].reshape(-1)
                )
                tokens += micro_tokens
                value = loss.item()
                if not math.isfinite(value):
                    diverged = True
                    break
                (loss / cfg.grad_accum).backward()
                step_loss += value / cfg.grad_accum
            if not diverged:
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                diverged = not math.isfinite(float(grad_norm))
            if diverged:
                reason = "nan"
                last_loss = float("nan")
                break
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
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
        precision = cfg.precision
        common = {
            "tokens": tokens,
            "seconds": seconds,
            "final_train_loss": last_loss,
            "device": str(device),
            "precision": precision,
            "n_params": n_params,
            "steps": steps,
            "stopped_reason": reason,
        }
        if reason == "nan":
            return TrainResult(valid_bpb=float("nan"), artefact_path="", **common)

        valid = _score(model, valid_data, device)
        state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        config = {
            **_arch(cfg),
            "vocab_size": VOCAB_SIZE,
            "params": asdict(cfg),
            "seed": request.seed,
            "tokens": tokens,
            "steps": steps,
            "stopped_reason": reason,
            "valid_bpb": valid.bpb,
        }
        _save_atomic(
            {"format": ARTEFACT_FORMAT, "config": config, "state_dict": state}, request.out_path
        )
        return TrainResult(valid_bpb=valid.bpb, artefact_path=request.out_path, **common)

    def evaluate(
        self, artefact_path: str, files: list[str], max_bytes: int = 200_000, threads: int = 2
    ) -> EvalResult:
        """Score an artefact on CPU, exactly as ``train`` scores its validation files."""
        with _num_threads(threads):
            model, _ = _load_artefact(artefact_path)
            data = _to_tensor(_read_sample(files, max_bytes))
            return _score(model, data, torch.device("cpu"))

    def load(self, artefact_path: str, threads: int = 1) -> ByteLMGenerator:
        """Load for serving; sets torch's intra-op thread count for this process."""
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
        model, _ = _load_artefact(artefact_path)
        return ByteLMGenerator(model, Path(artefact_path).stem)
