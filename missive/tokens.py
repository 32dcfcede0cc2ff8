"""Gateway connection tokens: user id and expiry, signed with HMAC-SHA256."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from missive.errors import InvalidToken
from missive.validation import require_uuid


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue_token(secret: str, user_id: str, *, ttl_seconds: int, now: float | None = None) -> str:
    """Returns ``<user id>.<expiry>.<signature>`` for one user."""
    if not secret:
        raise InvalidToken("GATEWAY_SECRET is not set: cannot sign tokens")
    uid = require_uuid(user_id, "user_id")
    expires = int((now if now is not None else time.time()) + ttl_seconds)
    payload = f"{uid}.{expires}"
    sig = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{_b64(sig)}"


def verify_token(secret: str, token: object, *, now: float | None = None) -> str:
    """Returns the user id of a valid token.

    Raises:
        InvalidToken: missing, malformed, forged or expired (the message says which).
    """
    if not secret:
        raise InvalidToken("GATEWAY_SECRET is not set: cannot verify tokens")
    if not isinstance(token, str) or not token:
        raise InvalidToken("token missing")
    parts = token.split(".")
    if len(parts) != 3 or not parts[1].isdigit():
        raise InvalidToken("token malformed")
    uid, expires, sig = parts
    expected = hmac.new(secret.encode(), f"{uid}.{expires}".encode(), hashlib.sha256).digest()
    try:
        given = _unb64(sig)
    except ValueError:
        raise InvalidToken("token malformed") from None
    if not hmac.compare_digest(expected, given):
        raise InvalidToken("token signature invalid")
    if int(expires) <= (now if now is not None else time.time()):
        raise InvalidToken("token expired")
    try:
        return require_uuid(uid, "user_id")
    except Exception:
        raise InvalidToken("token malformed") from None
