"""The OpenAI wire format of serving: request bodies, the bound request (``Job``), the
error envelope and the answer bodies. ``adapters.serving`` routes and counts; this module
only says what a request and an answer look like (see its docstring for the format)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from adapters.workload.protocol import Completion, TextGenerator


class Served(Protocol):
    """What an answer needs of the model that gives it (``adapters.serving.ServedModel``;
    named by shape, so this module never imports the server)."""

    model_id: str
    version: int
    generator: TextGenerator
    line: str


PROMPT_WINDOW_HEADER = "X-Aifactory-Prompt-Window"

# torch's generators take a seed that fits 64 bits; outside this range they raise, which
# would be a 500 counted against the model. Signed 64-bit, as OpenAI documents ``seed``.
_SEED_MIN = -(2**63)
_SEED_END = 2**63


class StreamOptions(BaseModel):
    """``stream_options``; only ``include_usage`` means anything here."""

    include_usage: bool = False


class CompletionRequest(BaseModel):
    """Request body of ``POST /v1/completions``; bounds follow the OpenAI API."""

    model: str
    prompt: str | list[str]
    max_tokens: int = Field(default=16, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    seed: int | None = Field(default=None, ge=_SEED_MIN, lt=_SEED_END)
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # during a canary, requests with the same user stay on one model
    store: bool | None = None  # False: never captured as training data (OpenAI's parameter)


class ContentPart(BaseModel):
    """One element of a list-valued message ``content``; only ``type == "text"`` is served."""

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None


class ChatRequest(BaseModel):
    """Request body of ``POST /v1/chat/completions``.

    ``max_completion_tokens`` (the newer name) wins over ``max_tokens``; with neither, the
    reply may use the line's whole ``max_tokens_limit``.
    """

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    seed: int | None = Field(default=None, ge=_SEED_MIN, lt=_SEED_END)
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # during a canary, requests with the same user stay on one model
    store: bool | None = None  # False: never captured as training data (OpenAI's parameter)


@dataclass(frozen=True)
class Job:
    """One validated generation request, bound to the line and model captured at its start."""

    endpoint: Any  # the line's ``adapters.serving.LineEndpoint``, which counts the answer
    served: Served
    prompt: str
    max_tokens: int
    temperature: float
    seed: int | None
    sample_rate: float = 0.0
    completion_id: str = ""  # issued at the start: names the answer (feedback, capture)
    store: bool = True  # False: the client asked that nothing of it be kept
    asked_store: bool | None = None  # what the client said ("store"), None: nothing


class ApiError(Exception):
    """Internal signal carrying an OpenAI-style error out of an endpoint."""

    def __init__(self, status: int, message: str, err_type: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.err_type = err_type
        self.code = code


def error_response(status: int, message: str, err_type: str, code: str) -> JSONResponse:
    """Build the error envelope the official OpenAI clients know how to parse."""
    body = {"error": {"message": message, "type": err_type, "param": None, "code": code}}
    return JSONResponse(status_code=status, content=body)


def describe_validation(errors: Sequence[Any]) -> str:
    """Turn pydantic's error list into one readable line for the client."""
    parts: list[str] = []
    for err in errors:
        if err.get("type") == "json_invalid":
            parts.append("body is not valid JSON")
            continue
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        msg = str(err.get("msg", "invalid value"))
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "Invalid request: " + ("; ".join(parts) if parts else "malformed body")


def invalid(message: str, code: str = "invalid_request") -> ApiError:
    return ApiError(400, message, "invalid_request_error", code)


def check_n(n: int) -> None:
    if n != 1:
        raise invalid(f"Only n=1 is supported (got n={n})", "unsupported_parameter")


def usage(result: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def render_chat(messages: Sequence[ChatMessage]) -> str:
    """Flatten chat messages into the plain-text template described in the module docstring."""
    lines: list[str] = []
    for i, message in enumerate(messages):
        content = message.content
        if content is None:
            if message.role != "assistant":
                raise invalid(f"messages.{i}.content: required for role '{message.role}'")
            text = ""
        elif isinstance(content, str):
            text = content
        else:
            texts: list[str] = []
            for j, part in enumerate(content):
                if part.type != "text":
                    raise invalid(
                        f"messages.{i}.content.{j}: only text content parts are supported "
                        f"(got type '{part.type}')"
                    )
                if part.text is None:
                    raise invalid(f"messages.{i}.content.{j}.text: field required")
                texts.append(part.text)
            text = "\n".join(texts)
        role = "system" if message.role == "developer" else message.role
        lines.append(f"{role}: {text}\n")
    return "".join(lines) + "assistant: "


def single_prompt(prompt: str | list[str]) -> str:
    """Reject what pydantic cannot express; return the single prompt string."""
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise invalid(
                f"prompt must be a string or a list of exactly one string (got {len(prompt)} items)"
            )
        return prompt[0]
    return prompt


def answer_body(job: Job, result: Completion, chat: bool) -> dict[str, Any]:
    """The answer, not streamed, of ``/v1/chat/completions`` (``chat``) or ``/v1/completions``:
    the same envelope, with the text as a message or as text."""
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": result.text}}
    else:
        choice = {"text": result.text, "index": 0}
    return {
        "id": job.completion_id,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": job.served.model_id,
        "choices": [{**choice, "logprobs": None, "finish_reason": result.finish_reason}],
        "usage": usage(result),
    }


def prompt_window(job: Job) -> dict[str, str]:
    """The header that says the model read only the end of the prompt: a byte model with a
    sliding window sees its last ``context`` bytes. Empty when it reads the whole prompt or
    its generator does not say its context."""
    context = getattr(job.served.generator, "context", None)
    if not isinstance(context, int) or isinstance(context, bool) or context < 1:
        return {}
    size = len(job.prompt.encode("utf-8", "surrogatepass"))
    if size <= context:
        return {}
    return {PROMPT_WINDOW_HEADER: f"{context} of {size} bytes"}


def generation_failed(exc: BaseException) -> ApiError:
    return ApiError(
        500, f"Generation failed: {type(exc).__name__}", "server_error", "generation_failed"
    )
