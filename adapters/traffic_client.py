"""A client that sends a line realistic requests: pieces of real text as prompts, at a
steady rate, from a few threads. `aifactory traffic` and the demo's own traffic use it.

Its requests name themselves (``user: "aifactory-demo-<n>"``, so a canary keeps each
simulated user on one model) and what it sent, answered and failed is counted per model.
The prompts come from a callable, so what users ask about can change while it runs.
"""

from __future__ import annotations

import random
import sysconfig
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

USER_PREFIX = "aifactory-demo"
PROMPT_BYTES = 200


def stdlib_prompts(modules: list[str], limit_bytes: int = 400_000) -> list[str]:
    """Pieces of the named standard-library packages or modules (their sources; for
    `pydoc_data`, the documentation's prose), about `PROMPT_BYTES` each."""
    root = Path(sysconfig.get_paths()["stdlib"])
    text = []
    for name in modules:
        pkg = root / name
        files = sorted(pkg.rglob("*.py")) if pkg.is_dir() else [root / f"{name}.py"]
        for path in files:
            if path.exists() and "test" not in path.parts:
                text.append(path.read_text(encoding="utf-8", errors="replace"))
    joined = "\n".join(text)[:limit_bytes]
    if not joined:
        raise ValueError(f"no standard-library text for {modules}")
    return [joined[i : i + PROMPT_BYTES] for i in range(0, len(joined), PROMPT_BYTES)]


@dataclass
class TrafficCounts:
    sent: int = 0
    answered: int = 0
    failed: int = 0
    models: dict[str, int] = field(default_factory=dict)
    last_error: str = ""


class TrafficClient:
    """Sends completions to `url` for `line` at `rate_per_s` in total, until stopped."""

    def __init__(
        self,
        url: str,
        line: str,
        prompts: Callable[[], list[str]],
        rate_per_s: float = 4.0,
        workers: int = 2,
        max_tokens: int = 16,
        users: int = 50,
        seed: int = 0,
    ) -> None:
        self.url = url.rstrip("/") + "/v1/completions"
        self.line, self.prompts, self.rate_per_s = line, prompts, rate_per_s
        self.workers, self.max_tokens, self.users = workers, max_tokens, users
        self.counts = TrafficCounts()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> TrafficClient:
        for i in range(self.workers):
            thread = threading.Thread(target=self._run, name=f"aifactory-traffic-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout_s: float = 10.0) -> TrafficCounts:
        """Stop sending; wait up to `timeout_s` in all for requests in flight (0: do not
        wait, the threads end after their request)."""
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return self.counts

    def run_for(self, seconds: float) -> TrafficCounts:
        self.start()
        self._stop.wait(seconds)
        return self.stop()

    def _run(self) -> None:
        interval = self.workers / self.rate_per_s
        with httpx.Client(timeout=30) as client:
            next_at = time.monotonic()
            while not self._stop.is_set():
                self._send(client)
                next_at += interval
                self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _send(self, client: httpx.Client) -> None:
        with self._lock:
            prompts = self.prompts()
            prompt = prompts[self._rng.randrange(len(prompts))] if prompts else ""
            user = f"{USER_PREFIX}-{self._rng.randrange(self.users)}"
            self.counts.sent += 1
        body = {"model": self.line, "prompt": prompt, "max_tokens": self.max_tokens, "user": user}
        try:
            r = client.post(self.url, json=body)
            ok, model, error = r.status_code == 200, "", f"{r.status_code}: {r.text[:200]}"
            if ok:
                model = r.json().get("model", "")
        except httpx.HTTPError as exc:
            ok, model, error = False, "", f"{type(exc).__name__}: {exc}"
        with self._lock:
            if ok:
                self.counts.answered += 1
                self.counts.models[model] = self.counts.models.get(model, 0) + 1
            else:
                self.counts.failed += 1
                self.counts.last_error = error
