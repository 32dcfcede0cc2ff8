"""notifications: the bell's full page reads the newest rows, not the user's history

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-08

The bell (``notification:list``) found a user's shown in-app rows through the unique
key (recipient, channel) and sorted them all for the newest page: O(in-app history),
which every message the user receives adds to (``python -m bench.bell``, 500 of them
unread: 2.6 ms at 1,000 rows, 22 ms at 20,000, 97 ms at 100,000; now 2.0-2.4). The
read rows now have an index in the page's order, so the page is the newest ``limit``
of it merged with the newest unread rows (found through ``ix_notifications_unread``, as the
unread-only page and the badge's count find them): O(unread), not O(history).

Only the read rows: an index of the unread ones in the bell's order would match a
receipt's settle as well as ``ix_notifications_unread`` does where the planner expects
one row, and could then be picked for it, reading the reader's unread rows of every
conversation instead of one.

On a large table, build it ``CONCURRENTLY`` by hand first; then stamp this revision.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

READ = "channel = 'in_app' AND status = 'sent' AND read_at IS NOT NULL"


def upgrade() -> None:
    op.create_index(
        "ix_notifications_bell_read",
        "notifications",
        ["recipient_id", sa.text("created_at DESC"), sa.text("id DESC")],
        postgresql_where=sa.text(READ),
    )


def downgrade() -> None:
    op.drop_index("ix_notifications_bell_read", table_name="notifications")
