"""messages: a partial index of deleted messages, for unread counts

Revision ID: 0012
Revises: 0011
Create Date: 2027-01-27
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # conversation:list counts a user's pending deliveries (ix_deliveries_pending) and
    # subtracts those of deleted messages, found through this (small) index.
    op.create_index(
        "ix_messages_deleted",
        "messages",
        ["conversation_id"],
        postgresql_where="deleted_at IS NOT NULL",
    )


def downgrade() -> None:
    op.drop_index(
        "ix_messages_deleted", table_name="messages", postgresql_where="deleted_at IS NOT NULL"
    )
