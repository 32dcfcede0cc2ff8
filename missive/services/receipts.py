"""Delivered/read receipts: forward-only, applied as a watermark in one statement."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from missive.errors import ConversationNotFound, InvalidInput, MessageNotVisible, NotAMember
from missive.models import DeliveryStatus
from missive.schemas import (
    ApplyReceiptResult,
    ReceiptChange,
    ReceiptInput,
    ReceiptStatus,
    RecipientState,
)
from missive.validation import require_seq, require_uuid

MAX_CHANGES_REPORTED = 500
"""A receipt lists at most this many changed messages (newest first) for events and
lifecycle signals; a reader catching up on a backlog still moves every row."""

_RESOLVE = text(
    """
    SELECT c.last_seq,
           p.user_id IS NOT NULL AS is_member,
           (SELECT m.seq FROM messages m
             WHERE m.id = :mid AND m.conversation_id = c.id AND m.deleted_at IS NULL) AS message_seq
    FROM conversations c
    LEFT JOIN participants p ON p.conversation_id = c.id AND p.user_id = :uid
    WHERE c.id = :cid
    """
)

# Moves every earlier delivery of this reader forward in one statement (the
# partial index on pending deliveries finds them), and the watermarks with them.
_APPLY = text(
    """
    WITH changed AS (
        UPDATE deliveries d
           SET status = :status,
               delivered_at = COALESCE(d.delivered_at, :now),
               read_at = CASE WHEN :status = 2 THEN COALESCE(d.read_at, :now) ELSE d.read_at END
         WHERE d.recipient_id = :uid AND d.conversation_id = :cid
           AND d.seq <= :seq AND d.status < :status
        RETURNING d.message_id, d.seq
    ), watermark AS (
        UPDATE participants
           SET delivered_seq = GREATEST(delivered_seq, :seq),
               read_seq = CASE WHEN :status = 2 THEN GREATEST(read_seq, :seq) ELSE read_seq END
         WHERE conversation_id = :cid AND user_id = :uid
    )
    SELECT c.message_id::text AS message_id, c.seq, m.sender_id::text AS sender_id,
           m.client_message_id, m.created_at
      FROM changed c JOIN messages m ON m.id = c.message_id
     ORDER BY c.seq DESC
    """
)

# Read after commit: of two receipts committing together, the later read sees
# both, so "everyone has read" is never missed.
_COUNTS = text(
    """
    SELECT message_id::text AS message_id, count(*) AS total,
           count(*) FILTER (WHERE status >= 1) AS delivered,
           count(*) FILTER (WHERE status = 2) AS read
      FROM deliveries WHERE message_id = ANY(CAST(:ids AS uuid[]))
     GROUP BY message_id
    """
)

_STATUS = text(
    """
    SELECT recipient_id::text AS recipient_id, status, delivered_at, read_at
      FROM deliveries WHERE message_id = :mid ORDER BY recipient_id
    """
)

_STATUS_NAMES = {s.value: s.name.lower() for s in DeliveryStatus}


class ReceiptService:
    """Applies receipts and reports per-recipient state from the database."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]):
        self._sessions = sessions

    async def apply(self, req: ReceiptInput, *, now: datetime | None = None) -> ApplyReceiptResult:
        """Moves the reader's deliveries up to a watermark forward; never backward.

        A read marks delivered too. Running it twice changes nothing the second
        time. A late "delivered" after "read" changes nothing.

        Raises:
            InvalidInput: malformed ids, an unknown status, not exactly one of
                up_to_seq and message_id.
            ConversationNotFound: no such conversation.
            NotAMember: the reader is not in the conversation.
            MessageNotVisible: the message is not in the conversation (or deleted),
                or the watermark is past the conversation's last message.
        """
        uid = require_uuid(req.user_id, "user_id")
        cid = require_uuid(req.conversation_id, "conversation_id")
        try:
            status = ReceiptStatus(req.status)
        except ValueError:
            raise InvalidInput(
                f"status must be 'delivered' or 'read', got {req.status!r}"
            ) from None
        if (req.up_to_seq is None) == (req.message_id is None):
            raise InvalidInput("give exactly one of up_to_seq and message_id")
        mid = require_uuid(req.message_id, "message_id") if req.message_id is not None else None
        wanted = require_seq(req.up_to_seq) if req.up_to_seq is not None else None
        code = DeliveryStatus.READ if status is ReceiptStatus.READ else DeliveryStatus.DELIVERED
        now = now or datetime.now(UTC)

        async with self._sessions() as session, session.begin():
            row = (
                await session.execute(_RESOLVE, {"cid": cid, "uid": uid, "mid": mid})
            ).one_or_none()
            if row is None:
                raise ConversationNotFound(f"conversation {cid} does not exist")
            if not row.is_member:
                raise NotAMember(f"user {uid} is not a participant of conversation {cid}")
            if mid is not None:
                if row.message_seq is None:
                    raise MessageNotVisible(f"message {mid} is not in conversation {cid}")
                seq = int(row.message_seq)
            else:
                assert wanted is not None
                if wanted > row.last_seq:
                    raise MessageNotVisible(
                        f"conversation {cid} has no message {wanted} (its last is {row.last_seq})"
                    )
                seq = wanted
            changed = (
                await session.execute(
                    _APPLY, {"uid": uid, "cid": cid, "seq": seq, "status": int(code), "now": now}
                )
            ).all()

        cutoff = now - timedelta(seconds=req.lifecycle_window_seconds)
        reported = [r for r in changed if r.created_at >= cutoff][:MAX_CHANGES_REPORTED]
        counts = await self._counts([r.message_id for r in reported])
        return ApplyReceiptResult(
            user_id=uid,
            conversation_id=cid,
            status=status,
            up_to_seq=seq,
            changed=len(changed),
            changes=[
                ReceiptChange(
                    message_id=r.message_id,
                    sender_id=r.sender_id,
                    client_message_id=r.client_message_id,
                    seq=r.seq,
                    status=status,
                    at=now,
                    recipient_count=counts[r.message_id][0],
                    delivered_count=counts[r.message_id][1],
                    read_count=counts[r.message_id][2],
                    within_window=True,
                )
                for r in reported
            ],
        )

    async def _counts(self, message_ids: list[str]) -> dict[str, tuple[int, int, int]]:
        if not message_ids:
            return {}
        async with self._sessions() as session:
            rows = (await session.execute(_COUNTS, {"ids": message_ids})).all()
        return {r.message_id: (r.total, r.delivered, r.read) for r in rows}

    async def recipient_states(self, message_id: str) -> dict[str, RecipientState]:
        """Every recipient's state of one message, from the database."""
        mid = require_uuid(message_id, "message_id")
        async with self._sessions() as session:
            rows = (await session.execute(_STATUS, {"mid": mid})).all()
        return {
            r.recipient_id: RecipientState(
                status=_STATUS_NAMES[r.status], delivered_at=r.delivered_at, read_at=r.read_at
            )
            for r in rows
        }
