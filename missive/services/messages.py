"""Persisting messages (encrypted, sequenced, with their deliveries) and reading them back."""

from __future__ import annotations

import hmac
import json

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from missive.constants import message_id_for
from missive.crypto import MessageCipher, WrappedKey
from missive.db import autocommit
from missive.e2e import check_e2e_send
from missive.errors import (
    ConversationNotFound,
    DuplicateClientMessageId,
    MessageNotVisible,
    NotAMember,
)
from missive.schemas import PersistMessageInput, PersistMessageResult
from missive.stored import StoredMessage
from missive.validation import require_body, require_client_message_id, require_uuid

_LOOKUP = text(
    """
    SELECT c.key_version, k.master_key_version, k.wrapped_key,
           c.encryption_mode::text AS encryption_mode,
           p.user_id IS NOT NULL AS is_member,
           m.id AS existing_id, m.seq AS existing_seq, m.created_at AS existing_created_at,
           m.conversation_id AS existing_conversation_id,
           m.body_ciphertext AS existing_body, m.key_version AS existing_key_version,
           ek.master_key_version AS existing_master_version, ek.wrapped_key AS existing_wrapped
    FROM conversations c
    JOIN conversation_keys k ON k.conversation_id = c.id AND k.version = c.key_version
    LEFT JOIN participants p ON p.conversation_id = c.id AND p.user_id = :sender
    LEFT JOIN messages m ON m.sender_id = :sender AND m.client_message_id = :cmid
    LEFT JOIN conversation_keys ek
           ON ek.conversation_id = m.conversation_id AND ek.version = m.key_version
    WHERE c.id = :cid
    """
)

# One statement: take the next sequence number (the row lock orders concurrent
# sends in a conversation), insert the message and a delivery per other member.
_INSERT = text(
    """
    WITH next AS (
        UPDATE conversations SET last_seq = last_seq + 1 WHERE id = :cid RETURNING last_seq
    ), msg AS (
        INSERT INTO messages (id, conversation_id, seq, sender_id, client_message_id,
                              body_ciphertext, key_version, e2e_header)
        SELECT :mid, :cid, next.last_seq, :sender, :cmid, :body, :kv, CAST(:e2e AS jsonb)
        FROM next
        RETURNING seq, created_at
    ), dl AS (
        INSERT INTO deliveries (message_id, recipient_id, conversation_id, seq, status, sent_at)
        SELECT :mid, p.user_id, :cid, msg.seq, 0, msg.created_at
        FROM participants p, msg
        WHERE p.conversation_id = :cid AND p.user_id <> :sender
        RETURNING recipient_id
    )
    SELECT msg.seq, msg.created_at,
           (SELECT count(*) FROM dl) AS recipient_count,
           (SELECT array_agg(recipient_id::text) FROM dl) AS recipient_ids
    FROM msg
    """
)

_LOAD = text(
    """
    SELECT m.conversation_id, m.seq, m.sender_id, m.client_message_id, m.body_ciphertext,
           m.key_version, m.created_at, m.edited_at, m.deleted_at, m.e2e_header,
           k.master_key_version, k.wrapped_key
    FROM messages m
    JOIN conversation_keys k ON k.conversation_id = m.conversation_id AND k.version = m.key_version
    WHERE m.id = :mid
    """
)


