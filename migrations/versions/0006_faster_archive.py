"""faster archive: no deliveries in the archive, natural-key primary key, BRIN on archived_at

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
# The purge deletes the notification rows of purged messages (table from 0005).
depends_on: str | Sequence[str] | None = "0005"

# For the code before this revision, whose restore reads deliveries from JSON:
# rebuilt from the participants' watermarks, as the restore now does.
_DELIVERIES_FROM_WATERMARKS = """
UPDATE archived_messages a SET deliveries = COALESCE((
    SELECT jsonb_agg(jsonb_build_object(
        'recipient_id', p.user_id,
        'status', CASE WHEN p.read_seq >= a.seq THEN 2
                       WHEN p.delivered_seq >= a.seq THEN 1 ELSE 0 END,
        'sent_at', a.created_at, 'delivered_at', NULL, 'read_at', NULL))
    FROM participants p
    WHERE p.conversation_id = a.conversation_id AND p.user_id <> a.sender_id
), '[]'::jsonb)
"""


def upgrade() -> None:
    """Applies this revision.

    Archiving copied each message's deliveries into JSON and each row into three
    B-tree indexes, one of them on a random UUID: about three times the cost of
    just deleting the rows. Now deliveries are not archived (the foreign key's
    cascade drops them; a restore rebuilds them from the participants'
    delivered_seq / read_seq watermarks), the archive is keyed by what a restore
    looks up, (conversation_id, seq), which archiving inserts in order (a
    sequence number is never reused in a conversation), and archived_at, which
    grows with insertion order, needs only a BRIN index for the purge.
    Deliveries archived before this revision are dropped with their column.
    """
    op.drop_column("archived_messages", "deliveries")
    op.drop_index("ix_archived_messages_conversation", table_name="archived_messages")
    op.drop_index("ix_archived_messages_archived_at", table_name="archived_messages")
    op.drop_constraint("archived_messages_pkey", "archived_messages", type_="primary")
    op.create_primary_key("archived_messages_pkey", "archived_messages", ["conversation_id", "seq"])
    op.create_index(
        "ix_archived_messages_archived_at",
        "archived_messages",
        ["archived_at"],
        postgresql_using="brin",
    )


def downgrade() -> None:
    """Reverts this revision (archived deliveries come back as JSON from the watermarks)."""
    op.drop_index("ix_archived_messages_archived_at", table_name="archived_messages")
    op.drop_constraint("archived_messages_pkey", "archived_messages", type_="primary")
    op.create_primary_key("archived_messages_pkey", "archived_messages", ["id"])
    op.create_index("ix_archived_messages_archived_at", "archived_messages", ["archived_at"])
    op.create_index(
        "ix_archived_messages_conversation", "archived_messages", ["conversation_id", "seq"]
    )
    op.add_column(
        "archived_messages",
        sa.Column("deliveries", postgresql.JSONB(), server_default="[]", nullable=False),
    )
    op.execute(_DELIVERIES_FROM_WATERMARKS)
