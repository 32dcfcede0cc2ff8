"""Users, devices, conversations and memberships: the data every message hangs on."""

from __future__ import annotations

import uuid
import zoneinfo
from dataclasses import dataclass

from sqlalchemy import delete, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from missive.crypto import MessageCipher
from missive.errors import ConversationNotFound, InvalidInput, UserNotFound
from missive.models import (
    Conversation,
    ConversationKey,
    ConversationKind,
    EncryptionMode,
    Participant,
    ParticipantRole,
    User,
)
from missive.validation import require_uuid

DIRECT_NAMESPACE = uuid.UUID("5b0c51a4-3b7e-4e36-9d67-4f1f0c1f2d8e")
"""Of direct_conversation_id; fixed, so every creator derives the same ids."""


def direct_conversation_id(user_a: str, user_b: str) -> str:
    """The id of the (standard) direct conversation of two users, when Missive creates it.

    Derived from the pair (in either order), so concurrent creators, retries, the
    gateway's ``conversation:create`` and batch imports create one conversation.
    """
    first, second = sorted((user_a, user_b))
    return str(uuid.uuid5(DIRECT_NAMESPACE, f"direct:{first}:{second}"))


@dataclass(frozen=True)
class NewUser:
    """What it takes to create a user."""

    handle: str
    """Unique handle (1-64 characters)."""
    display_name: str | None = None
    """Shown name; defaults to the handle."""
    email: str | None = None
    """Address for email notifications."""
    phone: str | None = None
    """E.164 number for SMS notifications."""
    timezone: str = "UTC"
    """IANA timezone name."""
    locale: str = "en"
    """Language tag."""


class DirectoryService:
    """Creates users and conversations, and answers who is in what."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], cipher: MessageCipher):
        self._sessions = sessions
        self._cipher = cipher

    async def create_user(self, new: NewUser) -> str:
        """Creates a user and returns its id.

        Raises:
            InvalidInput: a bad handle or timezone, or the handle is taken.
        """
        if not 1 <= len(new.handle) <= 64:
            raise InvalidInput("handle must be 1-64 characters")
        try:
            zoneinfo.ZoneInfo(new.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise InvalidInput(f"timezone {new.timezone!r} does not exist") from None
        user_id = uuid.uuid4()
        try:
            async with self._sessions() as session, session.begin():
                await session.execute(
                    insert(User).values(
                        id=user_id,
                        handle=new.handle,
                        display_name=new.display_name or new.handle,
                        email=new.email,
                        phone=new.phone,
                        timezone=new.timezone,
                        locale=new.locale,
                    )
                )
        except IntegrityError:
            raise InvalidInput(f"handle {new.handle!r} is taken") from None
        return str(user_id)

    async def create_conversation(
        self,
        *,
        kind: ConversationKind,
        members: list[str],
        title: str | None = None,
        encryption_mode: EncryptionMode = EncryptionMode.STANDARD,
        retention_days: int | None = None,
        owner_id: str | None = None,
    ) -> str:
        """Creates a conversation with its first data key and its participants.

        Raises:
            InvalidInput: no members, a direct chat without exactly two, bad retention.
            UserNotFound: a member does not exist.
        """
        member_ids = sorted({require_uuid(m, "member") for m in members})
        if not member_ids:
            raise InvalidInput("a conversation needs at least one member")
        if kind is ConversationKind.DIRECT and len(member_ids) != 2:
            raise InvalidInput("a direct conversation has exactly two members")
        if retention_days is not None and retention_days <= 0:
            raise InvalidInput(f"retention_days must be positive, got {retention_days}")
        conversation_id = uuid.uuid4()
        wrapped = self._cipher.new_data_key(str(conversation_id), 1)
        async with self._sessions() as session, session.begin():
            found = (
                (await session.execute(select(User.id).where(User.id.in_(member_ids))))
                .scalars()
                .all()
            )
            missing = set(member_ids) - {str(u) for u in found}
            if missing:
                raise UserNotFound(f"user {sorted(missing)[0]} does not exist")
            await session.execute(
                insert(Conversation).values(
                    id=conversation_id,
                    kind=kind,
                    title=title,
                    encryption_mode=encryption_mode,
                    retention_days=retention_days,
                    key_version=1,
                )
            )
            await session.execute(
                insert(ConversationKey).values(
                    conversation_id=conversation_id,
                    version=1,
                    master_key_version=wrapped.master_key_version,
                    wrapped_key=wrapped.wrapped,
                )
            )
            await session.execute(
                insert(Participant),
                [
                    {
                        "conversation_id": conversation_id,
                        "user_id": m,
                        "role": ParticipantRole.OWNER if m == owner_id else ParticipantRole.MEMBER,
                    }
                    for m in member_ids
                ],
            )
        return str(conversation_id)

    async def add_participants(self, conversation_id: str, user_ids: list[str]) -> None:
        """Adds members (idempotent); they see messages sent from now on."""
        cid = require_uuid(conversation_id, "conversation_id")
        ids = [require_uuid(u, "user_id") for u in user_ids]
        async with self._sessions() as session, session.begin():
            if await session.get(Conversation, uuid.UUID(cid)) is None:
                raise ConversationNotFound(f"conversation {cid} does not exist")
            await session.execute(
                text(
                    "INSERT INTO participants (conversation_id, user_id, delivered_seq, read_seq)"
                    " SELECT :cid, u, c.last_seq, c.last_seq"
                    " FROM unnest(CAST(:ids AS uuid[])) u, conversations c WHERE c.id = :cid"
                    " ON CONFLICT DO NOTHING"
                ),
                {"cid": cid, "ids": ids},
            )

    async def remove_participant(self, conversation_id: str, user_id: str) -> None:
        """Removes a member (idempotent)."""
        cid = require_uuid(conversation_id, "conversation_id")
        uid = require_uuid(user_id, "user_id")
        async with self._sessions() as session, session.begin():
            await session.execute(
                delete(Participant).where(
                    Participant.conversation_id == cid, Participant.user_id == uid
                )
            )

    async def conversations_of(self, user_id: str) -> list[str]:
        """Ids of every conversation the user takes part in."""
        uid = require_uuid(user_id, "user_id")
        async with self._sessions() as session:
            rows = await session.execute(
                select(Participant.conversation_id).where(Participant.user_id == uid)
            )
        return [str(c) for c in rows.scalars()]

    async def user_exists(self, user_id: str) -> bool:
        """Whether a user with this id exists."""
        uid = require_uuid(user_id, "user_id")
        async with self._sessions() as session:
            return await session.get(User, uuid.UUID(uid)) is not None
