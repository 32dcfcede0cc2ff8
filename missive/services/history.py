"""Reading conversations back: a page of messages (catch-up and history), and a user's
conversations with where they stand. Reads only: no workflow, straight from PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from missive.crypto import MessageCipher, WrappedKey
from missive.errors import ConversationNotFound, InvalidInput, NotAMember
from missive.stored import StoredMessage
from missive.validation import require_uuid

SYNC_DEFAULT_LIMIT = 100
"""Messages one ``message:sync`` returns when no limit is given."""

SYNC_MAX_LIMIT = 500
"""Most messages one ``message:sync`` returns."""

_WHERE_MEMBER = text(
    """
    SELECT c.last_seq, p.user_id IS NOT NULL AS is_member
    FROM conversations c
    LEFT JOIN participants p ON p.conversation_id = c.id AND p.user_id = :uid
    WHERE c.id = :cid
    """
)

_COLUMNS = """
    m.id, m.seq, m.sender_id, m.client_message_id, m.body_ciphertext, m.key_version,
    m.created_at, m.edited_at, m.deleted_at, m.e2e_header
"""

_AFTER = text(
    f"SELECT {_COLUMNS} FROM messages m WHERE m.conversation_id = :cid AND m.seq > :seq"
    " ORDER BY m.seq LIMIT :limit"
)

_BEFORE = text(
    f"SELECT {_COLUMNS} FROM messages m WHERE m.conversation_id = :cid AND m.seq < :seq"
    " ORDER BY m.seq DESC LIMIT :limit"
)

_KEYS = text(
    "SELECT version, master_key_version, wrapped_key FROM conversation_keys"
    " WHERE conversation_id = :cid AND version = ANY(CAST(:versions AS int[]))"
)

# Unread: the user's deliveries not yet read (the partial index ix_deliveries_pending),
# of messages not deleted since. The newest conversations first.
_LIST = text(
    """
    SELECT c.id::text AS conversation_id, c.kind::text AS kind, c.title,
           c.encryption_mode::text AS encryption_mode, c.last_seq,
           p.delivered_seq, p.read_seq, p.role::text AS role,
           coalesce(p.muted_until > now(), false) AS muted,
           (SELECT count(*) FROM participants pc WHERE pc.conversation_id = c.id)
               AS member_count,
           (SELECT count(*) FROM deliveries d JOIN messages m ON m.id = d.message_id
             WHERE d.recipient_id = p.user_id AND d.conversation_id = c.id AND d.status < 2
               AND m.deleted_at IS NULL) AS unread_count,
           (SELECT lm.created_at FROM messages lm
             WHERE lm.conversation_id = c.id AND lm.seq = c.last_seq) AS last_message_at
    FROM participants p
    JOIN conversations c ON c.id = p.conversation_id
    WHERE p.user_id = :uid
    ORDER BY last_message_at DESC NULLS LAST, c.created_at DESC
    """
)


@dataclass(frozen=True)
class SyncPage:
    """One page of a conversation's messages, in seq order."""

    messages: list[StoredMessage]
    """The messages (a deleted one as a tombstone: empty body, ``deleted_at`` set)."""
    has_more: bool
    """More messages lie beyond the page in the direction asked."""
    last_seq: int
    """The conversation's latest seq now: sync on while a page ends below it."""


@dataclass(frozen=True)
class ConversationState:
    """One of a user's conversations, and where the user stands in it."""

    conversation_id: str
    kind: str
    title: str | None
    encryption_mode: str
    role: str
    member_count: int
    last_seq: int
    delivered_seq: int
    read_seq: int
    unread_count: int
    muted: bool
    last_message_at: datetime | None


