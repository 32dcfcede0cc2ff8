"""notifications: indexes of the rows a receipt still has to settle

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07

A read receipt marks the reader's sent in-app rows read and clears their shown
pushes up to a watermark. Found through ``ix_notifications_open``, which keeps every
sent row for good, that cost a scan of the reader's whole history in the
conversation on every receipt batch (536 index rows for one reader after 645
messages, twice: in-app and push). These two hold only what is still to settle, so a
batch reads what it changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNREAD = "channel = 'in_app' AND read_at IS NULL AND status = 'sent'"
UNCLEARED = "channel = 'push' AND cleared_at IS NULL AND status = 'sent'"


def upgrade() -> None:
    # The unread count (the bell) reads it by recipient_id, its first column, as before.
    op.drop_index(
        "ix_notifications_unread", table_name="notifications", postgresql_where=sa.text(UNREAD)
    )
    op.create_index(
        "ix_notifications_unread",
        "notifications",
        ["recipient_id", "conversation_id", "seq"],
        postgresql_where=sa.text(UNREAD),
    )
    op.create_index(
        "ix_notifications_uncleared",
        "notifications",
        ["recipient_id", "conversation_id", "seq"],
        postgresql_where=sa.text(UNCLEARED),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_notifications_uncleared",
        table_name="notifications",
        postgresql_where=sa.text(UNCLEARED),
    )
    op.drop_index(
        "ix_notifications_unread", table_name="notifications", postgresql_where=sa.text(UNREAD)
    )
    op.create_index(
        "ix_notifications_unread",
        "notifications",
        ["recipient_id"],
        postgresql_where=sa.text(UNREAD),
    )
