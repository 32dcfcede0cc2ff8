"""notifications: the open index holds open rows only

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-08

``ix_notifications_open`` held every sent row besides the pending and queued ones, so
the planner could reach a reader's shown pushes through it, and did: settling a
receipt batch ANDed it with ``ix_notifications_uncleared``, a scan of every reader's
whole history in the conversation (a 50-reader batch after 300 messages read 294
index rows per reader: 2.6 ms, now 0.84). It now holds what it is named for, the rows
still to send (pending, queued). The bell lists a user's shown in-app rows through
the unique key (recipient, channel) as it could before.

On a large table, build the new index ``CONCURRENTLY`` by hand under another name,
drop the old one and rename it; then stamp this revision.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN_BEFORE = "status IN ('pending', 'queued', 'sent')"
OPEN = "status IN ('pending', 'queued')"
COLUMNS = ["recipient_id", "conversation_id", "seq"]


def upgrade() -> None:
    op.drop_index("ix_notifications_open", table_name="notifications")
    op.create_index(
        "ix_notifications_open", "notifications", COLUMNS, postgresql_where=sa.text(OPEN)
    )


def downgrade() -> None:
    op.drop_index("ix_notifications_open", table_name="notifications")
    op.create_index(
        "ix_notifications_open", "notifications", COLUMNS, postgresql_where=sa.text(OPEN_BEFORE)
    )
