"""Revoke a user's gateway tokens ("logout everywhere"): ``python -m starter revoke-tokens``."""

from __future__ import annotations

from sqlalchemy.exc import SQLAlchemyError

from missive.config import Settings
from missive.db import create_engine
from missive.errors import InvalidInput, ProviderUnavailable
from missive.sessions import Revocation, TokenRevocations
from missive.validation import require_uuid


async def revoke_tokens(settings: Settings, user_id: str) -> Revocation:
    """Refuses every token of the user issued until now, and closes their open sockets.

    Every gateway hears of it at once (PostgreSQL ``NOTIFY``) and disconnects the
    user's sockets after a ``session:closed`` event; a gateway that missed it refuses
    their next event within 30 seconds. Tokens issued from the next second on work.

    Raises:
        InvalidInput: DATABASE_URL is unset or the user id is not a UUID.
        UserNotFound: no such user.
        ProviderUnavailable: PostgreSQL did not answer.
    """
    uid = require_uuid(user_id, "user_id")
    if not settings.database_url:
        raise InvalidInput("DATABASE_URL is required to revoke tokens")
    engine = create_engine(settings.database_url, pool_size=1)
    try:
        return await TokenRevocations(engine).revoke(uid)
    except (SQLAlchemyError, OSError) as err:
        reason = str(getattr(err, "orig", None) or err).splitlines()[0][:200]
        raise ProviderUnavailable(f"cannot reach PostgreSQL: {reason}") from None
    finally:
        await engine.dispose()
