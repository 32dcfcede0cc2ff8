"""Editing and deleting messages: re-encrypted text, destroyed bodies, tombstones.

An edit stores the new text under the conversation's current data key and sets
``edited_at``; a delete overwrites the ciphertext with nothing, drops the e2e
header and sets ``deleted_at``, so the row stays as a tombstone that keeps the
conversation's seqs gap-free. The search triggers (migration 0003) make either
pending for the indexer, which re-indexes an edit and removes a delete.
"""

from __future__ import annotations

import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from missive.crypto import MessageCipher, WrappedKey
from missive.e2e import check_e2e_send
from missive.errors import MessageDeleted, MessageNotVisible, NotAllowed, NotAMember
from missive.models import ParticipantRole
from missive.schemas import (
    DeleteMessageInput,
    DeleteMessageResult,
    EditMessageInput,
    EditMessageResult,
)
from missive.validation import require_body, require_uuid

_MANAGERS = (ParticipantRole.OWNER.value, ParticipantRole.ADMIN.value)

_FOR_EDIT = text(
    """
    SELECT m.conversation_id::text AS conversation_id, m.sender_id::text AS sender_id, m.seq,
           m.created_at, m.edited_at, m.deleted_at, m.body_ciphertext, m.key_version,
           m.e2e_header, c.encryption_mode::text AS encryption_mode,
           c.key_version AS current_version,
           k.master_key_version AS current_master, k.wrapped_key AS current_wrapped,
           mk.master_key_version AS master, mk.wrapped_key AS wrapped,
           p.user_id IS NOT NULL AS is_member, p.role::text AS role
    FROM messages m
    JOIN conversations c ON c.id = m.conversation_id
    JOIN conversation_keys k ON k.conversation_id = c.id AND k.version = c.key_version
    LEFT JOIN conversation_keys mk ON mk.conversation_id = c.id AND mk.version = m.key_version
    LEFT JOIN participants p ON p.conversation_id = c.id AND p.user_id = :actor
    WHERE m.id = :mid
    FOR UPDATE OF m
    """
)


