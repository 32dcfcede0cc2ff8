"""search index bookkeeping: pending messages, tombstones, wake-up notifications

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The indexer LISTENs here; the payload is empty (it only means "look again").
NOTIFY_CHANNEL = "missive_search"

_TRIGGERS = (
    f"""
    CREATE FUNCTION missive_search_notify() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('{NOTIFY_CHANNEL}', '');
        RETURN NULL;
    END $$
    """,
    # An edit or a (soft) delete makes the message pending again. A key rotation
    # re-encrypts the same text under a new key version: no reindexing for that.
    """
    CREATE FUNCTION missive_search_reindex() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.edited_at IS DISTINCT FROM OLD.edited_at
           OR NEW.deleted_at IS DISTINCT FROM OLD.deleted_at
           OR (NEW.body_ciphertext IS DISTINCT FROM OLD.body_ciphertext
               AND NEW.key_version = OLD.key_version) THEN
            NEW.indexed_at := NULL;
        END IF;
        RETURN NEW;
    END $$
    """,
    # Hard deletes (retention purge, cascades): one tombstone per row, in bulk.
    f"""
    CREATE FUNCTION missive_search_tombstone() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO search_deletions (message_id)
        SELECT id FROM gone
        ON CONFLICT (message_id) DO UPDATE SET deleted_at = now(), processed_at = NULL;
        PERFORM pg_notify('{NOTIFY_CHANNEL}', '');
        RETURN NULL;
    END $$
    """,
    """
    CREATE TRIGGER messages_search_reindex BEFORE UPDATE ON messages
        FOR EACH ROW EXECUTE FUNCTION missive_search_reindex()
    """,
    """
    CREATE TRIGGER messages_search_insert AFTER INSERT ON messages
        FOR EACH STATEMENT EXECUTE FUNCTION missive_search_notify()
    """,
    """
    CREATE TRIGGER messages_search_update
        AFTER UPDATE OF body_ciphertext, edited_at, deleted_at ON messages
        FOR EACH STATEMENT EXECUTE FUNCTION missive_search_notify()
    """,
    """
    CREATE TRIGGER messages_search_delete AFTER DELETE ON messages
        REFERENCING OLD TABLE AS gone
        FOR EACH STATEMENT EXECUTE FUNCTION missive_search_tombstone()
    """,
)


def upgrade() -> None:
    """Applies this revision.

    A message is pending for the index while ``indexed_at`` is NULL: new rows are,
    and an edit or a (soft) delete makes it pending again. Hard deletes (retention
    purge, a conversation deleted) leave a tombstone in ``search_deletions``. Every
    change NOTIFYs the indexer once per statement, so delivery never waits for it.
    Existing messages start pending: the first indexer run backfills them.
    """
    op.add_column("messages", sa.Column("indexed_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_messages_search_pending",
        "messages",
        ["created_at"],
        postgresql_where=sa.text("indexed_at IS NULL"),
    )
    op.create_table(
        "search_deletions",
        sa.Column("message_id", sa.UUID(), nullable=False),
        sa.Column(
            "deleted_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("message_id"),
    )
    op.create_index(
        "ix_search_deletions_pending",
        "search_deletions",
        ["deleted_at"],
        postgresql_where=sa.text("processed_at IS NULL"),
    )
    for statement in _TRIGGERS:
        op.execute(statement)


def downgrade() -> None:
    """Reverts this revision."""
    for trigger in ("delete", "update", "insert", "reindex"):
        op.execute(f"DROP TRIGGER IF EXISTS messages_search_{trigger} ON messages")
    for function in ("tombstone", "reindex", "notify"):
        op.execute(f"DROP FUNCTION IF EXISTS missive_search_{function}()")
    op.drop_index("ix_search_deletions_pending", table_name="search_deletions")
    op.drop_table("search_deletions")
    op.drop_index("ix_messages_search_pending", table_name="messages")
    op.drop_column("messages", "indexed_at")
