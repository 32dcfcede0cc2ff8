"""Token revocation ("logout everywhere"): a per-user instant before which tokens are refused."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from missive.errors import TokenRevoked, UserNotFound
from missive.models import User
from missive.tokens import TokenClaims
from missive.validation import require_uuid

WAKE_TOKENS_REVOKED = "missive_tokens_revoked"
"""PostgreSQL ``NOTIFY`` channel; the payload is the user id whose tokens were revoked.
Every gateway process listens and closes that user's sockets it holds."""


@dataclass(frozen=True)
class Revocation:
    """What ``revoke`` stored."""

    user_id: str
    """Whose tokens."""
    tokens_valid_after: datetime
    """Tokens issued before this instant (rounded up to the second) are refused."""


def valid_after_seconds(at: datetime | None) -> int | None:
    """The first issue second still valid after a revocation at ``at`` (None: never revoked).

    Tokens carry whole seconds, so a token issued in the second of the revocation
    is refused too: issue a new one a second later.
    """
    return None if at is None else math.ceil(at.timestamp())


def require_not_revoked(claims: TokenClaims, valid_after: int | None) -> None:
    """Raises TokenRevoked if the token was issued before the user's revocation."""
    if valid_after is None:
        return
    if claims.issued_at is None or claims.issued_at < valid_after:
        raise TokenRevoked("token revoked: this user's tokens were revoked after it was issued")


class TokenRevocations:
    """Reads and sets ``users.tokens_valid_after``."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def lookup(self, user_id: str) -> tuple[bool, int | None]:
        """Whether the user exists, and the first issue second still valid (None: any)."""
        uid = uuid.UUID(require_uuid(user_id, "user_id"))
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(User.tokens_valid_after).where(User.id == uid))
            ).first()
        if row is None:
            return False, None
        return True, valid_after_seconds(row[0])

    async def revoke(self, user_id: str) -> Revocation:
        """Refuses every token of the user issued until now, and tells every gateway.

        Raises:
            UserNotFound: no such user.
        """
        uid = require_uuid(user_id, "user_id")
        async with self._engine.begin() as conn:
            at = (
                await conn.execute(
                    update(User)
                    .where(User.id == uuid.UUID(uid))
                    .values(tokens_valid_after=func.now())
                    .returning(User.tokens_valid_after)
                )
            ).scalar_one_or_none()
            if at is None:
                raise UserNotFound(f"no user {uid}")
            # Sent on commit, so a gateway that hears it reads the new value.
            await conn.execute(
                text("SELECT pg_notify(:channel, :uid)"),
                {"channel": WAKE_TOKENS_REVOKED, "uid": uid},
            )
        return Revocation(user_id=uid, tokens_valid_after=at)
