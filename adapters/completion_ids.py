"""Completion ids that say what answered, signed, so feedback can be trusted to name it.

A client rates an answer by its id, possibly hours later and through another member of
the factory: the id itself carries the pinned model (``<line>:v<N>``) and how the request
reached it (``r``: routed by the line's name, so a canary's split chose the version;
``p``: pinned by the client), with a MAC over all of it, kind included, under the
factory's secret. Any member holding the secret can tell which version answered without a
lookup, and an id that was never issued (forged, mistyped, or any part edited) is refused.
Format: ``cmpl-<24 hex nonce><r|p><16 hex MAC>.<line>:v<N>`` (``chatcmpl-`` for chat),
still an opaque string to OpenAI clients.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

_ID = re.compile(
    r"(cmpl|chatcmpl)-([0-9a-f]{24})([rp])([0-9a-f]{16})\.([A-Za-z0-9_.-]{1,64}):v([0-9]{1,9})"
)
KINDS = ("cmpl", "chatcmpl")


@dataclass(frozen=True)
class Answered:
    """What an issued id names: the line, the version that answered, and whether the
    line's routing chose that version (False: the client pinned it)."""

    line: str
    version: int
    routed: bool = True

    @property
    def model_id(self) -> str:
        return f"{self.line}:v{self.version}"


class CompletionIds:
    """Issue and read signed completion ids. Without a key (a server on its own, in tests)
    a random one is made: ids are then readable only by this process."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)

    def issue(self, kind: str, model_id: str, routed: bool = True) -> str:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        nonce, how = secrets.token_hex(12), "r" if routed else "p"
        return f"{kind}-{nonce}{how}{self._mac(kind, nonce, how, model_id)}.{model_id}"

    def read(self, completion_id: str) -> Answered | None:
        """What an id names, or None when this factory never issued it."""
        match = _ID.fullmatch(completion_id)
        if match is None:
            return None
        kind, nonce, how, mac, line, version = match.groups()
        if not hmac.compare_digest(mac, self._mac(kind, nonce, how, f"{line}:v{version}")):
            return None
        return Answered(line, int(version), how == "r")

    def _mac(self, kind: str, nonce: str, how: str, model_id: str) -> str:
        payload = f"{kind}|{nonce}|{how}|{model_id}".encode()
        return hmac.new(self._key, payload, hashlib.sha256).hexdigest()[:16]
