"""Completion ids that say what answered, signed, so feedback can be trusted to name it.

A client rates an answer by its id, possibly hours later and through another member of
the factory: the id itself carries the pinned model (``<line>:v<N>``), with a MAC over it
under the factory's secret, so any member holding the secret can tell which version
answered without a lookup, and an id that was never issued (forged, mistyped, or a version
edited into it) is refused. Format: ``cmpl-<24 hex nonce><16 hex MAC>.<line>:v<N>``
(``chatcmpl-`` for chat), still an opaque string to OpenAI clients.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

_ID = re.compile(
    r"(cmpl|chatcmpl)-([0-9a-f]{24})([0-9a-f]{16})\.([A-Za-z0-9_.-]{1,64}):v([0-9]{1,9})"
)
KINDS = ("cmpl", "chatcmpl")


@dataclass(frozen=True)
class Answered:
    """What an issued id names: the line and the version that answered."""

    line: str
    version: int

    @property
    def model_id(self) -> str:
        return f"{self.line}:v{self.version}"


class CompletionIds:
    """Issue and read signed completion ids. Without a key (a server on its own, in tests)
    a random one is made: ids are then readable only by this process."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)

    def issue(self, kind: str, model_id: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        nonce = secrets.token_hex(12)
        return f"{kind}-{nonce}{self._mac(nonce, model_id)}.{model_id}"

    def read(self, completion_id: str) -> Answered | None:
        """The line and version an id names, or None when this factory never issued it."""
        match = _ID.fullmatch(completion_id)
        if match is None:
            return None
        _kind, nonce, mac, line, version = match.groups()
        if not hmac.compare_digest(mac, self._mac(nonce, f"{line}:v{version}")):
            return None
        return Answered(line, int(version))

    def _mac(self, nonce: str, model_id: str) -> str:
        return hmac.new(self._key, f"{nonce}|{model_id}".encode(), hashlib.sha256).hexdigest()[:16]