class EditService:
    """Edits and deletes messages by their rules; both are idempotent."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        cipher: MessageCipher,
        *,
        max_body_bytes: int,
        edit_window_seconds: float = 0,
    ):
        """Builds the service.

        Args:
            sessions: The database.
            cipher: Encrypts the new text.
            max_body_bytes: This process's MAX_BODY_BYTES, as for sends.
            edit_window_seconds: How long after sending a message its sender may edit
                it (MESSAGE_EDIT_WINDOW_SECONDS); 0 for no limit.
        """
        self._sessions = sessions
        self._cipher = cipher
        self._max_body_bytes = max_body_bytes
        self._edit_window = edit_window_seconds

    async def edit(self, req: EditMessageInput) -> EditMessageResult:
        """Stores a message's new text; the same text again changes nothing.

        Raises:
            InvalidInput: a malformed id, an empty or oversize body, an e2e edit
                without ``e2e_header`` (or a standard one with it).
            MessageNotVisible: no such message in that conversation.
            NotAMember: the editor is not in the conversation (any more).
            NotAllowed: the editor is not the sender, or the edit window closed.
            MessageDeleted: the message was deleted.
        """
        cid = require_uuid(req.conversation_id, "conversation_id")
        mid = require_uuid(req.message_id, "message_id")
        editor = require_uuid(req.editor_id, "editor_id")
        body = require_body(req.body, max_bytes=self._max_body_bytes)
        async with self._sessions() as session, session.begin():
            row = await _locked(session, cid, mid, editor)
            if row.sender_id != editor:
                raise NotAllowed(f"only its sender may edit message {mid}")
            if row.deleted_at is not None:
                raise MessageDeleted(f"message {mid} was deleted at {row.deleted_at.isoformat()}")
            if self._edit_window > 0:
                closes = row.created_at + timedelta(seconds=self._edit_window)
                if datetime.now(UTC) > closes:
                    raise NotAllowed(
                        f"message {mid} can no longer be edited: its edit window"
                        f" ({self._edit_window:g} s, MESSAGE_EDIT_WINDOW_SECONDS) closed at"
                        f" {closes.isoformat()}"
                    )
            check_e2e_send(
                conversation_id=cid,
                encryption_mode=row.encryption_mode,
                body=req.body,
                e2e_header=req.e2e_header,
            )
            if self._same(row, cid, mid, body, req.e2e_header):
                return EditMessageResult(
                    message_id=mid,
                    conversation_id=cid,
                    seq=row.seq,
                    edited_at=row.edited_at or row.created_at,
                    changed=False,
                )
            key = self._cipher.data_key(
                cid, row.current_version, WrappedKey(row.current_master, row.current_wrapped)
            )
            ciphertext = self._cipher.encrypt_body(
                key, conversation_id=cid, message_id=mid, body=body
            )
            edited_at = (
                await session.execute(
                    text(
                        "UPDATE messages SET body_ciphertext = :body, key_version = :kv,"
                        " e2e_header = CAST(:e2e AS jsonb), edited_at = now()"
                        " WHERE id = :mid RETURNING edited_at"
                    ),
                    {
                        "mid": mid,
                        "body": ciphertext,
                        "kv": row.current_version,
                        "e2e": None if req.e2e_header is None else json.dumps(req.e2e_header),
                    },
                )
            ).scalar_one()
        return EditMessageResult(
            message_id=mid, conversation_id=cid, seq=row.seq, edited_at=edited_at
        )

    async def delete(self, req: DeleteMessageInput) -> DeleteMessageResult:
        """Destroys a message's body and leaves a tombstone; deleting again answers the same.

        Raises:
            InvalidInput: a malformed id.
            MessageNotVisible: no such message in that conversation.
            NotAMember: the actor is not in the conversation (any more).
            NotAllowed: the actor is neither the sender nor an owner or admin.
        """
        cid = require_uuid(req.conversation_id, "conversation_id")
        mid = require_uuid(req.message_id, "message_id")
        actor = require_uuid(req.actor_id, "actor_id") if req.actor_id is not None else None
        async with self._sessions() as session, session.begin():
            row = await _locked(session, cid, mid, actor)
            if actor is not None and row.sender_id != actor and row.role not in _MANAGERS:
                raise NotAllowed(
                    f"only its sender or an owner or admin of the conversation may delete"
                    f" message {mid}"
                )
            if row.deleted_at is not None:
                return DeleteMessageResult(
                    message_id=mid,
                    conversation_id=cid,
                    seq=row.seq,
                    deleted_at=row.deleted_at,
                    changed=False,
                )
            deleted_at = (
                await session.execute(
                    text(
                        "UPDATE messages SET body_ciphertext = ''::bytea, e2e_header = NULL,"
                        " deleted_at = now() WHERE id = :mid RETURNING deleted_at"
                    ),
                    {"mid": mid},
                )
            ).scalar_one()
        return DeleteMessageResult(
            message_id=mid, conversation_id=cid, seq=row.seq, deleted_at=deleted_at
        )

    def _same(self, row: Any, cid: str, mid: str, body: bytes, header: object) -> bool:
        if row.wrapped is None or (row.e2e_header or None) != (header or None):
            return False
        key = self._cipher.data_key(cid, row.key_version, WrappedKey(row.master, row.wrapped))
        stored = self._cipher.decrypt_body(
            key, conversation_id=cid, message_id=mid, ciphertext=row.body_ciphertext
        )
        return hmac.compare_digest(stored, body)


async def _locked(session: AsyncSession, cid: str, mid: str, actor: str | None) -> Any:
    row = (await session.execute(_FOR_EDIT, {"mid": mid, "actor": actor})).one_or_none()
    if row is None or row.conversation_id != cid:
        raise MessageNotVisible(f"message {mid} is not in conversation {cid}")
    if actor is not None and not row.is_member:
        raise NotAMember(f"user {actor} is not a member of conversation {cid}")
    return row
