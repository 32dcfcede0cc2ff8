"""Gateway connection tokens: user id, issue time and expiry, signed with HMAC-SHA256."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass

from missive.errors import InvalidToken
from missive.validation import require_uuid

MAX_TOKEN_CHARS = 256
"""Longest token read at all (a real one is about 100 characters); a longer one is
refused before any work is spent on it."""


@dataclass(frozen=True)
class TokenClaims:
    """What a valid token says."""

    user_id: str
    """The user the token was issued to."""
    expires_at: int
    """Unix seconds after which the token is refused (and its sockets closed)."""
    issued_at: int | None
    """Unix seconds it was issued; None for a token of the older three-part form,
    which a revocation (``tokens_valid_after``) always refuses."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: str, payload: str) -> bytes:
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest()


def issue_token(secret: str, user_id: str, *, ttl_seconds: int, now: float | None = None) -> str:
    """Returns ``<user id>.<issued at>.<expiry>.<signature>`` for one user."""
    if not secret:
        raise InvalidToken("GATEWAY_SECRET is not set: cannot sign tokens")
    uid = require_uuid(user_id, "user_id")
    issued = int(now if now is not None else time.time())
    expires = issued + int(ttl_seconds)
    payload = f"{uid}.{issued}.{expires}"
    return f"{payload}.{_b64(_sign(secret, payload))}"


def read_token(secret: str, token: object, *, now: float | None = None) -> TokenClaims:
    """Returns the claims of a valid token.

    Also reads the older ``<user id>.<expiry>.<signature>`` form.

    Raises:
        InvalidToken: missing, too long, malformed, forged or expired (the message
            says which).
    """
    if not secret:
        raise InvalidToken("GATEWAY_SECRET is not set: cannot verify tokens")
    if not isinstance(token, str) or not token:
        raise InvalidToken("token missing")
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidToken(f"token too long: {len(token)} characters, at most {MAX_TOKEN_CHARS}")
    parts = token.split(".")
    if len(parts) not in (3, 4) or not all(part.isdigit() for part in parts[1:-1]):
        raise InvalidToken("token malformed")
    payload, sig = ".".join(parts[:-1]), parts[-1]
    try:
        given = _unb64(sig)
    except ValueError:
        raise InvalidToken("token malformed") from None
    if not hmac.compare_digest(_sign(secret, payload), given):
        raise InvalidToken("token signature invalid")
    issued = int(parts[1]) if len(parts) == 4 else None
    expires = int(parts[-2])
    if expires <= (now if now is not None else time.time()):
        raise InvalidToken("token expired")
    try:
        user_id = require_uuid(parts[0], "user_id")
    except Exception:
        raise InvalidToken("token malformed") from None
    return TokenClaims(user_id=user_id, expires_at=expires, issued_at=issued)


def verify_token(secret: str, token: object, *, now: float | None = None) -> str:
    """Returns the user id of a valid token (see ``read_token``).

    Raises:
        InvalidToken: missing, too long, malformed, forged or expired.
    """
    return read_token(secret, token, now=now).user_id
