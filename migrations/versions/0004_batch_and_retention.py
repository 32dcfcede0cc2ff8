"""batch staging and retention: batches, batch_items, legal hold, message archive

Revision ID: 0004
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Applies this revision."""
    op.create_table(
        "batches",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("source_sha256", sa.String(length=64), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("total > 0", name="batch_not_empty"),
        sa.PrimaryKeyConstraint("id"),
    )
    # The staged items of a batch: only the batch id and item ranges travel
    # through Temporal. state: 0 pending, 1 stored, 2 failed (reason says why).
    op.create_table(
        "batch_items",
        sa.Column("batch_id", sa.String(length=64), nullable=False),
        sa.Column("item_no", sa.Integer(), nullable=False),
        sa.Column("line_no", sa.Integer(), nullable=False),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.Column("state", sa.SmallInteger(), server_default="0", nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("message_id", sa.UUID(), nullable=True),
        sa.CheckConstraint("state IN (0, 1, 2)", name="batch_item_state_known"),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("batch_id", "item_no"),
    )
    op.add_column(
        "conversations",
        sa.Column("legal_hold", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    # Retention looks for a conversation's oldest messages.
    op.create_index(
        "ix_messages_conversation_created", "messages", ["conversation_id", "created_at"]
    )
    # Expired messages wait here (with their deliveries as JSON) until the
    # restore window has passed; no foreign keys, so purging a conversation's
    # live rows never touches them.
    op.create_table(
        "archived_messages",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("conversation_id", sa.UUID(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("sender_id", sa.UUID(), nullable=False),
        sa.Column("client_message_id", sa.String(length=128), nullable=False),
        sa.Column("body_ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("edited_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deliveries", postgresql.JSONB(), server_default="[]", nullable=False),
        # Columns other revisions add to messages (e2e_header, ...), so a
        # restore brings back the whole row whatever the schema has grown.
        sa.Column("extra", postgresql.JSONB(), server_default="{}", nullable=False),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_archived_messages_archived_at", "archived_messages", ["archived_at"])
    op.create_index(
        "ix_archived_messages_conversation", "archived_messages", ["conversation_id", "seq"]
    )


def downgrade() -> None:
    """Reverts this revision."""
    op.drop_index("ix_archived_messages_conversation", table_name="archived_messages")
    op.drop_index("ix_archived_messages_archived_at", table_name="archived_messages")
    op.drop_table("archived_messages")
    op.drop_index("ix_messages_conversation_created", table_name="messages")
    op.drop_column("conversations", "legal_hold")
    op.drop_table("batch_items")
    op.drop_table("batches")
