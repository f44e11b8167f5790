"""Operators' bearer tokens for the console: each carries a name that goes into the audit
event of every action it takes ("approved by ops-alice").

Tokens come from an environment variable (``name:token`` pairs separated by commas) or,
when it is unset, from ``console-tokens`` in the state directory: written at first start
with one token named ``operator``, readable by its owner only (0600). A token file others
can read is refused, as ssh refuses a private key others can read. Bearer tokens in a
header, never cookies: a browser never sends them on its own, so there is no CSRF.
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

TOKENS_FILE = "console-tokens"
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_TOKEN = re.compile(r"^[A-Za-z0-9_.~+/=-]+$")  # what a header carries as is (no , # or space)
_MIN_TOKEN_CHARS = 16


class TokenError(ValueError):
    """The tokens cannot be used; the message says where and why, never a token."""


@dataclass(frozen=True)
class ConsoleTokens:
    """Who each token belongs to; ``source`` says where they came from (for the log)."""

    names: tuple[tuple[str, str], ...]  # (name, token)
    source: str

    def who(self, authorization: str | None) -> str | None:
        """The name behind an ``Authorization: Bearer TOKEN`` header, else None. Every
        token is compared, in constant time, so timing tells nothing of which one is near."""
        if not authorization:
            return None
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return None
        given_b = given.strip().encode()
        found = None
        for name, token in self.names:
            if hmac.compare_digest(given_b, token.encode()):
                found = name
        return found


def parse_tokens(text: str, where: str) -> tuple[tuple[str, str], ...]:
    """``name:token`` entries separated by commas or new lines; ``#`` starts a comment.

    A problem names the entry by its place, never by its text: an entry written the wrong
    way round (TOKEN:name) would otherwise put the token in the log and the audit log."""
    pairs: list[tuple[str, str]] = []
    seen: dict[str, int] = {}  # name -> the entry that gave it
    entries = [e for line in text.splitlines() for e in line.split("#", 1)[0].split(",")]
    for n, entry in enumerate((e.strip() for e in entries), start=1):
        if not entry:
            continue
        name, token = _check_entry(entry, f"{where}: entry {n}")
        if name in seen:
            raise TokenError(
                f"{where}: entry {n} has the name of entry {seen[name]} (a name appears twice)"
            )
        seen[name] = n
        pairs.append((name, token))
    if not pairs:
        raise TokenError(f"{where}: no token in it")
    return tuple(pairs)


def _check_entry(entry: str, place: str) -> tuple[str, str]:
    """One entry's name and token, or a TokenError that names ``place`` and quotes nothing."""
    name, sep, token = entry.partition(":")
    name, token = name.strip(), token.strip()
    if not sep or not _NAME.match(name):
        raise TokenError(
            f"{place} must be NAME:TOKEN with a name of letters, digits and _.@- (at most 64)"
        )
    if not _TOKEN.match(token):
        raise TokenError(f"{place}: its token may hold only letters, digits and _.~+/=-")
    if len(token) < _MIN_TOKEN_CHARS:
        raise TokenError(
            f"{place}: its token is shorter than {_MIN_TOKEN_CHARS} characters "
            "(an entry is NAME:TOKEN, the name first)"
        )
    return name, token


def load_tokens(
    env_name: str, env_value: str | None, state_dir: Path, create: bool = True
) -> ConsoleTokens:
    """From the variable when it is set and not empty, else the state directory's file
    (created when missing, with ``create``)."""
    if env_value and env_value.strip():
        return ConsoleTokens(parse_tokens(env_value, env_name), f"${env_name}")
    path = state_dir / TOKENS_FILE
    try:
        if not path.exists() and create:
            _write_first_token(path)
        return _read_file(path)
    except OSError as exc:
        raise TokenError(f"{path}: {exc.strerror or exc}") from exc


def _read_file(path: Path) -> ConsoleTokens:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TokenError(
            f"{path} can be read by others (mode {stat.S_IMODE(mode):o}); run `chmod 600 {path}`"
        )
    return ConsoleTokens(parse_tokens(path.read_text(), str(path)), str(path))


def _write_first_token(path: Path) -> None:
    """One token named ``operator``, created with mode 0600 (never wider, not even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = (
        "# aifactory console tokens: one NAME:TOKEN per line. The name goes into the\n"
        "# audit log of every action taken with the token. Keep this file mode 0600.\n"
        f"operator:{secrets.token_urlsafe(32)}\n"
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another member of the state directory was first
        return
    with os.fdopen(fd, "w") as fh:
        fh.write(body)


class TokenSource:
    """The tokens in force: a file is read again when it changes, so a token added or
    revoked takes effect without a restart. An edit that cannot be used (a typo, a mode
    others can read, the file gone) refuses every token until it is fixed: a revocation
    must never be undone by a failed read. ``problem`` says why."""

    def __init__(self, env_name: str, env_value: str | None, state_dir: Path) -> None:
        self._env = (env_name, env_value)
        self._dir = state_dir
        self.tokens = load_tokens(env_name, env_value, state_dir)
        self._path = None if self.tokens.source.startswith("$") else Path(self.tokens.source)
        self._stamp = self._read_stamp()
        self._lock = threading.Lock()
        self.problem: str | None = None

    def _read_stamp(self) -> tuple[int, int, int, int] | None:
        """What tells an edit: the size too, as an edit within the clock's tick can leave
        the times as they were."""
        if self._path is None:
            return None
        try:
            st = self._path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)

    def current(self) -> ConsoleTokens:
        with self._lock:  # request threads ask at once; one of them reads the file
            stamp = self._read_stamp()
            if stamp == self._stamp:
                return self.tokens
            self._stamp = stamp
            try:
                self.tokens = load_tokens(*self._env, self._dir, create=False)
                self.problem = None
            except TokenError as exc:
                self.tokens = ConsoleTokens((), self.tokens.source)  # fail closed
                self.problem = str(exc)
            return self.tokens
