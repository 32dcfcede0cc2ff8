"""The in-app inbox (the bell): a user's notifications and their unread count."""

from __future__ import annotations

from sqlalchemy import text

from missive.errors import InvalidInput
from missive.notify.log._shared import LogPart, NotificationRow, _notification_row
from missive.notify.log._sql import _ROW_COLUMNS, _UNREAD_COUNTS
from missive.validation import require_uuid


def _page(read_at: str) -> str:
    """The newest ``:limit`` shown in-app rows of ``:rid`` with ``read_at`` so: the
    unread ones through ix_notifications_unread (sorted: O(unread)), the read ones
    through ix_notifications_bell_read, in its order."""
    return (
        f"SELECT {_ROW_COLUMNS} FROM notifications"
        " WHERE recipient_id = :rid AND channel = 'in_app' AND status = 'sent'"
        # notifications.id: the uuid in the index, not the text ``id`` of _ROW_COLUMNS.
        f" AND read_at {read_at} ORDER BY created_at DESC, notifications.id DESC LIMIT :limit"
    )


_BELL = {
    True: text(_page("IS NULL")),
    False: text(
        f"SELECT * FROM (({_page('IS NULL')}) UNION ALL ({_page('IS NOT NULL')})) AS shown"
        " ORDER BY created_at DESC, CAST(id AS uuid) DESC LIMIT :limit"  # id is text here
    ),
}
"""The bell's page by unread_only: the newest unread, or those merged with the newest read."""


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

        O(unread rows), whatever the user's history: the unread page sorts the
        user's unread rows (``ix_notifications_unread``); the full page merges its
        newest ``limit`` with as many of ``ix_notifications_bell_read`` (migration
        0016: it read and sorted every in-app row the user had, 97 ms at 100,000).

        Raises:
            InvalidInput: a malformed id, or a limit below 1.
        """
        uid = require_uuid(user_id, "user_id")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidInput(f"limit must be a positive integer, got {limit!r}")
        async with self._sessions() as session:
            found = (
                (await session.execute(_BELL[unread_only], {"rid": uid, "limit": limit}))
                .mappings()
                .all()
            )
        return [_notification_row(row) for row in found]
