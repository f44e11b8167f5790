"""The optional LLM advisor, through LiteLLM (any provider, or a local OpenAI-compatible server).

It explains what a cycle decided, in words an operator reads in the audit log. It never
acts: decisions stay in the agents' pure functions and the policy's guardrails. LiteLLM is
imported lazily (its import is heavy and, unless told otherwise, downloads a price map).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

from policies.model import AdvisorPolicy


@dataclass(frozen=True)
class AdvisorAnswer:
    text: str
    prompt_tokens: int
    completion_tokens: int
    model: str

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class AdvisorError(RuntimeError):
    """The LLM could not answer (network, auth, provider error); the cycle carries on."""


class Advisor(Protocol):
    model: str

    def explain(self, question: str, max_tokens: int) -> AdvisorAnswer: ...


class LiteLLMAdvisor:
    def __init__(self, spec: AdvisorPolicy) -> None:
        self.spec = spec
        self.model = spec.model

    def explain(self, question: str, max_tokens: int) -> AdvisorAnswer:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm

        key = os.environ.get(self.spec.api_key_env) if self.spec.api_key_env else None
        if key is None and self.spec.api_base:
            key = "unused"  # local OpenAI-compatible servers still expect the header
        try:
            resp = litellm.completion(
                model=self.spec.model,
                api_base=self.spec.api_base,
                api_key=key,
                messages=[
                    {
                        "role": "system",
                        "content": "You explain an ML controller's decisions "
                        "to the operator who runs it, briefly and with the figures.",
                    },
                    {"role": "user", "content": question},
                ],
                max_tokens=max_tokens,
                timeout=self.spec.timeout_s,
                num_retries=0,
            )
            usage = getattr(resp, "usage", None)
            text = resp.choices[0].message.content or ""
        except Exception as exc:
            raise AdvisorError(f"{type(exc).__name__}: {exc}") from exc
        return AdvisorAnswer(
            text=text.strip(),
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            model=self.spec.model,
        )


def make_advisor(spec: AdvisorPolicy | None) -> Advisor | None:
    return LiteLLMAdvisor(spec) if spec is not None else None
