"""Withdrawing: a deleted message's notifications, a removed member's pending ones."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import text

from missive.errors import InvalidInput
from missive.notify.log._shared import REASON_GONE, REASON_LEFT, LogPart
from missive.notify.log._sql import _UNREAD_COUNTS
from missive.schemas import WithdrawInput
from missive.validation import require_uuid

# A deleted message: its pending / queued rows are cancelled, its in-app rows leave
# the bell (cancelled, so neither the list nor the unread count shows them), its
# shown pushes are returned to clear. The three updates touch disjoint rows.
_WITHDRAW_MESSAGE = text(
    """
    WITH cancelled AS (
        UPDATE notifications SET status = 'cancelled', reason = :reason, updated_at = :now
         WHERE message_id = :mid AND status IN ('pending', 'queued')
        RETURNING 1
    ), withdrawn AS (
        UPDATE notifications SET status = 'cancelled', reason = :reason, updated_at = :now
         WHERE message_id = :mid AND channel = 'in_app' AND status = 'sent'
        RETURNING recipient_id::text AS recipient_id, read_at IS NULL AS unread
    ), cleared AS (
        UPDATE notifications SET cleared_at = :now, updated_at = :now
         WHERE message_id = :mid AND channel = 'push' AND status = 'sent'
           AND cleared_at IS NULL
        RETURNING id::text AS id
    )
    SELECT 'cancelled' AS kind, NULL AS value, false AS unread FROM cancelled
    UNION ALL SELECT 'withdrawn', recipient_id, unread FROM withdrawn
    UNION ALL SELECT 'cleared', id, false FROM cleared
    """
)

# A removed member: what is still to be sent of the conversation is cancelled.
_WITHDRAW_MEMBER = text(
    """
    UPDATE notifications SET status = 'cancelled', reason = :reason, updated_at = :now
     WHERE recipient_id = :uid AND conversation_id = :cid AND status IN ('pending', 'queued')
    """
)


@dataclass(frozen=True)
class Withdrawn:
    """What withdraw did."""

    cancelled: int = 0
    """Pending / queued rows cancelled."""
    withdrawn: int = 0
    """In-app rows taken out of the bell."""
    clear_push_ids: list[str] = field(default_factory=list)
    """Pushes already shown, to clear."""
    unread_counts: dict[str, int] = field(default_factory=dict)
    """Unread in-app counts now of the recipients who had an unread one withdrawn."""


class Withdrawal(LogPart):
    """Takes back notifications of messages that are gone or members who left."""

    async def withdraw(self, input: WithdrawInput, *, now: datetime) -> Withdrawn:
        """Withdraws a deleted message's notifications, or a removed member's pending
        ones of a conversation. A rerun finds nothing more to change.

        Raises:
            InvalidInput: neither (or both) a message, nor a user and conversation.
        """
        if (input.message_id is None) == (input.user_id is None):
            raise InvalidInput("give message_id, or user_id with conversation_id")
        async with self._sessions() as session, session.begin():
            if input.user_id is not None:
                uid = require_uuid(input.user_id, "user_id")
                cid = require_uuid(input.conversation_id, "conversation_id")
                done = await session.execute(
                    _WITHDRAW_MEMBER, {"uid": uid, "cid": cid, "now": now, "reason": REASON_LEFT}
                )
                return Withdrawn(cancelled=done.rowcount)  # type: ignore[attr-defined]
            mid = require_uuid(input.message_id, "message_id")
            rows = (
                await session.execute(
                    _WITHDRAW_MESSAGE, {"mid": mid, "now": now, "reason": REASON_GONE}
                )
            ).all()
            readers = sorted({r.value for r in rows if r.kind == "withdrawn" and r.unread})
            unread = {}
            if readers:
                counts = (await session.execute(_UNREAD_COUNTS, {"rids": readers})).all()
                unread = {c.recipient_id: int(c.unread) for c in counts}
        return Withdrawn(
            cancelled=sum(1 for r in rows if r.kind == "cancelled"),
            withdrawn=sum(1 for r in rows if r.kind == "withdrawn"),
            clear_push_ids=sorted(r.value for r in rows if r.kind == "cleared"),
            unread_counts=unread,
        )
