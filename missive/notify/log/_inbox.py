"""The in-app inbox (the bell): a user's notifications and their unread count."""

from __future__ import annotations

from sqlalchemy import text

from missive.errors import InvalidInput
from missive.notify.log._shared import LogPart, NotificationRow, _notification_row
from missive.notify.log._sql import _ROW_COLUMNS, _UNREAD_COUNTS
from missive.validation import require_uuid


class Inbox(LogPart):
    """Reads a user's in-app notifications."""

    async def unread_count(self, user_id: str) -> int:
        """A user's unread in-app notifications, up to UNREAD_COUNT_CAP."""
        uid = require_uuid(user_id, "user_id")
        async with self._sessions() as session:
            rows = (await session.execute(_UNREAD_COUNTS, {"rids": [uid]})).all()
        return int(rows[0].unread) if rows else 0

    async def in_app(
        self, user_id: str, *, limit: int, unread_only: bool = False
    ) -> list[NotificationRow]:
        """A user's in-app notifications (the bell), newest first: the sent rows only.

        One indexed statement: with ``unread_only`` its predicate is exactly that of
        ``ix_notifications_unread``; otherwise the unique key (recipient, channel)
        finds the user's rows.

        Raises:
            InvalidInput: a malformed id, or a limit below 1.
        """
        uid = require_uuid(user_id, "user_id")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidInput(f"limit must be a positive integer, got {limit!r}")
        unread = " AND read_at IS NULL" if unread_only else ""
        sql = text(
            f"SELECT {_ROW_COLUMNS} FROM notifications"
            " WHERE recipient_id = :rid AND channel = 'in_app' AND status = 'sent'"
            f"{unread} ORDER BY created_at DESC, id DESC LIMIT :limit"
        )
        async with self._sessions() as session:
            found = (await session.execute(sql, {"rid": uid, "limit": limit})).mappings().all()
        return [_notification_row(row) for row in found]
