"""notifications: the notification log and users' notification preferences

Revision ID: 0005
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STATUSES = (
    "pending",
    "queued",
    "sending",
    "sent",
    "digested",
    "cancelled",
    "skipped",
    "failed",
    "fell_back",
)
_CHANNELS = ("in_app", "push", "email", "sms")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    """Applies this revision.

    ``notifications`` is the agenda of every notification: one row per recipient,
    channel and dedupe key, written (pending) before anything is sent and updated
    with the outcome. The unique key makes every step idempotent; message_id has no
    foreign key, so retention can purge messages while their log rows age out later.
    """
    op.create_table(
        "notifications",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("recipient_id", sa.UUID(), nullable=False),
        sa.Column("channel", sa.String(length=8), nullable=False),
        sa.Column("dedupe_key", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("message_id", sa.UUID(), nullable=True),
        sa.Column("conversation_id", sa.UUID(), nullable=True),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("mention", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("provider_ref", sa.Text(), nullable=True),
        sa.Column("digest_id", sa.UUID(), nullable=True),
        sa.Column("source_id", sa.UUID(), nullable=True),
        sa.Column("item_count", sa.Integer(), server_default="1", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cleared_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(_one_of("status", _STATUSES), name="notification_status_known"),
        sa.CheckConstraint(_one_of("channel", _CHANNELS), name="notification_channel_known"),
        sa.ForeignKeyConstraint(["recipient_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "recipient_id", "channel", "dedupe_key", name="uq_notifications_recipient_channel_key"
        ),
    )
    # A message's notification workflow looks for its rows that are due.
    op.create_index(
        "ix_notifications_due",
        "notifications",
        ["message_id", "due_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    # A receipt settles the reader's open rows of a conversation up to a watermark.
    op.create_index(
        "ix_notifications_open",
        "notifications",
        ["recipient_id", "conversation_id", "seq"],
        postgresql_where=sa.text("status IN ('pending', 'queued', 'sent')"),
    )
    # The unread in-app count (the bell).
    op.create_index(
        "ix_notifications_unread",
        "notifications",
        ["recipient_id"],
        postgresql_where=sa.text("channel = 'in_app' AND read_at IS NULL AND status = 'sent'"),
    )
    # Every row of a message, whatever its status (a rerun of dispatch, ops).
    op.create_index(
        "ix_notifications_message",
        "notifications",
        ["message_id"],
        postgresql_where=sa.text("message_id IS NOT NULL"),
    )
    # The items of a digest, loaded to render it.
    op.create_index(
        "ix_notifications_digest",
        "notifications",
        ["digest_id"],
        postgresql_where=sa.text("digest_id IS NOT NULL"),
    )
    op.create_table(
        "notification_preferences",
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("in_app", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("push", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("email", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("sms", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("mentions_only", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("quiet_start", sa.Time(), nullable=True),
        sa.Column("quiet_end", sa.Time(), nullable=True),
        sa.Column("quiet_mentions", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "(quiet_start IS NULL) = (quiet_end IS NULL)", name="quiet_hours_complete"
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id"),
    )
    op.create_table(
        "conversation_notification_preferences",
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("conversation_id", sa.UUID(), nullable=False),
        sa.Column("muted", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("mentions_only", sa.Boolean(), nullable=True),
        sa.Column("in_app", sa.Boolean(), nullable=True),
        sa.Column("push", sa.Boolean(), nullable=True),
        sa.Column("email", sa.Boolean(), nullable=True),
        sa.Column("sms", sa.Boolean(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["conversation_id"], ["conversations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", "conversation_id"),
    )


def downgrade() -> None:
    """Reverts this revision."""
    op.drop_table("conversation_notification_preferences")
    op.drop_table("notification_preferences")
    for index in ("digest", "message", "unread", "open", "due"):
        op.drop_index(f"ix_notifications_{index}", table_name="notifications")
    op.drop_table("notifications")
