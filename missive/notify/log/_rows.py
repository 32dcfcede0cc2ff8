"""The log as operators and tests read it: every column of rows, and the overdue ones."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from missive.errors import InvalidInput
from missive.notify.log._shared import LogPart, NotificationRow, _notification_row
from missive.notify.log._sql import _ROW_COLUMNS
from missive.validation import require_uuid


@dataclass(frozen=True)
class OverdueSummary:
    """Open notification rows past their due time by more than a margin."""

    count: int
    """How many."""
    oldest_due: datetime | None
    """The earliest due time among them (None: none)."""
    examples: list[NotificationRow]
    """The oldest few, every column."""


# Open rows past their due time by more than the caller's margin: the count, the
# oldest due time and a few examples (oldest first). ix_notifications_overdue
# (due_at, open rows only) keeps this a range scan of the overdue rows alone.
_OVERDUE_SUMMARY = text(
    """
    SELECT count(*) AS overdue, min(due_at) AS oldest_due
      FROM notifications
     WHERE status IN ('pending', 'queued', 'sending') AND due_at < :before
    """
)
_OVERDUE_ROWS = text(
    """
    SELECT id::text AS id FROM notifications
     WHERE status IN ('pending', 'queued', 'sending') AND due_at < :before
     ORDER BY due_at, id LIMIT :limit
    """
)


class Rows(LogPart):
    """Reads rows by message or recipient, and the rows overdue."""

    async def overdue(self, *, before: datetime, examples: int = 5) -> OverdueSummary:
        """Open rows (pending, queued, sending) due before ``before``: what an operator
        must see, since the row of a healthy agenda moves on soon after it falls due.

        Two statements on ix_notifications_overdue (open rows only, by due time), so
        the cost grows with the overdue rows, not with the log.

        Raises:
            InvalidInput: ``examples`` below 0.
        """
        if isinstance(examples, bool) or not isinstance(examples, int) or examples < 0:
            raise InvalidInput(f"examples must be a non-negative integer, got {examples!r}")
        async with self._sessions() as session:
            summary = (await session.execute(_OVERDUE_SUMMARY, {"before": before})).one()
            ids: list[str] = []
            if summary.overdue and examples:
                found = await session.execute(_OVERDUE_ROWS, {"before": before, "limit": examples})
                ids = [r.id for r in found]
            rows = await self._rows_by_id(session, ids)
        return OverdueSummary(
            count=int(summary.overdue), oldest_due=summary.oldest_due, examples=rows
        )

    @staticmethod
    async def _rows_by_id(session: AsyncSession, ids: list[str]) -> list[NotificationRow]:
        if not ids:
            return []
        sql = text(
            f"SELECT {_ROW_COLUMNS} FROM notifications WHERE id = ANY(CAST(:ids AS uuid[]))"
            " ORDER BY due_at, id"
        )
        found = (await session.execute(sql, {"ids": ids})).mappings().all()
        return [_notification_row(row) for row in found]

    async def rows(
        self, *, message_id: str | None = None, recipient_id: str | None = None
    ) -> list[NotificationRow]:
        """Every column of the log rows of a message and / or a recipient (all if neither).

        Ordered by recipient, channel (escalation order) and creation.
        """
        where = []
        params: dict[str, str] = {}
        if message_id is not None:
            where.append("message_id = :mid")
            params["mid"] = require_uuid(message_id, "message_id")
        if recipient_id is not None:
            where.append("recipient_id = :rid")
            params["rid"] = require_uuid(recipient_id, "recipient_id")
        sql = (
            f"SELECT {_ROW_COLUMNS} FROM notifications"
            f"{' WHERE ' + ' AND '.join(where) if where else ''}"
            " ORDER BY recipient_id, array_position(ARRAY['in_app','push','email','sms'],"
            " channel::text), created_at, id"
        )
        async with self._sessions() as session:
            found = (await session.execute(text(sql), params)).mappings().all()
        return [_notification_row(row) for row in found]
