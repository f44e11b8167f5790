"""Streamed answers: OpenAI's Server-Sent Events, a chunk per piece of text, the finish,
the optional usage and ``[DONE]``, each request counted exactly once however its stream
ends (see ``adapters.serving``'s docstring for the protocol)."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import StreamingResponse

from adapters.serving_wire import Job, StreamOptions, generation_failed, prompt_window, usage
from adapters.workload.protocol import Completion

STREAM_PIECE_CHARS = 16
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

#: counts one request: (job, its completion or None when it failed, latency s, streamed)
Record = Callable[[Job, Completion | None, float, bool], None]


def sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


@dataclass(frozen=True)
class ChunkMaker:
    """Renders the SSE chunks of one streamed answer in the endpoint's OpenAI format."""

    chat: bool
    model_id: str
    include_usage: bool
    cid: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.cid,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model_id,
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def _choice(self, text: str | None, finish_reason: str | None) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {} if text is None else {"content": text}
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {"text": text or "", "index": 0, "logprobs": None, "finish_reason": finish_reason}

    def opening(self) -> bytes | None:
        """Chat streams announce the assistant role first; text completions have no preamble."""
        if not self.chat:
            return None
        choice = {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
        return sse(self._chunk([choice]))

    def piece(self, text: str) -> bytes:
        return sse(self._chunk([self._choice(text, None)]))

    def finish(self, finish_reason: str) -> bytes:
        return sse(self._chunk([self._choice(None, finish_reason)]))

    def usage(self, result: Completion) -> bytes:
        chunk = self._chunk([])
        chunk["usage"] = usage(result)
        return sse(chunk)


def start_stream(
    job: Job, chat: bool, options: StreamOptions | None, record: Record
) -> StreamingResponse:
    """Start generating now (so early failures are plain 500s) and stream the rest as SSE."""
    started = time.perf_counter()
    generator = job.served.generator
    stream_fn = getattr(generator, "stream", None)
    items: Iterator[str | Completion]
    closer: Callable[[], object] | None = None
    try:
        if callable(stream_fn):
            source = iter(
                stream_fn(job.prompt, job.max_tokens, temperature=job.temperature, seed=job.seed)
            )
            closer = getattr(source, "close", None)
            head = list(itertools.islice(source, 1))  # the first piece, or [] if none
            items = itertools.chain(head, source)
        else:
            result = generator.generate(
                job.prompt, job.max_tokens, temperature=job.temperature, seed=job.seed
            )
            text = result.text
            pieces = [
                text[i : i + STREAM_PIECE_CHARS] for i in range(0, len(text), STREAM_PIECE_CHARS)
            ]
            items = iter([*pieces, result])
    except Exception as exc:
        record(job, None, time.perf_counter() - started, True)
        if callable(closer):
            closer()
        raise generation_failed(exc) from exc
    maker = ChunkMaker(
        chat=chat,
        model_id=job.served.model_id,
        include_usage=bool(options and options.include_usage),
        cid=job.completion_id,
    )
    body = _sse_body(job, items, maker, started, closer, record)
    # Start the body here: a generator that never ran would skip its ``finally`` when
    # discarded (client gone before the first chunk), leaving the request uncounted.
    first = next(body)
    return StreamingResponse(
        itertools.chain([first], body),
        media_type="text/event-stream",
        headers={**SSE_HEADERS, **prompt_window(job)},
    )


def _sse_body(
    job: Job,
    items: Iterator[str | Completion],
    maker: ChunkMaker,
    started: float,
    closer: Callable[[], object] | None,
    record: Record,
) -> Iterator[bytes]:
    """Yield the SSE chunks and record the request exactly once, however the stream ends.

    A client that disconnects closes this generator; the request is then counted with the
    tokens generated so far, and the generator's own iterator is closed to stop the work.
    """
    texts: list[str] = []
    final: Completion | None = None
    failed = False
    try:
        opening = maker.opening()
        if opening is not None:
            yield opening
        # Every path below yields at least once more, so a caller may prime with next().
        while True:
            try:
                item = next(items, None)
            except Exception as exc:
                failed = True
                err = generation_failed(exc)
                body = {
                    "error": {
                        "message": err.message,
                        "type": err.err_type,
                        "param": None,
                        "code": err.code,
                    }
                }
                yield sse(body)
                return
            if item is None:
                break
            if isinstance(item, Completion):
                final = item
            elif item:
                texts.append(item)
                yield maker.piece(item)
        result = final or counted(job, "".join(texts))
        yield maker.finish(result.finish_reason)
        if maker.include_usage:
            yield maker.usage(result)
        yield sse("[DONE]")
    finally:
        latency = time.perf_counter() - started
        if failed:
            record(job, None, latency, True)
        else:
            result = final or counted(job, "".join(texts))
            record(job, result, latency, True)
        if callable(closer):
            closer()  # stops a native stream early if the client went away


def counted(job: Job, text: str) -> Completion:
    """Token counts for a stream whose generator did not report them (UTF-8 bytes)."""
    completion_tokens = len(text.encode("utf-8"))
    return Completion(
        text=text,
        prompt_tokens=len(job.prompt.encode("utf-8")),
        completion_tokens=completion_tokens,
        finish_reason="length" if completion_tokens >= job.max_tokens else "stop",
    )
