"""Bearer tokens for writes; reads stay open.

Tokens come from the settings ``TOKENS_FILE`` (a path) and ``TOKENS`` (the same JSON inline, or a
mapping given to ``create_app``)::

    {"tokens": [{"name": "bench-ci", "role": "ingest", "token": "<at least 16 characters>"},
                {"name": "alice", "role": "admin", "token": "..."}]}

Roles: ``ingest`` may upload measurements; ``admin`` may do that and change tables (fits,
activation, rollback). A name may have several tokens (rotation); a token value may appear once.
A malformed token setting stops the application from starting.

Rotation without a restart: the file is read at start-up and again whenever it changes. Each
worker stats the path (not an open descriptor: a Kubernetes Secret volume is updated by swapping a
symlink, so the path leads to a new file) at most once per :data:`RELOAD_INTERVAL` seconds, on a
write request. A changed file that is unreadable or malformed is logged as an error and the tokens
in force are kept, so a bad edit never locks every writer out (nor lets anyone in).

A route calls :func:`require_role` and gets the caller's token name (the actor recorded in the
database). The presented token is hashed and compared with every configured token's hash by
:func:`hmac.compare_digest`, all of them each time, so neither the answer nor its timing says which
token came closest. Answers (problem+json):

- no token configured at all: 403 ``writes-disabled`` — writes are never silently allowed;
- no or malformed ``Authorization`` header, or an unknown token: 401 with
  ``WWW-Authenticate: Bearer`` (RFC 6750);
- a token whose role is not enough: 403 ``forbidden``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from flask import Flask, Response, current_app, request

from overhead_service import jsonio
from overhead_service.errors import PROBLEM_BASE, OverheadServiceError
from overhead_service.web.errors import PROBLEM_JSON

__all__ = [
    "ROLES",
    "RELOAD_INTERVAL",
    "AuthProblem",
    "Token",
    "TokenRegistry",
    "TokenSource",
    "init_app",
    "parse_tokens",
    "require_role",
]

EXTENSION = "overhead_service.tokens"
ROLES: Final = ("ingest", "admin")
MIN_TOKEN_LENGTH: Final = 16
REALM: Final = "overhead-service"
RELOAD_INTERVAL: Final = 1.0  # seconds between two looks at TOKENS_FILE, per worker

_log = logging.getLogger(__name__)

# The token roles that satisfy each required role.
_SATISFIES: Final = {"ingest": frozenset({"ingest", "admin"}), "admin": frozenset({"admin"})}


@dataclass(frozen=True)
class Token:
    """A configured token: who it is, what it may do, and the SHA-256 of its secret."""

    name: str
    role: str
    digest: bytes


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


def parse_tokens(document: Any, source: str) -> list[Token]:
    """The tokens of a ``{"tokens": [...]}`` document; :class:`ValueError` naming ``source`` otherwise."""
    if type(document) is not dict or set(document) != {"tokens"} or type(document["tokens"]) is not list:
        raise ValueError(f"{source}: must be a JSON object with one member, a 'tokens' array")
    tokens: list[Token] = []
    for index, entry in enumerate(document["tokens"]):
        where = f"{source}: tokens[{index}]"
        if type(entry) is not dict or set(entry) != {"name", "role", "token"}:
            raise ValueError(f"{where} must be an object with exactly name, role and token")
        name, role, secret = entry["name"], entry["role"], entry["token"]
        if type(name) is not str or not name or len(name) > 200:
            raise ValueError(f"{where}.name must be a non-empty string of at most 200 characters")
        if role not in ROLES:
            raise ValueError(f"{where}.role must be one of: {', '.join(ROLES)}")
        if type(secret) is not str or len(secret) < MIN_TOKEN_LENGTH or secret != secret.strip():
            raise ValueError(
                f"{where}.token must be a string of at least {MIN_TOKEN_LENGTH} characters, "
                "without surrounding whitespace"
            )
        tokens.append(Token(name=name, role=role, digest=_digest(secret)))
    return tokens


class TokenRegistry:
    """The configured tokens of one application."""

    def __init__(self, tokens: list[Token]) -> None:
        digests = [token.digest for token in tokens]
        if len(set(digests)) != len(digests):
            raise ValueError("the same token value is configured twice")
        self._tokens = tuple(tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def identify(self, secret: str) -> Token | None:
        """The token whose secret is ``secret``, comparing against every token (constant time)."""
        presented = _digest(secret)
        found: Token | None = None
        for token in self._tokens:  # no early exit
            if hmac.compare_digest(token.digest, presented):
                found = token
        return found


def _decode(text: str | bytes, source: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{source}: not valid JSON: {exc}") from None


# The file's identity and version as stat sees it: a replaced file has a new inode, an edited one a
# new mtime or size.
_Signature = tuple[int, int, int, int]


def _signature(path: str) -> _Signature:
    status = os.stat(path)  # follows symlinks: a Secret volume's ..data swap yields the new file
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


def _read_tokens_file(path: str) -> list[Token]:
    source = f"TOKENS_FILE {path}"
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ValueError(f"{source}: cannot read it: {exc}") from None
    return parse_tokens(_decode(text, source), source)


class TokenSource:
    """The tokens in force for one application: the inline ones, plus the file's as of its last
    change. :meth:`current` is cheap; it looks at the file at most once per ``interval``."""

    def __init__(
        self,
        path: str | None,
        inline: list[Token],
        *,
        interval: float = RELOAD_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._inline = tuple(inline)
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._signature: _Signature | None = None
        self._last_error: str | None = None
        file_tokens: list[Token] = []
        if path:
            # Stat before reading: a change in between is then seen, not lost, at the next look.
            with contextlib.suppress(OSError):  # reading it fails below, with the reason
                self._signature = _signature(path)
            file_tokens = _read_tokens_file(path)
        self._registry = TokenRegistry([*file_tokens, *self._inline])
        self._next_check = clock() + interval

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TokenSource:
        """Tokens from ``TOKENS_FILE`` and ``TOKENS`` (either may be absent); :class:`ValueError`
        if either is malformed."""
        inline: list[Token] = []
        setting = config.get("TOKENS")
        if setting:
            document = _decode(setting, "TOKENS") if isinstance(setting, str | bytes) else setting
            inline = parse_tokens(document, "TOKENS")
        path = config.get("TOKENS_FILE")
        return cls(str(path) if path else None, inline)

    def current(self) -> TokenRegistry:
        """The tokens in force, after re-reading the file if it changed since the last look."""
        if self.path is None or self._clock() < self._next_check:
            return self._registry
        # One thread looks; the others go on with the tokens in force rather than wait for it.
        if self._lock.acquire(blocking=False):
            try:
                self._next_check = self._clock() + self._interval
                self._reload_if_changed(self.path)
            finally:
                self._lock.release()
        return self._registry

    def _reload_if_changed(self, path: str) -> None:
        try:
            signature = _signature(path)
        except OSError as exc:
            self._error(f"TOKENS_FILE {path}: cannot read it: {exc}")
            return
        if signature == self._signature:
            return
        # Remembered even if the new content is bad: the error is logged once, and the next
        # change (the fix) is read.
        self._signature = signature
        try:
            registry = TokenRegistry([*_read_tokens_file(path), *self._inline])
        except ValueError as exc:
            self._error(str(exc))
            return
        self._registry, self._last_error = registry, None
        _log.info("TOKENS_FILE %s changed: %d tokens in force now", path, len(registry))

    def _error(self, message: str) -> None:
        if message != self._last_error:  # once per distinct problem, not once per second
            _log.error("%s; keeping the %d tokens in force", message, len(self._registry))
        self._last_error = message


# --- answers ---------------------------------------------------------------------------------------


class AuthProblem(OverheadServiceError):
    """A write refused for want of the right credentials; answered as problem+json."""

    status = 401
    kind = "unauthorized"
    title = "Unauthorized"

    def __init__(self, detail: str, *, challenge_error: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.challenge_error = challenge_error

    def headers(self) -> dict[str, str]:
        challenge = f'Bearer realm="{REALM}"'
        if self.challenge_error:
            challenge += f', error="{self.challenge_error}"'
        return {"WWW-Authenticate": challenge}

    def document(self) -> dict[str, Any]:
        return {
            "type": PROBLEM_BASE + self.kind,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }


class Forbidden(AuthProblem):
    """A valid token whose role does not allow this."""

    status = 403
    kind = "forbidden"
    title = "Forbidden"


class WritesDisabled(AuthProblem):
    """No token is configured, so nobody may write."""

    status = 403
    kind = "writes-disabled"
    title = "Writes disabled"

    def headers(self) -> dict[str, str]:
        return {}


def require_role(role: str) -> str:
    """The name of the caller's token if it has ``role`` (``admin`` also has ``ingest``).

    Raises :class:`AuthProblem` (answered 401 or 403) otherwise. Call it first in a write route,
    before reading the body.
    """
    allowed = _SATISFIES[role]
    source: TokenSource = current_app.extensions[EXTENSION]
    tokens = source.current()
    if not len(tokens):
        raise WritesDisabled(
            "writes are disabled: no API tokens are configured "
            "(set OVERHEAD_TOKENS_FILE or OVERHEAD_TOKENS; see the README)"
        )
    header = request.headers.get("Authorization")
    if not header:
        raise AuthProblem(f"this operation needs a bearer token with role {role}")
    scheme, _, secret = header.partition(" ")
    secret = secret.strip(" ")
    if scheme.lower() != "bearer" or not secret:
        raise AuthProblem(
            "the Authorization header must be 'Bearer <token>'", challenge_error="invalid_request"
        )
    token = tokens.identify(secret)
    if token is None:
        raise AuthProblem("the bearer token is not valid", challenge_error="invalid_token")
    if token.role not in allowed:
        raise Forbidden(
            f"token {token.name!r} has role {token.role}; this operation needs role {role}",
            challenge_error="insufficient_scope",
        )
    return token.name


def _on_auth_problem(error: AuthProblem) -> Response:
    return current_app.response_class(
        jsonio.dumps(error.document()), status=error.status, mimetype=PROBLEM_JSON, headers=error.headers()
    )


def init_app(app: Flask) -> None:
    """Read the tokens (a bad setting raises :class:`ValueError`) and register the error handler."""
    app.extensions[EXTENSION] = TokenSource.from_config(app.config)
    app.register_error_handler(AuthProblem, _on_auth_problem)
