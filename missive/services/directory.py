"""Users, devices, conversations and memberships: the data every message hangs on."""

from __future__ import annotations

import uuid
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
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


_FIND_DIRECT = """
SELECT DISTINCT ON (x.sender, x.recipient) x.sender, x.recipient, c.id
FROM unnest($1::uuid[], $2::uuid[]) AS x(sender, recipient)
JOIN participants pr ON pr.user_id = x.recipient
JOIN conversations c ON c.id = pr.conversation_id AND c.kind = 'direct'
JOIN participants ps ON ps.conversation_id = c.id AND ps.user_id = x.sender
WHERE (SELECT count(*) FROM participants o WHERE o.conversation_id = c.id) = 2
ORDER BY x.sender, x.recipient, c.encryption_mode = 'e2e', c.created_at, c.id
"""
"""The direct conversation of each (sender, recipient) pair that has one."""


async def find_or_create_direct(
    conn: asyncpg.Connection, cipher: MessageCipher, pairs: Sequence[tuple[str, str]]
) -> tuple[set[str], dict[tuple[str, str], str]]:
    """The direct conversation of each pair of users, found (a standard one before an
    end-to-end one, then the oldest) or created with its data key and both
    participants, in bulk, on the driver (batch imports resolve thousands at once).

    Created conversations get the pair's id (direct_conversation_id), and every
    insert is ``ON CONFLICT DO NOTHING``: a retry, a concurrent chunk, another batch
    or a ``conversation:create`` of the same pair end up with the same one.

    Returns:
        The users among the pairs that exist, and each pair of two existing users
        (as given) -> its conversation id.
    """
    people = sorted({user for pair in pairs for user in pair})
    users = {
        str(r["id"])
        for r in await conn.fetch("SELECT id FROM users WHERE id = ANY($1::uuid[])", people)
    }
    known = [p for p in pairs if p[0] in users and p[1] in users]
    found = {
        (str(r["sender"]), str(r["recipient"])): str(r["id"])
        for r in await conn.fetch(_FIND_DIRECT, [p[0] for p in known], [p[1] for p in known])
    }
    created = {direct_conversation_id(a, b): tuple(sorted((a, b))) for a, b in known}
    created = {
        cid: pair
        for cid, pair in created.items()
        if (pair[0], pair[1]) not in found and (pair[1], pair[0]) not in found
    }
    if created:
        ids = sorted(created)
        keys = [cipher.new_data_key(cid, 1) for cid in ids]
        # Ids in order: concurrent creators wait on each other without deadlocking.
        await conn.execute(
            "INSERT INTO conversations (id, kind)"
            " SELECT id, 'direct' FROM unnest($1::uuid[]) AS x(id) ORDER BY id"
            " ON CONFLICT (id) DO NOTHING",
            ids,
        )
        await conn.execute(
            "INSERT INTO conversation_keys (conversation_id, version, master_key_version,"
            "                               wrapped_key)"
            " SELECT x.id, 1, x.master, x.wrapped"
            " FROM unnest($1::uuid[], $2::int4[], $3::bytea[]) AS x(id, master, wrapped)"
            " ON CONFLICT DO NOTHING",
            ids,
            [k.master_key_version for k in keys],
            [k.wrapped for k in keys],
        )
        await conn.execute(
            "INSERT INTO participants (conversation_id, user_id)"
            " SELECT * FROM unnest($1::uuid[], $2::uuid[]) ON CONFLICT DO NOTHING",
            [cid for cid in ids for _ in range(2)],
            [user for cid in ids for user in created[cid]],
        )
    return users, {pair: found.get(pair) or direct_conversation_id(*pair) for pair in known}


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