class MessageService:
    """Stores and loads messages; bodies exist only as ciphertext in the database."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        cipher: MessageCipher,
        *,
        max_body_bytes: int | None = None,
    ):
        self._sessions = sessions
        self._autocommit = autocommit(sessions)
        self._cipher = cipher
        self._max_body_bytes = max_body_bytes
        """This process's MAX_BODY_BYTES: a request's own limit can only lower it."""

    async def persist(self, req: PersistMessageInput) -> PersistMessageResult:
        """Validates and stores a message with one delivery row per other participant.

        Idempotent: the message id is derived from (sender, client_message_id), so
        running this twice returns the stored message with ``created=False``.

        Raises:
            InvalidInput: a malformed id, an empty or oversize body.
            ConversationNotFound: no such conversation.
            NotAMember: the sender is not a participant.
            DuplicateClientMessageId: the client_message_id was used for another body.
        """
        cid = require_uuid(req.conversation_id, "conversation_id")
        sender = require_uuid(req.sender_id, "sender_id")
        cmid = require_client_message_id(req.client_message_id)
        body = require_body(req.body, max_bytes=self._body_limit(req.max_body_bytes))
        mid = message_id_for(sender, cmid)
        for attempt in (1, 2):
            try:
                return await self._persist_once(req, cid, sender, cmid, body, mid)
            except IntegrityError:
                # A concurrent run of the same send won the insert; the second
                # pass finds its row and answers as for any resend.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _body_limit(self, requested: int) -> int:
        """The smaller of the request's limit and this process's own."""
        if self._max_body_bytes is None:
            return requested
        return min(requested, self._max_body_bytes)

    async def _persist_once(
        self,
        req: PersistMessageInput,
        cid: str,
        sender: str,
        cmid: str,
        body: bytes,
        mid: str,
    ) -> PersistMessageResult:
        # Autocommit: the write is one statement (_INSERT), and the lookup needs no
        # snapshot shared with it (READ COMMITTED would not give one either).
        async with self._autocommit() as session:
            row = (
                await session.execute(_LOOKUP, {"cid": cid, "sender": sender, "cmid": cmid})
            ).one_or_none()
            if row is None:
                raise ConversationNotFound(f"conversation {cid} does not exist")
            if not row.is_member:
                raise NotAMember(f"user {sender} is not a participant of conversation {cid}")
            check_e2e_send(
                conversation_id=cid,
                encryption_mode=row.encryption_mode,
                body=req.body,
                e2e_header=req.e2e_header,
            )
            if row.existing_id is not None:
                return await self._resend(session, row, req, cid, sender, body)
            key = self._cipher.data_key(
                cid, row.key_version, WrappedKey(row.master_key_version, row.wrapped_key)
            )
            ciphertext = self._cipher.encrypt_body(
                key, conversation_id=cid, message_id=mid, body=body
            )
            inserted = (
                await session.execute(
                    _INSERT,
                    {
                        "cid": cid,
                        "mid": mid,
                        "sender": sender,
                        "cmid": cmid,
                        "body": ciphertext,
                        "kv": row.key_version,
                        "e2e": None if req.e2e_header is None else json.dumps(req.e2e_header),
                    },
                )
            ).one()
        ids = inserted.recipient_ids or []
        return PersistMessageResult(
            message_id=mid,
            conversation_id=cid,
            seq=inserted.seq,
            created_at=inserted.created_at,
            created=True,
            recipient_count=inserted.recipient_count,
            recipient_ids=sorted(ids) if len(ids) <= req.receipt_detail_max_recipients else [],
        )

    async def _resend(
        self,
        session: AsyncSession,
        row: object,
        req: PersistMessageInput,
        cid: str,
        sender: str,
        body: bytes,
    ) -> PersistMessageResult:
        existing_cid = str(row.existing_conversation_id)  # type: ignore[attr-defined]
        mid = str(row.existing_id)  # type: ignore[attr-defined]
        key = self._cipher.data_key(
            existing_cid,
            row.existing_key_version,  # type: ignore[attr-defined]
            WrappedKey(row.existing_master_version, row.existing_wrapped),  # type: ignore[attr-defined]
        )
        stored = self._cipher.decrypt_body(
            key,
            conversation_id=existing_cid,
            message_id=mid,
            ciphertext=row.existing_body,  # type: ignore[attr-defined]
        )
        if existing_cid != cid or not hmac.compare_digest(stored, body):
            raise DuplicateClientMessageId(
                f"client_message_id {req.client_message_id!r} of user {sender} was already "
                f"used for a different message ({mid}); it is not overwritten"
            )
        recipients = (
            (
                await session.execute(
                    text("SELECT recipient_id::text FROM deliveries WHERE message_id = :mid"),
                    {"mid": mid},
                )
            )
            .scalars()
            .all()
        )
        return PersistMessageResult(
            message_id=mid,
            conversation_id=cid,
            seq=row.existing_seq,  # type: ignore[attr-defined]
            created_at=row.existing_created_at,  # type: ignore[attr-defined]
            created=False,
            recipient_count=len(recipients),
            recipient_ids=(
                sorted(recipients) if len(recipients) <= req.receipt_detail_max_recipients else []
            ),
        )

    async def load(self, message_id: str) -> StoredMessage:
        """Reads and decrypts one message.

        Raises:
            MessageNotVisible: no such message.
            DecryptionFailed: its ciphertext does not authenticate.
        """
        mid = require_uuid(message_id, "message_id")
        async with self._sessions() as session:
            row = (await session.execute(_LOAD, {"mid": mid})).one_or_none()
        if row is None:
            raise MessageNotVisible(f"message {mid} does not exist")
        cid = str(row.conversation_id)
        key = self._cipher.data_key(
            cid, row.key_version, WrappedKey(row.master_key_version, row.wrapped_key)
        )
        body = b""  # a deleted message's body is destroyed
        if row.deleted_at is None:
            body = self._cipher.decrypt_body(
                key, conversation_id=cid, message_id=mid, ciphertext=row.body_ciphertext
            )
        return StoredMessage(
            message_id=mid,
            conversation_id=cid,
            seq=row.seq,
            sender_id=str(row.sender_id),
            client_message_id=row.client_message_id,
            body=body.decode("utf-8"),
            created_at=row.created_at,
            edited_at=row.edited_at,
            deleted_at=row.deleted_at,
            e2e_header=row.e2e_header,
        )