class HistoryService:
    """Pages through a conversation's messages and lists a user's conversations."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], cipher: MessageCipher):
        self._sessions = sessions
        self._cipher = cipher

    async def sync(
        self,
        user_id: str,
        conversation_id: str,
        *,
        after_seq: int | None = None,
        before_seq: int | None = None,
        limit: int = SYNC_DEFAULT_LIMIT,
    ) -> SyncPage:
        """The messages after ``after_seq`` (catch-up), or just before ``before_seq``
        (paging back through history), at most ``limit``, in seq order.

        With neither, the first page of the conversation (``after_seq`` 0). Every
        current member reads the whole history (a member added later included);
        a user no longer a member reads nothing.

        Raises:
            InvalidInput: both seqs, a seq that is negative, not an integer or past the
                conversation's end, ``limit`` outside 1..SYNC_MAX_LIMIT.
            ConversationNotFound: no such conversation.
            NotAMember: the user does not take part in it (any more).
        """
        cid = require_uuid(conversation_id, "conversation_id")
        uid = require_uuid(user_id, "user_id")
        if after_seq is not None and before_seq is not None:
            raise InvalidInput("give after_seq or before_seq, not both")
        for name, seq in (("after_seq", after_seq), ("before_seq", before_seq)):
            if seq is not None and not _is_int(seq, low=0):
                raise InvalidInput(f"{name} must be an integer of 0 or more, got {seq!r}")
        if not _is_int(limit, low=1, high=SYNC_MAX_LIMIT):
            raise InvalidInput(
                f"limit must be an integer from 1 to {SYNC_MAX_LIMIT}, got {limit!r}"
            )
        async with self._sessions() as session:
            state = (await session.execute(_WHERE_MEMBER, {"cid": cid, "uid": uid})).one_or_none()
            if state is None:
                raise ConversationNotFound(f"conversation {cid} does not exist")
            if not state.is_member:
                raise NotAMember(f"user {uid} is not a member of conversation {cid}")
            if after_seq is not None and after_seq > state.last_seq:
                raise InvalidInput(
                    f"after_seq {after_seq} is past the end: conversation {cid}'s last seq is"
                    f" {state.last_seq}"
                )
            if before_seq is not None and not 1 <= before_seq <= state.last_seq + 1:
                raise InvalidInput(
                    f"before_seq must be from 1 to {state.last_seq + 1} (one past conversation"
                    f" {cid}'s last seq), got {before_seq}"
                )
            backwards = before_seq is not None
            query, seq = (_BEFORE, before_seq) if backwards else (_AFTER, after_seq or 0)
            rows = list(
                (await session.execute(query, {"cid": cid, "seq": seq, "limit": limit + 1})).all()
            )
            has_more = len(rows) > limit
            rows = rows[:limit]
            if backwards:
                rows.reverse()
            keys = await self._keys(session, cid, {r.key_version for r in rows if not r.deleted_at})
        return SyncPage(
            messages=[self._message(cid, row, keys) for row in rows],
            has_more=has_more,
            last_seq=state.last_seq,
        )

    async def conversations(self, user_id: str) -> list[ConversationState]:
        """The user's conversations, the one with the latest message first."""
        uid = require_uuid(user_id, "user_id")
        async with self._sessions() as session:
            rows = (await session.execute(_LIST, {"uid": uid})).all()
        return [ConversationState(**row._asdict()) for row in rows]

    async def _keys(self, session: AsyncSession, cid: str, versions: set[int]) -> dict[int, Any]:
        if not versions:
            return {}
        rows = await session.execute(_KEYS, {"cid": cid, "versions": sorted(versions)})
        return {
            r.version: self._cipher.data_key(
                cid, r.version, WrappedKey(r.master_key_version, r.wrapped_key)
            )
            for r in rows
        }

    def _message(self, cid: str, row: Any, keys: dict[int, Any]) -> StoredMessage:
        mid = str(row.id)
        body = ""
        if row.deleted_at is None:
            body = self._cipher.decrypt_body(
                keys[row.key_version],
                conversation_id=cid,
                message_id=mid,
                ciphertext=row.body_ciphertext,
            ).decode("utf-8")
        return StoredMessage(
            message_id=mid,
            conversation_id=cid,
            seq=row.seq,
            sender_id=str(row.sender_id),
            client_message_id=row.client_message_id,
            body=body,
            created_at=row.created_at,
            edited_at=row.edited_at,
            deleted_at=row.deleted_at,
            e2e_header=row.e2e_header if row.deleted_at is None else None,
        )


def _is_int(value: object, *, low: int, high: int | None = None) -> bool:
    """Whether ``value`` is an integer (not a bool) from ``low`` to ``high``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        return False
    return high is None or value <= high
