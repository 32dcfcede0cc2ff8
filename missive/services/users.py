"""Provisioning users: create one, or change its handle, name, addresses, timezone, locale.

Back-end services call this through UserProfileWorkflow (the starter's
``create_user`` / ``update_user``); the demo does too.
"""

from __future__ import annotations

import re
import uuid

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from missive.constants import user_id_for
from missive.errors import InvalidInput, UserNotFound
from missive.notify.preferences import require_timezone
from missive.schemas import UserProfile, UserProfileInput
from missive.validation import E164, require_uuid

MAX_HANDLE_CHARS = 64
MAX_DISPLAY_NAME_CHARS = 128
MAX_EMAIL_CHARS = 320
MAX_LOCALE_CHARS = 16

_HANDLE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+\Z")
_LOCALE = re.compile(r"^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*\Z")

_COLUMNS = "id::text AS user_id, handle, display_name, email, phone, timezone, locale"


class UserService:
    """Creates and updates users; every field is checked before anything is written."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]):
        self._sessions = sessions

    async def apply(self, req: UserProfileInput) -> UserProfile:
        """Creates the user (no ``user_id``) or updates the fields given.

        A create with ``client_user_id`` is idempotent: the same id names the same
        user, and a retry returns it (``created`` False).

        Raises:
            InvalidInput: a malformed field, or the handle is taken by another user.
            UserNotFound: the user to update does not exist.
        """
        changes = _checked(req)
        if req.user_id is None:
            return await self._create(req, changes)
        uid = require_uuid(req.user_id, "user_id")
        if not changes:
            return await self._read(uid)
        sets = ", ".join(f"{column} = :{column}" for column in changes)
        try:
            async with self._sessions() as session, session.begin():
                row = (
                    await session.execute(
                        text(f"UPDATE users SET {sets} WHERE id = :uid RETURNING {_COLUMNS}"),
                        {**changes, "uid": uid},
                    )
                ).one_or_none()
        except IntegrityError:
            raise InvalidInput(f"handle {changes.get('handle')!r} is taken") from None
        if row is None:
            raise UserNotFound(f"user {uid} does not exist")
        return UserProfile(**row._asdict())

    async def _create(self, req: UserProfileInput, changes: dict[str, str | None]) -> UserProfile:
        handle = changes.get("handle")
        if handle is None:
            raise InvalidInput("handle is required to create a user")
        if req.client_user_id is not None:
            if not isinstance(req.client_user_id, str) or not 1 <= len(req.client_user_id) <= 128:
                raise InvalidInput("client_user_id must be a string of 1-128 characters")
            uid = user_id_for(req.client_user_id)
        else:
            uid = str(uuid.uuid4())
        values = {
            "display_name": handle,
            "email": None,
            "phone": None,
            "timezone": "UTC",
            "locale": "en",
            **changes,
            "uid": uid,
        }
        try:
            async with self._sessions() as session, session.begin():
                row = (
                    await session.execute(
                        text(
                            "INSERT INTO users (id, handle, display_name, email, phone, timezone,"
                            " locale) VALUES (:uid, :handle, :display_name, :email, :phone,"
                            " :timezone, :locale)"
                            f" ON CONFLICT (id) DO NOTHING RETURNING {_COLUMNS}"
                        ),
                        values,
                    )
                ).one_or_none()
        except IntegrityError:
            raise InvalidInput(f"handle {handle!r} is taken") from None
        if row is None:  # a retry of the same client_user_id
            return await self._read(uid)
        return UserProfile(**row._asdict(), created=True)

    async def _read(self, uid: str) -> UserProfile:
        async with self._sessions() as session:
            row = (
                await session.execute(
                    text(f"SELECT {_COLUMNS} FROM users WHERE id = :uid"), {"uid": uid}
                )
            ).one_or_none()
        if row is None:
            raise UserNotFound(f"user {uid} does not exist")
        return UserProfile(**row._asdict())


def _checked(req: UserProfileInput) -> dict[str, str | None]:
    """The columns to write, each checked; an empty email or phone clears it."""
    changes: dict[str, str | None] = {}
    if req.handle is not None:
        changes["handle"] = require_handle(req.handle)
    if req.display_name is not None:
        name = req.display_name
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_DISPLAY_NAME_CHARS:
            raise InvalidInput(f"display_name must be 1-{MAX_DISPLAY_NAME_CHARS} characters")
        changes["display_name"] = name
    if req.email is not None:
        if not isinstance(req.email, str):
            raise InvalidInput("email must be a string")
        if req.email and (len(req.email) > MAX_EMAIL_CHARS or not _EMAIL.match(req.email)):
            raise InvalidInput(f"email {req.email[:64]!r} is not an email address")
        changes["email"] = req.email or None
    if req.phone is not None:
        if not isinstance(req.phone, str):
            raise InvalidInput("phone must be a string")
        if req.phone and not E164.match(req.phone):
            raise InvalidInput(f"phone {req.phone[:32]!r} is not E.164 (+ then 7-15 digits)")
        changes["phone"] = req.phone or None
    if req.timezone is not None:
        changes["timezone"] = require_timezone(req.timezone)
    if req.locale is not None:
        locale = req.locale
        if (
            not isinstance(locale, str)
            or len(locale) > MAX_LOCALE_CHARS
            or not _LOCALE.match(locale)
        ):
            raise InvalidInput(
                f"locale must be a language tag like 'en' or 'pt-BR', got {locale!r}"
            )
        changes["locale"] = locale
    return changes


def require_handle(handle: object) -> str:
    """A handle: 1-64 letters, digits, ``_``, ``.`` or ``-``, starting with a letter or digit."""
    if not isinstance(handle, str) or not 1 <= len(handle) <= MAX_HANDLE_CHARS:
        raise InvalidInput(f"handle must be 1-{MAX_HANDLE_CHARS} characters")
    if not _HANDLE.match(handle):
        raise InvalidInput(
            f"handle {handle!r} may hold only letters, digits, '_', '.' and '-'"
            " (and start with a letter or digit)"
        )
    return handle
